//! Forwarding a routed stream to a cluster (the router's upstream half,
//! DESIGN.md layers 6-8): endpoint choice through the load balancer, the
//! cluster's upstream codec, the route timeout (and gRPC's `grpc-timeout`),
//! per-try timeouts and retries with jittered exponential back-off. A retry
//! re-sends only a body it kept: bodies up to `max_buffered_body_bytes` are
//! buffered when retries are configured, larger or unknown-length ones are
//! streamed and not retried.

use crate::cluster::{Cluster, RequestGuard};
use crate::codec::UpstreamError;
use crate::lb::LbContext;
use crate::stream::{
    Body, LocalReason, Request, Response, StreamInfo, box_body, full_body, local_reply,
};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
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

/// Sends `req` to `cluster` under `policy`; always returns a response (a
/// local reply when meshgate fails the stream).
pub async fn forward(
    cluster: &Arc<Cluster>,
    req: Request,
    info: &mut StreamInfo,
    policy: &ForwardPolicy,
    hash: Option<u64>,
) -> Response {
    info.upstream_cluster = Some(cluster.name.clone());
    let mut timeout = policy.timeout;
    if info.grpc
        && let Some(t) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    {
        timeout = Some(timeout.map_or(t, |r| r.min(t)));
    }
    let fut = forward_inner(cluster, req, info, policy, hash);
    match timeout {
        Some(t) if !t.is_zero() => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => local_reply(info, LocalReason::UpstreamTimeout),
        },
        _ => fut.await,
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

async fn forward_inner(
    cluster: &Arc<Cluster>,
    req: Request,
    info: &mut StreamInfo,
    policy: &ForwardPolicy,
    hash: Option<u64>,
) -> Response {
    let Some(codec) = cluster.upstream.clone() else {
        return local_reply(info, LocalReason::UpstreamProtocolError);
    };
    let ctx = LbContext { hash };
    let (parts, body) = req.into_parts();
    // Keep the body for retries when it is known to be small.
    let kept: Option<Bytes> = if policy.num_retries > 0 {
        match body.size_hint().upper() {
            Some(n) if n as usize <= policy.max_buffered_body_bytes => match body.collect().await {
                Ok(b) => Some(b.to_bytes()),
                Err(_) => return local_reply(info, LocalReason::BadRequest),
            },
            _ => {
                return attempt_once(
                    cluster,
                    &codec,
                    Request::from_parts(parts, body),
                    info,
                    &ctx,
                    policy,
                )
                .await;
            }
        }
    } else {
        return attempt_once(
            cluster,
            &codec,
            Request::from_parts(parts, body),
            info,
            &ctx,
            policy,
        )
        .await;
    };
    let kept = kept.unwrap_or_default();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = LocalReason::NoHealthyUpstream;
    for n in 0..=policy.num_retries {
        if n > 0 {
            metrics::counter!("meshgate_cluster_upstream_rq_retry_total", "cluster" => cluster.name.to_string()).increment(1);
            tokio::time::sleep(backoff(policy, n)).await;
        }
        let mut b = http::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version);
        if let Some(h) = b.headers_mut() {
            *h = parts.headers.clone();
        }
        // Codec state (e.g. an RPC frame head) travels with every try.
        if let Some(e) = b.extensions_mut() {
            *e = parts.extensions.clone();
        }
        let req = b.body(full_body(kept.clone())).expect("parts were valid");
        let status_retry = n < policy.num_retries;
        match try_endpoint(
            cluster,
            &codec,
            req,
            info,
            &ctx,
            policy,
            &mut tried,
            status_retry,
        )
        .await
        {
            Attempt::Done(r) => return r,
            Attempt::Retry(reason) => last = reason,
            Attempt::Fail(reason) => return local_reply(info, reason),
        }
    }
    local_reply(info, last)
}

async fn attempt_once(
    cluster: &Arc<Cluster>,
    codec: &Arc<dyn crate::codec::ClientCodec>,
    req: Request,
    info: &mut StreamInfo,
    ctx: &LbContext,
    policy: &ForwardPolicy,
) -> Response {
    let mut tried = Vec::new();
    match try_endpoint(cluster, codec, req, info, ctx, policy, &mut tried, false).await {
        Attempt::Done(r) => r,
        Attempt::Retry(reason) | Attempt::Fail(reason) => local_reply(info, reason),
    }
}

#[allow(clippy::too_many_arguments)]
async fn try_endpoint(
    cluster: &Arc<Cluster>,
    codec: &Arc<dyn crate::codec::ClientCodec>,
    req: Request,
    info: &mut StreamInfo,
    ctx: &LbContext,
    policy: &ForwardPolicy,
    tried: &mut Vec<SocketAddr>,
    may_retry_status: bool,
) -> Attempt {
    let Some(endpoint) = cluster.choose(ctx, tried) else {
        return Attempt::Fail(LocalReason::NoHealthyUpstream);
    };
    info.upstream_host = Some(endpoint.address);
    let guard = endpoint.start_request();
    let send = codec.send(cluster, &endpoint, req);
    let result = match policy.per_try_timeout {
        Some(t) if !t.is_zero() => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
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
    let reason = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
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
                }),
            ));
        }
        Err(UpstreamError::Overflow) => return Attempt::Fail(LocalReason::Overflow),
        Err(UpstreamError::Connect(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream connect failure");
            tried.push(endpoint.address);
            LocalReason::UpstreamConnectFailure
        }
        Err(UpstreamError::Reset(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream reset");
            LocalReason::UpstreamReset
        }
        Err(UpstreamError::MalformedRequestBody(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "downstream request body malformed");
            return Attempt::Fail(LocalReason::BadRequest);
        }
        Err(UpstreamError::Protocol(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream protocol error");
            LocalReason::UpstreamProtocolError
        }
    };
    if retriable(policy, reason) {
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
/// body is done (least_request sees streaming responses as in flight).
struct Guarded {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = crate::stream::BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
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
