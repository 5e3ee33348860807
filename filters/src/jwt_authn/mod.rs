//! `jwt_authn`: JSON Web Token authentication (Envoy's
//! `envoy.filters.http.jwt_authn`). Providers say where tokens are and
//! which keys (local or remote JWKS) verify them; the first rule whose
//! `match` holds, or the route's `requirement_name`, says which providers
//! a request needs (`requires_any`, `requires_all`, `allow_missing`...).
//! A missing or invalid token is 401 with `www-authenticate: Bearer`, an
//! audience not allowed 403, as Envoy answers. A verified token's claims
//! go to request headers (`claim_to_headers`), its payload upstream
//! (`forward_payload_header`) and into the stream's dynamic metadata
//! (`payload_in_metadata`, read by RBAC and the access log); the token is
//! removed from the request unless `forward`.
//!
//! Cost: a request no rule matches is a rule scan; a cached token is one
//! hash lookup (`provider`'s cache), signatures are checked once per
//! token and key set.

mod jwks;
mod provider;
mod requirement;

use http::{HeaderName, HeaderValue};
use jwks::{KeySet, Remote, RemoteSettings};
use meshgate_core::BuildError;
use meshgate_core::config::jwt_authn::{
    JwtAuthenticationConfig, JwtPerRouteConfig, JwtProviderConfig,
};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::router::{RouteInput, RouteMatch};
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, StreamFilter, StreamFilterFactory,
    StreamInfo, full_body, local_reply,
};
use provider::{Failure, Jwks, Location, Provider};
use requirement::{Outcome, Requirement};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The dynamic metadata namespace of the payload (Envoy's filter name).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Factory of `jwt_authn`.
pub struct JwtAuthnFactory;

impl StreamFilterFactory for JwtAuthnFactory {
    fn name(&self) -> &'static str {
        "jwt_authn"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: JwtAuthenticationConfig = parse_typed(config)?;
        Ok(Arc::new(JwtAuthn::build(&c, ctx)?))
    }
}

struct Rule {
    matcher: RouteMatch,
    /// `None`: a match needs no JWT.
    requires: Option<Arc<Requirement>>,
}

/// The built filter.
pub struct JwtAuthn {
    providers: Vec<Provider>,
    rules: Vec<Rule>,
    named: HashMap<String, Arc<Requirement>>,
    bypass_cors_preflight: bool,
}

/// A route's `requirement_name`, resolved.
struct PerRoute(Arc<Requirement>);

impl JwtAuthn {
    /// Builds the filter; a remote JWKS's cluster is resolved with `ctx`.
    pub fn build(c: &JwtAuthenticationConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        Self::build_with(c, &|field, name| ctx.cluster(field, name))
    }

    /// Builds the filter, clusters resolved by `cluster` (benches, tests).
    #[allow(clippy::type_complexity)]
    pub fn build_with(
        c: &JwtAuthenticationConfig,
        cluster: &dyn Fn(&str, &str) -> Result<Arc<meshgate_core::cluster::Cluster>, BuildError>,
    ) -> Result<Self, BuildError> {
        let mut index = BTreeMap::new();
        let mut providers = Vec::with_capacity(c.providers.len());
        for (name, p) in &c.providers {
            index.insert(name.clone(), providers.len());
            providers.push(build_provider(
                &format!("providers.{name}"),
                name,
                p,
                cluster,
            )?);
        }
        let mut named = HashMap::new();
        for (name, r) in &c.requirement_map {
            named.insert(
                name.clone(),
                Arc::new(Requirement::build(
                    &format!("requirement_map.{name}"),
                    r,
                    &index,
                )?),
            );
        }
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, r) in c.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let matcher = meshgate_core::router::build_match(&format!("{path}.match"), &r.match_)?;
            let requires = match (&r.requires, &r.requirement_name) {
                (Some(_), Some(_)) => {
                    return Err(BuildError::new(
                        path,
                        "set at most one of requires, requirement_name",
                    ));
                }
                (Some(q), None) => Some(Arc::new(Requirement::build(
                    &format!("{path}.requires"),
                    q,
                    &index,
                )?)),
                (None, Some(n)) => Some(named.get(n).cloned().ok_or_else(|| {
                    BuildError::new(
                        format!("{path}.requirement_name"),
                        format!("no requirement '{n}' in requirement_map"),
                    )
                })?),
                (None, None) => None,
            };
            rules.push(Rule { matcher, requires });
        }
        // Keys are fetched once the whole filter is built (a config error
        // later in the filter starts no task).
        for p in &providers {
            if let Jwks::Remote(r) = &p.jwks
                && c.providers
                    .get(p.name)
                    .and_then(|pc| pc.remote_jwks.as_ref())
                    .is_some_and(|rj| rj.async_fetch.is_some())
            {
                r.start_async_fetch();
            }
        }
        Ok(Self {
            providers,
            rules,
            named,
            bypass_cors_preflight: c.bypass_cors_preflight,
        })
    }

    /// The requirement of this request, if any.
    fn requirement<'a>(&'a self, req: &Request, route: &RouteView<'a>) -> Option<&'a Requirement> {
        if let Some(p) = route.config.and_then(|c| c.downcast_ref::<PerRoute>()) {
            return Some(&p.0);
        }
        if self.rules.is_empty() {
            return None;
        }
        let input = RouteInput::from_request(req);
        self.rules
            .iter()
            .find(|r| r.matcher.matches(&input))
            .and_then(|r| r.requires.as_deref())
    }

    async fn run(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        route: RouteView<'_>,
    ) -> FilterStatus {
        let Some(requirement) = self.requirement(req, &route) else {
            return FilterStatus::Continue;
        };
        if self.bypass_cors_preflight
            && req.method() == http::Method::OPTIONS
            && req.headers().contains_key(http::header::ORIGIN)
            && req.headers().contains_key("access-control-request-method")
        {
            return FilterStatus::Continue;
        }
        // Headers this filter writes are never taken from the client.
        for i in &requirement.providers {
            if let Some(p) = self.providers.get(*i) {
                for (h, _) in &p.claim_to_headers {
                    req.headers_mut().remove(h);
                }
                if let Some(h) = &p.payload_header {
                    req.headers_mut().remove(h);
                }
            }
        }
        let now = provider::now_secs();
        let mut results: Vec<(usize, Outcome)> = Vec::with_capacity(requirement.providers.len());
        let mut found: Vec<(usize, Location)> = Vec::new();
        for i in &requirement.providers {
            let Some(p) = self.providers.get(*i) else {
                continue;
            };
            let outcome = match p.extract(req) {
                None => Outcome::Missing,
                Some(f) => {
                    let verified = match p.keys().await {
                        Ok(keys) => p.verify(&f.token, &keys, now),
                        Err(e) => Err(e),
                    };
                    match verified {
                        Ok(v) => {
                            found.push((*i, f.at));
                            Outcome::Verified(v)
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
            };
            results.push((*i, outcome));
        }
        if let Err(f) = requirement.evaluate(&results, &self.providers) {
            return FilterStatus::Respond(deny(req, info, f));
        }
        let mut applied = 0u64;
        for (i, o) in &results {
            let (Outcome::Verified(v), Some(p)) = (o, self.providers.get(*i)) else {
                continue;
            };
            // A token whose audience the request's requirement does not
            // accept has no effect (it passed under an allowance).
            let audiences = requirement.audiences(*i).unwrap_or(&p.audiences);
            if !Provider::audience_ok(audiences, v) {
                continue;
            }
            applied |= 1 << (*i % 64);
            p.allowed.increment(1);
            let h = req.headers_mut();
            for (name, value) in &v.claim_headers {
                h.insert(name.clone(), value.clone());
            }
            if let (Some(name), Some(value)) = (&p.payload_header, &v.payload_header) {
                h.insert(name.clone(), value.clone());
            }
            if let (Some(key), Some(payload)) = (&p.payload_in_metadata, &v.payload) {
                info.metadata_mut()
                    .set(METADATA_NAMESPACE, key, payload.clone());
            }
        }
        for (i, at) in &found {
            if applied & (1 << (*i % 64)) != 0 && self.providers.get(*i).is_some_and(|p| !p.forward)
            {
                Provider::strip(req, at);
            }
        }
        FilterStatus::Continue
    }
}

impl StreamFilter for JwtAuthn {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(self.run(req, info, route))
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: JwtPerRouteConfig = parse_typed(config)?;
        match (c.disabled, &c.requirement_name) {
            (true, _) => Err(BuildError::new(
                "disabled",
                "`disabled: true` goes alone (the chain's switch), without requirement_name",
            )),
            (false, None) => Err(BuildError::new(
                "requirement_name",
                "set requirement_name, or `disabled: true`",
            )),
            (false, Some(n)) => match self.named.get(n) {
                Some(r) => Ok(Arc::new(PerRoute(r.clone()))),
                None => Err(BuildError::new(
                    "requirement_name",
                    format!("no requirement '{n}' in the filter's requirement_map"),
                )),
            },
        }
    }
}

/// The 401/403 answer, Envoy's way: its message as the body and
/// `www-authenticate: Bearer realm="<scheme>://<host><path>"` (with
/// `error="invalid_token"` unless the token was missing). The path is
/// given without the query, so a token in `access_token` is not echoed.
fn deny(req: &Request, info: &mut StreamInfo, f: Failure) -> meshgate_core::stream::Response {
    let reason = if f == Failure::Audience {
        LocalReason::Forbidden
    } else {
        LocalReason::Unauthenticated
    };
    metrics::counter!(names::JWT_AUTHN_DENIED_TOTAL, "reason" => f.label()).increment(1);
    let mut resp = local_reply(info, reason);
    *resp.body_mut() = full_body(format!("meshgate: {}\n", f.message()));
    let scheme = if info.connection.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = meshgate_core::router::request_host(req.uri(), req.headers());
    let mut v = format!("Bearer realm=\"{scheme}://{host}{}\"", req.uri().path());
    if f != Failure::Missing {
        v.push_str(", error=\"invalid_token\"");
    }
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn header_name(path: &str, v: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| BuildError::new(path, format!("'{v}' is not a valid header name")))
}

#[allow(clippy::type_complexity)]
fn build_provider(
    path: &str,
    name: &str,
    c: &JwtProviderConfig,
    cluster: &dyn Fn(&str, &str) -> Result<Arc<meshgate_core::cluster::Cluster>, BuildError>,
) -> Result<Provider, BuildError> {
    let field = |f: &str| format!("{path}.{f}");
    let pname = meshgate_core::stream::intern(name);
    let jwks = match (&c.local_jwks, &c.remote_jwks) {
        (Some(l), None) => {
            let p = field("local_jwks");
            let text = match (&l.inline_string, &l.filename) {
                (Some(s), None) => s.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| BuildError::new(format!("{p}.filename"), e.to_string()))?,
                _ => {
                    return Err(BuildError::new(
                        p,
                        "set exactly one of inline_string, filename",
                    ));
                }
            };
            Jwks::Local(Arc::new(
                KeySet::parse(text.as_bytes()).map_err(|e| BuildError::new(p, e))?,
            ))
        }
        (None, Some(r)) => {
            let p = field("remote_jwks");
            let uri: http::Uri = r
                .http_uri
                .uri
                .parse()
                .map_err(|_| BuildError::new(format!("{p}.http_uri.uri"), "not a valid URI"))?;
            if uri.scheme().is_none() || uri.authority().is_none() {
                return Err(BuildError::new(
                    format!("{p}.http_uri.uri"),
                    "an absolute URI (http://host/path)",
                ));
            }
            let cl = cluster(&format!("{p}.http_uri.cluster"), &r.http_uri.cluster)?;
            Jwks::Remote(Remote::new(RemoteSettings {
                provider: pname,
                cluster: cl,
                uri,
                timeout: r.http_uri.timeout.unwrap_or(Duration::from_secs(1)),
                cache_duration: r.cache_duration.unwrap_or(Duration::from_secs(600)),
                retries: r
                    .retry_policy
                    .as_ref()
                    .map_or(0, |rp| rp.num_retries.unwrap_or(1))
                    .min(10),
                failed_refetch: r
                    .async_fetch
                    .as_ref()
                    .and_then(|a| a.failed_refetch_duration)
                    .unwrap_or(Duration::from_secs(1)),
            }))
        }
        _ => {
            return Err(BuildError::new(
                path,
                "set exactly one of local_jwks, remote_jwks",
            ));
        }
    };
    let mut from_headers = Vec::new();
    for (i, h) in c.from_headers.iter().enumerate() {
        from_headers.push((
            header_name(&field(&format!("from_headers[{i}].name")), &h.name)?,
            h.value_prefix.clone(),
        ));
    }
    let mut from_params = c.from_params.clone();
    if from_headers.is_empty() && from_params.is_empty() && c.from_cookies.is_empty() {
        from_headers.push((http::header::AUTHORIZATION, "Bearer ".into()));
        from_params.push("access_token".into());
    }
    let mut claim_to_headers = Vec::new();
    for (i, ch) in c.claim_to_headers.iter().enumerate() {
        let p = field(&format!("claim_to_headers[{i}]"));
        if ch.claim_name.is_empty() || ch.claim_name.split('.').any(str::is_empty) {
            return Err(BuildError::new(
                format!("{p}.claim_name"),
                "a claim name (nested claims with dots: a.b)",
            ));
        }
        claim_to_headers.push((
            header_name(&format!("{p}.header_name"), &ch.header_name)?,
            ch.claim_name.split('.').map(str::to_string).collect(),
        ));
    }
    let payload_header = match c.forward_payload_header.as_str() {
        "" => None,
        h => Some(header_name(&field("forward_payload_header"), h)?),
    };
    let cache_size = c
        .jwt_cache_config
        .as_ref()
        .and_then(|j| j.jwt_cache_size)
        .unwrap_or(100) as usize;
    Ok(Provider {
        name: pname,
        issuer: c.issuer.clone(),
        audiences: c.audiences.clone(),
        jwks,
        forward: c.forward,
        from_headers,
        from_params,
        from_cookies: c.from_cookies.clone(),
        payload_header,
        payload_in_metadata: Some(c.payload_in_metadata.clone()).filter(|s| !s.is_empty()),
        claim_to_headers,
        skew: u64::from(c.clock_skew_seconds.unwrap_or(60)),
        require_expiration: c.require_expiration,
        cache: Default::default(),
        cache_size: cache_size.min(1 << 20),
        allowed: metrics::counter!(names::JWT_AUTHN_ALLOWED_TOTAL, "provider" => pname),
    })
}

#[cfg(test)]
mod tests;
