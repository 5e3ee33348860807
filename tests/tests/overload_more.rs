//! End-to-end tests of the overload manager's `reduce_timeouts` action
//! (Envoy's `envoy.overload_actions.reduce_timeouts` with
//! `ScaleTimersOverloadActionConfig`): the real meshgate binary, raw TCP
//! sockets speaking HTTP/2 (prior knowledge) as idle keep-alive clients,
//! the global downstream connection count as the pressure source;
//! `meshgate validate` for a timer meshgate does not scale.

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

/// An HTTP/2 client connection that sends its preface and SETTINGS and
/// then nothing: an idle keep-alive connection.
fn idle_h2(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads frames until meshgate's GOAWAY (type 7): hyper's graceful close
/// then waits for the PING this client never answers, so the GOAWAY, not
/// the socket's end, marks the idle timeout firing.
fn read_until_goaway(s: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut i = 0;
    loop {
        // Walk the whole frames read so far: 9-byte headers, payloads.
        while i + 9 <= got.len() {
            let len = (usize::from(got[i]) << 16)
                | (usize::from(got[i + 1]) << 8)
                | usize::from(got[i + 2]);
            if got[i + 3] == 7 {
                return;
            }
            i += 9 + len;
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("closed without GOAWAY"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no GOAWAY: {e}"),
        }
    }
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
        timer_scale_factors: [{{timer: TRANSPORT_SOCKET_CONNECT, min_scale: {{value: 50}}}}]
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
