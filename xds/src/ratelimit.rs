//! Translation of Envoy's `envoy.filters.http.ratelimit` (`RateLimit`)
//! into the global `ratelimit` filter's config
//! (`meshgate_core::config::ratelimit`). The descriptors come from the
//! route's and virtual host's `rate_limits` (translated with the route
//! table); the filter's own `rate_limits`, `RateLimitPerRoute` and every
//! other field meshgate does not apply is a NACK naming it.

use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3 as rl;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::ext_authz::HttpStatusConfig;
use meshgate_core::config::local_ratelimit::XRateLimitHeaders;
use meshgate_core::config::ratelimit as c;
use serde_json::Value;

pub(crate) const HTTP: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
pub(crate) const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
pub(crate) const HTTP_NAME: &str = "envoy.filters.http.ratelimit";

/// The HCM filter's `typed_config` (`path` names it).
pub(crate) fn http_config(any: &protobuf::Any, path: &str) -> R<Value> {
    let m: rl::RateLimit = decode(any, HTTP).map_err(|e| (path.to_string(), e.to_string()))?;
    serde_json::to_value(filter(m, path)?).map_err(|e| (path.to_string(), e.to_string()))
}

fn filter(mut m: rl::RateLimit, path: &str) -> R<c::RateLimitFilterConfig> {
    let timeout = match m.timeout.take() {
        None => None,
        Some(d) => Some(duration(&d, &join(path, "timeout"))?),
    };
    let rate_limit_service = match m.rate_limit_service.take() {
        None => return err(join(path, "rate_limit_service"), "required"),
        Some(mut s) => {
            let sp = join(path, "rate_limit_service");
            let transport_api_version = match std::mem::take(&mut s.transport_api_version) {
                // AUTO means V3, the only version there is.
                0 | 2 => None,
                _ => return err(join(&sp, "transport_api_version"), "only V3 is supported"),
            };
            let Some(g) = s.grpc_service.take() else {
                return err(join(&sp, "grpc_service"), "required");
            };
            let grpc_service = crate::ext_authz::grpc_service(g, &join(&sp, "grpc_service"))?;
            rest(&s, &sp)?;
            c::RateLimitServiceConfig {
                grpc_service,
                transport_api_version,
            }
        }
    };
    let enable_x_ratelimit_headers = match std::mem::take(&mut m.enable_x_ratelimit_headers) {
        0 => XRateLimitHeaders::Off,
        1 => XRateLimitHeaders::DraftVersion03,
        _ => return err(join(path, "enable_x_ratelimit_headers"), "unknown value"),
    };
    let rate_limited_status = match m.rate_limited_status.take() {
        None => None,
        Some(s) => Some(HttpStatusConfig {
            code: u16::try_from(s.code).map_err(|_| {
                (
                    join(path, "rate_limited_status.code"),
                    "out of range".to_string(),
                )
            })?,
        }),
    };
    let out = c::RateLimitFilterConfig {
        domain: std::mem::take(&mut m.domain),
        stage: std::mem::take(&mut m.stage),
        request_type: std::mem::take(&mut m.request_type),
        timeout,
        failure_mode_deny: std::mem::take(&mut m.failure_mode_deny),
        rate_limited_as_resource_exhausted: std::mem::take(
            &mut m.rate_limited_as_resource_exhausted,
        ),
        rate_limit_service: Some(rate_limit_service),
        enable_x_ratelimit_headers,
        rate_limited_status,
    };
    rest(&m, path)?;
    Ok(out)
}

/// `RateLimitPerRoute` is not supported: refused by name rather than
/// ignored.
pub(crate) fn per_route(_: &protobuf::Any, path: &str) -> R<Value> {
    err(
        path,
        "RateLimitPerRoute is not supported (use the route's rate_limits)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::ratelimit::v3 as rlc;

    fn service() -> rlc::RateLimitServiceConfig {
        rlc::RateLimitServiceConfig {
            grpc_service: Some(core3::GrpcService {
                target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core3::grpc_service::EnvoyGrpc {
                        cluster_name: "rls".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: 2,
        }
    }

    #[test]
    fn every_supported_field_is_translated() {
        let m = rl::RateLimit {
            domain: "d".into(),
            timeout: Some(protobuf::Duration {
                seconds: 0,
                nanos: 50_000_000,
            }),
            failure_mode_deny: true,
            rate_limited_as_resource_exhausted: true,
            rate_limit_service: Some(service()),
            enable_x_ratelimit_headers: 1,
            rate_limited_status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 503 }),
            request_type: "both".into(),
            ..Default::default()
        };
        let out = filter(m, "f").unwrap();
        assert_eq!(out.domain, "d");
        assert_eq!(out.timeout, Some(std::time::Duration::from_millis(50)));
        assert!(out.failure_mode_deny && out.rate_limited_as_resource_exhausted);
        assert_eq!(
            out.enable_x_ratelimit_headers,
            XRateLimitHeaders::DraftVersion03
        );
        assert_eq!(out.rate_limited_status.unwrap().code, 503);
        let s = out.rate_limit_service.unwrap();
        assert_eq!(s.grpc_service.envoy_grpc.cluster_name, "rls");
        assert_eq!(s.transport_api_version, None);
        // The YAML side accepts what the translator produced.
        let v = serde_json::to_value(
            filter(
                rl::RateLimit {
                    domain: "d".into(),
                    rate_limit_service: Some(service()),
                    ..Default::default()
                },
                "f",
            )
            .unwrap(),
        )
        .unwrap();
        let back: c::RateLimitFilterConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.domain, "d");
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let base = || rl::RateLimit {
            domain: "d".into(),
            rate_limit_service: Some(service()),
            ..Default::default()
        };
        let e = filter(
            rl::RateLimit {
                rate_limit_service: None,
                ..base()
            },
            "f",
        )
        .unwrap_err();
        assert_eq!(e.0, "f.rate_limit_service");
        let e = filter(
            rl::RateLimit {
                disable_x_envoy_ratelimited_header: true,
                ..base()
            },
            "f",
        )
        .unwrap_err();
        assert!(e.0.contains("disable_x_envoy_ratelimited_header"), "{e:?}");
        let e = filter(
            rl::RateLimit {
                stat_prefix: "x".into(),
                ..base()
            },
            "f",
        )
        .unwrap_err();
        assert!(e.0.contains("stat_prefix"), "{e:?}");
        let mut s = service();
        s.transport_api_version = 1;
        let e = filter(
            rl::RateLimit {
                rate_limit_service: Some(s),
                ..base()
            },
            "f",
        )
        .unwrap_err();
        assert_eq!(e.0, "f.rate_limit_service.transport_api_version");
        let e = per_route(&protobuf::Any::default(), "p").unwrap_err();
        assert_eq!(e.0, "p");
    }
}
