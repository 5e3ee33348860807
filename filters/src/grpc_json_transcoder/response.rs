//! The response side of the transcoder: a gRPC response becomes JSON. A
//! trailers-only error (the usual form of a gRPC error) becomes its HTTP
//! status (Envoy's gRPC-to-HTTP table) with the message in the body; a
//! response with messages keeps its 200 and its body is converted message
//! by message as it streams: one JSON object for a unary method, a JSON
//! array (or one object per line with `stream_newline_delimited`) for a
//! server stream. The gRPC trailers are passed on as trailers.
//!
//! A unary response is read whole first (`buffer_unary`, up to
//! `max_response_body_size`), as Envoy does: an error that arrives in the
//! trailers after the response head gets its mapped HTTP status too. A
//! server stream's head is sent with its first message: an error after it
//! can only end the body (a JSON array closed early, the status in the
//! trailers). With `convert_grpc_status`, a `grpc-status-details-bin`
//! (`google.rpc.Status`) becomes the JSON body, its `details` resolved
//! through the descriptor set (`{"@type", "value"}` for types not in it).
//!
//! A server stream's partial message (the bytes of a frame not complete
//! yet, up to `max_response_body_size`) counts in the overload manager's
//! memory budget (`overload::buffer::FilterAccount`) while it is held: a
//! chunk that would take the total over the budget, or
//! `reset_high_memory_streams` picking the stream, aborts the body (its
//! head is sent: the downstream stream is reset, an HTTP/1.1 response
//! cut), counted in `meshgate_overload_filter_buffer_refused_total` and
//! `meshgate_grpc_json_transcoder_response_error_total{reason="overloaded"}`.
//! (A unary response is read whole by the `proxy` and counted there.)

use super::{Transcoded, Transcoder};
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use meshgate_core::metrics::names;
use meshgate_core::overload::buffer::FilterAccount;
use meshgate_core::stream::{BodyError, Response, box_body, full_body, is_grpc};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Envoy's `Grpc::Utility::grpcToHttpStatus`.
pub(crate) fn http_status(code: u32) -> StatusCode {
    let s = match code {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The gRPC status and message in a header map, if it has a status.
fn status_of(h: &HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .and_then(|m| super::template::percent_decode(m, super::template::Keep::Nothing, false))
        .unwrap_or_default();
    Some((code, msg))
}

/// The body of a gRPC error: `google.rpc.Status` as JSON with
/// `convert_grpc_status` (from `grpc-status-details-bin` when the status
/// carries one), else the message as text.
fn error_body(
    convert: bool,
    code: u32,
    msg: &str,
    details: Option<(&HeaderValue, &DescriptorPool)>,
) -> (Bytes, &'static str) {
    if convert {
        let v = details
            .and_then(|(bin, pool)| status_details(bin.as_bytes(), pool))
            .unwrap_or_else(|| serde_json::json!({"code": code, "message": msg}));
        (Bytes::from(v.to_string()), "application/json")
    } else {
        (Bytes::from(format!("{msg}\n")), "text/plain")
    }
}

/// `google.rpc.Status` (google/rpc/status.proto), decoded with prost: its
/// three fields are all the transcoder reads.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Bound on the decoded details (a header is bounded already; this keeps
/// a hostile upstream's status from growing into a large body).
const MAX_DETAILS: usize = 64;

/// `grpc-status-details-bin` as proto3 JSON (`None`: not base64 or not a
/// `google.rpc.Status`; the caller falls back to code and message).
fn status_details(bin: &[u8], pool: &DescriptorPool) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    // gRPC binary metadata: base64, padding optional.
    let trimmed: Vec<u8> = bin
        .iter()
        .copied()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
        .collect();
    let raw = STANDARD_NO_PAD.decode(trimmed).ok()?;
    let st = <RpcStatus as prost::Message>::decode(raw.as_slice()).ok()?;
    let mut m = serde_json::Map::new();
    m.insert("code".into(), st.code.into());
    if !st.message.is_empty() {
        m.insert("message".into(), st.message.into());
    }
    if !st.details.is_empty() {
        let details = st
            .details
            .iter()
            .take(MAX_DETAILS)
            .map(|a| any_json(a, pool))
            .collect();
        m.insert("details".into(), serde_json::Value::Array(details));
    }
    Some(serde_json::Value::Object(m))
}

/// One `Any` as proto3 JSON: `@type` and the message's fields when the
/// descriptor set knows the type, else `@type` and the bytes as base64.
fn any_json(a: &RpcAny, pool: &DescriptorPool) -> serde_json::Value {
    let name = a.type_url.rsplit('/').next().unwrap_or("");
    let mut m = serde_json::Map::new();
    m.insert("@type".into(), a.type_url.clone().into());
    let decoded = pool
        .get_message_by_name(name)
        .and_then(|d| DynamicMessage::decode(d, a.value.as_slice()).ok())
        .and_then(|msg| {
            msg.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
                .ok()
        });
    match decoded {
        Some(serde_json::Value::Object(fields)) => m.extend(fields),
        _ => {
            m.insert(
                "value".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&a.value)
                    .into(),
            );
        }
    }
    serde_json::Value::Object(m)
}

/// The responses read whole for a unary method: gRPC answers with
/// messages to come (not trailers-only, not meshgate's own reply).
pub(super) fn buffer_unary(resp: &Response) -> bool {
    is_grpc(resp.headers())
        && !resp.headers().contains_key("grpc-status")
        && resp
            .extensions()
            .get::<meshgate_core::stream::LocalReason>()
            .is_none()
}

/// The gRPC status of a unary response read whole: an error status in
/// its trailers (the trailers, with the details).
fn buffered_error(resp: &Response) -> Option<HeaderMap> {
    let b = resp.extensions().get::<crate::grpc::Buffered>()?;
    let t = b.trailers.as_ref().filter(|_| b.complete)?;
    let (code, _) = status_of(t)?;
    (code != 0).then(|| t.clone())
}

/// Rewrites the response of a transcoded stream.
pub(super) fn convert(t: &Transcoder, tr: &Transcoded, resp: &mut Response) {
    // Meshgate's own answer (no upstream, timeout) or a non-gRPC upstream
    // reply: left as it is.
    if !is_grpc(resp.headers()) {
        return;
    }
    let h = resp.headers_mut();
    h.remove(http::header::CONTENT_LENGTH);
    h.remove("grpc-encoding");
    h.remove("grpc-accept-encoding");
    let streaming = tr.method.desc.is_server_streaming();
    let ndjson = t.cfg.print_options.stream_newline_delimited;
    // A unary error in the trailers after the head: answered as a
    // trailers-only one (the head's status was not sent yet).
    let buffered = buffered_error(resp);
    let status_head = buffered.as_ref().unwrap_or(resp.headers());
    if let Some((code, msg)) = status_of(status_head) {
        // Trailers-only: the whole answer is in the head.
        let (body, ct) = if code == 0 {
            let b: &'static [u8] = match (streaming, ndjson) {
                (true, false) => b"[]",
                (true, true) => b"",
                (false, _) => b"{}",
            };
            (Bytes::from_static(b), "application/json")
        } else {
            let pool = tr.method.desc.parent_pool();
            let details = status_head
                .get("grpc-status-details-bin")
                .map(|v| (v, pool));
            error_body(t.cfg.convert_grpc_status, code, &msg, details)
        };
        *resp.status_mut() = http_status(code);
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *resp.body_mut() = full_body(body);
        return;
    }
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut opts = SerializeOptions::new()
        .skip_default_fields(!t.cfg.print_options.always_print_primitive_fields)
        .use_enum_numbers(t.cfg.print_options.always_print_enums_as_ints)
        .use_proto_field_name(t.cfg.print_options.preserve_proto_field_names);
    if tr.response_body.is_some() {
        // The field is picked by its proto name below.
        opts = opts.use_proto_field_name(true);
    }
    let inner = std::mem::replace(resp.body_mut(), meshgate_core::stream::empty_body());
    // A stream's partial message counts in the memory budget (a unary
    // response was counted whole when the `proxy` read it).
    let account = if streaming {
        FilterAccount::new().map(|a| Budget {
            reset: Box::pin(a.reset_signal()),
            account: a,
            charged: 0,
        })
    } else {
        None
    };
    *resp.body_mut() = box_body(GrpcToJson {
        inner,
        buf: BytesMut::new(),
        out: VecDeque::new(),
        desc: tr.method.desc.output(),
        opts,
        pretty: t.cfg.print_options.add_whitespace,
        mode: match (streaming, ndjson) {
            (false, _) => Mode::Unary,
            (true, false) => Mode::Array,
            (true, true) => Mode::Lines,
        },
        response_body: tr.response_body.as_ref().map(|s| s.to_string()),
        convert_status: t.cfg.convert_grpc_status,
        max: t.max_response,
        sent: 0,
        done: false,
        budget: account,
    });
}

/// A server stream's partial message in the memory budget.
struct Budget {
    account: FilterAccount,
    /// Resolves when `reset_high_memory_streams` resets the account.
    reset: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Bytes charged now: the partial message held in `GrpcToJson::buf`.
    charged: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Unary,
    Array,
    Lines,
}

/// Why a response could not be converted (the body is cut).
#[derive(Debug, thiserror::Error)]
#[error("grpc_json_transcoder: {0}")]
struct BadResponse(&'static str);

/// The gRPC response body read as framed messages, given out as JSON.
struct GrpcToJson {
    inner: meshgate_core::stream::Body,
    /// Bytes of a frame not complete yet.
    buf: BytesMut,
    /// Frames ready to give out.
    out: VecDeque<http_body::Frame<Bytes>>,
    desc: MessageDescriptor,
    opts: SerializeOptions,
    pretty: bool,
    mode: Mode,
    response_body: Option<String>,
    convert_status: bool,
    max: usize,
    /// Messages given out.
    sent: usize,
    done: bool,
    /// A server stream's account in the memory budget, when it is on.
    budget: Option<Budget>,
}

impl GrpcToJson {
    fn fail(&mut self, reason: &'static str) -> BodyError {
        metrics::counter!(names::GRPC_JSON_TRANSCODER_RESPONSE_ERROR_TOTAL, "reason" => reason)
            .increment(1);
        self.done = true;
        Box::new(BadResponse(reason))
    }

    /// One message as JSON.
    fn json(&self, msg: &[u8]) -> Result<Vec<u8>, &'static str> {
        let m = DynamicMessage::decode(self.desc.clone(), msg).map_err(|_| "bad_message")?;
        let mut w = Vec::new();
        let r = if let Some(field) = &self.response_body {
            // `response_body`: only that field of the message.
            let v = m
                .serialize_with_options(serde_json::value::Serializer, &self.opts)
                .map_err(|_| "bad_message")?;
            let v = v
                .get(field.as_str())
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if self.pretty {
                serde_json::to_writer_pretty(&mut w, &v)
            } else {
                serde_json::to_writer(&mut w, &v)
            }
        } else if self.pretty {
            m.serialize_with_options(&mut serde_json::Serializer::pretty(&mut w), &self.opts)
        } else {
            m.serialize_with_options(&mut serde_json::Serializer::new(&mut w), &self.opts)
        };
        r.map_err(|_| "bad_message")?;
        Ok(w)
    }

    /// Takes the complete frames out of `buf`.
    fn frames(&mut self) -> Result<(), &'static str> {
        loop {
            if self.buf.len() < 5 {
                return Ok(());
            }
            if self.buf[0] != 0 {
                // We never offer a grpc-accept-encoding.
                return Err("compressed");
            }
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > self.max {
                return Err("too_large");
            }
            if self.buf.len() < 5 + len {
                return Ok(());
            }
            self.buf.advance(5);
            let msg = self.buf.split_to(len);
            let json = self.json(&msg)?;
            let mut chunk = Vec::with_capacity(json.len() + 2);
            match self.mode {
                Mode::Unary => {}
                Mode::Array => chunk.push(if self.sent == 0 { b'[' } else { b',' }),
                Mode::Lines => {}
            }
            chunk.extend_from_slice(&json);
            if self.mode == Mode::Lines {
                chunk.push(b'\n');
            }
            self.sent += 1;
            self.out
                .push_back(http_body::Frame::data(Bytes::from(chunk)));
        }
    }

    /// The end of the body (with the trailers, if any).
    fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), &'static str> {
        self.done = true;
        if !self.buf.is_empty() {
            return Err("bad_frame");
        }
        let status = trailers.as_ref().and_then(status_of);
        let failed = status.as_ref().filter(|(c, _)| *c != 0);
        match self.mode {
            Mode::Array => {
                let end: &'static [u8] = if self.sent == 0 { b"[]" } else { b"]" };
                self.out
                    .push_back(http_body::Frame::data(Bytes::from_static(end)));
            }
            Mode::Unary if self.sent == 0 => {
                // A status after the head: the HTTP status is sent, the
                // error is the body.
                let body = match failed {
                    Some((c, m)) => error_body(self.convert_status, *c, m, None).0,
                    None => Bytes::from_static(b"{}"),
                };
                self.out.push_back(http_body::Frame::data(body));
            }
            _ => {}
        }
        if let Some(t) = trailers {
            self.out.push_back(http_body::Frame::trailers(t));
        }
        Ok(())
    }
}

impl http_body::Body for GrpcToJson {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let me = &mut *self;
        loop {
            if let Some(f) = me.out.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if me.done {
                return Poll::Ready(None);
            }
            // Reset for memory while waiting for the next chunk: the
            // partial message goes now, the stream is aborted.
            if let Some(b) = &mut me.budget
                && b.reset.as_mut().poll(cx).is_ready()
                && b.account.check().is_err()
            {
                me.buf = BytesMut::new();
                return Poll::Ready(Some(Err(me.fail("overloaded"))));
            }
            let frame = match std::task::ready!(Pin::new(&mut me.inner).poll_frame(cx)) {
                None => {
                    if let Err(r) = me.finish(None) {
                        return Poll::Ready(Some(Err(me.fail(r))));
                    }
                    continue;
                }
                Some(Err(e)) => {
                    me.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(f)) => f,
            };
            match frame.into_data() {
                Ok(d) => {
                    // Charged before it is decoded: a message larger than
                    // the budget is never held whole.
                    if let Some(b) = &mut me.budget {
                        if b.account.charge(d.len() as u64).is_err() {
                            me.buf = BytesMut::new();
                            return Poll::Ready(Some(Err(me.fail("overloaded"))));
                        }
                        b.charged += d.len() as u64;
                    }
                    me.buf.extend_from_slice(&d);
                    let r = me.frames();
                    // What is left is the next message's first bytes.
                    if let Some(b) = &mut me.budget {
                        let held = me.buf.len() as u64;
                        b.account.release(b.charged.saturating_sub(held));
                        b.charged = b.charged.min(held);
                    }
                    if let Err(r) = r {
                        return Poll::Ready(Some(Err(me.fail(r))));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers()
                        && let Err(r) = me.finish(Some(t))
                    {
                        return Poll::Ready(Some(Err(me.fail(r))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_envoys_http_statuses() {
        for (g, h) in [
            (0, 200),
            (1, 499),
            (3, 400),
            (4, 504),
            (5, 404),
            (7, 403),
            (8, 429),
            (12, 501),
            (14, 503),
            (16, 401),
            (99, 500),
        ] {
            assert_eq!(http_status(g).as_u16(), h, "{g}");
        }
    }

    #[test]
    fn status_details_decode_to_json() {
        use base64::Engine as _;
        use prost::Message as _;
        let st = RpcStatus {
            code: 10,
            message: "locked".into(),
            details: vec![RpcAny {
                type_url: "type.googleapis.com/x.Unknown".into(),
                value: vec![1, 2, 3],
            }],
        };
        let bin = base64::engine::general_purpose::STANDARD_NO_PAD.encode(st.encode_to_vec());
        let pool = DescriptorPool::new();
        let v = status_details(bin.as_bytes(), &pool).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 10, "message": "locked", "details": [
                {"@type": "type.googleapis.com/x.Unknown", "value": "AQID"}
            ]})
        );
        // Padded base64 too; garbage falls back (None).
        let padded = base64::engine::general_purpose::STANDARD.encode(st.encode_to_vec());
        assert!(status_details(padded.as_bytes(), &pool).is_some());
        assert!(status_details(b"*not base64*", &pool).is_none());
        let (b, ct) = error_body(
            true,
            13,
            "fallback",
            Some((&HeaderValue::from_static("!!"), &pool)),
        );
        assert_eq!(ct, "application/json");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
            serde_json::json!({"code": 13, "message": "fallback"})
        );
    }

    #[test]
    fn error_bodies() {
        let (b, ct) = error_body(true, 5, "no \"book\"", None);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"code": 5, "message": "no \"book\""}));
        let (b, ct) = error_body(false, 5, "gone", None);
        assert_eq!((&b[..], ct), (&b"gone\n"[..], "text/plain"));
    }
}
