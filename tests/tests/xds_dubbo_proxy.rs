//! Dubbo routing driven by xDS: Envoy's `envoy.filters.network.dubbo_proxy`
//! (what Istio with Aeraki sends for Dubbo services), written in Envoy's
//! YAML form, parsed by Envoy's generated protos (`tests/peers/envoy_any.py`)
//! and pushed by the management server of `meshgate_tests::xds`. Real
//! sofa-rpc-node consumers and providers: calls are routed by interface
//! (exact and wildcard), group, version and method in Envoy's order; an
//! unroutable call gets Dubbo's SERVICE_NOT_FOUND; a push meshgate cannot
//! honour (`params_match`) is NACKed by name while the old routes serve;
//! a cluster CDS removes answers its calls "cluster not found" until it
//! comes back.

use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::xds::*;
use meshgate_tests::*;

const ECHO: &str = "com.meshgate.Echo";

fn cluster(name: &str, port: u16) -> String {
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
            socketAddress: {{address: 127.0.0.1, portValue: {port}}}
"#
    )
}

/// The listener: three route configurations, tried in order.
fn listener(port: u16, extra_route: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: dubbo
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.dubbo_proxy
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy
        statPrefix: outbound|20880||echo
        dubboFilters:
        - name: envoy.filters.dubbo.router
        multipleRouteConfig:
          name: outbound|20880||echo
          routeConfig:
          - name: canary
            interface: {ECHO}
            group: canary
            routes:
            - match:
                method:
                  name: {{exact: echo}}
              route: {{cluster: c}}
          - name: v2
            interface: {ECHO}
            version: '2.0'
            routes:
            - match:
                method:
                  name: {{prefix: ec}}
              route: {{cluster: b}}
          - name: rest
            interface: com.meshgate.*
            routes:{extra_route}
            - match:
                method:
                  name: {{exact: echo}}
              route:
                weightedClusters:
                  clusters:
                  - {{name: a, weight: 1}}
"#
    )
}

fn calls_from(
    port: u16,
    iface: &str,
    method: &str,
    args: &str,
    version: &str,
    group: &str,
) -> String {
    let r = node_call(
        "dubbo", port, iface, method, args, 4, 1, 3000, version, group,
    );
    assert!(
        r.errors.is_empty(),
        "{iface} {method} {version} {group}: {:?}",
        r.errors
    );
    assert_eq!(r.from.values().sum::<u64>(), 4, "{:?}", r.from);
    assert_eq!(r.from.len(), 1, "{:?}", r.from);
    r.from.keys().next().unwrap().clone()
}

#[test]
fn dubbo_proxy_routes_by_interface_group_version_and_method() {
    let providers: Vec<Provider> = ["a", "b", "c"]
        .iter()
        .map(|n| Provider::start("dubbo", n))
        .collect();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let clusters: String = ["a", "b", "c"]
        .iter()
        .zip(&providers)
        .map(|(n, p)| cluster(n, p.port))
        .collect();
    mgmt.set(CLUSTER, "1", envoy_yaml(&clusters));
    mgmt.set(LISTENER, "1", envoy_yaml(&listener(port, "")));
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    wait_listening(([127, 0, 0, 1], port).into());

    // Group canary: the first route configuration.
    assert_eq!(
        calls_from(port, ECHO, "echo", r#"["x"]"#, "1.0", "canary"),
        "c"
    );
    // Version 2.0 (no group): the second.
    assert_eq!(calls_from(port, ECHO, "echo", r#"["x"]"#, "2.0", ""), "b");
    // Neither: the wildcard interface, for Echo and for Other.
    assert_eq!(calls_from(port, ECHO, "echo", r#"["x"]"#, "1.0", ""), "a");
    assert_eq!(
        calls_from(port, "com.meshgate.Other", "echo", r#"["x"]"#, "1.0", ""),
        "a"
    );
    // A method no route names: Dubbo's SERVICE_NOT_FOUND from meshgate.
    let r = node_call("dubbo", port, ECHO, "plus", "[1, 2]", 1, 1, 3000, "1.0", "");
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(
        r.errors.iter().any(|e| e.contains("no route")),
        "{:?}",
        r.errors
    );
    // The upstream clusters were given the Dubbo protocol by their use.
    assert!(mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "a")]) >= 1.0);

    // Parameter matching cannot be honoured: NACKed by name, and the
    // routes pushed before keep serving.
    let params = r#"
            - match:
                method:
                  name: {exact: plus}
                  paramsMatch:
                    0: {exactMatch: '1'}
              route: {cluster: b}"#;
    mgmt.set(LISTENER, "2", envoy_yaml(&listener(port, params)));
    let nonce = mgmt.wait_sent(LISTENER, "2");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(detail.contains("params_match"), "{detail}");
    assert_eq!(calls_from(port, ECHO, "echo", r#"["x"]"#, "1.0", ""), "a");

    // CDS removes cluster b while the version 2.0 route names it: as in
    // Envoy, its calls get an error response (cluster not found, Dubbo's
    // unavailable status), the other routes serve; CDS sending it again
    // serves it.
    let without_b: String = ["a", "c"]
        .iter()
        .zip([&providers[0], &providers[2]])
        .map(|(n, p)| cluster(n, p.port))
        .collect();
    mgmt.set(CLUSTER, "3", envoy_yaml(&without_b));
    let nonce = mgmt.wait_sent(CLUSTER, "3");
    let r = mgmt.wait_reply(CLUSTER, &nonce);
    assert!(r.error_detail.is_none(), "{r:?}");
    let r = node_call(
        "dubbo", port, ECHO, "echo", r#"["x"]"#, 1, 1, 3000, "2.0", "",
    );
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(
        r.errors.iter().any(|e| e.contains("cluster not found")),
        "{:?}",
        r.errors
    );
    assert_eq!(
        calls_from(port, ECHO, "echo", r#"["x"]"#, "1.0", "canary"),
        "c"
    );
    mgmt.set(CLUSTER, "4", envoy_yaml(&clusters));
    let nonce = mgmt.wait_sent(CLUSTER, "4");
    let r = mgmt.wait_reply(CLUSTER, &nonce);
    assert!(r.error_detail.is_none(), "{r:?}");
    assert_eq!(calls_from(port, ECHO, "echo", r#"["x"]"#, "2.0", ""), "b");
}
