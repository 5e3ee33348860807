//! Config of sidecar mode (traffic captured by nftables/iptables and handed
//! to meshgate): listener filters (`original_dst`, `http_inspector`), the
//! listener socket options TPROXY needs (`transparent`, `freebind`), the
//! `ORIGINAL_DST` cluster's `original_dst_lb_config`. Envoy's field names.

use serde::{Deserialize, Serialize};

/// Envoy's `envoy.filters.listener.original_dst`.
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
/// Envoy's `envoy.filters.listener.http_inspector`.
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
/// Envoy's `envoy.filters.listener.tls_inspector`: meshgate inspects the
/// ClientHello whenever a chain matches on SNI or ALPN, so naming it is
/// accepted and changes nothing.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// One entry of a listener's `listener_filters` (shared with the PROXY
/// protocol filter; `original_dst`, `http_inspector` and `tls_inspector`
/// take no options).
pub use super::proxy_protocol::ListenerFilterConfig;

/// Envoy's `Cluster.OriginalDstLbConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginalDstLbConfig {
    /// Take the upstream address from a request header
    /// (`x-envoy-original-dst-host`, or `http_header_name`) instead of the
    /// downstream connection's original destination.
    #[serde(default)]
    pub use_http_header: bool,
    /// The header `use_http_header` reads (default `x-envoy-original-dst-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
}
