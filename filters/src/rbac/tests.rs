use super::*;
use meshgate_core::network::{ConnectionInfo, Signal};
use meshgate_core::stream::{DynamicMetadata, empty_body};

fn filter(v: serde_json::Value) -> Rbac {
    let c: RbacHttpConfig = parse_typed(&v).unwrap();
    Rbac {
        listener: "l".into(),
        config: Compiled::build(&c, "", "l").unwrap(),
    }
}

fn info() -> StreamInfo {
    StreamInfo::new(
        Arc::new(ConnectionInfo {
            id: 1,
            listener: "l".into(),
            peer_addr: "10.0.0.1:1000".parse().unwrap(),
            local_addr: "127.0.0.1:80".parse().unwrap(),
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Signal::new(),
            proxy_protocol: None,
        }),
        "http1",
    )
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(empty_body()).unwrap()
}

fn run(
    f: &Rbac,
    req: &Request,
    info: &mut StreamInfo,
    config: Option<&ParsedConfig>,
) -> Option<u16> {
    let view = RouteView {
        matched: None,
        config,
    };
    match f.decide(req, info, view) {
        FilterStatus::Respond(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

fn md<'a>(info: &'a StreamInfo, key: &str) -> Option<&'a serde_json::Value> {
    info.metadata()
        .and_then(|m: &DynamicMetadata| m.get(METADATA_NAMESPACE, &[key]))
}

fn rules(action: &str, header: &str) -> serde_json::Value {
    serde_json::json!({"action": action, "policies": {"p1": {
        "permissions": [{"any": true}],
        "principals": [{"header": {"name": header, "present_match": true}}]}}})
}

#[test]
fn shadow_rules_publish_metadata_and_never_deny() {
    let f = filter(serde_json::json!({
        "shadow_rules": rules("ALLOW", "x-user"),
        "shadow_rules_stat_prefix": "s_",
    }));
    let mut i = info();
    assert_eq!(run(&f, &get("/", &[]), &mut i, None), None);
    assert_eq!(
        md(&i, "s_shadow_engine_result"),
        Some(&serde_json::json!("denied"))
    );
    assert_eq!(md(&i, "s_shadow_effective_policy_id"), None);
    let mut i = info();
    assert_eq!(run(&f, &get("/", &[("x-user", "a")]), &mut i, None), None);
    assert_eq!(
        md(&i, "s_shadow_engine_result"),
        Some(&serde_json::json!("allowed"))
    );
    assert_eq!(
        md(&i, "s_shadow_effective_policy_id"),
        Some(&serde_json::json!("p1"))
    );
}

#[test]
fn enforced_rules_deny_with_403_and_record_the_policy() {
    let f = filter(serde_json::json!({"rules": rules("DENY", "x-bad")}));
    let mut i = info();
    assert_eq!(
        run(&f, &get("/", &[("x-bad", "1")]), &mut i, None),
        Some(403)
    );
    assert_eq!(i.local_reply, Some("forbidden"));
    assert_eq!(
        md(&i, "enforced_effective_policy_id"),
        Some(&serde_json::json!("p1"))
    );
    assert_eq!(
        md(&i, "enforced_engine_result"),
        Some(&serde_json::json!("denied"))
    );
    let mut i = info();
    assert_eq!(run(&f, &get("/", &[]), &mut i, None), None);
    // No rules at all: nothing enforced.
    let f = filter(serde_json::json!({}));
    assert_eq!(run(&f, &get("/", &[]), &mut info(), None), None);
    // LOG: allowed, with Envoy's access-log hint when a policy matched.
    let f = filter(serde_json::json!({"rules": rules("LOG", "x-bad")}));
    let mut i = info();
    assert_eq!(run(&f, &get("/", &[("x-bad", "1")]), &mut i, None), None);
    assert_eq!(
        i.metadata()
            .and_then(|m| m.get("envoy.common", &["access_log_hint"])),
        Some(&serde_json::json!(true))
    );
}

#[test]
fn per_route_overrides_or_disables() {
    let f = filter(serde_json::json!({"rules": rules("ALLOW", "x-user")}));
    let off = f.parse_per_route(&serde_json::json!({})).unwrap();
    let other = f
        .parse_per_route(&serde_json::json!({"rbac": {"rules": rules("ALLOW", "x-admin")}}))
        .unwrap();
    let req = get("/", &[("x-user", "a")]);
    assert_eq!(run(&f, &req, &mut info(), None), None);
    assert_eq!(run(&f, &req, &mut info(), Some(&off)), None);
    assert_eq!(run(&f, &req, &mut info(), Some(&other)), Some(403));
    assert_eq!(run(&f, &get("/", &[]), &mut info(), Some(&off)), None);
    // A per-route config that does not compile names its field.
    let e = f
        .parse_per_route(&serde_json::json!({"rbac": {"rules": {"policies": {"p": {
            "permissions": [], "principals": [{"any": true}]}}}}}))
        .err()
        .unwrap();
    assert_eq!(e.path, "rbac.rules.policies.p.permissions");
    let e = f
        .parse_per_route(&serde_json::json!({"rbac": {"shadow_matcher": {}}}))
        .err()
        .unwrap();
    assert!(e.message.contains("shadow_matcher"), "{e:?}");
}
