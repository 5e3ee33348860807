//! RPC routing driven by Envoy's `envoy.filters.network.generic_proxy`:
//! written in Envoy's YAML form, parsed by Envoy's generated protos
//! (`tests/peers/envoy_any.py`) and pushed by the management server of
//! `meshgate_tests::xds`. Real sofa-rpc-node consumers and providers.
//! The Dubbo codec (`DubboCodecConfig`) with a virtual host on the
//! service, a `matcher_list` over method and properties (`and_matcher`,
//! `or_matcher`), and a top-level `matcher_tree` on the method; a call
//! whose virtual host has no matching route is not routed by the
//! top-level routes (Envoy's virtual host rule). The Bolt codec through
//! meshgate's `meshgate.codecs.Bolt` type in a `TypedStruct`. A push with
//! a `not_matcher` is NACKed by name while the old routes serve.

use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::xds::*;
use meshgate_tests::*;

const ECHO: &str = "com.meshgate.Echo";
const GP: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy";

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

fn input(kind: &str, property: &str) -> String {
    let prop = if property.is_empty() {
        String::new()
    } else {
        format!(", propertyName: {property}")
    };
    format!("{{name: {kind}, typedConfig: {{'@type': '{GP}.matcher.v3.{kind}'{prop}}}}}")
}

fn action(cluster: &str) -> String {
    format!(
        "{{action: {{name: route, typedConfig: {{'@type': '{GP}.action.v3.RouteAction', name: to-{cluster}, cluster: {cluster}}}}}}}"
    )
}

/// The Dubbo listener; `first` is the first predicate of the Echo host.
fn dubbo_listener(port: u16, first: &str) -> String {
    let method = input("MethodMatchInput", "");
    let group = input("PropertyMatchInput", "group");
    let version = input("PropertyMatchInput", "version");
    let (to_a, to_b, to_c) = (action("a"), action("b"), action("c"));
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: generic-dubbo
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.generic_proxy
      typedConfig:
        '@type': {GP}.v3.GenericProxy
        statPrefix: outbound|20880||echo
        codecConfig:
          name: envoy.generic_proxy.codecs.dubbo
          typedConfig:
            '@type': {GP}.codecs.dubbo.v3.DubboCodecConfig
        filters:
        - name: envoy.filters.generic.router
          typedConfig:
            '@type': {GP}.router.v3.Router
        routeConfig:
          name: outbound|20880||echo
          virtualHosts:
          - name: echo
            hosts: [{ECHO}]
            routes:
              matcherList:
                matchers:
                - predicate:{first}
                  onMatch: {to_c}
                - predicate:
                    andMatcher:
                      predicate:
                      - singlePredicate: {{input: {version}, valueMatch: {{prefix: '2.'}}}}
                      - orMatcher:
                          predicate:
                          - singlePredicate: {{input: {method}, valueMatch: {{exact: echo}}}}
                          - singlePredicate: {{input: {method}, valueMatch: {{exact: describe}}}}
                  onMatch: {to_b}
          routes:
            matcherTree:
              input: {method}
              exactMatchMap:
                map:
                  echo:
                    action:
                      name: route
                      typedConfig:
                        '@type': {GP}.action.v3.RouteAction
                        weightedClusters:
                          clusters:
                          - {{name: a, weight: 1}}
            onNoMatch: {to_a}
"#,
        first = first.replace("GROUP", &group).replace("METHOD", &method),
    )
}

const CANARY: &str = r#"
                    andMatcher:
                      predicate:
                      - singlePredicate: {input: METHOD, valueMatch: {exact: echo}}
                      - singlePredicate: {input: GROUP, valueMatch: {exact: canary}}"#;

fn bolt_listener(port: u16) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: generic-bolt
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.generic_proxy
      typedConfig:
        '@type': {GP}.v3.GenericProxy
        statPrefix: bolt
        codecConfig:
          name: meshgate.codecs.bolt
          typedConfig:
            '@type': type.googleapis.com/xds.type.v3.TypedStruct
            typeUrl: type.googleapis.com/meshgate.codecs.Bolt
            value: {{}}
        filters:
        - name: envoy.filters.generic.router
          typedConfig:
            '@type': {GP}.router.v3.Router
        routeConfig:
          name: bolt
          routes:
            matcherList:
              matchers:
              - predicate:
                  singlePredicate:
                    input: {service}
                    valueMatch: {{prefix: com.meshgate.}}
                onMatch: {to}
"#,
        service = input("ServiceMatchInput", ""),
        to = action("bolt"),
    )
}

fn call(port: u16, iface: &str, method: &str, args: &str, version: &str, group: &str) -> String {
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

fn no_route(port: u16, iface: &str, method: &str, args: &str, version: &str) {
    let r = node_call("dubbo", port, iface, method, args, 1, 1, 3000, version, "");
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(
        r.errors.iter().any(|e| e.contains("no route")),
        "{:?}",
        r.errors
    );
}

#[test]
fn generic_proxy_routes_dubbo_and_bolt_by_matcher_tree() {
    let providers: Vec<Provider> = ["a", "b", "c"]
        .iter()
        .map(|n| Provider::start("dubbo", n))
        .collect();
    let bolt = Provider::start("bolt", "bolt");
    let (port, bolt_port) = (free_port(), free_port());
    let mgmt = Mgmt::start(0);
    let mut clusters: String = ["a", "b", "c"]
        .iter()
        .zip(&providers)
        .map(|(n, p)| cluster(n, p.port))
        .collect();
    clusters.push_str(&cluster("bolt", bolt.port));
    mgmt.set(CLUSTER, "1", envoy_yaml(&clusters));
    let listeners = |first: &str| {
        envoy_yaml(&format!(
            "{}{}",
            dubbo_listener(port, first),
            bolt_listener(bolt_port)
        ))
    };
    mgmt.set(LISTENER, "1", listeners(CANARY));
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    wait_listening(([127, 0, 0, 1], bolt_port).into());

    // The Echo host: method echo in group canary, then version 2.x with
    // method echo or describe.
    assert_eq!(call(port, ECHO, "echo", r#"["x"]"#, "1.0", "canary"), "c");
    assert_eq!(call(port, ECHO, "echo", r#"["x"]"#, "2.0", ""), "b");
    assert_eq!(call(port, ECHO, "describe", r#"["x"]"#, "2.0", ""), "b");
    // Echo's host matched but none of its routes: no route, although the
    // top-level routes would take it.
    no_route(port, ECHO, "echo", r#"["x"]"#, "1.0");
    // Another service: the top-level tree (method echo), then its
    // on_no_match.
    let other = "com.meshgate.Other";
    assert_eq!(call(port, other, "echo", r#"["x"]"#, "1.0", ""), "a");
    assert_eq!(call(port, other, "describe", r#"["x"]"#, "1.0", ""), "a");
    assert!(mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "c")]) >= 1.0);

    // Bolt through meshgate's codec type.
    let r = node_call(
        "bolt", bolt_port, ECHO, "echo", r#"["x"]"#, 4, 2, 3000, "1.0", "",
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.from.get("bolt"), Some(&4), "{:?}", r.from);

    // A not_matcher cannot be honoured: NACKed by name, the routes pushed
    // before keep serving.
    let not = r#"
                    notMatcher:
                      singlePredicate: {input: METHOD, valueMatch: {exact: echo}}"#;
    mgmt.set(LISTENER, "2", listeners(not));
    let nonce = mgmt.wait_sent(LISTENER, "2");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(detail.contains("predicate.not_matcher"), "{detail}");
    assert_eq!(call(port, ECHO, "echo", r#"["x"]"#, "1.0", "canary"), "c");
}
