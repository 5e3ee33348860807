//! Codecs (DESIGN.md layer 3): the extension point that turns bytes into
//! streams. A codec is registered by name as a `CodecFactory`; it can
//! recognise its protocol from a connection's first bytes (for listeners
//! that auto-detect), serve downstream connections (`ServerCodec`) and send
//! streams to upstream endpoints over core's pools (`ClientCodec`). Core
//! knows only these traits: HTTP/1, HTTP/2, Dubbo, Bolt and users' own
//! protocols live outside it.
//!
//! A server codec only speaks its protocol: it declares its ALPN ids
//! (`ServerCodec::alpn`) and what its streams can carry (`ProtocolTraits`),
//! and winds a connection down when the connection manager (the `proxy`
//! filter, which alone watches the server's drain and the listener's
//! retire) gives it a notice (`Notices`, `GoAway`). docs/architecture.md
//! has the life of a connection.

use crate::cluster::{Cluster, Endpoint};
use crate::error::BuildError;
use crate::network::{Connection, ServeFuture};
use crate::stream::{Request, Response, StreamInfo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The answer of a codec looking at a connection's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// These bytes are this codec's protocol.
    Match,
    /// They are not.
    NoMatch,
    /// Not enough bytes to tell yet.
    NeedMore,
}

/// A boxed response future; it may borrow the handler.
pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// What a downstream codec calls for every decoded stream: the `proxy`
/// network filter's stream filters and router. It always yields a response
/// (a local reply when meshgate fails the stream).
///
/// The future borrows the handler: a codec that awaits streams in its
/// connection's task (HTTP/1.1) lends its handler, where a `'static`
/// future would take a reference count per request; a codec that spawns
/// streams moves a clone of the `Arc` into the task.
pub trait StreamHandler: Send + Sync + 'static {
    fn handle(&self, req: Request, info: StreamInfo) -> ResponseFuture<'_>;

    /// How long a multiplexed connection (HTTP/2, HTTP/3) may have no active
    /// stream before it is closed with a GOAWAY: Envoy's
    /// `common_http_protocol_options.idle_timeout`. `None`: never.
    fn idle_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// What a downstream protocol can carry, declared by its server codec and
/// stamped on every stream it decodes (`StreamInfo::traits`): the
/// connection manager and the router act on these properties, never on a
/// codec's name. All false (the default) suits a protocol that carries no
/// HTTP fields (an RPC codec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolTraits {
    /// HTTP/1.1 framing: an upstream response's transfer codings
    /// (`chunked`) can be passed on as they are.
    pub carries_codings: bool,
    /// The request's authority travels in `Host` (HTTP/1): an absolute-form
    /// URI's authority wins over it. Otherwise `:authority` is the
    /// authority and a `host` that differs is refused.
    pub authority_in_host: bool,
    /// Response header fields reach the client (the HTTP family): the
    /// `server` header is meshgate's to set.
    pub response_headers: bool,
    /// The client may be pointed at an HTTP/3 listener (`alt-svc`): HTTP
    /// over TCP.
    pub alt_svc: bool,
}

/// Why the connection manager asks a server codec to wind its connection
/// down. Ordered: a drain also covers what a retire asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GoAway {
    /// A reload replaced the connection's listener or filter chain: the
    /// stream in progress finishes, then the connection closes so that the
    /// client's next request meets the new config (HTTP/1.1 `connection:
    /// close` on the next response, HTTP/2 and HTTP/3 GOAWAY, RPC stops
    /// reading calls). An idle HTTP/1.1 connection stays until its next
    /// request.
    Retire = 1,
    /// The server is shutting down: as for `Retire`, and an idle
    /// connection is closed too.
    Drain = 2,
}

/// The connection manager's notices to the codec serving one connection:
/// the `proxy` filter, which alone watches the server's drain and the
/// listener's retire, calls [`go_away`](Self::go_away); the codec reads
/// [`current`](Self::current) (one atomic load) where it decides whether to
/// keep a connection, and waits on [`changed`](Self::changed).
#[derive(Debug, Clone, Default)]
pub struct Notices(Arc<NoticesInner>);

#[derive(Debug, Default)]
struct NoticesInner {
    /// 0, or the highest `GoAway` given.
    kind: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

impl Notices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the codec to wind the connection down; a notice below one
    /// already given changes nothing.
    pub fn go_away(&self, kind: GoAway) {
        let prev = self
            .0
            .kind
            .fetch_max(kind as u8, std::sync::atomic::Ordering::AcqRel);
        if prev < kind as u8 {
            self.0.notify.notify_waiters();
        }
    }

    /// The strongest notice given so far.
    pub fn current(&self) -> Option<GoAway> {
        match self.0.kind.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            1 => Some(GoAway::Retire),
            _ => Some(GoAway::Drain),
        }
    }

    /// Completes with the current notice once it is stronger than `seen`.
    pub async fn changed(self, seen: Option<GoAway>) -> GoAway {
        loop {
            // Registered before the check: a notice given between the
            // check and the wait still wakes it.
            let notified = self.0.notify.notified();
            if let Some(k) = self.current()
                && Some(k) > seen
            {
                return k;
            }
            notified.await;
        }
    }
}

/// The downstream side of a codec.
pub trait ServerCodec: Send + Sync + 'static {
    /// The ALPN protocol ids (RFC 7301) this codec serves, e.g. `h2`: on a
    /// TLS or QUIC connection the id the handshake agreed on picks the
    /// codec. An id equal to the codec's registered name picks it too.
    fn alpn(&self) -> &'static [&'static str] {
        &[]
    }

    /// Reads streams from `conn` (starting with `conn.preface`), hands each
    /// to `handler` and writes the responses back, until the connection
    /// ends. On a notice from `notices` it finishes in-flight streams and
    /// closes gracefully as [`GoAway`] describes; the connection manager
    /// watches the server and the listener, the codec only `notices`.
    fn serve(
        self: Arc<Self>,
        conn: Connection,
        handler: Arc<dyn StreamHandler>,
        notices: Notices,
    ) -> ServeFuture;
}

/// A boxed error: the source of an `UpstreamError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure an `UpstreamError` is, for the router's decisions
/// (local reply, retry) and the endpoint's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be had (refused, timed out, TLS failed).
    Connect,
    /// The circuit breaker refused a new connection.
    Overflow,
    /// The connection or stream was reset before a response head.
    Reset,
    /// The upstream broke the protocol (a bad response head, say).
    Protocol,
    /// No response head by the deadline.
    Timeout,
    /// The downstream request body was malformed: the client's fault.
    MalformedRequestBody,
}

/// Why an upstream exchange failed before a response head arrived. Each
/// variant but the bare ones keeps its cause as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(#[source] BoxError),
    #[error("circuit breaker open")]
    Overflow,
    #[error("upstream reset before the response: {0}")]
    Reset(#[source] BoxError),
    #[error("upstream protocol error: {0}")]
    Protocol(#[source] BoxError),
    /// No response head by the deadline given to `ClientCodec::send_by`.
    #[error("no response by the deadline")]
    Timeout,
    /// The downstream request body was malformed (`stream::MalformedBody`)
    /// while it was being sent: the client's fault, answered with 400.
    #[error("{0}")]
    MalformedRequestBody(#[source] BoxError),
}

impl UpstreamError {
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect(_) => UpstreamErrorKind::Connect,
            UpstreamError::Overflow => UpstreamErrorKind::Overflow,
            UpstreamError::Reset(_) => UpstreamErrorKind::Reset,
            UpstreamError::Protocol(_) => UpstreamErrorKind::Protocol,
            UpstreamError::Timeout => UpstreamErrorKind::Timeout,
            UpstreamError::MalformedRequestBody(_) => UpstreamErrorKind::MalformedRequestBody,
        }
    }

    /// Whether another try (on another endpoint or connection) may
    /// succeed, if the route's retry policy retries this kind: not for an
    /// open circuit breaker (more load is what it refuses) nor for the
    /// client's own malformed body.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self.kind(),
            UpstreamErrorKind::Overflow | UpstreamErrorKind::MalformedRequestBody
        )
    }

    /// Whether the upstream refused the stream (HTTP/2 REFUSED_STREAM:
    /// it never processed the request; a codec marks it with
    /// [`RefusedStream`]).
    pub fn is_refused_stream(&self) -> bool {
        match self {
            UpstreamError::Reset(e) => e.is::<RefusedStream>(),
            _ => false,
        }
    }

    /// Whether the upstream reset the stream alone (an HTTP/2 RST_STREAM,
    /// an HTTP/3 RESET_STREAM; a refused stream too), not the connection:
    /// Envoy's remote reset (flag `UR`) rather than a connection
    /// termination (`UC`). A codec marks it with [`RemoteStreamReset`].
    pub fn is_remote_stream_reset(&self) -> bool {
        match self {
            UpstreamError::Reset(e) => e.is::<RemoteStreamReset>() || e.is::<RefusedStream>(),
            _ => false,
        }
    }

    /// The endpoint's outcome for this failure; `None` when the endpoint
    /// is not to blame (the breaker, the client's body).
    pub fn outcome(&self) -> Option<crate::pool::Outcome> {
        use crate::pool::Outcome;
        Some(match self.kind() {
            UpstreamErrorKind::Connect => Outcome::ConnectFailure,
            UpstreamErrorKind::Reset => Outcome::Reset,
            UpstreamErrorKind::Timeout => Outcome::Timeout,
            UpstreamErrorKind::Protocol => Outcome::ServerError,
            UpstreamErrorKind::Overflow | UpstreamErrorKind::MalformedRequestBody => return None,
        })
    }
}

impl From<crate::cluster::ConnectError> for UpstreamError {
    fn from(e: crate::cluster::ConnectError) -> Self {
        match e {
            crate::cluster::ConnectError::Overflow(_) => UpstreamError::Overflow,
            other => UpstreamError::Connect(Box::new(other)),
        }
    }
}

/// The source of an `UpstreamError::Reset` whose stream the upstream
/// refused before processing it (retry policy `refused-stream`).
#[derive(Debug, thiserror::Error)]
#[error("stream refused by the upstream: {0}")]
pub struct RefusedStream(#[source] pub BoxError);

/// The source of an `UpstreamError::Reset` of one stream by the upstream
/// (HTTP/2 RST_STREAM, HTTP/3 RESET_STREAM) while its connection stays.
#[derive(Debug, thiserror::Error)]
#[error("stream reset by the upstream: {0}")]
pub struct RemoteStreamReset(#[source] pub BoxError);

/// The upstream request outlived the cluster's `max_stream_duration`
/// (Envoy's `UMSDR`): carried in `UpstreamError::Reset` by the codec that
/// reset it, with whether the downstream request had arrived whole (504)
/// or not (408).
#[derive(Debug, thiserror::Error)]
#[error("upstream max stream duration reached")]
pub struct MaxStreamDurationReached {
    pub request_whole: bool,
}

/// A boxed upstream-response future.
pub type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response, UpstreamError>> + Send + 'static>>;

/// The upstream side of a codec: sends streams to endpoints over the
/// connections of core's pool (`crate::pool`: an `ExclusivePool` for
/// HTTP/1, a `MuxPool` for HTTP/2, HTTP/3 and RPC), kept on the endpoint.
pub trait ClientCodec: Send + Sync + 'static {
    /// Sends `req` to `endpoint` of `cluster`, on a connection of the
    /// endpoint's pool (`Endpoint::pool`), a new one opened through the
    /// pool's `Dial`.
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture;

    /// Sends like [`send`](Self::send), failing with
    /// `UpstreamError::Timeout` if no response head arrived by `deadline`;
    /// `Err(req)` (the default) if the codec does not watch deadlines
    /// itself, and the caller arms a timer around `send`. A codec that
    /// owns its connection for the exchange can watch the deadline with
    /// one timer per connection, re-armed only when it fires, instead of a
    /// timer registered and cancelled per request.
    // The request comes back unsent when the codec declines: moved, not
    // boxed, as the common path must not allocate for it.
    #[allow(clippy::result_large_err)]
    fn send_by(
        &self,
        _cluster: &Arc<Cluster>,
        _endpoint: &Arc<Endpoint>,
        req: Request,
        _deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        Err(req)
    }

    /// A client of this codec's protocol for the active health checks of
    /// one endpoint of `cluster` (`codec_client_type: HTTP3` on an http3
    /// cluster): it keeps its own connection, outside the endpoint's
    /// traffic pool and circuit breakers, as Envoy's checkers do. `None`
    /// (the default): the codec has none, and such checks are refused
    /// when the cluster is built.
    fn health_check_client(
        &self,
        _cluster: &Arc<Cluster>,
        _endpoint: &Arc<Endpoint>,
    ) -> Option<Box<dyn HealthCheckClient>> {
        None
    }
}

/// An active health check's HTTP client (`ClientCodec::health_check_client`).
pub trait HealthCheckClient: Send + 'static {
    /// Sends `req` (no body) on the connection kept from the last check,
    /// or a new one, and returns the response head (its body is read off
    /// and dropped); `None` when the connection or the stream failed.
    /// Without `reuse` (`reuse_connection: false`) the connection is
    /// closed after the check.
    fn check(
        &mut self,
        req: http::Request<()>,
        reuse: bool,
    ) -> Pin<Box<dyn Future<Output = Option<http::response::Parts>> + Send + '_>>;
}

/// A codec registered by name.
pub trait CodecFactory: Send + Sync {
    fn name(&self) -> &'static str;
    /// Recognises the protocol from the first bytes of a connection.
    fn detect(&self, preface: &[u8]) -> Detection;
    /// Where this codec stands in detection on a listener that detects the
    /// protocol: higher first. A codec with a precise signature (a magic
    /// number, a preface) keeps the default 0; a catch-all (HTTP/1 claims
    /// any request line) goes below it, so it never shadows another
    /// codec. A codec whose detector says `NeedMore` holds back a lower
    /// one's `Match` until it decides.
    fn detect_priority(&self) -> i32 {
        0
    }
    /// Builds the downstream side from the listener's codec options.
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError>;
    /// Builds the upstream side from the cluster's protocol options.
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError>;
    /// The upstream side of a `protocol: auto` cluster
    /// (`crate::upstream_protocol::AUTO`), asked of the `http2` codec: per
    /// endpoint, this codec when its TLS handshake negotiates `h2` by
    /// ALPN, else HTTP/1.1. `None`: this codec does not offer it.
    fn alpn_client(
        &self,
        _config: &serde_json::Value,
    ) -> Option<Result<Arc<dyn ClientCodec>, BuildError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_only_grow_and_wake_waiters() {
        let n = Notices::new();
        assert_eq!(n.current(), None);
        let waiting = tokio::spawn(n.clone().changed(None));
        let beyond_retire = n.clone().changed(Some(GoAway::Retire));
        n.go_away(GoAway::Retire);
        assert_eq!(waiting.await.unwrap(), GoAway::Retire);
        assert_eq!(n.current(), Some(GoAway::Retire));
        let beyond_retire = tokio::spawn(beyond_retire);
        n.go_away(GoAway::Drain);
        assert_eq!(beyond_retire.await.unwrap(), GoAway::Drain);
        // A weaker notice after a stronger one changes nothing.
        n.go_away(GoAway::Retire);
        assert_eq!(n.current(), Some(GoAway::Drain));
        assert_eq!(n.clone().changed(None).await, GoAway::Drain);
    }
}
