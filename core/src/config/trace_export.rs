//! Config of the span exporters other than OTLP/gRPC (`crate::trace`):
//! OpenTelemetry's `http_service` (OTLP/HTTP protobuf, Envoy's
//! `config.core.v3.HttpService`) and the Zipkin provider
//! (`envoy.tracers.zipkin`, Envoy's `config.trace.v3.ZipkinConfig`).
//! Field names are Envoy's.

use serde::{Deserialize, Serialize};

/// The Zipkin provider's name.
pub const ZIPKIN: &str = "envoy.tracers.zipkin";

/// Envoy's `HttpService`: where OTLP/HTTP exports go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpService {
    pub http_uri: HttpUri,
    /// Headers added to each export request (e.g. an API key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
}

/// Envoy's `HttpUri`: the URI's path and authority are sent to `cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUri {
    pub uri: String,
    pub cluster: String,
    /// Per export request (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
}

/// Envoy's `HeaderValueOption` (only `header`; the append actions do not
/// matter on a request meshgate builds itself).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Envoy's `ZipkinConfig`. Only `HTTP_JSON` (Zipkin API v2 JSON) is
/// sent; `shared_span_context` and `split_spans_for_request` accept only
/// the behaviour meshgate has (separate server span ids, client spans from
/// the HCM's `spawn_upstream_span`), anything else is refused by name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZipkinConfig {
    pub collector_cluster: String,
    /// Path of the collector's API, e.g. `/api/v2/spans`.
    pub collector_endpoint: String,
    /// `HTTP_JSON` (the default); `HTTP_PROTO` and `GRPC` are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_endpoint_version: Option<String>,
    /// `Host` of the export requests (default the cluster name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collector_hostname: String,
    /// New traces get 128-bit ids; `false` (Envoy's default) starts
    /// 64-bit ones (the upper half zero).
    #[serde(default)]
    pub trace_id_128bit: bool,
    /// Envoy's default is `true` (a server span reuses its client's span
    /// id); meshgate's spans always have their own ids: only `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
    /// Only `false`: client spans come from `spawn_upstream_span`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_spans_for_request: bool,
    /// `localEndpoint.serviceName` (default `meshgate`; not Envoy's
    /// field: Envoy uses the node's cluster).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
}
