//! Custom local replies (Envoy HCM `local_reply_config`) against real
//! peers: curl over HTTP/1.1 and HTTP/2 (prior knowledge), aioquic over
//! HTTP/3, grpcio for gRPC. A JSON `body_format` with the request id for
//! a 404 and a local_ratelimit 429; a mapper rewriting 503 (no healthy
//! upstream) to 500 with a header; a mapper's own body and text format;
//! direct responses mapped as Envoy does; an upstream's own answers left
//! alone; bad configs refused naming the field; the same config through a
//! real xDS control plane.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::process::Command;

const LOCAL_REPLY: &str = "meshgate_downstream_rq_local_reply_total";

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

/// The proxy options every listener of the tests shares.
const LOCAL_REPLY_CONFIG: &str = r#"
              local_reply_config:
                mappers:
                  - filter:
                      status_code_filter:
                        comparison: {op: EQ, value: {default_value: 503, runtime_key: lr.503}}
                    status_code: 500
                    headers_to_add: [{name: x-mapped, value: "%RESPONSE_CODE_DETAILS%", append: false}]
                  - filter:
                      and_filter:
                        filters:
                          - status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: lr.ge}}}
                          - header_filter: {header: {name: x-plain, present_match: true}}
                    body: {inline_string: "custom body"}
                    body_format_override:
                      text_format: "%LOCAL_REPLY_BODY% (%RESPONSE_CODE%, %RESPONSE_FLAGS%)\n"
                body_format:
                  json_format:
                    code: "%RESPONSE_CODE%"
                    message: "%LOCAL_REPLY_BODY%"
                    request_id: "%REQ(X-REQUEST-ID)%"
                    details: "%RESPONSE_CODE_DETAILS%"
                    protocol: "%PROTOCOL%"
                    flags: "%RESPONSE_FLAGS%"
                    start: "%START_TIME%"
                    nested: {route: "%ROUTE_NAME%", literal: 7}
"#;

const ROUTES: &str = r#"
              stream_filters:
                - name: local_ratelimit
                  config: {stat_prefix: web}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - name: limited
                        match: {prefix: /limited}
                        route: {cluster: backend}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: limited
                            token_bucket: {max_tokens: 1, fill_interval: 3600s}
                            filter_enabled: {default_value: {numerator: 100}}
                            filter_enforced: {default_value: {numerator: 100}}
                      - name: down
                        match: {prefix: /down}
                        route: {cluster: empty}
                      - name: direct
                        match: {prefix: /direct}
                        direct_response: {status: 200, body: "hello"}
                      - name: ok
                        match: {prefix: /ok}
                        route: {cluster: backend}
"#;

fn config(backend: std::net::SocketAddr, h3_port: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:{LOCAL_REPLY_CONFIG}{ROUTES}
  - name: h3
    address: 127.0.0.1:{h3_port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:{LOCAL_REPLY_CONFIG}{ROUTES}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
  - name: empty
    endpoints: []
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    )
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[test]
fn json_body_with_request_id_for_404_and_429_and_503_rewritten_to_500_over_http1() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(backend.addr, free_port()));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));

    // 404: no route, JSON with the client's request id.
    let (status, h, body) = curl(&["-H", "x-request-id: req-404", &format!("{base}/nowhere")]);
    assert_eq!(status, 404);
    assert_eq!(h["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["code"], 404, "a lone %RESPONSE_CODE% is a number");
    assert_eq!(v["message"], "meshgate: no route matched");
    assert_eq!(v["request_id"], "req-404");
    assert_eq!(v["details"], "no_route");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["flags"], "NR");
    assert_eq!(v["nested"]["literal"], 7);
    assert_eq!(v["nested"]["route"], serde_json::Value::Null);
    let start = v["start"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "{start}"
    );
    // A request id meshgate generated is the one in the body.
    let (_, _, body) = curl(&[&format!("{base}/nowhere")]);
    let id = json(&body)["request_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a generated uuid: {id}");

    // 429 from local_ratelimit: the filter's headers stay, the body is JSON.
    assert_eq!(curl(&[&format!("{base}/limited")]).0, 200);
    let (status, h, body) = curl(&["-H", "x-request-id: req-429", &format!("{base}/limited")]);
    assert_eq!(status, 429);
    assert_eq!(h["x-local-rate-limit"], "1");
    let v = json(&body);
    assert_eq!(v["code"], 429);
    assert_eq!(v["request_id"], "req-429");
    assert_eq!(v["details"], "rate_limited");
    assert_eq!(v["flags"], "RL");
    assert_eq!(v["nested"]["route"], "limited");
    assert_eq!(
        backend.hits(),
        1,
        "the refused request never reached the upstream"
    );

    // 503 no healthy upstream: the mapper rewrites it to 500 and adds a header.
    let (status, h, body) = curl(&[&format!("{base}/down")]);
    assert_eq!(status, 500);
    assert_eq!(h["x-mapped"], "no_healthy_upstream");
    let v = json(&body);
    assert_eq!(v["code"], 500, "the rewritten code");
    assert_eq!(v["flags"], "UH");
    assert_eq!(v["message"], "meshgate: no healthy upstream");
    assert_eq!(
        mg.metric(LOCAL_REPLY, &[("reason", "no_healthy_upstream")]),
        1.0
    );

    // The second mapper: its own body and text format.
    let (status, h, body) = curl(&["-H", "x-plain: 1", &format!("{base}/nowhere")]);
    assert_eq!(status, 404);
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(body, "custom body (404, NR)\n");

    // A direct response is a local reply too (Envoy sends it as one).
    let (status, _, body) = curl(&[&format!("{base}/direct")]);
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["message"], "hello");
    assert_eq!(v["details"], "direct_response");

    // The upstream's own answer is never touched.
    let (status, h, body) = curl(&[&format!("{base}/ok")]);
    assert_eq!(status, 200);
    assert!(body.contains("backend=b"), "{body}");
    assert!(!h.contains_key("x-mapped"));
}

#[test]
fn json_body_over_http2_and_http3() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let h3 = free_port();
    let mg = Meshgate::start(&config(backend.addr, h3));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));

    let (status, h, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x-request-id: req-h2",
        &format!("{base}/nowhere"),
    ]);
    assert_eq!(status, 404);
    assert_eq!(h["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["request_id"], "req-h2");
    let (status, h, body) = curl(&["--http2-prior-knowledge", &format!("{base}/down")]);
    assert_eq!(status, 500);
    assert_eq!(h["x-mapped"], "no_healthy_upstream");
    assert_eq!(json(&body)["code"], 500);

    // HTTP/3: aioquic's client prints the head, then the body.
    let r = meshgate_tests::aioquic::get(h3, &["/nowhere", "/down"], None);
    let (head, body) = r[0]
        .1
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| r[0].1.split_once("\n\n").unwrap());
    assert!(head.contains("404"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    let v = json(body);
    assert_eq!(v["protocol"], "HTTP/3");
    assert_eq!(v["details"], "no_route");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36);
    let head = &r[1].1;
    assert!(head.contains("500"), "{head}");
    assert!(head.contains("x-mapped: no_healthy_upstream"), "{head}");
}

/// One unary call with grpcio: `OK` or the status name and details.
fn grpc_call(port: u16, method: &str) -> String {
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
m = ch.unary_unary(sys.argv[2])
try:
    m(b"hi", metadata=(("x-request-id", "req-grpc"),), timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("127.0.0.1:{port}"), method])
        .output()
        .expect("python3 with grpcio");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Envoy's gRPC rule: the rendered body is the grpc-message, the status
/// follows the (rewritten) HTTP status; the client still gets a valid
/// trailers-only gRPC status.
#[test]
fn grpc_client_gets_the_rendered_body_as_grpc_message() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(backend.addr, free_port()));
    let port = mg.listener_port("web");
    // No route: UNIMPLEMENTED, with the JSON as details.
    let r = grpc_call(port, "/nowhere.Svc/Call");
    let (code, details) = r.split_once(' ').unwrap_or((&r, ""));
    assert_eq!(code, "UNIMPLEMENTED", "{r}");
    let v = json(details);
    assert_eq!(v["request_id"], "req-grpc");
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["details"], "no_route");
    // 503 rewritten to 500: the gRPC status follows the new HTTP status
    // (500 is UNKNOWN in gRPC's HTTP mapping).
    let r = grpc_call(port, "/down.Svc/Call");
    let (code, details) = r.split_once(' ').unwrap_or((&r, ""));
    assert_eq!(code, "UNKNOWN", "{r}");
    assert_eq!(json(details)["code"], 500);
}

#[test]
fn bad_local_reply_configs_are_refused_naming_the_field() {
    let cases = [
        (
            "local_reply_config: {body_format: {text_format: \"%UPSTREAM_PEER_SUBJECT%\"}}",
            "local_reply_config.body_format.text_format",
        ),
        (
            "local_reply_config: {mappers: [{filter: {duration_filter: {}}}]}",
            "duration_filter",
        ),
        (
            "local_reply_config: {mappers: [{filter: {response_flag_filter: {flags: [XX]}}}]}",
            "local_reply_config.mappers[0].filter.response_flag_filter.flags[0]",
        ),
        (
            "local_reply_config: {mappers: [{filter: {not_health_check_filter: {}}, status_code: 700}]}",
            "local_reply_config.mappers[0].status_code",
        ),
        (
            "local_reply_config: {body_format: {text_format: \"%START_TIME(%Q)%\"}}",
            "START_TIME",
        ),
    ];
    for (opt, want) in cases {
        let yaml = format!(
            r#"listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              {opt}
              route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: []}}]}}
"#
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{opt} was accepted");
        let text = format!("{out}{err}");
        assert!(text.contains(want), "{opt}: {text}");
    }
}

/// The HCM's `local_reply_config` from a real xDS control plane: a mapper
/// rewriting a direct response's 200 to 203 with its own body and a text body format.
#[test]
fn local_reply_config_from_xds() {
    use envoy_types::pb::envoy::config::accesslog::v3 as al;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    #[allow(deprecated)]
    let text = |t: &str| core3::SubstitutionFormatString {
        format: Some(core3::substitution_format_string::Format::TextFormat(
            t.into(),
        )),
        ..Default::default()
    };
    h.local_reply_config = Some(hcm::LocalReplyConfig {
        mappers: vec![hcm::ResponseMapper {
            filter: Some(al::AccessLogFilter {
                filter_specifier: Some(al::access_log_filter::FilterSpecifier::StatusCodeFilter(
                    al::StatusCodeFilter {
                        comparison: Some(al::ComparisonFilter {
                            op: al::comparison_filter::Op::Eq as i32,
                            value: Some(core3::RuntimeUInt32 {
                                default_value: 200,
                                runtime_key: "lr".into(),
                            }),
                        }),
                    },
                )),
            }),
            status_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 203 }),
            body: Some(core3::DataSource {
                specifier: Some(core3::data_source::Specifier::InlineString(
                    "nothing here".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }],
        body_format: Some(text("%LOCAL_REPLY_BODY% id=%REQ(x-request-id)%\n")),
    });
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=b");
    // The fixture's `/direct` route answers itself: a local reply.
    let (status, h, body) = curl(&[
        "-H",
        "x-request-id: xds-1",
        &format!("http://127.0.0.1:{port}/direct"),
    ]);
    assert_eq!(status, 203);
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(body, "nothing here id=xds-1\n");
    // The upstream's 200 is not a local reply: untouched.
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/x")]);
    assert_eq!(status, 200);
    assert!(body.contains("backend=b"), "{body}");
}
