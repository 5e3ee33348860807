//! The `proxy` filter's side of `route.http_to_rpc`: reads the HTTP
//! request (path variables, query, headers, the JSON body up to its
//! bound), has `meshgate_protocols::rpc::http_gateway` build the Dubbo or
//! Bolt call, sends it through the router's `forward` to the route's
//! cluster (so its RPC upstream pool, load balancing, retries, outlier
//! detection, circuit breakers and metrics apply), and answers with the
//! result as JSON. Refusals before the call are counted in
//! `meshgate_http_to_rpc_rejected_total`, every answer in
//! `meshgate_http_to_rpc_responses_total`.

use crate::grpc::{CollectError, collect_counted};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use meshgate_core::cluster::Cluster;
use meshgate_core::config::http_to_rpc::HttpToRpc;
use meshgate_core::forward::{ForwardPolicy, forward};
use meshgate_core::metrics::names;
use meshgate_core::overload::buffer::FilterAccount;
use meshgate_core::stream::{LocalReason, Request, Response, StreamInfo, full_body};
use meshgate_protocols::rpc::http_gateway::{self, Inputs, Rejection};
use meshgate_protocols::rpc::{FrameKind, RpcFrame};
use serde_json::{Value, json};
use std::sync::Arc;

/// Without a route timeout, the timeout the provider is told.
const DEFAULT_PROVIDER_TIMEOUT_MS: u32 = 15_000;

fn answer(proto: &'static str, status: StatusCode, body: &Value) -> Response {
    metrics::counter!(names::HTTP_TO_RPC_RESPONSES_TOTAL, "protocol" => proto, "code" => status.as_str().to_string()).increment(1);
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(full_body(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body refused by the global memory budget: 503 with
/// `x-envoy-overloaded`, as a local reply for the same reason.
fn overloaded(proto: &'static str) -> Response {
    let mut resp = answer(
        proto,
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "overloaded", "message": format!("meshgate: {}", LocalReason::Overloaded.message())}),
    );
    resp.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    resp
}

fn reject(proto: &'static str, r: &Rejection) -> Response {
    metrics::counter!(names::HTTP_TO_RPC_REJECTED_TOTAL, "protocol" => proto, "reason" => r.reason)
        .increment(1);
    answer(proto, r.status, &r.body())
}

/// Translates `req` into the plan's RPC call on `cluster` and its result
/// back into an HTTP/JSON response.
pub async fn call(
    plan: &HttpToRpc,
    cluster: &Arc<Cluster>,
    req: &mut Request,
    info: &mut StreamInfo,
    policy: &ForwardPolicy,
    hash: Option<u64>,
    upstream_log: Option<&Arc<crate::access_log::AccessLogs>>,
) -> Response {
    let proto = plan.protocol.label();
    let Some(vars) = plan.match_path(req.uri().path()) else {
        return reject(
            proto,
            &Rejection {
                status: StatusCode::NOT_FOUND,
                reason: "no_match",
                message: format!("the path does not match {}", template_text(plan)),
            },
        );
    };
    let vars: Vec<String> = vars.into_iter().map(str::to_string).collect();
    // The request body read and the response body read count in the
    // global memory budget while this call holds them (`overload::buffer`).
    let account = FilterAccount::new();
    let body = if plan.reads_body {
        let b = std::mem::replace(req.body_mut(), meshgate_core::stream::empty_body());
        match collect_counted(b, plan.max_body_bytes, account.as_ref()).await {
            Ok(b) => b,
            Err(CollectError::OverBudget(_)) => return overloaded(proto),
            Err(CollectError::TooLarge) => {
                return reject(
                    proto,
                    &Rejection {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        reason: "too_large",
                        message: format!("the body is over {} bytes", plan.max_body_bytes),
                    },
                );
            }
            Err(e) => {
                return reject(
                    proto,
                    &Rejection {
                        status: StatusCode::BAD_REQUEST,
                        reason: "bad_body",
                        message: e.to_string(),
                    },
                );
            }
        }
    } else {
        Bytes::new()
    };
    let timeout_ms = policy.timeout.map_or(DEFAULT_PROVIDER_TIMEOUT_MS, |t| {
        u32::try_from(t.as_millis()).unwrap_or(u32::MAX)
    });
    let var_refs: Vec<&str> = vars.iter().map(String::as_str).collect();
    let input = Inputs {
        path_vars: &var_refs,
        query: req.uri().query(),
        headers: req.headers(),
        body: &body,
    };
    let built = match http_gateway::build_call(plan, &input, timeout_ms) {
        Ok(c) => c,
        Err(r) => return reject(proto, &r),
    };
    // The call as the RPC client expects it: the frame in an extension,
    // the request's headers kept for the trace context and access logs.
    let mut up = Request::new(full_body(built.body));
    *up.method_mut() = http::Method::POST;
    if let Ok(uri) = format!("/{}/{}", plan.service, plan.method).parse() {
        *up.uri_mut() = uri;
    }
    *up.headers_mut() = std::mem::take(req.headers_mut());
    up.headers_mut().remove(http::header::CONTENT_LENGTH);
    up.headers_mut().remove(http::header::TRANSFER_ENCODING);
    up.extensions_mut().insert(RpcFrame {
        protocol: proto,
        kind: FrameKind::Request,
        head: built.head,
        traceparent: None,
    });
    // The router's `upstream_log`: one entry per try, showing the call as
    // it went upstream (`POST /service/method`, the request's headers).
    let up_head = upstream_log.map(|_| {
        info.upstream_tries = Some(Box::default());
        crate::access_log::UpstreamHead::of(&up)
    });
    let call = forward(cluster, up, info, policy, hash);
    let resp = match &account {
        // Reset for memory while the call holds the body: shed at once.
        Some(a) => tokio::select! {
            r = call => r,
            _ = a.reset() => return overloaded(proto),
        },
        None => call.await,
    };
    let resp = match (upstream_log, up_head) {
        (Some(log), Some(head)) => log.log_tries(info, head, resp),
        _ => resp,
    };
    let (mut parts, body) = resp.into_parts();
    if let Some(reason) = parts.extensions.remove::<LocalReason>() {
        let (status, error) = match reason {
            LocalReason::UpstreamTimeout
            | LocalReason::StreamIdleTimeout
            | LocalReason::MaxStreamDuration
            | LocalReason::RequestTimeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            LocalReason::NoHealthyUpstream
            | LocalReason::UpstreamConnectFailure
            | LocalReason::ClusterNotFound => (StatusCode::SERVICE_UNAVAILABLE, "no_provider"),
            LocalReason::Overflow | LocalReason::Overloaded | LocalReason::DropOverload => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
            }
            other => (other.status(), other.label()),
        };
        return answer(
            proto,
            status,
            &json!({"error": error, "message": format!("meshgate: {}", reason.message())}),
        );
    }
    match parts.extensions.remove::<RpcFrame>() {
        Some(f) if f.protocol == proto && f.kind == FrameKind::Response => {
            // Bounded by the cluster's `max_body_bytes` already.
            let bytes = match collect_counted(body, usize::MAX, account.as_ref()).await {
                Ok(b) => b,
                Err(CollectError::OverBudget(_)) => return overloaded(proto),
                Err(_) => Bytes::new(),
            };
            let out = http_gateway::decode_response(plan.protocol, &f.head, &bytes);
            answer(proto, out.status, &out.body)
        }
        _ => answer(
            proto,
            StatusCode::BAD_GATEWAY,
            &json!({"error": "bad_response",
                    "message": format!("the cluster did not answer in {proto} (HTTP {})", parts.status.as_u16())}),
        ),
    }
}

fn template_text(plan: &HttpToRpc) -> String {
    use meshgate_core::config::http_to_rpc::Segment;
    let mut s = String::new();
    for seg in plan.template.iter().flatten() {
        s.push('/');
        match seg {
            Segment::Literal(l) => s.push_str(l),
            Segment::Var(v) => {
                s.push('{');
                s.push_str(v);
                s.push('}');
            }
        }
    }
    s
}
