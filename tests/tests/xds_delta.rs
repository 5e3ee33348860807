//! Delta (incremental) xDS end to end: the management server of
//! `meshgate_tests::xds` serves `DeltaAggregatedResources` (only changed
//! resources travel, removals are named) to the real binary started with
//! `api_type: DELTA_GRPC`. Asserts: the wildcard and by-name subscriptions
//! and their changes; one changed cluster among many travels alone and
//! applies under load with no failed request; removals remove; a NACK
//! names the field and the previous resources keep serving; a re-opened
//! stream sends `initial_resource_versions`, so nothing unchanged is sent
//! again.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::TcpStream;
use std::time::Duration;

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_err()
}

/// The last delta response of `type_url`: (resources carried, removed).
fn last_delta(mgmt: &Mgmt, type_url: &str) -> (usize, Vec<String>) {
    mgmt.delta_sent()
        .into_iter()
        .rev()
        .find(|s| s.0 == type_url)
        .map(|s| (s.1, s.2))
        .unwrap_or_default()
}

#[test]
fn delta_stream_subscribes_and_serves_every_type() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![eds_cluster("svc-a")]);
    mgmt.set(ENDPOINT, "e1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap_delta(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");

    let reqs = mgmt.delta_requests();
    // Listeners and clusters: a wildcard subscription (no names).
    for t in [CLUSTER, LISTENER] {
        let first = reqs.iter().find(|r| r.type_url == t).unwrap();
        assert!(first.resource_names_subscribe.is_empty(), "{first:?}");
        assert!(first.response_nonce.is_empty());
    }
    // Routes and endpoints: by name, as they come into use.
    let sub = |t: &str| -> Vec<String> {
        reqs.iter()
            .filter(|r| r.type_url == t)
            .flat_map(|r| r.resource_names_subscribe.clone())
            .collect()
    };
    assert_eq!(sub(ROUTE), ["r1"]);
    assert_eq!(sub(ENDPOINT), ["svc-a"]);
    // Every response was ACKed: a request with its nonce and no error.
    for (t, _, nonce) in mgmt.sent() {
        let ack = mgmt.wait_reply(&t, &nonce);
        assert!(ack.error_detail.is_none(), "{ack:?}");
    }
    let dump = mg.config_dump();
    let version = dump["dynamic"]["version"].as_str().unwrap_or_default();
    assert!(
        version.contains("cds=c1") && version.contains("rds=r1"),
        "{version}"
    );

    // The listener moves to another route configuration: r2 is
    // subscribed, r1 unsubscribed, in one delta request.
    mgmt.set(
        ROUTE,
        "r2",
        vec![
            route_config("r1", &[("svc-a", 1)]),
            route_config("r2", &[("svc-a", 1)]),
        ],
    );
    mgmt.set_acked(LISTENER, "l2", vec![hcm_listener("web", port, "r2")]);
    wait_until("r2 subscribed and r1 dropped", || {
        mgmt.delta_requests().iter().any(|r| {
            r.type_url == ROUTE
                && r.resource_names_subscribe == ["r2"]
                && r.resource_names_unsubscribe == ["r1"]
        })
    });
    wait_for(port, "/", "backend=a");
    assert!(
        mg.metric(
            "meshgate_xds_response_total",
            &[("type", "lds"), ("result", "ack")]
        ) >= 2.0
    );
}

#[test]
fn one_changed_cluster_travels_alone_and_applies_under_load() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let clusters = |target: std::net::SocketAddr| -> Vec<_> {
        (0..200)
            .map(|i| static_cluster(&format!("c{i}"), if i == 7 { target } else { a.addr }))
            .collect()
    };
    mgmt.set(CLUSTER, "1", clusters(a.addr));
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("c7", 1)])]);
    let _mg = Meshgate::start(&bootstrap_delta(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    assert_eq!(
        last_delta(&mgmt, CLUSTER).0,
        200,
        "the first response carries all"
    );

    let load = Load::start(port, 4);
    load.wait_more(30);
    // c7 now points at b: one resource travels, and it serves.
    mgmt.set_acked(CLUSTER, "2", clusters(b.addr));
    assert_eq!(last_delta(&mgmt, CLUSTER), (1, vec![]));
    wait_for(port, "/", "backend=b");
    load.wait_more(30);
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}

#[test]
fn removed_resources_are_removed() {
    let a = HttpBackend::start("a", Proto::Http1);
    let (port, tport) = (free_port(), free_port());
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-b", a.addr),
        ],
    );
    mgmt.set(
        LISTENER,
        "1",
        vec![
            hcm_listener("web", port, "r"),
            tcp_listener("tcp", tport, "svc-b"),
        ],
    );
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let _mg = Meshgate::start(&bootstrap_delta(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    wait_until("tcp listener", || !refused(tport));

    // The tcp listener goes: named in removed_resources, its port closes.
    mgmt.set_acked(LISTENER, "2", vec![hcm_listener("web", port, "r")]);
    assert_eq!(last_delta(&mgmt, LISTENER), (0, vec!["tcp".to_string()]));
    wait_until("tcp listener closed", || refused(tport));
    // Its cluster goes too; the HTTP listener serves on.
    mgmt.set_acked(CLUSTER, "2", vec![static_cluster("svc-a", a.addr)]);
    assert_eq!(last_delta(&mgmt, CLUSTER), (0, vec!["svc-b".to_string()]));
    assert_eq!(get(port, "/").as_deref(), Some("backend=a"));
}

#[test]
fn a_refused_resource_is_nacked_by_field_and_the_previous_ones_serve() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap_delta(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 2);

    mgmt.set(
        CLUSTER,
        "2",
        vec![
            static_cluster("svc-a", a.addr),
            cluster_with_unsupported_field("svc-bad", a.addr),
        ],
    );
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let nack = mgmt.wait_reply(CLUSTER, &nonce);
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("Cluster 'svc-bad'")
            && detail.message.contains("outlier_detection.monitors"),
        "{}",
        detail.message
    );
    assert_eq!(get(port, "/").as_deref(), Some("backend=a"));
    let dump = mg.config_dump();
    assert!(
        dump["dynamic"]["refused"].to_string().contains("svc-bad"),
        "{dump}"
    );
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}

#[test]
fn a_reopened_stream_sends_what_it_holds_and_gets_only_changes() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let xport = mgmt.addr.port();
    mgmt.set(
        CLUSTER,
        "1",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-b", b.addr),
        ],
    );
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap_delta(xport));
    wait_for(port, "/", "backend=a");

    let shared = mgmt.stop();
    wait_until("disconnect seen", || {
        mg.metric("meshgate_xds_connected", &[]) == 0.0
    });
    {
        let mut s = shared.lock().unwrap();
        s.delta_requests.clear();
        s.delta_sent.clear();
    }
    let mgmt = Mgmt::start_with(xport, shared);
    mgmt.set(ROUTE, "2", vec![route_config("r", &[("svc-b", 1)])]);
    wait_for(port, "/", "backend=b");
    let reqs = mgmt.delta_requests();
    let cds_first = reqs.iter().find(|r| r.type_url == CLUSTER).unwrap();
    let held: std::collections::BTreeSet<_> = cds_first
        .initial_resource_versions
        .keys()
        .cloned()
        .collect();
    assert_eq!(held, ["svc-a".to_string(), "svc-b".to_string()].into());
    let rds_first = reqs.iter().find(|r| r.type_url == ROUTE).unwrap();
    assert_eq!(rds_first.resource_names_subscribe, ["r"]);
    assert!(rds_first.initial_resource_versions.contains_key("r"));
    // The unchanged clusters and listener were not sent again.
    for t in [CLUSTER, LISTENER] {
        let carried: usize = mgmt
            .delta_sent()
            .iter()
            .filter(|s| s.0 == t)
            .map(|s| s.1)
            .sum();
        assert_eq!(carried, 0, "{t} resent after the reconnect");
    }
}
