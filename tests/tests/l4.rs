//! End-to-end L4 tests: the real meshgate binary with `tcp_proxy` in front of
//! real TCP backends on loopback.

use meshgate_tests::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A backend that answers every connection with `name\n` and closes.
fn name_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
    addr
}

/// A backend that echoes every byte until EOF, then half-closes.
fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn read_line(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

fn lb_config(
    listen: u16,
    endpoints: &[SocketAddr],
    extra_cluster: &str,
    extra_proxy: &str,
) -> String {
    let eps: String = endpoints
        .iter()
        .map(|e| format!("      - address: {e}\n"))
        .collect();
    format!(
        "admin:\n  address: {{ADMIN}}\nlisteners:\n  - name: front\n    address: 127.0.0.1:{listen}\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config:\n              cluster: backends\n{extra_proxy}clusters:\n  - name: backends\n    connect_timeout: 1s\n{extra_cluster}    endpoints:\n{eps}"
    )
}

#[test]
fn round_robin_spreads_evenly_over_three_backends() {
    let backends = [name_backend("a"), name_backend("b"), name_backend("c")];
    let mg = Meshgate::start(&lb_config(0, &backends, "    lb_policy: round_robin\n", ""));
    let port = mg.listener_port("front");
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        *counts.entry(read_line(front).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (k, v) in &counts {
        assert_eq!(*v, 10, "backend {k} got {v} of 30: {counts:?}");
    }
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_cx_total",
            &[("cluster", "backends")]
        ),
        30.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_listener_downstream_cx_total",
            &[("listener", "front")]
        ),
        30.0
    );
}

#[test]
fn failover_when_one_backend_is_down_loses_no_connection() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backends = [name_backend("a"), dead, name_backend("c")];
    let mg = Meshgate::start(&lb_config(0, &backends, "", ""));
    let port = mg.listener_port("front");
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..60 {
        let got = read_line(front).unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        assert!(got == "a" || got == "c", "connection {i} got {got:?}");
        *counts.entry(got).or_default() += 1;
    }
    assert!(counts["a"] >= 20 && counts["c"] >= 20, "{counts:?}");
    let fails = mg.metric(
        "meshgate_cluster_upstream_cx_connect_fail_total",
        &[("cluster", "backends"), ("reason", "refused")],
    );
    // The dead endpoint is tried once, then skipped for its back-off period.
    assert!((1.0..=3.0).contains(&fails), "connect failures: {fails}");
}

#[test]
fn one_gibibyte_both_ways_is_byte_identical() {
    // Default: copy through a buffer that grows once the flow is bulk.
    transfer_is_byte_identical(1 << 30, "");
}

#[test]
fn splice_paths_are_byte_identical() {
    // Copy first, splice once bulk; and splice from the first byte.
    transfer_is_byte_identical(64 << 20, "              zero_copy: bulk\n");
    transfer_is_byte_identical(64 << 20, "              zero_copy: always\n");
}

/// Sends `total` pseudo-random bytes through tcp_proxy to an echo backend
/// while reading the echo, and compares checksums and byte counters.
fn transfer_is_byte_identical(total: usize, extra_proxy: &str) {
    let backend = echo_backend();
    let mg = Meshgate::start(&lb_config(0, &[backend], "", extra_proxy));
    let port = mg.listener_port("front");
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut prng = Prng::new(42);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            prng.fill(&mut buf);
            hasher.update(&buf);
            w.write_all(&buf).unwrap();
            sent += buf.len();
        }
        w.shutdown(Shutdown::Write).unwrap();
        hasher.digest()
    });
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n;
    }
    let sent_hash = writer.join().unwrap();
    assert_eq!(got, total);
    assert_eq!(hasher.digest(), sent_hash, "echoed bytes differ");
    let up = mg.metric(
        "meshgate_cluster_upstream_bytes_sent_total",
        &[("cluster", "backends")],
    );
    let down = mg.metric(
        "meshgate_cluster_upstream_bytes_received_total",
        &[("cluster", "backends")],
    );
    assert_eq!(up, total as f64);
    assert_eq!(down, total as f64);
}

#[test]
fn half_close_in_both_directions() {
    // Client half-closes first: the backend sees EOF and still answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let b1 = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(format!("got {} bytes", got.len()).as_bytes())
                .unwrap();
        }
    });
    // Backend half-closes first: the client still sends, the backend reads it.
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let b2 = l2.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l2.incoming().flatten() {
            let mut s = s;
            s.write_all(b"bye").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            tx.send(got).unwrap();
        }
    });
    let yaml = format!(
        "admin:\n  address: {{ADMIN}}\nlisteners:\n  - name: one\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: one}}\n  - name: two\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: two}}\nclusters:\n  - name: one\n    endpoints: [{{address: \"{b1}\"}}]\n  - name: two\n    endpoints: [{{address: \"{b2}\"}}]\n"
    );
    let mg = Meshgate::start(&yaml);
    let (p1, p2) = (mg.listener_port("one"), mg.listener_port("two"));

    let mut s = TcpStream::connect(("127.0.0.1", p1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert_eq!(resp, "got 5 bytes");

    let mut s = TcpStream::connect(("127.0.0.1", p2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut first = Vec::new();
    s.read_to_end(&mut first).unwrap(); // EOF after "bye": the backend half-closed
    assert_eq!(first, b"bye");
    s.write_all(b"still talking").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got, b"still talking");
}

#[test]
fn connection_limit_refuses_the_extra_connection() {
    let backend = echo_backend();
    let yaml = lb_config(0, &[backend], "", "").replace(
        "    filter_chains:",
        "    max_connections: 2\n    filter_chains:",
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("front");
    let ping = |s: &mut TcpStream| -> bool {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        if s.write_all(b"x").is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    };
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(ping(&mut a) && ping(&mut b));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(!ping(&mut c), "third connection must be refused");
    assert_eq!(
        mg.metric(
            "meshgate_listener_downstream_cx_overflow_total",
            &[("listener", "front")]
        ),
        1.0
    );
    drop(a);
    // The slot frees once meshgate sees the close.
    wait_until_within(5, "the slot to free", || {
        let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
        ping(&mut d)
    });
    assert!(ping(&mut b));
}

#[test]
fn backend_that_resets_or_never_answers_closes_the_client() {
    // Resets every connection it accepts.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let resetter = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            socket_linger_zero(&s);
            drop(s);
        }
    });
    // Accepts and never says a word.
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = l2.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l2.incoming().flatten() {
            held.push(s);
        }
    });
    let nothing = free_port();
    let yaml = format!(
        "admin:\n  address: {{ADMIN}}\nlisteners:\n  - name: reset\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: reset}}\n  - name: silent\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: silent, idle_timeout: 500ms}}\n  - name: refused\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: refused}}\nclusters:\n  - name: reset\n    endpoints: [{{address: \"{resetter}\"}}]\n  - name: silent\n    endpoints: [{{address: \"{silent}\"}}]\n  - name: refused\n    endpoints: [{{address: \"127.0.0.1:{nothing}\"}}]\n"
    );
    let mg = Meshgate::start(&yaml);
    let ports = ["reset", "silent", "refused"].map(|n| mg.listener_port(n));
    for port in ports {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "port {port}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "port {port} hung {:?}",
            t.elapsed()
        );
    }
    // The reset lands either on the established connection or, when it
    // beats the connect's completion check, on the connect itself.
    wait_until_within(3, "a counter of the reset", || {
        let destroyed = mg.metric(
            "meshgate_cluster_upstream_cx_destroy_total",
            &[("cluster", "reset"), ("reason", "reset")],
        );
        let connect_failed = mg.metric(
            "meshgate_cluster_upstream_cx_connect_fail_total",
            &[("cluster", "reset")],
        );
        destroyed + connect_failed >= 1.0
    });
    mg.wait_metric(
        "meshgate_cluster_upstream_cx_destroy_total",
        &[("cluster", "silent"), ("reason", "idle_timeout")],
        |v| v >= 1.0,
    );
    mg.wait_metric(
        "meshgate_cluster_upstream_cx_connect_fail_total",
        &[("cluster", "refused"), ("reason", "refused")],
        |v| v >= 1.0,
    );
    mg.wait_metric(
        "meshgate_tcp_proxy_upstream_unavailable_total",
        &[("listener", "refused")],
        |v| v >= 1.0,
    );
}

fn socket_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

#[test]
fn sigterm_stops_accepting_and_drains_open_connections() {
    let backend = echo_backend();
    let mut mg =
        Meshgate::start_with_args(&lb_config(0, &[backend], "", ""), &["--drain-time", "10s"]);
    let port = mg.listener_port("front");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    mg.terminate();
    // Readiness flips and the listener closes...
    wait_until_within(5, "the listener to stop accepting after SIGTERM", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    // ...while the open connection keeps working.
    s.write_all(b"during").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    assert!(
        mg.child.try_wait().unwrap().is_none(),
        "exited before the connection closed"
    );
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let st = mg
        .wait_exit(Duration::from_secs(5))
        .expect("did not exit after the last connection closed");
    assert!(st.success(), "{st}");
}

#[test]
fn drain_time_bounds_the_wait_for_open_connections() {
    let backend = echo_backend();
    let mut mg =
        Meshgate::start_with_args(&lb_config(0, &[backend], "", ""), &["--drain-time", "1s"]);
    let port = mg.listener_port("front");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let t = Instant::now();
    mg.terminate();
    let st = mg
        .wait_exit(Duration::from_secs(6))
        .expect("did not exit after the drain time");
    assert!(st.success(), "{st}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "exited before the drain time: {:?}",
        t.elapsed()
    );
}

#[test]
fn admin_serves_ready_stats_and_config_dump() {
    let backend = echo_backend();
    let mg = Meshgate::start(&lb_config(0, &[backend], "", ""));
    assert_eq!(mg.admin_get("/ready"), (200, "LIVE\n".to_string()));
    let (code, dump) = mg.admin_get("/config_dump");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["config"]["listeners"][0]["name"], "front");
    assert_eq!(
        v["config"]["clusters"][0]["endpoints"][0]["address"],
        backend.to_string()
    );
    assert!(v["version"].as_u64().unwrap() >= 1);
    assert!(v["source"].as_str().unwrap().ends_with("meshgate.yaml"));
    let (code, stats) = mg.admin_get("/stats/prometheus");
    assert_eq!(code, 200);
    assert!(
        stats.contains("meshgate_listener_downstream_cx_total"),
        "{stats}"
    );
    assert_eq!(mg.admin_get("/nope").0, 404);
}

#[test]
fn strict_dns_cluster_resolves_localhost() {
    let backend = name_backend("dns");
    let yaml = lb_config(
        0,
        &[],
        "    type: strict_dns\n    dns_refresh_rate: 1s\n",
        "",
    ) + &format!("      - address: localhost:{}\n", backend.port());
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("front");
    for _ in 0..5 {
        assert_eq!(
            read_line(format!("127.0.0.1:{port}").parse().unwrap()).unwrap(),
            "dns"
        );
    }
}

#[test]
fn hashing_policies_keep_a_source_on_one_backend() {
    for policy in ["ring_hash", "maglev"] {
        let backends = [name_backend("a"), name_backend("b"), name_backend("c")];
        let mg = Meshgate::start(&lb_config(
            0,
            &backends,
            &format!("    lb_policy: {policy}\n"),
            "",
        ));
        let port = mg.listener_port("front");
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let first = read_line(front).unwrap();
        for _ in 0..20 {
            assert_eq!(read_line(front).unwrap(), first, "{policy}");
        }
        drop(mg);
    }
}

#[test]
fn weighted_clusters_split_connections() {
    let a = name_backend("a");
    let b = name_backend("b");
    let yaml = format!(
        "admin:\n  address: {{ADMIN}}\nlisteners:\n  - name: front\n    address: 127.0.0.1:0\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config:\n              weighted_clusters:\n                - {{name: stable, weight: 3}}\n                - {{name: canary, weight: 1}}\nclusters:\n  - name: stable\n    endpoints: [{{address: \"{a}\"}}]\n  - name: canary\n    endpoints: [{{address: \"{b}\"}}]\n"
    );
    let mg = Meshgate::start(&yaml);
    let front = mg.listener_addr("front");
    let mut canary = 0;
    for _ in 0..400 {
        if read_line(front).unwrap() == "b" {
            canary += 1;
        }
    }
    // expected 100 of 400; binomial sd ~8.7, so 60..140 is > 4 sd
    assert!((60..=140).contains(&canary), "canary got {canary} of 400");
}
