//! Locality-weighted load balancing (Envoy's
//! `common_lb_config.locality_weighted_lb_config`): within the priority
//! `priority::choose` picked, endpoints with the same `locality` form a
//! group with its own `LoadBalancer`; a group is picked with probability
//! proportional to its effective weight, Envoy's
//! `locality_weight × min(1, overprovisioning × healthy share)` (degraded
//! share when the pick is for degraded endpoints), then an endpoint within
//! it. The effective weights live in the priority `LoadState` as
//! cumulative tables, recomputed with the priority loads on a health
//! generation change; a pick is one random draw and a binary search over
//! the (few) localities of the priority. Panic ignores localities, as in
//! Envoy.

use super::Endpoint;
use crate::config::locality::Locality;
use crate::config::{ClusterConfig, ConfigSource, EndpointConfig};
use crate::error::ConfigError;
use crate::lb::{LbContext, LoadBalancer, LoadBalancerBuilder};
use crate::pool::Health;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Copies an endpoint config's locality identity and weight onto `ep`.
pub(super) fn apply(ep: &mut Endpoint, e: &EndpointConfig) {
    ep.locality = e.locality.clone().map(Arc::new);
    ep.locality_weight = e.locality_weight.unwrap_or(0);
    ep.locality_transport_socket_match = e
        .locality_metadata
        .get(crate::config::TRANSPORT_SOCKET_MATCH)
        .cloned()
        .map(Arc::new);
}

/// Checks the locality fields of a cluster config (bad values name their
/// field) and says whether locality-weighted balancing is on.
pub(super) fn check(
    c: &ClusterConfig,
    path: &str,
    source: &ConfigSource,
) -> Result<bool, ConfigError> {
    let mut seen: BTreeMap<(u32, Option<&Locality>), Option<u32>> = BTreeMap::new();
    for (j, e) in c.endpoints.iter().enumerate() {
        let field = || format!("{path}.endpoints[{j}].locality_weight");
        if e.locality_weight == Some(0) {
            return Err(source.error(field(), "must be >= 1"));
        }
        let key = (e.priority, e.locality.as_ref());
        match seen.get(&key) {
            Some(w) if *w != e.locality_weight => {
                return Err(source.error(
                    field(),
                    "differs from an earlier endpoint of the same locality and priority \
                     (the weight belongs to the locality)",
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(key, e.locality_weight);
            }
        }
    }
    Ok(c.common_lb_config
        .as_ref()
        .is_some_and(|l| l.locality_weighted_lb_config.is_some()))
}

/// The locality groups of one priority; empty when it has one locality.
#[derive(Default)]
pub struct Groups {
    groups: Vec<Group>,
}

struct Group {
    /// Host-set indexes.
    members: Box<[usize]>,
    lb: Box<dyn LoadBalancer>,
    weight: u32,
}

impl Groups {
    /// Groups `members` (host-set indexes of one priority) by locality.
    pub(super) fn build(
        endpoints: &[Arc<Endpoint>],
        members: &[usize],
        builder: &dyn LoadBalancerBuilder,
    ) -> Self {
        let mut by: BTreeMap<Option<&Locality>, Vec<usize>> = BTreeMap::new();
        for &i in members {
            by.entry(endpoints[i].locality.as_deref())
                .or_default()
                .push(i);
        }
        if by.len() <= 1 {
            return Self::default();
        }
        let groups = by
            .into_values()
            .map(|m| {
                let eps: Vec<Arc<Endpoint>> = m.iter().map(|&i| endpoints[i].clone()).collect();
                Group {
                    weight: endpoints[m[0]].locality_weight,
                    lb: builder.build(&eps),
                    members: m.into_boxed_slice(),
                }
            })
            .collect();
        Self { groups }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.groups.len()
    }

    /// The locality of group `g`.
    pub(super) fn locality<'a>(
        &self,
        g: usize,
        endpoints: &'a [Arc<Endpoint>],
    ) -> Option<&'a Locality> {
        let i = *self.groups.get(g)?.members.first()?;
        endpoints.get(i)?.locality.as_deref()
    }

    /// How many endpoints of group `g` are healthy.
    pub(super) fn healthy(&self, g: usize, endpoints: &[Arc<Endpoint>]) -> u64 {
        self.groups.get(g).map_or(0, |g| {
            g.members
                .iter()
                .filter(|&&i| endpoints[i].health() == Health::Healthy)
                .count() as u64
        })
    }

    /// An endpoint of group `g` (zone-aware routing's choice).
    pub(super) fn pick_group(
        &self,
        g: usize,
        ctx: &LbContext,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let g = self.groups.get(g)?;
        g.lb.pick(ctx, &|j| ok(g.members[j])).map(|j| g.members[j])
    }

    /// The cumulative effective weights for healthy and degraded picks.
    pub(super) fn loads(&self, endpoints: &[Arc<Endpoint>], factor: u32) -> Loads {
        let mut l = Loads::default();
        let (mut ah, mut ad) = (0.0, 0.0);
        for g in &self.groups {
            let total = g.members.len() as f64;
            let (mut h, mut d) = (0u32, 0u32);
            for &i in g.members.iter() {
                match endpoints[i].health() {
                    Health::Healthy => h += 1,
                    Health::Degraded => d += 1,
                    Health::Unhealthy => {}
                }
            }
            let eff = |n: u32| {
                f64::from(g.weight) * (f64::from(factor) / 100.0 * f64::from(n) / total).min(1.0)
            };
            ah += eff(h);
            ad += eff(d);
            l.healthy.push(ah);
            l.degraded.push(ad);
        }
        l
    }

    /// Picks a locality by `cumulative` weights, then an endpoint in it;
    /// `None` when no locality has weight or the chosen one has nothing
    /// usable (the caller then picks over the whole priority).
    pub(super) fn pick(
        &self,
        cumulative: &[f64],
        ctx: &LbContext,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let total = *cumulative.last()?;
        if total <= 0.0 {
            return None;
        }
        // A hash picks its locality deterministically, like its endpoint.
        let x = match ctx.hash {
            Some(h) => (h as u32) as f64 / (f64::from(u32::MAX) + 1.0) * total,
            None => rand::random::<f64>() * total,
        };
        let g = self.groups.get(cumulative.partition_point(|&c| c <= x))?;
        g.lb.pick(ctx, &|j| ok(g.members[j])).map(|j| g.members[j])
    }
}

/// Cumulative effective locality weights of one priority.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loads {
    pub(super) healthy: Vec<f64>,
    pub(super) degraded: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;
    use crate::pool::HealthFlags;
    use crate::registry::Registry;

    fn cluster(v: serde_json::Value) -> Result<Arc<super::super::Cluster>, ConfigError> {
        let cfg: ClusterConfig = serde_json::from_value(v).unwrap();
        let m = super::super::ClusterManager::build(
            &imbl::vector![Arc::new(cfg)],
            &Registry::new(),
            &ConfigSource::anonymous("test"),
            false,
        )?;
        Ok(m.get("a").unwrap().clone())
    }

    fn counts(a: &super::super::Cluster, n: usize) -> Vec<usize> {
        let ctx = LbContext::default();
        let mut v = [0; 6];
        for _ in 0..n {
            v[usize::from(a.choose(&ctx, &[]).unwrap().address.port())] += 1;
        }
        v[1..].to_vec()
    }

    #[test]
    fn localities_share_by_weight_times_availability() {
        let a = cluster(serde_json::json!({
            "name": "a",
            "common_lb_config": {"locality_weighted_lb_config": {}},
            "endpoints": [
                {"address": "127.0.0.1:1", "locality": {"zone": "a"}, "locality_weight": 3},
                {"address": "127.0.0.1:2", "locality": {"zone": "a"}, "locality_weight": 3},
                {"address": "127.0.0.1:3", "locality": {"zone": "b"}, "locality_weight": 1},
                {"address": "127.0.0.1:4", "locality": {"zone": "b"}, "locality_weight": 1},
                {"address": "127.0.0.1:5", "locality": {"zone": "c"}},
            ],
        }))
        .unwrap();
        let got = counts(&a, 8000);
        let za = got[0] + got[1];
        assert!((5700..=6300).contains(&za), "{got:?}");
        assert_eq!(got[4], 0, "a locality without weight gets nothing: {got:?}");
        // Zone a half healthy: 3 × min(1, 1.4 × 0.5) = 2.1 against 1.
        let eps = a.hosts().endpoints.clone();
        eps[0]
            .health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        let got = counts(&a, 8000);
        assert_eq!(got[0], 0, "{got:?}");
        let share = got[1] as f64 / 8000.0;
        assert!((share - 2.1 / 3.1).abs() < 0.03, "{got:?}");
        // Zone a all unhealthy: nothing there.
        eps[1]
            .health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        let got = counts(&a, 2000);
        assert_eq!(got[0] + got[1], 0, "{got:?}");
    }

    #[test]
    fn without_the_lb_config_localities_are_ignored_and_bad_weights_named() {
        let a = cluster(serde_json::json!({
            "name": "a",
            "endpoints": [
                {"address": "127.0.0.1:1", "locality": {"zone": "a"}, "locality_weight": 9},
                {"address": "127.0.0.1:2", "locality": {"zone": "b"}, "locality_weight": 1},
            ],
        }))
        .unwrap();
        let got = counts(&a, 1000);
        assert_eq!(got[0], 500, "{got:?}");
        let e = cluster(serde_json::json!({
            "name": "a",
            "endpoints": [
                {"address": "127.0.0.1:1", "locality": {"zone": "a"}, "locality_weight": 2},
                {"address": "127.0.0.1:2", "locality": {"zone": "a"}, "locality_weight": 1},
            ],
        }))
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("endpoints[1].locality_weight"),
            "{e}"
        );
        let e = cluster(serde_json::json!({
            "name": "a",
            "endpoints": [{"address": "127.0.0.1:1", "locality_weight": 0}],
        }))
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("endpoints[0].locality_weight"),
            "{e}"
        );
    }
}
