//! Config of priority load balancing over a cluster's endpoints: Envoy's
//! `Cluster.common_lb_config` (the panic threshold) and
//! `ClusterLoadAssignment.policy` (overprovisioning factor, drop
//! overloads). The endpoint's `priority` is on `EndpointConfig`. The logic
//! is in `crate::cluster::priority`.

use super::filters::FractionalPercent;
use serde::{Deserialize, Serialize};

/// Envoy's `Cluster.CommonLbConfig`. Its other fields are not
/// supported and refused by name as unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonLbConfig {
    /// Below this share (percent) of healthy and degraded endpoints in a
    /// priority, health is ignored there (panic mode). Envoy's default 50;
    /// 0 disables panic mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percent>,
    /// Pick a locality by weight × availability within the chosen
    /// priority (`crate::cluster::locality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_weighted_lb_config: Option<super::locality::LocalityWeightedLbConfig>,
    /// Prefer endpoints in this proxy's zone as far as their capacity
    /// allows (`crate::cluster::zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_config: Option<super::zone::ZoneAwareLbConfig>,
}

// Percent values are finite (checked at build): `==` is an equivalence.
impl Eq for CommonLbConfig {}

/// Envoy's `type.v3.Percent`: `value` in [0, 100].
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Envoy's `ClusterLoadAssignment.Policy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAssignmentPolicy {
    /// Percent (140 = 1.4): a priority whose healthy share times this
    /// factor reaches 100 % takes all of its traffic. Envoy's default 140.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<u32>,
    /// Requests answered 503 at once, before an endpoint is chosen (at
    /// most one category, as in Envoy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_overloads: Vec<DropOverload>,
    /// Envoy's `weighted_priority_health`: a priority's health is the
    /// healthy share of its endpoints' weights instead of their count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weighted_priority_health: bool,
}

impl Eq for LoadAssignmentPolicy {}

/// Envoy's `ClusterLoadAssignment.Policy.DropOverload`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DropOverload {
    /// The label of the drop counter.
    pub category: String,
    pub drop_percentage: FractionalPercent,
}

/// Envoy's default `overprovisioning_factor`.
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// Envoy's default `healthy_panic_threshold`.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
