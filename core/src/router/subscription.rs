//! Route tables as subscriptions. A filter that routes (the `proxy`)
//! subscribes, while it is built, to the route table of its config field
//! `route_config` (written inline, or an RDS RouteConfiguration that xDS
//! put there) through `BuildContext::subscribe_routes`, and reads the
//! current table once per stream with `load`: one atomic load, no lock, no
//! allocation. A route update (a file reload that changed only routes, an
//! RDS update) is a new value stored on the same subscription, so open
//! connections keep serving and their next stream sees it.
//!
//! Who shares what: a subscription belongs to one filter position (filter
//! chain, filter) of one listener. When a reload keeps a listener's open
//! connections (its config differs at most in route tables or TLS
//! certificates, and the clusters they use are unchanged: `crate::snapshot::update`),
//! the filters built for the new snapshot get the previous position's
//! subscription back, with the new table *staged*: it is stored only when
//! the whole snapshot is accepted (`ChainRoutes::commit`), so a refused
//! update changes nothing. A listener whose connections retire gets fresh
//! subscriptions, so that its retiring connections finish under the config
//! they were accepted with. Positions, not route-config names, identify a
//! subscription: inline route configs are often unnamed or share a name
//! across listeners and chains.

use super::RouteTable;

/// The config field of a network filter that holds its route table: a
/// reload that changes only this field of a filter that subscribed keeps
/// the listener's connections (`crate::snapshot::update`).
pub const ROUTE_CONFIG_FIELD: &str = "route_config";
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

/// The route table a filter routes by, updated in place by route updates.
#[derive(Clone, Debug)]
pub struct RouteSubscription(Arc<ArcSwap<RouteTable>>);

impl RouteSubscription {
    /// A subscription holding `table`, shared with nobody yet.
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self(Arc::new(ArcSwap::new(table)))
    }

    /// The current table, for one stream (no lock, no allocation).
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.load()
    }

    /// The current table, owned (for a stream whose future outlives a
    /// guard).
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Publishes a new table to every holder.
    pub(crate) fn store(&self, table: Arc<RouteTable>) {
        self.0.store(table)
    }

    /// Whether both are the same subscription.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One subscription a filter made, and the table waiting to be stored on
/// it when it is a previous snapshot's subscription taken over.
struct Entry {
    filter: usize,
    subscription: RouteSubscription,
    staged: Mutex<Option<Arc<RouteTable>>>,
}

/// The route subscriptions the filters of one filter chain made, by filter
/// position.
#[derive(Default)]
pub struct ChainRoutes {
    entries: Vec<Entry>,
}

impl ChainRoutes {
    /// The subscription of the filter at `filter`, if it made one.
    pub fn get(&self, filter: usize) -> Option<&RouteSubscription> {
        self.entries
            .iter()
            .find(|e| e.filter == filter)
            .map(|e| &e.subscription)
    }

    /// Records the subscription of the filter at `filter`: taken over from
    /// a previous snapshot (`staged` is its new table), or new.
    pub(crate) fn record(
        &mut self,
        filter: usize,
        subscription: RouteSubscription,
        staged: Option<Arc<RouteTable>>,
    ) {
        self.entries.push(Entry {
            filter,
            subscription,
            staged: Mutex::new(staged),
        });
    }

    /// Stores the staged tables on their subscriptions: the snapshot was
    /// accepted, open connections route their next stream by them.
    pub(crate) fn commit(&self) {
        for e in &self.entries {
            let staged = e.staged.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = staged {
                e.subscription.store(t);
            }
        }
    }

    /// Whether any subscription was taken over from a previous snapshot.
    pub(crate) fn shares(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.staged.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RouteConfig;

    fn table(vhosts: usize) -> Arc<RouteTable> {
        let cfg: RouteConfig = serde_json::from_value(serde_json::json!({
            "virtual_hosts": (0..vhosts).map(|i| serde_json::json!({
                "name": format!("v{i}"),
                "domains": [format!("h{i}.test")],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Arc::new(RouteTable::build(&cfg, &crate::cluster::ClusterManager::default()).unwrap())
    }

    #[test]
    fn a_staged_table_reaches_every_holder_only_on_commit() {
        let held = RouteSubscription::new(table(1));
        let mut routes = ChainRoutes::default();
        routes.record(0, held.clone(), Some(table(2)));
        assert!(routes.shares());
        assert!(routes.get(0).is_some_and(|s| s.ptr_eq(&held)));
        assert!(routes.get(1).is_none());
        // Not accepted yet: the old table still serves.
        assert_eq!(held.load().virtual_hosts().len(), 1);
        routes.commit();
        assert_eq!(held.load().virtual_hosts().len(), 2);
        assert!(!routes.shares());
        // A second commit stores nothing (it must not undo a later update).
        held.store(table(3));
        routes.commit();
        assert_eq!(held.load().virtual_hosts().len(), 3);
    }
}
