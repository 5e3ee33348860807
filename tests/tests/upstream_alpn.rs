//! `protocol: auto` (Envoy's HttpProtocolOptions `auto_config`, issue
//! 19): over TLS, meshgate offers `h2,http/1.1` by ALPN and speaks to each
//! endpoint what its handshake chose. The upstreams are two real Caddy
//! servers with the test certificate: one with HTTP/1.1 and HTTP/2
//! enabled, one with HTTP/1.1 only (its TLS then offers only `http/1.1`);
//! each answers with the protocol it was asked in
//! (`{http.request.proto}`).

use meshgate_tests::caddy::Caddy;
use meshgate_tests::*;

fn ca() -> String {
    serde_json::to_string(
        &std::fs::read_to_string(workspace().join("examples/certs/ca.pem")).unwrap(),
    )
    .unwrap()
}

/// A plain listener; `/both` goes to the `auto` cluster `both` (the two
/// Caddys), `/h2` and `/h1` to one-endpoint `auto` clusters.
fn config(h2: u16, h1: u16) -> String {
    let ca = ca();
    proxy_config(
        &[
            "{match: {prefix: /both}, route: {cluster: both, host_rewrite_literal: localhost}}",
            "{match: {prefix: /h2}, route: {cluster: h2, host_rewrite_literal: localhost}}",
            "{match: {prefix: /h1}, route: {cluster: h1, host_rewrite_literal: localhost}}",
        ],
        &format!(
            r#"  - name: both
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h2}"}}, {{address: "127.0.0.1:{h1}"}}]
  - name: h2
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h2}"}}]
  - name: h1
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h1}"}}]
"#
        ),
    )
}

fn get(port: u16, path: &str) -> String {
    let (code, _, body) = curl::curl(&[&format!("http://127.0.0.1:{port}{path}")]);
    assert_eq!(code, 200, "{path}: {body}");
    body
}

#[test]
fn auto_protocol_speaks_what_alpn_chose_per_endpoint() {
    let (h2, h1) = (free_port(), free_port());
    let _a = Caddy::speaking(h2, "a {http.request.proto}", "h1 h2");
    let _b = Caddy::speaking(h1, "b {http.request.proto}", "h1");
    let mg = Meshgate::start(&config(h2, h1));
    let port = mg.listener_port("http");
    let total = |c: &str| mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", c)]);

    // Three requests each: one connection per cluster, the one whose
    // handshake taught meshgate the protocol (no probe connection).
    for _ in 0..3 {
        assert_eq!(get(port, "/h2").trim(), "a HTTP/2.0");
        assert_eq!(get(port, "/h1").trim(), "b HTTP/1.1");
    }
    assert_eq!(total("h2"), 1.0);
    assert_eq!(total("h1"), 1.0);

    // One cluster, both endpoints: each speaks its own.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..6 {
        *seen
            .entry(get(port, "/both").trim().to_string())
            .or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<String, i32> =
        [("a HTTP/2.0".to_string(), 3), ("b HTTP/1.1".to_string(), 3)].into();
    assert_eq!(seen, want);
    assert_eq!(total("both"), 2.0);
}

/// A TLS context that names its ALPN keeps it: `[http/1.1]` makes even the
/// HTTP/2-capable Caddy answer in HTTP/1.1.
#[test]
fn auto_protocol_with_configured_alpn_offers_only_that() {
    let h2 = free_port();
    let _a = Caddy::speaking(h2, "a {http.request.proto}", "h1 h2");
    let ca = ca();
    let mg = Meshgate::start(&proxy_config(
        &["{match: {prefix: /}, route: {cluster: c, host_rewrite_literal: localhost}}"],
        &format!(
            r#"  - name: c
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost, alpn_protocols: [http/1.1]}}
    endpoints: [{{address: "127.0.0.1:{h2}"}}]
"#
        ),
    ));
    let port = mg.listener_port("http");
    assert_eq!(get(port, "/").trim(), "a HTTP/1.1");
}

/// Active HTTP/1.1 health checks of `auto` clusters keep the TLS context's
/// own ALPN (none here), as Envoy adds its `h2,http/1.1` fallback to pool
/// connections only: against the HTTP/2-capable Caddy they pass, through
/// the cluster's `tls` and through a `transport_socket_matches` entry,
/// while traffic is spoken in HTTP/2.
#[test]
fn auto_protocol_health_checks_keep_the_configured_alpn() {
    let h2 = free_port();
    let _a = Caddy::speaking(h2, "a {http.request.proto}", "h1 h2");
    let ca = ca();
    let hc = "    health_checks:\n      - {timeout: 1s, interval: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /, host: localhost}}\n";
    let mg = Meshgate::start(&proxy_config(
        &[
            "{match: {prefix: /tls}, route: {cluster: tls, host_rewrite_literal: localhost}}",
            "{match: {prefix: /matched}, route: {cluster: matched, host_rewrite_literal: localhost}}",
        ],
        &format!(
            r#"  - name: tls
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h2}"}}]
{hc}  - name: matched
    protocol: auto
    transport_socket_matches:
      - {{name: all, match: {{}}, tls: {{trusted_ca_pem: {ca}, sni: localhost}}}}
    endpoints: [{{address: "127.0.0.1:{h2}"}}]
{hc}"#
        ),
    ));
    let port = mg.listener_port("http");
    for c in ["tls", "matched"] {
        mg.wait_metric(
            "meshgate_cluster_health_check_success_total",
            &[("cluster", c)],
            |v| v >= 2.0,
        );
        assert_eq!(
            mg.metric(
                "meshgate_cluster_health_check_failure_total",
                &[("cluster", c)]
            ),
            0.0,
            "{c}"
        );
        assert_eq!(get(port, &format!("/{c}")).trim(), "a HTTP/2.0", "{c}");
    }
}

/// An endpoint learned as HTTP/1.1 that starts choosing h2 (Caddy
/// restarted on the same port with HTTP/2 enabled): the request whose new
/// connection meets the change is not failed: nothing was sent, so it goes
/// again over HTTP/2 (a GET and a POST with its body), and so do the next.
#[test]
fn auto_protocol_relearns_an_endpoint_that_moves_to_http2_without_failing_a_request() {
    let port_up = free_port();
    let old = Caddy::speaking(
        port_up,
        "a {http.request.proto} {http.request.method}",
        "h1",
    );
    let ca = ca();
    let mg = Meshgate::start(&proxy_config(
        &["{match: {prefix: /}, route: {cluster: c, host_rewrite_literal: localhost}}"],
        &format!(
            r#"  - name: c
    protocol: auto
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{port_up}"}}]
"#
        ),
    ));
    let port = mg.listener_port("http");
    assert_eq!(get(port, "/").trim(), "a HTTP/1.1 GET");
    // Caddy goes (meshgate's pooled HTTP/1.1 connection with it) and
    // comes back speaking HTTP/2 too.
    old.stop();
    let _new = Caddy::speaking(
        port_up,
        "a {http.request.proto} {http.request.method}",
        "h1 h2",
    );
    assert_eq!(get(port, "/").trim(), "a HTTP/2.0 GET");
    let (code, _, body) = curl::curl(&[
        "--data-binary",
        "hello",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!((code, body.trim()), (200, "a HTTP/2.0 POST"));
    assert_eq!(get(port, "/").trim(), "a HTTP/2.0 GET");
}
