//! The cluster manager: clusters, their endpoints (static or re-resolved by
//! DNS), the load balancer over them, connect back-off of failed endpoints,
//! the max-connections circuit breaker and the per-cluster counters. Each
//! endpoint keeps its upstream pool (`crate::pool`), its request outcomes
//! and its health.
//!
//! Across reloads a cluster keeps its identity (the same `Arc<Cluster>`)
//! unless a setting other than its endpoints changed: an endpoint-only
//! change (an EDS update, say) is staged by `ClusterManager::build_reusing`
//! and stored into the live cluster's `HostSet` by `commit_endpoints` when
//! the new snapshot goes live, so whatever holds the cluster (routes, L4
//! filters, open connections) sends its next request to the new endpoints.

pub mod breaker;
pub mod outlier;
pub mod pending;

use crate::codec::ClientCodec;
use crate::config::circuit_breakers::RoutingPriority;
use crate::config::{BackoffConfig, ClusterConfig, ClusterList, ConfigSource, DiscoveryType};
use crate::error::{BuildError, ConfigError};
use crate::lb::{LbContext, LoadBalancer, LoadBalancerBuilder};
use crate::metrics::ClusterStats;
use crate::pool::{EndpointPool, Health, HealthCell, HealthFlags, Outcome, Outcomes};
use crate::registry::Registry;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub mod health_check;
pub mod locality;
pub mod original_dst;
pub mod priority;
pub mod upstream_socket;
pub mod zone;

/// One upstream address of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The DNS name it was resolved from (strict_dns), used as hash identity.
    pub hostname: Option<Arc<str>>,
    pub weight: u32,
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Envoy's priority (0 highest): `priority` groups endpoints by it.
    pub priority: u32,
    /// Its locality group (`locality`); `None` is a group of its own.
    pub locality: Option<Arc<crate::config::locality::Locality>>,
    /// Its locality's weight; 0 when unset.
    pub locality_weight: u32,
    /// Its locality's `envoy.transport_socket_match` metadata, looked at
    /// when its own matches no `transport_socket_matches` entry.
    pub locality_transport_socket_match: Option<Arc<serde_json::Value>>,
    /// When it joined the cluster (`now_ms`): the start of its slow start.
    pub added_ms: u64,
    /// When an active health check last turned it healthy (`now_ms`, 0:
    /// never): Envoy's `lastHcPassTime`, the start of its slow start when set.
    hc_passed_ms: AtomicU64,
    /// Connections open to it, per routing priority (DEFAULT in the low
    /// 32 bits, HIGH in the high 32: one atomic, so that the per-host cap
    /// on their sum and a priority's pool opening are one compare-and-swap;
    /// `per_host_thresholds` max_connections, `max_connection_pools`): an
    /// `Arc` of its own, held by each connection's slot, since a slot
    /// holding the endpoint would keep the endpoint's pool (and so the
    /// connection) alive.
    connections: Arc<AtomicU64>,
    active_requests: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch()` until which the endpoint is skipped.
    backoff_until_ms: AtomicU64,
    /// The endpoint's upstream pool (`crate::pool`): reached from the
    /// endpoint the load balancer chose, without a map lookup keyed by
    /// address (a shared map's read lock and the pool's reference count
    /// were four atomic instructions per request).
    /// One per routing priority (Envoy keeps a connection pool per
    /// priority: HIGH's `max_connections` apply to HIGH's connections).
    pool: [PoolSlot; 2],
    /// Request outcomes, for health checking and outlier detection.
    outcomes: Outcomes,
    health: HealthCell,
    /// Its outlier-detection state, set when its cluster detects outliers.
    outlier: std::sync::OnceLock<Box<outlier::Monitor>>,
    /// Envoy's `health_check_config`: active checks go to this port / use
    /// this host (`set_health_check_config`).
    pub health_check_port: Option<u16>,
    pub health_check_hostname: Option<Arc<str>>,
    /// `protocol: auto`: the HTTP protocol its handshakes choose by ALPN.
    pub alpn: crate::pool::LearnedAlpn,
    /// Its sampled client spans' attributes, built on first use.
    trace_peer: std::sync::OnceLock<Arc<crate::trace::otlp::PeerAttrs>>,
}

/// An endpoint's pool: set once, by the cluster's codec on first use. A
/// cluster whose protocol follows the downstream's (`protocol:
/// downstream`) has two codecs, so a second slot holds the other's pool.
#[derive(Default)]
struct PoolSlot(
    std::sync::OnceLock<Box<dyn EndpointPool>>,
    std::sync::OnceLock<Box<dyn EndpointPool>>,
);

/// Never stored for long: the placeholder `Endpoint::pool` could build
/// if its `init` were asked for twice (it is not).
struct NoPool;

impl EndpointPool for NoPool {
    fn close(&self) {}
}

impl std::fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        })
    }
}

impl Endpoint {
    pub fn new(address: SocketAddr, weight: u32) -> Self {
        Self {
            address,
            hostname: None,
            weight: weight.max(1),
            metadata: BTreeMap::new(),
            priority: 0,
            locality: None,
            locality_weight: 0,
            locality_transport_socket_match: None,
            added_ms: now_ms(),
            hc_passed_ms: AtomicU64::new(0),
            connections: Arc::default(),
            active_requests: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            backoff_until_ms: AtomicU64::new(0),
            pool: Default::default(),
            outcomes: Outcomes::default(),
            health: HealthCell::default(),
            outlier: std::sync::OnceLock::new(),
            trace_peer: std::sync::OnceLock::new(),
            health_check_port: None,
            health_check_hostname: None,
            alpn: crate::pool::LearnedAlpn::default(),
        }
    }

    /// Takes the endpoint's `health_check_config` (its port was checked
    /// by `build_endpoints`).
    pub fn set_health_check_config(
        &mut self,
        c: Option<&crate::config::health_check::EndpointHealthCheckConfig>,
    ) {
        if let Some(c) = c {
            self.health_check_port = c.port("").ok().flatten();
            self.health_check_hostname =
                (!c.hostname.is_empty()).then(|| c.hostname.as_str().into());
        }
    }

    /// Its attributes on a sampled client span of `cluster` (built once;
    /// an endpoint seen under another cluster's name gets its own).
    pub fn trace_peer(&self, cluster: &'static str) -> Arc<crate::trace::otlp::PeerAttrs> {
        let build = || Arc::new(crate::trace::otlp::PeerAttrs::new(cluster, self.address));
        let p = self.trace_peer.get_or_init(build);
        if p.cluster == cluster {
            p.clone()
        } else {
            build()
        }
    }

    /// Where active health checks of this endpoint go.
    pub fn health_check_address(&self) -> SocketAddr {
        match self.health_check_port {
            Some(p) => SocketAddr::new(self.address.ip(), p),
            None => self.address,
        }
    }

    /// An active health check turned the endpoint healthy: its slow-start
    /// window starts again now (Envoy's `setLastHcPassTime`).
    pub fn hc_passed(&self) {
        let now = now_ms().max(1);
        self.hc_passed_ms.store(now, Ordering::Relaxed);
        crate::lb::slow_start::note_window_start(now);
    }

    /// The start of its slow-start window: the last time an active check
    /// turned it healthy, or else when it joined the cluster.
    pub fn slow_start_from_ms(&self) -> u64 {
        match self.hc_passed_ms.load(Ordering::Relaxed) {
            0 => self.added_ms,
            t => t,
        }
    }

    /// The endpoint's pool of type `T` for DEFAULT-priority requests
    /// (`pool_at`).
    pub fn pool<T: EndpointPool>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.pool_at(RoutingPriority::Default, init)
    }

    /// The endpoint's pool of type `T` for requests of `priority` (a
    /// route's `priority`, `request_priority`), created by `init` on first
    /// use; `None` if another type was set first (an endpoint serves one
    /// cluster, so one codec: that is a codec's bug, reported to the
    /// request as an error). Each priority has its own pools, as in Envoy,
    /// so each priority's connection breakers count its own connections.
    pub fn pool_at<T: EndpointPool>(
        &self,
        priority: RoutingPriority,
        init: impl FnOnce() -> T,
    ) -> Option<&T> {
        let slot = &self.pool[priority_index(priority)];
        let mut init = Some(init);
        let mut make = || -> Box<dyn EndpointPool> {
            match init.take() {
                Some(f) => Box::new(f()),
                // Not reached: the slot that ran `init` holds a `T`.
                None => Box::new(NoPool),
            }
        };
        let p: &dyn EndpointPool = &**slot.0.get_or_init(&mut make);
        if let Some(t) = (p as &dyn std::any::Any).downcast_ref() {
            return Some(t);
        }
        let p: &dyn EndpointPool = &**slot.1.get_or_init(make);
        (p as &dyn std::any::Any).downcast_ref()
    }

    /// The endpoint left its cluster: its pool closes (idle connections
    /// now, busy ones after their streams).
    fn close_pool(&self) {
        for slot in &self.pool {
            for p in [slot.0.get(), slot.1.get()].into_iter().flatten() {
                p.close();
            }
        }
    }

    /// Records how a request to this endpoint ended.
    pub fn report(&self, outcome: Outcome) {
        self.outcomes.record(outcome);
        if let Some(m) = self.outlier.get() {
            match outcome {
                Outcome::Success => m.put_http(self, 200),
                // A response meshgate could not accept: a bad gateway.
                Outcome::ServerError => m.put_http(self, 502),
                Outcome::ConnectFailure | Outcome::Reset => m.put_local_failure(self, false),
                Outcome::Timeout => m.put_local_failure(self, true),
            }
        }
    }

    /// Records a response with `status` (the outlier detector tells 5xx
    /// from gateway failures).
    pub fn report_status(&self, status: u16) {
        self.outcomes.record(if status >= 500 {
            Outcome::ServerError
        } else {
            Outcome::Success
        });
        if let Some(m) = self.outlier.get() {
            m.put_http(self, status);
        }
    }

    /// Records a response head. With outlier detection on, a gRPC
    /// response counts by its `grpc-status` (mapped to HTTP as Envoy
    /// does), not by its HTTP 200; when the status is not in the head
    /// (not trailers-only), nothing is recorded yet and `true` says the
    /// trailers are to be given to `report_grpc_trailers`.
    pub fn report_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        let Some(m) = self.outlier.get() else {
            // Detection off: the one load above, then the outcome.
            self.outcomes.record(if status >= 500 {
                Outcome::ServerError
            } else {
                Outcome::Success
            });
            return false;
        };
        let status = if status == 200 && outlier::is_grpc(headers) {
            match outlier::grpc_status_as_http(headers) {
                Some(mapped) => mapped,
                None => return true,
            }
        } else {
            status
        };
        self.outcomes.record(if status >= 500 {
            Outcome::ServerError
        } else {
            Outcome::Success
        });
        m.put_http(self, status);
        false
    }

    /// The trailers of a gRPC response whose result `report_response`
    /// deferred: its `grpc-status` (none: as the HTTP 200 said).
    pub fn report_grpc_trailers(&self, trailers: &http::HeaderMap) {
        self.report_status(outlier::grpc_status_as_http(trailers).unwrap_or(200));
    }

    /// Its outlier-detection state (`None` unless its cluster detects
    /// outliers): ejection history for `/clusters`.
    pub fn outlier(&self) -> Option<&outlier::Monitor> {
        self.outlier.get().map(|m| &**m)
    }

    /// The request outcomes recorded so far.
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }

    /// The health its sources (active checks, outlier detection, EDS)
    /// give it, summarised.
    pub fn health(&self) -> Health {
        self.health.get()
    }

    /// The endpoint's health flags (`HealthFlags`): each health source
    /// sets and clears its own.
    pub fn health_flags(&self) -> &HealthCell {
        &self.health
    }

    /// Requests (or L4 connections) currently in flight to this endpoint.
    pub fn active_requests(&self) -> u32 {
        self.active_requests.load(Ordering::Relaxed)
    }

    /// The identity hashing policies place on their ring or table.
    pub fn hash_identity(&self) -> String {
        match &self.hostname {
            Some(h) => format!("{h}:{}", self.address.port()),
            None => self.address.to_string(),
        }
    }

    /// Sets the EDS health bits (`FAILED_EDS_HEALTH`, `DEGRADED_EDS_HEALTH`)
    /// to those of `status`, leaving the other sources' bits alone.
    pub fn set_eds_health(&self, status: crate::config::EndpointHealthStatus) {
        let flags = status.flags();
        for bit in [
            HealthFlags::FAILED_EDS_HEALTH,
            HealthFlags::DEGRADED_EDS_HEALTH,
        ] {
            self.health.put_flag(bit, flags & bit != 0);
        }
    }

    /// Whether the endpoint is healthy and outside its connect-failure
    /// back-off. The clock (`now_ms`) is read only if the endpoint was
    /// ever backed off: the load balancer asks for every request.
    pub fn is_available(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.is_available_within(Health::Degraded, now_ms)
    }

    /// `is_available` with `worst` the worst health accepted (`Healthy`:
    /// degraded endpoints are skipped too).
    pub fn is_available_within(&self, worst: Health, now_ms: impl FnOnce() -> u64) -> bool {
        if self.health.get() as u8 > worst as u8 {
            return false;
        }
        let until = self.backoff_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Whether `other` describes the same endpoint (address, weight, DNS
    /// name and metadata), so that this one's state may stand for it.
    fn same_as(&self, other: &Endpoint) -> bool {
        self.address == other.address
            && self.weight == other.weight
            && self.hostname == other.hostname
            && self.metadata == other.metadata
            && self.priority == other.priority
            && self.health_check_port == other.health_check_port
            && self.health_check_hostname == other.health_check_hostname
            && self.locality == other.locality
            && self.locality_weight == other.locality_weight
            && self.locality_transport_socket_match == other.locality_transport_socket_match
    }

    /// Marks one request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.clone().begin_request()
    }

    /// `start_request` for an endpoint handed over: the guard holds it,
    /// and `RequestGuard::endpoint` lends it (no second reference to count
    /// on the request path).
    pub fn begin_request(self: Arc<Self>) -> RequestGuard {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self, Instant::now())
    }

    fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.backoff_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(&self, backoff: &BackoffConfig) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        let base = backoff.base_interval.as_millis() as u64;
        let max = backoff.max_interval.as_millis() as u64;
        let wait = base.saturating_mul(1u64 << n.min(20)).min(max);
        self.backoff_until_ms
            .store(now_ms().saturating_add(wait), Ordering::Relaxed);
    }
}

/// Decrements the endpoint's active-request count on drop.
#[derive(Debug)]
pub struct RequestGuard(Arc<Endpoint>, Instant);

impl RequestGuard {
    /// When the try began (`meshgate_cluster_upstream_rq_time_seconds`).
    pub fn started(&self) -> Instant {
        self.1
    }

    /// The endpoint the request is in flight to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since process start; the clock of endpoint back-off.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// The endpoints of a cluster and the load balancer built over them,
/// replaced as a whole when DNS answers change.
pub struct HostSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    lb: Box<dyn LoadBalancer>,
    levels: priority::Levels,
}

/// Why an upstream connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no endpoint available in cluster {0}")]
    NoHealthyEndpoint(Arc<str>),
    #[error("cluster {0} is at max_connections")]
    Overflow(Arc<str>),
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
}

impl ConnectError {
    /// Label value for the connect-failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::NoHealthyEndpoint(_) => "no_healthy_endpoint",
            ConnectError::Overflow(_) => "overflow",
            ConnectError::Timeout(_) => "timeout",
            // Out of descriptors is ours, not the upstream's.
            ConnectError::Io(_, e) => crate::fds::exhaustion(e).unwrap_or("refused"),
        }
    }
}

/// An upstream connection with its bookkeeping: dropping it releases the
/// circuit-breaker slot. (Active requests are counted per request by the
/// caller, with `Endpoint::start_request`.)
pub struct UpstreamConnection {
    pub stream: TcpStream,
    pub endpoint: Arc<Endpoint>,
    _slot: ConnectionSlot,
}

impl UpstreamConnection {
    /// Splits off the socket; the returned guard keeps the circuit-breaker
    /// slot until the connection's task drops it.
    pub fn into_parts(self) -> (TcpStream, Arc<Endpoint>, ConnectionGuard) {
        (self.stream, self.endpoint, ConnectionGuard::new(self._slot))
    }
}

/// Holds an upstream connection's circuit-breaker slot, and knows when
/// the connection was opened (`max_connection_duration`).
pub struct ConnectionGuard(#[allow(dead_code)] ConnectionSlot, Duration);

impl ConnectionGuard {
    fn new(slot: ConnectionSlot) -> Self {
        Self(slot, crate::clock::coarse())
    }

    /// How long ago the connection was opened (coarse clock).
    pub fn age(&self) -> Duration {
        crate::clock::coarse().saturating_sub(self.1)
    }

    /// The `cluster` label of the cluster's series, for counters of the
    /// connection's end.
    pub fn label(&self) -> &metrics::SharedString {
        &self.0.0.label
    }

    /// Whether a request of the cluster waits for a connection slot: a
    /// finished exchange then closes its connection instead of keeping it
    /// idle (`ExclusivePool::put`), which frees the slot for the waiter.
    pub fn wanted(&self) -> bool {
        self.0.0.pending.wanted()
    }

    /// The routing priority whose connections the slot counts in: a
    /// connection goes back to that priority's pool.
    pub fn priority(&self) -> RoutingPriority {
        self.0.0.priority
    }
}

/// The index of `p` in per-priority arrays.
fn priority_index(p: RoutingPriority) -> usize {
    match p {
        RoutingPriority::Default => 0,
        RoutingPriority::High => 1,
    }
}

/// The routing priority a request is sent with (its route's `priority`):
/// `forward` puts HIGH in the upstream request's extensions, and a codec
/// reads it to take the priority's pool (`Endpoint::pool_at`) and dial in
/// its connection breakers (`pool::Dial::at`). DEFAULT is the absence.
pub fn request_priority(ext: &http::Extensions) -> RoutingPriority {
    ext.get::<RoutingPriority>()
        .copied()
        .unwrap_or(RoutingPriority::Default)
}

/// A connection's circuit-breaker slot. It holds the cluster's connection
/// count, not the cluster: a pooled connection holding its cluster would
/// keep the cluster's endpoints alive, and with them their pools and the
/// connection itself, so that the connections of a replaced cluster never
/// closed.
struct ConnectionSlot(Arc<ConnectionCount>, Option<Arc<AtomicU64>>);

/// Connections open to a cluster at one routing priority (the circuit
/// breaker's count; the `cx_active` gauge counts both priorities).
struct ConnectionCount {
    priority: RoutingPriority,
    /// `max_connections` of this priority.
    max: u32,
    active: AtomicU32,
    gauge: metrics::Gauge,
    /// Requests waiting for a slot (`max_pending_requests`).
    pending: pending::Pending,
    /// Connection pools open: endpoints with at least one connection
    /// (counted while endpoints' connections are, see `connection_slot`).
    pools: AtomicU32,
    /// `max_connection_pools` (`u32::MAX`: no limit).
    max_pools: u32,
    /// `meshgate_cluster_upstream_cx_pool_overflow_total`, registered on
    /// first use (`crate::metrics::rare`).
    pool_overflow: std::sync::OnceLock<metrics::Counter>,
    /// The `cluster` label of that series.
    label: metrics::SharedString,
}

impl ConnectionCount {
    fn new(
        stats: &ClusterStats,
        priority: RoutingPriority,
        max: u32,
        max_pending: u32,
        max_pools: u32,
    ) -> Self {
        Self {
            priority,
            max,
            active: AtomicU32::new(0),
            gauge: stats.cx_active.clone(),
            pending: pending::Pending::new(stats.label(), priority, max_pending),
            pools: AtomicU32::new(0),
            max_pools,
            pool_overflow: std::sync::OnceLock::new(),
            label: stats.label().clone(),
        }
    }

    /// `meshgate_cluster_upstream_cx_pool_overflow_total`.
    fn pool_overflow(&self) -> &metrics::Counter {
        crate::metrics::rare(&self.pool_overflow, || {
            metrics::counter!(
                crate::metrics::names::CLUSTER_UPSTREAM_CX_POOL_OVERFLOW_TOTAL,
                "cluster" => self.label.clone()
            )
        })
    }

    /// This priority's bit shift in an endpoint's packed counts.
    fn shift(&self) -> u32 {
        32 * priority_index(self.priority) as u32
    }

    /// One connection to an endpoint closed (`host`: its counts): its pool
    /// of this priority ends with its last connection.
    fn host_released(&self, host: &AtomicU64) {
        let prev = host.fetch_sub(1 << self.shift(), Ordering::SeqCst);
        if (prev >> self.shift()) & u64::from(u32::MAX) == 1 {
            self.pools.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(host) = &self.1 {
            self.0.host_released(host);
        }
        // SeqCst: pairs with the waiter's registration (`Pending::wait_for`).
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.gauge.decrement(1.0);
        self.0.pending.wake();
    }
}

/// One `transport_socket_matches` entry, built.
pub struct TlsMatch {
    /// Key/values the endpoint's `envoy.transport_socket_match` metadata
    /// must all carry.
    pub criteria: BTreeMap<String, serde_json::Value>,
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// What active health checks use: `tls` without the ALPN fallback of
    /// `protocol: auto` (the same `tls` otherwise).
    pub health_check_tls: Option<Arc<crate::tls::UpstreamTls>>,
}

/// An upstream cluster.
pub struct Cluster {
    /// Interned (`stream::intern`): streams record it without a count.
    pub name: &'static str,
    pub connect_timeout: Duration,
    /// `circuit_breakers.per_host_thresholds[].max_connections`: caps an
    /// endpoint's connections of both priorities together.
    pub max_connections_per_host: u32,
    backoff: BackoffConfig,
    hosts: ArcSwap<HostSet>,
    lb_builder: Arc<dyn LoadBalancerBuilder>,
    /// Per routing priority (DEFAULT, HIGH): each its own
    /// `max_connections`, pending queue and `max_connection_pools`.
    connections: [Arc<ConnectionCount>; 2],
    pub stats: ClusterStats,
    /// The upstream codec for L7 streams (`protocol`), when one is registered.
    pub upstream: Option<Arc<dyn ClientCodec>>,
    /// Its registered name.
    pub protocol: &'static str,
    /// TLS to the endpoints, when configured.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// `transport_socket_matches`, in order: what an endpoint's
    /// `envoy.transport_socket_match` metadata must carry, and its TLS
    /// (`None`: plaintext). Read through `tls_for`.
    pub tls_matches: Vec<TlsMatch>,
    /// The PROXY protocol header each upstream connection starts with.
    pub proxy_protocol: Option<crate::config::proxy_protocol::UpstreamProxyProtocolConfig>,
    /// Priority loads, panic threshold and drop overloads.
    priority: priority::Policy,
    /// Request-level circuit breakers (`max_requests`, `max_retries`).
    pub breakers: Arc<breaker::Breakers>,
    /// Active health checks, when configured.
    pub health_check: Option<health_check::HealthChecker>,
    /// Its outlier detector, when `outlier_detection` is configured.
    pub outlier: Option<Arc<outlier::Detector>>,
    /// `type: original_dst`: the hosts, one per original destination.
    pub original_dst: Option<Arc<original_dst::OriginalDst>>,
    /// `per_connection_buffer_limit_bytes`: the bytes held per upstream
    /// connection (`None`: meshgate's own bounds, under Envoy's 1 MiB).
    pub buffer_limit: Option<u32>,
    /// `filters`: upstream network filters (`crate::upstream_filter`).
    pub filters: crate::upstream_filter::UpstreamFilters,
    /// `upstream_bind_config` / `upstream_connection_options`.
    pub socket: Option<upstream_socket::UpstreamSocket>,
    /// Its `metadata` (`None` when empty), for access logs.
    pub metadata: Option<Arc<crate::config::Metadata>>,
    /// A stand-in for a cluster that is not there (`ClusterConfig::not_found`,
    /// or a lenient route's unknown name): routes answer "cluster not found",
    /// `tcp_proxy` closes the connection.
    pub not_found: bool,
}

impl Cluster {
    /// Builds a cluster from endpoints already resolved.
    pub fn new(
        name: &str,
        connect_timeout: Duration,
        max_connections: Option<u32>,
        backoff: BackoffConfig,
        lb_builder: Arc<dyn LoadBalancerBuilder>,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        let lb = lb_builder.build(&endpoints);
        let levels = priority::Levels::build(&endpoints, &*lb_builder);
        let stats = ClusterStats::new(name);
        let priority = priority::Policy::new(stats.label());
        let breakers = Arc::new(breaker::Breakers::new(
            stats.label(),
            &[breaker::ThresholdValues::default(); 2],
        ));
        Self {
            name: crate::stream::intern(name),
            connect_timeout,
            max_connections_per_host: u32::MAX,
            backoff,
            hosts: ArcSwap::from_pointee(HostSet {
                endpoints,
                lb,
                levels,
            }),
            lb_builder,
            connections: [RoutingPriority::Default, RoutingPriority::High].map(|p| {
                Arc::new(ConnectionCount::new(
                    &stats,
                    p,
                    max_connections.unwrap_or(u32::MAX),
                    breaker::DEFAULT_LIMIT,
                    u32::MAX,
                ))
            }),
            stats,
            upstream: None,
            tls: None,
            tls_matches: Vec::new(),
            proxy_protocol: None,
            protocol: "",
            priority,
            breakers,
            health_check: None,
            outlier: None,
            original_dst: None,
            buffer_limit: None,
            filters: Default::default(),
            socket: None,
            metadata: None,
            not_found: false,
        }
    }

    /// The TLS to `endpoint`: the first `transport_socket_matches`
    /// entry its metadata matches, else the first its locality's metadata
    /// matches (Envoy's order), else the cluster's `tls`. Called once per
    /// new connection, not per request.
    pub fn tls_for(&self, endpoint: &Endpoint) -> Option<&Arc<crate::tls::UpstreamTls>> {
        if self.tls_matches.is_empty() {
            return self.tls.as_ref();
        }
        match self.tls_match(endpoint) {
            Some(m) => m.tls.as_ref(),
            None => self.tls.as_ref(),
        }
    }

    /// `tls_for` for active health checks: the matched entry's context
    /// without `protocol: auto`'s ALPN fallback, else `cluster_tls` (the
    /// checker's own).
    pub fn health_check_tls_for<'a>(
        &'a self,
        endpoint: &Endpoint,
        cluster_tls: Option<&'a Arc<crate::tls::UpstreamTls>>,
    ) -> Option<&'a Arc<crate::tls::UpstreamTls>> {
        match self.tls_match(endpoint) {
            Some(m) => m.health_check_tls.as_ref(),
            None => cluster_tls,
        }
    }

    /// The first `transport_socket_matches` entry the endpoint matches.
    fn tls_match(&self, endpoint: &Endpoint) -> Option<&TlsMatch> {
        let own = endpoint.metadata.get(crate::config::TRANSPORT_SOCKET_MATCH);
        let locality = endpoint.locality_transport_socket_match.as_deref();
        for meta in [own, locality] {
            let meta = meta.and_then(|v| v.as_object());
            for m in &self.tls_matches {
                let hit = m
                    .criteria
                    .iter()
                    .all(|(k, v)| meta.and_then(|o| o.get(k)) == Some(v));
                if hit {
                    return Some(m);
                }
            }
        }
        None
    }

    /// The current endpoint set.
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Replaces the endpoint set with a new load balancer over it. An
    /// endpoint that stays (same address, weight, DNS name and metadata)
    /// keeps its state: back-off, active requests, outcomes, health and its
    /// upstream pool. The pools of endpoints that left are closed: requests
    /// in flight there finish, no new one goes there, and their
    /// connections close instead of going back to a pool.
    pub fn update_endpoints(&self, mut endpoints: Vec<Arc<Endpoint>>) {
        let old = self.hosts.load_full();
        let by_address: HashMap<SocketAddr, &Arc<Endpoint>> =
            old.endpoints.iter().map(|e| (e.address, e)).collect();
        for e in endpoints.iter_mut() {
            if let Some(prev) = by_address.get(&e.address)
                && prev.same_as(e)
            {
                // The kept endpoint takes the new EDS health; its other
                // health sources' bits stay.
                let eds = HealthFlags::FAILED_EDS_HEALTH | HealthFlags::DEGRADED_EDS_HEALTH;
                let new = e.health.flags() & eds;
                for bit in [
                    HealthFlags::FAILED_EDS_HEALTH,
                    HealthFlags::DEGRADED_EDS_HEALTH,
                ] {
                    prev.health.put_flag(bit, new & bit != 0);
                }
                *e = (*prev).clone();
            }
        }
        let kept: HashSet<SocketAddr> = endpoints.iter().map(|e| e.address).collect();
        let removed: Vec<Arc<Endpoint>> = by_address
            .into_iter()
            .filter(|(a, _)| !kept.contains(a))
            .map(|(_, e)| e.clone())
            .collect();
        if let Some(hc) = &self.health_check {
            let old: HashSet<*const Endpoint> = old.endpoints.iter().map(Arc::as_ptr).collect();
            hc.endpoints_added(endpoints.iter().filter(|e| !old.contains(&Arc::as_ptr(e))));
        }
        if let Some(d) = &self.outlier {
            d.attach(&endpoints, &removed);
        }
        let lb = self.lb_builder.build(&endpoints);
        let levels = priority::Levels::build(&endpoints, &*self.lb_builder);
        health_check::publish_membership(self.name, &endpoints);
        self.hosts.store(Arc::new(HostSet {
            endpoints,
            lb,
            levels,
        }));
        // Zone-aware clusters compare themselves with the local cluster's
        // membership: recompute their loads.
        priority::health_changed();
        for e in &removed {
            e.close_pool();
        }
    }

    /// Picks an endpoint, skipping those in `exclude` (already tried by
    /// this request): by priority load and panic threshold
    /// (`priority::choose`), then the load balancer of the chosen
    /// priority, skipping endpoints in back-off.
    pub fn choose(&self, ctx: &LbContext, exclude: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let hosts = self.hosts.load();
        if hosts.endpoints.is_empty() {
            return None;
        }
        priority::choose(&hosts, &self.priority, ctx, exclude).map(|i| hosts.endpoints[i].clone())
    }

    /// Connects to one endpoint chosen by the load balancer, honouring the
    /// circuit breaker and the connect timeout. A failed connect puts the
    /// endpoint in back-off.
    pub async fn connect(
        self: &Arc<Self>,
        ctx: &LbContext,
        exclude: &[SocketAddr],
    ) -> Result<UpstreamConnection, (ConnectError, Option<SocketAddr>)> {
        let Some(endpoint) = self.choose(ctx, exclude) else {
            let e = ConnectError::NoHealthyEndpoint(self.name.into());
            self.stats.connect_failed(e.reason());
            return Err((e, None));
        };
        let addr = endpoint.address;
        self.connect_endpoint(endpoint).await.map_err(|e| {
            let a = matches!(e, ConnectError::Io(..) | ConnectError::Timeout(_)).then_some(addr);
            (e, a)
        })
    }

    /// Connects to a given endpoint (pools call this), with the circuit
    /// breaker, the connect timeout, back-off and counters.
    pub async fn connect_endpoint(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
    ) -> Result<UpstreamConnection, ConnectError> {
        self.connect_endpoint_as(endpoint, false).await
    }

    /// `connect_endpoint`; with `queue`, a request finding the cluster at
    /// `max_connections` waits for a slot (`pending`) instead of
    /// overflowing at once. Only codecs whose finished exchanges give their
    /// connection up to a waiter (`ExclusivePool::put`) queue.
    pub async fn connect_endpoint_as(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
        queue: bool,
    ) -> Result<UpstreamConnection, ConnectError> {
        self.connect_endpoint_in(endpoint, queue, None, RoutingPriority::Default)
            .await
    }

    /// `connect_endpoint_as` under the connection breakers of `priority`,
    /// in a slot taken beforehand (`reserved`, from `reserve_connection`)
    /// when there is one.
    pub(crate) async fn connect_endpoint_in(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
        queue: bool,
        reserved: Option<ConnectionGuard>,
        priority: RoutingPriority,
    ) -> Result<UpstreamConnection, ConnectError> {
        let c = &self.connections[priority_index(priority)];
        let slot = match reserved
            .map(|g| g.0)
            .or_else(|| self.connection_slot(&endpoint, c))
        {
            Some(s) => s,
            None => {
                // With `max_connections: 0` no slot ever frees: the
                // breaker is simply open, as before the queue existed. A
                // new pool past `max_connection_pools` is refused at once
                // too (Envoy's `upstream_cx_pool_overflow`).
                let pool_refused = self.pool_refused(&endpoint, c);
                if pool_refused {
                    c.pool_overflow().increment(1);
                }
                let waited = if queue && c.max > 0 && !pool_refused {
                    c.pending
                        .wait_for(|| self.connection_slot(&endpoint, c))
                        .await
                } else {
                    None
                };
                match waited {
                    Some(s) => s,
                    None => {
                        if !pool_refused {
                            self.stats.cx_overflow().increment(1);
                        }
                        let e = ConnectError::Overflow(self.name.into());
                        self.stats.connect_failed(e.reason());
                        return Err(e);
                    }
                }
            }
        };
        let addr = endpoint.address;
        let connect = async {
            match &self.socket {
                Some(s) => s.connect(addr).await,
                None => TcpStream::connect(addr).await,
            }
        };
        let result = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ConnectError::Io(addr, e)),
            Err(_) => Err(ConnectError::Timeout(addr)),
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                endpoint.record_success();
                self.stats.cx_total.increment(1);
                Ok(UpstreamConnection {
                    stream,
                    endpoint,
                    _slot: slot,
                })
            }
            Err(e) => {
                if !matches!(&e, ConnectError::Io(_, io) if crate::fds::exhaustion(io).is_some()) {
                    endpoint.record_failure(&self.backoff);
                }
                self.stats.connect_failed(e.reason());
                tracing::debug!(cluster = %self.name, endpoint = %addr, error = %e, "upstream connect failed");
                Err(e)
            }
        }
    }

    /// `connect_endpoint` for a codec that opens its own transport (QUIC):
    /// the same circuit breaker, connect timeout, back-off and counters
    /// around `connect`. The guard holds the connection's slot; drop it
    /// when the connection closes.
    pub async fn connect_endpoint_with<T>(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        connect: impl Future<Output = std::io::Result<T>>,
    ) -> Result<(T, ConnectionGuard), ConnectError> {
        self.connect_endpoint_with_in(endpoint, connect, None, RoutingPriority::Default)
            .await
    }

    /// `connect_endpoint_with` under the connection breakers of
    /// `priority`, in a slot taken beforehand when there is one.
    pub(crate) async fn connect_endpoint_with_in<T>(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        connect: impl Future<Output = std::io::Result<T>>,
        reserved: Option<ConnectionGuard>,
        priority: RoutingPriority,
    ) -> Result<(T, ConnectionGuard), ConnectError> {
        let c = &self.connections[priority_index(priority)];
        let Some(slot) = reserved
            .map(|g| g.0)
            .or_else(|| self.connection_slot(endpoint, c))
        else {
            if self.pool_refused(endpoint, c) {
                c.pool_overflow().increment(1);
            } else {
                self.stats.cx_overflow().increment(1);
            }
            let e = ConnectError::Overflow(self.name.into());
            self.stats.connect_failed(e.reason());
            return Err(e);
        };
        let addr = endpoint.address;
        let result = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ConnectError::Io(addr, e)),
            Err(_) => Err(ConnectError::Timeout(addr)),
        };
        match result {
            Ok(c) => {
                endpoint.record_success();
                self.stats.cx_total.increment(1);
                Ok((c, ConnectionGuard::new(slot)))
            }
            Err(e) => {
                endpoint.record_failure(&self.backoff);
                self.stats.connect_failed(e.reason());
                tracing::debug!(cluster = %self.name, endpoint = %addr, error = %e, "upstream connect failed");
                Err(e)
            }
        }
    }

    /// A connection slot under `max_connections` of `priority`, taken now
    /// for a connection opened later (`pool::MuxPool`), if one is free.
    pub(crate) fn reserve_connection(
        &self,
        endpoint: &Endpoint,
        priority: RoutingPriority,
    ) -> Option<ConnectionGuard> {
        self.connection_slot(endpoint, &self.connections[priority_index(priority)])
            .map(ConnectionGuard::new)
    }

    /// Waits in the pending queue of `priority` (`max_pending_requests`)
    /// until `take` succeeds, woken by freed connection slots and by
    /// `local`; `Err` (counted as a connection overflow) when the queue is
    /// full or no slot can ever free (`max_connections: 0`).
    pub(crate) async fn wait_pending<T>(
        &self,
        local: &tokio::sync::Notify,
        take: impl FnMut() -> Option<T>,
        priority: RoutingPriority,
    ) -> Result<T, ConnectError> {
        let c = &self.connections[priority_index(priority)];
        let waited = if c.max > 0 {
            c.pending.wait_with(Some(local), take).await
        } else {
            None
        };
        waited.ok_or_else(|| {
            self.stats.cx_overflow().increment(1);
            let e = ConnectError::Overflow(self.name.into());
            self.stats.connect_failed(e.reason());
            e
        })
    }

    /// A connection slot under `max_connections` of `c`'s priority (and
    /// the per-host `max_connections` of `endpoint`), if one is free.
    fn connection_slot(
        &self,
        endpoint: &Endpoint,
        c: &Arc<ConnectionCount>,
    ) -> Option<ConnectionSlot> {
        let host = if self.max_connections_per_host == u32::MAX && c.max_pools == u32::MAX {
            None
        } else {
            // An endpoint's first connection of a priority opens its pool
            // of that priority (`max_connection_pools`): the pool is taken
            // before the endpoint's count leaves 0, and given back if
            // another connection won that race, so that every 0 -> 1 of
            // the count holds one pool and every 1 -> 0 gives one back.
            let ep = &endpoint.connections;
            let shift = c.shift();
            loop {
                let packed = ep.load(Ordering::SeqCst);
                let mine = (packed >> shift) & u64::from(u32::MAX);
                // The per-host cap counts both priorities.
                let all = (packed & u64::from(u32::MAX)) + (packed >> 32);
                if all >= u64::from(self.max_connections_per_host) {
                    return None;
                }
                let opens = mine == 0;
                if opens
                    && c.pools
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                            (p < c.max_pools).then_some(p + 1)
                        })
                        .is_err()
                {
                    return None;
                }
                if ep
                    .compare_exchange(
                        packed,
                        packed + (1 << shift),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
                {
                    break;
                }
                if opens {
                    c.pools.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Some(endpoint.connections.clone())
        };
        // A compare-and-swap, not an add taken back: a passing over-count
        // could fail a woken waiter's try while no slot is taken, and
        // nobody would wake it again.
        c.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < c.max).then_some(n + 1)
            })
            .ok()
            .or_else(|| {
                if let Some(h) = &host {
                    c.host_released(h);
                }
                None
            })?;
        self.stats.cx_active.increment(1.0);
        Some(ConnectionSlot(c.clone(), host))
    }

    /// Sets each priority's `max_connections`, `max_pending_requests`
    /// and `max_connection_pools` (before the cluster is shared).
    fn set_connection_limits(&mut self, t: &[breaker::ThresholdValues; 2]) {
        let stats = &self.stats;
        let mut i = 0;
        self.connections = [RoutingPriority::Default, RoutingPriority::High].map(|p| {
            let v = &t[i];
            i += 1;
            Arc::new(ConnectionCount::new(
                stats,
                p,
                v.max_connections,
                v.max_pending_requests,
                v.max_connection_pools,
            ))
        });
    }

    /// Whether a connection to `endpoint` would open a new pool of `c`'s
    /// priority past its `max_connection_pools` (it has none and the cap
    /// is reached).
    fn pool_refused(&self, endpoint: &Endpoint, c: &ConnectionCount) -> bool {
        c.max_pools != u32::MAX
            && (endpoint.connections.load(Ordering::SeqCst) >> c.shift()) & u64::from(u32::MAX) == 0
            && c.pools.load(Ordering::SeqCst) >= c.max_pools
    }

    /// Upstream connections currently open (both priorities).
    pub fn active_connections(&self) -> u32 {
        self.connections
            .iter()
            .map(|c| c.active.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether the connections of `priority` are at its `max_connections`.
    pub fn at_max_connections(&self, priority: RoutingPriority) -> bool {
        let c = &self.connections[priority_index(priority)];
        c.active.load(Ordering::Relaxed) >= c.max
    }
}

/// Clusters by name, as a listener's filters and routes resolved them.
pub type ClusterRefs = BTreeMap<Arc<str>, Arc<Cluster>>;

/// Resolves the cluster names of a config while it is built (routes,
/// network and stream filters).
pub trait ClusterResolver {
    /// The cluster named `name`, or a build error at `field`.
    fn resolve(&self, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError>;
}

/// Every cluster of a snapshot, by name, with the config it serves.
/// The map is persistent (`imbl`): a reload's manager shares it with the
/// previous one and copies only the nodes it changes, so one changed
/// cluster among 10,000 costs what it costs among one.
#[derive(Default)]
pub struct ClusterManager {
    clusters: imbl::HashMap<Arc<str>, Entry>,
    /// The configs this manager was built from, in order: the next build
    /// walks them beside its own, by pointer, to find what changed.
    /// Persistent: shared with the config, not copied.
    configs: ClusterList,
    /// Clusters whose background tasks (DNS re-resolution, outlier
    /// timer, health checks, membership gauges) `spawn_dns_refresh`
    /// starts: those built or given new endpoints by this build.
    fresh: Vec<Arc<str>>,
    /// The tasks of the previous manager's clusters this one drops or
    /// replaces, stopped by `retire_replaced` when it goes live.
    retired: Vec<Arc<Tasks>>,
    /// New endpoint sets of reused (live) clusters, stored into them by
    /// `commit_endpoints` once this manager's snapshot goes live.
    staged: Vec<(Arc<Cluster>, Vec<Arc<Endpoint>>)>,
    /// Zone-aware clusters and their local cluster, linked by
    /// `commit_endpoints` (`zone::link`).
    zone_links: zone::Links,
    /// The names of the zone-aware clusters, which `zone::link` links
    /// (without visiting the others).
    zone_aware: imbl::HashSet<Arc<str>>,
}

/// A cluster and the config of the snapshot it belongs to (for a cluster
/// reused with new endpoints, the new config).
#[derive(Clone)]
struct Entry {
    cluster: Arc<Cluster>,
    config: Arc<ClusterConfig>,
    /// Its background tasks, shared by every manager that reuses it as is.
    tasks: Arc<Tasks>,
}

/// The stop of one cluster's background tasks: set when they start,
/// cancelled when a live manager drops or replaces the cluster, or when
/// no manager holds it any more.
#[derive(Default)]
pub(crate) struct Tasks(std::sync::OnceLock<tokio_util::sync::CancellationToken>);

impl Tasks {
    /// The stop for tasks about to start, if they have not started yet.
    fn start(
        &self,
        parent: &tokio_util::sync::CancellationToken,
    ) -> Option<tokio_util::sync::CancellationToken> {
        let token = parent.child_token();
        self.0.set(token.clone()).ok().map(|()| token)
    }

    fn stop(&self) {
        if let Some(t) = self.0.get() {
            t.cancel();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ClusterResolver for ClusterManager {
    fn resolve(&self, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError> {
        self.get(name).cloned().ok_or_else(|| {
            let mut defined: Vec<&str> = self.clusters.keys().map(|n| &**n).collect();
            defined.sort_unstable();
            BuildError::new(
                field,
                format!(
                    "unknown cluster '{name}' (defined: {})",
                    if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    }
                ),
            )
        })
    }
}

/// Whether two configs of a cluster differ at most in their endpoints.
fn same_but_endpoints(a: &ClusterConfig, b: &ClusterConfig) -> bool {
    // Destructured so that a new setting cannot be forgotten here.
    let ClusterConfig {
        name,
        discovery,
        lb_policy,
        lb_config,
        connect_timeout,
        max_connections,
        circuit_breakers,
        dns_refresh_rate,
        dns_lookup_family,
        connect_failure_backoff,
        endpoints: _,
        protocol,
        protocol_options,
        tls,
        proxy_protocol,
        common_lb_config,
        policy,
        health_checks,
        outlier_detection,
        original_dst_lb_config,
        cleanup_interval,
        per_connection_buffer_limit_bytes,
        transport_socket_matches,
        filters,
        upstream_bind_config,
        upstream_connection_options,
        metadata,
        not_found,
    } = a;
    *metadata == b.metadata
        && *name == b.name
        && *discovery == b.discovery
        && *lb_policy == b.lb_policy
        && *lb_config == b.lb_config
        && *connect_timeout == b.connect_timeout
        && *max_connections == b.max_connections
        && *circuit_breakers == b.circuit_breakers
        && *dns_refresh_rate == b.dns_refresh_rate
        && *dns_lookup_family == b.dns_lookup_family
        && *connect_failure_backoff == b.connect_failure_backoff
        && *protocol == b.protocol
        && *protocol_options == b.protocol_options
        && *tls == b.tls
        && *proxy_protocol == b.proxy_protocol
        && *common_lb_config == b.common_lb_config
        && *policy == b.policy
        && *health_checks == b.health_checks
        && *outlier_detection == b.outlier_detection
        && *original_dst_lb_config == b.original_dst_lb_config
        && *cleanup_interval == b.cleanup_interval
        && *per_connection_buffer_limit_bytes == b.per_connection_buffer_limit_bytes
        && *transport_socket_matches == b.transport_socket_matches
        && *filters == b.filters
        && *upstream_bind_config == b.upstream_bind_config
        && *upstream_connection_options == b.upstream_connection_options
        && *not_found == b.not_found
}

/// Whether building a cluster from this config reads TLS files.
fn reads_files(c: &ClusterConfig) -> bool {
    c.tls
        .iter()
        .chain(
            c.transport_socket_matches
                .iter()
                .filter_map(|m| m.tls.as_ref()),
        )
        .any(|t| {
            t.trusted_ca.is_some()
                || t.client_certificate
                    .as_ref()
                    .is_some_and(|k| !k.certificate_chain.is_empty() || !k.private_key.is_empty())
        })
}

impl ClusterManager {
    /// Builds the clusters of a config. `strict_dns` clusters are resolved
    /// once here (so a name that does not resolve is a config error) and
    /// re-resolved by `spawn_dns_refresh`.
    pub fn build(
        configs: &ClusterList,
        registry: &Registry,
        source: &ConfigSource,
        resolve_dns: bool,
    ) -> Result<Self, ConfigError> {
        Self::build_reusing(configs, registry, source, resolve_dns, None)
    }

    /// As `build`, reusing from `previous` (the live clusters) every
    /// cluster whose config is unchanged: the same `Arc<Cluster>`, so its
    /// pools, load-balancer state, endpoint back-off and stats carry over
    /// and a reload costs only what changed. A cluster whose config changed
    /// only in its endpoints is reused too, its new endpoint set staged,
    /// not stored: the live cluster is untouched until `commit_endpoints`,
    /// so a build that fails later leaves the serving snapshot as it was.
    /// With `reread_files` (`previous` is paired with it), a cluster whose
    /// TLS reads files is rebuilt, so a reload of the config file re-reads
    /// them.
    pub fn build_reusing(
        configs: &ClusterList,
        registry: &Registry,
        source: &ConfigSource,
        resolve_dns: bool,
        previous: Option<(&ClusterManager, bool)>,
    ) -> Result<Self, ConfigError> {
        let Some((prev, reread_files)) = previous else {
            let mut m = Self::default();
            for (i, c) in configs.iter().enumerate() {
                if !c.name.is_empty() && m.clusters.contains_key(c.name.as_str()) {
                    return Err(source.error(
                        format!("clusters[{i}].name"),
                        format!("duplicate cluster name '{}'", c.name),
                    ));
                }
                m.put(i, c, None, registry, source, resolve_dns)?;
            }
            m.configs = configs.clone();
            return Ok(m);
        };
        // What changed: the configs walked beside the previous ones, by
        // pointer (a dynamic update shares every unchanged config's
        // `Arc`), so an update visits only what it changed. Both lists
        // are mostly in name order (the xDS client composes them so);
        // where they are not, a name taken for added or removed is
        // checked against the other side below.
        let (mut changed, mut gone) = (Vec::new(), Vec::new());
        let mut old = prev.configs.iter().peekable();
        for (i, c) in configs.iter().enumerate() {
            loop {
                match old.peek() {
                    None => {
                        changed.push((i, false));
                        break;
                    }
                    Some(o) if Arc::ptr_eq(o, c) => {
                        old.next();
                        if reread_files && reads_files(c) {
                            changed.push((i, true));
                        }
                        break;
                    }
                    Some(o) => match o.name.cmp(&c.name) {
                        std::cmp::Ordering::Equal => {
                            old.next();
                            changed.push((i, true));
                            break;
                        }
                        std::cmp::Ordering::Greater => {
                            changed.push((i, false));
                            break;
                        }
                        std::cmp::Ordering::Less => {
                            gone.push(o.name.as_str());
                            old.next();
                        }
                    },
                }
            }
        }
        gone.extend(old.map(|o| o.name.as_str()));
        let gone: HashSet<&str> = gone.into_iter().collect();
        let mut m = Self {
            clusters: prev.clusters.clone(),
            configs: configs.clone(),
            zone_aware: prev.zone_aware.clone(),
            ..Self::default()
        };
        let mut seen = HashSet::new();
        for &(i, same_place) in &changed {
            let c = &configs[i];
            // A name the previous manager held is this entry's only if
            // the walk paired them, or the old one moved away; else it
            // is also elsewhere in this list.
            if !seen.insert(c.name.as_str())
                || !same_place
                    && !gone.contains(c.name.as_str())
                    && prev.clusters.contains_key(c.name.as_str())
            {
                return Err(source.error(
                    format!("clusters[{i}].name"),
                    format!("duplicate cluster name '{}'", c.name),
                ));
            }
        }
        for name in gone.iter().filter(|n| !seen.contains(*n)) {
            if let Some(e) = m.clusters.remove(*name) {
                m.zone_aware.remove(*name);
                m.retired.push(e.tasks);
            }
        }
        for &(i, _) in &changed {
            let c = &configs[i];
            let reusable = !(reread_files && reads_files(c));
            let was = prev.clusters.get(c.name.as_str()).filter(|_| reusable);
            if let Some(old) = prev.clusters.get(c.name.as_str()) {
                // Replaced, or reused with new endpoints: its tasks
                // start again with its new config.
                if was.is_none_or(|w| w.config != *c) {
                    m.retired.push(old.tasks.clone());
                }
            }
            m.put(i, c, was, registry, source, resolve_dns)?;
        }
        Ok(m)
    }

    /// Adds the cluster of `c` (`clusters[i]`): `prev`'s if its config is
    /// the same, `prev`'s with its endpoints staged if only they changed,
    /// else a new one.
    fn put(
        &mut self,
        i: usize,
        c: &Arc<ClusterConfig>,
        prev: Option<&Entry>,
        registry: &Registry,
        source: &ConfigSource,
        resolve_dns: bool,
    ) -> Result<(), ConfigError> {
        let path = || format!("clusters[{i}]");
        if c.name.is_empty() {
            return Err(source.error(format!("{}.name", path()), "must not be empty"));
        }
        let name: Arc<str> = c.name.as_str().into();
        if let Some(prev) = prev {
            // Mostly the same `Arc`: compared by pointer first.
            if prev.config == *c {
                let e = Entry {
                    config: c.clone(),
                    ..prev.clone()
                };
                self.clusters.insert(name, e);
                return Ok(());
            }
            if same_but_endpoints(&prev.config, c) {
                let endpoints = build_endpoints(c, &path(), source, resolve_dns)?;
                self.staged.push((prev.cluster.clone(), endpoints));
                let e = Entry {
                    cluster: prev.cluster.clone(),
                    config: c.clone(),
                    tasks: Arc::default(),
                };
                self.clusters.insert(name.clone(), e);
                self.fresh.push(name);
                return Ok(());
            }
        }
        let cluster = build_cluster(c, &path(), registry, source, resolve_dns)?;
        if cluster.priority.zone.is_some() {
            self.zone_aware.insert(name.clone());
        } else {
            self.zone_aware.remove(&name);
        }
        let e = Entry {
            cluster: Arc::new(cluster),
            config: c.clone(),
            tasks: Arc::default(),
        };
        self.clusters.insert(name.clone(), e);
        self.fresh.push(name);
        Ok(())
    }

    /// Stores the endpoint sets staged by `build_reusing` into their live
    /// clusters. Called once this manager's snapshot is about to be
    /// swapped in, when nothing can refuse it any more.
    pub fn commit_endpoints(&mut self) {
        for (cluster, endpoints) in self.staged.drain(..) {
            tracing::info!(cluster = %cluster.name, endpoints = endpoints.len(), "endpoints updated in place");
            cluster.update_endpoints(endpoints);
        }
        zone::apply(std::mem::take(&mut self.zone_links));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name).map(|e| &e.cluster)
    }

    /// The config the cluster `name` serves in this manager's snapshot.
    pub fn config(&self, name: &str) -> Option<&Arc<ClusterConfig>> {
        self.clusters.get(name).map(|e| &e.config)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values().map(|e| &e.cluster)
    }

    /// The zone-aware clusters (`zone_aware_lb_config`).
    fn zone_aware(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.zone_aware.iter().filter_map(|n| self.get(n))
    }

    /// Stops the background tasks of the previous manager's clusters that
    /// this one dropped or replaced (called when it goes live, before its
    /// staged endpoints are stored).
    pub fn retire_replaced(&self) {
        for t in &self.retired {
            t.stop();
        }
    }

    /// Starts re-resolution tasks for the `strict_dns` clusters, and the
    /// interval timers of the outlier detectors, of the clusters this
    /// build made or gave new endpoints (the others' go on); they stop
    /// when `shutdown` is cancelled, or when a later manager drops or
    /// replaces their cluster (`retire_replaced`).
    pub fn spawn_dns_refresh(&self, shutdown: tokio_util::sync::CancellationToken) {
        for e in self.fresh.iter().filter_map(|n| self.clusters.get(n)) {
            let Some(shutdown) = e.tasks.start(&shutdown) else {
                continue;
            };
            // Active health checks: once per cluster, for its lifetime.
            if let Some(hc) = &e.cluster.health_check {
                hc.start(&e.cluster);
            }
            health_check::publish_membership(e.cluster.name, &e.cluster.hosts().endpoints);
            if let Some(d) = &e.cluster.outlier {
                d.spawn(Arc::downgrade(&e.cluster), shutdown.clone());
            }
            if e.config.discovery != DiscoveryType::StrictDns {
                continue;
            }
            let cluster = e.cluster.clone();
            let config = e.config.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(config.dns_refresh_rate);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let mut endpoints = Vec::new();
                    let mut ok = true;
                    for e in &config.endpoints {
                        let Some((host, port)) = split_host_port(&e.address) else {
                            continue;
                        };
                        match tokio::net::lookup_host((host, port)).await {
                            Ok(addrs) => {
                                for a in config.dns_lookup_family.select(addrs.collect()) {
                                    let mut ep = Endpoint::new(a, e.weight);
                                    ep.hostname = Some(host.into());
                                    ep.metadata = e.metadata.clone();
                                    ep.priority = e.priority;
                                    locality::apply(&mut ep, e);
                                    ep.set_eds_health(e.health_status);
                                    ep.set_health_check_config(e.health_check_config.as_ref());
                                    endpoints.push(Arc::new(ep));
                                }
                            }
                            Err(err) => {
                                ok = false;
                                tracing::warn!(cluster = %config.name, host, error = %err, "DNS re-resolution failed; keeping previous endpoints");
                            }
                        }
                    }
                    if ok {
                        let changed = {
                            let cur = cluster.hosts();
                            let mut a: Vec<_> = cur.endpoints.iter().map(|e| e.address).collect();
                            let mut b: Vec<_> = endpoints.iter().map(|e| e.address).collect();
                            a.sort();
                            b.sort();
                            a != b
                        };
                        // A reload that replaced this task may have stored
                        // newer endpoints meanwhile: they win.
                        if changed && !shutdown.is_cancelled() {
                            tracing::info!(cluster = %config.name, endpoints = endpoints.len(), "DNS answer changed; endpoints updated");
                            cluster.update_endpoints(endpoints);
                        }
                    }
                }
            });
        }
    }
}

/// Builds one new cluster from its config (`path` names it in errors).
fn build_cluster(
    c: &ClusterConfig,
    path: &str,
    registry: &Registry,
    source: &ConfigSource,
    resolve_dns: bool,
) -> Result<Cluster, ConfigError> {
    let od = original_dst::OriginalDst::build(c, path, source)?;
    // An original_dst cluster picks its host itself; its (empty) host set
    // gets a plain load balancer.
    let lb_policy = if od.is_some() {
        "round_robin"
    } else {
        &c.lb_policy
    };
    let factory = registry.load_balancer(lb_policy).ok_or_else(|| {
        source.error(
            format!("{path}.lb_policy"),
            format!(
                "unknown load balancer '{}' (known: {})",
                c.lb_policy,
                registry.load_balancer_names().join(", ")
            ),
        )
    })?;
    let builder = factory
        .create(&c.lb_config)
        .map_err(|e| source.build_error(&format!("{path}.lb_config"), e))?;
    if c.connect_timeout.is_zero() {
        return Err(source.error(format!("{path}.connect_timeout"), "must be > 0"));
    }
    if c.per_connection_buffer_limit_bytes == Some(0) {
        return Err(source.error(
            format!("{path}.per_connection_buffer_limit_bytes"),
            "must be >= 1 (meshgate never buffers without a bound)",
        ));
    }
    let thresholds = breaker::check(c.circuit_breakers.as_ref(), c.max_connections)
        .map_err(|(field, msg)| source.error(format!("{path}.{field}"), msg))?;
    let endpoints = build_endpoints(c, path, source, resolve_dns)?;
    let policy = priority::Policy::build(c, path, source)?;
    let detector = match &c.outlier_detection {
        Some(od) => {
            od.validate().map_err(|(field, msg)| {
                source.error(format!("{path}.outlier_detection.{field}"), msg)
            })?;
            let d = outlier::Detector::new(crate::stream::intern(&c.name), od.clone());
            d.attach(&endpoints, &[]);
            Some(d)
        }
        None => None,
    };
    let mut cluster = Cluster::new(
        &c.name,
        c.connect_timeout,
        Some(thresholds[0].max_connections),
        c.connect_failure_backoff.clone(),
        builder,
        endpoints,
    );
    cluster.priority = policy;
    cluster.not_found = c.not_found;
    cluster.metadata = (!c.metadata.is_empty()).then(|| Arc::new(c.metadata.clone()));
    cluster.buffer_limit = c.per_connection_buffer_limit_bytes;
    cluster.max_connections_per_host = thresholds[0].max_connections_per_host;
    cluster.breakers = Arc::new(breaker::Breakers::new(cluster.stats.label(), &thresholds));
    cluster.set_connection_limits(&thresholds);
    cluster.outlier = detector;
    cluster.proxy_protocol = c.proxy_protocol.clone();
    cluster.original_dst = od;
    cluster.socket =
        upstream_socket::UpstreamSocket::build(c).map_err(|e| source.build_error(path, e))?;
    for (i, f) in c.filters.iter().enumerate() {
        let p = format!("{path}.filters[{i}]");
        let factory = registry.upstream_filter(&f.name).ok_or_else(|| {
            source.error(
                format!("{p}.name"),
                format!("unknown upstream filter '{}'", f.name),
            )
        })?;
        let built = factory
            .create(&f.config)
            .map_err(|e| source.build_error(&format!("{p}.config"), e))?;
        cluster.filters.0.push((f.name.clone(), built));
    }
    // `protocol: auto`: a TLS context that names no ALPN offers `h2` and
    // `http/1.1` (Envoy's fallback); health checks keep the context as
    // configured (Envoy adds the fallback to its pools' connections only).
    let auto = c.protocol.as_deref() == Some(crate::upstream_protocol::AUTO);
    // Each context built as traffic uses it and as health checks do.
    let upstream_tls = |t: &crate::config::UpstreamTlsConfig, p: &str| {
        let build = |t: &crate::config::UpstreamTlsConfig| {
            crate::tls::UpstreamTls::new(t, p)
                .map(Arc::new)
                .map_err(|e| source.build_error("", e))
        };
        let mut t = t.resolved(source);
        let checks = build(&t)?;
        if !(auto && t.alpn_protocols.is_empty()) {
            return Ok((checks.clone(), checks));
        }
        t.alpn_protocols = crate::upstream_protocol::AUTO_ALPN
            .map(String::from)
            .to_vec();
        Ok((build(&t)?, checks))
    };
    let mut hc_tls = None;
    if let Some(t) = &c.tls {
        let (tls, checks) = upstream_tls(t, &format!("{path}.tls"))?;
        hc_tls = Some(checks);
        cluster.tls = Some(tls);
    }
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let p = format!("{path}.transport_socket_matches[{i}]");
        let (tls, health_check_tls) = match &m.tls {
            None => (None, None),
            Some(t) => {
                let (tls, checks) = upstream_tls(t, &format!("{p}.tls"))?;
                (Some(tls), Some(checks))
            }
        };
        cluster.tls_matches.push(TlsMatch {
            criteria: m.match_.clone(),
            tls,
            health_check_tls,
        });
    }
    cluster.health_check = health_check::HealthChecker::build(
        cluster.name,
        &c.health_checks,
        hc_tls,
        &format!("{path}.health_checks"),
    )
    .map_err(|e| source.build_error("", e))?;
    if let Some(hc) = &cluster.health_check {
        hc.endpoints_added(cluster.hosts().endpoints.iter());
    }
    let protocol = c.protocol.as_deref().unwrap_or("http1");
    // An HTTP/3 check runs on the codec's own health-check client.
    if let Some(i) = cluster.health_check.as_ref().and_then(|h| h.http3_check())
        && protocol != "http3"
    {
        return Err(source.error(
            format!("{path}.health_checks[{i}].http_health_check.codec_client_type"),
            format!("HTTP3 checks need an http3 cluster (protocol: http3), not {protocol}"),
        ));
    }
    if auto {
        let built = registry
            .codec("http2")
            .and_then(|f| f.alpn_client(&c.protocol_options))
            .ok_or_else(|| {
                source.error(
                    format!("{path}.protocol"),
                    "protocol 'auto' needs the 'http2' codec's ALPN client",
                )
            })?;
        cluster.upstream =
            Some(built.map_err(|e| source.build_error(&format!("{path}.protocol_options"), e))?);
        cluster.protocol = crate::upstream_protocol::AUTO;
        return Ok(cluster);
    }
    if protocol == crate::upstream_protocol::DOWNSTREAM {
        cluster.upstream = Some(
            crate::upstream_protocol::ByDownstream::build(registry, &c.protocol_options)
                .map_err(|e| source.build_error(&format!("{path}.protocol_options"), e))?,
        );
        cluster.protocol = crate::upstream_protocol::DOWNSTREAM;
        return Ok(cluster);
    }
    match registry.codec(protocol) {
        Some(codec) => {
            cluster.upstream = Some(
                codec
                    .client(&c.protocol_options)
                    .map_err(|e| source.build_error(&format!("{path}.protocol_options"), e))?,
            );
            cluster.protocol = codec.name();
        }
        None if c.protocol.is_some() => {
            return Err(source.error(
                format!("{path}.protocol"),
                format!(
                    "unknown protocol '{protocol}' (known: {})",
                    registry.codec_names().join(", ")
                ),
            ));
        }
        None => {}
    }
    Ok(cluster)
}

/// The endpoints of a cluster config, validated (weights, addresses) and,
/// for `strict_dns` when `resolve_dns`, resolved.
fn build_endpoints(
    c: &ClusterConfig,
    path: &str,
    source: &ConfigSource,
    resolve_dns: bool,
) -> Result<Vec<Arc<Endpoint>>, ConfigError> {
    let mut endpoints = Vec::with_capacity(c.endpoints.len());
    for (j, e) in c.endpoints.iter().enumerate() {
        let epath = format!("{path}.endpoints[{j}]");
        if e.weight == 0 {
            return Err(source.error(format!("{epath}.weight"), "must be >= 1"));
        }
        if let Some(h) = &e.health_check_config {
            let hp = format!("{epath}.health_check_config");
            h.port(&hp)
                .map_err(|b| source.error(b.path.clone(), b.message.clone()))?;
        }
        match c.discovery {
            DiscoveryType::OriginalDst => {
                return Err(source.error(
                    format!("{path}.endpoints"),
                    "an original_dst cluster has no configured endpoints",
                ));
            }
            DiscoveryType::Static => {
                let addr: SocketAddr = e.address.parse().map_err(|_| {
                    source.error(
                        format!("{epath}.address"),
                        format!(
                            "invalid address '{}': want ip:port (static cluster)",
                            e.address
                        ),
                    )
                })?;
                let mut ep = Endpoint::new(addr, e.weight);
                ep.metadata = e.metadata.clone();
                ep.priority = e.priority;
                locality::apply(&mut ep, e);
                ep.set_eds_health(e.health_status);
                ep.set_health_check_config(e.health_check_config.as_ref());
                endpoints.push(Arc::new(ep));
            }
            DiscoveryType::StrictDns => {
                let (host, port) = split_host_port(&e.address).ok_or_else(|| {
                    source.error(
                        format!("{epath}.address"),
                        format!("invalid address '{}': want host:port", e.address),
                    )
                })?;
                if resolve_dns {
                    let addrs = resolve_blocking(host, port)
                        .map(|a| c.dns_lookup_family.select(a))
                        .and_then(|a| {
                            if a.is_empty() {
                                Err(std::io::Error::other(format!(
                                    "no address of the family {:?} (dns_lookup_family)",
                                    c.dns_lookup_family
                                )))
                            } else {
                                Ok(a)
                            }
                        })
                        .map_err(|err| {
                            source.error(
                                format!("{epath}.address"),
                                format!("cannot resolve '{}': {err}", e.address),
                            )
                        })?;
                    for a in addrs {
                        let mut ep = Endpoint::new(a, e.weight);
                        ep.hostname = Some(host.into());
                        ep.metadata = e.metadata.clone();
                        ep.priority = e.priority;
                        locality::apply(&mut ep, e);
                        ep.set_eds_health(e.health_status);
                        ep.set_health_check_config(e.health_check_config.as_ref());
                        endpoints.push(Arc::new(ep));
                    }
                }
            }
        }
    }
    Ok(endpoints)
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn resolve_blocking(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let v: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if v.is_empty() {
        return Err(std::io::Error::other("no addresses"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_endpoint_backs_off_exponentially_and_recovers() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        let cfg = BackoffConfig {
            base_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(350),
        };
        let now = now_ms();
        assert!(e.is_available(|| now));
        e.record_failure(&cfg);
        assert!(!e.is_available(now_ms));
        assert!(e.is_available(|| now_ms() + 101));
        e.record_failure(&cfg); // 200ms
        assert!(!e.is_available(|| now_ms() + 150));
        e.record_failure(&cfg); // 400ms capped at 350
        e.record_failure(&cfg);
        assert!(e.is_available(|| now_ms() + 351));
        e.record_success();
        assert!(e.is_available(now_ms));
    }

    #[test]
    fn eds_health_status_sets_its_own_bit_on_a_kept_endpoint() {
        use crate::config::EndpointHealthStatus as S;
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "a",
            "endpoints": [{"address": "127.0.0.1:1", "health_status": "degraded"}, {"address": "127.0.0.1:2"}],
        }))
        .unwrap();
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let m = ClusterManager::build(&imbl::vector![Arc::new(cfg)], &reg, &src, false).unwrap();
        let a = m.get("a").unwrap().clone();
        let eps = a.hosts().endpoints.clone();
        assert_eq!(eps[0].health(), Health::Degraded);
        eps[0]
            .health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        // An update marks endpoint 1 unhealthy: the same endpoint is kept,
        // its EDS bits replaced, the outlier bit left alone.
        let next = Endpoint::new(eps[0].address, eps[0].weight);
        next.set_eds_health(S::Unhealthy);
        a.update_endpoints(vec![Arc::new(next), eps[1].clone()]);
        let now = a.hosts().endpoints.clone();
        assert!(Arc::ptr_eq(&now[0], &eps[0]));
        assert_eq!(
            HealthFlags::names(now[0].health_flags().flags()),
            vec!["failed_outlier_check", "failed_eds_health"]
        );
        for _ in 0..4 {
            assert_eq!(
                a.choose(&LbContext::default(), &[]).unwrap().address.port(),
                2
            );
        }
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_and_a_removed_endpoints_pool_closes() {
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "a",
            "endpoints": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}],
        }))
        .unwrap();
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let m = ClusterManager::build(&imbl::vector![Arc::new(cfg)], &reg, &src, false).unwrap();
        let a = m.get("a").unwrap().clone();
        let eps = a.hosts().endpoints.clone();
        let ctx = LbContext::default();
        eps[0]
            .health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        for _ in 0..6 {
            assert_eq!(a.choose(&ctx, &[]).unwrap().address.port(), 2);
        }
        // All unhealthy: panic mode still picks one.
        eps[1]
            .health_flags()
            .set_flag(HealthFlags::FAILED_ACTIVE_HC);
        assert!(a.choose(&ctx, &[]).is_some());
        eps[1]
            .health_flags()
            .clear_flag(HealthFlags::FAILED_ACTIVE_HC);

        struct Idle;
        impl crate::pool::Reusable for Idle {
            fn is_reusable(&self) -> bool {
                true
            }
        }
        type P = crate::pool::ExclusivePool<Idle>;
        let (gone, kept) = (
            eps[0].pool(P::default).unwrap(),
            eps[1].pool(P::default).unwrap(),
        );
        let limits = crate::pool::ExclusiveLimits {
            max_idle: 4,
            max_requests: u32::MAX,
            max_duration: None,
        };
        gone.put(Idle, &limits);
        kept.put(Idle, &limits);
        a.update_endpoints(vec![Arc::new(Endpoint::new(
            "127.0.0.1:2".parse().unwrap(),
            1,
        ))]);
        // The endpoint that stayed kept its pool; the one that left closed.
        assert_eq!((gone.idle_count(), kept.idle_count()), (0, 1));
        assert!(Arc::ptr_eq(&a.hosts().endpoints[0], &eps[1]));
    }

    #[test]
    fn unchanged_clusters_are_reused_across_builds() {
        let cfg = |name: &str, port: u16| -> ClusterConfig {
            serde_json::from_value(serde_json::json!({
                "name": name,
                "endpoints": [{"address": format!("127.0.0.1:{port}")}],
            }))
            .unwrap()
        };
        let shared = |cs: Vec<ClusterConfig>| -> Vec<Arc<ClusterConfig>> {
            cs.into_iter().map(Arc::new).collect()
        };
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let first = shared(vec![cfg("a", 1), cfg("b", 2)]);
        let m1 = ClusterManager::build(&first.clone().into(), &reg, &src, false).unwrap();
        // b: a setting other than its endpoints changes.
        let mut b = cfg("b", 2);
        b.lb_policy = "random".into();
        let second = shared(vec![cfg("a", 1), b, cfg("c", 4)]);
        let m2 = ClusterManager::build_reusing(
            &second.clone().into(),
            &reg,
            &src,
            false,
            Some((&m1, true)),
        )
        .unwrap();
        assert!(Arc::ptr_eq(m1.get("a").unwrap(), m2.get("a").unwrap()));
        assert!(!Arc::ptr_eq(m1.get("b").unwrap(), m2.get("b").unwrap()));
        assert!(m2.get("c").is_some());
        assert!(Arc::ptr_eq(m2.config("a").unwrap(), &second[0]));
    }

    #[test]
    fn a_dynamic_update_visits_only_the_clusters_it_changed() {
        let cfg = |name: &str, port: u16, timeout_ms: u64| -> Arc<ClusterConfig> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "name": name,
                    "connect_timeout": format!("{timeout_ms}ms"),
                    "endpoints": [{"address": format!("127.0.0.1:{port}")}],
                }))
                .unwrap(),
            )
        };
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let first: Vec<_> = (0..100)
            .map(|i| cfg(&format!("c{i:03}"), 1, 1000))
            .collect();
        let m1 = ClusterManager::build(&first.clone().into(), &reg, &src, false).unwrap();
        assert_eq!(m1.fresh.len(), 100);
        // c001's endpoint changes, c002's timeout, c003 goes, c100 comes;
        // the configs of the rest are the same `Arc`s (as xDS shares them).
        let mut second = first.clone();
        second[1] = cfg("c001", 2, 1000);
        second[2] = cfg("c002", 1, 2000);
        second.remove(3);
        second.push(cfg("c100", 1, 1000));
        let m2 = ClusterManager::build_reusing(
            &second.clone().into(),
            &reg,
            &src,
            false,
            Some((&m1, false)),
        )
        .unwrap();
        let same = |n: &str| Arc::ptr_eq(m1.get(n).unwrap(), m2.get(n).unwrap());
        // Unchanged clusters: the same cluster, the same background tasks.
        assert!((4..100).all(|i| same(&format!("c{i:03}"))) && same("c000"));
        let tasks = |m: &ClusterManager, n: &str| m.clusters.get(n).unwrap().tasks.clone();
        assert!(Arc::ptr_eq(&tasks(&m1, "c050"), &tasks(&m2, "c050")));
        // Endpoints only: the same cluster, its new endpoints staged.
        assert!(same("c001") && m2.staged.len() == 1);
        assert!(!same("c002"));
        assert!(m2.get("c003").is_none() && m2.config("c003").is_none());
        assert!(m2.get("c100").is_some());
        // Only what changed is started again; what went or was replaced
        // is stopped when the new manager goes live.
        let mut fresh: Vec<&str> = m2.fresh.iter().map(|n| &**n).collect();
        fresh.sort_unstable();
        assert_eq!(fresh, ["c001", "c002", "c100"]);
        assert_eq!(m2.retired.len(), 3);
        let stop = tokio_util::sync::CancellationToken::new();
        let t = tasks(&m1, "c003").start(&stop).unwrap();
        m2.retire_replaced();
        assert!(t.is_cancelled());
        assert!(tasks(&m2, "c050").start(&stop).is_some());
        assert!(!tasks(&m2, "c050").0.get().unwrap().is_cancelled());
        // A new cluster named like an unchanged one is refused (at the
        // second of the two, as a first build would); a cluster moved
        // elsewhere in the list is the same cluster.
        let mut dup = second.clone();
        dup.insert(0, cfg("c050", 3, 1000));
        let e = ClusterManager::build_reusing(
            &dup.clone().into(),
            &reg,
            &src,
            false,
            Some((&m2, false)),
        );
        assert!(e.is_err_and(|e| e.field == "clusters[50].name"));
        let mut dup = second.clone();
        dup.push(cfg("c050", 3, 1000));
        let e = ClusterManager::build_reusing(
            &dup.clone().into(),
            &reg,
            &src,
            false,
            Some((&m2, false)),
        );
        assert!(e.is_err_and(|e| e.field == "clusters[100].name"));
        let mut moved = second.clone();
        let c = moved.remove(50);
        moved.insert(0, c.clone());
        let m3 = ClusterManager::build_reusing(
            &moved.clone().into(),
            &reg,
            &src,
            false,
            Some((&m2, false)),
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            m3.get(&c.name).unwrap(),
            m2.get(&c.name).unwrap()
        ));
        assert_eq!(m3.iter().count(), 100);
        assert!(m3.fresh.is_empty() && m3.retired.is_empty());
    }

    #[test]
    fn endpoint_only_changes_update_the_live_cluster_in_place_on_commit() {
        let cfg = |name: &str, ports: &[u16], timeout_ms: u64| -> ClusterConfig {
            let eps: Vec<_> = ports
                .iter()
                .map(|p| serde_json::json!({"address": format!("127.0.0.1:{p}")}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "name": name,
                "connect_timeout": format!("{timeout_ms}ms"),
                "endpoints": eps,
            }))
            .unwrap()
        };
        let addrs = |c: &Cluster| -> Vec<u16> {
            c.hosts()
                .endpoints
                .iter()
                .map(|e| e.address.port())
                .collect()
        };
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let first: Vec<_> = [cfg("a", &[1, 2], 1000), cfg("b", &[5], 1000)]
            .map(Arc::new)
            .into();
        let m1 = ClusterManager::build(&first.clone().into(), &reg, &src, false).unwrap();
        let a = m1.get("a").unwrap().clone();
        let kept = a.hosts().endpoints[1].clone();
        kept.record_failure(&BackoffConfig::default());

        // a: endpoint 1 leaves, 3 joins; b: a setting changed.
        let second: Vec<_> = [cfg("a", &[2, 3], 1000), cfg("b", &[5], 2000)]
            .map(Arc::new)
            .into();
        let mut m2 = ClusterManager::build_reusing(
            &second.clone().into(),
            &reg,
            &src,
            false,
            Some((&m1, true)),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&a, m2.get("a").unwrap()));
        assert!(!Arc::ptr_eq(m1.get("b").unwrap(), m2.get("b").unwrap()));
        // Staged only: the live cluster still serves the old endpoints.
        assert_eq!(addrs(&a), vec![1, 2]);
        m2.commit_endpoints();
        assert_eq!(addrs(&a), vec![2, 3]);
        // The endpoint that stayed kept its state (back-off included).
        let hosts = a.hosts();
        assert!(Arc::ptr_eq(&kept, &hosts.endpoints[0]));
        assert!(!hosts.endpoints[0].is_available(now_ms));
        // The load balancer is over the new set: 3 is picked, 1 never.
        let ctx = LbContext::default();
        let picked: HashSet<u16> = (0..8)
            .filter_map(|_| a.choose(&ctx, &[]).map(|e| e.address.port()))
            .collect();
        assert!(picked.contains(&3) && !picked.contains(&1), "{picked:?}");
    }

    #[test]
    fn a_refused_build_leaves_the_live_endpoints_alone() {
        let cfg = |ports: &[u16], lb: &str| -> ClusterConfig {
            let eps: Vec<_> = ports
                .iter()
                .map(|p| serde_json::json!({"address": format!("127.0.0.1:{p}")}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "name": "a", "lb_policy": lb, "endpoints": eps,
            }))
            .unwrap()
        };
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let first = vec![Arc::new(cfg(&[1], "round_robin"))];
        let m1 = ClusterManager::build(&first.clone().into(), &reg, &src, false).unwrap();
        let a = m1.get("a").unwrap().clone();
        // Endpoints of a change, and a later cluster is invalid.
        let mut bad = cfg(&[9], "round_robin");
        bad.name = "z".into();
        bad.lb_policy = "no_such_lb".into();
        let second = vec![Arc::new(cfg(&[2], "round_robin")), Arc::new(bad)];
        assert!(
            ClusterManager::build_reusing(
                &second.clone().into(),
                &reg,
                &src,
                false,
                Some((&m1, true))
            )
            .is_err()
        );
        let ports: Vec<u16> = a
            .hosts()
            .endpoints
            .iter()
            .map(|e| e.address.port())
            .collect();
        assert_eq!(ports, vec![1]);
        // A built snapshot that is never committed leaves them too.
        let ok = vec![Arc::new(cfg(&[3], "round_robin"))];
        let m2 =
            ClusterManager::build_reusing(&ok.clone().into(), &reg, &src, false, Some((&m1, true)))
                .unwrap();
        drop(m2);
        assert_eq!(a.hosts().endpoints[0].address.port(), 1);
    }

    #[test]
    fn tls_files_are_read_again_on_a_file_reload_only() {
        // A self-signed CA, only loaded as a trust root here.
        const CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBjjCCATOgAwIBAgIUHAaBQGCKFhxfaVOPaT+b/2TqsaIwCgYIKoZIzj0EAwIw\n\
GzEZMBcGA1UEAwwQbWVzaGdhdGUgdGVzdCBDQTAgFw0yNjEyMDMxNzEyMzJaGA8y\n\
MTI2MTEwOTE3MTIzMlowGzEZMBcGA1UEAwwQbWVzaGdhdGUgdGVzdCBDQTBZMBMG\n\
ByqGSM49AgEGCCqGSM49AwEHA0IABMgV9d3vF8PPvWCTHusOiKhT8jCe/XAsoZ0t\n\
ADN1OrqvPVH0l7/M4VV2j19spNDNPM3NUiw4N1jUJ02GMAWOSbKjUzBRMB0GA1Ud\n\
DgQWBBQkqtaiTrDzSibHVB/8xlH3aGPPcDAfBgNVHSMEGDAWgBQkqtaiTrDzSibH\n\
VB/8xlH3aGPPcDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQC4\n\
MrgY9VW2HD8TWrzp+t4Hw5G93DaWE2lELgzu4A1HKAIhAK7N3BtdRdVlevKz2ity\n\
yccTrTM3npwVrabMmpbxKBJL\n\
-----END CERTIFICATE-----\n";
        let path = std::env::temp_dir().join(format!("meshgate-ca-{}.pem", std::process::id()));
        std::fs::write(&path, CA).unwrap();
        let cfg = || -> Vec<Arc<ClusterConfig>> {
            vec![Arc::new(
                serde_json::from_value(serde_json::json!({
                    "name": "a",
                    "endpoints": [{"address": "127.0.0.1:1"}],
                    "tls": {"trusted_ca": path},
                }))
                .unwrap(),
            )]
        };
        let reg = Registry::new();
        let src = ConfigSource::anonymous("test");
        let m1 = ClusterManager::build(&cfg().clone().into(), &reg, &src, false).unwrap();
        std::fs::remove_file(&path).unwrap();
        // A dynamic update: the unchanged cluster is reused, no file read.
        let m2 = ClusterManager::build_reusing(
            &cfg().clone().into(),
            &reg,
            &src,
            false,
            Some((&m1, false)),
        )
        .unwrap();
        assert!(Arc::ptr_eq(m1.get("a").unwrap(), m2.get("a").unwrap()));
        // A file reload reads them again (and finds the file gone).
        let e = ClusterManager::build_reusing(
            &cfg().clone().into(),
            &reg,
            &src,
            false,
            Some((&m1, true)),
        )
        .err()
        .unwrap();
        assert!(e.field.starts_with("clusters[0].tls"), "{e}");
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(split_host_port("localhost:80"), Some(("localhost", 80)));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", 80)));
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("x:http"), None);
    }
}
