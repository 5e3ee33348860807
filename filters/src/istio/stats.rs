//! `istio_stats` (HTTP): Istio's standard request metrics, with Istio's
//! names, labels and histogram buckets, on `/stats/prometheus`:
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`. The `source_*` and
//! `destination_*` labels come from this node's metadata and the peer's
//! (what `istio_peer_metadata` or the TCP exchange learnt), by the
//! `reporter`: the client's sidecar (`source`) is the source and the
//! upstream peer the destination; the server's (`destination`) the
//! other way round. Labels come from metadata, the upstream cluster and
//! the request's host, never from paths; and each filter keeps at most
//! `MAX_SERIES` label sets: past it, new ones are counted with the peer's
//! labels `unknown` (`meshgate_istio_stats_overflow_total`).
//!
//! A stream is recorded once its response body ends or is dropped
//! (duration to the last byte, sizes as Envoy's `total_size`: header
//! names and values plus the body).

use super::{DownstreamPeer, Local, Peer, UNKNOWN, UpstreamPeer};
use bytes::Bytes;
use http::HeaderMap;
use meshgate_core::BuildError;
use meshgate_core::config::istio::{IstioStatsConfig, Reporter};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{BodyFilter, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo,
};
use metrics::{Counter, Histogram, Label};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Istio's metric names (Istio's, not meshgate's convention: dashboards
/// and alerts written for Istio read them as they are).
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const REQUEST_DURATION_MILLISECONDS: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
pub const TCP_CONNECTIONS_OPENED_TOTAL: &str = "istio_tcp_connections_opened_total";
pub const TCP_CONNECTIONS_CLOSED_TOTAL: &str = "istio_tcp_connections_closed_total";
pub const TCP_SENT_BYTES_TOTAL: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED_BYTES_TOTAL: &str = "istio_tcp_received_bytes_total";

/// Label sets one filter keeps (each is a handful of atomics).
pub const MAX_SERIES: usize = 4096;

/// Istio's labels, in Istio's order; HTTP metrics have them all, TCP ones
/// all but `response_code` and `grpc_response_status`.
pub(crate) const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];
const RESPONSE_CODE: usize = 21;
const GRPC_STATUS: usize = 22;

pub(crate) fn reporter_label(r: Reporter) -> &'static str {
    match r {
        Reporter::Source => "source",
        Reporter::Destination => "destination",
        Reporter::Waypoint => "waypoint",
    }
}

/// What labels a stream or connection (everything but the protocol's own
/// labels).
pub(crate) struct Sides<'a> {
    pub reporter: Reporter,
    pub source: &'a Peer,
    pub destination: &'a Peer,
    pub source_principal: String,
    pub destination_principal: String,
    /// The destination service's host (`reviews.default.svc.cluster.local`).
    pub service: Option<String>,
    pub security: &'static str,
}

impl Sides<'_> {
    /// The 25 label values (protocol, code, grpc status and flags are
    /// filled by the caller).
    pub(crate) fn values(&self) -> Vec<String> {
        let (s, d) = (self.source, self.destination);
        let service = self.service.clone().unwrap_or_else(|| UNKNOWN.into());
        let (name, ns) = service_parts(&service, &d.namespace);
        vec![
            reporter_label(self.reporter).into(),
            s.workload.clone(),
            s.canonical_service.clone(),
            s.canonical_revision.clone(),
            s.namespace.clone(),
            self.source_principal.clone(),
            s.app.clone(),
            s.version.clone(),
            s.cluster.clone(),
            d.workload.clone(),
            d.namespace.clone(),
            self.destination_principal.clone(),
            d.app.clone(),
            d.version.clone(),
            service,
            d.canonical_service.clone(),
            d.canonical_revision.clone(),
            name,
            ns,
            d.cluster.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            self.security.into(),
        ]
    }
}

/// `destination_service_name` and `_namespace` of a service host: the
/// first two labels of a Kubernetes name (`name.ns.svc...`), else the
/// host and the destination workload's namespace.
fn service_parts(host: &str, workload_ns: &str) -> (String, String) {
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(ns), Some("svc")) => (n.into(), ns.into()),
        _ => (host.into(), workload_ns.into()),
    }
}

/// The service host an Istio cluster name carries
/// (`outbound|9080|v1|reviews.default.svc.cluster.local`).
pub(crate) fn service_of_cluster(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
            Some(host.into())
        }
        _ => None,
    }
}

/// The downstream TLS peer's principal (its first URI SAN, a SPIFFE id)
/// and the connection security policy Istio reports at the server.
pub(crate) fn downstream_security(
    conn: &meshgate_core::network::ConnectionInfo,
) -> (String, &'static str) {
    match conn.tls.as_ref().and_then(|t| t.peer.as_ref()) {
        Some(p) => (
            p.uri_sans
                .first()
                .cloned()
                .unwrap_or_else(|| UNKNOWN.into()),
            "mutual_tls",
        ),
        None => (UNKNOWN.into(), "none"),
    }
}

/// Label sets to metric handles, at most `MAX_SERIES` of them.
pub(crate) struct Series<H> {
    map: Mutex<HashMap<Vec<String>, Arc<H>>>,
    listener: Arc<str>,
}

impl<H> Series<H> {
    pub(crate) fn new(listener: &str) -> Self {
        Self {
            map: Mutex::default(),
            listener: listener.into(),
        }
    }

    /// The handles of `values`; past the bound, those of `overflow()`.
    pub(crate) fn get(
        &self,
        values: Vec<String>,
        overflow: impl FnOnce() -> Vec<String>,
        make: impl Fn(&[String]) -> H,
    ) -> Arc<H> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(&values) {
            return h.clone();
        }
        let values = if map.len() < MAX_SERIES {
            values
        } else {
            metrics::counter!(
                meshgate_core::metrics::names::ISTIO_STATS_OVERFLOW_TOTAL,
                "listener" => self.listener.to_string()
            )
            .increment(1);
            let o = overflow();
            if let Some(h) = map.get(&o) {
                return h.clone();
            }
            o
        };
        let h = Arc::new(make(&values));
        map.insert(values, h.clone());
        h
    }
}

/// The labels of `values` (pairs with `LABELS`, skipping `skip`).
pub(crate) fn labels(values: &[String], skip: &[usize]) -> Vec<Label> {
    LABELS
        .iter()
        .zip(values)
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, (k, v))| Label::new(*k, v.clone()))
        .collect()
}

/// Values with the peer-derived labels `unknown` (the overflow series).
pub(crate) fn overflowed(mut values: Vec<String>) -> Vec<String> {
    for (i, v) in values.iter_mut().enumerate() {
        if (1..=19).contains(&i) {
            *v = UNKNOWN.into();
        }
    }
    values
}

/// Factory of `istio_stats` (the HTTP filter).
pub struct IstioStatsFactory;

impl StreamFilterFactory for IstioStatsFactory {
    fn name(&self) -> &'static str {
        "istio_stats"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let config: IstioStatsConfig = parse_typed(config)?;
        Ok(Arc::new(IstioStats {
            config,
            local: Local::current(),
            series: Arc::new(Series::new(ctx.listener)),
        }))
    }
}

struct IstioStats {
    config: IstioStatsConfig,
    local: Arc<Local>,
    series: Arc<Series<HttpHandles>>,
}

struct HttpHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl HttpHandles {
    fn new(values: &[String]) -> Self {
        let l = labels(values, &[]);
        Self {
            requests: metrics::counter!(REQUESTS_TOTAL, l.clone()),
            duration: metrics::histogram!(REQUEST_DURATION_MILLISECONDS, l.clone()),
            request_bytes: metrics::histogram!(REQUEST_BYTES, l.clone()),
            response_bytes: metrics::histogram!(RESPONSE_BYTES, l),
        }
    }
}

/// What the request phase learnt, for the response phase.
struct StreamStats {
    request_bytes: Arc<AtomicU64>,
    host: Option<String>,
    protocol: &'static str,
    /// The upstream peer, once `istio_peer_metadata` learns it.
    up: UpstreamPeer,
    /// Made by the response phase, taken by the response body phase.
    record: Option<Record>,
}

/// Envoy's `byteSize` of a header map: names and values.
fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

impl StreamFilter for IstioStats {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        _route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let host = req
            .uri()
            .host()
            .map(str::to_string)
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h).to_string())
            })
            .filter(|h| !h.is_empty())
            .map(|h| h.chars().take(256).collect());
        let protocol = if info.grpc || meshgate_core::stream::is_grpc(req.headers()) {
            "grpc"
        } else {
            "http"
        };
        let up = info
            .filter_state
            .get_or_insert_default::<UpstreamPeer>()
            .clone();
        info.filter_state.insert(Arc::new(Mutex::new(StreamStats {
            up,
            request_bytes: Arc::new(AtomicU64::new(header_bytes(req.headers()))),
            host,
            protocol,
            record: None,
        })));
        Box::pin(async { FilterStatus::Continue })
    }

    fn has_body_phases(&self) -> bool {
        true
    }

    fn request_body(
        &self,
        _req: &Request,
        info: &mut StreamInfo,
        _route: RouteView<'_>,
    ) -> Option<Box<dyn BodyFilter>> {
        let s = info.filter_state.get::<Arc<Mutex<StreamStats>>>()?;
        let bytes = s
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .request_bytes
            .clone();
        Some(Box::new(CountBytes(bytes)))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(s) = info.filter_state.get::<Arc<Mutex<StreamStats>>>().cloned() else {
            return;
        };
        let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
        let (source_principal, security) = match self.config.reporter {
            Reporter::Source => (UNKNOWN.into(), UNKNOWN),
            _ => downstream_security(&info.connection),
        };
        let service = info
            .upstream_cluster
            .and_then(service_of_cluster)
            .or_else(|| match self.config.disable_host_header_fallback {
                true => None,
                false => s.host.clone(),
            });
        let status = resp.status().as_u16();
        let grpc_status = match resp.headers().get("grpc-status") {
            Some(v) => String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(8)
                .collect(),
            None => String::new(),
        };
        let flags = crate::format::Flags::of(info, status)
            .render(false)
            .unwrap_or_else(|| "-".into());
        s.record = Some(Record {
            reporter: self.config.reporter,
            local: self.local.peer.clone(),
            down: info
                .filter_state
                .get::<DownstreamPeer>()
                .map(|p| p.0.clone()),
            up: s.up.clone(),
            source_principal,
            security,
            service,
            protocol: s.protocol,
            status,
            grpc_status,
            flags,
            start: info.start,
            request_bytes: s.request_bytes.clone(),
            response_bytes: header_bytes(resp.headers()),
            series: self.series.clone(),
        });
    }

    fn response_body(
        &self,
        _resp: &Response,
        info: &mut StreamInfo,
    ) -> Option<Box<dyn BodyFilter>> {
        let s = info.filter_state.get::<Arc<Mutex<StreamStats>>>()?;
        let record = s.lock().unwrap_or_else(|p| p.into_inner()).record.take()?;
        Some(Box::new(record))
    }
}

/// Counts request body bytes.
struct CountBytes(Arc<AtomicU64>);

impl BodyFilter for CountBytes {
    fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// One stream's metrics, recorded when its response body ends or is
/// dropped (a stream cut short is still counted). The peers are read
/// then: the upstream one is learnt by a filter whose response phase runs
/// after this one's.
struct Record {
    reporter: Reporter,
    local: Arc<Peer>,
    down: Option<Arc<Peer>>,
    up: UpstreamPeer,
    source_principal: String,
    security: &'static str,
    service: Option<String>,
    protocol: &'static str,
    status: u16,
    grpc_status: String,
    flags: String,
    start: Instant,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    series: Arc<Series<HttpHandles>>,
}

impl Record {
    fn values(&mut self) -> Vec<String> {
        let unknown = Peer::from_metadata(None, Default::default());
        let down = self.down.as_deref().unwrap_or(&unknown);
        let up = self.up.get().map_or(&unknown, |p| &**p);
        let local = &*self.local;
        let (source, destination) = match self.reporter {
            Reporter::Source => (local, up),
            Reporter::Destination => (down, local),
            Reporter::Waypoint => (down, up),
        };
        let mut values = Sides {
            reporter: self.reporter,
            source,
            destination,
            source_principal: std::mem::take(&mut self.source_principal),
            destination_principal: UNKNOWN.into(),
            service: self.service.take(),
            security: self.security,
        }
        .values();
        values[20] = self.protocol.into();
        values[RESPONSE_CODE] = self.status.to_string();
        values[GRPC_STATUS] = std::mem::take(&mut self.grpc_status);
        values[23] = std::mem::take(&mut self.flags);
        values
    }
}

impl BodyFilter for Record {
    fn on_data(&mut self, data: &mut Bytes) -> Result<(), LocalReason> {
        self.response_bytes += data.len() as u64;
        Ok(())
    }

    fn on_trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), LocalReason> {
        self.response_bytes += header_bytes(trailers);
        if self.protocol == "grpc"
            && let Some(v) = trailers.get("grpc-status")
        {
            self.grpc_status = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(8)
                .collect();
        }
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let values = self.values();
        let h = self
            .series
            .get(values.clone(), || overflowed(values), HttpHandles::new);
        h.requests.increment(1);
        h.duration
            .record(self.start.elapsed().as_secs_f64() * 1000.0);
        h.request_bytes
            .record(self.request_bytes.load(Ordering::Relaxed) as f64);
        h.response_bytes.record(self.response_bytes as f64);
    }
}
