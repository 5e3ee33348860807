//! `HttpProtocolOptions.auto_config` (issue 19): on a cluster without TLS
//! there is no ALPN to choose by, and Envoy speaks HTTP/1.1; meshgate does
//! the same (an HTTP/1.1-only backend serves the pushed route). On a TLS
//! cluster the ALPN choice is not implemented: the push is NACKed naming
//! `auto_config` and the old cluster keeps serving.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::sync::atomic::Ordering;

fn cluster(backend: std::net::SocketAddr, tls: bool) -> String {
    let socket = if tls {
        r#"  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: localhost
"#
    } else {
        ""
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
        http2_protocol_options: {{}}
{socket}"#,
        port = backend.port()
    )
}

#[test]
fn auto_config_without_tls_is_http1_and_with_tls_is_nacked_by_name() {
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
              route: {{cluster: b}}
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

    mgmt.set(CLUSTER, "2", envoy_yaml(&cluster(backend.addr, true)));
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let nack = mgmt.wait_reply(CLUSTER, &nonce);
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(detail.contains("auto_config"), "{detail}");
    let (status, _) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert_eq!(backend.hits.load(Ordering::Relaxed), 2);
}
