//! Hostile HTTP/1.1 input and broken upstreams through the real binary:
//! request smuggling shapes, size and count limits, slow clients, and
//! upstreams that send garbage, never answer or reset. Each gets its
//! status, the connection is closed, a metric counts it, and meshgate
//! keeps serving.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

struct Front {
    mg: Meshgate,
    port: u16,
    /// The access log: `%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%
    /// %UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _echo: HttpBackend,
    _echo_h2: HttpBackend,
}

fn front() -> Front {
    // Upstream that answers garbage, one that never answers, one that
    // resets, one that closes: raw TCP peers.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in garbage.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"SSH-2.0-not-http\r\n\r\n");
        }
    });
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let reset = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = reset.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in reset.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    // Reads the request, then closes the connection without a word (a
    // FIN, not a reset).
    let close = TcpListener::bind("127.0.0.1:0").unwrap();
    let close_addr = close.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in close.incoming().flatten() {
            let mut s = s;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let echo = HttpBackend::start("echo", Proto::Http1);
    let echo_addr = echo.addr;
    let echo_h2 = HttpBackend::start("echo-h2", Proto::H2c);
    let echo_h2_addr = echo_h2.addr;
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              max_request_body_bytes: 1000
              access_log:
                - name: envoy.access_loggers.file
                  typed_config:
                    path: "{log}"
                    log_format: {{text_format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"}}
              codec_options:
                http1: {{max_request_headers_bytes: 8192, max_request_headers: 20, request_headers_timeout: 1s}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /garbage}}
                        route: {{cluster: garbage}}
                      - match: {{prefix: /silent}}
                        route: {{cluster: silent, timeout: 500ms}}
                      - match: {{prefix: /reset}}
                        route: {{cluster: reset}}
                      - match: {{prefix: /close}}
                        route: {{cluster: close}}
                      - match: {{prefix: /echo-h2}}
                        route: {{cluster: echo_h2}}
                      - match: {{prefix: /echo}}
                        route: {{cluster: echo}}
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "ok\n"}}
clusters:
  - name: garbage
    endpoints: [{{address: "{garbage_addr}"}}]
  - name: silent
    endpoints: [{{address: "{silent_addr}"}}]
  - name: reset
    endpoints: [{{address: "{reset_addr}"}}]
  - name: close
    endpoints: [{{address: "{close_addr}"}}]
  - name: echo
    endpoints: [{{address: "{echo_addr}"}}]
  - name: echo_h2
    protocol: http2
    endpoints: [{{address: "{echo_h2_addr}"}}]
"#,
        log = log.display()
    );
    Front {
        mg: Meshgate::start(&yaml),
        port,
        log,
        _dir: dir,
        _echo: echo,
        _echo_h2: echo_h2,
    }
}

/// Sends raw bytes; returns (status code, whether the connection was then
/// closed by meshgate, elapsed).
fn raw(port: u16, bytes: &[u8]) -> (u16, bool, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 8192];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got);
    let code = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, closed, t.elapsed())
}

fn still_serving(port: u16) {
    let (code, body) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}

fn protocol_errors(f: &Front, reason: &str) -> f64 {
    f.mg.metric(
        "meshgate_http_downstream_cx_protocol_error_total",
        &[("listener", "http"), ("reason", reason)],
    )
}

#[test]
fn smuggling_shapes_get_400_and_close() {
    let f = front();
    let cases: [(&str, &[u8]); 14] = [
        (
            "duplicate differing content-length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "content-length that is not a number",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n",
        ),
        (
            "control character in a header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        ),
        (
            "unknown transfer coding after chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n",
        ),
        (
            "chunked that is not the final coding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ),
        (
            "both content-length and transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "transfer-encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bare LF in the head",
            b"GET / HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n",
        ),
        ("missing host", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n"),
        (
            "repeated host",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        ),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            // Found while the request streams to an HTTP/2 upstream.
            "bad chunk size, HTTP/2 upstream",
            b"POST /echo-h2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let (code, closed, _) = raw(f.port, bytes);
        assert_eq!(code, 400, "{name}");
        assert!(closed, "{name}: connection left open");
    }
    assert!(protocol_errors(&f, "bad_request") >= 12.0);
    still_serving(f.port);
}

#[test]
fn unsupported_transfer_coding_gets_501() {
    // RFC 9112 section 6.1: a coding meshgate does not implement, with
    // chunked final, is 501 (and the connection closes: the body's end
    // cannot be known to the next hop).
    let f = front();
    let (code, closed, _) = raw(
        f.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(code, 501);
    assert!(closed);
    still_serving(f.port);
}

#[test]
fn content_length_with_transfer_encoding_cannot_smuggle() {
    // Both framings on one request is the classic smuggling shape: refused
    // outright (400 and close), so what follows the chunked body (a
    // second, smuggled request) is never read, let alone answered.
    let f = front();
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert_eq!(f._echo.hits(), 0, "nothing reached the upstream");
    still_serving(f.port);
}

#[test]
fn chunked_request_body_streams_to_the_upstream_intact() {
    // The well-formed counterpart of the cases above: chunk extensions and
    // trailers are legal, the body arrives whole, keep-alive holds.
    let f = front();
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        s.write_all(req).unwrap();
        let reply = read_reply(&mut r).expect("a whole response");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(!reply.close, "keep-alive must hold");
        assert!(reply.body.contains("body-bytes=11\n"), "{}", reply.body);
    }
}

#[test]
fn size_and_count_limits() {
    let f = front();
    let mut big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 10_000));
    big_header.extend_from_slice(b"\r\n\r\n");
    let mut long_uri = b"GET /".to_vec();
    long_uri.extend(std::iter::repeat_n(b'a', 10_000));
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..30 {
        many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for (name, bytes) in [
        ("header too big", &big_header),
        ("request line too long", &long_uri),
        ("too many headers", &many),
    ] {
        let (code, closed, _) = raw(f.port, bytes);
        assert_eq!(code, 431, "{name}");
        assert!(closed, "{name}");
    }
    assert!(protocol_errors(&f, "headers_too_large") >= 3.0);
    let mut body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'a', 5000));
    let (code, _, _) = raw(f.port, &body);
    assert_eq!(code, 413);
    assert!(
        f.mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "payload_too_large")]
        ) >= 1.0
    );
    still_serving(f.port);
}

#[test]
fn slow_headers_are_cut_off() {
    let f = front();
    let (_, closed, took) = raw(f.port, b"GET / HTTP/1.1\r\nHo");
    assert!(closed);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(protocol_errors(&f, "header_timeout") >= 1.0);
    still_serving(f.port);
}

/// As Envoy answers: an upstream that breaks the protocol is 502 (flag
/// `UPE`), one that never answers 504 (`UT`), one that resets or closes
/// the connection before the response head 503 (`UC`, "upstream connect
/// error or disconnect/reset before headers").
#[test]
fn broken_upstreams_get_502_504_503() {
    let f = front();
    let cases = [
        ("/garbage", 502, "upstream_protocol_error", "UPE"),
        ("/silent", 504, "upstream_timeout", "UT"),
        ("/reset", 503, "upstream_reset", "UC"),
        ("/close", 503, "upstream_reset", "UC"),
    ];
    for (path, want, reason, _) in cases {
        let t = Instant::now();
        let (code, body) =
            http_get(format!("127.0.0.1:{}", f.port).parse().unwrap(), path).unwrap();
        assert_eq!(code, want, "{path}: {body}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{path}: {:?}",
            t.elapsed()
        );
        if want == 503 {
            assert_eq!(
                body,
                "meshgate: upstream connect error or disconnect/reset before headers. reset reason: connection termination\n",
                "{path}"
            );
        }
        assert!(
            f.mg.metric(
                "meshgate_downstream_rq_local_reply_total",
                &[("reason", reason)]
            ) >= 1.0,
            "{path}: {reason} not counted"
        );
    }
    let lines = wait_for_within(10, "four access log lines", || {
        let text = std::fs::read_to_string(&f.log).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        (l.len() >= cases.len()).then_some(l)
    });
    for (path, want, reason, flag) in cases {
        let reason = if flag == "UT" { "-" } else { reason };
        let line = format!("{path} {want} {flag} {reason}");
        assert!(lines.contains(&line), "{line} not in {lines:?}");
    }
    still_serving(f.port);
}

#[test]
fn upstream_keepalive_closed_while_idle_costs_no_request() {
    // The upstream answers one request per connection with a keep-alive
    // response, then closes the connection while it is idle in meshgate's
    // pool (or sends stray bytes after the response): the next request
    // must not fail nor get a stale answer.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    // Answers the client got, and upstream connections closed since: the
    // upstream closes connection i once answer i reached the client (so
    // the connection sits idle in meshgate's pool), and the next request
    // goes out once that close happened.
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let closed = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let (answered_up, closed_up) = (answered.clone(), closed.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (answered, closed) = (answered_up.clone(), closed_up.clone());
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = format!("conn{i}");
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes();
                if i % 2 == 1 {
                    resp.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale");
                }
                let _ = s.write_all(&resp);
                if poll(Duration::from_secs(10), || {
                    (answered.load(SeqCst) > i).then_some(())
                })
                .is_some()
                {
                    drop(s);
                    closed.fetch_add(1, SeqCst);
                }
            });
        }
    });
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: flaky}}
clusters:
  - name: flaky
    endpoints: [{{address: "{addr}"}}]
"#
    ));
    let front = format!("127.0.0.1:{port}").parse().unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (code, body) = http_get(front, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.starts_with("conn") && !body.contains("stale"),
            "{body}"
        );
        assert!(!seen.contains(&body), "answer reused: {body}");
        seen.push(body);
        let got = answered.fetch_add(1, SeqCst) + 1;
        wait_until("the upstream to close the answered connection", || {
            closed.load(SeqCst) >= got
        });
    }
    drop(mg);
}

#[test]
fn route_timeouts_hold_on_a_reused_upstream_connection() {
    // meshgate watches an HTTP/1.1 exchange's deadline with one timer per
    // upstream connection. On one kept-alive connection: a short deadline
    // after a long one must still fire on time (504), and a long one
    // after a short one must not fire early (200 after 600 ms).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut s = s;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let req = String::from_utf8_lossy(&head[..end]).to_string();
                        head.drain(..end + 4);
                        if req.contains(" /hang") {
                            // Never answers: holds the connection until
                            // meshgate gives up on it.
                            while s.read(&mut buf).is_ok_and(|n| n > 0) {}
                            return;
                        }
                        if req.contains(" /slow") {
                            // Time on purpose: slower than the short
                            // route timeout (300 ms) the request must not
                            // inherit.
                            std::thread::sleep(Duration::from_millis(600));
                        }
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /short}}
                        route: {{cluster: b, timeout: 300ms}}
                      - match: {{prefix: /hang}}
                        route: {{cluster: b, timeout: 300ms}}
                      - match: {{prefix: /}}
                        route: {{cluster: b, timeout: 10s}}
clusters:
  - name: b
    endpoints: [{{address: "{addr}"}}]
"#
    ));
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Long deadline, then a short one that the upstream never answers.
    assert_eq!(http_get(front, "/long").unwrap().0, 200);
    let t = Instant::now();
    assert_eq!(http_get(front, "/hang").unwrap().0, 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Short deadline, then a long one on the same connection that takes
    // longer than the short one.
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(http_get(front, "/short").unwrap().0, 200);
    let t = Instant::now();
    assert_eq!(http_get(front, "/slow").unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(550));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "the two requests were meant to share one upstream connection"
    );
    drop(mg);
}
