//! End-to-end test of the overload manager's budget for response bodies
//! (`meshgate.resource_monitors.buffered_bytes`): the real meshgate
//! binary; an h2c upstream (hyper's HTTP/2 server) that answers 8 MiB at
//! once; HTTP/1.1 clients on raw sockets with 4 KiB receive buffers that
//! send a request and never read. What the upstream sends waits in
//! meshgate, read ahead into memory the budget counts: the total stays
//! under the budget, the largest holders are reset and counted, and a
//! client that reads still gets its whole answer.

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BIG: usize = 8 << 20;
const BUDGET: u64 = 16 << 20;

/// An h2c upstream answering every request with `BIG` bytes.
fn big_upstream() -> std::net::SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let body = bytes::Bytes::from(vec![b'x'; BIG]);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((io, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(body),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// A client that asks for the big answer and never reads it.
fn stalled_client(port: u16) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    s
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn response_budget_holds_when_clients_never_read_and_sheds_the_largest() {
    let up = big_upstream();
    // What meshgate's own connections, streams and codec buffers cost
    // beside the counted bodies (debug build, 60 connections).
    const MARGIN_MIB: f64 = 48.0;
    let mg = Meshgate::start(&config(up, &budget(BUDGET)));
    let (growth, max_buffered, resets) = storm(&mg);
    assert!(resets > 0.0, "no stream was reset for memory");
    // The counted total never went past the budget by more than the
    // frames in flight of the streams being read (one 16 KiB HTTP/2 frame
    // each).
    assert!(
        max_buffered <= (BUDGET + 60 * (16 << 10)) as f64,
        "buffered bytes peaked at {max_buffered}"
    );
    assert!(
        growth < (BUDGET >> 20) as f64 + MARGIN_MIB,
        "RSS grew {growth:.0} MiB with a {} MiB budget",
        BUDGET >> 20
    );
    // A client that reads gets all of it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big");
    let port = mg.listener_port("http");
    let (status, _, _) = curl(&[
        "--max-time",
        "20",
        "-o",
        out.to_str().unwrap(),
        &format!("http://127.0.0.1:{port}/big"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), BIG as u64);
    drop(mg);

    // The same clients without the budget: the upstream connections'
    // flow-control windows fill in meshgate's memory, uncounted.
    let mg = Meshgate::start(&config(up, ""));
    let (without, _, _) = storm(&mg);
    eprintln!(
        "RSS growth {growth:.0} MiB with a {} MiB budget (buffered peak {:.1} MiB, {resets} streams reset), {without:.0} MiB without",
        BUDGET >> 20,
        max_buffered / (1 << 20) as f64,
    );
    assert!(
        without > growth * 1.5,
        "without a budget RSS grew {without:.0} MiB, with it {growth:.0} MiB"
    );
}

fn budget(max: u64) -> String {
    format!(
        "overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
    - name: meshgate.resource_monitors.buffered_bytes
      typed_config: {{max_buffered_bytes: {max}}}
  actions:
    - name: envoy.overload_actions.reset_high_memory_streams
      triggers:
        - name: meshgate.resource_monitors.buffered_bytes
          threshold: {{value: 0.9}}
"
    )
}

fn config(up: std::net::SocketAddr, overload: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
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
                        route: {{cluster: up, timeout: 60s}}
clusters:
  - name: up
    protocol: http2
    protocol_options: {{max_concurrent_streams: 1}}
    endpoints: [{{address: "{up}"}}]
{overload}"#
    )
}

/// 60 clients that never read; returns meshgate's RSS growth (MiB, peak
/// over the baseline), the largest buffered-bytes gauge seen and the
/// streams reset for memory, once the resets settled (or after 10 s
/// without any).
fn storm(mg: &Meshgate) -> (f64, f64, f64) {
    let port = mg.listener_port("http");
    let pid = mg.child.id();
    let base = rss_kib(pid);
    // 60 stalled clients want 480 MiB; one upstream connection each
    // (max_concurrent_streams: 1), so the upstream's flow control alone
    // would let each hold its window in meshgate.
    let clients: Vec<TcpStream> = (0..60).map(|_| stalled_client(port)).collect();
    let mut peak = base;
    let mut max_buffered = 0f64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    // Until the largest holders were shed and what is left settles (no
    // reset for a refresh interval's worth of metric reads).
    let mut resets = 0.0;
    let mut stable = 0;
    while Instant::now() < deadline && stable < 20 {
        peak = peak.max(rss_kib(pid));
        let body = mg.admin_get("/stats/prometheus").1;
        max_buffered =
            max_buffered.max(metric_from(&body, "meshgate_overload_buffered_bytes", &[]));
        let r = metric_from(&body, "meshgate_overload_streams_reset_total", &[]);
        stable = if r > 0.0 && r == resets {
            stable + 1
        } else {
            0
        };
        resets = r;
        if r == 0.0 && start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let growth = peak.saturating_sub(base) as f64 / 1024.0;
    drop(clients);
    (growth, max_buffered, resets)
}
