//! Hot upgrade under every kind of load at once, through the real binary
//! upgraded three times in a row (the third config adds a listener):
//! wrk's keep-alive HTTP/1.1 connections, a grpcio client holding one
//! bidirectional stream and calling unary methods in a loop on HTTP/2, a
//! WebSocket, and a real Dubbo consumer (sofa-rpc-node) holding one
//! connection. No request, call or message fails; the Dubbo connection is
//! the same TCP connection throughout (migrated); the stream and the
//! WebSocket stay on the first process, which exits 0 once they close;
//! every old process exits 0.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::rpc::{LoopConsumer, Provider};
use meshgate_tests::xds::get;
use meshgate_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `grpc_e2e_peer.py hold`: one bidirectional stream and a unary loop,
/// until told to stop.
struct GrpcHold {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl GrpcHold {
    fn start(port: u16) -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/grpc_e2e_peer.py"))
            .args(["hold", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (tests/run.sh installs it)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY", "the gRPC client did not start");
        Self { child, out }
    }

    /// Stops it: (bidi messages, unary calls, failures).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        writeln!(self.child.stdin.take().unwrap(), "stop").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        let v: serde_json::Value = serde_json::from_str(
            line.trim()
                .strip_prefix("DONE ")
                .unwrap_or_else(|| panic!("gRPC client said {line:?}")),
        )
        .unwrap();
        let failed = v["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap_or_default().to_string())
            .collect();
        (
            v["bidi"].as_u64().unwrap(),
            v["unary"].as_u64().unwrap(),
            failed,
        )
    }
}

/// wrk on `url` until stopped (SIGINT: wrk prints its summary then).
struct Wrk(Child);

impl Wrk {
    fn start(url: &str) -> Self {
        Wrk(Command::new("wrk")
            .args(["-t", "1", "-c", "8", "-d", "300s", url])
            .stdout(Stdio::piped())
            .spawn()
            .expect("wrk (Debian wrk; tests/run.sh installs it)"))
    }

    fn finish(self) -> String {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let out = self.0.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Requests wrk completed, from its summary.
fn wrk_requests(summary: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's summary:\n{summary}"))
}

struct Upstreams {
    http: HttpBackend,
    grpc: GrpcServer,
    ws: std::net::SocketAddr,
    dubbo: Provider,
}

fn config(web: u16, rpc: u16, up: &Upstreams, extra: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{web}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /echo.Echo/, grpc: true}}
                        route: {{cluster: grpc, timeout: 0s}}
                      - match: {{prefix: /chat}}
                        route: {{cluster: ws, timeout: 0s}}
                      - match: {{prefix: /}}
                        route: {{cluster: http}}
  - name: rpc
    address: 127.0.0.1:{rpc}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: dubbo}}
{extra}clusters:
  - name: http
    endpoints: [{{address: "{http}"}}]
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{grpc}"}}]
  - name: ws
    endpoints: [{{address: "{ws}"}}]
  - name: dubbo
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{dubbo}"}}]
"#,
        http = up.http.addr,
        grpc = up.grpc.1,
        ws = up.ws,
        dubbo = up.dubbo.port,
    )
}

#[test]
fn three_upgrades_under_http1_grpc_websocket_and_dubbo_load_fail_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let up = Upstreams {
        http: HttpBackend::start("http", Proto::Http1),
        grpc: GrpcServer::start(),
        ws: upgrade::echo_upgrade_backend(),
        dubbo: Provider::start("dubbo", "p"),
    };
    let (web, rpc, extra_port) = (free_port(), free_port(), free_port());
    // The first process keeps the stream and the WebSocket until the end.
    let mut first = upgrade::start(&config(web, rpc, &up, ""), &sock, "60s");

    let wrk = Wrk::start(&format!("http://127.0.0.1:{web}/"));
    let grpc = GrpcHold::start(web);
    let mut ws = upgrade::websocket(web, "/chat");
    upgrade::echo(&mut ws, b"before");
    let consumer = LoopConsumer::start("dubbo", rpc, "com.meshgate.Echo", "echo", r#"["x"]"#);
    consumer.wait_more(20);
    first.wait_metric("meshgate_downstream_rq_total", &[], |v| v >= 100.0);

    let mut old: Option<Meshgate> = None;
    let mut current_admin = first.admin;
    for generation in 1..=3 {
        let extra = if generation == 3 {
            upgrade::extra_listener(extra_port)
        } else {
            String::new()
        };
        let new = upgrade::start(&config(web, rpc, &up, &extra), &sock, "60s");
        upgrade::wait_taken_over(&new);
        assert_eq!(new.admin, current_admin, "the admin port was handed over");
        current_admin = new.admin;
        // The generation before (not the first: it holds the stream and
        // the WebSocket) drains and exits 0.
        if let Some(mut o) = old.take() {
            upgrade::wait_exit_0(&mut o, Duration::from_secs(20));
        }
        // The Dubbo consumer's one connection moved in and calls on.
        new.wait_metric(
            "meshgate_upgrade_connections_migrated_total",
            &[("direction", "in")],
            |v| v >= 1.0,
        );
        consumer.wait_more(30);
        // wrk's and the gRPC client's new requests are served here.
        new.wait_metric("meshgate_downstream_rq_total", &[], |v| v >= 200.0);
        // The WebSocket goes on, on the first process.
        upgrade::echo(&mut ws, format!("after upgrade {generation}").as_bytes());
        assert!(
            first.child.try_wait().unwrap().is_none(),
            "the first process left while its WebSocket and stream were open"
        );
        old = Some(new);
    }
    // The listener only the last config has serves.
    assert_eq!(get(extra_port, "/").as_deref(), Some("extra"));

    let summary = wrk.finish();
    let (bidi, unary, failed) = grpc.finish();
    let report = consumer.finish();
    upgrade::echo(&mut ws, b"last");
    drop(ws);
    upgrade::wait_exit_0(&mut first, Duration::from_secs(20));

    eprintln!(
        "wrk {} requests; gRPC {bidi} bidi messages, {unary} unary calls; Dubbo {} calls",
        wrk_requests(&summary),
        report.ok
    );
    assert!(
        !summary.contains("Socket errors") && !summary.contains("Non-2xx"),
        "wrk saw failures:\n{summary}"
    );
    assert!(wrk_requests(&summary) >= 500, "{summary}");
    assert!(failed.is_empty(), "gRPC failures: {failed:?}");
    assert!(bidi >= 20 && unary >= 100, "bidi {bidi}, unary {unary}");
    assert!(
        report.errors.is_empty(),
        "{} failed Dubbo calls: {:?}",
        report.errors.len(),
        report.errors
    );
    assert_eq!(
        report.connects.len(),
        1,
        "the consumer reconnected: {report:?}"
    );
    assert_eq!(report.closes, 0, "its connection was closed: {report:?}");
    drop(old);
}
