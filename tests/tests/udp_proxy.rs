//! The UDP proxy listener end to end: DNS over UDP through meshgate to
//! small stdlib Python DNS servers (each answers `test.meshgate.` with its
//! own address, so an answer names the endpoint that served it), a raw UDP
//! client downstream; source_ip hashing, the idle timeout, the session
//! bound and the datagram size bound, with their counters.

use meshgate_tests::udp_dns::*;
use meshgate_tests::*;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(5);

fn start(listeners: &str, clusters: &str) -> Meshgate {
    Meshgate::start(&format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{listeners}\nclusters:\n{clusters}\n"
    ))
}

#[test]
fn dns_over_udp_is_answered_through_the_proxy() {
    let dns = DnsServer::start("10.1.2.3");
    let mg = start(
        "  - name: dns\n    address: 127.0.0.1:0\n    udp_proxy: {cluster: dns}",
        &format!(
            "  - name: dns\n    endpoints: [{{address: \"{}\"}}]",
            dns.addr
        ),
    );
    let addr = mg.listener_addr("dns");
    let c = client();
    for id in [7, 8] {
        assert_eq!(
            resolve(&c, addr, id, LONG),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
    }
    let l = [("listener", "dns")];
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_total", &l), 1.0);
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_active", &l), 1.0);
    let up = [("listener", "dns"), ("direction", "upstream")];
    let down = [("listener", "dns"), ("direction", "downstream")];
    assert_eq!(mg.metric("meshgate_udp_proxy_datagrams_total", &up), 2.0);
    assert_eq!(mg.metric("meshgate_udp_proxy_datagrams_total", &down), 2.0);
    assert_eq!(
        mg.metric("meshgate_udp_proxy_bytes_total", &up),
        2.0 * query(0).len() as f64
    );
    assert!(mg.metric("meshgate_udp_proxy_bytes_total", &down) > 2.0 * query(0).len() as f64);
}

#[test]
fn source_ip_hash_keeps_a_client_on_one_endpoint() {
    let a = DnsServer::start("10.0.0.1");
    let b = DnsServer::start("10.0.0.2");
    let eps = format!("[{{address: \"{}\"}}, {{address: \"{}\"}}]", a.addr, b.addr);
    let mg = start(
        "  - name: hashed\n    address: 127.0.0.1:0\n    udp_proxy:\n      cluster: ring\n      hash_policies: [{source_ip: true}]\n\
         \x20 - name: plain\n    address: 127.0.0.1:0\n    udp_proxy: {cluster: rr}",
        &format!(
            "  - name: ring\n    lb_policy: ring_hash\n    endpoints: {eps}\n  - name: rr\n    endpoints: {eps}"
        ),
    );
    let hashed = mg.listener_addr("hashed");
    let plain = mg.listener_addr("plain");
    // Eight sessions (eight client ports) from one IP: one endpoint.
    let got: std::collections::BTreeSet<Ipv4Addr> = (0..8)
        .map(|i| resolve(&client(), hashed, i, LONG).expect("answer"))
        .collect();
    assert_eq!(got.len(), 1, "one client IP, one endpoint: {got:?}");
    // Without hashing, round robin spreads sessions over both.
    let got: std::collections::BTreeSet<Ipv4Addr> = (0..4)
        .map(|i| resolve(&client(), plain, i, LONG).expect("answer"))
        .collect();
    assert_eq!(got.len(), 2, "round robin uses both endpoints: {got:?}");
}

#[test]
fn an_idle_session_ends() {
    let dns = DnsServer::start("10.1.2.3");
    let mg = start(
        "  - name: dns\n    address: 127.0.0.1:0\n    udp_proxy: {cluster: dns, idle_timeout: 300ms}",
        &format!(
            "  - name: dns\n    endpoints: [{{address: \"{}\"}}]",
            dns.addr
        ),
    );
    let addr = mg.listener_addr("dns");
    let c = client();
    assert!(resolve(&c, addr, 1, LONG).is_some());
    let l = [("listener", "dns")];
    mg.wait_metric("meshgate_udp_proxy_sessions_active", &l, |v| v == 0.0);
    // The same client gets a new session.
    assert!(resolve(&c, addr, 2, LONG).is_some());
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_total", &l), 2.0);
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_active", &l), 1.0);
}

#[test]
fn sessions_past_max_sessions_are_dropped_and_counted() {
    let dns = DnsServer::start("10.1.2.3");
    let mg = start(
        "  - name: dns\n    address: 127.0.0.1:0\n    udp_proxy: {cluster: dns, max_sessions: 2}",
        &format!(
            "  - name: dns\n    endpoints: [{{address: \"{}\"}}]",
            dns.addr
        ),
    );
    let addr = mg.listener_addr("dns");
    let (a, b) = (client(), client());
    assert!(resolve(&a, addr, 1, LONG).is_some());
    assert!(resolve(&b, addr, 2, LONG).is_some());
    // A flood of new clients: none gets a session.
    let flood: Vec<UdpSocket> = (0..20).map(|_| client()).collect();
    for (i, c) in flood.iter().enumerate() {
        c.send_to(&query(100 + i as u16), addr).unwrap();
    }
    let drop = [("listener", "dns"), ("reason", "session_overflow")];
    mg.wait_metric("meshgate_udp_proxy_datagrams_dropped_total", &drop, |v| {
        v == 20.0
    });
    let mut buf = [0u8; 64];
    flood[0]
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        flood[0].recv_from(&mut buf).is_err(),
        "no answer past the bound"
    );
    // The existing sessions go on.
    assert!(resolve(&a, addr, 3, LONG).is_some());
    assert!(resolve(&b, addr, 4, LONG).is_some());
    let l = [("listener", "dns")];
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_total", &l), 2.0);
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_active", &l), 2.0);
}

#[test]
fn an_oversized_datagram_is_dropped_and_counted() {
    let dns = DnsServer::start("10.1.2.3");
    let mg = start(
        "  - name: dns\n    address: 127.0.0.1:0\n    udp_proxy:\n      cluster: dns\n      upstream_socket_config: {max_rx_datagram_size: 100}",
        &format!(
            "  - name: dns\n    endpoints: [{{address: \"{}\"}}]",
            dns.addr
        ),
    );
    let addr = mg.listener_addr("dns");
    let c = client();
    let mut big = query(9);
    big.resize(300, 0);
    c.send_to(&big, addr).unwrap();
    let drop = [("listener", "dns"), ("reason", "too_large")];
    mg.wait_metric("meshgate_udp_proxy_datagrams_dropped_total", &drop, |v| {
        v == 1.0
    });
    let up = [("listener", "dns"), ("direction", "upstream")];
    assert_eq!(mg.metric("meshgate_udp_proxy_datagrams_total", &up), 0.0);
    // A datagram within the bound is served.
    assert_eq!(
        resolve(&c, addr, 10, LONG),
        Some(Ipv4Addr::new(10, 1, 2, 3))
    );
}

#[test]
fn bad_udp_proxy_config_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, field) in [
        (
            "udp_proxy: {cluster: nope}",
            "listeners[0].udp_proxy.cluster",
        ),
        (
            "udp_proxy: {cluster: c, hash_policies: [{source_ip: false}]}",
            "listeners[0].udp_proxy.hash_policies[0].source_ip",
        ),
        (
            "udp_proxy: {cluster: c, upstream_socket_config: {max_rx_datagram_size: 70000}}",
            "listeners[0].udp_proxy.upstream_socket_config.max_rx_datagram_size",
        ),
        ("udp_proxy: {cluster: c, matcher: {}}", "matcher"),
    ] {
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            format!(
                "listeners:\n  - name: u\n    address: 127.0.0.1:0\n    {cfg}\nclusters:\n  - name: c\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_ne!(code, 0, "{cfg} must be refused: {out}");
        assert!(err.contains(field), "{cfg}: the error names {field}: {err}");
    }
}
