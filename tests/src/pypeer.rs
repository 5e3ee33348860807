//! Python peers of tests/peers/ (an authorization server, a rate limit
//! service, an echo upstream...) that bind port 0 and print `PORT <n>`
//! first; killed on drop. And the JSON lines such a peer logs.

use crate::workspace;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running Python peer.
pub struct PyPeer {
    child: Child,
    pub port: u16,
}

impl PyPeer {
    /// Starts `tests/peers/<script>` with `args`; returns once it printed
    /// its port.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers").join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio and xds-protos (tests/run.sh installs them)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("peer printed {line:?}"));
        Self { child, port }
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON lines a peer logged to `log` (one object per line).
pub fn logged(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The grpcio echo server of tests/peers/grpc_e2e_peer.py (`/echo.Echo/*`:
/// unary, streams both ways, failures); `.1` is its port. Killed on drop.
pub struct GrpcServer(Child, pub u16);

impl GrpcServer {
    pub fn start() -> Self {
        // Port 0: the server prints the port it got.
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/grpc_e2e_peer.py"))
            .args(["server", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (tests/run.sh installs it)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("grpc server did not start: {line:?}"));
        GrpcServer(child, port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
