//! `per_connection_buffer_limit_bytes` (listener and cluster) bounds what
//! meshgate holds per connection when the far side does not read: the
//! real binary with `tcp_proxy` between a client pushing 64 MiB and an
//! upstream that stops reading (and the reverse), meshgate's held bytes
//! read from `meshgate_tcp_proxy_buffered_bytes` while the flow is
//! stalled, then every byte checked once the slow side reads. And an
//! HTTP/1.1 request body of 64 MiB to an upstream that stops reading:
//! meshgate's resident memory grows by far less than the body.

use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

const TOTAL: usize = 64 << 20;
const LISTENER_LIMIT: f64 = 16384.0;
const CLUSTER_LIMIT: f64 = 8192.0;

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"admin:
  address: {{ADMIN}}
listeners:
  - name: front
    address: 127.0.0.1:0
    per_connection_buffer_limit_bytes: 16384
    filter_chains:
      - filters:
          - name: tcp_proxy
            config:
              cluster: slow
clusters:
  - name: slow
    connect_timeout: 1s
    per_connection_buffer_limit_bytes: 8192
    endpoints:
      - address: {upstream}
"#
    )
}

/// FNV-1a over a byte stream.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn expected_hash() -> u64 {
    let mut data = vec![0u8; TOTAL];
    Prng::new(7).fill(&mut data);
    let mut h = 0xcbf2_9ce4_8422_2325;
    fnv(&mut h, &data);
    h
}

/// Reads `s` to EOF: (bytes, hash).
fn drain(mut s: TcpStream) -> (usize, u64) {
    let mut h = 0xcbf2_9ce4_8422_2325;
    let mut n = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (n, h),
            Ok(m) => {
                fnv(&mut h, &buf[..m]);
                n += m;
            }
        }
    }
}

/// Writes the 64 MiB stream to `s`, then half-closes.
fn push(mut s: TcpStream) {
    let mut data = vec![0u8; TOTAL];
    Prng::new(7).fill(&mut data);
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Waits until meshgate holds bytes it cannot pass on in `direction` and
/// no more move (the flow is stalled: every buffer on the way is full),
/// then returns what it holds.
fn stalled_hold(mg: &Meshgate, direction: &str, moved: &str) -> f64 {
    let mut last = -1.0;
    wait_for_within(30, "the flow to stall", || {
        let held = mg.metric(
            "meshgate_tcp_proxy_buffered_bytes",
            &[("listener", "front"), ("direction", direction)],
        );
        let now = mg.metric(moved, &[]);
        let stalled = held > 0.0 && now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(100));
        stalled.then_some(held)
    })
}

#[test]
fn a_non_reading_upstream_holds_meshgate_to_the_listener_limit_and_every_byte_arrives() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let mg = Meshgate::start(&config(up.local_addr().unwrap()));
    let front = mg.listener_addr("front");
    let client = TcpStream::connect(front).unwrap();
    let (upstream, _) = up.accept().unwrap();
    let writer = thread::spawn(move || push(client));

    let held = stalled_hold(
        &mg,
        "downstream_to_upstream",
        "meshgate_listener_downstream_bytes_received_total",
    );
    assert!(held <= LISTENER_LIMIT, "meshgate holds {held} bytes");
    // Back-pressure: the client is stopped, far short of its 64 MiB.
    let received = mg.metric(
        "meshgate_listener_downstream_bytes_received_total",
        &[("listener", "front")],
    );
    assert!(received < TOTAL as f64, "{received}");

    // The upstream reads: the stream is whole.
    let (n, h) = drain(upstream);
    writer.join().unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(h, expected_hash());
    mg.wait_metric(
        "meshgate_tcp_proxy_buffered_bytes",
        &[("direction", "downstream_to_upstream")],
        |v| v == 0.0,
    );
}

#[test]
fn a_non_reading_client_holds_meshgate_to_the_cluster_limit_and_every_byte_arrives() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let mg = Meshgate::start(&config(up.local_addr().unwrap()));
    let front = mg.listener_addr("front");
    let client = TcpStream::connect(front).unwrap();
    let (upstream, _) = up.accept().unwrap();
    let writer = thread::spawn(move || push(upstream));

    let held = stalled_hold(
        &mg,
        "upstream_to_downstream",
        "meshgate_cluster_upstream_bytes_received_total",
    );
    assert!(held <= CLUSTER_LIMIT, "meshgate holds {held} bytes");

    let (n, h) = drain(client);
    writer.join().unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(h, expected_hash());
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn an_http1_body_to_a_non_reading_upstream_stays_bounded_and_arrives_whole() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        r#"admin:
  address: {{ADMIN}}
listeners:
  - name: front
    address: 127.0.0.1:0
    per_connection_buffer_limit_bytes: 65536
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: http1
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: slow}}
clusters:
  - name: slow
    connect_timeout: 1s
    per_connection_buffer_limit_bytes: 65536
    endpoints:
      - address: {}
"#,
        up.local_addr().unwrap()
    );
    let mg = Meshgate::start(&yaml);
    let pid = mg.child.id();
    let front = mg.listener_addr("front");
    let mut client = TcpStream::connect(front).unwrap();
    let before = rss(pid);
    write!(
        client,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n"
    )
    .unwrap();
    let c2 = client.try_clone().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let writer = thread::spawn(move || {
        let mut data = vec![0u8; TOTAL];
        Prng::new(7).fill(&mut data);
        let mut c2 = c2;
        for chunk in data.chunks(64 * 1024) {
            c2.write_all(chunk).unwrap();
            s2.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let (mut upstream, _) = up.accept().unwrap();
    // The upstream reads the request head, then nothing: wait until the
    // body stops moving through meshgate.
    let mut last = usize::MAX;
    wait_until_within(30, "the body to stall", || {
        let now = sent.load(Ordering::Relaxed);
        let stalled = now > 0 && now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        stalled
    });
    let stalled_at = sent.load(Ordering::Relaxed);
    assert!(stalled_at < TOTAL, "the client was never held back");
    let grown = rss(pid).saturating_sub(before);
    assert!(grown < 8 << 20, "meshgate grew by {grown} bytes");

    // The upstream reads the body, whole, and answers.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            upstream.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let mut body = vec![0u8; TOTAL];
        upstream.read_exact(&mut body).unwrap();
        let mut h = 0xcbf2_9ce4_8422_2325;
        fnv(&mut h, &body);
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .unwrap();
        tx.send(h).unwrap();
    });
    writer.join().unwrap();
    let h = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(h, expected_hash());
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut resp = [0u8; 12];
    client.read_exact(&mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 200");
}
