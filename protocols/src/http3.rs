//! The HTTP/3 codec (`http3`), on the `h3` crate over quinn. Downstream it
//! serves the QUIC connections a QUIC listener accepts: each request stream
//! becomes a stream of the protocol-agnostic layer (head, streamed body,
//! trailers) for the same filters and router as HTTP/1 and HTTP/2; on drain
//! or retirement it sends GOAWAY and lets requests in flight finish.
//! Upstream it multiplexes streams on QUIC connections of the endpoint's
//! pool (core's `MuxPool`), with the cluster's TLS (ALPN `h3`). HTTP/3 is never detected from bytes: a QUIC
//! connection reaches it by ALPN.

use bytes::{Buf, Bytes};
use http_body::{Body as _, Frame};
use meshgate_core::cluster::{Cluster, Endpoint};
use meshgate_core::codec::{
    ClientCodec, CodecFactory, Detection, Notices, ProtocolTraits, ServerCodec, StreamHandler,
    UpstreamError, UpstreamFuture,
};
use meshgate_core::error::BuildError;
use meshgate_core::network::{Connection, DownstreamIo, ServeFuture};
use meshgate_core::pool::{Dial, Multiplexed, MuxPool, MuxStream};
use meshgate_core::stream::{BodyError, Request, StreamInfo, box_body};
use serde::Deserialize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::task::TaskTracker;

/// The `http3` codec.
pub struct Http3Codec;

/// Downstream options (`codec_options.http3` of the `proxy` filter).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// Largest decoded request header section (QPACK), default 64 KiB;
    /// larger ones are refused with H3_REQUEST_REJECTED... by h3 (431-like).
    #[serde(default = "default_max_field_section")]
    pub max_request_headers_bytes: u64,
    /// A request stream's HEADERS frame must arrive complete within this of
    /// the stream opening (as `request_headers_timeout` of HTTP/1.1 and
    /// HTTP/2); past it the stream is reset with H3_REQUEST_INCOMPLETE.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub request_headers_timeout: std::time::Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_request_headers_bytes: default_max_field_section(),
            request_headers_timeout: default_header_timeout(),
        }
    }
}

fn default_max_field_section() -> u64 {
    64 * 1024
}

fn default_header_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl CodecFactory for Http3Codec {
    fn name(&self) -> &'static str {
        "http3"
    }
    fn detect(&self, _preface: &[u8]) -> Detection {
        Detection::NoMatch
    }
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        let opts: ServerOptions = if config.is_null() {
            ServerOptions::default()
        } else {
            meshgate_core::config::parse_typed(config)?
        };
        Ok(Arc::new(Http3Server { opts }))
    }
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let opts: ClientOptions = if config.is_null() {
            ClientOptions::default()
        } else {
            meshgate_core::config::parse_typed(config)?
        };
        Ok(Arc::new(Http3Client {
            inner: Arc::new(ClientInner {
                endpoints: std::sync::Mutex::new(None),
                hc_endpoints: std::sync::Mutex::new(None),
                max_streams: opts.max_concurrent_streams.map_or(u32::MAX, |n| n.get()),
            }),
        }))
    }
}

/// The receive half of a request stream, server or client side.
trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, h3::error::StreamError>>;
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<http::HeaderMap>, h3::error::StreamError>>;
}

impl RecvHalf for h3::server::RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, h3::error::StreamError>> {
        self.poll_recv_data(cx)
            .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining())))
    }
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<http::HeaderMap>, h3::error::StreamError>> {
        self.poll_recv_trailers(cx)
    }
}

impl RecvHalf for h3::client::RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, h3::error::StreamError>> {
        self.poll_recv_data(cx)
            .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining())))
    }
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<http::HeaderMap>, h3::error::StreamError>> {
        self.poll_recv_trailers(cx)
    }
}

/// A stream body read from an HTTP/3 request stream: DATA frames, then
/// the trailers. Flow control is QUIC's: nothing is read ahead of the
/// consumer.
struct H3Body<R> {
    recv: R,
    data_done: bool,
    done: bool,
    /// A frame read by `peek_end` before anyone asked for it.
    peeked: Option<Result<Frame<Bytes>, BodyError>>,
}

impl<R: RecvHalf> H3Body<R> {
    fn new(recv: R) -> Self {
        Self {
            recv,
            data_done: false,
            done: false,
            peeked: None,
        }
    }

    /// Looks, without waiting, whether the stream already ended with its
    /// HEADERS frame (FIN in the same packet, as clients send a GET): then
    /// the body reports its end and exact size 0, so an HTTP/1.1 upstream
    /// gets a request without framing instead of an empty chunked body.
    /// Whatever the look reads is kept for the first `poll_frame`.
    fn peek_end(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Some(f)) = self.poll_inner(&mut cx) {
            self.peeked = Some(f);
        }
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self;
        if me.done {
            return Poll::Ready(None);
        }
        if !me.data_done {
            match me.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(b))) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Ok(None)) => me.data_done = true,
                Poll::Ready(Err(e)) => {
                    me.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        match me.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                me.done = true;
                match r {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                }
            }
        }
    }
}

impl<R: RecvHalf> http_body::Body for H3Body<R> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        if let Some(f) = me.peeked.take() {
            return Poll::Ready(Some(f));
        }
        me.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.peeked.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.is_end_stream() {
            http_body::SizeHint::with_exact(0)
        } else {
            http_body::SizeHint::default()
        }
    }
}

/// The send half of a request stream, server or client side.
trait SendHalf: Send {
    fn send_data(
        &mut self,
        b: Bytes,
    ) -> impl std::future::Future<Output = Result<(), h3::error::StreamError>> + Send;
    fn send_trailers(
        &mut self,
        t: http::HeaderMap,
    ) -> impl std::future::Future<Output = Result<(), h3::error::StreamError>> + Send;
    fn finish(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(), h3::error::StreamError>> + Send;
}

impl SendHalf for h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes> {
    async fn send_data(&mut self, b: Bytes) -> Result<(), h3::error::StreamError> {
        h3::server::RequestStream::send_data(self, b).await
    }
    async fn send_trailers(&mut self, t: http::HeaderMap) -> Result<(), h3::error::StreamError> {
        h3::server::RequestStream::send_trailers(self, t).await
    }
    async fn finish(&mut self) -> Result<(), h3::error::StreamError> {
        h3::server::RequestStream::finish(self).await
    }
}

impl SendHalf for h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes> {
    async fn send_data(&mut self, b: Bytes) -> Result<(), h3::error::StreamError> {
        h3::client::RequestStream::send_data(self, b).await
    }
    async fn send_trailers(&mut self, t: http::HeaderMap) -> Result<(), h3::error::StreamError> {
        h3::client::RequestStream::send_trailers(self, t).await
    }
    async fn finish(&mut self) -> Result<(), h3::error::StreamError> {
        h3::client::RequestStream::finish(self).await
    }
}

/// Why a body was cut short while copied into an HTTP/3 stream.
#[derive(Debug, thiserror::Error)]
enum PumpError {
    /// Reading the body failed (its producer, e.g. the other peer, broke
    /// off).
    #[error("{0}")]
    Body(#[source] meshgate_core::stream::BodyError),
    /// Writing DATA, trailers or the end to the HTTP/3 stream failed.
    #[error("{0}")]
    Send(#[source] h3::error::StreamError),
}

/// Copies a body into a request stream: DATA frames as they come (QUIC
/// flow control is the back-pressure), then trailers or the end.
/// `strip_trailers`: the direction (`request`) whose forbidden trailer
/// fields are removed here; `None` when the caller already did.
async fn pump_body<S: SendHalf>(
    mut body: meshgate_core::stream::Body,
    send: &mut S,
    strip_trailers: Option<&'static str>,
) -> Result<(), PumpError> {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(PumpError::Body)?;
        match frame.into_data() {
            Ok(d) => {
                if !d.is_empty() {
                    send.send_data(d).await.map_err(PumpError::Send)?;
                }
            }
            Err(frame) => {
                if let Ok(mut t) = frame.into_trailers() {
                    if let Some(direction) = strip_trailers {
                        meshgate_core::body::strip_forbidden_trailers(&mut t, direction);
                    }
                    return send.send_trailers(t).await.map_err(PumpError::Send);
                }
            }
        }
    }
    send.finish().await.map_err(PumpError::Send)
}

/// HTTP/3 downstream.
pub struct Http3Server {
    opts: ServerOptions,
}

/// Counts an HTTP/3 connection that ended with an error.
fn count_error(listener: &str, reason: &'static str) {
    metrics::counter!(
        meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL,
        "listener" => listener.to_string(),
        "codec" => "http3",
        "reason" => reason
    )
    .increment(1);
}

/// What HTTP/3 carries: header fields, `:authority`; it is already where
/// `alt-svc` would point.
const HTTP3_TRAITS: ProtocolTraits = ProtocolTraits {
    carries_codings: false,
    authority_in_host: false,
    response_headers: true,
    alt_svc: false,
};

impl ServerCodec for Http3Server {
    fn alpn(&self) -> &'static [&'static str] {
        &["h3"]
    }

    fn serve(
        self: Arc<Self>,
        conn: Connection,
        handler: Arc<dyn StreamHandler>,
        notices: Notices,
    ) -> ServeFuture {
        Box::pin(async move {
            let Connection { io, info, .. } = conn;
            // HTTP/3 speaks over QUIC only: the listener layer's
            // transport of streams, a `quinn::Connection`.
            let qconn = match io {
                DownstreamIo::Streams(t) => t.into_any().downcast::<quinn::Connection>().ok(),
                _ => None,
            };
            let Some(qconn) = qconn.map(|c| *c) else {
                tracing::debug!(conn = info.id, "http3 needs a QUIC connection; closing");
                return;
            };
            let info = Arc::new(info);
            let listener = info.listener.clone();
            let mut h3c = match h3::server::builder()
                .max_field_section_size(self.opts.max_request_headers_bytes)
                .build::<_, Bytes>(h3_quinn::Connection::new(qconn.clone()))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "http3 connection setup failed");
                    // A flood that arrives before the setup finished still
                    // counts under its own reason (stream_limit, ...).
                    let reason = match h3_reason(&e) {
                        "connection_error" => "setup",
                        r => r,
                    };
                    count_error(&listener, reason);
                    return;
                }
            };
            let requests = TaskTracker::new();
            let mut closing = false;
            // `common_http_protocol_options.idle_timeout`: no active stream
            // for that long, GOAWAY, then close once in-flight ones end.
            let idle_timeout = handler.idle_timeout();
            let activity = idle_timeout.map(|_| Arc::new(crate::http::idle::Activity::new()));
            let idle = crate::http::idle::watch(activity.clone(), idle_timeout);
            tokio::pin!(idle);
            // After a GOAWAY and once no request is in flight: h3 ends
            // `accept` only once the peer answers (its GOAWAY, a rejected
            // stream, its close), so the connection is closed after a
            // short grace for the GOAWAY to reach the peer.
            let grace = tokio::time::sleep(std::time::Duration::MAX);
            tokio::pin!(grace);
            let mut grace_armed = false;
            let go_away = notices.changed(None);
            tokio::pin!(go_away);
            let keepalive_off = meshgate_core::overload::keepalive_off();
            tokio::pin!(keepalive_off);
            loop {
                let next = tokio::select! {
                    r = h3c.accept() => r,
                    _ = &mut idle, if !closing => {
                        closing = true;
                        grace_armed = true;
                        metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT_TOTAL, "listener" => listener.to_string(), "codec" => "http3").increment(1);
                        tracing::debug!(listener = %listener, "http3 connection idle: GOAWAY");
                        let _ = h3c.shutdown(0).await;
                        grace.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                        continue;
                    }
                    _ = &mut grace, if grace_armed => break,
                    _ = &mut go_away, if !closing => {
                        // Drain or retire: GOAWAY, the client's next
                        // request opens a new connection (and meets the
                        // new config).
                        closing = true;
                        let _ = h3c.shutdown(0).await;
                        requests.close();
                        continue;
                    }
                    _ = &mut keepalive_off, if !closing => {
                        // The overload manager's disable_http_keepalive.
                        closing = true;
                        let _ = h3c.shutdown(0).await;
                        requests.close();
                        continue;
                    }
                    // After a drain's or a retirement's GOAWAY, the last
                    // request in flight answered (or none was): closed as
                    // an idle one is, not left open until the drain ends.
                    () = requests.wait(), if closing && !grace_armed => {
                        grace_armed = true;
                        grace.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                        continue;
                    }
                };
                match next {
                    Ok(Some(resolver)) => {
                        let handler = handler.clone();
                        let info = info.clone();
                        let listener = listener.clone();
                        // Active from the stream's opening until its
                        // response is sent or abandoned.
                        let active = activity.as_ref().map(|a| a.start());
                        let header_timeout = self.opts.request_headers_timeout;
                        requests.spawn(async move {
                            let _active = active;
                            let Some(head) = read_head(resolver, header_timeout, &listener).await
                            else {
                                return;
                            };
                            match head {
                                Ok((req, stream)) => {
                                    serve_request(req, stream, handler, info).await
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "http3 request head refused");
                                    // Connection errors are counted once, by the
                                    // accept loop.
                                    match &e {
                                        h3::error::StreamError::ConnectionError { .. } => {}
                                        h3::error::StreamError::HeaderTooBig { .. } => {
                                            count_error(&listener, "headers_too_big")
                                        }
                                        _ => count_error(&listener, "bad_request"),
                                    }
                                }
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !e.is_h3_no_error() {
                            tracing::debug!(error = %e, "http3 connection ended with an error");
                            count_error(&listener, h3_reason(&e));
                        }
                        break;
                    }
                }
            }
            requests.close();
            requests.wait().await;
            // H3_NO_ERROR, then give the close a moment to reach the peer.
            qconn.close(0x100u32.into(), b"");
        })
    }
}

/// How long an idle connection lingers after its GOAWAY before it is
/// closed.
const IDLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type ServerStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Reads a request stream's HEADERS frame within `timeout` of the stream
/// opening. `None`: it did not complete in time; the stream was reset with
/// H3_REQUEST_INCOMPLETE (RFC 9114 4.1) and counted as `header_timeout`.
async fn read_head(
    mut resolver: Resolver,
    timeout: std::time::Duration,
    listener: &str,
) -> Option<Result<(http::Request<()>, ServerStream), h3::error::StreamError>> {
    // h3 0.0.8 offers no timeout of its own; its resolver's frame stream
    // is reachable, so the first frame is read here and the stream reset
    // with the proper code (dropping it would only send STOP_SENDING(0)).
    let frame = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
    match tokio::time::timeout(timeout, frame).await {
        Ok(frame) => Some(match resolver.accept_with_frame(frame) {
            Ok(resolved) => resolved.resolve().await,
            Err(e) => Err(e),
        }),
        Err(_) => {
            use h3::quic::SendStream as _;
            resolver
                .frame_stream
                .reset(h3::error::Code::H3_REQUEST_INCOMPLETE.value());
            tracing::debug!(listener, "http3 request head not complete in time: reset");
            count_error(listener, "header_timeout");
            None
        }
    }
}

fn h3_reason(e: &h3::error::ConnectionError) -> &'static str {
    let s = e.to_string();
    if s.contains("Timeout") || s.contains("timed out") {
        "idle_timeout"
    } else if s.contains("stream limit") || s.contains("STREAM_LIMIT") {
        "stream_limit"
    } else if s.contains("QPACK") || s.contains("Qpack") {
        "qpack"
    } else if s.contains("H3_FRAME") || s.contains("Frame") {
        "frame"
    } else {
        "connection_error"
    }
}

async fn serve_request(
    req: http::Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    handler: Arc<dyn StreamHandler>,
    info: Arc<meshgate_core::network::ConnectionInfo>,
) {
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let mut body = H3Body::new(recv);
    body.peek_end();
    // The overload manager's body budget, when configured (as HTTP/2).
    let (body, held) = meshgate_core::overload::buffer::track(box_body(body));
    let req: Request = http::Request::from_parts(parts, body);
    let exchange = handler.handle(
        req,
        StreamInfo::new(info, "http3").with_traits(HTTP3_TRAITS),
    );
    let resp = match held {
        None => exchange.await,
        Some(h) => meshgate_core::overload::buffer::guard(h, exchange).await,
    };
    // The response body too: read ahead into counted memory.
    let resp = meshgate_core::overload::buffer::track_response(resp);
    let (parts, body) = resp.into_parts();
    let mut head = http::Response::from_parts(parts, ());
    // Connection-specific fields are not allowed in HTTP/3 (RFC 9114 4.2).
    for h in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ] {
        head.headers_mut().remove(h);
    }
    head.headers_mut().remove("keep-alive");
    head.headers_mut().remove("proxy-connection");
    *head.version_mut() = http::Version::HTTP_3;
    if let Err(e) = send.send_response(head).await {
        tracing::debug!(error = %e, "http3 response head not sent");
        return;
    }
    // Response trailers were stripped by the stream layer (`forward`).
    if let Err(e) = pump_body(body, &mut send, None).await {
        tracing::debug!(error = %e, "http3 response body cut short");
        send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
    }
}

/// HTTP/3 upstream: streams multiplexed on the QUIC connections of the
/// endpoint's pool (core's `MuxPool`), opened through the pool's `Dial`
/// (circuit breaker, connect timeout, back-off, `cx_active`/`cx_total`);
/// the connections of an endpoint that left its cluster close once their
/// streams are done.
///
/// A dead connection (the server restarted or stopped) is found three
/// ways: a stateless reset or close from the peer ends it at once; keep-
/// alive PINGs every `KEEP_ALIVE` with an idle timeout of `IDLE_TIMEOUT`
/// end a silent one within seconds instead of quinn's 30 s default; and a
/// request that fails on a reused connection before any response (the
/// connection closed under it, or no answer within `REUSE_PROBE` while
/// the peer acknowledged nothing) is retried once on a fresh connection
/// when it is idempotent and has no body to replay
/// (`meshgate_cluster_upstream_cx_dead_total`).
pub struct Http3Client {
    inner: Arc<ClientInner>,
}

/// PING interval on an upstream QUIC connection.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(500);
/// A connection that hears nothing from the server this long is closed.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// An http3 cluster's `protocol_options`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientOptions {
    /// Request streams one upstream QUIC connection carries at once
    /// (Envoy's `quic_protocol_options.max_concurrent_streams`), besides
    /// the peer's own limit. A request that finds every connection of its
    /// endpoint at it and the cluster at `max_connections` waits in the
    /// cluster's pending queue (`max_pending_requests`).
    #[serde(default)]
    max_concurrent_streams: Option<std::num::NonZeroU32>,
}

struct ClientInner {
    /// The client QUIC endpoints (IPv4 and IPv6), bound on first use.
    endpoints: std::sync::Mutex<Option<(quinn::Endpoint, quinn::Endpoint)>>,
    /// The active health checks' own QUIC endpoints, bound on the first
    /// check (on the checkers' runtime, which then drives them).
    hc_endpoints: std::sync::Mutex<Option<(quinn::Endpoint, quinn::Endpoint)>>,
    /// `max_concurrent_streams` (`u32::MAX`: unset).
    max_streams: u32,
}

struct UpstreamConn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    quic: quinn::Connection,
    max_streams: u32,
    /// The client endpoint's bound address (unspecified IP) and the peer.
    bound: Option<std::net::SocketAddr>,
    peer: std::net::SocketAddr,
    /// `%UPSTREAM_LOCAL_ADDRESS%`, looked up the first time a log asks
    /// (`UpstreamConn::local`).
    local: std::sync::OnceLock<Option<std::net::SocketAddr>>,
}

impl UpstreamConn {
    /// The client endpoint's UDP port with the address the peer's packets
    /// arrive on: quinn's, else the source address the kernel picks toward
    /// the peer (the endpoint is bound to the unspecified address and
    /// shared by every upstream connection).
    fn local(&self) -> Option<std::net::SocketAddr> {
        *self.local.get_or_init(|| {
            let b = self.bound?;
            let ip = self
                .quic
                .local_ip()
                .or_else(|| source_ip_toward(self.peer))
                .unwrap_or(b.ip());
            Some(std::net::SocketAddr::new(ip, b.port()))
        })
    }
}

impl Multiplexed for UpstreamConn {
    /// quinn queues streams beyond the peer's limit itself; a connection
    /// the peer or the idle timeout closed takes no new stream.
    fn is_open(&self) -> bool {
        self.quic.close_reason().is_none()
    }
    fn max_streams(&self) -> u32 {
        self.max_streams
    }
}

type H3Stream = MuxStream<UpstreamConn>;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

impl ClientInner {
    fn endpoint(&self, v6: bool) -> std::io::Result<quinn::Endpoint> {
        Self::endpoint_of(&self.endpoints, v6)
    }

    fn endpoint_of(
        slot: &std::sync::Mutex<Option<(quinn::Endpoint, quinn::Endpoint)>>,
        v6: bool,
    ) -> std::io::Result<quinn::Endpoint> {
        let mut eps = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v4, v6e)) = eps.as_ref() {
            return Ok(if v6 { v6e.clone() } else { v4.clone() });
        }
        let v4 = quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())?;
        let v6e = quinn::Endpoint::client((std::net::Ipv6Addr::UNSPECIFIED, 0).into())
            .unwrap_or_else(|_| v4.clone());
        let chosen = if v6 { v6e.clone() } else { v4.clone() };
        *eps = Some((v4, v6e));
        Ok(chosen)
    }

    /// A stream on one of the endpoint's open connections, or on a new one
    /// (`MuxStream::is_fresh`).
    async fn stream(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        authority: Option<&str>,
        priority: meshgate_core::config::circuit_breakers::RoutingPriority,
    ) -> Result<H3Stream, UpstreamError> {
        let pool = endpoint
            .pool_at(priority, MuxPool::<UpstreamConn>::default)
            .ok_or_else(|| UpstreamError::Connect("endpoint pool of another codec".into()))?;
        pool.stream(Dial::at(cluster, endpoint, priority), |dial| {
            self.connect(dial, authority)
        })
        .await
    }

    /// Opens a QUIC connection and its HTTP/3 session, through `dial`.
    async fn connect(
        &self,
        dial: Dial<'_>,
        authority: Option<&str>,
    ) -> Result<UpstreamConn, UpstreamError> {
        let Some(tls) = dial.cluster().tls_for(dial.endpoint()) else {
            return Err(UpstreamError::Connect(
                "an http3 cluster needs tls (QUIC is always encrypted)".into(),
            ));
        };
        // Cluster filters run on tcp_proxy's connections: one that would
        // take part in this one (its ALPN is always `h3`) refuses it.
        dial.cluster().filters.check_pool(Some(b"h3"))?;
        let mut cfg = tls
            .quic_client_config()
            .map_err(|e| UpstreamError::Connect(format!("QUIC client config: {e}").into()))?;
        cfg.transport_config(transport());
        let addr = dial.endpoint().address;
        let ep = self
            .endpoint(addr.is_ipv6())
            .map_err(|e| UpstreamError::Connect(format!("QUIC client socket: {e}").into()))?;
        let name = tls.server_name_for(authority, addr);
        let bound = ep.local_addr().ok();
        let connect = async move {
            let quic = ep
                .connect_with(cfg, addr, &name)
                .map_err(std::io::Error::other)?
                .await
                .map_err(std::io::Error::other)?;
            let (driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok((quic, driver, send))
        };
        let ((quic, mut driver, send), guard) = dial.with(connect).await?;
        tokio::spawn(async move {
            let e = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            tracing::debug!(error = %e, "http3 upstream connection closed");
            // The circuit-breaker slot and cx_active go with the connection.
            drop(guard);
        });
        Ok(UpstreamConn {
            send,
            quic,
            max_streams: self.max_streams,
            bound,
            peer: addr,
            local: std::sync::OnceLock::new(),
        })
    }
}

/// The source address the kernel picks toward `peer`: the client endpoint
/// is bound to the unspecified address and quinn learns the local one only
/// where the platform reports it per packet. Once per connection, and only
/// when a log asks (a connected UDP socket sends nothing).
fn source_ip_toward(peer: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// A copy of a request head for a second try.
fn copy_head(h: &http::Request<()>) -> http::Request<()> {
    let mut c = http::Request::new(());
    *c.method_mut() = h.method().clone();
    *c.uri_mut() = h.uri().clone();
    *c.version_mut() = h.version();
    *c.headers_mut() = h.headers().clone();
    c
}

/// How long a request on a reused connection waits for any sign of life
/// (a response head, or the peer acknowledging what was sent) before the
/// connection is presumed dead and the request, if replayable, retried.
const REUSE_PROBE: std::time::Duration = std::time::Duration::from_millis(300);

type H3Recv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Why one try failed.
enum TryError {
    /// The connection was dead (closed, or silent): a fresh one may work.
    DeadConnection(String),
    Other(UpstreamError),
}

/// One try on `up`: sends the head, pumps the body, waits for the
/// response head. On a reused connection a silent peer is detected
/// within `REUSE_PROBE`.
async fn try_send(
    up: &UpstreamConn,
    head: http::Request<()>,
    body: meshgate_core::stream::Body,
    reused: bool,
) -> Result<(http::Response<()>, H3Recv), TryError> {
    let dead = |e: h3::error::StreamError, quic: &quinn::Connection| {
        if quic.close_reason().is_some() {
            TryError::DeadConnection(e.to_string())
        } else {
            TryError::Other(stream_failed(e))
        }
    };
    let mut send = up.send.clone();
    let sent_at = up.quic.stats().frame_rx.acks;
    let stream = send
        .send_request(head)
        .await
        .map_err(|e| dead(e, &up.quic))?;
    let (mut tx, mut rx) = stream.split();
    tokio::spawn(async move {
        // As toward HTTP/1.1 and HTTP/2 upstreams: no framing, routing or
        // authentication fields in request trailers (RFC 9110 6.5.1).
        if let Err(e) = pump_body(body, &mut tx, Some("request")).await {
            tracing::debug!(error = %e, "http3 upstream request body cut short");
            tx.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        }
    });
    let head = {
        let recv = rx.recv_response();
        tokio::pin!(recv);
        let mut probing = reused;
        // A live server acknowledges the request within a round trip even
        // when the response takes long; a restarted one never does.
        let deadline = tokio::time::Instant::now() + REUSE_PROBE;
        loop {
            if !probing {
                break recv.await.map_err(|e| dead(e, &up.quic));
            }
            tokio::select! {
                r = &mut recv => break r.map_err(|e| dead(e, &up.quic)),
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                    if up.quic.stats().frame_rx.acks > sent_at {
                        probing = false;
                    } else if up.quic.close_reason().is_some()
                        || tokio::time::Instant::now() >= deadline
                    {
                        break Err(TryError::DeadConnection(
                            "no acknowledgement from the upstream".into(),
                        ));
                    }
                }
            }
        }
    }?;
    Ok((head, rx))
}

/// A request stream that failed while its connection lives, as Envoy
/// classes it: the upstream's RESET_STREAM or STOP_SENDING is a remote
/// reset (503, flag `UR`), with H3_REQUEST_REJECTED a refusal
/// (`refused-stream` retries it, RFC 9114 8.1); anything else a reset.
fn stream_failed(e: h3::error::StreamError) -> UpstreamError {
    use meshgate_core::codec::{RefusedStream, RemoteStreamReset};
    match e {
        h3::error::StreamError::RemoteTerminate { code, .. }
            if code == h3::error::Code::H3_REQUEST_REJECTED =>
        {
            UpstreamError::Reset(Box::new(RefusedStream(Box::new(e))))
        }
        h3::error::StreamError::RemoteTerminate { .. } => {
            UpstreamError::Reset(Box::new(RemoteStreamReset(Box::new(e))))
        }
        e => UpstreamError::Reset(Box::new(e)),
    }
}

/// An HTTP/3 active health check of one endpoint
/// (`codec_client_type: HTTP3`): its own QUIC connection, kept from one
/// check to the next with `reuse_connection`, outside the endpoint's
/// traffic pool and circuit breakers (as Envoy's checkers).
struct Http3HealthCheck {
    inner: Arc<ClientInner>,
    tls: Option<Arc<meshgate_core::tls::UpstreamTls>>,
    addr: std::net::SocketAddr,
    conn: Option<HcConn>,
}

struct HcConn {
    quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// A check was cut (by its timeout) before it finished: the
    /// connection is not trusted for the next one.
    busy: bool,
}

impl Drop for HcConn {
    fn drop(&mut self) {
        self.quic.close(0u32.into(), b"");
    }
}

impl Http3HealthCheck {
    async fn connect(&self, authority: Option<&str>) -> Option<HcConn> {
        let tls = self.tls.as_ref()?;
        let mut cfg = tls.quic_client_config().ok()?;
        cfg.transport_config(transport());
        let ep = ClientInner::endpoint_of(&self.inner.hc_endpoints, self.addr.is_ipv6()).ok()?;
        let name = tls.server_name_for(authority, self.addr);
        let quic = ep.connect_with(cfg, self.addr, &name).ok()?.await.ok()?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Some(HcConn {
            quic,
            send,
            busy: false,
        })
    }

    async fn exchange(&mut self, req: http::Request<()>) -> Option<http::response::Parts> {
        // A kept connection the server closed (or that went silent: the
        // keep-alive's idle timeout), or one a cut check left mid-request,
        // is not the endpoint's health: a new one.
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.busy || c.quic.close_reason().is_some())
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let authority = req.uri().authority().map(|a| a.host().to_string());
            self.conn = Some(self.connect(authority.as_deref()).await?);
        }
        let conn = self.conn.as_mut()?;
        conn.busy = true;
        let mut stream = conn.send.send_request(req).await.ok()?;
        stream.finish().await.ok()?;
        let resp = stream.recv_response().await.ok()?;
        // The body is not read: dropping the stream stops it.
        conn.busy = false;
        Some(resp.into_parts().0)
    }
}

impl meshgate_core::codec::HealthCheckClient for Http3HealthCheck {
    fn check(
        &mut self,
        mut req: http::Request<()>,
        reuse: bool,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<http::response::Parts>> + Send + '_>> {
        *req.version_mut() = http::Version::HTTP_3;
        Box::pin(async move {
            let r = self.exchange(req).await;
            if r.is_none() || !reuse {
                self.conn = None;
            }
            r
        })
    }
}

impl ClientCodec for Http3Client {
    fn health_check_client(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
    ) -> Option<Box<dyn meshgate_core::codec::HealthCheckClient>> {
        Some(Box::new(Http3HealthCheck {
            inner: self.inner.clone(),
            tls: cluster.tls_for(endpoint).cloned(),
            addr: endpoint.health_check_address(),
            conn: None,
        }))
    }

    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        let inner = self.inner.clone();
        let (cluster, endpoint) = (cluster.clone(), endpoint.clone());
        let fut = async move {
            let _guard = endpoint.start_request();
            let (parts, body) = req.into_parts();
            let priority = meshgate_core::cluster::request_priority(&parts.extensions);
            let want_local = parts
                .extensions
                .get::<meshgate_core::stream::WantUpstreamLocalAddress>()
                .is_some();
            let mut head = http::Request::from_parts(parts, ());
            *head.version_mut() = http::Version::HTTP_3;
            if head.uri().scheme().is_none() || head.uri().authority().is_none() {
                let path = head
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_string();
                let auth = authority
                    .clone()
                    .unwrap_or_else(|| endpoint.address.to_string());
                if let Ok(u) = http::Uri::builder()
                    .scheme("https")
                    .authority(auth)
                    .path_and_query(path)
                    .build()
                {
                    *head.uri_mut() = u;
                }
            }
            for h in [
                http::header::CONNECTION,
                http::header::TRANSFER_ENCODING,
                http::header::UPGRADE,
                http::header::HOST,
            ] {
                head.headers_mut().remove(h);
            }
            // Only an idempotent request without a body is sent again: a
            // presumed-dead connection may still have delivered it.
            let replay =
                (body.is_end_stream() && head.method().is_idempotent()).then(|| copy_head(&head));
            let mut up = inner
                .stream(&cluster, &endpoint, authority.as_deref(), priority)
                .await?;
            let fresh = up.is_fresh();
            let (resp, rx) = match try_send(&up, head, body, !fresh && replay.is_some()).await {
                Ok(r) => r,
                Err(TryError::Other(e)) => return Err(e),
                Err(TryError::DeadConnection(why)) => {
                    // Out of use: were the peer merely slow, the streams on
                    // it still finish; were it dead, the idle timeout ends
                    // it.
                    up.retire();
                    let Some(head) = replay.filter(|_| !fresh) else {
                        return Err(UpstreamError::Reset(why.into()));
                    };
                    tracing::debug!(endpoint = %endpoint.address, reason = %why, "http3 upstream connection dead; retrying on a new one");
                    metrics::counter!(meshgate_core::metrics::names::CLUSTER_UPSTREAM_CX_DEAD_TOTAL, "cluster" => cluster.name, "codec" => "http3").increment(1);
                    up = inner
                        .stream(&cluster, &endpoint, authority.as_deref(), priority)
                        .await?;
                    match try_send(&up, head, meshgate_core::stream::empty_body(), false).await {
                        Ok(r) => r,
                        Err(TryError::Other(e)) => return Err(e),
                        Err(TryError::DeadConnection(why)) => {
                            up.retire();
                            return Err(UpstreamError::Reset(why.into()));
                        }
                    }
                }
            };
            let (mut parts, ()) = resp.into_parts();
            parts.version = http::Version::HTTP_11;
            if let Some(a) = want_local.then(|| up.local()).flatten() {
                parts
                    .extensions
                    .insert(meshgate_core::stream::UpstreamLocalAddress(a));
            }
            Ok(http::Response::from_parts(
                parts,
                // The request guard too: least-request balancing sees
                // streaming answers until they are read.
                box_body(meshgate_core::pool::OnStream::new(
                    H3Body::new(rx),
                    (_guard, up),
                )),
            ))
        };
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what `pump_body` sends.
    #[derive(Default)]
    struct Sent {
        data: Vec<Bytes>,
        trailers: Option<http::HeaderMap>,
        finished: bool,
    }

    impl SendHalf for Sent {
        async fn send_data(&mut self, b: Bytes) -> Result<(), h3::error::StreamError> {
            self.data.push(b);
            Ok(())
        }
        async fn send_trailers(
            &mut self,
            t: http::HeaderMap,
        ) -> Result<(), h3::error::StreamError> {
            self.trailers = Some(t);
            Ok(())
        }
        async fn finish(&mut self) -> Result<(), h3::error::StreamError> {
            self.finished = true;
            Ok(())
        }
    }

    fn body_with_trailers() -> meshgate_core::stream::Body {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("abc"));
        t.insert("host", http::HeaderValue::from_static("evil.example"));
        t.insert("content-length", http::HeaderValue::from_static("99"));
        t.insert("authorization", http::HeaderValue::from_static("x"));
        box_body(Frames(
            vec![
                Frame::data(Bytes::from_static(b"hello")),
                Frame::trailers(t),
            ]
            .into(),
        ))
    }

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn request_trailers_toward_an_http3_upstream_lose_forbidden_fields() {
        let mut sent = Sent::default();
        pump_body(body_with_trailers(), &mut sent, Some("request"))
            .await
            .unwrap();
        assert_eq!(sent.data, vec![Bytes::from_static(b"hello")]);
        let t = sent.trailers.unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "abc");
        // The downstream direction leaves them to the stream layer.
        let mut sent = Sent::default();
        pump_body(body_with_trailers(), &mut sent, None)
            .await
            .unwrap();
        assert_eq!(sent.trailers.unwrap().len(), 4);
    }
}
