//! The typed configs of the network filters meshgate ships (`proxy`,
//! `tcp_proxy`): the contract between the file loader and the xDS
//! translation. The filters parse their `config` into these structs
//! (`parse_typed`); xDS builds the same structs and serializes them into a
//! `FilterConfig`, so a field one side has and the other does not is a
//! compile error, not a config refused at run time. Serializing and
//! parsing back gives the same struct (tested below). Codec options stay
//! free-form here: each codec owns and checks its own.

use crate::router::RouteConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `proxy` filter's config (Envoy's HTTP connection manager).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `auto` (default: detect among registered codecs) or a codec name.
    #[serde(default = "default_codec")]
    pub codec: String,
    /// Options per codec name, e.g. `{http1: {max_request_headers_bytes: 8192}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub codec_options: BTreeMap<String, serde_json::Value>,
    /// The route table (inline, or the RDS RouteConfiguration xDS put
    /// here): the filter subscribes to it (`router::subscription`).
    pub route_config: RouteConfig,
    /// Stream filters in order; the router runs after them
    /// (`crate::filter_chain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_filters: Vec<StreamFilterConfig>,
    /// Add `x-request-id` when a request has none (default true).
    #[serde(default = "default_true")]
    pub generate_request_id: bool,
    /// Requests whose body is larger get 413 (declared, or counted as it
    /// streams; reset once the response started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Envoy HCM's `stream_idle_timeout`: a stream with no body byte in
    /// either direction for this long gets 408 (reset once the response
    /// started). A route's `idle_timeout` overrides it; `0s` disables.
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// How long to wait for enough bytes to detect the protocol.
    #[serde(default = "default_detect_timeout", with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Envoy's `access_log` list (crate::config::access_log), or
    /// meshgate's `{path: FILE}` shorthand (one JSON line per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<crate::config::access_log::AccessLogs>,
    /// Advertise an HTTP/3 listener on responses of TCP connections
    /// (`alt-svc: h3=":PORT"; ma=SECONDS`), so clients switch to QUIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_http3: Option<AdvertiseHttp3>,
    // Envoy HCM edge options, applied by the filter's `edge` module.
    /// RFC 3986 path normalisation before routing (Envoy's default: off).
    #[serde(default)]
    pub normalize_path: bool,
    /// `//` merged into `/` before routing.
    #[serde(default)]
    pub merge_slashes: bool,
    /// What to do with `%2F` and `%5C` in paths.
    #[serde(default)]
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    /// The peer is the client (appended to `x-forwarded-for`); `false`
    /// takes the client from `x-forwarded-for` and leaves it as it is.
    #[serde(default = "default_true")]
    pub use_remote_address: bool,
    /// Trusted proxies in front of meshgate, counted from the right of
    /// `x-forwarded-for`.
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    #[serde(default)]
    pub server_header_transformation: ServerHeaderTransformation,
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Upgrade types that may be tunnelled (default: websocket).
    #[serde(default = "default_upgrade_configs")]
    pub upgrade_configs: Vec<UpgradeConfig>,
    /// Envoy's HCM `common_http_protocol_options` (`idle_timeout`).
    #[serde(default)]
    pub common_http_protocol_options: CommonHttpProtocolOptions,
    /// Envoy HCM's `local_reply_config`: rewrites meshgate's own answers
    /// (filters/src/local_reply.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_reply_config: Option<super::local_reply::LocalReplyConfig>,
    /// Envoy HCM's `scheme_header_transformation`: the request's scheme
    /// (`:scheme` on HTTP/2 and HTTP/3 upstreams) overwritten with a fixed
    /// value, or matched to the upstream connection (`https` over TLS).
    #[serde(
        default,
        skip_serializing_if = "SchemeHeaderTransformation::is_default"
    )]
    pub scheme_header_transformation: SchemeHeaderTransformation,
    /// Envoy HCM's `tracing`: distributed tracing (`crate::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::tracing::TracingConfig>,
    /// Envoy HCM's `strip_any_host_port`: the port of `Host` /
    /// `:authority` is removed before the stream filters, routing and
    /// forwarding (never on `CONNECT`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_any_host_port: bool,
    /// Envoy HCM's `strip_matching_host_port`: the same, only when the
    /// port is the listener's own (the local port of the connection).
    /// At most one of the two.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_matching_host_port: bool,
    /// Envoy HCM's `drain_timeout`: how long a connection winding down for
    /// `common_http_protocol_options.max_connection_duration` may keep
    /// its streams in flight before it is closed anyway. Envoy's default:
    /// 5 s.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Envoy's `forward_client_cert_details`: what becomes of the
    /// `x-forwarded-client-cert` header. meshgate's YAML default is
    /// `sanitize_set` (the verified mTLS client's identity replaces any
    /// client-sent value); translated from xDS, Envoy's default `sanitize`.
    #[serde(default = "default_forward_client_cert")]
    pub forward_client_cert_details: ForwardClientCertDetails,
    /// Envoy's `set_current_client_cert_details`: the fields of the
    /// client certificate an `append_forward` or `sanitize_set` header
    /// carries besides `Hash`. YAML default: subject, URI and DNS SANs.
    #[serde(default = "default_client_cert_details")]
    pub set_current_client_cert_details: ClientCertDetails,
    /// Envoy HCM's `via`: appended to the `via` header of every request
    /// sent upstream and of every response (forwarded or meshgate's own).
    /// Empty (the default): none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    /// Envoy HCM's `skip_xff_append`: the peer is not appended to
    /// `x-forwarded-for`; the trusted client address is found as
    /// `use_remote_address` and `xff_num_trusted_hops` say all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_xff_append: bool,
    /// Envoy HCM's `strip_trailing_host_dot`: `example.com.` (with or
    /// without a port) is routed and forwarded as `example.com`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_trailing_host_dot: bool,
    /// Envoy HCM's `preserve_external_request_id`. By default an external
    /// request (`use_remote_address` and a client that is not internal)
    /// gets a new `x-request-id`, whatever it sent: an outside client
    /// neither chooses the id the mesh logs it under nor, through the id,
    /// the tracing decision. `true` keeps the client's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_external_request_id: bool,
    /// Envoy HCM's `always_set_request_id_in_response`: the request's
    /// `x-request-id` is copied into the response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub always_set_request_id_in_response: bool,
    /// Envoy HCM's `request_id_extension` (the UUID extension, its only
    /// kind): how the tracing decision travels in `x-request-id`.
    #[serde(default, skip_serializing_if = "RequestIdExtension::is_default")]
    pub request_id_extension: RequestIdExtension,
    /// Envoy HCM's `request_timeout`: how long the whole request may take
    /// to arrive, from its first byte. Disarmed once the request is whole
    /// or the response has started; at expiry the stream is answered 408.
    /// `0s` (the default): none.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub request_timeout: Duration,
}

/// Envoy's `envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdExtension {
    /// The tracing decision is written into the UUID's version digit
    /// (position 14: `9` sampled, `a` forced, `b` client, `4` not traced)
    /// and read back from an incoming one, so hops that keep the id keep
    /// the decision (default true).
    #[serde(default = "default_true")]
    pub pack_trace_reason: bool,
    /// Random sampling draws from the request id (its first 8 hex digits,
    /// as Envoy), so every hop decides alike; `false`: a fresh draw per
    /// hop (default true).
    #[serde(default = "default_true")]
    pub use_request_id_for_trace_sampling: bool,
}

impl Default for RequestIdExtension {
    fn default() -> Self {
        Self {
            pack_trace_reason: true,
            use_request_id_for_trace_sampling: true,
        }
    }
}

impl RequestIdExtension {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Envoy's `HttpConnectionManager.ForwardClientCertDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCertDetails {
    /// The header is removed.
    Sanitize,
    /// Forwarded as received when the client presented a verified
    /// certificate (mTLS), else removed.
    ForwardOnly,
    /// mTLS: the client's details appended to the received value; else
    /// removed.
    AppendForward,
    /// mTLS: replaced by the client's details; else removed.
    SanitizeSet,
    /// Forwarded as received, mTLS or not.
    AlwaysForwardOnly,
}

fn default_forward_client_cert() -> ForwardClientCertDetails {
    ForwardClientCertDetails::SanitizeSet
}

/// Envoy's `SetCurrentClientCertDetails` (`chain` is not supported: the
/// connection keeps the client's leaf certificate only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertDetails {
    #[serde(default)]
    pub subject: bool,
    /// The certificate, URL-encoded PEM.
    #[serde(default)]
    pub cert: bool,
    #[serde(default)]
    pub dns: bool,
    #[serde(default)]
    pub uri: bool,
}

fn default_client_cert_details() -> ClientCertDetails {
    ClientCertDetails {
        subject: true,
        cert: false,
        dns: true,
        uri: true,
    }
}

/// Envoy's `SchemeHeaderTransformation`: at most one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemeHeaderTransformation {
    /// `http` or `https`: every request's scheme becomes this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_to_overwrite: Option<String>,
    /// The scheme sent upstream says how the upstream connection is
    /// secured: `https` over TLS, else `http`.
    #[serde(default)]
    pub match_upstream: bool,
}

impl SchemeHeaderTransformation {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl ProxyConfig {
    /// The config with every field at its YAML default, routing by
    /// `route_config`.
    pub fn new(route_config: RouteConfig) -> Self {
        Self {
            codec: default_codec(),
            codec_options: BTreeMap::new(),
            route_config,
            stream_filters: Vec::new(),
            generate_request_id: true,
            max_request_body_bytes: None,
            stream_idle_timeout: default_stream_idle_timeout(),
            detect_timeout: default_detect_timeout(),
            access_log: None,
            advertise_http3: None,
            normalize_path: false,
            merge_slashes: false,
            path_with_escaped_slashes_action: EscapedSlashesAction::default(),
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            server_header_transformation: ServerHeaderTransformation::default(),
            server_name: default_server_name(),
            upgrade_configs: default_upgrade_configs(),
            common_http_protocol_options: CommonHttpProtocolOptions::default(),
            local_reply_config: None,
            scheme_header_transformation: SchemeHeaderTransformation::default(),
            tracing: None,
            strip_any_host_port: false,
            strip_matching_host_port: false,
            drain_timeout: default_drain_timeout(),
            forward_client_cert_details: default_forward_client_cert(),
            set_current_client_cert_details: default_client_cert_details(),
            via: String::new(),
            skip_xff_append: false,
            strip_trailing_host_dot: false,
            preserve_external_request_id: false,
            always_set_request_id_in_response: false,
            request_id_extension: RequestIdExtension::default(),
            request_timeout: Duration::ZERO,
        }
    }
}

/// One entry of the `proxy` filter's `stream_filters` (Envoy's HCM
/// `HttpFilter`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFilterConfig {
    /// A registered stream filter's name, e.g. `cors`.
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// Off unless a virtual host or route configures it in its
    /// `per_filter_config` (Envoy's `HttpFilter.disabled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// The `cors` stream filter's per-route policy (Envoy's
/// `envoy.extensions.filters.http.cors.v3.CorsPolicy`, and the older
/// route / virtual host `cors` field), given in a virtual host's or route's
/// `per_filter_config: {cors: ...}`. Lists are comma-separated strings, as
/// in Envoy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicyConfig {
    /// Origins allowed: any of these matchers on the `Origin` value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin_string_match: Vec<StringMatcherConfig>,
    /// `access-control-allow-methods` of a preflight answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    /// `access-control-allow-headers` of a preflight answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    /// `access-control-expose-headers` of an actual response.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    /// `access-control-max-age` (seconds) of a preflight answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub max_age: String,
    /// `access-control-allow-credentials: true` on both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// The share of requests the policy applies to (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    /// A preflight whose origin is not allowed goes to the upstream
    /// (Envoy's default, true) or is answered without CORS headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_not_matching_preflights: Option<bool>,
}

/// Envoy's `type.matcher.v3.StringMatcher`: exactly one of `exact`,
/// `prefix`, `suffix`, `contains`, `safe_regex` (a full match).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcherConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcherConfig>,
    /// Case-insensitive `exact`/`prefix`/`suffix`/`contains`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

/// Envoy's `RegexMatcher` (RE2 syntax; meshgate's `regex` crate).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcherConfig {
    pub regex: String,
}

/// Envoy's `RuntimeFractionalPercent` (only its `default_value`; meshgate
/// has no runtime layer, so `runtime_key` is refused).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionalPercent {
    pub default_value: FractionalPercent,
}

/// Envoy's `FractionalPercent`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    #[serde(default)]
    pub numerator: u32,
    /// `HUNDRED` (default), `TEN_THOUSAND` or `MILLION`.
    #[serde(default)]
    pub denominator: Denominator,
}

/// `FractionalPercent.denominator`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Denominator {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

impl FractionalPercent {
    /// The share as parts per million (capped at all).
    pub fn per_million(&self) -> u32 {
        let scale = match self.denominator {
            Denominator::Hundred => 10_000,
            Denominator::TenThousand => 100,
            Denominator::Million => 1,
        };
        self.numerator.saturating_mul(scale).min(1_000_000)
    }
}

/// `advertise_http3` of the `proxy` filter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseHttp3 {
    /// The UDP port of the HTTP/3 listener.
    pub port: u16,
    /// How long clients may remember it (default 24h).
    #[serde(default = "default_alt_svc_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

/// `access_log: {path}` of the `proxy` filter (the shorthand).
pub type AccessLogConfig = crate::config::access_log::AccessLogPath;

/// Envoy's `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashesAction {
    /// Envoy's default, which is KEEP_UNCHANGED.
    ImplementationSpecificDefault,
    #[default]
    KeepUnchanged,
    RejectRequest,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// Envoy's `server_header_transformation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerHeaderTransformation {
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// One listener-level upgrade type (Envoy's HCM `UpgradeConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// Envoy's `HttpProtocolOptions` on the HTTP connection manager, as far as
/// meshgate applies them: the settings of every downstream HTTP codec.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    /// A connection with no active stream for this long is closed
    /// (HTTP/2: GOAWAY, then close); `0s` disables it. Envoy's default:
    /// one hour. HTTP/1.1 keep-alive connections are bounded by
    /// `request_headers_timeout` already.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// What a request header whose name has an underscore gets: `ALLOW`
    /// (default), `REJECT_REQUEST` (400) or `DROP_HEADER`. Such names are
    /// the usual way to smuggle a header past a proxy that normalises `-`
    /// and `_` alike (CGI-style backends).
    #[serde(
        default,
        skip_serializing_if = "HeadersWithUnderscoresAction::is_allow"
    )]
    pub headers_with_underscores_action: HeadersWithUnderscoresAction,
    /// Envoy's `max_stream_duration`: a stream older than this (from its
    /// request head) is ended: answered 408, or 504 once the request was
    /// whole (gRPC: `DEADLINE_EXCEEDED`), or reset once the response
    /// started; counted in `meshgate_downstream_rq_max_duration_reached_total`.
    /// A route's `max_stream_duration` overrides it. Unset or `0s`: none.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_stream_duration: Option<Duration>,
    /// Envoy's `max_connection_duration`: a downstream connection older
    /// than this (from its start) winds down as in a drain: HTTP/1.1 says
    /// `connection: close` on its next response and an idle one is
    /// closed, HTTP/2 and HTTP/3 send GOAWAY and finish their streams,
    /// for at most the HCM's `drain_timeout`; counted in
    /// `meshgate_http_downstream_cx_max_duration_reached_total`. Unset
    /// or `0s`: none.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connection_duration: Option<Duration>,
    /// Envoy's `max_headers_count`: a request with more header fields
    /// (the authority counting as one, `Host` or `:authority`; no other
    /// pseudo-header) is answered 431 (on HTTP/2 and HTTP/3 too, where
    /// Envoy resets the stream), counted in `meshgate_http_downstream_rq_refused_total`
    /// `{reason="too_many_headers"}`. On the HTTP/1.1 codec it becomes the
    /// codec's own `max_request_headers` (at most 256) unless that is set.
    /// Unset: the codecs' limits only (HTTP/1.1: 100 fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers_count: Option<u32>,
}

impl Default for CommonHttpProtocolOptions {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            headers_with_underscores_action: HeadersWithUnderscoresAction::Allow,
            max_stream_duration: None,
            max_connection_duration: None,
            max_headers_count: None,
        }
    }
}

/// Envoy's `HttpProtocolOptions.HeadersWithUnderscoresAction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HeadersWithUnderscoresAction {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "REJECT_REQUEST")]
    RejectRequest,
    #[serde(rename = "DROP_HEADER")]
    DropHeader,
}

impl HeadersWithUnderscoresAction {
    pub fn is_allow(&self) -> bool {
        *self == Self::Allow
    }
}

impl CommonHttpProtocolOptions {
    /// The idle timeout, `None` when disabled.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// The `tcp_proxy` filter's config (Envoy's `TcpProxy`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    /// The upstream cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Or several, chosen per connection by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<TcpWeightedCluster>,
    /// Connect attempts, each on an endpoint not tried yet (default 3).
    #[serde(default = "default_attempts")]
    pub max_connect_attempts: u32,
    /// Close both sides after this long with no byte either way (default
    /// 1h; `0s` disables).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// What hashing load balancers hash: `source_ip` (default) or
    /// `source_ip_port`.
    #[serde(default)]
    pub hash_policy: TcpHashPolicy,
    /// How plain TCP bytes move: `never` (default: user-space copy through
    /// a buffer that grows for bulk flows), `bulk` (copy, then splice(2)
    /// once a direction carries bulk data) or `always` (splice from the
    /// first byte).
    #[serde(default)]
    pub zero_copy: ZeroCopy,
    /// One line per connection, when it closes (Envoy's `access_log`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<crate::config::access_log::AccessLog>,
}

impl TcpProxyConfig {
    /// The config with every field at its YAML default and no cluster.
    pub fn new() -> Self {
        Self {
            cluster: None,
            weighted_clusters: Vec::new(),
            max_connect_attempts: default_attempts(),
            idle_timeout: default_idle_timeout(),
            hash_policy: TcpHashPolicy::default(),
            zero_copy: ZeroCopy::default(),
            access_log: Vec::new(),
        }
    }
}

impl Default for TcpProxyConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// One of `tcp_proxy`'s `weighted_clusters`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpWeightedCluster {
    pub name: String,
    pub weight: u32,
}

/// `tcp_proxy`'s `hash_policy`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpHashPolicy {
    #[default]
    SourceIp,
    SourceIpPort,
}

/// `tcp_proxy`'s `zero_copy`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroCopy {
    #[default]
    Never,
    Bulk,
    Always,
}

fn default_codec() -> String {
    "auto".into()
}
fn default_true() -> bool {
    true
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_detect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_alt_svc_max_age() -> Duration {
    Duration::from_secs(86400)
}
fn default_upgrade_configs() -> Vec<UpgradeConfig> {
    vec![UpgradeConfig {
        upgrade_type: "websocket".into(),
        enabled: true,
    }]
}
fn default_server_name() -> String {
    "meshgate".into()
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempts() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_typed;

    /// What the filters parse from a serialized struct is that struct:
    /// xDS may build these and hand them over as JSON.
    #[test]
    fn serialized_configs_parse_back_the_same() {
        let yaml = serde_json::json!({
            "codec": "http1",
            "codec_options": {"http1": {"max_request_headers_bytes": 8192}},
            "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]},
            "stream_filters": [{"name": "fault", "config": {"abort": {"http_status": 503}}}],
            "generate_request_id": false,
            "max_request_body_bytes": 10,
            "stream_idle_timeout": "7s",
            "detect_timeout": "2s",
            "access_log": {"path": "/dev/stdout"},
            "advertise_http3": {"port": 443},
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "use_remote_address": false,
            "xff_num_trusted_hops": 2,
            "server_header_transformation": "PASS_THROUGH",
            "server_name": "edge",
            "upgrade_configs": [{"upgrade_type": "CONNECT", "enabled": false}],
            "common_http_protocol_options": {"idle_timeout": "0s"},
        });
        let cfg: ProxyConfig = parse_typed(&yaml).unwrap();
        let again: ProxyConfig = parse_typed(&serde_json::to_value(&cfg).unwrap()).unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
        assert_eq!(cfg.stream_idle_timeout, Duration::from_secs(7));
        assert_eq!(cfg.common_http_protocol_options.idle(), None);

        // Defaults: the YAML's and `new`'s are the same.
        let min: ProxyConfig =
            parse_typed(&serde_json::json!({"route_config": {"virtual_hosts": []}})).unwrap();
        let new = ProxyConfig::new(RouteConfig::default());
        assert_eq!(format!("{min:?}"), format!("{new:?}"));
        let again: ProxyConfig = parse_typed(&serde_json::to_value(&new).unwrap()).unwrap();
        assert_eq!(format!("{new:?}"), format!("{again:?}"));

        let tcp = serde_json::json!({
            "weighted_clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}],
            "max_connect_attempts": 1,
            "idle_timeout": "90s",
            "hash_policy": "source_ip_port",
            "zero_copy": "bulk",
        });
        let t: TcpProxyConfig = parse_typed(&tcp).unwrap();
        let again: TcpProxyConfig = parse_typed(&serde_json::to_value(&t).unwrap()).unwrap();
        assert_eq!(format!("{t:?}"), format!("{again:?}"));
        let min: TcpProxyConfig = parse_typed(&serde_json::json!({"cluster": "c"})).unwrap();
        let new = TcpProxyConfig {
            cluster: Some("c".into()),
            ..TcpProxyConfig::new()
        };
        assert_eq!(format!("{min:?}"), format!("{new:?}"));
    }

    #[test]
    fn unknown_fields_are_still_refused_by_name() {
        let e = parse_typed::<ProxyConfig>(&serde_json::json!({
            "route_config": {"virtual_hosts": []}, "bogus": 1
        }))
        .unwrap_err();
        assert!(e.message.contains("bogus"), "{e:?}");
        let e = parse_typed::<TcpProxyConfig>(
            &serde_json::json!({"cluster": "c", "zero_copy": "sometimes"}),
        )
        .unwrap_err();
        assert_eq!(e.path, "zero_copy");
    }
}
