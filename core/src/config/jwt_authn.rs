//! The typed config of the `jwt_authn` stream filter (Envoy's
//! `envoy.extensions.filters.http.jwt_authn.v3`): the contract between the
//! filter (`meshgate_filters::jwt_authn`) and the xDS translation. Field
//! names and meanings are Envoy's; what meshgate does not implement is not
//! here, so a config that asks for it is refused by name.

use crate::router::RouteMatchConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Envoy's `JwtAuthentication`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthenticationConfig {
    /// Providers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, JwtProviderConfig>,
    /// The first rule whose `match` holds gives the request's requirement;
    /// no rule: no JWT needed (unless the route names a requirement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RequirementRuleConfig>,
    /// Named requirements, for rules' and routes' `requirement_name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requirement_map: BTreeMap<String, JwtRequirementConfig>,
    /// CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) pass without a JWT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass_cors_preflight: bool,
}

/// Envoy's `JwtProvider`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    /// The `iss` a token must carry (empty: any).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// One of these must be in the token's `aud` (empty: any); a mismatch
    /// is 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Exactly one of `local_jwks`, `remote_jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<DataSourceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Keep the token in the request sent upstream (default: removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
    /// Where tokens are looked for. None of `from_headers`, `from_params`,
    /// `from_cookies` set: `Authorization: Bearer <token>` and the
    /// `access_token` query parameter, as Envoy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeaderConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// The verified payload (base64url of its JSON) sent upstream in this
    /// header.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forward_payload_header: String,
    /// The payload (JSON claims) is published in the stream's dynamic
    /// metadata, namespace `envoy.filters.http.jwt_authn`, under this key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_in_metadata: String,
    /// Claims copied into request headers (`claim_name` may be nested:
    /// `a.b.c`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<JwtClaimToHeaderConfig>,
    /// Allowed clock difference for `exp` and `nbf` (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<u32>,
    /// A token without `exp` is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_expiration: bool,
    /// The verified-token cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_cache_config: Option<JwtCacheConfig>,
}

/// Envoy's `DataSource` (the JWKS JSON).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Envoy's `RemoteJwks`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    pub http_uri: HttpUriConfig,
    /// How long fetched keys are used before they are refetched (default
    /// 10 minutes).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_duration: Option<Duration>,
    /// Fetch when the config is applied (and on expiry), not on the first
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_fetch: Option<JwksAsyncFetchConfig>,
    /// Retries of a failed fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<JwksRetryPolicyConfig>,
}

/// Envoy's `HttpUri`: `uri` is the request sent to `cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUriConfig {
    pub uri: String,
    pub cluster: String,
    /// Default 1s (Envoy requires one; meshgate gives a default).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// Envoy's `JwksAsyncFetch`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksAsyncFetchConfig {
    /// Accepted for Envoy compatibility: meshgate's listener never waits
    /// for the fetch (streams that need the keys before the first fetch
    /// ends wait on that same fetch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_listener: bool,
    /// After a failed fetch, the next one is not tried sooner (default 1s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_refetch_duration: Option<Duration>,
}

/// Envoy's `RetryPolicy`, the part meshgate applies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksRetryPolicyConfig {
    /// Default 1 (Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
}

/// Envoy's `JwtHeader`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeaderConfig {
    pub name: String,
    /// The value starts with this (e.g. `Bearer `), the token follows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value_prefix: String,
}

/// Envoy's `JwtClaimToHeader`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtClaimToHeaderConfig {
    pub header_name: String,
    pub claim_name: String,
}

/// Envoy's `JwtCacheConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCacheConfig {
    /// Verified tokens kept (default 100, as Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_cache_size: Option<u32>,
}

/// Envoy's `JwtRequirement`: exactly one field set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirementConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_and_audiences: Option<ProviderWithAudiencesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_any: Option<JwtRequirementListConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_all: Option<JwtRequirementListConfig>,
    /// A missing token passes; a present one must verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_missing: Option<EmptyConfig>,
    /// Always passes; a token that verifies still has its effects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_missing_or_failed: Option<EmptyConfig>,
}

/// Envoy's `ProviderWithAudiences`: the provider, with these audiences
/// instead of its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderWithAudiencesConfig {
    pub provider_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Envoy's `JwtRequirementOrList` / `JwtRequirementAndList`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirementListConfig {
    pub requirements: Vec<JwtRequirementConfig>,
}

/// `{}` (`google.protobuf.Empty`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyConfig {}

/// Envoy's `RequirementRule`: at most one of `requires`,
/// `requirement_name`; neither means no JWT is needed on a match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementRuleConfig {
    #[serde(rename = "match")]
    pub match_: RouteMatchConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<JwtRequirementConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirement_name: Option<String>,
}

impl PartialEq for RequirementRuleConfig {
    fn eq(&self, other: &Self) -> bool {
        // `RouteMatchConfig` has no `PartialEq`; compare its serialized form.
        self.requires == other.requires
            && self.requirement_name == other.requirement_name
            && serde_json::to_value(&self.match_).ok() == serde_json::to_value(&other.match_).ok()
    }
}

/// Envoy's `PerRouteConfig` other than `disabled: true` (the chain's
/// generic switch): the requirement this route needs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPerRouteConfig {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirement_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let v = serde_json::json!({
            "providers": {"a": {
                "issuer": "https://issuer", "audiences": ["api"],
                "remote_jwks": {"http_uri": {"uri": "http://jwks/keys", "cluster": "jwks", "timeout": "2s"},
                    "cache_duration": "5m", "async_fetch": {"fast_listener": true}},
                "from_headers": [{"name": "x-jwt", "value_prefix": "Bearer "}],
                "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}],
                "payload_in_metadata": "payload"
            }},
            "rules": [{"match": {"prefix": "/api"}, "requires": {"provider_name": "a"}}],
            "requirement_map": {"r": {"requires_any": {"requirements": [
                {"provider_name": "a"}, {"allow_missing": {}}]}}}
        });
        let c: JwtAuthenticationConfig = crate::config::parse_typed(&v).unwrap();
        let back: JwtAuthenticationConfig =
            crate::config::parse_typed(&serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(c, back);
        let e = crate::config::parse_typed::<JwtAuthenticationConfig>(
            &serde_json::json!({"providers": {"a": {"jwks_uri": "x"}}}),
        )
        .unwrap_err();
        assert!(e.message.contains("jwks_uri"), "{e:?}");
    }
}
