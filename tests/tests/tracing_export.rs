//! Span exporters besides OTLP/gRPC, and who may force a trace, against
//! real peers: an OTLP/HTTP receiver decoding the protobuf with the
//! OpenTelemetry protos and a Zipkin v2 JSON receiver
//! (tests/peers/trace_export_peer.py), an HTTP upstream that logs the
//! headers it got (tests/peers/tracing_peer.py). `x-envoy-force-trace` is
//! honoured from an internal client only.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer as Peer, logged};
use meshgate_tests::*;
use serde_json::Value;
use std::path::Path;

fn config(port: u16, tracing: &str, collector: u16, echo: u16) -> String {
    config_with(port, "", tracing, collector, echo)
}

fn config_with(port: u16, extra: &str, tracing: &str, collector: u16, echo: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{extra}              tracing:
{tracing}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: echo}}
clusters:
  - name: collector
    endpoints: [{{address: "127.0.0.1:{collector}"}}]
  - name: echo
    endpoints: [{{address: "127.0.0.1:{echo}"}}]
"#
    )
}

fn get(port: u16, path: &str, headers: &[&str]) -> u16 {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args: Vec<&str> = Vec::new();
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    curl(&args).0
}

/// The logged spans (with the export request's path and headers) whose
/// server span has `url.path`/`http.path` tag `path`, once there are `n`.
fn spans_of(log: &Path, n: usize, what: &str, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_for_within(10, what, || {
        let v: Vec<Value> = logged(log).into_iter().filter(|e| f(e)).collect();
        (v.len() >= n).then_some(v)
    })
}

fn echoed(log: &Path, path: &str) -> Value {
    wait_for_within(10, &format!("echo of {path}"), || {
        logged(log).into_iter().rev().find(|e| e["path"] == path)
    })
}

struct Peers {
    collector: Peer,
    echo: Peer,
    log: std::path::PathBuf,
    echo_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn peers(mode: &str) -> Peers {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("collector");
    let echo_log = dir.path().join("echo");
    Peers {
        collector: Peer::start("trace_export_peer.py", &[mode, log.to_str().unwrap()]),
        echo: Peer::start("tracing_peer.py", &["echo", echo_log.to_str().unwrap()]),
        log,
        echo_log,
        _dir: dir,
    }
}

#[test]
fn otlp_http_exports_protobuf_to_v1_traces_with_added_headers() {
    let p = peers("otlp-http");
    let port = free_port();
    let tracing = r#"                provider:
                  name: envoy.tracers.opentelemetry
                  typed_config:
                    service_name: http-exporter
                    http_service:
                      http_uri: {uri: "http://otel.example:4318/v1/traces", cluster: collector, timeout: 2s}
                      request_headers_to_add:
                        - header: {key: x-api-key, value: s3cret}
                spawn_upstream_span: true
"#;
    let mg = Meshgate::start(&config(port, tracing, p.collector.port, p.echo.port));
    wait_listening(([127, 0, 0, 1], port).into());
    assert_eq!(get(port, "/otlp/a", &[]), 200);
    let spans = spans_of(&p.log, 2, "server and client span", |e| {
        e["span"]["attributes"]["url.path"] == "/otlp/a" || e["span"]["kind"] == 3
    });
    let server = spans
        .iter()
        .find(|e| e["span"]["kind"] == 2)
        .expect("a server span");
    let client = spans
        .iter()
        .find(|e| e["span"]["kind"] == 3)
        .expect("a client span");
    // OTLP/HTTP: POST /v1/traces, protobuf, the URI's authority as Host,
    // the configured header.
    assert_eq!(server["path"], "/v1/traces");
    assert_eq!(server["headers"]["content-type"], "application/x-protobuf");
    assert_eq!(server["headers"]["host"], "otel.example:4318");
    assert_eq!(server["headers"]["x-api-key"], "s3cret");
    let s = &server["span"];
    assert_eq!(s["service"], "http-exporter");
    assert_eq!(s["attributes"]["http.request.method"], "GET");
    assert_eq!(s["attributes"]["http.response.status_code"], 200);
    assert_eq!(client["span"]["parent_span_id"], s["span_id"]);
    assert_eq!(client["span"]["trace_id"], s["trace_id"]);
    // The upstream got the client span's context.
    let tp = echoed(&p.echo_log, "/otlp/a")["headers"]["traceparent"].clone();
    assert_eq!(
        tp,
        format!(
            "00-{}-{}-01",
            s["trace_id"].as_str().unwrap(),
            client["span"]["span_id"].as_str().unwrap()
        )
    );
    mg.wait_metric(
        "meshgate_tracing_spans_exported_total",
        &[("cluster", "collector")],
        |v| v >= 2.0,
    );
}

#[test]
fn zipkin_v2_json_with_64_bit_trace_ids() {
    let p = peers("zipkin");
    let port = free_port();
    let tracing = r#"                provider:
                  name: envoy.tracers.zipkin
                  typed_config:
                    collector_cluster: collector
                    collector_endpoint: /api/v2/spans
                    collector_endpoint_version: HTTP_JSON
                    collector_hostname: zipkin.example
                    shared_span_context: false
                    service_name: zipkin-gw
                spawn_upstream_span: true
"#;
    let mg = Meshgate::start(&config(port, tracing, p.collector.port, p.echo.port));
    wait_listening(([127, 0, 0, 1], port).into());
    assert_eq!(get(port, "/zipkin/a", &[]), 200);
    let spans = spans_of(&p.log, 2, "zipkin server and client span", |e| {
        e["span"]["tags"]["url.path"] == "/zipkin/a" || e["span"]["kind"] == "CLIENT"
    });
    let server = spans
        .iter()
        .find(|e| e["span"]["kind"] == "SERVER")
        .expect("a server span");
    let client = &spans
        .iter()
        .find(|e| e["span"]["kind"] == "CLIENT")
        .expect("a client span")["span"];
    assert_eq!(server["path"], "/api/v2/spans");
    assert_eq!(server["headers"]["content-type"], "application/json");
    assert_eq!(server["headers"]["host"], "zipkin.example");
    let s = &server["span"];
    // trace_id_128bit false (the default): a new trace has a 64-bit id.
    let trace_id = s["traceId"].as_str().unwrap();
    assert_eq!(trace_id.len(), 16, "{trace_id}");
    assert_eq!(s["id"].as_str().unwrap().len(), 16);
    assert!(s.get("parentId").is_none(), "a new trace: no parent");
    assert_eq!(s["localEndpoint"]["serviceName"], "zipkin-gw");
    assert_eq!(s["tags"]["http.response.status_code"], "200");
    assert!(
        s["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000,
        "microseconds"
    );
    assert!(s["duration"].as_u64().unwrap() >= 1);
    assert_eq!(client["traceId"], trace_id);
    assert_eq!(client["parentId"], s["id"]);
    assert_eq!(client["remoteEndpoint"]["ipv4"], "127.0.0.1");
    assert_eq!(client["remoteEndpoint"]["port"], p.echo.port);
    // The upstream sees the same (zero-padded) trace id in W3C form.
    let tp = echoed(&p.echo_log, "/zipkin/a")["headers"]["traceparent"].clone();
    assert_eq!(
        tp,
        format!(
            "00-0000000000000000{trace_id}-{}-01",
            client["id"].as_str().unwrap()
        )
    );
    mg.wait_metric(
        "meshgate_tracing_spans_exported_total",
        &[("cluster", "collector")],
        |v| v >= 2.0,
    );
}

fn validate(tracing: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.yaml");
    std::fs::write(
        &cfg,
        config(free_port(), tracing, 9, 9).replace("{ADMIN}", "127.0.0.1:0"),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    format!("{out}{err}")
}

#[test]
fn zipkin_and_otlp_fields_not_done_are_refused_by_name() {
    let zipkin = |extra: &str| {
        format!(
            "                provider:\n                  name: envoy.tracers.zipkin\n                  typed_config: {{collector_cluster: collector, collector_endpoint: /api/v2/spans{extra}}}\n"
        )
    };
    let text = validate(&zipkin(
        ", shared_span_context: false, collector_endpoint_version: HTTP_PROTO",
    ));
    assert!(
        text.contains("tracing.provider.typed_config.collector_endpoint_version"),
        "{text}"
    );
    // Envoy's default shared_span_context (true) is not meshgate's.
    let text = validate(&zipkin(""));
    assert!(
        text.contains("tracing.provider.typed_config.shared_span_context"),
        "{text}"
    );
    let text = validate(&zipkin(
        ", shared_span_context: false, split_spans_for_request: true",
    ));
    assert!(
        text.contains("tracing.provider.typed_config.split_spans_for_request"),
        "{text}"
    );
    let text = validate(
        "                provider:\n                  name: envoy.tracers.opentelemetry\n                  typed_config: {service_name: x}\n",
    );
    assert!(
        text.contains("exactly one of grpc_service and http_service"),
        "{text}"
    );
}

#[test]
fn force_trace_is_honoured_only_from_internal_clients() {
    let p = peers("otlp-http");
    let port = free_port();
    // Nothing is sampled but what is forced.
    let tracing = r#"                provider:
                  name: envoy.tracers.opentelemetry
                  typed_config:
                    http_service:
                      http_uri: {uri: /v1/traces, cluster: collector, timeout: 2s}
                random_sampling: {value: 0}
                client_sampling: {value: 0}
"#;
    // A mesh hop behind an edge: the client is taken from XFF.
    let mg = Meshgate::start(&config_with(
        port,
        "              use_remote_address: false\n",
        tracing,
        p.collector.port,
        p.echo.port,
    ));
    wait_listening(([127, 0, 0, 1], port).into());
    // External: the trusted client address (the last XFF entry, no
    // trusted hops) is public. Not traced, and the header does not travel.
    get(
        port,
        "/ext",
        &["x-envoy-force-trace: true", "x-forwarded-for: 203.0.113.9"],
    );
    let up = echoed(&p.echo_log, "/ext");
    assert!(up["headers"].get("x-envoy-force-trace").is_none(), "{up}");
    assert!(
        up["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-00")
    );
    // A public client vouched for as internal by an internal hop
    // (x-envoy-internal from a loopback peer): forced.
    get(
        port,
        "/vouched",
        &[
            "x-envoy-force-trace: true",
            "x-envoy-internal: true",
            "x-forwarded-for: 203.0.113.9",
        ],
    );
    // Internal (loopback, no XFF): forced.
    get(port, "/int", &["x-envoy-force-trace: true"]);
    let up = echoed(&p.echo_log, "/int");
    assert!(
        up["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-01")
    );
    let paths = |log: &Path| -> Vec<String> {
        logged(log)
            .iter()
            .filter_map(|e| {
                e["span"]["attributes"]["url.path"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    wait_until_within(10, "two forced spans exported", || paths(&p.log).len() >= 2);
    let got = paths(&p.log);
    assert!(got.contains(&"/int".to_string()), "{got:?}");
    assert!(got.contains(&"/vouched".to_string()), "{got:?}");
    assert!(!got.contains(&"/ext".to_string()), "{got:?}");
    assert_eq!(
        mg.metric("meshgate_tracing_force_trace_ignored_total", &[]),
        1.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_tracing_decisions_total",
            &[("decision", "forced")]
        ),
        2.0
    );
}

/// Envoy's own resources through a real xDS control plane: an INBOUND
/// listener exporting over OTLP/HTTP (`http_service`), an OUTBOUND one
/// exporting to Zipkin; `/drain_listeners?inboundonly` then stops the
/// inbound one only.
#[test]
fn otlp_http_zipkin_and_traffic_direction_from_xds() {
    use meshgate_tests::xds::*;
    let otlp = peers("otlp-http");
    let zipkin_log = otlp._dir.path().join("zipkin");
    let zipkin = Peer::start(
        "trace_export_peer.py",
        &["zipkin", zipkin_log.to_str().unwrap()],
    );
    let (inp, outp) = (free_port(), free_port());
    let cluster = |name: &str, port: u16| {
        format!(
            r#"- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
        )
    };
    let listener = |name: &str, port: u16, direction: &str, provider: &str| {
        format!(
            r#"- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  traffic_direction: {direction}
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {name}
        tracing:
          spawn_upstream_span: true
          provider:
{provider}
        route_config:
          name: {name}
          virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
            - match: {{prefix: /}}
              route: {{cluster: echo}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    let otel = r#"            name: envoy.tracers.opentelemetry
            typed_config:
              "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
              service_name: xds-in
              http_service:
                http_uri: {uri: "http://otel.example/v1/traces", cluster: collector, timeout: 2s}
                request_headers_to_add:
                - header: {key: x-api-key, value: k1}"#;
    let zip = r#"            name: envoy.tracers.zipkin
            typed_config:
              "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
              collector_cluster: zipkin
              collector_endpoint: /api/v2/spans
              collector_endpoint_version: HTTP_JSON
              trace_id_128bit: true
              shared_span_context: false"#;
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&format!(
            "{}{}{}",
            cluster("collector", otlp.collector.port),
            cluster("zipkin", zipkin.port),
            cluster("echo", otlp.echo.port)
        )),
    );
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&format!(
            "{}{}",
            listener("in", inp, "INBOUND", otel),
            listener("out", outp, "OUTBOUND", zip)
        )),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_listening(([127, 0, 0, 1], inp).into());
    wait_listening(([127, 0, 0, 1], outp).into());
    assert_eq!(self::get(inp, "/xds/in", &[]), 200);
    assert_eq!(self::get(outp, "/xds/out", &[]), 200);
    let got = spans_of(&otlp.log, 1, "OTLP/HTTP span from xDS", |e| {
        e["span"]["attributes"]["url.path"] == "/xds/in"
    });
    assert_eq!(got[0]["path"], "/v1/traces");
    assert_eq!(got[0]["headers"]["x-api-key"], "k1");
    assert_eq!(got[0]["span"]["service"], "xds-in");
    let got = spans_of(&zipkin_log, 1, "Zipkin span from xDS", |e| {
        e["span"]["tags"]["url.path"] == "/xds/out"
    });
    assert_eq!(got[0]["path"], "/api/v2/spans");
    // trace_id_128bit: a 128-bit trace id.
    assert_eq!(got[0]["span"]["traceId"].as_str().unwrap().len(), 32);

    // Only the INBOUND listener stops accepting.
    let url = format!("http://{}/drain_listeners?inboundonly", mg.admin.unwrap());
    assert_eq!(curl(&["-X", "POST", &url]).0, 200);
    wait_until_within(10, "the inbound listener to refuse", || {
        std::net::TcpStream::connect(("127.0.0.1", inp)).is_err()
    });
    assert_eq!(self::get(outp, "/xds/out2", &[]), 200);
}
