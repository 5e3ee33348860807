//! Translation of Envoy's local rate limit filters into meshgate's
//! `local_ratelimit` configs: the HTTP filter
//! (`envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`, also
//! as a `typed_per_filter_config`) and the network filter
//! (`envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit`).
//! A field meshgate does not implement is refused by name (`rest`).

use crate::translate::{R, decode, duration, err, header_options, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as http;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3 as network;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::filters as fc;
use meshgate_core::config::local_ratelimit as lc;
use serde_json::Value;

pub(crate) const HTTP: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub(crate) const NETWORK: &str =
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
/// The HTTP filter's Envoy name (also the `typed_per_filter_config` key).
pub(crate) const HTTP_NAME: &str = "envoy.filters.http.local_ratelimit";

fn json_err(path: &str) -> impl FnOnce(serde_json::Error) -> (String, String) + '_ {
    move |e| (path.to_string(), e.to_string())
}

/// The HTTP filter's (or a route's) `LocalRateLimit` as the filter's config.
pub(crate) fn http_config(any: &protobuf::Any, path: &str) -> R<Value> {
    let c: http::LocalRateLimit =
        decode(any, HTTP).map_err(|e| (path.to_string(), e.to_string()))?;
    serde_json::to_value(http_filter(c, path)?).map_err(json_err(path))
}

/// The network filter's config.
pub(crate) fn network_config(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: network::LocalRateLimit =
        decode(any, NETWORK).map_err(|e| (path.to_string(), e.to_string()))?;
    let Some(tb) = c.token_bucket.take() else {
        return err(join(path, "token_bucket"), "missing");
    };
    let out = lc::NetworkLocalRateLimitConfig {
        stat_prefix: std::mem::take(&mut c.stat_prefix),
        token_bucket: token_bucket(tb, &join(path, "token_bucket"))?,
    };
    rest(&c, path)?;
    serde_json::to_value(out).map_err(json_err(path))
}

fn token_bucket(mut t: typev3::TokenBucket, path: &str) -> R<lc::TokenBucketConfig> {
    let Some(fi) = t.fill_interval.take() else {
        return err(join(path, "fill_interval"), "missing");
    };
    let out = lc::TokenBucketConfig {
        max_tokens: std::mem::take(&mut t.max_tokens),
        tokens_per_fill: t.tokens_per_fill.take().map(|v| v.value),
        fill_interval: duration(&fi, &join(path, "fill_interval"))?,
    };
    rest(&t, path)?;
    Ok(out)
}

fn fraction(
    f: Option<core3::RuntimeFractionalPercent>,
    path: &str,
) -> R<Option<fc::RuntimeFractionalPercent>> {
    let Some(mut f) = f else { return Ok(None) };
    if !f.runtime_key.is_empty() {
        return err(join(path, "runtime_key"), "meshgate has no runtime layer");
    }
    let d = f.default_value.take().unwrap_or_default();
    let denominator = match d.denominator {
        0 => fc::Denominator::Hundred,
        1 => fc::Denominator::TenThousand,
        2 => fc::Denominator::Million,
        _ => return err(join(path, "default_value.denominator"), "unknown value"),
    };
    rest(&f, path)?;
    Ok(Some(fc::RuntimeFractionalPercent {
        default_value: fc::FractionalPercent {
            numerator: d.numerator,
            denominator,
        },
    }))
}

fn http_filter(mut c: http::LocalRateLimit, path: &str) -> R<lc::LocalRateLimitConfig> {
    let p = |f: &str| join(path, f);
    let status = match c.status.take() {
        None => None,
        Some(s) => Some(lc::HttpStatusConfig {
            code: u16::try_from(s.code)
                .map_err(|_| (p("status.code"), "not an HTTP status".to_string()))?,
        }),
    };
    let default_bucket = match c.token_bucket.take() {
        None => None,
        Some(t) => Some(token_bucket(t, &p("token_bucket"))?),
    };
    let mut descriptors = Vec::new();
    for (i, mut d) in std::mem::take(&mut c.descriptors).into_iter().enumerate() {
        let dp = p(&format!("descriptors[{i}]"));
        if d.shadow_mode {
            return err(join(&dp, "shadow_mode"), "not supported");
        }
        let Some(tb) = d.token_bucket.take() else {
            return err(join(&dp, "token_bucket"), "missing");
        };
        let mut entries = Vec::new();
        for (j, mut e) in std::mem::take(&mut d.entries).into_iter().enumerate() {
            entries.push(lc::DescriptorEntryConfig {
                key: std::mem::take(&mut e.key),
                value: std::mem::take(&mut e.value),
            });
            rest(&e, &join(&dp, &format!("entries[{j}]")))?;
        }
        descriptors.push(lc::LocalDescriptorConfig {
            entries,
            token_bucket: token_bucket(tb, &join(&dp, "token_bucket"))?,
        });
        rest(&d, &dp)?;
    }
    let mut rate_limits = Vec::new();
    for (i, r) in std::mem::take(&mut c.rate_limits).into_iter().enumerate() {
        rate_limits.push(rate_limit(r, &p(&format!("rate_limits[{i}]")))?);
    }
    let enable_x_ratelimit_headers = match std::mem::take(&mut c.enable_x_ratelimit_headers) {
        0 => lc::XRateLimitHeaders::Off,
        1 => lc::XRateLimitHeaders::DraftVersion03,
        _ => return err(p("enable_x_ratelimit_headers"), "unknown value"),
    };
    // OVERRIDE (0), the default: route and virtual host `rate_limits` are
    // not read by meshgate's local rate limit (its own `rate_limits` are),
    // so any other choice would be a silent no-op.
    if c.vh_rate_limits != 0 {
        return err(
            p("vh_rate_limits"),
            "only OVERRIDE (the default) is supported",
        );
    }
    if c.stage != 0 {
        return err(p("stage"), "not supported (one stage)");
    }
    let out = lc::LocalRateLimitConfig {
        stat_prefix: std::mem::take(&mut c.stat_prefix),
        status,
        token_bucket: default_bucket,
        filter_enabled: fraction(c.filter_enabled.take(), &p("filter_enabled"))?,
        filter_enforced: fraction(c.filter_enforced.take(), &p("filter_enforced"))?,
        request_headers_to_add_when_not_enforced: header_options(
            std::mem::take(&mut c.request_headers_to_add_when_not_enforced),
            &p("request_headers_to_add_when_not_enforced"),
        )?,
        response_headers_to_add: header_options(
            std::mem::take(&mut c.response_headers_to_add),
            &p("response_headers_to_add"),
        )?,
        descriptors,
        local_rate_limit_per_downstream_connection: std::mem::take(
            &mut c.local_rate_limit_per_downstream_connection,
        ),
        enable_x_ratelimit_headers,
        always_consume_default_token_bucket: c
            .always_consume_default_token_bucket
            .take()
            .map(|b| b.value),
        rate_limited_as_resource_exhausted: std::mem::take(
            &mut c.rate_limited_as_resource_exhausted,
        ),
        rate_limits,
        max_dynamic_descriptors: c.max_dynamic_descriptors.take().map(|v| v.value),
        enable_retry_after_header: std::mem::take(&mut c.enable_retry_after_header),
    };
    rest(&c, path)?;
    Ok(out)
}

pub(crate) fn rate_limit(mut r: rds::RateLimit, path: &str) -> R<lc::RateLimitConfig> {
    use rds::rate_limit::action::ActionSpecifier as A;
    let mut actions = Vec::new();
    for (i, mut a) in std::mem::take(&mut r.actions).into_iter().enumerate() {
        let ap = join(path, &format!("actions[{i}]"));
        let mut out = lc::RateLimitActionConfig::default();
        match a.action_specifier.take() {
            Some(A::RequestHeaders(mut h)) => {
                out.request_headers = Some(lc::RequestHeadersAction {
                    header_name: std::mem::take(&mut h.header_name),
                    descriptor_key: std::mem::take(&mut h.descriptor_key),
                    skip_if_absent: std::mem::take(&mut h.skip_if_absent),
                });
                rest(&h, &join(&ap, "request_headers"))?;
            }
            Some(A::RemoteAddress(x)) => {
                rest(&x, &join(&ap, "remote_address"))?;
                out.remote_address = Some(lc::EmptyAction {});
            }
            Some(A::GenericKey(mut g)) => {
                out.generic_key = Some(lc::GenericKeyAction {
                    descriptor_value: std::mem::take(&mut g.descriptor_value),
                    descriptor_key: std::mem::take(&mut g.descriptor_key),
                });
                rest(&g, &join(&ap, "generic_key"))?;
            }
            Some(A::HeaderValueMatch(mut m)) => {
                let hp = join(&ap, "header_value_match");
                let mut headers = Vec::new();
                for (j, h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
                    headers.push(crate::translate::header_matcher(
                        h,
                        &join(&hp, &format!("headers[{j}]")),
                    )?);
                }
                out.header_value_match = Some(lc::HeaderValueMatchAction {
                    descriptor_value: std::mem::take(&mut m.descriptor_value),
                    descriptor_key: std::mem::take(&mut m.descriptor_key),
                    expect_match: m.expect_match.take().map(|b| b.value),
                    headers,
                });
                rest(&m, &hp)?;
            }
            Some(A::QueryParameters(mut q)) => {
                out.query_parameters = Some(lc::QueryParametersAction {
                    query_parameter_name: std::mem::take(&mut q.query_parameter_name),
                    descriptor_key: std::mem::take(&mut q.descriptor_key),
                    skip_if_absent: std::mem::take(&mut q.skip_if_absent),
                });
                rest(&q, &join(&ap, "query_parameters"))?;
            }
            None => return err(ap, "missing action"),
            Some(other) => {
                let name = match other {
                    A::SourceCluster(_) => "source_cluster",
                    A::DestinationCluster(_) => "destination_cluster",
                    A::Metadata(_) => "metadata",
                    A::MaskedRemoteAddress(_) => "masked_remote_address",
                    A::QueryParameterValueMatch(_) => "query_parameter_value_match",
                    _ => "this action",
                };
                return err(
                    join(&ap, name),
                    "not supported (request_headers, remote_address, generic_key, header_value_match, query_parameters)",
                );
            }
        }
        rest(&a, &ap)?;
        actions.push(out);
    }
    rest(&r, path)?;
    Ok(lc::RateLimitConfig { actions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
    use prost::Message;

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn tb(max: u32, secs: i64) -> Option<typev3::TokenBucket> {
        Some(typev3::TokenBucket {
            max_tokens: max,
            tokens_per_fill: Some(protobuf::UInt32Value { value: 2 }),
            fill_interval: Some(protobuf::Duration {
                seconds: secs,
                nanos: 0,
            }),
        })
    }

    #[test]
    fn http_local_rate_limit_translates_every_supported_field() {
        use rds::rate_limit::action::ActionSpecifier as A;
        let c = http::LocalRateLimit {
            stat_prefix: "p".into(),
            status: Some(typev3::HttpStatus { code: 503 }),
            token_bucket: tb(10, 1),
            filter_enabled: Some(core3::RuntimeFractionalPercent {
                default_value: Some(typev3::FractionalPercent {
                    numerator: 50,
                    denominator: 0,
                }),
                runtime_key: String::new(),
            }),
            response_headers_to_add: vec![core3::HeaderValueOption {
                header: Some(core3::HeaderValue {
                    key: "x-a".into(),
                    value: "1".into(),
                    ..Default::default()
                }),
                append_action: 2,
                ..Default::default()
            }],
            descriptors: vec![common::LocalRateLimitDescriptor {
                entries: vec![common::rate_limit_descriptor::Entry {
                    key: "user".into(),
                    value: String::new(),
                }],
                token_bucket: tb(1, 60),
                shadow_mode: false,
            }],
            rate_limits: vec![rds::RateLimit {
                actions: vec![
                    rds::rate_limit::Action {
                        action_specifier: Some(A::RequestHeaders(
                            rds::rate_limit::action::RequestHeaders {
                                header_name: "x-user".into(),
                                descriptor_key: "user".into(),
                                skip_if_absent: false,
                            },
                        )),
                    },
                    rds::rate_limit::Action {
                        action_specifier: Some(A::RemoteAddress(Default::default())),
                    },
                ],
                ..Default::default()
            }],
            enable_x_ratelimit_headers: 1,
            rate_limited_as_resource_exhausted: true,
            always_consume_default_token_bucket: Some(protobuf::BoolValue { value: false }),
            max_dynamic_descriptors: Some(protobuf::UInt32Value { value: 100 }),
            local_rate_limit_per_downstream_connection: true,
            ..Default::default()
        };
        let v = http_config(&any(HTTP, &c), "f").unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "stat_prefix": "p",
                "status": {"code": 503},
                "token_bucket": {"max_tokens": 10, "tokens_per_fill": 2, "fill_interval": "1s"},
                "filter_enabled": {"default_value": {"numerator": 50, "denominator": "HUNDRED"}},
                "response_headers_to_add": [{"name": "x-a", "value": "1", "append": false}],
                "descriptors": [{"entries": [{"key": "user"}],
                    "token_bucket": {"max_tokens": 1, "tokens_per_fill": 2, "fill_interval": "1m"}}],
                "local_rate_limit_per_downstream_connection": true,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "always_consume_default_token_bucket": false,
                "rate_limited_as_resource_exhausted": true,
                "rate_limits": [{"actions": [
                    {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}},
                    {"remote_address": {}}]}],
                "max_dynamic_descriptors": 100,
            })
        );
        // And the filter's own parser takes it back.
        let _: lc::LocalRateLimitConfig = meshgate_core::config::parse_typed(&v).unwrap();
    }

    #[test]
    fn unsupported_fields_and_actions_are_named() {
        use rds::rate_limit::action::ActionSpecifier as A;
        let base = http::LocalRateLimit {
            stat_prefix: "p".into(),
            ..Default::default()
        };
        let e = |c: &http::LocalRateLimit| http_config(&any(HTTP, c), "f").unwrap_err().0;
        let mut c = base.clone();
        c.local_cluster_rate_limit = Some(Default::default());
        assert_eq!(e(&c), "f.local_cluster_rate_limit");
        let mut c = base.clone();
        c.stage = 2;
        assert_eq!(e(&c), "f.stage");
        let mut c = base.clone();
        c.rate_limits = vec![rds::RateLimit {
            actions: vec![rds::rate_limit::Action {
                action_specifier: Some(A::DestinationCluster(Default::default())),
            }],
            ..Default::default()
        }];
        assert_eq!(e(&c), "f.rate_limits[0].actions[0].destination_cluster");
        let mut c = base.clone();
        c.filter_enforced = Some(core3::RuntimeFractionalPercent {
            default_value: None,
            runtime_key: "k".into(),
        });
        assert_eq!(e(&c), "f.filter_enforced.runtime_key");
    }

    #[test]
    fn route_and_virtual_host_rate_limits_are_translated() {
        use rds::rate_limit::action::ActionSpecifier as A;
        let rl = |a: A| rds::RateLimit {
            actions: vec![rds::rate_limit::Action {
                action_specifier: Some(a),
            }],
            ..Default::default()
        };
        let r = rds::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![rds::VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                rate_limits: vec![rl(A::RemoteAddress(Default::default()))],
                routes: vec![rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(
                            "c".into(),
                        )),
                        rate_limits: vec![rl(A::GenericKey(rds::rate_limit::action::GenericKey {
                            descriptor_value: "g".into(),
                            ..Default::default()
                        }))],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = crate::translate::route_configuration(r.clone()).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["virtual_hosts"][0]["rate_limits"],
            serde_json::json!([{"actions": [{"remote_address": {}}]}])
        );
        assert_eq!(
            v["virtual_hosts"][0]["routes"][0]["route"]["rate_limits"],
            serde_json::json!([{"actions": [{"generic_key": {"descriptor_value": "g"}}]}])
        );
        // An action local rate limits cannot evaluate is refused by name.
        let mut bad = r;
        bad.virtual_hosts[0].rate_limits = vec![rl(A::SourceCluster(Default::default()))];
        let e = crate::translate::route_configuration(bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("rate_limits[0].actions[0].source_cluster"),
            "{e}"
        );
    }

    #[test]
    fn network_local_rate_limit() {
        let c = network::LocalRateLimit {
            stat_prefix: "tcp".into(),
            token_bucket: tb(5, 1),
            ..Default::default()
        };
        assert_eq!(
            network_config(&any(NETWORK, &c), "f").unwrap(),
            serde_json::json!({"stat_prefix": "tcp",
                "token_bucket": {"max_tokens": 5, "tokens_per_fill": 2, "fill_interval": "1s"}})
        );
        let mut c = c;
        c.share_key = "k".into();
        assert_eq!(
            network_config(&any(NETWORK, &c), "f").unwrap_err().0,
            "f.share_key"
        );
    }
}
