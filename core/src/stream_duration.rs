//! Envoy's stream duration limit: the HCM's
//! `common_http_protocol_options.max_stream_duration` and the route's
//! `max_stream_duration` (with `grpc_timeout_header_max` and
//! `grpc_timeout_header_offset`). A downstream stream older than its limit
//! (counted from its request head) is ended whatever else it waits for:
//! answered 408, or 504 once the request arrived whole (gRPC:
//! `DEADLINE_EXCEEDED`), or reset once the response started. The `proxy`
//! filter computes the limit when the route is known and races the rest of
//! the stream against it; `Deadline` wraps the response body, and an
//! upgraded tunnel (WebSocket) is closed at the limit.
//!
//! Counted in `meshgate_downstream_rq_max_duration_reached_total{protocol,phase}`
//! (Envoy's `downstream_rq_max_duration_reached`).

use crate::router::MaxStreamDurationConfig;
use crate::stream::{Body, BodyError, LocalReason, Response, StreamInfo, local_reply};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A stream's limit: how long from its start, and the `grpc-timeout` the
/// request goes upstream with (set when the route's `max_stream_duration`
/// decided it, as Envoy rewrites it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub duration: Duration,
    pub grpc_timeout: Option<HeaderValue>,
}

/// Envoy's `refreshDurationTimeout`: with a request `grpc-timeout` and the
/// route's `grpc_timeout_header_max` set, the header's value capped by the
/// max (`0`: no cap) minus the offset (floored at 0); otherwise the
/// route's `max_stream_duration` (`0`: none), else the listener's.
pub fn limit(
    route: Option<&MaxStreamDurationConfig>,
    listener: Option<Duration>,
    headers: &HeaderMap,
    grpc: bool,
) -> Option<Limit> {
    let header = route
        .and_then(|r| r.grpc_timeout_header_max)
        .and_then(|max| {
            let t = headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| crate::forward::parse_grpc_timeout(v.as_bytes()))?;
            Some((t, max))
        });
    let duration = match header {
        Some((mut t, max)) => {
            if !max.is_zero() && t > max {
                t = max;
            }
            if let Some(off) = route.and_then(|r| r.grpc_timeout_header_offset)
                && !t.is_zero()
            {
                t = t.saturating_sub(off);
            }
            t
        }
        None => match route.and_then(|r| r.max_stream_duration) {
            Some(d) if d.is_zero() => return None,
            Some(d) => d,
            None => listener.filter(|d| !d.is_zero())?,
        },
    };
    // Envoy rewrites the header when the route has max_stream_duration
    // (its "new timeouts"), for gRPC requests only.
    let grpc_timeout = (route.is_some() && grpc).then(|| grpc_timeout_value(duration));
    Some(Limit {
        duration,
        grpc_timeout,
    })
}

/// A `grpc-timeout` value in milliseconds, or a coarser unit when the
/// number would exceed the 8 digits gRPC allows (Envoy's
/// `toGrpcTimeout`).
pub fn grpc_timeout_value(d: Duration) -> HeaderValue {
    let mut n = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut unit = 'm';
    for (next, div) in [('S', 1000), ('M', 60), ('H', 60)] {
        if n <= 99_999_999 {
            break;
        }
        n /= div;
        unit = next;
    }
    let n = n.min(99_999_999);
    // Digits and a letter: always a valid header value.
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0m"))
}

/// Whether the request body has arrived whole, as the timer needs to know
/// (408 before, 504 after).
#[derive(Debug, Clone)]
pub struct RequestEnd(Arc<AtomicBool>);

impl RequestEnd {
    pub fn complete(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Watches the request body's end: a bodiless request is whole already;
/// else its body is wrapped (only streams with a limit pay for it).
pub fn track_request(req: &mut crate::stream::Request) -> RequestEnd {
    use http_body::Body as _;
    let done = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    if !done.load(Ordering::Relaxed) {
        let inner = std::mem::replace(req.body_mut(), crate::stream::empty_body());
        *req.body_mut() = crate::stream::box_body(Tracked {
            inner,
            done: done.clone(),
        });
    }
    RequestEnd(done)
}

struct Tracked {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done.store(true, Ordering::Relaxed);
        } else if matches!(r, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `fut` until `deadline`; `None` when the deadline came first (the
/// deadline is polled first, so a timer of the stream's own that fires at
/// the same instant does not win).
pub async fn race<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Envoy HCM's `request_timeout`: runs `fut` (the stream up to its
/// response head) until `deadline`, by which the request must have
/// arrived whole; `None` when it had not. A request whole in time, or a
/// response ready first, disarms the timer.
pub async fn until_request_timeout<F: Future>(
    fut: F,
    end: &RequestEnd,
    deadline: Instant,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
    let mut armed = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if armed && sleep.as_mut().poll(cx).is_ready() {
            if !end.complete() {
                return Poll::Ready(None);
            }
            armed = false;
        }
        Poll::Pending
    })
    .await
}

/// The answer when the limit passed before the response: 408, or 504 when
/// the request had arrived whole (Envoy's `maybeRequestTimeoutCode`).
pub fn reached(info: &mut StreamInfo, request_complete: bool) -> Response {
    count(info.protocol, "before_response");
    let mut resp = local_reply(info, LocalReason::MaxStreamDuration);
    if request_complete {
        *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    }
    resp
}

/// Counts a stream ended by its limit; `phase` is `before_response` or
/// `after_response` (a reset, or an upgraded tunnel closed).
pub fn count(protocol: &'static str, phase: &'static str) {
    metrics::counter!(crate::metrics::names::DOWNSTREAM_RQ_MAX_DURATION_REACHED_TOTAL, "protocol" => protocol, "phase" => phase).increment(1);
}

/// The limit passed while the response streamed: the body ends in an
/// error, which every codec turns into a reset (HTTP/2 and HTTP/3
/// `RST_STREAM`, HTTP/1.1 a closed connection).
#[derive(Debug, thiserror::Error)]
#[error("max stream duration reached")]
pub struct DurationReached;

/// Bounds the response body to the stream's deadline.
pub fn bound_response(resp: &mut Response, deadline: Instant, protocol: &'static str) {
    use http_body::Body as _;
    if resp.body().is_end_stream() {
        return;
    }
    let inner = std::mem::replace(resp.body_mut(), crate::stream::empty_body());
    *resp.body_mut() = crate::stream::box_body(Deadline {
        inner,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        protocol,
        fired: false,
    });
}

struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    protocol: &'static str,
    fired: bool,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.fired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.fired = true;
            count(self.protocol, "after_response");
            return Poll::Ready(Some(Err(DurationReached.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        !self.fired && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        max: Option<u64>,
        header_max: Option<u64>,
        offset: Option<u64>,
    ) -> MaxStreamDurationConfig {
        MaxStreamDurationConfig {
            max_stream_duration: max.map(Duration::from_millis),
            grpc_timeout_header_max: header_max.map(Duration::from_millis),
            grpc_timeout_header_offset: offset.map(Duration::from_millis),
        }
    }

    fn with_timeout(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
        h
    }

    fn ms(l: Option<Limit>) -> Option<u128> {
        l.map(|l| l.duration.as_millis())
    }

    #[test]
    fn envoy_refresh_duration_timeout_rules() {
        let none = HeaderMap::new();
        let listener = Some(Duration::from_secs(9));
        // No route setting: the listener's; none at all: no limit.
        assert_eq!(ms(limit(None, listener, &none, false)), Some(9000));
        assert_eq!(ms(limit(None, None, &none, false)), None);
        // The route's wins; its 0 disables the listener's too.
        let r = cfg(Some(2000), None, None);
        assert_eq!(ms(limit(Some(&r), listener, &none, false)), Some(2000));
        let r = cfg(Some(0), None, None);
        assert_eq!(ms(limit(Some(&r), listener, &none, false)), None);
        // grpc-timeout is only used with grpc_timeout_header_max.
        let h = with_timeout("5S");
        let r = cfg(Some(2000), None, None);
        assert_eq!(ms(limit(Some(&r), None, &h, true)), Some(2000));
        // Capped by the max, minus the offset.
        let r = cfg(None, Some(1000), Some(100));
        assert_eq!(ms(limit(Some(&r), None, &h, true)), Some(900));
        // Max 0: the header as is (minus the offset).
        let r = cfg(None, Some(0), None);
        assert_eq!(ms(limit(Some(&r), None, &h, true)), Some(5000));
        // An offset beyond the header: ended at once.
        let r = cfg(None, Some(0), Some(6000));
        assert_eq!(ms(limit(Some(&r), None, &h, true)), Some(0));
        // No (or a bad) header: the route's max_stream_duration, else the
        // listener's.
        let r = cfg(None, Some(1000), None);
        assert_eq!(ms(limit(Some(&r), listener, &none, true)), Some(9000));
        let bad = with_timeout("soon");
        assert_eq!(ms(limit(Some(&r), None, &bad, true)), None);
    }

    #[test]
    fn grpc_timeout_is_rewritten_for_routes_with_the_setting() {
        let h = with_timeout("5S");
        let r = cfg(None, Some(1000), Some(100));
        let l = limit(Some(&r), None, &h, true).unwrap();
        assert_eq!(l.grpc_timeout, Some(HeaderValue::from_static("900m")));
        // Not for a listener-wide limit, nor a non-gRPC request.
        let l = limit(None, Some(Duration::from_secs(1)), &h, true).unwrap();
        assert_eq!(l.grpc_timeout, None);
        let l = limit(Some(&r), None, &h, false).unwrap();
        assert_eq!(l.grpc_timeout, None);
    }

    #[test]
    fn grpc_timeout_values_keep_to_eight_digits() {
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(100_000)), "100000S");
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(u64::MAX / 2)),
            "99999999H"
        );
    }
}

#[cfg(test)]
mod request_timeout_tests {
    use super::*;

    fn end(done: bool) -> RequestEnd {
        RequestEnd(Arc::new(AtomicBool::new(done)))
    }

    #[tokio::test]
    async fn fires_only_while_the_request_is_not_whole() {
        let deadline = Instant::now() + Duration::from_millis(50);
        // Not whole at the deadline: the stream is cut.
        let slow = tokio::time::sleep(Duration::from_millis(300));
        assert!(
            until_request_timeout(slow, &end(false), deadline)
                .await
                .is_none()
        );
        // Whole in time: the timer is disarmed, the response may take longer.
        let deadline = Instant::now() + Duration::from_millis(50);
        let slow = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            7
        };
        assert_eq!(
            until_request_timeout(slow, &end(true), deadline).await,
            Some(7)
        );
        // The response first: no timer at all.
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            until_request_timeout(async { 8 }, &end(false), deadline).await,
            Some(8)
        );
    }
}
