//! Typed configs of the `basic_auth`, `api_key_auth` and `csrf` stream
//! filters (Envoy's `envoy.extensions.filters.http.basic_auth.v3`,
//! `api_key_auth.v3` and `csrf.v3`, same field names): the contract
//! between the filters and the xDS translation.

use super::filters::{RuntimeFractionalPercent, StringMatcherConfig};
use serde::{Deserialize, Serialize};

/// Envoy's `config.core.v3.DataSource`, as far as a file-based proxy
/// needs it: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
    /// Base64, as Envoy's JSON form of `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_variable: Option<String>,
}

/// `basic_auth`'s filter config (Envoy's `BasicAuth`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// htpasswd lines `user:{SHA}base64` or `user:$2y$...` (bcrypt).
    pub users: DataSourceConfig,
    /// The authenticated user name is sent upstream in this header.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forward_username_header: String,
    /// Read the credentials from this header instead of `authorization`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authentication_header: String,
    /// A request without credentials goes on (invalid ones are refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_missing: bool,
    /// Publish `username` in the dynamic metadata namespace
    /// `envoy.filters.http.basic_auth`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_dynamic_metadata: bool,
}

/// `basic_auth`'s per-route config (Envoy's `BasicAuthPerRoute`): the
/// route's users replace the filter's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthPerRouteConfig {
    pub users: DataSourceConfig,
}

/// One API key and the client it names (Envoy's `Credential`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCredential {
    pub key: String,
    pub client: String,
}

/// Where to look for the key (Envoy's `KeySource`): exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySource {
    /// A header; `Bearer <key>` in `authorization` is read as `<key>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cookie: String,
}

/// Envoy's `Forwarding`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyForwarding {
    /// The client id is sent upstream in this header.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    /// Remove the key from the request before it goes upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_credentials: bool,
}

/// `api_key_auth`'s filter config (Envoy's `ApiKeyAuth`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<ApiKeyCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_sources: Vec<ApiKeySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<ApiKeyForwarding>,
}

/// `api_key_auth`'s per-route config (Envoy's `ApiKeyAuthPerRoute`): a
/// non-empty list replaces the filter's; `allowed_clients` (when not
/// empty) are the only clients let through here (403 for others).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuthPerRouteConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<ApiKeyCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_sources: Vec<ApiKeySource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_clients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<ApiKeyForwarding>,
}

/// `csrf`'s config, in the chain and per route (Envoy's `CsrfPolicy`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfPolicyConfig {
    /// The share of requests the origin check is enforced on.
    pub filter_enabled: RuntimeFractionalPercent,
    /// The share of requests checked and counted but never refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_enabled: Option<RuntimeFractionalPercent>,
    /// Origins allowed besides the request's own host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_origins: Vec<StringMatcherConfig>,
}
