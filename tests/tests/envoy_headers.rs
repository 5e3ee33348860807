//! The router's `x-envoy-*` headers end to end over HTTP/1.1 and HTTP/2
//! (curl): `x-envoy-upstream-service-time` on responses from upstream (an
//! upstream that waits 60 ms gives a value of at least 60),
//! `x-envoy-attempt-count` to the upstream (each try's number, seen by a
//! recording upstream) and to the client (2 after one retry), and none of
//! them when the router's `suppress_envoy_headers` is set.

use meshgate_tests::curl::curl;
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfail";

/// An upstream that answers each request 60 ms after its head arrived
/// (the delay is what the test measures).
fn delaying_upstream() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(60));
                let _ = s.write_all(OK);
            });
        }
    });
    addr
}

/// Fails the first connection with 503, answers the others.
fn flaky() -> Scripted {
    let n = Arc::new(AtomicUsize::new(0));
    Scripted::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Script::AnswerAndClose(UNAVAILABLE.to_vec())
        } else {
            Script::Answer(OK.to_vec())
        }
    })
}

fn listener(name: &str, port: u16, router: &str, slow: &str, flaky: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters: [{router}]
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    include_request_attempt_count: true
                    include_attempt_count_in_response: true
                    routes:
                      - match: {{prefix: /slow}}
                        route: {{cluster: {slow}}}
                      - match: {{prefix: /retry}}
                        route:
                          cluster: {flaky}
                          retry_policy: {{retry_on: 5xx, num_retries: 1}}
                      - match: {{prefix: /local}}
                        direct_response: {{status: 200, body: here}}
"#
    )
}

struct Setup {
    mg: Meshgate,
    on: u16,
    off: u16,
    flaky_on: Scripted,
    flaky_off: Scripted,
}

fn setup() -> Setup {
    let slow = delaying_upstream();
    let flaky_on = flaky();
    let flaky_off = flaky();
    let (on, off) = (free_port(), free_port());
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{}{}clusters:
  - name: slow
    endpoints: [{{address: "{slow}"}}]
  - name: flaky_on
    endpoints: [{{address: "{}"}}]
  - name: flaky_off
    endpoints: [{{address: "{}"}}]
"#,
        listener("on", on, "", "slow", "flaky_on"),
        listener(
            "off",
            off,
            "{name: envoy.filters.http.router, config: {suppress_envoy_headers: true}}",
            "slow",
            "flaky_off"
        ),
        flaky_on.addr,
        flaky_off.addr,
    );
    Setup {
        mg: Meshgate::start(&yaml),
        on,
        off,
        flaky_on,
        flaky_off,
    }
}

fn service_time(h: &std::collections::BTreeMap<String, String>) -> u64 {
    h.get("x-envoy-upstream-service-time")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-envoy-upstream-service-time in {h:?}"))
}

#[test]
fn upstream_service_time_over_h1_and_h2_and_suppressed() {
    let s = setup();
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, h, body) = curl(&[proto, &format!("http://127.0.0.1:{}/slow", s.on)]);
        assert_eq!(status, 200, "{proto}: {body}");
        let ms = service_time(&h);
        assert!((60..10_000).contains(&ms), "{proto}: {ms} ms");
        // One try: the count says so.
        assert_eq!(h["x-envoy-attempt-count"], "1", "{proto}");
        // A local answer did not come from upstream: no service time.
        let (status, h, _) = curl(&[proto, &format!("http://127.0.0.1:{}/local", s.on)]);
        assert_eq!(status, 200);
        assert!(!h.contains_key("x-envoy-upstream-service-time"), "{h:?}");

        let (status, h, _) = curl(&[proto, &format!("http://127.0.0.1:{}/slow", s.off)]);
        assert_eq!(status, 200);
        assert!(
            !h.keys().any(|k| k.starts_with("x-envoy-")),
            "{proto}: suppressed, yet {h:?}"
        );
    }
    drop(s.mg);
}

#[test]
fn attempt_count_after_one_retry_to_upstream_and_client() {
    let s = setup();
    let (status, h, body) = curl(&[&format!("http://127.0.0.1:{}/retry", s.on)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-envoy-attempt-count"], "2", "{h:?}");
    let conns = s.flaky_on.conns();
    assert_eq!(conns.len(), 2);
    let first = String::from_utf8_lossy(&conns[0].bytes).to_ascii_lowercase();
    let second = String::from_utf8_lossy(&conns[1].bytes).to_ascii_lowercase();
    assert!(first.contains("x-envoy-attempt-count: 1\r\n"), "{first}");
    assert!(second.contains("x-envoy-attempt-count: 2\r\n"), "{second}");
    s.mg.wait_metric(
        "meshgate_cluster_upstream_rq_retry_total",
        &[("cluster", "flaky_on")],
        |v| v >= 1.0,
    );

    // HTTP/2 downstream, suppressed: retried the same, no header either way.
    let (status, h, body) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/retry", s.off),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(!h.keys().any(|k| k.starts_with("x-envoy-")), "{h:?}");
    let conns = s.flaky_off.conns();
    assert_eq!(conns.len(), 2, "the suppressed listener retried too");
    for c in conns {
        let text = String::from_utf8_lossy(&c.bytes).to_ascii_lowercase();
        assert!(!text.contains("x-envoy-attempt-count"), "{text}");
    }
}

#[test]
fn router_options_are_checked_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        format!(
            "listeners:\n{}clusters:\n  - name: slow\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n",
            listener(
                "l",
                0,
                "{name: envoy.filters.http.router, config: {dynamic_stats: false}}",
                "slow",
                "slow"
            )
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("stream_filters[0].config"),
        "{out}{err}"
    );
}
