//! Network and stream filters of meshgate, one module per filter, each
//! registered by name with `register_all`.

pub mod access_log;
mod chain;
pub mod cors;
pub mod echo;
mod edge;
pub mod fault;
mod grpc;
pub mod http_options;
pub mod local_ratelimit;
pub mod proxy;
pub mod tcp_proxy;

use meshgate_core::registry::{DuplicateName, Registry};
use std::sync::Arc;

/// Registers every filter of this crate.
pub fn register_all(registry: &mut Registry) -> Result<(), DuplicateName> {
    registry.register_network_filter(Arc::new(echo::EchoFactory))?;
    registry.register_network_filter(Arc::new(tcp_proxy::TcpProxyFactory))?;
    registry.register_network_filter(Arc::new(proxy::ProxyFactory))?;
    registry.register_network_filter(Arc::new(
        local_ratelimit::network::NetworkLocalRateLimitFactory,
    ))?;
    registry.register_stream_filter(Arc::new(local_ratelimit::LocalRateLimitFactory))?;
    registry.register_stream_filter(Arc::new(fault::FaultFactory))?;
    registry.register_stream_filter(Arc::new(cors::CorsFactory))
}
