//! Config of a cluster's circuit breakers (Envoy's
//! `config.cluster.v3.CircuitBreakers`), shared by the YAML loader and the
//! xDS translator (`xds/src/circuit_breakers.rs`). The runtime side is
//! `crate::cluster::breaker`.

use serde::{Deserialize, Serialize};

/// Envoy's `RoutingPriority`: which thresholds a request counts against
/// (a route's `priority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum RoutingPriority {
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "HIGH")]
    High,
}

impl RoutingPriority {
    /// The `priority` label of the breaker metrics.
    pub fn label(self) -> &'static str {
        match self {
            RoutingPriority::Default => "default",
            RoutingPriority::High => "high",
        }
    }
}

/// `circuit_breakers` of a cluster: at most one threshold per priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    #[serde(default)]
    pub thresholds: Vec<ThresholdsConfig>,
    /// Envoy's `per_host_thresholds`: limits per endpoint. As in Envoy,
    /// only `max_connections` (DEFAULT priority) is honoured; any other
    /// field is refused by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_host_thresholds: Vec<ThresholdsConfig>,
}

/// Envoy's `CircuitBreakers.Thresholds`. Unset limits take Envoy's
/// defaults (1024; `max_retries` 3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsConfig {
    #[serde(default)]
    pub priority: RoutingPriority,
    /// Concurrent upstream connections of the cluster (shared by both
    /// priorities: only the DEFAULT threshold may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for an upstream connection slot while the cluster
    /// is at `max_connections` (queued per cluster: DEFAULT only); more
    /// overflow at once with 503 (`cluster::pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Active requests to the cluster (all endpoints, every protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Concurrent retries (replaced by `retry_budget` when that is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetConfig>,
    /// Publish `meshgate_cluster_circuit_breakers_remaining`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_remaining: bool,
    /// Refused when set (pools are per endpoint and not limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<u32>,
}

/// Envoy's `Thresholds.RetryBudget`: concurrent retries limited to
/// `budget_percent` of the active requests (pending + active), never below
/// `min_retry_concurrency`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Envoy's `type.v3.Percent` (`{value: 20.0}`); default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<PercentConfig>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// Envoy's `type.v3.Percent`, kept as its text so that the config stays
/// `Eq` (checked as 0..=100 when the cluster is built).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PercentConfig {
    pub value: f64,
}

impl Eq for PercentConfig {}
