//! Envoy-style access logs: `access_log` lists on the `proxy` filter
//! (HCM) and on `tcp_proxy`, with file sinks, text / JSON formats, command
//! operators checked value by value in the written lines, access log
//! filters, response flags set by the paths that cause them, log reopening
//! after a logrotate-style rename (SIGUSR1 and `POST /reopen_logs`), and
//! the HCM `access_log` from xDS. Configs are written as JSON (a subset of
//! YAML), so that format strings need no YAML quoting.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// curl: (status, body bytes).
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "-o", body.to_str().unwrap(), "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (code, std::fs::read(&body).unwrap_or_default())
}

/// The lines of `path` once there are at least `n`.
fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_for_within(10, &format!("{n} lines in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        (l.len() >= n).then_some(l)
    })
}

fn file_log(path: &Path, format: Option<Value>, filter: Option<Value>) -> Value {
    let mut typed = json!({"path": path});
    if let Some(f) = format {
        typed["log_format"] = f;
    }
    let mut l = json!({"name": "envoy.access_loggers.file", "typed_config": typed});
    if let Some(f) = filter {
        l["filter"] = f;
    }
    l
}

fn proxy_listener(name: &str, access_log: Value, routes: Value) -> Value {
    json!({
        "name": name,
        "address": "127.0.0.1:0",
        "filter_chains": [{"filters": [{"name": "proxy", "config": {
            "access_log": access_log,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
        }}]}]
    })
}

fn start(config: Value) -> Meshgate {
    let mut c = config;
    c["admin"] = json!({"address": "{ADMIN}"});
    Meshgate::start(&serde_json::to_string_pretty(&c).unwrap())
}

const OPERATORS: &str = "%REQ(:METHOD)%|%REQ(:PATH)%|%REQ(:AUTHORITY)%|%PROTOCOL%|%RESPONSE_CODE%|%RESPONSE_CODE_DETAILS%|%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%BYTES_SENT%|%DURATION%|%REQUEST_DURATION%|%RESPONSE_DURATION%|%RESPONSE_TX_DURATION%|%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%ROUTE_NAME%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%CONNECTION_ID%|%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|%DOWNSTREAM_LOCAL_ADDRESS%|%HOSTNAME%|%START_TIME(%Y)%|%REQ(USER-AGENT)%|%REQ(X-MISSING?X-REQUEST-ID)%|%RESP(X-BACKEND)%|%TRAILER(X-TRAILER)%|%REQUESTED_SERVER_NAME%|%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_PEER_SUBJECT%|%DYNAMIC_METADATA(envoy.filters.http.basic_auth:username)%|%RESPONSE_FLAGS_LONG%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|%REQ(USER-AGENT):4%\n";

/// Every command operator's value, as written in a text line and a typed
/// JSON line, over HTTP/1.1, HTTP/2 and TLS with a client certificate;
/// Envoy's default format when none is given.
#[test]
fn command_operators_are_written_in_text_and_json_lines() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let (text, typed, default) = (
        dir.path().join("text.log"),
        dir.path().join("json.log"),
        dir.path().join("default.log"),
    );
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, "ann:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
    let logs = json!([
        file_log(&text, Some(json!({"text_format": OPERATORS})), None),
        {"name": "envoy.access_loggers.file", "typed_config": {"path": typed, "typed_json_format": {
            "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "received": "%BYTES_RECEIVED%",
            "sent": "%BYTES_SENT%", "duration": "%DURATION%", "user": "%DYNAMIC_METADATA(envoy.filters.http.basic_auth)%",
            "missing": "%REQ(X-NOPE)%", "nested": {"cluster": "%UPSTREAM_CLUSTER%"}, "literal": 7
        }}},
        file_log(&default, None, None),
    ]);
    let certs = workspace().join("examples/certs");
    let c = |f: &str| certs.join(f).display().to_string();
    let routes = json!([
        {"name": "trailers", "match": {"prefix": "/stream"}, "route": {"cluster": "h2"}},
        {"name": "api", "match": {"prefix": "/"}, "route": {"cluster": "backend"}}
    ]);
    let mut web = proxy_listener("web", logs.clone(), routes.clone());
    web["filter_chains"][0]["filters"][0]["config"]["stream_filters"] = json!([{
        "name": "basic_auth",
        "config": {"users": {"filename": htpasswd}, "emit_dynamic_metadata": true}
    }]);
    let mut secure = proxy_listener("secure", logs, routes);
    secure["filter_chains"][0]["tls"] = json!({
        "certificates": [{"certificate_chain": c("server.pem"), "private_key": c("server.key")}],
        "client_validation": {"trusted_ca": c("client-ca.pem"), "required": false}
    });
    // An HTTP/2 upstream: its trailers reach the client (and the log).
    let h2 = HttpBackend::start("h2", Proto::H2c);
    let mg = start(json!({
        "listeners": [web, secure],
        "clusters": [
            {"name": "backend", "endpoints": [{"address": backend.addr.to_string()}]},
            {"name": "h2", "protocol": "http2", "endpoints": [{"address": h2.addr.to_string()}]}
        ]
    }));
    let port = mg.listener_port("web");
    let tls = mg.listener_port("secure");

    // HTTP/1.1 POST with a 5-byte body, basic auth, a request id.
    let (code, body) = curl(&[
        "-u",
        "ann:secret",
        "-A",
        "curl-test",
        "-H",
        "x-request-id: rid-1",
        "--data-binary",
        "hello",
        &format!("http://127.0.0.1:{port}/api/x?q=1"),
    ]);
    assert_eq!(code, 200);
    let l = lines(&text, 1);
    let f: Vec<&str> = l[0].split('|').collect();
    assert_eq!(f.len(), 35, "{}", l[0]);
    assert_eq!(f[0], "POST");
    assert_eq!(f[1], "/api/x?q=1");
    assert_eq!(f[2], format!("127.0.0.1:{port}"));
    assert_eq!(f[3], "HTTP/1.1");
    assert_eq!(f[4], "200");
    assert_eq!(f[5], "via_upstream");
    assert_eq!(f[6], "-", "no response flag");
    assert_eq!(f[7], "5", "body bytes received");
    assert_eq!(f[8], body.len().to_string(), "body bytes sent");
    let ms = |s: &str| {
        s.parse::<u64>()
            .unwrap_or_else(|_| panic!("a duration: {s}"))
    };
    let (total, req, resp, tx) = (ms(f[9]), ms(f[10]), ms(f[11]), ms(f[12]));
    assert!(req <= resp && resp <= total && tx <= total, "{}", l[0]);
    assert_eq!(f[13], backend.addr.to_string());
    assert_eq!(f[14], "backend");
    assert_eq!(f[15], "api");
    assert_eq!(f[16], "1");
    assert!(f[17].parse::<u64>().is_ok(), "connection id {}", f[17]);
    assert!(f[18].starts_with("127.0.0.1:") && f[18] != format!("127.0.0.1:{port}"));
    assert_eq!(f[19], "127.0.0.1");
    assert_eq!(f[20], f[18], "no XFF trusted: direct is the same");
    assert_eq!(f[21], format!("127.0.0.1:{port}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(f[22], host.trim());
    let year = format_year();
    assert_eq!(f[23], year);
    assert_eq!(f[24], "curl-test");
    assert_eq!(f[25], "rid-1", "the alternative header");
    assert_eq!(f[26], "b");
    assert_eq!(f[27], "-", "no trailer on this response");
    assert_eq!(f[28], "-");
    assert_eq!(f[29], "-");
    assert_eq!(f[30], "-");
    assert_eq!(f[31], "ann");
    assert_eq!(f[32], "-");
    assert_eq!(f[33], "-");
    assert_eq!(f[34], "curl", "truncated to 4");

    let j: Value = serde_json::from_str(&lines(&typed, 1)[0]).unwrap();
    assert_eq!(j["code"], 200);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["received"], 5);
    assert_eq!(j["sent"], body.len());
    assert!(j["duration"].is_u64());
    assert_eq!(j["user"]["username"], "ann");
    assert!(j["missing"].is_null());
    assert_eq!(j["nested"]["cluster"], "backend");
    assert_eq!(j["literal"], 7);

    let d = &lines(&default, 1)[0];
    assert!(d.starts_with(&format!("[{year}-")), "{d}");
    assert!(
        d.contains(&format!(
            "] \"POST /api/x?q=1 HTTP/1.1\" 200 - 5 {} ",
            body.len()
        )),
        "{d}"
    );
    assert!(
        d.ends_with(&format!(
            "\"-\" \"curl-test\" \"rid-1\" \"127.0.0.1:{port}\" \"{}\"",
            backend.addr
        )),
        "{d}"
    );

    // HTTP/2 (prior knowledge), a streamed response with trailers.
    let (code, _) = curl(&[
        "--http2-prior-knowledge",
        "-u",
        "ann:secret",
        &format!("http://127.0.0.1:{port}/stream"),
    ]);
    assert_eq!(code, 200);
    let l = lines(&text, 2);
    let f: Vec<&str> = l[1].split('|').collect();
    assert_eq!(f[0], "GET");
    assert_eq!(f[3], "HTTP/2");
    assert_eq!(f[7], "0");
    assert_eq!(f[8], "35", "five 7-byte chunks");
    assert_eq!(f[27], "done", "the response trailer");
    assert!(ms(f[12]) >= 300, "sent over about 400 ms: {}", f[12]);

    // TLS with a client certificate.
    let (code, _) = curl(&[
        "--cacert",
        &c("ca.pem"),
        "--cert",
        &c("client.pem"),
        "--key",
        &c("client.key"),
        "-u",
        "ann:secret",
        &format!("https://localhost:{tls}/tls"),
    ]);
    assert_eq!(code, 200);
    let l = lines(&text, 3);
    let f: Vec<&str> = l[2].split('|').collect();
    assert_eq!(f[28], "localhost");
    assert_eq!(f[29], "TLSv1.3");
    assert!(f[30].contains("CN="), "peer subject {}", f[30]);
}

fn format_year() -> String {
    let out = Command::new("date").args(["-u", "+%Y"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each log writes only the streams its filter matches.
#[test]
fn access_log_filters_choose_the_lines() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let fmt = Some(json!({"text_format": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}));
    let status_ge = |v: u32| json!({"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": v, "runtime_key": "k"}}}});
    let logs = json!([
        file_log(&p("errors"), fmt.clone(), Some(status_ge(400))),
        file_log(
            &p("nr"),
            fmt.clone(),
            Some(json!({"response_flag_filter": {"flags": ["NR"]}}))
        ),
        file_log(
            &p("header"),
            fmt.clone(),
            Some(json!({"header_filter": {"header": {"name": "x-log", "present_match": true}}}))
        ),
        file_log(
            &p("none"),
            fmt.clone(),
            Some(
                json!({"runtime_filter": {"runtime_key": "r", "percent_sampled": {"numerator": 0}}})
            )
        ),
        file_log(
            &p("and"),
            fmt.clone(),
            Some(
                json!({"and_filter": {"filters": [status_ge(500), {"not_health_check_filter": {}}]}})
            )
        ),
        file_log(
            &p("or"),
            fmt.clone(),
            Some(json!({"or_filter": {"filters": [
                {"response_flag_filter": {"flags": ["NR"]}},
                {"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 300}}}}
            ]}}))
        ),
        file_log(
            &p("traced"),
            fmt.clone(),
            Some(json!({"traceable_filter": {}}))
        ),
        file_log(&p("all"), fmt, None),
    ]);
    let mg = start(json!({
        "listeners": [proxy_listener("web", logs, json!([
            {"match": {"prefix": "/api/"}, "route": {"cluster": "backend"}}
        ]))],
        "clusters": [{"name": "backend", "endpoints": [{"address": backend.addr.to_string()}]}]
    }));
    let port = mg.listener_port("web");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(curl(&[&url("/api/ok")]).0, 200);
    assert_eq!(curl(&[&url("/nowhere")]).0, 404);
    assert_eq!(curl(&[&url("/api/status/503")]).0, 503);
    assert_eq!(curl(&["-H", "x-log: 1", &url("/api/marked")]).0, 200);
    assert_eq!(curl(&[&url("/api/stream")]).0, 200);
    assert_eq!(
        curl(&[
            "-H",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            &url("/api/traced")
        ])
        .0,
        200
    );
    // The unfiltered log has all six lines: every other log is complete.
    // (/api/stream takes about 500 ms: the duration filter's line.)
    assert_eq!(lines(&p("all"), 6).len(), 6);
    // Each file has its own writer thread: wait for the lines expected,
    // then check nothing else came.
    let read = |n: &str, count: usize| {
        lines(&p(n), count);
        std::fs::read_to_string(p(n)).unwrap_or_default()
    };
    assert_eq!(
        read("errors", 2),
        "/nowhere 404 NR\n/api/status/503 503 -\n"
    );
    assert_eq!(read("nr", 1), "/nowhere 404 NR\n");
    assert_eq!(read("header", 1), "/api/marked 200 -\n");
    assert_eq!(read("and", 1), "/api/status/503 503 -\n");
    assert_eq!(read("or", 2), "/nowhere 404 NR\n/api/stream 200 -\n");
    assert_eq!(read("traced", 1), "/api/traced 200 -\n");
    // The filter decides before a line is queued: none was.
    assert_eq!(read("none", 0), "");
}

/// The response flags of the paths that cause them: NR, UF, UH, URX, UT,
/// RL, UAEX, DC.
#[test]
fn response_flags_follow_what_happened() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flags.log");
    let fmt = json!({"text_format": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"});
    let logs = json!([file_log(&log, Some(fmt), None)]);
    let mut web = proxy_listener(
        "web",
        logs.clone(),
        json!([
            {"match": {"prefix": "/uf"}, "route": {"cluster": "dead"}},
            {"match": {"prefix": "/uh"}, "route": {"cluster": "empty"}},
            {"match": {"prefix": "/urx/"}, "route": {"cluster": "backend", "prefix_rewrite": "/status/", "retry_policy": {"retry_on": "5xx", "num_retries": 1, "retry_back_off": {"base_interval": "5ms"}}}},
            {"match": {"prefix": "/ut/"}, "route": {"cluster": "backend", "timeout": "100ms"}},
            {"match": {"prefix": "/rl"}, "route": {"cluster": "backend"}, "per_filter_config": {"local_ratelimit": {
                "stat_prefix": "rl", "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
                "filter_enabled": {"default_value": {"numerator": 100}}, "filter_enforced": {"default_value": {"numerator": 100}}
            }}},
            {"match": {"prefix": "/stream"}, "route": {"cluster": "backend"}}
        ]),
    );
    web["filter_chains"][0]["filters"][0]["config"]["stream_filters"] =
        json!([{"name": "local_ratelimit", "config": {"stat_prefix": "web"}}]);
    let mut authz = proxy_listener(
        "authz",
        logs,
        json!([
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
        ]),
    );
    authz["filter_chains"][0]["filters"][0]["config"]["stream_filters"] = json!([{
        "name": "ext_authz",
        "config": {"grpc_service": {"envoy_grpc": {"cluster_name": "dead"}}}
    }]);
    let mg = start(json!({
        "listeners": [web, authz],
        "clusters": [
            {"name": "backend", "endpoints": [{"address": backend.addr.to_string()}]},
            {"name": "dead", "connect_timeout": "1s", "endpoints": [{"address": format!("127.0.0.1:{dead}")}]},
            {"name": "empty", "endpoints": []}
        ]
    }));
    let port = mg.listener_port("web");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let cases: [(&str, u16); 7] = [
        ("/nowhere-at-all", 404),
        ("/uf", 503),
        ("/uh", 503),
        ("/urx/503", 503),
        ("/ut/slow", 504),
        ("/rl", 200),
        ("/rl", 429),
    ];
    for (path, code) in cases {
        assert_eq!(curl(&[&url(path)]).0, code, "{path}");
    }
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{}/x", mg.listener_port("authz"))]).0,
        403
    );
    // The client goes away while the response streams.
    let _ = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "0.25"])
        .arg(url("/stream"))
        .output();
    let l = lines(&log, 9);
    let find = |p: &str| -> Vec<&str> {
        l.iter()
            .filter(|x| x.starts_with(&format!("{p} ")))
            .map(String::as_str)
            .collect()
    };
    assert_eq!(
        find("/nowhere-at-all"),
        ["/nowhere-at-all 404 NR NoRouteFound 0 -"]
    );
    assert_eq!(
        find("/uf"),
        ["/uf 503 UF UpstreamConnectionFailure 1 upstream_connect_failure"]
    );
    assert_eq!(find("/uh"), ["/uh 503 UH NoHealthyUpstream 0 -"]);
    assert_eq!(
        find("/urx/503"),
        ["/urx/503 503 URX UpstreamRetryLimitExceeded 2 -"]
    );
    assert_eq!(
        find("/ut/slow"),
        ["/ut/slow 504 UT UpstreamRequestTimeout 1 -"]
    );
    assert_eq!(
        find("/rl"),
        ["/rl 200 - - 1 -", "/rl 429 RL RateLimited 0 -"]
    );
    assert_eq!(find("/x"), ["/x 403 UAEX UnauthorizedExternalService 0 -"]);
    let dc = find("/stream");
    assert_eq!(dc.len(), 1, "{l:?}");
    assert!(
        dc[0].starts_with("/stream 200 DC DownstreamConnectionTermination 1"),
        "{}",
        dc[0]
    );
}

/// A `tcp_proxy` connection is one line when it closes, with its bytes
/// both ways, its upstream, and UF when no upstream would connect.
#[test]
fn tcp_proxy_logs_each_connection() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let al = json!([{"name": "envoy.access_loggers.file", "typed_config": {"path": log, "log_format": {
        "text_format_source": {"inline_string": "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n"}
    }}}]);
    let tcp = |name: &str, cluster: &str| {
        json!({
            "name": name, "address": "127.0.0.1:0",
            "filter_chains": [{"filters": [{"name": "tcp_proxy", "config": {"cluster": cluster, "max_connect_attempts": 1, "access_log": al}}]}]
        })
    };
    let mg = start(json!({
        "listeners": [tcp("l4", "backend"), tcp("l4dead", "dead")],
        "clusters": [
            {"name": "backend", "endpoints": [{"address": backend.addr.to_string()}]},
            {"name": "dead", "connect_timeout": "1s", "endpoints": [{"address": format!("127.0.0.1:{dead}")}]}
        ]
    }));
    let req = b"GET /tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mg.listener_port("l4"))).unwrap();
    s.write_all(req).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let l = lines(&log, 1);
    assert_eq!(
        l[0],
        format!(
            "backend {} {} {} - tcp 127.0.0.1",
            backend.addr,
            req.len(),
            resp.len()
        )
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mg.listener_port("l4dead"))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let l = lines(&log, 2);
    assert_eq!(l[1], "dead - 0 0 UF tcp 127.0.0.1");
}

/// logrotate: the file is renamed, then SIGUSR1 (or `POST /reopen_logs`)
/// makes meshgate write the next lines to a new file at the path.
#[test]
fn files_reopen_after_a_rename_on_sigusr1_and_reopen_logs() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let fmt = Some(json!({"text_format": "%REQ(:PATH)%\n"}));
    let mg = start(json!({
        "listeners": [proxy_listener("web", json!([file_log(&log, fmt, None)]), json!([
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
        ]))],
        "clusters": [{"name": "backend", "endpoints": [{"address": backend.addr.to_string()}]}]
    }));
    let port = mg.listener_port("web");
    let get = |p: &str| assert_eq!(curl(&[&format!("http://127.0.0.1:{port}{p}")]).0, 200);
    get("/one");
    lines(&log, 1);
    let rotated: PathBuf = dir.path().join("a.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let st = Command::new("kill")
        .args(["-USR1", &mg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    mg.wait_metric("meshgate_server_log_reopen_total", &[], |v| v >= 1.0);
    get("/two");
    assert_eq!(lines(&log, 1), ["/two"]);
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "/one\n");

    let rotated2 = dir.path().join("a.log.2");
    std::fs::rename(&log, &rotated2).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST"])
        .arg(format!("http://{}/reopen_logs", mg.admin.unwrap()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    mg.wait_metric("meshgate_server_log_reopen_total", &[], |v| v >= 2.0);
    get("/three");
    assert_eq!(lines(&log, 1), ["/three"]);
    assert_eq!(std::fs::read_to_string(&rotated2).unwrap(), "/two\n");
}

/// What meshgate cannot do is refused with the field named.
#[test]
fn bad_access_log_configs_are_refused_naming_the_field() {
    let cases = [
        (
            json!([{"name": "envoy.access_loggers.open_telemetry", "typed_config": {}}]),
            "access_log[0].typed_config.grpc_service",
        ),
        (
            json!([{"name": "stdout", "typed_config": {"body": {"string_value": "x"}}}]),
            "access_log[0].typed_config.body",
        ),
        (
            json!([{"name": "envoy.access_loggers.file", "typed_config": {}}]),
            "access_log[0].typed_config.path",
        ),
        (
            json!([{"name": "stdout", "typed_config": {"log_format": {"text_format": "%UPSTREAM_PEER_SUBJECT%"}}}]),
            "access_log[0].typed_config.log_format.text_format",
        ),
        (
            json!([{"name": "stdout", "typed_config": {"format": "%FILTER_STATE(x)%"}}]),
            "access_log[0].typed_config.format",
        ),
        (
            json!([{"name": "stdout", "filter": {"response_flag_filter": {"flags": ["XX"]}}}]),
            "access_log[0].filter.response_flag_filter.flags[0]",
        ),
        (
            json!([{"name": "stdout", "filter": {"grpc_status_filter": {"statuses": ["NOPE"]}}}]),
            "access_log[0].filter.grpc_status_filter.statuses[0]",
        ),
        (
            json!([{"name": "stdout", "typed_config": {"format": "x", "json_format": {"a": "b"}}}]),
            "access_log[0].typed_config",
        ),
    ];
    for (al, want) in cases {
        let cfg = json!({"listeners": [proxy_listener("web", al, json!([]))]});
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, serde_json::to_string(&cfg).unwrap()).unwrap();
        let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{want}: {out}");
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// The HCM's `access_log` from xDS: a FileAccessLog with a text format and
/// a status filter, written by the listener the control plane sent.
#[test]
#[allow(deprecated)]
fn hcm_access_log_from_xds() {
    use envoy_types::pb::envoy::config::accesslog::v3 as al;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("xds.log");
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let fal = file::FileAccessLog {
        path: log.display().to_string(),
        access_log_format: Some(file::file_access_log::AccessLogFormat::LogFormat(
            core3::SubstitutionFormatString {
                format: Some(core3::substitution_format_string::Format::TextFormat(
                    "xds %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%\n".into(),
                )),
                ..Default::default()
            },
        )),
    };
    h.access_log.push(al::AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: Some(al::AccessLogFilter {
            filter_specifier: Some(al::access_log_filter::FilterSpecifier::StatusCodeFilter(
                al::StatusCodeFilter {
                    comparison: Some(al::ComparisonFilter {
                        op: al::comparison_filter::Op::Eq as i32,
                        value: Some(core3::RuntimeUInt32 {
                            default_value: 200,
                            runtime_key: "k".into(),
                        }),
                    }),
                },
            )),
        }),
        config_type: Some(al::access_log::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            &fal,
        ))),
    });
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=b");
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/logged")]).0, 200);
    let got = lines(&log, 2);
    assert!(got.iter().all(|l| l.starts_with("xds /")), "{got:?}");
    assert!(
        got.contains(&"xds /logged 200 svc-a".to_string()),
        "{got:?}"
    );
}

/// Dubbo calls (a sofa-rpc-node consumer and provider) are logged like
/// HTTP streams: the RPC head is the request (`:path` is
/// `/{service}/{method}`, `service` and `method` are headers), the RPC
/// status is the `dubbo-status` response header.
#[test]
fn dubbo_calls_are_logged_with_service_method_and_status() {
    use meshgate_tests::rpc::*;
    let provider = Provider::start("dubbo", "A");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rpc.log");
    let fmt = json!({"text_format": "%PROTOCOL% %REQ(SERVICE)% %REQ(METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESP(DUBBO-STATUS)% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS%\n"});
    let mut l = proxy_listener(
        "rpc",
        json!([file_log(&log, Some(fmt), None)]),
        json!([
            {"match": {"prefix": "/com.meshgate.Echo/"}, "route": {"cluster": "a"}}
        ]),
    );
    l["filter_chains"][0]["filters"][0]["config"]["codec"] = json!("dubbo");
    let mg = start(json!({
        "listeners": [l],
        "clusters": [{"name": "a", "protocol": "dubbo", "endpoints": [{"address": format!("127.0.0.1:{}", provider.port)}]}]
    }));
    let port = mg.listener_port("rpc");
    let r = node_call(
        "dubbo",
        port,
        "com.meshgate.Echo",
        "echo",
        r#"["hi"]"#,
        1,
        1,
        3000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 1, "{:?}", r.errors);
    let r = node_call(
        "dubbo",
        port,
        "com.meshgate.Nope",
        "echo",
        r#"["hi"]"#,
        1,
        1,
        3000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 0);
    let l = lines(&log, 2);
    assert_eq!(
        l[0],
        "dubbo com.meshgate.Echo echo /com.meshgate.Echo/echo 200 20 a -"
    );
    assert!(
        l[1].starts_with("dubbo com.meshgate.Nope echo /com.meshgate.Nope/echo 404 ")
            && l[1].ends_with(" - NR"),
        "{}",
        l[1]
    );
}

/// gRPC calls (grpcio client and server): `%GRPC_STATUS%` from the
/// trailers (or a trailers-only answer), and a `grpc_status_filter` that
/// keeps only the failed calls.
#[test]
fn grpc_status_is_logged_and_filtered() {
    use std::io::BufRead;
    let peer = workspace().join("tests/peers/grpc_e2e_peer.py");
    let mut server = Command::new("python3")
        .arg(&peer)
        .args(["server", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let up: u16 = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (all, failed) = (dir.path().join("all.log"), dir.path().join("failed.log"));
    let fmt = json!({"text_format": "%REQ(:PATH)% %GRPC_STATUS% %GRPC_STATUS_NUMBER% %PROTOCOL% %RESPONSE_CODE%\n"});
    let logs = json!([
        file_log(&all, Some(fmt.clone()), None),
        file_log(
            &failed,
            Some(fmt),
            Some(json!({"grpc_status_filter": {"statuses": ["OK"], "exclude": true}}))
        ),
    ]);
    let mg = start(json!({
        "listeners": [proxy_listener("grpc", logs, json!([
            {"match": {"prefix": "/", "grpc": true}, "route": {"cluster": "up", "timeout": "0s"}}
        ]))],
        "clusters": [{"name": "up", "protocol": "http2", "endpoints": [{"address": format!("127.0.0.1:{up}")}]}]
    }));
    let port = mg.listener_port("grpc");
    for (case, want) in [
        ("unary", "OK unary"),
        ("error", "OK error INVALID_ARGUMENT"),
    ] {
        let out = Command::new("timeout")
            .args(["20", "python3"])
            .arg(&peer)
            .args(["client", &format!("127.0.0.1:{port}"), case])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(want),
            "{case}: {out:?}"
        );
    }
    let l = lines(&all, 2);
    assert!(l[0].ends_with("/Unary OK 0 HTTP/2 200"), "{}", l[0]);
    assert!(
        l[1].ends_with("/Fail InvalidArgument 3 HTTP/2 200"),
        "{}",
        l[1]
    );
    assert_eq!(lines(&failed, 1), [l[1].clone()]);
    let _ = server.kill();
    let _ = server.wait();
}
