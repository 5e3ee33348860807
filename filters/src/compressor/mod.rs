//! `compressor`: response compression (Envoy's
//! `envoy.filters.http.compressor` with the gzip library). The request
//! phase reads `accept-encoding` (q-values) and keeps the answer for the
//! stream; the response phase decides whether the response is worth
//! compressing (status, `content-encoding`, `cache-control: no-transform`,
//! media type, `content-length` against `min_content_length`, ETag) and,
//! if so, rewrites the head (`content-encoding: gzip`, `vary:
//! accept-encoding`, no `content-length`, ETag weakened or removed) and
//! wraps the body in a streaming encoder (`body.rs`): one compressed chunk
//! per upstream chunk, nothing buffered whole. A listener without this
//! filter pays nothing.

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
    box_body(body::GzipBody::new(inner, level.clamp(1, 9), GZIP))
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
    level: u32,
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

impl Compressor {
    fn build(c: &CompressorConfig) -> Result<Self, BuildError> {
        let Some(g) = &c.compressor_library.gzip else {
            return Err(BuildError::new(
                "compressor_library",
                "set gzip (the only compressor library meshgate ships; brotli and zstd are refused)",
            ));
        };
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
            level,
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

/// Whether `accept-encoding` lets gzip be used: gzip (or `*`) with a
/// non-zero q-value not below an explicit `identity`'s.
fn accepts_gzip(req: &Request) -> bool {
    let mut gzip: Option<f32> = None;
    let mut star: Option<f32> = None;
    let mut identity: Option<f32> = None;
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
            if coding.eq_ignore_ascii_case(GZIP) || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q);
            } else if coding == "*" {
                star = Some(q);
            } else if coding.eq_ignore_ascii_case("identity") {
                identity = Some(q);
            }
        }
    }
    let q = gzip.or(star).unwrap_or(0.0);
    q > 0.0 && identity.is_none_or(|i| q >= i)
}

/// What the request phase learnt, for the response phase.
#[derive(Clone, Copy)]
struct Negotiated {
    gzip: bool,
    head: bool,
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
            info.filter_state.insert(Negotiated {
                gzip: accepts_gzip(req),
                head: req.method() == Method::HEAD,
            });
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
        let not = |reason: &'static str| {
            metrics::counter!(names::COMPRESSOR_NOT_COMPRESSED_TOTAL, "library" => GZIP, "reason" => reason)
                .increment(1);
        };
        let Some(n) = info.filter_state.remove::<Negotiated>() else {
            not("disabled");
            return;
        };
        if let Some(reason) = self.refuse(resp) {
            not(reason);
            return;
        }
        // The representation depends on accept-encoding from here on.
        resp.headers_mut()
            .append(VARY, HeaderValue::from_static("accept-encoding"));
        if !n.gzip {
            not("not_accepted");
            return;
        }
        if n.head {
            not("head");
            return;
        }
        let h = resp.headers_mut();
        h.remove(CONTENT_LENGTH);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(GZIP));
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
        metrics::counter!(names::COMPRESSOR_COMPRESSED_TOTAL, "library" => GZIP).increment(1);
        let inner = std::mem::replace(resp.body_mut(), empty_body());
        *resp.body_mut() = box_body(body::GzipBody::new(inner, self.level, GZIP));
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
        let e = build(serde_json::json!({"compressor_library": {"brotli": {}}})).unwrap_err();
        assert!(e.message.contains("brotli"), "{e:?}");
        let e = build(serde_json::json!({"compressor_library": {}})).unwrap_err();
        assert_eq!(e.path, "compressor_library");
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
                .level,
            1
        );
    }
}
