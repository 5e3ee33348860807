//! `istio_stats` (network filter): Istio's TCP metrics,
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`,
//! with Istio's labels (`request_protocol` `tcp`). The peer is what
//! `istio_metadata_exchange` learnt in band on the connection (that
//! filter comes first in the chain, so the peer is known when the first
//! byte passes here). A connection is counted opened at its first byte
//! either way, closed when it ends; bytes as they pass (no periodic
//! report needed: the counters are live).

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
}

impl Conn {
    fn handles(&self) -> &TcpHandles {
        self.handles.get_or_init(|| {
            let unknown = Peer::from_metadata(None, Default::default());
            let peer = super::exchange::peer_of(self.info.id);
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
            h
        })
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
        let h = self.0.handles();
        if !data.is_empty() {
            h.received.increment(data.len() as u64);
        }
        DataStatus::Continue
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(h) = self.0.handles.get() {
            h.closed.increment(1);
        }
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
