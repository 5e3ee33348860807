//! `proxy`: the L7 terminal network filter (Envoy's HTTP connection
//! manager, MOSN's proxy). It picks the codec (configured, or detected from
//! the first bytes among the registered codecs), and for every stream the
//! codec decodes: sanitises the head (hop-by-hop headers, `x-request-id`,
//! `x-forwarded-for`, `x-forwarded-proto`), matches a route, runs the
//! stream filters, and answers locally or forwards through the router.
//! The Envoy HCM edge options (one authority, allowed upgrades, path
//! normalisation, trusted client address, `server`) live in `edge.rs`.
//! Protocol-agnostic: an HTTP/1, HTTP/2 or RPC stream takes the same path;
//! what differs is a property the codec declares (`ProtocolTraits`, ALPN
//! ids). It owns the connection's lifecycle for every codec (`drive`):
//! drain and retire reach the codec as one notice.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};
use meshgate_core::BuildError;
use meshgate_core::codec::{
    Detection, GoAway, Notices, ResponseFuture, ServerCodec, StreamHandler,
};
use meshgate_core::config::filters::{ClientCertDetails, ForwardClientCertDetails, ProxyConfig};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{FilterChain, Ran};
use meshgate_core::forward::forward;
use meshgate_core::network::{
    BuildContext, BuiltFilter, Connection, DownstreamIo, NetworkFilterFactory, ServeFuture, Signal,
    TerminalFilter,
};
use meshgate_core::router::{RouteAction, RouteSubscription};
use meshgate_core::stream::{
    LocalReason, Request, Response, StreamInfo, Upgrade, is_grpc, local_reply,
};
use metrics::{Counter, Histogram};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The listener's `per_connection_buffer_limit_bytes` sizes the HTTP/2
/// windows a client may fill (stream and connection, at least HTTP/2's
/// 65,535), so what one connection makes meshgate hold stays under it, as
/// Envoy's connection buffer does; windows set in `codec_options.http2`
/// are kept as set.
fn h2_windows_from_limit(opts: &mut serde_json::Value, limit: u32) {
    if opts.is_null() {
        *opts = serde_json::Value::Object(Default::default());
    }
    if let Some(o) = opts.as_object_mut() {
        let w = limit.clamp(65_535, 0x7fff_ffff);
        for k in [
            "initial_stream_window_size",
            "initial_connection_window_size",
        ] {
            o.entry(k).or_insert(w.into());
        }
    }
}

/// `common_http_protocol_options.max_headers_count` on the HTTP/1.1 codec:
/// its own `max_request_headers` (the fields its parser makes room for,
/// 256 at most), unless `codec_options.http1` sets that. Without this the
/// codec's default of 100 would refuse first when the count is larger.
fn http1_header_count(opts: &mut serde_json::Value, n: u32) -> Result<(), BuildError> {
    const MOST: u32 = 256;
    let field = "common_http_protocol_options.max_headers_count";
    if n > MOST {
        return Err(BuildError::new(
            field,
            format!("{n}: the HTTP/1.1 codec parses at most {MOST} header fields"),
        ));
    }
    if opts.is_null() {
        *opts = serde_json::Value::Object(Default::default());
    }
    if let Some(o) = opts.as_object_mut() {
        o.entry("max_request_headers").or_insert(n.into());
    }
    Ok(())
}

/// The header-field count of a request when `max_headers_count` is unset:
/// Envoy's default of 100 on every protocol (HTTP/2 and HTTP/3 included,
/// which otherwise only bound the header list's size), or the HTTP/1.1
/// codec's own `max_request_headers` when that is set higher, so that
/// raising it there is not undone here.
fn default_header_count(
    codec_options: &std::collections::BTreeMap<String, serde_json::Value>,
) -> u32 {
    const ENVOY_DEFAULT: u32 = 100;
    codec_options
        .get("http1")
        .and_then(|o| o.get("max_request_headers"))
        .and_then(serde_json::Value::as_u64)
        .map_or(ENVOY_DEFAULT, |n| {
            u32::try_from(n).unwrap_or(u32::MAX).max(ENVOY_DEFAULT)
        })
}

/// Factory of `proxy`; codecs and stream filters come from the registry.
pub struct ProxyFactory;

impl NetworkFilterFactory for ProxyFactory {
    fn name(&self) -> &'static str {
        "proxy"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let cfg: ProxyConfig = parse_typed(config)?;
        if cfg.common_http_protocol_options.max_headers_count == Some(0) {
            return Err(BuildError::new(
                "common_http_protocol_options.max_headers_count",
                "must be at least 1",
            ));
        }
        let names = ctx.registry.codec_names();
        let mut codecs = Vec::new();
        for f in ctx.registry.codecs() {
            let name = f.name();
            if cfg.codec == "auto" || cfg.codec == name {
                let mut opts = cfg.codec_options.get(name).cloned().unwrap_or_default();
                if name == "http2"
                    && let Some(limit) = ctx.buffer_limit()
                {
                    h2_windows_from_limit(&mut opts, limit);
                }
                if name == "http1"
                    && let Some(n) = cfg.common_http_protocol_options.max_headers_count
                {
                    http1_header_count(&mut opts, n)?;
                }
                let server = f.server(&opts).map_err(|e| {
                    BuildError::new(
                        meshgate_core::error::join_path(&format!("codec_options.{name}"), &e.path),
                        e.message,
                    )
                })?;
                codecs.push((f.clone(), server));
            }
        }
        if codecs.is_empty() {
            return Err(BuildError::new(
                "codec",
                format!(
                    "unknown codec '{}' (known: auto, {})",
                    cfg.codec,
                    names.join(", ")
                ),
            ));
        }
        for k in cfg.codec_options.keys() {
            if !names.contains(&k.as_str()) {
                return Err(BuildError::new(
                    format!("codec_options.{k}"),
                    "unknown codec",
                ));
            }
        }
        let table = ctx.subscribe_routes(&cfg.route_config)?;
        let mut filters = Vec::new();
        let mut router = meshgate_core::config::router::RouterFilterConfig::default();
        for (i, f) in cfg.stream_filters.iter().enumerate() {
            // Envoy's router is the implicit last filter here; its entry
            // only carries its options.
            if f.name == crate::chain::ENVOY_ROUTER {
                if !f.config.is_null() {
                    router = parse_typed(&f.config).map_err(|e| {
                        BuildError::new(
                            meshgate_core::error::join_path(
                                &format!("stream_filters[{i}].config"),
                                &e.path,
                            ),
                            e.message,
                        )
                    })?;
                }
                continue;
            }
            let factory = ctx.registry.stream_filter(&f.name).ok_or_else(|| {
                BuildError::new(
                    format!("stream_filters[{i}].name"),
                    format!(
                        "unknown stream filter '{}' (known: {})",
                        f.name,
                        ctx.registry.stream_filter_names().join(", ")
                    ),
                )
            })?;
            let filter = factory.create(&f.config, ctx).map_err(|e| {
                BuildError::new(
                    meshgate_core::error::join_path(
                        &format!("stream_filters[{i}].config"),
                        &e.path,
                    ),
                    e.message,
                )
            })?;
            filters.push(meshgate_core::filter_chain::ChainEntry {
                filter,
                name: factory.name(),
                disabled: f.disabled,
            });
        }
        let upstream_log = build_upstream_log(&cfg.stream_filters, &router, ctx)?;
        let access_log = match &cfg.access_log {
            None => None,
            Some(a) => Some(Arc::new(
                crate::access_log::AccessLogs::build(a, Some(ctx)).map_err(|e| {
                    BuildError::new(
                        meshgate_core::error::join_path("access_log", &e.path),
                        e.message,
                    )
                })?,
            )),
        };
        let want_upstream_local = access_log
            .as_ref()
            .is_some_and(|l| l.reads_upstream_local())
            || upstream_log
                .as_ref()
                .is_some_and(|l| l.reads_upstream_local());
        let chain = crate::chain::build(filters, &table)?;
        let listener = ctx.listener.to_string();
        let edge = crate::edge::Edge::build(
            crate::edge::EdgeOptions {
                normalize_path: cfg.normalize_path,
                merge_slashes: cfg.merge_slashes,
                escaped_slashes: cfg.path_with_escaped_slashes_action,
                use_remote_address: cfg.use_remote_address,
                xff_num_trusted_hops: cfg.xff_num_trusted_hops,
                server_header_transformation: cfg.server_header_transformation,
                server_name: &cfg.server_name,
                upgrade_configs: &cfg.upgrade_configs,
                headers_with_underscores: cfg
                    .common_http_protocol_options
                    .headers_with_underscores_action,
                scheme: &cfg.scheme_header_transformation,
                strip_any_host_port: cfg.strip_any_host_port,
                strip_matching_host_port: cfg.strip_matching_host_port,
                max_headers_count: Some(
                    cfg.common_http_protocol_options
                        .max_headers_count
                        .unwrap_or_else(|| default_header_count(&cfg.codec_options)),
                ),
                via: &cfg.via,
                skip_xff_append: cfg.skip_xff_append,
                strip_trailing_host_dot: cfg.strip_trailing_host_dot,
            },
            &listener,
        )?;
        let proxy = Arc::new(Proxy {
            codecs,
            detect_timeout: cfg.detect_timeout,
            detect_failed: metrics::counter!(meshgate_core::metrics::names::PROXY_CODEC_DETECT_FAIL_TOTAL, "listener" => listener.clone()),
            max_connection: cfg
                .common_http_protocol_options
                .max_connection_duration
                .filter(|d| !d.is_zero())
                .map(|duration| {
                    Arc::new(MaxConnection {
                        duration,
                        drain: cfg.drain_timeout,
                        reached: metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_CX_MAX_DURATION_REACHED_TOTAL, "listener" => listener.clone()),
                    })
                }),
            shared: Arc::new(ProxyHandler {
                table,
                chain,
                generate_request_id: cfg.generate_request_id,
                preserve_external_request_id: cfg.preserve_external_request_id,
                always_set_request_id_in_response: cfg.always_set_request_id_in_response,
                request_timeout: (!cfg.request_timeout.is_zero()).then_some(cfg.request_timeout),
                suppress_envoy_headers: router.suppress_envoy_headers,
                edge,
                max_request_body_bytes: cfg.max_request_body_bytes,
                stream_idle_timeout: cfg.stream_idle_timeout,
                max_stream_duration: cfg
                    .common_http_protocol_options
                    .max_stream_duration
                    .filter(|d| !d.is_zero()),
                access_log,
                want_upstream_local,
                forward_client_cert: cfg.forward_client_cert_details,
                client_cert_details: cfg.set_current_client_cert_details,
                stats: HttpStats::new(&listener),
                idle_timeout: cfg.common_http_protocol_options.idle(),
                local_replies: match &cfg.local_reply_config {
                    None => None,
                    Some(c) => Some(crate::local_reply::LocalReplies::build(c).map_err(|e| {
                        BuildError::new(
                            meshgate_core::error::join_path("local_reply_config", &e.path),
                            e.message,
                        )
                    })?),
                },
                alt_svc: cfg.advertise_http3.as_ref().and_then(|a| {
                    // Digits and quotes: always a valid header value.
                    HeaderValue::from_str(&format!(
                        "h3=\":{}\"; ma={}",
                        a.port,
                        a.max_age.as_secs()
                    ))
                    .ok()
                }),
                tracing: match &cfg.tracing {
                    None => None,
                    Some(t) => Some(meshgate_core::trace::Tracer::build(
                        t,
                        cfg.request_id_extension,
                        ctx,
                        &listener,
                    )?),
                },
                upstream_log,
            }),
        });
        // A listener whose connections carry streams (QUIC) needs a codec
        // that speaks over one of the ALPN ids its handshake offers.
        if let Some(offered) = ctx.stream_transport()
            && !offered.iter().any(|id| proxy.codec_for_alpn(id).is_some())
        {
            return Err(BuildError::new(
                "codec",
                format!(
                    "this listener's connections carry streams over ALPN {offered:?} (QUIC), and codec '{}' speaks over none of them (use auto or http3)",
                    cfg.codec
                ),
            ));
        }
        Ok(BuiltFilter::Terminal(proxy))
    }
}

struct Proxy {
    codecs: Vec<(
        Arc<dyn meshgate_core::codec::CodecFactory>,
        Arc<dyn ServerCodec>,
    )>,
    detect_timeout: Duration,
    detect_failed: Counter,
    shared: Arc<ProxyHandler>,
    /// `common_http_protocol_options.max_connection_duration`, when set.
    max_connection: Option<Arc<MaxConnection>>,
}

/// The HCM's `max_connection_duration` and `drain_timeout`: a connection
/// that old winds down as in a drain, and is closed `drain` later if it
/// has not finished by then.
struct MaxConnection {
    duration: Duration,
    drain: Duration,
    /// `meshgate_http_downstream_cx_max_duration_reached_total{listener}`.
    reached: Counter,
}

impl TerminalFilter for Proxy {
    // The connection's future is the codec's `drive` alone when the codec
    // is known without reading (a transport's ALPN, or one codec), and
    // detection then `drive` otherwise. Built this way, not as one async
    // block holding `conn`, so that the future an idle connection keeps
    // holds no second copy of the `Connection` it gave its codec
    // (benches/RESULTS.md, idle connections).
    fn serve(self: Arc<Self>, conn: Connection) -> ServeFuture {
        let handler: Arc<dyn StreamHandler> = Arc::new(Handler {
            shared: self.shared.clone(),
            peer_ip: std::sync::OnceLock::new(),
        });
        let by_alpn = conn
            .info
            .tls
            .as_ref()
            .and_then(|t| t.alpn.as_deref())
            .and_then(|alpn| self.codec_for_alpn(alpn));
        // A transport of streams (QUIC) has no bytes to detect: the ALPN
        // id its handshake agreed on picks the codec.
        if let DownstreamIo::Streams(t) = &conn.io {
            if let Some(codec) = by_alpn {
                return Box::pin(drive(codec, conn, handler, self.max_connection.clone()));
            }
            self.detect_failed.increment(1);
            tracing::debug!(
                conn = conn.info.id,
                transport = t.name(),
                "no codec for this transport's ALPN; closing"
            );
            t.refuse();
            return Box::pin(std::future::ready(()));
        }
        if self.codecs.len() == 1 {
            let codec = self.codecs[0].1.clone();
            return Box::pin(drive(codec, conn, handler, self.max_connection.clone()));
        }
        // On TLS, the protocol ALPN agreed on picks the codec.
        if let Some(codec) = by_alpn {
            return Box::pin(drive(codec, conn, handler, self.max_connection.clone()));
        }
        // The connection waits for detection in a box of its own, and
        // detection (its reads and its timer) in another: both are gone
        // once the codec has the connection.
        let mut conn = Box::new(conn);
        Box::pin(async move {
            let detect = Box::pin(tokio::time::timeout(
                self.detect_timeout,
                self.detect(&mut conn),
            ))
            .await;
            match detect {
                Ok(Some(codec)) => drive(codec, *conn, handler, self.max_connection.clone()).await,
                Ok(None) => {
                    self.detect_failed.increment(1);
                    tracing::debug!(
                        conn = conn.info.id,
                        "no codec recognised the connection; closing"
                    );
                }
                Err(_) => {
                    self.detect_failed.increment(1);
                    tracing::debug!(conn = conn.info.id, "protocol detection timed out; closing");
                }
            }
        })
    }
}

/// Serves `conn` with `codec`, the one place a connection's lifecycle is
/// driven for every protocol: the server's drain and the listener's
/// retire become the codec's notices (`GoAway`).
///
/// A plain function returning the future: the codec takes `conn` at once,
/// so the future keeps only what it polls (an async fn would keep its
/// arguments, `conn` included, for the connection's whole life).
fn drive(
    codec: Arc<dyn ServerCodec>,
    conn: Connection,
    handler: Arc<dyn StreamHandler>,
    max: Option<Arc<MaxConnection>>,
) -> impl Future<Output = ()> + Send + 'static {
    let drain = conn.drain.clone();
    let retire = conn.info.retire.clone();
    let notices = Notices::new();
    let mut serve = codec.serve(conn, handler, notices.clone());
    async move {
        match max {
            None => drive_served(&mut serve, drain, retire, notices).await,
            Some(max) => {
                let n = notices.clone();
                // Boxed: the timers live only on connections with a limit.
                let mut served = Box::pin(drive_served(&mut serve, drain, retire, notices));
                let reached = meshgate_core::overload::timers::timeout(
                    meshgate_core::overload::timers::Timer::HttpDownstreamConnectionMax,
                    max.duration,
                    &mut served,
                );
                if reached.await.is_ok() {
                    return;
                }
                // At the limit: wound down as in a drain (an idle HTTP/1.1
                // connection closes, HTTP/2 and HTTP/3 send GOAWAY), and
                // closed `drain_timeout` later if streams remain.
                max.reached.increment(1);
                n.go_away(GoAway::Drain);
                if tokio::time::timeout(max.drain, &mut served).await.is_err() {
                    tracing::debug!(
                        "connection still open drain_timeout after max_connection_duration: closed"
                    );
                }
            }
        }
    }
}

/// `drive`'s loop: polls the codec's future, turning the drain and the
/// retire into notices.
async fn drive_served(serve: &mut ServeFuture, drain: Signal, retire: Signal, notices: Notices) {
    let drain_wait = drain.cancelled();
    let retire_wait = retire.cancelled();
    tokio::pin!(drain_wait, retire_wait);
    let mut armed = false;
    let mut given = None;
    std::future::poll_fn(|cx| {
        // The waits are polled once, to register this task: the
        // registration stays while they live and only this task polls
        // them, so the waker stays the right one. From then on a poll
        // costs two atomic loads, not a lock per wait.
        if !armed {
            let _ = drain_wait.as_mut().poll(cx);
            let _ = retire_wait.as_mut().poll(cx);
            armed = true;
        }
        let now = if drain.is_cancelled() {
            Some(GoAway::Drain)
        } else if retire.is_cancelled() {
            Some(GoAway::Retire)
        } else {
            None
        };
        if now > given
            && let Some(kind) = now
        {
            given = now;
            notices.go_away(kind);
        }
        serve.as_mut().poll(cx)
    })
    .await
}

/// The most bytes read to tell protocols apart.
const MAX_DETECT_BYTES: usize = 64;

impl Proxy {
    /// The codec of an ALPN protocol id: the first codec that declares it
    /// (`ServerCodec::alpn`), else the codec of that name.
    fn codec_for_alpn(&self, alpn: &str) -> Option<Arc<dyn ServerCodec>> {
        self.codecs
            .iter()
            .find(|(_, s)| s.alpn().contains(&alpn))
            .or_else(|| self.codecs.iter().find(|(f, _)| f.name() == alpn))
            .map(|(_, s)| s.clone())
    }

    /// Reads until one codec claims the connection; the bytes read become
    /// the connection's preface.
    async fn detect(&self, conn: &mut Connection) -> Option<Arc<dyn ServerCodec>> {
        let mut buf = BytesMut::from(&conn.preface[..]);
        loop {
            // Codecs come in detection order (the registry's priority): a
            // match wins unless a codec before it still needs bytes.
            let mut undecided = false;
            let mut matched = None;
            for (factory, server) in &self.codecs {
                match factory.detect(&buf) {
                    Detection::Match => {
                        matched = Some(server);
                        break;
                    }
                    Detection::NeedMore => undecided = true,
                    Detection::NoMatch => {}
                }
            }
            if let Some(server) = matched
                && (!undecided || buf.len() >= MAX_DETECT_BYTES)
            {
                conn.preface = buf.freeze();
                return Some(server.clone());
            }
            if !undecided || buf.len() >= MAX_DETECT_BYTES {
                return None;
            }
            let n = match &mut conn.io {
                DownstreamIo::Tcp(s) => s.read_buf(&mut buf).await,
                DownstreamIo::Boxed(s) => s.read_buf(&mut buf).await,
                DownstreamIo::Streams(_) => return None,
            };
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// Status-class counters of one (route, cluster) pair.
type RouteCounters = Arc<[Counter; 5]>;

struct HttpStats {
    listener: String,
    rq_total: Counter,
    duration: Histogram,
    /// `meshgate_downstream_rq_xx_total` handles per (route, cluster),
    /// one per status class, registered on first use so the hot path does
    /// no label formatting. Names are interned, so equal names are one
    /// address.
    by_route:
        dashmap::DashMap<(&'static str, &'static str), RouteCounters, rustc_hash::FxBuildHasher>,
    /// This one's key in the per-thread `BY_ADDR` caches.
    id: u64,
}

thread_local! {
    /// A per-thread cache in front of `HttpStats::by_route`, keyed by the
    /// stats' id and the addresses of the interned names: a lookup hashes
    /// three words instead of two strings and takes no lock (a shared
    /// map's read lock was two atomic instructions per request). Interned
    /// names are never freed, so an address always means the same name;
    /// the cache is emptied when it grows large.
    static BY_ADDR: std::cell::RefCell<
        std::collections::HashMap<(u64, usize, usize), RouteCounters, rustc_hash::FxBuildHasher>,
    > = std::cell::RefCell::default();
}

/// Most `BY_ADDR` entries of a thread before it is emptied.
const BY_ADDR_MAX: usize = 4096;

impl HttpStats {
    fn new(listener: &str) -> Self {
        Self {
            listener: listener.to_string(),
            rq_total: metrics::counter!(meshgate_core::metrics::names::DOWNSTREAM_RQ_TOTAL, "listener" => listener.to_string()),
            duration: metrics::histogram!(meshgate_core::metrics::names::DOWNSTREAM_RQ_DURATION_SECONDS, "listener" => listener.to_string()),
            by_route: dashmap::DashMap::with_hasher(rustc_hash::FxBuildHasher),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    fn count(&self, info: &StreamInfo, status: u16) {
        let route = info.route.unwrap_or("");
        let cluster = info.upstream_cluster.unwrap_or("");
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let addr = (self.id, route.as_ptr() as usize, cluster.as_ptr() as usize);
        let hit = BY_ADDR.with(|m| {
            m.borrow()
                .get(&addr)
                .map(|c| c[class].increment(1))
                .is_some()
        });
        if hit {
            return;
        }
        let counters = match self.by_route.get(&(route, cluster)) {
            Some(c) => c.clone(),
            None => {
                let c: RouteCounters = Arc::new(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                    metrics::counter!(meshgate_core::metrics::names::DOWNSTREAM_RQ_XX_TOTAL, "listener" => self.listener.clone(), "route" => route, "cluster" => cluster, "code_class" => class)
                }));
                self.by_route.entry((route, cluster)).or_insert(c).clone()
            }
        };
        counters[class].increment(1);
        BY_ADDR.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= BY_ADDR_MAX {
                m.clear();
            }
            m.insert(addr, counters);
        });
    }
}

struct ProxyHandler {
    access_log: Option<Arc<crate::access_log::AccessLogs>>,
    /// The route table; a route update (file reload or RDS) is a new
    /// value on it, so open connections route their next request by it.
    table: RouteSubscription,
    /// The stream filters; the router runs after them.
    chain: FilterChain,
    generate_request_id: bool,
    /// The HCM's `preserve_external_request_id`.
    preserve_external_request_id: bool,
    /// The HCM's `always_set_request_id_in_response`.
    always_set_request_id_in_response: bool,
    /// The HCM's `request_timeout` (unset: none).
    request_timeout: Option<Duration>,
    /// The router's `suppress_envoy_headers`.
    suppress_envoy_headers: bool,
    edge: crate::edge::Edge,
    max_request_body_bytes: Option<u64>,
    stream_idle_timeout: Duration,
    /// `common_http_protocol_options.max_stream_duration`.
    max_stream_duration: Option<Duration>,
    stats: HttpStats,
    /// `alt-svc` added to responses on TCP connections.
    alt_svc: Option<HeaderValue>,
    idle_timeout: Option<Duration>,
    /// `local_reply_config`, when set.
    local_replies: Option<crate::local_reply::LocalReplies>,
    /// `tracing`, when set (meshgate_core::trace).
    tracing: Option<Arc<meshgate_core::trace::Tracer>>,
    /// The router's `upstream_log`, when set: one entry per upstream try.
    upstream_log: Option<Arc<crate::access_log::AccessLogs>>,
    /// A log reads `%UPSTREAM_LOCAL_ADDRESS%`: the upstream codec is asked
    /// for its connection's local address.
    want_upstream_local: bool,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    forward_client_cert: ForwardClientCertDetails,
    client_cert_details: ClientCertDetails,
}

/// The router's `upstream_log` (Envoy's field names in errors, under the
/// router's `stream_filters` entry). The flush options are refused by
/// name: a try's entry is written when it ends, never before nor
/// periodically.
fn build_upstream_log(
    filters: &[meshgate_core::config::filters::StreamFilterConfig],
    router: &meshgate_core::config::router::RouterFilterConfig,
    ctx: &BuildContext<'_>,
) -> Result<Option<Arc<crate::access_log::AccessLogs>>, BuildError> {
    let i = filters
        .iter()
        .position(|f| f.name == crate::chain::ENVOY_ROUTER)
        .unwrap_or(0);
    let p = format!("stream_filters[{i}].config");
    if let Some(o) = &router.upstream_log_options {
        if o.flush_upstream_log_on_upstream_stream {
            return Err(BuildError::new(
                format!("{p}.upstream_log_options.flush_upstream_log_on_upstream_stream"),
                "not supported: a try's upstream log entry is written when the try ends",
            ));
        }
        if o.upstream_log_flush_interval.is_some() {
            return Err(BuildError::new(
                format!("{p}.upstream_log_options.upstream_log_flush_interval"),
                "not supported: a try's upstream log entry is written once, when the try ends",
            ));
        }
    }
    if router.upstream_log.is_empty() {
        return Ok(None);
    }
    crate::access_log::AccessLogs::build_list(&router.upstream_log, Some(ctx))
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| {
            BuildError::new(
                meshgate_core::error::join_path(&format!("{p}.upstream_log"), &e.path),
                e.message,
            )
        })
}

/// The `StreamHandler` the codecs call, one per connection: the shared
/// state and what is the same for every stream of the connection.
struct Handler {
    shared: Arc<ProxyHandler>,
    /// The peer's address as an `x-forwarded-for` element, formatted once
    /// per connection rather than per request (formatting an address is
    /// costly next to the rest of a proxied request; benches/RESULTS.md).
    peer_ip: std::sync::OnceLock<HeaderValue>,
}

impl StreamHandler for Handler {
    fn handle(&self, req: Request, info: StreamInfo) -> ResponseFuture<'_> {
        let peer_ip = self
            .peer_ip
            .get_or_init(|| {
                // An IP address is always a valid header value.
                HeaderValue::from_str(&info.connection.peer_addr.ip().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
            })
            .clone();
        let span = meshgate_core::spans::stream(&info);
        let fut = self.shared.process(req, info, peer_ip);
        // A disabled span (the default level) is not worth a wrapper that
        // enters and leaves it on every poll and makes the future larger.
        if span.is_disabled() {
            Box::pin(fut)
        } else {
            Box::pin(tracing::Instrument::instrument(fut, span))
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.shared.idle_timeout
    }
}

// Header names as constants: a `&str` key is parsed on every lookup.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Hop-by-hop headers (RFC 9110 section 7.6.1) never forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TE,
    http::header::TRAILER,
];

/// Which of the headers the proxy acts on a message carries, found in one
/// pass over its names: a length test first, so most names cost no
/// comparison, where a lookup per header the proxy cares about would hash
/// each of them (measured in the HTTP/1.1 profile, benches/RESULTS.md).
#[derive(Default, Clone, Copy)]
struct Seen {
    hop_by_hop: bool,
    expect: bool,
    forwarded_for: bool,
    client_cert: bool,
    request_id: bool,
    force_trace: bool,
}

fn seen(h: &HeaderMap) -> Seen {
    let mut s = Seen::default();
    for k in h.keys() {
        match k.as_str().len() {
            2 | 7 | 10 | 16 | 17 => s.hop_by_hop |= HOP_BY_HOP.contains(k),
            6 => s.expect |= k == http::header::EXPECT,
            12 => s.request_id |= k == X_REQUEST_ID,
            15 => s.forwarded_for |= k == X_FORWARDED_FOR,
            19 => s.force_trace |= k == X_ENVOY_FORCE_TRACE,
            23 => s.client_cert |= k == X_FORWARDED_CLIENT_CERT,
            _ => {}
        }
    }
    s
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none.
    if !seen(h).hop_by_hop {
        return;
    }
    strip_hop_by_hop_present(h);
}

/// Removes the hop-by-hop headers of a message known to carry some.
fn strip_hop_by_hop_present(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let keep_te_trailers = h
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    for n in listed {
        // Never connection-specific: the authority, and the framing, which
        // is the codec's.
        if n == http::header::HOST || n == http::header::CONTENT_LENGTH {
            continue;
        }
        h.remove(n);
    }
    if keep_te_trailers {
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` plus
/// `Upgrade: X`), e.g. `websocket`.
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        h.get(http::header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Joins the two upgraded byte streams (e.g. a WebSocket) until either
/// side closes, or the stream's max stream duration passes (both closed,
/// as Envoy resets the upgraded stream).
fn tunnel(
    down: Upgrade,
    up: Upgrade,
    conn: u64,
    deadline: Option<tokio::time::Instant>,
    protocol: &'static str,
) {
    // Held while the tunnel is open: a drain waits for it (drain time).
    let drain = meshgate_core::server::detached_token();
    tokio::spawn(async move {
        let _drain = drain;
        let (Some(down), Some(up)) = (down.take(), up.take()) else {
            return;
        };
        let (d, u) = tokio::join!(down, up);
        match (d, u) {
            (Ok(mut d), Ok(mut u)) => {
                let copy = tokio::io::copy_bidirectional(&mut d, &mut u);
                let r = match deadline {
                    None => copy.await,
                    Some(at) => match tokio::time::timeout_at(at, copy).await {
                        Ok(r) => r,
                        Err(_) => {
                            meshgate_core::stream_duration::count(protocol, "after_response");
                            tracing::debug!(conn, "upgraded tunnel ended: max stream duration");
                            return;
                        }
                    },
                };
                tracing::debug!(conn, result = ?r, "upgraded tunnel closed");
            }
            (d, u) => {
                tracing::debug!(conn, down = ?d.err(), up = ?u.err(), "upgrade failed");
            }
        }
    });
}

fn request_id() -> HeaderValue {
    let v: u128 = rand::random();
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 68) as u16 & 0xfff,
        ((v >> 52) as u16 & 0x3fff) | 0x8000,
        v as u64 & 0xffff_ffff_ffff
    );
    // Hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

impl ProxyHandler {
    /// One stream, from its request head to its response head. A single
    /// async fn the codec's boxed future owns directly: every async layer
    /// between the codec and the upstream exchange adds its state to the
    /// future that is moved into the box.
    // Not an async fn on purpose (see the comment in the body).
    #[allow(clippy::manual_async_fn)]
    fn process(
        &self,
        mut req: Request,
        mut info: StreamInfo,
        peer_ip: HeaderValue,
    ) -> impl Future<Output = Response> + Send + '_ {
        // An async block, not an async fn: the arguments are captured
        // once, not copied again into locals.
        async move {
            self.stats.rq_total.increment(1);
            info.grpc = is_grpc(req.headers());
            let seen = seen(req.headers());
            // Before meshgate adds its own headers: a client's `Connection`
            // listing must not remove them.
            let prepared = if meshgate_core::overload::refuse_request() {
                // The overload manager's stop_accepting_requests: answered
                // before any work, and as every local reply (gRPC status,
                // RPC busy status, access log).
                meshgate_core::overload::count_refused_request();
                Err(Box::new(local_reply(&mut info, LocalReason::Overloaded)))
            } else {
                self.prepare(&mut req, &mut info, seen)
            };
            // Envoy's request id: generated when missing, and replaced on
            // an external request unless preserve_external_request_id.
            // The scan's answer, unless a `Connection` listing may have
            // removed the id since.
            let has_id =
                seen.request_id && (!seen.hop_by_hop || req.headers().contains_key(&X_REQUEST_ID));
            if self.generate_request_id
                && (!has_id
                    || (!self.preserve_external_request_id
                        && self
                            .edge
                            .is_external(seen.forwarded_for, info.downstream_remote_address)))
            {
                req.headers_mut().insert(X_REQUEST_ID, request_id());
            }
            // The id the response carries (always_set_request_id_in_response,
            // or a trusted x-envoy-force-trace, as Envoy): taken before the
            // request moves upstream.
            let id_in_response = if self.always_set_request_id_in_response
                || (seen.force_trace
                    && !self
                        .edge
                        .is_external(seen.forwarded_for, info.downstream_remote_address))
            {
                req.headers().get(&X_REQUEST_ID).cloned()
            } else {
                None
            };
            // request_timeout: the whole request within it, unless the
            // response starts first.
            let request_end = match self.request_timeout {
                Some(t) if prepared.is_ok() && !http_body::Body::is_end_stream(req.body()) => {
                    Some((
                        meshgate_core::stream_duration::track_request(&mut req),
                        tokio::time::Instant::from_std(info.start) + t,
                    ))
                }
                _ => None,
            };
            // What the access log needs of the request, before it is forwarded.
            let logged = self
                .access_log
                .as_ref()
                .map(|l| l.begin(&mut req, info.start));
            let seen_by_replies = self.local_replies.as_ref().map(|l| l.see(&req));
            let mut ran = Ran::default();
            let mut resp = match prepared {
                // Without request_timeout the exchange's future is built in
                // place (binding it first cost a copy of it per request);
                // with one, it goes on the heap with its timer.
                Ok(upgrade) => match request_end {
                    None => {
                        self.route_and_forward(
                            &mut req, &mut info, peer_ip, seen, upgrade, &mut ran,
                        )
                        .await
                    }
                    Some((end, deadline)) => {
                        let timed =
                            Box::pin(meshgate_core::stream_duration::until_request_timeout(
                                self.route_and_forward(
                                    &mut req, &mut info, peer_ip, seen, upgrade, &mut ran,
                                ),
                                &end,
                                deadline,
                            ))
                            .await;
                        match timed {
                            Some(r) => r,
                            None => local_reply(&mut info, LocalReason::RequestTimeout),
                        }
                    }
                },
                Err(resp) => *resp,
            };
            // A filter that rewrites the head from the body (gRPC-Web,
            // the gRPC-JSON transcoder) asked for it whole.
            if let Some(b) = info
                .filter_state
                .get::<crate::grpc::BufferResponse>()
                .copied()
            {
                crate::grpc::buffer_response(&mut resp, &mut info, b).await;
            }
            if let (Some(l), Some(seen)) = (&self.local_replies, &seen_by_replies) {
                l.apply(&mut resp, &info, seen);
            }
            // A gRPC client gets meshgate's own answers as gRPC statuses.
            if info.grpc && info.local_reply.is_some() {
                crate::grpc::local_reply(&mut resp);
            }
            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(resp.headers_mut());
            }
            if !self.chain.is_empty() {
                self.chain.on_response(&ran, &mut resp, &mut info);
                // A response-phase refusal of a gRPC stream is a gRPC
                // status too (converting twice gives the same answer).
                if info.grpc && info.denied_by.is_some() {
                    crate::grpc::local_reply(&mut resp);
                }
            }
            if let Some(v) = &self.alt_svc
                && info.traits.alt_svc
                && !resp.headers().contains_key(http::header::ALT_SVC)
            {
                resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
            }
            // HTTP only: RPC codecs carry no response headers.
            if info.traits.response_headers {
                self.edge.server_header(resp.headers_mut());
                self.edge.append_via(resp.headers_mut());
                if let Some(id) = id_in_response {
                    // The id as pack_trace_reason left it, if it changed.
                    let id = match info
                        .filter_state
                        .get::<meshgate_core::trace::PackedRequestId>()
                    {
                        Some(p) => p.0.clone(),
                        None => id,
                    };
                    resp.headers_mut().insert(X_REQUEST_ID, id);
                }
            }
            let status = resp.status().as_u16();
            if let Some(t) = &self.tracing {
                t.finish(&mut req, &mut info, status);
            }
            self.stats.count(&info, status);
            self.stats
                .duration
                .record(info.start.elapsed().as_secs_f64());
            if !self.chain.is_empty() {
                self.chain.on_complete(&ran, &info, status);
            }
            // Logged when the response body ends (the info moves there).
            if let (Some(log), Some(p)) = (&self.access_log, logged) {
                return log.attach(resp, p, info);
            }
            resp
        }
    }

    /// The request head as meshgate routes and forwards it, before any
    /// header of meshgate's own is added: one authority, no `CONNECT`, the
    /// normalised path, hop-by-hop and `Connection`-listed headers
    /// removed. `Ok` carries the upgrade the request asks for (allowed or
    /// not once its route is known); `Err` is the answer instead.
    fn prepare(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        seen: Seen,
    ) -> Result<Option<HeaderValue>, Box<Response>> {
        use crate::edge::{Edge, PathVerdict, Refusal};
        if let Some(r) = self
            .edge
            .check_authority(req, info.traits.authority_in_host)
        {
            self.edge.count(r);
            return Err(Box::new(local_reply(info, LocalReason::BadRequest)));
        }
        if let Some(r) = self.edge.check_header_count(req.headers()) {
            self.edge.count(r);
            return Err(Box::new(local_reply(info, LocalReason::HeadersTooLarge)));
        }
        if let Some(r) = self.edge.check_underscores(req.headers_mut()) {
            self.edge.count(r);
            return Err(Box::new(local_reply(info, LocalReason::BadRequest)));
        }
        self.edge.strip_host_dot(req);
        self.edge
            .strip_host_port(req, info.connection.local_addr.port());
        self.edge.transform_scheme(req);
        if Edge::is_connect(req.method()) {
            self.edge.count(Refusal::Connect);
            return Err(Box::new(local_reply(info, LocalReason::NoRoute)));
        }
        if self.edge.normalizes() {
            match self.edge.normalize_request(req) {
                PathVerdict::Keep | PathVerdict::Forward(_) => {}
                PathVerdict::Reject(r) => {
                    self.edge.count(r);
                    return Err(Box::new(local_reply(info, LocalReason::BadRequest)));
                }
                PathVerdict::Redirect(location) => {
                    self.edge.count(Refusal::EscapedSlashRedirect);
                    info.local_reply = Some("escaped_slash_redirect");
                    let mut r = Response::new(meshgate_core::stream::empty_body());
                    *r.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        r.headers_mut().insert(http::header::LOCATION, v);
                    }
                    return Err(Box::new(r));
                }
            }
        }
        if !seen.hop_by_hop {
            return Ok(None);
        }
        let headers = req.headers_mut();
        let upgrade = upgrade_protocol(headers);
        strip_hop_by_hop_present(headers);
        if upgrade.is_some() {
            // Only an h2c upgrade uses it, and that is never tunnelled.
            headers.remove(HTTP2_SETTINGS);
        }
        Ok(upgrade)
    }

    async fn route_and_forward(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        peer_ip: HeaderValue,
        seen: Seen,
        upgrade: Option<HeaderValue>,
        ran: &mut Ran,
    ) -> Response {
        let headers = req.headers_mut();
        if seen.expect {
            headers.remove(http::header::EXPECT);
        }
        self.edge
            .forwarded_for(headers, seen.forwarded_for, peer_ip, info);
        self.edge.append_via(headers);
        let tls = info.connection.tls.clone();
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        );
        // mTLS: the verified client identity in x-forwarded-client-cert,
        // as Envoy's `forward_client_cert_details` says.
        let peer = tls.as_ref().and_then(|t| t.peer.as_ref());
        match (self.forward_client_cert, peer) {
            (ForwardClientCertDetails::AlwaysForwardOnly, _)
            | (ForwardClientCertDetails::ForwardOnly, Some(_)) => {}
            (ForwardClientCertDetails::AppendForward, Some(p)) => {
                let mine = xfcc(p, self.client_cert_details);
                let v = match headers.get(&X_FORWARDED_CLIENT_CERT) {
                    Some(prev) if seen.client_cert => {
                        let mut v = prev.as_bytes().to_vec();
                        v.push(b',');
                        v.extend_from_slice(mine.as_bytes());
                        HeaderValue::from_bytes(&v).ok()
                    }
                    _ => HeaderValue::from_str(&mine).ok(),
                };
                headers.remove(&X_FORWARDED_CLIENT_CERT);
                if let Some(v) = v {
                    headers.insert(X_FORWARDED_CLIENT_CERT, v);
                }
            }
            (ForwardClientCertDetails::SanitizeSet, Some(p)) => {
                if seen.client_cert {
                    headers.remove(&X_FORWARDED_CLIENT_CERT);
                }
                if let Ok(v) = HeaderValue::from_str(&xfcc(p, self.client_cert_details)) {
                    headers.insert(X_FORWARDED_CLIENT_CERT, v);
                }
            }
            // Sanitize, or no verified client certificate: a client-sent
            // value is never trusted.
            _ => {
                if seen.client_cert {
                    headers.remove(&X_FORWARDED_CLIENT_CERT);
                }
            }
        }
        // The route is computed before the stream filters (they read it and
        // their per-route config); "no route" and the body limit are the
        // router's, after them (DESIGN.md layer 5).
        let table = self.table.load_full();
        let matched = table.find_request(req);
        // The stream duration limit (Envoy's max_stream_duration), known
        // once the route is: the rest of the stream races it.
        let limit = match matched.map(|(_, r)| r.action()) {
            Some(RouteAction::Cluster(c)) => meshgate_core::stream_duration::limit(
                c.max_stream_duration(),
                self.max_stream_duration,
                req.headers(),
                info.grpc,
            ),
            _ => None,
        };
        let Some(limit) = limit else {
            return self
                .routed(req, info, upgrade, ran, &table, matched, None)
                .await;
        };
        if let Some(v) = limit.grpc_timeout {
            req.headers_mut().insert(GRPC_TIMEOUT, v);
        }
        let end = meshgate_core::stream_duration::track_request(req);
        let deadline = tokio::time::Instant::from_std(info.start) + limit.duration;
        info.route = matched.map(|(_, r)| r.stat_name());
        let routed = self.routed(req, info, upgrade, ran, &table, matched, Some(deadline));
        let mut resp = match Box::pin(meshgate_core::stream_duration::race(routed, deadline)).await
        {
            Some(r) => r,
            None => return meshgate_core::stream_duration::reached(info, end.complete()),
        };
        meshgate_core::stream_duration::bound_response(&mut resp, deadline, info.protocol);
        resp
    }

    /// The stream once its route is known: the stream filters, then the
    /// router's answer or the upstream exchange. `deadline`: the stream
    /// duration limit, which an upgraded tunnel keeps.
    // The borrowed parts of one stream, passed as they are rather than
    // packed into a struct built per request.
    #[allow(clippy::too_many_arguments)]
    async fn routed<'t>(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        mut upgrade: Option<HeaderValue>,
        ran: &mut Ran,
        table: &'t meshgate_core::router::RouteTable,
        mut matched: Option<(
            &'t meshgate_core::router::VirtualHost,
            &'t meshgate_core::router::Route,
        )>,
        deadline: Option<tokio::time::Instant>,
    ) -> Response {
        if !self.chain.is_empty() {
            info.route = matched.map(|(_, r)| r.stat_name());
            if let Err(resp) = self
                .chain
                .on_request(table, &mut matched, req, info, ran)
                .await
            {
                return resp;
            }
        }
        if let Some(limit) = self.max_request_body_bytes
            && let Some(len) = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            && len > limit
        {
            return local_reply(info, LocalReason::PayloadTooLarge);
        }
        let Some((vhost, route)) = matched else {
            return local_reply(info, LocalReason::NoRoute);
        };
        info.route = Some(route.stat_name());
        meshgate_core::spans::record_route(route.stat_name());
        match route.action() {
            RouteAction::DirectResponse(d) => {
                let mut resp = d.response();
                // Envoy sends a direct response as a local reply.
                if self.local_replies.is_some() {
                    resp.extensions_mut()
                        .insert(crate::local_reply::DirectBody(d.body().clone()));
                }
                resp
            }
            RouteAction::Redirect(r) => r.response(req),
            RouteAction::Cluster(c) => {
                // Borrowed: the route table this future holds keeps it.
                let cluster = ran.pick_cluster(c);
                if let Some(status) = route.cluster_not_found(cluster) {
                    let mut resp = local_reply(info, LocalReason::ClusterNotFound);
                    *resp.status_mut() = status;
                    return resp;
                }
                let hashed = c.request_hash(req, info);
                route.apply_request_mutations(vhost, req);
                let downstream_upgrade = match upgrade.take() {
                    Some(u) => {
                        let t = u.to_str().unwrap_or("");
                        if self
                            .edge
                            .upgrade_allowed(&u, route.upgrade_override(t.trim()))
                        {
                            let h = req.headers_mut();
                            h.insert(
                                http::header::CONNECTION,
                                HeaderValue::from_static("upgrade"),
                            );
                            h.insert(http::header::UPGRADE, u.clone());
                            upgrade = Some(u);
                        } else {
                            // Forwarded as a plain request.
                            self.edge.count(crate::edge::Refusal::UpgradeNotAllowed);
                        }
                        req.extensions_mut().remove::<Upgrade>()
                    }
                    None => req.extensions_mut().remove::<Upgrade>(),
                };
                let downstream_upgrade = downstream_upgrade.filter(|_| upgrade.is_some());
                info.limits = meshgate_core::body::StreamLimits {
                    max_request_body_bytes: self.max_request_body_bytes,
                    // The route's value wins, `0s` disabling it.
                    idle_timeout: Some(c.idle_timeout().unwrap_or(self.stream_idle_timeout))
                        .filter(|d| !d.is_zero()),
                };
                info.suppress_envoy_headers = self.suppress_envoy_headers;
                if let Some(t) = &self.tracing {
                    t.decide(req, info, route.tracing());
                }
                if !c.mirrors().is_empty() {
                    meshgate_core::router::mirror::start(
                        c.mirrors(),
                        req,
                        info,
                        c.forward_policy().timeout,
                    );
                }
                let sent = (!self.suppress_envoy_headers).then(std::time::Instant::now);
                // meshgate's route `fallback` (service degradation).
                let (cluster, kept) = match c.fallback() {
                    None => (cluster, None),
                    Some(f) => match crate::fallback::before(f, cluster, req, info) {
                        crate::fallback::Before::Answer(r) => return r,
                        crate::fallback::Before::Forward(to, kept) => (to, kept),
                    },
                };
                // meshgate's `route.http_to_rpc`: the request becomes an RPC
                // call (boxed: the plain forward's future stays as small).
                if let Some(plan) = c.http_to_rpc() {
                    let policy = c.forward_policy();
                    let call = crate::http_to_rpc::call(
                        plan,
                        cluster,
                        req,
                        info,
                        policy,
                        hashed.hash,
                        self.upstream_log.as_ref(),
                    );
                    let mut resp = Box::pin(call).await;
                    route.apply_response_mutations(vhost, &mut resp);
                    return resp;
                }
                // The router's `upstream_log` records the tries, and shows
                // the request as it went upstream.
                let up_head = self.upstream_log.as_ref().map(|_| {
                    info.upstream_tries = Some(Box::default());
                    crate::access_log::UpstreamHead::of(req)
                });
                if self.want_upstream_local {
                    req.extensions_mut()
                        .insert(meshgate_core::stream::WantUpstreamLocalAddress);
                }
                // The request moves into the upstream exchange before the
                // await: this future does not keep a copy of it.
                let exchange = {
                    let owned =
                        std::mem::replace(req, Request::new(meshgate_core::stream::empty_body()));
                    forward(cluster, owned, info, c.forward_policy(), hashed.hash)
                };
                // A stream filter's request body phase may refuse the
                // stream while it is sent upstream: its answer wins.
                let mut resp = match ran.take_body_refusal() {
                    None => exchange.await,
                    Some(w) => match meshgate_core::filter_chain::guard_upstream(exchange, w).await
                    {
                        Ok(r) => r,
                        Err(refusal) => return refusal.reply(info),
                    },
                };
                if self.want_upstream_local {
                    info.upstream_local_address = resp
                        .extensions()
                        .get::<meshgate_core::stream::UpstreamLocalAddress>()
                        .map(|a| a.0);
                }
                if let (Some(log), Some(up)) = (&self.upstream_log, up_head) {
                    resp = log.log_tries(info, up, resp);
                }
                if let Some(f) = c.fallback() {
                    let policy = c.forward_policy();
                    resp = Box::pin(crate::fallback::after(
                        f,
                        cluster,
                        kept,
                        resp,
                        info,
                        policy,
                        hashed.hash,
                        self.upstream_log.as_ref(),
                    ))
                    .await;
                }
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    let upstream_upgrade = resp.extensions_mut().remove::<Upgrade>();
                    match (downstream_upgrade, upstream_upgrade, upgrade) {
                        (Some(down), Some(up), Some(proto)) => {
                            tunnel(down, up, info.connection.id, deadline, info.protocol);
                            let h = resp.headers_mut();
                            h.insert(
                                http::header::CONNECTION,
                                HeaderValue::from_static("upgrade"),
                            );
                            h.insert(http::header::UPGRADE, proto);
                            return resp;
                        }
                        _ => return local_reply(info, LocalReason::UpstreamProtocolError),
                    }
                }
                if info.local_reply.is_none() {
                    // HTTP only: RPC codecs carry no response headers.
                    if let Some(sent) = sent
                        && info.traits.response_headers
                    {
                        meshgate_core::router::envoy_headers::on_upstream_response(
                            resp.headers_mut(),
                            sent,
                            c.attempt_count_in_response()
                                .then_some(info.upstream_attempts),
                        );
                    }
                    route.apply_response_mutations(vhost, &mut resp);
                    hashed.set_cookie_on(&mut resp);
                }
                resp
            }
        }
    }
}

/// The `x-forwarded-client-cert` element of a verified client
/// certificate, in Envoy's order: `Hash` (hex SHA-256 of the DER), then as
/// `details` asks `Cert` (URL-encoded PEM), `Subject`, `URI` and `DNS`
/// SANs. (Envoy's `By`, its own certificate's URI SAN, is not known on the
/// connection and not written.)
fn xfcc(peer: &meshgate_core::tls::PeerIdentity, details: ClientCertDetails) -> String {
    use std::fmt::Write;
    let mut v = format!("Hash={}", peer.sha256_hex);
    if details.cert {
        v.push_str(";Cert=\"");
        v.push_str(&url_encoded_pem(&peer.der));
        v.push('"');
    }
    if details.subject {
        let _ = write!(v, ";Subject=\"{}\"", peer.subject.replace('"', "\\\""));
    }
    if details.uri {
        for u in &peer.uri_sans {
            v.push_str(";URI=");
            v.push_str(u);
        }
    }
    if details.dns {
        for d in &peer.dns_sans {
            v.push_str(";DNS=");
            v.push_str(d);
        }
    }
    v
}

/// A DER certificate as PEM, URL-encoded as Envoy writes `Cert=`.
fn url_encoded_pem(der: &[u8]) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(route: &'static str, cluster: &'static str) -> StreamInfo {
        let a = "127.0.0.1:1".parse().unwrap();
        let conn = meshgate_core::network::ConnectionInfo {
            id: 1,
            listener: Arc::from("l"),
            peer_addr: a,
            local_addr: a,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        };
        let mut i = StreamInfo::new(Arc::new(conn), "http1");
        i.route = Some(route);
        i.upstream_cluster = Some(cluster);
        i
    }

    #[test]
    fn status_counters_are_cached_by_address_and_shared_by_name() {
        use meshgate_core::stream::intern;
        let stats = HttpStats::new("l");
        let cached = || BY_ADDR.with(|m| m.borrow().keys().filter(|k| k.0 == stats.id).count());
        let (r, c) = (intern("r"), intern("c"));
        stats.count(&info(r, c), 200);
        stats.count(&info(r, c), 503);
        assert_eq!((cached(), stats.by_route.len()), (1, 1));
        // A reload's new route with the same name is the same interned
        // name: the same entry, the same counters.
        let r2 = intern(&String::from("r"));
        assert!(std::ptr::eq(r, r2));
        stats.count(&info(r2, c), 200);
        assert_eq!((cached(), stats.by_route.len()), (1, 1));
        // Another cluster: another entry.
        stats.count(&info(r, intern("c2")), 200);
        assert_eq!((cached(), stats.by_route.len()), (2, 2));
        // The address cache is bounded.
        for n in 0..BY_ADDR_MAX + 10 {
            stats.count(&info(intern(&format!("r{n}")), c), 200);
        }
        assert!(BY_ADDR.with(|m| m.borrow().len()) <= BY_ADDR_MAX);
    }

    #[test]
    fn seen_finds_every_header_the_proxy_acts_on() {
        for n in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, HeaderValue::from_static("x"));
            h.insert(n.clone(), HeaderValue::from_static("v"));
            assert!(seen(&h).hop_by_hop, "{n}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::EXPECT,
            HeaderValue::from_static("100-continue"),
        );
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("x"));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("y"));
        let s = seen(&h);
        assert!(s.expect && s.forwarded_for && s.client_cert && !s.hop_by_hop);
        assert!(!s.request_id && !s.force_trace);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("id"));
        h.insert(X_ENVOY_FORCE_TRACE, HeaderValue::from_static("true"));
        let s = seen(&h);
        assert!(s.request_id && s.force_trace);
        // Same lengths, other names.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("v"));
        h.insert("x-abcd-", HeaderValue::from_static("v"));
        h.insert("x-abcdefghijklm", HeaderValue::from_static("v"));
        let s = seen(&h);
        assert!(!s.hop_by_hop && !s.forwarded_for);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(http::header::CONNECTION));
        assert!(!h.contains_key("x-private"));
        assert_eq!(h.get(http::header::TE).unwrap(), "trailers");
        assert!(h.contains_key(http::header::CONTENT_TYPE));
    }
}
