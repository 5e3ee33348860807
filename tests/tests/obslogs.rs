//! Observability, logs part (issue 22): the router's `upstream_log` (one
//! line per upstream try), and `/drain_listeners?inboundonly&graceful`
//! (only `traffic_direction: INBOUND` listeners drain, gracefully).

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn listener(name: &str, port: u16, direction: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
{direction}    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: ok}}}}]
"#
    )
}

/// A keep-alive HTTP/1.1 connection and one request on it.
struct KeepAlive {
    w: TcpStream,
    r: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(port: u16) -> Self {
        let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            w: conn.try_clone().unwrap(),
            r: std::io::BufReader::new(conn),
        }
    }

    fn get(&mut self) -> Reply {
        self.w
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_reply(&mut self.r).expect("a response")
    }
}

/// `POST /drain_listeners?inboundonly&graceful`: the INBOUND listener's
/// open connections are told to close (next HTTP/1.1 response carries
/// `connection: close`), it keeps accepting for the drain time, then
/// refuses; the OUTBOUND listener and its connections are untouched.
#[test]
fn drain_listeners_inboundonly_graceful_drains_only_inbound() {
    let (inp, outp) = (free_port(), free_port());
    let mg = Meshgate::start_with_args(
        &format!(
            "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}",
            listener("in", inp, "    traffic_direction: INBOUND\n"),
            listener("out", outp, "    traffic_direction: OUTBOUND\n"),
        ),
        &["--drain-time", "2s"],
    );
    wait_listening(([127, 0, 0, 1], inp).into());
    wait_listening(([127, 0, 0, 1], outp).into());
    let mut inbound = KeepAlive::open(inp);
    let mut outbound = KeepAlive::open(outp);
    let r = inbound.get();
    assert_eq!((r.status, r.close), (200, false));
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));

    let url = format!(
        "http://{}/drain_listeners?inboundonly&graceful",
        mg.admin.unwrap()
    );
    assert_eq!(curl(&["-X", "POST", &url]).0, 200);
    // During the drain time: the inbound listener still accepts, its open
    // connection is told to close; the outbound one stays keep-alive.
    assert!(TcpStream::connect(("127.0.0.1", inp)).is_ok());
    let r = inbound.get();
    assert_eq!((r.status, r.close), (200, true));
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));
    wait_until_within(15, "the inbound listener to refuse", || {
        TcpStream::connect_timeout(&([127, 0, 0, 1], inp).into(), Duration::from_millis(500))
            .is_err()
    });
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));
    let mut fresh = KeepAlive::open(outp);
    assert_eq!(fresh.get().status, 200);
    assert_eq!(mg.admin_get("/ready").0, 200, "the server is not draining");
}

/// The lines of `path` once there are at least `n`.
fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    wait_for_within(10, &format!("{n} lines in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        (l.len() >= n).then_some(l)
    })
}

/// The line of `path` about the connection from `from`.
fn line_of(path: &std::path::Path, from: std::net::SocketAddr) -> String {
    let key = format!("{from}|");
    wait_for_within(
        10,
        &format!("a line for {from} in {}", path.display()),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines()
                .find(|l| l.starts_with(&key))
                .map(str::to_string)
        },
    )
}

const UPSTREAM_FORMAT: &str = "%REQ(:PATH)%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|%RESPONSE_CODE_DETAILS%|%DURATION%";

/// The router's `upstream_log`: one entry per upstream try, retries
/// included, each with that try's endpoint, status, flags and failure
/// reason; the HCM `access_log` still writes one line per stream.
#[test]
fn upstream_log_writes_one_entry_per_try() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let backend = HttpBackend::start("b", Proto::Http1);
    // Reserved, nobody listens: connects are refused.
    let dead = [free_port(), free_port()];
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (dir.path().join("up.log"), dir.path().join("down.log"));
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.file
                  typed_config: {{path: "{down}", log_format: {{text_format: "stream %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"}}}}
              stream_filters:
                - name: envoy.filters.http.router
                  config:
                    upstream_log:
                      - name: envoy.access_loggers.file
                        typed_config: {{path: "{up}", log_format: {{text_format: "{UPSTREAM_FORMAT}\n"}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /dead}}
                        route:
                          cluster: dead
                          retry_policy: {{retry_on: connect-failure, num_retries: 1, retry_back_off: {{base_interval: 5ms}}}}
                      - match: {{prefix: /}}
                        route:
                          cluster: svc
                          retry_policy: {{retry_on: 5xx, num_retries: 2, retry_back_off: {{base_interval: 5ms}}}}
clusters:
  - name: svc
    endpoints: [{{address: "{b}"}}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{d0}"}}, {{address: "127.0.0.1:{d1}"}}]
"#,
        down = down.display(),
        up = up.display(),
        b = backend.addr,
        d0 = dead[0],
        d1 = dead[1],
    ));
    let port = mg.listener_port("web");
    // First try 503, the retry 200.
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/fail-once")]);
    assert_eq!(s, 200);
    let got = lines(&up, 2);
    let f: Vec<Vec<&str>> = got.iter().map(|l| l.split('|').collect()).collect();
    let b = backend.addr.to_string();
    assert_eq!(
        f[0][..8],
        [
            "/fail-once",
            "svc",
            b.as_str(),
            "1",
            "503",
            "-",
            "-",
            "via_upstream"
        ],
        "{got:?}"
    );
    assert_eq!(
        f[1][..8],
        [
            "/fail-once",
            "svc",
            b.as_str(),
            "2",
            "200",
            "-",
            "-",
            "via_upstream"
        ],
        "{got:?}"
    );
    for l in &f {
        assert!(l[8].parse::<u64>().is_ok(), "{got:?}");
    }
    assert_eq!(lines(&down, 1), ["stream /fail-once 200 2"]);

    // Both tries refused (a retry avoids the endpoint that failed to
    // connect): each entry is a connect failure (UF) on its endpoint, the
    // last one also the try the retries ran out on (URX).
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/dead")]);
    assert_eq!(s, 503);
    let got = lines(&up, 4);
    let mut hosts = Vec::new();
    for (i, l) in got[2..].iter().enumerate() {
        let f: Vec<&str> = l.split('|').collect();
        let n = (i + 1).to_string();
        assert_eq!(
            [f[0], f[1], f[3], f[4], f[5], f[6], f[7]],
            [
                "/dead",
                "dead",
                n.as_str(),
                "503",
                if i == 0 { "UF" } else { "UF,URX" },
                "upstream_connect_failure",
                "upstream_connect_failure"
            ],
            "{got:?}"
        );
        hosts.push(f[2].to_string());
    }
    hosts.sort();
    let mut want: Vec<String> = dead.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    want.sort();
    assert_eq!(hosts, want, "{got:?}");
    assert_eq!(lines(&down, 2)[1], "stream /dead 503 2");
}

/// The router's flush options are refused by name; a bad upstream log
/// names its field under the router's entry.
#[test]
fn upstream_log_options_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.yaml");
    let check = |router: &str, field: &str| {
        std::fs::write(
            &cfg,
            format!(
                r#"listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: envoy.filters.http.router
                  config:
{router}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
"#
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", cfg.to_str().unwrap()]);
        assert_ne!(code, 0, "{router}");
        assert!(format!("{out}{err}").contains(field), "{field}: {out}{err}");
    };
    check(
        "                    upstream_log_options: {flush_upstream_log_on_upstream_stream: true}",
        "stream_filters[0].config.upstream_log_options.flush_upstream_log_on_upstream_stream",
    );
    check(
        "                    upstream_log_options: {upstream_log_flush_interval: 1s}",
        "stream_filters[0].config.upstream_log_options.upstream_log_flush_interval",
    );
    check(
        "                    upstream_log: [{name: envoy.access_loggers.file, typed_config: {}}]",
        "stream_filters[0].config.upstream_log[0].typed_config.path",
    );
}

/// `Listener.access_log`: an entry for each connection the listener
/// closes before any network filter has it: no filter chain matched
/// (`NR`), a bad PROXY protocol header; connections a chain serves are
/// not logged there.
#[test]
fn listener_access_log_records_connections_closed_by_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (nr, pp) = (dir.path().join("nr.log"), dir.path().join("pp.log"));
    let fmt = "%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_LOCAL_PORT%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%PROTOCOL%|%UPSTREAM_HOST%";
    let (a, b) = (free_port(), free_port());
    let _mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: chains
    address: 127.0.0.1:{a}
    access_log:
      - name: envoy.access_loggers.file
        typed_config: {{path: "{nr}", log_format: {{text_format: "{fmt}\n"}}}}
    filter_chains:
      - filter_chain_match: {{source_prefix_ranges: ["10.0.0.0/8"]}}
        filters:
          - name: echo
  - name: pp
    address: 127.0.0.1:{b}
    listener_filters_timeout: 2s
    listener_filters:
      - name: envoy.filters.listener.proxy_protocol
    access_log:
      - name: envoy.access_loggers.file
        typed_config: {{path: "{pp}", log_format: {{text_format: "{fmt}\n"}}}}
    filter_chains:
      - filters:
          - name: echo
"#,
        nr = nr.display(),
        pp = pp.display(),
    ));
    wait_listening(([127, 0, 0, 1], a).into());
    wait_listening(([127, 0, 0, 1], b).into());
    // No chain for a loopback client: closed at once, logged NR.
    let mut c = TcpStream::connect(("127.0.0.1", a)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap_or(0), 0);
    // (wait_listening's probes are logged too: find this connection's.)
    let me = c.local_addr().unwrap();
    assert_eq!(
        line_of(&nr, me),
        format!("{me}|{a}|NR|filter_chain_not_found|tcp|-")
    );
    // Not a PROXY protocol header: refused and logged.
    let mut c = TcpStream::connect(("127.0.0.1", b)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap_or(0), 0);
    let me = c.local_addr().unwrap();
    assert_eq!(
        line_of(&pp, me),
        format!("{me}|{b}|-|proxy_protocol_error|tcp|-")
    );
    let before = std::fs::read_to_string(&pp).unwrap().lines().count();
    // A valid header: the echo chain serves it, nothing more is logged.
    let mut c = TcpStream::connect(("127.0.0.1", b)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nhi")
        .unwrap();
    let mut got = [0u8; 2];
    std::io::Read::read_exact(&mut c, &mut got).unwrap();
    assert_eq!(&got, b"hi");
    drop(c);
    // A probe that closes without a header is logged (`closed`): the
    // served connection is not.
    let mut probe = TcpStream::connect(("127.0.0.1", b)).unwrap();
    let _ = probe.shutdown(std::net::Shutdown::Write);
    let _ = std::io::Read::read(&mut probe, &mut buf);
    let me = probe.local_addr().unwrap();
    line_of(&pp, me);
    let all = std::fs::read_to_string(&pp).unwrap();
    assert_eq!(all.lines().count(), before + 1, "{all}");
    assert!(!all.contains("192.0.2.1"), "{all}");
}

/// `envoy.access_loggers.open_telemetry`: each stream becomes an OTLP log
/// record (body and attributes formatted per stream, resource attributes
/// with `log_name`) exported with `LogsService/Export` to a grpcio
/// receiver that is an ordinary meshgate cluster; the upstream log can
/// use it too. Records are batched (several per call) and counted.
#[test]
fn open_telemetry_access_log_exports_records_to_a_collector() {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("records");
    let collector =
        meshgate_tests::pypeer::PyPeer::start("otlp_logs_peer.py", &[got.to_str().unwrap()]);
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.open_telemetry
                  typed_config:
                    log_name: gateway
                    grpc_service: {{envoy_grpc: {{cluster_name: otel}}, timeout: 2s}}
                    body: {{string_value: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%"}}
                    attributes:
                      values:
                        - {{key: code, value: {{string_value: "%RESPONSE_CODE%"}}}}
                        - {{key: route, value: {{string_value: "%ROUTE_NAME%"}}}}
                    resource_attributes:
                      values: [{{key: deployment, value: {{string_value: test}}}}]
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - name: ok
                        match: {{prefix: /}}
                        direct_response: {{status: 204}}
clusters:
  - name: otel
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{port}"}}]
"#,
        port = collector.port,
    ));
    let port = mg.listener_port("web");
    for i in 0..5 {
        let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/r{i}")]);
        assert_eq!(s, 204);
    }
    let records = wait_for_within(15, "5 OTLP log records", || {
        let text = std::fs::read_to_string(&got).unwrap_or_default();
        let v: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (v.len() >= 5).then_some(v)
    });
    let mut bodies: Vec<&str> = records
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "GET /r0 204",
            "GET /r1 204",
            "GET /r2 204",
            "GET /r3 204",
            "GET /r4 204"
        ]
    );
    for r in &records {
        assert_eq!(r["resource"]["log_name"], "gateway", "{r}");
        assert_eq!(r["resource"]["deployment"], "test", "{r}");
        assert_eq!(r["scope"], "meshgate", "{r}");
        assert_eq!(r["attributes"]["code"], "204", "{r}");
        assert_eq!(r["attributes"]["route"], "ok", "{r}");
        let t = r["time"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(t > 0 && t <= now && now - t < 60_000_000_000, "{r}");
    }
    mg.wait_metric(
        "meshgate_access_log_otlp_exported_total",
        &[("cluster", "otel")],
        |v| v >= 5.0,
    );
}

/// Without a reachable collector, records are dropped and counted
/// (`export_failed`), and streams are not held up.
#[test]
fn open_telemetry_access_log_drops_are_counted() {
    let dead = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.open_telemetry
                  typed_config:
                    common_config: {{log_name: gw, grpc_service: {{envoy_grpc: {{cluster_name: otel}}, timeout: 1s}}}}
                    body: {{string_value: "%RESPONSE_CODE%"}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
clusters:
  - name: otel
    protocol: http2
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
"#
    ));
    let port = mg.listener_port("web");
    for _ in 0..3 {
        let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/")]);
        assert_eq!(s, 200);
    }
    mg.wait_metric(
        "meshgate_access_log_otlp_dropped_total",
        &[("cluster", "otel"), ("reason", "export_failed")],
        |v| v >= 3.0,
    );
}

/// A `tcp_proxy` connection exported as an OTLP log record when it
/// closes: the L4 operators (upstream, bytes both ways) formatted into the
/// body and attributes.
#[test]
fn open_telemetry_access_log_exports_tcp_proxy_connections() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    use std::io::Read;
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("records");
    let collector =
        meshgate_tests::pypeer::PyPeer::start("otlp_logs_peer.py", &[got.to_str().unwrap()]);
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: l4
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: tcp_proxy
            config:
              cluster: backend
              access_log:
                - name: envoy.access_loggers.open_telemetry
                  typed_config:
                    common_config: {{log_name: l4, grpc_service: {{envoy_grpc: {{cluster_name: otel}}}}}}
                    body: {{string_value: "%UPSTREAM_CLUSTER% %UPSTREAM_HOST%"}}
                    attributes:
                      values:
                        - {{key: rx, value: {{string_value: "%BYTES_RECEIVED%"}}}}
                        - {{key: tx, value: {{string_value: "%BYTES_SENT%"}}}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
  - name: otel
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{port}"}}]
"#,
        backend = backend.addr,
        port = collector.port,
    ));
    let req = b"GET /tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", mg.listener_port("l4"))).unwrap();
    s.write_all(req).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let r = wait_for_within(15, "the tcp_proxy OTLP log record", || {
        meshgate_tests::pypeer::logged(&got).into_iter().next()
    });
    assert_eq!(r["resource"]["log_name"], "l4", "{r}");
    assert_eq!(r["body"], format!("backend {}", backend.addr), "{r}");
    assert_eq!(r["attributes"]["rx"], req.len().to_string(), "{r}");
    assert_eq!(r["attributes"]["tx"], resp.len().to_string(), "{r}");
    mg.wait_metric(
        "meshgate_access_log_otlp_exported_total",
        &[("cluster", "otel")],
        |v| v >= 1.0,
    );
}

/// `%UPSTREAM_LOCAL_ADDRESS%` (and `_WITHOUT_PORT`, `%UPSTREAM_LOCAL_PORT%`):
/// the local address of the upstream connection a stream went on, for
/// HTTP/1.1 and HTTP/2 clusters (the kept-alive connection to the
/// backend is found in `/proc/net/tcp` with that local address), and for
/// `tcp_proxy`.
#[test]
fn upstream_local_address_is_the_upstream_connections_own() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    use std::io::Read;
    let h1 = HttpBackend::start("h1", Proto::Http1);
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let dir = tempfile::tempdir().unwrap();
    let (log, tcp) = (dir.path().join("http.log"), dir.path().join("tcp.log"));
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.file
                  typed_config: {{path: "{log}", log_format: {{text_format: "%REQ(:PATH)%|%UPSTREAM_LOCAL_ADDRESS%|%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%UPSTREAM_LOCAL_PORT%\n"}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - {{match: {{prefix: /two}}, route: {{cluster: h2}}}}
                      - {{match: {{prefix: /}}, route: {{cluster: h1}}}}
  - name: l4
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: tcp_proxy
            config:
              cluster: h1
              access_log:
                - name: envoy.access_loggers.file
                  typed_config: {{path: "{tcp}", log_format: {{text_format: "%UPSTREAM_LOCAL_ADDRESS%|%UPSTREAM_HOST%\n"}}}}
clusters:
  - name: h1
    endpoints: [{{address: "{a1}"}}]
  - name: h2
    protocol: http2
    endpoints: [{{address: "{a2}"}}]
"#,
        log = log.display(),
        tcp = tcp.display(),
        a1 = h1.addr,
        a2 = h2.addr,
    ));
    let port = mg.listener_port("web");
    for (path, backend) in [("/one", h1.addr), ("/two", h2.addr)] {
        let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        assert_eq!(s, 200);
        let line = wait_for_within(10, &format!("the line of {path}"), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(&format!("{path}|")))
                .map(str::to_string)
        });
        let f: Vec<&str> = line.split('|').collect();
        let local: std::net::SocketAddr = f[1].parse().unwrap_or_else(|_| panic!("{line}"));
        assert_eq!(f[2], local.ip().to_string(), "{line}");
        assert_eq!(f[3], local.port().to_string(), "{line}");
        // The pooled connection to the backend is that one.
        assert!(
            tcp_established(local, backend),
            "{line}: no connection {local} -> {backend}"
        );
    }

    let mut s = TcpStream::connect(("127.0.0.1", mg.listener_port("l4"))).unwrap();
    s.write_all(b"GET /tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let l = lines(&tcp, 1);
    let f: Vec<&str> = l[0].split('|').collect();
    let local: std::net::SocketAddr = f[0].parse().unwrap_or_else(|_| panic!("{l:?}"));
    assert_eq!(local.ip().to_string(), "127.0.0.1", "{l:?}");
    assert_ne!(local.port(), 0, "{l:?}");
    assert_eq!(f[1], h1.addr.to_string(), "{l:?}");
}

/// meshgate with one listener `web` whose router writes `format` (one
/// line per upstream try) to `up`, and one route to cluster `svc` at
/// `addr` with `route`'s options (YAML flow-mapping entries).
fn upstream_logged(
    up: &std::path::Path,
    format: &str,
    route: &str,
    addr: std::net::SocketAddr,
) -> Meshgate {
    Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: envoy.filters.http.router
                  config:
                    upstream_log:
                      - name: envoy.access_loggers.file
                        typed_config: {{path: "{up}", log_format: {{text_format: "{format}\n"}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: svc, {route}}}
clusters:
  - name: svc
    endpoints: [{{address: "{addr}"}}]
"#,
        up = up.display(),
    ))
}

/// A 5xx is retried once.
const RETRY_5XX_ONCE: &str =
    "retry_policy: {retry_on: 5xx, num_retries: 1, retry_back_off: {base_interval: 5ms}}";

/// Each upstream try's entry carries its own response: a retried 503
/// shows its own code and head (`%RESP(X)%`), the request body bytes sent
/// on that try, and its connection's local address; the try the retries
/// run out on is flagged URX, an earlier retried one is not.
#[test]
fn upstream_log_entries_carry_each_tries_own_response() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let mg = upstream_logged(
        &up,
        "%REQ(:PATH)%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%RESP(X-BACKEND)%|%RESP(CONTENT-LENGTH)%|%BYTES_SENT%|%UPSTREAM_LOCAL_ADDRESS%",
        RETRY_5XX_ONCE,
        backend.addr,
    );
    let port = mg.listener_port("web");
    // First try 503 (retried), the retry 200; a 5-byte body each time.
    let (s, _, _) = curl(&["-d", "hello", &format!("http://127.0.0.1:{port}/fail-once")]);
    assert_eq!(s, 200);
    let got = lines(&up, 2);
    let f: Vec<Vec<&str>> = got.iter().map(|l| l.split('|').collect()).collect();
    assert_eq!(
        f[0][..7],
        ["/fail-once", "1", "503", "-", "-", "13", "5"],
        "{got:?}"
    );
    assert_eq!(f[1][..5], ["/fail-once", "2", "200", "-", "b"], "{got:?}");
    assert_eq!(f[1][6], "5", "{got:?}");
    for l in &f {
        let a: std::net::SocketAddr = l[7].parse().unwrap_or_else(|_| panic!("{got:?}"));
        assert_eq!(a.ip().to_string(), "127.0.0.1", "{got:?}");
    }
    // Both tries 503: the second is where the retries ran out (URX).
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/status/503")]);
    assert_eq!(s, 503);
    let got = lines(&up, 4);
    let f: Vec<Vec<&str>> = got[2..].iter().map(|l| l.split('|').collect()).collect();
    assert_eq!(f[0][..4], ["/status/503", "1", "503", "-"], "{got:?}");
    assert_eq!(f[1][..4], ["/status/503", "2", "503", "URX"], "{got:?}");
    assert_eq!(f[0][6], "0", "{got:?}");
}

/// `%BYTES_RECEIVED%` of each upstream try is the response body received
/// on that try: the retried 503's own 13 bytes, and the retry's streamed
/// body (five 7-byte chunks 100 ms apart), whose entry waits for that
/// body's end (its `%DURATION%` spans the chunks, its
/// `%RESPONSE_DURATION%` stops at the head).
#[test]
fn upstream_log_entries_carry_each_tries_bytes_received() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let mg = upstream_logged(
        &up,
        "%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%BYTES_RECEIVED%|%BYTES_SENT%|%DURATION%|%RESPONSE_DURATION%",
        RETRY_5XX_ONCE,
        backend.addr,
    );
    let port = mg.listener_port("web");
    let (s, _, body) = curl(&[
        "-d",
        "hello",
        &format!("http://127.0.0.1:{port}/fail-once/stream"),
    ]);
    assert_eq!(s, 200);
    assert_eq!(body.len(), 35, "{body}");
    let got = lines(&up, 2);
    let f: Vec<Vec<&str>> = got.iter().map(|l| l.split('|').collect()).collect();
    // "failing once\n": the retried try's own body.
    assert_eq!(f[0][..4], ["1", "503", "13", "5"], "{got:?}");
    assert_eq!(f[1][..4], ["2", "200", "35", "5"], "{got:?}");
    let ms = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{got:?}"));
    assert!(ms(f[1][4]) >= 400, "the entry waited for the body: {got:?}");
    assert!(ms(f[1][5]) < ms(f[1][4]), "{got:?}");
}

/// Hedged tries whose retries run out: the last try's entry carries `URX`
/// (Envoy's UpstreamRetryLimitExceeded), as a plain retry's does.
#[test]
fn hedged_tries_that_run_out_of_retries_log_urx_on_the_last() {
    use meshgate_tests::scripted::{Script, Scripted};
    let backend = Scripted::start(|_| {
        Script::Answer(
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 5\r\n\r\nbusy\n".to_vec(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let mg = upstream_logged(
        &up,
        "%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%RESPONSE_FLAGS%",
        "timeout: 10s, hedge_policy: {hedge_on_per_try_timeout: true}, retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 2s, retry_back_off: {base_interval: 5ms}}",
        backend.addr,
    );
    let port = mg.listener_port("web");
    let (s, _, body) = curl(&[&format!("http://127.0.0.1:{port}/hedged")]);
    assert_eq!((s, body.as_str()), (503, "busy\n"));
    let got = lines(&up, 2);
    assert_eq!(got, ["1|503|-", "2|503|URX"], "{got:?}");
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_retry_limit_exceeded_total",
            &[("cluster", "svc")]
        ),
        1.0
    );
}

/// Hedged tries (`hedge_on_per_try_timeout`) each get their own entry: a
/// slow first try (no answer) passes its per-try timeout and keeps
/// running while the hedged second try answers 503 with 40 of its 100
/// body bytes and stalls; that response is retried, so dropped (its
/// upstream connection closed), and its entry carries the 40 bytes
/// received before; the third try's 200 wins, and the first try, still
/// without an answer, is cancelled: code 0 after its per-try timeout (UT).
#[test]
fn hedged_tries_entries_carry_the_bytes_received_before_the_drop() {
    use meshgate_tests::scripted::{Script, Scripted};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = AtomicUsize::new(0);
    let backend = Scripted::start(move |_| match n.fetch_add(1, Ordering::Relaxed) {
        0 => Script::Silent,
        1 => Script::Answer(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100\r\n\r\n{}",
                "x".repeat(40)
            )
            .into_bytes(),
        ),
        _ => Script::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec()),
    });
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let mg = upstream_logged(
        &up,
        "%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%RESPONSE_CODE_DETAILS%",
        "timeout: 10s, hedge_policy: {hedge_on_per_try_timeout: true}, retry_policy: {retry_on: 5xx, num_retries: 2, per_try_timeout: 300ms, retry_back_off: {base_interval: 5ms}}",
        backend.addr,
    );
    let port = mg.listener_port("web");
    let (s, _, body) = curl(&[&format!("http://127.0.0.1:{port}/hedged")]);
    assert_eq!((s, body.as_str()), (200, "ok\n"));
    let got = lines(&up, 3);
    assert_eq!(
        got,
        [
            "1|504|UT|0|upstream_timeout",
            "2|503|-|40|via_upstream",
            "3|200|-|3|via_upstream"
        ],
        "{got:?}"
    );
    // The dropped 503 and the cancelled first try: both connections closed.
    let dropped = String::from_utf8_lossy(&backend.wait_closed(1).bytes).to_string();
    assert!(dropped.starts_with("GET /hedged "), "{dropped}");
    backend.wait_closed(0);
    // Both retries started while the first try was still running.
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_hedged_total",
            &[("cluster", "svc")]
        ),
        2.0
    );
}
