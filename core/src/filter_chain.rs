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
//! Cost: an empty chain is one length test per stream; nothing is boxed or
//! allocated unless a filter is configured.

use crate::error::BuildError;
use crate::router::{Route, RouteTable, VirtualHost};
use crate::stream::{FilterStatus, LocalReason, Request, Response, StreamFilter, StreamInfo};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

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
}

/// Which filters' request phase ran, so the response phase runs exactly
/// over them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ran(u64);

impl FilterChain {
    pub fn new(entries: Vec<ChainEntry>) -> Result<Self, BuildError> {
        if entries.len() > MAX_FILTERS {
            return Err(BuildError::new(
                "stream_filters",
                format!("at most {MAX_FILTERS} stream filters"),
            ));
        }
        Ok(Self {
            entries: entries.into(),
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
                self.validate_map(&format!("{vpath}.routes[{j}]"), r.per_filter_config())?;
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
        for (i, e) in self.entries.iter().enumerate() {
            let (enabled, config) = match resolve(e, *matched) {
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
            ran.0 |= 1 << i;
            let view = RouteView {
                matched: *matched,
                config,
            };
            match e.filter.on_request(req, info, view).await {
                FilterStatus::Continue => {}
                FilterStatus::Reroute => {
                    *matched = table.find_request(req);
                    info.route = matched.map(|(_, r)| r.stat_name());
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
        }
        Ok(())
    }

    /// The response phase over the filters whose request phase ran, in
    /// reverse order.
    pub fn on_response(&self, ran: Ran, resp: &mut Response, info: &mut StreamInfo) {
        for (i, e) in self.entries.iter().enumerate().rev() {
            if ran.0 & (1 << i) != 0 {
                e.filter.on_response(resp, info);
            }
        }
    }

    /// The completion hook, once the response head is final.
    pub fn on_complete(&self, ran: Ran, info: &StreamInfo, status: u16) {
        for (i, e) in self.entries.iter().enumerate() {
            if ran.0 & (1 << i) != 0 {
                e.filter.on_complete(info, status);
            }
        }
    }
}

/// Whether a filter runs for this route, and its per-route config: the
/// route's entry wins over the virtual host's, either overriding the
/// chain's `disabled`.
fn resolve<'a>(
    e: &ChainEntry,
    matched: Option<(&'a VirtualHost, &'a Route)>,
) -> Result<(bool, Option<&'a ParsedConfig>), &'a BuildError> {
    let entry = matched.and_then(|(vh, r)| {
        r.per_filter_config()
            .and_then(|m| m.get(e.name))
            .or_else(|| vh.per_filter_config().and_then(|m| m.get(e.name)))
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
        fn on_response(&self, _resp: &mut Response, _info: &mut StreamInfo) {
            self.log.lock().unwrap().push(format!("resp {}", self.name));
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
        chain.on_response(ran, &mut resp, &mut info);
        chain.on_complete(ran, &info, 200);
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
