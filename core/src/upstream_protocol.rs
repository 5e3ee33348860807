//! A cluster whose upstream protocol follows each request's downstream
//! protocol (`protocol: downstream`; Envoy's HttpProtocolOptions
//! `use_downstream_protocol_config`): an HTTP/1.x request goes out over
//! the `http1` codec, an HTTP/2 or HTTP/3 one over `http2` (HTTP/3 to
//! upstreams falls back to HTTP/2, as in Envoy when the cluster has no
//! HTTP/3 config). Both codecs are the registered ones, built from the
//! cluster's `protocol_options` (the HTTP/2 windows go to `http2` only);
//! each endpoint keeps one pool per codec.

use crate::cluster::{Cluster, Endpoint};
use crate::codec::{ClientCodec, UpstreamFuture};
use crate::error::BuildError;
use crate::registry::Registry;
use crate::stream::Request;
use std::sync::Arc;

/// The cluster `protocol` value that selects this.
pub const DOWNSTREAM: &str = "downstream";

/// The cluster `protocol` value that chooses HTTP/2 or HTTP/1.1 per
/// endpoint by the ALPN its TLS handshake negotiates (Envoy's
/// HttpProtocolOptions `auto_config`): built by the `http2` codec
/// (`CodecFactory::alpn_client`); the learned protocol is kept on the
/// endpoint (`Endpoint::alpn`), and each endpoint has both pools.
pub const AUTO: &str = "auto";

/// What a `protocol: auto` cluster's TLS offers when its `alpn_protocols`
/// is empty (Envoy's ALPN fallback for `auto_config`).
pub const AUTO_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Options that only the HTTP/2 codec takes.
const HTTP2_ONLY: [&str; 2] = [
    "initial_stream_window_size",
    "initial_connection_window_size",
];

pub struct ByDownstream {
    http1: Arc<dyn ClientCodec>,
    http2: Arc<dyn ClientCodec>,
}

impl ByDownstream {
    pub fn build(
        registry: &Registry,
        options: &serde_json::Value,
    ) -> Result<Arc<dyn ClientCodec>, BuildError> {
        let codec = |name: &str| {
            registry.codec(name).ok_or_else(|| {
                BuildError::new(
                    "",
                    format!("protocol '{DOWNSTREAM}' needs the '{name}' codec"),
                )
            })
        };
        let mut h1_options = options.clone();
        if let Some(m) = h1_options.as_object_mut() {
            m.retain(|k, _| !HTTP2_ONLY.contains(&k.as_str()));
        }
        Ok(Arc::new(Self {
            http1: codec("http1")?.client(&h1_options)?,
            http2: codec("http2")?.client(options)?,
        }))
    }

    fn pick(&self, req: &Request) -> &Arc<dyn ClientCodec> {
        if req.version() >= http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}

impl ClientCodec for ByDownstream {
    fn send(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
    ) -> UpstreamFuture {
        self.pick(&req).send(cluster, endpoint, req)
    }

    fn send_by(
        &self,
        cluster: &Arc<Cluster>,
        endpoint: &Arc<Endpoint>,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamFuture, Request> {
        self.pick(&req).send_by(cluster, endpoint, req, deadline)
    }
}
