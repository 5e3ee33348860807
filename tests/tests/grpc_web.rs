//! gRPC-Web through the real meshgate binary (`grpc_web` filter): real
//! gRPC-Web clients in Node (@improbable-eng/grpc-web over Node's HTTP
//! transport, Google's grpc-web browser client in text and binary mode over
//! an XMLHttpRequest polyfill; tests/peers/grpc_web_client.js) against a
//! Python grpcio server (tests/peers/grpc_web_peer.py) behind an HTTP/2
//! cluster: unary, server streaming, error statuses (trailers-only and in
//! the trailer frame), custom trailers. curl over HTTP/1.1 and HTTP/2 shows
//! the exact bytes (trailer frame, base64), CORS preflights for browsers,
//! hostile bodies refused and counted, and the filter from xDS.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// The grpcio server, killed on drop.
struct GrpcServer(Child, u16);

impl GrpcServer {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/grpc_web_peer.py"))
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (tests/run.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("grpc server did not start: {line:?}"));
        GrpcServer(child, port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a gRPC-Web client got.
#[derive(Debug)]
struct Call {
    messages: Vec<String>,
    status: i64,
    message: String,
    trailers: serde_json::Value,
}

/// One call by a Node gRPC-Web client (`lib`: improbable, text, binary).
fn call(lib: &str, port: u16, case: &str) -> Call {
    let out = Command::new("node")
        .arg(workspace().join("tests/peers/grpc_web_client.js"))
        .args([lib, &format!("http://127.0.0.1:{port}"), case])
        .output()
        .expect("node (tests/run.sh installs it, npm ci --prefix tests/peers)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{lib} {case}: bad report {line:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Call {
        messages: v["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect(),
        status: v["status"].as_i64().unwrap_or(-1),
        message: v["message"].as_str().unwrap_or_default().to_string(),
        trailers: v["trailers"].clone(),
    }
}

/// A listener `web` with cors and grpc_web in front of the grpcio server,
/// and `dead`, the same chain to a closed port.
fn start(server: &GrpcServer) -> (Meshgate, u16, u16) {
    let (web, dead) = (free_port(), free_port());
    let closed = free_port();
    let listener = |name: &str, port: u16, cluster: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: cors
                - name: grpc_web
                  config: {{max_message_bytes: 1024}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    per_filter_config:
                      cors:
                        allow_origin_string_match: [{{exact: "https://app.example"}}]
                        allow_methods: POST
                        allow_headers: content-type, x-grpc-web, x-user-agent, grpc-timeout
                        expose_headers: grpc-status, grpc-message
                        max_age: "600"
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: {cluster}, timeout: 0s}}
"#
        )
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{}{}clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
  - name: closed
    protocol: http2
    connect_timeout: 500ms
    endpoints: [{{address: "127.0.0.1:{closed}"}}]
"#,
        listener("web", web, "grpc"),
        listener("dead", dead, "closed"),
        up = server.1,
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{web}").parse().unwrap());
    wait_listening(format!("127.0.0.1:{dead}").parse().unwrap());
    (mg, web, dead)
}

/// One protobuf `EchoRequest {message = 1}` in a gRPC frame.
fn echo_frame(msg: &str) -> Vec<u8> {
    let mut m = vec![0x0a, msg.len() as u8];
    m.extend_from_slice(msg.as_bytes());
    let mut f = vec![0];
    f.extend_from_slice(&(m.len() as u32).to_be_bytes());
    f.extend_from_slice(&m);
    f
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 5, "a truncated frame prefix: {b:?}");
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    out
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(data: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .unwrap()
}

#[test]
fn grpc_web_clients_unary_streaming_and_errors_in_binary_and_text_mode() {
    let server = GrpcServer::start();
    let (mg, web, _) = start(&server);
    for lib in ["improbable", "text", "binary"] {
        let c = call(lib, web, "unary");
        assert_eq!(
            (c.status, &c.messages[..]),
            (0, &["echo: hello".to_string()][..]),
            "{lib}: {c:?}"
        );
        // The upstream's custom trailer came in the trailer frame.
        assert_eq!(c.trailers["x-trailer"], "yes", "{lib}: {c:?}");

        // Server streaming (the Google client's binary mode is unary only).
        if lib != "binary" {
            let c = call(lib, web, "stream");
            assert_eq!(c.status, 0, "{lib}: {c:?}");
            assert_eq!(c.messages, ["m-0", "m-1", "m-2", "m-3", "m-4"], "{lib}");
        }

        // An error before any message: a trailers-only response.
        let c = call(lib, web, "fail");
        assert_eq!(c.status, 3, "{lib}: {c:?}");
        assert_eq!(c.message, "the input was bad", "{lib}");
        assert!(c.messages.is_empty());

        // An error after two messages: the status in the trailer frame.
        let c = call(lib, web, "stream_fail");
        assert_eq!(c.status, 8, "{lib}: {c:?}");
        assert_eq!(c.message, "no more", "{lib}");
        assert_eq!(c.messages, ["one", "two"], "{lib}");
    }
    // improbable (4) and Google binary (3) calls; Google text (4).
    assert!(mg.metric("meshgate_grpc_web_requests_total", &[("mode", "binary")]) >= 7.0);
    assert!(mg.metric("meshgate_grpc_web_requests_total", &[("mode", "text")]) >= 4.0);
}

#[test]
fn wire_bytes_over_http1_and_http2_and_cors_for_browsers() {
    let server = GrpcServer::start();
    let (mg, web, dead) = start(&server);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, echo_frame("hi")).unwrap();
    let url = format!("http://127.0.0.1:{web}/echo.Echo/Unary");
    let out = dir.path().join("out");
    // Binary over HTTP/2: the message, then the trailers as a 0x80 frame.
    for http in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, h, _) = curl(&[
            http,
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            "x-grpc-web: 1",
            "--data-binary",
            &format!("@{}", body.display()),
            "-o",
            out.to_str().unwrap(),
            &url,
        ]);
        assert_eq!(status, 200, "{http}");
        assert_eq!(h["content-type"], "application/grpc-web+proto", "{http}");
        assert!(!h.contains_key("grpc-status"), "{http}: {h:?}");
        let f = frames(&std::fs::read(&out).unwrap());
        assert_eq!(f.len(), 2, "{http}: {f:?}");
        assert_eq!(f[0], (0, b"\x0a\x08echo: hi".to_vec()));
        assert_eq!(f[1].0, 0x80);
        let trailers = String::from_utf8(f[1].1.clone()).unwrap();
        assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
        assert!(trailers.contains("x-trailer: yes\r\n"), "{trailers:?}");
        assert!(trailers.ends_with("\r\n"));
    }

    // Text: a base64 request, a base64 response (accept asks for it).
    std::fs::write(&body, b64(&echo_frame("txt"))).unwrap();
    let (status, h, text) = curl(&[
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "accept: application/grpc-web-text",
        "--data-binary",
        &format!("@{}", body.display()),
        &url,
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/grpc-web-text+proto");
    let f = frames(&unb64(&text));
    assert_eq!(f[0], (0, b"\x0a\x09echo: txt".to_vec()));
    assert!(String::from_utf8_lossy(&f[1].1).contains("grpc-status: 0\r\n"));

    // A text body sent in chunks that split base64 groups, the frame
    // encoded in two pieces (padding mid-stream, as a client that encodes
    // each write on its own sends): decoded as it streams.
    let mut s = TcpStream::connect(("127.0.0.1", web)).unwrap();
    let mut req = b"POST /echo.Echo/ServerStream HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web-text\r\naccept: application/grpc-web-text\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    // EchoRequest {message: "c", count: 3}
    let m = b"\x0a\x01c\x10\x03";
    let mut frame = vec![0, 0, 0, 0, m.len() as u8];
    frame.extend_from_slice(m);
    let msg = format!("{}{}", b64(&frame[..4]), b64(&frame[4..]));
    assert!(msg[..8].ends_with('='));
    for part in [&msg[..1], &msg[1..6], &msg[6..]] {
        req.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (_, chunked) = resp.split_once("\r\n\r\n").unwrap();
    // De-chunk.
    let mut b64body = String::new();
    let mut rest = chunked;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        b64body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    let f = frames(&unb64(&b64body));
    let msgs: Vec<_> = f.iter().filter(|(flag, _)| *flag == 0).collect();
    assert_eq!(msgs.len(), 3, "{f:?}");
    assert_eq!(msgs[2].1, b"\x0a\x03c-2");

    // CORS: the browser's preflight is answered, the actual call's status
    // headers are exposed to the page.
    let (status, h, _) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent",
        &url,
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-headers"].contains("x-grpc-web"));
    std::fs::write(&body, echo_frame("fail")).unwrap();
    let (status, h, _) = curl(&[
        "-H",
        "Origin: https://app.example",
        "-H",
        "content-type: application/grpc-web+proto",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://127.0.0.1:{web}/echo.Echo/Fail"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(
        h["access-control-expose-headers"],
        "grpc-status, grpc-message"
    );
    assert_eq!(h["grpc-status"], "3");

    // meshgate's own answer (the cluster is down) reaches a gRPC-Web
    // client as a trailers-only status in its own content type.
    let (status, h, _) = curl(&[
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "accept: application/grpc-web-text",
        "--data-binary",
        &b64(&echo_frame("x")),
        &format!("http://127.0.0.1:{dead}/echo.Echo/Unary"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/grpc-web-text+proto");
    assert_eq!(h["grpc-status"], "14");
    // None of these well-formed bodies was refused.
    assert_eq!(
        mg.metric("meshgate_grpc_web_rejected_total", &[]),
        0.0,
        "nothing refused here"
    );
}

#[test]
fn hostile_grpc_web_bodies_are_refused_and_counted() {
    let server = GrpcServer::start();
    let (mg, web, _) = start(&server);
    let url = format!("http://127.0.0.1:{web}/echo.Echo/Unary");
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let mut big = vec![0, 0, 0, 0x04, 0x01]; // 1025 bytes declared, max 1024
    big.extend_from_slice(&[0x0a; 64]);
    // As Envoy answers bad base64: HTTP 400, grpc-status 13 (INTERNAL,
    // gRPC's mapping of 400) and the reason in grpc-message.
    // (content type, body, reason label, HTTP status, grpc-status, grpc-message)
    type Case = (
        &'static str,
        Vec<u8>,
        &'static str,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "application/grpc-web-text",
            b"AAAA*AAAAAAA".to_vec(),
            "malformed_base64",
            400,
            "13",
            "Bad gRPC-web request, invalid base64 data.",
        ),
        // Three base64 characters left at the end.
        (
            "application/grpc-web-text",
            format!("{}QUJ", b64(&echo_frame("x"))).into_bytes(),
            "malformed_base64",
            400,
            "13",
            "Bad gRPC-web request, invalid base64 data.",
        ),
        // The length prefix says 9, 3 bytes come.
        (
            "application/grpc-web+proto",
            b"\x00\x00\x00\x00\x09hel".to_vec(),
            "truncated_frame",
            400,
            "13",
            "Bad gRPC-web request, truncated gRPC frame.",
        ),
        // A trailer flag from the client.
        (
            "application/grpc-web",
            b"\x80\x00\x00\x00\x00".to_vec(),
            "bad_frame_flags",
            400,
            "13",
            "Bad gRPC-web request, invalid gRPC frame flags.",
        ),
        // Over max_message_bytes: 413 and RESOURCE_EXHAUSTED from the prefix.
        (
            "application/grpc-web",
            big,
            "oversize_frame",
            413,
            "8",
            "Bad gRPC-web request, message larger than max_message_bytes.",
        ),
        // Base64 of a truncated frame.
        (
            "application/grpc-web-text",
            b64(b"\x00\x00\x00\x01\x00abc").into_bytes(),
            "truncated_frame",
            400,
            "13",
            "Bad gRPC-web request, truncated gRPC frame.",
        ),
        // A gRPC-Web framing the filter cannot translate: refused before
        // anything is forwarded.
        (
            "application/grpc-web-text+json",
            b64(&echo_frame("x")).into_bytes(),
            "unsupported_content_type",
            400,
            "13",
            "Bad gRPC-web request, unsupported content-type.",
        ),
    ];
    for (ct, data, reason, http_status, code, message) in cases {
        let before = mg.metric("meshgate_grpc_web_rejected_total", &[("reason", reason)]);
        std::fs::write(&body, &data).unwrap();
        let (status, h, text) = curl(&[
            "-H",
            &format!("content-type: {ct}"),
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ]);
        assert_eq!(status, http_status, "{reason}: {h:?} {text}");
        assert_eq!(h["grpc-status"], code, "{reason}: {h:?}");
        assert_eq!(h["grpc-message"], message, "{reason}: {h:?}");
        assert!(text.is_empty(), "{reason}: {text:?}");
        assert!(
            h["content-type"].starts_with("application/grpc-web"),
            "{reason}: {h:?}"
        );
        assert!(
            mg.metric("meshgate_grpc_web_rejected_total", &[("reason", reason)]) >= before + 1.0,
            "{reason}"
        );
    }
    assert!(
        mg.metric(
            "meshgate_http_filter_denied_total",
            &[("filter", "grpc_web")]
        ) >= 6.0
    );
    // Still serving.
    let c = call("improbable", web, "unary");
    assert_eq!(c.status, 0, "{c:?}");
}

/// An upstream that is not gRPC (a hyper server answering `/status/N`
/// with `N` and a text body): the browser still gets gRPC-Web, the HTTP
/// status kept, grpc-status from gRPC's HTTP-to-gRPC mapping, the body as
/// grpc-message (as Envoy's grpc_web converts it).
#[test]
fn non_grpc_upstream_answers_become_grpc_web_statuses() {
    let backend = HttpBackend::start("html", Proto::H2c);
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: grpc_web
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /echo.Echo/}}
                        route: {{cluster: html, prefix_rewrite: /status/503/, timeout: 0s}}
                      - match: {{prefix: /}}
                        route: {{cluster: html, timeout: 0s}}
clusters:
  - name: html
    protocol: http2
    endpoints: [{{address: "{addr}"}}]
"#,
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, echo_frame("x")).unwrap();
    for (path, status, code) in [
        ("/status/503", 503, "14"),
        ("/status/502", 502, "14"),
        ("/status/404", 404, "12"),
        ("/status/401", 401, "16"),
        ("/status/403", 403, "7"),
        ("/status/400", 400, "13"),
        ("/status/418", 418, "2"),
    ] {
        let (st, h, text) = curl(&[
            "-H",
            "content-type: application/grpc-web+proto",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("http://127.0.0.1:{port}{path}"),
        ]);
        assert_eq!(st, status, "{path}: {h:?}");
        assert_eq!(h["content-type"], "application/grpc-web+proto", "{path}");
        assert_eq!(h["grpc-status"], code, "{path}: {h:?}");
        // The body ("status N\n"), percent-encoded.
        assert_eq!(h["grpc-message"], format!("status {status}%0A"), "{path}");
        assert!(text.is_empty(), "{path}: {text:?}");
    }
    // Text mode: the text content type, the same status.
    let (st, h, _) = curl(&[
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "accept: application/grpc-web-text",
        "--data-binary",
        &b64(&echo_frame("x")),
        &format!("http://127.0.0.1:{port}/status/503"),
    ]);
    assert_eq!(st, 503);
    assert_eq!(h["content-type"], "application/grpc-web-text+proto");
    assert_eq!(h["grpc-status"], "14");
    // Real gRPC-Web clients read it as UNAVAILABLE with the body as message.
    // (Google's client reports its own message for a non-200 answer;
    // improbable's reads grpc-message.)
    for lib in ["improbable", "text", "binary"] {
        let c = call(lib, port, "unary");
        assert_eq!(c.status, 14, "{lib}: {c:?}");
        if lib == "improbable" {
            assert_eq!(c.message, "status 503\n", "{lib}: {c:?}");
        }
    }
    assert!(
        mg.metric(
            "meshgate_grpc_web_requests_total",
            &[("mode", "non_grpc_response")]
        ) >= 8.0
    );
}

#[test]
fn grpc_web_from_xds_http_filters() {
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::filters::http::grpc_web::v3 as grpc_web;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;
    let server = GrpcServer::start();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: grpc
  type: STATIC
  connectTimeout: 2s
  http2ProtocolOptions: {{}}
  loadAssignment:
    clusterName: grpc
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: 127.0.0.1, portValue: {}}}
"#,
            server.1
        )),
    );
    mgmt.set(
        ROUTE,
        "1",
        envoy_yaml(
            r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: web
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /}
      route: {cluster: grpc, timeout: 0s}
"#,
        ),
    );
    // The listener's HCM with the gRPC-Web filter ahead of the router.
    let (name, l) = hcm_listener("web", port, "web");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.grpc_web".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
                &grpc_web::GrpcWeb {},
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "1", vec![(name, any(LISTENER, &l))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let nonce = mgmt.wait_sent(LISTENER, "1");
    let r = mgmt.wait_reply(LISTENER, &nonce);
    assert!(r.error_detail.is_none(), "{r:?}");
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let c = wait_for_within(10, "the xDS route to serve", || {
        let c = call("improbable", port, "unary");
        (c.status == 0).then_some(c)
    });
    assert_eq!(c.messages, ["echo: hello"]);
    let c = call("text", port, "stream");
    assert_eq!(c.messages, ["m-0", "m-1", "m-2", "m-3", "m-4"], "{c:?}");
    assert!(mg.metric("meshgate_grpc_web_requests_total", &[("mode", "text")]) >= 1.0);
}
