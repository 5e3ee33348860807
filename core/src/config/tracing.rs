//! Config of distributed tracing (`crate::trace`): the `proxy` filter's
//! `tracing` (Envoy's `HttpConnectionManager.tracing`) and a route's
//! `tracing` (Envoy's `Route.tracing`). Field names are Envoy's; the only
//! provider is `envoy.tracers.opentelemetry` (OTLP over gRPC to a meshgate
//! cluster), any other is refused with the field named.

use serde::{Deserialize, Serialize};

/// The provider meshgate implements.
pub const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";

/// Envoy's `type.v3.Percent`: `{value: 0..100}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// HCM-level `tracing`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans go; required (a tracing block without one would trace
    /// into nothing).
    pub provider: Provider,
    /// Share of requests carrying `x-client-trace-id` that are traced
    /// (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_sampling: Option<Percent>,
    /// Share of other requests (no incoming decision) that are traced,
    /// by the `x-request-id` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling: Option<Percent>,
    /// Upper bound applied after the other decisions (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_sampling: Option<Percent>,
    /// Extra span attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_tags: Vec<CustomTag>,
    /// A client span per upstream try (the upstream sees its context);
    /// without it the upstream sees the server span's.
    #[serde(default)]
    pub spawn_upstream_span: bool,
    /// Longest `url.path` attribute kept (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<u32>,
    /// Envoy's `verbose`: annotations meshgate does not record; only
    /// `false` is accepted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verbose: bool,
}

/// `tracing.provider` (Envoy's `config.trace.v3.Tracing.Http`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    #[serde(default)]
    pub typed_config: serde_json::Value,
}

/// `envoy.tracers.opentelemetry`'s config (Envoy's
/// `OpenTelemetryConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenTelemetryConfig {
    /// OTLP/gRPC; exactly one of this and `http_service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<GrpcService>,
    /// OTLP/HTTP protobuf (`POST /v1/traces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_service: Option<super::trace_export::HttpService>,
    /// `service.name` of the exported resource (default `meshgate`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// Spans sent in one export call (Envoy's `max_cache_size`, default
    /// 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cache_size: Option<u32>,
}

/// Envoy's `GrpcService` with `envoy_grpc` (a meshgate cluster).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    pub envoy_grpc: EnvoyGrpc,
    /// Per export call (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    pub cluster_name: String,
    /// `:authority` of the export calls (default the cluster name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
}

/// Envoy's `type.tracing.v3.CustomTag`: exactly one source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomTag {
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header: Option<NamedTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedTag>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LiteralTag {
    pub value: String,
}

/// A request header or an environment variable, with the value used when
/// it is absent (no attribute when that is empty too).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

/// Route-level `tracing` (Envoy's `route.v3.Tracing`): overrides of the
/// HCM's sampling, and tags added to the HCM's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTracingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_sampling: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_sampling: Option<Percent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_tags: Vec<CustomTag>,
}
