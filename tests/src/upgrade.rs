//! Hot-upgrade scaffolding shared by tests/tests/hot_upgrade*.rs: starting
//! meshgate on an upgrade socket, waiting for a hand-over, a WebSocket-like
//! echo upstream and a client holding one such tunnel.

use crate::{Meshgate, wait_until_within};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// meshgate on `yaml`, taking over from whatever listens on `sock`, with
/// `drain` as its drain time.
pub fn start(yaml: &str, sock: &Path, drain: &str) -> Meshgate {
    Meshgate::start_with_args(
        yaml,
        &[
            "--upgrade-socket",
            sock.to_str().unwrap(),
            "--drain-time",
            drain,
        ],
    )
}

/// Waits until `new` says it took over, and counted it.
pub fn wait_taken_over(new: &Meshgate) {
    wait_until_within(20, "the new process to take over", || {
        new.log_text().contains("this one serves")
    });
    new.wait_metric(
        "meshgate_upgrade_handover_total",
        &[("role", "new"), ("result", "ok")],
        |v| v == 1.0,
    );
}

/// Waits until `old` exited, and asserts it exited 0.
pub fn wait_exit_0(old: &mut Meshgate, within: Duration) {
    let st = old.wait_exit(within).unwrap_or_else(|| {
        panic!(
            "the old process did not exit after the hand-over:\n{}",
            old.log_text()
        )
    });
    assert!(st.success(), "old process: {st}\n{}", old.log_text());
}

/// Waits until `new` says it took over, and `old` exited 0.
pub fn wait_handover(old: &mut Meshgate, new: &Meshgate) {
    wait_taken_over(new);
    wait_exit_0(old, Duration::from_secs(15));
}

/// An upstream answering any request with `101 Switching Protocols`, then
/// echoing the tunnel's bytes.
pub fn echo_upgrade_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket upgrade through meshgate on `port` (`path`): the open tunnel
/// after its `101`.
pub fn websocket(port: u16, path: &str) -> TcpStream {
    let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        ws,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(ws.read(&mut b).unwrap(), 1, "closed before the 101");
        head.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    ws
}

/// Sends `msg` through an echo tunnel and checks it comes back whole.
pub fn echo(ws: &mut TcpStream, msg: &[u8]) {
    ws.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    ws.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// One more listener, on `port`, answering `extra` itself (a config that
/// grows by a listener at an upgrade).
pub fn extra_listener(port: u16) -> String {
    format!(
        r#"  - name: extra
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
                        direct_response: {{status: 200, body: "extra"}}
"#
    )
}
