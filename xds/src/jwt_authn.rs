//! Translation of Envoy's `envoy.filters.http.jwt_authn` typed config
//! (`JwtAuthentication`) and its per-route `PerRouteConfig` into the
//! `jwt_authn` filter's config (`meshgate_core::config::jwt_authn`). A
//! field meshgate does not implement (`subjects`, `max_lifetime`,
//! `filter_state_rules`, `header_in_metadata`...) is refused by name.

use crate::translate::{R, decode, err, join, rest, route_match};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::jwt_authn as jc;
use serde_json::Value;
use std::time::Duration;

pub(crate) const JWT_AUTHN: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub(crate) const JWT_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

fn to_value(t: Result<Value, serde_json::Error>, path: &str) -> R<Value> {
    t.map_err(|e| (path.to_string(), e.to_string()))
}

fn duration(d: &protobuf::Duration, path: &str) -> R<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return err(path, "negative duration");
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The HCM filter's typed config.
pub(crate) fn jwt_authentication(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: jwt::JwtAuthentication =
        decode(any, JWT_AUTHN).map_err(|e| (path.to_string(), e.to_string()))?;
    let mut out = jc::JwtAuthenticationConfig {
        bypass_cors_preflight: std::mem::take(&mut c.bypass_cors_preflight),
        ..Default::default()
    };
    for (name, p) in std::mem::take(&mut c.providers) {
        let pp = join(path, &format!("providers.{name}"));
        out.providers.insert(name, provider(p, &pp)?);
    }
    for (name, r) in std::mem::take(&mut c.requirement_map) {
        let rp = join(path, &format!("requirement_map.{name}"));
        out.requirement_map.insert(name, requirement(r, &rp)?);
    }
    for (i, mut r) in std::mem::take(&mut c.rules).into_iter().enumerate() {
        use jwt::requirement_rule::RequirementType as T;
        let rp = join(path, &format!("rules[{i}]"));
        let Some(m) = r.r#match.take() else {
            return err(join(&rp, "match"), "missing");
        };
        let mut rule = jc::RequirementRuleConfig {
            match_: route_match(m, &join(&rp, "match"))?,
            ..Default::default()
        };
        match r.requirement_type.take() {
            None => {}
            Some(T::Requires(q)) => rule.requires = Some(requirement(q, &join(&rp, "requires"))?),
            Some(T::RequirementName(n)) => rule.requirement_name = Some(n),
        }
        rest(&r, &rp)?;
        out.rules.push(rule);
    }
    // Envoy's stat_prefix only names stats; meshgate's metrics are fixed.
    c.stat_prefix.clear();
    rest(&c, path)?;
    to_value(serde_json::to_value(&out), path)
}

fn provider(mut p: jwt::JwtProvider, path: &str) -> R<jc::JwtProviderConfig> {
    use jwt::jwt_provider::JwksSourceSpecifier as S;
    let mut out = jc::JwtProviderConfig {
        issuer: std::mem::take(&mut p.issuer),
        audiences: std::mem::take(&mut p.audiences),
        forward: std::mem::take(&mut p.forward),
        from_params: std::mem::take(&mut p.from_params),
        from_cookies: std::mem::take(&mut p.from_cookies),
        forward_payload_header: std::mem::take(&mut p.forward_payload_header),
        payload_in_metadata: std::mem::take(&mut p.payload_in_metadata),
        require_expiration: std::mem::take(&mut p.require_expiration),
        clock_skew_seconds: Some(std::mem::take(&mut p.clock_skew_seconds)).filter(|s| *s != 0),
        ..Default::default()
    };
    for h in std::mem::take(&mut p.from_headers) {
        out.from_headers.push(jc::JwtHeaderConfig {
            name: h.name,
            value_prefix: h.value_prefix,
        });
    }
    for (i, mut ch) in std::mem::take(&mut p.claim_to_headers)
        .into_iter()
        .enumerate()
    {
        let cp = join(path, &format!("claim_to_headers[{i}]"));
        out.claim_to_headers.push(jc::JwtClaimToHeaderConfig {
            header_name: std::mem::take(&mut ch.header_name),
            claim_name: std::mem::take(&mut ch.claim_name),
        });
        rest(&ch, &cp)?;
    }
    if let Some(mut cc) = p.jwt_cache_config.take() {
        out.jwt_cache_config = Some(jc::JwtCacheConfig {
            jwt_cache_size: Some(std::mem::take(&mut cc.jwt_cache_size)).filter(|s| *s != 0),
        });
        rest(&cc, &join(path, "jwt_cache_config"))?;
    }
    match p.jwks_source_specifier.take() {
        Some(S::LocalJwks(d)) => out.local_jwks = Some(data_source(d, &join(path, "local_jwks"))?),
        Some(S::RemoteJwks(r)) => {
            out.remote_jwks = Some(remote_jwks(r, &join(path, "remote_jwks"))?)
        }
        None => return err(path, "one of local_jwks, remote_jwks is needed"),
    }
    rest(&p, path)?;
    Ok(out)
}

fn data_source(mut d: core::DataSource, path: &str) -> R<jc::DataSourceConfig> {
    use core::data_source::Specifier as S;
    let out = match d.specifier.take() {
        Some(S::InlineString(s)) => jc::DataSourceConfig {
            inline_string: Some(s),
            filename: None,
        },
        Some(S::InlineBytes(b)) => jc::DataSourceConfig {
            inline_string: Some(
                String::from_utf8(b)
                    .map_err(|_| (join(path, "inline_bytes"), "not UTF-8".into()))?,
            ),
            filename: None,
        },
        Some(S::Filename(f)) => jc::DataSourceConfig {
            inline_string: None,
            filename: Some(f),
        },
        Some(S::EnvironmentVariable(_)) => {
            return err(join(path, "environment_variable"), "not supported");
        }
        None => {
            return err(
                path,
                "one of inline_string, inline_bytes, filename is needed",
            );
        }
    };
    rest(&d, path)?;
    Ok(out)
}

fn remote_jwks(mut r: jwt::RemoteJwks, path: &str) -> R<jc::RemoteJwksConfig> {
    use core::http_uri::HttpUpstreamType as U;
    let Some(mut u) = r.http_uri.take() else {
        return err(join(path, "http_uri"), "missing");
    };
    let up = join(path, "http_uri");
    let cluster = match u.http_upstream_type.take() {
        Some(U::Cluster(c)) => c,
        None => return err(join(&up, "cluster"), "missing"),
    };
    let timeout = match u.timeout.take() {
        Some(d) => Some(duration(&d, &join(&up, "timeout"))?),
        None => None,
    };
    let http_uri = jc::HttpUriConfig {
        uri: std::mem::take(&mut u.uri),
        cluster,
        timeout,
    };
    rest(&u, &up)?;
    let cache_duration = match r.cache_duration.take() {
        Some(d) => Some(duration(&d, &join(path, "cache_duration"))?),
        None => None,
    };
    let async_fetch = match r.async_fetch.take() {
        None => None,
        Some(mut a) => {
            let ap = join(path, "async_fetch");
            let failed = match a.failed_refetch_duration.take() {
                Some(d) => Some(duration(&d, &join(&ap, "failed_refetch_duration"))?),
                None => None,
            };
            let out = jc::JwksAsyncFetchConfig {
                fast_listener: std::mem::take(&mut a.fast_listener),
                failed_refetch_duration: failed,
            };
            rest(&a, &ap)?;
            Some(out)
        }
    };
    let retry_policy = match r.retry_policy.take() {
        None => None,
        Some(mut rp) => {
            let out = jc::JwksRetryPolicyConfig {
                num_retries: rp.num_retries.take().map(|n| n.value),
            };
            rest(&rp, &join(path, "retry_policy"))?;
            Some(out)
        }
    };
    rest(&r, path)?;
    Ok(jc::RemoteJwksConfig {
        http_uri,
        cache_duration,
        async_fetch,
        retry_policy,
    })
}

fn requirement(mut r: jwt::JwtRequirement, path: &str) -> R<jc::JwtRequirementConfig> {
    use jwt::jwt_requirement::RequiresType as T;
    let mut out = jc::JwtRequirementConfig::default();
    let list = |l: Vec<jwt::JwtRequirement>, field: &str| -> R<jc::JwtRequirementListConfig> {
        let mut requirements = Vec::with_capacity(l.len());
        for (i, q) in l.into_iter().enumerate() {
            requirements.push(requirement(
                q,
                &join(path, &format!("{field}.requirements[{i}]")),
            )?);
        }
        Ok(jc::JwtRequirementListConfig { requirements })
    };
    match r.requires_type.take() {
        Some(T::ProviderName(n)) => out.provider_name = Some(n),
        Some(T::ProviderAndAudiences(pa)) => {
            out.provider_and_audiences = Some(jc::ProviderWithAudiencesConfig {
                provider_name: pa.provider_name,
                audiences: pa.audiences,
            })
        }
        Some(T::RequiresAny(l)) => out.requires_any = Some(list(l.requirements, "requires_any")?),
        Some(T::RequiresAll(l)) => out.requires_all = Some(list(l.requirements, "requires_all")?),
        Some(T::AllowMissing(_)) => out.allow_missing = Some(jc::EmptyConfig {}),
        Some(T::AllowMissingOrFailed(_)) => out.allow_missing_or_failed = Some(jc::EmptyConfig {}),
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            return err(
                join(path, "extract_only_without_validation"),
                "not supported: meshgate never forwards unverified claims",
            );
        }
        None => return err(path, "a requirement type is needed"),
    }
    rest(&r, path)?;
    Ok(out)
}

/// A route's or virtual host's `PerRouteConfig`.
pub(crate) fn per_route(any: &protobuf::Any, path: &str) -> R<Value> {
    use jwt::per_route_config::RequirementSpecifier as S;
    let mut c: jwt::PerRouteConfig =
        decode(any, JWT_PER_ROUTE).map_err(|e| (path.to_string(), e.to_string()))?;
    let v = match c.requirement_specifier.take() {
        Some(S::Disabled(d)) => serde_json::json!({"disabled": d}),
        Some(S::RequirementName(n)) => to_value(
            serde_json::to_value(jc::JwtPerRouteConfig {
                disabled: false,
                requirement_name: Some(n),
            }),
            path,
        )?,
        None => return err(path, "one of disabled, requirement_name is needed"),
    };
    rest(&c, path)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use prost::Message;

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn provider_remote() -> jwt::JwtProvider {
        jwt::JwtProvider {
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            forward_payload_header: "x-payload".into(),
            payload_in_metadata: "payload".into(),
            claim_to_headers: vec![jwt::JwtClaimToHeader {
                header_name: "x-sub".into(),
                claim_name: "sub".into(),
                ..Default::default()
            }],
            jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(
                jwt::RemoteJwks {
                    http_uri: Some(core::HttpUri {
                        uri: "http://jwks/keys".into(),
                        timeout: Some(protobuf::Duration {
                            seconds: 2,
                            nanos: 0,
                        }),
                        http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                            "jwks".into(),
                        )),
                    }),
                    cache_duration: Some(protobuf::Duration {
                        seconds: 300,
                        nanos: 0,
                    }),
                    async_fetch: Some(jwt::JwksAsyncFetch {
                        fast_listener: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    #[test]
    fn jwt_authentication_is_translated() {
        let c = jwt::JwtAuthentication {
            providers: [("a".to_string(), provider_remote())].into(),
            rules: vec![jwt::RequirementRule {
                r#match: Some(rds::RouteMatch {
                    path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/api".into())),
                    ..Default::default()
                }),
                requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                    jwt::JwtRequirement {
                        requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
                            jwt::JwtRequirementOrList {
                                requirements: vec![
                                    jwt::JwtRequirement {
                                        requires_type: Some(
                                            jwt::jwt_requirement::RequiresType::ProviderName(
                                                "a".into(),
                                            ),
                                        ),
                                    },
                                    jwt::JwtRequirement {
                                        requires_type: Some(
                                            jwt::jwt_requirement::RequiresType::AllowMissing(
                                                Default::default(),
                                            ),
                                        ),
                                    },
                                ],
                            },
                        )),
                    },
                )),
            }],
            ..Default::default()
        };
        let v = jwt_authentication(&any(JWT_AUTHN, &c), "f").unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "providers": {"a": {
                    "issuer": "https://issuer", "audiences": ["api"],
                    "remote_jwks": {"http_uri": {"uri": "http://jwks/keys", "cluster": "jwks", "timeout": "2s"},
                        "cache_duration": "5m", "async_fetch": {"fast_listener": true}},
                    "forward_payload_header": "x-payload", "payload_in_metadata": "payload",
                    "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}},
                "rules": [{"match": {"prefix": "/api", "case_sensitive": true}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "a"}, {"allow_missing": {}}]}}}]
            })
        );
        // And the filter's own parser takes it.
        meshgate_core::config::parse_typed::<jc::JwtAuthenticationConfig>(&v).unwrap();
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let mut p = provider_remote();
        p.max_lifetime = Some(protobuf::Duration {
            seconds: 60,
            nanos: 0,
        });
        let c = jwt::JwtAuthentication {
            providers: [("a".to_string(), p)].into(),
            ..Default::default()
        };
        let e = jwt_authentication(&any(JWT_AUTHN, &c), "f").unwrap_err();
        assert_eq!(e.0, "f.providers.a.max_lifetime");
        let mut p = provider_remote();
        p.jwks_source_specifier = None;
        let c = jwt::JwtAuthentication {
            providers: [("a".to_string(), p)].into(),
            strip_failure_response: true,
            ..Default::default()
        };
        let e = jwt_authentication(&any(JWT_AUTHN, &c), "f").unwrap_err();
        assert_eq!(e.0, "f.providers.a");
        let c = jwt::JwtAuthentication {
            strip_failure_response: true,
            ..Default::default()
        };
        let e = jwt_authentication(&any(JWT_AUTHN, &c), "f").unwrap_err();
        assert_eq!(e.0, "f.strip_failure_response");
    }

    #[test]
    fn per_route_config() {
        let pr = |s| {
            any(
                JWT_PER_ROUTE,
                &jwt::PerRouteConfig {
                    requirement_specifier: Some(s),
                },
            )
        };
        use jwt::per_route_config::RequirementSpecifier as S;
        assert_eq!(
            per_route(&pr(S::Disabled(true)), "r").unwrap(),
            serde_json::json!({"disabled": true})
        );
        assert_eq!(
            per_route(&pr(S::RequirementName("x".into())), "r").unwrap(),
            serde_json::json!({"requirement_name": "x"})
        );
        assert!(per_route(&any(JWT_PER_ROUTE, &jwt::PerRouteConfig::default()), "r").is_err());
    }
}
