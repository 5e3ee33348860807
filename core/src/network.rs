//! Network filters: the `NetworkFilter` extension point, the downstream
//! `Connection` handed along a filter chain, and the context factories build
//! from. Filters run in chain order when a connection is accepted; the last
//! one is terminal and owns the connection from then on (`tcp_proxy`, or the
//! L7 `proxy` that drives a codec).

use crate::cluster::{Cluster, ClusterManager, ClusterRefs, ClusterResolver};
use crate::error::BuildError;
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// The downstream byte stream. Plain TCP is kept as its concrete type so a
/// terminal filter can use zero-copy paths (splice) on it.
pub enum DownstreamIo {
    Tcp(TcpStream),
    Boxed(Box<dyn AsyncIo>),
    /// A QUIC connection carries streams, not one byte stream: only a
    /// filter that `serves_quic` (the `proxy` with HTTP/3) gets one, and
    /// reading or writing it as bytes fails.
    Quic(quinn::Connection),
}

fn quic_not_bytes() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a QUIC connection carries streams, not bytes",
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
            DownstreamIo::Quic(_) => Poll::Ready(Err(quic_not_bytes())),
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
            DownstreamIo::Quic(_) => Poll::Ready(Err(quic_not_bytes())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_flush(cx),
            DownstreamIo::Quic(_) => Poll::Ready(Err(quic_not_bytes())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            DownstreamIo::Boxed(s) => Pin::new(s).poll_shutdown(cx),
            DownstreamIo::Quic(_) => Poll::Ready(Err(quic_not_bytes())),
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
            DownstreamIo::Quic(_) => Poll::Ready(Err(quic_not_bytes())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            DownstreamIo::Tcp(s) => s.is_write_vectored(),
            DownstreamIo::Boxed(s) => s.is_write_vectored(),
            DownstreamIo::Quic(_) => false,
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

/// A boxed future a terminal filter serves a connection with.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A network filter built from config.
pub trait NetworkFilter: Send + Sync + 'static {
    /// Whether the filter owns the connection (must be last in its chain).
    fn terminal(&self) -> bool {
        false
    }

    /// Whether the filter can serve a QUIC connection (`DownstreamIo::Quic`);
    /// a QUIC listener's terminal filter must.
    fn serves_quic(&self) -> bool {
        false
    }

    /// Runs when a connection is accepted, in chain order, before the
    /// terminal filter; may annotate `info` or refuse the connection.
    fn on_new_connection(&self, _info: &mut ConnectionInfo) -> FilterStatus {
        FilterStatus::Continue
    }

    /// Serves the connection to its end. Called only on the terminal filter.
    fn serve(self: Arc<Self>, conn: Connection) -> ServeFuture {
        drop(conn);
        Box::pin(async {})
    }

    /// A reload changed this filter's config from `old_config` to
    /// `new_config` and nothing else of its listener: whether this filter
    /// (built from `new_config`) can take over live from `previous` (built
    /// from `old_config`), so that the connections `previous` serves see
    /// the new config on their next stream instead of retiring. The
    /// `proxy` filter can when only its routes changed (Envoy's RDS
    /// semantics). Default: no, the listener's connections retire.
    fn can_adopt(
        &self,
        _previous: &dyn NetworkFilter,
        _old_config: &serde_json::Value,
        _new_config: &serde_json::Value,
    ) -> bool {
        false
    }

    /// Takes over from `previous` (after `can_adopt` said yes for every
    /// filter of the listener).
    fn adopt(&self, _previous: &dyn NetworkFilter) {}

    /// The concrete filter, for `can_adopt` and `adopt` to downcast.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
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
        }
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

    /// The clusters resolved so far, by name.
    pub fn into_resolved(self) -> ClusterRefs {
        self.resolved
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
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
    ) -> Result<Arc<dyn NetworkFilter>, BuildError>;
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
