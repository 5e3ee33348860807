//! `lenrpc`: a small length-prefixed RPC protocol, plugged into meshgate
//! from outside its crates (docs/extending.md walks through it).
//!
//! A frame: `u32 length` (of everything after it), `u8 kind` (0 request,
//! 1 response, 2 ping, 3 pong), `u32 request id`, `u8 status` (responses;
//! 0 ok, 1 not found, 2 timeout, 3 bad request, 4 unavailable),
//! `u16 service length`, the service name, then the payload.
//!
//! The codec reuses meshgate's multiplexed-RPC frame layer
//! (`meshgate_protocols::rpc`): it only says how frames are cut, what the
//! routing head is, and how its error responses look. Multiplexed upstream
//! connections, id remapping, heartbeats and local replies come for free.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::codec::{ClientCodec, CodecFactory, Detection, ServerCodec};
use meshgate_core::config::parse_typed;
use meshgate_core::registry::Registry;
use meshgate_protocols::rpc::{
    Frame, FrameError, FrameKind, RequestHeadError, RpcClient, RpcErrorKind, RpcHead, RpcProtocol,
    RpcServer,
};
use std::sync::Arc;

pub const KIND_REQUEST: u8 = 0;
pub const KIND_RESPONSE: u8 = 1;
pub const KIND_PING: u8 = 2;
pub const KIND_PONG: u8 = 3;
/// Bytes before the service name: length, kind, id, status, service length.
pub const FIXED: usize = 4 + 1 + 4 + 1 + 2;
/// The first byte of every frame we send or accept is 0 (lengths stay under
/// 16 MiB), and detection also wants a known kind at byte 4.
const MAX_FRAME: usize = 16 << 20;

/// The protocol description the frame layer drives.
pub struct LenRpc;

/// Builds a frame.
pub fn frame(kind: u8, id: u32, status: u8, service: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(FIXED + service.len() + payload.len());
    b.put_u32((FIXED - 4 + service.len() + payload.len()) as u32);
    b.put_u8(kind);
    b.put_u32(id);
    b.put_u8(status);
    b.put_u16(service.len() as u16);
    b.put_slice(service.as_bytes());
    b.put_slice(payload);
    b.freeze()
}

impl RpcProtocol for LenRpc {
    fn name(&self) -> &'static str {
        "lenrpc"
    }

    fn decode(&self, buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FIXED {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = match buf[4] {
            KIND_REQUEST => FrameKind::Request,
            KIND_RESPONSE => FrameKind::Response,
            KIND_PING => FrameKind::HeartbeatRequest,
            KIND_PONG => FrameKind::HeartbeatResponse,
            k => return Err(FrameError::new("malformed", format!("unknown kind {k}"))),
        };
        let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as u64;
        let service_len = u16::from_be_bytes([buf[10], buf[11]]) as usize;
        if len < FIXED - 4 + service_len {
            return Err(FrameError::new("malformed", "length shorter than the head"));
        }
        let payload = len - (FIXED - 4 + service_len);
        if payload > max_body || len > MAX_FRAME {
            let mut e = FrameError::new("too_large", format!("payload of {payload} bytes"));
            e.request = Some((kind, id, Bytes::copy_from_slice(&buf[..FIXED])));
            return Err(e);
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(FIXED + service_len).freeze();
        let body = buf.split_to(payload).freeze();
        Ok(Some(Frame {
            kind,
            id,
            head,
            body,
        }))
    }

    fn request_head(&self, frame: &Frame) -> Result<RpcHead, RequestHeadError> {
        let service = std::str::from_utf8(&frame.head[FIXED..])
            .map_err(|e| RequestHeadError::malformed("service name is not UTF-8").with_source(e))?;
        // `service/method` names the call; the method is optional.
        let (service, method) = service.split_once('/').unwrap_or((service, "call"));
        Ok(RpcHead {
            service: service.to_string(),
            method: method.to_string(),
            headers: Vec::new(),
        })
    }

    fn head_with_id(&self, head: &Bytes, id: u64) -> Bytes {
        let mut h = BytesMut::from(&head[..]);
        h[5..9].copy_from_slice(&(id as u32).to_be_bytes());
        h.freeze()
    }

    fn heartbeat_response(&self, req: &Frame) -> Bytes {
        frame(KIND_PONG, req.id as u32, 0, "", b"")
    }

    fn error_response(&self, _req: &Bytes, id: u64, kind: RpcErrorKind, message: &str) -> Bytes {
        let status = match kind {
            RpcErrorKind::NotFound => 1,
            RpcErrorKind::Timeout => 2,
            RpcErrorKind::BadRequest => 3,
            _ => 4,
        };
        frame(KIND_RESPONSE, id as u32, status, "", message.as_bytes())
    }

    fn response_status(&self, frame: &Frame) -> (StatusCode, &'static str, HeaderValue) {
        let st = frame.head[9];
        let code = match st {
            0 => StatusCode::OK,
            1 => StatusCode::NOT_FOUND,
            2 => StatusCode::GATEWAY_TIMEOUT,
            3 => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (code, "lenrpc-status", HeaderValue::from(st as u16))
    }
}

/// The registered codec: detection, downstream and upstream sides.
pub struct LenRpcCodec;

impl CodecFactory for LenRpcCodec {
    fn name(&self) -> &'static str {
        "lenrpc"
    }

    /// A length under 16 MiB (first byte 0) and a known kind at byte 4.
    fn detect(&self, p: &[u8]) -> Detection {
        if p.first().is_some_and(|&b| b != 0) || p.get(4).is_some_and(|&k| k > KIND_PONG) {
            Detection::NoMatch
        } else if p.len() < 5 {
            Detection::NeedMore
        } else {
            Detection::Match
        }
    }

    fn server(&self, config: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
        Ok(Arc::new(RpcServer::new(
            Arc::new(LenRpc),
            parse_typed(config)?,
        )))
    }

    fn client(&self, config: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
        Ok(Arc::new(RpcClient::new(
            Arc::new(LenRpc),
            parse_typed(config)?,
        )))
    }
}

/// Everything stock meshgate ships, plus `lenrpc`.
pub fn registry() -> Result<Registry, meshgate_core::registry::DuplicateName> {
    let mut r = Registry::new();
    meshgate_filters::register_all(&mut r)?;
    meshgate_protocols::register_all(&mut r)?;
    r.register_codec(Arc::new(LenRpcCodec))?;
    Ok(r)
}
