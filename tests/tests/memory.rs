//! Issue 23, memory per idle connection: meshgate's heap stays on 4 KiB
//! pages. mimalloc asks the kernel for transparent huge pages on its
//! arenas, which made every 2 MiB region the heap touched resident as a
//! whole (an idle h2c connection cost 39.8 KB instead of 23.2 KB,
//! benches/RESULTS.md); meshgate turns them off for its process at start.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;

/// The kernel's view of the process (`THP_enabled` in /proc/PID/status:
/// 0 once PR_SET_THP_DISABLE is set).
fn thp_enabled(pid: u32) -> Option<u8> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_heap_is_kept_off_transparent_huge_pages() {
    let port = free_port();
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: b}}
clusters:
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    ));
    // Serving (ready and one request through): main has run its start.
    let (status, _) = http_get(([127, 0, 0, 1], port).into(), "/").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        thp_enabled(mg.child.id()),
        Some(0),
        "/proc/PID/status should say THP_enabled: 0"
    );
}
