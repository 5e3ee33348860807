//! Request bodies a stream filter buffers whole count in the overload
//! manager's memory budget (`meshgate.resource_monitors.buffered_bytes`):
//! the real meshgate binary with `ext_authz` `with_request_body` in front
//! of an echo upstream, against the real grpcio authorization server of
//! tests/peers/ext_authz_peer.py. A body that would take the total over
//! the budget while the filter holds it is refused with 503 +
//! `x-envoy-overloaded`; `reset_high_memory_streams` sheds a filter holding
//! part of a body the same way; both counted in
//! `meshgate_overload_filter_buffer_refused_total`.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer, logged};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const REFUSED: &str = "meshgate_overload_filter_buffer_refused_total";

fn config(authz: u16, echo: u16, overload: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: ext_authz
                  config: {{grpc_service: {{envoy_grpc: {{cluster_name: authz}}, timeout: 5s}}, with_request_body: {{max_request_bytes: 3000000}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: echo, timeout: 20s}}
clusters:
  - name: authz
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{authz}"}}]
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
{overload}"#
    )
}

/// The budget (1 MiB), with `reset_high_memory_streams` at half of it
/// when `reset` is set.
fn budget(reset: bool) -> String {
    let mut s = "overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
    - name: meshgate.resource_monitors.buffered_bytes
      typed_config: {max_buffered_bytes: 1048576}
"
    .to_string();
    if reset {
        s.push_str(
            "  actions:
    - name: envoy.overload_actions.reset_high_memory_streams
      triggers:
        - name: meshgate.resource_monitors.buffered_bytes
          threshold: {value: 0.5}
",
        );
    }
    s
}

/// An HTTP/1.1 POST declaring `len` body bytes of which `send` are
/// written (the socket stays open); returns meshgate's response head.
fn upload(port: u16, len: usize, send: usize) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&vec![b'x'; send]);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).to_lowercase()
}

#[test]
fn a_body_buffered_by_a_filter_counts_in_the_budget_and_past_it_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("authz.log");
    let authz = PyPeer::start("ext_authz_peer.py", &["grpc", log.to_str().unwrap()]);
    let echo = PyPeer::start("ext_authz_peer.py", &["echo"]);
    let mg = Meshgate::start(&config(authz.port, echo.port, &budget(false)));
    let port = mg.listener_port("http");

    // Under the budget: buffered, checked, forwarded.
    let small = dir.path().join("small");
    std::fs::write(&small, vec![b'y'; 256 << 10]).unwrap();
    let (status, _, body) = curl(&[
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", small.display()),
        &format!("http://127.0.0.1:{port}/small"),
    ]);
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["body"].as_str().map(str::len), Some(256 << 10));
    assert_eq!(logged(&log)[0]["size"], 256 << 10);

    // 2 MiB (under the filter's own 3 MB bound) over a 1 MiB budget: the
    // filter may not hold it, 503 at once; the authorization server is
    // not asked.
    let head = upload(port, 2 << 20, 2 << 20);
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("x-envoy-overloaded: true"), "{head}");
    assert_eq!(mg.metric(REFUSED, &[]), 1.0);
    assert_eq!(
        mg.metric(
            "meshgate_ext_authz_error_total",
            &[("mode", "grpc"), ("reason", "request_body_overloaded")]
        ),
        1.0
    );
    assert_eq!(logged(&log).len(), 1);
    // The refused body's bytes left the account.
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
    drop(mg);

    // The same body without the budget is buffered and forwarded.
    let mg = Meshgate::start(&config(authz.port, echo.port, ""));
    let port = mg.listener_port("http");
    let head = upload(port, 2 << 20, 2 << 20);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(logged(&log).len(), 2);
}

/// A client sends 600 KiB of a declared 2 MiB body and stops: the filter
/// holds them waiting for the rest, over half of the 1 MiB budget, so
/// `reset_high_memory_streams` resets it; the filter gives up at once
/// with 503 + `x-envoy-overloaded`, while the client still holds its
/// upload open.
#[test]
fn reset_high_memory_streams_sheds_a_filter_holding_part_of_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("authz.log");
    let authz = PyPeer::start("ext_authz_peer.py", &["grpc", log.to_str().unwrap()]);
    let echo = PyPeer::start("ext_authz_peer.py", &["echo"]);
    let mg = Meshgate::start(&config(authz.port, echo.port, &budget(true)));
    let port = mg.listener_port("http");
    let head = upload(port, 2 << 20, 600 << 10);
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("x-envoy-overloaded: true"), "{head}");
    // The largest holder is shed: nearly always the filter's account, but
    // on a loaded single worker the downstream connection's own body
    // buffer can hold more at the monitor's tick (it fills first), and is
    // shed instead, with the same answer. Either way the filter's bytes
    // leave the account (below).
    assert!(mg.metric(REFUSED, &[]) <= 1.0);
    assert!(mg.metric("meshgate_overload_streams_reset_total", &[]) >= 1.0);
    assert!(logged(&log).is_empty(), "the server was not asked");
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
}

/// A response body a filter reads whole counts too: the gRPC-JSON
/// transcoder reads a unary gRPC response whole before converting it
/// (real grpcio server, tests/peers/transcode_peer.py). `GetBook` answers
/// with the book name from the path, so a long path makes a long
/// response from a small request: under the 8 KiB budget it is
/// transcoded, over it the response is refused with 503 +
/// `x-envoy-overloaded`, counted, and its bytes leave the account.
#[test]
fn a_unary_response_the_transcoder_reads_whole_counts_in_the_budget() {
    let (_dir, _grpc, mg) = transcoder_gateway();
    let port = mg.listener_port("http");
    let get = |len: usize| {
        let (status, head, body) = raw(
            port,
            &format!(
                "GET /v1/shelves/1/books/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "n".repeat(len)
            ),
        );
        (status, head, String::from_utf8_lossy(&body).into_owned())
    };
    // A 2 KiB answer: read whole within the budget, transcoded.
    let (status, _, body) = get(2048);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(
        "\"title\":\"shelves/1/books/{}\"",
        "n".repeat(2048)
    )));
    assert_eq!(mg.metric(REFUSED, &[]), 0.0);
    // A 12 KiB answer from the same small request: over the budget while
    // the transcoder holds it.
    let (status, head, body) = get(12 << 10);
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("x-envoy-overloaded: true"), "{head}");
    assert_eq!(mg.metric(REFUSED, &[]), 1.0);
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
}

/// The budget section alone (8 KiB, no action): appended to a config.
const SMALL_BUDGET: &str = "overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
    - name: meshgate.resource_monitors.buffered_bytes
      typed_config: {max_buffered_bytes: 8192}
";

/// A gRPC-JSON transcoder gateway in front of a real grpcio Bookstore
/// (tests/peers/transcode_peer.py), under `SMALL_BUDGET`: the descriptor's
/// directory and the peer live as long as the returned values.
fn transcoder_gateway() -> (tempfile::TempDir, PyPeer, Meshgate) {
    let dir = tempfile::tempdir().unwrap();
    let grpc = PyPeer::start("transcode_peer.py", &[dir.path().to_str().unwrap()]);
    let pb = dir.path().join("bookstore.pb");
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: grpc_json_transcoder
                  config: {{proto_descriptor: "{pb}", services: [bookstore.Bookstore]}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /bookstore.Bookstore/}}
                        route: {{cluster: grpc, timeout: 10s}}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
{SMALL_BUDGET}"#,
        pb = pb.display(),
        up = grpc.port,
    ));
    (dir, grpc, mg)
}

/// A raw HTTP/1.1 request (`Connection: close`): the status, the
/// lowercased head and the body bytes as they came (a cut body stays cut).
fn raw(port: u16, req: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, got[end..].to_vec())
}

/// A server stream's partial message counts too: `ListBooks` (a real
/// grpcio server stream) answers `limit` books whose titles are the
/// request's `tags`, so the query sets each message's size. Under the
/// 8 KiB budget three 2 KiB messages stream through as a JSON array; a
/// 12 KiB message would take the total over it while the transcoder holds
/// it, so the stream is aborted (its 200 head is sent: the chunked body
/// is cut, no closing `]`, no last chunk), counted in both counters, and
/// its bytes leave the account.
#[test]
fn a_streamed_partial_message_the_transcoder_holds_counts_in_the_budget() {
    let (_dir, _grpc, mg) = transcoder_gateway();
    let port = mg.listener_port("http");
    let list = |title_len: usize| {
        raw(
            port,
            &format!(
                "GET /v1/shelves/1/books?limit=3&tags={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "t".repeat(title_len)
            ),
        )
    };
    let (status, _, body) = list(2048);
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches(&"t".repeat(2048)).count(), 3, "{text}");
    // The array's end, then the last chunk (with the gRPC trailers).
    assert!(text.contains("\r\n]\r\n0\r\n"), "a whole array: {text}");
    assert_eq!(mg.metric(REFUSED, &[]), 0.0);

    let (status, head, body) = list(12 << 10);
    assert_eq!(status, 200, "{head}");
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(&"t".repeat(12 << 10)),
        "no message given out"
    );
    assert!(
        !text.contains("\r\n0\r\n") && !text.contains("grpc-status"),
        "the body is cut: {text:?}"
    );
    assert_eq!(mg.metric(REFUSED, &[]), 1.0);
    assert_eq!(
        mg.metric(
            "meshgate_grpc_json_transcoder_response_error_total",
            &[("reason", "overloaded")]
        ),
        1.0
    );
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
}

/// gRPC-Web's non-gRPC answer (an upstream's error page, here the real
/// test backend's 200 `text/plain` page, which echoes the request path)
/// is read, up to 16 KiB, for its `grpc-message`: that read counts in the
/// budget. curl sends a real gRPC-Web request. A 2 KiB page becomes the
/// usual gRPC-Web status (UNKNOWN for a 200 that is not gRPC, the page as
/// the message); a 12 KiB page is refused for memory, answered
/// UNAVAILABLE with meshgate's overload message, counted.
#[test]
fn a_non_grpc_page_grpc_web_reads_counts_in_the_budget() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let backend = HttpBackend::start("page", Proto::H2c);
    let mut yaml = proxy_config(
        &["match: {prefix: /}\n                        route: {cluster: page, timeout: 10s}"],
        &format!(
            "  - name: page\n    protocol: http2\n    endpoints: [{{address: \"{}\"}}]\n",
            backend.addr
        ),
    );
    yaml = yaml.replace(
        "            config:\n              route_config:",
        "            config:\n              stream_filters:\n                - name: grpc_web\n              route_config:",
    );
    yaml.push_str(SMALL_BUDGET);
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("frame");
    // One gRPC-Web message frame: flag 0, length 2, two bytes.
    std::fs::write(&frame, [0u8, 0, 0, 0, 2, 0x0a, 0x00]).unwrap();
    let call = |path_len: usize| {
        curl(&[
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            "x-grpc-web: 1",
            "--data-binary",
            &format!("@{}", frame.display()),
            &format!("http://127.0.0.1:{port}/echo.Echo/{}", "p".repeat(path_len)),
        ])
    };
    let (status, h, _) = call(2048);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(h["content-type"], "application/grpc-web+proto");
    assert_eq!(h["grpc-status"], "2", "{h:?}");
    assert!(h["grpc-message"].contains(&"p".repeat(2048)), "{h:?}");
    assert_eq!(mg.metric(REFUSED, &[]), 0.0);

    let (status, h, _) = call(12 << 10);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(h["content-type"], "application/grpc-web+proto");
    assert_eq!(h["grpc-status"], "14", "{h:?}");
    assert!(h["grpc-message"].contains("overloaded"), "{h:?}");
    assert_eq!(mg.metric(REFUSED, &[]), 1.0);
    assert_eq!(backend.hits(), 2);
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
}

/// `route.http_to_rpc` holds the JSON request body and the RPC response
/// body whole; both count in the budget, one account per call (the
/// request's bytes stay charged until the call ends). A real Dubbo
/// provider (sofa-rpc-node, tests/peers/rpc_peer.js) echoes the map it
/// gets, so the body sets both sizes:
/// - 2 KiB in, 2 KiB back: 200;
/// - 5 KiB in (held), 5 KiB back: the response takes the call over the
///   8 KiB budget, 503 `{"error":"overloaded"}` + `x-envoy-overloaded`
///   after the provider answered;
/// - 12 KiB in: refused before the call, the provider never sees it.
#[test]
fn http_to_rpc_bodies_count_in_the_budget() {
    use meshgate_tests::rpc::Provider;
    let p = Provider::start("dubbo", "A");
    let mut yaml = proxy_config(
        &[
            "match: {path: /echo}\n                        route:\n                          cluster: a\n                          http_to_rpc: {protocol: dubbo, service: com.meshgate.Echo, version: \"1.0\", method: echo, params: [{type: java.util.Map, body: true}]}",
        ],
        &format!(
            "  - name: a\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]\n",
            p.port
        ),
    );
    yaml.push_str(SMALL_BUDGET);
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    // Calls the provider answered, from /clusters.
    let calls = || -> u64 {
        let (_, text) = mg.admin_get("/clusters");
        text.lines()
            .find(|l| l.starts_with("a::") && l.contains("::rq_total::"))
            .and_then(|l| l.rsplit("::").next()?.parse().ok())
            .unwrap_or(0)
    };
    let post = |len: usize| {
        curl(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!(r#"{{"k": "{}"}}"#, "v".repeat(len)),
            &format!("http://127.0.0.1:{port}/echo"),
        ])
    };
    let (status, _, body) = post(2048);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["x"]["k"].as_str().map(str::len), Some(2048));
    assert_eq!(calls(), 1);
    assert_eq!(mg.metric(REFUSED, &[]), 0.0);

    let (status, h, body) = post(5 << 10);
    assert_eq!(status, 503, "{body}");
    assert_eq!(h["x-envoy-overloaded"], "true");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "overloaded"
    );
    assert_eq!(calls(), 2, "refused on the way back");
    assert_eq!(mg.metric(REFUSED, &[]), 1.0);

    let (status, h, body) = post(12 << 10);
    assert_eq!(status, 503, "{body}");
    assert_eq!(h["x-envoy-overloaded"], "true");
    assert_eq!(calls(), 2, "refused before the call");
    assert_eq!(mg.metric(REFUSED, &[]), 2.0);
    mg.wait_metric("meshgate_overload_buffered_bytes", &[], |v| v == 0.0);
}
