//! The QUIC transport (DESIGN.md layer 1): a UDP listener served by quinn.
//! It owns the QUIC side of a listener: binding the UDP socket, the
//! transport limits (idle timeout, concurrent streams, flow-control
//! windows), the rustls config of its filter chain turned into a QUIC one
//! (TLS 1.3, ALPN `h3`, certificates chosen by SNI and rotated like TCP
//! TLS), the connection limit and handshake accounting. An accepted
//! connection goes down the chain's network filters like a TCP one, as a
//! transport of streams (`DownstreamIo::Streams`, the `StreamTransport`
//! below); the terminal `proxy` hands it to the codec whose ALPN id the
//! handshake agreed on (HTTP/3, `h3`), which takes the `quinn::Connection`
//! back. Nothing outside this module and that codec knows QUIC.

use crate::config::QuicConfig;
use crate::error::BuildError;
use crate::listener::{CompiledListener, RunningListener};
use crate::network::{
    Connection, ConnectionInfo, DownstreamIo, FilterStatus, Signal, StreamTransport,
};
use crate::tls::{DownstreamTls, PeerIdentity, TlsInfo};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The ALPN ids a QUIC listener offers: HTTP/3 is the protocol meshgate
/// serves over QUIC.
pub const ALPN: &[&str] = &["h3"];

/// The compiled QUIC options of a listener.
pub struct QuicTransport {
    transport: Arc<quinn::TransportConfig>,
    validate_address: bool,
    /// The QUIC server config built from the chain's current rustls config;
    /// rebuilt when certificate rotation swaps the rustls config.
    cached: Mutex<Option<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)>>,
}

impl QuicTransport {
    /// Builds from config; `tls` is the listener's only chain's TLS, checked
    /// here once so that a certificate or version that cannot do QUIC is a
    /// config error rather than a failed handshake.
    pub fn new(cfg: &QuicConfig, tls: &DownstreamTls, path: &str) -> Result<Self, BuildError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|_| BuildError::new(format!("{path}.idle_timeout"), "too large for QUIC"))?;
        if cfg.max_concurrent_streams == 0 {
            return Err(BuildError::new(
                format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        t.max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(cfg.max_concurrent_streams.into())
            // HTTP/3 needs the peer's control and QPACK streams (RFC 9114
            // 6.2); extension streams beyond those are refused.
            .max_concurrent_uni_streams(3u32.into())
            .stream_receive_window(cfg.initial_stream_window_size.into())
            .receive_window(cfg.initial_connection_window_size.into())
            .send_window(u64::from(cfg.initial_connection_window_size) * 2);
        let me = Self {
            transport: Arc::new(t),
            validate_address: cfg.validate_address,
            cached: Mutex::new(None),
        };
        me.server_config(tls).map_err(|e| {
            BuildError::new(
                path.to_string(),
                format!("the filter chain's tls cannot serve QUIC: {e}"),
            )
        })?;
        Ok(me)
    }

    /// The QUIC server config for the next handshake.
    fn server_config(
        &self,
        tls: &DownstreamTls,
    ) -> Result<Arc<quinn::ServerConfig>, crate::tls::QuicTlsError> {
        let rustls_cfg = tls.server_config();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, q)) = &*cached
            && Arc::ptr_eq(r, &rustls_cfg)
        {
            return Ok(q.clone());
        }
        let mut c = (*rustls_cfg).clone();
        c.alpn_protocols = ALPN.iter().map(|id| id.as_bytes().to_vec()).collect();
        // 0-RTT is not offered: replayed early requests would need
        // per-route idempotency rules first.
        c.max_early_data_size = 0;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(c))?;
        let mut q = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        q.transport_config(self.transport.clone());
        let q = Arc::new(q);
        *cached = Some((rustls_cfg, q.clone()));
        Ok(q)
    }
}

/// Binds the UDP socket of a QUIC listener. Large socket buffers absorb
/// bursts of datagrams; quinn turns on GSO and GRO itself where the kernel
/// has them. The endpoint gets the listener's current server config (quinn
/// answers no handshake without one); each connection is then accepted
/// with the config of the moment (rotation, reload).
pub fn bind(listener: &CompiledListener) -> std::io::Result<quinn::Endpoint> {
    endpoint(listener, socket(listener)?)
}

/// The listener's UDP socket, bound (`bind`).
pub fn socket(listener: &CompiledListener) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listener.address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&listener.address.into())?;
    Ok(socket.into())
}

/// The QUIC endpoint on a bound UDP socket (its own, or one a hot upgrade
/// handed over).
pub fn endpoint(
    listener: &CompiledListener,
    socket: std::net::UdpSocket,
) -> std::io::Result<quinn::Endpoint> {
    let server_config = match (
        &listener.quic,
        listener.chains.first().and_then(|c| c.tls.as_ref()),
    ) {
        (Some(q), Some(tls)) => Some(
            q.server_config(tls)
                .map(|c| (*c).clone())
                .map_err(std::io::Error::other)?,
        ),
        _ => None,
    };
    socket.set_nonblocking(true)?;
    if !crate::upgrade::enabled() {
        return quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server_config,
            socket,
            Arc::new(quinn::TokioRuntime),
        );
    }
    // Upgradable: connection IDs tagged by process, and the packets of
    // the old process's connections steered to it (`upgrade::quic_steer`).
    use crate::upgrade::quic_steer::{Steered, TaggedCids};
    let parent = crate::upgrade::take(crate::upgrade::Kind::QuicForward, listener.address)
        .map(std::os::unix::net::UnixDatagram::from);
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(TaggedCids::new()));
    quinn::Endpoint::new_with_abstract_socket(
        config,
        server_config,
        Steered::new(listener.address, socket, parent)?,
        Arc::new(quinn::TokioRuntime),
    )
}

impl RunningListener {
    /// Accepts QUIC connections until `stop`; then closes the endpoint to
    /// new handshakes while open connections drain on `tracker`.
    pub async fn quic_accept_loop(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        stop: CancellationToken,
        drain: Signal,
        tracker: TaskTracker,
    ) {
        // The bound address (with the kernel's port for a port-0
        // listener) is every connection's local address.
        let local = endpoint
            .local_addr()
            .unwrap_or_else(|_| self.compiled.load().address);
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let compiled = self.compiled.load_full();
            let Some(quic) = compiled.quic.as_ref() else {
                incoming.refuse();
                continue;
            };
            if quic.validate_address && !incoming.remote_address_validated() {
                // Stateless Retry: the client must echo our token before
                // we spend anything on its handshake. A forged or stale
                // token is treated as none: the client gets a Retry.
                metrics::counter!(crate::metrics::names::LISTENER_QUIC_RETRY_TOTAL, "listener" => compiled.name.to_string()).increment(1);
                let _ = incoming.retry();
                continue;
            }
            let chain = &compiled.chains[0];
            let Some(tls) = chain.tls.as_ref() else {
                incoming.refuse();
                continue;
            };
            let Some(slot) = self.admit(&compiled) else {
                incoming.refuse();
                continue;
            };
            let cfg = match quic.server_config(tls) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = %compiled.name, error = %e, "QUIC server config");
                    incoming.refuse();
                    continue;
                }
            };
            let peer = incoming.remote_address();
            let connecting = match incoming.accept_with(cfg) {
                Ok(c) => c,
                Err(e) => {
                    // A bad token or an unusable Initial: quinn has answered.
                    tracing::debug!(listener = %compiled.name, %peer, error = %e, "QUIC connection refused");
                    metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_ERROR_TOTAL, "listener" => compiled.name.to_string(), "reason" => "quic_refused").increment(1);
                    continue;
                }
            };
            let drain = drain.clone();
            let retire = self.retire_token();
            let id = crate::listener::next_connection_id();
            let span = crate::spans::connection(&compiled.name, id);
            tracker.spawn(tracing::Instrument::instrument(
                async move {
                    serve_connection(compiled, connecting, peer, local, drain, retire, id).await;
                    drop(slot);
                },
                span,
            ));
        }
        // New handshakes are refused from here on; connections still open
        // keep the endpoint alive and drain.
        endpoint.set_server_config(None);
        tracing::info!(address = ?endpoint.local_addr().ok(), "QUIC listener stopped accepting");
    }
}

/// Finishes the handshake, then runs the chain's filters and hands the
/// connection to its terminal filter.
async fn serve_connection(
    listener: Arc<CompiledListener>,
    connecting: quinn::Connecting,
    peer: SocketAddr,
    local: SocketAddr,
    drain: Signal,
    retire: Signal,
    id: u64,
) {
    let chain = &listener.chains[0];
    let timeout = chain
        .tls
        .as_ref()
        .map(|t| t.handshake_timeout)
        .unwrap_or(Duration::from_secs(10));
    let conn = match crate::overload::timers::timeout(
        crate::overload::timers::Timer::TransportSocketConnect,
        timeout,
        connecting,
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(listener = %listener.name, %peer, error = %e, "QUIC handshake failed");
            metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_ERROR_TOTAL, "listener" => listener.name.to_string(), "reason" => handshake_error_reason(&e)).increment(1);
            return;
        }
        Err(_) => {
            metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_ERROR_TOTAL, "listener" => listener.name.to_string(), "reason" => "timeout").increment(1);
            return;
        }
    };
    metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_TOTAL, "listener" => listener.name.to_string()).increment(1);
    let hs = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
    let peer_identity = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(|c| PeerIdentity::from_der(c)));
    let server_name = hs.as_ref().and_then(|h| h.server_name.clone());
    let mut info = ConnectionInfo {
        id,
        listener: listener.name.clone(),
        peer_addr: peer,
        local_addr: local,
        server_name: server_name.clone(),
        filter_chain: chain.name.clone(),
        tls: Some(Arc::new(TlsInfo {
            version: "TLSv1_3".into(),
            cipher_suite: String::new(),
            alpn: hs
                .as_ref()
                .and_then(|h| h.protocol.as_ref())
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            server_name,
            resumed: false,
            peer: peer_identity,
        })),
        retire,
        proxy_protocol: None,
    };
    if chain.run_on_new_connection(&mut info) == FilterStatus::Close {
        conn.close(0u32.into(), b"refused");
        return;
    }
    let c = Connection {
        io: DownstreamIo::Streams(Box::new(conn)),
        preface: bytes::Bytes::new(),
        info,
        drain,
    };
    chain.serve(c).await;
}

/// A QUIC connection is a transport of streams; the HTTP/3 codec takes the
/// `quinn::Connection` back from `into_any`.
impl StreamTransport for quinn::Connection {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn refuse(&self) {
        self.close(0u32.into(), b"refused");
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// The `reason` label of a failed QUIC handshake.
fn handshake_error_reason(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => "timeout",
        E::TransportError(t) if t.code.to_string().contains("crypto") => "tls_alert",
        E::TransportError(_) => "quic_protocol_error",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "peer_closed",
        E::Reset => "reset",
        E::VersionMismatch => "version_mismatch",
        E::LocallyClosed | E::CidsExhausted => "local",
    }
}
