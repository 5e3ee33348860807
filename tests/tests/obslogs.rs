//! Observability, logs part (issue 22): the router's `upstream_log` (one
//! line per upstream try), and `/drain_listeners?inboundonly&graceful`
//! (only `traffic_direction: INBOUND` listeners drain, gracefully).

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::PyPeer as Peer;
use meshgate_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn listener(name: &str, port: u16, direction: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
{direction}    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}]
"#
    )
}

/// A keep-alive HTTP/1.1 connection and one request on it.
struct KeepAlive {
    w: TcpStream,
    r: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(port: u16) -> Self {
        let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            w: conn.try_clone().unwrap(),
            r: std::io::BufReader::new(conn),
        }
    }

    fn get(&mut self) -> Reply {
        self.w
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_reply(&mut self.r).expect("a response")
    }
}

/// `POST /drain_listeners?inboundonly&graceful`: the INBOUND listener's
/// open connections are told to close (next HTTP/1.1 response carries
/// `connection: close`), it keeps accepting for the drain time, then
/// refuses; the OUTBOUND listener and its connections are untouched.
#[test]
fn drain_listeners_inboundonly_graceful_drains_only_inbound() {
    let (inp, outp) = (free_port(), free_port());
    let mg = Meshgate::start_with_args(
        &format!(
            "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}",
            listener("in", inp, "    traffic_direction: INBOUND\n"),
            listener("out", outp, "    traffic_direction: OUTBOUND\n"),
        ),
        &["--drain-time", "2s"],
    );
    wait_listening(([127, 0, 0, 1], inp).into());
    wait_listening(([127, 0, 0, 1], outp).into());
    let mut inbound = KeepAlive::open(inp);
    let mut outbound = KeepAlive::open(outp);
    let r = inbound.get();
    assert_eq!((r.status, r.close), (200, false));
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));

    let url = format!(
        "http://{}/drain_listeners?inboundonly&graceful",
        mg.admin.unwrap()
    );
    assert_eq!(curl(&["-X", "POST", &url]).0, 200);
    // During the drain time: the inbound listener still accepts, its open
    // connection is told to close; the outbound one stays keep-alive.
    assert!(TcpStream::connect(("127.0.0.1", inp)).is_ok());
    let r = inbound.get();
    assert_eq!((r.status, r.close), (200, true));
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));
    wait_until_within(15, "the inbound listener to refuse", || {
        TcpStream::connect_timeout(
            &([127, 0, 0, 1], inp).into(),
            Duration::from_millis(500),
        )
        .is_err()
    });
    let r = outbound.get();
    assert_eq!((r.status, r.close), (200, false));
    let mut fresh = KeepAlive::open(outp);
    assert_eq!(fresh.get().status, 200);
    assert_eq!(mg.admin_get("/ready").0, 200, "the server is not draining");
}
