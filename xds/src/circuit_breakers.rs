//! Translation of a cluster's `circuit_breakers`
//! (`envoy.config.cluster.v3.CircuitBreakers`) into meshgate's
//! `config::circuit_breakers`. `per_host_thresholds` and any field left
//! over are refused by name (`rest`); the limits are checked when the
//! cluster is built (`cluster::breaker::check`).

use crate::translate::{R, err, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use meshgate_core::config::circuit_breakers as cb;

pub(crate) fn translate(mut c: cds::CircuitBreakers) -> R<cb::CircuitBreakersConfig> {
    let mut out = cb::CircuitBreakersConfig::default();
    for (i, mut t) in std::mem::take(&mut c.thresholds).into_iter().enumerate() {
        let path = format!("circuit_breakers.thresholds[{i}]");
        let priority = priority(std::mem::take(&mut t.priority), &format!("{path}.priority"))?;
        let retry_budget = t.retry_budget.take().map(|mut b| {
            let r = cb::RetryBudgetConfig {
                budget_percent: b
                    .budget_percent
                    .take()
                    .map(|p| cb::PercentConfig { value: p.value }),
                min_retry_concurrency: b.min_retry_concurrency.take().map(|v| v.value),
            };
            (r, b)
        });
        if let Some((_, b)) = &retry_budget {
            rest(b, &format!("{path}.retry_budget"))?;
        }
        out.thresholds.push(cb::ThresholdsConfig {
            priority,
            max_connections: t.max_connections.take().map(|v| v.value),
            max_pending_requests: t.max_pending_requests.take().map(|v| v.value),
            max_requests: t.max_requests.take().map(|v| v.value),
            max_retries: t.max_retries.take().map(|v| v.value),
            retry_budget: retry_budget.map(|(r, _)| r),
            track_remaining: std::mem::take(&mut t.track_remaining),
            max_connection_pools: t.max_connection_pools.take().map(|v| v.value),
        });
        rest(&t, &path)?;
    }
    rest(&c, "circuit_breakers")?;
    Ok(out)
}

/// Envoy's `RoutingPriority` enum (DEFAULT = 0, HIGH = 1).
pub(crate) fn priority(p: i32, path: &str) -> R<cb::RoutingPriority> {
    match p {
        0 => Ok(cb::RoutingPriority::Default),
        1 => Ok(cb::RoutingPriority::High),
        p => err(path, format!("unknown priority {p}")),
    }
}
