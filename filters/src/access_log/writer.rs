//! The sinks of access logs: lines (each ending with its own newline)
//! handed to a writer thread through a bounded queue so that the data path never
//! waits on the file. When the queue is full the line is dropped and
//! counted (`meshgate_access_log_dropped_total`). Writers are shared per
//! path, so filter chains and reloads that name the same file never
//! interleave partial lines. After SIGUSR1 (`meshgate_core::signals`) a
//! writer reopens its path before its next line, so a file renamed by
//! logrotate stops receiving lines and the new file at the path gets them.

use metrics::Counter;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

/// Lines queued per file before new ones are dropped.
const QUEUE: usize = 65_536;

/// A shared, non-blocking writer of one log file.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// The writer of `path` (`/dev/stdout` and `/dev/stderr` work), opened
    /// for appending on first use.
    pub fn open(path: &str) -> io::Result<Arc<AccessLog>> {
        static WRITERS: OnceLock<Mutex<HashMap<String, Arc<AccessLog>>>> = OnceLock::new();
        let mut all = WRITERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(w) = all.get(path) {
            return Ok(w.clone());
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let owned = path.to_string();
        std::thread::Builder::new()
            .name("meshgate-access-log".into())
            .spawn(move || write_loop(rx, file, &owned))?;
        let w = Arc::new(AccessLog {
            tx,
            dropped: metrics::counter!(meshgate_core::metrics::names::ACCESS_LOG_DROPPED_TOTAL, "path" => path.to_string()),
        });
        all.insert(path.to_string(), w.clone());
        Ok(w)
    }

    /// Queues one line (with its newline); never blocks.
    pub fn log(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty; reopens
/// `path` first when a SIGUSR1 came since the last batch (if it cannot,
/// it keeps the file it has, and says so).
fn write_loop(rx: Receiver<String>, file: std::fs::File, path: &str) {
    use meshgate_core::signals::log_generation;
    let mut generation = log_generation();
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    while let Ok(line) = rx.recv() {
        let now = log_generation();
        if now != generation {
            generation = now;
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => {
                    let _ = out.flush();
                    out = io::BufWriter::with_capacity(64 * 1024, f);
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot reopen the access log; writing to the old file")
                }
            }
        }
        let mut next = Some(line);
        while let Some(line) = next {
            let _ = out.write_all(line.as_bytes());
            next = match rx.try_recv() {
                Ok(l) => Some(l),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        let _ = out.flush();
    }
}
