//! End-to-end tests of hedging (`hedge_policy.hedge_on_per_try_timeout`),
//! the retry policy's `per_try_idle_timeout` and the router's `x-envoy-*`
//! request headers (honoured from an internal client, stripped from an
//! external one): the real meshgate binary, curl and grpcio as clients,
//! and raw upstreams that answer late, hang, or stall mid-body on command
//! and record the request heads that reached them.

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the test upstream does with one request.
#[derive(Clone)]
enum Act {
    /// Answers these bytes after the delay, then closes.
    Answer(Duration, String),
    /// Never answers; holds the connection until meshgate closes it.
    Hang,
    /// Writes these bytes (a head and part of a body), then stalls.
    Stall(String),
}

/// Request heads as the upstream saw them, in arrival order, and whether
/// meshgate closed each connection.
#[derive(Default)]
struct Log {
    heads: Vec<String>,
    closed: Vec<bool>,
}

struct Upstream {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Upstream {
    /// `act(n, head)` for the n-th (from 1) request, one per connection.
    fn start(act: impl Fn(usize, &str) -> Act + Send + Sync + 'static) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log: Arc<Mutex<Log>> = Arc::default();
        let lg = log.clone();
        let act = Arc::new(act);
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let lg = lg.clone();
                let act = act.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let (i, n) = {
                        let mut g = lg.lock().unwrap();
                        g.heads.push(head.clone());
                        g.closed.push(false);
                        (g.heads.len() - 1, g.heads.len())
                    };
                    match act(n, &head) {
                        Act::Answer(d, bytes) => {
                            std::thread::sleep(d);
                            let _ = s.write_all(bytes.as_bytes());
                            return;
                        }
                        Act::Hang => {}
                        Act::Stall(bytes) => {
                            let _ = s.write_all(bytes.as_bytes());
                        }
                    }
                    // Until meshgate closes the connection.
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                    lg.lock().unwrap().closed[i] = true;
                });
            }
        });
        Self { addr, log }
    }

    fn heads(&self) -> Vec<String> {
        self.log.lock().unwrap().heads.clone()
    }

    fn closed(&self, i: usize) -> bool {
        self.log.lock().unwrap().closed.get(i) == Some(&true)
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn unavailable() -> String {
    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
        .to_string()
}

/// meshgate with one listener whose virtual host has `routes`, and one
/// cluster `up` at `addr`.
fn start(routes: &str, addr: SocketAddr) -> (Meshgate, u16) {
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
{routes}
clusters:
  - name: up
    endpoints: [{{address: "{addr}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

fn get(port: u16, path: &str, args: &[&str]) -> (u16, HashMap<String, String>, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut a: Vec<&str> = args.to_vec();
    a.push(&url);
    let (s, h, b) = curl(&a);
    (s, h.into_iter().collect(), b)
}

fn counter(mg: &Meshgate, name: &str, cluster: &str) -> f64 {
    mg.metric(name, &[("cluster", cluster)])
}

const HEDGED_ROUTE: &str = r#"                      - match: {prefix: /}
                        route:
                          cluster: up
                          timeout: 5s
                          hedge_policy: {hedge_on_per_try_timeout: true}
                          retry_policy:
                            retry_on: 5xx
                            num_retries: 1
                            per_try_timeout: 200ms
                            retry_back_off: {base_interval: 5ms}"#;

#[test]
fn hedged_try_wins_against_a_hung_first_attempt() {
    let up = Upstream::start(|n, _| match n {
        1 => Act::Hang,
        _ => Act::Answer(Duration::ZERO, ok("fast")),
    });
    let (mg, port) = start(HEDGED_ROUTE, up.addr);
    let t0 = Instant::now();
    let (status, _, body) = get(port, "/h", &[]);
    let took = t0.elapsed();
    assert_eq!((status, body.as_str()), (200, "fast"));
    // The per-try timeout (200 ms) started the hedged try; the client had
    // its answer long before the route's 5 s timeout.
    assert!(took < Duration::from_millis(2000), "{took:?}");
    assert!(took >= Duration::from_millis(180), "{took:?}");
    assert_eq!(up.heads().len(), 2);
    // The hung first try was cancelled once the hedged one won.
    wait_until_within(5, "the first try's connection closed", || up.closed(0));
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_hedged_total", "up"),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_success_total",
            "up"
        ),
        1.0
    );
}

#[test]
fn hedging_keeps_the_first_try_that_a_plain_retry_would_cancel() {
    // The first try answers after 600 ms (past its 200 ms per-try
    // timeout); every later try hangs.
    let up = Upstream::start(|n, _| match n {
        1 => Act::Answer(Duration::from_millis(600), ok("late")),
        _ => Act::Hang,
    });
    let (mg, port) = start(HEDGED_ROUTE, up.addr);
    // Hedged: the late first answer wins over the hung second try.
    let t0 = Instant::now();
    let (status, _, body) = get(port, "/hedged", &[]);
    let took = t0.elapsed();
    assert_eq!((status, body.as_str()), (200, "late"));
    assert!(took < Duration::from_millis(3000), "{took:?}");
    wait_until_within(5, "the hedged try cancelled", || up.closed(1));
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_hedged_total", "up"),
        1.0
    );
}

#[test]
fn hedge_from_the_request_header_of_an_internal_client() {
    // The same late first answer; the route retries on per-try timeouts
    // but does not hedge: the header turns hedging on for one request.
    let up = Upstream::start(|n, _| match n {
        1 | 3 => Act::Answer(Duration::from_millis(600), ok("late")),
        _ => Act::Hang,
    });
    let (mg, port) = start(
        r#"                      - match: {prefix: /}
                        route:
                          cluster: up
                          timeout: 1500ms
                          retry_policy:
                            retry_on: 5xx
                            num_retries: 1
                            per_try_timeout: 200ms
                            retry_back_off: {base_interval: 5ms}"#,
        up.addr,
    );
    // Without hedging the first try is cancelled at 200 ms and the retry
    // hangs until the route timeout: 504.
    let (status, _, _) = get(port, "/plain", &[]);
    assert_eq!(status, 504);
    let (status, _, body) = get(
        port,
        "/hedge",
        &["-H", "x-envoy-hedge-on-per-try-timeout: true"],
    );
    assert_eq!((status, body.as_str()), (200, "late"));
    // The header never reached the upstream.
    let heads = up.heads();
    assert_eq!(heads.len(), 4, "{heads:?}");
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("x-envoy-hedge")),
        "{heads:?}"
    );
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_hedged_total", "up"),
        1.0
    );
}

#[test]
fn per_try_idle_timeout_retries_a_silent_try_and_resets_a_stalled_body() {
    let up = Upstream::start(|_, head| {
        if head.starts_with("GET /silent") {
            if head.contains("x-envoy-attempt-count: 1") {
                Act::Hang
            } else {
                Act::Answer(Duration::ZERO, ok("second"))
            }
        } else {
            Act::Stall(
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\npart".into(),
            )
        }
    });
    let yaml_routes = r#"                      - match: {prefix: /}
                        route:
                          cluster: up
                          timeout: 10s
                          retry_policy:
                            retry_on: reset
                            num_retries: 1
                            per_try_idle_timeout: 300ms
                            retry_back_off: {base_interval: 5ms}"#;
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
                    include_request_attempt_count: true
                    routes:
{yaml_routes}
clusters:
  - name: up
    endpoints: [{{address: "{}"}}]
"#,
        up.addr
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    // No response byte for 300 ms: the try is reset and retried.
    let t0 = Instant::now();
    let (status, _, body) = get(port, "/silent", &[]);
    assert_eq!((status, body.as_str()), (200, "second"));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_per_try_idle_timeout_total",
            "up"
        ),
        1.0
    );
    // A body that stalls after its head: the stream is reset (curl sees a
    // short body) well before the 10 s route timeout.
    let t0 = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/stall"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl saw a complete body");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_per_try_idle_timeout_total",
            "up"
        ),
        2.0
    );
}

#[test]
fn retry_headers_are_honoured_from_an_internal_client_and_stripped_from_an_external_one() {
    // Each path fails 503 on its first request and answers 200 after.
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = seen.clone();
    let up = Upstream::start(move |_, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if path.starts_with("/hang") {
            return Act::Hang;
        }
        let mut g = s.lock().unwrap();
        let n = g.entry(path).or_default();
        *n += 1;
        if *n == 1 {
            Act::Answer(Duration::ZERO, unavailable())
        } else {
            Act::Answer(Duration::ZERO, ok("yes"))
        }
    });
    // The route has no retry policy and a 10 s timeout.
    let (mg, port) = start(
        r#"                      - match: {prefix: /}
                        route: {cluster: up, timeout: 10s}"#,
        up.addr,
    );
    // Internal (loopback, no x-forwarded-for): one retry on 5xx.
    let (status, _, body) = get(port, "/internal", &["-H", "x-envoy-retry-on: 5xx"]);
    assert_eq!((status, body.as_str()), (200, "yes"));
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "up"),
        1.0
    );
    // The same over HTTP/2.
    let (status, _, body) = get(
        port,
        "/internal-h2",
        &["--http2-prior-knowledge", "-H", "x-envoy-retry-on: 5xx"],
    );
    assert_eq!((status, body.as_str()), (200, "yes"));
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "up"),
        2.0
    );
    // External (it came through another proxy): the header is removed
    // at the edge, the 503 reaches the client.
    let (status, _, _) = get(
        port,
        "/external",
        &[
            "-H",
            "x-envoy-retry-on: 5xx",
            "-H",
            "x-forwarded-for: 203.0.113.7",
        ],
    );
    assert_eq!(status, 503);
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "up"),
        2.0
    );
    assert_eq!(
        mg.metric("meshgate_http_rq_envoy_headers_stripped_total", &[]),
        1.0
    );
    // x-envoy-max-retries: 0 turns the header's retry off; an invalid
    // value is ignored and counted.
    let (status, _, _) = get(
        port,
        "/zero",
        &[
            "-H",
            "x-envoy-retry-on: 5xx",
            "-H",
            "x-envoy-max-retries: 0",
        ],
    );
    assert_eq!(status, 503);
    let (status, _, _) = get(
        port,
        "/bad",
        &[
            "-H",
            "x-envoy-retry-on: 5xx",
            "-H",
            "x-envoy-max-retries: many",
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(
        mg.metric(
            "meshgate_http_rq_envoy_header_invalid_total",
            &[("header", "x-envoy-max-retries")]
        ),
        1.0
    );
    // x-envoy-upstream-rq-timeout-ms: the route's 10 s becomes 300 ms, and
    // the upstream learns it in x-envoy-expected-rq-timeout-ms.
    let t0 = Instant::now();
    let (status, _, _) = get(
        port,
        "/hang",
        &["-H", "x-envoy-upstream-rq-timeout-ms: 300"],
    );
    assert_eq!(status, 504);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // No control header ever reached the upstream.
    let heads = up.heads();
    for h in &heads {
        let h = h.to_ascii_lowercase();
        for name in [
            "x-envoy-retry-on",
            "x-envoy-max-retries",
            "x-envoy-upstream-rq-timeout-ms",
        ] {
            assert!(!h.contains(name), "{name} reached the upstream: {h}");
        }
    }
    let hang = heads.iter().find(|h| h.starts_with("GET /hang")).unwrap();
    assert!(
        hang.to_ascii_lowercase()
            .contains("x-envoy-expected-rq-timeout-ms: 300"),
        "{hang}"
    );
}

#[test]
fn grpc_retry_header_retries_unavailable() {
    let mut server = std::process::Command::new("python3")
        .arg(workspace().join("tests/peers/retry_peer.py"))
        .arg("grpc-server")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio");
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let gport: u16 = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
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
                    request_headers_to_add: [{{name: x-envoy-retry-grpc-on, value: unavailable}}]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: grpc}}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{gport}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    let out = Command::new("python3")
        .arg(workspace().join("tests/peers/retry_peer.py"))
        .args(["grpc-call", &port.to_string()])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK echo:hi");
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "grpc"),
        1.0
    );
}

#[test]
fn hedge_policy_and_per_try_idle_timeout_from_xds() {
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use meshgate_tests::xds::*;
    use prost::Message;

    let up = Upstream::start(|n, _| match n {
        1 => Act::Hang,
        _ => Act::Answer(Duration::ZERO, ok("fast")),
    });
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let (cname, c) = static_cluster("svc-a", up.addr);
    mgmt.set(CLUSTER, "c1", vec![(cname, c)]);
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
        num_retries: Some(UInt32Value { value: 1 }),
        per_try_idle_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..Default::default()
    });
    a.hedge_policy = Some(rds::HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    });
    a.timeout = Some(PbDuration {
        seconds: 5,
        nanos: 0,
    });
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_until_within(20, "the xDS route in place", || {
        curl(&[&format!("http://127.0.0.1:{port}/x")]).0 == 200
    });
    // The first try stayed silent: the per-try idle timeout (200 ms)
    // started a hedged try, which answered.
    assert_eq!(up.heads().len(), 2);
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_hedged_total", "svc-a"),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_per_try_idle_timeout_total",
            "svc-a"
        ),
        1.0
    );
    // initial_requests above 1 is refused by name (the update is NACKed
    // and the route stays).
    a_refused(&mgmt, r);
}

/// An RDS update whose hedge policy asks for 2 initial requests is
/// refused with the field named.
fn a_refused(
    mgmt: &meshgate_tests::xds::Mgmt,
    mut r: envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
) {
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use meshgate_tests::xds::*;
    for route in r.virtual_hosts[0].routes.iter_mut() {
        if let Some(rds::route::Action::Route(a)) = route.action.as_mut() {
            a.hedge_policy = Some(rds::HedgePolicy {
                initial_requests: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
                ..Default::default()
            });
        }
    }
    mgmt.set(ROUTE, "r2", vec![("r1".into(), any(ROUTE, &r))]);
    let nonce = mgmt.wait_sent(ROUTE, "r2");
    let nack = mgmt.wait_reply(ROUTE, &nonce);
    let msg = nack.error_detail.expect("a NACK").message;
    assert!(msg.contains("hedge_policy.initial_requests"), "{msg}");
}

#[test]
fn previous_priorities_send_the_retry_to_the_next_priority() {
    let a = Upstream::start(|_, _| Act::Answer(Duration::ZERO, unavailable()));
    let b = Upstream::start(|_, _| Act::Answer(Duration::ZERO, ok("p1")));
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
                      - match: {{prefix: /prio}}
                        route:
                          cluster: up
                          retry_policy:
                            retry_on: 5xx
                            num_retries: 1
                            retry_back_off: {{base_interval: 5ms}}
                            retry_priority:
                              name: envoy.retry_priorities.previous_priorities
                              typed_config:
                                "@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig
                                update_frequency: 1
                      - match: {{prefix: /}}
                        route:
                          cluster: up
                          retry_policy: {{retry_on: 5xx, num_retries: 1, retry_back_off: {{base_interval: 5ms}}}}
clusters:
  - name: up
    endpoints:
      - {{address: "{}"}}
      - {{address: "{}", priority: 1}}
"#,
        a.addr, b.addr
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    // Priority 0 is healthy, so it takes every first try (and, without a
    // retry priority, the retry too).
    let (status, _, _) = get(port, "/plain", &[]);
    assert_eq!(status, 503);
    assert_eq!((a.heads().len(), b.heads().len()), (2, 0));
    // previous_priorities: the retry avoids priority 0.
    let (status, _, body) = get(port, "/prio", &[]);
    assert_eq!((status, body.as_str()), (200, "p1"));
    assert_eq!((a.heads().len(), b.heads().len()), (3, 1));
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_success_total",
            "up"
        ),
        1.0
    );
}
