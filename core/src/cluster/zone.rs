//! Zone-aware routing (Envoy's `common_lb_config.zone_aware_lb_config`):
//! within priority 0 of an upstream cluster, send as much traffic as its
//! capacity allows to the endpoints in this proxy's own locality
//! (`node.locality`), while keeping every upstream endpoint at about the
//! same request rate. The local cluster (`cluster_manager.local_cluster_name`)
//! says how this proxy's own service is spread over the localities: with
//! `local[i]` its share of healthy hosts in locality `i` and `upstream[i]`
//! the upstream cluster's share (both in 1/10000):
//!
//! - `upstream[local] >= local[local]`: the local zone can take all of this
//!   proxy's traffic, every pick goes there (`lb_zone_routing_all_directly`);
//! - otherwise `upstream[local] / local[local]` of the picks go to the
//!   local zone (`lb_zone_routing_sampled`) and the rest to the other zones
//!   by their residual capacity `max(0, upstream[i] - local[i])`
//!   (`lb_zone_routing_cross_zone`).
//!
//! Not done (Envoy's early exits): fewer than two localities in priority 0,
//! no healthy endpoint in the local one, fewer endpoints than
//! `min_cluster_size` (`lb_zone_cluster_too_small`), the local cluster
//! missing, empty or in panic (`lb_local_cluster_not_ok`, and no endpoint at
//! all with `fail_traffic_on_panic` when it is in panic), the cluster in
//! panic. The shares are computed with the priority loads (on a health
//! generation change, `priority::HostSet::recompute`); a pick costs two
//! random draws and a short scan of the localities.

use super::{Cluster, ClusterManager, Endpoint, locality::Groups};
use crate::config::locality::Locality;
use crate::config::zone::DEFAULT_MIN_CLUSTER_SIZE;
use crate::config::{ClusterConfig, Config, ConfigSource};
use crate::error::ConfigError;
use crate::metrics::names;
use crate::pool::Health;
use arc_swap::ArcSwapOption;
use std::sync::{Arc, Weak};

/// Basis of the shares (Envoy's 10000).
const BASIS: u64 = 10_000;

/// A cluster's validated zone-aware policy and its link to the local
/// cluster (set on each snapshot by `link`).
pub struct ZoneAware {
    /// Of `BASIS`: picks considered for zone-aware routing.
    routing_enabled: u64,
    min_cluster_size: u64,
    pub(super) fail_traffic_on_panic: bool,
    local: ArcSwapOption<Local>,
    all_directly: metrics::Counter,
    sampled: metrics::Counter,
    cross_zone: metrics::Counter,
    too_small: metrics::Counter,
    local_not_ok: metrics::Counter,
}

/// Where this proxy runs and its own service's cluster.
pub struct Local {
    locality: Locality,
    /// Weak: the local cluster may be replaced by a reload; `link` then
    /// points here to the new one.
    cluster: Weak<Cluster>,
}

/// Checks the zone-aware fields of a cluster config (bad values name their
/// field); `None` when zone-aware routing is off.
pub(super) fn build(
    c: &ClusterConfig,
    path: &str,
    source: &ConfigSource,
) -> Result<Option<ZoneAware>, ConfigError> {
    let Some(l) = c.common_lb_config.as_ref() else {
        return Ok(None);
    };
    let Some(z) = &l.zone_aware_lb_config else {
        return Ok(None);
    };
    let zp = format!("{path}.common_lb_config.zone_aware_lb_config");
    if l.locality_weighted_lb_config.is_some() {
        return Err(source.error(
            zp,
            "not together with locality_weighted_lb_config (one of them, as in Envoy)",
        ));
    }
    if !matches!(
        c.lb_policy.as_str(),
        "round_robin" | "least_request" | "random"
    ) {
        return Err(source.error(
            zp,
            format!(
                "zone-aware routing needs lb_policy round_robin, least_request or random, not '{}'",
                c.lb_policy
            ),
        ));
    }
    let routing_enabled = match z.routing_enabled {
        None => BASIS,
        Some(p) if (0.0..=100.0).contains(&p.value) => (p.value * 100.0).round() as u64,
        Some(_) => {
            return Err(source.error(
                format!("{zp}.routing_enabled.value"),
                "must be a percent in [0, 100]",
            ));
        }
    };
    let label = c.name.clone();
    let counter = |name: &'static str| metrics::counter!(name, "cluster" => label.clone());
    Ok(Some(ZoneAware {
        routing_enabled,
        min_cluster_size: z.min_cluster_size.unwrap_or(DEFAULT_MIN_CLUSTER_SIZE),
        fail_traffic_on_panic: z.fail_traffic_on_panic,
        local: ArcSwapOption::empty(),
        all_directly: counter(names::CLUSTER_LB_ZONE_ROUTING_ALL_DIRECTLY_TOTAL),
        sampled: counter(names::CLUSTER_LB_ZONE_ROUTING_SAMPLED_TOTAL),
        cross_zone: counter(names::CLUSTER_LB_ZONE_ROUTING_CROSS_ZONE_TOTAL),
        too_small: counter(names::CLUSTER_LB_ZONE_CLUSTER_TOO_SMALL_TOTAL),
        local_not_ok: counter(names::CLUSTER_LB_LOCAL_CLUSTER_NOT_OK_TOTAL),
    }))
}

/// The links a snapshot gives its zone-aware clusters: each cluster and
/// the local cluster it compares itself with (`None`: no local cluster).
pub(super) type Links = Vec<(Arc<Cluster>, Option<Arc<Local>>)>;

/// Checks the bootstrap's `cluster_manager.local_cluster_name` and links
/// every zone-aware cluster of `clusters` to it: at once when `now` (a
/// first snapshot, nothing live yet), else when the snapshot goes live
/// (`ClusterManager::commit_endpoints`).
pub fn link(
    clusters: &mut ClusterManager,
    config: &Config,
    source: &ConfigSource,
    now: bool,
) -> Result<(), ConfigError> {
    let name = config
        .cluster_manager
        .as_ref()
        .map(|c| c.local_cluster_name.as_str())
        .filter(|n| !n.is_empty());
    let local_cluster = match name {
        None => None,
        Some(n) => Some(clusters.get(n).cloned().ok_or_else(|| {
            source.error(
                "cluster_manager.local_cluster_name",
                format!("unknown cluster '{n}'"),
            )
        })?),
    };
    let locality = config.node.as_ref().and_then(|n| n.locality.clone());
    let local = match (local_cluster, locality) {
        (Some(c), Some(locality)) => Some(Arc::new(Local {
            locality,
            cluster: Arc::downgrade(&c),
        })),
        (Some(_), None) => {
            tracing::warn!(
                "cluster_manager.local_cluster_name is set but node.locality is not: no zone-aware routing"
            );
            None
        }
        _ => None,
    };
    let links: Links = clusters
        .zone_aware()
        .map(|c| (c.clone(), local.clone()))
        .collect();
    if links.iter().any(|(_, l)| l.is_none()) {
        tracing::warn!(
            "a cluster has zone_aware_lb_config but the bootstrap lacks node.locality or cluster_manager.local_cluster_name: its picks are counted in lb_local_cluster_not_ok"
        );
    }
    if now {
        apply(links);
    } else {
        clusters.zone_links = links;
    }
    Ok(())
}

/// Stores the links into their clusters; the loads are recomputed on the
/// next pick.
pub(super) fn apply(links: Links) {
    if links.is_empty() {
        return;
    }
    for (c, l) in links {
        if let Some(z) = &c.priority.zone {
            z.local.store(l);
        }
    }
    super::priority::health_changed();
}

/// Zone-aware routing for priority 0, as last computed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum State {
    /// An early exit: plain picks.
    #[default]
    Off,
    /// The local cluster is missing, empty or (`fail`) in panic.
    LocalNotOk { fail: bool },
    Route {
        /// The locality group of this proxy's zone.
        local: usize,
        /// Of `BASIS`: picks for the local zone (`BASIS`: all).
        local_share: u64,
        /// Per locality group: cumulative residual capacity (0 at `local`).
        residual: Vec<u64>,
    },
}

impl ZoneAware {
    /// Envoy's `regenerateLocalityRoutingStructures` for priority 0,
    /// whose locality `groups` are over `endpoints`; `panic_threshold` is
    /// the cluster's (Envoy judges the local cluster's panic by it).
    pub(super) fn state(
        &self,
        groups: &Groups,
        endpoints: &[Arc<Endpoint>],
        panic_threshold: f64,
    ) -> State {
        let Some(local) = self.local.load_full() else {
            return State::LocalNotOk { fail: false };
        };
        let Some(local_cluster) = local.cluster.upgrade() else {
            return State::LocalNotOk { fail: false };
        };
        if groups.is_empty() {
            return State::Off;
        }
        let Some(li) =
            (0..groups.len()).find(|&g| groups.locality(g, endpoints) == Some(&local.locality))
        else {
            return State::Off;
        };
        let upstream: Vec<u64> = (0..groups.len())
            .map(|g| groups.healthy(g, endpoints))
            .collect();
        if upstream[li] == 0 {
            return State::Off;
        }
        let upstream_total: u64 = upstream.iter().sum();
        if upstream_total < self.min_cluster_size {
            self.too_small.increment(1);
            return State::Off;
        }
        // The local cluster's healthy hosts per upstream locality.
        let lh = local_cluster.hosts();
        let mut local_counts = vec![0u64; groups.len()];
        let mut local_total = 0u64;
        for e in &lh.endpoints {
            if e.health() != Health::Healthy {
                continue;
            }
            local_total += 1;
            if let Some(g) =
                (0..groups.len()).find(|&g| groups.locality(g, endpoints) == e.locality.as_deref())
            {
                local_counts[g] += 1;
            }
        }
        let all = lh.endpoints.len() as f64;
        if lh.endpoints.is_empty() || local_counts[li] == 0 {
            return State::LocalNotOk { fail: false };
        }
        if panic_threshold > 0.0 && 100.0 * local_total as f64 / all < panic_threshold {
            return State::LocalNotOk {
                fail: self.fail_traffic_on_panic,
            };
        }
        let up: Vec<u64> = upstream
            .iter()
            .map(|&n| n * BASIS / upstream_total)
            .collect();
        let lo: Vec<u64> = local_counts
            .iter()
            .map(|&n| n * BASIS / local_total)
            .collect();
        shares(&up, &lo, li)
    }

    /// Picks a locality group for this pick from `state`; `None`: a plain
    /// pick (or none at all when `Err`).
    pub(super) fn choose_group(&self, state: &State) -> Result<Option<usize>, ()> {
        match state {
            State::Off => Ok(None),
            State::LocalNotOk { fail } => {
                self.local_not_ok.increment(1);
                if *fail { Err(()) } else { Ok(None) }
            }
            State::Route {
                local,
                local_share,
                residual,
            } => {
                if self.routing_enabled < BASIS
                    && rand::random_range(0..BASIS) >= self.routing_enabled
                {
                    return Ok(None);
                }
                if *local_share >= BASIS {
                    self.all_directly.increment(1);
                    return Ok(Some(*local));
                }
                if rand::random_range(0..BASIS) < *local_share {
                    self.sampled.increment(1);
                    return Ok(Some(*local));
                }
                self.cross_zone.increment(1);
                Ok(Some(cross_zone(residual, *local)))
            }
        }
    }
}

/// Direct or residual routing from the upstream (`up`) and local (`lo`)
/// shares per locality, `li` the local one.
fn shares(up: &[u64], lo: &[u64], li: usize) -> State {
    if up[li] >= lo[li] {
        return State::Route {
            local: li,
            local_share: BASIS,
            residual: Vec::new(),
        };
    }
    let mut acc = 0;
    let residual = up
        .iter()
        .zip(lo)
        .enumerate()
        .map(|(i, (&u, &l))| {
            if i != li {
                acc += u.saturating_sub(l);
            }
            acc
        })
        .collect();
    State::Route {
        local: li,
        local_share: up[li] * BASIS / lo[li],
        residual,
    }
}

/// A non-local group by residual capacity (uniformly when none has any).
fn cross_zone(residual: &[u64], local: usize) -> usize {
    let total = residual.last().copied().unwrap_or(0);
    if total == 0 {
        let others = residual.len().saturating_sub(1).max(1);
        let k = rand::random_range(0..others);
        return if k >= local { k + 1 } else { k }.min(residual.len().saturating_sub(1));
    }
    let x = rand::random_range(0..total);
    residual.partition_point(|&c| c <= x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_when_the_local_zone_has_the_capacity() {
        // Upstream 50 / 50, local 40 / 60: zone 0 can take all of it.
        let s = shares(&[5000, 5000], &[4000, 6000], 0);
        assert!(
            matches!(
                s,
                State::Route {
                    local: 0,
                    local_share: BASIS,
                    ..
                }
            ),
            "{s:?}"
        );
    }

    #[test]
    fn residual_routing_follows_envoys_shares() {
        // Upstream 25 / 75 (1 of 4 hosts local), local 50 / 50: half the
        // picks stay local, the rest go to zone 1 (residual 25 %).
        let s = shares(&[2500, 7500], &[5000, 5000], 0);
        assert_eq!(
            s,
            State::Route {
                local: 0,
                local_share: 5000,
                residual: vec![0, 2500]
            }
        );
        // Three zones, local is 1: residual only where upstream > local.
        let s = shares(&[5000, 2000, 3000], &[2000, 4000, 4000], 1);
        assert_eq!(
            s,
            State::Route {
                local: 1,
                local_share: 5000,
                residual: vec![3000, 3000, 3000]
            }
        );
        assert_eq!(cross_zone(&[3000, 3000, 3000], 1), 0);
    }

    /// Picks of cluster `up` in a manager linked as a snapshot would be,
    /// per port.
    fn picks(config: serde_json::Value, n: usize) -> Vec<usize> {
        let config: Config = serde_json::from_value(config).unwrap();
        let src = ConfigSource::anonymous("test");
        let mut m = ClusterManager::build(
            &config.clusters,
            &crate::registry::Registry::new(),
            &src,
            false,
        )
        .unwrap();
        link(&mut m, &config, &src, true).unwrap();
        let up = m.get("up").unwrap().clone();
        let ctx = crate::lb::LbContext::default();
        let mut v = [0; 9];
        for _ in 0..n {
            v[usize::from(up.choose(&ctx, &[]).unwrap().address.port())] += 1;
        }
        v[1..].to_vec()
    }

    fn config(local: &[&str], upstream: &[&str], fail: bool) -> serde_json::Value {
        let eps = |zones: &[&str], base: u16| -> Vec<serde_json::Value> {
            zones
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    serde_json::json!({
                        "address": format!("127.0.0.1:{}", base + i as u16),
                        "locality": {"zone": z},
                    })
                })
                .collect()
        };
        serde_json::json!({
            "node": {"id": "n", "locality": {"zone": "a"}},
            "cluster_manager": {"local_cluster_name": "local"},
            "clusters": [
                {"name": "local", "endpoints": eps(local, 100)},
                {"name": "up", "endpoints": eps(upstream, 1),
                 "common_lb_config": {"zone_aware_lb_config": {
                     "min_cluster_size": 2, "fail_traffic_on_panic": fail}}},
            ],
        })
    }

    #[test]
    fn picks_follow_the_local_and_upstream_shares() {
        // Local 50/50, upstream a 2 of 8: half the picks stay in a.
        let up = ["a", "a", "b", "b", "b", "b", "b", "b"];
        let got = picks(config(&["a", "b"], &up, false), 8000);
        let a: usize = got[..2].iter().sum();
        assert!((3700..=4300).contains(&a), "{got:?}");
        // Local 25/75: zone a's 25 % suffices: all of it there.
        let got = picks(config(&["a", "b", "b", "b"], &up, false), 1000);
        assert_eq!(got[..2].iter().sum::<usize>(), 1000, "{got:?}");
        // No local host in zone a: plain balancing (the local cluster is
        // not usable for zone routing).
        let got = picks(config(&["b", "b"], &up, false), 8000);
        let a: usize = got[..2].iter().sum();
        assert!((1700..=2300).contains(&a), "{got:?}");
    }

    #[test]
    fn fail_traffic_on_panic_fails_picks_of_a_cluster_in_panic() {
        let config: Config =
            serde_json::from_value(config(&["a", "b"], &["a", "b", "b"], true)).unwrap();
        let src = ConfigSource::anonymous("test");
        let mut m = ClusterManager::build(
            &config.clusters,
            &crate::registry::Registry::new(),
            &src,
            false,
        )
        .unwrap();
        link(&mut m, &config, &src, true).unwrap();
        let up = m.get("up").unwrap().clone();
        let ctx = crate::lb::LbContext::default();
        assert!(up.choose(&ctx, &[]).is_some());
        // Two of three failed: 33 % < 50 %, panic: no endpoint at all.
        for e in &up.hosts().endpoints[1..] {
            e.health_flags()
                .set_flag(crate::pool::HealthFlags::FAILED_OUTLIER_CHECK);
        }
        assert!(up.choose(&ctx, &[]).is_none());
    }

    #[test]
    fn cross_zone_spreads_by_residual_capacity() {
        let mut n = [0u32; 3];
        for _ in 0..9000 {
            n[cross_zone(&[0, 1000, 3000], 0)] += 1;
        }
        // Residual capacities 1000 and 2000: a third and two thirds.
        assert_eq!(n[0], 0);
        assert!((2700..3300).contains(&n[1]), "{n:?}");
        // No residual anywhere: uniform over the others.
        let mut n = [0u32; 3];
        for _ in 0..3000 {
            n[cross_zone(&[0, 0, 0], 1)] += 1;
        }
        assert_eq!(n[1], 0);
        assert!(n[0] > 1200 && n[2] > 1200, "{n:?}");
    }
}
