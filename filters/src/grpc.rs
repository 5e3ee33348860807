//! gRPC over the HTTP family: how meshgate's own answers (local replies)
//! reach a gRPC client. Core's `local_reply` says only why meshgate
//! answers (`LocalReason`, on the response); for a gRPC request the `proxy`
//! turns that answer into a trailers-only gRPC status here, once for every
//! HTTP codec (HTTP/1.1, HTTP/2, HTTP/3). RPC codecs map the same reason to
//! their own error frames.

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use meshgate_core::overload::buffer::{FilterAccount, FilterOverBudget};
use meshgate_core::stream::{
    Body, BodyError, LocalReason, Response, StreamInfo, box_body, empty_body,
};

/// The gRPC status (grpc/doc/statuscodes.md) a gRPC client gets for a
/// local reply.
pub(crate) fn status(reason: LocalReason) -> u32 {
    match reason {
        LocalReason::NoRoute => 12, // UNIMPLEMENTED
        LocalReason::NoHealthyUpstream
        | LocalReason::ClusterNotFound
        | LocalReason::UpstreamConnectFailure
        | LocalReason::UpstreamReset
        | LocalReason::UpstreamRemoteReset
        | LocalReason::Overflow
        | LocalReason::DropOverload
        | LocalReason::Overloaded => 14, // UNAVAILABLE
        LocalReason::UpstreamTimeout
        | LocalReason::StreamIdleTimeout
        | LocalReason::MaxStreamDuration
        | LocalReason::RequestTimeout
        | LocalReason::UpstreamMaxStreamDuration(_) => 4, // DEADLINE_EXCEEDED
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

/// Asks the `proxy` to read a response body whole before the response
/// phase, so that a filter's synchronous `on_response` can rewrite the head
/// from the body or trailers (a unary gRPC error in the trailers, a non-gRPC
/// error page for a gRPC-Web client), as Envoy's filters do by buffering.
/// A filter puts it in `StreamInfo::filter_state` in its request phase;
/// `when` picks the responses to read (checked on the head).
#[derive(Clone, Copy)]
pub(crate) struct BufferResponse {
    /// Read at most this many body bytes; past it the body streams on
    /// (the prefix first) and [`Buffered::complete`] is false.
    pub max_bytes: usize,
    pub when: fn(&Response) -> bool,
}

/// What the `proxy` read of a response body (in the response's
/// extensions); the body itself still gives out the same frames.
#[derive(Clone, Debug)]
pub(crate) struct Buffered {
    pub data: Bytes,
    pub trailers: Option<http::HeaderMap>,
    /// The whole body (false: over `max_bytes` or a body error).
    pub complete: bool,
}

/// Reads the body of `resp` as [`BufferResponse`] asks, when it does.
///
/// With the global memory budget on (`overload::buffer`), the bytes read
/// count in it while they are held, until the downstream takes them; a
/// chunk that would take the total over the budget, or
/// `reset_high_memory_streams` picking this stream while it reads, drops
/// what was read and answers the stream 503 with `x-envoy-overloaded` (a
/// gRPC client: UNAVAILABLE), counted in
/// `meshgate_overload_filter_buffer_refused_total`.
pub(crate) async fn buffer_response(resp: &mut Response, info: &mut StreamInfo, b: BufferResponse) {
    if !(b.when)(resp) {
        return;
    }
    let mut body = std::mem::replace(resp.body_mut(), empty_body());
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut error = None;
    let account = FilterAccount::new();
    let complete = loop {
        if data.len() > b.max_bytes {
            break false;
        }
        match next_frame(&mut body, account.as_ref()).await {
            Err(FilterOverBudget) => {
                *resp = meshgate_core::stream::local_reply(info, LocalReason::Overloaded);
                return;
            }
            Ok(None) => break true,
            Ok(Some(Err(e))) => {
                error = Some(e);
                break false;
            }
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => {
                    if let Some(a) = &account
                        && a.charge(d.len() as u64).is_err()
                    {
                        *resp = meshgate_core::stream::local_reply(info, LocalReason::Overloaded);
                        return;
                    }
                    data.extend_from_slice(&d)
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
        }
    };
    let data = data.freeze();
    resp.extensions_mut().insert(Buffered {
        data: data.clone(),
        trailers: trailers.clone(),
        complete,
    });
    let replay = box_body(Replay {
        data: Some(data).filter(|d| !d.is_empty()),
        trailers,
        error,
        rest: (!complete).then_some(body),
    });
    *resp.body_mut() = match account {
        Some(a) => a.hold(replay),
        None => replay,
    };
}

/// The next frame of `body`; `Err` (counted) when `account` is reset for
/// memory while waiting for it.
pub(crate) async fn next_frame(
    body: &mut Body,
    account: Option<&FilterAccount>,
) -> Result<Option<Result<http_body::Frame<Bytes>, BodyError>>, FilterOverBudget> {
    use http_body_util::BodyExt as _;
    match account {
        Some(a) => tokio::select! {
            f = body.frame() => Ok(f),
            e = a.reset() => Err(e),
        },
        None => Ok(body.frame().await),
    }
}

/// A body read whole, at most `limit` bytes, its bytes charged to
/// `account` (the global memory budget) while they are read; the caller
/// keeps the account while it holds them.
pub(crate) async fn collect_counted(
    mut body: Body,
    limit: usize,
    account: Option<&FilterAccount>,
) -> Result<Bytes, CollectError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = next_frame(&mut body, account).await? {
        let frame = frame.map_err(|e| CollectError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(CollectError::TooLarge);
            }
            if let Some(a) = account {
                a.charge(data.len() as u64)?;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Why `collect_counted` gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    #[error("the body is over its bound")]
    TooLarge,
    #[error("{0}")]
    Body(String),
    #[error(transparent)]
    OverBudget(#[from] FilterOverBudget),
}

/// A body read by [`buffer_response`], given out again: the data, then
/// the trailers, an error or the rest of the upstream body.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    error: Option<BodyError>,
    rest: Option<meshgate_core::stream::Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        use std::task::Poll;
        let me = &mut *self;
        if let Some(d) = me.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        if let Some(e) = me.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = me.trailers.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(t))));
        }
        match &mut me.rest {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }
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

    #[tokio::test]
    async fn buffered_responses_replay_their_frames() {
        use http_body_util::BodyExt as _;
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("5"));
        let body = Frames(
            vec![
                http_body::Frame::data(Bytes::from_static(b"ab")),
                http_body::Frame::data(Bytes::from_static(b"cd")),
                http_body::Frame::trailers(t),
            ]
            .into(),
        );
        let mut resp = http::Response::new(box_body(body));
        let b = BufferResponse {
            max_bytes: 100,
            when: |_| true,
        };
        buffer_response(&mut resp, &mut info(), b).await;
        let got = resp.extensions().get::<Buffered>().unwrap().clone();
        assert!(got.complete);
        assert_eq!(&got.data[..], b"abcd");
        assert_eq!(got.trailers.as_ref().unwrap()["grpc-status"], "5");
        let c = std::mem::replace(resp.body_mut(), empty_body())
            .collect()
            .await
            .unwrap();
        assert_eq!(c.trailers().unwrap()["grpc-status"], "5");
        assert_eq!(&c.to_bytes()[..], b"abcd");
        // Over the bound: the prefix, then the rest, unchanged.
        let body = Frames(
            vec![
                http_body::Frame::data(Bytes::from_static(b"abc")),
                http_body::Frame::data(Bytes::from_static(b"def")),
            ]
            .into(),
        );
        let mut resp = http::Response::new(box_body(body));
        buffer_response(
            &mut resp,
            &mut info(),
            BufferResponse {
                max_bytes: 2,
                when: |_| true,
            },
        )
        .await;
        assert!(!resp.extensions().get::<Buffered>().unwrap().complete);
        let c = std::mem::replace(resp.body_mut(), empty_body())
            .collect()
            .await
            .unwrap();
        assert_eq!(&c.to_bytes()[..], b"abcdef");
    }

    /// A body of the given frames, each ready at once.
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
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
