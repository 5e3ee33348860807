//! `body_digest`: a stream filter written outside meshgate's crates
//! (docs/extending.md, "Writing a stream filter", walks through it). It
//! shows every part of the `StreamFilter` trait:
//!
//! - the request phase (head): refuses a request without
//!   `required_header` (400, a local reply counted as this filter's
//!   denial); with `digest_header`, reads the whole body (bounded by
//!   `max_buffer_bytes`, 413 past it) and adds `x-body-sha256` to the
//!   request the upstream gets;
//! - the request body and trailer phases (streaming): with
//!   `verify_trailer`, hashes each chunk as it passes and checks the
//!   client's `x-body-sha256` trailer at the end; a wrong or missing one
//!   ends the stream with 400 before the upstream sees the end of the
//!   body; a good one gets an `x-body-verified: sha256` trailer added;
//! - the response body phase: with `mask_response`, each occurrence of
//!   that text in a response chunk is replaced by as many `*` (the length
//!   is kept, so `content-length` stays right; a match split across two
//!   chunks is not masked: it is an example);
//! - the response phase (head): with `deny_response_header`, a response
//!   carrying that header is replaced by a 403 refusal;
//! - per-route config: the same fields under `per_filter_config:
//!   {body_digest: {...}}` on a virtual host, route or weighted cluster
//!   replace the chain's config there.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{BodyFilter, ParsedConfig, RouteView, buffer_body};
use meshgate_core::network::BuildContext;
use meshgate_core::registry::{DuplicateName, Registry};
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, local_reply,
};
use std::sync::Arc;

/// The name the filter is configured with (`stream_filters[].name`).
pub const NAME: &str = "body_digest";
const DIGEST: HeaderName = HeaderName::from_static("x-body-sha256");
const VERIFIED: HeaderName = HeaderName::from_static("x-body-verified");

/// meshgate's own registry (every shipped codec and filter) plus
/// `body_digest`.
pub fn registry() -> Result<Registry, DuplicateName> {
    let mut r = meshgate_cmd::registry()?;
    r.register_stream_filter(Arc::new(BodyDigestFactory))?;
    Ok(r)
}

/// The filter's config, in the chain and per route (the per-route one
/// replaces the chain's).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// A request without this header is refused (400).
    #[serde(default)]
    pub required_header: Option<String>,
    /// Read the whole body and add `x-body-sha256` to the upstream request.
    #[serde(default)]
    pub digest_header: bool,
    /// The bound of `digest_header` (413 past it).
    #[serde(default = "default_max")]
    pub max_buffer_bytes: usize,
    /// Check the `x-body-sha256` request trailer while the body streams.
    #[serde(default)]
    pub verify_trailer: bool,
    /// Text masked with `*` in response bodies.
    #[serde(default)]
    pub mask_response: Option<String>,
    /// A response carrying this header is refused (403) in the response
    /// phase: an upstream leaking an internal header (chain config only,
    /// as the response phase has no route view).
    #[serde(default)]
    pub deny_response_header: Option<String>,
}

fn default_max() -> usize {
    1 << 20
}

impl DigestConfig {
    fn parse(v: &serde_json::Value) -> Result<Self, BuildError> {
        let c: Self = parse_typed(v)?;
        if let Some(h) = &c.required_header {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| BuildError::new("required_header", "not a header name"))?;
        }
        if let Some(h) = &c.deny_response_header {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| BuildError::new("deny_response_header", "not a header name"))?;
        }
        if c.mask_response.as_deref() == Some("") {
            return Err(BuildError::new("mask_response", "must not be empty"));
        }
        Ok(c)
    }
}

/// Factory of `body_digest`.
pub struct BodyDigestFactory;

impl StreamFilterFactory for BodyDigestFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let config = match config {
            serde_json::Value::Null => serde_json::json!({}),
            c => c.clone(),
        };
        Ok(Arc::new(BodyDigest {
            config: DigestConfig::parse(&config)?,
        }))
    }
}

struct BodyDigest {
    config: DigestConfig,
}

impl BodyDigest {
    /// The config for this stream: the route's, else the chain's.
    fn config<'a>(&'a self, route: &RouteView<'a>) -> &'a DigestConfig {
        route
            .config
            .and_then(|c| c.downcast_ref::<DigestConfig>())
            .unwrap_or(&self.config)
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl StreamFilter for BodyDigest {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(async move {
            let c = self.config(&route);
            if let Some(h) = &c.required_header
                && !req.headers().contains_key(h.as_str())
            {
                return FilterStatus::Respond(local_reply(info, LocalReason::BadRequest));
            }
            if let Some(m) = &c.mask_response {
                info.filter_state
                    .insert(MaskFor(Bytes::copy_from_slice(m.as_bytes())));
            }
            if c.digest_header {
                let body = match buffer_body(req, info, c.max_buffer_bytes).await {
                    Ok(b) => b,
                    Err(status) => return status,
                };
                let d = ring::digest::digest(&ring::digest::SHA256, &body);
                if let Ok(v) = HeaderValue::from_str(&hex(d.as_ref())) {
                    req.headers_mut().insert(DIGEST, v);
                }
            }
            FilterStatus::Continue
        })
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        if let Some(h) = &self.config.deny_response_header
            && resp.headers().contains_key(h.as_str())
        {
            // A refusal in the response phase: the driver counts it as
            // this filter's denial and the access log shows `denied_by`.
            *resp = local_reply(info, LocalReason::Forbidden);
        }
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        Ok(Arc::new(DigestConfig::parse(config)?))
    }

    fn has_body_phases(&self) -> bool {
        true
    }

    fn request_body(
        &self,
        _req: &Request,
        _info: &mut StreamInfo,
        route: RouteView<'_>,
    ) -> Option<Box<dyn BodyFilter>> {
        self.config(&route).verify_trailer.then(|| {
            Box::new(Verify {
                ctx: ring::digest::Context::new(&ring::digest::SHA256),
                good: false,
            }) as Box<dyn BodyFilter>
        })
    }

    fn response_body(
        &self,
        _resp: &Response,
        info: &mut StreamInfo,
    ) -> Option<Box<dyn BodyFilter>> {
        // The response phase has no route view: the request phase left
        // the text to mask in the stream's filter state.
        let m = info.filter_state.get::<MaskFor>()?;
        Some(Box::new(Mask(m.0.clone())))
    }
}

/// What the response body phase masks, from the request phase's config.
#[derive(Clone)]
struct MaskFor(Bytes);

/// Hashes the request body as it streams; checks the trailer at the end.
struct Verify {
    ctx: ring::digest::Context,
    good: bool,
}

impl BodyFilter for Verify {
    fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
        self.ctx.update(data);
        Ok(())
    }

    fn on_trailers(&mut self, trailers: &mut http::HeaderMap) -> Result<(), LocalReason> {
        let want = hex(self.ctx.clone().finish().as_ref());
        let got = trailers.get(&DIGEST).and_then(|v| v.to_str().ok());
        if got.is_some_and(|g| g.eq_ignore_ascii_case(&want)) {
            self.good = true;
            trailers.insert(VERIFIED, HeaderValue::from_static("sha256"));
            return Ok(());
        }
        Err(LocalReason::BadRequest)
    }

    fn on_end(&mut self) -> Result<(), LocalReason> {
        // No trailer at all: nothing was verified.
        if self.good {
            Ok(())
        } else {
            Err(LocalReason::BadRequest)
        }
    }
}

/// Replaces each occurrence of the text in a chunk with `*`s.
struct Mask(Bytes);

impl BodyFilter for Mask {
    fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
        let pat = &self.0[..];
        if data.windows(pat.len()).all(|w| w != pat) {
            return Ok(());
        }
        let mut out = data.to_vec();
        let mut i = 0;
        while i + pat.len() <= out.len() {
            if &out[i..i + pat.len()] == pat {
                out[i..i + pat.len()].fill(b'*');
                i += pat.len();
            } else {
                i += 1;
            }
        }
        *data = out.into();
        Ok(())
    }
}
