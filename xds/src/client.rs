//! The ADS client: one state-of-the-world `StreamAggregatedResources`
//! stream to the xDS server of the bootstrap, carrying CDS, EDS, LDS and
//! RDS. Every response is translated, merged with what was accepted before
//! and handed to the server as one dynamic config; the server's verdict
//! decides the ACK or the NACK. Subscriptions follow the resources in use
//! (RDS names from listeners, EDS names from clusters), EDS clusters and
//! RDS listeners warm (they are served once their endpoints and routes are
//! known, or with what they have once their `initial_fetch_timeout` is
//! over: an EDS cluster with no endpoints, a cluster a listener's tcp_proxy
//! needs as a stand-in with none; a TLS listener waits for its SDS secret
//! without bound; a cluster CDS removes while a listener names it is gone
//! at once, as in Envoy: its routes answer "cluster not found" and
//! tcp_proxy closes new connections), the last NACK per type shows in `/config_dump`
//! (`Refusals`), and a broken stream is re-opened with jittered
//! back-off while the last good config keeps serving. Resources are shared
//! (`Arc`) from the accepted state to the served config, and only what a
//! response changed is composed again: a route update costs the route, not
//! the clusters.

use crate::error::XdsError;
use crate::tls::{SECRET, Secret};
use crate::translate::{self, CLUSTER, ENDPOINT, LISTENER, ROUTE, TranslateError};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf;
use envoy_types::pb::google::rpc::Status;
use meshgate_core::config::{
    AdsApiType, AdsConfig, ClusterConfig, ClusterList, Config, ConfigSource, ListenerConfig,
    NodeConfig, UpstreamTlsConfig,
};
use meshgate_core::dynamic::{
    DynamicInfo, DynamicSender, DynamicUpdate, Refusal, Refusals, Warming,
};
use meshgate_core::router::RouteConfig;
use meshgate_core::tls::UpstreamTls;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Largest DiscoveryResponse accepted (a bigger one fails the stream,
/// which is re-opened with back-off).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What the client needs from the bootstrap config.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node: NodeConfig,
    pub ads: AdsConfig,
    /// The ADS cluster's endpoints (`host:port`), tried in turn.
    pub servers: Vec<String>,
    pub connect_timeout: Duration,
    /// Names of the static clusters (dynamic listeners may use them).
    pub static_clusters: BTreeSet<String>,
    /// TLS to the ADS server: the ADS cluster's `tls`, file paths resolved.
    pub tls: Option<UpstreamTlsConfig>,
    /// How long a listener warms for a cluster its tcp_proxy or validating
    /// routes name (`cds_config.initial_fetch_timeout`; `None`: no bound).
    pub cds_fetch_timeout: Option<Duration>,
}

impl Bootstrap {
    /// The bootstrap of a config that asks for xDS (validated by core).
    /// `source` resolves the TLS file paths of the ADS cluster.
    pub fn from_config(c: &Config, source: &ConfigSource) -> Option<Self> {
        let d = c.dynamic_resources.as_ref()?;
        let node = c.node.clone()?;
        let cl = c.clusters.iter().find(|x| x.name == d.ads.cluster)?;
        Some(Self {
            node,
            ads: d.ads.clone(),
            servers: cl.endpoints.iter().map(|e| e.address.clone()).collect(),
            connect_timeout: cl.connect_timeout,
            static_clusters: c.clusters.iter().map(|x| x.name.clone()).collect(),
            cds_fetch_timeout: translate::fetch_bound(
                d.cds_config.as_ref().and_then(|c| c.initial_fetch_timeout),
            ),
            tls: cl.tls.as_ref().map(|t| {
                let mut t = t.resolved(source);
                // gRPC is HTTP/2: say so in ALPN unless told otherwise.
                if t.alpn_protocols.is_empty() {
                    t.alpn_protocols = vec!["h2".into()];
                }
                t
            }),
        })
    }
}

/// Accepted resources of one type by name, shared between states: a
/// persistent map (`imbl`), so a copy is O(1), a change copies only the
/// nodes on its path, and `diff` skips what two states share.
type Shared<T> = imbl::OrdMap<String, Arc<T>>;

/// Accepted resources of every type, and the protocol state per type.
/// A response is tried on a copy of the state (`apply`); the resource maps
/// are shared between copies and copied on write, and so are the resources
/// in them, so a copy costs what the response changes, not what the state
/// holds.
#[derive(Default, Clone)]
struct State {
    clusters: Shared<translate::Cluster>,
    endpoints: Shared<crate::priority::Assignment>,
    routes: Shared<RouteConfig>,
    listeners: Shared<lds::Listener>,
    secrets: Shared<Secret>,
    /// The clusters last composed from `clusters`, `endpoints` and
    /// `secrets`.
    composed: Arc<ComposedClusters>,
    /// The listeners last translated, by name.
    translated: Arc<BTreeMap<String, Arc<TranslatedListener>>>,
    /// Last accepted version per type URL.
    versions: HashMap<&'static str, String>,
    /// Last nonce seen per type URL.
    nonces: HashMap<&'static str, String>,
    /// Delta xDS: the version of each resource held, per type URL (sent
    /// back as `initial_resource_versions` when a stream is re-opened).
    resource_versions: HashMap<&'static str, imbl::OrdMap<String, String>>,
    /// When each listener's current version arrived: its warming is
    /// bounded from then by its `initial_fetch_timeout`.
    since: imbl::OrdMap<String, Instant>,
    /// When each cluster's current version arrived: an EDS cluster's wait
    /// for its endpoints is bounded from then by its `eds_config`'s
    /// `initial_fetch_timeout`.
    cluster_since: imbl::OrdMap<String, Instant>,
    /// Bound of a listener's wait for a cluster it cannot serve without
    /// (`Bootstrap::cds_fetch_timeout`; `None`: no bound).
    cds_fetch_timeout: Option<Duration>,
    /// The clusters last composed as `not_found` stand-ins because CDS
    /// removed them while a listener cannot do without them.
    removed: BTreeSet<String>,
    /// The served cluster list last made from `composed`, patched by the
    /// next composition instead of made again (`cluster_list`).
    list: Option<ClusterListCache>,
}

/// The dynamic clusters to serve, in name order, as last made from the
/// composed clusters numbered `composed` with the RPC protocols `rpc`
/// (stand-ins of removed clusters not included).
#[derive(Clone)]
struct ClusterListCache {
    composed: u64,
    rpc: BTreeMap<String, &'static str>,
    list: ClusterList,
}

/// Numbers each `ComposedClusters` made (0: none yet).
static COMPOSED_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The dynamic clusters as composed from CDS, EDS and SDS, and the maps
/// they were composed from: while those are the same (a route or listener
/// update), so are the clusters, which are then neither composed again nor
/// copied.
#[derive(Default)]
struct ComposedClusters {
    from: (
        Shared<translate::Cluster>,
        Shared<crate::priority::Assignment>,
        Shared<Secret>,
    ),
    by_name: imbl::OrdMap<String, ComposedCluster>,
    /// When the first warming EDS cluster's `initial_fetch_timeout` ends.
    deadline: Option<Instant>,
    /// The EDS and SDS names the clusters use, each with how many use it.
    eds: imbl::OrdMap<String, usize>,
    sds: imbl::OrdMap<String, usize>,
    /// The clusters warming or served past their EDS fetch timeout.
    unready: imbl::OrdSet<String>,
    /// This composition's number (`COMPOSED_ID`).
    id: u64,
    /// When composed from the previous composition by visiting only the
    /// clusters CDS changed: its number and those clusters' names.
    patched: Option<(u64, Vec<String>)>,
}

impl ComposedClusters {
    /// The EDS names the clusters use.
    fn eds_names(&self) -> BTreeSet<String> {
        self.eds.keys().cloned().collect()
    }

    /// Counts `c`'s EDS and SDS names in (`up`) or out.
    fn count(&mut self, c: &translate::Cluster, up: bool) {
        fn count(m: &mut imbl::OrdMap<String, usize>, k: &str, up: bool) {
            let n = m.get(k).copied().unwrap_or(0);
            match if up { n + 1 } else { n.saturating_sub(1) } {
                0 => {
                    m.remove(k);
                }
                n => {
                    m.insert(k.to_string(), n);
                }
            }
        }
        if let Some(e) = &c.eds_name {
            count(&mut self.eds, e, up);
        }
        for n in &c.sds_names {
            count(&mut self.sds, n, up);
        }
    }
}

/// One cluster as composed, and the resources it was composed from.
#[derive(Clone)]
struct ComposedCluster {
    cluster: Arc<translate::Cluster>,
    /// Its ClusterLoadAssignment (EDS), if it has one and it arrived.
    endpoints: Option<Arc<crate::priority::Assignment>>,
    /// Its TLS secrets (SDS), in `cluster.sds_names` order.
    secrets: Vec<Option<Arc<Secret>>>,
    /// What to serve: the composed config, or while the cluster warms
    /// (waits for its endpoints or secrets) the served one, if any.
    serve: Option<Arc<ClusterConfig>>,
    warming: bool,
    /// Served with no endpoints: its first ClusterLoadAssignment did not
    /// come within its `initial_fetch_timeout`.
    fetch_timed_out: bool,
}

/// A listener as translated, and the resources it was translated from.
struct TranslatedListener {
    raw: Arc<lds::Listener>,
    /// Its route configurations (RDS), in `rds_names` order.
    routes: Vec<Option<Arc<RouteConfig>>>,
    /// Its TLS secrets (SDS), in `sds_names` order.
    secrets: Vec<Option<Arc<Secret>>>,
    config: Arc<ListenerConfig>,
    rds_names: BTreeSet<String>,
    sds_names: BTreeSet<String>,
    /// The clusters its filters name.
    clusters: BTreeSet<String>,
    /// Those it cannot be served without (`tcp_proxy`, route
    /// configurations that validate their clusters); the others' routes
    /// answer "cluster not found" while the cluster is not there.
    required: BTreeSet<String>,
    /// Bound of its warming (`None`: none).
    initial_fetch_timeout: Option<Duration>,
    /// Bound of its wait for each SDS secret (`None`: none).
    sds_fetch: BTreeMap<String, Option<Duration>>,
}

/// What composing the accepted resources gives.
struct Composed {
    config: Config,
    clusters: Arc<ComposedClusters>,
    rds: BTreeSet<String>,
    sds: BTreeSet<String>,
    /// What warms and why, for `/config_dump`.
    warming: Vec<Warming>,
    /// When the first warming listener's `initial_fetch_timeout` ends: it
    /// is composed again then, and served with what it has.
    deadline: Option<Instant>,
}

/// The stand-in of a cluster a listener names that is not there: no
/// endpoints, `not_found` (routes answer their
/// `cluster_not_found_response_code`, tcp_proxy closes the connection).
fn not_found_stand_in(name: &str) -> Result<Arc<ClusterConfig>, XdsError> {
    let mut c: ClusterConfig = serde_json::from_value(
        serde_json::json!({"name": name, "endpoints": []}),
    )
    .map_err(|source| XdsError::StandIn {
        name: name.to_string(),
        source,
    })?;
    c.not_found = true;
    Ok(Arc::new(c))
}

/// Whether two looked-up resources are the same: both absent, the same
/// allocation, or equal.
fn same_resource<T: PartialEq>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// Whether two looked-up resources are both absent or the same allocation.
fn same_allocation<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn type_key(url: &str) -> Option<&'static str> {
    [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET]
        .into_iter()
        .find(|t| *t == url)
}

fn short(t: &str) -> &'static str {
    match t {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        SECRET => "sds",
        _ => "other",
    }
}

impl State {
    /// Composes the dynamic config from the accepted resources; an error
    /// (a secret of the wrong kind) is the NACK's detail. Only what changed
    /// since the last composition is composed again: clusters after a CDS,
    /// EDS or SDS change, each only if its own resources changed, and
    /// listeners whose resource, routes or secrets changed; the rest is
    /// shared with the last composition.
    fn compose(
        &mut self,
        statics: &BTreeSet<String>,
        served: &Config,
        now: Instant,
    ) -> Result<Composed, XdsError> {
        self.compose_clusters(served, now)?;
        self.translate_listeners()?;
        let clusters = self.composed.clone();
        let known = |n: &str| {
            statics.contains(n) || clusters.by_name.get(n).is_some_and(|c| c.serve.is_some())
        };
        let mut listeners = Vec::with_capacity(self.translated.len());
        let mut rds = BTreeSet::new();
        let mut sds: BTreeSet<String> = clusters.sds.keys().cloned().collect();
        let mut warming = Vec::new();
        let mut deadline: Option<Instant> = clusters.deadline;
        // Clusters a served listener cannot do without that CDS did not
        // send within its initial fetch: served as stand-ins (no
        // endpoints) until CDS sends them, as Envoy serves such a listener.
        let mut stand_ins = BTreeSet::new();
        // Before the first CDS response every cluster may still come.
        let cds_known = self.versions.contains_key(CLUSTER);
        // Clusters served before (as themselves or as stand-ins) that CDS
        // no longer has while a listener cannot do without them (tcp_proxy,
        // validating routes, RPC routes): `not_found` stand-ins, so their
        // routes answer `cluster_not_found_response_code` and tcp_proxy
        // closes new connections, while the rest of the listener serves
        // and what runs on the removed cluster finishes (it holds its
        // `Arc`). Routes that do not validate (RDS) need none: their
        // table answers an unknown name so. CDS adding it again serves it.
        let was_served = |n: &str| {
            served
                .clusters
                .iter()
                .find(|x| x.name == n)
                .is_some_and(|x| !x.not_found || self.removed.contains(n))
        };
        for (name, t) in self.translated.iter() {
            rds.extend(t.rds_names.iter().cloned());
            sds.extend(t.sds_names.iter().cloned());
            let since = self.since.get(name).copied().unwrap_or(now);
            // Whether a wait bounded by `b` is over; else when it ends.
            let mut next: Option<Instant> = None;
            let mut over = |b: Option<Duration>| match b.map(|d| since + d) {
                Some(e) if now >= e => true,
                Some(e) => {
                    next = Some(next.map_or(e, |n: Instant| n.min(e)));
                    false
                }
                None => false,
            };
            let mut waiting = Vec::new();
            // Something it waits for whose initial fetch is not over.
            let mut blocked = false;
            let mut timed_out = false;
            for n in t.rds_names.iter().filter(|n| !self.routes.contains_key(*n)) {
                waiting.push(format!("RouteConfiguration '{n}'"));
                blocked |= !over(t.initial_fetch_timeout);
            }
            // A TLS listener cannot serve without its certificate. Envoy
            // would serve it past the secret's initial_fetch_timeout and
            // fail every handshake; meshgate keeps it warming instead
            // (nothing is accepted that cannot be served) and shows the
            // timeout in `/config_dump` (`initial_fetch_timeout_over`).
            for n in t
                .sds_names
                .iter()
                .filter(|n| !self.secrets.contains_key(*n))
            {
                waiting.push(format!("Secret '{n}'"));
                blocked = true;
                if over(t.sds_fetch.get(n).copied().flatten()) {
                    timed_out = true;
                }
            }
            let mut needs = Vec::new();
            for c in t.clusters.iter().filter(|c| !known(c)) {
                if t.required.contains(c) && was_served(c) {
                    // Removed by CDS: a `not_found` stand-in at once (see
                    // `removed` below), no wait.
                    continue;
                } else if t.required.contains(c) {
                    // tcp_proxy or a validating route: a stand-in past the
                    // CDS initial fetch.
                    if over(self.cds_fetch_timeout) {
                        needs.push(c.clone());
                    } else {
                        blocked = true;
                    }
                } else if cds_known && !clusters.by_name.contains_key(c) {
                    // Not in CDS: its routes answer "cluster not found"
                    // until it arrives, the rest of the listener serves.
                    continue;
                } else {
                    // In CDS and warming (endpoints, secrets), or CDS has
                    // not answered yet: worth the initial fetch's wait.
                    blocked |= !over(t.initial_fetch_timeout);
                }
                waiting.push(format!("Cluster '{c}'"));
            }
            if let Some(e) = next {
                deadline = Some(deadline.map_or(e, |d| d.min(e)));
            }
            if !blocked {
                if !waiting.is_empty() {
                    tracing::warn!(listener = %name, waiting_for = ?waiting, "initial_fetch_timeout over: listener served without them (missing routes: 404, missing clusters: cluster not found, tcp_proxy clusters: a stand-in with no endpoints)");
                }
                stand_ins.extend(needs);
                listeners.push(t.config.clone());
                continue;
            }
            if timed_out {
                tracing::warn!(listener = %name, waiting_for = ?waiting, "initial_fetch_timeout over for an SDS secret: the listener warms on until it comes");
            }
            // The served version goes on meanwhile.
            let old = served.listeners.iter().find(|l| l.name == *name);
            warming.push(Warming {
                resource: format!("Listener '{name}'"),
                waiting_for: waiting,
                previous_serves: old.is_some(),
                initial_fetch_timeout_over: timed_out,
            });
            if let Some(old) = old {
                listeners.push(old.clone());
            }
        }
        for (n, c) in clusters
            .unready
            .iter()
            .filter_map(|n| Some((n, clusters.by_name.get(n)?)))
        {
            let mut waiting_for = Vec::new();
            if c.fetch_timed_out || c.endpoints.is_none() && c.cluster.eds_name.is_some() {
                let e = c.cluster.eds_name.as_deref().unwrap_or(n);
                waiting_for.push(format!("ClusterLoadAssignment '{e}'"));
            }
            for (sn, sv) in c.cluster.sds_names.iter().zip(&c.secrets) {
                if sv.is_none() {
                    waiting_for.push(format!("Secret '{sn}'"));
                }
            }
            warming.push(Warming {
                resource: format!("Cluster '{n}'"),
                waiting_for,
                previous_serves: c.warming && c.serve.is_some(),
                initial_fetch_timeout_over: c.fetch_timed_out,
            });
        }
        let mut removed = BTreeSet::new();
        for l in &listeners {
            for c in translate::required_clusters_of(l) {
                if !known(&c) && !stand_ins.contains(&c) && was_served(&c) {
                    removed.insert(c);
                }
            }
        }
        let mut kept = BTreeMap::new();
        for c in removed.iter().cloned() {
            let old = served.clusters.iter().find(|x| x.name == c);
            match old {
                // Already a stand-in: the same `Arc`, nothing rebuilt.
                Some(old) if old.not_found => {
                    kept.insert(c, old.clone());
                }
                _ => {
                    tracing::warn!(cluster = %c, "cluster removed by CDS while a listener names it: its routes answer cluster not found and tcp_proxy closes new connections until CDS adds it again");
                    kept.insert(c.clone(), not_found_stand_in(&c)?);
                }
            }
        }
        for c in &stand_ins {
            if !served.clusters.iter().any(|x| x.name == *c) {
                tracing::warn!(cluster = %c, "initial_fetch_timeout over: a cluster CDS did not send is served as a stand-in with no endpoints until it comes");
                metrics::counter!(meshgate_core::metrics::names::XDS_INITIAL_FETCH_TIMEOUT_TOTAL, "type" => "cds")
                    .increment(1);
            }
            warming.push(Warming {
                resource: format!("Cluster '{c}'"),
                waiting_for: vec![format!("Cluster '{c}'")],
                previous_serves: false,
                initial_fetch_timeout_over: true,
            });
            let stand_in = match served.clusters.iter().find(|x| x.name == *c) {
                Some(old) if old.not_found => old.clone(),
                _ => not_found_stand_in(c)?,
            };
            kept.insert(c.clone(), stand_in);
        }
        self.removed = removed;
        // Clusters that RPC listeners (dubbo_proxy) route to speak that
        // RPC protocol, unless the cluster says otherwise.
        let rpc: BTreeMap<String, &'static str> = listeners
            .iter()
            .flat_map(|l| translate::rpc_clusters_of(l))
            .collect();
        let mut cluster_configs = self.cluster_list(&clusters, &rpc);
        // Stand-ins, in their place in name order.
        for (name, c) in kept {
            let i = match cluster_configs.binary_search_by(|x| x.name.as_str().cmp(&name)) {
                Ok(i) | Err(i) => i,
            };
            cluster_configs.insert(i, c);
        }
        Ok(Composed {
            config: Config {
                listeners,
                clusters: cluster_configs,
                ..Default::default()
            },
            clusters,
            rds,
            sds,
            warming,
            deadline,
        })
    }

    /// The clusters to serve, in name order, with the RPC protocol of the
    /// listeners that route to them (`rpc`). Patched from the list last
    /// made when `clusters` was composed from that list's composition by
    /// visiting only some clusters (a CDS-only change): a binary search
    /// and an O(log n) change of the persistent list per cluster visited,
    /// so one cluster's update among 10,000 neither walks nor copies the
    /// other 9,999. Made again from `clusters` otherwise.
    fn cluster_list(
        &mut self,
        clusters: &ComposedClusters,
        rpc: &BTreeMap<String, &'static str>,
    ) -> ClusterList {
        let serve = |c: &ComposedCluster| {
            let c = c.serve.clone()?;
            Some(match rpc.get(&c.name) {
                Some(codec) if c.protocol.is_none() => {
                    let mut c = (*c).clone();
                    c.protocol = Some((*codec).to_string());
                    Arc::new(c)
                }
                _ => c,
            })
        };
        let cached = self.list.take().filter(|l| l.rpc == *rpc);
        let list = match (cached, &clusters.patched) {
            (Some(l), _) if l.composed == clusters.id => l.list,
            (Some(l), Some((from, names))) if l.composed == *from => {
                let mut list = l.list;
                for name in names {
                    let now = clusters.by_name.get(name).and_then(serve);
                    match (list.binary_search_by(|x| x.name.as_str().cmp(name)), now) {
                        (Ok(i), Some(c)) => {
                            list.set(i, c);
                        }
                        (Ok(i), None) => {
                            list.remove(i);
                        }
                        (Err(i), Some(c)) => list.insert(i, c),
                        (Err(_), None) => {}
                    }
                }
                list
            }
            _ => clusters.by_name.values().filter_map(serve).collect(),
        };
        self.list = Some(ClusterListCache {
            composed: clusters.id,
            rpc: rpc.clone(),
            list: list.clone(),
        });
        list
    }

    /// Composes the clusters again if CDS, EDS or SDS changed since the
    /// last time, reusing each whose resources are the same. When only CDS
    /// changed (and no EDS fetch timeout ended), only the clusters it
    /// changed are visited (`diff` skips what the maps share), so one
    /// changed cluster among 10,000 costs what it costs among one.
    fn compose_clusters(&mut self, served: &Config, now: Instant) -> Result<(), XdsError> {
        let prev = self.composed.clone();
        let (clusters, endpoints, secrets) = &prev.from;
        let in_time = prev.deadline.is_none_or(|d| now < d);
        let same_eds_sds = endpoints.ptr_eq(&self.endpoints) && secrets.ptr_eq(&self.secrets);
        if clusters.ptr_eq(&self.clusters) && same_eds_sds && in_time {
            return Ok(());
        }
        let incremental = same_eds_sds && in_time;
        let mut out = ComposedClusters {
            from: (
                self.clusters.clone(),
                self.endpoints.clone(),
                self.secrets.clone(),
            ),
            id: COMPOSED_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        };
        let names: Vec<String> = if incremental {
            out.by_name = prev.by_name.clone();
            out.eds = prev.eds.clone();
            out.sds = prev.sds.clone();
            out.unready = prev.unready.clone();
            out.deadline = prev.deadline;
            clusters
                .diff(&self.clusters)
                .map(|d| match d {
                    imbl::ordmap::DiffItem::Add(k, _)
                    | imbl::ordmap::DiffItem::Remove(k, _)
                    | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.clone(),
                })
                .collect()
        } else {
            self.clusters.keys().cloned().collect()
        };
        if incremental {
            out.patched = Some((prev.id, names.clone()));
        }
        // The served clusters by name, looked up only for a cluster that
        // warms.
        let served_map = std::cell::OnceCell::new();
        let served_of = |name: &str| {
            served_map
                .get_or_init(|| {
                    served
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), c.clone()))
                        .collect::<HashMap<String, Arc<ClusterConfig>>>()
                })
                .get(name)
                .cloned()
        };
        for name in &names {
            if incremental && let Some(p) = out.by_name.remove(name) {
                out.count(&p.cluster, false);
                out.unready.remove(name);
            }
            let Some(c) = self.clusters.get(name) else {
                continue;
            };
            let endpoints = c.eds_name.as_ref().and_then(|e| self.endpoints.get(e));
            let secrets: Vec<_> = c.sds_names.iter().map(|n| self.secrets.get(n)).collect();
            // Envoy: an EDS cluster whose first ClusterLoadAssignment does
            // not come within its initial_fetch_timeout stops blocking and
            // is served with no endpoints (503 no_healthy_upstream) until
            // it comes.
            let fetch_ends = match (&c.eds_name, endpoints, c.eds_fetch_timeout) {
                (Some(_), None, Some(d)) => {
                    Some(self.cluster_since.get(name).copied().unwrap_or(now) + d)
                }
                _ => None,
            };
            let timed_out = fetch_ends.is_some_and(|e| now >= e);
            if let Some(e) = fetch_ends.filter(|e| now < *e) {
                out.deadline = Some(out.deadline.map_or(e, |d| d.min(e)));
            }
            let previous = prev.by_name.get(name).filter(|p| {
                p.fetch_timed_out == timed_out
                    && same_resource(Some(&p.cluster), Some(c))
                    && same_resource(p.endpoints.as_ref(), endpoints)
                    && p.secrets.len() == secrets.len()
                    && p.secrets
                        .iter()
                        .zip(&secrets)
                        .all(|(a, b)| same_resource(a.as_ref(), *b))
            });
            let (serve, warming) = match previous {
                // A warming cluster's stand-in is still the served one:
                // served changes only with what this composition gave.
                Some(p) => (p.serve.clone(), p.warming),
                None => {
                    let lookup = |n: &str| self.secrets.get(n).map(|s| (**s).clone());
                    let tls = c.with_tls(&lookup)?;
                    let ready = match (tls, &c.eds_name) {
                        (Some(cfg), None) => Some(cfg),
                        (Some(mut cfg), Some(_)) => match endpoints {
                            Some(eps) => {
                                cfg.endpoints = eps.endpoints.clone();
                                cfg.policy = eps.policy.clone();
                                Some(cfg)
                            }
                            None if timed_out => {
                                tracing::warn!(cluster = %name, "initial_fetch_timeout over: EDS cluster served with no endpoints until its ClusterLoadAssignment comes");
                                metrics::counter!(meshgate_core::metrics::names::XDS_INITIAL_FETCH_TIMEOUT_TOTAL, "type" => "eds").increment(1);
                                cfg.endpoints = Vec::new();
                                Some(cfg)
                            }
                            None => None,
                        },
                        (None, _) => None,
                    };
                    match ready {
                        Some(cfg) => (Some(Arc::new(cfg)), false),
                        None => (served_of(name), true),
                    }
                }
            };
            let composed = ComposedCluster {
                cluster: c.clone(),
                endpoints: endpoints.cloned(),
                secrets: secrets.iter().map(|s| s.cloned()).collect(),
                serve,
                warming,
                fetch_timed_out: timed_out,
            };
            out.count(c, true);
            if composed.warming || composed.fetch_timed_out {
                out.unready.insert(name.clone());
            }
            out.by_name.insert(name.clone(), composed);
        }
        self.composed = Arc::new(out);
        Ok(())
    }

    /// Translates the listeners whose resource, routes or secrets changed
    /// since they were last translated.
    fn translate_listeners(&mut self) -> Result<(), XdsError> {
        let mut out = BTreeMap::new();
        for (name, raw) in self.listeners.iter() {
            let unchanged = self.translated.get(name).filter(|t| {
                Arc::ptr_eq(&t.raw, raw)
                    && t.rds_names
                        .iter()
                        .zip(&t.routes)
                        .all(|(n, r)| same_allocation(self.routes.get(n), r.as_ref()))
                    && t.sds_names
                        .iter()
                        .zip(&t.secrets)
                        .all(|(n, s)| same_resource(self.secrets.get(n), s.as_ref()))
            });
            let t = match unchanged {
                Some(t) => t.clone(),
                None => {
                    let routes = |n: &str| self.routes.get(n).map(|r| (**r).clone());
                    let secrets = |n: &str| self.secrets.get(n).map(|s| (**s).clone());
                    let l = translate::listener((**raw).clone(), &routes, &secrets)?;
                    Arc::new(TranslatedListener {
                        raw: raw.clone(),
                        routes: l
                            .rds_names
                            .iter()
                            .map(|n| self.routes.get(n).cloned())
                            .collect(),
                        secrets: l
                            .sds_names
                            .iter()
                            .map(|n| self.secrets.get(n).cloned())
                            .collect(),
                        clusters: translate::clusters_of(&l.config),
                        required: translate::required_clusters_of(&l.config),
                        initial_fetch_timeout: l.initial_fetch_timeout,
                        sds_fetch: crate::tls::listener_sds_fetch_timeouts(raw),
                        config: Arc::new(l.config),
                        rds_names: l.rds_names,
                        sds_names: l.sds_names,
                    })
                }
            };
            out.insert(name.clone(), t);
        }
        self.translated = Arc::new(out);
        Ok(())
    }

    /// Applies a state-of-the-world response to a copy of the state; an
    /// error is the NACK's detail, naming the resource of the response's
    /// type at fault. `statics`: the file's cluster names, which CDS may
    /// not reuse.
    fn apply(
        &self,
        resp: &DiscoveryResponse,
        subscribed: &BTreeSet<String>,
        statics: &BTreeSet<String>,
        now: Instant,
    ) -> Result<State, XdsError> {
        let mut next = self.clone();
        let mut seen = Seen::default();
        let t = type_key(&resp.type_url)
            .ok_or_else(|| XdsError::UnsupportedType(resp.type_url.clone()))?;
        match t {
            // Listeners and clusters are wildcard: the response is the
            // whole set, what it leaves out is removed.
            // Unchanged clusters keep their `Arc` and their place in the
            // shared map, so composing visits only what changed.
            CLUSTER => {
                for (i, any) in resp.resources.iter().enumerate() {
                    let (name, c, start) = self.accept_cluster(any, i, &mut seen, statics, now)?;
                    if !next.clusters.get(&name).is_some_and(|o| Arc::ptr_eq(o, &c)) {
                        next.cluster_since.insert(name.clone(), start);
                        next.clusters.insert(name, c);
                    }
                }
                for name in self.clusters.keys().filter(|n| !seen.0.contains(*n)) {
                    next.clusters.remove(name);
                    next.cluster_since.remove(name);
                }
            }
            LISTENER => {
                let mut listeners = imbl::OrdMap::new();
                let mut since = imbl::OrdMap::new();
                for (i, any) in resp.resources.iter().enumerate() {
                    let (name, l, start) = self.accept_listener(any, i, &mut seen, now)?;
                    since.insert(name.clone(), start);
                    listeners.insert(name, l);
                }
                next.listeners = listeners;
                next.since = since;
            }
            _ => {
                for (i, any) in resp.resources.iter().enumerate() {
                    next.accept_named(t, any, i, &mut seen)?;
                }
                next.retain_subscribed(t, subscribed);
            }
        }
        // Accepted so far (the composition and the server may still
        // refuse): composing knows CDS has answered once it has a version.
        next.versions.insert(t, resp.version_info.clone());
        Ok(next)
    }

    /// Applies a delta (incremental) response to a copy of the state: its
    /// resources are added or replaced, its `removed_resources` removed,
    /// and nothing else is touched, so one changed cluster among 10,000
    /// is decoded and translated alone.
    fn apply_delta(
        &self,
        resp: &DeltaDiscoveryResponse,
        subscribed: &BTreeSet<String>,
        statics: &BTreeSet<String>,
        now: Instant,
    ) -> Result<State, XdsError> {
        let mut next = self.clone();
        let mut seen = Seen::default();
        let t = type_key(&resp.type_url)
            .ok_or_else(|| XdsError::UnsupportedType(resp.type_url.clone()))?;
        let mut versions = Vec::with_capacity(resp.resources.len());
        for (i, r) in resp.resources.iter().enumerate() {
            let Some(any) = &r.resource else {
                return Err(XdsError::DeltaResource {
                    index: i,
                    name: r.name.clone(),
                    message: "carries no resource (a TTL heartbeat is not supported)",
                });
            };
            let name = match t {
                CLUSTER => {
                    let (name, c, start) = self.accept_cluster(any, i, &mut seen, statics, now)?;
                    next.cluster_since.insert(name.clone(), start);
                    next.clusters.insert(name.clone(), c);
                    name
                }
                LISTENER => {
                    let (name, l, start) = self.accept_listener(any, i, &mut seen, now)?;
                    next.since.insert(name.clone(), start);
                    next.listeners.insert(name.clone(), l);
                    name
                }
                _ => next.accept_named(t, any, i, &mut seen)?,
            };
            if !r.name.is_empty() && r.name != name {
                return Err(XdsError::DeltaResource {
                    index: i,
                    name: r.name.clone(),
                    message: "the envelope's name is not the resource's name",
                });
            }
            versions.push((name, r.version.clone()));
        }
        for name in &resp.removed_resources {
            // A resource named in both lists is refused rather than
            // guessed at.
            if seen.0.contains(name) {
                return Err(XdsError::DeltaResource {
                    index: 0,
                    name: name.clone(),
                    message: "both updated and removed in one response",
                });
            }
            match t {
                CLUSTER => {
                    next.clusters.remove(name);
                    next.cluster_since.remove(name);
                }
                LISTENER => {
                    next.listeners.remove(name);
                    next.since.remove(name);
                }
                ROUTE => {
                    next.routes.remove(name);
                }
                ENDPOINT => {
                    next.endpoints.remove(name);
                }
                _ => {
                    next.secrets.remove(name);
                }
            }
        }
        if !matches!(t, CLUSTER | LISTENER) {
            next.retain_subscribed(t, subscribed);
        }
        let held = next.resource_versions.entry(t).or_default();
        for name in &resp.removed_resources {
            held.remove(name);
        }
        held.extend(versions);
        if !matches!(t, CLUSTER | LISTENER) {
            let gone: Vec<String> = held
                .keys()
                .filter(|n| !subscribed.contains(*n))
                .cloned()
                .collect();
            for n in gone {
                held.remove(&n);
            }
        }
        next.versions.insert(t, resp.system_version_info.clone());
        Ok(next)
    }

    /// Decodes and translates one cluster; a new version of a cluster
    /// warms from `now`, an unchanged one keeps its start.
    fn accept_cluster(
        &self,
        any: &protobuf::Any,
        i: usize,
        seen: &mut Seen,
        statics: &BTreeSet<String>,
        now: Instant,
    ) -> Result<(String, Arc<translate::Cluster>, Instant), XdsError> {
        let c: cds::Cluster = resource(any, CLUSTER, i, "Cluster", |c: &cds::Cluster| &c.name)?;
        seen.insert("Cluster", &c.name)?;
        if statics.contains(&c.name) {
            return Err(XdsError::StaticClusterName(c.name));
        }
        let name = c.name.clone();
        let t = translate::cluster(c)?;
        // An unchanged cluster keeps its `Arc` (and its warming start).
        match (self.clusters.get(&name), self.cluster_since.get(&name)) {
            (Some(old), Some(s)) if **old == t => Ok((name, old.clone(), *s)),
            _ => Ok((name, Arc::new(t), now)),
        }
    }

    /// Decodes one listener and refuses what is unsupported in it (it is
    /// translated again at compose time, with its routes then known); a
    /// new version warms from `now`, an unchanged one keeps its start.
    fn accept_listener(
        &self,
        any: &protobuf::Any,
        i: usize,
        seen: &mut Seen,
        now: Instant,
    ) -> Result<(String, Arc<lds::Listener>, Instant), XdsError> {
        let l: lds::Listener = resource(any, LISTENER, i, "Listener", |l: &lds::Listener| &l.name)?;
        seen.insert("Listener", &l.name)?;
        translate::listener(l.clone(), &|_| None, &|_| None)?;
        let start = match (self.listeners.get(&l.name), self.since.get(&l.name)) {
            (Some(old), Some(t)) if **old == l => *t,
            _ => now,
        };
        Ok((l.name.clone(), Arc::new(l), start))
    }

    /// Decodes, translates and stores one resource of a type subscribed
    /// by name (RDS, EDS, SDS); returns its name.
    fn accept_named(
        &mut self,
        t: &'static str,
        any: &protobuf::Any,
        i: usize,
        seen: &mut Seen,
    ) -> Result<String, XdsError> {
        match t {
            ROUTE => {
                let r: rds::RouteConfiguration = resource(
                    any,
                    ROUTE,
                    i,
                    "RouteConfiguration",
                    |r: &rds::RouteConfiguration| &r.name,
                )?;
                seen.insert("RouteConfiguration", &r.name)?;
                let name = r.name.clone();
                let t = translate::route_configuration(r)?;
                // Built now (regexes, rewrites, header names), so that
                // a bad one is refused as this RouteConfiguration's
                // fault, not as the listener's that would use it.
                check_routes(&t).map_err(|source| XdsError::Routes {
                    name: name.clone(),
                    source,
                })?;
                self.routes.insert(name.clone(), Arc::new(t));
                Ok(name)
            }
            ENDPOINT => {
                let c: eds::ClusterLoadAssignment = resource(
                    any,
                    ENDPOINT,
                    i,
                    "ClusterLoadAssignment",
                    |c: &eds::ClusterLoadAssignment| &c.cluster_name,
                )?;
                seen.insert("ClusterLoadAssignment", &c.cluster_name)?;
                let name = c.cluster_name.clone();
                let eps = crate::priority::assignment(c).map_err(|(f, m)| TranslateError {
                    resource: format!("ClusterLoadAssignment '{name}'"),
                    field: f,
                    message: m,
                })?;
                self.endpoints.insert(name.clone(), Arc::new(eps));
                Ok(name)
            }
            SECRET => {
                type S = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
                let r: S = resource(any, SECRET, i, "Secret", |r: &S| &r.name)?;
                seen.insert("Secret", &r.name)?;
                let name = r.name.clone();
                let t = crate::tls::secret(r)?;
                self.secrets.insert(name.clone(), Arc::new(t));
                Ok(name)
            }
            other => Err(XdsError::UnsupportedType(other.to_string())),
        }
    }

    /// Drops the resources of a by-name type that are no longer
    /// subscribed.
    fn retain_subscribed(&mut self, t: &'static str, subscribed: &BTreeSet<String>) {
        fn retain<T>(m: &mut Shared<T>, subscribed: &BTreeSet<String>) {
            let gone: Vec<String> = m
                .keys()
                .filter(|n| !subscribed.contains(*n))
                .cloned()
                .collect();
            for n in gone {
                m.remove(&n);
            }
        }
        match t {
            ROUTE => retain(&mut self.routes, subscribed),
            ENDPOINT => retain(&mut self.endpoints, subscribed),
            SECRET => retain(&mut self.secrets, subscribed),
            _ => {}
        }
    }
}

/// The names one response carried so far: Envoy refuses a response
/// naming a resource twice; so does meshgate rather than let the last one
/// win.
#[derive(Default)]
struct Seen(BTreeSet<String>);

impl Seen {
    fn insert(&mut self, kind: &str, name: &str) -> Result<(), XdsError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(XdsError::Duplicate {
                resource: format!("{kind} '{name}'"),
            })
        }
    }
}

/// Decodes resource `i` of a response, refusing fields its type does not
/// know by the resource's name (`name` reads it from the decoded message).
fn resource<M: prost::Message + Default + std::fmt::Debug + PartialEq>(
    any: &protobuf::Any,
    type_url: &str,
    i: usize,
    kind: &str,
    name: impl Fn(&M) -> &String,
) -> Result<M, XdsError> {
    let m: M = translate::decode_lax(any, type_url)
        .map_err(|source| XdsError::Decode { index: i, source })?;
    translate::unknown_fields(&m, &any.value).map_err(|source| XdsError::UnknownFields {
        resource: format!("{kind} '{}'", name(&m)),
        source,
    })?;
    Ok(m)
}

/// Builds a route configuration as the server will (every cluster taken
/// as not known yet, which `validate_clusters: false` allows), for its
/// errors.
fn check_routes(r: &RouteConfig) -> Result<(), meshgate_core::BuildError> {
    struct NoClusters;
    impl meshgate_core::cluster::ClusterResolver for NoClusters {
        fn resolve(
            &self,
            field: &str,
            name: &str,
        ) -> Result<Arc<meshgate_core::cluster::Cluster>, meshgate_core::BuildError> {
            Err(meshgate_core::BuildError::new(
                field,
                format!("unknown cluster '{name}'"),
            ))
        }
    }
    let mut r = r.clone();
    if r.validate_clusters.is_none() {
        r.validate_clusters = Some(false);
    }
    match r.validate_clusters {
        // A validating one names clusters the listener waits for.
        Some(true) => Ok(()),
        _ => meshgate_core::router::RouteTable::build(&r, &NoClusters).map(|_| ()),
    }
}

/// Runs the ADS client until `stop`: connects, serves the stream,
/// reconnects with jittered exponential back-off.
pub async fn run(boot: Bootstrap, tx: DynamicSender, stop: CancellationToken) {
    let tls = match &boot.tls {
        None => None,
        Some(t) => match UpstreamTls::new(t, &format!("clusters['{}'].tls", boot.ads.cluster)) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                // Core validated the same cluster at startup; only a file
                // changed since can fail here.
                tracing::error!(error = %e, "TLS to the ADS server cannot be set up; no xDS");
                return;
            }
        },
    };
    let mut client = Client {
        tls,
        refused: Refusals::default(),
        tx,
        state: State {
            cds_fetch_timeout: boot.cds_fetch_timeout,
            ..State::default()
        },
        served: Config::default(),
        subscribed: HashMap::new(),
        wake: None,
        boot,
    };
    if client.boot.servers.is_empty() {
        tracing::error!("the ADS cluster has no endpoints");
        return;
    }
    let mut failures: u32 = 0;
    let mut server_idx = 0usize;
    loop {
        let server = client.boot.servers[server_idx % client.boot.servers.len()].clone();
        server_idx += 1;
        let got_response = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.stream(&server) => r,
        };
        metrics::gauge!(meshgate_core::metrics::names::XDS_CONNECTED).set(0.0);
        if got_response {
            failures = 0;
        }
        let base = client.boot.ads.retry_base_interval.as_millis().max(1) as u64;
        let max = client.boot.ads.retry_max_interval.as_millis().max(1) as u64;
        let cap = base.saturating_mul(1u64 << failures.min(20)).min(max);
        // Full jitter over the upper half: spreads a fleet's reconnects.
        let delay = rand::rng().random_range(cap / 2..=cap);
        failures = failures.saturating_add(1);
        tracing::info!(
            delay_ms = delay,
            "ADS stream down; reconnecting after back-off (last good config keeps serving)"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
        }
    }
}

struct Client {
    boot: Bootstrap,
    tls: Option<Arc<UpstreamTls>>,
    tx: DynamicSender,
    state: State,
    /// The dynamic config last accepted by the server.
    served: Config,
    /// Resource names subscribed per type (RDS and EDS; LDS and CDS are
    /// wildcard).
    subscribed: HashMap<&'static str, BTreeSet<String>>,
    /// When a warming listener's `initial_fetch_timeout` ends.
    wake: Option<Instant>,
    /// The last NACK per type, shown in `/config_dump` (shared with every
    /// `DynamicInfo` sent).
    refused: Refusals,
}

fn node(n: &NodeConfig) -> core3::Node {
    core3::Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: if n.metadata.is_empty() {
            None
        } else {
            Some(protobuf::Struct {
                fields: n
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), json_value(v)))
                    .collect(),
            })
        },
        user_agent_name: "meshgate".into(),
        user_agent_version_type: Some(core3::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        locality: n.locality.as_ref().map(|l| core3::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        ..Default::default()
    }
}

fn json_value(v: &serde_json::Value) -> protobuf::Value {
    use protobuf::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(protobuf::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(protobuf::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    protobuf::Value { kind: Some(kind) }
}

/// The two variants of the ADS stream: the request sender and the
/// response stream.
enum Wire {
    Sotw(
        mpsc::Sender<DiscoveryRequest>,
        tonic::Streaming<DiscoveryResponse>,
    ),
    Delta(
        mpsc::Sender<DeltaDiscoveryRequest>,
        tonic::Streaming<DeltaDiscoveryResponse>,
    ),
}

impl Wire {
    async fn message(&mut self) -> Result<Option<Incoming>, tonic::Status> {
        match self {
            Self::Sotw(_, s) => s.message().await.map(|m| m.map(Incoming::Sotw)),
            Self::Delta(_, s) => s.message().await.map(|m| m.map(Incoming::Delta)),
        }
    }
}

/// Sends requests in order; false once the stream is gone.
async fn send_all<T>(tx: &mpsc::Sender<T>, reqs: Vec<T>) -> bool {
    for r in reqs {
        if tx.send(r).await.is_err() {
            return false;
        }
    }
    true
}

/// A response of either variant.
enum Incoming {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

impl Incoming {
    fn nonce(&self) -> &str {
        match self {
            Self::Sotw(r) => &r.nonce,
            Self::Delta(r) => &r.nonce,
        }
    }

    /// The version shown in `/config_dump`: state of the world's
    /// `version_info`, delta's `system_version_info`.
    fn version(&self) -> &str {
        match self {
            Self::Sotw(r) => &r.version_info,
            Self::Delta(r) => &r.system_version_info,
        }
    }
}

/// What handling a response decided.
struct Verdict {
    nonce: String,
    /// `None`: ACK; else the NACK's detail.
    nack: Option<String>,
    /// Subscriptions that changed: type, names before, names now.
    changed: Vec<(&'static str, BTreeSet<String>, BTreeSet<String>)>,
}

fn unsupported_type(type_url: &str) -> Status {
    Status {
        code: 3,
        message: format!("resource type '{type_url}' is not supported"),
        details: Vec::new(),
    }
}

impl Client {
    fn request(&self, type_url: &'static str, nack: Option<(String, String)>) -> DiscoveryRequest {
        let (version_info, response_nonce, error_detail) = match nack {
            None => (
                self.state
                    .versions
                    .get(type_url)
                    .cloned()
                    .unwrap_or_default(),
                self.state.nonces.get(type_url).cloned().unwrap_or_default(),
                None,
            ),
            Some((nonce, msg)) => (
                self.state
                    .versions
                    .get(type_url)
                    .cloned()
                    .unwrap_or_default(),
                nonce,
                Some(Status {
                    // INVALID_ARGUMENT
                    code: 3,
                    message: msg,
                    details: Vec::new(),
                }),
            ),
        };
        DiscoveryRequest {
            version_info,
            node: Some(node(&self.boot.node)),
            resource_names: self
                .subscribed
                .get(type_url)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            type_url: type_url.to_string(),
            response_nonce,
            error_detail,
            ..Default::default()
        }
    }

    /// A gRPC channel to one ADS server (TLS when the bootstrap says so).
    async fn channel(&self, server: &str) -> Option<tonic::transport::Channel> {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{server}")) {
            Ok(e) => e
                .connect_timeout(self.boot.connect_timeout)
                .tcp_nodelay(true),
            Err(e) => {
                tracing::error!(server, error = %e, "invalid ADS server address");
                return None;
            }
        };
        let channel = match &self.tls {
            None => endpoint.connect().await,
            Some(tls) => {
                let (tls, server, timeout) =
                    (tls.clone(), server.to_string(), self.boot.connect_timeout);
                endpoint
                    .connect_with_connector(tower::service_fn(
                        move |_: tonic::codegen::http::Uri| {
                            let (tls, server) = (tls.clone(), server.clone());
                            async move {
                                tokio::time::timeout(timeout, tls_connect(&tls, &server))
                                    .await
                                    .unwrap_or_else(|_| {
                                        Err(std::io::Error::new(
                                            std::io::ErrorKind::TimedOut,
                                            "connect timeout",
                                        ))
                                    })
                            }
                        },
                    ))
                    .await
            }
        };
        match channel {
            Ok(c) => Some(c),
            Err(e) => {
                metrics::counter!(meshgate_core::metrics::names::XDS_STREAM_TOTAL, "result" => "connect_error")
                    .increment(1);
                tracing::warn!(server, error = %e, "cannot connect to the ADS server");
                None
            }
        }
    }

    /// The types asked for when a stream opens: listeners and clusters
    /// (wildcard), and every by-name type with a subscription.
    fn opening_types(&self) -> Vec<&'static str> {
        [CLUSTER, LISTENER, ENDPOINT, ROUTE, SECRET]
            .into_iter()
            .filter(|t| {
                matches!(*t, CLUSTER | LISTENER)
                    || self.subscribed.get(t).is_some_and(|s| !s.is_empty())
            })
            .collect()
    }

    /// One stream's life; returns whether any response arrived.
    async fn stream(&mut self, server: &str) -> bool {
        let Some(channel) = self.channel(server).await else {
            return false;
        };
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        // A new stream has no nonce yet; the versions say what we have.
        self.state.nonces.clear();
        let opened = match self.boot.ads.api_type {
            AdsApiType::Grpc => {
                let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
                for t in self.opening_types() {
                    let _ = tx.send(self.request(t, None)).await;
                }
                grpc.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map(|r| Wire::Sotw(tx, r.into_inner()))
            }
            AdsApiType::DeltaGrpc => {
                let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
                for t in self.opening_types() {
                    let _ = tx.send(self.delta_opening(t)).await;
                }
                grpc.delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map(|r| Wire::Delta(tx, r.into_inner()))
            }
        };
        let mut wire = match opened {
            Ok(w) => w,
            Err(e) => {
                metrics::counter!(meshgate_core::metrics::names::XDS_STREAM_TOTAL, "result" => "rpc_error")
                    .increment(1);
                tracing::warn!(server, error = %e, "ADS stream refused");
                return false;
            }
        };
        metrics::counter!(meshgate_core::metrics::names::XDS_STREAM_TOTAL, "result" => "ok")
            .increment(1);
        metrics::gauge!(meshgate_core::metrics::names::XDS_CONNECTED).set(1.0);
        tracing::info!(server, node = %self.boot.node.id, api_type = ?self.boot.ads.api_type, "ADS stream open");
        let mut any = false;
        loop {
            let wake = self.wake.map(tokio::time::Instant::from_std);
            let next = tokio::select! {
                m = wire.message() => m,
                _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                    self.initial_fetch_timeout_over().await;
                    continue;
                }
            };
            let resp = match next {
                Ok(Some(r)) => r,
                Ok(None) => {
                    tracing::warn!(server, "ADS stream closed by the server");
                    return any;
                }
                Err(e) => {
                    tracing::warn!(server, error = %e, "ADS stream failed");
                    return any;
                }
            };
            any = true;
            let sent = match (&wire, resp) {
                (Wire::Sotw(tx, _), Incoming::Sotw(r)) => {
                    let tx = tx.clone();
                    send_all(&tx, self.on_response(r).await).await
                }
                (Wire::Delta(tx, _), Incoming::Delta(r)) => {
                    let tx = tx.clone();
                    send_all(&tx, self.on_delta_response(r).await).await
                }
                _ => false,
            };
            if !sent {
                return any;
            }
        }
    }

    /// The first delta request of a type on a new stream: listeners and
    /// clusters as a wildcard subscription (Envoy's legacy form, which
    /// every server takes: no names), the others by name; what is held
    /// already goes as `initial_resource_versions`, so that the server
    /// sends only what changed meanwhile.
    fn delta_opening(&self, t: &'static str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(node(&self.boot.node)),
            type_url: t.to_string(),
            resource_names_subscribe: match t {
                CLUSTER | LISTENER => Vec::new(),
                _ => self
                    .subscribed
                    .get(t)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default(),
            },
            initial_resource_versions: self
                .state
                .resource_versions
                .get(t)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Handles one state-of-the-world response: the ACK or NACK, then any
    /// subscription change (each a full list of names).
    async fn on_response(&mut self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let Some(t) = type_key(&resp.type_url) else {
            metrics::counter!(meshgate_core::metrics::names::XDS_RESPONSE_TOTAL, "type" => "other", "result" => "nack")
                .increment(1);
            let mut r = self.request(LISTENER, None);
            r.type_url = resp.type_url.clone();
            r.version_info.clear();
            r.resource_names.clear();
            r.response_nonce = resp.nonce.clone();
            r.error_detail = Some(unsupported_type(&resp.type_url));
            return vec![r];
        };
        let v = self.handle(t, Incoming::Sotw(resp)).await;
        let mut out = vec![self.request(t, v.nack.map(|e| (v.nonce, e)))];
        for (ty, _, _) in v.changed {
            out.push(self.request(ty, None));
        }
        out
    }

    /// Handles one delta response: the ACK or NACK (the nonce, and the
    /// error), then any subscription change (names added and removed).
    async fn on_delta_response(
        &mut self,
        resp: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(t) = type_key(&resp.type_url) else {
            metrics::counter!(meshgate_core::metrics::names::XDS_RESPONSE_TOTAL, "type" => "other", "result" => "nack")
                .increment(1);
            return vec![DeltaDiscoveryRequest {
                node: Some(node(&self.boot.node)),
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail: Some(unsupported_type(&resp.type_url)),
                ..Default::default()
            }];
        };
        let v = self.handle(t, Incoming::Delta(resp)).await;
        let mut out = vec![DeltaDiscoveryRequest {
            node: Some(node(&self.boot.node)),
            type_url: t.to_string(),
            response_nonce: v.nonce,
            error_detail: v.nack.map(|message| Status {
                // INVALID_ARGUMENT
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }];
        for (ty, before, now) in v.changed {
            out.push(DeltaDiscoveryRequest {
                node: Some(node(&self.boot.node)),
                type_url: ty.to_string(),
                resource_names_subscribe: now.difference(&before).cloned().collect(),
                resource_names_unsubscribe: before.difference(&now).cloned().collect(),
                ..Default::default()
            });
        }
        out
    }

    /// Applies a response of either variant, hands the result to the
    /// server, and says whether it was taken (ACK) or refused (NACK) and
    /// which subscriptions changed.
    async fn handle(&mut self, t: &'static str, resp: Incoming) -> Verdict {
        let subscribed = self.subscribed.get(t).cloned().unwrap_or_default();
        let (nonce, version) = (resp.nonce().to_string(), resp.version().to_string());
        // Translation and composition are CPU work proportional to the
        // resources (regexes, 10,000 routes): off the worker threads.
        let (state, statics, served) = (
            self.state.clone(),
            self.boot.static_clusters.clone(),
            self.served.clone(),
        );
        let now = Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            match &resp {
                Incoming::Sotw(r) => state.apply(r, &subscribed, &statics, now),
                Incoming::Delta(r) => state.apply_delta(r, &subscribed, &statics, now),
            }
            .and_then(|mut next| next.compose(&statics, &served, now).map(|c| (next, c)))
        });
        let applied = match job.await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "xDS translation failed");
                Err(XdsError::ShuttingDown)
            }
        };
        let verdict = match applied {
            Err(e) => Err(e),
            Ok((next, composed)) => {
                let unready = &composed.clusters.unready;
                for c in unready
                    .iter()
                    .filter(|c| composed.clusters.by_name.get(*c).is_some_and(|c| c.warming))
                {
                    tracing::debug!(cluster = %c, "cluster warming: waiting for its endpoints");
                }
                for w in &composed.warming {
                    tracing::debug!(resource = %w.resource, waiting_for = ?w.waiting_for, "warming");
                }
                // Pushed even when the config is the same: the new
                // version is then what `/config_dump` and
                // `meshgate_config_version` show (unchanged resources are
                // the same `Arc`s, the build reuses them).
                let result = self
                    .push(
                        composed.config.clone(),
                        &next,
                        Some((t, &version)),
                        composed.warming,
                    )
                    .await;
                match result {
                    Ok(()) => {
                        self.state = next;
                        self.served = composed.config;
                        self.wake = composed.deadline;
                        Ok((composed.rds, composed.clusters, composed.sds))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        self.state.nonces.insert(t, nonce.clone());
        let mut v = Verdict {
            nonce,
            nack: None,
            changed: Vec::new(),
        };
        match verdict {
            Ok((rds, clusters, sds)) => {
                self.state.versions.insert(t, version.clone());
                self.refused.clear(short(t));
                metrics::counter!(meshgate_core::metrics::names::XDS_RESPONSE_TOTAL, "type" => short(t), "result" => "ack").increment(1);
                tracing::info!(type_url = t, version = %version, nonce = %v.nonce, "ACK");
                let eds = clusters.eds_names();
                for (ty, names) in [(ROUTE, &rds), (ENDPOINT, &eds), (SECRET, &sds)] {
                    let before = self.subscribed.get(ty).cloned().unwrap_or_default();
                    if before != *names {
                        tracing::info!(type_url = ty, names = ?names, "subscription changed");
                        self.subscribed.insert(ty, names.clone());
                        v.changed.push((ty, before, names.clone()));
                    }
                }
            }
            Err(e) => {
                metrics::counter!(meshgate_core::metrics::names::XDS_RESPONSE_TOTAL, "type" => short(t), "result" => "nack").increment(1);
                tracing::warn!(type_url = t, version = %version, nonce = %v.nonce, kind = e.kind(), error = %e, "NACK: update refused, the previous config keeps serving");
                let e = e.to_string();
                self.refused.set(
                    short(t),
                    Refusal {
                        version,
                        error: e.clone(),
                    },
                );
                v.nack = Some(e);
            }
        }
        v
    }

    /// A warming listener's `initial_fetch_timeout` is over: composed
    /// again, it is served with what it has.
    async fn initial_fetch_timeout_over(&mut self) {
        self.wake = None;
        let (mut state, statics, served) = (
            self.state.clone(),
            self.boot.static_clusters.clone(),
            self.served.clone(),
        );
        let job = tokio::task::spawn_blocking(move || {
            let r = state.compose(&statics, &served, Instant::now());
            (state, r)
        });
        let Ok((next, Ok(composed))) = job.await else {
            return;
        };
        match self
            .push(composed.config.clone(), &next, None, composed.warming)
            .await
        {
            Ok(()) => {
                self.state = next;
                self.served = composed.config;
                self.wake = composed.deadline;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a listener past its initial_fetch_timeout was refused; it warms on");
            }
        }
    }

    /// Hands a composed dynamic config to the server and waits for its
    /// verdict.
    async fn push(
        &self,
        config: Config,
        next: &State,
        update: Option<(&'static str, &str)>,
        warming: Vec<Warming>,
    ) -> Result<(), XdsError> {
        let mut words = Vec::new();
        for ty in [LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET] {
            let v = match update {
                Some((t, version)) if t == ty => Some(version.to_string()),
                _ => next.versions.get(ty).cloned(),
            };
            if let Some(v) = v {
                words.push(format!("{}={v}", short(ty)));
            }
        }
        let (reply, rx) = oneshot::channel();
        let update = DynamicUpdate {
            config,
            info: DynamicInfo {
                version: words.join(" "),
                source: format!("xds:ads {}", self.boot.servers.join(",")),
                warming,
                refused: self.refused.clone(),
            },
            reply,
        };
        if self.tx.send(update).await.is_err() {
            return Err(XdsError::ShuttingDown);
        }
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(XdsError::Server(e)),
            Err(_) => Err(XdsError::ShuttingDown),
        }
    }
}

/// TCP then TLS to an ADS server (`host:port`); the SNI is the cluster's
/// `sni`, else the host.
async fn tls_connect(
    tls: &UpstreamTls,
    server: &str,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    let addr = tokio::net::lookup_host(server)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("'{server}' resolves to no address")))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let s = tls.connect(tcp, Some(server), addr).await.inspect_err(|e| {
        metrics::counter!(meshgate_core::metrics::names::XDS_TLS_HANDSHAKE_ERROR_TOTAL, "reason" => meshgate_core::tls::handshake_error_reason(e)).increment(1);
    })?;
    Ok(hyper_util::rt::TokioIo::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn resp(type_url: &str, resources: Vec<protobuf::Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "1".into(),
            type_url: type_url.into(),
            nonce: "n".into(),
            resources,
            ..Default::default()
        }
    }

    #[test]
    fn hostile_responses_are_refused_not_panicked_on() {
        let s = State::default();
        let none = BTreeSet::new();
        let garbage = protobuf::Any {
            type_url: CLUSTER.into(),
            value: vec![0xff, 0xff, 0xff, 0x0f, 0x08],
        };
        let e = s
            .apply(&resp(CLUSTER, vec![garbage]), &none, &none, Instant::now())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "decode");
        assert!(
            e.to_string().starts_with("resources[0]: cannot decode"),
            "{e}"
        );
        let wrong = protobuf::Any {
            type_url: ROUTE.into(),
            value: Vec::new(),
        };
        let e = s
            .apply(&resp(LISTENER, vec![wrong]), &none, &none, Instant::now())
            .err()
            .unwrap();
        assert_eq!(e.kind(), "decode");
        assert!(e.to_string().contains("type_url"), "{e}");
        let c = cds::Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let a = protobuf::Any {
            type_url: CLUSTER.into(),
            value: c.encode_to_vec(),
        };
        let e = s
            .apply(
                &resp(CLUSTER, vec![a.clone(), a]),
                &none,
                &none,
                Instant::now(),
            )
            .err()
            .unwrap();
        assert_eq!(e.kind(), "duplicate");
        assert!(e.to_string().contains("Cluster 'a': appears twice"), "{e}");
        let e = s
            .apply(
                &resp("type.googleapis.com/x.Y", vec![]),
                &none,
                &none,
                Instant::now(),
            )
            .err()
            .unwrap();
        assert_eq!(e.kind(), "unsupported_type");
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn eds_clusters_warm_until_their_endpoints_arrive() {
        let mut s = State::default();
        let boot_statics = BTreeSet::new();
        let c: translate::Cluster = translate::Cluster {
            config: serde_json::from_value(serde_json::json!({"name": "a", "endpoints": []}))
                .unwrap(),
            eds_name: Some("a".into()),
            transport_socket: None,
            sds_names: BTreeSet::new(),
            transport_socket_matches: Vec::new(),
            eds_fetch_timeout: None,
        };
        s.clusters.insert("a".into(), Arc::new(c));
        let out = s
            .compose(&boot_statics, &Config::default(), Instant::now())
            .unwrap();
        assert!(out.clusters.by_name["a"].warming);
        assert!(out.config.clusters.is_empty());
        assert_eq!(out.clusters.eds_names().iter().collect::<Vec<_>>(), ["a"]);
        s.endpoints.insert("a".into(), Default::default());
        let out = s
            .compose(&boot_statics, &Config::default(), Instant::now())
            .unwrap();
        assert!(!out.clusters.by_name["a"].warming);
        assert_eq!(out.config.clusters.len(), 1);
    }

    // ------------------------------------------------ incremental compose

    // Resources as the end-to-end tests serve them, on 127.0.0.1.
    fn at(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn static_cluster(name: &str, port: u16) -> protobuf::Any {
        crate::fixtures::static_cluster(name, at(port)).1
    }

    fn eds_cluster(name: &str) -> protobuf::Any {
        crate::fixtures::eds_cluster(name).1
    }

    fn endpoints(name: &str, port: u16) -> protobuf::Any {
        crate::fixtures::cla(name, &[(at(port), 1, 0)]).1
    }

    fn route_config(name: &str, cluster: &str) -> protobuf::Any {
        crate::fixtures::route_config(name, &[(cluster, 1)]).1
    }

    fn hcm_listener(name: &str, port: u16, rds: &str) -> protobuf::Any {
        crate::fixtures::hcm_listener(name, port, rds).1
    }

    /// A client's state, served config and subscriptions, minus the stream.
    #[derive(Default)]
    struct Fake {
        state: State,
        served: Config,
        subscribed: HashMap<&'static str, BTreeSet<String>>,
    }

    impl Fake {
        /// Applies and composes a response as `on_response` does, the
        /// server accepting whatever it is handed.
        fn respond(&mut self, t: &'static str, resources: Vec<protobuf::Any>) -> Composed {
            let none = BTreeSet::new();
            let sub = self.subscribed.get(t).unwrap_or(&none);
            let mut next = self
                .state
                .apply(&resp(t, resources), sub, &none, Instant::now())
                .unwrap();
            let out = next
                .compose(&BTreeSet::new(), &self.served, Instant::now())
                .unwrap();
            self.state = next;
            self.served = out.config.clone();
            self.subscribed.insert(ROUTE, out.rds.clone());
            self.subscribed.insert(ENDPOINT, out.clusters.eds_names());
            out
        }

        fn cluster(&self, name: &str) -> Arc<ClusterConfig> {
            let c = self.served.clusters.iter().find(|c| c.name == name);
            c.unwrap().clone()
        }

        /// As `respond`, for a delta response.
        fn respond_delta(
            &mut self,
            t: &'static str,
            resources: Vec<protobuf::Any>,
            removed: &[&str],
        ) -> Composed {
            use envoy_types::pb::envoy::service::discovery::v3::Resource;
            let resp = DeltaDiscoveryResponse {
                system_version_info: "d".into(),
                type_url: t.into(),
                nonce: "n".into(),
                resources: resources
                    .into_iter()
                    .map(|any| Resource {
                        version: "v".into(),
                        resource: Some(any),
                        ..Default::default()
                    })
                    .collect(),
                removed_resources: removed.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            };
            let none = BTreeSet::new();
            let sub = self.subscribed.get(t).unwrap_or(&none);
            let mut next = self
                .state
                .apply_delta(&resp, sub, &none, Instant::now())
                .unwrap();
            let out = next
                .compose(&BTreeSet::new(), &self.served, Instant::now())
                .unwrap();
            self.state = next;
            self.served = out.config.clone();
            self.subscribed.insert(ROUTE, out.rds.clone());
            self.subscribed.insert(ENDPOINT, out.clusters.eds_names());
            out
        }
    }

    /// The served cluster list patched for what a delta update names is
    /// the list made again from every composed cluster: changes,
    /// additions (first, last, between) and removals, in name order.
    #[test]
    fn a_patched_cluster_list_is_the_list_made_again() {
        let mut f = Fake::default();
        let all: Vec<_> = (0..300)
            .map(|i| static_cluster(&format!("c{:04}", i * 2 + 1), 1))
            .collect();
        f.respond_delta(CLUSTER, all, &[]);
        let steps: Vec<(Vec<protobuf::Any>, Vec<&str>)> = vec![
            (vec![static_cluster("c0001", 2)], vec![]),
            (vec![static_cluster("c0000", 3)], vec![]),
            (vec![static_cluster("c9999", 3)], vec!["c0003"]),
            (
                vec![static_cluster("c0100", 4), static_cluster("c0101", 4)],
                vec!["c0001", "c0599"],
            ),
            (vec![], vec!["c0000", "c9999", "c0404"]),
            (
                vec![static_cluster("c0404", 6), static_cluster("c0003", 6)],
                vec![],
            ),
        ];
        for (i, (resources, removed)) in steps.into_iter().enumerate() {
            let id = f.state.composed.id;
            f.respond_delta(CLUSTER, resources, &removed);
            // Patched from the last list, not made again.
            let patched = f.state.composed.patched.as_ref().map(|p| p.0);
            assert_eq!(patched, Some(id), "step {i}");
            assert_eq!(
                f.state.list.as_ref().map(|l| l.composed),
                Some(f.state.composed.id)
            );
            let mut again = f.state.clone();
            again.list = None;
            let made = again.cluster_list(&f.state.composed, &BTreeMap::new());
            assert_eq!(made.len(), f.served.clusters.len(), "step {i}");
            for (a, b) in made.iter().zip(&f.served.clusters) {
                assert!(Arc::ptr_eq(a, b), "step {i}: {} vs {}", a.name, b.name);
            }
            let names: Vec<_> = f.served.clusters.iter().map(|c| c.name.clone()).collect();
            assert!(names.is_sorted(), "step {i}");
            for r in &removed {
                assert!(!names.iter().any(|n| n == r), "step {i}: {r}");
            }
        }
        assert_eq!(f.cluster("c0404").endpoints[0].address, "127.0.0.1:6");
        assert_eq!(f.served.clusters.len(), 300);
    }

    #[test]
    fn a_delta_update_composes_only_the_clusters_it_names() {
        let mut f = Fake::default();
        let all: Vec<_> = (0..1000)
            .map(|i| static_cluster(&format!("c{i:04}"), 1))
            .chain([eds_cluster("e")])
            .collect();
        f.respond_delta(CLUSTER, all, &[]);
        f.respond_delta(LISTENER, vec![hcm_listener("web", 8080, "r")], &[]);
        f.respond_delta(ENDPOINT, vec![endpoints("e", 3)], &[]);
        let out = f.respond_delta(ROUTE, vec![route_config("r", "c0001")], &[]);
        assert!(out.warming.is_empty());
        assert_eq!(out.config.clusters.len(), 1001);
        let before = f.served.clone();
        let composed = f.state.composed.clone();
        let web = f.served.listeners[0].clone();

        // One cluster changed, one removed: the others are the same
        // `Arc`s, composed entries included, and in the same order.
        let out = f.respond_delta(CLUSTER, vec![static_cluster("c0001", 2)], &["c0500"]);
        assert!(out.warming.is_empty());
        assert_eq!(out.config.clusters.len(), 1000);
        assert!(f.served.clusters.iter().all(|c| c.name != "c0500"));
        assert_eq!(f.cluster("c0001").endpoints[0].address, "127.0.0.1:2");
        let mut shared = 0;
        for c in &before.clusters {
            let Some(now) = f.served.clusters.iter().find(|x| x.name == c.name) else {
                continue;
            };
            if Arc::ptr_eq(c, now) {
                shared += 1;
            } else {
                assert_eq!(c.name, "c0001");
            }
        }
        assert_eq!(shared, 999);
        let names: Vec<_> = f.served.clusters.iter().map(|c| c.name.clone()).collect();
        assert!(names.is_sorted());
        let (old, new) = (&composed.by_name, &f.state.composed.by_name);
        let changed: Vec<_> = old
            .iter()
            .filter(|(n, c)| {
                new.get(*n).is_none_or(|x| {
                    !Arc::ptr_eq(&x.cluster, &c.cluster)
                        || !same_allocation(x.serve.as_ref(), c.serve.as_ref())
                })
            })
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(changed, ["c0001", "c0500"]);
        assert!(Arc::ptr_eq(&out.config.listeners[0], &web));
        assert_eq!(f.state.resource_versions[CLUSTER].len(), 1000);
        assert!(!f.state.resource_versions[CLUSTER].contains_key("c0500"));

        // The EDS cluster still takes its endpoints, and the removed
        // cluster comes back.
        f.respond_delta(ENDPOINT, vec![endpoints("e", 4)], &[]);
        assert_eq!(f.cluster("e").endpoints[0].address, "127.0.0.1:4");
        f.respond_delta(CLUSTER, vec![static_cluster("c0500", 5)], &[]);
        assert_eq!(f.cluster("c0500").endpoints[0].address, "127.0.0.1:5");
        assert_eq!(f.served.clusters.len(), 1001);
    }

    #[test]
    fn a_route_push_shares_every_cluster_and_other_pushes_compose_only_what_changed() {
        let mut f = Fake::default();
        f.respond(
            CLUSTER,
            vec![
                static_cluster("a", 1),
                static_cluster("b", 2),
                eds_cluster("e"),
            ],
        );
        f.respond(LISTENER, vec![hcm_listener("web", 8080, "r")]);
        f.respond(ENDPOINT, vec![endpoints("e", 3)]);
        let out = f.respond(ROUTE, vec![route_config("r", "a")]);
        assert!(out.warming.is_empty());
        assert_eq!(out.config.listeners.len(), 1);
        assert_eq!(out.config.clusters.len(), 3);
        let (a, b, e) = (f.cluster("a"), f.cluster("b"), f.cluster("e"));
        let web = f.served.listeners[0].clone();

        // RDS: the clusters are not composed again, nor copied.
        let composed = f.state.composed.clone();
        let out = f.respond(ROUTE, vec![route_config("r", "b")]);
        assert!(Arc::ptr_eq(&out.clusters, &composed));
        for (x, y) in out.config.clusters.iter().zip([&a, &b, &e]) {
            assert!(Arc::ptr_eq(x, y), "{} was copied", x.name);
        }
        assert!(!Arc::ptr_eq(&out.config.listeners[0], &web));
        let web = out.config.listeners[0].clone();

        // EDS: only the cluster whose endpoints changed; the listener,
        // whose routes did not change, is not translated again.
        let out = f.respond(ENDPOINT, vec![endpoints("e", 4)]);
        assert!(!Arc::ptr_eq(&out.clusters, &composed));
        assert!(Arc::ptr_eq(&f.cluster("a"), &a) && Arc::ptr_eq(&f.cluster("b"), &b));
        assert!(!Arc::ptr_eq(&f.cluster("e"), &e));
        assert_eq!(f.cluster("e").endpoints[0].address, "127.0.0.1:4");
        assert!(Arc::ptr_eq(&out.config.listeners[0], &web));
        let e = f.cluster("e");

        // CDS (state of the world): only the cluster that changed.
        f.respond(
            CLUSTER,
            vec![
                static_cluster("a", 1),
                static_cluster("b", 5),
                eds_cluster("e"),
            ],
        );
        assert!(Arc::ptr_eq(&f.cluster("a"), &a) && Arc::ptr_eq(&f.cluster("e"), &e));
        assert!(!Arc::ptr_eq(&f.cluster("b"), &b));
        assert_eq!(f.cluster("b").endpoints[0].address, "127.0.0.1:5");
    }

    fn tcp_listener(name: &str, port: u16, cluster: &str) -> protobuf::Any {
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
        let t = tcp::TcpProxy {
            stat_prefix: name.into(),
            cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        };
        crate::fixtures::one_filter_listener(
            name,
            port,
            "envoy.filters.network.tcp_proxy",
            crate::fixtures::any(
                "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                &t,
            ),
        )
        .1
    }

    #[test]
    fn a_cluster_removed_by_cds_is_not_found_while_listeners_name_it() {
        let mut f = Fake::default();
        f.respond(
            CLUSTER,
            vec![static_cluster("a", 1), static_cluster("gone", 2)],
        );
        f.respond(LISTENER, vec![hcm_listener("web", 8080, "r")]);
        f.respond(ROUTE, vec![route_config("r", "gone")]);
        let web = f.served.listeners[0].clone();
        // An RDS route (not validating) names it: the cluster goes (the
        // route table answers the unknown name as not found), the
        // listener is the same.
        let out = f.respond(CLUSTER, vec![static_cluster("a", 1)]);
        assert!(out.warming.is_empty());
        assert!(Arc::ptr_eq(&out.config.listeners[0], &web));
        let names: Vec<_> = out.config.clusters.iter().map(|c| &c.name).collect();
        assert_eq!(names, ["a"]);

        // Back, and a tcp_proxy listener needs it: removed again, it is a
        // `not_found` stand-in at once (no warming), the same `Arc` on
        // the next composition, and the real one when CDS sends it again.
        f.respond(
            CLUSTER,
            vec![static_cluster("a", 1), static_cluster("gone", 2)],
        );
        f.respond(
            LISTENER,
            vec![
                hcm_listener("web", 8080, "r"),
                tcp_listener("tcp", 9090, "gone"),
            ],
        );
        assert!(!f.cluster("gone").not_found);
        let out = f.respond(CLUSTER, vec![static_cluster("a", 1)]);
        assert!(out.warming.is_empty(), "{:?}", out.warming);
        assert_eq!(out.config.listeners.len(), 2);
        let stand_in = f.cluster("gone");
        assert!(stand_in.not_found && stand_in.endpoints.is_empty());
        let out = f.respond(ROUTE, vec![route_config("r", "a")]);
        assert!(out.warming.is_empty());
        assert!(Arc::ptr_eq(&f.cluster("gone"), &stand_in));
        f.respond(
            CLUSTER,
            vec![static_cluster("a", 1), static_cluster("gone", 3)],
        );
        let back = f.cluster("gone");
        assert!(!back.not_found);
        assert_eq!(back.endpoints[0].address, "127.0.0.1:3");

        // Once no listener uses it, a removal leaves nothing.
        f.respond(LISTENER, vec![hcm_listener("web", 8080, "r")]);
        let out = f.respond(CLUSTER, vec![static_cluster("a", 1)]);
        let names: Vec<_> = out.config.clusters.iter().map(|c| &c.name).collect();
        assert_eq!(names, ["a"]);
    }
}
