//! Edge cases of the HTTP/3 and Dubbo codecs, end to end through the real
//! binary: a Dubbo string argument or attachment longer than 1 MiB (well
//! under `max_body_bytes`) passes to the real sofa-rpc-node provider; an
//! HTTP/3 GET from aioquic reaches a raw recording HTTP/1.1 upstream with
//! no body framing, and the upstream connection is reused cleanly; an
//! HTTP/3 upstream (Caddy) restarted on the same port is used again at
//! once.

use meshgate_tests::caddy::Caddy;
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

// ---------------------------------------------------------------- Dubbo

/// Appends one Hessian 2 string of `n` ASCII characters `c`, in `R`
/// chunks of 0x7fff and a final `S` (how Java writes long strings).
fn long_hessian_string(out: &mut Vec<u8>, n: usize, c: u8) {
    let mut left = n;
    while left > 0x7fff {
        out.extend(b"R\x7f\xff");
        out.extend(std::iter::repeat_n(c, 0x7fff));
        left -= 0x7fff;
    }
    out.push(b'S');
    out.extend((left as u16).to_be_bytes());
    out.extend(std::iter::repeat_n(c, left));
}

/// `com.meshgate.Echo.echo(String)` (version 1.0) with `arg` characters
/// of argument and one attachment `big` of `attachment` characters.
fn echo_frame(id: u64, arg: usize, attachment: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [
        "2.0.2",
        "com.meshgate.Echo",
        "1.0",
        "echo",
        "Ljava/lang/String;",
    ] {
        hstr(&mut body, s);
    }
    long_hessian_string(&mut body, arg, b'x');
    body.push(b'H');
    hstr(&mut body, "big");
    long_hessian_string(&mut body, attachment, b'y');
    body.push(b'Z');
    dubbo_frame(0xc2, 0, id, &body)
}

#[test]
fn dubbo_strings_over_a_mebibyte_pass_when_the_body_is_within_the_limit() {
    let provider = Provider::start("dubbo", "A");
    let port = free_port();
    let mg = Meshgate::start(&format!(
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
              codec_options:
                dubbo: {{max_body_bytes: 8388608}}
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: a, timeout: 20s}}
clusters:
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        pa = provider.port,
    ));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    let big = 1_048_576 + 50_000;
    for (id, arg, att) in [(1u64, big, 10), (2, 10, big), (3, big, big)] {
        let frame = echo_frame(id, arg, att);
        assert!(frame.len() < 8 << 20);
        // The provider takes it directly...
        let mut d = send_raw(provider.port, &frame);
        let (_, status, rid, body) = read_dubbo(&mut d).expect("provider answer");
        assert_eq!((status, rid), (20, id), "{}", dubbo_error_message(&body));
        // ...and through meshgate too: answered by the provider (its echo
        // carries the argument back), not refused with BAD_REQUEST.
        let mut c = send_raw(port, &frame);
        let (_, status, rid, body) = read_dubbo(&mut c).expect("answer through meshgate");
        assert_eq!(
            (status, rid),
            (20, id),
            "{}",
            dubbo_error_message(&body[..body.len().min(300)])
        );
        assert!(
            body.len() > arg,
            "echo of {arg} characters: {} bytes",
            body.len()
        );
    }
    assert_eq!(
        mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("listener", "rpc"), ("reason", "bad_request")]
        ),
        0.0
    );
    // The body limit still holds: a frame over it is refused and counted.
    let frame = echo_frame(9, 9 << 20, 1);
    let mut c = send_raw(port, &frame[..64 << 10]);
    let (_, status, rid, _) = read_dubbo(&mut c).expect("refusal");
    assert_eq!((status, rid), (40, 9));
    assert!(
        mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("listener", "rpc"), ("reason", "too_large")]
        ) >= 1.0
    );
}

// ------------------------------------------------------------- HTTP/3

/// GETs `path` over HTTP/3 with aioquic; returns the response (head and
/// body).
fn aioquic_get(port: u16, path: &str) -> String {
    let mut r = meshgate_tests::aioquic::get(port, &[path], None);
    r.remove(0).1
}

/// A raw HTTP/1.1 upstream that records every byte it receives, per
/// connection, and answers each request head (reading a Content-Length
/// body only, as simple keep-alive servers do) with `ok`.
struct Recorder {
    addr: SocketAddr,
    /// Per connection: the request heads (or stray bytes) seen, in order.
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Recorder {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = s2.clone();
                let idx = {
                    let mut v = seen.lock().unwrap();
                    v.push(Vec::new());
                    v.len() - 1
                };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One head at a time, exactly as received.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let text = String::from_utf8_lossy(&head).into_owned();
                            let len = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            seen.lock().unwrap()[idx].push(text);
                            while buf.len() < len {
                                match conn.read(&mut chunk) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            buf.drain(..len);
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nok\n",
                            );
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => {
                                if !buf.is_empty() {
                                    let stray = String::from_utf8_lossy(&buf).into_owned();
                                    seen.lock().unwrap()[idx].push(stray);
                                }
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Recorder { addr, seen }
    }
}

fn h3_listener_config(port: u16, cluster: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
clusters:
{cluster}"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    )
}

#[test]
fn http3_get_without_body_reaches_http1_upstream_without_framing() {
    let rec = Recorder::start();
    let port = free_port();
    let _mg = Meshgate::start(&h3_listener_config(
        port,
        &format!(
            "  - name: up\n    endpoints: [{{address: \"{}\"}}]\n",
            rec.addr
        ),
    ));
    // Two GETs one after the other (two QUIC connections): the second
    // reuses meshgate's keep-alive connection to the upstream.
    for name in ["first", "second"] {
        let t = aioquic_get(port, &format!("/get/{name}"));
        assert!(t.contains("ok"), "{t}");
    }
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one upstream connection, reused: {seen:?}");
    let conn = &seen[0];
    assert_eq!(
        conn.len(),
        2,
        "exactly two request heads, nothing else: {conn:?}"
    );
    for (head, name) in conn.iter().zip(["first", "second"]) {
        assert!(
            head.starts_with(&format!("GET /get/{name} HTTP/1.1\r\n")),
            "{head}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("transfer-encoding"), "{head}");
        assert!(!lower.contains("content-length"), "{head}");
    }
}

fn curl_get(url: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn http3_upstream_restarted_on_the_same_port_is_used_again_at_once() {
    let caddy_port = free_port();
    let caddy = Caddy::tagged(caddy_port, "first");
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: plain
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
                      - match: {{prefix: /full}}
                        route: {{cluster: full}}
                      - match: {{prefix: /}}
                        route: {{cluster: caddy, host_rewrite_literal: "localhost:{caddy_port}"}}
clusters:
  - name: caddy
    protocol: http3
    connect_timeout: 500ms
    tls: {{trusted_ca: "{ca}", sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{caddy_port}"}}]
  - name: full
    protocol: http3
    max_connections: 0
    tls: {{trusted_ca: "{ca}", sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{caddy_port}"}}]
"#,
        ca = certs("ca.pem")
    ));
    let url = format!("http://127.0.0.1:{port}/x");
    let (code, body) = curl_get(&url);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("first proto=HTTP/3.0"), "{body}");
    let cx = |mg: &Meshgate| {
        mg.metric(
            "meshgate_cluster_upstream_cx_total",
            &[("cluster", "caddy")],
        )
    };
    assert_eq!(cx(&mg), 1.0);
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_cx_active",
            &[("cluster", "caddy")]
        ),
        1.0
    );

    // Restart Caddy on the same port, twice: the old process (and its
    // QUIC connection) is gone. The next request, or the one after,
    // succeeds within a second of the restart and reaches the new process.
    let mut caddy = caddy;
    for (n, tag) in ["second", "third"].into_iter().enumerate() {
        caddy.stop();
        caddy = Caddy::tagged(caddy_port, tag);
        let started = Instant::now();
        let (mut code, mut body) = curl_get(&url);
        if code != 200 {
            (code, body) = curl_get(&url);
        }
        let took = started.elapsed();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("{tag} proto=HTTP/3.0")), "{body}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // Caddy sends no stateless reset: the silent connection was found
        // dead by the request's probe and the request retried.
        assert_eq!(
            mg.metric(
                "meshgate_cluster_upstream_cx_dead_total",
                &[("cluster", "caddy")]
            ),
            1.0 + n as f64
        );
        // One new connection per restart, the dead one released.
        assert_eq!(cx(&mg), 2.0 + n as f64);
        wait_until("one QUIC connection to caddy", || {
            mg.metric(
                "meshgate_cluster_upstream_cx_active",
                &[("cluster", "caddy")],
            ) == 1.0
        });
    }
    // Stopped: the request fails within the probe and one connect
    // timeout (500ms here), not after quinn's 30 s idle timeout.
    caddy.stop();
    let started = Instant::now();
    let (code, body) = curl_get(&url);
    // A reset of the dead connection and a failed connect are both 503.
    assert_eq!(code, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Back again: served within a second.
    let caddy = Caddy::tagged(caddy_port, "fourth");
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < Duration::from_secs(1) && !ok {
        let (code, body) = curl_get(&url);
        ok = code == 200 && body.contains("fourth proto=HTTP/3.0");
    }
    assert!(ok, "not served again within a second");
    drop(caddy);

    // The circuit breaker applies to HTTP/3 connections too.
    let (code, _) = curl_get(&format!("http://127.0.0.1:{port}/full"));
    assert_eq!(code, 503);
    assert!(
        mg.metric(
            "meshgate_cluster_upstream_cx_overflow_total",
            &[("cluster", "full")]
        ) >= 1.0
    );
}
