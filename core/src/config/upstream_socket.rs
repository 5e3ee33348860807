//! A cluster's upstream socket settings: Envoy's `Cluster.upstream_bind_config`
//! (`core.v3.BindConfig`: the local address, `freebind` and raw
//! `socket_options` of each upstream socket) and
//! `Cluster.upstream_connection_options.tcp_keepalive` (TCP keepalive
//! probes). Applied by `cluster::Cluster::connect_endpoint` on every
//! connection the cluster opens (tcp_proxy and the HTTP/RPC pools).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Envoy's `BindConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamBindConfig {
    /// The local address (and port, 0: any) upstream sockets bind to
    /// before connecting (Envoy's `source_address`), e.g. `127.0.0.2:0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SocketAddr>,
    /// `IP_FREEBIND`: bind to an address not (yet) on this host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freebind: bool,
    /// Raw options; `state: prebind` (before bind/connect) or `bound`
    /// (after bind, before connect). `listening` is refused (an upstream
    /// socket never listens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_options: Vec<crate::socket_option::SocketOptionConfig>,
}

/// Envoy's `UpstreamConnectionOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConnectionOptions {
    /// `SO_KEEPALIVE` on, with these values (unset: the kernel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Envoy's `core.v3.TcpKeepalive` (seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// `TCP_KEEPCNT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_probes: Option<u32>,
    /// `TCP_KEEPIDLE`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u32>,
    /// `TCP_KEEPINTVL`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<u32>,
}
