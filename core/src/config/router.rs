//! The router filter's config (Envoy's
//! `envoy.extensions.filters.http.router.v3.Router`): the optional last
//! entry `envoy.filters.http.router` of the `proxy` filter's
//! `stream_filters`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFilterConfig {
    /// No `x-envoy-*` header of the router's (upstream service time,
    /// attempt count) on requests or responses. Default false, as Envoy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppress_envoy_headers: bool,
    /// Envoy's `upstream_log`: access logs written once per upstream try
    /// (retries are separate entries), with the try's upstream operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_log: Vec<crate::config::access_log::AccessLog>,
    /// Envoy's `upstream_log_options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_log_options: Option<UpstreamLogOptions>,
}

impl RouterFilterConfig {
    /// Nothing set: the router entry can be left out.
    pub fn is_default(&self) -> bool {
        !self.suppress_envoy_headers
            && self.upstream_log.is_empty()
            && self.upstream_log_options.is_none()
    }
}

/// Envoy's `Router.UpstreamAccessLogOptions`. meshgate writes a try's
/// entry when the try ends (its response head, or its failure); an entry
/// when the upstream stream opens (`flush_upstream_log_on_upstream_stream:
/// true`) and periodic entries (`upstream_log_flush_interval`) are
/// refused by name when the `proxy` filter is built.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamLogOptions {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flush_upstream_log_on_upstream_stream: bool,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_log_flush_interval: Option<std::time::Duration>,
}
