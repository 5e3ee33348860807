//! Upstream network filters (Envoy's `Cluster.filters`): filters on the
//! connections a cluster opens, registered by name like network filters.
//! Once an upstream connection is established (its TLS handshake done), each
//! of the cluster's filters may take part in it: bytes it sends first (in
//! front of anything the terminal writes) and a `ReadFilter` over the bytes
//! read from the upstream, run by `network::filtered::FilteredIo` exactly as
//! a downstream chain's read filters are. `tcp_proxy` runs them; the
//! HTTP/RPC pools refuse a connection a filter would take part in
//! (`UpstreamFilters::refuse_l7`) rather than skip the filter.

use crate::error::BuildError;
use crate::network::ReadFilter;
use bytes::Bytes;
use std::sync::Arc;

/// Builds an upstream filter from its typed config.
pub trait UpstreamFilterFactory: Send + Sync {
    fn name(&self) -> &'static str;
    fn create(&self, config: &serde_json::Value) -> Result<Arc<dyn UpstreamFilter>, BuildError>;
}

/// A built upstream filter, shared by a cluster's connections.
pub trait UpstreamFilter: Send + Sync {
    /// A new upstream connection serving downstream connection
    /// `downstream` (its `ConnectionInfo::id`), established; `alpn`: the
    /// protocol its TLS handshake negotiated. `None`: the filter does
    /// nothing on this connection.
    fn on_connected(
        &self,
        downstream: u64,
        alpn: Option<&[u8]>,
    ) -> Option<UpstreamConnectionFilter>;
}

/// What a filter does on one upstream connection.
pub struct UpstreamConnectionFilter {
    /// Sent to the upstream before any other byte.
    pub preface: Bytes,
    /// Over the bytes read from the upstream.
    pub read: Option<Box<dyn ReadFilter>>,
}

/// A cluster's upstream filters, in order.
#[derive(Clone, Default)]
pub struct UpstreamFilters(pub Vec<(String, Arc<dyn UpstreamFilter>)>);

impl UpstreamFilters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the filters do on a new connection: the bytes to send first
    /// and the read filters, in order.
    pub fn on_connected(
        &self,
        downstream: u64,
        alpn: Option<&[u8]>,
    ) -> (Vec<u8>, Vec<Box<dyn ReadFilter>>) {
        let mut preface = Vec::new();
        let mut reads = Vec::new();
        for (_, f) in &self.0 {
            if let Some(c) = f.on_connected(downstream, alpn) {
                preface.extend_from_slice(&c.preface);
                reads.extend(c.read);
            }
        }
        (preface, reads)
    }

    /// For an HTTP/RPC pool's new connection (which has no downstream
    /// connection of its own and whose codec owns the bytes): the name of
    /// a filter that would take part in it, so the connection is refused
    /// naming it rather than opened without the filter.
    pub fn refuse_l7(&self, alpn: Option<&[u8]>) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, f)| f.on_connected(0, alpn).is_some())
            .map(|(n, _)| n.as_str())
    }

    /// `refuse_l7` as the pool's connect error, for the codecs that know
    /// the connection's ALPN before they open it (HTTP/3: `h3`; RPC pools:
    /// plain TCP, none).
    pub fn check_pool(&self, alpn: Option<&[u8]>) -> Result<(), crate::codec::UpstreamError> {
        match self.refuse_l7(alpn) {
            None => Ok(()),
            Some(n) => Err(crate::codec::UpstreamError::Connect(
                format!("cluster filter '{n}' applies to this connection (its ALPN): cluster filters run on tcp_proxy connections only").into(),
            )),
        }
    }
}

impl std::fmt::Debug for UpstreamFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}
