//! End-to-end tests of a cluster's pending-request queue (Envoy's
//! `circuit_breakers.thresholds[].max_pending_requests`) on multiplexed
//! upstreams: a request that finds every connection at its stream limit
//! and the cluster at `max_connections` waits, first come first served,
//! until a stream ends; past the bound it overflows at once. The real
//! meshgate binary; the real sofa-rpc-node Dubbo consumer and provider
//! (tests/peers/rpc_peer.js) with `max_concurrent_calls: 1`.

use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::*;
use std::time::{Duration, Instant};

const PENDING: &str = "meshgate_cluster_upstream_rq_pending_active";
const UP: &[(&str, &str)] = &[("cluster", "up")];

#[test]
fn dubbo_calls_wait_for_the_in_flight_bound_and_overflow_with_the_busy_status() {
    let provider = Provider::start("dubbo", "A");
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 8s}}
clusters:
  - name: up
    protocol: dubbo
    protocol_options: {{max_concurrent_calls: 1}}
    endpoints: [{{address: "127.0.0.1:{}"}}]
    circuit_breakers:
      thresholds:
        - {{max_connections: 1, max_pending_requests: 2}}
"#,
        provider.port
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    // Four concurrent calls of 400 ms on a cold cluster: one dials and is
    // in flight, two wait (also while the connection is being dialled), the
    // fourth overflows with Dubbo's SERVER_THREADPOOL_EXHAUSTED.
    let t = Instant::now();
    let r = node_call(
        "dubbo",
        port,
        "com.meshgate.Echo",
        "sleep",
        "[400]",
        4,
        4,
        6000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 3, "{r:?}");
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].contains("circuit breaker open"), "{r:?}");
    // Served one after the other on the one connection.
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        2.0
    );
    assert_eq!(mg.metric(PENDING, UP), 0.0);
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_total", UP), 1.0);
}
