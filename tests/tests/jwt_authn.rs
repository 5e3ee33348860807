//! The `jwt_authn` stream filter end to end: tokens minted by Python's
//! `pyjwt` (RS256, ES256, EdDSA, HS256), keys inline (local JWKS) or served
//! by a Python HTTP server on port 0 as a cluster (remote JWKS), requests
//! by curl, an echo upstream that shows exactly which headers reached it.
//! Covers: valid tokens and their effects (claim headers, payload header,
//! token removed unless `forward`), each refusal (missing, expired, wrong
//! issuer, wrong audience = 403, wrong kid, bad base64, `alg: none`, huge
//! token) with its counter and the access log's `denied_by`, requirements
//! per rule and per route, a remote JWKS that is down or answers garbage,
//! one fetch for many waiting streams, `async_fetch`, and the filter
//! configured through a real xDS control plane.

use meshgate_tests::curl::curl;
use meshgate_tests::jwt::{JwtPeer, now};
use meshgate_tests::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What the echo upstream received: its request headers.
fn upstream_headers(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    v["headers"].as_object().unwrap().clone()
}

fn config(port: u16, peer: SocketAddr, jwks: &str, log: &std::path::Path, remote: &str) -> String {
    let jwks = serde_json::to_string(jwks).unwrap();
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
              access_log: {{path: "{log}"}}
              stream_filters:
                - name: jwt_authn
                  config:
                    providers:
                      local:
                        issuer: https://local.example
                        audiences: [api]
                        local_jwks: {{inline_string: {jwks}}}
                        claim_to_headers:
                          - {{header_name: x-jwt-sub, claim_name: sub}}
                          - {{header_name: x-jwt-team, claim_name: org.team}}
                        forward_payload_header: x-jwt-payload
                        payload_in_metadata: payload
                      remote:
                        issuer: https://remote.example
                        from_headers: [{{name: x-remote-token}}]
                        forward: true
                        remote_jwks:
                          http_uri: {{uri: "http://{peer}/jwks", cluster: jwks, timeout: 2s}}
{remote}
                    rules:
                      - match: {{prefix: /public}}
                      - match: {{prefix: /any}}
                        requires:
                          requires_any:
                            requirements: [{{provider_name: local}}, {{provider_name: remote}}]
                      - match: {{prefix: /maybe}}
                        requires: {{allow_missing: {{}}}}
                      - match: {{prefix: /remote}}
                        requires: {{provider_name: remote}}
                      - match: {{prefix: /}}
                        requires: {{provider_name: local}}
                    requirement_map:
                      remote_only: {{provider_name: remote}}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /per-route}}
                        route: {{cluster: echo}}
                        per_filter_config:
                          jwt_authn: {{requirement_name: remote_only}}
                      - match: {{prefix: /off}}
                        route: {{cluster: echo}}
                        per_filter_config:
                          jwt_authn: {{disabled: true}}
                      - match: {{prefix: /}}
                        route: {{cluster: echo}}
clusters:
  - name: echo
    endpoints: [{{address: "{peer}"}}]
  - name: jwks
    endpoints: [{{address: "{peer}"}}]
"#,
        log = log.display()
    )
}

struct Setup {
    peer: JwtPeer,
    mg: Meshgate,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(remote: &str) -> Setup {
    let peer = JwtPeer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let port = free_port();
    let mg = Meshgate::start(&config(port, peer.addr, &peer.jwks, &log, remote));
    Setup {
        peer,
        mg,
        port,
        log,
        _dir: dir,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str, headers: &[String]) -> (u16, BTreeMap<String, String>, String) {
        let mut args: Vec<&str> = Vec::new();
        for h in headers {
            args.push("-H");
            args.push(h);
        }
        let url = self.url(path);
        args.push(&url);
        curl(&args)
    }

    fn denied(&self, reason: &str) -> f64 {
        self.mg
            .metric("meshgate_jwt_authn_denied_total", &[("reason", reason)])
    }
}

fn local_claims() -> serde_json::Value {
    json!({"iss": "https://local.example", "aud": "api", "sub": "alice",
           "exp": now() + 600, "org": {"team": "blue"}})
}

#[test]
fn valid_tokens_of_every_algorithm_pass_with_claim_headers_and_the_token_removed() {
    let mut s = setup("");
    for (alg, kid) in [
        ("RS256", "rsa1"),
        ("ES256", "ec1"),
        ("EdDSA", "ed1"),
        ("HS256", "hs1"),
    ] {
        let t = s.peer.mint(alg, kid, local_claims());
        let (status, _, body) = s.get("/api/items", &[format!("Authorization: Bearer {t}")]);
        assert_eq!(status, 200, "{alg}: {body}");
        let h = upstream_headers(&body);
        assert_eq!(h["x-jwt-sub"], "alice", "{alg}");
        assert_eq!(h["x-jwt-team"], "blue", "{alg}");
        assert_eq!(h["x-jwt-payload"], t.split('.').nth(1).unwrap(), "{alg}");
        assert!(
            !h.contains_key("authorization"),
            "{alg}: the token is removed without `forward`"
        );
    }
    // A client cannot forge a claim header: it is replaced or removed.
    let t = s.peer.mint("RS256", "rsa1", local_claims());
    let (status, _, body) = s.get(
        "/api/items",
        &[
            format!("Authorization: Bearer {t}"),
            "x-jwt-sub: mallory".into(),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(upstream_headers(&body)["x-jwt-sub"], "alice");
    // The `access_token` query parameter is a default location too, and
    // is removed from the path sent upstream.
    let (status, _, body) = s.get(&format!("/api/q?x=1&access_token={t}"), &[]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/api/q?x=1");
    assert!(s.mg.metric("meshgate_jwt_authn_allowed_total", &[("provider", "local")]) >= 6.0);
}

#[test]
fn missing_and_invalid_tokens_are_401_with_www_authenticate_and_counted() {
    let mut s = setup("");
    let (status, h, body) = s.get("/api/items?secret=1", &[]);
    assert_eq!(status, 401);
    assert_eq!(
        h["www-authenticate"],
        format!("Bearer realm=\"http://127.0.0.1:{}/api/items\"", s.port)
    );
    assert!(body.contains("Jwt is missing"), "{body}");
    assert_eq!(s.denied("missing"), 1.0);
    // The access log names the filter that refused.
    let line: serde_json::Value = wait_for_within(5, "an access-log line", || {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        text.lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
    });
    assert_eq!(line["denied_by"], "jwt_authn");
    assert_eq!(line["status"], 401);

    let expired = s.peer.mint(
        "RS256",
        "rsa1",
        json!({"iss": "https://local.example", "aud": "api", "exp": now() - 3600}),
    );
    let wrong_issuer = s.peer.mint(
        "ES256",
        "ec1",
        json!({"iss": "https://evil.example", "aud": "api", "exp": now() + 600}),
    );
    let wrong_kid = s
        .peer
        .mint_with(json!({"alg": "RS256", "kid": "nope", "key": "rsa1",
        "claims": local_claims()}));
    let none = s
        .peer
        .mint_with(json!({"alg": "none", "claims": local_claims()}));
    let good = s.peer.mint("RS256", "rsa1", local_claims());
    let bad_b64 = format!("!!!{}", &good[3..]);
    let huge = format!("{}.{}.{}", "a".repeat(9000), "b", "c");
    for (token, reason) in [
        (expired.as_str(), "expired"),
        (&wrong_issuer, "issuer"),
        (&wrong_kid, "unknown_kid"),
        (&none, "alg_not_allowed"),
        (&bad_b64, "malformed"),
        (&huge, "token_too_large"),
    ] {
        let before = s.denied(reason);
        let (status, h, body) = s.get("/api/items", &[format!("Authorization: Bearer {token}")]);
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(
            h["www-authenticate"],
            format!(
                "Bearer realm=\"http://127.0.0.1:{}/api/items\", error=\"invalid_token\"",
                s.port
            ),
            "{reason}"
        );
        assert_eq!(s.denied(reason), before + 1.0, "{reason}");
    }
    // An audience the provider does not allow is 403, as Envoy answers.
    let other_aud = s.peer.mint(
        "EdDSA",
        "ed1",
        json!({"iss": "https://local.example", "aud": "web", "exp": now() + 600}),
    );
    let (status, _, body) = s.get(
        "/api/items",
        &[format!("Authorization: Bearer {other_aud}")],
    );
    assert_eq!(status, 403);
    assert!(body.contains("Audiences in Jwt are not allowed"), "{body}");
    assert_eq!(s.denied("audience"), 1.0);
    assert!(
        s.mg.metric(
            "meshgate_http_filter_denied_total",
            &[("filter", "jwt_authn"), ("reason", "unauthenticated")]
        ) >= 7.0
    );
}

#[test]
fn requirements_per_rule_and_per_route() {
    let mut s = setup("");
    let local = format!(
        "Authorization: Bearer {}",
        s.peer.mint("RS256", "rsa1", local_claims())
    );
    let remote_token = s.peer.mint(
        "ES256",
        "ec1",
        json!({"iss": "https://remote.example", "exp": now() + 600}),
    );
    let remote = format!("x-remote-token: {remote_token}");
    // No requirement on /public, and the filter is disabled on /off.
    assert_eq!(s.get("/public/x", &[]).0, 200);
    assert_eq!(s.get("/off/x", &[]).0, 200);
    // requires_any: either provider; the remote one forwards its token.
    assert_eq!(s.get("/any/x", std::slice::from_ref(&local)).0, 200);
    let (status, _, body) = s.get("/any/x", std::slice::from_ref(&remote));
    assert_eq!(status, 200);
    assert_eq!(upstream_headers(&body)["x-remote-token"], remote_token);
    assert_eq!(s.get("/any/x", &[]).0, 401);
    // allow_missing: no token passes, a bad one does not.
    assert_eq!(s.get("/maybe/x", &[]).0, 200);
    assert_eq!(
        s.get("/maybe/x", &["Authorization: Bearer a.b.c".into()]).0,
        401
    );
    assert_eq!(s.get("/maybe/x", std::slice::from_ref(&local)).0, 200);
    // The route's requirement_name replaces the rules: remote only.
    assert_eq!(s.get("/per-route/x", &[local]).0, 401);
    assert_eq!(s.get("/per-route/x", &[remote]).0, 200);
}

#[test]
fn a_remote_jwks_that_is_down_or_garbage_is_401_and_counted_then_recovers() {
    let mut s = setup("");
    s.peer.set_mode("down");
    let t = s.peer.mint(
        "RS256",
        "rsa1",
        json!({"iss": "https://remote.example", "exp": now() + 600}),
    );
    let h = [format!("x-remote-token: {t}")];
    let (status, _, body) = s.get("/remote/x", &h);
    assert_eq!(status, 401);
    assert!(body.contains("Jwks remote fetch is failed"), "{body}");
    assert_eq!(s.denied("jwks_fetch_failed"), 1.0);
    let failures = |s: &Setup| {
        s.mg.metric(
            "meshgate_jwt_authn_jwks_fetch_total",
            &[("provider", "remote"), ("result", "failure")],
        )
    };
    assert_eq!(failures(&s), 1.0);
    // Garbage: a failed fetch too, once the refetch back-off passed.
    s.peer.set_mode("garbage");
    wait_until("a second failed fetch", || {
        s.get("/remote/x", &h).0 == 401 && failures(&s) >= 2.0
    });
    // The JWKS comes back: the next fetch succeeds.
    s.peer.set_mode("ok");
    wait_until("the JWKS back", || s.get("/remote/x", &h).0 == 200);
    assert_eq!(
        s.mg.metric(
            "meshgate_jwt_authn_jwks_fetch_total",
            &[("provider", "remote"), ("result", "success")]
        ),
        1.0
    );
}

#[test]
fn stale_keys_are_kept_when_a_refresh_fails() {
    let mut s = setup("                          cache_duration: 1s");
    let t = s.peer.mint(
        "RS256",
        "rsa1",
        json!({"iss": "https://remote.example", "exp": now() + 600}),
    );
    let h = [format!("x-remote-token: {t}")];
    assert_eq!(s.get("/remote/x", &h).0, 200);
    s.peer.set_mode("down");
    // Once the keys are stale, a request starts a background refresh,
    // which fails; the stale keys keep verifying.
    wait_until("a failed refresh", || {
        assert_eq!(s.get("/remote/x", &h).0, 200);
        s.mg.metric(
            "meshgate_jwt_authn_jwks_fetch_total",
            &[("provider", "remote"), ("result", "failure")],
        ) >= 1.0
    });
    assert_eq!(s.get("/remote/x", &h).0, 200);
}

#[test]
fn concurrent_streams_wait_on_one_jwks_fetch() {
    let mut s = setup("");
    let t = s.peer.mint(
        "RS256",
        "rsa1",
        json!({"iss": "https://remote.example", "exp": now() + 600}),
    );
    let url = s.url("/remote/x");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (url, t) = (url.clone(), t.clone());
            std::thread::spawn(move || curl(&["-H", &format!("x-remote-token: {t}"), &url]).0)
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), 200);
    }
    assert_eq!(
        s.peer.jwks_fetches(),
        1,
        "one fetch for every waiting stream"
    );
}

#[test]
fn async_fetch_gets_the_keys_before_any_request() {
    let s = setup("                          async_fetch: {fast_listener: true}");
    wait_until("the JWKS fetched at config time", || {
        s.peer.jwks_fetches() >= 1
    });
    s.mg.wait_metric(
        "meshgate_jwt_authn_jwks_fetch_total",
        &[("provider", "remote"), ("result", "success")],
        |v| v >= 1.0,
    );
}

#[test]
fn bad_jwt_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let jwks = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#;
    let good = config(free_port(), peer, jwks, &dir.path().join("a.log"), "");
    let path = dir.path().join("bad.yaml");
    for (bad, field) in [
        (
            good.replace(
                "requires: {provider_name: remote}",
                "requires: {provider_name: nobody}",
            ),
            "rules[3].requires.provider_name",
        ),
        (
            good.replace("remote_only: {provider_name: remote}", "remote_only: {}"),
            "requirement_map.remote_only",
        ),
        (
            good.replace("cluster: jwks, timeout", "cluster: nojwks, timeout"),
            "remote_jwks.http_uri.cluster",
        ),
        (
            good.replace(
                "forward: true",
                "forward: true\n                        subjects: {}",
            ),
            "subjects",
        ),
        (
            good.replace(
                "{requirement_name: remote_only}",
                "{requirement_name: other}",
            ),
            "per_filter_config.jwt_authn.requirement_name",
        ),
    ] {
        std::fs::write(&path, bad.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{bad}");
        let text = format!("{out}{err}");
        assert!(text.contains(field), "{field} not in: {text}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.jwt_authn` (a `JwtAuthentication` with a local
/// JWKS and a rule on `/api`) before the router.
#[test]
fn jwt_authn_from_xds() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::backend::{HttpBackend, Proto};
    use meshgate_tests::xds::*;
    use prost::Message;

    let mut peer = JwtPeer::start();
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let provider = jwt::JwtProvider {
        issuer: "https://local.example".into(),
        audiences: vec!["api".into()],
        claim_to_headers: vec![jwt::JwtClaimToHeader {
            header_name: "x-jwt-sub".into(),
            claim_name: "sub".into(),
            ..Default::default()
        }],
        jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
            core3::DataSource {
                specifier: Some(core3::data_source::Specifier::InlineString(
                    peer.jwks.clone(),
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let authn = jwt::JwtAuthentication {
        providers: [("local".to_string(), provider)].into(),
        rules: vec![jwt::RequirementRule {
            r#match: Some(rds::RouteMatch {
                path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/api".into())),
                ..Default::default()
            }),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                jwt::JwtRequirement {
                    requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(
                        "local".into(),
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.jwt_authn".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                &authn,
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=b");
    let url = format!("http://127.0.0.1:{port}/api/x");
    let (status, h, _) = curl(&[&url]);
    assert_eq!(status, 401);
    assert!(h["www-authenticate"].starts_with("Bearer realm="));
    let t = peer.mint("RS256", "rsa1", local_claims());
    let (status, _, body) = curl(&["-H", &format!("Authorization: Bearer {t}"), &url]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend=b"), "{body}");
    assert_eq!(
        mg.metric("meshgate_jwt_authn_allowed_total", &[("provider", "local")]),
        1.0
    );
}
