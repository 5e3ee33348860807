//! Config of the `header_mutation` stream filter (Envoy's
//! `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation` and
//! `HeaderMutationPerRoute`). Query-parameter and trailer mutations and
//! `remove_on_match` are absent, so `deny_unknown_fields` refuses them by
//! name.

use serde::{Deserialize, Serialize};

/// The filter's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutationConfig {
    #[serde(default)]
    pub mutations: MutationsConfig,
    /// Route mutations run after the filter's (so they win) instead of
    /// before (Envoy's default: the filter's win).
    #[serde(default)]
    pub most_specific_header_mutations_wins: bool,
}

/// `HeaderMutationPerRoute` (a virtual host's or route's).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutationPerRoute {
    #[serde(default)]
    pub mutations: MutationsConfig,
}

/// Envoy's `Mutations`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MutationsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mutations: Vec<MutationConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_mutations: Vec<MutationConfig>,
}

/// Envoy's `mutation_rules.v3.HeaderMutation`: exactly one of `remove`,
/// `append`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MutationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<AppendConfig>,
}

/// Envoy's `HeaderValueOption` (`keep_empty_value` and the deprecated
/// `append` are refused).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendConfig {
    pub header: HeaderKeyValue,
    /// `APPEND_IF_EXISTS_OR_ADD` (default), `ADD_IF_ABSENT`,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`, `OVERWRITE_IF_EXISTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_action: Option<String>,
}

/// Envoy's `HeaderValue` (a literal value: `%` formatters are refused).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderKeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}
