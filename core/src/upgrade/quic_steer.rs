//! QUIC across a hot upgrade: the connections the old process still serves
//! keep receiving their packets.
//!
//! Both processes share the listener's UDP socket, and the kernel gives
//! each datagram to whichever reads first; a QUIC packet for a connection
//! the reader does not know is answered with a stateless reset, which
//! would cut every HTTP/3 connection open at the hand-over. So (as Envoy
//! forwards them during its hot restart):
//!
//! - every process issues connection IDs whose first byte is its own tag
//!   (`TaggedCids`); a new process takes the tag after its old one's;
//! - with the QUIC socket, the old process hands over one end of a Unix
//!   datagram socket pair (`Kind::QuicForward`), keeps the other, and after
//!   `draining` stops reading the UDP socket: it reads that pair only,
//!   and still sends on the shared UDP socket;
//! - the new process forwards every 1-RTT or Handshake packet whose
//!   destination connection ID carries another tag through the pair
//!   (`Steered`); Initial and 0-RTT packets carry the client's own ID and
//!   stay with the new process, which is the one accepting.
//!
//! A process that received packets from a newer one forwards the ones for
//! its own old process the same way, so three upgrades in a row keep the
//! first process's connections too. Without `--upgrade-socket` none of this
//! is installed: the endpoint reads its socket directly.

use crate::metrics::names;
use futures_util::task::AtomicWaker;
use quinn::udp::RecvMeta;
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// Length of the connection IDs meshgate issues (quinn's default).
const CID_LEN: usize = 8;
/// Forwarded datagram header: peer address (16, v4 mapped), peer port (2),
/// a local-address flag (1) and the local address (16).
const HEADER: usize = 35;

/// This process's connection ID tag; 0 until chosen.
static TAG: AtomicU8 = AtomicU8::new(0);

/// This process's tag: random on a fresh start, chosen once.
pub fn tag() -> u8 {
    let t = TAG.load(Ordering::Relaxed);
    if t != 0 {
        return t;
    }
    let fresh = rand::random::<u8>().max(1);
    match TAG.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(t) => t,
    }
}

/// A new process takes the tag after its old process's (never 0).
pub fn follow(old: u8) {
    let next = match old.wrapping_add(1) {
        0 => 1,
        t => t,
    };
    TAG.store(next, Ordering::Relaxed);
}

/// Connection IDs of `CID_LEN` random bytes whose first byte is the tag.
pub struct TaggedCids(u8);

impl TaggedCids {
    pub fn new() -> Self {
        Self(tag())
    }
}

impl Default for TaggedCids {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = rand::random::<[u8; CID_LEN]>();
        b[0] = self.0;
        ConnectionId::new(&b)
    }
    fn cid_len(&self) -> usize {
        CID_LEN
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The tag of the connection a packet is for, when it names one of ours:
/// 1-RTT (short header) and Handshake packets. Initial and 0-RTT packets
/// may carry the client's own random ID: never steered.
fn packet_tag(p: &[u8]) -> Option<u8> {
    let b0 = *p.first()?;
    if b0 & 0x80 == 0 {
        // Short header: flags, then our CID_LEN-byte ID.
        return (p.len() > CID_LEN).then(|| p[1]);
    }
    let version = p.get(1..5)?;
    if version == [0, 0, 0, 0] || (b0 >> 4) & 0x3 != 2 {
        return None;
    }
    (usize::from(*p.get(5)?) == CID_LEN)
        .then(|| p.get(6).copied())
        .flatten()
}

fn put_addr(out: &mut Vec<u8>, ip: IpAddr) {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
}

fn get_addr(b: &[u8]) -> IpAddr {
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16]));
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// A QUIC listener's UDP socket with packet steering between processes.
pub struct Steered {
    inner: Arc<dyn AsyncUdpSocket>,
    tag: u8,
    /// To the old process (the new side of a hand-over).
    parent: Option<UnixDatagram>,
    /// From the new process (the old side), once handed over.
    child: OnceLock<tokio::net::UnixDatagram>,
    /// The child's end waiting to be registered with the runtime.
    child_pending: Mutex<Option<UnixDatagram>>,
    /// Set after `draining`: the UDP socket is the new process's to read.
    handed_over: AtomicBool,
    /// The endpoint driver, woken when the hand-over switches reading
    /// to the child channel.
    waker: AtomicWaker,
}

impl fmt::Debug for Steered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steered")
            .field("tag", &self.tag)
            .field("parent", &self.parent.is_some())
            .field("handed_over", &self.handed_over.load(Ordering::Relaxed))
            .finish()
    }
}

/// Steered sockets by their listener's configured address, for the next
/// hand-over.
#[allow(clippy::type_complexity)]
static STEERED: Mutex<Vec<(SocketAddr, Weak<Steered>)>> = Mutex::new(Vec::new());

impl Steered {
    /// Wraps the listener's socket (`address`: its configured address);
    /// `parent`: the channel to the old process, when it handed one over.
    pub fn new(
        address: SocketAddr,
        socket: std::net::UdpSocket,
        parent: Option<UnixDatagram>,
    ) -> io::Result<Arc<Self>> {
        use quinn::Runtime;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        if let Some(p) = &parent {
            p.set_nonblocking(true)?;
        }
        let s = Arc::new(Self {
            inner,
            tag: tag(),
            parent,
            child: OnceLock::new(),
            child_pending: Mutex::new(None),
            handed_over: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut reg = STEERED.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        reg.push((address, Arc::downgrade(&s)));
        Ok(s)
    }

    /// Forwards `p` (from `peer`, to `local`) to the old process; true if
    /// it went (or was dropped there: it was not ours either way).
    fn forward(&self, p: &[u8], peer: SocketAddr, local: Option<IpAddr>) -> bool {
        let Some(parent) = &self.parent else {
            return false;
        };
        let mut msg = Vec::with_capacity(HEADER + p.len());
        put_addr(&mut msg, peer.ip());
        msg.extend_from_slice(&peer.port().to_be_bytes());
        msg.push(u8::from(local.is_some()));
        put_addr(&mut msg, local.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        msg.extend_from_slice(p);
        let result = match parent.send(&msg) {
            Ok(_) => "forwarded",
            // The old process is gone or behind: the packet is lost, as
            // on any congested path; QUIC retransmits.
            Err(_) => "dropped",
        };
        metrics::counter!(names::UPGRADE_QUIC_PACKETS_TOTAL, "result" => result).increment(1);
        true
    }

    /// Forwards the other processes' packets among the `n` received ones
    /// and compacts what stays; returns how many entries stay.
    fn steer(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let (len, stride) = (meta[i].len, meta[i].stride.max(1));
            let (peer, local) = (meta[i].addr, meta[i].dst_ip);
            // Segments (GRO) stay in order; foreign ones are cut out.
            let mut out = 0;
            let mut at = 0;
            while at < len {
                let end = (at + stride).min(len);
                let foreign = packet_tag(&bufs[i][at..end]).is_some_and(|t| t != self.tag);
                if !(foreign && self.forward(&bufs[i][at..end], peer, local)) {
                    if out != at {
                        bufs[i].copy_within(at..end, out);
                    }
                    out += end - at;
                }
                at = end;
            }
            if out == 0 {
                continue;
            }
            meta[i].len = out;
            if kept != i {
                let (lo, hi) = bufs.split_at_mut(i);
                lo[kept][..out].copy_from_slice(&hi[0][..out]);
                meta[kept] = meta[i];
            }
            kept += 1;
        }
        kept
    }

    /// One datagram from the new process, into `bufs[0]`/`meta[0]`.
    fn poll_child(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.child.get().is_none() {
            let pending = self
                .child_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(p) = pending {
                let _ = p.set_nonblocking(true);
                match tokio::net::UnixDatagram::from_std(p) {
                    Ok(p) => {
                        let _ = self.child.set(p);
                    }
                    Err(e) => tracing::warn!(error = %e, "QUIC hand-over channel"),
                }
            }
        }
        let Some(child) = self.child.get() else {
            return Poll::Pending;
        };
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut bufs[0]);
            match child.poll_recv(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n <= HEADER {
                continue;
            }
            let b = &bufs[0][..n];
            let peer = SocketAddr::new(get_addr(&b[..16]), u16::from_be_bytes([b[16], b[17]]));
            let local = (b[18] == 1).then(|| get_addr(&b[19..35]));
            let p = &b[HEADER..n];
            if packet_tag(p).is_some_and(|t| t != self.tag) && self.parent.is_some() {
                // For the process before this one.
                let p = p.to_vec();
                self.forward(&p, peer, local);
                continue;
            }
            bufs[0].copy_within(HEADER..n, 0);
            meta[0] = RecvMeta {
                addr: peer,
                len: n - HEADER,
                stride: n - HEADER,
                ecn: None,
                dst_ip: local,
            };
            return Poll::Ready(Ok(1));
        }
    }
}

impl AsyncUdpSocket for Steered {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.waker.register(cx.waker());
        if let Poll::Ready(r) = self.poll_child(cx, bufs, meta) {
            return Poll::Ready(r);
        }
        if self.handed_over.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) if self.parent.is_some() => {
                    let kept = self.steer(bufs, meta, n);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Old side, while sending sockets: a channel for the QUIC listener at
/// `address`; returns the new process's end (None: no such endpoint).
pub fn channel_for(address: SocketAddr) -> Option<UnixDatagram> {
    let s = STEERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(a, _)| *a == address)
        .and_then(|(_, w)| w.upgrade())?;
    let (mine, theirs) = match UnixDatagram::pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%address, error = %e, "QUIC hand-over channel: connections open at the hand-over may be cut");
            return None;
        }
    };
    // The newest child's channel wins (a failed hand-over leaves its
    // channel unused).
    *s.child_pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(mine);
    Some(theirs)
}

/// Old side, after `draining`: every steered socket with a channel stops
/// reading UDP and reads what the new process forwards.
pub fn handed_over() {
    let reg = STEERED.lock().unwrap_or_else(|e| e.into_inner());
    for s in reg.iter().filter_map(|(_, w)| w.upgrade()) {
        let has_channel = s.child.get().is_some()
            || s.child_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        if has_channel {
            s.handed_over.store(true, Ordering::Relaxed);
            s.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_short_and_handshake_packets_only() {
        let mut short = vec![0x40];
        short.extend_from_slice(&[7, 1, 2, 3, 4, 5, 6, 7, 0xaa, 0xbb]);
        assert_eq!(packet_tag(&short), Some(7));
        // Long header, version 1, Handshake (type 2), DCID length 8.
        let mut hs = vec![0xe0, 0, 0, 0, 1, 8, 9, 1, 2, 3, 4, 5, 6, 7, 0];
        assert_eq!(packet_tag(&hs), Some(9));
        // Initial (type 0): the client's own ID, never steered.
        hs[0] = 0xc0;
        assert_eq!(packet_tag(&hs), None);
        // Version negotiation, truncated and empty packets.
        assert_eq!(packet_tag(&[0x80, 0, 0, 0, 0, 8]), None);
        assert_eq!(packet_tag(&[0x40, 7]), None);
        assert_eq!(packet_tag(&[]), None);
    }

    #[test]
    fn generated_ids_carry_the_tag() {
        follow(41);
        let mut g = TaggedCids::new();
        let id = g.generate_cid();
        assert_eq!(id.len(), CID_LEN);
        assert_eq!(id[0], 42);
        follow(255);
        assert_eq!(tag(), 1);
    }

    #[test]
    fn addresses_round_trip() {
        for ip in ["127.0.0.1", "::1", "10.1.2.3", "fe80::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut b = Vec::new();
            put_addr(&mut b, ip);
            assert_eq!(get_addr(&b), ip);
        }
    }
}
