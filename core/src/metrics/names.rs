//! Every metric name meshgate exports, in one place.
//!
//! Call sites (core, codecs, filters, xDS, the binary) use these constants
//! instead of string literals, so a name is spelled once, can be found by
//! its constant, and follows one convention:
//! `meshgate_<scope>_<what>_<unit>`, where counters end in `_total`,
//! durations in `_seconds`, sizes in `_bytes`, and failures are
//! `_error_total` (never `_errors_total`). Streams of every protocol
//! (HTTP, gRPC, Dubbo, Bolt, users' codecs) are counted under the
//! `downstream_rq` scope, which does not say `http`; names that say `http`
//! are about HTTP framing only.
//!
//! The `ALL` table lists every name with its kind; a unit test checks the
//! convention on it, so a new name that breaks it fails the build's tests.

/// What a name measures, for the naming checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A histogram of seconds.
    Histogram,
}

// Listener (layer 1): connections accepted, TLS, filter chain match.

/// Counter `{listener}`: downstream connections accepted.
pub const LISTENER_DOWNSTREAM_CX_TOTAL: &str = "meshgate_listener_downstream_cx_total";
/// Gauge `{listener}`: downstream connections open.
pub const LISTENER_DOWNSTREAM_CX_ACTIVE: &str = "meshgate_listener_downstream_cx_active";
/// Counter `{listener}`: connections refused by `max_connections`.
pub const LISTENER_DOWNSTREAM_CX_OVERFLOW_TOTAL: &str =
    "meshgate_listener_downstream_cx_overflow_total";
/// Counter `{listener,reason}`: `accept()` failures.
pub const LISTENER_DOWNSTREAM_CX_ACCEPT_ERROR_TOTAL: &str =
    "meshgate_listener_downstream_cx_accept_error_total";
/// Counter `{listener}`: bytes read from downstream by `tcp_proxy`.
pub const LISTENER_DOWNSTREAM_BYTES_RECEIVED_TOTAL: &str =
    "meshgate_listener_downstream_bytes_received_total";
/// Counter `{listener}`: bytes written to downstream by `tcp_proxy`.
pub const LISTENER_DOWNSTREAM_BYTES_SENT_TOTAL: &str =
    "meshgate_listener_downstream_bytes_sent_total";
/// Counter `{listener}`: connections no filter chain matched.
pub const LISTENER_NO_FILTER_CHAIN_MATCH_TOTAL: &str =
    "meshgate_listener_no_filter_chain_match_total";
/// Counter `{listener}`: listener filters (TLS/ALPN inspection) timed out.
pub const LISTENER_INSPECT_TIMEOUT_TOTAL: &str = "meshgate_listener_inspect_timeout_total";
/// Counter `{listener}`: TLS (and QUIC) handshakes completed.
pub const LISTENER_TLS_HANDSHAKE_TOTAL: &str = "meshgate_listener_tls_handshake_total";
/// Counter `{listener,reason}`: TLS (and QUIC) handshakes failed.
pub const LISTENER_TLS_HANDSHAKE_ERROR_TOTAL: &str = "meshgate_listener_tls_handshake_error_total";
/// Counter `{listener}`: QUIC Retry packets sent (address validation).
pub const LISTENER_QUIC_RETRY_TOTAL: &str = "meshgate_listener_quic_retry_total";
/// Counter `{listener,reason}`: connections a read or write network filter
/// closed (`filter`), or whose held bytes passed the limit (`buffer_limit`).
pub const LISTENER_NETWORK_FILTER_CLOSE_TOTAL: &str =
    "meshgate_listener_network_filter_close_total";
/// Counter `{result}`: certificate files reloaded.
pub const TLS_CERTIFICATE_RELOAD_TOTAL: &str = "meshgate_tls_certificate_reload_total";

// Cluster (layers 7, 8): upstream connections and requests.

/// Counter `{cluster}`: upstream connections established.
pub const CLUSTER_UPSTREAM_CX_TOTAL: &str = "meshgate_cluster_upstream_cx_total";
/// Gauge `{cluster}`: upstream connections open.
pub const CLUSTER_UPSTREAM_CX_ACTIVE: &str = "meshgate_cluster_upstream_cx_active";
/// Counter `{cluster}`: connects refused by the `max_connections` breaker.
pub const CLUSTER_UPSTREAM_CX_OVERFLOW_TOTAL: &str = "meshgate_cluster_upstream_cx_overflow_total";
/// Counter `{cluster,reason}`: connects that failed.
pub const CLUSTER_UPSTREAM_CX_CONNECT_FAIL_TOTAL: &str =
    "meshgate_cluster_upstream_cx_connect_fail_total";
/// Counter `{cluster,reason}`: how upstream connections ended.
pub const CLUSTER_UPSTREAM_CX_DESTROY_TOTAL: &str = "meshgate_cluster_upstream_cx_destroy_total";
/// Counter `{cluster,codec}`: pooled connections found dead when reused.
pub const CLUSTER_UPSTREAM_CX_DEAD_TOTAL: &str = "meshgate_cluster_upstream_cx_dead_total";
/// Counter `{cluster}`: multiplexed upstream connections (HTTP/2) closed
/// after `idle_timeout` with no stream (Envoy's `upstream_cx_idle_timeout`).
pub const CLUSTER_UPSTREAM_CX_IDLE_TIMEOUT_TOTAL: &str =
    "meshgate_cluster_upstream_cx_idle_timeout_total";
/// Counter `{cluster}`: upstream connections that reached
/// `max_connection_duration` and took no more requests (Envoy's
/// `upstream_cx_max_duration_reached`).
pub const CLUSTER_UPSTREAM_CX_MAX_DURATION_REACHED_TOTAL: &str =
    "meshgate_cluster_upstream_cx_max_duration_reached_total";
/// Counter `{cluster}`: upstream responses refused (502, `UPE`) for more
/// header fields than the cluster's `max_headers_count`.
pub const CLUSTER_UPSTREAM_RQ_HEADERS_COUNT_EXCEEDED_TOTAL: &str =
    "meshgate_cluster_upstream_rq_headers_count_exceeded_total";
/// Counter `{cluster}`: upstream requests reset at the cluster's
/// `max_stream_duration` (Envoy's `upstream_rq_max_duration_reached`).
pub const CLUSTER_UPSTREAM_RQ_MAX_DURATION_REACHED_TOTAL: &str =
    "meshgate_cluster_upstream_rq_max_duration_reached_total";
/// Counter `{cluster}`: bytes written to upstream.
pub const CLUSTER_UPSTREAM_BYTES_SENT_TOTAL: &str = "meshgate_cluster_upstream_bytes_sent_total";
/// Counter `{cluster}`: bytes read from upstream.
pub const CLUSTER_UPSTREAM_BYTES_RECEIVED_TOTAL: &str =
    "meshgate_cluster_upstream_bytes_received_total";
/// Counter `{cluster}`: request retries.
pub const CLUSTER_UPSTREAM_RQ_RETRY_TOTAL: &str = "meshgate_cluster_upstream_rq_retry_total";
/// Counter `{cluster}`: upstream TLS handshakes failed.
pub const CLUSTER_UPSTREAM_TLS_HANDSHAKE_ERROR_TOTAL: &str =
    "meshgate_cluster_upstream_tls_handshake_error_total";

// Downstream streams of every protocol (layers 4 to 6, the `proxy` filter).

/// Counter `{listener}`: streams (requests) received, any protocol.
pub const DOWNSTREAM_RQ_TOTAL: &str = "meshgate_downstream_rq_total";
/// Counter `{listener,route,cluster,code_class}`: streams answered, by the
/// status class (RPC statuses map to an HTTP class).
pub const DOWNSTREAM_RQ_XX_TOTAL: &str = "meshgate_downstream_rq_xx_total";
/// Histogram `{listener}`: time from request head to response head.
pub const DOWNSTREAM_RQ_DURATION_SECONDS: &str = "meshgate_downstream_rq_duration_seconds";
/// Counter `{filter,reason}`: streams a stream filter refused.
pub const HTTP_FILTER_DENIED_TOTAL: &str = "meshgate_http_filter_denied_total";
/// Counter `{reason}`: streams meshgate answered itself.
pub const DOWNSTREAM_RQ_LOCAL_REPLY_TOTAL: &str = "meshgate_downstream_rq_local_reply_total";
/// Counter `{protocol}`: request bodies over the configured limit.
pub const DOWNSTREAM_RQ_BODY_TOO_LARGE_TOTAL: &str = "meshgate_downstream_rq_body_too_large_total";
/// Counter `{protocol,phase}`: streams ended by the stream idle timeout.
pub const DOWNSTREAM_RQ_IDLE_TIMEOUT_TOTAL: &str = "meshgate_downstream_rq_idle_timeout_total";
/// Counter `{protocol,phase}`: streams ended by their max stream duration
/// (Envoy's `downstream_rq_max_duration_reached`).
pub const DOWNSTREAM_RQ_MAX_DURATION_REACHED_TOTAL: &str =
    "meshgate_downstream_rq_max_duration_reached_total";
/// Counter `{listener}`: connections whose protocol no codec recognised.
pub const PROXY_CODEC_DETECT_FAIL_TOTAL: &str = "meshgate_proxy_codec_detect_fail_total";

// HTTP framing (HTTP/1.1, HTTP/2, HTTP/3 codecs only).

/// Counter `{listener,codec,reason}`: connections answered with a
/// protocol error (400/431/408, HTTP/2 or HTTP/3 GOAWAY).
pub const HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL: &str =
    "meshgate_http_downstream_cx_protocol_error_total";
/// Counter `{listener,codec}`: connections closed by the idle timeout.
pub const HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT_TOTAL: &str =
    "meshgate_http_downstream_cx_idle_timeout_total";
/// Counter `{listener}`: connections that reached the HCM's
/// `max_connection_duration` (wound down as in a drain).
pub const HTTP_DOWNSTREAM_CX_MAX_DURATION_REACHED_TOTAL: &str =
    "meshgate_http_downstream_cx_max_duration_reached_total";
/// Counter `{listener,flood}`: HTTP/2 floods detected.
pub const HTTP_DOWNSTREAM_CX_FLOOD_TOTAL: &str = "meshgate_http_downstream_cx_flood_total";
/// Counter `{listener,reason}`: requests refused by edge checks.
pub const HTTP_DOWNSTREAM_RQ_REFUSED_TOTAL: &str = "meshgate_http_downstream_rq_refused_total";
/// Counter `{listener,reason}`: request headers dropped by edge checks
/// (`headers_with_underscores_action: DROP_HEADER`).
pub const HTTP_DOWNSTREAM_HEADERS_DROPPED_TOTAL: &str =
    "meshgate_http_downstream_headers_dropped_total";
/// Counter `{direction}`: trailer fields removed (RFC 9110 section 6.5.1).
pub const HTTP_FORBIDDEN_TRAILER_TOTAL: &str = "meshgate_http_forbidden_trailer_total";
/// Counter `{cluster,reason}`: upstream responses refused as malformed.
pub const HTTP_UPSTREAM_RS_INVALID_TOTAL: &str = "meshgate_http_upstream_rs_invalid_total";

// RPC framing (Dubbo, Bolt, users' RPC codecs).

/// Counter `{listener,codec,reason}`: malformed downstream frames.
pub const RPC_DOWNSTREAM_PROTOCOL_ERROR_TOTAL: &str =
    "meshgate_rpc_downstream_protocol_error_total";
/// Counter `{listener,codec}`: heartbeats answered.
pub const RPC_DOWNSTREAM_HEARTBEAT_TOTAL: &str = "meshgate_rpc_downstream_heartbeat_total";
/// Counter `{listener,codec}`: responses a client sent unasked.
pub const RPC_DOWNSTREAM_UNEXPECTED_RESPONSE_TOTAL: &str =
    "meshgate_rpc_downstream_unexpected_response_total";
/// Counter `{cluster,codec,reason}`: malformed upstream frames.
pub const RPC_UPSTREAM_PROTOCOL_ERROR_TOTAL: &str = "meshgate_rpc_upstream_protocol_error_total";
/// Counter `{cluster,codec}`: responses to no pending request.
pub const RPC_UPSTREAM_UNKNOWN_RESPONSE_TOTAL: &str =
    "meshgate_rpc_upstream_unknown_response_total";

// L4 filters.

/// Counter `{listener}`: `tcp_proxy` connections with no upstream.
pub const TCP_PROXY_UPSTREAM_UNAVAILABLE_TOTAL: &str =
    "meshgate_tcp_proxy_upstream_unavailable_total";
/// Gauge `{listener,direction}`: bytes `tcp_proxy` has read from one side
/// and not yet written to the other (`direction`: `downstream_to_upstream`,
/// `upstream_to_downstream`), which `per_connection_buffer_limit_bytes`
/// bounds per connection (the listener's one way, the cluster's the other).
pub const TCP_PROXY_BUFFERED_BYTES: &str = "meshgate_tcp_proxy_buffered_bytes";

// Process, config, admin, logs.

/// Gauge: the version of the config snapshot in use.
pub const CONFIG_VERSION: &str = "meshgate_config_version";
/// Counter `{result}`: config reloads (`ok`, `error`).
pub const CONFIG_RELOAD_TOTAL: &str = "meshgate_config_reload_total";
/// Counter `{signal}`: signals handled.
pub const SERVER_SIGNAL_TOTAL: &str = "meshgate_server_signal_total";
/// Counter: log files reopened (SIGUSR1).
pub const SERVER_LOG_REOPEN_TOTAL: &str = "meshgate_server_log_reopen_total";
/// Counter `{reason}`: admin server `accept()` failures.
pub const ADMIN_ACCEPT_ERROR_TOTAL: &str = "meshgate_admin_accept_error_total";
/// Counter `{path}`: access log lines dropped (writer behind).
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "meshgate_access_log_dropped_total";
/// Counter `{cluster}`: OpenTelemetry access log records the collector
/// accepted.
pub const ACCESS_LOG_OTLP_EXPORTED_TOTAL: &str = "meshgate_access_log_otlp_exported_total";
/// Counter `{cluster,reason}`: OpenTelemetry access log records dropped
/// (`queue_full`, `export_failed`).
pub const ACCESS_LOG_OTLP_DROPPED_TOTAL: &str = "meshgate_access_log_otlp_dropped_total";
/// Gauge: names interned for metric labels.
pub const STATS_INTERNED_NAMES: &str = "meshgate_stats_interned_names";
/// Counter: names not interned because the table was full.
pub const STATS_INTERNED_NAMES_OVERFLOW_TOTAL: &str =
    "meshgate_stats_interned_names_overflow_total";

// xDS client.

/// Gauge: 1 while the ADS stream is up.
pub const XDS_CONNECTED: &str = "meshgate_xds_connected";
/// Counter `{result}`: ADS streams opened (`ok`, `connect_error`, `rpc_error`).
pub const XDS_STREAM_TOTAL: &str = "meshgate_xds_stream_total";
/// Counter `{type,result}`: responses ACKed or NACKed.
pub const XDS_RESPONSE_TOTAL: &str = "meshgate_xds_response_total";
/// Counter `{type}`: initial fetches that timed out.
pub const XDS_INITIAL_FETCH_TIMEOUT_TOTAL: &str = "meshgate_xds_initial_fetch_timeout_total";
/// Counter `{reason}`: TLS handshakes with the management server failed.
pub const XDS_TLS_HANDSHAKE_ERROR_TOTAL: &str = "meshgate_xds_tls_handshake_error_total";
/// Counter `{mode}`: `ext_authz` checks the server allowed (`grpc`, `http`).
pub const EXT_AUTHZ_OK_TOTAL: &str = "meshgate_ext_authz_ok_total";
/// Counter `{mode}`: `ext_authz` checks the server denied.
pub const EXT_AUTHZ_DENIED_TOTAL: &str = "meshgate_ext_authz_denied_total";
/// Counter `{mode,reason}`: `ext_authz` checks that failed (server down,
/// timeout, bad answer, body too large), refused with `status_on_error`.
pub const EXT_AUTHZ_ERROR_TOTAL: &str = "meshgate_ext_authz_error_total";
/// Counter `{mode}`: failed checks let through by `failure_mode_allow`.
pub const EXT_AUTHZ_FAILURE_MODE_ALLOWED_TOTAL: &str =
    "meshgate_ext_authz_failure_mode_allowed_total";

// The `csrf` stream filter.

/// Counter `{result,mode}`: unsafe-method requests the `csrf` filter
/// checked; `result` is `valid`, `invalid` or `missing_source_origin`
/// (Envoy's csrf stats), `mode` `enforced` or `shadow`.
pub const HTTP_CSRF_REQUEST_TOTAL: &str = "meshgate_http_csrf_request_total";
/// Counter `{result}`: bcrypt credentials the `basic_auth` filter checked:
/// `cache_hit` (verified before), `verified`, `mismatch`.
pub const HTTP_BASIC_AUTH_BCRYPT_TOTAL: &str = "meshgate_http_basic_auth_bcrypt_total";
// RBAC (the `rbac` stream and network filters).

/// Counter `{listener,layer,stat_prefix,policy}`: streams (`layer="http"`)
/// or connections (`layer="network"`) the enforced rules allowed; `policy`
/// is the effective policy (empty when none matched).
pub const RBAC_ALLOWED_TOTAL: &str = "meshgate_rbac_allowed_total";
/// Counter `{listener,layer,stat_prefix,policy}`: refused by the enforced
/// rules (403, or the connection closed).
pub const RBAC_DENIED_TOTAL: &str = "meshgate_rbac_denied_total";
/// Counter `{listener,layer,stat_prefix,policy}`: the shadow rules would
/// have allowed (never enforced).
pub const RBAC_SHADOW_ALLOWED_TOTAL: &str = "meshgate_rbac_shadow_allowed_total";
/// Counter `{listener,layer,stat_prefix,policy}`: the shadow rules would
/// have denied (never enforced).
pub const RBAC_SHADOW_DENIED_TOTAL: &str = "meshgate_rbac_shadow_denied_total";

// jwt_authn stream filter.

/// Counter `{provider}`: tokens a `jwt_authn` provider verified (a
/// request whose requirement held).
pub const JWT_AUTHN_ALLOWED_TOTAL: &str = "meshgate_jwt_authn_allowed_total";
/// Counter `{reason}`: requests `jwt_authn` refused (missing, expired,
/// bad signature, audience...).
pub const JWT_AUTHN_DENIED_TOTAL: &str = "meshgate_jwt_authn_denied_total";
/// Counter `{provider,result}`: remote JWKS fetches (`success`, `failure`).
pub const JWT_AUTHN_JWKS_FETCH_TOTAL: &str = "meshgate_jwt_authn_jwks_fetch_total";

// Traffic control filters: local rate limits and fault injection.

/// Counter `{stat_prefix}`: requests the `local_ratelimit` stream filter
/// evaluated and let through within the limit.
pub const LOCAL_RATELIMIT_OK_TOTAL: &str = "meshgate_local_ratelimit_ok_total";
/// Counter `{stat_prefix}`: requests over a `local_ratelimit` limit
/// (enforced or not).
pub const LOCAL_RATELIMIT_RATE_LIMITED_TOTAL: &str = "meshgate_local_ratelimit_rate_limited_total";
/// Counter `{stat_prefix}`: requests over the limit that were refused.
pub const LOCAL_RATELIMIT_ENFORCED_TOTAL: &str = "meshgate_local_ratelimit_enforced_total";
/// Counter `{stat_prefix}`: per-value buckets of a wildcard descriptor
/// evicted (least recently used) to keep within `max_dynamic_descriptors`.
pub const LOCAL_RATELIMIT_DESCRIPTOR_EVICTED_TOTAL: &str =
    "meshgate_local_ratelimit_descriptor_evicted_total";
/// Counter `{stat_prefix}`: connections the `local_ratelimit` network
/// filter let through.
pub const NETWORK_LOCAL_RATELIMIT_OK_TOTAL: &str = "meshgate_network_local_ratelimit_ok_total";
/// Counter `{stat_prefix}`: connections the `local_ratelimit` network
/// filter closed (before the terminal filter dialled the upstream).
pub const NETWORK_LOCAL_RATELIMIT_RATE_LIMITED_TOTAL: &str =
    "meshgate_network_local_ratelimit_rate_limited_total";
/// Counter `{route}`: requests the `fault` filter delayed.
pub const FAULT_DELAYS_INJECTED_TOTAL: &str = "meshgate_fault_delays_injected_total";
/// Counter `{route}`: requests the `fault` filter aborted.
pub const FAULT_ABORTS_INJECTED_TOTAL: &str = "meshgate_fault_aborts_injected_total";
/// Counter `{route}`: faults not injected because `max_active_faults`
/// were already active.
pub const FAULT_ACTIVE_FAULTS_OVERFLOW_TOTAL: &str = "meshgate_fault_active_faults_overflow_total";

/// Counter `{library}`: responses the `compressor` filter compressed.
pub const COMPRESSOR_COMPRESSED_TOTAL: &str = "meshgate_compressor_compressed_total";
/// Counter `{library,reason}`: responses the `compressor` filter left
/// alone (`not_accepted`, `head`, `status`, `content_encoding`,
/// `no_transform`, `content_type`, `content_length`, `etag`, `disabled`).
pub const COMPRESSOR_NOT_COMPRESSED_TOTAL: &str = "meshgate_compressor_not_compressed_total";
/// Counter `{library}`: body bytes the `compressor` filter took in.
pub const COMPRESSOR_UNCOMPRESSED_BYTES_TOTAL: &str =
    "meshgate_compressor_uncompressed_bytes_total";
/// Counter `{library}`: compressed body bytes the `compressor` filter sent.
pub const COMPRESSOR_COMPRESSED_BYTES_TOTAL: &str = "meshgate_compressor_compressed_bytes_total";
/// Counter `{library,direction}`: bodies the `decompressor` filter
/// decoded (`direction` `request` or `response`).
pub const DECOMPRESSOR_DECOMPRESSED_TOTAL: &str = "meshgate_decompressor_decompressed_total";
/// Counter `{library,direction,reason}`: bodies the `decompressor` filter
/// left alone (`disabled`, `no_transform`, `not_encoded`).
pub const DECOMPRESSOR_NOT_DECOMPRESSED_TOTAL: &str =
    "meshgate_decompressor_not_decompressed_total";
/// Counter `{library,direction}`: encoded body bytes the `decompressor`
/// filter took in.
pub const DECOMPRESSOR_COMPRESSED_BYTES_TOTAL: &str =
    "meshgate_decompressor_compressed_bytes_total";
/// Counter `{library,direction}`: decoded body bytes the `decompressor`
/// filter passed on.
pub const DECOMPRESSOR_DECOMPRESSED_BYTES_TOTAL: &str =
    "meshgate_decompressor_decompressed_bytes_total";
/// Counter `{library,direction,reason}`: bodies the `decompressor` filter
/// cut off (`inflate_ratio`: over `max_inflate_ratio`, a decompression
/// bomb; `invalid`: not a valid encoded stream); the stream is aborted.
pub const DECOMPRESSOR_REFUSED_TOTAL: &str = "meshgate_decompressor_refused_total";

/// Every name above with its kind (checked by the tests below).
/// Global `ratelimit`: requests the rate limit service allowed (`domain`).
pub const RATELIMIT_OK_TOTAL: &str = "meshgate_ratelimit_ok_total";
/// Global `ratelimit`: requests refused as over the limit (`domain`).
pub const RATELIMIT_OVER_LIMIT_TOTAL: &str = "meshgate_ratelimit_over_limit_total";
/// Global `ratelimit`: calls to the service without a usable answer
/// (`domain`, `reason`).
pub const RATELIMIT_ERROR_TOTAL: &str = "meshgate_ratelimit_error_total";
/// Global `ratelimit`: requests let through because the service failed and
/// `failure_mode_deny` is off (`domain`).
pub const RATELIMIT_FAILURE_MODE_ALLOWED_TOTAL: &str =
    "meshgate_ratelimit_failure_mode_allowed_total";
/// Counter `{cluster}`: endpoint picks made in panic mode (the healthy
/// share of the chosen priority fell below `healthy_panic_threshold`, so
/// health was ignored).
pub const CLUSTER_LB_HEALTHY_PANIC_TOTAL: &str = "meshgate_cluster_lb_healthy_panic_total";
/// Counter `{cluster, category}`: requests answered 503 at once by the
/// cluster's `drop_overloads`.
pub const CLUSTER_UPSTREAM_RQ_DROPPED_TOTAL: &str = "meshgate_cluster_upstream_rq_dropped_total";

// Circuit breakers and retries (issue 18; `cluster::breaker`, `forward`).

/// Counter `{cluster,priority}`: requests refused by `max_requests`.
pub const CLUSTER_UPSTREAM_RQ_OVERFLOW_TOTAL: &str = "meshgate_cluster_upstream_rq_overflow_total";
/// Counter `{cluster,priority}`: retries refused by `max_retries` / `retry_budget`.
pub const CLUSTER_UPSTREAM_RQ_RETRY_OVERFLOW_TOTAL: &str =
    "meshgate_cluster_upstream_rq_retry_overflow_total";
/// Gauge `{cluster,priority,breaker}`: 1 while the breaker is at its limit.
pub const CLUSTER_CIRCUIT_BREAKERS_OPEN: &str = "meshgate_cluster_circuit_breakers_open";
/// Gauge `{cluster,priority,breaker}`: what is left under the limit (`track_remaining`).
pub const CLUSTER_CIRCUIT_BREAKERS_REMAINING: &str = "meshgate_cluster_circuit_breakers_remaining";
/// Counter `{cluster}`: retried requests whose final answer was not retried again.
pub const CLUSTER_UPSTREAM_RQ_RETRY_SUCCESS_TOTAL: &str =
    "meshgate_cluster_upstream_rq_retry_success_total";
/// Counter `{cluster}`: retries after the jittered exponential back-off.
pub const CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_EXPONENTIAL_TOTAL: &str =
    "meshgate_cluster_upstream_rq_retry_backoff_exponential_total";
/// Counter `{cluster}`: retries after a back-off read from a rate-limit reset header.
pub const CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_RATELIMITED_TOTAL: &str =
    "meshgate_cluster_upstream_rq_retry_backoff_ratelimited_total";
/// Counter `{cluster}`: retriable answers given up on (`num_retries` used up).
pub const CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED_TOTAL: &str =
    "meshgate_cluster_upstream_rq_retry_limit_exceeded_total";

// Active health checking and cluster membership (`cluster::health_check`).

/// Gauge `{cluster}`: endpoints that are healthy.
pub const CLUSTER_MEMBERSHIP_HEALTHY: &str = "meshgate_cluster_membership_healthy";
/// Gauge `{cluster}`: endpoints that are degraded (used only when the
/// healthy ones are short).
pub const CLUSTER_MEMBERSHIP_DEGRADED: &str = "meshgate_cluster_membership_degraded";
/// Gauge `{cluster}`: endpoints in the cluster (Envoy's `membership_total`;
/// a gauge here does not end in `_total`).
pub const CLUSTER_MEMBERSHIP_TOTAL: &str = "meshgate_cluster_membership_endpoints";
/// Counter `{cluster}`: active health checks started.
pub const CLUSTER_HEALTH_CHECK_ATTEMPT_TOTAL: &str = "meshgate_cluster_health_check_attempt_total";
/// Counter `{cluster}`: active health checks that passed.
pub const CLUSTER_HEALTH_CHECK_SUCCESS_TOTAL: &str = "meshgate_cluster_health_check_success_total";
/// Counter `{cluster,kind}`: active health checks that failed (`timeout`,
/// `network`, `status`).
pub const CLUSTER_HEALTH_CHECK_FAILURE_TOTAL: &str = "meshgate_cluster_health_check_failure_total";
/// Outlier detection: endpoints found outliers (`cluster`, `detector`:
/// consecutive_5xx, consecutive_gateway_failure, ..., `enforced`: whether
/// it was ejected, or only detected: not enforcing, max_ejection_percent).
pub const CLUSTER_OUTLIER_DETECTION_EJECTIONS_TOTAL: &str =
    "meshgate_cluster_outlier_detection_ejections_total";
/// Outlier detection: endpoints ejected now (`cluster`).
pub const CLUSTER_OUTLIER_DETECTION_EJECTIONS_ACTIVE: &str =
    "meshgate_cluster_outlier_detection_ejections_active";
/// Route `fallback` (service degradation): requests answered by the
/// fallback instead of the route's cluster (`cluster`, `reason`:
/// `no_healthy_endpoint` | `overflow`).
pub const ROUTE_FALLBACK_TOTAL: &str = "meshgate_route_fallback_total";
/// Counter `{cluster,result}`: mirrored (shadow) requests by outcome:
/// `sent` (the shadow answered), `failed` (no answer: connect failure,
/// timeout, reset...), `dropped_body_too_large` (the body passed the
/// mirror's `max_body_bytes`), `no_cluster` (the cluster does not exist).
pub const CLUSTER_MIRROR_RQ_TOTAL: &str = "meshgate_cluster_mirror_rq_total";
/// Counter `{cluster}`: tries reset by the retry policy's
/// `per_try_idle_timeout` (no response byte for that long).
pub const CLUSTER_UPSTREAM_RQ_PER_TRY_IDLE_TIMEOUT_TOTAL: &str =
    "meshgate_cluster_upstream_rq_per_try_idle_timeout_total";
/// Counter `{cluster}`: hedged tries sent (a try whose per-try timeout
/// fired kept running while this one started; `hedge_on_per_try_timeout`).
pub const CLUSTER_UPSTREAM_RQ_HEDGED_TOTAL: &str = "meshgate_cluster_upstream_rq_hedged_total";
/// Counter `{header}`: router `x-envoy-*` request headers ignored for an
/// invalid value (Envoy ignores them too).
pub const HTTP_RQ_ENVOY_HEADER_INVALID_TOTAL: &str = "meshgate_http_rq_envoy_header_invalid_total";
/// Counter: requests from an external client (edge, `use_remote_address`)
/// whose internal-only `x-envoy-*` headers were removed.
pub const HTTP_RQ_ENVOY_HEADERS_STRIPPED_TOTAL: &str =
    "meshgate_http_rq_envoy_headers_stripped_total";

/// Counter `{reason}`: admin requests refused (`unauthorized`,
/// `method_not_allowed`, `bad_request`).
pub const ADMIN_RQ_DENIED_TOTAL: &str = "meshgate_admin_rq_denied_total";
/// Gauge: 1 while `/healthcheck/fail` holds (`/ready` answers 503).
pub const SERVER_HEALTH_CHECK_FAILED: &str = "meshgate_server_health_check_failed";
/// Gauge: seconds since the process started.
pub const SERVER_UPTIME_SECONDS: &str = "meshgate_server_uptime_seconds";
/// Counter `{listener,version}`: PROXY protocol headers accepted by the
/// `envoy.filters.listener.proxy_protocol` listener filter (`version`:
/// `v1` | `v2` | `v2_local` | `none`, the last for a connection without a
/// header let through by `allow_requests_without_proxy_protocol`).
pub const LISTENER_PROXY_PROTOCOL_FOUND_TOTAL: &str =
    "meshgate_listener_proxy_protocol_found_total";
/// Counter `{listener,reason}`: connections closed by the PROXY protocol
/// listener filter (`reason`: `not_proxy` | `malformed` | `oversized` |
/// `timeout` | `closed` | `disallowed_version`).
pub const LISTENER_PROXY_PROTOCOL_ERROR_TOTAL: &str =
    "meshgate_listener_proxy_protocol_error_total";
/// Zone-aware routing (`{cluster}`, Envoy's `lb_zone_routing_all_directly`):
/// picks sent to the local zone because it has the capacity for all of them.
pub const CLUSTER_LB_ZONE_ROUTING_ALL_DIRECTLY_TOTAL: &str =
    "meshgate_cluster_lb_zone_routing_all_directly_total";
/// Zone-aware routing (`{cluster}`, `lb_zone_routing_sampled`): picks sent to
/// the local zone by the sampled share its capacity allows.
pub const CLUSTER_LB_ZONE_ROUTING_SAMPLED_TOTAL: &str =
    "meshgate_cluster_lb_zone_routing_sampled_total";
/// Zone-aware routing (`{cluster}`, `lb_zone_routing_cross_zone`): picks sent
/// to another zone by its residual capacity.
pub const CLUSTER_LB_ZONE_ROUTING_CROSS_ZONE_TOTAL: &str =
    "meshgate_cluster_lb_zone_routing_cross_zone_total";
/// Zone-aware routing (`{cluster}`, `lb_zone_cluster_too_small`): the cluster
/// has fewer endpoints than `min_cluster_size` (counted per load
/// recomputation, as Envoy).
pub const CLUSTER_LB_ZONE_CLUSTER_TOO_SMALL_TOTAL: &str =
    "meshgate_cluster_lb_zone_cluster_too_small_total";
/// Zone-aware routing (`{cluster}`, `lb_local_cluster_not_ok`): picks made
/// without zone awareness because the local cluster is missing, empty or
/// in panic.
pub const CLUSTER_LB_LOCAL_CLUSTER_NOT_OK_TOTAL: &str =
    "meshgate_cluster_lb_local_cluster_not_ok_total";
/// `tcp_proxy` connections closed at once by the cluster's
/// `drop_overloads` (`{listener,cluster}`; Envoy's `DO` flag; the
/// cluster's `upstream_rq_dropped` counts them too, with the category).
pub const TCP_PROXY_CX_DROPPED_TOTAL: &str = "meshgate_tcp_proxy_cx_dropped_total";
/// Counter `{listener,target}`: connections a `use_original_dst` listener
/// handed to the listener of their original destination.
pub const LISTENER_ORIGINAL_DST_HANDOFF_TOTAL: &str =
    "meshgate_listener_original_dst_handoff_total";
/// Counter `{listener,reason}`: connections the original_dst listener
/// filter closed: `not_redirected` (made to the capture port itself: passed
/// through they would loop back), `no_original_dst`.
pub const LISTENER_ORIGINAL_DST_REFUSED_TOTAL: &str =
    "meshgate_listener_original_dst_refused_total";
/// Counter `{cluster,reason}`: requests or connections an ORIGINAL_DST
/// cluster had no host for: `bad_header` (not ip:port), `loop` (the
/// destination is one of meshgate's own listeners).
pub const CLUSTER_ORIGINAL_DST_NO_HOST_TOTAL: &str = "meshgate_cluster_original_dst_no_host_total";
/// Gauge `{cluster}`: hosts an ORIGINAL_DST cluster holds now.
pub const CLUSTER_ORIGINAL_DST_HOSTS: &str = "meshgate_cluster_original_dst_hosts";

/// Gauge `{monitor}`: an overload manager resource monitor's pressure
/// (used / maximum; 1 is the maximum).
pub const OVERLOAD_MONITOR_PRESSURE: &str = "meshgate_overload_monitor_pressure";
/// Gauge `{action}`: an overload action's scale (0 inactive, 1 saturated).
pub const OVERLOAD_ACTION_SCALE: &str = "meshgate_overload_action_scale";
/// Counter `{reason}`: downstream connections closed at accept by the
/// overload manager (`global_downstream_max_connections`,
/// `stop_accepting_connections`).
pub const OVERLOAD_DOWNSTREAM_CX_REFUSED_TOTAL: &str =
    "meshgate_overload_downstream_cx_refused_total";
/// Counter: requests answered 503 by `stop_accepting_requests`.
pub const OVERLOAD_REQUESTS_REFUSED_TOTAL: &str = "meshgate_overload_requests_refused_total";
/// Counter: streams reset by `reset_high_memory_streams`.
pub const OVERLOAD_STREAMS_RESET_TOTAL: &str = "meshgate_overload_streams_reset_total";
/// Counter: times `shrink_heap` returned free allocator memory.
pub const OVERLOAD_SHRINK_HEAP_TOTAL: &str = "meshgate_overload_shrink_heap_total";
/// Gauge: request body bytes held for downstream streams
/// (`meshgate.resource_monitors.buffered_bytes`).
pub const OVERLOAD_BUFFERED_BYTES: &str = "meshgate_overload_buffered_bytes";

// Distributed tracing (`crate::trace`).

/// Counter `{listener,decision}`: streams' sampling decisions (`forced`,
/// `parent`, `client`, `random`, `not_sampled`).
pub const TRACING_DECISIONS_TOTAL: &str = "meshgate_tracing_decisions_total";
/// Counter `{cluster}`: spans the collector accepted.
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "meshgate_tracing_spans_exported_total";
/// Counter `{cluster,reason}`: spans dropped (`queue_full`,
/// `export_failed`).
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "meshgate_tracing_spans_dropped_total";
/// Counter `{codec,reason}`: RPC request frames sent upstream without the
/// stream's trace context because rewriting them was not possible
/// (`too_large`, `malformed`).
pub const RPC_UPSTREAM_TRACE_CONTEXT_SKIPPED_TOTAL: &str =
    "meshgate_rpc_upstream_trace_context_skipped_total";

/// Gauge `{cluster}`: requests waiting for an upstream connection slot
/// (`max_pending_requests`).
pub const CLUSTER_UPSTREAM_RQ_PENDING_ACTIVE: &str = "meshgate_cluster_upstream_rq_pending_active";
/// Counter `{cluster}`: requests that had to wait for a connection slot.
pub const CLUSTER_UPSTREAM_RQ_PENDING_TOTAL: &str = "meshgate_cluster_upstream_rq_pending_total";
/// Counter `{cluster,priority}`: requests refused because
/// `max_pending_requests` requests were waiting already.
pub const CLUSTER_UPSTREAM_RQ_PENDING_OVERFLOW_TOTAL: &str =
    "meshgate_cluster_upstream_rq_pending_overflow_total";
/// Counter `{cluster}`: waiting requests that left the queue unserved
/// (route timeout, downstream gone).
pub const CLUSTER_UPSTREAM_RQ_PENDING_CANCELLED_TOTAL: &str =
    "meshgate_cluster_upstream_rq_pending_cancelled_total";

// UDP proxy listener (`crate::udp`).

/// Gauge `{listener}`: UDP sessions open.
pub const UDP_PROXY_SESSIONS_ACTIVE: &str = "meshgate_udp_proxy_sessions_active";
/// Counter `{listener}`: UDP sessions created.
pub const UDP_PROXY_SESSIONS_TOTAL: &str = "meshgate_udp_proxy_sessions_total";
/// Counter `{listener, direction}`: datagrams forwarded; `direction` is
/// `upstream` (client to upstream) or `downstream` (upstream to client).
pub const UDP_PROXY_DATAGRAMS_TOTAL: &str = "meshgate_udp_proxy_datagrams_total";
/// Counter `{listener, direction}`: payload bytes forwarded.
pub const UDP_PROXY_BYTES_TOTAL: &str = "meshgate_udp_proxy_bytes_total";
/// Counter `{listener, reason}`: datagrams dropped: `session_overflow`,
/// `no_healthy_upstream`, `too_large`, `send_error`, `draining`.
pub const UDP_PROXY_DATAGRAMS_DROPPED_TOTAL: &str = "meshgate_udp_proxy_datagrams_dropped_total";
/// Counter: `x-envoy-force-trace` removed from a request that is not
/// internal (it neither forced its trace nor travelled on).
pub const TRACING_FORCE_TRACE_IGNORED_TOTAL: &str = "meshgate_tracing_force_trace_ignored_total";
/// Histogram `{cluster}`: one upstream try's time, from its start to the
/// response head (or its failure).
pub const CLUSTER_UPSTREAM_RQ_TIME_SECONDS: &str = "meshgate_cluster_upstream_rq_time_seconds";
/// HTTP requests a `route.http_to_rpc` refused before any call (labels:
/// protocol, reason: bad_json, bad_param, missing_param, too_deep,
/// too_large, no_match).
pub const HTTP_TO_RPC_REJECTED_TOTAL: &str = "meshgate_http_to_rpc_rejected_total";
/// Translated calls answered, by the HTTP status sent (labels: protocol, code).
pub const HTTP_TO_RPC_RESPONSES_TOTAL: &str = "meshgate_http_to_rpc_responses_total";

// gRPC-JSON transcoder stream filter (`grpc_json_transcoder`).

/// Counter `{method}`: REST requests transcoded into a gRPC call
/// (`method` is the gRPC `/pkg.Service/Method`, bounded by the descriptor).
pub const GRPC_JSON_TRANSCODER_TRANSCODED_TOTAL: &str =
    "meshgate_grpc_json_transcoder_transcoded_total";
/// Counter `{reason}`: requests refused with 400 (`bad_json`,
/// `bad_path_binding`, `bad_query_parameter`, `unknown_query_parameter`,
/// `unknown_method`, `binding_body_collision`) or 413 (`too_large`).
pub const GRPC_JSON_TRANSCODER_REJECTED_TOTAL: &str =
    "meshgate_grpc_json_transcoder_rejected_total";
/// Counter `{reason}`: upstream responses that could not be turned into
/// JSON (`bad_frame`, `bad_message`, `compressed`, `too_large`, `overloaded`:
/// a server stream's partial message over the memory budget): the body
/// is cut.
pub const GRPC_JSON_TRANSCODER_RESPONSE_ERROR_TOTAL: &str =
    "meshgate_grpc_json_transcoder_response_error_total";

/// Counter `{mode}`: gRPC-Web requests the `grpc_web` filter translated
/// to gRPC, `mode` `binary` or `text` (base64).
pub const GRPC_WEB_REQUESTS_TOTAL: &str = "meshgate_grpc_web_requests_total";
/// Counter `{reason}`: gRPC-Web request bodies refused:
/// `malformed_base64`, `truncated_frame`, `oversize_frame`, `bad_frame_flags`.
pub const GRPC_WEB_REJECTED_TOTAL: &str = "meshgate_grpc_web_rejected_total";

/// Counter `{role, result}`: hot upgrade hand-overs (`role`: `old` for
/// the process that hands its sockets over, `new` for the one that takes
/// them; `result`: `ok`, `refused` (protocol versions), `error`).
pub const UPGRADE_HANDOVER_TOTAL: &str = "meshgate_upgrade_handover_total";
/// Counter `{result}`: QUIC packets a process passed to its old process
/// for the connections that one still serves (`forwarded`, `dropped`).
pub const UPGRADE_QUIC_PACKETS_TOTAL: &str = "meshgate_upgrade_quic_packets_total";
/// Counter: listening sockets a hot upgrade handed over that this
/// process took (instead of binding).
pub const UPGRADE_SOCKETS_INHERITED_TOTAL: &str = "meshgate_upgrade_sockets_inherited_total";
/// Counter `{direction}`: connections a hot upgrade migrated (`out`: this
/// process handed them to the new one; `in`: this process took them).
pub const UPGRADE_CONNECTIONS_MIGRATED_TOTAL: &str = "meshgate_upgrade_connections_migrated_total";
/// Counter `{reason}`: connections a hot upgrade could not migrate and
/// that closed after their calls instead (drain): `not_plain_tcp`,
/// `too_many_bytes`, `refused` (the new process has no such listener or
/// chain), `error` (the hand-over socket failed), `timeout`, `closed`
/// (no migration in progress any more).
pub const UPGRADE_MIGRATION_FALLBACK_TOTAL: &str = "meshgate_upgrade_migration_fallback_total";

/// Counter `{source, reason}`: peer metadata (Istio's exchange) refused:
/// `source` `http_header` or `in_band`; `reason` `too_large`, `base64`,
/// `protobuf`, `bad_magic`. The stream or connection goes on with the
/// peer unknown.
pub const ISTIO_PEER_METADATA_ERROR_TOTAL: &str = "meshgate_istio_peer_metadata_error_total";
/// Counter `{listener}`: Istio metric label sets past the bound of one
/// `istio_stats` filter, counted with the peer's labels `unknown`.
pub const ISTIO_STATS_OVERFLOW_TOTAL: &str = "meshgate_istio_stats_overflow_total";
/// Counter: request bodies a stream filter was buffering (ext_authz's
/// `with_request_body`, a filter reading the whole body) refused with 503
/// because holding them would take `buffered_bytes` over its budget, or
/// because `reset_high_memory_streams` reset them.
pub const OVERLOAD_FILTER_BUFFER_REFUSED_TOTAL: &str =
    "meshgate_overload_filter_buffer_refused_total";
/// Counter `{cluster}`: connects refused because the endpoint would need a
/// new connection pool past `circuit_breakers` `max_connection_pools`
/// (Envoy's `upstream_cx_pool_overflow`).
pub const CLUSTER_UPSTREAM_CX_POOL_OVERFLOW_TOTAL: &str =
    "meshgate_cluster_upstream_cx_pool_overflow_total";
/// Counter `{listener,cluster}`: `tcp_proxy` connections closed at once
/// because their cluster is not there (removed by CDS; Envoy's
/// `downstream_cx_no_route`, response flag `NC`).
pub const TCP_PROXY_CX_NO_ROUTE_TOTAL: &str = "meshgate_tcp_proxy_cx_no_route_total";

pub const ALL: &[(&str, Kind)] = &[
    (LISTENER_DOWNSTREAM_CX_TOTAL, Kind::Counter),
    (LISTENER_DOWNSTREAM_CX_ACTIVE, Kind::Gauge),
    (LISTENER_DOWNSTREAM_CX_OVERFLOW_TOTAL, Kind::Counter),
    (LISTENER_DOWNSTREAM_CX_ACCEPT_ERROR_TOTAL, Kind::Counter),
    (LISTENER_DOWNSTREAM_BYTES_RECEIVED_TOTAL, Kind::Counter),
    (LISTENER_DOWNSTREAM_BYTES_SENT_TOTAL, Kind::Counter),
    (LISTENER_NO_FILTER_CHAIN_MATCH_TOTAL, Kind::Counter),
    (LISTENER_INSPECT_TIMEOUT_TOTAL, Kind::Counter),
    (LISTENER_TLS_HANDSHAKE_TOTAL, Kind::Counter),
    (LISTENER_TLS_HANDSHAKE_ERROR_TOTAL, Kind::Counter),
    (LISTENER_QUIC_RETRY_TOTAL, Kind::Counter),
    (LISTENER_NETWORK_FILTER_CLOSE_TOTAL, Kind::Counter),
    (TLS_CERTIFICATE_RELOAD_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_ACTIVE, Kind::Gauge),
    (CLUSTER_UPSTREAM_CX_OVERFLOW_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_CONNECT_FAIL_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_DESTROY_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_DEAD_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_IDLE_TIMEOUT_TOTAL, Kind::Counter),
    (
        CLUSTER_UPSTREAM_CX_MAX_DURATION_REACHED_TOTAL,
        Kind::Counter,
    ),
    (
        CLUSTER_UPSTREAM_RQ_HEADERS_COUNT_EXCEEDED_TOTAL,
        Kind::Counter,
    ),
    (
        CLUSTER_UPSTREAM_RQ_MAX_DURATION_REACHED_TOTAL,
        Kind::Counter,
    ),
    (CLUSTER_UPSTREAM_BYTES_SENT_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_BYTES_RECEIVED_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_RETRY_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_TLS_HANDSHAKE_ERROR_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_XX_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_DURATION_SECONDS, Kind::Histogram),
    (DOWNSTREAM_RQ_LOCAL_REPLY_TOTAL, Kind::Counter),
    (HTTP_FILTER_DENIED_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_BODY_TOO_LARGE_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_IDLE_TIMEOUT_TOTAL, Kind::Counter),
    (DOWNSTREAM_RQ_MAX_DURATION_REACHED_TOTAL, Kind::Counter),
    (PROXY_CODEC_DETECT_FAIL_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_CX_MAX_DURATION_REACHED_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_CX_FLOOD_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_RQ_REFUSED_TOTAL, Kind::Counter),
    (HTTP_DOWNSTREAM_HEADERS_DROPPED_TOTAL, Kind::Counter),
    (HTTP_FORBIDDEN_TRAILER_TOTAL, Kind::Counter),
    (HTTP_UPSTREAM_RS_INVALID_TOTAL, Kind::Counter),
    (RPC_DOWNSTREAM_PROTOCOL_ERROR_TOTAL, Kind::Counter),
    (RPC_DOWNSTREAM_HEARTBEAT_TOTAL, Kind::Counter),
    (RPC_DOWNSTREAM_UNEXPECTED_RESPONSE_TOTAL, Kind::Counter),
    (RPC_UPSTREAM_PROTOCOL_ERROR_TOTAL, Kind::Counter),
    (RPC_UPSTREAM_UNKNOWN_RESPONSE_TOTAL, Kind::Counter),
    (TCP_PROXY_UPSTREAM_UNAVAILABLE_TOTAL, Kind::Counter),
    (TCP_PROXY_BUFFERED_BYTES, Kind::Gauge),
    (CONFIG_VERSION, Kind::Gauge),
    (CONFIG_RELOAD_TOTAL, Kind::Counter),
    (SERVER_SIGNAL_TOTAL, Kind::Counter),
    (SERVER_LOG_REOPEN_TOTAL, Kind::Counter),
    (ADMIN_ACCEPT_ERROR_TOTAL, Kind::Counter),
    (ACCESS_LOG_DROPPED_TOTAL, Kind::Counter),
    (ACCESS_LOG_OTLP_EXPORTED_TOTAL, Kind::Counter),
    (ACCESS_LOG_OTLP_DROPPED_TOTAL, Kind::Counter),
    (STATS_INTERNED_NAMES, Kind::Gauge),
    (STATS_INTERNED_NAMES_OVERFLOW_TOTAL, Kind::Counter),
    (XDS_CONNECTED, Kind::Gauge),
    (XDS_STREAM_TOTAL, Kind::Counter),
    (XDS_RESPONSE_TOTAL, Kind::Counter),
    (XDS_INITIAL_FETCH_TIMEOUT_TOTAL, Kind::Counter),
    (XDS_TLS_HANDSHAKE_ERROR_TOTAL, Kind::Counter),
    (HTTP_CSRF_REQUEST_TOTAL, Kind::Counter),
    (HTTP_BASIC_AUTH_BCRYPT_TOTAL, Kind::Counter),
    (RBAC_ALLOWED_TOTAL, Kind::Counter),
    (RBAC_DENIED_TOTAL, Kind::Counter),
    (RBAC_SHADOW_ALLOWED_TOTAL, Kind::Counter),
    (RBAC_SHADOW_DENIED_TOTAL, Kind::Counter),
    (EXT_AUTHZ_OK_TOTAL, Kind::Counter),
    (EXT_AUTHZ_DENIED_TOTAL, Kind::Counter),
    (EXT_AUTHZ_ERROR_TOTAL, Kind::Counter),
    (EXT_AUTHZ_FAILURE_MODE_ALLOWED_TOTAL, Kind::Counter),
    (JWT_AUTHN_ALLOWED_TOTAL, Kind::Counter),
    (JWT_AUTHN_DENIED_TOTAL, Kind::Counter),
    (JWT_AUTHN_JWKS_FETCH_TOTAL, Kind::Counter),
    (LOCAL_RATELIMIT_OK_TOTAL, Kind::Counter),
    (LOCAL_RATELIMIT_RATE_LIMITED_TOTAL, Kind::Counter),
    (LOCAL_RATELIMIT_ENFORCED_TOTAL, Kind::Counter),
    (LOCAL_RATELIMIT_DESCRIPTOR_EVICTED_TOTAL, Kind::Counter),
    (NETWORK_LOCAL_RATELIMIT_OK_TOTAL, Kind::Counter),
    (NETWORK_LOCAL_RATELIMIT_RATE_LIMITED_TOTAL, Kind::Counter),
    (FAULT_DELAYS_INJECTED_TOTAL, Kind::Counter),
    (FAULT_ABORTS_INJECTED_TOTAL, Kind::Counter),
    (FAULT_ACTIVE_FAULTS_OVERFLOW_TOTAL, Kind::Counter),
    (RATELIMIT_OK_TOTAL, Kind::Counter),
    (RATELIMIT_OVER_LIMIT_TOTAL, Kind::Counter),
    (RATELIMIT_ERROR_TOTAL, Kind::Counter),
    (RATELIMIT_FAILURE_MODE_ALLOWED_TOTAL, Kind::Counter),
    (COMPRESSOR_COMPRESSED_TOTAL, Kind::Counter),
    (COMPRESSOR_NOT_COMPRESSED_TOTAL, Kind::Counter),
    (COMPRESSOR_UNCOMPRESSED_BYTES_TOTAL, Kind::Counter),
    (COMPRESSOR_COMPRESSED_BYTES_TOTAL, Kind::Counter),
    (CLUSTER_LB_HEALTHY_PANIC_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_DROPPED_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_OVERFLOW_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_RETRY_OVERFLOW_TOTAL, Kind::Counter),
    (CLUSTER_CIRCUIT_BREAKERS_OPEN, Kind::Gauge),
    (CLUSTER_CIRCUIT_BREAKERS_REMAINING, Kind::Gauge),
    (CLUSTER_UPSTREAM_RQ_RETRY_SUCCESS_TOTAL, Kind::Counter),
    (
        CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_EXPONENTIAL_TOTAL,
        Kind::Counter,
    ),
    (
        CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_RATELIMITED_TOTAL,
        Kind::Counter,
    ),
    (
        CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED_TOTAL,
        Kind::Counter,
    ),
    (CLUSTER_MEMBERSHIP_HEALTHY, Kind::Gauge),
    (CLUSTER_MEMBERSHIP_DEGRADED, Kind::Gauge),
    (CLUSTER_MEMBERSHIP_TOTAL, Kind::Gauge),
    (CLUSTER_HEALTH_CHECK_ATTEMPT_TOTAL, Kind::Counter),
    (CLUSTER_HEALTH_CHECK_SUCCESS_TOTAL, Kind::Counter),
    (CLUSTER_HEALTH_CHECK_FAILURE_TOTAL, Kind::Counter),
    (DECOMPRESSOR_DECOMPRESSED_TOTAL, Kind::Counter),
    (DECOMPRESSOR_NOT_DECOMPRESSED_TOTAL, Kind::Counter),
    (DECOMPRESSOR_COMPRESSED_BYTES_TOTAL, Kind::Counter),
    (DECOMPRESSOR_DECOMPRESSED_BYTES_TOTAL, Kind::Counter),
    (DECOMPRESSOR_REFUSED_TOTAL, Kind::Counter),
    (CLUSTER_OUTLIER_DETECTION_EJECTIONS_TOTAL, Kind::Counter),
    (CLUSTER_OUTLIER_DETECTION_EJECTIONS_ACTIVE, Kind::Gauge),
    (ROUTE_FALLBACK_TOTAL, Kind::Counter),
    (CLUSTER_MIRROR_RQ_TOTAL, Kind::Counter),
    (
        CLUSTER_UPSTREAM_RQ_PER_TRY_IDLE_TIMEOUT_TOTAL,
        Kind::Counter,
    ),
    (CLUSTER_UPSTREAM_RQ_HEDGED_TOTAL, Kind::Counter),
    (HTTP_RQ_ENVOY_HEADER_INVALID_TOTAL, Kind::Counter),
    (HTTP_RQ_ENVOY_HEADERS_STRIPPED_TOTAL, Kind::Counter),
    (ADMIN_RQ_DENIED_TOTAL, Kind::Counter),
    (SERVER_HEALTH_CHECK_FAILED, Kind::Gauge),
    (SERVER_UPTIME_SECONDS, Kind::Gauge),
    (LISTENER_PROXY_PROTOCOL_FOUND_TOTAL, Kind::Counter),
    (LISTENER_PROXY_PROTOCOL_ERROR_TOTAL, Kind::Counter),
    (CLUSTER_LB_ZONE_ROUTING_ALL_DIRECTLY_TOTAL, Kind::Counter),
    (CLUSTER_LB_ZONE_ROUTING_SAMPLED_TOTAL, Kind::Counter),
    (CLUSTER_LB_ZONE_ROUTING_CROSS_ZONE_TOTAL, Kind::Counter),
    (CLUSTER_LB_ZONE_CLUSTER_TOO_SMALL_TOTAL, Kind::Counter),
    (CLUSTER_LB_LOCAL_CLUSTER_NOT_OK_TOTAL, Kind::Counter),
    (TCP_PROXY_CX_DROPPED_TOTAL, Kind::Counter),
    (LISTENER_ORIGINAL_DST_HANDOFF_TOTAL, Kind::Counter),
    (LISTENER_ORIGINAL_DST_REFUSED_TOTAL, Kind::Counter),
    (CLUSTER_ORIGINAL_DST_NO_HOST_TOTAL, Kind::Counter),
    (CLUSTER_ORIGINAL_DST_HOSTS, Kind::Gauge),
    (OVERLOAD_MONITOR_PRESSURE, Kind::Gauge),
    (OVERLOAD_ACTION_SCALE, Kind::Gauge),
    (OVERLOAD_DOWNSTREAM_CX_REFUSED_TOTAL, Kind::Counter),
    (OVERLOAD_REQUESTS_REFUSED_TOTAL, Kind::Counter),
    (OVERLOAD_STREAMS_RESET_TOTAL, Kind::Counter),
    (OVERLOAD_SHRINK_HEAP_TOTAL, Kind::Counter),
    (OVERLOAD_BUFFERED_BYTES, Kind::Gauge),
    (TRACING_DECISIONS_TOTAL, Kind::Counter),
    (TRACING_SPANS_EXPORTED_TOTAL, Kind::Counter),
    (TRACING_SPANS_DROPPED_TOTAL, Kind::Counter),
    (RPC_UPSTREAM_TRACE_CONTEXT_SKIPPED_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_PENDING_ACTIVE, Kind::Gauge),
    (CLUSTER_UPSTREAM_RQ_PENDING_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_PENDING_OVERFLOW_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_PENDING_CANCELLED_TOTAL, Kind::Counter),
    (UDP_PROXY_SESSIONS_ACTIVE, Kind::Gauge),
    (UDP_PROXY_SESSIONS_TOTAL, Kind::Counter),
    (UDP_PROXY_DATAGRAMS_TOTAL, Kind::Counter),
    (UDP_PROXY_BYTES_TOTAL, Kind::Counter),
    (UDP_PROXY_DATAGRAMS_DROPPED_TOTAL, Kind::Counter),
    (TRACING_FORCE_TRACE_IGNORED_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_RQ_TIME_SECONDS, Kind::Histogram),
    (HTTP_TO_RPC_REJECTED_TOTAL, Kind::Counter),
    (HTTP_TO_RPC_RESPONSES_TOTAL, Kind::Counter),
    (GRPC_JSON_TRANSCODER_TRANSCODED_TOTAL, Kind::Counter),
    (GRPC_JSON_TRANSCODER_REJECTED_TOTAL, Kind::Counter),
    (GRPC_JSON_TRANSCODER_RESPONSE_ERROR_TOTAL, Kind::Counter),
    (GRPC_WEB_REQUESTS_TOTAL, Kind::Counter),
    (GRPC_WEB_REJECTED_TOTAL, Kind::Counter),
    (UPGRADE_HANDOVER_TOTAL, Kind::Counter),
    (UPGRADE_QUIC_PACKETS_TOTAL, Kind::Counter),
    (UPGRADE_SOCKETS_INHERITED_TOTAL, Kind::Counter),
    (UPGRADE_CONNECTIONS_MIGRATED_TOTAL, Kind::Counter),
    (UPGRADE_MIGRATION_FALLBACK_TOTAL, Kind::Counter),
    (ISTIO_PEER_METADATA_ERROR_TOTAL, Kind::Counter),
    (ISTIO_STATS_OVERFLOW_TOTAL, Kind::Counter),
    (OVERLOAD_FILTER_BUFFER_REFUSED_TOTAL, Kind::Counter),
    (CLUSTER_UPSTREAM_CX_POOL_OVERFLOW_TOTAL, Kind::Counter),
    (TCP_PROXY_CX_NO_ROUTE_TOTAL, Kind::Counter),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The naming convention, checked on every name: a prefix, lowercase
    /// words, counters in `_total`, histograms in a unit, gauges in none,
    /// `_error_` never `_errors_`, no duplicates, and streams of every
    /// protocol (`downstream_rq`) not under an `http` scope.
    #[test]
    fn every_name_follows_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind) in ALL {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(name.starts_with("meshgate_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(!name.contains("_errors"), "{name}: say _error_total");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "{name}"
                ),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
            if name.starts_with("meshgate_downstream_rq_") {
                assert!(!name.contains("http"), "{name}");
            }
        }
    }
}

/// No metric name is spelled outside this module: every source file of the
/// crates that export metrics is read and searched for a name literal.
#[cfg(test)]
#[test]
fn names_are_spelled_only_here() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stray = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = [
        "core/src",
        "protocols/src",
        "filters/src",
        "xds/src",
        "cmd/src",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs")
                && !path.ends_with("metrics/names.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, line) in text.lines().enumerate() {
                    if line.contains("\"meshgate_") {
                        stray.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "metric names outside metrics::names:\n{}",
        stray.join("\n")
    );
}
