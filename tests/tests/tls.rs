//! End-to-end TLS tests: the real meshgate binary terminating, passing
//! through and originating TLS, with curl and `openssl s_client` /
//! `openssl s_server` as peers and the demo certificates of
//! `examples/certs/` (made by its gen.sh).

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cert(name: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn pair(name: &str) -> String {
    format!(
        "{{certificate_chain: \"{}\", private_key: \"{}\"}}",
        cert(&format!("{name}.pem")),
        cert(&format!("{name}.key"))
    )
}

/// curl over TLS; returns (status, http_version, body). `extra` goes before
/// the URL.
fn curl(url: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or("").to_string();
    (code, version, body.to_string())
}

fn https_config(port: u16, backend: &HttpBackend, tls_extra: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: https
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates:
            - {server}
            - {other}
            - {ed}
          handshake_timeout: 500ms
{tls_extra}        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        server = pair("server"),
        other = pair("other"),
        ed = pair("ed25519"),
        addr = backend.addr,
    )
}

#[test]
fn https_over_http1_and_http2_by_alpn() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&https_config(port, &backend, ""));
    let url = format!("https://localhost:{port}/x");
    let ca = cert("ca.pem");
    let (code, version, body) = curl(&url, &["--cacert", &ca, "--http1.1"]);
    assert_eq!((code, version.as_str()), (200, "1.1"), "{body}");
    assert!(body.contains("x-forwarded-proto=https"), "{body}");
    let (code, version, body) = curl(&url, &["--cacert", &ca]);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("backend=b"), "{body}");
    assert!(
        mg.metric(
            "meshgate_listener_tls_handshake_total",
            &[("listener", "https")]
        ) >= 2.0
    );
}

#[test]
fn certificate_is_chosen_by_sni_with_a_default() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let _mg = Meshgate::start(&https_config(port, &backend, ""));
    let ca = cert("ca.pem");
    for (sni, subject) in [
        ("localhost", "CN = localhost"),
        ("www.example.test", "CN = localhost"),
        ("api.other.test", "CN = api.other.test"),
        ("ed25519.test", "CN = ed25519.test"),
        ("unknown.test", "CN = localhost"),
    ] {
        let out = s_client(port, &["-servername", sni, "-CAfile", &ca]);
        assert!(
            out.contains(&format!("subject=O = meshgate demo, {subject}")),
            "{sni}: {out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{sni}: {out}");
    }
}

#[test]
fn tls_versions_and_minimum() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let port13 = free_port();
    let _mg = Meshgate::start(&https_config(port, &backend, ""));
    let _mg13 = Meshgate::start(&https_config(
        port13,
        &backend,
        "          min_version: \"1.3\"\n",
    ));
    let out = s_client(port, &["-tls1_2", "-servername", "localhost"]);
    assert!(out.contains("New, TLSv1.2"), "{out}");
    let out = s_client(port, &["-tls1_3", "-servername", "localhost"]);
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let out = s_client(port13, &["-tls1_2", "-servername", "localhost"]);
    assert!(out.contains("alert protocol version"), "{out}");
    // TLS 1.1 is never offered.
    let out = s_client(port, &["-tls1_1", "-servername", "localhost"]);
    assert!(!out.contains("New, TLSv1.1"), "{out}");
}

#[test]
fn session_resumption_with_tickets() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let _mg = Meshgate::start(&https_config(port, &backend, ""));
    let sess = std::env::temp_dir().join(format!("mg-sess-{port}"));
    let sess = sess.to_string_lossy().into_owned();
    let first = s_client(
        port,
        &["-tls1_2", "-servername", "localhost", "-sess_out", &sess],
    );
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let again = s_client(
        port,
        &["-tls1_2", "-servername", "localhost", "-sess_in", &sess],
    );
    assert!(again.contains("Reused, TLSv1.2"), "{again}");
    let _ = std::fs::remove_file(&sess);
}

#[test]
fn mtls_required_verifies_clients_and_forwards_their_identity() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let extra = format!(
        "          client_validation: {{trusted_ca: \"{}\", required: true}}\n",
        cert("client-ca.pem")
    );
    let mg = Meshgate::start(&https_config(port, &backend, &extra));
    let url = format!("https://localhost:{port}/who");
    let ca = cert("ca.pem");
    let (c, k) = (cert("client.pem"), cert("client.key"));
    let (code, _, body) = curl(&url, &["--cacert", &ca, "--cert", &c, "--key", &k]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("URI=spiffe://meshgate.test/ns/default/sa/client"),
        "{body}"
    );
    assert!(
        body.contains("Subject=\"O=meshgate demo, CN=client\""),
        "{body}"
    );
    // A client-sent XFCC is never trusted.
    let (_, _, body) = curl(
        &url,
        &[
            "--cacert",
            &ca,
            "--cert",
            &c,
            "--key",
            &k,
            "-H",
            "x-forwarded-client-cert: URI=spiffe://evil",
        ],
    );
    assert!(!body.contains("spiffe://evil"), "{body}");
    // No certificate, a certificate of another CA, an expired one: refused.
    let (code, _, _) = curl(&url, &["--cacert", &ca]);
    assert_eq!(code, 0);
    let (rc, rk) = (cert("rogue-client.pem"), cert("rogue-client.key"));
    let (code, _, _) = curl(&url, &["--cacert", &ca, "--cert", &rc, "--key", &rk]);
    assert_eq!(code, 0);
    let (ec, ek) = (cert("expired-client.pem"), cert("expired-client.key"));
    let (code, _, _) = curl(&url, &["--cacert", &ca, "--cert", &ec, "--key", &ek]);
    assert_eq!(code, 0);
    for reason in ["no_client_certificate", "unknown_ca", "expired_certificate"] {
        let v = mg.metric(
            "meshgate_listener_tls_handshake_error_total",
            &[("listener", "https"), ("reason", reason)],
        );
        assert!(v >= 1.0, "{reason}: {v}");
    }
    // The good client still gets through afterwards.
    let (code, _, _) = curl(&url, &["--cacert", &ca, "--cert", &c, "--key", &k]);
    assert_eq!(code, 200);
}

#[test]
fn garbage_stalls_and_unknown_sni_are_refused_and_counted() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let strict = free_port();
    let mg = Meshgate::start(&https_config(port, &backend, ""));
    let mg_strict = Meshgate::start(&https_config(
        strict,
        &backend,
        "          require_sni_match: true\n",
    ));
    // Garbage: an alert, then the connection is closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    // A handshake that never comes: closed after handshake_timeout (500ms).
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for reason in ["not_tls", "timeout"] {
        let v = mg.metric(
            "meshgate_listener_tls_handshake_error_total",
            &[("listener", "https"), ("reason", reason)],
        );
        assert!(v >= 1.0, "{reason}: {v}");
    }
    // Unknown SNI with no default certificate: refused.
    let out = s_client(strict, &["-servername", "unknown.test"]);
    assert!(out.contains("alert"), "{out}");
    assert!(
        mg_strict.metric(
            "meshgate_listener_tls_handshake_error_total",
            &[("listener", "https"), ("reason", "no_certificate_for_sni")],
        ) >= 1.0
    );
    // Other connections were never affected.
    let (code, _, _) = curl(
        &format!("https://localhost:{port}/"),
        &["--cacert", &cert("ca.pem")],
    );
    assert_eq!(code, 200);
}

/// `openssl s_server -www` on a port the kernel picks, with a certificate.
struct SServer(Child, u16);

impl SServer {
    fn start(name: &str) -> Self {
        // Port 0: s_server prints `ACCEPT 127.0.0.1:PORT` once it listens,
        // so the port is its own, never probed and released.
        let mut child = Command::new("openssl")
            .args(["s_server", "-www", "-accept", "127.0.0.1:0"])
            .args(["-cert", &cert(&format!("{name}.pem"))])
            .args(["-key", &cert(&format!("{name}.key"))])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = std::io::BufRead::lines(out).map_while(Result::ok);
        let port = lines
            .find_map(|l| l.strip_prefix("ACCEPT 127.0.0.1:")?.trim().parse().ok())
            .expect("openssl s_server did not report its port");
        // It goes on printing per connection: keep its pipe drained.
        std::thread::spawn(move || lines.for_each(drop));
        SServer(child, port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn passthrough_routes_by_sni_without_decrypting() {
    let a = SServer::start("server");
    let b = SServer::start("other");
    let port = free_port();
    let yaml = format!(
        // The admin server makes `Meshgate::start` wait for readiness:
        // without it the first request raced the listener's bind.
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: passthrough
    address: 127.0.0.1:{port}
    filter_chains:
      - filter_chain_match: {{server_names: ["*.example.test", "localhost"]}}
        filters:
          - name: tcp_proxy
            config: {{cluster: a}}
      - filter_chain_match: {{server_names: ["api.other.test"]}}
        filters:
          - name: tcp_proxy
            config: {{cluster: b}}
clusters:
  - name: a
    endpoints: [{{address: "127.0.0.1:{}"}}]
  - name: b
    endpoints: [{{address: "127.0.0.1:{}"}}]
"#,
        a.1, b.1
    );
    let _mg = Meshgate::start(&yaml);
    let ca = cert("ca.pem");
    // curl verifies the backend's certificate against the name it asked
    // for: only the right backend can answer.
    for host in ["www.example.test", "api.other.test"] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let (code, _, body) = curl(
            &format!("https://{host}:{port}/"),
            &["--cacert", &ca, "--resolve", &resolve, "--http1.1"],
        );
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains("s_server"), "{host}: {body}");
    }
}

#[test]
fn upstream_tls_with_mtls_and_h2_by_alpn() {
    // meshgate terminates on `inner` (mTLS required) and originates TLS to
    // it from `outer`, once over HTTP/1.1 and once over h2 by ALPN.
    let backend = HttpBackend::start("b", Proto::Http1);
    let inner = free_port();
    let outer = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: inner
    address: 127.0.0.1:{inner}
    filter_chains:
      - tls:
          certificates: [{server}]
          client_validation: {{trusted_ca: "{client_ca}"}}
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
  - name: outer
    address: 127.0.0.1:{outer}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /h2/}}
                        route: {{cluster: inner_h2}}
                      - match: {{prefix: /}}
                        route: {{cluster: inner_h1}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
  - name: inner_h1
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls:
      sni: localhost
      trusted_ca: "{ca}"
      client_certificate: {client}
  - name: inner_h2
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls:
      sni: localhost
      trusted_ca: "{ca}"
      client_certificate: {client}
      alpn_protocols: [h2]
  - name: wrong_ca
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls: {{sni: localhost, trusted_ca: "{client_ca}"}}
"#,
        server = pair("server"),
        client = pair("client"),
        client_ca = cert("client-ca.pem"),
        ca = cert("ca.pem"),
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    let (code, _, body) = curl(&format!("http://127.0.0.1:{outer}/h1/x"), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-forwarded-proto=https"), "{body}");
    assert!(
        body.contains("URI=spiffe://meshgate.test/ns/default/sa/client"),
        "{body}"
    );
    let (code, _, body) = curl(&format!("http://127.0.0.1:{outer}/h2/x"), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("backend=b"), "{body}");
    assert!(
        mg.metric(
            "meshgate_listener_tls_handshake_total",
            &[("listener", "inner")]
        ) >= 2.0
    );
}

#[test]
fn upstream_tls_refuses_an_untrusted_server() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let inner = free_port();
    let outer = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: inner
    address: 127.0.0.1:{inner}
    filter_chains:
      - tls: {{certificates: [{server}]}}
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
  - name: outer
    address: 127.0.0.1:{outer}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: wrong_ca}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
  - name: wrong_ca
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls: {{sni: localhost, trusted_ca: "{client_ca}"}}
"#,
        server = pair("server"),
        client_ca = cert("client-ca.pem"),
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    let (code, _, _) = curl(&format!("http://127.0.0.1:{outer}/"), &[]);
    assert_eq!(code, 503);
    assert!(
        mg.metric(
            "meshgate_cluster_upstream_tls_handshake_error_total",
            &[("cluster", "wrong_ca")]
        ) >= 1.0
    );
    assert_eq!(backend.hits(), 0);
}

#[test]
fn certificate_rotation_under_load_fails_no_request() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = std::env::temp_dir().join(format!("mg-rot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("live.pem"), dir.join("live.key"));
    std::fs::copy(cert("server.pem"), &crt).unwrap();
    std::fs::copy(cert("server.key"), &key).unwrap();
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: https
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
          watch_interval: 100ms
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{}"}}]
"#,
        crt.display(),
        key.display(),
        backend.addr
    );
    let mg = Meshgate::start(&yaml);
    let subject = || {
        let out = s_client(port, &["-servername", "localhost"]);
        assert!(out.contains("subject="), "handshake failed: {out}");
        out.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap()
            .to_string()
    };
    // A client loop runs across the rotations; none of its requests fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_stop = stop.clone();
    let url = format!("https://localhost:{port}/");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = done.clone();
    let client = std::thread::spawn(move || {
        let mut ok = 0;
        while !loop_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (code, _, body) = curl(&url, &["-k"]);
            assert_eq!(code, 200, "request failed during rotation: {body}");
            ok += 1;
            counted.store(ok, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    });
    assert!(subject().contains("CN = localhost"));
    // Rotate: write the new pair to temp files and rename over (atomic).
    let swap = |from: &str| {
        std::fs::copy(cert(&format!("{from}.pem")), dir.join("new.pem")).unwrap();
        std::fs::copy(cert(&format!("{from}.key")), dir.join("new.key")).unwrap();
        std::fs::rename(dir.join("new.key"), &key).unwrap();
        std::fs::rename(dir.join("new.pem"), &crt).unwrap();
    };
    // The client loop is under way (or has already failed) first.
    wait_until("client requests before the rotation", || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 1 || client.is_finished()
    });
    swap("other");
    wait_until_within(5, "the new certificate served", || {
        subject().contains("CN = api.other.test")
    });
    // A broken file keeps the previous certificate serving: once its
    // reload is counted as an error, the certificate is still the last one.
    let errors = || {
        mg.metric(
            "meshgate_tls_certificate_reload_total",
            &[("result", "error")],
        )
    };
    let before = errors();
    std::fs::write(dir.join("bad.pem"), b"not a certificate").unwrap();
    std::fs::rename(dir.join("bad.pem"), &crt).unwrap();
    wait_until("the broken certificate file counted", || errors() > before);
    assert!(subject().contains("CN = api.other.test"));
    // Requests go on after it too.
    let at = done.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("client requests after the broken file", || {
        done.load(std::sync::atomic::Ordering::Relaxed) > at || client.is_finished()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok = client.join().expect("the client loop saw a failure");
    assert!(ok >= 3, "only {ok} requests ran");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filter_chains_match_on_offered_alpn() {
    // One passthrough listener: clients offering h2 go to one TLS backend,
    // the others to another; SNI is the same.
    let h2_side = SServer::start("server");
    let other = SServer::start("other");
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: alpn
    address: 127.0.0.1:{port}
    filter_chains:
      - filter_chain_match: {{application_protocols: [h2]}}
        filters:
          - name: tcp_proxy
            config: {{cluster: h2_side}}
      - filters:
          - name: tcp_proxy
            config: {{cluster: other}}
clusters:
  - name: h2_side
    endpoints: [{{address: "127.0.0.1:{}"}}]
  - name: other
    endpoints: [{{address: "127.0.0.1:{}"}}]
"#,
        h2_side.1, other.1
    );
    let _mg = Meshgate::start(&yaml);
    let out = s_client(port, &["-servername", "localhost", "-alpn", "h2"]);
    assert!(out.contains("CN = localhost"), "{out}");
    let out = s_client(port, &["-servername", "localhost", "-alpn", "http/1.1"]);
    assert!(out.contains("CN = api.other.test"), "{out}");
    let out = s_client(port, &["-servername", "localhost"]);
    assert!(out.contains("CN = api.other.test"), "{out}");
}

/// `forward_client_cert_details` and `set_current_client_cert_details`
/// (Envoy's): one listener per mode, clients with and without a verified
/// certificate, each sending an `x-forwarded-client-cert` of its own.
#[test]
fn forward_client_cert_details_modes() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let modes = [
        ("sanitize", ""),
        ("forward_only", ""),
        (
            "append_forward",
            "\n              set_current_client_cert_details: {uri: true, cert: true}",
        ),
        (
            "sanitize_set",
            "\n              set_current_client_cert_details: {dns: true}",
        ),
        ("always_forward_only", ""),
    ];
    let ports: Vec<u16> = modes.iter().map(|_| free_port()).collect();
    let mut yaml = String::from("admin:\n  address: \"{ADMIN}\"\nlisteners:\n");
    for ((mode, details), port) in modes.iter().zip(&ports) {
        yaml += &format!(
            r#"  - name: {mode}
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{server}]
          client_validation: {{trusted_ca: "{ca}", required: false}}
        filters:
          - name: proxy
            config:
              forward_client_cert_details: {mode}{details}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
"#,
            server = pair("server"),
            ca = cert("client-ca.pem"),
        );
    }
    yaml += &format!(
        "clusters:\n  - name: backend\n    endpoints: [{{address: \"{}\"}}]\n",
        backend.addr
    );
    let _mg = Meshgate::start(&yaml);
    let ca = cert("ca.pem");
    let (c, k) = (cert("client.pem"), cert("client.key"));
    // The client certificate's SHA-256, as Envoy's `Hash=`.
    let fp = Command::new("openssl")
        .args(["x509", "-in", &c, "-noout", "-fingerprint", "-sha256"])
        .output()
        .unwrap()
        .stdout;
    let hash: String = String::from_utf8_lossy(&fp)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(hash.len(), 64, "{hash}");
    let sent = "x-forwarded-client-cert: By=spiffe://front;URI=spiffe://from-client";
    // The XFCC the backend got (its echo, empty when there was none).
    let xfcc = |port: u16, mtls: bool| -> Option<String> {
        let url = format!("https://localhost:{port}/who");
        let mut args = vec!["--cacert", ca.as_str(), "-H", sent];
        if mtls {
            args.extend(["--cert", c.as_str(), "--key", k.as_str()]);
        }
        let (code, _, body) = curl(&url, &args);
        assert_eq!(code, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("x-forwarded-client-cert="))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let client = "spiffe://from-client";
    let uri = "URI=spiffe://meshgate.test/ns/default/sa/client";
    // sanitize: never passed on.
    assert_eq!(xfcc(ports[0], true), None);
    assert_eq!(xfcc(ports[0], false), None);
    // forward_only: as received with mTLS, removed without.
    assert!(xfcc(ports[1], true).unwrap().ends_with(client));
    assert_eq!(xfcc(ports[1], false), None);
    // append_forward: the client's value, then Hash, Cert and URI.
    let v = xfcc(ports[2], true).unwrap();
    let (before, mine) = v.split_once(',').unwrap();
    assert_eq!(before, "By=spiffe://front;URI=spiffe://from-client");
    assert!(
        mine.starts_with(&format!(
            "Hash={hash};Cert=\"-----BEGIN%20CERTIFICATE-----%0A"
        )),
        "{v}"
    );
    assert!(
        mine.ends_with(&format!("-----END%20CERTIFICATE-----%0A\";{uri}")),
        "{v}"
    );
    assert!(!mine.contains("Subject="), "{v}");
    assert_eq!(xfcc(ports[2], false), None);
    // sanitize_set with only dns: the client's value replaced; the client
    // certificate has no DNS SAN, so Hash alone.
    assert_eq!(xfcc(ports[3], true).unwrap(), format!("Hash={hash}"));
    assert_eq!(xfcc(ports[3], false), None);
    // always_forward_only: as received, mTLS or not.
    assert!(xfcc(ports[4], true).unwrap().ends_with(client));
    assert!(xfcc(ports[4], false).unwrap().ends_with(client));
}
