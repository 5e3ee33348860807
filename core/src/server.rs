//! The server: binds what a snapshot describes, runs the accept loops and
//! the admin server, and on SIGTERM/SIGINT stops accepting, lets open
//! connections finish for the drain time, and returns.

use crate::admin::{self, AdminState};
use crate::config::load_file;
use crate::error::{ConfigError, Error};
use crate::listener::{RunningListener, bind};
use crate::registry::Registry;
use crate::snapshot::{BuildMode, Snapshot};
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runtime options from the command line.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long open connections may go on after a stop signal.
    pub drain_time: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            drain_time: Duration::from_secs(5),
        }
    }
}

/// Loads and validates a config file as `meshgate validate` does.
pub fn validate(path: &Path, registry: &Registry) -> Result<Snapshot, ConfigError> {
    let (config, source) = load_file(path)?;
    Snapshot::build(config, &source, registry, BuildMode::Validate)
}

fn bind_error(
    source: &crate::config::ConfigSource,
    field: String,
    addr: std::net::SocketAddr,
    e: std::io::Error,
) -> ConfigError {
    let why = if e.kind() == std::io::ErrorKind::AddrInUse {
        "address already in use".to_string()
    } else {
        e.to_string()
    };
    source.error(field, format!("cannot listen on {addr}: {why}"))
}

/// Runs the config file at `path` until a stop signal (or `stop`) and a drain.
pub async fn run(
    path: &Path,
    registry: Arc<Registry>,
    opts: ServerOptions,
    stop: CancellationToken,
) -> Result<(), Error> {
    let prometheus = crate::metrics::install_recorder();
    let (config, source) = load_file(path)?;
    let snapshot = Snapshot::build(config, &source, &registry, BuildMode::Serve)?;

    // Bind everything before serving anything: a port in use is a config error.
    let mut bound = Vec::with_capacity(snapshot.listeners.len());
    for (i, l) in snapshot.listeners.iter().enumerate() {
        let sock = bind(l.address, l.backlog)
            .map_err(|e| bind_error(&source, format!("listeners[{i}].address"), l.address, e))?;
        bound.push((l.clone(), sock));
    }
    let admin_sock = match snapshot.admin_address {
        Some(a) => {
            Some(bind(a, 128).map_err(|e| bind_error(&source, "admin.address".into(), a, e))?)
        }
        None => None,
    };

    let accept_stop = CancellationToken::new();
    let drain = CancellationToken::new();
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    snapshot
        .clusters
        .spawn_dns_refresh(&snapshot.config.clusters, background.clone());
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));

    for (compiled, sock) in bound {
        tracing::info!(listener = %compiled.name, address = %compiled.address, "listening");
        let running = RunningListener::new(compiled);
        tokio::spawn(running.accept_loop(
            sock,
            accept_stop.clone(),
            drain.clone(),
            tracker.clone(),
        ));
    }
    let admin_state = Arc::new(AdminState {
        snapshot: snapshot.clone(),
        prometheus,
        draining: false.into(),
    });
    if let Some(sock) = admin_sock {
        tracing::info!(address = ?sock.local_addr().ok(), "admin listening");
        tokio::spawn(admin::serve(sock, admin_state.clone(), background.clone()));
    }

    tokio::select! {
        _ = stop_signal() => {}
        _ = stop.cancelled() => {}
    }
    tracing::info!(drain_time = ?opts.drain_time, "stop requested: no longer accepting, draining connections");
    admin_state.draining.store(true, Ordering::Relaxed);
    accept_stop.cancel();
    drain.cancel();
    tracker.close();
    if tokio::time::timeout(opts.drain_time, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "drain time over; closing remaining connections"
        );
    } else {
        tracing::info!("all connections drained");
    }
    background.cancel();
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
