//! A listener's `socket_options` (Envoy's `core.v3.SocketOption`), from
//! the YAML and from an xDS push: read back from the kernel with `ss`
//! (iproute2) on the listening socket (`SO_RCVBUF`, set before bind: the
//! kernel reports twice the value) and on an accepted downstream
//! connection (`SO_KEEPALIVE`, set after listen and inherited: its
//! keepalive timer shows). A push with a level past a C `int` is NACKed by name.

use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::TcpStream;
use std::process::Command;

fn ss(args: &[&str], port: u16) -> String {
    let out = Command::new("ss")
        .args(args)
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The listening socket has the receive buffer, an accepted one the
/// keepalive timer.
fn check(port: u16) {
    let listening = ss(&["-ltnm"], port);
    assert!(listening.contains("rb131072"), "{listening}");
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let established = wait_for_within(10, "the accepted connection", || {
        let s = ss(&["-tno", "state", "established"], port);
        s.contains("127.0.0.1").then_some(s)
    });
    assert!(established.contains("timer:(keepalive"), "{established}");
}

#[test]
fn yaml_socket_options_reach_the_listening_and_accepted_sockets() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: front
    address: 127.0.0.1:0
    socket_options:
      - {{description: SO_RCVBUF, level: 1, name: 8, int_value: 65536}}
      - {{description: SO_KEEPALIVE, level: 1, name: 9, buf_value: AQAAAA==, state: listening}}
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {{cluster: b}}
clusters:
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        backend.local_addr().unwrap()
    ));
    check(mg.listener_port("front"));
}

fn listener(port: u16, level: u64) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
    envoy_yaml(&format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: front
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  socketOptions:
  - {{description: SO_RCVBUF, level: 1, name: 8, intValue: 65536, state: STATE_PREBIND}}
  - {{description: SO_KEEPALIVE, level: {level}, name: 9, intValue: 1, state: STATE_LISTENING}}
  - {{description: datagram only, level: 1, name: 9999, intValue: 1, type: {{datagram: {{}}}}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        statPrefix: front
        cluster: b
"#
    ))
}

#[test]
fn xds_socket_options() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: b
  type: STATIC
  connectTimeout: 1s
  loadAssignment:
    clusterName: b
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: 127.0.0.1, portValue: {}}}
"#,
            backend.local_addr().unwrap().port()
        )),
    );
    mgmt.set(LISTENER, "1", listener(port, 1));
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    check(port);

    // A level past a C int: NACKed by name, the listener keeps serving.
    mgmt.set(LISTENER, "2", listener(port, 1 << 40));
    let nonce = mgmt.wait_sent(LISTENER, "2");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(detail.contains("socket_options[1].level"), "{detail}");
    check(port);
}
