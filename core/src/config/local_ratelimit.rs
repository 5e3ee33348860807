//! Config of the `local_ratelimit` stream and network filters and of the
//! `fault` stream filter: the contract between the filters and the xDS
//! translator, with Envoy's field names (`envoy.extensions.filters.http.
//! local_ratelimit.v3.LocalRateLimit`, `...network.local_ratelimit.v3`,
//! `...http.fault.v3.HTTPFault`). Fields meshgate does not implement are
//! absent, so `deny_unknown_fields` refuses them by name.

use super::filters::RuntimeFractionalPercent;
use crate::router::{HeaderMatcherConfig, HeaderValueOption};
use serde::{Deserialize, Serialize};
use std::time::Duration;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Envoy's `type.v3.TokenBucket`: `max_tokens` at most, refilled with
/// `tokens_per_fill` (default 1) every `fill_interval`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub fill_interval: Duration,
}

/// Envoy's `type.v3.HttpStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusConfig {
    pub code: u16,
}

/// `enable_x_ratelimit_headers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum XRateLimitHeaders {
    #[default]
    Off,
    /// `x-ratelimit-limit`, `-remaining`, `-reset` (draft 03).
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
}

/// One `{key, value}` of a descriptor. An empty `value` in a configured
/// descriptor is Envoy's wildcard: each distinct request value gets its
/// own bucket (at most `max_dynamic_descriptors` of them, least recently
/// used evicted).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntryConfig {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Envoy's `LocalRateLimitDescriptor`: entries matched verbatim, with
/// their own bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDescriptorConfig {
    pub entries: Vec<DescriptorEntryConfig>,
    pub token_bucket: TokenBucketConfig,
}

/// Envoy's `config.route.v3.RateLimit`: actions that together build one
/// descriptor of a request (none when an action has nothing to say).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub actions: Vec<RateLimitActionConfig>,
}

/// Envoy's `RateLimit.Action`: exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitActionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<RequestHeadersAction>,
    /// `{}`: the trusted client address (`StreamInfo::downstream_remote_address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<EmptyAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_key: Option<GenericKeyAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value_match: Option<HeaderValueMatchAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameters: Option<QueryParametersAction>,
}

/// `query_parameters`: `{descriptor_key: <the query parameter's value>}`
/// (its first occurrence, percent-decoded).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParametersAction {
    pub query_parameter_name: String,
    pub descriptor_key: String,
    /// Absent parameter: skip this action (`true`) or the whole descriptor.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_if_absent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyAction {}

/// `request_headers`: `{descriptor_key: <the header's value>}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersAction {
    pub header_name: String,
    pub descriptor_key: String,
    /// Absent header: skip this action (`true`) or the whole descriptor.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_if_absent: bool,
}

/// `generic_key`: `{descriptor_key (default generic_key): descriptor_value}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenericKeyAction {
    pub descriptor_value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub descriptor_key: String,
}

/// `header_value_match`: `{descriptor_key (default header_match):
/// descriptor_value}` when the headers match (`expect_match`, default true).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueMatchAction {
    pub descriptor_value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub descriptor_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_match: Option<bool>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcherConfig>,
}

/// The `local_ratelimit` stream filter's config and per-route config
/// (Envoy's `LocalRateLimit`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HttpStatusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucketConfig>,
    /// Share of requests the limit is evaluated for (default 0 %, Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    /// Share of evaluated requests refused when over the limit (default 0 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enforced: Option<RuntimeFractionalPercent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<LocalDescriptorConfig>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub local_rate_limit_per_downstream_connection: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
    /// Default true: the default bucket is consumed even when a descriptor
    /// matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_consume_default_token_bucket: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub rate_limited_as_resource_exhausted: bool,
    /// Actions that build the request's descriptors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Buckets kept per wildcard descriptor (default 20, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dynamic_descriptors: Option<u32>,
    /// `retry-after` (seconds until the refusing bucket's next fill, at
    /// least 1) on a 429, unless `response_headers_to_add` sets one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_retry_after_header: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The `local_ratelimit` network filter (Envoy's network
/// `LocalRateLimit`): connections per bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkLocalRateLimitConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    pub token_bucket: TokenBucketConfig,
}
