//! Envoy Gateway's real xDS output, pushed through a control plane that
//! shares no code with meshgate (`tests/peers/ads_server.py`, grpcio and
//! Envoy's generated protos): the resources below follow Envoy Gateway's
//! translator outputs field for field (`egctl x translate --to xds` of an
//! HTTPRoute in Envoy Gateway v1.9, and its
//! `internal/xds/translator/testdata/out/xds-ir/http-route*.yaml`: the
//! listener, `http-route-request-headers`, `http-route-rewrite-url-prefix`),
//! with loopback addresses, ports bound to 0 and header names the test
//! backend echoes. Each push is ACKed and traffic flows, and the fields
//! meshgate used to NACK take effect: `ignorePortInHostMatching`, virtual
//! host and route `metadata`, `pathSeparatedPrefix`, a header match on
//! `:authority`, `prefixRewrite` after a separated prefix, and
//! `keepEmptyValue` with `appendAction` on request headers.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::pyads::PyAds;
use meshgate_tests::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Envoy Gateway's HTTP listener (`http-route.listeners.yaml`), RDS
/// route `route`.
fn listener(port: u16, route: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  address:
    socketAddress:
      address: 127.0.0.1
      portValue: {port}
  defaultFilterChain:
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
          routeConfigName: {route}
        schemeHeaderTransformation:
          matchUpstream: true
        serverHeaderTransformation: PASS_THROUGH
        statPrefix: http-{port}
        useRemoteAddress: true
    name: {route}
  maxConnectionsToAcceptPerSocketEvent: 1
  name: {route}
  perConnectionBufferLimitBytes: 32768
"#
    )
}

/// An Envoy Gateway cluster (`http-route.clusters.yaml`), endpoints from
/// EDS.
fn cluster(name: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  commonLbConfig:
    localityWeightedLbConfig: {{}}
  connectTimeout: 10s
  dnsLookupFamily: V4_ONLY
  edsClusterConfig:
    edsConfig:
      ads: {{}}
      resourceApiVersion: V3
    serviceName: {name}
  lbPolicy: LEAST_REQUEST
  name: {name}
  outlierDetection: {{}}
  perConnectionBufferLimitBytes: 32768
  type: EDS
"#
    )
}

fn endpoints(name: &str, a: SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  clusterName: {name}
  endpoints:
  - lbEndpoints:
    - endpoint:
        address:
          socketAddress:
            address: {ip}
            portValue: {port}
      loadBalancingWeight: 1
    loadBalancingWeight: 1
    locality:
      region: {name}/backend/0
"#,
        ip = a.ip(),
        port = a.port()
    )
}

/// What `egctl x translate --to xds -t route` prints for an HTTPRoute
/// with hostname `www.example.com` (Envoy Gateway v1.9).
const EGCTL_ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  ignorePortInHostMatching: true
  name: default/eg/http
  virtualHosts:
  - domains:
    - www.example.com
    metadata:
      filterMetadata:
        envoy-gateway:
          resources:
          - kind: Gateway
            name: eg
            namespace: default
            sectionName: http
    name: default/eg/http/www_example_com
    routes:
    - match:
        prefix: /
      metadata:
        filterMetadata:
          envoy-gateway:
            resources:
            - kind: HTTPRoute
              name: backend
              namespace: default
      name: httproute/default/backend/rule/0/match/0/www_example_com
      route:
        cluster: httproute/default/backend/rule/0
        upgradeConfigs:
        - upgradeType: websocket
"#;

/// `http-route-rewrite-url-prefix` and `http-route-request-headers` in one
/// route configuration (header names prefixed `x-echo-`, which the test
/// backend sends back).
const FILTER_ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  ignorePortInHostMatching: true
  name: first-listener
  virtualHosts:
  - domains:
    - '*'
    name: first-listener
    routes:
    - match:
        headers:
        - name: :authority
          stringMatch:
            exact: gateway.envoyproxy.io
        pathSeparatedPrefix: /origin
      name: rewrite-route
      route:
        cluster: rewrite-route
        prefixRewrite: /rewrite
    - match:
        prefix: /
      name: request-header-route
      requestHeadersToAdd:
      - header:
          key: x-echo-some-header-multi-value
          value: some-value,some-additional-value
      - header:
          key: x-echo-some-header
          value: some-value
      - appendAction: OVERWRITE_IF_EXISTS_OR_ADD
        header:
          key: x-echo-some-header3
          value: some-value
      - appendAction: OVERWRITE_IF_EXISTS_OR_ADD
        header:
          key: x-echo-empty-header
        keepEmptyValue: true
      - appendAction: OVERWRITE_IF_EXISTS_OR_ADD
        header:
          key: x-echo-dropped-empty-header
      requestHeadersToRemove:
      - x-echo-some-header5
      route:
        cluster: request-header-route-dest
        upgradeConfigs:
        - upgradeType: websocket
"#;

/// One curl GET: status, response headers, body.
fn get(
    port: u16,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, BTreeMap<String, String>, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let host = format!("Host: {host}");
    let mut args = vec!["-H", &host];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The `key=` line of a backend's body.
fn line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

#[test]
fn the_egctl_route_output_is_acked_and_a_host_with_port_finds_its_virtual_host() {
    const C: &str = "httproute/default/backend/rule/0";
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &cluster(C));
    ads.set(ENDPOINT, "1", &endpoints(C, a.addr));
    ads.set(ROUTE, "1", EGCTL_ROUTES);
    ads.set(LISTENER, "1", &listener(port, "default/eg/http"));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    // The virtual host's and the route's metadata are kept.
    let dump = mg.config_dump().to_string();
    assert!(
        dump.contains(r#""envoy-gateway":{"resources":[{"kind":"Gateway""#),
        "{dump}"
    );
    assert!(
        dump.contains(r#""envoy-gateway":{"resources":[{"kind":"HTTPRoute""#),
        "{dump}"
    );
    // The port a client puts in Host does not hide the virtual host.
    let host = format!("www.example.com:{port}");
    wait_until("the route serves", || get(port, &host, "/", &[]).0 == 200);
    let (status, _, body) = get(port, &host, "/x", &[]);
    assert_eq!((status, line(&body, "backend")), (200, "a"), "{body}");
    assert_eq!(line(&body, "host"), host);
    assert_eq!(get(port, "www.example.com", "/", &[]).0, 200);
    // Another hostname has no virtual host.
    assert_eq!(get(port, "api.example.com:80", "/", &[]).0, 404);
}

#[test]
fn the_rewrite_and_request_header_routes_are_acked_and_take_effect() {
    let rw = HttpBackend::start("rewrite", Proto::Http1);
    let hd = HttpBackend::start("headers", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(
        CLUSTER,
        "1",
        &(cluster("rewrite-route") + &cluster("request-header-route-dest")),
    );
    ads.set(
        ENDPOINT,
        "1",
        &(endpoints("rewrite-route", rw.addr) + &endpoints("request-header-route-dest", hd.addr)),
    );
    ads.set(ROUTE, "1", FILTER_ROUTES);
    ads.set(LISTENER, "1", &listener(port, "first-listener"));
    let _mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    wait_until("the routes serve", || get(port, "x", "/", &[]).0 == 200);

    // pathSeparatedPrefix on the :authority, then prefixRewrite.
    let (status, _, body) = get(port, "gateway.envoyproxy.io", "/origin/a?q=1", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(line(&body, "backend"), "rewrite");
    assert_eq!(line(&body, "uri"), "/rewrite/a?q=1");
    let (_, _, body) = get(port, "gateway.envoyproxy.io", "/origin", &[]);
    assert_eq!(line(&body, "backend"), "rewrite", "{body}");
    assert_eq!(line(&body, "uri"), "/rewrite");
    // Not a whole segment, another authority, or the authority with a
    // port (as in Envoy, `ignorePortInHostMatching` is about domains, not
    // header matches): the next route.
    for (host, path) in [
        ("gateway.envoyproxy.io", "/originals"),
        ("other.envoyproxy.io", "/origin/a"),
        ("gateway.envoyproxy.io:8080", "/origin"),
    ] {
        let (_, _, body) = get(port, host, path, &[]);
        assert_eq!(line(&body, "backend"), "headers", "{host}{path}: {body}");
    }

    // Request headers: added, appended, overwritten, removed; an empty
    // value only with keepEmptyValue.
    let (status, h, body) = get(
        port,
        "x",
        "/",
        &[
            "-H",
            "x-echo-some-header3: from-client",
            "-H",
            "x-echo-some-header5: gone",
            "-H",
            "x-echo-some-header: from-client",
        ],
    );
    assert_eq!((status, line(&body, "backend")), (200, "headers"), "{body}");
    assert_eq!(
        h.get("x-echo-some-header-multi-value").map(String::as_str),
        Some("some-value,some-additional-value")
    );
    assert_eq!(
        h.get("x-echo-some-header3").map(String::as_str),
        Some("some-value")
    );
    assert_eq!(h.get("x-echo-empty-header").map(String::as_str), Some(""));
    assert!(!h.contains_key("x-echo-dropped-empty-header"), "{h:?}");
    assert!(!h.contains_key("x-echo-some-header5"), "{h:?}");
    // Appended to the client's value (curl's map keeps the last one).
    assert_eq!(
        h.get("x-echo-some-header").map(String::as_str),
        Some("some-value")
    );
}
