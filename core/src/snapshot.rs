//! The `Snapshot`: a loaded config compiled into immutable, ready-to-serve
//! form (clusters with their load balancers, listeners with their filter
//! chains). Published through `arc_swap`, so the data path reads it with a
//! `load()` and never a lock.

use crate::cluster::ClusterManager;
use crate::config::{Config, ConfigSource, ListenerConfig};
use crate::error::ConfigError;
use crate::listener::CompiledListener;
use crate::registry::Registry;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use update::ListenerUpdate;

pub mod update;

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A compiled config.
pub struct Snapshot {
    /// Increments with every snapshot built in this process.
    pub version: u64,
    /// Where it came from (a file path, later `xds`).
    pub source: String,
    pub loaded_at: SystemTime,
    /// The model it was built from, for `/config_dump`.
    pub config: Config,
    /// The dynamic (xDS) part merged in, if any: its version and source.
    pub dynamic: Option<crate::dynamic::DynamicInfo>,
    pub clusters: ClusterManager,
    pub listeners: Vec<Arc<CompiledListener>>,
    /// For each of `listeners`, what it does to the previous snapshot's
    /// listener at its address (`None`: there was none, or no previous
    /// snapshot).
    pub updates: Vec<Option<ListenerUpdate>>,
    pub admin_address: Option<SocketAddr>,
    /// The checked `overload_manager` (`crate::overload`).
    pub overload: Option<Arc<crate::overload::Plan>>,
}

/// A listener's identity across reloads: its address and transport (TCP
/// and QUIC may share a port); its name may change. Several listeners may
/// be configured on port 0 (each gets an ephemeral port from the kernel),
/// so there the name tells them apart, and a reload that keeps the name,
/// address and transport keeps the socket and the port it got.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub address: SocketAddr,
    /// UDP (QUIC or `udp_proxy`) rather than TCP.
    pub quic: bool,
    /// Only for port 0.
    pub name: Option<Arc<str>>,
}

impl ListenerKey {
    pub fn new(address: SocketAddr, quic: bool, name: &str) -> Self {
        let name = (address.port() == 0).then(|| Arc::from(name));
        Self {
            address,
            quic,
            name,
        }
    }

    pub fn of(l: &CompiledListener) -> Self {
        let name = (l.address.port() == 0).then(|| l.name.clone());
        Self {
            address: l.address,
            quic: l.quic.is_some() || l.udp.is_some(),
            name,
        }
    }
}

/// How far to go when building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// Everything, including DNS resolution of strict_dns clusters.
    Serve,
    /// `meshgate validate`: every check that needs no network.
    Validate,
}

/// What a rebuild was triggered by, which decides what it may reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The config file was loaded again: clusters whose TLS reads files
    /// are rebuilt, so that the files are read again.
    File,
    /// A dynamic (xDS) update: every unchanged cluster is reused.
    Dynamic,
}

impl Snapshot {
    /// Compiles `config`; every error names file, line and field.
    pub fn build(
        config: Config,
        source: &ConfigSource,
        registry: &Registry,
        mode: BuildMode,
    ) -> Result<Self, ConfigError> {
        Self::build_from(config, source, registry, mode, None)
    }

    /// As `build`, reusing the unchanged clusters of `previous` (a reload).
    pub fn build_from(
        config: Config,
        source: &ConfigSource,
        registry: &Registry,
        mode: BuildMode,
        previous: Option<(&Snapshot, Reload)>,
    ) -> Result<Self, ConfigError> {
        crate::node::publish(config.node.as_ref());
        let overload = match &config.overload_manager {
            Some(o) => Some(Arc::new(crate::overload::Plan::build(o, source)?)),
            None => None,
        };
        let admin_address = match &config.admin {
            None => None,
            Some(a) => a
                .address
                .socket()
                .map_err(|e| source.error("admin.address", e))?,
        };
        if let Some(d) = &config.dynamic_resources {
            match &config.node {
                Some(n) if !n.id.is_empty() => {}
                Some(_) => return Err(source.error("node.id", "xDS needs a non-empty node id")),
                None => {
                    return Err(source.error(
                        "dynamic_resources",
                        "xDS needs a `node` section with an `id`",
                    ));
                }
            }
            match config.clusters.iter().find(|c| c.name == d.ads.cluster) {
                None => {
                    return Err(source.error(
                        "dynamic_resources.ads.cluster",
                        format!("unknown cluster '{}': the ADS server must be a static cluster of this file", d.ads.cluster),
                    ));
                }
                Some(c) if c.endpoints.is_empty() => {
                    return Err(source.error(
                        "dynamic_resources.ads.cluster",
                        format!("cluster '{}' has no endpoints", d.ads.cluster),
                    ));
                }
                Some(_) => {}
            }
        }
        let mut clusters = ClusterManager::build_reusing(
            &config.clusters,
            registry,
            source,
            mode == BuildMode::Serve,
            previous.map(|(p, reload)| (&p.clusters, reload == Reload::File)),
        )?;
        crate::cluster::zone::link(&mut clusters, &config, source, previous.is_none())?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut updates = Vec::with_capacity(config.listeners.len());
        // The previous snapshot's listeners by identity (`ListenerKey`),
        // with their configs: a listener that stays may keep its connections.
        let live: std::collections::HashMap<ListenerKey, (&ListenerConfig, &CompiledListener)> =
            match previous {
                None => Default::default(),
                Some((p, _)) => p
                    .config
                    .listeners
                    .iter()
                    .zip(&p.listeners)
                    .map(|(c, l)| (ListenerKey::of(l), (c.as_ref(), l.as_ref())))
                    .collect(),
            };
        let mut names = HashSet::new();
        // TCP and QUIC (UDP) listeners may share a port.
        let mut addrs = HashSet::new();
        if let Some(a) = admin_address.filter(|a| a.port() != 0) {
            addrs.insert((a, false));
        }
        for (i, l) in config.listeners.iter().enumerate() {
            if !names.insert(l.name.clone()) {
                return Err(source.error(
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name '{}'", l.name),
                ));
            }
            let was = l
                .address
                .parse()
                .ok()
                .and_then(|a| {
                    live.get(&ListenerKey::new(
                        a,
                        l.quic.is_some() || l.udp_proxy.is_some(),
                        &l.name,
                    ))
                })
                .copied();
            let take_over = was
                .filter(|(old, _)| update::may_keep(old, l))
                .map(|(_, c)| c);
            let mut compiled =
                CompiledListener::build(i, l, registry, &clusters, source, take_over)?;
            let update = match (was, previous) {
                (Some((old, live)), Some((p, _))) => Some(update::decide(
                    old,
                    l,
                    live,
                    &compiled,
                    &p.clusters,
                    &clusters,
                )),
                _ => None,
            };
            // Its connections retire after all (a cluster they use
            // changed): they must not see the new routes, so it is built
            // again with subscriptions of its own. Rare, and off the
            // event loop.
            if update == Some(ListenerUpdate::Replaced) && compiled.takes_over_routes() {
                compiled = CompiledListener::build(i, l, registry, &clusters, source, None)?;
            }
            updates.push(update);
            // Several listeners may ask for an ephemeral port (port 0).
            if compiled.address.port() != 0
                && !addrs.insert((
                    compiled.address,
                    compiled.quic.is_some() || compiled.udp.is_some(),
                ))
            {
                return Err(source.error(
                    format!("listeners[{i}].address"),
                    format!("address {} is used twice in this config", compiled.address),
                ));
            }
            listeners.push(Arc::new(compiled));
        }
        Ok(Self {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            source: source.file.display().to_string(),
            loaded_at: SystemTime::now(),
            config,
            dynamic: None,
            clusters,
            listeners,
            updates,
            admin_address,
            overload,
        })
    }

    /// The live config as JSON, with the version and source it came from.
    pub fn dump(&self) -> serde_json::Value {
        let loaded = self
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let clusters: Vec<_> = self
            .config
            .clusters
            .iter()
            .map(|c| {
                let live: Vec<_> = self
                    .clusters
                    .get(&c.name)
                    .map(|cl| {
                        cl.hosts()
                            .endpoints
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "address": e.address.to_string(),
                                    "weight": e.weight,
                                    "active_requests": e.active_requests(),
                                    "available": e.is_available(crate::cluster::now_ms),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({ "name": c.name, "live_endpoints": live })
            })
            .collect();
        let mut config = serde_json::to_value(&self.config).unwrap_or_default();
        redact_keys(&mut config);
        serde_json::json!({
            "version": self.version,
            "source": self.source,
            "dynamic": self.dynamic,
            "loaded_at_unix": loaded,
            "config": config,
            "clusters_state": clusters,
        })
    }
}

/// Inline private keys (from xDS SDS or the file) never leave the process
/// through `/config_dump`.
fn redact_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "private_key_pem" {
                    *x = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_keys(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_keys),
        _ => {}
    }
}
