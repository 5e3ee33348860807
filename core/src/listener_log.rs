//! A listener's own `access_log` (Envoy's `Listener.access_log`): one
//! entry for each connection the listener closes before any network
//! filter has it: no filter chain matched (`%RESPONSE_FLAGS%` `NR`), the
//! PROXY protocol listener filter refused its header or timed out, the
//! TLS inspector could not read a ClientHello or timed out. Core only
//! says why (`ListenerClose`); the loggers (formats, filters, sinks) are
//! built by the factory `cmd/` registers (meshgate-filters' access logs),
//! so core knows no concrete logger.

use crate::config::access_log::AccessLog;
use crate::error::BuildError;
use crate::stream::StreamInfo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Why a listener closed a connection before any network filter had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerClose {
    /// No filter chain matched (Envoy's `NR`).
    NoFilterChainMatch,
    /// The PROXY protocol listener filter refused the connection; its
    /// reason (`meshgate_listener_proxy_protocol_error_total`'s label).
    ProxyProtocol(&'static str),
    /// The TLS inspector's ClientHello read failed (the peer closed, or
    /// sent something it could not parse).
    TlsInspectorError,
    /// The TLS inspector waited `listener_filters_timeout` in vain.
    ListenerFilterTimeout,
}

impl ListenerClose {
    /// The `%RESPONSE_CODE_DETAILS%` of the entry.
    pub fn details(self) -> &'static str {
        match self {
            ListenerClose::NoFilterChainMatch => "filter_chain_not_found",
            ListenerClose::ProxyProtocol("timeout") => "listener_filter_timeout",
            ListenerClose::ProxyProtocol(_) => "proxy_protocol_error",
            ListenerClose::TlsInspectorError => "tls_inspector_error",
            ListenerClose::ListenerFilterTimeout => "listener_filter_timeout",
        }
    }

    /// The Envoy response flag of the entry, if one applies.
    pub fn flag(self) -> Option<&'static str> {
        match self {
            ListenerClose::NoFilterChainMatch => Some("NR"),
            _ => None,
        }
    }
}

/// A listener's compiled access logs.
pub trait ListenerLog: Send + Sync {
    /// Logs the connection `info` describes (no stream: protocol `tcp`,
    /// its start the accept), closed for `why`.
    fn log(&self, info: &StreamInfo, why: ListenerClose);
}

/// Builds a listener's access logs (registered by `cmd/`).
pub trait ListenerLogFactory: Send + Sync {
    /// Errors name the field relative to the list (`[0].typed_config...`).
    fn build(&self, logs: &[AccessLog]) -> Result<Arc<dyn ListenerLog>, BuildError>;
}

/// One entry of `Listener.access_log`: an `AccessLog` that compares by
/// value (the listener config is compared on reload; the access log model
/// has no `PartialEq` of its own, so its JSON form is compared, off the
/// request path).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ListenerAccessLog(pub AccessLog);

impl PartialEq for ListenerAccessLog {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(&self.0).ok() == serde_json::to_value(&other.0).ok()
    }
}

impl Eq for ListenerAccessLog {}
