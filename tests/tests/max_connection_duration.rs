//! End-to-end tests of the HCM's `max_connection_duration` and
//! `drain_timeout` (`common_http_protocol_options.max_connection_duration`
//! on the `proxy` filter): the real meshgate binary, raw HTTP/1.1 and
//! HTTP/2 client sockets that watch the connection's end and GOAWAY, curl
//! for a stream that outlives the limit, an aioquic HTTP/3 client
//! (tests/peers/h3_goaway.py) that reports GOAWAY, its response and the
//! QUIC connection's end, and a real HTTP backend whose `/slow` answers
//! after 3 s.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::h2raw::{idle_h2, read_until_goaway};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Two listeners to `backend`, both with a 1 s `max_connection_duration`:
/// `patient` lets streams finish for 5 s after it, `strict` for 1 s.
fn config(backend: SocketAddr) -> String {
    let listener = |name: &str, drain: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              common_http_protocol_options: {{max_connection_duration: 1s}}
              drain_timeout: {drain}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: b, timeout: 30s}}
"#
        )
    };
    format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}clusters:\n  - name: b\n    endpoints: [{{address: \"{backend}\"}}]\n",
        listener("patient", "5s"),
        listener("strict", "1s")
    )
}

/// Sends an HTTP/1.1 GET for `path` on `s` and reads its response head
/// and its `content-length` body; the head's text.
fn exchange(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before a response head"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no response head: {e}"),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while got.len() < end + len {
        match s.read(&mut buf) {
            Ok(0) => panic!("closed inside the body"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("body: {e}"),
        }
    }
    head
}

/// Waits for the server to close `s`; what was read before.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("not closed: {e}"),
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn reached(mg: &Meshgate, listener: &str) -> f64 {
    mg.metric(
        "meshgate_http_downstream_cx_max_duration_reached_total",
        &[("listener", listener)],
    )
}

/// HTTP/1.1: an idle keep-alive connection is closed at the limit; a
/// request in flight at the limit gets its response with `connection:
/// close`, then the connection closes; past `drain_timeout` a stream
/// still waiting is cut off.
#[test]
fn http1_connections_close_at_the_limit_and_in_flight_requests_finish_within_the_drain() {
    let b = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(b.addr));
    let patient = mg.listener_port("patient");
    let strict = mg.listener_port("strict");

    // Idle after one exchange: closed at about 1 s.
    let opened = Instant::now();
    let mut idle = connect(patient);
    let head = exchange(&mut idle, "/a");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(read_to_close(&mut idle).is_empty());
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(5),
        "{lived:?}"
    );

    // A 3 s request in flight at the limit: answered (the drain lasts
    // 5 s), with `connection: close`, then the end.
    let opened = Instant::now();
    let mut busy = connect(patient);
    let head = exchange(&mut busy, "/slow");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(opened.elapsed() >= Duration::from_secs(3));
    assert!(read_to_close(&mut busy).is_empty());
    assert_eq!(reached(&mg, "patient"), 2.0);

    // The same on `strict`: its 1 s drain ends before the 3 s answer.
    let opened = Instant::now();
    let mut cut = connect(strict);
    cut.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut cut);
    let lived = opened.elapsed();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        lived >= Duration::from_millis(1800) && lived < Duration::from_millis(2900),
        "closed after {lived:?}: 1 s limit + 1 s drain, before the 3 s answer"
    );
    assert_eq!(reached(&mg, "strict"), 1.0);
}

/// HTTP/2: GOAWAY at the limit; a stream in flight finishes within the
/// drain.
#[test]
fn http2_connections_get_goaway_at_the_limit_and_streams_finish() {
    let b = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(b.addr));
    let patient = mg.listener_port("patient");

    let opened = Instant::now();
    let mut idle = idle_h2(patient);
    read_until_goaway(&mut idle);
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(5),
        "{lived:?}"
    );

    // curl's connection carries the 3 s /slow across the 1 s limit: the
    // GOAWAY lets the stream in flight finish (the 5 s drain).
    let url = format!("http://127.0.0.1:{patient}/slow");
    let (status, _, body) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("uri=/slow"), "{body}");
    mg.wait_metric(
        "meshgate_http_downstream_cx_max_duration_reached_total",
        &[("listener", "patient")],
        |v| v >= 2.0,
    );
}

/// An HTTP/3 listener (QUIC) to `backend` with a 1 s
/// `max_connection_duration` and a 5 s `drain_timeout`.
fn h3_config(port: u16, backend: SocketAddr) -> String {
    let certs = |f: &str| {
        workspace()
            .join("examples/certs")
            .join(f)
            .display()
            .to_string()
    };
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              common_http_protocol_options: {{max_connection_duration: 1s}}
              drain_timeout: 5s
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: b, timeout: 30s}}
clusters:
  - name: b
    endpoints: [{{address: "{backend}"}}]
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    )
}

/// tests/peers/h3_goaway.py on `port`, sending `GET path` when given: its
/// event lines (`goaway T ID`, `response T STATUS BODY`, `closed T ...`),
/// each with the seconds since the handshake as `T`.
fn h3_watch(port: u16, path: Option<&str>) -> Vec<(String, f64, String)> {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["40", "python3"])
        .arg(workspace().join("tests/peers/h3_goaway.py"))
        .arg(port.to_string())
        .arg(workspace().join("examples/certs/ca.pem"));
    if let Some(path) = path {
        cmd.arg(path);
    }
    let o = cmd
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "h3_goaway.py: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.lines()
        .map(|l| {
            let mut w = l.splitn(3, ' ');
            let what = w.next().unwrap().to_string();
            let at: f64 = w.next().and_then(|t| t.parse().ok()).unwrap_or(-1.0);
            (what, at, w.next().unwrap_or("").to_string())
        })
        .collect()
}

/// HTTP/3: GOAWAY at the limit and the QUIC connection's end; a stream
/// in flight at the limit finishes within the drain.
#[test]
fn http3_connections_get_goaway_at_the_limit_and_streams_finish() {
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&h3_config(port, b.addr));

    // Idle: GOAWAY at about 1 s, then the connection closes.
    let events = h3_watch(port, None);
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["goaway", "closed"], "{events:?}");
    for (what, at, _) in &events {
        assert!((0.8..5.0).contains(at), "{what} after {at} s: {events:?}");
    }
    mg.wait_metric(
        "meshgate_http_downstream_cx_max_duration_reached_total",
        &[("listener", "h3")],
        |v| v >= 1.0,
    );

    // A 3 s /slow in flight across the limit: GOAWAY at about 1 s, the
    // answer (200) at about 3 s, then the end.
    let events = h3_watch(port, Some("/slow"));
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["goaway", "response", "closed"], "{events:?}");
    let (goaway, answered) = (events[0].1, events[1].1);
    assert!((0.8..2.9).contains(&goaway), "GOAWAY after {goaway} s");
    assert!(answered >= 2.9, "answered after {answered} s");
    assert!(events[1].2.starts_with("200 "), "{events:?}");
    assert!(events[1].2.contains("uri=/slow"), "{events:?}");
    assert!(events[2].1 < 6.0, "{events:?}");
    mg.wait_metric(
        "meshgate_http_downstream_cx_max_duration_reached_total",
        &[("listener", "h3")],
        |v| v >= 2.0,
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_xx_total",
            &[("listener", "h3"), ("code_class", "2xx")]
        ),
        1.0
    );
}

/// A bad value names the field.
#[test]
fn a_bad_max_connection_duration_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        config(([127, 0, 0, 1], 9).into())
            .replace("{ADMIN}", "127.0.0.1:0")
            .replace(
                "max_connection_duration: 1s",
                "max_connection_duration: soon",
            ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("max_connection_duration"),
        "{out}{err}"
    );
}
