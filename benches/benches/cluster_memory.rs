//! Heap bytes per cluster (issue 23's growth target: with 10,000 clusters,
//! at most 10 KB per cluster beyond its endpoints). Parses a config of N
//! static clusters of one endpoint each, builds the `ClusterManager` with
//! meshgate's metrics recorder installed (a cluster registers its series
//! there), and reports the live heap bytes each part holds per cluster:
//! the config model (which the snapshot keeps for `/config_dump`), and the
//! compiled clusters with their metrics. A counting allocator over the
//! system allocator measures live bytes, so `heaptrack` can also be run on
//! this binary for the call sites. Prints one line per N; not timed.

use meshgate_core::cluster::ClusterManager;
use meshgate_core::config::{ConfigSource, parse_str};
use meshgate_core::registry::Registry;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Live heap bytes (requested sizes).
struct CountingAlloc;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn yaml(n: usize) -> String {
    let mut s = String::from("clusters:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - name: c{i}\n    connect_timeout: 1s\n    endpoints: [{{address: '127.0.0.1:{}'}}]\n",
            20000 + i % 40000
        ));
    }
    s
}

/// (config model bytes, cluster manager bytes) for `n` clusters; both
/// kept alive until measured.
fn measure(n: usize) -> (isize, isize) {
    let src = yaml(n);
    let before = live();
    let (cfg, _) = parse_str(Path::new("clusters.yaml"), &src).expect("generated config");
    let parsed = live();
    let cm = ClusterManager::build(
        &cfg.clusters,
        &Registry::new(),
        &ConfigSource::anonymous("bench"),
        false,
    )
    .expect("cluster manager");
    let built = live();
    std::hint::black_box((&cfg, &cm));
    (parsed - before, built - parsed)
}

fn main() {
    let _handle = meshgate_core::metrics::install_recorder();
    println!(
        "inline sizes: ClusterConfig {} B, EndpointConfig {} B, Cluster {} B, Endpoint {} B",
        std::mem::size_of::<meshgate_core::config::ClusterConfig>(),
        std::mem::size_of::<meshgate_core::config::EndpointConfig>(),
        std::mem::size_of::<meshgate_core::cluster::Cluster>(),
        std::mem::size_of::<meshgate_core::cluster::Endpoint>(),
    );
    let counts: Vec<usize> = std::env::var("CLUSTERS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10_000]);
    let mut first: Option<(usize, isize, isize)> = None;
    for n in counts {
        let (model, built) = measure(n);
        match first {
            None => {
                println!("{n} clusters: config model {model} B, clusters and metrics {built} B");
                first = Some((n, model, built));
            }
            Some((n0, m0, b0)) => {
                let d = (n - n0) as isize;
                println!(
                    "{n} clusters: config model {model} B, clusters and metrics {built} B; \
                     per cluster: model {} B + clusters and metrics {} B = {} B",
                    (model - m0) / d,
                    (built - b0) / d,
                    (model - m0 + built - b0) / d
                );
            }
        }
    }
}
