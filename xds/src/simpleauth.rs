//! xDS translation of the `basic_auth`, `api_key_auth` and `csrf` HTTP
//! filters (Envoy's `BasicAuth`/`BasicAuthPerRoute`,
//! `ApiKeyAuth`/`ApiKeyAuthPerRoute`, `CsrfPolicy`), in the HCM's
//! `http_filters` and in `typed_per_filter_config`. Every field is
//! translated or refused by name.

use crate::http_filters::string_matcher;
use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::filters::http::api_key_auth::v3 as akv3;
use envoy_types::pb::envoy::extensions::filters::http::basic_auth::v3 as bav3;
use envoy_types::pb::envoy::extensions::filters::http::csrf::v3 as csrfv3;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::filters as fc;
use meshgate_core::config::simpleauth as sa;
use serde_json::Value;

pub(crate) const BASIC_AUTH: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth";
pub(crate) const BASIC_AUTH_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute";
pub(crate) const API_KEY_AUTH: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";
pub(crate) const API_KEY_AUTH_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute";
pub(crate) const CSRF_POLICY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

fn json(v: serde_json::Result<Value>, path: &str) -> R<Value> {
    v.map_err(|e| (path.to_string(), e.to_string()))
}

/// An HCM `http_filters` entry's typed config (`path` names it) as the
/// config of the filter its type names.
pub(crate) fn http_filter(a: &protobuf::Any, path: &str) -> R<Value> {
    let dec = |e: crate::translate::DecodeError| (path.to_string(), e.to_string());
    match a.type_url.as_str() {
        BASIC_AUTH => {
            let c = basic_auth(decode(a, BASIC_AUTH).map_err(dec)?, path)?;
            json(serde_json::to_value(c), path)
        }
        API_KEY_AUTH => {
            let mut c: akv3::ApiKeyAuth = decode(a, API_KEY_AUTH).map_err(dec)?;
            let out = sa::ApiKeyAuthConfig {
                credentials: credentials(std::mem::take(&mut c.credentials)),
                key_sources: key_sources(std::mem::take(&mut c.key_sources)),
                forwarding: c.forwarding.take().map(forwarding),
            };
            rest(&c, path)?;
            json(serde_json::to_value(out), path)
        }
        CSRF_POLICY => {
            let c = csrf(decode(a, CSRF_POLICY).map_err(dec)?, path)?;
            json(serde_json::to_value(c), path)
        }
        other => err(
            path,
            format!("'{other}' is not a basic_auth, api_key_auth or csrf config"),
        ),
    }
}

/// A `typed_per_filter_config` value of one of these filters (the caller
/// checked that its type belongs to the filter its key names).
pub(crate) fn per_route(a: &protobuf::Any, path: &str) -> R<Value> {
    let dec = |e: crate::translate::DecodeError| (path.to_string(), e.to_string());
    match a.type_url.as_str() {
        BASIC_AUTH_PER_ROUTE => {
            let mut c: bav3::BasicAuthPerRoute = decode(a, BASIC_AUTH_PER_ROUTE).map_err(dec)?;
            let out = sa::BasicAuthPerRouteConfig {
                users: data_source(c.users.take(), &join(path, "users"))?,
            };
            rest(&c, path)?;
            json(serde_json::to_value(out), path)
        }
        API_KEY_AUTH_PER_ROUTE => {
            let mut c: akv3::ApiKeyAuthPerRoute = decode(a, API_KEY_AUTH_PER_ROUTE).map_err(dec)?;
            let out = sa::ApiKeyAuthPerRouteConfig {
                credentials: credentials(std::mem::take(&mut c.credentials)),
                key_sources: key_sources(std::mem::take(&mut c.key_sources)),
                allowed_clients: std::mem::take(&mut c.allowed_clients),
                forwarding: c.forwarding.take().map(forwarding),
            };
            rest(&c, path)?;
            json(serde_json::to_value(out), path)
        }
        CSRF_POLICY => {
            let c = csrf(decode(a, CSRF_POLICY).map_err(dec)?, path)?;
            json(serde_json::to_value(c), path)
        }
        other => err(path, format!("per-filter config '{other}' not supported")),
    }
}

fn basic_auth(mut c: bav3::BasicAuth, path: &str) -> R<sa::BasicAuthConfig> {
    let out = sa::BasicAuthConfig {
        users: data_source(c.users.take(), &join(path, "users"))?,
        forward_username_header: std::mem::take(&mut c.forward_username_header),
        authentication_header: std::mem::take(&mut c.authentication_header),
        allow_missing: std::mem::take(&mut c.allow_missing),
        emit_dynamic_metadata: std::mem::take(&mut c.emit_dynamic_metadata),
    };
    rest(&c, path)?;
    Ok(out)
}

fn data_source(d: Option<core3::DataSource>, path: &str) -> R<sa::DataSourceConfig> {
    use core3::data_source::Specifier;
    let Some(mut d) = d else {
        return err(path, "missing");
    };
    let mut out = sa::DataSourceConfig::default();
    match d.specifier.take() {
        Some(Specifier::Filename(f)) => out.filename = Some(f),
        Some(Specifier::InlineString(s)) => out.inline_string = Some(s),
        Some(Specifier::InlineBytes(b)) => match String::from_utf8(b) {
            Ok(s) => out.inline_string = Some(s),
            Err(_) => return err(join(path, "inline_bytes"), "not UTF-8 text"),
        },
        Some(Specifier::EnvironmentVariable(v)) => out.environment_variable = Some(v),
        None => return err(path, "empty data source"),
    }
    rest(&d, path)?;
    Ok(out)
}

// `Credential`, `KeySource` and `Forwarding` have no field meshgate
// leaves out: every one is carried over.
fn credentials(list: Vec<akv3::Credential>) -> Vec<sa::ApiKeyCredential> {
    list.into_iter()
        .map(|c| sa::ApiKeyCredential {
            key: c.key,
            client: c.client,
        })
        .collect()
}

fn key_sources(list: Vec<akv3::KeySource>) -> Vec<sa::ApiKeySource> {
    list.into_iter()
        .map(|s| sa::ApiKeySource {
            header: s.header,
            query: s.query,
            cookie: s.cookie,
        })
        .collect()
}

fn forwarding(f: akv3::Forwarding) -> sa::ApiKeyForwarding {
    sa::ApiKeyForwarding {
        header: f.header,
        hide_credentials: f.hide_credentials,
    }
}

fn csrf(mut c: csrfv3::CsrfPolicy, path: &str) -> R<sa::CsrfPolicyConfig> {
    let Some(enabled) = c.filter_enabled.take() else {
        return err(join(path, "filter_enabled"), "missing");
    };
    let mut origins = Vec::new();
    for (i, m) in std::mem::take(&mut c.additional_origins)
        .into_iter()
        .enumerate()
    {
        origins.push(string_matcher(
            m,
            &join(path, &format!("additional_origins[{i}]")),
        )?);
    }
    let out = sa::CsrfPolicyConfig {
        filter_enabled: fraction(enabled, &join(path, "filter_enabled"))?,
        shadow_enabled: c
            .shadow_enabled
            .take()
            .map(|s| fraction(s, &join(path, "shadow_enabled")))
            .transpose()?,
        additional_origins: origins,
    };
    rest(&c, path)?;
    Ok(out)
}

fn fraction(mut f: core3::RuntimeFractionalPercent, path: &str) -> R<fc::RuntimeFractionalPercent> {
    if !f.runtime_key.is_empty() {
        return err(join(path, "runtime_key"), "meshgate has no runtime layer");
    }
    let d = f.default_value.take().unwrap_or_default();
    rest(&f, path)?;
    Ok(fc::RuntimeFractionalPercent {
        default_value: fc::FractionalPercent {
            numerator: d.numerator,
            denominator: match d.denominator {
                0 => fc::Denominator::Hundred,
                1 => fc::Denominator::TenThousand,
                2 => fc::Denominator::Million,
                _ => return err(join(path, "default_value.denominator"), "unknown value"),
            },
        },
    })
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

    fn inline(s: &str) -> Option<core3::DataSource> {
        Some(core3::DataSource {
            specifier: Some(core3::data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        })
    }

    #[test]
    fn basic_auth_filter_and_per_route() {
        let c = bav3::BasicAuth {
            users: inline("a:{SHA}x"),
            forward_username_header: "x-user".into(),
            emit_dynamic_metadata: true,
            ..Default::default()
        };
        let v = http_filter(&any(BASIC_AUTH, &c), "f.typed_config").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"users": {"inline_string": "a:{SHA}x"},
                "forward_username_header": "x-user", "emit_dynamic_metadata": true})
        );
        let e = http_filter(
            &any(BASIC_AUTH, &bav3::BasicAuth::default()),
            "f.typed_config",
        )
        .unwrap_err();
        assert_eq!(e.0, "f.typed_config.users");
        let r = bav3::BasicAuthPerRoute {
            users: inline("b:{SHA}y"),
        };
        let v = per_route(&any(BASIC_AUTH_PER_ROUTE, &r), "r").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"users": {"inline_string": "b:{SHA}y"}})
        );
        let mut w = r.clone();
        w.users = Some(core3::DataSource {
            watched_directory: Some(Default::default()),
            ..inline("b:{SHA}y").unwrap_or_default()
        });
        let e = per_route(&any(BASIC_AUTH_PER_ROUTE, &w), "r").unwrap_err();
        assert_eq!(e.0, "r.users.watched_directory");
    }

    #[test]
    fn api_key_auth_filter_and_per_route() {
        let c = akv3::ApiKeyAuth {
            credentials: vec![akv3::Credential {
                key: "k".into(),
                client: "c".into(),
            }],
            key_sources: vec![akv3::KeySource {
                query: "api_key".into(),
                ..Default::default()
            }],
            forwarding: Some(akv3::Forwarding {
                header: "x-client".into(),
                hide_credentials: true,
            }),
        };
        let v = http_filter(&any(API_KEY_AUTH, &c), "f.typed_config").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"credentials": [{"key": "k", "client": "c"}],
                "key_sources": [{"query": "api_key"}],
                "forwarding": {"header": "x-client", "hide_credentials": true}})
        );
        let r = akv3::ApiKeyAuthPerRoute {
            allowed_clients: vec!["c".into()],
            ..Default::default()
        };
        let v = per_route(&any(API_KEY_AUTH_PER_ROUTE, &r), "r").unwrap();
        assert_eq!(v, serde_json::json!({"allowed_clients": ["c"]}));
    }

    #[test]
    fn csrf_policy_and_refused_fields() {
        use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
        let frac = |n: u32, key: &str| core3::RuntimeFractionalPercent {
            default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                numerator: n,
                denominator: 1,
            }),
            runtime_key: key.into(),
        };
        let c = csrfv3::CsrfPolicy {
            filter_enabled: Some(frac(10000, "")),
            shadow_enabled: Some(frac(5, "")),
            additional_origins: vec![matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                    "a.example".into(),
                )),
                ignore_case: false,
            }],
        };
        let v = http_filter(&any(CSRF_POLICY, &c), "f.typed_config").unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "filter_enabled": {"default_value": {"numerator": 10000, "denominator": "TEN_THOUSAND"}},
                "shadow_enabled": {"default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"}},
                "additional_origins": [{"exact": "a.example"}]})
        );
        let v2 = per_route(&any(CSRF_POLICY, &c), "r").unwrap();
        assert_eq!(v, v2);
        let mut bad = c.clone();
        bad.shadow_enabled = Some(frac(1, "csrf.shadow"));
        let e = http_filter(&any(CSRF_POLICY, &bad), "f.typed_config").unwrap_err();
        assert_eq!(e.0, "f.typed_config.shadow_enabled.runtime_key");
        let mut bad = c;
        bad.filter_enabled = None;
        let e = per_route(&any(CSRF_POLICY, &bad), "r").unwrap_err();
        assert_eq!(e.0, "r.filter_enabled");
    }
}
