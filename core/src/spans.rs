//! Tracing spans for connections and streams, so that a log line written
//! anywhere while a connection or a stream is handled carries its ids
//! without passing them by hand.
//!
//! - `connection{listener, connection_id}`: entered around a downstream
//!   connection's task (the TCP listener or the QUIC endpoint spawns it).
//! - `stream{listener, connection_id, stream_id, protocol, route, cluster}`:
//!   entered around one stream in the `proxy` filter; `route` and `cluster`
//!   are recorded once the router knows them.
//!
//! A stream span is a root span carrying the connection's fields itself:
//! HTTP/2 and RPC codecs run each stream in a task of its own, where the
//! connection span is not the current one, and a log line must read the
//! same whichever codec carried the stream.
//!
//! Spans are at DEBUG level. At the default level (`info`) creating one is
//! a check of the global level filter (one atomic load) and yields a
//! disabled span: no allocation, no id, no field formatted. That matters
//! on the HTTP/1.1 path, which is measured in instructions per request.

use crate::stream::StreamInfo;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Span;

/// Stream ids, process-unique; only drawn when the stream span is enabled.
static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// The span of one downstream connection.
#[inline]
pub fn connection(listener: &str, connection_id: u64) -> Span {
    tracing::debug_span!("connection", listener = %listener, connection_id)
}

/// The span of one stream; `route` and `cluster` start empty (see
/// [`record_route`], [`record_cluster`]).
#[inline]
pub fn stream(info: &StreamInfo) -> Span {
    tracing::debug_span!(
        parent: None,
        "stream",
        listener = %info.connection.listener,
        connection_id = info.connection.id,
        stream_id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed),
        protocol = %info.protocol,
        route = tracing::field::Empty,
        cluster = tracing::field::Empty,
    )
}

/// Records the matched route on the current stream span. Checked against
/// the level first: looking up the current span is not free, and at the
/// default level there is none to record into.
#[inline]
pub fn record_route(route: &str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        Span::current().record("route", tracing::field::display(route));
    }
}

/// Records the chosen upstream cluster on the current stream span.
#[inline]
pub fn record_cluster(cluster: &str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        Span::current().record("cluster", tracing::field::display(cluster));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no subscriber (or a level above DEBUG) the spans are disabled:
    /// nothing is allocated and no stream id is drawn.
    #[test]
    fn spans_are_disabled_without_debug() {
        let a = "127.0.0.1:1".parse().unwrap();
        let conn = crate::network::ConnectionInfo {
            id: 1,
            listener: std::sync::Arc::from("l"),
            peer_addr: a,
            local_addr: a,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        };
        let info = StreamInfo::new(std::sync::Arc::new(conn), "http1");
        let before = NEXT_STREAM_ID.load(Ordering::Relaxed);
        assert!(connection("l", 1).is_disabled());
        assert!(stream(&info).is_disabled());
        record_route("r");
        record_cluster("c");
        assert_eq!(NEXT_STREAM_ID.load(Ordering::Relaxed), before);
    }
}
