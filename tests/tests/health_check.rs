//! Active health checking (HTTP/1.1, HTTP/2, gRPC, TCP), EDS health
//! status, degraded endpoints and the admin's `/clusters`, against the real
//! binary and real backends: a flaky HTTP backend the test fails and heals
//! (`meshgate_tests::flaky`), a python grpcio server with the standard
//! health service, a closed port, and a real xDS control plane.

use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use meshgate_tests::flaky::Flaky;
use meshgate_tests::pypeer::PyPeer;
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One response seen by the client loop: when, status, body (the backend).
type Seen = (Instant, u16, String);

/// A client sending requests one after the other until dropped.
struct ClientLoop {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl ClientLoop {
    fn start(addr: SocketAddr) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Ok((status, body)) = http_get(addr, "/") {
                    s.lock().unwrap().push((Instant::now(), status, body));
                }
            }
        });
        Self { seen, stop }
    }

    fn since(&self, t: Instant) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.0 >= t)
            .cloned()
            .collect()
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits for `n` more responses and returns them.
    fn next(&self, n: usize) -> Vec<Seen> {
        let start = self.len();
        wait_until("client loop responses", || self.len() >= start + n);
        self.seen.lock().unwrap()[start..].to_vec()
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_config(port: u16, endpoints: &[SocketAddr], health_checks: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{eps}]
    health_checks:
{health_checks}
"#,
        eps = eps.join(", ")
    )
}

/// The `health_flags` line of `addr` in `/clusters`.
fn flags_of(mg: &Meshgate, addr: SocketAddr) -> String {
    let (status, body) = mg.admin_get("/clusters");
    assert_eq!(status, 200);
    let key = format!("backend::{addr}::health_flags::");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in:\n{body}"))
        .to_string()
}

fn wait_flags(mg: &Meshgate, addr: SocketAddr, want: &str) {
    wait_until_within(15, &format!("{addr} health_flags {want}"), || {
        flags_of(mg, addr) == want
    });
}

const INTERVAL_MS: u64 = 500;

/// The backbone: an HTTP backend starts answering 503 under a steady
/// client loop; it gets no more traffic within two intervals, comes back
/// after `healthy_threshold` passing checks; `/clusters` (text and JSON)
/// and the metrics follow.
#[test]
fn http_check_ejects_a_failing_endpoint_within_two_intervals_and_recovers() {
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    let port = free_port();
    let hc = format!(
        "      - timeout: 300ms\n        interval: {INTERVAL_MS}ms\n        unhealthy_threshold: 3\n        healthy_threshold: 2\n        http_health_check:\n          path: /healthz\n          host: health.example\n          request_headers_to_add: [{{header: {{key: x-probe, value: meshgate}}}}]\n"
    );
    let mg = Meshgate::start(&proxy_config(port, &[a.addr, b.addr], &hc));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    wait_flags(&mg, a.addr, "healthy");
    wait_flags(&mg, b.addr, "healthy");
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 2.0,
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_membership_endpoints",
            &[("cluster", "backend")]
        ),
        2.0
    );
    let client = ClientLoop::start(addr);
    let both = client.next(20);
    assert!(both.iter().any(|x| x.2 == "a") && both.iter().any(|x| x.2 == "b"));

    // a fails (every answer 503): an unexpected status fails it at once.
    let t0 = Instant::now();
    a.set_status(503);
    wait_flags(&mg, a.addr, "/failed_active_hc");
    // Settle (a request chosen before the flip may still end), then check
    // that a gets nothing more.
    client.next(5);
    let after = client.next(20);
    assert!(after.iter().all(|x| x.2 == "b" && x.1 == 200), "{after:?}");
    let seen = client.since(t0);
    // (A 200 from a may still be answered, and stamped, just after t0.)
    let failed: Vec<&Seen> = seen.iter().filter(|x| x.2 == "a" && x.1 == 503).collect();
    let last_to_a = failed.last().map(|x| x.0 - t0).unwrap_or_default();
    eprintln!(
        "failure to no traffic: {last_to_a:?}; requests failed meanwhile: {} of {}",
        failed.len(),
        seen.len()
    );
    assert!(
        last_to_a <= Duration::from_millis(2 * INTERVAL_MS),
        "a got traffic {last_to_a:?} after failing"
    );
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 1.0,
    );
    assert!(
        mg.metric(
            "meshgate_cluster_health_check_failure_total",
            &[("cluster", "backend"), ("kind", "status")]
        ) >= 1.0
    );
    // JSON too.
    let (_, json) = mg.admin_get("/clusters?format=json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hosts = v["cluster_statuses"][0]["host_statuses"]
        .as_array()
        .unwrap();
    let host = |addr: SocketAddr| {
        hosts
            .iter()
            .find(|h| h["address"]["socket_address"]["port_value"] == addr.port())
            .unwrap()
            .clone()
    };
    assert_eq!(v["cluster_statuses"][0]["name"], "backend");
    assert_eq!(
        host(a.addr)["health_status"]["failed_active_health_check"],
        true
    );
    assert_eq!(
        host(b.addr)["health_status"]["failed_active_health_check"],
        false
    );
    assert_eq!(host(b.addr)["weight"], 1);
    let rq_success = host(b.addr)["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rq_success")
        .unwrap()["value"]
        .as_u64()
        .unwrap();
    assert!(rq_success > 0, "{json}");
    let (_, text) = mg.admin_get("/clusters");
    assert!(
        text.contains(&format!("backend::{}::weight::1", b.addr)),
        "{text}"
    );
    assert!(
        text.contains(&format!("backend::{}::rq_total::", b.addr)),
        "{text}"
    );

    // a heals: two passing checks (healthy_threshold) and it is back.
    let checks = a.checks();
    a.set_status(200);
    wait_flags(&mg, a.addr, "healthy");
    assert!(a.checks() >= checks + 2, "healthy before healthy_threshold");
    let traffic = a.traffic();
    wait_until("a gets traffic again", || a.traffic() > traffic);
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 2.0,
    );
    let log = mg.log_text();
    assert!(log.contains("health check: endpoint unhealthy"), "{log}");
    assert!(log.contains("health check: endpoint healthy"), "{log}");
}

/// `x-envoy-degraded` on a check's answer makes the endpoint degraded: it
/// gets traffic only when no healthy endpoint is left.
#[test]
fn degraded_endpoints_take_traffic_only_when_no_healthy_one_is_left() {
    // Envoy's priority load: three healthy endpoints of four carry
    // min(100, 1.4 x 75 %) = all the load, so the degraded one gets none
    // until the healthy ones are short. Panic mode off, so that it is
    // health, not panic, that decides once the healthy ones fail.
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    let c = Flaky::start("c");
    let d = Flaky::start("d");
    let port = free_port();
    let hc = "      - timeout: 300ms\n        interval: 200ms\n        unhealthy_threshold: 1\n        healthy_threshold: 1\n        http_health_check: {path: /healthz, codec_client_type: HTTP1}\n    common_lb_config: {healthy_panic_threshold: {value: 0}}\n";
    let mg = Meshgate::start(&proxy_config(port, &[a.addr, b.addr, c.addr, d.addr], hc));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    for e in [&b, &c, &d] {
        wait_flags(&mg, e.addr, "healthy");
    }
    a.set_degraded(true);
    wait_flags(&mg, a.addr, "/degraded_active_hc");
    mg.wait_metric(
        "meshgate_cluster_membership_degraded",
        &[("cluster", "backend")],
        |v| v == 1.0,
    );
    let client = ClientLoop::start(addr);
    let got = client.next(30);
    assert!(got.iter().all(|x| x.2 != "a"), "{got:?}");
    // b, c and d fail: the degraded a takes the traffic (not the failed
    // ones).
    for e in [&b, &c, &d] {
        e.set_status(500);
    }
    for e in [&b, &c, &d] {
        wait_flags(&mg, e.addr, "/failed_active_hc");
    }
    client.next(5);
    let got = client.next(20);
    assert!(got.iter().all(|x| x.2 == "a" && x.1 == 200), "{got:?}");
}

/// A TCP check: connect-only against a closed port fails (network); with
/// send/receive payloads (hex) against the HTTP backend it passes.
#[test]
fn tcp_check_fails_a_closed_port_and_matches_payloads() {
    let a = Flaky::start("a");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = free_port();
    // "GET / HTTP/1.1\r\n\r\n" and "HTTP/1.1 200" in hex.
    let send: String = b"GET /tcp HTTP/1.1\r\n\r\n"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let recv: String = b"HTTP/1.1 200".iter().map(|b| format!("{b:02x}")).collect();
    let hc = format!(
        "      - timeout: 300ms\n        interval: 200ms\n        unhealthy_threshold: 2\n        healthy_threshold: 1\n        tcp_health_check: {{send: {{text: \"{send}\"}}, receive: [{{text: \"{recv}\"}}]}}\n      - timeout: 300ms\n        interval: 200ms\n        unhealthy_threshold: 2\n        healthy_threshold: 1\n        tcp_health_check: {{}}\n"
    );
    let mg = Meshgate::start(&proxy_config(port, &[a.addr, closed], &hc));
    wait_flags(&mg, a.addr, "healthy");
    wait_flags(&mg, closed, "/failed_active_hc");
    mg.wait_metric(
        "meshgate_cluster_health_check_failure_total",
        &[("cluster", "backend"), ("kind", "network")],
        |v| v >= 2.0,
    );
    assert!(a.traffic() >= 1, "the TCP check's payload did not reach a");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap(), (200, "a".to_string()));
    }
    // A payload mismatch fails the endpoint (status).
    a.set_status(404);
    wait_flags(&mg, a.addr, "/failed_active_hc");
    assert!(
        mg.metric(
            "meshgate_cluster_health_check_failure_total",
            &[("cluster", "backend"), ("kind", "status")]
        ) >= 1.0
    );
}

/// gRPC: `grpc.health.v1.Health/Check` against grpcio's health servicer;
/// NOT_SERVING fails the endpoint, SERVING heals it.
#[test]
fn grpc_check_follows_the_serving_status() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("status");
    std::fs::write(&control, "SERVING").unwrap();
    let peer = PyPeer::start(
        "health_check_grpc_peer.py",
        &[control.to_str().unwrap(), "svc.Echo"],
    );
    let grpc: SocketAddr = format!("127.0.0.1:{}", peer.port).parse().unwrap();
    let port = free_port();
    let hc = "      - timeout: 1s\n        interval: 200ms\n        unhealthy_threshold: 2\n        healthy_threshold: 1\n        grpc_health_check: {service_name: svc.Echo, authority: health.example}\n";
    let mg = Meshgate::start(&proxy_config(port, &[grpc], hc));
    wait_flags(&mg, grpc, "healthy");
    std::fs::write(&control, "NOT_SERVING").unwrap();
    wait_flags(&mg, grpc, "/failed_active_hc");
    std::fs::write(&control, "SERVING").unwrap();
    wait_flags(&mg, grpc, "healthy");
    assert!(
        mg.metric(
            "meshgate_cluster_health_check_success_total",
            &[("cluster", "backend")]
        ) >= 2.0
    );
}

/// HTTP/2 checks (`codec_client_type: HTTP2`) against an h2c backend
/// pass, and fail on a status outside `expected_statuses`; a gRPC check of
/// a service the server does not know (NOT_FOUND) fails on status.
#[test]
fn http2_checks_and_unknown_grpc_service() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let port = free_port();
    let hc = "      - timeout: 1s\n        interval: 200ms\n        unhealthy_threshold: 5\n        healthy_threshold: 1\n        http_health_check: {path: /healthz, codec_client_type: HTTP2, expected_statuses: [{start: 200, end: 300}]}\n";
    let mg = Meshgate::start(&proxy_config(port, &[h2.addr], hc));
    wait_flags(&mg, h2.addr, "healthy");
    assert!(h2.hits() >= 1);
    drop(mg);
    let hc = "      - timeout: 1s\n        interval: 200ms\n        unhealthy_threshold: 5\n        healthy_threshold: 1\n        http_health_check: {path: /healthz, codec_client_type: HTTP2, expected_statuses: [{start: 204, end: 205}]}\n";
    let mg = Meshgate::start(&proxy_config(port, &[h2.addr], hc));
    wait_flags(&mg, h2.addr, "/failed_active_hc");
    mg.wait_metric(
        "meshgate_cluster_health_check_failure_total",
        &[("cluster", "backend"), ("kind", "status")],
        |v| v >= 1.0,
    );
    drop(mg);

    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("status");
    std::fs::write(&control, "SERVING").unwrap();
    let peer = PyPeer::start(
        "health_check_grpc_peer.py",
        &[control.to_str().unwrap(), "svc.Echo"],
    );
    let grpc: SocketAddr = format!("127.0.0.1:{}", peer.port).parse().unwrap();
    let hc = "      - timeout: 1s\n        interval: 200ms\n        unhealthy_threshold: 5\n        healthy_threshold: 1\n        grpc_health_check: {service_name: svc.Unknown}\n";
    let mg = Meshgate::start(&proxy_config(port, &[grpc], hc));
    // Pending cleared after the first check; failed stays.
    wait_flags(&mg, grpc, "/failed_active_hc");
    mg.wait_metric(
        "meshgate_cluster_health_check_failure_total",
        &[("cluster", "backend"), ("kind", "status")],
        |v| v >= 1.0,
    );
}

/// Bad config names the field; unsupported checkers are refused by name.
#[test]
fn bad_health_check_config_names_the_field() {
    let a = Flaky::start("a");
    for (hc, field) in [
        (
            "      - {timeout: 1s, interval: 0s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}\n",
            "health_checks[0].interval",
        ),
        (
            "      - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, custom_health_check: {name: envoy.health_checkers.redis}}\n",
            "health_checks[0].custom_health_check",
        ),
        (
            "      - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}, transport_socket_match_criteria: {}}\n",
            "transport_socket_match_criteria",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            proxy_config(free_port(), &[a.addr], hc).replace("{ADMIN}", "127.0.0.1:0"),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(format!("{out}{err}").contains(field), "{field}: {out}{err}");
    }
}

/// EDS `health_status` through a real control plane: UNHEALTHY endpoints
/// get no traffic, DEGRADED ones only when no healthy one is left; the
/// cluster's `health_checks` arrive over CDS too.
#[test]
fn eds_health_status_and_cds_health_checks_through_xds() {
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    let c = Flaky::start("c");
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let mut cluster = eds_cluster_msg("svc");
    cluster.health_checks = vec![core3::HealthCheck {
        timeout: Some(PbDuration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        interval: Some(PbDuration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        unhealthy_threshold: Some(UInt32Value { value: 1 }),
        healthy_threshold: Some(UInt32Value { value: 1 }),
        health_checker: Some(core3::health_check::HealthChecker::HttpHealthCheck(
            core3::health_check::HttpHealthCheck {
                path: "/healthz".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    // Panic mode off: health alone decides (Envoy would otherwise balance
    // over all endpoints once fewer than half are healthy or degraded).
    cluster.common_lb_config = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                value: 0.0,
            }),
            ..Default::default()
        },
    );
    mgmt.set(CLUSTER, "c1", vec![("svc".into(), any(CLUSTER, &cluster))]);
    // HealthStatus: UNHEALTHY = 2, DEGRADED = 5.
    mgmt.set(
        ENDPOINT,
        "e1",
        vec![cla(
            "svc",
            &[(a.addr, 1, 0), (b.addr, 1, 2), (c.addr, 1, 5)],
        )],
    );
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let flags = |e: SocketAddr| {
        let (_, body) = mg.admin_get("/clusters");
        let key = format!("svc::{e}::health_flags::");
        body.lines()
            .find_map(|l| l.strip_prefix(&key).map(str::to_string))
            .unwrap_or_default()
    };
    // Each endpoint's first check passes; b and c keep their EDS status.
    wait_until_within(20, "a checked healthy", || flags(a.addr) == "healthy");
    wait_until("b checked", || flags(b.addr) == "/failed_eds_health");
    wait_until("c checked", || flags(c.addr) == "/degraded_eds_health");
    wait_listening(addr);
    let client = ClientLoop::start(addr);
    // One healthy endpoint of three is short (1.4 x 33 % < 100 %): Envoy
    // gives the rest of the load to the degraded c, never to the
    // unhealthy b.
    let got = client.next(40);
    assert!(got.iter().any(|x| x.2 == "a"), "{got:?}");
    assert!(got.iter().any(|x| x.2 == "c"), "{got:?}");
    assert_eq!(b.traffic(), 0);
    // a fails its active check: the degraded c takes all, not the
    // unhealthy b.
    a.set_status(503);
    wait_until("a failed", || flags(a.addr) == "/failed_active_hc");
    client.next(5);
    let got = client.next(20);
    assert!(got.iter().all(|x| x.2 == "c"), "{got:?}");
    assert_eq!(b.traffic(), 0);
    // An EDS update makes b healthy: it takes traffic again (shared with
    // the degraded c, as above); a stays failed (its check state survives
    // the update) and gets none.
    mgmt.set(
        ENDPOINT,
        "e2",
        vec![cla(
            "svc",
            &[(a.addr, 1, 0), (b.addr, 1, 1), (c.addr, 1, 5)],
        )],
    );
    wait_until("b healthy", || flags(b.addr) == "healthy");
    assert_eq!(flags(a.addr), "/failed_active_hc");
    client.next(5);
    let got = client.next(40);
    assert!(got.iter().any(|x| x.2 == "b"), "{got:?}");
    assert!(got.iter().all(|x| x.2 != "a"), "{got:?}");
}

/// A cluster that originates TLS checks over it: meshgate terminates TLS
/// on `inner` (in front of the flaky backend) and checks `inner` from a
/// TLS cluster; a cluster that does not trust the server's CA fails its
/// checks (network).
#[test]
fn checks_use_the_cluster_tls() {
    let cert = |name: &str| {
        workspace()
            .join("examples/certs")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    let a = Flaky::start("a");
    let inner = free_port();
    let hc = "      - {timeout: 1s, interval: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}";
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: inner
    address: 127.0.0.1:{inner}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{chain}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{a}"}}]
  - name: tls_ok
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls: {{sni: localhost, trusted_ca: "{ca}"}}
    health_checks:
{hc}
  - name: tls_wrong_ca
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls: {{sni: localhost, trusted_ca: "{client_ca}"}}
    health_checks:
{hc}
"#,
        chain = cert("server.pem"),
        key = cert("server.key"),
        ca = cert("ca.pem"),
        client_ca = cert("client-ca.pem"),
        a = a.addr,
    );
    let mg = Meshgate::start(&yaml);
    let flags = |cluster: &str| {
        let (_, body) = mg.admin_get("/clusters");
        let key = format!("{cluster}::127.0.0.1:{inner}::health_flags::");
        body.lines()
            .find_map(|l| l.strip_prefix(&key).map(str::to_string))
            .unwrap_or_default()
    };
    wait_until_within(15, "tls_ok healthy", || flags("tls_ok") == "healthy");
    wait_until_within(15, "tls_wrong_ca failed", || {
        flags("tls_wrong_ca") == "/failed_active_hc"
    });
    assert!(a.checks() >= 1, "no check reached the backend through TLS");
    assert!(
        mg.metric(
            "meshgate_listener_tls_handshake_total",
            &[("listener", "inner")]
        ) >= 1.0
    );
    assert!(
        mg.metric(
            "meshgate_cluster_health_check_failure_total",
            &[("cluster", "tls_wrong_ca"), ("kind", "network")]
        ) >= 1.0
    );
}
