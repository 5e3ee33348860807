//! Access logs (Envoy's `config.accesslog.v3.AccessLog`): the `proxy`
//! filter's (HCM) `access_log` list and `tcp_proxy`'s. Each log is a sink
//! (a file, stdout or stderr: `writer`), an optional `AccessLogFilter` and
//! a format (crate::format, the engine local replies use too; Envoy's
//! default text format when none is given). meshgate's older
//! `access_log: {path}` is kept as a shorthand for one JSON object per
//! request.
//!
//! An HTTP stream is logged when its response ends (the last body byte
//! sent, or the downstream gone: flag `DC`), so `%BYTES_SENT%`,
//! `%DURATION%` and `%TRAILER(X)%` are known; the line is formatted there
//! and handed to the sink's writer thread (never waiting on the file). A
//! `tcp_proxy` connection is logged when it closes. The router's
//! `upstream_log` uses the same loggers, one entry per upstream try
//! (`log_tries`). Nothing here runs when no access log is configured.

mod otlp;
mod writer;

pub use writer::AccessLog as Writer;

use crate::format::{Ctx, DEFAULT_FORMAT, Filter, Flags, Format, ReqHead, Timing};
use bytes::Bytes;
use http::{HeaderMap, Version};
use http_body::{Frame, SizeHint};
use meshgate_core::BuildError;
use meshgate_core::config::access_log as cfg;
use meshgate_core::stream::{Body, BodyError, Request, Response, StreamInfo, box_body, empty_body};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One compiled access log.
struct Logger {
    sink: Sink,
    filter: Option<Filter>,
}

/// Where a logger's entries go.
enum Sink {
    /// A file, stdout or stderr: one formatted line per entry.
    File { writer: Arc<Writer>, format: Format },
    /// `envoy.access_loggers.open_telemetry`: one OTLP log record per
    /// entry (`otlp`).
    Otlp(otlp::OtlpLogger),
}

/// The access logs of one `proxy` or `tcp_proxy` filter.
pub(crate) struct AccessLogs {
    loggers: Vec<Logger>,
    /// The `{path}` shorthand's writer (one JSON object per request).
    legacy: Option<Arc<Writer>>,
}

fn e(path: &str, msg: impl std::fmt::Display) -> BuildError {
    BuildError::new(path, msg)
}

impl AccessLogs {
    /// Compiles the `proxy` filter's `access_log`; errors name the field
    /// (relative to `access_log`). `ctx` resolves an OpenTelemetry
    /// logger's collector cluster (none: such a logger is refused).
    pub(crate) fn build(
        c: &cfg::AccessLogs,
        ctx: Option<&meshgate_core::network::BuildContext<'_>>,
    ) -> Result<Self, BuildError> {
        match c {
            cfg::AccessLogs::Path(p) => Ok(Self {
                loggers: Vec::new(),
                legacy: Some(
                    Writer::open(&p.path)
                        .map_err(|err| e("path", format!("cannot open '{}': {err}", p.path)))?,
                ),
            }),
            cfg::AccessLogs::List(l) => Self::build_list(l, ctx),
        }
    }

    /// Compiles a list of access logs (`[i]...` in errors).
    pub(crate) fn build_list(
        list: &[cfg::AccessLog],
        ctx: Option<&meshgate_core::network::BuildContext<'_>>,
    ) -> Result<Self, BuildError> {
        let mut loggers = Vec::new();
        for (i, l) in list.iter().enumerate() {
            loggers.push(build_logger(l, &format!("[{i}]"), ctx)?);
        }
        Ok(Self {
            loggers,
            legacy: None,
        })
    }

    /// Writes the line of every log whose filter matches.
    /// Whether a logger reads the upstream connection's local address.
    pub(crate) fn reads_upstream_local(&self) -> bool {
        self.loggers.iter().any(|l| match &l.sink {
            Sink::File { format, .. } => format.reads_upstream_local(),
            Sink::Otlp(o) => o.reads_upstream_local(),
        })
    }

    fn log(&self, ctx: &Ctx<'_>) {
        for l in &self.loggers {
            if l.filter.as_ref().is_none_or(|f| f.matches(ctx)) {
                match &l.sink {
                    Sink::File { writer, format } => writer.log(format.render(ctx)),
                    Sink::Otlp(o) => o.log(ctx),
                }
            }
        }
        if let Some(w) = &self.legacy {
            w.log(legacy_line(ctx));
        }
    }

    /// What the logs need of a request before it is forwarded: its head
    /// (cloned) and a count of its body bytes (the body is wrapped).
    pub(crate) fn begin(&self, req: &mut Request, start: Instant) -> Box<Pending> {
        let count = Arc::new(RequestCount {
            bytes: AtomicU64::new(0),
            done_nanos: AtomicU64::new(0),
            start,
        });
        if http_body::Body::is_end_stream(req.body()) {
            count.finish();
        } else {
            let inner = std::mem::replace(req.body_mut(), empty_body());
            *req.body_mut() = box_body(CountBody {
                inner,
                count: count.clone(),
            });
        }
        Box::new(Pending {
            head: ReqHead::of(req),
            req: req.headers().clone(),
            version: req.version(),
            count,
            response_head: None,
        })
    }

    /// Logs the stream when `resp`'s body ends (or is dropped): the body
    /// is wrapped; the stream's info moves into it.
    pub(crate) fn attach(
        self: &Arc<Self>,
        resp: Response,
        mut pending: Box<Pending>,
        info: StreamInfo,
    ) -> Response {
        pending
            .response_head
            .get_or_insert_with(|| info.start.elapsed());
        let (parts, inner) = resp.into_parts();
        let done = Box::new(Done {
            logs: self.clone(),
            pending,
            info,
            status: parts.status.as_u16(),
            resp: parts.headers.clone(),
        });
        let body = box_body(LogBody {
            inner,
            done: Some(done),
            polled: false,
            sent: 0,
            trailers: None,
        });
        Response::from_parts(parts, body)
    }

    /// The router's `upstream_log`: one entry per upstream try of `info`,
    /// once the stream's response head is known (`resp`: the last try's
    /// response, or the local reply that replaced it). Each entry's
    /// upstream operators, `%RESPONSE_CODE%`, `%RESP(X)%` (a retried
    /// try's own response head), `%DURATION%` (from the try's start to
    /// its end), `%RESPONSE_FLAGS%` (`URX` on the try the retries ran out
    /// on), `%BYTES_SENT%` (the request body sent upstream on the try,
    /// when its length is known) and `%BYTES_RECEIVED%` (the response
    /// body received on the try, as Envoy's upstream stream info counts
    /// it) are the try's; the request operators are the stream's.
    /// The earlier tries are logged now; the last one, when its response
    /// came from upstream, when that body ends (or is dropped): `resp`'s
    /// body is wrapped to count it, and a copy of the stream's info moves
    /// into it.
    pub(crate) fn log_tries(
        self: &Arc<Self>,
        info: &mut StreamInfo,
        up: UpstreamHead,
        resp: Response,
    ) -> Response {
        let Some(tries) = info.upstream_tries.take() else {
            return resp;
        };
        let Some((last, earlier)) = tries.split_last() else {
            return resp;
        };
        for t in earlier {
            self.log_try(info, &up, t, None);
        }
        let streams = last.end.is_some()
            && last.failure.is_none()
            && !http_body::Body::is_end_stream(resp.body());
        if !streams {
            self.log_try(info, &up, last, Some(&resp));
            return resp;
        }
        // The copy leaves out the sampled trace's state (not logged).
        let trace = std::mem::take(&mut info.trace);
        let copy = info.clone();
        info.trace = trace;
        let (parts, inner) = resp.into_parts();
        let entry = Box::new(LastTry {
            logs: self.clone(),
            info: copy,
            up,
            resp: parts.headers.clone(),
            status: parts.status.as_u16(),
            attempt: last.clone(),
        });
        let body = box_body(UpstreamLogBody {
            inner,
            received: 0,
            entry: Some(entry),
        });
        Response::from_parts(parts, body)
    }

    /// Writes the entry of try `t` (one whose body is not counted here:
    /// a retried one, or a last one that failed or had no body). `resp`
    /// is the stream's response when `t` is the last try.
    fn log_try(
        &self,
        info: &StreamInfo,
        up: &UpstreamHead,
        t: &meshgate_core::stream::UpstreamTry,
        resp: Option<&Response>,
    ) {
        // A try still open (e.g. cut by the route timeout) ends here,
        // with the stream's outcome.
        let t = if t.end.is_none() {
            let mut t = t.clone();
            t.end = Some(Instant::now());
            t.status = resp.map(|r| r.status().as_u16());
            t.failure = info.local_reply;
            std::borrow::Cow::Owned(t)
        } else {
            std::borrow::Cow::Borrowed(t)
        };
        let via_upstream = t.failure.is_none();
        let mut ctx = Ctx::new(info);
        ctx.head = &up.head;
        ctx.req = &up.req;
        ctx.version = up.version;
        match resp {
            Some(r) if via_upstream => ctx.resp = r.headers(),
            _ => {
                if let Some(h) = &t.headers {
                    ctx.resp = h;
                }
            }
        }
        ctx.bytes_sent = t.request_bytes.unwrap_or(0);
        ctx.bytes_received = t.response_bytes.unwrap_or(0);
        // No status: a hedged try cancelled before any response (code 0,
        // no details).
        ctx.status = Some(t.status.unwrap_or(0));
        ctx.details = t.failure.or(t.status.map(|_| "via_upstream"));
        ctx.flags = Flags::of_try(&t);
        let head = t.end.map(|e| e.saturating_duration_since(t.start));
        ctx.timing = Timing {
            request_done: None,
            response_head: head,
            done: head,
        };
        ctx.attempt = Some(&*t);
        self.log(&ctx);
    }

    /// Logs a `tcp_proxy` connection that closed.
    pub(crate) fn log_connection(&self, info: &StreamInfo, received: u64, sent: u64) {
        let mut ctx = Ctx::new(info);
        ctx.flags = Flags::of(info, 0);
        ctx.details = info.local_reply;
        ctx.bytes_received = received;
        ctx.bytes_sent = sent;
        ctx.timing.done = Some(info.start.elapsed());
        self.log(&ctx);
    }
}

/// Listeners' own `access_log` (`meshgate_core::listener_log`): the same
/// loggers; an entry has the connection's addresses, `%DURATION%` since
/// the accept, `%RESPONSE_FLAGS%` (`NR` when no filter chain matched) and
/// `%RESPONSE_CODE_DETAILS%` saying why the listener closed it.
pub(crate) struct ListenerLogs;

impl meshgate_core::listener_log::ListenerLogFactory for ListenerLogs {
    fn build(
        &self,
        logs: &[cfg::AccessLog],
    ) -> Result<Arc<dyn meshgate_core::listener_log::ListenerLog>, BuildError> {
        Ok(Arc::new(AccessLogs::build_list(logs, None)?))
    }
}

impl meshgate_core::listener_log::ListenerLog for AccessLogs {
    fn log(&self, info: &StreamInfo, why: meshgate_core::listener_log::ListenerClose) {
        let mut ctx = Ctx::new(info);
        if let Some(f) = why.flag() {
            ctx.flags = Flags::default().with(f);
        }
        ctx.details = Some(why.details());
        ctx.timing.done = Some(info.start.elapsed());
        self.log(&ctx);
    }
}

fn build_logger(
    l: &cfg::AccessLog,
    p: &str,
    ctx: Option<&meshgate_core::network::BuildContext<'_>>,
) -> Result<Logger, BuildError> {
    let t = &l.typed_config;
    let tp = format!("{p}.typed_config");
    let filter = match &l.filter {
        None => None,
        Some(f) => Some(Filter::build(f, &format!("{p}.filter"), &mut false)?),
    };
    if l.name == "envoy.access_loggers.open_telemetry" || l.name == "open_telemetry" {
        let Some(ctx) = ctx else {
            return Err(e(
                &format!("{p}.name"),
                "an OpenTelemetry access log is not supported here (no cluster to export to)",
            ));
        };
        let sink = Sink::Otlp(otlp::OtlpLogger::build(t, &tp, ctx)?);
        return Ok(Logger { sink, filter });
    }
    for (set, f) in [
        (t.grpc_service.is_some(), "grpc_service"),
        (!t.log_name.is_empty(), "log_name"),
        (t.common_config.is_some(), "common_config"),
        (t.body.is_some(), "body"),
        (t.attributes.is_some(), "attributes"),
        (t.resource_attributes.is_some(), "resource_attributes"),
    ] {
        if set {
            return Err(e(
                &format!("{tp}.{f}"),
                "only the OpenTelemetry access logger has this field",
            ));
        }
    }
    let path = match l.name.as_str() {
        "envoy.access_loggers.file" | "file" => match &t.path {
            Some(path) if !path.is_empty() => path.clone(),
            _ => return Err(e(&format!("{tp}.path"), "the file logger needs a path")),
        },
        "envoy.access_loggers.stdout" | "stdout" | "envoy.access_loggers.stderr" | "stderr" => {
            if t.path.is_some() {
                return Err(e(&format!("{tp}.path"), "only the file logger has a path"));
            }
            if l.name.ends_with("stdout") {
                "/dev/stdout".into()
            } else {
                "/dev/stderr".into()
            }
        }
        other => {
            return Err(e(
                &format!("{p}.name"),
                format!(
                    "unknown access logger '{other}' (envoy.access_loggers.file, envoy.access_loggers.stdout, envoy.access_loggers.stderr, envoy.access_loggers.open_telemetry)"
                ),
            ));
        }
    };
    let set = [
        t.log_format.is_some(),
        t.format.is_some(),
        t.json_format.is_some(),
        t.typed_json_format.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        return Err(e(
            &tp,
            "set at most one of log_format, format, json_format, typed_json_format",
        ));
    }
    let format = if let Some(f) = &t.log_format {
        Format::build(f, &format!("{tp}.log_format"))?
    } else if let Some(f) = &t.format {
        Format::text(f, &format!("{tp}.format"))?
    } else if let Some(m) = &t.json_format {
        Format::json(m, false, false, &format!("{tp}.json_format"))?
    } else if let Some(m) = &t.typed_json_format {
        Format::json(m, true, false, &format!("{tp}.typed_json_format"))?
    } else {
        Format::text(DEFAULT_FORMAT, &tp)?
    };
    let writer = Writer::open(&path).map_err(|err| {
        e(
            &format!("{tp}.path"),
            format!("cannot open '{path}': {err}"),
        )
    })?;
    Ok(Logger {
        sink: Sink::File { writer, format },
        filter,
    })
}

/// The request as the `upstream_log` entries show it (taken before the
/// request moves upstream).
pub(crate) struct UpstreamHead {
    head: ReqHead,
    req: HeaderMap,
    version: Version,
}

impl UpstreamHead {
    pub(crate) fn of(req: &Request) -> Self {
        Self {
            head: ReqHead::of(req),
            req: req.headers().clone(),
            version: req.version(),
        }
    }
}

/// What the logs keep of a request until its stream ends.
pub(crate) struct Pending {
    head: ReqHead,
    req: HeaderMap,
    version: Version,
    count: Arc<RequestCount>,
    response_head: Option<Duration>,
}

/// The request body's bytes, and when its last one came.
struct RequestCount {
    bytes: AtomicU64,
    /// Since `start`, plus one (0: not yet).
    done_nanos: AtomicU64,
    start: Instant,
}

impl RequestCount {
    fn finish(&self) {
        let n = self.start.elapsed().as_nanos() as u64;
        let _ = self.done_nanos.compare_exchange(
            0,
            n.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn done(&self) -> Option<Duration> {
        match self.done_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

/// The request body, counted.
struct CountBody {
    inner: Body,
    count: Arc<RequestCount>,
}

impl http_body::Body for CountBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.count
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.count.finish();
                }
            }
            Poll::Ready(None) => self.count.finish(),
            _ => {}
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

/// What the log line of a stream needs once its response ends.
struct Done {
    logs: Arc<AccessLogs>,
    pending: Box<Pending>,
    info: StreamInfo,
    status: u16,
    resp: HeaderMap,
}

/// The response body, counted; the stream is logged when it ends.
struct LogBody {
    inner: Body,
    done: Option<Box<Done>>,
    polled: bool,
    sent: u64,
    trailers: Option<HeaderMap>,
}

impl LogBody {
    fn finish(&mut self, downstream_gone: bool) {
        let Some(d) = self.done.take() else {
            return;
        };
        let p = &d.pending;
        let mut flags = Flags::of(&d.info, d.status);
        if downstream_gone {
            flags = flags.with("DC");
        }
        let details = match d.info.local_reply {
            Some(l) => l,
            None if d.info.upstream_host.is_some() => "via_upstream",
            None => "-",
        };
        let ctx = Ctx {
            info: &d.info,
            head: &p.head,
            req: &p.req,
            resp: &d.resp,
            trailers: self.trailers.as_ref(),
            status: Some(d.status),
            body: "",
            details: (details != "-").then_some(details),
            flags,
            version: p.version,
            timing: Timing {
                request_done: p.count.done(),
                response_head: p.response_head,
                done: Some(d.info.start.elapsed()),
            },
            bytes_received: p.count.bytes.load(Ordering::Relaxed),
            bytes_sent: self.sent,
            attempt: None,
        };
        d.logs.log(&ctx);
    }
}

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.polled = true;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    this.trailers = Some(t.clone());
                }
                if this.inner.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
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

impl Drop for LogBody {
    fn drop(&mut self) {
        // Dropped after it started and before its end: the downstream
        // went away (or reset the stream) while the response was sent.
        let gone = self.polled && !http_body::Body::is_end_stream(&self.inner);
        self.finish(gone);
    }
}

/// The `upstream_log` entry of a stream's last try, written when its
/// response body ends.
struct LastTry {
    logs: Arc<AccessLogs>,
    info: StreamInfo,
    up: UpstreamHead,
    resp: HeaderMap,
    status: u16,
    attempt: meshgate_core::stream::UpstreamTry,
}

/// The last try's response body, its bytes counted; its `upstream_log`
/// entry is written at its end (or when it is dropped).
struct UpstreamLogBody {
    inner: Body,
    received: u64,
    entry: Option<Box<LastTry>>,
}

impl UpstreamLogBody {
    fn finish(&mut self) {
        let Some(e) = self.entry.take() else {
            return;
        };
        let t = &e.attempt;
        let mut ctx = Ctx::new(&e.info);
        ctx.head = &e.up.head;
        ctx.req = &e.up.req;
        ctx.version = e.up.version;
        ctx.resp = &e.resp;
        ctx.bytes_sent = t.request_bytes.unwrap_or(0);
        ctx.bytes_received = self.received;
        ctx.status = Some(t.status.unwrap_or(e.status));
        ctx.details = Some("via_upstream");
        ctx.flags = Flags::of_try(t);
        ctx.timing = Timing {
            request_done: None,
            response_head: t.end.map(|end| end.saturating_duration_since(t.start)),
            done: Some(t.start.elapsed()),
        };
        ctx.attempt = Some(t);
        e.logs.log(&ctx);
    }
}

impl http_body::Body for UpstreamLogBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.received += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
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

impl Drop for UpstreamLogBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A `tcp_proxy` byte counter that also counts for one connection's log.
struct Tee {
    global: metrics::Counter,
    local: Arc<AtomicU64>,
}

impl metrics::CounterFn for Tee {
    fn increment(&self, value: u64) {
        self.global.increment(value);
        self.local.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.global.absolute(value);
    }
}

/// `global`, plus a count of this connection's bytes for its log line.
fn tee(global: &metrics::Counter) -> (metrics::Counter, Arc<AtomicU64>) {
    let local = Arc::new(AtomicU64::new(0));
    let c = metrics::Counter::from_arc(Arc::new(Tee {
        global: global.clone(),
        local: local.clone(),
    }));
    (c, local)
}

/// The log of one `tcp_proxy` connection: its byte counters (the
/// listener's, counted for the line too) and what it learned.
pub(crate) struct TcpLog<'a> {
    logs: &'a AccessLogs,
    info: StreamInfo,
    pub(crate) received: metrics::Counter,
    pub(crate) sent: metrics::Counter,
    rx: Arc<AtomicU64>,
    tx: Arc<AtomicU64>,
}

impl<'a> TcpLog<'a> {
    pub(crate) fn new(
        logs: &'a AccessLogs,
        conn: &meshgate_core::network::ConnectionInfo,
        cluster: &'static str,
        received: &metrics::Counter,
        sent: &metrics::Counter,
    ) -> Self {
        let mut info = StreamInfo::new(Arc::new(conn.clone()), "tcp");
        info.upstream_cluster = Some(cluster);
        let (received, rx) = tee(received);
        let (sent, tx) = tee(sent);
        Self {
            logs,
            info,
            received,
            sent,
            rx,
            tx,
        }
    }

    /// The connection closed (`host`: the upstream it was relayed to;
    /// `failure`: why no upstream connection was made).
    /// The upstream connection's local address
    /// (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub(crate) fn upstream_local(&mut self, local: Option<std::net::SocketAddr>) {
        self.info.upstream_local_address = local;
    }

    pub(crate) fn close(
        mut self,
        host: Option<std::net::SocketAddr>,
        failure: Option<&'static str>,
    ) {
        self.info.upstream_host = host;
        self.info.local_reply = failure;
        self.logs.log_connection(
            &self.info,
            self.rx.load(Ordering::Relaxed),
            self.tx.load(Ordering::Relaxed),
        );
    }
}

/// A failed upstream connect as a `LocalReason` label (its response flag:
/// `UH`, `UO` or `UF`).
pub(crate) fn connect_failure(e: &meshgate_core::cluster::ConnectError) -> &'static str {
    use meshgate_core::cluster::ConnectError;
    match e {
        ConnectError::NoHealthyEndpoint(_) => "no_healthy_upstream",
        ConnectError::Overflow(_) => "overflow",
        ConnectError::Timeout(_) | ConnectError::Io(..) => "upstream_connect_failure",
    }
}

/// meshgate's shorthand line: one JSON object per request.
fn legacy_line(ctx: &Ctx<'_>) -> String {
    let info = ctx.info;
    let started = std::time::SystemTime::now() - info.start.elapsed();
    let c = &info.connection;
    let h = |n: &str| {
        ctx.req
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let flags = ctx.value(&crate::format::Op::ResponseFlags);
    let mut v = serde_json::json!({
        "start_time": humantime::format_rfc3339_millis(started).to_string(),
        "listener": &*c.listener,
        "downstream_remote": c.peer_addr.to_string(),
        "downstream_remote_address": info.downstream_remote_address.to_string(),
        "protocol": info.protocol,
        "method": ctx.head.method.as_ref().map(|m| m.as_str()),
        "path": ctx.head.path.as_deref().unwrap_or("/"),
        "authority": ctx.head.authority,
        "status": ctx.status,
        "duration_ms": info.start.elapsed().as_secs_f64() * 1000.0,
        "route": info.route,
        "upstream_cluster": info.upstream_cluster,
        "upstream_host": info.upstream_host.map(|a| a.to_string()),
        "local_reply": info.local_reply,
        "denied_by": info.denied_by,
        "response_flags": flags,
        "bytes_received": ctx.bytes_received,
        "bytes_sent": ctx.bytes_sent,
        "request_id": h("x-request-id"),
        "user_agent": h("user-agent"),
        "grpc": info.grpc,
    });
    if let Some(m) = info.metadata() {
        // What filters published (the user basic_auth found, a JWT's claims).
        v["dynamic_metadata"] = serde_json::Value::Object(m.as_map().clone());
    }
    if let Some(t) = &c.tls {
        v["tls"] = serde_json::json!({
            "version": t.version,
            "cipher_suite": t.cipher_suite,
            "sni": t.server_name,
            "alpn": t.alpn,
            "resumed": t.resumed,
            "peer_subject": t.peer.as_ref().map(|p| p.subject.clone()),
            "peer_uri_sans": t.peer.as_ref().map(|p| p.uri_sans.clone()),
            "peer_dns_sans": t.peer.as_ref().map(|p| p.dns_sans.clone()),
        });
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}
