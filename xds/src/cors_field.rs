//! The older `cors` field of `VirtualHost` and `RouteAction`
//! (`envoy.config.route.v3.CorsPolicy`, deprecated but still emitted by
//! some control planes), translated into the `cors` stream filter's
//! per-filter config of the virtual host / route. Envoy's semantics:
//! a `typed_per_filter_config` entry for the cors filter wins over it,
//! and it does nothing without the cors filter in the HCM chain (an inline
//! route table of such an HCM drops it; an RDS table keeps it, unused
//! unless the chain has the filter). Fields meshgate does not support
//! (`shadow_enabled`, `allow_private_network_access`, a runtime key) are
//! refused by name, as in the typed policy.

// This module's job is the deprecated field.
#![allow(deprecated)]

use crate::translate::R;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use serde_json::Value;
use std::collections::BTreeMap;

/// The per-filter key the cors filter is configured under.
const CORS: &str = "cors";

/// Adds the translated `cors` field (at `path`) to a virtual host's or
/// route's per-filter configs, unless they configure the filter already.
/// The field is checked either way.
pub(crate) fn apply(
    per_filter: &mut BTreeMap<String, Value>,
    policy: Option<rds::CorsPolicy>,
    path: &str,
) -> R<()> {
    let Some(p) = policy else { return Ok(()) };
    let c = crate::http_filters::cors_policy(typed(p), path)?;
    if !per_filter.contains_key(CORS) {
        let v = serde_json::to_value(c).map_err(|e| (path.to_string(), e.to_string()))?;
        per_filter.insert(CORS.to_string(), v);
    }
    Ok(())
}

/// An inline route table under an HCM without the cors filter: the field
/// has no effect in Envoy, so it is dropped before translation.
pub(crate) fn strip(r: &mut rds::RouteConfiguration) {
    for v in &mut r.virtual_hosts {
        v.cors = None;
        for route in &mut v.routes {
            if let Some(rds::route::Action::Route(a)) = &mut route.action {
                a.cors = None;
            }
        }
    }
}

/// The same policy as the cors filter's own message (same field names).
fn typed(p: rds::CorsPolicy) -> cors::CorsPolicy {
    cors::CorsPolicy {
        allow_origin_string_match: p.allow_origin_string_match,
        allow_methods: p.allow_methods,
        allow_headers: p.allow_headers,
        expose_headers: p.expose_headers,
        max_age: p.max_age,
        allow_credentials: p.allow_credentials,
        filter_enabled: p.enabled_specifier.map(|e| match e {
            rds::cors_policy::EnabledSpecifier::FilterEnabled(f) => f,
        }),
        shadow_enabled: p.shadow_enabled,
        allow_private_network_access: p.allow_private_network_access,
        forward_not_matching_preflights: p.forward_not_matching_preflights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    use envoy_types::pb::google::protobuf;
    use prost::Message;

    fn exact(s: &str) -> matcher::StringMatcher {
        matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.into())),
            ..Default::default()
        }
    }

    fn policy(origin: &str) -> rds::CorsPolicy {
        rds::CorsPolicy {
            allow_origin_string_match: vec![exact(origin)],
            allow_methods: "GET".into(),
            max_age: "60".into(),
            allow_credentials: Some(protobuf::BoolValue { value: true }),
            ..Default::default()
        }
    }

    fn route_table(typed_on_route: bool, vh_policy: rds::CorsPolicy) -> rds::RouteConfiguration {
        let mut typed = std::collections::HashMap::new();
        if typed_on_route {
            let p = cors::CorsPolicy {
                allow_origin_string_match: vec![exact("https://typed.example")],
                ..Default::default()
            };
            typed.insert(
                "envoy.filters.http.cors".to_string(),
                protobuf::Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
                            .into(),
                    value: p.encode_to_vec(),
                },
            );
        }
        rds::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![rds::VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                cors: Some(vh_policy),
                routes: vec![rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(
                            "c".into(),
                        )),
                        cors: Some(policy("https://route.example")),
                        ..Default::default()
                    })),
                    typed_per_filter_config: typed,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn origins(v: Option<&Value>) -> Value {
        v.map(|v| v["allow_origin_string_match"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn the_old_cors_field_becomes_the_cors_per_filter_config_typed_wins() {
        let t = crate::translate::route_configuration(route_table(
            false,
            policy("https://vhost.example"),
        ))
        .unwrap();
        let vh = &t.virtual_hosts[0];
        assert_eq!(
            origins(vh.per_filter_config.get("cors")),
            serde_json::json!([{"exact": "https://vhost.example"}])
        );
        let r = &vh.routes[0].per_filter_config["cors"];
        assert_eq!(
            origins(Some(r)),
            serde_json::json!([{"exact": "https://route.example"}])
        );
        assert_eq!(r["allow_methods"], "GET");
        assert_eq!(r["allow_credentials"], true);
        assert_eq!(r["max_age"], "60");
        // typed_per_filter_config wins over the route action's field.
        let t = crate::translate::route_configuration(route_table(
            true,
            policy("https://vhost.example"),
        ))
        .unwrap();
        assert_eq!(
            origins(t.virtual_hosts[0].routes[0].per_filter_config.get("cors")),
            serde_json::json!([{"exact": "https://typed.example"}])
        );
    }

    #[test]
    fn weighted_clusters_typed_per_filter_config_is_translated_like_the_routes() {
        let mut r = route_table(true, policy("https://vhost.example"));
        let typed = std::mem::take(&mut r.virtual_hosts[0].routes[0].typed_per_filter_config);
        let mut off = std::collections::HashMap::new();
        off.insert(
            "envoy.filters.http.cors".to_string(),
            protobuf::Any {
                type_url: "type.googleapis.com/envoy.config.route.v3.FilterConfig".into(),
                value: rds::FilterConfig {
                    disabled: true,
                    ..Default::default()
                }
                .encode_to_vec(),
            },
        );
        let Some(rds::route::Action::Route(a)) = &mut r.virtual_hosts[0].routes[0].action else {
            panic!("route action")
        };
        a.cluster_specifier = Some(rds::route_action::ClusterSpecifier::WeightedClusters(
            rds::WeightedCluster {
                clusters: vec![
                    rds::weighted_cluster::ClusterWeight {
                        name: "a".into(),
                        weight: Some(protobuf::UInt32Value { value: 1 }),
                        typed_per_filter_config: typed,
                        ..Default::default()
                    },
                    rds::weighted_cluster::ClusterWeight {
                        name: "b".into(),
                        weight: Some(protobuf::UInt32Value { value: 1 }),
                        typed_per_filter_config: off,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ));
        let t = crate::translate::route_configuration(r).unwrap();
        let w = &t.virtual_hosts[0].routes[0]
            .route
            .as_ref()
            .unwrap()
            .weighted_clusters
            .as_ref()
            .unwrap()
            .clusters;
        assert_eq!(
            origins(w[0].per_filter_config.get("cors")),
            serde_json::json!([{"exact": "https://typed.example"}])
        );
        assert_eq!(
            w[1].per_filter_config["cors"],
            serde_json::json!({"disabled": true})
        );
        // An unknown filter's config there is refused, naming the entry.
        let mut r = route_table(false, policy("https://vhost.example"));
        let mut bad = std::collections::HashMap::new();
        bad.insert(
            "envoy.filters.http.lua".to_string(),
            protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
                    .into(),
                value: vec![],
            },
        );
        let Some(rds::route::Action::Route(a)) = &mut r.virtual_hosts[0].routes[0].action else {
            panic!("route action")
        };
        a.cluster_specifier = Some(rds::route_action::ClusterSpecifier::WeightedClusters(
            rds::WeightedCluster {
                clusters: vec![rds::weighted_cluster::ClusterWeight {
                    name: "a".into(),
                    weight: Some(protobuf::UInt32Value { value: 1 }),
                    typed_per_filter_config: bad,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ));
        let e = crate::translate::route_configuration(r).unwrap_err();
        assert!(
            e.field.contains(
                "weighted_clusters.clusters[0].typed_per_filter_config.envoy.filters.http.lua"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn unsupported_fields_of_the_old_cors_field_are_refused_by_name() {
        let mut p = policy("https://vhost.example");
        p.shadow_enabled = Some(core3::RuntimeFractionalPercent::default());
        let e = crate::translate::route_configuration(route_table(false, p)).unwrap_err();
        assert!(
            e.field.ends_with("virtual_hosts[0].cors.shadow_enabled"),
            "{e:?}"
        );
        let mut p = policy("https://vhost.example");
        p.enabled_specifier = Some(rds::cors_policy::EnabledSpecifier::FilterEnabled(
            core3::RuntimeFractionalPercent {
                runtime_key: "k".into(),
                ..Default::default()
            },
        ));
        let e = crate::translate::route_configuration(route_table(false, p)).unwrap_err();
        assert!(
            e.field
                .ends_with("virtual_hosts[0].cors.filter_enabled.runtime_key"),
            "{e:?}"
        );
        // Dropped with the table of an HCM without the cors filter.
        let mut r = route_table(false, policy("https://vhost.example"));
        strip(&mut r);
        let t = crate::translate::route_configuration(r).unwrap();
        assert!(t.virtual_hosts[0].per_filter_config.is_empty());
        assert!(t.virtual_hosts[0].routes[0].per_filter_config.is_empty());
    }
}
