//! Active health checking of a cluster's endpoints (Envoy's
//! `health_checks`): HTTP/1.1, HTTP/2, gRPC (`grpc.health.v1.Health/Check`)
//! and TCP (send/receive) probes, over the cluster's TLS when it
//! originates TLS; HTTP/3 probes on an http3 cluster, through its codec's
//! `HealthCheckClient` (QUIC lives in the protocols crate).
//!
//! One `HealthChecker` per cluster, owned by the `Cluster`; its supervisor
//! task (one per cluster, not per worker) starts once, when the cluster
//! first goes live, and ends when the cluster is dropped (a reload that
//! replaces it), so no check outlives its cluster. The supervisor drives
//! one check loop per (endpoint, check) inside its own task (a
//! `FuturesUnordered`, not a tokio task each): a thousand endpoints cost
//! one task that wakes for whichever checks are due, instead of a
//! thousand tasks scheduled across the workers. An endpoint that stays
//! across an endpoint-only update keeps its loop and its state; a new
//! endpoint starts `FAILED_ACTIVE_HC | PENDING_ACTIVE_HC` (Envoy's default)
//! and is checked at once, so the cluster is usable after one round trip.
//! Later checks are spread over the interval (a random phase after the
//! first) so that a thousand endpoints are not probed in one burst. A
//! check's HTTP/1.1 request is written once per loop and its read buffer
//! kept, so a check on a kept connection allocates nothing.
//!
//! With `reuse_connection` (Envoy's default) a check keeps its connection
//! for the next one (`Kept`): HTTP/1.1 keep-alive when the response's
//! framing allows it, one HTTP/2 connection for HTTP/2 and gRPC checks,
//! the socket of a TCP check with a payload or an RPC heartbeat. Only a
//! passing check keeps it; a kept connection the endpoint closed meanwhile
//! is retried once on a fresh one, so an idle close is not a failure.
//!
//! The checker sets only its own bits: `FAILED_ACTIVE_HC`,
//! `DEGRADED_ACTIVE_HC` (an HTTP `x-envoy-degraded` response header) and
//! `PENDING_ACTIVE_HC`.

use super::{Cluster, Endpoint};
use crate::codec::HealthCheckClient;
use crate::config::health_check::{
    CodecClientType, HealthCheckConfig, RpcHeartbeat, StatusRange, decode_hex,
};
use crate::error::BuildError;
use crate::metrics::names;
use crate::pool::{Health, HealthFlags};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use metrics::{Counter, counter, gauge};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Bytes of a response head (or TCP `receive` data) a check reads at most.
const MAX_READ: usize = 16 * 1024;

/// What a probe sends and expects.
enum Probe {
    Http {
        version: CodecClientType,
        method: http::Method,
        path: String,
        host: String,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        expected: Vec<StatusRange>,
        retriable: Vec<StatusRange>,
    },
    Grpc {
        authority: String,
        service: String,
    },
    Tcp {
        send: Vec<u8>,
        receive: Vec<Vec<u8>>,
    },
    /// `custom_health_check`: the Dubbo or Bolt heartbeat.
    Heartbeat(RpcHeartbeat),
}

/// One configured check.
struct Check {
    cfg: HealthCheckConfig,
    probe: Probe,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Healthy {
        degraded: bool,
    },
    /// No answer in `timeout`: counts toward `unhealthy_threshold`.
    Timeout,
    /// Connect refused, reset, malformed answer: counts toward the threshold.
    Network,
    /// A retriable status: counts toward the threshold.
    Retriable,
    /// The endpoint answered "not healthy" (an unexpected status,
    /// NOT_SERVING, a TCP payload mismatch): unhealthy at once.
    Status,
}

impl Verdict {
    fn kind(self) -> &'static str {
        match self {
            Verdict::Healthy { .. } => "none",
            Verdict::Timeout => "timeout",
            Verdict::Network => "network",
            Verdict::Retriable | Verdict::Status => "status",
        }
    }
}

/// Per-cluster counters, made once (checks run often).
struct Stats {
    attempt: Counter,
    success: Counter,
    timeout: Counter,
    network: Counter,
    status: Counter,
}

/// A cluster's active health checker.
pub struct HealthChecker {
    cluster: &'static str,
    checks: Vec<Arc<Check>>,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
    stats: Arc<Stats>,
    started: AtomicBool,
    /// Endpoints changed or an endpoint changed health: the supervisor
    /// reconciles its tasks and republishes the membership gauges.
    changed: Arc<tokio::sync::Notify>,
    /// Cancelled when the checker (its cluster) is dropped.
    stop: CancellationToken,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A (endpoint, check) task's view of the endpoint's active-check state,
/// shared by the endpoint's checks: one bit per check.
#[derive(Default)]
struct EndpointState {
    failed: AtomicU32,
    degraded: AtomicU32,
    pending: AtomicU32,
}

impl EndpointState {
    /// Writes the endpoint's active-check flags from the checks' bits.
    /// Writes nothing when they already match (the common case: a check
    /// that changed nothing), so the endpoint's flags stay a shared cache
    /// line for the workers that read them on every pick.
    fn publish(&self, e: &Endpoint) {
        let cell = e.health_flags();
        let want = |bits: &AtomicU32, flag: u8| {
            if bits.load(Ordering::Relaxed) != 0 {
                flag
            } else {
                0
            }
        };
        let mask = HealthFlags::FAILED_ACTIVE_HC
            | HealthFlags::DEGRADED_ACTIVE_HC
            | HealthFlags::PENDING_ACTIVE_HC;
        if cell.flags() & mask
            == want(&self.failed, HealthFlags::FAILED_ACTIVE_HC)
                | want(&self.degraded, HealthFlags::DEGRADED_ACTIVE_HC)
                | want(&self.pending, HealthFlags::PENDING_ACTIVE_HC)
        {
            return;
        }
        cell.put_flag(
            HealthFlags::FAILED_ACTIVE_HC,
            self.failed.load(Ordering::Relaxed) != 0,
        );
        cell.put_flag(
            HealthFlags::DEGRADED_ACTIVE_HC,
            self.degraded.load(Ordering::Relaxed) != 0,
        );
        cell.put_flag(
            HealthFlags::PENDING_ACTIVE_HC,
            self.pending.load(Ordering::Relaxed) != 0,
        );
    }
}

impl HealthChecker {
    /// Builds the checker of cluster `cluster` from its `health_checks`
    /// (`path` names them in errors); `None` when there are none.
    pub fn build(
        cluster: &'static str,
        configs: &[HealthCheckConfig],
        tls: Option<Arc<crate::tls::UpstreamTls>>,
        path: &str,
    ) -> Result<Option<Self>, BuildError> {
        if configs.is_empty() {
            return Ok(None);
        }
        if configs.len() > 32 {
            return Err(BuildError::new(path, "at most 32 health checks"));
        }
        let mut checks = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let p = format!("{path}[{i}]");
            c.validate(&p)?;
            let probe = if let Some(h) = &c.http_health_check {
                let method = match &h.method {
                    Some(m) => http::Method::from_bytes(m.as_bytes()).map_err(|_| {
                        BuildError::new(format!("{p}.http_health_check.method"), "invalid method")
                    })?,
                    None => http::Method::GET,
                };
                let mut headers = Vec::new();
                for (j, hv) in h.request_headers_to_add.iter().enumerate() {
                    let f = format!("{p}.http_health_check.request_headers_to_add[{j}].header");
                    headers.push((
                        http::HeaderName::from_bytes(hv.header.key.as_bytes()).map_err(|_| {
                            BuildError::new(format!("{f}.key"), "invalid header name")
                        })?,
                        http::HeaderValue::from_str(&hv.header.value).map_err(|_| {
                            BuildError::new(format!("{f}.value"), "invalid header value")
                        })?,
                    ));
                }
                Probe::Http {
                    version: h.codec_client_type,
                    method,
                    path: h.path.clone(),
                    host: if h.host.is_empty() {
                        cluster.to_string()
                    } else {
                        h.host.clone()
                    },
                    headers,
                    expected: if h.expected_statuses.is_empty() {
                        vec![StatusRange {
                            start: 200,
                            end: 201,
                        }]
                    } else {
                        h.expected_statuses.clone()
                    },
                    retriable: h.retriable_statuses.clone(),
                }
            } else if let Some(g) = &c.grpc_health_check {
                Probe::Grpc {
                    authority: if g.authority.is_empty() {
                        cluster.to_string()
                    } else {
                        g.authority.clone()
                    },
                    service: g.service_name.clone(),
                }
            } else if let Some(t) = &c.tcp_health_check {
                let tp = format!("{p}.tcp_health_check");
                Probe::Tcp {
                    send: match &t.send {
                        Some(s) => decode_hex(&s.text, &format!("{tp}.send.text"))?,
                        None => Vec::new(),
                    },
                    receive: t
                        .receive
                        .iter()
                        .enumerate()
                        .map(|(j, r)| decode_hex(&r.text, &format!("{tp}.receive[{j}].text")))
                        .collect::<Result<_, _>>()?,
                }
            } else if let Some(cu) = &c.custom_health_check {
                Probe::Heartbeat(cu.heartbeat(&format!("{p}.custom_health_check"))?)
            } else {
                return Err(BuildError::new(p, "no checker"));
            };
            checks.push(Arc::new(Check {
                cfg: c.clone(),
                probe,
            }));
        }
        let label = cluster.to_string();
        let stats = Stats {
            attempt: counter!(names::CLUSTER_HEALTH_CHECK_ATTEMPT_TOTAL, "cluster" => label.clone()),
            success: counter!(names::CLUSTER_HEALTH_CHECK_SUCCESS_TOTAL, "cluster" => label.clone()),
            timeout: counter!(names::CLUSTER_HEALTH_CHECK_FAILURE_TOTAL, "cluster" => label.clone(), "kind" => "timeout"),
            network: counter!(names::CLUSTER_HEALTH_CHECK_FAILURE_TOTAL, "cluster" => label.clone(), "kind" => "network"),
            status: counter!(names::CLUSTER_HEALTH_CHECK_FAILURE_TOTAL, "cluster" => label, "kind" => "status"),
        };
        Ok(Some(Self {
            cluster,
            checks,
            tls,
            stats: Arc::new(stats),
            started: AtomicBool::new(false),
            changed: Arc::new(tokio::sync::Notify::new()),
            stop: CancellationToken::new(),
        }))
    }

    /// The index of the first HTTP/3 check (`codec_client_type: HTTP3`),
    /// which only a codec with a health-check client (http3) can run.
    pub fn http3_check(&self) -> Option<usize> {
        self.checks.iter().position(|c| {
            matches!(
                c.probe,
                Probe::Http {
                    version: CodecClientType::HTTP3,
                    ..
                }
            )
        })
    }

    /// Marks endpoints new to the cluster as not checked yet (failed and
    /// pending), before the load balancer can see them, and wakes the
    /// supervisor to check them.
    pub fn endpoints_added<'a>(&self, new: impl Iterator<Item = &'a Arc<Endpoint>>) {
        for e in new {
            e.health_flags()
                .set_flag(HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC);
        }
        self.changed.notify_one();
    }

    /// Starts the supervisor task of `cluster` (whose checker this is) on
    /// the current runtime, once; later calls (the cluster reused by a
    /// reload) do nothing.
    pub fn start(&self, cluster: &Arc<Cluster>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        for c in &self.checks {
            tick_for(&c.cfg);
        }
        let weak = Arc::downgrade(cluster);
        let stop = self.stop.clone();
        let changed = self.changed.clone();
        let checks = self.checks.clone();
        let tls = self.tls.clone();
        let stats = self.stats.clone();
        let name = self.cluster;
        let task = supervise(Supervisor {
            name,
            cluster: weak,
            stop,
            changed,
            checks,
            tls,
            stats,
        });
        match checker_runtime() {
            Some(rt) => drop(rt.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// The runtime every cluster's checks run on: one thread of its own with
/// tokio's current-thread scheduler (Envoy runs its health checkers on its
/// main thread), started on first use; `None` if the thread cannot be
/// started (the checks then run on the workers).
///
/// The thread is driven by a tick (`CHECK_TICK`) instead of waking on
/// every event: it sleeps, then runs everything that became ready in the
/// meantime (answers, connects, expired timers) in one pass, and sleeps
/// again. With 1,000 endpoints each answer used to wake the thread on its
/// own (~1,000 wake-ups a second, a context switch and an `epoll_wait`
/// each); a tick gathers them into one `epoll_wait`, so the wake-ups per
/// second stay at `1 / CHECK_TICK` whatever the number of endpoints. The
/// price is up to one tick of added latency per step of a check, small
/// against check timeouts (seconds) and intervals. Figures: benches/RESULTS.md,
/// "Health checks driven by a tick".
fn checker_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("meshgate-hc".into())
            .spawn(move || drive_by_tick(&rt))
            .ok()?;
        Some(handle)
    })
    .as_ref()
}

/// How often the checker thread wakes to run what became ready: at most
/// `CHECK_TICK`, lowered by `tick_for` so that a check with a short
/// timeout or interval still runs on time.
const CHECK_TICK: Duration = Duration::from_millis(100);

/// The tick in force (nanoseconds): the smallest asked for by any started
/// checker.
static TICK_NS: AtomicU64 = AtomicU64::new(CHECK_TICK.as_nanos() as u64);

/// Lowers the tick for a check of this config. A check may take a few
/// steps (connect, TLS, request, answer), each up to one tick late, so the
/// tick is at most an eighth of the timeout; and at most a sixteenth of
/// the shortest interval, the slot `on_grid` gathers checks into (a check
/// due in a slot then runs at the slot's tick). At least 1 ms. With the
/// common 1 s interval and timeout that is 62.5 ms: 16 wake-ups a second,
/// whose sleep and driver polls were, at 25 ms, a seventh of the checker's
/// CPU with a thousand endpoints (benches/RESULTS.md, "Health-check CPU").
fn tick_for(cfg: &HealthCheckConfig) {
    let shortest = [
        cfg.no_traffic_interval,
        cfg.no_traffic_healthy_interval,
        cfg.unhealthy_interval,
        cfg.unhealthy_edge_interval,
        cfg.healthy_edge_interval,
    ]
    .into_iter()
    .flatten()
    .fold(cfg.interval, Duration::min);
    let want = (cfg.timeout / 8)
        .min(shortest / 16)
        .clamp(Duration::from_millis(1), CHECK_TICK);
    TICK_NS.fetch_min(want.as_nanos() as u64, Ordering::Relaxed);
}

/// The checker thread's loop (see `checker_runtime`). Each pass yields a
/// few times inside the runtime: a yield lets tokio poll its I/O and timer
/// driver without blocking and run the tasks that woke, so chains of
/// immediate steps (an answer read, the next write) finish in one pass.
fn drive_by_tick(rt: &tokio::runtime::Runtime) {
    let mut next = std::time::Instant::now();
    loop {
        rt.block_on(async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        });
        next += Duration::from_nanos(TICK_NS.load(Ordering::Relaxed));
        let now = std::time::Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            // Late (a long pass, a stalled machine): start again from now.
            None => next = now,
        }
    }
}

struct Supervisor {
    name: &'static str,
    cluster: Weak<Cluster>,
    stop: CancellationToken,
    changed: Arc<tokio::sync::Notify>,
    checks: Vec<Arc<Check>>,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
    stats: Arc<Stats>,
}

/// The per-cluster task: drives one check loop per (endpoint, check), and
/// the membership gauges, until the cluster is gone.
async fn supervise(s: Supervisor) {
    let mut tasks: HashMap<usize, (Arc<Endpoint>, Vec<AbortHandle>)> = HashMap::new();
    // The check loops; one ends only when aborted (its endpoint left).
    let mut running = FuturesUnordered::new();
    let stop = s.stop.cancelled();
    tokio::pin!(stop);
    let epoch = tokio::time::Instant::now();
    tracing::info!(cluster = %s.name, checks = s.checks.len(), "active health checking started");
    // The endpoint set the tasks were last reconciled with: a wake-up that
    // finds the same set (the gauges' 1 s tick, a health change) only
    // republishes the gauges, instead of hashing every endpoint again.
    let mut reconciled: Option<Arc<super::HostSet>> = None;
    'reconcile: loop {
        let Some(cluster) = s.cluster.upgrade() else {
            break;
        };
        let hosts = cluster.hosts();
        if reconciled.as_ref().is_some_and(|r| Arc::ptr_eq(r, &hosts)) {
            publish_membership(s.name, &hosts.endpoints);
            drop(hosts);
            drop(cluster);
            if wait(&s, &mut stop, &mut running).await {
                break 'reconcile;
            }
            continue 'reconcile;
        }
        reconciled = Some(Arc::clone(&hosts));
        let socket = cluster.socket.clone().map(Arc::new);
        let mut seen = std::collections::HashSet::with_capacity(hosts.endpoints.len());
        for e in &hosts.endpoints {
            let key = Arc::as_ptr(e) as usize;
            seen.insert(key);
            if tasks.contains_key(&key) {
                continue;
            }
            let state = Arc::new(EndpointState::default());
            let flags = e.health_flags().flags();
            let all = if s.checks.len() >= 32 {
                u32::MAX
            } else {
                (1u32 << s.checks.len()) - 1
            };
            if flags & HealthFlags::FAILED_ACTIVE_HC != 0 {
                state.failed.store(all, Ordering::Relaxed);
            }
            if flags & HealthFlags::PENDING_ACTIVE_HC != 0 {
                state.pending.store(all, Ordering::Relaxed);
            }
            let mut handles = Vec::with_capacity(s.checks.len());
            for (i, check) in s.checks.iter().enumerate() {
                let (handle, reg) = AbortHandle::new_pair();
                running.push(Abortable::new(
                    check_loop(CheckTask {
                        cluster: s.name,
                        bit: 1 << i,
                        endpoint: e.clone(),
                        state: state.clone(),
                        check: check.clone(),
                        // Envoy: a check uses its endpoint's transport
                        // socket (`transport_socket_matches`).
                        tls: if cluster.tls_matches.is_empty() {
                            s.tls.clone()
                        } else {
                            cluster.health_check_tls_for(e, s.tls.as_ref()).cloned()
                        },
                        socket: socket.clone(),
                        stats: s.stats.clone(),
                        changed: s.changed.clone(),
                        epoch,
                        client: match check.probe {
                            Probe::Http {
                                version: CodecClientType::HTTP3,
                                ..
                            } => cluster
                                .upstream
                                .as_ref()
                                .and_then(|u| u.health_check_client(&cluster, e)),
                            _ => None,
                        },
                    }),
                    reg,
                ));
                handles.push(handle);
            }
            tasks.insert(key, (e.clone(), handles));
        }
        // Endpoints that left: their loops end (dropped at their next poll).
        tasks.retain(|k, (_, handles)| {
            let keep = seen.contains(k);
            if !keep {
                handles.iter().for_each(AbortHandle::abort);
            }
            keep
        });
        publish_membership(s.name, &hosts.endpoints);
        drop(hosts);
        drop(cluster);
        if wait(&s, &mut stop, &mut running).await {
            break 'reconcile;
        }
    }
    tracing::info!(cluster = %s.name, "active health checking stopped");
}

/// Runs the check loops until the endpoints or their health change, or a
/// second passes (EDS and outlier changes move the gauges too); `true`
/// when the checker stops.
async fn wait<F: std::future::Future<Output = ()>>(
    s: &Supervisor,
    stop: &mut std::pin::Pin<&mut F>,
    running: &mut FuturesUnordered<Abortable<impl std::future::Future<Output = ()>>>,
) -> bool {
    let changed = s.changed.notified();
    let tick = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(changed, tick);
    loop {
        tokio::select! {
            _ = stop.as_mut() => return true,
            _ = &mut changed => return false,
            _ = &mut tick => return false,
            // Only aborted loops end; they are simply dropped.
            Some(_) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// Sets the cluster's membership gauges (`healthy`, `degraded`, `total`).
pub fn publish_membership(cluster: &str, endpoints: &[Arc<Endpoint>]) {
    let (mut healthy, mut degraded) = (0u32, 0u32);
    for e in endpoints {
        match e.health() {
            Health::Healthy => healthy += 1,
            Health::Degraded => degraded += 1,
            Health::Unhealthy => {}
        }
    }
    let c = cluster.to_string();
    gauge!(names::CLUSTER_MEMBERSHIP_HEALTHY, "cluster" => c.clone()).set(f64::from(healthy));
    gauge!(names::CLUSTER_MEMBERSHIP_DEGRADED, "cluster" => c.clone()).set(f64::from(degraded));
    gauge!(names::CLUSTER_MEMBERSHIP_TOTAL, "cluster" => c).set(endpoints.len() as f64);
}

struct CheckTask {
    cluster: &'static str,
    bit: u32,
    endpoint: Arc<Endpoint>,
    state: Arc<EndpointState>,
    check: Arc<Check>,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The cluster's socket settings, for the checks' connections.
    socket: Option<Arc<super::upstream_socket::UpstreamSocket>>,
    stats: Arc<Stats>,
    changed: Arc<tokio::sync::Notify>,
    /// The cluster's check grid origin (`on_grid`).
    epoch: tokio::time::Instant,
    /// The codec's client of an HTTP/3 check.
    client: Option<Box<dyn HealthCheckClient>>,
}

/// The largest delay `on_grid` adds to a check. 100 ms rather than a
/// timer tick or two: with a 1 s interval the slot is then 62.5 ms (16 a
/// second instead of 62 at 16 ms), so a thousand endpoints' checks and
/// their answers gather into a quarter of the runtime wake-ups
/// (`epoll_wait`, timer-wheel turns, context switches), which were most
/// of the checker's cost once a check itself allocated nothing.
const GRID_MAX: Duration = Duration::from_millis(100);

/// `at`, moved later onto the cluster's grid of slots (a sixteenth of the
/// `wait`, at most `GRID_MAX`): checks due in the same slot wake the
/// supervisor task once and run together, instead of one wake-up of the
/// runtime per check (with a thousand endpoints, a thousand a second).
/// A check is at most one slot late: under 7 % of its interval; checks
/// stay spread over the interval (16 slots).
fn on_grid(
    epoch: tokio::time::Instant,
    at: tokio::time::Instant,
    wait: Duration,
) -> tokio::time::Instant {
    let slot = (wait / 16).min(GRID_MAX).as_nanos();
    if slot < 1_000_000 {
        // Below the timer's 1 ms resolution: nothing to gather.
        return at;
    }
    let rem = at.saturating_duration_since(epoch).as_nanos() % slot;
    if rem == 0 {
        at
    } else {
        at + Duration::from_nanos((slot - rem) as u64)
    }
}

/// A random duration in `[0, max)`.
fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(
        0..max.as_nanos().min(u64::MAX as u128) as u64,
    ))
}

/// Consecutive results of one (endpoint, check), and what they decide.
#[derive(Debug, Default)]
pub(crate) struct Thresholds {
    pub successes: u32,
    pub failures: u32,
}

/// What one result does to an endpoint's state for one check: the new
/// `failed` value (`None`: unchanged).
pub(crate) fn transition(
    t: &mut Thresholds,
    failed: bool,
    first: bool,
    verdict: Verdict,
    cfg: &HealthCheckConfig,
) -> Option<bool> {
    match verdict {
        Verdict::Healthy { .. } => {
            t.failures = 0;
            t.successes = t.successes.saturating_add(1);
            // A pending endpoint is healthy on its first success (Envoy).
            (failed && (first || t.successes >= cfg.healthy_threshold)).then_some(false)
        }
        v => {
            t.successes = 0;
            t.failures = t.failures.saturating_add(1);
            (!failed && (v == Verdict::Status || t.failures >= cfg.unhealthy_threshold))
                .then_some(true)
        }
    }
}

/// The time to the next check (Envoy's `interval()` with jitter).
fn next_interval(cfg: &HealthCheckConfig, failed: bool, edge: bool, traffic: bool) -> Duration {
    let base = if !traffic && cfg.no_traffic_interval.is_some() {
        let nt = cfg.no_traffic_interval.unwrap_or(cfg.interval);
        if failed {
            nt
        } else {
            cfg.no_traffic_healthy_interval.unwrap_or(nt)
        }
    } else if failed {
        let u = cfg.unhealthy_interval.unwrap_or(cfg.interval);
        if edge {
            cfg.unhealthy_edge_interval.unwrap_or(u)
        } else {
            u
        }
    } else if edge {
        cfg.healthy_edge_interval.unwrap_or(cfg.interval)
    } else {
        cfg.interval
    };
    let mut d = base;
    if let Some(j) = cfg.interval_jitter {
        d += random_up_to(j);
    }
    if cfg.interval_jitter_percent > 0 {
        d += random_up_to(base * cfg.interval_jitter_percent.min(100) / 100);
    }
    d
}

async fn check_loop(mut t: CheckTask) {
    let cfg = &t.check.cfg;
    if let Some(j) = cfg.initial_jitter {
        tokio::time::sleep(random_up_to(j)).await;
    }
    let mut th = Thresholds::default();
    let mut first = true;
    let reuse = cfg.reuse_connection.unwrap_or(true);
    let mut kept: Option<Kept> = None;
    let mut bufs = Buffers {
        request: http1_request(&t.check.probe, &t.endpoint, reuse),
        read: Vec::new(),
        client: t.client.take(),
    };
    // One timer for the loop's life, reset for each check's timeout and
    // then for the next check, rather than a `tokio::time::timeout` and a
    // `sleep_until` per check: each of those is a timer entry made,
    // registered and dropped (the timer wheel's lock taken on each), a
    // tenth of a check's instructions with a thousand endpoints.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        t.stats.attempt.increment(1);
        // When this check was due (the timer's deadline).
        let due = timer.deadline();
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + cfg.timeout);
        let verdict = tokio::select! {
            biased;
            v = SOCKET.scope(
                t.socket.clone(),
                probe(
                    &t.check.probe,
                    &t.endpoint,
                    t.tls.as_deref(),
                    &mut kept,
                    reuse,
                    &mut bufs,
                ),
            ) => v,
            () = &mut timer => Verdict::Timeout,
        };
        match verdict {
            Verdict::Healthy { .. } => t.stats.success.increment(1),
            Verdict::Timeout => t.stats.timeout.increment(1),
            Verdict::Network => t.stats.network.increment(1),
            Verdict::Retriable | Verdict::Status => t.stats.status.increment(1),
        }
        let failed = t.state.failed.load(Ordering::Relaxed) & t.bit != 0;
        let change = transition(&mut th, failed, first, verdict, cfg);
        let mut notify = false;
        if let Some(now_failed) = change {
            if now_failed {
                t.state.failed.fetch_or(t.bit, Ordering::Relaxed);
                tracing::info!(cluster = %t.cluster, endpoint = %t.endpoint.address, kind = verdict.kind(), "health check: endpoint unhealthy");
            } else {
                t.state.failed.fetch_and(!t.bit, Ordering::Relaxed);
                t.endpoint.hc_passed();
                tracing::info!(cluster = %t.cluster, endpoint = %t.endpoint.address, "health check: endpoint healthy");
            }
            notify = true;
        } else if !matches!(verdict, Verdict::Healthy { .. })
            && (cfg.always_log_health_check_failures || first)
        {
            tracing::info!(cluster = %t.cluster, endpoint = %t.endpoint.address, kind = verdict.kind(), "health check failed");
        }
        if let Verdict::Healthy { degraded } = verdict {
            let was = t.state.degraded.load(Ordering::Relaxed) & t.bit != 0;
            if was != degraded {
                if degraded {
                    t.state.degraded.fetch_or(t.bit, Ordering::Relaxed);
                } else {
                    t.state.degraded.fetch_and(!t.bit, Ordering::Relaxed);
                }
                tracing::info!(cluster = %t.cluster, endpoint = %t.endpoint.address, degraded, "health check: endpoint degraded state changed");
                notify = true;
            }
        }
        if first {
            t.state.pending.fetch_and(!t.bit, Ordering::Relaxed);
            notify = true;
        }
        t.state.publish(&t.endpoint);
        // Envoy's `successful_active_health_check_uneject_host`: a pass
        // while no check fails returns an outlier-ejected endpoint.
        if matches!(verdict, Verdict::Healthy { .. })
            && t.state.failed.load(Ordering::Relaxed) == 0
            && let Some(m) = t.endpoint.outlier()
            && m.active_check_passed(&t.endpoint)
        {
            notify = true;
        }
        if notify {
            t.changed.notify_one();
        }
        let now_failed = t.state.failed.load(Ordering::Relaxed) & t.bit != 0;
        let traffic = {
            let c = t.endpoint.outcomes().counts();
            c.success + c.connect_failure + c.reset + c.timeout + c.server_error != 0
        };
        let mut wait = next_interval(cfg, now_failed, change.is_some(), traffic);
        if first {
            // Spread the endpoints' checks over the interval.
            wait = random_up_to(wait);
            first = false;
        }
        // As Envoy, the interval runs from the answer; but the checker's
        // tick may start a due check up to a tick late (the tick's phase
        // against the cluster's grid) and reads its answer a tick after
        // sending, so up to three ticks of lateness are taken off the
        // wait: they would otherwise stretch every interval (a thousand
        // endpoints every second got 860 checks a second, not 1,000).
        let now = tokio::time::Instant::now();
        let tick = Duration::from_nanos(TICK_NS.load(Ordering::Relaxed));
        let late = now.saturating_duration_since(due).min(3 * tick);
        let next = now + wait.saturating_sub(late);
        timer.as_mut().reset(on_grid(t.epoch, next, wait));
        (&mut timer).await;
    }
}

tokio::task_local! {
    /// The checked cluster's socket settings (`upstream_bind_config`,
    /// `upstream_connection_options`), set around each probe by
    /// `check_loop`: health-check connections open like the cluster's
    /// other upstream sockets (Envoy's). A task-local rather than one more
    /// parameter through every probe function down to `connect`.
    static SOCKET: Option<Arc<super::upstream_socket::UpstreamSocket>>;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects to the endpoint, over the cluster's TLS when it has one.
async fn connect(
    addr: SocketAddr,
    tls: Option<&crate::tls::UpstreamTls>,
    authority: Option<&str>,
) -> std::io::Result<Box<dyn Io>> {
    let tcp = match SOCKET.try_with(|s| s.clone()).ok().flatten() {
        Some(s) => s.connect(addr).await?,
        None => tokio::net::TcpStream::connect(addr).await?,
    };
    let _ = tcp.set_nodelay(true);
    Ok(match tls {
        Some(t) => Box::new(t.connect(tcp, authority, addr).await?),
        None => Box::new(tcp),
    })
}

/// A connection kept from one check to the next (`reuse_connection`).
enum Kept {
    Stream(Box<dyn Io>),
    H2(H2Conn),
}

/// An HTTP/2 client connection and the task driving it (aborted on drop).
struct H2Conn {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What a check loop keeps from one check to the next.
struct Buffers {
    /// The HTTP/1.1 check request (empty for other probes).
    request: Vec<u8>,
    /// A response head read.
    read: Vec<u8>,
    /// The codec's client of an HTTP/3 check (it keeps its connection).
    client: Option<Box<dyn HealthCheckClient>>,
}

/// The HTTP/1.1 request of an `http_health_check` with the HTTP1 codec, as
/// sent to `ep` (whose `health_check_config` may override the host);
/// empty for other probes.
fn http1_request(p: &Probe, ep: &Endpoint, reuse: bool) -> Vec<u8> {
    let Probe::Http {
        version: CodecClientType::HTTP1,
        method,
        path,
        host,
        headers,
        ..
    } = p
    else {
        return Vec::new();
    };
    let host = ep.health_check_hostname.as_deref().unwrap_or(host);
    let close = if reuse { "" } else { "connection: close\r\n" };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: meshgate-health-check\r\n{close}"
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_str().as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Runs one probe (the caller bounds it with the check's `timeout`),
/// on the connection `kept` from the last check when there is one; keeps
/// its connection there when `reuse` and the check passed. The kept
/// connection is taken out first, so a probe cut by the timeout drops it.
async fn probe(
    p: &Probe,
    ep: &Endpoint,
    tls: Option<&crate::tls::UpstreamTls>,
    kept: &mut Option<Kept>,
    reuse: bool,
    bufs: &mut Buffers,
) -> Verdict {
    let prev = if reuse { kept.take() } else { None };
    let was_kept = prev.is_some();
    let (mut v, mut k) = probe_once(p, ep, tls, prev, reuse, bufs).await;
    if was_kept && v == Verdict::Network {
        // The endpoint closed the idle connection: not its health.
        (v, k) = probe_once(p, ep, tls, None, reuse, bufs).await;
    }
    if reuse && matches!(v, Verdict::Healthy { .. }) {
        *kept = k;
    }
    v
}

/// Connects for a stream probe unless `prev` is one.
async fn stream(
    prev: Option<Kept>,
    addr: SocketAddr,
    tls: Option<&crate::tls::UpstreamTls>,
    authority: Option<&str>,
) -> Option<Box<dyn Io>> {
    match prev {
        Some(Kept::Stream(io)) => Some(io),
        _ => connect(addr, tls, authority).await.ok(),
    }
}

/// One probe; the connection it leaves usable for the next one.
async fn probe_once(
    p: &Probe,
    ep: &Endpoint,
    tls: Option<&crate::tls::UpstreamTls>,
    prev: Option<Kept>,
    reuse: bool,
    bufs: &mut Buffers,
) -> (Verdict, Option<Kept>) {
    // The endpoint's `health_check_config` overrides port and host.
    let addr = ep.health_check_address();
    let host_override = ep.health_check_hostname.as_deref();
    match p {
        Probe::Tcp { send, receive } => {
            // Connect-only: the connect is the check.
            let connect_only = send.is_empty() && receive.is_empty();
            let prev = if connect_only { None } else { prev };
            let Some(mut io) = stream(prev, addr, tls, None).await else {
                return (Verdict::Network, None);
            };
            let v = tcp_exchange(&mut io, send, receive).await;
            (v, (!connect_only).then_some(Kept::Stream(io)))
        }
        Probe::Http {
            version: CodecClientType::HTTP1,
            method,
            host,
            expected,
            retriable,
            ..
        } => {
            let host = host_override.unwrap_or(host);
            let Some(mut io) = stream(prev, addr, tls, Some(host)).await else {
                return (Verdict::Network, None);
            };
            if io.write_all(&bufs.request).await.is_err() {
                return (Verdict::Network, None);
            }
            // A response to HEAD has no body, whatever its length says.
            let bodyless = *method == http::Method::HEAD;
            let Some((status, degraded, reusable)) =
                read_http1_response(&mut io, reuse, bodyless, &mut bufs.read).await
            else {
                return (Verdict::Network, None);
            };
            let v = classify(status, degraded, expected, retriable);
            (v, reusable.then_some(Kept::Stream(io)))
        }
        Probe::Http {
            version: CodecClientType::HTTP2,
            method,
            path,
            host,
            headers,
            expected,
            retriable,
        } => {
            let host = host_override.unwrap_or(host);
            let mut b = http::Request::builder()
                .method(method.clone())
                .uri(format!("http://{host}{path}"))
                .header(http::header::USER_AGENT, "meshgate-health-check");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            let Ok(req) = b.body(http_body_util::Full::new(Bytes::new())) else {
                return (Verdict::Network, None);
            };
            let Some(mut conn) = h2_conn(prev, addr, tls, host).await else {
                return (Verdict::Network, None);
            };
            match h2_request(&mut conn, req).await {
                Some((head, _)) => (
                    classify(
                        head.status.as_u16(),
                        head.headers.contains_key("x-envoy-degraded"),
                        expected,
                        retriable,
                    ),
                    Some(Kept::H2(conn)),
                ),
                None => (Verdict::Network, None),
            }
        }
        Probe::Http {
            version: CodecClientType::HTTP3,
            method,
            path,
            host,
            headers,
            expected,
            retriable,
        } => {
            let host = host_override.unwrap_or(host);
            let mut b = http::Request::builder()
                .method(method.clone())
                .uri(format!("https://{host}{path}"))
                .header(http::header::USER_AGENT, "meshgate-health-check");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            let (Ok(req), Some(client)) = (b.body(()), bufs.client.as_mut()) else {
                return (Verdict::Network, None);
            };
            match client.check(req, reuse).await {
                Some(head) => (
                    classify(
                        head.status.as_u16(),
                        head.headers.contains_key("x-envoy-degraded"),
                        expected,
                        retriable,
                    ),
                    None,
                ),
                None => (Verdict::Network, None),
            }
        }
        Probe::Heartbeat(kind) => {
            let Some(mut io) = stream(prev, addr, tls, None).await else {
                return (Verdict::Network, None);
            };
            let v = rpc_heartbeat(&mut io, *kind).await;
            (v, Some(Kept::Stream(io)))
        }
        Probe::Grpc { authority, service } => {
            let authority = host_override.unwrap_or(authority);
            let Some(mut conn) = h2_conn(prev, addr, tls, authority).await else {
                return (Verdict::Network, None);
            };
            let v = grpc_check(&mut conn, authority, service).await;
            (v, Some(Kept::H2(conn)))
        }
    }
}

/// The kept HTTP/2 connection if it can take a request, else a new one.
async fn h2_conn(
    prev: Option<Kept>,
    addr: SocketAddr,
    tls: Option<&crate::tls::UpstreamTls>,
    authority: &str,
) -> Option<H2Conn> {
    if let Some(Kept::H2(mut c)) = prev
        && c.send.ready().await.is_ok()
    {
        return Some(c);
    }
    let io = connect(addr, tls, Some(authority)).await.ok()?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .ok()?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(H2Conn { send, driver })
}

fn classify(
    status: u16,
    degraded: bool,
    expected: &[StatusRange],
    retriable: &[StatusRange],
) -> Verdict {
    if expected.iter().any(|r| r.contains(status)) {
        Verdict::Healthy { degraded }
    } else if retriable.iter().any(|r| r.contains(status)) {
        Verdict::Retriable
    } else {
        Verdict::Status
    }
}

/// Sends `send`, then expects each `receive` block in order (Envoy's TCP
/// check); connect-only when both are empty.
async fn tcp_exchange(io: &mut Box<dyn Io>, send: &[u8], receive: &[Vec<u8>]) -> Verdict {
    if !send.is_empty() && io.write_all(send).await.is_err() {
        return Verdict::Network;
    }
    let want: Vec<u8> = receive.concat();
    if want.is_empty() {
        return Verdict::Healthy { degraded: false };
    }
    let mut got = Vec::with_capacity(want.len().min(MAX_READ));
    let mut buf = [0u8; 4096];
    while got.len() < want.len() {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return Verdict::Network,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let n = got.len().min(want.len());
        if got[..n] != want[..n] {
            return Verdict::Status;
        }
    }
    Verdict::Healthy { degraded: false }
}

/// The request id of the heartbeats (one per connection, so any id).
const HEARTBEAT_ID: u32 = 0x6d67_6863;

/// The heartbeat request of `kind`: Dubbo, a two-way event request whose
/// Hessian 2 body is null (`N`); Bolt v1, a HEARTBEAT command (code 0)
/// without class, header or content.
pub(crate) fn heartbeat_request(kind: RpcHeartbeat) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(22);
    match kind {
        RpcHeartbeat::Dubbo => {
            b.put_slice(&[0xda, 0xbb]);
            // request | two-way | event | hessian2
            b.put_u8(0x80 | 0x40 | 0x20 | 2);
            b.put_u8(0);
            b.put_u64(u64::from(HEARTBEAT_ID));
            b.put_u32(1);
            b.put_u8(b'N');
        }
        RpcHeartbeat::Bolt => {
            b.put_u8(1); // protocol v1
            b.put_u8(1); // request
            b.put_u16(0); // HEARTBEAT
            b.put_u8(1); // ver2
            b.put_u32(HEARTBEAT_ID);
            b.put_u8(1); // hessian2
            b.put_u32(1000); // timeout (ms)
            b.put_u16(0);
            b.put_u16(0);
            b.put_u32(0);
        }
    }
    b.to_vec()
}

/// Judges a heartbeat response header (16 bytes Dubbo, 20 bytes Bolt):
/// healthy on an OK heartbeat response to our id, `Status` on another
/// status, `Network` on anything that is not a heartbeat response.
pub(crate) fn heartbeat_verdict(kind: RpcHeartbeat, h: &[u8]) -> Verdict {
    let id_ok;
    let ok;
    match kind {
        RpcHeartbeat::Dubbo => {
            let (Some(magic), Some(&flag), Some(&status), Some(id)) =
                (h.get(0..2), h.get(2), h.get(3), h.get(4..12))
            else {
                return Verdict::Network;
            };
            // A response (no request bit) that is an event.
            if magic != [0xda, 0xbb] || flag & 0x80 != 0 || flag & 0x20 == 0 {
                return Verdict::Network;
            }
            id_ok = id == u64::from(HEARTBEAT_ID).to_be_bytes();
            ok = status == 20;
        }
        RpcHeartbeat::Bolt => {
            let (Some(&proto), Some(&ty), Some(cmd), Some(id), Some(status)) =
                (h.first(), h.get(1), h.get(2..4), h.get(5..9), h.get(10..12))
            else {
                return Verdict::Network;
            };
            if proto != 1 || ty != 0 || cmd != [0, 0] {
                return Verdict::Network;
            }
            id_ok = id == HEARTBEAT_ID.to_be_bytes();
            ok = status == [0, 0];
        }
    }
    match (id_ok, ok) {
        (false, _) => Verdict::Network,
        (true, true) => Verdict::Healthy { degraded: false },
        (true, false) => Verdict::Status,
    }
}

/// Sends the heartbeat and reads the response header.
async fn rpc_heartbeat(io: &mut Box<dyn Io>, kind: RpcHeartbeat) -> Verdict {
    if io.write_all(&heartbeat_request(kind)).await.is_err() {
        return Verdict::Network;
    }
    let mut head = [0u8; 20];
    let len = match kind {
        RpcHeartbeat::Dubbo => 16,
        RpcHeartbeat::Bolt => 20,
    };
    let Some(buf) = head.get_mut(..len) else {
        return Verdict::Network;
    };
    if io.read_exact(buf).await.is_err() {
        return Verdict::Network;
    }
    heartbeat_verdict(kind, buf)
}

/// Reads an HTTP/1.x response: its status, whether it carries
/// `x-envoy-degraded`, and (`keep`) whether the connection can carry the
/// next check: the body is then read off by its `content-length` (up to
/// `MAX_READ`). A chunked, close-delimited or oversized body, or
/// `connection: close`, ends the connection. `None` for a malformed or
/// oversized head.
async fn read_http1_response(
    io: &mut Box<dyn Io>,
    keep: bool,
    bodyless: bool,
    head: &mut Vec<u8>,
) -> Option<(u16, bool, bool)> {
    head.clear();
    let mut scanned = 0;
    let (end, rest) = loop {
        // Read straight into the kept buffer's spare room (no zeroed
        // scratch array and copy per check).
        head.reserve(2048);
        let n = io.read_buf(head).await.ok()?;
        if n == 0 {
            return None;
        }
        // Only the new bytes (and 3 before them) can complete the blank line.
        if let Some(at) = head[scanned..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = scanned + at;
            break (end, head.len() - end - 4);
        }
        scanned = head.len().saturating_sub(3);
        if head.len() > MAX_READ {
            return None;
        }
    };
    let Http1Head {
        status,
        degraded,
        body,
    } = parse_http1_head(&head[..end])?;
    if !keep {
        return Some((status, degraded, false));
    }
    let body = match body {
        Some(_) if bodyless => 0,
        Some(n) if n <= MAX_READ => n,
        _ => return Some((status, degraded, false)),
    };
    // The body (usually none) is read into the same kept buffer: no
    // zeroed scratch array per check.
    let mut have = rest;
    while have < body {
        head.clear();
        head.reserve(body - have);
        let n = io.read_buf(head).await.ok()?;
        if n == 0 {
            return Some((status, degraded, false));
        }
        have += n;
    }
    // More than the body: not a response this client can frame.
    Some((status, degraded, have == body))
}

/// What a health check needs of an HTTP/1.x response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Http1Head {
    pub status: u16,
    /// It carries `x-envoy-degraded`.
    pub degraded: bool,
    /// The body length when the connection survives the response: `None`
    /// when it is chunked, close-delimited, says `connection: close`, or
    /// has a malformed header line.
    pub body: Option<usize>,
}

/// Parses `HTTP/1.x NNN ...` and its header lines (the head without its
/// final blank line) in one pass over the bytes. Hand-written rather than
/// httparse: the check needs four header names out of a head it already
/// framed, and a check parses a head every interval for every endpoint
/// (a thousand a second), where the string-based parse it replaces was a
/// tenth of a check's instructions (benches/RESULTS.md, "Health-check
/// CPU").
pub(crate) fn parse_http1_head(head: &[u8]) -> Option<Http1Head> {
    let mut lines = head.split(|b| *b == b'\n');
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix(b"HTTP/1.")?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    let code = rest.get(2..5)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..600).contains(&status) {
        return None;
    }
    let (mut degraded, mut len, mut survives) = (false, None, true);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            survives = false;
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        // Lengths first: most names are rejected without a comparison.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                len = parse_decimal(value);
                survives &= len.is_some();
            }
            16 if name.eq_ignore_ascii_case(b"x-envoy-degraded") => degraded = true,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => survives = false,
            10 if name.eq_ignore_ascii_case(b"connection")
                && value.eq_ignore_ascii_case(b"close") =>
            {
                survives = false
            }
            _ => {}
        }
    }
    let body = if !survives {
        None
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Some(0)
    } else {
        len
    };
    Some(Http1Head {
        status,
        degraded,
        body,
    })
}

/// A `content-length` value: ASCII digits only, no overflow.
fn parse_decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0usize, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
            .flatten()
    })
}

/// One HTTP/2 request on `conn`; the response head and up to
/// `MAX_READ` bytes of body with its trailers.
async fn h2_request(
    conn: &mut H2Conn,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Option<(http::response::Parts, (Bytes, Option<http::HeaderMap>))> {
    use http_body_util::BodyExt;
    let send = &mut conn.send;
    async {
        let resp = send.send_request(req).await.ok()?;
        let (head, mut body) = resp.into_parts();
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if let Some(t) = frame.trailers_ref() {
                trailers = Some(t.clone());
            } else if let Ok(d) = frame.into_data() {
                if data.len() + d.len() > MAX_READ {
                    return None;
                }
                data.put(d);
            }
        }
        Some((head, (data.freeze(), trailers)))
    }
    .await
}

/// `grpc.health.v1.Health/Check`: SERVING (1) is healthy; any other
/// status or a gRPC error fails the endpoint at once.
async fn grpc_check(conn: &mut H2Conn, authority: &str, service: &str) -> Verdict {
    // HealthCheckRequest { string service = 1; }
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put(msg);
    let Ok(req) = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "meshgate-health-check")
        .body(http_body_util::Full::new(framed.freeze()))
    else {
        return Verdict::Network;
    };
    use http_body_util::BodyExt;
    let send = &mut conn.send;
    let result = async {
        let resp = send.send_request(req).await.ok()?;
        if resp.status() != http::StatusCode::OK {
            return Some(Verdict::Status);
        }
        let (head, mut body) = resp.into_parts();
        let mut data = BytesMut::new();
        let mut grpc_status = head
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok().map(str::to_string));
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if let Some(t) = frame.trailers_ref() {
                if let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                    grpc_status = Some(s.to_string());
                }
            } else if let Ok(d) = frame.into_data() {
                if data.len() + d.len() > MAX_READ {
                    return None;
                }
                data.put(d);
            }
        }
        if grpc_status.as_deref() != Some("0") {
            return Some(Verdict::Status);
        }
        Some(match parse_health_response(&data)? {
            1 => Verdict::Healthy { degraded: false },
            _ => Verdict::Status,
        })
    }
    .await;
    result.unwrap_or(Verdict::Network)
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a framed `HealthCheckResponse` (0 when absent:
/// UNKNOWN); `None` when malformed.
pub(crate) fn parse_health_response(data: &[u8]) -> Option<u64> {
    let mut b = data;
    if b.len() < 5 || b[0] != 0 {
        return None;
    }
    b.advance(1);
    let len = b.get_u32() as usize;
    if b.len() < len {
        return None;
    }
    let mut m = &b[..len];
    let mut status = 0;
    while m.has_remaining() {
        let tag = get_varint(&mut m)?;
        match tag & 7 {
            0 => {
                let v = get_varint(&mut m)?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let l = get_varint(&mut m)? as usize;
                if m.len() < l {
                    return None;
                }
                m.advance(l);
            }
            5 if m.len() >= 4 => m.advance(4),
            1 if m.len() >= 8 => m.advance(8),
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_gather_on_a_grid_never_early_and_at_most_one_slot_late() {
        let epoch = tokio::time::Instant::now();
        for wait in [Duration::from_secs(1), Duration::from_secs(5)] {
            let slot = (wait / 16).min(GRID_MAX);
            for ms in [0u64, 1, 15, 16, 17, 62, 63, 999, 1000, 1234] {
                let at = epoch + Duration::from_millis(ms) + Duration::from_micros(300);
                let g = on_grid(epoch, at, wait);
                assert!(g >= at && g - at < slot, "{ms}");
                assert_eq!((g - epoch).as_nanos() % slot.as_nanos(), 0, "{ms}");
            }
        }
        // A short interval gets a proportionally small slot.
        let at = epoch + Duration::from_millis(101);
        let g = on_grid(epoch, at, Duration::from_millis(80));
        assert_eq!(g - epoch, Duration::from_millis(105));
        // Below the timer's resolution, nothing moves.
        let at = epoch + Duration::from_micros(1500);
        assert_eq!(on_grid(epoch, at, Duration::from_millis(10)), at);
    }

    /// A response head split at every place, the blank line included,
    /// read into one kept buffer after another response.
    #[tokio::test]
    async fn http1_head_split_anywhere_into_a_kept_buffer() {
        let resp: &[u8] = b"HTTP/1.1 200 OK\r\nx-envoy-degraded: 1\r\ncontent-length: 3\r\n\r\nabc";
        let mut buf = b"stale bytes of an earlier head\r\n\r\n".to_vec();
        for cut in 1..resp.len() {
            let (client, mut server) = tokio::io::duplex(4096);
            let mut io: Box<dyn Io> = Box::new(client);
            let (a, b) = resp.split_at(cut);
            let (a, b) = (a.to_vec(), b.to_vec());
            let writer = tokio::spawn(async move {
                server.write_all(&a).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
                server.write_all(&b).await.unwrap();
                server
            });
            let got = read_http1_response(&mut io, true, false, &mut buf).await;
            assert_eq!(got, Some((200, true, true)), "cut at {cut}");
            drop(writer.await.unwrap());
        }
        // A body longer than content-length: not reusable.
        let (client, mut server) = tokio::io::duplex(4096);
        let mut io: Box<dyn Io> = Box::new(client);
        server
            .write_all(b"HTTP/1.1 503 No\r\ncontent-length: 1\r\n\r\nxy")
            .await
            .unwrap();
        let got = read_http1_response(&mut io, true, false, &mut buf).await;
        assert_eq!(got, Some((503, false, false)));
    }

    #[test]
    fn http1_request_is_built_once_with_the_endpoint_host() {
        let p = Probe::Http {
            version: CodecClientType::HTTP1,
            method: http::Method::HEAD,
            path: "/healthz".into(),
            host: "svc".into(),
            headers: vec![(
                http::HeaderName::from_static("x-a"),
                http::HeaderValue::from_static("b"),
            )],
            expected: vec![],
            retriable: vec![],
        };
        let mut ep = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        assert_eq!(
            http1_request(&p, &ep, true),
            b"HEAD /healthz HTTP/1.1\r\nhost: svc\r\nuser-agent: meshgate-health-check\r\nx-a: b\r\n\r\n"
        );
        ep.health_check_hostname = Some("other".into());
        let r = String::from_utf8(http1_request(&p, &ep, false)).unwrap();
        assert!(r.contains("host: other\r\n") && r.contains("connection: close\r\n"));
        let tcp = Probe::Tcp {
            send: vec![],
            receive: vec![],
        };
        assert!(http1_request(&tcp, &ep, true).is_empty());
    }

    fn cfg(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
        serde_yaml::from_str(&format!(
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: {unhealthy}\nhealthy_threshold: {healthy}\ntcp_health_check: {{}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let c = cfg(2, 3);
        let mut t = Thresholds::default();
        let ok = Verdict::Healthy { degraded: false };
        // A pending endpoint is healthy after its first success.
        assert_eq!(transition(&mut t, true, true, ok, &c), Some(false));
        // One network failure is not enough; two in a row are.
        assert_eq!(transition(&mut t, false, false, Verdict::Network, &c), None);
        assert_eq!(transition(&mut t, false, false, ok, &c), None);
        assert_eq!(transition(&mut t, false, false, Verdict::Timeout, &c), None);
        assert_eq!(
            transition(&mut t, false, false, Verdict::Retriable, &c),
            Some(true)
        );
        // Back: three successes in a row.
        assert_eq!(transition(&mut t, true, false, ok, &c), None);
        assert_eq!(transition(&mut t, true, false, ok, &c), None);
        assert_eq!(transition(&mut t, true, false, ok, &c), Some(false));
        // An unexpected status fails at once.
        assert_eq!(
            transition(&mut t, false, false, Verdict::Status, &c),
            Some(true)
        );
    }

    #[test]
    fn intervals_follow_state() {
        let mut c = cfg(1, 1);
        c.unhealthy_interval = Some(Duration::from_secs(5));
        c.unhealthy_edge_interval = Some(Duration::from_secs(7));
        c.healthy_edge_interval = Some(Duration::from_secs(3));
        c.no_traffic_interval = Some(Duration::from_secs(60));
        assert_eq!(
            next_interval(&c, false, false, true),
            Duration::from_secs(1)
        );
        assert_eq!(next_interval(&c, false, true, true), Duration::from_secs(3));
        assert_eq!(next_interval(&c, true, false, true), Duration::from_secs(5));
        assert_eq!(next_interval(&c, true, true, true), Duration::from_secs(7));
        assert_eq!(
            next_interval(&c, false, false, false),
            Duration::from_secs(60)
        );
        c.interval_jitter_percent = 50;
        let d = next_interval(&c, false, false, true);
        assert!(d >= Duration::from_secs(1) && d < Duration::from_millis(1500));
    }

    #[test]
    fn heartbeats() {
        use RpcHeartbeat::*;
        let d = heartbeat_request(Dubbo);
        assert_eq!(d.len(), 17);
        assert_eq!(&d[..4], &[0xda, 0xbb, 0xe2, 0]);
        assert_eq!(&d[12..], &[0, 0, 0, 1, b'N']);
        let b = heartbeat_request(Bolt);
        assert_eq!(b.len(), 22);
        assert_eq!(&b[..5], &[1, 1, 0, 0, 1]);
        // A Dubbo heartbeat response: event, status OK, our id.
        let mut r = vec![0xda, 0xbb, 0x22, 20];
        r.extend_from_slice(&u64::from(HEARTBEAT_ID).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(
            heartbeat_verdict(Dubbo, &r),
            Verdict::Healthy { degraded: false }
        );
        r[3] = 80;
        assert_eq!(heartbeat_verdict(Dubbo, &r), Verdict::Status);
        r[3] = 20;
        r[2] = 0x02; // not an event
        assert_eq!(heartbeat_verdict(Dubbo, &r), Verdict::Network);
        r[2] = 0x22;
        r[11] ^= 1; // another id
        assert_eq!(heartbeat_verdict(Dubbo, &r), Verdict::Network);
        assert_eq!(heartbeat_verdict(Dubbo, &r[..5]), Verdict::Network);
        // Bolt.
        let mut r = vec![1, 0, 0, 0, 1];
        r.extend_from_slice(&HEARTBEAT_ID.to_be_bytes());
        r.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.len(), 20);
        assert_eq!(
            heartbeat_verdict(Bolt, &r),
            Verdict::Healthy { degraded: false }
        );
        r[11] = 2;
        assert_eq!(heartbeat_verdict(Bolt, &r), Verdict::Status);
        r[11] = 0;
        r[3] = 2; // a plain response, not a heartbeat
        assert_eq!(heartbeat_verdict(Bolt, &r), Verdict::Network);
    }

    #[test]
    fn http1_framing_decides_reuse() {
        let len = |h: &str| parse_http1_head(h.as_bytes()).map(|h| h.body);
        assert_eq!(len("HTTP/1.1 200 OK\r\ncontent-length: 2"), Some(Some(2)));
        assert_eq!(len("HTTP/1.1 204 No Content"), Some(Some(0)));
        assert_eq!(
            len("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked"),
            Some(None)
        );
        assert_eq!(
            len("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close"),
            Some(None)
        );
        assert_eq!(len("HTTP/1.1 200 OK"), Some(None), "close-delimited");
        assert_eq!(len("HTTP/1.1 200 OK\r\ncontent-length: x"), Some(None));
        assert_eq!(len("HTTP/1.1 200 OK\r\ncontent-length: +2"), Some(None));
        assert_eq!(
            len("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999"),
            Some(None)
        );
        assert_eq!(
            len("HTTP/1.1 200 OK\r\nno colon\r\ncontent-length: 2"),
            Some(None)
        );
        assert_eq!(
            len("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0"),
            Some(Some(0))
        );
    }

    #[test]
    fn http1_heads() {
        let head = |h: &[u8]| parse_http1_head(h).map(|h| (h.status, h.degraded));
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nx-envoy-degraded: 1"),
            Some((200, true))
        );
        assert_eq!(head(b"HTTP/1.0 503 No"), Some((503, false)));
        assert_eq!(head(b"HTTP/1.1 20"), None);
        assert_eq!(head(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(head(b"SSH-2.0"), None);
        assert_eq!(head(b"HTTP/1.1 999 x"), None);
        let e = [StatusRange {
            start: 200,
            end: 300,
        }];
        let r = [StatusRange {
            start: 503,
            end: 504,
        }];
        assert_eq!(
            classify(204, false, &e, &r),
            Verdict::Healthy { degraded: false }
        );
        assert_eq!(classify(503, false, &e, &r), Verdict::Retriable);
        assert_eq!(classify(500, false, &e, &r), Verdict::Status);
    }

    #[test]
    fn grpc_health_responses() {
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 9, 0x08]), None);
        assert_eq!(parse_health_response(&[1, 0, 0, 0, 0]), None);
    }

    #[test]
    fn new_endpoints_start_pending_and_choose_prefers_healthy_then_degraded() {
        use crate::config::{ClusterConfig, ConfigSource};
        use crate::lb::LbContext;
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "c",
            "endpoints": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}, {"address": "127.0.0.1:3"}],
            "health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                               "healthy_threshold": 1, "tcp_health_check": {}}],
            // Panic mode off, so that the choice follows health alone.
            "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        }))
        .unwrap();
        let reg = crate::registry::Registry::new();
        let src = ConfigSource::anonymous("test");
        let m =
            super::super::ClusterManager::build(&imbl::vector![Arc::new(cfg)], &reg, &src, false)
                .unwrap();
        let c = m.get("c").unwrap().clone();
        let eps = c.hosts().endpoints.clone();
        for e in &eps {
            assert_eq!(
                HealthFlags::names(e.health_flags().flags()),
                vec!["failed_active_hc", "pending_active_hc"]
            );
            e.health_flags()
                .clear_flag(HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC);
        }
        eps[0]
            .health_flags()
            .set_flag(HealthFlags::DEGRADED_ACTIVE_HC);
        eps[1]
            .health_flags()
            .set_flag(HealthFlags::FAILED_ACTIVE_HC);
        let ctx = LbContext::default();
        let picks = |n| {
            (0..n)
                .map(|_| c.choose(&ctx, &[]).unwrap().address.port())
                .collect::<std::collections::BTreeSet<_>>()
        };
        // One healthy endpoint of three is short of the priority's load
        // (1.4 x 33 % < 100 %): Envoy gives the rest to the degraded one,
        // never to the failed one.
        assert_eq!(picks(10), [1, 3].into());
        // No healthy one left: the degraded one, not the failed one.
        eps[2]
            .health_flags()
            .set_flag(HealthFlags::FAILED_ACTIVE_HC);
        assert_eq!(picks(10), [1].into());
        // None available and panic mode off: none.
        eps[0]
            .health_flags()
            .set_flag(HealthFlags::FAILED_ACTIVE_HC);
        assert!(c.choose(&ctx, &[]).is_none());
        // An update: kept endpoints keep their state, a new one is pending.
        let new = Arc::new(Endpoint::new("127.0.0.1:4".parse().unwrap(), 1));
        c.update_endpoints(vec![eps[0].clone(), new.clone()]);
        assert_eq!(
            HealthFlags::names(new.health_flags().flags()),
            vec!["failed_active_hc", "pending_active_hc"]
        );
        assert_eq!(
            HealthFlags::names(eps[0].health_flags().flags()),
            vec!["failed_active_hc", "degraded_active_hc"]
        );
    }
}
