//! Routes to clusters that do not exist yet. A route configuration with
//! `validate_clusters: false` (Envoy's field; what RDS route configurations
//! get by default) may name a cluster the cluster manager does not know:
//! the table still builds, the route's target is a stand-in cluster with no
//! endpoints, and a request picking it is answered with the route's
//! `cluster_not_found_response_code` (503 by default) instead of being
//! forwarded. When the cluster arrives (CDS), the next snapshot resolves
//! the name like any other and the route works.
//!
//! The same answer serves a route whose target is a `not_found` stand-in
//! in the cluster manager (`ClusterConfig::not_found`: a cluster CDS
//! removed while a listener names it, as Envoy answers a route to a
//! cluster its cluster manager no longer holds).
//!
//! The check costs the common path one `Option` test: only a route that
//! has a missing target carries a [`NotFound`].

use crate::cluster::{Cluster, ClusterResolver, Endpoint};
use crate::config::BackoffConfig;
use crate::error::BuildError;
use crate::lb::{LbContext, LoadBalancer, LoadBalancerBuilder};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

/// Envoy's `RouteAction.ClusterNotFoundResponseCode`: the status of a
/// request whose route names a cluster that is not (yet) known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClusterNotFoundResponseCode {
    #[default]
    #[serde(rename = "SERVICE_UNAVAILABLE", alias = "service_unavailable")]
    ServiceUnavailable,
    #[serde(rename = "NOT_FOUND", alias = "not_found")]
    NotFound,
    #[serde(rename = "INTERNAL_SERVER_ERROR", alias = "internal_server_error")]
    InternalServerError,
}

impl ClusterNotFoundResponseCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The targets of a cluster action that were missing when its table was
/// built, and what to answer when one is picked.
pub struct NotFound {
    pub(crate) status: StatusCode,
    pub(crate) missing: Box<[Arc<Cluster>]>,
}

impl std::fmt::Debug for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.missing.iter().map(|c| c.name).collect();
        f.debug_struct("NotFound")
            .field("status", &self.status)
            .field("missing", &names)
            .finish()
    }
}

/// A resolver that answers an unknown name with a stand-in cluster (no
/// endpoints) instead of an error, and remembers the stand-ins it made.
pub(crate) struct Lenient<'a> {
    inner: &'a dyn ClusterResolver,
    /// Stand-ins by configured name (a cluster's own `name` is only a
    /// label, see `stream::intern`).
    made: RefCell<Vec<(String, Arc<Cluster>)>>,
}

impl<'a> Lenient<'a> {
    pub(crate) fn new(inner: &'a dyn ClusterResolver) -> Self {
        Self {
            inner,
            made: RefCell::new(Vec::new()),
        }
    }
}

/// The targets among `targets` that are not there (stand-ins: a lenient
/// route's unknown name, or a cluster the config marks `not_found`), if
/// any: what the action must answer for instead of forwarding.
pub(crate) fn not_found<'c>(
    targets: impl Iterator<Item = &'c Arc<Cluster>>,
    code: ClusterNotFoundResponseCode,
) -> Option<Box<NotFound>> {
    let missing: Vec<Arc<Cluster>> = targets.filter(|t| t.not_found).cloned().collect();
    (!missing.is_empty()).then(|| {
        Box::new(NotFound {
            status: code.status(),
            missing: missing.into(),
        })
    })
}

impl ClusterResolver for Lenient<'_> {
    fn resolve(&self, field: &str, name: &str) -> Result<Arc<Cluster>, BuildError> {
        match self.inner.resolve(field, name) {
            Ok(c) => Ok(c),
            Err(_) if !name.is_empty() => {
                let mut made = self.made.borrow_mut();
                if let Some((_, c)) = made.iter().find(|(n, _)| n == name) {
                    return Ok(c.clone());
                }
                tracing::debug!(
                    cluster = name,
                    field,
                    "route names a cluster not known yet; answered as cluster not found until it arrives"
                );
                let mut c = Cluster::new(
                    name,
                    Duration::from_secs(1),
                    Some(0),
                    BackoffConfig::default(),
                    Arc::new(NoEndpoints),
                    Vec::new(),
                );
                c.not_found = true;
                let c = Arc::new(c);
                made.push((name.to_string(), c.clone()));
                Ok(c)
            }
            Err(e) => Err(e),
        }
    }
}

/// The load balancer of a stand-in: there is never an endpoint.
struct NoEndpoints;

impl LoadBalancerBuilder for NoEndpoints {
    fn build(&self, _: &[Arc<Endpoint>]) -> Box<dyn LoadBalancer> {
        Box::new(NoEndpoints)
    }
}

impl LoadBalancer for NoEndpoints {
    fn pick(&self, _: &LbContext, _: &dyn Fn(usize) -> bool) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::ClusterManager;
    use crate::config::parse_str;
    use crate::registry::Registry;
    use crate::router::{RouteAction, RouteConfig, RouteTable};
    use http::StatusCode;
    use std::path::Path;

    fn known_a() -> ClusterManager {
        let yaml = "clusters:\n  - name: a\n    endpoints: [{address: \"127.0.0.1:1\"}]\n";
        let (cfg, src) = parse_str(Path::new("t.yaml"), yaml).unwrap();
        ClusterManager::build(&cfg.clusters, &Registry::new(), &src, false).unwrap()
    }

    fn routes(validate: &str) -> RouteConfig {
        serde_yaml::from_str(&format!(
            r#"
{validate}
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {{prefix: /gone}}
        route: {{cluster: gone, cluster_not_found_response_code: NOT_FOUND}}
      - match: {{prefix: /split}}
        route: {{weighted_clusters: {{clusters: [{{name: a, weight: 1}}, {{name: later, weight: 1}}]}}}}
      - match: {{prefix: /}}
        route: {{cluster: a}}
"#
        ))
        .unwrap()
    }

    fn route(t: &RouteTable, i: usize) -> &crate::router::Route {
        &t.virtual_hosts()[0].routes[i]
    }

    fn action(t: &RouteTable, i: usize) -> &crate::router::ClusterAction {
        match route(t, i).action() {
            RouteAction::Cluster(c) => c,
            _ => panic!("not a cluster action"),
        }
    }

    #[test]
    fn unknown_clusters_are_errors_unless_validate_clusters_is_false() {
        let cm = known_a();
        let e = RouteTable::build(&routes(""), &cm).unwrap_err();
        assert!(e.to_string().contains("unknown cluster 'gone'"), "{e}");
        let e = RouteTable::build(&routes("validate_clusters: true"), &cm).unwrap_err();
        assert!(e.to_string().contains("unknown cluster 'gone'"), "{e}");

        let t = RouteTable::build(&routes("validate_clusters: false"), &cm).unwrap();
        let gone = action(&t, 0);
        assert_eq!(
            route(&t, 0).cluster_not_found(gone.pick_cluster()),
            Some(StatusCode::NOT_FOUND)
        );
        // A weighted target that is missing answers 503 (the default) when
        // picked; the known one forwards.
        let split = action(&t, 1);
        let (a, later) = (split.pick_cluster_at(0), split.pick_cluster_at(1));
        assert_eq!(a.name, "a");
        assert_eq!(route(&t, 1).cluster_not_found(a), None);
        assert_eq!(
            route(&t, 1).cluster_not_found(later),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(later.hosts().endpoints.is_empty());
        // A route whose clusters all exist carries nothing to check.
        assert!(route(&t, 2).not_found.is_none());
    }
}
