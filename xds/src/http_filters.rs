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

/// The HCM's HTTP filters as the proxy's `stream_filters` (the router, the
/// implicit last filter, is left out).
pub(crate) fn http_filters(
    filters: Vec<hcm::HttpFilter>,
    path: &str,
) -> R<Vec<fc::StreamFilterConfig>> {
    let mut out = Vec::new();
    for (i, mut f) in filters.into_iter().enumerate() {
        let fp = format!("{path}.http_filters[{i}]");
        let type_url = match f.config_type.take() {
            None => None,
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(_) => return err(join(&fp, "config_discovery"), "not supported"),
        };
        let is_router = match &type_url {
            None => f.name == ROUTER_NAME,
            Some(a) => a.type_url == ROUTER,
        };
        if is_router {
            if let Some(a) = &type_url {
                let r: envoy_types::pb::envoy::extensions::filters::http::router::v3::Router =
                    decode(a, ROUTER).map_err(|e| (fp.clone(), e.to_string()))?;
                rest(&r, &join(&fp, "typed_config"))?;
            }
        } else if type_url.as_ref().is_some_and(|a| a.type_url == CORS) {
            if let Some(a) = &type_url {
                let c: cors::Cors = decode(a, CORS).map_err(|e| (fp.clone(), e.to_string()))?;
                rest(&c, &join(&fp, "typed_config"))?;
            }
            out.push(fc::StreamFilterConfig {
                name: "cors".into(),
                config: Value::Null,
                disabled: f.disabled,
            });
        } else if let Some(a) = type_url
            .as_ref()
            .filter(|a| a.type_url == crate::local_ratelimit::HTTP)
        {
            out.push(fc::StreamFilterConfig {
                name: "local_ratelimit".into(),
                config: crate::local_ratelimit::http_config(a, &join(&fp, "typed_config"))?,
                disabled: f.disabled,
            });
        } else if let Some(a) = type_url
            .as_ref()
            .filter(|a| a.type_url == crate::fault::HTTP)
        {
            out.push(fc::StreamFilterConfig {
                name: "fault".into(),
                config: crate::fault::http_config(a, &join(&fp, "typed_config"))?,
                disabled: f.disabled,
            });
        } else if f.is_optional {
            // Envoy's contract: an optional filter the proxy does not know
            // is skipped.
            continue;
        } else {
            return err(
                join(&fp, "name"),
                format!(
                    "HTTP filter '{}' not supported (known: {ROUTER_NAME}, envoy.filters.http.cors)",
                    f.name
                ),
            );
        }
        f.name.clear();
        f.disabled = false;
        f.is_optional = false;
        rest(&f, &fp)?;
    }
    Ok(out)
}

/// A virtual host's or route's `typed_per_filter_config`, keyed by the
/// meshgate filter it configures.
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
        let value = match (&config, disabled) {
            (_, true) => serde_json::json!({"disabled": true}),
            (Some(a), false) if a.type_url == CORS_POLICY => {
                let c: cors::CorsPolicy =
                    decode(a, CORS_POLICY).map_err(|e| (p.clone(), e.to_string()))?;
                serde_json::to_value(cors_policy(c, &p)?).map_err(|e| (p.clone(), e.to_string()))?
            }
            (Some(a), false) if a.type_url == crate::local_ratelimit::HTTP => {
                crate::local_ratelimit::http_config(a, &p)?
            }
            (Some(a), false) if a.type_url == crate::fault::HTTP => {
                crate::fault::http_config(a, &p)?
            }
            (None, false) => serde_json::json!({"disabled": false}),
            (Some(a), false) => {
                if optional {
                    continue;
                }
                return err(
                    p,
                    format!("per-filter config '{}' not supported", a.type_url),
                );
            }
        };
        let name = match key.as_str() {
            "envoy.filters.http.cors" | "cors" => "cors",
            crate::local_ratelimit::HTTP_NAME | "local_ratelimit" => "local_ratelimit",
            crate::fault::HTTP_NAME | "fault" => "fault",
            _ if optional => continue,
            other => {
                return err(
                    p,
                    format!("HTTP filter '{other}' not supported (known: envoy.filters.http.cors)"),
                );
            }
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

fn cors_policy(mut c: cors::CorsPolicy, path: &str) -> R<fc::CorsPolicyConfig> {
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

fn string_matcher(mut m: matcher::StringMatcher, path: &str) -> R<fc::StringMatcherConfig> {
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
        let e = http_filters(vec![f("envoy.filters.http.jwt_authn", None)], "hcm").unwrap_err();
        assert_eq!(e.0, "hcm.http_filters[0].name");
        assert!(e.1.contains("envoy.filters.http.jwt_authn"), "{}", e.1);
        let mut opt = f("envoy.filters.http.jwt_authn", None);
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
    }
}
