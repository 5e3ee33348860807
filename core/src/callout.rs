//! Side calls a stream filter makes to a cluster while a stream waits: a
//! JWKS fetch, an external authorization check, a rate-limit service
//! (Envoy's `HttpUri` and `GrpcService.envoy_grpc`). They go through the
//! cluster's own pool, load balancer, circuit breaker and upstream codec
//! (`forward`), so a side call is load-balanced, bounded and counted like
//! any stream; nothing here opens a socket itself. Also the bounded
//! whole-body buffering a filter asks for before it decides (413 past the
//! bound).
//!
//! gRPC framing is written here (five bytes: a compressed flag and a
//! big-endian length) rather than through tonic, because tonic would need
//! its own channel and connections beside the cluster's pool; the filter
//! encodes and decodes the message itself (prost).

use crate::cluster::Cluster;
use crate::forward::{ForwardPolicy, forward};
use crate::network::ConnectionInfo;
use crate::stream::{Body, LocalReason, Request, StreamInfo, full_body};
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why a side call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalloutError {
    /// meshgate could not complete the exchange (no endpoint, connect
    /// failure, reset, timeout...).
    #[error("upstream: {}", .0.label())]
    Upstream(LocalReason),
    /// The answer's body passed the caller's bound.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    /// The body broke off.
    #[error("response body: {0}")]
    Body(String),
    /// gRPC: a non-OK status (or a malformed answer, as INTERNAL = 13).
    #[error("grpc status {status}: {message}")]
    Grpc { status: u32, message: String },
}

/// A side call's complete answer.
#[derive(Debug)]
pub struct CalloutResponse {
    pub head: http::response::Parts,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// The connection a side call's stream claims to come from: meshgate
/// itself. Shared by every side call (one allocation per process).
fn own_connection() -> Arc<ConnectionInfo> {
    static CONN: OnceLock<Arc<ConnectionInfo>> = OnceLock::new();
    CONN.get_or_init(|| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Arc::new(ConnectionInfo {
            id: 0,
            listener: Arc::from("callout"),
            peer_addr: addr,
            local_addr: addr,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        })
    })
    .clone()
}

/// Sends `req` to `cluster` and reads the whole answer (body at most
/// `max_body` bytes), all within `timeout`.
pub async fn call(
    cluster: &Arc<Cluster>,
    req: http::Request<Bytes>,
    timeout: Duration,
    max_body: usize,
) -> Result<CalloutResponse, CalloutError> {
    let policy = ForwardPolicy {
        timeout: Some(timeout),
        ..ForwardPolicy::default()
    };
    let mut info = StreamInfo::new(own_connection(), "callout");
    info.grpc = crate::stream::is_grpc(req.headers());
    let req: Request = req.map(full_body);
    let exchange = async {
        let resp = forward(cluster, req, &mut info, &policy, None).await;
        if let Some(reason) = resp.extensions().get::<LocalReason>() {
            return Err(CalloutError::Upstream(*reason));
        }
        let (head, body) = resp.into_parts();
        let (body, trailers) = collect_bounded(body, max_body).await?;
        Ok(CalloutResponse {
            head,
            body,
            trailers,
        })
    };
    // `forward` bounds the time to the response head; this bounds the body.
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(CalloutError::Upstream(LocalReason::UpstreamTimeout)),
    }
}

/// A unary gRPC call: `message` is the encoded request message, the result
/// the encoded response message. `authority` is the `:authority` sent
/// (Envoy's `GrpcService.envoy_grpc.authority`, the cluster name by
/// default).
pub async fn grpc_unary(
    cluster: &Arc<Cluster>,
    authority: &str,
    path: &str,
    message: Bytes,
    timeout: Duration,
    max_response: usize,
) -> Result<Bytes, CalloutError> {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    grpc_unary_framed(
        cluster,
        authority,
        path,
        framed.freeze(),
        timeout,
        max_response,
    )
    .await
}

/// `grpc_unary` with the message already in its gRPC frame (the 5-byte
/// uncompressed-flag and length prefix): a caller that can write the
/// prefix in place saves copying a large message (the span exporter's
/// batches).
pub async fn grpc_unary_framed(
    cluster: &Arc<Cluster>,
    authority: &str,
    path: &str,
    framed: Bytes,
    timeout: Duration,
    max_response: usize,
) -> Result<Bytes, CalloutError> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| grpc_internal(format!("bad request uri: {e}")))?;
    let mut req = http::Request::new(framed);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("te", http::HeaderValue::from_static("trailers"));
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    if let Ok(v) = http::HeaderValue::from_str(&format!("{millis}m")) {
        h.insert("grpc-timeout", v);
    }
    let resp = call(cluster, req, timeout, max_response.saturating_add(5)).await?;
    grpc_answer(&resp)
}

fn grpc_internal(message: String) -> CalloutError {
    CalloutError::Grpc {
        status: 13,
        message,
    }
}

/// The message of a unary gRPC answer, or its status as an error.
fn grpc_answer(resp: &CalloutResponse) -> Result<Bytes, CalloutError> {
    if resp.head.status != http::StatusCode::OK {
        // gRPC over HTTP: a non-200 maps to UNAVAILABLE/INTERNAL-ish;
        // UNKNOWN (2) keeps the HTTP status readable in the message.
        return Err(CalloutError::Grpc {
            status: 2,
            message: format!("http status {}", resp.head.status.as_u16()),
        });
    }
    // A trailers-only answer carries its status in the head.
    let status_in = |h: &HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let status = resp
        .trailers
        .as_ref()
        .and_then(status_in)
        .or_else(|| status_in(&resp.head.headers));
    let Some(status) = status else {
        return Err(grpc_internal("no grpc-status".into()));
    };
    if status != 0 {
        let message = resp
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| resp.head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        return Err(CalloutError::Grpc { status, message });
    }
    let mut body = resp.body.clone();
    if body.len() < 5 {
        return Err(grpc_internal("short grpc message".into()));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(grpc_internal("compressed grpc message".into()));
    }
    if body.len() != len {
        return Err(grpc_internal(format!(
            "grpc message length {len}, {} bytes received",
            body.len()
        )));
    }
    Ok(body)
}

/// Reads a whole body, at most `limit` bytes, and its trailers.
pub async fn collect_bounded(
    mut body: Body,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), CalloutError> {
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CalloutError::Body(e.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    return Err(CalloutError::TooLarge(limit));
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((buf.freeze(), trailers))
}

/// A body given back after a filter read it: the bytes read (and
/// trailers), then whatever was not read yet.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Body>,
}

impl Replay {
    fn new(data: Bytes, trailers: Option<HeaderMap>, rest: Option<Body>) -> Self {
        Self {
            data: Some(data).filter(|d| !d.is_empty()),
            trailers,
            rest,
        }
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = crate::stream::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(t))));
        }
        match self.rest.as_mut() {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// What became of a request body a filter asked to see whole.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body (the request carries it on, unchanged).
    Whole(Bytes),
    /// Longer than the bound: with `allow_partial` the first `limit`
    /// bytes (the request still carries the whole body on), otherwise the
    /// caller answers 413 (`LocalReason::PayloadTooLarge`).
    TooLarge(Bytes),
}

/// Buffers the request body up to `limit` bytes so that a filter can read
/// it whole (ext_authz's `with_request_body`, a body-signing check); the
/// request keeps its body (and trailers) for the next filters and the
/// upstream. Past the bound, with `allow_partial` false, the body read so
/// far is returned as `TooLarge` and the request's body is left empty:
/// the caller must refuse the stream (413). A body that breaks off is an
/// error (the downstream went away or sent garbage). With the global
/// memory budget on (`overload::buffer`), the bytes held count in it until
/// the upstream request takes them; a body refused for memory is
/// `CalloutError::Upstream(LocalReason::Overloaded)` (answer 503).
pub async fn buffer_request_body(
    req: &mut Request,
    limit: usize,
    allow_partial: bool,
) -> Result<Buffered, CalloutError> {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return Ok(Buffered::Whole(Bytes::new()));
    }
    let mut body = std::mem::replace(req.body_mut(), crate::stream::empty_body());
    let mut buf = BytesMut::new();
    let mut trailers = None;
    let mut over = false;
    // What is held here counts in the global memory budget (when on).
    let account = crate::overload::buffer::FilterAccount::new();
    let overloaded = || CalloutError::Upstream(LocalReason::Overloaded);
    loop {
        let next = match &account {
            // Reset for memory while waiting for more: refused at once.
            Some(a) => tokio::select! {
                f = body.frame() => f,
                _ = a.reset() => return Err(overloaded()),
            },
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| CalloutError::Body(e.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                if let Some(a) = &account {
                    a.charge(data.len() as u64).map_err(|_| overloaded())?;
                }
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    over = true;
                    break;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    // Reset for memory while the last chunks arrived.
    if let Some(a) = &account {
        a.check().map_err(|_| overloaded())?;
    }
    let seen = buf.freeze();
    let hold = |b: crate::stream::Body| match account {
        Some(a) => a.hold(b),
        None => b,
    };
    if over {
        if !allow_partial {
            return Ok(Buffered::TooLarge(seen.slice(..limit)));
        }
        // What was read, then the rest still streaming.
        *req.body_mut() = hold(crate::stream::box_body(Replay::new(
            seen.clone(),
            None,
            Some(body),
        )));
        return Ok(Buffered::TooLarge(seen.slice(..limit)));
    }
    *req.body_mut() = hold(match trailers {
        None => full_body(seen.clone()),
        Some(t) => crate::stream::box_body(Replay::new(seen.clone(), Some(t), None)),
    });
    Ok(Buffered::Whole(seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &[u8], trailers: Option<&[(&str, &str)]>) -> CalloutResponse {
        let (head, ()) = http::Response::new(()).into_parts();
        CalloutResponse {
            head,
            body: Bytes::copy_from_slice(body),
            trailers: trailers.map(|t| {
                let mut h = HeaderMap::new();
                for (k, v) in t {
                    h.insert(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                h
            }),
        }
    }

    #[test]
    fn grpc_answers_are_unframed_and_statuses_become_errors() {
        let ok = answer(b"\0\0\0\0\x03abc", Some(&[("grpc-status", "0")]));
        assert_eq!(grpc_answer(&ok).unwrap(), Bytes::from_static(b"abc"));
        let denied = answer(
            b"",
            Some(&[("grpc-status", "7"), ("grpc-message", "no way")]),
        );
        assert_eq!(
            grpc_answer(&denied).unwrap_err(),
            CalloutError::Grpc {
                status: 7,
                message: "no way".into()
            }
        );
        let short = answer(b"\0\0\0\0\x09abc", Some(&[("grpc-status", "0")]));
        assert!(matches!(
            grpc_answer(&short),
            Err(CalloutError::Grpc { status: 13, .. })
        ));
        let missing = answer(b"\0\0\0\0\x03abc", None);
        assert!(matches!(
            grpc_answer(&missing),
            Err(CalloutError::Grpc { status: 13, .. })
        ));
    }

    fn streamed(chunks: &[&'static [u8]], trailer: bool) -> Body {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, crate::stream::BodyError>> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c))))
            .collect();
        if trailer {
            let mut t = HeaderMap::new();
            t.insert("x-sum", "1".parse().unwrap());
            frames.push(Ok(http_body::Frame::trailers(t)));
        }
        let mut frames = frames.into_iter();
        let first = frames
            .next()
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        let rest: Vec<_> = frames.collect();
        let mut data = first.unwrap_or_default().to_vec();
        let mut trailers = None;
        for f in rest {
            match f.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        // One data frame and the trailers: what the buffering sees.
        crate::stream::box_body(Replay::new(Bytes::from(data), trailers, None))
    }

    #[tokio::test]
    async fn a_buffered_body_is_read_whole_and_still_forwarded() {
        let mut req = http::Request::new(streamed(&[b"ab", b"cd"], true));
        let got = buffer_request_body(&mut req, 10, false).await.unwrap();
        assert!(matches!(got, Buffered::Whole(ref b) if b == "abcd"));
        let (body, trailers) = collect_bounded(req.into_body(), 10).await.unwrap();
        assert_eq!(body, "abcd");
        assert!(trailers.unwrap().contains_key("x-sum"));
    }

    #[tokio::test]
    async fn past_the_bound_the_body_is_refused_or_cut_for_the_filter_only() {
        let mut req = http::Request::new(streamed(&[b"abc", b"def", b"gh"], false));
        let got = buffer_request_body(&mut req, 4, false).await.unwrap();
        assert!(matches!(got, Buffered::TooLarge(ref b) if b == "abcd"));

        let mut req = http::Request::new(streamed(&[b"abc", b"def", b"gh"], false));
        let got = buffer_request_body(&mut req, 4, true).await.unwrap();
        assert!(matches!(got, Buffered::TooLarge(ref b) if b == "abcd"));
        let (body, _) = collect_bounded(req.into_body(), 100).await.unwrap();
        assert_eq!(body, "abcdefgh");
        assert!(matches!(
            collect_bounded(streamed(&[b"abc", b"def"], false), 5).await,
            Err(CalloutError::TooLarge(5))
        ));
    }
}
