//! Load balancer `pick` cost: every built-in policy over 3, 100 and 1000
//! endpoints (weights 1, 2, 3 in turn; every endpoint available; a few
//! requests in flight so `least_request` compares real counts). Hashing
//! policies get a different `ctx.hash` on every pick.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use meshgate_core::cluster::Endpoint;
use meshgate_core::lb::{LbContext, builtin_factories};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const SIZES: [usize; 3] = [3, 100, 1000];

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap();
            Arc::new(Endpoint::new(addr, (i % 3) as u32 + 1))
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    for factory in builtin_factories() {
        let name = factory.name();
        let hashing = matches!(name, "ring_hash" | "maglev");
        let builder = factory.create(&Default::default()).unwrap();
        let mut group = c.benchmark_group(format!("lb_pick/{name}"));
        for n in SIZES {
            let eps = endpoints(n);
            // 0..4 requests in flight per endpoint, held for the benchmark.
            let _in_flight: Vec<_> = eps
                .iter()
                .enumerate()
                .flat_map(|(i, e)| (0..i % 5).map(move |_| e.start_request()))
                .collect();
            let lb = builder.build(&eps);
            let all = |_: usize| true;
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                let mut hash = 0u64;
                b.iter(|| {
                    let ctx = if hashing {
                        hash = hash.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        LbContext { hash: Some(hash) }
                    } else {
                        LbContext::default()
                    };
                    black_box(lb.pick(black_box(&ctx), &all))
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench_pick
}
criterion_main!(benches);
