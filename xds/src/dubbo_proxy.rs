//! `envoy.filters.network.dubbo_proxy` (Envoy's Dubbo proxy, as Istio
//! with Aeraki sends it) into meshgate's `proxy` filter with the `dubbo`
//! codec. Dubbo calls are streams whose head carries `service`, `method`,
//! `version` and the attachments (`group`...) as headers (see the README's
//! RPC section), so Envoy's Dubbo route tables become ordinary header
//! matches on one catch-all virtual host:
//!
//! - each `RouteConfiguration` in order (Envoy tries them in order and the
//!   first route that matches wins): `interface` (exact, `*`, or a `*`
//!   prefix/suffix wildcard that never matches the empty string) on the
//!   `service` header; `group` and `version`, when set, exact on the
//!   `group` and `version` headers;
//! - each route's `method.name` (a `StringMatcher`) on the `method` header,
//!   and its `headers` as route header matchers;
//! - the action's `cluster` or `weighted_clusters` as an HTTP route's.
//!
//! What meshgate cannot honour is refused by name: parameter matches
//! (`params_match`: the arguments stay an opaque Hessian body), subset
//! `metadata_match`, `drds`, Dubbo filters other than the router, and any
//! protocol or serialization but Dubbo with Hessian 2.

// `route_config` (the list form) is deprecated but still sent.
#![allow(deprecated)]

use crate::translate::{R, err, header_matcher, join, regex, rest};
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dp;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use meshgate_core::config::filters as fc;
use meshgate_core::router as rc;

pub const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy";
const ROUTER: &str = "envoy.filters.dubbo.router";
const ROUTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.router.v3.Router";

/// The `proxy` filter config for one `DubboProxy` at `path`.
pub fn proxy(mut d: dp::DubboProxy, path: &str) -> R<fc::ProxyConfig> {
    d.stat_prefix.clear();
    if dp::ProtocolType::try_from(d.protocol_type) != Ok(dp::ProtocolType::Dubbo) {
        return err(join(path, "protocol_type"), "only Dubbo is supported");
    }
    d.protocol_type = 0;
    if dp::SerializationType::try_from(d.serialization_type) != Ok(dp::SerializationType::Hessian2)
    {
        return err(
            join(path, "serialization_type"),
            "only Hessian2 is supported",
        );
    }
    d.serialization_type = 0;
    for (i, mut f) in std::mem::take(&mut d.dubbo_filters).into_iter().enumerate() {
        let fp = format!("{path}.dubbo_filters[{i}]");
        if f.name != ROUTER {
            return err(
                join(&fp, "name"),
                format!("Dubbo filter '{}' not supported ({ROUTER})", f.name),
            );
        }
        f.name.clear();
        if let Some(c) = f.config.take()
            && c.type_url != ROUTER_TYPE
        {
            return err(
                join(&fp, "config"),
                format!("type_url '{}', want '{ROUTER_TYPE}'", c.type_url),
            );
        }
        rest(&f, &fp)?;
    }
    use dp::dubbo_proxy::RouteSpecifier;
    let (configs, cp) = match d.route_specifier.take() {
        Some(RouteSpecifier::Drds(_)) => {
            return err(
                join(path, "drds"),
                "route discovery for Dubbo not supported; send route_config inline",
            );
        }
        Some(RouteSpecifier::MultipleRouteConfig(mut m)) => {
            m.name.clear();
            let mp = join(path, "multiple_route_config");
            let list = std::mem::take(&mut m.route_config);
            rest(&m, &mp)?;
            (list, join(&mp, "route_config"))
        }
        None => (
            std::mem::take(&mut d.route_config),
            join(path, "route_config"),
        ),
    };
    if !d.route_config.is_empty() {
        return err(
            join(path, "route_config"),
            "set either route_config or multiple_route_config",
        );
    }
    rest(&d, path)?;
    let mut routes = Vec::new();
    for (i, c) in configs.into_iter().enumerate() {
        route_configuration(c, &format!("{cp}[{i}]"), &mut routes)?;
    }
    let mut config = fc::ProxyConfig::new(rc::RouteConfig {
        name: String::new(),
        virtual_hosts: vec![rc::VirtualHostConfig {
            name: "dubbo".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        validate_clusters: None,
        ignore_port_in_host_matching: None,
    });
    config.codec = "dubbo".into();
    Ok(config)
}

/// The routes of one `RouteConfiguration`, appended in order.
fn route_configuration(
    mut c: dp::RouteConfiguration,
    path: &str,
    out: &mut Vec<rc::RouteEntryConfig>,
) -> R<()> {
    c.name.clear();
    let mut scope = Vec::new();
    let iface = std::mem::take(&mut c.interface);
    if let Some(m) = interface_matcher(&iface) {
        scope.push(m);
    } else {
        return err(join(path, "interface"), "missing interface");
    }
    for (name, v) in [
        ("group", std::mem::take(&mut c.group)),
        ("version", std::mem::take(&mut c.version)),
    ] {
        if !v.is_empty() {
            scope.push(rc::HeaderMatcherConfig {
                name: name.into(),
                exact_match: Some(v),
                ..Default::default()
            });
        }
    }
    for (i, mut r) in std::mem::take(&mut c.routes).into_iter().enumerate() {
        let rp = format!("{path}.routes[{i}]");
        let mut headers = scope.clone();
        if let Some(mut m) = r.r#match.take() {
            let mp = join(&rp, "match");
            if let Some(mut method) = m.method.take() {
                let mmp = join(&mp, "method");
                if !method.params_match.is_empty() {
                    return err(
                        join(&mmp, "params_match"),
                        "parameter matching not supported (the arguments are not decoded for routing)",
                    );
                }
                if let Some(name) = method.name.take() {
                    headers.push(string_matcher("method", name, &join(&mmp, "name"))?);
                }
                rest(&method, &mmp)?;
            }
            for (j, h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
                headers.push(header_matcher(h, &format!("{mp}.headers[{j}]"))?);
            }
            rest(&m, &mp)?;
        }
        let ap = join(&rp, "route");
        let Some(mut a) = r.route.take() else {
            return err(ap, "missing route");
        };
        // The Dubbo action is the HTTP one's subset: translated by the
        // same code, so a `metadata_match` is refused there by name.
        let action = crate::translate::route_action(
            rds::RouteAction {
                cluster_specifier: match a.cluster_specifier.take() {
                    Some(dp::route_action::ClusterSpecifier::Cluster(c)) => {
                        Some(rds::route_action::ClusterSpecifier::Cluster(c))
                    }
                    Some(dp::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        Some(rds::route_action::ClusterSpecifier::WeightedClusters(w))
                    }
                    None => None,
                },
                metadata_match: a.metadata_match.take(),
                ..Default::default()
            },
            &ap,
        )?;
        rest(&a, &ap)?;
        rest(&r, &rp)?;
        out.push(rc::RouteEntryConfig {
            match_: rc::RouteMatchConfig {
                prefix: Some("/".into()),
                headers,
                ..Default::default()
            },
            route: Some(action),
            ..Default::default()
        });
    }
    rest(&c, path)
}

/// Envoy's interface pattern on the `service` header: `*` (any, not
/// empty), `*.suffix`, `prefix.*`, or exact.
fn interface_matcher(iface: &str) -> Option<rc::HeaderMatcherConfig> {
    let mut m = rc::HeaderMatcherConfig {
        name: "service".into(),
        ..Default::default()
    };
    if iface.is_empty() {
        return None;
    }
    if iface == "*" {
        m.safe_regex_match = Some(".+".into());
    } else if let Some(suffix) = iface.strip_prefix('*') {
        m.safe_regex_match = Some(format!(".+{}", regex::escape(suffix)));
    } else if let Some(prefix) = iface.strip_suffix('*') {
        m.safe_regex_match = Some(format!("{}.+", regex::escape(prefix)));
    } else {
        m.exact_match = Some(iface.into());
    }
    Some(m)
}

/// A `StringMatcher` on header `name`.
pub(crate) fn string_matcher(
    name: &str,
    mut sm: matcher::StringMatcher,
    path: &str,
) -> R<rc::HeaderMatcherConfig> {
    use matcher::string_matcher::MatchPattern as P;
    let mut c = rc::HeaderMatcherConfig {
        name: name.into(),
        ..Default::default()
    };
    let fold = std::mem::take(&mut sm.ignore_case);
    let case = if fold { "(?i)" } else { "" };
    match sm.match_pattern.take() {
        Some(P::Exact(s)) if !fold => c.exact_match = Some(s),
        Some(P::Prefix(s)) if !fold => c.prefix_match = Some(s),
        Some(P::Suffix(s)) if !fold => c.suffix_match = Some(s),
        Some(P::Exact(s)) => c.safe_regex_match = Some(format!("{case}{}", regex::escape(&s))),
        Some(P::Prefix(s)) => c.safe_regex_match = Some(format!("{case}{}.*", regex::escape(&s))),
        Some(P::Suffix(s)) => c.safe_regex_match = Some(format!("{case}.*{}", regex::escape(&s))),
        Some(P::Contains(s)) => {
            c.safe_regex_match = Some(format!("{case}.*{}.*", regex::escape(&s)))
        }
        Some(P::SafeRegex(r)) => {
            if fold {
                return err(
                    join(path, "ignore_case"),
                    "ignore_case with safe_regex not supported",
                );
            }
            c.safe_regex_match = Some(regex(r, &join(path, "safe_regex"))?)
        }
        _ => {
            return err(
                path,
                "match pattern not supported (exact, prefix, suffix, contains, safe_regex)",
            );
        }
    }
    rest(&sm, path)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dubbo(interface: &str, routes: Vec<dp::Route>) -> dp::DubboProxy {
        dp::DubboProxy {
            stat_prefix: "dubbo".into(),
            route_config: vec![dp::RouteConfiguration {
                name: "r".into(),
                interface: interface.into(),
                routes,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn to(cluster: &str, method: Option<&str>) -> dp::Route {
        dp::Route {
            r#match: Some(dp::RouteMatch {
                method: method.map(|m| dp::MethodMatch {
                    name: Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(m.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                headers: vec![],
            }),
            route: Some(dp::RouteAction {
                cluster_specifier: Some(dp::route_action::ClusterSpecifier::Cluster(
                    cluster.into(),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn routes_become_header_matches_in_order() {
        let c = proxy(
            dubbo("com.acme.*", vec![to("a", Some("sayHello")), to("b", None)]),
            "p",
        )
        .unwrap();
        assert_eq!(c.codec, "dubbo");
        let routes = &c.route_config.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2);
        let h = &routes[0].match_.headers;
        assert_eq!(h[0].name, "service");
        assert_eq!(h[0].safe_regex_match.as_deref(), Some("com\\.acme\\..+"));
        assert_eq!(h[1].name, "method");
        assert_eq!(h[1].exact_match.as_deref(), Some("sayHello"));
        assert_eq!(
            routes[1].route.as_ref().unwrap().cluster.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn unsupported_fields_are_named() {
        let mut r = to("a", Some("m"));
        r.r#match
            .as_mut()
            .unwrap()
            .method
            .as_mut()
            .unwrap()
            .params_match = [(0, Default::default())].into_iter().collect();
        let e = proxy(dubbo("x", vec![r]), "p").unwrap_err();
        assert_eq!(e.0, "p.route_config[0].routes[0].match.method.params_match");

        let mut r = to("a", None);
        r.route.as_mut().unwrap().metadata_match = Some(Default::default());
        let e = proxy(dubbo("x", vec![r]), "p").unwrap_err();
        assert_eq!(e.0, "p.route_config[0].routes[0].route.metadata_match");

        let mut d = dubbo("x", vec![to("a", None)]);
        d.dubbo_filters.push(dp::DubboFilter {
            name: "acme.filter".into(),
            config: None,
        });
        let e = proxy(d, "p").unwrap_err();
        assert_eq!(e.0, "p.dubbo_filters[0].name");

        let e = proxy(dubbo("", vec![]), "p").unwrap_err();
        assert_eq!(e.0, "p.route_config[0].interface");
    }
}
