//! End-to-end test of WebSocket (HTTP/1.1 Upgrade) requests in a
//! cluster's pending queue (Envoy's `circuit_breakers.thresholds[]`
//! `max_connections` / `max_pending_requests`): a WebSocket handshake that
//! finds the cluster at `max_connections` waits for a connection slot like
//! any other request, bounded by `max_pending_requests` (503 +
//! `x-envoy-overloaded` past it) and the route timeout, counted in the same
//! metrics. An open tunnel holds its upstream connection's slot until it
//! closes. The real meshgate binary; the real `websockets` Python package
//! as client and echo server (tests/peers/ws_peer.py).

use meshgate_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const PENDING: &str = "meshgate_cluster_upstream_rq_pending_active";
const UP: &[(&str, &str)] = &[("cluster", "up")];

fn peer() -> std::path::PathBuf {
    workspace().join("tests/peers/ws_peer.py")
}

/// The echo server; killed on drop.
struct Server(Child, u16);

impl Server {
    fn start() -> Self {
        let mut c = Command::new("python3")
            .arg(peer())
            .args(["server", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with websockets (tests/run.sh installs it)");
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("websocket server did not start: {line:?}"));
        Self(c, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebSocket client (`ws_peer.py hold`) that keeps its connection open
/// until `close`; its output lines arrive on `lines`.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Client {
    fn open(port: u16, path: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(peer())
            .args(["hold", &format!("ws://127.0.0.1:{port}{path}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The client's next line (it exits after a refused handshake).
    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the websocket client")
    }

    /// Whether the client printed nothing yet (still in its handshake).
    fn silent(&self) -> bool {
        self.lines.try_recv().is_err()
    }

    /// Sends one more echo over the open connection, then closes it.
    fn close(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"close\n").unwrap();
        drop(stdin);
        assert_eq!(self.next(), "CLOSED");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(mg: &Meshgate, name: &str) -> f64 {
    mg.metric(name, UP)
}

/// `max_connections: 1`, `max_pending_requests: 1`: an open tunnel holds
/// the one connection; a second handshake waits in the queue (not
/// answered, pending gauge 1); a third is refused at once with 503 +
/// `x-envoy-overloaded` (pending overflow counted). The first tunnel
/// closes: the waiting one gets the slot and its tunnel works. A
/// handshake waiting behind it on a route with a 0.5 s timeout leaves the
/// queue at that timeout with 504, counted as cancelled.
#[test]
fn websocket_handshakes_wait_for_a_connection_slot_and_overflow_with_503() {
    let server = Server::start();
    let clusters = format!(
        r#"  - name: up
    endpoints: [{{address: "127.0.0.1:{}"}}]
    circuit_breakers:
      thresholds:
        - {{max_connections: 1, max_pending_requests: 1}}
"#,
        server.1
    );
    let yaml = proxy_config(
        &[
            "{match: {prefix: /short}, route: {cluster: up, timeout: 0.5s}}",
            "{match: {prefix: /}, route: {cluster: up, timeout: 15s}}",
        ],
        &clusters,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");

    let mut first = Client::open(port, "/one");
    assert_eq!(first.next(), "OPEN");
    assert_eq!(metric(&mg, "meshgate_cluster_upstream_cx_active"), 1.0);

    // The second waits for the first's connection slot.
    let mut second = Client::open(port, "/two");
    mg.wait_metric(PENDING, UP, |v| v == 1.0);
    assert!(second.silent(), "the second handshake is not answered yet");

    // The third finds the queue full.
    let t = Instant::now();
    let third = Client::open(port, "/three");
    assert_eq!(third.next(), "STATUS 503 true");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    assert_eq!(metric(&mg, "meshgate_cluster_upstream_cx_total"), 1.0);

    // The first tunnel ends: its slot goes to the waiting handshake.
    first.close();
    assert_eq!(second.next(), "OPEN");
    mg.wait_metric(PENDING, UP, |v| v == 0.0);
    assert_eq!(
        metric(&mg, "meshgate_cluster_upstream_rq_pending_total"),
        1.0
    );
    assert_eq!(metric(&mg, "meshgate_cluster_upstream_cx_total"), 2.0);
    assert_eq!(metric(&mg, "meshgate_cluster_upstream_cx_active"), 1.0);

    // A handshake behind the open tunnel, with a 0.5 s route timeout:
    // 504 at that timeout, out of the queue.
    let t = Instant::now();
    let timed_out = Client::open(port, "/short");
    assert_eq!(timed_out.next(), "STATUS 504 -");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    mg.wait_metric(
        "meshgate_cluster_upstream_rq_pending_cancelled_total",
        UP,
        |v| v == 1.0,
    );
    assert_eq!(
        metric(&mg, "meshgate_cluster_upstream_rq_pending_total"),
        2.0
    );
    second.close();
    // Never more than max_connections open.
    assert!(metric(&mg, "meshgate_cluster_upstream_cx_total") <= 2.0);
}
