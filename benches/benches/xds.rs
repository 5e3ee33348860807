//! xDS update latency, throughput while swapping and memory, end to end:
//! the release binary (`MESHGATE_BIN`, else target/release/meshgate) fed by
//! the in-process management server of `meshgate_tests::xds`.
//!
//! 1. Time from a RouteConfiguration DiscoveryResponse to the new table
//!    serving (the `/probe` route answers the new version), for 10 routes
//!    over 10 clusters and 10,000 routes over 1,000 clusters; median and
//!    max of 7 pushes.
//! 2. Requests/s of keep-alive clients through the proxy, steady vs. while
//!    the route configuration is swapped ten times a second.
//! 3. Resident memory of the process with each table.
//!
//! 4. With `XDS_BENCH_CLUSTERS=N` instead: the time from a CDS response
//!    that changes one cluster (its endpoint) to that cluster serving,
//!    with N clusters and with 1, over state-of-the-world and delta xDS,
//!    timed from the response leaving the management server (and from the
//!    push, the test server's own diff included);
//!    and the resident memory per cluster (RSS with N minus RSS with 1,
//!    over N - 1).
//!
//! Run: `cargo bench -p meshgate-benches --bench xds`
//! (`XDS_BENCH_CLUSTERS=10000 cargo bench -p meshgate-benches --bench xds`)

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::{Meshgate, free_port};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Pushes a new version and waits (tight polling) until it serves.
fn push_and_time(mgmt: &Mgmt, port: u16, routes: usize, clusters: usize, v: &str) -> Duration {
    let table = many_routes("r", routes, clusters, v);
    let t0 = Instant::now();
    mgmt.set(ROUTE, v, vec![table]);
    let mut conn = None;
    loop {
        if request(&mut conn, port, "/probe").as_deref() == Some(v) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v} never served");
    }
}

fn scenario(backend: &HttpBackend, routes: usize, clusters: usize) {
    let port = free_port();
    let mgmt = Mgmt::start(free_port());
    mgmt.set(
        CLUSTER,
        "1",
        (0..clusters)
            .map(|j| static_cluster(&format!("c{j}"), backend.addr))
            .collect(),
    );
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "v0", vec![many_routes("r", routes, clusters, "v0")]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/probe", "v0");
    let mut times: Vec<Duration> = (1..=7)
        .map(|i| push_and_time(&mgmt, port, routes, clusters, &format!("v{i}")))
        .collect();
    times.sort();
    println!(
        "routes={routes} clusters={clusters}: DiscoveryResponse -> serving: median {:.1} ms, max {:.1} ms; RSS {} KiB",
        times[3].as_secs_f64() * 1e3,
        times[6].as_secs_f64() * 1e3,
        rss_kib(mg.child.id())
    );

    if routes == 10 {
        // Throughput: steady, then swapping ten times a second, twice.
        for round in 0..2 {
            let load = Load::start(port, 4);
            std::thread::sleep(Duration::from_millis(500));
            let a = load.ok();
            std::thread::sleep(Duration::from_secs(5));
            let steady = (load.ok() - a) as f64 / 5.0;
            let b = load.ok();
            let t0 = Instant::now();
            let mut i = 0;
            while t0.elapsed() < Duration::from_secs(5) {
                i += 1;
                mgmt.set(
                    ROUTE,
                    &format!("s{round}-{i}"),
                    vec![many_routes("r", routes, clusters, &format!("s{i}"))],
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let swapping = (load.ok() - b) as f64 / t0.elapsed().as_secs_f64();
            let (_, failed) = load.finish();
            println!(
                "round {round}: 4 keep-alive clients: steady {steady:.0} req/s, swapping 10/s ({i} swaps) {swapping:.0} req/s ({:+.1} %), failed {failed}",
                (swapping / steady - 1.0) * 100.0
            );
        }
    }
}

/// One cluster's update among `n`, over `delta` or state of the world:
/// median and max time to serving over 7 pushes (`XDS_BENCH_PUSHES`), measured from the
/// response leaving the management server (the client's cost: what the
/// test server spends finding what changed among `n` is left out), the
/// median from the push (`Mgmt::set`, the test server's diff included),
/// and the RSS at the end.
fn cluster_update(a: &HttpBackend, b: &HttpBackend, n: usize, delta: bool) -> Figures {
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let clusters = |target: std::net::SocketAddr| -> Vec<_> {
        (0..n)
            .map(|i| static_cluster(&format!("c{i}"), if i == 0 { target } else { a.addr }))
            .collect()
    };
    mgmt.set(CLUSTER, "0", clusters(a.addr));
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("c0", 1)])]);
    let boot = if delta {
        bootstrap_delta(mgmt.addr.port())
    } else {
        bootstrap(mgmt.addr.port())
    };
    let mg = Meshgate::start(&boot);
    wait_for(port, "/", "backend=a");
    let (mut times, mut pushed) = (Vec::new(), Vec::new());
    let mut conn = None;
    let pushes = pushes();
    for i in 1..=pushes {
        let (target, want) = if i % 2 == 1 {
            (b.addr, "backend=b")
        } else {
            (a.addr, "backend=a")
        };
        // Encoded before the clock starts: the bench's own work.
        let resources = clusters(target);
        let t0 = Instant::now();
        mgmt.set(CLUSTER, &i.to_string(), resources);
        loop {
            if request(&mut conn, port, "/").as_deref() == Some(want) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "{i} never served");
        }
        let served = Instant::now();
        let sent = mgmt
            .sent_at(CLUSTER, &i.to_string())
            .expect("the response that served was sent");
        times.push(served - sent);
        pushed.push(served - t0);
    }
    let mut inside = in_meshgate(&mg.log_text(), pushes);
    times.sort();
    pushed.sort();
    inside.sort();
    Figures {
        inside: inside.get(inside.len() / 2).copied(),
        median: times[pushes / 2],
        max: times[pushes - 1],
        from_push: pushed[pushes / 2],
        rss: rss_kib(mg.child.id()),
    }
}

/// Seconds since midnight of a log line's timestamp
/// (`2026-12-07T23:55:52.804335Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let (h, rest) = t.split_once(':')?;
    let (m, s) = rest.split_once(':')?;
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// meshgate's own time per push, from its debug log: from the last HTTP/2
/// DATA frame read before the CDS update `cds=i` was applied to the line
/// saying so (decoding, translation, composition, the snapshot build and
/// swap; the bench's own work and scheduling on a loaded machine left out).
fn in_meshgate(log: &str, pushes: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut read = None;
    let mut want = 1;
    for line in log.lines() {
        if line.contains("received frame=Data") {
            read = log_time(line);
        } else if line.contains("dynamic config applied") && line.contains(&format!(" cds={want} "))
        {
            if let (Some(r), Some(a)) = (read, log_time(line)) {
                let d = if a < r { a + 86400.0 - r } else { a - r };
                out.push(Duration::from_secs_f64(d));
            }
            want += 1;
            if want > pushes {
                break;
            }
        }
    }
    out
}

struct Figures {
    /// Median of `in_meshgate`.
    inside: Option<Duration>,
    median: Duration,
    max: Duration,
    from_push: Duration,
    rss: u64,
}

/// `XDS_BENCH_PUSHES`: pushes per figure (7 unless set; more to profile
/// the update path with `perf record -p`).
fn pushes() -> usize {
    std::env::var("XDS_BENCH_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(7)
}

fn cluster_updates(n: usize) {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let inside = |d: Option<Duration>| d.map_or("n/a".to_string(), |d| format!("{:.2} ms", ms(d)));
    // `XDS_BENCH_API=GRPC` or `DELTA_GRPC` runs only that one.
    let only = std::env::var("XDS_BENCH_API").ok();
    for delta in [false, true] {
        let api = if delta { "DELTA_GRPC" } else { "GRPC" };
        if only.as_deref().is_some_and(|o| o != api) {
            continue;
        }
        let one = cluster_update(&a, &b, 1, delta);
        let many = cluster_update(&a, &b, n, delta);
        println!(
            "{api}: one cluster changed among 1: median {:.1} ms, max {:.1} ms (from the push {:.1} ms; in meshgate {}); among {n}: median {:.1} ms, max {:.1} ms (from the push {:.1} ms; in meshgate {}); RSS {} KiB -> {} KiB ({:.1} KiB per cluster)",
            ms(one.median),
            ms(one.max),
            ms(one.from_push),
            inside(one.inside),
            ms(many.median),
            ms(many.max),
            ms(many.from_push),
            inside(many.inside),
            one.rss,
            many.rss,
            (many.rss.saturating_sub(one.rss)) as f64 / (n.max(2) - 1) as f64,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    if let Some(n) = std::env::var("XDS_BENCH_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cluster_updates(n);
        return;
    }
    let backend = HttpBackend::start("bench", Proto::Http1);
    // XDS_BENCH="routes:clusters,..." picks other sizes (e.g. to split
    // the cost of routes from that of clusters).
    let sizes = std::env::var("XDS_BENCH").unwrap_or_else(|_| "10:10,10000:1000".into());
    for s in sizes.split(',') {
        let (r, c) = s.split_once(':').expect("routes:clusters");
        scenario(&backend, r.parse().unwrap(), c.parse().unwrap());
    }
}
