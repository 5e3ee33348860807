//! Trace context to Dubbo and Bolt upstreams, against the real
//! sofa-rpc-node providers (tests/peers/rpc_peer.js) and the OTLP receiver
//! of tests/peers/tracing_peer.py. Recording relays stand between the
//! consumer and meshgate and between meshgate and the providers, so the
//! test sees the exact frames each side sent: a traced call reaches the
//! provider with a `traceparent` that continues the incoming trace with
//! meshgate's client span as parent; an untraced call's frame reaches it
//! unchanged (but for the request id); a frame that cannot grow is sent
//! unchanged and counted.

use meshgate_tests::pypeer::{PyPeer as Peer, logged};
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A TCP relay to `target` that records every byte its clients sent.
struct Relay {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(target: u16) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let rec = sent.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 16384];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                        rec.lock().unwrap().extend_from_slice(&b[..n]);
                        if up.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = up.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay { port, sent }
    }

    fn bytes(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }
}

/// The Dubbo request frames (not events) in `b`.
fn dubbo_requests(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
        if b.len() < 16 + len {
            break;
        }
        if b[2] & 0x80 != 0 && b[2] & 0x20 == 0 {
            out.push(b[..16 + len].to_vec());
        }
        b = &b[16 + len..];
    }
    out
}

/// The Bolt request frames (command code 1) in `b`.
fn bolt_requests(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 20 {
        let fixed = if b[1] == 0 { 20 } else { 22 };
        if b.len() < fixed {
            break;
        }
        let n = |at: usize, w: usize| {
            b[at..at + w]
                .iter()
                .fold(0usize, |a, &x| a << 8 | x as usize)
        };
        let total = fixed + n(fixed - 8, 2) + n(fixed - 6, 2) + n(fixed - 4, 4);
        if b.len() < total {
            break;
        }
        if b[1] != 0 && n(2, 2) == 1 {
            out.push(b[..total].to_vec());
        }
        b = &b[total..];
    }
    out
}

/// The Bolt header map of a request frame.
fn bolt_map(f: &[u8]) -> Vec<(String, String)> {
    let class = u16::from_be_bytes([f[14], f[15]]) as usize;
    let len = u16::from_be_bytes([f[16], f[17]]) as usize;
    let mut m = &f[22 + class..22 + class + len];
    let mut out = Vec::new();
    let field = |m: &mut &[u8]| {
        let n = u32::from_be_bytes(m[..4].try_into().unwrap()) as usize;
        let s = String::from_utf8_lossy(&m[4..4 + n]).into_owned();
        *m = &m[4 + n..];
        s
    };
    while !m.is_empty() {
        let k = field(&mut m);
        let v = field(&mut m);
        out.push((k, v));
    }
    out
}

/// The values of every Hessian string following the key `key` in `body`
/// (the attachments map's entries).
fn dubbo_attachment(body: &[u8], key: &str) -> Vec<String> {
    let k = key.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = body[i..].windows(k.len()).position(|w| w == k) {
        let v = &body[i + at + k.len()..];
        let (n, skip) = match v[0] {
            0..=0x1f => (v[0] as usize, 1),
            0x30..=0x33 => (((v[0] - 0x30) as usize) << 8 | v[1] as usize, 2),
            b'S' => ((v[1] as usize) << 8 | v[2] as usize, 3),
            t => panic!("attachment value tag {t:#x}"),
        };
        out.push(String::from_utf8_lossy(&v[skip..skip + n]).into_owned());
        i += at + k.len();
    }
    out
}

/// A compact Hessian string of up to 1023 bytes.
fn hessian(s: &str) -> Vec<u8> {
    let mut v = if s.len() < 32 {
        vec![s.len() as u8]
    } else {
        vec![0x30 | (s.len() >> 8) as u8, s.len() as u8]
    };
    v.extend(s.as_bytes());
    v
}

/// A captured Dubbo request with `traceparent` added to its attachments
/// (the map ends the body).
fn with_dubbo_traceparent(f: &[u8], tp: &str) -> Vec<u8> {
    assert_eq!(f.last(), Some(&b'Z'));
    let mut body = f[16..f.len() - 1].to_vec();
    body.extend(hessian("traceparent"));
    body.extend(hessian(tp));
    body.push(b'Z');
    let id = u64::from_be_bytes(f[4..12].try_into().unwrap());
    dubbo_frame(f[2], 0, id, &body)
}

fn with_bolt_traceparent(f: &[u8], tp: &str) -> Vec<u8> {
    let class = u16::from_be_bytes([f[14], f[15]]) as usize;
    let len = u16::from_be_bytes([f[16], f[17]]) as usize;
    let end = 22 + class + len;
    let mut out = f[..end].to_vec();
    for s in ["traceparent", tp] {
        out.extend((s.len() as u32).to_be_bytes());
        out.extend(s.as_bytes());
    }
    let new_len = (out.len() - 22 - class) as u16;
    out[16..18].copy_from_slice(&new_len.to_be_bytes());
    out.extend(&f[end..]);
    out
}

fn read_bolt_status(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let n = |at: usize, w: usize| {
        h[at..at + w]
            .iter()
            .fold(0usize, |a, &x| a << 8 | x as usize)
    };
    let mut rest = vec![0; n(12, 2) + n(14, 2) + n(16, 4)];
    s.read_exact(&mut rest).unwrap();
    n(10, 2) as u16
}

fn listener(name: &str, cluster: &str, traced: bool) -> String {
    let tracing = if traced {
        r#"              tracing:
                provider:
                  name: envoy.tracers.opentelemetry
                  typed_config:
                    grpc_service: {envoy_grpc: {cluster_name: otlp}, timeout: 2s}
                    service_name: rpc
                spawn_upstream_span: true
"#
    } else {
        ""
    };
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
{tracing}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: {cluster}}}
"#
    )
}

/// The client span (kind 3) of `service` in trace `TRACE` whose parent
/// is a server span continuing the incoming `PARENT`.
fn client_span(log: &std::path::Path, rpc_service: &str) -> Value {
    wait_for_within(10, &format!("client span of {rpc_service}"), || {
        let spans = logged(log);
        let server = spans.iter().find(|s| {
            s["kind"] == 2
                && s["trace_id"] == TRACE
                && s["parent_span_id"] == PARENT
                && s["name"].as_str().is_some_and(|n| n.contains(rpc_service))
        })?;
        spans
            .iter()
            .find(|s| s["kind"] == 3 && s["parent_span_id"] == server["span_id"])
            .cloned()
    })
}

#[test]
fn traced_rpc_calls_carry_the_client_span_context_and_untraced_frames_pass_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let otlp_log = dir.path().join("otlp.log");
    let otlp = Peer::start("tracing_peer.py", &["otlp", otlp_log.to_str().unwrap()]);
    let dubbo = Provider::start("dubbo", "D");
    let bolt = Provider::start("bolt", "B");
    let (dubbo_up, bolt_up) = (Relay::start(dubbo.port), Relay::start(bolt.port));
    let mut yaml = String::from("admin:\n  address: \"{ADMIN}\"\nlisteners:\n");
    for (name, cluster, traced) in [
        ("dubbo_traced", "dubbo", true),
        ("dubbo_plain", "dubbo", false),
        ("dubbo_small", "dubbo_small", true),
        ("bolt_traced", "bolt", true),
        ("bolt_plain", "bolt", false),
    ] {
        yaml.push_str(&listener(name, cluster, traced));
    }
    // The small cluster's frames (requests and responses) are bounded by
    // the captured request's size, measured below: written after capture.
    let clusters = |small: usize| {
        format!(
            r#"clusters:
  - name: otlp
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{otlp}"}}]
  - name: dubbo
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{du}"}}]
  - name: dubbo_small
    protocol: dubbo
    protocol_options: {{max_body_bytes: {small}}}
    endpoints: [{{address: "127.0.0.1:{d}"}}]
  - name: bolt
    protocol: bolt
    endpoints: [{{address: "127.0.0.1:{bu}"}}]
"#,
            otlp = otlp.port,
            du = dubbo_up.port,
            d = dubbo.port,
            bu = bolt_up.port,
        )
    };

    // Untraced: the real consumer's frames reach the providers unchanged
    // but for the request id.
    let tp_in = format!("00-{TRACE}-{PARENT}-01");
    let probe = with_dubbo_traceparent(
        &dubbo_request(
            1,
            "com.meshgate.Echo",
            "echo",
            &[("path", "com.meshgate.Echo")],
        ),
        &tp_in,
    );
    let small = probe.len() - 16;
    let mg = Meshgate::start(&format!("{yaml}{}", clusters(small)));
    let port = |n: &str| mg.listener_port(n);

    let down = Relay::start(port("dubbo_plain"));
    let r = node_call(
        "dubbo",
        down.port,
        "com.meshgate.Echo",
        "echo",
        r#"["plain"]"#,
        1,
        1,
        3000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 1, "{:?}", r.errors);
    let sent = dubbo_requests(&down.bytes()).remove(0);
    let got = dubbo_requests(&dubbo_up.bytes()).remove(0);
    assert_eq!(sent.len(), got.len());
    assert_eq!(
        (&sent[..4], &sent[12..]),
        (&got[..4], &got[12..]),
        "untraced Dubbo frame changed"
    );

    let down = Relay::start(port("bolt_plain"));
    let r = node_call(
        "bolt",
        down.port,
        "com.meshgate.Echo",
        "echo",
        r#"["plain"]"#,
        1,
        1,
        3000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 1, "{:?}", r.errors);
    let bolt_sent = bolt_requests(&down.bytes()).remove(0);
    let got = bolt_requests(&bolt_up.bytes()).remove(0);
    assert_eq!(bolt_sent.len(), got.len());
    assert_eq!(
        (&bolt_sent[..5], &bolt_sent[9..]),
        (&got[..5], &got[9..]),
        "untraced Bolt frame changed"
    );

    // Traced Dubbo: the consumer's frame with an incoming context.
    let mut c = send_raw(port("dubbo_traced"), &with_dubbo_traceparent(&sent, &tp_in));
    let (_, status, _, body) = read_dubbo(&mut c).expect("a Dubbo response");
    assert_eq!(status, 20, "{}", String::from_utf8_lossy(&body));
    let up = dubbo_requests(&dubbo_up.bytes()).pop().unwrap();
    let tps = dubbo_attachment(&up[16..], "traceparent");
    assert_eq!(tps.len(), 1, "one traceparent upstream: {tps:?}");
    let span = client_span(&otlp_log, "com.meshgate.Echo");
    let span_id = span["span_id"].as_str().unwrap();
    assert_ne!(span_id, PARENT);
    assert_eq!(tps[0], format!("00-{TRACE}-{span_id}-01"));
    assert_eq!(
        u32::from_be_bytes(up[12..16].try_into().unwrap()) as usize,
        up.len() - 16
    );

    // Traced Bolt: the context goes into the header map.
    let before = bolt_requests(&bolt_up.bytes()).len();
    let mut c = send_raw(
        port("bolt_traced"),
        &with_bolt_traceparent(&bolt_sent, &tp_in),
    );
    assert_eq!(read_bolt_status(&mut c), 0);
    let reqs = bolt_requests(&bolt_up.bytes());
    assert_eq!(reqs.len(), before + 1);
    let map = bolt_map(reqs.last().unwrap());
    let tps: Vec<_> = map.iter().filter(|(k, _)| k == "traceparent").collect();
    assert_eq!(tps.len(), 1, "{map:?}");
    let (trace, parent) = (&tps[0].1[3..35], &tps[0].1[36..52]);
    assert_eq!((trace, &tps[0].1[52..]), (TRACE, "-01"), "{}", tps[0].1);
    // The parent is meshgate's client span, child of the server span that
    // continues the incoming context.
    wait_for_within(10, "the Bolt client span", || {
        let spans = logged(&otlp_log);
        let client = spans
            .iter()
            .find(|s| s["kind"] == 3 && s["trace_id"] == TRACE && s["span_id"] == parent)?;
        spans
            .iter()
            .find(|s| {
                s["kind"] == 2
                    && s["span_id"] == client["parent_span_id"]
                    && s["parent_span_id"] == PARENT
            })
            .cloned()
    });
    assert!(
        map.iter()
            .any(|(k, v)| k == "service" && v == "com.meshgate.Echo:1.0"),
        "{map:?}"
    );

    // A Dubbo frame that the context would push over the cluster's
    // max_body_bytes goes unchanged, and is counted.
    let mut c = send_raw(port("dubbo_small"), &probe);
    let (_, status, _, body) = read_dubbo(&mut c).expect("a Dubbo response");
    assert_eq!(status, 20, "{}", String::from_utf8_lossy(&body));
    mg.wait_metric(
        "meshgate_rpc_upstream_trace_context_skipped_total",
        &[("codec", "dubbo"), ("reason", "too_large")],
        |v| v == 1.0,
    );
    drop(otlp);
}
