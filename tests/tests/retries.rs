//! End-to-end tests of route retry policies (Envoy's `RetryPolicy`): the
//! real meshgate binary, curl as the client, raw recording upstreams
//! (`scripted`) that answer per path and per try, a Python h2 peer that
//! refuses a stream (REFUSED_STREAM) and a grpcio server whose first call
//! fails UNAVAILABLE (tests/peers/retry_peer.py).

use meshgate_tests::curl::curl;
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When each request reached the upstream, by path.
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// An upstream answering `answer(path, n)` to the n-th (from 1) request
/// for a path, each on its own connection.
fn upstream(answer: impl Fn(&str, usize) -> String + Send + Sync + 'static) -> (Scripted, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let up = Scripted::start(move |head| {
        let path = String::from_utf8_lossy(head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let n = {
            let mut g = s.lock().unwrap();
            g.push((path.clone(), Instant::now()));
            g.iter().filter(|(p, _)| *p == path).count()
        };
        Script::AnswerAndClose(answer(&path, n).into_bytes())
    });
    (up, seen)
}

fn reply(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn times(seen: &Seen, path: &str) -> Vec<Instant> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, t)| *t)
        .collect()
}

fn start(routes: &str, clusters: &str) -> (Meshgate, u16) {
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
                    retry_policy: {{retry_on: retriable-4xx, num_retries: 1, retry_back_off: {{base_interval: 5ms}}}}
                    routes:
{routes}
clusters:
{clusters}
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

#[test]
fn a_503_then_200_is_retried_after_the_exponential_back_off() {
    let (up, seen) = upstream(|_, n| match n {
        1 => reply("503 Service Unavailable", "", "no\n"),
        _ => reply("200 OK", "", "yes\n"),
    });
    let (mg, port) = start(
        r#"                      - match: {prefix: /}
                        route:
                          cluster: up
                          retry_policy:
                            retry_on: 5xx
                            num_retries: 2
                            retry_back_off: {base_interval: 200ms, max_interval: 400ms}"#,
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]",
            up.addr
        ),
    );
    let (status, _, body) = get(port, "/bo", &[]);
    assert_eq!((status, body.as_str()), (200, "yes\n"));
    let t = times(&seen, "/bo");
    assert_eq!(t.len(), 2);
    // Envoy's jitter: the first back-off is uniform in [0, base) and
    // never above max_interval.
    assert!(
        t[1] - t[0] < Duration::from_millis(400 + 300),
        "{:?}",
        t[1] - t[0]
    );
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "up"),
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
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_backoff_exponential_total",
            "up"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_limit_exceeded_total",
            "up"
        ),
        0.0
    );
}

#[test]
fn rate_limited_back_off_honours_retry_after() {
    let (up, seen) = upstream(|_, n| match n {
        1 => reply("503 Service Unavailable", "Retry-After: 1\r\n", "later\n"),
        _ => reply("200 OK", "", "yes\n"),
    });
    let (mg, port) = start(
        r#"                      - match: {prefix: /}
                        route:
                          cluster: up
                          retry_policy:
                            retry_on: 5xx
                            retry_back_off: {base_interval: 5ms}
                            rate_limited_retry_back_off:
                              reset_headers: [{name: Retry-After, format: SECONDS}]
                              max_interval: 3s"#,
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]",
            up.addr
        ),
    );
    let (status, _, body) = get(port, "/rl", &[]);
    assert_eq!((status, body.as_str()), (200, "yes\n"));
    let t = times(&seen, "/rl");
    assert_eq!(t.len(), 2);
    assert!(t[1] - t[0] >= Duration::from_secs(1), "{:?}", t[1] - t[0]);
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_backoff_ratelimited_total",
            "up"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_backoff_exponential_total",
            "up"
        ),
        0.0
    );
}

#[test]
fn retry_on_classes_headers_and_the_virtual_host_policy() {
    let (up, seen) = upstream(|path, n| match (path, n) {
        ("/vh409", 1) => reply("409 Conflict", "", "conflict\n"),
        ("/own409", 1) => reply("409 Conflict", "", "conflict\n"),
        ("/rl", 1) => reply(
            "429 Too Many Requests",
            "x-envoy-ratelimited: true\r\n",
            "slow down\n",
        ),
        ("/hdr", 1) => reply("200 OK", "x-try-again: yes\r\n", "first\n"),
        ("/idem", _) | ("/idem-marked", _) => reply("503 Service Unavailable", "", "no\n"),
        _ => reply("200 OK", "", "second\n"),
    });
    let (mg, port) = start(
        r#"                      - match: {path: /vh409}
                        route: {cluster: up}
                      - match: {path: /own409}
                        route: {cluster: up, retry_policy: {retry_on: 5xx}}
                      - match: {path: /rl}
                        route: {cluster: up, retry_policy: {retry_on: envoy-ratelimited}}
                      - match: {path: /hdr}
                        route:
                          cluster: up
                          retry_policy:
                            retry_on: retriable-headers
                            retriable_headers: [{name: x-try-again, exact_match: "yes"}]
                      - match: {prefix: /idem}
                        route:
                          cluster: up
                          retry_policy:
                            retry_on: 5xx
                            retry_back_off: {base_interval: 5ms}
                            retriable_request_headers: [{name: x-idempotent, present_match: true}]"#,
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]",
            up.addr
        ),
    );
    // The virtual host's retry_policy (retriable-4xx) for a route without one.
    assert_eq!(get(port, "/vh409", &[]).2, "second\n");
    assert_eq!(times(&seen, "/vh409").len(), 2);
    // The route's own policy wins: 409 is not retried there.
    assert_eq!(get(port, "/own409", &[]).0, 409);
    assert_eq!(times(&seen, "/own409").len(), 1);
    // envoy-ratelimited
    assert_eq!(get(port, "/rl", &[]).2, "second\n");
    // retriable-headers
    assert_eq!(get(port, "/hdr", &[]).2, "second\n");
    // retriable_request_headers: only a matching request is retried, and
    // the last 503 is the upstream's own answer.
    let (status, _, body) = get(port, "/idem", &[]);
    assert_eq!((status, body.as_str()), (503, "no\n"));
    assert_eq!(times(&seen, "/idem").len(), 1);
    let (status, _, body) = get(port, "/idem-marked", &["-H", "x-idempotent: 1"]);
    assert_eq!((status, body.as_str()), (503, "no\n"));
    assert_eq!(times(&seen, "/idem-marked").len(), 2);
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_limit_exceeded_total",
            "up"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_success_total",
            "up"
        ),
        3.0
    );
}

#[test]
fn previous_hosts_predicate_sends_the_retry_to_the_other_endpoint() {
    let (a, seen_a) = upstream(|_, _| reply("503 Service Unavailable", "", "a\n"));
    let (b, seen_b) = upstream(|_, _| reply("503 Service Unavailable", "", "b\n"));
    let (_mg, port) = start(
        r#"                      - match: {prefix: /prev}
                        route:
                          cluster: pair
                          hash_policy: [{header: {header_name: x-key}}]
                          retry_policy:
                            retry_on: 5xx
                            retry_back_off: {base_interval: 5ms}
                            retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]
                            host_selection_retry_max_attempts: 3
                      - match: {prefix: /same}
                        route:
                          cluster: pair
                          hash_policy: [{header: {header_name: x-key}}]
                          retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 5ms}}"#,
        &format!(
            "  - name: pair\n    lb_policy: ring_hash\n    endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]",
            a.addr, b.addr
        ),
    );
    // Without the predicate the hash picks the same endpoint again.
    get(port, "/same", &["-H", "x-key: k1"]);
    let same = (times(&seen_a, "/same").len(), times(&seen_b, "/same").len());
    assert!(same == (2, 0) || same == (0, 2), "{same:?}");
    // With it, the retry goes to the other one.
    get(port, "/prev", &["-H", "x-key: k1"]);
    assert_eq!(times(&seen_a, "/prev").len(), 1);
    assert_eq!(times(&seen_b, "/prev").len(), 1);
}

/// A peer of tests/peers/retry_peer.py, killed on drop.
struct Peer(Child, u16, Arc<Mutex<Vec<String>>>);

impl Peer {
    fn start(mode: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/retry_peer.py"))
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio and h2 (tests/run.sh installs them)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("peer did not start: {line:?}"));
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Peer(child, port, lines)
    }

    fn lines(&self) -> Vec<String> {
        self.2.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn refused_stream_over_h2_is_retried() {
    let peer = Peer::start("h2-refuse");
    let (mg, port) = start(
        r#"                      - match: {prefix: /refused/}
                        route: {cluster: h2, retry_policy: {retry_on: refused-stream, retry_back_off: {base_interval: 5ms}}}
                      - match: {prefix: /plain/}
                        route: {cluster: h2, retry_policy: {retry_on: retriable-4xx}}"#,
        &format!(
            "  - name: h2\n    protocol: http2\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]",
            peer.1
        ),
    );
    // A POST with a body: the h2 codec itself only replays bodiless ones.
    let (status, _, body) = get(port, "/refused/refuse-once", &["-d", "payload"]);
    assert_eq!((status, body.as_str()), (200, "ok /refused/refuse-once\n"));
    assert!(
        peer.lines()
            .contains(&"REFUSED /refused/refuse-once".to_string())
    );
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "h2"),
        1.0
    );
    // Without refused-stream in retry_on the refusal is a 503, as Envoy
    // answers a remote reset before the response head (flag UR).
    let (status, _, _) = get(port, "/plain/refuse-once", &["-d", "payload"]);
    assert_eq!(status, 503);
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "upstream_remote_reset")]
        ),
        1.0
    );
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "h2"),
        1.0
    );
}

#[test]
fn grpc_unavailable_is_retried() {
    let server = Peer::start("grpc-server");
    let (mg, port) = start(
        r#"                      - match: {prefix: /test.Retry/}
                        route: {cluster: grpc, retry_policy: {retry_on: unavailable, retry_back_off: {base_interval: 5ms}}}"#,
        &format!(
            "  - name: grpc\n    protocol: http2\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]",
            server.1
        ),
    );
    let out = Command::new("python3")
        .arg(workspace().join("tests/peers/retry_peer.py"))
        .args(["grpc-call", &port.to_string()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.trim(), "OK echo:hi");
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "grpc"),
        1.0
    );
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_success_total",
            "grpc"
        ),
        1.0
    );
}

/// Every gRPC `retry_on` value (read from the `grpc-status` of a
/// trailers-only answer): a real grpcio server fails the first call of
/// each message with the status it names, and a real grpcio client sees
/// the retry's answer; a status not in `retry_on` (ABORTED) is not
/// retried and reaches the client.
#[test]
fn every_grpc_retry_on_status_is_retried() {
    let server = Peer::start("grpc-server");
    let (mg, port) = start(
        r#"                      - match: {prefix: /test.Retry/}
                        route: {cluster: grpc, retry_policy: {retry_on: "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", retry_back_off: {base_interval: 5ms}}}"#,
        &format!(
            "  - name: grpc\n    protocol: http2\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]",
            server.1
        ),
    );
    let call = |message: &str| {
        let out = Command::new("python3")
            .arg(workspace().join("tests/peers/retry_peer.py"))
            .args(["grpc-call", &port.to_string(), message])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let statuses = [
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
    ];
    for s in statuses {
        assert_eq!(call(s), format!("OK echo:{s}"));
    }
    assert_eq!(call("ABORTED"), "ERR ABORTED");
    let retries = counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "grpc");
    assert_eq!(retries, statuses.len() as f64);
    assert_eq!(
        counter(
            &mg,
            "meshgate_cluster_upstream_rq_retry_success_total",
            "grpc"
        ),
        statuses.len() as f64
    );
}

/// `gateway-error` retries 502, 503 and 504 but not 500;
/// `retriable-status-codes` retries the listed codes only.
#[test]
fn gateway_error_and_retriable_status_codes() {
    let (up, seen) = upstream(|path, n| match (path, n) {
        ("/gw502", 1) => reply("502 Bad Gateway", "", "bad\n"),
        ("/gw504", 1) => reply("504 Gateway Timeout", "", "late\n"),
        ("/gw500", _) => reply("500 Internal Server Error", "", "boom\n"),
        ("/teapot", 1) => reply("418 I'm a teapot", "", "tea\n"),
        ("/conflict", 1) => reply("409 Conflict", "", "conflict\n"),
        _ => reply("200 OK", "", "second\n"),
    });
    let (_mg, port) = start(
        r#"                      - match: {prefix: /gw}
                        route: {cluster: up, retry_policy: {retry_on: gateway-error, retry_back_off: {base_interval: 5ms}}}
                      - match: {prefix: /}
                        route: {cluster: up, retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [418], retry_back_off: {base_interval: 5ms}}}"#,
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]",
            up.addr
        ),
    );
    assert_eq!(get(port, "/gw502", &[]).2, "second\n");
    assert_eq!(get(port, "/gw504", &[]).2, "second\n");
    let (status, _, body) = get(port, "/gw500", &[]);
    assert_eq!((status, body.as_str()), (500, "boom\n"));
    assert_eq!(times(&seen, "/gw500").len(), 1);
    assert_eq!(get(port, "/teapot", &[]).2, "second\n");
    assert_eq!(times(&seen, "/teapot").len(), 2);
    // 409 is not in the list (the route's policy replaces the virtual
    // host's retriable-4xx).
    assert_eq!(get(port, "/conflict", &[]).0, 409);
    assert_eq!(times(&seen, "/conflict").len(), 1);
}

#[test]
fn reset_before_request_retries_a_connect_failure_but_not_a_reset_after_the_request() {
    let (live, seen_live) = upstream(|_, _| reply("200 OK", "", "live\n"));
    // Reads the request's head, then closes without a byte of answer: the
    // upstream saw the request, so only `reset` may retry it.
    let (resets, seen_resets) = upstream(|_, _| String::new());
    let dead = format!("127.0.0.1:{}", free_port());
    let (mg, port) = start(
        r#"                      - match: {prefix: /before}
                        route:
                          cluster: dead_live
                          retry_policy: {retry_on: reset-before-request, num_retries: 1, retry_back_off: {base_interval: 5ms}}
                      - match: {prefix: /after-rbr}
                        route:
                          cluster: resets
                          retry_policy: {retry_on: reset-before-request, num_retries: 2, retry_back_off: {base_interval: 5ms}}
                      - match: {prefix: /after-reset}
                        route:
                          cluster: resets
                          retry_policy: {retry_on: reset, num_retries: 1, retry_back_off: {base_interval: 5ms}}
                      - match: {prefix: /after-gw}
                        route:
                          cluster: resets
                          retry_policy: {retry_on: gateway-error, num_retries: 1, retry_back_off: {base_interval: 5ms}}"#,
        &format!(
            "  - name: dead_live\n    endpoints: [{{address: \"{dead}\"}}, {{address: \"{}\"}}]\n  - name: resets\n    endpoints: [{{address: \"{}\"}}]",
            live.addr, resets.addr
        ),
    );
    // Round robin sends some of these to the closed port first: the
    // connect failure is certainly before the request, so it is retried
    // on the live endpoint and every request succeeds.
    for _ in 0..4 {
        let (status, _, body) = get(port, "/before", &[]);
        assert_eq!((status, body.as_str()), (200, "live\n"));
    }
    assert_eq!(times(&seen_live, "/before").len(), 4);
    assert!(counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "dead_live") >= 1.0);
    // A reset after the upstream read the request is not retried by
    // `reset-before-request`...
    // (a 503, as Envoy answers a disconnect before the response head)...
    let (status, _, _) = get(port, "/after-rbr", &[]);
    assert_eq!(status, 503);
    assert_eq!(times(&seen_resets, "/after-rbr").len(), 1);
    // ...but is by `reset`, and by `gateway-error` (a 503).
    let (status, _, _) = get(port, "/after-reset", &[]);
    assert_eq!(status, 503);
    assert_eq!(times(&seen_resets, "/after-reset").len(), 2);
    let (status, _, _) = get(port, "/after-gw", &[]);
    assert_eq!(status, 503);
    assert_eq!(times(&seen_resets, "/after-gw").len(), 2);
}

/// An HTTP/3 upstream (tests/peers/h3_reset_server.py, aioquic) that
/// resets request streams: H3_REQUEST_REJECTED is a refusal that
/// `refused-stream` retries; any other reset, as over HTTP/2, a remote
/// reset answered 503 (`upstream_remote_reset`, flag UR), not a
/// connection termination; the connection keeps serving.
#[test]
fn http3_stream_resets_are_remote_resets_and_rejections_refusals() {
    let certs = |f: &str| {
        workspace()
            .join("examples/certs")
            .join(f)
            .display()
            .to_string()
    };
    let mut child = Command::new("python3")
        .arg(workspace().join("tests/peers/h3_reset_server.py"))
        .args([certs("server.pem"), certs("server.key")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    let up: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("h3_reset_server.py did not start: {line:?}"));
    let (mg, port) = start(
        r#"                      - match: {prefix: /reject}
                        route: {cluster: h3, retry_policy: {retry_on: refused-stream, num_retries: 1, retry_back_off: {base_interval: 5ms}}}
                      - match: {prefix: /}
                        route: {cluster: h3}"#,
        &format!(
            "  - name: h3\n    protocol: http3\n    tls: {{trusted_ca: \"{}\", sni: localhost}}\n    endpoints: [{{address: \"127.0.0.1:{up}\"}}]",
            certs("ca.pem")
        ),
    );
    let (status, _, body) = get(port, "/ok", &[]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let remote_resets = || {
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "upstream_remote_reset")],
        )
    };
    let (status, _, body) = get(port, "/reset", &[]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(remote_resets(), 1.0);
    // Refused on every try: retried once, then the refusal answers.
    let (status, _, body) = get(port, "/reject", &[]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        counter(&mg, "meshgate_cluster_upstream_rq_retry_total", "h3"),
        1.0
    );
    assert_eq!(remote_resets(), 2.0);
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "upstream_reset")],
        ),
        0.0
    );
    let (status, _, body) = get(port, "/ok", &[]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}
