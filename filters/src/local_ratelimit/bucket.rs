//! A lock-free token bucket: one `AtomicU64` packs the tokens left (high
//! 32 bits) and the last fill tick (low 32 bits, counted in fill intervals
//! since the bucket was made). A take is one load and one CAS; a refill is
//! folded into the same CAS, so concurrent takers never admit more than
//! the bucket holds.

use meshgate_core::BuildError;
use meshgate_core::config::local_ratelimit::TokenBucketConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Envoy's floor for `fill_interval` (more often is too aggressive).
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

pub struct TokenBucket {
    state: AtomicU64,
    max_tokens: u32,
    tokens_per_fill: u32,
    interval_ns: u64,
    /// `clock()` when the bucket was made: ticks count from here.
    base_ns: u64,
}

/// The outcome of a take, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    /// Tokens left after this take.
    pub remaining: u32,
}

fn pack(tokens: u32, tick: u32) -> u64 {
    (u64::from(tokens) << 32) | u64::from(tick)
}

fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// The coarse monotonic clock in nanoseconds (a vDSO read; its 1-4 ms
/// grain is far below the 50 ms minimum interval).
pub fn clock() -> u64 {
    meshgate_core::clock::coarse().as_nanos() as u64
}

impl TokenBucket {
    /// Checks the config; errors name the field under `path`.
    pub fn build(path: &str, c: &TokenBucketConfig) -> Result<Self, BuildError> {
        let field = |f: &str| {
            if path.is_empty() {
                f.to_string()
            } else {
                format!("{path}.{f}")
            }
        };
        if c.max_tokens == 0 {
            return Err(BuildError::new(field("max_tokens"), "must be >= 1"));
        }
        let per_fill = c.tokens_per_fill.unwrap_or(1);
        if per_fill == 0 {
            return Err(BuildError::new(field("tokens_per_fill"), "must be >= 1"));
        }
        if c.fill_interval < MIN_FILL_INTERVAL {
            return Err(BuildError::new(field("fill_interval"), "must be >= 50ms"));
        }
        Ok(Self::new(c.max_tokens, per_fill, c.fill_interval, clock()))
    }

    /// A full bucket.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, interval: Duration, now_ns: u64) -> Self {
        Self {
            state: AtomicU64::new(pack(max_tokens, 0)),
            max_tokens,
            tokens_per_fill,
            interval_ns: (interval.as_nanos() as u64).max(1),
            base_ns: now_ns,
        }
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    fn tick(&self, now_ns: u64) -> u32 {
        // Wraps after 2^32 intervals (6.8 years at 50 ms); the wrapping
        // difference below stays right across the wrap.
        (now_ns.saturating_sub(self.base_ns) / self.interval_ns) as u32
    }

    fn refilled(&self, tokens: u32, last: u32, now_tick: u32) -> u32 {
        let fills = now_tick.wrapping_sub(last);
        if fills == 0 || fills > u32::MAX / 2 {
            return tokens;
        }
        let add = u64::from(fills) * u64::from(self.tokens_per_fill);
        (u64::from(tokens) + add).min(u64::from(self.max_tokens)) as u32
    }

    /// Takes one token if there is one (at `now_ns` on `clock()`).
    pub fn take_at(&self, now_ns: u64) -> Taken {
        let now_tick = self.tick(now_ns);
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (tokens, last) = unpack(cur);
            let t = self.refilled(tokens, last, now_tick);
            // The tick only moves forward: a taker whose clock read is
            // older than the last fill must not rewind it (that would
            // grant the same fill twice).
            let fills = now_tick.wrapping_sub(last);
            let tick = if fills == 0 || fills > u32::MAX / 2 {
                last
            } else {
                now_tick
            };
            if t == 0 {
                return Taken {
                    allowed: false,
                    remaining: 0,
                };
            }
            match self.state.compare_exchange_weak(
                cur,
                pack(t - 1, tick),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Taken {
                        allowed: true,
                        remaining: t - 1,
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn take(&self) -> Taken {
        self.take_at(clock())
    }

    /// Tokens available now, without taking one.
    #[cfg(test)]
    pub fn available_at(&self, now_ns: u64) -> u32 {
        let (tokens, last) = unpack(self.state.load(Ordering::Relaxed));
        self.refilled(tokens, last, self.tick(now_ns))
    }

    /// Time until the next fill.
    pub fn until_next_fill_at(&self, now_ns: u64) -> Duration {
        let into = now_ns.saturating_sub(self.base_ns) % self.interval_ns;
        Duration::from_nanos(self.interval_ns - into)
    }

    /// Tokens added per second, to order descriptors (Envoy consumes the
    /// strictest first).
    pub fn rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) * 1e9 / self.interval_ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    const MS: u64 = 1_000_000;

    #[test]
    fn takes_max_tokens_then_refills_per_interval_up_to_max() {
        let b = TokenBucket::new(3, 2, Duration::from_millis(100), 1000 * MS);
        let t0 = 1000 * MS;
        for i in 0..3 {
            let t = b.take_at(t0);
            assert!(t.allowed);
            assert_eq!(t.remaining, 2 - i);
        }
        assert!(!b.take_at(t0 + 99 * MS).allowed);
        // One interval: two tokens.
        assert_eq!(b.available_at(t0 + 100 * MS), 2);
        assert!(b.take_at(t0 + 100 * MS).allowed);
        assert!(b.take_at(t0 + 150 * MS).allowed);
        assert!(!b.take_at(t0 + 199 * MS).allowed);
        // Ten intervals later: capped at max_tokens.
        assert_eq!(b.available_at(t0 + 1200 * MS), 3);
        assert_eq!(
            b.until_next_fill_at(t0 + 1230 * MS),
            Duration::from_millis(70)
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let c = |m, p, i| TokenBucketConfig {
            max_tokens: m,
            tokens_per_fill: p,
            fill_interval: Duration::from_millis(i),
        };
        let e = TokenBucket::build("token_bucket", &c(0, None, 100))
            .err()
            .unwrap();
        assert_eq!(e.path, "token_bucket.max_tokens");
        let e = TokenBucket::build("token_bucket", &c(1, Some(0), 100))
            .err()
            .unwrap();
        assert_eq!(e.path, "token_bucket.tokens_per_fill");
        let e = TokenBucket::build("", &c(1, None, 10)).err().unwrap();
        assert_eq!(e.path, "fill_interval");
    }

    #[test]
    fn concurrent_takers_never_over_admit() {
        // A long interval: no refill during the test, so exactly
        // max_tokens takes may succeed across all threads.
        let b = Arc::new(TokenBucket::new(
            10_000,
            1,
            Duration::from_secs(3600),
            clock(),
        ));
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, a) = (b.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if b.take().allowed {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 10_000);
        assert!(!b.take().allowed);
    }

    #[test]
    fn concurrent_takers_with_refills_admit_at_most_the_refilled_budget() {
        let start = 5_000 * MS;
        let b = Arc::new(TokenBucket::new(100, 10, Duration::from_millis(50), start));
        let admitted = Arc::new(AtomicU32::new(0));
        // Each thread walks the same simulated 1 s: 20 fills of 10.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, a) = (b.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        if b.take_at(start + i * 50_000).allowed {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = admitted.load(Ordering::Relaxed);
        assert!(n <= 100 + 19 * 10, "{n}");
        assert!(n >= 100, "{n}");
    }
}
