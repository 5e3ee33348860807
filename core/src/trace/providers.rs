//! The tracing providers a `tracing.provider` may name, built into an
//! `export::Exporter`: `envoy.tracers.opentelemetry` over gRPC
//! (`grpc_service`) or HTTP (`http_service`, OTLP/HTTP protobuf), and
//! `envoy.tracers.zipkin` (Zipkin v2 JSON). Anything else is refused with
//! the field named.

use super::export::Exporter;
use super::otlp_http::OtlpHttp;
use super::sink::HttpTarget;
use super::zipkin::Zipkin;
use crate::config::trace_export::{HttpService, ZIPKIN, ZipkinConfig};
use crate::config::tracing::{OPENTELEMETRY, OpenTelemetryConfig, TracingConfig};
use crate::error::BuildError;
use std::sync::Arc;
use std::time::Duration;

const TC: &str = "tracing.provider.typed_config";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A built provider: its exporter, and whether new traces get 64-bit ids
/// (Zipkin's `trace_id_128bit: false`).
pub struct Built {
    pub exporter: Exporter,
    pub id64: bool,
}

fn typed<T: serde::de::DeserializeOwned>(cfg: &TracingConfig) -> Result<T, BuildError> {
    crate::config::parse_typed(&cfg.provider.typed_config)
        .map_err(|e| BuildError::new(crate::error::join_path(TC, &e.path), e.message))
}

pub fn build(
    cfg: &TracingConfig,
    ctx: &crate::network::BuildContext<'_>,
) -> Result<Built, BuildError> {
    match cfg.provider.name.as_str() {
        OPENTELEMETRY => opentelemetry(typed(cfg)?, ctx),
        ZIPKIN => zipkin(typed(cfg)?, ctx),
        other => Err(BuildError::new(
            "tracing.provider.name",
            format!("unsupported tracer '{other}' (supported: {OPENTELEMETRY}, {ZIPKIN})"),
        )),
    }
}

fn opentelemetry(
    otel: OpenTelemetryConfig,
    ctx: &crate::network::BuildContext<'_>,
) -> Result<Built, BuildError> {
    let service_name = if otel.service_name.is_empty() {
        "meshgate".to_string()
    } else {
        otel.service_name.clone()
    };
    let batch = otel.max_cache_size.unwrap_or(1024) as usize;
    let exporter = match (&otel.grpc_service, &otel.http_service) {
        (Some(g), None) => {
            let field = format!("{TC}.grpc_service.envoy_grpc.cluster_name");
            let cluster = ctx.cluster(&field, &g.envoy_grpc.cluster_name)?;
            let authority = if g.envoy_grpc.authority.is_empty() {
                g.envoy_grpc.cluster_name.clone()
            } else {
                g.envoy_grpc.authority.clone()
            };
            Exporter::new(
                cluster,
                authority,
                service_name,
                batch,
                g.timeout.unwrap_or(DEFAULT_TIMEOUT),
            )
        }
        (None, Some(h)) => {
            let (cluster, target, timeout) = http_service(h, ctx)?;
            Exporter::new(cluster, String::new(), service_name, batch, timeout)
                .with_sink(Arc::new(OtlpHttp { target }))
        }
        _ => {
            return Err(BuildError::new(
                TC,
                "exactly one of grpc_service and http_service is required",
            ));
        }
    };
    Ok(Built {
        exporter,
        id64: false,
    })
}

fn http_service(
    h: &HttpService,
    ctx: &crate::network::BuildContext<'_>,
) -> Result<(Arc<crate::cluster::Cluster>, HttpTarget, Duration), BuildError> {
    let up = format!("{TC}.http_service.http_uri");
    let cluster = ctx.cluster(&format!("{up}.cluster"), &h.http_uri.cluster)?;
    let mut target = HttpTarget::new(&format!("{up}.uri"), &h.http_uri.uri, &h.http_uri.cluster)?;
    for (i, o) in h.request_headers_to_add.iter().enumerate() {
        target.header(
            &format!("{TC}.http_service.request_headers_to_add[{i}].header"),
            &o.header.key,
            &o.header.value,
        )?;
    }
    Ok((
        cluster,
        target,
        h.http_uri.timeout.unwrap_or(DEFAULT_TIMEOUT),
    ))
}

fn zipkin(z: ZipkinConfig, ctx: &crate::network::BuildContext<'_>) -> Result<Built, BuildError> {
    match z.collector_endpoint_version.as_deref() {
        None | Some("HTTP_JSON") => {}
        Some(v) => {
            return Err(BuildError::new(
                format!("{TC}.collector_endpoint_version"),
                format!("{v} is not supported (only HTTP_JSON)"),
            ));
        }
    }
    if z.shared_span_context != Some(false) {
        return Err(BuildError::new(
            format!("{TC}.shared_span_context"),
            "must be false: meshgate's server spans have their own span ids (Envoy's default true is not supported)",
        ));
    }
    if z.split_spans_for_request {
        return Err(BuildError::new(
            format!("{TC}.split_spans_for_request"),
            "not supported: use the HCM's spawn_upstream_span for client spans",
        ));
    }
    let cluster = ctx.cluster(&format!("{TC}.collector_cluster"), &z.collector_cluster)?;
    let authority = if z.collector_hostname.is_empty() {
        z.collector_cluster.as_str()
    } else {
        z.collector_hostname.as_str()
    };
    if !z.collector_endpoint.starts_with('/') {
        return Err(BuildError::new(
            format!("{TC}.collector_endpoint"),
            "must be a path starting with '/'",
        ));
    }
    let target = HttpTarget::new(
        &format!("{TC}.collector_endpoint"),
        &z.collector_endpoint,
        authority,
    )?;
    let service_name = if z.service_name.is_empty() {
        "meshgate".to_string()
    } else {
        z.service_name.clone()
    };
    Ok(Built {
        exporter: Exporter::new(cluster, String::new(), service_name, 1024, DEFAULT_TIMEOUT)
            .with_sink(Arc::new(Zipkin { target })),
        id64: !z.trace_id_128bit,
    })
}
