//! Config of the `fault` stream filter (Envoy's
//! `envoy.extensions.filters.http.fault.v3.HTTPFault`), the contract
//! between the filter and the xDS translator. Fields meshgate does not
//! implement (`response_rate_limit`, `downstream_nodes`, runtime keys) are
//! absent, so `deny_unknown_fields` refuses them by name.

use super::filters::FractionalPercent;
use crate::router::HeaderMatcherConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `{}`: the value comes from a request header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FromHeader {}

/// Envoy's `FaultDelay`: exactly one of `fixed_delay`, `header_delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayConfig {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub fixed_delay: Option<Duration>,
    /// `x-envoy-fault-delay-request` (milliseconds) sets the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_delay: Option<FromHeader>,
    /// Share of requests delayed (Envoy's default: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<FractionalPercent>,
}

/// Envoy's `FaultAbort`: exactly one of `http_status`, `grpc_status`,
/// `header_abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// `x-envoy-fault-abort-request` (HTTP status) or
    /// `x-envoy-fault-abort-grpc-request` (gRPC status) sets the abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_abort: Option<FromHeader>,
    /// Share of requests aborted (Envoy's default: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<FractionalPercent>,
    /// Default `fault filter abort`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response_body: String,
}

/// The `fault` filter's config and per-route config.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortConfig>,
    /// Faults only for requests routed to this cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream_cluster: String,
    /// Faults only for requests whose headers all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcherConfig>,
    /// At most this many faults active at once (unbounded when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
}
