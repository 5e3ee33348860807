//! A cluster's request-level circuit breakers (Envoy's `CircuitBreakers`
//! thresholds, per routing priority): `max_requests` (active upstream
//! requests, every protocol) and `max_retries` or its `retry_budget`
//! (concurrent retries). `max_connections`, `max_pending_requests` and
//! `max_connection_pools` stay with the connection code
//! (`Cluster::connect_endpoint`), per priority too: each priority has its
//! own pools (`Endpoint::pool_at`), as in Envoy. Each limit is one atomic counter taken
//! and given back by an RAII slot: no lock on the request path; gauges
//! move only when a limit opens or closes (or on every change with
//! `track_remaining`).

use crate::config::circuit_breakers::{CircuitBreakersConfig, RoutingPriority};
use crate::metrics::{names, rare};
use metrics::{Counter, Gauge, SharedString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// Envoy's default of every threshold but `max_retries`.
pub const DEFAULT_LIMIT: u32 = 1024;
/// Envoy's default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// One limited resource.
struct Limit {
    active: AtomicU32,
    max: u32,
    /// The series' labels, with the cluster's (`Breakers::cluster`).
    priority: RoutingPriority,
    breaker: &'static str,
    /// Registered when the limit first opens (or at once when `max` is 0):
    /// a breaker never opened shows no series (`crate::metrics::rare`).
    open: OnceLock<Gauge>,
    remaining: Option<Gauge>,
    /// Registered on the first overflow.
    overflow: OnceLock<Counter>,
}

impl Limit {
    fn new(
        cluster: &SharedString,
        p: RoutingPriority,
        breaker: &'static str,
        max: u32,
        track: bool,
    ) -> Self {
        let mut limit = Self {
            active: AtomicU32::new(0),
            max,
            priority: p,
            breaker,
            open: OnceLock::new(),
            remaining: None,
            overflow: OnceLock::new(),
        };
        if track {
            let g = metrics::gauge!(
                names::CLUSTER_CIRCUIT_BREAKERS_REMAINING,
                &limit.labels(cluster)
            );
            g.set(f64::from(max));
            limit.remaining = Some(g);
        }
        if max == 0 {
            limit.open(cluster).set(1.0);
        }
        limit
    }

    fn labels(&self, cluster: &SharedString) -> [(&'static str, SharedString); 3] {
        [
            ("cluster", cluster.clone()),
            ("priority", SharedString::from(self.priority.label())),
            ("breaker", SharedString::from(self.breaker)),
        ]
    }

    fn open(&self, cluster: &SharedString) -> &Gauge {
        rare(&self.open, || {
            metrics::gauge!(names::CLUSTER_CIRCUIT_BREAKERS_OPEN, &self.labels(cluster))
        })
    }

    fn overflow(&self, cluster: &SharedString) -> &Counter {
        rare(&self.overflow, || {
            let name = if self.breaker == "requests" {
                names::CLUSTER_UPSTREAM_RQ_OVERFLOW_TOTAL
            } else {
                names::CLUSTER_UPSTREAM_RQ_RETRY_OVERFLOW_TOTAL
            };
            metrics::counter!(name, &self.labels(cluster)[..2])
        })
    }

    /// Takes one unit if fewer than `max` are taken; counts the overflow.
    fn acquire(&self, max: u32, cluster: &SharedString) -> bool {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.overflow(cluster).increment(1);
            return false;
        }
        if prev + 1 >= max {
            self.open(cluster).set(1.0);
        }
        if let Some(g) = &self.remaining {
            g.set(f64::from(max.saturating_sub(prev + 1)));
        }
        true
    }

    fn release(&self, max: u32) {
        let prev = self.active.fetch_sub(1, Ordering::AcqRel);
        if prev >= max {
            // Never registered: the limit never opened, nothing to close.
            if let Some(g) = self.open.get() {
                g.set(0.0);
            }
        }
        if let Some(g) = &self.remaining {
            g.set(f64::from(max.saturating_sub(prev.saturating_sub(1))));
        }
    }

    fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// What bounds concurrent retries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RetryLimit {
    Max(u32),
    /// `budget_percent` of the active requests, at least `min`.
    Budget {
        percent: f64,
        min: u32,
    },
}

/// The thresholds of one priority.
struct Thresholds {
    requests: Limit,
    retries: Limit,
    retry_limit: RetryLimit,
}

impl Thresholds {
    fn max_retries(&self) -> u32 {
        match self.retry_limit {
            RetryLimit::Max(m) => m,
            RetryLimit::Budget { percent, min } => {
                // Envoy: the budget is a share of the requests in flight,
                // active + pending. The request slot is taken before the
                // pool's pending queue (`forward::start`), so `active`
                // already counts the requests waiting there.
                let share = (f64::from(self.requests.active()) * percent / 100.0) as u32;
                share.max(min)
            }
        }
    }
}

/// The request-level breakers of a cluster, both priorities.
pub struct Breakers {
    /// The `cluster` label of the limits' series.
    cluster: SharedString,
    default: Thresholds,
    high: Thresholds,
}

/// The values of one priority's thresholds, checked (`from_config`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdValues {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    retry_limit: RetryLimit,
    pub track_remaining: bool,
    /// `per_host_thresholds[].max_connections`: connections per endpoint
    /// (no limit by default, as in Envoy).
    pub max_connections_per_host: u32,
    /// `max_connection_pools`: endpoints with open connections of this
    /// priority at once (no limit by default, as in Envoy).
    pub max_connection_pools: u32,
}

impl Default for ThresholdValues {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_LIMIT,
            max_pending_requests: DEFAULT_LIMIT,
            max_requests: DEFAULT_LIMIT,
            retry_limit: RetryLimit::Max(DEFAULT_MAX_RETRIES),
            track_remaining: false,
            max_connections_per_host: u32::MAX,
            max_connection_pools: u32::MAX,
        }
    }
}

/// `per_host_thresholds`: Envoy honours only `max_connections` there (of
/// the DEFAULT priority); anything else is refused by name.
fn check_per_host(cb: Option<&CircuitBreakersConfig>) -> Result<u32, (String, String)> {
    let mut max = u32::MAX;
    for (i, t) in cb
        .map(|c| c.per_host_thresholds.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let path = |f: &str| format!("circuit_breakers.per_host_thresholds[{i}].{f}");
        let unsupported =
            |f: &str| Err((path(f), "only max_connections is honoured per host".into()));
        if t.priority != RoutingPriority::Default {
            return Err((
                path("priority"),
                "the per-host cap counts both priorities' connections: set it on the DEFAULT threshold".into(),
            ));
        }
        if t.max_pending_requests.is_some() {
            return unsupported("max_pending_requests");
        }
        if t.max_requests.is_some() {
            return unsupported("max_requests");
        }
        if t.max_retries.is_some() {
            return unsupported("max_retries");
        }
        if t.retry_budget.is_some() {
            return unsupported("retry_budget");
        }
        if t.track_remaining {
            return unsupported("track_remaining");
        }
        if t.max_connection_pools.is_some() {
            return unsupported("max_connection_pools");
        }
        if max != u32::MAX {
            return Err((path("priority"), "one threshold per priority".into()));
        }
        max = t.max_connections.unwrap_or(u32::MAX);
    }
    Ok(max)
}

/// Checks a cluster's `circuit_breakers` (and its legacy top-level
/// `max_connections`): the values of both priorities, or the field at
/// fault (relative to the cluster) and why.
pub fn check(
    cb: Option<&CircuitBreakersConfig>,
    legacy_max_connections: Option<u32>,
) -> Result<[ThresholdValues; 2], (String, String)> {
    let per_host = check_per_host(cb)?;
    let mut out = [ThresholdValues::default(); 2];
    let mut seen = [false; 2];
    if let Some(m) = legacy_max_connections {
        out[0].max_connections = m;
        out[1].max_connections = m;
    }
    for (i, t) in cb
        .map(|c| c.thresholds.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let path = |f: &str| format!("circuit_breakers.thresholds[{i}].{f}");
        let k = match t.priority {
            RoutingPriority::Default => 0,
            RoutingPriority::High => 1,
        };
        if std::mem::replace(&mut seen[k], true) {
            return Err((path("priority"), "one threshold per priority".into()));
        }
        let v = &mut out[k];
        if let Some(m) = t.max_connection_pools {
            v.max_connection_pools = m;
        }
        if let Some(m) = t.max_connections {
            if legacy_max_connections.is_some() {
                return Err((
                    "max_connections".into(),
                    "set either max_connections or circuit_breakers.thresholds[].max_connections, not both".into(),
                ));
            }
            v.max_connections = m;
        }
        if let Some(m) = t.max_pending_requests {
            v.max_pending_requests = m;
        }
        if let Some(m) = t.max_requests {
            v.max_requests = m;
        }
        if let Some(m) = t.max_retries {
            v.retry_limit = RetryLimit::Max(m);
        }
        if let Some(b) = &t.retry_budget {
            let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&percent) {
                return Err((
                    path("retry_budget.budget_percent.value"),
                    "must be within 0..=100".into(),
                ));
            }
            v.retry_limit = RetryLimit::Budget {
                percent,
                min: b.min_retry_concurrency.unwrap_or(3),
            };
        }
        v.track_remaining = t.track_remaining;
    }
    out[0].max_connections_per_host = per_host;
    out[1].max_connections_per_host = per_host;
    Ok(out)
}

impl Breakers {
    pub fn new(cluster: &SharedString, values: &[ThresholdValues; 2]) -> Self {
        let t = |p: RoutingPriority, v: &ThresholdValues| {
            let retries_max = match v.retry_limit {
                RetryLimit::Max(m) => m,
                RetryLimit::Budget { .. } => u32::MAX,
            };
            Thresholds {
                requests: Limit::new(cluster, p, "requests", v.max_requests, v.track_remaining),
                retries: Limit::new(cluster, p, "retries", retries_max, v.track_remaining),
                retry_limit: v.retry_limit,
            }
        };
        Self {
            cluster: cluster.clone(),
            default: t(RoutingPriority::Default, &values[0]),
            high: t(RoutingPriority::High, &values[1]),
        }
    }

    fn of(&self, p: RoutingPriority) -> &Thresholds {
        match p {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }

    /// A slot under `max_requests`, or `None` (counted) when it is full.
    pub fn request(self: &Arc<Self>, p: RoutingPriority) -> Option<Slot> {
        let t = self.of(p);
        let max = t.requests.max;
        t.requests.acquire(max, &self.cluster).then(|| Slot {
            breakers: self.clone(),
            priority: p,
            kind: Kind::Request(max),
        })
    }

    /// A slot under `max_retries` / `retry_budget`, or `None` (counted).
    pub fn retry(self: &Arc<Self>, p: RoutingPriority) -> Option<Slot> {
        let t = self.of(p);
        let max = t.max_retries();
        t.retries.acquire(max, &self.cluster).then(|| Slot {
            breakers: self.clone(),
            priority: p,
            kind: Kind::Retry(max),
        })
    }
}

enum Kind {
    Request(u32),
    Retry(u32),
}

/// One unit of a breaker's resource, given back when dropped.
pub struct Slot {
    breakers: Arc<Breakers>,
    priority: RoutingPriority,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let t = self.breakers.of(self.priority);
        match self.kind {
            Kind::Request(max) => t.requests.release(max),
            Kind::Retry(max) => t.retries.release(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::circuit_breakers::{PercentConfig, RetryBudgetConfig, ThresholdsConfig};

    fn cfg(t: Vec<ThresholdsConfig>) -> CircuitBreakersConfig {
        CircuitBreakersConfig {
            thresholds: t,
            ..Default::default()
        }
    }

    #[test]
    fn per_host_max_connections_is_taken_and_the_rest_refused() {
        let host = |t: ThresholdsConfig| CircuitBreakersConfig {
            per_host_thresholds: vec![t],
            ..Default::default()
        };
        assert_eq!(
            check(None, None).unwrap()[0].max_connections_per_host,
            u32::MAX
        );
        let v = check(
            Some(&host(ThresholdsConfig {
                max_connections: Some(2),
                ..Default::default()
            })),
            None,
        )
        .unwrap();
        assert_eq!(v[0].max_connections_per_host, 2);
        assert_eq!(v[1].max_connections_per_host, 2);
        let e = check(
            Some(&host(ThresholdsConfig {
                max_pending_requests: Some(2),
                ..Default::default()
            })),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.0,
            "circuit_breakers.per_host_thresholds[0].max_pending_requests"
        );
    }

    #[test]
    fn defaults_are_envoys() {
        let v = check(None, None).unwrap();
        assert_eq!(v[0].max_requests, 1024);
        assert_eq!(v[0].max_connections, 1024);
        assert_eq!(v[0].max_pending_requests, 1024);
        assert_eq!(v[0].retry_limit, RetryLimit::Max(3));
        assert_eq!(check(None, Some(7)).unwrap()[0].max_connections, 7);
    }

    #[test]
    fn refusals_name_the_field() {
        // The connection thresholds are per priority (each its pools).
        let t = ThresholdsConfig {
            max_connection_pools: Some(1),
            max_connections: Some(1),
            max_pending_requests: Some(0),
            ..Default::default()
        };
        let high = ThresholdsConfig {
            priority: RoutingPriority::High,
            max_connection_pools: Some(3),
            max_connections: Some(5),
            max_pending_requests: Some(7),
            ..Default::default()
        };
        let v = check(Some(&cfg(vec![t, high])), None).unwrap();
        assert_eq!(
            (
                v[0].max_connection_pools,
                v[0].max_connections,
                v[0].max_pending_requests
            ),
            (1, 1, 0)
        );
        assert_eq!(
            (
                v[1].max_connection_pools,
                v[1].max_connections,
                v[1].max_pending_requests
            ),
            (3, 5, 7)
        );
        // Envoy's defaults for a priority without a threshold; the legacy
        // top-level field applies to both.
        assert_eq!(check(None, None).unwrap()[1].max_connections, 1024);
        assert_eq!(check(None, Some(2)).unwrap()[1].max_connections, 2);
        let t = ThresholdsConfig {
            max_connections: Some(1),
            ..Default::default()
        };
        assert_eq!(
            check(Some(&cfg(vec![t])), Some(2)).unwrap_err().0,
            "max_connections"
        );
        let e = check(
            Some(&cfg(vec![Default::default(), Default::default()])),
            None,
        )
        .unwrap_err();
        assert_eq!(e.0, "circuit_breakers.thresholds[1].priority");
        let t = ThresholdsConfig {
            retry_budget: Some(RetryBudgetConfig {
                budget_percent: Some(PercentConfig { value: 120.0 }),
                min_retry_concurrency: None,
            }),
            ..Default::default()
        };
        let e = check(Some(&cfg(vec![t])), None).unwrap_err();
        assert_eq!(
            e.0,
            "circuit_breakers.thresholds[0].retry_budget.budget_percent.value"
        );
    }

    #[test]
    fn requests_overflow_and_come_back() {
        let t = ThresholdsConfig {
            max_requests: Some(2),
            ..Default::default()
        };
        let b = Arc::new(Breakers::new(
            &"c".into(),
            &check(Some(&cfg(vec![t])), None).unwrap(),
        ));
        let a = b.request(RoutingPriority::Default).unwrap();
        let _b2 = b.request(RoutingPriority::Default).unwrap();
        assert!(b.request(RoutingPriority::Default).is_none());
        // HIGH has its own thresholds.
        assert!(b.request(RoutingPriority::High).is_some());
        drop(a);
        assert!(b.request(RoutingPriority::Default).is_some());
    }

    #[test]
    fn retry_budget_scales_with_active_requests() {
        let t = ThresholdsConfig {
            retry_budget: Some(RetryBudgetConfig {
                budget_percent: Some(PercentConfig { value: 50.0 }),
                min_retry_concurrency: Some(1),
            }),
            ..Default::default()
        };
        let b = Arc::new(Breakers::new(
            &"c".into(),
            &check(Some(&cfg(vec![t])), None).unwrap(),
        ));
        let r1 = b.retry(RoutingPriority::Default).unwrap();
        assert!(
            b.retry(RoutingPriority::Default).is_none(),
            "min 1 with no request"
        );
        let _reqs: Vec<_> = (0..4)
            .map(|_| b.request(RoutingPriority::Default).unwrap())
            .collect();
        let _r2 = b.retry(RoutingPriority::Default).unwrap();
        assert!(b.retry(RoutingPriority::Default).is_none(), "50% of 4 = 2");
        drop(r1);
    }
}
