//! The overload manager: protects meshgate itself (Envoy's overload
//! manager, bootstrap `overload_manager`). It owns the resource monitors
//! (heap, downstream connections, cgroup memory, buffered body bytes),
//! the actions and their triggers, and the one task that refreshes them
//! off the request path.
//!
//! The request path reads the state through one relaxed atomic load per
//! check (`refuse_request`, `keepalive_disabled`, `admit_connection`): no
//! lock and no allocation, and every action is off (all zero) when no
//! overload manager is configured.

pub mod buffer;
mod monitors;
pub mod timers;

use crate::config::ConfigSource;
use crate::config::overload::{
    BufferedBytesConfig, CgroupMemoryConfig, DownstreamConnectionsConfig, FixedHeapConfig,
    OverloadManagerConfig, ScaledTrigger, ThresholdTrigger,
};
use crate::error::ConfigError;
use crate::metrics::names;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The resource monitors meshgate knows, by Envoy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    FixedHeap = 0,
    DownstreamConnections = 1,
    CgroupMemory = 2,
    BufferedBytes = 3,
}

impl Monitor {
    const ALL: [Monitor; 4] = [
        Monitor::FixedHeap,
        Monitor::DownstreamConnections,
        Monitor::CgroupMemory,
        Monitor::BufferedBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Monitor::FixedHeap => "envoy.resource_monitors.fixed_heap",
            Monitor::DownstreamConnections => {
                "envoy.resource_monitors.global_downstream_max_connections"
            }
            Monitor::CgroupMemory => "envoy.resource_monitors.cgroup_memory",
            Monitor::BufferedBytes => "meshgate.resource_monitors.buffered_bytes",
        }
    }

    /// The type URL an `"@type"` in its `typed_config` must have.
    fn type_url(self) -> &'static str {
        match self {
            Monitor::FixedHeap => {
                "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
            }
            Monitor::DownstreamConnections => {
                "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
            }
            Monitor::CgroupMemory => {
                "type.googleapis.com/envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig"
            }
            Monitor::BufferedBytes => {
                "type.googleapis.com/meshgate.resource_monitors.BufferedBytesConfig"
            }
        }
    }

    fn by_name(name: &str) -> Option<Monitor> {
        Monitor::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The actions meshgate knows, by Envoy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    StopAcceptingConnections = 0,
    StopAcceptingRequests = 1,
    DisableHttpKeepalive = 2,
    ShrinkHeap = 3,
    ResetHighMemoryStreams = 4,
    ReduceTimeouts = 5,
}

/// How many actions meshgate knows.
const ACTIONS: usize = 6;

impl Action {
    const ALL: [Action; ACTIONS] = [
        Action::StopAcceptingConnections,
        Action::StopAcceptingRequests,
        Action::DisableHttpKeepalive,
        Action::ShrinkHeap,
        Action::ResetHighMemoryStreams,
        Action::ReduceTimeouts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::StopAcceptingConnections => "envoy.overload_actions.stop_accepting_connections",
            Action::StopAcceptingRequests => "envoy.overload_actions.stop_accepting_requests",
            Action::DisableHttpKeepalive => "envoy.overload_actions.disable_http_keepalive",
            Action::ShrinkHeap => "envoy.overload_actions.shrink_heap",
            Action::ResetHighMemoryStreams => "envoy.overload_actions.reset_high_memory_streams",
            Action::ReduceTimeouts => "envoy.overload_actions.reduce_timeouts",
        }
    }

    fn by_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A trigger, checked: its monitor and how pressure maps to a scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub monitor: Monitor,
    pub kind: TriggerKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TriggerKind {
    Threshold(f64),
    Scaled { scaling: f64, saturation: f64 },
}

impl TriggerKind {
    /// The action scale (0..=1) at `pressure` (0..=1, or above).
    pub fn scale(self, pressure: f64) -> f64 {
        match self {
            TriggerKind::Threshold(v) => {
                if pressure >= v {
                    1.0
                } else {
                    0.0
                }
            }
            TriggerKind::Scaled {
                scaling,
                saturation,
            } => {
                if pressure >= saturation {
                    1.0
                } else if pressure < scaling {
                    0.0
                } else {
                    (pressure - scaling) / (saturation - scaling)
                }
            }
        }
    }
}

/// A checked overload manager config: what the monitor task runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub refresh_interval: Duration,
    pub fixed_heap: Option<u64>,
    pub max_connections: Option<u64>,
    /// The cgroup's limit (or the configured one when smaller) and where
    /// its usage is read.
    pub cgroup: Option<monitors::Cgroup>,
    pub max_buffered_bytes: Option<u64>,
    /// Per action (`Action as usize`), its triggers; empty: not configured.
    pub actions: [Vec<Trigger>; ACTIONS],
    /// `reduce_timeouts`'s timers and their minimums, when configured.
    pub timers: Option<timers::Minimums>,
}

fn typed<T: serde::de::DeserializeOwned>(
    source: &ConfigSource,
    field: &str,
    value: &serde_json::Value,
) -> Result<T, ConfigError> {
    crate::config::parse_typed(value).map_err(|e| source.build_error(field, e))
}

fn check_type_url(
    source: &ConfigSource,
    field: &str,
    got: &Option<String>,
    want: &str,
) -> Result<(), ConfigError> {
    match got {
        Some(t) if t != want => Err(source.error(
            format!("{field}.@type"),
            format!("'{t}' is not this monitor's config; want '{want}'"),
        )),
        _ => Ok(()),
    }
}

fn unit(source: &ConfigSource, field: String, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(source.error(field, format!("{v} is not between 0 and 1")))
    }
}

impl Plan {
    /// Checks `cfg` (the config's `overload_manager`); errors name the field.
    pub fn build(cfg: &OverloadManagerConfig, source: &ConfigSource) -> Result<Plan, ConfigError> {
        const F: &str = "overload_manager";
        if cfg.refresh_interval.is_zero() {
            return Err(source.error(format!("{F}.refresh_interval"), "must be greater than 0"));
        }
        if cfg.resource_monitors.is_empty() {
            return Err(source.error(
                format!("{F}.resource_monitors"),
                "at least one resource monitor is required",
            ));
        }
        let mut plan = Plan {
            refresh_interval: cfg.refresh_interval,
            fixed_heap: None,
            max_connections: None,
            cgroup: None,
            max_buffered_bytes: None,
            actions: Default::default(),
            timers: None,
        };
        let mut seen: Vec<Monitor> = Vec::new();
        for (i, m) in cfg.resource_monitors.iter().enumerate() {
            let field = format!("{F}.resource_monitors[{i}]");
            let Some(kind) = Monitor::by_name(&m.name) else {
                return Err(source.error(
                    format!("{field}.name"),
                    format!(
                        "unknown resource monitor '{}'; known: {}",
                        m.name,
                        Monitor::ALL.map(|m| m.name()).join(", ")
                    ),
                ));
            };
            if seen.contains(&kind) {
                return Err(source.error(
                    format!("{field}.name"),
                    format!("resource monitor '{}' is configured twice", m.name),
                ));
            }
            seen.push(kind);
            let tf = format!("{field}.typed_config");
            let positive = |v: u64, name: &str| {
                if v == 0 {
                    Err(source.error(format!("{tf}.{name}"), "must be greater than 0"))
                } else {
                    Ok(v)
                }
            };
            match kind {
                Monitor::FixedHeap => {
                    let c: FixedHeapConfig = typed(source, &tf, &m.typed_config)?;
                    check_type_url(source, &tf, &c.type_url, kind.type_url())?;
                    plan.fixed_heap = Some(positive(c.max_heap_size_bytes, "max_heap_size_bytes")?);
                }
                Monitor::DownstreamConnections => {
                    let c: DownstreamConnectionsConfig = typed(source, &tf, &m.typed_config)?;
                    check_type_url(source, &tf, &c.type_url, kind.type_url())?;
                    plan.max_connections = Some(positive(
                        c.max_active_downstream_connections,
                        "max_active_downstream_connections",
                    )?);
                }
                Monitor::CgroupMemory => {
                    let c: CgroupMemoryConfig = typed(source, &tf, &m.typed_config)?;
                    check_type_url(source, &tf, &c.type_url, kind.type_url())?;
                    if let Some(v) = c.max_memory_bytes {
                        positive(v, "max_memory_bytes")?;
                    }
                    let cg = monitors::Cgroup::find(c.max_memory_bytes).map_err(|why| {
                        source.error(format!("{field}.name"), format!("cgroup memory: {why}"))
                    })?;
                    plan.cgroup = Some(cg);
                }
                Monitor::BufferedBytes => {
                    let c: BufferedBytesConfig = typed(source, &tf, &m.typed_config)?;
                    check_type_url(source, &tf, &c.type_url, kind.type_url())?;
                    plan.max_buffered_bytes =
                        Some(positive(c.max_buffered_bytes, "max_buffered_bytes")?);
                }
            }
        }
        for (i, a) in cfg.actions.iter().enumerate() {
            let field = format!("{F}.actions[{i}]");
            let Some(action) = Action::by_name(&a.name) else {
                let why = format!(
                    "unknown overload action '{}'; known: {}",
                    a.name,
                    Action::ALL.map(|a| a.name()).join(", ")
                );
                return Err(source.error(format!("{field}.name"), why));
            };
            if !plan.actions[action as usize].is_empty() {
                return Err(source.error(
                    format!("{field}.name"),
                    format!("overload action '{}' is configured twice", a.name),
                ));
            }
            if action == Action::ReduceTimeouts {
                plan.timers = Some(timers::build(source, &field, &a.typed_config)?);
            } else if !a.typed_config.is_null() {
                return Err(source.error(
                    format!("{field}.typed_config"),
                    format!("'{}' takes no typed_config", a.name),
                ));
            }
            if a.triggers.is_empty() {
                return Err(source.error(
                    format!("{field}.triggers"),
                    "at least one trigger is required",
                ));
            }
            let mut triggers = Vec::with_capacity(a.triggers.len());
            for (j, t) in a.triggers.iter().enumerate() {
                let tf = format!("{field}.triggers[{j}]");
                let monitor = match Monitor::by_name(&t.name) {
                    Some(m) if seen.contains(&m) => m,
                    _ => {
                        return Err(source.error(
                            format!("{tf}.name"),
                            format!(
                                "'{}' is not one of the configured resource_monitors",
                                t.name
                            ),
                        ));
                    }
                };
                let kind = match (&t.threshold, &t.scaled) {
                    (Some(ThresholdTrigger { value }), None) => TriggerKind::Threshold(unit(
                        source,
                        format!("{tf}.threshold.value"),
                        *value,
                    )?),
                    (
                        None,
                        Some(ScaledTrigger {
                            scaling_threshold,
                            saturation_threshold,
                        }),
                    ) => {
                        let scaling = unit(
                            source,
                            format!("{tf}.scaled.scaling_threshold"),
                            *scaling_threshold,
                        )?;
                        let saturation = unit(
                            source,
                            format!("{tf}.scaled.saturation_threshold"),
                            *saturation_threshold,
                        )?;
                        if scaling >= saturation {
                            return Err(source.error(
                                format!("{tf}.scaled.saturation_threshold"),
                                "must be greater than scaling_threshold",
                            ));
                        }
                        TriggerKind::Scaled {
                            scaling,
                            saturation,
                        }
                    }
                    _ => {
                        return Err(
                            source.error(tf, "a trigger needs exactly one of threshold and scaled")
                        );
                    }
                };
                triggers.push(Trigger { monitor, kind });
            }
            plan.actions[action as usize] = triggers;
        }
        Ok(plan)
    }

    /// Each action's scale (0..=1) for the monitors' `pressures`: the
    /// highest of its triggers'.
    pub fn scales(&self, pressures: &[f64; 4]) -> [f64; ACTIONS] {
        let mut out = [0.0; ACTIONS];
        for (i, triggers) in self.actions.iter().enumerate() {
            out[i] = triggers
                .iter()
                .map(|t| t.kind.scale(pressures[t.monitor as usize]))
                .fold(0.0, f64::max);
        }
        out
    }
}

/// An action's scale in millionths; `SATURATED` is fully active.
static ACTION_SCALE: [AtomicU32; ACTIONS] = [const { AtomicU32::new(0) }; ACTIONS];
const SATURATED: u32 = 1_000_000;

/// `max_active_downstream_connections`; `u64::MAX` when unset.
static MAX_CONNECTIONS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Downstream connections open on every listener.
static ACTIVE_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// The high-water mark of `ACTIVE_CONNECTIONS` (`take_peak_connections`).
static PEAK_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// An action's scale now (0..=1).
fn action_scale(a: Action) -> f64 {
    f64::from(ACTION_SCALE[a as usize].load(Ordering::Relaxed)) / f64::from(SATURATED)
}

fn saturated(a: Action) -> bool {
    ACTION_SCALE[a as usize].load(Ordering::Relaxed) >= SATURATED
}

/// `stop_accepting_requests` is saturated: a new request gets 503 with
/// `x-envoy-overloaded` (the codec's busy status for RPC).
#[inline]
pub fn refuse_request() -> bool {
    saturated(Action::StopAcceptingRequests)
}

/// Counts a request refused by `stop_accepting_requests`.
pub fn count_refused_request() {
    metrics::counter!(names::OVERLOAD_REQUESTS_REFUSED_TOTAL).increment(1);
}

/// `disable_http_keepalive` is saturated: HTTP/1.1 answers with
/// `connection: close`, HTTP/2 sends GOAWAY.
#[inline]
pub fn keepalive_disabled() -> bool {
    saturated(Action::DisableHttpKeepalive)
}

static KEEPALIVE_OFF: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resolves once `disable_http_keepalive` is saturated (at once if it is):
/// a multiplexed connection then sends GOAWAY.
pub async fn keepalive_off() {
    loop {
        let notified = KEEPALIVE_OFF.notified();
        if keepalive_disabled() {
            return;
        }
        notified.await;
    }
}

/// Why a new downstream connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `global_downstream_max_connections` is reached.
    MaxConnections,
    /// `stop_accepting_connections` is saturated.
    StopAccepting,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "global_downstream_max_connections",
            Refusal::StopAccepting => "stop_accepting_connections",
        }
    }
}

/// A downstream connection counted in the global count until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        ACTIVE_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits a new downstream connection, or refuses it (counted in
/// `meshgate_overload_downstream_cx_refused_total{reason}`): the caller
/// closes it.
#[inline]
pub fn admit_connection() -> Result<ConnectionGuard, Refusal> {
    let refusal = if saturated(Action::StopAcceptingConnections) {
        Some(Refusal::StopAccepting)
    } else {
        let n = ACTIVE_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        if n < MAX_CONNECTIONS.load(Ordering::Relaxed) {
            // A plain load and a rare store, not an atomic max: the peak
            // only steers when memory is handed back (`take_peak_connections`).
            if n >= PEAK_CONNECTIONS.load(Ordering::Relaxed) {
                PEAK_CONNECTIONS.store(n + 1, Ordering::Relaxed);
            }
            return Ok(ConnectionGuard(()));
        }
        ACTIVE_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        Some(Refusal::MaxConnections)
    };
    let r = refusal.unwrap_or(Refusal::MaxConnections);
    metrics::counter!(names::OVERLOAD_DOWNSTREAM_CX_REFUSED_TOTAL, "reason" => r.label())
        .increment(1);
    Err(r)
}

/// Downstream connections open now (every listener).
pub fn active_connections() -> u64 {
    ACTIVE_CONNECTIONS.load(Ordering::Relaxed)
}

/// The most downstream connections open at once since the last call
/// (about: concurrent admissions may under-count it by a few), restarting
/// the count from those open now. The allocator's tidy-up reads it to
/// notice that many connections closed, however briefly they lived.
pub fn take_peak_connections() -> u64 {
    let now = ACTIVE_CONNECTIONS.load(Ordering::Relaxed);
    PEAK_CONNECTIONS.swap(now, Ordering::Relaxed).max(now)
}

/// What the allocator offers the overload manager; the binary registers
/// it (core does not know the allocator).
pub struct AllocatorHooks {
    /// Returns free memory to the system (`shrink_heap`).
    pub release: fn(),
}

static ALLOCATOR: std::sync::OnceLock<AllocatorHooks> = std::sync::OnceLock::new();

/// Registers the allocator's hooks (once, at start).
pub fn set_allocator_hooks(h: AllocatorHooks) {
    let _ = ALLOCATOR.set(h);
}

/// The state the admin `/overload` page shows: each monitor's pressure and
/// each action's scale.
pub fn state_json() -> serde_json::Value {
    let p = monitors::last_pressures();
    let monitors: serde_json::Map<String, serde_json::Value> = Monitor::ALL
        .iter()
        .filter_map(|m| p[*m as usize].map(|v| (m.name().to_string(), serde_json::json!(v))))
        .collect();
    let actions: serde_json::Map<String, serde_json::Value> = Action::ALL
        .iter()
        .map(|a| {
            let s = ACTION_SCALE[*a as usize].load(Ordering::Relaxed) as f64 / SATURATED as f64;
            (a.name().to_string(), serde_json::json!(s))
        })
        .collect();
    serde_json::json!({
        "active_downstream_connections": active_connections(),
        "buffered_bytes": buffer::total(),
        "monitors": monitors,
        "actions": actions,
    })
}

/// Applies `plan`'s static parts (the connection limit, whether body
/// bytes are accounted) at once, so the first connection already sees
/// them; the monitor task does the rest on its first tick.
fn install(plan: Option<&Plan>) {
    let max = plan.and_then(|p| p.max_connections).unwrap_or(u64::MAX);
    MAX_CONNECTIONS.store(max, Ordering::Relaxed);
    let budget = plan.and_then(|p| p.max_buffered_bytes);
    // The lowest total at which a buffered_bytes trigger saturates
    // reset_high_memory_streams.
    let reset_at = plan.zip(budget).and_then(|(p, max)| {
        p.actions[Action::ResetHighMemoryStreams as usize]
            .iter()
            .filter(|t| t.monitor == Monitor::BufferedBytes)
            .map(|t| match t.kind {
                TriggerKind::Threshold(v) => v,
                TriggerKind::Scaled { saturation, .. } => saturation,
            })
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
            .map(|v| (v * max as f64) as u64)
    });
    buffer::configure(budget, reset_at);
    timers::install(plan.and_then(|p| p.timers));
}

/// Runs the overload manager for the live config until `stop`: every
/// `refresh_interval` the monitors are read and the actions set; a reload
/// that changes `overload_manager` takes effect at the next tick.
pub fn spawn(
    snapshot: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    stop: tokio_util::sync::CancellationToken,
) {
    install(snapshot.load().overload.as_deref());
    tokio::spawn(async move {
        let mut state = monitors::State::default();
        loop {
            let snap = snapshot.load_full();
            let plan = snap.overload.clone();
            drop(snap);
            install(plan.as_deref());
            let wait = match &plan {
                Some(p) => {
                    tick(p, &mut state);
                    p.refresh_interval
                }
                None => {
                    clear(&mut state);
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                // The buffered total went over its budget: shed now, not
                // at the next tick.
                _ = buffer::over_budget_signal(), if plan.is_some() => {}
            }
        }
    });
}

fn set_action(a: Action, scale: f64) {
    let v = (scale.clamp(0.0, 1.0) * SATURATED as f64) as u32;
    let old = ACTION_SCALE[a as usize].swap(v, Ordering::Relaxed);
    if old != v {
        metrics::gauge!(names::OVERLOAD_ACTION_SCALE, "action" => a.name()).set(scale);
        if a == Action::ReduceTimeouts {
            timers::scale_changed();
        }
        if v >= SATURATED {
            tracing::warn!(action = a.name(), "overload action active");
            if a == Action::DisableHttpKeepalive {
                KEEPALIVE_OFF.notify_waiters();
            }
        } else if old >= SATURATED {
            tracing::info!(action = a.name(), "overload action no longer active");
        }
    }
}

fn clear(state: &mut monitors::State) {
    for a in Action::ALL {
        set_action(a, 0.0);
    }
    state.clear();
}

/// One refresh: read the monitors, set the actions, run the ones that do
/// something now (shrink the heap, reset streams).
fn tick(plan: &Plan, state: &mut monitors::State) {
    let pressures = state.read(plan);
    let scales = plan.scales(&pressures);
    for a in Action::ALL {
        set_action(a, scales[a as usize]);
    }
    if scales[Action::ShrinkHeap as usize] >= 1.0
        && let Some(h) = ALLOCATOR.get()
    {
        (h.release)();
        metrics::counter!(names::OVERLOAD_SHRINK_HEAP_TOTAL).increment(1);
    }
    let reset = scales[Action::ResetHighMemoryStreams as usize];
    if reset > 0.0 {
        buffer::reset_largest(reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::overload::OverloadManagerConfig;

    fn plan(yaml: &str) -> Result<Plan, ConfigError> {
        let cfg: OverloadManagerConfig = serde_yaml::from_str(yaml).unwrap();
        Plan::build(&cfg, &ConfigSource::anonymous("t"))
    }

    #[test]
    fn triggers_scale_as_envoy_says() {
        let t = TriggerKind::Threshold(0.9);
        assert_eq!(t.scale(0.89), 0.0);
        assert_eq!(t.scale(0.9), 1.0);
        let s = TriggerKind::Scaled {
            scaling: 0.5,
            saturation: 0.9,
        };
        assert_eq!(s.scale(0.4), 0.0);
        assert!((s.scale(0.7) - 0.5).abs() < 1e-9);
        assert_eq!(s.scale(0.95), 1.0);
    }

    #[test]
    fn an_action_takes_its_highest_trigger() {
        let p = plan(
            "resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config: {max_heap_size_bytes: 100}
  - name: meshgate.resource_monitors.buffered_bytes
    typed_config: {max_buffered_bytes: 100}
actions:
  - name: envoy.overload_actions.stop_accepting_requests
    triggers:
      - name: envoy.resource_monitors.fixed_heap
        threshold: {value: 0.9}
      - name: meshgate.resource_monitors.buffered_bytes
        scaled: {scaling_threshold: 0.5, saturation_threshold: 1.0}
",
        )
        .unwrap();
        let s = plan_scales(&p, [0.1, 0.0, 0.0, 0.75]);
        assert!((s[Action::StopAcceptingRequests as usize] - 0.5).abs() < 1e-9);
        let s = plan_scales(&p, [0.95, 0.0, 0.0, 0.0]);
        assert_eq!(s[Action::StopAcceptingRequests as usize], 1.0);
        assert_eq!(s[Action::ShrinkHeap as usize], 0.0);
    }

    fn plan_scales(p: &Plan, pressures: [f64; 4]) -> [f64; ACTIONS] {
        p.scales(&pressures)
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = plan("resource_monitors:\n  - name: envoy.resource_monitors.nope\n").unwrap_err();
        assert_eq!(e.field, "overload_manager.resource_monitors[0].name");
        let e = plan(
            "resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config: {max_heap_size_byte: 100}
",
        )
        .unwrap_err();
        assert!(
            e.field
                .starts_with("overload_manager.resource_monitors[0].typed_config"),
            "{}",
            e.field
        );
        // One heap monitor, one action: (action, trigger, field at fault).
        for (action, trigger, field) in [
            (
                "envoy.overload_actions.nope",
                "{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.5}}",
                "overload_manager.actions[0].name",
            ),
            (
                "envoy.overload_actions.shrink_heap",
                "{name: envoy.resource_monitors.fixed_heap, threshold: {value: 1.5}}",
                "overload_manager.actions[0].triggers[0].threshold.value",
            ),
            (
                "envoy.overload_actions.shrink_heap",
                "{name: envoy.resource_monitors.cgroup_memory, threshold: {value: 0.5}}",
                "overload_manager.actions[0].triggers[0].name",
            ),
            (
                "envoy.overload_actions.reduce_timeouts",
                "{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.5}}",
                "overload_manager.actions[0].typed_config",
            ),
        ] {
            let e = plan(&format!(
                "resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config: {{max_heap_size_bytes: 100}}
actions:
  - name: {action}
    triggers: [{trigger}]
"
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{action} {trigger}");
        }
    }
}
