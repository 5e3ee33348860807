//! The `grpc_json_transcoder` stream filter end to end: curl as the REST
//! client, meshgate, and a grpcio server whose descriptor set grpcio-tools
//! generates in the test setup (tests/peers/transcode_peer.py: protoc
//! `--descriptor_set_out --include_imports` over a bookstore.proto with
//! `google.api.http` annotations). GET with path variables and query
//! parameters, POST with a body field and `body: "*"`, additional
//! bindings, server streaming as a JSON array and as lines, gRPC errors as
//! HTTP statuses, hostile JSON refused with 400 and counted, and the
//! filter configured through a real xDS control plane.

use meshgate_tests::pypeer::PyPeer;
use meshgate_tests::*;
use std::path::PathBuf;
use std::process::Command;

/// One response: status, content type, body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap_or(0), ct.to_string(), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

struct Setup {
    _dir: tempfile::TempDir,
    _server: PyPeer,
    pb: PathBuf,
    grpc_port: u16,
    mg: Meshgate,
    /// The default print options, `convert_grpc_status`.
    rest: u16,
    /// Newline-delimited streams, proto names, enums as ints, whitespace,
    /// the incoming route kept, a small body bound.
    lines: u16,
}

/// A grpcio server and a meshgate in front of it (each test runs in its
/// own process: both are stopped when the test's `Setup` drops).
fn setup() -> Setup {
    {
        let dir = tempfile::tempdir().unwrap();
        let server = PyPeer::start("transcode_peer.py", &[dir.path().to_str().unwrap()]);
        let pb = dir.path().join("bookstore.pb");
        let (rest, lines) = (free_port(), free_port());
        let yaml = format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rest
    address: 127.0.0.1:{rest}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: grpc_json_transcoder
                  config:
                    proto_descriptor: "{pb}"
                    services: [bookstore.Bookstore]
                    convert_grpc_status: true
                    ignored_query_parameters: [api_key]
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /bookstore.Bookstore/}}
                        route: {{cluster: grpc, timeout: 10s}}
  - name: lines
    address: 127.0.0.1:{lines}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: grpc_json_transcoder
                  config:
                    proto_descriptor: "{pb}"
                    services: [bookstore.Bookstore]
                    match_incoming_request_route: true
                    max_request_body_size: 64
                    print_options:
                      stream_newline_delimited: true
                      preserve_proto_field_names: true
                      always_print_enums_as_ints: true
                      always_print_primitive_fields: true
                      add_whitespace: false
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /v1/}}
                        route: {{cluster: grpc, timeout: 10s}}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
"#,
            pb = pb.display(),
            up = server.port,
        );
        let mg = Meshgate::start(&yaml);
        Setup {
            grpc_port: server.port,
            _dir: dir,
            _server: server,
            pb,
            mg,
            rest,
            lines,
        }
    }
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
fn get_with_path_variable_and_query_parameters() {
    let s = setup();
    let (code, ct, body) = curl(&[&url(s.rest, "/v1/shelves/12?api_key=secret")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(ct, "application/json");
    assert_eq!(
        json(&body),
        serde_json::json!({"id":"12","theme":"theme-12","genre":"HISTORY","tags":["a","b"]})
    );
    // Over HTTP/2 (h2c) too.
    let (code, _, body) = curl(&["--http2-prior-knowledge", &url(s.rest, "/v1/shelves/13")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["id"], "13");
    // `**` and a path variable of a nested resource name.
    let (code, _, body) = curl(&[&url(s.rest, "/v1/shelves/2/books/a/b")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"title":"shelves/2/books/a/b","pages":7})
    );
    // `response_body`: only the title.
    let (code, _, body) = curl(&[&url(s.rest, "/v1/titles/x")]);
    assert_eq!((code, body.as_str()), (200, r#""title of x""#));
    assert!(
        s.mg.metric(
            "meshgate_grpc_json_transcoder_transcoded_total",
            &[("method", "/bookstore.Bookstore/GetShelf")]
        ) >= 2.0
    );
}

#[test]
fn post_and_put_with_a_body() {
    let s = setup();
    // `body: "book"`, the shelf from the path.
    let (code, _, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"title":"Dune","pages":412,"genre":"FICTION","inPrint":true}"#,
        &url(s.rest, "/v1/shelves/3/books"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"id":"3001","title":"Dune","pages":412,"genre":"FICTION","inPrint":true})
    );
    // `body: "*"` and its additional binding (PATCH /v2/...): the path
    // variable wins over the body's id.
    for (method, path) in [("PUT", "/v1/shelves/9"), ("PATCH", "/v2/shelves/9")] {
        let (code, _, body) = curl(&[
            "-X",
            method,
            "-d",
            r#"{"id":"1","theme":"sea","tags":["x"],"shelfSize":4}"#,
            &url(s.rest, path),
        ]);
        assert_eq!(code, 200, "{method} {body}");
        assert_eq!(
            json(&body),
            serde_json::json!({"id":"9","theme":"sea","tags":["x"],"shelfSize":4})
        );
    }
}

#[test]
fn server_streaming_as_a_json_array_and_as_lines() {
    let s = setup();
    let q = "/v1/shelves/2/books?limit=3&author_filter=Ann%20Leckie&filter.genre=HISTORY&filter.in_print=true";
    let (code, ct, body) = curl(&[&url(s.rest, q)]);
    assert_eq!((code, ct.as_str()), (200, "application/json"), "{body}");
    let v = json(&body);
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 3);
    for (i, b) in a.iter().enumerate() {
        assert_eq!(
            *b,
            serde_json::json!({"id":(2000 + i).to_string(),"author":"Ann Leckie","title":format!("t{i}"),"genre":"HISTORY","inPrint":true})
        );
    }
    // No message: an empty array.
    let (code, _, body) = curl(&[&url(s.rest, "/v1/shelves/2/books?limit=0")]);
    assert_eq!((code, body.as_str()), (200, "[]"));
    // Newline-delimited, with the other print options; the route the
    // REST path matched is kept (`match_incoming_request_route`: that
    // listener has no route for the gRPC path).
    let (code, _, body) = curl(&[&url(s.lines, "/v1/shelves/2/books?limit=2&tags=p&tags=q")]);
    assert_eq!(code, 200, "{body}");
    let lines: Vec<_> = body.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(
        lines[1],
        serde_json::json!({"id":"2001","author":"","title":"p,q","pages":0,"genre":0,"in_print":false})
    );
}

#[test]
fn grpc_errors_become_http_statuses() {
    let s = setup();
    let (code, ct, body) = curl(&[&url(s.rest, "/v1/shelves/404")]);
    assert_eq!((code, ct.as_str()), (404, "application/json"));
    assert_eq!(
        json(&body),
        serde_json::json!({"code":5,"message":"shelf 404 is not here"})
    );
    let (code, _, body) = curl(&[&url(s.rest, "/v1/shelves/403")]);
    assert_eq!(code, 403);
    assert_eq!(json(&body)["code"], 7);
    // A stream that fails before its first message.
    let (code, _, body) = curl(&[&url(s.rest, "/v1/shelves/1/books?limit=1000")]);
    assert_eq!(code, 400);
    assert_eq!(json(&body)["message"], "limit too large");
    // Without convert_grpc_status: the message as text.
    let (code, ct, body) = curl(&[&url(s.lines, "/v1/shelves/404")]);
    assert_eq!((code, ct.as_str()), (404, "text/plain"));
    assert_eq!(body, "shelf 404 is not here\n");
}

/// A unary error that arrives in the trailers after the response head
/// (the server sent its initial metadata first): the unary response is
/// read whole, so the HTTP status is the mapped one, as with Envoy; a
/// `grpc-status-details-bin` becomes the JSON `google.rpc.Status` with its
/// typed details resolved through the descriptor set.
#[test]
fn unary_errors_in_trailers_after_the_head_get_their_http_status() {
    let s = setup();
    let (code, ct, body) = curl(&[&url(s.rest, "/v1/shelves/410")]);
    assert_eq!((code, ct.as_str()), (404, "application/json"), "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"code": 5, "message": "shelf 410 is gone"})
    );
    let (code, ct, body) = curl(&[&url(s.rest, "/v1/shelves/409")]);
    assert_eq!((code, ct.as_str()), (409, "application/json"), "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"code": 10, "message": "shelf is locked", "details": [
            {"@type": "type.googleapis.com/bookstore.ShelfError", "reason": "locked", "shelf": "409"}
        ]})
    );
    // Without convert_grpc_status: the status's message as text.
    let (code, ct, body) = curl(&[&url(s.lines, "/v1/shelves/409")]);
    assert_eq!((code, ct.as_str()), (409, "text/plain"));
    assert_eq!(body, "shelf is locked\n");
    // A unary success read whole is unchanged.
    let (code, _, body) = curl(&[&url(s.rest, "/v1/shelves/5")]);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["theme"], "theme-5");
}

#[test]
fn hostile_json_gets_400_and_is_counted() {
    let s = setup();
    let before = s.mg.metric(
        "meshgate_grpc_json_transcoder_rejected_total",
        &[("reason", "bad_json")],
    );
    let deep = format!("{}{}", "{\"book\":".repeat(300), "}".repeat(300));
    let cases = [
        "{",
        "not json",
        deep.as_str(),
        r#"{"pages":1e999}"#,
        r#"{"pages":99999999999999999999}"#,
        r#"{"pages":"many"}"#,
        r#"{"genre":"POETRY"}"#,
        r#"{"unknown":1}"#,
    ];
    for body in cases {
        let (code, _, text) = curl(&[
            "-X",
            "POST",
            "--data-binary",
            body,
            &url(s.rest, "/v1/shelves/3/books"),
        ]);
        assert_eq!(code, 400, "{body:.60}: {text}");
        assert!(
            text.starts_with("meshgate: grpc_json_transcoder:"),
            "{text}"
        );
    }
    s.mg.wait_metric(
        "meshgate_grpc_json_transcoder_rejected_total",
        &[("reason", "bad_json")],
        |v| v >= before + cases.len() as f64,
    );
    // A query parameter naming no field; a bad bool.
    let (code, _, _) = curl(&[&url(s.rest, "/v1/shelves/1?nope=1")]);
    assert_eq!(code, 400);
    let (code, _, _) = curl(&[&url(s.rest, "/v1/shelves/1/books?filter.in_print=maybe")]);
    assert_eq!(code, 400);
    assert!(
        s.mg.metric(
            "meshgate_grpc_json_transcoder_rejected_total",
            &[("reason", "unknown_query_parameter")]
        ) >= 1.0
    );
    // Past `max_request_body_size`: 413.
    let big = format!(r#"{{"theme":"{}"}}"#, "x".repeat(200));
    let (code, _, _) = curl(&["-X", "PUT", "-d", &big, &url(s.lines, "/v1/shelves/1")]);
    assert_eq!(code, 413);
    s.mg.wait_metric(
        "meshgate_grpc_json_transcoder_rejected_total",
        &[("reason", "too_large")],
        |v| v >= 1.0,
    );
    // Still serving.
    let (code, _, _) = curl(&[&url(s.rest, "/v1/shelves/1")]);
    assert_eq!(code, 200);
}

#[test]
fn grpc_clients_and_unmapped_paths_pass_through() {
    let s = setup();
    // A path no rule maps goes on unchanged: here no route matches it.
    let (code, _, _) = curl(&[&url(s.rest, "/v1/unmapped")]);
    assert_eq!(code, 404);
    // A bad config names its field.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    for (cfg, field) in [
        (
            format!(
                "proto_descriptor: \"{}\"\n                    services: [bookstore.Nope]",
                s.pb.display()
            ),
            "services[0]",
        ),
        (
            format!(
                "proto_descriptor: \"{}\"\n                    case_insensitive_enum_parsing: true",
                s.pb.display()
            ),
            "case_insensitive_enum_parsing",
        ),
    ] {
        let yaml = format!(
            r#"listeners:
  - name: rest
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: grpc_json_transcoder
                  config:
                    {cfg}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: grpc}}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{}"}}]
"#,
            s.grpc_port
        );
        std::fs::write(&path, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{cfg}");
        let text = format!("{out}{err}");
        assert!(text.contains(field), "{field} not in: {text}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.grpc_json_transcoder` (the descriptor set inline,
/// `proto_descriptor_bin`) before the router, the cluster is HTTP/2.
#[test]
fn transcoder_from_xds_http_filters() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::grpc_json_transcoder::v3 as gjt;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let s = setup();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    #[allow(deprecated)]
    let cluster = cds::Cluster {
        name: "bookstore".into(),
        load_assignment: Some(cla_msg(
            "bookstore",
            &[(([127, 0, 0, 1], s.grpc_port).into(), 1, 0)],
        )),
        http2_protocol_options: Some(Default::default()),
        ..Default::default()
    };
    mgmt.set(
        CLUSTER,
        "c1",
        vec![("bookstore".into(), any(CLUSTER, &cluster))],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let t = gjt::GrpcJsonTranscoder {
        descriptor_set: Some(
            gjt::grpc_json_transcoder::DescriptorSet::ProtoDescriptorBin(
                std::fs::read(&s.pb).unwrap(),
            ),
        ),
        services: vec!["bookstore.Bookstore".into()],
        convert_grpc_status: true,
        print_options: Some(gjt::grpc_json_transcoder::PrintOptions {
            stream_newline_delimited: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.grpc_json_transcoder".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                &t,
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    // Routes on the gRPC path, as Envoy's transcoder expects.
    let (rname, r) = route_config("r1", &[("bookstore", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    if let Some(rds::route_match::PathSpecifier::Prefix(p)) = r.virtual_hosts[0].routes[1]
        .r#match
        .as_mut()
        .and_then(|m| m.path_specifier.as_mut())
    {
        *p = "/bookstore.Bookstore/".into();
    }
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_until("the transcoder from xDS serves", || {
        let (code, _, body) = curl(&[&url(port, "/v1/shelves/21")]);
        code == 200 && body.contains("theme-21")
    });
    let (code, _, body) = curl(&[&url(port, "/v1/shelves/4/books?limit=2")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.lines().count(), 2, "{body}");
    let (code, _, body) = curl(&[&url(port, "/v1/shelves/404")]);
    assert_eq!(code, 404);
    assert_eq!(json(&body)["code"], 5);
}
