//! End-to-end tests of a cluster's pending-request queue (Envoy's
//! `circuit_breakers.thresholds[].max_pending_requests`) on multiplexed
//! upstreams: a request that finds every connection at its stream limit
//! and the cluster at `max_connections` waits, first come first served,
//! until a stream ends; past the bound it overflows at once. The real
//! meshgate binary; curl as the client of an HTTP/2 upstream (python h2
//! announcing `SETTINGS_MAX_CONCURRENT_STREAMS = 1` and holding responses
//! until the test opens its gate); the real sofa-rpc-node Dubbo consumer
//! and provider (tests/peers/rpc_peer.js) with `max_concurrent_calls: 1`.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer, logged};
use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PENDING: &str = "meshgate_cluster_upstream_rq_pending_active";
const UP: &[(&str, &str)] = &[("cluster", "up")];

/// The gated HTTP/2 upstream and where it logs.
struct Gated {
    peer: PyPeer,
    gate: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gated {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (gate, log) = (dir.path().join("gate"), dir.path().join("log"));
        let peer = PyPeer::start(
            "h2_gated.py",
            &[gate.to_str().unwrap(), log.to_str().unwrap()],
        );
        Self {
            peer,
            gate,
            log,
            _dir: dir,
        }
    }

    fn open(&self) {
        std::fs::write(&self.gate, b"").unwrap();
    }

    /// The requests it saw: (path, connection, streams open on it).
    fn seen(&self) -> Vec<(String, u64, u64)> {
        logged(&self.log)
            .iter()
            .map(|e| {
                assert!(e.get("error").is_none(), "upstream: {e}");
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["conn"].as_u64().unwrap(),
                    e["open"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn gateway(up: &Gated, thresholds: &str) -> (Meshgate, u16) {
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                name: test
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /short}}
                        route: {{cluster: up, timeout: 0.3s}}
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 8s}}
clusters:
  - name: up
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{}"}}]
    circuit_breakers:
      thresholds:
        - {thresholds}
"#,
        up.peer.port
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

fn background(port: u16, path: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    std::thread::spawn(move || {
        let (s, _, b) = curl(&["--max-time", "10", &url]);
        (s, b)
    })
}

#[test]
fn h2_requests_wait_for_a_stream_slot_and_overflow_past_max_pending_requests() {
    let up = Gated::start();
    let (mg, port) = gateway(&up, "{max_connections: 1, max_pending_requests: 2}");
    // A first exchange lets the upstream's SETTINGS (one stream) arrive.
    up.open();
    assert_eq!(
        background(port, "/warm").join().unwrap(),
        (200, "ok".into())
    );
    std::fs::remove_file(&up.gate).unwrap();
    let first = background(port, "/one");
    wait_until("the first request at the upstream", || up.seen().len() == 2);
    let waiting: Vec<_> = ["/two", "/three"]
        .iter()
        .map(|p| background(port, p))
        .collect();
    mg.wait_metric(PENDING, UP, |v| v == 2.0);
    // A fourth finds two waiting: 503 at once, counted.
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/over")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    // Nothing queued inside the HTTP/2 connection: the upstream still
    // saw only the held request.
    assert_eq!(up.seen().len(), 2);
    up.open();
    for h in std::iter::once(first).chain(waiting) {
        assert_eq!(h.join().unwrap(), (200, "ok".to_string()));
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    // One connection, never more than one stream open on it.
    assert!(
        seen.iter().all(|(_, c, open)| *c == 1 && *open == 1),
        "{seen:?}"
    );
    mg.wait_metric(PENDING, UP, |v| v == 0.0);
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        2.0
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_cancelled_total", UP),
        0.0
    );
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_total", UP), 1.0);
}

#[test]
fn an_h2_pending_request_leaves_the_queue_at_its_route_timeout() {
    let up = Gated::start();
    let (mg, port) = gateway(&up, "{max_connections: 1, max_pending_requests: 1}");
    up.open();
    assert_eq!(background(port, "/warm").join().unwrap().0, 200);
    std::fs::remove_file(&up.gate).unwrap();
    let first = background(port, "/one");
    wait_until("the first request at the upstream", || up.seen().len() == 2);
    let t = Instant::now();
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/short")]);
    assert_eq!(status, 504, "{body}");
    assert!(t.elapsed() >= Duration::from_millis(250));
    mg.wait_metric(
        "meshgate_cluster_upstream_rq_pending_cancelled_total",
        UP,
        |v| v == 1.0,
    );
    assert_eq!(mg.metric(PENDING, UP), 0.0);
    up.open();
    assert_eq!(first.join().unwrap(), (200, "ok".to_string()));
    let paths: Vec<_> = up.seen().into_iter().map(|s| s.0).collect();
    assert_eq!(
        paths,
        ["/warm", "/one"],
        "the timed-out one never reached it"
    );
}

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
    // Four concurrent calls of 400 ms: one in flight, two wait, the
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
