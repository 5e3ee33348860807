//! A cluster CDS removes while listeners still name it, as Envoy treats
//! it, through the grpcio control plane (`tests/peers/ads_server.py`), on
//! state-of-the-world ADS and on delta xDS: the cluster is gone at once;
//! a request in flight on it finishes; new requests routed to it get the
//! route's `cluster_not_found_response_code` (503 by default, `NOT_FOUND`
//! where the route says so; flag `NC` in the access log; gRPC clients
//! `UNAVAILABLE`) while the listener's other routes serve; `tcp_proxy`
//! closes new connections and counts them while an open one goes on;
//! CDS adding the cluster again serves it. The same for a Bolt (SOFA
//! RPC) listener from xDS (`generic_proxy` with meshgate's Bolt codec)
//! and real sofa-rpc-node consumers and providers: calls to the removed
//! cluster get Bolt's error response "cluster not found", counted, on a
//! connection that stays open; CDS adding it again serves them.
//!
//! Also HTTP/3 upstream clusters defined by xDS (`QuicUpstreamTransport`
//! plus `explicit_http_config.http3_protocol_options`): ACKed, and curl
//! through meshgate reaches Caddy over HTTP/3; invalid combinations are
//! NACKed by name.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::caddy::Caddy;
use meshgate_tests::pyads::PyAds;
use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::xds::{CLUSTER, LISTENER, ROUTE, request, wait_for};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A STATIC cluster `name` on `addr`.
fn static_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connectTimeout: 1s
  loadAssignment:
    clusterName: {name}
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: {ip}, portValue: {port}}}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// Three listeners naming cluster `c-a`: `web` (routes from RDS `r1`, an
/// access log to `log`), `inline` (an inline, validating route
/// configuration; its `/a` route answers `NOT_FOUND` when the cluster is
/// not there) and `tcp` (tcp_proxy).
fn listeners(web: u16, inline: u16, tcp: u16, log: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: web
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {web}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        statPrefix: web
        rds:
          configSource: {{ads: {{}}, resourceApiVersion: V3}}
          routeConfigName: r1
        accessLog:
        - name: envoy.access_loggers.file
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: {log}
            logFormat:
              textFormatSource:
                inlineString: "%REQ(:PATH)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%\n"
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: inline
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {inline}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        statPrefix: inline
        routeConfig:
          name: inline
          virtualHosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /a}}
              route: {{cluster: c-a, clusterNotFoundResponseCode: NOT_FOUND}}
            - match: {{prefix: /}}
              route: {{cluster: svc}}
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: tcp
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {tcp}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        statPrefix: tcp
        cluster: c-a
"#
    )
}

/// Route `r1`: `/a` to `c-a`, the rest to `svc`.
const ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /a}
      route: {cluster: c-a}
    - match: {prefix: /}
      route: {cluster: svc}
"#;

/// One curl request: status, headers, body.
fn curl_get(port: u16, path: &str, extra: &[&str]) -> (u16, String, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&url);
    let (status, headers, body) = meshgate_tests::curl::curl(&args);
    (status, format!("{headers:?}"), body)
}

/// A new connection through the tcp_proxy listener: what one HTTP/1.0
/// request on it gets back (empty: closed without a byte).
fn tcp_once(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /t HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn removal_during_traffic(delta: bool) {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let (web, inline, tcp) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("web.log");
    let both = static_cluster("c-a", a.addr) + &static_cluster("svc", b.addr);
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &both);
    ads.set(ROUTE, "1", ROUTES);
    ads.set(
        LISTENER,
        "1",
        &listeners(web, inline, tcp, &log.display().to_string()),
    );
    let mg = Meshgate::start(&if delta {
        ads.bootstrap_delta()
    } else {
        ads.bootstrap()
    });
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    for p in [web, inline, tcp] {
        wait_listening(([127, 0, 0, 1], p).into());
    }
    wait_for(web, "/a", "backend=a");
    wait_for(inline, "/a", "backend=a");
    assert!(tcp_once(tcp).contains("backend=a"));
    // A keep-alive connection through tcp_proxy, open across the removal.
    let mut open = None;
    assert_eq!(request(&mut open, tcp, "/t").as_deref(), Some("backend=a"));

    // A request in flight on c-a (its backend answers /slow after 3 s)
    // when CDS removes it.
    let hits = a.hits();
    let in_flight = std::thread::spawn(move || curl_get(web, "/a/slow", &[]));
    wait_until("the slow request at the backend", || a.hits() > hits);
    ads.remove(CLUSTER, "2", &["c-a"]);
    ads.wait_ack(CLUSTER, "2");
    assert!(
        !in_flight.is_finished(),
        "the request finished before the removal was applied"
    );

    // New requests to it: cluster not found, the rest serves.
    let (status, _, body) = curl_get(web, "/a", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster not found"), "{body}");
    assert_eq!(curl_get(web, "/", &[]).0, 200);
    let (status, headers, _) = curl_get(web, "/a", &["-H", "content-type: application/grpc"]);
    assert_eq!(status, 503);
    assert!(headers.contains("\"grpc-status\": \"14\""), "{headers}");
    // The inline route says NOT_FOUND.
    let (status, _, body) = curl_get(inline, "/a", &[]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("cluster not found"), "{body}");
    assert_eq!(curl_get(inline, "/", &[]).0, 200);
    // tcp_proxy: a new connection is closed without a byte and counted;
    // the open one goes on to the removed cluster's endpoint.
    assert_eq!(tcp_once(tcp), "");
    mg.wait_metric(
        "meshgate_tcp_proxy_cx_no_route_total",
        &[("listener", "tcp"), ("cluster", "c-a")],
        |v| v >= 1.0,
    );
    assert_eq!(request(&mut open, tcp, "/t").as_deref(), Some("backend=a"));
    // The request in flight finished on the removed cluster.
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend=a"), "{body}");
    // Gone from /clusters, as in Envoy.
    let (_, listed) = mg.admin_get("/clusters");
    assert!(!listed.contains("c-a::"), "{listed}");
    // The access log: NC for the refused requests, none for the rest.
    wait_until("the access log has the refusals", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.lines().filter(|l| l.ends_with("|NC")).count() >= 2)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l == "/a/slow|200|-"), "{text}");
    assert!(text.lines().any(|l| l == "/a|503|NC"), "{text}");
    assert!(text.lines().any(|l| l == "/|200|-"), "{text}");

    // CDS adds it again: every listener serves it.
    ads.set(CLUSTER, "3", &both);
    ads.wait_ack(CLUSTER, "3");
    wait_for(web, "/a", "backend=a");
    wait_for(inline, "/a", "backend=a");
    wait_until("tcp_proxy reaches it again", || {
        tcp_once(tcp).contains("backend=a")
    });
}

#[test]
fn a_cluster_removed_by_cds_is_not_found_while_in_flight_requests_finish() {
    removal_during_traffic(false);
}

#[test]
fn a_cluster_removed_by_delta_xds_is_not_found_while_in_flight_requests_finish() {
    removal_during_traffic(true);
}

const GP: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy";

/// A Bolt listener (Envoy's `generic_proxy` with meshgate's
/// `meshgate.codecs.Bolt` codec): service `com.meshgate.Echo` to cluster
/// `bolt-x`, every other service to `bolt-y`.
fn bolt_listener(port: u16) -> String {
    let action = |cluster: &str| {
        format!(
            "{{action: {{name: route, typedConfig: {{'@type': '{GP}.action.v3.RouteAction', name: to-{cluster}, cluster: {cluster}}}}}}}"
        )
    };
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: bolt
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.generic_proxy
      typedConfig:
        '@type': {GP}.v3.GenericProxy
        statPrefix: bolt
        codecConfig:
          name: meshgate.codecs.bolt
          typedConfig:
            '@type': type.googleapis.com/xds.type.v3.TypedStruct
            typeUrl: type.googleapis.com/meshgate.codecs.Bolt
            value: {{}}
        filters:
        - name: envoy.filters.generic.router
          typedConfig:
            '@type': {GP}.router.v3.Router
        routeConfig:
          name: bolt
          routes:
            matcherList:
              matchers:
              - predicate:
                  singlePredicate:
                    input: {{name: service, typedConfig: {{'@type': '{GP}.matcher.v3.ServiceMatchInput'}}}}
                    valueMatch: {{exact: com.meshgate.Echo}}
                onMatch: {to_x}
            onNoMatch: {to_y}
"#,
        to_x = action("bolt-x"),
        to_y = action("bolt-y"),
    )
}

/// `n` Bolt calls of `iface`.echo on one sofa-rpc-node connection, one
/// at a time; each answered by provider `from`.
fn bolt_calls_from(port: u16, iface: &str, n: u32, from: &str) {
    let r = node_call(
        "bolt", port, iface, "echo", r#"["x"]"#, n, 1, 3000, "1.0", "",
    );
    assert!(r.errors.is_empty(), "{iface}: {:?}", r.errors);
    assert_eq!(
        r.from.get(from),
        Some(&u64::from(n)),
        "{iface}: {:?}",
        r.from
    );
}

fn cluster_not_found(mg: &Meshgate) -> f64 {
    mg.metric(
        "meshgate_downstream_rq_local_reply_total",
        &[("reason", "cluster_not_found")],
    )
}

/// A Bolt listener from xDS routes to cluster `bolt-x`; CDS removes it:
/// its calls are answered with Bolt's error response naming "cluster not
/// found" (as Dubbo's are, tests/tests/xds_dubbo_proxy.rs), on a
/// connection that stays open for the next call, and counted; the other
/// service's calls serve throughout; CDS adding it again serves it.
fn bolt_removal(delta: bool) {
    let x = Provider::start("bolt", "x");
    let y = Provider::start("bolt", "y");
    let port = free_port();
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let both = static_cluster("bolt-x", addr(x.port)) + &static_cluster("bolt-y", addr(y.port));
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &both);
    ads.set(LISTENER, "1", &bolt_listener(port));
    let mg = Meshgate::start(&if delta {
        ads.bootstrap_delta()
    } else {
        ads.bootstrap()
    });
    for t in [CLUSTER, LISTENER] {
        ads.wait_ack(t, "1");
    }
    wait_listening(addr(port));
    bolt_calls_from(port, ECHO, 4, "x");
    bolt_calls_from(port, OTHER, 2, "y");
    assert_eq!(cluster_not_found(&mg), 0.0);

    ads.remove(CLUSTER, "2", &["bolt-x"]);
    ads.wait_ack(CLUSTER, "2");
    // Three calls one after another on one connection: each gets Bolt's
    // error response (not a hang: well within the client's 3 s timeout;
    // not a close: the next call on the same connection is answered too).
    let started = std::time::Instant::now();
    let r = node_call(
        "bolt", port, ECHO, "echo", r#"["x"]"#, 3, 1, 3000, "1.0", "",
    );
    assert!(started.elapsed() < Duration::from_secs(6), "{r:?}");
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.len(), 3, "{r:?}");
    for e in &r.errors {
        assert!(e.contains("cluster not found"), "{:?}", r.errors);
    }
    mg.wait_metric(
        "meshgate_downstream_rq_local_reply_total",
        &[("reason", "cluster_not_found")],
        |v| v >= 3.0,
    );
    // The other route serves.
    bolt_calls_from(port, OTHER, 2, "y");
    let (_, listed) = mg.admin_get("/clusters");
    assert!(!listed.contains("bolt-x::"), "{listed}");

    // CDS adds it again: served.
    ads.set(CLUSTER, "3", &both);
    ads.wait_ack(CLUSTER, "3");
    bolt_calls_from(port, ECHO, 4, "x");
    assert_eq!(cluster_not_found(&mg), 3.0);
}

const ECHO: &str = "com.meshgate.Echo";
const OTHER: &str = "com.meshgate.Other";

#[test]
fn a_bolt_cluster_removed_by_cds_answers_cluster_not_found_until_it_returns() {
    bolt_removal(false);
}

#[test]
fn a_bolt_cluster_removed_by_delta_xds_answers_cluster_not_found_until_it_returns() {
    bolt_removal(true);
}

/// An HTTP/3 cluster (`envoy.transport_sockets.quic` wrapping the
/// `UpstreamTlsContext`; `explicit_http_config.http3_protocol_options`)
/// named `caddy`; `socket`: replaces the transport socket's YAML,
/// `protocol`: the extension's `explicit_http_config` YAML.
fn h3_cluster(caddy: u16, socket: Option<&str>, protocol: &str) -> String {
    let ca = workspace().join("examples/certs/ca.pem");
    let quic = format!(
        r#"  transportSocket:
    name: envoy.transport_sockets.quic
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport
      upstreamTlsContext:
        sni: localhost
        commonTlsContext:
          validationContext:
            trustedCa: {{filename: {ca}}}
"#,
        ca = ca.display()
    );
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: caddy
  type: STATIC
  connectTimeout: 2s
{socket}  typedExtensionProtocolOptions:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicitHttpConfig:
{protocol}  loadAssignment:
    clusterName: caddy
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: 127.0.0.1, portValue: {caddy}}}
"#,
        socket = socket.unwrap_or(&quic),
    )
}

const H3: &str =
    "        http3ProtocolOptions:\n          quicProtocolOptions: {maxConcurrentStreams: 50}\n";

/// A listener whose inline route sends everything to `caddy` with the
/// host Caddy serves.
fn h3_listener(port: u16, caddy: u16) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: web
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        statPrefix: web
        routeConfig:
          name: inline
          virtualHosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: caddy, hostRewriteLiteral: 'localhost:{caddy}'}}
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

#[test]
fn an_http3_cluster_from_xds_reaches_caddy_over_http3_and_bad_combinations_are_nacked() {
    let caddy_port = free_port();
    let _caddy = Caddy::tagged(caddy_port, "caddy");
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &h3_cluster(caddy_port, None, H3));
    ads.set(LISTENER, "1", &h3_listener(port, caddy_port));
    let mg = Meshgate::start(&ads.bootstrap());
    ads.wait_ack(CLUSTER, "1");
    ads.wait_ack(LISTENER, "1");
    wait_listening(([127, 0, 0, 1], port).into());
    // Caddy tells the protocol it was asked in.
    let mut got = (0, String::new(), String::new());
    wait_until("curl through meshgate reaches Caddy over HTTP/3", || {
        got = curl_get(port, "/x", &[]);
        got.0 == 200
    });
    assert!(got.2.contains("caddy proto=HTTP/3.0"), "{got:?}");
    let dumped = mg.config_dump()["config"]["clusters"].to_string();
    assert!(dumped.contains("\"protocol\":\"http3\""), "{dumped}");
    assert!(dumped.contains("\"max_concurrent_streams\":50"), "{dumped}");

    // HTTP/3 without the QUIC socket (a TLS one), the QUIC socket with
    // HTTP/2, a QUIC option meshgate does not apply, HTTP/3 chosen by
    // auto_config: NACKed by name, HTTP/3 keeps serving.
    let ca = workspace().join("examples/certs/ca.pem");
    let tls_socket = format!(
        "  transportSocket:\n    name: envoy.transport_sockets.tls\n    typedConfig:\n      '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n      sni: localhost\n      commonTlsContext:\n        validationContext:\n          trustedCa: {{filename: {}}}\n",
        ca.display()
    );
    let bad = [
        (
            h3_cluster(caddy_port, Some(&tls_socket), H3),
            "explicit_http_config.http3_protocol_options",
        ),
        (
            h3_cluster(caddy_port, None, "        http2ProtocolOptions: {}\n"),
            "transport_socket",
        ),
        (
            h3_cluster(
                caddy_port,
                None,
                "        http3ProtocolOptions:\n          quicProtocolOptions: {idleNetworkTimeout: 5s}\n",
            ),
            "quic_protocol_options.idle_network_timeout",
        ),
        (
            h3_cluster(caddy_port, None, "        http3ProtocolOptions: {}\n")
                .replace("      explicitHttpConfig:\n", "      autoConfig:\n"),
            "auto_config.http3_protocol_options",
        ),
    ];
    for (i, (yaml, field)) in bad.iter().enumerate() {
        let v = format!("bad{i}");
        ads.set(CLUSTER, &v, yaml);
        let e = ads.wait_nack(CLUSTER, &v);
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains("caddy"), "{e}");
    }
    let (status, _, body) = curl_get(port, "/y", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("caddy proto=HTTP/3.0"), "{body}");
}
