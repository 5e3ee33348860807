//! Config of the UDP proxy listener (Envoy's
//! `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`), shared by
//! `crate::udp` and the xDS translator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A UDP listener that proxies datagrams to one cluster, one session per
/// client address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdpProxyConfig {
    /// Envoy's `stat_prefix`: accepted for compatibility; metrics are
    /// labelled by listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
    /// The upstream cluster.
    pub cluster: String,
    /// A session without a datagram in either direction this long ends
    /// (default 60s, as Envoy).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Hashing for ring_hash / maglev clusters: only `source_ip: true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policies: Vec<UdpHashPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_socket_config: Option<UdpSocketConfig>,
    /// The listener socket's config: Envoy's
    /// `Listener.udp_listener_config.downstream_socket_config` (kept here
    /// because a meshgate UDP listener carries only this proxy). A client
    /// datagram over its `max_rx_datagram_size` is dropped (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_socket_config: Option<UdpSocketConfig>,
    /// Envoy's `use_per_packet_load_balancing`: every datagram picks an
    /// Endpoint; a client has one upstream socket per Endpoint it was
    /// sent to, and replies from each reach it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_per_packet_load_balancing: bool,
    /// meshgate extension: the most sessions at once; a datagram from a
    /// new client past it is dropped and counted (default 10000).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
}

/// One hash policy (Envoy's `UdpProxyConfig.HashPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdpHashPolicy {
    /// Hash the client's IP address.
    #[serde(default)]
    pub source_ip: bool,
}

/// Envoy's `UdpSocketConfig` of the upstream sockets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSocketConfig {
    /// Datagrams larger than this are dropped (default 1500, as Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rx_datagram_size: Option<u32>,
}

fn default_idle() -> Duration {
    Duration::from_secs(60)
}

fn default_max_sessions() -> u32 {
    10_000
}

/// Envoy's default `max_rx_datagram_size`.
pub const DEFAULT_MAX_RX_DATAGRAM: u32 = 1500;
