//! The `rbac` network filter (Envoy's `envoy.filters.network.rbac`): the
//! same rules on the connection (destination IP/port, SNI, peer address,
//! verified mTLS identity), evaluated once per connection
//! (`ONE_TIME_ON_FIRST_BYTE`) before the terminal filter (`tcp_proxy`,
//! `proxy`) gets it. A denied connection is closed before the terminal
//! sees it, so no byte (and no connection) reaches an upstream.
//!
//! When: rules on addresses and ports are evaluated as the connection is
//! accepted (before any TLS handshake, at no cost to the byte path); rules
//! that need the handshake (`authenticated`, `requested_server_name`) are
//! evaluated once the handshake is done, through a read filter that passes
//! every byte on unchanged (so such a chain loses the splice path).

use super::Side;
use super::engine::{Context, Layer};
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::config::rbac::{EnforcementType, RbacNetworkConfig};
use meshgate_core::network::{
    BuildContext, BuiltFilter, ConnectionInfo, DataStatus, FilterStatus, NetworkFilter,
    NetworkFilterFactory, ReadFilter,
};
use std::sync::Arc;

/// Factory of the `rbac` network filter.
pub struct RbacNetworkFactory;

impl NetworkFilterFactory for RbacNetworkFactory {
    fn name(&self) -> &'static str {
        "rbac"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let c: RbacNetworkConfig = parse_typed(config)?;
        if c.enforcement_type == EnforcementType::Continuous {
            return Err(BuildError::new(
                "enforcement_type",
                "CONTINUOUS is not supported (ONE_TIME_ON_FIRST_BYTE only)",
            ));
        }
        let build = |rules, field: &str, shadow, prefix: &str| {
            Side::build(rules, field, Layer::Network, shadow, ctx.listener, prefix)
        };
        let rules = c
            .rules
            .as_ref()
            .map(|r| build(r, "rules", false, &c.stat_prefix))
            .transpose()?;
        let shadow = c
            .shadow_rules
            .as_ref()
            .map(|r| build(r, "shadow_rules", true, &c.shadow_rules_stat_prefix))
            .transpose()?;
        // A transport of streams (QUIC) finished its handshake before the
        // chain runs: everything is known when the connection arrives.
        let after_handshake = ctx.stream_transport().is_none()
            && rules
                .iter()
                .chain(shadow.iter())
                .any(|s| s.engine.needs_handshake());
        Ok(BuiltFilter::Connection(Arc::new(RbacNetwork {
            inner: Arc::new(Inner { rules, shadow }),
            after_handshake,
        })))
    }
}

struct Inner {
    rules: Option<Side>,
    shadow: Option<Side>,
}

impl Inner {
    /// Whether the connection may go on.
    fn check(&self, info: &ConnectionInfo) -> bool {
        let cx = Context {
            conn: info,
            remote: info.peer_addr.ip(),
            request: None,
            metadata: None,
        };
        if let Some(s) = &self.shadow {
            let o = s.evaluate(&cx);
            if !o.allowed {
                tracing::debug!(listener = %info.listener, peer = %info.peer_addr, policy = s.policy_name(&o), "rbac shadow rules would close the connection");
            }
        }
        let Some(s) = &self.rules else {
            return true;
        };
        let o = s.evaluate(&cx);
        if !o.allowed {
            tracing::debug!(listener = %info.listener, peer = %info.peer_addr, policy = s.policy_name(&o), "rbac denied the connection");
        }
        o.allowed
    }
}

struct RbacNetwork {
    inner: Arc<Inner>,
    after_handshake: bool,
}

impl NetworkFilter for RbacNetwork {
    fn on_new_connection(&self, info: &mut ConnectionInfo) -> FilterStatus {
        if self.after_handshake || self.inner.check(info) {
            FilterStatus::Continue
        } else {
            FilterStatus::Close
        }
    }

    fn sees_bytes(&self) -> bool {
        self.after_handshake
    }

    fn read_filter(&self, _info: &ConnectionInfo) -> Option<Box<dyn ReadFilter>> {
        self.after_handshake.then(|| {
            Box::new(AfterHandshake {
                inner: self.inner.clone(),
            }) as Box<dyn ReadFilter>
        })
    }
}

/// Evaluates the rules once the TLS handshake told the peer's identity;
/// bytes pass unchanged.
struct AfterHandshake {
    inner: Arc<Inner>,
}

impl ReadFilter for AfterHandshake {
    fn on_new_connection(&mut self, info: &ConnectionInfo) -> FilterStatus {
        if self.inner.check(info) {
            FilterStatus::Continue
        } else {
            FilterStatus::Close
        }
    }

    fn on_data(&mut self, _data: &mut bytes::BytesMut, _end_stream: bool) -> DataStatus {
        DataStatus::Continue
    }
}
