//! The protocol-agnostic stream (DESIGN.md layer 4) and stream filters
//! (layer 5). A stream is one request/response exchange whatever the codec:
//! a head (method, path, authority and headers; an RPC codec maps service
//! and method onto the same head), a streamed body with back-pressure, and
//! trailers. The types are `http`'s `Request`/`Response` over a boxed
//! `http_body::Body`, so HTTP codecs convert without copying and RPC codecs
//! reuse the same route matchers and filters.

use crate::error::BuildError;
use crate::network::{BuildContext, ConnectionInfo};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// Error type of stream bodies.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A request body error that is the downstream peer's fault (a bad chunk
/// size, bytes that break the framing): a codec's body yields it so that
/// the stream ends with 400, not the 502 of an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body: {0}")]
pub struct MalformedBody(pub &'static str);

/// A streamed body: data frames and an optional trailers frame.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;
pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;

/// An empty body.
pub fn empty_body() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of one buffer.
pub fn full_body(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors convert.
pub fn box_body<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// The one `&'static` copy of a route or cluster name.
///
/// A stream records its route and cluster for metrics and the access log;
/// as `Arc<str>` each was a reference count taken and dropped per request
/// (four atomic instructions on the hot path). Names are leaked once per
/// distinct value, up to a cap (`crate::intern`): past it a new name is
/// labelled `__overflow__`, so xDS name churn cannot grow memory without
/// bound. Only labels come from here; identities (cluster manager keys)
/// use the configured names.
pub fn intern(name: &str) -> &'static str {
    crate::intern::intern(name)
}

/// A request extension set by the `proxy` filter under Envoy's
/// `scheme_header_transformation.match_upstream`: the HTTP/2 client sends
/// `:scheme` `https` over TLS and `http` otherwise, whatever the
/// downstream said.
#[derive(Debug, Clone, Copy)]
pub struct SchemeMatchUpstream;

/// A request extension set when an access log reads
/// `%UPSTREAM_LOCAL_ADDRESS%`: the upstream codec then tags the response
/// with the local address of the connection that carried it
/// (`UpstreamLocalAddress`). Unset, codecs do nothing (no address
/// looked up, nothing inserted).
#[derive(Debug, Clone, Copy)]
pub struct WantUpstreamLocalAddress;

/// A response extension: the local address of the upstream connection
/// the response came on (see `WantUpstreamLocalAddress`).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLocalAddress(pub std::net::SocketAddr);

/// What filters and the router know about a stream besides its head.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub connection: Arc<ConnectionInfo>,
    /// The downstream codec's registered name (`http1`, `http2`, `dubbo`...).
    pub protocol: &'static str,
    /// What the downstream protocol can carry, set by its codec.
    pub traits: crate::codec::ProtocolTraits,
    pub start: Instant,
    /// `content-type: application/grpc*` (set by the `proxy` filter, which
    /// turns local replies into gRPC statuses; `grpc-timeout` applies).
    pub grpc: bool,
    /// The matched route's name (or `vhost/index` when unnamed).
    pub route: Option<&'static str>,
    /// The upstream cluster and endpoint, once chosen (for access logs).
    pub upstream_cluster: Option<&'static str>,
    /// The chosen cluster's `metadata`, when it has any.
    pub upstream_cluster_metadata: Option<Arc<crate::config::Metadata>>,
    pub upstream_host: Option<std::net::SocketAddr>,
    /// The local address of the upstream connection (only recorded when
    /// an access log asks: `WantUpstreamLocalAddress`).
    pub upstream_local_address: Option<std::net::SocketAddr>,
    /// Why meshgate answered itself, if it did (e.g. `no_route`).
    pub local_reply: Option<&'static str>,
    /// The trusted client address: the peer's, or the one the `proxy`
    /// filter took from `x-forwarded-for` (`use_remote_address`,
    /// `xff_num_trusted_hops`). Filters and access logs use this one.
    pub downstream_remote_address: std::net::IpAddr,
    /// The stream filter that refused the stream, if one did (the reason
    /// is `local_reply`).
    pub denied_by: Option<&'static str>,
    /// What stream filters learned about the stream, for a later phase or
    /// another filter (empty, and not allocated, until one inserts).
    pub filter_state: http::Extensions,
    /// Body size limit and stream idle timeout (`crate::body`), set by the
    /// `proxy` filter from its options and the route.
    pub limits: crate::body::StreamLimits,
    /// Upstream tries made so far (`x-envoy-attempt-count`).
    pub upstream_attempts: u32,
    /// The router's `suppress_envoy_headers`: no `x-envoy-*` header of
    /// the router's on the request or the response.
    pub suppress_envoy_headers: bool,
    /// Distributed tracing state (`crate::trace`); `Undecided` unless the
    /// `proxy` filter has `tracing`.
    pub trace: crate::trace::StreamTrace,
    /// The upstream tries as the router's `upstream_log` sees them; `None`
    /// (nothing recorded) unless the `proxy` filter has an upstream log.
    /// Boxed: one pointer in every stream's info, not a `Vec`'s three.
    #[allow(clippy::box_collection)]
    pub upstream_tries: Option<Box<Vec<UpstreamTry>>>,
}

/// One upstream try (the router's `upstream_log`): which endpoint, when,
/// and how it ended.
#[derive(Debug, Clone)]
pub struct UpstreamTry {
    pub cluster: Option<&'static str>,
    pub host: std::net::SocketAddr,
    /// 1 for the first try, 2 for the first retry...
    pub number: u32,
    pub start: Instant,
    /// When its response head came or it failed (`None`: still open).
    pub end: Option<Instant>,
    /// The try's status: the upstream's, or the local reply's for a
    /// failure (`None`: still open).
    pub status: Option<u16>,
    /// Why the try failed, when it did (`upstream_connect_failure`,
    /// `upstream_reset`, `upstream_timeout`, ...).
    pub failure: Option<&'static str>,
    /// The local address of the connection the try went on, when an
    /// access log asks for it and the try got a response.
    pub local_address: Option<std::net::SocketAddr>,
    /// The response head of a try that was retried (the last try's is
    /// the stream's response).
    pub headers: Option<Box<http::HeaderMap>>,
    /// The retries ran out on this try (Envoy's `URX`).
    pub retry_limit_exceeded: bool,
    /// Request body bytes sent on this try, when known (a body kept for
    /// retries, or one of a known length).
    pub request_bytes: Option<u64>,
    /// Response body bytes received on this try (Envoy's upstream
    /// `%BYTES_RECEIVED%`): for a retried response, what had arrived
    /// when it was dropped; the last try's are counted as its body
    /// streams (`None`: not counted here).
    pub response_bytes: Option<u64>,
}

impl StreamInfo {
    pub fn new(connection: Arc<ConnectionInfo>, protocol: &'static str) -> Self {
        let filter_state = crate::proxy_protocol::filter_state(&connection);
        Self {
            downstream_remote_address: connection.peer_addr.ip(),
            connection,
            protocol,
            traits: crate::codec::ProtocolTraits::default(),
            start: Instant::now(),
            grpc: false,
            route: None,
            upstream_cluster: None,
            upstream_cluster_metadata: None,
            upstream_host: None,
            upstream_local_address: None,
            local_reply: None,
            denied_by: None,
            filter_state,
            limits: crate::body::StreamLimits::default(),
            upstream_attempts: 0,
            suppress_envoy_headers: false,
            trace: crate::trace::StreamTrace::Undecided,
            upstream_tries: None,
        }
    }
}

impl StreamInfo {
    /// What filters published about this stream (Envoy's dynamic
    /// metadata), if any did.
    pub fn metadata(&self) -> Option<&DynamicMetadata> {
        self.filter_state.get::<DynamicMetadata>()
    }

    /// The stream's dynamic metadata, made on first use.
    pub fn metadata_mut(&mut self) -> &mut DynamicMetadata {
        self.filter_state.get_or_insert_default::<DynamicMetadata>()
    }
}

/// Envoy's dynamic metadata (`filter_metadata`): values a filter publishes
/// under its own namespace (its Envoy name, e.g.
/// `envoy.filters.http.jwt_authn`) for later filters (RBAC matches a JWT
/// claim with a `metadata` principal), the access log and the upstream.
/// Kept in `StreamInfo::filter_state`; nothing is allocated until a filter
/// publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicMetadata(serde_json::Map<String, serde_json::Value>);

impl DynamicMetadata {
    /// Sets `key` in `namespace` (Envoy's `setDynamicMetadata` merges
    /// keys into the namespace's struct the same way).
    pub fn set(&mut self, namespace: &str, key: &str, value: serde_json::Value) {
        let ns = self
            .0
            .entry(namespace.to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !ns.is_object() {
            *ns = serde_json::Value::Object(Default::default());
        }
        if let Some(o) = ns.as_object_mut() {
            o.insert(key.to_string(), value);
        }
    }

    /// The value at `path` inside `namespace` (Envoy's `MetadataMatcher`
    /// `filter` and `path`); `None` when any step is missing.
    pub fn get(&self, namespace: &str, path: &[&str]) -> Option<&serde_json::Value> {
        let mut v = self.0.get(namespace)?;
        for key in path {
            v = v.as_object()?.get(*key)?;
        }
        Some(v)
    }

    /// Every namespace and its values (access logs).
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

impl StreamInfo {
    /// The stream's protocol traits, as its codec declares them.
    pub fn with_traits(mut self, traits: crate::codec::ProtocolTraits) -> Self {
        self.traits = traits;
        self
    }
}

/// What a stream filter decides for a request.
pub enum FilterStatus {
    /// Go on to the next filter (and finally the router).
    Continue,
    /// Go on, but the filter changed what routing looks at (a header, the
    /// path): the route is recomputed before the next filter.
    Reroute,
    /// Answer locally with this response; later filters and the router are
    /// skipped, the response phase still runs over the filters that ran.
    /// A refusal is a `local_reply` (it carries its `LocalReason`, counted
    /// as the filter's denial); any other response is the filter's answer.
    Respond(Response),
}

/// The future a filter's request phase returns: a filter that must wait
/// (an auth call, a rate-limit service) awaits inside it and resumes.
pub type FilterFuture<'a> = Pin<Box<dyn Future<Output = FilterStatus> + Send + 'a>>;

/// A stream filter (`crate::filter_chain` drives it): the request phase
/// runs in chain order with the route already matched, the response phase
/// in reverse over the filters whose request phase ran, then the
/// completion hook. One value serves every stream of the listener; what a
/// filter learns about one stream goes in the request's extensions or
/// `StreamInfo::filter_state`.
pub trait StreamFilter: Send + Sync + 'static {
    /// The request phase (head; the body is still streaming in `req`).
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: crate::filter_chain::RouteView<'a>,
    ) -> FilterFuture<'a>;
    /// The response phase (head), in reverse chain order.
    fn on_response(&self, _resp: &mut Response, _info: &mut StreamInfo) {}
    /// Once the response head is final (logs, stats).
    fn on_complete(&self, _info: &StreamInfo, _status: u16) {}
    /// Parses this filter's per-route config (`per_filter_config`), once
    /// per route table. The default refuses any.
    fn parse_per_route(
        &self,
        _config: &serde_json::Value,
    ) -> Result<crate::filter_chain::ParsedConfig, BuildError> {
        Err(BuildError::new("", "this filter takes no per-route config"))
    }
    /// Whether this filter has body and trailer phases
    /// (`request_body`/`response_body`). Asked once when the chain is
    /// built: a chain where no filter says yes never wraps a body.
    fn has_body_phases(&self) -> bool {
        false
    }
    /// The request body phase of one stream, asked right after this
    /// filter's request phase let the stream go on: the returned
    /// [`BodyFilter`](crate::filter_chain::BodyFilter) (which holds the
    /// stream's state) sees each request body chunk, in chain order, then
    /// the trailers and the end. `None`: nothing to do for this stream.
    fn request_body(
        &self,
        _req: &Request,
        _info: &mut StreamInfo,
        _route: crate::filter_chain::RouteView<'_>,
    ) -> Option<Box<dyn crate::filter_chain::BodyFilter>> {
        None
    }
    /// The response body phase of one stream, asked after this filter's
    /// response phase (reverse chain order, like the chunks it then sees).
    fn response_body(
        &self,
        _resp: &Response,
        _info: &mut StreamInfo,
    ) -> Option<Box<dyn crate::filter_chain::BodyFilter>> {
        None
    }
}

/// A stream filter registered by name.
pub trait StreamFilterFactory: Send + Sync {
    fn name(&self) -> &'static str;
    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError>;
}

/// Why meshgate answers a stream itself; each maps to a status and the
/// `reason` label of `meshgate_downstream_rq_local_reply_total` (a codec family maps
/// it to its own form: gRPC statuses in the `proxy` filter, RPC errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    NoRoute,
    /// The route's cluster does not exist (yet); the status is the
    /// route's `cluster_not_found_response_code` (503 by default).
    ClusterNotFound,
    NoHealthyUpstream,
    UpstreamConnectFailure,
    /// The upstream connection ended before the response head (503, flag
    /// `UC`: Envoy's connection termination).
    UpstreamReset,
    /// The upstream reset the stream before the response head (an HTTP/2
    /// RST_STREAM or HTTP/3 RESET_STREAM, refused streams included; the
    /// connection stays): 503, flag `UR`.
    UpstreamRemoteReset,
    UpstreamTimeout,
    UpstreamProtocolError,
    Overflow,
    BadRequest,
    PayloadTooLarge,
    HeadersTooLarge,
    /// No body byte either way for the stream idle timeout (408).
    StreamIdleTimeout,
    /// The stream outlived its max stream duration (408, or 504 once the
    /// request was whole: `crate::stream_duration`).
    MaxStreamDuration,
    /// The request did not arrive whole within the HCM's
    /// `request_timeout` (408, Envoy's `request_overall_timeout`).
    RequestTimeout,
    /// The upstream request outlived the cluster's `max_stream_duration`
    /// (flag `UMSDR`): 408, or 504 once the request was whole (`true`).
    UpstreamMaxStreamDuration(bool),
    /// A stream filter found no valid credentials (401).
    Unauthenticated,
    /// A stream filter refused the stream by policy (403).
    Forbidden,
    /// A stream filter's rate limit (429).
    RateLimited,
    /// A filter's per-route config could not be applied: refused, never
    /// let through by accident (500).
    FilterConfigError,
    /// The cluster's `drop_overloads` dropped the request (503).
    DropOverload,
    /// The overload manager refused the request or reset the stream (503,
    /// `x-envoy-overloaded`).
    Overloaded,
}

impl LocalReason {
    pub fn status(self) -> StatusCode {
        match self {
            LocalReason::NoRoute => StatusCode::NOT_FOUND,
            LocalReason::NoHealthyUpstream
            | LocalReason::ClusterNotFound
            | LocalReason::UpstreamConnectFailure
            // A reset before the response head is 503, as Envoy answers
            // "upstream connect error or disconnect/reset before headers";
            // only a response meshgate cannot accept is a bad gateway.
            | LocalReason::UpstreamReset
            | LocalReason::UpstreamRemoteReset
            | LocalReason::Overflow
            | LocalReason::DropOverload
            | LocalReason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            LocalReason::UpstreamProtocolError => StatusCode::BAD_GATEWAY,
            LocalReason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReason::BadRequest => StatusCode::BAD_REQUEST,
            LocalReason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LocalReason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LocalReason::StreamIdleTimeout
            | LocalReason::MaxStreamDuration
            | LocalReason::RequestTimeout => {
                StatusCode::REQUEST_TIMEOUT
            }
            LocalReason::UpstreamMaxStreamDuration(true) => StatusCode::GATEWAY_TIMEOUT,
            LocalReason::UpstreamMaxStreamDuration(false) => StatusCode::REQUEST_TIMEOUT,
            LocalReason::Unauthenticated => StatusCode::UNAUTHORIZED,
            LocalReason::Forbidden => StatusCode::FORBIDDEN,
            LocalReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            LocalReason::FilterConfigError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LocalReason::NoRoute => "no_route",
            LocalReason::NoHealthyUpstream => "no_healthy_upstream",
            LocalReason::ClusterNotFound => "cluster_not_found",
            LocalReason::UpstreamConnectFailure => "upstream_connect_failure",
            LocalReason::UpstreamReset => "upstream_reset",
            LocalReason::UpstreamRemoteReset => "upstream_remote_reset",
            LocalReason::UpstreamTimeout => "upstream_timeout",
            LocalReason::UpstreamProtocolError => "upstream_protocol_error",
            LocalReason::Overflow => "overflow",
            LocalReason::BadRequest => "bad_request",
            LocalReason::PayloadTooLarge => "payload_too_large",
            LocalReason::HeadersTooLarge => "headers_too_large",
            LocalReason::StreamIdleTimeout => "stream_idle_timeout",
            LocalReason::MaxStreamDuration => "max_duration_timeout",
            LocalReason::RequestTimeout => "request_overall_timeout",
            LocalReason::UpstreamMaxStreamDuration(_) => "upstream_max_stream_duration",
            LocalReason::Unauthenticated => "unauthenticated",
            LocalReason::Forbidden => "forbidden",
            LocalReason::RateLimited => "rate_limited",
            LocalReason::FilterConfigError => "filter_config_error",
            LocalReason::DropOverload => "drop_overload",
            LocalReason::Overloaded => "overloaded",
        }
    }

    /// A short human-readable description (local-reply bodies, RPC error
    /// messages).
    pub fn message(self) -> &'static str {
        match self {
            LocalReason::NoRoute => "no route matched",
            LocalReason::NoHealthyUpstream => "no healthy upstream",
            LocalReason::ClusterNotFound => "cluster not found",
            LocalReason::UpstreamConnectFailure => "upstream connect failure",
            // Envoy's words, which operators search logs for.
            LocalReason::UpstreamReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            LocalReason::UpstreamRemoteReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
            }
            LocalReason::UpstreamTimeout => "upstream request timeout",
            LocalReason::UpstreamProtocolError => "upstream protocol error",
            LocalReason::Overflow => "upstream overflow (circuit breaker open)",
            LocalReason::BadRequest => "bad request",
            LocalReason::PayloadTooLarge => "payload too large",
            LocalReason::HeadersTooLarge => "request headers too large",
            LocalReason::StreamIdleTimeout => "stream idle timeout",
            LocalReason::MaxStreamDuration => "downstream duration timeout",
            LocalReason::RequestTimeout => "request timeout",
            LocalReason::UpstreamMaxStreamDuration(_) => "upstream max stream duration reached",
            LocalReason::Unauthenticated => "unauthenticated",
            LocalReason::Forbidden => "forbidden",
            LocalReason::RateLimited => "rate limited",
            LocalReason::FilterConfigError => "filter configuration error",
            LocalReason::DropOverload => "drop overload",
            LocalReason::Overloaded => "overloaded",
        }
    }
}

/// Builds meshgate's own answer: a short text body starting with
/// `meshgate: `, as every message meshgate itself puts in a protocol error
/// (Dubbo, Bolt, gRPC, HTTP bodies), and the `LocalReason` as an extension,
/// from which a codec family renders its own form (the `proxy` filter a
/// gRPC status for gRPC requests, RPC codecs an error frame). Counted in
/// `meshgate_downstream_rq_local_reply_total{reason}`.
pub fn local_reply(info: &mut StreamInfo, reason: LocalReason) -> Response {
    info.local_reply = Some(reason.label());
    metrics::counter!(crate::metrics::names::DOWNSTREAM_RQ_LOCAL_REPLY_TOTAL, "reason" => reason.label()).increment(1);
    let mut resp = http::Response::new(full_body(format!("meshgate: {}\n", reason.message())));
    *resp.status_mut() = reason.status();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if matches!(reason, LocalReason::Overflow | LocalReason::Overloaded)
        && !info.suppress_envoy_headers
    {
        // Envoy's mark of a circuit breaker's refusal (off with the
        // router's `suppress_envoy_headers`).
        resp.headers_mut().insert(
            http::HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    resp.extensions_mut().insert(reason);
    resp
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The future of an `Upgrade`: the raw byte stream after the 101.
pub type UpgradeFuture =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn crate::network::AsyncIo>>> + Send>>;

/// A connection upgrade (HTTP/1.1 `Upgrade`, e.g. WebSocket) offered by a
/// codec as a request or response extension: it resolves to the raw byte
/// stream once the `101 Switching Protocols` has been exchanged. The `proxy`
/// filter joins the downstream and upstream ones into a tunnel, without
/// knowing which codec made them. (Clone + Sync only because `http`
/// extensions require it; the future is taken once.)
#[derive(Clone)]
pub struct Upgrade(Arc<std::sync::Mutex<Option<UpgradeFuture>>>);

impl Upgrade {
    pub fn new(fut: UpgradeFuture) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(fut))))
    }

    /// The future, the first time it is asked for.
    pub fn take(&self) -> Option<UpgradeFuture> {
        self.0.lock().ok()?.take()
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn metadata_is_set_per_namespace_and_read_by_path() {
        let mut m = DynamicMetadata::default();
        m.set(
            "envoy.filters.http.jwt_authn",
            "payload",
            serde_json::json!({"sub": "alice", "groups": {"admin": true}}),
        );
        m.set(
            "envoy.filters.http.jwt_authn",
            "other",
            serde_json::json!(1),
        );
        assert_eq!(
            m.get("envoy.filters.http.jwt_authn", &["payload", "sub"]),
            Some(&serde_json::json!("alice"))
        );
        assert_eq!(
            m.get(
                "envoy.filters.http.jwt_authn",
                &["payload", "groups", "admin"]
            ),
            Some(&serde_json::json!(true))
        );
        assert_eq!(
            m.get("envoy.filters.http.jwt_authn", &["payload", "x"]),
            None
        );
        assert_eq!(m.get("other", &[]), None);
        assert_eq!(m.as_map().len(), 1);
    }
}
