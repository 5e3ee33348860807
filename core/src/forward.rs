//! Forwarding a routed stream to a cluster (the router's upstream half,
//! DESIGN.md layers 6-8): endpoint choice through the load balancer, the
//! cluster's upstream codec, the route timeout (and gRPC's `grpc-timeout`),
//! per-try timeouts and retries with jittered exponential back-off. A retry
//! re-sends only a body it kept: bodies up to `max_buffered_body_bytes` are
//! buffered when retries are configured, larger or unknown-length ones are
//! streamed and not retried.

use crate::body;
use crate::cluster::breaker::Slot;
use crate::cluster::{Cluster, RequestGuard};
use crate::codec::{ClientCodec, UpstreamError, UpstreamErrorKind, UpstreamFuture};
use crate::config::circuit_breakers::RoutingPriority;
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
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `envoy-ratelimited`: the response carries `x-envoy-ratelimited`.
    pub envoy_ratelimited: bool,
    /// `reset-before-request`: a failure certainly before the upstream
    /// saw the request (connect failure, refused stream).
    pub reset_before_request: bool,
    /// `refused-stream`: the upstream refused the stream (HTTP/2
    /// REFUSED_STREAM).
    pub refused_stream: bool,
    /// `retriable-headers`: a response matching `retriable_headers`.
    pub retriable_headers: bool,
    /// gRPC `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable` (grpc-status in the head).
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Whether any gRPC status is retried.
    pub fn any_grpc(&self) -> bool {
        self.grpc_cancelled
            || self.grpc_deadline_exceeded
            || self.grpc_internal
            || self.grpc_resource_exhausted
            || self.grpc_unavailable
    }
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
    /// The route's `priority`: which circuit-breaker thresholds apply.
    pub priority: crate::config::circuit_breakers::RoutingPriority,
    /// The retry policy's other rules (`crate::retry`), when it has one.
    pub rules: Option<Arc<crate::retry::RetryRules>>,
    /// The virtual host's `include_request_attempt_count`: each try
    /// carries `x-envoy-attempt-count` (unless the stream suppresses
    /// Envoy headers).
    pub request_attempt_count: bool,
    /// The retry policy's `per_try_idle_timeout`.
    pub per_try_idle_timeout: Option<Duration>,
    /// `hedge_policy.hedge_on_per_try_timeout` (route or virtual host).
    pub hedge_on_per_try_timeout: bool,
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
            priority: Default::default(),
            rules: None,
            request_attempt_count: false,
            per_try_idle_timeout: None,
            hedge_on_per_try_timeout: false,
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
    /// Retriable: why, and the response when it was one (answered as is
    /// when no retry follows).
    Retry(LocalReason, Option<Response>),
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
    /// The request's unit of the cluster's `max_requests` breaker.
    slot: Slot,
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
    // The router's `x-envoy-*` request headers (`retry_headers`): a copy
    // of the policy only for a request that carries one.
    let policy: PolicyRef<'a> = match crate::retry_headers::any(req.headers())
        .then(|| {
            crate::retry_headers::apply(req.headers_mut(), policy, info.suppress_envoy_headers)
        })
        .flatten()
    {
        Some(p) => PolicyRef::Request(Box::new(p)),
        None => PolicyRef::Route(policy),
    };
    info.upstream_cluster = Some(cluster.name);
    // `None` for a cluster without metadata: no count to take.
    info.upstream_cluster_metadata = cluster.metadata.clone();
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
            // A single try: its own timeout, if shorter, is the stream's
            // (and so is its idle timeout before the first response byte).
            if let Some(t) = policy.per_try_timeout.filter(|t| !t.is_zero()) {
                timeout = Some(timeout.map_or(t, |r| r.min(t)));
            }
            if let Some(t) = policy.per_try_idle_timeout {
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
                policy.priority,
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
        let policy: &ForwardPolicy = &policy;
        let guarded = watch.is_some() || idle_before_response.is_some();
        let resp = match step {
            Step::Fail(reason) => return local_reply(info, reason),
            Step::Sending(Sending {
                send, guard, slot, ..
            }) => {
                let timed = with_timeout(send, timeout);
                let result = if guarded {
                    let timer =
                        idle_before_response.map(|t| body::IdleTimer::stream(t, watch.clone()));
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
                    Some(r) => {
                        let a = settle(
                            cluster,
                            (guard, slot),
                            r,
                            policy,
                            &mut Vec::new(),
                            false,
                            &after,
                        );
                        if let Some(tries) = &mut info.upstream_tries {
                            try_end(tries, &a);
                        }
                        last_try(info, a)
                    }
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
                        idle_before_response.map(|t| body::IdleTimer::stream(t, watch.clone()));
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

/// The policy a stream is forwarded under: its route's, or a copy its
/// `x-envoy-*` request headers changed.
enum PolicyRef<'a> {
    Route(&'a ForwardPolicy),
    Request(Box<ForwardPolicy>),
}

impl std::ops::Deref for PolicyRef<'_> {
    type Target = ForwardPolicy;
    fn deref(&self) -> &ForwardPolicy {
        match self {
            PolicyRef::Route(p) => p,
            PolicyRef::Request(p) => p,
        }
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
        Attempt::Done(r) | Attempt::Retry(_, Some(r)) => r,
        Attempt::Retry(reason, None) | Attempt::Fail(reason) => local_reply(info, reason),
    }
}

/// The status a try ended with, for its client span.
fn attempt_status(a: &Attempt) -> u16 {
    match a {
        Attempt::Done(r) | Attempt::Retry(_, Some(r)) => r.status().as_u16(),
        Attempt::Retry(reason, None) | Attempt::Fail(reason) => reason.status().as_u16(),
    }
}

/// The router's `upstream_log`: a try starts. Every try is ended by
/// `try_end` (or, hedged, `try_end_at` and `hedge_done`); one still open
/// when the stream's response is known (e.g. cut by the route timeout)
/// ends there, in the access log.
fn try_begin(
    tries: &mut Vec<crate::stream::UpstreamTry>,
    cluster: Option<&'static str>,
    host: SocketAddr,
    number: u32,
    request_bytes: Option<u64>,
) {
    let now = std::time::Instant::now();
    // Bounded by the retry policy's tries; a hostile config cannot make
    // it grow past `MAX_LOGGED_TRIES` either.
    if tries.len() < MAX_LOGGED_TRIES {
        tries.push(crate::stream::UpstreamTry {
            cluster,
            host,
            number,
            start: now,
            end: None,
            status: None,
            failure: None,
            local_address: None,
            headers: None,
            retry_limit_exceeded: false,
            request_bytes,
            response_bytes: None,
        });
    }
}

/// Upstream tries kept for the `upstream_log` of one stream.
const MAX_LOGGED_TRIES: usize = 64;

/// Most body bytes `arrived_bytes` reads of a retried response.
const MAX_DRAINED: u64 = 64 * 1024;

/// The body bytes of a retried response that already arrived, read
/// without waiting (its frames are polled until one would wait, the body
/// ends, or `MAX_DRAINED` were read: a fast upstream cannot hold the
/// stream here) and dropped, for the try's upstream log entry. A body
/// read to its end also lets an HTTP/1.1 connection go back to its pool.
fn arrived_bytes(resp: Response) -> u64 {
    let mut body = resp.into_body();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut n = 0u64;
    while n < MAX_DRAINED {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                n += f.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => break,
        }
    }
    n
}

/// The router's `upstream_log`: the last try ended with `a`.
fn try_end(tries: &mut [crate::stream::UpstreamTry], a: &Attempt) {
    if let Some(last) = tries.last_mut()
        && last.end.is_none()
    {
        end_with(last, a);
    }
}

/// The router's `upstream_log`: hedged try `at` (its index in `tries`,
/// `None` when it was not recorded) ended with `a`.
fn try_end_at(info: &mut StreamInfo, at: Option<usize>, a: &Attempt) {
    if let Some(t) = at.and_then(|i| info.upstream_tries.as_mut()?.get_mut(i)) {
        end_with(t, a);
    }
}

/// Fills in how try `last` ended.
fn end_with(last: &mut crate::stream::UpstreamTry, a: &Attempt) {
    last.end = Some(std::time::Instant::now());
    last.status = Some(attempt_status(a));
    last.failure = match a {
        Attempt::Done(_) | Attempt::Retry(_, Some(_)) => None,
        Attempt::Retry(reason, None) | Attempt::Fail(reason) => Some(reason.label()),
    };
    if let Attempt::Done(r) | Attempt::Retry(_, Some(r)) = a {
        last.local_address = r
            .extensions()
            .get::<crate::stream::UpstreamLocalAddress>()
            .map(|l| l.0);
    }
    // A retried response is dropped: its entry keeps the head.
    if let Attempt::Retry(_, Some(r)) = a {
        last.headers = Some(Box::new(r.headers().clone()));
    }
}

/// A hedged request's retried response held in `last` (from try `at`) is
/// dropped, which ends its exchange: its entry counts the body bytes that
/// had arrived (`arrived_bytes`).
fn drop_retried(info: &mut StreamInfo, last: &mut Attempt, at: Option<usize>) {
    if let Attempt::Retry(_, r) = last
        && let Some(r) = r.take()
    {
        let n = arrived_bytes(r);
        if let Some(t) = at.and_then(|i| info.upstream_tries.as_mut()?.get_mut(i)) {
            t.response_bytes = Some(n);
        }
    }
}

/// A hedged request answers with try `at`'s response: the tries still
/// running are cancelled (their exchanges are dropped with the hedge) and
/// end now, no response received; `at`'s entry moves last, where the
/// access log counts the body it streams (and where Envoy writes it: the
/// cancelled tries' entries are written when they are reset).
fn hedge_done(tries: Option<&mut Vec<crate::stream::UpstreamTry>>, at: Option<usize>) {
    let Some(tries) = tries else {
        return;
    };
    let now = std::time::Instant::now();
    for t in tries.iter_mut().filter(|t| t.end.is_none()) {
        t.end = Some(now);
    }
    if let Some(i) = at.filter(|&i| i < tries.len()) {
        let won = tries.remove(i);
        tries.push(won);
    }
}

/// Whether a failure is retried; `refused` when the upstream refused the
/// stream (it never processed the request).
fn retriable(policy: &ForwardPolicy, reason: LocalReason, refused: bool) -> bool {
    let r = &policy.retry_on;
    match reason {
        LocalReason::UpstreamConnectFailure => {
            r.connect_failure || r.five_xx || r.gateway_error || r.reset_before_request
        }
        LocalReason::UpstreamReset | LocalReason::UpstreamRemoteReset if refused => {
            r.refused_stream || r.reset_before_request || r.reset || r.five_xx || r.gateway_error
        }
        // Answered 503, retried by `gateway-error` and `5xx` as a 503 is.
        LocalReason::UpstreamReset | LocalReason::UpstreamRemoteReset => {
            r.reset || r.five_xx || r.gateway_error
        }
        // Envoy retries a per-try timeout as a reset.
        LocalReason::UpstreamTimeout => r.five_xx || r.gateway_error || r.reset,
        LocalReason::UpstreamProtocolError => r.five_xx || r.gateway_error,
        _ => false,
    }
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
    // Keep the body for retries when it is small: known to be, or read up
    // to the bound when its length is unknown (gRPC, chunked); a larger
    // one streams (what was read first, then the rest) and gets a single
    // try.
    let max = policy.max_buffered_body_bytes;
    let kept: Result<Bytes, Body> = match body.size_hint().upper() {
        Some(n) if n as usize <= max => match body.collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(_) => return local_reply(info, LocalReason::BadRequest),
        },
        Some(_) => Err(body),
        None => match buffer_up_to(body, max).await {
            Ok(k) => k,
            Err(()) => return local_reply(info, LocalReason::BadRequest),
        },
    };
    let kept = match kept {
        Ok(b) => b,
        Err(body) => {
            let req = Request::from_parts(parts, body);
            let attempt = match start(
                cluster,
                &codec,
                req,
                info,
                &ctx,
                &[],
                None,
                policy.priority,
                policy.request_attempt_count,
            ) {
                Ok(s) => try_once(cluster, s, policy, &mut Vec::new(), false, after).await,
                Err(reason) => Attempt::Fail(reason),
            };
            if let Some(tries) = &mut info.upstream_tries {
                try_end(tries, &attempt);
            }
            return last_try(info, attempt);
        }
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let previous_hosts = policy.rules.as_ref().is_some_and(|r| r.previous_hosts);
    // `retriable_request_headers`: a request that matches none gets one try.
    let retries = if crate::retry::request_eligible(policy, &parts.headers) {
        policy.num_retries
    } else {
        0
    };
    if policy.hedge_on_per_try_timeout && retries > 0 && per_try_limit(policy).is_some() {
        let h = Hedge {
            cluster,
            codec: &codec,
            parts: &parts,
            kept: &kept,
            policy,
            ctx: &ctx,
            previous_hosts,
            after,
        };
        return hedged(h, info, retries).await;
    }
    let cluster_label = || cluster.name.to_string();
    let mut priorities = policy
        .rules
        .as_ref()
        .and_then(|r| r.previous_priorities)
        .map(|f| (f, crate::retry::PreviousPriorities::default()));
    let mut last: Attempt = Attempt::Fail(LocalReason::NoHealthyUpstream);
    // The running retry's unit of the retry breaker, held until its
    // exchange settles.
    let mut _retry_slot = None;
    for n in 0..=retries {
        if n > 0 {
            // The breaker first: an open one answers the last try as is.
            let Some(slot) = cluster.breakers.retry(policy.priority) else {
                return last_try(info, last);
            };
            _retry_slot = Some(slot);
            metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_TOTAL, "cluster" => cluster_label()).increment(1);
            let limited = match &last {
                Attempt::Retry(_, Some(r)) => {
                    crate::retry::ratelimited_backoff(policy, r.headers())
                }
                _ => None,
            };
            let wait = match limited {
                Some(d) => {
                    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_RATELIMITED_TOTAL, "cluster" => cluster_label()).increment(1);
                    d
                }
                None => {
                    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_EXPONENTIAL_TOTAL, "cluster" => cluster_label()).increment(1);
                    backoff(policy, n)
                }
            };
            // The retried response is dropped (its exchange ends) before
            // the wait; the upstream log counts what its body had sent.
            if let Attempt::Retry(_, r) = &mut last
                && let Some(r) = r.take()
                && let Some(t) = info.upstream_tries.as_mut().and_then(|t| t.last_mut())
            {
                t.response_bytes = Some(arrived_bytes(r));
            }
            tokio::time::sleep(wait).await;
        }
        let req = rebuild(&parts, &kept);
        // `previous_priorities`: the endpoints of the priorities to avoid
        // join those excluded.
        let avoid = match &mut priorities {
            Some((f, pp)) if n > 0 => avoid_priorities(cluster, pp, *f, &tried),
            _ => None,
        };
        let attempt = match start(
            cluster,
            &codec,
            req,
            info,
            &ctx,
            avoid.as_deref().unwrap_or(&tried),
            None,
            policy.priority,
            policy.request_attempt_count,
        ) {
            Ok(s) => {
                if let Some((_, pp)) = &mut priorities {
                    pp.attempted(s.guard.endpoint().priority);
                }
                let a = try_once(cluster, s, policy, &mut tried, true, after).await;
                if previous_hosts
                    && let Some(h) = info.upstream_host
                    && !tried.contains(&h)
                {
                    tried.push(h);
                }
                a
            }
            Err(reason) => Attempt::Fail(reason),
        };
        crate::trace::attempt_end(info, attempt_status(&attempt));
        if let Some(tries) = &mut info.upstream_tries {
            try_end(tries, &attempt);
        }
        _retry_slot = None;
        match attempt {
            Attempt::Done(r) => {
                if n > 0 {
                    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_SUCCESS_TOTAL, "cluster" => cluster_label()).increment(1);
                }
                return r;
            }
            a @ Attempt::Retry(..) => last = a,
            Attempt::Fail(reason) => return local_reply(info, reason),
        }
    }
    if retries > 0 {
        metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED_TOTAL, "cluster" => cluster_label()).increment(1);
        if let Some(t) = info.upstream_tries.as_mut().and_then(|t| t.last_mut()) {
            t.retry_limit_exceeded = true;
        }
    }
    last_try(info, last)
}

/// The endpoints a retry avoids under `previous_priorities`: those tried
/// and those of the excluded priorities; `None` when no priority is
/// excluded.
fn avoid_priorities(
    cluster: &Cluster,
    pp: &mut crate::retry::PreviousPriorities,
    update_frequency: u32,
    tried: &[SocketAddr],
) -> Option<Vec<SocketAddr>> {
    let hosts = cluster.hosts();
    let mut all: Vec<u32> = hosts.endpoints.iter().map(|e| e.priority).collect();
    all.sort_unstable();
    all.dedup();
    let ex = pp.excluded(update_frequency, &all);
    if ex.is_empty() {
        return None;
    }
    let mut v = tried.to_vec();
    v.extend(
        hosts
            .endpoints
            .iter()
            .filter(|e| ex.contains(&e.priority))
            .map(|e| e.address),
    );
    Some(v)
}

/// What every try of a hedged request shares.
struct Hedge<'h> {
    cluster: &'h Arc<Cluster>,
    codec: &'h Arc<dyn ClientCodec>,
    parts: &'h http::request::Parts,
    kept: &'h Bytes,
    policy: &'h ForwardPolicy,
    ctx: &'h LbContext,
    previous_hosts: bool,
    after: &'h After,
}

type Boxed<'h, T> = Pin<Box<dyn Future<Output = T> + Send + 'h>>;

/// What happened to one of a hedged request's tries (or its timers).
enum Event<'h> {
    /// A try's exchange settled: its endpoint, what it means, the
    /// endpoints that failed to connect, its `upstream_log` entry.
    Settled(SocketAddr, Attempt, Vec<SocketAddr>, Option<usize>),
    /// A try's per-try timeout fired: the try keeps running.
    PerTry(
        Arc<crate::cluster::Endpoint>,
        Boxed<'h, Event<'h>>,
        Option<usize>,
    ),
    /// The back-off before the next try ended; it holds the retry's
    /// unit of the retry breaker.
    Start(crate::cluster::breaker::Slot),
}

/// Hedging on per-try timeouts (Envoy's `hedge_on_per_try_timeout`): a try
/// whose per-try timeout fires is not cancelled; the next try starts (after
/// the back-off, within the retries and the retry breaker) and the first
/// response that is not retried wins. The other tries are dropped, which
/// cancels their exchanges.
async fn hedged(h: Hedge<'_>, info: &mut StreamInfo, retries: u32) -> Response {
    let cluster = h.cluster;
    let cluster_label = || cluster.name.to_string();
    let mut pending: Vec<Boxed<'_, Event<'_>>> = Vec::with_capacity(2);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Attempt = Attempt::Fail(LocalReason::NoHealthyUpstream);
    // The `upstream_log` entry of the try `last` came from.
    let mut last_at: Option<usize> = None;
    match start_hedged(&h, info, &tried, None) {
        Ok(f) => pending.push(f),
        Err(reason) => return local_reply(info, reason),
    }
    // Tries started, and whether a retry is waiting for its back-off.
    let mut sent = 1u32;
    let mut scheduled = false;
    loop {
        if pending.is_empty() {
            if sent > retries {
                metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_LIMIT_EXCEEDED_TOTAL, "cluster" => cluster_label()).increment(1);
                // The try whose result answers is the one the retries
                // ran out on (`URX` in its `upstream_log` entry).
                if let Some(t) = last_at.and_then(|i| info.upstream_tries.as_mut()?.get_mut(i)) {
                    t.retry_limit_exceeded = true;
                }
            }
            if let Attempt::Retry(_, Some(_)) = last {
                hedge_done(info.upstream_tries.as_deref_mut(), last_at);
            }
            return last_try(info, last);
        }
        let ev = std::future::poll_fn(|cx| {
            for i in 0..pending.len() {
                if let Poll::Ready(ev) = pending[i].as_mut().poll(cx) {
                    drop(pending.swap_remove(i));
                    return Poll::Ready(ev);
                }
            }
            Poll::Pending
        })
        .await;
        // Whether a retry is to be scheduled now.
        let mut retry_now = false;
        match ev {
            Event::Start(slot) => {
                scheduled = false;
                match start_hedged(&h, info, &tried, Some(slot)) {
                    Ok(f) => pending.push(f),
                    Err(reason) => {
                        if pending.is_empty() {
                            drop_retried(info, &mut last, last_at);
                            return local_reply(info, reason);
                        }
                    }
                }
            }
            Event::PerTry(endpoint, rest, at) => {
                endpoint.report(crate::pool::Outcome::Timeout);
                // The try keeps running, without a timer of its own; its
                // entry says it timed out (as a plain retry's would) unless
                // it still settles.
                if let Some(t) = at.and_then(|i| info.upstream_tries.as_mut()?.get_mut(i)) {
                    t.status = Some(LocalReason::UpstreamTimeout.status().as_u16());
                    t.failure = Some(LocalReason::UpstreamTimeout.label());
                }
                pending.push(rest);
                drop_retried(info, &mut last, last_at);
                last = Attempt::Retry(LocalReason::UpstreamTimeout, None);
                last_at = at;
                retry_now = true;
                if h.previous_hosts && !tried.contains(&endpoint.address) {
                    tried.push(endpoint.address);
                }
            }
            Event::Settled(addr, attempt, failed, at) => {
                try_end_at(info, at, &attempt);
                for a in failed {
                    if !tried.contains(&a) {
                        tried.push(a);
                    }
                }
                if h.previous_hosts && !tried.contains(&addr) {
                    tried.push(addr);
                }
                match attempt {
                    Attempt::Done(r) => {
                        info.upstream_host = Some(addr);
                        if sent > 1 {
                            metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_SUCCESS_TOTAL, "cluster" => cluster_label()).increment(1);
                        }
                        drop_retried(info, &mut last, last_at);
                        hedge_done(info.upstream_tries.as_deref_mut(), at);
                        return r;
                    }
                    a @ Attempt::Retry(..) => {
                        drop_retried(info, &mut last, last_at);
                        last = a;
                        last_at = at;
                        retry_now = true;
                    }
                    Attempt::Fail(reason) => {
                        drop_retried(info, &mut last, last_at);
                        if pending.is_empty() {
                            return local_reply(info, reason);
                        }
                        last = Attempt::Fail(reason);
                        last_at = at;
                    }
                }
            }
        }
        if retry_now && !scheduled && sent <= retries {
            // The breaker first: an open one lets the tries in flight
            // finish (or answers the last try as is).
            if let Some(slot) = cluster.breakers.retry(h.policy.priority) {
                metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_TOTAL, "cluster" => cluster_label()).increment(1);
                metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_RETRY_BACKOFF_EXPONENTIAL_TOTAL, "cluster" => cluster_label()).increment(1);
                if !pending.is_empty() {
                    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_HEDGED_TOTAL, "cluster" => cluster_label()).increment(1);
                }
                let wait = backoff(h.policy, sent);
                // A retried response is dropped (its exchange ends)
                // before the wait; its entry counts what had arrived.
                drop_retried(info, &mut last, last_at);
                sent += 1;
                scheduled = true;
                pending.push(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    Event::Start(slot)
                }));
            }
        }
    }
}

/// Starts one try of a hedged request: the exchange, raced against the
/// per-try limit (which hands the running try back instead of ending it).
fn start_hedged<'h>(
    h: &Hedge<'h>,
    info: &mut StreamInfo,
    tried: &[SocketAddr],
    retry_slot: Option<crate::cluster::breaker::Slot>,
) -> Result<Boxed<'h, Event<'h>>, LocalReason> {
    let req = rebuild(h.parts, h.kept);
    // The try's `upstream_log` entry, if `start` records one.
    let at = info.upstream_tries.as_ref().map(|t| t.len());
    let s = start(
        h.cluster,
        h.codec,
        req,
        info,
        h.ctx,
        tried,
        None,
        h.policy.priority,
        h.policy.request_attempt_count,
    )?;
    let at = at.filter(|&i| info.upstream_tries.as_ref().is_some_and(|t| t.len() > i));
    let endpoint = s.guard.endpoint().clone();
    let addr = endpoint.address;
    let (cluster, policy, after) = (h.cluster, h.policy, h.after);
    let exchange: Boxed<'h, Event<'h>> = Box::pin(async move {
        let _retry_slot = retry_slot;
        let Sending {
            send, guard, slot, ..
        } = s;
        let r = send.await;
        let mut failed = Vec::new();
        let a = settle(cluster, (guard, slot), r, policy, &mut failed, true, after);
        Event::Settled(addr, a, failed, at)
    });
    let limit = per_try_limit(policy);
    Ok(Box::pin(async move {
        let mut exchange = exchange;
        match limit {
            Some((t, idle)) => match tokio::time::timeout(t, &mut exchange).await {
                Ok(ev) => ev,
                Err(_) => {
                    if idle {
                        count_per_try_idle(cluster);
                    }
                    Event::PerTry(endpoint, exchange, at)
                }
            },
            None => exchange.await,
        }
    }))
}

/// A try's copy of a request whose body was kept.
fn rebuild(parts: &http::request::Parts, kept: &Bytes) -> Request {
    let mut req = http::Request::new(full_body(kept.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // Codec state (e.g. an RPC frame head) travels with every try.
    *req.extensions_mut() = parts.extensions.clone();
    req
}

/// Reads a body of unknown length: `Ok(Ok(bytes))` when it ended within
/// `max` bytes (and without trailers), `Ok(Err(body))` otherwise, the
/// body then replaying what was read before the rest; `Err` when it
/// failed.
async fn buffer_up_to(mut body: Body, max: usize) -> Result<Result<Bytes, Body>, ()> {
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(()),
            Some(Ok(f)) => {
                let trailers = f.is_trailers();
                len += f.data_ref().map_or(0, |d| d.len());
                frames.push(f);
                if trailers || len > max {
                    return Ok(Err(box_body(Replay {
                        read: frames.into(),
                        rest: body,
                    })));
                }
            }
        }
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    for f in frames {
        if let Ok(d) = f.into_data() {
            out.extend_from_slice(&d);
        }
    }
    Ok(Ok(out.freeze()))
}

/// A request body whose first frames were read already (`buffer_up_to`).
struct Replay {
    read: std::collections::VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = crate::stream::BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        match me.read.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None => Pin::new(&mut me.rest).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

/// Chooses an endpoint (not one of `tried`) and starts the exchange, with
/// the codec watching `deadline` if it can, under the request breaker of
/// `priority`; counts the try, and tells the upstream its number when
/// `attempt_count` is on. (Plain arguments, not a struct: the common path
/// builds none.)
#[allow(clippy::too_many_arguments)]
fn start(
    cluster: &Arc<Cluster>,
    codec: &Arc<dyn ClientCodec>,
    req: Request,
    info: &mut StreamInfo,
    ctx: &LbContext,
    tried: &[SocketAddr],
    deadline: Option<tokio::time::Instant>,
    priority: RoutingPriority,
    attempt_count: bool,
) -> Result<Sending, LocalReason> {
    // `drop_overloads`: decided once per request, at its first try.
    if tried.is_empty() && cluster.drop_overload() {
        return Err(LocalReason::DropOverload);
    }
    let endpoint = match &cluster.original_dst {
        None => cluster.choose(ctx, tried),
        Some(od) => od.for_request(req.headers(), &info.connection),
    }
    .ok_or(LocalReason::NoHealthyUpstream)?;
    let slot = cluster
        .breakers
        .request(priority)
        .ok_or(LocalReason::Overflow)?;
    info.upstream_host = Some(endpoint.address);
    info.upstream_attempts = info.upstream_attempts.saturating_add(1);
    let mut req = req;
    // The codec takes the priority's pool (`cluster::request_priority`);
    // DEFAULT is the absence, so the common path inserts nothing.
    if priority == RoutingPriority::High {
        req.extensions_mut().insert(priority);
    }
    crate::proxy_protocol_http::tag(cluster, &mut req, info);
    if attempt_count && !info.suppress_envoy_headers {
        req.headers_mut().insert(
            crate::router::envoy_headers::X_ENVOY_ATTEMPT_COUNT,
            crate::router::envoy_headers::int_value(u64::from(info.upstream_attempts)),
        );
    }
    crate::trace::attempt_begin(info, &mut req, &endpoint);
    if let Some(tries) = &mut info.upstream_tries {
        try_begin(
            tries,
            info.upstream_cluster,
            endpoint.address,
            info.upstream_attempts,
            http_body::Body::size_hint(req.body()).exact(),
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
        slot,
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
    let Sending {
        send, guard, slot, ..
    } = s;
    let result = match per_try_limit(policy) {
        Some((t, idle)) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
                guard.endpoint().report(crate::pool::Outcome::Timeout);
                if idle {
                    count_per_try_idle(cluster);
                }
                let reason = LocalReason::UpstreamTimeout;
                return if retriable(policy, reason, false) {
                    Attempt::Retry(reason, None)
                } else {
                    Attempt::Fail(reason)
                };
            }
        },
        _ => send.await,
    };
    settle(
        cluster,
        (guard, slot),
        result,
        policy,
        tried,
        may_retry_status,
        after,
    )
}

/// How long a try may wait for its response head: the per-try timeout
/// or the per-try idle timeout (no response byte yet), whichever is
/// shorter; `true` when it is the idle one.
fn per_try_limit(policy: &ForwardPolicy) -> Option<(Duration, bool)> {
    match (
        policy.per_try_timeout.filter(|t| !t.is_zero()),
        policy.per_try_idle_timeout,
    ) {
        (Some(t), Some(i)) => Some((t.min(i), i < t)),
        (Some(t), None) => Some((t, false)),
        (None, Some(i)) => Some((i, true)),
        (None, None) => None,
    }
}

fn count_per_try_idle(cluster: &Cluster) {
    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_PER_TRY_IDLE_TIMEOUT_TOTAL, "cluster" => cluster.name).increment(1);
}

/// What an exchange's outcome means for the stream.
fn settle(
    cluster: &Cluster,
    (guard, slot): (RequestGuard, Slot),
    result: Result<Response, UpstreamError>,
    policy: &ForwardPolicy,
    tried: &mut Vec<SocketAddr>,
    may_retry_status: bool,
    after: &After,
) -> Attempt {
    cluster
        .stats
        .rq_time
        .record(guard.started().elapsed().as_secs_f64());
    let endpoint = &**guard.endpoint();
    let e = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let grpc_trailers = endpoint.report_response(status, resp.headers());
            let retry = may_retry_status
                && crate::retry::response_retriable(policy, status, resp.headers());
            if retry {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, status, "retriable status");
            }
            let (parts, body) = resp.into_parts();
            let resp = Response::from_parts(
                parts,
                box_body(Guarded {
                    body,
                    _guard: guard,
                    _slot: slot,
                    idle: after
                        .idle
                        .as_ref()
                        .map(|(t, w)| body::IdleTimer::stream(*t, w.clone())),
                    protocol: after.protocol,
                    grpc_trailers,
                    try_idle: policy
                        .per_try_idle_timeout
                        .map(|t| (body::IdleTimer::new(t, None), cluster.name)),
                }),
            );
            return if retry {
                Attempt::Retry(LocalReason::UpstreamProtocolError, Some(resp))
            } else {
                Attempt::Done(resp)
            };
        }
        Err(e) => e,
    };
    if let Some(o) = e.outcome() {
        endpoint.report(o);
    }
    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream exchange failed");
    // The cluster's max_stream_duration: answered, not retried.
    if let UpstreamError::Reset(cause) = &e
        && let Some(m) = cause.downcast_ref::<crate::codec::MaxStreamDurationReached>()
    {
        return Attempt::Fail(LocalReason::UpstreamMaxStreamDuration(m.request_whole));
    }
    let reason = match e.kind() {
        UpstreamErrorKind::Overflow => LocalReason::Overflow,
        UpstreamErrorKind::MalformedRequestBody => LocalReason::BadRequest,
        UpstreamErrorKind::Timeout => LocalReason::UpstreamTimeout,
        UpstreamErrorKind::Connect => {
            tried.push(endpoint.address);
            LocalReason::UpstreamConnectFailure
        }
        UpstreamErrorKind::Reset if e.is_remote_stream_reset() => LocalReason::UpstreamRemoteReset,
        UpstreamErrorKind::Reset => LocalReason::UpstreamReset,
        UpstreamErrorKind::Protocol => LocalReason::UpstreamProtocolError,
    };
    if e.is_retryable() && retriable(policy, reason, e.is_refused_stream()) {
        Attempt::Retry(reason, None)
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
    _slot: Slot,
    idle: Option<body::IdleTimer>,
    protocol: &'static str,
    /// The outlier detector waits for this gRPC response's trailers.
    grpc_trailers: bool,
    /// The retry policy's `per_try_idle_timeout` (with the cluster's
    /// name for its counter): the response body stalled that long resets
    /// the stream.
    try_idle: Option<(body::IdleTimer, &'static str)>,
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
                if let Some((t, _)) = &mut me.try_idle {
                    t.touch();
                }
                if let Some(t) = f.trailers_mut() {
                    body::strip_forbidden_trailers(t, "response");
                    if me.grpc_trailers {
                        me.grpc_trailers = false;
                        me._guard.endpoint().report_grpc_trailers(t);
                    }
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
                if let Some((t, cluster)) = &mut me.try_idle
                    && t.poll_idle(cx).is_ready()
                {
                    metrics::counter!(crate::metrics::names::CLUSTER_UPSTREAM_RQ_PER_TRY_IDLE_TIMEOUT_TOTAL, "cluster" => *cluster).increment(1);
                    me.try_idle = None;
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

    /// A hedge answered by its first try: the tries still running end
    /// (no status: cancelled), the winner's entry moves last (where the
    /// access log counts its streamed body), the others keep their order.
    #[test]
    fn hedge_done_ends_the_cancelled_tries_and_logs_the_winner_last() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut tries = Vec::new();
        for n in 1..=3 {
            try_begin(&mut tries, Some("c"), addr, n, None);
        }
        end_with(
            &mut tries[1],
            &Attempt::Retry(LocalReason::UpstreamReset, None),
        );
        end_with(
            &mut tries[0],
            &Attempt::Done(http::Response::new(full_body(Bytes::new()))),
        );
        hedge_done(Some(&mut tries), Some(0));
        let order: Vec<u32> = tries.iter().map(|t| t.number).collect();
        assert_eq!(order, [2, 3, 1]);
        assert!(tries.iter().all(|t| t.end.is_some()));
        assert_eq!(tries[0].failure, Some("upstream_reset"));
        assert_eq!((tries[1].status, tries[1].failure), (None, None));
        assert_eq!(tries[2].status, Some(200));
        // Past the end (the winner was not recorded): nothing moves.
        hedge_done(Some(&mut tries), Some(7));
        assert_eq!(
            tries.iter().map(|t| t.number).collect::<Vec<_>>(),
            [2, 3, 1]
        );
    }

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
        let h = http::HeaderMap::new();
        assert!(crate::retry::response_retriable(&p, 503, &h));
        assert!(!crate::retry::response_retriable(&p, 500, &h));
        assert!(retriable(&p, LocalReason::UpstreamReset, false));
        p.retry_on = RetryOn {
            retriable_status_codes: true,
            ..Default::default()
        };
        p.retriable_status_codes = vec![409];
        assert!(crate::retry::response_retriable(&p, 409, &h));
        assert!(!retriable(&p, LocalReason::UpstreamConnectFailure, false));
        p.retry_on = RetryOn {
            refused_stream: true,
            ..Default::default()
        };
        assert!(retriable(&p, LocalReason::UpstreamReset, true));
        assert!(retriable(&p, LocalReason::UpstreamRemoteReset, true));
        assert!(!retriable(&p, LocalReason::UpstreamReset, false));
        assert!(!retriable(&p, LocalReason::UpstreamRemoteReset, false));
        // A reset, answered 503, is retried by `reset`, `gateway-error`
        // and `5xx`; a protocol error (502) not by `reset`.
        for on in [
            RetryOn {
                reset: true,
                ..Default::default()
            },
            RetryOn {
                gateway_error: true,
                ..Default::default()
            },
            RetryOn {
                five_xx: true,
                ..Default::default()
            },
        ] {
            let reset_only = on.reset;
            p.retry_on = on;
            for r in [LocalReason::UpstreamReset, LocalReason::UpstreamRemoteReset] {
                assert!(retriable(&p, r, false), "{r:?}");
                assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            }
            assert_eq!(
                retriable(&p, LocalReason::UpstreamProtocolError, false),
                !reset_only
            );
        }
        assert_eq!(
            LocalReason::UpstreamProtocolError.status(),
            http::StatusCode::BAD_GATEWAY
        );
        p.retry_on = RetryOn {
            reset_before_request: true,
            ..Default::default()
        };
        assert!(retriable(&p, LocalReason::UpstreamConnectFailure, false));
        assert!(!retriable(&p, LocalReason::UpstreamTimeout, false));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = ForwardPolicy::default();
        for n in 1..20 {
            assert!(backoff(&p, n) <= p.backoff_max);
        }
    }
}
