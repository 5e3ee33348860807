//! HTTP/3 active health checks (`codec_client_type: HTTP3`) of an http3
//! cluster, against Caddy as the HTTP/3 upstream: Caddy answers the check
//! 200 only when it came over HTTP/3 (its `protocol http/3` matcher), so a
//! healthy endpoint proves the checks travel over QUIC. The endpoint fails
//! when Caddy stops, stays failed while a restarted Caddy answers an
//! unexpected status, and is healthy again once Caddy answers 200.

use meshgate_tests::caddy::Caddy;
use meshgate_tests::*;

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

/// Caddy answering `/healthz` with `status` over HTTP/3 (421 over TCP).
fn caddy(port: u16, status: u16) -> Caddy {
    Caddy::with_site(
        port,
        &format!(
            "\t@h3 protocol http/3\n\trespond @h3 \"check over h3\" {status}\n\trespond \"not over HTTP/3\" 421"
        ),
    )
}

fn config(caddy_port: u16, check: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners: []
clusters:
  - name: caddy
    protocol: http3
    tls: {{trusted_ca: "{ca}", sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{caddy_port}"}}]
    health_checks:
      - timeout: 1s
        interval: 200ms
        unhealthy_threshold: 2
        healthy_threshold: 2
        http_health_check: {check}
"#,
        ca = certs("ca.pem")
    )
}

/// The `health_flags` of Caddy's endpoint in `/clusters`.
fn flags(mg: &Meshgate, caddy_port: u16) -> String {
    let (status, body) = mg.admin_get("/clusters");
    assert_eq!(status, 200);
    let key = format!("caddy::127.0.0.1:{caddy_port}::health_flags::");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in:\n{body}"))
        .to_string()
}

fn wait_flags(mg: &Meshgate, caddy_port: u16, want: &str) {
    wait_until_within(20, &format!("caddy health_flags {want}"), || {
        flags(mg, caddy_port) == want
    });
}

fn failures(mg: &Meshgate, kind: &str) -> f64 {
    mg.metric(
        "meshgate_cluster_health_check_failure_total",
        &[("cluster", "caddy"), ("kind", kind)],
    )
}

#[test]
fn http3_checks_fail_a_stopped_or_failing_upstream_and_recover() {
    let port = free_port();
    let c = caddy(port, 200);
    let mg = Meshgate::start(&config(
        port,
        "{path: /healthz, host: localhost, codec_client_type: HTTP3}",
    ));
    wait_flags(&mg, port, "healthy");
    let passed = mg.metric(
        "meshgate_cluster_health_check_success_total",
        &[("cluster", "caddy")],
    );
    assert!(passed >= 1.0, "{passed}");

    // Caddy stops: no answer (QUIC has no refusal), so the checks time
    // out or fail on the connection; two in a row fail the endpoint.
    c.stop();
    wait_flags(&mg, port, "/failed_active_hc");
    assert!(
        failures(&mg, "timeout") + failures(&mg, "network") >= 2.0,
        "{}",
        mg.admin_get("/stats/prometheus").1
    );

    // Back, but answering 503: an unexpected status keeps it failed.
    let c = caddy(port, 503);
    wait_until_within(20, "a check answered 503 over HTTP/3", || {
        failures(&mg, "status") >= 1.0
    });
    assert_eq!(flags(&mg, port), "/failed_active_hc");
    c.stop();

    // Answering 200 again: healthy after `healthy_threshold` passes.
    let _c = caddy(port, 200);
    wait_flags(&mg, port, "healthy");
    let log = mg.log_text();
    assert!(log.contains("health check: endpoint unhealthy"), "{log}");
    assert!(log.contains("health check: endpoint healthy"), "{log}");
}

#[test]
fn http3_checks_need_an_http3_cluster() {
    let yaml = r#"admin:
  address: "{ADMIN}"
listeners: []
clusters:
  - name: plain
    endpoints: [{address: "127.0.0.1:9"}]
    health_checks:
      - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, codec_client_type: HTTP3}}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}")
            .contains("clusters[0].health_checks[0].http_health_check.codec_client_type"),
        "{out}{err}"
    );
}
