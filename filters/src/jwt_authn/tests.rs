use super::*;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header, encode};
use meshgate_core::stream::empty_body;
use serde_json::json;

// "secret" base64url: the HS256 key of these tests.
const JWKS: &str = r#"{"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}"#;

fn token(claims: serde_json::Value) -> String {
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    encode(&h, &claims, &EncodingKey::from_secret(b"secret")).unwrap()
}

fn now() -> u64 {
    provider::now_secs()
}

fn filter(extra: serde_json::Value) -> JwtAuthn {
    let mut c = json!({
        "providers": {
            "a": {"issuer": "https://a", "audiences": ["api"],
                  "local_jwks": {"inline_string": JWKS},
                  "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"},
                                       {"header_name": "x-team", "claim_name": "org.team"}],
                  "forward_payload_header": "x-payload",
                  "payload_in_metadata": "payload"},
            "b": {"issuer": "https://b", "local_jwks": {"inline_string": JWKS},
                  "from_headers": [{"name": "x-b-token"}], "forward": true}
        },
        "rules": [
            {"match": {"prefix": "/open"}},
            {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "a"}, {"provider_name": "b"}]}}},
            {"match": {"prefix": "/maybe"}, "requires": {"allow_missing": {}}},
            {"match": {"prefix": "/other-aud"}, "requires": {"provider_and_audiences":
                {"provider_name": "a", "audiences": ["other"]}}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "a"}}
        ],
        "requirement_map": {"b_only": {"provider_name": "b"}}
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    let c: JwtAuthenticationConfig = parse_typed(&c).unwrap();
    JwtAuthn::build_with(&c, &|f, _| Err(BuildError::new(f, "no clusters"))).unwrap()
}

fn info() -> StreamInfo {
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
    StreamInfo::new(Arc::new(conn), "http1")
}

struct Out {
    status: Option<u16>,
    www: Option<String>,
    req: Request,
    info: StreamInfo,
}

async fn run_with(
    f: &JwtAuthn,
    path: &str,
    headers: &[(&str, &str)],
    config: Option<&ParsedConfig>,
) -> Out {
    let mut req = Request::new(empty_body());
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("example.com"));
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let mut info = info();
    let view = RouteView {
        matched: None,
        config,
    };
    let status = f.on_request(&mut req, &mut info, view).await;
    let (status, www) = match status {
        FilterStatus::Respond(r) => (
            Some(r.status().as_u16()),
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string()),
        ),
        _ => (None, None),
    };
    Out {
        status,
        www,
        req,
        info,
    }
}

async fn run(f: &JwtAuthn, path: &str, headers: &[(&str, &str)]) -> Out {
    run_with(f, path, headers, None).await
}

fn good_claims() -> serde_json::Value {
    json!({"iss": "https://a", "aud": "api", "sub": "alice", "exp": now() + 300,
           "org": {"team": "blue"}})
}

#[tokio::test]
async fn valid_token_passes_with_its_effects_and_is_removed() {
    let f = filter(json!({}));
    let t = token(good_claims());
    let bearer = format!("Bearer {t}");
    let o = run(&f, "/x", &[("authorization", &bearer), ("x-sub", "forged")]).await;
    assert_eq!(o.status, None);
    let h = o.req.headers();
    assert_eq!(h["x-sub"], "alice");
    assert_eq!(h["x-team"], "blue");
    assert_eq!(h["x-payload"], t.split('.').nth(1).unwrap());
    assert!(
        h.get("authorization").is_none(),
        "token removed without forward"
    );
    assert_eq!(
        o.info
            .metadata()
            .unwrap()
            .get(METADATA_NAMESPACE, &["payload", "sub"]),
        Some(&json!("alice"))
    );
    // Cached: the same answer again, and the query-parameter location.
    let o = run(&f, &format!("/x?a=1&access_token={t}"), &[]).await;
    assert_eq!(o.status, None);
    assert_eq!(o.req.uri().query(), Some("a=1"));
}

#[tokio::test]
async fn failures_are_401_or_403_with_www_authenticate() {
    let f = filter(json!({}));
    let o = run(&f, "/x?q=1", &[]).await;
    assert_eq!(o.status, Some(401));
    assert_eq!(
        o.www.as_deref(),
        Some("Bearer realm=\"http://example.com/x\"")
    );
    assert_eq!(o.info.local_reply, Some("unauthenticated"));
    let cases = [
        (
            json!({"iss": "https://a", "aud": "api", "exp": now() - 3600}),
            401,
        ),
        (
            json!({"iss": "https://evil", "aud": "api", "exp": now() + 60}),
            401,
        ),
        (
            json!({"iss": "https://a", "aud": "web", "exp": now() + 60}),
            403,
        ),
        (
            json!({"iss": "https://a", "aud": "api", "nbf": now() + 3600}),
            401,
        ),
    ];
    for (claims, want) in cases {
        let b = format!("Bearer {}", token(claims.clone()));
        let o = run(&f, "/x", &[("authorization", &b)]).await;
        assert_eq!(o.status, Some(want), "{claims}");
        assert!(o.www.unwrap().ends_with("error=\"invalid_token\""));
    }
    // Within the clock skew, an expired token still passes.
    let b = format!(
        "Bearer {}",
        token(json!({"iss": "https://a", "aud": "api", "exp": now() - 10}))
    );
    assert_eq!(run(&f, "/x", &[("authorization", &b)]).await.status, None);
}

#[tokio::test]
async fn hostile_tokens_are_refused() {
    let f = filter(json!({}));
    let good = token(good_claims());
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        parts[1]
    );
    let wrong_kid = {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("nope".into());
        encode(&h, &good_claims(), &EncodingKey::from_secret(b"secret")).unwrap()
    };
    let wrong_key = {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(&h, &good_claims(), &EncodingKey::from_secret(b"other")).unwrap()
    };
    parts[0] = "!!!".into();
    let bad_b64 = parts.join(".");
    let bad_sig = format!("{}!!!", &good[..good.rfind('.').unwrap() + 1]);
    let huge = format!("{}.{}.{}", "a".repeat(9000), "b", "c");
    for (t, reason) in [
        (none.as_str(), Failure::AlgNotAllowed),
        (&wrong_kid, Failure::UnknownKid),
        (&wrong_key, Failure::BadSignature),
        (&bad_b64, Failure::Malformed),
        (&bad_sig, Failure::BadSignature),
        (&huge, Failure::TooLarge),
        ("a.b", Failure::Malformed),
        ("%%%.e30.x", Failure::Malformed),
    ] {
        let keys = match &f.providers[0].jwks {
            Jwks::Local(k) => k.clone(),
            Jwks::Remote(_) => unreachable!(),
        };
        assert_eq!(
            f.providers[0].verify(t, &keys, now()).err(),
            Some(reason),
            "{t:.40}"
        );
        let b = format!("Bearer {t}");
        assert_eq!(
            run(&f, "/x", &[("authorization", &b)]).await.status,
            Some(401)
        );
    }
}

#[tokio::test]
async fn requirements_any_allow_missing_rules_and_per_route() {
    let f = filter(json!({}));
    let tb = token(json!({"iss": "https://b", "exp": now() + 60}));
    let ta = format!("Bearer {}", token(good_claims()));
    // No rule needs a token on /open.
    assert_eq!(run(&f, "/open", &[]).await.status, None);
    // requires_any: b's token is enough (and forwarded: `forward: true`).
    let o = run(&f, "/any", &[("x-b-token", &tb)]).await;
    assert_eq!(o.status, None);
    assert_eq!(o.req.headers()["x-b-token"], tb.as_str());
    assert_eq!(run(&f, "/any", &[]).await.status, Some(401));
    // allow_missing: nothing passes, a bad token does not.
    assert_eq!(run(&f, "/maybe", &[]).await.status, None);
    assert_eq!(
        run(&f, "/maybe", &[("authorization", "Bearer x.y.z")])
            .await
            .status,
        Some(401)
    );
    assert_eq!(
        run(&f, "/maybe", &[("authorization", &ta)]).await.status,
        None
    );
    // provider_and_audiences overrides the provider's audiences.
    assert_eq!(
        run(&f, "/other-aud", &[("authorization", &ta)])
            .await
            .status,
        Some(403)
    );
    // Per route: b's requirement replaces the rules.
    let per_route = f
        .parse_per_route(&json!({"requirement_name": "b_only"}))
        .unwrap();
    assert_eq!(
        run_with(&f, "/x", &[("authorization", &ta)], Some(&per_route))
            .await
            .status,
        Some(401)
    );
    assert_eq!(
        run_with(&f, "/x", &[("x-b-token", &tb)], Some(&per_route))
            .await
            .status,
        None
    );
    let e = f
        .parse_per_route(&json!({"requirement_name": "nope"}))
        .err()
        .unwrap();
    assert_eq!(e.path, "requirement_name");
}

#[tokio::test]
async fn cors_preflight_bypass() {
    let f = filter(json!({"bypass_cors_preflight": true}));
    let mut req = Request::new(empty_body());
    *req.method_mut() = http::Method::OPTIONS;
    *req.uri_mut() = "/x".parse().unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://w"));
    req.headers_mut().insert(
        "access-control-request-method",
        HeaderValue::from_static("GET"),
    );
    let mut info = info();
    let r = f
        .on_request(
            &mut req,
            &mut info,
            RouteView {
                matched: None,
                config: None,
            },
        )
        .await;
    assert!(matches!(r, FilterStatus::Continue));
}

#[test]
fn bad_configs_name_the_field() {
    let build = |v: serde_json::Value| {
        let c: JwtAuthenticationConfig = parse_typed(&v).unwrap();
        JwtAuthn::build_with(&c, &|f, _| Err(BuildError::new(f, "no clusters")))
            .err()
            .unwrap()
    };
    let jwks = json!({"inline_string": JWKS});
    let e = build(json!({"providers": {"a": {}}}));
    assert_eq!(e.path, "providers.a");
    let e = build(json!({"providers": {"a": {"local_jwks": {"inline_string": "garbage"}}}}));
    assert_eq!(e.path, "providers.a.local_jwks");
    let e = build(json!({"providers": {"a": {"local_jwks": jwks}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "z"}}]}));
    assert_eq!(e.path, "rules[0].requires.provider_name");
    let e = build(json!({"providers": {"a": {"local_jwks": jwks}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "a"}, {}]}}}]}));
    assert_eq!(e.path, "rules[0].requires.requires_any.requirements[1]");
    let e = build(json!({"providers": {"a": {"local_jwks": jwks}},
        "rules": [{"match": {"prefix": "/"}, "requirement_name": "r"}]}));
    assert_eq!(e.path, "rules[0].requirement_name");
    let e = build(json!({"providers": {"a": {"local_jwks": jwks,
        "claim_to_headers": [{"header_name": "x", "claim_name": "a..b"}]}}}));
    assert_eq!(e.path, "providers.a.claim_to_headers[0].claim_name");
    let e = build(
        json!({"providers": {"a": {"remote_jwks": {"http_uri": {"uri": "/rel", "cluster": "c"}}}}}),
    );
    assert_eq!(e.path, "providers.a.remote_jwks.http_uri.uri");
    let e = build(
        json!({"providers": {"a": {"remote_jwks": {"http_uri": {"uri": "http://h/k", "cluster": "c"}}}}}),
    );
    assert_eq!(e.path, "providers.a.remote_jwks.http_uri.cluster");
}

#[test]
fn the_cache_is_bounded() {
    let f = filter(json!({}));
    let keys = match &f.providers[0].jwks {
        Jwks::Local(k) => k.clone(),
        Jwks::Remote(_) => unreachable!(),
    };
    for i in 0..250 {
        let mut c = good_claims();
        c["n"] = json!(i);
        f.providers[0].verify(&token(c), &keys, now()).unwrap();
    }
    assert!(f.providers[0].cache.len() <= 100);
}
