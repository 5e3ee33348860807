//! Process-level admin endpoints: `/server_info`, `/memory`, `/logging`
//! and the `/healthcheck/fail` flag. The binary plugs in what core cannot
//! know (the log filter's reload handle, the allocator's figures) once at
//! start-up through [`set_log_control`] and [`set_memory_source`].

use super::{AdminState, Control};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Changes the process's log filter at run time (the binary holds the
/// `tracing-subscriber` reload handle).
pub trait LogControl: Send + Sync {
    /// The active filter, e.g. `info,meshgate_core::admin=debug`.
    fn current(&self) -> String;
    /// Replaces the active filter; `Err` says why `filter` was refused.
    fn set(&self, filter: &str) -> Result<(), String>;
}

static LOG_CONTROL: OnceLock<Box<dyn LogControl>> = OnceLock::new();

/// Installs the log filter's control (once; later calls are ignored).
pub fn set_log_control(c: Box<dyn LogControl>) {
    let _ = LOG_CONTROL.set(c);
}

/// The allocator's figures, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryInfo {
    pub allocator: &'static str,
    /// Memory the allocator has committed (handed out or cached).
    pub allocated: u64,
    pub peak_allocated: u64,
}

static MEMORY: OnceLock<fn() -> MemoryInfo> = OnceLock::new();

/// Installs the allocator's figures for `/memory` (once).
pub fn set_memory_source(f: fn() -> MemoryInfo) {
    let _ = MEMORY.set(f);
}

static HEALTH_CHECK_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether `/healthcheck/fail` is in force: `/ready` answers 503, and a
/// health-check responder (none ships yet) should answer unhealthy.
pub fn health_check_failed() -> bool {
    HEALTH_CHECK_FAILED.load(Ordering::Relaxed)
}

pub(super) fn set_health_check_failed(failed: bool) {
    HEALTH_CHECK_FAILED.store(failed, Ordering::Relaxed);
    metrics::gauge!(crate::metrics::names::SERVER_HEALTH_CHECK_FAILED).set(if failed {
        1.0
    } else {
        0.0
    });
    tracing::info!(failed, "admin health check state changed");
}

/// Gauges read at scrape time rather than kept current.
pub(super) fn refresh_gauges(c: &Control) {
    metrics::gauge!(crate::metrics::names::SERVER_UPTIME_SECONDS)
        .set(c.started.elapsed().as_secs_f64());
    metrics::gauge!(crate::metrics::names::SERVER_HEALTH_CHECK_FAILED)
        .set(if health_check_failed() { 1.0 } else { 0.0 });
}

/// `/server_info`, with Envoy's field names where they exist.
pub(super) fn server_info(state: &AdminState) -> serde_json::Value {
    let snap = state.snapshot.load();
    let state_name = if state.draining.load(Ordering::Relaxed) || health_check_failed() {
        "DRAINING"
    } else if snap.config.dynamic_resources.is_some() && snap.dynamic.is_none() {
        // xDS configured, no resources applied yet.
        "PRE_INITIALIZING"
    } else {
        "LIVE"
    };
    let uptime = state.control.started.elapsed().as_secs();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "state": state_name,
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
        // meshgate upgrades by reload, not by Envoy's hot restart.
        "hot_restart_version": "disabled",
        "node": snap.config.node.as_ref().map(|n| serde_json::json!({"id": n.id})),
        "command_line_options": std::env::args().collect::<Vec<_>>(),
        "config_version": snap.version,
        "listeners_drained": state.control.listeners_drained.load(Ordering::Relaxed),
    })
}

/// `/memory`: the allocator's committed bytes and the process's resident
/// set (from /proc, in pages of the system's size).
pub(super) fn memory() -> serde_json::Value {
    let alloc = MEMORY.get().map(|f| f()).unwrap_or_default();
    let page = page_size();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut it = statm
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let virt = it.next().unwrap_or(0) * page;
    let rss = it.next().unwrap_or(0) * page;
    serde_json::json!({
        "allocator": if alloc.allocator.is_empty() { "system" } else { alloc.allocator },
        "allocated": alloc.allocated,
        "peak_allocated": alloc.peak_allocated,
        "resident": rss,
        "virtual": virt,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// `GET /logging`: the active filter.
pub(super) fn logging_levels() -> String {
    match LOG_CONTROL.get() {
        Some(c) => format!("active filter: {}\n", c.current()),
        None => "log levels cannot be changed in this binary\n".into(),
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `POST /logging?level=L` sets every target's level; `?paths=a:L,b:L`
/// sets the level of those targets (Rust module paths, e.g.
/// `meshgate_core::admin`), keeping the rest of the filter.
pub(super) fn set_logging(q: &[(String, String)]) -> Result<String, String> {
    let c = LOG_CONTROL
        .get()
        .ok_or("log levels cannot be changed in this binary")?;
    let level = q
        .iter()
        .find(|(k, _)| k == "level")
        .map(|(_, v)| v.as_str());
    let paths = q
        .iter()
        .find(|(k, _)| k == "paths")
        .map(|(_, v)| v.as_str());
    let next = next_filter(&c.current(), level, paths)?;
    c.set(&next)?;
    tracing::info!(filter = %next, "admin /logging: log filter changed");
    Ok(next)
}

/// The filter after a `/logging` POST; errors name the parameter.
fn next_filter(current: &str, level: Option<&str>, paths: Option<&str>) -> Result<String, String> {
    let check = |what: &str, l: &str| {
        if LEVELS.contains(&l) {
            Ok(())
        } else {
            Err(format!(
                "{what}: unknown level '{l}' (want one of {LEVELS:?})"
            ))
        }
    };
    match (level, paths) {
        (Some(l), None) => {
            check("level", l)?;
            Ok(l.to_string())
        }
        (None, Some(p)) => {
            let mut directives: Vec<String> = current
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            for item in p.split(',').filter(|x| !x.is_empty()) {
                let (target, l) = item
                    .rsplit_once(':')
                    .filter(|(t, _)| !t.is_empty())
                    .ok_or_else(|| format!("paths: '{item}' is not target:level"))?;
                check("paths", l)?;
                if !target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                {
                    return Err(format!("paths: '{target}' is not a module path"));
                }
                directives.retain(|d| d.split_once('=').is_none_or(|(t, _)| t != target));
                directives.push(format!("{target}={l}"));
            }
            Ok(directives.join(","))
        }
        _ => Err("give exactly one of level=LEVEL or paths=target:level,...".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_filters() {
        assert_eq!(next_filter("info", Some("debug"), None).unwrap(), "debug");
        assert!(
            next_filter("info", Some("loud"), None)
                .unwrap_err()
                .starts_with("level")
        );
        assert_eq!(
            next_filter("info,a::b=warn", None, Some("a::b:debug,c:trace")).unwrap(),
            "info,a::b=debug,c=trace"
        );
        assert!(
            next_filter("info", None, Some("a"))
                .unwrap_err()
                .starts_with("paths")
        );
        assert!(next_filter("info", None, Some("a b:info")).is_err());
        assert!(next_filter("info", None, None).is_err());
        assert!(next_filter("info", Some("info"), Some("a:info")).is_err());
    }
}
