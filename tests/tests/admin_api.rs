//! The admin API end to end, with curl against the real binary: every
//! endpoint `/` lists, Envoy's query parameters, POST-only mutations (GET
//! on them: 405, counted), the bearer token, the Unix-socket admin,
//! `/logging` changing the level at run time, `/healthcheck/fail`,
//! `/drain_listeners` (new connections refused, in-flight requests
//! finish) and `/quitquitquit` (exit code 0).

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

fn cert(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

/// A listener `http` proxying to the cluster `backend`, a TLS listener
/// `https` answering directly, and `admin_extra` under `admin:`.
fn config(backend: &HttpBackend, admin: &str) -> String {
    format!(
        r#"admin:
{admin}
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
  - name: https
    address: 127.0.0.1:0
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: "tls\n"}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{}"}}]
  - name: spare
    endpoints: [{{address: "{}"}}]
"#,
        cert("server.pem"),
        cert("server.key"),
        backend.addr,
        backend.addr,
    )
}

fn start(backend: &HttpBackend) -> Meshgate {
    Meshgate::start(&config(backend, "  address: \"{ADMIN}\""))
}

/// curl on the admin: (status, headers, body).
fn admin(
    mg: &Meshgate,
    method: &str,
    path: &str,
    extra: &[&str],
) -> (u16, BTreeMap<String, String>, String) {
    let url = format!("http://{}{path}", mg.admin.unwrap());
    let mut args = vec!["-X", method];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `/` lists every endpoint; the read-only endpoints answer what Envoy's
/// do, with their query parameters.
#[test]
fn read_only_endpoints_answer_with_their_parameters() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = start(&backend);
    let port = mg.listener_port("http");
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/x")]);
    assert_eq!(s, 200);

    let (s, _, body) = admin(&mg, "GET", "/", &[]);
    assert_eq!(s, 200);
    for p in [
        "/server_info",
        "/listeners",
        "/clusters",
        "/stats",
        "/stats/prometheus",
        "/config_dump",
        "/certs",
        "/memory",
        "/logging",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain_listeners",
        "/reset_counters",
        "/quitquitquit",
    ] {
        assert!(body.contains(&format!("{p} ")), "{p} not listed:\n{body}");
    }
    assert!(body.contains("POST  /quitquitquit"), "{body}");

    // /server_info
    let (s, _, body) = admin(&mg, "GET", "/server_info", &[]);
    assert_eq!(s, 200);
    let info = json(&body);
    assert_eq!(info["state"], "LIVE", "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_current_epoch"].as_u64().is_some(), "{info}");
    let cmd: Vec<&str> = info["command_line_options"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(cmd.contains(&"run") && cmd.contains(&"-c"), "{cmd:?}");

    // /listeners: JSON by default and with ?format=json; text on request.
    for q in ["", "?format=json"] {
        let (s, _, body) = admin(&mg, "GET", &format!("/listeners{q}"), &[]);
        assert_eq!(s, 200);
        let l = json(&body);
        assert_eq!(l[0]["name"], "http", "{l}");
        assert_eq!(l[0]["bound"][0], format!("127.0.0.1:{port}"));
    }
    let (_, _, body) = admin(&mg, "GET", "/listeners?format=text", &[]);
    assert!(
        body.contains(&format!("http::127.0.0.1:{port}\n")),
        "{body}"
    );

    // /clusters, text and JSON.
    let (_, _, body) = admin(&mg, "GET", "/clusters", &[]);
    assert!(
        body.contains(&format!("backend::{}::", backend.addr)),
        "{body}"
    );
    let (_, _, body) = admin(&mg, "GET", "/clusters?format=json", &[]);
    assert!(
        json(&body)["cluster_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "backend"),
        "{body}"
    );

    // /stats: text, JSON, filter, usedonly.
    let (s, _, body) = admin(&mg, "GET", "/stats", &[]);
    assert_eq!(s, 200);
    assert!(
        body.lines()
            .any(|l| l == "meshgate_downstream_rq_total{listener=\"http\"}: 1"),
        "{body}"
    );
    let (_, _, body) = admin(
        &mg,
        "GET",
        "/stats?filter=%5Emeshgate_downstream_rq_total&format=json",
        &[],
    );
    let stats = json(&body)["stats"].as_array().unwrap().clone();
    assert!(!stats.is_empty());
    assert!(
        stats.iter().all(|s| s["name"]
            .as_str()
            .unwrap()
            .starts_with("meshgate_downstream_rq_total")),
        "{stats:?}"
    );
    let (_, _, all) = admin(&mg, "GET", "/stats", &[]);
    let (_, _, used) = admin(&mg, "GET", "/stats?usedonly", &[]);
    assert!(all.lines().any(|l| l.ends_with(": 0")), "{all}");
    assert!(!used.lines().any(|l| l.ends_with(": 0")), "{used}");
    assert!(used.lines().count() > 0);
    let (s, _, body) = admin(&mg, "GET", "/stats?filter=(", &[]);
    assert_eq!(s, 400);
    assert!(body.starts_with("filter:"), "{body}");
    mg.wait_metric(
        "meshgate_admin_rq_denied_total",
        &[("reason", "bad_request")],
        |v| v == 1.0,
    );

    // /stats/prometheus: the duration histogram in seconds.
    let (_, _, body) = admin(&mg, "GET", "/stats/prometheus", &[]);
    for part in [
        "_bucket{listener=\"http\",le=\"+Inf\"} 1",
        "_count{listener=\"http\"} 1",
        "_sum{listener=\"http\"} ",
    ] {
        let line = format!("meshgate_downstream_rq_duration_seconds{part}");
        assert!(body.contains(&line), "{line} missing:\n{body}");
    }
    assert!(body.contains("meshgate_server_uptime_seconds"), "{body}");

    // /config_dump: resource, name_regex, mask, include_eds.
    let (_, _, body) = admin(&mg, "GET", "/config_dump?resource=clusters", &[]);
    let names: Vec<String> = json(&body)["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["backend", "spare"]);
    let (_, _, body) = admin(
        &mg,
        "GET",
        "/config_dump?resource=dynamic_active_clusters&name_regex=^sp&mask=name",
        &[],
    );
    assert_eq!(
        json(&body),
        serde_json::json!({"configs": [{"name": "spare"}]})
    );
    let (_, _, body) = admin(
        &mg,
        "GET",
        "/config_dump?name_regex=^https$&mask=config.listeners.name",
        &[],
    );
    assert_eq!(
        json(&body),
        serde_json::json!({"config": {"listeners": [{"name": "https"}]}})
    );
    assert!(mg.config_dump().get("clusters_state").is_none());
    let (_, _, body) = admin(&mg, "GET", "/config_dump?include_eds", &[]);
    assert_eq!(
        json(&body)["clusters_state"][0]["live_endpoints"][0]["address"],
        backend.addr.to_string()
    );
    let (s, _, body) = admin(&mg, "GET", "/config_dump?resource=routes_of_mars", &[]);
    assert_eq!(s, 400);
    assert!(body.starts_with("resource:"), "{body}");

    // /certs: the TLS listener's certificate.
    let (s, _, body) = admin(&mg, "GET", "/certs", &[]);
    assert_eq!(s, 200);
    let certs = json(&body);
    let c = &certs[0];
    assert_eq!(c["source"], cert("server.pem"), "{certs}");
    assert_eq!(c["kind"], "certificate");
    let leaf = &c["cert_chain"][0];
    assert!(
        leaf["subject"].as_str().unwrap().contains("CN=localhost"),
        "{leaf}"
    );
    assert!(
        leaf["subject_alt_names"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"dns": "localhost"})),
        "{leaf}"
    );
    // examples/certs/server.pem is valid until 2036.
    assert!(
        leaf["days_until_expiration"].as_i64().unwrap() > 365,
        "{leaf}"
    );

    // /memory: the allocator's and the kernel's figures.
    let (s, _, body) = admin(&mg, "GET", "/memory", &[]);
    assert_eq!(s, 200);
    let m = json(&body);
    assert_eq!(m["allocator"], "mimalloc", "{m}");
    assert!(m["allocated"].as_u64().unwrap() > 0, "{m}");
    assert!(m["resident"].as_u64().unwrap() > 1 << 20, "{m}");
}

/// Mutations answer only POST: GET is 405 with `Allow: POST`, counted.
/// `/reset_counters` zeroes counters; `/healthcheck/fail` makes `/ready`
/// fail until `/healthcheck/ok`.
#[test]
fn mutations_need_post_and_act() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = start(&backend);
    let port = mg.listener_port("http");
    for p in [
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain_listeners",
        "/reset_counters",
        "/quitquitquit",
    ] {
        let (s, h, _) = admin(&mg, "GET", p, &[]);
        assert_eq!(s, 405, "{p}");
        assert_eq!(h.get("allow").map(String::as_str), Some("POST"), "{p}");
    }
    // Read-only endpoints refuse POST.
    let (s, _, _) = admin(&mg, "POST", "/config_dump", &[]);
    assert_eq!(s, 405);
    mg.wait_metric(
        "meshgate_admin_rq_denied_total",
        &[("reason", "method_not_allowed")],
        |v| v == 6.0,
    );
    // Nothing happened: still ready, still accepting.
    assert_eq!(mg.admin_get("/ready").0, 200);

    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(s, 200);
    mg.wait_metric(
        "meshgate_downstream_rq_total",
        &[("listener", "http")],
        |v| v == 1.0,
    );
    let (s, _, _) = admin(&mg, "POST", "/reset_counters", &[]);
    assert_eq!(s, 200);
    assert_eq!(
        mg.metric("meshgate_downstream_rq_total", &[("listener", "http")]),
        0.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_duration_seconds_count",
            &[("listener", "http")]
        ),
        0.0
    );
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(s, 200);
    mg.wait_metric(
        "meshgate_downstream_rq_total",
        &[("listener", "http")],
        |v| v == 1.0,
    );

    let (s, _, _) = admin(&mg, "POST", "/healthcheck/fail", &[]);
    assert_eq!(s, 200);
    assert_eq!(
        mg.admin_get("/ready"),
        (503, "HEALTH_CHECK_FAILED\n".into())
    );
    assert_eq!(json(&mg.admin_get("/server_info").1)["state"], "DRAINING");
    assert_eq!(mg.metric("meshgate_server_health_check_failed", &[]), 1.0);
    // Traffic still flows: only the readiness answer changes.
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(s, 200);
    let (s, _, _) = admin(&mg, "POST", "/healthcheck/ok", &[]);
    assert_eq!(s, 200);
    assert_eq!(mg.admin_get("/ready"), (200, "LIVE\n".into()));
    assert_eq!(mg.metric("meshgate_server_health_check_failed", &[]), 0.0);
}

/// With `admin.auth_token`, every endpoint but `/ready` needs the bearer
/// token; refusals are 401 and counted; the token is redacted from
/// `/config_dump`.
#[test]
fn the_bearer_token_guards_the_admin() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&config(
        &backend,
        "  address: \"{ADMIN}\"\n  auth_token: s3cret-token",
    ));
    let (s, h, _) = admin(&mg, "GET", "/server_info", &[]);
    assert_eq!(s, 401);
    assert!(h["www-authenticate"].starts_with("Bearer"), "{h:?}");
    let (s, _, _) = admin(
        &mg,
        "GET",
        "/stats",
        &["-H", "Authorization: Bearer wrong-token!"],
    );
    assert_eq!(s, 401);
    let (s, _, _) = admin(
        &mg,
        "POST",
        "/quitquitquit",
        &["-H", "Authorization: Basic czNjcmV0LXRva2Vu"],
    );
    assert_eq!(s, 401);
    let ok = ["-H", "Authorization: Bearer s3cret-token"];
    let (s, _, body) = admin(&mg, "GET", "/config_dump", &ok);
    assert_eq!(s, 200);
    assert!(!body.contains("s3cret"), "{body}");
    assert_eq!(json(&body)["config"]["admin"]["auth_token"], "[redacted]");
    // Load balancers probe /ready without a token.
    assert_eq!(mg.admin_get("/ready").0, 200);
    let (s, _, body) = admin(&mg, "GET", "/stats/prometheus", &ok);
    assert_eq!(s, 200);
    assert_eq!(
        metric_from(
            &body,
            "meshgate_admin_rq_denied_total",
            &[("reason", "unauthorized")]
        ),
        3.0,
        "{body}"
    );
    // Meshgate is still running: the refused /quitquitquit did nothing.
    let (s, _, _) = admin(&mg, "GET", "/server_info", &ok);
    assert_eq!(s, 200);
}

/// `admin.address: {pipe: {path}}` serves the admin on a Unix socket
/// (mode 0600), here with the token read from `auth_token_file`.
#[test]
fn the_admin_serves_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let token = dir.path().join("token");
    std::fs::write(&token, "file-token\n").unwrap();
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mg = Meshgate::start(&config(
        &backend,
        &format!(
            "  address: {{pipe: {{path: \"{}\"}}}}\n  auth_token_file: \"{}\"",
            sock.display(),
            token.display()
        ),
    ));
    let sock_s = sock.display().to_string();
    let get = |path: &str, extra: &[&str]| {
        let mut args = vec!["--unix-socket", sock_s.as_str()];
        args.extend_from_slice(extra);
        let url = format!("http://admin{path}");
        args.push(&url);
        curl(&args)
    };
    wait_until("the admin socket to answer", || get("/ready", &[]).0 == 200);
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(mg.log_text().contains("admin serving on a Unix socket"));
    let (s, _, _) = get("/server_info", &[]);
    assert_eq!(s, 401);
    let (s, _, body) = get("/server_info", &["-H", "Authorization: Bearer file-token"]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["state"], "LIVE");
    // The file is read at each request: a rotated token applies at once.
    std::fs::write(&token, "rotated").unwrap();
    assert_eq!(
        get("/server_info", &["-H", "Authorization: Bearer file-token"]).0,
        401
    );
    assert_eq!(
        get("/server_info", &["-H", "Authorization: Bearer rotated"]).0,
        200
    );
    // No TCP admin was opened.
    assert!(!mg.log_text().contains("admin listening"));

    // `mode: 600` (decimal, meant as octal) is refused, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "admin:\n  address: {{pipe: {{path: \"{}\", mode: 600}}}}\n",
            dir.path().join("b.sock").display()
        ),
    )
    .unwrap();
    let mut run = std::process::Command::new(bin())
        .arg("run")
        .arg("-c")
        .arg(&bad)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    use std::io::Read;
    run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = run.wait().unwrap();
    assert!(!st.success());
    assert!(err.contains("admin.address.pipe.mode"), "{err}");
}

/// `POST /logging` swaps the log filter at run time: after `level=info`
/// the admin's debug line for a request is gone; after
/// `paths=meshgate_core::admin:debug` it appears again.
#[test]
fn logging_changes_levels_at_run_time() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = start(&backend);
    // The test harness starts meshgate with --log-level debug.
    let (s, _, body) = admin(&mg, "GET", "/logging", &[]);
    assert_eq!(s, 200);
    assert_eq!(body, "active filter: debug\n");
    let (s, _, body) = admin(&mg, "POST", "/logging?level=info", &[]);
    assert_eq!((s, body.as_str()), (200, "active filter: info\n"));
    let (s, _, _) = admin(&mg, "GET", "/server_info?probe=quiet", &[]);
    assert_eq!(s, 200);
    let (s, _, body) = admin(
        &mg,
        "POST",
        "/logging?paths=meshgate_core::admin:debug",
        &[],
    );
    assert_eq!(s, 200);
    assert_eq!(body, "active filter: info,meshgate_core::admin=debug\n");
    let (s, _, _) = admin(&mg, "GET", "/server_info?probe=loud", &[]);
    assert_eq!(s, 200);
    wait_until("the debug line after POST /logging", || {
        mg.log_text().contains("/server_info?probe=loud")
    });
    assert!(!mg.log_text().contains("probe=quiet"), "{}", mg.log_text());
    let (_, _, body) = admin(&mg, "GET", "/logging", &[]);
    assert_eq!(body, "active filter: info,meshgate_core::admin=debug\n");
    // Bad values name the parameter.
    let (s, _, body) = admin(&mg, "POST", "/logging?level=loud", &[]);
    assert_eq!(s, 400);
    assert!(body.starts_with("level: unknown level 'loud'"), "{body}");
    let (s, _, body) = admin(&mg, "POST", "/logging?paths=nolevel", &[]);
    assert_eq!(s, 400);
    assert!(body.starts_with("paths:"), "{body}");
}

/// `POST /drain_listeners`: listeners stop accepting (a new connection is
/// refused) while a request in flight finishes; `?inboundonly` (also
/// with `graceful`) stops no listener here (none is INBOUND).
#[test]
fn drain_listeners_refuses_new_connections_and_finishes_in_flight() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = start(&backend);
    let addr = mg.listener_addr("http");
    let (s, _, _) = admin(&mg, "POST", "/drain_listeners?inboundonly&graceful", &[]);
    assert_eq!(s, 200);
    let (s, _, _) = admin(&mg, "POST", "/drain_listeners?inboundonly", &[]);
    assert_eq!(s, 200);
    assert!(TcpStream::connect(addr).is_ok());

    // The backend holds /slow for 3 s.
    let url = format!("http://{addr}/slow");
    let in_flight = std::thread::spawn(move || curl(&[&url]));
    wait_until("the slow request to reach the backend", || {
        backend.hits() == 1
    });
    let (s, _, _) = admin(&mg, "POST", "/drain_listeners", &[]);
    assert_eq!(s, 200);
    wait_until("the listener to refuse connections", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
    let tls = mg.listener_addr("https");
    assert!(TcpStream::connect_timeout(&tls, Duration::from_millis(500)).is_err());
    let (s, _, body) = in_flight.join().unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("backend=b"), "{body}");
    // The admin stays up, and says so.
    assert_eq!(
        json(&mg.admin_get("/server_info").1)["listeners_drained"],
        true
    );
}

/// `POST /quitquitquit` answers, drains and exits with status 0.
#[test]
fn quitquitquit_exits_cleanly() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mut mg = start(&backend);
    let (s, _, body) = admin(&mg, "POST", "/quitquitquit", &[]);
    assert_eq!((s, body.as_str()), (200, "OK\n"));
    let st = mg
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running:\n{}", mg.log_text()));
    assert_eq!(st.code(), Some(0), "{}", mg.log_text());
    assert!(mg.log_text().contains("admin /quitquitquit"));
}

/// `POST /drain_listeners?graceful`: open connections are told to close
/// (the next HTTP/1.1 response carries `connection: close`), listeners
/// keep accepting for the drain time, then refuse.
#[test]
fn graceful_drain_closes_connections_then_stops_accepting() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start_with_args(
        &config(&backend, "  address: \"{ADMIN}\""),
        &["--drain-time", "1s"],
    );
    let addr = mg.listener_addr("http");
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = std::io::BufReader::new(conn);
    use std::io::Write;
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let first = read_reply(&mut r).unwrap();
    assert_eq!((first.status, first.close), (200, false));
    let (s, _, _) = admin(&mg, "POST", "/drain_listeners?graceful", &[]);
    assert_eq!(s, 200);
    // Still accepting during the drain time.
    assert!(TcpStream::connect(addr).is_ok());
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let second = read_reply(&mut r).unwrap();
    assert_eq!((second.status, second.close), (200, true));
    wait_until("the listener to refuse after the drain time", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
    assert_eq!(mg.admin_get("/ready").0, 200, "the admin stays up");
}
