//! The L7 route table (DESIGN.md layer 6): the route configuration model
//! (Envoy's `RouteConfiguration` naming, so xDS translates field by field),
//! its validation into a compiled [`RouteTable`], and matching.
//!
//! # Matching
//!
//! A request is described by a [`RouteInput`]: method, path (without the
//! query), query, host (`:authority`, else `Host`) and headers.
//!
//! 1. **Virtual host** by domain, case-insensitively: an exact domain, then
//!    the longest `*.suffix` wildcard, then the longest `prefix.*` wildcard,
//!    then the `*` default. At each step the host is tried as sent (port
//!    included, so a domain with a port can match), then without its port;
//!    `ignore_port_in_host_matching` set makes this Envoy's: `false` tries
//!    the host as sent only, `true` strips the port first.
//!    Domains are lowercase keys in sorted vectors (wildcards grouped by
//!    length), compared with ASCII case folding: no lowercase copy of the
//!    host is made.
//! 2. **Route**: the first route of the virtual host, in config order,
//!    whose match holds. To avoid a linear scan over thousands of routes,
//!    each virtual host indexes its routes by path:
//!    - `prefix` and `path` routes go into a radix tree over the path bytes
//!      (one tree for case-sensitive routes, one with lowercase keys for
//!      case-insensitive ones). Each node keeps the ascending indices of the
//!      routes whose prefix (or exact path) is the node's key. Walking the
//!      request path visits exactly the nodes that are prefixes of it, i.e.
//!      every route whose path part matches, in O(path length).
//!    - A `safe_regex` route whose pattern starts with a literal (e.g.
//!      `/v1/users/[0-9]+` starts with `/v1/users/`) is indexed under that
//!      literal prefix, and its regex checked only when the walk reaches
//!      it. Other regex routes (an alternation, a leading group or class)
//!      are kept in an ascending list scanned for every request; past
//!      `REGEX_SET_MIN` of them, one `RegexSet` pass over the path first
//!      tells whether any of them matches at all, so a request that matches
//!      none of them (the common case) pays one automaton walk, not one per
//!      regex.
//!
//!    The answer is the lowest route index among the candidates whose other
//!    conditions (headers, query parameters, methods, gRPC) hold. Each
//!    candidate list is scanned in ascending order and stops at its first
//!    full match or as soon as its indices exceed the best match found so
//!    far; so a regex route placed after the winning route is never
//!    evaluated. A request that matches nothing costs one tree walk plus
//!    the unindexed regexes. This gives the same answer as a linear scan
//!    ([`RouteTable::find_linear`], checked by a randomized test), without
//!    allocating.
//!
//! # Actions
//!
//! A [`Route`] carries one [`RouteAction`]: forward to a cluster
//! ([`ClusterAction`]: weighted pick, path and host rewrites, and a
//! [`ForwardPolicy`] with the timeout and retry policy for
//! [`crate::forward::forward`]), redirect ([`RedirectAction`]) or answer
//! directly ([`DirectResponseAction`]). Header mutations apply the virtual
//! host's first, then the route's (so the route's win); each level removes,
//! then adds.

mod action;
mod config;
mod domain;
pub mod envoy_headers;
pub mod fallback;
mod hash;
mod index;
mod matcher;
pub mod mirror;
mod missing;
mod rate_limits;
mod subscription;
#[cfg(test)]
mod tests;

pub use crate::forward::{ForwardPolicy, RetryOn};
pub use action::{
    ClusterAction, DirectResponseAction, HeaderAddition, HeaderMutations, PathRewrite,
    RedirectAction, RouteAction, WeightedCluster,
};
pub use config::RouteUpgradeConfig;
pub use config::{
    ClusterWeightConfig, DirectResponseConfig, HeaderMatcherConfig, HeaderValueOption,
    MaxStreamDurationConfig, QueryParameterMatcherConfig, RedirectActionConfig, RegexRewriteConfig,
    RetryBackOffConfig, RetryPolicyConfig, RouteActionConfig, RouteConfig, RouteEntryConfig,
    RouteMatchConfig, VirtualHostConfig, WeightedClustersConfig,
};
/// `host:port` -> `host` (`[v6]:port` -> `[v6]`); `None` without a port.
pub use domain::strip_port;
pub use hash::{
    HashConnectionPropertiesConfig, HashCookieAttributeConfig, HashCookieConfig,
    HashFilterStateConfig, HashHeaderConfig, HashPolicy, HashPolicyConfig,
    HashQueryParameterConfig, RequestHash,
};
pub use matcher::{HeaderMatcher, PathMatch, QueryParameterMatcher, RouteMatch};
pub use missing::ClusterNotFoundResponseCode;
pub use rate_limits::{Descriptor, RateLimitActions};
pub use subscription::{ChainRoutes, ROUTE_CONFIG_FIELD, RouteSubscription};

use crate::cluster::ClusterResolver;
use crate::error::BuildError;
use bytes::Bytes;
use domain::{DomainIndex, HostPort};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use index::PathIndex;
use std::collections::HashMap;
use std::sync::Arc;

/// What route matching looks at. Build it with [`RouteInput::from_request`]
/// or [`RouteInput::from_parts`]; borrowing only.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `:authority` (the URI's authority), else the `Host` header, else "".
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// The path with its query, as sent (`:path`).
    pub path_and_query: &'a str,
}

impl<'a> RouteInput<'a> {
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            path: uri.path(),
            query: uri.query(),
            host: request_host(uri, headers),
            headers,
            path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        }
    }

    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self::new(&parts.method, &parts.uri, &parts.headers)
    }

    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        Self::new(req.method(), req.uri(), req.headers())
    }
}

/// The host a request is for: the URI's authority (HTTP/2 `:authority`,
/// absolute-form), else the `Host` header, else "".
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    if let Some(a) = uri.authority() {
        return a.as_str();
    }
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A compiled route configuration: immutable, shared by every request.
#[derive(Debug)]
pub struct RouteTable {
    name: Arc<str>,
    virtual_hosts: Box<[VirtualHost]>,
    domains: DomainIndex,
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    name: Arc<str>,
    domains: Box<[String]>,
    routes: Box<[Route]>,
    index: RouteIndex,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
    /// `per_filter_config` (stream filter chain).
    filter_configs: Option<Box<crate::filter_chain::PerFilterConfigs>>,
    /// `rate_limits` (rate limit filters' descriptor actions).
    rate_limits: Option<Box<RateLimitActions>>,
}

#[derive(Debug)]
struct RouteIndex {
    case_sensitive: PathIndex,
    folded: PathIndex,
    /// Routes whose path match is a regex, ascending.
    unindexed: Box<[u32]>,
    /// All of `unindexed`'s regexes, when there are at least
    /// `REGEX_SET_MIN`: one pass says whether any matches.
    unindexed_set: Option<regex::RegexSet>,
}

/// Unindexed regex routes from which a `RegexSet` pre-check pays: below
/// this, checking each regex is as cheap as one set pass.
const REGEX_SET_MIN: usize = 8;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    name: Option<Arc<str>>,
    /// `name`, or `vhost/index` when unnamed: the `route` metric label.
    stat_name: &'static str,
    index: usize,
    route_match: RouteMatch,
    action: RouteAction,
    /// Targets that did not exist when the table was built.
    not_found: Option<Box<missing::NotFound>>,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
    /// `route.upgrade_configs`: (lowercase type, enabled).
    upgrades: Box<[(Box<str>, bool)]>,
    /// `per_filter_config` (stream filter chain).
    filter_configs: Option<Box<crate::filter_chain::PerFilterConfigs>>,
    /// `route.rate_limits` (rate limit filters' descriptor actions).
    rate_limits: Option<Box<RateLimitActions>>,
    /// `tracing` (distributed tracing overrides).
    tracing: Option<Box<crate::trace::RouteTracing>>,
}

impl RouteTable {
    /// Validates and compiles a route configuration; cluster names are
    /// resolved through `clusters` (a `ClusterManager`, or a filter's
    /// `BuildContext`, which records them). Error paths are relative to
    /// `cfg`.
    pub fn build(cfg: &RouteConfig, clusters: &dyn ClusterResolver) -> Result<Self, BuildError> {
        // `validate_clusters: false`: unknown clusters get stand-ins.
        let lenient =
            (cfg.validate_clusters == Some(false)).then(|| missing::Lenient::new(clusters));
        let clusters: &dyn ClusterResolver = match &lenient {
            Some(l) => l,
            None => clusters,
        };
        let mut domains = DomainIndex::default();
        let mut seen_domains: HashMap<String, usize> = HashMap::new();
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        let mut virtual_hosts = Vec::with_capacity(cfg.virtual_hosts.len());
        for (i, vh) in cfg.virtual_hosts.iter().enumerate() {
            let path = format!("virtual_hosts[{i}]");
            if vh.name.is_empty() {
                return Err(BuildError::new(format!("{path}.name"), "must not be empty"));
            }
            if let Some(prev) = seen_names.insert(&vh.name, i) {
                return Err(BuildError::new(
                    format!("{path}.name"),
                    format!(
                        "duplicate virtual host name '{}' (also virtual_hosts[{prev}])",
                        vh.name
                    ),
                ));
            }
            if vh.domains.is_empty() {
                return Err(BuildError::new(
                    format!("{path}.domains"),
                    "must not be empty",
                ));
            }
            let mut lower_domains = Vec::with_capacity(vh.domains.len());
            for (k, d) in vh.domains.iter().enumerate() {
                let dpath = format!("{path}.domains[{k}]");
                let lower = d.to_ascii_lowercase();
                let kind = domain::classify(&lower).map_err(|m| BuildError::new(&dpath, m))?;
                if let Some(&prev) = seen_domains.get(&lower) {
                    return Err(BuildError::new(
                        dpath,
                        format!(
                            "duplicate domain '{d}' (also in virtual host '{}')",
                            cfg.virtual_hosts[prev].name
                        ),
                    ));
                }
                domains.add(kind, i);
                seen_domains.insert(lower.clone(), i);
                lower_domains.push(lower);
            }
            let request_headers = build_mutations(
                &path,
                "request",
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
            )?;
            let response_headers = build_mutations(
                &path,
                "response",
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?;
            let vh_hedge = match &vh.hedge_policy {
                Some(h) => Some(crate::retry::hedge(&format!("{path}.hedge_policy"), h)?),
                None => None,
            };
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (j, r) in vh.routes.iter().enumerate() {
                let mut route = Route::build(
                    &format!("{path}.routes[{j}]"),
                    j,
                    r,
                    clusters,
                    vh.retry_policy
                        .as_ref()
                        .map(|p| (p, format!("{path}.retry_policy"))),
                )?;
                if let RouteAction::Cluster(c) = &mut route.action {
                    // The virtual host's attempt-count options, on each of
                    // its routes so that forwarding reads one place.
                    c.policy.request_attempt_count = vh.include_request_attempt_count;
                    // The virtual host's hedge policy, for a route without one.
                    if let Some(h) = vh_hedge
                        && r.route.as_ref().is_some_and(|a| a.hedge_policy.is_none())
                    {
                        c.policy.hedge_on_per_try_timeout = h;
                    }
                    c.attempt_count_in_response = vh.include_attempt_count_in_response;
                    for m in c.mirrors.iter_mut() {
                        m.missing = m.cluster().not_found;
                    }
                }
                if let RouteAction::Cluster(c) = &route.action {
                    let code = r
                        .route
                        .as_ref()
                        .and_then(|a| a.cluster_not_found_response_code);
                    route.not_found = missing::not_found(
                        c.clusters.iter().map(|t| &t.cluster),
                        code.unwrap_or_default(),
                    );
                }
                route.stat_name = match &route.name {
                    Some(n) => crate::stream::intern(n),
                    None => crate::stream::intern(&format!("{}/{j}", vh.name)),
                };
                routes.push(route);
            }
            let index = RouteIndex::build(&routes);
            virtual_hosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                domains: lower_domains.into(),
                routes: routes.into(),
                index,
                request_headers,
                response_headers,
                filter_configs: crate::filter_chain::PerFilterConfigs::build(&vh.per_filter_config),
                rate_limits: RateLimitActions::build_boxed(
                    &format!("virtual_hosts[{i}]"),
                    &vh.rate_limits,
                )?,
            });
        }
        domains.finish(match cfg.ignore_port_in_host_matching {
            None => HostPort::Either,
            Some(false) => HostPort::Kept,
            Some(true) => HostPort::Ignored,
        });
        Ok(Self {
            name: cfg.name.as_str().into(),
            virtual_hosts: virtual_hosts.into(),
            domains,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host serving `host` (see the module doc for the order).
    #[inline]
    pub fn find_virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.domains
            .lookup(host.as_bytes())
            .map(|i| &self.virtual_hosts[i])
    }

    /// The virtual host and the first matching route (indexed; no
    /// allocation).
    #[inline]
    pub fn find(&self, input: &RouteInput<'_>) -> Option<(&VirtualHost, &Route)> {
        let vh = self.find_virtual_host(input.host)?;
        vh.find_route(input).map(|r| (vh, r))
    }

    /// [`find`](Self::find) for a request.
    #[inline]
    pub fn find_request<B>(&self, req: &http::Request<B>) -> Option<(&VirtualHost, &Route)> {
        self.find(&RouteInput::from_request(req))
    }

    /// [`find`](Self::find) for a request head.
    #[inline]
    pub fn find_parts(&self, parts: &http::request::Parts) -> Option<(&VirtualHost, &Route)> {
        self.find(&RouteInput::from_parts(parts))
    }

    /// The reference semantics: like [`find`](Self::find) but scanning every
    /// route of the virtual host in order. For tests and benchmarks.
    pub fn find_linear(&self, input: &RouteInput<'_>) -> Option<(&VirtualHost, &Route)> {
        let vh = self.find_virtual_host(input.host)?;
        vh.find_route_linear(input).map(|r| (vh, r))
    }
}

impl VirtualHost {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The stream filters' per-virtual-host configs.
    pub fn per_filter_config(&self) -> Option<&crate::filter_chain::PerFilterConfigs> {
        self.filter_configs.as_deref()
    }

    /// `rate_limits`, if any (descriptor actions for rate limit filters).
    pub fn rate_limits(&self) -> Option<&RateLimitActions> {
        self.rate_limits.as_deref()
    }

    /// The domains, lowercase.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn request_headers(&self) -> &HeaderMutations {
        &self.request_headers
    }

    pub fn response_headers(&self) -> &HeaderMutations {
        &self.response_headers
    }

    /// The first route whose match holds, through the path index.
    #[inline]
    pub fn find_route(&self, input: &RouteInput<'_>) -> Option<&Route> {
        let routes = &self.routes;
        let mut best = u32::MAX;
        let path = input.path.as_bytes();
        let mut scan = |list: &[u32]| {
            for &i in list {
                if i >= best {
                    break;
                }
                if routes[i as usize].route_match.matches_indexed(input) {
                    best = i;
                    break;
                }
            }
        };
        self.index.case_sensitive.walk(path, &mut scan);
        if !self.index.folded.is_empty() {
            self.index.folded.walk(path, &mut scan);
        }
        let unindexed = &self.index.unindexed;
        // Skipped when no unindexed regex can win or none matches the path
        // (one set pass); otherwise each is checked in order, without
        // allocating (`RegexSet::matches` would return a fresh vector).
        let scan_unindexed = unindexed.first().is_some_and(|&i| i < best)
            && self
                .index
                .unindexed_set
                .as_ref()
                .is_none_or(|set| set.is_match(input.path));
        if scan_unindexed {
            for &i in unindexed.iter() {
                if i >= best {
                    break;
                }
                if routes[i as usize].route_match.matches(input) {
                    best = i;
                    break;
                }
            }
        }
        routes.get(best as usize)
    }

    /// The first route whose match holds, by a linear scan.
    pub fn find_route_linear(&self, input: &RouteInput<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.route_match.matches(input))
    }
}

impl RouteIndex {
    fn build(routes: &[Route]) -> Self {
        let mut case_sensitive = PathIndex::new(false);
        let mut folded = PathIndex::new(true);
        let mut unindexed = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            let m = &r.route_match;
            let tree = if m.case_sensitive {
                &mut case_sensitive
            } else {
                &mut folded
            };
            match &m.path {
                PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => tree.insert(p, false, i),
                PathMatch::Path(p) => tree.insert(p, true, i),
                // `case_sensitive` does not apply to regexes.
                PathMatch::Regex(re) => {
                    let pattern = re.as_str();
                    let inner = pattern
                        .strip_prefix("^(?:")
                        .and_then(|p| p.strip_suffix(")$"))
                        .unwrap_or("");
                    match matcher::regex_literal_prefix(inner) {
                        "" => unindexed.push(i),
                        prefix => case_sensitive.insert(prefix, false, i),
                    }
                }
            }
        }
        // The set is only a filter: if it cannot be built (its size
        // limit), every regex is checked as before.
        let unindexed_set = (unindexed.len() >= REGEX_SET_MIN)
            .then(|| {
                regex::RegexSet::new(unindexed.iter().map(|&i| {
                    match &routes[i as usize].route_match.path {
                        PathMatch::Regex(re) => re.as_str(),
                        // Only regex routes are unindexed; an empty
                        // unanchored pattern matches every path, so the
                        // scan would decide.
                        _ => "",
                    }
                }))
                .ok()
            })
            .flatten();
        Self {
            case_sensitive,
            folded,
            unindexed: unindexed.into(),
            unindexed_set,
        }
    }
}

impl Route {
    /// The stream filters' per-route configs.
    pub fn per_filter_config(&self) -> Option<&crate::filter_chain::PerFilterConfigs> {
        self.filter_configs.as_deref()
    }

    /// `rate_limits`, if any (descriptor actions for rate limit filters).
    pub fn rate_limits(&self) -> Option<&RateLimitActions> {
        self.rate_limits.as_deref()
    }

    /// `tracing`, if set (distributed tracing overrides).
    pub fn tracing(&self) -> Option<&crate::trace::RouteTracing> {
        self.tracing.as_deref()
    }

    /// The route's label in metrics and logs: `name`, or `vhost/index`.
    pub fn stat_name(&self) -> &'static str {
        self.stat_name
    }

    /// `name`, if configured.
    pub fn name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    /// Position in its virtual host's routes.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn route_match(&self) -> &RouteMatch {
        &self.route_match
    }

    pub fn action(&self) -> &RouteAction {
        &self.action
    }

    /// The status to answer instead of forwarding when `picked` is a
    /// cluster that is not there (a stand-in: a name unknown when the
    /// table was built with `validate_clusters: false`, or a cluster CDS
    /// removed); `None` for every other cluster at the cost of one test.
    #[inline]
    pub fn cluster_not_found(&self, picked: &Arc<crate::cluster::Cluster>) -> Option<StatusCode> {
        if !picked.not_found {
            return None;
        }
        // A filter may have picked another cluster than the route's
        // targets: Envoy's default then.
        Some(
            self.not_found
                .as_ref()
                .map_or(StatusCode::SERVICE_UNAVAILABLE, |nf| nf.status),
        )
    }

    /// The cluster action, when the route forwards.
    pub fn cluster_action(&self) -> Option<&ClusterAction> {
        match &self.action {
            RouteAction::Cluster(c) => Some(c),
            _ => None,
        }
    }

    pub fn request_headers(&self) -> &HeaderMutations {
        &self.request_headers
    }

    pub fn response_headers(&self) -> &HeaderMutations {
        &self.response_headers
    }

    /// Request header mutations: the virtual host's, then the route's.
    #[inline]
    pub fn apply_request_headers(&self, vhost: &VirtualHost, headers: &mut HeaderMap) {
        vhost.request_headers.apply(headers);
        self.request_headers.apply(headers);
    }

    /// Response header mutations: the virtual host's, then the route's.
    #[inline]
    pub fn apply_response_headers(&self, vhost: &VirtualHost, headers: &mut HeaderMap) {
        vhost.response_headers.apply(headers);
        self.response_headers.apply(headers);
    }

    /// Everything done to a request before forwarding: header mutations
    /// (virtual host, then route), then, for a cluster action, the path
    /// rewrite (the query is kept) and `host_rewrite_literal`.
    /// Whether this route enables (`Some(true)`) or disables
    /// (`Some(false)`) an upgrade type, or leaves it to the listener
    /// (Envoy's `RouteAction.upgrade_configs`).
    pub fn upgrade_override(&self, upgrade_type: &str) -> Option<bool> {
        self.upgrades
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(upgrade_type))
            .map(|(_, on)| *on)
    }

    pub fn apply_request_mutations_to(
        &self,
        vhost: &VirtualHost,
        uri: &mut Uri,
        headers: &mut HeaderMap,
    ) {
        self.apply_request_headers(vhost, headers);
        if let RouteAction::Cluster(c) = &self.action {
            c.rewrite_path(uri);
            c.rewrite_host(uri, headers);
        }
    }

    /// [`apply_request_mutations_to`](Self::apply_request_mutations_to) on
    /// a request.
    pub fn apply_request_mutations<B>(&self, vhost: &VirtualHost, req: &mut http::Request<B>) {
        let mut uri = std::mem::take(req.uri_mut());
        self.apply_request_mutations_to(vhost, &mut uri, req.headers_mut());
        *req.uri_mut() = uri;
    }

    /// [`apply_request_mutations_to`](Self::apply_request_mutations_to) on
    /// a request head.
    pub fn apply_request_mutations_parts(
        &self,
        vhost: &VirtualHost,
        parts: &mut http::request::Parts,
    ) {
        self.apply_request_mutations_to(vhost, &mut parts.uri, &mut parts.headers);
    }

    /// Response header mutations on a response (forwarded or local).
    pub fn apply_response_mutations<B>(&self, vhost: &VirtualHost, resp: &mut http::Response<B>) {
        self.apply_response_headers(vhost, resp.headers_mut());
    }

    fn build(
        path: &str,
        index: usize,
        c: &RouteEntryConfig,
        clusters: &dyn ClusterResolver,
        vh_retry: Option<(&RetryPolicyConfig, String)>,
    ) -> Result<Self, BuildError> {
        let route_match = build_match(&format!("{path}.match"), &c.match_)?;
        let prefix_len = match &route_match.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p.len()),
            _ => None,
        };
        let actions = [
            c.route.is_some(),
            c.redirect.is_some(),
            c.direct_response.is_some(),
        ];
        if actions.iter().filter(|b| **b).count() != 1 {
            return Err(BuildError::new(
                path,
                "set exactly one of route, redirect, direct_response",
            ));
        }
        let action = if let Some(a) = &c.route {
            RouteAction::Cluster(build_cluster_action(
                &format!("{path}.route"),
                a,
                prefix_len,
                clusters,
                vh_retry,
            )?)
        } else if let Some(r) = &c.redirect {
            RouteAction::Redirect(build_redirect(&format!("{path}.redirect"), r, prefix_len)?)
        } else if let Some(d) = &c.direct_response {
            let dpath = format!("{path}.direct_response");
            if !(200..=599).contains(&d.status) {
                return Err(BuildError::new(
                    format!("{dpath}.status"),
                    format!("status {} out of range 200..=599", d.status),
                ));
            }
            RouteAction::DirectResponse(DirectResponseAction {
                status: StatusCode::from_u16(d.status)
                    .map_err(|e| BuildError::new(format!("{dpath}.status"), e.to_string()))?,
                body: d
                    .body
                    .as_ref()
                    .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                    .unwrap_or_default(),
            })
        } else {
            unreachable!("exactly one action is set")
        };
        let mut upgrades = Vec::new();
        let configs = c.route.as_ref().map_or(&[][..], |a| &a.upgrade_configs[..]);
        for (k, u) in configs.iter().enumerate() {
            let t = u.upgrade_type.to_ascii_lowercase();
            if let Err(m) = check_upgrade_type(&t) {
                return Err(BuildError::new(
                    format!("{path}.route.upgrade_configs[{k}].upgrade_type"),
                    m,
                ));
            }
            upgrades.push((t.into_boxed_str(), u.enabled));
        }
        let rate_limits = match &c.route {
            Some(a) => RateLimitActions::build_boxed(&format!("{path}.route"), &a.rate_limits)?,
            None => None,
        };
        let tracing = match &c.tracing {
            Some(t) => Some(crate::trace::RouteTracing::build(&sub(path, "tracing"), t)?),
            None => None,
        };
        Ok(Self {
            tracing,
            upgrades: upgrades.into(),
            rate_limits,
            filter_configs: crate::filter_chain::PerFilterConfigs::build(&c.per_filter_config),
            name: c.name.as_deref().map(Arc::from),
            stat_name: "",
            index,
            route_match,
            action,
            not_found: None,
            request_headers: build_mutations(
                path,
                "request",
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
            )?,
            response_headers: build_mutations(
                path,
                "response",
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
            )?,
        })
    }
}

fn sub(path: &str, field: &str) -> String {
    crate::error::join_path(path, field)
}

fn check_literal_path(path: &str, value: &str) -> Result<(), BuildError> {
    if value.contains(['?', '#']) {
        return Err(BuildError::new(
            path,
            "must not contain '?' or '#' (the query is not part of the path)",
        ));
    }
    Ok(())
}

/// Compiles a `RouteMatchConfig` (also used by filters whose rules match
/// like routes, e.g. `jwt_authn`).
pub fn build_match(path: &str, c: &RouteMatchConfig) -> Result<RouteMatch, BuildError> {
    let kinds = [
        c.prefix.is_some(),
        c.path.is_some(),
        c.safe_regex.is_some(),
        c.path_separated_prefix.is_some(),
    ];
    if kinds.iter().filter(|b| **b).count() != 1 {
        return Err(BuildError::new(
            path,
            "set exactly one of prefix, path, safe_regex, path_separated_prefix",
        ));
    }
    let path_match = if let Some(p) = &c.path_separated_prefix {
        let ppath = sub(path, "path_separated_prefix");
        check_literal_path(&ppath, p)?;
        // Envoy's constraint: a non-empty prefix not ending with `/`.
        if p.is_empty() || p.ends_with('/') {
            return Err(BuildError::new(ppath, "must not be empty or end with '/'"));
        }
        PathMatch::SeparatedPrefix(p.as_str().into())
    } else if let Some(p) = &c.prefix {
        check_literal_path(&sub(path, "prefix"), p)?;
        PathMatch::Prefix(p.as_str().into())
    } else if let Some(p) = &c.path {
        check_literal_path(&sub(path, "path"), p)?;
        PathMatch::Path(p.as_str().into())
    } else {
        let re = c.safe_regex.as_deref().unwrap_or_default();
        PathMatch::Regex(
            matcher::full_regex(re).map_err(|m| BuildError::new(sub(path, "safe_regex"), m))?,
        )
    };
    let mut headers = Vec::with_capacity(c.headers.len());
    for (k, h) in c.headers.iter().enumerate() {
        headers.push(
            HeaderMatcher::build_route(h)
                .map_err(|(f, m)| BuildError::new(sub(&format!("{path}.headers[{k}]"), f), m))?,
        );
    }
    let mut query_parameters = Vec::with_capacity(c.query_parameters.len());
    for (k, q) in c.query_parameters.iter().enumerate() {
        query_parameters.push(QueryParameterMatcher::build(q).map_err(|(f, m)| {
            BuildError::new(sub(&format!("{path}.query_parameters[{k}]"), f), m)
        })?);
    }
    let mut methods = Vec::with_capacity(c.methods.len());
    for (k, m) in c.methods.iter().enumerate() {
        let mpath = format!("{path}.methods[{k}]");
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(BuildError::new(
                mpath,
                format!(
                    "invalid method '{m}': methods are case-sensitive, use '{}'",
                    m.to_ascii_uppercase()
                ),
            ));
        }
        methods.push(
            Method::from_bytes(m.as_bytes())
                .map_err(|_| BuildError::new(mpath, format!("invalid method '{m}'")))?,
        );
    }
    Ok(RouteMatch {
        path: path_match,
        case_sensitive: c.case_sensitive,
        headers: headers.into(),
        query_parameters: query_parameters.into(),
        methods: methods.into(),
        grpc: c.grpc,
    })
}

/// Parses a `retry_on` list.
pub fn parse_retry_on(s: &str) -> Result<RetryOn, crate::error::ValueError> {
    let mut r = RetryOn::default();
    let mut any = false;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        any = true;
        match name {
            "5xx" => r.five_xx = true,
            "gateway-error" => r.gateway_error = true,
            "connect-failure" => r.connect_failure = true,
            "reset" => r.reset = true,
            "retriable-status-codes" => r.retriable_status_codes = true,
            "retriable-4xx" => r.retriable_4xx = true,
            "envoy-ratelimited" => r.envoy_ratelimited = true,
            "reset-before-request" => r.reset_before_request = true,
            "refused-stream" => r.refused_stream = true,
            "retriable-headers" => r.retriable_headers = true,
            "cancelled" => r.grpc_cancelled = true,
            "deadline-exceeded" => r.grpc_deadline_exceeded = true,
            "internal" => r.grpc_internal = true,
            "resource-exhausted" => r.grpc_resource_exhausted = true,
            "unavailable" => r.grpc_unavailable = true,
            "http3-post-connect-failure" => {
                return Err(crate::error::ValueError::UnsupportedRetryOn);
            }
            other => return Err(crate::error::ValueError::UnknownRetryOn(other.to_string())),
        }
    }
    if !any {
        return Err(crate::error::ValueError::NoRetryOn);
    }
    Ok(r)
}

/// Converts an Envoy (RE2) substitution (`\1`, `\\`) to the `regex`
/// crate's syntax (`${1}`, `$$`), checking group numbers.
fn convert_substitution(s: &str, groups: usize) -> Result<String, crate::error::ValueError> {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some(d @ '0'..='9') => {
                    let n = d as usize - '0' as usize;
                    if n >= groups {
                        return Err(crate::error::ValueError::NoSuchGroup {
                            group: n,
                            groups: groups - 1,
                        });
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                _ => return Err(crate::error::ValueError::BadEscape),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn build_cluster_action(
    path: &str,
    c: &RouteActionConfig,
    prefix_len: Option<usize>,
    clusters: &dyn ClusterResolver,
    vh_retry: Option<(&RetryPolicyConfig, String)>,
) -> Result<ClusterAction, BuildError> {
    let targets: Vec<WeightedCluster> = match (&c.cluster, &c.weighted_clusters) {
        (Some(name), None) => vec![WeightedCluster {
            cluster: clusters.resolve(&sub(path, "cluster"), name)?,
            weight: 1,
            cumulative: 1,
            filter_configs: None,
        }],
        (None, Some(w)) => {
            let wpath = sub(path, "weighted_clusters.clusters");
            if w.clusters.is_empty() {
                return Err(BuildError::new(wpath, "must not be empty"));
            }
            let mut total = 0u64;
            let mut v = Vec::with_capacity(w.clusters.len());
            for (k, cw) in w.clusters.iter().enumerate() {
                let cpath = format!("{wpath}[{k}]");
                if cw.weight == 0 {
                    return Err(BuildError::new(format!("{cpath}.weight"), "must be >= 1"));
                }
                total += u64::from(cw.weight);
                v.push(WeightedCluster {
                    cluster: clusters.resolve(&format!("{cpath}.name"), &cw.name)?,
                    weight: cw.weight,
                    cumulative: total,
                    filter_configs: crate::filter_chain::PerFilterConfigs::build(
                        &cw.per_filter_config,
                    )
                    .map(Arc::from),
                });
            }
            v
        }
        _ => {
            return Err(BuildError::new(
                path,
                "set exactly one of cluster, weighted_clusters",
            ));
        }
    };
    let total_weight = targets.last().map_or(0, |t| t.cumulative);

    if c.prefix_rewrite.is_some() && c.regex_rewrite.is_some() {
        return Err(BuildError::new(
            path,
            "set at most one of prefix_rewrite, regex_rewrite",
        ));
    }
    let path_rewrite = if let Some(p) = &c.prefix_rewrite {
        let ppath = sub(path, "prefix_rewrite");
        let Some(prefix_len) = prefix_len else {
            return Err(BuildError::new(
                ppath,
                "prefix_rewrite needs a prefix match",
            ));
        };
        check_rewrite_path(&ppath, p)?;
        Some(PathRewrite::Prefix {
            prefix_len,
            replacement: p.as_str().into(),
        })
    } else if let Some(r) = &c.regex_rewrite {
        Some(build_regex_rewrite(&sub(path, "regex_rewrite"), r)?)
    } else {
        None
    };
    let host_rewrite = match &c.host_rewrite_literal {
        Some(h) => {
            let hpath = sub(path, "host_rewrite_literal");
            let authority = h
                .parse::<http::uri::Authority>()
                .ok()
                .filter(|a| !a.as_str().is_empty() && !a.as_str().contains('@'))
                .ok_or_else(|| BuildError::new(&hpath, format!("invalid host '{h}'")))?;
            let value = HeaderValue::from_str(h)
                .map_err(|_| BuildError::new(&hpath, format!("invalid host '{h}'")))?;
            Some((authority, value))
        }
        None => None,
    };

    // Envoy: a route with max_stream_duration has no route timeout.
    if c.max_stream_duration.is_some()
        && !c.timeout.is_zero()
        && c.timeout != RouteActionConfig::default().timeout
    {
        return Err(BuildError::new(
            sub(path, "timeout"),
            "not used with max_stream_duration (as in Envoy, the stream duration bounds the route): remove it or set 0s",
        ));
    }
    let mut policy = ForwardPolicy {
        timeout: (!c.timeout.is_zero() && c.max_stream_duration.is_none()).then_some(c.timeout),
        priority: c.priority,
        ..ForwardPolicy::default()
    };
    // The route's retry policy wins over its virtual host's (Envoy).
    let retry = match (&c.retry_policy, vh_retry) {
        (Some(rp), _) => Some((rp, sub(path, "retry_policy"))),
        (None, vh) => vh,
    };
    if let Some((rp, rpath)) = retry {
        policy.retry_on = parse_retry_on(&rp.retry_on)
            .map_err(|m| BuildError::new(sub(&rpath, "retry_on"), m))?;
        for (k, s) in rp.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(s) {
                return Err(BuildError::new(
                    format!("{rpath}.retriable_status_codes[{k}]"),
                    format!("status {s} out of range 100..=599"),
                ));
            }
        }
        let base = rp.retry_back_off.base_interval;
        if base.is_zero() {
            return Err(BuildError::new(
                sub(&rpath, "retry_back_off.base_interval"),
                "must be > 0",
            ));
        }
        let max = rp.retry_back_off.max_interval.unwrap_or(base * 10);
        if max < base {
            return Err(BuildError::new(
                sub(&rpath, "retry_back_off.max_interval"),
                "must be >= base_interval",
            ));
        }
        policy.num_retries = rp.num_retries;
        policy.per_try_timeout = rp.per_try_timeout.filter(|d| !d.is_zero());
        policy.retriable_status_codes = rp.retriable_status_codes.clone();
        policy.backoff_base = base;
        policy.backoff_max = max;
        policy.max_buffered_body_bytes = rp.max_buffered_body_bytes;
        policy.rules = Some(Arc::new(crate::retry::rules(&rpath, rp)?));
        policy.per_try_idle_timeout = rp.per_try_idle_timeout.filter(|d| !d.is_zero());
    } else {
        policy.num_retries = 0;
    }
    if let Some(h) = &c.hedge_policy {
        policy.hedge_on_per_try_timeout = crate::retry::hedge(&sub(path, "hedge_policy"), h)?;
    }
    let mirrors = mirror::build(path, &c.request_mirror_policies, clusters)?;
    Ok(ClusterAction {
        mirrors,
        attempt_count_in_response: false,
        clusters: targets.into(),
        total_weight,
        policy,
        // `0s` stays: it disables the listener's default too.
        idle_timeout: c.idle_timeout,
        max_stream_duration: c.max_stream_duration.clone(),
        path_rewrite,
        host_rewrite,
        hash_policy: HashPolicy::build(&sub(path, "hash_policy"), &c.hash_policy)?,
        fallback: match &c.fallback {
            None => None,
            Some(f) => Some(Box::new(fallback::Fallback::build(
                &sub(path, "fallback"),
                f,
                clusters,
            )?)),
        },
        http_to_rpc: match &c.http_to_rpc {
            None => None,
            Some(t) => Some(Box::new(t.build(&sub(path, "http_to_rpc"))?)),
        },
    })
}

/// An upgrade type meshgate may tunnel: an HTTP token, never `h2c` (a
/// client's h2c upgrade is always stripped) nor `CONNECT` (not supported).
pub fn check_upgrade_type(t: &str) -> Result<(), &'static str> {
    if t.is_empty() || HeaderName::from_bytes(t.as_bytes()).is_err() {
        return Err("must be an HTTP token, e.g. websocket");
    }
    if t.eq_ignore_ascii_case("h2c") {
        return Err("h2c upgrades are never tunnelled (they are stripped)");
    }
    if t.eq_ignore_ascii_case("connect") {
        return Err("CONNECT is not supported");
    }
    Ok(())
}

/// A literal path used in a rewrite or redirect.
fn check_rewrite_path(path: &str, value: &str) -> Result<(), BuildError> {
    check_literal_path(path, value)?;
    if http::uri::PathAndQuery::try_from(value).is_err() {
        return Err(BuildError::new(path, format!("invalid path '{value}'")));
    }
    Ok(())
}

fn build_redirect(
    path: &str,
    c: &RedirectActionConfig,
    prefix_len: Option<usize>,
) -> Result<RedirectAction, BuildError> {
    if c.https_redirect && c.scheme_redirect.is_some() {
        return Err(BuildError::new(
            path,
            "set at most one of https_redirect, scheme_redirect",
        ));
    }
    let scheme: Option<Box<str>> = if c.https_redirect {
        Some("https".into())
    } else if let Some(s) = &c.scheme_redirect {
        let valid = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid {
            return Err(BuildError::new(
                sub(path, "scheme_redirect"),
                format!("invalid scheme '{s}'"),
            ));
        }
        Some(s.to_ascii_lowercase().into())
    } else {
        None
    };
    if let Some(h) = &c.host_redirect {
        let ok = h
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| !a.as_str().is_empty() && !a.as_str().contains('@'));
        if !ok {
            return Err(BuildError::new(
                sub(path, "host_redirect"),
                format!("invalid host '{h}'"),
            ));
        }
    }
    if c.port_redirect == Some(0) {
        return Err(BuildError::new(
            sub(path, "port_redirect"),
            "must be 1..=65535",
        ));
    }
    if [
        c.path_redirect.is_some(),
        c.prefix_rewrite.is_some(),
        c.regex_rewrite.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count()
        > 1
    {
        return Err(BuildError::new(
            path,
            "set at most one of path_redirect, prefix_rewrite, regex_rewrite",
        ));
    }
    if let Some(p) = &c.path_redirect {
        let ppath = sub(path, "path_redirect");
        if !p.starts_with('/') {
            return Err(BuildError::new(ppath, "must start with '/'"));
        }
        if p.contains('#') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
            return Err(BuildError::new(ppath, format!("invalid path '{p}'")));
        }
    }
    let prefix_rewrite = match &c.prefix_rewrite {
        Some(p) => {
            let ppath = sub(path, "prefix_rewrite");
            let Some(len) = prefix_len else {
                return Err(BuildError::new(
                    ppath,
                    "prefix_rewrite needs a prefix match",
                ));
            };
            check_rewrite_path(&ppath, p)?;
            Some(PathRewrite::Prefix {
                prefix_len: len,
                replacement: p.as_str().into(),
            })
        }
        None => match &c.regex_rewrite {
            Some(r) => Some(build_regex_rewrite(&sub(path, "regex_rewrite"), r)?),
            None => None,
        },
    };
    let status = match c.response_code {
        301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(c.response_code)
            .map_err(|e| BuildError::new(sub(path, "response_code"), e.to_string()))?,
        other => {
            return Err(BuildError::new(
                sub(path, "response_code"),
                format!("response_code {other} is not one of 301, 302, 303, 307, 308"),
            ));
        }
    };
    Ok(RedirectAction {
        scheme,
        host: c.host_redirect.as_deref().map(Into::into),
        port: c.port_redirect,
        path: c.path_redirect.as_deref().map(Into::into),
        path_rewrite: prefix_rewrite,
        status,
        strip_query: c.strip_query,
    })
}

/// A `regex_rewrite` (route or redirect) at `path`, compiled.
fn build_regex_rewrite(path: &str, r: &RegexRewriteConfig) -> Result<PathRewrite, BuildError> {
    let regex = regex::Regex::new(&r.pattern)
        .map_err(|e| BuildError::new(sub(path, "pattern"), format!("invalid regex: {e}")))?;
    let substitution = convert_substitution(&r.substitution, regex.captures_len())
        .map_err(|m| BuildError::new(sub(path, "substitution"), m))?;
    check_literal_path(&sub(path, "substitution"), &r.substitution)?;
    Ok(PathRewrite::Regex {
        regex,
        substitution: substitution.into(),
    })
}

/// Compiles `<dir>_headers_to_add` / `<dir>_headers_to_remove` of the
/// object at `path`.
fn build_mutations(
    path: &str,
    dir: &str,
    add: &[HeaderValueOption],
    remove: &[String],
) -> Result<HeaderMutations, BuildError> {
    let request = dir == "request";
    let mut removes = Vec::with_capacity(remove.len());
    for (k, n) in remove.iter().enumerate() {
        let field = sub(path, &format!("{dir}_headers_to_remove[{k}]"));
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| BuildError::new(&field, format!("invalid header name '{n}'")))?;
        if request && name == http::header::HOST {
            return Err(BuildError::new(field, "cannot remove 'host'"));
        }
        removes.push(name);
    }
    let mut adds = Vec::with_capacity(add.len());
    for (k, h) in add.iter().enumerate() {
        let field = sub(path, &format!("{dir}_headers_to_add[{k}]"));
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            BuildError::new(
                sub(&field, "name"),
                format!("invalid header name '{}'", h.name),
            )
        })?;
        if request && name == http::header::HOST {
            return Err(BuildError::new(
                sub(&field, "name"),
                "cannot set 'host' here (use route.host_rewrite_literal)",
            ));
        }
        let value = HeaderValue::from_str(&h.value).map_err(|_| {
            BuildError::new(
                sub(&field, "value"),
                format!("invalid header value {:?}", h.value),
            )
        })?;
        adds.push(HeaderAddition {
            name,
            value,
            append: h.append,
        });
    }
    Ok(HeaderMutations {
        remove: removes.into(),
        add: adds.into(),
    })
}
