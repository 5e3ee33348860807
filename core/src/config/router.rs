//! The router filter's config (Envoy's
//! `envoy.extensions.filters.http.router.v3.Router`): the optional last
//! entry `envoy.filters.http.router` of the `proxy` filter's
//! `stream_filters`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFilterConfig {
    /// No `x-envoy-*` header of the router's (upstream service time,
    /// attempt count) on requests or responses. Default false, as Envoy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppress_envoy_headers: bool,
}
