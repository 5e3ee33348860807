//! `compressor`: response compression (Envoy's
//! `envoy.filters.http.compressor` with the gzip, brotli or zstd library,
//! one library per filter as in Envoy). The request phase reads
//! `accept-encoding` (q-values) once per stream and registers this filter's
//! encoding in the stream's `Negotiation`; with several compressor filters
//! the response phase picks ONE encoding for the stream: the highest
//! q-value, a tie going to the last filter with `choose_first`, else to the
//! first filter in the chain. The chosen filter then decides whether the
//! response is worth compressing (status, `content-encoding`,
//! `cache-control: no-transform`, media type, `content-length` against
//! `min_content_length`, ETag) and, if so, rewrites the head
//! (`content-encoding`, `vary: accept-encoding`, no `content-length`, ETag
//! weakened or removed) and wraps the body in a streaming encoder
//! (`body.rs`): one compressed chunk per upstream chunk, nothing buffered
//! whole. A listener without this filter pays nothing.

mod body;

use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderValue, Method, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::config::compressor::{CompressorConfig, CompressorPerRoute};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, Request, Response, StreamFilter, StreamFilterFactory, StreamInfo,
    box_body, empty_body,
};
use std::sync::Arc;

/// Envoy's default `content_type` list.
const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "text/xml",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "application/xhtml+xml",
];

const GZIP: &str = "gzip";

/// `inner` gzip-encoded as the filter streams it (level 1..=9), counted
/// under `library` `gzip` (the criterion bench uses it).
pub fn gzip_body(inner: meshgate_core::stream::Body, level: u32) -> meshgate_core::stream::Body {
    box_body(body::EncodedBody::new(
        inner,
        body::Encoder::gzip(level.clamp(1, 9)),
        GZIP,
    ))
}

/// The compiled encoder settings of one compressor filter.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Library {
    Gzip {
        level: u32,
    },
    Brotli {
        quality: u32,
        window_bits: u32,
        input_block_bits: u32,
        chunk_size: usize,
        mode: brotli::enc::backward_references::BrotliEncoderMode,
        disable_literal_context_modeling: bool,
    },
    Zstd {
        level: i32,
        checksum: bool,
        strategy: Option<zstd::zstd_safe::Strategy>,
    },
}

impl Library {
    /// The `content-encoding` token.
    fn encoding(&self) -> &'static str {
        match self {
            Self::Gzip { .. } => GZIP,
            Self::Brotli { .. } => "br",
            Self::Zstd { .. } => "zstd",
        }
    }

    /// The `library` metric label.
    fn label(&self) -> &'static str {
        match self {
            Self::Gzip { .. } => GZIP,
            Self::Brotli { .. } => "brotli",
            Self::Zstd { .. } => "zstd",
        }
    }

    /// A fresh encoder for one response body.
    fn encoder(&self) -> std::io::Result<body::Encoder> {
        Ok(match *self {
            Self::Gzip { level } => body::Encoder::gzip(level),
            Self::Brotli {
                quality,
                window_bits,
                input_block_bits,
                chunk_size,
                mode,
                disable_literal_context_modeling,
            } => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    mode,
                    disable_literal_context_modeling: i32::from(disable_literal_context_modeling),
                    ..Default::default()
                };
                body::Encoder::Brotli(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    chunk_size,
                    &params,
                )))
            }
            Self::Zstd {
                level,
                checksum,
                strategy,
            } => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.include_checksum(checksum)?;
                if let Some(s) = strategy {
                    e.set_parameter(zstd::zstd_safe::CParameter::Strategy(s))?;
                }
                body::Encoder::Zstd(e)
            }
        })
    }
}

/// Factory of `compressor`.
pub struct CompressorFactory;

impl StreamFilterFactory for CompressorFactory {
    fn name(&self) -> &'static str {
        "compressor"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: CompressorConfig = parse_typed(config)?;
        Ok(Arc::new(Compressor::build(&c)?))
    }
}

/// A compiled `Compressor`.
#[derive(Debug)]
struct Compressor {
    library: Library,
    choose_first: bool,
    enabled: bool,
    min_content_length: u64,
    /// Lower-case media types (no parameters).
    content_types: Vec<String>,
    disable_on_etag_header: bool,
    weaken_etag_on_compress: bool,
    remove_accept_encoding_header: bool,
    uncompressible: Vec<u16>,
}

fn gzip_level(level: Option<&str>) -> Result<u32, BuildError> {
    let path = "compressor_library.gzip.compression_level";
    Ok(match level.unwrap_or("DEFAULT_COMPRESSION") {
        "DEFAULT_COMPRESSION" => 6,
        "BEST_SPEED" => 1,
        "BEST_COMPRESSION" => 9,
        other => match other
            .strip_prefix("COMPRESSION_LEVEL_")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n @ 1..=9) => n,
            _ => {
                return Err(BuildError::new(
                    path,
                    "DEFAULT_COMPRESSION, BEST_SPEED, BEST_COMPRESSION or COMPRESSION_LEVEL_1..9",
                ));
            }
        },
    })
}

/// `v` if it is in `range`, else an error naming `path`.
fn in_range(
    v: Option<u32>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    path: &str,
) -> Result<u32, BuildError> {
    let v = v.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(BuildError::new(
            path,
            format!("{}..={}", range.start(), range.end()),
        ))
    }
}

fn brotli_library(
    b: &meshgate_core::config::compressor::BrotliConfig,
) -> Result<Library, BuildError> {
    use brotli::enc::backward_references::BrotliEncoderMode as M;
    let lib = "compressor_library.brotli";
    let mode = match b.encoder_mode.as_deref().unwrap_or("DEFAULT") {
        "DEFAULT" | "GENERIC" => M::BROTLI_MODE_GENERIC,
        "TEXT" => M::BROTLI_MODE_TEXT,
        "FONT" => M::BROTLI_MODE_FONT,
        _ => {
            return Err(BuildError::new(
                format!("{lib}.encoder_mode"),
                "DEFAULT, GENERIC, TEXT or FONT",
            ));
        }
    };
    Ok(Library::Brotli {
        quality: in_range(b.quality, 3, 0..=11, &format!("{lib}.quality"))?,
        window_bits: in_range(b.window_bits, 18, 10..=24, &format!("{lib}.window_bits"))?,
        input_block_bits: in_range(
            b.input_block_bits,
            24,
            16..=24,
            &format!("{lib}.input_block_bits"),
        )?,
        chunk_size: in_range(
            b.chunk_size,
            4096,
            4096..=65536,
            &format!("{lib}.chunk_size"),
        )? as usize,
        mode,
        disable_literal_context_modeling: b.disable_literal_context_modeling,
    })
}

fn zstd_library(z: &meshgate_core::config::compressor::ZstdConfig) -> Result<Library, BuildError> {
    use zstd::zstd_safe::Strategy as S;
    let lib = "compressor_library.zstd";
    if z.chunk_size.is_some() {
        return Err(BuildError::new(
            format!("{lib}.chunk_size"),
            "not supported (meshgate's zstd flushes per upstream chunk with a fixed stream buffer)",
        ));
    }
    let strategy = match z.strategy.as_deref().unwrap_or("DEFAULT") {
        "DEFAULT" => None,
        "FAST" => Some(S::ZSTD_fast),
        "DFAST" => Some(S::ZSTD_dfast),
        "GREEDY" => Some(S::ZSTD_greedy),
        "LAZY" => Some(S::ZSTD_lazy),
        "LAZY2" => Some(S::ZSTD_lazy2),
        "BTLAZY2" => Some(S::ZSTD_btlazy2),
        "BTOPT" => Some(S::ZSTD_btopt),
        "BTULTRA" => Some(S::ZSTD_btultra),
        "BTULTRA2" => Some(S::ZSTD_btultra2),
        _ => {
            return Err(BuildError::new(
                format!("{lib}.strategy"),
                "DEFAULT, FAST, DFAST, GREEDY, LAZY, LAZY2, BTLAZY2, BTOPT, BTULTRA or BTULTRA2",
            ));
        }
    };
    let level = in_range(
        z.compression_level,
        3,
        1..=22,
        &format!("{lib}.compression_level"),
    )?;
    Ok(Library::Zstd {
        level: i32::try_from(level).unwrap_or(3),
        checksum: z.enable_checksum,
        strategy,
    })
}

fn gzip_library(g: &meshgate_core::config::compressor::GzipConfig) -> Result<Library, BuildError> {
    let level = gzip_level(g.compression_level.as_deref())?;
    let lib = "compressor_library.gzip";
    // The gzip encoder (flate2 on miniz_oxide) has a fixed 32 KiB
    // window and memory use, and flushes per upstream chunk: a setting
    // it cannot honour is refused, not accepted and ignored.
    if g.memory_level.is_some() {
        return Err(BuildError::new(
            format!("{lib}.memory_level"),
            "not supported (meshgate's gzip has a fixed memory level)",
        ));
    }
    if g.window_bits.is_some_and(|w| w != 15) {
        return Err(BuildError::new(
            format!("{lib}.window_bits"),
            "only 15 (meshgate's gzip uses a 32 KiB window)",
        ));
    }
    if g.chunk_size.is_some() {
        return Err(BuildError::new(
            format!("{lib}.chunk_size"),
            "not supported (meshgate's gzip flushes per upstream chunk)",
        ));
    }
    Ok(Library::Gzip { level })
}

impl Compressor {
    fn build(c: &CompressorConfig) -> Result<Self, BuildError> {
        let l = &c.compressor_library;
        let library = match (&l.gzip, &l.brotli, &l.zstd) {
            (Some(g), None, None) => gzip_library(g)?,
            (None, Some(b), None) => brotli_library(b)?,
            (None, None, Some(z)) => zstd_library(z)?,
            _ => {
                return Err(BuildError::new(
                    "compressor_library",
                    "set exactly one of gzip, brotli, zstd (one library per compressor filter, as in Envoy)",
                ));
            }
        };
        let r = &c.response_direction_config;
        let mut uncompressible = Vec::new();
        for (i, s) in r.uncompressible_response_codes.iter().enumerate() {
            match u16::try_from(*s) {
                Ok(s @ 200..=599) => uncompressible.push(s),
                _ => {
                    return Err(BuildError::new(
                        format!("response_direction_config.uncompressible_response_codes[{i}]"),
                        "an HTTP status 200..=599",
                    ));
                }
            }
        }
        let content_types = if r.common_config.content_type.is_empty() {
            DEFAULT_TYPES.iter().map(|s| s.to_string()).collect()
        } else {
            r.common_config
                .content_type
                .iter()
                .map(|t| media_type(t).to_string())
                .collect()
        };
        Ok(Self {
            library,
            choose_first: c.choose_first,
            enabled: r
                .common_config
                .enabled
                .as_ref()
                .is_none_or(|e| e.default_value),
            min_content_length: u64::from(r.common_config.min_content_length.unwrap_or(30)),
            content_types,
            disable_on_etag_header: r.disable_on_etag_header,
            weaken_etag_on_compress: r.weaken_etag_on_compress,
            remove_accept_encoding_header: r.remove_accept_encoding_header,
            uncompressible,
        })
    }

    /// Why this response is not compressed, if it is not (the request
    /// side aside).
    fn refuse(&self, resp: &Response) -> Option<&'static str> {
        let status = resp.status();
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || self.uncompressible.contains(&status.as_u16())
        {
            return Some("status");
        }
        let h = resp.headers();
        if h.get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Some("content_encoding");
        }
        if h.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        }) {
            return Some("no_transform");
        }
        // As in Envoy, a response without a media type may be compressed.
        if let Some(t) = h.get(CONTENT_TYPE) {
            let t = t.to_str().map(media_type).unwrap_or_default();
            if !self.content_types.iter().any(|c| c.eq_ignore_ascii_case(t)) {
                return Some("content_type");
            }
        }
        match h.get(CONTENT_LENGTH) {
            Some(l) => {
                let len = l.to_str().ok().and_then(|l| l.parse::<u64>().ok());
                if len.is_none_or(|l| l < self.min_content_length) {
                    return Some("content_length");
                }
            }
            None if http_body::Body::is_end_stream(resp.body()) => return Some("content_length"),
            None => {}
        }
        if self.disable_on_etag_header && h.contains_key(ETAG) {
            return Some("etag");
        }
        None
    }
}

/// `type/subtype` of a `content-type` value, without parameters.
fn media_type(v: &str) -> &str {
    v.split(';').next().unwrap_or("").trim()
}

/// The q-values of `accept-encoding` that matter to meshgate's encoders
/// (parsed once per stream, nothing allocated).
#[derive(Debug, Default, Clone, Copy)]
struct Accept {
    gzip: Option<f32>,
    br: Option<f32>,
    zstd: Option<f32>,
    star: Option<f32>,
    identity: Option<f32>,
}

impl Accept {
    fn parse(req: &Request) -> Self {
        let mut a = Self::default();
        for v in req.headers().get_all(ACCEPT_ENCODING) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let mut q = 1.0f32;
                for p in parts {
                    if let Some((k, val)) = p.split_once('=')
                        && k.trim().eq_ignore_ascii_case("q")
                    {
                        q = val.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                    }
                }
                let slot =
                    if coding.eq_ignore_ascii_case(GZIP) || coding.eq_ignore_ascii_case("x-gzip") {
                        &mut a.gzip
                    } else if coding.eq_ignore_ascii_case("br") {
                        &mut a.br
                    } else if coding.eq_ignore_ascii_case("zstd") {
                        &mut a.zstd
                    } else if coding == "*" {
                        &mut a.star
                    } else if coding.eq_ignore_ascii_case("identity") {
                        &mut a.identity
                    } else {
                        continue;
                    };
                *slot = Some(q);
            }
        }
        a
    }

    /// The q-value the client gives `encoding` (`*` covers a coding it
    /// does not name), if the encoding may be used at all: non-zero and
    /// not below an explicit `identity`'s.
    fn q(&self, encoding: &str) -> Option<f32> {
        let named = match encoding {
            GZIP => self.gzip,
            "br" => self.br,
            "zstd" => self.zstd,
            _ => None,
        };
        let q = named.or(self.star).unwrap_or(0.0);
        (q > 0.0 && self.identity.is_none_or(|i| q >= i)).then_some(q)
    }
}

/// What the request phase learnt, shared by every compressor filter of
/// the stream.
#[derive(Clone)]
struct Negotiation {
    accept: Accept,
    head: bool,
    /// The encodings of the compressor filters that ran on the request,
    /// in chain order, with their `choose_first`.
    registered: Vec<(&'static str, bool)>,
}

impl Negotiation {
    /// The stream's encoding: the highest q-value; a tie goes to the last
    /// filter with `choose_first`, else to the first filter in the chain.
    fn choose(&self) -> Option<&'static str> {
        let mut best: Option<(&'static str, f32)> = None;
        for &(enc, first) in &self.registered {
            let Some(q) = self.accept.q(enc) else {
                continue;
            };
            match best {
                Some((_, bq)) if q < bq || (q == bq && !first) => {}
                _ => best = Some((enc, q)),
            }
        }
        best.map(|(e, _)| e)
    }
}

/// A compiled `CompressorPerRoute.overrides`.
#[derive(Debug)]
struct Overrides {
    remove_accept_encoding_header: Option<bool>,
}

impl StreamFilter for Compressor {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let over = route.config.and_then(|c| c.downcast_ref::<Overrides>());
        if self.enabled {
            // The first compressor filter of the stream reads the header
            // (a later one may find it removed by the first).
            if info.filter_state.get::<Negotiation>().is_none() {
                info.filter_state.insert(Negotiation {
                    accept: Accept::parse(req),
                    head: req.method() == Method::HEAD,
                    registered: Vec::with_capacity(2),
                });
            }
            if let Some(n) = info.filter_state.get_mut::<Negotiation>() {
                n.registered
                    .push((self.library.encoding(), self.choose_first));
            }
        }
        let remove = over
            .and_then(|o| o.remove_accept_encoding_header)
            .unwrap_or(self.remove_accept_encoding_header);
        if remove {
            req.headers_mut().remove(ACCEPT_ENCODING);
        }
        Box::pin(std::future::ready(FilterStatus::Continue))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let label = self.library.label();
        let encoding = self.library.encoding();
        let not = |reason: &'static str| {
            metrics::counter!(names::COMPRESSOR_NOT_COMPRESSED_TOTAL, "library" => label, "reason" => reason)
                .increment(1);
        };
        let Some((chosen, head)) = info
            .filter_state
            .get::<Negotiation>()
            .filter(|n| n.registered.iter().any(|r| r.0 == encoding))
            .map(|n| (n.choose(), n.head))
        else {
            not("disabled");
            return;
        };
        if let Some(reason) = self.refuse(resp) {
            not(reason);
            return;
        }
        // The representation depends on accept-encoding from here on
        // (said once, whichever compressor filter gets here first).
        let varies = resp.headers().get_all(VARY).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
        });
        if !varies {
            resp.headers_mut()
                .append(VARY, HeaderValue::from_static("accept-encoding"));
        }
        if chosen != Some(encoding) {
            not("not_accepted");
            return;
        }
        if head {
            not("head");
            return;
        }
        let enc = match self.library.encoder() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(library = label, error = %e, "compressor: encoder setup failed; response sent uncompressed");
                not("encoder");
                return;
            }
        };
        let h = resp.headers_mut();
        h.remove(CONTENT_LENGTH);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        if let Some(etag) = h.get(ETAG).cloned() {
            let weak = etag.as_bytes().starts_with(b"W/");
            if !weak {
                if self.weaken_etag_on_compress {
                    let mut v = b"W/".to_vec();
                    v.extend_from_slice(etag.as_bytes());
                    match HeaderValue::from_bytes(&v) {
                        Ok(v) => {
                            h.insert(ETAG, v);
                        }
                        Err(_) => {
                            h.remove(ETAG);
                        }
                    }
                } else {
                    // A strong validator promises these exact bytes.
                    h.remove(ETAG);
                }
            }
        }
        metrics::counter!(names::COMPRESSOR_COMPRESSED_TOTAL, "library" => label).increment(1);
        let inner = std::mem::replace(resp.body_mut(), empty_body());
        *resp.body_mut() = box_body(body::EncodedBody::new(inner, enc, label));
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: CompressorPerRoute = parse_typed(config)?;
        if c.disabled.is_some() {
            // `{disabled: true}` alone is the chain's switch; mixed with
            // overrides it is Envoy's oneof set twice.
            return Err(BuildError::new(
                "disabled",
                "set disabled alone, or overrides",
            ));
        }
        Ok(Arc::new(Overrides {
            remove_accept_encoding_header: c
                .overrides
                .and_then(|o| o.response_direction_config)
                .and_then(|r| r.remove_accept_encoding_header),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::stream::full_body;

    fn req(ae: &str) -> Request {
        http::Request::builder()
            .header(ACCEPT_ENCODING, ae)
            .body(empty_body())
            .unwrap()
    }

    fn build(v: serde_json::Value) -> Result<Compressor, BuildError> {
        Compressor::build(&parse_typed(&v)?)
    }

    fn accepts_gzip(r: &Request) -> bool {
        Accept::parse(r).q(GZIP).is_some()
    }

    #[test]
    fn accept_encoding_q_values() {
        assert!(accepts_gzip(&req("gzip")));
        assert!(accepts_gzip(&req("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&req("*")));
        assert!(!accepts_gzip(&req("gzip;q=0")));
        assert!(!accepts_gzip(&req("*;q=0")));
        assert!(!accepts_gzip(&req("br")));
        assert!(!accepts_gzip(&req("gzip;q=0.5, identity;q=1")));
        assert!(accepts_gzip(&req("GZIP ; q=0.5, *;q=0")));
        assert!(!accepts_gzip(&req("")));
    }

    fn negotiate(ae: &str, registered: &[(&'static str, bool)]) -> Option<&'static str> {
        Negotiation {
            accept: Accept::parse(&req(ae)),
            head: false,
            registered: registered.to_vec(),
        }
        .choose()
    }

    #[test]
    fn several_compressors_choose_one_encoding() {
        let gz_br_zs = [(GZIP, false), ("br", false), ("zstd", false)];
        // The highest q-value wins, whatever the chain order.
        assert_eq!(negotiate("gzip;q=0.5, br;q=0.9", &gz_br_zs), Some("br"));
        assert_eq!(negotiate("zstd, gzip;q=0.1", &gz_br_zs), Some("zstd"));
        // A tie goes to the first filter in the chain...
        assert_eq!(negotiate("br, gzip, zstd", &gz_br_zs), Some(GZIP));
        assert_eq!(negotiate("*", &gz_br_zs), Some(GZIP));
        // ...unless one sets choose_first (the last such one wins).
        let first = [(GZIP, false), ("br", true), ("zstd", true)];
        assert_eq!(negotiate("br, gzip, zstd", &first), Some("zstd"));
        assert_eq!(negotiate("br, gzip, zstd;q=0.5", &first), Some("br"));
        // `*` covers unnamed codings only; q=0 excludes.
        assert_eq!(negotiate("gzip;q=0, *", &gz_br_zs), Some("br"));
        assert_eq!(negotiate("br;q=0.2, *;q=0.1", &gz_br_zs), Some("br"));
        assert_eq!(negotiate("deflate", &gz_br_zs), None);
        assert_eq!(negotiate("br, identity;q=1", &[(GZIP, false)]), None);
        assert_eq!(negotiate("", &gz_br_zs), None);
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(full_body(body)).unwrap()
    }

    #[test]
    fn what_is_not_compressed() {
        let c = build(serde_json::json!({"compressor_library": {"gzip": {}}})).unwrap();
        let long = "x".repeat(40).leak() as &'static str;
        let cl = long.len().to_string();
        let ok = [
            ("content-type", "text/plain"),
            ("content-length", cl.as_str()),
        ];
        assert_eq!(c.refuse(&resp(200, &ok, long)), None);
        assert_eq!(c.refuse(&resp(204, &[], "")), Some("status"));
        assert_eq!(c.refuse(&resp(304, &[], "")), Some("status"));
        assert_eq!(
            c.refuse(&resp(200, &[ok[0], ("content-length", "10")], "0123456789")),
            Some("content_length")
        );
        assert_eq!(
            c.refuse(&resp(200, &[("content-type", "image/png"), ok[1]], long)),
            Some("content_type")
        );
        assert_eq!(
            c.refuse(&resp(
                200,
                &[("content-type", "text/html; charset=utf-8"), ok[1]],
                long
            )),
            None
        );
        assert_eq!(
            c.refuse(&resp(
                200,
                &[ok[0], ok[1], ("content-encoding", "br")],
                long
            )),
            Some("content_encoding")
        );
        assert_eq!(
            c.refuse(&resp(
                200,
                &[ok[0], ok[1], ("cache-control", "no-transform")],
                long
            )),
            Some("no_transform")
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = build(serde_json::json!({"compressor_library": {"brotli": {}, "gzip": {}}}))
            .unwrap_err();
        assert_eq!(e.path, "compressor_library");
        let e = build(serde_json::json!({"compressor_library": {}})).unwrap_err();
        assert_eq!(e.path, "compressor_library");
        for (lib, field, v) in [
            ("brotli", "quality", serde_json::json!(12)),
            ("brotli", "window_bits", serde_json::json!(25)),
            ("brotli", "input_block_bits", serde_json::json!(15)),
            ("brotli", "chunk_size", serde_json::json!(100)),
            ("brotli", "encoder_mode", serde_json::json!("ZIP")),
            ("zstd", "compression_level", serde_json::json!(23)),
            ("zstd", "strategy", serde_json::json!("SLOW")),
            ("zstd", "chunk_size", serde_json::json!(4096)),
        ] {
            let e =
                build(serde_json::json!({"compressor_library": {lib: {field: v}}})).unwrap_err();
            assert_eq!(e.path, format!("compressor_library.{lib}.{field}"));
        }
        let e = build(serde_json::json!({"compressor_library": {"zstd": {"dictionary": {}}}}))
            .unwrap_err();
        assert!(e.message.contains("dictionary"), "{e:?}");
        assert_eq!(
            build(serde_json::json!({"compressor_library": {"brotli": {"quality": 5, "encoder_mode": "TEXT", "window_bits": 22, "chunk_size": 8192}}}))
                .unwrap()
                .library
                .encoding(),
            "br"
        );
        let z = build(serde_json::json!({"compressor_library": {"zstd": {"compression_level": 7, "enable_checksum": true, "strategy": "LAZY2"}}, "choose_first": true})).unwrap();
        assert!(z.choose_first);
        assert_eq!(
            z.library,
            Library::Zstd {
                level: 7,
                checksum: true,
                strategy: Some(zstd::zstd_safe::Strategy::ZSTD_lazy2)
            }
        );
        let e = build(serde_json::json!({"compressor_library": {"gzip": {"compression_level": "COMPRESSION_LEVEL_10"}}})).unwrap_err();
        assert_eq!(e.path, "compressor_library.gzip.compression_level");
        let e = build(serde_json::json!({"compressor_library": {"gzip": {"window_bits": 20}}}))
            .unwrap_err();
        assert_eq!(e.path, "compressor_library.gzip.window_bits");
        // Settings the encoder cannot honour are refused, not ignored.
        let e = build(serde_json::json!({"compressor_library": {"gzip": {"memory_level": 5}}}))
            .unwrap_err();
        assert_eq!(e.path, "compressor_library.gzip.memory_level");
        let e = build(serde_json::json!({"compressor_library": {"gzip": {"chunk_size": 4096}}}))
            .unwrap_err();
        assert_eq!(e.path, "compressor_library.gzip.chunk_size");
        assert!(
            build(serde_json::json!({"compressor_library": {"gzip": {"window_bits": 15}}})).is_ok()
        );
        let e = build(
            serde_json::json!({"compressor_library": {"gzip": {}}, "request_direction_config": {}}),
        )
        .unwrap_err();
        assert!(e.message.contains("request_direction_config"), "{e:?}");
        assert_eq!(
            build(serde_json::json!({"compressor_library": {"gzip": {"compression_level": "BEST_SPEED"}}}))
                .unwrap()
                .library,
            Library::Gzip { level: 1 }
        );
    }
}
