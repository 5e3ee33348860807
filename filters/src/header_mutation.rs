//! `header_mutation`: removes and adds request and response headers
//! (Envoy's `envoy.filters.http.header_mutation`), from the filter's config
//! and from a virtual host's or route's `HeaderMutationPerRoute`. Values
//! are literal (Envoy's `%...%` formatters are refused by name).

use http::{HeaderMap, HeaderName, HeaderValue};
use meshgate_core::BuildError;
use meshgate_core::config::header_mutation::{
    HeaderMutationConfig, HeaderMutationPerRoute, MutationConfig, MutationsConfig,
};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, Request, Response, StreamFilter, StreamFilterFactory, StreamInfo,
};
use std::sync::Arc;

/// Factory of `header_mutation`.
pub struct HeaderMutationFactory;

impl StreamFilterFactory for HeaderMutationFactory {
    fn name(&self) -> &'static str {
        "header_mutation"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: HeaderMutationConfig = parse_typed(config)?;
        Ok(Arc::new(HeaderMutation {
            own: Mutations::build(&c.mutations, "mutations")?,
            route_wins: c.most_specific_header_mutations_wins,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    AppendOrAdd,
    AddIfAbsent,
    OverwriteOrAdd,
    OverwriteIfExists,
}

#[derive(Debug)]
enum Op {
    Remove(HeaderName),
    Add(HeaderName, HeaderValue, Action),
}

/// Compiled request and response mutations.
#[derive(Debug, Default)]
struct Mutations {
    request: Vec<Op>,
    response: Vec<Op>,
}

fn compile(list: &[MutationConfig], path: &str) -> Result<Vec<Op>, BuildError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = |n: &str, field: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| BuildError::new(format!("{p}.{field}"), "not a header name"))
        };
        out.push(match (&m.remove, &m.append) {
            (Some(r), None) => Op::Remove(name(r, "remove")?),
            (None, Some(a)) => {
                let n = name(&a.header.key, "append.header.key")?;
                let vp = format!("{p}.append.header.value");
                if a.header.value.contains('%') {
                    return Err(BuildError::new(
                        vp,
                        "substitution formatters (%...%) are not supported",
                    ));
                }
                let v = HeaderValue::from_str(&a.header.value)
                    .map_err(|_| BuildError::new(vp, "not a valid header value"))?;
                let action = match a.append_action.as_deref() {
                    None | Some("APPEND_IF_EXISTS_OR_ADD") => Action::AppendOrAdd,
                    Some("ADD_IF_ABSENT") => Action::AddIfAbsent,
                    Some("OVERWRITE_IF_EXISTS_OR_ADD") => Action::OverwriteOrAdd,
                    Some("OVERWRITE_IF_EXISTS") => Action::OverwriteIfExists,
                    Some(_) => {
                        return Err(BuildError::new(
                            format!("{p}.append.append_action"),
                            "APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD or OVERWRITE_IF_EXISTS",
                        ));
                    }
                };
                Op::Add(n, v, action)
            }
            _ => return Err(BuildError::new(p, "set exactly one of remove, append")),
        });
    }
    Ok(out)
}

impl Mutations {
    fn build(c: &MutationsConfig, path: &str) -> Result<Self, BuildError> {
        Ok(Self {
            request: compile(&c.request_mutations, &format!("{path}.request_mutations"))?,
            response: compile(&c.response_mutations, &format!("{path}.response_mutations"))?,
        })
    }
}

fn apply(ops: &[Op], h: &mut HeaderMap) {
    for op in ops {
        match op {
            Op::Remove(n) => {
                h.remove(n);
            }
            Op::Add(n, v, a) => match a {
                Action::AppendOrAdd => {
                    h.append(n.clone(), v.clone());
                }
                Action::AddIfAbsent => {
                    if !h.contains_key(n) {
                        h.insert(n.clone(), v.clone());
                    }
                }
                Action::OverwriteOrAdd => {
                    h.insert(n.clone(), v.clone());
                }
                Action::OverwriteIfExists => {
                    if h.contains_key(n) {
                        h.insert(n.clone(), v.clone());
                    }
                }
            },
        }
    }
}

struct HeaderMutation {
    own: Mutations,
    route_wins: bool,
}

/// The route's mutations, kept for the response phase.
#[derive(Clone)]
struct RouteMutations(ParsedConfig);

impl HeaderMutation {
    /// The filter's and the route's mutations in the order they run (the
    /// later one wins).
    fn ordered<'a>(&'a self, route: Option<&'a Mutations>) -> [Option<&'a Mutations>; 2] {
        if self.route_wins {
            [Some(&self.own), route]
        } else {
            [route, Some(&self.own)]
        }
    }
}

impl StreamFilter for HeaderMutation {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let r = route.config.and_then(|c| c.downcast_ref::<Mutations>());
        for m in self.ordered(r).into_iter().flatten() {
            apply(&m.request, req.headers_mut());
        }
        if let Some(c) = route.config
            && r.is_some_and(|m| !m.response.is_empty())
        {
            info.filter_state.insert(RouteMutations(c.clone()));
        }
        // As in Envoy, the route matched before the mutation stays (no
        // route recomputation): per-route configs of later filters agree.
        let status = FilterStatus::Continue;
        Box::pin(std::future::ready(status))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let stashed = info.filter_state.remove::<RouteMutations>();
        let r = stashed
            .as_ref()
            .and_then(|s| s.0.downcast_ref::<Mutations>());
        for m in self.ordered(r).into_iter().flatten() {
            apply(&m.response, resp.headers_mut());
        }
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: HeaderMutationPerRoute = parse_typed(config)?;
        Ok(Arc::new(Mutations::build(&c.mutations, "mutations")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(v: serde_json::Value) -> Result<Vec<Op>, BuildError> {
        let c: MutationsConfig = parse_typed(&serde_json::json!({ "request_mutations": v }))?;
        compile(&c.request_mutations, "m")
    }

    #[test]
    fn append_actions() {
        let o = ops(serde_json::json!([
            {"append": {"header": {"key": "a", "value": "2"}}},
            {"append": {"header": {"key": "b", "value": "2"}, "append_action": "ADD_IF_ABSENT"}},
            {"append": {"header": {"key": "c", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}},
            {"append": {"header": {"key": "d", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS"}},
            {"append": {"header": {"key": "e", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS"}},
            {"remove": "f"},
        ]))
        .unwrap();
        let mut h = HeaderMap::new();
        for k in ["a", "b", "c", "d", "f"] {
            h.insert(k, HeaderValue::from_static("1"));
        }
        apply(&o, &mut h);
        let all = |k: &str| {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("a"), ["1", "2"]);
        assert_eq!(all("b"), ["1"]);
        assert_eq!(all("c"), ["2"]);
        assert_eq!(all("d"), ["2"]);
        assert!(all("e").is_empty());
        assert!(all("f").is_empty());
    }

    #[test]
    fn bad_mutations_name_the_field() {
        let e = ops(serde_json::json!([{}])).unwrap_err();
        assert_eq!(e.path, "m[0]");
        let e = ops(serde_json::json!([{"append": {"header": {"key": "a", "value": "%REQ(x)%"}}}]))
            .unwrap_err();
        assert_eq!(e.path, "m[0].append.header.value");
        let e = ops(serde_json::json!([{"append": {"header": {"key": "a b"}}}])).unwrap_err();
        assert_eq!(e.path, "m[0].append.header.key");
        let e = ops(serde_json::json!([{"remove_on_match": {}}])).unwrap_err();
        assert!(e.message.contains("remove_on_match"), "{e:?}");
    }
}
