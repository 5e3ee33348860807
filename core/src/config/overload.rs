//! The overload manager's config (`Config::overload_manager`): Envoy's
//! bootstrap `config.overload.v3.OverloadManager`, its field names. A
//! monitor's or an action's `typed_config` is the fields of its Envoy
//! config message (an `"@type"` key is accepted and checked); the names
//! are checked and the typed configs parsed by `crate::overload::Plan`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Envoy's `OverloadManager`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadManagerConfig {
    /// How often the resource monitors are read (Envoy's default 1s).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// At least one; each name at most once.
    pub resource_monitors: Vec<ResourceMonitorConfig>,
    #[serde(default)]
    pub actions: Vec<OverloadActionConfig>,
}

fn default_refresh() -> Duration {
    Duration::from_secs(1)
}

/// Envoy's `ResourceMonitor`: `name` (e.g.
/// `envoy.resource_monitors.fixed_heap`) and its `typed_config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMonitorConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub typed_config: serde_json::Value,
}

/// Envoy's `OverloadAction`: an action's `name`, the `triggers` that
/// activate it (the action's state is the highest of theirs) and its
/// `typed_config` (`reduce_timeouts` only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadActionConfig {
    pub name: String,
    pub triggers: Vec<TriggerConfig>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub typed_config: serde_json::Value,
}

/// Envoy's `Trigger`: a resource monitor's `name` and exactly one of
/// `threshold` and `scaled`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled: Option<ScaledTrigger>,
}

/// Saturated (1) at or above `value`, inactive (0) below; 0..=1.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdTrigger {
    pub value: f64,
}
// The values are checked finite (0..=1) when the plan is built.
impl Eq for ThresholdTrigger {}

/// Inactive below `scaling_threshold`, saturated at or above
/// `saturation_threshold`, scaled linearly between them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScaledTrigger {
    pub scaling_threshold: f64,
    pub saturation_threshold: f64,
}
impl Eq for ScaledTrigger {}

/// `envoy.resource_monitors.fixed_heap` (`FixedHeapConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedHeapConfig {
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    pub max_heap_size_bytes: u64,
}

/// `envoy.resource_monitors.global_downstream_max_connections`
/// (`DownstreamConnectionsConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConnectionsConfig {
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    pub max_active_downstream_connections: u64,
}

/// `envoy.resource_monitors.cgroup_memory` (`CgroupMemoryConfig`): the
/// limit is the cgroup's, or `max_memory_bytes` when smaller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupMemoryConfig {
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
}

/// `meshgate.resource_monitors.buffered_bytes` (a meshgate extension):
/// request body bytes meshgate holds for streams against a budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferedBytesConfig {
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    pub max_buffered_bytes: u64,
}

/// `envoy.overload_actions.reduce_timeouts`'s `typed_config`
/// (`ScaleTimersOverloadActionConfig`); checked by `overload::timers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleTimersConfig {
    #[serde(rename = "@type", default)]
    pub type_url: Option<String>,
    #[serde(default)]
    pub timer_scale_factors: Vec<ScaleTimerConfig>,
}

/// Envoy's `ScaleTimer`: the `timer` (a `TimerType` name) and exactly one
/// of `min_timeout` and `min_scale` (a percentage of the configured value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleTimerConfig {
    pub timer: String,
    #[serde(default, with = "humantime_serde")]
    pub min_timeout: Option<Duration>,
    #[serde(default)]
    pub min_scale: Option<PercentConfig>,
}

/// Envoy's `type.v3.Percent`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentConfig {
    pub value: f64,
}
