//! Tracing spans: a log line written while meshgate handles a connection
//! or a stream carries the listener and the connection id, and inside a
//! stream also the stream id, the protocol, and the route and cluster once
//! the router knows them (meshgate runs at `--log-level debug` in tests).

use meshgate_tests::*;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;

/// An upstream that reads a request and closes without answering, so that
/// the proxy logs (at debug) an upstream failure from inside the stream.
fn closing_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
        }
    });
    addr
}

/// The value of `key=` inside the first `span{...}` of a log line.
fn span_field<'a>(line: &'a str, span: &str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{span}{{"))? + span.len() + 1;
    let fields = &line[start..start + line[start..].find('}')?];
    fields
        .split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn log_lines_carry_connection_and_stream_ids_route_and_cluster() {
    let up = closing_upstream();
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: spans
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
                      - name: spans_route
                        match: {{prefix: /}}
                        route: {{cluster: closing}}
clusters:
  - name: closing
    endpoints: [{{address: "{up}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);

    // Two streams on one HTTP/1.1 connection, then a malformed head the
    // codec refuses on that connection (logged with its `conn` id, in the
    // connection span but in no stream).
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    for path in ["/a", "/b"] {
        write!(w, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let reply = read_reply(&mut r).expect("a reply");
        assert!(reply.status >= 500, "{}", reply.status);
    }
    w.write_all(b"GET /c HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut r).expect("a reply");
    assert_eq!(reply.status, 400);

    // One HTTP/2 stream (h2c prior knowledge): HTTP/2 runs each stream in
    // a task of its own, outside the connection's task.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--http2-prior-knowledge")
        .arg(format!("http://127.0.0.1:{port}/h2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with('5'),
        "{out:?}"
    );

    wait_until("the refused head is logged", || {
        mg.log_text().contains("refused request head")
    });
    let log = mg.log_text();
    let streams = |protocol: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                span_field(l, "stream", "protocol") == Some(protocol)
                    && l.contains("meshgate_core::forward")
            })
            .map(str::to_string)
            .collect()
    };
    let h1 = streams("http1");
    let h2 = streams("http2");
    assert!(h1.len() >= 2, "no HTTP/1.1 stream lines:\n{log}");
    assert!(!h2.is_empty(), "no HTTP/2 stream line:\n{log}");
    for l in h1.iter().chain(&h2) {
        assert_eq!(span_field(l, "stream", "listener"), Some("spans"), "{l}");
        assert_eq!(span_field(l, "stream", "route"), Some("spans_route"), "{l}");
        assert_eq!(span_field(l, "stream", "cluster"), Some("closing"), "{l}");
        assert!(span_field(l, "stream", "stream_id").is_some(), "{l}");
    }
    // Both HTTP/1.1 streams: one connection id, two stream ids.
    let conn = span_field(&h1[0], "stream", "connection_id").unwrap();
    let mut ids: Vec<&str> = h1
        .iter()
        .map(|l| {
            assert_eq!(span_field(l, "stream", "connection_id"), Some(conn), "{l}");
            span_field(l, "stream", "stream_id").unwrap()
        })
        .collect();
    ids.dedup();
    assert!(ids.len() >= 2, "{h1:?}");
    // The HTTP/2 stream came on another connection.
    assert_ne!(span_field(&h2[0], "stream", "connection_id"), Some(conn));
    // The codec's own line on that connection is in its connection span,
    // whose id is the one the codec logs and the streams carry.
    let refused = log
        .lines()
        .find(|l| l.contains("refused request head"))
        .unwrap();
    assert_eq!(span_field(refused, "connection", "listener"), Some("spans"));
    assert_eq!(
        span_field(refused, "connection", "connection_id"),
        Some(conn),
        "{refused}"
    );
    assert!(refused.contains(&format!("conn={conn}")), "{refused}");
}
