//! The `rbac` filters against real peers: the HTTP filter with curl
//! (method / path / header rules, ALLOW and DENY, shadow rules that only
//! count, per-route override and disable, `remote_ip` after
//! `x-forwarded-for` vs `direct_remote_ip`, SPIFFE identities of client
//! certificates made here with openssl, a JWT-claim principal failing
//! closed), the network filter in front of `tcp_proxy` (a denied client's
//! connection closed before the raw recording upstream sees anything) and
//! both translated from a real xDS control plane.

use meshgate_core::metrics::names::{
    HTTP_FILTER_DENIED_TOTAL, RBAC_ALLOWED_TOTAL, RBAC_DENIED_TOTAL, RBAC_SHADOW_ALLOWED_TOTAL,
    RBAC_SHADOW_DENIED_TOTAL,
};
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// curl; returns (status, body). Status 0: no HTTP answer.
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn rbac_labels<'a>(listener: &'a str, layer: &'a str, policy: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("listener", listener), ("layer", layer), ("policy", policy)]
}

fn http_config(
    port: u16,
    backend: SocketAddr,
    proxy_extra: &str,
    rbac: &str,
    routes: &str,
) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
{proxy_extra}              stream_filters:
                - name: rbac
                  config:
{rbac}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
{routes}                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#
    )
}

#[test]
fn header_path_and_method_rules_allow_or_forbid_with_curl() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let rbac = r#"                    rules_stat_prefix: "edge."
                    rules:
                      action: ALLOW
                      policies:
                        readers:
                          permissions:
                            - and_rules:
                                rules:
                                  - header: {name: ":method", exact_match: GET}
                                  - url_path: {path: {prefix: /public/}}
                          principals: [{any: true}]
                        ops:
                          permissions: [{any: true}]
                          principals:
                            - header: {name: x-role, string_match: {exact: OPS, ignore_case: true}}"#;
    let routes = r#"                      - match: {prefix: /open/}
                        route: {cluster: backend}
                        per_filter_config:
                          rbac: {}
                      - match: {prefix: /posts/}
                        route: {cluster: backend}
                        per_filter_config:
                          rbac:
                            rbac:
                              rules:
                                action: ALLOW
                                policies:
                                  post-only:
                                    permissions: [{header: {name: ":method", exact_match: POST}}]
                                    principals: [{any: true}]
"#;
    let mg = Meshgate::start(&http_config(port, backend.addr, "", rbac, routes));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // GET under /public/: the readers policy.
    let (code, body) = curl(&url("/public/a?x=1"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(backend.hits(), 1);
    // POST there, or GET elsewhere (the query does not count as path): 403.
    let (code, body) = curl(&url("/public/a"), &["-X", "POST"]);
    assert_eq!(code, 403);
    assert_eq!(body, "RBAC: access denied");
    let (code, _) = curl(&url("/private?p=/public/"), &[]);
    assert_eq!(code, 403);
    assert_eq!(
        backend.hits(),
        1,
        "a denied request never reaches the upstream"
    );
    // The ops header (case-insensitive value) opens everything.
    let (code, _) = curl(&url("/private"), &["-X", "DELETE", "-H", "x-role: ops"]);
    assert_eq!(code, 200);
    // Per-route: disabled on /open/, replaced on /posts/.
    let (code, _) = curl(&url("/open/x"), &["-X", "PUT"]);
    assert_eq!(code, 200);
    let (code, _) = curl(&url("/posts/1"), &["-d", "x"]);
    assert_eq!(code, 200);
    let (code, _) = curl(&url("/posts/1"), &["-H", "x-role: ops"]);
    assert_eq!(code, 403, "the route's rules replace the filter's");
    assert_eq!(backend.hits(), 4);
    // Counted per policy (empty: no policy matched), and as the filter's
    // denial.
    let m = |name, policy| mg.metric(name, &rbac_labels("web", "http", policy));
    assert_eq!(m(RBAC_ALLOWED_TOTAL, "readers"), 1.0);
    assert_eq!(m(RBAC_ALLOWED_TOTAL, "ops"), 1.0);
    assert_eq!(m(RBAC_ALLOWED_TOTAL, "post-only"), 1.0);
    assert_eq!(m(RBAC_DENIED_TOTAL, ""), 3.0);
    assert_eq!(
        mg.metric(
            RBAC_DENIED_TOTAL,
            &[("stat_prefix", "edge."), ("policy", "")]
        ),
        2.0
    );
    assert_eq!(
        mg.metric(
            HTTP_FILTER_DENIED_TOTAL,
            &[("filter", "rbac"), ("reason", "forbidden")]
        ),
        3.0
    );
}

#[test]
fn deny_action_and_shadow_rules_that_only_count() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let port = free_port();
    let rbac = r#"                    rules:
                      action: DENY
                      policies:
                        no-admin:
                          permissions: [{url_path: {path: {prefix: /admin}}}]
                          principals: [{not_id: {header: {name: x-admin-token, present_match: true}}}]
                    shadow_rules:
                      action: ALLOW
                      policies:
                        alice-only:
                          permissions: [{any: true}]
                          principals: [{header: {name: x-user, exact_match: alice}}]"#;
    let extra = format!(
        "              access_log: {{path: \"{}\"}}\n",
        log.display()
    );
    let mg = Meshgate::start(&http_config(port, backend.addr, &extra, rbac, ""));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (code, _) = curl(&url("/admin/x"), &[]);
    assert_eq!(code, 403);
    let (code, _) = curl(&url("/admin/x"), &["-H", "x-admin-token: t"]);
    assert_eq!(code, 200);
    // The shadow rules would deny bob: he still gets through.
    let (code, _) = curl(&url("/app"), &["-H", "x-user: bob"]);
    assert_eq!(code, 200);
    let (code, _) = curl(&url("/app"), &["-H", "x-user: alice"]);
    assert_eq!(code, 200);
    assert_eq!(backend.hits(), 3);
    let m = |name, policy| mg.metric(name, &rbac_labels("web", "http", policy));
    assert_eq!(m(RBAC_DENIED_TOTAL, "no-admin"), 1.0);
    assert_eq!(m(RBAC_ALLOWED_TOTAL, ""), 3.0);
    assert_eq!(m(RBAC_SHADOW_ALLOWED_TOTAL, "alice-only"), 1.0);
    assert_eq!(m(RBAC_SHADOW_DENIED_TOTAL, ""), 3.0);
    // The denial is in the access log with its reason.
    let line: serde_json::Value = wait_for_within(5, "an access-log line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
    });
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["local_reply"], "forbidden", "{line}");
}

#[test]
fn remote_ip_follows_trusted_xff_hops_direct_remote_ip_is_the_peer() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let route = |prefix: &str, kind: &str| {
        format!(
            r#"                      - match: {{prefix: {prefix}}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          rbac:
                            rbac:
                              rules:
                                policies:
                                  office:
                                    permissions: [{{any: true}}]
                                    principals: [{{{kind}: {{address_prefix: 203.0.113.0, prefix_len: 24}}}}]
"#
        )
    };
    let routes = route("/remote", "remote_ip") + &route("/direct", "direct_remote_ip");
    let rbac = "                    {}";
    let extra = "              xff_num_trusted_hops: 1\n";
    let mg = Meshgate::start(&http_config(port, backend.addr, extra, rbac, &routes));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // One trusted hop: the client is the last address that hop appended.
    let xff = "x-forwarded-for: 198.51.100.1, 203.0.113.9";
    assert_eq!(curl(&url("/remote"), &["-H", xff]).0, 200);
    // A spoofed entry further left is not trusted.
    let spoof = "x-forwarded-for: 203.0.113.9, 198.51.100.1";
    assert_eq!(curl(&url("/remote"), &["-H", spoof]).0, 403);
    assert_eq!(curl(&url("/remote"), &[]).0, 403);
    // direct_remote_ip is the TCP peer (127.0.0.1) whatever XFF says.
    assert_eq!(curl(&url("/direct"), &["-H", xff]).0, 403);
    assert_eq!(backend.hits(), 1);
    assert_eq!(
        mg.metric(RBAC_ALLOWED_TOTAL, &rbac_labels("web", "http", "office")),
        1.0
    );
}

#[test]
fn jwt_claim_principal_without_verified_metadata_fails_closed() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let rbac = r#"                    rules:
                      policies:
                        alice:
                          permissions: [{any: true}]
                          principals:
                            - metadata:
                                filter: envoy.filters.http.jwt_authn
                                path: [{key: payload}, {key: sub}]
                                value: {string_match: {exact: alice}}"#;
    let mg = Meshgate::start(&http_config(port, backend.addr, "", rbac, ""));
    // No jwt_authn filter verified anything: a bearer token (even one whose
    // payload says alice) proves nothing, and the ALLOW policy denies.
    let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
    let (code, _) = curl(
        &format!("http://127.0.0.1:{port}/x"),
        &["-H", &format!("authorization: Bearer {token}")],
    );
    assert_eq!(code, 403);
    assert_eq!(backend.hits(), 0);
    assert_eq!(
        mg.metric(RBAC_DENIED_TOTAL, &rbac_labels("web", "http", "")),
        1.0
    );
}

/// A CA, a server certificate for localhost and two client certificates
/// with different SPIFFE URI SANs, made with openssl in `dir`.
struct Pki {
    ca: String,
    server: (String, String),
    good: (String, String),
    bad: (String, String),
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pki(dir: &Path) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rbac test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca_args);
    let leaf = |name: &str, cn: &str, ext: &str, serial: &str| {
        let mut a = vec!["req"];
        a.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={cn}");
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a);
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
        (
            dir.join(&pem).display().to_string(),
            dir.join(&key).display().to_string(),
        )
    };
    Pki {
        ca: dir.join("ca.pem").display().to_string(),
        server: leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
            "11",
        ),
        good: leaf(
            "good",
            "good",
            "subjectAltName=URI:spiffe://mesh.test/ns/shop/sa/frontend\nextendedKeyUsage=clientAuth\n",
            "12",
        ),
        bad: leaf(
            "bad",
            "bad",
            "subjectAltName=URI:spiffe://mesh.test/ns/shop/sa/batch\nextendedKeyUsage=clientAuth\n",
            "13",
        ),
    }
}

#[test]
fn mtls_spiffe_principal_one_client_allowed_one_forbidden() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: mtls
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{sc}", private_key: "{sk}"}}]
          client_validation: {{trusted_ca: "{ca}", required: true}}
        filters:
          - name: proxy
            config:
              stream_filters:
                - name: rbac
                  config:
                    rules:
                      policies:
                        frontend:
                          permissions: [{{any: true}}]
                          principals:
                            - authenticated:
                                principal_name: {{exact: "spiffe://mesh.test/ns/shop/sa/frontend"}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{b}"}}]
"#,
        sc = p.server.0,
        sk = p.server.1,
        ca = p.ca,
        b = backend.addr
    );
    let mg = Meshgate::start(&yaml);
    let url = format!("https://localhost:{port}/orders");
    let with =
        |c: &(String, String)| curl(&url, &["--cacert", &p.ca, "--cert", &c.0, "--key", &c.1]);
    let (code, body) = with(&p.good);
    assert_eq!(code, 200, "{body}");
    let (code, body) = with(&p.bad);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(backend.hits(), 1);
    assert_eq!(
        mg.metric(RBAC_ALLOWED_TOTAL, &rbac_labels("mtls", "http", "frontend")),
        1.0
    );
    assert_eq!(
        mg.metric(RBAC_DENIED_TOTAL, &rbac_labels("mtls", "http", "")),
        1.0
    );
}

/// A raw upstream that records every connection and byte it gets and
/// answers each connection with a canned HTTP response once it read a
/// request head.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (conns.clone(), bytes.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut seen = Vec::new();
                    let mut answered = false;
                    let mut buf = [0u8; 4096];
                    // Reads to the client's end (answering once), so that
                    // no close of ours races the answer.
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                        seen.extend_from_slice(&buf[..n]);
                        if !answered && seen.ends_with(b"\n") {
                            answered = true;
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
                            );
                            if seen.starts_with(b"hello") {
                                break;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, conns, bytes }
    }
}

/// Connects from `source` (a loopback address) and sends a line; returns
/// what came back before the connection closed.
fn exchange_from(source: &str, to: SocketAddr) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"hello upstream\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn network_rbac_closes_denied_connections_before_the_upstream() {
    let up = Recorder::start();
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: tcp
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: rbac
            config:
              stat_prefix: "tcp."
              rules:
                policies:
                  trusted-host:
                    permissions: [{{destination_port: {port}}}]
                    principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.2, prefix_len: 32}}}}]
          - name: tcp_proxy
            config: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{a}"}}]
"#,
        a = up.addr
    );
    let mg = Meshgate::start(&yaml);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Denied: closed with nothing read, and the upstream saw nothing.
    let got = exchange_from("127.0.0.1", to);
    assert_eq!(got, "");
    mg.wait_metric(RBAC_DENIED_TOTAL, &rbac_labels("tcp", "network", ""), |v| {
        v == 1.0
    });
    assert_eq!(up.conns.load(Ordering::SeqCst), 0, "no upstream connection");
    assert_eq!(up.bytes.load(Ordering::SeqCst), 0);
    // Allowed: through to the upstream and back.
    let got = exchange_from("127.0.0.2", to);
    assert!(got.ends_with("upstream"), "{got:?}");
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
    assert_eq!(up.bytes.load(Ordering::SeqCst), "hello upstream\n".len());
    assert_eq!(
        mg.metric(
            RBAC_ALLOWED_TOTAL,
            &[
                ("listener", "tcp"),
                ("layer", "network"),
                ("policy", "trusted-host"),
                ("stat_prefix", "tcp.")
            ]
        ),
        1.0
    );
}

#[test]
fn network_rbac_on_spiffe_identity_after_the_tls_handshake() {
    let up = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: tls-tcp
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{sc}", private_key: "{sk}"}}]
          client_validation: {{trusted_ca: "{ca}", required: true}}
        filters:
          - name: rbac
            config:
              rules:
                policies:
                  frontend:
                    permissions: [{{requested_server_name: {{exact: localhost}}}}]
                    principals:
                      - authenticated: {{principal_name: {{prefix: "spiffe://mesh.test/ns/shop/sa/front"}}}}
          - name: tcp_proxy
            config: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{a}"}}]
"#,
        sc = p.server.0,
        sk = p.server.1,
        ca = p.ca,
        a = up.addr
    );
    let mg = Meshgate::start(&yaml);
    let url = format!("https://localhost:{port}/x");
    // The other identity: the handshake succeeds, then the connection is
    // closed before any byte goes upstream.
    let (code, _) = curl(
        &url,
        &["--cacert", &p.ca, "--cert", &p.bad.0, "--key", &p.bad.1],
    );
    assert_eq!(code, 0);
    mg.wait_metric(
        RBAC_DENIED_TOTAL,
        &rbac_labels("tls-tcp", "network", ""),
        |v| v == 1.0,
    );
    assert_eq!(up.conns.load(Ordering::SeqCst), 0);
    // HTTP/1.1: the upstream is a raw HTTP/1.1 responder (the TLS
    // listener would otherwise negotiate h2 by ALPN with curl).
    let (code, body) = curl(
        &url,
        &[
            "--http1.1",
            "--cacert",
            &p.ca,
            "--cert",
            &p.good.0,
            "--key",
            &p.good.1,
        ],
    );
    assert_eq!((code, body.as_str()), (200, "upstream"));
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_rbac_config_is_refused_by_field() {
    let port = free_port();
    for (rules, field) in [
        (
            "policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {}}}",
            "condition",
        ),
        (
            "policies: {p: {permissions: [{url_path: {path: {exact: /}}}], principals: [{any: true}]}}",
            "url_path",
        ),
    ] {
        let yaml = format!(
            r#"listeners:
  - name: tcp
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: rbac
            config:
              rules: {{{rules}}}
          - name: tcp_proxy
            config: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "127.0.0.1:9"}}]
"#
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let (code, out, err) = run_cli(&["validate", &f.display().to_string()]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(format!("{out}{err}").contains(field), "{field}: {out}{err}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.rbac` before the router, and a TCP listener has
/// `envoy.filters.network.rbac` before `tcp_proxy`.
#[test]
fn rbac_from_xds_http_and_network_filters() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::rbac::v3 as rbacv3;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
    use meshgate_tests::xds::*;
    use prost::Message;

    let backend = HttpBackend::start("b", Proto::Http1);
    let up = Recorder::start();
    let port = free_port();
    let tcp_port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", backend.addr),
            static_cluster("raw", up.addr),
        ],
    );
    // DENY requests carrying x-block.
    let mut deny = rbacv3::Rbac {
        action: rbacv3::rbac::Action::Deny as i32,
        ..Default::default()
    };
    deny.policies.insert(
        "blocked".into(),
        rbacv3::Policy {
            permissions: vec![rbacv3::Permission {
                rule: Some(rbacv3::permission::Rule::Header(rds::HeaderMatcher {
                    name: "x-block".into(),
                    header_match_specifier: Some(
                        rds::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                    ),
                    ..Default::default()
                })),
            }],
            principals: vec![rbacv3::Principal {
                identifier: Some(rbacv3::principal::Identifier::Any(true)),
            }],
            ..Default::default()
        },
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                &http_rbac::Rbac {
                    rules: Some(deny),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    // The TCP listener only lets 127.0.0.2 in.
    let mut only = rbacv3::Rbac::default();
    only.policies.insert(
        "host2".into(),
        rbacv3::Policy {
            permissions: vec![rbacv3::Permission {
                rule: Some(rbacv3::permission::Rule::Any(true)),
            }],
            principals: vec![rbacv3::Principal {
                identifier: Some(rbacv3::principal::Identifier::DirectRemoteIp(
                    core3::CidrRange {
                        address_prefix: "127.0.0.2".into(),
                        prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value {
                            value: 32,
                        }),
                    },
                )),
            }],
            ..Default::default()
        },
    );
    let (tname, t) = tcp_listener("raw", tcp_port, "raw");
    let mut t = lds::Listener::decode(t.value.as_slice()).unwrap();
    t.filter_chains[0].filters.insert(
        0,
        lds::Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(lds::filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                &net_rbac::Rbac {
                    rules: Some(only),
                    stat_prefix: "raw.".into(),
                    ..Default::default()
                },
            ))),
        },
    );
    mgmt.set(
        LISTENER,
        "l1",
        vec![(name, any(LISTENER, &l)), (tname, any(LISTENER, &t))],
    );
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=b");
    let url = format!("http://127.0.0.1:{port}/x");
    assert_eq!(curl(&url, &[]).0, 200);
    let hits = backend.hits();
    let (code, body) = curl(&url, &["-H", "x-block: 1"]);
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(backend.hits(), hits);
    assert_eq!(
        mg.metric(RBAC_DENIED_TOTAL, &rbac_labels("web", "http", "blocked")),
        1.0
    );
    // The network RBAC.
    let to: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
    wait_listening(to);
    assert_eq!(exchange_from("127.0.0.1", to), "");
    assert_eq!(up.conns.load(Ordering::SeqCst), 0);
    assert!(exchange_from("127.0.0.2", to).ends_with("upstream"));
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

/// `:authority` and `:method` read the same over HTTP/1.1 (Host) and
/// HTTP/2 (the pseudo headers).
#[test]
fn pseudo_headers_match_over_http1_and_http2() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let rbac = r#"                    rules:
                      policies:
                        api-reads:
                          permissions:
                            - and_rules:
                                rules:
                                  - header: {name: ":authority", exact_match: "api.example"}
                                  - header: {name: ":method", safe_regex_match: {regex: "GET|HEAD"}}
                          principals: [{any: true}]"#;
    let _mg = Meshgate::start(&http_config(port, backend.addr, "", rbac, ""));
    let url = format!("http://127.0.0.1:{port}/x");
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let host = ["-H", "host: api.example"];
        assert_eq!(curl(&url, &[proto, host[0], host[1]]).0, 200, "{proto}");
        assert_eq!(
            curl(&url, &[proto, host[0], host[1], "-X", "DELETE"]).0,
            403,
            "{proto}"
        );
        assert_eq!(
            curl(&url, &[proto, "-H", "host: other.example"]).0,
            403,
            "{proto}"
        );
    }
    assert_eq!(backend.hits(), 2);
}

/// A gRPC call the rules deny gets gRPC's PERMISSION_DENIED (status 7),
/// not an HTTP 403 a gRPC client cannot read.
#[test]
fn denied_grpc_calls_get_permission_denied() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let rbac = r#"                    rules:
                      policies:
                        reads:
                          permissions: [{url_path: {path: {prefix: /shop.Catalog/}}}]
                          principals: [{any: true}]"#;
    let _mg = Meshgate::start(&http_config(port, backend.addr, "", rbac, ""));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "@/dev/null",
        ])
        .arg(format!("http://127.0.0.1:{port}/shop.Orders/Delete"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 7"), "{head}");
    assert_eq!(backend.hits(), 0);
}
