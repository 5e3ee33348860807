//! Service degradation ("downgrade") fallback of a route, a meshgate
//! extension (no Envoy field): when the route's cluster has no healthy
//! endpoint (none at all, or every one unhealthy by health checks,
//! outlier detection or EDS) or its circuit breaker is open (overflow),
//! the request gets the fallback instead: a fixed answer
//! (`direct_response`) or another cluster. Counted in
//! `meshgate_route_fallback_total{cluster, reason}`.
//!
//! When: "no healthy endpoint" is checked before the request is sent, so
//! a fallback cluster gets the whole request (body included); an overflow
//! is known only once the pool refused the request, so it falls back to a
//! cluster only when the request had no body (the head is kept for that,
//! and only on routes with a fallback cluster); otherwise the direct
//! response, or the 503.

use super::DirectResponseAction;
use crate::cluster::{Cluster, ClusterResolver};
use crate::error::BuildError;
use crate::pool::Health;
use crate::stream::{LocalReason, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `route.fallback`: exactly one of `direct_response`, `cluster`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<super::DirectResponseConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// A compiled fallback.
#[derive(Clone)]
pub enum Fallback {
    Direct(DirectResponseAction),
    Cluster(Arc<Cluster>),
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::Direct(d) => f.debug_tuple("Direct").field(d).finish(),
            Fallback::Cluster(c) => f.debug_tuple("Cluster").field(&c.name).finish(),
        }
    }
}

/// Why a fallback was used (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    NoHealthyEndpoint,
    Overflow,
}

impl FallbackReason {
    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::NoHealthyEndpoint => "no_healthy_endpoint",
            FallbackReason::Overflow => "overflow",
        }
    }

    /// The reason of a local reply meshgate made for the cluster, if it is
    /// one a fallback answers.
    pub fn of(resp: &Response) -> Option<Self> {
        match resp.extensions().get::<LocalReason>() {
            Some(LocalReason::NoHealthyUpstream) => Some(FallbackReason::NoHealthyEndpoint),
            Some(LocalReason::Overflow) => Some(FallbackReason::Overflow),
            _ => None,
        }
    }
}

impl Fallback {
    pub(crate) fn build(
        path: &str,
        c: &FallbackConfig,
        clusters: &dyn ClusterResolver,
    ) -> Result<Self, BuildError> {
        match (&c.direct_response, &c.cluster) {
            (Some(d), None) => {
                let dpath = format!("{path}.direct_response");
                let status = StatusCode::from_u16(d.status)
                    .ok()
                    .filter(|s| (200..=599).contains(&s.as_u16()))
                    .ok_or_else(|| {
                        BuildError::new(
                            format!("{dpath}.status"),
                            format!("status {} out of range 200..=599", d.status),
                        )
                    })?;
                Ok(Fallback::Direct(DirectResponseAction {
                    status,
                    body: d
                        .body
                        .as_ref()
                        .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                        .unwrap_or_default(),
                }))
            }
            (None, Some(name)) => Ok(Fallback::Cluster(
                clusters.resolve(&format!("{path}.cluster"), name)?,
            )),
            _ => Err(BuildError::new(
                path,
                "set exactly one of direct_response, cluster",
            )),
        }
    }

    /// Counts one use of the fallback for `cluster`.
    pub fn count(cluster: &Cluster, reason: FallbackReason) {
        metrics::counter!(crate::metrics::names::ROUTE_FALLBACK_TOTAL, "cluster" => cluster.name, "reason" => reason.label()).increment(1);
    }
}

/// Whether `cluster` has no endpoint that is not unhealthy (none at all,
/// or each one failed by a health source). One load of the host set.
pub fn no_healthy_endpoint(cluster: &Cluster) -> bool {
    cluster
        .hosts()
        .endpoints
        .iter()
        .all(|e| e.health() == Health::Unhealthy)
}
