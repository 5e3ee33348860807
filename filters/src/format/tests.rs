use super::*;
use meshgate_core::network::ConnectionInfo;
use std::sync::Arc;

fn info() -> StreamInfo {
    let conn = ConnectionInfo {
        id: 42,
        listener: Arc::from("l"),
        peer_addr: "10.1.2.3:5555".parse().unwrap(),
        local_addr: "127.0.0.1:8080".parse().unwrap(),
        server_name: Some("api.example".into()),
        filter_chain: None,
        tls: None,
        retire: Default::default(),
        proxy_protocol: None,
    };
    StreamInfo::new(Arc::new(conn), "http1")
}

#[test]
fn templates_parse_operators_literals_and_lengths() {
    let t = Template::parse("50% off %REQ(X-Id?x-alt):3% %RESPONSE_CODE%%", "f").unwrap();
    assert_eq!(
        t.0,
        vec![
            Piece::Lit("50% off ".into()),
            Piece::Op(
                Op::Req(
                    Field::Header(HeaderName::from_static("x-id")),
                    Some(Field::Header(HeaderName::from_static("x-alt")))
                ),
                Some(3)
            ),
            Piece::Lit(" ".into()),
            Piece::Op(Op::ResponseCode, None),
            Piece::Lit("%".into()),
        ]
    );
    let t = Template::parse("%REQ(:METHOD)% %START_TIME(%s)%", "f").unwrap();
    assert!(matches!(
        t.0[0],
        Piece::Op(Op::Req(Field::Method, None), None)
    ));
    assert!(matches!(t.0[2], Piece::Op(Op::StartTime(Some(_)), None)));
    let e = Template::parse("x %UPSTREAM_PEER_SUBJECT% y", "p").unwrap_err();
    assert_eq!(e.path, "p");
    assert!(
        e.message.contains("%UPSTREAM_PEER_SUBJECT%"),
        "{}",
        e.message
    );
    let e = Template::parse("%FILTER_STATE(a:PLAIN)%", "p").unwrap_err();
    assert!(e.message.contains("FILTER_STATE"), "{}", e.message);
    assert!(Template::parse(DEFAULT_FORMAT, "p").is_ok());
}

#[test]
fn operators_read_the_stream() {
    let mut i = info();
    i.route = Some("r1");
    i.upstream_cluster = Some("backend");
    i.upstream_host = Some("127.0.0.9:80".parse().unwrap());
    i.upstream_attempts = 2;
    i.downstream_remote_address = "192.0.2.7".parse().unwrap();
    i.metadata_mut()
        .set("ns", "user", serde_json::json!({"name": "ann", "n": 3}));
    let mut req = HeaderMap::new();
    req.insert("user-agent", HeaderValue::from_static("curl/8"));
    let mut resp = HeaderMap::new();
    resp.insert("x-up", HeaderValue::from_static("yes"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    let head = ReqHead {
        method: Some(Method::POST),
        path: Some("/a?b".into()),
        authority: Some("h".into()),
        scheme: None,
    };
    let mut ctx = Ctx::new(&i);
    ctx.head = &head;
    ctx.req = &req;
    ctx.resp = &resp;
    ctx.trailers = Some(&trailers);
    ctx.status = Some(503);
    ctx.flags = Flags::default().with("UF").with("URX");
    ctx.timing = Timing {
        request_done: Some(Duration::from_millis(3)),
        response_head: Some(Duration::from_millis(10)),
        done: Some(Duration::from_millis(25)),
    };
    ctx.bytes_received = 7;
    ctx.bytes_sent = 99;
    let t = Template::parse(
        "%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(USER-AGENT)% %RESP(X-UP)% %TRAILER(GRPC-STATUS)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %CONNECTION_ID% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %REQUESTED_SERVER_NAME% %DYNAMIC_METADATA(ns:user:name)% %GRPC_STATUS% %DOWNSTREAM_TLS_VERSION% %REQ(X-NONE):2%",
        "p",
    )
    .unwrap();
    assert_eq!(
        t.render(&ctx, false),
        "POST /a?b h curl/8 yes 14 503 UF,URX UpstreamConnectionFailure,UpstreamRetryLimitExceeded 25 3 10 15 7 99 127.0.0.9:80 backend r1 2 42 192.0.2.7:5555 192.0.2.7 10.1.2.3:5555 127.0.0.1:8080 api.example ann Unavailable - -"
    );
    let mut m = serde_json::Map::new();
    m.insert("code".into(), Value::from("%RESPONSE_CODE%"));
    m.insert("dur".into(), Value::from("%DURATION%"));
    m.insert("user".into(), Value::from("%DYNAMIC_METADATA(ns:user)%"));
    m.insert("none".into(), Value::from("%REQ(x-none)%"));
    let typed = Format::json(&m, true, false, "j").unwrap().render(&ctx);
    let v: Value = serde_json::from_str(&typed).unwrap();
    assert_eq!(v["code"], 503);
    assert_eq!(v["dur"], 25);
    assert_eq!(v["user"]["n"], 3);
    assert_eq!(v["none"], Value::Null);
    let plain = Format::json(&m, false, true, "j").unwrap().render(&ctx);
    let v: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["code"], "503");
    assert!(v.get("none").is_none(), "{plain}");
}

#[test]
fn flags_follow_the_reason_the_filter_and_the_tries() {
    let mut i = info();
    i.local_reply = Some("no_healthy_upstream");
    assert_eq!(Flags::of(&i, 503).render(false).as_deref(), Some("UH"));
    // As Envoy: a connection closed before the response head is UC, a
    // stream reset by the upstream UR, a response that breaks the
    // protocol UPE.
    for (reason, status, flag) in [
        ("upstream_reset", 503, "UC"),
        ("upstream_remote_reset", 503, "UR"),
        ("upstream_protocol_error", 502, "UPE"),
    ] {
        i.local_reply = Some(reason);
        assert_eq!(Flags::of(&i, status).render(false).as_deref(), Some(flag));
    }
    i.local_reply = Some("upstream_reset");
    assert_eq!(
        Flags::of(&i, 503).render(true).as_deref(),
        Some("UpstreamConnectionTermination")
    );
    i.local_reply = Some("forbidden");
    i.denied_by = Some("ext_authz");
    assert_eq!(Flags::of(&i, 403).render(false).as_deref(), Some("UAEX"));
    let mut i = info();
    i.upstream_attempts = 3;
    assert_eq!(Flags::of(&i, 503).render(false).as_deref(), Some("URX"));
    assert_eq!(Flags::of(&i, 200).render(false), None);
}

#[test]
fn filters_compose() {
    let cfg_of = |y: &str| -> cfg::AccessLogFilter { serde_json::from_str(y).unwrap() };
    let build = |y: &str| Filter::build(&cfg_of(y), "f", &mut false).unwrap();
    let i = info();
    let mut ctx = Ctx::new(&i);
    ctx.status = Some(503);
    ctx.flags = Flags::default().with("UH");
    ctx.timing.done = Some(Duration::from_millis(40));
    let f = build(
        r#"{"and_filter": {"filters": [{"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500}}}}, {"or_filter": {"filters": [{"response_flag_filter": {"flags": ["UH"]}}, {"response_flag_filter": {"flags": ["UO"]}}]}}]}}"#,
    );
    assert!(f.matches(&ctx));
    ctx.flags = Flags::default().with("UF");
    assert!(!f.matches(&ctx));
    assert!(build(r#"{"response_flag_filter": {}}"#).matches(&ctx));
    assert!(
        build(
            r#"{"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 30}}}}"#
        )
        .matches(&ctx)
    );
    assert!(
        !build(
            r#"{"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 50}}}}"#
        )
        .matches(&ctx)
    );
    assert!(build(r#"{"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}}"#).matches(&ctx));
    assert!(
        !build(r#"{"grpc_status_filter": {"statuses": ["UNAVAILABLE"], "exclude": true}}"#)
            .matches(&ctx)
    );
    assert!(
        !build(r#"{"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 0}}}"#)
            .matches(&ctx)
    );
    assert!(
        build(r#"{"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 100}}}"#)
            .matches(&ctx)
    );
    assert!(!build(r#"{"traceable_filter": {}}"#).matches(&ctx));
    let mut req = HeaderMap::new();
    req.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    ctx.req = &req;
    assert!(build(r#"{"traceable_filter": {}}"#).matches(&ctx));
    let md = r#"{"metadata_filter": {"matcher": {"filter": "ns", "path": [{"key": "user"}], "value": {"string_match": {"exact": "ann"}}}}}"#;
    assert!(build(md).matches(&ctx), "a missing key matches by default");
    let md_strict = r#"{"metadata_filter": {"match_if_key_not_found": false, "matcher": {"filter": "ns", "path": [{"key": "user"}], "value": {"string_match": {"exact": "ann"}}}}}"#;
    assert!(!build(md_strict).matches(&ctx));
    let e = Filter::build(
        &cfg_of(r#"{"response_flag_filter": {"flags": ["ZZ"]}}"#),
        "f",
        &mut false,
    )
    .err()
    .unwrap();
    assert_eq!(e.path, "f.response_flag_filter.flags[0]");
    let e = Filter::build(
        &cfg_of(r#"{"grpc_status_filter": {"statuses": ["NOPE"]}}"#),
        "f",
        &mut false,
    )
    .err()
    .unwrap();
    assert_eq!(e.path, "f.grpc_status_filter.statuses[0]");
}

#[test]
fn cluster_metadata_reads_the_upstream_clusters() {
    let mut i = info();
    let ctx = Ctx::new(&i);
    let t = Template::parse("[%CLUSTER_METADATA(istio:services)%]", "p").unwrap();
    // No cluster, or one without metadata: `-`.
    assert_eq!(t.render(&ctx, false), "[-]");
    let mut md = meshgate_core::config::Metadata::new();
    md.insert(
        "istio".into(),
        serde_json::json!({"services": [{"name": "reviews"}], "default_original_port": 9080}),
    );
    i.upstream_cluster_metadata = Some(std::sync::Arc::new(md));
    let ctx = Ctx::new(&i);
    assert_eq!(t.render(&ctx, false), r#"[[{"name":"reviews"}]]"#);
    let port = Template::parse("%CLUSTER_METADATA(istio:default_original_port)%", "p").unwrap();
    assert_eq!(port.render(&ctx, false), "9080");
    let mut m = serde_json::Map::new();
    m.insert(
        "port".into(),
        Value::from("%CLUSTER_METADATA(istio:default_original_port)%"),
    );
    let v: Value =
        serde_json::from_str(&Format::json(&m, true, false, "j").unwrap().render(&ctx)).unwrap();
    assert_eq!(v["port"], 9080);
    let e = Template::parse("%CLUSTER_METADATA()%", "p").unwrap_err();
    assert!(e.message.contains("needs a namespace"), "{}", e.message);
}
