//! Upstream HTTP/1.1 written by hand, for the request path that matters
//! most: the request's own task writes the request and reads the response
//! on a pooled connection it owns. hyper's client connection needs a task
//! per connection and a channel between it and the caller: two extra task
//! wake-ups per request, the largest user-space item of the HTTP/1.1
//! profile in benches/RESULTS.md. Heads are parsed with httparse; bodies
//! are streamed (Content-Length, chunked with trailers, or until close)
//! with no buffering beyond one read. Upgrades (101) stay on the hyper
//! path in `client.rs`.

use super::client::UpstreamIo;
use super::h1_body::{Decoded, Decoder, Fields, Framing, header_name};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use meshgate_core::cluster::ConnectionGuard;
use meshgate_core::cluster::Endpoint;
use meshgate_core::codec::{BoxError, UpstreamError};
use meshgate_core::config::circuit_breakers::RoutingPriority;
use meshgate_core::pool::{EndpointPool, ExclusiveLimits, ExclusivePool, Reusable};
use meshgate_core::stream::{Body, MalformedBody, Response, box_body};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The most bytes a response head (status line and headers) may take.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers.
const MAX_HEADERS: usize = 128;
/// How much one read asks for.
const READ_SIZE: usize = 16 * 1024;

/// A keep-alive connection to one endpoint.
pub(super) struct Conn {
    pub(super) io: UpstreamIo,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    _guard: ConnectionGuard,
    /// Whether it served a request before (a failure before the first
    /// response byte is then the keep-alive race, safe to replay).
    reused: bool,
    /// Exchanges it carried (`max_requests_per_connection`).
    exchanges: u32,
    /// The exchange's deadline for its response head, if any.
    deadline: Option<tokio::time::Instant>,
    /// The connection's one timer for deadlines. It is made with the first
    /// deadline and moved earlier only when a deadline is earlier; a later
    /// deadline is taken when the timer fires. A tokio timeout per request
    /// instead registers and cancels a timer-wheel entry every time, a
    /// visible share of a proxied HTTP/1.1 request (benches/RESULTS.md).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Reading met EOF or an error while the request was still being sent:
    /// no more early-response reads.
    read_closed: bool,
}

impl Conn {
    pub(super) fn new(io: UpstreamIo, guard: ConnectionGuard) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            _guard: guard,
            reused: false,
            exchanges: 0,
            deadline: None,
            timer: None,
            read_closed: false,
        }
    }

    /// The routing priority whose pool and breakers the connection is in.
    pub(super) fn priority(&self) -> RoutingPriority {
        self._guard.priority()
    }

    /// Watches `deadline` (`None`: none) for the exchange that starts.
    fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
        let Some(d) = deadline else { return };
        match &mut self.timer {
            Some(t) if t.deadline() <= d => {}
            Some(t) => t.as_mut().reset(d),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(d))),
        }
    }

    /// Ready once the deadline has passed; pending while there is none.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(d), Some(t)) = (self.deadline, self.timer.as_mut()) else {
            return Poll::Pending;
        };
        loop {
            ready!(t.as_mut().poll(cx));
            // The timer never runs later than the deadline: it fired for
            // this deadline, or for an earlier one and is moved on.
            if t.deadline() >= d {
                return Poll::Ready(());
            }
            t.as_mut().reset(d);
        }
    }

    /// Reads more, within the deadline.
    async fn fill_by(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_fill(cx) {
                return Poll::Ready(r);
            }
            ready!(self.poll_deadline(cx));
            Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
        })
        .await
    }

    /// Writes all of `buf`, within the deadline.
    async fn write_all_by(&mut self, mut buf: &[u8]) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            while !buf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => buf = &buf[n..],
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        ready!(self.poll_deadline(cx));
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Whether an idle connection is still clean: nothing (no early
    /// response, no EOF) arrived while it sat in the pool. Answered from
    /// the reactor's readiness when it has seen nothing, with no syscall.
    fn idle_ok(&self) -> bool {
        let tcp = match &self.io {
            UpstreamIo::Tcp(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// A final response head that arrived while the request is still
    /// being sent (an upstream that answers early, e.g. 413, and stops
    /// reading): ready with it, pending while there is none yet.
    /// Informational heads are skipped.
    fn poll_early(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &HeadCtx,
    ) -> Poll<Result<Early, SendError>> {
        loop {
            if !self.buf.is_empty() {
                match read_head(&mut self.buf, ctx) {
                    Ok(Some(Head::Final(r, k, f))) => return Poll::Ready(Ok((r, k, f))),
                    Ok(Some(Head::Informational)) => continue,
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(protocol("response head too large")));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.read_closed {
                return Poll::Pending;
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => {
                    self.read_closed = true;
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes request body bytes, within the deadline; `Ok(Some(..))` when
    /// the upstream answered meanwhile (the rest of the request is not
    /// sent). A failed write still looks for a response the upstream sent
    /// before it closed.
    async fn write_body_by(
        &mut self,
        mut buf: &[u8],
        ctx: &HeadCtx,
    ) -> Result<Option<Early>, SendError> {
        let failed = std::future::poll_fn(|cx| {
            while !buf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => buf = &buf[n..],
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if let Poll::Ready(r) = self.poll_early(cx, ctx) {
                            return Poll::Ready(Ok(Some(r)));
                        }
                        ready!(self.poll_deadline(cx));
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                }
            }
            Poll::Ready(Ok(None))
        })
        .await;
        match failed {
            Ok(None) => Ok(None),
            Ok(Some(r)) => r.map(Some),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(io_failed(e, false)),
            Err(e) => match self.read_early_by(ctx).await {
                Some(r) => r.map(Some),
                None => Err(io_failed(e, false)),
            },
        }
    }

    /// After a failed write: the response head the upstream sent before it
    /// closed, if it did (read until EOF, within the deadline).
    async fn read_early_by(&mut self, ctx: &HeadCtx) -> Option<Result<Early, SendError>> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_early(cx, ctx) {
                return Poll::Ready(Some(r));
            }
            if self.read_closed {
                return Poll::Ready(None);
            }
            ready!(self.poll_deadline(cx));
            Poll::Ready(None)
        })
        .await
    }
}

/// A final response head read before the whole request was sent, with
/// whether the connection could stay open and the body's framing.
type Early = (http::Response<()>, bool, Framing);

/// What reading a response head needs to know beyond its bytes.
struct HeadCtx {
    /// The request was HEAD: the response has no body.
    head_only: bool,
    /// The cluster, for counting invalid responses.
    cluster: &'static str,
}

impl Conn {
    /// An idle connection's transport, slot and exchanges, for hyper: a
    /// request that may upgrade takes the endpoint's idle keep-alive
    /// connection rather than waiting for a slot that connection holds.
    /// `None` when bytes are buffered (not idle).
    pub(super) fn into_io(self) -> Option<(UpstreamIo, ConnectionGuard, u32)> {
        self.buf
            .is_empty()
            .then_some((self.io, self._guard, self.exchanges))
    }
}

impl Reusable for Conn {
    fn is_reusable(&self) -> bool {
        self.idle_ok()
    }
    fn exchanges(&self) -> u32 {
        self.exchanges
    }
    fn guard(&self) -> Option<&ConnectionGuard> {
        Some(&self._guard)
    }
}

/// An endpoint's HTTP/1.1 pools, kept on the endpoint (`Endpoint::pool`):
/// core's exclusive mode, for the hand-written client's connections and
/// for hyper's (requests that may upgrade).
#[derive(Default)]
pub(super) struct Pool {
    pub(super) fast: ExclusivePool<Conn>,
    pub(super) upgradable: ExclusivePool<super::client::HyperConn>,
}

impl Pool {
    /// The endpoint's pools for requests of `priority`.
    pub(super) fn of(endpoint: &Endpoint, priority: RoutingPriority) -> Option<&Pool> {
        endpoint.pool_at(priority, Pool::default)
    }
}

impl EndpointPool for Pool {
    fn close(&self) {
        self.fast.close_idle();
        self.upgradable.close_idle();
    }
}

/// What went wrong, and whether the request may be sent again on another
/// connection (nothing of a response arrived on a reused connection).
struct SendError {
    error: UpstreamError,
    replayable: bool,
}

/// A failed exchange; a bodiless request that may be sent again on a new
/// connection comes back whole (its head's bytes and the endpoint), so
/// the caller keeps no copy of them for the rare replay.
pub(super) struct Failed {
    pub(super) error: UpstreamError,
    pub(super) replay: Option<(EncodedHead, Arc<Endpoint>)>,
}

/// A failed read or write: the deadline passing (`TimedOut`, from the
/// connection's timer) or the connection failing.
fn io_failed(e: io::Error, replayable: bool) -> SendError {
    if e.kind() == io::ErrorKind::TimedOut {
        SendError {
            error: UpstreamError::Timeout,
            replayable: false,
        }
    } else {
        reset(e, replayable)
    }
}

fn reset(e: impl Into<BoxError>, replayable: bool) -> SendError {
    SendError {
        error: UpstreamError::Reset(e.into()),
        replayable,
    }
}

fn protocol(e: impl Into<BoxError>) -> SendError {
    SendError {
        error: UpstreamError::Protocol(e.into()),
        replayable: false,
    }
}

/// A request head serialised for the wire, and how its body is framed.
/// Kept as bytes so that a request replayed on a new connection (the
/// keep-alive race) needs no copy of its header map.
pub(super) struct EncodedHead {
    /// Not frozen: dropping a unique `BytesMut` frees it, where a frozen
    /// `Bytes` of it would drop a shared reference count.
    bytes: BytesMut,
    head_only: bool,
    chunked: bool,
}

/// Serialises the head of `parts` (origin-form target) for a body like
/// `body`.
pub(super) fn encode_head(parts: &http::request::Parts, body: &Body) -> EncodedHead {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.put_slice(b" HTTP/1.1\r\n");
    let mut has_len = false;
    for (k, v) in &parts.headers {
        if k == http::header::TRANSFER_ENCODING {
            continue;
        }
        has_len |= k == http::header::CONTENT_LENGTH;
        out.put_slice(k.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    let chunked = if body.is_end_stream() || has_len {
        false
    } else if let Some(n) = body.size_hint().exact() {
        out.put_slice(format!("content-length: {n}\r\n").as_bytes());
        false
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        true
    };
    out.put_slice(b"\r\n");
    EncodedHead {
        bytes: out,
        head_only: parts.method == http::Method::HEAD,
        chunked,
    }
}

/// Sends `head` and `body` on `conn` and reads the response head; the body
/// streams from the connection, which returns to the endpoint's pool when
/// the body ends.
// Not an async fn on purpose (see the comment in the body).
#[allow(clippy::manual_async_fn)]
#[allow(clippy::too_many_arguments)]
pub(super) fn send(
    conn: Conn,
    head: EncodedHead,
    body: Body,
    endpoint: Arc<Endpoint>,
    limits: ExclusiveLimits,
    deadline: Option<tokio::time::Instant>,
    cluster: &'static str,
) -> impl Future<Output = Result<Response, Failed>> + Send {
    // An async block rather than an async fn: the captures are not copied
    // again into locals (a smaller future for every enclosing one).
    async move {
        let bodiless = body.is_end_stream();
        match exchange(conn, &head, body, deadline, cluster).await {
            Ok((resp, conn, framing, keep_alive)) => {
                let mut body = H1Body {
                    conn: Some(conn),
                    decoder: Decoder::new(framing),
                    keep_alive,
                    endpoint,
                    limits,
                };
                if body.decoder.is_done() {
                    body.release();
                }
                let (parts, ()) = resp.into_parts();
                Ok(Response::from_parts(parts, box_body(body)))
            }
            Err(e) => Err(Failed {
                error: e.error,
                replay: (e.replayable && bodiless).then_some((head, endpoint)),
            }),
        }
    }
}

/// The exchange up to the response head: the head, whether the connection
/// stays open after the body, the body's framing, and the connection.
type Exchanged = (http::Response<()>, Conn, Framing, bool);

/// Sends the request body; `Ok(Some(..))` when the upstream answered
/// before it was all sent (the rest is not sent: the upstream never sees
/// a complete request).
async fn send_body(
    conn: &mut Conn,
    body: &mut Body,
    chunked: bool,
    ctx: &HeadCtx,
) -> Result<Option<Early>, SendError> {
    let mut trailers_sent = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(f) = Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(Ok(Ok(f)));
            }
            // Waiting for the client's next bytes: an upstream that
            // answers meanwhile is heard now.
            if let Poll::Ready(r) = conn.poll_early(cx, ctx) {
                return Poll::Ready(r.map(Err));
            }
            ready!(conn.poll_deadline(cx));
            Poll::Ready(Err(io_failed(io::ErrorKind::TimedOut.into(), false)))
        })
        .await?;
        let next = match next {
            Ok(f) => f,
            Err(early) => return Ok(Some(early)),
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| SendError {
            error: if e.is::<MalformedBody>() {
                UpstreamError::MalformedRequestBody(e)
            } else {
                UpstreamError::Reset(format!("request body: {e}").into())
            },
            replayable: false,
        })?;
        let early = match frame.into_data() {
            Ok(data) if data.is_empty() => None,
            Ok(data) if chunked => {
                let mut c = BytesMut::with_capacity(data.len() + 16);
                c.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                c.put_slice(&data);
                c.put_slice(b"\r\n");
                conn.write_body_by(&c, ctx).await?
            }
            Ok(data) => conn.write_body_by(&data, ctx).await?,
            Err(frame) => match frame.into_trailers() {
                Ok(mut t) if chunked => {
                    meshgate_core::body::strip_forbidden_trailers(&mut t, "request");
                    let mut c = BytesMut::from(&b"0\r\n"[..]);
                    for (k, v) in &t {
                        c.put_slice(k.as_str().as_bytes());
                        c.put_slice(b": ");
                        c.put_slice(v.as_bytes());
                        c.put_slice(b"\r\n");
                    }
                    c.put_slice(b"\r\n");
                    trailers_sent = true;
                    conn.write_body_by(&c, ctx).await?
                }
                _ => None,
            },
        };
        if early.is_some() {
            return Ok(early);
        }
        if trailers_sent || body.is_end_stream() {
            break;
        }
    }
    if chunked && !trailers_sent {
        return conn.write_body_by(b"0\r\n\r\n", ctx).await;
    }
    Ok(None)
}

async fn exchange(
    mut conn: Conn,
    head: &EncodedHead,
    mut body: Body,
    deadline: Option<tokio::time::Instant>,
    cluster: &'static str,
) -> Result<Exchanged, SendError> {
    {
        let reused = conn.reused;
        let EncodedHead {
            bytes: out,
            head_only,
            chunked,
        } = head;
        let (head_only, chunked) = (*head_only, *chunked);
        let ctx = HeadCtx { head_only, cluster };
        let empty = body.is_end_stream();
        // Nothing of the request reached the peer yet: a failed write on a
        // reused connection is the keep-alive race.
        conn.set_deadline(deadline);
        conn.write_all_by(out)
            .await
            .map_err(|e| io_failed(e, reused))?;
        let mut early = None;
        if !empty {
            conn.read_closed = false;
            early = send_body(&mut conn, &mut body, chunked, &ctx).await?;
        }
        let (resp, keep_alive, framing) = match early {
            // The request was cut short: the connection cannot be reused.
            Some((resp, _, framing)) => {
                tracing::debug!(status = %resp.status(), "upstream answered before the whole request body");
                (resp, false, framing)
            }
            None => {
                conn.io.flush().await.map_err(|e| reset(e, false))?;
                // The response head; 1xx other than 101 are skipped.
                loop {
                    // Parsed and built without an await: the fields (on
                    // the stack) are no part of this future.
                    let head = read_head(&mut conn.buf, &ctx)?;
                    match head {
                        Some(Head::Informational) => continue,
                        Some(Head::Final(resp, keep_alive, framing)) => {
                            break (resp, keep_alive, framing);
                        }
                        None => {
                            if conn.buf.len() >= MAX_HEAD {
                                return Err(protocol("response head too large"));
                            }
                            let first = conn.buf.is_empty();
                            match conn.fill_by().await {
                                Ok(0) => {
                                    return Err(reset(
                                        "upstream closed before a whole response head",
                                        reused && first,
                                    ));
                                }
                                Ok(_) => {}
                                Err(e) => return Err(io_failed(e, reused && first)),
                            }
                        }
                    }
                }
            }
        };
        let keep_alive = keep_alive && !matches!(framing, Framing::UntilClose);
        conn.reused = true;
        conn.exchanges += 1;
        // The deadline covers the response head only.
        conn.set_deadline(None);
        Ok((resp, conn, framing, keep_alive))
    }
}

/// The response head at the start of `buf`, taken out of it; `Ok(None)`
/// while incomplete.
fn read_head(buf: &mut BytesMut, ctx: &HeadCtx) -> Result<Option<Head>, SendError> {
    let mut fields = Fields::new();
    let len = {
        // Uninitialised slots: zeroing them all would cost more than the
        // parse.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                for h in r.headers.iter() {
                    let name = header_name(h.name.as_bytes())
                        .map_err(|_| protocol("bad response header name"))?;
                    fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
                }
                Some((len, r.code.unwrap_or(0), r.version == Some(1)))
            }
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::Status) => {
                return Err(invalid(ctx, "status", "bad response status"));
            }
            Err(e) => return Err(protocol(format!("bad response head: {e}"))),
        }
    };
    let Some((len, code, http11)) = len else {
        return Ok(None);
    };
    // Values point into the head's bytes: no copy per field.
    let bytes = buf.split_to(len).freeze();
    build_head(code, http11, &bytes, &mut fields, ctx).map(Some)
}

/// An invalid upstream response (502), counted in
/// `meshgate_http_upstream_rs_invalid_total{cluster,reason}`.
fn invalid(ctx: &HeadCtx, reason: &'static str, msg: &'static str) -> SendError {
    metrics::counter!(meshgate_core::metrics::names::HTTP_UPSTREAM_RS_INVALID_TOTAL, "cluster" => ctx.cluster, "reason" => reason).increment(1);
    protocol(msg)
}

/// A Content-Length value (RFC 9110 section 8.6): digits only, a list
/// only of one repeated value; `None` if invalid.
fn content_length_of(raw: &[u8]) -> Option<u64> {
    let mut value: Option<u64> = None;
    for part in raw.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if value.is_some_and(|v| v != n) {
            return None;
        }
        value = Some(n);
    }
    value
}

enum Head {
    Informational,
    Final(http::Response<()>, bool, Framing),
}

/// The response head as an `http::Response`, whether the connection stays
/// open, and the body's framing (RFC 9112 section 6.3).
fn build_head(
    code: u16,
    http11: bool,
    bytes: &Bytes,
    fields: &mut Fields,
    ctx: &HeadCtx,
) -> Result<Head, SendError> {
    // RFC 9110 section 15: three digits, 100 to 599.
    if !(100..=599).contains(&code) {
        return Err(invalid(ctx, "status", "bad status code"));
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| invalid(ctx, "status", "bad status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(protocol("unexpected 101 Switching Protocols"));
        }
        return Ok(Head::Informational);
    }
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut keep_alive = http11;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut other_te = false;
    // The codings before a final `chunked` (`gzip, chunked`): kept.
    let mut codings: Option<String> = None;
    // Drained: each name is moved into the map, not cloned.
    for (name, at, n) in fields.drain(..) {
        let raw = &bytes[at..at + n];
        if name == http::header::CONNECTION {
            if raw
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep_alive = false;
            }
            continue;
        }
        if name == http::header::TRANSFER_ENCODING {
            // Several fields are one list (RFC 9110 section 5.3).
            for t in raw.split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.is_empty() {
                    continue;
                }
                if chunked {
                    // A coding after chunked: chunked is not final.
                    chunked = false;
                    other_te = true;
                }
                if t.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    let c = codings.get_or_insert_with(String::new);
                    if !c.is_empty() {
                        c.push_str(", ");
                    }
                    c.push_str(&String::from_utf8_lossy(t).to_ascii_lowercase());
                }
            }
            continue;
        }
        if name == http::header::CONTENT_LENGTH {
            let n = content_length_of(raw)
                .ok_or_else(|| invalid(ctx, "content_length", "bad content-length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(invalid(ctx, "content_length", "conflicting content-length"));
            }
            if content_length.is_none() {
                content_length = Some(n);
                // One value, whatever list the upstream sent.
                headers.append(name, HeaderValue::from(n));
            }
            continue;
        }
        if name == "keep-alive" {
            continue;
        }
        // Only now a value: the fields dropped above cost no reference to
        // the head's bytes.
        // SAFETY: httparse accepted this value, and it accepts only the
        // bytes a `HeaderValue` allows (as in `h1_server::parse_head`).
        #[allow(unsafe_code)]
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.slice(at..at + n)) };
        headers.append(name, value);
    }
    if other_te {
        // `chunked, gzip`: a framing a proxy cannot re-frame safely.
        return Err(invalid(
            ctx,
            "transfer_coding",
            "chunked is not the final transfer coding",
        ));
    }
    // The codings other than chunked still apply to the body: they travel
    // as `TransferCodings` for the downstream codec to send on.
    let extensions = match codings.as_deref() {
        Some(c) => Some(meshgate_core::body::TransferCodings(
            HeaderValue::from_str(c)
                .map_err(|_| invalid(ctx, "transfer_coding", "bad transfer-encoding"))?,
        )),
        None => None,
    };
    let framing = if ctx.head_only
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if chunked {
        // Transfer-Encoding wins over Content-Length, which is dropped.
        headers.remove(http::header::CONTENT_LENGTH);
        if content_length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else if codings.is_some() {
        // A transfer coding without chunked: the body runs until close
        // (RFC 9112 section 6.3).
        headers.remove(http::header::CONTENT_LENGTH);
        Framing::UntilClose
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(e) = extensions {
        resp.extensions_mut().insert(e);
    }
    Ok(Head::Final(resp, keep_alive, framing))
}

/// A response body read from the connection; the connection goes back to
/// the pool when the body ended cleanly and both sides keep it alive.
struct H1Body {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    /// Whose pool the connection goes back to.
    endpoint: Arc<Endpoint>,
    limits: ExclusiveLimits,
}

impl H1Body {
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Extra bytes after the response: the peer is out of step.
        if !self.keep_alive || !conn.buf.is_empty() {
            return;
        }
        // Back to the pool of the priority whose breakers count it.
        if let Some(pool) = Pool::of(&self.endpoint, conn.priority()) {
            pool.fast.put(conn, &self.limits);
        }
    }

    fn fail(&mut self, msg: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            msg.to_string(),
        )
        .into())))
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let mut eof = false;
        loop {
            let Some(conn) = me.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match me.decoder.decode(&mut conn.buf, eof) {
                Ok(Decoded::Data(data)) => {
                    if me.decoder.is_done() {
                        me.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    me.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    if eof {
                        me.keep_alive = false;
                    }
                    me.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) => return me.fail(&e.to_string()),
                },
                Err(msg) => return me.fail(msg),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done() || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.exact_remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
