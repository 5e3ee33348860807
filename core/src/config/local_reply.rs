//! Config of custom local replies: Envoy HCM's `local_reply_config`
//! (`envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig`)
//! with Envoy's field names, shared by the `proxy` filter (which compiles
//! and applies it, filters/src/local_reply.rs) and the xDS translator.
//! Filters and command operators meshgate does not implement are refused
//! by name when the `proxy` filter is built.

use crate::router::{HeaderMatcherConfig, HeaderValueOption};
use serde::{Deserialize, Serialize};

/// Envoy's `LocalReplyConfig`: the first mapper whose filter matches a
/// local reply rewrites it; `body_format` then shapes every local reply's
/// body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalReplyConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappers: Vec<ResponseMapper>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_format: Option<SubstitutionFormatString>,
}

/// Envoy's `LocalReplyConfig.ResponseMapper`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMapper {
    pub filter: AccessLogFilter,
    /// The new HTTP status (200..=599).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The new body text (`%LOCAL_REPLY_BODY%` in a format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
    /// Replaces `body_format` for the replies this mapper matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_format_override: Option<SubstitutionFormatString>,
    /// Command operators are substituted in the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_add: Vec<HeaderValueOption>,
}

/// Envoy's `config.core.v3.DataSource`, `inline_string` only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub inline_string: String,
}

/// Envoy's `config.accesslog.v3.AccessLogFilter`: exactly one field set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code_filter: Option<StatusCodeFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and_filter: Option<FilterList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_filter: Option<FilterList>,
    /// Matches every request: meshgate answers health checks itself
    /// nowhere on the proxy path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_health_check_filter: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_flag_filter: Option<ResponseFlagFilter>,
    /// The stream's duration (ms, `%DURATION%`) compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_filter: Option<StatusCodeFilter>,
    /// The request carries a sampled trace decision (`traceparent` or B3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceable_filter: Option<Empty>,
    /// A sampled share of requests (meshgate has no runtime layer:
    /// `percent_sampled` is the share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_filter: Option<RuntimeFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status_filter: Option<GrpcStatusFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_filter: Option<MetadataFilter>,
}

/// Envoy's `RuntimeFilter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFilter {
    /// Accepted and unused (no runtime layer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_sampled: Option<crate::config::filters::FractionalPercent>,
    /// Default false: the sample follows `x-request-id`, so every log
    /// with this filter keeps the same requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_independent_randomness: bool,
}

/// Envoy's `GrpcStatusFilter`: status names as Envoy's enum (`OK`,
/// `UNAVAILABLE`...).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcStatusFilter {
    #[serde(default)]
    pub statuses: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude: bool,
}

/// Envoy's `MetadataFilter` on the stream's dynamic metadata.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<crate::config::rbac::MetadataMatcherConfig>,
    /// What a missing key gives (Envoy's default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_if_key_not_found: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeFilter {
    pub comparison: ComparisonFilter,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonFilter {
    #[serde(default)]
    pub op: ComparisonOp,
    pub value: RuntimeUInt32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ComparisonOp {
    #[default]
    Eq,
    Ge,
    Le,
    Ne,
}

/// Envoy's `RuntimeUInt32`: meshgate has no runtime layer, so
/// `default_value` is the value (`runtime_key` is accepted and unused).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeUInt32 {
    #[serde(default)]
    pub default_value: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    pub header: HeaderMatcherConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterList {
    pub filters: Vec<AccessLogFilter>,
}

/// Envoy's `ResponseFlagFilter`: matches when the reply's reason has one
/// of the flags (any flag when empty).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFlagFilter {
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Envoy's `config.core.v3.SubstitutionFormatString`: exactly one of
/// `text_format`, `text_format_source` (inline), `json_format`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionFormatString {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format_source: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    /// Default: `text/plain` for text, `application/json` for JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub omit_empty_values: bool,
}
