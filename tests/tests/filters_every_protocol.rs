//! One stream filter chain for every protocol: the same `rbac` policy
//! refuses an HTTP/3 request (aioquic) and a SOFA Bolt call (sofa-rpc-node)
//! with each protocol's own error, and lets the others through. (HTTP/1.1,
//! HTTP/2, gRPC and Dubbo are covered by auth_basic.rs, rbac.rs,
//! local_ratelimit.rs and filter_phases.rs.)

use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::*;

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

/// A DENY policy on the path prefix `/denied` and on the Bolt service
/// `com.meshgate.Secret`.
const RBAC: &str = r#"              stream_filters:
                - name: rbac
                  config:
                    rules:
                      action: DENY
                      policies:
                        secrets:
                          permissions:
                            - url_path: {path: {prefix: /denied}}
                            - header: {name: service, exact_match: com.meshgate.Secret}
                          principals: [{any: true}]
"#;

#[test]
fn an_http3_request_is_refused_by_the_same_chain() {
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
{RBAC}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "open\n"}}
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    );
    let mg = Meshgate::start(&yaml);
    let r = aioquic::get(port, &["/denied/x", "/open/y"], None);
    assert!(r[0].1.starts_with(":status: 403"), "{}", r[0].1);
    assert!(r[0].1.contains("RBAC: access denied"), "{}", r[0].1);
    assert!(r[1].1.starts_with(":status: 200"), "{}", r[1].1);
    assert!(r[1].1.contains("open"), "{}", r[1].1);
    mg.wait_metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "rbac"), ("reason", "forbidden")],
        |v| v == 1.0,
    );
}

#[test]
fn a_bolt_call_is_refused_by_the_same_chain_with_a_readable_error() {
    let provider = Provider::start("bolt", "A");
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: bolt
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: bolt
{RBAC}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: a}}
clusters:
  - name: a
    protocol: bolt
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        pa = provider.port,
    );
    let mg = Meshgate::start(&yaml);
    let call = |iface: &str| node_call("bolt", port, iface, "echo", "[1]", 1, 1, 3000, "1.0", "");
    let r = call("com.meshgate.Secret");
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(
        r.errors
            .first()
            .is_some_and(|e| e.contains("meshgate: forbidden")),
        "{:?}",
        r.errors
    );
    let r = call("com.meshgate.Echo");
    assert_eq!(r.ok, 1, "{r:?}");
    mg.wait_metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "rbac"), ("reason", "forbidden")],
        |v| v == 1.0,
    );
}
