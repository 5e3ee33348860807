//! The admin's `/clusters`: every cluster of the live snapshot and every
//! endpoint with its weight, health flags and request counters, in Envoy's
//! text format (`cluster::address::stat::value`) or, with
//! `?format=json`, as JSON shaped like Envoy's `admin.v3.Clusters`.

use crate::cluster::{Cluster, Endpoint};
use crate::pool::HealthFlags;
use std::fmt::Write;
use std::sync::Arc;

/// The per-endpoint counters shown, by Envoy's names.
fn stats(e: &Endpoint) -> [(&'static str, u64); 4] {
    let o = e.outcomes().counts();
    let error = o.connect_failure + o.reset + o.timeout + o.server_error;
    [
        ("rq_active", u64::from(e.active_requests())),
        ("rq_success", o.success),
        ("rq_error", error),
        ("rq_total", o.success + error),
    ]
}

/// Envoy's `health_flags` value: `healthy`, or `/flag1/flag2...`.
fn health_flags(e: &Endpoint) -> String {
    let names = HealthFlags::names(e.health_flags().flags());
    if names.is_empty() {
        "healthy".to_string()
    } else {
        names.iter().fold(String::new(), |mut s, n| {
            s.push('/');
            s.push_str(n);
            s
        })
    }
}

/// Clusters sorted by name, for a stable output.
fn sorted<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) -> Vec<&'a Arc<Cluster>> {
    let mut v: Vec<_> = clusters.collect();
    v.sort_by_key(|c| c.name);
    v
}

/// The text format.
pub fn text<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) -> String {
    let mut out = String::new();
    for c in sorted(clusters) {
        let _ = writeln!(out, "{}::cx_active::{}", c.name, c.active_connections());
        for e in &c.hosts().endpoints {
            let p = format!("{}::{}", c.name, e.address);
            if let Some(h) = &e.hostname {
                let _ = writeln!(out, "{p}::hostname::{h}");
            }
            for (name, v) in stats(e) {
                let _ = writeln!(out, "{p}::{name}::{v}");
            }
            let _ = writeln!(out, "{p}::weight::{}", e.weight);
            let _ = writeln!(out, "{p}::health_flags::{}", health_flags(e));
        }
    }
    out
}

/// The JSON format.
pub fn json<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = sorted(clusters)
        .into_iter()
        .map(|c| {
            let hosts: Vec<serde_json::Value> = c
                .hosts()
                .endpoints
                .iter()
                .map(|e| {
                    let flags = e.health_flags().flags();
                    let has = |bit: u8| flags & bit != 0;
                    let eds = if has(HealthFlags::FAILED_EDS_HEALTH) {
                        "UNHEALTHY"
                    } else if has(HealthFlags::DEGRADED_EDS_HEALTH) {
                        "DEGRADED"
                    } else {
                        "HEALTHY"
                    };
                    serde_json::json!({
                        "address": {"socket_address": {
                            "address": e.address.ip().to_string(),
                            "port_value": e.address.port(),
                        }},
                        "hostname": e.hostname.as_deref().unwrap_or(""),
                        "stats": stats(e).iter().map(|(n, v)| serde_json::json!({
                            "name": n, "type": if *n == "rq_active" { "GAUGE" } else { "COUNTER" }, "value": v,
                        })).collect::<Vec<_>>(),
                        "health_status": {
                            "eds_health_status": eds,
                            "failed_active_health_check": has(HealthFlags::FAILED_ACTIVE_HC),
                            "failed_outlier_check": has(HealthFlags::FAILED_OUTLIER_CHECK),
                            "active_hc_degraded": has(HealthFlags::DEGRADED_ACTIVE_HC),
                            "pending_active_hc": has(HealthFlags::PENDING_ACTIVE_HC),
                        },
                        "health_flags": health_flags(e),
                        "weight": e.weight,
                    })
                })
                .collect();
            serde_json::json!({
                "name": c.name,
                "cx_active": c.active_connections(),
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}
