//! Follow-ups of issue 14 (edge correctness), through the real binary:
//! HTTP/3 downstream connection idle timeout and request header timeout
//! (aioquic), the request body limit on HTTP/3 (aioquic) and after the
//! response has started (python h2, raw sockets), against a raw scripted
//! upstream that records what reached it.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy filter's config lines (indented under `config:`) and a route
/// of everything to cluster `up` at `up` speaking `protocol`.
fn proxy_yaml(proxy_opts: &str, up: SocketAddr, protocol: &str) -> String {
    format!(
        r#"{proxy_opts}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: "/"}}
                        route: {{cluster: up}}
clusters:
  - name: up
    protocol: {protocol}
    endpoints: [{{address: "{up}"}}]
"#
    )
}

/// A meshgate with one HTTP/3 (QUIC) listener named `h3`.
fn start_h3(proxy_opts: &str, up: SocketAddr) -> (Meshgate, u16) {
    let port = free_port();
    let certs = workspace().join("examples/certs");
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
        filters:
          - name: proxy
            config:
{}"#,
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
        proxy_yaml(proxy_opts, up, "http1")
    );
    (Meshgate::start(&yaml), port)
}

/// A meshgate with one TCP listener named `edge` (`codec: auto`) and a
/// request body limit of 1000 bytes, to an HTTP/2 upstream.
fn start_tcp_h2_upstream(up: SocketAddr) -> (Meshgate, u16) {
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: edge
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{}"#,
        proxy_yaml("              max_request_body_bytes: 1000", up, "http2")
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    (mg, port)
}

/// Runs tests/peers/h3_followups.py; its output lines.
fn h3_peer(mode: &str, port: u16, n: usize) -> String {
    let out = Command::new("timeout")
        .args(["40", "python3"])
        .arg(workspace().join("tests/peers/h3_followups.py"))
        .arg(mode)
        .arg(port.to_string())
        .arg(workspace().join("examples/certs/ca.pem"))
        .arg(n.to_string())
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

#[test]
fn http3_connection_without_streams_is_closed_after_the_idle_timeout() {
    let up = Scripted::start(|_| Script::AnswerAndClose(OK.to_vec()));
    let (mg, port) = start_h3(
        "              common_http_protocol_options: {idle_timeout: 300ms}",
        up.addr,
    );
    let started = Instant::now();
    let r = h3_peer("idle", port, 0);
    // GOAWAY on the control stream, then the connection closed with
    // H3_NO_ERROR, well before the client's own 60 s QUIC idle timeout.
    assert!(r.starts_with("goaway=yes closed code=0x100"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_idle_timeout_total",
            &[("listener", "h3"), ("codec", "http3")],
        ),
        1.0
    );
    // A connection that has a stream is not idle: a request still works
    // (and its connection is then closed as idle in turn).
    let r = h3_peer("body", port, 0);
    assert!(r.starts_with("status=200"), "{r}");
}

#[test]
fn http3_connection_with_a_stream_in_flight_is_not_idle() {
    // The backend answers `/slow` after 3 s, ten idle timeouts.
    let slow = HttpBackend::start("slow", Proto::Http1);
    let (mg, port) = start_h3(
        "              common_http_protocol_options: {idle_timeout: 300ms}",
        slow.addr,
    );
    let r = h3_peer("slow", port, 0);
    assert!(r.starts_with("status=200"), "{r}");
    assert_eq!(slow.hits(), 1);
    // The idle timer never fired while the stream was active (the client
    // closed the connection itself right after the response).
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_idle_timeout_total",
            &[("listener", "h3"), ("codec", "http3")],
        ),
        0.0
    );
}

#[test]
fn http3_request_head_not_complete_in_time_is_reset_and_counted() {
    let up = Scripted::start(|_| Script::AnswerAndClose(OK.to_vec()));
    let (mg, port) = start_h3(
        "              codec_options: {http3: {request_headers_timeout: 300ms}}",
        up.addr,
    );
    let r = h3_peer("head", port, 0);
    let mut lines = r.lines();
    // H3_REQUEST_INCOMPLETE (RFC 9114 section 4.1), the connection lives on.
    assert_eq!(lines.next(), Some("reset code=0x10d"), "{r}");
    assert_eq!(lines.next(), Some("status=200"), "{r}");
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[
                ("listener", "h3"),
                ("codec", "http3"),
                ("reason", "header_timeout")
            ],
        ),
        1.0
    );
    // Only the complete request reached the upstream.
    assert_eq!(up.conns().len(), 1);
}

#[test]
fn http3_request_body_over_the_limit_is_413() {
    let up = Scripted::start(|_| Script::Silent);
    let (mg, port) = start_h3("              max_request_body_bytes: 1000", up.addr);
    let r = h3_peer("body", port, 5000);
    assert!(r.starts_with("status=413"), "{r}");
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http3")]
        ),
        1.0
    );
    // The upstream never got the bytes over the limit.
    if let Some(c) = up.conns().first() {
        assert!(!contains(&c.bytes, &[b'z'; 1001]));
    }
}

/// An HTTP/2 upstream (tests/peers/h2_answers_early.py) that answers a
/// request's head and 5 body bytes at once and keeps reading the request
/// body (an HTTP/1.1 upstream that answers early makes meshgate stop
/// sending the body, so the limit could never be reached after the
/// response started).
struct EarlyH2 {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    addr: SocketAddr,
}

impl EarlyH2 {
    fn start() -> Self {
        let mut child = Command::new("timeout")
            .args(["40", "python3"])
            .arg(workspace().join("tests/peers/h2_answers_early.py"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with h2");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line.trim().strip_prefix("port=").unwrap().parse().unwrap();
        Self {
            child,
            out,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// What the upstream saw of the request stream once it ended.
    fn report(mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim().to_string()
    }
}

/// The upstream's report must show a request body cut short: reset, never
/// ended, nothing over the limit.
fn assert_upstream_cut(report: &str) {
    assert!(report.contains("reset=yes"), "{report}");
    assert!(report.contains("ended=no"), "{report}");
    let bytes: usize = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(bytes <= 1000, "{report}");
}

#[test]
fn http1_body_over_the_limit_after_the_response_started_closes_the_connection() {
    let up = EarlyH2::start();
    let (mg, port) = start_tcp_h2_upstream(up.addr);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    s.write_all(format!("258\r\n{}\r\n", "a".repeat(600)).as_bytes())
        .unwrap();
    // The response has started: its head and first bytes reached the
    // client.
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !contains(&got, b"first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // Now over the limit.
    let _ = s.write_all(format!("258\r\n{}\r\n", "b".repeat(600)).as_bytes());
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Closed without completing the 100-byte body, and no 413 appended.
    let text = String::from_utf8_lossy(&got).into_owned();
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.len() - body_at < 100, "{text}");
    assert!(!text.contains("413"), "{text}");
    assert_upstream_cut(&up.report());
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http1")]
        ),
        1.0
    );
}

#[test]
fn http2_body_over_the_limit_after_the_response_started_resets_the_stream() {
    let up = EarlyH2::start();
    let (mg, port) = start_tcp_h2_upstream(up.addr);
    // Python h2, prior knowledge: 600 bytes, wait for the response head,
    // then 600 more; prints the events of stream 1.
    let script = format!(
        r#"
import socket, h2.connection, h2.events
s = socket.create_connection(("127.0.0.1", {port}))
s.settimeout(10)
c = h2.connection.H2Connection()
c.initiate_connection()
c.send_headers(1, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"), (":authority", "x")])
c.send_data(1, b"a" * 600)
s.sendall(c.data_to_send())
out = []
sent_more = False
while True:
    data = s.recv(65535)
    if not data:
        out.append("eof")
        break
    done = False
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            out.append("status=" + dict(e.headers)[b":status"].decode())
        elif isinstance(e, h2.events.DataReceived):
            out.append("data=%d" % len(e.data))
            c.acknowledge_received_data(e.flow_controlled_length, 1)
        elif isinstance(e, h2.events.StreamReset):
            out.append("reset=%d" % e.error_code)
            done = True
        elif isinstance(e, h2.events.StreamEnded):
            out.append("ended")
            done = True
    if not sent_more and any(o.startswith("status=") for o in out):
        sent_more = True
        c.send_data(1, b"b" * 600)
    s.sendall(c.data_to_send())
    if done:
        break
print(" ".join(out))
"#
    );
    let out = Command::new("timeout")
        .args(["30", "python3", "-c", &script])
        .output()
        .expect("python3 with h2");
    let r = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The response started (200 and its first bytes), then the stream was
    // reset instead of ending.
    assert!(r.starts_with("status=200 data=5"), "{r}");
    assert!(r.contains("reset="), "{r}");
    assert!(!r.contains("ended"), "{r}");
    assert_upstream_cut(&up.report());
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http2")]
        ),
        1.0
    );
}
