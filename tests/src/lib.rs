//! Shared helpers of the end-to-end tests: find the release binary, start it
//! on a generated config (admin on port 0, listeners on port 0 read back
//! from `/listeners`, or on ports reserved for the test process), wait for readiness, read the admin endpoints, and
//! wait for a state (`poll`, `wait_until`, `Meshgate::wait_metric`) rather
//! than for a time. Every test talks to the real `meshgate` binary over
//! 127.0.0.1 only.

pub mod aioquic;
pub mod backend;
pub mod caddy;
pub mod curl;
pub mod flaky;
pub mod h2raw;
pub mod hc_backend;
pub mod jwt;
pub mod netns;
pub mod phases;
pub mod pypeer;
pub use pypeer::GrpcServer;
pub mod pyads;
pub mod rpc;
pub mod scripted;
pub mod udp_dns;
pub mod upgrade;
pub mod xds;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The meshgate binary: `$MESHGATE_BIN`, else the workspace's release build,
/// built once on first use if missing (tests/run.sh builds it up front).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MESHGATE_BIN") {
            return PathBuf::from(p);
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("target"));
        let p = target.join("release").join("meshgate");
        if !p.exists() {
            let st = Command::new(env!("CARGO"))
                .args(["build", "--release", "-p", "meshgate"])
                .current_dir(workspace())
                .status()
                .expect("cargo build");
            assert!(st.success(), "building the release binary failed");
        }
        p
    })
    .clone()
}

/// How often the wait helpers look again: the one pause of the shared
/// waits (a poll interval, not a time the test relies on).
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it gives a value or `timeout` passes (None).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it holds (every 20 ms), for up to 15 s: tests wait for a
/// state (a counter, a config version, an answer), never a fixed time.
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_within(15, what, f)
}

/// [`wait_until`] with its own bound, in seconds.
pub fn wait_until_within(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    wait_for_within(secs, what, || f().then_some(()))
}

/// Polls `f` until it gives a value, for up to `secs` s, and returns it.
pub fn wait_for_within<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(Duration::from_secs(secs), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// A loopback port for a listener meshgate opens later, reserved for the
/// rest of this test process: never probed and released.
///
/// The reservation is a TCP socket bound to the port (not listening) that
/// this process keeps open. It is bound without `SO_REUSEADDR`, so no other
/// test's reservation, nor any `bind(0)` or outgoing connection, can take
/// the port; then `SO_REUSEADDR` is set on it, so meshgate's own bind (with
/// `SO_REUSEADDR`, then `listen`) on the port succeeds. A connect to a
/// reserved port nobody listens on is refused, as for a free one.
///
/// Ports are taken below the kernel's ephemeral range
/// (`ip_local_port_range`), where UDP (QUIC listeners on the same number)
/// is not handed out to other processes' clients either; the UDP side is
/// checked free, not reserved (a second UDP socket on the port would take
/// datagrams meant for meshgate).
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RESERVED: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let reserve = |port: u16| -> Option<u16> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        sock.bind(&addr.into()).ok()?;
        sock.set_reuse_address(true).ok()?;
        let port = sock.local_addr().ok()?.as_socket()?.port();
        RESERVED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sock);
        Some(port)
    };
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_low.min(30_000));
    if hi <= lo + 1_000 {
        return reserve(0).expect("reserve a loopback port");
    }
    let span = hi - lo;
    // One start per test process: the walk below then tries distinct
    // ports within it (97 is prime: distinct unless the span is a multiple
    // of it).
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7_919).wrapping_add(nanos)
    });
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + start.wrapping_add(i.wrapping_mul(97)) % span) as u16;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && let Some(port) = reserve(port)
        {
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

/// What `{ADMIN}` becomes in a config: port 0, read back after the start.
const ADMIN_CONFIG: &str = "127.0.0.1:0";

/// The bound address in meshgate's `admin listening address=...` line
/// (the address may be printed as `Some(ip:port)`).
fn admin_address_from_log(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("admin listening"))?;
    let rest = line.split_once("address=")?.1;
    let rest = rest.strip_prefix("Some(").unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A running meshgate process; killed on drop.
pub struct Meshgate {
    pub child: Child,
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Meshgate {
    /// Writes `yaml` to a temp file and starts meshgate on it. `{ADMIN}` in
    /// the text becomes an admin address on port 0: the port the kernel
    /// gave is read back from meshgate's "admin listening" log line, then
    /// `/ready` is awaited before returning.
    pub fn start(yaml: &str) -> Self {
        Self::start_with_args(yaml, &[])
    }

    pub fn start_with_args(yaml: &str, args: &[&str]) -> Self {
        Self::start_bin(&bin(), yaml, args)
    }

    /// `start_with_args` with another binary built on meshgate's library
    /// (the examples' own binaries).
    pub fn start_bin(program: &Path, yaml: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let has_admin = yaml.contains("{ADMIN}");
        let text = yaml.replace("{ADMIN}", ADMIN_CONFIG);
        let config = dir.path().join("meshgate.yaml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("meshgate.log");
        let logf = std::fs::File::create(&log).unwrap();
        // MESHGATE_TEST_CONCURRENCY runs every test against that many
        // workers (tests/run.sh runs the suite again with one: the
        // current-thread runtime).
        let workers: Vec<String> = match std::env::var("MESHGATE_TEST_CONCURRENCY") {
            Ok(n) if !args.iter().any(|a| a.starts_with("--concurrency")) => {
                vec!["--concurrency".into(), n]
            }
            _ => Vec::new(),
        };
        let child = Command::new(program)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(["--log-level", "debug"])
            .args(args)
            .args(&workers)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start meshgate");
        let mut m = Self {
            child,
            admin: None,
            config,
            log,
            _dir: dir,
        };
        if has_admin {
            m.admin = Some(m.wait_admin_address());
            m.wait_ready();
        }
        m
    }

    /// `yaml` with `{ADMIN}` filled in as `start` does: for a rewritten
    /// config file that keeps the admin as it is.
    pub fn fill(&self, yaml: &str) -> String {
        yaml.replace("{ADMIN}", ADMIN_CONFIG)
    }

    /// Waits until `f` gives a value, panicking with the log if meshgate
    /// exits first or 20 s pass.
    fn wait_alive<T>(&mut self, what: &str, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let mut exited = None;
        let got = poll(Duration::from_secs(20), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                exited = Some(st);
                return Some(None);
            }
            f(self).map(Some)
        });
        match (got, exited) {
            (Some(Some(v)), _) => v,
            (_, Some(st)) => panic!("meshgate exited early ({st}):\n{}", self.log_text()),
            _ => panic!("meshgate: no {what} in 20s:\n{}", self.log_text()),
        }
    }

    /// The admin's bound address, from its "admin listening" log line.
    fn wait_admin_address(&mut self) -> SocketAddr {
        self.wait_alive("admin listening line", |m| {
            admin_address_from_log(&m.log_text())
        })
    }

    fn wait_ready(&mut self) {
        self.wait_alive("ready admin", |m| {
            matches!(m.try_admin_get("/ready"), Ok((200, _))).then_some(())
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin.expect("no admin in this config"), path)
    }

    /// GET on the admin server: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.try_admin_get(path).expect("admin request")
    }

    /// Sum of a Prometheus metric's samples whose labels contain every
    /// `k="v"` pair of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.admin_get("/stats/prometheus");
        metric_from(&body, name, labels)
    }

    /// Waits until the metric's sum (see [`Meshgate::metric`]) satisfies
    /// `pred`, and returns it.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let what = format!("{name}{labels:?}");
        let mut last = 0.0;
        poll(Duration::from_secs(15), || {
            last = self.metric(name, labels);
            pred(last).then_some(last)
        })
        .unwrap_or_else(|| panic!("timed out waiting for {what} (last {last})"))
    }

    /// `/config_dump`, parsed.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("config_dump is JSON")
    }

    /// `/listeners`: each running listener's name, configured address,
    /// transport and bound addresses.
    pub fn listeners(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.admin_get("/listeners");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/listeners is JSON")
    }

    /// The bound address of the listener `name` (TCP, or its QUIC one if it
    /// has only that), read from `/listeners`: a listener configured on
    /// `127.0.0.1:0` gets its port from the kernel, and the test reads it
    /// back instead of reserving a port up front.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let all = self.listeners();
        let mine: Vec<&serde_json::Value> = all.iter().filter(|l| l["name"] == name).collect();
        let l = mine
            .iter()
            .find(|l| l["quic"] == false)
            .or(mine.first())
            .unwrap_or_else(|| panic!("no listener '{name}' in /listeners: {all:?}"));
        l["bound"][0]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("listener '{name}' has no bound address: {l}"))
    }

    /// The bound port of the listener `name` (see [`Meshgate::listener_addr`]).
    pub fn listener_port(&self, name: &str) -> u16 {
        self.listener_addr(name).port()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid, which is still ours to reap.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Meshgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- meshgate log ---\n{}", self.log_text());
        }
    }
}

/// Parses a Prometheus text exposition for one metric.
pub fn metric_from(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET (the admin server is HTTP/1.1; no keep-alive).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// Whether `/proc/net/tcp` has an established connection from `local` to
/// `remote` (both IPv4).
pub fn tcp_established(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => panic!("{a} is not IPv4"),
    };
    let (l, r) = (hex(local), hex(remote));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[1] == l && f[2] == r && f[3] == "01"
        })
}

/// A config with the admin server, one `proxy` listener `http` on port 0
/// whose one virtual host (all domains) has `routes` (each a YAML flow
/// mapping: `{match: {prefix: /}, route: {cluster: up}}`), then
/// `clusters` (the items of the `clusters:` section, at two spaces).
pub fn proxy_config(routes: &[&str], clusters: &str) -> String {
    let mut s = String::from(
        r#"admin:
  address: "{ADMIN}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
"#,
    );
    for r in routes {
        s.push_str("                      - ");
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("clusters:\n");
    s.push_str(clusters);
    s
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr) {
    wait_until_within(10, &format!("{addr} to listen"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for GiBs.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Runs `meshgate` with `args` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run meshgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Established TCP connections to the IPv4 `addr` on this host, from
/// `/proc/net/tcp`: e.g. meshgate's upstream connections to a backend.
pub fn established_to(addr: SocketAddr) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr} is not IPv4");
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // remote address, then the state (01: ESTABLISHED)
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}

/// One HTTP/1.1 response read off a keep-alive stream.
pub struct Reply {
    pub status: u16,
    /// The response carried `connection: close`.
    pub close: bool,
    /// The Content-Length body.
    pub body: String,
}

/// Reads one response with a Content-Length body from `r` (None if the
/// stream ends or breaks first), leaving the stream at the next response.
pub fn read_reply(r: &mut impl std::io::BufRead) -> Option<Reply> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse().ok())?;
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        close |= l == "connection: close";
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Reply {
        status,
        close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `openssl s_client` against `127.0.0.1:port` with `args` (stdin closed,
/// so it ends after the handshake); its stdout and stderr.
pub fn s_client(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    drop(child.stdin.take());
    wait_until_within(10, "openssl s_client to finish", || {
        child.try_wait().unwrap().is_some()
    });
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `free_port` relies on from the kernel: a reserved port is
    /// refused to another reservation and to connects, and open to a
    /// listener bound as meshgate binds (`SO_REUSEADDR`, bind, listen).
    #[test]
    fn a_reserved_port_is_kept_from_others_and_open_to_a_reuse_address_listener() {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let tcp = || socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        assert!(tcp().unwrap().bind(&addr.into()).is_err(), "reserved twice");
        assert!(TcpStream::connect(addr).is_err(), "a connect was accepted");
        let l = tcp().unwrap();
        l.set_reuse_address(true).unwrap();
        l.bind(&addr.into()).unwrap();
        l.listen(8).unwrap();
        assert!(TcpStream::connect(addr).is_ok());
        // Closed again, the port stays reserved.
        drop(l);
        assert!(tcp().unwrap().bind(&addr.into()).is_err());
    }

    #[test]
    fn the_admin_address_is_read_from_its_log_line() {
        let log = "2026-12-06T08:14:56Z  INFO meshgate_core::server: admin listening address=Some(127.0.0.1:40123)\n";
        assert_eq!(
            admin_address_from_log(log),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(admin_address_from_log("no admin here"), None);
    }
}
