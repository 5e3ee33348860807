//! Translation of a cluster's `circuit_breakers`
//! (`envoy.config.cluster.v3.CircuitBreakers`) into meshgate's
//! `config::circuit_breakers`, `per_host_thresholds` included. Any field
//! left over is refused by name (`rest`); the limits are checked when the
//! cluster is built (`cluster::breaker::check`, which honours only
//! `max_connections` per host, as Envoy does).

use crate::translate::{R, err, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use meshgate_core::config::circuit_breakers as cb;

pub(crate) fn translate(mut c: cds::CircuitBreakers) -> R<cb::CircuitBreakersConfig> {
    let mut out = cb::CircuitBreakersConfig::default();
    for (i, t) in std::mem::take(&mut c.thresholds).into_iter().enumerate() {
        out.thresholds
            .push(thresholds(t, &format!("circuit_breakers.thresholds[{i}]"))?);
    }
    // Envoy honours only `max_connections` per host; the other fields are
    // carried over so that the cluster build refuses them by name.
    for (i, t) in std::mem::take(&mut c.per_host_thresholds)
        .into_iter()
        .enumerate()
    {
        out.per_host_thresholds.push(thresholds(
            t,
            &format!("circuit_breakers.per_host_thresholds[{i}]"),
        )?);
    }
    rest(&c, "circuit_breakers")?;
    Ok(out)
}

fn thresholds(mut t: cds::circuit_breakers::Thresholds, path: &str) -> R<cb::ThresholdsConfig> {
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
    let out = cb::ThresholdsConfig {
        priority,
        max_connections: t.max_connections.take().map(|v| v.value),
        max_pending_requests: t.max_pending_requests.take().map(|v| v.value),
        max_requests: t.max_requests.take().map(|v| v.value),
        max_retries: t.max_retries.take().map(|v| v.value),
        retry_budget: retry_budget.map(|(r, _)| r),
        track_remaining: std::mem::take(&mut t.track_remaining),
        max_connection_pools: t.max_connection_pools.take().map(|v| v.value),
    };
    rest(&t, path)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    #[test]
    fn thresholds_and_per_host_thresholds_translate() {
        let cb = cds::CircuitBreakers {
            thresholds: vec![
                cds::circuit_breakers::Thresholds {
                    max_requests: Some(UInt32Value { value: 7 }),
                    track_remaining: true,
                    ..Default::default()
                },
                cds::circuit_breakers::Thresholds {
                    priority: 1,
                    max_retries: Some(UInt32Value { value: 2 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let out = translate(cb).unwrap();
        assert_eq!(out.thresholds[0].max_requests, Some(7));
        assert!(out.thresholds[0].track_remaining);
        assert_eq!(out.thresholds[1].priority, cb::RoutingPriority::High);
        assert_eq!(out.thresholds[1].max_retries, Some(2));
        let cb = cds::CircuitBreakers {
            per_host_thresholds: vec![cds::circuit_breakers::Thresholds {
                max_connections: Some(UInt32Value { value: 2 }),
                max_requests: Some(UInt32Value { value: 5 }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = translate(cb).unwrap();
        assert_eq!(out.per_host_thresholds[0].max_connections, Some(2));
        // Carried over, so that the cluster build refuses it by name.
        assert_eq!(out.per_host_thresholds[0].max_requests, Some(5));
        let e = meshgate_core::cluster::breaker::check(Some(&out), None).unwrap_err();
        assert_eq!(e.0, "circuit_breakers.per_host_thresholds[0].max_requests");
    }
}
