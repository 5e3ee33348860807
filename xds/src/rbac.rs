//! Translation of Envoy's RBAC filters: the HTTP filter
//! `envoy.filters.http.rbac` (`RBAC`, and `RBACPerRoute` in
//! `typed_per_filter_config`) and the network filter
//! `envoy.filters.network.rbac`, into the `rbac` filters' configs
//! (`meshgate_core::config::rbac`). Every field meshgate does not evaluate
//! (CEL conditions, `matcher` trees, `custom`, `filter_state`,
//! `audit_logging_options`, ...) is a NACK naming it: an access policy is
//! never half applied.

// Envoy's deprecated RBAC fields (`source_ip`, `metadata`, the
// `*_match` header specifiers) are still honoured, as Envoy does.
#![allow(deprecated)]

use crate::http_filters::string_matcher;
use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::rbac as rc;
use serde_json::Value;

pub(crate) const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub(crate) const HTTP_RBAC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub(crate) const NETWORK_RBAC: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

fn to_value(v: Result<Value, serde_json::Error>, path: &str) -> R<Value> {
    v.map_err(|e| (path.to_string(), e.to_string()))
}

/// The HTTP filter's typed config, as the `rbac` stream filter's config.
pub(crate) fn http_filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let c: http_rbac::Rbac =
        decode(any, HTTP_RBAC).map_err(|e| (path.to_string(), e.to_string()))?;
    to_value(serde_json::to_value(http_config(c, path)?), path)
}

/// An `RBACPerRoute`, as the `rbac` stream filter's per-route config.
pub(crate) fn per_route(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: http_rbac::RbacPerRoute =
        decode(any, HTTP_RBAC_PER_ROUTE).map_err(|e| (path.to_string(), e.to_string()))?;
    let out = rc::RbacPerRouteConfig {
        rbac: c
            .rbac
            .take()
            .map(|r| http_config(r, &join(path, "rbac")))
            .transpose()?,
    };
    rest(&c, path)?;
    to_value(serde_json::to_value(out), path)
}

fn http_config(mut c: http_rbac::Rbac, path: &str) -> R<rc::RbacHttpConfig> {
    let out = rc::RbacHttpConfig {
        rules: c
            .rules
            .take()
            .map(|r| rules(r, &join(path, "rules")))
            .transpose()?,
        rules_stat_prefix: std::mem::take(&mut c.rules_stat_prefix),
        shadow_rules: c
            .shadow_rules
            .take()
            .map(|r| rules(r, &join(path, "shadow_rules")))
            .transpose()?,
        shadow_rules_stat_prefix: std::mem::take(&mut c.shadow_rules_stat_prefix),
    };
    rest(&c, path)?;
    Ok(out)
}

/// The network filter's typed config, as the `rbac` network filter's.
pub(crate) fn network_filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: net_rbac::Rbac =
        decode(any, NETWORK_RBAC).map_err(|e| (path.to_string(), e.to_string()))?;
    let enforcement_type = match c.enforcement_type {
        0 => rc::EnforcementType::OneTimeOnFirstByte,
        1 => {
            return err(
                join(path, "enforcement_type"),
                "CONTINUOUS is not supported (ONE_TIME_ON_FIRST_BYTE only)",
            );
        }
        _ => return err(join(path, "enforcement_type"), "unknown value"),
    };
    c.enforcement_type = 0;
    let out = rc::RbacNetworkConfig {
        rules: c
            .rules
            .take()
            .map(|r| rules(r, &join(path, "rules")))
            .transpose()?,
        shadow_rules: c
            .shadow_rules
            .take()
            .map(|r| rules(r, &join(path, "shadow_rules")))
            .transpose()?,
        stat_prefix: std::mem::take(&mut c.stat_prefix),
        shadow_rules_stat_prefix: std::mem::take(&mut c.shadow_rules_stat_prefix),
        enforcement_type,
    };
    rest(&c, path)?;
    to_value(serde_json::to_value(out), path)
}

fn rules(mut r: rbac::Rbac, path: &str) -> R<rc::RbacRules> {
    let action = match r.action {
        0 => rc::RbacAction::Allow,
        1 => rc::RbacAction::Deny,
        2 => rc::RbacAction::Log,
        _ => return err(join(path, "action"), "unknown value"),
    };
    r.action = 0;
    let mut policies = std::collections::BTreeMap::new();
    for (name, mut p) in std::mem::take(&mut r.policies) {
        let pp = join(path, &format!("policies.{name}"));
        let permissions = std::mem::take(&mut p.permissions)
            .into_iter()
            .enumerate()
            .map(|(i, x)| permission(x, &join(&pp, &format!("permissions[{i}]"))))
            .collect::<R<_>>()?;
        let principals = std::mem::take(&mut p.principals)
            .into_iter()
            .enumerate()
            .map(|(i, x)| principal(x, &join(&pp, &format!("principals[{i}]"))))
            .collect::<R<_>>()?;
        rest(&p, &pp)?;
        policies.insert(
            name,
            rc::RbacPolicy {
                permissions,
                principals,
            },
        );
    }
    rest(&r, path)?;
    Ok(rc::RbacRules { action, policies })
}

fn permission(p: rbac::Permission, path: &str) -> R<rc::Permission> {
    use rbac::permission::Rule;
    let set = |s: rbac::permission::Set, field: &str| -> R<rc::PermissionSet> {
        Ok(rc::PermissionSet {
            rules: s
                .rules
                .into_iter()
                .enumerate()
                .map(|(i, x)| permission(x, &join(path, &format!("{field}.rules[{i}]"))))
                .collect::<R<_>>()?,
        })
    };
    Ok(match p.rule {
        None => return err(path, "missing rule"),
        Some(Rule::Any(b)) => rc::Permission::Any(b),
        Some(Rule::AndRules(s)) => rc::Permission::AndRules(set(s, "and_rules")?),
        Some(Rule::OrRules(s)) => rc::Permission::OrRules(set(s, "or_rules")?),
        Some(Rule::NotRule(r)) => {
            rc::Permission::NotRule(Box::new(permission(*r, &join(path, "not_rule"))?))
        }
        Some(Rule::Header(h)) => rc::Permission::Header(header(h, &join(path, "header"))?),
        Some(Rule::UrlPath(u)) => rc::Permission::UrlPath(url_path(u, &join(path, "url_path"))?),
        Some(Rule::DestinationIp(c)) => {
            rc::Permission::DestinationIp(cidr(c, &join(path, "destination_ip"))?)
        }
        Some(Rule::DestinationPort(p)) => rc::Permission::DestinationPort(p),
        Some(Rule::DestinationPortRange(r)) => {
            let (start, end) = (r.start, r.end);
            rc::Permission::DestinationPortRange(rc::PortRange { start, end })
        }
        Some(Rule::RequestedServerName(m)) => rc::Permission::RequestedServerName(string_matcher(
            m,
            &join(path, "requested_server_name"),
        )?),
        Some(Rule::Metadata(m)) => rc::Permission::Metadata(metadata(m, &join(path, "metadata"))?),
        Some(Rule::Matcher(_)) => return err(join(path, "matcher"), "not supported"),
        Some(Rule::UriTemplate(_)) => return err(join(path, "uri_template"), "not supported"),
        Some(Rule::SourcedMetadata(_)) => {
            return err(join(path, "sourced_metadata"), "not supported");
        }
    })
}

fn principal(p: rbac::Principal, path: &str) -> R<rc::Principal> {
    use rbac::principal::Identifier;
    let set = |s: rbac::principal::Set, field: &str| -> R<rc::PrincipalSet> {
        Ok(rc::PrincipalSet {
            ids: s
                .ids
                .into_iter()
                .enumerate()
                .map(|(i, x)| principal(x, &join(path, &format!("{field}.ids[{i}]"))))
                .collect::<R<_>>()?,
        })
    };
    Ok(match p.identifier {
        None => return err(path, "missing identifier"),
        Some(Identifier::Any(b)) => rc::Principal::Any(b),
        Some(Identifier::AndIds(s)) => rc::Principal::AndIds(set(s, "and_ids")?),
        Some(Identifier::OrIds(s)) => rc::Principal::OrIds(set(s, "or_ids")?),
        Some(Identifier::NotId(r)) => {
            rc::Principal::NotId(Box::new(principal(*r, &join(path, "not_id"))?))
        }
        Some(Identifier::Authenticated(mut a)) => {
            let ap = join(path, "authenticated");
            let principal_name = a
                .principal_name
                .take()
                .map(|m| string_matcher(m, &join(&ap, "principal_name")))
                .transpose()?;
            rest(&a, &ap)?;
            rc::Principal::Authenticated(rc::Authenticated { principal_name })
        }
        Some(Identifier::SourceIp(c)) => {
            rc::Principal::SourceIp(cidr(c, &join(path, "source_ip"))?)
        }
        Some(Identifier::DirectRemoteIp(c)) => {
            rc::Principal::DirectRemoteIp(cidr(c, &join(path, "direct_remote_ip"))?)
        }
        Some(Identifier::RemoteIp(c)) => {
            rc::Principal::RemoteIp(cidr(c, &join(path, "remote_ip"))?)
        }
        Some(Identifier::Header(h)) => rc::Principal::Header(header(h, &join(path, "header"))?),
        Some(Identifier::UrlPath(u)) => {
            rc::Principal::UrlPath(url_path(u, &join(path, "url_path"))?)
        }
        Some(Identifier::Metadata(m)) => {
            rc::Principal::Metadata(metadata(m, &join(path, "metadata"))?)
        }
        Some(Identifier::FilterState(_)) => {
            return err(join(path, "filter_state"), "not supported");
        }
        Some(Identifier::SourcedMetadata(_)) => {
            return err(join(path, "sourced_metadata"), "not supported");
        }
        Some(Identifier::Custom(_)) => return err(join(path, "custom"), "not supported"),
    })
}

fn cidr(mut c: core::CidrRange, path: &str) -> R<rc::CidrRange> {
    let out = rc::CidrRange {
        address_prefix: std::mem::take(&mut c.address_prefix),
        prefix_len: c.prefix_len.take().map_or(0, |v| v.value),
    };
    rest(&c, path)?;
    Ok(out)
}

fn url_path(p: matcher::PathMatcher, path: &str) -> R<rc::PathMatcherConfig> {
    match p.rule {
        Some(matcher::path_matcher::Rule::Path(m)) => Ok(rc::PathMatcherConfig {
            path: string_matcher(m, &join(path, "path"))?,
        }),
        None => err(join(path, "path"), "missing"),
    }
}

fn header(mut h: rds::HeaderMatcher, path: &str) -> R<rc::RbacHeaderMatcher> {
    use rds::header_matcher::HeaderMatchSpecifier as S;
    let mut out = rc::RbacHeaderMatcher {
        name: std::mem::take(&mut h.name),
        invert_match: std::mem::take(&mut h.invert_match),
        ..Default::default()
    };
    match h.header_match_specifier.take() {
        None => {}
        Some(S::ExactMatch(s)) => out.exact_match = Some(s),
        Some(S::PrefixMatch(s)) => out.prefix_match = Some(s),
        Some(S::SuffixMatch(s)) => out.suffix_match = Some(s),
        Some(S::ContainsMatch(s)) => out.contains_match = Some(s),
        Some(S::PresentMatch(b)) => out.present_match = Some(b),
        Some(S::SafeRegexMatch(r)) => {
            out.safe_regex_match =
                Some(meshgate_core::config::filters::RegexMatcherConfig { regex: r.regex })
        }
        Some(S::StringMatch(m)) => {
            out.string_match = Some(string_matcher(m, &join(path, "string_match"))?)
        }
        Some(S::RangeMatch(_)) => return err(join(path, "range_match"), "not supported"),
    }
    rest(&h, path)?;
    Ok(out)
}

pub(crate) fn metadata(
    mut m: matcher::MetadataMatcher,
    path: &str,
) -> R<rc::MetadataMatcherConfig> {
    let mut keys = Vec::new();
    for (i, s) in std::mem::take(&mut m.path).into_iter().enumerate() {
        match s.segment {
            Some(matcher::metadata_matcher::path_segment::Segment::Key(key)) => {
                keys.push(rc::PathSegment { key })
            }
            None => return err(join(path, &format!("path[{i}].key")), "missing"),
        }
    }
    let value = match m.value.take() {
        Some(v) => value_matcher(v, &join(path, "value"))?,
        None => return err(join(path, "value"), "missing"),
    };
    let out = rc::MetadataMatcherConfig {
        filter: std::mem::take(&mut m.filter),
        path: keys,
        value,
        invert: std::mem::take(&mut m.invert),
    };
    rest(&m, path)?;
    Ok(out)
}

fn value_matcher(v: matcher::ValueMatcher, path: &str) -> R<rc::ValueMatcherConfig> {
    use matcher::value_matcher::MatchPattern as P;
    let mut out = rc::ValueMatcherConfig::default();
    match v.match_pattern {
        None => return err(path, "missing match pattern"),
        Some(P::StringMatch(m)) => {
            out.string_match = Some(string_matcher(m, &join(path, "string_match"))?)
        }
        Some(P::BoolMatch(b)) => out.bool_match = Some(b),
        Some(P::PresentMatch(b)) => out.present_match = Some(b),
        Some(P::ListMatch(l)) => {
            let lp = join(path, "list_match");
            match l.match_pattern {
                Some(matcher::list_matcher::MatchPattern::OneOf(one)) => {
                    out.list_match = Some(Box::new(rc::ListMatcherConfig {
                        one_of: value_matcher(*one, &join(&lp, "one_of"))?,
                    }))
                }
                None => return err(join(&lp, "one_of"), "missing"),
            }
        }
        Some(P::NullMatch(_)) => return err(join(path, "null_match"), "not supported"),
        Some(P::DoubleMatch(_)) => return err(join(path, "double_match"), "not supported"),
        Some(P::OrMatch(_)) => return err(join(path, "or_match"), "not supported"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn exact(s: &str) -> matcher::StringMatcher {
        matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.into())),
            ignore_case: false,
        }
    }

    fn sample_rules(action: i32) -> rbac::Rbac {
        use rbac::permission::Rule;
        use rbac::principal::Identifier;
        let mut r = rbac::Rbac {
            action,
            ..Default::default()
        };
        r.policies.insert(
            "p".into(),
            rbac::Policy {
                permissions: vec![rbac::Permission {
                    rule: Some(Rule::AndRules(rbac::permission::Set {
                        rules: vec![
                            rbac::Permission {
                                rule: Some(Rule::Header(rds::HeaderMatcher {
                                    name: ":method".into(),
                                    header_match_specifier: Some(
                                        rds::header_matcher::HeaderMatchSpecifier::ExactMatch(
                                            "GET".into(),
                                        ),
                                    ),
                                    ..Default::default()
                                })),
                            },
                            rbac::Permission {
                                rule: Some(Rule::UrlPath(matcher::PathMatcher {
                                    rule: Some(matcher::path_matcher::Rule::Path(exact("/a"))),
                                })),
                            },
                        ],
                    })),
                }],
                principals: vec![
                    rbac::Principal {
                        identifier: Some(Identifier::Authenticated(
                            rbac::principal::Authenticated {
                                principal_name: Some(exact("spiffe://x")),
                            },
                        )),
                    },
                    rbac::Principal {
                        identifier: Some(Identifier::RemoteIp(core::CidrRange {
                            address_prefix: "10.0.0.0".into(),
                            prefix_len: Some(protobuf::UInt32Value { value: 8 }),
                        })),
                    },
                    rbac::Principal {
                        identifier: Some(Identifier::Metadata(matcher::MetadataMatcher {
                            filter: "envoy.filters.http.jwt_authn".into(),
                            path: vec![matcher::metadata_matcher::PathSegment {
                                segment: Some(
                                    matcher::metadata_matcher::path_segment::Segment::Key(
                                        "sub".into(),
                                    ),
                                ),
                            }],
                            value: Some(matcher::ValueMatcher {
                                match_pattern: Some(
                                    matcher::value_matcher::MatchPattern::StringMatch(exact("al")),
                                ),
                            }),
                            invert: false,
                        })),
                    },
                ],
                ..Default::default()
            },
        );
        r
    }

    #[test]
    fn http_rbac_and_per_route_translate_to_the_yaml_shape() {
        let c = http_rbac::Rbac {
            rules: Some(sample_rules(1)),
            rules_stat_prefix: "edge.".into(),
            shadow_rules: Some(sample_rules(0)),
            ..Default::default()
        };
        let v = http_filter(&any(HTTP_RBAC, &c), "f").unwrap();
        assert_eq!(
            v["rules"]["policies"]["p"]["permissions"][0],
            serde_json::json!({"and_rules": {"rules": [
                {"header": {"name": ":method", "exact_match": "GET"}},
                {"url_path": {"path": {"exact": "/a"}}}]}})
        );
        assert_eq!(v["rules"]["action"], "DENY");
        assert_eq!(v["shadow_rules"]["action"], "ALLOW");
        assert_eq!(v["rules_stat_prefix"], "edge.");
        assert_eq!(
            v["rules"]["policies"]["p"]["principals"][1],
            serde_json::json!({"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}})
        );
        // What the filter parses back.
        let parsed: rc::RbacHttpConfig = meshgate_core::config::parse_typed(&v).unwrap();
        assert_eq!(parsed.rules.unwrap().policies["p"].principals.len(), 3);
        // Per route: absent `rbac` disables the filter there.
        let v = per_route(
            &any(HTTP_RBAC_PER_ROUTE, &http_rbac::RbacPerRoute { rbac: None }),
            "r",
        )
        .unwrap();
        assert_eq!(v, serde_json::json!({}));
        let v = per_route(
            &any(
                HTTP_RBAC_PER_ROUTE,
                &http_rbac::RbacPerRoute {
                    rbac: Some(c.clone()),
                },
            ),
            "r",
        )
        .unwrap();
        assert_eq!(v["rbac"]["rules"]["action"], "DENY");
    }

    #[test]
    fn unsupported_fields_are_nacked_by_name() {
        let mut r = sample_rules(0);
        if let Some(p) = r.policies.get_mut("p") {
            p.condition = Some(Default::default());
        }
        let c = http_rbac::Rbac {
            rules: Some(r),
            ..Default::default()
        };
        let e = http_filter(&any(HTTP_RBAC, &c), "f").unwrap_err();
        assert_eq!(e.0, "f.rules.policies.p.condition", "{e:?}");
        let c = http_rbac::Rbac {
            matcher: Some(Default::default()),
            ..Default::default()
        };
        let e = http_filter(&any(HTTP_RBAC, &c), "f").unwrap_err();
        assert_eq!(e.0, "f.matcher", "{e:?}");
        let mut r = sample_rules(0);
        if let Some(p) = r.policies.get_mut("p") {
            p.principals.push(rbac::Principal {
                identifier: Some(rbac::principal::Identifier::FilterState(Default::default())),
            });
        }
        let c = net_rbac::Rbac {
            rules: Some(r),
            ..Default::default()
        };
        let e = network_filter(&any(NETWORK_RBAC, &c), "n").unwrap_err();
        assert_eq!(
            e.0, "n.rules.policies.p.principals[3].filter_state",
            "{e:?}"
        );
        let c = net_rbac::Rbac {
            enforcement_type: 1,
            ..Default::default()
        };
        let e = network_filter(&any(NETWORK_RBAC, &c), "n").unwrap_err();
        assert_eq!(e.0, "n.enforcement_type");
    }

    #[test]
    fn network_rbac_translates() {
        let c = net_rbac::Rbac {
            rules: Some(sample_rules(0)),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        };
        let v = network_filter(&any(NETWORK_RBAC, &c), "n").unwrap();
        assert_eq!(v["stat_prefix"], "tcp.");
        assert_eq!(v["enforcement_type"], "ONE_TIME_ON_FIRST_BYTE");
        let parsed: rc::RbacNetworkConfig = meshgate_core::config::parse_typed(&v).unwrap();
        assert_eq!(parsed.rules.unwrap().action, rc::RbacAction::Allow);
    }
}
