//! The stream filter chain (DESIGN.md layer 5): the driver that runs a
//! listener's stream filters around the router, and the per-route filter
//! configuration the route table carries.
//!
//! Envoy's model in meshgate's words: the route is computed first (so a
//! filter reads it and its per-route config), the request phase runs in
//! chain order, the router (no route, body limit, upstream exchange) is the
//! implicit last filter, the response phase runs in reverse over the
//! filters whose request phase ran, and a completion hook sees the final
//! status (logs, stats). A filter continues, answers locally (counted per
//! filter and reason), or asks for the route to be recomputed after it
//! changed what routing looks at. A filter that must wait (an external
//! call) awaits inside its request future and resumes.
//!
//! Body and trailer phases stream: a filter that declares them
//! (`StreamFilter::has_body_phases`, asked once when the chain is built)
//! hands the driver a per-stream [`BodyFilter`]; the driver wraps the
//! request body once (chunks and trailers through the filters in chain
//! order) and the response body once (reverse order). A request body
//! refusal ends the stream with the filter's local reply, winning over
//! the upstream exchange, which is dropped before the upstream sees the
//! end of the body. A filter that needs the whole body first asks for it
//! with [`buffer_body`] (bounded, 413 past the bound).
//!
//! Per-route config is looked up on the picked weighted cluster, then the
//! route, then the virtual host (Envoy's precedence); a route whose
//! weighted clusters carry their own config gets its cluster picked
//! before the filters, and the router forwards to that pick.
//!
//! Cost: an empty chain is one length test per stream; nothing is boxed or
//! allocated unless a filter is configured, and no body is wrapped unless
//! a filter with body phases runs.

use crate::cluster::Cluster;
use crate::error::BuildError;
use crate::router::{ClusterAction, Route, RouteAction, RouteTable, VirtualHost, WeightedCluster};
use crate::stream::{
    BodyError, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamInfo,
};
use bytes::Bytes;
use http::HeaderMap;
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A filter's parsed per-route config, as the filter's
/// [`StreamFilter::parse_per_route`] made it (downcast by the filter).
pub type ParsedConfig = Arc<dyn Any + Send + Sync>;

/// One entry of a virtual host's or route's `per_filter_config`: Envoy's
/// `typed_per_filter_config`. `{disabled: true}` (Envoy's
/// `envoy.config.route.v3.FilterConfig`) switches the filter off there;
/// any other value is the filter's own per-route config, which also
/// switches on a filter listed `disabled: true` in the chain.
#[derive(Debug)]
pub struct PerFilterConfig {
    raw: serde_json::Value,
    disabled: bool,
    parsed: OnceLock<Result<ParsedConfig, BuildError>>,
}

impl PerFilterConfig {
    fn new(raw: &serde_json::Value) -> Self {
        // `{disabled: bool}` alone is Envoy's `FilterConfig` wrapper.
        let disabled = match raw.as_object() {
            Some(o) if o.len() == 1 => o.get("disabled").and_then(|d| d.as_bool()),
            _ => None,
        };
        Self {
            raw: raw.clone(),
            disabled: disabled == Some(true),
            parsed: OnceLock::new(),
        }
    }

    /// Whether this entry only says "enabled" / "disabled" (no config).
    fn is_switch(&self) -> bool {
        self.raw
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.get("disabled").is_some_and(|d| d.is_boolean()))
    }

    /// The filter's parsed config, parsed once (then shared by every
    /// stream of this route table).
    fn parsed(&self, filter: &dyn StreamFilter) -> Result<Option<&ParsedConfig>, &BuildError> {
        if self.is_switch() {
            return Ok(None);
        }
        match self
            .parsed
            .get_or_init(|| filter.parse_per_route(&self.raw))
        {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(e),
        }
    }
}

/// The `per_filter_config` of one virtual host or route, by filter name.
#[derive(Debug, Default)]
pub struct PerFilterConfigs(BTreeMap<String, PerFilterConfig>);

impl PerFilterConfigs {
    /// `None` when the map is empty, so a route without per-filter config
    /// costs one pointer.
    pub fn build(map: &BTreeMap<String, serde_json::Value>) -> Option<Box<Self>> {
        if map.is_empty() {
            return None;
        }
        Some(Box::new(Self(
            map.iter()
                .map(|(k, v)| (k.clone(), PerFilterConfig::new(v)))
                .collect(),
        )))
    }

    fn get(&self, name: &str) -> Option<&PerFilterConfig> {
        self.0.get(name)
    }

    /// The filter names this map configures.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// What a filter sees of the stream's route besides the request.
#[derive(Clone, Copy)]
pub struct RouteView<'a> {
    /// The matched virtual host and route (`None`: no route matched; the
    /// router answers 404 after the chain).
    pub matched: Option<(&'a VirtualHost, &'a Route)>,
    /// This filter's per-route config (route's, else virtual host's).
    pub config: Option<&'a ParsedConfig>,
}

/// One configured chain entry.
pub struct ChainEntry {
    pub filter: Arc<dyn StreamFilter>,
    /// The name the filter was configured with (metric label, per-route key).
    pub name: &'static str,
    /// Listed `disabled: true`: runs only on routes that configure it.
    pub disabled: bool,
}

/// The most filters a chain may hold (the driver tracks them in a `u64`).
pub const MAX_FILTERS: usize = 64;

/// A listener's stream filters, in order.
#[derive(Default)]
pub struct FilterChain {
    entries: Box<[ChainEntry]>,
    /// The entries with body phases (bit i: entry i).
    body: u64,
}

/// One stream's state in the driver: which filters' request phase ran
/// (the response phase runs exactly over them), the weighted cluster
/// picked before the filters, and where a request body refusal arrives.
#[derive(Debug, Default)]
pub struct Ran {
    bits: u64,
    pick: Option<usize>,
    refused: Option<oneshot::Receiver<Refusal>>,
}

impl Ran {
    /// The cluster the router forwards to: the weighted cluster picked
    /// before the filters (whose per-filter config they used), else a
    /// pick now.
    #[inline]
    pub fn pick_cluster<'a>(&self, c: &'a ClusterAction) -> &'a Arc<Cluster> {
        match self.pick.and_then(|i| c.clusters().get(i)) {
            Some(w) => &w.cluster,
            None => c.pick_cluster(),
        }
    }

    /// Where a request body phase's refusal arrives, when the request
    /// body is filtered (see [`guard_upstream`]).
    #[inline]
    pub fn take_body_refusal(&mut self) -> Option<oneshot::Receiver<Refusal>> {
        self.refused.take()
    }
}

/// A body or trailer phase refused the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub filter: &'static str,
    pub reason: LocalReason,
}

impl Refusal {
    /// The local reply for a request body refusal, counted as the
    /// filter's denial (and in the access log's `denied_by`).
    pub fn reply(self, info: &mut StreamInfo) -> Response {
        let resp = crate::stream::local_reply(info, self.reason);
        deny(self.filter, info, self.reason.label());
        resp
    }
}

/// The error a filtered body ends with when a filter refused it.
#[derive(Debug, thiserror::Error)]
#[error("stream filter {filter} refused the body: {}", reason.label())]
pub struct BodyRefused {
    pub filter: &'static str,
    pub reason: LocalReason,
}

/// One stream's body and trailer phases of one filter (made by
/// `StreamFilter::request_body` / `response_body`, so it holds the
/// stream's own state, e.g. a running digest). A phase may modify the
/// chunk or the trailers, or refuse the stream with a reason: on the
/// request side the stream is answered with that local reply (if the
/// upstream has not answered yet; the upstream never sees the end of the
/// body either way); on the response side the body is cut (the head is
/// already on its way) unless the response has no body, in which case it
/// is replaced by the local reply. A filter that changes a chunk's length
/// removes `content-length` in its head phase.
pub trait BodyFilter: Send + 'static {
    /// One data chunk.
    fn on_data(&mut self, _data: &mut Bytes) -> Result<(), LocalReason> {
        Ok(())
    }
    /// The trailers, when the body has them (before `on_end`).
    fn on_trailers(&mut self, _trailers: &mut HeaderMap) -> Result<(), LocalReason> {
        Ok(())
    }
    /// The end of the body, before the last frame is passed on (a
    /// refusal here stops the end from reaching the other side).
    fn on_end(&mut self) -> Result<(), LocalReason> {
        Ok(())
    }
}

struct Phase {
    name: &'static str,
    filter: Box<dyn BodyFilter>,
}

/// Runs `f` over the phases in order, stopping at the first refusal.
fn each(
    phases: &mut [Phase],
    mut f: impl FnMut(&mut dyn BodyFilter) -> Result<(), LocalReason>,
) -> Result<(), Refusal> {
    for p in phases {
        f(&mut *p.filter).map_err(|reason| Refusal {
            filter: p.name,
            reason,
        })?;
    }
    Ok(())
}

/// A body seen through the body phases of the filters that asked.
struct FilteredBody {
    inner: crate::stream::Body,
    phases: Vec<Phase>,
    /// `on_end` ran, or a filter refused: nothing more comes.
    ended: bool,
    /// Request side: where a refusal goes (the router waits on it).
    refused: Option<oneshot::Sender<Refusal>>,
}

impl FilteredBody {
    fn refuse(&mut self, r: Refusal) -> BodyError {
        self.ended = true;
        let sent = match self.refused.take() {
            Some(tx) => tx.send(r).is_ok(),
            None => false,
        };
        if !sent {
            // Nobody answers with it any more (a response body, or the
            // upstream answered already): the stream is cut, counted here.
            metrics::counter!(crate::metrics::names::HTTP_FILTER_DENIED_TOTAL, "filter" => r.filter, "reason" => r.reason.label()).increment(1);
        }
        Box::new(BodyRefused {
            filter: r.filter,
            reason: r.reason,
        })
    }

    fn end(&mut self) -> Result<(), BodyError> {
        self.ended = true;
        each(&mut self.phases, |f| f.on_end()).map_err(|r| self.refuse(r))
    }
}

impl http_body::Body for FilteredBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let me = &mut *self;
        if me.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut me.inner).poll_frame(cx)) {
            None => return Poll::Ready(me.end().err().map(Err)),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(f)) => f,
        };
        let frame = match frame.into_data() {
            Ok(mut d) => match each(&mut me.phases, |f| f.on_data(&mut d)) {
                Ok(()) => http_body::Frame::data(d),
                Err(r) => return Poll::Ready(Some(Err(me.refuse(r)))),
            },
            Err(frame) => match frame.into_trailers() {
                Ok(mut t) => {
                    if let Err(r) = each(&mut me.phases, |f| f.on_trailers(&mut t)) {
                        return Poll::Ready(Some(Err(me.refuse(r))));
                    }
                    // Trailers are the last frame: the end is now.
                    if let Err(e) = me.end() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    http_body::Frame::trailers(t)
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        // Not the inner body's: `on_end` must run before the consumer
        // stops polling.
        self.ended
    }

    // The size hint is left unknown: the head's `content-length` (kept,
    // or removed by a filter that changes lengths) decides the framing.
}

/// Wraps `body` in the phases, or runs their end now for a body that has
/// none (so a filter still sees the end, and may refuse).
fn filter_body(
    body: &mut crate::stream::Body,
    mut phases: Vec<Phase>,
    refused: Option<oneshot::Sender<Refusal>>,
) -> Result<(), Refusal> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return each(&mut phases, |f| f.on_end());
    }
    let inner = std::mem::replace(body, crate::stream::empty_body());
    *body = crate::stream::box_body(FilteredBody {
        inner,
        phases,
        ended: false,
        refused,
    });
    Ok(())
}

/// The upstream exchange of a stream whose request body is filtered: a
/// body phase's refusal wins (the exchange is dropped), also when it came
/// as the exchange failed because of it.
pub async fn guard_upstream<F: Future<Output = Response>>(
    exchange: F,
    mut refused: oneshot::Receiver<Refusal>,
) -> Result<Response, Refusal> {
    tokio::pin!(exchange);
    tokio::select! {
        biased;
        Ok(r) = &mut refused => Err(r),
        resp = &mut exchange => match refused.try_recv() {
            Ok(r) => Err(r),
            Err(_) => Ok(resp),
        },
    }
}

/// For a filter's request phase that needs the whole request body before
/// it decides (a signature check, a digest header): reads it, at most
/// `limit` bytes, and leaves it (and its trailers) on the request for the
/// next filters and the upstream. Past the bound the stream is answered
/// 413 (`payload_too_large`, counted as this filter's denial); a body that
/// breaks off is answered 400. Use: `let body = match
/// buffer_body(req, info, limit).await { Ok(b) => b, Err(s) => return s };`
pub async fn buffer_body(
    req: &mut Request,
    info: &mut StreamInfo,
    limit: usize,
) -> Result<Bytes, FilterStatus> {
    use crate::callout::{Buffered, buffer_request_body};
    match buffer_request_body(req, limit, false).await {
        Ok(Buffered::Whole(b)) => Ok(b),
        Ok(Buffered::TooLarge(_)) => Err(FilterStatus::Respond(crate::stream::local_reply(
            info,
            LocalReason::PayloadTooLarge,
        ))),
        // Refused by the global memory budget: 503, x-envoy-overloaded.
        Err(crate::callout::CalloutError::Upstream(r @ LocalReason::Overloaded)) => {
            Err(FilterStatus::Respond(crate::stream::local_reply(info, r)))
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body while buffering");
            Err(FilterStatus::Respond(crate::stream::local_reply(
                info,
                LocalReason::BadRequest,
            )))
        }
    }
}

impl FilterChain {
    pub fn new(entries: Vec<ChainEntry>) -> Result<Self, BuildError> {
        if entries.len() > MAX_FILTERS {
            return Err(BuildError::new(
                "stream_filters",
                format!("at most {MAX_FILTERS} stream filters"),
            ));
        }
        let body = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.filter.has_body_phases())
            .fold(0u64, |m, (i, _)| m | 1 << i);
        Ok(Self {
            entries: entries.into(),
            body,
        })
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every per-filter config of a route table against this chain:
    /// a name must be a configured filter, and its config must parse.
    /// Error paths are relative to the route config.
    pub fn validate(&self, table: &RouteTable) -> Result<(), BuildError> {
        for (i, vh) in table.virtual_hosts().iter().enumerate() {
            let vpath = format!("virtual_hosts[{i}]");
            self.validate_map(&vpath, vh.per_filter_config())?;
            for (j, r) in vh.routes().iter().enumerate() {
                let rpath = format!("{vpath}.routes[{j}]");
                self.validate_map(&rpath, r.per_filter_config())?;
                if let RouteAction::Cluster(c) = r.action() {
                    for (k, w) in c.clusters().iter().enumerate() {
                        self.validate_map(
                            &format!("{rpath}.route.weighted_clusters.clusters[{k}]"),
                            w.per_filter_config(),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_map(&self, path: &str, m: Option<&PerFilterConfigs>) -> Result<(), BuildError> {
        let Some(m) = m else { return Ok(()) };
        for (name, c) in &m.0 {
            let field = format!("{path}.per_filter_config.{name}");
            let Some(e) = self.entries.iter().find(|e| e.name == name) else {
                return Err(BuildError::new(
                    field,
                    format!(
                        "no stream filter '{name}' in the chain (configured: {})",
                        self.entries
                            .iter()
                            .map(|e| e.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            c.parsed(&*e.filter).map_err(|m| {
                BuildError::new(crate::error::join_path(&field, &m.path), m.message.clone())
            })?;
        }
        Ok(())
    }

    /// The request phase: each enabled filter in order. `Err` is the
    /// answer a filter made (the router is skipped); the route may have
    /// been recomputed (`FilterStatus::Reroute`). Denials are counted in
    /// `meshgate_http_filter_denied_total{filter,reason}` and recorded in
    /// the stream info for the access log.
    pub async fn on_request<'t>(
        &self,
        table: &'t RouteTable,
        matched: &mut Option<(&'t VirtualHost, &'t Route)>,
        req: &mut Request,
        info: &mut StreamInfo,
        ran: &mut Ran,
    ) -> Result<(), Response> {
        ran.pick = pick(*matched);
        let mut bodies: Vec<Phase> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let (enabled, config) = match resolve(e, *matched, weighted(*matched, ran.pick)) {
                Ok(x) => x,
                Err(m) => {
                    // A per-route config that does not parse: fail closed.
                    tracing::warn!(filter = e.name, error = %m, "per-route filter config");
                    let resp = crate::stream::local_reply(info, LocalReason::FilterConfigError);
                    deny(e.name, info, LocalReason::FilterConfigError.label());
                    return Err(resp);
                }
            };
            if !enabled {
                continue;
            }
            ran.bits |= 1 << i;
            let view = RouteView {
                matched: *matched,
                config,
            };
            match e.filter.on_request(req, info, view).await {
                FilterStatus::Continue => {}
                FilterStatus::Reroute => {
                    *matched = table.find_request(req);
                    info.route = matched.map(|(_, r)| r.stat_name());
                    ran.pick = pick(*matched);
                }
                FilterStatus::Respond(resp) => {
                    // A refusal carries its reason; any other answer (a
                    // CORS preflight) is the filter's own reply.
                    if let Some(r) = resp.extensions().get::<LocalReason>() {
                        deny(e.name, info, r.label());
                    }
                    return Err(resp);
                }
            }
            if self.body & (1 << i) != 0
                && let Some(f) = e.filter.request_body(req, info, view)
            {
                bodies.push(Phase {
                    name: e.name,
                    filter: f,
                });
            }
        }
        if !bodies.is_empty() {
            let (tx, rx) = oneshot::channel();
            filter_body(req.body_mut(), bodies, Some(tx)).map_err(|r| r.reply(info))?;
            ran.refused = Some(rx);
        }
        Ok(())
    }

    /// The response phase over the filters whose request phase ran, in
    /// reverse order; then their response body phases, if any asked. A
    /// filter that replaces the response with a refusal
    /// (`*resp = local_reply(info, reason)`) gets it counted as its
    /// denial and logged with `denied_by`, as in the request phase.
    pub fn on_response(&self, ran: &Ran, resp: &mut Response, info: &mut StreamInfo) {
        let mut bodies: Vec<Phase> = Vec::new();
        for (i, e) in self.entries.iter().enumerate().rev() {
            if ran.bits & (1 << i) != 0 {
                let before = resp.extensions().get::<LocalReason>().copied();
                e.filter.on_response(resp, info);
                if let Some(r) = resp.extensions().get::<LocalReason>().copied()
                    && before != Some(r)
                {
                    deny(e.name, info, r.label());
                }
                if self.body & (1 << i) != 0
                    && let Some(f) = e.filter.response_body(resp, info)
                {
                    bodies.push(Phase {
                        name: e.name,
                        filter: f,
                    });
                }
            }
        }
        if !bodies.is_empty()
            && let Err(r) = filter_body(resp.body_mut(), bodies, None)
        {
            // A bodiless response refused at its end: nothing was sent
            // yet, so the refusal is the answer.
            *resp = r.reply(info);
        }
    }

    /// The completion hook, once the response head is final.
    pub fn on_complete(&self, ran: &Ran, info: &StreamInfo, status: u16) {
        for (i, e) in self.entries.iter().enumerate() {
            if ran.bits & (1 << i) != 0 {
                e.filter.on_complete(info, status);
            }
        }
    }
}

/// The weighted cluster to pick before the filters: only when a target of
/// the route has its own per-filter config (otherwise the router picks).
fn pick(matched: Option<(&VirtualHost, &Route)>) -> Option<usize> {
    match matched?.1.action() {
        RouteAction::Cluster(c) if c.has_cluster_filter_configs() => {
            Some(c.index_at(rand::random_range(0..c.total_weight().max(1))))
        }
        _ => None,
    }
}

fn weighted<'a>(
    matched: Option<(&'a VirtualHost, &'a Route)>,
    pick: Option<usize>,
) -> Option<&'a WeightedCluster> {
    match matched?.1.action() {
        RouteAction::Cluster(c) => c.clusters().get(pick?),
        _ => None,
    }
}

/// Whether a filter runs for this route, and its per-route config: the
/// picked weighted cluster's entry wins over the route's, which wins over
/// the virtual host's, either overriding the chain's `disabled`.
fn resolve<'a>(
    e: &ChainEntry,
    matched: Option<(&'a VirtualHost, &'a Route)>,
    cluster: Option<&'a WeightedCluster>,
) -> Result<(bool, Option<&'a ParsedConfig>), &'a BuildError> {
    let entry = cluster
        .and_then(|w| w.per_filter_config())
        .and_then(|m| m.get(e.name))
        .or_else(|| {
            matched.and_then(|(vh, r)| {
                r.per_filter_config()
                    .and_then(|m| m.get(e.name))
                    .or_else(|| vh.per_filter_config().and_then(|m| m.get(e.name)))
            })
        });
    match entry {
        None => Ok((!e.disabled, None)),
        Some(c) if c.disabled => Ok((false, None)),
        Some(c) => Ok((true, c.parsed(&*e.filter)?)),
    }
}

fn deny(filter: &'static str, info: &mut StreamInfo, reason: &'static str) {
    info.denied_by = Some(filter);
    if info.local_reply.is_none() {
        info.local_reply = Some(reason);
    }
    metrics::counter!(crate::metrics::names::HTTP_FILTER_DENIED_TOTAL, "filter" => filter, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{FilterFuture, empty_body, local_reply};
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<String>>>;

    /// Records its phases; denies with `deny`, rewrites the path with
    /// `reroute_to`; its per-route config is a string it logs.
    struct Probe {
        name: &'static str,
        log: Log,
        deny: Option<LocalReason>,
        reroute_to: Option<&'static str>,
        /// Refuses in the response phase.
        deny_response: bool,
    }

    impl StreamFilter for Probe {
        fn on_request<'a>(
            &'a self,
            req: &'a mut Request,
            info: &'a mut StreamInfo,
            route: RouteView<'a>,
        ) -> FilterFuture<'a> {
            Box::pin(async move {
                let cfg = route
                    .config
                    .and_then(|c| c.downcast_ref::<String>())
                    .cloned()
                    .unwrap_or_default();
                let r = route.matched.map(|(_, r)| r.stat_name()).unwrap_or("-");
                // An await point: a filter resumes after waiting.
                tokio::task::yield_now().await;
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("req {} {r} {cfg}", self.name));
                if let Some(to) = self.reroute_to {
                    *req.uri_mut() = to.parse().unwrap();
                    return FilterStatus::Reroute;
                }
                match self.deny {
                    Some(reason) => FilterStatus::Respond(local_reply(info, reason)),
                    None => FilterStatus::Continue,
                }
            })
        }
        fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
            self.log.lock().unwrap().push(format!("resp {}", self.name));
            if self.deny_response {
                *resp = local_reply(info, LocalReason::Forbidden);
            }
        }
        fn on_complete(&self, _info: &StreamInfo, status: u16) {
            self.log
                .lock()
                .unwrap()
                .push(format!("done {} {status}", self.name));
        }
        fn parse_per_route(&self, c: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
            match c.as_str() {
                Some(s) => Ok(Arc::new(s.to_string())),
                None => Err(BuildError::new("value", "a string")),
            }
        }
    }

    fn entry(name: &'static str, log: &Log, disabled: bool) -> ChainEntry {
        ChainEntry {
            filter: Arc::new(Probe {
                name,
                log: log.clone(),
                deny: (name == "deny").then_some(LocalReason::Forbidden),
                reroute_to: (name == "rewrite").then_some("/b"),
                deny_response: name == "rdeny",
            }),
            name,
            disabled,
        }
    }

    fn table(yaml: &str) -> RouteTable {
        let cfg: crate::router::RouteConfig = serde_yaml::from_str(yaml).unwrap();
        let (c, src) =
            crate::config::parse_str(std::path::Path::new("t.yaml"), "clusters: []\n").unwrap();
        let clusters = crate::cluster::ClusterManager::build(
            &c.clusters,
            &crate::registry::Registry::new(),
            &src,
            false,
        )
        .unwrap();
        RouteTable::build(&cfg, &clusters).unwrap()
    }

    fn info() -> StreamInfo {
        let a = "127.0.0.1:1".parse().unwrap();
        let conn = crate::network::ConnectionInfo {
            id: 1,
            listener: Arc::from("l"),
            peer_addr: a,
            local_addr: a,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        };
        StreamInfo::new(Arc::new(conn), "http1")
    }

    const ROUTES: &str = r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    per_filter_config: {a: "from-vhost"}
    routes:
      - name: a
        match: {prefix: /a}
        direct_response: {status: 200}
        per_filter_config: {a: "from-route", off: "on-here", deny: {disabled: true}}
      - name: b
        match: {prefix: /b}
        direct_response: {status: 200}
"#;

    async fn run(
        chain: &FilterChain,
        t: &RouteTable,
        path: &str,
    ) -> (Result<(), u16>, Ran, StreamInfo) {
        let mut req = Request::new(empty_body());
        *req.uri_mut() = path.parse().unwrap();
        let mut info = info();
        let mut matched = t.find_request(&req);
        let mut ran = Ran::default();
        let r = chain
            .on_request(t, &mut matched, &mut req, &mut info, &mut ran)
            .await
            .map_err(|r| r.status().as_u16());
        let mut resp = Response::new(empty_body());
        chain.on_response(&ran, &mut resp, &mut info);
        chain.on_complete(&ran, &info, 200);
        (r, ran, info)
    }

    #[tokio::test]
    async fn request_in_order_response_in_reverse_over_the_filters_that_ran() {
        let log = Log::default();
        let chain = FilterChain::new(vec![
            entry("a", &log, false),
            entry("off", &log, true),
            entry("deny", &log, false),
            entry("c", &log, false),
        ])
        .unwrap();
        let t = table(ROUTES);
        chain.validate(&t).unwrap();
        // Route b: `off` stays off, `deny` refuses, `c` never runs.
        let (r, _, info) = run(&chain, &t, "/b").await;
        assert_eq!(r, Err(403));
        assert_eq!(info.denied_by, Some("deny"));
        assert_eq!(info.local_reply, Some("forbidden"));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "req a b from-vhost",
                "req deny b ",
                "resp deny",
                "resp a",
                "done a 200",
                "done deny 200"
            ]
        );
        log.lock().unwrap().clear();
        // Route a: its own config wins, `off` is switched on there and
        // `deny` switched off.
        let (r, _, info) = run(&chain, &t, "/a").await;
        assert_eq!(r, Ok(()));
        assert_eq!(info.denied_by, None);
        assert_eq!(
            log.lock().unwrap()[..3],
            ["req a a from-route", "req off a on-here", "req c a "]
        );
    }

    #[tokio::test]
    async fn a_filter_that_rewrites_the_path_gets_the_route_recomputed() {
        let log = Log::default();
        let chain =
            FilterChain::new(vec![entry("rewrite", &log, false), entry("c", &log, false)]).unwrap();
        let t = table(ROUTES);
        let (r, _, info) = run(&chain, &t, "/a").await;
        assert_eq!(r, Ok(()));
        assert_eq!(info.route, Some("b"));
        assert_eq!(log.lock().unwrap()[..2], ["req rewrite a ", "req c b "]);
    }

    /// A body of the given frames, one per poll.
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(
        chunks: &[&'static str],
        trailers: Option<(&'static str, &'static str)>,
    ) -> crate::stream::Body {
        let mut v: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| http_body::Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if let Some((k, val)) = trailers {
            let mut t = HeaderMap::new();
            t.insert(k, val.parse().unwrap());
            v.push_back(http_body::Frame::trailers(t));
        }
        crate::stream::box_body(Frames(v))
    }

    /// Appends its tag to every chunk and to the `x-order` trailer; with
    /// `check`, refuses (400) a body whose `x-sig` trailer is not `ok`;
    /// with `buffer`, reads the whole body first (bound 4 bytes).
    struct BodyProbe {
        tag: &'static str,
        check: bool,
        buffer: bool,
    }

    struct Tagger {
        tag: &'static str,
        check: bool,
        sig_ok: bool,
    }

    impl BodyFilter for Tagger {
        fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
            let mut v = data.to_vec();
            v.extend_from_slice(self.tag.as_bytes());
            *data = v.into();
            Ok(())
        }
        fn on_trailers(&mut self, t: &mut HeaderMap) -> Result<(), LocalReason> {
            let mut v = t
                .get("x-order")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            v.push_str(self.tag);
            t.insert("x-order", v.parse().unwrap());
            self.sig_ok = t.get("x-sig").is_some_and(|v| v == "ok");
            Ok(())
        }
        fn on_end(&mut self) -> Result<(), LocalReason> {
            if self.check && !self.sig_ok {
                return Err(LocalReason::BadRequest);
            }
            Ok(())
        }
    }

    impl StreamFilter for BodyProbe {
        fn on_request<'a>(
            &'a self,
            req: &'a mut Request,
            info: &'a mut StreamInfo,
            _route: RouteView<'a>,
        ) -> FilterFuture<'a> {
            Box::pin(async move {
                if self.buffer {
                    let body = match buffer_body(req, info, 4).await {
                        Ok(b) => b,
                        Err(s) => return s,
                    };
                    req.headers_mut()
                        .insert("x-len", body.len().to_string().parse().unwrap());
                }
                FilterStatus::Continue
            })
        }
        fn has_body_phases(&self) -> bool {
            !self.buffer
        }
        fn request_body(
            &self,
            _req: &Request,
            _info: &mut StreamInfo,
            _route: RouteView<'_>,
        ) -> Option<Box<dyn BodyFilter>> {
            Some(Box::new(Tagger {
                tag: self.tag,
                check: self.check,
                sig_ok: false,
            }))
        }
        fn response_body(
            &self,
            _resp: &Response,
            _info: &mut StreamInfo,
        ) -> Option<Box<dyn BodyFilter>> {
            Some(Box::new(Tagger {
                tag: self.tag,
                check: self.check,
                sig_ok: false,
            }))
        }
    }

    fn body_chain(filters: &[(&'static str, bool, bool)]) -> FilterChain {
        FilterChain::new(
            filters
                .iter()
                .map(|&(tag, check, buffer)| ChainEntry {
                    filter: Arc::new(BodyProbe { tag, check, buffer }),
                    name: tag,
                    disabled: false,
                })
                .collect(),
        )
        .unwrap()
    }

    async fn collect(b: crate::stream::Body) -> (String, Option<String>) {
        use http_body_util::BodyExt;
        let c = b.collect().await.unwrap();
        let t = c
            .trailers()
            .and_then(|t| t.get("x-order"))
            .map(|v| v.to_str().unwrap().to_string());
        (String::from_utf8(c.to_bytes().to_vec()).unwrap(), t)
    }

    #[tokio::test]
    async fn body_chunks_and_trailers_in_chain_order_and_in_reverse_on_the_way_back() {
        let chain = body_chain(&[("p", false, false), ("q", false, false)]);
        let t = table(ROUTES);
        let mut req = Request::new(frames(&["x", "y"], Some(("x-order", "-"))));
        *req.uri_mut() = "/b".parse().unwrap();
        let (mut info, mut ran) = (info(), Ran::default());
        let mut matched = t.find_request(&req);
        chain
            .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
            .await
            .unwrap();
        let refused = ran.take_body_refusal().unwrap();
        let (body, trailers) = collect(req.into_body()).await;
        assert_eq!(body, "xpqypq");
        assert_eq!(trailers.as_deref(), Some("-pq"));
        // Nothing refused: the sender is gone without a value.
        assert!(refused.await.is_err());

        let mut resp = Response::new(frames(&["r"], Some(("x-order", "-"))));
        chain.on_response(&ran, &mut resp, &mut info);
        let (body, trailers) = collect(resp.into_body()).await;
        assert_eq!(body, "rqp");
        assert_eq!(trailers.as_deref(), Some("-qp"));

        // A chain without body phases leaves the body as it is.
        let plain = FilterChain::new(vec![entry("c", &Log::default(), false)]).unwrap();
        let mut req = Request::new(frames(&["x"], None));
        *req.uri_mut() = "/b".parse().unwrap();
        let mut ran = Ran::default();
        plain
            .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
            .await
            .unwrap();
        assert!(ran.take_body_refusal().is_none());
    }

    #[tokio::test]
    async fn a_body_phase_refusal_wins_over_the_upstream_exchange() {
        let chain = body_chain(&[("p", false, false), ("sig", true, false)]);
        let t = table(ROUTES);
        for (sig, want) in [("bad", Some(400)), ("ok", None)] {
            let mut req = Request::new(frames(&["x"], Some(("x-sig", sig))));
            *req.uri_mut() = "/b".parse().unwrap();
            let (mut info, mut ran) = (info(), Ran::default());
            let mut matched = t.find_request(&req);
            chain
                .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
                .await
                .unwrap();
            // The "upstream" reads the whole body, then answers 200 (or
            // fails on the refused body, as a codec would: a reset, 503).
            let body = req.into_body();
            let exchange = async move {
                use http_body_util::BodyExt;
                let status = match body.collect().await {
                    Ok(_) => 200,
                    Err(e) => {
                        assert!(e.to_string().contains("sig"), "{e}");
                        503
                    }
                };
                let mut r = Response::new(empty_body());
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r
            };
            let got = match guard_upstream(exchange, ran.take_body_refusal().unwrap()).await {
                Ok(r) => r.status().as_u16(),
                Err(refusal) => {
                    assert_eq!(refusal.filter, "sig");
                    refusal.reply(&mut info).status().as_u16()
                }
            };
            match want {
                Some(code) => {
                    assert_eq!(got, code);
                    assert_eq!(info.denied_by, Some("sig"));
                    assert_eq!(info.local_reply, Some("bad_request"));
                }
                None => {
                    assert_eq!(got, 200);
                    assert_eq!(info.denied_by, None);
                }
            }
        }
        // A bodiless request still gets its end seen (and refused).
        let mut req = Request::new(empty_body());
        *req.uri_mut() = "/b".parse().unwrap();
        let (mut info, mut ran) = (info(), Ran::default());
        let mut matched = t.find_request(&req);
        let r = chain
            .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
            .await;
        assert_eq!(r.unwrap_err().status(), 400);
        assert_eq!(info.denied_by, Some("sig"));

        // The response side: a bodiless response refused at its end is
        // replaced by the local reply; a streamed one is cut.
        let mut req = Request::new(frames(&["x"], Some(("x-sig", "ok"))));
        *req.uri_mut() = "/b".parse().unwrap();
        let (mut info, mut ran) = (self::info(), Ran::default());
        let mut matched = t.find_request(&req);
        chain
            .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
            .await
            .unwrap();
        let mut resp = Response::new(empty_body());
        chain.on_response(&ran, &mut resp, &mut info);
        assert_eq!(resp.status(), 400);
        assert_eq!(info.denied_by, Some("sig"));
        let mut resp = Response::new(frames(&["r"], None));
        chain.on_response(&ran, &mut resp, &mut info);
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        let e = resp.into_body().collect().await.unwrap_err();
        assert!(e.to_string().contains("sig"), "{e}");
    }

    #[tokio::test]
    async fn a_filter_buffers_the_whole_body_and_gets_413_past_its_bound() {
        let chain = body_chain(&[("buf", false, true)]);
        let t = table(ROUTES);
        for (chunks, want) in [(&["ab", "cd"][..], Ok(())), (&["abc", "de"][..], Err(413))] {
            let mut req = Request::new(frames(chunks, Some(("x-order", "-"))));
            *req.uri_mut() = "/b".parse().unwrap();
            let (mut info, mut ran) = (info(), Ran::default());
            let mut matched = t.find_request(&req);
            let r = chain
                .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
                .await
                .map_err(|r| r.status().as_u16());
            assert_eq!(r, want);
            if want.is_ok() {
                assert_eq!(req.headers()["x-len"], "4");
                // The body and its trailers still go upstream.
                let (body, trailers) = collect(req.into_body()).await;
                assert_eq!((body.as_str(), trailers.as_deref()), ("abcd", Some("-")));
            } else {
                assert_eq!(info.denied_by, Some("buf"));
                assert_eq!(info.local_reply, Some("payload_too_large"));
            }
        }
    }

    #[tokio::test]
    async fn a_weighted_clusters_config_wins_over_the_routes_and_picks_the_target() {
        let log = Log::default();
        let chain = FilterChain::new(vec![entry("a", &log, false)]).unwrap();
        let t = table(
            r#"
validate_clusters: false
virtual_hosts:
  - name: v
    domains: ["*"]
    per_filter_config: {a: "from-vhost"}
    routes:
      - name: w
        match: {prefix: /}
        per_filter_config: {a: "from-route"}
        route:
          weighted_clusters:
            clusters:
              - {name: one, weight: 1, per_filter_config: {a: "from-one"}}
              - {name: two, weight: 1}
"#,
        );
        chain.validate(&t).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            log.lock().unwrap().clear();
            let mut req = Request::new(empty_body());
            *req.uri_mut() = "/x".parse().unwrap();
            let (mut info, mut ran) = (info(), Ran::default());
            let mut matched = t.find_request(&req);
            chain
                .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
                .await
                .unwrap();
            let RouteAction::Cluster(c) = matched.unwrap().1.action() else {
                panic!("cluster action")
            };
            let cluster = ran.pick_cluster(c).name.to_string();
            let line = log.lock().unwrap()[0].clone();
            // The filter saw the config of the cluster the router uses.
            let want = if cluster == "one" {
                "from-one"
            } else {
                "from-route"
            };
            assert_eq!(line, format!("req a w {want}"));
            seen.insert(cluster);
        }
        assert_eq!(seen.len(), 2, "both targets picked: {seen:?}");
        // A weighted cluster's config is checked against the chain too.
        let empty = FilterChain::new(vec![entry("b", &log, false)]).unwrap();
        let e = empty.validate(&t).unwrap_err();
        assert_eq!(e.path, "virtual_hosts[0].per_filter_config.a");
        let t2 = table(
            r#"
validate_clusters: false
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /}
        route:
          weighted_clusters:
            clusters:
              - {name: one, weight: 1, per_filter_config: {a: 7}}
"#,
        );
        let e = chain.validate(&t2).unwrap_err();
        assert_eq!(
            e.path,
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].per_filter_config.a.value"
        );
    }

    #[tokio::test]
    async fn a_response_phase_refusal_is_counted_as_the_filters_denial() {
        let log = Log::default();
        let chain =
            FilterChain::new(vec![entry("c", &log, false), entry("rdeny", &log, false)]).unwrap();
        let t = table(ROUTES);
        let mut req = Request::new(empty_body());
        *req.uri_mut() = "/b".parse().unwrap();
        let (mut info, mut ran) = (info(), Ran::default());
        let mut matched = t.find_request(&req);
        chain
            .on_request(&t, &mut matched, &mut req, &mut info, &mut ran)
            .await
            .unwrap();
        let mut resp = Response::new(empty_body());
        chain.on_response(&ran, &mut resp, &mut info);
        assert_eq!(resp.status(), 403);
        assert_eq!(info.denied_by, Some("rdeny"));
        assert_eq!(info.local_reply, Some("forbidden"));
        // `c` ran after it (reverse order) and did not take the denial over.
        assert_eq!(log.lock().unwrap()[2..], ["resp rdeny", "resp c"]);
    }

    #[test]
    fn per_filter_config_is_checked_against_the_chain() {
        let log = Log::default();
        let chain = FilterChain::new(vec![entry("a", &log, false)]).unwrap();
        let e = chain.validate(&table(ROUTES)).unwrap_err();
        assert_eq!(e.path, "virtual_hosts[0].routes[0].per_filter_config.deny");
        let chain = FilterChain::new(vec![
            entry("a", &log, false),
            entry("off", &log, false),
            entry("deny", &log, false),
        ])
        .unwrap();
        let bad = ROUTES.replace("{a: \"from-vhost\"}", "{a: 7}");
        let e = chain.validate(&table(&bad)).unwrap_err();
        assert_eq!(e.path, "virtual_hosts[0].per_filter_config.a.value");
    }
}
