//! End-to-end tests of the overload manager (bootstrap `overload_manager`):
//! the real meshgate binary; h2load uploading to a stalled upstream (a raw
//! TCP server that accepts and never reads) for the body budget; raw TCP
//! sockets and curl for the connection limit, `stop_accepting_requests`
//! and `disable_http_keepalive`; `meshgate validate` for bad configs.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// A raw TCP upstream that accepts every connection and never reads from
/// it (a receive buffer of 4 KiB): whatever is sent to it stalls.
fn stalled_upstream() -> std::net::SocketAddr {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(1024).unwrap();
    let l: TcpListener = s.into();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    addr
}

fn config(upstream: &str, upstream_protocol: &str, overload: &str) -> String {
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
              route_config:
                name: t
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 30s}}
clusters:
  - name: up
{upstream_protocol}    endpoints: [{{address: "{upstream}"}}]
{overload}"#
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 50 HTTP/2 connections, 2 streams each, upload 8 MiB bodies to a
/// stalled upstream for 3 s; returns meshgate's RSS growth (peak over
/// the baseline, MiB) and h2load's summary.
fn upload_storm(mg: &Meshgate, port: u16) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 8 << 20]).unwrap();
    let pid = mg.child.id();
    let base = rss_kib(pid);
    let mut h2load = Command::new("h2load")
        .args(["-c", "50", "-m", "2", "-D", "3", "-d"])
        .arg(&body)
        .arg(format!("http://127.0.0.1:{port}/upload"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("h2load (Debian nghttp2-client; tests/run.sh installs it)");
    let mut peak = base;
    let deadline = Instant::now() + Duration::from_secs(20);
    while h2load.try_wait().unwrap().is_none() && Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = h2load.kill();
    let out = h2load.wait_with_output().unwrap();
    let growth = (peak.saturating_sub(base)) as f64 / 1024.0;
    (growth, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number before `what` in h2load's "status codes:" line.
fn h2load_count(summary: &str, what: &str) -> u64 {
    summary
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.trim_end().ends_with(what))
                .and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn body_budget_holds_rss_and_sheds_the_largest_streams_with_503() {
    // The upstream is HTTP/2 and never reads: after its first 64 KiB window
    // every byte the clients send stays in meshgate.
    let up = stalled_upstream().to_string();
    const BUDGET_MIB: f64 = 16.0;
    // What meshgate's own connections and streams cost beside the bodies
    // (debug build, 50 connections, 100 streams).
    const MARGIN_MIB: f64 = 48.0;
    let budget = format!(
        "overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
    - name: meshgate.resource_monitors.buffered_bytes
      typed_config: {{max_buffered_bytes: {}}}
  actions:
    - name: envoy.overload_actions.reset_high_memory_streams
      triggers:
        - name: meshgate.resource_monitors.buffered_bytes
          threshold: {{value: 0.9}}
",
        (BUDGET_MIB as u64) << 20
    );
    let mg = Meshgate::start(&config(&up, "    protocol: http2\n", &budget));
    let port = mg.listener_port("http");
    let (with_budget, summary) = upload_storm(&mg, port);
    // Shed streams are answered (503 with x-envoy-overloaded, then
    // RST_STREAM for the rest of the upload) and counted.
    let shed_503 = h2load_count(&summary, "5xx");
    assert!(shed_503 > 0, "no stream was answered 503:\n{summary}");
    let resets = mg.metric("meshgate_overload_streams_reset_total", &[]);
    assert!(
        resets >= shed_503 as f64,
        "{resets} resets, {shed_503} 503s"
    );
    assert!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "overloaded")]
        ) > 0.0
    );
    let (_, state) = mg.admin_get("/overload");
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(state["monitors"]["meshgate.resource_monitors.buffered_bytes"].is_number());
    assert!(
        with_budget < BUDGET_MIB + MARGIN_MIB,
        "RSS grew {with_budget:.0} MiB with a {BUDGET_MIB} MiB budget"
    );
    drop(mg);

    // The same storm without the budget: the flow-control windows fill in
    // meshgate's memory, past what the budget held.
    let mg = Meshgate::start(&config(&up, "    protocol: http2\n", ""));
    let port = mg.listener_port("http");
    let (without, summary) = upload_storm(&mg, port);
    eprintln!(
        "RSS growth: {with_budget:.0} MiB with a {BUDGET_MIB} MiB budget ({shed_503} streams shed), {without:.0} MiB without"
    );
    assert_eq!(h2load_count(&summary, "5xx"), 0, "{summary}");
    assert!(
        without > BUDGET_MIB + MARGIN_MIB && without > with_budget * 1.5,
        "without a budget RSS grew {without:.0} MiB, with it {with_budget:.0} MiB"
    );
}

/// One HTTP/1.1 upload of `len` bytes (content-length framed) written by
/// a thread; returns the response head meshgate sent ("" when the
/// connection ended without one).
fn h1_upload(port: u16, len: usize) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if w.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        String::from_utf8_lossy(&got).into_owned()
    })
}

#[test]
fn body_budget_resets_the_largest_http1_uploads_with_503() {
    // An HTTP/1.1 upstream that never reads: every byte of the uploads
    // past its socket buffers is read ahead into meshgate's counted memory
    // until the 4 MiB budget, then the largest holders are reset.
    let up = stalled_upstream().to_string();
    let budget = "overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
    - name: meshgate.resource_monitors.buffered_bytes
      typed_config: {max_buffered_bytes: 4194304}
  actions:
    - name: envoy.overload_actions.reset_high_memory_streams
      triggers:
        - name: meshgate.resource_monitors.buffered_bytes
          threshold: {value: 0.9}
";
    let mg = Meshgate::start(&config(&up, "", budget));
    let port = mg.listener_port("http");
    let clients: Vec<_> = (0..6).map(|_| h1_upload(port, 8 << 20)).collect();
    let heads: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let shed: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("HTTP/1.1 503"))
        .collect();
    assert!(!shed.is_empty(), "no upload was answered 503: {heads:?}");
    for h in &shed {
        assert!(
            h.to_ascii_lowercase().contains("x-envoy-overloaded: true"),
            "{h}"
        );
    }
    let resets = mg.metric("meshgate_overload_streams_reset_total", &[]);
    assert!(
        resets >= shed.len() as f64,
        "{resets} resets, {} 503s",
        shed.len()
    );
    assert!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "overloaded")]
        ) >= shed.len() as f64
    );
}

/// Opens a connection that meshgate serves (a request answered 200 on
/// it), kept open.
fn try_open_served(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut r = std::io::BufReader::new(s.try_clone().ok()?);
    let reply = read_reply(&mut r)?;
    (reply.status == 200 && !reply.close).then_some(s)
}

fn open_served(port: u16) -> TcpStream {
    try_open_served(port).expect("a served connection")
}

/// A connection meshgate accepts and closes at once reads EOF (or a reset).
fn is_refused(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn global_connection_limit_refuses_beyond_max_and_accepts_again_below() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let overload = "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: 2
    - name: envoy.resource_monitors.fixed_heap
      typed_config: {max_heap_size_bytes: 1}
  actions:
    - name: envoy.overload_actions.shrink_heap
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {value: 0.95}
";
    let mg = Meshgate::start(&config(&backend.addr.to_string(), "", overload));
    let port = mg.listener_port("http");
    let a = open_served(port);
    let b = open_served(port);
    assert!(is_refused(port), "a third connection was served");
    mg.wait_metric(
        "meshgate_overload_downstream_cx_refused_total",
        &[("reason", "global_downstream_max_connections")],
        |v| v == 1.0,
    );
    mg.wait_metric(
        "meshgate_overload_monitor_pressure",
        &[(
            "monitor",
            "envoy.resource_monitors.global_downstream_max_connections",
        )],
        |v| v == 1.0,
    );
    // Below the maximum again: served.
    drop(a);
    let c = poll(Duration::from_secs(10), || try_open_served(port))
        .expect("a connection served once one closed");
    drop((b, c));
    // The admin listener is not counted (it is how an operator looks in).
    let (status, _) = mg.admin_get("/overload");
    assert_eq!(status, 200);
    // A heap over its (1 byte) maximum saturates shrink_heap, which runs
    // at every refresh.
    mg.wait_metric("meshgate_overload_shrink_heap_total", &[], |v| v >= 2.0);
}

#[test]
fn stop_accepting_requests_answers_503_overloaded_and_disables_keepalive() {
    let backend = HttpBackend::start("b", Proto::Http1);
    // Two connections of four is the threshold (0.5).
    let overload = "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config: {max_active_downstream_connections: 4}
  actions:
    - name: envoy.overload_actions.stop_accepting_requests
      triggers:
        - name: envoy.resource_monitors.global_downstream_max_connections
          threshold: {value: 0.5}
    - name: envoy.overload_actions.disable_http_keepalive
      triggers:
        - name: envoy.resource_monitors.global_downstream_max_connections
          scaled: {scaling_threshold: 0.25, saturation_threshold: 0.5}
";
    let mg = Meshgate::start(&config(&backend.addr.to_string(), "", overload));
    let port = mg.listener_port("http");
    let url = format!("http://127.0.0.1:{port}/x");
    let (status, _, _) = curl(&[&url]);
    assert_eq!(status, 200);
    // Two idle connections: the pressure reaches 0.5.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[("action", "envoy.overload_actions.stop_accepting_requests")],
        |v| v == 1.0,
    );
    let hits = backend.hits();
    let (status, headers, body) = curl(&[&url]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    // gRPC gets UNAVAILABLE (14), over HTTP/2.
    let (status, headers, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-d",
        "",
        &url,
    ]);
    assert_eq!(status, 200);
    assert_eq!(headers.get("grpc-status").map(String::as_str), Some("14"));
    assert_eq!(
        backend.hits(),
        hits,
        "a refused request reached the upstream"
    );
    assert_eq!(
        mg.metric("meshgate_overload_requests_refused_total", &[]),
        2.0
    );
    // The pressure falls: requests are served again, with keep-alive.
    drop(idle);
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[("action", "envoy.overload_actions.stop_accepting_requests")],
        |v| v == 0.0,
    );
    let (status, headers, _) = curl(&[&url]);
    assert_eq!(status, 200);
    assert_ne!(headers.get("connection").map(String::as_str), Some("close"));
}

#[test]
fn bad_overload_configs_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let cases = [
        (
            "overload_manager:\n  resource_monitors:\n    - name: envoy.resource_monitors.injected_resource\n",
            "overload_manager.resource_monitors[0].name",
        ),
        (
            "overload_manager:\n  resource_monitors:\n    - name: envoy.resource_monitors.fixed_heap\n      typed_config: {max_heap_size_bytes: 10}\n  actions:\n    - name: envoy.overload_actions.stop_everything\n      triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.9}}]\n",
            "overload_manager.actions[0].name",
        ),
        (
            "overload_manager:\n  resource_monitors:\n    - name: envoy.resource_monitors.fixed_heap\n      typed_config: {max_heap_size_bytes: 10}\n  actions:\n    - name: envoy.overload_actions.stop_accepting_requests\n      triggers: [{name: envoy.resource_monitors.fixed_heap, scaled: {scaling_threshold: 0.9, saturation_threshold: 0.5}}]\n",
            "overload_manager.actions[0].triggers[0].scaled.saturation_threshold",
        ),
        (
            "overload_manager:\n  resource_monitors:\n    - name: meshgate.resource_monitors.buffered_bytes\n      typed_config: {max_buffered_bytes: 0}\n",
            "overload_manager.resource_monitors[0].typed_config.max_buffered_bytes",
        ),
        (
            "overload_manager:\n  resource_monitors:\n    - name: envoy.resource_monitors.fixed_heap\n      typed_config: {max_heap_size_bytes: 10}\n  actions:\n    - name: envoy.overload_actions.reduce_timeouts\n      triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.9}}]\n",
            // reduce_timeouts needs its ScaleTimersOverloadActionConfig.
            "overload_manager.actions[0].typed_config",
        ),
        (
            "overload_manager:\n  refresh_intervall: 1s\n  resource_monitors: []\n",
            "overload_manager",
        ),
    ];
    for (yaml, field) in cases {
        std::fs::write(&path, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        let text = out + &err;
        assert_ne!(code, 0, "{yaml} was accepted: {text}");
        assert!(text.contains(field), "{field} not named for {yaml}: {text}");
    }
}

/// A `fixed_heap` monitor whose maximum (1 byte) is always exceeded, and
/// `action` on it.
fn saturated(action: &str) -> String {
    format!(
        "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: envoy.resource_monitors.fixed_heap
      typed_config: {{max_heap_size_bytes: 1}}
  actions:
    - name: {action}
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {{value: 0.95}}
"
    )
}

/// Reads HTTP/2 frames until a GOAWAY (type 7); its error code.
fn goaway_code(s: &mut TcpStream) -> Option<u32> {
    let mut head = [0u8; 9];
    loop {
        s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).ok()?;
        if head[3] == 7 && len >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}

#[test]
fn stop_accepting_connections_refuses_and_disable_keepalive_sends_h2_goaway() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(
        &backend.addr.to_string(),
        "",
        &saturated("envoy.overload_actions.stop_accepting_connections"),
    ));
    let port = mg.listener_port("http");
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[(
            "action",
            "envoy.overload_actions.stop_accepting_connections",
        )],
        |v| v == 1.0,
    );
    assert!(is_refused(port));
    mg.wait_metric(
        "meshgate_overload_downstream_cx_refused_total",
        &[("reason", "stop_accepting_connections")],
        |v| v >= 1.0,
    );
    assert_eq!(backend.hits(), 0);
    drop(mg);

    let mg = Meshgate::start(&config(
        &backend.addr.to_string(),
        "",
        &saturated("envoy.overload_actions.disable_http_keepalive"),
    ));
    let port = mg.listener_port("http");
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[("action", "envoy.overload_actions.disable_http_keepalive")],
        |v| v == 1.0,
    );
    // An HTTP/2 (prior knowledge) connection gets GOAWAY(NO_ERROR).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    assert_eq!(goaway_code(&mut s), Some(0));
}
