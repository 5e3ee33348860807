//! The UDP proxy listener (Envoy's `envoy.filters.udp_listener.udp_proxy`):
//! one socket per listener; a session per client address, each with its
//! own upstream UDP socket connected to an Endpoint the Cluster's load
//! balancer chose; datagrams go both ways until the session is idle for
//! `idle_timeout`. The session table is owned by the listener's one task
//! (no lock); a session's task reads its upstream socket and answers the
//! client through the shared listener socket. With
//! `use_per_packet_load_balancing` every datagram picks an Endpoint and a
//! session is keyed by the client and that Endpoint, so a client has one
//! upstream socket per Endpoint it was sent to.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterManager, ClusterRefs};
use crate::config::ListenerConfig;
use crate::config::udp_proxy::{DEFAULT_MAX_RX_DATAGRAM, UdpSocketConfig};
use crate::lb::LbContext;
use crate::listener::{CompiledListener, RunningListener};
use crate::metrics::names;

/// The UDP largest payload: the listener's one receive buffer is this big,
/// so a datagram over `max_rx_datagram_size` is seen whole and dropped
/// instead of forwarded cut.
const MAX_UDP: usize = 65_536;

/// A compiled `udp_proxy`.
pub struct UdpProxy {
    pub cluster: Arc<Cluster>,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub max_rx: usize,
    /// Bound on a client's datagram (`downstream_socket_config`).
    pub max_rx_down: usize,
    pub hash_source_ip: bool,
    pub per_packet: bool,
    stats: Arc<UdpStats>,
}

impl std::fmt::Debug for UdpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpProxy")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_sessions", &self.max_sessions)
            .field("max_rx", &self.max_rx)
            .field("max_rx_down", &self.max_rx_down)
            .field("per_packet", &self.per_packet)
            .finish()
    }
}

/// Metric handles, made once per listener so a datagram costs no lookup.
struct UdpStats {
    active: Gauge,
    sessions: Counter,
    dgram_up: Counter,
    bytes_up: Counter,
    dgram_down: Counter,
    bytes_down: Counter,
    overflow: Counter,
    no_upstream: Counter,
    no_route: Counter,
    too_large: Counter,
    send_error: Counter,
    draining: Counter,
}

impl UdpStats {
    fn new(listener: &str) -> Self {
        let l = listener.to_string();
        let dropped = |reason: &'static str| metrics::counter!(names::UDP_PROXY_DATAGRAMS_DROPPED_TOTAL, "listener" => l.clone(), "reason" => reason);
        Self {
            active: metrics::gauge!(names::UDP_PROXY_SESSIONS_ACTIVE, "listener" => l.clone()),
            sessions: metrics::counter!(names::UDP_PROXY_SESSIONS_TOTAL, "listener" => l.clone()),
            dgram_up: metrics::counter!(names::UDP_PROXY_DATAGRAMS_TOTAL, "listener" => l.clone(), "direction" => "upstream"),
            bytes_up: metrics::counter!(names::UDP_PROXY_BYTES_TOTAL, "listener" => l.clone(), "direction" => "upstream"),
            dgram_down: metrics::counter!(names::UDP_PROXY_DATAGRAMS_TOTAL, "listener" => l.clone(), "direction" => "downstream"),
            bytes_down: metrics::counter!(names::UDP_PROXY_BYTES_TOTAL, "listener" => l.clone(), "direction" => "downstream"),
            overflow: dropped("session_overflow"),
            no_upstream: dropped("no_healthy_upstream"),
            no_route: dropped("no_route"),
            too_large: dropped("too_large"),
            send_error: dropped("send_error"),
            draining: dropped("draining"),
        }
    }
}

/// A compiled `udp_proxy` and the cluster it uses.
pub type Compiled = (Arc<UdpProxy>, ClusterRefs);

/// Compiles `udp_proxy` of listener `path`, if set: the cluster it uses
/// is returned for the listener's cluster set. Errors name the field.
pub fn compile(
    cfg: &ListenerConfig,
    path: &str,
    clusters: &ClusterManager,
) -> Result<Option<Compiled>, (String, String)> {
    let Some(u) = &cfg.udp_proxy else {
        return Ok(None);
    };
    let err = |field: &str, msg: &str| Err((format!("{path}.{field}"), msg.to_string()));
    if !cfg.filter_chains.is_empty() {
        return err(
            "filter_chains",
            "a udp_proxy listener has no filter chains (it carries datagrams, not connections)",
        );
    }
    if cfg.quic.is_some() {
        return err("quic", "a listener is either QUIC or udp_proxy");
    }
    if !cfg.listener_filters.is_empty() {
        return err(
            "listener_filters",
            "TCP listener filters do not apply to a udp_proxy listener",
        );
    }
    if cfg.use_original_dst
        || !cfg.bind_to_port
        || cfg.transparent == Some(true)
        || cfg.freebind == Some(true)
    {
        return err(
            "udp_proxy",
            "use_original_dst, bind_to_port: false, transparent and freebind are not supported on a udp_proxy listener",
        );
    }
    let Some(cluster) = clusters.get(&u.cluster) else {
        return err(
            "udp_proxy.cluster",
            &format!("unknown cluster '{}'", u.cluster),
        );
    };
    if u.idle_timeout.is_zero() {
        return err("udp_proxy.idle_timeout", "must be greater than 0");
    }
    if u.max_sessions == 0 {
        return err("udp_proxy.max_sessions", "must be at least 1");
    }
    let mut hash_source_ip = false;
    for (i, h) in u.hash_policies.iter().enumerate() {
        if !h.source_ip {
            return err(
                &format!("udp_proxy.hash_policies[{i}].source_ip"),
                "the only hash policy supported is source_ip: true",
            );
        }
        hash_source_ip = true;
    }
    let max_rx = |c: &Option<UdpSocketConfig>, field: &str, default: u32| {
        let v = c
            .as_ref()
            .and_then(|s| s.max_rx_datagram_size)
            .unwrap_or(default) as usize;
        if v == 0 || v >= MAX_UDP {
            return Err((
                format!("{path}.udp_proxy.{field}.max_rx_datagram_size"),
                "must be between 1 and 65535".to_string(),
            ));
        }
        Ok(v)
    };
    let max_rx_up = max_rx(
        &u.upstream_socket_config,
        "upstream_socket_config",
        DEFAULT_MAX_RX_DATAGRAM,
    )?;
    // Unset, a client's datagram has the upstream bound (as before the
    // listener side could be configured on its own).
    let max_rx_down = max_rx(
        &u.downstream_socket_config,
        "downstream_socket_config",
        max_rx_up as u32,
    )?;
    let mut used = ClusterRefs::new();
    used.insert(u.cluster.as_str().into(), cluster.clone());
    Ok(Some((
        Arc::new(UdpProxy {
            cluster: cluster.clone(),
            idle_timeout: u.idle_timeout,
            max_sessions: u.max_sessions as usize,
            max_rx: max_rx_up,
            max_rx_down,
            hash_source_ip,
            per_packet: u.use_per_packet_load_balancing,
            stats: Arc::new(UdpStats::new(&cfg.name)),
        }),
        used,
    )))
}

/// Binds the listener's UDP socket.
pub fn bind(l: &CompiledListener) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(l.address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&l.address.into())?;
    UdpSocket::from_std(socket.into())
}

/// The hash a session's endpoint is chosen with.
fn session_hash(hash_source_ip: bool, peer: &SocketAddr) -> Option<u64> {
    if !hash_source_ip {
        return None;
    }
    Some(match peer.ip() {
        IpAddr::V4(a) => crate::lb::hash_key(&a.octets()),
        IpAddr::V6(a) => crate::lb::hash_key(&a.octets()),
    })
}

/// A session's key: the client, and with per-packet balancing the
/// Endpoint (one upstream socket per Endpoint the client reached).
type Key = (SocketAddr, Option<SocketAddr>);

/// One client's session, as the listener task sees it.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    /// Set by the session's task when it ends on idle.
    closed: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Serves the listener until `stop`; after `stop` no session is created
/// and the task ends once the open sessions have gone idle.
pub async fn serve(
    running: Arc<RunningListener>,
    sock: UdpSocket,
    stop: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let _guard = tracker.token();
    let sock = Arc::new(sock);
    let epoch = Instant::now();
    let mut sessions: HashMap<Key, Session> = HashMap::new();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<Key>();
    let mut buf = vec![0u8; MAX_UDP];
    let mut stopping = false;
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP errors surface here on some systems; the socket
                    // stays usable.
                    tracing::debug!("udp_proxy: recv: {e}");
                    continue;
                }
            },
            Some(key) = ended_rx.recv() => {
                if sessions.get(&key).is_some_and(|s| s.closed.load(Ordering::Acquire)) {
                    sessions.remove(&key);
                }
                if stopping && sessions.is_empty() {
                    break;
                }
                continue;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                if sessions.is_empty() {
                    break;
                }
                continue;
            }
        };
        let compiled = running.compiled.load();
        let Some(proxy) = compiled.udp.as_ref() else {
            break;
        };
        let st = &proxy.stats;
        if n > proxy.max_rx_down {
            st.too_large.increment(1);
            continue;
        }
        // The cluster is a `not_found` stand-in (CDS removed it while this
        // listener names it): every datagram is dropped and counted, its
        // sessions' included, as Envoy's udp_proxy counts
        // `downstream_sess_no_route`, until CDS sends the cluster again.
        if proxy.cluster.not_found {
            st.no_route.increment(1);
            continue;
        }
        let ctx = LbContext {
            hash: session_hash(proxy.hash_source_ip, &peer),
        };
        // Per-packet: the Endpoint is chosen first, it is part of the key.
        let picked = if proxy.per_packet {
            let Some(ep) = proxy.cluster.choose(&ctx, &[]) else {
                st.no_upstream.increment(1);
                continue;
            };
            Some(ep)
        } else {
            None
        };
        let key: Key = (peer, picked.as_ref().map(|ep| ep.address));
        let live = sessions
            .get(&key)
            .filter(|s| !s.closed.load(Ordering::Acquire));
        let upstream = match live {
            Some(s) => {
                s.last
                    .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                s.upstream.clone()
            }
            None => {
                if stopping {
                    st.draining.increment(1);
                    continue;
                }
                if let Some(old) = sessions.remove(&key) {
                    old.stop.cancel();
                }
                if sessions.len() >= proxy.max_sessions {
                    st.overflow.increment(1);
                    continue;
                }
                let ep = match picked {
                    Some(ep) => ep,
                    None => match proxy.cluster.choose(&ctx, &[]) {
                        Some(ep) => ep,
                        None => {
                            st.no_upstream.increment(1);
                            continue;
                        }
                    },
                };
                let s = match open(ep.address).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(endpoint = %ep.address, "udp_proxy: upstream socket: {e}");
                        st.send_error.increment(1);
                        continue;
                    }
                };
                let session = Session {
                    upstream: Arc::new(s),
                    last: Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64)),
                    closed: Arc::new(AtomicBool::new(false)),
                    stop: stop.child_token(),
                };
                st.sessions.increment(1);
                st.active.increment(1.0);
                tokio::spawn(session_loop(
                    key,
                    session.upstream.clone(),
                    sock.clone(),
                    session.last.clone(),
                    session.closed.clone(),
                    session.stop.clone(),
                    epoch,
                    proxy.clone(),
                    ended_tx.clone(),
                ));
                let up = session.upstream.clone();
                sessions.insert(key, session);
                up
            }
        };
        match upstream.send(&buf[..n]).await {
            Ok(_) => {
                st.dgram_up.increment(1);
                st.bytes_up.increment(n as u64);
            }
            Err(_) => st.send_error.increment(1),
        }
    }
    for s in sessions.values() {
        s.stop.cancel();
    }
}

/// An upstream socket connected to `to`, of its address family.
async fn open(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(to).await?;
    Ok(s)
}

/// Carries a session's replies to its client until it is idle for
/// `idle_timeout` or stopped.
#[allow(clippy::too_many_arguments)]
async fn session_loop(
    key: Key,
    upstream: Arc<UdpSocket>,
    downstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    stop: CancellationToken,
    epoch: Instant,
    proxy: Arc<UdpProxy>,
    ended: tokio::sync::mpsc::UnboundedSender<Key>,
) {
    let peer = key.0;
    let st = &proxy.stats;
    let idle = proxy.idle_timeout;
    let mut buf = vec![0u8; proxy.max_rx + 1];
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = epoch + since + idle;
        tokio::select! {
            r = upstream.recv(&mut buf) => {
                let n = match r {
                    Ok(n) => n,
                    // ICMP port unreachable from the endpoint: keep the
                    // session, the endpoint may come back.
                    Err(_) => continue,
                };
                if n > proxy.max_rx {
                    st.too_large.increment(1);
                    continue;
                }
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                match downstream.send_to(&buf[..n], peer).await {
                    Ok(_) => {
                        st.dgram_down.increment(1);
                        st.bytes_down.increment(n as u64);
                    }
                    Err(_) => st.send_error.increment(1),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                if epoch + since + idle <= Instant::now() {
                    break;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    closed.store(true, Ordering::Release);
    st.active.decrement(1.0);
    let _ = ended.send(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_hash_ignores_the_port() {
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:2000".parse().unwrap();
        let c: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        assert_eq!(session_hash(true, &a), session_hash(true, &b));
        assert_ne!(session_hash(true, &a), session_hash(true, &c));
        assert_eq!(session_hash(false, &a), None);
    }
}
