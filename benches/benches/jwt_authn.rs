//! `jwt_authn`'s request phase (`on_request`): an RS256 token already
//! verified (the verified-token cache hit every request after the first
//! pays), with and without the claim header and payload-in-metadata
//! outputs RBAC setups use, and a request on a route no rule covers (the
//! cost of the filter being there). The key pair and token were made once
//! with pyjwt (the token expires in 2100); nothing here signs.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshgate_core::config::jwt_authn::JwtAuthenticationConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::RouteView;
use meshgate_core::network::ConnectionInfo;
use meshgate_core::stream::{FilterStatus, Request, StreamFilter, StreamInfo, empty_body};
use meshgate_filters::jwt_authn::JwtAuthn;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

const JWKS: &str = r#"{"keys": [{"kty": "RSA", "key_ops": ["verify"], "n": "269GI-1fK6WCE7aF4V-nA_3Kuq9juvmyefH6W6EvQ8HK8cvFF2we4TPftJD9SmGUEDbX1-Z-07XSvTuzos-Njaf66ieIuVyiIaH6Kgb0hdwSuQhZ4J_sbUtrNKf7X2GUq_IP5CN5ZR-x3LL9Al8Odn96Ek-LUkfd7aZRFL76AKGR0CDyHkUWibXc8MA1p1UT3BpyZ0nFf3eUhhrQGy_zzLAwNToryGUKaxpdNeKzBxfzPx1MS7rnzUSu9DTm3kmrzki4Q1yzc4bmYVTE61Vd1VnQJP3Roh79Rv1_ibU_vzUuEELj1FFP0FwM7zI2jbtJagRNWBktJ_jpe7vPQBGrCw", "e": "AQAB", "kid": "bench", "alg": "RS256"}]}"#;
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwic3ViIjoiYmVuY2gtdXNlciIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJzY29wZSI6InJlYWQgd3JpdGUiLCJncm91cHMiOlsiYSIsImIiXX0.A4N0bM2juE5rM3Rz5K-gWHQT1sDnilFM0ivHNwmBChHNW_uJesAIWp31qlaVaMlrDpVemFyff4__gAfk0yX4_1YgBkhrtCrl3ljnD43MMJPJ06-IF4Q9YMPiTpx9evdBbiR8Nnm8HmemsqSxhCY9C71yteTsXaNmrD_-8Id0aozPmigBV-fxZnpnYObV16VQGk5P5-AudBrSxeZnkUPNlaNBzguiltdvDYHNHvOKigS0Szqnco21sxn8ooNyAQ1Xk-WPkQlbv21elNpYRqaJMokYPIC8ocyAmhT6NgsDzM8pOVX1KhZSw_KPgQcCd0ahDq0p48SpIgQ8031WoN9UjA";

fn filter(outputs: bool) -> JwtAuthn {
    let mut provider = serde_json::json!({
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "local_jwks": {"inline_string": JWKS},
    });
    if outputs {
        provider["claim_to_headers"] =
            serde_json::json!([{"header_name": "x-jwt-sub", "claim_name": "sub"}]);
        provider["payload_in_metadata"] = serde_json::json!("payload");
    }
    let c: JwtAuthenticationConfig = parse_typed(&serde_json::json!({
        "providers": {"p": provider},
        "rules": [{"match": {"prefix": "/api"}, "requires": {"provider_name": "p"}}]
    }))
    .unwrap();
    JwtAuthn::build_with(&c, &|f, _| {
        Err(meshgate_core::BuildError::new(
            f,
            "no clusters in this bench",
        ))
    })
    .unwrap()
}

fn filter_nocache() -> JwtAuthn {
    let c: JwtAuthenticationConfig = parse_typed(&serde_json::json!({
        "providers": {"p": {"issuer": "https://issuer.example", "local_jwks": {"inline_string": JWKS}, "jwt_cache_config": {"jwt_cache_size": 0}}},
        "rules": [{"match": {"prefix": "/api"}, "requires": {"provider_name": "p"}}]
    }))
    .unwrap();
    JwtAuthn::build_with(&c, &|f, _| Err(meshgate_core::BuildError::new(f, "x"))).unwrap()
}

fn conn() -> Arc<ConnectionInfo> {
    let a = "127.0.0.1:1".parse().unwrap();
    Arc::new(ConnectionInfo {
        id: 1,
        listener: Arc::from("bench"),
        peer_addr: a,
        local_addr: a,
        server_name: None,
        filter_chain: None,
        tls: None,
        retire: Default::default(),
        proxy_protocol: None,
    })
}

fn request(path: &'static str, token: bool) -> Request {
    let mut req = Request::new(empty_body());
    *req.uri_mut() = http::Uri::from_static(path);
    let h = req.headers_mut();
    h.insert("host", http::HeaderValue::from_static("bench.example"));
    if token {
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
        );
    }
    req
}

/// One poll: with local keys and a cached token the request phase never
/// waits.
fn run(f: &JwtAuthn, req: &mut Request, info: &mut StreamInfo) -> bool {
    let mut fut = f.on_request(
        req,
        info,
        RouteView {
            matched: None,
            config: None,
        },
    );
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        fut.as_mut().poll(&mut cx),
        Poll::Ready(FilterStatus::Continue)
    )
}

fn bench(c: &mut Criterion) {
    let conn = conn();
    for (name, outputs) in [
        ("rs256_cached", false),
        ("rs256_cached_claims_metadata", true),
        ("rs256_uncached", false),
    ] {
        let f = if name == "rs256_uncached" {
            filter_nocache()
        } else {
            filter(outputs)
        };
        // The first request verifies the signature and fills the cache.
        let (mut req, mut info) = (
            request("/api/x", true),
            StreamInfo::new(conn.clone(), "http1"),
        );
        assert!(run(&f, &mut req, &mut info), "the token verifies");
        c.bench_function(&format!("jwt_authn/{name}"), |b| {
            b.iter_batched_ref(
                || {
                    (
                        request("/api/x", true),
                        StreamInfo::new(conn.clone(), "http1"),
                    )
                },
                |(req, info)| black_box(run(&f, req, info)),
                BatchSize::SmallInput,
            )
        });
    }
    let f = filter(false);
    c.bench_function("jwt_authn/no_rule_matches", |b| {
        b.iter_batched_ref(
            || {
                (
                    request("/public/x", false),
                    StreamInfo::new(conn.clone(), "http1"),
                )
            },
            |(req, info)| black_box(run(&f, req, info)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
