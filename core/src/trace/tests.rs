use super::*;
use http::HeaderMap;

fn sampling(client: u32, random: u32, overall: u32) -> Sampling {
    Sampling {
        client,
        random,
        overall,
        pack_trace_reason: true,
        draw_from_request_id: true,
    }
}

fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn forced_and_parent_win() {
    let none = sampling(0, 0, 0);
    let h = headers(&[("x-envoy-force-trace", "true")]);
    assert_eq!(sample(&none, &h, None, None), Decision::Forced);
    let parent =
        context::parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!(
        sample(&none, &HeaderMap::new(), parent.as_ref(), None),
        Decision::Parent
    );
    let off =
        context::parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    assert_eq!(
        sample(
            &sampling(ALL, ALL, ALL),
            &HeaderMap::new(),
            off.as_ref(),
            None
        ),
        Decision::NotSampled
    );
}

#[test]
fn client_random_overall() {
    let h = headers(&[("x-client-trace-id", "abc"), ("x-request-id", "r1")]);
    assert_eq!(
        sample(&sampling(ALL, 0, ALL), &h, None, None),
        Decision::Client
    );
    assert_eq!(
        sample(&sampling(0, 0, ALL), &h, None, None),
        Decision::NotSampled
    );
    let plain = headers(&[("x-request-id", "r1")]);
    assert_eq!(
        sample(&sampling(0, ALL, ALL), &plain, None, None),
        Decision::Random
    );
    assert_eq!(
        sample(&sampling(0, ALL, 0), &plain, None, None),
        Decision::NotSampled
    );
    assert_eq!(
        sample(&sampling(0, 0, ALL), &plain, None, None),
        Decision::NotSampled
    );
}

#[test]
fn route_overrides() {
    let plain = headers(&[("x-request-id", "r1")]);
    let route = RouteTracing::build(
        "tracing",
        &RouteTracingConfig {
            random_sampling: Some(Percent { value: 100.0 }),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        sample(&sampling(0, 0, ALL), &plain, None, Some(&route)),
        Decision::Random
    );
    let off = RouteTracing::build(
        "tracing",
        &RouteTracingConfig {
            overall_sampling: Some(Percent { value: 0.0 }),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        sample(&sampling(ALL, ALL, ALL), &plain, None, Some(&off)),
        Decision::NotSampled
    );
}

#[test]
fn random_share_is_roughly_honoured() {
    let half = sampling(0, ALL / 2, ALL);
    let mut on = 0;
    for _ in 0..2000 {
        if sample(&half, &HeaderMap::new(), None, None) == Decision::Random {
            on += 1;
        }
    }
    assert!((700..1300).contains(&on), "{on}");
}

#[test]
fn bad_values_name_the_field() {
    let e = RouteTracing::build(
        "routes[0].tracing",
        &RouteTracingConfig {
            random_sampling: Some(Percent { value: 101.0 }),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.path, "routes[0].tracing.random_sampling.value");
    let e = tags(
        "tracing.custom_tags",
        &[CustomTag {
            tag: "a".into(),
            literal: None,
            request_header: None,
            environment: None,
        }],
    )
    .unwrap_err();
    assert_eq!(e.path, "tracing.custom_tags[0]");
}

#[test]
fn addresses_format_as_display_does() {
    for a in [
        "0.0.0.0:0",
        "127.0.0.1:8080",
        "255.255.255.255:65535",
        "10.20.3.4:9",
        "100.99.10.1:100",
        "1.2.3.4:5",
        "[::1]:443",
        "[2001:db8::7]:1",
    ] {
        let a: std::net::SocketAddr = a.parse().unwrap();
        let mut s = String::from("before ");
        let (ip, whole) = push_addr(&mut s, a);
        assert_eq!(whole.of(&s), a.to_string());
        assert_eq!(ip.of(&s), a.ip().to_string());
    }
}

#[test]
fn method_names() {
    for m in [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ] {
        let (v, attr) = method_str(&http::Method::from_bytes(m.as_bytes()).unwrap());
        assert!(matches!(v, Cow::Borrowed(_)));
        assert_eq!(v, m);
        let attr = attr.unwrap().attr();
        assert_eq!(attr.0, "http.request.method");
        assert_eq!(attr.1.plain(), Value::Str(m));
    }
    let (v, attr) = method_str(&http::Method::from_bytes(b"PURGE").unwrap());
    assert_eq!(v, "PURGE");
    assert!(attr.is_none());
}

#[test]
fn reason_packed_in_the_request_id_decides_when_sampling_does_not() {
    // Random sampling off: only the earlier hop's packed reason traces.
    let off = sampling(0, 0, ALL);
    let id = |s: &'static str| headers(&[("x-request-id", s)]);
    let sampled = id("125a4afb-6f55-94ba-ad80-413f09f48a28");
    assert_eq!(sample(&off, &sampled, None, None), Decision::Random);
    let forced = id("125a4afb-6f55-a4ba-ad80-413f09f48a28");
    assert_eq!(sample(&off, &forced, None, None), Decision::Forced);
    let client = id("125a4afb-6f55-b4ba-ad80-413f09f48a28");
    assert_eq!(sample(&off, &client, None, None), Decision::Client);
    let fresh = id("125a4afb-6f55-44ba-ad80-413f09f48a28");
    assert_eq!(sample(&off, &fresh, None, None), Decision::NotSampled);
    // overall_sampling 0 bounds a packed sampled reason, not a forced one.
    let none = sampling(0, 0, 0);
    assert_eq!(sample(&none, &sampled, None, None), Decision::NotSampled);
    assert_eq!(sample(&none, &forced, None, None), Decision::Forced);
    // pack_trace_reason false: the id's digit means nothing.
    let mut unpacked = off;
    unpacked.pack_trace_reason = false;
    assert_eq!(
        sample(&unpacked, &sampled, None, None),
        Decision::NotSampled
    );
}

#[test]
fn request_id_draw_is_envoys_first_eight_hex_digits() {
    // 0x0000_2710 = 10,000: 0 modulo 10,000, the lowest draw.
    let low = HeaderValue::from_static("00002710-6f55-44ba-ad80-413f09f48a28");
    assert_eq!(request_id_draw(&low), 0);
    // 0x0000_270f = 9,999: the highest.
    let high = HeaderValue::from_static("0000270f-6f55-44ba-ad80-413f09f48a28");
    assert_eq!(request_id_draw(&high), 9_999 * 100);
    // 1 % random sampling (10,000 ppm) takes the low one only.
    let one = sampling(0, 10_000, ALL);
    let h = |v: &HeaderValue| {
        let mut m = HeaderMap::new();
        m.insert("x-request-id", v.clone());
        m
    };
    assert_eq!(sample(&one, &h(&low), None, None), Decision::Random);
    assert_eq!(sample(&one, &h(&high), None, None), Decision::NotSampled);
    // Not hex: hashed, still in range.
    assert!(request_id_draw(&HeaderValue::from_static("req-1")) < ALL);
}

#[test]
fn packing_rewrites_the_version_digit_only_when_it_changes() {
    let mut req = Request::new(crate::stream::empty_body());
    let a = "127.0.0.1:1".parse().unwrap();
    let conn = crate::network::ConnectionInfo {
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
    let mut info = StreamInfo::new(Arc::new(conn), "http1");
    req.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_static("125a4afb-6f55-44ba-ad80-413f09f48a28"),
    );
    pack_reason(&mut req, &mut info, Decision::NotSampled);
    assert!(info.filter_state.get::<PackedRequestId>().is_none());
    pack_reason(&mut req, &mut info, Decision::Random);
    assert_eq!(
        req.headers()["x-request-id"],
        "125a4afb-6f55-94ba-ad80-413f09f48a28"
    );
    assert_eq!(
        info.filter_state.get::<PackedRequestId>().unwrap().0,
        "125a4afb-6f55-94ba-ad80-413f09f48a28"
    );
    pack_reason(&mut req, &mut info, Decision::Forced);
    assert_eq!(
        req.headers()["x-request-id"],
        "125a4afb-6f55-a4ba-ad80-413f09f48a28"
    );
    // Not a UUID: left alone.
    req.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("req-1"));
    pack_reason(&mut req, &mut info, Decision::Client);
    assert_eq!(req.headers()["x-request-id"], "req-1");
}
