//! What a matched route does: forward to a (weighted) cluster with its
//! rewrites and forwarding policy, redirect, or answer directly; and the
//! header mutations of routes and virtual hosts.

use super::domain::strip_port;
use crate::cluster::Cluster;
use crate::forward::ForwardPolicy;
use crate::stream::{Response, empty_body, full_body};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// The action of a route.
// Built once per config and only read by reference: boxing the common
// (cluster) variant would add an indirection to every forwarded request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RouteAction {
    /// Forward upstream.
    Cluster(ClusterAction),
    /// Answer with a redirect.
    Redirect(RedirectAction),
    /// Answer with a fixed response.
    DirectResponse(DirectResponseAction),
}

/// One target of a cluster action with its weight (1 for a plain
/// `cluster`).
#[derive(Clone)]
pub struct WeightedCluster {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    /// Sum of the weights up to and including this one.
    pub(crate) cumulative: u64,
    /// `per_filter_config` of a weighted cluster (stream filter chain).
    pub(crate) filter_configs: Option<Arc<crate::filter_chain::PerFilterConfigs>>,
}

impl WeightedCluster {
    /// The stream filters' per-weighted-cluster configs.
    pub fn per_filter_config(&self) -> Option<&crate::filter_chain::PerFilterConfigs> {
        self.filter_configs.as_deref()
    }
}

impl std::fmt::Debug for WeightedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedCluster")
            .field("cluster", &self.cluster.name)
            .field("weight", &self.weight)
            .finish()
    }
}

/// A path rewrite applied before forwarding; the query is always kept.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the first `prefix_len` bytes (the matched prefix).
    Prefix {
        prefix_len: usize,
        replacement: Box<str>,
    },
    /// Replace every match of `regex` (`substitution` in the `regex`
    /// crate's syntax, converted from Envoy's `\1`).
    Regex {
        regex: regex::Regex,
        substitution: Box<str>,
    },
}

impl PathRewrite {
    /// The rewritten path, or `None` when the rewrite does not apply.
    pub fn apply(&self, path: &str) -> Option<String> {
        let out = match self {
            PathRewrite::Prefix {
                prefix_len,
                replacement,
            } => {
                let rest = path.get(*prefix_len..)?;
                let mut s = String::with_capacity(replacement.len() + rest.len());
                s.push_str(replacement);
                s.push_str(rest);
                s
            }
            PathRewrite::Regex {
                regex,
                substitution,
            } => regex.replace_all(path, &**substitution).into_owned(),
        };
        Some(out)
    }
}

/// Forward to a cluster. Build-time validated; the forwarding code reads
/// the policy and picks a cluster per request.
#[derive(Debug)]
pub struct ClusterAction {
    pub(crate) clusters: Box<[WeightedCluster]>,
    pub(crate) total_weight: u64,
    pub(crate) policy: ForwardPolicy,
    pub(crate) idle_timeout: Option<Duration>,
    /// `max_stream_duration`, when the route sets it.
    pub(crate) max_stream_duration: Option<super::MaxStreamDurationConfig>,
    pub(crate) path_rewrite: Option<PathRewrite>,
    pub(crate) host_rewrite: Option<(Authority, HeaderValue)>,
    pub(crate) hash_policy: Option<Box<super::hash::HashPolicy>>,
    /// meshgate's `fallback` (service degradation), if set.
    pub(crate) fallback: Option<Box<super::fallback::Fallback>>,
    /// `request_mirror_policies` (empty: nothing to do).
    pub(crate) mirrors: Box<[super::mirror::MirrorPolicy]>,
    /// The virtual host's `include_attempt_count_in_response`.
    pub(crate) attempt_count_in_response: bool,
    /// meshgate's `http_to_rpc` translation, if set.
    pub(crate) http_to_rpc: Option<Box<crate::config::http_to_rpc::HttpToRpc>>,
}

impl ClusterAction {
    /// The targets (one for `cluster`, several for `weighted_clusters`).
    pub fn clusters(&self) -> &[WeightedCluster] {
        &self.clusters
    }

    /// The route's `fallback` (service degradation), if set.
    pub fn fallback(&self) -> Option<&super::fallback::Fallback> {
        self.fallback.as_deref()
    }

    /// Sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Chooses the target cluster: the only one, or at random in
    /// proportion to the weights.
    #[inline]
    pub fn pick_cluster(&self) -> &Arc<Cluster> {
        if self.clusters.len() == 1 {
            return &self.clusters[0].cluster;
        }
        self.pick_cluster_at(rand::random_range(0..self.total_weight))
    }

    /// The cluster for a point `r` in `0..total_weight()` (deterministic;
    /// e.g. from a hash). `r` is taken modulo the total weight.
    pub fn pick_cluster_at(&self, r: u64) -> &Arc<Cluster> {
        &self.clusters[self.index_at(r)].cluster
    }

    /// The index of the target for a point `r` (see `pick_cluster_at`).
    pub fn index_at(&self, r: u64) -> usize {
        let r = r % self.total_weight.max(1);
        let i = self.clusters.partition_point(|c| c.cumulative <= r);
        i.min(self.clusters.len().saturating_sub(1))
    }

    /// Whether a target carries its own `per_filter_config`: the stream
    /// filter chain then picks the target before the filters run.
    pub fn has_cluster_filter_configs(&self) -> bool {
        self.clusters.iter().any(|c| c.filter_configs.is_some())
    }

    /// The route's mirrors (`router::mirror::start`).
    #[inline]
    pub fn mirrors(&self) -> &[super::mirror::MirrorPolicy] {
        &self.mirrors
    }

    /// The route's HTTP/JSON to RPC translation (`route.http_to_rpc`).
    pub fn http_to_rpc(&self) -> Option<&crate::config::http_to_rpc::HttpToRpc> {
        self.http_to_rpc.as_deref()
    }

    /// Whether the response tells the client its try count
    /// (`x-envoy-attempt-count`).
    #[inline]
    pub fn attempt_count_in_response(&self) -> bool {
        self.attempt_count_in_response
    }

    /// Timeouts and retries for `crate::forward::forward`.
    pub fn forward_policy(&self) -> &ForwardPolicy {
        &self.policy
    }

    /// The request's hash under the route's `hash_policy` (nothing to
    /// compute without one).
    #[inline]
    pub fn request_hash(
        &self,
        req: &crate::stream::Request,
        info: &crate::stream::StreamInfo,
    ) -> super::hash::RequestHash {
        match &self.hash_policy {
            None => super::hash::RequestHash::default(),
            Some(p) => p.evaluate(req, info),
        }
    }

    /// Stream idle timeout (`None`: the listener's `stream_idle_timeout`;
    /// zero: disabled).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The route's `max_stream_duration` (`crate::stream_duration`).
    pub fn max_stream_duration(&self) -> Option<&super::MaxStreamDurationConfig> {
        self.max_stream_duration.as_ref()
    }

    /// The path rewrite, if any.
    pub fn path_rewrite(&self) -> Option<&PathRewrite> {
        self.path_rewrite.as_ref()
    }

    /// `host_rewrite_literal`, if set.
    pub fn host_rewrite(&self) -> Option<&HeaderValue> {
        self.host_rewrite.as_ref().map(|(_, v)| v)
    }

    /// Applies the path rewrite to `uri`, keeping scheme, authority and
    /// query. Returns whether the URI changed.
    pub fn rewrite_path(&self, uri: &mut Uri) -> bool {
        let Some(rw) = &self.path_rewrite else {
            return false;
        };
        let Some(new_path) = rw.apply(uri.path()) else {
            return false;
        };
        set_path(uri, &new_path)
    }

    /// Applies `host_rewrite_literal`: replaces the URI's authority when it
    /// has one (HTTP/2 `:authority`, absolute-form) and sets `Host` when the
    /// request has one or the URI has no authority.
    pub fn rewrite_host(&self, uri: &mut Uri, headers: &mut HeaderMap) {
        let Some((authority, value)) = &self.host_rewrite else {
            return;
        };
        let has_authority = uri.authority().is_some();
        if has_authority {
            let mut parts = uri.clone().into_parts();
            parts.authority = Some(authority.clone());
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
        if !has_authority || headers.contains_key(HOST) {
            headers.insert(HOST, value.clone());
        }
    }
}

/// Replaces the path of `uri`, keeping everything else.
pub(crate) fn set_path(uri: &mut Uri, new_path: &str) -> bool {
    let slash = if new_path.starts_with('/') { "" } else { "/" };
    let pq = match uri.query() {
        Some(q) => format!("{slash}{new_path}?{q}"),
        None => format!("{slash}{new_path}"),
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return false;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    match Uri::from_parts(parts) {
        Ok(u) => {
            *uri = u;
            true
        }
        Err(_) => false,
    }
}

/// Answer with a redirect; unset parts of the `Location` come from the
/// request.
#[derive(Debug, Clone)]
pub struct RedirectAction {
    pub(crate) scheme: Option<Box<str>>,
    pub(crate) host: Option<Box<str>>,
    pub(crate) port: Option<u16>,
    /// May carry a `?query`, which then replaces the request's.
    pub(crate) path: Option<Box<str>>,
    /// `prefix_rewrite` or `regex_rewrite` (Envoy applies either to the
    /// path without its query).
    pub(crate) path_rewrite: Option<PathRewrite>,
    pub(crate) status: StatusCode,
    pub(crate) strip_query: bool,
}

/// The scheme a request came with: the URI's, else `x-forwarded-proto`
/// (`http`/`https`), else `http`.
fn request_scheme<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    if let Some(s) = uri.scheme_str() {
        return s;
    }
    match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').next().unwrap_or("").trim())
    {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

impl RedirectAction {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` for a request (Envoy's rules: a port the request
    /// carried is dropped when `port_redirect` is set, or when the scheme
    /// changes and the port was the old scheme's default).
    pub fn location(&self, uri: &Uri, headers: &HeaderMap) -> String {
        let req_scheme = request_scheme(uri, headers);
        let scheme = self.scheme.as_deref().unwrap_or(req_scheme);
        let req_host = super::request_host(uri, headers);
        let host: &str = match &self.host {
            Some(h) if self.port.is_some() => strip_port(h.as_bytes()).map_or(h, |s| &h[..s.len()]),
            Some(h) => h,
            None => match strip_port(req_host.as_bytes()) {
                Some(stripped) => {
                    let port = &req_host[stripped.len() + 1..];
                    let scheme_changed = !scheme.eq_ignore_ascii_case(req_scheme);
                    let default_port = (req_scheme == "https" && port == "443")
                        || (req_scheme == "http" && port == "80");
                    if self.port.is_some() || (scheme_changed && default_port) {
                        &req_host[..stripped.len()]
                    } else {
                        req_host
                    }
                }
                None => req_host,
            },
        };
        let req_path = uri.path();
        let req_query = if self.strip_query { None } else { uri.query() };
        let mut loc = String::with_capacity(
            scheme.len() + host.len() + req_path.len() + req_query.map_or(0, str::len) + 16,
        );
        loc.push_str(scheme);
        loc.push_str("://");
        loc.push_str(host);
        if let Some(p) = self.port {
            let _ = write!(loc, ":{p}");
        }
        let query = if let Some(p) = &self.path {
            match p.split_once('?') {
                Some((path, q)) => {
                    loc.push_str(path);
                    Some(q)
                }
                None => {
                    loc.push_str(p);
                    req_query
                }
            }
        } else if let Some(rw) = &self.path_rewrite {
            // Envoy: an empty result keeps the request's path; a result
            // without a leading `/` gets one.
            match rw.apply(req_path).filter(|p| !p.is_empty()) {
                Some(p) => {
                    if !p.starts_with('/') {
                        loc.push('/');
                    }
                    loc.push_str(&p);
                }
                None => loc.push_str(req_path),
            }
            req_query
        } else {
            loc.push_str(req_path);
            req_query
        };
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }

    /// The redirect response for a request head.
    pub fn response_for(&self, uri: &Uri, headers: &HeaderMap) -> Response {
        let mut resp = http::Response::new(empty_body());
        *resp.status_mut() = self.status;
        if let Ok(v) = HeaderValue::try_from(self.location(uri, headers)) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }

    /// The redirect response for a request.
    pub fn response<B>(&self, req: &http::Request<B>) -> Response {
        self.response_for(req.uri(), req.headers())
    }

    /// The redirect response for a request head.
    pub fn response_parts(&self, parts: &http::request::Parts) -> Response {
        self.response_for(&parts.uri, &parts.headers)
    }
}

/// Answer with a fixed status and body (`content-type: text/plain` when
/// the body is not empty).
#[derive(Debug, Clone)]
pub struct DirectResponseAction {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl DirectResponseAction {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The response (the body is shared, not copied).
    pub fn response(&self) -> Response {
        let mut resp = if self.body.is_empty() {
            http::Response::new(empty_body())
        } else {
            let mut r = http::Response::new(full_body(self.body.clone()));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        *resp.status_mut() = self.status;
        resp
    }
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAddition {
    pub name: HeaderName,
    pub value: HeaderValue,
    /// Add next to existing values (`true`) or replace them.
    pub append: bool,
}

/// Headers to remove, then headers to add.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub(crate) remove: Box<[HeaderName]>,
    pub(crate) add: Box<[HeaderAddition]>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    pub fn to_remove(&self) -> &[HeaderName] {
        &self.remove
    }

    pub fn to_add(&self) -> &[HeaderAddition] {
        &self.add
    }

    /// Removes, then adds (`append`) or replaces (`!append`).
    #[inline]
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in self.remove.iter() {
            headers.remove(n);
        }
        for a in self.add.iter() {
            if a.append {
                headers.append(a.name.clone(), a.value.clone());
            } else {
                headers.insert(a.name.clone(), a.value.clone());
            }
        }
    }
}
