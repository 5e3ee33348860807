//! Dynamic config: a source-agnostic door through which a config source
//! other than the file (the xDS client in meshgate-xds, wired by cmd)
//! hands the server a new set of dynamic listeners and clusters. They are
//! merged with the static ones of the file and take the same path as a file
//! reload: one `Snapshot` build, one swap; a refused update keeps the old
//! snapshot and its error goes back to the source (xDS answers a NACK).

use crate::config::{Config, ConfigSource};
use crate::error::ConfigError;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Version and source of the dynamic part of a live snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct DynamicInfo {
    /// The source's own version words, e.g. `lds=3 cds=7`.
    pub version: String,
    /// e.g. `xds:ads 127.0.0.1:18000`.
    pub source: String,
    /// Resources the source has but does not serve yet (warming).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warming: Vec<Warming>,
    /// The last refused update per resource type, while refused.
    #[serde(skip_serializing_if = "Refusals::is_empty")]
    pub refused: Refusals,
}

/// The last refused (NACKed) update per resource type (e.g. `cds`), until
/// that type's next accepted update. Shared between the source and every
/// `DynamicInfo` it sent and read when `/config_dump` is serialized: a
/// refusal changes no snapshot, yet shows at once.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<BTreeMap<String, Refusal>>>);

/// One refused update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The refused version (`version_info`).
    pub version: String,
    /// Why: the NACK's detail, naming the resource at fault.
    pub error: String,
}

impl Refusals {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Refusal>> {
        // Only plain inserts happen under the lock: a poisoned map is whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn set(&self, kind: &str, r: Refusal) {
        self.map().insert(kind.to_string(), r);
    }
    pub fn clear(&self, kind: &str) {
        self.map().remove(kind);
    }
    pub fn get(&self, kind: &str) -> Option<Refusal> {
        self.map().get(kind).cloned()
    }
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

impl Serialize for Refusals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(s)
    }
}

/// A resource that warms: e.g. a listener waiting for its route
/// configuration or clusters (at most its `initial_fetch_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warming {
    /// e.g. `Listener 'web'`.
    pub resource: String,
    /// e.g. `RouteConfiguration 'r1'`, `Cluster 'svc'`.
    pub waiting_for: Vec<String>,
    /// Whether its previous version serves meanwhile.
    pub previous_serves: bool,
    /// Its `initial_fetch_timeout` is over: a cluster or listener is then
    /// served with what it has (a cluster CDS did not send as a stand-in
    /// with no endpoints); a listener missing an SDS secret still warms.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub initial_fetch_timeout_over: bool,
}

/// A new dynamic config: the complete set of dynamic listeners and clusters
/// (state of the world; `admin`, `node` and `dynamic_resources` must be
/// empty). `reply` gets the new snapshot version, or why it was refused.
pub struct DynamicUpdate {
    pub config: Config,
    pub info: DynamicInfo,
    pub reply: oneshot::Sender<Result<u64, ConfigError>>,
}

/// The sending half a source holds.
pub type DynamicSender = mpsc::Sender<DynamicUpdate>;
/// The receiving half the server reads.
pub type DynamicReceiver = mpsc::Receiver<DynamicUpdate>;

/// A channel for dynamic updates; a few may queue while a build runs.
pub fn channel() -> (DynamicSender, DynamicReceiver) {
    mpsc::channel(4)
}

/// The merged model: the file's static listeners and clusters first, then
/// the dynamic ones (shared with both, not copied: the cluster lists are
/// persistent, so the merge costs O(log n) in the dynamic clusters, not
/// O(n)). A dynamic resource may not take a static one's name: each
/// static cluster's name is looked up in the dynamic list by binary
/// search, exact for a source that lists its clusters in name order (the
/// xDS client does); whatever the order, the cluster manager's build
/// refuses a name taken twice as well (`duplicate cluster name`). Also returns how many listeners
/// and clusters are static, to name dynamic resources in errors.
pub fn merge(file: &Config, dynamic: Option<&Config>) -> Result<(Config, Counts), ConfigError> {
    let mut merged = file.clone();
    let counts = Counts {
        listeners: file.listeners.len(),
        clusters: file.clusters.len(),
    };
    let Some(d) = dynamic else {
        return Ok((merged, counts));
    };
    let xds = ConfigSource::anonymous("xds");
    let ls: HashSet<&str> = file.listeners.iter().map(|l| l.name.as_str()).collect();
    for l in &d.listeners {
        if ls.contains(l.name.as_str()) {
            return Err(xds.error(
                format!("Listener '{}'", l.name),
                "a static listener of the config file has this name",
            ));
        }
    }
    for c in &file.clusters {
        let name = c.name.as_str();
        if d.clusters
            .binary_search_by(|x| x.name.as_str().cmp(name))
            .is_ok()
        {
            return Err(xds.error(
                format!("Cluster '{name}'"),
                "a static cluster of the config file has this name",
            ));
        }
    }
    merged.listeners.extend(d.listeners.iter().cloned());
    merged.clusters.append(d.clusters.clone());
    Ok((merged, counts))
}

/// Static resource counts of a merged config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub listeners: usize,
    pub clusters: usize,
}

/// An error found in a merged config: when it is about a dynamic resource
/// (`listeners[i]` with `i` past the static ones), it is renamed after the
/// resource of `dynamic` (`Listener 'web'.filter_chains[0]...`) and said to
/// come from `source`, with no line.
pub fn rename_error(
    err: ConfigError,
    dynamic: &Config,
    counts: Counts,
    source: &str,
) -> ConfigError {
    let (kind, rest) = if let Some(r) = err.field.strip_prefix("listeners[") {
        ("Listener", r)
    } else if let Some(r) = err.field.strip_prefix("clusters[") {
        ("Cluster", r)
    } else {
        return err;
    };
    let Some((idx, tail)) = rest.split_once(']') else {
        return err;
    };
    let Ok(i) = idx.parse::<usize>() else {
        return err;
    };
    let name = match kind {
        "Listener" => i
            .checked_sub(counts.listeners)
            .and_then(|i| dynamic.listeners.get(i))
            .map(|l| &l.name),
        _ => i
            .checked_sub(counts.clusters)
            .and_then(|i| dynamic.clusters.get(i))
            .map(|c| &c.name),
    };
    match name {
        Some(n) => ConfigError {
            file: source.into(),
            line: None,
            field: format!("{kind} '{n}'{tail}"),
            message: err.message,
        },
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;
    use std::sync::Arc;

    fn cluster(name: &str) -> Arc<ClusterConfig> {
        Arc::new(
            serde_json::from_value(serde_json::json!({"name": name, "endpoints": []})).unwrap(),
        )
    }

    #[test]
    fn merge_refuses_static_names_and_renames_errors() {
        let file = Config {
            clusters: imbl::vector![cluster("a")],
            ..Default::default()
        };
        let dynamic = Config {
            clusters: imbl::vector![cluster("a")],
            ..Default::default()
        };
        let e = merge(&file, Some(&dynamic)).unwrap_err();
        assert_eq!(e.field, "Cluster 'a'");
        let dynamic = Config {
            clusters: imbl::vector![cluster("b")],
            ..Default::default()
        };
        let (m, counts) = merge(&file, Some(&dynamic)).unwrap();
        assert_eq!(m.clusters.len(), 2);
        // Shared, not copied.
        assert!(Arc::ptr_eq(&m.clusters[1], &dynamic.clusters[0]));
        let err = ConfigError {
            file: "f.yaml".into(),
            line: Some(3),
            field: "clusters[1].endpoints[0].address".into(),
            message: "bad".into(),
        };
        let e = rename_error(err.clone(), &dynamic, counts, "xds");
        assert_eq!(e.field, "Cluster 'b'.endpoints[0].address");
        assert_eq!(e.line, None);
        // A static resource's error keeps its file and line.
        let err = ConfigError {
            field: "clusters[0].name".into(),
            ..err
        };
        assert_eq!(rename_error(err.clone(), &dynamic, counts, "xds"), err);
    }

    /// A source that does not list its clusters in name order: the merge's
    /// binary search may miss a static name, the cluster manager's build
    /// still refuses it.
    #[test]
    fn a_static_name_among_unsorted_dynamic_clusters_is_still_refused() {
        let file = Config {
            clusters: imbl::vector![cluster("a")],
            ..Default::default()
        };
        let dynamic = Config {
            clusters: imbl::vector![cluster("z"), cluster("b"), cluster("a")],
            ..Default::default()
        };
        let refused = match merge(&file, Some(&dynamic)) {
            Err(_) => true,
            Ok((m, _)) => crate::cluster::ClusterManager::build(
                &m.clusters,
                &crate::registry::Registry::new(),
                &ConfigSource::anonymous("t"),
                false,
            )
            .is_err(),
        };
        assert!(refused);
    }
}
