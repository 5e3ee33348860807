//! The xDS client of meshgate: an Envoy v3 ADS (state-of-the-world) stream
//! whose Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//! resources are translated into the one core config model and handed to
//! the server through core's dynamic-config door (`meshgate_core::dynamic`).
//! Secrets (SDS) are not served yet: a listener or cluster asking for TLS
//! through xDS is refused with a NACK that says so.

pub mod client;
mod leftover;
pub mod translate;

pub use client::{Bootstrap, run};
