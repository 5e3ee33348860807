//! `bolt`: SOFA Bolt protocol v1 (SOFA RPC) over the shared RPC frame layer.
//!
//! Request header (22 bytes): proto (1), type (1: 1 request, 2 one-way),
//! command code (2: 0 heartbeat, 1 request), ver2 (1), request id (4),
//! codec (1), timeout (4), class length (2), header length (2), content
//! length (4); then the class name, the header map and the content.
//! Responses (type 0, 20 bytes) carry a 2-byte status instead of the
//! timeout. The header map (`int32 len, bytes` pairs) is what routing
//! reads: `service` / `sofa_head_target_service` (`interface:version`),
//! `sofa_head_method_name`, and every other entry as a stream header. When
//! a client puts no method in the header map (sofa-rpc-node does not), the
//! method is read from the first field of the Hessian `SofaRequest`
//! content. The content is forwarded untouched; a traced stream's context
//! replaces the `traceparent` / `tracestate` entries of the header map
//! (`with_trace_context`).

use crate::rpc::hessian::{Reader, write_string};
use crate::rpc::trace::{self, TraceContext};
use crate::rpc::{
    Frame, FrameError, FrameKind, RequestHeadError, RpcClient, RpcClientOptions, RpcErrorKind,
    RpcHead, RpcProtocol, RpcServer, be,
};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::codec::{ClientCodec, CodecFactory, Detection, ServerCodec};
use meshgate_core::config::parse_typed;
use std::sync::Arc;

pub const PROTOCOL_V1: u8 = 1;
const TYPE_RESPONSE: u8 = 0;
const TYPE_REQUEST: u8 = 1;
const TYPE_ONEWAY: u8 = 2;
const CMD_HEARTBEAT: u64 = 0;
const CMD_REQUEST: u64 = 1;
const CMD_RESPONSE: u64 = 2;
const REQUEST_HEADER: usize = 22;
const RESPONSE_HEADER: usize = 20;
const CODEC_HESSIAN2: u8 = 1;
const ERROR_CLASS: &str = "com.alipay.remoting.rpc.exception.RpcServerException";

/// Bolt response statuses.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const SERVER_EXCEPTION: u16 = 0x0002;
    pub const SERVER_THREADPOOL_BUSY: u16 = 0x0004;
    pub const ERROR_COMM: u16 = 0x0005;
    pub const NO_PROCESSOR: u16 = 0x0006;
    pub const TIMEOUT: u16 = 0x0007;
    pub const CODEC_EXCEPTION: u16 = 0x0009;
    pub const CONNECTION_CLOSED: u16 = 0x0010;
    pub const SERVER_SERIAL_EXCEPTION: u16 = 0x0011;
    pub const SERVER_DESERIAL_EXCEPTION: u16 = 0x0012;
}

/// The Bolt v1 framing and routing head.
#[derive(Debug, Default)]
pub struct Bolt;

/// `bolt`: the codec factory.
pub struct BoltCodec;

impl CodecFactory for BoltCodec {
    fn name(&self) -> &'static str {
        "bolt"
    }
    fn detect(&self, preface: &[u8]) -> Detection {
        detect(preface)
    }
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        Ok(Arc::new(RpcServer::new(
            Arc::new(Bolt),
            parse_typed(config)?,
        )))
    }
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let opts: RpcClientOptions = parse_typed(config)?;
        Ok(Arc::new(RpcClient::new(Arc::new(Bolt), opts)))
    }
}

/// A Bolt v1 connection starts with proto 1, a request type, and a
/// heartbeat or request command code.
pub fn detect(p: &[u8]) -> Detection {
    let ok = [
        p.first().is_none_or(|&b| b == PROTOCOL_V1),
        p.get(1)
            .is_none_or(|&b| b == TYPE_REQUEST || b == TYPE_ONEWAY),
        p.get(2).is_none_or(|&b| b == 0),
        p.get(3).is_none_or(|&b| b as u64 <= CMD_REQUEST),
    ];
    if ok.iter().any(|o| !o) {
        Detection::NoMatch
    } else if p.len() < 4 {
        Detection::NeedMore
    } else {
        Detection::Match
    }
}

/// The entries of a Bolt header map; `None` when a length lies.
fn header_map(mut b: &[u8], max: usize) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let field = |b: &mut &[u8]| -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let n = usize::try_from(n).ok()?;
        let rest = &b[4..];
        if rest.len() < n {
            return None;
        }
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        *b = &rest[n..];
        Some(s)
    };
    while !b.is_empty() {
        let k = field(&mut b)?;
        let v = field(&mut b)?;
        if out.len() < max {
            out.push((k, v));
        }
    }
    Some(out)
}

/// One `int32 len, bytes` field of a header map, split off the front.
fn raw_field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    let n = usize::try_from(i32::try_from(n).ok()?).ok()?;
    let f = b.get(4..4 + n)?;
    *b = &b[4 + n..];
    Some(f)
}

fn put_field(out: &mut BytesMut, f: &[u8]) {
    out.put_u32(f.len() as u32);
    out.put_slice(f);
}

/// The method name from a Hessian `SofaRequest` content: its first field
/// (`methodName`). Both Hessian 2 class definitions (`C`) and the older
/// draft ones (`O` type-length type fields, then `o` ref) sofa-rpc-node
/// writes are understood.
fn sofa_method(content: &[u8]) -> Option<String> {
    let mut r = Reader::new(content);
    let draft = match r.peek()? {
        b'C' => false,
        b'O' => true,
        _ => return None,
    };
    r.advance(1)?;
    if draft {
        // draft: the type name's length as an int, then its bytes
        let len = usize::try_from(r.read_int().ok()?).ok()?;
        r.advance(len)?;
    } else {
        r.read_string().ok()?;
    }
    let n = r.read_int().ok()?;
    if n < 1 || r.read_string().ok()? != "methodName" {
        return None;
    }
    for _ in 1..n {
        r.read_string().ok()?;
    }
    // an instance of definition 0: `o` int (draft) or 0x60 (Hessian 2)
    match (draft, r.peek()?) {
        (true, b'o') => {
            r.advance(1)?;
            r.read_int().ok()?;
        }
        (false, 0x60) => r.advance(1)?,
        _ => return None,
    }
    r.read_string().ok()
}

/// The content of an error response: an `RpcServerException` object whose
/// `detailMessage` is `message`, in the Hessian form sofa-rpc-node's own
/// providers write (a class definition `O`, then the instance `o`), which
/// its client turns into an `Error` carrying the message.
fn server_exception(message: &str) -> Vec<u8> {
    let mut c = Vec::with_capacity(message.len() + 120);
    c.push(b'O');
    let n = ERROR_CLASS.len();
    c.extend([0xc8 + (n >> 8) as u8, n as u8]);
    c.extend(ERROR_CLASS.as_bytes());
    c.push(0x93); // three fields
    for f in ["detailMessage", "stackTrace", "cause"] {
        c.push(f.len() as u8);
        c.extend(f.as_bytes());
    }
    c.extend([b'o', 0x90]); // an instance of definition 0
    write_string(&mut c, message);
    c.extend(b"NN"); // no stack trace, no cause
    c
}

impl RpcProtocol for Bolt {
    fn name(&self) -> &'static str {
        "bolt"
    }

    fn decode(&self, buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != PROTOCOL_V1 {
            return Err(FrameError::new(
                "bad_magic",
                format!("not a Bolt v1 frame (protocol code {})", buf[0]),
            ));
        }
        if buf.len() < RESPONSE_HEADER {
            return Ok(None);
        }
        let ty = buf[1];
        let cmd = be(buf, 2, 2);
        let id = be(buf, 5, 4);
        let (fixed, kind) = match (ty, cmd) {
            (TYPE_REQUEST, CMD_HEARTBEAT) => (REQUEST_HEADER, FrameKind::HeartbeatRequest),
            (TYPE_REQUEST, CMD_REQUEST) => (REQUEST_HEADER, FrameKind::Request),
            (TYPE_ONEWAY, CMD_REQUEST) => (REQUEST_HEADER, FrameKind::OneWay),
            (TYPE_RESPONSE, CMD_HEARTBEAT) => (RESPONSE_HEADER, FrameKind::HeartbeatResponse),
            (TYPE_RESPONSE, CMD_RESPONSE) => (RESPONSE_HEADER, FrameKind::Response),
            _ => {
                return Err(FrameError::new(
                    "malformed",
                    format!("Bolt type {ty} with command code {cmd}"),
                ));
            }
        };
        if buf.len() < fixed {
            return Ok(None);
        }
        let class_len = be(buf, fixed - 8, 2) as usize;
        let header_len = be(buf, fixed - 6, 2) as usize;
        let content_len = be(buf, fixed - 4, 4) as usize;
        if content_len > max_body || content_len > i32::MAX as usize {
            let mut e = FrameError::new(
                "too_large",
                format!("Bolt content of {content_len} bytes is over the limit of {max_body}"),
            );
            e.request = Some((kind, id, Bytes::copy_from_slice(&buf[..fixed])));
            return Err(e);
        }
        let head_len = fixed + class_len + header_len;
        let total = head_len + content_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(head_len).freeze();
        let body = buf.split_to(content_len).freeze();
        Ok(Some(Frame {
            kind,
            id,
            head,
            body,
        }))
    }

    fn request_head(&self, frame: &Frame) -> Result<RpcHead, RequestHeadError> {
        let h = &frame.head;
        let class_len = be(h, 14, 2) as usize;
        let header_len = be(h, 16, 2) as usize;
        let map_start = REQUEST_HEADER + class_len;
        let map = header_map(&h[map_start..map_start + header_len], 256).ok_or_else(|| {
            RequestHeadError::malformed("meshgate: bad Bolt request (header map lengths)")
        })?;
        let get = |k: &str| map.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let unique = get("sofa_head_target_service")
            .or_else(|| get("service"))
            .ok_or_else(|| {
                RequestHeadError::malformed(
                    "meshgate: bad Bolt request (no service in the header map)",
                )
            })?;
        let (service, version) = match unique.split_once(':') {
            Some((s, v)) => (s.to_string(), Some(v.to_string())),
            None => (unique.clone(), None),
        };
        let method = get("sofa_head_method_name")
            .or_else(|| sofa_method(&frame.body))
            .unwrap_or_default();
        if service.is_empty() {
            return Err(RequestHeadError::malformed(
                "meshgate: bad Bolt request (empty service)",
            ));
        }
        let mut headers: Vec<(String, String)> = map
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "service" | "method" | "version"))
            .collect();
        if let Some(v) = version {
            headers.push(("version".into(), v));
        }
        Ok(RpcHead {
            service,
            method,
            headers,
        })
    }

    fn with_trace_context(
        &self,
        head: &Bytes,
        body: &Bytes,
        ctx: &TraceContext<'_>,
        _max_body: usize,
    ) -> Result<Option<(Bytes, Bytes)>, &'static str> {
        if head.len() < REQUEST_HEADER {
            return Err(trace::MALFORMED);
        }
        let map_start = REQUEST_HEADER + be(head, 14, 2) as usize;
        let map = head
            .get(map_start..map_start + be(head, 16, 2) as usize)
            .ok_or(trace::MALFORMED)?;
        if map_start + map.len() != head.len() {
            return Err(trace::MALFORMED);
        }
        let extra = 48 + ctx.traceparent.len() + ctx.tracestate.map_or(0, str::len);
        let mut out = BytesMut::with_capacity(head.len() + extra);
        out.put_slice(&head[..map_start]);
        let mut rest = map;
        while !rest.is_empty() {
            let entry = rest;
            let k = raw_field(&mut rest).ok_or(trace::MALFORMED)?;
            raw_field(&mut rest).ok_or(trace::MALFORMED)?;
            if !trace::is_trace_key(k) {
                out.put_slice(&entry[..entry.len() - rest.len()]);
            }
        }
        put_field(&mut out, b"traceparent");
        put_field(&mut out, ctx.traceparent.as_bytes());
        if let Some(ts) = ctx.tracestate {
            put_field(&mut out, b"tracestate");
            put_field(&mut out, ts.as_bytes());
        }
        // The header map's length is 16 bits.
        let len = u16::try_from(out.len() - map_start).map_err(|_| trace::TOO_LARGE)?;
        out[16..18].copy_from_slice(&len.to_be_bytes());
        Ok(Some((out.freeze(), body.clone())))
    }

    fn head_with_id(&self, head: &Bytes, id: u64) -> Bytes {
        let mut h = BytesMut::from(&head[..]);
        h[5..9].copy_from_slice(&(id as u32).to_be_bytes());
        h.freeze()
    }

    fn heartbeat_response(&self, req: &Frame) -> Bytes {
        let mut h = BytesMut::with_capacity(RESPONSE_HEADER);
        h.put_u8(PROTOCOL_V1);
        h.put_u8(TYPE_RESPONSE);
        h.put_u16(CMD_HEARTBEAT as u16);
        h.put_u8(1);
        h.put_u32(req.id as u32);
        h.put_u8(req.head[9]);
        h.put_u16(status::SUCCESS);
        h.put_u16(0);
        h.put_u16(0);
        h.put_u32(0);
        h.freeze()
    }

    fn error_response(
        &self,
        _req_head: &Bytes,
        id: u64,
        kind: RpcErrorKind,
        message: &str,
    ) -> Bytes {
        let st = match kind {
            RpcErrorKind::NotFound => status::NO_PROCESSOR,
            RpcErrorKind::Timeout => status::TIMEOUT,
            RpcErrorKind::BadRequest => status::SERVER_DESERIAL_EXCEPTION,
            RpcErrorKind::BadResponse => status::CODEC_EXCEPTION,
            RpcErrorKind::Unavailable => status::ERROR_COMM,
            RpcErrorKind::Overloaded => status::SERVER_THREADPOOL_BUSY,
            RpcErrorKind::ServiceError => status::SERVER_EXCEPTION,
        };
        let content = server_exception(message);
        let mut h = BytesMut::with_capacity(RESPONSE_HEADER + ERROR_CLASS.len() + content.len());
        h.put_u8(PROTOCOL_V1);
        h.put_u8(TYPE_RESPONSE);
        h.put_u16(CMD_RESPONSE as u16);
        h.put_u8(1);
        h.put_u32(id as u32);
        // The message is Hessian, whatever the request used.
        h.put_u8(CODEC_HESSIAN2);
        h.put_u16(st);
        h.put_u16(ERROR_CLASS.len() as u16);
        h.put_u16(0);
        h.put_u32(content.len() as u32);
        h.put_slice(ERROR_CLASS.as_bytes());
        h.put_slice(&content);
        h.freeze()
    }

    fn response_status(&self, frame: &Frame) -> (StatusCode, &'static str, HeaderValue) {
        let st = be(&frame.head, 10, 2) as u16;
        let code = match st {
            status::SUCCESS => StatusCode::OK,
            status::SERVER_THREADPOOL_BUSY => StatusCode::SERVICE_UNAVAILABLE,
            status::NO_PROCESSOR => StatusCode::NOT_FOUND,
            status::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
            status::ERROR_COMM | status::CONNECTION_CLOSED | status::CODEC_EXCEPTION => {
                StatusCode::BAD_GATEWAY
            }
            status::SERVER_SERIAL_EXCEPTION | status::SERVER_DESERIAL_EXCEPTION => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, "bolt-status", HeaderValue::from(st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request sofa-rpc-node sends for `com.meshgate.Echo:1.0#echo("hi")`.
    const NODE_REQUEST: &str = "\
01010001010000000101000003e8002c0024000000e5636f6d2e616c697061792e736f66612e7270632e636f72652e726571\
756573742e536f666152657175657374000000077365727669636500000015636f6d2e6d657368676174652e4563686f3a31\
2e304fbc636f6d2e616c697061792e736f66612e7270632e636f72652e726571756573742e536f666152657175657374950a\
6d6574686f644e616d650d6d6574686f64417267536967731774617267657453657276696365556e697175654e616d650d74\
61726765744170704e616d650c7265717565737450726f70736f90046563686f567400115b6a6176612e6c616e672e537472\
696e676e01106a6176612e6c616e672e537472696e677a15636f6d2e6d657368676174652e4563686f3a312e304e4d077365\
727669636515636f6d2e6d657368676174652e4563686f3a312e307a026869";

    fn node_request() -> Vec<u8> {
        let hex: String = NODE_REQUEST
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_node_request() {
        let req = node_request();
        assert_eq!(detect(&req), Detection::Match);
        for cut in [1, 9, 21, 22, req.len() - 1] {
            let mut b = BytesMut::from(&req[..cut]);
            assert!(Bolt.decode(&mut b, 1 << 20).unwrap().is_none());
        }
        let mut b = BytesMut::from(&req[..]);
        let f = Bolt.decode(&mut b, 1 << 20).unwrap().unwrap();
        assert!(b.is_empty());
        assert_eq!((f.kind, f.id), (FrameKind::Request, 1));
        let h = Bolt.request_head(&f).unwrap();
        assert_eq!(h.service, "com.meshgate.Echo");
        assert_eq!(h.method, "echo");
        assert!(h.headers.contains(&("version".into(), "1.0".into())));
        let re = Bolt.head_with_id(&f.head, 77);
        assert_eq!(be(&re, 5, 4), 77);
        let mut b = BytesMut::from(&req[..]);
        assert_eq!(Bolt.decode(&mut b, 16).unwrap_err().reason, "too_large");
    }

    #[test]
    fn lying_header_map_is_refused() {
        let mut req = node_request();
        // the header map's first key claims 0x7fffffff bytes
        let at = REQUEST_HEADER + 44;
        req[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        let mut b = BytesMut::from(&req[..]);
        let f = Bolt.decode(&mut b, 1 << 20).unwrap().unwrap();
        let e = Bolt.request_head(&f).unwrap_err();
        assert_eq!(e.kind, crate::rpc::RequestHeadErrorKind::Malformed);
        assert_eq!(
            e.to_string(),
            "meshgate: bad Bolt request (header map lengths)"
        );
    }

    #[test]
    fn mutated_frames_never_panic() {
        crate::rpc::mutation_smoke(&Bolt, &[node_request()]);
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn trace_context_goes_into_the_header_map() {
        let req = node_request();
        let mut b = BytesMut::from(&req[..]);
        let f = Bolt.decode(&mut b, 1 << 20).unwrap().unwrap();
        let ctx = TraceContext {
            traceparent: TP,
            tracestate: Some("k=v"),
        };
        let (head, body) = Bolt
            .with_trace_context(&f.head, &f.body, &ctx, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(body, f.body);
        assert!(head.starts_with(&f.head[..16]));
        // The rewritten frame decodes, routes the same and carries the context.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(&body);
        let g = Bolt.decode(&mut whole, 1 << 20).unwrap().unwrap();
        assert!(whole.is_empty());
        let h = Bolt.request_head(&g).unwrap();
        assert_eq!(h.service, "com.meshgate.Echo");
        assert!(h.headers.contains(&("traceparent".into(), TP.into())));
        assert!(h.headers.contains(&("tracestate".into(), "k=v".into())));
        // Replaced, not doubled.
        let again = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00",
            tracestate: None,
        };
        let (head2, _) = Bolt
            .with_trace_context(&g.head, &g.body, &again, 1 << 20)
            .unwrap()
            .unwrap();
        let g2 = Frame { head: head2, ..g };
        let h2 = Bolt.request_head(&g2).unwrap().headers;
        assert_eq!(h2.iter().filter(|(k, _)| k.starts_with("trace")).count(), 1);
        // A header map that would pass 64 KiB is left alone.
        let big = "x".repeat(70_000);
        let huge = TraceContext {
            traceparent: TP,
            tracestate: Some(&big),
        };
        let e = Bolt.with_trace_context(&f.head, &f.body, &huge, 1 << 20);
        assert_eq!(e.unwrap_err(), trace::TOO_LARGE);
        // A lying map, or a head cut short, is refused without a panic.
        for cut in [0, 10, REQUEST_HEADER, f.head.len() - 1] {
            let e = Bolt.with_trace_context(&f.head.slice(..cut), &f.body, &ctx, 1 << 20);
            assert_eq!(e.unwrap_err(), trace::MALFORMED);
        }
        for i in REQUEST_HEADER..f.head.len() {
            let mut m = f.head.to_vec();
            m[i] ^= 0xff;
            let _ = Bolt.with_trace_context(&Bytes::from(m), &f.body, &ctx, 1 << 20);
        }
    }

    #[test]
    fn detection() {
        assert_eq!(detect(&[1, 1, 0, 1]), Detection::Match);
        assert_eq!(detect(&[1, 1]), Detection::NeedMore);
        assert_eq!(detect(&[1, 0, 0, 2]), Detection::NoMatch);
        assert_eq!(detect(b"GET "), Detection::NoMatch);
        assert_eq!(detect(&[0xda, 0xbb]), Detection::NoMatch);
    }
}
