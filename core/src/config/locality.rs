//! Config of locality-weighted load balancing: an endpoint's `locality`
//! (Envoy's `config.core.v3.Locality`) and its locality's
//! `locality_weight` (Envoy's `LocalityLbEndpoints.load_balancing_weight`),
//! used when the cluster sets `common_lb_config.locality_weighted_lb_config`.
//! The logic is in `crate::cluster::locality`.

use serde::{Deserialize, Serialize};

/// Envoy's `config.core.v3.Locality`: where an endpoint runs. Endpoints of
/// one priority with the same locality form one locality group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

/// Envoy's `CommonLbConfig.LocalityWeightedLbConfig` (no fields): within
/// the chosen priority, a locality is picked by its weight times its
/// availability, then an endpoint within it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityWeightedLbConfig {}
