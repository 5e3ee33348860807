//! DNS over UDP for the UDP proxy tests: a small stdlib Python DNS server
//! that answers `test.meshgate. A` with its own configured address (so an
//! answer names the Endpoint that served it), and a raw client query.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DNS_SERVER: &str = r#"
import socket, struct, sys
answer = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 12:
        continue
    qid, flags, qd = struct.unpack("!HHH", q[:6])
    i = 12
    labels = []
    while i < len(q) and q[i] != 0:
        n = q[i]; labels.append(q[i+1:i+1+n].decode()); i += 1 + n
    question = q[12:i + 5]
    qtype = struct.unpack("!H", q[i+1:i+3])[0]
    name = ".".join(labels)
    if name == "test.meshgate" and qtype == 1:
        hdr = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer
        s.sendto(hdr + question + rr, peer)
    else:
        s.sendto(struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question, peer)
"#;

/// A Python DNS server answering `test.meshgate. A` with `answer`.
pub struct DnsServer {
    child: Child,
    pub addr: SocketAddr,
}

impl DnsServer {
    pub fn start(answer: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", DNS_SERVER, answer])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("dns server port");
        Self {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS query for `test.meshgate. A` with id `id`.
pub fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in ["test", "meshgate"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends one query from `sock` to `to` and returns the A record of the
/// answer, or `None` if nothing came back in `wait`.
pub fn resolve(sock: &UdpSocket, to: SocketAddr, id: u16, wait: Duration) -> Option<Ipv4Addr> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(&query(id), to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    assert_eq!(from, to, "the answer comes from the listener");
    assert_eq!(
        &buf[..2],
        &id.to_be_bytes(),
        "the answer's id is the query's"
    );
    assert_eq!(&buf[6..8], &[0, 1], "one answer record");
    let a = &buf[n - 4..n];
    Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// A client socket on loopback.
pub fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}
