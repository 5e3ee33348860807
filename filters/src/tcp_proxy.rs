//! `tcp_proxy`: the L4 terminal network filter. Picks a cluster (or one of
//! weighted clusters), connects to an endpoint chosen by the cluster's load
//! balancer (retrying the connect on other endpoints), then moves bytes both
//! ways with correct half-close, an idle timeout and byte counters.
//!
//! Plain TCP on both sides is moved by hand rather than with
//! `tokio::io::copy_bidirectional`, for three reasons measured in
//! benches/RESULTS.md: a direction starts with a 16 KiB buffer and an
//! optimistic read (short flows cost few syscalls and little memory); a
//! direction that keeps filling it (bulk) grows it to 128 KiB; the buffer
//! is held only while data moves (an idle pair holds none); and
//! `zero_copy: bulk|always` moves bulk (or all) bytes with splice(2) through
//! a pipe, so the payload never enters user space: less proxy CPU per byte,
//! but on loopback the receiver then works harder and throughput drops,
//! hence not the default.

use meshgate_core::BuildError;
use meshgate_core::cluster::{Cluster, UpstreamConnection, now_ms};
use meshgate_core::config::filters::{TcpHashPolicy as HashPolicy, TcpProxyConfig, ZeroCopy};
use meshgate_core::config::parse_typed;
use meshgate_core::lb::{LbContext, hash_key};
use meshgate_core::network::{
    BuildContext, BuiltFilter, Connection, ConnectionInfo, DownstreamIo, FilteredIo,
    NetworkFilterFactory, ServeFuture, TerminalFilter,
};
use metrics::{Counter, Gauge};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Factory of `tcp_proxy`.
pub struct TcpProxyFactory;

impl NetworkFilterFactory for TcpProxyFactory {
    fn name(&self) -> &'static str {
        "tcp_proxy"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let cfg: TcpProxyConfig = parse_typed(config)?;
        if ctx.stream_transport().is_some() {
            return Err(BuildError::new(
                "",
                "tcp_proxy relays bytes, and this listener's connections carry streams (QUIC): use proxy",
            ));
        }
        let mut clusters = Vec::new();
        match (&cfg.cluster, cfg.weighted_clusters.is_empty()) {
            (Some(name), true) => clusters.push((ctx.cluster("cluster", name)?, 1)),
            (None, false) => {
                for (i, w) in cfg.weighted_clusters.iter().enumerate() {
                    if w.weight == 0 {
                        return Err(BuildError::new(
                            format!("weighted_clusters[{i}].weight"),
                            "must be >= 1",
                        ));
                    }
                    let c = ctx.cluster(&format!("weighted_clusters[{i}].name"), &w.name)?;
                    clusters.push((c, w.weight));
                }
            }
            (Some(_), false) => {
                return Err(BuildError::new(
                    "weighted_clusters",
                    "set either cluster or weighted_clusters, not both",
                ));
            }
            (None, true) => {
                return Err(BuildError::new(
                    "cluster",
                    "missing: set cluster or weighted_clusters",
                ));
            }
        }
        if cfg.max_connect_attempts == 0 {
            return Err(BuildError::new("max_connect_attempts", "must be >= 1"));
        }
        let total_weight = clusters.iter().map(|(_, w)| *w as u64).sum();
        let listener = ctx.listener.to_string();
        let access_log = match cfg.access_log.is_empty() {
            true => None,
            false => Some(
                crate::access_log::AccessLogs::build_list(&cfg.access_log, Some(ctx)).map_err(
                    |e| {
                        BuildError::new(
                            meshgate_core::error::join_path("access_log", &e.path),
                            e.message,
                        )
                    },
                )?,
            ),
        };
        Ok(BuiltFilter::Terminal(Arc::new(TcpProxy {
            clusters,
            total_weight,
            max_connect_attempts: cfg.max_connect_attempts,
            idle_timeout: cfg.idle_timeout,
            hash_policy: cfg.hash_policy,
            zero_copy: cfg.zero_copy,
            no_upstream: metrics::counter!(meshgate_core::metrics::names::TCP_PROXY_UPSTREAM_UNAVAILABLE_TOTAL, "listener" => listener.clone()),
            downstream_bytes_received: metrics::counter!(meshgate_core::metrics::names::LISTENER_DOWNSTREAM_BYTES_RECEIVED_TOTAL, "listener" => listener.clone()),
            downstream_bytes_sent: metrics::counter!(meshgate_core::metrics::names::LISTENER_DOWNSTREAM_BYTES_SENT_TOTAL, "listener" => listener.clone()),
            access_log,
            buffered: [
                metrics::gauge!(meshgate_core::metrics::names::TCP_PROXY_BUFFERED_BYTES, "listener" => listener.clone(), "direction" => "downstream_to_upstream"),
                metrics::gauge!(meshgate_core::metrics::names::TCP_PROXY_BUFFERED_BYTES, "listener" => listener.clone(), "direction" => "upstream_to_downstream"),
            ],
            down_limit: buffer_cap(ctx.buffer_limit()),
            listener,
        })))
    }
}

struct TcpProxy {
    clusters: Vec<(Arc<Cluster>, u32)>,
    total_weight: u64,
    max_connect_attempts: u32,
    idle_timeout: Duration,
    hash_policy: HashPolicy,
    zero_copy: ZeroCopy,
    no_upstream: Counter,
    downstream_bytes_received: Counter,
    downstream_bytes_sent: Counter,
    /// One line per connection when it closes.
    access_log: Option<crate::access_log::AccessLogs>,
    /// Bytes held now, downstream-to-upstream and back.
    buffered: [Gauge; 2],
    /// The copy buffer bound of the downstream-to-upstream direction (the
    /// listener's `per_connection_buffer_limit_bytes`).
    down_limit: usize,
    listener: String,
}

/// A direction's copy-buffer bound from a `per_connection_buffer_limit_bytes`:
/// the limit itself, at most `BULK_BUF` (meshgate's own bound, under
/// Envoy's 1 MiB default) and at least 1 KiB (a soft limit, as Envoy's: a
/// read is never smaller).
fn buffer_cap(limit: Option<u32>) -> usize {
    limit.map_or(BULK_BUF, |l| (l as usize).clamp(1024, BULK_BUF))
}

impl TerminalFilter for TcpProxy {
    fn serve(self: Arc<Self>, conn: Connection) -> ServeFuture {
        Box::pin(self.proxy(conn))
    }
}

impl TcpProxy {
    fn pick_cluster(&self) -> &Arc<Cluster> {
        if self.clusters.len() == 1 {
            return &self.clusters[0].0;
        }
        let mut r = rand::random_range(0..self.total_weight);
        for (c, w) in &self.clusters {
            if r < *w as u64 {
                return c;
            }
            r -= *w as u64;
        }
        &self.clusters[0].0
    }

    fn lb_context(&self, info: &ConnectionInfo) -> LbContext {
        let hash = match self.hash_policy {
            HashPolicy::SourceIp => match info.peer_addr.ip() {
                std::net::IpAddr::V4(a) => hash_key(&a.octets()),
                std::net::IpAddr::V6(a) => hash_key(&a.octets()),
            },
            HashPolicy::SourceIpPort => hash_key(info.peer_addr.to_string().as_bytes()),
        };
        LbContext { hash: Some(hash) }
    }

    async fn connect(
        &self,
        cluster: &Arc<Cluster>,
        info: &ConnectionInfo,
    ) -> Result<UpstreamConnection, &'static str> {
        if let Some(od) = &cluster.original_dst {
            let ep = od.for_connection(info).ok_or("no_healthy_upstream")?;
            return cluster
                .connect_endpoint(ep)
                .await
                .map_err(|e| crate::access_log::connect_failure(&e));
        }
        let ctx = self.lb_context(info);
        let mut tried: Vec<SocketAddr> = Vec::new();
        // Why the last attempt failed, as a `LocalReason` label (the
        // access log's response flag).
        let mut why = "upstream_connect_failure";
        for attempt in 0..self.max_connect_attempts {
            match cluster.connect(&ctx, &tried).await {
                Ok(up) => return Ok(up),
                Err((e, addr)) => {
                    why = crate::access_log::connect_failure(&e);
                    tracing::debug!(conn = info.id, cluster = %cluster.name, attempt, error = %e, "upstream connect attempt failed");
                    match addr {
                        Some(a) => tried.push(a),
                        // overflow or no endpoint: another attempt won't help
                        None => break,
                    }
                }
            }
        }
        Err(why)
    }

    async fn proxy(self: Arc<Self>, conn: Connection) {
        let cluster = self.pick_cluster().clone();
        let logged = self.access_log.as_ref().map(|l| {
            crate::access_log::TcpLog::new(
                l,
                &conn.info,
                cluster.name,
                &self.downstream_bytes_received,
                &self.downstream_bytes_sent,
            )
        });
        // A cluster that is not there (CDS removed it while this listener
        // names it): the connection is closed at once, as Envoy's
        // tcp_proxy does (`downstream_cx_no_route`, flag `NC`).
        if cluster.not_found {
            metrics::counter!(meshgate_core::metrics::names::TCP_PROXY_CX_NO_ROUTE_TOTAL, "listener" => self.listener.clone(), "cluster" => cluster.name).increment(1);
            tracing::debug!(conn = conn.info.id, cluster = %cluster.name, "cluster not found: connection closed");
            if let Some(l) = logged {
                l.close(None, Some("cluster_not_found"));
            }
            return;
        }
        // The cluster's `drop_overloads`: the connection is closed at once,
        // before any endpoint is chosen (Envoy's `DO` flag).
        if cluster.drop_overload() {
            metrics::counter!(meshgate_core::metrics::names::TCP_PROXY_CX_DROPPED_TOTAL, "listener" => self.listener.clone(), "cluster" => cluster.name).increment(1);
            tracing::debug!(conn = conn.info.id, cluster = %cluster.name, "drop_overload: connection closed");
            if let Some(l) = logged {
                l.close(None, Some("drop_overload"));
            }
            return;
        }
        let up = match self.connect(&cluster, &conn.info).await {
            Ok(up) => up,
            Err(why) => {
                if let Some(l) = logged {
                    l.close(None, Some(why));
                }
                self.no_upstream.increment(1);
                tracing::debug!(conn = conn.info.id, cluster = %cluster.name, "no upstream connection; closing downstream");
                return;
            }
        };
        tracing::trace!(conn = conn.info.id, upstream = %up.endpoint.address, "upstream connected");
        let logged = logged.map(|mut l| {
            l.upstream_local(up.stream.local_addr().ok());
            l
        });
        // For least_request, an L4 connection is one request.
        let _active = up.endpoint.start_request();
        if let Some(pp) = &cluster.proxy_protocol {
            let header = meshgate_core::proxy_protocol::upstream_header(pp, &conn.info);
            if let Err(e) = write_all_ref(&up.stream, &header).await {
                tracing::debug!(conn = conn.info.id, error = %e, "upstream PROXY header write failed");
                cluster.stats.cx_closed("reset");
                return;
            }
        }
        let Connection {
            io, preface, info, ..
        } = conn;
        // With an access log, the downstream counters also count for it.
        let (down_received, down_sent) = match &logged {
            Some(l) => (&l.received, &l.sent),
            None => (&self.downstream_bytes_received, &self.downstream_bytes_sent),
        };
        let counters = Counters {
            up_sent: &cluster.stats.bytes_sent,
            up_received: &cluster.stats.bytes_received,
            down_received,
            down_sent,
            held: &self.buffered,
            caps: [self.down_limit, buffer_cap(cluster.buffer_limit)],
        };
        let upstream_host = up.endpoint.address;
        let activity = AtomicU64::new(now_ms());
        // The task of an idle pair holds this function's state, as large as
        // its largest arm: the TLS and boxed-stream arms (a handshake, a
        // TLS stream) are boxed, so a plain TCP pair does not carry their
        // size while it waits.
        let result = match (io, cluster.tls_for(&up.endpoint)) {
            // TLS origination (the cluster's `tls`): user-space copy.
            (mut down, Some(tls)) => {
                let pump = Box::pin(async {
                    let addr = up.endpoint.address;
                    let mut up = tls.connect(up.stream, None, addr).await.inspect_err(|_| {
                        metrics::counter!(meshgate_core::metrics::names::CLUSTER_UPSTREAM_TLS_HANDSHAKE_ERROR_TOTAL, "cluster" => cluster.name.to_string()).increment(1);
                    })?;
                    if cluster.filters.is_empty() {
                        if !preface.is_empty() {
                            up.write_all(&preface).await?;
                        }
                        return copy_bidirectional(&mut down, &mut up, &counters, &activity).await;
                    }
                    let alpn = up.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let mut up = upstream_filtered(
                        &cluster,
                        &info,
                        alpn.as_deref(),
                        DownstreamIo::Boxed(Box::new(up)),
                        &preface,
                    )
                    .await?;
                    copy_bidirectional(&mut down, &mut up, &counters, &activity).await
                });
                with_idle_timeout(pump, self.idle_timeout, &activity).await
            }
            // Plain TCP with cluster filters: user-space copy through them.
            (mut down, None) if !cluster.filters.is_empty() => {
                let pump = Box::pin(async {
                    let mut up = upstream_filtered(
                        &cluster,
                        &info,
                        None,
                        DownstreamIo::Tcp(up.stream),
                        &preface,
                    )
                    .await?;
                    copy_bidirectional(&mut down, &mut up, &counters, &activity).await
                });
                with_idle_timeout(pump, self.idle_timeout, &activity).await
            }
            (DownstreamIo::Tcp(down), None) => {
                let pump = async {
                    if !preface.is_empty() {
                        write_all_ref(&up.stream, &preface).await?;
                        counters.down_received.increment(preface.len() as u64);
                        counters.up_sent.increment(preface.len() as u64);
                    }
                    pump_bidirectional(&down, &up.stream, self.zero_copy, &counters, &activity)
                        .await
                };
                with_idle_timeout(pump, self.idle_timeout, &activity).await
            }
            // A boxed stream (a transport of streams, QUIC, fails its first read).
            (mut down, None) => {
                let mut up = up;
                let pump = Box::pin(async {
                    if !preface.is_empty() {
                        up.stream.write_all(&preface).await?;
                    }
                    copy_bidirectional(&mut down, &mut up.stream, &counters, &activity).await
                });
                with_idle_timeout(pump, self.idle_timeout, &activity).await
            }
        };
        match result {
            Ok(()) => cluster.stats.cx_closed("done"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                tracing::debug!(conn = info.id, "idle timeout");
                cluster.stats.cx_closed("idle_timeout");
            }
            Err(e) => {
                tracing::debug!(conn = info.id, error = %e, "connection reset");
                cluster.stats.cx_closed("reset");
            }
        }
        if let Some(l) = logged {
            l.close(Some(upstream_host), None);
        }
    }
}

/// The upstream connection as the cluster's filters
/// (`meshgate_core::upstream_filter`) see it: what they send first, then
/// `preface` (bytes the listener read already), and the bytes read back
/// through their read filters.
async fn upstream_filtered(
    cluster: &Cluster,
    info: &ConnectionInfo,
    alpn: Option<&[u8]>,
    io: DownstreamIo,
    preface: &[u8],
) -> io::Result<FilteredIo> {
    let (first, reads) = cluster.filters.on_connected(info.id, alpn);
    let mut up = FilteredIo::new(io, bytes::Bytes::new(), info, reads, Vec::new())?;
    if !first.is_empty() {
        up.write_all(&first).await?;
    }
    if !preface.is_empty() {
        up.write_all(preface).await?;
    }
    up.flush().await?;
    Ok(up)
}

struct Counters<'a> {
    up_sent: &'a Counter,
    up_received: &'a Counter,
    down_received: &'a Counter,
    down_sent: &'a Counter,
    /// Bytes held, per direction (downstream-to-upstream first).
    held: &'a [Gauge; 2],
    /// Copy buffer bounds, per direction.
    caps: [usize; 2],
}

async fn with_idle_timeout<F: std::future::Future<Output = io::Result<()>>>(
    fut: F,
    idle: Duration,
    activity: &AtomicU64,
) -> io::Result<()> {
    if idle.is_zero() {
        return fut.await;
    }
    let idle_ms = idle.as_millis() as u64;
    let watchdog = async {
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            let last = activity.load(Ordering::Relaxed);
            let now = now_ms();
            if now.saturating_sub(last) >= idle_ms {
                return;
            }
            wait = Duration::from_millis(idle_ms - (now - last)).max(Duration::from_millis(5));
        }
    };
    tokio::select! {
        r = fut => r,
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

async fn write_all_ref(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// Both directions until both saw EOF (each EOF is passed on as a write
/// shutdown: half-close) or either side fails.
async fn pump_bidirectional(
    down: &TcpStream,
    up: &TcpStream,
    mode: ZeroCopy,
    c: &Counters<'_>,
    activity: &AtomicU64,
) -> io::Result<()> {
    // How many directions have seen EOF. The second EOF needs no shutdown:
    // both sockets are closed right after, which sends the FIN anyway.
    let eofs = std::sync::atomic::AtomicU8::new(0);
    let d2u = Way {
        src: down,
        dst: up,
        read: c.down_received,
        written: c.up_sent,
        held: &c.held[0],
        cap: c.caps[0],
    };
    let u2d = Way {
        src: up,
        dst: down,
        read: c.up_received,
        written: c.down_sent,
        held: &c.held[1],
        cap: c.caps[1],
    };
    let d2u = pump_one_way(d2u, mode, activity, &eofs);
    let u2d = pump_one_way(u2d, mode, activity, &eofs);
    tokio::try_join!(d2u, u2d).map(|_| ())
}

/// The user-space copy buffer of one direction (what nginx and HAProxy use
/// by default).
const COPY_BUF: usize = 16 * 1024;
/// Full copy-buffer reads in a row after which a direction counts as bulk:
/// its buffer grows to `BULK_BUF`, or it moves to splice(2) with
/// `zero_copy: bulk`.
const BULK_READS: u32 = 4;
/// The copy buffer of a bulk direction. Fewer, larger reads and writes
/// move bulk data faster than 16 KiB ones (benches/RESULTS.md); only flows
/// that keep filling the small buffer pay for it.
const BULK_BUF: usize = 128 * 1024;
/// How much one splice(2) call moves at most; the pipe is grown to match.
const SPLICE_CHUNK: usize = 256 * 1024;

/// One direction, src to dst, until EOF (passed on as a write shutdown).
/// One direction of a proxied connection.
struct Way<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    read: &'a Counter,
    written: &'a Counter,
    /// Bytes read from `src` not yet written to `dst`.
    held: &'a Gauge,
    /// The copy buffer's bound (`buffer_cap`).
    cap: usize,
}

/// Bytes counted in a `meshgate_tcp_proxy_buffered_bytes` gauge while a
/// direction holds them; uncounted when written, or when the connection's
/// future is dropped mid-write (idle timeout, reset).
struct Held<'a> {
    gauge: &'a Gauge,
    bytes: usize,
}

impl<'a> Held<'a> {
    fn new(gauge: &'a Gauge, bytes: usize) -> Self {
        gauge.increment(bytes as f64);
        Self { gauge, bytes }
    }

    fn release(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.gauge.decrement(n as f64);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.gauge.decrement(self.bytes as f64);
        }
    }
}

/// Reads what `src` has into `buf` (empty; given `size` bytes of
/// capacity, not zeroed, only once `src` is known to be readable):
/// `Some(n)` (0 at EOF), or `None` when it is not readable. A short read
/// drained the receive queue, so it also forgets the read readiness, with
/// the readiness tick taken before the read: the next read then waits for
/// the next epoll edge instead of paying for an EAGAIN, and data that
/// arrived during the read has bumped the tick, so its readiness is kept.
fn read_some(src: &TcpStream, buf: &mut Vec<u8>, size: usize) -> io::Result<Option<usize>> {
    let mut got = None;
    let r = src.try_io(Interest::READABLE, || {
        if buf.capacity() < size {
            *buf = Vec::with_capacity(size);
        }
        let len = buf.capacity();
        // Reads into the spare capacity (within the readiness this
        // `try_io` holds, so it is the same one read(2)).
        let n = src.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < len {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => Ok(got),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(got),
        Err(e) => Err(e),
    }
}

async fn pump_one_way(
    way: Way<'_>,
    mode: ZeroCopy,
    activity: &AtomicU64,
    eofs: &std::sync::atomic::AtomicU8,
) -> io::Result<()> {
    let Way {
        src,
        dst,
        read: read_counter,
        written: write_counter,
        held,
        cap,
    } = way;
    let on_eof = || {
        if eofs.fetch_add(1, Ordering::Relaxed) == 0 {
            shutdown_write(dst);
        }
    };
    if mode != ZeroCopy::Always {
        // The copy buffer exists only while data moves: allocated (not
        // zeroed) when `src` turns readable, given back when it has
        // nothing more, so an idle direction holds no buffer (nginx and
        // HAProxy free theirs alike). `size` stays bulk once it is, and
        // never passes the direction's buffer limit (`cap`).
        let mut buf = Vec::new();
        let mut size = COPY_BUF.min(cap);
        let mut full_reads = 0u32;
        loop {
            let Some(n) = read_some(src, &mut buf, size)? else {
                buf = Vec::new();
                src.readable().await?;
                continue;
            };
            if n == 0 {
                on_eof();
                return Ok(());
            }
            read_counter.increment(n as u64);
            let holding = Held::new(held, n);
            write_all_ref(dst, &buf[..n]).await?;
            drop(holding);
            buf.clear();
            write_counter.increment(n as u64);
            activity.store(now_ms(), Ordering::Relaxed);
            if n >= size {
                full_reads += 1;
                if full_reads == BULK_READS {
                    match mode {
                        ZeroCopy::Bulk => break,
                        _ => size = cap.max(size),
                    }
                }
            } else {
                full_reads = 0;
            }
        }
    }
    let way = Way {
        src,
        dst,
        read: read_counter,
        written: write_counter,
        held,
        cap,
    };
    splice_loop(way, activity, on_eof).await
}

/// The zero-copy path: src -> pipe -> dst with splice(2).
async fn splice_loop(way: Way<'_>, activity: &AtomicU64, on_eof: impl Fn()) -> io::Result<()> {
    use nix::fcntl::{OFlag, SpliceFFlags, splice};
    use std::os::fd::AsFd;
    let Way {
        src,
        dst,
        read: read_counter,
        written: write_counter,
        held,
        cap,
    } = way;
    // The pipe holds what was read and not yet written: at most `cap`
    // (the kernel rounds a pipe up to a page).
    let chunk = SPLICE_CHUNK.min(cap);
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // A bigger pipe means fewer wake-ups per byte; the kernel may refuse
    // (pipe-max-size), then the default 64 KiB is used.
    let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(chunk as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = src
            .async_io(Interest::READABLE, || {
                splice(src.as_fd(), None, &pipe_w, None, chunk, flags).map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            on_eof();
            return Ok(());
        }
        read_counter.increment(n as u64);
        let mut holding = Held::new(held, n);
        let mut pending = n;
        while pending > 0 {
            let m = dst
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe_r, None, dst.as_fd(), None, pending, flags)
                        .map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "splice wrote nothing",
                ));
            }
            pending -= m;
            holding.release(m);
            write_counter.increment(m as u64);
        }
        activity.store(now_ms(), Ordering::Relaxed);
    }
}

/// The generic path for non-TCP downstreams (e.g. TLS): user-space copy.
async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    c: &Counters<'_>,
    activity: &AtomicU64,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let a2b = copy_one_way(
        &mut ar,
        &mut bw,
        c.down_received,
        c.up_sent,
        activity,
        &c.held[0],
        c.caps[0],
    );
    let b2a = copy_one_way(
        &mut br,
        &mut aw,
        c.up_received,
        c.down_sent,
        activity,
        &c.held[1],
        c.caps[1],
    );
    tokio::try_join!(a2b, b2a).map(|_| ())
}

async fn copy_one_way<R, W>(
    r: &mut R,
    w: &mut W,
    read_counter: &Counter,
    write_counter: &Counter,
    activity: &AtomicU64,
    held: &Gauge,
    cap: usize,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; cap.min(64 * 1024)];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        read_counter.increment(n as u64);
        let holding = Held::new(held, n);
        w.write_all(&buf[..n]).await?;
        drop(holding);
        write_counter.increment(n as u64);
        activity.store(now_ms(), Ordering::Relaxed);
    }
}
