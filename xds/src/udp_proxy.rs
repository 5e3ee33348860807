//! Translation of an Envoy UDP listener (`socket_address.protocol: UDP`
//! with the `envoy.filters.udp_listener.udp_proxy` listener filter,
//! `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`) into
//! meshgate's `udp_proxy` listener (`meshgate_core::udp`). The route is the
//! deprecated `cluster` or a `matcher` that is only an `on_no_match` action
//! (`udp_proxy.v3.Route`); `use_original_src_ip`, key hash policies,
//! access logs, session filters and tunneling are refused by name.

use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3 as up;
use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use meshgate_core::config::udp_proxy as cfg;

/// The listener filter's name.
pub(crate) const NAME: &str = "envoy.filters.udp_listener.udp_proxy";
const CONFIG: &str = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
const ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route";

/// Takes `protocol: UDP` off the listener's socket address (so the address
/// translates as a TCP one would) and tells whether it was UDP.
pub(crate) fn take_protocol(l: &mut lds::Listener) -> bool {
    let Some(core3::address::Address::SocketAddress(sa)) =
        l.address.as_mut().and_then(|a| a.address.as_mut())
    else {
        return false;
    };
    if sa.protocol == core3::socket_address::Protocol::Udp as i32 {
        sa.protocol = core3::socket_address::Protocol::Tcp as i32;
        return true;
    }
    false
}

/// The `udp_proxy` of a UDP listener, taken out of it (its listener filter
/// and `udp_listener_config`); what is left is refused by the caller.
pub(crate) fn listener(l: &mut lds::Listener) -> R<cfg::UdpProxyConfig> {
    if !l.filter_chains.is_empty() || l.default_filter_chain.is_some() {
        return err(
            "filter_chains",
            "a UDP listener carries datagrams (udp_proxy), not filter chains",
        );
    }
    let filters = std::mem::take(&mut l.listener_filters);
    if filters.len() != 1 {
        return err(
            "listener_filters",
            format!("a UDP listener needs exactly one listener filter, {NAME}"),
        );
    }
    let mut proxy = None;
    for (i, mut f) in filters.into_iter().enumerate() {
        let path = format!("listener_filters[{i}]");
        if f.name != NAME {
            return err(
                join(&path, "name"),
                format!(
                    "'{}' is not supported on a UDP listener (only {NAME})",
                    f.name
                ),
            );
        }
        f.name.clear();
        let any = match f.config_type.take() {
            Some(lds::listener_filter::ConfigType::TypedConfig(a)) => a,
            Some(lds::listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return err(join(&path, "config_discovery"), "not supported by meshgate");
            }
            None => return err(join(&path, "typed_config"), "required"),
        };
        rest(&f, &path)?;
        let tc = join(&path, "typed_config");
        let m: up::UdpProxyConfig =
            decode(&any, CONFIG).map_err(|e| (tc.clone(), e.to_string()))?;
        proxy = Some(translate(m, &tc)?);
    }
    let Some(mut proxy) = proxy else {
        return err("listener_filters", format!("{NAME} required"));
    };
    if let Some(mut u) = l.udp_listener_config.take() {
        let p = "udp_listener_config";
        if let Some(s) = u.downstream_socket_config.take() {
            proxy.downstream_socket_config =
                Some(socket_config(s, &join(p, "downstream_socket_config"))?);
        }
        rest(&u, p)?;
    }
    Ok(proxy)
}

fn socket_config(mut s: core3::UdpSocketConfig, path: &str) -> R<cfg::UdpSocketConfig> {
    let max_rx_datagram_size = s.max_rx_datagram_size.take().map(|v| v.value as u32);
    rest(&s, path)?;
    Ok(cfg::UdpSocketConfig {
        max_rx_datagram_size,
    })
}

fn translate(mut m: up::UdpProxyConfig, path: &str) -> R<cfg::UdpProxyConfig> {
    use up::udp_proxy_config::RouteSpecifier;
    use up::udp_proxy_config::hash_policy::PolicySpecifier;
    let stat_prefix = Some(std::mem::take(&mut m.stat_prefix)).filter(|s| !s.is_empty());
    #[allow(deprecated)]
    let cluster = match m.route_specifier.take() {
        Some(RouteSpecifier::Cluster(c)) => c,
        Some(RouteSpecifier::Matcher(x)) => matcher(x, &join(path, "matcher"))?,
        None => return err(join(path, "matcher"), "a cluster or a matcher is required"),
    };
    if cluster.is_empty() {
        return err(join(path, "cluster"), "must not be empty");
    }
    let idle_timeout = match m.idle_timeout.take() {
        Some(d) => duration(&d, &join(path, "idle_timeout"))?,
        None => std::time::Duration::from_secs(60),
    };
    if m.use_original_src_ip {
        return err(
            join(path, "use_original_src_ip"),
            "not supported by meshgate (upstream datagrams leave from meshgate's address)",
        );
    }
    let mut hash_policies = Vec::new();
    for (i, mut h) in std::mem::take(&mut m.hash_policies).into_iter().enumerate() {
        let hp = join(path, &format!("hash_policies[{i}]"));
        match h.policy_specifier.take() {
            Some(PolicySpecifier::SourceIp(true)) => {
                hash_policies.push(cfg::UdpHashPolicy { source_ip: true });
            }
            Some(PolicySpecifier::SourceIp(false)) => {
                return err(join(&hp, "source_ip"), "must be true");
            }
            Some(PolicySpecifier::Key(_)) => {
                return err(
                    join(&hp, "key"),
                    "not supported by meshgate (only source_ip)",
                );
            }
            None => return err(hp, "a policy is required (source_ip)"),
        }
    }
    let upstream_socket_config = match m.upstream_socket_config.take() {
        Some(s) => Some(socket_config(s, &join(path, "upstream_socket_config"))?),
        None => None,
    };
    let use_per_packet_load_balancing = std::mem::take(&mut m.use_per_packet_load_balancing);
    if !m.access_log.is_empty() {
        return err(
            join(path, "access_log"),
            "not supported by meshgate on udp_proxy (its counters are in the metrics)",
        );
    }
    rest(&m, path)?;
    Ok(cfg::UdpProxyConfig {
        stat_prefix,
        cluster,
        idle_timeout,
        hash_policies,
        upstream_socket_config,
        downstream_socket_config: None,
        use_per_packet_load_balancing,
        max_sessions: 10_000,
    })
}

/// The cluster of a matcher that is only an `on_no_match` route action.
fn matcher(mut x: xm::Matcher, path: &str) -> R<String> {
    if x.matcher_type.is_some() {
        return err(
            join(path, "matcher_list"),
            "only a matcher with a single on_no_match route action is supported",
        );
    }
    let Some(mut on) = x.on_no_match.take() else {
        return err(join(path, "on_no_match"), "required");
    };
    rest(&x, path)?;
    let op = join(path, "on_no_match");
    let action = match on.on_match.take() {
        Some(xm::matcher::on_match::OnMatch::Action(a)) => a,
        _ => return err(join(&op, "action"), "a route action is required"),
    };
    rest(&on, &op)?;
    let ap = join(&op, "action");
    let Some(any) = action.typed_config.as_ref() else {
        return err(join(&ap, "typed_config"), "required");
    };
    let mut r: up::Route =
        decode(any, ROUTE).map_err(|e| (join(&ap, "typed_config"), e.to_string()))?;
    let cluster = std::mem::take(&mut r.cluster);
    rest(&r, &join(&ap, "typed_config"))?;
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf;
    use prost::Message;

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    fn udp_listener(p: up::UdpProxyConfig) -> lds::Listener {
        lds::Listener {
            name: "u".into(),
            address: Some(core3::Address {
                address: Some(core3::address::Address::SocketAddress(
                    core3::SocketAddress {
                        protocol: core3::socket_address::Protocol::Udp as i32,
                        address: "127.0.0.1".into(),
                        port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(5353)),
                        ..Default::default()
                    },
                )),
            }),
            listener_filters: vec![lds::ListenerFilter {
                name: NAME.into(),
                config_type: Some(lds::listener_filter::ConfigType::TypedConfig(any(
                    CONFIG, &p,
                ))),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn routed(cluster: &str) -> up::UdpProxyConfig {
        up::UdpProxyConfig {
            stat_prefix: "dns".into(),
            route_specifier: Some(up::udp_proxy_config::RouteSpecifier::Matcher(xm::Matcher {
                on_no_match: Some(Box::new(xm::matcher::OnMatch {
                    on_match: Some(xm::matcher::on_match::OnMatch::Action(
                        envoy_types::pb::xds::core::v3::TypedExtensionConfig {
                            name: "route".into(),
                            typed_config: Some(any(
                                ROUTE,
                                &up::Route {
                                    cluster: cluster.into(),
                                },
                            )),
                        },
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_udp_listener_translates_to_udp_proxy() {
        let mut p = routed("dns");
        p.idle_timeout = Some(protobuf::Duration {
            seconds: 2,
            nanos: 0,
        });
        p.use_per_packet_load_balancing = true;
        p.hash_policies = vec![up::udp_proxy_config::HashPolicy {
            policy_specifier: Some(
                up::udp_proxy_config::hash_policy::PolicySpecifier::SourceIp(true),
            ),
        }];
        let mut l = udp_listener(p);
        l.udp_listener_config = Some(lds::UdpListenerConfig {
            downstream_socket_config: Some(core3::UdpSocketConfig {
                max_rx_datagram_size: Some(protobuf::UInt64Value { value: 512 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(take_protocol(&mut l));
        let u = listener(&mut l).unwrap();
        assert_eq!(u.cluster, "dns");
        assert_eq!(u.idle_timeout, std::time::Duration::from_secs(2));
        assert!(u.use_per_packet_load_balancing);
        assert_eq!(u.hash_policies.len(), 1);
        assert_eq!(
            u.downstream_socket_config
                .and_then(|s| s.max_rx_datagram_size),
            Some(512)
        );
        assert!(l.listener_filters.is_empty() && l.udp_listener_config.is_none());
    }

    #[test]
    fn unsupported_udp_proxy_fields_are_named() {
        let cases: Vec<(up::UdpProxyConfig, &str)> = vec![
            (
                up::UdpProxyConfig {
                    use_original_src_ip: true,
                    ..routed("c")
                },
                "use_original_src_ip",
            ),
            (
                up::UdpProxyConfig {
                    hash_policies: vec![up::udp_proxy_config::HashPolicy {
                        policy_specifier: Some(
                            up::udp_proxy_config::hash_policy::PolicySpecifier::Key("k".into()),
                        ),
                    }],
                    ..routed("c")
                },
                "hash_policies[0].key",
            ),
            (
                up::UdpProxyConfig {
                    access_log: vec![Default::default()],
                    ..routed("c")
                },
                "access_log",
            ),
            (
                up::UdpProxyConfig {
                    route_specifier: Some(up::udp_proxy_config::RouteSpecifier::Matcher(
                        xm::Matcher {
                            matcher_type: Some(xm::matcher::MatcherType::MatcherList(
                                Default::default(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
                "matcher.matcher_list",
            ),
            (
                up::UdpProxyConfig {
                    session_filters: vec![Default::default()],
                    ..routed("c")
                },
                "session_filters",
            ),
        ];
        for (p, field) in cases {
            let mut l = udp_listener(p);
            take_protocol(&mut l);
            let e = listener(&mut l).unwrap_err();
            assert!(e.0.ends_with(field), "{field}: {e:?}");
        }
    }
}
