//! HTTP/1.1 (by hand on httparse) and HTTP/2 (hyper driving the `h2`
//! crate) codecs: downstream servers feeding the stream layer, upstream pools
//! (HTTP/1 keep-alive, HTTP/2 multiplexed), and detection from the first
//! bytes so one listener serves both.

mod client;
mod h1_body;
mod h1_server;
mod h1_upstream;
mod h2_guard;
pub(crate) mod idle;
mod server;

use meshgate_core::BuildError;
use meshgate_core::codec::{ClientCodec, CodecFactory, Detection, ServerCodec};
use meshgate_core::config::parse_typed;
use std::sync::Arc;

pub use client::{Http1Client, Http2Client, PoolOptions};
pub use h2_guard::FloodOptions;
pub use server::{Http1Server, Http2Server, ServerOptions};

/// Wraps hyper's pending upgrade as the stream layer's `Upgrade`.
pub(crate) fn upgrade_from_hyper(on: hyper::upgrade::OnUpgrade) -> meshgate_core::stream::Upgrade {
    upgrade_from_hyper_holding(on, None)
}

/// `upgrade_from_hyper`, the upgraded transport holding `slot` (an
/// upstream connection's circuit-breaker slot) for as long as it lives.
pub(crate) fn upgrade_from_hyper_holding(
    on: hyper::upgrade::OnUpgrade,
    slot: Option<Arc<meshgate_core::cluster::ConnectionGuard>>,
) -> meshgate_core::stream::Upgrade {
    meshgate_core::stream::Upgrade::new(Box::pin(async move {
        let up = on.await.map_err(std::io::Error::other)?;
        let io = hyper_util::rt::TokioIo::new(up);
        let io: Box<dyn meshgate_core::network::AsyncIo> = match slot {
            Some(slot) => Box::new(Holding { io, _slot: slot }),
            None => Box::new(io),
        };
        Ok(io)
    }))
}

/// A transport that keeps something alive as long as itself (an upgraded
/// upstream connection's circuit-breaker slot).
struct Holding<T, H> {
    io: T,
    _slot: H,
}

impl<T: tokio::io::AsyncRead + Unpin, H: Unpin> tokio::io::AsyncRead for Holding<T, H> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin, H: Unpin> tokio::io::AsyncWrite for Holding<T, H> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Moves hyper's pending upgrade (present on HTTP/1.1 requests that ask
/// for one) into the request as the stream layer's `Upgrade`.
pub(crate) fn adopt_upgrade(ext: &mut http::Extensions) {
    if let Some(on) = ext.remove::<hyper::upgrade::OnUpgrade>() {
        ext.insert(upgrade_from_hyper(on));
    }
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `http1`: HTTP/1.1 (and 1.0).
pub struct Http1Codec;
/// `http2`: HTTP/2 with prior knowledge (h2c) or after ALPN `h2`.
pub struct Http2Codec;

fn detect_h2(preface: &[u8]) -> Detection {
    let n = preface.len().min(H2_PREFACE.len());
    if preface[..n] != H2_PREFACE[..n] {
        Detection::NoMatch
    } else if n < H2_PREFACE.len() {
        Detection::NeedMore
    } else {
        Detection::Match
    }
}

/// An HTTP/1 request starts with a method and a space. Anything that looks
/// like a request line (visible ASCII up to a space, CR or LF) is claimed,
/// even an invalid method: the http1 codec answers it 400, as on a
/// `codec: http1` listener, rather than the connection closing unanswered.
/// Binary protocols (TLS, Dubbo, Bolt) start with bytes outside that range.
fn detect_h1(preface: &[u8]) -> Detection {
    match detect_h2(preface) {
        Detection::Match => return Detection::NoMatch,
        Detection::NeedMore => return Detection::NeedMore,
        Detection::NoMatch => {}
    }
    for (i, &b) in preface.iter().enumerate() {
        if matches!(b, b' ' | b'\r' | b'\n') {
            return if i > 0 {
                Detection::Match
            } else {
                Detection::NoMatch
            };
        }
        if !b.is_ascii_graphic() {
            return Detection::NoMatch;
        }
        if i >= 32 {
            // A method this long is no method: the codec refuses it.
            return Detection::Match;
        }
    }
    Detection::NeedMore
}

impl CodecFactory for Http1Codec {
    fn name(&self) -> &'static str {
        "http1"
    }
    fn detect(&self, preface: &[u8]) -> Detection {
        detect_h1(preface)
    }
    /// Last: any request line is claimed (see `detect_h1`).
    fn detect_priority(&self) -> i32 {
        -100
    }
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        if config.get("flood").is_some() {
            return Err(BuildError::new(
                "flood",
                "HTTP/2 flood limits; set them under codec_options.http2",
            ));
        }
        Ok(Arc::new(Http1Server::new(parse_typed(config)?)))
    }
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let opts: PoolOptions = parse_typed(config)?;
        if opts.initial_stream_window_size.is_some() {
            return Err(BuildError::new(
                "initial_stream_window_size",
                "an HTTP/2 window, on an http1 cluster",
            ));
        }
        if opts.initial_connection_window_size.is_some() {
            return Err(BuildError::new(
                "initial_connection_window_size",
                "an HTTP/2 window, on an http1 cluster",
            ));
        }
        if opts.max_concurrent_streams.is_some() {
            return Err(BuildError::new(
                "max_concurrent_streams",
                "an HTTP/2 stream limit, on an http1 cluster (one request per connection)",
            ));
        }
        Ok(opts.limited(Arc::new(Http1Client::new(opts.clone()))))
    }
}

impl CodecFactory for Http2Codec {
    fn name(&self) -> &'static str {
        "http2"
    }
    fn detect(&self, preface: &[u8]) -> Detection {
        detect_h2(preface)
    }
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        let opts: ServerOptions = parse_typed(config)?;
        opts.validate()?;
        Ok(Arc::new(Http2Server::new(opts)))
    }
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let opts: PoolOptions = parse_typed(config)?;
        opts.validate()?;
        Ok(opts.limited(Arc::new(Http2Client::new(opts.clone()))))
    }
    fn alpn_client(
        &self,
        config: &serde_json::Value,
    ) -> Option<Result<Arc<dyn ClientCodec>, BuildError>> {
        let build = || -> Result<Arc<dyn ClientCodec>, BuildError> {
            let opts: PoolOptions = parse_typed(config)?;
            opts.validate()?;
            Ok(opts.limited(Arc::new(client::AutoClient::new(opts.clone()))))
        };
        Some(build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect_h2(H2_PREFACE), Detection::Match);
        assert_eq!(detect_h2(&H2_PREFACE[..10]), Detection::NeedMore);
        assert_eq!(detect_h2(b"GET / HTTP/1.1\r\n"), Detection::NoMatch);
        assert_eq!(detect_h1(b"GET / HTTP/1.1\r\n"), Detection::Match);
        assert_eq!(detect_h1(b"OPTIONS * HTTP/1.1"), Detection::Match);
        assert_eq!(detect_h1(b"GE"), Detection::NeedMore);
        assert_eq!(detect_h1(b"PR"), Detection::NeedMore);
        assert_eq!(detect_h1(H2_PREFACE), Detection::NoMatch);
        assert_eq!(detect_h1(&[0x16, 3, 1]), Detection::NoMatch);
        assert_eq!(detect_h1(b" GET"), Detection::NoMatch);
        assert_eq!(detect_h1(&[0xda, 0xbb]), Detection::NoMatch);
        assert_eq!(detect_h1(b"G(T / HTTP/1.1"), Detection::Match);
        assert_eq!(detect_h1(b"get / HTTP/1.1"), Detection::Match);
        assert_eq!(detect_h1(b"GARBAGE\r\n"), Detection::Match);
        assert_eq!(detect_h1(&[b'G', 0x01]), Detection::NoMatch);
    }
}
