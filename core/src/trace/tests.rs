use super::*;
use http::HeaderMap;

fn sampling(client: u32, random: u32, overall: u32) -> Sampling {
    Sampling {
        client,
        random,
        overall,
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
