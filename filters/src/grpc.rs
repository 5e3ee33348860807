//! gRPC over the HTTP family: how meshgate's own answers (local replies)
//! reach a gRPC client. Core's `local_reply` says only why meshgate
//! answers (`LocalReason`, on the response); for a gRPC request the `proxy`
//! turns that answer into a trailers-only gRPC status here, once for every
//! HTTP codec (HTTP/1.1, HTTP/2, HTTP/3). RPC codecs map the same reason to
//! their own error frames.

use http::HeaderValue;
use meshgate_core::stream::{LocalReason, Response, empty_body};

/// The gRPC status (grpc/doc/statuscodes.md) a gRPC client gets for a
/// local reply.
pub(crate) fn status(reason: LocalReason) -> u32 {
    match reason {
        LocalReason::NoRoute => 12, // UNIMPLEMENTED
        LocalReason::NoHealthyUpstream
        | LocalReason::ClusterNotFound
        | LocalReason::UpstreamConnectFailure
        | LocalReason::UpstreamReset
        | LocalReason::Overflow
        | LocalReason::DropOverload
        | LocalReason::Overloaded => 14, // UNAVAILABLE
        LocalReason::UpstreamTimeout | LocalReason::StreamIdleTimeout => 4, // DEADLINE_EXCEEDED
        LocalReason::UpstreamProtocolError => 13, // INTERNAL
        LocalReason::BadRequest => 3, // INVALID_ARGUMENT
        LocalReason::PayloadTooLarge | LocalReason::HeadersTooLarge => 8, // RESOURCE_EXHAUSTED
        LocalReason::Unauthenticated => 16, // UNAUTHENTICATED
        LocalReason::Forbidden => 7, // PERMISSION_DENIED
        LocalReason::RateLimited => 14, // UNAVAILABLE, as Envoy maps 429
        LocalReason::FilterConfigError => 13, // INTERNAL
    }
}

/// Rewrites a local reply (a response carrying its `LocalReason`) as a
/// trailers-only gRPC status: `200`, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message`, no body. The HTTP status stays where
/// the route chose it (`cluster_not_found_response_code`). Any other
/// response is left as it is.
pub(crate) fn local_reply(resp: &mut Response) {
    let Some(reason) = resp.extensions().get::<LocalReason>().copied() else {
        return;
    };
    // Already rendered by `local_reply_config` (its grpc-message).
    if resp
        .extensions()
        .get::<crate::local_reply::Mapped>()
        .is_some()
    {
        return;
    }
    // A status a filter chose for its refusal (a rate limit filter's
    // RESOURCE_EXHAUSTED) is kept: converting again after the response
    // phase must not undo it.
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .filter(|c| *c <= 16)
        .unwrap_or_else(|| status(reason));
    // A gRPC-Web client's content type (set by `grpc_web`) stays.
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .filter(|v| v.as_bytes().starts_with(b"application/grpc-web"))
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/grpc"));
    let mut r = http::Response::new(empty_body());
    if reason == LocalReason::ClusterNotFound {
        *r.status_mut() = resp.status();
    }
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, content_type);
    h.insert("grpc-status", HeaderValue::from(code));
    let msg = format!("meshgate: {}", reason.message());
    h.insert(
        "grpc-message",
        HeaderValue::from_str(&msg).unwrap_or(HeaderValue::from_static("meshgate")),
    );
    r.extensions_mut().insert(reason);
    *resp = r;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use meshgate_core::stream::{StreamInfo, full_body};
    use std::sync::Arc;

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
        StreamInfo::new(Arc::new(conn), "http2")
    }

    #[test]
    fn a_local_reply_becomes_a_trailers_only_grpc_status() {
        let mut resp = meshgate_core::stream::local_reply(&mut info(), LocalReason::NoRoute);
        local_reply(&mut resp);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()["grpc-message"], "meshgate: no route matched");
        assert_eq!(
            resp.extensions().get::<LocalReason>(),
            Some(&LocalReason::NoRoute)
        );
    }

    #[test]
    fn a_status_a_filter_set_survives_a_second_conversion() {
        let mut resp = meshgate_core::stream::local_reply(&mut info(), LocalReason::RateLimited);
        local_reply(&mut resp);
        assert_eq!(resp.headers()["grpc-status"], "14");
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("8"));
        local_reply(&mut resp);
        assert_eq!(resp.headers()["grpc-status"], "8");
        // Not a gRPC status code: the reason's mapping.
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("99"));
        local_reply(&mut resp);
        assert_eq!(resp.headers()["grpc-status"], "14");
    }

    #[test]
    fn the_routes_cluster_not_found_status_stays() {
        let mut resp =
            meshgate_core::stream::local_reply(&mut info(), LocalReason::ClusterNotFound);
        *resp.status_mut() = StatusCode::NOT_FOUND;
        local_reply(&mut resp);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["grpc-status"], "14");
    }

    #[test]
    fn filter_refusals_get_their_grpc_statuses() {
        for (reason, code) in [
            (LocalReason::Unauthenticated, "16"),
            (LocalReason::Forbidden, "7"),
            (LocalReason::RateLimited, "14"),
        ] {
            let mut resp = meshgate_core::stream::local_reply(&mut info(), reason);
            local_reply(&mut resp);
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["grpc-status"], code, "{reason:?}");
        }
    }

    #[test]
    fn other_responses_are_left_alone() {
        let mut resp = Response::new(full_body("x"));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        local_reply(&mut resp);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(!resp.headers().contains_key("grpc-status"));
    }
}
