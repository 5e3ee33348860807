//! The router's `x-envoy-*` request headers (Envoy's semantics): an
//! internal client tunes the route's timeouts, retries and hedging per
//! request with `x-envoy-retry-on`, `x-envoy-retry-grpc-on`,
//! `x-envoy-max-retries`, `x-envoy-retriable-status-codes`,
//! `x-envoy-retriable-header-names`, `x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-upstream-rq-per-try-timeout-ms`,
//! `x-envoy-hedge-on-per-try-timeout`; such a request tells the upstream
//! the time it has in `x-envoy-expected-rq-timeout-ms`.
//!
//! Trust: as in Envoy, the headers of an external request never reach the
//! router: the `proxy` filter removes them at the edge
//! (`use_remote_address: true` and a client that is not internal, see
//! `strip_external`). Without `use_remote_address` meshgate is not the
//! edge and trusts its downstream, as Envoy does.
//!
//! Cost: a request without any `x-envoy-` header pays one pass over its
//! header names (`any`); the policy is copied only for a request that
//! carries one of the headers. Invalid values are ignored (as Envoy does)
//! and counted; the headers are removed before the request goes upstream.

use crate::forward::{ForwardPolicy, RetryOn};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub const RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub const RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
pub const MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub const RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
pub const RETRIABLE_HEADER_NAMES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-header-names");
pub const UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub const UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
pub const HEDGE_ON_PER_TRY_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout");
pub const EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The headers Envoy removes from an external request at the edge
/// (`ConnectionManagerUtility::cleanInternalHeaders`): the router's
/// controls above and the other internal-only ones.
const INTERNAL_ONLY: [&str; 19] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
];

/// Whether a request carries any `x-envoy-` header (one pass over the
/// names; the shortest control header has 16 bytes).
#[inline]
pub fn any(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().len() >= 16 && k.as_str().starts_with("x-envoy-"))
}

/// Envoy's default internal addresses: RFC 1918, loopback and IPv6
/// unique-local (`fc00::/7`).
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_private() || v4.is_loopback(),
            None => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

/// At the edge (`use_remote_address: true`): a request is internal when
/// it came without `x-forwarded-for` from an internal address (Envoy);
/// an external one loses its internal-only `x-envoy-*` headers.
pub fn strip_external(headers: &mut HeaderMap, had_xff: bool, client: IpAddr) {
    if !had_xff && is_internal_address(client) {
        return;
    }
    if !any(headers) {
        return;
    }
    let mut removed = false;
    for name in INTERNAL_ONLY {
        removed |= headers.remove(name).is_some();
    }
    if removed {
        metrics::counter!(crate::metrics::names::HTTP_RQ_ENVOY_HEADERS_STRIPPED_TOTAL).increment(1);
    }
}

fn invalid(header: &'static str) {
    metrics::counter!(crate::metrics::names::HTTP_RQ_ENVOY_HEADER_INVALID_TOTAL, "header" => header)
        .increment(1);
}

/// A header's value as text, removed from the request.
fn take(headers: &mut HeaderMap, name: &HeaderName) -> Option<String> {
    let v = headers.remove(name)?;
    match v.to_str() {
        Ok(s) => Some(s.trim().to_string()),
        Err(_) => {
            invalid(static_name(name));
            None
        }
    }
}

fn static_name(name: &HeaderName) -> &'static str {
    for n in INTERNAL_ONLY {
        if n == name.as_str() {
            return n;
        }
    }
    "other"
}

/// A millisecond count (`x-envoy-*-ms`), counted as invalid when it is not one.
fn millis(headers: &mut HeaderMap, name: &HeaderName) -> Option<u64> {
    let v = take(headers, name)?;
    match v.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            invalid(static_name(name));
            None
        }
    }
}

/// `x-envoy-retry-on` (HTTP values) or `x-envoy-retry-grpc-on` (gRPC
/// values): the valid names, merged into the route's; invalid ones are
/// skipped and counted, as Envoy does.
fn retry_on(v: &str, grpc: bool, header: &'static str) -> RetryOn {
    let mut out = RetryOn::default();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Ok(r) = crate::router::parse_retry_on(name) else {
            invalid(header);
            continue;
        };
        if r.any_grpc() != grpc {
            invalid(header);
            continue;
        }
        out = merge(out, r);
    }
    out
}

fn merge(a: RetryOn, b: RetryOn) -> RetryOn {
    RetryOn {
        five_xx: a.five_xx || b.five_xx,
        gateway_error: a.gateway_error || b.gateway_error,
        connect_failure: a.connect_failure || b.connect_failure,
        reset: a.reset || b.reset,
        retriable_status_codes: a.retriable_status_codes || b.retriable_status_codes,
        retriable_4xx: a.retriable_4xx || b.retriable_4xx,
        envoy_ratelimited: a.envoy_ratelimited || b.envoy_ratelimited,
        reset_before_request: a.reset_before_request || b.reset_before_request,
        refused_stream: a.refused_stream || b.refused_stream,
        retriable_headers: a.retriable_headers || b.retriable_headers,
        grpc_cancelled: a.grpc_cancelled || b.grpc_cancelled,
        grpc_deadline_exceeded: a.grpc_deadline_exceeded || b.grpc_deadline_exceeded,
        grpc_internal: a.grpc_internal || b.grpc_internal,
        grpc_resource_exhausted: a.grpc_resource_exhausted || b.grpc_resource_exhausted,
        grpc_unavailable: a.grpc_unavailable || b.grpc_unavailable,
    }
}

/// Reads (and removes) the router's `x-envoy-*` request headers; the
/// policy they make for this request, when they change the route's.
/// `suppress` is the router's `suppress_envoy_headers` (no
/// `x-envoy-expected-rq-timeout-ms` upstream then).
pub fn apply(
    headers: &mut HeaderMap,
    route: &ForwardPolicy,
    suppress: bool,
) -> Option<ForwardPolicy> {
    let mut p: Option<ForwardPolicy> = None;
    let mut with =
        |f: &mut dyn FnMut(&mut ForwardPolicy)| f(p.get_or_insert_with(|| route.clone()));

    // Timeouts (Envoy's `FilterUtility::finalTimeout`).
    let expected = millis(headers, &UPSTREAM_RQ_TIMEOUT_MS);
    if let Some(ms) = expected {
        with(&mut |p| p.timeout = (ms > 0).then(|| Duration::from_millis(ms)));
    }
    if let Some(ms) = millis(headers, &UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
        with(&mut |p| p.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms)));
    }
    if let Some(v) = take(headers, &HEDGE_ON_PER_TRY_TIMEOUT) {
        match v.as_str() {
            "true" => with(&mut |p| p.hedge_on_per_try_timeout = true),
            "false" => with(&mut |p| p.hedge_on_per_try_timeout = false),
            _ => invalid("x-envoy-hedge-on-per-try-timeout"),
        }
    }

    // Retries (Envoy's `RetryStateImpl`): the headers' conditions add to
    // the route's; a route without a retry policy retries once.
    let mut on = RetryOn::default();
    if let Some(v) = take(headers, &RETRY_ON) {
        on = merge(on, retry_on(&v, false, "x-envoy-retry-on"));
    }
    if let Some(v) = take(headers, &RETRY_GRPC_ON) {
        on = merge(on, retry_on(&v, true, "x-envoy-retry-grpc-on"));
    }
    let max = match take(headers, &MAX_RETRIES) {
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                invalid("x-envoy-max-retries");
                None
            }
        },
        None => None,
    };
    let codes: Vec<u16> = match take(headers, &RETRIABLE_STATUS_CODES) {
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|s| match s.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Some(c),
                _ => {
                    invalid("x-envoy-retriable-status-codes");
                    None
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let names: Vec<crate::router::HeaderMatcher> = match take(headers, &RETRIABLE_HEADER_NAMES) {
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let c = crate::router::HeaderMatcherConfig {
                    name: s.to_ascii_lowercase(),
                    present_match: Some(true),
                    ..Default::default()
                };
                match crate::router::HeaderMatcher::build(&c) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        invalid("x-envoy-retriable-header-names");
                        None
                    }
                }
            })
            .collect(),
        None => Vec::new(),
    };
    if on != RetryOn::default() {
        let had_policy = route.rules.is_some();
        with(&mut |p| {
            p.retry_on = merge(p.retry_on, on);
            if !had_policy {
                // Envoy's `num_retries` default.
                p.num_retries = 1;
            }
        });
    }
    if let Some(n) = max {
        with(&mut |p| p.num_retries = n);
    }
    if !codes.is_empty() {
        with(&mut |p| p.retriable_status_codes.extend_from_slice(&codes));
    }
    if !names.is_empty() {
        with(&mut |p| {
            let mut rules = p.rules.as_deref().cloned().unwrap_or_default();
            let mut all: Vec<_> = std::mem::take(&mut rules.retriable_headers).into_vec();
            all.extend(names.iter().cloned());
            rules.retriable_headers = all.into();
            p.rules = Some(Arc::new(rules));
        });
    }
    // Envoy: a per-try timeout not shorter than the route's is none.
    if let Some(p) = &mut p
        && let (Some(t), Some(pt)) = (p.timeout, p.per_try_timeout)
        && pt >= t
    {
        p.per_try_timeout = None;
    }
    // The upstream learns the time it has (Envoy's
    // `x-envoy-expected-rq-timeout-ms`: the per-try timeout, else the
    // route's).
    if let Some(p) = &p
        && !suppress
        && let Some(t) = p.per_try_timeout.or(p.timeout)
    {
        headers.insert(
            EXPECTED_RQ_TIMEOUT_MS,
            HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kv: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in kv {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn retry_headers_make_a_policy_and_are_removed() {
        let route = ForwardPolicy::default();
        let mut m = h(&[
            ("x-envoy-retry-on", "5xx, bogus"),
            ("x-envoy-retry-grpc-on", "unavailable"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-retriable-status-codes", "409,abc"),
            ("x-envoy-retriable-header-names", "x-retry-me"),
            ("x-envoy-upstream-rq-timeout-ms", "500"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ("x-envoy-hedge-on-per-try-timeout", "true"),
            ("x-other", "1"),
        ]);
        assert!(any(&m));
        let p = apply(&mut m, &route, false).unwrap();
        assert!(p.retry_on.five_xx && p.retry_on.grpc_unavailable);
        assert!(!p.retry_on.gateway_error);
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.retriable_status_codes, vec![409]);
        assert_eq!(p.timeout, Some(Duration::from_millis(500)));
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(100)));
        assert!(p.hedge_on_per_try_timeout);
        let rh = &p.rules.as_ref().unwrap().retriable_headers;
        assert!(rh.iter().any(|m| m.matches(&h(&[("x-retry-me", "1")]))));
        // Only the expected timeout (the per-try one) and the other header remain.
        assert_eq!(m.len(), 2);
        assert_eq!(m["x-envoy-expected-rq-timeout-ms"], "100");
    }

    #[test]
    fn retry_on_alone_retries_once_and_invalid_values_are_ignored() {
        let route = ForwardPolicy::default();
        let mut m = h(&[("x-envoy-retry-on", "gateway-error")]);
        let p = apply(&mut m, &route, true).unwrap();
        assert_eq!(p.num_retries, 1);
        assert!(m.is_empty());
        let mut m = h(&[
            ("x-envoy-max-retries", "x"),
            ("x-envoy-upstream-rq-timeout-ms", "-1"),
            ("x-envoy-retry-on", "unavailable"),
        ]);
        assert!(apply(&mut m, &route, true).is_none());
        assert!(m.is_empty());
        // A per-try timeout not below the route's is dropped.
        let mut m = h(&[("x-envoy-upstream-rq-per-try-timeout-ms", "20000")]);
        assert_eq!(apply(&mut m, &route, true).unwrap().per_try_timeout, None);
    }

    #[test]
    fn edge_strips_external_requests_only() {
        let mut m = h(&[("x-envoy-retry-on", "5xx"), ("x-envoy-attempt-count", "1")]);
        strip_external(&mut m, false, "127.0.0.1".parse().unwrap());
        assert_eq!(m.len(), 2);
        strip_external(&mut m, false, "10.1.2.3".parse().unwrap());
        assert_eq!(m.len(), 2);
        strip_external(&mut m, true, "127.0.0.1".parse().unwrap());
        assert_eq!(m.len(), 1);
        let mut m = h(&[("x-envoy-max-retries", "5")]);
        strip_external(&mut m, false, "203.0.113.9".parse().unwrap());
        assert!(m.is_empty());
        assert!(is_internal_address("fd00::1".parse().unwrap()));
        assert!(!is_internal_address("2001:db8::1".parse().unwrap()));
    }
}
