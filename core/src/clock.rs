//! Clocks for the hot path.
//!
//! `coarse()` reads `CLOCK_MONOTONIC_COARSE`: the kernel's monotonic clock
//! at its tick's grain (1 to 4 ms), read from the vDSO data page without a
//! time-stamp-counter read, so it costs a fraction of `Instant::now()` (on
//! this project's VM the TSC read behind `Instant::now()` was a visible
//! part of a proxied request; benches/RESULTS.md). It serves timestamps
//! that need no finer grain, such as how long a pooled connection has been
//! idle; latency figures keep `Instant`.

use std::time::Duration;

/// The coarse monotonic clock, as time since an unspecified start.
pub fn coarse() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    // With a valid pointer and a clock that every Linux since 2.6.32 has,
    // the call cannot fail.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_is_monotonic_and_follows_the_precise_clock() {
        let a = coarse();
        let t = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let b = coarse();
        assert!(b >= a);
        let coarse_gap = b - a;
        let precise_gap = t.elapsed();
        // Within a few ticks of the precise clock.
        assert!(
            coarse_gap + Duration::from_millis(10) >= precise_gap,
            "{coarse_gap:?} vs {precise_gap:?}"
        );
        assert!(
            coarse_gap <= precise_gap + Duration::from_millis(10),
            "{coarse_gap:?} vs {precise_gap:?}"
        );
    }
}
