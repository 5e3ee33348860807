//! The user's door, end to end: the `meshgate-lenrpc` binary built from
//! this crate serves `lenrpc` on a `codec: auto` listener next to the
//! stock codecs, routes by service, multiplexes upstream calls on one
//! connection, answers pings and makes `lenrpc` error responses.
// Test helpers may unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshgate_example_custom_codec::{KIND_PING, KIND_PONG, KIND_REQUEST, KIND_RESPONSE, frame};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// (kind, id, status, service, payload)
type Frame = (u8, u32, u8, String, Vec<u8>);

fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).ok()?;
    let id = u32::from_be_bytes(rest[1..5].try_into().unwrap());
    let slen = u16::from_be_bytes([rest[6], rest[7]]) as usize;
    let service = String::from_utf8_lossy(&rest[8..8 + slen]).into_owned();
    Some((rest[0], id, rest[5], service, rest[8 + slen..].to_vec()))
}

/// A lenrpc backend: answers each request with `name:payload`, pings with
/// pongs; counts connections.
fn backend(name: &'static str) -> (u16, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicU32::new(0));
    let c2 = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c2.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                while let Some((kind, id, _, svc, payload)) = read_frame(&mut s) {
                    let out = match kind {
                        KIND_PING => frame(KIND_PONG, id, 0, "", b""),
                        _ => {
                            let mut p = format!("{name}:").into_bytes();
                            p.extend(payload);
                            frame(KIND_RESPONSE, id, 0, &svc, &p)
                        }
                    };
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, conns)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn lenrpc_routes_multiplexes_and_answers_errors() {
    let (pa, conns_a) = backend("A");
    let (pb, _) = backend("B");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("lenrpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("lenrpc.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listeners:
  - name: rpc
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: auto
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /alpha/}}
                        route: {{cluster: a}}
                      - match: {{headers: [{{name: service, exact_match: beta}}], prefix: /}}
                        route: {{cluster: b}}
clusters:
  - name: a
    protocol: lenrpc
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
  - name: b
    protocol: lenrpc
    endpoints: [{{address: "127.0.0.1:{pb}"}}]
"#
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_meshgate-lenrpc");
    let st = Command::new(bin)
        .args(["validate", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let _mg = Proc(
        Command::new(bin)
            .args(["run", cfg.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            break c;
        }
        assert!(Instant::now() < deadline, "meshgate-lenrpc did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 200 calls in flight on one connection, answered by id
    let mut batch = Vec::new();
    for id in 1..=200u32 {
        let svc = if id % 2 == 0 { "alpha/get" } else { "beta" };
        batch.extend_from_slice(&frame(
            KIND_REQUEST,
            id,
            0,
            svc,
            format!("p{id}").as_bytes(),
        ));
    }
    c.write_all(&batch).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (kind, id, status, _, payload) = read_frame(&mut c).unwrap();
        assert_eq!((kind, status), (KIND_RESPONSE, 0));
        let want = if id % 2 == 0 {
            format!("A:p{id}")
        } else {
            format!("B:p{id}")
        };
        assert_eq!(String::from_utf8_lossy(&payload), want);
        seen.insert(id);
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(
        conns_a.load(Ordering::Relaxed),
        1,
        "one multiplexed upstream connection"
    );
    // ping answered by meshgate; unknown service: status 1 with a message
    c.write_all(&frame(KIND_PING, 900, 0, "", b"")).unwrap();
    let (kind, id, _, _, _) = read_frame(&mut c).unwrap();
    assert_eq!((kind, id), (KIND_PONG, 900));
    c.write_all(&frame(KIND_REQUEST, 901, 0, "gamma", b"x"))
        .unwrap();
    let (kind, id, status, _, payload) = read_frame(&mut c).unwrap();
    assert_eq!((kind, id, status), (KIND_RESPONSE, 901, 1));
    assert_eq!(
        String::from_utf8_lossy(&payload),
        "meshgate: no route matched"
    );
    // a frame whose length is shorter than its own head: closed
    let mut bad = frame(KIND_REQUEST, 902, 0, "alpha", b"").to_vec();
    bad[3] = 2;
    c.write_all(&bad).unwrap();
    assert!(read_frame(&mut c).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
