//! A scripted, recording raw HTTP/1.1 upstream for the end-to-end tests:
//! per connection it reads a request head, answers exactly the bytes the
//! test scripts (or nothing), and records every byte that reached it, so a
//! test shows what meshgate sent upstream (e.g. that an aborted request
//! body never completed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the upstream does once a request head arrived.
#[derive(Clone)]
pub enum Script {
    /// Writes these bytes, then keeps reading (and recording) until the
    /// peer closes.
    Answer(Vec<u8>),
    /// Writes these bytes and closes at once, the rest of the request
    /// unread (the kernel answers further data with a reset).
    AnswerAndClose(Vec<u8>),
    /// Never answers; reads until the peer closes.
    Silent,
    /// Reads until the request's bytes contain `until`, then answers.
    AnswerAfter { until: Vec<u8>, bytes: Vec<u8> },
}

/// One upstream connection as seen by the upstream.
#[derive(Default, Clone)]
pub struct Recorded {
    pub bytes: Vec<u8>,
    /// meshgate closed (or reset) the connection.
    pub closed: bool,
}

#[derive(Default)]
struct State {
    conns: Vec<Recorded>,
}

/// A running scripted upstream.
pub struct Scripted {
    pub addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    !n.is_empty() && h.windows(n.len()).any(|w| w == n)
}

impl Scripted {
    /// Binds port 0 and answers every connection with `script(head)`.
    pub fn start(script: impl Fn(&[u8]) -> Script + Send + Sync + 'static) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let st = st.clone();
                let script = script.clone();
                std::thread::spawn(move || serve(s, &st, &*script));
            }
        });
        Self { addr, state }
    }

    /// The connections so far.
    pub fn conns(&self) -> Vec<Recorded> {
        self.state.0.lock().unwrap().conns.clone()
    }

    /// Waits until connection `i` exists and was closed by meshgate.
    pub fn wait_closed(&self, i: usize) -> Recorded {
        let (m, cv) = &*self.state;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = m.lock().unwrap();
        loop {
            if let Some(c) = g.conns.get(i)
                && c.closed
            {
                return c.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "upstream connection {i} never closed");
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }
}

fn serve(
    mut s: TcpStream,
    st: &(Mutex<State>, Condvar),
    script: &(dyn Fn(&[u8]) -> Script + Send + Sync),
) {
    let i = {
        let mut g = st.0.lock().unwrap();
        g.conns.push(Recorded::default());
        g.conns.len() - 1
    };
    let record = |data: &[u8], closed: bool| {
        let mut g = st.0.lock().unwrap();
        g.conns[i].bytes.extend_from_slice(data);
        g.conns[i].closed |= closed;
        st.1.notify_all();
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // The head.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return record(&[], true),
            Ok(n) => {
                record(&buf[..n], false);
                seen.extend_from_slice(&buf[..n]);
                if contains(&seen, b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    match script(&seen) {
        Script::Answer(bytes) => {
            let _ = s.write_all(&bytes);
        }
        Script::AnswerAndClose(bytes) => {
            let _ = s.write_all(&bytes);
            drop(s);
            return record(&[], true);
        }
        Script::Silent => {}
        Script::AnswerAfter { until, bytes } => {
            while !contains(&seen, &until) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return record(&[], true),
                    Ok(n) => {
                        record(&buf[..n], false);
                        seen.extend_from_slice(&buf[..n]);
                    }
                }
            }
            let _ = s.write_all(&bytes);
        }
    }
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return record(&[], true),
            Ok(n) => record(&buf[..n], false),
        }
    }
}
