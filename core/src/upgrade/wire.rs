//! The hand-over protocol's framing on a Unix stream socket: a 4-byte
//! big-endian length, then a JSON message of at most `MAX_FRAME` bytes.
//! Socket descriptors travel as `SCM_RIGHTS` ancillary data on the first
//! byte of the frame that lists them (nix's `sendmsg`/`recvmsg`); the
//! reader keeps them in arrival order, and a frame listing N sockets takes
//! the first N. Every read and write is bounded by the stream's timeouts.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Largest message, length prefix excluded.
pub const MAX_FRAME: usize = 64 * 1024;
/// Descriptors sent with one frame (below the kernel's `SCM_MAX_FD`, 253).
pub const MAX_FDS_PER_FRAME: usize = 64;
/// Descriptors one hand-over may carry in all.
pub const MAX_FDS: usize = 4096;

/// A listening socket's role, which decides how the receiver wraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A TCP listener's socket.
    Tcp,
    /// A UDP proxy listener's socket.
    Udp,
    /// A QUIC (HTTP/3) listener's UDP socket.
    Quic,
    /// The admin server's TCP socket.
    Admin,
    /// Version 2: the new process's end of a QUIC listener's packet
    /// channel to the old process (`super::quic_steer`).
    QuicForward,
}

/// One handed-over socket: its role and the address it was configured
/// with (the key the new process looks it up by).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketDesc {
    pub kind: Kind,
    pub address: SocketAddr,
    /// `QuicForward`: the old process's connection ID tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u8>,
}

/// The messages, in the order they are exchanged (module doc of `upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Both ways first: the protocol versions each side speaks.
    Hello {
        version: u32,
        min_version: u32,
        pid: u32,
    },
    /// Old to new, instead of `Hello`: the hand-over cannot happen.
    Refused { reason: String },
    /// Old to new: sockets, their descriptors attached; `more` is false on
    /// the last batch.
    Sockets {
        sockets: Vec<SocketDesc>,
        more: bool,
    },
    /// New to old: loaded (xDS included) and about to accept.
    Ready,
    /// Old to new: it stopped accepting and drains.
    Draining { pid: u32 },
    /// Old to new (version 2): connections to resume, their sockets
    /// attached in the same order.
    Connections { connections: Vec<ConnDesc> },
    /// New to old: which of the last `connections` it took (`false`: the
    /// old process closes that one, as a drain would).
    Accepted { accepted: Vec<bool> },
}

/// One migrated connection (protocol version 2): where it belongs and
/// the bytes the old process read but did not process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnDesc {
    /// The configured address of its listener (the key listening sockets
    /// are handed over by).
    pub listener_address: SocketAddr,
    /// Its listener's and filter chain's names in the old process.
    pub listener: String,
    pub filter_chain: Option<String>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Read from the socket but not processed, base64 (at most
    /// `migrate::MAX_CARRIED_BYTES` before encoding).
    pub unread: String,
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

fn timed_out(e: nix::errno::Errno) -> std::io::Error {
    if e == nix::errno::Errno::EAGAIN {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
    } else {
        std::io::Error::from(e)
    }
}

/// Writes one frame, with `fds` attached to its first bytes.
pub fn send(s: &UnixStream, msg: &Msg, fds: &[RawFd]) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| invalid(e.to_string()))?;
    if body.len() > MAX_FRAME || fds.len() > MAX_FDS_PER_FRAME {
        return Err(invalid("hand-over message too large"));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&frame)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(timed_out)?;
    let mut w = s;
    w.write_all(&frame[n..])
}

/// Reads frames and the descriptors that came with them.
pub struct Reader {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// The next frame (EOF, a timeout, an oversized or malformed frame,
    /// or truncated descriptors are errors).
    pub fn read(&mut self, s: &UnixStream) -> std::io::Result<Msg> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(invalid(format!(
                        "hand-over frame of {len} bytes (at most {MAX_FRAME})"
                    )));
                }
                if self.buf.len() >= 4 + len {
                    let msg = serde_json::from_slice(&self.buf[4..4 + len])
                        .map_err(|e| invalid(format!("hand-over message: {e}")));
                    self.buf.drain(..4 + len);
                    return msg;
                }
            }
            let mut chunk = [0u8; 8192];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let (n, got) = {
                let m = recvmsg::<()>(
                    s.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(timed_out)?;
                let mut got = Vec::new();
                for c in m
                    .cmsgs()
                    .map_err(|_| invalid("hand-over descriptors truncated"))?
                {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        got.extend(v);
                    }
                }
                (m.bytes, got)
            };
            for fd in got {
                // Owned at once, so that every descriptor is closed on any
                // error below.
                self.fds.push_back(owned(fd));
            }
            if self.fds.len() > MAX_FDS {
                return Err(invalid("too many hand-over descriptors"));
            }
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The first `n` descriptors received and not yet taken.
    pub fn take_fds(&mut self, n: usize) -> std::io::Result<Vec<OwnedFd>> {
        if n > self.fds.len() {
            return Err(invalid(format!(
                "a frame lists {n} sockets but {} descriptors came",
                self.fds.len()
            )));
        }
        Ok(self.fds.drain(..n).collect())
    }
}

/// Takes ownership of a descriptor `recvmsg` just created.
#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was installed in this process by recvmsg(2)'s
    // SCM_RIGHTS a moment ago; nothing else refers to it or closes it, so
    // this OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn frames_and_descriptors_cross_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hello = Msg::Hello {
            version: 1,
            min_version: 1,
            pid: 7,
        };
        send(&a, &hello, &[]).unwrap();
        let socks = Msg::Sockets {
            sockets: vec![
                SocketDesc {
                    kind: Kind::Tcp,
                    address: addr,
                    tag: None,
                },
                SocketDesc {
                    kind: Kind::QuicForward,
                    address: addr,
                    tag: Some(7),
                },
            ],
            more: false,
        };
        send(&a, &socks, &[l.as_fd().as_raw_fd()]).unwrap();
        let mut r = Reader::new();
        assert_eq!(r.read(&b).unwrap(), hello);
        assert_eq!(r.read(&b).unwrap(), socks);
        let fds = r.take_fds(1).unwrap();
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        assert!(r.take_fds(1).is_err());
    }

    #[test]
    fn oversized_frames_eof_and_silence_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut r = Reader::new();
        assert_eq!(r.read(&b).unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        (&a).write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .unwrap();
        assert_eq!(
            r.read(&b).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[0, 0, 0, 2, b'{']).unwrap();
        drop(a);
        let mut r = Reader::new();
        assert_eq!(
            r.read(&b).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
