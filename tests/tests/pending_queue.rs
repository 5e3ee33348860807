//! End-to-end tests of a cluster's pending-request queue (Envoy's
//! `circuit_breakers.thresholds[].max_pending_requests`): the real meshgate
//! binary, curl as the client, and an HTTP/1.1 upstream that holds every
//! request until the test opens its gate, so that `max_connections: 1` is
//! reached and the queue fills deterministically; one run through a real
//! xDS control plane.

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A keep-alive HTTP/1.1 upstream answering `200 ok` to each request once
/// its gate is open; it counts the requests it saw.
struct Gated {
    addr: SocketAddr,
    gate: Arc<(Mutex<bool>, Condvar)>,
    seen: Arc<AtomicUsize>,
}

impl Gated {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let (g, s) = (gate.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (g, s) = (g.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &g, &s));
            }
        });
        Self { addr, gate, seen }
    }

    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

fn serve(mut c: std::net::TcpStream, gate: &(Mutex<bool>, Condvar), seen: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Bodiless requests: a head ends the request.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        seen.fetch_add(1, Ordering::SeqCst);
        let mut open = gate.0.lock().unwrap();
        while !*open {
            open = gate.1.wait(open).unwrap();
        }
        drop(open);
        if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
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
    endpoints: [{{address: "{}"}}]
    circuit_breakers:
      thresholds:
        - {thresholds}
"#,
        up.addr
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

/// Runs a curl in the background.
fn background(port: u16, path: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    std::thread::spawn(move || {
        let (s, _, b) = curl(&["--max-time", "10", &url]);
        (s, b)
    })
}

const PENDING: &str = "meshgate_cluster_upstream_rq_pending_active";
const UP: &[(&str, &str)] = &[("cluster", "up")];

/// A 4th concurrent request finds two waiting already: 503 at once.
fn overflow_at_once(mg: &Meshgate, port: u16, cluster: &str) {
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
            &[("cluster", cluster), ("priority", "default")]
        ),
        1.0
    );
}

#[test]
fn requests_wait_for_the_connection_and_overflow_past_max_pending_requests() {
    let up = Gated::start();
    let (mg, port) = gateway(&up, "{max_connections: 1, max_pending_requests: 2}");
    let first = background(port, "/one");
    wait_until("the first request at the upstream", || up.seen() == 1);
    let waiting: Vec<_> = ["/two", "/three"]
        .iter()
        .map(|p| background(port, p))
        .collect();
    mg.wait_metric(PENDING, UP, |v| v == 2.0);
    overflow_at_once(&mg, port, "up");
    // The held connection was the only one: nothing else reached it.
    assert_eq!(up.seen(), 1);
    up.open();
    for h in std::iter::once(first).chain(waiting) {
        let (status, body) = h.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(up.seen(), 3);
    mg.wait_metric(PENDING, UP, |v| v == 0.0);
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        2.0
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_cancelled_total", UP),
        0.0
    );
    // Never more than max_connections open.
    assert!(mg.metric("meshgate_cluster_upstream_cx_active", UP) <= 1.0);
}

#[test]
fn max_pending_requests_zero_overflows_the_second_request_at_once() {
    let up = Gated::start();
    let (mg, port) = gateway(&up, "{max_connections: 1, max_pending_requests: 0}");
    let first = background(port, "/one");
    wait_until("the first request at the upstream", || up.seen() == 1);
    overflow_at_once(&mg, port, "up");
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        0.0
    );
    up.open();
    assert_eq!(first.join().unwrap().0, 200);
}

#[test]
fn a_pending_request_leaves_the_queue_at_its_route_timeout() {
    let up = Gated::start();
    let (mg, port) = gateway(&up, "{max_connections: 1, max_pending_requests: 1}");
    let first = background(port, "/one");
    wait_until("the first request at the upstream", || up.seen() == 1);
    // Route timeout 0.3 s while it waits: 504, out of the queue.
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
    // Its place is free again: the next one waits, and is served.
    let second = background(port, "/two");
    mg.wait_metric(PENDING, UP, |v| v == 1.0);
    up.open();
    assert_eq!(first.join().unwrap().0, 200);
    assert_eq!(second.join().unwrap(), (200, "ok".to_string()));
    assert_eq!(up.seen(), 2, "the timed-out request never reached it");
}

#[test]
fn max_pending_requests_from_xds() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use meshgate_tests::xds::*;
    use prost::Message;

    let up = Gated::start();
    let (cname, c) = static_cluster("svc-a", up.addr);
    let mut c = cds::Cluster::decode(c.value.as_slice()).unwrap();
    c.circuit_breakers = Some(cds::CircuitBreakers {
        thresholds: vec![cds::circuit_breakers::Thresholds {
            max_connections: Some(UInt32Value { value: 1 }),
            max_pending_requests: Some(UInt32Value { value: 2 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let (_mgmt, mg, port) = one_cluster_gateway((cname, any(CLUSTER, &c)));
    let svc = &[("cluster", "svc-a")];
    let first = background(port, "/one");
    wait_until_within(20, "the xDS route in place", || up.seen() == 1);
    let waiting: Vec<_> = ["/two", "/three"]
        .iter()
        .map(|p| background(port, p))
        .collect();
    mg.wait_metric(PENDING, svc, |v| v == 2.0);
    overflow_at_once(&mg, port, "svc-a");
    up.open();
    for h in std::iter::once(first).chain(waiting) {
        assert_eq!(h.join().unwrap().0, 200);
    }
    assert_eq!(up.seen(), 3);
}

/// `circuit_breakers.per_host_thresholds[].max_connections: 1` over two
/// held endpoints: each takes one connection (two open in the cluster,
/// whose own limit is the default), a third request waits for its
/// endpoint's connection in the pending queue, a fourth overflows with
/// 503 + `x-envoy-overloaded`; all three waiting ones are served once the
/// endpoints answer, never over one connection per endpoint.
#[test]
fn per_host_max_connections_queues_per_endpoint() {
    let (a, b) = (Gated::start(), Gated::start());
    let clusters = format!(
        r#"  - name: up
    endpoints: [{{address: "{}"}}, {{address: "{}"}}]
    circuit_breakers:
      thresholds: [{{max_pending_requests: 1}}]
      per_host_thresholds: [{{max_connections: 1}}]
"#,
        a.addr, b.addr
    );
    let yaml = proxy_config(
        &["{match: {prefix: /}, route: {cluster: up, timeout: 8s}}"],
        &clusters,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    let held: Vec<_> = ["/one", "/two"]
        .iter()
        .map(|p| background(port, p))
        .collect();
    wait_until("one request at each endpoint", || {
        a.seen() == 1 && b.seen() == 1
    });
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_active", UP), 2.0);
    let third = background(port, "/three");
    mg.wait_metric(PENDING, UP, |v| v == 1.0);
    overflow_at_once(&mg, port, "up");
    assert_eq!(
        a.seen() + b.seen(),
        2,
        "no endpoint got a second connection"
    );
    assert!(mg.metric("meshgate_cluster_upstream_cx_overflow_total", UP) >= 1.0);
    a.open();
    b.open();
    for h in held.into_iter().chain(std::iter::once(third)) {
        let (status, body) = h.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(a.seen() + b.seen(), 3);
    assert!(mg.metric("meshgate_cluster_upstream_cx_active", UP) <= 2.0);
}

/// Fields Envoy does not honour per host are refused by name.
#[test]
fn per_host_thresholds_other_than_max_connections_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (field, want) in [
        ("{max_requests: 3}", "per_host_thresholds[0].max_requests"),
        (
            "{priority: HIGH, max_connections: 3}",
            "per_host_thresholds[0].priority",
        ),
    ] {
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            format!(
                "listeners: []\nclusters:\n  - name: up\n    circuit_breakers: {{per_host_thresholds: [{field}]}}\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{field}: accepted\n{out}");
        assert!((out.clone() + &err).contains(want), "{field}: {out}{err}");
    }
}

/// `per_host_thresholds` pushed over CDS (Envoy's YAML, parsed by Envoy's
/// own protos): two held endpoints with one connection each, the third
/// request waits in the pending queue, the fourth overflows with 503 +
/// `x-envoy-overloaded`; all three are served once the endpoints answer.
#[test]
fn per_host_max_connections_from_xds() {
    use meshgate_tests::xds::{envoy_yaml, one_cluster_gateway};
    let (a, b) = (Gated::start(), Gated::start());
    let cluster = envoy_yaml(&format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: svc-a
  type: STATIC
  connect_timeout: 1s
  circuit_breakers:
    thresholds: [{{max_pending_requests: 1}}]
    per_host_thresholds: [{{max_connections: 1}}]
  load_assignment:
    cluster_name: svc-a
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
        a.addr.port(),
        b.addr.port()
    ))
    .remove(0);
    let (_mgmt, mg, port) = one_cluster_gateway(cluster);
    let svc = &[("cluster", "svc-a")];
    let held: Vec<_> = ["/one", "/two"]
        .iter()
        .map(|p| background(port, p))
        .collect();
    wait_until("one request at each endpoint", || {
        a.seen() == 1 && b.seen() == 1
    });
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_active", svc), 2.0);
    let third = background(port, "/three");
    mg.wait_metric(PENDING, svc, |v| v == 1.0);
    overflow_at_once(&mg, port, "svc-a");
    assert_eq!(
        a.seen() + b.seen(),
        2,
        "no endpoint got a second connection"
    );
    a.open();
    b.open();
    for h in held.into_iter().chain(std::iter::once(third)) {
        let (status, body) = h.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(a.seen() + b.seen(), 3);
    assert!(mg.metric("meshgate_cluster_upstream_cx_active", svc) <= 2.0);
}

/// `max_connection_pools: 1` over two held endpoints (round robin): the
/// first request opens its endpoint's pool; the second, sent to the other
/// endpoint, would need a second pool: 503 + `x-envoy-overloaded` at once
/// (not queued), counted in `upstream_cx_pool_overflow`; the third goes
/// back to the first endpoint, whose pool opens a second connection.
fn one_pool_at_a_time(mg: &Meshgate, port: u16, cluster: &str, a: &Gated, b: &Gated) {
    let labels = &[("cluster", cluster)];
    let first = background(port, "/one");
    wait_until("the first request at an endpoint", || {
        a.seen() + b.seen() == 1
    });
    let (pooled, other) = if a.seen() == 1 { (a, b) } else { (b, a) };
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/two")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_pool_overflow_total", labels),
        1.0
    );
    assert_eq!(mg.metric(PENDING, labels), 0.0, "not queued");
    assert_eq!(other.seen(), 0);
    let third = background(port, "/three");
    wait_until("the third request at the pooled endpoint", || {
        pooled.seen() == 2
    });
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_active", labels),
        2.0
    );
    a.open();
    b.open();
    for h in [first, third] {
        assert_eq!(h.join().unwrap(), (200, "ok".to_string()));
    }
    assert_eq!(other.seen(), 0);
}

fn two_endpoints(a: &Gated, b: &Gated, circuit_breakers: &str) -> (Meshgate, u16) {
    let clusters = format!(
        r#"  - name: up
    lb_policy: round_robin
    endpoints: [{{address: "{}"}}, {{address: "{}"}}]
    circuit_breakers: {circuit_breakers}
"#,
        a.addr, b.addr
    );
    let yaml = proxy_config(
        &["{match: {prefix: /}, route: {cluster: up, timeout: 8s}}"],
        &clusters,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

#[test]
fn max_connection_pools_refuses_a_new_pool_with_503() {
    let (a, b) = (Gated::start(), Gated::start());
    let (mg, port) = two_endpoints(&a, &b, "{thresholds: [{max_connection_pools: 1}]}");
    one_pool_at_a_time(&mg, port, "up", &a, &b);
}

#[test]
fn max_connection_pools_from_xds() {
    use meshgate_tests::xds::{envoy_yaml, one_cluster_gateway};
    let (a, b) = (Gated::start(), Gated::start());
    let cluster = envoy_yaml(&format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: svc-a
  type: STATIC
  connect_timeout: 1s
  lb_policy: ROUND_ROBIN
  circuit_breakers:
    thresholds: [{{max_connection_pools: 1}}]
  load_assignment:
    cluster_name: svc-a
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
        a.addr.port(),
        b.addr.port()
    ))
    .remove(0);
    let (_mgmt, mg, port) = one_cluster_gateway(cluster);
    one_pool_at_a_time(&mg, port, "svc-a", &a, &b);
}
