//! Config of the `ext_authz` stream filter (Envoy's
//! `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz` and
//! `ExtAuthzPerRoute`), the contract between the filter and the xDS
//! translator. Field names are Envoy's; fields meshgate does not support
//! are unknown fields (refused, never ignored).

use super::filters::StringMatcherConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `ext_authz` filter: exactly one of `grpc_service`, `http_service`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// `envoy.service.auth.v3.Authorization/Check` through a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<GrpcServiceConfig>,
    /// A plain HTTP authorization server through a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_service: Option<HttpServiceConfig>,
    /// Only `V3` (the default) is spoken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_api_version: Option<String>,
    /// Let the request through when the authorization server fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`, mark such a request with
    /// `x-envoy-auth-failure-mode-allowed: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure_mode_allow_header_add: bool,
    /// The status sent when the server fails (default 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<HttpStatusConfig>,
    /// Buffer the request body and send it to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_request_body: Option<BufferSettingsConfig>,
    /// Recompute the route when the server changed the request's headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_route_cache: bool,
    /// Send the mTLS peer's certificate (URL-encoded PEM) in the check
    /// request's `source.certificate` (gRPC mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_peer_certificate: bool,
}

/// Envoy's `config.core.v3.GrpcService` (only `envoy_grpc`: meshgate talks
/// to the server through one of its clusters).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServiceConfig {
    pub envoy_grpc: EnvoyGrpcConfig,
    /// The whole check's deadline (default 200 ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// Envoy's `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpcConfig {
    pub cluster_name: String,
    /// `:authority` of the calls (default the cluster name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
}

/// Envoy's `config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Envoy's `type.v3.HttpStatus` (the numeric code).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusConfig {
    pub code: u16,
}

/// Envoy's `ext_authz.v3.BufferSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSettingsConfig {
    /// The most body bytes buffered (413 past it unless partial).
    pub max_request_bytes: u32,
    /// Send the first `max_request_bytes` and let the request go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_partial_message: bool,
    /// Send the body as bytes (`raw_body`) rather than a UTF-8 string.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pack_as_bytes: bool,
}

/// Envoy's `ext_authz.v3.HttpService`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServiceConfig {
    pub server_uri: HttpUriConfig,
    /// Put in front of the request's path in the authorization request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_request: Option<AuthorizationRequestConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response: Option<AuthorizationResponseConfig>,
}

/// Envoy's `config.core.v3.HttpUri`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUriConfig {
    /// The server's URI (its authority is sent as `host`).
    pub uri: String,
    pub cluster: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Envoy's `ext_authz.v3.AuthorizationRequest`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequestConfig {
    /// Request headers sent besides `host`, `:method`, `:path`,
    /// `content-length` and `authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<ListStringMatcherConfig>,
    /// Headers added to the authorization request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_add: Vec<HeaderValueConfig>,
}

/// Envoy's `ext_authz.v3.AuthorizationResponse`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationResponseConfig {
    /// Server headers set on the upstream request when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_upstream_headers: Option<ListStringMatcherConfig>,
    /// Server headers appended to the upstream request when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_upstream_headers_to_append: Option<ListStringMatcherConfig>,
    /// Server headers passed to the client when denied (unset: all but
    /// `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_headers: Option<ListStringMatcherConfig>,
}

/// Envoy's `type.matcher.v3.ListStringMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListStringMatcherConfig {
    pub patterns: Vec<StringMatcherConfig>,
}

/// Envoy's `ExtAuthzPerRoute` (`disabled: true|false` alone is handled by
/// the filter chain as the on/off switch).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzPerRouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_settings: Option<CheckSettingsConfig>,
}

/// Envoy's `ext_authz.v3.CheckSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettingsConfig {
    /// Sent in the check request's `context_extensions`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_extensions: BTreeMap<String, String>,
    /// Do not buffer the body on this route.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_request_body_buffering: bool,
}
