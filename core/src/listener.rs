//! Listeners: binding (SO_REUSEADDR, backlog), the accept loop with its
//! connection limit, the choice of a filter chain (destination port, SNI,
//! ALPN, source CIDR), the chain's TLS handshake when it terminates TLS,
//! and the run of the chain's network filters.

use crate::cluster::{ClusterManager, ClusterRefs};
use crate::config::{ConfigSource, FilterChainConfig, ListenerConfig};
use crate::error::ConfigError;
use crate::metrics::ListenerStats;
use crate::network::{
    BuildContext, BuiltFilter, Connection, ConnectionInfo, DownstreamIo, FilterStatus, FilteredIo,
    NetworkFilter, PrefixedIo, Signal, TerminalFilter,
};
use crate::registry::Registry;
use crate::router::ChainRoutes;
use crate::tls_inspect;
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A compiled filter-chain match.
#[derive(Debug, Default, Clone)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub server_names: Vec<String>,
    pub application_protocols: Vec<String>,
    pub source_prefixes: Vec<IpNet>,
    /// Destination CIDRs (`prefix_ranges`).
    pub destination_prefixes: Vec<IpNet>,
}

/// A filter chain ready to serve connections.
pub struct FilterChain {
    pub name: Option<Arc<str>>,
    pub matcher: ChainMatch,
    /// Terminates TLS before the filters, when configured.
    pub tls: Option<Arc<crate::tls::DownstreamTls>>,
    filters: Vec<Arc<dyn NetworkFilter>>,
    terminal: Arc<dyn TerminalFilter>,
    /// The route tables its filters subscribed to, by filter position.
    pub routes: ChainRoutes,
    /// Some filter sees the connection's bytes (`NetworkFilter::sees_bytes`).
    sees_bytes: bool,
}

/// A listener compiled from config; immutable, swapped whole on reload.
pub struct CompiledListener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub backlog: u32,
    pub max_connections: u32,
    /// Accepts in a row before the accept loop yields (`u32::MAX`: never).
    pub accept_burst: u32,
    pub inspect_timeout: Duration,
    /// Some chain matches on SNI or ALPN, so ClientHellos are read before
    /// choosing.
    pub inspects_sni: bool,
    pub chains: Vec<FilterChain>,
    pub stats: ListenerStats,
    /// Served over QUIC (UDP) instead of TCP.
    pub quic: Option<crate::quic::QuicTransport>,
    /// The PROXY protocol listener filter, when configured.
    pub proxy_protocol: Option<Arc<crate::proxy_protocol::ProxyProtocolFilter>>,
    /// `traffic_direction: INBOUND` (`/drain_listeners?inboundonly`).
    pub inbound: bool,
    /// The clusters its filters and routes resolved, by name: a reload
    /// replaces the listener (its open connections retire) only if one of
    /// them is no longer the same `Arc` or its own config changed.
    pub clusters: ClusterRefs,
    /// Listener filters and socket options of sidecar mode, when any is
    /// set (`crate::original_dst`).
    pub sidecar: Option<Box<crate::original_dst::ListenerSidecar>>,
    /// `socket_options`, set when the socket is bound.
    pub socket_options: Vec<crate::socket_option::SocketOption>,
    /// Served as a UDP proxy instead of TCP (`crate::udp`).
    pub udp: Option<Arc<crate::udp::UdpProxy>>,
    /// Envoy's `Listener.access_log` (`crate::listener_log`), when set.
    pub access_log: Option<Arc<dyn crate::listener_log::ListenerLog>>,
}

impl CompiledListener {
    /// Compiles listener `index` of the config. With `take_over`, the live
    /// listener whose open connections this one keeps (`crate::snapshot::update`),
    /// its filters take over that listener's route subscriptions.
    pub fn build(
        index: usize,
        cfg: &ListenerConfig,
        registry: &Registry,
        clusters: &ClusterManager,
        source: &ConfigSource,
        take_over: Option<&CompiledListener>,
    ) -> Result<Self, ConfigError> {
        let path = format!("listeners[{index}]");
        if cfg.name.is_empty() {
            return Err(source.error(format!("{path}.name"), "must not be empty"));
        }
        let address: SocketAddr = cfg.address.parse().map_err(|_| {
            source.error(
                format!("{path}.address"),
                format!("invalid address '{}': want ip:port", cfg.address),
            )
        })?;
        let udp = crate::udp::compile(cfg, &path, clusters)
            .map_err(|(field, msg)| source.error(field, msg))?;
        if cfg.filter_chains.is_empty() && udp.is_none() {
            return Err(source.error(
                format!("{path}.filter_chains"),
                "needs at least one filter chain",
            ));
        }
        if cfg.per_connection_buffer_limit_bytes == Some(0) {
            return Err(source.error(
                format!("{path}.per_connection_buffer_limit_bytes"),
                "must be >= 1 (meshgate never buffers without a bound)",
            ));
        }
        let mut chains = Vec::with_capacity(cfg.filter_chains.len());
        let mut resolved = ClusterRefs::new();
        let udp = udp.map(|(u, used)| {
            resolved.extend(used);
            u
        });
        for (i, fc) in cfg.filter_chains.iter().enumerate() {
            let (chain, used) = build_chain(
                &format!("{path}.filter_chains[{i}]"),
                &cfg.name,
                fc,
                registry,
                clusters,
                source,
                take_over.and_then(|l| l.chains.get(i)).map(|c| &c.routes),
                cfg.quic.as_ref().map(|_| crate::quic::ALPN),
                cfg.per_connection_buffer_limit_bytes,
            )?;
            chains.push(chain);
            resolved.extend(used);
        }
        let proxy_protocol = crate::proxy_protocol::compile(&cfg.listener_filters, &path)
            .map_err(|(field, msg)| source.error(field, msg))?;
        if proxy_protocol.is_some() && cfg.quic.is_some() {
            return Err(source.error(
                format!("{path}.listener_filters"),
                "a QUIC listener has no TCP stream to read a PROXY protocol header from",
            ));
        }
        let quic = match &cfg.quic {
            None => None,
            Some(q) => {
                if chains.len() != 1 {
                    return Err(source.error(
                        format!("{path}.filter_chains"),
                        "a QUIC listener has exactly one filter chain (its tls picks certificates by SNI)",
                    ));
                }
                let chain = &chains[0];
                let Some(tls) = chain.tls.as_ref() else {
                    return Err(source.error(
                        format!("{path}.filter_chains[0].tls"),
                        "a QUIC listener needs tls (certificates for TLS 1.3)",
                    ));
                };
                if chain.sees_bytes {
                    return Err(source.error(
                        format!("{path}.filter_chains[0].filters"),
                        "a QUIC connection carries streams, not bytes: no filter of its chain may see bytes",
                    ));
                }
                Some(
                    crate::quic::QuicTransport::new(q, tls, &format!("{path}.quic"))
                        .map_err(|e| source.build_error("", e))?,
                )
            }
        };
        let sidecar = crate::original_dst::ListenerSidecar::build(cfg, &path, source)?;
        let socket_options =
            crate::socket_option::build(&cfg.socket_options, &format!("{path}.socket_options"))
                .map_err(|e| source.build_error("", e))?;
        if !socket_options.is_empty() && (cfg.quic.is_some() || cfg.udp_proxy.is_some()) {
            return Err(source.error(
                format!("{path}.socket_options"),
                "socket_options apply to TCP listeners only",
            ));
        }
        let access_log = if cfg.access_log.is_empty() {
            None
        } else {
            let lp = format!("{path}.access_log");
            let Some(f) = registry.listener_log() else {
                return Err(source.error(lp, "no listener access log factory is registered"));
            };
            let logs: Vec<_> = cfg.access_log.iter().map(|l| l.0.clone()).collect();
            Some(f.build(&logs).map_err(|e| source.build_error(&lp, e))?)
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            address,
            backlog: cfg.backlog,
            max_connections: cfg.max_connections.unwrap_or(u32::MAX),
            accept_burst: match cfg.max_connections_to_accept_per_socket_event {
                None | Some(0) => u32::MAX,
                Some(n) => n,
            },
            inspect_timeout: cfg.listener_filters_timeout,
            inspects_sni: chains.iter().any(|c| {
                !c.matcher.server_names.is_empty() || !c.matcher.application_protocols.is_empty()
            }),
            chains,
            stats: ListenerStats::new(&cfg.name),
            quic,
            proxy_protocol,
            inbound: cfg.traffic_direction
                == Some(crate::config::traffic_direction::TrafficDirection::Inbound),
            clusters: resolved,
            sidecar,
            socket_options,
            udp,
            access_log,
        })
    }

    /// Stores the route tables staged for the subscriptions this listener
    /// took over: the snapshot it belongs to was accepted.
    pub(crate) fn commit_routes(&self) {
        for c in &self.chains {
            c.routes.commit();
        }
    }

    /// Whether its filters took over any live route subscription.
    pub(crate) fn takes_over_routes(&self) -> bool {
        self.chains.iter().any(|c| c.routes.shares())
    }

    /// Chooses the chain for a connection. Envoy's order: the most specific
    /// destination port, then server name (exact, then longest wildcard),
    /// then ALPN, then the longest source prefix; within equals, the first
    /// in config.
    pub fn select_chain(
        &self,
        local: &SocketAddr,
        sni: Option<&str>,
        alpn: &[String],
        peer: &IpAddr,
    ) -> Option<&FilterChain> {
        let mut cands: Vec<&FilterChain> = self.chains.iter().collect();
        // destination port
        let port = local.port();
        if cands
            .iter()
            .any(|c| c.matcher.destination_port == Some(port))
        {
            cands.retain(|c| c.matcher.destination_port == Some(port));
        } else {
            cands.retain(|c| c.matcher.destination_port.is_none());
        }
        // destination IP: the longest prefix holding it
        let dscore = |c: &FilterChain| -> Option<u8> {
            if c.matcher.destination_prefixes.is_empty() {
                return Some(0);
            }
            let ip = local.ip();
            let hit = c
                .matcher
                .destination_prefixes
                .iter()
                .filter(|n| n.contains(&ip));
            hit.map(|n| n.prefix_len() + 1).max()
        };
        let best = cands.iter().filter_map(|c| dscore(c)).max()?;
        cands.retain(|c| dscore(c) == Some(best));
        // server name
        let score = |c: &FilterChain| -> Option<usize> {
            if c.matcher.server_names.is_empty() {
                return Some(0);
            }
            let sni = sni?;
            c.matcher
                .server_names
                .iter()
                .filter_map(|n| match n.strip_prefix('*') {
                    None if n.eq_ignore_ascii_case(sni) => Some(usize::MAX),
                    Some(suffix)
                        if sni.len() > suffix.len() && ends_with_ignore_case(sni, suffix) =>
                    {
                        Some(suffix.len())
                    }
                    _ => None,
                })
                .max()
        };
        let best = cands.iter().filter_map(|c| score(c)).max()?;
        cands.retain(|c| score(c) == Some(best));
        // application protocols: a chain naming one the client offers beats
        // a chain naming none
        let offered = |c: &FilterChain| {
            c.matcher
                .application_protocols
                .iter()
                .any(|p| alpn.contains(p))
        };
        if cands.iter().any(|c| offered(c)) {
            cands.retain(|c| offered(c));
        } else {
            cands.retain(|c| c.matcher.application_protocols.is_empty());
        }
        // source prefix
        let pscore = |c: &FilterChain| -> Option<u8> {
            if c.matcher.source_prefixes.is_empty() {
                return Some(0);
            }
            c.matcher
                .source_prefixes
                .iter()
                .filter(|n| n.contains(peer))
                .map(|n| n.prefix_len() + 1)
                .max()
        };
        let best = cands.iter().filter_map(|c| pscore(c)).max()?;
        cands.into_iter().find(|c| pscore(c) == Some(best))
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

// One call site, every argument a different part of the listener's build.
#[allow(clippy::too_many_arguments)]
fn build_chain(
    path: &str,
    listener: &str,
    fc: &FilterChainConfig,
    registry: &Registry,
    clusters: &ClusterManager,
    source: &ConfigSource,
    take_over: Option<&ChainRoutes>,
    stream_transport: Option<&'static [&'static str]>,
    buffer_limit: Option<u32>,
) -> Result<(FilterChain, ClusterRefs), ConfigError> {
    let mut matcher = ChainMatch::default();
    if let Some(m) = &fc.filter_chain_match {
        matcher.destination_port = m.destination_port;
        for (i, n) in m.server_names.iter().enumerate() {
            let ok = !n.is_empty()
                && (!n.contains('*') || (n.starts_with("*.") && !n[1..].contains('*')));
            if !ok {
                return Err(source.error(
                    format!("{path}.filter_chain_match.server_names[{i}]"),
                    format!("invalid server name '{n}': want a name or '*.suffix'"),
                ));
            }
            matcher.server_names.push(n.to_ascii_lowercase());
        }
        for (i, r) in m.source_prefix_ranges.iter().enumerate() {
            let net: IpNet = r
                .parse()
                .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    source.error(
                        format!("{path}.filter_chain_match.source_prefix_ranges[{i}]"),
                        format!("invalid CIDR '{r}'"),
                    )
                })?;
            matcher.source_prefixes.push(net.trunc());
        }
        matcher.application_protocols = m.application_protocols.clone();
        for (i, r) in m.prefix_ranges.iter().enumerate() {
            let net: IpNet = r
                .parse()
                .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    source.error(
                        format!("{path}.filter_chain_match.prefix_ranges[{i}]"),
                        format!("invalid CIDR '{r}'"),
                    )
                })?;
            matcher.destination_prefixes.push(net.trunc());
        }
    }
    let tls = match &fc.tls {
        None => None,
        Some(t) => Some(Arc::new(
            crate::tls::DownstreamTls::new(&t.resolved(source), &format!("{path}.tls"))
                .map_err(|e| source.build_error("", e))?,
        )),
    };
    if fc.filters.is_empty() {
        return Err(source.error(
            format!("{path}.filters"),
            "needs at least one network filter",
        ));
    }
    let ctx = BuildContext::new(listener, clusters, registry)
        .taking_over(take_over)
        .on_stream_transport(stream_transport)
        .with_buffer_limit(buffer_limit);
    let mut built: Vec<Arc<dyn NetworkFilter>> = Vec::with_capacity(fc.filters.len());
    let mut terminal = None;
    let last = fc.filters.len() - 1;
    for (i, f) in fc.filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        let factory = registry.network_filter(&f.name).ok_or_else(|| {
            source.error(
                format!("{fpath}.name"),
                format!(
                    "unknown network filter '{}' (known: {})",
                    f.name,
                    registry.network_filter_names().join(", ")
                ),
            )
        })?;
        ctx.set_filter(i);
        let filter = factory
            .create(&f.config, &ctx)
            .map_err(|e| source.build_error(&format!("{fpath}.config"), e))?;
        match filter {
            BuiltFilter::Connection(_) if i == last => {
                return Err(source.error(
                    format!("{fpath}.name"),
                    format!("the last filter of a chain must own the connection (e.g. tcp_proxy); '{}' does not", f.name),
                ));
            }
            BuiltFilter::Terminal(_) if i != last => {
                return Err(source.error(
                    format!("{fpath}.name"),
                    format!(
                        "'{}' owns the connection and must be the last filter of its chain",
                        f.name
                    ),
                ));
            }
            BuiltFilter::Connection(f) => built.push(f),
            BuiltFilter::Terminal(t) => terminal = Some(t),
        }
    }
    // `filters` is not empty (checked above) and the last one is terminal.
    let Some(terminal) = terminal else {
        return Err(source.error(format!("{path}.filters"), "a filter chain needs filters"));
    };
    let (resolved, routes) = ctx.into_parts();
    let chain = FilterChain {
        name: fc.name.as_deref().map(Arc::from),
        matcher,
        tls,
        sees_bytes: built.iter().any(|f| f.sees_bytes()),
        filters: built,
        terminal,
        routes,
    };
    Ok((chain, resolved))
}

impl FilterChain {
    /// Runs the non-terminal filters' connection hooks in order.
    pub(crate) fn run_on_new_connection(&self, info: &mut ConnectionInfo) -> FilterStatus {
        for f in &self.filters {
            if f.on_new_connection(info) == FilterStatus::Close {
                return FilterStatus::Close;
            }
        }
        FilterStatus::Continue
    }

    /// Hands the connection to the terminal filter.
    pub(crate) async fn serve(&self, conn: Connection) {
        self.terminal.clone().serve(conn).await
    }

    /// The connection the terminal filter serves: the raw stream, or, when
    /// a filter sees bytes, the stream through the filters' per-connection
    /// read and write filters (`FilteredIo`; the preface goes through them
    /// too). `None`: a filter closed the connection.
    pub fn connection(
        &self,
        io: DownstreamIo,
        preface: Bytes,
        info: ConnectionInfo,
        drain: Signal,
    ) -> Option<Connection> {
        if !self.sees_bytes {
            return Some(Connection {
                io,
                preface,
                info,
                drain,
            });
        }
        let reads = self.filters.iter().filter_map(|f| f.read_filter(&info));
        let reads = reads.collect();
        // Envoy's order: write filters run from the terminal outwards.
        let writes = self
            .filters
            .iter()
            .rev()
            .filter_map(|f| f.write_filter(&info));
        let writes = writes.collect();
        match FilteredIo::new(io, preface, &info, reads, writes) {
            Ok(io) => Some(Connection {
                io: DownstreamIo::Boxed(Box::new(io)),
                preface: Bytes::new(),
                info,
                drain,
            }),
            Err(e) => {
                tracing::debug!(listener = %info.listener, peer = %info.peer_addr, error = %e, "closed by a network filter");
                None
            }
        }
    }
}

/// A connection counted against its listener's limit and the
/// `cx_active` gauge, until dropped.
pub(crate) struct ConnectionSlot {
    listener: Arc<RunningListener>,
    cx_active: metrics::Gauge,
    /// Counted in the overload manager's global connection count.
    _global: crate::overload::ConnectionGuard,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.cx_active.decrement(1.0);
        self.listener.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds a listening socket with SO_REUSEADDR and the configured backlog.
pub fn bind(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// At most one accept-failure warning per listener this often.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a new downstream connection.
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// A bound listener whose compiled form can be swapped (reload) while it
/// keeps accepting.
pub struct RunningListener {
    pub compiled: ArcSwap<CompiledListener>,
    active: AtomicU32,
    /// Handed to each connection; replaced (and the old one cancelled) by
    /// `replace`.
    retire: std::sync::Mutex<Signal>,
}

impl RunningListener {
    pub fn new(compiled: Arc<CompiledListener>) -> Arc<Self> {
        Arc::new(Self {
            compiled: ArcSwap::new(compiled),
            active: AtomicU32::new(0),
            retire: std::sync::Mutex::new(Signal::new()),
        })
    }

    /// A reload changed this listener: new connections get `compiled`,
    /// open ones are retired (they finish their stream, then close).
    pub fn replace(&self, compiled: Arc<CompiledListener>) {
        self.compiled.store(compiled);
        let old = std::mem::replace(
            &mut *self.retire.lock().unwrap_or_else(|p| p.into_inner()),
            Signal::new(),
        );
        old.cancel();
    }

    /// The listener goes away: open connections are retired.
    pub fn retire_all(&self) {
        self.retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
    }

    /// Counts a new connection against the listener's limit. `false`: the
    /// limit is reached (counted as overflow) and the caller must refuse
    /// it; `true`: the returned slot keeps it counted until dropped.
    pub(crate) fn admit(self: &Arc<Self>, compiled: &CompiledListener) -> Option<ConnectionSlot> {
        compiled.stats.cx_total.increment(1);
        let global = crate::overload::admit_connection().ok()?;
        if self.active.fetch_add(1, Ordering::Relaxed) >= compiled.max_connections {
            self.active.fetch_sub(1, Ordering::Relaxed);
            compiled.stats.cx_overflow.increment(1);
            return None;
        }
        compiled.stats.cx_active.increment(1.0);
        Some(ConnectionSlot {
            listener: self.clone(),
            cx_active: compiled.stats.cx_active.clone(),
            _global: global,
        })
    }

    /// The retire token handed to a new connection.
    pub(crate) fn retire_token(&self) -> Signal {
        self.retire
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resumes a connection a hot upgrade migrated here (`crate::upgrade::
    /// migrate`): the filter chain of the same name (or the one the
    /// addresses select), its network filters and terminal, with `unread`
    /// as the stream's first bytes. Refused (the old process closes it)
    /// for a chain that terminates TLS or at the connection limit.
    pub(crate) fn resume(
        self: &Arc<Self>,
        d: &crate::upgrade::wire::ConnDesc,
        unread: Bytes,
        stream: std::net::TcpStream,
        drain: Signal,
        tracker: &TaskTracker,
    ) -> Result<(), &'static str> {
        let compiled = self.compiled.load_full();
        let by_name = d.filter_chain.as_deref().and_then(|n| {
            compiled
                .chains
                .iter()
                .position(|c| c.name.as_deref() == Some(n))
        });
        let chain = match by_name {
            Some(i) => i,
            None => {
                let c = compiled
                    .select_chain(&d.local, None, &[], &d.peer.ip())
                    .ok_or("no filter chain matches")?;
                compiled
                    .chains
                    .iter()
                    .position(|x| std::ptr::eq(x, c))
                    .ok_or("no filter chain matches")?
            }
        };
        if compiled.chains[chain].tls.is_some() {
            return Err("the filter chain terminates TLS");
        }
        stream.set_nonblocking(true).map_err(|_| "socket error")?;
        let _ = stream.set_nodelay(true);
        let stream = TcpStream::from_std(stream).map_err(|_| "socket error")?;
        let slot = self.admit(&compiled).ok_or("connection limit reached")?;
        let retire = self.retire_token();
        let id = next_connection_id();
        let (peer, local) = (d.peer, d.local);
        tracker.spawn(async move {
            let chain = &compiled.chains[chain];
            let mut info = ConnectionInfo {
                id,
                listener: compiled.name.clone(),
                peer_addr: peer,
                local_addr: local,
                server_name: None,
                filter_chain: chain.name.clone(),
                tls: None,
                retire,
                proxy_protocol: None,
            };
            if chain.run_on_new_connection(&mut info) == FilterStatus::Close {
                return;
            }
            let Some(conn) = chain.connection(DownstreamIo::Tcp(stream), unread, info, drain)
            else {
                return;
            };
            chain.terminal.clone().serve(conn).await;
            drop(slot);
        });
        Ok(())
    }

    /// Downstream connections currently open on this listener.
    pub fn active_connections(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Accepts until `stop` is cancelled; connections are spawned on
    /// `tracker` so the server can wait for them to drain.
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        drain: Signal,
        tracker: TaskTracker,
    ) {
        // Accept failures in a row: the back-off grows with them. A warning
        // is logged at most every `ACCEPT_WARN_EVERY` (a limit reached
        // again and again would otherwise flood the log), debug otherwise.
        let mut failures = 0u32;
        let mut warned: Option<std::time::Instant> = None;
        let mut burst = 0u32;
        loop {
            burst += 1;
            if burst > self.compiled.load().accept_burst {
                burst = 1;
                tokio::task::yield_now().await;
            }
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    if failures > 0 {
                        tracing::debug!(listener = %self.compiled.load().name, failures, "accepting again");
                        failures = 0;
                    }
                    a
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: counted, and backed off
                    // (10 ms to 1 s) instead of spinning; the connections
                    // wait in the backlog until descriptors are freed.
                    let reason = crate::fds::exhaustion(&e).unwrap_or("other");
                    let name = self.compiled.load().name.clone();
                    metrics::counter!(crate::metrics::names::LISTENER_DOWNSTREAM_CX_ACCEPT_ERROR_TOTAL, "listener" => name.to_string(), "reason" => reason).increment(1);
                    if warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                        warned = Some(std::time::Instant::now());
                        tracing::warn!(listener = %name, error = %e, "accept failed; backing off until it succeeds (counted in meshgate_listener_downstream_cx_accept_error_total)");
                    } else {
                        tracing::debug!(listener = %name, error = %e, failures, "accept failed");
                    }
                    let wait = crate::fds::accept_backoff(failures);
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            let compiled = self.compiled.load_full();
            let Some(slot) = self.admit(&compiled) else {
                tracing::debug!(listener = %compiled.name, %peer, "connection limit reached; closing");
                drop(stream);
                continue;
            };
            let drain = drain.clone();
            let retire = self.retire_token();
            let id = next_connection_id();
            let span = crate::spans::connection(&compiled.name, id);
            let task = async move {
                handle_connection(compiled, stream, peer, drain, retire, id).await;
                drop(slot);
            };
            // A disabled span (the default level) gets no wrapper: it would
            // be entered and left on every poll of the connection's task.
            if span.is_disabled() {
                tracker.spawn(task);
            } else {
                tracker.spawn(tracing::Instrument::instrument(task, span));
            }
        }
        tracing::info!(address = ?listener.local_addr().ok(), "listener stopped accepting");
    }
}

/// A connection's task, from accept to close. Its future lives as long as
/// the connection and is as large as its largest await: the steps only
/// some connections take (sidecar original destination, PROXY protocol,
/// ClientHello inspection, the TLS handshake with its rustls state) are
/// boxed, allocated only when taken, so that an idle plain connection
/// does not carry their size (issue 23: memory per idle connection).
async fn handle_connection(
    listener: Arc<CompiledListener>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: Signal,
    retire: Signal,
    id: u64,
) {
    // The accept phase (listener filters, ClientHello inspection, the TLS
    // handshake, chain selection) runs in its own boxed future, freed once
    // the connection is handed to its terminal: inline, its state would
    // size this task for the connection's whole life (benches/RESULTS.md,
    // idle connections).
    let accepting = Box::pin(accept_connection(listener, stream, peer, drain, retire, id));
    if let Some(serve) = accepting.await {
        serve.await;
    }
}

/// A connection from accept to its terminal: the future that serves it,
/// or `None` when it was closed on the way (logged there).
async fn accept_connection(
    listener: Arc<CompiledListener>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: Signal,
    retire: Signal,
    id: u64,
) -> Option<crate::network::ServeFuture> {
    let accepted = std::time::Instant::now();
    let _ = stream.set_nodelay(true);
    // A listener bound to one address and port knows every connection's
    // local address: no getsockname(2) per connection.
    let local = if listener.address.ip().is_unspecified() || listener.address.port() == 0 {
        stream.local_addr().unwrap_or(listener.address)
    } else {
        listener.address
    };
    let (listener, local, http) = match &listener.sidecar {
        None => (listener, local, None),
        Some(s) => {
            let s = **s;
            let a = Box::pin(crate::original_dst::on_accept(listener, &s, &stream, local)).await?;
            (a.listener, a.local, a.http)
        }
    };
    let mut stream = stream;
    let mut preface;
    let mut hello = None;
    let (mut peer, mut local, mut read, mut proxied) = (peer, local, BytesMut::new(), None);
    if let Some(pp) = &listener.proxy_protocol {
        match Box::pin(crate::proxy_protocol::accept(
            &listener,
            pp,
            &mut stream,
            &mut peer,
            &mut local,
        ))
        .await
        {
            Ok((rest, info)) => (read, proxied) = (rest, Some(info)),
            Err(reason) => {
                let why = crate::listener_log::ListenerClose::ProxyProtocol(reason);
                log_closed(&listener, id, (peer, local), None, accepted, why);
                return None;
            }
        }
    }
    if !listener.inspects_sni {
        preface = read.freeze();
    } else {
        match tokio::time::timeout(
            listener.inspect_timeout,
            Box::pin(tls_inspect::read_client_hello(&mut stream, read)),
        )
        .await
        {
            Ok(Ok((bytes, h))) => {
                preface = bytes;
                hello = h;
            }
            Ok(Err(e)) => {
                tracing::debug!(listener = %listener.name, %peer, error = %e, "connection closed during ClientHello inspection");
                let why = crate::listener_log::ListenerClose::TlsInspectorError;
                log_closed(&listener, id, (peer, local), None, accepted, why);
                return None;
            }
            Err(_) => {
                tracing::debug!(listener = %listener.name, %peer, "ClientHello inspection timed out");
                metrics::counter!(crate::metrics::names::LISTENER_INSPECT_TIMEOUT_TOTAL, "listener" => listener.name.to_string()).increment(1);
                let why = crate::listener_log::ListenerClose::ListenerFilterTimeout;
                log_closed(&listener, id, (peer, local), None, accepted, why);
                return None;
            }
        }
    }
    let mut hello = hello.unwrap_or_default();
    if let Some(p) = http.filter(|_| hello.alpn.is_empty()) {
        hello.alpn.push(p.to_string());
    }
    let Some(chain) = listener.select_chain(
        &local,
        hello.server_name.as_deref(),
        &hello.alpn,
        &peer.ip(),
    ) else {
        listener.stats.no_filter_chain_match.increment(1);
        tracing::debug!(listener = %listener.name, %peer, sni = ?hello.server_name, "no filter chain matched; closing");
        let why = crate::listener_log::ListenerClose::NoFilterChainMatch;
        log_closed(
            &listener,
            id,
            (peer, local),
            hello.server_name,
            accepted,
            why,
        );
        return None;
    };
    let mut info = ConnectionInfo {
        id,
        listener: listener.name.clone(),
        peer_addr: peer,
        local_addr: local,
        server_name: hello.server_name,
        filter_chain: chain.name.clone(),
        tls: None,
        retire,
        proxy_protocol: proxied,
    };
    for f in &chain.filters {
        if f.on_new_connection(&mut info) == FilterStatus::Close {
            return None;
        }
    }
    let io = match &chain.tls {
        None => DownstreamIo::Tcp(stream),
        Some(tls) => {
            let io = PrefixedIo::new(std::mem::take(&mut preface), DownstreamIo::Tcp(stream));
            match Box::pin(terminate_tls(&listener, tls, io, &mut info)).await {
                Some(io) => io,
                None => return None,
            }
        }
    };
    let conn = chain.connection(io, preface, info, drain)?;
    let serve = chain.terminal.clone().serve(conn);
    Some(serve)
}

/// Writes the listener's `access_log` entry of a connection it closes
/// before any network filter had it (nothing when none is configured).
fn log_closed(
    listener: &CompiledListener,
    id: u64,
    (peer, local): (SocketAddr, SocketAddr),
    server_name: Option<String>,
    accepted: std::time::Instant,
    why: crate::listener_log::ListenerClose,
) {
    let Some(log) = &listener.access_log else {
        return;
    };
    let conn = ConnectionInfo {
        id,
        listener: listener.name.clone(),
        peer_addr: peer,
        local_addr: local,
        server_name,
        filter_chain: None,
        tls: None,
        retire: Signal::new(),
        proxy_protocol: None,
    };
    let mut info = crate::stream::StreamInfo::new(Arc::new(conn), "tcp");
    info.start = accepted;
    log.log(&info, why);
}

/// The TLS handshake of a chain that terminates TLS, bounded by its
/// handshake timeout. Failures are counted by reason and close the
/// connection (rustls has sent the alert).
async fn terminate_tls(
    listener: &CompiledListener,
    tls: &crate::tls::DownstreamTls,
    io: PrefixedIo,
    info: &mut ConnectionInfo,
) -> Option<DownstreamIo> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let io = crate::tls::HandshakeIo::new(io);
    // The handshake timeout is Envoy's `transport_socket_connect_timeout`,
    // scaled by `reduce_timeouts` (`TRANSPORT_SOCKET_CONNECT`).
    let reason = match crate::overload::timers::timeout(
        crate::overload::timers::Timer::TransportSocketConnect,
        tls.handshake_timeout,
        acceptor.accept(io),
    )
    .await
    {
        Ok(Ok(mut s)) => {
            s.get_mut().0.disarm();
            let (_, conn) = s.get_ref();
            info.tls = Some(Arc::new(crate::tls::TlsInfo {
                version: conn
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                cipher_suite: conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                alpn: conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                server_name: conn.server_name().map(str::to_string),
                resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
                peer: conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::tls::PeerIdentity::from_der(c)),
            }));
            metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_TOTAL, "listener" => listener.name.to_string()).increment(1);
            return Some(DownstreamIo::Boxed(Box::new(s)));
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = %listener.name, peer = %info.peer_addr, error = %e, "TLS handshake failed");
            crate::tls::handshake_error_reason(&e)
        }
        Err(_) => {
            tracing::debug!(listener = %listener.name, peer = %info.peer_addr, "TLS handshake timed out");
            "timeout"
        }
    };
    metrics::counter!(crate::metrics::names::LISTENER_TLS_HANDSHAKE_ERROR_TOTAL, "listener" => listener.name.to_string(), "reason" => reason).increment(1);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::DataStatus;

    struct Terminal;
    impl TerminalFilter for Terminal {
        fn serve(self: Arc<Self>, _conn: Connection) -> crate::network::ServeFuture {
            Box::pin(async {})
        }
    }

    fn chain(name: &str, port: Option<u16>, names: &[&str], prefixes: &[&str]) -> FilterChain {
        FilterChain {
            name: Some(name.into()),
            matcher: ChainMatch {
                destination_port: port,
                server_names: names.iter().map(|s| s.to_string()).collect(),
                application_protocols: vec![],
                source_prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
                destination_prefixes: vec![],
            },
            tls: None,
            filters: vec![],
            terminal: Arc::new(Terminal),
            routes: ChainRoutes::default(),
            sees_bytes: false,
        }
    }

    fn listener(chains: Vec<FilterChain>) -> CompiledListener {
        CompiledListener {
            name: "l".into(),
            address: "127.0.0.1:80".parse().unwrap(),
            backlog: 128,
            max_connections: u32::MAX,
            accept_burst: u32::MAX,
            inspect_timeout: Duration::from_secs(1),
            quic: None,
            proxy_protocol: None,
            inbound: false,
            inspects_sni: true,
            chains,
            stats: ListenerStats::new("l"),
            clusters: ClusterRefs::new(),
            sidecar: None,
            socket_options: Vec::new(),
            udp: None,
            access_log: None,
        }
    }

    fn pick<'a>(
        l: &'a CompiledListener,
        port: u16,
        sni: Option<&str>,
        src: &str,
    ) -> Option<&'a str> {
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        l.select_chain(&local, sni, &[], &src.parse().unwrap())
            .and_then(|c| c.name.as_deref())
    }

    #[test]
    fn server_name_exact_beats_wildcard_beats_default() {
        let l = listener(vec![
            chain("default", None, &[], &[]),
            chain("wild", None, &["*.example.test"], &[]),
            chain("exact", None, &["api.example.test"], &[]),
        ]);
        assert_eq!(
            pick(&l, 80, Some("api.example.test"), "127.0.0.1"),
            Some("exact")
        );
        assert_eq!(
            pick(&l, 80, Some("API.Example.Test"), "127.0.0.1"),
            Some("exact")
        );
        assert_eq!(
            pick(&l, 80, Some("www.example.test"), "127.0.0.1"),
            Some("wild")
        );
        assert_eq!(
            pick(&l, 80, Some("example.test"), "127.0.0.1"),
            Some("default")
        );
        assert_eq!(pick(&l, 80, None, "127.0.0.1"), Some("default"));
    }

    #[test]
    fn longest_wildcard_wins_and_no_default_means_no_match() {
        let l = listener(vec![
            chain("short", None, &["*.test"], &[]),
            chain("long", None, &["*.example.test"], &[]),
        ]);
        assert_eq!(
            pick(&l, 80, Some("a.example.test"), "127.0.0.1"),
            Some("long")
        );
        assert_eq!(
            pick(&l, 80, Some("a.other.test"), "127.0.0.1"),
            Some("short")
        );
        assert_eq!(pick(&l, 80, Some("other.org"), "127.0.0.1"), None);
        assert_eq!(pick(&l, 80, None, "127.0.0.1"), None);
    }

    #[test]
    fn destination_port_is_considered_first() {
        let l = listener(vec![
            chain("sni", None, &["a.test"], &[]),
            chain("port", Some(8443), &[], &[]),
        ]);
        assert_eq!(pick(&l, 8443, Some("a.test"), "127.0.0.1"), Some("port"));
        assert_eq!(pick(&l, 80, Some("a.test"), "127.0.0.1"), Some("sni"));
    }

    #[test]
    fn longest_source_prefix_wins() {
        let l = listener(vec![
            chain("any", None, &[], &[]),
            chain("lo8", None, &[], &["127.0.0.0/8"]),
            chain("host", None, &[], &["127.0.0.2/32"]),
            chain("v6", None, &[], &["::1/128"]),
        ]);
        assert_eq!(pick(&l, 80, None, "127.0.0.2"), Some("host"));
        assert_eq!(pick(&l, 80, None, "127.0.0.1"), Some("lo8"));
        assert_eq!(pick(&l, 80, None, "10.1.2.3"), Some("any"));
        assert_eq!(pick(&l, 80, None, "::1"), Some("v6"));
    }

    /// A read filter that holds bytes until it has a whole first line
    /// (counting how often it held), refuses a connection whose first line
    /// is `deny`, then passes everything.
    struct LineGate {
        held: Arc<AtomicU32>,
        open: bool,
    }

    impl crate::network::ReadFilter for LineGate {
        fn on_data(&mut self, data: &mut bytes::BytesMut, end: bool) -> DataStatus {
            if self.open {
                return DataStatus::Continue;
            }
            if data.starts_with(b"deny") {
                return DataStatus::Close;
            }
            if !data.contains(&b'\n') && !end {
                self.held.fetch_add(1, Ordering::Relaxed);
                return DataStatus::StopIteration;
            }
            self.open = true;
            DataStatus::Continue
        }
    }

    /// A write filter that masks `secret` and says `bye` when the
    /// terminal closes its side.
    struct Redact;

    impl crate::network::WriteFilter for Redact {
        fn on_write(&mut self, data: &mut bytes::BytesMut, end: bool) -> DataStatus {
            while let Some(i) = data.windows(6).position(|w| w == b"secret") {
                data[i..i + 6].copy_from_slice(b"******");
            }
            if end {
                data.extend_from_slice(b"bye\n");
            }
            DataStatus::Continue
        }
    }

    /// A read filter that never passes anything.
    struct Hoard;

    impl crate::network::ReadFilter for Hoard {
        fn on_data(&mut self, _: &mut bytes::BytesMut, _: bool) -> DataStatus {
            DataStatus::StopIteration
        }
    }

    /// A non-terminal filter giving each connection the filters above.
    struct ByteSeer {
        held: Arc<AtomicU32>,
        hoard: bool,
    }

    impl NetworkFilter for ByteSeer {
        fn sees_bytes(&self) -> bool {
            true
        }
        fn read_filter(&self, _: &ConnectionInfo) -> Option<Box<dyn crate::network::ReadFilter>> {
            Some(if self.hoard {
                Box::new(Hoard)
            } else {
                Box::new(LineGate {
                    held: self.held.clone(),
                    open: false,
                })
            })
        }
        fn write_filter(&self, _: &ConnectionInfo) -> Option<Box<dyn crate::network::WriteFilter>> {
            Some(Box::new(Redact))
        }
    }

    /// Echoes what it reads until the end, then closes its side; reports
    /// how reading ended.
    struct EchoTerminal(tokio::sync::mpsc::UnboundedSender<std::io::Result<()>>);

    impl TerminalFilter for EchoTerminal {
        fn serve(self: Arc<Self>, conn: Connection) -> crate::network::ServeFuture {
            Box::pin(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut io, _, _) = conn.into_prefixed();
                let mut buf = vec![0u8; 4096];
                let end = loop {
                    match io.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            if let Err(e) = io.write_all(&buf[..n]).await {
                                break Err(e);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                };
                let _ = io.shutdown().await;
                let _ = self.0.send(end);
            })
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: 1,
            listener: "l".into(),
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            local_addr: "127.0.0.1:2".parse().unwrap(),
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Signal::new(),
            proxy_protocol: None,
        }
    }

    /// A chain with a byte-seeing filter in front of an echo terminal,
    /// served on one end of an in-memory duplex stream; the other end and
    /// how the terminal's reading ended.
    fn serve_through_chain(
        hoard: bool,
        preface: &'static [u8],
    ) -> (
        tokio::io::DuplexStream,
        Arc<AtomicU32>,
        tokio::sync::mpsc::UnboundedReceiver<std::io::Result<()>>,
    ) {
        let held = Arc::new(AtomicU32::new(0));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut chain = chain("bytes", None, &[], &[]);
        chain.filters = vec![Arc::new(ByteSeer {
            held: held.clone(),
            hoard,
        })];
        chain.terminal = Arc::new(EchoTerminal(tx));
        chain.sees_bytes = true;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let io = DownstreamIo::Boxed(Box::new(server));
        let conn = chain.connection(io, Bytes::from_static(preface), info(), Signal::new());
        let conn = conn.expect("the filters accept the connection");
        assert!(matches!(conn.io, DownstreamIo::Boxed(_)) && conn.preface.is_empty());
        tokio::spawn(chain.serve_owned(conn));
        (client, held, rx)
    }

    impl FilterChain {
        async fn serve_owned(self, conn: Connection) {
            self.serve(conn).await
        }
    }

    #[tokio::test]
    async fn read_and_write_filters_see_the_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The preface (bytes the listener read, e.g. a ClientHello) goes
        // through the read filters too.
        let (mut client, held, mut ended) = serve_through_chain(false, b"he");
        client.write_all(b"l").await.unwrap();
        client.write_all(b"lo secret\n").await.unwrap();
        client.write_all(b"more secret data\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello ******\nmore ****** data\nbye\n");
        // The first line was held back (the preface, and its next byte)
        // until it was whole.
        assert!(held.load(Ordering::Relaxed) >= 1);
        assert!(ended.recv().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_read_filter_closes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, _, mut ended) = serve_through_chain(false, b"");
        client.write_all(b"deny me\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        // Nothing reached the terminal, so nothing was echoed.
        assert!(out.is_empty(), "{out:?}");
        let e = ended.recv().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn bytes_a_filter_holds_are_bounded() {
        use tokio::io::AsyncWriteExt;
        let (mut client, _, mut ended) = serve_through_chain(true, b"");
        let chunk = vec![b'x'; 64 * 1024];
        // The connection closes once the filter holds more than the
        // bound (writes may fail from then on).
        for _ in 0..(crate::network::MAX_HELD_BYTES / chunk.len() + 2) {
            if client.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let e = ended.recv().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn a_chain_without_byte_filters_hands_over_the_raw_stream() {
        let chain = chain("plain", None, &[], &[]);
        let (_, server) = tokio::io::duplex(16);
        let io = DownstreamIo::Boxed(Box::new(server));
        let conn = chain
            .connection(io, Bytes::from_static(b"pre"), info(), Signal::new())
            .unwrap();
        // Untouched: the preface is still the terminal's to read.
        assert_eq!(&conn.preface[..], b"pre");
    }
}
