//! The local node: who this proxy is (the config's `node`, Envoy's
//! bootstrap node, whose `metadata` istio-agent fills with the workload's
//! NAME, NAMESPACE, LABELS, WORKLOAD_NAME, CLUSTER_ID...). Published when
//! a snapshot is built, before its filters are, so a filter that tells
//! peers who we are (Istio's metadata exchange, `istio.stats`) reads it
//! at build time. One per process, as the bootstrap is.

use crate::config::NodeConfig;
use arc_swap::ArcSwapOption;
use std::sync::Arc;

static LOCAL: ArcSwapOption<NodeConfig> = ArcSwapOption::const_empty();

/// The node of the config being built or served, if it has one.
pub fn local() -> Option<Arc<NodeConfig>> {
    LOCAL.load_full()
}

/// Publishes the node of a config about to be built (unchanged: no store).
pub(crate) fn publish(node: Option<&NodeConfig>) {
    if LOCAL.load().as_deref() != node {
        LOCAL.store(node.cloned().map(Arc::new));
    }
}
