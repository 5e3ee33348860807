//! Sidecar mode end to end, in network namespaces the tests create
//! (`meshgate_tests::netns`): `meshgate capture` installs nftables or
//! iptables rules in the app namespace, meshgate runs there as its own uid
//! (exempt from capture by owner match), the services and the callers of
//! the app live in the svc namespace. Outbound: a `use_original_dst`
//! listener on 15001 hands service VIPs to their virtual listeners and
//! passes unknown destinations through an ORIGINAL_DST cluster. Inbound: a
//! 15006 listener with jwt_authn + rbac in front of the local app.
//! Needs root; skipped with the reason printed otherwise (not in CI).

use meshgate_core::metrics::names::*;
use meshgate_tests::jwt::{JwtPeer, now};
use meshgate_tests::netns::{self, APP_IP, MESHGATE_UID, Pair, SVC_IP};
use serde_json::json;

/// A service VIP that exists nowhere: only capture makes it answer.
const VIP: &str = "10.96.0.10";

fn outbound_yaml() -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    use_original_dst: true
    listener_filters:
      - name: envoy.filters.listener.original_dst
    filter_chains:
      - name: passthrough
        filters:
          - name: tcp_proxy
            config: {{cluster: passthrough}}
      - name: lan
        filter_chain_match: {{prefix_ranges: ["10.77.0.0/24"]}}
        filters:
          - name: tcp_proxy
            config: {{cluster: lan_passthrough}}
  - name: reviews_vip
    address: {VIP}:80
    bind_to_port: false
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: reviews
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: reviews}}
clusters:
  - name: reviews
    connect_timeout: 1s
    endpoints:
      - address: {SVC_IP}:9081
      - address: {SVC_IP}:9082
  - name: passthrough
    type: original_dst
    lb_policy: cluster_provided
    connect_timeout: 1s
  - name: lan_passthrough
    type: original_dst
    lb_policy: cluster_provided
    connect_timeout: 1s
    cleanup_interval: 60s
"#
    )
}

fn served_by(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not the echo's JSON: {body}"));
    v["served_by"].as_str().unwrap_or_default().to_string()
}

fn capture(pair: &Pair, args: &[&str]) -> String {
    let bin = meshgate_tests::bin();
    let mut all = vec![bin.to_str().unwrap(), "capture"];
    all.extend(args);
    pair.ok(&pair.app, &all)
}

#[test]
fn outbound_capture_routes_vips_to_endpoints_and_passes_unknown_destinations_through() {
    if netns::skip() {
        return;
    }
    let mut pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let svc = pair.svc.clone();
    let app = pair.app.clone();
    netns::start_echo(
        &mut pair,
        &svc,
        dir.path(),
        &["10.77.0.2:9081", "10.77.0.2:9082", "10.77.0.2:9100"],
    );
    let admin = netns::start_meshgate(&mut pair, dir.path(), &outbound_yaml());
    let before = pair.ruleset(&app);
    let printed = capture(
        &pair,
        &["--uid", &MESHGATE_UID.to_string(), "--inbound-ports", ""],
    );
    assert!(printed.contains("redirect to :15001"), "{printed}");

    // The VIP answers through its virtual listener, from both endpoints.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (code, body) = pair.curl(&app, &format!("http://{VIP}/hello"), &[]);
        assert_eq!(code, 200, "{body}");
        seen.insert(served_by(&body));
    }
    let want: std::collections::BTreeSet<String> = ["10.77.0.2:9081", "10.77.0.2:9082"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, want);
    // An address meshgate has no listener for: passed through, unchanged.
    let (code, body) = pair.curl(&app, &format!("http://{SVC_IP}:9100/direct"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(served_by(&body), "10.77.0.2:9100");

    let m = |name: &str, labels: &[(&str, &str)]| netns::metric(&pair, &app, &admin, name, labels);
    assert_eq!(
        m(
            LISTENER_ORIGINAL_DST_HANDOFF_TOTAL,
            &[("listener", "outbound"), ("target", "reviews_vip")]
        ),
        4.0
    );
    // Five captured connections, no more: meshgate's own upstream
    // connections (9081, 9082, 9100) were not captured again.
    assert_eq!(
        m(LISTENER_DOWNSTREAM_CX_TOTAL, &[("listener", "outbound")]),
        5.0
    );
    // The destination matched the chain of its prefix (prefix_ranges).
    let lan = [("cluster", "lan_passthrough")];
    assert_eq!(m(CLUSTER_ORIGINAL_DST_HOSTS, &lan), 1.0);
    assert_eq!(m(CLUSTER_UPSTREAM_CX_TOTAL, &lan), 1.0);
    assert_eq!(
        m(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "passthrough")]),
        0.0
    );
    // A connection to the capture port itself is not passed through (it
    // would come back to 15001 for ever).
    let (code, _) = pair.curl(&app, "http://127.0.0.1:15001/", &[]);
    assert_eq!(code, 0);
    assert_eq!(
        m(
            LISTENER_ORIGINAL_DST_REFUSED_TOTAL,
            &[("listener", "outbound"), ("reason", "not_redirected")]
        ),
        1.0
    );

    // --remove takes away exactly what capture installed.
    capture(&pair, &["--remove"]);
    assert_eq!(pair.ruleset(&app), before);
    let (code, body) = pair.curl(&app, &format!("http://{SVC_IP}:9100/after"), &[]);
    assert_eq!((code, served_by(&body).as_str()), (200, "10.77.0.2:9100"));
    // Not captured any more: the outbound listener saw only the six above.
    assert_eq!(
        m(LISTENER_DOWNSTREAM_CX_TOTAL, &[("listener", "outbound")]),
        6.0
    );
}

fn inbound_yaml(jwks: &str, extra_listener: &str) -> String {
    let jwks = serde_json::to_string(jwks).unwrap();
    format!(
        r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: inbound
    address: 0.0.0.0:15006
{extra_listener}    listener_filters:
      - name: envoy.filters.listener.original_dst
    filter_chains:
      - name: app_http
        filter_chain_match: {{destination_port: 8080}}
        filters:
          - name: proxy
            config:
              stream_filters:
                - name: jwt_authn
                  config:
                    providers:
                      mesh:
                        issuer: https://mesh.example
                        local_jwks: {{inline_string: {jwks}}}
                        payload_in_metadata: payload
                    rules:
                      - match: {{prefix: /}}
                        requires: {{provider_name: mesh}}
                - name: rbac
                  config:
                    rules:
                      policies:
                        alice-only:
                          permissions: [{{any: true}}]
                          principals:
                            - metadata:
                                filter: envoy.filters.http.jwt_authn
                                path: [{{key: payload}}, {{key: sub}}]
                                value: {{string_match: {{exact: alice}}}}
              route_config:
                virtual_hosts:
                  - name: local
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: local_app}}
      - name: inbound_passthrough
        filters:
          - name: tcp_proxy
            config: {{cluster: inbound_passthrough}}
clusters:
  - name: local_app
    connect_timeout: 1s
    endpoints: [{{address: "127.0.0.1:8080"}}]
  - name: inbound_passthrough
    type: original_dst
    lb_policy: cluster_provided
    connect_timeout: 1s
"#
    )
}

/// Inbound capture in `mode` (`redirect` or `tproxy`): calls from the svc
/// namespace to the app's port meet jwt_authn and rbac; other ports pass
/// through to the app namespace's own servers.
fn inbound(mode: &str) {
    if netns::skip() {
        return;
    }
    let mut jwt = JwtPeer::start();
    let mut pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (svc, app) = (pair.svc.clone(), pair.app.clone());
    netns::start_echo(
        &mut pair,
        &app,
        dir.path(),
        &["127.0.0.1:8080", "10.77.0.1:9200"],
    );
    let tproxy = mode == "tproxy";
    // IP_TRANSPARENT needs CAP_NET_ADMIN: under TPROXY meshgate runs as
    // root and only inbound is captured.
    let extra = if tproxy {
        "    transparent: true\n"
    } else {
        ""
    };
    let yaml = inbound_yaml(&jwt.jwks, extra);
    let admin = if tproxy {
        let cfg = dir.path().join("meshgate.yaml");
        std::fs::write(&cfg, &yaml).unwrap();
        let log = dir.path().join("meshgate.log");
        let bin = meshgate_tests::bin();
        pair.spawn(
            &app,
            None,
            &[bin.to_str().unwrap(), "run", "-c", cfg.to_str().unwrap()],
            &log,
        );
        let admin =
            meshgate_tests::wait_for_within(20, "admin line", || netns::admin_from_log(&log));
        let url = format!("http://{admin}/ready");
        meshgate_tests::wait_until("ready", || pair.curl(&app, &url, &[]).0 == 200);
        admin
    } else {
        netns::start_meshgate(&mut pair, dir.path(), &yaml)
    };
    let before_rules = pair.ok(&app, &["ip", "rule", "show"]);
    let uid = MESHGATE_UID.to_string();
    let args: Vec<&str> = if tproxy {
        vec!["--mode", "tproxy", "--no-outbound"]
    } else {
        vec!["--uid", &uid]
    };
    capture(&pair, &args);

    let url = |p: &str| format!("http://{APP_IP}:8080{p}");
    let claims = |sub: &str| json!({"iss": "https://mesh.example", "sub": sub, "exp": now() + 600});
    // No token: jwt_authn refuses before the app sees anything.
    let (code, _) = pair.curl(&svc, &url("/api"), &[]);
    assert_eq!(code, 401);
    let alice = jwt.mint("RS256", "rsa1", claims("alice"));
    let (code, body) = pair.curl(
        &svc,
        &url("/api"),
        &["-H", &format!("authorization: Bearer {alice}")],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(served_by(&body), "127.0.0.1:8080");
    // meshgate saw the caller's own address (both modes keep the source).
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], SVC_IP, "{body}");
    let bob = jwt.mint("RS256", "rsa1", claims("bob"));
    let (code, _) = pair.curl(
        &svc,
        &url("/api"),
        &["-H", &format!("authorization: Bearer {bob}")],
    );
    assert_eq!(code, 403);
    // Another port of the app: passed through to it unchanged.
    let (code, body) = pair.curl(&svc, &format!("http://{APP_IP}:9200/other"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(served_by(&body), "10.77.0.1:9200");
    let m = |name: &str, labels: &[(&str, &str)]| netns::metric(&pair, &app, &admin, name, labels);
    assert_eq!(
        m(LISTENER_DOWNSTREAM_CX_TOTAL, &[("listener", "inbound")]),
        4.0
    );

    capture(&pair, &["--remove"]);
    assert_eq!(pair.ok(&app, &["ip", "rule", "show"]), before_rules);
    assert!(!pair.ruleset(&app).contains("meshgate"));
}

#[test]
fn inbound_capture_applies_jwt_and_rbac_before_the_local_app() {
    inbound("redirect");
}

#[test]
fn inbound_tproxy_capture_keeps_the_source_address() {
    inbound("tproxy");
}

/// `iptables-save` without its comment lines (they carry a timestamp).
fn iptables_state(pair: &Pair) -> String {
    let text = pair.ok(&pair.app, &["iptables-save"]);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn capture_remove_leaves_rules_as_before_for_every_backend_and_mode() {
    if netns::skip() {
        return;
    }
    let pair = Pair::new();
    let app = pair.app.clone();
    let state = |pair: &Pair| {
        (
            pair.ruleset(&app),
            iptables_state(pair),
            pair.ok(&app, &["ip", "-4", "rule", "show"])
                + &pair.ok(&app, &["ip", "-6", "rule", "show"]),
            // The TPROXY routing table (the rest changes by itself: IPv6
            // link-local addresses arrive late).
            ["-4", "-6"]
                .map(|f| {
                    pair.exec(&app, &["ip", f, "route", "show", "table", "133"])
                        .stdout
                })
                .concat(),
        )
    };
    // Somebody else's rules stay untouched. (They also make iptables-nft
    // create the built-in chains capture jumps from: iptables-nft creates a
    // built-in chain on first use and leaves it, empty, in nft's ruleset.)
    pair.ok(
        &app,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "-j",
            "RETURN",
        ],
    );
    pair.ok(
        &app,
        &[
            "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "2525", "-j", "RETURN",
        ],
    );
    pair.ok(
        &app,
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "-j",
            "RETURN",
        ],
    );
    pair.ok(&app, &["nft", "add", "table", "inet", "theirs"]);
    let before = state(&pair);
    for backend in ["nft", "iptables"] {
        for mode in ["redirect", "tproxy"] {
            let args = [
                "--backend",
                backend,
                "--mode",
                mode,
                "--uid",
                "1337",
                "--exclude-outbound-ports",
                "22",
                "--exclude-outbound-cidrs",
                "10.1.0.0/16",
                "--exclude-inbound-ports",
                "15090",
            ];
            let printed = capture(&pair, &args);
            assert!(!printed.is_empty());
            let during = state(&pair);
            assert_ne!(during, before, "{backend}/{mode} installed nothing");
            // Installing twice is refused, and changes nothing.
            let bin = meshgate_tests::bin();
            let mut again = vec![bin.to_str().unwrap(), "capture"];
            again.extend(args);
            assert!(!pair.exec(&app, &again).status.success());
            assert_eq!(state(&pair), during);
            capture(&pair, &["--backend", backend, "--remove"]);
            assert_eq!(
                state(&pair),
                before,
                "{backend}/{mode} left something behind"
            );
        }
    }
    // --dry-run only prints.
    let printed = capture(&pair, &["--uid", "1337", "--dry-run"]);
    assert!(printed.contains("table inet meshgate"), "{printed}");
    assert_eq!(state(&pair), before);
}

/// An Istio-shaped outbound listener through a real ADS stream: the
/// `use_original_dst` listener (listener filters http_inspector and
/// tls_inspector, a passthrough chain to an ORIGINAL_DST cluster) hands a
/// connection to the `bind_to_port: false` listener of its destination's
/// port (`0.0.0.0:PORT`, as Istio names them), whose route goes to an
/// ORIGINAL_DST cluster with `use_http_header`. Runs without namespaces:
/// the destination of a connection that was not redirected is its local
/// address.
#[test]
fn istio_shaped_outbound_listener_from_xds() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::google::protobuf::{Any, BoolValue};
    use meshgate_tests::backend::{HttpBackend, Proto};
    use meshgate_tests::xds::*;
    use meshgate_tests::{Meshgate, free_port};
    use prost::Message;

    let get = |args: &[&str]| {
        let (code, _, body) = meshgate_tests::curl::curl(args);
        (code, body)
    };
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let original_dst = |name: &str, header: bool| {
        let c = cds::Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
                cds::cluster::DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: cds::cluster::LbPolicy::ClusterProvided as i32,
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            lb_config: header.then(|| {
                cds::cluster::LbConfig::OriginalDstLbConfig(cds::cluster::OriginalDstLbConfig {
                    use_http_header: true,
                    ..Default::default()
                })
            }),
            ..Default::default()
        };
        (name.to_string(), any(CLUSTER, &c))
    };
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            original_dst("PassthroughCluster", false),
            original_dst("orig", true),
        ],
    );
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("orig", 1)])]);
    // The virtual listener: 0.0.0.0:PORT, no socket, HCM over RDS.
    let (_, v) = hcm_listener("x", port, "r1");
    let mut v = lds::Listener::decode(v.value.as_slice()).unwrap();
    v.name = format!("0.0.0.0_{port}");
    v.address = Some(sock(([0, 0, 0, 0], port).into()));
    v.bind_to_port = Some(BoolValue { value: false });
    // The capture listener (Istio's virtualOutbound), here on 127.0.0.1:PORT.
    let (_, o) = tcp_listener("virtualOutbound", port, "PassthroughCluster");
    let mut o = lds::Listener::decode(o.value.as_slice()).unwrap();
    o.use_original_dst = Some(BoolValue { value: true });
    let inspector = |name: &str, ty: &str| lds::ListenerFilter {
        name: name.into(),
        config_type: Some(lds::listener_filter::ConfigType::TypedConfig(Any {
            type_url: format!("type.googleapis.com/{ty}"),
            value: vec![],
        })),
        ..Default::default()
    };
    o.listener_filters = vec![
        inspector(
            "envoy.filters.listener.tls_inspector",
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        ),
        inspector(
            "envoy.filters.listener.http_inspector",
            "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        ),
    ];
    o.filter_chains[0].name = "PassthroughFilterChain".into();
    mgmt.set(
        LISTENER,
        "l1",
        vec![
            ("virtualOutbound".into(), any(LISTENER, &o)),
            (v.name.clone(), any(LISTENER, &v)),
        ],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let url = format!("http://127.0.0.1:{port}/via-header");
    let dst = format!("x-envoy-original-dst-host: {}", backend.addr);
    meshgate_tests::wait_until("the ADS listeners serve", || {
        get(&[&url, "-H", &dst]).0 == 200
    });
    let (code, body) = get(&[&url, "-H", &dst]);
    assert_eq!(code, 200);
    assert!(body.contains("backend=b"), "{body}");
    assert!(
        mg.metric(
            LISTENER_ORIGINAL_DST_HANDOFF_TOTAL,
            &[
                ("listener", "virtualOutbound"),
                ("target", &format!("0.0.0.0_{port}"))
            ]
        ) >= 2.0
    );
    assert_eq!(
        mg.metric(CLUSTER_ORIGINAL_DST_HOSTS, &[("cluster", "orig")]),
        1.0
    );
    // Without the header the destination is meshgate's own listener: no
    // loop, a 503 and a count.
    let (code, _) = get(&[&format!("http://127.0.0.1:{port}/no-header")]);
    assert_eq!(code, 503);
    assert_eq!(
        mg.metric(
            CLUSTER_ORIGINAL_DST_NO_HOST_TOTAL,
            &[("cluster", "orig"), ("reason", "loop")]
        ),
        1.0
    );
    // A header that is no address: refused, counted.
    let (code, _) = get(&[&url, "-H", "x-envoy-original-dst-host: nowhere"]);
    assert_eq!(code, 503);
    assert_eq!(
        mg.metric(
            CLUSTER_ORIGINAL_DST_NO_HOST_TOTAL,
            &[("cluster", "orig"), ("reason", "bad_header")]
        ),
        1.0
    );
}

/// The example validates; sidecar settings meshgate cannot honour are
/// refused naming the field.
#[test]
fn sidecar_config_is_validated_naming_the_field() {
    let example = meshgate_tests::workspace().join("examples/sidecar.yaml");
    let (code, out, err) = meshgate_tests::run_cli(&["validate", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    let check = |listener: &str, cluster: &str, field: &str| {
        let yaml = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:15001\n{listener}    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: c}}\nclusters:\n  - name: c\n{cluster}"
        );
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let (code, out, err) = meshgate_tests::run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(field), "want {field} in: {err}");
    };
    let od = "    type: original_dst\n    lb_policy: cluster_provided\n";
    check("", "    type: original_dst\n", "clusters[0].lb_policy");
    check(
        "",
        "    type: original_dst\n    lb_policy: cluster_provided\n    endpoints: [{address: 127.0.0.1:1}]\n",
        "clusters[0].endpoints",
    );
    check(
        "",
        "    endpoints: [{address: 127.0.0.1:1}]\n    cleanup_interval: 5s\n",
        "clusters[0].cleanup_interval",
    );
    check(
        "",
        "    type: original_dst\n    lb_policy: cluster_provided\n    original_dst_lb_config: {http_header_name: x-dst}\n",
        "clusters[0].original_dst_lb_config.http_header_name",
    );
    check(
        "    listener_filters: [{name: envoy.filters.listener.local_ratelimit}]\n",
        od,
        "listeners[0].listener_filters[0].name",
    );
    check(
        "    bind_to_port: false\n    use_original_dst: true\n",
        od,
        "listeners[0].bind_to_port",
    );
    check(
        "    listener_filters: [{name: envoy.filters.listener.original_dst, config: {x: 1}}]\n",
        od,
        "listeners[0].listener_filters[0].config",
    );
}

/// The http_inspector names the HTTP version of a plaintext connection, and
/// chains match it in `application_protocols`; other bytes take the chain
/// without one.
#[test]
fn http_inspector_chooses_the_chain_by_protocol() {
    use meshgate_tests::backend::{HttpBackend, Proto};
    use meshgate_tests::{Meshgate, free_port};
    use std::io::{Read, Write};
    let (a, b) = (
        HttpBackend::start("a", Proto::Http1),
        HttpBackend::start("b", Proto::Http1),
    );
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: l
    address: 127.0.0.1:{port}
    listener_filters:
      - name: envoy.filters.listener.http_inspector
    filter_chains:
      - name: http1
        filter_chain_match: {{application_protocols: [http/1.1]}}
        filters:
          - name: tcp_proxy
            config: {{cluster: a}}
      - name: other
        filters:
          - name: tcp_proxy
            config: {{cluster: b}}
clusters:
  - name: a
    endpoints: [{{address: "{}"}}]
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        a.addr, b.addr
    ));
    let (code, _, body) = meshgate_tests::curl::curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 200);
    assert!(body.contains("backend=a"), "{body}");
    // Not HTTP: the chain without application_protocols.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
    assert_eq!(
        mg.wait_metric(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "b")], |v| v >= 1.0),
        1.0
    );
    assert_eq!(
        mg.metric(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "a")]),
        1.0
    );
}

/// The outbound capture listener for Dubbo: a connection captured on its
/// way to a provider's real address (port 20880) is decoded as Dubbo and
/// routed by service; anything else passes through.
fn dubbo_outbound_yaml() -> String {
    format!(
        r#"admin:
  address: 127.0.0.1:0
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    listener_filters:
      - name: envoy.filters.listener.original_dst
    filter_chains:
      - name: dubbo
        filter_chain_match: {{destination_port: 20880}}
        filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /com.meshgate.Echo/}}
                        route: {{cluster: echo}}
      - name: passthrough
        filters:
          - name: tcp_proxy
            config: {{cluster: passthrough}}
clusters:
  - name: echo
    protocol: dubbo
    connect_timeout: 1s
    endpoints: [{{address: "{SVC_IP}:20880"}}]
  - name: passthrough
    type: original_dst
    lb_policy: cluster_provided
    connect_timeout: 1s
"#
    )
}

#[test]
fn outbound_dubbo_call_to_a_provider_address_is_captured_and_routed_by_service() {
    if netns::skip() {
        return;
    }
    let mut pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (svc, app) = (pair.svc.clone(), pair.app.clone());
    let peer = meshgate_tests::workspace().join("tests/peers/rpc_peer.js");
    let peer = peer.to_str().unwrap().to_string();
    // A real Dubbo provider (sofa-rpc-node + dubbo-remoting) in svc.
    pair.spawn(
        &svc,
        None,
        &["node", &peer, "server", "dubbo", "20880", "P"],
        &dir.path().join("provider.log"),
    );
    pair.wait_port(&svc, &format!("{SVC_IP}:20880"));
    let admin = netns::start_meshgate(&mut pair, dir.path(), &dubbo_outbound_yaml());
    let before = pair.ruleset(&app);
    capture(
        &pair,
        &["--uid", &MESHGATE_UID.to_string(), "--inbound-ports", ""],
    );

    // The consumer in app calls the provider's real address; capture
    // takes the connection to meshgate, which decodes and routes it.
    let target = format!("{SVC_IP}:20880");
    let out = pair.ok(
        &app,
        &[
            "node",
            &peer,
            "call",
            "dubbo",
            &target,
            "com.meshgate.Echo",
            "echo",
            r#"["captured"]"#,
            "3",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["ok"], 3, "{out}");
    assert_eq!(report["from"]["P"], 3, "{out}");
    assert_eq!(report["results"][0]["x"], "captured", "{out}");

    let m = |name: &str, labels: &[(&str, &str)]| netns::metric(&pair, &app, &admin, name, labels);
    // Meshgate's RPC metrics counted the three calls on the Dubbo route.
    assert_eq!(
        m(
            DOWNSTREAM_RQ_XX_TOTAL,
            &[("cluster", "echo"), ("code_class", "2xx")]
        ),
        3.0
    );
    assert!(m(LISTENER_DOWNSTREAM_CX_TOTAL, &[("listener", "outbound")]) >= 1.0);
    assert!(m(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "echo")]) >= 1.0);
    // Decoded, not passed through as bytes.
    assert_eq!(
        m(CLUSTER_UPSTREAM_CX_TOTAL, &[("cluster", "passthrough")]),
        0.0
    );

    capture(&pair, &["--remove"]);
    assert_eq!(pair.ruleset(&app), before);
}
