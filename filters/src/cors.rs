//! `cors`: Cross-Origin Resource Sharing (Envoy's
//! `envoy.filters.http.cors`). The filter itself takes no config; the
//! policies are per virtual host and route (`per_filter_config: {cors:
//! <CorsPolicy>}`, the route's winning). A preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`) from an allowed origin is
//! answered by meshgate (200 with the `access-control-allow-*` headers)
//! and never forwarded; an actual request from an allowed origin is
//! forwarded and its response gets `access-control-allow-origin` (and
//! credentials / expose headers). A request from an origin the policy does
//! not allow gets no CORS header: the browser refuses it.

use http::{HeaderName, HeaderValue, Method};
use meshgate_core::BuildError;
use meshgate_core::config::filters::{CorsPolicyConfig, StringMatcherConfig};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, Request, Response, StreamFilter, StreamFilterFactory, StreamInfo,
    empty_body,
};
use std::sync::Arc;

const ACRM: HeaderName = HeaderName::from_static("access-control-request-method");
const ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const ACAM: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ACAH: HeaderName = HeaderName::from_static("access-control-allow-headers");
const ACMA: HeaderName = HeaderName::from_static("access-control-max-age");
const ACEH: HeaderName = HeaderName::from_static("access-control-expose-headers");

/// Factory of `cors`.
pub struct CorsFactory;

impl StreamFilterFactory for CorsFactory {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        // Envoy's `Cors` filter message is empty: policies are per route.
        let _: Empty = parse_typed(config)?;
        Ok(Arc::new(Cors))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

struct Cors;

/// A compiled `StringMatcher` on an origin (`csrf` uses it too).
pub(crate) enum Origin {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

impl Origin {
    pub(crate) fn build(path: &str, m: &StringMatcherConfig) -> Result<Self, BuildError> {
        let ic = m.ignore_case;
        let fold = |s: &String| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let set = [
            m.exact.is_some(),
            m.prefix.is_some(),
            m.suffix.is_some(),
            m.contains.is_some(),
            m.safe_regex.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(BuildError::new(
                path,
                "set exactly one of exact, prefix, suffix, contains, safe_regex",
            ));
        }
        Ok(
            match (&m.exact, &m.prefix, &m.suffix, &m.contains, &m.safe_regex) {
                (Some(s), ..) => Origin::Exact(fold(s), ic),
                (_, Some(s), ..) => Origin::Prefix(fold(s), ic),
                (_, _, Some(s), ..) => Origin::Suffix(fold(s), ic),
                (_, _, _, Some(s), _) => Origin::Contains(fold(s), ic),
                (.., Some(r)) => {
                    Origin::Regex(regex::Regex::new(&format!("^(?:{})$", r.regex)).map_err(
                        |e| BuildError::new(format!("{path}.safe_regex.regex"), e.to_string()),
                    )?)
                }
                _ => return Err(BuildError::new(path, "empty matcher")),
            },
        )
    }

    pub(crate) fn matches(&self, origin: &str) -> bool {
        // Folded only for an `ignore_case` matcher.
        let v = |ic: bool| -> std::borrow::Cow<'_, str> {
            if ic {
                origin.to_ascii_lowercase().into()
            } else {
                origin.into()
            }
        };
        match self {
            Origin::Exact(s, ic) => *v(*ic) == **s,
            Origin::Prefix(s, ic) => v(*ic).starts_with(s.as_str()),
            Origin::Suffix(s, ic) => v(*ic).ends_with(s.as_str()),
            Origin::Contains(s, ic) => v(*ic).contains(s.as_str()),
            Origin::Regex(r) => r.is_match(origin),
        }
    }
}

/// A compiled `CorsPolicy`.
struct Policy {
    origins: Vec<Origin>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    /// Parts per million of requests the policy applies to.
    enabled_ppm: u32,
    forward_not_matching_preflights: bool,
}

fn header(path: &str, field: &str, v: &str) -> Result<Option<HeaderValue>, BuildError> {
    if v.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(v)
        .map(Some)
        .map_err(|_| BuildError::new(format!("{path}{field}"), "not a valid header value"))
}

impl Policy {
    fn build(c: &CorsPolicyConfig) -> Result<Self, BuildError> {
        let mut origins = Vec::with_capacity(c.allow_origin_string_match.len());
        for (i, m) in c.allow_origin_string_match.iter().enumerate() {
            origins.push(Origin::build(
                &format!("allow_origin_string_match[{i}]"),
                m,
            )?);
        }
        if !c.max_age.is_empty() && c.max_age.parse::<u64>().is_err() {
            return Err(BuildError::new("max_age", "a number of seconds"));
        }
        Ok(Self {
            origins,
            allow_methods: header("", "allow_methods", &c.allow_methods)?,
            allow_headers: header("", "allow_headers", &c.allow_headers)?,
            expose_headers: header("", "expose_headers", &c.expose_headers)?,
            max_age: header("", "max_age", &c.max_age)?,
            allow_credentials: c.allow_credentials.unwrap_or(false),
            enabled_ppm: c
                .filter_enabled
                .as_ref()
                .map_or(1_000_000, |f| f.default_value.per_million()),
            forward_not_matching_preflights: c.forward_not_matching_preflights.unwrap_or(true),
        })
    }

    fn enabled(&self) -> bool {
        self.enabled_ppm >= 1_000_000
            || (self.enabled_ppm > 0 && rand::random_range(0..1_000_000) < self.enabled_ppm)
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.matches(origin))
    }
}

/// What the response phase needs of a CORS request.
#[derive(Clone)]
struct ActualRequest {
    origin: HeaderValue,
    policy: ParsedConfig,
}

impl StreamFilter for Cors {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let status = decide(req, info, route);
        Box::pin(std::future::ready(status))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(a) = info.filter_state.remove::<ActualRequest>() else {
            return;
        };
        let Some(p) = a.policy.downcast_ref::<Policy>() else {
            return;
        };
        let h = resp.headers_mut();
        h.insert(ACAO, a.origin);
        if p.allow_credentials {
            h.insert(ACAC, HeaderValue::from_static("true"));
        }
        if let Some(v) = &p.expose_headers {
            h.insert(ACEH, v.clone());
        }
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: CorsPolicyConfig = parse_typed(config)?;
        Ok(Arc::new(Policy::build(&c)?))
    }
}

fn decide(req: &Request, info: &mut StreamInfo, route: RouteView<'_>) -> FilterStatus {
    let Some(parsed) = route.config else {
        return FilterStatus::Continue;
    };
    let Some(policy) = parsed.downcast_ref::<Policy>() else {
        return FilterStatus::Continue;
    };
    let Some(origin) = req.headers().get(http::header::ORIGIN) else {
        return FilterStatus::Continue;
    };
    if !policy.enabled() {
        return FilterStatus::Continue;
    }
    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(ACRM);
    let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
    if !allowed {
        if preflight && !policy.forward_not_matching_preflights {
            // Answered without CORS headers: the browser refuses it.
            info.local_reply = Some("cors_preflight");
            return FilterStatus::Respond(Response::new(empty_body()));
        }
        return FilterStatus::Continue;
    }
    if preflight {
        info.local_reply = Some("cors_preflight");
        let mut resp = Response::new(empty_body());
        let h = resp.headers_mut();
        h.insert(ACAO, origin.clone());
        if policy.allow_credentials {
            h.insert(ACAC, HeaderValue::from_static("true"));
        }
        for (n, v) in [
            (ACAM, &policy.allow_methods),
            (ACAH, &policy.allow_headers),
            (ACMA, &policy.max_age),
        ] {
            if let Some(v) = v {
                h.insert(n, v.clone());
            }
        }
        return FilterStatus::Respond(resp);
    }
    info.filter_state.insert(ActualRequest {
        origin: origin.clone(),
        policy: parsed.clone(),
    });
    FilterStatus::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(v: serde_json::Value) -> Policy {
        Policy::build(&parse_typed(&v).unwrap()).unwrap()
    }

    #[test]
    fn origin_matchers() {
        let p = policy(serde_json::json!({"allow_origin_string_match": [
            {"exact": "https://a.example"},
            {"suffix": ".b.example"},
            {"prefix": "HTTPS://C.", "ignore_case": true},
            {"safe_regex": {"regex": "https://d[0-9]+\\.example"}},
        ]}));
        assert!(p.allows("https://a.example"));
        assert!(!p.allows("https://a.example.evil"));
        assert!(p.allows("https://x.b.example"));
        assert!(p.allows("https://c.example"));
        assert!(p.allows("https://d42.example"));
        assert!(!p.allows("https://d42.example.evil"));
        assert!(!p.allows("https://e.example"));
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = Policy::build(
            &parse_typed(&serde_json::json!({"allow_origin_string_match": [{}]})).unwrap(),
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "allow_origin_string_match[0]");
        let e = Policy::build(&parse_typed(&serde_json::json!({"max_age": "soon"})).unwrap())
            .err()
            .unwrap();
        assert_eq!(e.path, "max_age");
        let e = parse_typed::<CorsPolicyConfig>(&serde_json::json!({"allow_origin": ["*"]}))
            .err()
            .unwrap();
        assert!(e.message.contains("allow_origin"), "{e:?}");
    }

    #[test]
    fn filter_enabled_zero_disables() {
        let p = policy(serde_json::json!({"filter_enabled": {"default_value": {"numerator": 0}}}));
        assert!(!p.enabled());
        let p = policy(serde_json::json!({}));
        assert!(p.enabled());
    }
}
