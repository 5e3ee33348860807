//! The `random` policy: weighted random choice (cumulative weights and a
//! binary search; a plain uniform draw when all weights are equal). An
//! unavailable draw is retried a few times, then an exact weighted choice
//! over the available endpoints (a linear pass) takes over.

use super::{LbContext, LoadBalancer, LoadBalancerBuilder, LoadBalancerFactory};
use crate::cluster::Endpoint;
use crate::error::BuildError;
use rand::Rng;
use serde::Deserialize;
use std::sync::Arc;

/// Random draws tried before the linear scan.
const ATTEMPTS: usize = 4;

/// `random` has no options; `lb_config` must be absent or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomOptions {}

/// Registers `random`.
pub struct RandomFactory;

impl LoadBalancerFactory for RandomFactory {
    fn name(&self) -> &'static str {
        "random"
    }

    fn create(
        &self,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError> {
        let _: RandomOptions = crate::config::parse_typed(config)?;
        Ok(Arc::new(RandomBuilder))
    }
}

struct RandomBuilder;

impl LoadBalancerBuilder for RandomBuilder {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        Box::new(WeightedDraw::new(endpoints))
    }
}

/// A weighted draw over an endpoint set; shared with `least_request`,
/// which draws its two candidates the same way.
pub(super) struct WeightedDraw {
    /// `cumulative[i]` = sum of the weights of endpoints `0..=i`; empty
    /// when all weights are equal (uniform draw).
    cumulative: Box<[u64]>,
    n: usize,
}

impl WeightedDraw {
    pub(super) fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let n = endpoints.len();
        let first = endpoints.first().map(|e| e.weight);
        let cumulative = if endpoints.iter().all(|e| Some(e.weight) == first) {
            Box::default()
        } else {
            endpoints
                .iter()
                .scan(0u64, |acc, e| {
                    *acc += u64::from(e.weight.max(1));
                    Some(*acc)
                })
                .collect()
        };
        Self { cumulative, n }
    }

    pub(super) fn len(&self) -> usize {
        self.n
    }

    /// One weighted draw among all endpoints (`n` must be > 0).
    fn draw_any(&self, rng: &mut impl Rng) -> usize {
        match self.cumulative.last() {
            None => rng.random_range(0..self.n),
            Some(&total) => {
                let r = rng.random_range(0..total);
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }

    /// The weight of endpoint `i` as the draw sees it (1 when uniform).
    fn weight(&self, i: usize) -> u64 {
        match i {
            _ if self.cumulative.is_empty() => 1,
            0 => self.cumulative[0],
            _ => self.cumulative[i] - self.cumulative[i - 1],
        }
    }

    /// A weighted draw among the available endpoints other than `exclude`:
    /// a few random draws, then an exact weighted choice over the available
    /// ones (two linear passes), so skipping keeps the proportions. `None`
    /// when no such endpoint exists.
    pub(super) fn draw(
        &self,
        rng: &mut impl Rng,
        exclude: Option<usize>,
        available: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        for _ in 0..ATTEMPTS {
            let i = self.draw_any(rng);
            if Some(i) != exclude && available(i) {
                return Some(i);
            }
        }
        let ok = |i: usize| Some(i) != exclude && available(i);
        let total: u64 = (0..self.n).filter(|&i| ok(i)).map(|i| self.weight(i)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.random_range(0..total);
        let mut last = None;
        for i in (0..self.n).filter(|&i| ok(i)) {
            let w = self.weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        // Availability changed between the passes.
        last
    }
}

impl LoadBalancer for WeightedDraw {
    fn pick(&self, _ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.draw(&mut rand::rng(), None, available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = format!("10.0.{}.{}:80", i / 256, i % 256).parse().unwrap();
                Arc::new(Endpoint::new(addr, w))
            })
            .collect()
    }

    fn build(weights: &[u32]) -> Box<dyn LoadBalancer> {
        RandomFactory
            .create(&serde_json::Value::Null)
            .unwrap()
            .build(&endpoints(weights))
    }

    fn counts(
        lb: &dyn LoadBalancer,
        n: usize,
        picks: usize,
        avail: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[lb.pick(&LbContext::default(), avail).unwrap()] += 1;
        }
        c
    }

    /// Each count within ±5% (relative) of its expected share.
    fn assert_shares(c: &[usize], weights: &[u32]) {
        let total: usize = c.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (i, (&got, &w)) in c.iter().zip(weights).enumerate() {
            let want = total as f64 * f64::from(w) / f64::from(wsum);
            let err = (got as f64 - want).abs() / want;
            assert!(
                err < 0.05,
                "endpoint {i}: {got} picks, want {want:.0} (±5%): {c:?}"
            );
        }
    }

    #[test]
    fn weighted_distribution() {
        // 60k picks: the smallest share (10k) has a standard deviation of
        // ~0.9%, so ±5% is more than 5 sigma.
        let lb = build(&[1, 2, 3]);
        assert_shares(&counts(&*lb, 3, 60_000, &|_| true), &[1, 2, 3]);
        let lb = build(&[5, 5, 5, 5]);
        assert_shares(&counts(&*lb, 4, 60_000, &|_| true), &[1, 1, 1, 1]);
    }

    #[test]
    fn skips_unavailable() {
        let lb = build(&[1, 2, 3]);
        let c = counts(&*lb, 3, 60_000, &|i| i != 2);
        assert_eq!(c[2], 0);
        // The retried draws keep the 1:2 ratio between the remaining ones.
        assert_shares(&c[..2], &[1, 2]);

        // A heavy unavailable endpoint: the scan still finds the light one.
        let lb = build(&[1000, 1]);
        assert_eq!(counts(&*lb, 2, 1000, &|i| i == 1), vec![0, 1000]);

        assert_eq!(lb.pick(&LbContext::default(), &|_| false), None);
        assert_eq!(build(&[]).pick(&LbContext::default(), &|_| true), None);
    }

    #[test]
    fn options() {
        assert!(RandomFactory.create(&json!({})).is_ok());
        let e = RandomFactory.create(&json!({"seed": 1})).err().unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
