//! The stream filter chain's body and trailer phases, end to end through
//! the example filter (examples/stream-filter, `meshgate-body-digest`):
//! request chunks and trailers checked while they stream (HTTP/1.1 raw
//! chunked upload with trailers, python h2 with trailers), a refusal at
//! the end of the body answered 400 before the upstream saw a complete
//! request, whole-body buffering with 413 past the bound (curl, HTTP/1.1
//! chunked and h2), response chunks rewritten on the way back; and
//! per-weighted-cluster filter config (cors) with the stock binary.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::phases::{Recorder, example_filter_bin};
use meshgate_tests::*;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

const BODY: &str = "hello world, this is the body";
const BODY_SHA256: &str = "8acf88726b38c4445470662dd3c0c0d660bf9d2b1fed75a080b387652d0b6c18";

fn config(upstream: std::net::SocketAddr, h2: bool, log: &std::path::Path) -> String {
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
              access_log: {{path: "{log}"}}
              stream_filters:
                - name: body_digest
                  config: {{deny_response_header: x-echo-internal}}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /verify/}}
                        route: {{cluster: up}}
                        per_filter_config:
                          body_digest: {{verify_trailer: true, required_header: x-api-version}}
                      - match: {{prefix: /digest/}}
                        route: {{cluster: up}}
                        per_filter_config:
                          body_digest: {{digest_header: true, max_buffer_bytes: 64}}
                      - match: {{prefix: /mask/}}
                        route: {{cluster: up}}
                        per_filter_config:
                          body_digest: {{mask_response: s3cret}}
clusters:
  - name: up
    protocol: {proto}
    endpoints: [{{address: "{upstream}"}}]
"#,
        log = log.display(),
        proto = if h2 { "http2" } else { "http1" }
    )
}

struct Setup {
    mg: Meshgate,
    up: Recorder,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(true)
}

/// meshgate-body-digest in front of a recording upstream (h2c or HTTP/1.1).
fn setup_with(h2: bool) -> Setup {
    let up = Recorder::start(h2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mg = Meshgate::start_bin(&example_filter_bin(), &config(up.addr, h2, &log), &[]);
    let port = mg.listener_port("web");
    Setup {
        mg,
        up,
        port,
        log,
        _dir: dir,
    }
}

/// An HTTP/1.1 chunked upload with trailers on a raw socket.
fn h1_chunked(port: u16, path: &str, head: &[&str], chunks: &[&str], trailers: &[&str]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n");
    for h in head {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    for c in chunks {
        req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    req.push_str("0\r\n");
    for t in trailers {
        req.push_str(t);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    read_reply(&mut BufReader::new(s)).expect("a response")
}

/// One h2c POST with trailers by python's h2 (tests/peers/h2_trailers.py).
fn h2_post(port: u16, spec: serde_json::Value) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(workspace().join("tests/peers/h2_trailers.py"))
        .arg(port.to_string())
        .arg(spec.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn denied(mg: &Meshgate, reason: &str) -> f64 {
    mg.metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "body_digest"), ("reason", reason)],
    )
}

#[test]
fn request_chunks_and_trailers_are_checked_while_streaming_over_http1_and_h2() {
    let s = setup();
    let good = format!("x-body-sha256: {BODY_SHA256}");
    let bad = format!("x-body-sha256: {}", "0".repeat(64));
    let chunks = ["hello world, ", "this is the body"];

    // HTTP/1.1: a good digest trailer; the upstream gets the whole body
    // and the trailers, with the one the filter added.
    let r = h1_chunked(
        s.port,
        "/verify/a",
        &["x-api-version: 1"],
        &chunks,
        &[&good],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, BODY);
    let seen = s.up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, BODY);
    let t = seen[0].trailers.clone().expect("trailers upstream");
    assert_eq!(t["x-body-verified"], "sha256");
    assert_eq!(t["x-body-sha256"], BODY_SHA256);

    // A wrong digest: 400 from meshgate, the upstream never got a
    // complete request (its body was cut before its end).
    let r = h1_chunked(s.port, "/verify/b", &["x-api-version: 1"], &chunks, &[&bad]);
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("meshgate: bad request"), "{}", r.body);
    // The head phase: no required header, 400 before any body phase.
    let r = h1_chunked(s.port, "/verify/c", &[], &chunks, &[&good]);
    assert_eq!(r.status, 400);
    // No trailer at all: nothing verified, refused at the end.
    let r = h1_chunked(s.port, "/verify/d", &["x-api-version: 1"], &chunks, &[]);
    assert_eq!(r.status, 400);

    // h2 (python h2): the same checks with DATA frames and a trailers
    // HEADERS frame.
    let spec = |digest: &str| {
        serde_json::json!({
            "path": "/verify/h2",
            "headers": [["x-api-version", "2"]],
            "chunks": chunks,
            "trailers": [["x-body-sha256", digest]],
        })
    };
    let ok = h2_post(s.port, spec(BODY_SHA256));
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["body"], BODY);
    let refused = h2_post(s.port, spec(&"f".repeat(64)));
    assert_eq!(refused["status"], 400, "{refused}");

    let seen = s.up.seen();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/verify/a", "/verify/h2"],
        "only the verified requests reached the upstream whole"
    );
    assert_eq!(
        seen[1].trailers.as_ref().unwrap()["x-body-verified"],
        "sha256"
    );
    // Each refusal counted as the filter's denial and logged with it.
    assert_eq!(denied(&s.mg, "bad_request"), 4.0);
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    let refused_lines = log
        .lines()
        .filter(|l| l.contains(r#""denied_by":"body_digest""#))
        .count();
    assert_eq!(refused_lines, 4, "{log}");
}

#[test]
fn trailers_reach_an_http1_upstream_and_a_refused_body_never_ends_there() {
    let s = setup_with(false);
    let good = format!("x-body-sha256: {BODY_SHA256}");
    let bad = format!("x-body-sha256: {}", "0".repeat(64));
    let chunks = ["hello world, ", "this is the body"];
    let r = h1_chunked(
        s.port,
        "/verify/a",
        &["x-api-version: 1"],
        &chunks,
        &[&good],
    );
    assert_eq!((r.status, r.body.as_str()), (200, BODY));
    let r = h1_chunked(s.port, "/verify/b", &["x-api-version: 1"], &chunks, &[&bad]);
    assert_eq!(r.status, 400);
    // h2 downstream (no content-length) to the HTTP/1.1 upstream: sent
    // chunked, with the trailers.
    let ok = h2_post(
        s.port,
        serde_json::json!({
            "path": "/verify/h2",
            "headers": [["x-api-version", "2"]],
            "chunks": chunks,
            "trailers": [["x-body-sha256", BODY_SHA256]],
        }),
    );
    assert_eq!(ok["status"], 200, "{ok}");
    let seen = s.up.seen();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/verify/a", "/verify/h2"]
    );
    for r in &seen {
        assert_eq!(r.body, BODY);
        assert_eq!(r.trailers.as_ref().unwrap()["x-body-verified"], "sha256");
    }
    assert_eq!(denied(&s.mg, "bad_request"), 1.0);
}

#[test]
fn a_filter_reads_the_whole_body_with_a_bound_and_413_past_it() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/digest/x", s.port);
    let big = "0123456789".repeat(10);
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        // HTTP/1.1 sends it chunked; h2 in DATA frames.
        let (status, _, body) = curl(&[
            proto,
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            BODY,
            &url,
        ]);
        assert_eq!((status, body.as_str()), (200, BODY), "{proto}");
        let (status, _, _) = curl(&[proto, "--data-binary", &big, &url]);
        assert_eq!(status, 413, "{proto}");
    }
    let seen = s.up.seen();
    assert_eq!(seen.len(), 2, "the oversized bodies never went upstream");
    for r in &seen {
        // The digest header the filter added, and the body still whole.
        assert_eq!(r.headers["x-body-sha256"], BODY_SHA256);
        assert_eq!(r.body, BODY);
    }
    assert_eq!(denied(&s.mg, "payload_too_large"), 2.0);
    assert_eq!(
        s.mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "payload_too_large")]
        ),
        2.0
    );
}

#[test]
fn response_chunks_are_rewritten_on_the_way_back() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/mask/x", s.port);
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, h, body) = curl(&[proto, "--data-binary", "a body with s3cret inside", &url]);
        assert_eq!(status, 200, "{proto}");
        assert_eq!(body, "a body with ****** inside", "{proto}");
        if let Some(len) = h.get("content-length") {
            assert_eq!(len, "25");
        }
    }
    // The upstream got the text unmasked: only the response was changed.
    assert!(
        s.up.seen()
            .iter()
            .all(|r| r.body == "a body with s3cret inside")
    );
    // Elsewhere the filter leaves bodies alone.
    let url = format!("http://127.0.0.1:{}/digest/x", s.port);
    let (_, _, body) = curl(&["--data-binary", "s3cret", &url]);
    assert_eq!(body, "s3cret");
}

#[test]
fn a_response_phase_refusal_is_counted_and_logged() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/mask/x", s.port);
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, _, body) = curl(&[
            proto,
            "-H",
            "x-echo-internal: 1",
            "--data-binary",
            "x",
            &url,
        ]);
        assert_eq!(status, 403, "{proto}");
        assert!(body.starts_with("meshgate: forbidden"), "{body}");
        let (status, _, _) = curl(&[proto, "-H", "x-echo-other: 1", "--data-binary", "x", &url]);
        assert_eq!(status, 200, "{proto}");
    }
    // A gRPC client gets the refusal as a gRPC status (PERMISSION_DENIED).
    let (status, h, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "x-echo-internal: 1",
        "--data-binary",
        "x",
        &url,
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["grpc-status"], "7", "{h:?}");
    assert_eq!(h["grpc-message"], "meshgate: forbidden");
    assert_eq!(s.up.seen().len(), 5, "the upstream answered every request");
    assert_eq!(denied(&s.mg, "forbidden"), 3.0);
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""denied_by":"body_digest""#))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#""status":403"#))
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn a_weighted_clusters_filter_config_wins_over_the_routes() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&format!(
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
                - name: cors
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    per_filter_config:
                      cors: {{allow_origin_string_match: [{{exact: https://vhost.example}}]}}
                    routes:
                      - match: {{prefix: /}}
                        per_filter_config:
                          cors: {{allow_origin_string_match: [{{exact: https://route.example}}]}}
                        route:
                          weighted_clusters:
                            clusters:
                              - name: a
                                weight: 1
                                per_filter_config:
                                  cors: {{allow_origin_string_match: [{{exact: https://a.example}}]}}
                              - name: b
                                weight: 1
clusters:
  - name: a
    endpoints: [{{address: "{}"}}]
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        a.addr, b.addr
    ));
    let url = format!("http://127.0.0.1:{}/x", mg.listener_port("web"));
    let mut backends = std::collections::BTreeSet::new();
    for origin in [
        "https://a.example",
        "https://route.example",
        "https://vhost.example",
    ] {
        for _ in 0..24 {
            let (status, h, _) = curl(&["-H", &format!("Origin: {origin}"), &url]);
            assert_eq!(status, 200);
            let backend = h["x-backend"].clone();
            let allowed = h.get("access-control-allow-origin").map(String::as_str);
            // Backend a: its own policy; backend b: the route's, which
            // hides the virtual host's.
            let want = match (backend.as_str(), origin) {
                ("a", "https://a.example") | ("b", "https://route.example") => Some(origin),
                _ => None,
            };
            assert_eq!(allowed, want, "{origin} via {backend}");
            backends.insert(backend);
        }
    }
    assert_eq!(backends.len(), 2, "both weighted clusters were picked");
    assert_eq!(a.hits() + b.hits(), 72);
}

#[test]
fn a_bad_weighted_cluster_filter_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters: [{name: cors}]
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {prefix: /}
                        route:
                          weighted_clusters:
                            clusters:
                              - {name: a, weight: 1, per_filter_config: {cors: {shadow_enabled: true}}}
clusters:
  - name: a
    endpoints: [{address: "127.0.0.1:1"}]
"#,
    )
    .unwrap();
    let (code, _, err) = run_cli(&["validate", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("route.weighted_clusters.clusters[0].per_filter_config.cors"),
        "{err}"
    );
    assert!(err.contains("shadow_enabled"), "{err}");
}

/// Through a real xDS control plane: `ClusterWeight.typed_per_filter_config`
/// (a cors policy on one weighted cluster) and the older `VirtualHost.cors`
/// field (Envoy's deprecated `route.v3.CorsPolicy`), the weighted
/// cluster's config winning where that cluster is picked.
#[test]
#[allow(deprecated)]
fn weighted_cluster_config_and_the_old_cors_field_from_xds() {
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as corsv3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    use meshgate_tests::xds::*;
    use prost::Message;

    let exact = |o: &str| matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(o.into())),
        ignore_case: false,
    };
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-b", b.addr),
        ],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let Some(lds::filter::ConfigType::TypedConfig(cfg)) =
        l.filter_chains[0].filters[0].config_type.as_mut()
    else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(cfg.value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.cors".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
                &corsv3::Cors {},
            ))),
            ..Default::default()
        },
    );
    cfg.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1), ("svc-b", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // The old field on the virtual host.
    r.virtual_hosts[0].cors = Some(rds::CorsPolicy {
        allow_origin_string_match: vec![exact("https://legacy.example")],
        ..Default::default()
    });
    // svc-a's own policy.
    // (The fixture's first route is a direct response.)
    let Some(action) = r.virtual_hosts[0]
        .routes
        .iter_mut()
        .find_map(|r| match r.action.as_mut() {
            Some(rds::route::Action::Route(a)) => Some(a),
            _ => None,
        })
    else {
        panic!("a route action")
    };
    let Some(rds::route_action::ClusterSpecifier::WeightedClusters(w)) =
        action.cluster_specifier.as_mut()
    else {
        panic!("weighted clusters")
    };
    w.clusters[0].typed_per_filter_config.insert(
        "envoy.filters.http.cors".into(),
        any(
            "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            &corsv3::CorsPolicy {
                allow_origin_string_match: vec![exact("https://a.example")],
                ..Default::default()
            },
        ),
    );
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_until("the listener from xDS answers", || {
        get(port, "/").is_some_and(|b| b.starts_with("backend="))
    });
    let url = format!("http://127.0.0.1:{port}/x");
    let mut backends = std::collections::BTreeSet::new();
    for origin in ["https://a.example", "https://legacy.example"] {
        for _ in 0..24 {
            let (status, h, _) = curl(&["-H", &format!("Origin: {origin}"), &url]);
            assert_eq!(status, 200);
            let backend = h["x-backend"].clone();
            let allowed = h.get("access-control-allow-origin").map(String::as_str);
            let want = match (backend.as_str(), origin) {
                ("a", "https://a.example") | ("b", "https://legacy.example") => Some(origin),
                _ => None,
            };
            assert_eq!(allowed, want, "{origin} via {backend}");
            backends.insert(backend);
        }
    }
    assert_eq!(backends.len(), 2, "both weighted clusters were picked");
}
