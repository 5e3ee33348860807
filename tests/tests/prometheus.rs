//! Metrics proven with the real thing: a Prometheus server (Debian's
//! `prometheus`) scrapes meshgate's `/stats/prometheus` every second and
//! its query API returns the request rate, a latency quantile from the
//! duration histogram and the upstream health gauges; every query of the
//! Grafana dashboard (ops/grafana/meshgate.json) evaluates there, and
//! names only metrics meshgate exports.

use meshgate_core::metrics::names::{ALL, Kind};
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn dashboard() -> serde_json::Value {
    let path = workspace().join("ops/grafana/meshgate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The metric names an expression uses (`meshgate_...`), with a
/// histogram's `_bucket`, `_sum` and `_count` series mapped to its name.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("meshgate_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}

fn exported(name: &str) -> bool {
    ALL.iter().any(|&(n, kind)| {
        n == name
            || (kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(n)))
    })
}

/// The dashboard is valid JSON with the panels the operators need, and
/// queries only metric names meshgate exports (names.rs `ALL`).
#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"], "meshgate-overview");
    let titles: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for want in [
        "requests",
        "errors",
        "latency",
        "upstream health",
        "xds",
        "connections",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want} panel: {titles:?}"
        );
    }
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut used = 0;
    for e in &exprs {
        let names = names_in(e);
        assert!(!names.is_empty(), "{e}: no meshgate metric");
        for n in names {
            assert!(exported(&n), "{e}: {n} is not a metric meshgate exports");
            used += 1;
        }
    }
    assert!(used >= exprs.len());
    assert!(exported("meshgate_downstream_rq_duration_seconds_bucket"));
    assert!(!exported("meshgate_downstream_rq_total_bucket"));
}

/// A Prometheus server on a free loopback port; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Whether prometheus is installed; under CI it must be.
fn have_prometheus() -> bool {
    let ok = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus is not installed (tests/run.sh installs Debian's package)"
        );
        eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
    }
    ok
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/stats/prometheus` every
    /// second.
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: meshgate\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free port: bound (port 0), read back, released for Prometheus.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(self.addr, path_and_query).ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// An instant query's result vector (`None` on an API error).
    fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        let v = self.api(&format!("/api/v1/query?query={}", encode(q)))?;
        (v["status"] == "success")
            .then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The query's error, if Prometheus refuses it (status 400 carries one).
    fn query_error(&self, q: &str) -> Option<String> {
        let (_, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(q))).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["status"] != "success").then(|| v["error"].to_string())
    }

    /// Waits until the query returns a sample whose value satisfies `pred`.
    fn wait_value(&self, q: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        poll(Duration::from_secs(30), || {
            let r = self.query(q)?;
            last = Some(r.clone());
            r.iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .find(|v| pred(*v))
        })
        .unwrap_or_else(|| panic!("{q}: no matching sample in 30s (last {last:?})"))
    }
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Real Prometheus scrapes meshgate: the target is up, and the request
/// rate, the p90 of the duration histogram and the upstream health gauges
/// come back from its query API; every dashboard query evaluates.
#[test]
fn prometheus_scrapes_meshgate_and_answers_queries() {
    if !have_prometheus() {
        return;
    }
    let backend = HttpBackend::start("b", Proto::Http1);
    // A reserved port nobody listens on: refused, and no other test's
    // server can take it (a dropped listener's port could be reused).
    let dead_addr = std::net::SocketAddr::from(([127, 0, 0, 1], meshgate_tests::free_port()));
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{name: api, match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{}"}}, {{address: "{dead_addr}"}}]
    health_checks:
      - timeout: 300ms
        interval: 200ms
        unhealthy_threshold: 1
        healthy_threshold: 1
        tcp_health_check: {{}}
"#,
        backend.addr
    ));
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 1.0,
    );
    let addr = mg.listener_addr("http");
    // Steady traffic while Prometheus scrapes: keep-alive requests to the
    // healthy endpoint (the dead one is ejected by the health check).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let conn = TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = std::io::BufReader::new(conn);
            while !stop.load(Ordering::Relaxed) {
                w.write_all(b"GET /delay HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let reply = read_reply(&mut r).expect("a response");
                assert_eq!(reply.status, 200, "{}", reply.body);
                sent += 1;
            }
            sent
        })
    };
    let prom = Prometheus::start(mg.admin.unwrap());
    wait_until_within(30, "Prometheus to find the meshgate target up", || {
        prom.api("/api/v1/targets").is_some_and(|v| {
            v["data"]["activeTargets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["health"] == "up"))
        })
    });
    let rate = prom.wait_value(
        r#"sum(rate(meshgate_downstream_rq_total{listener="http"}[5s]))"#,
        |v| v > 1.0,
    );
    let by_route = prom.wait_value(
        r#"sum(rate(meshgate_downstream_rq_xx_total{route="api",cluster="backend",code_class="2xx"}[5s]))"#,
        |v| v > 1.0,
    );
    // The backend answers /delay after 20 ms: the p90 lies between 20 ms
    // and a second.
    let p90 = prom.wait_value(
        r#"histogram_quantile(0.9, sum by (le) (rate(meshgate_downstream_rq_duration_seconds_bucket{listener="http"}[5s])))"#,
        |v| v.is_finite() && v > 0.0,
    );
    assert!((0.02..1.0).contains(&p90), "p90 {p90}");
    prom.wait_value(
        r#"meshgate_cluster_membership_healthy{cluster="backend"}"#,
        |v| v == 1.0,
    );
    prom.wait_value(
        r#"meshgate_cluster_membership_endpoints{cluster="backend"}"#,
        |v| v == 2.0,
    );
    prom.wait_value(
        r#"sum(increase(meshgate_cluster_health_check_failure_total{cluster="backend"}[10s]))"#,
        |v| v > 0.0,
    );
    // Every dashboard query parses and evaluates against real data.
    for e in dashboard_exprs(&dashboard()) {
        let q = e
            .replace("$__rate_interval", "5s")
            .replace("$instance", ".*");
        assert_eq!(prom.query_error(&q), None, "{q}");
    }
    prom.wait_value(
        r#"count(meshgate_server_uptime_seconds{instance=~".*"})"#,
        |v| v == 1.0,
    );
    // Prometheus' own linter finds nothing to say about the exposition
    // (counters in _total, units, HELP and TYPE lines), and every series
    // is a name meshgate declares.
    let (_, expo) = mg.admin_get("/stats/prometheus");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(expo.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in expo
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(exported(name), "{name} is exported but not in names.rs ALL");
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    assert!(sent > 10, "{sent} requests");
    eprintln!("rate {rate:.1}/s, by route {by_route:.1}/s, p90 {p90:.3}s, {sent} requests");
}
