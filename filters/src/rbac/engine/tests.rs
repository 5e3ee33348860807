use super::*;
use meshgate_core::config::parse_typed;
use meshgate_core::network::Signal;
use meshgate_core::tls::{PeerIdentity, TlsInfo};
use std::sync::Arc;

fn conn(peer: &str, local: &str, peer_id: Option<PeerIdentity>) -> ConnectionInfo {
    ConnectionInfo {
        id: 1,
        listener: "l".into(),
        peer_addr: peer.parse().unwrap(),
        local_addr: local.parse().unwrap(),
        server_name: None,
        filter_chain: None,
        tls: peer_id.map(|p| {
            Arc::new(TlsInfo {
                peer: Some(p),
                server_name: Some("api.example".into()),
                ..Default::default()
            })
        }),
        retire: Signal::new(),
        proxy_protocol: None,
    }
}

fn engine(v: serde_json::Value) -> Engine {
    Engine::build(&parse_typed(&v).unwrap(), "rules", Layer::Http).unwrap()
}

fn build_err(v: serde_json::Value, layer: Layer) -> BuildError {
    match Engine::build(&parse_typed(&v).unwrap(), "rules", layer) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Req {
        method: method.parse().unwrap(),
        uri: uri.parse().unwrap(),
        headers: h,
    }
}

fn eval(e: &Engine, c: &ConnectionInfo, r: &Req, md: Option<&DynamicMetadata>) -> Outcome {
    e.evaluate(&Context {
        conn: c,
        remote: c.peer_addr.ip(),
        request: Some(RequestView {
            method: &r.method,
            uri: &r.uri,
            headers: &r.headers,
        }),
        metadata: md,
    })
}

fn policy(perms: serde_json::Value, princs: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"permissions": perms, "principals": princs})
}

#[test]
fn allow_matches_method_path_and_headers() {
    let e = engine(serde_json::json!({"action": "ALLOW", "policies": {
        "readers": policy(serde_json::json!([{"and_rules": {"rules": [
            {"header": {"name": ":method", "exact_match": "GET"}},
            {"url_path": {"path": {"prefix": "/public/"}}},
        ]}}]), serde_json::json!([{"any": true}])),
        "writers": policy(
            serde_json::json!([{"header": {"name": ":method", "string_match": {"exact": "post", "ignore_case": true}}}]),
            serde_json::json!([{"header": {"name": "x-role", "contains_match": "writer"}}])),
    }}));
    let c = conn("10.0.0.1:5000", "127.0.0.1:8080", None);
    let o = eval(&e, &c, &req("GET", "/public/a?x=/private", &[]), None);
    assert_eq!(
        o,
        Outcome {
            allowed: true,
            policy: Some(0)
        }
    );
    assert_eq!(e.policy_name(0), "readers");
    // url_path ignores the query.
    assert!(!eval(&e, &c, &req("GET", "/private?p=/public/", &[]), None).allowed);
    let o = eval(&e, &c, &req("POST", "/x", &[("x-role", "a,writer")]), None);
    assert_eq!(o.policy, Some(1));
    // Several values are matched joined with ','.
    let o = eval(
        &e,
        &c,
        &req("POST", "/x", &[("x-role", "ro"), ("x-role", "writer")]),
        None,
    );
    assert!(o.allowed);
    assert!(!eval(&e, &c, &req("POST", "/x", &[("x-role", "reader")]), None).allowed);
    assert!(!eval(&e, &c, &req("POST", "/x", &[]), None).allowed);
}

#[test]
fn deny_and_log_actions() {
    let p = policy(
        serde_json::json!([{"header": {"name": ":path", "prefix_match": "/admin"}}]),
        serde_json::json!([{"any": true}]),
    );
    let e = engine(serde_json::json!({"action": "DENY", "policies": {"no-admin": p}}));
    let c = conn("10.0.0.1:5000", "127.0.0.1:8080", None);
    assert_eq!(
        eval(&e, &c, &req("GET", "/admin/x", &[]), None),
        Outcome {
            allowed: false,
            policy: Some(0)
        }
    );
    assert_eq!(
        eval(&e, &c, &req("GET", "/user", &[]), None),
        Outcome {
            allowed: true,
            policy: None
        }
    );
    let e = engine(
        serde_json::json!({"action": "LOG", "policies": {"l": policy(
        serde_json::json!([{"any": true}]), serde_json::json!([{"any": true}]))}}),
    );
    assert_eq!(
        eval(&e, &c, &req("GET", "/", &[]), None),
        Outcome {
            allowed: true,
            policy: Some(0)
        }
    );
    // No policy at all: ALLOW denies everything, DENY allows everything.
    let e = engine(serde_json::json!({"action": "ALLOW"}));
    assert!(!eval(&e, &c, &req("GET", "/", &[]), None).allowed);
}

#[test]
fn header_matcher_kinds_invert_and_pseudo_headers() {
    let one = |h: serde_json::Value| {
        engine(serde_json::json!({"policies": {"p": policy(
            serde_json::json!([{"header": h}]), serde_json::json!([{"any": true}]))}}))
    };
    let c = conn("10.0.0.1:5000", "127.0.0.1:8080", None);
    let r = req(
        "GET",
        "/a?b=c",
        &[("host", "api.example:8080"), ("x-v", "Hello")],
    );
    let yes = |h| eval(&one(h), &c, &r, None).allowed;
    assert!(yes(
        serde_json::json!({"name": ":authority", "prefix_match": "api.example"})
    ));
    assert!(yes(
        serde_json::json!({"name": "host", "suffix_match": ":8080"})
    ));
    assert!(yes(
        serde_json::json!({"name": ":path", "exact_match": "/a?b=c"})
    ));
    assert!(yes(
        serde_json::json!({"name": ":scheme", "exact_match": "http"})
    ));
    assert!(yes(
        serde_json::json!({"name": "x-v", "safe_regex_match": {"regex": "H.*o"}})
    ));
    assert!(!yes(
        serde_json::json!({"name": "x-v", "safe_regex_match": {"regex": "H"}})
    ));
    assert!(yes(serde_json::json!({"name": "x-v"})));
    assert!(yes(
        serde_json::json!({"name": "x-none", "present_match": false})
    ));
    assert!(!yes(
        serde_json::json!({"name": "x-v", "present_match": false})
    ));
    assert!(yes(
        serde_json::json!({"name": "x-v", "exact_match": "bye", "invert_match": true})
    ));
    assert!(!yes(
        serde_json::json!({"name": "x-v", "exact_match": "Hello", "invert_match": true})
    ));
    // A value matcher on a missing header does not match; inverted it does
    // (Envoy).
    assert!(!yes(
        serde_json::json!({"name": "x-none", "exact_match": ""})
    ));
    assert!(yes(
        serde_json::json!({"name": "x-none", "exact_match": "a", "invert_match": true})
    ));
}

#[test]
fn connection_rules_ports_ips_sni() {
    let e = engine(serde_json::json!({"policies": {
        "a": policy(
            serde_json::json!([{"destination_port": 8443}, {"destination_port_range": {"start": 9000, "end": 9001}}]),
            serde_json::json!([{"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}])),
        "b": policy(
            serde_json::json!([{"and_rules": {"rules": [
                {"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
                {"requested_server_name": {"suffix": ".example"}},
            ]}}]),
            serde_json::json!([{"not_id": {"source_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}}}])),
    }}));
    let r = req("GET", "/", &[]);
    let ok = |peer: &str, local: &str, tls: bool| {
        let c = conn(peer, local, tls.then(PeerIdentity::default));
        eval(&e, &c, &r, None).allowed
    };
    assert!(ok("10.1.2.3:1", "127.0.0.1:8443", false));
    assert!(ok("10.1.2.3:1", "127.0.0.1:9000", false));
    assert!(!ok("10.1.2.3:1", "127.0.0.1:9001", false));
    assert!(!ok("10.2.2.3:1", "127.0.0.1:8443", false));
    // IPv4-mapped IPv6 peers are their IPv4 address.
    assert!(ok("[::ffff:10.1.0.9]:1", "127.0.0.1:8443", false));
    // SNI from the handshake.
    assert!(ok("10.9.0.1:1", "127.0.0.1:1", true));
    assert!(!ok("10.9.0.1:1", "127.0.0.1:1", false));
    assert!(!ok("192.168.1.1:1", "127.0.0.1:1", true));
    assert!(e.needs_handshake());
}

#[test]
fn authenticated_uri_then_dns_then_subject_and_fail_closed() {
    let e = engine(serde_json::json!({"policies": {
        "spiffe": policy(serde_json::json!([{"any": true}]), serde_json::json!([
            {"authenticated": {"principal_name": {"exact": "spiffe://mesh/ns/a/sa/good"}}},
            {"authenticated": {"principal_name": {"suffix": ".svc.internal"}}},
            {"authenticated": {"principal_name": {"safe_regex": {"regex": "CN=ops.*"}}}},
        ])),
    }}));
    let r = req("GET", "/", &[]);
    let ok = |p: Option<PeerIdentity>| {
        let c = conn("10.0.0.1:1", "127.0.0.1:1", None);
        let c = ConnectionInfo {
            tls: p.map(|p| {
                Arc::new(TlsInfo {
                    peer: Some(p),
                    ..Default::default()
                })
            }),
            ..c
        };
        eval(&e, &c, &r, None).allowed
    };
    let id = |uri: &[&str], dns: &[&str], subject: &str| PeerIdentity {
        uri_sans: uri.iter().map(|s| s.to_string()).collect(),
        dns_sans: dns.iter().map(|s| s.to_string()).collect(),
        subject: subject.into(),
        der: Vec::new(),
        sha256_hex: String::new(),
    };
    assert!(ok(Some(id(&["spiffe://mesh/ns/a/sa/good"], &[], "CN=x"))));
    assert!(!ok(Some(id(&["spiffe://mesh/ns/a/sa/bad"], &[], "CN=x"))));
    assert!(ok(Some(id(&[], &["db.svc.internal"], "CN=x"))));
    assert!(ok(Some(id(&[], &[], "CN=ops-1,O=x"))));
    // No verified certificate: never authenticated.
    assert!(!ok(None));
    let any = engine(serde_json::json!({"policies": {"p": policy(
        serde_json::json!([{"any": true}]), serde_json::json!([{"authenticated": {}}]))}}));
    let c = conn("10.0.0.1:1", "127.0.0.1:1", Some(PeerIdentity::default()));
    assert!(eval(&any, &c, &r, None).allowed);
    let c = conn("10.0.0.1:1", "127.0.0.1:1", None);
    assert!(!eval(&any, &c, &r, None).allowed);
}

#[test]
fn remote_ip_is_the_trusted_client_direct_is_the_peer() {
    let e = engine(serde_json::json!({"policies": {"p": policy(
        serde_json::json!([{"any": true}]),
        serde_json::json!([{"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}]))}}));
    let d = engine(serde_json::json!({"policies": {"p": policy(
        serde_json::json!([{"any": true}]),
        serde_json::json!([{"direct_remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}]))}}));
    let c = conn("10.0.0.1:1", "127.0.0.1:1", None);
    let r = req("GET", "/", &[]);
    let cx = |remote: &str| Context {
        conn: &c,
        remote: remote.parse().unwrap(),
        request: Some(RequestView {
            method: &r.method,
            uri: &r.uri,
            headers: &r.headers,
        }),
        metadata: None,
    };
    assert!(e.evaluate(&cx("203.0.113.7")).allowed);
    assert!(!d.evaluate(&cx("203.0.113.7")).allowed);
    assert!(!e.evaluate(&cx("10.0.0.1")).allowed);
}

#[test]
fn metadata_principal_on_jwt_claims_fails_closed_without_metadata() {
    let e = engine(serde_json::json!({"policies": {
        "alice": policy(serde_json::json!([{"any": true}]), serde_json::json!([
            {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "payload"}, {"key": "sub"}],
                "value": {"string_match": {"exact": "alice"}}}}])),
        "admins": policy(serde_json::json!([{"any": true}]), serde_json::json!([
            {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "payload"}, {"key": "groups"}],
                "value": {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}}},
            {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "payload"}, {"key": "email_verified"}],
                "value": {"bool_match": true}}}])),
    }}));
    let c = conn("10.0.0.1:1", "127.0.0.1:1", None);
    let r = req("GET", "/", &[]);
    let with = |payload: serde_json::Value| {
        let mut md = DynamicMetadata::default();
        md.set("envoy.filters.http.jwt_authn", "payload", payload);
        eval(&e, &c, &r, Some(&md))
    };
    assert_eq!(with(serde_json::json!({"sub": "alice"})).policy, Some(1));
    assert_eq!(
        with(serde_json::json!({"sub": "bob", "groups": ["dev", "admin"]})).policy,
        Some(0)
    );
    assert!(with(serde_json::json!({"sub": "bob", "email_verified": true})).allowed);
    assert!(!with(serde_json::json!({"sub": "bob", "email_verified": "true"})).allowed);
    assert!(!with(serde_json::json!({"sub": "bob", "groups": "admin"})).allowed);
    // No metadata at all (no JWT verified): nothing matches, ALLOW denies.
    assert_eq!(
        eval(&e, &c, &r, None),
        Outcome {
            allowed: false,
            policy: None
        }
    );
    let mut other = DynamicMetadata::default();
    other.set("other", "payload", serde_json::json!({"sub": "alice"}));
    assert!(!eval(&e, &c, &r, Some(&other)).allowed);
}

#[test]
fn bad_rules_name_the_field() {
    let any = serde_json::json!([{"any": true}]);
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(
            serde_json::json!([{"header": {"name": "x", "safe_regex_match": {"regex": "("}}}]), any.clone())}}),
        Layer::Http,
    );
    assert_eq!(
        e.path,
        "rules.policies.p.permissions[0].header.safe_regex_match.safe_regex.regex"
    );
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(any.clone(),
            serde_json::json!([{"remote_ip": {"address_prefix": "10.0.0.300"}}]))}}),
        Layer::Http,
    );
    assert_eq!(
        e.path,
        "rules.policies.p.principals[0].remote_ip.address_prefix"
    );
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(any.clone(),
            serde_json::json!([{"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 33}}]))}}),
        Layer::Http,
    );
    assert_eq!(
        e.path,
        "rules.policies.p.principals[0].remote_ip.prefix_len"
    );
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(serde_json::json!([]), any.clone())}}),
        Layer::Http,
    );
    assert_eq!(e.path, "rules.policies.p.permissions");
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(serde_json::json!([{"any": false}]), any.clone())}}),
        Layer::Http,
    );
    assert_eq!(e.path, "rules.policies.p.permissions[0].any");
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(
            serde_json::json!([{"header": {"name": "x", "exact_match": "a", "prefix_match": "b"}}]), any.clone())}}),
        Layer::Http,
    );
    assert_eq!(e.path, "rules.policies.p.permissions[0].header");
    // The network filter has no request: header, path and metadata rules
    // are refused there, not left never matching.
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(
            serde_json::json!([{"url_path": {"path": {"exact": "/"}}}]), any.clone())}}),
        Layer::Network,
    );
    assert_eq!(e.path, "rules.policies.p.permissions[0].url_path");
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(any.clone(), serde_json::json!([
            {"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": true}}}]))}}),
        Layer::Network,
    );
    assert_eq!(e.path, "rules.policies.p.principals[0].metadata");
    let e = build_err(
        serde_json::json!({"policies": {"p": policy(
            serde_json::json!([{"destination_port_range": {"start": 10, "end": 5}}]), any)}}),
        Layer::Http,
    );
    assert_eq!(
        e.path,
        "rules.policies.p.permissions[0].destination_port_range"
    );
}
