//! Health-check jitter end to end (Envoy's `initial_jitter`,
//! `interval_jitter` and `interval_jitter_percent`): the real binary checks
//! two clusters of 20 real backends each (`meshgate_tests::hc_backend`,
//! which note when each check arrives), one with jitter and one without,
//! started together, so the plain cluster is the clock the jittered one
//! is measured against.

use meshgate_tests::hc_backend::HcBackend;
use meshgate_tests::*;
use std::time::{Duration, Instant};

const N: usize = 20;

fn cluster(name: &str, backends: &[HcBackend], jitter: &str) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect();
    format!(
        "  - name: {name}\n    endpoints: [{}]\n    health_checks:\n      - timeout: 1s\n        interval: 1s\n{jitter}        unhealthy_threshold: 1\n        healthy_threshold: 1\n        http_health_check: {{path: /healthz}}\n",
        eps.join(", ")
    )
}

/// Checks of each endpoint looked at: the first, then the second (a
/// random phase of the interval after the first: meshgate spreads an
/// endpoint's checks over the interval), then three gaps of a whole
/// interval each.
const CHECKS: usize = 5;

/// Gaps between the successive checks of one backend after its second.
fn gaps_of(b: &HcBackend) -> Vec<Duration> {
    let t = b.check_times();
    t[1..CHECKS].windows(2).map(|w| w[1] - w[0]).collect()
}

fn gaps(backends: &[HcBackend]) -> Vec<Duration> {
    backends.iter().flat_map(gaps_of).collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// With `interval: 1s`, `interval_jitter: 300ms`,
/// `interval_jitter_percent: 30` (up to 300 ms more) and
/// `initial_jitter: 1s`: the endpoints' first checks spread over up to
/// 1 s after the plain cluster's (which all come at once), and each gap
/// between two checks of one endpoint (from the second check on) lies in
/// [1 s, 1.6 s) (plus up to 100 ms to meet the checker's grid of slots,
/// and scheduling slack), 300 ms longer than the plain cluster's on average
/// (150 ms from each field: both count). 20 endpoints x 3 gaps make the
/// statistics firm: the chance that 20 uniform first checks fall within
/// 500 ms of each other is about 4e-5; the mean of 60 gaps is 300 ms
/// +/- 16 ms (one standard deviation) above the plain mean, so the bounds
/// [220 ms, 400 ms] hold but for about 1e-6, and a field left out (150 ms)
/// fails them.
#[test]
fn checks_are_spread_by_initial_and_interval_jitter() {
    let plain: Vec<HcBackend> = (0..N).map(|_| HcBackend::start("p")).collect();
    let jittered: Vec<HcBackend> = (0..N).map(|_| HcBackend::start("j")).collect();
    let port = free_port();
    let config = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: plain}}
clusters:
{}{}"#,
        cluster("plain", &plain, ""),
        cluster(
            "jittered",
            &jittered,
            "        interval_jitter: 300ms\n        interval_jitter_percent: 30\n        initial_jitter: 1s\n"
        ),
    );
    let started = Instant::now();
    let _mg = Meshgate::start(&config);
    // Five checks of every endpoint (up to 7.8 s for the jittered
    // cluster: up to 1 s, up to 1.6 s, then 3 x up to 1.7 s).
    wait_until_within(15, "five checks of every endpoint", || {
        plain
            .iter()
            .chain(&jittered)
            .all(|b| b.check_times().len() >= CHECKS)
    });
    let first =
        |bs: &[HcBackend]| -> Vec<Instant> { bs.iter().map(|b| b.check_times()[0]).collect() };
    let (pf, jf) = (first(&plain), first(&jittered));
    let p0 = *pf.iter().min().unwrap();
    let p_spread = *pf.iter().max().unwrap() - p0;
    let j_min = *jf.iter().min().unwrap();
    let j_max = *jf.iter().max().unwrap();
    assert!(p0 > started);
    // Without jitter the first checks come together.
    assert!(
        p_spread < Duration::from_millis(500),
        "plain first checks spread over {p_spread:?}"
    );
    // With `initial_jitter: 1s` they spread, none before the plain ones
    // (a little slack: the two clusters' checkers start one after the
    // other) and none much past 1 s after them.
    assert!(
        j_max - j_min >= Duration::from_millis(500),
        "jittered first checks spread over only {:?}",
        j_max - j_min
    );
    assert!(
        j_min + Duration::from_millis(100) >= p0,
        "a jittered first check came {:?} before the plain ones",
        p0 - j_min
    );
    assert!(
        j_max <= p0 + Duration::from_millis(1000 + 400),
        "a jittered first check came {:?} after the plain ones (initial_jitter 1s)",
        j_max - p0
    );
    // Gaps: 1 s each without jitter; in [1 s, 1.6 s) with it, varied;
    // give or take the checker's tick (62.5 ms here): a due check starts
    // up to a tick late, and the interval runs from when it was due, so
    // one gap may be up to a tick short when the check before it started
    // late. The upper slack (350 ms) is for the grid (up to 62.5 ms and
    // 100 ms) and a loaded machine.
    let slack = 350;
    let pg = gaps(&plain);
    let jg = gaps(&jittered);
    for g in &pg {
        assert!(
            (930..1000 + slack).contains(&ms(*g)),
            "plain gap {g:?}: {pg:?}"
        );
    }
    for g in &jg {
        assert!(
            (930..1600 + slack).contains(&ms(*g)),
            "jittered gap {g:?}: {jg:?}"
        );
    }
    let mean = |g: &[Duration]| g.iter().sum::<Duration>() / g.len() as u32;
    let (pm, jm) = (mean(&pg), mean(&jg));
    assert!(ms(pm) < 1150, "plain mean gap {pm:?}");
    let extra = ms(jm.saturating_sub(pm));
    eprintln!(
        "first checks: plain within {p_spread:?}, jittered within {:?} from {:?} after the plain ones; mean gaps: plain {pm:?}, jittered {jm:?}",
        j_max - j_min,
        j_min.saturating_duration_since(p0)
    );
    assert!(
        (220..400).contains(&extra),
        "jittered gaps are {extra} ms longer than plain ones on average (300 ms expected): {jg:?}"
    );
    // One endpoint's gaps differ from each other too (not one random
    // offset per endpoint): for most endpoints they span 50 ms or more.
    let varied = jittered
        .iter()
        .filter(|b| {
            let g = gaps_of(b);
            g.iter()
                .max()
                .unwrap()
                .saturating_sub(*g.iter().min().unwrap())
                >= Duration::from_millis(50)
        })
        .count();
    assert!(varied >= N / 2, "only {varied} of {N} endpoints' gaps vary");
}
