//! `dubbo`: the Dubbo 2 protocol over the shared RPC frame layer.
//!
//! The 16-byte header: magic `0xdabb`, a flag byte (0x80 request, 0x40
//! two-way, 0x20 event, low five bits the serialization id), a status byte
//! (responses), a 64-bit request id and a 32-bit body length. From a Hessian 2
//! request body meshgate reads only what routing needs: the dubbo version,
//! service path, service version, method name, and the attachments map
//! after the arguments (group and users' attachments). The body is
//! forwarded untouched, except that a traced stream's context replaces the
//! `traceparent` / `tracestate` attachments (`with_trace_context`).

use crate::rpc::hessian::{Reader, write_string};
use crate::rpc::trace::{self, TraceContext};
use crate::rpc::{
    Frame, FrameError, FrameKind, RequestHeadError, RequestHeadErrorKind, RpcClient,
    RpcClientOptions, RpcErrorKind, RpcHead, RpcProtocol, RpcServer, be,
};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::codec::{ClientCodec, CodecFactory, Detection, ServerCodec};
use meshgate_core::config::parse_typed;
use std::sync::Arc;

pub const MAGIC: [u8; 2] = [0xda, 0xbb];
pub const HEADER_LEN: usize = 16;
const FLAG_REQUEST: u8 = 0x80;
const FLAG_TWO_WAY: u8 = 0x40;
const FLAG_EVENT: u8 = 0x20;
const SERIALIZATION_MASK: u8 = 0x1f;
const HESSIAN2: u8 = 2;

/// Dubbo response statuses.
pub mod status {
    pub const OK: u8 = 20;
    pub const CLIENT_TIMEOUT: u8 = 30;
    pub const SERVER_TIMEOUT: u8 = 31;
    pub const BAD_REQUEST: u8 = 40;
    pub const BAD_RESPONSE: u8 = 50;
    pub const SERVICE_NOT_FOUND: u8 = 60;
    pub const SERVICE_ERROR: u8 = 70;
    pub const SERVER_ERROR: u8 = 80;
    pub const CLIENT_ERROR: u8 = 90;
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: u8 = 100;
}

/// The Dubbo 2 framing and routing head.
#[derive(Debug, Default)]
pub struct Dubbo;

/// `dubbo`: the codec factory.
pub struct DubboCodec;

impl CodecFactory for DubboCodec {
    fn name(&self) -> &'static str {
        "dubbo"
    }
    fn detect(&self, preface: &[u8]) -> Detection {
        detect(preface)
    }
    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        Ok(Arc::new(RpcServer::new(
            Arc::new(Dubbo),
            parse_typed(config)?,
        )))
    }
    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let opts: RpcClientOptions = parse_typed(config)?;
        Ok(Arc::new(RpcClient::new(Arc::new(Dubbo), opts)))
    }
}

/// A Dubbo connection starts with the magic.
pub fn detect(preface: &[u8]) -> Detection {
    let n = preface.len().min(2);
    if preface[..n] != MAGIC[..n] {
        Detection::NoMatch
    } else if n < 2 {
        Detection::NeedMore
    } else {
        Detection::Match
    }
}

fn header(flag: u8, status: u8, id: u64, len: usize) -> BytesMut {
    let mut h = BytesMut::with_capacity(HEADER_LEN + len);
    h.put_slice(&MAGIC);
    h.put_u8(flag);
    h.put_u8(status);
    h.put_u64(id);
    h.put_u32(len as u32);
    h
}

/// Counts the arguments a JVM parameter descriptor names
/// (`Ljava/lang/String;I[J` is three); None when it is malformed (one
/// kind of failure, which the caller words).
fn count_args(desc: &str) -> Option<usize> {
    let b = desc.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        while i < b.len() && b[i] == b'[' {
            i += 1;
        }
        match b.get(i) {
            Some(b'L') => i += b[i..].iter().position(|&c| c == b';')? + 1,
            Some(b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S') => i += 1,
            _ => return None,
        }
        n += 1;
    }
    Some(n)
}

/// Where the attachments map of a Hessian 2 request body starts (the body's
/// length when there is none); `None` when the body is malformed.
fn attachments_at(body: &[u8]) -> Option<usize> {
    let mut r = Reader::new(body);
    for _ in 0..4 {
        r.read_string().ok()?;
    }
    let desc = r.read_string().ok()?;
    for _ in 0..count_args(&desc)? {
        r.skip_value().ok()?;
    }
    Some(r.position())
}

/// `body` with its attachments map's trace entries replaced by `ctx`;
/// the other entries keep their bytes.
fn body_with_context(body: &[u8], ctx: &TraceContext<'_>) -> Option<Vec<u8>> {
    let at = attachments_at(body)?;
    let extra = 32 + ctx.traceparent.len() + ctx.tracestate.map_or(0, str::len);
    let mut out = Vec::with_capacity(body.len() + extra);
    out.extend_from_slice(&body[..at]);
    if at == body.len() {
        out.push(b'H');
    } else {
        let map = &body[at..];
        let mut r = Reader::new(map);
        match r.peek()? {
            b'H' => r.advance(1)?,
            b'M' => {
                r.advance(1)?;
                r.skip_type().ok()?;
            }
            _ => return None,
        }
        out.extend_from_slice(&map[..r.position()]);
        loop {
            match r.peek()? {
                b'Z' => {
                    r.advance(1)?;
                    break;
                }
                _ => {
                    let start = r.position();
                    let key = if r.next_is_string() {
                        Some(r.read_string().ok()?)
                    } else {
                        r.skip_value().ok()?;
                        None
                    };
                    r.skip_value().ok()?;
                    if !key.is_some_and(|k| trace::is_trace_key(k.as_bytes())) {
                        out.extend_from_slice(&map[start..r.position()]);
                    }
                }
            }
        }
        if !r.at_end() {
            return None;
        }
    }
    write_string(&mut out, "traceparent");
    write_string(&mut out, ctx.traceparent);
    if let Some(ts) = ctx.tracestate {
        write_string(&mut out, "tracestate");
        write_string(&mut out, ts);
    }
    out.push(b'Z');
    Some(out)
}

impl RpcProtocol for Dubbo {
    fn name(&self) -> &'static str {
        "dubbo"
    }

    fn decode(&self, buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError> {
        let n = buf.len().min(2);
        if buf[..n] != MAGIC[..n] {
            return Err(FrameError::new(
                "bad_magic",
                "not a Dubbo frame (bad magic)",
            ));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flag = buf[2];
        let id = be(buf, 4, 8);
        let len = be(buf, 12, 4) as usize;
        let kind = match (flag & FLAG_REQUEST != 0, flag & FLAG_EVENT != 0) {
            (true, true) if flag & FLAG_TWO_WAY != 0 => FrameKind::HeartbeatRequest,
            // A one-way event (e.g. read-only notice): nothing to answer.
            (true, true) => FrameKind::HeartbeatResponse,
            (true, false) if flag & FLAG_TWO_WAY != 0 => FrameKind::Request,
            (true, false) => FrameKind::OneWay,
            (false, true) => FrameKind::HeartbeatResponse,
            (false, false) => FrameKind::Response,
        };
        if len > max_body || len > i32::MAX as usize {
            let mut e = FrameError::new(
                "too_large",
                format!("Dubbo body of {len} bytes is over the limit of {max_body}"),
            );
            e.request = Some((kind, id, Bytes::copy_from_slice(&buf[..HEADER_LEN])));
            return Err(e);
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(HEADER_LEN).freeze();
        let body = buf.split_to(len).freeze();
        Ok(Some(Frame {
            kind,
            id,
            head,
            body,
        }))
    }

    fn request_head(&self, frame: &Frame) -> Result<RpcHead, RequestHeadError> {
        let ser = frame.head[2] & SERIALIZATION_MASK;
        if ser != HESSIAN2 {
            return Err(RequestHeadError::new(
                RequestHeadErrorKind::Unsupported,
                format!("meshgate routes Dubbo requests in hessian2 only (serialization id {ser})"),
            ));
        }
        let bad = |what: &str, e: crate::rpc::hessian::HessianError| {
            RequestHeadError::malformed(format!("meshgate: bad Dubbo request ({what}: {e})"))
                .with_source(e)
        };
        let mut r = Reader::new(&frame.body);
        let dubbo_version = r.read_string().map_err(|e| bad("dubbo version", e))?;
        let service = r.read_string().map_err(|e| bad("service path", e))?;
        let version = r.read_string().map_err(|e| bad("service version", e))?;
        let method = r.read_string().map_err(|e| bad("method name", e))?;
        let desc = r.read_string().map_err(|e| bad("parameter types", e))?;
        if service.is_empty() || method.is_empty() {
            return Err(RequestHeadError::malformed(
                "meshgate: bad Dubbo request (empty service or method)",
            ));
        }
        let args = count_args(&desc)
            .ok_or_else(|| RequestHeadError::malformed(format!("bad parameter types '{desc}'")))?;
        for _ in 0..args {
            r.skip_value().map_err(|e| bad("arguments", e))?;
        }
        let mut headers = Vec::new();
        if !r.at_end() {
            headers = r.read_string_map(256).map_err(|e| bad("attachments", e))?;
        }
        headers.retain(|(k, _)| !matches!(k.as_str(), "service" | "method" | "version"));
        if !version.is_empty() {
            headers.push(("version".into(), version));
        }
        headers.push(("dubbo-version".into(), dubbo_version));
        Ok(RpcHead {
            service,
            method,
            headers,
        })
    }

    fn head_with_id(&self, head: &Bytes, id: u64) -> Bytes {
        let mut h = BytesMut::from(&head[..]);
        h[4..12].copy_from_slice(&id.to_be_bytes());
        h.freeze()
    }

    fn heartbeat_response(&self, req: &Frame) -> Bytes {
        let mut h = header(
            (req.head[2] & SERIALIZATION_MASK) | FLAG_EVENT,
            status::OK,
            req.id,
            1,
        );
        h.put_u8(b'N');
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
            RpcErrorKind::NotFound => status::SERVICE_NOT_FOUND,
            RpcErrorKind::Timeout => status::SERVER_TIMEOUT,
            RpcErrorKind::BadRequest => status::BAD_REQUEST,
            RpcErrorKind::BadResponse => status::BAD_RESPONSE,
            RpcErrorKind::Unavailable | RpcErrorKind::ServiceError => status::SERVICE_ERROR,
            RpcErrorKind::Overloaded => status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
        };
        let mut body = Vec::with_capacity(message.len() + 3);
        write_string(&mut body, message);
        // The message is Hessian 2, whatever the request used.
        let mut h = header(HESSIAN2, st, id, body.len());
        h.put_slice(&body);
        h.freeze()
    }

    fn response_status(&self, frame: &Frame) -> (StatusCode, &'static str, HeaderValue) {
        let st = frame.head[3];
        let code = match st {
            status::OK => StatusCode::OK,
            status::CLIENT_TIMEOUT | status::SERVER_TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
            status::BAD_REQUEST | status::CLIENT_ERROR => StatusCode::BAD_REQUEST,
            status::BAD_RESPONSE => StatusCode::BAD_GATEWAY,
            status::SERVICE_NOT_FOUND => StatusCode::NOT_FOUND,
            status::SERVER_THREADPOOL_EXHAUSTED_ERROR => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, "dubbo-status", HeaderValue::from(st as u16))
    }

    fn id_space(&self) -> u64 {
        1 << 62
    }

    fn with_trace_context(
        &self,
        head: &Bytes,
        body: &Bytes,
        ctx: &TraceContext<'_>,
        max_body: usize,
    ) -> Result<Option<(Bytes, Bytes)>, &'static str> {
        if head.len() != HEADER_LEN || head[2] & SERIALIZATION_MASK != HESSIAN2 {
            return Err(trace::MALFORMED);
        }
        let out = body_with_context(body, ctx).ok_or(trace::MALFORMED)?;
        if out.len() > max_body || out.len() > i32::MAX as usize {
            return Err(trace::TOO_LARGE);
        }
        let mut h = BytesMut::from(&head[..]);
        h[12..16].copy_from_slice(&(out.len() as u32).to_be_bytes());
        Ok(Some((h.freeze(), Bytes::from(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as sofa-rpc-node with dubbo-remoting sends it.
    pub(crate) fn sample_request() -> Vec<u8> {
        let mut body = Vec::new();
        for s in [
            "2.0.2",
            "com.meshgate.Echo",
            "1.0",
            "echo",
            "Ljava/lang/String;",
            "hi",
        ] {
            body.push(s.len() as u8);
            body.extend(s.as_bytes());
        }
        body.push(b'H');
        for s in ["group", "grp", "path", "com.meshgate.Echo", "x-user", "u1"] {
            body.push(s.len() as u8);
            body.extend(s.as_bytes());
        }
        body.push(b'Z');
        let mut f = header(0xc2, 0, 7, body.len()).to_vec();
        f.extend(body);
        f
    }

    #[test]
    fn decodes_request_and_head() {
        let mut buf = BytesMut::from(&sample_request()[..]);
        let f = Dubbo.decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::Request);
        assert_eq!(f.id, 7);
        assert!(buf.is_empty());
        let h = Dubbo.request_head(&f).unwrap();
        assert_eq!(h.service, "com.meshgate.Echo");
        assert_eq!(h.method, "echo");
        assert!(h.headers.contains(&("group".into(), "grp".into())));
        assert!(h.headers.contains(&("x-user".into(), "u1".into())));
        assert!(h.headers.contains(&("version".into(), "1.0".into())));
        let re = Dubbo.head_with_id(&f.head, 99);
        assert_eq!(be(&re, 4, 8), 99);
    }

    #[test]
    fn partial_oversized_and_bad_frames() {
        let req = sample_request();
        for cut in [1, 5, 15, 16, req.len() - 1] {
            let mut buf = BytesMut::from(&req[..cut]);
            assert!(Dubbo.decode(&mut buf, 1 << 20).unwrap().is_none());
        }
        let mut buf = BytesMut::from(&req[..]);
        let e = Dubbo.decode(&mut buf, 8).unwrap_err();
        assert_eq!(e.reason, "too_large");
        assert!(e.request.is_some());
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(Dubbo.decode(&mut buf, 8).unwrap_err().reason, "bad_magic");
        // a method-name string that claims more characters than there are
        let mut lying = req.clone();
        let body_start = HEADER_LEN;
        lying[body_start] = 0x1f;
        let mut buf = BytesMut::from(&lying[..]);
        let f = Dubbo.decode(&mut buf, 1 << 20).unwrap().unwrap();
        let e = Dubbo.request_head(&f).unwrap_err();
        assert_eq!(e.kind, RequestHeadErrorKind::Malformed);
        assert!(
            e.to_string()
                .starts_with("meshgate: bad Dubbo request (service path: "),
            "{e}"
        );
        // The Hessian error is the source, for a caller that walks the chain.
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn error_response_is_readable() {
        let r = Dubbo.error_response(&Bytes::new(), 5, RpcErrorKind::NotFound, "no route");
        assert_eq!(&r[..2], &MAGIC);
        assert_eq!(r[3], status::SERVICE_NOT_FOUND);
        assert_eq!(be(&r, 4, 8), 5);
        let mut rd = Reader::new(&r[HEADER_LEN..]);
        assert_eq!(rd.read_string().unwrap(), "no route");
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut with_objects = Vec::new();
        for s in ["2.0.2", "com.X", "", "m", "Lcom/A;[I"] {
            with_objects.push(s.len() as u8);
            with_objects.extend(s.as_bytes());
        }
        with_objects.extend(b"C\x05com.A\x91\x01a\x60\x91\x7a\x91\x92H\x01k\x01vZ");
        let with_objects = {
            let mut f = header(0xc2, 0, 3, with_objects.len()).to_vec();
            f.extend(with_objects);
            f
        };
        crate::rpc::mutation_smoke(&Dubbo, &[sample_request(), with_objects]);
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn split(f: &[u8]) -> (Bytes, Bytes) {
        let mut buf = BytesMut::from(f);
        let f = Dubbo.decode(&mut buf, 1 << 20).unwrap().unwrap();
        (f.head, f.body)
    }

    fn attachments(head: &Bytes, body: &Bytes) -> Vec<(String, String)> {
        let f = Frame {
            kind: FrameKind::Request,
            id: 1,
            head: head.clone(),
            body: body.clone(),
        };
        assert_eq!(be(head, 12, 4) as usize, body.len());
        Dubbo.request_head(&f).unwrap().headers
    }

    #[test]
    fn trace_context_replaces_attachments() {
        let (head, body) = split(&sample_request());
        let ctx = TraceContext {
            traceparent: TP,
            tracestate: Some("k=v"),
        };
        let (h, b) = Dubbo
            .with_trace_context(&head, &body, &ctx, 1 << 20)
            .unwrap()
            .unwrap();
        let got = attachments(&h, &b);
        assert!(got.contains(&("traceparent".into(), TP.into())));
        assert!(got.contains(&("tracestate".into(), "k=v".into())));
        assert!(got.contains(&("x-user".into(), "u1".into())));
        assert!(got.contains(&("group".into(), "grp".into())));
        // the arguments and the other entries keep their bytes
        assert!(b.starts_with(&body[..body.len() - 1]));
        // an old context is replaced, not doubled
        let again = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00",
            tracestate: None,
        };
        let (h2, b2) = Dubbo
            .with_trace_context(&h, &b, &again, 1 << 20)
            .unwrap()
            .unwrap();
        let got = attachments(&h2, &b2);
        assert_eq!(
            got.iter().filter(|(k, _)| k.starts_with("trace")).count(),
            1
        );
        assert!(got.contains(&("traceparent".into(), again.traceparent.into())));
        // a body without attachments gets a map
        let mut no_map = sample_request();
        let cut = no_map.iter().rposition(|&c| c == b'H').unwrap();
        no_map.truncate(cut);
        let n = (no_map.len() - HEADER_LEN) as u32;
        no_map[12..16].copy_from_slice(&n.to_be_bytes());
        let (head, body) = split(&no_map);
        let (h, b) = Dubbo
            .with_trace_context(&head, &body, &ctx, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(attachments(&h, &b).contains(&("traceparent".into(), TP.into())));
    }

    #[test]
    fn trace_context_bounds() {
        let (head, body) = split(&sample_request());
        let ctx = TraceContext {
            traceparent: TP,
            tracestate: None,
        };
        let e = Dubbo.with_trace_context(&head, &body, &ctx, body.len() + 4);
        assert_eq!(e.unwrap_err(), trace::TOO_LARGE);
        let e = Dubbo.with_trace_context(&head, &body.slice(..body.len() - 1), &ctx, 1 << 20);
        assert_eq!(e.unwrap_err(), trace::MALFORMED);
        let mut other = head.to_vec();
        other[2] = 0xc6; // another serialization
        let e = Dubbo.with_trace_context(&Bytes::from(other), &body, &ctx, 1 << 20);
        assert_eq!(e.unwrap_err(), trace::MALFORMED);
        // mutated bodies never panic
        for i in 0..body.len() {
            for v in [0u8, 0x1f, b'H', b'Z', 0xff] {
                let mut m = body.to_vec();
                m[i] = v;
                let _ = Dubbo.with_trace_context(&head, &Bytes::from(m), &ctx, 1 << 20);
            }
        }
    }

    #[test]
    fn args_counted() {
        assert_eq!(count_args("").unwrap(), 0);
        assert_eq!(count_args("Ljava/lang/String;I[J[[Lcom/X;").unwrap(), 4);
        assert!(count_args("Ljava").is_none());
    }
}
