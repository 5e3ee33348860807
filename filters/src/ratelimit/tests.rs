use super::*;
use crate::ext_authz::tests::with_ctx;

fn build(config: serde_json::Value) -> Result<RateLimit, BuildError> {
    with_ctx(|ctx| RateLimit::build(&parse_typed(&config)?, ctx))
}

fn svc() -> serde_json::Value {
    serde_json::json!({"grpc_service": {"envoy_grpc": {"cluster_name": "grpc-authz"}}})
}

#[test]
fn defaults_and_config_errors_name_the_field() {
    let f = build(serde_json::json!({"domain": "d", "rate_limit_service": svc()})).unwrap();
    assert_eq!(f.timeout, DEFAULT_TIMEOUT);
    assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!f.failure_mode_deny && !f.x_headers);
    let f = build(
        serde_json::json!({"domain": "d", "rate_limit_service": svc(),
        "rate_limited_status": {"code": 200}, "timeout": "1s", "request_type": "both"}),
    )
    .unwrap();
    assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(f.timeout, Duration::from_secs(1));
    let cases = [
        (serde_json::json!({"rate_limit_service": svc()}), "domain"),
        (
            serde_json::json!({"domain": "", "rate_limit_service": svc()}),
            "domain",
        ),
        (serde_json::json!({"domain": "d"}), "rate_limit_service"),
        (
            serde_json::json!({"domain": "d", "rate_limit_service": svc(), "stage": 1}),
            "stage",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service": svc(), "request_type": "internal"}),
            "request_type",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service":
                {"grpc_service": {"envoy_grpc": {"cluster_name": "nope"}}}}),
            "rate_limit_service.grpc_service.envoy_grpc.cluster_name",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service":
                {"grpc_service": {"envoy_grpc": {"cluster_name": "grpc-authz"}},
                 "transport_api_version": "V2"}}),
            "rate_limit_service.transport_api_version",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service": svc(),
                "rate_limited_status": {"code": 600}}),
            "rate_limited_status.code",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service": svc(), "timeout": "0s"}),
            "timeout",
        ),
        (
            serde_json::json!({"domain": "d", "rate_limit_service": svc(), "failure_mode_deny_percent": 1}),
            "failure_mode_deny_percent",
        ),
    ];
    for (c, path) in cases {
        match build(c.clone()) {
            Err(e) => assert_eq!(e.path, path, "{c}"),
            Ok(_) => panic!("{c} accepted"),
        }
    }
}

fn hv(key: &str, value: &str) -> core3::HeaderValue {
    core3::HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[test]
fn the_services_answer_becomes_a_verdict() {
    use rls::rate_limit_response::{Code, DescriptorStatus, RateLimit as Limit, rate_limit::Unit};
    let status = |remaining, per_unit| DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: Some(Limit {
            requests_per_unit: per_unit,
            unit: Unit::Minute as i32,
            ..Default::default()
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 41,
            nanos: 5,
        }),
        ..Default::default()
    };
    let r = rls::RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status(7, 10), status(2, 5), DescriptorStatus::default()],
        request_headers_to_add: vec![hv("x-up", "1"), hv("bad name", "x")],
        response_headers_to_add: vec![hv("x-down", "2")],
        ..Default::default()
    };
    match verdict(r) {
        Verdict::Ok {
            request,
            response,
            nearest,
        } => {
            assert_eq!(request.len(), 1);
            assert_eq!(request[0].0, "x-up");
            assert_eq!(response[0].1, "2");
            let n = nearest.unwrap();
            assert_eq!(
                n,
                Nearest {
                    limit: 5,
                    window_secs: 60,
                    remaining: 2,
                    reset_secs: 42
                }
            );
            let mut h = Vec::new();
            x_headers(&mut h, n);
            assert_eq!(h[0].1, "5, 5;w=60");
            assert_eq!(h[1].1, "2");
            assert_eq!(h[2].1, "42");
        }
        v => panic!("{v:?}"),
    }
    let r = rls::RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        ..Default::default()
    };
    assert!(matches!(
        verdict(r),
        Verdict::OverLimit { nearest: None, .. }
    ));
    let r = rls::RateLimitResponse::default();
    assert!(matches!(verdict(r), Verdict::Error("unknown_code")));
}

#[test]
fn descriptors_are_sent_in_order_with_the_domain() {
    let m = request_message(
        "dom",
        vec![
            vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            vec![("c".into(), "3".into())],
        ],
    );
    assert_eq!(m.domain, "dom");
    assert_eq!(m.descriptors.len(), 2);
    assert_eq!(m.descriptors[0].entries[1].key, "b");
    assert_eq!(m.descriptors[0].entries[1].value, "2");
    assert_eq!(m.descriptors[1].entries[0].value, "3");
}
