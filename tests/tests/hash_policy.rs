//! Route `hash_policy` end to end through the real binary: four real
//! HTTP/1.1 backends behind `ring_hash` and `maglev` clusters (each answer
//! names its backend), a header key that sticks, a thousand keys that
//! spread evenly, a query parameter, the client address, curl with a
//! cookie jar for the generated session cookie, and real Dubbo peers
//! (sofa-rpc-node) hashed on the `group` attachment.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

const NAMES: [&str; 4] = ["b0", "b1", "b2", "b3"];

struct Setup {
    _backends: Vec<HttpBackend>,
    _mg: Meshgate,
    addr: SocketAddr,
}

fn setup() -> Setup {
    let backends: Vec<HttpBackend> = NAMES
        .iter()
        .map(|n| HttpBackend::start(n, Proto::Http1))
        .collect();
    let eps = backends
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /ring/header}}
                        route:
                          cluster: ring
                          hash_policy: [{{header: {{header_name: x-user}}}}]
                      - match: {{prefix: /maglev/header}}
                        route:
                          cluster: maglev
                          hash_policy:
                            - query_parameter: {{name: absent}}
                              terminal: true
                            - header: {{header_name: x-user}}
                              terminal: true
                            - connection_properties: {{source_ip: true}}
                      - match: {{prefix: /ring/query}}
                        route:
                          cluster: ring
                          hash_policy: [{{query_parameter: {{name: user}}}}]
                      - match: {{prefix: /ring/ip}}
                        route:
                          cluster: ring
                          hash_policy: [{{connection_properties: {{source_ip: true}}}}]
                      - match: {{prefix: /ring/cookie}}
                        route:
                          cluster: ring
                          hash_policy: [{{cookie: {{name: mg-sticky, ttl: 1h, path: /ring}}}}]
                      - match: {{prefix: /ring/none}}
                        route: {{cluster: ring}}
clusters:
  - name: ring
    lb_policy: ring_hash
    lb_config: {{minimum_ring_size: 65536}}
    endpoints: [{eps}]
  - name: maglev
    lb_policy: maglev
    endpoints: [{eps}]
"#
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    Setup {
        _backends: backends,
        _mg: mg,
        addr,
    }
}

/// Sends GETs on one keep-alive connection; returns the backend that
/// answered each.
fn gets(
    addr: SocketAddr,
    reqs: impl IntoIterator<Item = (String, Vec<(String, String)>)>,
) -> Vec<String> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    for (path, headers) in reqs {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: hash.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        w.write_all(req.as_bytes()).unwrap();
        let reply = read_reply(&mut r).expect("a response");
        assert_eq!(reply.status, 200, "{}", reply.body);
        out.push(backend_of(&reply.body));
    }
    out
}

fn backend_of(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .unwrap_or_else(|| panic!("no backend in {body:?}"))
        .to_string()
}

fn counts(v: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in v {
        *m.entry(b.clone()).or_insert(0) += 1;
    }
    m
}

fn with_user(path: &str, user: &str) -> (String, Vec<(String, String)>) {
    (path.to_string(), vec![("x-user".into(), user.to_string())])
}

#[test]
fn one_key_sticks_to_one_endpoint_and_many_keys_spread_evenly() {
    let s = setup();
    for path in ["/ring/header", "/maglev/header"] {
        // 100 requests with one key: one backend answers all of them.
        let seen = gets(s.addr, (0..100).map(|_| with_user(path, "alice")));
        let c = counts(&seen);
        assert_eq!(c.len(), 1, "{path}: {c:?}");
        // Another key may land elsewhere but sticks as well.
        let seen = gets(s.addr, (0..100).map(|_| with_user(path, "bob")));
        assert_eq!(counts(&seen).len(), 1, "{path}");
        // 1,000 distinct keys: each backend within +-20 % of 250.
        let seen = gets(
            s.addr,
            (0..1000).map(|i| with_user(path, &format!("user-{i}"))),
        );
        let c = counts(&seen);
        assert_eq!(c.len(), 4, "{path}: {c:?}");
        for (b, n) in &c {
            assert!(
                (200..=300).contains(n),
                "{path}: {b} got {n} of 1000: {c:?}"
            );
        }
        // The same keys again: the same backends (a new connection).
        let again = gets(
            s.addr,
            (0..1000).map(|i| with_user(path, &format!("user-{i}"))),
        );
        assert_eq!(seen, again, "{path}");
    }
    // Without a hash policy the hashing cluster picks at random.
    let seen = gets(s.addr, (0..100).map(|_| with_user("/ring/none", "alice")));
    assert!(counts(&seen).len() > 1, "{:?}", counts(&seen));
}

#[test]
fn query_parameter_and_source_ip_stick() {
    let s = setup();
    let seen = gets(
        s.addr,
        (0..50).map(|_| ("/ring/query?a=1&user=carol".to_string(), vec![])),
    );
    assert_eq!(counts(&seen).len(), 1);
    let spread = gets(
        s.addr,
        (0..200).map(|i| (format!("/ring/query?user=u{i}"), vec![])),
    );
    assert!(counts(&spread).len() >= 3, "{:?}", counts(&spread));
    // Every request comes from 127.0.0.1: one backend, over new
    // connections too.
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(gets(
            s.addr,
            (0..10).map(|_| ("/ring/ip".to_string(), vec![])),
        ));
    }
    assert_eq!(counts(&all).len(), 1, "{:?}", counts(&all));
}

fn curl(args: &[&str]) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .args(args)
        .output()
        .expect("curl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn generated_cookie_is_set_then_honoured_by_a_cookie_jar() {
    let s = setup();
    let url = format!("http://{}/ring/cookie", s.addr);
    let dir = tempfile::tempdir().unwrap();
    let mut first_backends = BTreeMap::new();
    for client in 0..12 {
        let jar = dir.path().join(format!("jar{client}"));
        let jar = jar.to_str().unwrap();
        // First visit: no cookie; meshgate generates one and sets it.
        let t = curl(&["-c", jar, &url]);
        let set = t
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: mg-sticky="))
            .unwrap_or_else(|| panic!("no set-cookie in {t}"));
        assert!(
            set.contains("; Max-Age=3600; Path=/ring; HttpOnly"),
            "{set}"
        );
        let first = backend_of(&t);
        assert!(std::fs::read_to_string(jar).unwrap().contains("mg-sticky"));
        // Later visits send the jar's cookie: the same backend every time,
        // and no new cookie.
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 20).collect();
        let mut args = vec!["-b", jar, "-c", jar];
        args.extend(urls);
        let t = curl(&args);
        assert!(!t.to_ascii_lowercase().contains("set-cookie"), "{t}");
        let seen: Vec<String> = t
            .lines()
            .filter_map(|l| l.strip_prefix("backend="))
            .map(str::to_string)
            .collect();
        assert_eq!(seen.len(), 20);
        assert!(seen.iter().all(|b| *b == first), "{first}: {seen:?}");
        *first_backends.entry(first).or_insert(0) += 1;
    }
    // Different clients (cookies) are spread over the backends.
    assert!(first_backends.len() >= 2, "{first_backends:?}");
}

#[test]
fn dubbo_call_hashed_on_an_attachment_sticks() {
    let a = Provider::start("dubbo", "A");
    let b = Provider::start("dubbo", "B");
    let port = free_port();
    let _mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rpc
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route:
                          cluster: providers
                          hash_policy: [{{header: {{header_name: group}}}}]
clusters:
  - name: providers
    protocol: dubbo
    lb_policy: maglev
    endpoints: [{{address: "127.0.0.1:{pa}"}}, {{address: "127.0.0.1:{pb}"}}]
"#,
        pa = a.port,
        pb = b.port,
    ));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let call = |group: &str, n: u32| {
        node_call(
            "dubbo",
            port,
            "com.meshgate.Echo",
            "echo",
            "[\"hi\"]",
            n,
            4,
            3000,
            "1.0",
            group,
        )
    };
    // One group attachment: every call reaches the same provider.
    let r = call("g-sticky", 40);
    assert_eq!(r.ok, 40, "{:?}", r.errors);
    assert_eq!(r.from.len(), 1, "{:?}", r.from);
    // Each group sticks; different groups reach both providers.
    let mut providers = BTreeMap::new();
    for g in 0..12 {
        let r = call(&format!("g{g}"), 6);
        assert_eq!(r.ok, 6, "{:?}", r.errors);
        assert_eq!(r.from.len(), 1, "group g{g}: {:?}", r.from);
        let p = r.from.keys().next().unwrap().clone();
        *providers.entry(p).or_insert(0) += 1;
    }
    assert_eq!(providers.len(), 2, "{providers:?}");
}

#[test]
fn bolt_call_hashed_on_a_header_map_entry_sticks() {
    let a = Provider::start("bolt", "A");
    let b = Provider::start("bolt", "B");
    let port = free_port();
    let _mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rpc
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: bolt
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route:
                          cluster: providers
                          hash_policy:
                            - header: {{header_name: sofa_head_target_service}}
                            - header: {{header_name: version}}
clusters:
  - name: providers
    protocol: bolt
    lb_policy: ring_hash
    endpoints: [{{address: "127.0.0.1:{pa}"}}, {{address: "127.0.0.1:{pb}"}}]
"#,
        pa = a.port,
        pb = b.port,
    ));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    // Each service (and version) in the Bolt header map sticks to one
    // provider over many calls; without a hash they would be spread at
    // random over both.
    for (iface, version) in [
        ("com.meshgate.Echo", "1.0"),
        ("com.meshgate.Echo", "2.0"),
        ("com.meshgate.Other", "1.0"),
    ] {
        let r = node_call(
            "bolt", port, iface, "echo", "[\"hi\"]", 30, 4, 3000, version, "",
        );
        assert_eq!(r.ok, 30, "{iface}:{version}: {:?}", r.errors);
        assert_eq!(r.from.len(), 1, "{iface}:{version}: {:?}", r.from);
    }
}
