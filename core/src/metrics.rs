//! Metric names and per-scope handles. Names follow
//! `meshgate_<scope>_<what>_<unit>` with labels (listener, cluster, reason).
//! Handles are registered once when a listener or cluster is built, so the
//! data path only increments atomics (no name lookup per event).

use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder (once)
/// and returns the handle the admin server renders from.
pub fn install_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Fixed buckets (seconds) make histograms cheap to record and
            // aggregatable across a fleet, unlike summaries.
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Counters of one listener.
#[derive(Clone)]
pub struct ListenerStats {
    /// `meshgate_listener_downstream_cx_total`
    pub cx_total: Counter,
    /// `meshgate_listener_downstream_cx_active`
    pub cx_active: Gauge,
    /// `meshgate_listener_downstream_cx_overflow_total`: refused by max_connections.
    pub cx_overflow: Counter,
    /// `meshgate_listener_no_filter_chain_match_total`
    pub no_filter_chain_match: Counter,
}

impl ListenerStats {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        Self {
            cx_total: counter!("meshgate_listener_downstream_cx_total", "listener" => l.clone()),
            cx_active: gauge!("meshgate_listener_downstream_cx_active", "listener" => l.clone()),
            cx_overflow: counter!("meshgate_listener_downstream_cx_overflow_total", "listener" => l.clone()),
            no_filter_chain_match: counter!("meshgate_listener_no_filter_chain_match_total", "listener" => l),
        }
    }
}

/// Counters of one cluster.
#[derive(Clone)]
pub struct ClusterStats {
    name: String,
    /// `meshgate_cluster_upstream_cx_total`: connections established.
    pub cx_total: Counter,
    /// `meshgate_cluster_upstream_cx_active`
    pub cx_active: Gauge,
    /// `meshgate_cluster_upstream_cx_overflow_total`: refused by max_connections.
    pub cx_overflow: Counter,
    /// `meshgate_cluster_upstream_bytes_sent_total`
    pub bytes_sent: Counter,
    /// `meshgate_cluster_upstream_bytes_received_total`
    pub bytes_received: Counter,
}

impl ClusterStats {
    pub fn new(cluster: &str) -> Self {
        let c = cluster.to_string();
        Self {
            name: c.clone(),
            cx_total: counter!("meshgate_cluster_upstream_cx_total", "cluster" => c.clone()),
            cx_active: gauge!("meshgate_cluster_upstream_cx_active", "cluster" => c.clone()),
            cx_overflow: counter!("meshgate_cluster_upstream_cx_overflow_total", "cluster" => c.clone()),
            bytes_sent: counter!("meshgate_cluster_upstream_bytes_sent_total", "cluster" => c.clone()),
            bytes_received: counter!("meshgate_cluster_upstream_bytes_received_total", "cluster" => c),
        }
    }

    /// `meshgate_cluster_upstream_cx_connect_fail_total{reason}`: a connect
    /// that failed (refused, timeout, overflow, no_healthy_endpoint). Rare
    /// path, so the label lookup per call is fine.
    pub fn connect_failed(&self, reason: &'static str) {
        counter!("meshgate_cluster_upstream_cx_connect_fail_total", "cluster" => self.name.clone(), "reason" => reason).increment(1);
    }

    /// `meshgate_cluster_upstream_cx_destroy_total{reason}`: how upstream
    /// connections ended (e.g. `remote_reset`, `idle_timeout`).
    pub fn cx_closed(&self, reason: &'static str) {
        counter!("meshgate_cluster_upstream_cx_destroy_total", "cluster" => self.name.clone(), "reason" => reason).increment(1);
    }
}
