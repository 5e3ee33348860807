//! Locality-weighted load balancing end to end through the real binary,
//! with real HTTP/1.1 backends (each counts the requests it served):
//! localities weighted 3:1 share about 75/25, a locality without a weight
//! gets nothing, a locality whose endpoints are all unhealthy gets nothing,
//! a half-healthy locality's weight shrinks by Envoy's
//! `weight × min(1, 1.4 × healthy share)`; the same through a real xDS
//! control plane (EDS `LocalityLbEndpoints.locality` and
//! `load_balancing_weight`, CDS `common_lb_config.locality_weighted_lb_config`);
//! bad locality weights refused by name. Slow start: an endpoint EDS adds
//! to a cluster with `round_robin_lb_config.slow_start_config` ramps up
//! over its 2 s window (its share per 500 ms bucket increases).

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::google::protobuf::UInt32Value;
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

fn share(part: u32, n: u32) -> f64 {
    f64::from(part) / f64::from(n)
}

#[test]
fn yaml_localities_share_by_weight_and_availability() {
    let w = backends(5);
    let down = backends(5);
    let half = backends(4);
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
                      - match: {{prefix: /w}}
                        route: {{cluster: w}}
                      - match: {{prefix: /down}}
                        route: {{cluster: down}}
                      - match: {{prefix: /half}}
                        route: {{cluster: half}}
clusters:
  - name: w
    common_lb_config: {{locality_weighted_lb_config: {{}}}}
    endpoints:
      - {{address: "{w0}", locality: {{region: r, zone: a}}, locality_weight: 3}}
      - {{address: "{w1}", locality: {{region: r, zone: a}}, locality_weight: 3}}
      - {{address: "{w2}", locality: {{region: r, zone: b}}, locality_weight: 1}}
      - {{address: "{w3}", locality: {{region: r, zone: b}}, locality_weight: 1}}
      - {{address: "{w4}", locality: {{region: r, zone: c}}}}
  - name: down
    common_lb_config: {{locality_weighted_lb_config: {{}}}}
    endpoints:
      - {{address: "{d0}", locality: {{zone: a}}, locality_weight: 3, health_status: unhealthy}}
      - {{address: "{d1}", locality: {{zone: a}}, locality_weight: 3, health_status: unhealthy}}
      - {{address: "{d2}", locality: {{zone: b}}, locality_weight: 1}}
      - {{address: "{d3}", locality: {{zone: b}}, locality_weight: 1}}
      - {{address: "{d4}", locality: {{zone: b}}, locality_weight: 1}}
  - name: half
    common_lb_config: {{locality_weighted_lb_config: {{}}}}
    endpoints:
      - {{address: "{h0}", locality: {{zone: a}}, locality_weight: 3}}
      - {{address: "{h1}", locality: {{zone: a}}, locality_weight: 3, health_status: unhealthy}}
      - {{address: "{h2}", locality: {{zone: b}}, locality_weight: 1}}
      - {{address: "{h3}", locality: {{zone: b}}, locality_weight: 1}}
"#,
        w0 = a(&w[0]),
        w1 = a(&w[1]),
        w2 = a(&w[2]),
        w3 = a(&w[3]),
        w4 = a(&w[4]),
        d0 = a(&down[0]),
        d1 = a(&down[1]),
        d2 = a(&down[2]),
        d3 = a(&down[3]),
        d4 = a(&down[4]),
        h0 = a(&half[0]),
        h1 = a(&half[1]),
        h2 = a(&half[2]),
        h3 = a(&half[3]),
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("main");

    // 3 : 1, and nothing to the locality without a weight.
    let n = 2000;
    assert_eq!(send(addr, "/w", n), BTreeMap::from([(200, n)]));
    let h = hits(&w);
    assert_eq!(h[4], 0, "{h:?}");
    let za = share(h[0] + h[1], n);
    assert!((za - 0.75).abs() <= 0.05, "zone a share {za} ({h:?})");
    // Round robin within each locality.
    assert!(
        h[0].abs_diff(h[1]) <= 2 && h[2].abs_diff(h[3]) <= 2,
        "{h:?}"
    );

    // Zone a all unhealthy: it gets nothing, zone b serves everything.
    assert_eq!(send(addr, "/down", 600), BTreeMap::from([(200, 600)]));
    assert_eq!(hits(&down)[..2], [0, 0]);

    // Zone a half healthy: 3 × min(1, 1.4 × 0.5) = 2.1 against 1.
    let n = 2000;
    assert_eq!(send(addr, "/half", n), BTreeMap::from([(200, n)]));
    let h = hits(&half);
    assert_eq!(h[1], 0, "{h:?}");
    let za = share(h[0], n);
    assert!((za - 2.1 / 3.1).abs() <= 0.05, "zone a share {za} ({h:?})");
}

#[test]
fn bad_locality_and_slow_start_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let one = r#"endpoints: [{address: "127.0.0.1:1"}]"#;
    let cases = [
        (
            r#"endpoints: [{address: "127.0.0.1:1", locality: {zone: a}, locality_weight: 0}]"#,
            "endpoints[0].locality_weight",
        ),
        (
            r#"endpoints: [{address: "127.0.0.1:1", locality: {zone: a}, locality_weight: 2}, {address: "127.0.0.1:2", locality: {zone: a}, locality_weight: 1}]"#,
            "endpoints[1].locality_weight",
        ),
        (
            r#"endpoints: [{address: "127.0.0.1:1", locality: {zone: a, rack: x}}]"#,
            "rack",
        ),
        (
            "lb_config: {slow_start_config: {slow_start_window: 2s, aggression: 0}}",
            "lb_config.slow_start_config.aggression",
        ),
        (
            "lb_config: {slow_start_config: {slow_start_window: 0s}}",
            "lb_config.slow_start_config.slow_start_window",
        ),
        (
            "lb_config: {slow_start_config: {slow_start_window: 2s, min_weight_percent: 120}}",
            "lb_config.slow_start_config.min_weight_percent",
        ),
        (
            "lb_config: {slow_start_config: {slow_start_window: 2s, ramp: 1}}",
            "ramp",
        ),
    ];
    let write = |i: usize, body: &str| {
        let p = dir.path().join(format!("c{i}.yaml"));
        let body = if body.starts_with("endpoints") {
            body.to_string()
        } else {
            format!("{body}\n    {one}")
        };
        std::fs::write(
            &p,
            format!("listeners: []\nclusters:\n  - name: c\n    {body}\n"),
        )
        .unwrap();
        p
    };
    for (i, (body, want)) in cases.iter().enumerate() {
        let p = write(i, body);
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{body}: accepted\n{out}");
        assert!(err.contains(want), "{body}: {err}");
    }
    // The good shapes are accepted (YAML slow start on both policies).
    for (i, body) in [
        "lb_config: {slow_start_config: {slow_start_window: 2s, aggression: 1.5, min_weight_percent: 20}}",
        "lb_policy: least_request\n    lb_config: {slow_start_config: {slow_start_window: 30s}}",
        "common_lb_config: {locality_weighted_lb_config: {}}",
    ]
    .iter()
    .enumerate()
    {
        let p = write(100 + i, body);
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{body}: {out}{err}");
    }
}

/// (zone, locality weight, [(address, EDS health status)]).
type Zone<'a> = (&'a str, u32, &'a [(SocketAddr, i32)]);

/// A ClusterLoadAssignment with one priority and one entry per locality:
/// (zone, weight, [(address, health status)]).
fn cla_zones(name: &str, zones: &[Zone]) -> (String, envoy_types::pb::google::protobuf::Any) {
    let c = eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: zones
            .iter()
            .map(|(zone, w, eps)| eds::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "r".into(),
                    zone: (*zone).into(),
                    ..Default::default()
                }),
                load_balancing_weight: Some(UInt32Value { value: *w }),
                lb_endpoints: eps
                    .iter()
                    .map(|(a, h)| eds::LbEndpoint {
                        host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                            eds::Endpoint {
                                address: Some(sock(*a)),
                                ..Default::default()
                            },
                        )),
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
fn eds_locality_weights_through_a_real_control_plane() {
    const HEALTHY: i32 = 1;
    const UNHEALTHY: i32 = 2;
    let bs = backends(4);
    let (a0, a1, b0, b1) = (bs[0].addr, bs[1].addr, bs[2].addr, bs[3].addr);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let mut c = eds_cluster_msg("svc");
    c.common_lb_config = Some(cds::cluster::CommonLbConfig {
        locality_config_specifier: Some(
            cds::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            ),
        ),
        ..Default::default()
    });
    mgmt.set(CLUSTER, "1", vec![("svc".into(), any(CLUSTER, &c))]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc", 1)])]);
    mgmt.set(
        ENDPOINT,
        "1",
        vec![cla_zones(
            "svc",
            &[
                ("a", 3, &[(a0, HEALTHY), (a1, HEALTHY)]),
                ("b", 1, &[(b0, HEALTHY), (b1, HEALTHY)]),
            ],
        )],
    );
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("the listener serving", || get(port, "/").is_some());
    let base = hits(&bs);

    // 3 : 1.
    let n = 2000;
    assert_eq!(send(addr, "/", n), BTreeMap::from([(200, n)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    let za = share(h[0] + h[1], n);
    assert!((za - 0.75).abs() <= 0.05, "zone a share {za} ({h:?})");

    // EDS flips the weights to 1 : 3.
    mgmt.set_acked(
        ENDPOINT,
        "2",
        vec![cla_zones(
            "svc",
            &[
                ("a", 1, &[(a0, HEALTHY), (a1, HEALTHY)]),
                ("b", 3, &[(b0, HEALTHY), (b1, HEALTHY)]),
            ],
        )],
    );
    let base = hits(&bs);
    assert_eq!(send(addr, "/", n), BTreeMap::from([(200, n)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    let za = share(h[0] + h[1], n);
    assert!((za - 0.25).abs() <= 0.05, "zone a share {za} ({h:?})");

    // EDS marks all of zone b unhealthy: it gets nothing.
    mgmt.set_acked(
        ENDPOINT,
        "3",
        vec![cla_zones(
            "svc",
            &[
                ("a", 1, &[(a0, HEALTHY), (a1, HEALTHY)]),
                ("b", 3, &[(b0, UNHEALTHY), (b1, UNHEALTHY)]),
            ],
        )],
    );
    let base = hits(&bs);
    assert_eq!(send(addr, "/", 400), BTreeMap::from([(200, 400)]));
    let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(h[2..], [0, 0], "{h:?}");

    // A bad zone-aware setting is refused by name (NACK).
    c.common_lb_config = Some(cds::cluster::CommonLbConfig {
        locality_config_specifier: Some(
            cds::cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(
                cds::cluster::common_lb_config::ZoneAwareLbConfig {
                    routing_enabled: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                        value: 150.0,
                    }),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    });
    mgmt.set(CLUSTER, "2", vec![("svc".into(), any(CLUSTER, &c))]);
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let nack = mgmt.wait_reply(CLUSTER, &nonce);
    let detail = format!("{:?}", nack.error_detail);
    assert!(
        detail.contains("zone_aware_lb_config.routing_enabled.value"),
        "{detail}"
    );
}

#[test]
fn eds_new_endpoint_ramps_up_with_slow_start() {
    let bs = backends(2);
    let (a0, b0) = (bs[0].addr, bs[1].addr);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let mut c = eds_cluster_msg("svc");
    c.lb_config = Some(cds::cluster::LbConfig::RoundRobinLbConfig(
        cds::cluster::RoundRobinLbConfig {
            slow_start_config: Some(cds::cluster::SlowStartConfig {
                slow_start_window: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                aggression: Some(core::RuntimeDouble {
                    default_value: 1.0,
                    runtime_key: "slow_start.aggression".into(),
                }),
                min_weight_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                    value: 10.0,
                }),
            }),
        },
    ));
    mgmt.set(CLUSTER, "1", vec![("svc".into(), any(CLUSTER, &c))]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc", 1)])]);
    mgmt.set(
        ENDPOINT,
        "1",
        vec![cla_zones("svc", &[("a", 1, &[(a0, 1)])])],
    );
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("the listener serving", || get(port, "/").is_some());
    // The first endpoint's own window (from when the cluster was built,
    // before the first answer) passes while it serves alone.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2300) {
        assert_eq!(send(addr, "/", 20), BTreeMap::from([(200, 20)]));
    }
    assert_eq!(bs[1].hits(), 0);

    // EDS adds b0: its share per 500 ms bucket grows over the 2 s window
    // (weight scale 0.1 → 1: about 11 % → 47 %), then about half.
    mgmt.set_acked(
        ENDPOINT,
        "2",
        vec![cla_zones("svc", &[("a", 1, &[(a0, 1), (b0, 1)])])],
    );
    let start = Instant::now();
    let mut shares = Vec::new();
    for k in 1..=5u32 {
        let base = hits(&bs);
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(500) * k {
            assert_eq!(send(addr, "/", 10), BTreeMap::from([(200, 10)]));
            n += 10;
        }
        let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
        assert_eq!(h[0] + h[1], n);
        assert!(n >= 100, "too few requests in a bucket: {n}");
        shares.push(share(h[1], n));
    }
    eprintln!("new endpoint's share per 500 ms: {shares:?}");
    assert!(shares[0] < 0.25, "{shares:?}");
    assert!(
        shares[0] < shares[1] && shares[1] < shares[2] && shares[2] < shares[3] + 0.03,
        "not increasing: {shares:?}"
    );
    assert!(shares[3] > shares[1], "{shares:?}");
    assert!((shares[4] - 0.5).abs() <= 0.08, "{shares:?}");
}
