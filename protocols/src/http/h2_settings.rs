//! The upstream HTTP/2 peer's stream limit, read off the wire. hyper keeps
//! the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` to itself and queues
//! requests beyond it without bound; the endpoint's pool (`MuxPool`) needs
//! the limit to see a connection as full, so that a request past it opens
//! another connection or waits in the cluster's pending queue
//! (`max_pending_requests`). This module watches the bytes the upstream
//! sends: it walks the frame headers (RFC 9113 section 4.1) and reads
//! SETTINGS frames (section 6.5) for parameter 0x3. It only observes: the
//! h2 codec still parses and validates every byte.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTING_LEN: usize = 6;

/// The frame walker's state across reads.
struct Walker {
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// The current frame is a SETTINGS frame (not an ACK).
    settings: bool,
    entry: [u8; SETTING_LEN],
    entry_len: usize,
    /// The peer's limit; `u32::MAX` until it sends one (RFC 9113: no
    /// limit until then).
    limit: Arc<AtomicU32>,
}

impl Walker {
    fn new(limit: Arc<AtomicU32>) -> Self {
        Self {
            header: [0; FRAME_HEADER],
            header_len: 0,
            remaining: 0,
            settings: false,
            entry: [0; SETTING_LEN],
            entry_len: 0,
            limit,
        }
    }

    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.remaining == 0 {
                let n = (FRAME_HEADER - self.header_len).min(b.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&b[..n]);
                self.header_len += n;
                b = &b[n..];
                if self.header_len == FRAME_HEADER {
                    let h = &self.header;
                    self.remaining =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    self.settings = h[3] == SETTINGS && h[4] & ACK == 0;
                    self.header_len = 0;
                    self.entry_len = 0;
                }
                continue;
            }
            let n = self.remaining.min(b.len());
            if self.settings {
                for &byte in &b[..n] {
                    self.entry[self.entry_len] = byte;
                    self.entry_len += 1;
                    if self.entry_len == SETTING_LEN {
                        self.entry_len = 0;
                        let e = &self.entry;
                        if u16::from_be_bytes([e[0], e[1]]) == MAX_CONCURRENT_STREAMS {
                            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
                            self.limit.store(v, Ordering::Relaxed);
                        }
                    }
                }
            }
            self.remaining -= n;
            b = &b[n..];
        }
    }
}

/// An upstream HTTP/2 connection's bytes, with the peer's stream limit
/// noted as it arrives.
pub(super) struct Watched<T> {
    io: T,
    walker: Walker,
}

impl<T> Watched<T> {
    /// `io`, and the limit it keeps up to date.
    pub(super) fn new(io: T) -> (Self, Arc<AtomicU32>) {
        let limit = Arc::new(AtomicU32::new(u32::MAX));
        (
            Self {
                io,
                walker: Walker::new(limit.clone()),
            },
            limit,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            me.walker.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let l = payload.len();
        let mut f = vec![
            (l >> 16) as u8,
            (l >> 8) as u8,
            l as u8,
            ty,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_the_limit_across_any_split_and_skips_other_frames() {
        let mut wire = frame(0x0, 0, &[0x3, 0, 0, 0, 9, 9, 9]); // DATA that looks like a setting
        // SETTINGS: INITIAL_WINDOW_SIZE then MAX_CONCURRENT_STREAMS = 1.
        wire.extend(frame(SETTINGS, 0, &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1]));
        wire.extend(frame(SETTINGS, ACK, &[]));
        wire.extend(frame(0x6, 0, &[0; 8])); // PING
        for split in 1..wire.len() {
            let limit = Arc::new(AtomicU32::new(u32::MAX));
            let mut w = Walker::new(limit.clone());
            for chunk in wire.chunks(split) {
                w.feed(chunk);
            }
            assert_eq!(limit.load(Ordering::Relaxed), 1, "split {split}");
        }
        // A later SETTINGS raises it again; an ACK changes nothing.
        let limit = Arc::new(AtomicU32::new(u32::MAX));
        let mut w = Walker::new(limit.clone());
        w.feed(&frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 1]));
        w.feed(&frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        w.feed(&frame(SETTINGS, ACK, &[0, 3, 0, 0, 0, 7]));
        assert_eq!(limit.load(Ordering::Relaxed), 100);
    }
}
