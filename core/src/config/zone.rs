//! Config of zone-aware routing: Envoy's
//! `Cluster.CommonLbConfig.ZoneAwareLbConfig` on an upstream cluster, and
//! the bootstrap fields that say where this proxy runs
//! (`node.locality`) and which cluster holds its own peers
//! (`cluster_manager.local_cluster_name`). The logic is in
//! `crate::cluster::zone`.

use super::priority::Percent;
use serde::{Deserialize, Serialize};

/// Envoy's `CommonLbConfig.ZoneAwareLbConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneAwareLbConfig {
    /// Percent of requests considered for zone-aware routing (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_enabled: Option<Percent>,
    /// Below this many endpoints in the upstream cluster, no zone-aware
    /// routing (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
    /// When the cluster (or the local cluster) is in panic, fail the
    /// request instead of balancing over every endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_traffic_on_panic: bool,
}

// Percent values are finite (checked at build): `==` is an equivalence.
impl Eq for ZoneAwareLbConfig {}

/// Envoy's bootstrap `cluster_manager`: only `local_cluster_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterManagerConfig {
    /// The cluster of this proxy's own service (its peers, with their
    /// localities): zone-aware routing compares its share of hosts per
    /// zone with an upstream cluster's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_cluster_name: String,
}

/// Envoy's default `min_cluster_size`.
pub const DEFAULT_MIN_CLUSTER_SIZE: u64 = 6;
