//! The `original_dst` cluster type (Envoy's `ORIGINAL_DST` with
//! `lb_policy: CLUSTER_PROVIDED`): no configured endpoints; each request or
//! connection goes to the destination the downstream connection had before
//! capture (the listener's local address after the `original_dst` listener
//! filter), or, with `original_dst_lb_config.use_http_header`, to the
//! `ip:port` of the `x-envoy-original-dst-host` request header. A host is
//! created on first use (so its pool and back-off carry over between
//! requests) and removed once unused for `cleanup_interval`.

use super::Endpoint;
use crate::config::{ClusterConfig, ConfigSource, DiscoveryType};
use crate::error::ConfigError;
use crate::network::ConnectionInfo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The header `use_http_header` reads by default.
pub const ORIGINAL_DST_HOST: &str = "x-envoy-original-dst-host";
/// Envoy's default `cleanup_interval`.
const DEFAULT_CLEANUP: Duration = Duration::from_secs(5);
/// The load-balancer name an original_dst cluster must name.
pub const CLUSTER_PROVIDED: &str = "cluster_provided";

/// The hosts of one original_dst cluster.
pub struct OriginalDst {
    cluster: &'static str,
    header: Option<http::HeaderName>,
    cleanup_interval: Duration,
    hosts: Mutex<Hosts>,
    gauge: metrics::Gauge,
}

#[derive(Default)]
struct Hosts {
    by_address: HashMap<SocketAddr, (Arc<Endpoint>, Instant)>,
    /// The cleanup task runs (started on first use: inside the runtime).
    sweeping: bool,
}

impl OriginalDst {
    /// `None` for a cluster of another type; refuses the original_dst
    /// settings on other types and the settings original_dst cannot have.
    pub fn build(
        c: &ClusterConfig,
        path: &str,
        source: &ConfigSource,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if c.discovery != DiscoveryType::OriginalDst {
            if c.original_dst_lb_config.is_some() {
                return Err(source.error(
                    format!("{path}.original_dst_lb_config"),
                    "only for `type: original_dst` clusters",
                ));
            }
            if c.cleanup_interval.is_some() {
                return Err(source.error(
                    format!("{path}.cleanup_interval"),
                    "only for `type: original_dst` clusters",
                ));
            }
            return Ok(None);
        }
        if c.lb_policy != CLUSTER_PROVIDED {
            return Err(source.error(
                format!("{path}.lb_policy"),
                format!("an original_dst cluster picks its host itself: want '{CLUSTER_PROVIDED}', got '{}'", c.lb_policy),
            ));
        }
        if !c.endpoints.is_empty() {
            return Err(source.error(
                format!("{path}.endpoints"),
                "an original_dst cluster has no configured endpoints (its hosts are the original destinations)",
            ));
        }
        if !c.health_checks.is_empty() {
            return Err(source.error(
                format!("{path}.health_checks"),
                "not supported on an original_dst cluster",
            ));
        }
        let cleanup_interval = c.cleanup_interval.unwrap_or(DEFAULT_CLEANUP);
        if cleanup_interval.is_zero() {
            return Err(source.error(format!("{path}.cleanup_interval"), "must be > 0"));
        }
        let header = match &c.original_dst_lb_config {
            Some(o) if o.use_http_header => {
                let name = o.http_header_name.as_deref().unwrap_or(ORIGINAL_DST_HOST);
                Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    source.error(
                        format!("{path}.original_dst_lb_config.http_header_name"),
                        format!("invalid header name '{name}'"),
                    )
                })?)
            }
            Some(o) if o.http_header_name.is_some() => {
                return Err(source.error(
                    format!("{path}.original_dst_lb_config.http_header_name"),
                    "needs use_http_header: true",
                ));
            }
            _ => None,
        };
        let cluster = crate::stream::intern(&c.name);
        Ok(Some(Arc::new(Self {
            cluster,
            header,
            cleanup_interval,
            hosts: Mutex::new(Hosts::default()),
            gauge: metrics::gauge!(crate::metrics::names::CLUSTER_ORIGINAL_DST_HOSTS, "cluster" => cluster),
        })))
    }

    /// The host for an L7 request: the header's address when
    /// `use_http_header` is on and the header is present, else the
    /// connection's original destination. `None` (counted): the header is
    /// not an `ip:port`.
    pub fn for_request(
        self: &Arc<Self>,
        headers: &http::HeaderMap,
        connection: &ConnectionInfo,
    ) -> Option<Arc<Endpoint>> {
        if let Some(name) = &self.header
            && let Some(v) = headers.get(name)
        {
            let Some(addr) = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            else {
                self.no_host("bad_header");
                return None;
            };
            return self.checked(addr);
        }
        self.for_connection(connection)
    }

    /// The host for a connection (`tcp_proxy`): its original destination.
    pub fn for_connection(self: &Arc<Self>, connection: &ConnectionInfo) -> Option<Arc<Endpoint>> {
        self.checked(connection.local_addr)
    }

    /// The host at `addr`, unless that is one of meshgate's own listeners
    /// (a connection that was not redirected: passing it through would
    /// come back here for ever).
    fn checked(self: &Arc<Self>, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        if crate::original_dst::is_own_listener(addr) {
            self.no_host("loop");
            return None;
        }
        Some(self.host(addr))
    }

    fn no_host(&self, reason: &'static str) {
        metrics::counter!(crate::metrics::names::CLUSTER_ORIGINAL_DST_NO_HOST_TOTAL, "cluster" => self.cluster, "reason" => reason).increment(1);
    }

    /// The host at `addr`, created on first use.
    fn host(self: &Arc<Self>, addr: SocketAddr) -> Arc<Endpoint> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, used)) = hosts.by_address.get_mut(&addr) {
            *used = now;
            return e.clone();
        }
        let e = Arc::new(Endpoint::new(addr, 1));
        hosts.by_address.insert(addr, (e.clone(), now));
        self.gauge.set(hosts.by_address.len() as f64);
        if !hosts.sweeping && tokio::runtime::Handle::try_current().is_ok() {
            hosts.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), self.cleanup_interval));
        }
        e
    }

    /// Removes the hosts unused for a whole interval and with no request
    /// in flight; their pooled connections close.
    fn cleanup(&self) {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = Vec::new();
        hosts.by_address.retain(|_, (e, used)| {
            let idle =
                now.duration_since(*used) >= self.cleanup_interval && e.active_requests() == 0;
            if idle {
                removed.push(e.clone());
            }
            !idle
        });
        self.gauge.set(hosts.by_address.len() as f64);
        drop(hosts);
        for e in removed {
            tracing::debug!(cluster = self.cluster, host = %e.address, "original_dst host unused: removed");
            e.close_pool();
        }
    }

    /// Hosts held now (tests).
    pub fn host_count(&self) -> usize {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_address
            .len()
    }
}

/// Runs `cleanup` every interval while the cluster lives.
async fn sweep(od: Weak<OriginalDst>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match od.upgrade() {
            Some(od) => od.cleanup(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Result<Option<Arc<OriginalDst>>, ConfigError> {
        let c: ClusterConfig = serde_yaml::from_str(yaml).unwrap();
        OriginalDst::build(&c, "clusters[0]", &ConfigSource::default())
    }

    fn info(local: &str) -> ConnectionInfo {
        ConnectionInfo {
            id: 1,
            listener: "l".into(),
            peer_addr: "10.0.0.9:5000".parse().unwrap(),
            local_addr: local.parse().unwrap(),
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: crate::network::Signal::new(),
            proxy_protocol: None,
        }
    }

    #[test]
    fn hosts_are_made_once_per_destination_and_the_header_wins() {
        let od = cluster(
            "{name: p, type: original_dst, lb_policy: cluster_provided, original_dst_lb_config: {use_http_header: true}}",
        )
        .unwrap()
        .unwrap();
        let conn = info("10.1.2.3:80");
        let a = od.for_connection(&conn).unwrap();
        let b = od.for_request(&http::HeaderMap::new(), &conn).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let mut h = http::HeaderMap::new();
        h.insert(ORIGINAL_DST_HOST, "10.9.9.9:8080".parse().unwrap());
        assert_eq!(
            od.for_request(&h, &conn).unwrap().address.to_string(),
            "10.9.9.9:8080"
        );
        assert_eq!(od.host_count(), 2);
        h.insert(ORIGINAL_DST_HOST, "not-an-address".parse().unwrap());
        assert!(od.for_request(&h, &conn).is_none());
    }

    #[test]
    fn idle_hosts_are_cleaned_up() {
        let od = cluster(
            "{name: p, type: original_dst, lb_policy: cluster_provided, cleanup_interval: 1ms}",
        )
        .unwrap()
        .unwrap();
        od.for_connection(&info("10.1.2.3:80")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        od.cleanup();
        assert_eq!(od.host_count(), 0);
    }

    #[test]
    fn settings_are_checked() {
        assert!(cluster("{name: p, type: original_dst}").is_err());
        assert!(cluster("{name: p, endpoints: [], cleanup_interval: 1s}").is_err());
        assert!(cluster("{name: p, endpoints: []}").unwrap().is_none());
    }
}
