//! Config file hot reload through the real binary: on change and on
//! SIGHUP, under a running keep-alive load with no failed request; a bad
//! file keeps the old config serving and names file, line and field;
//! listeners come and go; clusters change under a route; endpoint changes
//! reach open keep-alive connections without closing them.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A proxy listener answering `body` on every path, plus optional extra
/// listener text.
fn config(port: u16, body: &str, extra: &str) -> String {
    format!(
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
                        direct_response: {{status: 200, body: "{body}"}}
{extra}"#
    )
}

/// Rewrites the running config atomically (write + rename).
fn rewrite(mg: &Meshgate, yaml: &str) {
    let text = mg.fill(yaml);
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
}

/// One keep-alive GET / on `conn` (connecting if needed): the body (its
/// `backend=` line when a backend answered), or None if the connection
/// failed before a whole 200 response. A response with `connection:
/// close` drops the connection afterwards.
fn request(conn: &mut Option<BufReader<TcpStream>>, port: u16) -> Option<String> {
    meshgate_tests::xds::request(conn, port, "/")
}

/// Keep-alive clients hammering `port` until stopped; counts requests and
/// failures, and remembers the last body seen.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        match request(&mut conn, port) {
                            Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                            None => {
                                conn = None;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Waits until `n` more requests succeeded.
    fn wait_more(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_until(&format!("{n} more requests under load"), || {
            self.ok.load(Ordering::Relaxed) >= target
        });
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Sends SIGHUP and waits until the reload it triggers is counted as ok.
fn sighup(mg: &Meshgate) {
    let before = mg.metric("meshgate_config_reload_total", &[("result", "ok")]);
    let pid = mg.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until_within(5, "the SIGHUP reload", || {
        mg.metric("meshgate_config_reload_total", &[("result", "ok")]) > before
    });
}

fn body_now(port: u16) -> String {
    request(&mut None, port).unwrap_or_default()
}

fn wait_body(port: u16, want: &str) {
    let mut got = String::new();
    let done = poll(Duration::from_secs(5), || {
        got = body_now(port);
        (got == want).then_some(())
    });
    assert!(done.is_some(), "still '{got}', want '{want}'");
}

#[test]
fn file_change_reloads_under_load_with_no_failed_request() {
    let port = free_port();
    let mg = Meshgate::start_with_args(&config(port, "v0", ""), &["--watch-interval", "100ms"]);
    wait_body(port, "v0");
    let load = Load::start(port, 8);
    load.wait_more(50);
    for v in 1..=10 {
        rewrite(&mg, &config(port, &format!("v{v}"), ""));
        wait_body(port, &format!("v{v}"));
        // The load runs on each version before the next change.
        load.wait_more(20);
    }
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 100, "only {ok} requests");
    assert!(mg.metric("meshgate_config_reload_total", &[("result", "ok")]) >= 10.0);
    let (_, dump) = mg.admin_get("/config_dump");
    assert!(dump.contains("\"v10\""), "{dump}");
}

#[test]
fn a_bad_file_keeps_the_old_config_and_names_file_line_and_field() {
    let port = free_port();
    let mg = Meshgate::start_with_args(&config(port, "good", ""), &["--watch-interval", "100ms"]);
    let load = Load::start(port, 2);
    let bad = config(port, "bad", "").replace("domains:", "domainz:");
    rewrite(&mg, &bad);
    mg.wait_metric(
        "meshgate_config_reload_total",
        &[("result", "error")],
        |v| v >= 1.0,
    );
    assert_eq!(body_now(port), "good");
    let log = mg.log_text();
    let file = mg.config.display().to_string();
    assert!(
        log.contains(&format!("{file}:13")) && log.contains("domainz"),
        "{log}"
    );
    rewrite(&mg, &config(port, "fixed", ""));
    wait_body(port, "fixed");
    let (_, failed) = load.finish();
    assert_eq!(failed, 0);
}

#[test]
fn sighup_adds_and_removes_listeners_and_changes_clusters() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let port2 = free_port();
    let extra = |backend: &HttpBackend| {
        format!(
            r#"  - name: api
    address: 127.0.0.1:{port2}
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
                        route: {{cluster: backends}}
clusters:
  - name: backends
    endpoints: [{{address: "{}"}}]
"#,
            backend.addr
        )
    };
    let mg = Meshgate::start_with_args(&config(port, "x", ""), &["--watch-interval", "0s"]);
    assert!(TcpStream::connect(("127.0.0.1", port2)).is_err());
    // Add a listener routing to backend a.
    rewrite(&mg, &config(port, "x", &extra(&a)));
    sighup(&mg);
    let addr = format!("127.0.0.1:{port2}").parse().unwrap();
    let (code, body) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("backend=a"), "{body}");
    // Move the cluster to backend b under load: no failed request.
    let load = Load::start(port, 4);
    rewrite(&mg, &config(port, "x", &extra(&b)));
    sighup(&mg);
    let (_, body) = http_get(addr, "/").unwrap();
    assert!(body.contains("backend=b"), "{body}");
    // Remove the listener: its port closes.
    rewrite(&mg, &config(port, "x", ""));
    sighup(&mg);
    wait_until_within(3, "the removed listener's port to close", || {
        TcpStream::connect(("127.0.0.1", port2)).is_err()
    });
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}

/// A listener routing `/` to cluster `backends` (its endpoints and
/// connect timeout given), then `extra` clusters.
fn routed(port: u16, backends: &[&HttpBackend], connect_timeout: &str, extra: &str) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect();
    format!(
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
                        route: {{cluster: backends}}
clusters:
  - name: backends
    connect_timeout: {connect_timeout}
    endpoints: [{}]
{extra}"#,
        endpoints.join(", ")
    )
}

/// `n` requests on the open connection `conn`: which backends answered.
/// Each must succeed and leave the connection open (no `connection:
/// close`), on the same local port as before.
fn on_open_connection(
    conn: &mut Option<BufReader<TcpStream>>,
    port: u16,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let local = conn.as_ref().map(|c| c.get_ref().local_addr().unwrap());
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..n {
        let body = request(conn, port).unwrap_or_else(|| panic!("request {i} failed"));
        let Some(c) = conn.as_ref() else {
            panic!("the connection was closed after request {i}: {body}");
        };
        if let Some(l) = local {
            assert_eq!(
                c.get_ref().local_addr().unwrap(),
                l,
                "not the same connection"
            );
        }
        let backend = body
            .lines()
            .find(|l| l.starts_with("backend="))
            .unwrap_or(&body);
        seen.insert(backend.to_string());
    }
    seen
}

#[test]
fn endpoint_changes_reach_open_connections_without_closing_them() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let c = HttpBackend::start("c", Proto::Http1);
    let port = free_port();
    let spare = |x: &HttpBackend| {
        format!(
            "  - name: spare\n    endpoints: [{{address: \"{}\"}}]\n",
            x.addr
        )
    };
    let mg = Meshgate::start_with_args(&routed(port, &[&a], "1s", ""), &["--watch-interval", "0s"]);
    let mut conn = None;
    let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
        names.iter().map(|n| format!("backend={n}")).collect()
    };
    assert_eq!(on_open_connection(&mut conn, port, 3), set(&["a"]));

    assert!(established_to(a.addr) >= 1, "no pooled connection to a");
    // A cluster is added and the routed cluster's endpoints change.
    rewrite(&mg, &routed(port, &[&b], "1s", &spare(&c)));
    sighup(&mg);
    assert_eq!(on_open_connection(&mut conn, port, 4), set(&["b"]));
    // The pool of a, which left, is gone: its idle connection closed.
    wait_until_within(5, "the pool of a to drain", || established_to(a.addr) == 0);
    // An endpoint joins.
    rewrite(&mg, &routed(port, &[&a, &b], "1s", &spare(&c)));
    sighup(&mg);
    assert_eq!(on_open_connection(&mut conn, port, 6), set(&["a", "b"]));
    // The other cluster's endpoints change, and it goes away.
    rewrite(&mg, &routed(port, &[&a, &b], "1s", &spare(&a)));
    sighup(&mg);
    rewrite(&mg, &routed(port, &[&a, &b], "1s", ""));
    sighup(&mg);
    assert_eq!(on_open_connection(&mut conn, port, 6), set(&["a", "b"]));
    assert!(
        !mg.log_text().contains("open connections retire"),
        "a listener was replaced: {}",
        mg.log_text()
    );

    // Under load from other connections: none of their requests fails.
    let load = Load::start(port, 4);
    // A setting of the routed cluster changes: the connection retires
    // gracefully (its next response says `connection: close`).
    rewrite(&mg, &routed(port, &[&a, &b], "2s", ""));
    sighup(&mg);
    let body = request(&mut conn, port).expect("request after a cluster setting change");
    assert!(body.contains("backend="), "{body}");
    assert!(conn.is_none(), "the connection was not retired");
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
}

#[test]
fn route_changes_reach_an_open_connection_without_closing_it() {
    // Only the routes change (Envoy's RDS semantics): the open keep-alive
    // connection is not retired, its next request takes the new routes.
    let port = free_port();
    let mg = Meshgate::start_with_args(&config(port, "r0", ""), &["--watch-interval", "100ms"]);
    wait_body(port, "r0");
    let mut conn = None;
    assert_eq!(request(&mut conn, port).as_deref(), Some("r0"));
    let local = conn.as_ref().unwrap().get_ref().local_addr().unwrap();
    for v in 1..=3 {
        let want = format!("r{v}");
        rewrite(&mg, &config(port, &want, ""));
        wait_body(port, &want);
        assert_eq!(request(&mut conn, port).as_deref(), Some(want.as_str()));
        let held = conn
            .as_ref()
            .expect("the connection was closed by a route change");
        assert_eq!(held.get_ref().local_addr().unwrap(), local);
    }
    // A change to the proxy's other settings is not a route change: the
    // connection retires gracefully (its last request is answered by the
    // config it was accepted under, with `connection: close`).
    let other = config(port, "r4", "").replace(
        "route_config:",
        "generate_request_id: false\n              route_config:",
    );
    rewrite(&mg, &other);
    wait_body(port, "r4");
    assert_eq!(request(&mut conn, port).as_deref(), Some("r3"));
    assert!(
        conn.is_none(),
        "a settings change must retire the connection"
    );
    assert_eq!(body_now(port), "r4");
}
