//! Downstream servers: HTTP/1.1 (`h1_server`, by hand) and HTTP/2 (a
//! hyper connection whose service hands every request to the stream layer,
//! `StreamHandler`). Limits that
//! protect meshgate from hostile clients are set here: header size and
//! count, header read timeout, HTTP/2 stream and reset limits.

use super::h2_guard::{FloodOptions, H2Guard};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_core::codec::{Notices, ProtocolTraits, ServerCodec, StreamHandler};
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
    /// HTTP/2: the flow-control window of each stream a client opens
    /// (what it may send before we read), 65,535 to 2^31 - 1 bytes
    /// (Envoy's `http2_protocol_options.initial_stream_window_size`).
    #[serde(default = "default_stream_window")]
    pub initial_stream_window_size: u32,
    /// HTTP/2: the connection-level flow-control window, 65,535 to
    /// 2^31 - 1 bytes (`initial_connection_window_size`).
    #[serde(default = "default_connection_window")]
    pub initial_connection_window_size: u32,
}

impl ServerOptions {
    /// Refuses windows outside RFC 9113's range, naming the field.
    pub fn validate(&self) -> Result<(), meshgate_core::BuildError> {
        for (name, v) in [
            (
                "initial_stream_window_size",
                self.initial_stream_window_size,
            ),
            (
                "initial_connection_window_size",
                self.initial_connection_window_size,
            ),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&v) {
                return Err(meshgate_core::BuildError::new(
                    name,
                    format!("{v} is outside 65535..=2147483647 (RFC 9113)"),
                ));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(meshgate_core::BuildError::new(
                "max_concurrent_streams",
                "must be >= 1",
            ));
        }
        Ok(())
    }
}

fn default_stream_window() -> u32 {
    1 << 20
}
fn default_connection_window() -> u32 {
    4 << 20
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_request_headers_bytes: default_max_header_bytes(),
            max_request_headers: default_max_headers(),
            request_headers_timeout: default_header_timeout(),
            max_concurrent_streams: default_max_streams(),
            max_pending_accept_reset_streams: default_max_resets(),
            max_local_error_reset_streams: default_max_local_resets(),
            flood: FloodOptions::default(),
            initial_stream_window_size: default_stream_window(),
            initial_connection_window_size: default_connection_window(),
        }
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

/// What HTTP/1.1 carries: transfer codings, `Host` as the authority,
/// header fields; an HTTP/3 listener may be advertised to it.
pub(crate) const HTTP1_TRAITS: ProtocolTraits = ProtocolTraits {
    carries_codings: true,
    authority_in_host: true,
    response_headers: true,
    alt_svc: true,
};

/// What HTTP/2 carries: header fields, `:authority`; an HTTP/3 listener
/// may be advertised to it.
pub(crate) const HTTP2_TRAITS: ProtocolTraits = ProtocolTraits {
    carries_codings: false,
    authority_in_host: false,
    response_headers: true,
    alt_svc: true,
};

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
        // The overload manager's body budget, when configured.
        let (body, held) = meshgate_core::overload::buffer::track(box_body(body));
        let req = Request::from_parts(parts, body);
        let info = StreamInfo::new(conn.clone(), protocol).with_traits(HTTP2_TRAITS);
        let handler = handler.clone();
        // Active until the response body is dropped (sent or abandoned).
        let active = activity.as_ref().map(|a| a.start());
        async move {
            let resp = match held {
                None => handler.handle(req, info).await,
                Some(h) => {
                    meshgate_core::overload::buffer::guard(h, handler.handle(req, info)).await
                }
            };
            // The response body too: read ahead into counted memory.
            let resp = meshgate_core::overload::buffer::track_response(resp);
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
    fn alpn(&self) -> &'static [&'static str] {
        &["http/1.1", "http/1.0"]
    }

    fn serve(
        self: Arc<Self>,
        conn: Connection,
        handler: Arc<dyn StreamHandler>,
        notices: Notices,
    ) -> ServeFuture {
        Box::pin(super::h1_server::serve(
            self.opts.clone(),
            conn,
            handler,
            notices,
        ))
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
    fn alpn(&self) -> &'static [&'static str] {
        &["h2"]
    }

    fn serve(
        self: Arc<Self>,
        conn: Connection,
        handler: Arc<dyn StreamHandler>,
        notices: Notices,
    ) -> ServeFuture {
        Box::pin(async move {
            let (io, info, _) = conn.into_prefixed();
            let listener = info.listener.clone();
            // Drain and retire alike: GOAWAY, streams in flight finish,
            // new ones go to a new connection (and the new config).
            let go_away = notices.changed(None);
            tokio::pin!(go_away);
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
                .initial_stream_window_size(self.opts.initial_stream_window_size)
                .initial_connection_window_size(self.opts.initial_connection_window_size)
                .keep_alive_interval(Some(Duration::from_secs(60)));
            if meshgate_core::overload::buffer::enabled() {
                // With the overload manager's body budget, meshgate reads
                // request bodies ahead into memory it counts; the codec's
                // own, uncounted buffer is kept small (HTTP/2's default
                // 64 KiB per stream, 256 KiB per connection).
                b.initial_stream_window_size(64 << 10)
                    .initial_connection_window_size(256 << 10)
                    // And response bytes handed to the codec wait in its
                    // send buffer (uncounted) only up to 64 KiB a stream;
                    // the rest waits read ahead, counted.
                    .max_send_buf_size(64 << 10);
            }
            let conn = b.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "http2 connection ended with an error");
                        count_downstream_error(&listener, "http2", &e);
                    }
                }
                _ = &mut go_away => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                _ = meshgate_core::overload::keepalive_off() => {
                    // The overload manager's disable_http_keepalive.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_the_empty_config() {
        let from_config: ServerOptions = serde_json::from_value(serde_json::json!({})).unwrap();
        // Debug output covers every field, flood limits included.
        assert_eq!(
            format!("{:?}", ServerOptions::default()),
            format!("{from_config:?}")
        );
    }
}
