//! Core's upstream pool (layer 8) end to end through the real binary: an
//! HTTP/3 cluster's connections get the same endpoint removal and circuit
//! breaker as every other protocol (its client is on core's `MuxPool` and
//! `Dial`): the QUIC connection to an endpoint that left the cluster
//! closes, `max_connections` refuses a second connection, and the
//! connections of a cluster replaced by a reload close.

use meshgate_tests::caddy::Caddy;
use meshgate_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

fn curl_get(url: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A plain listener routing everything to the HTTP/3 cluster `h3` with
/// `max_connections: 1`, `connect_timeout` and `endpoints` (Caddy ports).
/// The CA is inline (no file read), so that a reload changing only the
/// endpoints updates the live cluster in place.
fn config(port: u16, connect_timeout: &str, endpoints: &[u16]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("{{address: \"127.0.0.1:{p}\"}}"))
        .collect();
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
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: h3, host_rewrite_literal: localhost}}
clusters:
  - name: h3
    protocol: http3
    max_connections: 1
    connect_timeout: {connect_timeout}
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{eps}]
"#,
        ca = serde_json::to_string(&std::fs::read_to_string(certs("ca.pem")).unwrap()).unwrap(),
        eps = eps.join(", "),
    )
}

/// Rewrites the running config atomically and reloads it with SIGHUP,
/// waiting until the reload is counted.
fn reload(mg: &Meshgate, yaml: &str) {
    let text = yaml.replace("{ADMIN}", &mg.admin.unwrap().to_string());
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
    let before = mg.metric("meshgate_config_reload_total", &[("result", "ok")]);
    let pid = mg.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the reload to be counted", || {
        mg.metric("meshgate_config_reload_total", &[("result", "ok")]) > before
    });
}

#[test]
fn http3_connections_to_a_removed_endpoint_close_and_max_connections_holds() {
    let (pa, pb) = (free_port(), free_port());
    let _a = Caddy::tagged(pa, "a");
    let _b = Caddy::tagged(pb, "b");
    let port = free_port();
    let mg = Meshgate::start_with_args(&config(port, "1s", &[pa]), &["--watch-interval", "0s"]);
    let url = format!("http://127.0.0.1:{port}/x");
    let active = || mg.metric("meshgate_cluster_upstream_cx_active", &[("cluster", "h3")]);
    let total = || mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "h3")]);

    // Two requests share one pooled QUIC connection to a.
    for _ in 0..2 {
        let (code, body) = curl_get(&url);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("a proto=HTTP/3.0"), "{body}");
    }
    assert_eq!((total(), active()), (1.0, 1.0));

    // a leaves the cluster (an endpoint-only change: the cluster is
    // updated in place): its idle QUIC connection closes.
    reload(&mg, &config(port, "1s", &[pb]));
    assert!(
        mg.log_text().contains("endpoints updated in place"),
        "{}",
        mg.log_text()
    );
    wait_until("the connection to the removed endpoint to close", || {
        active() == 0.0
    });
    let (code, body) = curl_get(&url);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("b proto=HTTP/3.0"), "{body}");
    assert_eq!((total(), active()), (2.0, 1.0));

    // a joins again. With the connection to b open, max_connections: 1
    // refuses a connection to a: the requests balanced to a get 503 and
    // are counted as overflow; those to b are served on its connection.
    reload(&mg, &config(port, "1s", &[pa, pb]));
    let (mut served_b, mut refused) = (0, 0);
    let started = Instant::now();
    while (served_b == 0 || refused == 0) && started.elapsed() < Duration::from_secs(20) {
        let (code, body) = curl_get(&url);
        match code {
            200 => {
                assert!(body.contains("b proto=HTTP/3.0"), "{body}");
                served_b += 1;
            }
            503 => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        served_b > 0 && refused > 0,
        "b {served_b}, refused {refused}"
    );
    assert!(
        mg.metric(
            "meshgate_cluster_upstream_cx_overflow_total",
            &[("cluster", "h3")]
        ) >= refused as f64
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_cx_connect_fail_total",
            &[("cluster", "h3"), ("reason", "overflow")]
        ),
        refused as f64
    );
    assert_eq!((total(), active()), (2.0, 1.0));

    // A setting other than the endpoints changes: the cluster is replaced,
    // and the old one's connection closes (it no longer keeps its cluster,
    // and so its own pool, alive).
    reload(&mg, &config(port, "2s", &[pb]));
    wait_until("the replaced cluster's connection to close", || {
        active() == 0.0
    });
    let (code, body) = curl_get(&url);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("b proto=HTTP/3.0"), "{body}");
    assert_eq!((total(), active()), (3.0, 1.0));
}

/// A plain listener routing `/h1` to an HTTP/1.1 cluster and `/h2` to an
/// h2c cluster, both with `max_requests_per_connection: {max}`.
fn limited(port: u16, h1: &str, h2: &str, max: &str) -> String {
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
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /h1}}
                        route: {{cluster: h1}}
                      - match: {{prefix: /h2}}
                        route: {{cluster: h2}}
clusters:
  - name: h1
    protocol_options: {{max_requests_per_connection: {max}}}
    endpoints: [{{address: "{h1}"}}]
  - name: h2
    protocol: http2
    protocol_options: {{max_requests_per_connection: {max}}}
    endpoints: [{{address: "{h2}"}}]
"#
    )
}

#[test]
fn max_requests_per_connection_closes_http1_and_drains_http2_connections() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let b1 = HttpBackend::start("one", Proto::Http1);
    let b2 = HttpBackend::start("two", Proto::H2c);
    let port = free_port();
    let mg = Meshgate::start(&limited(
        port,
        &b1.addr.to_string(),
        &b2.addr.to_string(),
        "2",
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for cluster in ["h1", "h2"] {
        for _ in 0..5 {
            let (code, body) = http_get(addr, &format!("/{cluster}")).unwrap();
            assert_eq!(code, 200, "{cluster}: {body}");
        }
        // 5 requests, 2 per connection: 3 connections, in turn.
        assert_eq!(
            mg.metric(
                "meshgate_cluster_upstream_cx_total",
                &[("cluster", cluster)]
            ),
            3.0,
            "{cluster}"
        );
        // The used-up ones closed; the last one stays pooled.
        wait_until("the used-up connections to close", || {
            mg.metric(
                "meshgate_cluster_upstream_cx_active",
                &[("cluster", cluster)],
            ) == 1.0
        });
    }
    assert_eq!((b1.hits(), b2.hits()), (5, 5));

    // 0 is refused, naming the field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        limited(port, &b1.addr.to_string(), &b2.addr.to_string(), "0")
            .replace("{ADMIN}", "127.0.0.1:0"),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", bad.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("clusters[0].protocol_options") && err.contains("max_requests_per_connection"),
        "{err}"
    );
}

#[test]
fn http2_and_http1_connections_to_a_removed_endpoint_close() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    let (a1, b1) = (
        HttpBackend::start("a1", Proto::Http1),
        HttpBackend::start("b1", Proto::Http1),
    );
    let (a2, b2) = (
        HttpBackend::start("a2", Proto::H2c),
        HttpBackend::start("b2", Proto::H2c),
    );
    let port = free_port();
    let cfg = |h1: &HttpBackend, h2: &HttpBackend| {
        limited(port, &h1.addr.to_string(), &h2.addr.to_string(), "1000")
    };
    let mg = Meshgate::start_with_args(&cfg(&a1, &a2), &["--watch-interval", "0s"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for path in ["/h1", "/h2"] {
        let (code, body) = http_get(addr, path).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!((established_to(a1.addr), established_to(a2.addr)), (1, 1));
    // Both clusters' endpoints move (updated in place): the pooled
    // connections to the endpoints that left close.
    reload(&mg, &cfg(&b1, &b2));
    assert!(mg.log_text().contains("endpoints updated in place"));
    wait_until("the connections to the removed endpoints to close", || {
        established_to(a1.addr) == 0 && established_to(a2.addr) == 0
    });
    for path in ["/h1", "/h2"] {
        let (code, body) = http_get(addr, path).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!((b1.hits(), b2.hits()), (1, 1));
    for c in ["h1", "h2"] {
        assert_eq!(
            mg.metric("meshgate_cluster_upstream_cx_active", &[("cluster", c)]),
            1.0,
            "{c}"
        );
    }
}
