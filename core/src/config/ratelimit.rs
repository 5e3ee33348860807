//! Config of the global `ratelimit` stream filter (Envoy's
//! `envoy.extensions.filters.http.ratelimit.v3.RateLimit`), the contract
//! between the filter and the xDS translator. Field names are Envoy's;
//! fields meshgate does not support are unknown fields (refused, never
//! ignored).

use super::ext_authz::{GrpcServiceConfig, HttpStatusConfig};
use super::local_ratelimit::XRateLimitHeaders;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `ratelimit` filter: asks a rate limit service
/// (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) about
/// the descriptors the route's (else the virtual host's) `rate_limits`
/// build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFilterConfig {
    /// The domain sent with each request (required).
    #[serde(default)]
    pub domain: String,
    /// Only stage 0 (the default) is supported: routes' `rate_limits`
    /// carry no stage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stage: u32,
    /// `internal`, `external` or `both` (the default). meshgate has no
    /// internal/external request notion, so only `both` is accepted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_type: String,
    /// The call's deadline (default 20 ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Refuse (500) a request the service could not answer for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure_mode_deny: bool,
    /// A refused gRPC request gets RESOURCE_EXHAUSTED (else UNAVAILABLE).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited_as_resource_exhausted: bool,
    /// The service (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimitServiceConfig>,
    /// `x-ratelimit-limit/remaining/reset` from the service's statuses.
    #[serde(default)]
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
    /// The status of a refusal (default 429; below 400 means 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_status: Option<HttpStatusConfig>,
}

/// Envoy's `config.ratelimit.v3.RateLimitServiceConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitServiceConfig {
    pub grpc_service: GrpcServiceConfig,
    /// Only `V3` (the default) is spoken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_api_version: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
