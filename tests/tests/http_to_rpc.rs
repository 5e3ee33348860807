//! `route.http_to_rpc` end to end: HTTP/JSON requests (curl and Python's
//! http.client) become Dubbo 2 and Bolt calls to real providers
//! (sofa-rpc-node with dubbo-remoting / sofa-bolt-node,
//! tests/peers/rpc_peer.js) through the real meshgate binary. Strings,
//! numbers, maps, POJOs, a date, provider exceptions, Dubbo's generic
//! `$invoke`, a timeout (504), no provider (503), hostile input (400 and
//! a counter) and, with a raw recording Dubbo provider, the exact
//! attachments and parameter types that reach the provider.

use meshgate_tests::curl::curl;
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpListener;
use std::process::Command;

const ECHO: &str = "com.meshgate.Echo";

/// The routes of one listener, every one to `cluster` in `proto`.
fn routes(proto: &str, cluster: &str) -> String {
    let version = "version: \"1.0\"";
    let route = |path: &str, extra: &str, gw: &str| {
        format!(
            "                      - match: {{{path}}}\n                        route:\n                          cluster: {cluster}\n{extra}                          http_to_rpc: {{protocol: {proto}, service: {ECHO}, {version}, {gw}}}\n"
        )
    };
    let mut r = String::new();
    r += &route(
        "safe_regex: '/users/[^/]+'",
        "",
        "method: getUser, path_template: '/users/{id}', params: [{type: long, path_param: id}]",
    );
    r += &route(
        "path: /echo",
        "",
        "method: echo, params: [{type: java.util.Map, body: true}]",
    );
    r += &route(
        "path: /plus",
        "",
        "method: plus, params: [{type: int, query_param: a}, {type: int, header: x-b}]",
    );
    r += &route(
        "path: /describe",
        "",
        "method: describe, params: [{type: java.lang.String, body_field: name}, {type: long, body_field: n}, {type: double, query_param: d}, {type: boolean, header: x-flag}, {type: java.util.List, body_field: tags}, {type: com.meshgate.User, body_field: user}]",
    );
    r += &route(
        "path: /fail",
        "",
        "method: fail, params: [{type: java.lang.String, query_param: msg}]",
    );
    r += &route(
        "safe_regex: '/missing/[^/]+'",
        "",
        "method: missing, path_template: '/missing/{id}', params: [{type: long, path_param: id}]",
    );
    r += &route(
        "path: /sleep",
        "                          timeout: 300ms\n",
        "method: sleep, params: [{type: int, query_param: ms}]",
    );
    r
}

fn listener(name: &str, port: u16, body: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
{body}"#
    )
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn get(port: u16, path: &str, args: &[&str]) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut a: Vec<&str> = args.to_vec();
    a.push(&url);
    let (status, headers, body) = curl(&a);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{path}: {status} {body}"
    );
    (status, json_of(&body))
}

fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    get(
        port,
        path,
        &[
            "-H",
            "content-type: application/json",
            "-H",
            "x-flag: true",
            "--data-binary",
            body,
        ],
    )
}

fn rejected(mg: &Meshgate, proto: &str, reason: &str) -> f64 {
    mg.metric(
        "meshgate_http_to_rpc_rejected_total",
        &[("protocol", proto), ("reason", reason)],
    )
}

/// A Dubbo provider behind `route.http_to_rpc`: typed calls with every
/// parameter source, POJO and map results, the exception cases, generic
/// invocation, timeout and no provider, curl and Python as the callers.
#[test]
fn dubbo_rest_api() {
    let p = Provider::start("dubbo", "A");
    let (port, dead) = (free_port(), free_port());
    let mut body = routes("dubbo", "a");
    body += &format!(
        "                      - match: {{path: /generic/plus}}\n                        route:\n                          cluster: a\n                          http_to_rpc: {{service: {ECHO}, version: \"1.0\", method: plus, generic: true, params: [{{type: int, body_field: a}}, {{type: int, body_field: b}}]}}\n"
    );
    body += &format!(
        "                      - match: {{path: /dead}}\n                        route:\n                          cluster: dead\n                          http_to_rpc: {{service: {ECHO}, method: plus, params: []}}\n"
    );
    let yaml = format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}clusters:\n  - name: a\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]\n  - name: dead\n    protocol: dubbo\n    connect_timeout: 300ms\n    endpoints: [{{address: \"127.0.0.1:{dead}\"}}]\n",
        listener("api", port, &body),
        p.port
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    // A POJO with its class, a long, a list, a date, null, a double.
    let (s, v) = get(port, "/users/7", &[]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"$class": "com.meshgate.User", "id": 7, "name": "user7", "tags": ["a", "b"],
               "born": "1970-01-02T00:00:00.000Z", "boss": null, "score": 1.5, "active": true})
    );
    // A map in, a map out (the provider echoes what it decoded).
    let (s, v) = post(
        port,
        "/echo",
        r#"{"k": "v", "n": [1, 2.5, null, {"d": true}]}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"from": "A", "x": {"k": "v", "n": [1, 2.5, null, {"d": true}]}})
    );
    // Numbers from the query and a header.
    let (s, v) = get(port, "/plus?a=40", &["-H", "x-b: 2"]);
    assert_eq!((s, v), (200, json!(42)));
    // Every source and type at once, as the provider decoded them.
    let (s, v) = post(
        port,
        "/describe?d=0.25",
        r#"{"name": "ann", "n": 9007199254740993, "tags": ["x", 1], "user": {"name": "bo", "age": 3}}"#,
    );
    assert_eq!(s, 200, "{v}");
    let args = &v["args"];
    assert_eq!(args[0], json!("ann"));
    assert_eq!(args[2], json!(0.25));
    assert_eq!(args[3], json!(true));
    assert_eq!(args[4], json!(["x", 1]));
    assert_eq!(args[5], json!({"name": "bo", "age": 3}));
    // 2^53 + 1 travels as an exact Hessian long (hessian.js hands a long
    // past JS's safe integers over as its decimal string).
    assert_eq!(args[1], json!("9007199254740993"));

    // Python's http.client as the caller.
    let script = format!(
        r#"
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
c.request("POST", "/echo", body=json.dumps({{"who": "python"}}), headers={{"content-type": "application/json"}})
r = c.getresponse()
print(r.status, r.read().decode())
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let (st, b) = out.trim().split_once(' ').unwrap_or(("", ""));
    assert_eq!(st, "200", "{out}");
    assert_eq!(json_of(b), json!({"from": "A", "x": {"who": "python"}}));

    // Generic invocation: $invoke(method, types, args).
    let (s, v) = post(port, "/generic/plus", r#"{"a": 1, "b": 2}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"generic": true, "types": ["int", "int"], "result": 3})
    );

    // Provider failures.
    let (s, v) = get(port, "/fail?msg=boom", &[]);
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"], json!("provider_error"));
    assert!(
        v["message"].as_str().unwrap().contains("failed: boom"),
        "{v}"
    );
    let (s, v) = get(port, "/missing/5", &[]);
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["class"], json!("com.meshgate.UserNotFoundException"));
    assert_eq!(v["message"], json!("no user 5"));
    let (s, v) = get(port, "/sleep?ms=2000", &[]);
    assert_eq!((s, &v["error"]), (504, &json!("timeout")), "{v}");
    let (s, v) = get(port, "/dead", &[]);
    assert_eq!((s, &v["error"]), (503, &json!("no_provider")), "{v}");

    // Hostile and wrong input: 400 naming the parameter, counted.
    let (s, v) = get(port, "/users/abc", &[]);
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("'id'"), "{v}");
    let (s, v) = post(port, "/echo", "{\"k\": ");
    assert_eq!((s, &v["error"]), (400, &json!("bad_json")), "{v}");
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let (s, _) = post(port, "/describe", &format!("{{\"tags\": {deep}}}"));
    assert_eq!(s, 400);
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let (s, v) = post(
        port,
        "/describe?d=1",
        &format!(r#"{{"name": "a", "n": 1, "tags": {deep}, "user": {{}}}}"#),
    );
    assert_eq!((s, &v["error"]), (400, &json!("too_deep")), "{v}");
    let (s, v) = post(port, "/describe?d=1", r#"{"name": "a", "n": 1e400}"#);
    assert_eq!(s, 400, "{v}");
    let (s, v) = post(
        port,
        "/describe?d=1",
        r#"{"name": 5, "n": 1, "tags": [], "user": {}}"#,
    );
    assert_eq!(s, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("'name': expected a string"),
        "{v}"
    );
    let (s, v) = post(
        port,
        "/describe?d=1",
        r#"{"name": "a", "n": 18446744073709551615, "tags": [], "user": {}}"#,
    );
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("'n'"), "{v}");
    let (s, v) = get(port, "/plus?a=1", &[]);
    assert_eq!((s, &v["error"]), (400, &json!("missing_param")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("'x-b'"), "{v}");
    assert_eq!(rejected(&mg, "dubbo", "bad_param"), 3.0);
    assert_eq!(rejected(&mg, "dubbo", "bad_json"), 3.0);
    assert_eq!(rejected(&mg, "dubbo", "too_deep"), 1.0);
    assert_eq!(rejected(&mg, "dubbo", "missing_param"), 1.0);
    assert!(
        mg.metric(
            "meshgate_http_to_rpc_responses_total",
            &[("protocol", "dubbo"), ("code", "200")]
        ) >= 6.0
    );
    // The calls went through the cluster's RPC upstream pool: one
    // multiplexed connection carried them all.
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "a")]),
        1.0
    );
}

/// A Bolt provider behind the same routes.
#[test]
fn bolt_rest_api() {
    let p = Provider::start("bolt", "B");
    let port = free_port();
    let yaml = format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}clusters:\n  - name: b\n    protocol: bolt\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]\n",
        listener("api", port, &routes("bolt", "b")),
        p.port
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let (s, v) = get(port, "/users/8", &[]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"$class": "com.meshgate.User", "id": 8, "name": "user8", "tags": ["a", "b"],
               "born": "1970-01-02T00:00:00.000Z", "boss": null, "score": 1.5, "active": true})
    );
    let (s, v) = post(
        port,
        "/echo",
        r#"{"k": "v", "n": [1, 2.5, null, {"d": true}]}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"from": "B", "x": {"k": "v", "n": [1, 2.5, null, {"d": true}]}})
    );
    let (s, v) = get(port, "/plus?a=40", &["-H", "x-b: 2"]);
    assert_eq!((s, v), (200, json!(42)));
    let (s, v) = post(
        port,
        "/describe?d=0.25",
        r#"{"name": "ann", "n": 12, "tags": ["x", 1], "user": {"name": "bo", "age": 3}}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["args"],
        json!(["ann", 12, 0.25, true, ["x", 1], {"name": "bo", "age": 3}])
    );
    let (s, v) = get(port, "/fail?msg=boom", &[]);
    assert_eq!(s, 500, "{v}");
    assert_eq!(
        v["class"],
        json!("com.alipay.remoting.rpc.exception.RpcServerException")
    );
    assert!(
        v["message"].as_str().unwrap().contains("failed: boom"),
        "{v}"
    );
    let (s, v) = get(port, "/missing/5", &[]);
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["class"], json!("com.meshgate.UserNotFoundException"));
    assert_eq!(v["message"], json!("no user 5"));
    let (s, v) = get(port, "/sleep?ms=2000", &[]);
    assert_eq!((s, &v["error"]), (504, &json!("timeout")), "{v}");
    let (s, v) = post(
        port,
        "/describe?d=x",
        r#"{"name": "a", "n": 1, "tags": [], "user": {}}"#,
    );
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("'d'"), "{v}");
    assert_eq!(rejected(&mg, "bolt", "bad_param"), 1.0);
}

/// A raw recording Dubbo provider: the exact call that reaches it
/// (service, version, group, method, parameter types, arguments and the
/// attachments taken from headers), and its answer's null result.
#[test]
fn dubbo_call_bytes_reach_the_provider() {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let raw_port = raw.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = raw.accept().unwrap();
        while let Some((_flag, _status, id, body)) = read_dubbo(&mut s) {
            let _ = tx.send(body);
            // status OK, result flag 2: null
            let _ = s.write_all(&dubbo_frame(0x02, 20, id, &[0x92]));
        }
    });
    let port = free_port();
    let body = "                      - match: {prefix: /orders/}\n                        route:\n                          cluster: raw\n                          http_to_rpc: {service: com.shop.Orders, version: \"2.1\", group: eu, method: put, path_template: '/orders/{id}', attachments_from_headers: [x-tenant, x-missing], params: [{type: java.lang.String, path_param: id}, {type: java.lang.Integer, query_param: qty, optional: true}]}\n";
    let yaml = format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}clusters:\n  - name: raw\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{raw_port}\"}}]\n",
        listener("api", port, body)
    );
    let _mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let (s, v) = get(port, "/orders/a%2Fb", &["-H", "x-tenant: acme"]);
    assert_eq!((s, v), (200, Value::Null));
    let got = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    let mut want = Vec::new();
    for s in ["2.0.2", "com.shop.Orders", "2.1", "put"] {
        hstr(&mut want, s);
    }
    // "Ljava/lang/String;Ljava/lang/Integer;" is 37 characters: 0x30 form
    want.extend([0x30, 37]);
    want.extend(b"Ljava/lang/String;Ljava/lang/Integer;");
    hstr(&mut want, "a/b");
    want.push(b'N');
    want.push(b'H');
    for (k, v) in [
        ("path", "com.shop.Orders"),
        ("interface", "com.shop.Orders"),
        ("version", "2.1"),
        ("group", "eu"),
        ("timeout", "15000"),
        ("x-tenant", "acme"),
    ] {
        hstr(&mut want, k);
        hstr(&mut want, v);
    }
    want.push(b'Z');
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&got));
}

/// examples/http-to-dubbo.yaml, validated and run as shipped (its ports
/// moved to free ones) against a real provider of its service.
#[test]
fn the_http_to_dubbo_example_runs_as_shipped() {
    let path = workspace().join("examples/http-to-dubbo.yaml");
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let p = Provider::start("dubbo", "A");
    let port = free_port();
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("address: 127.0.0.1:9901", "address: \"{ADMIN}\"")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:20881", &format!("127.0.0.1:{}", p.port));
    let _mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let user = |id: u64, name: &str, tags: Value| json!({"$class": "com.example.User", "id": id, "name": name, "tags": tags});
    assert_eq!(
        get(port, "/users/7", &[]),
        (200, user(7, "user7", json!([])))
    );
    assert_eq!(
        get(port, "/users?name=ann&limit=2", &[]),
        (
            200,
            json!([user(1, "ann1", json!([])), user(2, "ann2", json!([]))])
        )
    );
    assert_eq!(
        post(port, "/users", r#"{"name": "ann", "tags": ["admin"]}"#),
        (200, user(100, "ann", json!(["admin"])))
    );
    let (s, v) = get(port, "/users?name=ann&limit=many", &[]);
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("'limit'"), "{v}");
}

/// The router's `upstream_log` gets one entry per call a request became:
/// the call as it went upstream (`POST /service/method`), the provider
/// that answered, the try's code and flags (a provider timeout: `UT`).
#[test]
fn upstream_log_has_an_entry_per_call() {
    let p = Provider::start("dubbo", "A");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.log");
    let body = routes("dubbo", "a");
    let listeners = listener("api", port, &body).replace(
        "            config:\n              route_config:",
        &format!(
            "            config:\n              stream_filters:\n                - name: envoy.filters.http.router\n                  config:\n                    upstream_log:\n                      - name: envoy.access_loggers.file\n                        typed_config: {{path: \"{}\", log_format: {{text_format: \"%REQ(:METHOD)% %REQ(:PATH)%|%UPSTREAM_HOST%|%RESPONSE_CODE%|%RESPONSE_FLAGS%\\n\"}}}}\n              route_config:",
            up.display()
        ),
    );
    let yaml = format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{listeners}clusters:\n  - name: a\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{}\"}}]\n",
        p.port
    );
    let _mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let (s, v) = get(port, "/plus?a=40", &["-H", "x-b: 2"]);
    assert_eq!((s, v), (200, json!(42)));
    let (s, v) = get(port, "/sleep?ms=2000", &[]);
    assert_eq!(s, 504, "{v}");
    let mut got = Vec::new();
    wait_until_within(10, "two upstream_log entries", || {
        got = std::fs::read_to_string(&up)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        got.len() >= 2
    });
    let host = format!("127.0.0.1:{}", p.port);
    assert_eq!(
        got,
        [
            format!("POST /{ECHO}/plus|{host}|200|-"),
            format!("POST /{ECHO}/sleep|{host}|504|UT"),
        ],
        "{got:?}"
    );
}
