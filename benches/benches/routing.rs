//! Route matching cost (`RouteTable::find_request`: virtual host by domain,
//! then the first matching route through the path index) with 10 and
//! 10,000 routes. Routes cycle through prefix, exact-path and
//! header-conditioned matches, with one regex route per 1,000 (and one in
//! the 10-route table), half of them not indexable. Requests hit the
//! first, a middle and the last route, or miss (every unindexed regex is
//! then evaluated). The linear scan
//! (`find_linear`, the reference semantics) is measured on the 10,000-route
//! table for comparison. A counting allocator checks, before measuring,
//! that matching allocates nothing.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use meshgate_core::cluster::ClusterManager;
use meshgate_core::config::{ConfigSource, parse_str};
use meshgate_core::registry::Registry;
use meshgate_core::router::{
    HeaderMatcherConfig, RouteActionConfig, RouteConfig, RouteEntryConfig, RouteMatchConfig,
    RouteTable, VirtualHostConfig,
};
use meshgate_core::stream::{Request, empty_body};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counts allocations, to check that matching allocates nothing.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn clusters() -> ClusterManager {
    let yaml = r#"
clusters:
  - name: a
    endpoints: [{address: "127.0.0.1:8081"}]
  - name: b
    endpoints: [{address: "127.0.0.1:8082"}]
"#;
    let (cfg, _) = parse_str(Path::new("bench.yaml"), yaml).expect("bench clusters");
    ClusterManager::build(
        &cfg.clusters,
        &Registry::new(),
        &ConfigSource::anonymous("bench"),
        false,
    )
    .expect("bench cluster manager")
}

/// Route `i`: kinds cycle by `i % 10`: 0-3 prefix `/svc{i}/`, 4-7 exact
/// `/svc{i}/exact`, 8 prefix `/svc{i}/` with a header condition, 9 a regex
/// once per 1,000 routes (`/re{i}/[0-9]+`, indexed by its literal prefix,
/// or `/(re{i}|rx{i})/[0-9]+`, which is not), else a prefix.
fn route(i: usize) -> RouteEntryConfig {
    let mut m = RouteMatchConfig::default();
    match i % 10 {
        0..=3 => m.prefix = Some(format!("/svc{i}/")),
        4..=7 => m.path = Some(format!("/svc{i}/exact")),
        8 => {
            m.prefix = Some(format!("/svc{i}/"));
            m.headers.push(HeaderMatcherConfig {
                name: "x-canary".into(),
                exact_match: Some("1".into()),
                ..Default::default()
            });
        }
        // One regex per 1,000 routes; every other one has an alternation,
        // which the index cannot use.
        _ => match ((i / 10) % 100, (i / 1000) % 2) {
            (0, 0) => m.safe_regex = Some(format!("/re{i}/[0-9]+")),
            (0, _) => m.safe_regex = Some(format!("/(re{i}|rx{i})/[0-9]+")),
            _ => m.prefix = Some(format!("/svc{i}/")),
        },
    }
    RouteEntryConfig {
        name: Some(format!("r{i}")),
        match_: m,
        route: Some(RouteActionConfig {
            cluster: Some(["a", "b"][i % 2].into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn table(n: usize, clusters: &ClusterManager) -> RouteTable {
    let cfg = RouteConfig {
        name: "bench".into(),
        virtual_hosts: vec![
            VirtualHostConfig {
                name: "other".into(),
                domains: vec!["other.example.com".into(), "*.other.org".into()],
                routes: vec![route(0)],
                ..Default::default()
            },
            VirtualHostConfig {
                name: "api".into(),
                domains: vec!["api.example.com".into(), "*.example.com".into(), "*".into()],
                routes: (0..n).map(route).collect(),
                ..Default::default()
            },
        ],
        validate_clusters: None,
        ignore_port_in_host_matching: None,
    };
    RouteTable::build(&cfg, clusters).expect("bench route table")
}

/// A request for route `i` (or a miss with `None`).
fn request(i: Option<usize>) -> Request {
    let path = match i {
        None => "/nothing/here?x=1".to_string(),
        Some(i) => match route(i).match_ {
            RouteMatchConfig {
                prefix: Some(p), ..
            } => format!("{p}users/42?page=2"),
            RouteMatchConfig { path: Some(p), .. } => format!("{p}?page=2"),
            _ => format!("/re{i}/123"),
        },
    };
    let mut req = Request::new(empty_body());
    *req.uri_mut() = path.parse().expect("uri");
    let h = req.headers_mut();
    h.insert("host", "api.example.com".parse().expect("host"));
    h.insert("user-agent", "bench/1.0".parse().expect("ua"));
    h.insert("accept", "*/*".parse().expect("accept"));
    h.insert("x-canary", "1".parse().expect("canary"));
    req
}

fn bench_find(c: &mut Criterion) {
    let cm = clusters();
    for n in [10usize, 10_000] {
        let t = table(n, &cm);
        let mut group = c.benchmark_group(format!("routing/{n}"));
        for (label, target) in [
            ("first", Some(0)),
            ("middle", Some(n / 2)),
            ("last", Some(n - 1)),
            ("miss", None),
        ] {
            let req = request(target);
            let found = t.find_request(&req).map(|(_, r)| r.index());
            assert_eq!(found, target, "bench request {label} must hit its route");
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 0..100 {
                black_box(t.find_request(black_box(&req)));
            }
            assert_eq!(
                ALLOCATIONS.load(Ordering::Relaxed),
                before,
                "route matching must not allocate ({n}/{label})"
            );
            group.bench_with_input(BenchmarkId::from_parameter(label), &req, |b, req| {
                b.iter(|| black_box(t.find_request(black_box(req)).is_some()))
            });
        }
        group.finish();
        if n == 10_000 {
            let mut group = c.benchmark_group(format!("routing_linear/{n}"));
            for (label, target) in [("middle", Some(n / 2)), ("last", Some(n - 1))] {
                let req = request(target);
                group.bench_with_input(BenchmarkId::from_parameter(label), &req, |b, req| {
                    b.iter(|| {
                        let input = meshgate_core::router::RouteInput::from_request(req);
                        black_box(t.find_linear(black_box(&input)).is_some())
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench_find
}
criterion_main!(benches);
