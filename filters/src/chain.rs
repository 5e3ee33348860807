//! The `proxy` filter's side of the stream filter chain: building it from
//! `stream_filters` and checking the route table's `per_filter_config`
//! against it. The driver itself is core's (`meshgate_core::filter_chain`).

use meshgate_core::BuildError;
use meshgate_core::filter_chain::{ChainEntry, FilterChain};
use meshgate_core::router::RouteSubscription;

/// Envoy's router filter: the implicit last filter of every chain, so an
/// entry with this name is accepted and skipped.
pub(crate) const ENVOY_ROUTER: &str = "envoy.filters.http.router";

/// The chain, after checking the current route table's per-filter configs
/// (a name must be a configured filter; its config must parse). A table
/// that arrives later (RDS, reload) is checked lazily: a per-route config
/// that does not parse refuses the stream (`filter_config_error`).
pub(crate) fn build(
    entries: Vec<ChainEntry>,
    table: &RouteSubscription,
) -> Result<FilterChain, BuildError> {
    let chain = FilterChain::new(entries)?;
    let current = table.load_full();
    chain.validate(&current).map_err(|e| {
        BuildError::new(
            meshgate_core::error::join_path("route_config", &e.path),
            e.message,
        )
    })?;
    Ok(chain)
}
