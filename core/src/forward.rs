//! Forwarding a routed stream to a cluster (the router's upstream half,
//! DESIGN.md layers 6-8): endpoint choice through the load balancer, the
//! cluster's upstream codec, the route timeout (and gRPC's `grpc-timeout`),
//! per-try timeouts and retries with jittered exponential back-off. A retry
//! re-sends only a body it kept: bodies up to `max_buffered_body_bytes` are
//! buffered when retries are configured, larger or unknown-length ones are
//! streamed and not retried.

use crate::body;
use crate::cluster::{Cluster, RequestGuard};
use crate::codec::{ClientCodec, UpstreamError, UpstreamErrorKind, UpstreamFuture};
use crate::lb::LbContext;
use crate::stream::{
    Body, LocalReason, Request, Response, StreamInfo, box_body, full_body, local_reply,
};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Which failures a retry policy retries (Envoy's `retry_on` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, reset, connect failure or per-try timeout.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, reset, connect failure, per-try timeout.
    pub gateway_error: bool,
    /// `connect-failure`
    pub connect_failure: bool,
    /// `reset`: the upstream reset or closed before a response head.
    pub reset: bool,
    /// `retriable-status-codes`: statuses listed in the policy.
    pub retriable_status_codes: bool,
}

/// How a stream is sent upstream.
#[derive(Debug, Clone)]
pub struct ForwardPolicy {
    /// Until the response head arrives, over all tries; `None` = no limit.
    pub timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub num_retries: u32,
    pub retry_on: RetryOn,
    pub retriable_status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_buffered_body_bytes: usize,
    /// The virtual host's `include_request_attempt_count`: each try
    /// carries `x-envoy-attempt-count` (unless the stream suppresses
    /// Envoy headers).
    pub request_attempt_count: bool,
}

impl Default for ForwardPolicy {
    fn default() -> Self {
        Self {
            timeout: Some(Duration::from_secs(15)),
            per_try_timeout: None,
            num_retries: 0,
            retry_on: RetryOn::default(),
            retriable_status_codes: Vec::new(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            max_buffered_body_bytes: 64 * 1024,
            request_attempt_count: false,
        }
    }
}

/// Parses gRPC's `grpc-timeout` (`<1..8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

enum Attempt {
    Done(Response),
    Retry(LocalReason),
    Fail(LocalReason),
}

/// What `forward` prepared before its future is first polled.
enum Step {
    /// Answer locally.
    Fail(LocalReason),
    /// The common case, no retries: the upstream exchange is under way.
    Sending(Sending),
    /// Retries are configured: the request goes to the retry loop (boxed,
    /// so that the common case's future stays small).
    Retrying(Box<(Arc<dyn ClientCodec>, Request)>),
}

/// One upstream exchange in flight, and what settles it.
struct Sending {
    send: UpstreamFuture,
    /// Holds the endpoint too.
    guard: RequestGuard,
    /// The codec took the deadline (`ClientCodec::send_by`).
    watched: bool,
}

/// Sends `req` to `cluster` under `policy`; always yields a response (a
/// local reply when meshgate fails the stream).
///
/// Without retries (the common case) the endpoint is chosen and the
/// codec's send started before the returned future is polled, so the
/// future holds the codec's boxed exchange and not the request: a few
/// hundred bytes instead of kilobytes of nested async state that every
/// enclosing future would otherwise copy (memcpy was the largest item of
/// the HTTP/1.1 instruction profile in benches/RESULTS.md).
pub fn forward<'a>(
    cluster: &'a Arc<Cluster>,
    mut req: Request,
    info: &'a mut StreamInfo,
    policy: &'a ForwardPolicy,
    hash: Option<u64>,
) -> impl Future<Output = Response> + Send + 'a {
    info.upstream_cluster = Some(cluster.name);
    crate::spans::record_cluster(cluster.name);
    // The request body is counted as it streams when its size is not
    // known to be within the limit, and stamps activity for the idle
    // timeout (no wrapper, no allocation for a bodiless request).
    let watch = body::watch_request(&mut req, &info.limits, info.protocol);
    // Only an HTTP/1.1 downstream can carry an upstream's transfer codings.
    let carries_codings = info.traits.carries_codings && req.version() == http::Version::HTTP_11;
    let mut timeout = policy.timeout.filter(|t| !t.is_zero());
    if info.grpc
        && let Some(t) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    {
        timeout = Some(timeout.map_or(t, |r| r.min(t)));
    }
    let idle = info.limits.idle_timeout;
    // Before the response head, a bodiless request moves no byte: its idle
    // timeout is the time since its head, and a route timeout that is not
    // longer ends the stream first (no idle timer needed).
    let idle_before_response = idle.filter(|i| watch.is_some() || timeout.is_none_or(|t| *i < t));
    let step = match &cluster.upstream {
        None => Step::Fail(LocalReason::UpstreamProtocolError),
        Some(codec) if policy.num_retries > 0 => Step::Retrying(Box::new((codec.clone(), req))),
        Some(codec) => {
            // A single try: its own timeout, if shorter, is the stream's.
            if let Some(t) = policy.per_try_timeout.filter(|t| !t.is_zero()) {
                timeout = Some(timeout.map_or(t, |r| r.min(t)));
            }
            // Counted from the stream's start (its head arrived a moment
            // ago): no clock read of its own.
            let deadline = timeout.map(|t| tokio::time::Instant::from_std(info.start) + t);
            match start(
                cluster,
                codec,
                req,
                info,
                &LbContext { hash },
                &[],
                deadline,
                policy.request_attempt_count,
            ) {
                Ok(s) => {
                    if s.watched {
                        // The codec watches the deadline itself.
                        timeout = None;
                    }
                    Step::Sending(s)
                }
                Err(reason) => Step::Fail(reason),
            }
        }
    };
    let after = After {
        idle: idle.map(|t| (t, watch.clone())),
        protocol: info.protocol,
    };
    async move {
        let guarded = watch.is_some() || idle_before_response.is_some();
        let resp = match step {
            Step::Fail(reason) => return local_reply(info, reason),
            Step::Sending(Sending { send, guard, .. }) => {
                let timed = with_timeout(send, timeout);
                let result = if guarded {
                    let timer =
                        idle_before_response.map(|t| body::IdleTimer::new(t, watch.clone()));
                    match Box::pin(body::race(Box::pin(timed), watch.as_ref(), timer)).await {
                        body::Raced::Done(r) => r,
                        body::Raced::TooLarge => {
                            return local_reply(info, LocalReason::PayloadTooLarge);
                        }
                        body::Raced::Idle => return idled(info),
                    }
                } else {
                    timed.await
                };
                match result {
                    Some(r) => last_try(
                        info,
                        settle(cluster, guard, r, policy, &mut Vec::new(), false, &after),
                    ),
                    None => {
                        guard.endpoint().report(crate::pool::Outcome::Timeout);
                        local_reply(info, LocalReason::UpstreamTimeout)
                    }
                }
            }
            Step::Retrying(b) => {
                let (codec, req) = *b;
                let fut = Box::pin(retrying(cluster, codec, req, info, policy, hash, &after));
                let timed = with_timeout(fut, timeout);
                let result = if guarded {
                    let timer =
                        idle_before_response.map(|t| body::IdleTimer::new(t, watch.clone()));
                    match body::race(Box::pin(timed), watch.as_ref(), timer).await {
                        body::Raced::Done(r) => r,
                        body::Raced::TooLarge => {
                            return local_reply(info, LocalReason::PayloadTooLarge);
                        }
                        body::Raced::Idle => return idled(info),
                    }
                } else {
                    timed.await
                };
                match result {
                    Some(r) => r,
                    None => local_reply(info, LocalReason::UpstreamTimeout),
                }
            }
        };
        // The body went over the limit while the exchange ended some other
        // way (the upstream codec failed on the body's error, or answered
        // meanwhile): the client gets 413, the upstream an aborted request.
        if watch.as_ref().is_some_and(|w| w.too_large()) {
            return local_reply(info, LocalReason::PayloadTooLarge);
        }
        if !carries_codings && resp.extensions().get::<body::TransferCodings>().is_some() {
            count_invalid_response(cluster, "transfer_coding");
            return local_reply(info, LocalReason::UpstreamProtocolError);
        }
        resp
    }
}

/// The stream idled out before its response: 408, counted.
fn idled(info: &mut StreamInfo) -> Response {
    body::count_idle(info.protocol, "before_response");
    local_reply(info, LocalReason::StreamIdleTimeout)
}

/// Counts an upstream response refused as invalid, by reason.
fn count_invalid_response(cluster: &Cluster, reason: &'static str) {
    metrics::counter!(crate::metrics::names::HTTP_UPSTREAM_RS_INVALID_TOTAL, "cluster" => cluster.name, "reason" => reason).increment(1);
}

/// `fut` within `timeout`; `None` when it passed.
async fn with_timeout<F: Future>(fut: F, timeout: Option<Duration>) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// What the response body of a stream watches once its head is on its
/// way: the idle timeout (with the request body's activity, when it
/// still streams).
struct After {
    idle: Option<(Duration, Option<Arc<body::Watch>>)>,
    protocol: &'static str,
}

/// The response of a stream's last try: its own, or the local reply for
/// why it failed.
fn last_try(info: &mut StreamInfo, attempt: Attempt) -> Response {
    match attempt {
        Attempt::Done(r) => r,
        Attempt::Retry(reason) | Attempt::Fail(reason) => local_reply(info, reason),
    }
}

fn retriable(policy: &ForwardPolicy, reason: LocalReason) -> bool {
    let r = &policy.retry_on;
    match reason {
        LocalReason::UpstreamConnectFailure => r.connect_failure || r.five_xx || r.gateway_error,
        LocalReason::UpstreamReset => r.reset || r.five_xx || r.gateway_error,
        LocalReason::UpstreamTimeout => r.five_xx || r.gateway_error,
        LocalReason::UpstreamProtocolError => r.five_xx || r.gateway_error,
        _ => false,
    }
}

fn retriable_status(policy: &ForwardPolicy, status: u16) -> bool {
    let r = &policy.retry_on;
    (r.five_xx && (500..600).contains(&status))
        || (r.gateway_error && matches!(status, 502..=504))
        || (r.retriable_status_codes && policy.retriable_status_codes.contains(&status))
}

/// The retry loop: tries under `policy` until one yields a response that
/// is not retried, or the retries run out.
async fn retrying(
    cluster: &Arc<Cluster>,
    codec: Arc<dyn ClientCodec>,
    req: Request,
    info: &mut StreamInfo,
    policy: &ForwardPolicy,
    hash: Option<u64>,
    after: &After,
) -> Response {
    let ctx = LbContext { hash };
    let (parts, body) = req.into_parts();
    // Keep the body for retries when it is known to be small; a larger or
    // unknown-length one streams and gets a single try.
    let kept = match body.size_hint().upper() {
        Some(n) if n as usize <= policy.max_buffered_body_bytes => match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return local_reply(info, LocalReason::BadRequest),
        },
        _ => {
            let req = Request::from_parts(parts, body);
            let attempt = match start(
                cluster,
                &codec,
                req,
                info,
                &ctx,
                &[],
                None,
                policy.request_attempt_count,
            ) {
                Ok(s) => try_once(cluster, s, policy, &mut Vec::new(), false, after).await,
                Err(reason) => Attempt::Fail(reason),
            };
            return last_try(info, attempt);
        }
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = LocalReason::NoHealthyUpstream;
    for n in 0..=policy.num_retries {
        if n > 0 {
            metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_TOTAL, "cluster" => cluster.name.to_string()).increment(1);
            tokio::time::sleep(backoff(policy, n)).await;
        }
        let mut req = http::Request::new(full_body(kept.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        // Codec state (e.g. an RPC frame head) travels with every try.
        *req.extensions_mut() = parts.extensions.clone();
        let status_retry = n < policy.num_retries;
        let attempt = match start(
            cluster,
            &codec,
            req,
            info,
            &ctx,
            &tried,
            None,
            policy.request_attempt_count,
        ) {
            Ok(s) => try_once(cluster, s, policy, &mut tried, status_retry, after).await,
            Err(reason) => Attempt::Fail(reason),
        };
        match attempt {
            Attempt::Done(r) => return r,
            Attempt::Retry(reason) => last = reason,
            Attempt::Fail(reason) => return local_reply(info, reason),
        }
    }
    local_reply(info, last)
}

/// Chooses an endpoint (not one of `tried`) and starts the exchange, with
/// the codec watching `deadline` if it can; counts the try, and tells the
/// upstream its number when `attempt_count` is on.
#[allow(clippy::too_many_arguments)]
fn start(
    cluster: &Arc<Cluster>,
    codec: &Arc<dyn ClientCodec>,
    req: Request,
    info: &mut StreamInfo,
    ctx: &LbContext,
    tried: &[SocketAddr],
    deadline: Option<tokio::time::Instant>,
    attempt_count: bool,
) -> Result<Sending, LocalReason> {
    let endpoint = cluster
        .choose(ctx, tried)
        .ok_or(LocalReason::NoHealthyUpstream)?;
    info.upstream_host = Some(endpoint.address);
    info.upstream_attempts = info.upstream_attempts.saturating_add(1);
    let mut req = req;
    if attempt_count && !info.suppress_envoy_headers {
        req.headers_mut().insert(
            crate::router::envoy_headers::X_ENVOY_ATTEMPT_COUNT,
            crate::router::envoy_headers::int_value(u64::from(info.upstream_attempts)),
        );
    }
    let guard = endpoint.begin_request();
    let endpoint = guard.endpoint();
    let (send, watched) = match deadline {
        Some(d) => match codec.send_by(cluster, endpoint, req, d) {
            Ok(send) => (send, true),
            Err(req) => (codec.send(cluster, endpoint, req), false),
        },
        None => (codec.send(cluster, endpoint, req), false),
    };
    Ok(Sending {
        send,
        guard,
        watched,
    })
}

/// One try of the retry loop, under the per-try timeout.
async fn try_once(
    cluster: &Arc<Cluster>,
    s: Sending,
    policy: &ForwardPolicy,
    tried: &mut Vec<SocketAddr>,
    may_retry_status: bool,
    after: &After,
) -> Attempt {
    let Sending { send, guard, .. } = s;
    let result = match policy.per_try_timeout {
        Some(t) if !t.is_zero() => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
                guard.endpoint().report(crate::pool::Outcome::Timeout);
                let reason = LocalReason::UpstreamTimeout;
                return if retriable(policy, reason) {
                    Attempt::Retry(reason)
                } else {
                    Attempt::Fail(reason)
                };
            }
        },
        _ => send.await,
    };
    settle(
        cluster,
        guard,
        result,
        policy,
        tried,
        may_retry_status,
        after,
    )
}

/// What an exchange's outcome means for the stream.
fn settle(
    cluster: &Cluster,
    guard: RequestGuard,
    result: Result<Response, UpstreamError>,
    policy: &ForwardPolicy,
    tried: &mut Vec<SocketAddr>,
    may_retry_status: bool,
    after: &After,
) -> Attempt {
    let endpoint = &**guard.endpoint();
    let e = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            endpoint.report(if status >= 500 {
                crate::pool::Outcome::ServerError
            } else {
                crate::pool::Outcome::Success
            });
            if may_retry_status && retriable_status(policy, status) {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, status, "retriable status");
                return Attempt::Retry(LocalReason::UpstreamProtocolError);
            }
            let (parts, body) = resp.into_parts();
            return Attempt::Done(Response::from_parts(
                parts,
                box_body(Guarded {
                    body,
                    _guard: guard,
                    idle: after
                        .idle
                        .as_ref()
                        .map(|(t, w)| body::IdleTimer::new(*t, w.clone())),
                    protocol: after.protocol,
                }),
            ));
        }
        Err(e) => e,
    };
    if let Some(o) = e.outcome() {
        endpoint.report(o);
    }
    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream exchange failed");
    let reason = match e.kind() {
        UpstreamErrorKind::Overflow => LocalReason::Overflow,
        UpstreamErrorKind::MalformedRequestBody => LocalReason::BadRequest,
        UpstreamErrorKind::Timeout => LocalReason::UpstreamTimeout,
        UpstreamErrorKind::Connect => {
            tried.push(endpoint.address);
            LocalReason::UpstreamConnectFailure
        }
        UpstreamErrorKind::Reset => LocalReason::UpstreamReset,
        UpstreamErrorKind::Protocol => LocalReason::UpstreamProtocolError,
    };
    if e.is_retryable() && retriable(policy, reason) {
        Attempt::Retry(reason)
    } else {
        Attempt::Fail(reason)
    }
}

/// Jittered exponential back-off: uniform in [0, min(base * 2^(n-1), max)].
fn backoff(policy: &ForwardPolicy, n: u32) -> Duration {
    let cap = policy
        .backoff_base
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(policy.backoff_max);
    let ms = cap.as_micros() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::random_range(0..=ms))
}

/// A response body that keeps the endpoint's active-request count until the
/// body is done (least_request sees streaming responses as in flight),
/// resets the stream when it idles out, and never forwards forbidden
/// trailer fields.
struct Guarded {
    body: Body,
    _guard: RequestGuard,
    idle: Option<body::IdleTimer>,
    protocol: &'static str,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = crate::stream::BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        match Pin::new(&mut me.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut f))) => {
                if let Some(t) = &mut me.idle {
                    t.touch();
                }
                if let Some(t) = f.trailers_mut() {
                    body::strip_forbidden_trailers(t, "response");
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => {
                if let Some(t) = &mut me.idle
                    && t.poll_idle(cx).is_ready()
                {
                    me.idle = None;
                    body::count_idle(me.protocol, "after_response");
                    // Dropping the upstream body aborts the upstream
                    // stream; the error resets the downstream one.
                    me.body = crate::stream::empty_body();
                    return Poll::Ready(Some(Err(body::StreamIdle.into())));
                }
                Poll::Pending
            }
            other => other,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"m"), None);
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
    }

    #[test]
    fn retry_classes() {
        let mut p = ForwardPolicy::default();
        p.retry_on.gateway_error = true;
        assert!(retriable_status(&p, 503));
        assert!(!retriable_status(&p, 500));
        assert!(retriable(&p, LocalReason::UpstreamReset));
        p.retry_on = RetryOn {
            retriable_status_codes: true,
            ..Default::default()
        };
        p.retriable_status_codes = vec![409];
        assert!(retriable_status(&p, 409));
        assert!(!retriable(&p, LocalReason::UpstreamConnectFailure));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = ForwardPolicy::default();
        for n in 1..20 {
            assert!(backoff(&p, n) <= p.backoff_max);
        }
    }
}
