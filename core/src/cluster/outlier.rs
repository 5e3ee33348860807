//! Outlier detection (Envoy's `OutlierDetection`): passive health from the
//! results of real requests. One `Detector` per cluster with detection on;
//! each of its endpoints holds a `Monitor` (`Endpoint::report` feeds it a
//! few relaxed atomics per request). The consecutive detectors (5xx,
//! gateway failure, local-origin failure) eject inline when a streak hits
//! its threshold; the success-rate and failure-percentage detectors and
//! un-ejection run on the cluster's `interval` timer (`run`). An ejection
//! sets only `HealthFlags::FAILED_OUTLIER_CHECK`.

use super::{Cluster, Endpoint, now_ms};
use crate::config::outlier::OutlierDetectionConfig;
use crate::metrics::names;
use crate::pool::HealthFlags;
#[cfg(test)]
use crate::pool::Outcome;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Why an endpoint was found an outlier (the `detector` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "consecutive_5xx",
            Kind::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Kind::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Kind::SuccessRate => "success_rate",
            Kind::SuccessRateLocalOrigin => "success_rate_local_origin",
            Kind::FailurePercentage => "failure_percentage",
            Kind::FailurePercentageLocalOrigin => "failure_percentage_local_origin",
        }
    }
}

/// A cluster's outlier detector: its config and the ejection count that
/// `max_ejection_percent` bounds.
pub struct Detector {
    cluster: &'static str,
    cfg: OutlierDetectionConfig,
    /// Endpoints in the cluster (Envoy's host count for the percentage).
    hosts: AtomicUsize,
    /// Endpoints ejected now; changed under `decide`.
    ejected: AtomicUsize,
    /// Serialises ejection decisions (rare: never on a request that does
    /// not end a streak).
    decide: Mutex<()>,
    active_gauge: metrics::Gauge,
    /// The last interval's success-rate mean and ejection threshold
    /// (`f64` bits; -1 when not computed), for `/clusters`.
    sr_average: AtomicU64,
    sr_threshold: AtomicU64,
}

/// The outlier state of one endpoint.
pub struct Monitor {
    detector: Arc<Detector>,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// This interval's counts, taken (zeroed) by the timer.
    ext_ok: AtomicU32,
    ext_fail: AtomicU32,
    local_ok: AtomicU32,
    local_fail: AtomicU32,
    state: Mutex<EjectionState>,
    /// The last interval's success rate in % (`f64` bits; -1 when the
    /// endpoint had too few requests or the cluster too few rated hosts).
    success_rate: AtomicU64,
}

/// An endpoint's ejection history, as `/clusters` and the timer read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EjectionState {
    /// `now_ms()` of the current ejection, if ejected.
    pub ejected_at_ms: Option<u64>,
    /// How long the current ejection lasts.
    pub ejection_ms: u64,
    /// The ejection-time multiplier: grows by one per ejection, shrinks by
    /// one per ejection time the endpoint then stays in.
    pub multiplier: u32,
    /// When it last came back (or the multiplier last shrank).
    pub last_return_ms: Option<u64>,
    /// Ejections since it joined.
    pub times_ejected: u64,
    /// The detector of the current (or last) ejection.
    pub last_kind: Option<&'static str>,
}

/// -1.0 as `f64` bits: a success rate not computed.
const NOT_COMPUTED: u64 = 0xBFF0_0000_0000_0000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a streak counter one step; true exactly when it reaches `limit`.
fn bump(c: &AtomicU32, limit: u32) -> bool {
    c.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == limit
}

/// Zeroes a counter, writing only if it is not zero already (the common
/// success path then only reads).
fn reset(c: &AtomicU32) {
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

impl Detector {
    pub fn new(cluster: &'static str, cfg: OutlierDetectionConfig) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            cfg,
            hosts: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            decide: Mutex::new(()),
            active_gauge: metrics::gauge!(names::CLUSTER_OUTLIER_DETECTION_EJECTIONS_ACTIVE, "cluster" => cluster),
            sr_average: AtomicU64::new(NOT_COMPUTED),
            sr_threshold: AtomicU64::new(NOT_COMPUTED),
        })
    }

    pub fn config(&self) -> &OutlierDetectionConfig {
        &self.cfg
    }

    /// Endpoints ejected now.
    pub fn ejections_active(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The last interval's (external-origin) success-rate mean and
    /// ejection threshold in %, -1 when not computed (Envoy's
    /// `outlier::success_rate_average` / `_ejection_threshold`).
    pub fn success_rate_stats(&self) -> (f64, f64) {
        (
            f64::from_bits(self.sr_average.load(Ordering::Relaxed)),
            f64::from_bits(self.sr_threshold.load(Ordering::Relaxed)),
        )
    }

    /// Gives each endpoint without one a monitor of this detector and
    /// counts the cluster's endpoints. An endpoint that stays across an
    /// endpoint update keeps its monitor; one that left and was ejected
    /// no longer counts as ejected.
    pub(super) fn attach(self: &Arc<Self>, endpoints: &[Arc<Endpoint>], left: &[Arc<Endpoint>]) {
        let _g = lock(&self.decide);
        for e in endpoints {
            let _ = e.outlier.get_or_init(|| {
                Box::new(Monitor {
                    detector: self.clone(),
                    consecutive_5xx: AtomicU32::new(0),
                    consecutive_gateway: AtomicU32::new(0),
                    consecutive_local: AtomicU32::new(0),
                    ext_ok: AtomicU32::new(0),
                    ext_fail: AtomicU32::new(0),
                    local_ok: AtomicU32::new(0),
                    local_fail: AtomicU32::new(0),
                    state: Mutex::new(EjectionState::default()),
                    success_rate: AtomicU64::new(NOT_COMPUTED),
                })
            });
        }
        for e in left {
            if let Some(m) = e.outlier.get()
                && lock(&m.state).ejected_at_ms.take().is_some()
            {
                self.ejected.fetch_sub(1, Ordering::Relaxed);
                self.active_gauge.decrement(1.0);
            }
        }
        self.hosts.store(endpoints.len(), Ordering::Relaxed);
    }

    /// Whether an outlier of `kind` is ejected: the enforcing percentage's
    /// roll, then `max_ejection_percent`. Counted either way.
    fn eject(&self, ep: &Endpoint, m: &Monitor, kind: Kind, enforcing: u32) {
        let _g = lock(&self.decide);
        let mut st = lock(&m.state);
        if st.ejected_at_ms.is_some() {
            return;
        }
        let rolled = enforcing >= 100 || (enforcing > 0 && rand::random::<u32>() % 100 < enforcing);
        let active = self.ejected.load(Ordering::Relaxed);
        let hosts = self.hosts.load(Ordering::Relaxed).max(1);
        let pct_ok = 100 * (active + 1) <= self.cfg.max_ejection_percent as usize * hosts
            || (self.cfg.always_eject_one_host && active == 0);
        let enforced = rolled && pct_ok;
        metrics::counter!(names::CLUSTER_OUTLIER_DETECTION_EJECTIONS_TOTAL,
            "cluster" => self.cluster, "detector" => kind.name(),
            "enforced" => if enforced { "true" } else { "false" })
        .increment(1);
        if !enforced {
            tracing::info!(cluster = self.cluster, endpoint = %ep.address, detector = kind.name(),
                reason = if rolled { "max_ejection_percent" } else { "not enforcing" },
                "outlier detected, not ejected");
            return;
        }
        let base = self.cfg.base_ejection_time.as_millis() as u64;
        let max = (self.cfg.max_ejection_time.as_millis() as u64).max(base);
        // The multiplier stops growing once it reaches the cap.
        if base.saturating_mul(st.multiplier as u64) < max {
            st.multiplier += 1;
        }
        let jitter = self.cfg.max_ejection_time_jitter.as_millis() as u64;
        let jitter = if jitter > 0 {
            rand::random::<u64>() % (jitter + 1)
        } else {
            0
        };
        st.ejection_ms = base
            .saturating_mul(st.multiplier as u64)
            .min(max)
            .saturating_add(jitter);
        st.ejected_at_ms = Some(now_ms());
        st.times_ejected += 1;
        st.last_kind = Some(kind.name());
        ep.health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        self.ejected.fetch_add(1, Ordering::Relaxed);
        self.active_gauge.increment(1.0);
        tracing::warn!(cluster = self.cluster, endpoint = %ep.address, detector = kind.name(),
            ejection_ms = st.ejection_ms, times_ejected = st.times_ejected, "outlier ejected");
    }

    /// One interval: returns endpoints whose ejection time is over, then
    /// runs the success-rate and failure-percentage detectors over this
    /// interval's counts.
    pub fn tick(&self, endpoints: &[Arc<Endpoint>]) {
        self.tick_at(endpoints, now_ms());
    }

    /// `tick` at `now` (`now_ms()` time).
    fn tick_at(&self, endpoints: &[Arc<Endpoint>], now: u64) {
        let mut samples = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let Some(m) = e.outlier.get().map(|m| &**m) else {
                continue;
            };
            let take = |c: &AtomicU32| c.swap(0, Ordering::Relaxed) as u64;
            let ext = (take(&m.ext_ok), take(&m.ext_fail));
            let local = (take(&m.local_ok), take(&m.local_fail));
            self.maybe_return(e, m, now);
            samples.push((e, m, ext, local));
        }
        let cfg = &self.cfg;
        // External origin (everything, unless split).
        let ext: Vec<_> = samples.iter().map(|(e, m, x, _)| (*e, *m, *x)).collect();
        self.success_rate(&ext, Kind::SuccessRate, cfg.enforcing_success_rate);
        self.failure_percentage(
            &ext,
            Kind::FailurePercentage,
            cfg.enforcing_failure_percentage,
        );
        if cfg.split_external_local_origin_errors {
            let local: Vec<_> = samples.iter().map(|(e, m, _, l)| (*e, *m, *l)).collect();
            self.success_rate(
                &local,
                Kind::SuccessRateLocalOrigin,
                cfg.enforcing_local_origin_success_rate,
            );
            self.failure_percentage(
                &local,
                Kind::FailurePercentageLocalOrigin,
                cfg.enforcing_failure_percentage_local_origin,
            );
        }
    }

    fn maybe_return(&self, e: &Endpoint, m: &Monitor, now: u64) {
        let _g = lock(&self.decide);
        let mut st = lock(&m.state);
        match st.ejected_at_ms {
            Some(at) if now >= at.saturating_add(st.ejection_ms) => {
                self.return_to_service(e, m, &mut st, now, at, "ejection time over");
            }
            Some(_) => {}
            None => {
                // Healthy for a whole ejection time since it came back:
                // the multiplier shrinks by one.
                if st.multiplier > 0
                    && let Some(back) = st.last_return_ms
                {
                    let base = self.cfg.base_ejection_time.as_millis() as u64;
                    let max = (self.cfg.max_ejection_time.as_millis() as u64).max(base);
                    let t = base.saturating_mul(st.multiplier as u64).min(max);
                    if now.saturating_sub(back) >= t {
                        st.multiplier -= 1;
                        st.last_return_ms = Some(now);
                    }
                }
            }
        }
    }

    /// Un-ejects `e` (the caller holds `decide` and its state lock).
    fn return_to_service(
        &self,
        e: &Endpoint,
        m: &Monitor,
        st: &mut EjectionState,
        now: u64,
        at: u64,
        why: &'static str,
    ) {
        st.ejected_at_ms = None;
        st.last_return_ms = Some(now);
        e.health_flags()
            .clear_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        self.ejected.fetch_sub(1, Ordering::Relaxed);
        self.active_gauge.decrement(1.0);
        for c in [
            &m.consecutive_5xx,
            &m.consecutive_gateway,
            &m.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        tracing::info!(cluster = self.cluster, endpoint = %e.address,
            ejected_ms = now.saturating_sub(at), reason = why, "outlier returned to service");
    }

    /// Envoy's success-rate detector: among endpoints with at least
    /// `success_rate_request_volume` requests this interval (and at least
    /// `success_rate_minimum_hosts` of them), one whose success rate is
    /// below mean - stdev_factor/1000 × stdev is an outlier.
    fn success_rate(&self, s: &[(&Arc<Endpoint>, &Monitor, (u64, u64))], kind: Kind, enf: u32) {
        let cfg = &self.cfg;
        let vol = cfg.success_rate_request_volume as u64;
        // Only the external-origin figures are shown by `/clusters`.
        let shown = kind == Kind::SuccessRate;
        if shown {
            for (_, m, _) in s {
                m.success_rate.store(NOT_COMPUTED, Ordering::Relaxed);
            }
            self.sr_average.store(NOT_COMPUTED, Ordering::Relaxed);
            self.sr_threshold.store(NOT_COMPUTED, Ordering::Relaxed);
        }
        let rated: Vec<_> = s
            .iter()
            .filter(|(_, _, (ok, fail))| ok + fail >= vol.max(1))
            .map(|(e, m, (ok, fail))| (*e, *m, 100.0 * *ok as f64 / (ok + fail) as f64))
            .collect();
        if rated.is_empty() || rated.len() < cfg.success_rate_minimum_hosts as usize {
            return;
        }
        let n = rated.len() as f64;
        let mean = rated.iter().map(|r| r.2).sum::<f64>() / n;
        let var = rated.iter().map(|r| (r.2 - mean).powi(2)).sum::<f64>() / n;
        let limit = mean - var.sqrt() * (cfg.success_rate_stdev_factor as f64 / 1000.0);
        if shown {
            self.sr_average.store(mean.to_bits(), Ordering::Relaxed);
            self.sr_threshold.store(limit.to_bits(), Ordering::Relaxed);
            for (_, m, rate) in &rated {
                m.success_rate.store(rate.to_bits(), Ordering::Relaxed);
            }
        }
        for (e, m, rate) in rated {
            if rate < limit {
                self.eject(e, m, kind, enf);
            }
        }
    }

    /// Envoy's failure-percentage detector: an endpoint with at least
    /// `failure_percentage_request_volume` requests this interval whose
    /// failures reach `failure_percentage_threshold` %, when at least
    /// `failure_percentage_minimum_hosts` endpoints have that volume.
    fn failure_percentage(
        &self,
        s: &[(&Arc<Endpoint>, &Monitor, (u64, u64))],
        kind: Kind,
        enf: u32,
    ) {
        let cfg = &self.cfg;
        let vol = (cfg.failure_percentage_request_volume as u64).max(1);
        let rated: Vec<_> = s
            .iter()
            .filter(|(_, _, (ok, fail))| ok + fail >= vol)
            .collect();
        if rated.is_empty() || rated.len() < cfg.failure_percentage_minimum_hosts as usize {
            return;
        }
        for (e, m, (ok, fail)) in rated {
            if 100 * fail >= cfg.failure_percentage_threshold as u64 * (ok + fail) {
                self.eject(e, m, kind, enf);
            }
        }
    }

    /// Runs the interval timer of `cluster` until the cluster is gone
    /// (replaced or removed: its last reference dropped) or `stop` fires.
    pub(super) fn spawn(
        self: &Arc<Self>,
        cluster: Weak<Cluster>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let interval = self.cfg.interval;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(c) = cluster.upgrade() else { return };
                let hosts = c.hosts();
                me.tick(&hosts.endpoints);
            }
        });
    }
}

/// Whether a response is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The HTTP status a `grpc-status` in `headers` (or trailers) stands for,
/// as Envoy maps it for outlier detection (`Grpc::Utility::grpcToHttpStatus`):
/// UNAVAILABLE 503, DEADLINE_EXCEEDED 504, UNKNOWN/INTERNAL/DATA_LOSS 500,
/// UNIMPLEMENTED 501, the client's errors 4xx, OK 200. An unparsable value
/// is UNKNOWN; `None` when there is none.
pub fn grpc_status_as_http(headers: &http::HeaderMap) -> Option<u16> {
    let v = headers.get("grpc-status")?;
    let code = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(2);
    Some(match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS and codes past the list.
        _ => 500,
    })
}

impl Monitor {
    /// An upstream response with `status` (or an RPC status mapped to one).
    pub fn put_http(&self, ep: &Endpoint, status: u16) {
        let cfg = &self.detector.cfg;
        if cfg.split_external_local_origin_errors {
            // The connection worked: a local-origin success.
            self.local_ok.fetch_add(1, Ordering::Relaxed);
            reset(&self.consecutive_local);
        }
        if status < 500 {
            self.ext_ok.fetch_add(1, Ordering::Relaxed);
            reset(&self.consecutive_5xx);
            reset(&self.consecutive_gateway);
            return;
        }
        self.ext_fail.fetch_add(1, Ordering::Relaxed);
        if (502..=504).contains(&status) {
            if bump(&self.consecutive_gateway, cfg.consecutive_gateway_failure) {
                self.detector.eject(
                    ep,
                    self,
                    Kind::ConsecutiveGatewayFailure,
                    cfg.enforcing_consecutive_gateway_failure,
                );
            }
        } else {
            reset(&self.consecutive_gateway);
        }
        if bump(&self.consecutive_5xx, cfg.consecutive_5xx) {
            self.detector.eject(
                ep,
                self,
                Kind::Consecutive5xx,
                cfg.enforcing_consecutive_5xx,
            );
        }
    }

    /// A local-origin failure (connect failure, reset, timeout): its own
    /// detector when split, otherwise a 503 (504 for a timeout) as Envoy
    /// maps it.
    pub fn put_local_failure(&self, ep: &Endpoint, timeout: bool) {
        let cfg = &self.detector.cfg;
        if !cfg.split_external_local_origin_errors {
            self.put_http(ep, if timeout { 504 } else { 503 });
            return;
        }
        self.local_fail.fetch_add(1, Ordering::Relaxed);
        if bump(
            &self.consecutive_local,
            cfg.consecutive_local_origin_failure,
        ) {
            self.detector.eject(
                ep,
                self,
                Kind::ConsecutiveLocalOriginFailure,
                cfg.enforcing_consecutive_local_origin_failure,
            );
        }
    }

    /// An active health check of the endpoint passed and none of its
    /// checks fails now: with `successful_active_health_check_uneject_host`
    /// (Envoy's default) an ejected endpoint returns at once, through the
    /// detector so that its ejection count stays right. True if it did.
    pub fn active_check_passed(&self, ep: &Endpoint) -> bool {
        let d = &self.detector;
        if !d.cfg.successful_active_health_check_uneject_host
            || ep.health_flags().flags() & HealthFlags::FAILED_OUTLIER_CHECK == 0
        {
            return false;
        }
        let _g = lock(&d.decide);
        let mut st = lock(&self.state);
        let Some(at) = st.ejected_at_ms else {
            return false;
        };
        d.return_to_service(
            ep,
            self,
            &mut st,
            now_ms(),
            at,
            "active health check passed",
        );
        true
    }

    /// The last interval's success rate in %, -1 when not computed.
    pub fn success_rate(&self) -> f64 {
        f64::from_bits(self.success_rate.load(Ordering::Relaxed))
    }

    /// The endpoint's ejection history.
    pub fn state(&self) -> EjectionState {
        *lock(&self.state)
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: u16, cfg: serde_json::Value) -> (Arc<Detector>, Vec<Arc<Endpoint>>) {
        let cfg: OutlierDetectionConfig = serde_json::from_value(cfg).unwrap();
        cfg.validate().unwrap();
        let d = Detector::new("t", cfg);
        let eps: Vec<_> = (1..=n)
            .map(|p| Arc::new(Endpoint::new(format!("127.0.0.1:{p}").parse().unwrap(), 1)))
            .collect();
        d.attach(&eps, &[]);
        (d, eps)
    }

    fn ejected(e: &Endpoint) -> bool {
        e.health_flags().flags() & HealthFlags::FAILED_OUTLIER_CHECK != 0
    }

    #[test]
    fn consecutive_5xx_ejects_at_the_threshold_and_a_success_resets_the_streak() {
        let (d, eps) = setup(
            3,
            serde_json::json!({"consecutive_5xx": 3, "max_ejection_percent": 100}),
        );
        let e = &eps[0];
        e.report_status(500);
        e.report_status(500);
        e.report_status(200);
        e.report_status(500);
        e.report_status(500);
        assert!(!ejected(e));
        e.report_status(503);
        assert!(ejected(e));
        assert_eq!(d.ejections_active(), 1);
        assert_eq!(e.outlier().unwrap().state().times_ejected, 1);
    }

    #[test]
    fn a_passing_active_check_returns_an_ejected_endpoint_unless_switched_off() {
        let (d, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 100}),
        );
        let e = &eps[0];
        let m = e.outlier().unwrap();
        assert!(!m.active_check_passed(e), "not ejected: nothing to do");
        e.report_status(500);
        assert!(ejected(e));
        // A failing active check keeps it ejected (the caller only calls
        // on a pass with no failing check).
        assert!(m.active_check_passed(e));
        assert!(!ejected(e));
        assert_eq!(d.ejections_active(), 0);
        assert_eq!(m.state().times_ejected, 1);
        assert!(m.state().ejected_at_ms.is_none());
        // The streak restarted: one more 500 ejects again, multiplier 2.
        e.report_status(500);
        assert!(ejected(e));
        assert_eq!(m.state().multiplier, 2);
        assert_eq!(d.ejections_active(), 1);

        let (d, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 100,
                "successful_active_health_check_uneject_host": false}),
        );
        eps[0].report_status(500);
        assert!(!eps[0].outlier().unwrap().active_check_passed(&eps[0]));
        assert!(ejected(&eps[0]));
        assert_eq!(d.ejections_active(), 1);
    }

    #[test]
    fn gateway_failures_are_detected_but_not_enforced_by_default() {
        let (d, eps) = setup(
            3,
            serde_json::json!({"consecutive_gateway_failure": 2, "consecutive_5xx": 100, "max_ejection_percent": 100}),
        );
        eps[0].report_status(502);
        eps[0].report_status(504);
        assert!(!ejected(&eps[0]));
        assert_eq!(d.ejections_active(), 0);
        // Enforced at 100 %: ejected.
        let (_, eps) = setup(
            3,
            serde_json::json!({"consecutive_gateway_failure": 2, "enforcing_consecutive_gateway_failure": 100, "max_ejection_percent": 100}),
        );
        eps[0].report_status(502);
        eps[0].report_status(500);
        eps[0].report_status(502);
        assert!(!ejected(&eps[0]), "a plain 500 breaks the gateway streak");
        eps[0].report_status(503);
        assert!(ejected(&eps[0]));
    }

    #[test]
    fn max_ejection_percent_bounds_ejections_unless_always_eject_one_host() {
        // 10 % of 3 endpoints: not even one.
        let (d, eps) = setup(3, serde_json::json!({"consecutive_5xx": 1}));
        eps[0].report_status(500);
        assert_eq!(d.ejections_active(), 0);
        let (d, eps) = setup(
            3,
            serde_json::json!({"consecutive_5xx": 1, "always_eject_one_host": true}),
        );
        eps[0].report_status(500);
        eps[1].report_status(500);
        assert_eq!(d.ejections_active(), 1);
        assert!(ejected(&eps[0]) && !ejected(&eps[1]));
        // 34 % of 3: one; 67 %: two.
        let (d, eps) = setup(
            3,
            serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 67}),
        );
        for e in &eps {
            e.report_status(500);
        }
        assert_eq!(d.ejections_active(), 2);
        assert!(!ejected(&eps[2]));
    }

    /// A reset before the response head (answered 503) counts once, as a
    /// local-origin failure: a gateway failure (503) unless split; a
    /// response meshgate cannot accept (answered 502) is a gateway failure
    /// too, of external origin.
    #[test]
    fn resets_and_protocol_errors_are_gateway_failures_counted_once() {
        let (_, eps) = setup(
            2,
            serde_json::json!({"consecutive_gateway_failure": 3, "enforcing_consecutive_gateway_failure": 100,
                "consecutive_5xx": 100, "max_ejection_percent": 100}),
        );
        let e = &eps[0];
        e.report(Outcome::Reset);
        e.report(Outcome::ServerError);
        assert!(!ejected(e), "two failures, not three");
        e.report(Outcome::Reset);
        assert!(ejected(e));
        assert_eq!(
            e.outlier().unwrap().state().last_kind,
            Some("consecutive_gateway_failure")
        );
        let (_, eps) = setup(
            2,
            serde_json::json!({"consecutive_gateway_failure": 1, "enforcing_consecutive_gateway_failure": 100,
                "consecutive_local_origin_failure": 1, "enforcing_consecutive_local_origin_failure": 0,
                "split_external_local_origin_errors": true, "max_ejection_percent": 100}),
        );
        // Split: the reset is local-origin only (not enforced here).
        eps[0].report(Outcome::Reset);
        assert!(!ejected(&eps[0]));
        eps[0].report(Outcome::ServerError);
        assert!(ejected(&eps[0]));
    }

    #[test]
    fn local_origin_failures_count_as_5xx_unless_split() {
        let (_, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 2, "max_ejection_percent": 100}),
        );
        eps[0].report(Outcome::ConnectFailure);
        eps[0].report(Outcome::Timeout);
        assert!(ejected(&eps[0]));
        let (_, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 2, "consecutive_local_origin_failure": 3,
                "split_external_local_origin_errors": true, "max_ejection_percent": 100}),
        );
        let e = &eps[0];
        e.report(Outcome::ConnectFailure);
        e.report(Outcome::Reset);
        assert!(!ejected(e));
        // A response (even a 5xx) is a local-origin success.
        e.report_status(500);
        e.report(Outcome::ConnectFailure);
        e.report(Outcome::ConnectFailure);
        assert!(!ejected(e));
        e.report(Outcome::ConnectFailure);
        assert!(ejected(e));
        assert_eq!(
            e.outlier().unwrap().state().last_kind,
            Some("consecutive_local_origin_failure")
        );
    }

    #[test]
    fn ejection_time_grows_with_repeated_ejections_is_capped_and_shrinks_back() {
        let (d, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 100,
                "base_ejection_time": "1s", "max_ejection_time": "2500ms"}),
        );
        let e = &eps[0];
        let m = e.outlier().unwrap();
        let mut expect = Vec::new();
        for _ in 0..4 {
            e.report_status(500);
            let st = m.state();
            expect.push(st.ejection_ms);
            let at = st.ejected_at_ms.unwrap();
            d.tick_at(&eps, at + st.ejection_ms - 1);
            assert!(ejected(e));
            d.tick_at(&eps, at + st.ejection_ms);
            assert!(!ejected(e));
        }
        assert_eq!(expect, vec![1000, 2000, 2500, 2500]);
        assert_eq!(m.state().multiplier, 3);
        // Healthy for the current ejection time (2.5 s) after coming back:
        // the multiplier shrinks by one, and again after 2 s more.
        let back = m.state().last_return_ms.unwrap();
        d.tick_at(&eps, back + 2499);
        assert_eq!(m.state().multiplier, 3);
        d.tick_at(&eps, back + 2500);
        assert_eq!(m.state().multiplier, 2);
        d.tick_at(&eps, back + 4500);
        assert_eq!(m.state().multiplier, 1);
        e.report_status(500);
        assert_eq!(m.state().ejection_ms, 2000);
    }

    #[test]
    fn success_rate_ejects_the_endpoint_far_below_the_mean() {
        let (d, eps) = setup(
            6,
            serde_json::json!({"consecutive_5xx": 1000, "success_rate_request_volume": 20,
                "max_ejection_percent": 50}),
        );
        for (i, e) in eps.iter().enumerate() {
            for r in 0..40 {
                // Endpoint 0: half fail; the others all succeed (endpoint 5
                // sees too few requests to be rated).
                if i == 5 && r >= 10 {
                    break;
                }
                e.report_status(if i == 0 && r % 2 == 0 { 500 } else { 200 });
            }
        }
        d.tick_at(&eps, now_ms());
        assert!(ejected(&eps[0]));
        assert_eq!(d.ejections_active(), 1);
        assert_eq!(
            eps[0].outlier().unwrap().state().last_kind,
            Some("success_rate")
        );
        // The figures `/clusters` shows: 5 rated endpoints, mean 90 %.
        assert_eq!(eps[0].outlier().unwrap().success_rate(), 50.0);
        assert_eq!(eps[1].outlier().unwrap().success_rate(), 100.0);
        assert_eq!(eps[5].outlier().unwrap().success_rate(), -1.0);
        let (avg, threshold) = d.success_rate_stats();
        assert_eq!(avg, 90.0);
        assert!(threshold < avg && threshold > 50.0, "{threshold}");
        // Too few endpoints with the volume: no analysis.
        let (d, eps) = setup(
            4,
            serde_json::json!({"success_rate_request_volume": 10, "consecutive_5xx": 1000, "max_ejection_percent": 100}),
        );
        for e in &eps {
            for r in 0..10 {
                e.report_status(if e.address.port() == 1 && r < 9 {
                    500
                } else {
                    200
                });
            }
        }
        d.tick_at(&eps, now_ms());
        assert_eq!(d.ejections_active(), 0);
    }

    #[test]
    fn failure_percentage_ejects_past_the_threshold_when_enforced() {
        let cfg = |enf: u32| {
            serde_json::json!({"consecutive_5xx": 1000, "failure_percentage_request_volume": 10,
                "failure_percentage_minimum_hosts": 3, "failure_percentage_threshold": 50,
                "enforcing_failure_percentage": enf, "max_ejection_percent": 100})
        };
        for (enf, want) in [(0, 0), (100, 1)] {
            let (d, eps) = setup(3, cfg(enf));
            for e in &eps {
                for r in 0..10 {
                    e.report_status(if e.address.port() == 2 && r < 5 {
                        503
                    } else {
                        200
                    });
                }
            }
            d.tick_at(&eps, now_ms());
            assert_eq!(d.ejections_active(), want);
            assert_eq!(ejected(&eps[1]), want == 1);
        }
    }

    #[test]
    fn an_ejected_endpoint_that_leaves_no_longer_counts() {
        let (d, eps) = setup(
            2,
            serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 100}),
        );
        eps[0].report_status(500);
        assert_eq!(d.ejections_active(), 1);
        d.attach(&eps[1..], &eps[..1]);
        assert_eq!(d.ejections_active(), 0);
    }

    fn manager(ports: &[u16], interval: &str) -> super::super::ClusterManager {
        let eps: Vec<_> = ports
            .iter()
            .map(|p| serde_json::json!({"address": format!("127.0.0.1:{p}")}))
            .collect();
        let cfg: crate::config::ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "o", "endpoints": eps,
            "outlier_detection": {"consecutive_5xx": 1, "max_ejection_percent": 100,
                "interval": interval, "base_ejection_time": "30s"},
        }))
        .unwrap();
        super::super::ClusterManager::build(
            &imbl::vector![Arc::new(cfg)],
            &crate::registry::Registry::new(),
            &crate::config::ConfigSource::anonymous("test"),
            false,
        )
        .unwrap()
    }

    #[test]
    fn endpoint_updates_keep_the_state_of_endpoints_that_stay() {
        let m = manager(&[1, 2], "10s");
        let c = m.get("o").unwrap().clone();
        let d = c.outlier.clone().unwrap();
        let eps = c.hosts().endpoints.clone();
        eps[0].report_status(500);
        eps[1].report_status(500);
        assert_eq!(d.ejections_active(), 2);
        // 1 stays, 2 leaves, 3 joins.
        c.update_endpoints(vec![
            Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap(), 1)),
            Arc::new(Endpoint::new("127.0.0.1:3".parse().unwrap(), 1)),
        ]);
        let now = c.hosts().endpoints.clone();
        assert!(Arc::ptr_eq(&now[0], &eps[0]));
        assert!(ejected(&now[0]));
        assert_eq!(now[0].outlier().unwrap().state().times_ejected, 1);
        assert_eq!(d.ejections_active(), 1);
        // The new endpoint is watched too.
        now[1].report_status(500);
        assert!(ejected(&now[1]));
        assert_eq!(d.ejections_active(), 2);
    }

    #[tokio::test]
    async fn the_timer_stops_when_its_cluster_is_gone_or_on_shutdown() {
        for cancel in [false, true] {
            let m = manager(&[1], "5ms");
            let d = m.get("o").unwrap().outlier.clone().unwrap();
            let stop = tokio_util::sync::CancellationToken::new();
            m.spawn_dns_refresh(stop.clone());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            // Ours, the endpoint's monitor's, the cluster's, the task's.
            assert_eq!(Arc::strong_count(&d), 4);
            if cancel {
                stop.cancel();
            } else {
                drop(m);
            }
            let mut left = 0;
            for _ in 0..200 {
                left = Arc::strong_count(&d);
                if left == if cancel { 3 } else { 1 } {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert_eq!(left, if cancel { 3 } else { 1 }, "cancel={cancel}");
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad: OutlierDetectionConfig =
            serde_json::from_value(serde_json::json!({"max_ejection_percent": 101})).unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "max_ejection_percent");
        let bad: OutlierDetectionConfig =
            serde_json::from_value(serde_json::json!({"base_ejection_time": "10m"})).unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "max_ejection_time");
        assert!(
            serde_json::from_value::<OutlierDetectionConfig>(serde_json::json!({"monitors": []}))
                .is_err()
        );
    }
}
