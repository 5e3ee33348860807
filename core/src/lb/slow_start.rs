//! Slow start (Envoy's `slow_start_config` of `round_robin_lb_config` and
//! `least_request_lb_config`): an endpoint that joined the cluster less
//! than `slow_start_window` ago gets its weight scaled by
//! `max(min_weight_percent, (time_in_window / window)^(1 / aggression))`.
//!
//! A wrapper around the policy's own `LoadBalancer`: while some endpoint
//! is in its window, a pick of such an endpoint is kept with the scale as
//! its probability (otherwise the policy moves on to its next choice), so
//! its share of traffic is its weight times the scale, and a pick stays
//! O(1). Once every window has passed (one clock read, one atomic load
//! and a compare per pick), picks are the plain policy's. An endpoint's
//! start is, as in Envoy, the last time an active health check turned it
//! healthy (`Endpoint::hc_passed`), or else when it joined the cluster
//! (`Endpoint::added_ms`; an endpoint kept across an update keeps it).

use super::{LbContext, LoadBalancer, LoadBalancerBuilder};
use crate::cluster::{Endpoint, now_ms};
use crate::error::BuildError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Envoy's `SlowStartConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    /// How long a new endpoint ramps up.
    #[serde(with = "humantime_serde")]
    pub slow_start_window: Duration,
    /// The ramp's shape: 1.0 is linear; larger ramps faster at first.
    /// Envoy's `aggression.default_value` (no runtime override).
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// The lowest scale, percent (Envoy's `min_weight_percent.value`).
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: f64,
}

fn default_aggression() -> f64 {
    1.0
}

fn default_min_weight_percent() -> f64 {
    10.0
}

impl SlowStartConfig {
    /// Bad values name their field (under `slow_start_config`).
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.slow_start_window.is_zero() {
            return Err(BuildError::new(
                "slow_start_config.slow_start_window",
                "must be > 0",
            ));
        }
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return Err(BuildError::new(
                "slow_start_config.aggression",
                "must be > 0",
            ));
        }
        if !(0.0..=100.0).contains(&self.min_weight_percent) {
            return Err(BuildError::new(
                "slow_start_config.min_weight_percent",
                "must be a percent in [0, 100]",
            ));
        }
        Ok(())
    }

    /// The weight scale, in [min, 1], `elapsed_ms` into the window.
    fn scale(&self, elapsed_ms: u64) -> f64 {
        let window = self.slow_start_window.as_millis() as f64;
        let t = (elapsed_ms as f64 / window).min(1.0);
        t.powf(1.0 / self.aggression)
            .max(self.min_weight_percent / 100.0)
    }
}

/// The latest window start any health check set (`now_ms`), process-wide:
/// a load balancer built before it learns that some endpoint may be in its
/// window again (the balancer is not rebuilt on health changes).
static LAST_HC_START_MS: AtomicU64 = AtomicU64::new(0);

/// An endpoint's window started `at` (an active check turned it healthy).
pub(crate) fn note_window_start(at: u64) {
    LAST_HC_START_MS.fetch_max(at, Ordering::Relaxed);
}

/// `inner`, with slow start when configured.
pub(super) fn wrap(
    inner: Arc<dyn LoadBalancerBuilder>,
    config: Option<SlowStartConfig>,
) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError> {
    match config {
        None => Ok(inner),
        Some(config) => {
            config.validate()?;
            Ok(Arc::new(Builder { inner, config }))
        }
    }
}

/// Wraps a policy's builder with slow start.
pub(super) struct Builder {
    pub(super) inner: Arc<dyn LoadBalancerBuilder>,
    pub(super) config: SlowStartConfig,
}

impl LoadBalancerBuilder for Builder {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        let window = self.config.slow_start_window.as_millis() as u64;
        Box::new(SlowStart {
            inner: self.inner.build(endpoints),
            until_ms: endpoints
                .iter()
                .map(|e| e.slow_start_from_ms())
                .max()
                .map_or(0, |a| a + window),
            window_ms: window,
            endpoints: endpoints.into(),
            config: self.config.clone(),
        })
    }
}

struct SlowStart {
    inner: Box<dyn LoadBalancer>,
    /// The endpoints, by index: each one's window start is read per pick
    /// while some window is open (a health check may move it).
    endpoints: Box<[Arc<Endpoint>]>,
    /// When the last window known at build time ends.
    until_ms: u64,
    window_ms: u64,
    config: SlowStartConfig,
}

impl LoadBalancer for SlowStart {
    fn pick(&self, ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let now = now_ms();
        let until = self
            .until_ms
            .max(LAST_HC_START_MS.load(Ordering::Relaxed) + self.window_ms);
        if now >= until {
            return self.inner.pick(ctx, available);
        }
        let keep = |i: usize| {
            let from = self.endpoints.get(i).map_or(0, |e| e.slow_start_from_ms());
            let s = self.config.scale(now.saturating_sub(from));
            s >= 1.0 || rand::random::<f64>() < s
        };
        // A pick the ramp turned down moves the policy on; if every try is
        // turned down, the plain pick (never no endpoint for the ramp).
        self.inner
            .pick(ctx, &|i| available(i) && keep(i))
            .or_else(|| self.inner.pick(ctx, available))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::LoadBalancerFactory;

    #[test]
    fn scale_follows_envoys_formula() {
        let c = SlowStartConfig {
            slow_start_window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight_percent: 10.0,
        };
        assert_eq!(c.scale(0), 0.1);
        assert!((c.scale(5000) - 0.5).abs() < 1e-9);
        assert_eq!(c.scale(20_000), 1.0);
        let c = SlowStartConfig {
            aggression: 2.0,
            ..c
        };
        assert!((c.scale(2500) - 0.5).abs() < 1e-9);
        let bad = SlowStartConfig {
            aggression: 0.0,
            ..c.clone()
        };
        assert_eq!(
            bad.validate().unwrap_err().path,
            "slow_start_config.aggression"
        );
    }

    #[test]
    fn a_new_endpoint_ramps_up() {
        // A 1 ms window: the old endpoint (joined at 0) is past it once
        // the clock reads 2; the new one joins in the future (scale = min).
        let mut old = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        old.added_ms = 0;
        while now_ms() < 2 {
            std::thread::yield_now();
        }
        let mut new = Endpoint::new("127.0.0.1:2".parse().unwrap(), 1);
        new.added_ms = now_ms() + 1_000_000;
        let b = Builder {
            inner: super::super::RoundRobinFactory
                .create(&serde_json::Value::Null)
                .unwrap(),
            config: SlowStartConfig {
                slow_start_window: Duration::from_millis(1),
                aggression: 1.0,
                min_weight_percent: 10.0,
            },
        };
        let lb = b.build(&[Arc::new(old), Arc::new(new)]);
        let ctx = LbContext::default();
        let n = (0..10_000)
            .filter(|_| lb.pick(&ctx, &|_| true) == Some(1))
            .count();
        // Weight 1 × 0.1 against 1: about 1/11 of picks.
        assert!((600..=1200).contains(&n), "{n}");
    }

    #[test]
    fn a_health_check_pass_restarts_the_window() {
        // Both endpoints joined at 0, past a 200 ms window once the clock
        // reads 400; then an active check turns endpoint 1 healthy: it
        // ramps from the minimum again, in a balancer built before.
        let mut a = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        let mut b = Endpoint::new("127.0.0.1:2".parse().unwrap(), 1);
        a.added_ms = 0;
        b.added_ms = 0;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let builder = Builder {
            inner: super::super::RoundRobinFactory
                .create(&serde_json::Value::Null)
                .unwrap(),
            config: SlowStartConfig {
                slow_start_window: Duration::from_millis(200),
                aggression: 1.0,
                min_weight_percent: 10.0,
            },
        };
        let lb = builder.build(&[a.clone(), b.clone()]);
        while now_ms() < 400 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ctx = LbContext::default();
        let picks_of_b = || {
            (0..2000)
                .filter(|_| lb.pick(&ctx, &|_| true) == Some(1))
                .count()
        };
        let n = picks_of_b();
        assert!((800..=1200).contains(&n), "before the pass: {n}");
        b.hc_passed();
        assert!(b.slow_start_from_ms() >= 400);
        assert_eq!(a.slow_start_from_ms(), 0);
        // About 0.1 against 1 while 2,000 picks take a few ms: ~1/11.
        let n = picks_of_b();
        assert!(n < 600, "after the pass: {n}");
    }
}
