//! Route `fallback` (service degradation, a meshgate extension) against
//! real peers: a cluster with no endpoint, and a cluster whose circuit
//! breaker is open (`max_connections: 0`: every connect overflows), answered
//! by the fallback's direct response or sent to the fallback cluster
//! (a hyper backend; a grpcio server for a gRPC call); counted in
//! `meshgate_route_fallback_total{cluster,reason}`; a request whose body
//! was already sent keeps its 503 on overflow; bad configs refused naming
//! the field.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::process::Command;

const FALLBACK: &str = "meshgate_route_fallback_total";

fn config(primary: std::net::SocketAddr, backup: std::net::SocketAddr) -> String {
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
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /empty-direct}}
                        route:
                          cluster: empty
                          fallback: {{direct_response: {{status: 200, body: "degraded\n"}}}}
                      - match: {{prefix: /empty-cluster}}
                        route: {{cluster: empty, fallback: {{cluster: backup}}}}
                      - match: {{prefix: /full-direct}}
                        route:
                          cluster: full
                          fallback: {{direct_response: {{status: 200, body: "busy, degraded\n"}}}}
                      - match: {{prefix: /full-cluster}}
                        route: {{cluster: full, fallback: {{cluster: backup}}}}
                      - match: {{prefix: /no-fallback}}
                        route: {{cluster: empty}}
                      - match: {{prefix: /}}
                        route: {{cluster: primary, fallback: {{cluster: backup}}}}
clusters:
  - name: empty
    endpoints: []
  - name: full
    max_connections: 0
    endpoints: [{{address: "{primary}"}}]
  - name: primary
    endpoints: [{{address: "{primary}"}}]
  - name: backup
    endpoints: [{{address: "{backup}"}}]
"#
    )
}

#[test]
fn no_healthy_endpoint_and_overflow_use_the_fallback_over_http1() {
    let primary = HttpBackend::start("primary", Proto::Http1);
    let backup = HttpBackend::start("backup", Proto::Http1);
    let mg = Meshgate::start(&config(primary.addr, backup.addr));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let count = |cluster: &str, reason: &str| {
        mg.metric(FALLBACK, &[("cluster", cluster), ("reason", reason)])
    };

    // No endpoint: the fallback's fixed answer.
    let (status, _, body) = curl(&[&format!("{base}/empty-direct")]);
    assert_eq!(status, 200);
    assert_eq!(body, "degraded\n");
    assert_eq!(count("empty", "no_healthy_endpoint"), 1.0);

    // No endpoint: the fallback cluster gets the whole request, body too.
    let (status, _, body) = curl(&["-d", "hello", &format!("{base}/empty-cluster")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend=backup"), "{body}");
    assert!(body.contains("method=POST"), "{body}");
    assert!(body.contains("body-bytes=5"), "{body}");
    assert_eq!(count("empty", "no_healthy_endpoint"), 2.0);

    // Circuit breaker open: the fixed answer, or the fallback cluster.
    let (status, _, body) = curl(&[&format!("{base}/full-direct")]);
    assert_eq!(status, 200);
    assert_eq!(body, "busy, degraded\n");
    assert_eq!(count("full", "overflow"), 1.0);
    let (status, _, body) = curl(&[&format!("{base}/full-cluster")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend=backup"), "{body}");
    assert!(body.contains("uri=/full-cluster"), "{body}");
    assert_eq!(count("full", "overflow"), 2.0);
    assert_eq!(primary.hits(), 0, "the open breaker let nothing through");

    // A body already handed to the upstream exchange cannot be sent
    // again: the overflow's 503 stays, not counted as a fallback.
    let (status, _, _) = curl(&["-d", "hello", &format!("{base}/full-cluster")]);
    assert_eq!(status, 503);
    assert_eq!(count("full", "overflow"), 2.0);

    // Without a fallback, the plain 503; a healthy cluster is used as is.
    assert_eq!(curl(&[&format!("{base}/no-fallback")]).0, 503);
    let (status, _, body) = curl(&[&format!("{base}/ok")]);
    assert_eq!(status, 200);
    assert!(body.contains("backend=primary"), "{body}");
    assert_eq!(count("primary", "no_healthy_endpoint"), 0.0);
    assert_eq!(backup.hits(), 2);
}

/// A gRPC call to a route whose cluster has no endpoint reaches the
/// fallback cluster (the grpcio server) and succeeds.
#[test]
fn grpc_call_reaches_the_fallback_cluster() {
    let server = GrpcServer::start();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: grpc
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
                      - match: {{prefix: /, grpc: true}}
                        route: {{cluster: empty, fallback: {{cluster: upstream}}}}
clusters:
  - name: empty
    endpoints: []
  - name: upstream
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
"#,
        up = server.1,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("grpc");
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
m = ch.unary_unary("/echo.Echo/Unary")
try:
    m(b"hi", metadata=(("x-case", "plain"),), timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("127.0.0.1:{port}")])
        .output()
        .expect("python3 with grpcio");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(
        mg.metric(
            FALLBACK,
            &[("cluster", "empty"), ("reason", "no_healthy_endpoint")]
        ),
        1.0
    );
}

#[test]
fn bad_fallback_configs_are_refused_naming_the_field() {
    let cases = [
        (
            "{direct_response: {status: 200}, cluster: backup}",
            "route.fallback",
        ),
        ("{cluster: nowhere}", "route.fallback.cluster"),
        (
            "{direct_response: {status: 99}}",
            "route.fallback.direct_response.status",
        ),
        ("{retry: true}", "retry"),
    ];
    for (fallback, want) in cases {
        let yaml = format!(
            r#"listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: a
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backup, fallback: {fallback}}}
clusters:
  - name: backup
    endpoints: [{{address: "127.0.0.1:1"}}]
"#
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{fallback} was accepted");
        let text = format!("{out}{err}");
        assert!(text.contains(want), "{fallback}: {text}");
    }
}

/// The router's `upstream_log` with a fallback cluster: the request the
/// first cluster could not take (overflow) is logged on the fallback
/// cluster's try, with its endpoint and code.
#[test]
fn the_fallback_clusters_try_is_in_the_upstream_log() {
    let primary = HttpBackend::start("primary", Proto::Http1);
    let backup = HttpBackend::start("backup", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let yaml = config(primary.addr, backup.addr).replace(
        "            config:\n              route_config:",
        &format!(
            "            config:\n              stream_filters:\n                - name: envoy.filters.http.router\n                  config:\n                    upstream_log:\n                      - name: envoy.access_loggers.file\n                        typed_config: {{path: \"{}\", log_format: {{text_format: \"%REQ(:PATH)%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%RESPONSE_CODE%|%RESPONSE_FLAGS%\\n\"}}}}\n              route_config:",
            up.display()
        ),
    );
    let mg = Meshgate::start(&yaml);
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let (status, _, body) = curl(&[&format!("{base}/full-cluster")]);
    assert_eq!(status, 200);
    assert!(body.contains("backup"), "{body}");
    let mut got = String::new();
    wait_until_within(10, "the fallback's upstream_log entry", || {
        got = std::fs::read_to_string(&up).unwrap_or_default();
        got.contains("|backup|")
    });
    let last = got.lines().last().unwrap();
    assert_eq!(
        last,
        format!("/full-cluster|backup|{}|200|-", backup.addr),
        "{got}"
    );
}
