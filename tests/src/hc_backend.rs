//! A backend for the health-check tests whose traffic and health answers
//! differ: an HTTP/1.1 server on port 0 answering `/healthz` with the
//! health status and everything else with the traffic status (both 200
//! by default), the body its name. Optionally a second listener (a
//! separate health port) that answers only `/healthz`. It records the
//! `host` header of each health check.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Default)]
struct State {
    traffic_status: AtomicU16,
    health_status: AtomicU16,
    traffic: AtomicU32,
    checks: AtomicU32,
    /// Health checks received on the main port (not the health port).
    checks_on_main: AtomicU32,
    hosts: Mutex<Vec<String>>,
    /// When each health check arrived (either port).
    check_times: Mutex<Vec<Instant>>,
}

/// A running backend (its threads live as long as the test process).
pub struct HcBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The separate health port, when started with one.
    pub health_addr: Option<SocketAddr>,
    state: Arc<State>,
}

impl HcBackend {
    pub fn start(name: &'static str) -> Self {
        Self::start_inner(name, false)
    }

    /// With a second listener that answers health checks only.
    pub fn start_with_health_port(name: &'static str) -> Self {
        Self::start_inner(name, true)
    }

    fn start_inner(name: &'static str, health_port: bool) -> Self {
        let state = Arc::new(State::default());
        state.traffic_status.store(200, Ordering::Relaxed);
        state.health_status.store(200, Ordering::Relaxed);
        let addr = listen(name, state.clone(), true);
        let health_addr = health_port.then(|| listen(name, state.clone(), false));
        Self {
            name,
            addr,
            health_addr,
            state,
        }
    }

    pub fn set_traffic_status(&self, s: u16) {
        self.state.traffic_status.store(s, Ordering::Relaxed);
    }

    pub fn set_health_status(&self, s: u16) {
        self.state.health_status.store(s, Ordering::Relaxed);
    }

    /// Requests outside `/healthz`.
    pub fn traffic(&self) -> u32 {
        self.state.traffic.load(Ordering::Relaxed)
    }

    /// `/healthz` requests (either port).
    pub fn checks(&self) -> u32 {
        self.state.checks.load(Ordering::Relaxed)
    }

    /// `/healthz` requests on the main port.
    pub fn checks_on_main(&self) -> u32 {
        self.state.checks_on_main.load(Ordering::Relaxed)
    }

    /// When each health check so far arrived, in order.
    pub fn check_times(&self) -> Vec<Instant> {
        self.state.check_times.lock().unwrap().clone()
    }

    /// The `host` headers of the health checks so far.
    pub fn check_hosts(&self) -> Vec<String> {
        self.state.hosts.lock().unwrap().clone()
    }
}

fn listen(name: &'static str, st: Arc<State>, main: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let st = st.clone();
            std::thread::spawn(move || serve(conn, name, &st, main));
        }
    });
    addr
}

fn serve(conn: TcpStream, name: &str, st: &State, main: bool) {
    let Ok(mut w) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut close, mut len, mut host) = (false, 0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "connection" if v.eq_ignore_ascii_case("close") => close = true,
                    "content-length" => len = v.parse().unwrap_or(0),
                    "host" => host = v.to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if std::io::Read::read_exact(&mut r, &mut body).is_err() {
            return;
        }
        let status = if path == "/healthz" {
            st.check_times.lock().unwrap().push(Instant::now());
            st.checks.fetch_add(1, Ordering::Relaxed);
            if main {
                st.checks_on_main.fetch_add(1, Ordering::Relaxed);
            }
            st.hosts.lock().unwrap().push(host);
            st.health_status.load(Ordering::Relaxed)
        } else if !main {
            404
        } else {
            st.traffic.fetch_add(1, Ordering::Relaxed);
            st.traffic_status.load(Ordering::Relaxed)
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{}\r\n{name}",
            name.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A sofa-rpc-node provider (`tests/peers/rpc_peer.js server`) on a given
/// port (0: any), so that a test can kill it and start it again on the
/// same port. Killed on drop.
pub struct RpcProvider {
    child: std::process::Child,
    pub port: u16,
}

impl RpcProvider {
    pub fn start(protocol: &str, name: &str, port: u16) -> Self {
        use std::process::{Command, Stdio};
        let mut child = Command::new("node")
            .arg(crate::workspace().join("tests/peers/rpc_peer.js"))
            .args(["server", protocol, &port.to_string(), name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node with sofa-rpc-node (tests/run.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("provider did not start: {line:?}"));
        Self { child, port }
    }
}

impl Drop for RpcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
