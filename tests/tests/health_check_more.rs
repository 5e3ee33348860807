//! More of active health checking, against the real binary and real
//! backends (`meshgate_tests::hc_backend`: traffic and `/healthz` answer
//! separately, optionally on a separate health port): an endpoint's
//! `health_check_config` (port and host of its checks), outlier
//! `successful_active_health_check_uneject_host`, and the outlier state in
//! the admin's `/clusters`.

use meshgate_tests::hc_backend::HcBackend;
use meshgate_tests::*;
use std::net::SocketAddr;

/// A proxy on `port` to cluster `backend` with `endpoints` (YAML flow
/// maps) and `extra` cluster lines (health_checks, outlier_detection).
fn proxy_config(port: u16, endpoints: &[String], extra: &str) -> String {
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
{extra}"#,
        eps = endpoints.join(", ")
    )
}

fn ep(a: SocketAddr) -> String {
    format!("{{address: \"{a}\"}}")
}

const HC: &str = "    health_checks:\n      - timeout: 300ms\n        interval: 200ms\n        unhealthy_threshold: 2\n        healthy_threshold: 1\n        http_health_check: {path: /healthz, host: cluster.example}\n";

/// The `/clusters` text value of `key` for `addr` (`None`: no such line).
fn line(mg: &Meshgate, addr: SocketAddr, key: &str) -> Option<String> {
    let (status, body) = mg.admin_get("/clusters");
    assert_eq!(status, 200);
    let k = format!("backend::{addr}::{key}::");
    body.lines()
        .find_map(|l| l.strip_prefix(&k))
        .map(str::to_string)
}

fn wait_line(mg: &Meshgate, addr: SocketAddr, key: &str, want: &str) {
    wait_until_within(15, &format!("{addr} {key} = {want}"), || {
        line(mg, addr, key).as_deref() == Some(want)
    });
}

/// Health checks go to the endpoint's `health_check_config.port_value`
/// with its `hostname` as host; the traffic port sees none. A failing
/// health port fails the endpoint although its traffic port is fine.
#[test]
fn checks_go_to_the_endpoint_health_port_with_its_hostname() {
    let a = HcBackend::start_with_health_port("a");
    let b = HcBackend::start("b");
    let hp = a.health_addr.unwrap().port();
    let port = free_port();
    let eps = [
        format!(
            "{{address: \"{}\", health_check_config: {{port_value: {hp}, hostname: a-health.example}}}}",
            a.addr
        ),
        ep(b.addr),
    ];
    let mg = Meshgate::start(&proxy_config(port, &eps, HC));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    wait_line(&mg, a.addr, "health_flags", "healthy");
    wait_line(&mg, b.addr, "health_flags", "healthy");
    wait_until("two checks of a", || a.checks() >= 2);
    assert_eq!(a.checks_on_main(), 0, "no check reached a's traffic port");
    assert!(
        a.check_hosts().iter().all(|h| h == "a-health.example"),
        "{:?}",
        a.check_hosts()
    );
    assert!(
        b.check_hosts().iter().all(|h| h == "cluster.example"),
        "{:?}",
        b.check_hosts()
    );
    // Traffic still goes to a's serving port.
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let (s, body) = http_get(addr, "/").unwrap();
        assert_eq!(s, 200);
        bodies.push(body);
    }
    assert!(bodies.iter().any(|b| b == "a") && bodies.iter().any(|b| b == "b"));
    // The health port fails: a is failed though its traffic port works.
    a.set_health_status(503);
    wait_line(&mg, a.addr, "health_flags", "/failed_active_hc");
    let before = a.traffic();
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap(), (200, "b".to_string()));
    }
    assert_eq!(a.traffic(), before);
    a.set_health_status(200);
    wait_line(&mg, a.addr, "health_flags", "healthy");
}

/// A bad `port_value` is refused by name.
#[test]
fn bad_endpoint_health_check_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    for (e, want) in [
        (
            "{address: \"127.0.0.1:1\", health_check_config: {port_value: 70000}}",
            "clusters[0].endpoints[0].health_check_config.port_value",
        ),
        (
            "{address: \"127.0.0.1:1\", health_check_config: {disable_active_health_check: true}}",
            "disable_active_health_check",
        ),
    ] {
        let yaml =
            proxy_config(free_port(), &[e.to_string()], HC).replace("{ADMIN}", "127.0.0.1:0");
        std::fs::write(&path, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{e}");
        let text = format!("{out}{err}");
        assert!(text.contains(want), "{want} not in: {text}");
    }
}

fn outlier_config(port: u16, a: &HcBackend, b: &HcBackend, uneject: bool) -> String {
    let extra = format!(
        "{HC}    outlier_detection: {{consecutive_5xx: 3, interval: 30s, base_ejection_time: 60s, max_ejection_percent: 100, successful_active_health_check_uneject_host: {uneject}}}\n"
    );
    proxy_config(port, &[ep(a.addr), ep(b.addr)], &extra)
}

/// b answers traffic with 503 while its health checks pass: the outlier
/// detector ejects it (base_ejection_time 60 s), and the next passing
/// active check returns it at once (Envoy's default
/// `successful_active_health_check_uneject_host: true`); `/clusters`
/// shows the outlier state in text and JSON. With the option off, b
/// stays ejected across several passing checks.
#[test]
fn a_passing_active_check_returns_an_outlier_ejected_endpoint() {
    for uneject in [true, false] {
        let a = HcBackend::start("a");
        let b = HcBackend::start("b");
        let port = free_port();
        let mg = Meshgate::start(&outlier_config(port, &a, &b, uneject));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr);
        wait_line(&mg, a.addr, "health_flags", "healthy");
        wait_line(&mg, b.addr, "health_flags", "healthy");
        assert_eq!(
            line(&mg, b.addr, "outlier::ejected").as_deref(),
            Some("false")
        );
        assert_eq!(
            line(&mg, b.addr, "outlier::times_ejected").as_deref(),
            Some("0")
        );

        b.set_traffic_status(503);
        wait_until_within(15, "b ejected", || {
            let _ = http_get(addr, "/");
            mg.metric(
                "meshgate_cluster_outlier_detection_ejections_total",
                &[
                    ("cluster", "backend"),
                    ("detector", "consecutive_5xx"),
                    ("enforced", "true"),
                ],
            ) >= 1.0
        });
        if uneject {
            // The next passing check (every 200 ms) returns b, long before
            // the 60 s ejection is over.
            wait_until_within(5, "b returned by its active check", || {
                mg.log_text().contains("active health check passed")
            });
            wait_line(&mg, b.addr, "health_flags", "healthy");
            wait_line(&mg, b.addr, "outlier::ejected", "false");
            assert_eq!(
                line(&mg, b.addr, "outlier::times_ejected").as_deref(),
                Some("1")
            );
            assert_eq!(
                line(&mg, b.addr, "outlier::last_detector").as_deref(),
                Some("consecutive_5xx")
            );
            mg.wait_metric(
                "meshgate_cluster_outlier_detection_ejections_active",
                &[("cluster", "backend")],
                |v| v == 0.0,
            );
            // b takes traffic again.
            b.set_traffic_status(200);
            let before = b.traffic();
            wait_until("b serves again", || {
                let _ = http_get(addr, "/");
                b.traffic() > before
            });
        } else {
            // Stays ejected while its checks keep passing.
            let checks = b.checks();
            wait_until("four more passing checks of b", || b.checks() >= checks + 4);
            assert_eq!(
                line(&mg, b.addr, "health_flags").as_deref(),
                Some("/failed_outlier_check")
            );
            assert_eq!(
                line(&mg, b.addr, "outlier::ejected").as_deref(),
                Some("true")
            );
            let left: u64 = line(&mg, b.addr, "outlier::ejection_remaining_ms")
                .unwrap()
                .parse()
                .unwrap();
            assert!(left > 50_000 && left <= 60_000, "{left}");
            assert!(!mg.log_text().contains("active health check passed"));
            let (_, text) = mg.admin_get("/clusters");
            assert!(
                text.contains("backend::outlier::ejections_active::1"),
                "{text}"
            );
            assert!(
                text.contains("backend::outlier::success_rate_average::-1"),
                "{text}"
            );
            // JSON: the same state.
            let (_, json) = mg.admin_get("/clusters?format=json");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let c = &v["cluster_statuses"][0];
            assert_eq!(c["outlier_ejections_active"], 1);
            assert_eq!(c["success_rate_average"], -1.0);
            let host = c["host_statuses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["address"]["socket_address"]["port_value"] == b.addr.port())
                .unwrap();
            assert_eq!(host["outlier"]["ejected"], true);
            assert_eq!(host["outlier"]["times_ejected"], 1);
            assert_eq!(host["outlier"]["last_detector"], "consecutive_5xx");
            assert_eq!(host["success_rate"]["value"], -1.0);
            assert_eq!(host["health_status"]["failed_outlier_check"], true);
            assert_eq!(host["health_status"]["failed_active_health_check"], false);
        }
    }
}

/// Dubbo and Bolt heartbeat checks (`custom_health_check`
/// `meshgate.health_checkers.dubbo` / `.bolt`) against real sofa-rpc-node
/// providers: a provider that dies is marked `failed_active_hc` and gets
/// no calls; started again on its port, it is healthy again and serves.
#[test]
fn rpc_heartbeat_checks_follow_a_provider_that_dies_and_comes_back() {
    use meshgate_tests::hc_backend::RpcProvider;
    use meshgate_tests::rpc::node_call;
    for proto in ["dubbo", "bolt"] {
        let a = RpcProvider::start(proto, "A", 0);
        let b = RpcProvider::start(proto, "B", 0);
        let (pa, pb) = (a.port, b.port);
        let mg = Meshgate::start(&format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: {proto}
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    protocol: {proto}
    endpoints: [{{address: "127.0.0.1:{pa}"}}, {{address: "127.0.0.1:{pb}"}}]
    health_checks:
      - timeout: 500ms
        interval: 200ms
        unhealthy_threshold: 2
        healthy_threshold: 1
        custom_health_check: {{name: meshgate.health_checkers.{proto}}}
"#
        ));
        let a_addr: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
        let b_addr: SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();
        wait_line(&mg, a_addr, "health_flags", "healthy");
        wait_line(&mg, b_addr, "health_flags", "healthy");
        let port = mg.listener_addr("main").port();
        let call = |n| {
            node_call(
                proto,
                port,
                "com.meshgate.Echo",
                "echo",
                r#"["hi"]"#,
                n,
                1,
                3000,
                "1.0",
                "",
            )
        };
        let r = call(4);
        assert_eq!(r.ok, 4, "{proto}: {:?}", r.errors);
        assert_eq!(
            (r.from.get("A"), r.from.get("B")),
            (Some(&2), Some(&2)),
            "{proto}"
        );
        // b dies: its heartbeats fail (refused), it is failed, no call
        // goes there.
        drop(b);
        wait_line(&mg, b_addr, "health_flags", "/failed_active_hc");
        assert!(
            mg.metric(
                "meshgate_cluster_health_check_failure_total",
                &[("cluster", "backend"), ("kind", "network")]
            ) >= 2.0
        );
        let r = call(6);
        assert_eq!(r.ok, 6, "{proto}: {:?}", r.errors);
        assert_eq!(r.from.get("A"), Some(&6), "{proto}: {r:?}");
        // b comes back on its port: healthy on its first passing heartbeat.
        let b = RpcProvider::start(proto, "B2", pb);
        assert_eq!(b.port, pb);
        wait_line(&mg, b_addr, "health_flags", "healthy");
        let r = call(4);
        assert_eq!(r.ok, 4, "{proto}: {:?}", r.errors);
        assert_eq!(r.from.get("B2"), Some(&2), "{proto}: {r:?}");
    }
}

/// Through a real xDS control plane: an EDS endpoint's
/// `health_check_config` (port and hostname) and a CDS cluster's
/// `health_checks`; the checks reach only the health port, with that
/// host, and failing it fails the endpoint.
#[test]
fn eds_endpoint_health_check_config_through_xds() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::endpoint::v3 as eds;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use meshgate_tests::xds::*;

    let a = HcBackend::start_with_health_port("a");
    let b = HcBackend::start("b");
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
    mgmt.set(CLUSTER, "c1", vec![("svc".into(), any(CLUSTER, &cluster))]);
    let mut load = cla_msg("svc", &[(a.addr, 1, 0), (b.addr, 1, 0)]);
    if let Some(eds::lb_endpoint::HostIdentifier::Endpoint(e)) =
        &mut load.endpoints[0].lb_endpoints[0].host_identifier
    {
        e.health_check_config = Some(eds::endpoint::HealthCheckConfig {
            port_value: u32::from(a.health_addr.unwrap().port()),
            hostname: "a-eds.example".into(),
            ..Default::default()
        });
    }
    mgmt.set(ENDPOINT, "e1", vec![("svc".into(), any(ENDPOINT, &load))]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let flags = |e: SocketAddr| {
        let (_, body) = mg.admin_get("/clusters");
        let key = format!("svc::{e}::health_flags::");
        body.lines()
            .find_map(|l| l.strip_prefix(&key).map(str::to_string))
            .unwrap_or_default()
    };
    wait_until_within(20, "a checked healthy", || flags(a.addr) == "healthy");
    wait_until("b checked healthy", || flags(b.addr) == "healthy");
    wait_until("two checks of a", || a.checks() >= 2);
    assert_eq!(a.checks_on_main(), 0);
    assert!(
        a.check_hosts().iter().all(|h| h == "a-eds.example"),
        "{:?}",
        a.check_hosts()
    );
    a.set_health_status(503);
    wait_until("a failed", || flags(a.addr) == "/failed_active_hc");
}

/// Checks in `window`, counted at the backend.
fn checks_during(b: &HcBackend, window: std::time::Duration) -> u32 {
    let before = b.checks();
    std::thread::sleep(window);
    b.checks() - before
}

/// The interval follows Envoy's choice: `no_traffic_interval` until the
/// endpoint has taken traffic, then `interval`; `unhealthy_interval` while
/// it fails, `interval` again once it is back. The intervals differ 15x,
/// so the windows' bounds hold on a loaded machine.
#[test]
fn the_check_interval_follows_traffic_and_health() {
    let a = HcBackend::start("a");
    let port = free_port();
    let hc = "    health_checks:\n      - timeout: 800ms\n        interval: 100ms\n        no_traffic_interval: 1500ms\n        unhealthy_interval: 1500ms\n        unhealthy_threshold: 1\n        healthy_threshold: 1\n        http_health_check: {path: /healthz}\n";
    let mg = Meshgate::start(&proxy_config(port, &[ep(a.addr)], hc));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    wait_line(&mg, a.addr, "health_flags", "healthy");
    // No traffic yet: one check every 1.5 s, not every 100 ms (20 in 2 s).
    let idle = checks_during(&a, std::time::Duration::from_secs(2));
    assert!(idle <= 3, "{idle} checks in 2 s without traffic");
    // Traffic: `interval` from the next check on.
    assert_eq!(http_get(addr, "/").unwrap().0, 200);
    let from = a.checks();
    wait_until_within(15, "checks at the 100 ms interval", || {
        a.checks() >= from + 10
    });
    let busy = checks_during(&a, std::time::Duration::from_secs(1));
    assert!(busy >= 4, "{busy} checks in 1 s at a 100 ms interval");
    // Failing: `unhealthy_interval`.
    a.set_health_status(503);
    wait_line(&mg, a.addr, "health_flags", "/failed_active_hc");
    let failing = checks_during(&a, std::time::Duration::from_secs(3));
    assert!(
        failing <= 4,
        "{failing} checks in 3 s at a 1.5 s unhealthy interval"
    );
    // Healthy again: back to `interval`.
    a.set_health_status(200);
    wait_line(&mg, a.addr, "health_flags", "healthy");
    let from = a.checks();
    wait_until_within(15, "checks at the 100 ms interval again", || {
        a.checks() >= from + 10
    });
}

/// `unhealthy_edge_interval` and `healthy_edge_interval`: right after an
/// endpoint changes state it is checked again at the edge interval
/// (400 ms), then at the state's own interval (4 s). Each edge shows as
/// exactly one extra check within 2 s of the change; the 400 ms leave
/// room for the admin poll that sees the change.
#[test]
fn edge_intervals_follow_a_change_of_state() {
    let a = HcBackend::start("a");
    let port = free_port();
    let hc = "    health_checks:\n      - timeout: 1s\n        interval: 4s\n        unhealthy_interval: 4s\n        unhealthy_edge_interval: 400ms\n        healthy_edge_interval: 400ms\n        unhealthy_threshold: 1\n        healthy_threshold: 1\n        http_health_check: {path: /healthz}\n";
    let mg = Meshgate::start(&proxy_config(port, &[ep(a.addr)], hc));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    wait_line(&mg, a.addr, "health_flags", "healthy");
    for (status, flags) in [(503, "/failed_active_hc"), (200, "healthy")] {
        a.set_health_status(status);
        wait_line(&mg, a.addr, "health_flags", flags);
        // The check that changed the state has been answered; the edge
        // check follows 400 ms later, the next one 4 s after that.
        let after = checks_during(&a, std::time::Duration::from_secs(2));
        assert_eq!(
            after, 1,
            "{after} checks within 2 s of becoming {flags} (edge interval 400 ms, then 4 s)"
        );
    }
}
