//! The Python xDS management server of `tests/peers/ads_server.py`
//! (grpcio + Envoy's generated protos, PyPI xds-protos), driven from a
//! test: resources are given in Envoy's YAML form, the server's events
//! (requests with their ACK/NACK, responses sent) are collected as they
//! come, and the waits read them. Unlike `crate::xds::Mgmt` (tonic over
//! the Rust protos meshgate itself uses), nothing here shares code with
//! meshgate's client. Killed on drop.

use crate::workspace;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One discovery request the server received (either variant).
#[derive(Debug, Clone)]
pub struct Request {
    /// `sotw` or `delta`.
    pub api: String,
    pub type_url: String,
    /// State of the world: the request's `version_info` (the last version
    /// accepted); delta: the version of the response its nonce answers.
    pub version_info: String,
    pub nonce: String,
    /// `error_detail.message` of a NACK.
    pub error: Option<String>,
    /// `resource_names` (delta: `resource_names_subscribe`).
    pub names: Vec<String>,
    /// Delta: `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// `node.id`, when the request carries a node.
    pub node: Option<String>,
    /// Delta: `initial_resource_versions` (name, version), sorted.
    pub initial: Vec<(String, String)>,
}

/// One response the server sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub api: String,
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    /// The names of the resources carried.
    pub resources: Vec<String>,
    /// Delta: `removed_resources`.
    pub removed: Vec<String>,
}

/// A running `ads_server.py`.
pub struct PyAds {
    child: Child,
    stdin: Mutex<ChildStdin>,
    /// The gRPC port (127.0.0.1).
    pub port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON object of strings as sorted (key, value) pairs.
fn pairs(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

impl PyAds {
    /// Starts the server on a port the kernel picks; returns once it
    /// listens.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// The same on `port` (a restarted server where meshgate's bootstrap
    /// points).
    pub fn start_on(port: u16) -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/ads_server.py"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio, pyyaml and xds-protos (tests/run.sh installs them)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let first: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("ads_server.py printed {line:?}"));
        let port = first["port"].as_u64().expect("port event") as u16;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let stdin = Mutex::new(child.stdin.take().unwrap());
        Self {
            child,
            stdin,
            port,
            events,
            next_id: AtomicU64::new(1),
        }
    }

    /// A meshgate bootstrap on ADS (state of the world) from this server.
    pub fn bootstrap(&self) -> String {
        crate::xds::bootstrap(self.port)
    }

    /// The same on delta xDS (`api_type: DELTA_GRPC`).
    pub fn bootstrap_delta(&self) -> String {
        crate::xds::bootstrap_delta(self.port)
    }

    fn command(&self, mut cmd: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        cmd["id"] = json!(id);
        {
            let mut w = self.stdin.lock().unwrap();
            writeln!(w, "{cmd}").unwrap();
            w.flush().unwrap();
        }
        let reply = crate::wait_for_within(10, &format!("ads_server.py answer to {cmd}"), || {
            self.events()
                .into_iter()
                .find(|e| e["id"] == json!(id) && (e["ev"] == "ok" || e["ev"] == "error"))
        });
        assert_eq!(reply["ev"], "ok", "ads_server.py refused {cmd}: {reply}");
    }

    /// Replaces the resources of `type_url` with `yaml` (a YAML list in
    /// Envoy's form, each with its `@type`) at `version`, and pushes them.
    pub fn set(&self, type_url: &str, version: &str, yaml: &str) {
        self.command(json!({"op": "set", "type": type_url, "version": version, "yaml": yaml}));
    }

    /// Removes the named resources of `type_url`, giving it `version`.
    pub fn remove(&self, type_url: &str, version: &str, names: &[&str]) {
        self.command(json!({"op": "remove", "type": type_url, "version": version, "names": names}));
    }

    /// `set`, then waits for meshgate's ACK of that version.
    pub fn set_acked(&self, type_url: &str, version: &str, yaml: &str) {
        self.set(type_url, version, yaml);
        self.wait_ack(type_url, version);
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.events()
            .iter()
            .filter(|e| e["ev"] == "request")
            .map(|e| Request {
                api: text(e, "api"),
                type_url: text(e, "type"),
                version_info: text(e, "version_info"),
                nonce: text(e, "nonce"),
                error: e["error"].as_str().map(str::to_string),
                names: strings(&e["names"]),
                unsubscribe: strings(&e["unsubscribe"]),
                node: e["node"].as_str().map(str::to_string),
                initial: pairs(&e["initial"]),
            })
            .collect()
    }

    /// Every response sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.events()
            .iter()
            .filter(|e| e["ev"] == "sent")
            .map(|e| Sent {
                api: text(e, "api"),
                type_url: text(e, "type"),
                version: text(e, "version"),
                nonce: text(e, "nonce"),
                resources: strings(&e["resources"]),
                removed: strings(&e["removed"]),
            })
            .collect()
    }

    /// The last response of `type_url` carrying `version`, once sent.
    pub fn wait_sent(&self, type_url: &str, version: &str) -> Sent {
        crate::wait_for_within(10, &format!("{type_url} {version} sent"), || {
            self.sent()
                .into_iter()
                .rev()
                .find(|s| s.type_url == type_url && s.version == version)
        })
    }

    /// The reply to a response of `type_url` carrying `version`.
    fn wait_reply(&self, type_url: &str, version: &str) -> Request {
        crate::wait_for_within(20, &format!("a reply to {type_url} {version}"), || {
            let nonces: Vec<String> = self
                .sent()
                .into_iter()
                .filter(|s| s.type_url == type_url && s.version == version)
                .map(|s| s.nonce)
                .collect();
            self.requests()
                .into_iter()
                .rev()
                .find(|r| r.type_url == type_url && nonces.contains(&r.nonce))
        })
    }

    /// Waits until meshgate ACKs `version` of `type_url` (a reply to its
    /// nonce with that version and no error).
    pub fn wait_ack(&self, type_url: &str, version: &str) {
        let r = self.wait_reply(type_url, version);
        assert_eq!(r.error, None, "{type_url} {version} NACKed: {r:?}");
        assert_eq!(r.version_info, version, "{r:?}");
    }

    /// Waits for meshgate's NACK of `version` of `type_url`: its
    /// `error_detail` message. A state-of-the-world NACK keeps the last
    /// version accepted, not `version`.
    pub fn wait_nack(&self, type_url: &str, version: &str) -> String {
        let r = self.wait_reply(type_url, version);
        if r.api == "sotw" {
            assert_ne!(
                r.version_info, version,
                "a NACK keeps the old version: {r:?}"
            );
        }
        match r.error {
            Some(e) => e,
            None => panic!("{type_url} {version} ACKed, want a NACK: {r:?}"),
        }
    }
}

impl Drop for PyAds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
