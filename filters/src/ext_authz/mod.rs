//! `ext_authz`: external authorization (Envoy's
//! `envoy.filters.http.ext_authz`). Each request is checked by an
//! authorization server reached through one of meshgate's clusters
//! (`core::callout`), in one of two modes:
//! - gRPC (`grpc_service`): `envoy.service.auth.v3.Authorization/Check`
//!   with a `CheckRequest` built from the stream (`grpc`);
//! - HTTP (`http_service`): the request's method, path and allowed headers
//!   sent to a plain HTTP server, 2xx allowing (`http`).
//!
//! An allowed request carries on with the server's header mutations (and
//! the route recomputed with `clear_route_cache`); a denied one gets the
//! server's status, headers and body; a failed check (server down, past
//! the timeout, a malformed answer) is refused with `status_on_error`
//! unless `failure_mode_allow` lets it through. Nothing here runs for a
//! listener without the filter.

mod grpc;
mod http;
mod matcher;

use ::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use meshgate_core::BuildError;
use meshgate_core::callout::{Buffered, buffer_request_body};
use meshgate_core::cluster::Cluster;
use meshgate_core::config::ext_authz::{ExtAuthzConfig, ExtAuthzPerRouteConfig};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, full_body, local_reply,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The namespace of the dynamic metadata the server's answer publishes.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";
const FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");
/// Envoy's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// The most bytes of an authorization server's answer read (a denied
/// response's body included).
const MAX_ANSWER: usize = 1 << 20;

/// Factory of `ext_authz`.
pub struct ExtAuthzFactory;

impl StreamFilterFactory for ExtAuthzFactory {
    fn name(&self) -> &'static str {
        "ext_authz"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: ExtAuthzConfig = parse_typed(config)?;
        Ok(Arc::new(ExtAuthz::build(&c, ctx)?))
    }
}

/// Where checks go.
enum Service {
    Grpc(grpc::GrpcService),
    Http(http::HttpService),
}

impl Service {
    fn mode(&self) -> &'static str {
        match self {
            Service::Grpc(_) => "grpc",
            Service::Http(_) => "http",
        }
    }
}

/// How the body is sent to the server (`with_request_body`).
#[derive(Clone, Copy)]
struct BodySettings {
    max: usize,
    allow_partial: bool,
    pack_as_bytes: bool,
}

struct ExtAuthz {
    service: Service,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: StatusCode,
    body: Option<BodySettings>,
    clear_route_cache: bool,
    include_peer_certificate: bool,
}

impl ExtAuthz {
    fn build(c: &ExtAuthzConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if c.transport_api_version.as_ref().is_some_and(|v| v != "V3") {
            return Err(BuildError::new(
                "transport_api_version",
                "only V3 is supported",
            ));
        }
        let service = match (&c.grpc_service, &c.http_service) {
            (Some(g), None) => Service::Grpc(grpc::GrpcService::build(g, ctx)?),
            (None, Some(h)) => Service::Http(http::HttpService::build(h, ctx)?),
            _ => {
                return Err(BuildError::new(
                    "grpc_service",
                    "set exactly one of grpc_service, http_service",
                ));
            }
        };
        let status_on_error = match &c.status_on_error {
            None => StatusCode::FORBIDDEN,
            Some(s) => status(s.code).ok_or_else(|| {
                BuildError::new("status_on_error.code", "not an HTTP status (100-599)")
            })?,
        };
        let body = c.with_request_body.as_ref().map(|b| BodySettings {
            max: b.max_request_bytes as usize,
            allow_partial: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        });
        Ok(Self {
            service,
            failure_mode_allow: c.failure_mode_allow,
            failure_mode_allow_header_add: c.failure_mode_allow_header_add,
            status_on_error,
            body,
            clear_route_cache: c.clear_route_cache,
            include_peer_certificate: c.include_peer_certificate,
        })
    }
}

fn status(code: u16) -> Option<StatusCode> {
    (100..600)
        .contains(&code)
        .then(|| StatusCode::from_u16(code).ok())
        .flatten()
}

/// A route's `check_settings`.
#[derive(Debug, Default)]
struct PerRoute {
    context_extensions: BTreeMap<String, String>,
    disable_request_body_buffering: bool,
}

/// What one check sends besides the request itself.
pub(crate) struct CheckInput<'a> {
    /// The buffered body (`with_request_body`), and whether it was cut.
    pub body: Option<(Bytes, bool)>,
    pub pack_as_bytes: bool,
    pub context_extensions: Option<&'a BTreeMap<String, String>>,
    /// Send the mTLS peer's certificate (`include_peer_certificate`).
    pub peer_certificate: bool,
}

/// How a header from the server changes a header map (Envoy's
/// `HeaderValueOption.append_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: Action,
}

impl Mutation {
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        match self.action {
            Action::Append => {
                h.append(self.name.clone(), self.value.clone());
            }
            Action::AddIfAbsent => {
                if !h.contains_key(&self.name) {
                    h.insert(self.name.clone(), self.value.clone());
                }
            }
            Action::Overwrite => {
                h.insert(self.name.clone(), self.value.clone());
            }
            Action::OverwriteIfExists => {
                if h.contains_key(&self.name) {
                    h.insert(self.name.clone(), self.value.clone());
                }
            }
        }
    }
}

/// The server's verdict.
#[derive(Debug)]
pub(crate) enum Decision {
    Allow {
        /// Changes to the upstream request's headers.
        request: Vec<Mutation>,
        remove: Vec<HeaderName>,
        /// Headers added to the response sent to the client.
        response: Vec<Mutation>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    Deny {
        status: StatusCode,
        headers: Vec<Mutation>,
        body: Bytes,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// No usable answer; the label says why (`reason` of the error
    /// counter).
    Error(&'static str),
}

/// Response headers an allowed request's answer gets (`response_headers_to_add`).
#[derive(Clone)]
struct ResponseHeaders(Arc<[Mutation]>);

impl StreamFilter for ExtAuthz {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(self.check(req, info, route))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        if let Some(ResponseHeaders(m)) = info.filter_state.remove::<ResponseHeaders>() {
            for m in m.iter() {
                m.apply(resp.headers_mut());
            }
        }
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: ExtAuthzPerRouteConfig = parse_typed(config)?;
        // `{disabled: bool}` alone is the chain's switch and never gets
        // here; with `check_settings` beside it, it is ambiguous.
        if c.disabled.is_some() {
            return Err(BuildError::new(
                "disabled",
                "set either disabled or check_settings",
            ));
        }
        let Some(s) = c.check_settings else {
            return Err(BuildError::new(
                "check_settings",
                "set either disabled or check_settings",
            ));
        };
        Ok(Arc::new(PerRoute {
            context_extensions: s.context_extensions,
            disable_request_body_buffering: s.disable_request_body_buffering,
        }))
    }
}

impl ExtAuthz {
    async fn check(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        route: RouteView<'_>,
    ) -> FilterStatus {
        let mode = self.service.mode();
        let per_route = route.config.and_then(|c| c.downcast_ref::<PerRoute>());
        let mut body = None;
        if let Some(b) = self.body
            && !per_route.is_some_and(|p| p.disable_request_body_buffering)
        {
            match buffer_request_body(req, b.max, b.allow_partial).await {
                Ok(Buffered::Whole(data)) => body = Some((data, false)),
                Ok(Buffered::TooLarge(data)) => {
                    if !b.allow_partial {
                        count_error(mode, "request_body_too_large");
                        let resp = local_reply(info, LocalReason::PayloadTooLarge);
                        return FilterStatus::Respond(resp);
                    }
                    body = Some((data, true));
                }
                // Refused by the global memory budget: 503,
                // x-envoy-overloaded.
                Err(meshgate_core::callout::CalloutError::Upstream(
                    r @ LocalReason::Overloaded,
                )) => {
                    count_error(mode, "request_body_overloaded");
                    return FilterStatus::Respond(local_reply(info, r));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ext_authz: request body broke off");
                    count_error(mode, "request_body");
                    return FilterStatus::Respond(local_reply(info, LocalReason::BadRequest));
                }
            }
        }
        let input = CheckInput {
            body,
            pack_as_bytes: self.body.is_some_and(|b| b.pack_as_bytes),
            context_extensions: per_route.map(|p| &p.context_extensions),
            peer_certificate: self.include_peer_certificate,
        };
        // Built before awaiting: `&Request` may not cross an await.
        let decision = match &self.service {
            Service::Grpc(g) => {
                let msg = prost::Message::encode_to_vec(&grpc::check_request(req, info, &input));
                g.check(msg).await
            }
            Service::Http(h) => {
                let authz = h.authz_request(req, &input);
                h.check(authz).await
            }
        };
        self.apply(decision, req, info, mode)
    }

    fn apply(
        &self,
        decision: Decision,
        req: &mut Request,
        info: &mut StreamInfo,
        mode: &'static str,
    ) -> FilterStatus {
        match decision {
            Decision::Allow {
                request,
                remove,
                response,
                metadata,
            } => {
                metrics::counter!(names::EXT_AUTHZ_OK_TOTAL, "mode" => mode).increment(1);
                publish(info, metadata);
                let changed = !request.is_empty() || !remove.is_empty();
                let h = req.headers_mut();
                for m in &request {
                    m.apply(h);
                }
                for name in &remove {
                    h.remove(name);
                }
                if !response.is_empty() {
                    info.filter_state.insert(ResponseHeaders(response.into()));
                }
                if changed && self.clear_route_cache {
                    FilterStatus::Reroute
                } else {
                    FilterStatus::Continue
                }
            }
            Decision::Deny {
                status,
                headers,
                body,
                metadata,
            } => {
                metrics::counter!(names::EXT_AUTHZ_DENIED_TOTAL, "mode" => mode).increment(1);
                publish(info, metadata);
                let mut resp = refusal(info, status);
                *resp.body_mut() = full_body(body);
                resp.headers_mut().remove(::http::header::CONTENT_TYPE);
                for m in &headers {
                    m.apply(resp.headers_mut());
                }
                info.local_reply = Some("ext_authz_denied");
                FilterStatus::Respond(resp)
            }
            Decision::Error(reason) => {
                tracing::debug!(reason, mode, "ext_authz check failed");
                if self.failure_mode_allow {
                    metrics::counter!(names::EXT_AUTHZ_FAILURE_MODE_ALLOWED_TOTAL, "mode" => mode)
                        .increment(1);
                    if self.failure_mode_allow_header_add {
                        req.headers_mut()
                            .insert(FAILURE_MODE_ALLOWED, HeaderValue::from_static("true"));
                    }
                    return FilterStatus::Continue;
                }
                count_error(mode, reason);
                let mut resp = refusal(info, self.status_on_error);
                *resp.body_mut() = full_body(Bytes::new());
                resp.headers_mut().remove(::http::header::CONTENT_TYPE);
                info.local_reply = Some("ext_authz_error");
                FilterStatus::Respond(resp)
            }
        }
    }
}

fn count_error(mode: &'static str, reason: &'static str) {
    metrics::counter!(names::EXT_AUTHZ_ERROR_TOTAL, "mode" => mode, "reason" => reason)
        .increment(1);
}

/// A local reply with `status`, carrying the closest `LocalReason` (so a
/// gRPC client gets the matching gRPC status and the chain counts it).
fn refusal(info: &mut StreamInfo, status: StatusCode) -> Response {
    let reason = match status.as_u16() {
        401 => LocalReason::Unauthenticated,
        413 => LocalReason::PayloadTooLarge,
        429 => LocalReason::RateLimited,
        _ => LocalReason::Forbidden,
    };
    let mut resp = local_reply(info, reason);
    *resp.status_mut() = status;
    resp
}

/// Publishes the server's dynamic metadata under the filter's namespace.
fn publish(info: &mut StreamInfo, metadata: Option<serde_json::Map<String, serde_json::Value>>) {
    let Some(m) = metadata else { return };
    if m.is_empty() {
        return;
    }
    let md = info.metadata_mut();
    for (k, v) in m {
        md.set(METADATA_NAMESPACE, &k, v);
    }
}

/// The cluster a check goes to (resolved when the listener is built).
fn cluster(ctx: &BuildContext<'_>, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError> {
    if name.is_empty() {
        return Err(BuildError::new(field, "a cluster name is required"));
    }
    ctx.cluster(field, name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` with a build context that knows the clusters `authz` and
    /// `grpc-authz`.
    pub(crate) fn with_ctx<T>(f: impl FnOnce(&BuildContext<'_>) -> T) -> T {
        let yaml = "clusters:\n  - name: authz\n    endpoints: [{address: \"127.0.0.1:1\"}]\n  - name: grpc-authz\n    endpoints: [{address: \"127.0.0.1:1\"}]\n";
        let (c, src) =
            meshgate_core::config::parse_str(std::path::Path::new("t.yaml"), yaml).unwrap();
        let registry = meshgate_core::registry::Registry::new();
        let clusters =
            meshgate_core::cluster::ClusterManager::build(&c.clusters, &registry, &src, false)
                .unwrap();
        let ctx = BuildContext::new("l", &clusters, &registry);
        f(&ctx)
    }

    fn build(config: serde_json::Value) -> Result<ExtAuthz, BuildError> {
        with_ctx(|ctx| ExtAuthz::build(&parse_typed(&config)?, ctx))
    }

    #[test]
    fn config_errors_name_the_field() {
        let grpc = serde_json::json!({"envoy_grpc": {"cluster_name": "grpc-authz"}});
        let f = build(serde_json::json!({"grpc_service": grpc})).unwrap();
        assert_eq!(f.status_on_error, StatusCode::FORBIDDEN);
        let cases = [
            (serde_json::json!({}), "grpc_service"),
            (
                serde_json::json!({"grpc_service": {"envoy_grpc": {"cluster_name": "nope"}}}),
                "grpc_service.envoy_grpc.cluster_name",
            ),
            (
                serde_json::json!({"grpc_service": grpc, "transport_api_version": "V2"}),
                "transport_api_version",
            ),
            (
                serde_json::json!({"grpc_service": grpc, "status_on_error": {"code": 42}}),
                "status_on_error.code",
            ),
            (
                serde_json::json!({"grpc_service": grpc, "metadata_context_namespaces": ["a"]}),
                "metadata_context_namespaces",
            ),
            (
                serde_json::json!({"http_service": {"server_uri":
                    {"uri": "/relative", "cluster": "authz", "timeout": "1s"}}}),
                "http_service.server_uri.uri",
            ),
            (
                serde_json::json!({"http_service": {"path_prefix": "x", "server_uri":
                    {"uri": "http://a", "cluster": "authz", "timeout": "1s"}}}),
                "http_service.path_prefix",
            ),
        ];
        for (c, path) in cases {
            match build(c.clone()) {
                Err(e) => assert_eq!(e.path, path, "{c}"),
                Ok(_) => panic!("{c} accepted"),
            }
        }
    }

    #[test]
    fn mutations_follow_their_append_action() {
        let n = HeaderName::from_static("x-a");
        let m = |v: &'static str, action| Mutation {
            name: n.clone(),
            value: HeaderValue::from_static(v),
            action,
        };
        let mut h = HeaderMap::new();
        m("1", Action::OverwriteIfExists).apply(&mut h);
        assert!(h.is_empty());
        m("1", Action::AddIfAbsent).apply(&mut h);
        m("2", Action::AddIfAbsent).apply(&mut h);
        assert_eq!(h.get_all(&n).iter().collect::<Vec<_>>(), ["1"]);
        m("3", Action::Append).apply(&mut h);
        assert_eq!(h.get_all(&n).iter().collect::<Vec<_>>(), ["1", "3"]);
        m("4", Action::Overwrite).apply(&mut h);
        assert_eq!(h.get_all(&n).iter().collect::<Vec<_>>(), ["4"]);
        m("5", Action::OverwriteIfExists).apply(&mut h);
        assert_eq!(h[&n], "5");
    }

    #[test]
    fn per_route_needs_check_settings_or_the_switch() {
        let f = build(serde_json::json!({"grpc_service":
            {"envoy_grpc": {"cluster_name": "grpc-authz"}}}))
        .unwrap();
        let c = f
            .parse_per_route(&serde_json::json!({"check_settings": {
                "context_extensions": {"k": "v"}, "disable_request_body_buffering": true}}))
            .unwrap();
        let p = c.downcast_ref::<PerRoute>().unwrap();
        assert_eq!(p.context_extensions["k"], "v");
        assert!(p.disable_request_body_buffering);
        let e = f.parse_per_route(&serde_json::json!({})).unwrap_err();
        assert_eq!(e.path, "check_settings");
        let e = f
            .parse_per_route(&serde_json::json!({"check_settings": {"nope": 1}}))
            .unwrap_err();
        assert_eq!(e.path, "check_settings.nope");
    }

    #[test]
    fn status_codes_are_bounded() {
        assert_eq!(status(503), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(status(99), None);
        assert_eq!(status(600), None);
    }
}
