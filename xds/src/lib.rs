//! The xDS client of meshgate: an Envoy v3 ADS (state-of-the-world) stream
//! whose Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//! resources are translated into the one core config model and handed to
//! the server through core's dynamic-config door (`meshgate_core::dynamic`).
//! Secrets (SDS) come over the same stream and feed the TLS contexts of
//! listeners and clusters (`tls`).

mod access_log;
mod circuit_breakers;
pub mod client;
mod compressor;
mod cors_field;
mod decompressor;
mod dubbo_proxy;
pub mod error;
mod ext_authz;
mod fault;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod generic_proxy;
mod grpc_json_transcoder;
mod grpc_web;
mod header_mutation;
mod health_check;
mod http_filters;
mod istio;
mod jwt_authn;
mod lb_policy;
mod leftover;
mod local_ratelimit;
mod local_reply;
mod locality;
mod mirror;
mod original_dst;
mod outlier;
mod priority;
mod proxy_protocol;
mod quic_upstream;
mod ratelimit;
mod rbac;
mod retry_policy;
mod simpleauth;
mod slow_start;
mod socket_option;
pub mod tls;
mod trace_export;
mod tracing;
pub mod translate;
pub mod transport_socket_match;
mod udp_proxy;
mod unknown;
mod upstream_http;
mod upstream_socket;

pub use client::{Bootstrap, run};
