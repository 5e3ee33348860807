//! Process signals other than the stop (SIGTERM/SIGINT) and reload
//! (SIGHUP) ones the server waits on: SIGUSR1 asks every log writer to
//! reopen its file (logrotate's `postrotate kill -USR1`, as nginx and Envoy
//! do), and the signals whose default action would end the process with no
//! drain (SIGUSR2, SIGALRM, ...) are caught, logged and counted instead.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::signal::unix::{SignalKind, signal};

/// Bumped by every SIGUSR1: a log writer that saw another value reopens
/// its file at the same path before writing its next line.
static LOG_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current log generation (see `LOG_GENERATION`). Read by log writer
/// threads, never on the data path.
pub fn log_generation() -> u64 {
    LOG_GENERATION.load(Ordering::Acquire)
}

/// Asks log writers to reopen their files; counted in
/// `meshgate_server_log_reopen_total`.
pub fn reopen_logs() {
    LOG_GENERATION.fetch_add(1, Ordering::AcqRel);
    metrics::counter!(crate::metrics::names::SERVER_LOG_REOPEN_TOTAL).increment(1);
    tracing::info!("log files reopen on their next line (SIGUSR1 or POST /reopen_logs)");
}

/// Signals whose default action terminates the process (signal(7)) and that
/// meshgate has no use for. SIGPIPE is already ignored by the Rust runtime;
/// SIGKILL and SIGSTOP cannot be caught; SIGSEGV, SIGBUS, SIGILL, SIGFPE
/// and SIGABRT report real faults and keep their default.
const IGNORED: &[(libc::c_int, &str)] = &[
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGSYS, "SIGSYS"),
];

/// Handles SIGUSR1 (log reopen) and the `IGNORED` signals until the
/// runtime stops. Each caught signal is logged and counted in
/// `meshgate_server_signal_total{signal}`. Installed before serving, so a
/// signal that arrives early is already caught.
pub fn install() {
    match signal(SignalKind::user_defined1()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    metrics::counter!(crate::metrics::names::SERVER_SIGNAL_TOTAL, "signal" => "SIGUSR1")
                        .increment(1);
                    reopen_logs();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGUSR1"),
    }
    for &(raw, name) in IGNORED {
        match signal(SignalKind::from_raw(raw)) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        metrics::counter!(crate::metrics::names::SERVER_SIGNAL_TOTAL, "signal" => name)
                            .increment(1);
                        tracing::warn!(
                            signal = name,
                            "signal ignored (SIGTERM drains and stops, SIGHUP reloads, SIGUSR1 reopens logs)"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!(signal = name, error = %e, "cannot handle signal"),
        }
    }
}
