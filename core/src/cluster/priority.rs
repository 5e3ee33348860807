//! Priority load balancing over a cluster's endpoints, Envoy's way: the
//! endpoints are grouped by `priority`; each priority gets a health of
//! `min(100, overprovisioning_factor × healthy / total)` percent and its
//! share of traffic follows (what P0 lacks spills to P1, then P2...;
//! degraded endpoints take what the healthy ones of every priority leave);
//! a priority whose healthy + degraded share is below
//! `healthy_panic_threshold` is in panic (health ignored there). Within the
//! chosen priority the cluster's own `LoadBalancer` (one per priority set)
//! picks.
//!
//! Health changes reach the load computation through `health_changed`:
//! `HealthCell` calls it whenever a flag actually changes (any source:
//! active checks, outlier detection, EDS), which bumps one global
//! generation. A host set recomputes its loads (O(endpoints), rare) on the
//! first pick that sees a new generation; otherwise a pick costs one extra
//! atomic load, and when priority 0 takes all traffic (the common case)
//! it is a plain pick from priority 0's load balancer.

use super::{Cluster, Endpoint, HostSet, locality, zone};
use crate::config::priority::{DEFAULT_OVERPROVISIONING_FACTOR, DEFAULT_PANIC_THRESHOLD};
use crate::config::{ClusterConfig, ConfigSource};
use crate::error::ConfigError;
use crate::lb::{LbContext, LoadBalancer, LoadBalancerBuilder};
use crate::metrics::names;
use crate::pool::Health;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Bumped by every endpoint health change, in any cluster.
static HEALTH_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The hook of health sources: an endpoint's health flags changed, so the
/// priority loads are recomputed on the next pick. `HealthCell` calls it
/// on each actual change; a source that keeps health elsewhere calls it
/// itself.
pub fn health_changed() {
    HEALTH_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn generation() -> u64 {
    HEALTH_GENERATION.load(Ordering::Relaxed)
}

/// A cluster's validated priority policy.
pub struct Policy {
    /// Percent: 140 is Envoy's 1.4.
    overprovisioning: u32,
    /// Percent; 0 disables panic mode.
    pub(super) panic_threshold: f64,
    drop: Option<DropOverload>,
    /// The `cluster` label of `panic_total`.
    cluster: metrics::SharedString,
    /// Registered on the first request in panic mode
    /// (`crate::metrics::rare`).
    panic_total: OnceLock<metrics::Counter>,
    /// `common_lb_config.locality_weighted_lb_config` is set.
    locality_weighted: bool,
    /// `policy.weighted_priority_health`: a priority's health is its
    /// healthy share of endpoint weight, not of endpoints.
    weighted_priority_health: bool,
    /// `common_lb_config.zone_aware_lb_config`, when set.
    pub(super) zone: Option<zone::ZoneAware>,
}

struct DropOverload {
    per_million: u32,
    dropped: metrics::Counter,
}

impl Policy {
    /// Envoy's defaults (factor 1.4, panic below 50 %), no drops.
    pub fn new(cluster: &metrics::SharedString) -> Self {
        Self {
            overprovisioning: DEFAULT_OVERPROVISIONING_FACTOR,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            drop: None,
            cluster: cluster.clone(),
            panic_total: OnceLock::new(),
            locality_weighted: false,
            weighted_priority_health: false,
            zone: None,
        }
    }

    /// The policy of a cluster config; bad values name their field.
    pub fn build(
        c: &ClusterConfig,
        path: &str,
        source: &ConfigSource,
    ) -> Result<Self, ConfigError> {
        let mut p = Self::new(&crate::metrics::shared_label(&c.name));
        p.locality_weighted = locality::check(c, path, source)?;
        p.zone = zone::build(c, path, source)?;
        if let Some(t) = c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold)
        {
            if !(0.0..=100.0).contains(&t.value) {
                return Err(source.error(
                    format!("{path}.common_lb_config.healthy_panic_threshold.value"),
                    "must be a percent in [0, 100]",
                ));
            }
            p.panic_threshold = t.value;
        }
        if let Some(pol) = &c.policy {
            let pp = format!("{path}.policy");
            p.weighted_priority_health = pol.weighted_priority_health;
            if let Some(f) = pol.overprovisioning_factor {
                if f == 0 {
                    return Err(
                        source.error(format!("{pp}.overprovisioning_factor"), "must be > 0")
                    );
                }
                p.overprovisioning = f;
            }
            match pol.drop_overloads.as_slice() {
                [] => {}
                [d] => {
                    if d.category.is_empty() {
                        return Err(source.error(
                            format!("{pp}.drop_overloads[0].category"),
                            "must not be empty",
                        ));
                    }
                    p.drop = Some(DropOverload {
                        per_million: d.drop_percentage.per_million(),
                        dropped: metrics::counter!(names::CLUSTER_UPSTREAM_RQ_DROPPED_TOTAL,
                            "cluster" => c.name.clone(), "category" => d.category.clone()),
                    });
                }
                _ => {
                    return Err(source.error(
                        format!("{pp}.drop_overloads"),
                        "at most one drop_overload category is supported (as in Envoy)",
                    ));
                }
            }
        }
        Ok(p)
    }
}

impl Policy {
    fn panic_total(&self) -> &metrics::Counter {
        crate::metrics::rare(
            &self.panic_total,
            || metrics::counter!(names::CLUSTER_LB_HEALTHY_PANIC_TOTAL, "cluster" => self.cluster.clone()),
        )
    }
}

impl Cluster {
    /// Whether `drop_overloads` drops this request (answered 503 before an
    /// endpoint is chosen); counted per category.
    pub fn drop_overload(&self) -> bool {
        match &self.priority.drop {
            Some(d) if rand::random_range(0..1_000_000u32) < d.per_million => {
                d.dropped.increment(1);
                true
            }
            _ => false,
        }
    }
}

/// The priority sets of one host set, and their loads.
pub struct Levels {
    /// One per priority present, highest (lowest number) first; empty when
    /// every endpoint has the same priority (the host set's own load
    /// balancer is that priority's).
    levels: Vec<Level>,
    /// `generation << 1 | trivial` of `state`: trivial is "priority 0
    /// takes all traffic, healthy endpoints only".
    fast: AtomicU64,
    state: ArcSwap<LoadState>,
    /// Per priority (as `count`): its locality groups.
    localities: Vec<locality::Groups>,
}

struct Level {
    /// Indexes into the host set's endpoints.
    members: Box<[usize]>,
    lb: Box<dyn LoadBalancer>,
}

/// Per priority: percent of traffic to its healthy endpoints, to its
/// degraded ones, and whether it is in panic.
#[derive(Debug, Default, Clone, PartialEq)]
struct LoadState {
    healthy: Vec<u32>,
    degraded: Vec<u32>,
    panic: Vec<bool>,
    /// Per priority, with locality-weighted balancing over more than one
    /// locality: the localities' cumulative effective weights.
    locality: Vec<Option<locality::Loads>>,
    /// Zone-aware routing in priority 0.
    zone: zone::State,
}

impl Levels {
    /// Groups `endpoints` by priority, one load balancer per group.
    pub fn build(endpoints: &[Arc<Endpoint>], builder: &dyn LoadBalancerBuilder) -> Self {
        let mut prios: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let levels = if prios.len() <= 1 {
            Vec::new()
        } else {
            prios
                .iter()
                .map(|&p| {
                    let members: Box<[usize]> = (0..endpoints.len())
                        .filter(|&i| endpoints[i].priority == p)
                        .collect();
                    let eps: Vec<Arc<Endpoint>> =
                        members.iter().map(|&i| endpoints[i].clone()).collect();
                    Level {
                        lb: builder.build(&eps),
                        members,
                    }
                })
                .collect()
        };
        let localities = if levels.is_empty() {
            let all: Vec<usize> = (0..endpoints.len()).collect();
            vec![locality::Groups::build(endpoints, &all, builder)]
        } else {
            levels
                .iter()
                .map(|l| locality::Groups::build(endpoints, &l.members, builder))
                .collect()
        };
        Self {
            levels,
            localities,
            // Generation 0 is never current: the first pick computes.
            fast: AtomicU64::new(0),
            state: ArcSwap::from_pointee(LoadState::default()),
        }
    }

    fn count(&self) -> usize {
        self.levels.len().max(1)
    }

    fn members<'a>(&'a self, hosts: &'a HostSet, p: usize) -> Box<dyn Iterator<Item = usize> + 'a> {
        match self.levels.get(p) {
            Some(l) => Box::new(l.members.iter().copied()),
            None => Box::new(0..hosts.endpoints.len()),
        }
    }
}

/// Which endpoints of the chosen priority a pick may take.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Source {
    Healthy,
    Degraded,
    /// Panic: health ignored.
    All,
}

/// Percent of healthy and degraded endpoints per priority, turned into
/// traffic shares (Envoy's `recalculatePerPriorityState`).
fn compute(counts: &[(u32, u32, u32)], factor: u32, panic_threshold: f64) -> LoadState {
    let n = counts.len();
    let mut health = vec![0u32; n];
    let mut degr = vec![0u32; n];
    for (p, &(total, healthy, degraded)) in counts.iter().enumerate() {
        if total > 0 {
            let f = u64::from(factor);
            health[p] = (f * u64::from(healthy) / u64::from(total)).min(100) as u32;
            degr[p] = (f * u64::from(degraded) / u64::from(total)).min(100) as u32;
        }
    }
    let normalized = (health.iter().sum::<u32>() + degr.iter().sum::<u32>()).min(100);
    let panic = counts
        .iter()
        .map(|&(total, healthy, degraded)| {
            normalized != 100
                && panic_threshold > 0.0
                && total > 0
                && 100.0 * f64::from(healthy + degraded) / f64::from(total) < panic_threshold
        })
        .collect();
    let mut s = LoadState {
        healthy: vec![0; n],
        degraded: vec![0; n],
        panic,
        locality: Vec::new(),
        zone: zone::State::Off,
    };
    if normalized == 0 {
        // Nothing available anywhere: priority 0 takes it all (in panic
        // unless panic mode is off).
        if n > 0 {
            s.healthy[0] = 100;
        }
        return s;
    }
    let mut remaining = 100u32;
    for (load, avail) in [(&mut s.healthy, &health), (&mut s.degraded, &degr)] {
        for p in 0..n {
            load[p] = remaining.min(avail[p] * 100 / normalized);
            remaining -= load[p];
        }
    }
    if remaining > 0 {
        // Rounding: to the first priority with anything available.
        let fh = health.iter().position(|&h| h > 0).unwrap_or(n);
        let fd = degr.iter().position(|&d| d > 0).unwrap_or(n);
        if fh <= fd && fh < n {
            s.healthy[fh] += remaining;
        } else if fd < n {
            s.degraded[fd] += remaining;
        }
    }
    s
}

impl HostSet {
    /// Recomputes the loads from the endpoints' health, tagged `generation_now`.
    fn recompute(&self, policy: &Policy, generation_now: u64) -> Arc<LoadState> {
        let lv = &self.levels;
        let counts: Vec<(u32, u32, u32)> = (0..lv.count())
            .map(|p| {
                let mut c = (0u32, 0u32, 0u32);
                for i in lv.members(self, p) {
                    let e = &self.endpoints[i];
                    let n = if policy.weighted_priority_health {
                        e.weight
                    } else {
                        1
                    };
                    c.0 = c.0.saturating_add(n);
                    match e.health() {
                        Health::Healthy => c.1 = c.1.saturating_add(n),
                        Health::Degraded => c.2 = c.2.saturating_add(n),
                        Health::Unhealthy => {}
                    }
                }
                c
            })
            .collect();
        let mut s = compute(&counts, policy.overprovisioning, policy.panic_threshold);
        if policy.locality_weighted {
            s.locality = lv
                .localities
                .iter()
                .map(|g| (!g.is_empty()).then(|| g.loads(&self.endpoints, policy.overprovisioning)))
                .collect();
        }
        if let (Some(z), Some(groups)) = (&policy.zone, lv.localities.first()) {
            s.zone = z.state(groups, &self.endpoints, policy.panic_threshold);
        }
        let s = Arc::new(s);
        let trivial = s.zone == zone::State::Off
            && s.healthy.first() == Some(&100)
            && s.panic.first() == Some(&false)
            && s.locality.first().is_none_or(Option::is_none);
        lv.state.store(s.clone());
        lv.fast
            .store(generation_now << 1 | u64::from(trivial), Ordering::Relaxed);
        s
    }

    /// Picks in priority `p` from `source` (a host-set index).
    fn pick_in(&self, p: usize, ctx: &LbContext, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self.levels.levels.get(p) {
            Some(l) => l.lb.pick(ctx, &|j| ok(l.members[j])).map(|j| l.members[j]),
            None => self.lb.pick(ctx, ok),
        }
    }
}

/// Picks an endpoint index of `hosts` (non-empty) for `Cluster::choose`.
pub(super) fn choose(
    hosts: &HostSet,
    policy: &Policy,
    ctx: &LbContext,
    exclude: &[SocketAddr],
) -> Option<usize> {
    let eps = &hosts.endpoints;
    // One clock read at most, and only if an endpoint was backed off.
    let now = std::cell::OnceCell::new();
    let backoff_ok = |e: &Endpoint| {
        let until = e.backoff_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= *now.get_or_init(super::now_ms)
    };
    let usable = |i: usize, source: Source| {
        let e = &eps[i];
        let health_ok = match source {
            Source::Healthy => e.health() == Health::Healthy,
            Source::Degraded => e.health() == Health::Degraded,
            Source::All => true,
        };
        health_ok && backoff_ok(e) && !exclude.contains(&e.address)
    };
    let generation_now = generation();
    let fast = hosts.levels.fast.load(Ordering::Relaxed);
    if fast == (generation_now << 1 | 1) {
        if let Some(i) = hosts.pick_in(0, ctx, &|i| usable(i, Source::Healthy)) {
            return Some(i);
        }
    } else {
        let state = if fast >> 1 == generation_now {
            hosts.levels.state.load_full()
        } else {
            hosts.recompute(policy, generation_now)
        };
        // Envoy's choosePriority: a hash (or random) point in [0, 100).
        let point = match ctx.hash {
            Some(h) => (h % 100) as u32,
            None => rand::random_range(0..100u32),
        };
        let mut acc = 0;
        let mut chosen = None;
        'find: for (loads, source) in [
            (&state.healthy, Source::Healthy),
            (&state.degraded, Source::Degraded),
        ] {
            for (p, &l) in loads.iter().enumerate() {
                acc += l;
                if point < acc {
                    chosen = Some((p, source));
                    break 'find;
                }
            }
        }
        if let Some((p, mut source)) = chosen {
            if state.panic.get(p) == Some(&true) {
                policy.panic_total().increment(1);
                if policy
                    .zone
                    .as_ref()
                    .is_some_and(|z| z.fail_traffic_on_panic)
                {
                    return None;
                }
                source = Source::All;
            } else if p == 0
                && source == Source::Healthy
                && let Some(z) = &policy.zone
            {
                match z.choose_group(&state.zone) {
                    Err(()) => return None,
                    Ok(None) => {}
                    Ok(Some(g)) => {
                        if let Some(i) = hosts.levels.localities.first().and_then(|groups| {
                            groups.pick_group(g, ctx, &|i| usable(i, Source::Healthy))
                        }) {
                            return Some(i);
                        }
                    }
                }
            }
            // Locality-weighted: a locality of the priority first (not in
            // panic, as Envoy).
            if let (Some(Some(loads)), Some(groups)) =
                (state.locality.get(p), hosts.levels.localities.get(p))
            {
                let cumulative = match source {
                    Source::Healthy => Some(&loads.healthy),
                    Source::Degraded => Some(&loads.degraded),
                    Source::All => None,
                };
                if let Some(i) =
                    cumulative.and_then(|c| groups.pick(c, ctx, &|i| usable(i, source)))
                {
                    return Some(i);
                }
            }
            if let Some(i) = hosts.pick_in(p, ctx, &|i| usable(i, source)) {
                return Some(i);
            }
        }
    }
    // The chosen set had nothing usable (back-off, already tried):
    // healthy, then degraded endpoints of any priority, in order.
    for source in [Source::Healthy, Source::Degraded] {
        for p in 0..hosts.levels.count() {
            if let Some(i) = hosts.pick_in(p, ctx, &|i| usable(i, source)) {
                return Some(i);
            }
        }
    }
    // Then any endpoint not tried yet, unless panic mode is off.
    if policy.panic_threshold > 0.0 {
        return hosts.lb.pick(ctx, &|i| !exclude.contains(&eps[i].address));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(counts: &[(u32, u32, u32)]) -> (Vec<u32>, Vec<u32>, Vec<bool>) {
        let s = compute(counts, 140, 50.0);
        (s.healthy, s.degraded, s.panic)
    }

    #[test]
    fn picks_follow_health_flag_changes_without_a_call() {
        use crate::config::ConfigSource;
        use crate::pool::HealthFlags;
        use crate::registry::Registry;
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "a",
            "endpoints": [
                {"address": "127.0.0.1:1"},
                {"address": "127.0.0.1:2"},
                {"address": "127.0.0.1:3", "priority": 1},
            ],
        }))
        .unwrap();
        let m = super::super::ClusterManager::build(
            &imbl::vector![Arc::new(cfg)],
            &Registry::new(),
            &ConfigSource::anonymous("test"),
            false,
        )
        .unwrap();
        let a = m.get("a").unwrap().clone();
        let ctx = LbContext::default();
        let ports = |n: usize| -> Vec<u16> {
            let mut v = [0; 4];
            for _ in 0..n {
                v[usize::from(a.choose(&ctx, &[]).unwrap().address.port())] += 1;
            }
            v[1..].to_vec()
        };
        assert_eq!(ports(100)[2], 0);
        // An outlier flag on one P0 endpoint: 70 / 30, no notification
        // but the flag itself.
        let eps = a.hosts().endpoints.clone();
        eps[1]
            .health_flags()
            .set_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        let got = ports(4000);
        assert_eq!(got[1], 0, "{got:?}");
        assert!((2600..=3000).contains(&got[0]), "{got:?}");
        // Back to healthy: P0 only again.
        eps[1]
            .health_flags()
            .clear_flag(HealthFlags::FAILED_OUTLIER_CHECK);
        assert_eq!(ports(100)[2], 0);
        // A retry excluding both P0 endpoints goes to P1.
        let tried = [eps[0].address, eps[1].address];
        assert_eq!(a.choose(&ctx, &tried).unwrap().address.port(), 3);
    }

    #[test]
    fn priority_loads_follow_envoys_table() {
        // All healthy: P0 takes everything.
        assert_eq!(loads(&[(10, 10, 0), (10, 10, 0)]).0, vec![100, 0]);
        // 72 % healthy × 1.4 = 100: still everything.
        assert_eq!(loads(&[(100, 72, 0), (10, 10, 0)]).0, vec![100, 0]);
        // Envoy's documented examples: 71 % → 99/1, 50 % → 70/30,
        // 20 % → 28/72, none → 0/100.
        assert_eq!(loads(&[(100, 71, 0), (10, 10, 0)]).0, vec![99, 1]);
        assert_eq!(loads(&[(2, 1, 0), (10, 10, 0)]).0, vec![70, 30]);
        assert_eq!(loads(&[(5, 1, 0), (10, 10, 0)]).0, vec![28, 72]);
        assert_eq!(loads(&[(5, 0, 0), (10, 10, 0)]).0, vec![0, 100]);
        // Three priorities, P1 half healthy: 28 / 70 / 2.
        assert_eq!(
            loads(&[(5, 1, 0), (2, 1, 0), (10, 10, 0)]).0,
            vec![28, 70, 2]
        );
        // Both short: normalised over their sum (28 + 42 = 70).
        let (h, _, panic) = loads(&[(5, 1, 0), (10, 3, 0)]);
        assert_eq!(h, vec![40, 60]);
        assert_eq!(panic, vec![true, true]);
    }

    #[test]
    fn degraded_endpoints_take_only_what_healthy_ones_leave() {
        // P0: 1 healthy, 1 degraded of 2 → 70 healthy + 70 degraded; P1
        // all healthy: healthy of every priority first.
        let (h, d, _) = loads(&[(2, 1, 1), (4, 4, 0)]);
        assert_eq!((h, d), (vec![70, 30], vec![0, 0]));
        // P1 half healthy: 70 + 70 = 140 healthy: P1 gets 30, no degraded.
        // P0 all degraded, P1 a quarter healthy: 35 healthy to P1, the
        // remaining 65 to P0's degraded endpoints.
        let (h, d, _) = loads(&[(2, 0, 2), (4, 1, 0)]);
        assert_eq!((h, d), (vec![0, 35], vec![65, 0]));
    }

    #[test]
    fn panic_below_the_threshold_and_nothing_available() {
        // One priority, 1 of 4 healthy: 35 % < 100 and 25 % < 50: panic.
        let (h, _, p) = loads(&[(4, 1, 0)]);
        assert_eq!((h, p), (vec![100], vec![true]));
        // 2 of 4 healthy: 70 %, not below 50 %: no panic.
        assert_eq!(loads(&[(4, 2, 0)]).2, vec![false]);
        // Nothing healthy: all to P0, in panic; not with panic mode off.
        let s = compute(&[(4, 0, 0), (2, 0, 0)], 140, 50.0);
        assert_eq!((s.healthy, s.panic), (vec![100, 0], vec![true, true]));
        let s = compute(&[(4, 0, 0)], 140, 0.0);
        assert_eq!((s.healthy, s.panic), (vec![100], vec![false]));
        // Factor 1.0: 3 of 4 healthy gives 75 / 25.
        let s = compute(&[(4, 3, 0), (1, 1, 0)], 100, 50.0);
        assert_eq!(s.healthy, vec![75, 25]);
    }
}
