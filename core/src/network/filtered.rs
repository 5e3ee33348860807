//! The byte path of a filter chain whose filters see bytes: `FilteredIo`
//! sits between the downstream stream and the terminal filter. Bytes read
//! from the peer go through the read filters in chain order (Envoy's
//! `onData`), and what the last one passes is what the terminal reads;
//! bytes the terminal writes go through the write filters in reverse chain
//! order (`onWrite`) before they reach the peer. A filter may pass bytes on
//! (changed or not), hold them until more come (`StopIteration`, bounded by
//! `MAX_HELD_BYTES`) or close the connection. Built only for chains that
//! have such a filter: otherwise the terminal gets the raw stream.

use super::{ConnectionInfo, DataStatus, DownstreamIo, FilterStatus, ReadFilter, WriteFilter};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes a filter may hold back (Envoy's default
/// `per_connection_buffer_limit_bytes`, 1 MiB): past it the connection
/// closes, so a filter waiting for more cannot grow without bound.
pub const MAX_HELD_BYTES: usize = 1 << 20;

/// How much is read from the peer at once.
const READ_CHUNK: usize = 16 * 1024;

/// A filter and the bytes it holds back.
struct Stage<F: ?Sized> {
    filter: Box<F>,
    held: BytesMut,
}

/// Why a filter chain closed a connection: the `reason` label of
/// `meshgate_listener_network_filter_close_total`.
fn closed(listener: &str, reason: &'static str) -> io::Error {
    metrics::counter!(crate::metrics::names::LISTENER_NETWORK_FILTER_CLOSE_TOTAL, "listener" => listener.to_string(), "reason" => reason).increment(1);
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("a network filter closed the connection ({reason})"),
    )
}

/// The downstream stream as the terminal filter sees it through the
/// chain's read and write filters.
pub struct FilteredIo {
    io: DownstreamIo,
    listener: std::sync::Arc<str>,
    reads: Vec<Stage<dyn ReadFilter>>,
    /// In the order they run: the chain's write filters reversed.
    writes: Vec<Stage<dyn WriteFilter>>,
    /// Passed every read filter: what the terminal reads next.
    ready: BytesMut,
    /// The peer ended its side (and the filters were told).
    read_eof: bool,
    /// Passed every write filter, not yet written to the peer.
    out: BytesMut,
    /// The terminal ended its side (and the filters were told).
    write_eof: bool,
    /// A filter closed the connection.
    closed: bool,
    scratch: Box<[u8]>,
}

impl FilteredIo {
    /// Wraps `io`; `preface` (bytes the listener read already) goes through
    /// the read filters first. `Err`: a filter refused the connection (the
    /// refusal is counted).
    pub fn new(
        io: DownstreamIo,
        preface: Bytes,
        info: &ConnectionInfo,
        reads: Vec<Box<dyn ReadFilter>>,
        writes: Vec<Box<dyn WriteFilter>>,
    ) -> io::Result<Self> {
        let mut me = Self {
            io,
            listener: info.listener.clone(),
            reads: reads
                .into_iter()
                .map(|filter| Stage {
                    filter,
                    held: BytesMut::new(),
                })
                .collect(),
            writes: writes
                .into_iter()
                .map(|filter| Stage {
                    filter,
                    held: BytesMut::new(),
                })
                .collect(),
            ready: BytesMut::new(),
            read_eof: false,
            out: BytesMut::new(),
            write_eof: false,
            closed: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        };
        for s in &mut me.reads {
            if s.filter.on_new_connection(info) == FilterStatus::Close {
                return Err(closed(&me.listener, "filter"));
            }
        }
        if !preface.is_empty() {
            me.push_read(BytesMut::from(&preface[..]), false)?;
        }
        Ok(me)
    }

    /// Runs `data` (and `end`) through the read filters into `ready`.
    fn push_read(&mut self, data: BytesMut, end: bool) -> io::Result<()> {
        match run(&mut self.reads, data, end, |f, d, e| f.on_data(d, e)) {
            Ok(Some(passed)) => {
                self.ready.unsplit(passed);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => {
                self.closed = true;
                Err(closed(&self.listener, reason))
            }
        }
    }

    /// Runs `data` (and `end`) through the write filters into `out`.
    fn push_write(&mut self, data: BytesMut, end: bool) -> io::Result<()> {
        match run(&mut self.writes, data, end, |f, d, e| f.on_write(d, e)) {
            Ok(Some(passed)) => {
                self.out.unsplit(passed);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => {
                self.closed = true;
                Err(closed(&self.listener, reason))
            }
        }
    }

    /// Writes `out` to the peer until it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn aborted() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "a network filter closed the connection",
        )
    }
}

/// Runs the stages in order: each gets what the one before passed,
/// appended to what it holds. `Some(bytes)`: what the last one passed;
/// `None`: a stage holds everything for now; `Err(reason)`: close.
fn run<F: ?Sized>(
    stages: &mut [Stage<F>],
    mut data: BytesMut,
    end: bool,
    call: impl Fn(&mut F, &mut BytesMut, bool) -> DataStatus,
) -> Result<Option<BytesMut>, &'static str> {
    for s in stages {
        if data.is_empty() && s.held.is_empty() && !end {
            return Ok(None);
        }
        s.held.unsplit(data);
        match call(&mut s.filter, &mut s.held, end) {
            DataStatus::Continue => {}
            // At the end of the stream there is nothing more to wait for:
            // what the filter still holds is passed on.
            DataStatus::StopIteration if !end => {
                if s.held.len() > MAX_HELD_BYTES {
                    return Err("buffer_limit");
                }
                return Ok(None);
            }
            DataStatus::StopIteration => {}
            DataStatus::Close => return Err("filter"),
        }
        data = s.held.split();
    }
    Ok(Some(data))
}

impl AsyncRead for FilteredIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.reads.is_empty() && me.ready.is_empty() {
            return Pin::new(&mut me.io).poll_read(cx, buf);
        }
        loop {
            if !me.ready.is_empty() {
                let n = me.ready.len().min(buf.remaining());
                buf.put_slice(&me.ready[..n]);
                me.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.closed {
                return Poll::Ready(Err(Self::aborted()));
            }
            if me.read_eof {
                return Poll::Ready(Ok(()));
            }
            // The peer may be waiting for what was written before it
            // sends more: written bytes still held here go out first.
            if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            let mut rb = ReadBuf::new(&mut me.scratch);
            ready!(Pin::new(&mut me.io).poll_read(cx, &mut rb))?;
            let filled = rb.filled();
            if filled.is_empty() {
                me.read_eof = true;
                me.push_read(BytesMut::new(), true)?;
            } else {
                let data = BytesMut::from(filled);
                me.push_read(data, false)?;
            }
        }
    }
}

impl AsyncWrite for FilteredIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.closed {
            return Poll::Ready(Err(Self::aborted()));
        }
        // What was accepted before goes out before more is accepted: at
        // most one write's worth waits here.
        ready!(me.poll_drain(cx))?;
        if me.writes.is_empty() {
            return Pin::new(&mut me.io).poll_write(cx, buf);
        }
        me.push_write(BytesMut::from(buf), false)?;
        // Accepted; a peer not ready yet gets it on the next write, flush
        // or read.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.write_eof && !me.closed {
            me.write_eof = true;
            me.push_write(BytesMut::new(), true)?;
        }
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Signal;

    /// Refuses a stream starting with `deny`, holds everything else.
    struct DenyOrHold;

    impl ReadFilter for DenyOrHold {
        fn on_data(&mut self, data: &mut BytesMut, _: bool) -> DataStatus {
            if data.starts_with(b"deny") {
                DataStatus::Close
            } else {
                DataStatus::StopIteration
            }
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: 7,
            listener: "edge".into(),
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            local_addr: "127.0.0.1:2".parse().unwrap(),
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Signal::new(),
            proxy_protocol: None,
        }
    }

    /// Wraps one end of a duplex stream, `preface` first.
    fn wrap(preface: Vec<u8>) -> io::Result<FilteredIo> {
        let (_, server) = tokio::io::duplex(16);
        FilteredIo::new(
            DownstreamIo::Boxed(Box::new(server)),
            Bytes::from(preface),
            &info(),
            vec![Box::new(DenyOrHold)],
            Vec::new(),
        )
    }

    #[test]
    fn refusals_and_overflows_are_counted_by_reason() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let e = wrap(b"deny\n".to_vec()).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
            // Held back, but within the bound: accepted.
            assert!(wrap(vec![b'x'; MAX_HELD_BYTES]).is_ok());
            let e = wrap(vec![b'x'; MAX_HELD_BYTES + 1]).err().expect("over");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        });
        let text = handle.render();
        for reason in ["filter", "buffer_limit"] {
            let line = format!(
                "{}{{listener=\"edge\",reason=\"{reason}\"}} 1",
                crate::metrics::names::LISTENER_NETWORK_FILTER_CLOSE_TOTAL
            );
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }
}
