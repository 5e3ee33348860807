//! xDS end to end against a control plane that shares no code with
//! meshgate: `tests/peers/ads_server.py` (grpcio + Envoy's generated
//! Python protos, PyPI xds-protos) serves the resources, written in
//! Envoy's YAML form, over ADS (state of the world) and delta xDS; the
//! real binary takes them, ACKs or NACKs, and serves traffic to local
//! backends. Covers an Envoy Gateway-shaped push (listener, HCM, RDS, CDS,
//! EDS), an endpoint move and removals, delta subscriptions, updates and
//! removals, hostile pushes (unknown fields at the top and in a nested
//! typed config, duplicate names, a wrong type URL for a resource and for
//! a typed config) NACKed by name while the old config serves, a delta
//! stream re-opened on a restarted server, and health checks and outlier
//! detection pushed through CDS.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::flaky::Flaky;
use meshgate_tests::pyads::PyAds;
use meshgate_tests::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, get, wait_for};
use meshgate_tests::*;
use std::net::{SocketAddr, TcpStream};

const EG_CLUSTER: &str = "httproute/default/backend/rule/0";
const EG_LISTENER: &str = "default/eg/http";

/// The listener and HTTP connection manager Envoy Gateway emits for an
/// HTTPRoute (as in tests/tests/xds_envoy_gateway.rs), routes from RDS.
fn eg_listener(port: u16) -> String {
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
        serverHeaderTransformation: PASS_THROUGH
        statPrefix: http-{port}
        useRemoteAddress: true
  maxConnectionsToAcceptPerSocketEvent: 1
  perConnectionBufferLimitBytes: 32768
"#
    )
}

/// Envoy Gateway's RouteConfiguration for the HTTPRoute of hostname
/// `www.example.com`: `ignorePortInHostMatching` set, as on all of them.
const EG_ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: default/eg/http
  ignorePortInHostMatching: true
  virtualHosts:
  - name: default/eg/http/www_example_com
    domains: [www.example.com]
    routes:
    - name: httproute/default/backend/rule/0/match/0/www_example_com
      match: {prefix: /}
      route: {cluster: httproute/default/backend/rule/0}
"#;

const EG_CLUSTERS: &str = r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: httproute/default/backend/rule/0
  type: EDS
  edsClusterConfig:
    edsConfig: {ads: {}, resourceApiVersion: V3}
    serviceName: httproute/default/backend/rule/0
  connectTimeout: 10s
  lbPolicy: LEAST_REQUEST
  commonLbConfig:
    localityWeightedLbConfig: {}
  dnsLookupFamily: V4_ONLY
  outlierDetection: {}
  perConnectionBufferLimitBytes: 32768
"#;

fn eg_endpoints(a: SocketAddr) -> String {
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

/// A listener whose HCM takes route `r1` from RDS; `router_unknown`: the
/// router's typed config carries this field number Envoy's protos lack.
fn plain_listener(port: u16, router_unknown: Option<u32>) -> String {
    let unknown = router_unknown
        .map(|n| format!("            '@unknownField': {n}\n"))
        .unwrap_or_default();
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
        rds:
          configSource: {{ads: {{}}, resourceApiVersion: V3}}
          routeConfigName: r1
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{unknown}"#
    )
}

/// Route `r1`: `/a` to cluster `c-a`, `/b` to `c-b`, the rest to `svc`.
const ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /a}
      route: {cluster: c-a}
    - match: {prefix: /b}
      route: {cluster: c-b}
    - match: {prefix: /}
      route: {cluster: svc}
"#;

/// A STATIC cluster `name` on `eps`; `extra`: more Cluster fields (YAML,
/// two spaces in).
fn static_cluster(name: &str, eps: &[SocketAddr], extra: &str) -> String {
    let lb: String = eps
        .iter()
        .map(|a| {
            format!(
                "      - endpoint:\n          address:\n            socketAddress: {{address: {}, portValue: {}}}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connectTimeout: 1s
{extra}  loadAssignment:
    clusterName: {name}
    endpoints:
    - lbEndpoints:
{lb}"#
    )
}

/// One curl GET with `Host: host`: the status and the `backend=` line of
/// the body.
fn via_host(port: u16, host: &str, path: &str) -> (u16, String) {
    let (status, _, body) = meshgate_tests::curl::curl(&[
        "-H",
        &format!("Host: {host}"),
        &format!("http://127.0.0.1:{port}{path}"),
    ]);
    let backend = body.lines().find(|l| l.starts_with("backend="));
    (status, backend.unwrap_or_default().to_string())
}

/// Waits until `Host: host` gets `want` from a backend.
fn wait_host(port: u16, host: &str, want: &str) {
    let mut got = (0, String::new());
    wait_until(&format!("{host} answered by {want}"), || {
        got = via_host(port, host, "/");
        got == (200, want.to_string())
    });
}

fn status(port: u16, path: &str) -> u16 {
    http_get(([127, 0, 0, 1], port).into(), path)
        .map(|r| r.0)
        .unwrap_or(0)
}

/// The clusters `/clusters` lists.
fn clusters_listed(mg: &Meshgate) -> Vec<String> {
    let (_, body) = mg.admin_get("/clusters");
    let mut names: Vec<String> = body
        .lines()
        .filter_map(|l| l.split("::").next())
        .map(str::to_string)
        .collect();
    names.dedup();
    names
}

/// The `health_flags` of endpoint `e` of `cluster` in `/clusters`.
fn flags(mg: &Meshgate, cluster: &str, e: SocketAddr) -> String {
    let (_, body) = mg.admin_get("/clusters");
    let key = format!("{cluster}::{e}::health_flags::");
    body.lines()
        .find_map(|l| l.strip_prefix(&key).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn an_envoy_gateway_push_is_acked_serves_follows_an_endpoint_move_and_removals() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", EG_CLUSTERS);
    ads.set(ENDPOINT, "1", &eg_endpoints(a.addr));
    ads.set(ROUTE, "1", EG_ROUTES);
    ads.set(LISTENER, "1", &eg_listener(port));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    // EDS and RDS are asked for by name, CDS and LDS as wildcards.
    let reqs = ads.requests();
    let names_of = |t: &str| {
        reqs.iter()
            .filter(|r| r.type_url == t)
            .map(|r| r.names.clone())
            .next_back()
            .unwrap()
    };
    assert_eq!(names_of(ENDPOINT), vec![EG_CLUSTER.to_string()]);
    assert_eq!(names_of(ROUTE), vec![EG_LISTENER.to_string()]);
    assert!(names_of(CLUSTER).is_empty());
    assert!(names_of(LISTENER).is_empty());
    // The stream's first request names the bootstrap's node.
    assert_eq!(reqs[0].node.as_deref(), Some("test-node"), "{:?}", reqs[0]);
    assert!(
        mg.config_dump()["dynamic"]["version"]
            .as_str()
            .is_some_and(|v| ["lds=1", "rds=1", "cds=1", "eds=1"]
                .iter()
                .all(|x| v.contains(x))),
        "{}",
        mg.config_dump()["dynamic"]
    );
    wait_listening(([127, 0, 0, 1], port).into());
    // `ignorePortInHostMatching`: the host with the listener's port
    // matches the domain `www.example.com`.
    let host = format!("www.example.com:{port}");
    wait_host(port, &host, "backend=a");
    assert_eq!(
        via_host(port, "www.example.com", "/"),
        (200, "backend=a".into())
    );
    assert_eq!(via_host(port, "other.example.com", "/").0, 404);

    // The endpoint moves: traffic follows, none reaches a afterwards.
    ads.set_acked(ENDPOINT, "2", &eg_endpoints(b.addr));
    wait_host(port, &host, "backend=b");
    wait_until("/config_dump shows eds=2", || {
        mg.config_dump()["dynamic"]["version"]
            .as_str()
            .is_some_and(|v| v.contains("eds=2"))
    });
    let hits_a = a.hits.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(via_host(port, &host, "/"), (200, "backend=b".into()));
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), hits_a);

    // The cluster removed while the listener still routes to it: ACKed,
    // gone at once as in Envoy; its route answers 503 (cluster not
    // found), the listener's other virtual hosts still answer.
    ads.remove(CLUSTER, "3", &[EG_CLUSTER]);
    ads.wait_ack(CLUSTER, "3");
    assert_eq!(via_host(port, &host, "/").0, 503);
    assert_eq!(via_host(port, "other.example.com", "/").0, 404);
    assert!(!clusters_listed(&mg).contains(&EG_CLUSTER.to_string()));

    // The listener removed: its port stops accepting.
    ads.remove(LISTENER, "4", &[EG_LISTENER]);
    ads.wait_ack(LISTENER, "4");
    wait_until("the listener closed", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
}

/// `ignore_port_in_host_matching`, as Envoy: set, `Host: name:port`
/// matches the domain `name`; unset (Envoy's false), it does not, while
/// `Host: name` still does.
#[test]
fn ignore_port_in_host_matching_decides_whether_a_host_with_port_matches() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", EG_CLUSTERS);
    ads.set(ENDPOINT, "1", &eg_endpoints(a.addr));
    ads.set(ROUTE, "1", EG_ROUTES);
    ads.set(LISTENER, "1", &eg_listener(port));
    let _mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    let with_port = format!("www.example.com:{port}");
    wait_host(port, &with_port, "backend=a");
    assert_eq!(
        via_host(port, "WWW.example.com:8080", "/"),
        (200, "backend=a".into())
    );

    // The same RouteConfiguration without the field.
    let strict = EG_ROUTES.replace("  ignorePortInHostMatching: true\n", "");
    assert_ne!(strict, EG_ROUTES);
    ads.set_acked(ROUTE, "2", &strict);
    wait_until("a host with a port no longer matches", || {
        via_host(port, &with_port, "/").0 == 404
    });
    assert_eq!(
        via_host(port, "www.example.com", "/"),
        (200, "backend=a".into())
    );

    // A domain naming the port matches it again without the field.
    let with_port_domain = strict.replace(
        "domains: [www.example.com]",
        &format!("domains: [www.example.com, 'www.example.com:{port}']"),
    );
    ads.set_acked(ROUTE, "3", &with_port_domain);
    wait_host(port, &with_port, "backend=a");
    assert_eq!(via_host(port, "www.example.com:8080", "/").0, 404);
}

#[test]
fn delta_xds_subscribes_updates_one_cluster_and_removes_one() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let c = HttpBackend::start("c", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    let both = |b_addr: SocketAddr| {
        static_cluster("c-a", &[a.addr], "") + &static_cluster("c-b", &[b_addr], "")
    };
    ads.set(CLUSTER, "1", &both(b.addr));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    let mg = Meshgate::start(&ads.bootstrap_delta());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    // Delta streams only: the route subscribed by name, the clusters as a
    // wildcard, both clusters in the first response.
    let reqs = ads.requests();
    assert!(reqs.iter().all(|r| r.api == "delta"), "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r.type_url == ROUTE && r.names == vec!["r1".to_string()]),
        "{reqs:?}"
    );
    let first = ads.wait_sent(CLUSTER, "1");
    assert_eq!(first.resources, vec!["c-a", "c-b"]);
    wait_listening(([127, 0, 0, 1], port).into());
    wait_for(port, "/a", "backend=a");
    wait_for(port, "/b", "backend=b");

    // One cluster changes: only it is sent, and traffic moves.
    ads.set(CLUSTER, "2", &both(c.addr));
    let update = ads.wait_sent(CLUSTER, "2");
    assert_eq!(update.resources, vec!["c-b"]);
    assert!(update.removed.is_empty(), "{update:?}");
    ads.wait_ack(CLUSTER, "2");
    wait_for(port, "/b", "backend=c");
    assert_eq!(get(port, "/a").as_deref(), Some("backend=a"));

    // One cluster removed: named in removed_resources, nothing resent;
    // gone at once although route `r1` still names it (as in Envoy: its
    // route answers 503, cluster not found), the other route serves.
    ads.remove(CLUSTER, "3", &["c-a"]);
    let removal = ads.wait_sent(CLUSTER, "3");
    assert!(removal.resources.is_empty(), "{removal:?}");
    assert_eq!(removal.removed, vec!["c-a"]);
    ads.wait_ack(CLUSTER, "3");
    assert_eq!(status(port, "/a"), 503);
    assert!(!clusters_listed(&mg).contains(&"c-a".to_string()));
    assert_eq!(get(port, "/b").as_deref(), Some("backend=c"));

    // A delta NACK: the one resource sent carries a field number Envoy's
    // protos lack; its error_detail names it, c-b keeps serving.
    ads.set(
        CLUSTER,
        "4",
        &static_cluster("c-b", &[b.addr], "  '@unknownField': 999\n"),
    );
    let bad = ads.wait_sent(CLUSTER, "4");
    assert_eq!(bad.resources, vec!["c-b"]);
    let e = ads.wait_nack(CLUSTER, "4");
    assert!(e.contains("unknown field number 999"), "{e}");
    assert!(e.contains("c-b"), "{e}");
    assert_eq!(get(port, "/b").as_deref(), Some("backend=c"));
}

/// A delta stream re-opened on a restarted server says what it holds
/// (`initial_resource_versions`): the new server, holding the same
/// resources, sends none of them again; meshgate served meanwhile.
#[test]
fn a_delta_stream_reopened_after_a_server_restart_sends_what_it_holds() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let clusters = |b_addr: SocketAddr| {
        static_cluster("c-a", &[a.addr], "") + &static_cluster("c-b", &[b_addr], "")
    };
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &clusters(a.addr));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    let _mg = Meshgate::start(&ads.bootstrap_delta());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    wait_for(port, "/b", "backend=a");
    let held = ads.wait_sent(CLUSTER, "1");
    assert_eq!(held.resources, vec!["c-a", "c-b"]);

    // The server dies: meshgate keeps serving what it has.
    let xds_port = ads.port;
    drop(ads);
    assert_eq!(get(port, "/b").as_deref(), Some("backend=a"));

    // A new one on the same port with the same resources.
    let ads = PyAds::start_on(xds_port);
    ads.set(CLUSTER, "1", &clusters(a.addr));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    ads.wait_ack(CLUSTER, "1");
    let first = ads
        .requests()
        .into_iter()
        .find(|r| r.type_url == CLUSTER)
        .unwrap();
    let names: Vec<&str> = first.initial.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, vec!["c-a", "c-b"], "{first:?}");
    let resent = ads.wait_sent(CLUSTER, "1");
    assert!(resent.resources.is_empty(), "{resent:?}");
    assert!(resent.removed.is_empty(), "{resent:?}");

    // And the stream works on: one change, one resource sent.
    ads.set(CLUSTER, "2", &clusters(b.addr));
    assert_eq!(ads.wait_sent(CLUSTER, "2").resources, vec!["c-b"]);
    ads.wait_ack(CLUSTER, "2");
    wait_for(port, "/b", "backend=b");
}

#[test]
fn hostile_pushes_are_nacked_by_name_while_the_old_config_serves() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &static_cluster("svc", &[a.addr], ""));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    let _mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    wait_for(port, "/", "backend=a");
    let serves_a = || {
        for _ in 0..3 {
            assert_eq!(get(port, "/").as_deref(), Some("backend=a"));
        }
    };

    // A field number Envoy's protos do not have, on the Cluster itself.
    let unknown = static_cluster("svc", &[b.addr], "  '@unknownField': 999\n");
    ads.set(CLUSTER, "2", &unknown);
    let e = ads.wait_nack(CLUSTER, "2");
    assert!(e.contains("unknown field number 999"), "{e}");
    assert!(e.contains("svc"), "{e}");
    serves_a();

    // The same inside a typed config: the router filter of the HCM of a
    // listener.
    ads.set(LISTENER, "3", &plain_listener(port, Some(777)));
    let e = ads.wait_nack(LISTENER, "3");
    assert!(e.contains("unknown field number 777"), "{e}");
    assert!(e.contains("web"), "{e}");
    serves_a();

    // Two clusters of one name in one response.
    let dup = static_cluster("svc", &[b.addr], "") + &static_cluster("svc", &[b.addr], "");
    ads.set(CLUSTER, "4", &dup);
    let e = ads.wait_nack(CLUSTER, "4");
    assert!(e.contains("duplicate"), "{e}");
    assert!(e.contains("svc"), "{e}");
    serves_a();

    // A Listener in a CDS response: the resource's type URL is wrong.
    ads.set(CLUSTER, "5", &plain_listener(free_port(), None));
    let e = ads.wait_nack(CLUSTER, "5");
    assert!(e.contains("type_url"), "{e}");
    assert!(e.contains("envoy.config.listener.v3.Listener"), "{e}");
    serves_a();

    // A typed config of the wrong type: the network filter named the HTTP
    // connection manager carries a Router.
    let wrong = format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: web
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    ads.set(LISTENER, "6", &wrong);
    let e = ads.wait_nack(LISTENER, "6");
    assert!(
        e.contains("envoy.extensions.filters.http.router.v3.Router"),
        "{e}"
    );
    assert!(e.contains("web"), "{e}");
    serves_a();

    // The stream still takes a good push.
    ads.set_acked(CLUSTER, "7", &static_cluster("svc", &[b.addr], ""));
    wait_for(port, "/", "backend=b");
}

#[test]
fn a_cds_health_check_stops_traffic_to_the_failing_endpoint_and_readmits_it() {
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    let port = free_port();
    let ads = PyAds::start();
    // Panic mode off: health alone decides.
    let hc = r#"  healthChecks:
  - timeout: 0.3s
    interval: 0.2s
    unhealthyThreshold: 1
    healthyThreshold: 1
    httpHealthCheck: {path: /healthz}
  commonLbConfig:
    healthyPanicThreshold: {value: 0}
"#;
    ads.set(CLUSTER, "1", &static_cluster("svc", &[a.addr, b.addr], hc));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_until_within(20, "both checked healthy", || {
        flags(&mg, "svc", a.addr) == "healthy" && flags(&mg, "svc", b.addr) == "healthy"
    });
    wait_listening(([127, 0, 0, 1], port).into());
    wait_until("both take traffic", || {
        get(port, "/");
        a.traffic() > 0 && b.traffic() > 0
    });

    // a fails its check: marked, and no request reaches it after.
    a.set_status(503);
    wait_until("a failed its check", || {
        flags(&mg, "svc", a.addr) == "/failed_active_hc"
    });
    assert!(a.checks() > 0);
    let before = a.traffic();
    for _ in 0..20 {
        assert_eq!(get(port, "/").as_deref(), Some("b"));
    }
    assert_eq!(a.traffic(), before);

    // It passes again: traffic returns.
    a.set_status(200);
    wait_until("a healthy again", || flags(&mg, "svc", a.addr) == "healthy");
    wait_until("a takes traffic again", || {
        get(port, "/");
        a.traffic() > before
    });
}

#[test]
fn cds_outlier_detection_ejects_the_endpoint_answering_5xx() {
    let good = Flaky::start("good");
    let bad = Flaky::start("bad");
    bad.set_status(503);
    let port = free_port();
    let ads = PyAds::start();
    let od = r#"  outlierDetection:
    consecutive5xx: 3
    maxEjectionPercent: 50
    baseEjectionTime: 30s
"#;
    ads.set(
        CLUSTER,
        "1",
        &static_cluster("svc", &[good.addr, bad.addr], od),
    );
    ads.set(ROUTE, "1", ROUTES);
    ads.set(LISTENER, "1", &plain_listener(port, None));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    // Round robin over both: the third 503 ejects `bad`.
    for _ in 0..10 {
        let _ = status(port, "/");
    }
    assert_eq!(
        mg.metric(
            "meshgate_cluster_outlier_detection_ejections_total",
            &[
                ("cluster", "svc"),
                ("detector", "consecutive_5xx"),
                ("enforced", "true")
            ],
        ),
        1.0
    );
    assert_eq!(bad.traffic(), 3);
    for _ in 0..6 {
        assert_eq!(status(port, "/"), 200);
    }
    assert_eq!(bad.traffic(), 3);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_outlier_detection_ejections_active",
            &[("cluster", "svc")]
        ),
        1.0
    );
}
