//! A cluster's upstream HTTP protocol options that Istio DestinationRules
//! and Envoy Gateway send (issue 19), end to end against real hyper
//! backends: `idle_timeout` on HTTP/2 (an idle multiplexed connection is
//! closed and counted), `max_connection_duration` on HTTP/1.1 and HTTP/2
//! (an old connection takes no new request; a request in flight on it
//! still completes), both from YAML and over a real xDS push;
//! `max_headers_count` (a response with more header fields is answered
//! 502 with flag `UPE` and counted); `max_stream_duration` (an upstream
//! request that outlives it is reset and answered 504 with flag `UMSDR`,
//! counted).

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::SocketAddr;

/// A plain listener routing `/h1` to the HTTP/1.1 cluster `h1` and `/h2`
/// to the h2c cluster `h2`, both with `protocol_options: {opts}`.
fn config(port: u16, h1: SocketAddr, h2: SocketAddr, opts: &str) -> String {
    logged(port, h1, h2, opts, "/dev/null")
}

/// `config`, with an access log (`%REQ(:PATH)% %RESPONSE_CODE%
/// %RESPONSE_FLAGS%`) written to `log`.
fn logged(port: u16, h1: SocketAddr, h2: SocketAddr, opts: &str, log: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: plain
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.file
                  typed_config:
                    path: "{log}"
                    log_format: {{text_format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /h1}}
                        route: {{cluster: h1, timeout: 10s}}
                      - match: {{prefix: /h2}}
                        route: {{cluster: h2, timeout: 10s}}
clusters:
  - name: h1
    protocol_options: {opts}
    endpoints: [{{address: "{h1}"}}]
  - name: h2
    protocol: http2
    protocol_options: {opts}
    endpoints: [{{address: "{h2}"}}]
"#
    )
}

fn counter(mg: &Meshgate, name: &str, cluster: &str) -> f64 {
    mg.metric(name, &[("cluster", cluster)])
}

const IDLE: &str = "meshgate_cluster_upstream_cx_idle_timeout_total";
const MAX_DURATION: &str = "meshgate_cluster_upstream_cx_max_duration_reached_total";
const CX_TOTAL: &str = "meshgate_cluster_upstream_cx_total";

#[test]
fn http2_idle_timeout_closes_an_idle_connection_not_a_busy_one() {
    let b1 = HttpBackend::start("one", Proto::Http1);
    let b2 = HttpBackend::start("two", Proto::H2c);
    let port = free_port();
    let mg = Meshgate::start(&config(port, b1.addr, b2.addr, "{idle_timeout: 400ms}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // A response streaming for 500ms: longer than the idle timeout, but
    // the connection has a stream the whole time and stays.
    let (code, body) = http_get(addr, "/h2/stream").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("chunk4"), "{body}");
    assert_eq!(counter(&mg, IDLE, "h2"), 0.0);
    assert_eq!(established_to(b2.addr), 1);
    // Then no stream for 400ms: closed, counted, out of the pool.
    wait_until("the idle HTTP/2 connection to close", || {
        established_to(b2.addr) == 0
    });
    assert_eq!(counter(&mg, IDLE, "h2"), 1.0);
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_active", &[("cluster", "h2")]),
        0.0
    );
    // The next request opens a new connection.
    let (code, body) = http_get(addr, "/h2").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(counter(&mg, CX_TOTAL, "h2"), 2.0);
    assert_eq!(b2.hits(), 2);
}

#[test]
fn max_connection_duration_retires_old_connections_without_failing_requests() {
    let b1 = HttpBackend::start("one", Proto::Http1);
    let b2 = HttpBackend::start("two", Proto::H2c);
    let port = free_port();
    let mg = Meshgate::start(&config(
        port,
        b1.addr,
        b2.addr,
        "{max_connection_duration: 1s}",
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // HTTP/1.1: a 3s exchange outlives the 1s; it completes, and its
    // connection is then closed rather than pooled.
    let (code, body) = http_get(addr, "/h1/slow").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(counter(&mg, MAX_DURATION, "h1"), 1.0);
    wait_until("the old HTTP/1.1 connection to close", || {
        established_to(b1.addr) == 0
    });
    let (code, _) = http_get(addr, "/h1").unwrap();
    assert_eq!(code, 200);
    assert_eq!(counter(&mg, CX_TOTAL, "h1"), 2.0);

    // HTTP/2: a 3s stream in flight when the connection turns 1s old.
    let slow = std::thread::spawn(move || http_get(addr, "/h2/slow").unwrap());
    wait_until("the HTTP/2 connection to reach its duration", || {
        counter(&mg, MAX_DURATION, "h2") == 1.0
    });
    // Drained, not closed: the stream on it is still running.
    assert_eq!(established_to(b2.addr), 1);
    // A new request takes a new connection.
    let (code, _) = http_get(addr, "/h2").unwrap();
    assert_eq!(code, 200);
    assert_eq!(counter(&mg, CX_TOTAL, "h2"), 2.0);
    // The stream in flight completes.
    let (code, body) = slow.join().unwrap();
    assert_eq!(code, 200, "{body}");
    // Both connections end: the old one once its stream is done, the new
    // one at its own duration.
    wait_until("both HTTP/2 connections to close", || {
        established_to(b2.addr) == 0 && counter(&mg, MAX_DURATION, "h2") == 2.0
    });
    assert_eq!(b2.hits(), 2);
}

/// A GET of `path` with `echo` `x-echo-*` headers, which the backend
/// sends back as response headers; the status.
fn get_echoing(addr: SocketAddr, path: &str, echo: usize) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut head = format!("GET {path} HTTP/1.0\r\nHost: x\r\n");
    for i in 0..echo {
        head.push_str(&format!("x-echo-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn max_headers_count_refuses_a_response_with_more_header_fields() {
    let b1 = HttpBackend::start("one", Proto::Http1);
    let b2 = HttpBackend::start("two", Proto::H2c);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let port = free_port();
    let mg = Meshgate::start(&logged(
        port,
        b1.addr,
        b2.addr,
        "{max_headers_count: 12}",
        &log.display().to_string(),
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    const COUNT: &str = "meshgate_cluster_upstream_rq_headers_count_exceeded_total";
    for c in ["h1", "h2"] {
        // The backend's own 3 or 4 fields and 2 echoed: within 12.
        assert_eq!(get_echoing(addr, &format!("/{c}/few"), 2), 200, "{c}");
        // 12 echoed: over.
        assert_eq!(get_echoing(addr, &format!("/{c}/many"), 12), 502, "{c}");
        assert_eq!(counter(&mg, COUNT, c), 1.0, "{c}");
        wait_until("the access log lines", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("/{c}/many 502 UPE"))
        });
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(&format!("/{c}/few 200 -")), "{text}");
        // Still serving.
        assert_eq!(get_echoing(addr, &format!("/{c}"), 0), 200, "{c}");
    }
    assert_eq!((b1.hits(), b2.hits()), (3, 3));
}

#[test]
fn max_stream_duration_resets_an_upstream_request_that_outlives_it() {
    let b1 = HttpBackend::start("one", Proto::Http1);
    let b2 = HttpBackend::start("two", Proto::H2c);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let port = free_port();
    let mg = Meshgate::start(&logged(
        port,
        b1.addr,
        b2.addr,
        "{max_stream_duration: 1s}",
        &log.display().to_string(),
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    const COUNT: &str = "meshgate_cluster_upstream_rq_max_duration_reached_total";
    for c in ["h1", "h2"] {
        // 500ms of streaming: within the second.
        let (code, body) = http_get(addr, &format!("/{c}/stream")).unwrap();
        assert_eq!(code, 200, "{c}: {body}");
        assert!(body.contains("chunk4"), "{c}: {body}");
        // A 3s answer: reset at 1s, 504 (the GET had arrived whole).
        let t = std::time::Instant::now();
        let (code, body) = http_get(addr, &format!("/{c}/slow")).unwrap();
        assert_eq!(code, 504, "{c}: {body}");
        assert!(t.elapsed() < std::time::Duration::from_millis(2500), "{c}");
        assert!(
            body.contains("upstream max stream duration reached"),
            "{c}: {body}"
        );
        assert_eq!(counter(&mg, COUNT, c), 1.0, "{c}");
        wait_until("the access log line", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("/{c}/slow 504 UMSDR"))
        });
    }
}

/// Cluster `b` (h2c, `explicit_http_config`) with the common options a
/// DestinationRule's `connectionPool.http` becomes.
fn xds_cluster(backend: SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: b
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: b
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options: {{max_concurrent_streams: 100}}
      common_http_protocol_options:
        idle_timeout: 0.4s
        max_connection_duration: 60s
"#,
        port = backend.port()
    )
}

#[test]
fn http2_idle_timeout_over_xds() {
    let backend = HttpBackend::start("b", Proto::H2c);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", envoy_yaml(&xds_cluster(backend.addr)));
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: front
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: front
        route_config:
          name: r
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: b}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    let addr = ([127, 0, 0, 1], port).into();
    wait_listening(addr);
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version=HTTP/2.0"), "{body}");
    wait_until("the idle HTTP/2 connection to close", || {
        established_to(backend.addr) == 0
    });
    assert_eq!(counter(&mg, IDLE, "b"), 1.0);
    assert_eq!(counter(&mg, MAX_DURATION, "b"), 0.0);
}
