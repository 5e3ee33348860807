//! Network and stream filters of meshgate, one module per filter, each
//! registered by name with `register_all`.

pub mod access_log;
pub mod api_key_auth;
pub mod basic_auth;
mod chain;
pub mod compressor;
pub mod cors;
pub mod csrf;
pub mod decompressor;
pub mod echo;
mod edge;
pub mod ext_authz;
mod fallback;
pub mod fault;
mod format;
mod grpc;
pub mod grpc_json_transcoder;
pub mod grpc_web;
pub mod header_mutation;
pub mod http_options;
mod http_to_rpc;
pub mod istio;
pub mod jwt_authn;
pub mod local_ratelimit;
mod local_reply;
pub mod proxy;
pub mod ratelimit;
pub mod rbac;
pub mod tcp_proxy;

use meshgate_core::registry::{DuplicateName, Registry};
use std::sync::Arc;

/// Registers every filter of this crate.
pub fn register_all(registry: &mut Registry) -> Result<(), DuplicateName> {
    // Network filters.
    registry.register_network_filter(Arc::new(echo::EchoFactory))?;
    registry.register_listener_log(Arc::new(access_log::ListenerLogs))?;
    registry.register_network_filter(Arc::new(tcp_proxy::TcpProxyFactory))?;
    registry.register_network_filter(Arc::new(proxy::ProxyFactory))?;
    registry.register_network_filter(Arc::new(rbac::network::RbacNetworkFactory))?;
    registry.register_network_filter(Arc::new(
        local_ratelimit::network::NetworkLocalRateLimitFactory,
    ))?;
    // Stream filters.
    registry.register_network_filter(Arc::new(istio::exchange::MetadataExchangeFactory))?;
    registry.register_network_filter(Arc::new(istio::tcp_stats::TcpStatsFactory))?;
    registry.register_upstream_filter(Arc::new(istio::exchange::UpstreamExchangeFactory))?;
    registry.register_stream_filter(Arc::new(istio::peer_metadata::PeerMetadataFactory))?;
    registry.register_stream_filter(Arc::new(istio::stats::IstioStatsFactory))?;
    registry.register_stream_filter(Arc::new(cors::CorsFactory))?;
    registry.register_stream_filter(Arc::new(grpc_web::GrpcWebFactory))?;
    registry.register_stream_filter(Arc::new(csrf::CsrfFactory))?;
    registry.register_stream_filter(Arc::new(basic_auth::BasicAuthFactory))?;
    registry.register_stream_filter(Arc::new(api_key_auth::ApiKeyAuthFactory))?;
    registry.register_stream_filter(Arc::new(jwt_authn::JwtAuthnFactory))?;
    registry.register_stream_filter(Arc::new(ext_authz::ExtAuthzFactory))?;
    registry.register_stream_filter(Arc::new(rbac::RbacFactory))?;
    registry.register_stream_filter(Arc::new(local_ratelimit::LocalRateLimitFactory))?;
    registry.register_stream_filter(Arc::new(ratelimit::RateLimitFactory))?;
    registry.register_stream_filter(Arc::new(compressor::CompressorFactory))?;
    registry.register_stream_filter(Arc::new(decompressor::DecompressorFactory))?;
    registry.register_stream_filter(Arc::new(header_mutation::HeaderMutationFactory))?;
    registry.register_stream_filter(Arc::new(fault::FaultFactory))?;
    registry.register_stream_filter(Arc::new(grpc_json_transcoder::GrpcJsonTranscoderFactory))
}
