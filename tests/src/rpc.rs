//! Helpers of the RPC end-to-end tests: the real Dubbo / Bolt peers
//! (sofa-rpc-node with dubbo-remoting, tests/peers/rpc_peer.js; the Python
//! dubbo-ssl-python consumer) and raw frame builders for hostile input.

use crate::workspace;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn peer() -> String {
    workspace()
        .join("tests/peers/rpc_peer.js")
        .to_string_lossy()
        .into_owned()
}

/// A sofa-rpc-node provider (`dubbo` or `bolt`), killed on drop.
pub struct Provider {
    child: Child,
    pub port: u16,
}

impl Provider {
    pub fn start(protocol: &str, name: &str) -> Self {
        // Port 0: the provider reports the port it got.
        let mut child = Command::new("node")
            .arg(peer())
            .args(["server", protocol, "0", name])
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
        Provider { child, port }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `rpc_peer.js call` reports.
#[derive(Debug)]
pub struct CallReport {
    pub ok: u64,
    pub errors: Vec<String>,
    pub results: Vec<serde_json::Value>,
    pub from: std::collections::BTreeMap<String, u64>,
}

/// Calls through the sofa-rpc-node consumer.
#[allow(clippy::too_many_arguments)]
pub fn node_call(
    protocol: &str,
    port: u16,
    iface: &str,
    method: &str,
    args: &str,
    count: u32,
    concurrency: u32,
    timeout_ms: u32,
    version: &str,
    group: &str,
) -> CallReport {
    let out = Command::new("node")
        .arg(peer())
        .args([
            "call",
            protocol,
            &format!("127.0.0.1:{port}"),
            iface,
            method,
            args,
            &count.to_string(),
            &concurrency.to_string(),
            &timeout_ms.to_string(),
            version,
            group,
        ])
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "node consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"));
    CallReport {
        ok: v["ok"].as_u64().unwrap_or(0),
        errors: v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect(),
        results: v["results"].as_array().cloned().unwrap_or_default(),
        from: v["from"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect(),
    }
}

/// Calls through the Python dubbo-ssl-python consumer; returns its printed
/// result or error.
pub fn python_call(port: u16, iface: &str, version: &str, method: &str, args: &str) -> String {
    let script = format!(
        r#"
from dubbo_ssl.client import DubboClient
c = DubboClient({iface:?}, None, version={version:?}, host="127.0.0.1:{port}")
try:
    print("OK", c.call({method:?}, {args}, timeout=5))
except Exception as e:
    print("ERR", e)
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with dubbo-ssl-python (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Appends a compact Hessian 2 string (shorter than 32 characters).
pub fn hstr(out: &mut Vec<u8>, s: &str) {
    assert!(s.chars().count() < 32);
    out.push(s.chars().count() as u8);
    out.extend(s.as_bytes());
}

/// A Dubbo 2 two-way hessian2 request frame for `service.method(string)`.
pub fn dubbo_request(
    id: u64,
    service: &str,
    method: &str,
    attachments: &[(&str, &str)],
) -> Vec<u8> {
    let mut body = Vec::new();
    for s in ["2.0.2", service, "1.0", method, "Ljava/lang/String;", "hi"] {
        hstr(&mut body, s);
    }
    body.push(b'H');
    for (k, v) in attachments {
        hstr(&mut body, k);
        hstr(&mut body, v);
    }
    body.push(b'Z');
    dubbo_frame(0xc2, 0, id, &body)
}

/// A Dubbo 2 frame with the given flag and status.
pub fn dubbo_frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0xda, 0xbb, flag, status];
    f.extend(id.to_be_bytes());
    f.extend((body.len() as u32).to_be_bytes());
    f.extend(body);
    f
}

/// A Dubbo frame read from a stream: (flag, status, id, body).
pub type DubboFrame = (u8, u8, u64, Vec<u8>);

/// Reads one Dubbo frame; `None` on EOF or timeout.
pub fn read_dubbo(s: &mut TcpStream) -> Option<DubboFrame> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    assert_eq!(&h[..2], &[0xda, 0xbb]);
    let id = u64::from_be_bytes(h[4..12].try_into().unwrap());
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((h[2], h[3], id, body))
}

/// The message of a Dubbo error response body (one Hessian string).
pub fn dubbo_error_message(body: &[u8]) -> String {
    match body.first() {
        Some(b'S') if body.len() >= 3 => String::from_utf8_lossy(&body[3..]).into_owned(),
        Some(&n) if n < 32 => String::from_utf8_lossy(&body[1..]).into_owned(),
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Whether the peer closed the connection (EOF within the timeout).
pub fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// Connects and writes `bytes`.
pub fn send_raw(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// A sofa-rpc-node consumer calling in a loop on one connection
/// (`rpc_peer.js loop`), reporting every TCP connection it opens.
pub struct LoopConsumer {
    child: Child,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: Option<std::thread::JoinHandle<String>>,
}

/// What a `LoopConsumer` reports at the end.
#[derive(Debug)]
pub struct LoopReport {
    pub ok: u64,
    pub errors: Vec<String>,
    /// The local port of every connection it opened.
    pub connects: Vec<u16>,
    /// Connections that closed.
    pub closes: u64,
}

impl LoopConsumer {
    pub fn start(protocol: &str, port: u16, iface: &str, method: &str, args: &str) -> Self {
        use std::sync::atomic::Ordering;
        let mut child = Command::new("node")
            .arg(peer())
            .args([
                "loop",
                protocol,
                &format!("127.0.0.1:{port}"),
                iface,
                method,
                args,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node with sofa-rpc-node (tests/run.sh installs it)");
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = ok.clone();
        let out = BufReader::new(child.stdout.take().unwrap());
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix("PROGRESS ") {
                    let n = p.split(' ').next().and_then(|n| n.parse().ok());
                    seen.store(n.unwrap_or(0), Ordering::Relaxed);
                } else if line.starts_with('{') {
                    last = line;
                }
            }
            last
        });
        LoopConsumer {
            child,
            ok,
            reader: Some(reader),
        }
    }

    /// Successful calls so far (updated every 10 calls).
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more calls succeeded.
    pub fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        crate::wait_until_within(30, "the consumer's calls", || self.ok() >= target);
    }

    /// Stops the loop and returns its report.
    pub fn finish(mut self) -> LoopReport {
        drop(self.child.stdin.take());
        let line = self.reader.take().unwrap().join().unwrap();
        let _ = self.child.wait();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"));
        LoopReport {
            ok: v["ok"].as_u64().unwrap_or(0),
            errors: v["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect(),
            connects: v["connects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_u64().map(|p| p as u16))
                .collect(),
            closes: v["closes"].as_u64().unwrap_or(0),
        }
    }
}

impl Drop for LoopConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
