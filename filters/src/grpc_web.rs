//! `grpc_web`: gRPC-Web to gRPC (Envoy's `envoy.filters.http.grpc_web`),
//! so browsers (HTTP/1.1 or HTTP/2, no trailers, maybe no binary bodies)
//! reach gRPC services. A request whose `content-type` is
//! `application/grpc-web[+proto]` (binary) or
//! `application/grpc-web-text[+proto]` (base64) is forwarded as
//! `application/grpc` with `te: trailers`; a text body is decoded as it
//! streams (4-character groups may straddle chunks, padded groups may
//! appear mid-stream). The response gets `content-type:
//! application/grpc-web[-text]+proto` (text when the request's `accept`
//! asks for `application/grpc-web-text`), its trailers become the last
//! body frame (flag `0x80`, lowercase `key: value\r\n` lines) and a text
//! response body is base64-encoded as it streams. A trailers-only
//! response keeps `grpc-status` in its head, as the gRPC-Web spec allows.
//!
//! The request body is checked as it passes, without buffering: bad
//! base64, a frame flag other than `0x00`/`0x01`, a message longer than
//! `max_message_bytes` (4 MiB, gRPC's default), or a body that ends inside a frame
//! refuse the stream as Envoy answers bad base64: HTTP 400 with
//! `grpc-status: 13` (INTERNAL, gRPC's mapping of 400) and a `grpc-message`
//! saying what was wrong (an oversized message: 413 and 8,
//! RESOURCE_EXHAUSTED, as a gRPC server answers it); a gRPC-Web content type
//! the filter cannot translate (`application/grpc-web-text+json`) gets the
//! same 400 before anything is forwarded. Counted in
//! `meshgate_grpc_web_rejected_total{reason}`.
//!
//! A response that is not gRPC (an upstream's `503 text/html` error page)
//! reaches the browser as gRPC-Web, as Envoy converts it: the HTTP status
//! stays, `grpc-status` comes from gRPC's HTTP-to-gRPC mapping
//! (`http_to_grpc_status`) and `grpc-message` is the body (its first 16 KiB,
//! percent-encoded; the `proxy` reads it before the response phase,
//! `crate::grpc::BufferResponse`). Every other stream is untouched, and the
//! filter costs nothing unless it is configured.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use meshgate_core::BuildError;
use meshgate_core::config::grpc_web::GrpcWebConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{BodyFilter, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    Body, BodyError, FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter,
    StreamFilterFactory, StreamInfo, box_body,
};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// Factory of `grpc_web`.
pub struct GrpcWebFactory;

impl StreamFilterFactory for GrpcWebFactory {
    fn name(&self) -> &'static str {
        "grpc_web"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: GrpcWebConfig = parse_typed(config)?;
        Ok(Arc::new(GrpcWeb {
            max_message: Some(u64::from(c.max_message_bytes)).filter(|m| *m > 0),
        }))
    }
}

struct GrpcWeb {
    /// `max_message_bytes` (`None`: no limit).
    max_message: Option<u64>,
}

/// What the request phase learned about a gRPC-Web stream (kept in
/// `StreamInfo::filter_state`; only gRPC-Web streams get one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// The request body is base64.
    text_request: bool,
    /// The client accepts (and gets) a base64 response body.
    text_response: bool,
}

/// Why this stream's request body was refused (the `reason` label), set by
/// its [`Decoder`] and read by the response phase to render the answer.
#[derive(Clone, Default)]
struct Rejected(Arc<OnceLock<&'static str>>);

/// The most of a non-gRPC response body kept as `grpc-message` (Envoy's
/// `MAX_BUFFERED_PLAINTEXT_LENGTH`).
const MAX_MESSAGE_FROM_BODY: usize = 16384;

/// Whether a response head is a gRPC answer already: `200` with a gRPC
/// content type, or a `grpc-status` in the head (trailers-only), as
/// Envoy's `isGrpcResponseHeaders` and its gRPC-Web check see it.
fn is_grpc_answer(resp: &Response) -> bool {
    resp.headers().contains_key("grpc-status")
        || (resp.status() == http::StatusCode::OK
            && resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")))
}

/// The responses the `proxy` reads whole for this filter: upstream answers
/// that are not gRPC (meshgate's own local replies become gRPC statuses).
fn needs_conversion(resp: &Response) -> bool {
    resp.extensions().get::<LocalReason>().is_none() && !is_grpc_answer(resp)
}

/// gRPC's HTTP-to-gRPC status mapping (grpc/doc/http-grpc-status-mapping.md,
/// Envoy's `Grpc::Utility::httpToGrpcStatus`).
pub(crate) fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `grpc-message` encoding (gRPC's PROTOCOL-HTTP2: bytes outside
/// `0x20..=0x7e` and `%` as `%XX`). Hand-written: five lines, one rule.
fn percent_encode(data: &[u8]) -> HeaderValue {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// The gRPC-Web content type of the answer.
fn web_content_type(text: bool) -> HeaderValue {
    HeaderValue::from_static(if text {
        "application/grpc-web-text+proto"
    } else {
        "application/grpc-web+proto"
    })
}

/// Envoy's form of a refused gRPC-Web request: the HTTP status, the gRPC
/// status in the head, no body.
fn refusal(reason: &str, text: bool) -> Response {
    let (status, code, msg) = match reason {
        "malformed_base64" => (400, 13, "Bad gRPC-web request, invalid base64 data."),
        "truncated_frame" => (400, 13, "Bad gRPC-web request, truncated gRPC frame."),
        "bad_frame_flags" => (400, 13, "Bad gRPC-web request, invalid gRPC frame flags."),
        "oversize_frame" => (
            413,
            8,
            "Bad gRPC-web request, message larger than max_message_bytes.",
        ),
        _ => (400, 13, "Bad gRPC-web request, unsupported content-type."),
    };
    let mut r = http::Response::new(meshgate_core::stream::empty_body());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, web_content_type(text));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(msg));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// The gRPC content type a gRPC-Web one is forwarded as, and whether its
/// body is base64; `None` for any other content type.
fn classify(content_type: &str) -> Option<(HeaderValue, bool)> {
    // Parameters (`; charset=...`) do not change the framing.
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let rest = ct.strip_prefix("application/grpc-web")?;
    if rest.is_empty() {
        return Some((HeaderValue::from_static("application/grpc"), false));
    }
    if let Some(text) = rest.strip_prefix("-text") {
        // Envoy knows base64 bodies of protobuf messages only.
        return match text {
            "" => Some((HeaderValue::from_static("application/grpc"), true)),
            "+proto" => Some((HeaderValue::from_static("application/grpc+proto"), true)),
            _ => None,
        };
    }
    // `+proto`, `+json`...: the same message encoding over gRPC.
    let suffix = rest.strip_prefix('+')?;
    HeaderValue::from_str(&format!("application/grpc+{suffix}"))
        .ok()
        .map(|v| (v, false))
}

/// Whether the `accept` header asks for a base64 response.
fn accepts_text(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .any(|t| {
            t.eq_ignore_ascii_case("application/grpc-web-text")
                || t.eq_ignore_ascii_case("application/grpc-web-text+proto")
        })
}

impl StreamFilter for GrpcWeb {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        _route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let classified = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(classify);
        if classified.is_none()
            && req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
                v.as_bytes()
                    .to_ascii_lowercase()
                    .starts_with(b"application/grpc-web")
            })
        {
            // A gRPC-Web framing the filter cannot translate
            // (`-text+json`): refused before anything is forwarded.
            metrics::counter!(names::GRPC_WEB_REJECTED_TOTAL, "reason" => "unsupported_content_type").increment(1);
            let text = accepts_text(req.headers());
            return Box::pin(std::future::ready(FilterStatus::Respond(refusal(
                "unsupported_content_type",
                text,
            ))));
        }
        if let Some((grpc_type, text_request)) = classified {
            let mode = Mode {
                text_request,
                text_response: accepts_text(req.headers()),
            };
            let h = req.headers_mut();
            h.insert(header::CONTENT_TYPE, grpc_type);
            // Required by gRPC on the HTTP/2 upstream.
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            if text_request {
                // Decoding shortens the body.
                h.remove(header::CONTENT_LENGTH);
            }
            // Local replies become gRPC statuses (`proxy` checked the
            // gRPC-Web content type already; this keeps it true).
            info.grpc = true;
            info.filter_state.insert(mode);
            info.filter_state.insert(Rejected::default());
            // A non-gRPC answer is read (up to 16 KiB) for its message.
            info.filter_state.insert(crate::grpc::BufferResponse {
                max_bytes: MAX_MESSAGE_FROM_BODY,
                when: needs_conversion,
            });
            metrics::counter!(names::GRPC_WEB_REQUESTS_TOTAL, "mode" => if text_request { "text" } else { "binary" }).increment(1);
        }
        Box::pin(std::future::ready(FilterStatus::Continue))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(mode) = info.filter_state.get::<Mode>().copied() else {
            return;
        };
        if resp.extensions().get::<LocalReason>().is_some() {
            // This filter's own refusal of the request body: Envoy's form.
            if let Some(reason) = info
                .filter_state
                .get::<Rejected>()
                .and_then(|r| r.0.get().copied())
            {
                let reason_ext = resp.extensions().get::<LocalReason>().copied();
                *resp = refusal(reason, mode.text_response);
                if let Some(r) = reason_ext {
                    resp.extensions_mut().insert(r);
                }
                // Rendered: the proxy's gRPC conversion keeps it.
                resp.extensions_mut().insert(crate::local_reply::Mapped);
                return;
            }
        } else if needs_conversion(resp) {
            // Not a gRPC answer (an upstream's HTML error page): a
            // gRPC-Web status the browser's client can read.
            convert_non_grpc(resp, mode.text_response);
            return;
        }
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if mode.text_response {
                "application/grpc-web-text+proto"
            } else {
                "application/grpc-web+proto"
            }),
        );
        // The trailer frame (and base64) change the length.
        h.remove(header::CONTENT_LENGTH);
        use http_body::Body as _;
        if resp.body().is_end_stream() {
            // Trailers-only: the status is in the head already.
            return;
        }
        let inner = std::mem::replace(resp.body_mut(), meshgate_core::stream::empty_body());
        *resp.body_mut() = box_body(Encoder {
            inner,
            text: mode.text_response,
            carry: BytesMut::new(),
            done: false,
        });
    }

    fn has_body_phases(&self) -> bool {
        true
    }

    fn request_body(
        &self,
        _req: &Request,
        info: &mut StreamInfo,
        _route: RouteView<'_>,
    ) -> Option<Box<dyn BodyFilter>> {
        let mode = *info.filter_state.get::<Mode>()?;
        let mut d = Decoder::new(mode.text_request, self.max_message);
        if let Some(r) = info.filter_state.get::<Rejected>() {
            d.rejected = r.clone();
        }
        Some(Box::new(d))
    }
}

/// A non-gRPC response as gRPC-Web (Envoy's
/// `setTransformedNonProtoEncodedResponseHeaders`): the HTTP status stays,
/// the body (read by the `proxy`, at most 16 KiB of it) becomes
/// `grpc-message`, the status `grpc-status`.
fn convert_non_grpc(resp: &mut Response, text: bool) {
    let data = resp
        .extensions()
        .get::<crate::grpc::Buffered>()
        .map(|b| b.data.slice(..b.data.len().min(MAX_MESSAGE_FROM_BODY)))
        .unwrap_or_default();
    let code = http_to_grpc_status(resp.status().as_u16());
    metrics::counter!(names::GRPC_WEB_REQUESTS_TOTAL, "mode" => "non_grpc_response").increment(1);
    let h = resp.headers_mut();
    for name in [
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        h.remove(name);
    }
    h.insert(header::CONTENT_TYPE, web_content_type(text));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", percent_encode(&data));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    *resp.body_mut() = meshgate_core::stream::empty_body();
}

/// The request body's phase: base64 decoding (text mode) and the frame
/// check, one chunk at a time.
struct Decoder {
    text: bool,
    /// Shared with the response phase, which renders the refusal.
    rejected: Rejected,
    /// Base64 characters of a group not complete yet (fewer than 4).
    carry: Vec<u8>,
    frames: FrameCheck,
}

impl Decoder {
    fn new(text: bool, max_frame: Option<u64>) -> Self {
        Self {
            text,
            rejected: Rejected::default(),
            carry: Vec::new(),
            frames: FrameCheck {
                max: max_frame,
                ..FrameCheck::default()
            },
        }
    }
}

impl Decoder {
    /// Refuses the stream for `reason` (the `reason` label): counted and
    /// kept for the response phase.
    fn reject(&self, reason: &'static str) -> LocalReason {
        metrics::counter!(names::GRPC_WEB_REJECTED_TOTAL, "reason" => reason).increment(1);
        let _ = self.rejected.0.set(reason);
        if reason == "oversize_frame" {
            LocalReason::PayloadTooLarge
        } else {
            LocalReason::BadRequest
        }
    }
}

impl BodyFilter for Decoder {
    fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
        if self.text {
            let decoded = decode_base64(&mut self.carry, data)
                .ok_or_else(|| self.reject("malformed_base64"))?;
            *data = decoded;
        }
        self.frames.feed(data).map_err(|r| self.reject(r))
    }

    fn on_trailers(&mut self, _trailers: &mut HeaderMap) -> Result<(), LocalReason> {
        // gRPC-Web requests carry no trailers; any are forwarded as the
        // gRPC client's (the end is checked in `on_end`).
        Ok(())
    }

    fn on_end(&mut self) -> Result<(), LocalReason> {
        if !self.carry.is_empty() {
            return Err(self.reject("malformed_base64"));
        }
        if self.frames.inside() {
            return Err(self.reject("truncated_frame"));
        }
        Ok(())
    }
}

/// Decodes the complete 4-character groups of `carry` + `data` and keeps
/// the rest in `carry`. Padded groups may appear anywhere (a client may
/// encode each message on its own), so decoding is split after each one.
/// `None`: not base64.
fn decode_base64(carry: &mut Vec<u8>, data: &[u8]) -> Option<Bytes> {
    let joined;
    let input: &[u8] = if carry.is_empty() {
        data
    } else {
        joined = [carry.as_slice(), data].concat();
        &joined
    };
    let whole = input.len() / 4 * 4;
    let mut out = Vec::with_capacity(whole / 4 * 3);
    let mut start = 0;
    for q in (0..whole).step_by(4) {
        if input[q + 3] == b'=' {
            STANDARD.decode_vec(&input[start..q + 4], &mut out).ok()?;
            start = q + 4;
        }
    }
    if start < whole {
        STANDARD.decode_vec(&input[start..whole], &mut out).ok()?;
    }
    let rest = input[whole..].to_vec();
    *carry = rest;
    Some(Bytes::from(out))
}

/// Follows the length-prefixed messages (1 flag byte, 4 length bytes,
/// the message) across chunks without keeping any of them.
#[derive(Debug, Default)]
struct FrameCheck {
    /// `max_message_bytes`: a longer message is refused from its prefix,
    /// before its bytes are forwarded.
    max: Option<u64>,
    /// Prefix bytes collected so far (0 to 4).
    head: [u8; 5],
    head_len: usize,
    /// Message bytes still to come.
    remaining: u64,
}

impl FrameCheck {
    fn inside(&self) -> bool {
        self.head_len > 0 || self.remaining > 0
    }

    /// Follows `data`; `Err`: the `reason` label of a refusal.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            let n = (5 - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len < 5 {
                break;
            }
            self.head_len = 0;
            // Bit 0: compressed. The trailer bit (0x80) is the
            // server's; anything else is not gRPC.
            if self.head[0] & !0x01 != 0 {
                return Err("bad_frame_flags");
            }
            let len = u64::from(u32::from_be_bytes([
                self.head[1],
                self.head[2],
                self.head[3],
                self.head[4],
            ]));
            if self.max.is_some_and(|m| len > m) {
                return Err("oversize_frame");
            }
            self.remaining = len;
        }
        Ok(())
    }
}

/// The trailer frame of a gRPC-Web response: flag `0x80`, the length,
/// then the trailers as lowercase `key: value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (k, v) in trailers {
        // `http` keeps names lowercase already.
        block.put_slice(k.as_str().as_bytes());
        block.put_slice(b": ");
        block.put_slice(v.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(0x80);
    out.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    out.put_slice(&block);
    out.freeze()
}

/// The response body as the gRPC-Web client gets it: trailers as the last
/// frame, base64 in text mode (encoded in 3-byte groups as it streams;
/// the last group is padded at the end).
struct Encoder {
    inner: Body,
    text: bool,
    /// Text mode: bytes not encoded yet (fewer than 3).
    carry: BytesMut,
    done: bool,
}

impl Encoder {
    /// Base64 of `carry` + `data`, up to a multiple of 3 bytes (all of it
    /// when `last`).
    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        self.carry.extend_from_slice(data);
        let n = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let chunk = self.carry.split_to(n);
        Bytes::from(STANDARD.encode(&chunk))
    }
}

impl http_body::Body for Encoder {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let me = &mut *self;
        loop {
            if me.done {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(Pin::new(&mut me.inner).poll_frame(cx)) {
                None => {
                    me.done = true;
                    if me.text && !me.carry.is_empty() {
                        let out = me.encode(&[], true);
                        return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(f)) => f,
            };
            let out = match frame.into_data() {
                Ok(d) if me.text => me.encode(&d, false),
                Ok(d) => d,
                Err(frame) => match frame.into_trailers() {
                    Ok(t) => {
                        // Trailers end the stream.
                        me.done = true;
                        let f = trailer_frame(&t);
                        if me.text { me.encode(&f, true) } else { f }
                    }
                    Err(_) => continue,
                },
            };
            // An empty chunk could read as the end on some framings.
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn content_types_are_classified() {
        let c = |s: &str| classify(s).map(|(v, t)| (v.to_str().unwrap().to_string(), t));
        assert_eq!(
            c("application/grpc-web"),
            Some(("application/grpc".into(), false))
        );
        assert_eq!(
            c("application/grpc-web+proto"),
            Some(("application/grpc+proto".into(), false))
        );
        assert_eq!(
            c("application/grpc-web+json; charset=utf-8"),
            Some(("application/grpc+json".into(), false))
        );
        assert_eq!(
            c("application/grpc-web-text"),
            Some(("application/grpc".into(), true))
        );
        assert_eq!(
            c("Application/GRPC-Web-Text+proto"),
            Some(("application/grpc+proto".into(), true))
        );
        assert_eq!(c("application/grpc-web-text+json"), None);
        assert_eq!(c("application/grpc"), None);
        assert_eq!(c("application/grpc-webx"), None);
        assert_eq!(c("text/plain"), None);
    }

    #[test]
    fn http_statuses_map_to_grpc_statuses_as_grpc_documents() {
        for (h, g) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (418, 2),
        ] {
            assert_eq!(http_to_grpc_status(h), g, "{h}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode(b"status 503\n"), "status 503%0A");
        assert_eq!(percent_encode("100% é".as_bytes()), "100%25 %C3%A9");
    }

    #[test]
    fn refusals_take_envoys_form() {
        let r = refusal("malformed_base64", false);
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["grpc-status"], "13");
        assert_eq!(
            r.headers()["grpc-message"],
            "Bad gRPC-web request, invalid base64 data."
        );
        assert_eq!(r.headers()["content-type"], "application/grpc-web+proto");
        let r = refusal("oversize_frame", true);
        assert_eq!(
            (r.status().as_u16(), &r.headers()["grpc-status"]),
            (413, &HeaderValue::from_static("8"))
        );
        assert_eq!(
            r.headers()["content-type"],
            "application/grpc-web-text+proto"
        );
    }

    #[test]
    fn a_non_grpc_answer_becomes_a_grpc_web_status() {
        let mut resp = http::Response::new(meshgate_core::stream::full_body("down"));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(needs_conversion(&resp));
        resp.extensions_mut().insert(crate::grpc::Buffered {
            data: Bytes::from_static(b"<h1>down</h1>"),
            trailers: None,
            complete: true,
        });
        convert_non_grpc(&mut resp, false);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "<h1>down</h1>");
        assert_eq!(resp.headers()["content-length"], "0");
        // gRPC answers are left alone: 200 gRPC, or a status in the head.
        let mut ok = http::Response::new(meshgate_core::stream::empty_body());
        ok.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert!(!needs_conversion(&ok));
        *ok.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert!(needs_conversion(&ok));
        ok.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("14"));
        assert!(!needs_conversion(&ok));
    }

    #[test]
    fn accept_text_is_recognised_in_lists() {
        let mut h = HeaderMap::new();
        assert!(!accepts_text(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/plain, application/grpc-web-text;q=1"),
        );
        assert!(accepts_text(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!accepts_text(&h));
    }

    #[test]
    fn base64_decodes_across_chunk_boundaries_and_mid_stream_padding() {
        let msg = b"\x00\x00\x00\x00\x03abc\x00\x00\x00\x00\x01z";
        // Each message encoded on its own, padding in the middle.
        let enc = format!(
            "{}{}",
            STANDARD.encode(&msg[..8]),
            STANDARD.encode(&msg[8..])
        );
        for split in 0..=enc.len() {
            for split2 in split..=enc.len() {
                let mut carry = Vec::new();
                let mut out = Vec::new();
                for part in [&enc[..split], &enc[split..split2], &enc[split2..]] {
                    out.extend_from_slice(&decode_base64(&mut carry, part.as_bytes()).unwrap());
                }
                assert!(carry.is_empty());
                assert_eq!(out, msg, "{split} {split2}");
            }
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let mut carry = Vec::new();
        assert!(decode_base64(&mut carry, b"AA*A").is_none());
        assert!(decode_base64(&mut Vec::new(), b"A=AA").is_none());
        let mut d = Decoder::new(true, None);
        let mut b = Bytes::from_static(b"AAAAAAE");
        assert!(d.on_data(&mut b).is_ok());
        // Three characters left over at the end.
        assert_eq!(d.on_end(), Err(LocalReason::BadRequest));
    }

    #[test]
    fn frames_are_followed_across_chunks() {
        let mut f = FrameCheck::default();
        let body = b"\x00\x00\x00\x00\x02hi\x01\x00\x00\x00\x00";
        for b in body.chunks(1) {
            f.feed(b).unwrap();
        }
        assert!(!f.inside());
        f.feed(b"\x00\x00\x00").unwrap();
        assert!(f.inside());
        let mut f = FrameCheck::default();
        assert_eq!(f.feed(b"\x80\x00\x00\x00\x00"), Err("bad_frame_flags"));
        let mut f = FrameCheck {
            max: Some(10),
            ..FrameCheck::default()
        };
        assert_eq!(f.feed(b"\x00\x00\x00\x00\x0b"), Err("oversize_frame"));
        let mut d = Decoder::new(false, None);
        let mut b = Bytes::from_static(b"\x00\x00\x00\x00\x05abc");
        d.on_data(&mut b).unwrap();
        assert_eq!(d.on_end(), Err(LocalReason::BadRequest));
    }

    /// A body of the given frames, each polled on its own.
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn body_with_trailers(chunks: &[&'static [u8]], trailers: Option<HeaderMap>) -> Body {
        let mut f: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| http_body::Frame::data(Bytes::from_static(c)))
            .collect();
        if let Some(t) = trailers {
            f.push_back(http_body::Frame::trailers(t));
        }
        box_body(Frames(f))
    }

    async fn collect(b: Body) -> (Vec<u8>, bool) {
        let c = b.collect().await.unwrap();
        let has_trailers = c.trailers().is_some();
        (c.to_bytes().to_vec(), has_trailers)
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        t
    }

    #[tokio::test]
    async fn binary_responses_get_a_trailer_frame() {
        let enc = Encoder {
            inner: body_with_trailers(&[b"\x00\x00\x00\x00\x01a"], Some(trailers())),
            text: false,
            carry: BytesMut::new(),
            done: false,
        };
        let (out, has_trailers) = collect(box_body(enc)).await;
        assert!(!has_trailers);
        let block = b"grpc-status: 0\r\ngrpc-message: ok\r\n";
        let mut want = b"\x00\x00\x00\x00\x01a\x80".to_vec();
        want.extend_from_slice(&(block.len() as u32).to_be_bytes());
        want.extend_from_slice(block);
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn text_responses_are_base64_across_chunks() {
        let enc = Encoder {
            inner: body_with_trailers(
                &[b"\x00\x00", b"\x00\x00", b"\x02hi", b""],
                Some(trailers()),
            ),
            text: true,
            carry: BytesMut::new(),
            done: false,
        };
        let (out, _) = collect(box_body(enc)).await;
        let decoded = STANDARD.decode(&out).unwrap();
        assert!(decoded.starts_with(b"\x00\x00\x00\x00\x02hi\x80"));
        assert!(decoded.ends_with(b"grpc-message: ok\r\n"));
        // No trailers: the leftover is padded at the end.
        let enc = Encoder {
            inner: body_with_trailers(&[b"abcd"], None),
            text: true,
            carry: BytesMut::new(),
            done: false,
        };
        let (out, _) = collect(box_body(enc)).await;
        assert_eq!(out, b"YWJjZA==");
    }
}
