//! The router's own `x-envoy-*` headers (Envoy's names and meaning):
//! `x-envoy-upstream-service-time` on a response from upstream (ms from
//! sending the request to its response head) and `x-envoy-attempt-count`
//! (the try number to the upstream, the tries made to the client; the
//! virtual host switches each on). The router filter's
//! `suppress_envoy_headers` turns them all off.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Instant;

pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Values below this come from a table made once: the common case (a
/// few ms, a few tries) allocates nothing per request.
const SMALL: u64 = 1000;

/// `n` as a header value (shared for small `n`).
#[inline]
pub fn int_value(n: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    if n < SMALL {
        let t = TABLE.get_or_init(|| (0..SMALL).map(HeaderValue::from).collect());
        if let Some(v) = t.get(n as usize) {
            return v.clone();
        }
    }
    HeaderValue::from(n)
}

/// Adds the response headers of a response from upstream: the service
/// time since `sent`, and the try count when `attempts` is set.
#[inline]
pub fn on_upstream_response(headers: &mut HeaderMap, sent: Instant, attempts: Option<u32>) {
    let ms = sent.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
    headers.insert(X_ENVOY_UPSTREAM_SERVICE_TIME, int_value(ms));
    if let Some(n) = attempts {
        headers.insert(X_ENVOY_ATTEMPT_COUNT, int_value(u64::from(n)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_added() {
        let mut h = HeaderMap::new();
        let t = Instant::now() - std::time::Duration::from_millis(60);
        on_upstream_response(&mut h, t, Some(2));
        let ms: u64 = h[&X_ENVOY_UPSTREAM_SERVICE_TIME]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(ms >= 60, "{ms}");
        assert_eq!(h[&X_ENVOY_ATTEMPT_COUNT], "2");
        let mut h = HeaderMap::new();
        on_upstream_response(&mut h, Instant::now(), None);
        assert!(!h.contains_key(&X_ENVOY_ATTEMPT_COUNT));
        assert_eq!(int_value(7), "7");
        assert_eq!(int_value(999), "999");
        assert_eq!(int_value(123_456), "123456");
    }
}
