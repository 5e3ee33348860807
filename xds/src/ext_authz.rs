//! Translation of Envoy's `envoy.filters.http.ext_authz` (`ExtAuthz`, and
//! `ExtAuthzPerRoute` in `typed_per_filter_config`) into the `ext_authz`
//! filter's config (`meshgate_core::config::ext_authz`). Only `envoy_grpc`
//! is spoken (meshgate reaches the server through its own cluster):
//! `google_grpc` and every field meshgate does not apply is a NACK naming
//! it.

use crate::http_filters::string_matcher;
use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ea;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::ext_authz as c;
use serde_json::Value;
use std::time::Duration;

pub(crate) const EXT_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub(crate) const EXT_AUTHZ_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

fn duration(d: Option<protobuf::Duration>, path: &str) -> R<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => err(path, "negative duration"),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

/// The HCM filter's `typed_config` (`path` names it).
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut m: ea::ExtAuthz =
        decode(any, EXT_AUTHZ).map_err(|e| (path.to_string(), e.to_string()))?;
    let transport_api_version = match std::mem::take(&mut m.transport_api_version) {
        // AUTO means V3, the only version there is.
        0 | 2 => None,
        _ => return err(join(path, "transport_api_version"), "only V3 is supported"),
    };
    let (grpc_service, http_service) = match m.services.take() {
        Some(ea::ext_authz::Services::GrpcService(g)) => {
            (Some(grpc_service(g, &join(path, "grpc_service"))?), None)
        }
        Some(ea::ext_authz::Services::HttpService(h)) => {
            (None, Some(http_service(h, &join(path, "http_service"))?))
        }
        None => return err(join(path, "services"), "set grpc_service or http_service"),
    };
    let status_on_error = match m.status_on_error.take() {
        None => None,
        Some(s) => Some(c::HttpStatusConfig {
            code: u16::try_from(s.code).map_err(|_| {
                (
                    join(path, "status_on_error.code"),
                    "out of range".to_string(),
                )
            })?,
        }),
    };
    let with_request_body = m.with_request_body.take().map(buffer);
    // The SNI is always sent in `tls_session`: honoured either way.
    m.include_tls_session = false;
    let out = c::ExtAuthzConfig {
        grpc_service,
        http_service,
        transport_api_version,
        failure_mode_allow: std::mem::take(&mut m.failure_mode_allow),
        failure_mode_allow_header_add: std::mem::take(&mut m.failure_mode_allow_header_add),
        status_on_error,
        with_request_body,
        clear_route_cache: std::mem::take(&mut m.clear_route_cache),
        include_peer_certificate: std::mem::take(&mut m.include_peer_certificate),
    };
    rest(&m, path)?;
    serde_json::to_value(&out).map_err(|e| (path.to_string(), e.to_string()))
}

fn buffer(b: ea::BufferSettings) -> c::BufferSettingsConfig {
    c::BufferSettingsConfig {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    }
}

pub(crate) fn grpc_service(mut g: core3::GrpcService, path: &str) -> R<c::GrpcServiceConfig> {
    use core3::grpc_service::TargetSpecifier;
    let envoy_grpc = match g.target_specifier.take() {
        Some(TargetSpecifier::EnvoyGrpc(mut e)) => {
            let out = c::EnvoyGrpcConfig {
                cluster_name: std::mem::take(&mut e.cluster_name),
                authority: std::mem::take(&mut e.authority),
            };
            rest(&e, &join(path, "envoy_grpc"))?;
            out
        }
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return err(
                join(path, "google_grpc"),
                "not supported: meshgate reaches gRPC services through its clusters (use envoy_grpc)",
            );
        }
        None => return err(join(path, "envoy_grpc"), "required"),
    };
    let timeout = duration(g.timeout.take(), &join(path, "timeout"))?;
    rest(&g, path)?;
    Ok(c::GrpcServiceConfig {
        envoy_grpc,
        timeout,
    })
}

fn list(
    m: Option<matcher::ListStringMatcher>,
    path: &str,
) -> R<Option<c::ListStringMatcherConfig>> {
    let Some(m) = m else { return Ok(None) };
    let mut patterns = Vec::with_capacity(m.patterns.len());
    for (i, p) in m.patterns.into_iter().enumerate() {
        patterns.push(string_matcher(p, &join(path, &format!("patterns[{i}]")))?);
    }
    Ok(Some(c::ListStringMatcherConfig { patterns }))
}

fn http_service(mut h: ea::HttpService, path: &str) -> R<c::HttpServiceConfig> {
    let up = join(path, "server_uri");
    let Some(mut u) = h.server_uri.take() else {
        return err(up, "required");
    };
    let cluster = match u.http_upstream_type.take() {
        Some(core3::http_uri::HttpUpstreamType::Cluster(c)) => c,
        None => return err(join(&up, "cluster"), "required"),
    };
    let Some(timeout) = duration(u.timeout.take(), &join(&up, "timeout"))? else {
        return err(join(&up, "timeout"), "required");
    };
    let server_uri = c::HttpUriConfig {
        uri: std::mem::take(&mut u.uri),
        cluster,
        timeout,
    };
    rest(&u, &up)?;
    let authorization_request = match h.authorization_request.take() {
        None => None,
        Some(mut r) => {
            let rp = join(path, "authorization_request");
            #[allow(deprecated)]
            let allowed = r.allowed_headers.take();
            let allowed_headers = list(allowed, &join(&rp, "allowed_headers"))?;
            let mut headers_to_add = Vec::new();
            for (i, mut hv) in std::mem::take(&mut r.headers_to_add)
                .into_iter()
                .enumerate()
            {
                headers_to_add.push(c::HeaderValueConfig {
                    key: std::mem::take(&mut hv.key),
                    value: std::mem::take(&mut hv.value),
                });
                rest(&hv, &join(&rp, &format!("headers_to_add[{i}]")))?;
            }
            rest(&r, &rp)?;
            Some(c::AuthorizationRequestConfig {
                allowed_headers,
                headers_to_add,
            })
        }
    };
    let authorization_response = match h.authorization_response.take() {
        None => None,
        Some(mut r) => {
            let rp = join(path, "authorization_response");
            let out = c::AuthorizationResponseConfig {
                allowed_upstream_headers: list(
                    r.allowed_upstream_headers.take(),
                    &join(&rp, "allowed_upstream_headers"),
                )?,
                allowed_upstream_headers_to_append: list(
                    r.allowed_upstream_headers_to_append.take(),
                    &join(&rp, "allowed_upstream_headers_to_append"),
                )?,
                allowed_client_headers: list(
                    r.allowed_client_headers.take(),
                    &join(&rp, "allowed_client_headers"),
                )?,
            };
            rest(&r, &rp)?;
            Some(out)
        }
    };
    let out = c::HttpServiceConfig {
        server_uri,
        path_prefix: std::mem::take(&mut h.path_prefix),
        authorization_request,
        authorization_response,
    };
    rest(&h, path)?;
    Ok(out)
}

/// A `typed_per_filter_config` entry (`ExtAuthzPerRoute`).
pub(crate) fn per_route(any: &protobuf::Any, path: &str) -> R<Value> {
    use ea::ext_authz_per_route::Override;
    let m: ea::ExtAuthzPerRoute =
        decode(any, EXT_AUTHZ_PER_ROUTE).map_err(|e| (path.to_string(), e.to_string()))?;
    match m.r#override {
        Some(Override::Disabled(d)) => Ok(serde_json::json!({"disabled": d})),
        Some(Override::CheckSettings(mut s)) => {
            let sp = join(path, "check_settings");
            let out = c::ExtAuthzPerRouteConfig {
                disabled: None,
                check_settings: Some(c::CheckSettingsConfig {
                    context_extensions: std::mem::take(&mut s.context_extensions)
                        .into_iter()
                        .collect(),
                    disable_request_body_buffering: std::mem::take(
                        &mut s.disable_request_body_buffering,
                    ),
                }),
            };
            rest(&s, &sp)?;
            serde_json::to_value(&out).map_err(|e| (path.to_string(), e.to_string()))
        }
        None => err(path, "set disabled or check_settings"),
    }
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

    fn grpc(cluster: &str) -> core3::GrpcService {
        core3::GrpcService {
            target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                core3::grpc_service::EnvoyGrpc {
                    cluster_name: cluster.into(),
                    authority: "authz.local".into(),
                    ..Default::default()
                },
            )),
            timeout: Some(protobuf::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn grpc_mode_is_translated_and_parses_as_meshgate_config() {
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::GrpcService(grpc("authz"))),
            transport_api_version: 2,
            failure_mode_allow: true,
            failure_mode_allow_header_add: true,
            status_on_error: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 503 }),
            with_request_body: Some(ea::BufferSettings {
                max_request_bytes: 1024,
                allow_partial_message: true,
                pack_as_bytes: false,
            }),
            clear_route_cache: true,
            include_peer_certificate: true,
            ..Default::default()
        };
        let v = filter(&any(EXT_AUTHZ, &m), "f").unwrap();
        let parsed: c::ExtAuthzConfig = serde_json::from_value(v.clone()).unwrap();
        let g = parsed.grpc_service.unwrap();
        assert_eq!(g.envoy_grpc.cluster_name, "authz");
        assert_eq!(g.envoy_grpc.authority, "authz.local");
        assert_eq!(g.timeout, Some(Duration::from_millis(250)));
        assert_eq!(parsed.status_on_error.unwrap().code, 503);
        assert!(parsed.failure_mode_allow && parsed.failure_mode_allow_header_add);
        assert!(parsed.clear_route_cache && parsed.include_peer_certificate);
        assert_eq!(parsed.with_request_body.unwrap().max_request_bytes, 1024);
    }

    #[test]
    fn google_grpc_and_unsupported_fields_are_refused_by_name() {
        let mut g = grpc("authz");
        g.target_specifier = Some(core3::grpc_service::TargetSpecifier::GoogleGrpc(
            Default::default(),
        ));
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::GrpcService(g)),
            ..Default::default()
        };
        let e = filter(&any(EXT_AUTHZ, &m), "f").unwrap_err();
        assert_eq!(e.0, "f.grpc_service.google_grpc");
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::GrpcService(grpc("a"))),
            metadata_context_namespaces: vec!["ns".into()],
            ..Default::default()
        };
        let e = filter(&any(EXT_AUTHZ, &m), "f").unwrap_err();
        assert_eq!(e.0, "f.metadata_context_namespaces");
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::GrpcService(grpc("a"))),
            validate_mutations: true,
            ..Default::default()
        };
        assert_eq!(
            filter(&any(EXT_AUTHZ, &m), "f").unwrap_err().0,
            "f.validate_mutations"
        );
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::GrpcService(grpc("a"))),
            transport_api_version: 1,
            ..Default::default()
        };
        assert_eq!(
            filter(&any(EXT_AUTHZ, &m), "f").unwrap_err().0,
            "f.transport_api_version"
        );
        let e = filter(&any(EXT_AUTHZ, &ea::ExtAuthz::default()), "f").unwrap_err();
        assert_eq!(e.0, "f.services");
    }

    #[test]
    fn http_mode_is_translated() {
        let exact = |s: &str| matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.into())),
            ignore_case: false,
        };
        let h = ea::HttpService {
            server_uri: Some(core3::HttpUri {
                uri: "http://authz".into(),
                timeout: Some(protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                http_upstream_type: Some(core3::http_uri::HttpUpstreamType::Cluster(
                    "authz".into(),
                )),
            }),
            path_prefix: "/check".into(),
            authorization_request: Some(ea::AuthorizationRequest {
                headers_to_add: vec![core3::HeaderValue {
                    key: "x-from".into(),
                    value: "mg".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            authorization_response: Some(ea::AuthorizationResponse {
                allowed_upstream_headers: Some(matcher::ListStringMatcher {
                    patterns: vec![exact("x-user")],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::HttpService(h.clone())),
            ..Default::default()
        };
        let v = filter(&any(EXT_AUTHZ, &m), "f").unwrap();
        let parsed: c::ExtAuthzConfig = serde_json::from_value(v).unwrap();
        let hs = parsed.http_service.unwrap();
        assert_eq!(hs.server_uri.cluster, "authz");
        assert_eq!(hs.server_uri.timeout, Duration::from_secs(1));
        assert_eq!(hs.path_prefix, "/check");
        assert_eq!(
            hs.authorization_request.unwrap().headers_to_add[0].key,
            "x-from"
        );
        assert_eq!(
            hs.authorization_response
                .unwrap()
                .allowed_upstream_headers
                .unwrap()
                .patterns[0]
                .exact
                .as_deref(),
            Some("x-user")
        );
        let mut bad = h;
        bad.path_override = "/x".into();
        let m = ea::ExtAuthz {
            services: Some(ea::ext_authz::Services::HttpService(bad)),
            ..Default::default()
        };
        assert_eq!(
            filter(&any(EXT_AUTHZ, &m), "f").unwrap_err().0,
            "f.http_service.path_override"
        );
    }

    #[test]
    fn per_route_disabled_or_check_settings() {
        let d = ea::ExtAuthzPerRoute {
            r#override: Some(ea::ext_authz_per_route::Override::Disabled(true)),
        };
        assert_eq!(
            per_route(&any(EXT_AUTHZ_PER_ROUTE, &d), "r").unwrap(),
            serde_json::json!({"disabled": true})
        );
        let s = ea::ExtAuthzPerRoute {
            r#override: Some(ea::ext_authz_per_route::Override::CheckSettings(
                ea::CheckSettings {
                    context_extensions: [("k".to_string(), "v".to_string())].into_iter().collect(),
                    disable_request_body_buffering: true,
                    ..Default::default()
                },
            )),
        };
        assert_eq!(
            per_route(&any(EXT_AUTHZ_PER_ROUTE, &s), "r").unwrap(),
            serde_json::json!({"check_settings": {"context_extensions": {"k": "v"},
                "disable_request_body_buffering": true}})
        );
        let mut over = s;
        if let Some(ea::ext_authz_per_route::Override::CheckSettings(c)) = &mut over.r#override {
            c.with_request_body = Some(Default::default());
        }
        assert_eq!(
            per_route(&any(EXT_AUTHZ_PER_ROUTE, &over), "r")
                .unwrap_err()
                .0,
            "r.check_settings.with_request_body"
        );
    }
}
