//! Zone-aware routing, the EDS `ClusterLoadAssignment.policy` and
//! `drop_overloads` on `tcp_proxy`, end to end through the real binary
//! with real backends (each counts what it served):
//!
//! - zone-aware routing (`common_lb_config.zone_aware_lb_config`, the
//!   bootstrap's `node.locality` and `cluster_manager.local_cluster_name`):
//!   with this proxy's service spread 50/50 over zones a and b and an
//!   upstream cluster with 25 % of its endpoints in zone a, half the
//!   requests stay in zone a and half cross to b (Envoy's residual
//!   routing); when zone a holds at least the local share every request
//!   stays there; a cluster below `min_cluster_size` is balanced plainly;
//!   each decision counted with Envoy's counter names;
//! - EDS `policy` through a real xDS control plane: `overprovisioning_factor`
//!   changes the priority spill, `weighted_priority_health` counts weights,
//!   `drop_overloads` answers its share 503 with the category's counter;
//! - `tcp_proxy` with a cluster's `drop_overloads`: dropped connections are
//!   closed at once, never reach the upstream, and are counted.

use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use envoy_types::pb::google::protobuf::UInt32Value;
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

/// YAML endpoint lines: the first `in_a` backends in zone a, the rest in b.
fn zoned(bs: &[HttpBackend], in_a: usize) -> String {
    bs.iter()
        .enumerate()
        .map(|(i, b)| {
            let z = if i < in_a { "a" } else { "b" };
            format!(
                "      - {{address: \"{}\", locality: {{zone: {z}}}}}\n",
                b.addr
            )
        })
        .collect()
}

#[test]
fn zone_aware_routing_follows_envoys_direct_and_residual_split() {
    let residual = backends(8);
    let direct = backends(4);
    let small = backends(3);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
node:
  id: n1
  locality: {{zone: a}}
cluster_manager:
  local_cluster_name: peers
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
                      - match: {{prefix: /residual}}
                        route: {{cluster: residual}}
                      - match: {{prefix: /direct}}
                        route: {{cluster: direct}}
                      - match: {{prefix: /small}}
                        route: {{cluster: small}}
clusters:
  # This proxy's own service: one host in zone a, one in zone b (never
  # connected to; only its spread over the zones counts).
  - name: peers
    endpoints:
      - {{address: "127.0.0.1:1", locality: {{zone: a}}}}
      - {{address: "127.0.0.1:2", locality: {{zone: b}}}}
  - name: residual
    common_lb_config: {{zone_aware_lb_config: {{}}}}
    endpoints:
{r}  - name: direct
    lb_policy: least_request
    common_lb_config: {{zone_aware_lb_config: {{min_cluster_size: 2}}}}
    endpoints:
{d}  - name: small
    lb_policy: random
    common_lb_config: {{zone_aware_lb_config: {{}}}}
    endpoints:
{s}"#,
        r = zoned(&residual, 2),
        d = zoned(&direct, 2),
        s = zoned(&small, 1),
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("main");
    let counter = |name: &str, cluster: &str| mg.metric(name, &[("cluster", cluster)]);

    // Residual: zone a has 25 % of the upstream but 50 % of the local
    // service: 25 / 50 = half the requests stay in a, the other half go
    // to b (its residual capacity 75 - 50 is all there is).
    let n = 2000;
    assert_eq!(send(addr, "/residual", n), BTreeMap::from([(200, n)]));
    let h = hits(&residual);
    let in_a: u32 = h[..2].iter().sum();
    assert!((share(in_a, n) - 0.5).abs() < 0.05, "zone a share ({h:?})");
    // Per endpoint: a's two take 25 % each, b's six about 8.3 % each.
    assert!(h[2..].iter().all(|&x| x > 100 && x < 240), "{h:?}");
    let sampled = counter("meshgate_cluster_lb_zone_routing_sampled_total", "residual");
    let cross = counter(
        "meshgate_cluster_lb_zone_routing_cross_zone_total",
        "residual",
    );
    assert_eq!(sampled, f64::from(in_a), "sampled picks are zone a's");
    assert_eq!(cross, f64::from(n - in_a));
    assert_eq!(
        counter(
            "meshgate_cluster_lb_zone_routing_all_directly_total",
            "residual"
        ),
        0.0
    );

    // Direct: zone a holds 50 % of the upstream, as much as the local
    // share: everything stays in a.
    let n = 600;
    assert_eq!(send(addr, "/direct", n), BTreeMap::from([(200, n)]));
    let h = hits(&direct);
    assert_eq!(h[2..], [0, 0], "{h:?}");
    assert!(h[0] > 200 && h[1] > 200, "{h:?}");
    assert_eq!(
        counter(
            "meshgate_cluster_lb_zone_routing_all_directly_total",
            "direct"
        ),
        f64::from(n)
    );

    // Below min_cluster_size (3 < 6): plain balancing over all three,
    // counted as too small.
    let n = 900;
    assert_eq!(send(addr, "/small", n), BTreeMap::from([(200, n)]));
    let h = hits(&small);
    assert!(h.iter().all(|&x| x > 200), "{h:?}");
    assert!(counter("meshgate_cluster_lb_zone_cluster_too_small_total", "small") >= 1.0);
    assert_eq!(
        counter("meshgate_cluster_lb_zone_routing_sampled_total", "small")
            + counter(
                "meshgate_cluster_lb_zone_routing_all_directly_total",
                "small"
            ),
        0.0
    );
}

#[test]
fn zone_aware_without_a_local_cluster_is_counted_and_bad_values_are_named() {
    let bs = backends(2);
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
                      - match: {{prefix: /}}
                        route: {{cluster: svc}}
clusters:
  - name: svc
    common_lb_config: {{zone_aware_lb_config: {{min_cluster_size: 1}}}}
    endpoints:
{e}"#,
        e = zoned(&bs, 1),
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("main");
    // No node.locality or local cluster: plain balancing, each pick
    // counted as lb_local_cluster_not_ok (not silently ignored).
    assert_eq!(send(addr, "/", 200), BTreeMap::from([(200, 200)]));
    assert!(hits(&bs).iter().all(|&x| x > 50), "{:?}", hits(&bs));
    assert_eq!(
        mg.metric(
            "meshgate_cluster_lb_local_cluster_not_ok_total",
            &[("cluster", "svc")]
        ),
        200.0
    );

    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cluster_manager: {local_cluster_name: nope}\n",
            "",
            "cluster_manager.local_cluster_name",
        ),
        (
            "",
            "    lb_policy: ring_hash\n    common_lb_config: {zone_aware_lb_config: {}}\n",
            "clusters[0].common_lb_config.zone_aware_lb_config",
        ),
        (
            "",
            "    common_lb_config: {zone_aware_lb_config: {}, locality_weighted_lb_config: {}}\n",
            "clusters[0].common_lb_config.zone_aware_lb_config",
        ),
        (
            "",
            "    common_lb_config: {zone_aware_lb_config: {force_local_zone: {}}}\n",
            "force_local_zone",
        ),
    ];
    for (i, (top, cluster, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &p,
            format!(
                "{top}listeners: []\nclusters:\n  - name: c\n{cluster}    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{top}{cluster}: accepted\n{out}");
        assert!(err.contains(want), "{top}{cluster}: {err}");
    }
}

/// A ClusterLoadAssignment: P0 `(address, healthy, weight)` endpoints,
/// one healthy P1 endpoint, and `policy`.
fn cla_policy(
    p0: &[(SocketAddr, bool, u32)],
    p1: SocketAddr,
    policy: eds::cluster_load_assignment::Policy,
) -> (String, envoy_types::pb::google::protobuf::Any) {
    let ep = |a: SocketAddr, healthy: bool, w: u32| eds::LbEndpoint {
        host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(eds::Endpoint {
            address: Some(sock(a)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value { value: w }),
        health_status: if healthy { 1 } else { 2 },
        ..Default::default()
    };
    let c = eds::ClusterLoadAssignment {
        cluster_name: "svc".into(),
        endpoints: vec![
            eds::LocalityLbEndpoints {
                lb_endpoints: p0.iter().map(|&(a, h, w)| ep(a, h, w)).collect(),
                ..Default::default()
            },
            eds::LocalityLbEndpoints {
                priority: 1,
                lb_endpoints: vec![ep(p1, true, 1)],
                ..Default::default()
            },
        ],
        policy: Some(policy),
        ..Default::default()
    };
    ("svc".into(), any(ENDPOINT, &c))
}

#[test]
fn eds_policy_is_honoured_through_a_real_control_plane() {
    type Policy = eds::cluster_load_assignment::Policy;
    let bs = backends(3);
    let (a0, a1, a2) = (bs[0].addr, bs[1].addr, bs[2].addr);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        vec![("svc".into(), any(CLUSTER, &eds_cluster_msg("svc")))],
    );
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc", 1)])]);
    // P0 half healthy with overprovisioning_factor 1.0: P0 takes 50 %
    // (Envoy's default 1.4 would give it 70 %).
    let factor = |f: u32| Policy {
        overprovisioning_factor: Some(UInt32Value { value: f }),
        ..Default::default()
    };
    mgmt.set(
        ENDPOINT,
        "1",
        vec![cla_policy(
            &[(a0, true, 1), (a1, false, 1)],
            a2,
            factor(100),
        )],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("the listener serving", || get(port, "/").is_some());
    let measure = |n: u32| {
        let base = hits(&bs);
        let st = send(addr, "/", n);
        let h: Vec<u32> = hits(&bs).iter().zip(&base).map(|(a, b)| a - b).collect();
        (st, h)
    };
    let n = 1000;
    let (st, h) = measure(n);
    assert_eq!(st, BTreeMap::from([(200, n)]));
    assert_eq!(h[1], 0, "{h:?}");
    assert!((share(h[0], n) - 0.5).abs() < 0.05, "P0 share ({h:?})");

    // weighted_priority_health: the healthy endpoint carries 3 of P0's 4
    // weight units, so P0's health is 75 % (by count it would be 50 %).
    let mut p = factor(100);
    p.weighted_priority_health = true;
    mgmt.set_acked(
        ENDPOINT,
        "2",
        vec![cla_policy(&[(a0, true, 3), (a1, false, 1)], a2, p)],
    );
    let (st, h) = measure(n);
    assert_eq!(st, BTreeMap::from([(200, n)]));
    assert!((share(h[0], n) - 0.75).abs() < 0.05, "P0 share ({h:?})");

    // drop_overloads from EDS: half answered 503 at once, by category.
    let p = Policy {
        drop_overloads: vec![eds::cluster_load_assignment::policy::DropOverload {
            category: "eds_shed".into(),
            drop_percentage: Some(typev3::FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
        }],
        ..Default::default()
    };
    mgmt.set_acked(
        ENDPOINT,
        "3",
        vec![cla_policy(&[(a0, true, 1), (a1, true, 1)], a2, p)],
    );
    let (st, h) = measure(n);
    let dropped = st.get(&503).copied().unwrap_or(0);
    assert_eq!(dropped + st.get(&200).copied().unwrap_or(0), n, "{st:?}");
    assert!((share(dropped, n) - 0.5).abs() < 0.06, "{st:?}");
    assert_eq!(h.iter().sum::<u32>(), n - dropped, "dropped never sent");
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_dropped_total",
            &[("cluster", "svc"), ("category", "eds_shed")]
        ),
        f64::from(dropped)
    );
}

/// An echo upstream that counts the connections it accepted.
fn echo_backend() -> (SocketAddr, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            a.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn tcp_proxy_drop_overloads_close_connections_at_once_and_count_them() {
    let (up, accepted) = echo_backend();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: l4
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {{cluster: shed}}
clusters:
  - name: shed
    policy:
      drop_overloads:
        - category: l4shed
          drop_percentage: {{numerator: 50, denominator: HUNDRED}}
    endpoints: [{{address: "{up}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("l4");
    let n = 300;
    let mut dropped = 0u32;
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A dropped connection may be closed before the write lands.
        let _ = s.write_all(b"ping");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        match &got[..] {
            b"ping" => {}
            b"" => dropped += 1,
            other => panic!("unexpected bytes {other:?}"),
        }
    }
    assert!((share(dropped, n) - 0.5).abs() < 0.1, "{dropped} of {n}");
    // Dropped connections never reached the upstream.
    assert_eq!(accepted.load(Ordering::SeqCst), n - dropped);
    assert_eq!(
        mg.metric(
            "meshgate_tcp_proxy_cx_dropped_total",
            &[("listener", "l4"), ("cluster", "shed")]
        ),
        f64::from(dropped)
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_dropped_total",
            &[("cluster", "shed"), ("category", "l4shed")]
        ),
        f64::from(dropped)
    );
}

/// A TCP relay to `target` that counts the connections it accepted.
fn counting_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(down) = s else { return };
            a.fetch_add(1, Ordering::SeqCst);
            let Ok(up) = TcpStream::connect(target) else {
                continue;
            };
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, accepted)
}

/// A TCP upstream answering each `ping` with `pong` on the same
/// connection, counting its connections.
fn ping_backend() -> (SocketAddr, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            a.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4];
                while s.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                    if s.write_all(b"pong").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn health_checks_reuse_their_connection_unless_told_not_to() {
    let h1 = HttpBackend::start("h1", Proto::Http1);
    let h1close = HttpBackend::start("h1close", Proto::Http1);
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let (h1_relay, h1_conns) = counting_relay(h1.addr);
    let (h1close_relay, h1close_conns) = counting_relay(h1close.addr);
    let (h2_relay, h2_conns) = counting_relay(h2.addr);
    let (tcp, tcp_conns) = ping_backend();
    let check = |extra: &str, checker: &str| {
        format!(
            "    health_checks:\n      - {{timeout: 1s, interval: 50ms, unhealthy_threshold: 2, healthy_threshold: 1{extra}, {checker}}}\n"
        )
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners: []
clusters:
  - name: h1
{c1}    endpoints: [{{address: "{h1_relay}"}}]
  - name: h1close
{c2}    endpoints: [{{address: "{h1close_relay}"}}]
  - name: h2
{c3}    endpoints: [{{address: "{h2_relay}"}}]
  - name: tcp
{c4}    endpoints: [{{address: "{tcp}"}}]
"#,
        c1 = check("", "http_health_check: {path: /healthz}"),
        c2 = check(
            ", reuse_connection: false",
            "http_health_check: {path: /healthz}"
        ),
        c3 = check(
            "",
            "http_health_check: {path: /healthz, codec_client_type: HTTP2}"
        ),
        c4 = check(
            "",
            // "ping" / "pong" in hex.
            "tcp_health_check: {send: {text: \"70696e67\"}, receive: [{text: \"706f6e67\"}]}"
        ),
    );
    let mg = Meshgate::start(&yaml);
    let passed = |c: &str| {
        mg.metric(
            "meshgate_cluster_health_check_success_total",
            &[("cluster", c)],
        )
    };
    for c in ["h1", "h1close", "h2", "tcp"] {
        wait_until(&format!("8 passing checks of {c}"), || passed(c) >= 8.0);
    }
    // Reused: every check of h1, h2 and tcp on one connection.
    assert_eq!(h1_conns.load(Ordering::SeqCst), 1);
    assert_eq!(h2_conns.load(Ordering::SeqCst), 1);
    assert_eq!(tcp_conns.load(Ordering::SeqCst), 1);
    assert!(
        h1.hits() >= 8 && h2.hits() >= 8,
        "{} {}",
        h1.hits(),
        h2.hits()
    );
    // reuse_connection: false: one connection per check.
    let n = h1close.hits();
    let c = h1close_conns.load(Ordering::SeqCst);
    assert!(n >= 8 && c + 1 >= n, "{c} connections for {n} checks");
    for c in ["h1", "h1close", "h2", "tcp"] {
        assert_eq!(
            mg.metric(
                "meshgate_cluster_health_check_failure_total",
                &[("cluster", c), ("kind", "network")]
            ),
            0.0,
            "{c}"
        );
    }
}
