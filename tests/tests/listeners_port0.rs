//! Data listeners on port 0: each gets an ephemeral port from the kernel,
//! `/listeners` on the admin shows the bound address (TCP, and a QUIC
//! listener's UDP one), the "listening" log line carries it, and a reload
//! keeps a port-0 listener on the port it got.

use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

/// A listener named `name` on `127.0.0.1:0` answering `body` and a
/// newline on every path.
fn listener(name: &str, body: &str) -> String {
    format!(
        r#"  - name: {name}
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
                        direct_response: {{status: 200, body: "{body}\n"}}
"#
    )
}

/// A QUIC (HTTP/3) listener `h3` on `127.0.0.1:0` answering `h3\n`.
fn quic_listener() -> String {
    format!(
        r#"  - name: h3
    address: 127.0.0.1:0
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "h3\n"}}
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    )
}

fn config(listeners: &[String]) -> String {
    format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}",
        listeners.concat()
    )
}

/// One HTTP/1.1 GET / to `addr`: the response body, or None.
fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split_once("\r\n\r\n").map(|x| x.1.to_string()))
        .flatten()
}

/// Rewrites the running config atomically (write + rename).
fn rewrite(mg: &Meshgate, yaml: &str) {
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, mg.fill(yaml)).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
}

/// GET / over HTTP/3 with ngtcp2's `gtlsclient`: the body.
fn h3_get(port: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .args(["30", "gtlsclient", "-q", "--exit-on-all-streams-close"])
        .arg(format!("--download={}", dir.path().display()))
        .args(["--sni=localhost", "127.0.0.1", &port.to_string()])
        .arg(format!("https://localhost:{port}/index"))
        .output()
        .expect("gtlsclient (Debian ngtcp2-client; tests/run.sh installs it)");
    assert!(
        o.status.success(),
        "gtlsclient: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(dir.path().join("index")).unwrap()
}

#[test]
fn two_port_zero_listeners_serve_and_keep_their_ports_across_a_reload() {
    let mg = Meshgate::start(&config(&[listener("a", "a"), listener("b", "b")]));
    let (a, b) = (mg.listener_addr("a"), mg.listener_addr("b"));
    let admin = mg.admin.unwrap();
    assert!(a.port() != 0 && b.port() != 0, "{a} {b}");
    assert!(a != b && a != admin && b != admin, "{a} {b} {admin}");
    assert_eq!(get(a).as_deref(), Some("a\n"));
    assert_eq!(get(b).as_deref(), Some("b\n"));

    // `/listeners` shows the configured and the bound address.
    let all = mg.listeners();
    assert_eq!(all.len(), 2, "{all:?}");
    for (l, bound) in all.iter().zip([a, b]) {
        assert_eq!(l["address"], "127.0.0.1:0", "{l}");
        assert_eq!(l["quic"], false, "{l}");
        assert_eq!(l["bound"], serde_json::json!([bound.to_string()]), "{l}");
    }
    // So does the start log line.
    let log = mg.log_text();
    for (name, bound) in [("a", a), ("b", b)] {
        assert!(
            log.lines().any(|l| l.contains("listening")
                && l.contains(&format!("listener={name}"))
                && l.contains(&format!("bound={bound}"))),
            "{log}"
        );
    }

    // A reload that adds a third port-0 listener, changes a's routes and
    // leaves b alone: a and b stay on their ports, c gets a port of its own.
    let before = mg.config_dump()["version"].as_u64().unwrap();
    rewrite(
        &mg,
        &config(&[listener("a", "a2"), listener("b", "b"), listener("c", "c")]),
    );
    wait_until("the reload", || {
        mg.config_dump()["version"].as_u64().unwrap() > before
    });
    wait_until("listener c in /listeners", || mg.listeners().len() == 3);
    assert_eq!(mg.listener_addr("a"), a);
    assert_eq!(mg.listener_addr("b"), b);
    let c = mg.listener_addr("c");
    assert!(c.port() != 0 && c != a && c != b, "{c}");
    assert_eq!(get(a).as_deref(), Some("a2\n"));
    assert_eq!(get(b).as_deref(), Some("b\n"));
    assert_eq!(get(c).as_deref(), Some("c\n"));
    assert_eq!(
        mg.metric("meshgate_config_reload_total", &[("result", "error")]),
        0.0
    );

    // Removing a listener frees its entry.
    rewrite(&mg, &config(&[listener("b", "b")]));
    wait_until("a and c removed from /listeners", || {
        mg.listeners().len() == 1
    });
    assert_eq!(mg.listener_addr("b"), b);
    assert_eq!(get(b).as_deref(), Some("b\n"));
}

#[test]
fn a_quic_listener_on_port_zero_reports_its_udp_port() {
    let mg = Meshgate::start(&config(&[quic_listener(), listener("tcp", "tcp")]));
    let all = mg.listeners();
    let h3 = all
        .iter()
        .find(|l| l["name"] == "h3")
        .unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(h3["quic"], true, "{h3}");
    let udp = mg.listener_addr("h3");
    let tcp = mg.listener_addr("tcp");
    assert!(udp.port() != 0 && tcp.port() != 0, "{udp} {tcp}");
    assert_eq!(h3_get(udp.port()), "h3\n");
    assert_eq!(get(tcp).as_deref(), Some("tcp\n"));
}

/// Port 0 aside, an address used twice is still refused.
#[test]
fn a_fixed_address_used_twice_is_still_refused() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let twice = config(&[listener("a", "a"), listener("b", "b")])
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("{ADMIN}", "127.0.0.1:0");
    std::fs::write(&path, twice).unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("listeners[1].address"),
        "{out}{err}"
    );
}
