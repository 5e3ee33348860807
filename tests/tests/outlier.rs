//! Outlier detection (`clusters[].outlier_detection`, Envoy's
//! `OutlierDetection`) end to end through the real binary: raw HTTP/1.1
//! backends whose answers the test switches (a status for every request,
//! or a failure every Nth), a port that refuses connections, a steady
//! client, and the detector's counters, gauge and log lines.

use meshgate_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::{Duration, Instant};

const EJECTIONS: &str = "meshgate_cluster_outlier_detection_ejections_total";
const ACTIVE: &str = "meshgate_cluster_outlier_detection_ejections_active";

/// A keep-alive HTTP/1.1 backend answering every request with `status`
/// (or 500 on every `fail_every`-th request when that is not 0), an
/// `x-backend` header naming it, and counting the requests it saw.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    status: Arc<AtomicU16>,
    fail_every: Arc<AtomicU32>,
}

impl Backend {
    fn start(name: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let fail_every = Arc::new(AtomicU32::new(0));
        let (h, st, fe) = (hits.clone(), status.clone(), fail_every.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (h, st, fe) = (h.clone(), st.clone(), fe.clone());
                std::thread::spawn(move || serve(name, s, &h, &st, &fe));
            }
        });
        Self {
            addr,
            hits,
            status,
            fail_every,
        }
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

fn serve(name: &str, s: TcpStream, hits: &AtomicU32, status: &AtomicU16, fail_every: &AtomicU32) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        // Request head (GETs without a body).
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
        let every = fail_every.load(Ordering::SeqCst);
        let code = if every != 0 && n.is_multiple_of(every) {
            500
        } else {
            status.load(Ordering::SeqCst)
        };
        let body = format!("backend={name}\n");
        let resp = format!(
            "HTTP/1.1 {code} X\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One GET through meshgate on a fresh connection: (status, x-backend).
fn fetch(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let backend = text
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .unwrap_or("")
        .to_string();
    (status, backend)
}

/// A listener `web` on port 0 routing to cluster `svc` over `endpoints`
/// with `outlier` (YAML flow mapping) as its outlier_detection.
fn config(endpoints: &[SocketAddr], outlier: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
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
                        route: {{cluster: svc}}
clusters:
  - name: svc
    connect_timeout: 1s
    connect_failure_backoff: {{base_interval: 1ms, max_interval: 1ms}}
    outlier_detection: {outlier}
    endpoints: [{eps}]
"#,
        eps = eps.join(", "),
    )
}

fn ejections(mg: &Meshgate, detector: &str, enforced: &str) -> f64 {
    mg.metric(
        EJECTIONS,
        &[
            ("cluster", "svc"),
            ("detector", detector),
            ("enforced", enforced),
        ],
    )
}

/// A backend that starts answering 503 under a steady client is ejected
/// by `consecutive_5xx` the moment its third 503 comes back: exactly
/// three requests failed, well within one `interval`, and it sees no
/// traffic after; it is returned after `base_ejection_time` by the
/// interval timer and serves again.
#[test]
fn consecutive_5xx_ejects_at_once_and_returns_after_base_ejection_time() {
    let bs: Vec<Backend> = ["a", "b", "c"].into_iter().map(Backend::start).collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mg = Meshgate::start(&config(
        &addrs,
        "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 500ms, max_ejection_percent: 34}",
    ));
    let web = mg.listener_addr("web");
    for _ in 0..9 {
        assert_eq!(fetch(web).0, 200);
    }
    let b = &bs[1];
    let before = b.hits();
    b.answer(503);
    let mut failed = Vec::new();
    let mut first_failure = None;
    for _ in 0..30 {
        let (status, backend) = fetch(web);
        if status != 200 {
            first_failure.get_or_insert_with(Instant::now);
            failed.push((status, backend));
        }
        if failed.len() == 3 {
            break;
        }
    }
    let to_ejection = first_failure.expect("b's 503s came back").elapsed();
    assert_eq!(failed, vec![(503, "b".to_string()); 3]);
    // Ejected inline, at the third: no interval waited for.
    assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 1.0);
    assert_eq!(mg.metric(ACTIVE, &[("cluster", "svc")]), 1.0);
    assert!(to_ejection < Duration::from_secs(1), "{to_ejection:?}");
    let ejected_at = Instant::now();
    assert_eq!(b.hits(), before + 3);
    for _ in 0..12 {
        let (status, backend) = fetch(web);
        assert_eq!(status, 200);
        assert_ne!(backend, "b");
    }
    assert_eq!(b.hits(), before + 3, "an ejected endpoint gets no traffic");
    assert!(mg.log_text().contains("outlier ejected"));
    // b recovers; the timer returns it once base_ejection_time is over.
    b.answer(200);
    mg.wait_metric(ACTIVE, &[("cluster", "svc")], |v| v == 0.0);
    let returned_after = ejected_at.elapsed();
    assert!(ejected_at.elapsed() >= Duration::from_millis(400));
    assert!(mg.log_text().contains("outlier returned to service"));
    let seen: Vec<String> = (0..6).map(|_| fetch(web).1).collect();
    assert!(seen.iter().any(|s| s == "b"), "{seen:?}");
    assert!(b.hits() > before + 3);
    println!(
        "consecutive_5xx: first failure to ejection {} ms ({} failed requests, interval 1 s); \
         returned to service {} ms after ejection (base_ejection_time 500 ms)",
        to_ejection.as_millis(),
        failed.len(),
        returned_after.as_millis()
    );
}

/// With `max_ejection_percent: 34` over three endpoints one may be
/// ejected: when a second one fails as well it is detected (counted with
/// `enforced="false"`) but keeps its traffic.
#[test]
fn max_ejection_percent_stops_ejecting_the_others() {
    let bs: Vec<Backend> = ["a", "b", "c"].into_iter().map(Backend::start).collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mg = Meshgate::start(&config(
        &addrs,
        "{consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 34}",
    ));
    let web = mg.listener_addr("web");
    bs[1].answer(503);
    bs[2].answer(503);
    for _ in 0..15 {
        fetch(web);
    }
    assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 1.0);
    assert!(ejections(&mg, "consecutive_5xx", "false") >= 1.0);
    assert_eq!(mg.metric(ACTIVE, &[("cluster", "svc")]), 1.0);
    // Whichever was not ejected still gets its share, and fails.
    let (h1, h2) = (bs[1].hits(), bs[2].hits());
    let failures = (0..10).filter(|_| fetch(web).0 == 503).count();
    let grew = [bs[1].hits() > h1, bs[2].hits() > h2];
    assert_eq!(grew.iter().filter(|g| **g).count(), 1, "{grew:?}");
    assert!(failures >= 3, "{failures}");
    let log = mg.log_text();
    assert!(log.contains("outlier detected, not ejected") && log.contains("max_ejection_percent"));
}

/// An endpoint that refuses connections: local-origin failures. Without
/// `split_external_local_origin_errors` they count as 5xx (the
/// `consecutive_5xx` detector ejects); with it, the
/// `consecutive_local_origin_failure` detector does, and not before its
/// own threshold.
#[test]
fn refused_connections_eject_as_5xx_or_local_origin_per_split() {
    for split in [false, true] {
        let good = Backend::start("good");
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mg = Meshgate::start(&config(
            &[good.addr, dead],
            &format!(
                "{{consecutive_5xx: 2, consecutive_local_origin_failure: 4, \
                 split_external_local_origin_errors: {split}, interval: 10s, \
                 base_ejection_time: 30s, max_ejection_percent: 50}}"
            ),
        ));
        let web = mg.listener_addr("web");
        let mut refused = 0;
        let mut first_refused = None;
        for _ in 0..40 {
            if fetch(web).0 == 503 {
                first_refused.get_or_insert_with(Instant::now);
                refused += 1;
            }
            if mg.metric(ACTIVE, &[("cluster", "svc")]) == 1.0 {
                break;
            }
        }
        let (detector, other, want) = if split {
            ("consecutive_local_origin_failure", "consecutive_5xx", 4)
        } else {
            ("consecutive_5xx", "consecutive_local_origin_failure", 2)
        };
        assert_eq!(ejections(&mg, detector, "true"), 1.0, "split={split}");
        assert_eq!(ejections(&mg, other, "true"), 0.0, "split={split}");
        assert_eq!(refused, want, "split={split}");
        println!(
            "{detector} (split={split}): first refused connection to ejection {} ms, \
             {refused} failed requests (interval 10 s)",
            first_refused.map_or(0, |t| t.elapsed().as_millis())
        );
        // Every request now goes to the good endpoint.
        let h = good.hits();
        for _ in 0..6 {
            assert_eq!(fetch(web), (200, "good".to_string()));
        }
        assert_eq!(good.hits(), h + 6);
    }
}

/// The success-rate detector over five endpoints: the one failing every
/// other request is far below the others' mean and is ejected on an
/// interval; the consecutive detectors never fire (streaks of one).
#[test]
fn success_rate_ejects_the_outlier_of_five_endpoints() {
    let bs: Vec<Backend> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(Backend::start)
        .collect();
    bs[3].fail_every.store(2, Ordering::SeqCst);
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mg = Meshgate::start(&config(
        &addrs,
        "{success_rate_request_volume: 10, interval: 300ms, base_ejection_time: 30s, \
         max_ejection_percent: 20}",
    ));
    let web = mg.listener_addr("web");
    let start = Instant::now();
    let mut failed = 0;
    let ok = poll(Duration::from_secs(30), || {
        for _ in 0..25 {
            if fetch(web).0 != 200 {
                failed += 1;
            }
        }
        (ejections(&mg, "success_rate", "true") == 1.0).then_some(())
    });
    assert!(ok.is_some(), "no success_rate ejection:\n{}", mg.log_text());
    println!(
        "success_rate: failing from the start, ejected within {} ms \
         ({failed} failed requests, interval 300 ms, request volume 10)",
        start.elapsed().as_millis()
    );
    assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 0.0);
    let d = bs[3].hits();
    for _ in 0..12 {
        assert_eq!(fetch(web).0, 200);
    }
    assert_eq!(bs[3].hits(), d, "the ejected endpoint is d");
}

/// Bad values and unsupported fields are refused by name.
#[test]
fn bad_outlier_detection_is_refused_by_name() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    for (od, want) in [
        (
            "{max_ejection_percent: 101}",
            "clusters[0].outlier_detection.max_ejection_percent",
        ),
        ("{interval: 0s}", "clusters[0].outlier_detection.interval"),
        ("{monitors: []}", "monitors"),
        ("{detect_degraded_hosts: true}", "detect_degraded_hosts"),
    ] {
        std::fs::write(&path, config(&[addr], od).replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{od}");
        let text = format!("{out}{err}");
        assert!(text.contains(want), "{want} not in: {text}");
    }
}

/// Through a real xDS control plane: a CDS cluster carrying
/// `outlier_detection`; its failing endpoint is ejected.
#[test]
fn outlier_detection_from_xds_cds() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::google::protobuf;
    use meshgate_tests::xds::*;

    let good = Backend::start("good");
    let bad = Backend::start("bad");
    bad.answer(503);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    let c = cds::Cluster {
        name: "svc".into(),
        load_assignment: Some(cla_msg("svc", &[(good.addr, 1, 0), (bad.addr, 1, 0)])),
        outlier_detection: Some(cds::OutlierDetection {
            consecutive_5xx: Some(protobuf::UInt32Value { value: 3 }),
            max_ejection_percent: Some(protobuf::UInt32Value { value: 50 }),
            base_ejection_time: Some(protobuf::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    mgmt.set(CLUSTER, "c1", vec![("svc".into(), any(CLUSTER, &c))]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=good");
    let web: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..10 {
        fetch(web);
    }
    assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 1.0);
    assert_eq!(bad.hits(), 3);
    for _ in 0..6 {
        assert_eq!(fetch(web), (200, "good".to_string()));
    }
    assert_eq!(bad.hits(), 3);
}

/// A grpcio server of the outlier peer, killed on drop.
struct GrpcPeer(std::process::Child, SocketAddr);

impl GrpcPeer {
    fn start(name: &str, mode: &str) -> Self {
        use std::process::{Command, Stdio};
        let script = workspace().join("tests/peers/outlier_grpc_peer.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["server", name, mode])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("grpc peer did not start: {line:?}"));
        GrpcPeer(child, ([127, 0, 0, 1], port).into())
    }
}

impl Drop for GrpcPeer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` gRPC calls of `method` through `port`: what came back, by backend
/// name or status code.
fn grpc_calls(port: u16, method: &str, n: u32) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .arg(workspace().join("tests/peers/outlier_grpc_peer.py"))
        .args(["client", &port.to_string(), method, &n.to_string()])
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// gRPC: an HTTP 200 whose grpc-status is UNAVAILABLE counts as a 503,
/// as Envoy maps it, whether the status is in a trailers-only head
/// (`Unary`) or in trailers after a message (`Stream`).
#[test]
fn grpc_unavailable_counts_as_5xx_in_the_head_or_the_trailers() {
    for method in ["Unary", "Stream"] {
        let good = GrpcPeer::start("good", "ok");
        let bad = GrpcPeer::start("bad", "fail");
        let mg = Meshgate::start(&format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: grpc
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /, grpc: true}}
                        route: {{cluster: svc, timeout: 0s}}
clusters:
  - name: svc
    protocol: http2
    outlier_detection: {{consecutive_5xx: 3, max_ejection_percent: 50, base_ejection_time: 30s}}
    endpoints: [{{address: "{}"}}, {{address: "{}"}}]
"#,
            good.1, bad.1
        ));
        let port = mg.listener_addr("grpc").port();
        let seen = grpc_calls(port, method, 20);
        assert_eq!(seen["UNAVAILABLE"], 3, "{method}: {seen}");
        assert_eq!(seen["good"], 17, "{method}: {seen}");
        assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 1.0, "{method}");
    }
}

/// Dubbo: a provider that dies is ejected after `consecutive_5xx`
/// failed calls (local-origin failures, counted as 5xx without split);
/// the calls after go to the live provider only.
#[test]
fn a_dead_dubbo_provider_is_ejected() {
    use meshgate_tests::rpc::{Provider, node_call};
    let a = Provider::start("dubbo", "A");
    let b = Provider::start("dubbo", "B");
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: svc}}
clusters:
  - name: svc
    protocol: dubbo
    connect_timeout: 500ms
    connect_failure_backoff: {{base_interval: 1ms, max_interval: 1ms}}
    outlier_detection: {{consecutive_5xx: 2, max_ejection_percent: 50, base_ejection_time: 30s}}
    endpoints: [{{address: "127.0.0.1:{}"}}, {{address: "127.0.0.1:{}"}}]
"#,
        a.port, b.port
    ));
    let port = mg.listener_addr("main").port();
    let call = |n| {
        node_call(
            "dubbo",
            port,
            "com.meshgate.Echo",
            "echo",
            r#"["hi"]"#,
            n,
            1,
            3000,
            "1.0",
            "",
        )
    };
    let r = call(4);
    assert_eq!(r.ok, 4, "{:?}", r.errors);
    assert_eq!((r.from.get("A"), r.from.get("B")), (Some(&2), Some(&2)));
    drop(b);
    let r = call(20);
    assert_eq!(r.errors.len(), 2, "{r:?}");
    assert_eq!(r.from.get("A"), Some(&18), "{r:?}");
    assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 1.0);
    assert_eq!(mg.metric(ACTIVE, &[("cluster", "svc")]), 1.0);
}

/// The failure-percentage detector (Envoy's `failure_percentage_*`,
/// `enforcing_failure_percentage` 0 by default, here 100) over two
/// endpoints: the one failing every other request (50 %) is over the 40 %
/// threshold and ejected on an interval, while the success-rate detector
/// (five hosts needed) and the consecutive ones (streaks of one) stay
/// quiet; a detection with `enforcing_failure_percentage: 0` is counted
/// but not enforced.
#[test]
fn failure_percentage_ejects_an_endpoint_over_the_threshold() {
    for enforcing in [100, 0] {
        let bs: Vec<Backend> = ["a", "b"].into_iter().map(Backend::start).collect();
        bs[1].fail_every.store(2, Ordering::SeqCst);
        let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
        let mg = Meshgate::start(&config(
            &addrs,
            &format!(
                "{{failure_percentage_threshold: 40, enforcing_failure_percentage: {enforcing}, \
                 failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 10, \
                 interval: 300ms, base_ejection_time: 30s, max_ejection_percent: 50}}"
            ),
        ));
        let web = mg.listener_addr("web");
        let enforced = if enforcing == 100 { "true" } else { "false" };
        let start = Instant::now();
        let mut failed = 0;
        let ok = poll(Duration::from_secs(30), || {
            for _ in 0..25 {
                if fetch(web).0 != 200 {
                    failed += 1;
                }
            }
            (ejections(&mg, "failure_percentage", enforced) >= 1.0).then_some(())
        });
        assert!(
            ok.is_some(),
            "no failure_percentage detection:\n{}",
            mg.log_text()
        );
        println!(
            "failure_percentage (enforcing {enforcing}): detected within {} ms \
             ({failed} failed requests, interval 300 ms)",
            start.elapsed().as_millis()
        );
        assert_eq!(ejections(&mg, "consecutive_5xx", "true"), 0.0);
        assert_eq!(ejections(&mg, "success_rate", "true"), 0.0);
        let b = bs[1].hits();
        for _ in 0..12 {
            fetch(web);
        }
        if enforcing == 100 {
            assert_eq!(bs[1].hits(), b, "the ejected endpoint is b");
        } else {
            assert!(bs[1].hits() > b, "detected, not enforced: b serves");
        }
    }
}

/// Repeated ejections last longer: Envoy's `base_ejection_time` times the
/// endpoint's ejection count, capped at `max_ejection_time`. An endpoint
/// that always answers 503 under a steady client is ejected, returned and
/// ejected again three times; right after each ejection `/clusters` shows
/// the time it has left: at most 1 s, 2 s, then 2.5 s (the cap, not
/// 3 s), and not much less (it was just ejected).
#[test]
fn repeated_ejections_grow_up_to_max_ejection_time() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    b.answer(503);
    let mg = Meshgate::start(&config(
        &[a.addr, b.addr],
        "{consecutive_5xx: 3, interval: 100ms, base_ejection_time: 1s, \
         max_ejection_time: 2500ms, max_ejection_percent: 50}",
    ));
    let web = mg.listener_addr("web");
    let field = |name: &str| -> u64 {
        let (_, text) = mg.admin_get("/clusters");
        let key = format!("svc::{}::outlier::{name}::", b.addr);
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str())?.parse().ok())
            .unwrap_or(0)
    };
    for (n, want_ms) in [(1, 1000), (2, 2000), (3, 2500)] {
        let left = poll(Duration::from_secs(20), || {
            for _ in 0..4 {
                fetch(web);
            }
            (field("times_ejected") == n).then(|| field("ejection_remaining_ms"))
        })
        .unwrap_or_else(|| panic!("no ejection {n}:\n{}", mg.log_text()));
        assert!(
            left <= want_ms && left + 600 > want_ms,
            "ejection {n}: {left} ms left, want just under {want_ms}"
        );
    }
}

/// `consecutive_gateway_failure` (enforced only with
/// `enforcing_consecutive_gateway_failure`, 0 by default as in Envoy):
/// 502s in a row eject the endpoint; 500s are not gateway failures and
/// do not (`consecutive_5xx` is set high so that it stays out of the way).
#[test]
fn consecutive_gateway_failures_eject_and_500s_do_not() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mg = Meshgate::start(&config(
        &[a.addr, b.addr],
        "{consecutive_5xx: 1000, consecutive_gateway_failure: 3, \
         enforcing_consecutive_gateway_failure: 100, interval: 10s, \
         base_ejection_time: 30s, max_ejection_percent: 50}",
    ));
    let web = mg.listener_addr("web");
    b.answer(500);
    let before = b.hits();
    let mut seen = 0;
    while b.hits() - before < 6 {
        seen += u32::from(fetch(web).0 == 500);
        assert!(seen < 50, "b never reached");
    }
    assert_eq!(ejections(&mg, "consecutive_gateway_failure", "true"), 0.0);
    b.answer(502);
    let ok = poll(Duration::from_secs(10), || {
        fetch(web);
        (ejections(&mg, "consecutive_gateway_failure", "true") == 1.0).then_some(())
    });
    assert!(
        ok.is_some(),
        "no gateway-failure ejection:\n{}",
        mg.log_text()
    );
    let d = b.hits();
    for _ in 0..10 {
        assert_eq!(fetch(web).0, 200);
    }
    assert_eq!(b.hits(), d, "b is ejected");
}
