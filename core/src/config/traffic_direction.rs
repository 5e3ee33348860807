//! Envoy's `Listener.traffic_direction`: which way a listener's traffic
//! flows, for `/drain_listeners?inboundonly` (it stops the `INBOUND`
//! ones only).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    Unspecified,
    Inbound,
    Outbound,
}
