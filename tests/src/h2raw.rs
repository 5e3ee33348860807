//! A raw HTTP/2 client socket for tests that watch the connection itself
//! (its GOAWAY, its end) rather than a request: prior knowledge, the
//! preface and an empty SETTINGS, then nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP/2 client connection that sends its preface and SETTINGS and
/// then nothing: an idle keep-alive connection.
pub fn idle_h2(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads frames until meshgate's GOAWAY (type 7): hyper's graceful close
/// then waits for the PING this client never answers, so the GOAWAY, not
/// the socket's end, marks the server's decision.
pub fn read_until_goaway(s: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut i = 0;
    loop {
        // Walk the whole frames read so far: 9-byte headers, payloads.
        while i + 9 <= got.len() {
            let len = (usize::from(got[i]) << 16)
                | (usize::from(got[i + 1]) << 8)
                | usize::from(got[i + 2]);
            if got[i + 3] == 7 {
                return;
            }
            i += 9 + len;
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("closed without GOAWAY"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no GOAWAY: {e}"),
        }
    }
}
