//! Distributed tracing (`proxy` filter `tracing`, OpenTelemetry provider)
//! against real peers (tests/peers/tracing_peer.py): an OTLP/gRPC trace
//! receiver written with grpcio and the OpenTelemetry protos, a traced
//! Python HTTP app that continues the W3C context, HTTP and gRPC upstreams
//! that log the headers they got. Two meshgates, a gateway and a sidecar,
//! with the app between them: the exported spans form one trace
//! (gateway server -> gateway client -> app -> sidecar server -> sidecar
//! client), attributes follow the OpenTelemetry conventions, sampling
//! decisions (random, forced, client, parent) hold, B3 comes in and W3C
//! goes out, retries are separate client spans, and the same config comes
//! through the real xDS control plane.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer as Peer, logged};
use meshgate_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The proxy `tracing` block of a meshgate exporting as `service`.
fn tracing_block(service: &str, extra: &str) -> String {
    format!(
        r#"              tracing:
                provider:
                  name: envoy.tracers.opentelemetry
                  typed_config:
                    grpc_service: {{envoy_grpc: {{cluster_name: otlp}}, timeout: 2s}}
                    service_name: {service}
                spawn_upstream_span: true
                custom_tags:
                  - {{tag: deployment, literal: {{value: test}}}}
                  - {{tag: tenant, request_header: {{name: x-tenant, default_value: none}}}}
{extra}"#
    )
}

fn sidecar_config(port: u16, otlp: u16, echo: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: sidecar
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{tracing}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: echo}}
clusters:
  - name: otlp
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{otlp}"}}]
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
"#,
        tracing = tracing_block("sidecar", "")
    )
}

fn gateway_config(port: u16, otlp: u16, app: u16, echo: u16, grpc: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: gateway
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{tracing}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - name: chain
                        match: {{prefix: /chain/}}
                        route: {{cluster: app}}
                      - name: unsampled
                        match: {{prefix: /r0/}}
                        route: {{cluster: echo}}
                        tracing:
                          random_sampling: {{value: 0}}
                          client_sampling: {{value: 100}}
                      - name: fail
                        match: {{prefix: /fail/}}
                        route:
                          cluster: echo
                          retry_policy: {{retry_on: 5xx, num_retries: 1, retry_back_off: {{base_interval: 5ms}}}}
                      - name: grpc
                        match: {{prefix: /svc.Echo/}}
                        route: {{cluster: grpc}}
                      - name: echo
                        match: {{prefix: /}}
                        route: {{cluster: echo}}
clusters:
  - name: otlp
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{otlp}"}}]
  - name: app
    endpoints: [{{address: "127.0.0.1:{app}"}}]
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{grpc}"}}]
"#,
        tracing = tracing_block(
            "gateway",
            "                random_sampling: {value: 100}\n                max_path_tag_length: 12\n"
        )
    )
}

struct Setup {
    gateway: Meshgate,
    sidecar: Meshgate,
    gw: u16,
    otlp_log: PathBuf,
    app_log: PathBuf,
    echo_log: PathBuf,
    grpc_log: PathBuf,
    _dir: tempfile::TempDir,
    _peers: Vec<Peer>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = |n: &str| dir.path().join(n);
    let (otlp_log, app_log, echo_log, grpc_log) =
        (log("otlp"), log("app"), log("echo"), log("grpc"));
    let otlp = Peer::start("tracing_peer.py", &["otlp", otlp_log.to_str().unwrap()]);
    let echo = Peer::start("tracing_peer.py", &["echo", echo_log.to_str().unwrap()]);
    let grpc = Peer::start("tracing_peer.py", &["grpc", grpc_log.to_str().unwrap()]);
    let sc = free_port();
    let sidecar = Meshgate::start(&sidecar_config(sc, otlp.port, echo.port));
    let app = Peer::start(
        "tracing_peer.py",
        &["app", app_log.to_str().unwrap(), &sc.to_string()],
    );
    let gw = free_port();
    let gateway = Meshgate::start(&gateway_config(
        gw, otlp.port, app.port, echo.port, grpc.port,
    ));
    wait_listening(([127, 0, 0, 1], gw).into());
    wait_listening(([127, 0, 0, 1], sc).into());
    Setup {
        gateway,
        sidecar,
        gw,
        otlp_log,
        app_log,
        echo_log,
        grpc_log,
        _dir: dir,
        _peers: vec![otlp, echo, grpc, app],
    }
}

fn get(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args: Vec<&str> = Vec::new();
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let (status, _, body) = curl(&args);
    (status, body)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// Waits for the spans of `service` whose `url.path` attribute is
/// `path` (server spans) and returns them.
fn server_span(log: &Path, service: &str, path: &str) -> Value {
    wait_for_within(10, &format!("{service} server span of {path}"), || {
        logged(log)
            .into_iter()
            .find(|s| s["service"] == service && s["kind"] == 2 && attr(s, "url.path") == path)
    })
}

fn children(log: &Path, parent: &Value) -> Vec<Value> {
    logged(log)
        .into_iter()
        .filter(|s| s["parent_span_id"] == parent["span_id"] && s["trace_id"] == parent["trace_id"])
        .collect()
}

/// The last request the echo upstream logged whose path is `path`.
fn echoed(log: &Path, path: &str) -> Value {
    wait_for_within(10, &format!("echo of {path}"), || {
        logged(log).into_iter().rev().find(|e| e["path"] == path)
    })
}

#[test]
fn gateway_app_sidecar_spans_form_one_trace_with_semantic_attributes() {
    let s = setup();
    let (status, _) = get(s.gw, "/chain/a", &["x-tenant: acme"]);
    assert_eq!(status, 200);
    let gw_server = server_span(&s.otlp_log, "gateway", "/chain/a");
    assert_eq!(gw_server["parent_span_id"], "", "a new trace: no parent");
    assert_eq!(gw_server["scope"], "meshgate");
    assert_eq!(attr(&gw_server, "http.request.method"), "GET");
    assert_eq!(attr(&gw_server, "http.route"), "chain");
    assert_eq!(attr(&gw_server, "http.response.status_code"), 200);
    assert_eq!(attr(&gw_server, "server.address"), "127.0.0.1");
    assert_eq!(attr(&gw_server, "network.protocol.name"), "http");
    assert_eq!(attr(&gw_server, "network.protocol.version"), "1.1");
    assert_eq!(attr(&gw_server, "upstream_cluster"), "app");
    assert_eq!(attr(&gw_server, "deployment"), "test");
    assert_eq!(attr(&gw_server, "tenant"), "acme");
    assert_eq!(gw_server["status"], 0);
    assert!(gw_server["end"].as_u64() >= gw_server["start"].as_u64());

    // gateway client span: child of the gateway server span.
    let gw_client = wait_for_within(10, "gateway client span", || {
        children(&s.otlp_log, &gw_server).into_iter().next()
    });
    assert_eq!(gw_client["kind"], 3);
    assert_eq!(gw_client["service"], "gateway");
    assert_eq!(attr(&gw_client, "upstream_cluster"), "app");
    assert_eq!(attr(&gw_client, "http.response.status_code"), 200);
    assert_eq!(attr(&gw_client, "meshgate.attempt"), 1);

    // The app continued the gateway client span's context.
    let app = logged(&s.app_log)
        .into_iter()
        .find(|a| a["trace_id"] == gw_server["trace_id"])
        .expect("the app saw the trace");
    assert_eq!(app["parent_span_id"], gw_client["span_id"]);
    assert_eq!(app["flags"], "01");

    // sidecar server span: child of the app span; sidecar client: its child.
    let sc_server = server_span(&s.otlp_log, "sidecar", "/chain/a");
    assert_eq!(sc_server["trace_id"], gw_server["trace_id"]);
    assert_eq!(sc_server["parent_span_id"], app["span_id"]);
    assert_eq!(attr(&sc_server, "tenant"), "none", "the header's default");
    let sc_client = wait_for_within(10, "sidecar client span", || {
        children(&s.otlp_log, &sc_server).into_iter().next()
    });
    assert_eq!(sc_client["kind"], 3);
    assert_eq!(attr(&sc_client, "upstream_cluster"), "echo");

    // The last upstream got the sidecar client span's context.
    let last = echoed(&s.echo_log, "/chain/a");
    let tp = last["headers"]["traceparent"].as_str().unwrap();
    let want = format!(
        "00-{}-{}-01",
        gw_server["trace_id"].as_str().unwrap(),
        sc_client["span_id"].as_str().unwrap()
    );
    assert_eq!(tp, want);

    // Exported spans are counted.
    s.gateway.wait_metric(
        "meshgate_tracing_spans_exported_total",
        &[("cluster", "otlp")],
        |v| v >= 2.0,
    );
    s.sidecar.wait_metric(
        "meshgate_tracing_spans_exported_total",
        &[("cluster", "otlp")],
        |v| v >= 2.0,
    );
    assert_eq!(
        s.gateway.metric(
            "meshgate_tracing_decisions_total",
            &[("decision", "random")]
        ),
        1.0
    );
}

#[test]
fn sampling_random_zero_forced_client_and_parent_decisions() {
    let s = setup();
    // Route `unsampled`: random 0. Not exported, and the upstream learns
    // the trace is not sampled.
    let (status, _) = get(s.gw, "/r0/none", &[]);
    assert_eq!(status, 200);
    let tp = echoed(&s.echo_log, "/r0/none")["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    // An incoming context that is not sampled: not exported, passed on
    // as it came.
    let parent_off = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    get(s.gw, "/p/off", &[&format!("traceparent: {parent_off}")]);
    assert_eq!(
        echoed(&s.echo_log, "/p/off")["headers"]["traceparent"],
        parent_off
    );
    // Forced by x-envoy-force-trace on the random-0 route.
    get(s.gw, "/r0/forced", &["x-envoy-force-trace: true"]);
    let forced = server_span(&s.otlp_log, "gateway", "/r0/forced");
    assert_eq!(attr(&forced, "http.route"), "unsampled");
    // Client sampling (100 on the route) by x-client-trace-id.
    get(s.gw, "/r0/client", &["x-client-trace-id: abc"]);
    server_span(&s.otlp_log, "gateway", "/r0/client");
    // Envoy's UUID request id carries each decision at position 14 (the
    // version digit) to the next hop: `4` not traced, `a` forced, `b`
    // client.
    let id_digit = |path: &str| {
        let id = echoed(&s.echo_log, path)["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 36, "{id}");
        id.as_bytes()[14] as char
    };
    assert_eq!(id_digit("/r0/none"), '4');
    assert_eq!(id_digit("/r0/forced"), 'a');
    assert_eq!(id_digit("/r0/client"), 'b');
    // An id an earlier hop marked sampled (`9`) is traced on the random-0
    // route, and goes on as it came.
    let sampled_id = "125a4afb-6f55-94ba-ad80-413f09f48a28";
    get(
        s.gw,
        "/r0/packed",
        &[&format!("x-request-id: {sampled_id}")],
    );
    server_span(&s.otlp_log, "gateway", "/r0/packed");
    assert_eq!(
        echoed(&s.echo_log, "/r0/packed")["headers"]["x-request-id"],
        sampled_id
    );
    // An incoming sampled context is continued: same trace, its span is
    // the parent, tracestate kept.
    let parent_on = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-01";
    get(
        s.gw,
        "/p/on",
        &[&format!("traceparent: {parent_on}"), "tracestate: vendor=x"],
    );
    let on = server_span(&s.otlp_log, "gateway", "/p/on");
    assert_eq!(on["trace_id"], "0af7651916cd43dd8448eb211c80319d");
    assert_eq!(on["parent_span_id"], "b7ad6b7169203332");
    assert_eq!(on["trace_state"], "vendor=x");
    let up = echoed(&s.echo_log, "/p/on");
    assert_eq!(up["headers"]["tracestate"], "vendor=x");
    // Spans are exported in the order their streams ended: the later
    // sampled streams arrived, so the unsampled ones would have too.
    let paths: Vec<String> = logged(&s.otlp_log)
        .iter()
        .filter_map(|s| attr(s, "url.path").as_str().map(str::to_string))
        .collect();
    assert!(!paths.contains(&"/r0/none".to_string()), "{paths:?}");
    assert!(!paths.contains(&"/p/off".to_string()), "{paths:?}");
    for (decision, n) in [
        ("not_sampled", 2.0),
        ("forced", 1.0),
        ("client", 1.0),
        ("parent", 1.0),
        ("random", 1.0),
    ] {
        assert_eq!(
            s.gateway.metric(
                "meshgate_tracing_decisions_total",
                &[("decision", decision)]
            ),
            n,
            "{decision}"
        );
    }
}

#[test]
fn b3_in_w3c_out_and_path_tag_is_bounded() {
    let s = setup();
    get(
        s.gw,
        "/b3/multi",
        &[
            "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124",
            "x-b3-spanid: a2fb4a1d1a96d312",
            "x-b3-sampled: 1",
        ],
    );
    let span = server_span(&s.otlp_log, "gateway", "/b3/multi");
    assert_eq!(span["trace_id"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(span["parent_span_id"], "a2fb4a1d1a96d312");
    let client = wait_for_within(10, "client span", || {
        children(&s.otlp_log, &span).into_iter().next()
    });
    let up = echoed(&s.echo_log, "/b3/multi");
    assert_eq!(
        up["headers"]["traceparent"],
        format!(
            "00-463ac35c9f6413ad48485a3953bb6124-{}-01",
            client["span_id"].as_str().unwrap()
        )
    );
    assert!(up["headers"].get("x-b3-traceid").is_none(), "{up}");
    assert!(up["headers"].get("x-b3-spanid").is_none(), "{up}");
    // Single-header b3, 64-bit trace id.
    get(
        s.gw,
        "/b3/single",
        &["b3: 64fe8b2a57d3eff7-e457b5a2e4d86bd1-1"],
    );
    let single = server_span(&s.otlp_log, "gateway", "/b3/single");
    assert_eq!(single["trace_id"], "000000000000000064fe8b2a57d3eff7");
    assert_eq!(single["parent_span_id"], "e457b5a2e4d86bd1");
    assert!(
        echoed(&s.echo_log, "/b3/single")["headers"]
            .get("b3")
            .is_none()
    );
    // max_path_tag_length: 12 on the gateway.
    get(s.gw, "/long/path/cut/here", &[]);
    wait_for_within(10, "the cut path", || {
        logged(&s.otlp_log)
            .into_iter()
            .find(|s| attr(s, "url.path") == "/long/path/c")
    });
}

#[test]
fn retries_are_separate_client_spans_and_5xx_is_an_error() {
    let s = setup();
    let (status, _) = get(s.gw, "/fail/x", &[]);
    assert_eq!(status, 503);
    let server = server_span(&s.otlp_log, "gateway", "/fail/x");
    assert_eq!(server["status"], 2, "5xx: STATUS_CODE_ERROR");
    assert_eq!(attr(&server, "http.response.status_code"), 503);
    let tries = wait_for_within(10, "two client spans", || {
        let c = children(&s.otlp_log, &server);
        (c.len() == 2).then_some(c)
    });
    let mut attempts: Vec<i64> = tries
        .iter()
        .map(|t| attr(t, "meshgate.attempt").as_i64().unwrap())
        .collect();
    attempts.sort();
    assert_eq!(attempts, [1, 2]);
    for t in &tries {
        assert_eq!(t["status"], 2);
        assert_eq!(attr(t, "http.response.status_code"), 503);
        assert_eq!(t["kind"], 3);
    }
    // Each try carried its own span's context.
    let seen: Vec<String> = logged(&s.echo_log)
        .iter()
        .filter(|e| e["path"] == "/fail/x")
        .map(|e| e["headers"]["traceparent"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), 2);
    for t in &tries {
        let id = t["span_id"].as_str().unwrap();
        assert!(seen.iter().any(|tp| tp.contains(id)), "{seen:?} {id}");
    }
}

#[test]
fn grpc_calls_carry_the_context_and_rpc_attributes() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/svc.Echo/Hi", s.gw);
    // One empty gRPC message: flag 0, length 0.
    let body = s._dir.path().join("grpc-body");
    std::fs::write(&body, [0u8; 5]).unwrap();
    let data = format!("@{}", body.display());
    let (status, headers, _) = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        &data,
        &url,
    ]);
    // The answer's head and trailers are the gRPC tests' business; this
    // one checks what reached the upstream and what was exported.
    let _ = (status, headers);
    let call = wait_for_within(10, "the gRPC call", || {
        logged(&s.grpc_log).into_iter().next()
    });
    assert_eq!(call["method"], "/svc.Echo/Hi");
    let span = server_span(&s.otlp_log, "gateway", "/svc.Echo/Hi");
    assert_eq!(attr(&span, "rpc.system"), "grpc");
    assert_eq!(attr(&span, "rpc.service"), "svc.Echo");
    assert_eq!(attr(&span, "rpc.method"), "Hi");
    assert_eq!(attr(&span, "network.protocol.version"), "2");
    assert_eq!(span["name"], "svc.Echo/Hi");
    let client = wait_for_within(10, "client span", || {
        children(&s.otlp_log, &span).into_iter().next()
    });
    assert_eq!(
        call["headers"]["traceparent"],
        format!(
            "00-{}-{}-01",
            span["trace_id"].as_str().unwrap(),
            client["span_id"].as_str().unwrap()
        )
    );
}

#[test]
fn unsupported_provider_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.yaml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            r#"listeners:
  - name: l
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              tracing:
                provider: {{name: envoy.tracers.datadog, typed_config: {{}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
"#
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("tracing.provider.name"), "{text}");
    assert!(text.contains("envoy.tracers.datadog"), "{text}");
}

#[test]
fn hcm_and_route_tracing_from_xds() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::config::trace::v3 as trace3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::r#type::tracing::v3 as tag3;
    use envoy_types::pb::envoy::r#type::v3 as typev3;
    use envoy_types::pb::google::protobuf::BoolValue;
    use meshgate_tests::xds::*;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let otlp_log = dir.path().join("otlp");
    let echo_log = dir.path().join("echo");
    let otlp = Peer::start("tracing_peer.py", &["otlp", otlp_log.to_str().unwrap()]);
    let echo = Peer::start("tracing_peer.py", &["echo", echo_log.to_str().unwrap()]);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // The deprecated field is the one meshgate translates to HTTP/2.
    #[allow(deprecated)]
    let otlp_cluster = cds::Cluster {
        name: "otlp".into(),
        load_assignment: Some(cla_msg(
            "otlp",
            &[(([127, 0, 0, 1], otlp.port).into(), 1, 0)],
        )),
        http2_protocol_options: Some(Default::default()),
        ..Default::default()
    };
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", ([127, 0, 0, 1], echo.port).into()),
            ("otlp".into(), any(CLUSTER, &otlp_cluster)),
        ],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let otel = trace3::OpenTelemetryConfig {
        grpc_service: Some(core3::GrpcService {
            target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                core3::grpc_service::EnvoyGrpc {
                    cluster_name: "otlp".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: "xds-gateway".into(),
        ..Default::default()
    };
    h.tracing = Some(hcm::http_connection_manager::Tracing {
        random_sampling: Some(typev3::Percent { value: 0.0 }),
        spawn_upstream_span: Some(BoolValue { value: true }),
        custom_tags: vec![tag3::CustomTag {
            tag: "origin".into(),
            r#type: Some(tag3::custom_tag::Type::Literal(tag3::custom_tag::Literal {
                value: "xds".into(),
            })),
        }],
        provider: Some(trace3::tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(trace3::tracing::http::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                &otel,
            ))),
        }),
        ..Default::default()
    });
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    // The catch-all route samples everything (the HCM's random is 0).
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    let last = r.virtual_hosts[0].routes.len() - 1;
    r.virtual_hosts[0].routes[last].tracing = Some(rds::Tracing {
        random_sampling: Some(typev3::FractionalPercent {
            numerator: 100,
            denominator: 0,
        }),
        ..Default::default()
    });
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    let (status, _) = self::get(port, "/traced", &[]);
    assert_eq!(status, 200);
    let span = server_span(&otlp_log, "xds-gateway", "/traced");
    assert_eq!(attr(&span, "origin"), "xds");
    let client = wait_for_within(10, "client span", || {
        children(&otlp_log, &span).into_iter().next()
    });
    assert_eq!(
        echoed(&echo_log, "/traced")["headers"]["traceparent"],
        format!(
            "00-{}-{}-01",
            span["trace_id"].as_str().unwrap(),
            client["span_id"].as_str().unwrap()
        )
    );
}

/// A hessian2 string of any length below 32 Ki chars (`S` + 2-byte length
/// past the compact forms).
fn hessian_str(out: &mut Vec<u8>, s: &str) {
    let n = s.chars().count();
    if n < 32 {
        out.push(n as u8);
    } else {
        out.push(b'S');
        out.extend((n as u16).to_be_bytes());
    }
    out.extend(s.as_bytes());
}

#[test]
fn dubbo_traceparent_attachment_is_continued_with_rpc_attributes() {
    use meshgate_tests::rpc::*;
    const ECHO: &str = "com.meshgate.Echo";
    let dir = tempfile::tempdir().unwrap();
    let otlp_log = dir.path().join("otlp");
    let otlp = Peer::start("tracing_peer.py", &["otlp", otlp_log.to_str().unwrap()]);
    let provider = Provider::start("dubbo", "A");
    let port = free_port();
    let _mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rpc
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
{tracing}              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: a}}
clusters:
  - name: otlp
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{otlp}"}}]
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
"#,
        tracing = tracing_block(
            "rpc-gateway",
            "                random_sampling: {value: 0}\n"
        ),
        otlp = otlp.port,
        provider = provider.port,
    ));
    wait_listening(([127, 0, 0, 1], port).into());
    let parent = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
    let mut body = Vec::new();
    for s in ["2.0.2", ECHO, "1.0", "echo", "Ljava/lang/String;", "hi"] {
        hessian_str(&mut body, s);
    }
    body.push(b'H');
    hessian_str(&mut body, "traceparent");
    hessian_str(&mut body, parent);
    body.push(b'Z');
    let mut c = send_raw(port, &dubbo_frame(0xc2, 0, 7, &body));
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 7), "the call went through");
    // random_sampling 0: only the sampled parent makes this traced.
    let span = wait_for_within(10, "the Dubbo server span", || {
        logged(&otlp_log)
            .into_iter()
            .find(|s| s["service"] == "rpc-gateway" && s["kind"] == 2)
    });
    assert_eq!(span["trace_id"], "5bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["parent_span_id"], "10f067aa0ba902b7");
    assert_eq!(attr(&span, "rpc.system"), "apache_dubbo");
    assert_eq!(attr(&span, "rpc.service"), ECHO);
    assert_eq!(attr(&span, "rpc.method"), "echo");
    assert_eq!(attr(&span, "network.protocol.name"), "dubbo");
    assert_eq!(attr(&span, "upstream_cluster"), "a");
    assert_eq!(span["name"], format!("{ECHO}/echo"));
    let client = wait_for_within(10, "the Dubbo client span", || {
        children(&otlp_log, &span).into_iter().next()
    });
    assert_eq!(attr(&client, "upstream_cluster"), "a");
}
