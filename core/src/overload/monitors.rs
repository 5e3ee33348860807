//! The resource monitors: each turns a reading into a pressure (used /
//! maximum, 0..=1 or above). Read by the monitor task only; procfs and
//! cgroupfs files are in memory, a read never waits for a disk.

use super::{Monitor, Plan};
use crate::metrics::names;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Each monitor's last pressure (f64 bits); `NONE` when not configured.
static LAST: [AtomicU64; 4] = [const { AtomicU64::new(NONE) }; 4];
const NONE: u64 = u64::MAX;

pub(super) fn last_pressures() -> [Option<f64>; 4] {
    LAST.each_ref().map(|a| {
        let v = a.load(Ordering::Relaxed);
        (v != NONE).then(|| f64::from_bits(v))
    })
}

/// Where a cgroup's memory usage is read, and its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    pub usage_file: PathBuf,
    pub limit: u64,
}

/// A v1 "no limit" is a page-rounded i64::MAX; anything this large is none.
const UNLIMITED: u64 = 1 << 62;

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Cgroup {
    /// The process's memory cgroup: v2 (`memory.current`, `memory.max`),
    /// else v1 (`memory.usage_in_bytes`, `memory.limit_in_bytes`). The
    /// limit is the cgroup's, or `max` when smaller; `Err` says why no
    /// cgroup can be monitored.
    pub fn find(max: Option<u64>) -> Result<Cgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::find_in(Path::new("/sys/fs/cgroup"), &own, max)
    }

    fn find_in(root: &Path, own: &str, max: Option<u64>) -> Result<Cgroup, String> {
        let mut candidates: Vec<(PathBuf, &str, &str)> = Vec::new();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                candidates.push((root.join(rel), "memory.current", "memory.max"));
                candidates.push((root.to_path_buf(), "memory.current", "memory.max"));
            } else if controllers.split(',').any(|c| c == "memory") {
                let base = root.join("memory");
                candidates.push((
                    base.join(rel),
                    "memory.usage_in_bytes",
                    "memory.limit_in_bytes",
                ));
                // A cgroup namespace mounts the process's own cgroup as the root.
                candidates.push((base, "memory.usage_in_bytes", "memory.limit_in_bytes"));
            }
        }
        for (dir, usage, limit) in candidates {
            let usage_file = dir.join(usage);
            if read_u64(&usage_file).is_none() {
                continue;
            }
            let raw = std::fs::read_to_string(dir.join(limit)).unwrap_or_default();
            let cg_limit = raw.trim().parse::<u64>().ok().filter(|l| *l < UNLIMITED);
            let limit = match (cg_limit, max) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => {
                    return Err(format!(
                        "{} sets no memory limit; set typed_config.max_memory_bytes",
                        dir.display()
                    ));
                }
            };
            return Ok(Cgroup { usage_file, limit });
        }
        Err("no readable cgroup memory file (memory.current or memory.usage_in_bytes)".into())
    }
}

/// The process's resident set size, from `/proc/self/statm`.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The monitor task's own state.
#[derive(Default)]
pub(super) struct State {
    configured: [bool; 4],
}

impl State {
    /// Reads every configured monitor; an unreadable one keeps pressure 0
    /// (a failed read is logged, never fatal).
    pub(super) fn read(&mut self, plan: &Plan) -> [f64; 4] {
        let mut p = [0.0f64; 4];
        let mut set = [false; 4];
        if let Some(max) = plan.fixed_heap {
            // The resident set: what the kernel counts against the
            // process, whatever the allocator keeps cached.
            p[Monitor::FixedHeap as usize] = rss_bytes().unwrap_or(0) as f64 / max as f64;
            set[Monitor::FixedHeap as usize] = true;
        }
        if let Some(max) = plan.max_connections {
            p[Monitor::DownstreamConnections as usize] =
                super::active_connections() as f64 / max as f64;
            set[Monitor::DownstreamConnections as usize] = true;
        }
        if let Some(cg) = &plan.cgroup {
            let used = read_u64(&cg.usage_file);
            if used.is_none() {
                tracing::debug!(file = %cg.usage_file.display(), "cannot read cgroup memory usage");
            }
            p[Monitor::CgroupMemory as usize] = used.unwrap_or(0) as f64 / cg.limit as f64;
            set[Monitor::CgroupMemory as usize] = true;
        }
        if let Some(max) = plan.max_buffered_bytes {
            let total = super::buffer::total();
            metrics::gauge!(names::OVERLOAD_BUFFERED_BYTES).set(total as f64);
            p[Monitor::BufferedBytes as usize] = total as f64 / max as f64;
            set[Monitor::BufferedBytes as usize] = true;
        }
        for m in Monitor::ALL {
            let i = m as usize;
            if set[i] {
                LAST[i].store(p[i].to_bits(), Ordering::Relaxed);
                metrics::gauge!(names::OVERLOAD_MONITOR_PRESSURE, "monitor" => m.name()).set(p[i]);
            } else if self.configured[i] {
                LAST[i].store(NONE, Ordering::Relaxed);
                metrics::gauge!(names::OVERLOAD_MONITOR_PRESSURE, "monitor" => m.name()).set(0.0);
            }
        }
        self.configured = set;
        p
    }

    pub(super) fn clear(&mut self) {
        for m in Monitor::ALL {
            let i = m as usize;
            if self.configured[i] {
                LAST[i].store(NONE, Ordering::Relaxed);
                metrics::gauge!(names::OVERLOAD_MONITOR_PRESSURE, "monitor" => m.name()).set(0.0);
            }
        }
        self.configured = [false; 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "meshgate-cg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cgroup_v2_is_read_with_its_limit() {
        let root = dir();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/memory.current"), "100\n").unwrap();
        std::fs::write(root.join("app/memory.max"), "1000\n").unwrap();
        let cg = Cgroup::find_in(&root, "0::/app\n", None).unwrap();
        assert_eq!(cg.limit, 1000);
        assert_eq!(read_u64(&cg.usage_file), Some(100));
        // A smaller configured maximum wins.
        assert_eq!(
            Cgroup::find_in(&root, "0::/app\n", Some(500))
                .unwrap()
                .limit,
            500
        );
    }

    #[test]
    fn cgroup_v1_falls_back_and_max_means_no_limit() {
        let root = dir();
        std::fs::create_dir_all(root.join("memory")).unwrap();
        std::fs::write(root.join("memory/memory.usage_in_bytes"), "100\n").unwrap();
        std::fs::write(
            root.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let own = "4:memory:/elsewhere\n0::/\n";
        assert!(
            Cgroup::find_in(&root, own, None)
                .unwrap_err()
                .contains("max_memory_bytes")
        );
        assert_eq!(Cgroup::find_in(&root, own, Some(7)).unwrap().limit, 7);
        let empty = dir();
        assert!(
            Cgroup::find_in(&empty, own, Some(7))
                .unwrap_err()
                .contains("no readable")
        );
    }
}
