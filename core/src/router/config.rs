//! The route configuration model (serde), named after Envoy's
//! `RouteConfiguration` so the xDS translation maps field by field. Unknown
//! fields are errors everywhere; `RouteTable::build` validates the rest.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A route configuration: virtual hosts, each with ordered routes
/// (Envoy's `RouteConfiguration`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub virtual_hosts: Vec<VirtualHostConfig>,
    /// Envoy's `validate_clusters`: whether every cluster a route names
    /// must exist when the table is built (default true). `false` (what
    /// RDS route configurations get by default) builds the table anyway and
    /// answers a route whose cluster is missing with its
    /// `cluster_not_found_response_code` until the cluster arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_clusters: Option<bool>,
    /// Envoy's `ignore_port_in_host_matching`. `true`: the port of the
    /// host (`Host`/`:authority`) is stripped before the virtual host
    /// search, so `a.com:8080` matches the domain `a.com` (and a domain
    /// with a port matches nothing). `false` (what xDS route configurations
    /// get when unset, as in Envoy): the host is matched as sent, port
    /// included. Unset in meshgate YAML: the host as sent, then without
    /// its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_port_in_host_matching: Option<bool>,
}

/// A virtual host: the domains it serves and its routes, tried in order.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    pub name: String,
    /// `api.example.com` (exact), `*.example.com` / `*-api.example.com`
    /// (suffix wildcard), `api.*` (prefix wildcard) or `*` (default).
    /// Case-insensitive. A domain without a port also matches the host with
    /// any port.
    pub domains: Vec<String>,
    pub routes: Vec<RouteEntryConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// Envoy's `typed_per_filter_config`: a stream filter's config for
    /// this virtual host, or `{disabled: true}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_filter_config: BTreeMap<String, serde_json::Value>,
    /// Envoy's `rate_limits`: descriptor actions for rate limit filters,
    /// used by a route without its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::config::local_ratelimit::RateLimitConfig>,
    /// Envoy's virtual-host `retry_policy`: for routes without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyConfig>,
    /// Envoy's virtual-host `hedge_policy`: for routes without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_policy: Option<crate::retry::HedgePolicyConfig>,
    /// Envoy's `include_request_attempt_count`: send
    /// `x-envoy-attempt-count` (1 on the first try) to the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_request_attempt_count: bool,
    /// Envoy's `include_attempt_count_in_response`: tell the client how
    /// many tries its response took in `x-envoy-attempt-count`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_attempt_count_in_response: bool,
    /// Envoy's `metadata.filter_metadata` (namespace -> value): kept with
    /// the virtual host and shown in `/config_dump`; meshgate's own
    /// routing and filters do not read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// A header to add. `append: true` (the default, as in Envoy) adds a value
/// next to existing ones; `false` replaces them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub name: String,
    pub value: String,
    #[serde(default = "default_true")]
    pub append: bool,
}

/// One route: a match and exactly one of `route`, `redirect`,
/// `direct_response` (Envoy's `Route`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: RouteMatchConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteActionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectActionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// Envoy's `typed_per_filter_config`: a stream filter's config for
    /// this route (wins over the virtual host's), or `{disabled: true}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_filter_config: BTreeMap<String, serde_json::Value>,
    /// Envoy's `Route.tracing`: sampling overrides and tags (`crate::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::config::tracing::RouteTracingConfig>,
    /// Envoy's `metadata.filter_metadata` (namespace -> value): kept with
    /// the route and shown in `/config_dump`; meshgate's own routing and
    /// filters do not read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// What a request must look like for a route to apply. Exactly one of
/// `prefix`, `path`, `safe_regex` (a full match of the path without the
/// query); every other condition must hold too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    /// Envoy's `path_separated_prefix`: the path is this prefix, or
    /// starts with it followed by `/` (`/api` matches `/api` and
    /// `/api/v1`, not `/apix`). Must not end with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_separated_prefix: Option<String>,
    /// Applies to `prefix`, `path_separated_prefix` and `path` (ASCII case folding); ignored by
    /// `safe_regex` (use `(?i)`), as in Envoy. Default true.
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcherConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcherConfig>,
    /// Allowed methods (case-sensitive, e.g. `GET`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Only gRPC requests (`content-type: application/grpc*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
}

impl Default for RouteMatchConfig {
    fn default() -> Self {
        Self {
            prefix: None,
            path: None,
            safe_regex: None,
            path_separated_prefix: None,
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            methods: Vec::new(),
            grpc: false,
        }
    }
}

/// A header condition: at most one of `exact_match`, `prefix_match`,
/// `suffix_match`, `safe_regex_match` (full match), `present_match` (none
/// set means `present_match: true`). With several values of the header,
/// any value may match. `invert_match` negates the result (a value matcher
/// on a missing header therefore matches when inverted).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex_match: Option<String>,
    /// `true`: the header is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// A query parameter condition on the first occurrence of `name` (raw,
/// not percent-decoded): at most one of `exact_match`, `safe_regex_match`
/// (full match), `present_match` (none set means `present_match: true`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcherConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex_match: Option<String>,
    /// `true`: the parameter is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

/// Forward to a cluster (Envoy's `RouteAction`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteActionConfig {
    /// Exactly one of `cluster` and `weighted_clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClustersConfig>,
    /// The answer when the picked cluster does not exist (only with
    /// `validate_clusters: false`): SERVICE_UNAVAILABLE (default),
    /// NOT_FOUND or INTERNAL_SERVER_ERROR, as Envoy's enum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_not_found_response_code: Option<super::missing::ClusterNotFoundResponseCode>,
    /// Replaces the matched prefix (needs a `prefix` match); the query is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replaces every match of `pattern` in the path (the query is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewriteConfig>,
    /// Sets the upstream authority / `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    /// Whole-request timeout (until the response head, over all tries).
    /// Default 15s; `0s` disables it.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Stream idle timeout (Envoy's `RouteAction.idle_timeout`): no body
    /// byte either way for this long gives 408, or a reset once the
    /// response started. Unset: the `proxy` filter's `stream_idle_timeout`;
    /// `0s` disables both.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Envoy's `RouteAction.max_stream_duration`: the stream duration
    /// limit of this route's streams (`MaxStreamDurationConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<MaxStreamDurationConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyConfig>,
    /// Envoy's `RouteAction.priority`: which circuit-breaker thresholds of
    /// the cluster the route's requests count against.
    #[serde(default, skip_serializing_if = "is_default_priority")]
    pub priority: crate::config::circuit_breakers::RoutingPriority,
    /// What `ring_hash` / `maglev` clusters hash the request on (Envoy's
    /// `hash_policy`; see `router::hash`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<super::hash::HashPolicyConfig>,
    /// Enables or disables, on this route, an upgrade type the listener's
    /// `proxy` lists (Envoy's `RouteAction.upgrade_configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_configs: Vec<RouteUpgradeConfig>,
    /// Envoy's `RouteAction.rate_limits`: descriptor actions for rate
    /// limit filters (`local_ratelimit` uses them when its own config has
    /// none; else the virtual host's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::config::local_ratelimit::RateLimitConfig>,
    /// meshgate's service degradation fallback (no Envoy field): used when
    /// the cluster has no healthy endpoint or overflows
    /// (`super::fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<super::fallback::FallbackConfig>,
    /// Envoy's `request_mirror_policies`: shadow copies of the request
    /// (`router::mirror`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<super::mirror::RequestMirrorPolicyConfig>,
    /// Envoy's `hedge_policy` (wins over the virtual host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_policy: Option<crate::retry::HedgePolicyConfig>,
    /// meshgate's HTTP/JSON to Dubbo / Bolt translation (no Envoy field):
    /// the request becomes an RPC call to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_to_rpc: Option<crate::config::http_to_rpc::HttpToRpcConfig>,
}

/// One route-level upgrade setting (Envoy's `RouteAction.UpgradeConfig`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgradeConfig {
    /// The `Upgrade` token, case-insensitive (e.g. `websocket`).
    pub upgrade_type: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for RouteActionConfig {
    fn default() -> Self {
        Self {
            cluster: None,
            weighted_clusters: None,
            cluster_not_found_response_code: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite_literal: None,
            timeout: default_route_timeout(),
            idle_timeout: None,
            max_stream_duration: None,
            retry_policy: None,
            priority: Default::default(),
            hash_policy: Vec::new(),
            upgrade_configs: Vec::new(),
            rate_limits: Vec::new(),
            fallback: None,
            request_mirror_policies: Vec::new(),
            hedge_policy: None,
            http_to_rpc: None,
        }
    }
}

/// Clusters chosen at random in proportion to their weights.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClustersConfig {
    pub clusters: Vec<ClusterWeightConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeightConfig {
    pub name: String,
    /// Must be >= 1.
    pub weight: u32,
    /// Envoy's `typed_per_filter_config` on a weighted cluster: wins over
    /// the route's and the virtual host's when this cluster is picked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_filter_config: BTreeMap<String, serde_json::Value>,
}

/// Envoy's `RouteAction.MaxStreamDuration`. Without a usable
/// `grpc-timeout`: `max_stream_duration` if set (`0s`: no limit on this
/// route, the listener's included), else the listener's
/// `common_http_protocol_options.max_stream_duration`. With
/// `grpc_timeout_header_max` set and a request carrying `grpc-timeout`:
/// the header's value, capped by `grpc_timeout_header_max` (`0s`: no
/// cap), minus `grpc_timeout_header_offset` (down to 0: ended at once);
/// the `grpc-timeout` sent upstream then says the result. As in Envoy, a
/// route with `max_stream_duration` has no route `timeout` (the default
/// is dropped; another value set with it is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaxStreamDurationConfig {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_stream_duration: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_header_max: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_header_offset: Option<Duration>,
}

/// A path rewrite by regex. `substitution` uses Envoy's (RE2) syntax:
/// `\1`..`\9` for capture groups, `\\` for a backslash.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    pub pattern: String,
    pub substitution: String,
}

/// Retries (Envoy's `RetryPolicy`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// Comma list of `5xx`, `gateway-error`, `connect-failure`, `reset`,
    /// `retriable-status-codes`.
    pub retry_on: String,
    /// Default 1.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default)]
    pub retry_back_off: RetryBackOffConfig,
    /// A request whose body is larger (or of unknown length) is not
    /// retried. Default 65536.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_body_bytes: usize,
    /// With `retry_on: retriable-headers`: a response matching one is retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_headers: Vec<HeaderMatcherConfig>,
    /// When set, only a request matching one of them is retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_request_headers: Vec<HeaderMatcherConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_retry_back_off: Option<crate::retry::RateLimitedRetryBackOffConfig>,
    /// Only `envoy.retry_host_predicates.previous_hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_host_predicate: Vec<crate::retry::RetryHostPredicateConfig>,
    /// Accepted (>= 1): meshgate's host predicate excludes previous hosts
    /// in the load balancer's pick itself, so one selection always
    /// suffices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_retry_max_attempts: Option<i64>,
    /// Envoy's `per_try_idle_timeout`: a try that receives no response
    /// byte for this long is reset (and retried per the policy).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_idle_timeout: Option<Duration>,
    /// Only `envoy.retry_priorities.previous_priorities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_priority: Option<crate::retry::RetryPriorityConfig>,
}

impl Default for RetryPolicyConfig {
    fn default() -> Self {
        Self {
            retry_on: String::new(),
            num_retries: default_num_retries(),
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            retry_back_off: RetryBackOffConfig::default(),
            max_buffered_body_bytes: default_max_buffered(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            rate_limited_retry_back_off: None,
            retry_host_predicate: Vec::new(),
            host_selection_retry_max_attempts: None,
            per_try_idle_timeout: None,
            retry_priority: None,
        }
    }
}

/// Jittered exponential back-off between tries: `base_interval` (default
/// 25ms) up to `max_interval` (default 10 x base).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOffConfig {
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub base_interval: Duration,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_interval: Option<Duration>,
}

impl Default for RetryBackOffConfig {
    fn default() -> Self {
        Self {
            base_interval: default_retry_base(),
            max_interval: None,
        }
    }
}

/// Answer with a redirect (Envoy's `RedirectAction`). Unset parts of the
/// `Location` come from the request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectActionConfig {
    /// Shorthand for `scheme_redirect: https`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    /// Replaces the path; a `?query` in it replaces the request's query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    /// Replaces the matched prefix (needs a `prefix` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Rewrites the request's path (without its query, which is kept
    /// unless `strip_query`) with every match of `pattern` replaced, as
    /// the route's `regex_rewrite`. At most one of `path_redirect`,
    /// `prefix_rewrite`, `regex_rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewriteConfig>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub response_code: u16,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

impl Default for RedirectActionConfig {
    fn default() -> Self {
        Self {
            https_redirect: false,
            scheme_redirect: None,
            host_redirect: None,
            port_redirect: None,
            path_redirect: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            response_code: default_redirect_code(),
            strip_query: false,
        }
    }
}

/// Answer directly (Envoy's `DirectResponseAction`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    /// 200..=599 (as in Envoy: a final response).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn is_default_priority(p: &crate::config::circuit_breakers::RoutingPriority) -> bool {
    *p == Default::default()
}

fn default_true() -> bool {
    true
}
fn default_route_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_num_retries() -> u32 {
    1
}
fn default_retry_base() -> Duration {
    Duration::from_millis(25)
}
fn default_max_buffered() -> usize {
    64 * 1024
}
fn default_redirect_code() -> u16 {
    301
}
