//! Downstream HTTP/1.1 written by hand on httparse. Why not hyper's server:
//! (1) the request's whole life runs in the connection's own task, with the
//! head parsed once into shared `Bytes` (header values and the URI point
//! into the read buffer, no copy) and the response head and a ready body
//! written in one `write` — hyper's dispatcher costs a body channel, a
//! header copy per field and a separate write per frame, the largest
//! user-space item of the HTTP/1.1 profile in benches/RESULTS.md;
//! (2) request-smuggling defences that hyper does not apply (a request
//! with both Content-Length and Transfer-Encoding, bare LF line endings,
//! a missing or repeated Host: 400 and close).
//!
//! A connection serves one request at a time (pipelined requests wait in
//! the read buffer). The request body is read by whoever polls it (the
//! upstream codec), through the same lock-protected connection state the
//! connection task writes the response with; `Expect: 100-continue` is
//! answered when the body is first polled.

use super::h1_body::{Decoded, Decoder, Fields, Framing, has_bare_lf, header_name};
use super::server::ServerOptions;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use meshgate_core::codec::{GoAway, Notices, StreamHandler};
use meshgate_core::network::{AsyncIo, Connection, ConnectionInfo, PrefixedIo};
use meshgate_core::stream::{
    BodyError, MalformedBody, Request, Response, StreamInfo, Upgrade, box_body, empty_body,
};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

/// Most header fields httparse is given room for (the configured limit is
/// applied below it).
const HEADER_SLOTS: usize = 256;
/// Read buffer size asked for per read.
const READ_SIZE: usize = 8 * 1024;
/// The first read of a connection holding no read buffer goes to the
/// stack, this much at most (a typical request head fits).
const IDLE_READ_SIZE: usize = 4 * 1024;
/// The response head buffer a connection allocates on its first response.
const WRITE_SIZE: usize = 4 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Data frames at least this big are written from their own buffer.
const COPY_LIMIT: usize = 8 * 1024;
/// Unread request body the connection drains to stay reusable.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// How long an error reply waits for the client to stop sending before
/// the socket closes (so the reply is not lost to a TCP reset).
const LINGER: Duration = Duration::from_secs(1);
/// How long a connection that looks idle when the server drains is kept:
/// on a busy keep-alive connection the next request may already be on the
/// wire (it is answered, with `connection: close`). Only a connection that
/// sends no byte for this long is closed.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// The connection state shared by the connection task (heads, responses)
/// and the request body (whoever reads it).
struct Io {
    io: PrefixedIo,
    rbuf: BytesMut,
    eof: bool,
    /// The body of the request in progress; `None` once read (or if none).
    body: Option<Decoder>,
    /// The body's framing was broken: the connection cannot be reused.
    body_failed: bool,
    /// `HTTP/1.1 100 Continue` bytes still to write before reading the body.
    continue_owed: Option<&'static [u8]>,
    listener: Arc<str>,
}

type Shared = Arc<Mutex<Io>>;

fn lock(s: &Shared) -> MutexGuard<'_, Io> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection's I/O as the connection task holds it: its own while no
/// request body is out, shared with the body (behind the lock) while one
/// is. A bodiless request (most of them) thus takes no lock: that was six
/// atomic instructions per keep-alive request.
enum Slot {
    Own(Io),
    Lent(Shared),
    /// Only while switching between the two.
    Gone,
}

/// Access to the connection's I/O through a `Slot`.
enum IoRef<'a> {
    Own(&'a mut Io),
    Lent(MutexGuard<'a, Io>),
}

impl std::ops::Deref for IoRef<'_> {
    type Target = Io;
    fn deref(&self) -> &Io {
        match self {
            IoRef::Own(io) => io,
            IoRef::Lent(g) => g,
        }
    }
}

impl std::ops::DerefMut for IoRef<'_> {
    fn deref_mut(&mut self) -> &mut Io {
        match self {
            IoRef::Own(io) => io,
            IoRef::Lent(g) => g,
        }
    }
}

impl Slot {
    fn io(&mut self) -> IoRef<'_> {
        match self {
            Slot::Own(io) => IoRef::Own(io),
            Slot::Lent(s) => IoRef::Lent(lock(s)),
            Slot::Gone => unreachable!("the connection's I/O is always in its slot between calls"),
        }
    }

    /// Shares the I/O with a request body reader.
    fn lend(&mut self) -> Shared {
        if let Slot::Lent(s) = self {
            return s.clone();
        }
        let Slot::Own(io) = std::mem::replace(self, Slot::Gone) else {
            unreachable!("the connection's I/O is always in its slot between calls")
        };
        let shared = Arc::new(Mutex::new(io));
        *self = Slot::Lent(shared.clone());
        shared
    }

    /// Takes the I/O back once no body reader holds it; `false` if one
    /// still does.
    fn reclaim(&mut self) -> bool {
        let (slot, own) = match std::mem::replace(self, Slot::Gone) {
            Slot::Lent(s) => match Arc::try_unwrap(s) {
                Ok(m) => (
                    Slot::Own(m.into_inner().unwrap_or_else(|p| p.into_inner())),
                    true,
                ),
                Err(s) => (Slot::Lent(s), false),
            },
            other => (other, true),
        };
        *self = slot;
        own
    }
}

impl Io {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            if self.rbuf.capacity() == 0 {
                return self.poll_fill_idle(cx);
            }
            self.rbuf.reserve(READ_SIZE);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// `poll_fill` for a connection that holds no read buffer (new, or
    /// idle since a tick in `wait_head` released it): reads into the
    /// stack and allocates the buffer only once bytes came, so that a
    /// connection waiting for its next request holds none (as nginx does).
    fn poll_fill_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ_SIZE];
        let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.eof = true;
        } else {
            self.rbuf = BytesMut::with_capacity(READ_SIZE);
            self.rbuf.put_slice(rb.filled());
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_all(&mut self, cx: &mut Context<'_>, buf: &mut &[u8]) -> Poll<io::Result<()>> {
        while !buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *buf = &buf[n..];
        }
        Poll::Ready(Ok(()))
    }
}

async fn write_all(slot: &mut Slot, mut buf: &[u8]) -> io::Result<()> {
    poll_fn(|cx| slot.io().poll_write_all(cx, &mut buf)).await
}

async fn flush(slot: &mut Slot) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut slot.io().io).poll_flush(cx)).await
}

/// `write_all` then `flush`, taking the lock (if lent) once per poll.
async fn write_flush(slot: &mut Slot, mut buf: &[u8]) -> io::Result<()> {
    poll_fn(|cx| {
        let mut io = slot.io();
        ready!(io.poll_write_all(cx, &mut buf))?;
        Pin::new(&mut io.io).poll_flush(cx)
    })
    .await
}

fn count(listener: &str, reason: &'static str) {
    metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL, "listener" => listener.to_string(), "codec" => "http1", "reason" => reason).increment(1);
}

/// The request body, read from the connection as it is polled.
struct RequestBody {
    shared: Shared,
    size: Option<u64>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = self.get_mut();
        let mut guard = lock(&me.shared);
        let io = &mut *guard;
        if let Some(mut rest) = io.continue_owed {
            let r = io.poll_write_all(cx, &mut rest);
            io.continue_owed = Some(rest);
            match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    io.body_failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(())) => io.continue_owed = None,
            }
        }
        loop {
            let Some(decoder) = io.body.as_mut() else {
                return Poll::Ready(None);
            };
            match decoder.decode(&mut io.rbuf, io.eof) {
                Ok(Decoded::Data(d)) => {
                    me.size = decoder.exact_remaining();
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => {
                    io.body = None;
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    io.body = None;
                    me.size = Some(0);
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {
                    if let Err(e) = ready!(io.poll_fill(cx)) {
                        io.body = None;
                        io.body_failed = true;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Err(msg) => {
                    io.body = None;
                    io.body_failed = true;
                    if !io.eof {
                        count(&io.listener, "bad_request");
                    }
                    return Poll::Ready(Some(Err(MalformedBody(msg).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.size == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Why a request head was refused.
enum HeadError {
    Bad(&'static str),
    /// `user@host` in `Host` or an absolute-form target.
    Userinfo,
    TooLarge,
    NotImplemented,
}

impl HeadError {
    fn status(&self) -> StatusCode {
        match self {
            HeadError::Bad(_) | HeadError::Userinfo => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "headers_too_large",
            HeadError::Userinfo => "authority_userinfo",
            _ => "bad_request",
        }
    }
}

/// A parsed request head and what the connection must do around it.
struct Head {
    req: http::Request<()>,
    framing: Framing,
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
    upgrade: bool,
}

fn offset(base: &[u8], s: &[u8]) -> usize {
    s.as_ptr() as usize - base.as_ptr() as usize
}

/// Parses the head at the start of `rbuf`: `Ok(None)` while incomplete.
fn parse_head(rbuf: &mut BytesMut, opts: &ServerOptions) -> Result<Option<Head>, HeadError> {
    // Uninitialised slots: a request uses a handful, zeroing all of them
    // would cost more than the parse.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let limit = opts.max_request_headers.min(HEADER_SLOTS);
    // Filled in place, not moved out of the block below.
    let mut fields = Fields::new();
    let (len, method, path, version) = {
        let mut r = httparse::Request::new(&mut []);
        match r.parse_with_uninit_headers(rbuf, &mut slots[..limit]) {
            Ok(httparse::Status::Complete(len)) => {
                for h in r.headers.iter() {
                    let name = header_name(h.name.as_bytes())
                        .map_err(|_| HeadError::Bad("bad header name"))?;
                    fields.push((name, offset(rbuf, h.value), h.value.len()));
                }
                let method = Method::from_bytes(r.method.unwrap_or("").as_bytes())
                    .map_err(|_| HeadError::Bad("bad method"))?;
                let path = r.path.unwrap_or("").as_bytes();
                (
                    len,
                    method,
                    (offset(rbuf, path), path.len()),
                    r.version.unwrap_or(1),
                )
            }
            Ok(httparse::Status::Partial) => {
                return if rbuf.len() > opts.max_request_headers_bytes {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Token) => return Err(HeadError::Bad("bad token")),
            Err(_) => return Err(HeadError::Bad("malformed request head")),
        }
    };
    if len > opts.max_request_headers_bytes {
        return Err(HeadError::TooLarge);
    }
    if has_bare_lf(&rbuf[..len]) {
        return Err(HeadError::Bad("bare LF"));
    }
    let head = rbuf.split_to(len).freeze();
    let http10 = version == 0;
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|_| HeadError::Bad("bad request target"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(HeadError::Userinfo);
    }
    // Room for what the proxy adds (x-forwarded-*, x-request-id) without
    // growing the map.
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut te_seen = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut expect_continue = false;
    for (name, at, n) in fields.drain(..) {
        // SAFETY: httparse accepted this value, and it accepts only the
        // bytes a `HeaderValue` allows (HTAB, SP, VCHAR, obs-text; a control
        // byte is its `HeaderValue` error). Checking them again showed in
        // the per-request instruction profile (benches/RESULTS.md).
        #[allow(unsafe_code)]
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(at..at + n)) };
        match name {
            http::header::CONTENT_LENGTH => {
                let v = value.as_bytes();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Bad("bad content-length"));
                }
                let len: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(HeadError::Bad("bad content-length"))?;
                if content_length.is_some_and(|c| c != len) {
                    return Err(HeadError::Bad("conflicting content-length"));
                }
                if content_length.is_some() {
                    continue;
                }
                content_length = Some(len);
            }
            http::header::TRANSFER_ENCODING => {
                te_seen = true;
                for coding in value.as_bytes().split(|b| *b == b',') {
                    let coding = coding.trim_ascii();
                    if chunked {
                        // Anything after chunked: chunked is not final.
                        return Err(HeadError::Bad("chunked is not the final coding"));
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked = true;
                    } else {
                        other_coding = true;
                    }
                }
            }
            http::header::HOST => {
                hosts += 1;
                // RFC 9110 section 4.2.4: no userinfo in an authority.
                if value.as_bytes().contains(&b'@') {
                    return Err(HeadError::Userinfo);
                }
            }
            http::header::CONNECTION => {
                for t in value.as_bytes().split(|b| *b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_token = true;
                    }
                }
            }
            http::header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    // Framing (RFC 9112 section 6.3) and the smuggling shapes refused.
    let framing = if te_seen {
        if http10 {
            return Err(HeadError::Bad("transfer-encoding in HTTP/1.0"));
        }
        if content_length.is_some() {
            return Err(HeadError::Bad("both content-length and transfer-encoding"));
        }
        if !chunked {
            return Err(HeadError::Bad("chunked is not the final coding"));
        }
        if other_coding {
            return Err(HeadError::NotImplemented);
        }
        Framing::Chunked
    } else {
        Framing::Length(content_length.unwrap_or(0))
    };
    if !http10 && hosts != 1 || hosts > 1 {
        return Err(HeadError::Bad("missing or repeated host"));
    }
    let keep_alive = !close && (!http10 || keep_alive_token);
    let upgrade = upgrade_token && headers.contains_key(http::header::UPGRADE) && !http10;
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        framing,
        keep_alive,
        http10,
        expect_continue: expect_continue && !http10,
        upgrade,
    }))
}

/// What ended the wait for a request head.
// Lives on the stack for a moment: boxing the head would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Wait {
    Head(Head),
    /// Closed by the client, idle expiry or drain: close quietly.
    Close,
    Refuse(HeadError),
    Timeout,
    /// Idle when a hot upgrade that migrates connections drains: the
    /// connection goes to the new process.
    Migrate,
}

thread_local! {
    /// The `date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
}

fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (
                secs,
                HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or(HeaderValue::from_static("")),
            );
        }
        d.1.clone()
    })
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_status_line(out: &mut BytesMut, status: StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

/// How the response body is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
    /// A `101 Switching Protocols` to write, then the byte stream goes to
    /// the tunnel.
    Switch(Response, tokio::sync::oneshot::Sender<Box<dyn AsyncIo>>),
}

/// One downstream HTTP/1 connection.
struct Server {
    opts: ServerOptions,
    slot: Slot,
    info: Arc<ConnectionInfo>,
    handler: Arc<dyn StreamHandler>,
    /// The connection manager's notices: a retire or a drain closes the
    /// connection after the response in progress, a drain also closes it
    /// when idle.
    notices: Notices,
    /// Wakes this task on a notice stronger than the one it was made for.
    /// Made and polled at the first idle wait (and again after a retire):
    /// the registration stays while the future lives, and this
    /// connection's task is the only one that ever polls it, so the waker
    /// it holds stays the right one; `notices.current()` tells whether it
    /// fired.
    notice_wait: Option<NoticeWait>,
    /// Started at the first idle wait after the drain began
    /// (`DRAIN_IDLE_GRACE`); allocated only then.
    drain_grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Wakes the head wait now and then to check its deadline (one timer
    /// per connection, re-armed only when it fires: no timer operation per
    /// request on a busy keep-alive connection).
    tick: Pin<Box<tokio::time::Sleep>>,
    /// The tick holds this task's waker: it was polled since it was last
    /// armed and has not fired. Polling it again would only register the
    /// same waker again (four atomic instructions per request), so a wait
    /// polls it only once it fired (`is_elapsed`, a plain load).
    tick_armed: bool,
    granularity: Duration,
    /// The request in progress has a body (its reader shares the lock).
    has_body: bool,
    wbuf: BytesMut,
    served: u64,
}

/// A wait for a notice beyond `seen`, armed (polled once) in this task.
struct NoticeWait {
    seen: Option<GoAway>,
    wait: Pin<Box<dyn Future<Output = GoAway> + Send>>,
}

/// Whether the server drains. Keeps a wait for the next notice armed, so
/// that an idle connection wakes when the drain comes.
fn draining(notices: &Notices, wait: &mut Option<NoticeWait>, cx: &mut Context<'_>) -> bool {
    loop {
        let now = notices.current();
        if now == Some(GoAway::Drain) {
            return true;
        }
        if wait.as_ref().is_some_and(|w| w.seen == now) {
            return false;
        }
        let w = wait.insert(NoticeWait {
            seen: now,
            wait: Box::pin(notices.clone().changed(now)),
        });
        if w.wait.as_mut().poll(cx).is_pending() {
            return false;
        }
    }
}

/// Serves one downstream HTTP/1 connection until it closes.
///
/// A plain function returning the future: the `Server` is built at once,
/// so the future holds it alone (an async fn would also keep its
/// arguments, the whole `Connection` among them, for the connection's
/// life).
pub(super) fn serve(
    opts: ServerOptions,
    conn: Connection,
    handler: Arc<dyn StreamHandler>,
    notices: Notices,
) -> impl Future<Output = ()> + Send + 'static {
    let (io, info, _) = conn.into_prefixed();
    let granularity =
        (opts.request_headers_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let listener = info.listener.clone();
    let s = Server {
        slot: Slot::Own(Io {
            io,
            // No buffer until the first bytes come (`poll_fill_idle`).
            rbuf: BytesMut::new(),
            eof: false,
            body: None,
            body_failed: false,
            continue_owed: None,
            listener,
        }),
        info: Arc::new(info),
        handler,
        notices,
        notice_wait: None,
        drain_grace: None,
        tick: Box::pin(tokio::time::sleep(granularity)),
        tick_armed: false,
        granularity,
        has_body: false,
        wbuf: BytesMut::new(),
        served: 0,
        opts,
    };
    s.run()
}

impl Server {
    async fn run(mut self) {
        loop {
            let head = match self.wait_head().await {
                Wait::Head(h) => h,
                Wait::Close => return,
                Wait::Migrate => {
                    // Idle, nothing read past the last request: the socket
                    // goes to the new process (a failure closes it, as
                    // the drain would).
                    if self.slot.reclaim()
                        && let Slot::Own(io) = std::mem::replace(&mut self.slot, Slot::Gone)
                    {
                        let _ = Box::pin(meshgate_core::upgrade::migrate::migrate(
                            &self.info, io.io, &io.rbuf,
                        ))
                        .await;
                    }
                    return;
                }
                Wait::Timeout => {
                    count(&self.info.listener, "header_timeout");
                    return Box::pin(self.refuse(StatusCode::REQUEST_TIMEOUT)).await;
                }
                Wait::Refuse(e) => {
                    let why = match &e {
                        HeadError::Bad(why) => why,
                        HeadError::TooLarge => "head too large",
                        HeadError::Userinfo => "userinfo in the authority",
                        HeadError::NotImplemented => "transfer coding not implemented",
                    };
                    tracing::debug!(conn = self.info.id, status = %e.status(), why, "refused request head");
                    count(&self.info.listener, e.reason());
                    if matches!(e, HeadError::Userinfo) {
                        // Every codec counts this refusal in one place
                        // (HTTP/2 and HTTP/3 refuse it in the edge checks).
                        metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_RQ_REFUSED_TOTAL, "listener" => self.info.listener.to_string(), "reason" => "authority_userinfo").increment(1);
                    }
                    return Box::pin(self.refuse(e.status())).await;
                }
            };
            self.served += 1;
            // The exchange's future (the request and response heads, the
            // body writer's state) lives on the heap for the request only:
            // inline, it would stay in the connection's future while the
            // connection idles between requests (one allocation per
            // request buys ~2 KB less per idle keep-alive connection,
            // benches/RESULTS.md). Refusals, the upgrade and a migration
            // are boxed for the same reason.
            match Box::pin(self.exchange(head)).await {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Switch(resp, tx)) => {
                    if let Err(e) = Box::pin(switch(self.slot, resp, tx)).await {
                        tracing::debug!(error = %e, "upgrade failed");
                    }
                    return;
                }
                Ok(Next::Close) | Err(_) => return,
            }
        }
    }

    /// Waits for a whole request head. The first must arrive within
    /// `request_headers_timeout` of the connection's start; later ones
    /// within it of the previous response (so it is also the keep-alive
    /// idle limit).
    ///
    /// The limit is counted in firings of the connection's tick, not read
    /// from the clock: a keep-alive request costs no clock read here. The
    /// tick is re-armed a granularity after each firing, so the n-th firing
    /// after the wait began is at least n-1 granularities after it; a
    /// later head is cut off between the limit and two granularities past
    /// it (the first, counted from the connection's start, within one).
    /// Each poll takes the connection's lock once if a body reader holds
    /// it, none otherwise.
    async fn wait_head(&mut self) -> Wait {
        let Server {
            slot: shared,
            opts,
            notices,
            notice_wait,
            drain_grace,
            tick,
            tick_armed,
            granularity,
            served,
            wbuf,
            ..
        } = self;
        let g = granularity.as_nanos().max(1);
        let limit = opts.request_headers_timeout.as_nanos();
        // Firings that prove the limit has passed.
        let needed = if *served == 0 {
            limit.div_ceil(g)
        } else {
            limit.div_ceil(g) + 1
        };
        // The connection's first wait starts with its tick (armed a
        // granularity after the connection began).
        let mut fired: u128 = 0;
        poll_fn(|cx| {
            let mut io = shared.io();
            loop {
                if !io.rbuf.is_empty() {
                    match parse_head(&mut io.rbuf, opts) {
                        Ok(Some(h)) => return Poll::Ready(Wait::Head(h)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Wait::Refuse(e)),
                    }
                }
                if io.eof {
                    return Poll::Ready(Wait::Close);
                }
                match io.poll_fill(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Wait::Close),
                    Poll::Pending => break,
                }
            }
            // Drain: only a connection idle for the grace period is
            // closed (one that just answered may be about to read its
            // next request); a request that comes is answered with
            // `connection: close`.
            if io.rbuf.is_empty() && draining(notices, notice_wait, cx) {
                if meshgate_core::upgrade::migrate::open() {
                    return Poll::Ready(Wait::Migrate);
                }
                let grace = drain_grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_IDLE_GRACE)));
                if grace.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Close);
                }
            }
            // Only this connection's task polls the tick, so the waker it
            // holds stays the right one until it fires.
            while !*tick_armed || tick.is_elapsed() {
                if tick.as_mut().poll(cx).is_pending() {
                    *tick_armed = true;
                    break;
                }
                fired += 1;
                // A tick without a byte: the connection is idle, its
                // buffers go back (allocated again when bytes come).
                if io.rbuf.is_empty() && io.rbuf.capacity() != 0 {
                    io.rbuf = BytesMut::new();
                    *wbuf = BytesMut::new();
                }
                if fired >= needed {
                    return Poll::Ready(if !io.rbuf.is_empty() || *served == 0 {
                        Wait::Timeout
                    } else {
                        Wait::Close
                    });
                }
                // Re-armed and polled again, so that it wakes us.
                tick.as_mut()
                    .reset(tokio::time::Instant::now() + *granularity);
                *tick_armed = false;
            }
            Poll::Pending
        })
        .await
    }

    /// Answers a refused head and closes.
    async fn refuse(&mut self, status: StatusCode) {
        let mut out = BytesMut::with_capacity(256);
        put_status_line(&mut out, status);
        let text = format!(
            "meshgate: {}",
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        );
        put_header(&mut out, b"content-type", b"text/plain");
        put_header(
            &mut out,
            b"content-length",
            (text.len() + 1).to_string().as_bytes(),
        );
        put_header(&mut out, b"connection", b"close");
        put_header(&mut out, b"date", date().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(text.as_bytes());
        out.put_u8(b'\n');
        if write_all(&mut self.slot, &out).await.is_ok() {
            let _ = flush(&mut self.slot).await;
            self.linger().await;
        }
    }

    /// Half-closes and reads what the client still sends for a moment, so
    /// that the last response is not destroyed by a reset.
    async fn linger(&mut self) {
        let shared = &mut self.slot;
        let _ = poll_fn(|cx| Pin::new(&mut shared.io().io).poll_shutdown(cx)).await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut total = 0usize;
            while total < 1 << 20 {
                let r = poll_fn(|cx| {
                    let mut io = shared.io();
                    io.rbuf.clear();
                    io.poll_fill(cx)
                })
                .await;
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }

    /// One request and its response.
    async fn exchange(&mut self, head: Head) -> io::Result<Next> {
        let Head {
            req,
            framing,
            keep_alive,
            http10,
            expect_continue,
            upgrade,
        } = head;
        let head_only = req.method() == Method::HEAD;
        let (mut parts, ()) = req.into_parts();
        self.has_body = framing != Framing::Length(0);
        let body = if !self.has_body {
            empty_body()
        } else {
            let d = Decoder::new(framing);
            let size = d.exact_remaining();
            let mut io = self.slot.io();
            io.body = Some(d);
            io.continue_owed = expect_continue.then_some(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
            drop(io);
            box_body(RequestBody {
                shared: self.slot.lend(),
                size,
            })
        };
        let upgrade_tx = upgrade.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel::<Box<dyn AsyncIo>>();
            parts.extensions.insert(Upgrade::new(Box::pin(async move {
                rx.await
                    .map_err(|_| io::Error::other("the response did not switch protocols"))
            })));
            tx
        });
        // The overload manager's body budget, when configured: the body is
        // read ahead into counted memory (an upload to an upstream that
        // never reads is held here, visible, and the largest is reset).
        let (body, held) = meshgate_core::overload::buffer::track(body);
        let req = Request::from_parts(parts, body);
        let exchange = self.handler.handle(
            req,
            StreamInfo::new(self.info.clone(), "http1").with_traits(super::server::HTTP1_TRAITS),
        );
        let resp = match held {
            None => exchange.await,
            Some(h) => meshgate_core::overload::buffer::guard(h, exchange).await,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(match upgrade_tx {
                Some(tx) => Next::Switch(resp, tx),
                // A 101 the client did not ask for cannot be relayed.
                None => Next::Close,
            });
        }
        // The overload manager's budget: the response body is read ahead
        // into counted memory while the client reads slowly.
        let resp = meshgate_core::overload::buffer::track_response(resp);
        Ok(
            match self.respond(resp, keep_alive, http10, head_only).await? {
                true => Next::KeepAlive,
                false => Next::Close,
            },
        )
    }

    /// Writes the response; `Ok(true)` if the connection can serve another.
    async fn respond(
        &mut self,
        resp: Response,
        keep_alive: bool,
        http10: bool,
        head_only: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        // Retired or draining: this response is the connection's last,
        // unless a hot upgrade migrates the connection once it is idle
        // (plain TCP only: the others cannot move).
        let notice = self.notices.current();
        let migrates = notice == Some(GoAway::Drain)
            && self.info.tls.is_none()
            && meshgate_core::upgrade::migrate::open();
        let mut close = !keep_alive
            || (notice.is_some() && !migrates)
            || meshgate_core::overload::keepalive_disabled();
        // A body the client is still sending is drained only when short
        // and already on its way.
        if self.has_body {
            let io = self.slot.io();
            if let Some(d) = &io.body {
                let short = d.exact_remaining().is_some_and(|n| n <= DRAIN_LIMIT);
                // meshgate's own answer (a timeout, a limit) to a request
                // whose body is still coming: close rather than wait for
                // it (a slowly sent body would hold the client long past
                // the answer). A body already read in is drained.
                let buffered = d
                    .exact_remaining()
                    .is_some_and(|n| n <= io.rbuf.len() as u64);
                let local = parts
                    .extensions
                    .get::<meshgate_core::stream::LocalReason>()
                    .is_some();
                if !short || io.continue_owed.is_some() || (local && !buffered) {
                    close = true;
                }
            }
            if io.body_failed {
                close = true;
            }
        }
        let mut content_length: Option<u64> = None;
        let mut out = std::mem::take(&mut self.wbuf);
        out.clear();
        if out.capacity() == 0 {
            out.reserve(WRITE_SIZE);
        }
        put_status_line(&mut out, status);
        let mut has_date = false;
        for (k, v) in &parts.headers {
            match *k {
                http::header::CONNECTION => {
                    if v.as_bytes()
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    {
                        close = true;
                    }
                    continue;
                }
                http::header::TRANSFER_ENCODING => continue,
                http::header::CONTENT_LENGTH => {
                    content_length = v.to_str().ok().and_then(|s| s.trim().parse().ok());
                }
                http::header::DATE => has_date = true,
                _ => {}
            }
            put_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
        }
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // Transfer codings an upstream applied (`gzip, chunked`) go on, in
        // chunked framing (forward answers 502 to an HTTP/1.0 client).
        let codings = parts
            .extensions
            .get::<meshgate_core::body::TransferCodings>();
        let mode = if bodiless || head_only {
            Out::None
        } else if let Some(c) = codings.filter(|_| !http10) {
            out.put_slice(b"transfer-encoding: ");
            out.put_slice(c.0.as_bytes());
            out.put_slice(b", chunked\r\n");
            Out::Chunked
        } else if let Some(n) = content_length {
            Out::Length(n)
        } else if let Some(n) = body.size_hint().exact() {
            let _ = write!(out, "content-length: {n}\r\n");
            Out::Length(n)
        } else if !http10 {
            put_header(&mut out, b"transfer-encoding", b"chunked");
            Out::Chunked
        } else {
            close = true;
            Out::UntilClose
        };
        if !has_date {
            put_header(&mut out, b"date", date().as_bytes());
        }
        if close {
            put_header(&mut out, b"connection", b"close");
        } else if http10 {
            put_header(&mut out, b"connection", b"keep-alive");
        }
        out.put_slice(b"\r\n");
        let r = self.write_body(&mut out, &mut body, mode).await;
        out.clear();
        self.wbuf = out;
        let complete = r?;
        if close || !complete {
            self.linger_if_unread().await;
            return Ok(false);
        }
        // The request body must be consumed before the next head.
        if !self.has_body {
            return Ok(true);
        }
        self.finish_request_body().await
    }

    /// Streams the body after the head in `out`; `Ok(false)` if it ended
    /// short of its announced length (the connection must close).
    async fn write_body(
        &mut self,
        out: &mut BytesMut,
        body: &mut meshgate_core::stream::Body,
        mode: Out,
    ) -> io::Result<bool> {
        if mode == Out::None {
            write_flush(&mut self.slot, out).await?;
            return Ok(true);
        }
        let mut written: u64 = 0;
        let mut trailers_sent = false;
        loop {
            // Gather what is ready; write before waiting for more.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !out.is_empty() {
                        write_flush(&mut self.slot, out).await?;
                        out.clear();
                    }
                    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
            let Some(frame) = frame else { break };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(conn = self.info.id, error = %e, "response body failed");
                    // The client sees the body cut short: flush what we
                    // have and close.
                    let _ = write_all(&mut self.slot, out).await;
                    return Ok(false);
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    let data = match mode {
                        Out::Length(n) => {
                            let room = n.saturating_sub(written);
                            if room == 0 {
                                continue;
                            }
                            data.slice(..(data.len() as u64).min(room) as usize)
                        }
                        _ => data,
                    };
                    written += data.len() as u64;
                    if mode == Out::Chunked {
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                    if data.len() >= COPY_LIMIT {
                        write_all(&mut self.slot, out).await?;
                        out.clear();
                        write_all(&mut self.slot, &data).await?;
                    } else {
                        out.put_slice(&data);
                    }
                    if mode == Out::Chunked {
                        out.put_slice(b"\r\n");
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers()
                        && mode == Out::Chunked
                    {
                        out.put_slice(b"0\r\n");
                        for (k, v) in &t {
                            put_header(out, k.as_str().as_bytes(), v.as_bytes());
                        }
                        out.put_slice(b"\r\n");
                        trailers_sent = true;
                    }
                }
            }
            if out.len() >= WRITE_BATCH {
                write_all(&mut self.slot, out).await?;
                out.clear();
            }
            if trailers_sent || body.is_end_stream() {
                break;
            }
        }
        if mode == Out::Chunked && !trailers_sent {
            out.put_slice(b"0\r\n\r\n");
        }
        write_flush(&mut self.slot, out).await?;
        Ok(match mode {
            Out::Length(n) => written == n,
            _ => true,
        })
    }

    /// After the last response: if the client is still sending, let it
    /// finish briefly so the response is not destroyed by a reset.
    async fn linger_if_unread(&mut self) {
        let unread = {
            let io = self.slot.io();
            // After a framing error nothing tells where the client's bytes
            // end: it may still be sending.
            io.body.is_some() || io.body_failed || !io.rbuf.is_empty()
        };
        if unread {
            self.linger().await;
        }
    }

    /// Reads and drops what is left of the request body (bounded by
    /// `DRAIN_LIMIT` and the header timeout); `Ok(false)` if the
    /// connection cannot be reused.
    async fn finish_request_body(&mut self) -> io::Result<bool> {
        if !self.slot.reclaim() {
            // Someone still holds the request body: it may yet read it.
            return Ok(false);
        }
        let shared = &mut self.slot;
        let r = tokio::time::timeout(
            self.opts.request_headers_timeout,
            poll_fn(|cx| {
                let mut guard = shared.io();
                let io = &mut *guard;
                loop {
                    if io.body_failed {
                        return Poll::Ready(false);
                    }
                    let Some(d) = io.body.as_mut() else {
                        return Poll::Ready(true);
                    };
                    match d.decode(&mut io.rbuf, io.eof) {
                        Ok(Decoded::Data(_)) | Ok(Decoded::Trailers(_)) => {}
                        Ok(Decoded::End) => io.body = None,
                        Ok(Decoded::NeedMore) => match ready!(io.poll_fill(cx)) {
                            Ok(_) => {}
                            Err(_) => return Poll::Ready(false),
                        },
                        Err(_) => return Poll::Ready(false),
                    }
                }
            }),
        )
        .await;
        Ok(r.unwrap_or(false))
    }
}

/// Writes a `101` and hands the byte stream over to the tunnel.
async fn switch(
    mut slot: Slot,
    resp: Response,
    tx: tokio::sync::oneshot::Sender<Box<dyn AsyncIo>>,
) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(256);
    put_status_line(&mut out, resp.status());
    for (k, v) in resp.headers() {
        put_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
    }
    out.put_slice(b"\r\n");
    write_all(&mut slot, &out).await?;
    flush(&mut slot).await?;
    if !slot.reclaim() {
        return Err(io::Error::other("request body still held"));
    }
    let Slot::Own(io) = slot else {
        unreachable!("reclaimed")
    };
    let mut stream = io.io;
    stream.unread(io.rbuf.freeze());
    let _ = tx.send(Box::new(stream));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim `parse_head`'s unchecked header values rest on: every
    /// byte httparse lets into a value is one a `HeaderValue` allows, and
    /// every other byte refuses the head. (Debug builds also check each
    /// unchecked value.)
    #[test]
    fn header_values_hold_only_the_bytes_a_header_value_allows() {
        let opts = ServerOptions::default();
        for b in 0..=255u8 {
            if matches!(b, b'\r' | b'\n') {
                continue;
            }
            let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-V: a".to_vec();
            head.push(b);
            head.extend_from_slice(b"b\r\n\r\n");
            let mut buf = BytesMut::from(&head[..]);
            let allowed = HeaderValue::from_bytes(&[b'a', b, b'b']).is_ok();
            match parse_head(&mut buf, &opts) {
                Ok(Some(h)) => {
                    assert!(allowed, "byte {b:#04x} accepted");
                    assert_eq!(h.req.headers()["x-v"].as_bytes(), [b'a', b, b'b']);
                }
                Ok(None) => panic!("byte {b:#04x}: head incomplete"),
                Err(_) => assert!(!allowed, "byte {b:#04x} refused"),
            }
        }
    }
}
