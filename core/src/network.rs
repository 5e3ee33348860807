//! Network filters: the `NetworkFilter` extension point, the downstream
//! `Connection` handed along a filter chain, and the context factories build
//! from. Filters run in chain order when a connection is accepted; the last
//! one is terminal and owns the connection from then on (`tcp_proxy`, or the
//! L7 `proxy` that drives a codec). A non-terminal filter may also see the
//! connection's bytes: per connection it gives a `ReadFilter` (bytes from
//! the peer, Envoy's `onNewConnection`/`onData`) and a `WriteFilter` (bytes
//! to the peer, `onWrite`), which the listener drives through `FilteredIo`
//! in front of the terminal. A chain without such a filter hands the
//! terminal the raw stream (docs/architecture.md, "Network filters").

mod filtered;
pub use filtered::{FilteredIo, MAX_HELD_BYTES};

use crate::cluster::{Cluster, ClusterManager, ClusterRefs, ClusterResolver};
use crate::error::BuildError;
use crate::router::{ChainRoutes, ROUTE_CONFIG_FIELD, RouteConfig, RouteSubscription, RouteTable};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Any byte stream a transport can hand to filters (a TLS stream, say).
pub trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// The downstream transport. Plain TCP is kept as its concrete type so a
/// terminal filter can use zero-copy paths (splice) on it.
pub enum DownstreamIo {
    Tcp(TcpStream),
    Boxed(Box<dyn AsyncIo>),
    /// A transport that carries streams, not one byte stream (a QUIC
    /// connection from the listener layer, `crate::quic`): a terminal
    /// filter hands it to a codec that speaks over it (HTTP/3), and
    /// reading or writing it as bytes fails.
    Streams(Box<dyn StreamTransport>),
}

/// A multiplexed transport as the listener layer hands it on. Nothing but
/// the codec that speaks over it looks inside: it takes the concrete
/// transport back with `into_any` (HTTP/3 takes `crate::quic`'s).
pub trait StreamTransport: Send + 'static {
    /// For logs and errors (`quic`).
    fn name(&self) -> &'static str;
    /// Closes it: no codec here speaks over it.
    fn refuse(&self);
    /// The concrete transport.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

fn streams_not_bytes() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this transport carries streams, not bytes",
    )
}

impl AsyncRead for DownstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_read(cx, buf),
            DownstreamIo::Streams(_) => Poll::Ready(Err(streams_not_bytes())),
        }
    }
}

impl AsyncWrite for DownstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_write(cx, buf),
            DownstreamIo::Streams(_) => Poll::Ready(Err(streams_not_bytes())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_flush(cx),
            DownstreamIo::Streams(_) => Poll::Ready(Err(streams_not_bytes())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_shutdown(cx),
            DownstreamIo::Streams(_) => Poll::Ready(Err(streams_not_bytes())),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DownstreamIo::Streams(_) => Poll::Ready(Err(streams_not_bytes())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            DownstreamIo::Tcp(s) => s.is_write_vectored(),
            DownstreamIo::Boxed(s) => s.is_write_vectored(),
            DownstreamIo::Streams(_) => false,
        }
    }
}

/// What filters know about a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Process-unique connection id (for logs).
    pub id: u64,
    pub listener: Arc<str>,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// SNI from the TLS ClientHello, when the listener inspected it.
    pub server_name: Option<String>,
    /// The chosen filter chain's name, if it has one.
    pub filter_chain: Option<Arc<str>>,
    /// What the TLS handshake negotiated, when the chain terminated TLS.
    pub tls: Option<Arc<crate::tls::TlsInfo>>,
    /// Cancelled when a config reload replaced this connection's listener
    /// or filter chain: L7 codecs finish the stream in progress, then close
    /// (HTTP/1.1 `connection: close` on the next response, HTTP/2 GOAWAY),
    /// so that the client's next request meets the new config. Unlike
    /// `Connection::drain`, idle connections are not cut.
    pub retire: Signal,
    /// Set when the listener read a PROXY protocol header: the direct
    /// addresses it replaced in `peer_addr`/`local_addr`, its TLVs.
    pub proxy_protocol: Option<Arc<crate::proxy_protocol::ProxyInfo>>,
}

impl ConnectionInfo {
    /// The address that actually connected: the peer before a PROXY
    /// protocol header replaced it (Envoy's direct remote address).
    pub fn direct_peer_addr(&self) -> SocketAddr {
        self.proxy_protocol
            .as_ref()
            .map_or(self.peer_addr, |p| p.direct_peer_addr)
    }
}

/// A downstream connection travelling down a filter chain.
pub struct Connection {
    pub io: DownstreamIo,
    /// Bytes already read from `io` by the listener (e.g. a ClientHello read
    /// to choose a chain by SNI). The terminal filter must treat them as the
    /// start of the stream.
    pub preface: Bytes,
    pub info: ConnectionInfo,
    /// Cancelled when the server starts draining: L7 filters stop reusing
    /// the connection; L4 filters may ignore it.
    pub drain: Signal,
}

/// A cancellation signal (drain, retire) whose state is one atomic load.
///
/// A `CancellationToken` answers `is_cancelled` under its mutex, and an
/// HTTP/1.1 connection asks for every response whether it should close:
/// atomic read-modify-writes on every request where a flag is one load
/// (measured with benches/compare/icount.sh `ATOMICS=1`, figures in
/// benches/RESULTS.md). Waiting goes through the token as before.
#[derive(Debug, Clone, Default)]
pub struct Signal(Arc<SignalInner>);

#[derive(Debug, Default)]
struct SignalInner {
    raised: std::sync::atomic::AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal: `is_cancelled` turns true and every waiter wakes.
    pub fn cancel(&self) {
        self.0
            .raised
            .store(true, std::sync::atomic::Ordering::Release);
        self.0.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.raised.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Completes once the signal is raised.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }

    /// `cancelled`, owning what it waits on.
    pub fn cancelled_owned(self) -> WaitForCancellationFutureOwned {
        self.0.token.clone().cancelled_owned()
    }
}

/// What a non-terminal filter decides for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStatus {
    Continue,
    /// Close the connection now.
    Close,
}

/// What a read or write filter decides about the bytes it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// Pass the buffer (as the filter left it) to the next filter.
    Continue,
    /// Hold the buffer: it is shown again, with the bytes that come next
    /// appended (at most `MAX_HELD_BYTES`, then the connection closes).
    /// At the end of the stream the buffer is passed on anyway.
    StopIteration,
    /// Close the connection now.
    Close,
}

/// A filter that sees the bytes a connection receives, one instance per
/// connection (Envoy's `Network::ReadFilter`): a network RBAC, a
/// connection rate limit, a protocol sniffer.
pub trait ReadFilter: Send + 'static {
    /// The connection is established (after the TLS handshake, if the
    /// chain terminates TLS), before any byte is shown.
    fn on_new_connection(&mut self, _info: &ConnectionInfo) -> FilterStatus {
        FilterStatus::Continue
    }

    /// Bytes from the peer (decrypted when the chain terminates TLS).
    /// `end_stream`: the peer closed its side; `data` may then be empty.
    fn on_data(&mut self, data: &mut bytes::BytesMut, end_stream: bool) -> DataStatus;
}

/// A filter that sees the bytes the terminal filter sends to the peer, one
/// instance per connection (Envoy's `Network::WriteFilter`). Write filters
/// run in reverse chain order.
pub trait WriteFilter: Send + 'static {
    /// `end_stream`: the terminal closed its side; `data` may be empty.
    fn on_write(&mut self, data: &mut bytes::BytesMut, end_stream: bool) -> DataStatus;
}

/// A boxed future a terminal filter serves a connection with.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A network filter before the terminal one (Envoy's read/write filters):
/// it sees the connection's events and, if it asks to, its bytes. It never
/// owns the connection.
pub trait NetworkFilter: Send + Sync + 'static {
    /// Runs when a connection is accepted, in chain order, before the
    /// terminal filter; may annotate `info` or refuse the connection.
    fn on_new_connection(&self, _info: &mut ConnectionInfo) -> FilterStatus {
        FilterStatus::Continue
    }

    /// Whether this (non-terminal) filter sees the bytes of its
    /// connections, through `read_filter` and `write_filter`. Asked once,
    /// when the chain is built: a chain where no filter does hands the
    /// terminal the raw stream (the L4 splice path stays zero-copy).
    fn sees_bytes(&self) -> bool {
        false
    }

    /// The read filter of a new connection, if this filter sees bytes.
    fn read_filter(&self, _info: &ConnectionInfo) -> Option<Box<dyn ReadFilter>> {
        None
    }

    /// The write filter of a new connection, if this filter sees bytes.
    fn write_filter(&self, _info: &ConnectionInfo) -> Option<Box<dyn WriteFilter>> {
        None
    }
}

/// The last filter of a chain, which owns the connection from then on:
/// `tcp_proxy` (L4), or the `proxy` that drives a codec (L7).
pub trait TerminalFilter: Send + Sync + 'static {
    /// Serves the connection to its end.
    fn serve(self: Arc<Self>, conn: Connection) -> ServeFuture;
}

/// What a network filter factory builds: a filter before the terminal, or
/// the terminal. A chain is any number of the first and one of the second,
/// last.
#[derive(Clone)]
pub enum BuiltFilter {
    Connection(Arc<dyn NetworkFilter>),
    Terminal(Arc<dyn TerminalFilter>),
}

/// What a factory may consult while building a filter. Cluster names are
/// resolved through it (`cluster`, or as a `ClusterResolver` for route
/// tables), and it remembers every cluster it resolved: the listener's
/// dependencies, which a reload checks to tell whether the listener's
/// open connections must retire.
pub struct BuildContext<'a> {
    pub listener: &'a str,
    clusters: &'a ClusterManager,
    /// Every registered extension (the `proxy` filter finds codecs and
    /// stream filters here).
    pub registry: &'a crate::registry::Registry,
    resolved: Mutex<ClusterRefs>,
    /// The position (in its chain) of the filter being built.
    filter: AtomicUsize,
    /// The route subscriptions of the chain this one takes over from, when
    /// a reload keeps the listener's open connections.
    previous_routes: Option<&'a ChainRoutes>,
    routes: Mutex<ChainRoutes>,
    /// Set when the listener's transport carries streams, not bytes (QUIC):
    /// the ALPN ids its handshake offers.
    stream_transport: Option<&'static [&'static str]>,
    /// The listener's `per_connection_buffer_limit_bytes`.
    buffer_limit: Option<u32>,
}

impl<'a> BuildContext<'a> {
    pub fn new(
        listener: &'a str,
        clusters: &'a ClusterManager,
        registry: &'a crate::registry::Registry,
    ) -> Self {
        Self {
            listener,
            clusters,
            registry,
            resolved: Mutex::default(),
            filter: AtomicUsize::new(0),
            previous_routes: None,
            routes: Mutex::default(),
            stream_transport: None,
            buffer_limit: None,
        }
    }

    /// The listener's `per_connection_buffer_limit_bytes`.
    pub(crate) fn with_buffer_limit(mut self, limit: Option<u32>) -> Self {
        self.buffer_limit = limit;
        self
    }

    /// The listener's `per_connection_buffer_limit_bytes` (`None`: unset,
    /// each filter keeps its own bounds, all under Envoy's 1 MiB default).
    pub fn buffer_limit(&self) -> Option<u32> {
        self.buffer_limit
    }

    /// The chain is built for a listener whose connections carry streams,
    /// not bytes (`DownstreamIo::Streams`), negotiated with these ALPN ids.
    pub(crate) fn on_stream_transport(mut self, alpn: Option<&'static [&'static str]>) -> Self {
        self.stream_transport = alpn;
        self
    }

    /// `Some(ALPN ids)` when this listener's connections carry streams, not
    /// bytes (QUIC): a terminal filter refuses such a listener at build
    /// time unless it can serve one of these ids, rather than failing each
    /// connection at its first read.
    pub fn stream_transport(&self) -> Option<&'static [&'static str]> {
        self.stream_transport
    }

    /// Filters built with this context take over the route subscriptions
    /// of `previous` (the same chain of the live listener).
    pub(crate) fn taking_over(mut self, previous: Option<&'a ChainRoutes>) -> Self {
        self.previous_routes = previous;
        self
    }

    /// The filter about to be built is the chain's `index`th.
    pub(crate) fn set_filter(&self, index: usize) {
        self.filter.store(index, Ordering::Relaxed);
    }

    /// Subscribes the filter being built to the route table of `config`,
    /// its config field `route_config` (`ROUTE_CONFIG_FIELD`; a reload
    /// that changes only that field keeps the listener's connections and
    /// updates the subscription). Read the returned subscription once per
    /// stream. Error paths start with `route_config`.
    pub fn subscribe_routes(&self, config: &RouteConfig) -> Result<RouteSubscription, BuildError> {
        let table = RouteTable::build(config, self).map_err(|e| {
            BuildError::new(
                crate::error::join_path(ROUTE_CONFIG_FIELD, &e.path),
                e.message,
            )
        })?;
        let table = Arc::new(table);
        let filter = self.filter.load(Ordering::Relaxed);
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let subscription = match self.previous_routes.and_then(|p| p.get(filter)) {
            // Staged: stored when the whole snapshot is accepted.
            Some(live) => {
                routes.record(filter, live.clone(), Some(table));
                live.clone()
            }
            None => {
                let s = RouteSubscription::new(table);
                routes.record(filter, s.clone(), None);
                s
            }
        };
        Ok(subscription)
    }

    /// The cluster named `name`, or a build error at `field`.
    pub fn cluster(&self, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError> {
        let c = self.clusters.resolve(field, name)?;
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), c.clone());
        Ok(c)
    }

    /// The clusters resolved so far, by name, and the route subscriptions
    /// made.
    pub(crate) fn into_parts(self) -> (ClusterRefs, ChainRoutes) {
        (
            self.resolved
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
            self.routes.into_inner().unwrap_or_else(|p| p.into_inner()),
        )
    }
}

impl ClusterResolver for BuildContext<'_> {
    fn resolve(&self, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError> {
        self.cluster(field, name)
    }
}

/// A network filter registered by name.
pub trait NetworkFilterFactory: Send + Sync {
    fn name(&self) -> &'static str;
    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError>;
}

/// A downstream stream that first yields bytes already read (the
/// connection's preface), then reads from the socket. Codecs that parse from
/// the start of the connection wrap `Connection::io` with it.
pub struct PrefixedIo {
    preface: Bytes,
    io: DownstreamIo,
}

impl PrefixedIo {
    pub fn new(preface: Bytes, io: DownstreamIo) -> Self {
        Self { preface, io }
    }

    /// Puts `bytes` back in front of what is still to be read (e.g. what a
    /// codec read past a `101 Switching Protocols` before handing the
    /// stream over).
    pub fn unread(&mut self, bytes: Bytes) {
        self.preface = if self.preface.is_empty() {
            bytes
        } else {
            let mut b = bytes::BytesMut::from(&bytes[..]);
            b.extend_from_slice(&self.preface);
            b.freeze()
        };
    }

    /// The bytes not yet read from the preface, and the transport (a
    /// hot upgrade's connection migration takes the socket back).
    pub fn into_parts(self) -> (Bytes, DownstreamIo) {
        (self.preface, self.io)
    }
}

impl AsyncRead for PrefixedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.preface.is_empty() {
            let n = me.preface.len().min(buf.remaining());
            buf.put_slice(&me.preface.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connection {
    /// The byte stream with the preface put back in front.
    pub fn into_prefixed(self) -> (PrefixedIo, ConnectionInfo, Signal) {
        (
            PrefixedIo::new(self.preface, self.io),
            self.info,
            self.drain,
        )
    }
}
