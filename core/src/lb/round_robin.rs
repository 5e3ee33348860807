//! The `round_robin` policy: smooth weighted round robin (nginx's
//! algorithm). For a small period (the sum of the weights, reduced by their
//! gcd) the whole sequence is precomputed once and picks index it with one
//! atomic counter; larger periods fall back to the classic smooth WRR state
//! behind a mutex. The counter starts at a random offset so a fleet of
//! proxies does not move in lockstep.

use super::{LbContext, LoadBalancer, LoadBalancerBuilder, LoadBalancerFactory};
use crate::cluster::Endpoint;
use crate::error::BuildError;
use serde::Deserialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Largest period (sum of gcd-reduced weights) that is precomputed.
const MAX_PERIOD: u64 = 65_536;
/// Largest `period * endpoints` (the work of precomputing) spent at build
/// time; above it the mutex-guarded smooth WRR is used instead.
const MAX_BUILD_WORK: u64 = 1 << 24;
/// Sequence positions probed for an available endpoint before checking
/// whether any endpoint is available at all.
const PROBES_BEFORE_SCAN: usize = 32;

/// `round_robin`'s `lb_config`: only `slow_start_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoundRobinOptions {
    /// Envoy's `slow_start_config` (`super::slow_start`).
    #[serde(default)]
    slow_start_config: Option<super::slow_start::SlowStartConfig>,
}

/// Registers `round_robin`.
pub struct RoundRobinFactory;

impl LoadBalancerFactory for RoundRobinFactory {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn create(
        &self,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError> {
        let o: RoundRobinOptions = crate::config::parse_typed(config)?;
        super::slow_start::wrap(Arc::new(RoundRobinBuilder), o.slow_start_config)
    }
}

struct RoundRobinBuilder;

impl LoadBalancerBuilder for RoundRobinBuilder {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight.max(1)).collect();
        Box::new(RoundRobin::new(&weights, MAX_PERIOD, MAX_BUILD_WORK))
    }
}

enum Schedule {
    /// No endpoints.
    Empty,
    /// All weights equal: the sequence is `0, 1, .., n-1`.
    Uniform { n: usize },
    /// One precomputed period of smooth WRR over `n` endpoints.
    Sequence { seq: Box<[u32]>, n: usize },
    /// Smooth WRR state for periods too long to precompute.
    Locked {
        weights: Box<[i64]>,
        current: Mutex<Vec<i64>>,
    },
}

struct RoundRobin {
    schedule: Schedule,
    counter: AtomicUsize,
}

impl RoundRobin {
    fn new(weights: &[u32], max_period: u64, max_work: u64) -> Self {
        let n = weights.len();
        if n == 0 {
            return Self {
                schedule: Schedule::Empty,
                counter: AtomicUsize::new(0),
            };
        }
        let g = weights.iter().fold(0u32, |g, &w| gcd(g, w));
        let reduced: Vec<u32> = weights.iter().map(|&w| w / g).collect();
        let period: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
        let schedule = if period == n as u64 {
            Schedule::Uniform { n }
        } else if period <= max_period && period.saturating_mul(n as u64) <= max_work {
            Schedule::Sequence {
                seq: smooth_sequence(&reduced).into_boxed_slice(),
                n,
            }
        } else {
            // A random start state (each current weight in [0, weight)) plays
            // the part of the random counter offset.
            let current = reduced
                .iter()
                .map(|&w| rand::random_range(0..i64::from(w)))
                .collect();
            Schedule::Locked {
                weights: reduced.iter().map(|&w| i64::from(w)).collect(),
                current: Mutex::new(current),
            }
        };
        let len = match &schedule {
            Schedule::Uniform { n } => *n,
            Schedule::Sequence { seq, .. } => seq.len(),
            _ => 1,
        };
        Self {
            schedule,
            counter: AtomicUsize::new(rand::random_range(0..len)),
        }
    }

    /// Walks the cyclic sequence `at(ticket)`; every skipped position takes
    /// a new ticket, so the picks are the sequence with the unavailable
    /// entries deleted (proportions among the available ones are kept).
    fn pick_cyclic(
        &self,
        len: usize,
        n: usize,
        at: impl Fn(usize) -> usize,
        available: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut ticket = self.counter.fetch_add(1, Ordering::Relaxed);
        for _ in 0..len.min(PROBES_BEFORE_SCAN) {
            let i = at(ticket % len);
            if available(i) {
                return Some(i);
            }
            ticket = self.counter.fetch_add(1, Ordering::Relaxed);
        }
        // Many unavailable in a row: take the first available endpoint
        // after this position (None when there is none).
        let start = at(ticket % len);
        (0..n).map(|k| (start + k) % n).find(|&i| available(i))
    }
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, _ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        match &self.schedule {
            Schedule::Empty => None,
            Schedule::Uniform { n } => self.pick_cyclic(*n, *n, |p| p, available),
            Schedule::Sequence { seq, n } => {
                self.pick_cyclic(seq.len(), *n, |p| seq[p] as usize, available)
            }
            Schedule::Locked { weights, current } => {
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                smooth_step(weights, &mut current, available)
            }
        }
    }
}

/// One step of nginx's smooth WRR over the available endpoints: each adds
/// its weight to its current weight, the largest (first on a tie) is chosen
/// and loses the total.
fn smooth_step(
    weights: &[i64],
    current: &mut [i64],
    available: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<(usize, i64)> = None;
    for (i, (&w, c)) in weights.iter().zip(current.iter_mut()).enumerate() {
        if !available(i) {
            continue;
        }
        *c += w;
        total += w;
        if best.is_none_or(|(_, bc)| *c > bc) {
            best = Some((i, *c));
        }
    }
    let (b, _) = best?;
    current[b] -= total;
    Some(b)
}

/// One period of smooth WRR for `weights` (all >= 1): `sum(weights)`
/// indices, endpoint `i` appearing `weights[i]` times.
fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0usize;
        let mut best_c = i64::MIN;
        for (i, (&w, c)) in weights.iter().zip(current.iter_mut()).enumerate() {
            *c += i64::from(w);
            if *c > best_c {
                best_c = *c;
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
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
        RoundRobinFactory
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

    #[test]
    fn nginx_sequence() {
        // nginx's documented example: weights a=5, b=1, c=1.
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_sequence(&[1, 2, 3]), vec![2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn exact_proportions_over_full_periods() {
        // Weights 1, 2, 3: period 6; any 6 * k consecutive picks are exact.
        let lb = build(&[1, 2, 3]);
        assert_eq!(counts(&*lb, 3, 6 * 1000, &|_| true), vec![1000, 2000, 3000]);
        // Weights with a common divisor reduce to the same period.
        let lb = build(&[10, 20, 30]);
        assert_eq!(counts(&*lb, 3, 6 * 10, &|_| true), vec![10, 20, 30]);
        // Equal weights.
        let lb = build(&[7, 7, 7, 7]);
        assert_eq!(counts(&*lb, 4, 400, &|_| true), vec![100; 4]);
    }

    #[test]
    fn smooth_no_long_runs() {
        // a=5, b=1, c=1: plain WRR would give a five times in a row; the
        // smooth cyclic sequence has at most 4 (2 at the end of one period,
        // 2 at the start of the next).
        let lb = build(&[5, 1, 1]);
        let (mut run, mut max_run) = (0, 0);
        let mut c = [0usize; 3];
        for _ in 0..7 * 100 {
            let i = lb.pick(&LbContext::default(), &|_| true).unwrap();
            c[i] += 1;
            run = if i == 0 { run + 1 } else { 0 };
            max_run = max_run.max(run);
        }
        assert!(max_run <= 4, "a picked {max_run} times in a row");
        assert_eq!(c, [500, 100, 100]);
    }

    #[test]
    fn skips_unavailable_keeping_proportions() {
        let lb = build(&[1, 1, 1, 1]);
        let c = counts(&*lb, 4, 3000, &|i| i != 1);
        assert_eq!(c, vec![1000, 0, 1000, 1000]);

        // Weights 1, 2, 3 with the weight-3 endpoint out: 1:2 exactly.
        let lb = build(&[1, 2, 3]);
        let c = counts(&*lb, 3, 3000, &|i| i != 2);
        assert_eq!(c, vec![1000, 2000, 0]);

        // Only one left.
        let c = counts(&*lb, 3, 100, &|i| i == 0);
        assert_eq!(c, vec![100, 0, 0]);

        assert_eq!(lb.pick(&LbContext::default(), &|_| false), None);
        assert_eq!(build(&[]).pick(&LbContext::default(), &|_| true), None);
    }

    #[test]
    fn long_unavailable_run_falls_back_to_scan() {
        // Endpoint 0 fills 1000 of 1001 positions; with it out every pick
        // must still find endpoint 1.
        let lb = build(&[1000, 1]);
        let c = counts(&*lb, 2, 500, &|i| i == 1);
        assert_eq!(c, vec![0, 500]);
        assert_eq!(lb.pick(&LbContext::default(), &|_| false), None);
    }

    #[test]
    fn locked_fallback_matches_smooth_wrr() {
        // Force the mutex path with a tiny period limit.
        let lb = RoundRobin::new(&[1, 2, 3], 4, MAX_BUILD_WORK);
        assert!(matches!(lb.schedule, Schedule::Locked { .. }));
        assert_eq!(counts(&lb, 3, 6 * 500, &|_| true), vec![500, 1000, 1500]);
        let c = counts(&lb, 3, 3 * 500, &|i| i != 2);
        // The random start state may shift the first period by one pick.
        assert!(
            (c[0] as i64 - 500).abs() <= 2 && (c[1] as i64 - 1000).abs() <= 2,
            "{c:?}"
        );
        assert_eq!(c[2], 0);
        assert_eq!(lb.pick(&LbContext::default(), &|_| false), None);

        // A huge total weight takes the same path by default.
        let lb = RoundRobin::new(&[40_000, 30_001], MAX_PERIOD, MAX_BUILD_WORK);
        assert!(matches!(lb.schedule, Schedule::Locked { .. }));
        let c = counts(&lb, 2, 70_001, &|_| true);
        assert!((c[0] as i64 - 40_000).abs() <= 2, "{c:?}");
    }

    #[test]
    fn options() {
        assert!(RoundRobinFactory.create(&json!({})).is_ok());
        let e = RoundRobinFactory
            .create(&json!({"weight": 3}))
            .err()
            .unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
