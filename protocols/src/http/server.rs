//! Downstream servers: HTTP/1.1 (`h1_server`, by hand) and HTTP/2 (a
//! hyper connection whose service hands every request to the stream layer,
//! `StreamHandler`). Limits that
//! protect meshgate from hostile clients are set here: header size and
//! count, header read timeout, HTTP/2 stream and reset limits.

use super::h2_guard::{FloodOptions, H2Guard};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_core::codec::{ServerCodec, StreamHandler};
use meshgate_core::network::{Connection, ServeFuture};
use meshgate_core::stream::{Request, StreamInfo, box_body};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Downstream limits and timeouts (`codec_options` of the `proxy` filter).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list), bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_request_headers_bytes: usize,
    /// Most header fields in a request (HTTP/1).
    #[serde(default = "default_max_headers")]
    pub max_request_headers: usize,
    /// A client must send a complete request head within this (HTTP/1.1;
    /// HTTP/2: each header block, from its HEADERS frame to END_HEADERS).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub request_headers_timeout: Duration,
    /// HTTP/2: concurrent streams a client may open.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2: streams reset by the client before we answered that we
    /// tolerate in flight (rapid-reset defence, CVE-2023-44487).
    #[serde(default = "default_max_resets")]
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2: stream-level errors we send before closing the connection.
    #[serde(default = "default_max_local_resets")]
    pub max_local_error_reset_streams: usize,
    /// HTTP/2: limits on PING, SETTINGS, PRIORITY, WINDOW_UPDATE and empty
    /// frames; past one, GOAWAY(ENHANCE_YOUR_CALM) and close.
    #[serde(default)]
    pub flood: FloodOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

fn default_max_header_bytes() -> usize {
    60 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_streams() -> u32 {
    1024
}
fn default_max_resets() -> usize {
    64
}
fn default_max_local_resets() -> usize {
    256
}

fn service(
    handler: Arc<dyn StreamHandler>,
    conn: Arc<meshgate_core::network::ConnectionInfo>,
    protocol: &'static str,
    activity: Option<Arc<super::idle::Activity>>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = meshgate_core::stream::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<meshgate_core::stream::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (mut parts, body) = req.into_parts();
        super::adopt_upgrade(&mut parts.extensions);
        let req = Request::from_parts(parts, box_body(body));
        let info = StreamInfo::new(conn.clone(), protocol);
        let handler = handler.clone();
        // Active until the response body is dropped (sent or abandoned).
        let active = activity.as_ref().map(|a| a.start());
        async move {
            let resp = handler.handle(req, info).await;
            Ok::<_, Infallible>(match active {
                Some(a) => a.track(resp),
                None => resp,
            })
        }
    })
}

/// Counts a downstream connection that ended on a protocol error in
/// `meshgate_http_downstream_cx_protocol_error_total{listener,codec,reason}`.
/// hyper has already answered it (400, 408, 431; a GOAWAY on HTTP/2).
fn count_downstream_error(listener: &str, codec: &'static str, e: &hyper::Error) {
    let reason = if e.is_parse_too_large() {
        "headers_too_large"
    } else if e.is_parse() || e.is_parse_status() {
        "bad_request"
    } else if e.is_timeout() {
        "header_timeout"
    } else if let Some(h2e) =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>())
    {
        if h2e.is_io() {
            return;
        }
        match h2e.reason() {
            Some(h2::Reason::ENHANCE_YOUR_CALM) => "enhance_your_calm",
            Some(h2::Reason::FLOW_CONTROL_ERROR) => "flow_control_error",
            Some(h2::Reason::FRAME_SIZE_ERROR) => "frame_size_error",
            Some(h2::Reason::COMPRESSION_ERROR) => "compression_error",
            _ => "protocol_error",
        }
    } else {
        // The peer went away (reset, EOF mid-message): not a protocol error.
        return;
    };
    metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_PROTOCOL_ERROR_TOTAL, "listener" => listener.to_string(), "codec" => codec, "reason" => reason).increment(1);
}

/// HTTP/1.1 downstream.
pub struct Http1Server {
    opts: ServerOptions,
}

impl Http1Server {
    pub fn new(opts: ServerOptions) -> Self {
        Self { opts }
    }
}

impl ServerCodec for Http1Server {
    fn serve(self: Arc<Self>, conn: Connection, handler: Arc<dyn StreamHandler>) -> ServeFuture {
        Box::pin(super::h1_server::serve(self.opts.clone(), conn, handler))
    }
}

/// HTTP/2 downstream.
pub struct Http2Server {
    opts: ServerOptions,
}

impl Http2Server {
    pub fn new(opts: ServerOptions) -> Self {
        Self { opts }
    }
}

impl ServerCodec for Http2Server {
    fn serve(self: Arc<Self>, conn: Connection, handler: Arc<dyn StreamHandler>) -> ServeFuture {
        Box::pin(async move {
            let (io, info, drain) = conn.into_prefixed();
            let listener = info.listener.clone();
            let retire = info.retire.clone();
            let io = H2Guard::new(io, self.opts.flood.clone(), listener.to_string())
                .with_header_timeout(self.opts.request_headers_timeout);
            let idle_timeout = handler.idle_timeout();
            let activity = idle_timeout.map(|_| Arc::new(super::idle::Activity::new()));
            let idle = super::idle::watch(activity.clone(), idle_timeout);
            tokio::pin!(idle);
            let svc = service(handler, Arc::new(info), "http2", activity);
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(self.opts.max_concurrent_streams)
                .max_header_list_size(self.opts.max_request_headers_bytes as u32)
                .max_pending_accept_reset_streams(self.opts.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(self.opts.max_local_error_reset_streams)
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .keep_alive_interval(Some(Duration::from_secs(60)));
            let conn = b.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "http2 connection ended with an error");
                        count_downstream_error(&listener, "http2", &e);
                    }
                }
                _ = drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                _ = retire.cancelled() => {
                    // GOAWAY: streams in flight finish, new ones go to a
                    // new connection (and the new config).
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                _ = &mut idle => {
                    // No active stream for the idle timeout: GOAWAY, then
                    // close (a stream that raced the GOAWAY still ends).
                    metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_IDLE_TIMEOUT_TOTAL, "listener" => listener.to_string(), "codec" => "http2").increment(1);
                    tracing::debug!(listener = %listener, "http2 connection idle: GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        })
    }
}
