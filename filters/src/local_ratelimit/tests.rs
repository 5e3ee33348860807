use super::*;
use meshgate_core::stream::{empty_body, full_body};

fn conn(id: u64) -> Arc<ConnectionInfo> {
    let a = "127.0.0.1:1".parse().unwrap();
    Arc::new(ConnectionInfo {
        id,
        listener: Arc::from("l"),
        peer_addr: a,
        local_addr: a,
        server_name: None,
        filter_chain: None,
        tls: None,
        retire: Default::default(),
        proxy_protocol: None,
    })
}

fn filter(v: serde_json::Value) -> LocalRateLimit {
    LocalRateLimit {
        limiter: Arc::new(Limiter::build(&parse_typed(&v).unwrap(), false).unwrap()),
    }
}

fn all() -> serde_json::Value {
    serde_json::json!({"default_value": {"numerator": 100}})
}

fn req(h: &[(&str, &str)]) -> Request {
    let mut r = http::Request::new(empty_body());
    for (k, v) in h {
        r.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

fn view() -> RouteView<'static> {
    RouteView {
        matched: None,
        config: None,
    }
}

/// Runs the request phase, then the response phase on the answer (or a
/// 200): the response the client would see.
fn run(f: &LocalRateLimit, c: &Arc<ConnectionInfo>, h: &[(&str, &str)]) -> (Response, Request) {
    let mut info = StreamInfo::new(c.clone(), "http1");
    let mut r = req(h);
    let mut resp = match f.run(&mut r, &mut info, view()) {
        FilterStatus::Respond(resp) => resp,
        _ => http::Response::new(full_body("ok")),
    };
    f.on_response(&mut resp, &mut info);
    (resp, r)
}

#[test]
fn default_bucket_admits_max_tokens_then_refuses_with_headers() {
    let f = filter(serde_json::json!({
        "stat_prefix": "t", "filter_enabled": all(), "filter_enforced": all(),
        "token_bucket": {"max_tokens": 2, "fill_interval": "60s"},
        "status": {"code": 503},
        "response_headers_to_add": [{"name": "x-why", "value": "busy"}],
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    }));
    let c = conn(1);
    let (r, _) = run(&f, &c, &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    let reset: u64 = r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(run(&f, &c, &[]).0.status(), 200);
    let (r, _) = run(&f, &c, &[]);
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-local-rate-limit"], "1");
    assert_eq!(r.headers()["x-why"], "busy");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        r.extensions().get::<LocalReason>(),
        Some(&LocalReason::RateLimited)
    );
}

#[test]
fn disabled_by_default_and_not_enforced_only_marks_the_request() {
    let tb = serde_json::json!({"max_tokens": 1, "fill_interval": "60s"});
    // Envoy's defaults: 0 % enabled.
    let f = filter(serde_json::json!({"stat_prefix": "t", "token_bucket": tb}));
    let c = conn(1);
    for _ in 0..3 {
        assert_eq!(run(&f, &c, &[]).0.status(), 200);
    }
    let f = filter(serde_json::json!({
        "stat_prefix": "t", "token_bucket": tb, "filter_enabled": all(),
        "request_headers_to_add_when_not_enforced": [{"name": "x-over", "value": "yes"}],
    }));
    let (r, q) = run(&f, &c, &[]);
    assert_eq!(r.status(), 200);
    assert!(!q.headers().contains_key("x-over"));
    let (r, q) = run(&f, &c, &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(q.headers()["x-over"], "yes");
}

#[test]
fn per_connection_buckets_are_separate() {
    let f = filter(serde_json::json!({
        "stat_prefix": "t", "filter_enabled": all(), "filter_enforced": all(),
        "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
        "local_rate_limit_per_downstream_connection": true,
    }));
    let (a, b) = (conn(1), conn(2));
    assert_eq!(run(&f, &a, &[]).0.status(), 200);
    assert_eq!(run(&f, &a, &[]).0.status(), 429);
    assert_eq!(run(&f, &b, &[]).0.status(), 200);
    // A connection gone: its buckets are swept, not kept forever.
    drop(a);
    for id in 3..200 {
        run(&f, &conn(id), &[]);
    }
    let pc = f.limiter.per_connection.lock().unwrap();
    assert!(pc.map.len() < 130, "{}", pc.map.len());
}

#[test]
fn descriptors_from_headers_have_their_own_buckets() {
    let f = filter(serde_json::json!({
        "stat_prefix": "t", "filter_enabled": all(), "filter_enforced": all(),
        "token_bucket": {"max_tokens": 100, "fill_interval": "60s"},
        "always_consume_default_token_bucket": false,
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}],
        "descriptors": [
            {"entries": [{"key": "user", "value": "vip"}], "token_bucket": {"max_tokens": 3, "fill_interval": "60s"}},
            {"entries": [{"key": "user"}], "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}},
        ],
    }));
    let c = conn(1);
    let st = |h: &[(&str, &str)]| run(&f, &c, h).0.status().as_u16();
    assert_eq!(st(&[("x-user", "alice")]), 200);
    assert_eq!(st(&[("x-user", "alice")]), 429);
    assert_eq!(st(&[("x-user", "bob")]), 200);
    for _ in 0..3 {
        assert_eq!(st(&[("x-user", "vip")]), 200);
    }
    assert_eq!(st(&[("x-user", "vip")]), 429);
    // No descriptor: the default bucket.
    assert_eq!(st(&[]), 200);
}

#[test]
fn config_errors_name_the_field() {
    let e = |v: serde_json::Value, per_route: bool| {
        Limiter::build(&parse_typed(&v).unwrap(), per_route)
            .err()
            .unwrap()
            .path
    };
    assert_eq!(e(serde_json::json!({}), false), "stat_prefix");
    assert_eq!(
        e(serde_json::json!({"stat_prefix": "r"}), true),
        "token_bucket"
    );
    assert_eq!(
        e(
            serde_json::json!({"stat_prefix": "r", "token_bucket": {"max_tokens": 1, "fill_interval": "1ms"}}),
            false
        ),
        "token_bucket.fill_interval"
    );
    assert_eq!(
        e(
            serde_json::json!({"stat_prefix": "r", "descriptors": [{"entries": [{"key": ""}],
                "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]}),
            false
        ),
        "descriptors[0].entries[0].key"
    );
    let u = parse_typed::<LocalRateLimitConfig>(
        &serde_json::json!({"stat_prefix": "r", "local_cluster_rate_limit": {}}),
    )
    .err()
    .unwrap();
    assert!(u.message.contains("local_cluster_rate_limit"), "{u:?}");
}
