//! End-to-end tests of the overload manager's `reduce_timeouts` action
//! (Envoy's `envoy.overload_actions.reduce_timeouts` with
//! `ScaleTimersOverloadActionConfig`): the real meshgate binary, raw TCP
//! sockets speaking HTTP/2 (prior knowledge) as idle keep-alive clients,
//! an HTTP/1.1 request to an upstream that never answers (stream idle), a
//! TCP client that never starts its TLS handshake (transport connect),
//! the global downstream connection count as the pressure source;
//! `meshgate validate` for a timer meshgate does not scale.

use meshgate_tests::h2raw::{idle_h2, read_until_goaway};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MONITOR: &str = "envoy.resource_monitors.global_downstream_max_connections";
const ACTION: &str = "envoy.overload_actions.reduce_timeouts";

fn gateway() -> (Meshgate, u16) {
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
              common_http_protocol_options: {{idle_timeout: 4s}}
              route_config:
                name: t
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: {MONITOR}
      typed_config: {{max_active_downstream_connections: 2}}
  actions:
    - name: {ACTION}
      triggers:
        - name: {MONITOR}
          threshold: {{value: 1.0}}
      typed_config:
        "@type": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig
        timer_scale_factors:
          - timer: HTTP_DOWNSTREAM_CONNECTION_IDLE
            min_timeout: 0.2s
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

#[test]
fn reduce_timeouts_closes_an_idle_h2_connection_sooner_under_pressure() {
    let (mg, port) = gateway();
    let labels = &[("action", ACTION)];
    let idle_closed = |mg: &Meshgate| {
        mg.metric(
            "meshgate_http_downstream_cx_idle_timeout_total",
            &[("listener", "http"), ("codec", "http2")],
        )
    };
    let opened = Instant::now();
    let mut a = idle_h2(port);
    // One connection of two: pressure 0.5, the action inactive, the
    // connection keeps its 4 s idle timeout.
    mg.wait_metric(
        "meshgate_overload_monitor_pressure",
        &[("monitor", MONITOR)],
        |v| v == 0.5,
    );
    assert_eq!(mg.metric("meshgate_overload_action_scale", labels), 0.0);
    assert_eq!(idle_closed(&mg), 0.0);
    // A second idle connection saturates the trigger: the waiting idle
    // timer is scaled down to its 0.2 s minimum.
    let _b = idle_h2(port);
    mg.wait_metric("meshgate_overload_action_scale", labels, |v| v == 1.0);
    read_until_goaway(&mut a);
    let lived = opened.elapsed();
    assert!(
        lived < Duration::from_millis(2500),
        "closed after {lived:?}, its configured idle timeout is 4 s"
    );
    mg.wait_metric(
        "meshgate_http_downstream_cx_idle_timeout_total",
        &[("listener", "http"), ("codec", "http2")],
        |v| v >= 1.0,
    );
}

#[test]
fn a_timer_meshgate_does_not_scale_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "overload_manager:
  resource_monitors:
    - name: {MONITOR}
      typed_config: {{max_active_downstream_connections: 2}}
  actions:
    - name: {ACTION}
      triggers: [{{name: {MONITOR}, threshold: {{value: 0.9}}}}]
      typed_config:
        timer_scale_factors: [{{timer: HTTP_DOWNSTREAM_STREAM_FLUSH, min_scale: {{value: 50}}}}]
"
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        (out.clone() + &err)
            .contains("overload_manager.actions[0].typed_config.timer_scale_factors[0].timer"),
        "{out}{err}"
    );
}

/// The overload manager of these tests: one open downstream connection
/// saturates `reduce_timeouts`, which scales `timer` down to 0.2 s.
fn one_connection_saturates(timer: &str) -> String {
    format!(
        r#"overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: {MONITOR}
      typed_config: {{max_active_downstream_connections: 1}}
  actions:
    - name: {ACTION}
      triggers:
        - name: {MONITOR}
          threshold: {{value: 1.0}}
      typed_config:
        "@type": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig
        timer_scale_factors:
          - timer: {timer}
            min_timeout: 0.2s
"#
    )
}

/// A raw TCP upstream that accepts every connection and never answers.
fn silent_upstream() -> (std::net::TcpListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[test]
fn reduce_timeouts_shortens_the_stream_idle_timeout_under_pressure() {
    let (_upstream, up) = silent_upstream();
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
              stream_idle_timeout: 20s
              route_config:
                name: t
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 60s}}
clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
{}"#,
        one_connection_saturates("HTTP_DOWNSTREAM_STREAM_IDLE")
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The request's own connection saturates the trigger; the stream's
    // waiting idle timer (20 s) is scaled down to 0.2 s: 408.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "answered after {took:?}; the configured stream idle timeout is 20 s"
    );
    assert_eq!(
        mg.metric("meshgate_overload_action_scale", &[("action", ACTION)]),
        1.0
    );
    assert!(
        mg.metric(
            "meshgate_downstream_rq_idle_timeout_total",
            &[("protocol", "http1"), ("phase", "before_response")]
        ) >= 1.0
    );
}

#[test]
fn reduce_timeouts_shortens_the_tls_handshake_timeout_under_pressure() {
    let cert = |n: &str| {
        workspace()
            .join("examples/certs")
            .join(n)
            .to_string_lossy()
            .into_owned()
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: https
    address: 127.0.0.1:0
    filter_chains:
      - tls:
          certificates:
            - {{certificate_chain: "{}", private_key: "{}"}}
          handshake_timeout: 20s
        filters:
          - name: proxy
            config:
              route_config:
                name: t
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
{}"#,
        cert("server.pem"),
        cert("server.key"),
        one_connection_saturates("TRANSPORT_SOCKET_CONNECT")
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("https");
    // A client that never sends its ClientHello: the connection saturates
    // the trigger, its handshake timeout (20 s) shrinks to 0.2 s.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let n = s.read(&mut [0u8; 64]).expect("closed, not timed out");
    assert_eq!(n, 0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "closed after {took:?}; the configured handshake timeout is 20 s"
    );
    mg.wait_metric(
        "meshgate_listener_tls_handshake_error_total",
        &[("listener", "https"), ("reason", "timeout")],
        |v| v >= 1.0,
    );
}

/// `HTTP_DOWNSTREAM_CONNECTION_MAX` scales the HCM's
/// `max_connection_duration`: a connection whose limit is 60 s gets its
/// GOAWAY within a few seconds once its own arrival saturates the trigger.
#[test]
fn reduce_timeouts_shortens_the_max_connection_duration_under_pressure() {
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
              common_http_protocol_options: {{max_connection_duration: 60s}}
              route_config:
                name: t
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
{}"#,
        one_connection_saturates("HTTP_DOWNSTREAM_CONNECTION_MAX")
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    let opened = Instant::now();
    let mut s = idle_h2(port);
    read_until_goaway(&mut s);
    let lived = opened.elapsed();
    assert!(
        lived < Duration::from_secs(5),
        "GOAWAY after {lived:?}; the configured max_connection_duration is 60 s"
    );
    mg.wait_metric(
        "meshgate_http_downstream_cx_max_duration_reached_total",
        &[("listener", "http")],
        |v| v >= 1.0,
    );
    assert_eq!(
        mg.metric("meshgate_overload_action_scale", &[("action", ACTION)]),
        1.0
    );
}
