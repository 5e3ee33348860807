//! `csrf`: Cross-Site Request Forgery protection (Envoy's
//! `envoy.filters.http.csrf`). A request with an unsafe method (anything
//! but GET, HEAD and OPTIONS) must come from its own origin: the host and
//! port of `Origin` (else `Referer`) equal to the request's host, or one
//! of `additional_origins`. Otherwise it gets 403 "invalid origin"
//! (`LocalReason::Forbidden`) where the policy is enforced
//! (`filter_enabled`), and is only counted where it is in shadow mode
//! (`shadow_enabled`). Every check is counted in
//! `meshgate_http_csrf_request_total{result,mode}`. A route's
//! `per_filter_config: {csrf: <CsrfPolicy>}` replaces the filter's policy.

use crate::cors::Origin;
use http::Method;
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::config::simpleauth::CsrfPolicyConfig;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, StreamFilter, StreamFilterFactory,
    StreamInfo, full_body, local_reply,
};
use std::sync::Arc;

/// Factory of `csrf`.
pub struct CsrfFactory;

impl StreamFilterFactory for CsrfFactory {
    fn name(&self) -> &'static str {
        "csrf"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: CsrfPolicyConfig = parse_typed(config)?;
        Ok(Arc::new(Csrf(Policy::build(&c)?)))
    }
}

struct Csrf(Policy);

/// A compiled `CsrfPolicy`.
struct Policy {
    /// Parts per million of requests refused when invalid.
    enforced_ppm: u32,
    /// Parts per million of requests checked and counted only.
    shadow_ppm: u32,
    additional_origins: Vec<Origin>,
}

fn sample(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && rand::random_range(0..1_000_000) < ppm)
}

impl Policy {
    fn build(c: &CsrfPolicyConfig) -> Result<Self, BuildError> {
        let mut additional_origins = Vec::with_capacity(c.additional_origins.len());
        for (i, m) in c.additional_origins.iter().enumerate() {
            additional_origins.push(Origin::build(&format!("additional_origins[{i}]"), m)?);
        }
        Ok(Self {
            enforced_ppm: c.filter_enabled.default_value.per_million(),
            shadow_ppm: c
                .shadow_enabled
                .as_ref()
                .map_or(0, |s| s.default_value.per_million()),
            additional_origins,
        })
    }
}

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Invalid,
    MissingSourceOrigin,
}

/// `scheme://host:port/path` → `host:port` (Envoy compares these); a
/// value that is not a URL is compared as it is.
fn host_and_port(v: &str) -> &str {
    let Some((_, rest)) = v.split_once("://") else {
        return v;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let hp = &rest[..end];
    // Userinfo is not part of an origin.
    hp.rsplit_once('@').map_or(hp, |(_, h)| h)
}

fn check(req: &Request, policy: &Policy) -> Verdict {
    let h = req.headers();
    let source = h
        .get(http::header::ORIGIN)
        .filter(|v| !v.is_empty())
        .or_else(|| h.get(http::header::REFERER).filter(|v| !v.is_empty()));
    let Some(source) = source else {
        return Verdict::MissingSourceOrigin;
    };
    let Ok(source) = source.to_str() else {
        return Verdict::Invalid;
    };
    let source = host_and_port(source);
    let target = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if target.is_some_and(|t| !t.is_empty() && t.eq_ignore_ascii_case(source)) {
        return Verdict::Valid;
    }
    if policy.additional_origins.iter().any(|o| o.matches(source)) {
        return Verdict::Valid;
    }
    Verdict::Invalid
}

fn is_safe(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS
}

impl StreamFilter for Csrf {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let status = self.decide(req, info, route);
        Box::pin(std::future::ready(status))
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: CsrfPolicyConfig = parse_typed(config)?;
        Ok(Arc::new(Policy::build(&c)?))
    }
}

impl Csrf {
    fn decide(&self, req: &Request, info: &mut StreamInfo, route: RouteView<'_>) -> FilterStatus {
        if is_safe(req.method()) {
            return FilterStatus::Continue;
        }
        let policy = route
            .config
            .and_then(|c| c.downcast_ref::<Policy>())
            .unwrap_or(&self.0);
        let enforced = sample(policy.enforced_ppm);
        if !enforced && !sample(policy.shadow_ppm) {
            return FilterStatus::Continue;
        }
        let verdict = check(req, policy);
        let result = match verdict {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::MissingSourceOrigin => "missing_source_origin",
        };
        let mode = if enforced { "enforced" } else { "shadow" };
        metrics::counter!(meshgate_core::metrics::names::HTTP_CSRF_REQUEST_TOTAL,
            "result" => result, "mode" => mode)
        .increment(1);
        if verdict == Verdict::Valid || !enforced {
            return FilterStatus::Continue;
        }
        let mut resp = local_reply(info, LocalReason::Forbidden);
        *resp.body_mut() = full_body("meshgate: invalid origin\n");
        FilterStatus::Respond(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(v: serde_json::Value) -> Policy {
        Policy::build(&parse_typed(&v).unwrap()).unwrap()
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(meshgate_core::stream::empty_body()).unwrap()
    }

    #[test]
    fn origin_against_host_and_additional_origins() {
        let p = policy(serde_json::json!({
            "filter_enabled": {"default_value": {"numerator": 100}},
            "additional_origins": [{"suffix": ".trusted.example"}],
        }));
        let host = ("host", "app.example:8080");
        let v = |h: &[(&str, &str)]| check(&req("POST", h), &p);
        assert_eq!(
            v(&[host, ("origin", "https://app.example:8080")]),
            Verdict::Valid
        );
        assert_eq!(
            v(&[host, ("origin", "https://APP.example:8080")]),
            Verdict::Valid
        );
        assert_eq!(
            v(&[host, ("origin", "https://evil.example")]),
            Verdict::Invalid
        );
        assert_eq!(v(&[host, ("origin", "null")]), Verdict::Invalid);
        assert_eq!(
            v(&[host, ("origin", "https://a.trusted.example")]),
            Verdict::Valid
        );
        assert_eq!(
            v(&[host, ("referer", "https://app.example:8080/page?q=1")]),
            Verdict::Valid
        );
        assert_eq!(
            v(&[host, ("referer", "https://u@evil.example/app.example:8080")]),
            Verdict::Invalid
        );
        assert_eq!(v(&[host]), Verdict::MissingSourceOrigin);
        assert_eq!(v(&[host, ("origin", "")]), Verdict::MissingSourceOrigin);
    }

    #[test]
    fn fractions_and_bad_configs() {
        let p = policy(serde_json::json!({
            "filter_enabled": {"default_value": {"numerator": 0}},
            "shadow_enabled": {"default_value": {"numerator": 1000000, "denominator": "MILLION"}},
        }));
        assert_eq!((p.enforced_ppm, p.shadow_ppm), (0, 1_000_000));
        assert!(!sample(0) && sample(1_000_000));
        let e = parse_typed::<CsrfPolicyConfig>(&serde_json::json!({})).unwrap_err();
        assert!(e.message.contains("filter_enabled"), "{e:?}");
        let e = Policy::build(
            &parse_typed(&serde_json::json!({
                "filter_enabled": {"default_value": {"numerator": 100}},
                "additional_origins": [{"exact": "a", "prefix": "b"}],
            }))
            .unwrap(),
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "additional_origins[0]");
        let e = parse_typed::<CsrfPolicyConfig>(&serde_json::json!({
            "filter_enabled": {"default_value": {"numerator": 100}, "runtime_key": "k"},
        }))
        .unwrap_err();
        assert!(e.message.contains("runtime_key"), "{e:?}");
    }
}
