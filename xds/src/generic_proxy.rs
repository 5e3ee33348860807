//! `envoy.filters.network.generic_proxy` (Envoy's generic RPC proxy, as
//! Istio with Aeraki sends it for Dubbo) into meshgate's `proxy` filter
//! with the `dubbo` or `bolt` codec. The codec comes from `codec_config`:
//! Envoy's `DubboCodecConfig`, or meshgate's own Bolt codec type
//! (`type.googleapis.com/meshgate.codecs.Bolt`, as a bare `Any` or inside
//! a `TypedStruct`, since Envoy has no Bolt codec).
//!
//! The routes are a `xds.type.matcher.v3.Matcher` tree over the call's
//! service, method and properties. meshgate's RPC stream head carries
//! them as the `service` and `method` headers and one header per
//! attachment (`version`, `group`...), so the tree is flattened into
//! ordered header-matching routes on one catch-all virtual host:
//!
//! - a `matcher_list` entry becomes one route per disjunct of its
//!   predicate (`and_matcher` conjoins, `or_matcher` adds disjuncts), in
//!   list order; a nested matcher is flattened under its parent's
//!   conditions, so one that matches nothing falls through to the next
//!   entry (the xDS matcher rule); `on_no_match` comes after the list;
//! - a `matcher_tree`'s `exact_match_map` becomes exact matches, its
//!   `prefix_match_map` prefix matches, longest prefix first;
//! - `virtual_hosts` select on the call's host (for Dubbo: the service, as
//!   Envoy's Dubbo codec reports it) with Envoy's precedence: exact names,
//!   then `*suffix` wildcards, then `prefix*` wildcards (longest first),
//!   then `*`; each host's routes carry "host matches this pattern and no
//!   earlier one", so a call never falls from its virtual host into
//!   another; the top-level `routes` serve the calls no host takes.
//!
//! What meshgate cannot honour is refused by name: `not_matcher`,
//! `keep_matching`, custom string and tree matchers, inputs other than
//! the generic proxy's service / host / path / method / property /
//! request inputs, filters other than the router (and its
//! `bind_upstream_connection`), `generic_rds`, `tracing`, `access_log`,
//! and the route action's `metadata`, `per_filter_config`, `retry_policy`.

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::{
    action::v3 as action, codecs::dubbo::v3 as dubbo, matcher::v3 as gm, router::v3 as router,
    v3 as gp,
};
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf;
use envoy_types::pb::xds::core::v3 as xcore;
use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use meshgate_core::config::filters as fc;
use meshgate_core::router as rc;

pub const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.GenericProxy";
const DUBBO_CODEC: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.DubboCodecConfig";
/// meshgate's extension codec type for Bolt (Envoy has none).
pub const BOLT_CODEC: &str = "type.googleapis.com/meshgate.codecs.Bolt";
pub(crate) const TYPED_STRUCTS: [&str; 2] = [
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
];
const ROUTER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.router.v3.Router";
const ACTION: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction";
const INPUT: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.";
/// Bounds on what a hostile tree can expand to.
const MAX_ROUTES: usize = 4096;
const MAX_DEPTH: usize = 16;

/// `xds.type.v3.TypedStruct` (wire-identical to `udpa.type.v1`'s), which
/// meshgate's Envoy protos lack.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TypedStruct {
    #[prost(string, tag = "1")]
    pub(crate) type_url: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) value: Option<protobuf::Struct>,
}

/// One conjunction of header conditions.
type Cond = Vec<rc::HeaderMatcherConfig>;

/// The `proxy` filter config for one `GenericProxy` at `path`.
pub fn proxy(mut g: gp::GenericProxy, path: &str) -> R<fc::ProxyConfig> {
    g.stat_prefix.clear();
    let cp = join(path, "codec_config");
    let Some(codec) = g.codec_config.take() else {
        return err(cp, "required (DubboCodecConfig or meshgate.codecs.Bolt)");
    };
    let codec = codec_of(codec, &cp)?;
    let filters = std::mem::take(&mut g.filters);
    if filters.is_empty() {
        return err(
            join(path, "filters"),
            "the generic proxy router (envoy.filters.generic.router) is required",
        );
    }
    for (i, f) in filters.into_iter().enumerate() {
        router_filter(f, &format!("{path}.filters[{i}]"))?;
    }
    use gp::generic_proxy::RouteSpecifier;
    let routes = match g.route_specifier.take() {
        Some(RouteSpecifier::GenericRds(_)) => {
            return err(
                join(path, "generic_rds"),
                "route discovery for generic_proxy not supported; send route_config inline",
            );
        }
        Some(RouteSpecifier::RouteConfig(c)) => {
            route_configuration(c, &join(path, "route_config"))?
        }
        None => return err(join(path, "route_config"), "required"),
    };
    rest(&g, path)?;
    let mut config = fc::ProxyConfig::new(rc::RouteConfig {
        name: String::new(),
        virtual_hosts: vec![rc::VirtualHostConfig {
            name: "generic_proxy".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        validate_clusters: None,
        ignore_port_in_host_matching: None,
    });
    config.codec = codec.into();
    Ok(config)
}

fn codec_of(mut c: core3::TypedExtensionConfig, path: &str) -> R<&'static str> {
    c.name.clear();
    let tp = join(path, "typed_config");
    let Some(any) = c.typed_config.take() else {
        return err(tp, "required");
    };
    rest(&c, path)?;
    let url = any.type_url.as_str();
    if url == DUBBO_CODEC {
        let _: dubbo::DubboCodecConfig =
            decode(&any, DUBBO_CODEC).map_err(|e| (tp.clone(), e.to_string()))?;
        return Ok("dubbo");
    }
    if url == BOLT_CODEC {
        if !any.value.is_empty() {
            return err(tp, "meshgate.codecs.Bolt has no fields");
        }
        return Ok("bolt");
    }
    if let Some(ts_url) = TYPED_STRUCTS.iter().find(|u| **u == url) {
        let mut ts: TypedStruct = decode(&any, ts_url).map_err(|e| (tp.clone(), e.to_string()))?;
        if ts.type_url != BOLT_CODEC {
            return err(
                join(&tp, "type_url"),
                format!(
                    "codec '{}' not supported (want '{BOLT_CODEC}')",
                    ts.type_url
                ),
            );
        }
        ts.type_url.clear();
        if ts.value.as_ref().is_some_and(|v| v.fields.is_empty()) {
            ts.value = None;
        }
        rest(&ts, &tp)?;
        return Ok("bolt");
    }
    err(
        tp,
        format!("codec '{url}' not supported (DubboCodecConfig, {BOLT_CODEC})"),
    )
}

fn router_filter(mut f: core3::TypedExtensionConfig, path: &str) -> R<()> {
    f.name.clear();
    let tp = join(path, "typed_config");
    let Some(any) = f.typed_config.take() else {
        return err(tp, "required");
    };
    rest(&f, path)?;
    if any.type_url != ROUTER {
        return err(
            tp,
            format!(
                "generic proxy filter '{}' not supported (only the router, {ROUTER})",
                any.type_url
            ),
        );
    }
    let r: router::Router = decode(&any, ROUTER).map_err(|e| (tp.clone(), e.to_string()))?;
    if r.bind_upstream_connection {
        return err(
            join(&tp, "bind_upstream_connection"),
            "one upstream connection per downstream connection not supported (meshgate multiplexes calls)",
        );
    }
    Ok(())
}

fn route_configuration(mut c: gp::RouteConfiguration, path: &str) -> R<Vec<rc::RouteEntryConfig>> {
    c.name.clear();
    let mut out = Vec::new();
    // Every (host pattern, virtual host) in Envoy's precedence order.
    let mut hosts: Vec<(u8, usize, String, usize)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let vhs = std::mem::take(&mut c.virtual_hosts);
    for (i, vh) in vhs.iter().enumerate() {
        let vp = format!("{path}.virtual_hosts[{i}]");
        if vh.hosts.is_empty() {
            return err(join(&vp, "hosts"), "at least one host is required");
        }
        for (j, h) in vh.hosts.iter().enumerate() {
            if !seen.insert(h.clone()) {
                return err(
                    format!("{vp}.hosts[{j}]"),
                    format!("host '{h}' appears in more than one virtual host"),
                );
            }
            let class = if h == "*" {
                3
            } else if h.starts_with('*') {
                1
            } else if h.ends_with('*') {
                2
            } else {
                0
            };
            hosts.push((class, usize::MAX - h.len(), h.clone(), i));
        }
    }
    hosts.sort();
    let mut earlier: Vec<String> = Vec::new();
    for (_, _, h, i) in &hosts {
        let mut vh = vhs[*i].clone();
        let vp = format!("{path}.virtual_hosts[{i}]");
        vh.name.clear();
        vh.hosts.clear();
        let re = host_regex(h);
        let mut cond = vec![rc::HeaderMatcherConfig {
            name: "service".into(),
            safe_regex_match: Some(re.clone()),
            ..Default::default()
        }];
        cond.extend(none_of("service", &earlier));
        if let Some(m) = vh.routes.take() {
            tree(m, &join(&vp, "routes"), &cond, 0, &mut out)?;
        }
        rest(&vh, &vp)?;
        earlier.push(re);
    }
    if let Some(m) = c.routes.take() {
        tree(
            m,
            &join(path, "routes"),
            &none_of("service", &earlier),
            0,
            &mut out,
        )?;
    }
    rest(&c, path)?;
    Ok(out)
}

/// A virtual host's host pattern as a full-match regex: `*` anything,
/// `*suffix` and `prefix*` a non-empty rest (as HTTP domains), else exact.
fn host_regex(h: &str) -> String {
    if h == "*" {
        ".*".into()
    } else if let Some(s) = h.strip_prefix('*') {
        format!(".+{}", regex::escape(s))
    } else if let Some(p) = h.strip_suffix('*') {
        format!("{}.+", regex::escape(p))
    } else {
        regex::escape(h)
    }
}

/// "matches none of these regexes" on `name`, as at most one condition.
fn none_of(name: &str, res: &[String]) -> Cond {
    if res.is_empty() {
        return vec![];
    }
    vec![rc::HeaderMatcherConfig {
        name: name.into(),
        safe_regex_match: Some(format!("(?:{})", res.join("|"))),
        invert_match: true,
        ..Default::default()
    }]
}

/// Flattens matcher `m` at `path`, under conditions `under`, into `out`.
fn tree(
    mut m: xm::Matcher,
    path: &str,
    under: &Cond,
    depth: usize,
    out: &mut Vec<rc::RouteEntryConfig>,
) -> R<()> {
    if depth > MAX_DEPTH {
        return err(path, format!("matchers nested deeper than {MAX_DEPTH}"));
    }
    use xm::matcher::MatcherType;
    match m.matcher_type.take() {
        Some(MatcherType::MatcherList(mut l)) => {
            let lp = join(path, "matcher_list");
            for (i, mut f) in std::mem::take(&mut l.matchers).into_iter().enumerate() {
                let fp = format!("{lp}.matchers[{i}]");
                let Some(p) = f.predicate.take() else {
                    return err(join(&fp, "predicate"), "required");
                };
                let Some(on) = f.on_match.take() else {
                    return err(join(&fp, "on_match"), "required");
                };
                rest(&f, &fp)?;
                for conj in predicate(p, &join(&fp, "predicate"))? {
                    let mut c = under.clone();
                    c.extend(conj);
                    on_match(on.clone(), &join(&fp, "on_match"), &c, depth, out)?;
                }
            }
            rest(&l, &lp)?;
        }
        Some(MatcherType::MatcherTree(mut t)) => {
            let tp = join(path, "matcher_tree");
            let Some(input) = t.input.take() else {
                return err(join(&tp, "input"), "required");
            };
            let Input::Header(name) = input_of(input, &join(&tp, "input"))? else {
                return err(
                    join(&tp, "input"),
                    "RequestMatchInput needs a custom_match RequestMatcher, not a tree",
                );
            };
            use xm::matcher::matcher_tree::TreeType;
            let (kind, mut map) = match t.tree_type.take() {
                Some(TreeType::ExactMatchMap(m)) => ("exact_match_map", m),
                Some(TreeType::PrefixMatchMap(m)) => ("prefix_match_map", m),
                Some(TreeType::CustomMatch(_)) => {
                    return err(
                        join(&tp, "custom_match"),
                        "custom tree matchers not supported",
                    );
                }
                None => return err(join(&tp, "tree_type"), "required"),
            };
            let mut entries: Vec<_> = std::mem::take(&mut map.map).into_iter().collect();
            // Exact keys are disjoint (sorted for a stable order); the
            // longest prefix wins, as in Envoy's prefix map.
            entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
            for (key, on) in entries {
                let mut h = rc::HeaderMatcherConfig {
                    name: name.clone(),
                    ..Default::default()
                };
                if kind == "exact_match_map" {
                    h.exact_match = Some(key.clone());
                } else {
                    h.prefix_match = Some(key.clone());
                }
                let mut c = under.clone();
                c.push(h);
                on_match(on, &format!("{tp}.{kind}.map[{key}]"), &c, depth, out)?;
            }
            rest(&t, &tp)?;
        }
        None => {}
    }
    if let Some(on) = m.on_no_match.take() {
        on_match(*on, &join(path, "on_no_match"), under, depth, out)?;
    }
    rest(&m, path)
}

fn on_match(
    mut on: xm::matcher::OnMatch,
    path: &str,
    cond: &Cond,
    depth: usize,
    out: &mut Vec<rc::RouteEntryConfig>,
) -> R<()> {
    if on.keep_matching {
        return err(
            join(path, "keep_matching"),
            "a route is one action; keep_matching not supported",
        );
    }
    use xm::matcher::on_match::OnMatch;
    match on.on_match.take() {
        Some(OnMatch::Matcher(m)) => tree(*m, &join(path, "matcher"), cond, depth + 1, out),
        Some(OnMatch::Action(a)) => {
            if out.len() >= MAX_ROUTES {
                return err(
                    path,
                    format!("the tree expands to more than {MAX_ROUTES} routes"),
                );
            }
            out.push(route(a, &join(path, "action"), cond)?);
            Ok(())
        }
        None => err(path, "matcher or action required"),
    }
}

fn route(mut a: xcore::TypedExtensionConfig, path: &str, cond: &Cond) -> R<rc::RouteEntryConfig> {
    a.name.clear();
    let tp = join(path, "typed_config");
    let Some(any) = a.typed_config.take() else {
        return err(tp, "required");
    };
    rest(&a, path)?;
    if any.type_url != ACTION {
        return err(
            tp,
            format!("action '{}' not supported (want '{ACTION}')", any.type_url),
        );
    }
    let mut r: action::RouteAction =
        decode(&any, ACTION).map_err(|e| (tp.clone(), e.to_string()))?;
    let name = std::mem::take(&mut r.name);
    // The generic action's cluster and timeout are the HTTP action's:
    // translated by the same code.
    let action = crate::translate::route_action(
        rds::RouteAction {
            cluster_specifier: match r.cluster_specifier.take() {
                Some(action::route_action::ClusterSpecifier::Cluster(c)) => {
                    Some(rds::route_action::ClusterSpecifier::Cluster(c))
                }
                Some(action::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    Some(rds::route_action::ClusterSpecifier::WeightedClusters(w))
                }
                None => None,
            },
            timeout: r.timeout.take(),
            ..Default::default()
        },
        &tp,
    )?;
    rest(&r, &tp)?;
    Ok(rc::RouteEntryConfig {
        name: (!name.is_empty()).then_some(name),
        match_: rc::RouteMatchConfig {
            prefix: Some("/".into()),
            headers: cond.clone(),
            ..Default::default()
        },
        route: Some(action),
        ..Default::default()
    })
}

enum Input {
    /// The stream-head header the input reads.
    Header(String),
    /// The whole request, for a `RequestMatcher`.
    Request,
}

fn input_of(mut i: xcore::TypedExtensionConfig, path: &str) -> R<Input> {
    i.name.clear();
    let tp = join(path, "typed_config");
    let Some(any) = i.typed_config.take() else {
        return err(tp, "required");
    };
    rest(&i, path)?;
    let kind = any.type_url.strip_prefix(INPUT).unwrap_or_default();
    let dec = |e: crate::translate::DecodeError| (tp.clone(), e.to_string());
    Ok(match kind {
        // Envoy's Dubbo codec reports the service as the host and path.
        "ServiceMatchInput" => {
            let _: gm::ServiceMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            Input::Header("service".into())
        }
        "HostMatchInput" => {
            let _: gm::HostMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            Input::Header("service".into())
        }
        "PathMatchInput" => {
            let _: gm::PathMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            Input::Header("service".into())
        }
        "MethodMatchInput" => {
            let _: gm::MethodMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            Input::Header("method".into())
        }
        "PropertyMatchInput" => {
            let p: gm::PropertyMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            if p.property_name.is_empty() {
                return err(join(&tp, "property_name"), "required");
            }
            Input::Header(p.property_name)
        }
        "RequestMatchInput" => {
            let _: gm::RequestMatchInput = decode(&any, &any.type_url).map_err(dec)?;
            Input::Request
        }
        _ => {
            return err(
                tp,
                format!(
                    "matcher input '{}' not supported (the generic proxy's service, host, path, method, property and request inputs)",
                    any.type_url
                ),
            );
        }
    })
}

/// A predicate in disjunctive normal form: any of the conjunctions.
fn predicate(mut p: xm::matcher::matcher_list::Predicate, path: &str) -> R<Vec<Cond>> {
    use xm::matcher::matcher_list::predicate::MatchType;
    let out = match p.match_type.take() {
        Some(MatchType::SinglePredicate(s)) => {
            vec![single(s, &join(path, "single_predicate"))?]
        }
        Some(MatchType::OrMatcher(l)) => {
            let lp = join(path, "or_matcher");
            let mut out = Vec::new();
            for (i, q) in l.predicate.into_iter().enumerate() {
                out.extend(predicate(q, &format!("{lp}.predicate[{i}]"))?);
                bound(out.len(), &lp)?;
            }
            out
        }
        Some(MatchType::AndMatcher(l)) => {
            let lp = join(path, "and_matcher");
            let mut out: Vec<Cond> = vec![vec![]];
            for (i, q) in l.predicate.into_iter().enumerate() {
                let alts = predicate(q, &format!("{lp}.predicate[{i}]"))?;
                bound(out.len().saturating_mul(alts.len()), &lp)?;
                out = out
                    .iter()
                    .flat_map(|c| {
                        alts.iter().map(move |a| {
                            let mut c = c.clone();
                            c.extend(a.iter().cloned());
                            c
                        })
                    })
                    .collect();
            }
            out
        }
        Some(MatchType::NotMatcher(_)) => {
            return err(join(path, "not_matcher"), "not_matcher not supported");
        }
        None => return err(path, "match_type required"),
    };
    rest(&p, path)?;
    Ok(out)
}

fn bound(n: usize, path: &str) -> R<()> {
    if n > MAX_ROUTES {
        return err(
            path,
            format!("the predicate expands to more than {MAX_ROUTES} alternatives"),
        );
    }
    Ok(())
}

fn single(mut s: xm::matcher::matcher_list::predicate::SinglePredicate, path: &str) -> R<Cond> {
    let Some(input) = s.input.take() else {
        return err(join(path, "input"), "required");
    };
    let input = input_of(input, &join(path, "input"))?;
    use xm::matcher::matcher_list::predicate::single_predicate::Matcher;
    let out = match (input, s.matcher.take()) {
        (Input::Header(name), Some(Matcher::ValueMatch(sm))) => {
            let vp = join(path, "value_match");
            vec![crate::dubbo_proxy::string_matcher(
                &name,
                string_matcher(sm, &vp)?,
                &vp,
            )?]
        }
        (Input::Request, Some(Matcher::CustomMatch(c))) => {
            request_matcher(c, &join(path, "custom_match"))?
        }
        (Input::Header(_), Some(Matcher::CustomMatch(_))) => {
            return err(
                join(path, "custom_match"),
                "custom matchers only as a RequestMatcher on RequestMatchInput",
            );
        }
        (Input::Request, _) => {
            return err(
                join(path, "custom_match"),
                "RequestMatchInput needs a custom_match RequestMatcher",
            );
        }
        (_, None) => return err(join(path, "value_match"), "required"),
    };
    rest(&s, path)?;
    Ok(out)
}

fn request_matcher(mut c: xcore::TypedExtensionConfig, path: &str) -> R<Cond> {
    const WANT: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.RequestMatcher";
    c.name.clear();
    let tp = join(path, "typed_config");
    let Some(any) = c.typed_config.take() else {
        return err(tp, "required");
    };
    rest(&c, path)?;
    let mut m: gm::RequestMatcher = decode(&any, WANT).map_err(|e| (tp.clone(), e.to_string()))?;
    let mut out = Vec::new();
    for (field, header) in [
        ("host", "service"),
        ("path", "service"),
        ("method", "method"),
    ] {
        let sm = match field {
            "host" => m.host.take(),
            "path" => m.path.take(),
            _ => m.method.take(),
        };
        if let Some(sm) = sm {
            out.push(crate::dubbo_proxy::string_matcher(
                header,
                sm,
                &join(&tp, field),
            )?);
        }
    }
    for (i, mut e) in std::mem::take(&mut m.properties).into_iter().enumerate() {
        let ep = format!("{tp}.properties[{i}]");
        let name = std::mem::take(&mut e.name);
        if name.is_empty() {
            return err(join(&ep, "name"), "required");
        }
        let Some(sm) = e.string_match.take() else {
            return err(join(&ep, "string_match"), "required");
        };
        out.push(crate::dubbo_proxy::string_matcher(
            &name,
            sm,
            &join(&ep, "string_match"),
        )?);
        rest(&e, &ep)?;
    }
    rest(&m, &tp)?;
    Ok(out)
}

/// xDS's `StringMatcher` as Envoy's (same patterns; custom refused).
fn string_matcher(mut sm: xm::StringMatcher, path: &str) -> R<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern as E;
    use xm::string_matcher::MatchPattern as X;
    let pattern = match sm.match_pattern.take() {
        Some(X::Exact(s)) => E::Exact(s),
        Some(X::Prefix(s)) => E::Prefix(s),
        Some(X::Suffix(s)) => E::Suffix(s),
        Some(X::Contains(s)) => E::Contains(s),
        Some(X::SafeRegex(mut r)) => {
            // RE2 is the only engine (and the default).
            r.engine_type = None;
            let regex = std::mem::take(&mut r.regex);
            rest(&r, &join(path, "safe_regex"))?;
            E::SafeRegex(matcher::RegexMatcher {
                regex,
                ..Default::default()
            })
        }
        Some(X::Custom(_)) => {
            return err(join(path, "custom"), "custom string matchers not supported");
        }
        None => return err(path, "match pattern required"),
    };
    let ignore_case = std::mem::take(&mut sm.ignore_case);
    rest(&sm, path)?;
    Ok(matcher::StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use xm::matcher::matcher_list::{FieldMatcher, Predicate, predicate};

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn tec(url: &str, value: Vec<u8>) -> core3::TypedExtensionConfig {
        core3::TypedExtensionConfig {
            name: "x".into(),
            typed_config: Some(protobuf::Any {
                type_url: url.into(),
                value,
            }),
        }
    }

    fn xtec(url: &str, value: Vec<u8>) -> xcore::TypedExtensionConfig {
        xcore::TypedExtensionConfig {
            name: "x".into(),
            typed_config: Some(protobuf::Any {
                type_url: url.into(),
                value,
            }),
        }
    }

    fn to(cluster: &str) -> xm::matcher::OnMatch {
        xm::matcher::OnMatch {
            keep_matching: false,
            on_match: Some(xm::matcher::on_match::OnMatch::Action(
                xcore::TypedExtensionConfig {
                    name: "route".into(),
                    typed_config: Some(any(
                        ACTION,
                        &action::RouteAction {
                            name: format!("to-{cluster}"),
                            cluster_specifier: Some(
                                action::route_action::ClusterSpecifier::Cluster(cluster.into()),
                            ),
                            ..Default::default()
                        },
                    )),
                },
            )),
        }
    }

    fn eq(input: &str, value: &str) -> Predicate {
        Predicate {
            match_type: Some(predicate::MatchType::SinglePredicate(
                predicate::SinglePredicate {
                    input: Some(xtec(&format!("{INPUT}{input}"), vec![])),
                    matcher: Some(predicate::single_predicate::Matcher::ValueMatch(
                        xm::StringMatcher {
                            ignore_case: false,
                            match_pattern: Some(xm::string_matcher::MatchPattern::Exact(
                                value.into(),
                            )),
                        },
                    )),
                },
            )),
        }
    }

    fn list(entries: Vec<(Predicate, xm::matcher::OnMatch)>, default: Option<&str>) -> xm::Matcher {
        xm::Matcher {
            matcher_type: Some(xm::matcher::MatcherType::MatcherList(
                xm::matcher::MatcherList {
                    matchers: entries
                        .into_iter()
                        .map(|(p, on)| FieldMatcher {
                            predicate: Some(p),
                            on_match: Some(on),
                        })
                        .collect(),
                },
            )),
            on_no_match: default.map(|c| Box::new(to(c))),
        }
    }

    fn generic(routes: gp::RouteConfiguration) -> gp::GenericProxy {
        gp::GenericProxy {
            stat_prefix: "g".into(),
            codec_config: Some(tec(DUBBO_CODEC, vec![])),
            filters: vec![tec(ROUTER, vec![])],
            route_specifier: Some(gp::generic_proxy::RouteSpecifier::RouteConfig(routes)),
            ..Default::default()
        }
    }

    /// A header condition's name and exact or prefix value.
    type Header = (String, Option<String>);

    #[test]
    fn matcher_list_flattens_in_order_with_or_and() {
        let or = Predicate {
            match_type: Some(predicate::MatchType::OrMatcher(predicate::PredicateList {
                predicate: vec![eq("MethodMatchInput", "a"), eq("MethodMatchInput", "b")],
            })),
        };
        let and = Predicate {
            match_type: Some(predicate::MatchType::AndMatcher(predicate::PredicateList {
                predicate: vec![eq("ServiceMatchInput", "S"), or],
            })),
        };
        let c = proxy(
            generic(gp::RouteConfiguration {
                name: "r".into(),
                routes: Some(list(
                    vec![(and, to("x")), (eq("PropertyMatchInput", "v"), to("y"))],
                    Some("z"),
                )),
                virtual_hosts: vec![],
            }),
            "p",
        );
        // PropertyMatchInput without a property name is refused by name.
        let e = c.unwrap_err();
        assert_eq!(
            e.0,
            "p.route_config.routes.matcher_list.matchers[1].predicate.single_predicate.input.typed_config.property_name"
        );

        let prop = Predicate {
            match_type: Some(predicate::MatchType::SinglePredicate(
                predicate::SinglePredicate {
                    input: Some(xtec(
                        &format!("{INPUT}PropertyMatchInput"),
                        gm::PropertyMatchInput {
                            property_name: "version".into(),
                        }
                        .encode_to_vec(),
                    )),
                    matcher: Some(predicate::single_predicate::Matcher::ValueMatch(
                        xm::StringMatcher {
                            ignore_case: false,
                            match_pattern: Some(xm::string_matcher::MatchPattern::Prefix(
                                "2".into(),
                            )),
                        },
                    )),
                },
            )),
        };
        let or = Predicate {
            match_type: Some(predicate::MatchType::OrMatcher(predicate::PredicateList {
                predicate: vec![eq("MethodMatchInput", "a"), eq("MethodMatchInput", "b")],
            })),
        };
        let and = Predicate {
            match_type: Some(predicate::MatchType::AndMatcher(predicate::PredicateList {
                predicate: vec![eq("ServiceMatchInput", "S"), or],
            })),
        };
        let c = proxy(
            generic(gp::RouteConfiguration {
                name: "r".into(),
                routes: Some(list(vec![(and, to("x")), (prop, to("y"))], Some("z"))),
                virtual_hosts: vec![],
            }),
            "p",
        )
        .unwrap();
        assert_eq!(c.codec, "dubbo");
        let r = &c.route_config.virtual_hosts[0].routes;
        let got: Vec<(Vec<Header>, String)> = r
            .iter()
            .map(|r| {
                (
                    r.match_
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.clone(),
                                h.exact_match.clone().or(h.prefix_match.clone()),
                            )
                        })
                        .collect(),
                    r.route.as_ref().unwrap().cluster.clone().unwrap(),
                )
            })
            .collect();
        let s = |n: &str, v: &str| (n.to_string(), Some(v.to_string()));
        assert_eq!(
            got,
            vec![
                (vec![s("service", "S"), s("method", "a")], "x".into()),
                (vec![s("service", "S"), s("method", "b")], "x".into()),
                (vec![s("version", "2")], "y".into()),
                (vec![], "z".into()),
            ]
        );
        assert_eq!(r[0].name.as_deref(), Some("to-x"));
    }

    #[test]
    fn virtual_hosts_never_fall_through() {
        let vh = |hosts: &[&str], c: &str| gp::VirtualHost {
            name: c.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            routes: Some(list(vec![(eq("MethodMatchInput", "m"), to(c))], None)),
        };
        let c = proxy(
            generic(gp::RouteConfiguration {
                name: "r".into(),
                routes: Some(list(vec![], Some("top"))),
                virtual_hosts: vec![vh(&["com.*"], "prefix"), vh(&["com.a.Svc"], "exact")],
            }),
            "p",
        )
        .unwrap();
        let r = &c.route_config.virtual_hosts[0].routes;
        assert_eq!(r.len(), 3);
        // The exact host first; the wildcard one excludes it.
        assert_eq!(
            r[0].route.as_ref().unwrap().cluster.as_deref(),
            Some("exact")
        );
        assert_eq!(
            r[0].match_.headers[0].safe_regex_match.as_deref(),
            Some("com\\.a\\.Svc")
        );
        assert_eq!(
            r[1].match_.headers[0].safe_regex_match.as_deref(),
            Some("com\\..+")
        );
        assert!(r[1].match_.headers[1].invert_match);
        assert_eq!(
            r[1].match_.headers[1].safe_regex_match.as_deref(),
            Some("(?:com\\.a\\.Svc)")
        );
        // Top-level routes: no host of any virtual host.
        assert_eq!(r[2].route.as_ref().unwrap().cluster.as_deref(), Some("top"));
        assert_eq!(
            r[2].match_.headers[0].safe_regex_match.as_deref(),
            Some("(?:com\\.a\\.Svc|com\\..+)")
        );
    }

    #[test]
    fn bolt_codec_and_refusals_are_named() {
        let routes = gp::RouteConfiguration {
            name: "r".into(),
            routes: Some(list(vec![], Some("a"))),
            virtual_hosts: vec![],
        };
        let mut g = generic(routes.clone());
        g.codec_config = Some(tec(BOLT_CODEC, vec![]));
        assert_eq!(proxy(g, "p").unwrap().codec, "bolt");

        let mut g = generic(routes.clone());
        g.codec_config = Some(tec("type.googleapis.com/acme.Thrift", vec![]));
        assert_eq!(proxy(g, "p").unwrap_err().0, "p.codec_config.typed_config");

        let mut g = generic(routes.clone());
        g.filters = vec![tec(
            ROUTER,
            router::Router {
                bind_upstream_connection: true,
            }
            .encode_to_vec(),
        )];
        assert_eq!(
            proxy(g, "p").unwrap_err().0,
            "p.filters[0].typed_config.bind_upstream_connection"
        );

        let mut g = generic(routes.clone());
        g.filters
            .insert(0, tec("type.googleapis.com/acme.Filter", vec![]));
        assert_eq!(proxy(g, "p").unwrap_err().0, "p.filters[0].typed_config");

        let not = Predicate {
            match_type: Some(predicate::MatchType::NotMatcher(Box::new(eq(
                "MethodMatchInput",
                "m",
            )))),
        };
        let g = generic(gp::RouteConfiguration {
            name: "r".into(),
            routes: Some(list(vec![(not, to("a"))], None)),
            virtual_hosts: vec![],
        });
        assert_eq!(
            proxy(g, "p").unwrap_err().0,
            "p.route_config.routes.matcher_list.matchers[0].predicate.not_matcher"
        );

        let mut on = to("a");
        on.keep_matching = true;
        let g = generic(gp::RouteConfiguration {
            name: "r".into(),
            routes: Some(list(vec![(eq("MethodMatchInput", "m"), on)], None)),
            virtual_hosts: vec![],
        });
        assert_eq!(
            proxy(g, "p").unwrap_err().0,
            "p.route_config.routes.matcher_list.matchers[0].on_match.keep_matching"
        );

        let mut a = to("a");
        if let Some(xm::matcher::on_match::OnMatch::Action(t)) = a.on_match.as_mut() {
            t.typed_config = Some(any(
                ACTION,
                &action::RouteAction {
                    cluster_specifier: Some(action::route_action::ClusterSpecifier::Cluster(
                        "a".into(),
                    )),
                    metadata: Some(Default::default()),
                    ..Default::default()
                },
            ));
        }
        let g = generic(gp::RouteConfiguration {
            name: "r".into(),
            routes: Some(list(vec![], None)).map(|mut m| {
                m.on_no_match = Some(Box::new(a));
                m
            }),
            virtual_hosts: vec![],
        });
        assert_eq!(
            proxy(g, "p").unwrap_err().0,
            "p.route_config.routes.on_no_match.action.typed_config.metadata"
        );
    }
}
