//! Per-stream body policing that holds whatever the codec and framing
//! (DESIGN.md layer 4): the request-body size limit counted as the bytes
//! stream (HTTP/1.1 chunked, HTTP/2 and HTTP/3 DATA without a
//! content-length), the stream idle timeout (Envoy's route `idle_timeout`
//! and HCM `stream_idle_timeout`: no body byte in either direction for that
//! long), and the trailer fields that are never forwarded (RFC 9110
//! section 6.5.1). `forward` applies the first two around the upstream
//! exchange; the codecs and `forward` strip trailers.
//!
//! Cheap by design: activity is a coarse-clock stamp stored per body frame
//! (no timer touched per frame), and a stream has at most one idle timer,
//! made only when the stream actually waits and re-armed only when it
//! fires.

use crate::stream::{Body, BodyError};
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

/// The body limits of one stream, set by the `proxy` filter (listener
/// options and the route) before the stream is forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// Request body bytes allowed, whatever the framing (`None`: no limit).
    pub max_request_body_bytes: Option<u64>,
    /// Stream idle timeout (`None`: disabled).
    pub idle_timeout: Option<Duration>,
}

/// A request body that went over `max_request_body_bytes` while it
/// streamed: the upstream request is aborted and the stream answered 413
/// (or reset, once the response started).
#[derive(Debug, thiserror::Error)]
#[error("request body over max_request_body_bytes")]
pub struct BodyTooLarge;

/// The stream idle timeout passed while the response streamed.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdle;

/// The transfer codings other than `chunked` an HTTP/1.1 upstream applied
/// to a response (`Transfer-Encoding: gzip, chunked` gives `gzip`), as a
/// response extension: an HTTP/1.1 downstream sends them on (with chunked
/// framing), a protocol that cannot carry them answers 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCodings(pub http::HeaderValue);

fn now_nanos() -> u64 {
    crate::clock::coarse().as_nanos() as u64
}

/// What a stream's request body and its forwarder share: when a body byte
/// last moved, and whether the body went over the limit (which wakes the
/// forwarder, so that an upstream codec that keeps waiting for a response
/// does not hold the 413 back).
#[derive(Debug)]
pub(crate) struct Watch {
    last: AtomicU64,
    too_large: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Watch {
    fn new() -> Self {
        Self {
            last: AtomicU64::new(now_nanos()),
            too_large: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Acquire)
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn register(&self, cx: &Context<'_>) {
        let mut w = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }

    fn set_too_large(&self) {
        self.too_large.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }
}

/// Wraps `req`'s body when the limits need to see it stream: a body whose
/// size is not known to be within `max_request_body_bytes`, or any body
/// while an idle timeout is on. `None` for a bodiless request or one the
/// limits need not watch (no allocation then).
pub(crate) fn watch_request(
    req: &mut crate::stream::Request,
    limits: &StreamLimits,
    protocol: &'static str,
) -> Option<Arc<Watch>> {
    use http_body::Body as _;
    let body = req.body();
    if body.is_end_stream() {
        return None;
    }
    let limit = limits
        .max_request_body_bytes
        .filter(|l| body.size_hint().upper().is_none_or(|n| n > *l));
    if limit.is_none() && limits.idle_timeout.is_none() {
        return None;
    }
    let watch = Arc::new(Watch::new());
    let inner = std::mem::replace(req.body_mut(), crate::stream::empty_body());
    *req.body_mut() = crate::stream::box_body(WatchedBody {
        inner,
        left: limit.unwrap_or(u64::MAX),
        watch: watch.clone(),
        protocol,
        failed: false,
    });
    Some(watch)
}

/// A request body counted as it streams.
struct WatchedBody {
    inner: Body,
    /// Bytes still allowed.
    left: u64,
    watch: Arc<Watch>,
    protocol: &'static str,
    failed: bool,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        if me.failed {
            return Poll::Ready(Some(Err(BodyTooLarge.into())));
        }
        let r = ready!(Pin::new(&mut me.inner).poll_frame(cx));
        if let Some(Ok(f)) = &r {
            if let Some(d) = f.data_ref() {
                let n = d.len() as u64;
                if n > me.left {
                    me.failed = true;
                    metrics::counter!(crate::metrics::names::DOWNSTREAM_RQ_BODY_TOO_LARGE_TOTAL, "protocol" => me.protocol).increment(1);
                    me.watch.set_too_large();
                    return Poll::Ready(Some(Err(BodyTooLarge.into())));
                }
                me.left -= n;
            }
            me.watch.last.store(now_nanos(), Ordering::Relaxed);
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a guarded upstream exchange ended.
pub(crate) enum Raced<T> {
    Done(T),
    /// The request body went over the limit.
    TooLarge,
    /// No body byte either way for the idle timeout.
    Idle,
}

/// One stream's idle timer: made when the stream first waits, re-armed
/// only when it fires early (activity moved the stamp meanwhile).
pub(crate) struct IdleTimer {
    timeout: Duration,
    /// The stream's own last activity (coarse-clock nanos).
    last: u64,
    /// The request body's activity, when it streams.
    watch: Option<Arc<Watch>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The downstream stream idle timer: shrunk by the overload manager's
    /// `reduce_timeouts` (`HTTP_DOWNSTREAM_STREAM_IDLE`).
    scaled: bool,
    /// Wakes the waiting timer when the action's scale changes (made only
    /// while that timer is configured to scale).
    changed: Option<Pin<Box<tokio::sync::futures::Notified<'static>>>>,
}

impl IdleTimer {
    /// A timer that is never scaled (the per-try idle timeout).
    pub(crate) fn new(timeout: Duration, watch: Option<Arc<Watch>>) -> Self {
        Self {
            timeout,
            last: now_nanos(),
            watch,
            sleep: None,
            scaled: false,
            changed: None,
        }
    }

    /// The downstream stream idle timer (HCM `stream_idle_timeout`, the
    /// route's `idle_timeout`), scaled under `reduce_timeouts`.
    pub(crate) fn stream(timeout: Duration, watch: Option<Arc<Watch>>) -> Self {
        Self {
            scaled: true,
            ..Self::new(timeout, watch)
        }
    }

    /// The timeout now (the configured one, or shrunk under pressure).
    fn timeout(&self) -> Duration {
        if self.scaled {
            crate::overload::timers::scaled(
                crate::overload::timers::Timer::HttpDownstreamStreamIdle,
                self.timeout,
            )
        } else {
            self.timeout
        }
    }

    /// Re-arms the waiting sleep when `reduce_timeouts`' scale changed.
    fn poll_rescale(&mut self, cx: &mut Context<'_>) {
        use crate::overload::timers;
        if !self.scaled || !timers::is_scaled(timers::Timer::HttpDownstreamStreamIdle) {
            return;
        }
        loop {
            let c = self
                .changed
                .get_or_insert_with(|| Box::pin(timers::changed()));
            if c.as_mut().poll(cx).is_pending() {
                return;
            }
            self.changed = None;
            self.sleep = None;
        }
    }

    /// Notes a body frame moving (the response's; the request's are
    /// stamped by its body).
    pub(crate) fn touch(&mut self) {
        self.last = now_nanos();
    }

    /// Ready once nothing moved for the timeout.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_rescale(cx);
        loop {
            let timeout = self.timeout();
            let last = self
                .watch
                .as_ref()
                .map_or(self.last, |w| w.last().max(self.last));
            let idle = Duration::from_nanos(now_nanos().saturating_sub(last));
            let sleep = match &mut self.sleep {
                Some(s) => s,
                None => {
                    let left = timeout.saturating_sub(idle);
                    self.sleep.insert(Box::pin(tokio::time::sleep(
                        left.max(Duration::from_millis(1)),
                    )))
                }
            };
            ready!(sleep.as_mut().poll(cx));
            // Fired: idle for the whole timeout, or activity since it was
            // armed moves it on. The coarse clock lags by up to a tick.
            let idle = Duration::from_nanos(now_nanos().saturating_sub(last));
            if idle + Duration::from_millis(5) >= timeout {
                return Poll::Ready(());
            }
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + (timeout - idle));
        }
    }
}

/// Runs an upstream exchange until it ends, the request body goes over
/// its limit, or the stream idles out.
pub(crate) fn race<'a, F: Future + Unpin + 'a>(
    mut fut: F,
    watch: Option<&'a Arc<Watch>>,
    mut idle: Option<IdleTimer>,
) -> impl Future<Output = Raced<F::Output>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(r) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Raced::Done(r));
        }
        if let Some(w) = watch {
            w.register(cx);
            if w.too_large() {
                return Poll::Ready(Raced::TooLarge);
            }
        }
        if let Some(t) = &mut idle
            && t.poll_idle(cx).is_ready()
        {
            return Poll::Ready(Raced::Idle);
        }
        Poll::Pending
    })
}

/// Counts a stream idle timeout; `phase` is `before_response` (answered
/// 408) or `after_response` (reset).
pub(crate) fn count_idle(protocol: &'static str, phase: &'static str) {
    metrics::counter!(crate::metrics::names::DOWNSTREAM_RQ_IDLE_TIMEOUT_TOTAL, "protocol" => protocol, "phase" => phase).increment(1);
}

/// Trailer fields never forwarded (RFC 9110 section 6.5.1): framing,
/// routing, request modifiers, authentication, response control and
/// content processing fields, and hop-by-hop ones.
fn forbidden_trailer(name: &HeaderName) -> bool {
    use http::header;
    matches!(
        *name,
        header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::HOST
            | header::TE
            | header::TRAILER
            | header::CONNECTION
            | header::UPGRADE
            | header::AUTHORIZATION
            | header::PROXY_AUTHORIZATION
            | header::PROXY_AUTHENTICATE
            | header::WWW_AUTHENTICATE
            | header::SET_COOKIE
            | header::COOKIE
            | header::CONTENT_TYPE
            | header::CONTENT_ENCODING
            | header::CONTENT_RANGE
            | header::CACHE_CONTROL
            | header::EXPIRES
            | header::AGE
            | header::EXPECT
            | header::MAX_FORWARDS
            | header::RANGE
            | header::IF_MATCH
            | header::IF_NONE_MATCH
            | header::IF_MODIFIED_SINCE
            | header::IF_UNMODIFIED_SINCE
            | header::IF_RANGE
            | header::PRAGMA
    ) || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
        || name.as_str().starts_with(':')
}

/// Removes the forbidden fields of a trailer section; counted in
/// `meshgate_http_forbidden_trailer_total{direction}` (`request`: sent
/// upstream, `response`: sent downstream).
pub fn strip_forbidden_trailers(trailers: &mut HeaderMap, direction: &'static str) {
    if !trailers.keys().any(forbidden_trailer) {
        return;
    }
    let names: Vec<HeaderName> = trailers
        .keys()
        .filter(|k| forbidden_trailer(k))
        .cloned()
        .collect();
    for n in names {
        let removed = trailers.get_all(&n).iter().count();
        trailers.remove(&n);
        metrics::counter!(crate::metrics::names::HTTP_FORBIDDEN_TRAILER_TOTAL, "direction" => direction)
            .increment(removed as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of `n` ready data frames of `size` bytes.
    struct Frames(usize, usize);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.1])))))
        }
    }

    #[tokio::test]
    async fn an_unsized_body_is_cut_at_the_limit() {
        let limits = StreamLimits {
            max_request_body_bytes: Some(25),
            idle_timeout: None,
        };
        let mut req = http::Request::new(crate::stream::box_body(Frames(3, 10)));
        let w = watch_request(&mut req, &limits, "http1").unwrap();
        let r = req.into_body().collect().await;
        assert!(r.unwrap_err().is::<BodyTooLarge>());
        assert!(w.too_large());
        // Within the limit: whole.
        let mut req = http::Request::new(crate::stream::box_body(Frames(2, 10)));
        let w = watch_request(&mut req, &limits, "http1").unwrap();
        let b = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(b.len(), 20);
        assert!(!w.too_large());
        // A declared size within the limit needs no watch.
        let mut req = http::Request::new(crate::stream::full_body("abc"));
        assert!(watch_request(&mut req, &limits, "http1").is_none());
    }

    #[test]
    fn forbidden_trailers_are_stripped() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t.insert("content-length", "5".parse().unwrap());
        t.insert("host", "evil".parse().unwrap());
        t.insert("proxy-x", "1".parse().unwrap());
        t.append("transfer-encoding", "chunked".parse().unwrap());
        strip_forbidden_trailers(&mut t, "response");
        assert_eq!(t.len(), 1);
        assert_eq!(t["grpc-status"], "0");
    }
}
