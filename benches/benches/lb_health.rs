//! Endpoint pick cost through `Cluster::choose` (priority loads, health
//! filtering, the load balancer) for `round_robin` and `least_request`
//! over 10, 1,000 and 10,000 endpoints, every tenth one failed by
//! outlier detection: the pick must stay O(1) in the cluster size
//! (issue 18). Also the same clusters with zone-aware routing on (two
//! zones, no local cluster: the `lb_local_cluster_not_ok` path).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use meshgate_core::cluster::ClusterManager;
use meshgate_core::config::{ClusterConfig, ConfigSource};
use meshgate_core::lb::LbContext;
use meshgate_core::pool::HealthFlags;
use meshgate_core::registry::Registry;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const SIZES: [usize; 3] = [10, 1000, 10_000];

fn manager(lb: &str, n: usize, zone_aware: bool) -> ClusterManager {
    let eps: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "address": format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
                "locality": {"zone": if i % 2 == 0 { "a" } else { "b" }},
            })
        })
        .collect();
    let mut c = serde_json::json!({"name": "c", "lb_policy": lb, "endpoints": eps});
    if zone_aware {
        c["common_lb_config"] = serde_json::json!({"zone_aware_lb_config": {}});
    }
    let cfg: ClusterConfig = serde_json::from_value(c).unwrap();
    ClusterManager::build(
        &meshgate_core::config::ClusterList::from(vec![Arc::new(cfg)]),
        &Registry::new(),
        &ConfigSource::anonymous("bench"),
        false,
    )
    .unwrap()
}

fn bench_choose(c: &mut Criterion) {
    for (lb, zone_aware) in [
        ("round_robin", false),
        ("least_request", false),
        ("round_robin", true),
    ] {
        let tag = if zone_aware { "+zone_aware" } else { "" };
        let mut group = c.benchmark_group(format!("cluster_choose/{lb}{tag}"));
        for n in SIZES {
            let m = manager(lb, n, zone_aware);
            let cluster = m.get("c").unwrap().clone();
            for (i, e) in cluster.hosts().endpoints.iter().enumerate() {
                if i % 10 == 3 {
                    e.health_flags().set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
                }
            }
            let ctx = LbContext::default();
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| black_box(cluster.choose(black_box(&ctx), &[])))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_choose
}
criterion_main!(benches);
