//! The multiplexed-RPC frame layer shared by the Dubbo and Bolt codecs (and
//! any user codec of the same shape): a frame has a request id, a kind
//! (request, one-way, response, heartbeat), a head that the protocol maps
//! onto the stream head (path `/{service}/{method}`, headers for service,
//! method, version, group and every attachment) and a body forwarded as
//! bytes, untouched.
//!
//! Downstream (`RpcServer`): frames are read with a bounded buffer, each
//! request becomes a stream handed to the `proxy` filter, responses are
//! written back in completion order with the client's request id.
//! Heartbeats are answered here; responses sent by a client are dropped and
//! counted. Meshgate's own failures (no route, timeout, circuit open...)
//! become the protocol's error response, never a silent close.
//!
//! Upstream (`RpcClient`): calls multiplexed on the connections of the
//! endpoint's pool (core's `MuxPool`, connections opened through its
//! `Dial`); every request gets a fresh upstream id and a pending slot, the
//! response is
//! matched by id and handed back (the downstream id is restored by the
//! server side). A response for an id nobody waits for is dropped and
//! counted; heartbeats from the provider are answered.

pub mod hessian;
pub mod hessian_value;
pub mod hessian_write;
pub mod http_gateway;
pub mod trace;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body_util::BodyExt;
use meshgate_core::cluster::{Cluster, Endpoint};
use meshgate_core::codec::{
    ClientCodec, GoAway, Notices, ServerCodec, StreamHandler, UpstreamError, UpstreamFuture,
};
use meshgate_core::network::{Connection, ServeFuture};
use meshgate_core::pool::{Dial, Multiplexed, MuxPool, MuxStream};
use meshgate_core::stream::{LocalReason, Request, Response, StreamInfo, full_body};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A call that expects a response.
    Request,
    /// A call that gets no response.
    OneWay,
    Response,
    HeartbeatRequest,
    HeartbeatResponse,
}

/// One decoded frame: its id and kind, the protocol's head bytes (fixed
/// header plus any routing section) and the body.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    pub head: Bytes,
    pub body: Bytes,
}

/// Why bytes are not a valid frame. `id` is set when the header was
/// readable, so that the protocol can answer with an error response.
#[derive(Debug, Clone)]
pub struct FrameError {
    /// Metric label: `bad_magic`, `too_large`, `malformed`...
    pub reason: &'static str,
    pub message: String,
    pub request: Option<(FrameKind, u64, Bytes)>,
}

impl FrameError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            request: None,
        }
    }
}

/// Why a request frame cannot become a request: its routing head is
/// unreadable or unsupported, or its service and method make no path. The
/// caller answers it with the protocol's bad-request error response,
/// carrying `Display` (the message) as the readable text.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestHeadError {
    pub kind: RequestHeadErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// What kind of [`RequestHeadError`] it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHeadErrorKind {
    /// The head's bytes are malformed (a bad length, a missing field).
    Malformed,
    /// Well-formed, but meshgate does not route it (e.g. a Dubbo
    /// serialization other than hessian2).
    Unsupported,
    /// The service or method is not usable as the request's path.
    BadPath,
}

impl RequestHeadError {
    pub fn new(kind: RequestHeadErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A malformed head.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(RequestHeadErrorKind::Malformed, message)
    }

    /// The same error, caused by `source` (a decoding error).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// The routing view of a request frame: what the stream head carries.
#[derive(Debug, Default)]
pub struct RpcHead {
    pub service: String,
    pub method: String,
    /// Further headers (`version`, `group`, attachments...), lowercase names.
    pub headers: Vec<(String, String)>,
}

/// The kind of error response meshgate makes; the protocol picks its
/// status code for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcErrorKind {
    NotFound,
    Timeout,
    BadRequest,
    BadResponse,
    Unavailable,
    Overloaded,
    ServiceError,
}

impl RpcErrorKind {
    pub fn from_local_reason(r: LocalReason) -> Self {
        match r {
            LocalReason::NoRoute => Self::NotFound,
            LocalReason::UpstreamTimeout
            | LocalReason::StreamIdleTimeout
            | LocalReason::MaxStreamDuration
            | LocalReason::RequestTimeout
            | LocalReason::UpstreamMaxStreamDuration(_) => Self::Timeout,
            LocalReason::BadRequest
            | LocalReason::PayloadTooLarge
            | LocalReason::HeadersTooLarge => Self::BadRequest,
            LocalReason::UpstreamProtocolError => Self::BadResponse,
            LocalReason::NoHealthyUpstream | LocalReason::UpstreamConnectFailure => {
                Self::Unavailable
            }
            LocalReason::Overflow | LocalReason::DropOverload | LocalReason::Overloaded => {
                Self::Overloaded
            }
            LocalReason::UpstreamReset | LocalReason::UpstreamRemoteReset => Self::ServiceError,
            LocalReason::ClusterNotFound => Self::Unavailable,
            // A stream filter's refusal: the service error status, whose
            // message says why (never BAD_REQUEST).
            LocalReason::Unauthenticated
            | LocalReason::Forbidden
            | LocalReason::FilterConfigError => Self::ServiceError,
            LocalReason::RateLimited => Self::Overloaded,
        }
    }

    /// For responses made by stream filters or direct responses.
    pub fn from_http_status(s: http::StatusCode) -> Self {
        match s.as_u16() {
            404 => Self::NotFound,
            408 | 504 => Self::Timeout,
            400..=403 | 405..=407 | 409..=428 | 430..=499 => Self::BadRequest,
            429 => Self::Overloaded,
            502 => Self::BadResponse,
            503 => Self::Unavailable,
            _ => Self::ServiceError,
        }
    }
}

/// A multiplexed RPC protocol: framing, the routing head, and the
/// responses meshgate writes itself.
pub trait RpcProtocol: Send + Sync + 'static {
    /// The codec's registered name (`dubbo`, `bolt`).
    fn name(&self) -> &'static str;
    /// Splits one frame off the front of `buf`; `Ok(None)` when more bytes
    /// are needed. Must refuse a declared body over `max_body` before
    /// waiting for it.
    fn decode(&self, buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError>;
    /// The routing view of a request frame; an error is a bad request.
    fn request_head(&self, frame: &Frame) -> Result<RpcHead, RequestHeadError>;
    /// The frame's head bytes with another request id.
    fn head_with_id(&self, head: &Bytes, id: u64) -> Bytes;
    /// The answer to a heartbeat request.
    fn heartbeat_response(&self, req: &Frame) -> Bytes;
    /// An error response to `req` with a readable message.
    fn error_response(&self, req_head: &Bytes, id: u64, kind: RpcErrorKind, message: &str)
    -> Bytes;
    /// The HTTP status a response frame counts as (metrics, retries,
    /// access logs), and a header to show the protocol's own status.
    fn response_status(&self, frame: &Frame) -> (http::StatusCode, &'static str, HeaderValue);
    /// Largest request id plus one (ids wrap below it; 0 is never used).
    fn id_space(&self) -> u64 {
        1 << 31
    }
    /// Calls in flight on one upstream connection; beyond, the endpoint's
    /// pool opens another connection (`Multiplexed::max_streams`).
    fn max_calls_per_connection(&self) -> u32 {
        u32::MAX
    }
    /// The request frame (head, body) rewritten to carry `ctx` as its trace
    /// context (`trace`), the body at most `max_body` bytes. `Ok(None)`:
    /// the protocol has no place for it; `Err(reason)`: this frame cannot
    /// take it (`trace::TOO_LARGE`, `trace::MALFORMED`) and goes unchanged.
    fn with_trace_context(
        &self,
        _head: &Bytes,
        _body: &Bytes,
        _ctx: &trace::TraceContext<'_>,
        _max_body: usize,
    ) -> Result<Option<(Bytes, Bytes)>, &'static str> {
        Ok(None)
    }
}

/// A request or response frame carried through the stream layer as an
/// extension, so that the other side of the same protocol re-emits it
/// with its own request id.
#[derive(Debug, Clone)]
pub struct RpcFrame {
    pub protocol: &'static str,
    pub kind: FrameKind,
    pub head: Bytes,
    /// The `traceparent` the frame carries (as the stream header it
    /// became): the client rewrites the frame only when the stream's
    /// differs.
    pub traceparent: Option<HeaderValue>,
}

fn default_max_body() -> usize {
    8 << 20
}
fn default_max_concurrent() -> usize {
    1024
}
fn default_frame_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attachments() -> usize {
    64
}

/// Downstream options (`codec_options.<dubbo|bolt>` of the `proxy` filter).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcServerOptions {
    /// Largest frame body accepted; larger frames get a bad-request
    /// response (when the protocol has one) and the connection is closed.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests in flight per connection; beyond, reading pauses.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// A frame whose first bytes arrived must be complete within this.
    #[serde(default = "default_frame_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Attachments (header-map entries) exposed as stream headers.
    #[serde(default = "default_max_attachments")]
    pub max_attachments: usize,
}

/// Upstream options (`protocol_options` of a cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcClientOptions {
    /// Largest response body accepted from a provider.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Calls in flight on one upstream connection (default: the
    /// protocol's, unbounded for Dubbo and Bolt). A call past it on every
    /// connection opens another one, or at the cluster's `max_connections`
    /// waits in its pending queue (`max_pending_requests`).
    #[serde(default)]
    pub max_concurrent_calls: Option<u32>,
}

/// Writes the frames a channel delivers, coalescing small ones. Returns
/// the writer, flushed, once every sender is gone (`None` after a write
/// error): the caller shuts it down, or migrates the connection.
async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<(Bytes, Bytes)>,
) -> Option<W> {
    let mut w = BufWriter::with_capacity(32 * 1024, w);
    while let Some((head, body)) = rx.recv().await {
        if w.write_all(&head).await.is_err() || w.write_all(&body).await.is_err() {
            return None;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return None;
        }
    }
    w.flush().await.ok()?;
    Some(w.into_inner())
}

/// The downstream side of an RPC codec.
pub struct RpcServer<P: RpcProtocol> {
    proto: Arc<P>,
    opts: RpcServerOptions,
}

impl<P: RpcProtocol> RpcServer<P> {
    pub fn new(proto: Arc<P>, opts: RpcServerOptions) -> Self {
        Self { proto, opts }
    }
}

fn protocol_error(listener: &str, codec: &'static str, reason: &'static str) {
    metrics::counter!(meshgate_core::metrics::names::RPC_DOWNSTREAM_PROTOCOL_ERROR_TOTAL, "listener" => listener.to_string(), "codec" => codec, "reason" => reason).increment(1);
}

impl<P: RpcProtocol> ServerCodec for RpcServer<P> {
    fn serve(
        self: Arc<Self>,
        conn: Connection,
        handler: Arc<dyn StreamHandler>,
        notices: Notices,
    ) -> ServeFuture {
        Box::pin(async move {
            let (io, info, _) = conn.into_prefixed();
            let go_away = notices.changed(None);
            tokio::pin!(go_away);
            let info = Arc::new(info);
            let name = self.proto.name();
            let listener = info.listener.to_string();
            let (mut rd, wr) = tokio::io::split(io);
            let (tx, rx) = mpsc::channel::<(Bytes, Bytes)>(256);
            let writer = tokio::spawn(write_loop(wr, rx));
            let permits = Arc::new(Semaphore::new(self.opts.max_concurrent_requests.max(1)));
            let heartbeats = metrics::counter!(meshgate_core::metrics::names::RPC_DOWNSTREAM_HEARTBEAT_TOTAL, "listener" => listener.clone(), "codec" => name);
            let stray = metrics::counter!(meshgate_core::metrics::names::RPC_DOWNSTREAM_UNEXPECTED_RESPONSE_TOTAL, "listener" => listener.clone(), "codec" => name);
            let mut buf = BytesMut::with_capacity(8 * 1024);
            // When the frame at the front of `buf` must be complete.
            let mut deadline: Option<tokio::time::Instant> = None;
            // The drain of a hot upgrade that migrates connections: the
            // connection goes to the new process once its calls are done.
            let mut migrate = false;
            'conn: loop {
                loop {
                    match self.proto.decode(&mut buf, self.opts.max_body_bytes) {
                        Ok(Some(frame)) => {
                            deadline = None;
                            match frame.kind {
                                FrameKind::HeartbeatRequest => {
                                    heartbeats.increment(1);
                                    let r = self.proto.heartbeat_response(&frame);
                                    if tx.send((r, Bytes::new())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                FrameKind::Response | FrameKind::HeartbeatResponse => {
                                    stray.increment(1);
                                }
                                FrameKind::Request | FrameKind::OneWay => {
                                    let Ok(permit) = permits.clone().acquire_owned().await else {
                                        break 'conn;
                                    };
                                    let me = self.clone();
                                    let handler = handler.clone();
                                    let info = info.clone();
                                    let tx = tx.clone();
                                    tokio::spawn(async move {
                                        let _permit = permit;
                                        me.call(frame, handler, info, tx).await;
                                    });
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            protocol_error(&listener, name, e.reason);
                            tracing::debug!(conn = info.id, codec = name, reason = e.reason, error = %e.message, "rpc protocol error; closing");
                            if let Some((FrameKind::Request, id, head)) = &e.request {
                                let r = self.proto.error_response(
                                    head,
                                    *id,
                                    RpcErrorKind::BadRequest,
                                    &e.message,
                                );
                                let _ = tx.send((r, Bytes::new())).await;
                            }
                            break 'conn;
                        }
                    }
                }
                // A frame that has started must complete in time, however
                // slowly its bytes trickle in.
                if buf.is_empty() {
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + self.opts.frame_timeout);
                }
                let read = async {
                    match deadline {
                        None => Ok(rd.read_buf(&mut buf).await),
                        Some(d) => tokio::time::timeout_at(d, rd.read_buf(&mut buf)).await,
                    }
                };
                tokio::select! {
                    r = read => match r {
                        Ok(Ok(0)) => {
                            if !buf.is_empty() {
                                protocol_error(&listener, name, "truncated");
                            }
                            break;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            protocol_error(&listener, name, "frame_timeout");
                            break;
                        }
                    },
                    // Drain, or a reload replaced this listener's config:
                    // calls read so far finish, then the connection closes
                    // and the client reconnects (to the new config).
                    kind = &mut go_away => {
                        migrate = kind == GoAway::Drain && meshgate_core::upgrade::migrate::open();
                        break;
                    }
                }
            }
            // Let calls in flight finish and their responses be written.
            drop(tx);
            match writer.await.ok().flatten() {
                // Stopped reading at a frame boundary (`buf` holds at most
                // the start of the next frame): the socket and those bytes
                // go to the new process, which reads on from there.
                Some(w) if migrate => {
                    let io = rd.unsplit(w);
                    let _ = meshgate_core::upgrade::migrate::migrate(&info, io, &buf).await;
                }
                Some(mut w) => {
                    let _ = w.shutdown().await;
                }
                None => {}
            }
        })
    }
}

impl<P: RpcProtocol> RpcServer<P> {
    async fn call(
        &self,
        frame: Frame,
        handler: Arc<dyn StreamHandler>,
        info: Arc<meshgate_core::network::ConnectionInfo>,
        tx: mpsc::Sender<(Bytes, Bytes)>,
    ) {
        let one_way = frame.kind == FrameKind::OneWay;
        let id = frame.id;
        let head = match self.proto.request_head(&frame) {
            Ok(h) => h,
            Err(e) => {
                protocol_error(&info.listener, self.proto.name(), "bad_request");
                if !one_way {
                    let msg = e.to_string();
                    let r =
                        self.proto
                            .error_response(&frame.head, id, RpcErrorKind::BadRequest, &msg);
                    let _ = tx.send((r, Bytes::new())).await;
                }
                return;
            }
        };
        let req = match self.to_request(head, &frame) {
            Ok(r) => r,
            Err(e) => {
                if !one_way {
                    let msg = e.to_string();
                    let r =
                        self.proto
                            .error_response(&frame.head, id, RpcErrorKind::BadRequest, &msg);
                    let _ = tx.send((r, Bytes::new())).await;
                }
                return;
            }
        };
        let resp = handler
            .handle(req, StreamInfo::new(info, self.proto.name()))
            .await;
        if one_way {
            return;
        }
        let out = self.encode_response(&frame.head, id, resp).await;
        let _ = tx.send(out).await;
    }

    fn to_request(&self, head: RpcHead, frame: &Frame) -> Result<Request, RequestHeadError> {
        let path = format!("/{}/{}", head.service, head.method);
        let uri: http::Uri = path.parse().map_err(|e| {
            RequestHeadError::new(
                RequestHeadErrorKind::BadPath,
                format!("service or method not usable as a path: {path}"),
            )
            .with_source(e)
        })?;
        let mut req = Request::new(full_body(frame.body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        let mut count = 0;
        for (k, v) in head.headers {
            if count >= self.opts.max_attachments {
                break;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                h.append(n, v);
                count += 1;
            }
        }
        for (k, v) in [("service", &head.service), ("method", &head.method)] {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(k, v);
            }
        }
        let traceparent = h.get(meshgate_core::trace::context::TRACEPARENT).cloned();
        req.extensions_mut().insert(RpcFrame {
            protocol: self.proto.name(),
            kind: frame.kind,
            head: frame.head.clone(),
            traceparent,
        });
        Ok(req)
    }

    /// The frame that answers downstream request `id`: the provider's own
    /// response re-labelled with the client's id, or meshgate's error.
    async fn encode_response(&self, req_head: &Bytes, id: u64, resp: Response) -> (Bytes, Bytes) {
        let name = self.proto.name();
        let (mut parts, body) = resp.into_parts();
        let reason = parts.extensions.remove::<LocalReason>();
        if reason.is_none()
            && let Some(f) = parts.extensions.remove::<RpcFrame>()
            && f.protocol == name
            && f.kind == FrameKind::Response
        {
            return match collect_limited(body, self.opts.max_body_bytes).await {
                Some(b) => (self.proto.head_with_id(&f.head, id), b),
                None => (
                    self.proto.error_response(
                        req_head,
                        id,
                        RpcErrorKind::BadResponse,
                        "upstream response body failed",
                    ),
                    Bytes::new(),
                ),
            };
        }
        let (kind, message) = match reason {
            Some(r) => (
                RpcErrorKind::from_local_reason(r),
                format!("meshgate: {}", r.message()),
            ),
            None => {
                // A response made by a filter or a direct response, or an
                // upstream of another protocol: its status says what kind
                // of error; a short text body is kept as the message.
                let text = collect_limited(body, 512)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let status = parts.status;
                let kind = if status.is_success() {
                    RpcErrorKind::BadResponse
                } else {
                    RpcErrorKind::from_http_status(status)
                };
                let mut m = format!("meshgate: HTTP {status}");
                if status.is_success() {
                    m.push_str(" is not a response of this protocol");
                } else if !text.is_empty() {
                    m.push_str(": ");
                    m.push_str(&text);
                }
                (kind, m)
            }
        };
        (
            self.proto.error_response(req_head, id, kind, &message),
            Bytes::new(),
        )
    }
}

/// One multiplexed upstream connection.
struct UpConn {
    tx: mpsc::Sender<(Bytes, Bytes)>,
    /// The connection's local address (`%UPSTREAM_LOCAL_ADDRESS%`).
    local: Option<std::net::SocketAddr>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl UpConn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.tx.is_closed()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // Dropping the waiters fails their calls with a reset.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Removes a call's pending slot when the caller gives up (timeout).
struct PendingGuard {
    conn: Arc<UpConn>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.conn
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A pooled RPC connection. The pool and the calls in flight hold it
/// strongly, its reader weakly: once none holds it (its endpoint left the
/// cluster, or the cluster went away), the write half ends and the
/// connection closes.
struct RpcConn(Arc<UpConn>, u32);

impl Multiplexed for RpcConn {
    fn is_open(&self) -> bool {
        !self.0.is_closed()
    }
    fn max_streams(&self) -> u32 {
        self.1
    }
}

/// The upstream side of an RPC codec: calls multiplexed on the endpoint's
/// connections (core's `MuxPool`), a new one opened when none is open.
pub struct RpcClient<P: RpcProtocol> {
    proto: Arc<P>,
    opts: RpcClientOptions,
}

impl<P: RpcProtocol> RpcClient<P> {
    pub fn new(proto: Arc<P>, opts: RpcClientOptions) -> Self {
        Self { proto, opts }
    }
}

/// A call's place on one of the endpoint's connections.
async fn get_conn<P: RpcProtocol>(
    proto: &Arc<P>,
    max_body: usize,
    max_calls: Option<u32>,
    cluster: &Arc<Cluster>,
    endpoint: &Arc<Endpoint>,
    priority: meshgate_core::config::circuit_breakers::RoutingPriority,
) -> Result<MuxStream<RpcConn>, UpstreamError> {
    let pool = endpoint
        .pool_at(priority, MuxPool::<RpcConn>::default)
        .ok_or_else(|| UpstreamError::Connect("endpoint pool of another codec".into()))?;
    pool.stream(Dial::at(cluster, endpoint, priority), |dial| {
        connect(proto, max_body, max_calls, dial)
    })
    .await
}

/// Opens a connection through `dial` and starts its reader and writer.
async fn connect<P: RpcProtocol>(
    proto: &Arc<P>,
    max_body: usize,
    max_calls: Option<u32>,
    dial: Dial<'_>,
) -> Result<RpcConn, UpstreamError> {
    let max_calls = max_calls
        .unwrap_or_else(|| proto.max_calls_per_connection())
        .max(1);
    // Cluster filters run on tcp_proxy's connections: one that would take
    // part in this plain TCP one (no ALPN) refuses it.
    dial.cluster().filters.check_pool(None)?;
    let (stream, guard) = dial.tcp().await?;
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(1024);
    let conn = Arc::new(UpConn {
        tx,
        local,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
    });
    let mut writer = tokio::spawn(async move {
        if let Some(mut w) = write_loop(wr, rx).await {
            let _ = w.shutdown().await;
        }
    });
    let reader_conn = Arc::downgrade(&conn);
    let proto = proto.clone();
    let cluster_name = dial.cluster().name.to_string();
    tokio::spawn(async move {
        let _guard = guard;
        let read = read_upstream(proto, rd, reader_conn.clone(), max_body, cluster_name);
        tokio::pin!(read);
        tokio::select! {
            _ = &mut read => {}
            _ = &mut writer => {
                // A write error: responses may still come for calls in
                // flight. Nothing holds the connection any more: done.
                if reader_conn.strong_count() > 0 {
                    read.await;
                }
            }
        }
        if let Some(c) = reader_conn.upgrade() {
            c.close();
        }
        writer.abort();
    });
    Ok(RpcConn(conn, max_calls))
}

async fn read_upstream<P: RpcProtocol, R: AsyncRead + Unpin>(
    proto: Arc<P>,
    mut rd: R,
    conn: Weak<UpConn>,
    max_body: usize,
    cluster: String,
) {
    let name = proto.name();
    let unknown = metrics::counter!(meshgate_core::metrics::names::RPC_UPSTREAM_UNKNOWN_RESPONSE_TOTAL, "cluster" => cluster.clone(), "codec" => name);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        loop {
            match proto.decode(&mut buf, max_body) {
                Ok(Some(frame)) => {
                    let Some(conn) = conn.upgrade() else {
                        return;
                    };
                    match frame.kind {
                        FrameKind::Response => {
                            let waiter = conn
                                .pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&frame.id);
                            match waiter {
                                Some(w) => {
                                    let _ = w.send(frame);
                                }
                                None => {
                                    unknown.increment(1);
                                    tracing::debug!(cluster = %cluster, codec = name, id = frame.id, "response for an unknown request id dropped");
                                }
                            }
                        }
                        FrameKind::HeartbeatRequest => {
                            let r = proto.heartbeat_response(&frame);
                            let tx = conn.tx.clone();
                            drop(conn);
                            if tx.send((r, Bytes::new())).await.is_err() {
                                return;
                            }
                        }
                        FrameKind::HeartbeatResponse => {}
                        FrameKind::Request | FrameKind::OneWay => {
                            // Providers do not call consumers here.
                            unknown.increment(1);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!(meshgate_core::metrics::names::RPC_UPSTREAM_PROTOCOL_ERROR_TOTAL, "cluster" => cluster.clone(), "codec" => name, "reason" => e.reason).increment(1);
                    tracing::debug!(cluster = %cluster, codec = name, error = %e.message, "upstream rpc protocol error; closing");
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl<P: RpcProtocol> ClientCodec for RpcClient<P> {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        let cluster = cluster.clone();
        let endpoint = endpoint.clone();
        let proto = self.proto.clone();
        let max_body = self.opts.max_body_bytes;
        let max_calls = self.opts.max_concurrent_calls;
        Box::pin(async move {
            let name = proto.name();
            let (mut parts, body) = req.into_parts();
            let Some(f) = parts
                .extensions
                .remove::<RpcFrame>()
                .filter(|f| f.protocol == name)
            else {
                return Err(UpstreamError::Protocol(
                    format!("the cluster speaks {name}; the request is not a {name} call").into(),
                ));
            };
            let body = collect_limited(body, max_body)
                .await
                .ok_or_else(|| UpstreamError::Reset("request body failed or too large".into()))?;
            let priority = meshgate_core::cluster::request_priority(&parts.extensions);
            let stream =
                get_conn(&proto, max_body, max_calls, &cluster, &endpoint, priority).await?;
            let conn = &stream.0;
            let space = proto.id_space().max(2);
            let id = conn.next_id.fetch_add(1, Ordering::Relaxed) % (space - 1) + 1;
            let (head, body) = match trace::upstream_context(&parts.headers, f.traceparent.as_ref())
            {
                None => (f.head, body),
                Some(ctx) => match proto.with_trace_context(&f.head, &body, &ctx, max_body) {
                    Ok(Some(rewritten)) => rewritten,
                    Ok(None) => (f.head, body),
                    Err(reason) => {
                        trace::skipped(name, reason);
                        (f.head, body)
                    }
                },
            };
            let head = proto.head_with_id(&head, id);
            if f.kind == FrameKind::OneWay {
                conn.tx
                    .send((head, body))
                    .await
                    .map_err(|_| UpstreamError::Reset("upstream connection closed".into()))?;
                return Ok(Response::new(meshgate_core::stream::empty_body()));
            }
            let (wtx, wrx) = oneshot::channel();
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, wtx);
            let _guard = PendingGuard {
                conn: conn.clone(),
                id,
            };
            if conn.is_closed() {
                return Err(UpstreamError::Reset("upstream connection closed".into()));
            }
            conn.tx
                .send((head, body))
                .await
                .map_err(|_| UpstreamError::Reset("upstream connection closed".into()))?;
            let frame = wrx
                .await
                .map_err(|_| UpstreamError::Reset("upstream connection closed".into()))?;
            let (status, hname, hval) = proto.response_status(&frame);
            let mut resp = Response::new(full_body(frame.body.clone()));
            *resp.status_mut() = status;
            resp.headers_mut().insert(hname, hval);
            if let Some(a) = conn.local.filter(|_| {
                parts
                    .extensions
                    .get::<meshgate_core::stream::WantUpstreamLocalAddress>()
                    .is_some()
            }) {
                resp.extensions_mut()
                    .insert(meshgate_core::stream::UpstreamLocalAddress(a));
            }
            resp.extensions_mut().insert(RpcFrame {
                protocol: name,
                kind: FrameKind::Response,
                head: frame.head,
                traceparent: None,
            });
            Ok(resp)
        })
    }
}

/// A whole body, or `None` when it fails or grows over `max` bytes.
async fn collect_limited(mut body: meshgate_core::stream::Body, max: usize) -> Option<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, BytesMut::len);
        if have + data.len() > max {
            return None;
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut m = BytesMut::from(&f[..]);
                m.extend_from_slice(&data);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&data),
        }
    }
    Some(match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Reads a big-endian unsigned integer of `n` bytes at `at`.
pub(crate) fn be(buf: &[u8], at: usize, n: usize) -> u64 {
    buf[at..at + n]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// Feeds mutations of `seed` frames to a protocol's decoder and head
/// reader (a deterministic stand-in for the cargo-fuzz targets, run by
/// `cargo test`): no panic, bodies within the limit.
#[cfg(test)]
pub(crate) fn mutation_smoke<P: RpcProtocol>(p: &P, seeds: &[Vec<u8>]) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..(rnd() % 6 + 1) {
            let at = (rnd() as usize) % f.len().max(1);
            match rnd() % 4 {
                0 if !f.is_empty() => f[at] = rnd() as u8,
                1 if !f.is_empty() => f.truncate(at),
                2 => f.insert(at.min(f.len()), rnd() as u8),
                _ if !f.is_empty() => f[at] ^= 0x80,
                _ => {}
            }
        }
        let mut buf = BytesMut::from(&f[..]);
        while let Ok(Some(fr)) = p.decode(&mut buf, 4096) {
            assert!(fr.body.len() <= 4096);
            if matches!(fr.kind, FrameKind::Request | FrameKind::OneWay) {
                let _ = p.request_head(&fr);
            }
        }
    }
}
