//! `decompressor`: request and response body decoding (Envoy's
//! `envoy.filters.http.decompressor` with the gzip, brotli or zstd
//! library). A body whose `content-encoding` ends in the library's coding
//! (and that is not `cache-control: no-transform`, unless told to ignore
//! it) is decoded as it streams (`body.rs`): the coding is removed from
//! `content-encoding`, `content-length` is dropped (the codec frames the
//! decoded body), and a body that inflates past `max_inflate_ratio` is cut
//! off and counted instead of inflated. A request body's first frame is
//! decoded before the request goes upstream, so a bomb or garbage in it
//! (the usual case: a bomb is small) is answered 413 / 400 locally; past
//! the first frame the upstream request is aborted (the client gets 503,
//! as for an upstream reset).
//! With response decoding on, the
//! library's coding is advertised upstream in `accept-encoding`. A
//! listener without this filter pays nothing.

mod body;

use http::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use meshgate_core::BuildError;
use meshgate_core::config::decompressor::{CommonDirectionConfig, DecompressorConfig};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::RouteView;
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, box_body, empty_body, local_reply,
};
use std::sync::Arc;

/// Factory of `decompressor`.
pub struct DecompressorFactory;

impl StreamFilterFactory for DecompressorFactory {
    fn name(&self) -> &'static str {
        "decompressor"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: DecompressorConfig = parse_typed(config)?;
        Ok(Arc::new(Decompressor::build(&c)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Library {
    Gzip,
    Brotli,
    Zstd,
}

impl Library {
    fn encoding(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Brotli => "brotli",
            Self::Zstd => "zstd",
        }
    }

    fn decoder(self) -> std::io::Result<body::Decoder> {
        Ok(match self {
            Self::Gzip => body::Decoder::gzip(),
            Self::Brotli => body::Decoder::brotli(),
            Self::Zstd => body::Decoder::zstd()?,
        })
    }
}

/// One direction's switches.
#[derive(Debug, Clone, Copy)]
struct Direction {
    enabled: bool,
    ignore_no_transform: bool,
}

impl Direction {
    fn from(c: &CommonDirectionConfig) -> Self {
        Self {
            enabled: c.enabled.as_ref().is_none_or(|e| e.default_value),
            ignore_no_transform: c.ignore_no_transform_header,
        }
    }
}

/// A compiled `Decompressor`.
#[derive(Debug)]
struct Decompressor {
    library: Library,
    chunk_size: usize,
    max_inflate_ratio: u32,
    request: Direction,
    response: Direction,
    advertise: bool,
}

fn chunk_size(v: Option<u32>, path: String) -> Result<usize, BuildError> {
    match v.unwrap_or(4096) {
        n @ 4096..=65536 => Ok(n as usize),
        _ => Err(BuildError::new(path, "4096..=65536")),
    }
}

impl Decompressor {
    fn build(c: &DecompressorConfig) -> Result<Self, BuildError> {
        let l = &c.decompressor_library;
        let p = "decompressor_library";
        let (library, chunk, ratio) = match (&l.gzip, &l.brotli, &l.zstd) {
            (Some(g), None, None) => {
                if g.window_bits.is_some_and(|w| w != 15) {
                    return Err(BuildError::new(
                        format!("{p}.gzip.window_bits"),
                        "only 15 (meshgate's gzip decoder takes any window up to 32 KiB)",
                    ));
                }
                let ratio = match g.max_inflate_ratio.unwrap_or(100) {
                    n @ 1..=1032 => n,
                    _ => {
                        return Err(BuildError::new(
                            format!("{p}.gzip.max_inflate_ratio"),
                            "1..=1032",
                        ));
                    }
                };
                (
                    Library::Gzip,
                    chunk_size(g.chunk_size, format!("{p}.gzip.chunk_size"))?,
                    ratio,
                )
            }
            (None, Some(b), None) => {
                if b.disable_ring_buffer_reallocation {
                    return Err(BuildError::new(
                        format!("{p}.brotli.disable_ring_buffer_reallocation"),
                        "not supported (meshgate's brotli decoder sizes its window from the stream)",
                    ));
                }
                (
                    Library::Brotli,
                    chunk_size(b.chunk_size, format!("{p}.brotli.chunk_size"))?,
                    // Envoy's brotli and zstd have no ratio field: the
                    // same bomb bound as gzip's default applies.
                    100,
                )
            }
            (None, None, Some(z)) => (
                Library::Zstd,
                chunk_size(z.chunk_size, format!("{p}.zstd.chunk_size"))?,
                100,
            ),
            _ => {
                return Err(BuildError::new(p, "set exactly one of gzip, brotli, zstd"));
            }
        };
        Ok(Self {
            library,
            chunk_size: chunk,
            max_inflate_ratio: ratio,
            request: Direction::from(&c.request_direction_config.common_config),
            response: Direction::from(&c.response_direction_config.common_config),
            advertise: c
                .request_direction_config
                .advertise_accept_encoding
                .unwrap_or(true),
        })
    }

    /// Whether a body with these headers is decoded; if so, the coding is
    /// taken off `content-encoding` and `content-length` is dropped.
    fn take_coding(&self, dir: Direction, h: &mut HeaderMap, direction: &'static str) -> bool {
        let not = |reason: &'static str| {
            metrics::counter!(names::DECOMPRESSOR_NOT_DECOMPRESSED_TOTAL, "library" => self.library.label(), "direction" => direction, "reason" => reason).increment(1);
        };
        if !dir.enabled {
            not("disabled");
            return false;
        }
        let Some(rest) = strip_last_coding(h, self.library.encoding()) else {
            not("not_encoded");
            return false;
        };
        if !dir.ignore_no_transform
            && h.get_all(CACHE_CONTROL).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
            })
        {
            not("no_transform");
            return false;
        }
        match rest.and_then(|r| HeaderValue::from_str(&r).ok()) {
            Some(v) => {
                h.insert(CONTENT_ENCODING, v);
            }
            None => {
                h.remove(CONTENT_ENCODING);
            }
        }
        h.remove(CONTENT_LENGTH);
        metrics::counter!(names::DECOMPRESSOR_DECOMPRESSED_TOTAL, "library" => self.library.label(), "direction" => direction).increment(1);
        true
    }

    fn wrap(&self, b: &mut meshgate_core::stream::Body, direction: &'static str) {
        let dec = match self.library.decoder() {
            Ok(d) => d,
            Err(e) => {
                // Nothing can decode the body: pass it on encoded would lie
                // about content-encoding, so the body is cut off.
                tracing::warn!(error = %e, "decompressor: decoder setup failed");
                *b = box_body(Failed(Some(e)));
                return;
            }
        };
        let inner = std::mem::replace(b, empty_body());
        *b = box_body(body::DecodedBody::new(
            inner,
            dec,
            self.chunk_size,
            self.max_inflate_ratio,
            self.library.label(),
            direction,
        ));
    }
}

/// A body whose first frame was already taken: that frame, then the rest.
struct Prepend {
    first: Option<http_body::Frame<bytes::Bytes>>,
    rest: meshgate_core::stream::Body,
}

impl http_body::Body for Prepend {
    type Data = bytes::Bytes;
    type Error = meshgate_core::stream::BodyError;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.first.take() {
            Some(f) => std::task::Poll::Ready(Some(Ok(f))),
            None => std::pin::Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

/// A body that fails at once (the decoder could not be set up).
struct Failed(Option<std::io::Error>);

impl http_body::Body for Failed {
    type Data = bytes::Bytes;
    type Error = meshgate_core::stream::BodyError;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.get_mut().0.take().map(|e| Err(e.into())))
    }
}

/// If the last coding of `content-encoding` (the one applied last) is
/// `coding`: `Some` of the codings before it (`None` when it was the only
/// one). Several header lines are read as one list.
fn strip_last_coding(h: &HeaderMap, coding: &str) -> Option<Option<String>> {
    let mut codings: Vec<&str> = Vec::new();
    for v in h.get_all(CONTENT_ENCODING) {
        let v = v.to_str().ok()?;
        codings.extend(v.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    let last = codings.pop()?;
    let ours = last.eq_ignore_ascii_case(coding)
        || (coding == "gzip" && last.eq_ignore_ascii_case("x-gzip"));
    if !ours {
        return None;
    }
    Some((!codings.is_empty()).then(|| codings.join(", ")))
}

impl StreamFilter for Decompressor {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        _route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        if self.response.enabled && self.advertise {
            advertise(req.headers_mut(), self.library.encoding());
        }
        if !self.take_coding(self.request, req.headers_mut(), "request") {
            return Box::pin(std::future::ready(FilterStatus::Continue));
        }
        self.wrap(req.body_mut(), "request");
        Box::pin(async move {
            // The first decoded frame before anything goes upstream: a
            // refusal is still a local answer here.
            let mut b = std::mem::replace(req.body_mut(), empty_body());
            match b.frame().await {
                None => {}
                Some(Ok(first)) => {
                    *req.body_mut() = box_body(Prepend {
                        first: Some(first),
                        rest: b,
                    });
                }
                Some(Err(e)) => {
                    let bomb = e
                        .downcast_ref::<body::DecodeError>()
                        .is_some_and(|e| matches!(e, body::DecodeError::Bomb));
                    let reason = if bomb {
                        LocalReason::PayloadTooLarge
                    } else {
                        LocalReason::BadRequest
                    };
                    return FilterStatus::Respond(local_reply(info, reason));
                }
            }
            FilterStatus::Continue
        })
    }

    fn on_response(&self, resp: &mut Response, _info: &mut StreamInfo) {
        if self.take_coding(self.response, resp.headers_mut(), "response") {
            self.wrap(resp.body_mut(), "response");
        }
    }
}

/// Adds `coding` to `accept-encoding` unless it is already named there.
fn advertise(h: &mut HeaderMap, coding: &str) {
    let named = h.get_all(ACCEPT_ENCODING).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|c| {
                c.split(';')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case(coding))
            })
        })
    });
    if !named {
        h.append(
            ACCEPT_ENCODING,
            HeaderValue::from_static(match coding {
                "br" => "br",
                "zstd" => "zstd",
                _ => "gzip",
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(v: serde_json::Value) -> Result<Decompressor, BuildError> {
        Decompressor::build(&parse_typed(&v)?)
    }

    fn headers(ce: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in ce {
            h.append(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        h
    }

    #[test]
    fn the_last_coding_is_taken_off() {
        let d = build(serde_json::json!({"decompressor_library": {"gzip": {}}})).unwrap();
        let mut h = headers(&["gzip"]);
        assert!(d.take_coding(d.request, &mut h, "request"));
        assert!(!h.contains_key(CONTENT_ENCODING));
        assert!(!h.contains_key(CONTENT_LENGTH));
        let mut h = headers(&["br, gzip"]);
        assert!(d.take_coding(d.request, &mut h, "request"));
        assert_eq!(h[CONTENT_ENCODING], "br");
        // gzip applied first, br last: not ours to undo.
        let mut h = headers(&["gzip", "br"]);
        assert!(!d.take_coding(d.request, &mut h, "request"));
        assert!(h.contains_key(CONTENT_LENGTH));
        let mut h = headers(&["gzip"]);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-transform"));
        assert!(!d.take_coding(d.request, &mut h, "request"));
        let d = build(serde_json::json!({"decompressor_library": {"zstd": {}},
            "request_direction_config": {"common_config": {"enabled": {"default_value": false}}}}))
        .unwrap();
        assert!(!d.take_coding(d.request, &mut headers(&["zstd"]), "request"));
        assert!(d.take_coding(d.response, &mut headers(&["zstd"]), "response"));
    }

    #[test]
    fn accept_encoding_is_advertised_once() {
        let mut h = HeaderMap::new();
        advertise(&mut h, "br");
        advertise(&mut h, "br");
        assert_eq!(h.get_all(ACCEPT_ENCODING).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0.5"));
        advertise(&mut h, "gzip");
        assert_eq!(h.get_all(ACCEPT_ENCODING).iter().count(), 1);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (v, path) in [
            (
                serde_json::json!({"decompressor_library": {}}),
                "decompressor_library",
            ),
            (
                serde_json::json!({"decompressor_library": {"gzip": {"max_inflate_ratio": 2000}}}),
                "decompressor_library.gzip.max_inflate_ratio",
            ),
            (
                serde_json::json!({"decompressor_library": {"gzip": {"window_bits": 12}}}),
                "decompressor_library.gzip.window_bits",
            ),
            (
                serde_json::json!({"decompressor_library": {"zstd": {"chunk_size": 10}}}),
                "decompressor_library.zstd.chunk_size",
            ),
            (
                serde_json::json!({"decompressor_library": {"brotli": {"disable_ring_buffer_reallocation": true}}}),
                "decompressor_library.brotli.disable_ring_buffer_reallocation",
            ),
        ] {
            assert_eq!(build(v).unwrap_err().path, path);
        }
        let e = build(serde_json::json!({"decompressor_library": {"zstd": {"dictionaries": []}}}))
            .unwrap_err();
        assert!(e.message.contains("dictionaries"), "{e:?}");
    }
}
