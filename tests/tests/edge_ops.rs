//! Operating meshgate at the edge: a SIGTERM drain that loses no request on
//! busy keep-alive connections, signals (SIGUSR1 reopens the access log,
//! stray signals do not kill), plain logs on a pipe, config errors that
//! name a field once, and a reload whose build does not stall traffic.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A config with the admin server and one HTTP listener on `port` that
/// sends everything to `backend`; `extra` goes into the proxy's config.
fn http_config(port: u16, backend: SocketAddr, extra: &str) -> String {
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
{extra}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#
    )
}

fn signal(m: &Meshgate, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which is still ours to reap.
    unsafe {
        libc::kill(m.child.id() as i32, sig);
    }
}

/// One GET on a fresh connection: the status.
fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_reply(&mut BufReader::new(s)).map_or(0, |r| r.status)
}

/// 20 clients send requests back to back (half with 2 ms between) on
/// their keep-alive connections while meshgate gets SIGTERM: every request written is answered, each
/// client is told `connection: close` on its last response (never a reset
/// in the middle of the next request), and meshgate exits 0.
#[test]
fn sigterm_drain_loses_no_request_on_busy_keep_alive_connections() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mut mg = Meshgate::start_with_args(
        &http_config(port, backend.addr, ""),
        &["--drain-time", "10s"],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let served = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let served = served.clone();
            std::thread::spawn(move || -> Result<u32, String> {
                let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut n = 0u32;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    w.write_all(format!("GET /c{i}/{n} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                        .map_err(|e| format!("client {i} request {n}: write: {e}"))?;
                    let reply = read_reply(&mut r)
                        .ok_or_else(|| format!("client {i} request {n}: no response"))?;
                    if reply.status != 200 {
                        return Err(format!("client {i} request {n}: {}", reply.status));
                    }
                    n += 1;
                    served.fetch_add(1, Ordering::Relaxed);
                    if reply.close {
                        return Ok(n);
                    }
                    // Odd clients think for 2 ms between requests: their
                    // connection looks idle when the drain begins, though
                    // the next request is about to come.
                    if i % 2 == 1 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Err(format!("client {i}: never told to close"))
            })
        })
        .collect();
    // Every client is busy before the signal.
    wait_until_within(30, "twenty clients", || {
        mg.metric(
            "meshgate_listener_downstream_cx_active",
            &[("listener", "web")],
        ) >= 20.0
    });
    let start = served.load(Ordering::Relaxed);
    wait_until_within(20, "traffic", || {
        served.load(Ordering::Relaxed) >= start + 200
    });
    mg.terminate();
    let status = mg
        .wait_exit(Duration::from_secs(20))
        .expect("meshgate exits");
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(status.success(), "{status}\n{}", mg.log_text());
    assert!(mg.log_text().contains("all connections drained"));
}

/// SIGUSR1 (logrotate's postrotate) makes the access log reopen its path:
/// after the file is renamed, the next request lands in a new file at the
/// path and the renamed one gets nothing more. SIGUSR2 and SIGALRM, which
/// would kill a process by default, are counted and ignored.
#[test]
fn sigusr1_reopens_the_access_log_and_stray_signals_do_not_kill() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let port = free_port();
    let extra = format!(
        "              access_log: {{path: \"{}\"}}\n",
        log.display()
    );
    let mut mg = Meshgate::start(&http_config(port, backend.addr, &extra));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(get(addr, "/before"), 200);
    wait_until_within(10, "the first line", || lines(&log) == 1);
    std::fs::rename(&log, &rotated).unwrap();

    signal(&mg, libc::SIGUSR1);
    wait_until_within(10, "the reopen", || {
        mg.metric("meshgate_server_log_reopen_total", &[]) >= 1.0
    });
    assert_eq!(get(addr, "/after"), 200);
    wait_until_within(10, "a line in the new file", || lines(&log) == 1);
    assert!(std::fs::read_to_string(&log).unwrap().contains("/after"));
    assert_eq!(lines(&rotated), 1, "the rotated file got more lines");

    for (sig, name) in [(libc::SIGUSR2, "SIGUSR2"), (libc::SIGALRM, "SIGALRM")] {
        signal(&mg, sig);
        wait_until_within(10, name, || {
            mg.metric("meshgate_server_signal_total", &[("signal", name)]) >= 1.0
        });
    }
    assert!(mg.child.try_wait().unwrap().is_none(), "meshgate died");
    assert_eq!(get(addr, "/still"), 200);
    mg.terminate();
    let st = mg.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(st.success(), "{st}");
}

/// Logs written to a pipe carry no ANSI escape codes.
#[test]
fn logs_on_a_pipe_have_no_colour() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        http_config(port, backend.addr, "").replace("admin:\n  address: \"{ADMIN}\"\n", ""),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .args(["--log-level", "debug"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("listening") && Instant::now() < deadline {
        let n = err.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("listening"), "{text}");
    assert!(!seen.contains(&0x1b), "escape codes on a pipe: {text:?}");
}

/// A config error prints the field's path once.
#[test]
fn config_error_names_the_field_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "clusters:\n  - name: c\n    type: bogus\n    endpoints: [{address: \"127.0.0.1:1\"}]\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["validate", &f.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("clusters[0].type: unknown variant"), "{err}");
    assert_eq!(err.matches("clusters[0].type").count(), 1, "{err}");
}

/// A reload whose snapshot build is slow (standing in for a slow
/// `strict_dns` lookup: `MESHGATE_TEST_RELOAD_BUILD_DELAY_MS`) does not
/// stall traffic on a single worker: requests are answered promptly while
/// the build runs, and the new version is published when it ends.
#[test]
fn a_slow_reload_build_does_not_stall_one_worker() {
    // SAFETY: nextest runs each test in its own process, and this test
    // sets the variable before any thread of its own is started; the
    // child meshgate inherits it.
    unsafe { std::env::set_var("MESHGATE_TEST_RELOAD_BUILD_DELAY_MS", "3000") };
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start_with_args(
        &http_config(port, backend.addr, ""),
        &["--concurrency", "1", "--watch-interval", "0s"],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let version = mg.metric("meshgate_config_version", &[]);
    let start = Instant::now();
    signal(&mg, libc::SIGHUP);
    // During the build (until the new version shows): requests keep
    // being answered quickly.
    let mut slowest = Duration::ZERO;
    let mut during = 0;
    wait_until_within(20, "the reload", || {
        let t = Instant::now();
        assert_eq!(get(addr, "/during"), 200);
        slowest = slowest.max(t.elapsed());
        during += 1;
        mg.metric("meshgate_config_version", &[]) > version
    });
    assert!(
        start.elapsed() >= Duration::from_millis(2900),
        "the reload ended before the build delay: the delay was not applied"
    );
    assert!(during >= 10, "{during}");
    assert!(
        slowest < Duration::from_millis(1000),
        "a request took {slowest:?} during the reload"
    );
}

/// mTLS without a client certificate: a TLS 1.2 client gets the
/// `handshake_failure` alert (40), a TLS 1.3 client `certificate_required`
/// (116), the alert that exists only in TLS 1.3. Both are counted.
#[test]
fn mtls_without_a_client_certificate_gets_the_alert_of_its_version() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let certs = workspace().join("examples/certs");
    let c = |f: &str| certs.join(f).display().to_string();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: mtls
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
          client_validation: {{trusted_ca: "{ca}", required: true}}
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        crt = c("server.pem"),
        key = c("server.key"),
        ca = c("client-ca.pem"),
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    let out = s_client(port, &["-tls1_2", "-servername", "localhost"]);
    assert!(out.contains("alert handshake failure"), "{out}");
    assert!(out.contains("alert number 40"), "{out}");
    assert!(!out.contains("certificate required"), "{out}");
    // TLS 1.3 sends the alert after the client's Finished: `-ign_eof`
    // keeps s_client reading until meshgate closes, instead of quitting at
    // its own stdin's end, maybe before the alert arrived.
    let out = s_client(port, &["-tls1_3", "-ign_eof", "-servername", "localhost"]);
    assert!(out.contains("alert number 116"), "{out}");
    let v = mg.metric(
        "meshgate_listener_tls_handshake_error_total",
        &[("listener", "mtls"), ("reason", "no_client_certificate")],
    );
    assert!(v >= 2.0, "{v}");
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Out of file descriptors (RLIMIT_NOFILE lowered on the running process):
/// failed accepts are counted as `emfile` and backed off, an upstream
/// connect that fails for lack of descriptors is counted as `emfile`, not
/// blamed on the upstream, the admin still answers `/ready` and `/stats`,
/// and meshgate serves again once the connections close.
#[test]
fn out_of_descriptors_is_counted_and_the_admin_stays_reachable() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mut mg = Meshgate::start(&http_config(port, backend.addr, ""));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = mg.child.id();
    // A limit a few descriptors above what it holds now.
    let limit = (open_fds(pid) + 8) as u64;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on our own child with a valid rlimit; the old
    // value is not asked for.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // More clients than descriptors: the rest wait in the backlog.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until_within(20, "an accept failure", || {
        mg.metric(
            "meshgate_listener_downstream_cx_accept_error_total",
            &[("listener", "web"), ("reason", "emfile")],
        ) >= 1.0
    });
    // The admin answers, more than once.
    for _ in 0..3 {
        assert_eq!(mg.admin_get("/ready").0, 200);
    }
    // Accepted clients ask for something: the upstream connect has no
    // descriptor either.
    for c in &mut clients {
        let _ = c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    wait_until_within(20, "an upstream connect failure", || {
        mg.metric(
            "meshgate_cluster_upstream_cx_connect_fail_total",
            &[("cluster", "backend"), ("reason", "emfile")],
        ) >= 1.0
    });
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_cx_connect_fail_total",
            &[("cluster", "backend"), ("reason", "refused")],
        ),
        0.0
    );
    // Accept failures are backed off, not retried every few milliseconds.
    let before = mg.metric(
        "meshgate_listener_downstream_cx_accept_error_total",
        &[("listener", "web")],
    );
    // Time on purpose: this proves a rate (at most 10 retries in 1 s).
    std::thread::sleep(Duration::from_millis(1000));
    let after = mg.metric(
        "meshgate_listener_downstream_cx_accept_error_total",
        &[("listener", "web")],
    );
    assert!(
        after - before <= 10.0,
        "{before} -> {after} accept failures in 1 s"
    );
    // Connections close: it serves again.
    drop(clients);
    wait_until_within(20, "recovery", || get(addr, "/again") == 200);
    assert!(mg.child.try_wait().unwrap().is_none());
    let log = mg.log_text();
    let warnings = log.matches("accept failed; backing off").count();
    assert_eq!(warnings, 1, "accept warnings:\n{log}");
}

/// Runs `tests/peers/h2_timeouts.py PORT CASE`; its output.
fn h2_case(port: u16, case: &str) -> String {
    let out = std::process::Command::new("timeout")
        .args(["40", "python3"])
        .arg(workspace().join("tests/peers/h2_timeouts.py"))
        .args([&port.to_string(), case])
        .output()
        .expect("python3 with h2 (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The `after=` seconds of the first line starting with `prefix`.
fn after(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit("after=").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} line: {text}"))
}

/// HTTP/2 connection timeouts: a header block left open (HEADERS without
/// END_HEADERS) gets GOAWAY(PROTOCOL_ERROR) naming no stream after
/// `request_headers_timeout`, and a connection with no active stream is
/// closed after `common_http_protocol_options.idle_timeout` (GOAWAY
/// NO_ERROR) even though it keeps exchanging PINGs. Both are counted.
#[test]
fn http2_header_block_and_idle_connection_time_out() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let extra = "              codec: http2\n              codec_options: {http2: {request_headers_timeout: 1s}}\n              common_http_protocol_options: {idle_timeout: 1500ms}\n";
    let mg = Meshgate::start(&http_config(port, backend.addr, extra));

    let out = h2_case(port, "header");
    assert!(
        out.contains("GOAWAY code=1 last=0 debug=header_timeout "),
        "{out}"
    );
    let t = after(&out, "GOAWAY");
    assert!((0.9..5.0).contains(&t), "header timeout after {t}s: {out}");
    assert!(out.contains("EOF"), "{out}");
    let v = mg.metric(
        "meshgate_http_downstream_cx_protocol_error_total",
        &[
            ("listener", "web"),
            ("codec", "http2"),
            ("reason", "header_timeout"),
        ],
    );
    assert_eq!(v, 1.0);

    let out = h2_case(port, "idle");
    assert!(out.contains("RESPONSE"), "{out}");
    // hyper's graceful GOAWAY: first with the highest id, then naming
    // the last stream (RFC 9113 section 6.8).
    assert!(out.contains("GOAWAY code=0 "), "{out}");
    let t = after(&out, "GOAWAY");
    assert!((1.3..6.0).contains(&t), "idle close after {t}s: {out}");
    assert!(after(&out, "EOF") < 10.0, "{out}");
    let v = mg.metric(
        "meshgate_http_downstream_cx_idle_timeout_total",
        &[("listener", "web"), ("codec", "http2")],
    );
    assert!(v >= 1.0, "{v}");
}

/// HTTP/2 across SIGTERM: 10 clients sending requests back to back get a
/// GOAWAY, and every request meshgate did not refuse by the GOAWAY's last
/// stream id is answered; meshgate exits 0.
#[test]
fn sigterm_drain_answers_every_accepted_http2_stream() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mut mg = Meshgate::start_with_args(
        &http_config(port, backend.addr, ""),
        &["--drain-time", "10s"],
    );
    let clients: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || h2_case(port, "busy")))
        .collect();
    // Every client connected, and busy.
    wait_until_within(30, "ten clients", || {
        mg.metric(
            "meshgate_listener_downstream_cx_active",
            &[("listener", "web")],
        ) >= 10.0
    });
    let start = backend.hits();
    wait_until_within(20, "traffic", || backend.hits() >= start + 100);
    mg.terminate();
    let status = mg
        .wait_exit(Duration::from_secs(20))
        .expect("meshgate exits");
    for c in clients {
        let out = c.join().unwrap();
        assert!(out.starts_with("OK "), "{out}");
    }
    assert!(status.success(), "{status}");
}

/// meshgate's own messages in protocol errors start the same way as its
/// Dubbo and Bolt ones: `meshgate: ...` in HTTP/1.1 local replies, in
/// refused request heads and in a gRPC local reply's `grpc-message`.
#[test]
fn own_error_messages_start_with_meshgate() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let yaml = http_config(port, backend.addr, "").replace("prefix: /}", "prefix: /api}");
    let _mg = Meshgate::start(&yaml);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // No route: a local reply.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_reply(&mut BufReader::new(s)).unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "meshgate: no route matched\n")
    );
    // A refused head (two Host fields).
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    let r = read_reply(&mut BufReader::new(s)).unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "meshgate: bad request\n")
    );
    // gRPC: the status message.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--http2-prior-knowledge",
        ])
        .args(["-H", "content-type: application/grpc", "--data-binary", ""])
        .arg(format!("http://127.0.0.1:{port}/pkg.Svc/Method"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains("grpc-message: meshgate: no route matched"),
        "{head}"
    );
}
