//! Dubbo 2 end to end through the real meshgate binary, with real peers:
//! sofa-rpc-node + dubbo-remoting providers and consumer (Node), and the
//! dubbo-ssl-python consumer. Routing by service to two providers, an
//! unchanged HTTP route config (header match, weighted cluster, connect
//! retry, timeout) on Dubbo, many calls multiplexed on one upstream
//! connection, heartbeats, meshgate's own Dubbo error statuses, and hostile
//! input (wrong magic, oversized body, truncated frame, lying Hessian
//! string, heartbeat flood, unsolicited response id).

use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const ECHO: &str = "com.meshgate.Echo";
const OTHER: &str = "com.meshgate.Other";

/// Two providers (A, B), meshgate with:
/// - `main` (`codec: auto`): `service` header Echo + `group: canary` ->
///   weighted a/b; `/Echo/plus` -> cluster `flaky` (a dead endpoint then
///   A, retry on connect-failure); `/Echo/sleep` -> a with a 300ms
///   timeout; Echo -> a; prefix
///   /com.meshgate.Other/ -> b; `com.meshgate.Dead` -> a cluster with no
///   listening endpoint.
/// - `strict` (`codec: dubbo`, small limits) for hostile input.
struct Setup {
    _a: Provider,
    _b: Provider,
    mg: Meshgate,
    main: u16,
    strict: u16,
}

fn setup_with(odd: Option<u16>) -> Setup {
    let a = Provider::start("dubbo", "A");
    let b = Provider::start("dubbo", "B");
    let (main, strict) = (free_port(), free_port());
    let dead = free_port();
    let routes = format!(
        r#"              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match:
                          prefix: /
                          headers:
                            - {{name: service, exact_match: {ECHO}}}
                            - {{name: group, exact_match: canary}}
                        route:
                          weighted_clusters:
                            clusters:
                              - {{name: a, weight: 50}}
                              - {{name: b, weight: 50}}
                      - match: {{path: /{ECHO}/plus}}
                        route:
                          cluster: flaky
                          retry_policy: {{retry_on: connect-failure, num_retries: 2}}
                      - match: {{path: /{ECHO}/sleep}}
                        route: {{cluster: a, timeout: 300ms}}
                      - match:
                          prefix: /
                          headers: [{{name: service, exact_match: {ECHO}}}]
                        route: {{cluster: a}}
                      - match: {{prefix: /{OTHER}/}}
                        route: {{cluster: b}}
                      - match: {{prefix: /com.meshgate.Dead/}}
                        route: {{cluster: dead}}
                      - match: {{prefix: /com.meshgate.Odd/}}
                        route: {{cluster: odd}}
                      - match: {{prefix: /com.meshgate.Full/}}
                        route: {{cluster: full}}
"#
    );
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:{main}
    filter_chains:
      - filters:
          - name: proxy
            config:
{routes}  - name: strict
    address: 127.0.0.1:{strict}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              codec_options:
                dubbo: {{max_body_bytes: 4096, frame_timeout: 500ms}}
{routes}clusters:
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
  - name: b
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pb}"}}]
  - name: flaky
    protocol: dubbo
    lb_policy: round_robin
    connect_timeout: 500ms
    endpoints: [{{address: "127.0.0.1:{dead}"}}, {{address: "127.0.0.1:{pa}"}}]
  - name: dead
    protocol: dubbo
    connect_timeout: 500ms
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
  - name: odd
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{odd}"}}]
  - name: full
    protocol: dubbo
    max_connections: 0
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        odd = odd.unwrap_or(dead),
        pa = a.port,
        pb = b.port,
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{main}").parse().unwrap());
    Setup {
        _a: a,
        _b: b,
        mg,
        main,
        strict,
    }
}

fn setup() -> Setup {
    setup_with(None)
}

fn call(port: u16, iface: &str, method: &str, args: &str, count: u32, conc: u32) -> CallReport {
    node_call(
        "dubbo", port, iface, method, args, count, conc, 3000, "1.0", "",
    )
}

#[test]
fn routes_by_service_to_two_providers() {
    let s = setup();
    let r = call(s.main, ECHO, "echo", r#"["hi"]"#, 5, 1);
    assert_eq!(r.ok, 5, "{:?}", r.errors);
    assert_eq!(r.from.get("A"), Some(&5), "{r:?}");
    assert_eq!(r.results[0]["x"], "hi");
    let r = call(s.main, OTHER, "echo", r#"["yo"]"#, 5, 1);
    assert_eq!(r.ok, 5, "{:?}", r.errors);
    assert_eq!(r.from.get("B"), Some(&5), "{r:?}");
    let r = call(s.main, OTHER, "plus", "[40, 2]", 1, 1);
    assert_eq!(r.results[0], 42);
    // A second, independent consumer: Python dubbo-ssl-python to the Node
    // provider through meshgate.
    let out = python_call(s.main, ECHO, "1.0", "echo", r#"["py"]"#);
    assert!(out.starts_with("OK"), "{out}");
    assert!(
        out.contains("'from': 'A'") && out.contains("'x': 'py'"),
        "{out}"
    );
    let out = python_call(s.main, OTHER, "1.0", "plus", "[1, 2]");
    assert_eq!(out, "OK 3");
    assert!(
        s.mg.metric(
            "meshgate_downstream_rq_xx_total",
            &[("cluster", "b"), ("code_class", "2xx")]
        ) >= 7.0
    );
}

#[test]
fn unchanged_route_config_header_match_weighted_retry_timeout() {
    let s = setup();
    // header match on the `group` attachment -> weighted a/b
    let r = node_call(
        "dubbo", s.main, ECHO, "echo", r#"["w"]"#, 200, 8, 3000, "1.0", "canary",
    );
    assert_eq!(r.ok, 200, "{:?}", r.errors);
    let (a, b) = (
        r.from.get("A").copied().unwrap_or(0),
        r.from.get("B").copied().unwrap_or(0),
    );
    assert!(a > 50 && b > 50, "weighted split a={a} b={b}");
    // connect failure on the first endpoint is retried on the second
    let r = call(s.main, ECHO, "plus", "[1, 2]", 6, 1);
    assert_eq!(r.ok, 6, "{:?}", r.errors);
    assert!(r.results.iter().all(|v| v == 3));
    assert!(
        s.mg.metric(
            "meshgate_cluster_upstream_cx_connect_fail_total",
            &[("cluster", "flaky")]
        ) >= 1.0
    );
    assert!(
        s.mg.metric(
            "meshgate_cluster_upstream_rq_retry_total",
            &[("cluster", "flaky")]
        ) >= 1.0
    );
    // route timeout 300ms: the client gets meshgate's timeout error fast
    let t = Instant::now();
    let r = call(s.main, ECHO, "sleep", "[5000]", 1, 1);
    assert_eq!(r.ok, 0);
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    assert!(
        r.errors[0].contains("meshgate: upstream request timeout"),
        "{:?}",
        r.errors
    );
    // and on the wire it is SERVER_TIMEOUT (31)
    let mut c = send_raw(s.main, &dubbo_frame(0xc2, 0, 9, &sleep_body(2000)));
    let (flag, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((flag & 0x80, status, id), (0, 31, 9));
    assert!(dubbo_error_message(&body).contains("timeout"));
}

fn sleep_body(ms: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for s in ["2.0.2", ECHO, "1.0", "sleep", "I"] {
        hstr(&mut body, s);
    }
    body.push(b'I');
    body.extend((ms as i32).to_be_bytes());
    body.extend(b"HZ");
    body
}

#[test]
fn local_replies_are_dubbo_error_statuses() {
    let s = setup();
    let mut c = send_raw(s.main, &dubbo_request(1, "com.nowhere.Svc", "x", &[]));
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (60, 1), "SERVICE_NOT_FOUND");
    assert_eq!(dubbo_error_message(&body), "meshgate: no route matched");
    // same connection: no healthy endpoint (connect refused) -> SERVICE_ERROR
    c.write_all(&dubbo_request(2, "com.meshgate.Dead", "x", &[]))
        .unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (70, 2));
    assert!(dubbo_error_message(&body).contains("upstream connect failure"));
    // circuit breaker open (max_connections: 0) -> SERVER_THREADPOOL_EXHAUSTED
    c.write_all(&dubbo_request(3, "com.meshgate.Full", "x", &[]))
        .unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (100, 3));
    assert!(dubbo_error_message(&body).contains("circuit breaker open"));
    // the real clients show the message
    let r = call(s.main, "com.nowhere.Svc", "echo", "[1]", 1, 1);
    assert!(
        r.errors[0].contains("meshgate: no route matched"),
        "{:?}",
        r.errors
    );
    let out = python_call(s.main, "com.nowhere.Svc", "1.0", "echo", "[1]");
    assert!(
        out.starts_with("ERR") && out.contains("no route matched"),
        "{out}"
    );
    assert!(
        s.mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "no_route")]
        ) >= 3.0
    );
}

#[test]
fn many_concurrent_calls_share_one_upstream_connection() {
    let s = setup();
    let r = call(s.main, ECHO, "echo", r#"["m"]"#, 4000, 256);
    assert_eq!(r.ok, 4000, "{:?}", r.errors);
    let r = call(s.main, OTHER, "sleep", "[20]", 500, 200);
    assert_eq!(r.ok, 500, "{:?}", r.errors);
    assert_eq!(
        s.mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "a")]),
        1.0
    );
    assert_eq!(
        s.mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "b")]),
        1.0
    );
}

#[test]
fn heartbeats_are_answered_and_a_flood_stays_bounded() {
    let s = setup();
    let mut c = send_raw(s.main, &dubbo_frame(0xe2, 0, 77, b"N"));
    let (flag, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!(
        (flag & 0xa0, status, id, body),
        (0x20, 20, 77, b"N".to_vec())
    );
    // a flood: 20000 heartbeats written while the answers are read
    let mut flood = Vec::new();
    for i in 0..20000u64 {
        flood.extend(dubbo_frame(0xe2, 0, 1000 + i, b"N"));
    }
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&flood));
    let mut n = 0;
    while n < 20000 {
        let (_, status, id, _) = read_dubbo(&mut c).expect("heartbeat answer");
        assert_eq!((status, id), (20, 1000 + n));
        n += 1;
    }
    writer.join().unwrap().unwrap();
    // still serving calls on the same connection
    c.write_all(&dubbo_request(5, ECHO, "echo", &[])).unwrap();
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 5));
    assert!(
        s.mg.metric(
            "meshgate_rpc_downstream_heartbeat_total",
            &[("codec", "dubbo")]
        ) >= 20001.0
    );
}

#[test]
fn hostile_input_gets_errors_closes_and_counts() {
    let s = setup();
    let m = |reason: &str| {
        s.mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("listener", "strict"), ("reason", reason)],
        )
    };
    // wrong magic: clean close
    let mut c = send_raw(s.strict, b"\xca\xfe\x00\x00garbage-garbage-garbage");
    assert!(closed(&mut c));
    assert_eq!(m("bad_magic"), 1.0);
    // body length over the limit: BAD_REQUEST with the id, then close
    let mut big = dubbo_frame(0xc2, 0, 42, b"");
    big[12..16].copy_from_slice(&100_000_000u32.to_be_bytes());
    let mut c = send_raw(s.strict, &big);
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (40, 42));
    assert!(dubbo_error_message(&body).contains("over the limit"));
    assert!(closed(&mut c));
    assert_eq!(m("too_large"), 1.0);
    // truncated frame then EOF
    let req = dubbo_request(3, ECHO, "echo", &[]);
    let mut c = send_raw(s.strict, &req[..req.len() - 5]);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut c));
    // truncated frame, client silent: closed after frame_timeout (500ms)
    let t = Instant::now();
    let mut c = send_raw(s.strict, &req[..20]);
    assert!(closed(&mut c));
    assert!(t.elapsed() < Duration::from_secs(5));
    // a Hessian string that claims more characters than the body holds
    let mut body = Vec::new();
    hstr(&mut body, "2.0.2");
    body.extend(b"S\xff\xffabc"); // service path: 65535 characters claimed
    let mut c = send_raw(s.strict, &dubbo_frame(0xc2, 0, 4, &body));
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (40, 4));
    assert!(
        dubbo_error_message(&body).contains("bad Dubbo request"),
        "{body:?}"
    );
    // ... and a medium string claiming 900 bytes in a 10-byte body
    let mut body = Vec::new();
    hstr(&mut body, "2.0.2");
    body.extend([0x33, 0x84, b'a', b'b']);
    c.write_all(&dubbo_frame(0xc2, 0, 6, &body)).unwrap();
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (40, 6));
    // the connection still serves good calls afterwards
    c.write_all(&dubbo_request(8, ECHO, "echo", &[])).unwrap();
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 8));
    // a response sent by a client is dropped and counted
    c.write_all(&dubbo_frame(0x02, 20, 99, b"\x91")).unwrap();
    c.write_all(&dubbo_request(10, ECHO, "echo", &[])).unwrap();
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 10));
    let unexpected = || {
        s.mg.metric(
            "meshgate_rpc_downstream_unexpected_response_total",
            &[("listener", "strict")],
        )
    };
    // Counted as each connection's task ends, maybe after the client saw
    // the close: wait for every count, then check none is counted twice.
    wait_until("the refusals counted", || {
        m("truncated") >= 1.0
            && m("frame_timeout") >= 1.0
            && m("bad_request") >= 2.0
            && unexpected() >= 1.0
    });
    assert_eq!(m("truncated"), 1.0);
    assert_eq!(m("frame_timeout"), 1.0);
    assert_eq!(m("bad_request"), 2.0);
    assert_eq!(
        s.mg.metric(
            "meshgate_rpc_downstream_unexpected_response_total",
            &[("listener", "strict")]
        ),
        1.0
    );
    // meshgate is alive and well
    let r = call(s.strict, ECHO, "echo", r#"["ok"]"#, 3, 1);
    assert_eq!(r.ok, 3, "{:?}", r.errors);
}

/// A provider that answers each request first with a response for an id
/// nobody asked for, then with the right one.
#[test]
fn unsolicited_upstream_response_is_dropped_and_counted() {
    let odd = TcpListener::bind("127.0.0.1:0").unwrap();
    let odd_port = odd.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in odd.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                while let Some((_, _, id, _)) = read_dubbo(&mut c) {
                    let _ = c.write_all(&dubbo_frame(0x02, 20, id + 1_000_000, b"\x91\x01x"));
                    let _ = c.write_all(&dubbo_frame(0x02, 20, id, b"\x91\x02ok"));
                }
            });
        }
    });
    let s = setup_with(Some(odd_port));
    let mut c = send_raw(s.main, &dubbo_request(21, "com.meshgate.Odd", "echo", &[]));
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id, body), (20, 21, b"\x91\x02ok".to_vec()));
    c.write_all(&dubbo_request(22, "com.meshgate.Odd", "echo", &[]))
        .unwrap();
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 22));
    s.mg.wait_metric(
        "meshgate_rpc_upstream_unknown_response_total",
        &[("cluster", "odd")],
        |v| v >= 2.0,
    );
    assert_eq!(
        s.mg.metric(
            "meshgate_rpc_upstream_unknown_response_total",
            &[("cluster", "odd")]
        ),
        2.0
    );
    let mut buf = [0u8; 1];
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        c.read(&mut buf).is_err(),
        "no stray frame reaches the client"
    );
}

#[test]
fn dubbo_example_validates() {
    let p = workspace().join("examples/dubbo.yaml");
    let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok (1 listeners, 2 clusters)"), "{out}");
}

/// Rewrites the running config (write + rename) and waits for its first
/// successful reload.
fn reload(mg: &Meshgate, text: &str) {
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
    mg.wait_metric("meshgate_config_reload_total", &[("result", "ok")], |v| {
        v >= 1.0
    });
}

/// A reload that moves the Echo service from provider B to A (a route
/// change only): the call in flight on an open connection finishes, the
/// connection stays open and its next call meets the new route.
#[test]
fn reload_moves_the_next_call_on_an_open_rpc_connection_to_the_new_route() {
    let s = setup();
    let mut c = send_raw(s.main, &dubbo_request(1, OTHER, "echo", &[]));
    let (_, status, _, body) = read_dubbo(&mut c).unwrap();
    assert_eq!(status, 20);
    assert!(String::from_utf8_lossy(&body).contains('B'));
    // a slow call in flight across the reload
    c.write_all(&dubbo_frame(0xc2, 0, 2, &{
        let mut b = Vec::new();
        for x in ["2.0.2", OTHER, "1.0", "sleep", "I"] {
            hstr(&mut b, x);
        }
        b.extend([b'I', 0, 0, 0x05, 0xdc]); // 1500 ms
        b.extend(b"HZ");
        b
    }))
    .unwrap();
    let text = std::fs::read_to_string(&s.mg.config).unwrap();
    let moved = text.replace(
        &format!("- match: {{prefix: /{OTHER}/}}\n                        route: {{cluster: b}}"),
        &format!("- match: {{prefix: /{OTHER}/}}\n                        route: {{cluster: a}}"),
    );
    assert_ne!(moved, text);
    reload(&s.mg, &moved);
    // the call in flight completes; the connection is not retired and its
    // next call goes to A
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 2));
    c.write_all(&dubbo_request(3, OTHER, "echo", &[])).unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).expect("the connection was closed");
    assert_eq!((status, id), (20, 3));
    assert!(String::from_utf8_lossy(&body).contains('A'), "{body:?}");
    let r = call(s.main, OTHER, "echo", r#"["n"]"#, 3, 1);
    assert_eq!(r.from.get("A"), Some(&3), "{r:?}");
}

/// A frame trickled in one byte at a time still has to complete within
/// `frame_timeout` (500ms on `strict`).
#[test]
fn trickled_frame_is_cut_off_at_frame_timeout() {
    let s = setup();
    let req = dubbo_request(1, ECHO, "echo", &[]);
    let mut c = send_raw(s.strict, &req[..16]);
    let t = Instant::now();
    let mut cut = false;
    for b in &req[16..] {
        // Time on purpose: the client trickles, the frame_timeout runs.
        std::thread::sleep(Duration::from_millis(100));
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        cut || closed(&mut c),
        "the trickling client was not cut off"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        s.mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("listener", "strict"), ("reason", "frame_timeout")]
        ),
        1.0
    );
}

/// An endpoint change of cluster b (B leaves, A joins) reaches the next
/// call on an open downstream connection, which stays open; the upstream
/// connection to B, idle in its pool, closes.
#[test]
fn endpoint_change_keeps_the_connection_and_drains_the_old_endpoint() {
    let s = setup();
    let (pa, pb) = (s._a.port, s._b.port);
    let mut c = send_raw(s.main, &dubbo_request(1, OTHER, "echo", &[]));
    let (_, status, _, body) = read_dubbo(&mut c).unwrap();
    assert_eq!(status, 20);
    assert!(String::from_utf8_lossy(&body).contains('B'));
    let to_b = format!("127.0.0.1:{pb}").parse().unwrap();
    assert!(established_to(to_b) >= 1, "no upstream connection to B");

    let text = std::fs::read_to_string(&s.mg.config).unwrap();
    let moved = text.replace(
        &format!(
            "  - name: b\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{pb}\"}}]"
        ),
        &format!(
            "  - name: b\n    protocol: dubbo\n    endpoints: [{{address: \"127.0.0.1:{pa}\"}}]"
        ),
    );
    assert_ne!(moved, text);
    reload(&s.mg, &moved);
    for id in 2..5 {
        c.write_all(&dubbo_request(id, OTHER, "echo", &[])).unwrap();
        let (_, status, got, body) = read_dubbo(&mut c).expect("the connection stays open");
        assert_eq!((status, got), (20, id));
        assert!(String::from_utf8_lossy(&body).contains('A'));
    }
    wait_until_within(5, "the connection to B to close", || {
        established_to(to_b) == 0
    });
}
