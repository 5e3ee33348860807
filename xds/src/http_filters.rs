//! Translation of the HCM's `http_filters` and of `typed_per_filter_config`
//! (virtual host, route) into meshgate's stream filter chain and
//! `per_filter_config`. Only filters meshgate ships are known; any other is
//! a NACK naming it unless Envoy's `is_optional` says it may be skipped:
//! security policy is never silently ignored.

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::filters as fc;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

pub(crate) const ROUTER_NAME: &str = "envoy.filters.http.router";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// One HTTP filter meshgate ships, as xDS names it.
struct Known {
    /// The registered meshgate filter name.
    name: &'static str,
    /// Envoy's well-known filter name (also the usual
    /// `typed_per_filter_config` key).
    envoy_name: &'static str,
    /// The type of its HCM `typed_config`.
    type_url: &'static str,
    /// Translates the HCM `typed_config` into the filter's config.
    filter: fn(&protobuf::Any, &str) -> R<Value>,
    /// The types its `typed_per_filter_config` may carry.
    per_route_types: &'static [&'static str],
    /// Translates a `typed_per_filter_config` value.
    per_route: fn(&protobuf::Any, &str) -> R<Value>,
}

/// Every HTTP filter xDS may configure (the router aside). Adding a filter
/// is one entry here.
const KNOWN: &[Known] = &[
    Known {
        name: "cors",
        envoy_name: "envoy.filters.http.cors",
        type_url: CORS,
        filter: |a, p| {
            let c: cors::Cors = decode(a, CORS).map_err(|e| (p.to_string(), e.to_string()))?;
            rest(&c, p)?;
            Ok(Value::Null)
        },
        per_route_types: &[CORS_POLICY],
        per_route: |a, p| {
            let c: cors::CorsPolicy =
                decode(a, CORS_POLICY).map_err(|e| (p.to_string(), e.to_string()))?;
            serde_json::to_value(cors_policy(c, p)?).map_err(|e| (p.to_string(), e.to_string()))
        },
    },
    Known {
        name: "csrf",
        envoy_name: "envoy.filters.http.csrf",
        type_url: crate::simpleauth::CSRF_POLICY,
        filter: crate::simpleauth::http_filter,
        per_route_types: &[crate::simpleauth::CSRF_POLICY],
        per_route: crate::simpleauth::per_route,
    },
    Known {
        name: "basic_auth",
        envoy_name: "envoy.filters.http.basic_auth",
        type_url: crate::simpleauth::BASIC_AUTH,
        filter: crate::simpleauth::http_filter,
        per_route_types: &[crate::simpleauth::BASIC_AUTH_PER_ROUTE],
        per_route: crate::simpleauth::per_route,
    },
    Known {
        name: "api_key_auth",
        envoy_name: "envoy.filters.http.api_key_auth",
        type_url: crate::simpleauth::API_KEY_AUTH,
        filter: crate::simpleauth::http_filter,
        per_route_types: &[crate::simpleauth::API_KEY_AUTH_PER_ROUTE],
        per_route: crate::simpleauth::per_route,
    },
    Known {
        name: "jwt_authn",
        envoy_name: "envoy.filters.http.jwt_authn",
        type_url: crate::jwt_authn::JWT_AUTHN,
        filter: crate::jwt_authn::jwt_authentication,
        per_route_types: &[crate::jwt_authn::JWT_PER_ROUTE],
        per_route: crate::jwt_authn::per_route,
    },
    Known {
        name: "ext_authz",
        envoy_name: "envoy.filters.http.ext_authz",
        type_url: crate::ext_authz::EXT_AUTHZ,
        filter: crate::ext_authz::filter,
        per_route_types: &[crate::ext_authz::EXT_AUTHZ_PER_ROUTE],
        per_route: crate::ext_authz::per_route,
    },
    Known {
        name: "rbac",
        envoy_name: "envoy.filters.http.rbac",
        type_url: crate::rbac::HTTP_RBAC,
        filter: crate::rbac::http_filter,
        per_route_types: &[crate::rbac::HTTP_RBAC_PER_ROUTE],
        per_route: crate::rbac::per_route,
    },
    Known {
        name: "local_ratelimit",
        envoy_name: crate::local_ratelimit::HTTP_NAME,
        type_url: crate::local_ratelimit::HTTP,
        filter: crate::local_ratelimit::http_config,
        per_route_types: &[crate::local_ratelimit::HTTP],
        per_route: crate::local_ratelimit::http_config,
    },
    Known {
        name: "compressor",
        envoy_name: crate::compressor::NAME,
        type_url: crate::compressor::COMPRESSOR,
        filter: crate::compressor::filter,
        per_route_types: &[crate::compressor::PER_ROUTE],
        per_route: crate::compressor::per_route,
    },
    Known {
        name: "decompressor",
        envoy_name: crate::decompressor::NAME,
        type_url: crate::decompressor::DECOMPRESSOR,
        filter: crate::decompressor::filter,
        per_route_types: &[],
        per_route: crate::decompressor::per_route,
    },
    Known {
        name: "header_mutation",
        envoy_name: crate::header_mutation::NAME,
        type_url: crate::header_mutation::FILTER,
        filter: crate::header_mutation::filter,
        per_route_types: &[crate::header_mutation::PER_ROUTE],
        per_route: crate::header_mutation::per_route,
    },
    Known {
        name: "fault",
        envoy_name: crate::fault::HTTP_NAME,
        type_url: crate::fault::HTTP,
        filter: crate::fault::http_config,
        per_route_types: &[crate::fault::HTTP],
        per_route: crate::fault::http_config,
    },
    Known {
        name: "ratelimit",
        envoy_name: crate::ratelimit::HTTP_NAME,
        type_url: crate::ratelimit::HTTP,
        filter: crate::ratelimit::http_config,
        per_route_types: &[crate::ratelimit::PER_ROUTE],
        per_route: crate::ratelimit::per_route,
    },
    Known {
        name: "grpc_json_transcoder",
        envoy_name: crate::grpc_json_transcoder::NAME,
        type_url: crate::grpc_json_transcoder::TRANSCODER,
        filter: crate::grpc_json_transcoder::filter,
        per_route_types: &[crate::grpc_json_transcoder::TRANSCODER],
        per_route: crate::grpc_json_transcoder::per_route,
    },
    Known {
        name: "istio_peer_metadata",
        envoy_name: crate::istio::MX_NAME,
        type_url: crate::istio::PEER_METADATA,
        filter: crate::istio::http_exchange,
        per_route_types: &[],
        per_route: crate::istio::http_exchange,
    },
    Known {
        name: "istio_peer_metadata",
        envoy_name: crate::istio::MX_NAME,
        type_url: crate::istio::HTTP_METADATA_EXCHANGE,
        filter: crate::istio::http_exchange,
        per_route_types: &[],
        per_route: crate::istio::http_exchange,
    },
    Known {
        name: "istio_stats",
        envoy_name: crate::istio::STATS_NAME,
        type_url: crate::istio::STATS,
        filter: crate::istio::stats,
        per_route_types: &[],
        per_route: crate::istio::stats,
    },
    Known {
        name: "grpc_web",
        envoy_name: crate::grpc_web::NAME,
        type_url: crate::grpc_web::GRPC_WEB,
        filter: crate::grpc_web::filter,
        per_route_types: &[],
        per_route: crate::grpc_web::filter,
    },
];

/// The Envoy names of every known filter, for refusals.
fn known_names() -> String {
    let mut names = vec![ROUTER_NAME];
    names.extend(KNOWN.iter().map(|k| k.envoy_name));
    names.join(", ")
}

/// The HCM's HTTP filters as the proxy's `stream_filters` (the router, the
/// implicit last filter, is left out).
pub(crate) fn http_filters(
    filters: Vec<hcm::HttpFilter>,
    path: &str,
) -> R<Vec<fc::StreamFilterConfig>> {
    let mut out = Vec::new();
    for (i, mut f) in filters.into_iter().enumerate() {
        let fp = format!("{path}.http_filters[{i}]");
        let typed = match f.config_type.take() {
            None => None,
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(_) => return err(join(&fp, "config_discovery"), "not supported"),
        };
        let tp = join(&fp, "typed_config");
        let is_router = match &typed {
            None => f.name == ROUTER_NAME,
            Some(a) => a.type_url == ROUTER,
        };
        if is_router {
            if let Some(a) = &typed {
                let r: envoy_types::pb::envoy::extensions::filters::http::router::v3::Router =
                    decode(a, ROUTER).map_err(|e| (fp.clone(), e.to_string()))?;
                let cfg = crate::mirror::router_config(r, &tp)?;
                if !cfg.is_default() {
                    out.push(fc::StreamFilterConfig {
                        name: ROUTER_NAME.into(),
                        config: serde_json::to_value(cfg)
                            .map_err(|e| (tp.clone(), e.to_string()))?,
                        disabled: false,
                    });
                }
            }
        } else {
            // Known by the type of its config; listed without a config,
            // by its Envoy name (only cors has nothing to configure: a
            // policy filter without its policy is refused).
            let known = match &typed {
                Some(a) => KNOWN.iter().find(|k| k.type_url == a.type_url),
                None => KNOWN.iter().find(|k| k.envoy_name == f.name),
            };
            match (known, &typed) {
                (Some(k), Some(a)) => out.push(fc::StreamFilterConfig {
                    name: k.name.into(),
                    config: (k.filter)(a, &tp)?,
                    disabled: f.disabled,
                }),
                (Some(k), None) if k.name == "cors" || k.name == "grpc_web" => {
                    out.push(fc::StreamFilterConfig {
                        name: k.name.into(),
                        config: Value::Null,
                        disabled: f.disabled,
                    })
                }
                (Some(_), None) => return err(tp, "required: the filter's config"),
                // Envoy's contract: an optional filter the proxy does not
                // know is skipped.
                (None, _) if f.is_optional => continue,
                (None, _) => {
                    return err(
                        join(&fp, "name"),
                        format!(
                            "HTTP filter '{}' not supported (known: {})",
                            f.name,
                            known_names()
                        ),
                    );
                }
            }
        }
        f.name.clear();
        f.disabled = false;
        f.is_optional = false;
        rest(&f, &fp)?;
    }
    Ok(out)
}

/// A virtual host's, route's or weighted cluster's
/// `typed_per_filter_config`, keyed by the meshgate filter it configures.
/// The key is the filter's Envoy name (or meshgate name); a key the
/// control plane chose itself is resolved by the config's type.
pub(crate) fn per_filter_config(
    map: HashMap<String, protobuf::Any>,
    path: &str,
) -> R<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    // Sorted, so the first refused entry is the same every time.
    let map: BTreeMap<_, _> = map.into_iter().collect();
    for (key, any) in map {
        let p = join(path, &format!("typed_per_filter_config.{key}"));
        let (config, disabled, optional) = if any.type_url == FILTER_CONFIG {
            let mut w: rds::FilterConfig =
                decode(&any, FILTER_CONFIG).map_err(|e| (p.clone(), e.to_string()))?;
            let c = w.config.take();
            let (d, o) = (w.disabled, w.is_optional);
            w.disabled = false;
            w.is_optional = false;
            rest(&w, &p)?;
            (c, d, o)
        } else {
            (Some(any), false, false)
        };
        let by_key = KNOWN.iter().find(|k| k.envoy_name == key || k.name == key);
        let by_type = config.as_ref().and_then(|a| {
            KNOWN
                .iter()
                .find(|k| k.per_route_types.contains(&a.type_url.as_str()))
        });
        let Some(known) = by_key.or(by_type) else {
            if optional {
                continue;
            }
            return err(
                p,
                format!(
                    "HTTP filter '{key}' not supported here (known: {})",
                    known_names()
                ),
            );
        };
        let value = match (&config, disabled) {
            (_, true) => serde_json::json!({"disabled": true}),
            (None, false) => serde_json::json!({"disabled": false}),
            (Some(a), false) if known.per_route_types.contains(&a.type_url.as_str()) => {
                (known.per_route)(a, &p)?
            }
            (Some(_), false) if optional => continue,
            (Some(a), false) => {
                return err(
                    p,
                    format!(
                        "per-filter config '{}' is not a {} config (expected {})",
                        a.type_url,
                        known.name,
                        known.per_route_types.join(" or ")
                    ),
                );
            }
        };
        out.insert(known.name.to_string(), value);
    }
    Ok(out)
}

pub(crate) fn cors_policy(mut c: cors::CorsPolicy, path: &str) -> R<fc::CorsPolicyConfig> {
    let mut origins = Vec::new();
    for (i, m) in std::mem::take(&mut c.allow_origin_string_match)
        .into_iter()
        .enumerate()
    {
        origins.push(string_matcher(
            m,
            &join(path, &format!("allow_origin_string_match[{i}]")),
        )?);
    }
    let filter_enabled = match c.filter_enabled.take() {
        None => None,
        Some(mut f) => {
            let fp = join(path, "filter_enabled");
            let d = f.default_value.take().unwrap_or_default();
            if !f.runtime_key.is_empty() {
                return err(join(&fp, "runtime_key"), "meshgate has no runtime layer");
            }
            Some(fc::RuntimeFractionalPercent {
                default_value: fc::FractionalPercent {
                    numerator: d.numerator,
                    denominator: match d.denominator {
                        0 => fc::Denominator::Hundred,
                        1 => fc::Denominator::TenThousand,
                        2 => fc::Denominator::Million,
                        _ => {
                            return err(join(&fp, "default_value.denominator"), "unknown value");
                        }
                    },
                },
            })
        }
    };
    let out = fc::CorsPolicyConfig {
        allow_origin_string_match: origins,
        allow_methods: std::mem::take(&mut c.allow_methods),
        allow_headers: std::mem::take(&mut c.allow_headers),
        expose_headers: std::mem::take(&mut c.expose_headers),
        max_age: std::mem::take(&mut c.max_age),
        allow_credentials: c.allow_credentials.take().map(|b| b.value),
        filter_enabled,
        forward_not_matching_preflights: c.forward_not_matching_preflights.take().map(|b| b.value),
    };
    rest(&c, path)?;
    Ok(out)
}

pub(crate) fn string_matcher(
    mut m: matcher::StringMatcher,
    path: &str,
) -> R<fc::StringMatcherConfig> {
    use matcher::string_matcher::MatchPattern;
    let mut out = fc::StringMatcherConfig {
        ignore_case: std::mem::take(&mut m.ignore_case),
        ..Default::default()
    };
    match m.match_pattern.take() {
        Some(MatchPattern::Exact(s)) => out.exact = Some(s),
        Some(MatchPattern::Prefix(s)) => out.prefix = Some(s),
        Some(MatchPattern::Suffix(s)) => out.suffix = Some(s),
        Some(MatchPattern::Contains(s)) => out.contains = Some(s),
        Some(MatchPattern::SafeRegex(r)) => {
            out.safe_regex = Some(fc::RegexMatcherConfig { regex: r.regex })
        }
        Some(MatchPattern::Custom(_)) => {
            return err(join(path, "custom"), "not supported");
        }
        None => return err(path, "missing match pattern"),
    }
    rest(&m, path)?;
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

    #[test]
    fn cors_and_router_are_translated_others_refused_unless_optional() {
        let f = |name: &str, a: Option<protobuf::Any>| hcm::HttpFilter {
            name: name.into(),
            config_type: a.map(hcm::http_filter::ConfigType::TypedConfig),
            ..Default::default()
        };
        let mut cors = f("envoy.filters.http.cors", Some(any(CORS, &cors::Cors {})));
        cors.disabled = true;
        let out = http_filters(vec![cors, f(ROUTER_NAME, None)], "hcm").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "cors");
        assert!(out[0].disabled);
        let e = http_filters(vec![f("envoy.filters.http.lua", None)], "hcm").unwrap_err();
        assert_eq!(e.0, "hcm.http_filters[0].name");
        assert!(e.1.contains("envoy.filters.http.lua"), "{}", e.1);
        assert!(e.1.contains("envoy.filters.http.jwt_authn"), "{}", e.1);
        // A policy filter without its policy is refused, never a no-op.
        let e = http_filters(vec![f("envoy.filters.http.rbac", None)], "hcm").unwrap_err();
        assert_eq!(e.0, "hcm.http_filters[0].typed_config");
        let mut opt = f("envoy.filters.http.lua", None);
        opt.is_optional = true;
        assert!(http_filters(vec![opt], "hcm").unwrap().is_empty());
    }

    #[test]
    fn per_filter_cors_policy_and_disabled_wrapper() {
        let policy = cors::CorsPolicy {
            allow_origin_string_match: vec![matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Suffix(
                    ".example".into(),
                )),
                ignore_case: false,
            }],
            allow_methods: "GET".into(),
            max_age: "60".into(),
            allow_credentials: Some(protobuf::BoolValue { value: true }),
            ..Default::default()
        };
        let mut m = HashMap::new();
        m.insert("envoy.filters.http.cors".into(), any(CORS_POLICY, &policy));
        let out = per_filter_config(m, "vh").unwrap();
        assert_eq!(
            out["cors"],
            serde_json::json!({"allow_origin_string_match": [{"suffix": ".example"}],
                "allow_methods": "GET", "max_age": "60", "allow_credentials": true})
        );
        let mut m = HashMap::new();
        let w = rds::FilterConfig {
            disabled: true,
            ..Default::default()
        };
        m.insert("envoy.filters.http.cors".into(), any(FILTER_CONFIG, &w));
        assert_eq!(
            per_filter_config(m, "vh").unwrap()["cors"],
            serde_json::json!({"disabled": true})
        );
        let mut m = HashMap::new();
        m.insert("envoy.filters.http.rbac".into(), any(CORS_POLICY, &policy));
        let e = per_filter_config(m, "vh").unwrap_err();
        assert_eq!(e.0, "vh.typed_per_filter_config.envoy.filters.http.rbac");
        let mut m = HashMap::new();
        let mut shadow = policy.clone();
        shadow.shadow_enabled = Some(Default::default());
        m.insert("envoy.filters.http.cors".into(), any(CORS_POLICY, &shadow));
        let e = per_filter_config(m, "vh").unwrap_err();
        assert!(e.0.ends_with("shadow_enabled"), "{e:?}");
        // A key the control plane chose (Envoy Gateway's
        // `envoy.filters.http.cors/...` style) is resolved by the type.
        let mut m = HashMap::new();
        m.insert("gateway/cors-0".into(), any(CORS_POLICY, &policy));
        let out = per_filter_config(m, "vh").unwrap();
        assert!(out.contains_key("cors"), "{out:?}");
        // An unknown key with an unknown type is refused, naming it.
        let mut m = HashMap::new();
        m.insert(
            "envoy.filters.http.lua".into(),
            any("type.googleapis.com/x.Lua", &policy),
        );
        let e = per_filter_config(m, "vh").unwrap_err();
        assert!(e.1.contains("envoy.filters.http.lua"), "{e:?}");
    }
}
