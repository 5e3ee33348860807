//! Cluster priorities, panic threshold and drop overloads end to end
//! through the real binary, with real HTTP/1.1 backends (each counts the
//! requests it served): Envoy's priority load (P0 health = min(100,
//! 1.4 × healthy %), the rest spilled to P1) measured on the backends, in
//! YAML and through a real xDS control plane whose EDS updates flip only
//! health; panic mode on and off; `drop_overloads` answering half the
//! requests 503 with the per-category counter; refused fields named.

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use envoy_types::pb::google::protobuf::UInt32Value;
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};

/// `n` keep-alive GETs of `path`: how many got each status.
fn send(addr: SocketAddr, path: &str, n: u32) -> BTreeMap<u16, u32> {
    let mut statuses = BTreeMap::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for _ in 0..n {
        let r = conn.get_or_insert_with(|| BufReader::new(TcpStream::connect(addr).unwrap()));
        r.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let reply = read_reply(r).expect("a whole response");
        *statuses.entry(reply.status).or_default() += 1;
        if reply.close {
            conn = None;
        }
    }
    statuses
}

fn hits(bs: &[HttpBackend]) -> Vec<u32> {
    bs.iter().map(|b| b.hits()).collect()
}

fn backends(n: usize) -> Vec<HttpBackend> {
    (0..n)
        .map(|_| HttpBackend::start("b", Proto::Http1))
        .collect()
}

/// `share` within `tol` of `want`.
fn near(share: f64, want: f64, tol: f64) -> bool {
    (share - want).abs() <= tol
}

#[test]
fn yaml_priorities_spill_by_envoys_formula_and_panic_and_drops_apply() {
    let spill = backends(3);
    let healthy = backends(2);
    let panic = backends(4);
    let nopanic = backends(4);
    let drop = backends(1);
    let a = |b: &HttpBackend| b.addr.to_string();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
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
                      - match: {{prefix: /spill}}
                        route: {{cluster: spill}}
                      - match: {{prefix: /healthy}}
                        route: {{cluster: healthy}}
                      - match: {{prefix: /panic}}
                        route: {{cluster: panic}}
                      - match: {{prefix: /nopanic}}
                        route: {{cluster: nopanic}}
                      - match: {{prefix: /drop}}
                        route: {{cluster: drop}}
clusters:
  - name: spill
    endpoints:
      - {{address: "{s0}"}}
      - {{address: "{s1}", health_status: unhealthy}}
      - {{address: "{s2}", priority: 1}}
  - name: healthy
    endpoints:
      - {{address: "{h0}"}}
      - {{address: "{h1}", priority: 1}}
  - name: panic
    endpoints:
      - {{address: "{p0}"}}
      - {{address: "{p1}", health_status: unhealthy}}
      - {{address: "{p2}", health_status: unhealthy}}
      - {{address: "{p3}", health_status: unhealthy}}
  - name: nopanic
    common_lb_config:
      healthy_panic_threshold: {{value: 0}}
    endpoints:
      - {{address: "{n0}"}}
      - {{address: "{n1}", health_status: unhealthy}}
      - {{address: "{n2}", health_status: unhealthy}}
      - {{address: "{n3}", health_status: unhealthy}}
  - name: drop
    policy:
      drop_overloads:
        - category: throttle
          drop_percentage: {{numerator: 50, denominator: HUNDRED}}
    endpoints:
      - {{address: "{d0}"}}
"#,
        s0 = a(&spill[0]),
        s1 = a(&spill[1]),
        s2 = a(&spill[2]),
        h0 = a(&healthy[0]),
        h1 = a(&healthy[1]),
        p0 = a(&panic[0]),
        p1 = a(&panic[1]),
        p2 = a(&panic[2]),
        p3 = a(&panic[3]),
        n0 = a(&nopanic[0]),
        n1 = a(&nopanic[1]),
        n2 = a(&nopanic[2]),
        n3 = a(&nopanic[3]),
        d0 = a(&drop[0]),
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("main");

    // P0 healthy: all of it to P0, none to P1.
    assert_eq!(send(addr, "/healthy", 200), BTreeMap::from([(200, 200)]));
    assert_eq!(hits(&healthy), vec![200, 0]);

    // P0 half healthy: 1.4 × 50 % = 70 % to P0's healthy endpoint, 30 %
    // spilled to P1, nothing to the unhealthy one.
    let n = 1000;
    assert_eq!(send(addr, "/spill", n), BTreeMap::from([(200, n)]));
    let h = hits(&spill);
    assert_eq!(h[1], 0, "{h:?}");
    let p0 = f64::from(h[0]) / f64::from(n);
    assert!(near(p0, 0.70, 0.06), "P0 share {p0} ({h:?})");

    // One of four healthy (25 % < 50 %): panic, health ignored, all four
    // served, each pick counted.
    let n = 800;
    assert_eq!(send(addr, "/panic", n), BTreeMap::from([(200, n)]));
    let h = hits(&panic);
    assert!(h.iter().all(|&x| x > 120), "{h:?}");
    assert_eq!(
        mg.metric(
            "meshgate_cluster_lb_healthy_panic_total",
            &[("cluster", "panic")]
        ),
        f64::from(n)
    );
    // The same with panic mode off: only the healthy endpoint.
    assert_eq!(send(addr, "/nopanic", 200), BTreeMap::from([(200, 200)]));
    assert_eq!(hits(&nopanic), vec![200, 0, 0, 0]);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_lb_healthy_panic_total",
            &[("cluster", "nopanic")]
        ),
        0.0
    );

    // drop_overloads 50 %: about half answered 503 at once, counted, and
    // never sent upstream.
    let n = 1000;
    let st = send(addr, "/drop", n);
    let dropped = st.get(&503).copied().unwrap_or(0);
    assert_eq!(dropped + st.get(&200).copied().unwrap_or(0), n, "{st:?}");
    assert!(near(f64::from(dropped) / f64::from(n), 0.5, 0.06), "{st:?}");
    assert_eq!(drop[0].hits(), n - dropped);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_dropped_total",
            &[("cluster", "drop"), ("category", "throttle")]
        ),
        f64::from(dropped)
    );
}

#[test]
fn unsupported_priority_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "common_lb_config: {zone_aware_lb_config: {routing_enabled: {value: 150}}}",
            "common_lb_config.zone_aware_lb_config.routing_enabled.value",
        ),
        (
            "common_lb_config: {healthy_panic_threshold: {value: 150}}",
            "common_lb_config.healthy_panic_threshold.value",
        ),
        (
            "policy: {overprovisioning_factor: 0}",
            "policy.overprovisioning_factor",
        ),
        (
            "policy: {drop_overloads: [{category: a, drop_percentage: {numerator: 1}}, {category: b, drop_percentage: {numerator: 1}}]}",
            "policy.drop_overloads",
        ),
    ];
    for (i, (field, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &p,
            format!(
                "listeners: []\nclusters:\n  - name: c\n    {field}\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{field}: accepted\n{out}");
        assert!(err.contains(want), "{field}: {err}");
    }
}

/// A ClusterLoadAssignment with one locality per priority: (address,
/// health status) lists, priority 0 first.
fn cla_prios(
    name: &str,
    prios: &[&[(SocketAddr, i32)]],
) -> (String, envoy_types::pb::google::protobuf::Any) {
    let c = eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: prios
            .iter()
            .enumerate()
            .map(|(p, eps)| eds::LocalityLbEndpoints {
                priority: p as u32,
                lb_endpoints: eps
                    .iter()
                    .map(|(a, h)| eds::LbEndpoint {
                        host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                            eds::Endpoint {
                                address: Some(sock(*a)),
                                ..Default::default()
                            },
                        )),
                        load_balancing_weight: Some(UInt32Value { value: 1 }),
                        health_status: *h,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    (name.into(), any(ENDPOINT, &c))
}

#[test]
fn eds_priorities_follow_health_updates_through_a_real_control_plane() {
    const HEALTHY: i32 = 1;
    const UNHEALTHY: i32 = 2;
    let bs = backends(3);
    let (a0, a1, a2) = (bs[0].addr, bs[1].addr, bs[2].addr);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // CDS with a panic threshold (translated from common_lb_config).
    let mut c = eds_cluster_msg("svc");
    c.common_lb_config = Some(cds::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(typev3::Percent { value: 40.0 }),
        ..Default::default()
    });
    mgmt.set(CLUSTER, "1", vec![("svc".into(), any(CLUSTER, &c))]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc", 1)])]);
    mgmt.set(
        ENDPOINT,
        "1",
        vec![cla_prios(
            "svc",
            &[&[(a0, HEALTHY), (a1, HEALTHY)], &[(a2, HEALTHY)]],
        )],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("the listener serving", || get(port, "/").is_some());
    let base = hits(&bs);

    // All healthy: P0 takes everything.
    assert_eq!(send(addr, "/", 400), BTreeMap::from([(200, 400)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(h[2], 0, "{h:?}");

    // EDS marks a1 unhealthy (only health changes: the endpoint is kept):
    // P0 at 1.4 × 50 % = 70 %, 30 % to P1.
    mgmt.set_acked(
        ENDPOINT,
        "2",
        vec![cla_prios(
            "svc",
            &[&[(a0, HEALTHY), (a1, UNHEALTHY)], &[(a2, HEALTHY)]],
        )],
    );
    let base = hits(&bs);
    let n = 1000;
    assert_eq!(send(addr, "/", n), BTreeMap::from([(200, n)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(h[1], 0, "{h:?}");
    let p0 = f64::from(h[0]) / f64::from(n);
    assert!(near(p0, 0.70, 0.06), "P0 share {p0} ({h:?})");

    // Both P0 endpoints unhealthy: all of it to P1, no panic.
    mgmt.set_acked(
        ENDPOINT,
        "3",
        vec![cla_prios(
            "svc",
            &[&[(a0, UNHEALTHY), (a1, UNHEALTHY)], &[(a2, HEALTHY)]],
        )],
    );
    let base = hits(&bs);
    assert_eq!(send(addr, "/", 300), BTreeMap::from([(200, 300)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(h, vec![0, 0, 300]);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_lb_healthy_panic_total",
            &[("cluster", "svc")]
        ),
        0.0
    );

    // A ClusterLoadAssignment policy field meshgate does not honour is
    // NACKed by name (the honoured ones: tests/tests/zone_aware.rs).
    let (_, mut cla) = cla_prios("svc", &[&[(a0, HEALTHY)]]);
    let mut m: eds::ClusterLoadAssignment = prost::Message::decode(&cla.value[..]).unwrap();
    m.policy = Some(eds::cluster_load_assignment::Policy {
        endpoint_stale_after: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    cla = any(ENDPOINT, &m);
    mgmt.set(ENDPOINT, "4", vec![("svc".into(), cla)]);
    let nonce = mgmt.wait_sent(ENDPOINT, "4");
    let nack = mgmt.wait_reply(ENDPOINT, &nonce);
    let detail = format!("{:?}", nack.error_detail);
    assert!(detail.contains("policy.endpoint_stale_after"), "{detail}");
}
