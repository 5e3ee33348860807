//! Edge HTTP semantics of the `proxy` filter (issue 14): one authority
//! routed on and forwarded, `Connection` cannot delete meshgate's headers,
//! HTTP/1.0 without Host, userinfo refused, upgrade allow-lists, CONNECT,
//! Envoy's path normalisation, the trusted client address, the `server`
//! header, and request-line detection on `codec: auto`. A raw recording
//! upstream shows the exact bytes that reached it; raw sockets, curl and
//! python h2 are the clients.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A raw HTTP/1.1 upstream that records every request head it receives
/// (lowercased) and answers `200 ok` with `server: recorder`; an upgrade
/// request to `websocket` gets a 101 and then an echo of the bytes.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let h = h.clone();
                std::thread::spawn(move || serve_recorded(s, h));
            }
        });
        Recorder { addr, heads }
    }

    /// The recorded head carrying `marker`, waited for.
    fn head(&self, marker: &str) -> String {
        wait_for_within(10, &format!("a request with {marker}"), || {
            self.heads
                .lock()
                .unwrap()
                .iter()
                .find(|h| h.contains(marker))
                .cloned()
        })
    }

    fn saw(&self, needle: &str) -> bool {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains(needle))
    }
}

fn serve_recorded(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        let ws = head.lines().any(|l| l == "upgrade: websocket");
        heads.lock().unwrap().push(head);
        if ws {
            let _ = s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            );
            // Echo until the peer closes.
            let _ = s.write_all(&buf);
            loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nserver: recorder\r\ncontent-length: 3\r\n\r\nok\n")
            .is_err()
        {
            return;
        }
    }
}

/// Sends raw bytes and reads the reply until meshgate closes (requests
/// carry `connection: close`, refusals close anyway).
fn raw(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(reply: &str) -> u16 {
    reply
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {reply:?}"))
}

/// A GET with `connection: close` and a marker header.
fn get(port: u16, path: &str, host: &str, marker: &str, extra: &str) -> String {
    raw(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nx-t: {marker}\r\nconnection: close\r\n{extra}\r\n"
        ),
    )
}

/// A listener with the `proxy` filter: `opts` are extra proxy options (YAML
/// lines at the config's indentation), `routes` the `*` virtual host's.
fn listener(name: &str, port: u16, opts: &str, routes: &str) -> String {
    let opts: String = opts
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("              {}\n", l.trim()))
        .collect();
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{opts}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
{routes}"#
    )
}

const TO_REC: &str =
    "                      - match: {prefix: /}\n                        route: {cluster: rec}\n";

fn config(listeners: &[String], rec: &Recorder) -> String {
    format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}clusters:\n  - name: rec\n    endpoints: [{{address: \"{}\"}}]\n",
        listeners.concat(),
        rec.addr
    )
}

fn refused(mg: &Meshgate, listener: &str, reason: &str) -> f64 {
    mg.metric(
        "meshgate_http_downstream_rq_refused_total",
        &[("listener", listener), ("reason", reason)],
    )
}

#[test]
fn absolute_form_routes_and_forwards_the_uri_authority() {
    let rec = Recorder::start();
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: abs
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: a
                    domains: [a.example]
                    routes:
                      - match: {{prefix: /h2}}
                        route: {{cluster: h2}}
                      - match: {{prefix: /}}
                        route: {{cluster: rec}}
                  - name: b
                    domains: [b.example]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 403, body: "b\n"}}
clusters:
  - name: rec
    endpoints: [{{address: "{}"}}]
  - name: h2
    protocol: http2
    endpoints: [{{address: "{}"}}]
"#,
        rec.addr, h2.addr
    );
    let _mg = Meshgate::start(&yaml);
    // RFC 9112 section 3.2.2: the target's authority wins over Host, and
    // the upstream gets the host that was routed on.
    let r = get(port, "http://a.example/p", "b.example", "abs1", "");
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: abs1");
    assert!(head.starts_with("get /p http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: a.example\r\n"), "{head}");
    assert!(!head.contains("b.example"), "{head}");
    // The same to an HTTP/2 upstream: :authority is the routed host.
    let r = get(port, "http://a.example/h2", "b.example", "abs2", "");
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("authority=a.example\n"), "{r}");
    assert!(!r.contains("b.example"), "{r}");
    // Origin-form still routes on Host.
    let r = get(port, "/p", "b.example", "abs3", "");
    assert_eq!(status(&r), 403, "{r}");
}

fn h2_request(port: u16, authority: &str, host: Option<&str>) -> String {
    let mut c = Command::new("timeout");
    c.args(["30", "python3"])
        .arg(workspace().join("tests/peers/edge_h2.py"))
        .args([&port.to_string(), authority]);
    if let Some(h) = host {
        c.arg(h);
    }
    let out = c
        .output()
        .expect("python3 with h2 (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn http2_authority_and_host_must_agree_and_carry_no_userinfo() {
    let rec = Recorder::start();
    let port = free_port();
    let mg = Meshgate::start(&config(&[listener("h2", port, "", TO_REC)], &rec));
    let r = h2_request(port, "a.example", Some("b.example"));
    assert!(r.starts_with("STATUS 400"), "{r}");
    assert!(!rec.saw("b.example"));
    assert_eq!(refused(&mg, "h2", "authority_host_mismatch"), 1.0);
    // Equal (case-insensitively): forwarded with that host.
    let r = h2_request(port, "a.example", Some("A.example"));
    assert!(r.starts_with("STATUS 200"), "{r}");
    let head = rec.head("host: a.example");
    assert!(head.starts_with("get /p http/1.1\r\n"), "{head}");
    // RFC 9110 section 4.2.4: no userinfo.
    let r = h2_request(port, "user@a.example", None);
    assert!(r.starts_with("STATUS 400"), "{r}");
    assert!(!rec.saw("user@"));
    assert_eq!(refused(&mg, "h2", "authority_userinfo"), 1.0);
}

#[test]
fn http1_userinfo_in_host_or_target_is_refused() {
    let rec = Recorder::start();
    let port = free_port();
    let mg = Meshgate::start(&config(&[listener("h1", port, "", TO_REC)], &rec));
    let r = get(port, "/p", "user@a.example", "ui1", "");
    assert_eq!(status(&r), 400, "{r}");
    let r = get(port, "http://user:pw@a.example/p", "a.example", "ui2", "");
    assert_eq!(status(&r), 400, "{r}");
    assert!(!rec.saw("x-t: ui"));
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("listener", "h1"), ("reason", "authority_userinfo")],
        ),
        2.0
    );
    // Counted with the HTTP/2 and HTTP/3 refusals too.
    assert_eq!(refused(&mg, "h1", "authority_userinfo"), 2.0);
}

#[test]
fn connection_header_cannot_remove_host_or_meshgate_headers() {
    let rec = Recorder::start();
    let port = free_port();
    let _mg = Meshgate::start(&config(&[listener("conn", port, "", TO_REC)], &rec));
    let r = get(
        port,
        "/p",
        "a.example",
        "conn1",
        "connection: host, x-request-id, x-forwarded-for, x-forwarded-proto, x-private, content-length\r\nx-private: secret\r\nx-forwarded-for: 10.9.9.9\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: conn1");
    assert!(head.contains("\r\nhost: a.example\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(!head.contains("x-private"), "{head}");
    assert!(!head.contains("10.9.9.9"), "{head}");
    assert!(!head.contains("connection: host"), "{head}");
}

#[test]
fn http10_without_host_routes_on_the_default_vhost_and_gets_a_host() {
    let rec = Recorder::start();
    let port = free_port();
    let _mg = Meshgate::start(&config(&[listener("h10", port, "", TO_REC)], &rec));
    let r = raw(port, "GET /p HTTP/1.0\r\nx-t: h10\r\n\r\n");
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: h10");
    assert!(head.starts_with("get /p http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: {}\r\n", rec.addr)),
        "{head}"
    );
    // With a Host, that one is forwarded.
    let r = raw(
        port,
        "GET /p HTTP/1.0\r\nhost: old.example\r\nx-t: h10b\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(rec.head("x-t: h10b").contains("\r\nhost: old.example\r\n"));
}

const WS: &str = "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// An upgrade request on a kept-open socket: the 101 head and, through the
/// tunnel, the echo of `ping`; or the plain reply.
fn upgrade(port: u16, path: &str, marker: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: a.example\r\nx-t: {marker}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.starts_with("HTTP/1.1 101") {
        s.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).unwrap();
        return text + &String::from_utf8_lossy(&echo);
    }
    text
}

#[test]
fn upgrades_only_when_allowed_and_h2c_never() {
    let rec = Recorder::start();
    let (dflt, off, none) = (free_port(), free_port(), free_port());
    let routes = "                      - match: {prefix: /no-ws}\n                        route: {cluster: rec, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}\n                      - match: {prefix: /ws-on}\n                        route: {cluster: rec, upgrade_configs: [{upgrade_type: WebSocket}]}\n".to_string()
        + TO_REC;
    let mg = Meshgate::start(&config(
        &[
            // Default: websocket only.
            listener("dflt", dflt, "", &routes),
            // Listed but off: only routes that enable it.
            listener(
                "off",
                off,
                "upgrade_configs: [{upgrade_type: websocket, enabled: false}]",
                &routes,
            ),
            // None at all: a route cannot enable what the listener lacks.
            listener("none", none, "upgrade_configs: []", &routes),
        ],
        &rec,
    ));
    let tunnelled = |r: &str| r.starts_with("HTTP/1.1 101") && r.ends_with("ping");
    let plain = |r: &str| r.starts_with("HTTP/1.1 200");
    let r = upgrade(dflt, "/ws", "up1", WS);
    assert!(tunnelled(&r), "{r}");
    assert!(rec.head("x-t: up1").contains("\r\nupgrade: websocket\r\n"));
    // Disabled on the route: a plain request without the upgrade headers.
    let r = upgrade(dflt, "/no-ws", "up2", WS);
    assert!(plain(&r), "{r}");
    let head = rec.head("x-t: up2");
    assert!(!head.contains("upgrade"), "{head}");
    let r = upgrade(off, "/ws", "up3", WS);
    assert!(plain(&r), "{r}");
    let r = upgrade(off, "/ws-on", "up4", WS);
    assert!(tunnelled(&r), "{r}");
    let r = upgrade(none, "/ws-on", "up5", WS);
    assert!(plain(&r), "{r}");
    // h2c is never tunnelled; HTTP2-Settings goes with it.
    let r = upgrade(
        dflt,
        "/h2c",
        "up6",
        "connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    assert!(plain(&r), "{r}");
    let head = rec.head("x-t: up6");
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "{head}"
    );
    assert_eq!(refused(&mg, "dflt", "upgrade_not_allowed"), 2.0);
    assert_eq!(refused(&mg, "off", "upgrade_not_allowed"), 1.0);
    assert_eq!(refused(&mg, "none", "upgrade_not_allowed"), 1.0);
    // CONNECT is not supported: 404, as Envoy without connect_config.
    let r = raw(
        dflt,
        "CONNECT a.example:443 HTTP/1.1\r\nhost: a.example:443\r\nx-t: up7\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 404, "{r}");
    assert!(!rec.saw("x-t: up7"));
    assert_eq!(refused(&mg, "dflt", "connect"), 1.0);
}

#[test]
fn upgrade_types_that_cannot_be_tunnelled_are_refused_by_name() {
    for (opts, field) in [
        (
            "upgrade_configs: [{upgrade_type: h2c}]",
            "upgrade_configs[0].upgrade_type",
        ),
        (
            "upgrade_configs: [{upgrade_type: CONNECT}]",
            "upgrade_configs[0].upgrade_type",
        ),
        (
            "path_with_escaped_slashes_action: SOMETIMES",
            "path_with_escaped_slashes_action",
        ),
        (
            "server_header_transformation: NEVER",
            "server_header_transformation",
        ),
    ] {
        let rec = Recorder::start();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mg.yaml");
        let yaml = config(&[listener("l", free_port(), opts, TO_REC)], &rec)
            .replace("admin:\n  address: \"{ADMIN}\"\n", "");
        std::fs::write(&f, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(format!("{out}{err}").contains(field), "{field}: {out}{err}");
    }
}

#[test]
fn paths_are_normalised_as_envoy_before_routing_and_forwarding() {
    let rec = Recorder::start();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let routes = "                      - match: {prefix: /api/}\n                        route: {cluster: rec}\n                      - match: {prefix: /}\n                        direct_response: {status: 404, body: \"other\\n\"}\n";
    let mg = Meshgate::start(&config(
        &[
            listener("raw", ports[0], "", routes),
            listener(
                "norm",
                ports[1],
                "normalize_path: true\nmerge_slashes: true",
                routes,
            ),
            listener(
                "esc_reject",
                ports[2],
                "path_with_escaped_slashes_action: REJECT_REQUEST",
                routes,
            ),
            listener(
                "esc_redirect",
                ports[3],
                "normalize_path: true\npath_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
                routes,
            ),
            listener(
                "esc_forward",
                ports[4],
                "path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD",
                routes,
            ),
        ],
        &rec,
    ));
    let (raw_l, norm, reject, redirect, forward) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    // Envoy's defaults: no normalisation, the path goes as it came.
    let r = get(raw_l, "/api/../secret", "a", "p0", "");
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        rec.head("x-t: p0")
            .starts_with("get /api/../secret http/1.1")
    );
    // Normalised: `/api/../secret` is `/secret`, which does not match
    // `/api/` and never reaches the upstream.
    for (i, p) in ["/api/../secret", "/api/%2e%2E/secret", "/api/..\\secret"]
        .iter()
        .enumerate()
    {
        let r = get(norm, p, "a", &format!("p1-{i}"), "");
        assert_eq!(status(&r), 404, "{p}: {r}");
        assert!(r.ends_with("other\n"), "{r}");
    }
    assert!(!rec.saw("x-t: p1-"));
    let r = get(norm, "/api/./a//b/%7Efoo%2f?q=/../x", "a", "p2", "");
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: p2");
    assert!(
        head.starts_with("get /api/a/b/~foo%2f?q=/../x http/1.1"),
        "{head}"
    );
    for (i, p) in ["/../x", "/api/a%zz", "/api/%"].iter().enumerate() {
        let r = get(norm, p, "a", &format!("p3-{i}"), "");
        assert_eq!(status(&r), 400, "{p}: {r}");
    }
    assert_eq!(refused(&mg, "norm", "invalid_path"), 3.0);
    // Escaped slashes.
    let r = get(reject, "/api/a%2Fb", "a", "p4", "");
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(refused(&mg, "esc_reject", "escaped_slash"), 1.0);
    let r = get(reject, "/api/a%41b", "a", "p5", "");
    assert_eq!(status(&r), 200, "{r}");
    let r = get(redirect, "/api/x/..%2Fa%5cb?q=1", "a", "p6", "");
    assert_eq!(status(&r), 307, "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("\r\nlocation: /api/a/b?q=1\r\n"),
        "{r}"
    );
    assert_eq!(refused(&mg, "esc_redirect", "escaped_slash_redirect"), 1.0);
    let r = get(forward, "/api/a%2fb", "a", "p7", "");
    assert_eq!(status(&r), 200, "{r}");
    assert!(rec.head("x-t: p7").starts_with("get /api/a/b http/1.1"));
    assert!(!rec.saw("x-t: p4") && !rec.saw("x-t: p6"));
}

/// The access-log line of the request carrying `request_id`, waited for.
fn log_line(path: &std::path::Path, request_id: &str) -> serde_json::Value {
    let line = wait_for_within(10, &format!("a log line for {request_id}"), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| l.contains(request_id))
            .map(str::to_string)
    });
    serde_json::from_str(&line).unwrap()
}

#[test]
fn trusted_client_address_follows_use_remote_address_and_trusted_hops() {
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // The log lines are found by the client's x-request-id: kept even on
    // external requests.
    let al = format!(
        "access_log: {{path: \"{}\"}}\npreserve_external_request_id: true",
        log.display()
    );
    let (remote, hop, xff) = (free_port(), free_port(), free_port());
    let _mg = Meshgate::start(&config(
        &[
            listener("remote", remote, &al, TO_REC),
            listener(
                "hop",
                hop,
                &format!("{al}\nxff_num_trusted_hops: 1"),
                TO_REC,
            ),
            listener(
                "xff",
                xff,
                &format!("{al}\nuse_remote_address: false\nxff_num_trusted_hops: 1"),
                TO_REC,
            ),
        ],
        &rec,
    ));
    let send = |port: u16, marker: &str, xff: &str| {
        let extra = format!("x-request-id: {marker}\r\n{xff}");
        let r = get(port, "/p", "a", marker, &extra);
        assert_eq!(status(&r), 200, "{r}");
        let head = rec.head(&format!("x-t: {marker}"));
        let line = log_line(&log, marker);
        (
            head,
            line["downstream_remote_address"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    // Default (use_remote_address: true): the peer is the client and is
    // appended; a client-sent XFF is not trusted.
    let (head, addr) = send(remote, "xff-1", "x-forwarded-for: 10.0.0.1\r\n");
    assert!(
        head.contains("\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{head}"
    );
    assert_eq!(addr, "127.0.0.1");
    // One trusted hop in front: the address it appended is the client.
    let (head, addr) = send(hop, "xff-2", "x-forwarded-for: 10.0.0.1\r\n");
    assert!(
        head.contains("\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{head}"
    );
    assert_eq!(addr, "10.0.0.1");
    // use_remote_address: false: XFF is left alone and the client is the
    // (hops+1)th from the right.
    let (head, addr) = send(xff, "xff-3", "x-forwarded-for: 1.1.1.1, 2.2.2.2\r\n");
    assert!(
        head.contains("\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2\r\n"),
        "{head}"
    );
    assert_eq!(addr, "1.1.1.1");
    // Too few entries: the peer.
    let (head, addr) = send(xff, "xff-4", "");
    assert!(!head.contains("x-forwarded-for"), "{head}");
    assert_eq!(addr, "127.0.0.1");
}

fn server_headers(reply: &str) -> Vec<String> {
    reply
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server: ")
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn server_header_is_overwritten_appended_or_passed_through() {
    let rec = Recorder::start();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let routes = "                      - match: {prefix: /local}\n                        direct_response: {status: 200, body: \"local\\n\"}\n".to_string() + TO_REC;
    let _mg = Meshgate::start(&config(
        &[
            listener("overwrite", ports[0], "", &routes),
            listener(
                "absent",
                ports[1],
                "server_header_transformation: APPEND_IF_ABSENT",
                &routes,
            ),
            listener(
                "pass",
                ports[2],
                "server_header_transformation: PASS_THROUGH",
                &routes,
            ),
            listener("named", ports[3], "server_name: edge-gw", &routes),
        ],
        &rec,
    ));
    let cases = [
        (ports[0], ["meshgate", "meshgate"]),
        (ports[1], ["recorder", "meshgate"]),
        (ports[2], ["recorder", ""]),
        (ports[3], ["edge-gw", "edge-gw"]),
    ];
    for (port, [forwarded, local]) in cases {
        let r = get(port, "/up", "a", "s", "");
        assert_eq!(server_headers(&r), vec![forwarded.to_string()], "{r}");
        let r = get(port, "/local", "a", "s", "");
        let want: Vec<String> = [local]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect();
        assert_eq!(server_headers(&r), want, "{r}");
    }
    // curl sees the same.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{}/up", ports[3]))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.to_ascii_lowercase().contains("server: edge-gw"),
        "{text}"
    );
}

#[test]
fn auto_codec_answers_an_invalid_request_line_with_400() {
    let rec = Recorder::start();
    let (auto, h1) = (free_port(), free_port());
    let mg = Meshgate::start(&config(
        &[
            listener("auto", auto, "", TO_REC),
            listener("h1", h1, "codec: http1", TO_REC),
        ],
        &rec,
    ));
    for port in [auto, h1] {
        for line in ["G(T / HTTP/1.1", "G@T / HTTP/1.1", "NOTAREQUESTLINE"] {
            let r = raw(port, &format!("{line}\r\nhost: a\r\n\r\n"));
            assert_eq!(status(&r), 400, "{line}: {r}");
        }
    }
    assert!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("listener", "auto"), ("codec", "http1")],
        ) >= 3.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_proxy_codec_detect_fail_total",
            &[("listener", "auto")]
        ),
        0.0
    );
    // Still a normal request.
    assert_eq!(status(&get(auto, "/p", "a", "auto-ok", "")), 200);
}

fn h3_request(port: u16, authority: &str, host: Option<&str>) -> String {
    let ca = workspace().join("examples/certs/ca.pem");
    let mut c = Command::new("timeout");
    c.args(["30", "python3"])
        .arg(workspace().join("tests/peers/edge_h3.py"))
        .arg(port.to_string())
        .arg(&ca)
        .arg(authority);
    if let Some(h) = host {
        c.arg(h);
    }
    let out = c
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn http3_authority_and_host_must_agree_and_carry_no_userinfo() {
    let rec = Recorder::start();
    let port = free_port();
    let certs = workspace().join("examples/certs");
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
{TO_REC}clusters:
  - name: rec
    endpoints: [{{address: "{}"}}]
"#,
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
        rec.addr
    );
    let mg = Meshgate::start(&yaml);
    // The HTTP/3 codec (the h3 crate) refuses the contradiction itself, as
    // a malformed request: the stream is reset with H3_MESSAGE_ERROR
    // (RFC 9114 section 4.1.2) and counted; the proxy's own check (400) is
    // the second line behind it.
    let r = h3_request(port, "localhost", Some("other.example"));
    assert!(r.starts_with("reset code=0x10e"), "{r}");
    assert!(!rec.saw("other.example"));
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[
                ("listener", "h3"),
                ("codec", "http3"),
                ("reason", "bad_request")
            ],
        ),
        1.0
    );
    let r = h3_request(port, "user@localhost", None);
    assert!(r.starts_with("status=400"), "{r}");
    assert_eq!(refused(&mg, "h3", "authority_userinfo"), 1.0);
    let r = h3_request(port, "localhost", Some("localhost"));
    assert!(r.starts_with("status=200"), "{r}");
    assert!(rec.head("host: localhost").starts_with("get /p http/1.1"));
}

/// The value of `name` in a lowercased head (request or reply), if any.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix(&format!("{name}:"))
            .map(|_| l[name.len() + 1..].trim())
    })
}

#[test]
fn via_skip_xff_append_trailing_host_dot_and_request_ids_as_envoy() {
    let rec = Recorder::start();
    let (edge, keep) = (free_port(), free_port());
    let vhosts = |opts: &str| {
        format!(
            r#"            config:
              {opts}
              route_config:
                virtual_hosts:
                  - name: a
                    domains: [a.example]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: rec}}
                  - name: other
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 403, body: "other\n"}}
"#
        )
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: edge
    address: 127.0.0.1:{edge}
    filter_chains:
      - filters:
          - name: proxy
{}  - name: keep
    address: 127.0.0.1:{keep}
    filter_chains:
      - filters:
          - name: proxy
{}clusters:
  - name: rec
    endpoints: [{{address: "{}"}}]
"#,
        vhosts(
            "via: \"1.1 meshgate\"
              skip_xff_append: true
              strip_trailing_host_dot: true
              always_set_request_id_in_response: true"
        ),
        vhosts("preserve_external_request_id: true"),
        rec.addr
    );
    let _mg = Meshgate::start(&yaml);

    // via: appended to the client's on the request, set on the response.
    let r = get(edge, "/v", "a.example", "via1", "via: 1.0 client\r\n");
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: via1");
    assert!(
        head.contains("\r\nvia: 1.0 client, 1.1 meshgate\r\n"),
        "{head}"
    );
    assert_eq!(header_value(&r, "via"), Some("1.1 meshgate"), "{r}");
    // ... and on meshgate's own answers.
    let r = get(edge, "/v", "b.example", "via2", "");
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(header_value(&r, "via"), Some("1.1 meshgate"), "{r}");

    // skip_xff_append: the client's x-forwarded-for goes on as it came, and
    // none is made when it sent none.
    let r = get(
        edge,
        "/x",
        "a.example",
        "xff1",
        "x-forwarded-for: 10.0.0.1\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let head = rec.head("x-t: xff1");
    assert!(head.contains("\r\nx-forwarded-for: 10.0.0.1\r\n"), "{head}");
    get(edge, "/x", "a.example", "xff2", "");
    assert!(!rec.head("x-t: xff2").contains("x-forwarded-for"));

    // strip_trailing_host_dot: `a.example.` (with a port too) is routed and
    // forwarded as `a.example`; without the option it is another host.
    let r = get(edge, "/d", "a.example.", "dot1", "");
    assert_eq!(status(&r), 200, "{r}");
    assert!(rec.head("x-t: dot1").contains("\r\nhost: a.example\r\n"));
    // With a port: routed as `a.example:8080` is.
    let with_port = status(&get(edge, "/d", "a.example:8080", "dot2", ""));
    let r = get(edge, "/d", "a.example.:8080", "dot3", "");
    assert_eq!(status(&r), with_port, "{r}");
    if with_port == 200 {
        assert!(
            rec.head("x-t: dot3")
                .contains("\r\nhost: a.example:8080\r\n")
        );
    }
    let r = get(keep, "/d", "a.example.", "dot4", "");
    assert_eq!(status(&r), 403, "{r}");

    // x-request-id: an internal client's (loopback, no x-forwarded-for) is
    // kept; an external one's is replaced; always_set_request_id_in_response
    // returns the id that went upstream.
    let r = get(
        edge,
        "/r",
        "a.example",
        "rid1",
        "x-request-id: rid-internal\r\n",
    );
    assert!(
        rec.head("x-t: rid1")
            .contains("\r\nx-request-id: rid-internal\r\n")
    );
    assert_eq!(
        header_value(&r, "x-request-id"),
        Some("rid-internal"),
        "{r}"
    );
    let r = get(
        edge,
        "/r",
        "a.example",
        "rid2",
        "x-request-id: rid-external\r\nx-forwarded-for: 203.0.113.9\r\n",
    );
    let head = rec.head("x-t: rid2");
    let sent = header_value(&head, "x-request-id").unwrap().to_string();
    assert!(sent != "rid-external" && sent.len() == 36, "{head}");
    assert_eq!(header_value(&r, "x-request-id"), Some(sent.as_str()), "{r}");
    // preserve_external_request_id: kept; not asked for in the response.
    let r = get(
        keep,
        "/r",
        "a.example",
        "rid3",
        "x-request-id: rid-external\r\nx-forwarded-for: 203.0.113.9\r\n",
    );
    assert!(
        rec.head("x-t: rid3")
            .contains("\r\nx-request-id: rid-external\r\n")
    );
    assert_eq!(header_value(&r, "x-request-id"), None, "{r}");
}

#[test]
fn request_timeout_answers_408_when_the_request_is_not_whole_in_time() {
    let rec = Recorder::start();
    let port = free_port();
    let mg = Meshgate::start(&config(
        &[listener("rt", port, "request_timeout: 1s", TO_REC)],
        &rec,
    ));
    // The body stops 7 bytes short: 408 once the second has passed, the
    // upstream never sees a request.
    let t = std::time::Instant::now();
    let r = raw(
        port,
        "POST /slow HTTP/1.1\r\nhost: a\r\nx-t: rt1\r\ncontent-length: 10\r\n\r\nabc",
    );
    assert_eq!(status(&r), 408, "{r}");
    assert!(r.contains("request timeout"), "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // A whole request is forwarded as ever.
    let r = raw(
        port,
        "POST /ok HTTP/1.1\r\nhost: a\r\nx-t: rt2\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(!rec.saw("x-t: rt1"));
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "request_overall_timeout")]
        ),
        1.0
    );
}
