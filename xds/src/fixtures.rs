//! Builders of Envoy v3 resources, for tests and benchmarks (the
//! `fixtures` feature; always built for this crate's own unit tests): the
//! shapes the end-to-end xDS tests serve and the client's tests compose.

use crate::translate::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::Message;
use std::net::SocketAddr;

pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

pub fn sock(addr: SocketAddr) -> core3::Address {
    core3::Address {
        address: Some(core3::address::Address::SocketAddress(
            core3::SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(
                    addr.port() as u32
                )),
                ..Default::default()
            },
        )),
    }
}

pub fn ads_source() -> core3::ConfigSource {
    core3::ConfigSource {
        config_source_specifier: Some(core3::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core3::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub fn eds_cluster(name: &str) -> (String, Any) {
    (name.into(), any(CLUSTER, &eds_cluster_msg(name)))
}

/// An EDS cluster fed over ADS, round robin, 1s connect timeout.
pub fn eds_cluster_msg(name: &str) -> cds::Cluster {
    cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        lb_policy: cds::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

pub fn static_cluster(name: &str, addr: SocketAddr) -> (String, Any) {
    let c = cds::Cluster {
        name: name.into(),
        load_assignment: Some(cla_msg(name, &[(addr, 1, 0)])),
        ..Default::default()
    };
    (name.into(), any(CLUSTER, &c))
}

/// (address, weight, health status).
pub fn cla_msg(name: &str, eps: &[(SocketAddr, u32, i32)]) -> eds::ClusterLoadAssignment {
    eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![eds::LocalityLbEndpoints {
            lb_endpoints: eps
                .iter()
                .map(|(a, w, h)| eds::LbEndpoint {
                    host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                        eds::Endpoint {
                            address: Some(sock(*a)),
                            ..Default::default()
                        },
                    )),
                    load_balancing_weight: Some(UInt32Value { value: *w }),
                    health_status: *h,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn cla(name: &str, eps: &[(SocketAddr, u32, i32)]) -> (String, Any) {
    (name.into(), any(ENDPOINT, &cla_msg(name, eps)))
}

/// A route configuration: `/` to weighted clusters (one entry: plain
/// cluster), and `/direct` answered directly.
pub fn route_config(name: &str, clusters: &[(&str, u32)]) -> (String, Any) {
    use rds::route_action::ClusterSpecifier;
    let spec = if clusters.len() == 1 {
        ClusterSpecifier::Cluster(clusters[0].0.into())
    } else {
        ClusterSpecifier::WeightedClusters(rds::WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(c, w)| rds::weighted_cluster::ClusterWeight {
                    name: (*c).into(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let r = rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![
                rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Path(
                            "/direct".into(),
                        )),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::DirectResponse(
                        rds::DirectResponseAction {
                            status: 200,
                            body: Some(core3::DataSource {
                                specifier: Some(core3::data_source::Specifier::InlineString(
                                    format!("direct from {name}"),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
                rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(spec),
                        timeout: Some(PbDuration {
                            seconds: 5,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })),
                    response_headers_to_add: vec![core3::HeaderValueOption {
                        header: Some(core3::HeaderValue {
                            key: "x-route-config".into(),
                            value: name.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(ROUTE, &r))
}

pub fn hcm_listener(name: &str, port: u16, rds_name: &str) -> (String, Any) {
    let h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads_source()),
                route_config_name: rds_name.into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    one_filter_listener(
        name,
        port,
        "envoy.filters.network.http_connection_manager",
        any(
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &h,
        ),
    )
}

/// A listener on 127.0.0.1:`port` with one filter chain of one filter.
pub fn one_filter_listener(name: &str, port: u16, filter: &str, config: Any) -> (String, Any) {
    let l = lds::Listener {
        name: name.into(),
        address: Some(sock(std::net::SocketAddr::from(([127, 0, 0, 1], port)))),
        filter_chains: vec![lds::FilterChain {
            filters: vec![lds::Filter {
                name: filter.into(),
                config_type: Some(lds::filter::ConfigType::TypedConfig(config)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(LISTENER, &l))
}
