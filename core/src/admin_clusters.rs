//! The admin's `/clusters`: every cluster of the live snapshot and every
//! endpoint with its weight, health flags and request counters, in Envoy's
//! text format (`cluster::address::stat::value`) or, with
//! `?format=json`, as JSON shaped like Envoy's `admin.v3.Clusters`.
//! Clusters with outlier detection also show its state: per cluster the
//! active ejections and the last success-rate mean/threshold, per endpoint
//! whether it is ejected, for how long, how often and by which detector,
//! and its last success rate (-1: not computed).

use crate::cluster::{Cluster, Endpoint, now_ms};
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

/// An endpoint's outlier state by name, `None` without detection.
fn outlier(e: &Endpoint) -> Option<Vec<(&'static str, serde_json::Value)>> {
    let m = e.outlier()?;
    let st = m.state();
    let left = st.ejected_at_ms.map_or(0, |at| {
        at.saturating_add(st.ejection_ms).saturating_sub(now_ms())
    });
    Some(vec![
        ("ejected", st.ejected_at_ms.is_some().into()),
        ("ejection_remaining_ms", left.into()),
        ("times_ejected", st.times_ejected.into()),
        ("last_detector", st.last_kind.unwrap_or("none").into()),
        ("success_rate", m.success_rate().into()),
    ])
}

/// Clusters sorted by name, for a stable output. A `not_found` stand-in
/// (a cluster CDS removed) is not a cluster, as in Envoy's `/clusters`.
fn sorted<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) -> Vec<&'a Arc<Cluster>> {
    let mut v: Vec<_> = clusters.filter(|c| !c.not_found).collect();
    v.sort_by_key(|c| c.name);
    v
}

/// The text format.
pub fn text<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) -> String {
    let mut out = String::new();
    for c in sorted(clusters) {
        let _ = writeln!(out, "{}::cx_active::{}", c.name, c.active_connections());
        if let Some(d) = &c.outlier {
            let (avg, threshold) = d.success_rate_stats();
            let n = c.name;
            let _ = writeln!(
                out,
                "{n}::outlier::ejections_active::{}",
                d.ejections_active()
            );
            let _ = writeln!(out, "{n}::outlier::success_rate_average::{avg}");
            let _ = writeln!(
                out,
                "{n}::outlier::success_rate_ejection_threshold::{threshold}"
            );
        }
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
            for (name, v) in outlier(e).into_iter().flatten() {
                match v {
                    serde_json::Value::String(s) => writeln!(out, "{p}::outlier::{name}::{s}"),
                    v => writeln!(out, "{p}::outlier::{name}::{v}"),
                }
                .ok();
            }
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
                    let mut host = serde_json::json!({
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
                    });
                    if let (Some(o), Some(obj)) = (outlier(e), host.as_object_mut()) {
                        // Envoy's HostStatus carries `success_rate`; the
                        // rest is meshgate's `outlier` object.
                        let o: serde_json::Map<_, _> =
                            o.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                        let rate = o.get("success_rate").cloned();
                        obj.insert("success_rate".into(), serde_json::json!({"value": rate}));
                        obj.insert("outlier".into(), o.into());
                    }
                    host
                })
                .collect();
            let mut cluster = serde_json::json!({
                "name": c.name,
                "cx_active": c.active_connections(),
                "host_statuses": hosts,
            });
            if let (Some(d), Some(obj)) = (&c.outlier, cluster.as_object_mut()) {
                let (avg, threshold) = d.success_rate_stats();
                obj.insert("outlier_ejections_active".into(), d.ejections_active().into());
                obj.insert("success_rate_ejection_threshold".into(), serde_json::json!({"value": threshold}));
                obj.insert("success_rate_average".into(), avg.into());
            }
            cluster
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}
