//! The xDS client of meshgate: an Envoy v3 ADS (state-of-the-world) stream
//! whose Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//! resources are translated into the one core config model and handed to
//! the server through core's dynamic-config door (`meshgate_core::dynamic`).
//! Secrets (SDS) come over the same stream and feed the TLS contexts of
//! listeners and clusters (`tls`).

pub mod client;
pub mod error;
mod fault;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod http_filters;
mod leftover;
mod local_ratelimit;
pub mod tls;
pub mod translate;
mod unknown;

pub use client::{Bootstrap, run};
