//! Network namespaces for the sidecar tests: an `app` namespace (the
//! workload, meshgate and its capture rules) and a `svc` namespace (the
//! services it calls and the clients that call it), joined by a veth pair
//! with addresses of the test's own (10.77.0.1 app, 10.77.0.2 svc; every
//! other address routes from app to svc). Nothing is configured in the
//! host's namespace. Processes run in a namespace through `ip netns exec`;
//! the namespaces (and the processes started in them) go away on drop,
//! also when the test fails.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The app namespace's address.
pub const APP_IP: &str = "10.77.0.1";
/// The svc namespace's address.
pub const SVC_IP: &str = "10.77.0.2";

/// The uid meshgate runs as in the tests: its own connections are exempt
/// from capture by owner match (`meshgate capture --uid`).
pub const MESHGATE_UID: u32 = 1337;

/// Why namespaces cannot be used here, if they cannot: the tests print it
/// and return (outside CI); in CI (`CI` set) they fail instead.
pub fn unavailable() -> Option<String> {
    // The effective uid, from `id -u`.
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
    }
    for tool in ["ip", "nft", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (tests/run.sh installs it)"
            ));
        }
    }
    let probe = format!("mgprobe-{}", std::process::id());
    let ok = run("ip", &["netns", "add", &probe]).status.success();
    let _ = run("ip", &["netns", "del", &probe]);
    if !ok {
        return Some("`ip netns add` failed (no network namespaces here)".into());
    }
    None
}

/// Skips (returns `true`) with the reason printed when namespaces are not
/// available and the run is not CI.
pub fn skip() -> bool {
    match unavailable() {
        None => false,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("sidecar tests need namespaces: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// A pair of namespaces, deleted on drop.
pub struct Pair {
    pub app: String,
    pub svc: String,
    children: Vec<Child>,
}

impl Pair {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("mg{}x{n}", std::process::id());
        let p = Self {
            app: format!("{tag}a"),
            svc: format!("{tag}s"),
            children: Vec::new(),
        };
        let veth_a = format!("{tag}va");
        let veth_s = format!("{tag}vs");
        for (prog, args) in [
            ("ip", vec!["netns", "add", p.app.as_str()]),
            ("ip", vec!["netns", "add", p.svc.as_str()]),
            (
                "ip",
                vec![
                    "link", "add", &veth_a, "netns", &p.app, "type", "veth", "peer", "name",
                    &veth_s, "netns", &p.svc,
                ],
            ),
        ] {
            let out = run(prog, &args);
            assert!(
                out.status.success(),
                "{prog} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let app_addr = format!("{APP_IP}/24");
        let svc_addr = format!("{SVC_IP}/24");
        p.ok(&p.app, &["ip", "link", "set", "lo", "up"]);
        p.ok(&p.svc, &["ip", "link", "set", "lo", "up"]);
        p.ok(&p.app, &["ip", "addr", "add", &app_addr, "dev", &veth_a]);
        p.ok(&p.svc, &["ip", "addr", "add", &svc_addr, "dev", &veth_s]);
        p.ok(&p.app, &["ip", "link", "set", &veth_a, "up"]);
        p.ok(&p.svc, &["ip", "link", "set", &veth_s, "up"]);
        // Service VIPs (any address) route to the svc side, as a cluster
        // network would; the capture rules take them before they leave.
        p.ok(&p.app, &["ip", "route", "add", "default", "via", SVC_IP]);
        p
    }

    /// Runs `args` in `ns` and returns its output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", ns];
        all.extend(args);
        run("ip", &all)
    }

    /// Runs `args` in `ns`; panics with its stderr if it fails. Its stdout.
    pub fn ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.exec(ns, args);
        assert!(
            out.status.success(),
            "in {ns}: {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` in `ns` (as `uid` when given), its stderr to `log`;
    /// killed when the pair drops.
    pub fn spawn(&mut self, ns: &str, uid: Option<u32>, args: &[&str], log: &Path) -> u32 {
        let mut all: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
        if let Some(u) = uid {
            all.extend([
                "setpriv".into(),
                format!("--reuid={u}"),
                format!("--regid={u}"),
                "--clear-groups".into(),
            ]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let logf = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("ip netns exec");
        let id = child.id();
        self.children.push(child);
        id
    }

    /// `curl` in `ns`: (status, body). `args` go before the URL.
    pub fn curl(&self, ns: &str, url: &str, args: &[&str]) -> (u16, String) {
        let mut all = vec![
            "curl",
            "-s",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        all.extend(args);
        all.push(url);
        let out = self.exec(ns, &all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Waits until a TCP connect to `addr` from `ns` succeeds.
    pub fn wait_port(&self, ns: &str, addr: &str) {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let script = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(1)\ntry:\n s.connect(('{host}',{port}))\nexcept Exception:\n sys.exit(1)"
        );
        crate::wait_until(&format!("{addr} accepts in {ns}"), || {
            self.exec(ns, &["python3", "-c", &script]).status.success()
        });
    }

    /// `nft list ruleset` in `ns`.
    pub fn ruleset(&self, ns: &str) -> String {
        self.ok(ns, &["nft", "list", "ruleset"])
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace removes its veth end (and so the pair).
        for ns in [&self.app, &self.svc] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// An HTTP server for the namespaces: on each `ip:port` given, answers
/// every request with `200` and a JSON body naming the address it was
/// served on, the request's path, its headers and the client's address.
pub const ECHO: &str = r#"
import http.server, json, socketserver, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"served_by": "%s:%d" % self.server.server_address[:2],
                           "path": self.path, "client": self.client_address[0],
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = []
for a in sys.argv[1:]:
    host, port = a.rsplit(":", 1)
    s = S((host, int(port)), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    servers.append(s)
print("ready", flush=True)
threading.Event().wait()
"#;

/// Reads the admin's bound address from meshgate's log.
pub fn admin_from_log(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("admin listening"))?;
    let rest = line.split_once("address=")?.1;
    let rest = rest.strip_prefix("Some(").unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':')))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Meshgate in the app namespace as `MESHGATE_UID`, on `yaml` (its admin
/// on 127.0.0.1:0 of the namespace): the admin's address once ready.
pub fn start_meshgate(pair: &mut Pair, dir: &Path, yaml: &str) -> String {
    let cfg = dir.join("meshgate.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    // The unprivileged uid reads the config and writes nothing.
    let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
    let log = dir.join("meshgate.log");
    let bin = crate::bin();
    let app = pair.app.clone();
    pair.spawn(
        &app,
        Some(MESHGATE_UID),
        &[
            bin.to_str().unwrap(),
            "run",
            "-c",
            cfg.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
        &log,
    );
    let admin = crate::wait_for_within(20, "meshgate's admin line", || admin_from_log(&log));
    let url = format!("http://{admin}/ready");
    crate::wait_until("meshgate ready", || pair.curl(&app, &url, &[]).0 == 200);
    admin
}

/// A metric's sum (`crate::metric_from`) read from the admin inside `ns`.
pub fn metric(pair: &Pair, ns: &str, admin: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = pair.curl(ns, &format!("http://{admin}/stats/prometheus"), &[]);
    crate::metric_from(&body, name, labels)
}

/// Starts `ECHO` in `ns` on `addrs`, waiting until each accepts.
pub fn start_echo(pair: &mut Pair, ns: &str, dir: &Path, addrs: &[&str]) {
    let mut args = vec!["python3", "-c", ECHO];
    args.extend(addrs);
    let ns_owned = ns.to_string();
    pair.spawn(&ns_owned, None, &args, &dir.join(format!("echo-{ns}.log")));
    for a in addrs {
        pair.wait_port(ns, a);
    }
}
