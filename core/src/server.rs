//! The server: binds what a snapshot describes, runs the accept loops and
//! the admin server, reloads the config file on SIGHUP or when it changes
//! (a new snapshot swapped in; a bad file keeps the old one), and on
//! SIGTERM/SIGINT stops accepting, lets open connections finish for the
//! drain time, and returns. Other signals: `signals`.

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigSource, load_file};
use crate::dynamic::{DynamicInfo, DynamicReceiver, merge, rename_error};
use crate::error::{ConfigError, Error};
use crate::listener::{CompiledListener, RunningListener, bind};
use crate::network::Signal;
use crate::registry::Registry;
use crate::snapshot::update::ListenerUpdate;
use crate::snapshot::{BuildMode, ListenerKey, Reload, Snapshot};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
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
    /// How often the config file is checked for changes (zero: only on
    /// SIGHUP).
    pub watch_interval: Duration,
    /// `--upgrade-socket`: the Unix socket hot upgrades go through
    /// (`crate::upgrade`).
    pub upgrade_socket: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            drain_time: Duration::from_secs(5),
            watch_interval: Duration::from_secs(1),
            upgrade_socket: None,
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
    run_with_dynamic(path, registry, opts, stop, None).await
}

/// As `run`, and also applies the dynamic updates of `dynamic` (xDS),
/// merged with the file's static listeners and clusters.
pub async fn run_with_dynamic(
    path: &Path,
    registry: Arc<Registry>,
    opts: ServerOptions,
    stop: CancellationToken,
    mut dynamic: Option<DynamicReceiver>,
) -> Result<(), Error> {
    let prometheus = crate::metrics::install_recorder();
    crate::signals::install();
    let (config, source) = load_file(path)?;
    let mut file_cfg = (config.clone(), source.clone());
    let mut dyn_cfg: Option<(Config, DynamicInfo)> = None;
    let snapshot = Snapshot::build(config, &source, &registry, BuildMode::Serve)?;
    // A hot upgrade receives the old process's sockets before binding
    // (the config is checked first: a bad one never reaches the old one).
    let mut handover = match &opts.upgrade_socket {
        Some(p) => crate::upgrade::connect(p).await.map_err(upgrade_error)?,
        None => None,
    };

    // Bind everything before serving anything: a port in use is a config error.
    let mut bound = Vec::with_capacity(snapshot.listeners.len());
    for (i, l) in snapshot.listeners.iter().enumerate() {
        let sock = Socket::bind(l)
            .map_err(|e| bind_error(&source, format!("listeners[{i}].address"), l.address, e))?;
        bound.push((l.clone(), sock));
    }
    let admin_sock = match snapshot.admin_address {
        Some(a) => Some(
            match crate::upgrade::take(crate::upgrade::Kind::Admin, a) {
                Some(fd) => crate::upgrade::tcp_listener(fd, 128),
                None => bind(a, 128),
            }
            .map_err(|e| bind_error(&source, "admin.address".into(), a, e))?,
        ),
        None => None,
    };
    if let (Some(a), Some(s)) = (snapshot.admin_address, &admin_sock)
        && let Some(fd) = crate::upgrade::keep(crate::upgrade::Kind::Admin, a, s.as_fd())
    {
        crate::upgrade::publish_admin(a, fd);
    }
    let admin_pipe = admin::bind_pipe(&snapshot).map_err(|(f, e)| source.error(f, e))?;

    let accept_stop = CancellationToken::new();
    let drain = Signal::new();
    let tracker = TaskTracker::new();
    *DETACHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(tracker.clone());
    crate::upgrade::migrate::serving(drain.clone(), tracker.clone());
    let background = CancellationToken::new();
    // Accept loops and the admin wait for it: at once, or after a hot
    // upgrade's hand-over (the old process accepts until then).
    let gate = CancellationToken::new();
    let handed_over = CancellationToken::new();
    let admin_accept = background.child_token();
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));

    let mut live = Live {
        listeners: HashMap::new(),
        bound: Default::default(),
        accept_stop: accept_stop.clone(),
        drain: drain.clone(),
        tracker: tracker.clone(),
        dns: background.child_token(),
        gate: gate.clone(),
    };
    snapshot.load().clusters.spawn_dns_refresh(live.dns.clone());
    crate::overload::spawn(snapshot.clone(), background.clone());
    for (compiled, sock) in bound {
        live.start(compiled, sock);
    }
    live.publish();
    let admin_state = Arc::new(AdminState {
        snapshot: snapshot.clone(),
        listeners: live.bound.clone(),
        prometheus,
        draining: false.into(),
        control: admin::Control::new(
            stop.clone(),
            accept_stop.clone(),
            drain.clone(),
            opts.drain_time,
        ),
    });
    if let Some(sock) = admin_sock {
        tracing::info!(address = ?sock.local_addr().ok(), "admin listening");
        let (g, st, acc) = (gate.clone(), admin_state.clone(), admin_accept.clone());
        tokio::spawn(async move {
            g.cancelled().await;
            admin::serve(sock, st, acc).await
        });
    }
    if let Some(pipe) = admin_pipe {
        tracing::info!(path = ?pipe.local_addr().ok(), "admin serving on a Unix socket");
        tokio::spawn(admin::serve_pipe(
            pipe,
            admin_state.clone(),
            background.clone(),
        ));
    }
    metrics::gauge!(crate::metrics::names::CONFIG_VERSION).set(snapshot.load().version as f64);

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut stamp = file_stamp(path);
    let mut tick = tokio::time::interval(if opts.watch_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        opts.watch_interval
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop_sig = stop_signal();
    tokio::pin!(stop_sig);
    // A hot upgrade reports ready after xDS's first update (or its
    // timeout); without one, at once.
    let mut fetched = dynamic.is_none();
    let fetch_deadline = tokio::time::sleep(crate::upgrade::INITIAL_FETCH_TIMEOUT);
    tokio::pin!(fetch_deadline);
    if handover.is_none() {
        start_serving(&opts, None, &handed_over, &background).await?;
        gate.cancel();
    }
    loop {
        if handover.is_some() && fetched {
            start_serving(&opts, handover.take(), &handed_over, &background).await?;
            gate.cancel();
        }
        let why = tokio::select! {
            _ = &mut stop_sig => break,
            _ = stop.cancelled() => break,
            _ = handed_over.cancelled() => break,
            _ = &mut fetch_deadline, if !fetched => {
                tracing::warn!(timeout = ?crate::upgrade::INITIAL_FETCH_TIMEOUT, "hot upgrade: no xDS update yet; taking over with the static config");
                fetched = true;
                continue;
            }
            Some(u) = async { match dynamic.as_mut() { Some(d) => d.recv().await, None => std::future::pending().await } } => {
                let res = apply(&file_cfg.0, &file_cfg.1, Some((&u.config, &u.info)), Reload::Dynamic, &registry, &snapshot, &mut live).await;
                match &res {
                    Ok(version) => {
                        metrics::counter!(crate::metrics::names::CONFIG_RELOAD_TOTAL, "result" => "ok").increment(1);
                        metrics::gauge!(crate::metrics::names::CONFIG_VERSION).set(*version as f64);
                        tracing::info!(source = %u.info.source, dynamic_version = %u.info.version, version, "dynamic config applied");
                        fetched |= crate::upgrade::initial_fetch_done(&u.info);
                        dyn_cfg = Some((u.config, u.info));
                    }
                    Err(e) => {
                        metrics::counter!(crate::metrics::names::CONFIG_RELOAD_TOTAL, "result" => "error").increment(1);
                        tracing::warn!(source = %u.info.source, "dynamic config refused, the previous config keeps serving: {e}");
                    }
                }
                let _ = u.reply.send(res);
                continue;
            }
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick(), if !opts.watch_interval.is_zero() => {
                let now = file_stamp(path);
                if now == stamp {
                    continue;
                }
                stamp = now;
                "file changed"
            }
        };
        let loaded = crate::config::load_file_off_worker(path)
            .await
            .map_err(Error::from);
        let res = match loaded {
            Ok((cfg, src)) => {
                let d = dyn_cfg.as_ref().map(|(c, i)| (c, i));
                let r = apply(&cfg, &src, d, Reload::File, &registry, &snapshot, &mut live).await;
                if r.is_ok() {
                    file_cfg = (cfg, src);
                }
                r.map_err(Error::from)
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(version) => {
                metrics::counter!(crate::metrics::names::CONFIG_RELOAD_TOTAL, "result" => "ok")
                    .increment(1);
                metrics::gauge!(crate::metrics::names::CONFIG_VERSION).set(version as f64);
                tracing::info!(trigger = why, version, "config reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::names::CONFIG_RELOAD_TOTAL, "result" => "error")
                    .increment(1);
                tracing::error!(
                    trigger = why,
                    "config reload refused, the previous config keeps serving: {e}"
                );
            }
        }
    }
    if handed_over.is_cancelled() {
        // The new process answers the admin port from now on.
        admin_accept.cancel();
    }
    tracing::info!(drain_time = ?opts.drain_time, "stop requested: no longer accepting, draining connections");
    admin_state.draining.store(true, Ordering::Relaxed);
    accept_stop.cancel();
    // Close the listening sockets' hand-over copies with the listeners.
    drop(live);
    crate::upgrade::release_all();
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

/// The running server's drain tracker, for work a connection hands off
/// to a task of its own (an upgraded WebSocket tunnel): the drain (SIGTERM,
/// or a hot upgrade's old process) waits for it up to the drain time.
static DETACHED: std::sync::Mutex<Option<TaskTracker>> = std::sync::Mutex::new(None);

/// A token the drain waits for while it is held (none outside a server).
pub fn detached_token() -> Option<tokio_util::task::task_tracker::TaskTrackerToken> {
    DETACHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|t| t.token())
}

fn upgrade_error(e: String) -> Error {
    Error::Io(std::io::Error::other(e))
}

/// With `--upgrade-socket`: finishes a hot upgrade (`handover`: the old
/// process stops accepting) and serves the upgrade socket for the next
/// one, which cancels `handed_over`.
async fn start_serving(
    opts: &ServerOptions,
    handover: Option<crate::upgrade::Handover>,
    handed_over: &CancellationToken,
    background: &CancellationToken,
) -> Result<(), Error> {
    let Some(path) = &opts.upgrade_socket else {
        return Ok(());
    };
    let (next, tmp) = crate::upgrade::bind_next(path).map_err(upgrade_error)?;
    let r = match handover {
        Some(h) => crate::upgrade::take_over(h).await,
        None => Ok(()),
    }
    .and_then(|()| crate::upgrade::install_next(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(upgrade_error(e));
    }
    tokio::spawn(crate::upgrade::serve(
        next,
        handed_over.clone(),
        background.clone(),
    ));
    Ok(())
}

fn key(l: &CompiledListener) -> ListenerKey {
    ListenerKey::of(l)
}

/// A bound listening socket.
enum Socket {
    Tcp(tokio::net::TcpListener),
    /// With its UDP socket's hand-over copy (quinn keeps the socket).
    Quic(quinn::Endpoint, Option<Arc<OwnedFd>>),
    Udp(tokio::net::UdpSocket),
    /// `bind_to_port: false`: no socket (`crate::original_dst`).
    Virtual,
}

impl Socket {
    fn bind(l: &CompiledListener) -> std::io::Result<Socket> {
        use crate::upgrade::{Kind, take};
        Ok(if l.quic.is_some() {
            let sock = match take(Kind::Quic, l.address) {
                Some(fd) => std::net::UdpSocket::from(fd),
                None => crate::quic::socket(l)?,
            };
            let copy = crate::upgrade::keep(Kind::Quic, l.address, sock.as_fd());
            Socket::Quic(crate::quic::endpoint(l, sock)?, copy)
        } else if l.udp.is_some() {
            Socket::Udp(match take(Kind::Udp, l.address) {
                Some(fd) => crate::upgrade::udp_socket(fd)?,
                None => crate::udp::bind(l)?,
            })
        } else {
            if !crate::original_dst::binds(l) {
                return Ok(Socket::Virtual);
            }
            Socket::Tcp(match take(Kind::Tcp, l.address) {
                Some(fd) => crate::upgrade::tcp_listener(fd, l.backlog)?,
                None => crate::original_dst::bind(l)?,
            })
        })
    }

    /// A copy of the socket for the next hot upgrade (`crate::upgrade`).
    fn keep(&self, address: SocketAddr) -> Option<Arc<OwnedFd>> {
        use crate::upgrade::{Kind, keep};
        match self {
            Socket::Tcp(s) => keep(Kind::Tcp, address, s.as_fd()),
            Socket::Quic(_, copy) => copy.clone(),
            Socket::Udp(s) => keep(Kind::Udp, address, s.as_fd()),
            Socket::Virtual => None,
        }
    }

    /// The address the kernel gave (the configured one, or with the
    /// ephemeral port for port 0).
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Quic(ep, _) => ep.local_addr(),
            Socket::Udp(s) => s.local_addr(),
            Socket::Virtual => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The listeners a running server serves, keyed by identity.
struct Live {
    listeners: HashMap<ListenerKey, LiveListener>,
    /// What `/listeners` on the admin shows, published after each change.
    bound: Arc<ArcSwap<Vec<admin::BoundListener>>>,
    accept_stop: CancellationToken,
    drain: Signal,
    tracker: TaskTracker,
    /// Parent of every cluster's DNS refresh and timers (each also stops
    /// when a reload drops or replaces its cluster).
    dns: CancellationToken,
    /// Opened when this process may accept (see `run_with_dynamic`).
    gate: CancellationToken,
}

struct LiveListener {
    running: Arc<RunningListener>,
    stop: CancellationToken,
    /// The address its socket is bound to.
    bound: SocketAddr,
    /// Its socket's copy for a hot upgrade.
    handover: Option<Arc<OwnedFd>>,
}

impl Live {
    fn start(&mut self, compiled: Arc<CompiledListener>, sock: Socket) {
        let bound = sock.local_addr().unwrap_or(compiled.address);
        tracing::info!(listener = %compiled.name, address = %compiled.address, %bound, quic = compiled.quic.is_some(), "listening");
        let k = key(&compiled);
        let handover = sock.keep(compiled.address);
        let running = RunningListener::new(compiled);
        let stop = self.accept_stop.child_token();
        let (drain, tracker) = (self.drain.clone(), self.tracker.clone());
        let (gate, until) = (self.gate.clone(), stop.clone());
        // Each loop starts when the gate opens (or never, if stopped first).
        let gated = |serve: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
            tokio::spawn(async move {
                tokio::select! {
                    _ = gate.cancelled() => serve.await,
                    _ = until.cancelled() => {}
                }
            });
        };
        match sock {
            Socket::Tcp(sock) => gated(Box::pin(running.clone().accept_loop(
                sock,
                stop.clone(),
                drain,
                tracker,
            ))),
            Socket::Quic(ep, _) => gated(Box::pin(running.clone().quic_accept_loop(
                ep,
                stop.clone(),
                drain,
                tracker,
            ))),
            Socket::Udp(sock) => gated(Box::pin(crate::udp::serve(
                running.clone(),
                sock,
                stop.clone(),
                tracker,
            ))),
            Socket::Virtual => {}
        }
        self.listeners.insert(
            k,
            LiveListener {
                running,
                stop,
                bound,
                handover,
            },
        );
    }

    /// Publishes the running listeners and their bound addresses for
    /// `/listeners`, sorted by name (a reload may rename a listener that
    /// keeps its socket, so the name is read from its current config).
    fn publish(&self) {
        let mut all: Vec<admin::BoundListener> = self
            .listeners
            .values()
            .map(|ll| {
                let c = ll.running.compiled.load();
                admin::BoundListener {
                    name: c.name.to_string(),
                    address: c.address.to_string(),
                    quic: c.quic.is_some(),
                    bound: vec![ll.bound.to_string()],
                    inbound: c.inbound.then(|| admin::InboundDrain {
                        stop: ll.stop.clone(),
                        listener: ll.running.clone(),
                    }),
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.name, a.quic).cmp(&(&b.name, b.quic)));
        self.bound.store(Arc::new(all));
        crate::original_dst::publish(self.listeners.values().map(|ll| &ll.running));
        crate::upgrade::migrate::publish(
            self.listeners
                .iter()
                .map(|(k, ll)| (k.address, ll.running.clone()))
                .collect(),
        );
        crate::upgrade::publish(self.listeners.iter().filter_map(|(k, ll)| {
            let c = ll.running.compiled.load();
            let kind = if c.quic.is_some() {
                crate::upgrade::Kind::Quic
            } else if c.udp.is_some() {
                crate::upgrade::Kind::Udp
            } else {
                crate::upgrade::Kind::Tcp
            };
            Some((kind, k.address, ll.handover.clone()?))
        }));
    }
}

/// What tells that the file changed: its identity (device, inode), length
/// and modification and change times, in nanoseconds. The inode matters:
/// file times have the kernel tick's grain, so a file written and renamed
/// into place twice within one tick (same length) would otherwise look
/// unchanged, and the second change would be missed for good. A rename
/// always brings a new inode (the new file existed beside the old one).
fn file_stamp(path: &Path) -> Option<(u64, u64, u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// Builds a snapshot from the file and swaps it in: listeners on a new
/// address are bound first (a failure refuses the whole reload), then the
/// endpoint sets staged for live clusters are stored (endpoint-only
/// changes apply to the next request, on open connections too). Listeners
/// that stay get the new filter chains for new connections; their open
/// connections retire only if the listener's own config changed or a
/// cluster it uses was rebuilt. Listeners that went away stop accepting
/// and retire.
/// The config is the file's, merged with the dynamic part if any; an error
/// about a dynamic resource is named after it. `reload` is what triggered
/// the apply (a file reload re-reads the TLS files of clusters).
async fn apply(
    file: &Config,
    source: &ConfigSource,
    dynamic: Option<(&Config, &DynamicInfo)>,
    reload: Reload,
    registry: &Arc<Registry>,
    current: &ArcSwap<Snapshot>,
    live: &mut Live,
) -> Result<u64, ConfigError> {
    let (config, counts) = merge(file, dynamic.map(|d| d.0))?;
    let no_dynamic = Config::default();
    let (dyn_config, dyn_source) = match dynamic {
        Some((c, info)) => (c, info.source.as_str()),
        None => (&no_dynamic, ""),
    };
    let rename = |e: ConfigError| rename_error(e, dyn_config, counts, dyn_source);
    let old = current.load_full();
    let mut next = build_off_worker(config, source, registry, &old, reload)
        .await
        .map_err(rename)?;
    next.dynamic = dynamic.map(|d| d.1.clone());
    if let Some(d) = dynamic {
        next.source = format!("{} + {}", next.source, d.1.source);
    }
    if next.admin_address != old.admin_address {
        tracing::warn!("admin.address changed: it applies after a restart");
    }
    // Bind what is new before changing anything.
    let mut fresh = Vec::new();
    for (i, l) in next.listeners.iter().enumerate() {
        if !live.listeners.contains_key(&key(l)) {
            let sock = Socket::bind(l).map_err(|e| {
                rename(bind_error(
                    source,
                    format!("listeners[{i}].address"),
                    l.address,
                    e,
                ))
            })?;
            fresh.push((l.clone(), sock));
        }
    }
    // Nothing can refuse the snapshot any more: the DNS refresh and timers
    // of the clusters it drops or replaces stop (the others' go on), and
    // endpoint-only changes go into the live clusters.
    next.clusters.retire_replaced();
    next.clusters.commit_endpoints();
    // Route tables staged for the subscriptions of listeners that keep
    // their connections go live, before any new connection is accepted
    // under the new snapshot.
    for l in &next.listeners {
        l.commit_routes();
    }
    // What each listener that stays does with its open connections was
    // decided while building (`snapshot::update`).
    let mut keep = std::collections::HashSet::new();
    for (l, update) in next.listeners.iter().zip(&next.updates) {
        if let Some(ll) = live.listeners.get(&key(l)) {
            keep.insert(key(l));
            match update.unwrap_or(ListenerUpdate::Replaced) {
                // Still swapped: new connections get the new snapshot's
                // filter chains (the same clusters).
                ListenerUpdate::Same => ll.running.compiled.store(l.clone()),
                ListenerUpdate::TlsOnly => {
                    tracing::info!(listener = %l.name, address = %l.address, "listener TLS updated: new handshakes use it, open connections go on");
                    ll.running.compiled.store(l.clone());
                }
                ListenerUpdate::Routes => {
                    tracing::info!(listener = %l.name, address = %l.address, "listener routes updated live: open connections take them on their next stream");
                    ll.running.compiled.store(l.clone());
                }
                ListenerUpdate::Replaced => {
                    tracing::info!(listener = %l.name, address = %l.address, "listener updated; open connections retire");
                    ll.running.replace(l.clone());
                }
            }
        }
    }
    let gone: Vec<ListenerKey> = live
        .listeners
        .keys()
        .filter(|a| !keep.contains(a))
        .cloned()
        .collect();
    for a in gone {
        if let Some(ll) = live.listeners.remove(&a) {
            tracing::info!(address = %a.address, bound = %ll.bound, quic = a.quic, "listener removed: stops accepting, open connections retire");
            ll.stop.cancel();
            ll.running.retire_all();
        }
    }
    for (compiled, sock) in fresh {
        live.start(compiled, sock);
    }
    live.publish();
    next.clusters.spawn_dns_refresh(live.dns.clone());
    let version = next.version;
    current.store(Arc::new(next));
    Ok(version)
}

/// Builds a reload's snapshot on a blocking-pool thread: resolving
/// `strict_dns` names (getaddrinfo blocks) and compiling thousands of
/// routes must not stall the event loop, which with `--concurrency 1` is
/// the only one serving traffic.
async fn build_off_worker(
    config: Config,
    source: &ConfigSource,
    registry: &Arc<Registry>,
    old: &Arc<Snapshot>,
    reload: Reload,
) -> Result<Snapshot, ConfigError> {
    let (src, reg, prev) = (source.clone(), registry.clone(), old.clone());
    let delay = build_delay_for_tests();
    tokio::task::spawn_blocking(move || {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Snapshot::build_from(config, &src, &reg, BuildMode::Serve, Some((&prev, reload)))
    })
    .await
    .unwrap_or_else(|e| Err(source.error("", format!("the config build failed: {e}"))))
}

/// `MESHGATE_TEST_RELOAD_BUILD_DELAY_MS`: every reload's snapshot build
/// first sleeps that many milliseconds, standing in for a slow DNS lookup,
/// so that an end-to-end test can show that traffic keeps flowing
/// meanwhile. Read once per reload, never on the data path.
fn build_delay_for_tests() -> Option<Duration> {
    let v = std::env::var("MESHGATE_TEST_RELOAD_BUILD_DELAY_MS").ok()?;
    v.trim().parse().ok().map(Duration::from_millis)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two same-length rewrites renamed into place within one clock tick
    /// still look different (the CI failure this fixes: the second of two
    /// quick route changes was never loaded).
    #[test]
    fn a_quick_same_length_rename_changes_the_stamp() {
        let dir = std::env::temp_dir().join(format!("meshgate-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        // Both files get the same modification time, as two writes within
        // one tick do on a file system with coarse timestamps.
        let tick = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let put = |text: &str| {
            let tmp = dir.join("c.new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&tmp)
                .unwrap()
                .set_modified(tick)
                .unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        put("v: r1");
        let a = file_stamp(&path).unwrap();
        put("v: r2");
        let b = file_stamp(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(a, b);
    }
}
