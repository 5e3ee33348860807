//! Upstream HTTP clients on core's pool (`meshgate_core::pool`). HTTP/1.1:
//! exclusive mode, per endpoint a stack of idle keep-alive connections of
//! the hand-written client (`h1_upstream`); a connection goes back to the
//! pool when its response body has been read to the end, and idle ones
//! expire. Requests that may upgrade (WebSocket) use hyper's client, on a
//! second exclusive pool of the endpoint (or on an idle connection of the
//! first); they wait in the cluster's pending queue at `max_connections`,
//! and a tunnel holds its connection's slot until it closes. HTTP/2: multiplexed mode, hyper
//! connections shared by streams (hyper/h2 honour the peer's max
//! concurrent streams), a new one opened when one closes. Connections are
//! opened through the pool's `Dial`, so the circuit breaker, connect
//! timeout, back-off and counters apply. The pools are core's rather than
//! hyper-util's `Client` because the endpoint is chosen by meshgate's load
//! balancer, not by DNS, and connects must feed cluster health.

use super::h1_upstream;
use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_core::BuildError;
use meshgate_core::cluster::{Cluster, ConnectionGuard, Endpoint, request_priority};
use meshgate_core::codec::{ClientCodec, UpstreamError, UpstreamFuture};
use meshgate_core::config::circuit_breakers::RoutingPriority;
use meshgate_core::pool::{
    Dial, ExclusiveLimits, HttpAlpn, Multiplexed, MuxLimits, MuxPool, Reusable,
};
use meshgate_core::stream::{MalformedBody, Request, Response, box_body, empty_body};
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Upstream pool options (`protocol_options` of a cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolOptions {
    /// Idle keep-alive connections kept per endpoint (HTTP/1).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// HTTP/1.1: an idle connection older than this is closed rather than
    /// reused (unset: 60s). HTTP/2: a connection with no stream for this
    /// long is closed and leaves the pool (unset: 1h, Envoy's default; `0s`:
    /// never). Envoy's `common_http_protocol_options.idle_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// A connection opened this long ago takes no new request: HTTP/1.1,
    /// it is not reused; HTTP/2, it leaves the pool and closes when its
    /// streams end. Unset: no limit. Envoy's
    /// `common_http_protocol_options.max_connection_duration`.
    #[serde(default, with = "humantime_serde")]
    pub max_connection_duration: Option<Duration>,
    /// A response head with more header fields than this is a protocol
    /// error for its request (502, flag `UPE`), counted in
    /// `meshgate_cluster_upstream_rq_headers_count_exceeded_total`. Unset:
    /// no limit of its own (an HTTP/1.1 head still has at most 128).
    /// Envoy's `common_http_protocol_options.max_headers_count`.
    #[serde(default)]
    pub max_headers_count: Option<std::num::NonZeroU32>,
    /// An upstream request older than this (from when it is sent) is
    /// reset: answered 408, or 504 once the downstream request arrived
    /// whole, flag `UMSDR`; a response already started is cut. Counted in
    /// `meshgate_cluster_upstream_rq_max_duration_reached_total`. Unset or
    /// `0s`: none. Envoy's `common_http_protocol_options.max_stream_duration`.
    #[serde(default, with = "humantime_serde")]
    pub max_stream_duration: Option<Duration>,
    /// Requests (streams, on HTTP/2) one upstream connection carries before
    /// it is closed (HTTP/2: drained); unset, no limit. Envoy's
    /// `max_requests_per_connection`.
    #[serde(default)]
    pub max_requests_per_connection: Option<std::num::NonZeroU32>,
    /// HTTP/2: the flow-control window of each stream (what the upstream
    /// may send before meshgate reads), 65,535 to 2^31 - 1 (Envoy's
    /// `http2_protocol_options.initial_stream_window_size`). Unset: the
    /// cluster's `per_connection_buffer_limit_bytes`, else 1 MiB (64 KiB with
    /// the overload manager's `buffered_bytes` budget).
    #[serde(default)]
    pub initial_stream_window_size: Option<u32>,
    /// HTTP/2: the connection's window (`initial_connection_window_size`).
    /// Unset: the cluster's `per_connection_buffer_limit_bytes`, else 4 MiB
    /// (256 KiB with the `buffered_bytes` budget).
    #[serde(default)]
    pub initial_connection_window_size: Option<u32>,
    /// HTTP/2: streams one upstream connection carries at once (Envoy's
    /// `http2_protocol_options.max_concurrent_streams`), besides the
    /// peer's own limit. A request that finds every connection of its
    /// endpoint at this limit and the cluster at `max_connections` waits
    /// in the cluster's pending queue (`max_pending_requests`). Unset: no
    /// limit of meshgate's (hyper queues beyond the peer's).
    #[serde(default)]
    pub max_concurrent_streams: Option<std::num::NonZeroU32>,
}

impl PoolOptions {
    /// The exclusive pool's limits (HTTP/1.1).
    fn limits(&self) -> ExclusiveLimits {
        ExclusiveLimits {
            max_idle: self.max_idle_per_endpoint,
            max_requests: self.max_requests(),
            max_duration: self.max_duration(),
        }
    }

    /// HTTP/1.1's idle timeout.
    fn h1_idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(Duration::from_secs(60))
    }

    /// HTTP/2's: Envoy's default, one hour; `0s`, none.
    fn h2_idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout.unwrap_or(Duration::from_secs(3600))).filter(|d| !d.is_zero())
    }

    fn max_duration(&self) -> Option<Duration> {
        self.max_connection_duration.filter(|d| !d.is_zero())
    }

    fn max_requests(&self) -> u32 {
        self.max_requests_per_connection
            .map_or(u32::MAX, |n| n.get())
    }
}

fn default_max_idle() -> usize {
    256
}

/// A failed exchange as Envoy classes it: a response it cannot parse (an
/// HTTP/1 parse error, an HTTP/2 protocol error h2 found itself) is a
/// protocol error (502, `UPE`); a stream the upstream reset is a remote
/// reset (503, `UR`); anything else (the connection closed, a GOAWAY) a
/// connection termination (503, `UC`).
fn send_error(e: hyper::Error) -> UpstreamError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return UpstreamError::Protocol(Box::new(e));
    }
    match h2_error(&e) {
        Some(h2e) if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
            UpstreamError::Reset(Box::new(meshgate_core::codec::RefusedStream(Box::new(e))))
        }
        Some(h2e) if h2e.is_reset() && h2e.is_remote() => UpstreamError::Reset(Box::new(
            meshgate_core::codec::RemoteStreamReset(Box::new(e)),
        )),
        Some(h2e) if h2e.is_library() && h2e.reason() == Some(h2::Reason::PROTOCOL_ERROR) => {
            UpstreamError::Protocol(Box::new(e))
        }
        _ => UpstreamError::Reset(Box::new(e)),
    }
}

/// The h2 error under a hyper error, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return Some(h2e);
        }
        source = s.source();
    }
    None
}

/// The byte stream to an endpoint: the TCP connection itself, or TLS over
/// it when the cluster originates TLS (SNI from the config, else the
/// request's authority).
async fn upstream_io(
    cluster: &Cluster,
    endpoint: &Endpoint,
    stream: tokio::net::TcpStream,
    authority: Option<String>,
    addr: SocketAddr,
) -> Result<UpstreamIo, UpstreamError> {
    // Cluster filters run on tcp_proxy's connections; one that would take
    // part in this connection refuses it (never skipped silently).
    let refuse = |alpn: Option<&[u8]>| {
        cluster.filters.refuse_l7(alpn).map(|n| {
            UpstreamError::Connect(
                format!("cluster filter '{n}' applies to this connection (its negotiated ALPN): cluster filters run on tcp_proxy connections only").into(),
            )
        })
    };
    match cluster.tls_for(endpoint) {
        None => match refuse(None) {
            Some(e) => Err(e),
            None => Ok(UpstreamIo::Tcp(stream)),
        },
        Some(tls) => match tls.connect(stream, authority.as_deref(), addr).await {
            Ok(s) => match refuse(s.get_ref().1.alpn_protocol()) {
                Some(e) => Err(e),
                None => Ok(UpstreamIo::Tls(Box::new(s))),
            },
            Err(e) => {
                metrics::counter!(meshgate_core::metrics::names::CLUSTER_UPSTREAM_TLS_HANDSHAKE_ERROR_TOTAL, "cluster" => cluster.name.to_string()).increment(1);
                Err(UpstreamError::Connect(format!("TLS handshake: {e}").into()))
            }
        },
    }
}

/// On a `protocol: auto` cluster, notes on the endpoint what this
/// connection's handshake chose by ALPN (its next requests go to that
/// protocol's pool), and `Err` with that protocol when it is not the one
/// the connection was opened to speak.
fn auto_alpn(
    cluster: &Cluster,
    endpoint: &Endpoint,
    io: &UpstreamIo,
    speaks: HttpAlpn,
) -> Result<(), HttpAlpn> {
    if cluster.protocol != meshgate_core::upstream_protocol::AUTO {
        return Ok(());
    }
    let got = io.negotiated();
    endpoint.alpn.set(got);
    match got == speaks {
        true => Ok(()),
        false => Err(got),
    }
}

/// An HTTP/1.1 connection of a `protocol: auto` cluster whose handshake
/// chose `h2`: refused (the request was encoded for HTTP/1.1); the
/// endpoint's next requests go to its HTTP/2 pool.
fn h2_chosen() -> UpstreamError {
    UpstreamError::Connect(Box::new(H2Chosen))
}

/// An HTTP/1.1 connection's handshake chose h2 (`protocol: auto`): the
/// request was not sent (`AutoClient` sends it again over HTTP/2).
#[derive(Debug)]
struct H2Chosen;

impl std::fmt::Display for H2Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ALPN chose h2 on a connection opened for HTTP/1.1 (protocol auto): the endpoint's next requests use HTTP/2")
    }
}

impl std::error::Error for H2Chosen {}

fn is_h2_chosen(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Connect(b) if b.is::<H2Chosen>())
}

/// An upstream connection's bytes: plain TCP or TLS.
pub(super) enum UpstreamIo {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl UpstreamIo {
    /// The HTTP protocol its handshake chose by ALPN: `h2`, else
    /// HTTP/1.1 (`http/1.1`, no ALPN, plaintext).
    fn negotiated(&self) -> HttpAlpn {
        match self {
            UpstreamIo::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => HttpAlpn::Http2,
            _ => HttpAlpn::Http1,
        }
    }

    /// The connection's local address (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            UpstreamIo::Tcp(s) => s.local_addr().ok(),
            UpstreamIo::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }
}

/// Whether the request asks for its connection's local address.
fn wants_local(ext: &http::Extensions) -> bool {
    ext.get::<meshgate_core::stream::WantUpstreamLocalAddress>()
        .is_some()
}

/// Tags `resp` with the connection's local address.
fn tag_local(ext: &mut http::Extensions, local: Option<SocketAddr>) {
    if let Some(a) = local {
        ext.insert(meshgate_core::stream::UpstreamLocalAddress(a));
    }
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

fn authority_string(req: &Request) -> Option<String> {
    authority(req).and_then(|a| a.to_str().ok().map(str::to_string))
}

/// The authority of a request: the URI's, else the Host header.
fn authority(req: &Request) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers().get(http::header::HOST).cloned()
}

type H1Sender = hyper::client::conn::http1::SendRequest<meshgate_core::stream::Body>;

/// A hyper HTTP/1.1 connection, for requests that may upgrade, the
/// exchanges it carried, its local address and its circuit-breaker slot
/// (shared with the connection's task, and after a 101 held by the
/// tunnel); pooled in the endpoint's `h1_upstream::Pool`.
pub(super) struct HyperConn(H1Sender, u32, Option<SocketAddr>, Arc<ConnectionGuard>);

impl Reusable for HyperConn {
    fn is_reusable(&self) -> bool {
        self.0.is_ready()
    }
    fn exchanges(&self) -> u32 {
        self.1
    }
    /// A finished exchange closes the connection instead of pooling it
    /// while a request waits for a slot (`max_pending_requests`).
    fn guard(&self) -> Option<&ConnectionGuard> {
        Some(&self.3)
    }
}

/// HTTP/1.1 upstream with keep-alive pools.
pub struct Http1Client {
    opts: PoolOptions,
}

impl Http1Client {
    pub fn new(opts: PoolOptions) -> Self {
        Self { opts }
    }
}

impl ClientCodec for Http1Client {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        match self.send_fast_path(cluster, endpoint, req, None) {
            Ok(f) => f,
            Err(req) => self.send_upgradable(cluster, endpoint, req),
        }
    }

    #[allow(clippy::result_large_err)]
    fn send_by(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        self.send_fast_path(cluster, endpoint, req, Some(deadline))
    }
}

/// HTTP/1 wants origin-form and a Host header: the request's authority,
/// else (an HTTP/1.0 request without Host) the endpoint's address.
fn to_origin_form(req: &mut Request, endpoint: std::net::SocketAddr) {
    if req.version() == http::Version::HTTP_10
        && req.uri().authority().is_none()
        && !req.headers().contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(&endpoint.to_string())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        if !req.headers().contains_key(http::header::HOST)
            && let Some(a) = authority(req)
        {
            req.headers_mut().insert(http::header::HOST, a);
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = http::Version::HTTP_11;
}

impl Http1Client {
    /// The hand-written pool, the common case: one shared-lock lookup (an
    /// `entry` would take the shard's write lock on every request). The
    /// head is encoded here, before the future is built, so the future
    /// holds its bytes rather than the request (a smaller future to move).
    /// `Err(req)` for a request that may upgrade: that goes to hyper.
    #[allow(clippy::result_large_err)]
    fn send_fast_path(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        mut req: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<UpstreamFuture, Request> {
        // A request with its own upstream connection (PROXY protocol)
        // does not use the pool: it goes the way of upgrades.
        if req.headers().contains_key(http::header::UPGRADE) || cluster.proxy_protocol.is_some() {
            return Err(req);
        }
        to_origin_form(&mut req, endpoint.address);
        let auth = cluster
            .tls_for(endpoint)
            .and_then(|_| authority_string(&req));
        let (parts, body) = req.into_parts();
        let head = h1_upstream::encode_head(&parts, &body);
        let want_local = wants_local(&parts.extensions);
        let priority = request_priority(&parts.extensions);
        drop(parts);
        Ok(Box::pin(send_fast(
            cluster.clone(),
            endpoint.clone(),
            head,
            body,
            auth,
            self.opts.clone(),
            deadline,
            (want_local, priority),
        )))
    }

    /// Through hyper, which can hand the connection over on a 101.
    fn send_upgradable(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        mut req: Request,
    ) -> UpstreamFuture {
        to_origin_form(&mut req, endpoint.address);
        let cluster = cluster.clone();
        let endpoint = endpoint.clone();
        let opts = self.opts.clone();
        // PROXY protocol: a connection of its own, never pooled
        // (`meshgate_core::proxy_protocol_http`).
        let proxy = meshgate_core::proxy_protocol_http::header(&req);
        let priority = request_priority(req.extensions());
        Box::pin(async move {
            let pool = match proxy {
                Some(_) => None,
                None => h1_upstream::Pool::of(&endpoint, priority),
            };
            let idle = pool.and_then(|p| p.upgradable.take(opts.h1_idle_timeout()));
            let want_local = wants_local(req.extensions());
            let (mut sender, exchanges, local, slot) = match idle {
                Some(HyperConn(s, n, l, g)) => (s, n, l, g),
                None => {
                    // An idle connection of the hand-written pool serves
                    // too: keep-alive HTTP/1.1 has no per-connection state
                    // to set up, and at `max_connections` its slot would
                    // otherwise keep this request waiting.
                    let fast = pool
                        .and_then(|p| p.fast.take(opts.h1_idle_timeout()))
                        .and_then(h1_upstream::Conn::into_io);
                    let (io, guard, n) = match fast {
                        Some(c) => c,
                        None => {
                            let (stream, guard) = match &proxy {
                                Some(h) => {
                                    meshgate_core::proxy_protocol_http::connect(
                                        &cluster, &endpoint, h,
                                    )
                                    .await?
                                }
                                // At `max_connections` the request waits in
                                // the cluster's pending queue like any other.
                                None => {
                                    Dial::at(&cluster, &endpoint, priority).tcp_queued().await?
                                }
                            };
                            let auth = cluster
                                .tls_for(&endpoint)
                                .and_then(|_| authority_string(&req));
                            let io =
                                upstream_io(&cluster, &endpoint, stream, auth, endpoint.address)
                                    .await?;
                            auto_alpn(&cluster, &endpoint, &io, HttpAlpn::Http1)
                                .map_err(|_| h2_chosen())?;
                            (io, guard, 0)
                        }
                    };
                    let local = io.local_addr();
                    let slot = Arc::new(guard);
                    let (sender, conn) = hyper::client::conn::http1::Builder::new()
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(send_error)?;
                    let held = slot.clone();
                    tokio::spawn(async move {
                        let _slot = held;
                        if let Err(e) = conn.with_upgrades().await {
                            tracing::debug!(error = %e, "upstream http1 connection ended");
                        }
                    });
                    (sender, n, local, slot)
                }
            };
            let mut resp = sender.send_request(req).await.map_err(send_error)?;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                // The connection now belongs to the tunnel, not the pool.
                let on = hyper::upgrade::on(&mut resp);
                let (parts, _) = resp.into_parts();
                let mut resp = Response::from_parts(parts, meshgate_core::stream::empty_body());
                // The tunnel keeps the connection's slot until it closes.
                resp.extensions_mut()
                    .insert(super::upgrade_from_hyper_holding(on, Some(slot)));
                return Ok(resp);
            }
            let (mut parts, body) = resp.into_parts();
            if want_local {
                tag_local(&mut parts.extensions, local);
            }
            let body = ReturnToPool {
                body,
                sender: proxy
                    .is_none()
                    .then_some(HyperConn(sender, exchanges + 1, local, slot)),
                endpoint,
                limits: opts.limits(),
            };
            Ok(Response::from_parts(parts, box_body(body)))
        })
    }
}

/// Connects (boxed: a rare path with a large TLS handshake state), within
/// the deadline if any.
async fn connect_by(
    cluster: &Arc<Cluster>,
    endpoint: &Arc<Endpoint>,
    auth: Option<String>,
    deadline: Option<tokio::time::Instant>,
    priority: RoutingPriority,
) -> Result<h1_upstream::Conn, UpstreamError> {
    let connect = Box::pin(connect_fast(cluster, endpoint, auth, priority));
    match deadline {
        Some(d) => tokio::time::timeout_at(d, connect)
            .await
            .map_err(|_| UpstreamError::Timeout)?,
        None => connect.await,
    }
}

/// Connects to the endpoint for the hand-written HTTP/1.1 path.
async fn connect_fast(
    cluster: &Arc<Cluster>,
    endpoint: &Arc<Endpoint>,
    auth: Option<String>,
    priority: RoutingPriority,
) -> Result<h1_upstream::Conn, UpstreamError> {
    // At `max_connections`, an idle connection kept for requests that may
    // upgrade holds a slot nothing else would free: close it first.
    if cluster.at_max_connections(priority)
        && let Some(p) = h1_upstream::Pool::of(endpoint, priority)
    {
        drop(p.upgradable.take(std::time::Duration::MAX));
    }
    let (stream, guard) = Dial::at(cluster, endpoint, priority).tcp_queued().await?;
    let io = upstream_io(cluster, endpoint, stream, auth, endpoint.address).await?;
    auto_alpn(cluster, endpoint, &io, HttpAlpn::Http1).map_err(|_| h2_chosen())?;
    Ok(h1_upstream::Conn::new(io, guard))
}

/// Sends on a pooled hand-written connection. A bodiless request that
/// failed on a reused connection before any response byte (the peer
/// closed it while idle) is sent again on a new connection.
// Not an async fn on purpose (see the comment in the body).
#[allow(clippy::manual_async_fn)]
#[allow(clippy::too_many_arguments)]
fn send_fast(
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    head: h1_upstream::EncodedHead,
    body: meshgate_core::stream::Body,
    auth: Option<String>,
    opts: PoolOptions,
    deadline: Option<tokio::time::Instant>,
    (want_local, priority): (bool, RoutingPriority),
) -> impl Future<Output = Result<Response, UpstreamError>> + Send {
    // An async block rather than an async fn: its captures are not copied
    // again into locals, and connecting (rare, with a large TLS handshake
    // state) is boxed, so the future boxed per request stays small.
    async move {
        let idle = h1_upstream::Pool::of(&endpoint, priority)
            .and_then(|p| p.fast.take(opts.h1_idle_timeout()));
        let conn = match idle {
            Some(c) => c,
            None => connect_by(&cluster, &endpoint, auth.clone(), deadline, priority).await?,
        };
        let limits = opts.limits();
        let local = |c: &h1_upstream::Conn| {
            if want_local { c.io.local_addr() } else { None }
        };
        let first = local(&conn);
        match h1_upstream::send(conn, head, body, endpoint, limits, deadline, cluster.name).await {
            Ok(mut resp) => {
                tag_local(resp.extensions_mut(), first);
                Ok(resp)
            }
            Err(h1_upstream::Failed {
                error,
                replay: Some((head, endpoint)),
            }) => {
                tracing::debug!(%error, "reused upstream connection was closed; sending again on a new one");
                let conn = connect_by(&cluster, &endpoint, auth, deadline, priority).await?;
                let again = local(&conn);
                let body = meshgate_core::stream::empty_body();
                let mut resp =
                    h1_upstream::send(conn, head, body, endpoint, limits, deadline, cluster.name)
                        .await
                        .map_err(|e| e.error)?;
                tag_local(resp.extensions_mut(), again);
                Ok(resp)
            }
            Err(e) => Err(e.error),
        }
    }
}

/// A request body lent to a first try (`AutoClient::h2_on_switch`): it
/// stays in `slot` until first polled, so a try that failed before
/// reading it gives it back untouched. Its end and size are told from
/// what it was when lent (an HTTP/1.1 head is encoded from them).
struct Lent {
    slot: Arc<std::sync::Mutex<Option<meshgate_core::stream::Body>>>,
    taken: Option<meshgate_core::stream::Body>,
    end: bool,
    hint: SizeHint,
}

impl Lent {
    fn new(body: meshgate_core::stream::Body) -> Self {
        use http_body::Body;
        Self {
            end: body.is_end_stream(),
            hint: body.size_hint(),
            slot: Arc::new(std::sync::Mutex::new(Some(body))),
            taken: None,
        }
    }
}

impl http_body::Body for Lent {
    type Data = Bytes;
    type Error = meshgate_core::stream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        if me.taken.is_none() {
            // Once: from here the body is read, and not given back.
            me.taken = me.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        match me.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.as_ref().map_or(self.end, |b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.taken
            .as_ref()
            .map_or_else(|| self.hint, |b| b.size_hint())
    }
}

/// A response body that hands its connection back to the pool once read to
/// the end. Dropped early, the connection is not reused (hyper closes it).
struct ReturnToPool {
    body: Incoming,
    sender: Option<HyperConn>,
    /// Whose pool it goes back to (a closed pool keeps nothing).
    endpoint: Arc<Endpoint>,
    limits: ExclusiveLimits,
}

impl ReturnToPool {
    fn release(&mut self) {
        // Back to the pool of the priority whose breakers count it.
        if let Some(sender) = self.sender.take()
            && let Some(pool) = h1_upstream::Pool::of(&self.endpoint, sender.3.priority())
        {
            pool.upgradable.put(sender, &self.limits);
        }
    }
}

impl http_body::Body for ReturnToPool {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => me.release(),
            Poll::Ready(Some(Ok(_))) if me.body.is_end_stream() => me.release(),
            Poll::Ready(Some(Err(_))) => me.sender = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<meshgate_core::stream::Body>;

/// A hyper HTTP/2 connection in the endpoint's `MuxPool`, the
/// cluster's `max_concurrent_streams` (the pool's stream limit) and the
/// connection's local address. hyper queues streams beyond the peer's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` itself.
struct H2Conn(H2Sender, u32, Option<SocketAddr>);

impl Multiplexed for H2Conn {
    fn is_open(&self) -> bool {
        !self.0.is_closed()
    }
    fn max_streams(&self) -> u32 {
        self.1
    }
}

type H2Stream = meshgate_core::pool::MuxStream<H2Conn>;

/// HTTP/2 upstream: streams multiplexed on the endpoint's connections,
/// with `max_requests_per_connection`, `idle_timeout` and
/// `max_connection_duration` applied by the pool (`MuxLimits`).
pub struct Http2Client {
    opts: H2Options,
    /// `protocol: auto`: where a request goes when the endpoint's
    /// handshake chose HTTP/1.1 by ALPN.
    fallback: Option<Arc<Http1Client>>,
}

/// What an HTTP/2 upstream connection is opened with.
#[derive(Debug, Clone, Copy)]
struct H2Options {
    /// `protocol: auto`: what the HTTP/1.1 pool keeps of a connection
    /// whose handshake chose HTTP/1.1.
    h1_limits: ExclusiveLimits,
    mux: MuxLimits,
    max_streams: u32,
    stream_window: Option<u32>,
    connection_window: Option<u32>,
}

impl H2Options {
    /// The (stream, connection) windows: as configured, else both the
    /// cluster's `per_connection_buffer_limit_bytes` (what one connection
    /// may hold, as Envoy's stream and connection buffers do; at least
    /// HTTP/2's 65,535), else 1 MiB and 4 MiB.
    fn windows(&self, cluster: &Cluster) -> (u32, u32) {
        let limit = cluster.buffer_limit.map(|l| l.clamp(65_535, 0x7fff_ffff));
        // With the overload manager's body budget, response bodies are read
        // ahead into memory it counts; the codec's own, uncounted receive
        // buffer defaults to HTTP/2's 64 KiB per stream (256 KiB per
        // connection), as the downstream's does for request bodies.
        let (stream, conn) = match meshgate_core::overload::buffer::enabled() {
            true => (64 << 10, 256 << 10),
            false => (1 << 20, 4 << 20),
        };
        (
            self.stream_window.or(limit).unwrap_or(stream),
            self.connection_window.or(limit).unwrap_or(conn),
        )
    }
}

impl Http2Client {
    pub fn new(opts: PoolOptions) -> Self {
        Self {
            fallback: None,
            opts: H2Options {
                h1_limits: opts.limits(),
                mux: MuxLimits {
                    max_requests: opts.max_requests(),
                    idle_timeout: opts.h2_idle_timeout(),
                    max_duration: opts.max_duration(),
                },
                max_streams: opts.max_concurrent_streams.map_or(u32::MAX, |n| n.get()),
                stream_window: opts.initial_stream_window_size,
                connection_window: opts.initial_connection_window_size,
            },
        }
    }
}

impl PoolOptions {
    /// Refuses HTTP/2 windows outside RFC 9113's range, naming the field.
    pub fn validate(&self) -> Result<(), BuildError> {
        for (name, v) in [
            (
                "initial_stream_window_size",
                self.initial_stream_window_size,
            ),
            (
                "initial_connection_window_size",
                self.initial_connection_window_size,
            ),
        ] {
            if let Some(v) = v
                && !(65_535..=0x7fff_ffff).contains(&v)
            {
                return Err(BuildError::new(
                    name,
                    format!("{v} is outside 65535..=2147483647 (RFC 9113)"),
                ));
            }
        }
        Ok(())
    }
}

/// A stream on one of the endpoint's connections, a new one opened (and
/// handshaken) if none is open.
async fn h2_stream(
    cluster: &Arc<Cluster>,
    endpoint: &Arc<Endpoint>,
    authority: Option<String>,
    opts: H2Options,
    proxy: Option<Bytes>,
    priority: RoutingPriority,
) -> Result<H2Stream, UpstreamError> {
    let mux = opts.mux;
    // PROXY protocol: a connection of its own, for one stream, in a pool
    // of its own that keeps nothing (`meshgate_core::proxy_protocol_http`).
    let own;
    let pool = match proxy {
        Some(_) => {
            own = MuxPool::<H2Conn>::with_max_requests(1);
            &own
        }
        None => endpoint
            .pool_at(priority, || MuxPool::<H2Conn>::with_limits(mux))
            .ok_or_else(|| UpstreamError::Connect("endpoint pool of another codec".into()))?,
    };
    pool.stream(Dial::at(cluster, endpoint, priority), |dial| async move {
        let (stream, guard) = match &proxy {
            Some(h) => {
                meshgate_core::proxy_protocol_http::connect(dial.cluster(), dial.endpoint(), h)
                    .await?
            }
            None => dial.tcp().await?,
        };
        let addr = dial.endpoint().address;
        let local = stream.local_addr().ok();
        let io = upstream_io(dial.cluster(), dial.endpoint(), stream, authority, addr).await?;
        if auto_alpn(dial.cluster(), dial.endpoint(), &io, HttpAlpn::Http2).is_err() {
            // `protocol: auto` and the handshake chose HTTP/1.1: the
            // connection goes idle into the endpoint's HTTP/1.1 pool, where
            // the request (`Http2Client::fallback`) finds it.
            if proxy.is_none()
                && let Some(p) = h1_upstream::Pool::of(dial.endpoint(), dial.priority())
            {
                p.fast
                    .put(h1_upstream::Conn::new(io, guard), &opts.h1_limits);
            }
            return Err(UpstreamError::Connect(
                "ALPN chose HTTP/1.1 (protocol auto)".into(),
            ));
        }
        let (stream_window, connection_window) = opts.windows(dial.cluster());
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .handshake(TokioIo::new(io))
            .await
            .map_err(send_error)?;
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream http2 connection ended");
            }
        });
        Ok(H2Conn(sender, opts.max_streams, local))
    })
    .await
}

/// Sends of one bodiless request that the peer may refuse before it is
/// failed.
const REFUSED_STREAM_ATTEMPTS: u32 = 3;

fn is_refused_stream(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|h2e| h2e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A request body that notes whether it failed as malformed
/// (`stream::MalformedBody`, raised by the downstream codec), and drops
/// the trailer fields never forwarded.
struct Watched {
    body: meshgate_core::stream::Body,
    malformed: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = meshgate_core::stream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        let mut r = Pin::new(&mut me.body).poll_frame(cx);
        match &mut r {
            Poll::Ready(Some(Err(e))) if e.is::<MalformedBody>() => {
                me.malformed.store(true, Ordering::Release);
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = f.trailers_mut() {
                    meshgate_core::body::strip_forbidden_trailers(t, "request");
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl ClientCodec for Http2Client {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        mut req: Request,
    ) -> UpstreamFuture {
        let cluster = cluster.clone();
        let endpoint = endpoint.clone();
        let h2 = self.opts;
        let fallback = self.fallback.clone();
        Box::pin(async move {
            // HTTP/2 wants :scheme and :authority: make the URI absolute.
            if req.uri().scheme().is_none() {
                let auth = authority(&req)
                    .and_then(|a| a.to_str().ok().map(str::to_string))
                    .unwrap_or_else(|| endpoint.address.to_string());
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                if let Ok(u) = format!("http://{auth}{pq}").parse() {
                    *req.uri_mut() = u;
                }
            }
            if req
                .extensions()
                .get::<meshgate_core::stream::SchemeMatchUpstream>()
                .is_some()
            {
                let scheme = if cluster.tls_for(&endpoint).is_some() {
                    http::uri::Scheme::HTTPS
                } else {
                    http::uri::Scheme::HTTP
                };
                if req.uri().scheme() != Some(&scheme) {
                    let mut parts = req.uri().clone().into_parts();
                    parts.scheme = Some(scheme);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = u;
                    }
                }
            }
            req.headers_mut().remove(http::header::HOST);
            *req.version_mut() = http::Version::HTTP_2;
            // A bodiless request refused by the peer (REFUSED_STREAM: it was
            // never processed, RFC 9113 section 8.7) is sent again. This
            // happens on a fresh connection, before the peer's SETTINGS with
            // its concurrency limit arrived.
            let replay = http_body::Body::is_end_stream(req.body()).then(|| {
                let mut r = http::Request::new(());
                *r.method_mut() = req.method().clone();
                *r.uri_mut() = req.uri().clone();
                *r.version_mut() = req.version();
                *r.headers_mut() = req.headers().clone();
                r
            });
            let proxy = cluster
                .proxy_protocol
                .as_ref()
                .and_then(|_| meshgate_core::proxy_protocol_http::header(&req));
            let want_local = wants_local(req.extensions());
            let priority = request_priority(req.extensions());
            let mut stream = match h2_stream(
                &cluster,
                &endpoint,
                authority_string(&req),
                h2,
                proxy.clone(),
                priority,
            )
            .await
            {
                Ok(s) => s,
                // `protocol: auto`, and the handshake chose HTTP/1.1: the
                // request goes out over HTTP/1.1 (on the connection just
                // made, now idle in that pool).
                Err(e) => match fallback {
                    Some(h1) if endpoint.alpn.get() == Some(HttpAlpn::Http1) => {
                        return h1.send(&cluster, &endpoint, req).await;
                    }
                    _ => return Err(e),
                },
            };
            // hyper reports a request body that failed only as the stream's
            // reset: the watch tells a malformed downstream body (the
            // client's fault, 400) from an upstream failure (502).
            let malformed = (!http_body::Body::is_end_stream(req.body())).then(|| {
                let flag = Arc::new(AtomicBool::new(false));
                let req_body =
                    std::mem::replace(req.body_mut(), meshgate_core::stream::empty_body());
                *req.body_mut() = box_body(Watched {
                    body: req_body,
                    malformed: flag.clone(),
                });
                flag
            });
            let mut result = stream.0.clone().send_request(req).await;
            if let Err(e) = &result
                && malformed.is_some_and(|f| f.load(Ordering::Acquire))
            {
                return Err(UpstreamError::MalformedRequestBody(e.to_string().into()));
            }
            let mut attempts = 1;
            while let Err(e) = &result
                && attempts < REFUSED_STREAM_ATTEMPTS
                && is_refused_stream(e)
                && let Some(head) = &replay
            {
                attempts += 1;
                let (parts, ()) = head.clone().into_parts();
                let req = Request::from_parts(parts, meshgate_core::stream::empty_body());
                let auth = authority_string(&req);
                stream = h2_stream(&cluster, &endpoint, auth, h2, proxy.clone(), priority).await?;
                let mut sender = stream.0.clone();
                sender.ready().await.map_err(send_error)?;
                result = sender.send_request(req).await;
            }
            let resp = result.map_err(send_error)?;
            let (mut parts, body) = resp.into_parts();
            if want_local {
                tag_local(&mut parts.extensions, stream.2);
            }
            Ok(Response::from_parts(
                parts,
                box_body(meshgate_core::pool::OnStream::new(body, stream)),
            ))
        })
    }
}

/// `protocol: auto` (Envoy's HttpProtocolOptions `auto_config`): each
/// endpoint's requests go to its HTTP/2 pool or its HTTP/1.1 pool by the
/// ALPN its TLS handshakes negotiate (`h2`, else HTTP/1.1), learned on the
/// first connection and kept on the endpoint (`Endpoint::alpn`), as Envoy
/// caches it per host. An endpoint not known yet is tried through the
/// HTTP/2 pool, which opens one connection at a time: a handshake that
/// chooses HTTP/1.1 leaves its connection idle in the HTTP/1.1 pool and
/// the request follows it there. A later connection whose handshake
/// chooses the other protocol updates the endpoint: an HTTP/2 one falls
/// back the same way; an HTTP/1.1 one (an endpoint that moved from
/// HTTP/1.1 to HTTP/2) sent nothing, so its request is sent once more
/// over HTTP/2 (`AutoClient::h2_on_switch`) instead of failing.
pub struct AutoClient {
    h1: Arc<Http1Client>,
    h2: Arc<Http2Client>,
}

impl AutoClient {
    pub fn new(opts: PoolOptions) -> Self {
        let h1 = Arc::new(Http1Client::new(opts.clone()));
        let mut h2 = Http2Client::new(opts);
        h2.fallback = Some(h1.clone());
        Self {
            h1,
            h2: Arc::new(h2),
        }
    }

    /// Sends `req` to an endpoint known to speak HTTP/1.1 through `send`
    /// (the HTTP/1.1 client); if the new connection it opens chooses h2
    /// by ALPN (the endpoint now speaks HTTP/2), nothing was sent and the
    /// body was never read: the same request goes once more, over
    /// HTTP/2, within `deadline` if any.
    fn h2_on_switch(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: Option<tokio::time::Instant>,
        send: impl FnOnce(Request) -> UpstreamFuture,
    ) -> UpstreamFuture {
        let (parts, body) = req.into_parts();
        let head = parts.clone();
        let lent = Lent::new(body);
        let (slot, bodiless) = (lent.slot.clone(), lent.end);
        let first = send(Request::from_parts(parts, box_body(lent)));
        let (cluster, endpoint, h2) = (cluster.clone(), endpoint.clone(), self.h2.clone());
        Box::pin(async move {
            match first.await {
                Err(e) if is_h2_chosen(&e) => {
                    // A body read by the first try cannot go again, but
                    // an empty one (a bodiless request) can.
                    let body = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let Some(body) = body.or_else(|| bodiless.then(empty_body)) else {
                        return Err(e);
                    };
                    tracing::debug!(endpoint = %endpoint.address, "the endpoint now chooses h2 by ALPN: the request goes again over HTTP/2");
                    let again = h2.send(&cluster, &endpoint, Request::from_parts(head, body));
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, again)
                            .await
                            .map_err(|_| UpstreamError::Timeout)?,
                        None => again.await,
                    }
                }
                r => r,
            }
        })
    }

    /// HTTP/1.1 for an endpoint known to choose it, and for requests that
    /// may upgrade (WebSocket over HTTP/2 needs extended CONNECT, which
    /// meshgate does not originate).
    fn http1(endpoint: &Endpoint, req: &Request) -> bool {
        endpoint.alpn.get() == Some(HttpAlpn::Http1)
            || req.headers().contains_key(http::header::UPGRADE)
    }
}

impl ClientCodec for AutoClient {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        match Self::http1(endpoint, &req) {
            // A request that may upgrade stays on HTTP/1.1.
            true if req.headers().contains_key(http::header::UPGRADE) => {
                self.h1.send(cluster, endpoint, req)
            }
            true => self.h2_on_switch(cluster, endpoint, req, None, |r| {
                self.h1.send(cluster, endpoint, r)
            }),
            false => self.h2.send(cluster, endpoint, req),
        }
    }

    #[allow(clippy::result_large_err)]
    fn send_by(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        // What the HTTP/1.1 client leaves to `send` (upgrades, PROXY
        // protocol), and every HTTP/2 request.
        if !Self::http1(endpoint, &req)
            || req.headers().contains_key(http::header::UPGRADE)
            || cluster.proxy_protocol.is_some()
        {
            return Err(req);
        }
        Ok(
            self.h2_on_switch(cluster, endpoint, req, Some(deadline), |r| {
                // (`Err` is not expected, see above: then without one.)
                self.h1
                    .send_by(cluster, endpoint, r, deadline)
                    .unwrap_or_else(|r| self.h1.send(cluster, endpoint, r))
            }),
        )
    }
}

/// `max_headers_count` around a cluster's HTTP client: a response head
/// with more header fields fails its request as a protocol error (its
/// body dropped, so the HTTP/1.1 connection is not reused and the HTTP/2
/// stream is reset), counted per cluster.
pub(super) struct HeadersLimited {
    pub(super) inner: Arc<dyn ClientCodec>,
    pub(super) max: usize,
}

/// `max_stream_duration` around a cluster's HTTP client.
pub(super) struct DurationLimited {
    inner: Arc<dyn ClientCodec>,
    max: Duration,
}

fn max_duration_reached(label: &metrics::SharedString) {
    metrics::counter!(meshgate_core::metrics::names::CLUSTER_UPSTREAM_RQ_MAX_DURATION_REACHED_TOTAL, "cluster" => label.clone()).increment(1);
}

impl DurationLimited {
    /// `send` (through `f`) raced against the limit, the response body
    /// too.
    #[allow(clippy::result_large_err)]
    fn wrap(
        &self,
        cluster: &Cluster,
        mut req: Request,
        f: impl FnOnce(Request) -> Result<UpstreamFuture, Request>,
    ) -> Result<UpstreamFuture, Request> {
        let whole = meshgate_core::stream_duration::track_request(&mut req);
        let deadline = tokio::time::Instant::now() + self.max;
        let fut = f(req)?;
        let label = cluster.stats.label().clone();
        Ok(Box::pin(async move {
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(Ok(resp)) => Ok(resp.map(|body| {
                    box_body(UntilDeadline {
                        body,
                        timer: Box::pin(tokio::time::sleep_until(deadline)),
                        label,
                    })
                })),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    max_duration_reached(&label);
                    Err(UpstreamError::Reset(Box::new(
                        meshgate_core::codec::MaxStreamDurationReached {
                            request_whole: whole.complete(),
                        },
                    )))
                }
            }
        }))
    }
}

/// A response body cut (an error: the downstream stream is reset) at the
/// upstream request's `max_stream_duration`.
struct UntilDeadline {
    body: meshgate_core::stream::Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    label: metrics::SharedString,
}

impl http_body::Body for UntilDeadline {
    type Data = Bytes;
    type Error = meshgate_core::stream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut me.body).poll_frame(cx) {
            return Poll::Ready(r);
        }
        match me.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                max_duration_reached(&me.label);
                Poll::Ready(Some(Err(Box::new(
                    meshgate_core::codec::MaxStreamDurationReached {
                        request_whole: true,
                    },
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl ClientCodec for DurationLimited {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        #[allow(clippy::result_large_err)]
        let sent = self.wrap(cluster, req, |r| Ok(self.inner.send(cluster, endpoint, r)));
        // `send` always sends: the closure never gives the request back.
        sent.unwrap_or_else(|_| Box::pin(async { Err(UpstreamError::Overflow) }))
    }

    #[allow(clippy::result_large_err)]
    fn send_by(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        self.wrap(cluster, req, |r| {
            self.inner.send_by(cluster, endpoint, r, deadline)
        })
    }

    fn health_check_client(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
    ) -> Option<Box<dyn meshgate_core::codec::HealthCheckClient>> {
        self.inner.health_check_client(cluster, endpoint)
    }
}

/// A response with more than `max` header fields is the exchange's
/// protocol error.
fn limit_headers(f: UpstreamFuture, max: usize, cluster: &Cluster) -> UpstreamFuture {
    let label = cluster.stats.label().clone();
    Box::pin(async move {
        let resp = f.await?;
        let n = resp.headers().len();
        if n > max {
            metrics::counter!(meshgate_core::metrics::names::CLUSTER_UPSTREAM_RQ_HEADERS_COUNT_EXCEEDED_TOTAL, "cluster" => label).increment(1);
            return Err(UpstreamError::Protocol(
                format!("{n} response header fields, over max_headers_count {max}").into(),
            ));
        }
        Ok(resp)
    })
}

impl ClientCodec for HeadersLimited {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        limit_headers(self.inner.send(cluster, endpoint, req), self.max, cluster)
    }

    #[allow(clippy::result_large_err)]
    fn send_by(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        self.inner
            .send_by(cluster, endpoint, req, deadline)
            .map(|f| limit_headers(f, self.max, cluster))
    }

    fn health_check_client(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
    ) -> Option<Box<dyn meshgate_core::codec::HealthCheckClient>> {
        self.inner.health_check_client(cluster, endpoint)
    }
}

impl PoolOptions {
    /// `client`, behind `max_stream_duration` and `max_headers_count`
    /// when set.
    pub(super) fn limited(&self, client: Arc<dyn ClientCodec>) -> Arc<dyn ClientCodec> {
        let client: Arc<dyn ClientCodec> = match self.max_stream_duration {
            Some(max) if !max.is_zero() => Arc::new(DurationLimited { inner: client, max }),
            _ => client,
        };
        match self.max_headers_count {
            Some(n) => Arc::new(HeadersLimited {
                inner: client,
                max: n.get() as usize,
            }),
            None => client,
        }
    }
}
