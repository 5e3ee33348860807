//! The `ring_hash` policy: a Ketama-style consistent hash ring. Each
//! endpoint puts entries on the ring in proportion to its weight (entry `k`
//! is `hash_key("{hash_identity}_{k}")`); a pick takes the first entry at or
//! after the request's hash and walks on past unavailable endpoints, so an
//! unavailable endpoint moves only its own keys.
//!
//! Ring size: entries per unit of weight are
//! `ceil(minimum_ring_size / total_weight)` rounded up to a power of two
//! (halved while the ring would exceed `maximum_ring_size`), so the ring has
//! between `minimum_ring_size` and twice that many entries. Unlike Envoy's
//! exact scaling, adding or removing an endpoint usually leaves the other
//! endpoints' entries unchanged (only crossing a power of two changes them),
//! which keeps key movement to the changed endpoint's share.

use super::{LbContext, LoadBalancer, LoadBalancerBuilder, LoadBalancerFactory, hash_key};
use crate::cluster::Endpoint;
use crate::error::BuildError;
use serde::Deserialize;
use std::fmt::Write;
use std::sync::Arc;

/// The largest ring accepted (Envoy's cap), 8M entries.
const MAX_RING_SIZE: u64 = 8_388_608;
/// Ring entries probed before checking whether any endpoint is available.
const PROBES_BEFORE_CHECK: usize = 32;

/// `lb_config` of `ring_hash`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RingHashOptions {
    /// Fewest entries on the ring (default 1024).
    minimum_ring_size: u64,
    /// Most entries on the ring (default and cap 8_388_608).
    maximum_ring_size: u64,
}

impl Default for RingHashOptions {
    fn default() -> Self {
        Self {
            minimum_ring_size: 1024,
            maximum_ring_size: MAX_RING_SIZE,
        }
    }
}

/// Registers `ring_hash`.
pub struct RingHashFactory;

impl LoadBalancerFactory for RingHashFactory {
    fn name(&self) -> &'static str {
        "ring_hash"
    }

    fn create(
        &self,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError> {
        let o: RingHashOptions = crate::config::parse_typed(config)?;
        if o.minimum_ring_size == 0 {
            return Err(BuildError::new("minimum_ring_size", "must be >= 1"));
        }
        if o.maximum_ring_size > MAX_RING_SIZE {
            return Err(BuildError::new(
                "maximum_ring_size",
                format!("must be <= {MAX_RING_SIZE}"),
            ));
        }
        if o.minimum_ring_size > o.maximum_ring_size {
            return Err(BuildError::new(
                "minimum_ring_size",
                format!("must be <= maximum_ring_size ({})", o.maximum_ring_size),
            ));
        }
        Ok(Arc::new(RingHashBuilder(o)))
    }
}

struct RingHashBuilder(RingHashOptions);

impl LoadBalancerBuilder for RingHashBuilder {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        Box::new(Ring::new(
            endpoints,
            self.0.minimum_ring_size,
            self.0.maximum_ring_size,
        ))
    }
}

/// The ring: entry hashes in ascending order and, beside them, the index
/// of the endpoint owning each entry.
struct Ring {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
    endpoints: usize,
}

impl Ring {
    fn new(endpoints: &[Arc<Endpoint>], min_size: u64, max_size: u64) -> Self {
        let counts = entry_counts(
            &endpoints
                .iter()
                .map(|e| e.weight.max(1))
                .collect::<Vec<_>>(),
            min_size,
            max_size,
        );
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        let mut key = String::new();
        for (i, (e, &count)) in endpoints.iter().zip(&counts).enumerate() {
            let identity = e.hash_identity();
            for k in 0..count {
                key.clear();
                let _ = write!(key, "{identity}_{k}");
                entries.push((hash_key(key.as_bytes()), i as u32));
            }
        }
        entries.sort_unstable();
        Self {
            hashes: entries.iter().map(|&(h, _)| h).collect(),
            owners: entries.iter().map(|&(_, i)| i).collect(),
            endpoints: endpoints.len(),
        }
    }
}

/// Entries per endpoint for `weights` (all >= 1); see the module doc.
fn entry_counts(weights: &[u32], min_size: u64, max_size: u64) -> Vec<u64> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return Vec::new();
    }
    if total > max_size {
        // Even one entry per unit of weight is too many: scale down, at
        // least one entry each.
        return weights
            .iter()
            .map(|&w| (u64::from(w) * max_size / total).max(1))
            .collect();
    }
    let mut per_weight = min_size.div_ceil(total).max(1).next_power_of_two();
    while per_weight > 1 && total * per_weight > max_size {
        per_weight /= 2;
    }
    weights.iter().map(|&w| u64::from(w) * per_weight).collect()
}

impl LoadBalancer for Ring {
    fn pick(&self, ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.hashes.len();
        if len == 0 {
            return None;
        }
        let hash = ctx.hash.unwrap_or_else(rand::random);
        let start = self.hashes.partition_point(|&h| h < hash);
        let owner = |k: usize| self.owners[(start + k) % len] as usize;
        let probes = len.min(PROBES_BEFORE_CHECK);
        if let Some(i) = (0..probes).map(owner).find(|&i| available(i)) {
            return Some(i);
        }
        // Many unavailable entries in a row: walk the rest of the ring only
        // when some endpoint is available at all.
        if !(0..self.endpoints).any(available) {
            return None;
        }
        (probes..len).map(owner).find(|&i| available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint(i: usize, w: u32) -> Arc<Endpoint> {
        let addr = format!("10.0.{}.{}:80", i / 256, i % 256).parse().unwrap();
        Arc::new(Endpoint::new(addr, w))
    }

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| endpoint(i, w))
            .collect()
    }

    fn build(config: serde_json::Value, eps: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        RingHashFactory.create(&config).unwrap().build(eps)
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_key(format!("key-{i}").as_bytes()))
            .collect()
    }

    /// The endpoint address each key maps to.
    fn assign(
        lb: &dyn LoadBalancer,
        eps: &[Arc<Endpoint>],
        keys: &[u64],
    ) -> Vec<std::net::SocketAddr> {
        keys.iter()
            .map(|&h| eps[lb.pick(&LbContext { hash: Some(h) }, &|_| true).unwrap()].address)
            .collect()
    }

    fn shares(lb: &dyn LoadBalancer, n: usize, keys: &[u64]) -> Vec<usize> {
        let mut c = vec![0; n];
        for &h in keys {
            c[lb.pick(&LbContext { hash: Some(h) }, &|_| true).unwrap()] += 1;
        }
        c
    }

    fn max_rel_error(c: &[usize], weights: &[u32]) -> f64 {
        let total: usize = c.iter().sum();
        let wsum: u32 = weights.iter().sum();
        c.iter()
            .zip(weights)
            .map(|(&got, &w)| {
                let want = total as f64 * f64::from(w) / f64::from(wsum);
                (got as f64 - want).abs() / want
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn ring_sizes() {
        // 10 equal endpoints: ceil(1024 / 10) = 103 -> 128 per endpoint.
        assert_eq!(entry_counts(&[1; 10], 1024, MAX_RING_SIZE), vec![128; 10]);
        // 9 and 11 endpoints keep 128 each: others' entries do not change.
        assert_eq!(entry_counts(&[1; 9], 1024, MAX_RING_SIZE), vec![128; 9]);
        assert_eq!(entry_counts(&[1; 11], 1024, MAX_RING_SIZE), vec![128; 11]);
        assert_eq!(entry_counts(&[1, 2], 1024, MAX_RING_SIZE), vec![512, 1024]);
        // Capped by the maximum, then scaled down past one per weight.
        assert_eq!(entry_counts(&[1, 3], 1024, 100), vec![16, 48]);
        assert_eq!(entry_counts(&[100, 300], 16, 40), vec![10, 30]);
        assert_eq!(entry_counts(&[1, 1000], 1, 10), vec![1, 9]);
    }

    #[test]
    fn spread_equal_and_weighted() {
        let keys = keys(100_000);
        // Default ring (128 entries per endpoint for 10): every endpoint
        // within ±15% of its share (measured max error 10.7%).
        let eps = endpoints(&[1; 10]);
        let lb = build(serde_json::Value::Null, &eps);
        let err = max_rel_error(&shares(&*lb, 10, &keys), &[1; 10]);
        assert!(err < 0.15, "default ring: max error {err:.3}");
        // A larger ring (2048 per endpoint): within ±5% (measured 2.4%).
        let big = json!({"minimum_ring_size": 16_384});
        let lb = build(big.clone(), &eps);
        let err = max_rel_error(&shares(&*lb, 10, &keys), &[1; 10]);
        assert!(err < 0.05, "16k ring: max error {err:.3}");
        // Weights 1:2 (alternating, 10 endpoints): within ±5% of 1/15 and
        // 2/15 (measured 1.5%).
        let weights = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2];
        let eps = endpoints(&weights);
        let lb = build(big, &eps);
        let err = max_rel_error(&shares(&*lb, 10, &keys), &weights);
        assert!(err < 0.05, "weighted: max error {err:.3}");
    }

    #[test]
    fn consistent_on_remove_and_add() {
        let keys = keys(10_000);
        let eps = endpoints(&[1; 10]);
        let before = assign(&*build(serde_json::Value::Null, &eps), &eps, &keys);

        // Remove endpoint 3: its keys move, others' keys stay (< 2% moved).
        // Measured 0: 9 and 10 endpoints both get 128 entries each. With
        // Envoy's exact scaling (103 -> 114 entries each) 6.8% would move.
        let removed = eps[3].address;
        let fewer: Vec<_> = eps
            .iter()
            .filter(|e| e.address != removed)
            .cloned()
            .collect();
        let after = assign(&*build(serde_json::Value::Null, &fewer), &fewer, &keys);
        let moved_from_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != removed && b != a)
            .count();
        assert!(
            (moved_from_others as f64) < 0.02 * keys.len() as f64,
            "{moved_from_others} keys of other endpoints moved"
        );
        assert!(after.iter().all(|a| *a != removed));

        // Add an 11th: about 1/11 of the keys move, all to the new one.
        let mut more = eps.clone();
        more.push(endpoint(10, 1));
        let added = more[10].address;
        let after = assign(&*build(serde_json::Value::Null, &more), &more, &keys);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        let fraction = moved.len() as f64 / keys.len() as f64;
        assert!(fraction < 1.0 / 11.0 + 0.03, "{fraction:.3} of keys moved");
        assert!(moved.iter().all(|(_, a)| **a == added));
    }

    #[test]
    fn skips_unavailable_keeping_other_keys() {
        let keys = keys(5_000);
        let eps = endpoints(&[1; 10]);
        let lb = build(serde_json::Value::Null, &eps);
        let home: Vec<usize> = keys
            .iter()
            .map(|&h| lb.pick(&LbContext { hash: Some(h) }, &|_| true).unwrap())
            .collect();
        for (&h, &was) in keys.iter().zip(&home) {
            let now = lb.pick(&LbContext { hash: Some(h) }, &|i| i != 4).unwrap();
            assert_ne!(now, 4);
            if was != 4 {
                assert_eq!(now, was, "a key of endpoint {was} moved");
            }
            // Only endpoint 7 left.
            assert_eq!(lb.pick(&LbContext { hash: Some(h) }, &|i| i == 7), Some(7));
            assert_eq!(lb.pick(&LbContext { hash: Some(h) }, &|_| false), None);
        }
        // Without a hash: random, but available.
        for _ in 0..1000 {
            assert_ne!(lb.pick(&LbContext::default(), &|i| i != 2), Some(2));
        }
        assert_eq!(
            build(serde_json::Value::Null, &[]).pick(&LbContext::default(), &|_| true),
            None
        );
    }

    #[test]
    fn options() {
        assert!(
            RingHashFactory
                .create(&json!({"minimum_ring_size": 64, "maximum_ring_size": 128}))
                .is_ok()
        );
        let e = RingHashFactory
            .create(&json!({"ring_size": 64}))
            .err()
            .unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = RingHashFactory
            .create(&json!({"minimum_ring_size": 0}))
            .err()
            .unwrap();
        assert_eq!(e.path, "minimum_ring_size");
        let e = RingHashFactory
            .create(&json!({"minimum_ring_size": 2048, "maximum_ring_size": 1024}))
            .err()
            .unwrap();
        assert_eq!(e.path, "minimum_ring_size");
        let e = RingHashFactory
            .create(&json!({"maximum_ring_size": 16_777_216}))
            .err()
            .unwrap();
        assert_eq!(e.path, "maximum_ring_size");
        let e = RingHashFactory
            .create(&json!({"minimum_ring_size": "big"}))
            .err()
            .unwrap();
        assert_eq!(e.path, "minimum_ring_size");
    }
}
