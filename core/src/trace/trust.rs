//! Whether a stream may force its own trace: `x-envoy-force-trace` is
//! honoured only for an internal request, as Envoy does (Envoy strips it
//! from external ones). Internal: the trusted downstream address
//! (`StreamInfo::downstream_remote_address`, the peer or the XFF entry
//! the `proxy` filter trusts) is RFC 1918, loopback or IPv6 unique-local;
//! or `x-envoy-internal: true` came from a peer whose own address is
//! internal (a trusted hop that judged the client internal). From anyone
//! else the header is removed, so it neither forces the trace nor travels
//! on, and counted.

use crate::metrics::names;
use crate::retry_headers::is_internal_address;
use crate::stream::StreamInfo;
use http::HeaderMap;

/// Removes an untrusted `x-envoy-force-trace` (see the module doc).
#[inline]
pub fn drop_untrusted_force(h: &mut HeaderMap, info: &StreamInfo) {
    if !h.contains_key(super::X_ENVOY_FORCE_TRACE) || is_internal(h, info) {
        return;
    }
    h.remove(super::X_ENVOY_FORCE_TRACE);
    metrics::counter!(names::TRACING_FORCE_TRACE_IGNORED_TOTAL).increment(1);
}

fn is_internal(h: &HeaderMap, info: &StreamInfo) -> bool {
    if is_internal_address(info.downstream_remote_address) {
        return true;
    }
    h.get("x-envoy-internal")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        && is_internal_address(info.connection.peer_addr.ip())
}
