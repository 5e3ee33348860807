//! Hot upgrade with connection migration (hand-over protocol version 2,
//! `core/src/upgrade/migrate.rs`), through the real binary: a real
//! sofa-rpc-node consumer (Dubbo, then Bolt) holding one connection and
//! calling in a loop while the binary is upgraded three times in a row
//! (the third config adds a listener) sees no failed call and never
//! reconnects (its own report: one TCP connection opened, none closed);
//! every new process counts the connection it took, every old one exits 0.
//! An idle HTTP/1.1 keep-alive connection opened before an upgrade serves
//! its next request from the new process on the same socket.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::rpc::{LoopConsumer, Provider};
use meshgate_tests::xds::get;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

fn start(yaml: &str, sock: &Path) -> Meshgate {
    upgrade::start(yaml, sock, "10s")
}

/// An RPC listener (`codec`) routing everything to the provider.
fn rpc_config(codec: &str, port: u16, provider: u16, extra: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rpc
    address: 127.0.0.1:{port}
    filter_chains:
      - name: plain
        filters:
          - name: proxy
            config:
              codec: {codec}
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: provider}}
{extra}clusters:
  - name: provider
    protocol: {codec}
    endpoints: [{{address: "127.0.0.1:{provider}"}}]
"#
    )
}

fn rpc_connection_survives_three_upgrades(codec: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let provider = Provider::start(codec, "p");
    let (port, extra_port) = (free_port(), free_port());
    let mut old = start(&rpc_config(codec, port, provider.port, ""), &sock);
    let consumer = LoopConsumer::start(codec, port, "com.meshgate.Echo", "echo", r#"["x"]"#);
    consumer.wait_more(20);
    for generation in 1..=3 {
        let extra = if generation == 3 {
            upgrade::extra_listener(extra_port)
        } else {
            String::new()
        };
        let new = start(&rpc_config(codec, port, provider.port, &extra), &sock);
        upgrade::wait_handover(&mut old, &new);
        // The consumer's one connection moved into the new process.
        new.wait_metric(
            "meshgate_upgrade_connections_migrated_total",
            &[("direction", "in")],
            |v| v == 1.0,
        );
        // And it calls on through it.
        consumer.wait_more(30);
        assert_eq!(
            new.metric(
                "meshgate_upgrade_migration_fallback_total",
                &[("reason", "error")]
            ),
            0.0
        );
        old = new;
    }
    assert_eq!(get(extra_port, "/").as_deref(), Some("extra"));
    let report = consumer.finish();
    assert!(
        report.errors.is_empty(),
        "{} failed calls of {}: {:?}",
        report.errors.len(),
        report.ok + report.errors.len() as u64,
        report.errors
    );
    assert!(report.ok >= 110, "{report:?}");
    assert_eq!(
        report.connects.len(),
        1,
        "the consumer reconnected: {report:?}"
    );
    assert_eq!(report.closes, 0, "its connection was closed: {report:?}");
    drop(old);
}

#[test]
fn a_dubbo_consumer_keeps_its_connection_across_three_upgrades() {
    rpc_connection_survives_three_upgrades("dubbo");
}

#[test]
fn a_bolt_consumer_keeps_its_connection_across_three_upgrades() {
    rpc_connection_survives_three_upgrades("bolt");
}

fn http_config(port: u16, backend: &HttpBackend) -> String {
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
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    )
}

/// One keep-alive request on `s`: the response's head and body.
fn request(s: &mut std::net::TcpStream) -> (String, String) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b).expect("the response");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if got.len() >= end + 4 + len {
                return (head, text[end + 4..end + 4 + len].to_string());
            }
        }
    }
}

#[test]
fn an_idle_http1_keep_alive_connection_is_served_by_the_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let b0 = HttpBackend::start("b0", Proto::Http1);
    let b1 = HttpBackend::start("b1", Proto::Http1);
    let port = free_port();
    let mut old = start(&http_config(port, &b0), &sock);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    let (head, body) = request(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(body.contains("backend=b0"), "{body}");
    // Idle now; the upgrade happens.
    let new = start(&http_config(port, &b1), &sock);
    upgrade::wait_handover(&mut old, &new);
    new.wait_metric(
        "meshgate_upgrade_connections_migrated_total",
        &[("direction", "in")],
        |v| v == 1.0,
    );
    // The same socket, the next request: the new process (its backend).
    assert_eq!(s.local_addr().unwrap(), local);
    let (head, body) = request(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("backend=b1"), "{body}");
    let (_, body) = request(&mut s);
    assert!(body.contains("backend=b1"), "{body}");
}
