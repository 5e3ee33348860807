//! Typed configs of Istio's own filters (docs/xds.md, "Istio"):
//! `istio_peer_metadata` (Istio's `envoy.filters.http.peer_metadata` /
//! HTTP `istio.metadata_exchange`: the peer's workload metadata exchanged
//! in the `x-envoy-peer-metadata` headers), `istio_stats` (Istio's
//! standard metrics, HTTP and TCP) and `istio_metadata_exchange` (the TCP
//! in-band exchange under the `istio-peer-exchange` ALPN).

use serde::{Deserialize, Serialize};

/// `istio_peer_metadata`: which directions read the peer's metadata and
/// which tell ours (Istio's `io.istio.http.peer_metadata.Config`, the
/// `istio_headers` method).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerMetadataConfig {
    /// Read the downstream peer's metadata from the request headers
    /// (removed from the request).
    #[serde(default)]
    pub downstream_discovery: bool,
    /// Read the upstream peer's metadata from the response headers
    /// (removed from the response).
    #[serde(default)]
    pub upstream_discovery: bool,
    /// Add our node's metadata to the response.
    #[serde(default)]
    pub downstream_propagation: bool,
    /// Add our node's metadata to the request sent upstream.
    #[serde(default)]
    pub upstream_propagation: bool,
}

/// Which side of the exchange this proxy reports as (Istio's `reporter`
/// label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reporter {
    /// The client's sidecar: `source_*` is this node, `destination_*` the
    /// upstream peer.
    #[default]
    Source,
    /// The server's sidecar: `source_*` is the downstream peer,
    /// `destination_*` this node.
    Destination,
    /// Istio's `SERVER_GATEWAY` (a waypoint): reports as `waypoint`,
    /// `source_*` the downstream peer, `destination_*` the upstream one.
    Waypoint,
}

/// `istio_stats` (Istio's `stats.PluginConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IstioStatsConfig {
    pub reporter: Reporter,
    /// Do not take `destination_service` from the request's host when the
    /// upstream cluster does not name the service (Istio's
    /// `disable_host_header_fallback`, set at ingress gateways).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_host_header_fallback: bool,
}

/// `istio_metadata_exchange` (network filter, Istio's
/// `envoy.tcp.metadataexchange.config.MetadataExchange`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataExchangeConfig {
    /// The ALPN id under which the in-band exchange runs
    /// (`istio-peer-exchange`); other connections pass untouched.
    pub protocol: String,
}
