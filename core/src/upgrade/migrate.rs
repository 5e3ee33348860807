//! Connection migration (MOSN's smooth upgrade), hand-over protocol
//! version 2: after `draining`, the old process keeps the upgrade
//! connection and sends it the live connections that have no way to ask
//! their client to reconnect (plaintext RPC connections, idle HTTP/1.1
//! keep-alive connections), each with its socket (`SCM_RIGHTS`), the bytes
//! read but not processed and its listener and filter chain; the new
//! process resumes each through that listener's pipeline at a frame
//! boundary.
//!
//! ```text
//!   old -> new  connections {connections: [ConnDesc]} + SCM_RIGHTS   (batches)
//!   new -> old  accepted {accepted: [bool]}
//! ```
//!
//! A codec asks [`open`] when its connection gets the drain notice; if
//! so, it stops reading frames, lets its calls finish and flushes their
//! responses, then calls [`migrate`] with the socket and what it read
//! past the last frame. Anything that goes wrong (a TLS or filtered
//! transport, too many carried bytes, no such listener in the new
//! process, the upgrade socket failing, a timeout) falls back to the
//! drain: the connection closes, counted by reason in
//! `meshgate_upgrade_migration_fallback_total`. Bounds: `MAX_CARRIED_BYTES`
//! per connection, `MAX_PER_BATCH` connections per frame (and the frame
//! limit), `MIGRATE_TIMEOUT` per connection.

use super::wire::{self, ConnDesc, Msg, Reader};
use crate::listener::RunningListener;
use crate::metrics::names;
use crate::network::{ConnectionInfo, DownstreamIo, PrefixedIo, Signal};
use base64::Engine as _;
use bytes::Bytes;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Bytes read but not processed that one connection may carry.
pub const MAX_CARRIED_BYTES: usize = 32 * 1024;
/// Connections sent in one frame (also bounded by `wire::MAX_FRAME`).
pub const MAX_PER_BATCH: usize = 32;
/// How long a connection waits for the new process's answer.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting to be sent.
const QUEUE: usize = 4096;

type Answer = oneshot::Sender<Result<(), &'static str>>;
type Item = (ConnDesc, OwnedFd, Answer);

/// Set while a version-2 hand-over takes connections (old process).
static OPEN: AtomicBool = AtomicBool::new(false);
static OUT: Mutex<Option<mpsc::Sender<Item>>> = Mutex::new(None);
/// This process's running listeners by configured address.
#[allow(clippy::type_complexity)]
static LISTENERS: Mutex<Vec<(SocketAddr, Arc<RunningListener>)>> = Mutex::new(Vec::new());
/// What a resumed connection is served with: the server's drain signal
/// and its connection tracker.
static SERVING: Mutex<Option<(Signal, TaskTracker)>> = Mutex::new(None);

/// Whether a connection told to drain may migrate instead.
pub fn open() -> bool {
    OPEN.load(Ordering::Relaxed)
}

fn fallback(reason: &'static str) -> &'static str {
    metrics::counter!(names::UPGRADE_MIGRATION_FALLBACK_TOTAL, "reason" => reason).increment(1);
    reason
}

/// Publishes the running listeners (server, after each change).
pub(crate) fn publish(listeners: Vec<(SocketAddr, Arc<RunningListener>)>) {
    *LISTENERS.lock().unwrap_or_else(|e| e.into_inner()) = listeners;
}

/// The server's drain signal and tracker, for resumed connections.
pub(crate) fn serving(drain: Signal, tracker: TaskTracker) {
    *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = Some((drain, tracker));
}

/// The server stops: nothing more is resumed here (its own connections
/// still find their listeners to migrate).
pub(crate) fn release() {
    SERVING.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Hands a drained connection to the new process: `io` is the codec's
/// transport (flushed, nothing more will be written), `read` what the
/// codec read from it past the last frame it processed. `Err(reason)`:
/// it was not migrated (counted); the caller closes it, as a drain would.
pub async fn migrate(
    info: &ConnectionInfo,
    io: PrefixedIo,
    read: &[u8],
) -> Result<(), &'static str> {
    if !open() {
        return Err(fallback("closed"));
    }
    if info.tls.is_some() || info.proxy_protocol.is_some() {
        return Err(fallback("not_plain_tcp"));
    }
    let (preface, io) = io.into_parts();
    let DownstreamIo::Tcp(stream) = io else {
        return Err(fallback("not_plain_tcp"));
    };
    if read.len() + preface.len() > MAX_CARRIED_BYTES {
        return Err(fallback("too_many_bytes"));
    }
    let mut unread = Vec::with_capacity(read.len() + preface.len());
    unread.extend_from_slice(read);
    unread.extend_from_slice(&preface);
    let listener_address = LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(_, l)| l.compiled.load().name == info.listener)
        .map(|(a, _)| *a);
    let Some(listener_address) = listener_address else {
        return Err(fallback("refused"));
    };
    let fd: OwnedFd = match stream.into_std() {
        Ok(s) => s.into(),
        Err(_) => return Err(fallback("error")),
    };
    let desc = ConnDesc {
        listener_address,
        listener: info.listener.to_string(),
        filter_chain: info.filter_chain.as_deref().map(str::to_string),
        peer: info.peer_addr,
        local: info.local_addr,
        unread: base64::engine::general_purpose::STANDARD.encode(&unread),
    };
    let Some(tx) = OUT.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return Err(fallback("closed"));
    };
    let (answer, got) = oneshot::channel();
    if tx.try_send((desc, fd, answer)).is_err() {
        return Err(fallback("error"));
    }
    match tokio::time::timeout(MIGRATE_TIMEOUT, got).await {
        Ok(Ok(Ok(()))) => {
            metrics::counter!(names::UPGRADE_CONNECTIONS_MIGRATED_TOTAL, "direction" => "out")
                .increment(1);
            tracing::debug!(conn = info.id, peer = %info.peer_addr, "connection migrated to the new process");
            Ok(())
        }
        Ok(Ok(Err(reason))) => Err(fallback(reason)),
        Ok(Err(_)) => Err(fallback("error")),
        Err(_) => Err(fallback("timeout")),
    }
}

/// Old process, after `draining` on a version-2 hand-over: opens
/// migration and sends the connections `migrate` queues, until the
/// upgrade socket fails (then every later one falls back).
pub(crate) fn start_sender(stream: UnixStream, reader: Reader) {
    let (tx, rx) = mpsc::channel(QUEUE);
    *OUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    OPEN.store(true, Ordering::Relaxed);
    let spawned = std::thread::Builder::new()
        .name("meshgate-migrate".into())
        .spawn(move || send_loop(stream, reader, rx));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "connection migration off: cannot start its thread");
        close();
    }
}

fn close() {
    OPEN.store(false, Ordering::Relaxed);
    OUT.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// A description's share of a frame (its JSON, with room for the
/// separators).
fn weight(d: &ConnDesc) -> usize {
    d.unread.len() + d.listener.len() + d.filter_chain.as_ref().map_or(0, |c| c.len()) + 256
}

fn send_loop(stream: UnixStream, mut reader: Reader, mut rx: mpsc::Receiver<Item>) {
    let _ = stream.set_read_timeout(Some(MIGRATE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(MIGRATE_TIMEOUT));
    let mut next: Option<Item> = None;
    loop {
        let Some(first) = next.take().or_else(|| rx.blocking_recv()) else {
            return;
        };
        let mut size = weight(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_PER_BATCH {
            match rx.try_recv() {
                Ok(it) => {
                    let w = weight(&it.0);
                    if size + w > wire::MAX_FRAME - 1024 {
                        next = Some(it);
                        break;
                    }
                    size += w;
                    batch.push(it);
                }
                Err(_) => break,
            }
        }
        let mut descs = Vec::with_capacity(batch.len());
        let mut fds = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for (d, fd, a) in batch {
            descs.push(d);
            fds.push(fd);
            answers.push(a);
        }
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let n = descs.len();
        let sent = wire::send(&stream, &Msg::Connections { connections: descs }, &raw)
            .and_then(|()| reader.read(&stream));
        // Ours are closed either way: the new process holds its own
        // copies of those it took.
        drop(fds);
        match sent {
            Ok(Msg::Accepted { accepted }) if accepted.len() == n => {
                for (a, ok) in answers.into_iter().zip(accepted) {
                    let _ = a.send(if ok { Ok(()) } else { Err("refused") });
                }
            }
            other => {
                let why = match other {
                    Ok(m) => format!("unexpected message {m:?}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("connection migration stopped, the rest drains: {why}");
                close();
                for a in answers {
                    let _ = a.send(Err("error"));
                }
                rx.close();
                if let Some((_, _, a)) = next.take() {
                    let _ = a.send(Err("error"));
                }
                while let Ok((_, _, a)) = rx.try_recv() {
                    let _ = a.send(Err("error"));
                }
                return;
            }
        }
    }
}

/// New process, after `draining` on a version-2 hand-over: resumes the
/// connections the old process sends until it closes the upgrade socket
/// (it exits once drained).
pub(crate) fn start_receiver(stream: UnixStream, reader: Reader, rt: tokio::runtime::Handle) {
    let spawned = std::thread::Builder::new()
        .name("meshgate-migrate".into())
        .spawn(move || receive_loop(stream, reader, rt));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot take migrated connections: the old process drains them");
    }
}

fn receive_loop(stream: UnixStream, mut reader: Reader, rt: tokio::runtime::Handle) {
    // The old process may take its whole drain time to send the last
    // connection; it closes the socket when it exits.
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(MIGRATE_TIMEOUT));
    loop {
        let connections = match reader.read(&stream) {
            Ok(Msg::Connections { connections }) => connections,
            Ok(other) => {
                tracing::warn!("connection migration: unexpected message {other:?}; stopped");
                return;
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!(error = %e, "connection migration: the upgrade socket failed");
                }
                return;
            }
        };
        let fds = match reader.take_fds(connections.len()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "connection migration: bad frame; stopped");
                return;
            }
        };
        let _enter = rt.enter();
        let accepted = connections
            .into_iter()
            .zip(fds)
            .map(|(d, fd)| match resume(&d, fd) {
                Ok(()) => {
                    metrics::counter!(names::UPGRADE_CONNECTIONS_MIGRATED_TOTAL, "direction" => "in")
                        .increment(1);
                    true
                }
                Err(why) => {
                    tracing::info!(listener = %d.listener, peer = %d.peer, why, "migrated connection refused; the old process closes it");
                    false
                }
            })
            .collect();
        if let Err(e) = wire::send(&stream, &Msg::Accepted { accepted }, &[]) {
            tracing::warn!(error = %e, "connection migration: cannot answer; stopped");
            return;
        }
    }
}

/// Resumes one connection through its listener here (in the runtime's
/// context).
fn resume(d: &ConnDesc, fd: OwnedFd) -> Result<(), &'static str> {
    let unread = base64::engine::general_purpose::STANDARD
        .decode(&d.unread)
        .map_err(|_| "bad unread bytes")?;
    if unread.len() > MAX_CARRIED_BYTES {
        return Err("too many unread bytes");
    }
    let listener = LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(a, _)| *a == d.listener_address)
        .map(|(_, l)| l.clone())
        .ok_or("no listener at that address here")?;
    let (drain, tracker) = SERVING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or("not serving")?;
    let stream = std::net::TcpStream::from(fd);
    listener.resume(d, Bytes::from(unread), stream, drain, &tracker)
}
