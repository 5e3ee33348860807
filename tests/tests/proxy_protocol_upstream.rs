//! The upstream PROXY protocol on HTTP clusters
//! (`clusters[].proxy_protocol`, Envoy's
//! `envoy.transport_sockets.upstream_proxy_protocol`), end to end with
//! HAProxy as the upstream (`bind ... accept-proxy`, which refuses a
//! connection without a valid header and answers with the client address
//! the header told it, `%ci:%cp`): over HTTP/1.1 (v1) and HTTP/2 (v2).
//! Each downstream's requests reach HAProxy on an upstream connection of
//! their own that starts with that downstream's addresses: two clients in
//! turn each see their own address (a pooled connection would carry the
//! first one's header for the second).

use meshgate_core::metrics::names::CLUSTER_UPSTREAM_CX_TOTAL;
use meshgate_tests::*;
use std::process::{Child, Command, Stdio};

struct Haproxy(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy on `port` requiring a PROXY header (`bind_extra`: e.g.
/// `proto h2`), answering `ci=<client ip>:<client port>`.
fn haproxy(port: u16, bind_extra: &str) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind 127.0.0.1:{port} accept-proxy {bind_extra}\n  \
             http-request return status 200 content-type text/plain lf-string \"ci=%ci:%cp\"\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    Haproxy(child, dir)
}

/// meshgate with an HTTP listener routing everything to HAProxy, the
/// cluster sending PROXY `version` over `protocol`.
fn meshgate(hport: u16, version: &str, protocol: &str) -> (Meshgate, u16) {
    let yaml = format!(
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
                        route: {{cluster: haproxy}}
clusters:
  - name: haproxy
    protocol: {protocol}
    proxy_protocol: {{version: {version}}}
    endpoints: [{{address: "127.0.0.1:{hport}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    (mg, port)
}

/// One curl request from `ip`: (status, body, curl's own local port).
fn curl_from(ip: &str, port: u16, extra: &[&str]) -> (u16, String, u16) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--interface", ip, "-o", "-"])
        .args(["-w", "\n%{local_port}\n%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.rsplitn(3, '\n');
    let code = lines.next().unwrap_or("").trim().parse().unwrap_or(0);
    let local = lines.next().unwrap_or("").trim().parse().unwrap_or(0);
    (code, lines.next().unwrap_or("").to_string(), local)
}

fn each_client_is_told_to_the_upstream(version: &str, protocol: &str, bind_extra: &str) {
    let hport = free_port();
    let _h = haproxy(hport, bind_extra);
    let (mg, port) = meshgate(hport, version, protocol);
    for (i, ip) in ["127.0.0.3", "127.0.0.4", "127.0.0.3"].iter().enumerate() {
        let (code, body, local) = curl_from(ip, port, &[]);
        assert_eq!(code, 200, "request {i}: {body}");
        assert_eq!(body, format!("ci={ip}:{local}"), "request {i}");
    }
    // One upstream connection per request: none was reused for another
    // downstream.
    assert_eq!(
        mg.metric(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "haproxy")]),
        3.0
    );
}

#[test]
fn http1_upstream_gets_a_v1_header_per_downstream() {
    each_client_is_told_to_the_upstream("V1", "http1", "");
}

#[test]
fn http2_upstream_gets_a_v2_header_per_downstream() {
    each_client_is_told_to_the_upstream("V2", "http2", "proto h2");
}

/// The same through xDS, in Envoy's YAML: the cluster's transport socket
/// `envoy.transport_sockets.upstream_proxy_protocol` (v2, over
/// raw_buffer) under an HTTP connection manager's route.
#[test]
fn from_xds_an_http_route_to_an_upstream_proxy_protocol_cluster() {
    use meshgate_tests::xds::*;
    let hport = free_port();
    let _h = haproxy(hport, "");
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: haproxy
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: haproxy
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {hport}}}}}}}
  transport_socket:
    name: envoy.transport_sockets.upstream_proxy_protocol
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
      config: {{version: V2}}
      transport_socket:
        name: envoy.transport_sockets.raw_buffer
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
"#
        )),
    );
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: http
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: http
        route_config:
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: haproxy}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    for ip in ["127.0.0.3", "127.0.0.4"] {
        let (code, body, local) = curl_from(ip, port, &[]);
        assert_eq!((code, body), (200, format!("ci={ip}:{local}")));
    }
    assert_eq!(
        mg.metric(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "haproxy")]),
        2.0
    );
}
