//! Load balancers: the `LoadBalancer` extension point and the built-in
//! policies (`round_robin`, `least_request`, `random`, `ring_hash`,
//! `maglev`). A policy is registered by name as a `LoadBalancerFactory`; the
//! factory validates its options once and returns a `LoadBalancerBuilder`,
//! which the cluster calls each time its endpoint set changes. The built
//! `LoadBalancer` is immutable apart from its own atomics, so picks take no
//! lock.

mod least_request;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;
pub mod slow_start;

pub use least_request::LeastRequestFactory;
pub use maglev::MaglevFactory;
pub use random::RandomFactory;
pub use ring_hash::RingHashFactory;
pub use round_robin::RoundRobinFactory;

use crate::cluster::Endpoint;
use crate::error::BuildError;
use std::sync::Arc;

/// Per-pick input.
#[derive(Debug, Clone, Copy, Default)]
pub struct LbContext {
    /// The request's hash for hashing policies (e.g. of the source address);
    /// policies that do not hash ignore it, hashing ones pick at random
    /// without it.
    pub hash: Option<u64>,
}

/// Picks an endpoint index from the set it was built for.
pub trait LoadBalancer: Send + Sync {
    /// Returns the index of an endpoint for which `available(i)` is true, or
    /// `None` when no such endpoint exists. Hashing policies walk on from the
    /// hashed position, so an unavailable endpoint moves only its own keys.
    /// `available` is the health read hook: `Cluster::choose` passes
    /// `Endpoint::is_available` (health set by a health checker or outlier
    /// detector, connect back-off) and the request's exclusions.
    fn pick(&self, ctx: &LbContext, available: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Builds a `LoadBalancer` for one endpoint set.
pub trait LoadBalancerBuilder: Send + Sync {
    fn build(&self, endpoints: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer>;
}

/// A load-balancing policy registered by name.
pub trait LoadBalancerFactory: Send + Sync {
    fn name(&self) -> &'static str;
    /// Validates the policy's options (`lb_config`) and returns a builder.
    fn create(
        &self,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn LoadBalancerBuilder>, BuildError>;
}

/// The built-in policies, registered by `Registry::new`.
pub fn builtin_factories() -> Vec<Arc<dyn LoadBalancerFactory>> {
    vec![
        Arc::new(RoundRobinFactory),
        Arc::new(LeastRequestFactory),
        Arc::new(RandomFactory),
        Arc::new(RingHashFactory),
        Arc::new(MaglevFactory),
    ]
}

/// A stable 64-bit hash (xxh64, seed 0) for hashing policies and for callers
/// that hash a key (a source address, a header). Stable across processes, so
/// two meshgate instances map a key to the same endpoint.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}
