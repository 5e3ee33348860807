//! The one config model of meshgate (serde), shared by the file loader and,
//! later, the xDS translation. Field names follow Envoy's where an operator
//! would look for them. Unknown fields are errors everywhere.

pub mod access_log;
pub mod admin;
pub mod circuit_breakers;
pub mod compressor;
pub mod decompressor;
pub mod ext_authz;
pub mod fault;
pub mod filters;
pub mod grpc_json_transcoder;
pub mod grpc_web;
pub mod header_mutation;
pub mod health_check;
pub mod http_to_rpc;
pub mod istio;
pub mod jwt_authn;
mod load;
pub mod local_ratelimit;
pub mod local_reply;
pub mod locality;
pub mod outlier;
pub mod overload;
pub mod priority;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod rbac;
pub mod router;
pub mod sidecar;
pub mod simpleauth;
pub mod trace_export;
pub mod tracing;
pub mod traffic_direction;
pub mod udp_proxy;
pub mod upstream_socket;
pub mod zone;

pub use load::{ConfigSource, LineIndex, load_file, load_file_off_worker, parse_str, parse_typed};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The whole config file. Listeners and clusters are shared (`Arc`): a
/// new version of the model (an xDS update, a merge with the file's static
/// part) carries the unchanged ones over without copying them, and
/// comparing two versions stops at the first shared pointer (`Arc`'s `==`
/// for `Eq` types).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    #[serde(default, with = "shared")]
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// A persistent vector (`imbl`): copying it is O(1) and a version that
    /// changes one cluster among 10,000 shares the rest of the list with
    /// the one before (an xDS client's composition, the merge with the
    /// file's statics, the cluster manager, the old snapshot's drop).
    #[serde(default, with = "shared_list")]
    pub clusters: ClusterList,
    /// Who this proxy is to an xDS server (Envoy's bootstrap `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeConfig>,
    /// Listeners and clusters from an xDS server, merged with the static
    /// ones above (Envoy's bootstrap `dynamic_resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_resources: Option<DynamicResourcesConfig>,
    /// Envoy's bootstrap `cluster_manager` (`local_cluster_name`, for
    /// zone-aware routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_manager: Option<zone::ClusterManagerConfig>,
    /// Protects meshgate itself (Envoy's bootstrap `overload_manager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload_manager: Option<overload::OverloadManagerConfig>,
}

/// The clusters of a config, in order (see `Config::clusters`).
pub type ClusterList = imbl::Vector<Arc<ClusterConfig>>;

/// Serde for a persistent list of shared resources: written and read as
/// the plain list.
mod shared_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &imbl::Vector<Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<imbl::Vector<Arc<T>>, D::Error> {
        // Element by element: the parsed `Vec<T>` is freed as it goes.
        let items = Vec::<T>::deserialize(d)?;
        Ok(items.into_iter().map(Arc::new).collect())
    }
}

/// Serde for a list of shared resources: written and read as the plain
/// list.
mod shared {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<T: Serialize, S: Serializer>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        let items = Vec::<T>::deserialize(d)?;
        // A new list sized to fit, not `into_iter().map().collect()`: that
        // collects in place and keeps the parsed `Vec<T>`'s buffer (about
        // 1.6x the count times a whole `ClusterConfig`) for the life of the
        // config, some 1.8 KB per cluster (benches/RESULTS.md, issue 23).
        let mut shared = Vec::with_capacity(items.len());
        shared.extend(items.into_iter().map(Arc::new));
        Ok(shared)
    }
}

/// Envoy's `filter_metadata`: namespace -> value.
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// The node identity sent to the xDS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Free-form metadata (Envoy's `node.metadata` Struct).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Where this proxy runs (Envoy's `node.locality`): the local zone of
    /// zone-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<locality::Locality>,
}

/// Where dynamic resources come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicResourcesConfig {
    /// One aggregated (ADS) gRPC stream carries LDS, RDS, CDS, EDS and SDS.
    pub ads: AdsConfig,
    /// Envoy's `cds_config` (always ADS here): its `initial_fetch_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cds_config: Option<CdsSourceConfig>,
}

/// Envoy's `dynamic_resources.cds_config`: only `initial_fetch_timeout`,
/// how long a listener warms for a cluster its `tcp_proxy` (or a
/// validating route) names before it is served with a stand-in for it (no
/// endpoints); Envoy's 15 s unless set, `0s`: no bound.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CdsSourceConfig {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_fetch_timeout: Option<Duration>,
}

/// The ADS server: a static cluster of this config, spoken to over
/// HTTP/2 (gRPC), with TLS when the cluster has `tls` (its `trusted_ca`,
/// `sni` and `client_certificate` for mTLS; ALPN `h2`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdsConfig {
    /// A static cluster naming the xDS server's endpoints.
    pub cluster: String,
    /// First reconnect delay after the stream fails (jittered, doubling).
    #[serde(default = "default_ads_backoff_base", with = "humantime_serde")]
    pub retry_base_interval: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_ads_backoff_max", with = "humantime_serde")]
    pub retry_max_interval: Duration,
    /// Envoy's `ApiConfigSource.api_type`: `GRPC` (state of the world,
    /// the default) or `DELTA_GRPC` (incremental: only changed resources
    /// travel, and removals are named).
    #[serde(default)]
    pub api_type: AdsApiType,
}

/// Envoy's `Cluster.DnsLookupFamily`: which addresses of a DNS answer
/// are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum DnsLookupFamily {
    /// IPv6 addresses if the answer has any, else IPv4 (Envoy's default).
    #[default]
    #[serde(rename = "AUTO")]
    Auto,
    #[serde(rename = "V4_ONLY")]
    V4Only,
    #[serde(rename = "V6_ONLY")]
    V6Only,
    /// IPv4 addresses if the answer has any, else IPv6.
    #[serde(rename = "V4_PREFERRED")]
    V4Preferred,
    /// Every address of the answer.
    #[serde(rename = "ALL")]
    All,
}

impl DnsLookupFamily {
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    /// The addresses of `answer` this family keeps, in answer order.
    pub fn select(self, answer: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
        let (v4, v6): (Vec<_>, Vec<_>) = answer.iter().partition(|a| a.is_ipv4());
        match self {
            Self::All => answer,
            Self::V4Only => v4,
            Self::V6Only => v6,
            Self::Auto if v6.is_empty() => v4,
            Self::Auto => v6,
            Self::V4Preferred if v4.is_empty() => v6,
            Self::V4Preferred => v4,
        }
    }
}

/// The xDS protocol variant of the ADS stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AdsApiType {
    /// `StreamAggregatedResources`: every response carries every resource
    /// of its type (RDS, EDS, SDS: every subscribed one).
    #[default]
    #[serde(rename = "GRPC")]
    Grpc,
    /// `DeltaAggregatedResources`: responses carry changed resources and
    /// the names of removed ones.
    #[serde(rename = "DELTA_GRPC")]
    DeltaGrpc,
}

fn default_ads_backoff_base() -> Duration {
    Duration::from_millis(500)
}
fn default_ads_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// The admin listener (`/` lists its endpoints; docs/observability.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, e.g. `127.0.0.1:9901`, or `{pipe: {path, mode}}`: a
    /// Unix socket (Envoy's `pipe` address).
    pub address: crate::config::admin::AdminAddress,
    /// When set, every admin request but `/ready` needs
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// As `auth_token`, read from this file at each request (rotation
    /// friendly; an unreadable file refuses every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<String>,
}

/// A TCP listener and its filter chains.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `host:port`, e.g. `127.0.0.1:10000`.
    pub address: String,
    /// Listen backlog (`listen(2)`), default 1024.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Maximum concurrent downstream connections; extra connections are
    /// accepted and closed at once, and counted as overflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Envoy's `max_connections_to_accept_per_socket_event`: the accept
    /// loop gives the runtime back its thread after this many connections
    /// accepted in a row (a burst of connects is then spread over the
    /// workers instead of being taken by one); unset or 0: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_to_accept_per_socket_event: Option<u32>,
    /// How long the listener filters may wait for a connection's first
    /// bytes: the PROXY protocol header and the TLS ClientHello when a chain
    /// matches on `server_names` (default 15s, as Envoy).
    #[serde(default = "default_inspect_timeout", with = "humantime_serde")]
    pub listener_filters_timeout: Duration,
    /// Listener filters run on each accepted connection before a filter
    /// chain is chosen (Envoy's `listener_filters`):
    /// `envoy.filters.listener.proxy_protocol` (`crate::proxy_protocol`),
    /// `envoy.filters.listener.original_dst` and
    /// `envoy.filters.listener.http_inspector` (`crate::original_dst`),
    /// `envoy.filters.listener.tls_inspector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listener_filters: Vec<proxy_protocol::ListenerFilterConfig>,
    /// Serve QUIC on UDP at `address` instead of TCP (HTTP/3). The listener
    /// then has one filter chain, whose `tls` is required (TLS 1.3, ALPN
    /// `h3`) and whose terminal filter is `proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicConfig>,
    /// Serve a UDP proxy at `address` instead of TCP (`crate::udp`); the
    /// listener then has no filter chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_proxy: Option<udp_proxy::UdpProxyConfig>,
    #[serde(default)]
    pub filter_chains: Vec<FilterChainConfig>,
    /// Hand each connection to the listener bound (`bind_to_port: false`)
    /// to its original destination, if there is one (Envoy's legacy
    /// `use_original_dst`, Istio's 15001/15006 listeners).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_original_dst: bool,
    /// `false`: no socket; the listener only receives connections handed
    /// over by a `use_original_dst` listener (default true).
    #[serde(default = "default_true", skip_serializing_if = "Clone::clone")]
    pub bind_to_port: bool,
    /// IP_TRANSPARENT on the listening socket (TPROXY capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<bool>,
    /// IP_FREEBIND on the listening socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freebind: Option<bool>,
    /// Raw socket options on the listening socket (`crate::socket_option`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_options: Vec<crate::socket_option::SocketOptionConfig>,
    /// Envoy's `traffic_direction`; `INBOUND` listeners are the ones
    /// `/drain_listeners?inboundonly` stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<traffic_direction::TrafficDirection>,
    /// Envoy's `Listener.access_log`: entries for connections the listener
    /// closes before any network filter has them (`crate::listener_log`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<crate::listener_log::ListenerAccessLog>,
    /// Envoy's `per_connection_buffer_limit_bytes` (default 1 MiB): a soft
    /// bound on the bytes meshgate holds per downstream connection. Over
    /// it meshgate stops reading from the peer (back-pressure): it caps
    /// `tcp_proxy`'s copy buffer for the downstream-to-upstream direction
    /// and, unless `codec_options.http2` sets them, sizes the HTTP/2
    /// stream and connection windows a client may fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection_buffer_limit_bytes: Option<u32>,
}

/// QUIC transport options of a UDP listener (Envoy's `quic_options`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Close a connection idle this long (default 30s).
    #[serde(default = "default_quic_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Bidirectional streams (requests) a client may have open at once
    /// (default 100); QUIC flow control stops a client opening more.
    #[serde(default = "default_quic_streams")]
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before meshgate reads them
    /// (default 1 MiB).
    #[serde(default = "default_quic_stream_window")]
    pub initial_stream_window_size: u32,
    /// Bytes a client may send on the whole connection before meshgate
    /// reads them (default 4 MiB).
    #[serde(default = "default_quic_connection_window")]
    pub initial_connection_window_size: u32,
    /// Ask every client to prove its address with a Retry before any
    /// handshake work (default off: quinn's anti-amplification limit
    /// already bounds what an unvalidated address receives).
    #[serde(default)]
    pub validate_address: bool,
}

fn default_quic_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_quic_streams() -> u32 {
    100
}
fn default_quic_stream_window() -> u32 {
    1 << 20
}
fn default_quic_connection_window() -> u32 {
    4 << 20
}

/// One filter chain: an optional match and an ordered list of network filters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain_match: Option<FilterChainMatch>,
    /// Terminate TLS on this chain (absent: plain TCP, or TLS passed through
    /// to the filters untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTlsConfig>,
    pub filters: Vec<FilterConfig>,
}

/// A certificate chain and its private key: PEM files, or PEM text inline
/// (`*_pem`; xDS SDS secrets arrive this way). Each of the two is given
/// exactly once. Inline keys are redacted in `/config_dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file of the certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_chain: String,
    /// PEM file of the private key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// The certificate chain as PEM text, instead of `certificate_chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain_pem: Option<String>,
    /// The private key as PEM text, instead of `private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

/// TLS versions by name: `"1.2"` or `"1.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

impl CertificateConfig {
    fn resolved(&self, src: &ConfigSource) -> Self {
        Self {
            certificate_chain: resolve_nonempty(src, &self.certificate_chain),
            private_key: resolve_nonempty(src, &self.private_key),
            ..self.clone()
        }
    }
}

/// A file path relative to the config file; empty stays empty (the value
/// is then given inline).
fn resolve_nonempty(src: &ConfigSource, p: &str) -> String {
    if p.is_empty() {
        String::new()
    } else {
        src.resolve_path(p)
    }
}

impl DownstreamTlsConfig {
    /// The same config with its file paths relative to the config file.
    pub fn resolved(&self, src: &ConfigSource) -> Self {
        let mut c = self.clone();
        c.certificates = c.certificates.iter().map(|x| x.resolved(src)).collect();
        if let Some(v) = &mut c.client_validation {
            v.trusted_ca = resolve_nonempty(src, &v.trusted_ca);
        }
        c
    }
}

impl UpstreamTlsConfig {
    /// The same config with its file paths relative to the config file.
    pub fn resolved(&self, src: &ConfigSource) -> Self {
        let mut c = self.clone();
        c.trusted_ca = c.trusted_ca.as_deref().map(|p| src.resolve_path(p));
        c.client_certificate = c.client_certificate.as_ref().map(|x| x.resolved(src));
        c
    }
}

/// Downstream TLS termination (Envoy's DownstreamTlsContext).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsConfig {
    /// Certificates; the one whose names match the SNI is served, else the
    /// first (the default).
    pub certificates: Vec<CertificateConfig>,
    #[serde(default = "default_min_tls")]
    pub min_version: TlsVersion,
    #[serde(default = "default_max_tls")]
    pub max_version: TlsVersion,
    /// IANA names, e.g. `TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, or Envoy's (BoringSSL)
    /// names, e.g. `ECDHE-ECDSA-AES128-GCM-SHA256`, `[A|B]` groups; empty:
    /// rustls' defaults. See `tls_params`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Key exchange groups by Envoy's names (`X25519`, `P-256`, `P-384`),
    /// in preference order; empty: rustls' defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    /// Signature algorithms (`ecdsa_secp256r1_sha256`, `rsa_pss_rsae_sha256`,
    /// ...) this side signs with and accepts from the peer; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signature_algorithms: Vec<String>,
    /// Stateful session resumption (session IDs, server-side cache;
    /// default on). Envoy's `disable_stateful_session_resumption`.
    #[serde(default = "default_true")]
    pub session_cache: bool,
    /// Refuse a handshake whose SNI matches no certificate (default: serve
    /// the first certificate).
    #[serde(default)]
    pub require_sni_match: bool,
    /// ALPN protocols offered, in preference order (default `h2`, `http/1.1`).
    #[serde(default = "default_alpn")]
    pub alpn_protocols: Vec<String>,
    /// Session resumption with stateless tickets (default on).
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// mTLS: verify client certificates against this CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidationConfig>,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often certificate, key and CA files are checked for changes
    /// (`0s`: only on reload).
    #[serde(default = "default_watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
}

/// Client certificate verification of a downstream TLS chain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientValidationConfig {
    /// PEM file of trusted CAs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trusted_ca: String,
    /// The trusted CAs as PEM text, instead of `trusted_ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_pem: Option<String>,
    /// Refuse clients without a certificate (default true); false: verify
    /// one when presented.
    #[serde(default = "default_true")]
    pub required: bool,
    /// A verified client certificate must also have a SAN matching one of
    /// these (Envoy's `match_typed_subject_alt_names`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_subject_alt_names: Vec<crate::tls_san::SanMatcherConfig>,
}

/// Upstream TLS origination (Envoy's UpstreamTlsContext).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI sent; absent: the request's authority (L7), else the endpoint's
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of trusted CAs; absent (and no `trusted_ca_pem`): the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// The trusted CAs as PEM text, instead of `trusted_ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_pem: Option<String>,
    /// Client certificate for mTLS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificateConfig>,
    /// ALPN offered (e.g. `[h2]` for HTTP/2 upstreams); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
    #[serde(default = "default_min_tls")]
    pub min_version: TlsVersion,
    /// As in `DownstreamTlsConfig`: cipher suites offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// As in `DownstreamTlsConfig`: key exchange groups offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    /// As in `DownstreamTlsConfig`: signature algorithms offered and used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signature_algorithms: Vec<String>,
    /// The upstream's certificate must have a SAN matching one of these
    /// (Envoy's `match_typed_subject_alt_names`); they then replace the
    /// host name check against the SNI. Empty: the SNI is checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_subject_alt_names: Vec<crate::tls_san::SanMatcherConfig>,
}

fn default_min_tls() -> TlsVersion {
    TlsVersion::Tls12
}
fn default_max_tls() -> TlsVersion {
    TlsVersion::Tls13
}
fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}
fn default_true() -> bool {
    true
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(5)
}

/// Criteria a connection must meet for its chain to be chosen. The most
/// specific chain wins (Envoy's order: destination port, server name, source).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// SNI names from the TLS ClientHello, exact or `*.suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// Source CIDRs, e.g. `10.0.0.0/8`, `127.0.0.1/32`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<String>,
    /// ALPN protocols offered in the ClientHello; the chain matches when the
    /// client offers any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    /// Destination CIDRs (the original destination under capture).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<String>,
}

/// A network filter by registered name, with its typed config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub name: String,
    #[serde(default)]
    pub config: serde_json::Value,
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryType {
    #[default]
    Static,
    StrictDns,
    /// Envoy's `ORIGINAL_DST`: one host per original destination, created
    /// on demand (`lb_policy: cluster_provided`).
    OriginalDst,
}

/// An upstream cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(default, rename = "type")]
    pub discovery: DiscoveryType,
    /// A registered load balancer: `round_robin` (default), `least_request`,
    /// `random`, `ring_hash`, `maglev`.
    #[serde(default = "default_lb_policy")]
    pub lb_policy: String,
    /// The load balancer's own options (e.g. `minimum_ring_size`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub lb_config: serde_json::Value,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Circuit breaker: maximum concurrent upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Envoy's `circuit_breakers` (`cluster::breaker`). Its DEFAULT
    /// threshold's `max_connections` replaces the field above (setting
    /// both is an error naming `max_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<circuit_breakers::CircuitBreakersConfig>,
    /// Re-resolution interval for `strict_dns`.
    #[serde(default = "default_dns_refresh", with = "humantime_serde")]
    pub dns_refresh_rate: Duration,
    /// Which address families of a `strict_dns` answer become endpoints
    /// (Envoy's `dns_lookup_family`; Envoy's default `AUTO`: IPv6 if the
    /// answer has any, else IPv4).
    #[serde(default, skip_serializing_if = "DnsLookupFamily::is_auto")]
    pub dns_lookup_family: DnsLookupFamily,
    /// Back-off of an endpoint whose connect failed.
    #[serde(default)]
    pub connect_failure_backoff: BackoffConfig,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Upstream protocol for L7 traffic: a registered codec (`http1`
    /// default, `http2`, ...), `downstream` (the request's own), or
    /// `auto` (per endpoint, HTTP/2 or HTTP/1.1 as its TLS handshake
    /// negotiates by ALPN; `tls` then offers `h2,http/1.1` unless it sets
    /// `alpn_protocols`). Unused by `tcp_proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The upstream codec's options (pool limits, timeouts).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub protocol_options: serde_json::Value,
    /// Originate TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Send a PROXY protocol header first on each upstream connection
    /// (`tcp_proxy` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<proxy_protocol::UpstreamProxyProtocolConfig>,
    /// Envoy's `Cluster.common_lb_config` (`healthy_panic_threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_lb_config: Option<priority::CommonLbConfig>,
    /// Envoy's `ClusterLoadAssignment.policy` (`overprovisioning_factor`,
    /// `drop_overloads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<priority::LoadAssignmentPolicy>,
    /// Active health checks (Envoy's `health_checks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<health_check::HealthCheckConfig>,
    /// Outlier detection (`crate::cluster::outlier`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<outlier::OutlierDetectionConfig>,
    /// `type: original_dst`: how the upstream address is found
    /// (`crate::cluster::original_dst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_dst_lb_config: Option<sidecar::OriginalDstLbConfig>,
    /// `type: original_dst`: hosts unused this long are removed (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cleanup_interval: Option<Duration>,
    /// Envoy's `per_connection_buffer_limit_bytes` on a cluster (default
    /// 1 MiB): a soft bound on the bytes meshgate holds per upstream
    /// connection. It caps `tcp_proxy`'s copy buffer for the
    /// upstream-to-downstream direction and, unless `protocol_options`
    /// sets them, sizes the HTTP/2 windows an upstream may fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection_buffer_limit_bytes: Option<u32>,
    /// Envoy's `transport_socket_matches`: an endpoint whose
    /// `envoy.transport_socket_match` metadata (its own, else its
    /// locality's) has every key/value of a `match` gets that entry's
    /// TLS (none: plaintext); the first match wins, else `tls` applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transport_socket_matches: Vec<TransportSocketMatchConfig>,
    /// Envoy's `Cluster.filters`: upstream network filters by registered
    /// name (`crate::upstream_filter`), run on `tcp_proxy`'s upstream
    /// connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// Envoy's `upstream_bind_config` (`upstream_socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_bind_config: Option<upstream_socket::UpstreamBindConfig>,
    /// Envoy's `upstream_connection_options` (`upstream_socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connection_options: Option<upstream_socket::UpstreamConnectionOptions>,
    /// Envoy's cluster `metadata` (`filter_metadata`: namespace -> value),
    /// e.g. the `istio` namespace istiod sets on every cluster. Read by
    /// access logs (`%CLUSTER_METADATA(NAMESPACE:KEY*)%`) and shown in
    /// `/config_dump`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// A stand-in for a cluster that is not there (the xDS client's, for a
    /// cluster CDS removed or never sent while a listener names it): a
    /// route picking it answers its `cluster_not_found_response_code`,
    /// `tcp_proxy` closes a new connection, as Envoy does with a cluster
    /// its cluster manager does not hold. Not settable in a file (a YAML
    /// route naming an unknown cluster sets `validate_clusters: false`);
    /// shown in `/config_dump`.
    #[serde(
        default,
        skip_deserializing,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub not_found: bool,
}

/// One entry of `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocketMatchConfig {
    /// For stats and errors.
    pub name: String,
    /// Key/values the endpoint's `envoy.transport_socket_match` metadata
    /// must all carry; empty matches every endpoint.
    #[serde(default, rename = "match", skip_serializing_if = "BTreeMap::is_empty")]
    pub match_: BTreeMap<String, serde_json::Value>,
    /// TLS to matching endpoints; absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

/// The endpoint metadata key `transport_socket_matches` look at.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Exponential back-off: `base_interval` after the first failure, doubling up
/// to `max_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub base_interval: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base_interval: default_backoff_base(),
            max_interval: default_backoff_max(),
        }
    }
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port` for static clusters, `host:port` for strict_dns.
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The health the control plane (EDS `health_status`) or the operator
    /// gives the endpoint, combined with active checks and outlier
    /// detection (`crate::pool::HealthFlags`).
    #[serde(default, skip_serializing_if = "EndpointHealthStatus::is_unknown")]
    pub health_status: EndpointHealthStatus,
    /// Envoy's `LocalityLbEndpoints.priority`: 0 is the highest; traffic
    /// spills to the next priority as this one's health drops.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Envoy's `Endpoint.health_check_config`: where and with which host
    /// the active health checks of this endpoint go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_config: Option<health_check::EndpointHealthCheckConfig>,
    /// Envoy's `LocalityLbEndpoints.locality`: endpoints of one priority
    /// with the same locality form a locality group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<locality::Locality>,
    /// Envoy's `LocalityLbEndpoints.load_balancing_weight` of the
    /// endpoint's locality (the same on every endpoint of the group; >= 1).
    /// Used with `common_lb_config.locality_weighted_lb_config`; a
    /// locality without a weight then gets no traffic (as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_weight: Option<u32>,
    /// Envoy's `LocalityLbEndpoints.metadata`: a cluster's
    /// `transport_socket_matches` look at its `envoy.transport_socket_match`
    /// when the endpoint's own `metadata` matches none of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locality_metadata: BTreeMap<String, serde_json::Value>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Envoy's `config.core.v3.HealthStatus` of an endpoint: UNHEALTHY,
/// DRAINING and TIMEOUT endpoints get no traffic (while another endpoint
/// can take it), DEGRADED ones only when the healthy ones are short;
/// UNKNOWN and HEALTHY are healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealthStatus {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl EndpointHealthStatus {
    pub fn is_unknown(&self) -> bool {
        *self == Self::Unknown
    }

    /// The `HealthFlags` bits this status sets.
    pub fn flags(self) -> u8 {
        use crate::pool::HealthFlags;
        match self {
            Self::Unknown | Self::Healthy => 0,
            Self::Unhealthy | Self::Draining | Self::Timeout => HealthFlags::FAILED_EDS_HEALTH,
            Self::Degraded => HealthFlags::DEGRADED_EDS_HEALTH,
        }
    }
}

fn default_backlog() -> u32 {
    1024
}
fn default_inspect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_lb_policy() -> String {
    "round_robin".to_string()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_base() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_weight() -> u32 {
    1
}
