//! The upstream PROXY protocol transport socket on HTTP clusters (Envoy's
//! `envoy.transport_sockets.upstream_proxy_protocol` under an HTTP route):
//! the header speaks for one downstream connection, so a request to a
//! cluster with `proxy_protocol` never shares an upstream connection with
//! another: the router tags it with its downstream's header (`tag`), and
//! the HTTP/1 and HTTP/2 codecs open a connection of its own for it
//! (`connect`: the header first, then TLS if the cluster has it, then
//! HTTP), which is never pooled. Other stream codecs (RPC, HTTP/3) still
//! refuse such a cluster (`crate::proxy_protocol::refuse_for_streams`).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cluster::{Cluster, ConnectionGuard, Endpoint};
use crate::codec::UpstreamError;
use crate::stream::{Request, StreamInfo};

/// The PROXY header a request's upstream connection starts with.
#[derive(Debug, Clone)]
pub struct UpstreamProxyHeader(pub Bytes);

/// Tags `req` with its downstream's PROXY header when `cluster` sends one
/// (the router, before each try); nothing otherwise.
#[inline]
pub fn tag(cluster: &Cluster, req: &mut Request, info: &StreamInfo) {
    if let Some(pp) = &cluster.proxy_protocol {
        let header = crate::proxy_protocol::upstream_header(pp, &info.connection);
        req.extensions_mut().insert(UpstreamProxyHeader(header));
    }
}

/// The header `req` was tagged with, if any.
#[inline]
pub fn header<B>(req: &http::Request<B>) -> Option<Bytes> {
    req.extensions()
        .get::<UpstreamProxyHeader>()
        .map(|h| h.0.clone())
}

/// A new connection to `endpoint` (under the cluster's breaker, connect
/// timeout, back-off and counters, as `pool::Dial::tcp`) that has sent
/// `header` already: the caller must not pool it.
pub async fn connect(
    cluster: &Arc<Cluster>,
    endpoint: &Arc<Endpoint>,
    header: &[u8],
) -> Result<(TcpStream, ConnectionGuard), UpstreamError> {
    let up = cluster.connect_endpoint(endpoint.clone()).await?;
    let (mut stream, _, guard) = up.into_parts();
    if let Err(e) = stream.write_all(header).await {
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream PROXY header write failed");
        return Err(UpstreamError::Connect(
            format!("writing the PROXY header: {e}").into(),
        ));
    }
    Ok((stream, guard))
}
