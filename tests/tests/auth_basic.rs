//! The `basic_auth`, `api_key_auth` and `csrf` stream filters through the
//! real binary: curl against an echoing backend (what reached the upstream
//! comes back in `x-echo-*` headers and the body), htpasswd entries made
//! by Python's hashlib and bcrypt, hostile credentials, the denial counter
//! and the access log's `denied_by`, and the protocol mapping of a denial:
//! a grpcio client gets UNAUTHENTICATED / PERMISSION_DENIED, a Dubbo
//! consumer a SERVICE_ERROR saying "meshgate: unauthenticated". One test
//! runs `basic_auth` from a real xDS control plane.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::io::Write;
use std::process::Command;

/// htpasswd entries made by Python: `{SHA}` for alice/apass and carol/cpass,
/// bcrypt (cost 8) for bob/bpass.
struct Hashes {
    alice: String,
    bob: String,
    carol: String,
}

fn hashes() -> Hashes {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import base64,hashlib,bcrypt\n\
             sha=lambda p: '{SHA}'+base64.b64encode(hashlib.sha1(p).digest()).decode()\n\
             print(sha(b'apass'))\n\
             print(bcrypt.hashpw(b'bpass', bcrypt.gensalt(rounds=8)).decode())\n\
             print(sha(b'cpass'))\n",
        )
        .output()
        .expect("python3 with bcrypt (tests/run.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let l: Vec<&str> = text.lines().collect();
    assert!(l[1].starts_with("$2b$08$"), "{text}");
    Hashes {
        alice: l[0].into(),
        bob: l[1].into(),
        carol: l[2].into(),
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(user: &str, pass: &str) -> String {
    format!("Authorization: Basic {}", b64(&format!("{user}:{pass}")))
}

/// Ports of the listeners of [`config`].
struct Ports {
    basic: u16,
    alt: u16,
    apikey: u16,
    csrf: u16,
    grpc_basic: u16,
    grpc_key: u16,
    dubbo: u16,
}

/// The listeners:
/// - `basic`: basic_auth with users from a file (alice {SHA}, bob bcrypt),
///   the user forwarded in `x-echo-user` and published in the metadata;
///   `/carol/` has its own users, `/open/` disables the filter.
/// - `basic_alt`: credentials in `x-echo-credentials` (echoed back by the
///   backend: they are forwarded), missing ones allowed.
/// - `apikey`: api_key_auth (alpha, beta) from header, query or cookie,
///   hidden from the upstream, the client in `x-echo-client`; only alpha
///   on `/admin/`.
/// - `csrf`: enforced, `trusted.example` allowed besides the host;
///   `/shadow/` only counts.
/// - `grpc_basic`, `grpc_key`: the same auth in front of a grpcio server.
/// - `dubbo`: basic_auth on Dubbo calls to a cluster that refuses
///   connections (a call that passed the filter says so).
fn config(
    p: &Ports,
    h: &Hashes,
    dir: &std::path::Path,
    backend: std::net::SocketAddr,
    grpc: u16,
) -> String {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{}\nbob:{}\n", h.alice, h.bob)).unwrap();
    let log = dir.join("access.log");
    let closed = free_port();
    let listener = |name: &str, port: u16, extra: &str, filters: &str, routes: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log: {{path: "{log}"}}
{extra}              stream_filters:
{filters}              route_config:
                virtual_hosts:
                  - name: v
                    domains: ["*"]
                    routes:
{routes}"#,
            log = log.display()
        )
    };
    let to = |c: &str| {
        format!(
            "                      - match: {{prefix: /}}\n                        route: {{cluster: {c}}}\n"
        )
    };
    let grpc_route = "                      - match: {prefix: /, grpc: true}\n                        route: {cluster: grpc, timeout: 0s}\n";
    let mut y = String::from("admin:\n  address: \"{ADMIN}\"\nlisteners:\n");
    y += &listener(
        "basic",
        p.basic,
        "",
        &format!(
            r#"                - name: basic_auth
                  config:
                    users: {{filename: "{}"}}
                    forward_username_header: x-echo-user
                    emit_dynamic_metadata: true
"#,
            htpasswd.display()
        ),
        &format!(
            r#"                      - match: {{prefix: /carol/}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          basic_auth: {{users: {{inline_string: "carol:{carol}"}}}}
                      - match: {{prefix: /open/}}
                        route: {{cluster: backend}}
                        per_filter_config: {{basic_auth: {{disabled: true}}}}
{rest}"#,
            carol = h.carol,
            rest = to("backend")
        ),
    );
    y += &listener(
        "basic_alt",
        p.alt,
        "",
        &format!(
            r#"                - name: basic_auth
                  config:
                    users: {{inline_string: "alice:{}"}}
                    authentication_header: x-echo-credentials
                    allow_missing: true
                    forward_username_header: x-echo-user
"#,
            h.alice
        ),
        &to("backend"),
    );
    let keys = r#"                    credentials:
                      - {key: k-alpha-123, client: alpha}
                      - {key: k-beta-456, client: beta}
"#;
    y += &listener(
        "apikey",
        p.apikey,
        "",
        &format!(
            r#"                - name: api_key_auth
                  config:
{keys}                    key_sources: [{{header: x-echo-api-key}}, {{query: api_key}}, {{cookie: session_key}}]
                    forwarding: {{header: x-echo-client, hide_credentials: true}}
"#
        ),
        &format!(
            r#"                      - match: {{prefix: /admin/}}
                        route: {{cluster: backend}}
                        per_filter_config: {{api_key_auth: {{allowed_clients: [alpha]}}}}
{}"#,
            to("backend")
        ),
    );
    y += &listener(
        "csrf",
        p.csrf,
        "",
        r#"                - name: csrf
                  config:
                    filter_enabled: {default_value: {numerator: 100}}
                    additional_origins: [{exact: trusted.example}]
"#,
        &format!(
            r#"                      - match: {{prefix: /shadow/}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          csrf:
                            filter_enabled: {{default_value: {{numerator: 0}}}}
                            shadow_enabled: {{default_value: {{numerator: 100}}}}
{}"#,
            to("backend")
        ),
    );
    y += &listener(
        "grpc_basic",
        p.grpc_basic,
        "",
        &format!(
            "                - name: basic_auth\n                  config: {{users: {{inline_string: \"alice:{}\"}}}}\n",
            h.alice
        ),
        grpc_route,
    );
    y += &listener(
        "grpc_key",
        p.grpc_key,
        "",
        &format!(
            "                - name: api_key_auth\n                  config:\n{keys}                    key_sources: [{{header: x-api-key}}]\n"
        ),
        &format!(
            "{grpc_route}                        per_filter_config: {{api_key_auth: {{allowed_clients: [alpha]}}}}\n"
        ),
    );
    y += &listener(
        "dubbo",
        p.dubbo,
        "              codec: dubbo\n",
        &format!(
            "                - name: basic_auth\n                  config: {{users: {{inline_string: \"alice:{}\"}}}}\n",
            h.alice
        ),
        &to("dead"),
    );
    y += &format!(
        r#"clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
  - name: grpc
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{grpc}"}}]
  - name: dead
    protocol: dubbo
    connect_timeout: 500ms
    endpoints: [{{address: "127.0.0.1:{closed}"}}]
"#
    );
    y
}

struct Setup {
    mg: Meshgate,
    p: Ports,
    backend: HttpBackend,
    h: Hashes,
    dir: tempfile::TempDir,
}

impl Setup {
    fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn denied(&self, filter: &str, reason: &str) -> f64 {
        self.mg.metric(
            "meshgate_http_filter_denied_total",
            &[("filter", filter), ("reason", reason)],
        )
    }
}

fn setup_with(grpc: u16) -> Setup {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let h = hashes();
    let p = Ports {
        basic: free_port(),
        alt: free_port(),
        apikey: free_port(),
        csrf: free_port(),
        grpc_basic: free_port(),
        grpc_key: free_port(),
        dubbo: free_port(),
    };
    let mg = Meshgate::start(&config(&p, &h, dir.path(), backend.addr, grpc));
    Setup {
        mg,
        p,
        backend,
        h,
        dir,
    }
}

fn setup() -> Setup {
    setup_with(free_port())
}

#[test]
fn basic_auth_401_then_200_with_sha_and_bcrypt_users_forwarded_and_logged() {
    let s = setup();
    let url = s.url(s.p.basic, "/api/x");
    // No credentials: 401 with the challenge, nothing forwarded.
    let (status, h, body) = curl(&[&url]);
    assert_eq!(status, 401);
    assert!(
        h["www-authenticate"].starts_with("Basic realm=\"http://127.0.0.1:"),
        "{h:?}"
    );
    assert_eq!(body, "meshgate: unauthenticated\n");
    assert_eq!(s.backend.hits(), 0);
    // The {SHA} user; a user name the client sends is replaced.
    let (status, h, body) = curl(&[
        "-H",
        &basic("alice", "apass"),
        "-H",
        "x-echo-user: root",
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-echo-user"], "alice");
    // A wrong password, an unknown user.
    for (u, pw) in [("alice", "bpass"), ("mallory", "apass"), ("bob", "wrong")] {
        let (status, h, _) = curl(&["-H", &basic(u, pw), &url]);
        assert_eq!(status, 401, "{u}:{pw}");
        assert!(h.contains_key("www-authenticate"));
    }
    // The bcrypt user, three times: verified once, then from the cache.
    for _ in 0..3 {
        let (status, h, _) = curl(&["-H", &basic("bob", "bpass"), &url]);
        assert_eq!(status, 200);
        assert_eq!(h["x-echo-user"], "bob");
    }
    let bc = |r: &str| {
        s.mg.metric("meshgate_http_basic_auth_bcrypt_total", &[("result", r)])
    };
    assert_eq!(
        (bc("verified"), bc("cache_hit"), bc("mismatch")),
        (1.0, 2.0, 1.0)
    );
    assert_eq!(s.backend.hits(), 4);
    // The route's own users: carol there, alice no longer.
    let carol = s.url(s.p.basic, "/carol/x");
    assert_eq!(curl(&["-H", &basic("carol", "cpass"), &carol]).0, 200);
    assert_eq!(curl(&["-H", &basic("alice", "apass"), &carol]).0, 401);
    assert_eq!(curl(&["-H", &basic("carol", "cpass"), &url]).0, 401);
    // Disabled on /open/.
    assert_eq!(curl(&[&s.url(s.p.basic, "/open/x")]).0, 200);
    assert_eq!(s.backend.hits(), 6);
    // Counted per filter and reason: 1 + 3 + 2 refusals.
    let denied = s.mg.wait_metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "basic_auth"), ("reason", "unauthenticated")],
        |v| v >= 6.0,
    );
    assert_eq!(denied, 6.0);
    // The access log names the filter and shows the user it published.
    let lines = wait_for_within(5, "12 access-log lines", || {
        let l = s.access_log();
        (l.len() >= 12).then_some(l)
    });
    let refused: Vec<_> = lines.iter().filter(|l| l["status"] == 401).collect();
    assert_eq!(refused.len(), 6);
    for l in &refused {
        assert_eq!(l["denied_by"], "basic_auth", "{l}");
        assert_eq!(l["local_reply"], "unauthenticated", "{l}");
        assert!(l["upstream_host"].is_null(), "{l}");
    }
    let users: Vec<_> = lines
        .iter()
        .filter_map(|l| l["dynamic_metadata"]["envoy.filters.http.basic_auth"]["username"].as_str())
        .collect();
    assert_eq!(users, ["alice", "bob", "bob", "bob", "carol"]);
}

#[test]
fn basic_auth_hostile_credentials_and_authentication_header() {
    let s = setup();
    let url = s.url(s.p.basic, "/x");
    for auth in [
        "Authorization: Basic !!!not-base64!!!",
        &format!("Authorization: Basic {}", b64("alice-no-colon")),
        &format!("Authorization: Bearer {}", b64("alice:apass")),
        "Authorization: Basic",
        &format!("Authorization: Basic {}", b64(":apass")),
        &format!("Authorization: Basic {}", b64("alice:apass:extra")),
    ] {
        let (status, h, _) = curl(&["-H", auth, &url]);
        assert_eq!(status, 401, "{auth}");
        assert!(h.contains_key("www-authenticate"), "{auth}");
    }
    // 60 KiB of credentials: refused by the codec's header limit or the
    // filter, never forwarded, and meshgate goes on serving.
    let huge = format!("Authorization: Basic {}", "QUFB".repeat(15 * 1024));
    let (status, _, _) = curl(&["-H", &huge, &url]);
    assert!(status == 431 || status == 401, "{status}");
    let huge = format!(
        "Authorization: Basic {}",
        b64(&format!("alice:{}", "a".repeat(45 * 1024)))
    );
    let (status, _, _) = curl(&["-H", &huge, &url]);
    assert!(status == 431 || status == 401, "{status}");
    assert_eq!(s.backend.hits(), 0);
    assert_eq!(curl(&["-H", &basic("alice", "apass"), &url]).0, 200);
    assert!(s.denied("basic_auth", "unauthenticated") >= 6.0);
    // `authentication_header`: credentials read from x-echo-credentials only;
    // missing ones allowed (`allow_missing`), invalid ones not.
    let alt = s.url(s.p.alt, "/x");
    let (status, h, _) = curl(&[&alt]);
    assert_eq!(status, 200);
    assert!(!h.contains_key("x-echo-user"));
    let cred = basic("alice", "apass").replace("Authorization", "x-echo-credentials");
    let (status, h, _) = curl(&["-H", &cred, &alt]);
    assert_eq!(status, 200);
    assert_eq!(h["x-echo-user"], "alice");
    // As in Envoy, the credentials go upstream unchanged.
    assert_eq!(
        format!("x-echo-credentials: {}", h["x-echo-credentials"]),
        cred
    );
    let bad = basic("alice", "nope").replace("Authorization", "x-echo-credentials");
    assert_eq!(curl(&["-H", &bad, &alt]).0, 401);
    // `authorization` is not looked at there.
    let (status, h, _) = curl(&["-H", &basic("alice", "nope"), &alt]);
    assert_eq!(status, 200);
    assert!(!h.contains_key("x-echo-user"));
}

#[test]
fn api_keys_from_header_query_cookie_hidden_and_allowed_clients() {
    let s = setup();
    let url = |p: &str| s.url(s.p.apikey, p);
    // Missing and unknown keys: 401.
    assert_eq!(curl(&[&url("/x")]).0, 401);
    assert_eq!(
        curl(&["-H", "x-echo-api-key: k-alpha-12", &url("/x")]).0,
        401
    );
    assert_eq!(curl(&[&url("/x?api_key=nope")]).0, 401);
    assert_eq!(s.backend.hits(), 0);
    // Header: the client forwarded, the key hidden (not echoed back).
    let (status, h, _) = curl(&["-H", "x-echo-api-key: k-alpha-123", &url("/x")]);
    assert_eq!(status, 200);
    assert_eq!(h["x-echo-client"], "alpha");
    assert!(!h.contains_key("x-echo-api-key"), "{h:?}");
    // Query: removed from what the upstream sees.
    let (status, h, body) = curl(&[&url("/x?a=1&api_key=k-beta-456&b=2")]);
    assert_eq!(status, 200);
    assert_eq!(h["x-echo-client"], "beta");
    assert!(body.contains("uri=/x?a=1&b=2\n"), "{body}");
    // Cookie; a client id the client sends itself is replaced.
    let (status, h, _) = curl(&[
        "-H",
        "cookie: theme=dark; session_key=k-beta-456",
        "-H",
        "x-echo-client: alpha",
        &url("/x"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["x-echo-client"], "beta");
    // /admin/: alpha only; beta is known but forbidden there.
    assert_eq!(
        curl(&["-H", "x-echo-api-key: k-alpha-123", &url("/admin/x")]).0,
        200
    );
    let (status, _, body) = curl(&["-H", "x-echo-api-key: k-beta-456", &url("/admin/x")]);
    assert_eq!(status, 403);
    assert_eq!(body, "meshgate: forbidden\n");
    assert_eq!(s.backend.hits(), 4);
    s.mg.wait_metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "api_key_auth"), ("reason", "unauthenticated")],
        |v| v == 3.0,
    );
    assert_eq!(s.denied("api_key_auth", "forbidden"), 1.0);
    let lines = wait_for_within(5, "8 access-log lines", || {
        let l = s.access_log();
        (l.len() >= 8).then_some(l)
    });
    let forbidden: Vec<_> = lines.iter().filter(|l| l["status"] == 403).collect();
    assert_eq!(forbidden.len(), 1);
    assert_eq!(forbidden[0]["denied_by"], "api_key_auth");
    assert_eq!(forbidden[0]["local_reply"], "forbidden");
}

#[test]
fn csrf_refuses_cross_origin_posts_allows_additional_origins_and_shadow_counts() {
    let s = setup();
    let url = |p: &str| s.url(s.p.csrf, p);
    let post = |origin: Option<&str>, path: &str| {
        let mut a = vec!["-X".to_string(), "POST".into(), "-d".into(), "x=1".into()];
        if let Some(o) = origin {
            a.push("-H".into());
            a.push(format!("Origin: {o}"));
        }
        a.push(url(path));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        curl(&a)
    };
    let own = format!("http://127.0.0.1:{}", s.p.csrf);
    assert_eq!(post(Some(&own), "/x").0, 200);
    let (status, _, body) = post(Some("https://evil.example"), "/x");
    assert_eq!(status, 403);
    assert_eq!(body, "meshgate: invalid origin\n");
    assert_eq!(post(None, "/x").0, 403, "no origin on an unsafe method");
    assert_eq!(post(Some("https://trusted.example"), "/x").0, 200);
    // Safe methods are not checked.
    assert_eq!(
        curl(&["-H", "Origin: https://evil.example", &url("/x")]).0,
        200
    );
    // Shadow mode: let through, counted.
    assert_eq!(post(Some("https://evil.example"), "/shadow/x").0, 200);
    assert_eq!(s.backend.hits(), 4);
    let m = |result: &str, mode: &str| {
        s.mg.metric(
            "meshgate_http_csrf_request_total",
            &[("result", result), ("mode", mode)],
        )
    };
    assert_eq!(m("valid", "enforced"), 2.0);
    assert_eq!(m("invalid", "enforced"), 1.0);
    assert_eq!(m("missing_source_origin", "enforced"), 1.0);
    assert_eq!(m("invalid", "shadow"), 1.0);
    assert_eq!(s.denied("csrf", "forbidden"), 2.0);
}

/// One unary call with metadata: `OK <reply>` or `ERR <code> <details>`.
fn grpc_call(port: u16, metadata: &[(&str, &str)]) -> String {
    let script = "import sys, grpc\n\
        ch = grpc.insecure_channel(sys.argv[1])\n\
        f = ch.unary_unary('/echo.Echo/Unary')\n\
        md = [tuple(a.split('=', 1)) for a in sys.argv[2:]]\n\
        try:\n    print('OK', f(b'hi', metadata=md, timeout=10).decode())\n\
        except grpc.RpcError as e:\n    print('ERR', e.code().value[0], e.details())\n";
    let out = Command::new("timeout")
        .args(["20", "python3", "-c", script, &format!("127.0.0.1:{port}")])
        .args(metadata.iter().map(|(k, v)| format!("{k}={v}")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn grpc_denials_are_unauthenticated_and_permission_denied() {
    let server = GrpcServer::start();
    let s = setup_with(server.1);
    let auth = format!("Basic {}", b64("alice:apass"));
    assert_eq!(
        grpc_call(s.p.grpc_basic, &[("authorization", &auth)]),
        "OK hi"
    );
    let out = grpc_call(s.p.grpc_basic, &[]);
    assert!(out.starts_with("ERR 16 "), "UNAUTHENTICATED: {out}");
    assert!(out.contains("unauthenticated"), "{out}");
    let bad = format!("Basic {}", b64("alice:nope"));
    assert!(grpc_call(s.p.grpc_basic, &[("authorization", &bad)]).starts_with("ERR 16 "));
    assert_eq!(
        grpc_call(s.p.grpc_key, &[("x-api-key", "k-alpha-123")]),
        "OK hi"
    );
    let out = grpc_call(s.p.grpc_key, &[("x-api-key", "k-beta-456")]);
    assert!(out.starts_with("ERR 7 "), "PERMISSION_DENIED: {out}");
    assert!(grpc_call(s.p.grpc_key, &[]).starts_with("ERR 16 "));
    assert_eq!(s.denied("basic_auth", "unauthenticated"), 2.0);
    assert_eq!(s.denied("api_key_auth", "forbidden"), 1.0);
    assert_eq!(s.denied("api_key_auth", "unauthenticated"), 1.0);
}

#[test]
fn dubbo_denial_is_a_service_error_saying_unauthenticated() {
    let s = setup();
    // No credentials: SERVICE_ERROR (70) with meshgate's message.
    let mut c = send_raw(
        s.p.dubbo,
        &dubbo_request(1, "com.meshgate.Echo", "echo", &[]),
    );
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (70, 1));
    assert_eq!(dubbo_error_message(&body), "meshgate: unauthenticated");
    // Credentials in an attachment (attachments are the stream's headers):
    // past the filter, the call reaches the router (whose cluster refuses
    // connections).
    let auth = format!("Basic {}", b64("alice:apass"));
    c.write_all(&dubbo_request(
        2,
        "com.meshgate.Echo",
        "echo",
        &[("authorization", &auth)],
    ))
    .unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (70, 2));
    let msg = dubbo_error_message(&body);
    assert!(msg.contains("upstream connect failure"), "{msg}");
    let bad = format!("Basic {}", b64("alice:x"));
    c.write_all(&dubbo_request(
        3,
        "com.meshgate.Echo",
        "echo",
        &[("authorization", &bad)],
    ))
    .unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (70, 3));
    assert_eq!(dubbo_error_message(&body), "meshgate: unauthenticated");
    assert_eq!(s.denied("basic_auth", "unauthenticated"), 2.0);
    let _ = &s.h;
}

#[test]
fn bad_auth_configs_are_refused_naming_the_field_or_line() {
    let dir = tempfile::tempdir().unwrap();
    let h = hashes();
    let p = Ports {
        basic: free_port(),
        alt: free_port(),
        apikey: free_port(),
        csrf: free_port(),
        grpc_basic: free_port(),
        grpc_key: free_port(),
        dubbo: free_port(),
    };
    let good = config(&p, &h, dir.path(), "127.0.0.1:1".parse().unwrap(), 1);
    let path = dir.path().join("bad.yaml");
    for (bad, want) in [
        (
            good.replace(&format!("carol:{}", h.carol), "carol:$apr1$abc$def"),
            "line 1: unsupported hash",
        ),
        (
            good.replace("forward_username_header: x-echo-user\n                    emit", "forward_username_header: x-echo-user\n                    realm: r\n                    emit"),
            "realm",
        ),
        (
            good.replace("filter_enabled: {default_value: {numerator: 100}}\n", ""),
            "filter_enabled",
        ),
        (
            good.replace("{key: k-beta-456, client: beta}", "{key: k-alpha-123, client: beta}"),
            "credentials[1].key",
        ),
        (
            good.replace("{cookie: session_key}", "{cookie: session_key, query: q}"),
            "key_sources[2]",
        ),
        (
            good.replace("[{exact: trusted.example}]", "[{exact: a, suffix: b}]"),
            "additional_origins[0]",
        ),
    ] {
        assert_ne!(bad, good, "{want}");
        std::fs::write(&path, bad.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{want}");
        let text = format!("{out}{err}");
        assert!(text.contains(want), "{want} not in: {text}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.basic_auth` (BasicAuth) before the router; one
/// route disables it with a `FilterConfig {disabled: true}` in its
/// `typed_per_filter_config`.
#[test]
fn basic_auth_from_xds_on_a_route_and_disabled_on_another() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::basic_auth::v3 as bav3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let h = hashes();
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut hc = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    hc.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.basic_auth".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                &bav3::BasicAuth {
                    users: Some(core3::DataSource {
                        specifier: Some(core3::data_source::Specifier::InlineString(format!(
                            "alice:{}\nbob:{}\n",
                            h.alice, h.bob
                        ))),
                        ..Default::default()
                    }),
                    forward_username_header: "x-echo-user".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        },
    );
    a.value = hc.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // routes[1] is the fixture's `/` route to the cluster.
    let mut open = r.virtual_hosts[0].routes[1].clone();
    open.r#match = Some(rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/open/".into())),
        ..Default::default()
    });
    open.typed_per_filter_config.insert(
        "envoy.filters.http.basic_auth".into(),
        any(
            "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            &rds::FilterConfig {
                disabled: true,
                ..Default::default()
            },
        ),
    );
    r.virtual_hosts[0].routes.insert(0, open);
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/open/x", "backend=b");
    let url = format!("http://127.0.0.1:{port}/private");
    let (status, hd, _) = curl(&[&url]);
    assert_eq!(status, 401);
    assert!(hd["www-authenticate"].starts_with("Basic realm="));
    let (status, hd, _) = curl(&["-H", &basic("bob", "bpass"), &url]);
    assert_eq!(status, 200);
    assert_eq!(hd["x-echo-user"], "bob");
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/open/y")]).0, 200);
}
