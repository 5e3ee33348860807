//! The `local_ratelimit` network filter (Envoy's
//! `envoy.filters.network.local_ratelimit`): one token per accepted
//! connection from the filter's bucket; with none left the connection is
//! closed at once, before the terminal filter (so before `tcp_proxy`
//! dials an upstream or a codec reads a byte). Counted per `stat_prefix`.

use super::bucket::TokenBucket;
use meshgate_core::BuildError;
use meshgate_core::config::local_ratelimit::NetworkLocalRateLimitConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::metrics::names;
use meshgate_core::network::{
    BuildContext, BuiltFilter, ConnectionInfo, FilterStatus, NetworkFilter, NetworkFilterFactory,
};
use metrics::Counter;
use std::sync::Arc;

/// Factory of the `local_ratelimit` network filter.
pub struct NetworkLocalRateLimitFactory;

impl NetworkFilterFactory for NetworkLocalRateLimitFactory {
    fn name(&self) -> &'static str {
        "local_ratelimit"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let c: NetworkLocalRateLimitConfig = parse_typed(config)?;
        if c.stat_prefix.is_empty() {
            return Err(BuildError::new("stat_prefix", "must not be empty"));
        }
        let bucket = TokenBucket::build("token_bucket", &c.token_bucket)?;
        Ok(BuiltFilter::Connection(Arc::new(ConnectionLimit {
            bucket,
            ok: metrics::counter!(names::NETWORK_LOCAL_RATELIMIT_OK_TOTAL, "stat_prefix" => c.stat_prefix.clone()),
            limited: metrics::counter!(names::NETWORK_LOCAL_RATELIMIT_RATE_LIMITED_TOTAL, "stat_prefix" => c.stat_prefix),
        })))
    }
}

struct ConnectionLimit {
    bucket: TokenBucket,
    ok: Counter,
    limited: Counter,
}

impl NetworkFilter for ConnectionLimit {
    fn on_new_connection(&self, info: &mut ConnectionInfo) -> FilterStatus {
        if self.bucket.take().allowed {
            self.ok.increment(1);
            FilterStatus::Continue
        } else {
            self.limited.increment(1);
            tracing::debug!(peer = %info.peer_addr, "connection rate limited");
            FilterStatus::Close
        }
    }
}
