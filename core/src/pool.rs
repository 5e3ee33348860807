//! The upstream connection pool (DESIGN.md layer 8; docs/architecture.md).
//! Per endpoint of a cluster, the connections a codec keeps for reuse, and
//! what applies to them whatever the protocol:
//!
//! - the cluster's circuit breaker (`max_connections`), connect timeout,
//!   connect back-off and connection counters: a codec opens a connection
//!   only through the `Dial` the pool hands it;
//! - endpoint removal: when an endpoint leaves its cluster,
//!   `Cluster::update_endpoints` closes its pool (`EndpointPool::close`):
//!   idle connections close at once, busy ones finish their streams and
//!   then close instead of coming back;
//! - each request's outcome reported to its endpoint (`Outcome`, cheap
//!   atomic counters on `Endpoint`), and the endpoint's `Health`, which the
//!   load balancer reads when it chooses: the hooks of health checking and
//!   outlier detection.
//!
//! The key is (endpoint, protocol, TLS settings): an `Endpoint` belongs to
//! one `Cluster`, which has one upstream codec and one TLS setting, and a
//! cluster whose protocol or TLS changes is rebuilt with new endpoints. A
//! pool kept on the endpoint (`Endpoint::pool`) is therefore keyed by all
//! three, and the request path reaches it from the endpoint the load
//! balancer chose, without a map lookup.
//!
//! Two modes:
//! - `ExclusivePool` (HTTP/1.1): one stream per connection; a connection
//!   comes back idle when its exchange ended cleanly, up to a number of
//!   idle connections, and is not reused after an idle timeout. It is
//!   generic over the codec's connection type (no `dyn`, no allocation per
//!   request): the HTTP/1.1 path is the most performance-sensitive one.
//! - `MuxPool` (HTTP/2, HTTP/3, Dubbo, Bolt, users' RPC codecs): streams
//!   share connections up to each connection's stream limit (the peer's or
//!   the codec's); a second connection opens when the open ones are full;
//!   a closed or draining connection (GOAWAY, presumed dead) gets no new
//!   stream and leaves the pool, its streams in flight finishing on it.
//!   A connection with no stream for `idle_timeout`, or older than
//!   `max_connection_duration`, leaves the pool too (`MuxLimits`).
//!
//! A codec supplies only how to connect and handshake (a closure given a
//! `Dial`), how to open a stream on its connection type (its own code, on
//! the connection the pool hands out), and whether a connection can be
//! reused (`Reusable` or `Multiplexed`). docs/extending.md shows it.

use crate::cluster::{Cluster, ConnectionGuard, Endpoint};
use crate::codec::UpstreamError;
use crate::config::circuit_breakers::RoutingPriority;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

// ------------------------------------------------------------------ dial

/// The pool's permission to open one connection to an endpoint: every
/// transport a codec opens goes through it, so the circuit breaker, the
/// connect timeout, the back-off of a failing endpoint and the connection
/// counters apply the same way to every protocol.
pub struct Dial<'a> {
    cluster: &'a Arc<Cluster>,
    endpoint: &'a Arc<Endpoint>,
    /// A connection slot the pool took (or waited for) before connecting:
    /// the connection opens in it.
    reserved: Mutex<Option<ConnectionGuard>>,
    /// Whose connection breakers (`max_connections`,
    /// `max_pending_requests`, `max_connection_pools`) the connection
    /// counts in: the request's routing priority, whose pool it serves.
    priority: RoutingPriority,
}

impl<'a> Dial<'a> {
    /// A dial for a DEFAULT-priority pool.
    pub fn new(cluster: &'a Arc<Cluster>, endpoint: &'a Arc<Endpoint>) -> Self {
        Self::at(cluster, endpoint, RoutingPriority::Default)
    }

    /// A dial for the pool of `priority` (`Endpoint::pool_at`): the
    /// connection counts in that priority's connection breakers.
    pub fn at(
        cluster: &'a Arc<Cluster>,
        endpoint: &'a Arc<Endpoint>,
        priority: RoutingPriority,
    ) -> Self {
        Self {
            cluster,
            endpoint,
            reserved: Mutex::new(None),
            priority,
        }
    }

    /// The routing priority whose pool and breakers the dial serves.
    pub fn priority(&self) -> RoutingPriority {
        self.priority
    }

    fn reserved(&self) -> Option<ConnectionGuard> {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn cluster(&self) -> &'a Arc<Cluster> {
        self.cluster
    }

    pub fn endpoint(&self) -> &'a Arc<Endpoint> {
        self.endpoint
    }

    /// A TCP connection to the endpoint. The guard holds the connection's
    /// circuit-breaker slot: keep it as long as the connection lives.
    pub async fn tcp(&self) -> Result<(TcpStream, ConnectionGuard), UpstreamError> {
        crate::proxy_protocol::refuse_for_streams(self.cluster)?;
        let up = self
            .cluster
            .connect_endpoint_in(self.endpoint.clone(), false, self.reserved(), self.priority)
            .await?;
        let (stream, _, guard) = up.into_parts();
        Ok((stream, guard))
    }

    /// `tcp`, but at `max_connections` the request waits for a slot
    /// (`max_pending_requests`). For codecs whose connections implement
    /// `Reusable::guard`, so that a finished one frees its slot.
    pub async fn tcp_queued(&self) -> Result<(TcpStream, ConnectionGuard), UpstreamError> {
        crate::proxy_protocol::refuse_for_streams(self.cluster)?;
        let up = self
            .cluster
            .connect_endpoint_in(self.endpoint.clone(), true, self.reserved(), self.priority)
            .await?;
        let (stream, _, guard) = up.into_parts();
        Ok((stream, guard))
    }

    /// A transport the codec opens itself (QUIC), under the same breaker,
    /// timeout, back-off and counters as `tcp`.
    pub async fn with<T>(
        &self,
        connect: impl Future<Output = std::io::Result<T>>,
    ) -> Result<(T, ConnectionGuard), UpstreamError> {
        Ok(self
            .cluster
            .connect_endpoint_with_in(self.endpoint, connect, self.reserved(), self.priority)
            .await?)
    }
}

// ------------------------------------------------- the endpoint's pool

/// A pool kept on an endpoint (`Endpoint::pool`).
pub trait EndpointPool: std::any::Any + Send + Sync {
    /// The endpoint left its cluster: idle connections close now, busy
    /// ones once their streams are done; no connection is pooled again.
    fn close(&self);
}

// -------------------------------------------------------- exclusive mode

/// Whether an idle connection of an `ExclusivePool` can serve another
/// exchange (nothing arrived on it while it sat idle, the peer did not
/// close it), and how many it served.
pub trait Reusable: Send + 'static {
    fn is_reusable(&self) -> bool;

    /// Exchanges the connection carried so far, for
    /// `ExclusiveLimits::max_requests`; a codec that does not count
    /// gets no such limit.
    fn exchanges(&self) -> u32 {
        0
    }

    /// The connection's circuit-breaker slot, when it holds it: a
    /// finished connection is then closed rather than kept idle while a
    /// request waits for a slot (`max_pending_requests`).
    fn guard(&self) -> Option<&ConnectionGuard> {
        None
    }
}

/// What an exclusive pool keeps (a cluster's `protocol_options`).
#[derive(Debug, Clone, Copy)]
pub struct ExclusiveLimits {
    /// Idle connections kept; more are closed.
    pub max_idle: usize,
    /// A connection that carried this many exchanges is closed, not kept
    /// (Envoy's `max_requests_per_connection`); `u32::MAX`: no limit.
    pub max_requests: u32,
    /// A connection opened this long ago is closed, not reused (Envoy's
    /// `max_connection_duration`); counted once per connection.
    pub max_duration: Option<Duration>,
}

/// Whether a connection reached `max_duration`; if so it is counted
/// (`upstream_cx_max_duration_reached`).
fn too_old<C: Reusable>(conn: &C, max: Option<Duration>) -> bool {
    let (Some(max), Some(g)) = (max, conn.guard()) else {
        return false;
    };
    let old = g.age() >= max;
    if old {
        metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_CX_MAX_DURATION_REACHED_TOTAL, "cluster" => g.label().clone()).increment(1);
    }
    old
}

/// An idle connection and when it went idle (coarse clock: idle expiry
/// needs no finer grain than the kernel's tick).
struct Idle<C> {
    conn: C,
    since: Duration,
    /// `ExclusiveLimits::max_duration`, kept for `take`.
    max_duration: Option<Duration>,
}

/// Exclusive mode (HTTP/1.1): one exchange at a time per connection; idle
/// keep-alive connections are stacked, the most recent reused first (its
/// peer is the least likely to have closed it).
pub struct ExclusivePool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    /// The endpoint left its cluster: connections no longer come back.
    closed: AtomicBool,
}

impl<C> Default for ExclusivePool<C> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }
}

impl<C: Reusable> ExclusivePool<C> {
    /// The most recently idle connection that is still usable: idle for
    /// less than `idle_timeout` and reusable. Stale ones met on the way are
    /// closed.
    pub fn take(&self, idle_timeout: Duration) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.is_empty() {
            return None;
        }
        let now = crate::clock::coarse();
        while let Some(c) = idle.pop() {
            if now.saturating_sub(c.since) < idle_timeout
                && c.conn.is_reusable()
                && !too_old(&c.conn, c.max_duration)
            {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse, unless it carried `max_requests` exchanges,
    /// is `max_duration` old, `max_idle` are kept already or the pool was
    /// closed (then it closes, dropped).
    pub fn put(&self, conn: C, limits: &ExclusiveLimits) {
        if self.closed.load(Ordering::Relaxed)
            || conn.exchanges() >= limits.max_requests
            || conn.guard().is_some_and(ConnectionGuard::wanted)
            || too_old(&conn, limits.max_duration)
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < limits.max_idle {
            idle.push(Idle {
                conn,
                since: crate::clock::coarse(),
                max_duration: limits.max_duration,
            });
        }
    }

    /// Idle connections kept now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<C> ExclusivePool<C> {
    /// Closes the idle connections; busy ones close when their exchange is
    /// done.
    pub fn close_idle(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // Taken out under the lock, dropped (closed) outside it.
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        drop(idle);
    }
}

impl<C: Send + 'static> EndpointPool for ExclusivePool<C> {
    fn close(&self) {
        self.close_idle();
    }
}

// ------------------------------------------------------ multiplexed mode

/// A connection of a `MuxPool`: whether it takes new streams, and how many
/// at once.
pub trait Multiplexed: Send + Sync + 'static {
    /// Open and not draining: the peer did not close it or announce its
    /// end (HTTP/2 or HTTP/3 GOAWAY).
    fn is_open(&self) -> bool;

    /// Streams it may carry at once: the peer's limit (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`) or the codec's. A connection at
    /// its limit gets no new stream; the pool opens another one.
    fn max_streams(&self) -> u32 {
        u32::MAX
    }
}

/// One pooled multiplexed connection and its streams in flight.
pub struct MuxConn<C> {
    conn: C,
    streams: AtomicU32,
    /// Streams it was handed, ever (`max_requests`).
    opened: AtomicU32,
    /// Taken out of use (presumed dead, or draining): no new stream.
    retired: AtomicBool,
    /// The pool's waiters, woken when a stream ends.
    freed: Arc<Freed>,
    /// When its last stream ended (coarse clock, ms), for `idle_timeout`.
    idle_since: AtomicU64,
    /// When it was opened (coarse clock), for `max_connection_duration`.
    born: Duration,
}

/// Requests waiting for a stream slot on an endpoint's connections (they
/// are counted in the cluster's pending queue, `cluster::pending`).
#[derive(Default)]
struct Freed {
    waiting: AtomicU32,
    notify: tokio::sync::Notify,
}

impl Freed {
    /// A stream slot freed: the first waiter tries again. One atomic load
    /// while nobody waits.
    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}

/// One request's place among a pool's waiters.
struct FreedWaiter<'a>(&'a Freed);

impl<'a> FreedWaiter<'a> {
    fn new(f: &'a Freed) -> Self {
        f.waiting.fetch_add(1, Ordering::SeqCst);
        Self(f)
    }
}

impl Drop for FreedWaiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: Multiplexed> MuxConn<C> {
    fn usable(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && self.conn.is_open()
    }
}

/// A stream's hold on its connection: the connection counts the stream
/// until this drops, and stays open at least as long.
pub struct MuxStream<C> {
    conn: Arc<MuxConn<C>>,
    fresh: bool,
}

impl<C> MuxStream<C> {
    /// The connection was opened for this stream (not reused).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Takes the connection out of use: no new stream is put on it (the
    /// streams on it finish). For a connection the codec found dead or
    /// draining before the connection itself says so.
    pub fn retire(&self) {
        self.conn.retired.store(true, Ordering::Relaxed);
    }

    /// Streams on the connection now, this one included.
    pub fn streams(&self) -> u32 {
        self.conn.streams.load(Ordering::Relaxed)
    }
}

impl<C> std::ops::Deref for MuxStream<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn.conn
    }
}

impl<C> Drop for MuxStream<C> {
    fn drop(&mut self) {
        // SeqCst: pairs with a waiter's registration (`MuxPool::stream`).
        if self.conn.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.conn.idle_since.store(coarse_ms(), Ordering::Relaxed);
        }
        self.conn.freed.wake();
    }
}

fn coarse_ms() -> u64 {
    crate::clock::coarse().as_millis() as u64
}

/// What a `MuxPool` applies to each of its connections (a cluster's
/// `protocol_options`).
#[derive(Debug, Clone, Copy)]
pub struct MuxLimits {
    /// Streams a connection is handed, ever; then it drains (Envoy's
    /// `max_requests_per_connection`). `u32::MAX`: no limit.
    pub max_requests: u32,
    /// No stream for this long: the connection leaves the pool and closes
    /// (Envoy's `idle_timeout`, `upstream_cx_idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// Opened this long ago: the connection takes no new stream and closes
    /// once its streams end (Envoy's `max_connection_duration`,
    /// `upstream_cx_max_duration_reached`).
    pub max_duration: Option<Duration>,
}

impl Default for MuxLimits {
    fn default() -> Self {
        Self {
            max_requests: u32::MAX,
            idle_timeout: None,
            max_duration: None,
        }
    }
}

type Conns<C> = Mutex<Vec<Arc<MuxConn<C>>>>;

/// Why a pooled connection was let go by its timer.
#[derive(Clone, Copy, PartialEq)]
enum Expiry {
    Idle,
    MaxDuration,
}

/// A pooled connection's timer (one task per connection, only when the
/// pool has an idle timeout or a maximum duration): it takes the
/// connection out of the pool when it has been idle for `idle_timeout` or
/// open for `max_duration`, counting why. Dropping the pool's reference
/// closes an idle connection at once (the codec's connection task sees
/// its handles gone); a busy one finishes its streams first. Holds only
/// weak references between wake-ups.
async fn expire<C: Multiplexed>(
    conns: std::sync::Weak<Conns<C>>,
    conn: std::sync::Weak<MuxConn<C>>,
    limits: MuxLimits,
    cluster: metrics::SharedString,
) {
    loop {
        let Some(c) = conn.upgrade() else { return };
        let Some(list) = conns.upgrade() else { return };
        let now = crate::clock::coarse();
        let mut wait = Duration::MAX;
        let mut why = None;
        if let Some(max) = limits.max_duration {
            match (c.born + max).checked_sub(now) {
                Some(left) if !left.is_zero() => wait = left,
                _ => why = Some(Expiry::MaxDuration),
            }
        }
        {
            // Under the pool's lock: `pick` hands out streams under it, so
            // an idle connection seen here gets no stream meanwhile.
            let mut l = list.lock().unwrap_or_else(|p| p.into_inner());
            if !c.usable() {
                // Closed, retired or no longer pooled: nothing to time.
                l.retain(|x| !Arc::ptr_eq(x, &c));
                return;
            }
            if let (None, Some(t)) = (why, limits.idle_timeout) {
                if c.streams.load(Ordering::SeqCst) == 0 {
                    let since = Duration::from_millis(c.idle_since.load(Ordering::Relaxed));
                    match (since + t).checked_sub(now) {
                        Some(left) if !left.is_zero() => wait = wait.min(left),
                        _ => why = Some(Expiry::Idle),
                    }
                } else {
                    // It goes idle later than now: not before `t` from now.
                    wait = wait.min(t);
                }
            }
            if let Some(why) = why {
                c.retired.store(true, Ordering::Relaxed);
                l.retain(|x| !Arc::ptr_eq(x, &c));
                let name = match why {
                    Expiry::Idle => crate::metrics::names::CLUSTER_UPSTREAM_CX_IDLE_TIMEOUT_TOTAL,
                    Expiry::MaxDuration => {
                        crate::metrics::names::CLUSTER_UPSTREAM_CX_MAX_DURATION_REACHED_TOTAL
                    }
                };
                metrics::counter!(name, "cluster" => cluster).increment(1);
                return;
            }
        }
        drop((c, list));
        // The coarse clock may lag the timer by a tick: at least 1 ms.
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// Multiplexed mode (HTTP/2, HTTP/3, RPC): streams share connections.
pub struct MuxPool<C> {
    conns: Arc<Conns<C>>,
    /// One connect at a time per endpoint: streams that find every
    /// connection full wait for the one being opened instead of each
    /// opening their own.
    connecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Streams per connection, ever: a connection that was handed this
    /// many is retired (Envoy's `max_requests_per_connection`).
    max_requests: u32,
    /// The connections' idle timeout and maximum duration.
    limits: MuxLimits,
    /// Requests waiting for a stream slot here or a connection slot.
    freed: Arc<Freed>,
}

impl<C> Default for MuxPool<C> {
    fn default() -> Self {
        Self::with_max_requests(u32::MAX)
    }
}

impl<C> MuxPool<C> {
    /// A pool whose connections each carry at most `max_requests` streams
    /// (`u32::MAX`: no limit); then they drain and close.
    pub fn with_max_requests(max_requests: u32) -> Self {
        Self::with_limits(MuxLimits {
            max_requests,
            ..MuxLimits::default()
        })
    }

    /// A pool whose connections follow `limits`.
    pub fn with_limits(limits: MuxLimits) -> Self {
        Self {
            conns: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            max_requests: limits.max_requests.max(1),
            limits,
            freed: Arc::default(),
        }
    }
}

impl<C: Multiplexed> MuxPool<C> {
    /// A stream on an open connection below its stream limit, or on a new
    /// connection made by `connect` through `dial`. When every connection
    /// (at least one) is at its stream limit and the cluster at
    /// `max_connections`, the request waits in the cluster's pending queue (`max_pending_requests`,
    /// FIFO per endpoint) for a stream to end or a connection slot to free;
    /// past the queue's bound it overflows at once.
    pub async fn stream<'d, F, Fut>(
        &self,
        dial: Dial<'d>,
        connect: F,
    ) -> Result<MuxStream<C>, UpstreamError>
    where
        F: FnOnce(Dial<'d>) -> Fut,
        Fut: Future<Output = Result<C, UpstreamError>>,
    {
        if let Some(s) = self.pick() {
            return Ok(s);
        }
        let slot = match dial
            .cluster
            .reserve_connection(dial.endpoint, dial.priority)
        {
            Some(g) => Some(g),
            // No connection here whose streams could end, and none being
            // dialled (its holder keeps `connecting`): the connect overflows
            // at once, as at `max_connections` before.
            None if !self.has_usable() && self.connecting.try_lock().is_ok() => None,
            None => {
                let _waiter = FreedWaiter::new(&self.freed);
                let got = dial
                    .cluster
                    .wait_pending(
                        &self.freed.notify,
                        || {
                            // Pairs with `MuxStream::drop`: a stream that
                            // ended before we registered is seen here.
                            std::sync::atomic::fence(Ordering::SeqCst);
                            match self.pick() {
                                Some(s) => Some(Err(s)),
                                None => dial
                                    .cluster
                                    .reserve_connection(dial.endpoint, dial.priority)
                                    .map(Ok),
                            }
                        },
                        dial.priority,
                    )
                    .await?;
                match got {
                    Err(stream) => return Ok(stream),
                    Ok(g) => Some(g),
                }
            }
        };
        let _connecting = self.connecting.lock().await;
        if let Some(s) = self.pick() {
            // The slot goes back (and wakes a waiter).
            return Ok(s);
        }
        *dial.reserved.lock().unwrap_or_else(|p| p.into_inner()) = slot;
        let label = dial.cluster.stats.label().clone();
        let conn = Arc::new(MuxConn {
            conn: connect(dial).await?,
            streams: AtomicU32::new(1),
            opened: AtomicU32::new(1),
            retired: AtomicBool::new(self.max_requests <= 1),
            freed: self.freed.clone(),
            idle_since: AtomicU64::new(coarse_ms()),
            born: crate::clock::coarse(),
        });
        // An endpoint removed meanwhile: the stream still runs, on a
        // connection that is never pooled.
        if !self.closed.load(Ordering::Relaxed) {
            self.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn.clone());
            if self.limits.idle_timeout.is_some() || self.limits.max_duration.is_some() {
                tokio::spawn(expire(
                    Arc::downgrade(&self.conns),
                    Arc::downgrade(&conn),
                    self.limits,
                    label,
                ));
            }
            // Its other stream slots go to the requests waiting here.
            if self.freed.waiting.load(Ordering::SeqCst) > 0 {
                self.freed.notify.notify_waiters();
            }
        }
        Ok(MuxStream { conn, fresh: true })
    }

    /// A stream on a pooled connection with room, if one has; connections
    /// that closed or were retired leave the pool on the way.
    fn pick(&self) -> Option<MuxStream<C>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.usable());
        // The first with room: streams gather on the oldest connections
        // and a newer one idles out when load drops.
        let c = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < c.conn.max_streams())?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        if c.opened.fetch_add(1, Ordering::Relaxed) + 1 >= self.max_requests {
            c.retired.store(true, Ordering::Relaxed);
        }
        Some(MuxStream {
            conn: c.clone(),
            fresh: false,
        })
    }

    /// Whether a pooled connection is usable (its streams will end and
    /// free slots for a waiter).
    fn has_usable(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.iter().any(|c| c.usable())
    }

    /// Connections pooled now (open or not yet found closed).
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<C: Send + Sync + 'static> EndpointPool for MuxPool<C> {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // The pool's references go; each connection closes when its last
        // stream's does (the codec's connection task sees its handles
        // gone).
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        drop(conns);
    }
}

// ------------------------------------------------ ALPN learned per endpoint

/// The HTTP protocol an endpoint's TLS handshake chose by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAlpn {
    /// `http/1.1`, or no protocol agreed (plaintext, or a server without
    /// ALPN): HTTP/1.1, as Envoy does.
    Http1 = 1,
    /// `h2`.
    Http2 = 2,
}

/// What the last handshake with an endpoint of a `protocol: auto` cluster
/// negotiated (Envoy keeps the ALPN result per host): which of its two
/// pools (HTTP/1.1 exclusive, HTTP/2 multiplexed) its next request goes
/// to. Unknown until the first handshake; each new connection's handshake
/// updates it.
#[derive(Debug, Default)]
pub struct LearnedAlpn(AtomicU8);

impl LearnedAlpn {
    pub fn get(&self) -> Option<HttpAlpn> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(HttpAlpn::Http1),
            2 => Some(HttpAlpn::Http2),
            _ => None,
        }
    }

    pub fn set(&self, p: HttpAlpn) {
        self.0.store(p as u8, Ordering::Relaxed);
    }
}

// ------------------------------------------- outcomes and endpoint health

/// How one request to an endpoint ended, as health checking and outlier
/// detection count it (Envoy's outlier detection: 5xx, gateway and
/// local-origin failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response other than 5xx.
    Success,
    /// No connection could be had (refused, timed out, TLS failed).
    ConnectFailure,
    /// The connection or stream was reset before a response head.
    Reset,
    /// No response head in time.
    Timeout,
    /// A 5xx response, or a response meshgate could not accept.
    ServerError,
}

/// An endpoint's request outcomes since it joined its cluster: relaxed
/// atomic counters, written on the request path without a lock.
#[derive(Debug, Default)]
pub struct Outcomes {
    success: AtomicU64,
    connect_failure: AtomicU64,
    reset: AtomicU64,
    timeout: AtomicU64,
    server_error: AtomicU64,
    /// Failures since the last success (any kind but `Success`).
    consecutive_failures: AtomicU32,
}

/// A copy of an endpoint's `Outcomes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub success: u64,
    pub connect_failure: u64,
    pub reset: u64,
    pub timeout: u64,
    pub server_error: u64,
    pub consecutive_failures: u32,
}

impl Outcomes {
    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success => {
                self.success.fetch_add(1, Ordering::Relaxed);
                // A load first: the common case writes nothing more.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                return;
            }
            Outcome::ConnectFailure => &self.connect_failure,
            Outcome::Reset => &self.reset,
            Outcome::Timeout => &self.timeout,
            Outcome::ServerError => &self.server_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> OutcomeCounts {
        OutcomeCounts {
            success: self.success.load(Ordering::Relaxed),
            connect_failure: self.connect_failure.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
            timeout: self.timeout.load(Ordering::Relaxed),
            server_error: self.server_error.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }
}

/// An endpoint's health as the load balancer sees it, summarised from its
/// `HealthFlags`: unhealthy if any `FAILED_*` flag is set, degraded if a
/// `DEGRADED_*` flag is (and none failed), healthy otherwise. The load
/// balancer skips an unhealthy endpoint while another is available
/// (`Cluster::choose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    Unhealthy = 2,
}

/// Why an endpoint is not healthy: one bit per source, as Envoy keeps
/// them (`Host::HealthFlag`), so that each source sets and clears only its
/// own bit and an endpoint is healthy again only when every source agrees.
/// The owners:
/// - `FAILED_ACTIVE_HC`, `DEGRADED_ACTIVE_HC`, `PENDING_ACTIVE_HC`: the
///   active health checker;
/// - `FAILED_OUTLIER_CHECK`: outlier detection (an ejection);
/// - `FAILED_EDS_HEALTH`, `DEGRADED_EDS_HEALTH`: the endpoint's EDS
///   `health_status` (UNHEALTHY/DRAINING/TIMEOUT, DEGRADED).
pub struct HealthFlags;

impl HealthFlags {
    pub const FAILED_ACTIVE_HC: u8 = 1;
    pub const FAILED_OUTLIER_CHECK: u8 = 1 << 1;
    pub const FAILED_EDS_HEALTH: u8 = 1 << 2;
    pub const DEGRADED_ACTIVE_HC: u8 = 1 << 3;
    pub const DEGRADED_EDS_HEALTH: u8 = 1 << 4;
    /// Added to a cluster with active checks and not checked yet (it is
    /// also `FAILED_ACTIVE_HC` until its first check passes, unless the
    /// cluster says otherwise).
    pub const PENDING_ACTIVE_HC: u8 = 1 << 5;
    const FAILED: u8 =
        Self::FAILED_ACTIVE_HC | Self::FAILED_OUTLIER_CHECK | Self::FAILED_EDS_HEALTH;
    const DEGRADED: u8 = Self::DEGRADED_ACTIVE_HC | Self::DEGRADED_EDS_HEALTH;

    /// The `Health` a set of flags means.
    pub fn health(flags: u8) -> Health {
        if flags & Self::FAILED != 0 {
            Health::Unhealthy
        } else if flags & Self::DEGRADED != 0 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// The flags' names as the admin's `/clusters` prints them
    /// (Envoy's spelling: `/failed_active_hc/failed_outlier_check`...).
    pub fn names(flags: u8) -> Vec<&'static str> {
        [
            (Self::FAILED_ACTIVE_HC, "failed_active_hc"),
            (Self::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
            (Self::FAILED_EDS_HEALTH, "failed_eds_health"),
            (Self::DEGRADED_ACTIVE_HC, "degraded_active_hc"),
            (Self::DEGRADED_EDS_HEALTH, "degraded_eds_health"),
            (Self::PENDING_ACTIVE_HC, "pending_active_hc"),
        ]
        .into_iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

/// An endpoint's `HealthFlags` in an atomic, read by the load balancer
/// without a lock and written by each health source with `fetch_or` /
/// `fetch_and`, so that sources never overwrite each other's bits.
#[derive(Debug, Default)]
pub struct HealthCell(AtomicU8);

impl HealthCell {
    pub fn get(&self) -> Health {
        HealthFlags::health(self.0.load(Ordering::Relaxed))
    }

    /// All flags.
    pub fn flags(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets `flag`; returns whether it was clear before.
    pub fn set_flag(&self, flag: u8) -> bool {
        let changed = self.0.fetch_or(flag, Ordering::Relaxed) & flag == 0;
        if changed {
            crate::cluster::priority::health_changed();
        }
        changed
    }

    /// Clears `flag`; returns whether it was set before.
    pub fn clear_flag(&self, flag: u8) -> bool {
        let changed = self.0.fetch_and(!flag, Ordering::Relaxed) & flag != 0;
        if changed {
            crate::cluster::priority::health_changed();
        }
        changed
    }

    /// Sets or clears `flag`; returns whether it changed.
    pub fn put_flag(&self, flag: u8, on: bool) -> bool {
        if on {
            self.set_flag(flag)
        } else {
            self.clear_flag(flag)
        }
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn each_source_owns_its_bit_and_failed_outranks_degraded() {
        let c = HealthCell::default();
        assert_eq!(c.get(), Health::Healthy);
        assert!(c.set_flag(HealthFlags::DEGRADED_EDS_HEALTH));
        assert_eq!(c.get(), Health::Degraded);
        assert!(c.set_flag(HealthFlags::FAILED_ACTIVE_HC));
        assert!(!c.set_flag(HealthFlags::FAILED_ACTIVE_HC));
        assert!(c.set_flag(HealthFlags::FAILED_OUTLIER_CHECK));
        assert_eq!(c.get(), Health::Unhealthy);
        // The checker's pass does not undo the outlier detector's ejection.
        assert!(c.clear_flag(HealthFlags::FAILED_ACTIVE_HC));
        assert_eq!(c.get(), Health::Unhealthy);
        assert!(c.put_flag(HealthFlags::FAILED_OUTLIER_CHECK, false));
        assert_eq!(c.get(), Health::Degraded);
        assert_eq!(HealthFlags::names(c.flags()), vec!["degraded_eds_health"]);
    }
}

// ------------------------------------------------------------ bodies

/// A response body that keeps `hold` (its stream's place on a pooled
/// connection, the endpoint's request guard) until the body is dropped:
/// the pool counts the stream, a connection whose endpoint left stays open
/// until it is done, and least-request balancing sees streaming answers.
pub struct OnStream<B, S> {
    body: B,
    _hold: S,
}

impl<B, S> OnStream<B, S> {
    pub fn new(body: B, hold: S) -> Self {
        Self { body, _hold: hold }
    }
}

impl<B: http_body::Body + Unpin, S: Unpin> http_body::Body for OnStream<B, S> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake multiplexed connection with a stream limit.
    struct Fake {
        id: u32,
        open: Arc<AtomicBool>,
        max: u32,
    }

    impl Multiplexed for Fake {
        fn is_open(&self) -> bool {
            self.open.load(Ordering::Relaxed)
        }
        fn max_streams(&self) -> u32 {
            self.max
        }
    }

    fn cluster() -> (Arc<Cluster>, Arc<Endpoint>) {
        let reg = crate::registry::Registry::new();
        let lb = reg
            .load_balancer("round_robin")
            .and_then(|f| f.create(&serde_json::Value::Null).ok())
            .unwrap();
        let ep = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap(), 1));
        let c = Cluster::new(
            "pool-test",
            Duration::from_secs(1),
            None,
            Default::default(),
            lb,
            vec![ep.clone()],
        );
        (Arc::new(c), ep)
    }

    #[tokio::test]
    async fn a_full_connection_opens_a_second_and_a_closed_one_leaves() {
        let (c, e) = cluster();
        let pool = MuxPool::<Fake>::default();
        let opened = AtomicU32::new(0);
        let open = Arc::new(AtomicBool::new(true));
        let connect = |_d: Dial<'_>| {
            let id = opened.fetch_add(1, Ordering::Relaxed);
            let open = open.clone();
            async move { Ok(Fake { id, open, max: 2 }) }
        };
        let a = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
        let b = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
        assert!(a.is_fresh() && !b.is_fresh());
        assert_eq!((a.id, b.id), (0, 0));
        // Full (2 streams): the third opens connection 1.
        let d = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
        assert_eq!(d.id, 1);
        assert_eq!(pool.connections(), 2);
        // A stream ends: connection 0 has room again and is preferred.
        drop(b);
        let f = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
        assert_eq!(f.id, 0);
        // A retired connection gets no new stream.
        f.retire();
        let g = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
        assert_eq!(g.id, 1);
        assert_eq!(pool.connections(), 1);
        // Closed ones leave the pool; a new one is opened.
        open.store(false, Ordering::Relaxed);
        let open2 = Arc::new(AtomicBool::new(true));
        let h = pool
            .stream(Dial::new(&c, &e), |_d| async move {
                Ok(Fake {
                    id: 9,
                    open: open2,
                    max: 2,
                })
            })
            .await
            .unwrap();
        assert_eq!(h.id, 9);
        assert_eq!(pool.connections(), 1);
        // Removal: the pool lets go, streams keep their connection.
        assert_eq!(h.streams(), 1);
        pool.close();
        assert_eq!(pool.connections(), 0);
        assert_eq!(h.streams(), 1);
        drop((a, d, f, g));
    }

    #[tokio::test]
    async fn a_failed_connect_is_the_streams_error_and_nothing_is_pooled() {
        let (c, e) = cluster();
        let pool = MuxPool::<Fake>::default();
        let r = pool
            .stream(Dial::new(&c, &e), |_d| async {
                Err::<Fake, _>(UpstreamError::Connect("refused".into()))
            })
            .await;
        assert!(matches!(r, Err(UpstreamError::Connect(_))));
        assert_eq!(pool.connections(), 0);
    }

    #[tokio::test]
    async fn dial_applies_the_circuit_breaker() {
        let reg = crate::registry::Registry::new();
        let lb = reg
            .load_balancer("round_robin")
            .and_then(|f| f.create(&serde_json::Value::Null).ok())
            .unwrap();
        let ep = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap(), 1));
        let c = Arc::new(Cluster::new(
            "pool-breaker",
            Duration::from_secs(1),
            Some(0),
            Default::default(),
            lb,
            vec![ep.clone()],
        ));
        let r = Dial::new(&c, &ep).with(async { Ok(()) }).await;
        assert!(matches!(r, Err(UpstreamError::Overflow)));
    }

    #[tokio::test]
    async fn a_connection_retires_after_max_requests_streams() {
        let (c, e) = cluster();
        let pool = MuxPool::<Fake>::with_max_requests(2);
        let opened = AtomicU32::new(0);
        let open = Arc::new(AtomicBool::new(true));
        let connect = |_d: Dial<'_>| {
            let id = opened.fetch_add(1, Ordering::Relaxed);
            let open = open.clone();
            async move { Ok(Fake { id, open, max: 100 }) }
        };
        let mut ids = Vec::new();
        for _ in 0..5 {
            let s = pool.stream(Dial::new(&c, &e), connect).await.unwrap();
            ids.push(s.id);
        }
        assert_eq!(ids, vec![0, 0, 1, 1, 2]);
    }

    struct Plain(bool, u32);
    impl Reusable for Plain {
        fn is_reusable(&self) -> bool {
            self.0
        }
        fn exchanges(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn exclusive_pool_reuses_the_latest_usable_and_closes_on_removal() {
        let pool = ExclusivePool::<Plain>::default();
        let t = Duration::from_secs(60);
        let limits = ExclusiveLimits {
            max_idle: 2,
            max_requests: 3,
            max_duration: None,
        };
        pool.put(Plain(true, 1), &limits);
        pool.put(Plain(false, 1), &limits);
        pool.put(Plain(true, 1), &limits); // over max_idle: dropped
        assert_eq!(pool.idle_count(), 2);
        // The unusable one on top is skipped (and closed).
        assert!(pool.take(t).is_some_and(|c| c.0));
        assert!(pool.take(t).is_none());
        pool.put(Plain(true, 3), &limits);
        assert_eq!(pool.idle_count(), 0, "max_requests reached: not kept");
        pool.put(Plain(true, 1), &limits);
        assert!(pool.take(Duration::ZERO).is_none(), "idle timeout");
        pool.put(Plain(true, 1), &limits);
        pool.close();
        assert_eq!(pool.idle_count(), 0);
        pool.put(Plain(true, 1), &limits);
        assert_eq!(pool.idle_count(), 0, "a closed pool keeps nothing");
    }

    #[test]
    fn outcomes_count_and_reset_the_failure_streak() {
        let o = Outcomes::default();
        o.record(Outcome::ConnectFailure);
        o.record(Outcome::ServerError);
        o.record(Outcome::Timeout);
        assert_eq!(o.counts().consecutive_failures, 3);
        o.record(Outcome::Success);
        let c = o.counts();
        assert_eq!(
            (
                c.success,
                c.connect_failure,
                c.server_error,
                c.timeout,
                c.reset
            ),
            (1, 1, 1, 1, 0)
        );
        assert_eq!(c.consecutive_failures, 0);
    }
}
