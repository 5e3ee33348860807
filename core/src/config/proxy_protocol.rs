//! Config of the PROXY protocol listener filter
//! (`envoy.filters.listener.proxy_protocol`, Envoy's
//! `envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`),
//! shared by the listener and the xDS translation. Field names are Envoy's.

use serde::{Deserialize, Serialize};

/// The listener filter's Envoy name (also the default metadata namespace).
pub const NAME: &str = "envoy.filters.listener.proxy_protocol";

/// A PROXY protocol version (Envoy's `ProxyProtocolConfig.Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Version {
    V1,
    V2,
}

/// How a TLV's bytes become a metadata string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValueStringEncoding {
    /// As Envoy: the bytes as a string; meshgate's metadata is JSON, so
    /// invalid UTF-8 is replaced as with `SANITIZED_UTF8`.
    #[default]
    Unspecified,
    /// Invalid UTF-8 sequences replaced by `!`.
    SanitizedUtf8,
    /// Standard base64 with padding.
    Base64,
}

/// Where a TLV value goes when present.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValuePair {
    /// Dynamic metadata namespace (default
    /// `envoy.filters.listener.proxy_protocol`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata_namespace: String,
    pub key: String,
    #[serde(default)]
    pub value_string_encoding: ValueStringEncoding,
}

/// One TLV rule: a v2 TLV of `tlv_type` is published as dynamic metadata.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub tlv_type: u8,
    pub on_tlv_present: KeyValuePair,
}

/// The listener filter's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Let a connection without a PROXY header through with its real
    /// addresses (the bytes read to tell are handed on untouched).
    #[serde(default)]
    pub allow_requests_without_proxy_protocol: bool,
    /// Versions refused (the connection is closed and counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disallowed_versions: Vec<Version>,
}

/// A listener filter by name with its config (Envoy's `listener_filters`).
/// Known: `envoy.filters.listener.proxy_protocol` (config
/// `ProxyProtocolConfig`) and `envoy.filters.listener.tls_inspector` (no
/// config: meshgate reads the ClientHello whenever a chain matches on
/// server names or ALPN anyway).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFilterConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

/// Envoy's name of the TLS inspector listener filter.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Which downstream TLVs go upstream (Envoy's `ProxyProtocolPassThroughTLVs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassThroughTlvs {
    /// `INCLUDE_ALL` (default) or `INCLUDE` (only `tlv_type`).
    #[serde(default)]
    pub match_type: PassTlvsMatchType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlv_type: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PassTlvsMatchType {
    #[default]
    IncludeAll,
    Include,
}

/// A cluster's upstream PROXY protocol (Envoy's transport socket
/// `envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport`,
/// its `config`): each upstream connection starts with a header carrying
/// the downstream connection's source and destination, before TLS if the
/// cluster has `tls`. Served by `tcp_proxy`; a cluster with it refuses
/// HTTP streams (an HTTP connection would be reused across downstreams).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProxyProtocolConfig {
    /// `V1` (Envoy's default) or `V2`.
    #[serde(default = "default_version")]
    pub version: Version,
    /// TLVs read from the downstream's own PROXY header to send on (v2);
    /// absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_through_tlvs: Option<PassThroughTlvs>,
}

fn default_version() -> Version {
    Version::V1
}
