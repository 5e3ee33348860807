//! `common_http_protocol_options` of the `proxy` filter: Envoy's
//! `envoy.config.core.v3.HttpProtocolOptions` on the HTTP connection
//! manager, the settings that apply to every downstream HTTP codec. The
//! config struct lives with the other filter configs in core.

pub use meshgate_core::config::filters::CommonHttpProtocolOptions;
