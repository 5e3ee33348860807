//! The connection idle timeout of multiplexed downstream HTTP (HTTP/2 and
//! HTTP/3):
//! Envoy's `common_http_protocol_options.idle_timeout`, "the time at which
//! a downstream connection is closed if there are no active streams". A
//! stream is active from its request until its response body is dropped
//! (sent or abandoned).

use meshgate_core::stream::{Body, BodyError, Response, box_body};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Active streams of one connection and since when it has had none.
pub(crate) struct Activity {
    active: AtomicU32,
    /// Coarse-clock milliseconds when the last active stream ended (or the
    /// connection began).
    idle_since: AtomicU64,
}

fn now_ms() -> u64 {
    meshgate_core::clock::coarse().as_millis() as u64
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
        }
    }

    /// A stream begins; it stays active while the guard lives.
    pub(crate) fn start(self: &Arc<Self>) -> ActiveStream {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveStream(self.clone())
    }

    /// How long the connection has had no active stream (`None`: it has
    /// one now).
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Acquire);
        Some(Duration::from_millis(now_ms().saturating_sub(since)))
    }
}

/// One active stream; dropping it ends it.
pub(crate) struct ActiveStream(Arc<Activity>);

impl ActiveStream {
    /// Keeps the stream active until `resp`'s body is dropped.
    pub(crate) fn track(self, resp: Response) -> Response {
        resp.map(|inner| {
            box_body(Tracked {
                inner,
                _active: self,
            })
        })
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        // The clock is read before the count drops, so a watcher that sees
        // zero never reads a stale start of the idle time.
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream active.
struct Tracked {
    inner: Body,
    _active: ActiveStream,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Completes once the connection has had no active stream for `timeout`
/// (shrunk under the overload manager's `reduce_timeouts`,
/// `HTTP_DOWNSTREAM_CONNECTION_IDLE`); never without one. Wakes at most
/// once per `timeout` while streams are active, and when the scale of
/// `reduce_timeouts` changes.
pub(crate) async fn watch(activity: Option<Arc<Activity>>, timeout: Option<Duration>) {
    use meshgate_core::overload::timers;
    let (Some(a), Some(configured)) = (activity, timeout) else {
        return std::future::pending().await;
    };
    loop {
        // Made before the scale is read: a change after it wakes us.
        let changed = timers::changed();
        let timeout = timers::scaled(timers::Timer::HttpDownstreamConnectionIdle, configured);
        let wait = match a.idle_for() {
            Some(d) if d >= timeout => return,
            Some(d) => timeout - d,
            None => timeout,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
        }
    }
}
