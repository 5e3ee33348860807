//! Translation of `RouteAction.request_mirror_policies` into meshgate's
//! `router::mirror` config, and of the router filter's typed config
//! (`envoy.extensions.filters.http.router.v3.Router`). Fields meshgate does
//! not implement are refused by name (`rest`): a mirror's `cluster_header`,
//! `request_headers_mutations`, `host_rewrite_literal`, `trace_sampled:
//! true` (refused by the core build); the router's options other than
//! `suppress_envoy_headers`, `upstream_log` and `upstream_log_options`
//! (whose flush options the `proxy` filter refuses by name).

use crate::translate::{R, err, join, rest};
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use meshgate_core::config::filters as fc;
use meshgate_core::config::router::RouterFilterConfig;
use meshgate_core::router::mirror::{MirrorFraction, RequestMirrorPolicyConfig};

/// The route action's mirrors (`path` is the route action's).
pub(crate) fn mirror_policies(
    policies: Vec<rds::route_action::RequestMirrorPolicy>,
    path: &str,
) -> R<Vec<RequestMirrorPolicyConfig>> {
    let mut out = Vec::with_capacity(policies.len());
    for (i, mut m) in policies.into_iter().enumerate() {
        let p = format!("{}[{i}]", join(path, "request_mirror_policies"));
        let fraction = match m.runtime_fraction.take() {
            None => None,
            Some(mut f) => {
                let fp = join(&p, "runtime_fraction");
                let d = f.default_value.take().unwrap_or_default();
                let denominator = match d.denominator {
                    0 => fc::Denominator::Hundred,
                    1 => fc::Denominator::TenThousand,
                    2 => fc::Denominator::Million,
                    _ => return err(join(&fp, "default_value.denominator"), "unknown value"),
                };
                // Envoy's runtime override key: meshgate has no runtime
                // layer, so the default value always applies.
                let runtime_key = std::mem::take(&mut f.runtime_key);
                rest(&f, &fp)?;
                Some(MirrorFraction {
                    default_value: fc::FractionalPercent {
                        numerator: d.numerator,
                        denominator,
                    },
                    runtime_key,
                })
            }
        };
        let cfg = RequestMirrorPolicyConfig {
            cluster: Some(std::mem::take(&mut m.cluster)).filter(|c| !c.is_empty()),
            // Kept so that the core build refuses it by name.
            cluster_header: Some(std::mem::take(&mut m.cluster_header)).filter(|c| !c.is_empty()),
            runtime_fraction: fraction,
            trace_sampled: m.trace_sampled.take().map(|b| b.value),
            disable_shadow_host_suffix_append: std::mem::take(
                &mut m.disable_shadow_host_suffix_append,
            ),
            max_body_bytes: 1024 * 1024,
        };
        rest(&m, &p)?;
        out.push(cfg);
    }
    Ok(out)
}

/// The router filter's typed config (`path` is its `typed_config`).
pub(crate) fn router_config(mut r: router::Router, path: &str) -> R<RouterFilterConfig> {
    let upstream_log = crate::access_log::access_logs(
        std::mem::take(&mut r.upstream_log),
        &join(path, "upstream_log"),
    )?;
    let upstream_log_options = match r.upstream_log_options.take() {
        None => None,
        Some(mut o) => {
            let op = join(path, "upstream_log_options");
            let interval = match o.upstream_log_flush_interval.take() {
                None => None,
                Some(d) => Some(crate::translate::duration(
                    &d,
                    &join(&op, "upstream_log_flush_interval"),
                )?),
            };
            let flush = std::mem::take(&mut o.flush_upstream_log_on_upstream_stream);
            rest(&o, &op)?;
            Some(meshgate_core::config::router::UpstreamLogOptions {
                flush_upstream_log_on_upstream_stream: flush,
                upstream_log_flush_interval: interval,
            })
        }
    };
    let cfg = RouterFilterConfig {
        suppress_envoy_headers: std::mem::take(&mut r.suppress_envoy_headers),
        upstream_log,
        upstream_log_options,
    };
    rest(&r, path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::r#type::v3 as typev3;

    #[test]
    fn mirror_fields_are_translated_or_refused_by_name() {
        let m = rds::route_action::RequestMirrorPolicy {
            cluster: "shadow".into(),
            runtime_fraction: Some(core3::RuntimeFractionalPercent {
                default_value: Some(typev3::FractionalPercent {
                    numerator: 5,
                    denominator: 1,
                }),
                runtime_key: "k".into(),
            }),
            disable_shadow_host_suffix_append: true,
            ..Default::default()
        };
        let out = mirror_policies(vec![m], "a").ok().unwrap_or_default();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cluster.as_deref(), Some("shadow"));
        assert!(out[0].disable_shadow_host_suffix_append);
        let f = out[0]
            .runtime_fraction
            .as_ref()
            .map(|f| f.default_value.per_million());
        assert_eq!(f, Some(500));
        let m = rds::route_action::RequestMirrorPolicy {
            cluster: "shadow".into(),
            host_rewrite_literal: "x".into(),
            ..Default::default()
        };
        let e = mirror_policies(vec![m], "a").err().map(|e| e.0);
        assert_eq!(
            e.as_deref(),
            Some("a.request_mirror_policies[0].host_rewrite_literal")
        );
    }

    #[test]
    fn router_takes_suppress_envoy_headers_only() {
        let r = router::Router {
            suppress_envoy_headers: true,
            ..Default::default()
        };
        assert_eq!(
            router_config(r, "t").ok().map(|c| c.suppress_envoy_headers),
            Some(true)
        );
        let r = router::Router {
            respect_expected_rq_timeout: true,
            ..Default::default()
        };
        assert_eq!(
            router_config(r, "t").err().map(|e| e.0).as_deref(),
            Some("t.respect_expected_rq_timeout")
        );
    }
}
