//! End-to-end tests of a cluster's circuit breakers (Envoy's
//! `circuit_breakers.thresholds`): the real meshgate binary, curl as the
//! client, a raw recording upstream (`scripted`) that holds requests open
//! so that the limits are reached, and one run through a real xDS control
//! plane.

use meshgate_tests::curl::curl;
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::time::{Duration, Instant};

/// The request paths the upstream saw, in order.
fn paths(up: &Scripted) -> Vec<String> {
    up.conns()
        .iter()
        .filter_map(|c| {
            let head = String::from_utf8_lossy(&c.bytes).into_owned();
            head.split_whitespace().nth(1).map(str::to_string)
        })
        .collect()
}

const ANSWER_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\nconnection: close\r\n\r\nupstream\n";

fn gateway(up: &Scripted, cluster_extra: &str) -> (Meshgate, u16) {
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
                      - match: {{prefix: /high/}}
                        route: {{cluster: up, priority: HIGH, timeout: 5s}}
                      - match: {{prefix: /retry/}}
                        route:
                          cluster: up
                          timeout: 5s
                          retry_policy:
                            retry_on: 5xx
                            num_retries: 1
                            retry_back_off: {{base_interval: 5ms}}
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 5s}}
clusters:
  - name: up
    endpoints: [{{address: "{}"}}]
{cluster_extra}
"#,
        up.addr
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

/// Runs a curl in the background (it ends by its own time limit).
fn background(port: u16, path: &str) -> std::thread::JoinHandle<u16> {
    let url = format!("http://127.0.0.1:{port}{path}");
    std::thread::spawn(move || curl(&["--max-time", "8", &url]).0)
}

#[test]
fn max_requests_overflow_is_answered_at_once_with_503_overloaded() {
    // Every request hangs at the upstream: two fill max_requests.
    let up = Scripted::start(|_| Script::Silent);
    let (mg, port) = gateway(
        &up,
        "    circuit_breakers:\n      thresholds:\n        - {max_requests: 2, track_remaining: true}\n        - {priority: HIGH, max_requests: 1}",
    );
    let labels = [
        ("cluster", "up"),
        ("priority", "default"),
        ("breaker", "requests"),
    ];
    assert_eq!(
        mg.metric("meshgate_cluster_circuit_breakers_remaining", &labels),
        2.0
    );
    // A rare event's series is registered on its first occurrence (issue
    // 23: memory per cluster): none yet for the overflow, the open breaker
    // or the pending queue.
    let (_, text) = mg.admin_get("/stats/prometheus");
    for rare in [
        "meshgate_cluster_upstream_rq_overflow_total{",
        "meshgate_cluster_circuit_breakers_open{",
        "meshgate_cluster_upstream_rq_pending_total{",
    ] {
        assert!(!text.contains(rare), "{rare} before any event:\n{text}");
    }
    let held: Vec<_> = (0..2)
        .map(|i| background(port, &format!("/held{i}")))
        .collect();
    wait_until("two requests held at the upstream", || {
        up.conns().len() == 2
    });
    mg.wait_metric("meshgate_cluster_circuit_breakers_open", &labels, |v| {
        v == 1.0
    });
    assert_eq!(
        mg.metric("meshgate_cluster_circuit_breakers_remaining", &labels),
        0.0
    );
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/third")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert!(body.contains("circuit breaker"), "{body}");
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    // Registered by that first overflow: the other priority's is not.
    let (_, text) = mg.admin_get("/stats/prometheus");
    assert!(
        !text.contains(
            r#"meshgate_cluster_upstream_rq_overflow_total{cluster="up",priority="high"}"#
        ),
        "{text}"
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "overflow")]
        ),
        1.0
    );
    // The third never reached the upstream.
    assert!(
        !paths(&up).contains(&"/third".to_string()),
        "{:?}",
        paths(&up)
    );
    // A HIGH priority route counts against its own threshold.
    let high = background(port, "/high/1");
    wait_until("the HIGH request at the upstream", || up.conns().len() == 3);
    let (status, headers, _) = curl(&[&format!("http://127.0.0.1:{port}/high/2")]);
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_overflow_total",
            &[("cluster", "up"), ("priority", "high")]
        ),
        1.0
    );
    // The held ones end (route timeout 5s: 504), which closes the breaker.
    for h in held {
        assert_eq!(h.join().unwrap(), 504);
    }
    assert_eq!(high.join().unwrap(), 504);
    mg.wait_metric("meshgate_cluster_circuit_breakers_open", &labels, |v| {
        v == 0.0
    });
    assert_eq!(
        mg.metric("meshgate_cluster_circuit_breakers_remaining", &labels),
        2.0
    );
}

#[test]
fn retry_budget_limits_concurrent_retries() {
    // /a: 503 then the retry hangs (holding the only retry slot);
    // /b: always 503.
    let a_hits = std::sync::atomic::AtomicU32::new(0);
    let up = Scripted::start(move |head| {
        let head = String::from_utf8_lossy(head);
        if head.starts_with("GET /retry/a")
            && a_hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0
        {
            Script::Silent
        } else {
            Script::AnswerAndClose(ANSWER_503.to_vec())
        }
    });
    let (mg, port) = gateway(
        &up,
        "    circuit_breakers:\n      thresholds:\n        - retry_budget: {budget_percent: {value: 0}, min_retry_concurrency: 1}",
    );
    let a = background(port, "/retry/a");
    wait_until("the retry of /retry/a at the upstream", || {
        paths(&up).iter().filter(|p| *p == "/retry/a").count() == 2
    });
    let t = Instant::now();
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/retry/b")]);
    // The upstream's own 503, not retried.
    assert_eq!((status, body.as_str()), (503, "upstream\n"));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(paths(&up).iter().filter(|p| *p == "/retry/b").count(), 1);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_retry_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    assert_eq!(a.join().unwrap(), 504);
    // The slot is back: /b is retried now.
    let (status, _, _) = curl(&[&format!("http://127.0.0.1:{port}/retry/b")]);
    assert_eq!(status, 503);
    assert_eq!(paths(&up).iter().filter(|p| *p == "/retry/b").count(), 3);
}

#[test]
fn legacy_max_connections_and_circuit_breakers_together_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "clusters:\n  - name: up\n    max_connections: 1\n    circuit_breakers: {thresholds: [{max_connections: 2}]}\n    endpoints: [{address: \"127.0.0.1:1\"}]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("clusters[0].max_connections"),
        "{out}{err}"
    );
}

#[test]
fn circuit_breakers_and_retry_policy_from_xds() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use meshgate_tests::xds::*;
    use prost::Message;

    let up = Scripted::start(|head| {
        if String::from_utf8_lossy(head).starts_with("GET /flaky") {
            Script::AnswerAndClose(ANSWER_503.to_vec())
        } else {
            Script::Silent
        }
    });
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let (cname, c) = static_cluster("svc-a", up.addr);
    let mut c = cds::Cluster::decode(c.value.as_slice()).unwrap();
    c.circuit_breakers = Some(cds::CircuitBreakers {
        thresholds: vec![cds::circuit_breakers::Thresholds {
            max_requests: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
            max_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 5 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    mgmt.set(CLUSTER, "c1", vec![(cname, any(CLUSTER, &c))]);
    let (name, l) = hcm_listener("web", port, "r1");
    mgmt.set(LISTENER, "l1", vec![(name, l)]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    let a = r.virtual_hosts[0]
        .routes
        .iter_mut()
        .find_map(|r| match r.action.as_mut() {
            Some(rds::route::Action::Route(a)) => Some(a),
            _ => None,
        })
        .expect("a route action");
    a.retry_policy = Some(rds::RetryPolicy {
        retry_on: "5xx".into(),
        num_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
        ..Default::default()
    });
    a.timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 5,
        nanos: 0,
    });
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    // The route's retry policy: three tries, then the upstream's 503.
    wait_until_within(20, "the xDS route in place", || {
        curl(&[&format!("http://127.0.0.1:{port}/flaky")]).0 == 503
            && paths(&up).iter().filter(|p| *p == "/flaky").count() >= 3
    });
    let n = paths(&up).iter().filter(|p| *p == "/flaky").count();
    assert_eq!(n % 3, 0, "each request tried three times: {n}");
    // The cluster's max_requests: 1.
    let held = background(port, "/held");
    wait_until("the held request at the upstream", || {
        paths(&up).contains(&"/held".to_string())
    });
    let (status, headers, _) = curl(&[&format!("http://127.0.0.1:{port}/second")]);
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_overflow_total",
            &[("cluster", "svc-a")]
        ),
        1.0
    );
    assert_eq!(held.join().unwrap(), 504);
}

/// Each routing priority has its own connection pools, as in Envoy, so
/// HIGH's `max_connections` and `max_pending_requests` count HIGH's
/// connections only: with DEFAULT exhausted (`max_connections: 1`, its one
/// connection held by a hanging upstream, no pending room) a HIGH route
/// is still served on a connection of its own; then HIGH's own single
/// connection held, HIGH overflows at once too, each counted under its
/// priority.
#[test]
fn each_priority_has_its_own_connection_pool_and_limits() {
    // `/…/ok` is answered (and the connection closed); anything else hangs.
    let up = Scripted::start(|head| {
        if String::from_utf8_lossy(head).contains("/ok ") {
            Script::AnswerAndClose(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n".to_vec(),
            )
        } else {
            Script::Silent
        }
    });
    let (mg, port) = gateway(
        &up,
        "    circuit_breakers:\n      thresholds:\n        - {max_connections: 1, max_pending_requests: 0}\n        - {priority: HIGH, max_connections: 1, max_pending_requests: 0}",
    );
    let pending_overflow = |p: &str| {
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", p)],
        )
    };
    let default_held = background(port, "/hold");
    wait_until("the DEFAULT request at the upstream", || {
        up.conns().len() == 1
    });
    // DEFAULT is exhausted: a second DEFAULT request overflows at once.
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/ok")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(headers["x-envoy-overloaded"], "true");
    assert_eq!(pending_overflow("default"), 1.0);
    // HIGH still serves, on its own connection.
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/high/ok")]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(up.conns().len(), 2);
    assert!(paths(&up).contains(&"/high/ok".to_string()));
    // HIGH's one connection slot frees when that connection closes.
    mg.wait_metric(
        "meshgate_cluster_upstream_cx_active",
        &[("cluster", "up")],
        |v| v == 1.0,
    );
    // HIGH's own limit: its one connection held, the next HIGH overflows.
    let high_held = background(port, "/high/hold");
    wait_until("the HIGH request held at the upstream", || {
        up.conns().len() == 3
    });
    mg.wait_metric(
        "meshgate_cluster_upstream_cx_active",
        &[("cluster", "up")],
        |v| v == 2.0,
    );
    let (status, headers, _) = curl(&[&format!("http://127.0.0.1:{port}/high/ok")]);
    assert_eq!(status, 503);
    assert_eq!(headers["x-envoy-overloaded"], "true");
    assert_eq!(pending_overflow("high"), 1.0);
    assert_eq!(pending_overflow("default"), 1.0);
    assert_eq!(up.conns().len(), 3, "no connection past either limit");
    // The held ones end at the route timeout.
    assert_eq!(default_held.join().unwrap(), 504);
    assert_eq!(high_held.join().unwrap(), 504);
}
