//! `HttpProtocolOptions.auto_config` (issue 19): on a cluster without TLS
//! there is no ALPN to choose by, and Envoy speaks HTTP/1.1; meshgate does
//! the same (an HTTP/1.1-only backend serves the pushed route). On a TLS
//! cluster meshgate offers `h2,http/1.1` by ALPN and speaks what each
//! endpoint's handshake chose: a real Caddy with HTTP/2 answers in
//! HTTP/2, one with HTTP/1.1 only in HTTP/1.1 (each tells the protocol it
//! was asked in). `auto_config.http3_protocol_options` (HTTP/3 by an
//! alternate protocols cache) is NACKed by name and the old cluster keeps
//! serving.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::caddy::Caddy;
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::sync::atomic::Ordering;

fn cluster(backend: std::net::SocketAddr, tls: bool) -> String {
    cluster_with(backend, tls, "")
}

/// Cluster `b` with `auto_config` (plus `extra` lines in it) to `backend`,
/// over TLS trusting the test CA when `tls`.
fn cluster_with(backend: std::net::SocketAddr, tls: bool, extra: &str) -> String {
    let socket = if tls {
        let ca = serde_json::to_string(
            &std::fs::read_to_string(workspace().join("examples/certs/ca.pem")).unwrap(),
        )
        .unwrap();
        format!(
            r#"  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: localhost
      common_tls_context:
        validation_context:
          trusted_ca: {{inline_string: {ca}}}
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: b
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: b
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      auto_config:
        http_protocol_options: {{}}
        http2_protocol_options: {{max_concurrent_streams: 100}}
{extra}{socket}"#,
        port = backend.port()
    )
}

#[test]
fn auto_config_is_http1_without_tls_and_chosen_by_alpn_with_tls() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", envoy_yaml(&cluster(backend.addr, false)));
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: front
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: front
        route_config:
          name: r
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: b, host_rewrite_literal: localhost}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )),
    );
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    let addr = ([127, 0, 0, 1], port).into();
    wait_listening(addr);
    let (status, _) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert_eq!(backend.hits.load(Ordering::Relaxed), 1, "HTTP/1.1 upstream");

    // TLS to a Caddy speaking HTTP/1.1 and HTTP/2: ALPN chose h2.
    let (h2, h1) = (free_port(), free_port());
    let _a = Caddy::speaking(h2, "a {http.request.proto}", "h1 h2");
    let _b = Caddy::speaking(h1, "b {http.request.proto}", "h1");
    let push = |v: &str, port: u16, extra: &str| {
        let to = ([127, 0, 0, 1], port).into();
        mgmt.set(CLUSTER, v, envoy_yaml(&cluster_with(to, true, extra)));
        let nonce = mgmt.wait_sent(CLUSTER, v);
        mgmt.wait_reply(CLUSTER, &nonce)
    };
    let r = push("2", h2, "");
    assert!(r.error_detail.is_none(), "{r:?}");
    // The new cluster serves once its version is applied.
    let body = wait_for_within(10, "the TLS cluster serving", || {
        http_get(addr, "/")
            .ok()
            .filter(|(s, b)| *s == 200 && b.starts_with('a'))
            .map(|(_, b)| b)
    });
    assert_eq!(body.trim(), "a HTTP/2.0");

    // TLS to a Caddy with HTTP/1.1 only: ALPN chose http/1.1.
    let r = push("3", h1, "");
    assert!(r.error_detail.is_none(), "{r:?}");
    let body = wait_for_within(10, "the second TLS cluster serving", || {
        http_get(addr, "/")
            .ok()
            .filter(|(s, b)| *s == 200 && b.starts_with('b'))
            .map(|(_, b)| b)
    });
    assert_eq!(body.trim(), "b HTTP/1.1");

    // HTTP/3 chosen by an alternate protocols cache: NACKed by name, the
    // cluster before keeps serving.
    let r = push(
        "4",
        h2,
        "        http3_protocol_options: {}\n        alternate_protocols_cache_options: {name: c}\n",
    );
    let detail = r.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("auto_config.http3_protocol_options"),
        "{detail}"
    );
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!((status, body.trim()), (200, "b HTTP/1.1"));
}
