//! The `least_request` policy: power of two choices. Two distinct available
//! endpoints are drawn at random (weighted, like `random`) and the one with
//! fewer active requests per unit of weight wins (`a.active * b.weight`
//! against `b.active * a.weight`, the first draw on a tie). Idle endpoints
//! therefore share traffic in proportion to weight, and loaded ones converge
//! to active requests in proportion to weight.

use super::random::WeightedDraw;
use super::{LbContext, LoadBalancer, LoadBalancerBuilder, LoadBalancerFactory};
use crate::cluster::Endpoint;
use crate::error::BuildError;
use serde::Deserialize;
use std::sync::Arc;

/// `least_request`'s `lb_config`: only `slow_start_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeastRequestOptions {
    /// Envoy's `slow_start_config` (`super::slow_start`).
    #[serde(default)]
    slow_start_config: Option<super::slow_start::SlowStartConfig>,
}

/// Registers `least_request`.
pub struct LeastRequestFactory;

impl LoadBalancerFactory for LeastRequestFactory {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn create(
        &self,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError> {
        let o: LeastRequestOptions = crate::config::parse_typed(config)?;
        super::slow_start::wrap(Arc::new(LeastRequestBuilder), o.slow_start_config)
    }
}

struct LeastRequestBuilder;

impl LoadBalancerBuilder for LeastRequestBuilder {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        Box::new(LeastRequest {
            draw: WeightedDraw::new(endpoints),
            endpoints: endpoints.to_vec().into_boxed_slice(),
        })
    }
}

struct LeastRequest {
    draw: WeightedDraw,
    endpoints: Box<[Arc<Endpoint>]>,
}

impl LoadBalancer for LeastRequest {
    fn pick(&self, _ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        debug_assert_eq!(self.draw.len(), self.endpoints.len());
        let mut rng = rand::rng();
        let a = self.draw.draw(&mut rng, None, available)?;
        let Some(b) = self.draw.draw(&mut rng, Some(a), available) else {
            return Some(a);
        };
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let load_a = u64::from(ea.active_requests()) * u64::from(eb.weight.max(1));
        let load_b = u64::from(eb.active_requests()) * u64::from(ea.weight.max(1));
        Some(if load_b < load_a { b } else { a })
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

    fn build(eps: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        LeastRequestFactory
            .create(&serde_json::Value::Null)
            .unwrap()
            .build(eps)
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
                "endpoint {i}: {got}, want {want:.0} (±5%): {c:?}"
            );
        }
    }

    #[test]
    fn idle_endpoints_share_by_weight() {
        // No request in flight (each completes before the next pick): ties
        // go to the weighted first draw. 60k picks, ±5%.
        let eps = endpoints(&[1, 2, 3]);
        let lb = build(&eps);
        let mut c = vec![0; 3];
        for _ in 0..60_000 {
            c[lb.pick(&LbContext::default(), &|_| true).unwrap()] += 1;
        }
        assert_shares(&c, &[1, 2, 3]);
    }

    #[test]
    fn held_requests_balance_by_weight() {
        // 60k requests that stay in flight: the active counts end up in
        // proportion to weight (±5%; power of two choices keeps them much
        // closer than that).
        for weights in [&[1u32, 2, 3][..], &[1, 1, 1, 1, 1]] {
            let eps = endpoints(weights);
            let lb = build(&eps);
            let mut guards = Vec::with_capacity(60_000);
            for _ in 0..60_000 {
                let i = lb.pick(&LbContext::default(), &|_| true).unwrap();
                guards.push(eps[i].start_request());
            }
            let active: Vec<usize> = eps.iter().map(|e| e.active_requests() as usize).collect();
            assert_shares(&active, weights);
            drop(guards);
            assert!(eps.iter().all(|e| e.active_requests() == 0));
        }
    }

    #[test]
    fn prefers_the_idle_endpoint() {
        let eps = endpoints(&[1, 1, 1]);
        let lb = build(&eps);
        let _busy: Vec<_> = (0..100).map(|_| eps[0].start_request()).collect();
        for _ in 0..1000 {
            // Whatever the pair, the other candidate has fewer requests.
            assert_ne!(lb.pick(&LbContext::default(), &|_| true), Some(0));
        }
        // Weighted: 10 active on weight 10 is as loaded as 1 on weight 1.
        let eps = endpoints(&[10, 1]);
        let lb = build(&eps);
        let _a: Vec<_> = (0..30).map(|_| eps[0].start_request()).collect();
        let _b: Vec<_> = (0..2).map(|_| eps[1].start_request()).collect();
        for _ in 0..100 {
            // 30/10 = 3 > 2/1 = 2.
            assert_eq!(lb.pick(&LbContext::default(), &|_| true), Some(1));
        }
    }

    #[test]
    fn skips_unavailable() {
        let eps = endpoints(&[1, 2, 3, 4]);
        let lb = build(&eps);
        let ctx = LbContext::default();
        for _ in 0..10_000 {
            let i = lb.pick(&ctx, &|i| i % 2 == 0).unwrap();
            assert!(i == 0 || i == 2);
        }
        // One available: returned even when busy.
        let _g: Vec<_> = (0..10).map(|_| eps[3].start_request()).collect();
        for _ in 0..100 {
            assert_eq!(lb.pick(&ctx, &|i| i == 3), Some(3));
        }
        assert_eq!(lb.pick(&ctx, &|_| false), None);
        assert_eq!(build(&[]).pick(&ctx, &|_| true), None);
        let one = endpoints(&[1]);
        assert_eq!(build(&one).pick(&ctx, &|_| true), Some(0));
    }

    #[test]
    fn options() {
        assert!(LeastRequestFactory.create(&json!({})).is_ok());
        let e = LeastRequestFactory
            .create(&json!({"choice_count": 3}))
            .err()
            .unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
