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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn info(peer: &str, client: &str) -> StreamInfo {
        let addr: std::net::SocketAddr = peer.parse().unwrap();
        let c = crate::network::ConnectionInfo {
            id: 0,
            listener: std::sync::Arc::from("l"),
            peer_addr: addr,
            local_addr: addr,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        };
        let mut i = StreamInfo::new(std::sync::Arc::new(c), "http1");
        i.downstream_remote_address = client.parse().unwrap();
        i
    }

    #[test]
    fn force_trace_kept_only_for_internal_requests() {
        let force = || {
            let mut h = HeaderMap::new();
            h.insert(
                super::super::X_ENVOY_FORCE_TRACE,
                HeaderValue::from_static("true"),
            );
            h
        };
        let mut h = force();
        drop_untrusted_force(&mut h, &info("127.0.0.1:1", "10.1.2.3"));
        assert!(h.contains_key(super::super::X_ENVOY_FORCE_TRACE));
        let mut h = force();
        drop_untrusted_force(&mut h, &info("127.0.0.1:1", "203.0.113.9"));
        assert!(!h.contains_key(super::super::X_ENVOY_FORCE_TRACE));
        // Vouched for by an internal hop.
        let mut h = force();
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        drop_untrusted_force(&mut h, &info("10.0.0.1:1", "203.0.113.9"));
        assert!(h.contains_key(super::super::X_ENVOY_FORCE_TRACE));
        // ...but not by an external peer.
        let mut h = force();
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        drop_untrusted_force(&mut h, &info("198.51.100.1:1", "203.0.113.9"));
        assert!(!h.contains_key(super::super::X_ENVOY_FORCE_TRACE));
    }
}
