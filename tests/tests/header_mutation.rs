//! The `header_mutation` stream filter with curl against a recording raw
//! upstream: the bytes that reached the upstream show request headers
//! removed, appended, overwritten and added only if absent (filter-level
//! and per-route); curl shows the response headers; the filter also from a
//! real xDS control plane.

use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::process::Command;

fn upstream() -> Scripted {
    Scripted::start(|_| {
        Script::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-internal: secret\r\nx-kept: 1\r\nconnection: close\r\n\r\nok"
                .to_vec(),
        )
    })
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: header_mutation
                  config:
                    mutations:
                      request_mutations:
                        - remove: x-secret
                        - append: {{header: {{key: x-added, value: filter}}}}
                        - append: {{header: {{key: x-default, value: filter}}, append_action: ADD_IF_ABSENT}}
                      response_mutations:
                        - remove: x-internal
                        - append: {{header: {{key: x-resp, value: "yes"}}}}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /r}}
                        route: {{cluster: up}}
                        per_filter_config:
                          header_mutation:
                            mutations:
                              request_mutations:
                                - append: {{header: {{key: x-tenant, value: route}}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
                              response_mutations:
                                - append: {{header: {{key: x-route, value: r}}}}
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
"#
    )
}

/// The lower-cased response head of one curl exchange.
fn head(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// The request head the upstream received for `path`.
fn upstream_saw(up: &Scripted, path: &str) -> String {
    wait_for_within(10, "the upstream request", || {
        up.conns()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.bytes).to_ascii_lowercase())
            .find(|r| r.contains(&format!("get {path} ")))
    })
}

#[test]
fn request_and_response_headers_are_mutated() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let h = head(&[
        "-H",
        "x-secret: s3cr3t",
        "-H",
        "x-default: client",
        "-H",
        "x-tenant: client",
        &format!("{base}/plain"),
    ]);
    assert!(!h.contains("x-internal"), "{h}");
    assert!(h.contains("x-resp: yes"), "{h}");
    assert!(h.contains("x-kept: 1"), "{h}");
    assert!(!h.contains("x-route"), "{h}");
    let req = upstream_saw(&up, "/plain");
    assert!(!req.contains("x-secret"), "{req}");
    assert!(req.contains("x-added: filter"), "{req}");
    assert!(req.contains("x-default: client"), "{req}");
    assert!(!req.contains("x-default: filter"), "{req}");
    assert!(req.contains("x-tenant: client"), "{req}");
}

#[test]
fn per_route_mutations_apply_with_the_filters() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let h = head(&["-H", "x-tenant: client", &format!("{base}/r1")]);
    assert!(h.contains("x-route: r"), "{h}");
    assert!(h.contains("x-resp: yes"), "{h}");
    let req = upstream_saw(&up, "/r1");
    assert!(req.contains("x-tenant: route"), "{req}");
    assert!(!req.contains("x-tenant: client"), "{req}");
    assert!(req.contains("x-default: filter"), "{req}");
}

#[test]
fn formatter_values_are_refused_by_name() {
    let yaml = config("127.0.0.1:1".parse().unwrap())
        .replace(
            "value: filter}, append_action",
            "value: \"%REQ(x)%\"}, append_action",
        )
        .replace("{ADMIN}", "127.0.0.1:0");
    let path = std::env::temp_dir().join(format!("mg-hm-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("request_mutations[2].append.header.value"),
        "{out}{err}"
    );
}

#[test]
fn header_mutation_from_xds() {
    use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as hm;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    const URL: &str =
        "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";
    const PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute";
    let add = |k: &str, v: &str| rules::HeaderMutation {
        action: Some(rules::header_mutation::Action::Append(
            core3::HeaderValueOption {
                header: Some(core3::HeaderValue {
                    key: k.into(),
                    value: v.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    };
    let up = upstream();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", up.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let filter = hm::HeaderMutation {
        mutations: Some(hm::Mutations {
            request_mutations: vec![add("x-from-xds", "filter")],
            response_mutations: vec![rules::HeaderMutation {
                action: Some(rules::header_mutation::Action::Remove("x-internal".into())),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.header_mutation".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(URL, &filter))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    let per_route = hm::HeaderMutationPerRoute {
        mutations: Some(hm::Mutations {
            response_mutations: vec![add("x-route", "xds")],
            ..Default::default()
        }),
    };
    r.virtual_hosts[0].routes[1].typed_per_filter_config.insert(
        "envoy.filters.http.header_mutation".into(),
        any(PER_ROUTE, &per_route),
    );
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    let h = head(&[&format!("http://127.0.0.1:{port}/x")]);
    assert!(!h.contains("x-internal"), "{h}");
    assert!(h.contains("x-route: xds"), "{h}");
    let req = upstream_saw(&up, "/x");
    assert!(req.contains("x-from-xds: filter"), "{req}");
}
