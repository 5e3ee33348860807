//! Hot upgrade (`--upgrade-socket`) through the real binary: listening
//! sockets (and the admin's) handed to a new process three times in a row
//! under keep-alive and connection-per-request load with no failed
//! request, the last time to a config with one more listener; each old
//! process exits 0. A new process with a bad config, or one that fails
//! after receiving the sockets, or one speaking another protocol version,
//! leaves the old one serving.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::{Load, get};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A listener on `port` routing to `backend`, plus `extra` listener text.
fn config(port: u16, backend: &HttpBackend, extra: &str) -> String {
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
{extra}
clusters:
  - name: backends
    connect_timeout: 1s
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    )
}

fn start(yaml: &str, sock: &Path) -> Meshgate {
    upgrade::start(yaml, sock, "3s")
}

/// Clients opening a new connection per request until stopped: (ok, failed).
fn one_shot_load(port: u16) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !s.load(Ordering::Relaxed) {
            match get(port, "/") {
                Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                None => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    });
    (stop, t)
}

#[test]
fn three_upgrades_under_load_fail_no_request_and_old_processes_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let backends: Vec<HttpBackend> = ["b0", "b1", "b2", "b3"]
        .into_iter()
        .map(|n| HttpBackend::start(n, Proto::Http1))
        .collect();
    let (port, extra_port) = (free_port(), free_port());
    let mut old = start(&config(port, &backends[0], ""), &sock);
    let admin = old.admin.unwrap();
    let load = Load::start(port, 4);
    let (stop_one_shot, one_shot) = one_shot_load(port);
    load.wait_more(50);
    for (generation, backend) in backends.iter().enumerate().skip(1) {
        let extra = if generation == 3 {
            upgrade::extra_listener(extra_port)
        } else {
            String::new()
        };
        let new = start(&config(port, backend, &extra), &sock);
        // The admin socket was handed over: same port.
        assert_eq!(new.admin.unwrap(), admin);
        upgrade::wait_handover(&mut old, &new);
        // Served by the new process (its backend answers) under load.
        load.sample(20, 50);
        assert!(load.seen(&format!("b{generation}")) >= 50);
        assert_eq!(
            load.seen(&format!("b{}", generation - 1)),
            0,
            "generation {generation}: the old backend still answers"
        );
        // Its admin answers: it counts its own hand-over and the sockets it
        // took (the listener and the admin).
        assert_eq!(
            new.metric(
                "meshgate_upgrade_handover_total",
                &[("role", "new"), ("result", "ok")]
            ),
            1.0
        );
        assert_eq!(
            new.metric("meshgate_upgrade_sockets_inherited_total", &[]),
            2.0
        );
        old = new;
    }
    // The listener only the last config has serves.
    assert_eq!(get(extra_port, "/").as_deref(), Some("extra"));
    stop_one_shot.store(true, Ordering::Relaxed);
    let (one_ok, one_failed) = one_shot.join().unwrap();
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} failed keep-alive requests of {}",
        ok + failed
    );
    assert_eq!(
        one_failed,
        0,
        "{one_failed} failed one-shot requests of {}",
        one_ok + one_failed
    );
    assert!(one_ok > 0);
    // The upgrade socket now belongs to the last process.
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::symlink_metadata(&sock).unwrap().file_type()
    ));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a temporary upgrade socket was left behind"
    );
    drop(old);
}

/// Runs a new process to its exit on `yaml`: (exit code, log).
fn run_new(yaml: &str, sock: &Path, dir: &Path) -> (i32, String) {
    let file = dir.join("new.yaml");
    std::fs::write(&file, yaml.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
    let out = Command::new(bin())
        .args(["run", "-c", file.to_str().unwrap()])
        .args(["--upgrade-socket", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn failed_new_processes_leave_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let b0 = HttpBackend::start("b0", Proto::Http1);
    let port = free_port();
    let old = start(&config(port, &b0, ""), &sock);
    let load = Load::start(port, 2);
    load.wait_more(20);

    // A bad config: refused before the old process is even contacted.
    let bad =
        config(port, &b0, "").replace("connect_timeout: 1s", "connect_timeout: 1s\n    bogus: 1");
    let (code, log) = run_new(&bad, &sock, dir.path());
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("bogus"), "the error names the field: {log}");

    // A config whose new listener cannot bind: the new process fails after
    // receiving the sockets, before it is ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (code, log) = run_new(
        &config(port, &b0, &upgrade::extra_listener(taken_port)),
        &sock,
        dir.path(),
    );
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("received the old process's listening sockets"),
        "{log}"
    );
    assert!(log.contains("listeners[1].address"), "{log}");
    old.wait_metric(
        "meshgate_upgrade_handover_total",
        &[("role", "old"), ("result", "error")],
        |v| v == 1.0,
    );

    // Another protocol version: refused by name.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = br#"{"type":"hello","version":99,"min_version":99,"pid":1}"#;
    s.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    s.write_all(hello).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let reply = String::from_utf8(body).unwrap();
    assert!(reply.contains(r#""type":"refused""#), "{reply}");
    assert!(reply.contains("versions 1..=2"), "{reply}");
    drop(s);
    old.wait_metric(
        "meshgate_upgrade_handover_total",
        &[("role", "old"), ("result", "refused")],
        |v| v == 1.0,
    );

    // Garbage on the upgrade socket: a bounded frame, refused.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut rest);
    old.wait_metric(
        "meshgate_upgrade_handover_total",
        &[("role", "old"), ("result", "error")],
        |v| v == 2.0,
    );

    // Through all of it the old process served, and still hands over.
    load.wait_more(20);
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    let mut old = old;
    let new = start(&config(port, &b0, ""), &sock);
    upgrade::wait_handover(&mut old, &new);
    assert!(get(port, "/").is_some());
}

/// With xDS, the new process reports ready only after the control plane's
/// first update: the listener xDS delivers takes the old process's socket
/// for its address, and no request under load fails.
#[test]
fn with_xds_the_new_process_takes_over_after_its_initial_fetch() {
    use meshgate_tests::xds::*;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![eds_cluster("svc-a")]);
    mgmt.set(ENDPOINT, "e1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc-a", 1)])]);
    let mut old = start(&bootstrap(mgmt.addr.port()), &sock);
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 4);
    load.wait_more(50);
    let new = start(&bootstrap(mgmt.addr.port()), &sock);
    upgrade::wait_handover(&mut old, &new);
    load.wait_more(100);
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    let log = new.log_text();
    let applied = log.find("dynamic config applied").expect("xDS applied");
    let inherited = log
        .find(&format!(
            "inherited from the old process kind=Tcp address=127.0.0.1:{port}"
        ))
        .unwrap_or_else(|| panic!("the xDS listener did not take the old socket:\n{log}"));
    let serves = log.find("this one serves").unwrap();
    assert!(inherited < serves && applied < serves, "{log}");
}

/// A backend that answers an upgrade request with 101 and then echoes
/// every byte.
/// A WebSocket opened on the old process is not cut by the hand-over: it
/// goes on, on the old process, until the client closes it; then the old
/// process exits 0.
#[test]
fn a_websocket_open_at_hand_over_goes_on_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let backend = upgrade::echo_upgrade_backend();
    let port = free_port();
    let yaml = format!(
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
                        route: {{cluster: ws}}
clusters:
  - name: ws
    endpoints: [{{address: "{backend}"}}]
"#
    );
    let mut old = upgrade::start(&yaml, &sock, "20s");
    let mut ws = upgrade::websocket(port, "/chat");
    let echo = upgrade::echo;
    echo(&mut ws, b"before");
    let new = upgrade::start(&yaml, &sock, "20s");
    // The admin port answers from the new process (the hand-over is
    // counted once it is complete); the WebSocket stays open on the old
    // one, which waits for it.
    new.wait_metric(
        "meshgate_upgrade_handover_total",
        &[("role", "new"), ("result", "ok")],
        |v| v == 1.0,
    );
    for i in 0..20 {
        echo(&mut ws, format!("after {i}").as_bytes());
    }
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process left while the WebSocket was open"
    );
    drop(ws);
    let st = old
        .wait_exit(Duration::from_secs(10))
        .expect("the old process exits once its WebSocket closed");
    assert!(st.success(), "{st}");
}

/// A UDP proxy listener's socket is handed over too: datagrams are
/// answered before and after, the new process took the socket, and the
/// old one exits 0 once its session went idle.
#[test]
fn a_udp_proxy_socket_is_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: udp
    address: 127.0.0.1:{port}
    udp_proxy: {{cluster: echo, idle_timeout: 300ms}}
clusters:
  - name: echo
    endpoints: [{{address: "{echo_addr}"}}]
"#
    );
    let ask = |msg: &[u8]| -> Vec<u8> {
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..10 {
            c.send_to(msg, ("127.0.0.1", port)).unwrap();
            if let Ok(n) = c.recv(&mut buf) {
                return buf[..n].to_vec();
            }
        }
        panic!("no answer through the UDP proxy");
    };
    let mut old = start(&yaml, &sock);
    assert_eq!(ask(b"before"), b"before");
    let new = start(&yaml, &sock);
    upgrade::wait_handover(&mut old, &new);
    assert_eq!(ask(b"after"), b"after");
    assert_eq!(
        new.metric("meshgate_upgrade_sockets_inherited_total", &[]),
        2.0
    );
}
