//! xDS edge cases, end to end against the real binary and the in-process
//! ADS server (tests/src/xds.rs): a route naming a cluster CDS did not send
//! (503 meanwhile, the rest of the listener serving, 200 on the same
//! keep-alive connection once the cluster arrives); a listener warming on a
//! route configuration that never comes (shown in `/config_dump`, served
//! after its `initial_fetch_timeout`); NACKs of unknown protobuf fields,
//! duplicate names, a dynamic cluster clashing with a static one and a bad
//! regex in RDS, each naming the resource of the NACKed type while the old
//! config keeps serving; a new version with the same config ACKed and
//! shown; `initial_fetch_timeout` bounding EDS clusters (served empty),
//! tcp_proxy and inline-route clusters CDS did not send (a stand-in after
//! the CDS initial fetch) and flagging a TLS listener's SDS wait; the last
//! NACK per type in `/config_dump`.

use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use prost::Message;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_err()
}

/// One GET on a keep-alive connection: status and body.
fn exchange(conn: &mut BufReader<TcpStream>, path: &str) -> (u16, String) {
    conn.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let r = read_reply(conn).unwrap_or_else(|| panic!("no reply to {path}"));
    assert!(!r.close, "{path}: the connection was closed");
    (r.status, r.body)
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(s)
}

fn dump(mg: &Meshgate) -> serde_json::Value {
    let (_, body) = mg.admin_get("/config_dump");
    serde_json::from_str(&body).unwrap()
}

/// Sets resources and returns the reply to them (ACK or NACK).
fn reply_to(
    mgmt: &Mgmt,
    type_url: &str,
    version: &str,
    items: Vec<(String, Any)>,
) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    mgmt.set(type_url, version, items);
    let nonce = mgmt.wait_sent(type_url, version);
    mgmt.wait_reply(type_url, &nonce)
}

/// A NACK keeping `previous`, whose message has every one of `want`.
fn assert_nack(
    r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest,
    previous: &str,
    want: &[&str],
) {
    assert_eq!(r.version_info, previous, "NACK keeps the previous version");
    let msg = &r.error_detail.as_ref().expect("a NACK").message;
    for w in want {
        assert!(msg.contains(w), "NACK message {msg:?} lacks {w:?}");
    }
}

fn prefix(p: &str) -> Option<rds::RouteMatch> {
    Some(rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn to_cluster(c: &str, not_found: rds::route_action::ClusterNotFoundResponseCode) -> rds::Route {
    rds::Route {
        action: Some(rds::route::Action::Route(rds::RouteAction {
            cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(c.into())),
            cluster_not_found_response_code: not_found as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `/missing` to cluster `later` (default 503), `/gone` to `gone` (404),
/// everything else to `svc-a`.
fn routes_with_missing(name: &str) -> rds::RouteConfiguration {
    use rds::route_action::ClusterNotFoundResponseCode as C;
    rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![
                rds::Route {
                    r#match: prefix("/missing"),
                    ..to_cluster("later", C::ServiceUnavailable)
                },
                rds::Route {
                    r#match: prefix("/gone"),
                    ..to_cluster("gone", C::NotFound)
                },
                rds::Route {
                    r#match: prefix("/"),
                    ..to_cluster("svc-a", C::ServiceUnavailable)
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn a_route_to_a_cluster_cds_did_not_send_answers_503_until_it_arrives() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(
        ROUTE,
        "r1",
        vec![("r".into(), any(ROUTE, &routes_with_missing("r")))],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // The listener serves although two of its routes name clusters CDS
    // never sent: those answer cluster-not-found, the other route works.
    wait_for(port, "/", "backend=a");
    let mut conn = connect(port);
    let (status, body) = exchange(&mut conn, "/missing");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster not found"), "{body}");
    assert_eq!(
        exchange(&mut conn, "/gone").0,
        404,
        "cluster_not_found_response_code NOT_FOUND"
    );
    let (status, body) = exchange(&mut conn, "/");
    assert_eq!((status, body.contains("backend=a")), (200, true), "{body}");
    assert!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "cluster_not_found")]
        ) >= 2.0
    );
    let d = dump(&mg);
    let listeners: Vec<&str> = d["config"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(listeners, ["web"], "{d}");
    assert!(d["dynamic"].get("warming").is_none(), "{d}");

    // CDS sends the cluster: the route works, on the same connection.
    let ack = reply_to(
        &mgmt,
        CLUSTER,
        "c2",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("later", b.addr),
        ],
    );
    assert!(ack.error_detail.is_none(), "{ack:?}");
    wait_until("the route to `later` works", || {
        let (status, body) = exchange(&mut conn, "/missing");
        status == 200 && body.contains("backend=b")
    });
    assert_eq!(exchange(&mut conn, "/gone").0, 404);
    assert_eq!(exchange(&mut conn, "/").0, 200);
}

/// `hcm_listener` whose RDS source has `initial_fetch_timeout: 1s`.
fn listener_with_fetch_timeout(name: &str, port: u16, rds_name: &str) -> (String, Any) {
    let (_, a) = hcm_listener(name, port, rds_name);
    let mut l = lds::Listener::decode(a.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(tc)) = &mut f.config_type else {
        unreachable!()
    };
    let mut h = hcm::HttpConnectionManager::decode(tc.value.as_slice()).unwrap();
    if let Some(hcm::http_connection_manager::RouteSpecifier::Rds(r)) = &mut h.route_specifier {
        r.config_source.as_mut().unwrap().initial_fetch_timeout = Some(PbDuration {
            seconds: 1,
            nanos: 0,
        });
    }
    *tc = any(HCM, &h);
    (name.into(), any(LISTENER, &l))
}

#[test]
fn a_listener_warms_visibly_and_at_most_its_initial_fetch_timeout() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(
        LISTENER,
        "l1",
        vec![listener_with_fetch_timeout("web", port, "late")],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // Warming: shown in /config_dump with what it waits for, not served.
    let started = Instant::now();
    let mut seen_warming = false;
    wait_until(
        "the listener served after its initial_fetch_timeout",
        || {
            let d = dump(&mg);
            if let Some(w) = d["dynamic"]["warming"].as_array() {
                let w0 = &w[0];
                assert_eq!(w0["resource"], "Listener 'web'", "{d}");
                assert_eq!(w0["waiting_for"][0], "RouteConfiguration 'late'", "{d}");
                // The port opens while the config that ends the warming
                // is applied, just before /config_dump shows it: served
                // while a later dump still shows it warming is the bug.
                assert!(
                    refused(port) || dump(&mg)["dynamic"].get("warming").is_none(),
                    "served while warming"
                );
                seen_warming = true;
            }
            !refused(port)
        },
    );
    assert!(
        seen_warming,
        "the warming listener never showed in /config_dump"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "not bounded by its 1s initial_fetch_timeout"
    );
    // Served without its routes (none yet: 404), no longer warming.
    let mut conn = connect(port);
    assert_eq!(exchange(&mut conn, "/").0, 404);
    assert!(dump(&mg)["dynamic"].get("warming").is_none());
    // The route configuration arrives: it applies, on the same connection.
    let ack = reply_to(
        &mgmt,
        ROUTE,
        "r1",
        vec![route_config("late", &[("svc-a", 1)])],
    );
    assert!(ack.error_detail.is_none(), "{ack:?}");
    wait_until("routes from RDS", || exchange(&mut conn, "/").0 == 200);
}

/// Wire bytes of an unknown field `field` (varint 7).
fn unknown_varint(field: u64) -> Vec<u8> {
    let mut b = Vec::new();
    prost::encoding::encode_key(field as u32, prost::encoding::WireType::Varint, &mut b);
    prost::encoding::encode_varint(7, &mut b);
    b
}

#[test]
fn nacks_name_the_resource_and_the_old_config_keeps_serving() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r", &[("svc-a", 1)])]);
    // The file has a static cluster besides the ADS one.
    let boot = format!(
        "{}  - name: static-one\n    endpoints:\n      - address: 127.0.0.1:1\n",
        bootstrap(mgmt.addr.port())
    );
    let mg = Meshgate::start(&boot);
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 2);

    // An unknown field at the top of a Cluster.
    let (_, mut c) = static_cluster("svc-a", a.addr);
    c.value.extend(unknown_varint(999));
    let r = reply_to(&mgmt, CLUSTER, "c2", vec![("svc-a".into(), c)]);
    assert_nack(&r, "c1", &["Cluster 'svc-a'", "unknown field number 999"]);
    assert_eq!(get(port, "/").as_deref(), Some("backend=a"));

    // An unknown field inside a virtual host of a RouteConfiguration.
    let (_, good) = route_config("r", &[("svc-a", 1)]);
    let mut rc = rds::RouteConfiguration::decode(good.value.as_slice()).unwrap();
    let vh = rc.virtual_hosts.remove(0);
    let mut vh_bytes = vh.encode_to_vec();
    vh_bytes.extend(unknown_varint(777));
    let mut bytes = rc.encode_to_vec();
    prost::encoding::bytes::encode(2, &vh_bytes, &mut bytes);
    let r = reply_to(
        &mgmt,
        ROUTE,
        "r2",
        vec![(
            "r".into(),
            Any {
                type_url: ROUTE.into(),
                value: bytes,
            },
        )],
    );
    assert_nack(
        &r,
        "r1",
        &[
            "RouteConfiguration 'r'",
            "unknown field number 777",
            "virtual_hosts(2).777",
        ],
    );

    // A bad regex in RDS names the RouteConfiguration, not the listener.
    let mut bad = rds::RouteConfiguration::decode(good.value.as_slice()).unwrap();
    bad.virtual_hosts[0].routes[0].r#match = Some(rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::SafeRegex(
            matcher::RegexMatcher {
                regex: "/(unclosed".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    let r = reply_to(&mgmt, ROUTE, "r3", vec![("r".into(), any(ROUTE, &bad))]);
    assert_nack(&r, "r1", &["RouteConfiguration 'r'", "safe_regex", "regex"]);
    let msg = &r.error_detail.as_ref().unwrap().message;
    assert!(!msg.contains("Listener"), "{msg}");

    // Two listeners of one name.
    let r = reply_to(
        &mgmt,
        LISTENER,
        "l2",
        vec![
            hcm_listener("web", port, "r"),
            hcm_listener("web", free_port(), "r"),
        ],
    );
    assert_nack(&r, "l1", &["Listener 'web'", "appears twice"]);

    // A dynamic cluster named like the file's static one, of any type:
    // refused on CDS itself.
    for (v, clash) in [
        ("c3", eds_cluster("static-one")),
        ("c4", static_cluster("static-one", a.addr)),
    ] {
        let r = reply_to(
            &mgmt,
            CLUSTER,
            v,
            vec![static_cluster("svc-a", a.addr), clash],
        );
        assert_nack(
            &r,
            "c1",
            &["Cluster 'static-one'", "static cluster of the config file"],
        );
    }

    // Still the first config, and nothing failed meanwhile.
    assert_eq!(get(port, "/").as_deref(), Some("backend=a"));
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
    for (ty, n) in [("cds", 3.0), ("rds", 2.0), ("lds", 1.0)] {
        assert!(
            mg.metric(
                "meshgate_xds_response_total",
                &[("type", ty), ("result", "nack")]
            ) >= n,
            "{ty} NACKs"
        );
    }
    let d = dump(&mg);
    let v = d["dynamic"]["version"].as_str().unwrap();
    assert!(
        v.contains("cds=c1") && v.contains("rds=r1") && v.contains("lds=l1"),
        "{d}"
    );
}

#[test]
fn a_new_version_with_the_same_config_is_acked_and_shown() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    let mut conn = connect(port);
    assert_eq!(exchange(&mut conn, "/").0, 200);
    wait_until("cds=c1 shown", || {
        dump(&mg)["dynamic"]["version"]
            .as_str()
            .is_some_and(|v| v.contains("cds=c1"))
    });
    let before = mg.metric("meshgate_config_version", &[]);

    let ack = reply_to(&mgmt, CLUSTER, "c2", vec![static_cluster("svc-a", a.addr)]);
    assert_eq!(ack.version_info, "c2");
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let d = dump(&mg);
    let v = d["dynamic"]["version"].as_str().unwrap();
    assert!(v.contains("cds=c2"), "{d}");
    assert!(
        d["version"].as_f64().unwrap() > before,
        "snapshot version did not move: {d}"
    );
    assert!(mg.metric("meshgate_config_version", &[]) > before);
    // Same config: the open connection goes on.
    assert_eq!(exchange(&mut conn, "/").0, 200);
}

/// A RouteConfiguration of `n` routes named `{tag}-{i}` (exact `/r{i}`)
/// and `/` to `cluster`.
fn named_routes(name: &str, tag: &str, n: usize, cluster: &str) -> (String, Any) {
    use rds::route_action::ClusterNotFoundResponseCode as C;
    let mut routes: Vec<rds::Route> = (0..n)
        .map(|i| rds::Route {
            name: format!("{tag}-{i}"),
            r#match: Some(rds::RouteMatch {
                path_specifier: Some(rds::route_match::PathSpecifier::Path(format!("/r{i}"))),
                ..Default::default()
            }),
            ..to_cluster(cluster, C::ServiceUnavailable)
        })
        .collect();
    routes.push(rds::Route {
        r#match: prefix("/"),
        ..to_cluster(cluster, C::ServiceUnavailable)
    });
    let r = rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(ROUTE, &r))
}

#[test]
fn route_name_churn_keeps_the_interned_names_bounded() {
    // A low cap for this process's meshgate (the default is 65,536).
    // SAFETY: set before any thread of this test reads the environment;
    // nextest runs each test in its own process.
    unsafe { std::env::set_var("MESHGATE_MAX_INTERNED_NAMES", "2000") };
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "v0", vec![named_routes("r", "v0", 1000, "svc-a")]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/r5", "backend=a");
    // 10 versions of 1,000 new route names each: 10,000 names churned.
    for k in 1..=10 {
        let v = format!("v{k}");
        let ack = reply_to(&mgmt, ROUTE, &v, vec![named_routes("r", &v, 1000, "svc-a")]);
        assert!(ack.error_detail.is_none(), "{ack:?}");
    }
    let interned = mg.metric("meshgate_stats_interned_names", &[]);
    assert!(
        interned > 1000.0 && interned <= 2000.0,
        "interned names: {interned}"
    );
    assert!(mg.metric("meshgate_stats_interned_names_overflow_total", &[]) >= 8000.0);
    // Routing does not depend on the labels: the last version routes.
    assert_eq!(get(port, "/r999").as_deref(), Some("backend=a"));
    let d = dump(&mg);
    assert!(
        d.to_string().contains("v10-999"),
        "the config keeps the real names"
    );
}

/// A static file config: naming an unknown cluster stays a config error,
/// unless the route configuration says `validate_clusters: false`, then
/// that route answers its `cluster_not_found_response_code`.
#[test]
fn static_routes_validate_their_clusters_unless_told_not_to() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let yaml = |validate: &str| {
        format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                {validate}
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /missing}}
                        route: {{cluster: nowhere, cluster_not_found_response_code: INTERNAL_SERVER_ERROR}}
                      - match: {{prefix: /}}
                        route: {{cluster: svc-a}}
clusters:
  - name: svc-a
    endpoints: [{{address: "{}"}}]
"#,
            a.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.yaml");
    std::fs::write(&p, yaml("name: r").replace("{ADMIN}", "127.0.0.1:1")).unwrap();
    let (code, _, err) = run_cli(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown cluster 'nowhere'"), "{err}");

    let mg = Meshgate::start(&yaml("validate_clusters: false"));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let mut conn = connect(port);
    let (status, body) = exchange(&mut conn, "/missing");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("cluster not found"), "{body}");
    let (status, body) = exchange(&mut conn, "/");
    assert_eq!((status, body.contains("backend=a")), (200, true), "{body}");
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "cluster_not_found")]
        ),
        1.0
    );
}

// ------------------------------------------- initial_fetch_timeout (F1)

fn one_second() -> Option<PbDuration> {
    Some(PbDuration {
        seconds: 1,
        nanos: 0,
    })
}

/// The `dynamic.warming` entry of `resource`, if any.
fn warming_entry(d: &serde_json::Value, resource: &str) -> Option<serde_json::Value> {
    d["dynamic"]["warming"]
        .as_array()?
        .iter()
        .find(|w| w["resource"] == resource)
        .cloned()
}

/// An EDS cluster whose ClusterLoadAssignment never comes stops blocking
/// after its `eds_config.initial_fetch_timeout` (1 s): served with no
/// endpoints (503 no_healthy_upstream), shown in `/config_dump`, counted;
/// the endpoints, when they come, serve.
#[test]
fn an_eds_cluster_whose_endpoints_never_come_is_served_empty_after_its_initial_fetch_timeout() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let mut c = eds_cluster_msg("svc-e");
    let ec = c.eds_cluster_config.as_mut().unwrap();
    ec.eds_config.as_mut().unwrap().initial_fetch_timeout = one_second();
    mgmt.set(CLUSTER, "c1", vec![("svc-e".into(), any(CLUSTER, &c))]);
    mgmt.set(ROUTE, "r1", vec![route_config("r", &[("svc-e", 1)])]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    // EDS is withheld: the server never answers the subscription.
    let started = Instant::now();
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // Warming first: the cluster waits for its assignment, the listener
    // for the cluster, the port is not served.
    wait_until("the EDS cluster and the listener shown warming", || {
        let d = dump(&mg);
        let cluster = warming_entry(&d, "Cluster 'svc-e'").is_some_and(|w| {
            w["waiting_for"] == serde_json::json!(["ClusterLoadAssignment 'svc-e'"])
                && w.get("initial_fetch_timeout_over").is_none()
        });
        let listener = warming_entry(&d, "Listener 'web'")
            .is_some_and(|w| w["waiting_for"] == serde_json::json!(["Cluster 'svc-e'"]));
        cluster && listener
    });
    if started.elapsed() < Duration::from_millis(800) {
        assert!(refused(port), "served before the timeout");
    }

    // After 1 s: served with no endpoints.
    wait_until("the listener served", || !refused(port));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "served after {:?}, before the 1 s timeout",
        started.elapsed()
    );
    let mut conn = connect(port);
    let (status, body) = exchange(&mut conn, "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no healthy upstream"), "{body}");
    assert!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "no_healthy_upstream")]
        ) >= 1.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_xds_initial_fetch_timeout_total",
            &[("type", "eds")]
        ),
        1.0
    );
    let d = dump(&mg);
    let w = warming_entry(&d, "Cluster 'svc-e'").unwrap_or_else(|| panic!("{d}"));
    assert_eq!(w["initial_fetch_timeout_over"], true, "{d}");
    assert!(warming_entry(&d, "Listener 'web'").is_none(), "{d}");
    let clusters: Vec<&str> = d["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(clusters.contains(&"svc-e"), "{d}");

    // The assignment comes: served, on the same connection.
    mgmt.set(ENDPOINT, "e1", vec![cla("svc-e", &[(a.addr, 1, 0)])]);
    wait_until("the endpoints serve", || {
        let (status, body) = exchange(&mut conn, "/");
        status == 200 && body.contains("backend=a")
    });
    wait_until("no more warming", || {
        dump(&mg)["dynamic"].get("warming").is_none()
    });
}

/// `tls_hcm_listener` whose secret's `sds_config.initial_fetch_timeout` is 1 s.
fn tls_listener_with_sds_timeout(name: &str, port: u16, rds: &str, secret: &str) -> (String, Any) {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
    let (_, a) = tls_hcm_listener(name, port, rds, secret);
    let mut l = lds::Listener::decode(a.value.as_slice()).unwrap();
    let ts = l.filter_chains[0].transport_socket.as_mut().unwrap();
    let Some(core3::transport_socket::ConfigType::TypedConfig(tc)) = &mut ts.config_type else {
        unreachable!()
    };
    let mut ctx = tlsv3::DownstreamTlsContext::decode(tc.value.as_slice()).unwrap();
    let c = ctx.common_tls_context.as_mut().unwrap();
    c.tls_certificate_sds_secret_configs[0]
        .sds_config
        .as_mut()
        .unwrap()
        .initial_fetch_timeout = one_second();
    *tc = any(&tc.type_url.clone(), &ctx);
    (name.into(), any(LISTENER, &l))
}

fn curl_https(port: u16) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "3"])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TLS listener whose SDS certificate does not come within its
/// `initial_fetch_timeout` (1 s) keeps warming (meshgate's choice: Envoy
/// would serve it and fail every handshake), shown in `/config_dump` as
/// past its initial fetch; it serves once the secret comes.
#[test]
fn a_listener_waiting_for_its_sds_secret_past_the_timeout_warms_on_visibly() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(ROUTE, "r1", vec![route_config("r", &[("svc-a", 1)])]);
    mgmt.set(
        LISTENER,
        "l1",
        vec![tls_listener_with_sds_timeout("web", port, "r", "cert")],
    );
    let started = Instant::now();
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_until("the SDS wait shown past its initial fetch", || {
        warming_entry(&dump(&mg), "Listener 'web'")
            .is_some_and(|w| w["initial_fetch_timeout_over"] == true)
    });
    assert!(started.elapsed() >= Duration::from_millis(900));
    let d = dump(&mg);
    let w = warming_entry(&d, "Listener 'web'").unwrap();
    assert_eq!(
        w["waiting_for"],
        serde_json::json!(["Secret 'cert'"]),
        "{d}"
    );
    assert!(refused(port), "served without its certificate: {d}");

    let certs = workspace().join("examples/certs");
    let pem = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    mgmt.set(
        SECRET,
        "s1",
        vec![cert_secret("cert", &pem("server.pem"), &pem("server.key"))],
    );
    wait_until("the TLS listener serving", || {
        curl_https(port).is_some_and(|b| b.contains("backend=a"))
    });
    assert!(dump(&mg)["dynamic"].get("warming").is_none());
}

/// `bootstrap` with `cds_config.initial_fetch_timeout: 1s`.
fn bootstrap_cds_timeout(xds_port: u16) -> String {
    let b = bootstrap(xds_port);
    let anchor = "    retry_max_interval: 500ms\n";
    assert!(b.contains(anchor));
    b.replace(
        anchor,
        &format!("{anchor}  cds_config:\n    initial_fetch_timeout: 1s\n"),
    )
}

/// A tcp_proxy listener to a cluster CDS did not send warms at most the
/// CDS initial fetch (1 s); then it is served, each connection closed at
/// once and counted, until CDS sends the cluster, which new connections
/// then reach.
#[test]
fn a_tcp_proxy_listener_to_a_cluster_cds_did_not_send_serves_after_the_initial_fetch() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let tport = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "l1", vec![tcp_listener("tcp", tport, "later")]);
    let started = Instant::now();
    let mg = Meshgate::start(&bootstrap_cds_timeout(mgmt.addr.port()));

    wait_until("the listener served", || !refused(tport));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "served after {:?}, before the CDS initial fetch",
        started.elapsed()
    );
    let d = dump(&mg);
    let w = warming_entry(&d, "Cluster 'later'").unwrap_or_else(|| panic!("{d}"));
    assert_eq!(w["initial_fetch_timeout_over"], true, "{d}");
    assert!(warming_entry(&d, "Listener 'tcp'").is_none(), "{d}");
    assert_eq!(
        mg.metric(
            "meshgate_xds_initial_fetch_timeout_total",
            &[("type", "cds")]
        ),
        1.0
    );

    // A connection is closed without a byte and counted (the cluster is
    // not there: Envoy's `downstream_cx_no_route`).
    let unavailable = || {
        mg.metric(
            "meshgate_tcp_proxy_cx_no_route_total",
            &[("listener", "tcp"), ("cluster", "later")],
        )
    };
    let before = unavailable();
    let mut s = TcpStream::connect(("127.0.0.1", tport)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    wait_until("the refused connection counted", || {
        unavailable() >= before + 1.0
    });

    // CDS sends it: new connections reach it.
    let ack = reply_to(
        &mgmt,
        CLUSTER,
        "c2",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("later", b.addr),
        ],
    );
    assert!(ack.error_detail.is_none(), "{ack:?}");
    wait_until("tcp_proxy reaches the cluster", || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", tport)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out.contains("backend=b")
    });
    assert!(dump(&mg)["dynamic"].get("warming").is_none());
}

/// `/config_dump` shows the last refused update per type with its error
/// until that type's next accepted update.
#[test]
fn config_dump_shows_the_last_nack_per_type_until_the_next_ack() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(ROUTE, "r1", vec![route_config("r", &[("svc-a", 1)])]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r")]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    assert!(dump(&mg)["dynamic"].get("refused").is_none());

    let nack = reply_to(
        &mgmt,
        CLUSTER,
        "c2",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-a", a.addr),
        ],
    );
    assert_nack(&nack, "c1", &["Cluster 'svc-a'", "twice"]);
    let d = dump(&mg);
    let r = &d["dynamic"]["refused"]["cds"];
    assert_eq!(r["version"], "c2", "{d}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("Cluster 'svc-a'") && e.contains("twice")),
        "{d}"
    );
    // The served config is the previous one.
    assert!(
        d["dynamic"]["version"].as_str().unwrap().contains("cds=c1"),
        "{d}"
    );

    let ack = reply_to(&mgmt, CLUSTER, "c3", vec![static_cluster("svc-a", a.addr)]);
    assert!(ack.error_detail.is_none(), "{ack:?}");
    wait_until("the refusal cleared", || {
        dump(&mg)["dynamic"].get("refused").is_none()
    });
    wait_for(port, "/", "backend=a");
}

/// `hcm_listener` with an inline route configuration (validating its
/// clusters, Envoy's inline default) sending everything to `cluster`.
fn inline_route_listener(name: &str, port: u16, cluster: &str) -> (String, Any) {
    let (_, a) = hcm_listener(name, port, "unused");
    let mut l = lds::Listener::decode(a.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(tc)) = &mut f.config_type else {
        unreachable!()
    };
    let mut h = hcm::HttpConnectionManager::decode(tc.value.as_slice()).unwrap();
    let (_, rc) = route_config("inline", &[(cluster, 1)]);
    let rc = rds::RouteConfiguration::decode(rc.value.as_slice()).unwrap();
    h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
        rc,
    ));
    *tc = any(HCM, &h);
    (name.into(), any(LISTENER, &l))
}

/// A listener whose inline route names a cluster CDS did not send warms
/// at most the CDS initial fetch (1 s), then answers 503 (cluster not
/// found: a `not_found` stand-in) until CDS sends it.
#[test]
fn an_inline_route_to_a_cluster_cds_did_not_send_serves_after_the_initial_fetch() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(
        LISTENER,
        "l1",
        vec![inline_route_listener("web", port, "later")],
    );
    let started = Instant::now();
    let mg = Meshgate::start(&bootstrap_cds_timeout(mgmt.addr.port()));
    wait_until("the listener served", || !refused(port));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut conn = connect(port);
    let (status, body) = exchange(&mut conn, "/");
    assert_eq!(status, 503, "{body}");
    let d = dump(&mg);
    let w = warming_entry(&d, "Cluster 'later'").unwrap_or_else(|| panic!("{d}"));
    assert_eq!(w["initial_fetch_timeout_over"], true, "{d}");

    let ack = reply_to(
        &mgmt,
        CLUSTER,
        "c2",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("later", b.addr),
        ],
    );
    assert!(ack.error_detail.is_none(), "{ack:?}");
    wait_until("the route reaches the cluster", || {
        let (status, body) = exchange(&mut conn, "/");
        status == 200 && body.contains("backend=b")
    });
    assert!(dump(&mg)["dynamic"].get("warming").is_none());
}
