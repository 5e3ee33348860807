//! meshgate-core: the config model and its compilation into a `Snapshot`,
//! listeners and the network filter chain, the cluster manager and load
//! balancers, the registry of extensions, metrics names and the admin
//! server. Core knows traits and a registry, never a concrete codec or
//! filter (see DESIGN.md).

pub mod admin;
pub mod admin_clusters;
pub mod body;
pub mod callout;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod dynamic;
pub mod error;
pub mod fds;
pub mod filter_chain;
pub mod forward;
pub mod intern;
pub mod lb;
pub mod listener;
pub mod listener_log;
pub mod metrics;
pub mod network;
pub mod node;
pub mod original_dst;
pub mod overload;
pub mod pool;
pub mod proxy_protocol;
pub mod proxy_protocol_http;
pub mod quic;
pub mod registry;
pub mod retry;
pub mod retry_headers;
pub mod router;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod socket_option;
pub mod spans;
pub mod stream;
pub mod stream_duration;
pub mod tls;
pub mod tls_inspect;
pub mod tls_params;
pub mod tls_san;
pub mod trace;
pub mod udp;
pub mod upgrade;
pub mod upstream_filter;
pub mod upstream_protocol;

pub use error::{BuildError, ConfigError, Error};
