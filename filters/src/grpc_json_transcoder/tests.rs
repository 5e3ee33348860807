//! Unit tests of the transcoder on the descriptor set the e2e peer makes
//! (testdata/bookstore.pb: tests/peers/transcode_peer.py's protos).

use super::*;
use http_body_util::BodyExt;
use meshgate_core::config::grpc_json_transcoder::{GrpcJsonTranscoderConfig, UrlUnescapeSpec};

const PB: &[u8] = include_bytes!("testdata/bookstore.pb");

fn config() -> GrpcJsonTranscoderConfig {
    use base64::Engine as _;
    GrpcJsonTranscoderConfig {
        proto_descriptor_bin: Some(base64::engine::general_purpose::STANDARD.encode(PB)),
        services: vec!["bookstore.Bookstore".into()],
        ..Default::default()
    }
}

fn filter(f: impl FnOnce(&mut GrpcJsonTranscoderConfig)) -> Transcoder {
    let mut c = config();
    f(&mut c);
    Transcoder::build(c).unwrap()
}

/// The gRPC request a REST request maps to: (grpc path, message as
/// JSON with proto names), or the refusal's reason.
fn call(
    t: &Transcoder,
    method: &str,
    uri: &str,
    body: &str,
) -> Result<(String, Vec<Value>), &'static str> {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let (b, values) = t.rules.find(&m, path).ok_or("no_binding")?;
    let frames = t
        .message(b, &values, query, body.as_bytes())
        .map_err(|r| r.reason)?;
    let mut out = Vec::new();
    let mut f = &frames[..];
    while !f.is_empty() {
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        let msg = DynamicMessage::decode(b.method.desc.input(), &f[5..5 + len]).unwrap();
        let opts = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
        out.push(
            msg.serialize_with_options(serde_json::value::Serializer, &opts)
                .unwrap(),
        );
        f = &f[5 + len..];
    }
    Ok((b.method.path.to_string(), out))
}

#[test]
fn path_variables_query_parameters_and_body_make_the_message() {
    let t = filter(|_| {});
    let (p, m) = call(&t, "GET", "/v1/shelves/12", "").unwrap();
    assert_eq!(p, "/bookstore.Bookstore/GetShelf");
    assert_eq!(m, vec![serde_json::json!({"shelf": "12"})]);
    // `body: "book"`, the path variable beside it.
    let (p, m) = call(
        &t,
        "POST",
        "/v1/shelves/3/books",
        r#"{"title":"Dune","inPrint":true,"genre":"FICTION"}"#,
    )
    .unwrap();
    assert_eq!(p, "/bookstore.Bookstore/CreateBook");
    assert_eq!(
        m[0],
        serde_json::json!({"shelf":"3","book":{"title":"Dune","in_print":true,"genre":"FICTION"}})
    );
    // Query parameters: nested fields, repeated fields, JSON names, bools,
    // enums by name, percent-encoding.
    let (_, m) = call(
        &t,
        "GET",
        "/v1/shelves/1/books?limit=2&authorFilter=Ann%20Leckie&filter.genre=HISTORY&filter.in_print=true&tags=x&tags=y",
        "",
    )
    .unwrap();
    assert_eq!(
        m[0],
        serde_json::json!({"shelf":"1","limit":2,"author_filter":"Ann Leckie","filter":{"genre":"HISTORY","in_print":true},"tags":["x","y"]})
    );
    // `body: "*"` with the path variable, and its additional binding.
    for (method, uri) in [("PUT", "/v1/shelves/9"), ("PATCH", "/v2/shelves/9")] {
        let (p, m) = call(&t, method, uri, r#"{"theme":"sea","tags":["a"]}"#).unwrap();
        assert_eq!(p, "/bookstore.Bookstore/UpdateShelf");
        assert_eq!(
            m[0],
            serde_json::json!({"id":"9","theme":"sea","tags":["a"]})
        );
    }
    // `**` keeps its slashes; reserved escapes stay encoded by default.
    let (p, m) = call(&t, "GET", "/v1/shelves/2/books/a/b%2Fc%3A%20d", "").unwrap();
    assert_eq!(p, "/bookstore.Bookstore/GetBook");
    assert_eq!(
        m[0],
        serde_json::json!({"name":"shelves/2/books/a/b%2Fc%3A d"})
    );
    let t2 = filter(|c| c.url_unescape_spec = UrlUnescapeSpec::AllCharactersExceptSlash);
    let (_, m) = call(&t2, "GET", "/v1/shelves/2/books/a/b%2Fc%3A%20d", "").unwrap();
    assert_eq!(
        m[0],
        serde_json::json!({"name":"shelves/2/books/a/b%2Fc: d"})
    );
    let (_, m) = call(&t2, "GET", "/v1/titles/a%2Fb", "").unwrap();
    assert_eq!(m[0], serde_json::json!({"name":"a/b"}));
    let t2 = filter(|c| c.url_unescape_spec = UrlUnescapeSpec::AllCharacters);
    let (_, m) = call(&t2, "GET", "/v1/shelves/2/books/a/b%2Fc", "").unwrap();
    assert_eq!(m[0], serde_json::json!({"name":"shelves/2/books/a/b/c"}));
    // A custom verb (HEAD).
    let (p, _) = call(&t, "HEAD", "/v1/titles/x", "").unwrap();
    assert_eq!(p, "/bookstore.Bookstore/GetBookTitle");
}

#[test]
fn client_streams_take_a_json_array() {
    let t = filter(|_| {});
    let (p, m) = call(
        &t,
        "POST",
        "/v1/books:bulk",
        r#"[{"title":"a"},{"title":"b","pages":2}]"#,
    )
    .unwrap();
    assert_eq!(p, "/bookstore.Bookstore/BulkCreate");
    assert_eq!(
        m,
        vec![
            serde_json::json!({"title":"a"}),
            serde_json::json!({"title":"b","pages":2})
        ]
    );
    assert_eq!(
        call(&t, "POST", "/v1/books:bulk", "[1]").map(|_| ()),
        Err("bad_json")
    );
}

#[test]
fn unknown_methods_pass_or_are_refused() {
    let a = "127.0.0.1:1".parse().unwrap();
    let conn = meshgate_core::network::ConnectionInfo {
        id: 1,
        listener: Arc::from("l"),
        peer_addr: a,
        local_addr: a,
        server_name: None,
        filter_chain: None,
        tls: None,
        retire: Default::default(),
        proxy_protocol: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let run = |t: &Transcoder| {
        let mut info = StreamInfo::new(Arc::new(conn.clone()), "http1");
        let mut req = http::Request::builder()
            .uri("/v1/nothing")
            .body(meshgate_core::stream::empty_body())
            .unwrap();
        match rt.block_on(t.transcode(&mut req, &mut info)) {
            FilterStatus::Continue => 0,
            FilterStatus::Respond(r) => r.status().as_u16(),
            FilterStatus::Reroute => 1,
        }
    };
    assert_eq!(run(&filter(|_| {})), 0);
    assert_eq!(
        run(&filter(|c| c
            .request_validation_options
            .reject_unknown_method = true)),
        404
    );
}

#[test]
fn unmapped_requests_and_methods() {
    let t = filter(|_| {});
    assert_eq!(call(&t, "DELETE", "/v1/shelves/1", ""), Err("no_binding"));
    assert_eq!(call(&t, "GET", "/v1/other", ""), Err("no_binding"));
    // Echo has no http rule: only with auto_mapping.
    assert_eq!(
        call(&t, "POST", "/bookstore.Bookstore/Echo", "{}"),
        Err("no_binding")
    );
    let t = filter(|c| c.auto_mapping = true);
    let (p, m) = call(&t, "POST", "/bookstore.Bookstore/Echo", r#"{"id":4}"#).unwrap();
    assert_eq!(p, "/bookstore.Bookstore/Echo");
    assert_eq!(m[0], serde_json::json!({"id":"4"}));
}

#[test]
fn unknown_and_ignored_query_parameters() {
    let t = filter(|c| c.ignored_query_parameters = vec!["api_key".into()]);
    assert!(call(&t, "GET", "/v1/shelves/1?api_key=s", "").is_ok());
    assert_eq!(
        call(&t, "GET", "/v1/shelves/1?nope=1", ""),
        Err("unknown_query_parameter")
    );
    let t = filter(|c| c.ignore_unknown_query_parameters = true);
    assert!(call(&t, "GET", "/v1/shelves/1?nope=1", "").is_ok());
    let t = filter(|c| {
        c.ignore_unknown_query_parameters = true;
        c.request_validation_options.reject_unknown_query_parameters = true;
    });
    assert_eq!(
        call(&t, "GET", "/v1/shelves/1?nope=1", ""),
        Err("unknown_query_parameter")
    );
    // The path binding wins over a query parameter for the same field.
    let t = filter(|_| {});
    let (_, m) = call(&t, "GET", "/v1/shelves/1?shelf=2", "").unwrap();
    assert_eq!(m[0], serde_json::json!({"shelf":"1"}));
}

#[test]
fn hostile_input_is_refused_with_a_reason() {
    let t = filter(|_| {});
    let deep = format!("{}{}", "{\"book\":".repeat(200), "}".repeat(200));
    let deep_arr = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (uri, body, reason) in [
        ("/v1/shelves/1/books", "{", "bad_json"),
        ("/v1/shelves/1/books", "not json", "bad_json"),
        ("/v1/shelves/1/books", deep.as_str(), "bad_json"),
        ("/v1/shelves/1/books", deep_arr.as_str(), "bad_json"),
        ("/v1/shelves/1/books", r#"{"pages":1e999}"#, "bad_json"),
        (
            "/v1/shelves/1/books",
            r#"{"pages":99999999999999}"#,
            "bad_json",
        ),
        ("/v1/shelves/1/books", r#"{"pages":"many"}"#, "bad_json"),
        ("/v1/shelves/1/books", r#"{"genre":"POETRY"}"#, "bad_json"),
        ("/v1/shelves/1/books", r#"{"inPrint":"yes"}"#, "bad_json"),
        ("/v1/shelves/1/books", r#"{"unknown":1}"#, "bad_json"),
        (
            "/v1/shelves/1/books",
            r#"{"id":18446744073709551616}"#,
            "bad_json",
        ),
        ("/v1/shelves/1/books", "[1]", "bad_json"),
        ("/v1/shelves/abc/books", "{}", "bad_json"),
        ("/v1/shelves/1/books?x=%zz", "{}", "bad_query_parameter"),
        ("/v1/shelves/%ff/books", "{}", "bad_path_binding"),
    ] {
        assert_eq!(
            call(&t, "POST", uri, body).map(|_| ()),
            Err(reason),
            "{uri} {body:.60}"
        );
    }
    assert_eq!(
        call(&t, "GET", "/v1/shelves/1/books?filter.in_print=maybe", "").map(|_| ()),
        Err("bad_query_parameter")
    );
    assert_eq!(
        call(&t, "GET", "/v1/shelves/1/books?limit=1e99", "").map(|_| ()),
        Err("bad_json")
    );
    // `body: "*"` must be an object.
    assert_eq!(
        call(&t, "PUT", "/v1/shelves/1", "\"x\"").map(|_| ()),
        Err("bad_json")
    );
}

#[test]
fn binding_body_collisions_can_be_refused() {
    let body = r#"{"id":5,"theme":"x"}"#;
    let t = filter(|_| {});
    let (_, m) = call(&t, "PUT", "/v1/shelves/9", body).unwrap();
    assert_eq!(m[0]["id"], "9", "the path binding wins");
    let t = filter(|c| {
        c.request_validation_options
            .reject_binding_body_field_collisions = true
    });
    assert_eq!(
        call(&t, "PUT", "/v1/shelves/9", body).map(|_| ()),
        Err("binding_body_collision")
    );
}

#[test]
fn bad_configs_name_their_field() {
    let bad = |f: &dyn Fn(&mut GrpcJsonTranscoderConfig)| {
        let mut c = config();
        f(&mut c);
        match Transcoder::build(c) {
            Err(e) => format!("{}: {}", e.path, e.message),
            Ok(_) => panic!("accepted"),
        }
    };
    assert!(bad(&|c| c.services = vec!["bookstore.Nope".into()]).starts_with("services[0]"));
    assert!(
        bad(&|c| c.proto_descriptor_bin = Some("!!".into())).starts_with("proto_descriptor_bin")
    );
    assert!(
        bad(&|c| c.proto_descriptor_bin = Some("AAAA".into())).starts_with("proto_descriptor_bin")
    );
    assert!(
        bad(&|c| c.proto_descriptor = Some("/nonexistent.pb".into()))
            .starts_with("proto_descriptor")
    );
    assert!(bad(&|c| c.proto_descriptor_bin = None).starts_with("proto_descriptor"));
    assert!(bad(&|c| c.max_request_body_size = Some(0)).starts_with("max_request_body_size"));
    // Unknown fields are refused by name by serde.
    let e = parse_typed::<GrpcJsonTranscoderConfig>(
        &serde_json::json!({"services": [], "case_insensitive_enum_parsing": true}),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("case_insensitive_enum_parsing"),
        "{e}"
    );
    // No services: nothing to transcode (as Envoy).
    let t = filter(|c| c.services.clear());
    assert!(t.rules.is_empty());
}

/// A gRPC response with these frames (and trailers) through the response
/// phase; the JSON body and the head.
fn respond(
    t: &Transcoder,
    method: &str,
    uri: &str,
    frames: &[&[u8]],
    trailers: Option<&[(&str, &str)]>,
) -> (Response, String) {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (b, _) = t.rules.find(&m, uri).unwrap();
    let tr = Transcoded {
        method: b.method.clone(),
        response_body: b.response_body.clone(),
    };
    let mut data = Vec::new();
    for f in frames {
        data.push(0u8);
        data.extend_from_slice(&(f.len() as u32).to_be_bytes());
        data.extend_from_slice(f);
    }
    let mut tmap = http::HeaderMap::new();
    for (k, v) in trailers.unwrap_or(&[("grpc-status", "0")]) {
        tmap.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let body = Frames(
        [
            http_body::Frame::data(Bytes::from(data)),
            http_body::Frame::trailers(tmap),
        ]
        .into(),
    );
    let mut resp = http::Response::new(meshgate_core::stream::box_body(body));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    response::convert(t, &tr, &mut resp);
    let body = std::mem::replace(resp.body_mut(), meshgate_core::stream::empty_body());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let text = rt
        .block_on(body.collect())
        .map(|c| String::from_utf8(c.to_bytes().to_vec()).unwrap())
        .unwrap_or_else(|e| format!("ERROR {e}"));
    (resp, text)
}

/// A body of these frames.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

const SHELF: &[u8] = &[0x08, 0x05, 0x12, 0x01, 0x78, 0x18, 0x01]; // id 5, theme x, FICTION
const BOOK: &[u8] = &[0x08, 0x01, 0x1a, 0x01, 0x74, 0x30, 0x01]; // id 1, title t, in_print

#[test]
fn responses_become_json_with_the_print_options() {
    let t = filter(|_| {});
    let (resp, body) = respond(&t, "GET", "/v1/shelves/5", &[SHELF], None);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(body, r#"{"id":"5","theme":"x","genre":"FICTION"}"#);
    let t = filter(|c| {
        c.print_options.always_print_enums_as_ints = true;
        c.print_options.always_print_primitive_fields = true;
        c.print_options.preserve_proto_field_names = true;
    });
    let (_, body) = respond(&t, "GET", "/v1/shelves/5", &[SHELF], None);
    assert_eq!(
        body,
        r#"{"id":"5","theme":"x","genre":1,"tags":[],"shelf_size":0}"#
    );
    let t = filter(|c| c.print_options.add_whitespace = true);
    let (_, body) = respond(&t, "GET", "/v1/shelves/5", &[SHELF], None);
    assert!(body.contains("\n  \"id\": \"5\""), "{body}");
    // `response_body`: one field of the message.
    let t = filter(|_| {});
    let (_, body) = respond(&t, "GET", "/v1/titles/x", &[BOOK], None);
    assert_eq!(body, r#""t""#);
}

#[test]
fn server_streams_are_an_array_or_lines() {
    let t = filter(|_| {});
    let uri = "/v1/shelves/1/books";
    let (_, body) = respond(&t, "GET", uri, &[BOOK, BOOK], None);
    assert_eq!(
        body,
        r#"[{"id":"1","title":"t","inPrint":true},{"id":"1","title":"t","inPrint":true}]"#
    );
    let (_, body) = respond(&t, "GET", uri, &[], None);
    assert_eq!(body, "[]");
    let t = filter(|c| c.print_options.stream_newline_delimited = true);
    let (_, body) = respond(&t, "GET", uri, &[BOOK, BOOK], None);
    assert_eq!(
        body,
        "{\"id\":\"1\",\"title\":\"t\",\"inPrint\":true}\n{\"id\":\"1\",\"title\":\"t\",\"inPrint\":true}\n"
    );
}

#[test]
fn bad_upstream_messages_cut_the_body() {
    let t = filter(|_| {});
    let (_, body) = respond(&t, "GET", "/v1/shelves/5", &[&[0xff, 0xff]], None);
    assert!(body.starts_with("ERROR"), "{body}");
}

#[test]
fn a_status_after_the_head_without_a_message_is_the_body() {
    let t = filter(|c| c.convert_grpc_status = true);
    let (_, body) = respond(
        &t,
        "GET",
        "/v1/shelves/5",
        &[],
        Some(&[("grpc-status", "5"), ("grpc-message", "gone%20away")]),
    );
    assert_eq!(body, r#"{"code":5,"message":"gone away"}"#);
}
