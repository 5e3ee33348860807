//! `istio_stats` (network filter): Istio's TCP metrics,
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`,
//! with Istio's labels (`request_protocol` `tcp`). Reporting as
//! `destination` (inbound), the peer is what `istio_metadata_exchange`
//! learnt in band on the connection (that filter comes first in the chain,
//! so the peer is known when the first byte passes here): the labels are
//! resolved at the first byte from the client. Reporting as `source`
//! (outbound), the peer is what the cluster's upstream exchange learnt
//! from the server (`exchange::upstream_peer_of`), known once the server's
//! first bytes came back: the labels are resolved at the first byte sent
//! back to the client (bytes received before are held in a count and added
//! then), or when the connection closes. A connection is counted opened
//! when its labels are resolved, closed when it ends; bytes as they pass
//! (no periodic report needed: the counters are live).

use super::stats::{Series, Sides, downstream_security, labels, overflowed};
use super::{Local, Peer, UNKNOWN};
use bytes::BytesMut;
use dashmap::DashMap;
use meshgate_core::BuildError;
use meshgate_core::config::istio::{IstioStatsConfig, Reporter};
use meshgate_core::config::parse_typed;
use meshgate_core::network::{
    BuildContext, BuiltFilter, ConnectionInfo, DataStatus, NetworkFilter, NetworkFilterFactory,
    ReadFilter, WriteFilter,
};
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Factory of the `istio_stats` network filter.
pub struct TcpStatsFactory;

impl NetworkFilterFactory for TcpStatsFactory {
    fn name(&self) -> &'static str {
        "istio_stats"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        // `disable_host_header_fallback`: a TCP connection has no host
        // header to fall back on; nothing to disable.
        let config: IstioStatsConfig = parse_typed(config)?;
        Ok(BuiltFilter::Connection(Arc::new(TcpStats {
            reporter: config.reporter,
            local: Local::current(),
            series: Arc::new(Series::new(ctx.listener)),
            pending: DashMap::new(),
        })))
    }
}

struct TcpStats {
    reporter: Reporter,
    local: Arc<Local>,
    series: Arc<Series<TcpHandles>>,
    /// A connection's shared state, from its read filter's making to its
    /// write filter's (both are made in one go as the connection starts).
    pending: DashMap<u64, Arc<Conn>>,
}

struct TcpHandles {
    opened: Counter,
    closed: Counter,
    received: Counter,
    sent: Counter,
}

/// Istio's TCP labels: all but `response_code` and `grpc_response_status`.
const NOT_TCP: [usize; 2] = [21, 22];

impl TcpHandles {
    fn new(values: &[String]) -> Self {
        let l = labels(values, &NOT_TCP);
        Self {
            opened: metrics::counter!(super::stats::TCP_CONNECTIONS_OPENED_TOTAL, l.clone()),
            closed: metrics::counter!(super::stats::TCP_CONNECTIONS_CLOSED_TOTAL, l.clone()),
            received: metrics::counter!(super::stats::TCP_RECEIVED_BYTES_TOTAL, l.clone()),
            sent: metrics::counter!(super::stats::TCP_SENT_BYTES_TOTAL, l),
        }
    }
}

/// One connection: its labels, resolved at its first byte.
struct Conn {
    info: ConnectionInfo,
    reporter: Reporter,
    local: Arc<Local>,
    series: Arc<Series<TcpHandles>>,
    handles: OnceLock<Arc<TcpHandles>>,
    /// Bytes received before the labels were resolved (`source` only).
    early: AtomicU64,
}

impl Conn {
    fn handles(&self) -> &TcpHandles {
        self.handles.get_or_init(|| {
            let unknown = Peer::from_metadata(None, Default::default());
            let peer = match self.reporter {
                Reporter::Source => super::exchange::upstream_peer_of(self.info.id),
                _ => super::exchange::peer_of(self.info.id),
            };
            let peer = peer.as_deref().unwrap_or(&unknown);
            let local = &*self.local.peer;
            let (source, destination) = match self.reporter {
                Reporter::Source => (local, peer),
                Reporter::Destination | Reporter::Waypoint => (peer, local),
            };
            let (source_principal, security) = match self.reporter {
                Reporter::Source => (UNKNOWN.to_string(), UNKNOWN),
                _ => downstream_security(&self.info),
            };
            let mut values = Sides {
                reporter: self.reporter,
                source,
                destination,
                source_principal,
                destination_principal: UNKNOWN.into(),
                service: None,
                security,
            }
            .values();
            values[20] = "tcp".into();
            values[23] = "-".into();
            let h = self
                .series
                .get(values.clone(), || overflowed(values), TcpHandles::new);
            h.opened.increment(1);
            let early = self.early.swap(0, Ordering::Relaxed);
            if early > 0 {
                h.received.increment(early);
            }
            h
        })
    }

    /// Counts bytes from the client.
    fn received(&self, n: usize) {
        let h = match self.reporter {
            // The server's peer is not known before its first bytes.
            Reporter::Source => match self.handles.get() {
                Some(h) => h,
                None => {
                    self.early.fetch_add(n as u64, Ordering::Relaxed);
                    return;
                }
            },
            _ => self.handles(),
        };
        if n > 0 {
            h.received.increment(n as u64);
        }
    }
}

impl Drop for Conn {
    /// The connection ended (both its filters are gone): counted closed,
    /// and opened first if its labels were never resolved.
    fn drop(&mut self) {
        self.handles().closed.increment(1);
    }
}

impl NetworkFilter for TcpStats {
    fn sees_bytes(&self) -> bool {
        true
    }

    fn read_filter(&self, info: &ConnectionInfo) -> Option<Box<dyn ReadFilter>> {
        let conn = Arc::new(Conn {
            info: info.clone(),
            reporter: self.reporter,
            local: self.local.clone(),
            series: self.series.clone(),
            handles: OnceLock::new(),
            early: AtomicU64::new(0),
        });
        self.pending.insert(info.id, conn.clone());
        Some(Box::new(Received(conn)))
    }

    fn write_filter(&self, info: &ConnectionInfo) -> Option<Box<dyn WriteFilter>> {
        let (_, conn) = self.pending.remove(&info.id)?;
        Some(Box::new(Sent(conn)))
    }
}

struct Received(Arc<Conn>);

impl ReadFilter for Received {
    fn on_data(&mut self, data: &mut BytesMut, _end_stream: bool) -> DataStatus {
        self.0.received(data.len());
        DataStatus::Continue
    }
}

struct Sent(Arc<Conn>);

impl WriteFilter for Sent {
    fn on_write(&mut self, data: &mut BytesMut, _end_stream: bool) -> DataStatus {
        let h = self.0.handles();
        if !data.is_empty() {
            h.sent.increment(data.len() as u64);
        }
        DataStatus::Continue
    }
}
