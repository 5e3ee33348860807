//! Cluster `filters` (Envoy's `Cluster.filters`) run on `tcp_proxy`'s
//! upstream connections; a pool connection a filter would take part in is
//! refused naming the filter, never opened without it. HTTP/3 pools check
//! it too: with Caddy over HTTP/3, a cluster whose metadata-exchange filter
//! names the `h3` ALPN gets no connection (503, the filter named in the
//! log), while one whose filter names Istio's `istio-peer-exchange` (never
//! negotiated over QUIC) serves.

use meshgate_tests::caddy::Caddy;
use meshgate_tests::*;

#[test]
fn http3_pool_refuses_a_connection_a_cluster_filter_would_take_part_in() {
    let h3 = free_port();
    let _caddy = Caddy::tagged(h3, "c");
    let ca = serde_json::to_string(
        &std::fs::read_to_string(workspace().join("examples/certs/ca.pem")).unwrap(),
    )
    .unwrap();
    let cluster = |name: &str, alpn: &str| {
        format!(
            r#"  - name: {name}
    protocol: http3
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h3}"}}]
    filters: [{{name: istio_metadata_exchange, config: {{protocol: {alpn}}}}}]
"#
        )
    };
    let mg = Meshgate::start(&proxy_config(
        &[
            "{match: {prefix: /h3}, route: {cluster: h3, host_rewrite_literal: localhost}}",
            "{match: {prefix: /istio}, route: {cluster: istio, host_rewrite_literal: localhost}}",
        ],
        &format!(
            r#"{}{}"#,
            cluster("h3", "h3"),
            cluster("istio", "istio-peer-exchange"),
        ),
    ));
    let port = mg.listener_port("http");
    let (code, _, body) = curl::curl(&[&format!("http://127.0.0.1:{port}/istio")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("c proto=HTTP/3"), "{body}");

    let (code, _, body) = curl::curl(&[&format!("http://127.0.0.1:{port}/h3")]);
    assert_eq!(code, 503, "{body}");
    wait_for_within(10, "the refusal naming the filter in the log", || {
        mg.log_text()
            .contains("cluster filter 'istio_metadata_exchange' applies to this connection")
            .then_some(())
    });
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "h3")]),
        0.0,
        "no connection opened"
    );
}
