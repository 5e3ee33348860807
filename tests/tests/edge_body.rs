//! Bodies, stream timeouts and upstream responses at the edge (issue 14),
//! through the real binary against raw clients, curl, grpcio and a raw
//! scripted upstream that records every byte that reached it:
//! `max_request_body_bytes` whatever the framing (the upstream never sees
//! a complete request), the stream idle timeout, the route timeout counted
//! from the request head, early upstream answers, transfer codings,
//! invalid statuses and Content-Length values, forbidden trailers.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A meshgate with one listener (`codec: auto`) whose routes are
/// `(prefix, cluster, extra route fields)`, to clusters `(name, address,
/// protocol)`.
fn start(
    proxy_opts: &str,
    routes: &[(&str, &str, &str)],
    clusters: &[(&str, SocketAddr, &str)],
) -> (Meshgate, u16) {
    let port = free_port();
    let mut r = String::new();
    for (prefix, cluster, extra) in routes {
        r.push_str(&format!(
            "                      - match: {{prefix: \"{prefix}\"}}\n                        route: {{cluster: {cluster}{extra}}}\n"
        ));
    }
    let mut c = String::new();
    for (name, addr, proto) in clusters {
        c.push_str(&format!(
            "  - name: {name}\n    protocol: {proto}\n    endpoints: [{{address: \"{addr}\"}}]\n"
        ));
    }
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
{proxy_opts}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
{r}clusters:
{c}"#
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    (mg, port)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the peer closes (or resets): everything received.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn status(resp: &[u8]) -> u16 {
    String::from_utf8_lossy(resp)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

/// One request on a fresh connection, read to the close.
fn once(port: u16, req: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(req).unwrap();
    read_all(&mut s)
}

/// Waits until `cond` holds on the upstream's first connection.
fn wait_upstream(up: &Scripted, cond: impl Fn(&[u8]) -> bool) {
    wait_until_within(10, "the expected bytes at the upstream", || {
        up.conns().first().is_some_and(|c| cond(&c.bytes))
    });
}

fn curl(args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut c = Command::new("curl")
        .args(["-s", "-m", "10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut input = c.stdin.take().unwrap();
    if let Some(b) = stdin {
        let _ = input.write_all(b);
    }
    drop(input);
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const LIMIT: &str = "              max_request_body_bytes: 1000";

#[test]
fn chunked_body_over_the_limit_is_413_and_the_upstream_never_gets_a_complete_request() {
    let up = Scripted::start(|_| Script::Silent);
    let (mg, port) = start(LIMIT, &[("/", "up", "")], &[("up", up.addr, "http1")]);
    let mut s = connect(port);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    s.write_all(format!("258\r\n{}\r\n", "a".repeat(600)).as_bytes())
        .unwrap();
    // The first 600 bytes stream to the upstream...
    wait_upstream(&up, |b| contains(b, &[b'a'; 600]));
    // ...the next 600 go over the limit of 1000.
    s.write_all(format!("258\r\n{}\r\n", "b".repeat(600)).as_bytes())
        .unwrap();
    let resp = read_all(&mut s);
    assert_eq!(status(&resp), 413, "{}", String::from_utf8_lossy(&resp));
    // The upstream request was aborted: the connection closed with the
    // body incomplete (no last chunk, none of the bytes over the limit).
    let rec = up.wait_closed(0);
    assert!(contains(&rec.bytes, b"transfer-encoding: chunked"));
    assert!(!contains(&rec.bytes, b"0\r\n\r\n"));
    assert!(!contains(&rec.bytes, b"bbbb"));
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http1")]
        ),
        1.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "payload_too_large")]
        ),
        1.0
    );
}

#[test]
fn http2_data_without_content_length_over_the_limit_is_413() {
    let up = Scripted::start(|_| Script::Silent);
    let (mg, port) = start(LIMIT, &[("/", "up", "")], &[("up", up.addr, "http1")]);
    // Python h2: DATA frames and no content-length. (curl is not used: it
    // may report no response when the stream is reset with NO_ERROR after
    // the complete answer while it still uploads, RFC 9113 section 8.1.)
    let script = format!(
        r#"
import socket, h2.connection, h2.events
s = socket.create_connection(("127.0.0.1", {port}))
c = h2.connection.H2Connection()
c.initiate_connection()
c.send_headers(1, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"), (":authority", "x")])
c.send_data(1, b"z" * 5000)
s.sendall(c.data_to_send())
status = None
while status is None:
    data = s.recv(65535)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status = dict(e.headers)[b":status"].decode()
    s.sendall(c.data_to_send())
print(status)
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with h2");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(code, "413");
    let rec = up.wait_closed(0);
    assert!(!contains(&rec.bytes, b"0\r\n\r\n"));
    assert!(!contains(&rec.bytes, &[b'z'; 1001]));
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http2")]
        ),
        1.0
    );
}

#[test]
fn grpc_message_over_the_limit_is_resource_exhausted() {
    let backend = HttpBackend::start("h2", Proto::H2c);
    let (mg, port) = start(
        LIMIT,
        &[("/", "grpc", "")],
        &[("grpc", backend.addr, "http2")],
    );
    let script = format!(
        r#"
import grpc
ch = grpc.insecure_channel("127.0.0.1:{port}")
call = ch.unary_unary("/edge.Echo/Unary")
for size in (5000,):
    try:
        call(b"x" * size, timeout=5)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with grpcio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "RESOURCE_EXHAUSTED",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_body_too_large_total",
            &[("protocol", "http2")]
        ),
        1.0
    );
}

#[test]
fn an_upstream_that_answers_early_and_closes_reaches_the_client() {
    let early = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n".to_vec();
    let e = early.clone();
    let up = Scripted::start(move |_| Script::AnswerAndClose(e.clone()));
    let (mg, port) = start("", &[("/", "up", "")], &[("up", up.addr, "http1")]);
    // A large declared body, sent while the upstream has already answered
    // and closed without reading it.
    let mut s = connect(port);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n");
        for _ in 0..100 {
            if w.write_all(&[b'q'; 40_000]).is_err() {
                break;
            }
        }
    });
    let resp = read_all(&mut s);
    let _ = writer.join();
    assert_eq!(status(&resp), 413, "{}", String::from_utf8_lossy(&resp));
    assert!(contains(&resp, b"too big\n"));
    // A chunked body whose next chunk the client holds back: the answer
    // is heard while meshgate waits for it.
    let mut s = connect(port);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .unwrap();
    let t = Instant::now();
    let resp = read_all(&mut s);
    assert_eq!(status(&resp), 413, "{}", String::from_utf8_lossy(&resp));
    assert!(contains(&resp, b"too big\n"));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "upstream_reset")]
        ),
        0.0
    );
}

#[test]
fn the_route_timeout_counts_from_the_request_head_not_the_body_end() {
    let up = Scripted::start(|_| Script::Silent);
    let (_mg, port) = start(
        "",
        &[("/", "up", ", timeout: 1s")],
        &[("up", up.addr, "http1")],
    );
    let mut s = connect(port);
    let t = Instant::now();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
        .unwrap();
    // One byte every 200 ms: the body would end after 6 s.
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..30 {
            if w.write_all(b"x").is_err() {
                return;
            }
            // Time on purpose: a slow client, while the route timeout runs.
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    let took = t.elapsed();
    assert_eq!(status(&first), 504, "{}", String::from_utf8_lossy(&first));
    assert!(took < Duration::from_millis(2500), "504 after {took:?}");
    // The unread body is not waited for: the connection closes.
    let rest = read_all(&mut s);
    assert!(contains(&rest, b"connection: close"));
    let took = t.elapsed();
    assert!(took < Duration::from_millis(3500), "closed after {took:?}");
}

#[test]
fn stream_idle_timeout_is_408_before_the_response_and_a_reset_after() {
    let silent = Scripted::start(|_| Script::Silent);
    let stalls = Scripted::start(|_| {
        Script::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        )
    });
    let (mg, port) = start(
        "              stream_idle_timeout: 400ms",
        &[
            ("/route", "silent", ", timeout: 20s, idle_timeout: 300ms"),
            ("/default", "silent", ", timeout: 20s"),
            ("/off", "silent", ", timeout: 1500ms, idle_timeout: 0s"),
            ("/after", "stalls", ", timeout: 20s, idle_timeout: 300ms"),
        ],
        &[
            ("silent", silent.addr, "http1"),
            ("stalls", stalls.addr, "http1"),
        ],
    );
    let partial = |path: &str| {
        let mut s = connect(port);
        let t = Instant::now();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .as_bytes(),
        )
        .unwrap();
        let resp = read_all(&mut s);
        (status(&resp), t.elapsed())
    };
    // The route's idle_timeout: nothing moves after the first chunk.
    let (code, took) = partial("/route");
    assert_eq!(code, 408);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The listener's stream_idle_timeout when the route sets none.
    let (code, took) = partial("/default");
    assert_eq!(code, 408);
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A route's 0s disables it: the route timeout ends the stream.
    let (code, _) = partial("/off");
    assert_eq!(code, 504);
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_idle_timeout_total",
            &[("phase", "before_response")]
        ),
        2.0
    );
    // After the response started: the stream is reset (the chunked body
    // never ends).
    let t = Instant::now();
    let resp = once(port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 200);
    assert!(contains(&resp, b"hello"));
    assert!(!contains(&resp, b"0\r\n\r\n"));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_idle_timeout_total",
            &[("phase", "after_response")]
        ),
        1.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "stream_idle_timeout")]
        ),
        2.0
    );
}

#[test]
fn transfer_codings_are_kept_for_http1_clients_and_refused_for_http2() {
    let up = Scripted::start(|_| {
        Script::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let (mg, port) = start("", &[("/", "up", "")], &[("up", up.addr, "http1")]);
    let resp = once(
        port,
        b"GET /z HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert_eq!(status(&resp), 200, "{text}");
    assert!(
        text.contains("transfer-encoding: gzip, chunked\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n4\r\ngzip\r\n0\r\n\r\n"), "{text}");
    // HTTP/2 has no transfer codings: 502.
    let code = curl(
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/z"),
        ],
        None,
    );
    assert_eq!(code, "502");
    assert_eq!(
        mg.metric(
            "meshgate_http_upstream_rs_invalid_total",
            &[("reason", "transfer_coding")]
        ),
        1.0
    );
}

#[test]
fn invalid_upstream_statuses_and_content_lengths_are_502() {
    let up = Scripted::start(|head| {
        let head = String::from_utf8_lossy(head);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let (line, cl) = match path.as_str() {
            "/s999" => ("HTTP/1.1 999 Odd", "5"),
            "/s099" => ("HTTP/1.1 099 Odd", "5"),
            "/sabc" => ("HTTP/1.1 abc Odd", "5"),
            "/cl-plus" => ("HTTP/1.1 200 OK", "+5"),
            "/cl-list" => ("HTTP/1.1 200 OK", "5, 6"),
            "/cl-neg" => ("HTTP/1.1 200 OK", "-5"),
            "/cl-big" => ("HTTP/1.1 200 OK", "99999999999999999999"),
            _ => ("HTTP/1.1 200 OK", "5, 5"),
        };
        Script::AnswerAndClose(format!("{line}\r\ncontent-length: {cl}\r\n\r\nhello").into_bytes())
    });
    let (mg, port) = start("", &[("/", "up", "")], &[("up", up.addr, "http1")]);
    let get = |path: &str| {
        once(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    for p in ["/s999", "/s099", "/sabc"] {
        assert_eq!(status(&get(p)), 502, "{p}");
    }
    for p in ["/cl-plus", "/cl-list", "/cl-neg", "/cl-big"] {
        assert_eq!(status(&get(p)), 502, "{p}");
    }
    // A list of one repeated value is one valid length.
    let resp = get("/cl-same");
    assert_eq!(status(&resp), 200);
    assert!(String::from_utf8_lossy(&resp).ends_with("\r\n\r\nhello"));
    let m = |reason| {
        mg.metric(
            "meshgate_http_upstream_rs_invalid_total",
            &[("cluster", "up"), ("reason", reason)],
        )
    };
    assert_eq!(m("status"), 3.0);
    assert_eq!(m("content_length"), 4.0);
}

#[test]
fn forbidden_trailer_fields_are_never_forwarded() {
    let up = Scripted::start(|head| {
        if head.starts_with(b"GET") {
            Script::AnswerAndClose(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-ok: 1\r\ncontent-length: 5\r\nhost: evil\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Script::AnswerAfter {
                until: b"\r\n0\r\n".to_vec(),
                bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            }
        }
    });
    let (mg, port) = start("", &[("/", "up", "")], &[("up", up.addr, "http1")]);
    // Response trailers.
    let resp = once(
        port,
        b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    let trailers = text.split_once("\r\n0\r\n").map(|x| x.1).unwrap_or("");
    assert!(trailers.contains("x-ok: 1"), "{text}");
    assert!(
        !trailers.contains("host") && !trailers.contains("content-length"),
        "{text}"
    );
    // Request trailers.
    let resp = once(
        port,
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-ok: 2\r\nhost: evil\r\nauthorization: secret\r\n\r\n",
    );
    assert_eq!(status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let rec = wait_for_within(10, "the request trailers upstream", || {
        up.conns()
            .iter()
            .find(|c| c.bytes.starts_with(b"POST") && contains(&c.bytes, b"x-ok: 2\r\n"))
            .map(|c| c.bytes.clone())
    });
    let sent = String::from_utf8_lossy(&rec).to_ascii_lowercase();
    let trailers = sent.split_once("\r\n0\r\n").map(|x| x.1).unwrap_or("");
    assert!(
        !trailers.contains("evil") && !trailers.contains("secret"),
        "{sent}"
    );
    let m = |d| mg.metric("meshgate_http_forbidden_trailer_total", &[("direction", d)]);
    assert_eq!(m("response"), 2.0);
    assert_eq!(m("request"), 2.0);
}

#[test]
fn rpc_bodies_are_bounded_by_max_body_bytes() {
    use meshgate_tests::rpc::{dubbo_error_message, dubbo_frame, read_dubbo};
    // Dubbo and Bolt frames declare their body length up front: the codec
    // refuses one over `max_body_bytes` before reading it (BAD_REQUEST
    // with the request id, then close), so no RPC body goes upstream
    // unbounded.
    let up = Scripted::start(|_| Script::Silent);
    let (mg, port) = start(
        "              codec_options: {dubbo: {max_body_bytes: 1000}}",
        &[("/", "up", "")],
        &[("up", up.addr, "dubbo")],
    );
    let mut s = connect(port);
    s.write_all(&dubbo_frame(0xc2, 0, 7, &[b'N'; 5000]))
        .unwrap();
    let (_, status, id, body) = read_dubbo(&mut s).unwrap();
    assert_eq!((status, id), (40, 7));
    assert!(dubbo_error_message(&body).contains("over the limit"));
    assert_eq!(
        mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("codec", "dubbo"), ("reason", "too_large")]
        ),
        1.0
    );
    assert!(up.conns().is_empty());
}
