//! End-to-end test of the overload manager's cgroup memory monitor
//! (Envoy's `envoy.resource_monitors.cgroup_memory`): the real meshgate
//! binary in a memory cgroup the test creates (v1 `memory` hierarchy or
//! v2, as root), a Python process in the same cgroup as the ballast that
//! raises the cgroup's usage, curl as the client.

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const LIMIT: u64 = 256 << 20;

/// A memory cgroup holding this test process (and so the processes it
/// starts), with a limit; the process moves back and the cgroup is
/// removed on drop.
struct Cgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl Cgroup {
    /// `Err` says why no cgroup could be made here.
    fn create() -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let name = format!("meshgate-test-{}", std::process::id());
        // v1: the `memory` hierarchy (`N:memory:/path`); v2: the unified
        // one (`0::/path`).
        let mut v1 = None;
        let mut v2 = None;
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                v1 = Some(Path::new("/sys/fs/cgroup/memory").join(rel));
            } else if controllers.is_empty() {
                v2 = Some(Path::new("/sys/fs/cgroup").join(rel));
            }
        }
        let (home, limit_file) = match (v1, v2) {
            (Some(h), _) => (h, "memory.limit_in_bytes"),
            (None, Some(h)) => (h, "memory.max"),
            (None, None) => return Err("no memory cgroup in /proc/self/cgroup".into()),
        };
        let dir = home.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, home };
        std::fs::write(cg.dir.join(limit_file), LIMIT.to_string())
            .map_err(|e| format!("{limit_file}: {e}"))?;
        std::fs::write(cg.dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("cgroup.procs: {e}"))?;
        Ok(cg)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        // The children are gone; the kernel may take a moment to see it.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// A Python process holding `mib` MiB, touched, until killed.
struct Ballast(Child);

impl Ballast {
    fn start(mib: u64) -> Self {
        let mut child = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import sys, time\nb = b'x' * ({mib} << 20)\nprint('READY', flush=True)\ntime.sleep(600)\n"
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
        Ballast(child)
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ACTION: &str = "envoy.overload_actions.stop_accepting_requests";

/// One `proxy` listener answering 200 itself, and the cgroup monitor
/// triggering `stop_accepting_requests` at half the limit.
fn config() -> String {
    proxy_config(
        &[r#"{match: {prefix: /}, direct_response: {status: 200, body: "ok\n"}}"#],
        "",
    ) + &format!(
        r#"overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
    - name: envoy.resource_monitors.cgroup_memory
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig
  actions:
    - name: {ACTION}
      triggers:
        - name: envoy.resource_monitors.cgroup_memory
          threshold: {{value: 0.5}}
"#
    )
}

/// The cgroup's usage against its limit is the pressure: a process in the
/// same cgroup taking 160 of its 256 MiB makes meshgate refuse requests
/// (503, `x-envoy-overloaded`); once it exits, requests are served again.
#[test]
fn cgroup_memory_pressure_stops_and_resumes_requests() {
    let cg = match Cgroup::create() {
        Ok(cg) => cg,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the cgroup test needs a memory cgroup it can create (root): {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mg = Meshgate::start(&config());
    let port = mg.listener_port("http");
    let url = format!("http://127.0.0.1:{port}/");
    mg.wait_metric(
        "meshgate_overload_monitor_pressure",
        &[("monitor", "envoy.resource_monitors.cgroup_memory")],
        |v| v > 0.0 && v < 0.5,
    );
    assert_eq!(curl(&[&url]).0, 200);
    let ballast = Ballast::start(160);
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[("action", ACTION)],
        |v| v == 1.0,
    );
    let (status, headers, _) = curl(&[&url]);
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    drop(ballast);
    mg.wait_metric(
        "meshgate_overload_action_scale",
        &[("action", ACTION)],
        |v| v == 0.0,
    );
    assert_eq!(curl(&[&url]).0, 200);
    drop(mg);
    drop(cg);
}
