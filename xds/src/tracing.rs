//! Translation of Envoy HCM's `tracing` and a Route's `tracing` into
//! meshgate's (`meshgate_core::config::tracing`). The provider must be
//! `envoy.tracers.opentelemetry` with an `envoy_grpc` service; any other
//! provider, `http_service`, custom exporters, samplers, resource
//! detectors and metadata tags are refused with the field named.

use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::config::trace::v3 as trace3;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::tracing::v3 as tag3;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use meshgate_core::config::tracing as tc;

const OPENTELEMETRY_CONFIG: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

fn percent(p: Option<typev3::Percent>) -> Option<tc::Percent> {
    p.map(|p| tc::Percent { value: p.value })
}

/// A route's `FractionalPercent` as a percentage.
fn fraction(p: Option<typev3::FractionalPercent>, path: &str) -> R<Option<tc::Percent>> {
    let Some(p) = p else { return Ok(None) };
    let per = match p.denominator {
        0 => 100.0,
        1 => 10_000.0,
        2 => 1_000_000.0,
        _ => return err(join(path, "denominator"), "unknown value"),
    };
    Ok(Some(tc::Percent {
        value: f64::from(p.numerator) * 100.0 / per,
    }))
}

fn custom_tags(tags: Vec<tag3::CustomTag>, path: &str) -> R<Vec<tc::CustomTag>> {
    use tag3::custom_tag::Type;
    let mut out = Vec::with_capacity(tags.len());
    for (i, t) in tags.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut tag = tc::CustomTag {
            tag: t.tag,
            literal: None,
            request_header: None,
            environment: None,
        };
        match t.r#type {
            Some(Type::Literal(l)) => tag.literal = Some(tc::LiteralTag { value: l.value }),
            Some(Type::RequestHeader(h)) => {
                tag.request_header = Some(tc::NamedTag {
                    name: h.name,
                    default_value: h.default_value,
                })
            }
            Some(Type::Environment(e)) => {
                tag.environment = Some(tc::NamedTag {
                    name: e.name,
                    default_value: e.default_value,
                })
            }
            Some(Type::Metadata(_)) => {
                return err(join(&p, "metadata"), "metadata tags are not supported");
            }
            Some(Type::Value(_)) => {
                return err(join(&p, "value"), "formatted value tags are not supported");
            }
            None => return err(p, "one of literal, request_header, environment is required"),
        }
        out.push(tag);
    }
    Ok(out)
}

/// HCM `tracing`.
pub(crate) fn hcm_tracing(
    mut t: hcm::http_connection_manager::Tracing,
    path: &str,
) -> R<tc::TracingConfig> {
    let pp = join(path, "provider");
    let Some(mut provider) = t.provider.take() else {
        return err(pp, "a provider is required (envoy.tracers.opentelemetry)");
    };
    let typed = match provider.config_type.take() {
        Some(trace3::tracing::http::ConfigType::TypedConfig(a)) => a,
        None => return err(join(&pp, "typed_config"), "missing typed_config"),
    };
    if typed.type_url == crate::trace_export::ZIPKIN_CONFIG {
        let typed_config = crate::trace_export::zipkin(&typed, &join(&pp, "typed_config"))?;
        let name = if provider.name.is_empty() {
            meshgate_core::config::trace_export::ZIPKIN.to_string()
        } else {
            std::mem::take(&mut provider.name)
        };
        return tracing_rest(t, path, name, typed_config);
    }
    if typed.type_url != OPENTELEMETRY_CONFIG {
        return err(
            join(&pp, "typed_config"),
            format!(
                "unsupported tracer '{}' {} (supported: {})",
                provider.name,
                typed.type_url,
                tc::OPENTELEMETRY
            ),
        );
    }
    let tp = join(&pp, "typed_config");
    let mut o: trace3::OpenTelemetryConfig =
        decode(&typed, OPENTELEMETRY_CONFIG).map_err(|e| (tp.clone(), e.to_string()))?;
    let http_service = match o.http_service.take() {
        Some(h) => Some(crate::trace_export::http_service(
            h,
            &join(&tp, "http_service"),
        )?),
        None => None,
    };
    let grpc_service = match o.grpc_service.take() {
        Some(g) => Some(grpc_service(g, &join(&tp, "grpc_service"))?),
        None => None,
    };
    let otel = tc::OpenTelemetryConfig {
        grpc_service,
        http_service,
        service_name: std::mem::take(&mut o.service_name),
        max_cache_size: o.max_cache_size.take().map(|v| v.value),
    };
    rest(&o, &tp)?;
    let name = if provider.name.is_empty() {
        tc::OPENTELEMETRY.to_string()
    } else {
        std::mem::take(&mut provider.name)
    };
    let typed_config = serde_json::to_value(&otel).map_err(|e| (tp.clone(), e.to_string()))?;
    tracing_rest(t, path, name, typed_config)
}

/// An OpenTelemetry `grpc_service` (`envoy_grpc` only).
pub(crate) fn grpc_service(mut g: core3::GrpcService, gp: &str) -> R<tc::GrpcService> {
    let envoy_grpc = match g.target_specifier.take() {
        Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(e)) => {
            let ep = join(gp, "envoy_grpc");
            if e.retry_policy.is_some() {
                return err(join(&ep, "retry_policy"), "not supported");
            }
            tc::EnvoyGrpc {
                cluster_name: e.cluster_name,
                authority: e.authority,
            }
        }
        _ => return err(join(gp, "google_grpc"), "only envoy_grpc is supported"),
    };
    let timeout = match g.timeout.take() {
        Some(d) => Some(duration(&d, &join(gp, "timeout"))?),
        None => None,
    };
    rest(&g, gp)?;
    Ok(tc::GrpcService {
        envoy_grpc,
        timeout,
    })
}

/// The HCM `tracing` fields around the provider.
fn tracing_rest(
    mut t: hcm::http_connection_manager::Tracing,
    path: &str,
    name: String,
    typed_config: serde_json::Value,
) -> R<tc::TracingConfig> {
    let cfg = tc::TracingConfig {
        provider: tc::Provider { name, typed_config },
        client_sampling: percent(t.client_sampling.take()),
        random_sampling: percent(t.random_sampling.take()),
        overall_sampling: percent(t.overall_sampling.take()),
        custom_tags: custom_tags(
            std::mem::take(&mut t.custom_tags),
            &join(path, "custom_tags"),
        )?,
        spawn_upstream_span: t.spawn_upstream_span.take().is_some_and(|b| b.value),
        max_path_tag_length: t.max_path_tag_length.take().map(|v| v.value),
        verbose: std::mem::take(&mut t.verbose),
    };
    rest(&t, path)?;
    Ok(cfg)
}

/// A Route's `tracing`.
pub(crate) fn route_tracing(mut t: rds::Tracing, path: &str) -> R<tc::RouteTracingConfig> {
    let cfg = tc::RouteTracingConfig {
        client_sampling: fraction(t.client_sampling.take(), &join(path, "client_sampling"))?,
        random_sampling: fraction(t.random_sampling.take(), &join(path, "random_sampling"))?,
        overall_sampling: fraction(t.overall_sampling.take(), &join(path, "overall_sampling"))?,
        custom_tags: custom_tags(
            std::mem::take(&mut t.custom_tags),
            &join(path, "custom_tags"),
        )?,
    };
    rest(&t, path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::any;

    fn provider(
        name: &str,
        type_url: &str,
        otel: &trace3::OpenTelemetryConfig,
    ) -> trace3::tracing::Http {
        trace3::tracing::Http {
            name: name.into(),
            config_type: Some(trace3::tracing::http::ConfigType::TypedConfig(any(
                type_url, otel,
            ))),
        }
    }

    fn otel(cluster: &str) -> trace3::OpenTelemetryConfig {
        trace3::OpenTelemetryConfig {
            grpc_service: Some(core3::GrpcService {
                target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core3::grpc_service::EnvoyGrpc {
                        cluster_name: cluster.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            service_name: "svc".into(),
            ..Default::default()
        }
    }

    #[test]
    fn opentelemetry_is_translated() {
        let t = hcm::http_connection_manager::Tracing {
            random_sampling: Some(typev3::Percent { value: 5.0 }),
            provider: Some(provider(
                "envoy.tracers.opentelemetry",
                OPENTELEMETRY_CONFIG,
                &otel("collector"),
            )),
            ..Default::default()
        };
        let c = hcm_tracing(t, "hcm.tracing").unwrap();
        assert_eq!(c.random_sampling, Some(tc::Percent { value: 5.0 }));
        assert_eq!(
            c.provider.typed_config["grpc_service"]["envoy_grpc"]["cluster_name"],
            "collector"
        );
        assert_eq!(c.provider.typed_config["service_name"], "svc");
    }

    #[test]
    fn other_providers_and_fields_are_refused_by_name() {
        let t = hcm::http_connection_manager::Tracing {
            provider: Some(provider(
                "envoy.tracers.datadog",
                "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
                &otel("c"),
            )),
            ..Default::default()
        };
        let (field, msg) = hcm_tracing(t, "hcm.tracing").unwrap_err();
        assert_eq!(field, "hcm.tracing.provider.typed_config");
        assert!(msg.contains("envoy.tracers.datadog"), "{msg}");

        let mut o = otel("c");
        o.sampler = Some(core3::TypedExtensionConfig::default());
        let t = hcm::http_connection_manager::Tracing {
            provider: Some(provider(
                "envoy.tracers.opentelemetry",
                OPENTELEMETRY_CONFIG,
                &o,
            )),
            ..Default::default()
        };
        let (field, _) = hcm_tracing(t, "hcm.tracing").unwrap_err();
        assert!(field.contains("sampler"), "{field}");

        let r = rds::Tracing {
            custom_tags: vec![tag3::CustomTag {
                tag: "m".into(),
                r#type: Some(tag3::custom_tag::Type::Metadata(Default::default())),
            }],
            ..Default::default()
        };
        let (field, _) = route_tracing(r, "route.tracing").unwrap_err();
        assert_eq!(field, "route.tracing.custom_tags[0].metadata");
        let r = rds::Tracing {
            overall_sampling: Some(typev3::FractionalPercent {
                numerator: 5,
                denominator: 1,
            }),
            ..Default::default()
        };
        let c = route_tracing(r, "route.tracing").unwrap();
        assert_eq!(c.overall_sampling, Some(tc::Percent { value: 0.05 }));
    }
}
