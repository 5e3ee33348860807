//! Envoy's stream duration limit, redirect `regex_rewrite` and the HCM's
//! `strip_any_host_port` / `strip_matching_host_port`, configured in
//! meshgate YAML, through the real binary: curl over HTTP/1.1 and HTTP/2,
//! aioquic over HTTP/3, raw TCP for a request whose body never ends,
//! against the test backend (`/slow` answers after 3 s, `/stream` sends
//! five chunks 100 ms apart).

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// One listener: the listener-wide limit of 400 ms; `/capped/` has its own
/// 250 ms, `/free/` switches the listener's off.
fn duration_config(backend: std::net::SocketAddr) -> String {
    proxy_config(
        &[
            "{match: {prefix: /capped/}, route: {cluster: up, max_stream_duration: {max_stream_duration: 250ms}}}",
            "{match: {prefix: /free/}, route: {cluster: up, max_stream_duration: {max_stream_duration: 0s}}}",
            "{match: {prefix: /}, route: {cluster: up}}",
        ],
        &format!("  - name: up\n    endpoints: [{{address: \"{backend}\"}}]\n"),
    )
    .replace(
        "            config:\n              route_config:",
        "            config:\n              common_http_protocol_options: {max_stream_duration: 400ms}\n              route_config:",
    )
}

fn reached(mg: &Meshgate, protocol: &str, phase: &str) -> f64 {
    mg.metric(
        "meshgate_downstream_rq_max_duration_reached_total",
        &[("protocol", protocol), ("phase", phase)],
    )
}

#[test]
fn max_stream_duration_ends_slow_streams_on_http1_and_http2() {
    let b = HttpBackend::start("a", Proto::Http1);
    let mg = Meshgate::start(&duration_config(b.addr));
    let port = mg.listener_port("http");
    for (flag, protocol) in [("--http1.1", "http1"), ("--http2-prior-knowledge", "http2")] {
        // The route's limit: a bodiless request is whole, so 504 (Envoy's
        // maybeRequestTimeoutCode), meshgate's own answer.
        let (status, _, body) = curl(&[flag, &format!("http://127.0.0.1:{port}/capped/slow")]);
        assert_eq!(status, 504, "{protocol}: {body}");
        assert!(body.contains("downstream duration timeout"), "{body}");
        // The listener's limit where the route sets none.
        let (status, _, body) = curl(&[flag, &format!("http://127.0.0.1:{port}/slow")]);
        assert_eq!(status, 504, "{protocol}: {body}");
        assert_eq!(reached(&mg, protocol, "before_response"), 2.0);
        // Once the response started, the stream is reset: the head and
        // the first chunks arrived, the last one never does.
        let (status, _, body) = curl(&[flag, &format!("http://127.0.0.1:{port}/capped/stream")]);
        assert_eq!(status, 200, "{protocol}");
        assert!(body.contains("chunk0"), "{protocol}: {body}");
        assert!(!body.contains("chunk4"), "{protocol}: {body}");
        mg.wait_metric(
            "meshgate_downstream_rq_max_duration_reached_total",
            &[("protocol", protocol), ("phase", "after_response")],
            |v| v >= 1.0,
        );
        // Fast requests are not affected.
        let (status, _, body) = curl(&[flag, &format!("http://127.0.0.1:{port}/capped/x")]);
        assert_eq!(status, 200, "{protocol}: {body}");
    }
    // `0s` on the route switches the listener's limit off: the slow
    // backend's answer (3 s) arrives.
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/free/slow")]);
    assert_eq!((status, body.contains("backend=a")), (200, true), "{body}");
    // Counted with the local replies too.
    assert!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "max_duration_timeout")]
        ) >= 4.0
    );
}

#[test]
fn a_request_still_uploading_gets_408() {
    let b = HttpBackend::start("a", Proto::Http1);
    let mg = Meshgate::start(&duration_config(b.addr));
    let port = mg.listener_port("http");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Ten bytes announced, three sent: the request never ends.
    s.write_all(b"POST /capped/up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(reached(&mg, "http1", "before_response"), 1.0);
}

#[test]
fn max_stream_duration_ends_slow_streams_on_http3() {
    let b = HttpBackend::start("a", Proto::Http1);
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
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              common_http_protocol_options: {{max_stream_duration: 300ms}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{backend}"}}]
"#,
        crt = certs.join("server.pem").display(),
        key = certs.join("server.key").display(),
        backend = b.addr,
    );
    let mg = Meshgate::start(&yaml);
    let r = meshgate_tests::aioquic::get(port, &["/slow", "/fast"], None);
    assert!(r[0].1.contains("504"), "{}", r[0].1);
    assert!(r[0].1.contains("downstream duration timeout"), "{}", r[0].1);
    assert!(r[1].1.contains("backend=a"), "{}", r[1].1);
    assert_eq!(reached(&mg, "http3", "before_response"), 1.0);
}

#[test]
fn redirect_regex_rewrite_rewrites_the_path_and_keeps_the_query() {
    let b = HttpBackend::start("a", Proto::Http1);
    let mg = Meshgate::start(&proxy_config(
        &[
            r#"{match: {prefix: /old/}, redirect: {regex_rewrite: {pattern: "^/old/([^/]+)/(.*)$", substitution: "/new/\\2/\\1"}, response_code: 302}}"#,
            r#"{match: {prefix: /strip/}, redirect: {regex_rewrite: {pattern: "^/strip", substitution: "/new"}, strip_query: true}}"#,
            "{match: {prefix: /new/}, route: {cluster: up}}",
        ],
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]\n",
            b.addr
        ),
    ));
    let port = mg.listener_port("http");
    let (status, h, _) = curl(&[&format!("http://127.0.0.1:{port}/old/a/b/c?x=1")]);
    assert_eq!(status, 302);
    assert_eq!(
        h.get("location").map(String::as_str),
        Some(format!("http://127.0.0.1:{port}/new/b/c/a?x=1").as_str())
    );
    // curl follows it to the backend.
    let (status, _, body) = curl(&["-L", &format!("http://127.0.0.1:{port}/old/a/b?x=1")]);
    assert_eq!(status, 200);
    assert!(body.contains("uri=/new/b/a?x=1"), "{body}");
    // strip_query drops the query after the rewrite.
    let (status, h, _) = curl(&[&format!("http://127.0.0.1:{port}/strip/z?y=2")]);
    assert_eq!(status, 301);
    assert_eq!(
        h.get("location").map(String::as_str),
        Some(format!("http://127.0.0.1:{port}/new/z").as_str())
    );
}

/// Two listeners on one route table with `ignore_port_in_host_matching:
/// false` (the host matched as sent): `any` strips every port, `matching`
/// only its own.
#[test]
fn strip_host_port_before_routing_and_forwarding() {
    let b = HttpBackend::start("a", Proto::Http1);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: any
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              strip_any_host_port: true
              route_config: &routes
                ignore_port_in_host_matching: false
                virtual_hosts:
                  - name: www
                    domains: [www.example.com]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
  - name: matching
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              strip_matching_host_port: true
              route_config: *routes
clusters:
  - name: up
    endpoints: [{{address: "{}"}}]
"#,
        b.addr
    );
    let mg = Meshgate::start(&yaml);
    let any = mg.listener_port("any");
    let matching = mg.listener_port("matching");
    // `:authority` (HTTP/2) and `Host` (HTTP/1.1) alike.
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let get = |port: u16, host_port: u16| {
            curl(&[
                flag,
                "--connect-to",
                &format!("www.example.com:{host_port}:127.0.0.1:{port}"),
                &format!("http://www.example.com:{host_port}/p"),
            ])
        };
        // Any port is stripped: routed to the portless domain, and the
        // upstream sees the host without it.
        let (status, _, body) = get(any, 8080);
        assert_eq!(status, 200, "{flag}: {body}");
        assert!(body.contains("host=www.example.com\n"), "{flag}: {body}");
        // Only the listener's own port.
        let (status, _, body) = get(matching, matching);
        assert_eq!(status, 200, "{flag}: {body}");
        assert!(body.contains("host=www.example.com\n"), "{flag}: {body}");
        let (status, _, _) = get(matching, 8080);
        assert_eq!(status, 404, "{flag}");
    }
}

#[test]
fn both_strip_modes_at_once_are_refused_by_name() {
    let yaml = proxy_config(&["{match: {prefix: /}, direct_response: {status: 200}}"], "")
        .replace(
            "            config:\n              route_config:",
            "            config:\n              strip_any_host_port: true\n              strip_matching_host_port: true\n              route_config:",
        )
        .replace("clusters:\n", "clusters: []\n");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, yaml.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
    let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("strip_any_host_port"), "{err}");
}

/// A WebSocket tunnel is a stream too: it closes at the listener's limit.
#[test]
fn an_upgraded_tunnel_is_closed_at_the_limit() {
    let up = meshgate_tests::upgrade::echo_upgrade_backend();
    let mg = Meshgate::start(&proxy_config(
        &["{match: {prefix: /}, route: {cluster: up}}"],
        &format!("  - name: up\n    endpoints: [{{address: \"{up}\"}}]\n"),
    )
    .replace(
        "            config:\n              route_config:",
        "            config:\n              common_http_protocol_options: {max_stream_duration: 400ms}\n              route_config:",
    ));
    let port = mg.listener_port("http");
    let mut ws = meshgate_tests::upgrade::websocket(port, "/ws");
    meshgate_tests::upgrade::echo(&mut ws, b"hello");
    // Then meshgate closes it (the read ends well before its 5 s timeout).
    let mut buf = [0u8; 16];
    assert_eq!(ws.read(&mut buf).unwrap(), 0);
    assert_eq!(reached(&mg, "http1", "after_response"), 1.0);
}
