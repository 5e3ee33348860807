//! The Bolt v1 frame decoder and routing-head reader (header map,
//! SofaRequest method) fed
//! arbitrary bytes, split at an arbitrary point: never panic, never read
//! out of bounds, never buffer past the declared limit.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshgate_protocols::bolt::Bolt;
use meshgate_protocols::rpc::{FrameKind, RpcErrorKind, RpcProtocol};

const MAX_BODY: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut buf = BytesMut::new();
    for chunk in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(chunk);
        loop {
            match Bolt.decode(&mut buf, MAX_BODY) {
                Ok(Some(f)) => {
                    assert!(f.body.len() <= MAX_BODY);
                    if matches!(f.kind, FrameKind::Request | FrameKind::OneWay) {
                        let _ = Bolt.request_head(&f);
                        let _ = Bolt.error_response(&f.head, f.id, RpcErrorKind::NotFound, "x");
                    }
                    if f.kind == FrameKind::Response {
                        let _ = Bolt.response_status(&f);
                    }
                    let _ = Bolt.head_with_id(&f.head, f.id.wrapping_add(1));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
