//! Frame-level flood guard for downstream HTTP/2 connections.
//!
//! `H2Guard` sits between the socket and hyper/h2. It follows the frame
//! boundaries of both directions by reading only the 9-byte frame headers
//! (RFC 9113 section 4.1) and skipping payloads without touching them, and
//! counts, per connection, the frames that cost meshgate work without
//! doing any for the client: PING and SETTINGS floods, PRIORITY and
//! WINDOW_UPDATE floods, runs of empty frames. When a client crosses a
//! limit, the guard stops feeding h2 (the offending read is withheld),
//! waits for h2's current outgoing frame to end, writes
//! GOAWAY(ENHANCE_YOUR_CALM) with the highest client stream id h2 has
//! seen, half-closes, drains what the client still sends for a moment (so
//! the GOAWAY is not lost to a TCP reset) and ends the connection.
//!
//! Why hand-written: the h2 crate answers rapid reset, CONTINUATION floods
//! and HPACK bombs itself, but PING and SETTINGS floods only meet
//! back-pressure (h2 stops reading while its ACKs are unsent), and it has
//! no hook to count inbound control frames or to send a GOAWAY with a
//! reason of our choosing. No maintained crate does this as an I/O layer,
//! and it must cost next to nothing on the hot path: the work here is a
//! few integer operations per frame, and none per payload byte.
//!
//! The limits follow Envoy's HTTP/2 protocol options where it has one
//! (PRIORITY per stream, WINDOW_UPDATE per DATA frame sent, consecutive
//! empty frames); PING and SETTINGS are counted over a sliding window.
//!
//! The guard also bounds a request's header block by
//! `request_headers_timeout`: a HEADERS frame whose block (its payload and
//! CONTINUATION frames up to END_HEADERS) is not complete in time gets
//! GOAWAY(PROTOCOL_ERROR) naming the last complete stream, as nginx does
//! on a header read timeout. A block in progress blocks the whole
//! connection (no other frame may come between), so the connection, not
//! only the stream, ends.

use serde::{Deserialize, Deserializer};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// After a violation, how long the guard waits for h2 to finish its
/// current frame and for the GOAWAY to go out, then drains what the client
/// still sends before closing. A client that does not read cannot hold
/// the connection longer than this.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `codec_options.http2.flood`: per-connection limits on frames that make
/// meshgate work without a request behind them. A client over a limit gets
/// GOAWAY(ENHANCE_YOUR_CALM) and the connection is closed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodOptions {
    /// The sliding window over which PING and SETTINGS frames are counted.
    #[serde(default = "default_window", deserialize_with = "positive_duration")]
    pub window: Duration,
    /// PING frames (not ACKs) per window. Each HEADERS or DATA frame
    /// meshgate sends forgives one (gRPC clients ping as data arrives).
    #[serde(default = "default_control")]
    pub max_inbound_ping_frames: u32,
    /// SETTINGS frames (not ACKs) per window.
    #[serde(default = "default_control")]
    pub max_inbound_settings_frames: u32,
    /// PRIORITY frames per stream the client opened (plus one stream).
    #[serde(default = "default_priority")]
    pub max_inbound_priority_frames_per_stream: u32,
    /// WINDOW_UPDATE frames per DATA frame meshgate sent (two per stream
    /// opened and one more are always allowed).
    #[serde(default = "default_window_update")]
    pub max_inbound_window_update_frames_per_data_frame_sent: u32,
    /// HEADERS, CONTINUATION and DATA frames in a row with an empty
    /// payload and no END_STREAM.
    #[serde(default = "default_empty")]
    pub max_consecutive_inbound_frames_with_empty_payload: u32,
}

impl Default for FloodOptions {
    fn default() -> Self {
        Self {
            window: default_window(),
            max_inbound_ping_frames: default_control(),
            max_inbound_settings_frames: default_control(),
            max_inbound_priority_frames_per_stream: default_priority(),
            max_inbound_window_update_frames_per_data_frame_sent: default_window_update(),
            max_consecutive_inbound_frames_with_empty_payload: default_empty(),
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_control() -> u32 {
    100
}
fn default_priority() -> u32 {
    100
}
fn default_window_update() -> u32 {
    10
}
fn default_empty() -> u32 {
    1
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v: Duration = humantime_serde::deserialize(d)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom("must be more than 0s"));
    }
    Ok(v)
}

/// Which limit a client crossed (the `flood` label and the GOAWAY's
/// debug data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flood {
    Ping,
    Settings,
    Priority,
    WindowUpdate,
    EmptyFrames,
    /// Not a flood: a header block not completed within
    /// `request_headers_timeout`.
    HeaderTimeout,
}

impl Flood {
    fn label(self) -> &'static str {
        match self {
            Flood::Ping => "ping",
            Flood::Settings => "settings",
            Flood::Priority => "priority",
            Flood::WindowUpdate => "window_update",
            Flood::EmptyFrames => "empty_frames",
            Flood::HeaderTimeout => "header_timeout",
        }
    }
}

/// A frame header (RFC 9113 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    fn parse(b: &[u8; 9]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Follows frame boundaries in one direction across arbitrary splits of
/// the byte stream. Payloads are skipped by count, never looked at.
#[derive(Debug, Default)]
struct Scanner {
    head: [u8; 9],
    have: usize,
    skip: usize,
}

impl Scanner {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Bytes left before the next frame boundary that are known now: the
    /// rest of a split header, or the rest of the payload.
    fn to_boundary(&self) -> usize {
        if self.have > 0 {
            9 - self.have
        } else {
            self.skip
        }
    }

    /// Calls `on` for every frame header that completes in `data`; stops
    /// at the first `Err` (the scanner state is then meaningless).
    fn scan<E>(
        &mut self,
        mut data: &[u8],
        mut on: impl FnMut(Head) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let head = if self.have == 0
                && let Some((whole, rest)) = data.split_first_chunk::<9>()
            {
                data = rest;
                Head::parse(whole)
            } else {
                let n = (9 - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < 9 {
                    break;
                }
                self.have = 0;
                Head::parse(&self.head)
            };
            self.skip = head.len as usize;
            on(head)?;
        }
        Ok(())
    }
}

/// PING or SETTINGS frames counted over a sliding window: the previous
/// window's count weighted by how much of it still overlaps, plus the
/// current one's.
#[derive(Debug)]
struct Rate {
    start: Instant,
    prev: u32,
    cur: u32,
}

impl Rate {
    fn new(now: Instant) -> Self {
        Rate {
            start: now,
            prev: 0,
            cur: 0,
        }
    }

    /// Counts one frame at `now`; true when the estimate exceeds `limit`.
    fn hit(&mut self, now: Instant, window: Duration, limit: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= window.saturating_mul(2) {
            self.prev = 0;
            self.cur = 0;
            self.start = now;
        } else if elapsed >= window {
            self.prev = self.cur;
            self.cur = 0;
            self.start += window;
        }
        self.cur = self.cur.saturating_add(1);
        let into = now.saturating_duration_since(self.start).as_secs_f64() / window.as_secs_f64();
        let estimate = f64::from(self.prev) * (1.0 - into).max(0.0) + f64::from(self.cur);
        estimate > f64::from(limit)
    }

    fn forgive_one(&mut self) {
        self.cur = self.cur.saturating_sub(1);
    }
}

/// The counts of one connection.
#[derive(Debug)]
struct Counts {
    opts: FloodOptions,
    /// Highest client stream id in frames delivered to h2.
    last_stream: u32,
    /// Highest client stream id in the read being scanned.
    scan_stream: u32,
    streams_opened: u64,
    data_sent: u64,
    priority: u64,
    window_updates: u64,
    empty_run: u32,
    ping: Rate,
    settings: Rate,
    /// A header block (HEADERS, CONTINUATION up to END_HEADERS) is open.
    header_open: bool,
    /// The last HEADERS or CONTINUATION seen carries END_HEADERS (the
    /// block closes once its payload is read).
    header_ends: bool,
    header_stream: u32,
    /// Highest client stream whose header block completed.
    headers_done: u32,
}

impl Counts {
    fn new(opts: FloodOptions) -> Self {
        let now = Instant::now();
        Counts {
            opts,
            last_stream: 0,
            scan_stream: 0,
            streams_opened: 0,
            data_sent: 0,
            priority: 0,
            window_updates: 0,
            empty_run: 0,
            ping: Rate::new(now),
            settings: Rate::new(now),
            header_open: false,
            header_ends: false,
            header_stream: 0,
            headers_done: 0,
        }
    }

    /// The open header block is complete (its END_HEADERS frame was read
    /// to its end): no longer timed.
    fn header_block_read(&mut self) {
        if self.header_open && self.header_ends {
            self.header_open = false;
            self.headers_done = self.headers_done.max(self.header_stream);
        }
    }

    /// One frame from the client.
    fn inbound(&mut self, h: Head) -> Result<(), Flood> {
        // A new frame begins: the previous one was read whole.
        self.header_block_read();
        if h.kind == HEADERS || h.kind == CONTINUATION {
            self.header_open = true;
            self.header_ends = h.flags & FLAG_END_HEADERS != 0;
            self.header_stream = h.stream;
        }
        let o = &self.opts;
        match h.kind {
            DATA | HEADERS | CONTINUATION => {
                if h.kind == HEADERS && h.stream > self.scan_stream && h.stream & 1 == 1 {
                    self.scan_stream = h.stream;
                    self.streams_opened += 1;
                }
                // An empty CONTINUATION has no END_STREAM flag (0x1 is
                // not defined for it), so it always counts as empty.
                let ends = h.kind != CONTINUATION && h.flags & FLAG_END_STREAM != 0;
                if h.len == 0 && !ends {
                    self.empty_run += 1;
                    if self.empty_run > o.max_consecutive_inbound_frames_with_empty_payload {
                        return Err(Flood::EmptyFrames);
                    }
                } else {
                    self.empty_run = 0;
                }
            }
            PRIORITY => {
                self.priority += 1;
                let allowed = u64::from(o.max_inbound_priority_frames_per_stream)
                    .saturating_mul(1 + self.streams_opened);
                if self.priority > allowed {
                    return Err(Flood::Priority);
                }
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let per_data = u64::from(o.max_inbound_window_update_frames_per_data_frame_sent);
                let allowed = per_data
                    .saturating_mul(self.data_sent)
                    .saturating_add(self.streams_opened)
                    .saturating_mul(2)
                    .saturating_add(1);
                if self.window_updates > allowed {
                    return Err(Flood::WindowUpdate);
                }
            }
            PING if h.flags & FLAG_ACK == 0
                && self
                    .ping
                    .hit(Instant::now(), o.window, o.max_inbound_ping_frames) =>
            {
                return Err(Flood::Ping);
            }
            SETTINGS
                if h.flags & FLAG_ACK == 0
                    && self.settings.hit(
                        Instant::now(),
                        o.window,
                        o.max_inbound_settings_frames,
                    ) =>
            {
                return Err(Flood::Settings);
            }
            _ => {}
        }
        Ok(())
    }

    /// One frame h2 wrote.
    fn outbound(&mut self, h: Head) {
        match h.kind {
            DATA => {
                self.data_sent += 1;
                self.ping.forgive_one();
            }
            HEADERS => self.ping.forgive_one(),
            _ => {}
        }
    }
}

/// Where the connection is once a limit was crossed.
#[derive(Debug)]
enum Close {
    /// Waiting for h2's current outgoing frame to end.
    Boundary,
    /// Writing our GOAWAY (bytes, written so far).
    Goaway(Vec<u8>, usize),
    /// Pushing it out (TLS buffers).
    Flush,
    /// Half-closing.
    Shutdown,
    /// Reading and dropping what the client still sends.
    Drain,
    /// Over: every I/O call fails so that h2 ends the connection.
    Done,
}

struct Tripped {
    flood: Flood,
    close: Close,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The guard around a downstream HTTP/2 connection (server side).
pub(crate) struct H2Guard<T> {
    io: T,
    listener: String,
    /// Preface bytes still to check; a wrong preface turns the guard off
    /// (h2 refuses the connection itself).
    preface_left: usize,
    off: bool,
    read: Scanner,
    write: Scanner,
    counts: Counts,
    /// h2 already sent a GOAWAY of its own: we do not send a second one.
    h2_goaway: bool,
    /// h2 wrote something (its SETTINGS come first).
    wrote: bool,
    tripped: Option<Box<Tripped>>,
    /// `request_headers_timeout`: how long a header block may stay open.
    header_timeout: Option<Duration>,
    /// Armed while a header block is open; allocated the first time one
    /// spans reads.
    header_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    header_armed: bool,
}

impl<T> H2Guard<T> {
    pub(crate) fn new(io: T, opts: FloodOptions, listener: String) -> Self {
        H2Guard {
            io,
            listener,
            preface_left: super::H2_PREFACE.len(),
            off: false,
            read: Scanner::default(),
            write: Scanner::default(),
            counts: Counts::new(opts),
            h2_goaway: false,
            wrote: false,
            tripped: None,
            header_timeout: None,
            header_deadline: None,
            header_armed: false,
        }
    }

    /// Bounds every header block by `timeout` (zero: no bound).
    pub(crate) fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// Arms or disarms the header deadline after a read.
    fn time_header_block(&mut self) {
        let Some(timeout) = self.header_timeout else {
            return;
        };
        if !self.counts.header_open {
            self.header_armed = false;
        } else if !self.header_armed {
            self.header_armed = true;
            let at = tokio::time::Instant::now() + timeout;
            match self.header_deadline.as_mut() {
                Some(d) => d.as_mut().reset(at),
                None => self.header_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    /// Scans bytes read from the client; `Err` when they cross a limit.
    fn on_read(&mut self, mut data: &[u8]) -> Result<(), Flood> {
        if self.off {
            return Ok(());
        }
        if self.preface_left > 0 {
            let at = super::H2_PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(data.len());
            if data[..n] != super::H2_PREFACE[at..at + n] {
                self.off = true;
                return Ok(());
            }
            self.preface_left -= n;
            data = &data[n..];
        }
        let counts = &mut self.counts;
        self.read.scan(data, |h| counts.inbound(h))?;
        counts.last_stream = counts.scan_stream;
        if self.read.at_boundary() {
            counts.header_block_read();
        }
        self.time_header_block();
        Ok(())
    }

    /// Follows frames h2 wrote (`n` bytes from the front of `bufs`).
    fn on_write(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = b.len().min(n);
            self.scan_written(&b[..k]);
            n -= k;
        }
    }

    fn scan_written(&mut self, data: &[u8]) {
        self.wrote |= !data.is_empty();
        if self.off {
            return;
        }
        let counts = &mut self.counts;
        let goaway = &mut self.h2_goaway;
        let _ = self.write.scan(data, |h| {
            if h.kind == GOAWAY {
                *goaway = true;
            }
            counts.outbound(h);
            Ok::<(), ()>(())
        });
    }

    fn trip(&mut self, flood: Flood) {
        if flood == Flood::HeaderTimeout {
            tracing::debug!(listener = %self.listener, stream = self.counts.header_stream, "http2 header block timed out: GOAWAY(PROTOCOL_ERROR)");
            metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL, "listener" => self.listener.clone(), "codec" => "http2", "reason" => "header_timeout").increment(1);
        } else {
            tracing::debug!(listener = %self.listener, flood = flood.label(), last_stream = self.counts.last_stream, "http2 flood: GOAWAY(ENHANCE_YOUR_CALM)");
            metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL, "listener" => self.listener.clone(), "codec" => "http2", "reason" => "enhance_your_calm").increment(1);
            metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_FLOOD_TOTAL, "listener" => self.listener.clone(), "flood" => flood.label()).increment(1);
        }
        self.tripped = Some(Box::new(Tripped {
            flood,
            close: Close::Boundary,
            deadline: Box::pin(tokio::time::sleep(CLOSE_GRACE)),
        }));
    }
}

/// GOAWAY(ENHANCE_YOUR_CALM) with the flood's name as debug data; behind
/// an empty SETTINGS frame when h2 has not written its own yet (a server's
/// first frame must be SETTINGS, RFC 9113 section 3.4).
fn goaway_frame(settings_first: bool, last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let len = 8 + debug.len() as u32;
    let mut f = Vec::with_capacity(18 + len as usize);
    if settings_first {
        f.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
    }
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(debug);
    f
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "http2 flood: GOAWAY(ENHANCE_YOUR_CALM) sent",
    )
}

impl<T: AsyncRead + AsyncWrite + Unpin> H2Guard<T> {
    /// Drives the close after a violation. `Ready(Err)` when it is over;
    /// `Pending` while waiting (the deadline is always armed).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(t) = self.tripped.as_mut() else {
            return Poll::Pending;
        };
        if t.deadline.as_mut().poll(cx).is_ready() {
            t.close = Close::Done;
        }
        loop {
            match &mut t.close {
                Close::Boundary => {
                    if !self.write.at_boundary() {
                        // h2 finishes its frame through poll_write.
                        return Poll::Pending;
                    }
                    t.close = if self.h2_goaway {
                        Close::Shutdown
                    } else {
                        // A timed-out header block's stream was never
                        // started: the GOAWAY names the last complete one.
                        let (last, code) = if t.flood == Flood::HeaderTimeout {
                            (self.counts.headers_done, PROTOCOL_ERROR)
                        } else {
                            (self.counts.last_stream, ENHANCE_YOUR_CALM)
                        };
                        Close::Goaway(
                            goaway_frame(!self.wrote, last, code, t.flood.label().as_bytes()),
                            0,
                        )
                    };
                }
                Close::Goaway(frame, at) => {
                    match Pin::new(&mut self.io).poll_write(cx, &frame[*at..]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => t.close = Close::Done,
                        Poll::Ready(Ok(n)) => {
                            *at += n;
                            if *at == frame.len() {
                                t.close = Close::Flush;
                            }
                        }
                    }
                }
                Close::Flush => match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => t.close = Close::Shutdown,
                    Poll::Ready(Err(_)) => t.close = Close::Done,
                },
                Close::Shutdown => match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => t.close = Close::Drain,
                    Poll::Ready(Err(_)) => t.close = Close::Done,
                },
                Close::Drain => {
                    // At most 64 KiB per poll, then yield: a client that
                    // keeps sending cannot pin the worker thread.
                    let mut scratch = [0u8; 4096];
                    for _ in 0..16 {
                        let mut rb = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                            Poll::Ready(_) => {
                                t.close = Close::Done;
                                break;
                            }
                        }
                    }
                    if !matches!(t.close, Close::Done) {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Close::Done => return Poll::Ready(aborted()),
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.tripped.is_none()
            && me.header_armed
            && let Some(d) = me.header_deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            me.trip(Flood::HeaderTimeout);
        }
        if me.tripped.is_none() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
            let flood = me.on_read(&buf.filled()[before..]);
            match flood {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(flood) => {
                    // Withhold the read: h2 never sees the flood.
                    buf.set_filled(before);
                    me.trip(flood);
                }
            }
        }
        // Never `Ready(Ok)` from here: with nothing read that means EOF.
        me.poll_close(cx).map(Err)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.tripped.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.tripped.is_some() {
            // Finish our close first; it half-closes itself.
            ready!(me.poll_close(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> H2Guard<T> {
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.tripped.is_none() {
            let n = ready!(if bufs.len() == 1 {
                Pin::new(&mut self.io).poll_write(cx, &bufs[0])
            } else {
                Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            })?;
            self.on_write(bufs, n);
            return Poll::Ready(Ok(n));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mid_frame = matches!(
            self.tripped.as_deref(),
            Some(Tripped {
                close: Close::Boundary,
                ..
            })
        ) && !self.write.at_boundary();
        if mid_frame {
            // Let h2 finish the frame it started, not a byte more.
            let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
                return Poll::Ready(Ok(0));
            };
            let k = first.len().min(self.write.to_boundary());
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &first[..k]))?;
            self.scan_written(&first[..n]);
            if !self.write.at_boundary() {
                return Poll::Ready(Ok(n));
            }
            // The boundary is reached: the GOAWAY goes next.
            if let Poll::Ready(e) = self.poll_close(cx) {
                return Poll::Ready(if n > 0 { Ok(n) } else { Err(e) });
            }
            return Poll::Ready(Ok(n));
        }
        // After the boundary nothing h2 writes reaches the client.
        match self.poll_close(cx) {
            Poll::Ready(e) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Ready(Ok(total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn scanner_follows_frames_across_any_split() {
        let mut bytes = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
        bytes.extend(frame(HEADERS, 0x5, 1, b"abc"));
        bytes.extend(frame(DATA, 0, 1, &[7u8; 1000]));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        bytes.extend(frame(DATA, 1, 3, b""));
        let want = vec![
            (SETTINGS, 6, 0),
            (HEADERS, 3, 1),
            (DATA, 1000, 1),
            (PING, 8, 0),
            (DATA, 0, 3),
        ];
        for chunk in [1, 2, 5, 8, 9, 10, 17, 999, bytes.len()] {
            let mut s = Scanner::default();
            let mut got = Vec::new();
            for part in bytes.chunks(chunk) {
                s.scan(part, |h| {
                    got.push((h.kind, h.len, h.stream));
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(s.at_boundary());
        }
        // Mid-header and mid-payload: the distance to the next boundary.
        let mut s = Scanner::default();
        s.scan(&bytes[..4], |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(s.to_boundary(), 5);
        s.scan(&bytes[4..11], |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(s.to_boundary(), 4);
    }

    fn head(kind: u8, flags: u8, stream: u32, len: u32) -> Head {
        Head {
            len,
            kind,
            flags,
            stream,
        }
    }

    #[test]
    fn limits() {
        let opts = FloodOptions::default();
        // PING: 100 per window; ACKs are free; each DATA or HEADERS sent
        // forgives one.
        let mut c = Counts::new(opts.clone());
        for _ in 0..100 {
            c.inbound(head(PING, 0, 0, 8)).unwrap();
            c.inbound(head(PING, FLAG_ACK, 0, 8)).unwrap();
        }
        c.outbound(head(HEADERS, 4, 1, 10));
        c.inbound(head(PING, 0, 0, 8)).unwrap();
        assert_eq!(c.inbound(head(PING, 0, 0, 8)), Err(Flood::Ping));
        // SETTINGS: 100 per window.
        let mut c = Counts::new(opts.clone());
        for _ in 0..100 {
            c.inbound(head(SETTINGS, 0, 0, 6)).unwrap();
            c.inbound(head(SETTINGS, FLAG_ACK, 0, 0)).unwrap();
        }
        assert_eq!(c.inbound(head(SETTINGS, 0, 0, 6)), Err(Flood::Settings));
        // PRIORITY: 100 * (1 + streams opened).
        let mut c = Counts::new(opts.clone());
        c.inbound(head(HEADERS, 5, 1, 10)).unwrap();
        c.inbound(head(HEADERS, 5, 1, 10)).unwrap(); // trailers: no new stream
        for _ in 0..200 {
            c.inbound(head(PRIORITY, 0, 1, 5)).unwrap();
        }
        assert_eq!(c.inbound(head(PRIORITY, 0, 1, 5)), Err(Flood::Priority));
        // WINDOW_UPDATE: 1 + 2 * (streams + 10 * DATA frames sent).
        let mut c = Counts::new(opts.clone());
        c.inbound(head(WINDOW_UPDATE, 0, 0, 4)).unwrap();
        assert_eq!(
            c.inbound(head(WINDOW_UPDATE, 0, 0, 4)),
            Err(Flood::WindowUpdate)
        );
        let mut c = Counts::new(opts.clone());
        c.inbound(head(HEADERS, 5, 1, 10)).unwrap();
        c.outbound(head(DATA, 0, 1, 100));
        for _ in 0..23 {
            c.inbound(head(WINDOW_UPDATE, 0, 1, 4)).unwrap();
        }
        assert_eq!(
            c.inbound(head(WINDOW_UPDATE, 0, 0, 4)),
            Err(Flood::WindowUpdate)
        );
        // Empty frames: one in a row is tolerated, END_STREAM is not empty.
        let mut c = Counts::new(opts);
        c.inbound(head(HEADERS, 4, 1, 10)).unwrap();
        c.inbound(head(DATA, 0, 1, 0)).unwrap();
        c.inbound(head(DATA, 0, 1, 5)).unwrap();
        c.inbound(head(DATA, 0, 1, 0)).unwrap();
        c.inbound(head(PING, 0, 0, 8)).unwrap();
        assert_eq!(c.inbound(head(DATA, 0, 1, 0)), Err(Flood::EmptyFrames));
        let mut c = Counts::new(FloodOptions::default());
        for _ in 0..10 {
            c.inbound(head(DATA, FLAG_END_STREAM, 1, 0)).unwrap();
        }
        c.inbound(head(CONTINUATION, 0, 1, 0)).unwrap();
        assert_eq!(
            c.inbound(head(CONTINUATION, 0, 1, 0)),
            Err(Flood::EmptyFrames)
        );
    }

    #[test]
    fn sliding_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut r = Rate::new(t0);
        for _ in 0..10 {
            assert!(!r.hit(t0, w, 10));
        }
        assert!(r.hit(t0, w, 10));
        // Half-way through the next window, half of the last one counts.
        let mut r = Rate::new(t0);
        for _ in 0..10 {
            r.hit(t0, w, 10);
        }
        let t = t0 + Duration::from_secs(15);
        for _ in 0..5 {
            assert!(!r.hit(t, w, 10));
        }
        assert!(r.hit(t, w, 10));
        // Two windows later the past is forgotten.
        let t = t0 + Duration::from_secs(35);
        for _ in 0..10 {
            assert!(!r.hit(t, w, 10));
        }
    }

    #[test]
    fn config() {
        let o: super::super::ServerOptions =
            meshgate_core::config::parse_typed(&serde_json::json!({})).unwrap();
        assert_eq!(o.flood.max_inbound_ping_frames, 100);
        assert_eq!(o.flood.window, Duration::from_secs(10));
        let o: super::super::ServerOptions = meshgate_core::config::parse_typed(
            &serde_json::json!({"flood": {"window": "1m", "max_inbound_settings_frames": 5}}),
        )
        .unwrap();
        assert_eq!(o.flood.window, Duration::from_secs(60));
        assert_eq!(o.flood.max_inbound_settings_frames, 5);
        assert_eq!(o.flood.max_inbound_ping_frames, 100);
        let e = meshgate_core::config::parse_typed::<super::super::ServerOptions>(
            &serde_json::json!({"flood": {"window": "0s"}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "flood.window");
        let e = meshgate_core::config::parse_typed::<super::super::ServerOptions>(
            &serde_json::json!({"flood": {"max_pings": 5}}),
        )
        .unwrap_err();
        assert!(e.message.contains("max_pings"), "{e}");
    }

    /// A real h2 server (hyper) behind the guard, a raw client flooding
    /// PINGs: SETTINGS, then GOAWAY(ENHANCE_YOUR_CALM), then EOF.
    #[tokio::test]
    async fn ping_flood_gets_settings_goaway_and_eof() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let guard = H2Guard::new(server, FloodOptions::default(), "t".into());
        let conn = tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            });
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(guard), svc)
                .await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut out = super::super::H2_PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, b""));
        for _ in 0..500 {
            out.extend(frame(PING, 0, 0, &[0; 8]));
        }
        wr.write_all(&out).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .unwrap();
        let mut frames = Vec::new();
        Scanner::default()
            .scan(&got, |h| {
                frames.push(h);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(frames[0].kind, SETTINGS);
        let last = frames.last().unwrap();
        assert_eq!(last.kind, GOAWAY);
        assert_eq!(&got[got.len() - 4 - 4..got.len() - 4], &[0, 0, 0, 11]);
        assert_eq!(&got[got.len() - 4..], b"ping");
        assert!(frames.iter().all(|h| h.kind != PING), "withheld");
        let r = conn.await.unwrap();
        assert!(r.is_err());
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    /// Arbitrary bytes after a valid preface, in arbitrary splits: the
    /// guard never panics, and its state stays consistent.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let opts = FloodOptions {
                window: Duration::from_nanos(1 + next() % 1000),
                ..FloodOptions::default()
            };
            let mut g = H2Guard::new((), opts, "t".into());
            let mut bytes = super::super::H2_PREFACE.to_vec();
            bytes.extend((0..4096).map(|_| {
                // Mostly small lengths so that many headers are parsed.
                let b = next() as u8;
                if round % 2 == 0 { b % 12 } else { b }
            }));
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + (next() as usize % 300);
                let end = (at + n).min(bytes.len());
                if g.on_read(&bytes[at..end]).is_err() {
                    break;
                }
                g.scan_written(&bytes[at..end]);
                at = end;
            }
        }
        let huge = FloodOptions {
            window: Duration::MAX,
            ..FloodOptions::default()
        };
        let mut c = Counts::new(huge);
        for _ in 0..100 {
            c.inbound(Head {
                len: 8,
                kind: PING,
                flags: 0,
                stream: 0,
            })
            .unwrap();
        }
    }
}
