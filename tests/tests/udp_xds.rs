//! UDP listeners through xDS: an Envoy UDP listener (`protocol: UDP`, the
//! `envoy.filters.udp_listener.udp_proxy` listener filter, its
//! `UdpProxyConfig` with a `matcher` route) written in Envoy's YAML form,
//! parsed by Envoy's generated protos (`tests/peers/envoy_any.py`) and
//! pushed by the management server of `meshgate_tests::xds`. DNS over UDP
//! to Python DNS servers is served, a pushed change moves new sessions to
//! another cluster, an unsupported field is NACKed by name while the
//! previous config serves, and a removal closes the port. Per-packet load
//! balancing spreads one client's datagrams over both Endpoints.

use meshgate_tests::udp_dns::*;
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(5);

/// Static clusters, each `(name, [endpoints])`.
fn clusters(
    list: &[(&str, &[SocketAddr])],
) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    let mut y = String::new();
    for (name, eps) in list {
        y.push_str(&format!(
            "- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: {name}\n  type: STATIC\n  lb_policy: ROUND_ROBIN\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n"
        ));
        for a in *eps {
            y.push_str(&format!(
                "      - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                a.ip(),
                a.port()
            ));
        }
    }
    envoy_yaml(&y)
}

/// A UDP listener `name` on an ephemeral loopback port whose udp_proxy
/// has `proxy` (YAML lines of `UdpProxyConfig`, indented by 8) and the
/// listener's `udp_listener_config` lines `extra` (indented by 2).
fn udp_listener(name: &str, proxy: &str, extra: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address:
    socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 0}}
  listener_filters:
  - name: envoy.filters.udp_listener.udp_proxy
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
      stat_prefix: {name}
{proxy}
{extra}"#
    )
}

/// `UdpProxyConfig` lines routing to `cluster` with a matcher whose only
/// action is `on_no_match`, as Envoy's docs write it.
fn routed(cluster: &str, more: &str) -> String {
    format!(
        r#"      matcher:
        on_no_match:
          action:
            name: route
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
              cluster: {cluster}
      idle_timeout: 0.5s
{more}"#
    )
}

/// Waits until meshgate ACKs `version` of `type_url` (no error).
fn acked(mgmt: &Mgmt, type_url: &str, version: &str) {
    let nonce = mgmt.wait_sent(type_url, version);
    let r = mgmt.wait_reply(type_url, &nonce);
    assert!(r.error_detail.is_none(), "{r:?}");
}

fn listener_names(mg: &Meshgate) -> Vec<String> {
    mg.listeners()
        .iter()
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_udp_listener_from_xds_serves_dns_then_changes_and_is_removed() {
    let a = DnsServer::start("10.0.0.1");
    let b = DnsServer::start("10.0.0.2");
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        clusters(&[("a", &[a.addr]), ("b", &[b.addr])]),
    );
    let extra = "  udp_listener_config:\n    downstream_socket_config: {max_rx_datagram_size: 512}";
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&udp_listener("dns", &routed("a", ""), extra)),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    acked(&mgmt, LISTENER, "1");
    wait_until("the UDP listener", || {
        listener_names(&mg).contains(&"dns".to_string())
    });
    let addr = mg.listener_addr("dns");
    let c1 = client();
    assert_eq!(
        resolve(&c1, addr, 1, LONG),
        Some(Ipv4Addr::new(10, 0, 0, 1))
    );
    let l = [("listener", "dns")];
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_total", &l), 1.0);

    // udp_listener_config.downstream_socket_config bounds a client's datagram.
    let mut big = query(2);
    big.resize(600, 0);
    c1.send_to(&big, addr).unwrap();
    let drop = [("listener", "dns"), ("reason", "too_large")];
    mg.wait_metric("meshgate_udp_proxy_datagrams_dropped_total", &drop, |v| {
        v == 1.0
    });

    // An unsupported field is NACKed by name; the previous config serves.
    mgmt.set(
        LISTENER,
        "bad",
        envoy_yaml(&udp_listener(
            "dns",
            &routed("b", "      use_original_src_ip: true"),
            "",
        )),
    );
    let nonce = mgmt.wait_sent(LISTENER, "bad");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("Listener 'dns'") && detail.contains("use_original_src_ip"),
        "{detail}"
    );
    assert_eq!(
        resolve(&client(), addr, 3, LONG),
        Some(Ipv4Addr::new(10, 0, 0, 1))
    );

    // A change: new sessions go to cluster b, on the same port.
    mgmt.set_acked(
        LISTENER,
        "2",
        envoy_yaml(&udp_listener("dns", &routed("b", ""), "")),
    );
    assert_eq!(mg.listener_addr("dns"), addr, "the socket is kept");
    assert_eq!(
        resolve(&client(), addr, 4, LONG),
        Some(Ipv4Addr::new(10, 0, 0, 2))
    );

    // A removal: the listener goes, its sessions end on idle and the
    // port is released.
    mgmt.set_acked(LISTENER, "3", vec![]);
    wait_until("the UDP listener removed", || {
        !listener_names(&mg).contains(&"dns".to_string())
    });
    mg.wait_metric("meshgate_udp_proxy_sessions_active", &l, |v| v == 0.0);
    wait_until("the UDP port released", || UdpSocket::bind(addr).is_ok());
}

#[test]
fn per_packet_load_balancing_sends_one_clients_datagrams_to_both_endpoints() {
    let a = DnsServer::start("10.0.0.1");
    let b = DnsServer::start("10.0.0.2");
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", clusters(&[("pair", &[a.addr, b.addr])]));
    // The deprecated `cluster` route, as older control planes send it.
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&udp_listener(
            "pp",
            "      cluster: pair\n      use_per_packet_load_balancing: true",
            "",
        )),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    acked(&mgmt, LISTENER, "1");
    wait_until("the UDP listener", || {
        listener_names(&mg).contains(&"pp".to_string())
    });
    let addr = mg.listener_addr("pp");
    let c = client();
    let mut seen = Vec::new();
    for id in 0..4 {
        // `resolve` checks each answer comes from the listener's address.
        seen.push(resolve(&c, addr, id, LONG).expect("an answer"));
    }
    for want in [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)] {
        assert_eq!(
            seen.iter().filter(|a| **a == want).count(),
            2,
            "round robin per datagram: {seen:?}"
        );
    }
    let l = [("listener", "pp")];
    // One upstream socket per Endpoint the client reached.
    assert_eq!(mg.metric("meshgate_udp_proxy_sessions_total", &l), 2.0);
    let up = [("listener", "pp"), ("direction", "upstream")];
    let down = [("listener", "pp"), ("direction", "downstream")];
    assert_eq!(mg.metric("meshgate_udp_proxy_datagrams_total", &up), 4.0);
    assert_eq!(mg.metric("meshgate_udp_proxy_datagrams_total", &down), 4.0);
}

/// CDS removes the cluster a UDP listener routes to: its datagrams are
/// dropped and counted (`reason="no_route"`, Envoy's
/// `downstream_sess_no_route`) while the listener stays; CDS sends the
/// cluster again and the listener serves again.
#[test]
fn a_cluster_removed_by_cds_drops_the_listeners_datagrams_until_it_returns() {
    let a = DnsServer::start("10.0.0.1");
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", clusters(&[("a", &[a.addr])]));
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&udp_listener("dns", &routed("a", ""), "")),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    acked(&mgmt, LISTENER, "1");
    wait_until("the UDP listener", || {
        listener_names(&mg).contains(&"dns".to_string())
    });
    let addr = mg.listener_addr("dns");
    let c = client();
    assert_eq!(resolve(&c, addr, 1, LONG), Some(Ipv4Addr::new(10, 0, 0, 1)));

    mgmt.set_acked(CLUSTER, "2", vec![]);
    let drop = [("listener", "dns"), ("reason", "no_route")];
    // Queries until one is dropped as no route (the removal lands
    // between two of them); none is answered after that.
    wait_until("a datagram dropped as no route", || {
        let _ = resolve(&client(), addr, 2, Duration::from_millis(200));
        mg.metric("meshgate_udp_proxy_datagrams_dropped_total", &drop) >= 1.0
    });
    assert_eq!(resolve(&c, addr, 3, Duration::from_millis(500)), None);
    assert_eq!(
        resolve(&client(), addr, 4, Duration::from_millis(500)),
        None
    );
    assert!(mg.metric("meshgate_udp_proxy_datagrams_dropped_total", &drop) >= 3.0);
    assert!(listener_names(&mg).contains(&"dns".to_string()));

    mgmt.set_acked(CLUSTER, "3", clusters(&[("a", &[a.addr])]));
    wait_until("served again", || {
        resolve(&client(), addr, 5, Duration::from_millis(300)) == Some(Ipv4Addr::new(10, 0, 0, 1))
    });
}
