//! HTTP/3 end to end through the real binary, with clients nobody here
//! wrote: aioquic's example HTTP/3 client (from its source distribution)
//! and ngtcp2's `gtlsclient`; Caddy as an HTTP/3 upstream; curl for the
//! `alt-svc` advertisement. Hostile clients (malformed QPACK, streams past
//! the limit, random datagrams) are aioquic-based (tests/peers/h3_abuse.py)
//! and raw UDP.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::caddy::Caddy;
use meshgate_tests::*;
use std::process::Command;
use std::time::Duration;

fn certs(f: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(f)
        .display()
        .to_string()
}

fn aioquic_get(port: u16, paths: &[&str], data: Option<&str>) -> Vec<(String, String)> {
    meshgate_tests::aioquic::get(port, paths, data)
}

/// The QUIC listener and an HTTPS listener on the same port advertising
/// it, both routing /api/ to `backend`; `extra` goes into the QUIC
/// listener's `quic` options.
fn config(port: u16, backend: &str, quic: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{{quic}}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              route_config: &routes
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{path: /local}}
                        direct_response: {{status: 200, body: "local\n"}}
                      - match: {{prefix: /api/}}
                        route: {{cluster: backend, timeout: 20s}}
  - name: https
    address: 127.0.0.1:{port}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              advertise_http3: {{port: {port}, max_age: 1h}}
              route_config: *routes
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#,
        crt = certs("server.pem"),
        key = certs("server.key"),
    )
}

#[test]
fn aioquic_get_post_and_parallel_streams_to_an_http1_backend() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&config(port, &backend.addr.to_string(), ""));

    let r = aioquic_get(port, &["/api/hello?x=1"], None);
    let text = &r[0].1;
    assert!(text.starts_with(":status: 200"), "{text}");
    assert!(text.contains("backend=b"), "{text}");
    assert!(text.contains("proto=Http1"), "{text}");
    assert!(text.contains("uri=/api/hello?x=1"), "{text}");
    assert!(text.contains("x-forwarded-proto=https"), "{text}");
    assert!(text.contains("x-request-id="), "{text}");

    // POST: a 100 KB body arrives intact (the single-argument limit of
    // execve bounds what aioquic's -d can carry; gtlsclient sends MiBs).
    let body = "a".repeat(100_000);
    let r = aioquic_get(port, &["/api/post"], Some(&body));
    let text = &r[0].1;
    assert!(text.contains("method=POST"), "{text}");
    assert!(text.contains("body-bytes=100000"), "{text}");
    assert!(
        text.contains(&format!(
            "body-xxh3={:x}",
            xxhash_rust::xxh3::xxh3_64(body.as_bytes())
        )),
        "{text}"
    );

    // 64 requests in parallel on one connection.
    let paths: Vec<String> = (0..64).map(|i| format!("/api/p{i}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let before = mg.metric(
        "meshgate_listener_downstream_cx_total",
        &[("listener", "h3")],
    );
    for (p, text) in aioquic_get(port, &refs, None) {
        assert!(text.starts_with(":status: 200"), "{p}: {text}");
        assert!(text.contains(&format!("uri={p}\n")), "{p}: {text}");
    }
    let after = mg.metric(
        "meshgate_listener_downstream_cx_total",
        &[("listener", "h3")],
    );
    assert_eq!(after - before, 1.0, "one QUIC connection for 64 streams");
    assert!(
        mg.metric(
            "meshgate_downstream_rq_xx_total",
            &[("listener", "h3"), ("code_class", "2xx")]
        ) >= 66.0
    );
}

#[test]
fn gtlsclient_gets_and_posts_five_mebibytes() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let _mg = Meshgate::start(&config(port, &backend.addr.to_string(), ""));
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 5 << 20];
    Prng::new(7).fill(&mut data);
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, &data).unwrap();
    let download = dir.path().join("dl");
    std::fs::create_dir(&download).unwrap();
    let run = |extra: &[&str], path: &str| {
        let o = Command::new("timeout")
            .args(["60", "gtlsclient", "-q", "--exit-on-all-streams-close"])
            .arg(format!("--download={}", download.display()))
            .args(["--sni=localhost"])
            .args(extra)
            .args(["127.0.0.1", &port.to_string()])
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .expect("gtlsclient (Debian ngtcp2-client; tests/run.sh installs it)");
        assert!(
            o.status.success(),
            "gtlsclient: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let name = path.rsplit('/').next().unwrap();
        std::fs::read_to_string(download.join(name)).unwrap()
    };
    let text = run(&[], "/api/get");
    assert!(
        text.contains("backend=b") && text.contains("method=GET"),
        "{text}"
    );
    let text = run(
        &[
            &format!("--data={}", upload.display()),
            "--http-method=POST",
        ],
        "/api/upload",
    );
    assert!(text.contains("method=POST"), "{text}");
    assert!(
        text.contains(&format!("body-bytes={}", data.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "body-xxh3={:x}",
            xxhash_rust::xxh3::xxh3_64(&data)
        )),
        "{text}"
    );
}

#[test]
fn https_responses_advertise_the_http3_listener() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let _mg = Meshgate::start(&config(port, &backend.addr.to_string(), ""));
    for flag in ["--http1.1", "--http2"] {
        let o = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", flag, "--cacert"])
            .arg(certs("ca.pem"))
            .arg(format!("https://localhost:{port}/api/x"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(
            head.contains(&format!("alt-svc: h3=\":{port}\"; ma=3600")),
            "{flag}: {head}"
        );
    }
    // Not on HTTP/3 itself.
    let r = aioquic_get(port, &["/local"], None);
    assert!(!r[0].1.contains("alt-svc"), "{}", r[0].1);
}

#[test]
fn http3_upstream_to_caddy_from_http1_and_http2_clients() {
    let caddy_port = free_port();
    let _caddy = Caddy::responding(
        caddy_port,
        "caddy proto={http.request.proto} method={http.request.method} uri={http.request.uri} host={http.request.host}",
    );
    let port = free_port();
    let _mg = Meshgate::start(&format!(
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
                      - match: {{prefix: /}}
                        route: {{cluster: caddy, host_rewrite_literal: "localhost:{caddy_port}"}}
clusters:
  - name: caddy
    protocol: http3
    tls: {{trusted_ca: "{ca}", sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{caddy_port}"}}]
"#,
        ca = certs("ca.pem")
    ));
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let url = format!("http://127.0.0.1:{port}/a/b?c=1");
    let t = curl(&[&url]);
    assert!(
        t.contains("caddy proto=HTTP/3.0 method=GET uri=/a/b?c=1"),
        "{t}"
    );
    let t = curl(&["--http2-prior-knowledge", &url]);
    assert!(t.contains("caddy proto=HTTP/3.0 method=GET"), "{t}");
    let t = curl(&["--data-binary", "@/etc/os-release", &url]);
    assert!(t.contains("caddy proto=HTTP/3.0 method=POST"), "{t}");
}

#[test]
fn drain_sends_goaway_and_lets_the_request_in_flight_finish() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mut mg = Meshgate::start_with_args(
        &config(port, &backend.addr.to_string(), ""),
        &["--drain-time", "15s"],
    );
    // /api/slow answers after 3 s; SIGTERM arrives while it is in flight.
    let client = std::thread::spawn(move || aioquic_get(port, &["/api/slow"], None));
    wait_until_within(20, "the request at the backend", || backend.hits() > 0);
    mg.terminate();
    let r = client.join().unwrap();
    assert!(r[0].1.starts_with(":status: 200"), "{}", r[0].1);
    let st = mg
        .wait_exit(Duration::from_secs(15))
        .expect("exits after the drain");
    assert!(st.success(), "{st}");
}

#[test]
fn hostile_quic_input_is_refused_and_others_are_unaffected() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&config(
        port,
        &backend.addr.to_string(),
        "max_concurrent_streams: 16, validate_address: true",
    ));
    // Random datagrams, including ones shaped like long-header Initials.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = Prng::new(99);
    for i in 0..3000usize {
        let mut d = vec![0u8; 1 + (i * 37) % 1400];
        rng.fill(&mut d);
        if i % 2 == 0 {
            d[0] = 0xc0 | (d[0] & 0x0f);
            if d.len() > 5 {
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = sock.send_to(&d, ("127.0.0.1", port));
    }
    let abuse = |mode: &str| {
        let o = Command::new("timeout")
            .args(["30", "python3"])
            .arg(workspace().join("tests/peers/h3_abuse.py"))
            .args([mode, "127.0.0.1", &port.to_string(), &certs("ca.pem")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    // A malformed QPACK block: QPACK_DECOMPRESSION_FAILED (0x200).
    assert_eq!(
        abuse("qpack"),
        "closed code=0x200 reason=Failed to decode headers"
    );
    // Streams past the advertised limit: STREAM_LIMIT_ERROR (0x4).
    let streams = abuse("streams");
    assert!(streams.starts_with("closed code=0x4"), "{streams}");
    // A forged address-validation token counts as none: a Retry, then
    // the request is served.
    let retries = mg.metric("meshgate_listener_quic_retry_total", &[("listener", "h3")]);
    assert_eq!(abuse("token"), "status=200");
    assert!(mg.metric("meshgate_listener_quic_retry_total", &[("listener", "h3")]) > retries);
    // Everyone else is served as before.
    let r = aioquic_get(port, &["/api/after"], None);
    assert!(r[0].1.starts_with(":status: 200"), "{}", r[0].1);
    let errors = |reason: &str| {
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("codec", "http3"), ("reason", reason)],
        )
    };
    // Counted when each connection's task ends, which may be just after
    // the client saw the close.
    wait_until_within(5, "both refusals counted", || {
        errors("qpack") >= 1.0 && errors("stream_limit") >= 1.0
    });
    let dump = mg.admin_get("/stats/prometheus").1;
    assert_eq!(errors("qpack"), 1.0, "{dump}");
    assert_eq!(errors("stream_limit"), 1.0, "{dump}");
}
