//! What a reload does to a listener that stays (same address and
//! transport, and name on port 0: `ListenerKey`): it is the same, only its TLS settings changed, only route
//! tables changed (its filters' `route_config`, inline or from RDS), or it
//! is replaced. In the first three cases open connections go on: a new TLS
//! setting applies to new handshakes, a new route table reaches open
//! connections through their route subscriptions (`router::subscription`).
//! A replaced listener's connections retire (they finish their stream
//! under the config they were accepted with, then close). The decision is
//! made while the snapshot is built (off the event loop), in two steps:
//! `may_keep` on the configs, before building, tells whether the new
//! filters take over the live route subscriptions; `decide`, after
//! building, adds what the clusters say.

use crate::cluster::{ClusterManager, ClusterRefs};
use crate::config::{FilterChainConfig, FilterConfig, ListenerConfig};
use crate::listener::CompiledListener;
use crate::router::ROUTE_CONFIG_FIELD;
use std::sync::Arc;

/// What happens to a live listener's open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerUpdate {
    /// Same config and clusters: new connections get the new snapshot's
    /// filter chains, open ones go on.
    Same,
    /// Only TLS settings (certificates) changed, e.g. an SDS rotation.
    TlsOnly,
    /// Only route tables changed (or a cluster a lenient route waited for
    /// arrived): open connections take them on their next stream.
    Routes,
    /// Anything else: open connections retire.
    Replaced,
}

/// Whether a listener built from `new` may keep the open connections of
/// the one built from `old`, as far as the configs tell: the filters built
/// from `new` then take over the live route subscriptions.
pub(crate) fn may_keep(old: &ListenerConfig, new: &ListenerConfig) -> bool {
    old == new || (new.quic.is_none() && same_but_tls(old, new)) || same_but_route_configs(old, new)
}

/// What happens to `live` (built from `old_cfg` on the cluster manager
/// `old_clusters`) when `next` (built from `new_cfg`) takes its place.
pub(crate) fn decide(
    old_cfg: &ListenerConfig,
    new_cfg: &ListenerConfig,
    live: &CompiledListener,
    next: &CompiledListener,
    old_clusters: &ClusterManager,
    new_clusters: &ClusterManager,
) -> ListenerUpdate {
    let clusters_kept = same_clusters(&live.clusters, &next.clusters, old_clusters, new_clusters);
    if clusters_kept && old_cfg == new_cfg {
        ListenerUpdate::Same
    } else if clusters_kept && new_cfg.quic.is_none() && same_but_tls(old_cfg, new_cfg) {
        // (A QUIC endpoint takes its TLS config at bind time, so it is
        // replaced.)
        ListenerUpdate::TlsOnly
    } else if routes_only(old_cfg, new_cfg, next)
        && shared_clusters_kept(live, next, old_clusters, new_clusters)
    {
        ListenerUpdate::Routes
    } else {
        ListenerUpdate::Replaced
    }
}

/// Whether the two configs differ at most in route tables, each changed
/// one a subscription of `next`'s filter at that position.
fn routes_only(old: &ListenerConfig, new: &ListenerConfig, next: &CompiledListener) -> bool {
    if !same_but_route_configs(old, new) || next.chains.len() != new.filter_chains.len() {
        return false;
    }
    let chains = old.filter_chains.iter().zip(&new.filter_chains);
    chains.zip(&next.chains).all(|((o, n), built)| {
        o.filters
            .iter()
            .zip(&n.filters)
            .enumerate()
            .all(|(i, (f, g))| f.config == g.config || built.routes.get(i).is_some())
    })
}

/// Whether the clusters `next` uses are those `live` uses: the same names,
/// each the same `Arc` (reused, or its endpoints updated in place), or
/// rebuilt from an unchanged config (to re-read its TLS files). Otherwise
/// open connections would keep sending to a cluster the new snapshot
/// replaced.
fn same_clusters(
    live: &ClusterRefs,
    next: &ClusterRefs,
    old: &ClusterManager,
    new: &ClusterManager,
) -> bool {
    live.len() == next.len()
        && live.iter().zip(next).all(|((name, a), (next_name, b))| {
            name == next_name && (Arc::ptr_eq(a, b) || same_config(name, old, new))
        })
}

/// Whether every cluster both listeners use is unchanged. A cluster only
/// the new one uses is new to the old connections too (their stream
/// filters do not hold it; their routes reach it through the
/// subscription). A cluster that became a `not_found` stand-in (removed
/// by CDS) does not retire them either: as in Envoy, a removal fails only
/// the next streams routed to it (through the subscription), and what
/// runs on the removed cluster finishes; nor does the stand-in's
/// replacement when CDS adds the cluster again (nothing runs on a
/// stand-in).
fn shared_clusters_kept(
    live: &CompiledListener,
    next: &CompiledListener,
    old: &ClusterManager,
    new: &ClusterManager,
) -> bool {
    live.clusters
        .iter()
        .all(|(name, a)| match next.clusters.get(name) {
            None => true,
            Some(b) => {
                Arc::ptr_eq(a, b) || a.not_found || b.not_found || same_config(name, old, new)
            }
        })
}

/// Whether the cluster `name` has the same config in both managers.
fn same_config(name: &str, old: &ClusterManager, new: &ClusterManager) -> bool {
    matches!((old.config(name), new.config(name)), (Some(o), Some(n)) if o == n)
}

/// Whether two filter configs are the same but for their `route_config`.
fn same_but_route_config(a: &FilterConfig, b: &FilterConfig) -> bool {
    let without = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove(ROUTE_CONFIG_FIELD);
        }
        v
    };
    a.name == b.name && (a.config == b.config || without(&a.config) == without(&b.config))
}

/// Whether two listener configs are the same but for their filters' route
/// tables (the filters' names and order included).
fn same_but_route_configs(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    same_but_chains(a, b, |x, y| {
        let FilterChainConfig {
            name,
            filter_chain_match,
            tls,
            filters,
        } = x;
        *name == y.name
            && *filter_chain_match == y.filter_chain_match
            && *tls == y.tls
            && filters.len() == y.filters.len()
            && filters
                .iter()
                .zip(&y.filters)
                .all(|(f, g)| same_but_route_config(f, g))
    })
}

/// Whether two listener configs are the same but for their chains' TLS
/// settings (whether a chain terminates TLS must stay), to tell a TLS-only
/// change.
fn same_but_tls(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    same_but_chains(a, b, |x, y| {
        let FilterChainConfig {
            name,
            filter_chain_match,
            tls,
            filters,
        } = x;
        *name == y.name
            && *filter_chain_match == y.filter_chain_match
            && tls.is_some() == y.tls.is_some()
            && *filters == y.filters
    })
}

/// Whether two listener configs are the same, their filter chains compared
/// pairwise by `chain_eq`.
fn same_but_chains(
    a: &ListenerConfig,
    b: &ListenerConfig,
    chain_eq: impl Fn(&FilterChainConfig, &FilterChainConfig) -> bool,
) -> bool {
    // Destructured so that a new setting cannot be forgotten here.
    let ListenerConfig {
        name,
        address,
        backlog,
        max_connections,
        max_connections_to_accept_per_socket_event,
        listener_filters_timeout,
        listener_filters,
        quic,
        udp_proxy,
        filter_chains,
        use_original_dst,
        bind_to_port,
        transparent,
        freebind,
        socket_options,
        traffic_direction,
        access_log,
        per_connection_buffer_limit_bytes,
    } = a;
    *name == b.name
        && *address == b.address
        && *backlog == b.backlog
        && *max_connections == b.max_connections
        && *max_connections_to_accept_per_socket_event
            == b.max_connections_to_accept_per_socket_event
        && *listener_filters_timeout == b.listener_filters_timeout
        && *listener_filters == b.listener_filters
        && *quic == b.quic
        && *udp_proxy == b.udp_proxy
        && *use_original_dst == b.use_original_dst
        && *bind_to_port == b.bind_to_port
        && *transparent == b.transparent
        && *freebind == b.freebind
        && *socket_options == b.socket_options
        && *traffic_direction == b.traffic_direction
        && *access_log == b.access_log
        && *per_connection_buffer_limit_bytes == b.per_connection_buffer_limit_bytes
        && filter_chains.len() == b.filter_chains.len()
        && filter_chains
            .iter()
            .zip(&b.filter_chains)
            .all(|(x, y)| chain_eq(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(v: serde_json::Value) -> ListenerConfig {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "web",
            "address": "127.0.0.1:8080",
            "filter_chains": [{
                "tls": {"certificates": [{"certificate_chain": "a.pem", "private_key": "a.key"}]},
                "filters": [{"name": "proxy", "config": {"route_config": {"name": "r1"}}}],
            }],
        })
    }

    #[test]
    fn listener_changes_are_told_apart() {
        let old = listener(base());
        let mut v = base();
        v["filter_chains"][0]["tls"]["certificates"][0]["certificate_chain"] = "b.pem".into();
        let new_cert = listener(v);
        assert!(same_but_tls(&old, &new_cert));
        assert!(!same_but_route_configs(&old, &new_cert));
        assert!(may_keep(&old, &new_cert));

        let mut v = base();
        v["filter_chains"][0]["filters"][0]["config"]["route_config"]["name"] = "r2".into();
        let new_routes = listener(v);
        assert!(same_but_route_configs(&old, &new_routes));
        assert!(!same_but_tls(&old, &new_routes));
        assert!(may_keep(&old, &new_routes));

        // Another setting of the filter beside its routes is more.
        let mut v = base();
        v["filter_chains"][0]["filters"][0]["config"]["generate_request_id"] = false.into();
        let new_setting = listener(v);
        assert!(!same_but_route_configs(&old, &new_setting));
        assert!(!may_keep(&old, &new_setting));

        // Dropping TLS, renaming a filter or moving the listener is more.
        let mut v = base();
        v["filter_chains"][0].as_object_mut().unwrap().remove("tls");
        assert!(!same_but_tls(&old, &listener(v)));
        let mut v = base();
        v["filter_chains"][0]["filters"][0]["name"] = "tcp_proxy".into();
        assert!(!same_but_route_configs(&old, &listener(v)));
        let mut v = base();
        v["backlog"] = 16.into();
        let moved = listener(v);
        assert!(!same_but_tls(&old, &moved) && !same_but_route_configs(&old, &moved));
        assert!(!may_keep(&old, &moved));
        assert!(same_but_tls(&old, &old) && same_but_route_configs(&old, &old));
    }
}
