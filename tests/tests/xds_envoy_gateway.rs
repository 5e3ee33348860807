//! What Envoy Gateway sends, driving meshgate: the listener, HTTP
//! connection manager, route, cluster and endpoints of an HTTPRoute as
//! Envoy Gateway's translator emits them (the shape of its
//! `internal/xds/translator/testdata/out/xds-ir/http-route.*.yaml`, with
//! loopback addresses), written in Envoy's YAML form and parsed by Envoy's
//! generated protos (`tests/peers/envoy_any.py`), served by the
//! management server of `meshgate_tests::xds`. Asserts the push is ACKed,
//! traffic flows, and each field's effect: `headers_with_underscores_action`,
//! path normalisation, `http2_protocol_options` (the SETTINGS a client
//! sees), `scheme_header_transformation.match_upstream` (the `:scheme`
//! an HTTP/2 upstream sees), `dns_lookup_family`,
//! `per_connection_buffer_limit_bytes` on the listener and the clusters,
//! and `typed_extension_protocol_options` (`HttpProtocolOptions`:
//! `explicit_http_config.http2_protocol_options` to an h2c upstream,
//! `common_http_protocol_options.max_requests_per_connection` seen as new
//! upstream connections).

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn listener(port: u16, buffer_limit: bool) -> String {
    let limit = if buffer_limit {
        "  perConnectionBufferLimitBytes: 32768\n"
    } else {
        ""
    };
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: default/eg/http
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  defaultFilterChain:
    name: default/eg/http
    filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        commonHttpProtocolOptions:
          headersWithUnderscoresAction: REJECT_REQUEST
        http2ProtocolOptions:
          initialConnectionWindowSize: 1048576
          initialStreamWindowSize: 65536
          maxConcurrentStreams: 100
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
            suppressEnvoyHeaders: true
        mergeSlashes: true
        normalizePath: true
        pathWithEscapedSlashesAction: UNESCAPE_AND_REDIRECT
        rds:
          configSource:
            ads: {{}}
            resourceApiVersion: V3
          routeConfigName: default/eg/http
        schemeHeaderTransformation:
          matchUpstream: true
        serverHeaderTransformation: PASS_THROUGH
        statPrefix: http-{port}
        useRemoteAddress: true
  maxConnectionsToAcceptPerSocketEvent: 1
{limit}"#
    )
}

const ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: default/eg/http
  virtualHosts:
  - name: default/eg/http/www_example_com
    domains: ['*']
    routes:
    - name: httproute/default/backend/rule/0/match/0/www_example_com
      match:
        path: /foo/bar
        headers:
        - name: user
          stringMatch: {exact: jason}
        queryParameters:
        - name: debug
          stringMatch: {exact: "yes"}
      route: {cluster: httproute/default/backend/rule/0}
    - name: httproute/default/grpc/rule/0
      match: {prefix: /h2}
      route: {cluster: httproute/default/h2/rule/0}
    - name: httproute/default/dns/rule/0
      match: {prefix: /dns4}
      route: {cluster: dns-v4}
"#;

fn clusters(h2: std::net::SocketAddr, http1_port: u16) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: httproute/default/backend/rule/0
  type: EDS
  edsClusterConfig:
    edsConfig: {{ads: {{}}, resourceApiVersion: V3}}
    serviceName: httproute/default/backend/rule/0
  connectTimeout: 10s
  lbPolicy: LEAST_REQUEST
  commonLbConfig:
    localityWeightedLbConfig: {{}}
  dnsLookupFamily: V4_ONLY
  outlierDetection: {{}}
- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: httproute/default/h2/rule/0
  type: STATIC
  connectTimeout: 10s
  dnsLookupFamily: V4_ONLY
  perConnectionBufferLimitBytes: 32768
  typedExtensionProtocolOptions:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicitHttpConfig:
        http2ProtocolOptions:
          initialConnectionWindowSize: 1048576
          initialStreamWindowSize: 65536
  loadAssignment:
    clusterName: httproute/default/h2/rule/0
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: {h2ip}, portValue: {h2port}}}
        loadBalancingWeight: 1
      loadBalancingWeight: 1
      locality: {{}}
- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: dns-v4
  type: STRICT_DNS
  connectTimeout: 10s
  dnsLookupFamily: V4_ONLY
  perConnectionBufferLimitBytes: 32768
  typedExtensionProtocolOptions:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      commonHttpProtocolOptions:
        idleTimeout: 3600s
        maxRequestsPerConnection: 1
      explicitHttpConfig:
        httpProtocolOptions: {{}}
  loadAssignment:
    clusterName: dns-v4
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: localhost, portValue: {http1_port}}}
"#,
        h2ip = h2.ip(),
        h2port = h2.port(),
    )
}

fn endpoints(a: std::net::SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  clusterName: httproute/default/backend/rule/0
  endpoints:
  - lbEndpoints:
    - endpoint:
        address:
          socketAddress: {{address: {ip}, portValue: {port}}}
      loadBalancingWeight: 1
    loadBalancingWeight: 1
    locality:
      region: httproute/default/backend/rule/0/backend/0
"#,
        ip = a.ip(),
        port = a.port()
    )
}

/// One HTTP/1.1 request with extra header lines: (status, body).
fn request(port: u16, target: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: www.example.com\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

/// An HTTP/2 client (python h2) over cleartext: the server's SETTINGS,
/// then one GET with `:scheme https`, and the response body.
fn h2_settings_and_get(port: u16, path: &str) -> String {
    let script = r#"
import socket, sys, h2.connection, h2.events, h2.config
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(5)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection(); s.sendall(c.data_to_send())
c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "www.example.com"), (":path", path)], end_stream=True)
s.sendall(c.data_to_send())
body, settings, done = b"", {}, False
while not done:
    data = s.recv(65536)
    if not data: break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.RemoteSettingsChanged):
            for k, v in e.changed_settings.items(): settings[int(k)] = v.new_value
        elif isinstance(e, h2.events.DataReceived):
            body += e.data; c.acknowledge_received_data(len(e.data), e.stream_id)
        elif isinstance(e, h2.events.StreamEnded): done = True
    s.sendall(c.data_to_send())
print("max_concurrent_streams=%s" % settings.get(3))
print("initial_window_size=%s" % settings.get(4))
print(body.decode())
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string(), path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_envoy_gateway_http_route_push_is_acked_and_each_field_takes_effect() {
    let a = HttpBackend::start("a", Proto::Http1);
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let dns = HttpBackend::start("dns", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&clusters(h2.addr, dns.addr.port())),
    );
    mgmt.set(ENDPOINT, "1", envoy_yaml(&endpoints(a.addr)));
    mgmt.set(ROUTE, "1", envoy_yaml(ROUTES));
    // As Envoy Gateway sends it, with `perConnectionBufferLimitBytes`:
    // every resource is ACKed and the listener serves.
    mgmt.set(LISTENER, "1", envoy_yaml(&listener(port, true)));
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, ENDPOINT, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    let nonce = mgmt.wait_sent(ROUTE, "1");
    assert!(mgmt.wait_reply(ROUTE, &nonce).error_detail.is_none());
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let (status, body) = request(port, "/foo/bar?debug=yes", "user: jason\r\n");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend=a"), "{body}");
    // The route's header and query matches hold.
    assert_eq!(request(port, "/foo/bar?debug=no", "user: jason\r\n").0, 404);
    assert_eq!(request(port, "/foo/bar?debug=yes", "").0, 404);

    // normalizePath + mergeSlashes: the normalised path is routed.
    let (status, body) = request(port, "//foo/./bar?debug=yes", "user: jason\r\n");
    assert_eq!(status, 200, "{body}");

    // headersWithUnderscoresAction: REJECT_REQUEST.
    let (status, _) = request(
        port,
        "/foo/bar?debug=yes",
        "user: jason\r\nx_user: admin\r\n",
    );
    assert_eq!(status, 400);
    assert!(
        mg.metric(
            "meshgate_http_downstream_rq_refused_total",
            &[("reason", "header_with_underscore")]
        ) >= 1.0
    );

    // http2ProtocolOptions in the SETTINGS a client sees, and
    // schemeHeaderTransformation.matchUpstream: `:scheme https` from the
    // client reaches the cleartext HTTP/2 upstream as `http`.
    let out = h2_settings_and_get(port, "/h2");
    assert!(out.contains("max_concurrent_streams=100"), "{out}");
    assert!(out.contains("initial_window_size=65536"), "{out}");
    assert!(out.contains("backend=h2"), "{out}");
    assert!(out.contains("uri=http://www.example.com/h2"), "{out}");

    // dnsLookupFamily V4_ONLY on a STRICT_DNS cluster: `localhost`'s IPv4
    // address serves. maxRequestsPerConnection: 1 (its HttpProtocolOptions):
    // each request on a new upstream connection.
    for _ in 0..4 {
        let (status, body) = request(port, "/dns4", "");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("backend=dns"), "{body}");
    }
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_cx_total",
            &[("cluster", "dns-v4")]
        ),
        4.0
    );
}

#[test]
fn match_upstream_off_keeps_the_client_scheme_and_v6_only_finds_no_v4_endpoint() {
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let dns = HttpBackend::start("dns", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let c = clusters(h2.addr, dns.addr.port());
    mgmt.set(CLUSTER, "1", envoy_yaml(&c));
    mgmt.set(ENDPOINT, "1", envoy_yaml(&endpoints(dns.addr)));
    mgmt.set(ROUTE, "1", envoy_yaml(ROUTES));
    let l = listener(port, false).replace(
        "          matchUpstream: true\n",
        "          matchUpstream: false\n",
    );
    mgmt.set(LISTENER, "1", envoy_yaml(&l));
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let out = h2_settings_and_get(port, "/h2");
    assert!(out.contains("uri=https://www.example.com/h2"), "{out}");

    // V6_ONLY: `localhost` here has no IPv6 address (or one nothing
    // listens on): the cluster is refused (no address of the family) or
    // does not reach the IPv4-only backend.
    let v6 = c.replacen(
        "name: dns-v4\n  type: STRICT_DNS\n  connectTimeout: 10s\n  dnsLookupFamily: V4_ONLY",
        "name: dns-v4\n  type: STRICT_DNS\n  connectTimeout: 10s\n  dnsLookupFamily: V6_ONLY",
        1,
    );
    assert_ne!(v6, c, "the dns-v4 cluster's family was not found to change");
    mgmt.set(CLUSTER, "2", envoy_yaml(&v6));
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let r = mgmt.wait_reply(CLUSTER, &nonce);
    match r.error_detail {
        Some(e) => assert!(e.message.contains("dns_lookup_family"), "{}", e.message),
        None => {
            let (status, body) = request(port, "/dns4", "");
            assert_ne!(status, 200, "{body}");
        }
    }
}
