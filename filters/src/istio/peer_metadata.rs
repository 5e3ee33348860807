//! `istio_peer_metadata`: Istio's HTTP metadata exchange
//! (`envoy.filters.http.peer_metadata` with the `istio_headers` method,
//! and the older HTTP `istio.metadata_exchange`). The client's sidecar
//! adds its node's metadata to the request (`upstream_propagation`) and
//! reads the server's from the response (`upstream_discovery`); the
//! server's sidecar reads the client's from the request
//! (`downstream_discovery`) and adds its own to the response
//! (`downstream_propagation`). The headers are removed where they are
//! read, so the applications never see them. A peer header that does not
//! decode is counted (`meshgate_istio_peer_metadata_error_total`) and the
//! peer stays unknown.

use super::{
    DownstreamPeer, Local, METADATA_HEADER, METADATA_ID_HEADER, NAMESPACE, Peer, UpstreamPeer,
    count_bad, decode_header,
};
use http::HeaderMap;
use meshgate_core::BuildError;
use meshgate_core::config::istio::PeerMetadataConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::RouteView;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, Request, Response, StreamFilter, StreamFilterFactory, StreamInfo,
};
use std::sync::Arc;

/// Factory of `istio_peer_metadata`.
pub struct PeerMetadataFactory;

impl StreamFilterFactory for PeerMetadataFactory {
    fn name(&self) -> &'static str {
        "istio_peer_metadata"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let config: PeerMetadataConfig = parse_typed(config)?;
        Ok(Arc::new(PeerMetadata {
            config,
            local: Local::current(),
        }))
    }
}

struct PeerMetadata {
    config: PeerMetadataConfig,
    local: Arc<Local>,
}

/// Takes (removes) the peer headers from `headers`; the peer, if they
/// told one that decodes.
fn take_peer(headers: &mut HeaderMap) -> Option<Peer> {
    let value = headers.remove(METADATA_HEADER);
    let id = headers.remove(METADATA_ID_HEADER);
    let value = value?;
    match decode_header(value.as_bytes(), id.as_ref().map(|v| v.as_bytes())) {
        Ok(p) => Some(p),
        Err(e) => {
            count_bad("http_header", e);
            None
        }
    }
}

impl PeerMetadata {
    fn tell(&self, headers: &mut HeaderMap) {
        headers.insert(METADATA_HEADER, self.local.header.clone());
        match &self.local.id_header {
            Some(id) => headers.insert(METADATA_ID_HEADER, id.clone()),
            None => headers.remove(METADATA_ID_HEADER),
        };
    }
}

impl StreamFilter for PeerMetadata {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        _route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        if self.config.downstream_discovery
            && let Some(p) = take_peer(req.headers_mut())
        {
            let p = Arc::new(p);
            info.metadata_mut()
                .set(NAMESPACE, "downstream_peer", p.as_json());
            info.filter_state.insert(DownstreamPeer(p));
        }
        if self.config.upstream_propagation {
            self.tell(req.headers_mut());
        }
        Box::pin(async { FilterStatus::Continue })
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        if self.config.upstream_discovery
            && let Some(p) = take_peer(resp.headers_mut())
        {
            let p = Arc::new(p);
            info.metadata_mut()
                .set(NAMESPACE, "upstream_peer", p.as_json());
            let _ = info
                .filter_state
                .get_or_insert_default::<UpstreamPeer>()
                .0
                .set(p);
        }
        if self.config.downstream_propagation {
            self.tell(resp.headers_mut());
        }
    }
}
