//! `common_http_protocol_options` of the `proxy` filter: Envoy's
//! `envoy.config.core.v3.HttpProtocolOptions` on the HTTP connection
//! manager, the settings that apply to every downstream HTTP codec.

use serde::Deserialize;
use std::time::Duration;

/// Envoy's `HttpProtocolOptions`, as far as meshgate applies them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    /// A connection with no active stream for this long is closed
    /// (HTTP/2: GOAWAY, then close); `0s` disables it. Envoy's default:
    /// one hour. HTTP/1.1 keep-alive connections are bounded by
    /// `request_headers_timeout` already.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for CommonHttpProtocolOptions {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl CommonHttpProtocolOptions {
    /// The idle timeout, `None` when disabled.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
