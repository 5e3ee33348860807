//! The admin server over HTTP/1.1 (hyper), on TCP (loopback by default)
//! or a Unix socket (`admin.address: {pipe: {path}}`). It reads the live
//! snapshot through arc-swap like the data path does, and is never on the
//! data path itself. Endpoints follow Envoy's names and query parameters;
//! `/` lists them. Mutations answer only POST (GET on them: 405), and an
//! optional bearer token (`admin.auth_token`) guards every endpoint but
//! `/ready`. The endpoints' bodies are built in the submodules.

mod dump;
mod ops;
mod stats;

pub use ops::{LogControl, MemoryInfo, health_check_failed, set_log_control, set_memory_source};

use crate::metrics::MetricsHandle;
use crate::network::Signal;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin handlers read.
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub prometheus: MetricsHandle,
    /// The running listeners and the addresses their sockets are bound
    /// to, published by the server after each start or reload.
    pub listeners: Arc<ArcSwap<Vec<BoundListener>>>,
    /// Set when the server starts draining: `/ready` answers 503.
    pub draining: AtomicBool,
    /// What the mutating endpoints act on.
    pub control: Control,
}

/// The server's levers the admin pulls: stop (`/quitquitquit`), stop
/// accepting (`/drain_listeners`), tell open connections to close when
/// idle (`?graceful`).
pub struct Control {
    started: Instant,
    quit: CancellationToken,
    accept_stop: CancellationToken,
    drain: Signal,
    drain_time: Duration,
    listeners_drained: AtomicBool,
    quit_requested: AtomicBool,
}

impl Control {
    /// `quit` stops the server (it drains and returns), `accept_stop`
    /// stops every accept loop, `drain` is the open connections' drain
    /// signal, `drain_time` the graceful drain period.
    pub fn new(
        quit: CancellationToken,
        accept_stop: CancellationToken,
        drain: Signal,
        drain_time: Duration,
    ) -> Self {
        Self {
            started: Instant::now(),
            quit,
            accept_stop,
            drain,
            drain_time,
            listeners_drained: AtomicBool::new(false),
            quit_requested: AtomicBool::new(false),
        }
    }
}

/// A running listener as `/listeners` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundListener {
    pub name: String,
    /// As configured, e.g. `127.0.0.1:0`.
    pub address: String,
    /// A QUIC (UDP) listener; otherwise TCP.
    pub quic: bool,
    /// The bound socket addresses, e.g. `127.0.0.1:41234`.
    pub bound: Vec<String>,
    /// An `INBOUND` listener's levers (`/drain_listeners?inboundonly`).
    #[serde(skip)]
    pub inbound: Option<InboundDrain>,
}

/// What `/drain_listeners?inboundonly` pulls on one `INBOUND` listener:
/// its accept stop, and (`&graceful`) its open connections' retire
/// signal, the per-listener counterpart of the server-wide drain signal
/// (the same notice: HTTP/1.1 `connection: close`, HTTP/2 GOAWAY).
#[derive(Clone)]
pub struct InboundDrain {
    pub stop: tokio_util::sync::CancellationToken,
    pub listener: Arc<crate::listener::RunningListener>,
}

impl std::fmt::Debug for InboundDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundDrain")
            .field("stopped", &self.stop.is_cancelled())
            .finish()
    }
}

/// Serves admin requests until `stop` is cancelled.
/// Out of descriptors, the admin gives one of its reserved ones back and
/// accepts at once (`crate::fds`), so that it stays reachable.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    crate::fds::refill_reserve();
    let mut failures = 0u32;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => {
                    failures = 0;
                    a
                }
                Err(e) => {
                    let reason = crate::fds::exhaustion(&e);
                    metrics::counter!(crate::metrics::names::ADMIN_ACCEPT_ERROR_TOTAL, "reason" => reason.unwrap_or("other")).increment(1);
                    if reason.is_some() && crate::fds::release_one() {
                        continue;
                    }
                    if failures == 0 {
                        tracing::warn!(error = %e, "admin accept failed");
                    }
                    let wait = crate::fds::accept_backoff(failures);
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, state.clone()));
    }
}

/// Binds the Unix socket of `admin.address: {pipe}` (a stale socket file
/// from an earlier run is replaced) with its file mode.
/// Errors are `(field, message)`.
pub fn bind_pipe(
    snapshot: &Snapshot,
) -> Result<Option<tokio::net::UnixListener>, (&'static str, String)> {
    let Some(pipe) = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.address.pipe())
    else {
        return Ok(None);
    };
    // `mode: 600` is decimal: a mode past 0o777 is a mistake.
    if pipe.mode > 0o777 {
        return Err((
            "admin.address.pipe.mode",
            format!(
                "{} is not a file mode: write it as 0o600 (octal)",
                pipe.mode
            ),
        ));
    }
    let field = "admin.address.pipe.path";
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if std::fs::symlink_metadata(&pipe.path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&pipe.path);
    }
    let l = tokio::net::UnixListener::bind(&pipe.path)
        .map_err(|e| (field, format!("cannot listen on {}: {e}", pipe.path)))?;
    std::fs::set_permissions(&pipe.path, std::fs::Permissions::from_mode(pipe.mode)).map_err(
        |e| {
            (
                field,
                format!("cannot set mode {:o} on {}: {e}", pipe.mode, pipe.path),
            )
        },
    )?;
    Ok(Some(l))
}

/// As `serve`, on a Unix socket.
pub async fn serve_pipe(
    listener: tokio::net::UnixListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    let reason = crate::fds::exhaustion(&e);
                    metrics::counter!(crate::metrics::names::ADMIN_ACCEPT_ERROR_TOTAL, "reason" => reason.unwrap_or("other")).increment(1);
                    tokio::time::sleep(crate::fds::accept_backoff(1)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(stream, state.clone()));
    }
}

/// One admin connection. After a `/quitquitquit` answer went out (it
/// carries `connection: close`) the server is told to stop.
async fn connection<S>(stream: S, state: Arc<AdminState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let svc = hyper::service::service_fn(move |req| {
        let state = st.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let _ = conn.await;
    crate::fds::refill_reserve();
    if state.control.quit_requested.load(Ordering::Relaxed) {
        state.control.quit.cancel();
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    text(StatusCode::OK, "application/json", body)
}

/// A refusal, counted by reason.
fn refuse(status: StatusCode, reason: &'static str, msg: String) -> Response<Full<Bytes>> {
    metrics::counter!(crate::metrics::names::ADMIN_RQ_DENIED_TOTAL, "reason" => reason)
        .increment(1);
    text(status, "text/plain", msg)
}

/// Every endpoint, whether it mutates (POST only), and what it does.
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "this list"),
    (
        "/ready",
        false,
        "200 LIVE, or 503 while draining or after /healthcheck/fail",
    ),
    (
        "/server_info",
        false,
        "version, uptime, state, command line",
    ),
    (
        "/listeners",
        false,
        "listeners and their bound addresses (JSON; ?format=text)",
    ),
    (
        "/clusters",
        false,
        "clusters and endpoints with health flags (?format=json)",
    ),
    (
        "/stats",
        false,
        "counters and gauges (?format=json, ?filter=REGEX, ?usedonly)",
    ),
    (
        "/stats/prometheus",
        false,
        "every metric in the Prometheus text format",
    ),
    (
        "/config_dump",
        false,
        "the running config (?resource=, ?mask=, ?name_regex=, ?include_eds)",
    ),
    (
        "/certs",
        false,
        "loaded certificates: subject, SANs, expiry",
    ),
    ("/memory", false, "allocator and resident memory"),
    (
        "/overload",
        false,
        "overload manager: monitor pressures and active actions",
    ),
    (
        "/logging",
        false,
        "log levels; POST ?level=L or ?paths=target:L,... changes them",
    ),
    (
        "/healthcheck/fail",
        true,
        "make /ready fail (load balancers drain this instance)",
    ),
    ("/healthcheck/ok", true, "undo /healthcheck/fail"),
    (
        "/reopen_logs",
        true,
        "reopen the access log files (after logrotate renamed them)",
    ),
    (
        "/drain_listeners",
        true,
        "stop accepting (?graceful: drain open connections first; ?inboundonly)",
    ),
    (
        "/reset_counters",
        true,
        "set every counter and histogram to zero",
    ),
    ("/quitquitquit", true, "drain and exit 0"),
];

/// `?a=b&c` as decoded pairs (`c` has an empty value).
pub(crate) fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request carries the configured token (`None`: no token
/// is configured). An unreadable `auth_token_file` refuses everything.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> Result<(), &'static str> {
    let snap = state.snapshot.load();
    let Some(admin) = snap.config.admin.as_ref() else {
        return Ok(());
    };
    let token = match (&admin.auth_token, &admin.auth_token_file) {
        (None, None) => return Ok(()),
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Err("admin.auth_token_file is unreadable or empty"),
        },
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared without an early exit, so timing tells nothing of a prefix.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err("missing or wrong bearer token")
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    tracing::debug!(method = %req.method(), uri = %req.uri(), "admin request");
    let mutation = ENDPOINTS.iter().find(|e| e.0 == path).is_some_and(|e| e.1);
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if path != "/ready"
        && let Err(why) = authorized(state, &req)
    {
        let mut r = refuse(StatusCode::UNAUTHORIZED, "unauthorized", format!("{why}\n"));
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"meshgate admin\""),
        );
        return r;
    }
    let allowed = if mutation {
        req.method() == Method::POST
    } else if path == "/logging" {
        read || req.method() == Method::POST
    } else {
        read
    };
    if !allowed {
        let mut r = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path}: use {}\n", if mutation { "POST" } else { "GET" }),
        );
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static(if mutation { "POST" } else { "GET, HEAD" }),
        );
        return r;
    }
    let q = query(&req);
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match path.as_str() {
        "/ready" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            } else if health_check_failed() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "HEALTH_CHECK_FAILED\n",
                )
            } else {
                text(StatusCode::OK, "text/plain", "LIVE\n")
            }
        }
        "/stats/prometheus" | "/metrics" => {
            ops::refresh_gauges(&state.control);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.prometheus.render(),
            )
        }
        "/stats" => {
            ops::refresh_gauges(&state.control);
            match stats::render(
                &state.prometheus.render(),
                get("filter"),
                has("usedonly"),
                get("format") == Some("json"),
            ) {
                Ok((body, true)) => text(StatusCode::OK, "application/json", body),
                Ok((body, false)) => text(StatusCode::OK, "text/plain", body),
                Err(e) => refuse(StatusCode::BAD_REQUEST, "bad_request", format!("{e}\n")),
            }
        }
        "/config_dump" => {
            let snap = state.snapshot.load();
            match dump::config_dump(&snap, &q) {
                Ok(v) => json(&v),
                Err(e) => refuse(StatusCode::BAD_REQUEST, "bad_request", format!("{e}\n")),
            }
        }
        "/certs" => json(&dump::certs(&state.snapshot.load())),
        // Envoy's `POST /reopen_logs`: access log files reopen (logrotate).
        "/reopen_logs" => {
            crate::signals::reopen_logs();
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        "/clusters" => {
            let snap = state.snapshot.load();
            if get("format") == Some("json") {
                json(&crate::admin_clusters::json(snap.clusters.iter()))
            } else {
                text(
                    StatusCode::OK,
                    "text/plain",
                    crate::admin_clusters::text(snap.clusters.iter()),
                )
            }
        }
        "/listeners" => {
            let all = state.listeners.load();
            if get("format") == Some("text") {
                let mut out = String::new();
                for l in all.iter() {
                    for b in &l.bound {
                        out.push_str(&format!("{}::{}\n", l.name, b));
                    }
                }
                text(StatusCode::OK, "text/plain", out)
            } else {
                let body = serde_json::to_vec_pretty(&**all).unwrap_or_default();
                text(StatusCode::OK, "application/json", body)
            }
        }
        "/server_info" => json(&ops::server_info(state)),
        "/memory" => json(&ops::memory()),
        "/logging" if req.method() == Method::POST => match ops::set_logging(&q) {
            Ok(now) => text(
                StatusCode::OK,
                "text/plain",
                format!("active filter: {now}\n"),
            ),
            Err(e) => refuse(StatusCode::BAD_REQUEST, "bad_request", format!("{e}\n")),
        },
        "/logging" => text(StatusCode::OK, "text/plain", ops::logging_levels()),
        "/healthcheck/fail" => {
            ops::set_health_check_failed(true);
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        "/healthcheck/ok" => {
            ops::set_health_check_failed(false);
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        "/drain_listeners" => {
            if has("inboundonly") {
                let all = state.listeners.load();
                let inbound: Vec<InboundDrain> =
                    all.iter().filter_map(|l| l.inbound.clone()).collect();
                let graceful = has("graceful");
                tracing::info!(
                    listeners = inbound.len(),
                    graceful,
                    "admin /drain_listeners?inboundonly"
                );
                drain_inbound(inbound, graceful, state.control.drain_time);
                return text(StatusCode::OK, "text/plain", "OK\n");
            }
            drain_listeners(&state.control, has("graceful"));
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        "/reset_counters" => {
            state.prometheus.reset_counters();
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        "/quitquitquit" => {
            tracing::info!("admin /quitquitquit: stopping");
            state.control.quit_requested.store(true, Ordering::Relaxed);
            let mut r = text(StatusCode::OK, "text/plain", "OK\n");
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            r
        }
        "/" => {
            let mut out = String::from("meshgate admin\n");
            for (p, m, what) in ENDPOINTS {
                out.push_str(&format!(
                    "  {:<6}{p:<20} {what}\n",
                    if *m { "POST" } else { "GET" }
                ));
            }
            text(StatusCode::OK, "text/plain", out)
        }
        "/overload" => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&crate::overload::state_json()).unwrap_or_default(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/drain_listeners`: every listener stops accepting (its socket closes,
/// new connections are refused) while open connections go on. With
/// `graceful`, open connections are first told to close once idle
/// (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY) and listeners keep
/// accepting for the drain time, as Envoy's graceful drain period.
fn drain_listeners(c: &Control, graceful: bool) {
    if c.listeners_drained.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::info!(graceful, "admin /drain_listeners");
    if graceful {
        c.drain.cancel();
        let stop = c.accept_stop.clone();
        let wait = c.drain_time;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            stop.cancel();
        });
    } else {
        c.accept_stop.cancel();
    }
}

/// `/drain_listeners?inboundonly`: the `INBOUND` listeners stop
/// accepting, at once or (`graceful`) after their open connections were
/// told to close when idle (their retire signal; connections accepted
/// meanwhile get the raised one too) and the drain time passed. Outbound
/// listeners and their connections are untouched.
fn drain_inbound(inbound: Vec<InboundDrain>, graceful: bool, wait: Duration) {
    if !graceful {
        for l in &inbound {
            l.stop.cancel();
        }
        return;
    }
    for l in &inbound {
        l.listener.retire_all();
    }
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        for l in &inbound {
            l.stop.cancel();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_decoded() {
        assert_eq!(decode("a%2Eb+c%zz%4"), "a.b c%zz%4");
        assert_eq!(decode("%5Emeshgate_.*%24"), "^meshgate_.*$");
    }

    #[test]
    fn every_mutation_is_listed_as_post() {
        for p in [
            "/healthcheck/fail",
            "/healthcheck/ok",
            "/drain_listeners",
            "/reset_counters",
            "/quitquitquit",
        ] {
            assert!(ENDPOINTS.iter().any(|e| e.0 == p && e.1), "{p}");
        }
    }
}
