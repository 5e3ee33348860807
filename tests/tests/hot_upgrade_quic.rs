//! Hot upgrade of an HTTP/3 (QUIC) listener through the real binary, with
//! aioquic as the client: the UDP socket is handed over, new connections
//! go to the new process, and a request in flight on a connection of the
//! old process completes there, twice in a row (three processes), because
//! the new process forwards the old connections' packets
//! (`core/src/upgrade/quic_steer.rs`) instead of resetting them.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

fn config(port: u16, backend: &HttpBackend) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
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
                      - match: {{prefix: /api/}}
                        route: {{cluster: backend, timeout: 30s}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
        addr = backend.addr,
    )
}

/// tests/peers/h3_hold.py: a POST half sent, held open until `finish`.
struct Held {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Held {
    fn start(port: u16) -> Self {
        let mut child = Command::new("timeout")
            .args(["60", "python3"])
            .arg(workspace().join("tests/peers/h3_hold.py"))
            .arg(port.to_string())
            .arg(certs("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aioquic (tests/run.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "SENT", "the HTTP/3 client did not start");
        Self { child, stdin, out }
    }

    /// Sends the rest of the body; the client's verdict line.
    fn finish(mut self) -> String {
        writeln!(self.stdin, "go").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line
    }
}

#[test]
fn http3_requests_in_flight_finish_on_their_process_across_two_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let yaml = config(port, &backend);

    let mut first = upgrade::start(&yaml, &sock, "30s");
    let a = Held::start(port);
    let second = upgrade::start(&yaml, &sock, "30s");
    upgrade::wait_taken_over(&second);
    assert_eq!(
        second.metric("meshgate_upgrade_sockets_inherited_total", &[]),
        3.0,
        "the QUIC socket, its packet channel and the admin socket"
    );
    // A new connection is the new process's.
    let b = Held::start(port);
    let third = upgrade::start(&yaml, &sock, "30s");
    upgrade::wait_taken_over(&third);

    // Both requests complete on the processes that hold their connection,
    // their packets passed on by the newer processes.
    let ra = a.finish();
    assert!(
        ra.starts_with("status=200") && ra.contains("body-bytes=10000"),
        "{ra}"
    );
    let rb = b.finish();
    assert!(
        rb.starts_with("status=200") && rb.contains("body-bytes=10000"),
        "{rb}"
    );
    assert!(
        third.metric(
            "meshgate_upgrade_quic_packets_total",
            &[("result", "forwarded")]
        ) > 0.0,
        "the newest process forwarded no packet"
    );
    // A fresh request is served by the newest process.
    let r = aioquic::get(port, &["/api/fresh"], None);
    assert!(r[0].1.contains("backend=b"), "{}", r[0].1);

    // The old processes, their requests done, drain and exit 0.
    upgrade::wait_exit_0(&mut first, Duration::from_secs(40));
    let mut second = second;
    upgrade::wait_exit_0(&mut second, Duration::from_secs(40));
    drop(third);
}
