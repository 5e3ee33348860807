//! Hot upgrade by listener hand-over (`meshgate run --upgrade-socket PATH`).
//!
//! The running process listens on the Unix socket at PATH. A new process
//! started with the same PATH (and a possibly different config) loads and
//! checks its config first (a bad one exits before touching the old
//! process), then connects and speaks protocol version `VERSION`:
//!
//! ```text
//!   new -> old  hello {version, min_version, pid}
//!   old -> new  hello {version, min_version, pid}    or refused {reason}
//!   old -> new  sockets {sockets: [{kind, address}], more} + SCM_RIGHTS, repeated while `more`
//!   new -> old  ready          (bound the rest, loaded, xDS's first update applied)
//!   old -> new  draining {pid} (stopped accepting; drains, then exits 0)
//! ```
//!
//! Listening sockets are shared, never closed in between: both processes
//! hold the same socket until the old one exits, so a connection waiting
//! in the accept queue is accepted by whichever accepts next. The new
//! process takes a socket for each listener whose configured address
//! (and kind) matches one of the old process's, binds the others, and
//! accepts only after `draining` (before, the old one still accepts).
//! It then renames its own Unix socket over PATH, so that the next
//! upgrade finds it. Any failure before `ready` (EOF, a timeout, a
//! refused version, a bad frame) leaves the old process serving; the new
//! one exits non-zero with the reason in its log. Framing and bounds:
//! `wire`.

pub mod migrate;
pub mod quic_steer;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
pub use wire::Kind;
use wire::{Msg, Reader, SocketDesc};

use crate::metrics::names;

/// The protocol version this binary speaks, and the oldest it accepts.
/// Version 2 adds connection migration (`migrate`); with a version-1
/// peer, open connections drain as before.
pub const VERSION: u32 = 2;
pub const MIN_VERSION: u32 = 1;
/// Each hand-over read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one's `ready` (its config
/// load, binds and xDS initial fetch).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the new process waits for xDS's first update before it
/// reports ready without it (Envoy's `initial_fetch_timeout` default).
pub const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Set when `--upgrade-socket` is given: only then are listening
/// sockets kept for a hand-over (one extra descriptor each).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The running listeners' sockets, as the next hand-over sends them.
#[allow(clippy::type_complexity)]
static PUBLISHED: Mutex<Vec<(Kind, SocketAddr, Arc<OwnedFd>)>> = Mutex::new(Vec::new());
/// Sockets received from the old process and not yet taken by a bind.
static INHERITED: Mutex<Option<HashMap<(Kind, SocketAddr), OwnedFd>>> = Mutex::new(None);

/// Whether listening sockets are kept for a hand-over.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A copy of a listening socket to publish for the next hand-over (None
/// when upgrades are off, or for a port-0 address, which no other config
/// can name).
pub fn keep(kind: Kind, address: SocketAddr, fd: BorrowedFd<'_>) -> Option<Arc<OwnedFd>> {
    if !enabled() || (address.port() == 0 && kind != Kind::Admin) {
        return None;
    }
    match fd.try_clone_to_owned() {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::warn!(%address, error = %e, "cannot keep the socket for a hot upgrade");
            None
        }
    }
}

/// Replaces the published sockets (after each listener change; the
/// admin socket stays).
pub fn publish(listeners: impl Iterator<Item = (Kind, SocketAddr, Arc<OwnedFd>)>) {
    let mut p = PUBLISHED.lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|(k, _, _)| *k == Kind::Admin);
    p.extend(listeners);
}

/// Publishes the admin socket.
pub fn publish_admin(address: SocketAddr, fd: Arc<OwnedFd>) {
    let mut p = PUBLISHED.lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|(k, _, _)| *k != Kind::Admin);
    p.push((Kind::Admin, address, fd));
}

/// Closes every kept copy (the server stops: its ports must close).
pub fn release_all() {
    PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    INHERITED.lock().unwrap_or_else(|e| e.into_inner()).take();
    migrate::release();
}

/// The inherited socket for `kind` at the configured `address`, if the
/// old process handed one over and no bind took it yet.
pub fn take(kind: Kind, address: SocketAddr) -> Option<OwnedFd> {
    let fd = INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .remove(&(kind, address))?;
    tracing::info!(?kind, %address, "listening socket inherited from the old process");
    metrics::counter!(names::UPGRADE_SOCKETS_INHERITED_TOTAL).increment(1);
    Some(fd)
}

/// An inherited TCP listening socket, with this config's backlog
/// (`listen(2)` again only resizes the queue; nothing queued is lost).
pub fn tcp_listener(fd: OwnedFd, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::from(fd);
    s.set_nonblocking(true)?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// An inherited UDP socket.
pub fn udp_socket(fd: OwnedFd) -> std::io::Result<tokio::net::UdpSocket> {
    let s = std::net::UdpSocket::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s)
}

/// Whether a dynamic update completes xDS's initial fetch, as Envoy's
/// initialization does: listeners and clusters received, and nothing
/// warming (every listener's routes, every cluster's endpoints there).
pub fn initial_fetch_done(info: &crate::dynamic::DynamicInfo) -> bool {
    let has = |t: &str| info.version.split_whitespace().any(|w| w.starts_with(t));
    info.warming.is_empty() && has("lds=") && has("cds=")
}

fn count(role: &'static str, result: &'static str) {
    metrics::counter!(names::UPGRADE_HANDOVER_TOTAL, "role" => role, "result" => result)
        .increment(1);
}

/// The new process's side of a hand-over in progress.
pub struct Handover {
    stream: UnixStream,
    reader: Reader,
    old_pid: u32,
    /// The version both speak (2 and up: connections migrate).
    version: u32,
}

/// The new process's start: if a process answers on `path`, receives its
/// listening sockets (kept for `take`) and returns the hand-over to
/// finish with `take_over`; `None` if nobody answers there.
pub async fn connect(path: &Path) -> Result<Option<Handover>, String> {
    ENABLED.store(true, Ordering::Relaxed);
    let path = path.to_path_buf();
    let r = tokio::task::spawn_blocking(move || connect_blocking(&path))
        .await
        .map_err(|e| format!("hand-over task failed: {e}"))?;
    if r.is_err() {
        count("new", "error");
    }
    r
}

fn connect_blocking(path: &Path) -> Result<Option<Handover>, String> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::info!(path = %path.display(), "no running meshgate on the upgrade socket: binding every listener");
            return Ok(None);
        }
        Err(e) => return Err(format!("upgrade socket {}: {e}", path.display())),
    };
    let fail = |what: &str, e: std::io::Error| format!("hot upgrade: {what}: {e}");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| fail("socket options", e))?;
    let hello = Msg::Hello {
        version: VERSION,
        min_version: MIN_VERSION,
        pid: std::process::id(),
    };
    wire::send(&stream, &hello, &[]).map_err(|e| fail("sending hello", e))?;
    let mut reader = Reader::new();
    let (old_pid, version) = match reader
        .read(&stream)
        .map_err(|e| fail("reading the old process's hello", e))?
    {
        Msg::Hello {
            version,
            min_version,
            pid,
        } => {
            if version < MIN_VERSION || min_version > VERSION {
                return Err(format!(
                    "hot upgrade: the old process speaks versions {min_version}..={version}, this one {MIN_VERSION}..={VERSION}"
                ));
            }
            (pid, version.min(VERSION))
        }
        Msg::Refused { reason } => {
            return Err(format!("hot upgrade refused by the old process: {reason}"));
        }
        other => return Err(format!("hot upgrade: unexpected message {other:?}")),
    };
    let mut inherited = HashMap::new();
    loop {
        match reader
            .read(&stream)
            .map_err(|e| fail("reading sockets", e))?
        {
            Msg::Sockets { sockets, more } => {
                let fds = reader
                    .take_fds(sockets.len())
                    .map_err(|e| fail("reading sockets", e))?;
                for (d, fd) in sockets.into_iter().zip(fds) {
                    if let (Kind::QuicForward, Some(tag)) = (d.kind, d.tag) {
                        quic_steer::follow(tag);
                    }
                    inherited.insert((d.kind, d.address), fd);
                }
                if !more {
                    break;
                }
            }
            other => return Err(format!("hot upgrade: unexpected message {other:?}")),
        }
    }
    tracing::info!(
        old_pid,
        sockets = inherited.len(),
        "hot upgrade: received the old process's listening sockets"
    );
    *INHERITED.lock().unwrap_or_else(|e| e.into_inner()) = Some(inherited);
    Ok(Some(Handover {
        stream,
        reader,
        old_pid,
        version,
    }))
}

/// Binds the upgrade socket for the processes to come: on a temporary
/// path beside `path`, renamed over it once this process serves (a
/// process connecting meanwhile still reaches the old one).
pub fn bind_next(path: &Path) -> Result<(UnixListener, PathBuf), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l =
        UnixListener::bind(&tmp).map_err(|e| format!("upgrade socket {}: {e}", tmp.display()))?;
    Ok((l, tmp))
}

/// Puts the upgrade socket bound by `bind_next` at `path`.
pub fn install_next(tmp: &Path, path: &Path) -> Result<(), String> {
    std::fs::rename(tmp, path).map_err(|e| {
        format!(
            "upgrade socket: cannot rename {} to {}: {e}",
            tmp.display(),
            path.display()
        )
    })
}

/// The new process is ready: tells the old one, which stops accepting
/// and drains. Inherited sockets no bind took are closed (their
/// listeners are not in this config).
pub async fn take_over(h: Handover) -> Result<(), String> {
    let rt = tokio::runtime::Handle::current();
    let r = tokio::task::spawn_blocking(move || {
        let Handover {
            stream,
            mut reader,
            old_pid,
            version,
        } = h;
        let fail = |what: &str, e: std::io::Error| format!("hot upgrade: {what}: {e}");
        // A refused `ready` means the old process gave up on this
        // hand-over (or died): it keeps serving, this one exits.
        wire::send(&stream, &Msg::Ready, &[]).map_err(|e| fail("sending ready", e))?;
        // Once `ready` is out, the old process may already have stopped
        // accepting: whatever comes back, this one serves (the sockets
        // are shared, two processes accepting for a moment is harmless).
        match reader.read(&stream) {
            Ok(Msg::Draining { pid }) => {
                tracing::info!(
                    old_pid = pid,
                    version,
                    "hot upgrade: the old process stopped accepting and drains; this one serves"
                );
                if version >= 2 {
                    migrate::start_receiver(stream, reader, rt);
                }
            }
            Ok(other) => tracing::warn!(
                old_pid,
                "hot upgrade: unexpected message {other:?} after ready; serving"
            ),
            Err(e) => tracing::warn!(
                old_pid,
                error = %e,
                "hot upgrade: no answer to ready; serving"
            ),
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("hand-over task failed: {e}"))
    .and_then(|r| r);
    let left = INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map_or(0, |m| m.len());
    if left > 0 {
        tracing::info!(
            sockets = left,
            "hot upgrade: sockets of listeners this config does not have are closed here"
        );
    }
    count("new", if r.is_ok() { "ok" } else { "error" });
    r
}

/// The old process's side: serves hand-overs on `listener` one at a time
/// until one completes (then cancels `handed_over`, which makes the
/// server stop accepting and drain) or `stop` is cancelled.
pub async fn serve(
    listener: UnixListener,
    handed_over: CancellationToken,
    stop: CancellationToken,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "upgrade socket: cannot serve it");
            return;
        }
    };
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match conn.and_then(|(s, _)| {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let token = handed_over.clone();
        let r = tokio::task::spawn_blocking(move || hand_over(&stream, &token)).await;
        match r {
            Ok(Ok(())) => {
                count("old", "ok");
                return;
            }
            Ok(Err((result, why))) => {
                count("old", result);
                tracing::warn!("hot upgrade abandoned, this process keeps serving: {why}");
            }
            Err(e) => {
                count("old", "error");
                tracing::warn!("hot upgrade task failed, this process keeps serving: {e}");
            }
        }
    }
}

/// One hand-over, old side. Errors: (result label, reason).
fn hand_over(
    s: &UnixStream,
    handed_over: &CancellationToken,
) -> Result<(), (&'static str, String)> {
    let (reader, version) = hand_over_sockets(s, handed_over)?;
    if version >= 2 {
        // Before the drain starts: connections told to drain migrate.
        match s.try_clone() {
            Ok(s) => migrate::start_sender(s, reader),
            Err(e) => {
                tracing::warn!(error = %e, "connection migration off; open connections drain")
            }
        }
    } else {
        tracing::info!(
            version,
            "the new process does not take connections (protocol version 1): open connections drain"
        );
    }
    handed_over.cancel();
    Ok(())
}

/// The hand-over up to `draining`: the reader, and the version both speak.
fn hand_over_sockets(
    s: &UnixStream,
    _handed_over: &CancellationToken,
) -> Result<(Reader, u32), (&'static str, String)> {
    let err = |what: &str, e: std::io::Error| ("error", format!("{what}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| err("socket options", e))?;
    let mut reader = Reader::new();
    let (peer, version) = match reader.read(s).map_err(|e| err("reading hello", e))? {
        Msg::Hello {
            version,
            min_version,
            pid,
        } => {
            if version < MIN_VERSION || min_version > VERSION {
                let reason = format!(
                    "this process speaks hand-over versions {MIN_VERSION}..={VERSION}, the new one {min_version}..={version}"
                );
                let _ = wire::send(
                    s,
                    &Msg::Refused {
                        reason: reason.clone(),
                    },
                    &[],
                );
                return Err(("refused", reason));
            }
            (pid, version.min(VERSION))
        }
        other => return Err(("error", format!("unexpected message {other:?}"))),
    };
    tracing::info!(
        new_pid = peer,
        "hot upgrade: a new process asks for the listening sockets"
    );
    let hello = Msg::Hello {
        version: VERSION,
        min_version: MIN_VERSION,
        pid: std::process::id(),
    };
    wire::send(s, &hello, &[]).map_err(|e| err("sending hello", e))?;
    let mut socks: Vec<(Kind, SocketAddr, Arc<OwnedFd>)> =
        PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if version >= 2 {
        // Each QUIC socket goes with a channel for the packets of the
        // connections this process keeps serving (`quic_steer`).
        let channels: Vec<_> = socks
            .iter()
            .filter(|(k, _, _)| *k == Kind::Quic)
            .filter_map(|(_, a, _)| {
                let ch = quic_steer::channel_for(*a)?;
                Some((Kind::QuicForward, *a, Arc::new(OwnedFd::from(ch))))
            })
            .collect();
        socks.extend(channels);
    }
    let mut batches = socks.chunks(wire::MAX_FDS_PER_FRAME).peekable();
    if batches.peek().is_none() {
        let m = Msg::Sockets {
            sockets: Vec::new(),
            more: false,
        };
        wire::send(s, &m, &[]).map_err(|e| err("sending sockets", e))?;
    }
    while let Some(batch) = batches.next() {
        let m = Msg::Sockets {
            sockets: batch
                .iter()
                .map(|(kind, address, _)| SocketDesc {
                    kind: *kind,
                    address: *address,
                    tag: (*kind == Kind::QuicForward).then(quic_steer::tag),
                })
                .collect(),
            more: batches.peek().is_some(),
        };
        let fds: Vec<_> = batch
            .iter()
            .map(|(_, _, fd)| fd.as_fd().as_raw_fd())
            .collect();
        wire::send(s, &m, &fds).map_err(|e| err("sending sockets", e))?;
    }
    s.set_read_timeout(Some(READY_TIMEOUT))
        .map_err(|e| err("socket options", e))?;
    match reader.read(s) {
        Ok(Msg::Ready) => {}
        Ok(other) => return Err(("error", format!("unexpected message {other:?}"))),
        Err(e) => {
            return Err(err(
                &format!("the new process {peer} did not become ready (its log says why)"),
                e,
            ));
        }
    }
    tracing::info!(
        new_pid = peer,
        "hot upgrade: the new process is ready; this one stops accepting and drains"
    );
    // Told first, so that the message is out before this process can
    // exit; both accepting for a moment is harmless (shared sockets). The
    // new process already holds every socket: a lost `draining` only
    // delays its start, it cannot undo the hand-over.
    if let Err(e) = wire::send(
        s,
        &Msg::Draining {
            pid: std::process::id(),
        },
        &[],
    ) {
        tracing::warn!(error = %e, "hot upgrade: cannot tell the new process");
    }
    quic_steer::handed_over();
    Ok((reader, version))
}
