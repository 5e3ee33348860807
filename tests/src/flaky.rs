//! A backend whose health the test switches: an HTTP/1.1 server on port 0
//! answering every request with the status the test set (200 by default;
//! 503 to fail), the body its name, and `x-envoy-degraded` when told to.
//! It counts the requests it got outside `/healthz` (traffic) and on it
//! (health checks).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};

#[derive(Default)]
struct State {
    status: AtomicU16,
    degraded: AtomicBool,
    traffic: AtomicU32,
    checks: AtomicU32,
}

/// A running flaky backend (its thread lives as long as the test).
pub struct Flaky {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Flaky {
    pub fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::Relaxed);
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, name, &st));
            }
        });
        Self { name, addr, state }
    }

    /// Every answer from now on has this status.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Answers carry `x-envoy-degraded` from now on (or not).
    pub fn set_degraded(&self, on: bool) {
        self.state.degraded.store(on, Ordering::Relaxed);
    }

    /// Requests received outside `/healthz`.
    pub fn traffic(&self) -> u32 {
        self.state.traffic.load(Ordering::Relaxed)
    }

    /// Requests received on `/healthz`.
    pub fn checks(&self) -> u32 {
        self.state.checks.load(Ordering::Relaxed)
    }
}

fn serve(conn: TcpStream, name: &str, st: &State) {
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut close = false;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if lower == "connection: close" {
                close = true;
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        if len > 0 {
            let mut body = vec![0; len];
            if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                return;
            }
        }
        if path == "/healthz" {
            st.checks.fetch_add(1, Ordering::Relaxed);
        } else {
            st.traffic.fetch_add(1, Ordering::Relaxed);
        }
        let status = st.status.load(Ordering::Relaxed);
        let degraded = if st.degraded.load(Ordering::Relaxed) {
            "x-envoy-degraded: 1\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{degraded}\r\n{name}",
            name.len()
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}
