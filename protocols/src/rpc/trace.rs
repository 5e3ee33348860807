//! Trace context to RPC upstreams: which W3C context an upstream request
//! frame must carry, and the counter of frames that could not carry it.
//!
//! The tracer (`meshgate_core::trace`) sets the stream's `traceparent`
//! (and `tracestate`) headers for the next hop. HTTP codecs write headers
//! as they are; RPC frames travel as their original bytes, so the client
//! re-encodes a frame's attachments (Dubbo) or header map (Bolt) only when
//! the stream's `traceparent` differs from the one the frame came with.
//! An untraced stream's headers equal the frame's, so its frame is sent
//! byte for byte, without a copy.

use http::{HeaderMap, HeaderValue};
use meshgate_core::trace::context::{TRACEPARENT, TRACESTATE};

/// The W3C context an upstream frame must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext<'a> {
    pub traceparent: &'a str,
    pub tracestate: Option<&'a str>,
}

/// Why a frame could not take the context (the metric's `reason`).
pub const TOO_LARGE: &str = "too_large";
pub const MALFORMED: &str = "malformed";

/// The context to write into a request frame, or `None` when the frame
/// already carries it (`original`: the `traceparent` the frame came
/// with, as a stream header).
pub fn upstream_context<'a>(
    headers: &'a HeaderMap,
    original: Option<&HeaderValue>,
) -> Option<TraceContext<'a>> {
    let tp = headers.get(TRACEPARENT)?;
    if Some(tp) == original {
        return None;
    }
    Some(TraceContext {
        traceparent: tp.to_str().ok()?,
        tracestate: headers.get(TRACESTATE).and_then(|v| v.to_str().ok()),
    })
}

/// Whether an attachment / header-map key is one the context replaces.
pub fn is_trace_key(k: &[u8]) -> bool {
    k.eq_ignore_ascii_case(b"traceparent") || k.eq_ignore_ascii_case(b"tracestate")
}

/// Counts a frame sent upstream without the stream's context.
pub fn skipped(codec: &'static str, reason: &'static str) {
    metrics::counter!(
        meshgate_core::metrics::names::RPC_UPSTREAM_TRACE_CONTEXT_SKIPPED_TOTAL,
        "codec" => codec,
        "reason" => reason
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_only_when_the_context_changed() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = HeaderMap::new();
        assert_eq!(upstream_context(&h, None), None);
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        let same = HeaderValue::from_static(tp);
        assert_eq!(upstream_context(&h, Some(&same)), None);
        let got = upstream_context(&h, None).unwrap();
        assert_eq!((got.traceparent, got.tracestate), (tp, None));
        h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        let old =
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01");
        assert_eq!(
            upstream_context(&h, Some(&old)).unwrap().tracestate,
            Some("a=b")
        );
        assert!(is_trace_key(b"TraceParent") && is_trace_key(b"tracestate"));
        assert!(!is_trace_key(b"trace"));
    }
}
