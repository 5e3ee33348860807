//! The global memory budget for request bodies
//! (`meshgate.resource_monitors.buffered_bytes`): what downstream streams
//! (HTTP/1.1, HTTP/2 and HTTP/3) have sent that meshgate holds and the
//! upstream has not taken yet.
//!
//! Without it a multiplexed downstream connection keeps up to its
//! flow-control window (4 MiB on HTTP/2) in proxy memory when the upstream
//! stalls, out of sight: the codec's receive buffer fills while nobody
//! reads it. With it, a codec hands each request body to [`track`]: a small
//! task reads the body as it arrives (so the bytes are here, counted, not
//! hidden in the codec), charges every data frame to the stream's
//! [`Holder`] and to the global total, and stops reading while the total is
//! over the budget (back-pressure: the client's window closes).
//! `reset_high_memory_streams` resets the largest holders first
//! ([`reset_largest`]); [`guard`] answers such a stream 503 with
//! `x-envoy-overloaded` at once, whatever the upstream is doing.
//!
//! Response bodies are held the same way ([`track_response`]): when the
//! downstream reads slowly (or never) and the upstream is fast, what the
//! upstream sent waits in meshgate. A task reads the response body ahead
//! into a queue it counts, up to [`RESPONSE_READ_AHEAD`] per stream (then
//! the upstream's flow control or socket holds the rest) and while the
//! total is under the budget; the codec takes frames from the queue. A
//! reset empties the queue at once (a stalled downstream never polls the
//! body, so its memory could not wait for that) and the downstream stream
//! ends with an error (HTTP/2 and HTTP/3 reset it, HTTP/1.1 closes).
//!
//! Bodies a stream filter holds whole (ext_authz's `with_request_body`,
//! a filter that reads the whole request body first: `callout::
//! buffer_request_body`) are charged to a [`FilterAccount`] while they are
//! held, until the upstream request has taken them. Such a filter cannot
//! be slowed down like a reader (waiting for room while it holds bytes
//! could wait forever on other buffering streams), so a chunk that would
//! take the total over the budget refuses the stream at once: 503 with
//! `x-envoy-overloaded`, counted in
//! `meshgate_overload_filter_buffer_refused_total`. Its account is listed
//! like the others, so `reset_high_memory_streams` (and the immediate shed
//! past its trigger line) pick it, largest first, with the same answer.
//!
//! Off (no task, no lock, one atomic load per stream) unless the monitor
//! is configured.

use crate::metrics::names;
use crate::stream::{Body, BodyError, LocalReason, Response, full_body};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

static ENABLED: AtomicBool = AtomicBool::new(false);
static MAX: AtomicU64 = AtomicU64::new(u64::MAX);
static TOTAL: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Woken when the total goes over the budget: the monitor task sheds.
static OVER: Notify = Notify::const_new();
/// Woken when the total falls back under the budget: readers go on.
static FREED: Notify = Notify::const_new();
static HOLDERS: Mutex<Option<HashMap<u64, std::sync::Weak<Holder>>>> = Mutex::new(None);

/// A stream holding less than this is never reset for memory (Envoy's
/// `minimum_account_to_track`, here 64 KiB).
const MIN_TRACKED: u64 = 64 * 1024;

/// Sets the budget (`None`: accounting off for new streams).
/// Sets the budget (`None`: accounting off for new streams) and the total
/// at which `reset_high_memory_streams` saturates through a
/// `buffered_bytes` trigger (`None`: no such trigger).
pub(super) fn configure(max: Option<u64>, reset_at: Option<u64>) {
    MAX.store(max.unwrap_or(u64::MAX), Ordering::Relaxed);
    RESET_AT.store(reset_at.unwrap_or(u64::MAX), Ordering::Relaxed);
    ENABLED.store(max.is_some(), Ordering::Relaxed);
}

/// Past this total the stream whose bytes crossed it sheds at once
/// ([`shed_to`]), not at the next monitor tick: meanwhile every stopped
/// reader's codec window would fill with bytes nobody counts.
static RESET_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Whether request bodies are accounted (the budget is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Body bytes held for streams now.
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

fn over_budget() -> bool {
    TOTAL.load(Ordering::Relaxed) > MAX.load(Ordering::Relaxed)
}

/// Resolves when the total went over the budget.
pub(super) async fn over_budget_signal() {
    OVER.notified().await
}

/// One stream's account: the bytes it holds, and its reset signal.
#[derive(Debug)]
pub struct Holder {
    id: u64,
    bytes: AtomicU64,
    reset: CancellationToken,
}

impl Holder {
    fn charge(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        let total = TOTAL.fetch_add(n, Ordering::Relaxed) + n;
        let reset_at = RESET_AT.load(Ordering::Relaxed);
        if total > reset_at {
            // Shed a quarter below the line: not again on the next frame.
            shed_to(reset_at - reset_at / 4);
        }
        if total > MAX.load(Ordering::Relaxed) {
            OVER.notify_one();
        }
    }

    /// Takes up to `n` bytes out of the account (fewer when a reset
    /// already took them out).
    fn release(&self, n: u64) -> u64 {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        let take = loop {
            let take = n.min(cur);
            match self.bytes.compare_exchange_weak(
                cur,
                cur - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break take,
                Err(now) => cur = now,
            }
        };
        if take > 0 {
            let before = TOTAL.fetch_sub(take, Ordering::Relaxed);
            let max = MAX.load(Ordering::Relaxed);
            if before > max && before - take <= max {
                FREED.notify_waiters();
            }
        }
        take
    }

    /// Resets the stream: its bytes leave the account at once (they are
    /// freed as soon as its tasks see the signal).
    fn reset(&self) {
        self.reset.cancel();
        self.release(u64::MAX);
    }

    /// Bytes this stream holds now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Holder {
    /// A new account, listed for [`reset_largest`].
    fn registered() -> Arc<Self> {
        let holder = Arc::new(Holder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            bytes: AtomicU64::new(0),
            reset: CancellationToken::new(),
        });
        if let Ok(mut g) = HOLDERS.lock() {
            g.get_or_insert_with(HashMap::new)
                .insert(holder.id, Arc::downgrade(&holder));
        }
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release(u64::MAX);
        if let Ok(mut g) = HOLDERS.lock()
            && let Some(m) = g.as_mut()
        {
            m.remove(&self.id);
        }
    }
}

type Item = Result<Frame<Bytes>, BodyError>;

/// Accounts `body` when the budget is configured: returns the body the
/// stream reads instead and its holder (for [`guard`]). A body already at
/// its end (a GET) is left alone.
pub fn track(body: Body) -> (Body, Option<Arc<Holder>>) {
    if !ENABLED.load(Ordering::Relaxed) || http_body::Body::is_end_stream(&body) {
        return (body, None);
    }
    let holder = Holder::registered();
    let hint = http_body::Body::size_hint(&body);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_ahead(body, tx, holder.clone()));
    let tracked = Tracked {
        rx,
        holder: holder.clone(),
        left: hint.exact(),
        done: false,
    };
    (tracked.boxed_unsync(), Some(holder))
}

/// Reads the downstream body as it arrives, charging each data frame,
/// while the budget has room.
async fn read_ahead(mut body: Body, tx: mpsc::UnboundedSender<Item>, h: Arc<Holder>) {
    loop {
        while over_budget() {
            let freed = FREED.notified();
            if !over_budget() {
                break;
            }
            tokio::select! {
                _ = freed => {}
                _ = h.reset.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = h.reset.cancelled() => return,
            _ = tx.closed() => return,
        };
        match frame {
            None => return,
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    h.charge(d.len() as u64);
                }
                if tx.send(Ok(f)).is_err() {
                    return;
                }
                // Done: the body is dropped now, not one poll later (an
                // HTTP/1.1 connection is reusable only once no reader holds
                // its request body).
                if http_body::Body::is_end_stream(&body) {
                    return;
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// The body a tracked stream reads: the frames read ahead, released from
/// the account as they are taken.
struct Tracked {
    rx: mpsc::UnboundedReceiver<Item>,
    holder: Arc<Holder>,
    /// The exact length still to come, if the request declared one.
    left: Option<u64>,
    done: bool,
}

/// The error a reset stream's body ends with (its upstream request is
/// abandoned).
#[derive(Debug, thiserror::Error)]
#[error("stream reset by the overload manager (buffered bytes over budget)")]
pub struct ResetForMemory;

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    self.holder.release(n);
                    if let Some(l) = self.left.as_mut() {
                        *l = l.saturating_sub(n);
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.holder.reset.is_cancelled() {
                    Poll::Ready(Some(Err(Box::new(ResetForMemory))))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Runs a tracked stream's exchange; if the overload manager resets the
/// stream first, it is answered 503 with `x-envoy-overloaded` at once.
pub async fn guard<F>(h: Arc<Holder>, exchange: F) -> Response
where
    F: Future<Output = Response>,
{
    tokio::select! {
        r = exchange => r,
        _ = h.reset.cancelled() => overloaded_reply(),
    }
}

/// The answer to a stream reset for memory.
fn overloaded_reply() -> Response {
    let reason = LocalReason::Overloaded;
    metrics::counter!(names::DOWNSTREAM_RQ_LOCAL_REPLY_TOTAL, "reason" => reason.label())
        .increment(1);
    let mut resp = http::Response::new(full_body(format!("meshgate: {}\n", reason.message())));
    *resp.status_mut() = reason.status();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp.headers_mut().insert(
        http::HeaderName::from_static("x-envoy-overloaded"),
        http::HeaderValue::from_static("true"),
    );
    resp.extensions_mut().insert(reason);
    resp
}

/// `reset_high_memory_streams` at `scale` (0..=1): resets the streams
/// holding at least `(1 - scale)` of the largest holder's bytes (and at
/// least 64 KiB), largest first; at saturation every stream holding
/// 64 KiB or more. Counted in `meshgate_overload_streams_reset_total`.
pub(super) fn reset_largest(scale: f64) {
    let holders = largest_first();
    let Some(largest) = holders.first().map(|(b, _)| *b) else {
        return;
    };
    let floor = ((1.0 - scale.clamp(0.0, 1.0)) * largest as f64) as u64;
    let mut n = 0u64;
    for (bytes, h) in holders.iter().take_while(|(b, _)| *b >= floor) {
        tracing::debug!(
            stream = h.id,
            bytes,
            "overload: resetting a stream holding buffered bytes"
        );
        h.reset();
        n += 1;
    }
    count_resets(n);
}

/// The streams holding at least 64 KiB and not reset yet, largest first,
/// with the bytes each held when looked at (the counts move while they
/// are sorted: sorting by a snapshot keeps the order total).
fn largest_first() -> Vec<(u64, Arc<Holder>)> {
    let holders: Vec<Arc<Holder>> = match HOLDERS.lock() {
        Ok(g) => g
            .as_ref()
            .map(|m| m.values().filter_map(|w| w.upgrade()).collect())
            .unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    // Dropped outside the lock: a holder's drop takes it.
    let mut sized: Vec<(u64, Arc<Holder>)> = holders
        .into_iter()
        .map(|h| (h.bytes(), h))
        .filter(|(b, h)| *b >= MIN_TRACKED && !h.reset.is_cancelled())
        .collect();
    sized.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
    sized
}

fn count_resets(n: u64) {
    if n > 0 {
        metrics::counter!(names::OVERLOAD_STREAMS_RESET_TOTAL).increment(n);
        tracing::warn!(
            streams = n,
            buffered = total(),
            "overload: reset the streams holding the most buffered bytes"
        );
    }
}

/// Resets the streams holding the most bytes, largest first, until the
/// total is at most `target` (streams under 64 KiB are left alone).
fn shed_to(target: u64) {
    let mut n = 0u64;
    for (_, h) in largest_first() {
        if total() <= target {
            break;
        }
        h.reset();
        n += 1;
    }
    count_resets(n);
}

// ------------------------------------------------------ response bodies

/// What one response stream reads ahead of its downstream at most (as
/// Envoy's default per-stream buffer, 1 MiB): past it the upstream's flow
/// control (HTTP/2, HTTP/3) or its socket (HTTP/1.1) holds the rest.
pub const RESPONSE_READ_AHEAD: u64 = 1 << 20;

/// Accounts a response's body when the budget is configured: the
/// response the downstream codec sends instead (its body read ahead into
/// counted memory, see the module's doc). A body already at its end is
/// left alone.
pub fn track_response(resp: Response) -> Response {
    if !ENABLED.load(Ordering::Relaxed) || http_body::Body::is_end_stream(resp.body()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let holder = Holder::registered();
    let hint = http_body::Body::size_hint(&body);
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        space: Notify::new(),
        gone: CancellationToken::new(),
    });
    tokio::spawn(read_ahead_response(body, queue.clone(), holder.clone()));
    let body = Queued {
        queue,
        holder,
        left: hint.exact(),
        reset_seen: false,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The frames a response read ahead, shared by its reader task and the
/// body the codec polls. A mutex rather than a channel: a reset must drop
/// the frames from the reader's side while the codec is not polling.
struct Queue {
    state: Mutex<QueueState>,
    /// The codec took a frame (room under `RESPONSE_READ_AHEAD`).
    space: Notify,
    /// The codec dropped the body: the reader stops.
    gone: CancellationToken,
}

#[derive(Default)]
struct QueueState {
    frames: std::collections::VecDeque<Item>,
    /// Nothing more comes (the end, an error, or a reset, queued).
    done: bool,
    waker: Option<std::task::Waker>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` (`last`: nothing follows) and wakes the codec.
    fn push(&self, item: Option<Item>, last: bool) {
        let waker = {
            let mut q = self.lock();
            if let Some(i) = item {
                q.frames.push_back(i);
            }
            q.done |= last;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Reads the upstream's response body ahead of the downstream, charging
/// each data frame, while the stream holds less than
/// `RESPONSE_READ_AHEAD` and the total is under the budget.
async fn read_ahead_response(mut body: Body, q: Arc<Queue>, h: Arc<Holder>) {
    loop {
        loop {
            let space = q.space.notified();
            let freed = FREED.notified();
            tokio::pin!(space, freed);
            space.as_mut().enable();
            freed.as_mut().enable();
            if !over_budget() && h.bytes() < RESPONSE_READ_AHEAD {
                break;
            }
            tokio::select! {
                _ = space => {}
                _ = freed => {}
                _ = h.reset.cancelled() => return reset_queue(&q),
                _ = q.gone.cancelled() => return,
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = h.reset.cancelled() => return reset_queue(&q),
            _ = q.gone.cancelled() => return,
        };
        match frame {
            None => return q.push(None, true),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    h.charge(d.len() as u64);
                }
                let end = http_body::Body::is_end_stream(&body);
                q.push(Some(Ok(f)), end);
                if end {
                    return;
                }
                // A reset while the frame was charged: it empties the queue.
                if h.reset.is_cancelled() {
                    return reset_queue(&q);
                }
            }
            Some(Err(e)) => return q.push(Some(Err(e)), true),
        }
    }
}

/// A reset response: its frames go now (the account let go of their
/// bytes already) and the body ends with `ResetForMemory`.
fn reset_queue(q: &Queue) {
    let (dropped, waker) = {
        let mut s = q.lock();
        s.done = true;
        let dropped = std::mem::take(&mut s.frames);
        s.frames.push_back(Err(Box::new(ResetForMemory)));
        (dropped, s.waker.take())
    };
    // Freed outside the lock.
    drop(dropped);
    if let Some(w) = waker {
        w.wake();
    }
}

/// The response body the downstream codec polls: the frames read ahead,
/// released from the account as they are taken.
struct Queued {
    queue: Arc<Queue>,
    holder: Arc<Holder>,
    /// The exact length still to come, if the response declared one.
    left: Option<u64>,
    /// The reset was reported (the body's last frame).
    reset_seen: bool,
}

impl http_body::Body for Queued {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // A reset ends the body at once, before the frames still queued.
        if self.holder.reset.is_cancelled() {
            if self.reset_seen {
                return Poll::Ready(None);
            }
            self.reset_seen = true;
            let dropped = {
                let mut s = self.queue.lock();
                s.done = true;
                std::mem::take(&mut s.frames)
            };
            drop(dropped);
            return Poll::Ready(Some(Err(Box::new(ResetForMemory))));
        }
        let item = {
            let mut s = self.queue.lock();
            match s.frames.pop_front() {
                Some(i) => i,
                None if s.done => return Poll::Ready(None),
                None => {
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        if let Ok(f) = &item
            && let Some(d) = f.data_ref()
        {
            let n = d.len() as u64;
            self.holder.release(n);
            if let Some(l) = self.left.as_mut() {
                *l = l.saturating_sub(n);
            }
            self.queue.space.notify_one();
        }
        Poll::Ready(Some(item))
    }

    fn is_end_stream(&self) -> bool {
        if self.reset_seen {
            return true;
        }
        let s = self.queue.lock();
        s.done && s.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.queue.gone.cancel();
    }
}

// ------------------------------------------------- filter-held bodies

/// The account of a body a stream filter buffers whole (see the module's
/// doc): `None` from [`FilterAccount::new`] while the budget is off.
pub struct FilterAccount(Arc<Holder>);

/// A filter's buffered body was refused for memory (over the budget, or
/// reset by `reset_high_memory_streams`): answer 503 with
/// `x-envoy-overloaded` (`LocalReason::Overloaded`).
#[derive(Debug, thiserror::Error)]
#[error("request body buffered by a filter refused: buffered bytes over budget")]
pub struct FilterOverBudget;

impl FilterAccount {
    /// A new account, when the budget is configured.
    pub fn new() -> Option<Self> {
        enabled().then(|| Self(Holder::registered()))
    }

    /// Charges `n` more bytes the filter holds. `Err` (counted) when they
    /// would take the total over the budget or the account was reset;
    /// the caller drops what it holds and refuses the stream.
    pub fn charge(&self, n: u64) -> Result<(), FilterOverBudget> {
        let h = &self.0;
        if !h.reset.is_cancelled()
            && TOTAL.load(Ordering::Relaxed).saturating_add(n) <= MAX.load(Ordering::Relaxed)
        {
            h.charge(n);
            // Charging may have shed this very account (past the trigger).
            if !h.reset.is_cancelled() {
                return Ok(());
            }
        }
        Err(self.refuse())
    }

    /// Whether `reset_high_memory_streams` reset the account.
    pub fn is_reset(&self) -> bool {
        self.0.reset.is_cancelled()
    }

    /// `Err` (counted) when the account was reset.
    pub fn check(&self) -> Result<(), FilterOverBudget> {
        if self.is_reset() {
            return Err(self.refuse());
        }
        Ok(())
    }

    /// Resolves (counted, the account emptied) when
    /// `reset_high_memory_streams` resets the account: a filter waiting
    /// for more of the body gives up at once.
    pub async fn reset(&self) -> FilterOverBudget {
        self.0.reset.cancelled().await;
        self.refuse()
    }

    /// Takes `n` bytes the filter no longer holds out of the account (a
    /// filter that buffers part of a stream and lets it go as it
    /// converts it: the transcoder's partial message).
    pub fn release(&self, n: u64) {
        self.0.release(n);
    }

    /// Resolves when `reset_high_memory_streams` resets the account; for
    /// a body that polls it beside its inner body (then [`check`] counts
    /// the refusal). Owned: it lives in the body, not borrowing it.
    ///
    /// [`check`]: Self::check
    pub fn reset_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.reset.clone().cancelled_owned()
    }

    /// Empties the account and counts the refusal.
    fn refuse(&self) -> FilterOverBudget {
        self.0.release(u64::MAX);
        metrics::counter!(names::OVERLOAD_FILTER_BUFFER_REFUSED_TOTAL).increment(1);
        FilterOverBudget
    }

    /// Keeps the bytes charged while `body` (the buffered body the
    /// request carries on) is held: released as the upstream request
    /// takes its frames, and all of them when it is dropped.
    pub fn hold(self, body: Body) -> Body {
        Held {
            body,
            holder: self.0,
        }
        .boxed_unsync()
    }
}

/// A buffered body whose bytes stay charged until taken.
struct Held {
    body: Body,
    holder: Arc<Holder>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.holder.release(d.len() as u64);
        }
        r
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

    /// A body fed by the test.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed() -> (mpsc::UnboundedSender<Bytes>, Body) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Fed(rx).boxed_unsync())
    }

    // One test: the account is process-global.
    #[tokio::test]
    async fn bytes_are_charged_released_and_largest_reset() {
        configure(Some(1 << 20), None);
        let (a_tx, a_body) = fed();
        let (body, holder) = track(a_body);
        let holder = holder.unwrap();
        a_tx.send(Bytes::from(vec![0u8; 100 * 1024])).unwrap();
        while holder.bytes() < 100 * 1024 {
            tokio::task::yield_now().await;
        }
        assert_eq!(total(), 100 * 1024);
        // A small stream is never reset.
        let (b_tx, b_body) = fed();
        let (b, small) = track(b_body);
        let small = small.unwrap();
        b_tx.send(Bytes::from_static(b"x")).unwrap();
        while small.bytes() < 1 {
            tokio::task::yield_now().await;
        }
        reset_largest(1.0);
        assert!(holder.reset.is_cancelled());
        assert!(!small.reset.is_cancelled());
        let r = guard(holder.clone(), std::future::pending::<Response>()).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-envoy-overloaded"], "true");
        // The reset body ends with an error once what was read is taken,
        // and the taken bytes leave the account.
        let mut body = body;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().len(), 100 * 1024);
        assert!(body.frame().await.unwrap().is_err());
        // The reset took the stream's bytes out of the account at once.
        assert_eq!(total(), 1);
        drop(body);
        drop(holder);
        drop(b);
        drop(small);
        drop(b_tx);
        // The small stream's byte goes when its holder does.
        while total() != 0 {
            tokio::task::yield_now().await;
        }
        // Past the reset line, the largest streams go at once, largest
        // first, until the total is a quarter below it.
        configure(Some(1 << 20), Some(400 * 1024));
        let mut held = Vec::new();
        for size in [100usize, 150, 200] {
            let (tx, body) = fed();
            let (body, h) = track(body);
            let h = h.unwrap();
            tx.send(Bytes::from(vec![0u8; size * 1024])).unwrap();
            while h.bytes() < (size * 1024) as u64 && !h.reset.is_cancelled() {
                tokio::task::yield_now().await;
            }
            held.push((tx, body, h));
        }
        // 450 KiB crossed 400: the 200 KiB stream went, 250 KiB <= 300.
        assert!(held[2].2.reset.is_cancelled());
        assert!(!held[0].2.reset.is_cancelled() && !held[1].2.reset.is_cancelled());
        assert_eq!(total(), 250 * 1024);
        drop(held);
        while total() != 0 {
            tokio::task::yield_now().await;
        }
        // Responses: read ahead up to RESPONSE_READ_AHEAD while nobody
        // polls, counted; a reset empties the queue and ends the body.
        configure(Some(64 << 20), None);
        let (r_tx, r_body) = fed();
        let resp = track_response(http::Response::new(r_body));
        for _ in 0..4 {
            r_tx.send(Bytes::from(vec![0u8; 512 * 1024])).unwrap();
        }
        while total() < RESPONSE_READ_AHEAD {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            total(),
            RESPONSE_READ_AHEAD,
            "stops at the read-ahead bound"
        );
        let mut rb = resp.into_body();
        let f = rb.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap().len(), 512 * 1024);
        // Room again: the next frame is read ahead.
        while total() < RESPONSE_READ_AHEAD {
            tokio::task::yield_now().await;
        }
        reset_largest(1.0);
        assert_eq!(total(), 0);
        assert!(rb.frame().await.unwrap().is_err(), "reset: the body fails");
        assert!(rb.frame().await.is_none());
        drop(rb);
        drop(r_tx);
        // A filter's buffered body: charged while held, refused past the
        // budget (nothing charged), released as the upstream takes it.
        configure(Some(256 * 1024), None);
        let a = FilterAccount::new().unwrap();
        a.charge(200 * 1024).unwrap();
        assert_eq!(total(), 200 * 1024);
        let mut held = a.hold(full_body(Bytes::from(vec![0u8; 200 * 1024])));
        let b = FilterAccount::new().unwrap();
        assert!(b.charge(100 * 1024).is_err(), "over the budget");
        assert_eq!(total(), 200 * 1024);
        held.frame().await.unwrap().unwrap();
        assert_eq!(total(), 0);
        // reset_high_memory_streams picks a filter's account too.
        let c = FilterAccount::new().unwrap();
        c.charge(100 * 1024).unwrap();
        reset_largest(1.0);
        assert!(c.is_reset());
        assert_eq!(total(), 0);
        assert!(c.charge(1).is_err());
        drop((held, b, c));
        // Off: a body is left alone.
        configure(None, None);
        let (_tx, c_body) = fed();
        assert!(track(c_body).1.is_none());
    }
}
