//! A cluster whose upstream protocol follows the downstream's: YAML
//! `protocol: downstream`, and Envoy's HttpProtocolOptions
//! `use_downstream_protocol_config` pushed by the management server of
//! `meshgate_tests::xds`. The backend is a hyper server speaking HTTP/1.1
//! and h2c on one port and reporting the version each request arrived
//! in; curl talks HTTP/1.1 and HTTP/2 (prior knowledge) to meshgate.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::xds::*;
use meshgate_tests::*;

/// The version the backend saw for one request in `curl_flag`.
fn seen(port: u16, curl_flag: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/v");
    let (status, _, body) = curl(&[curl_flag, &url]);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("version="))
        .unwrap_or_else(|| panic!("no version in {body}"))
        .to_string()
}

fn both_ways(port: u16) {
    for _ in 0..2 {
        assert_eq!(seen(port, "--http1.1"), "HTTP/1.1");
        assert_eq!(seen(port, "--http2-prior-knowledge"), "HTTP/2.0");
    }
}

#[test]
fn yaml_protocol_downstream_follows_each_request() {
    let backend = HttpBackend::start("web", Proto::Auto);
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
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
                        route: {{cluster: web}}
clusters:
  - name: web
    protocol: downstream
    protocol_options: {{initial_stream_window_size: 1048576, max_requests_per_connection: 100}}
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    ));
    let port = mg.listener_port("http");
    both_ways(port);
    // One pooled connection per protocol, reused.
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "web")]),
        2.0
    );
}

#[test]
fn xds_use_downstream_protocol_config() {
    let backend = HttpBackend::start("web", Proto::Auto);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: web
  type: STATIC
  connectTimeout: 1s
  typedExtensionProtocolOptions:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      useDownstreamProtocolConfig:
        httpProtocolOptions: {{}}
        http2ProtocolOptions: {{initialStreamWindowSize: 1048576}}
  loadAssignment:
    clusterName: web
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: 127.0.0.1, portValue: {}}}
"#,
            backend.addr.port()
        )),
    );
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: http
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        statPrefix: http
        routeConfig:
          name: r
          virtualHosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: web}}
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    both_ways(port);
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "web")]),
        2.0
    );
}
