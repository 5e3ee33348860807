//! Envoy's `rate_limits` actions (`config.route.v3.RateLimit`), compiled:
//! each list of actions builds one descriptor (`{key, value}` entries) of
//! a request, for rate limit filters. They come from a route, a virtual
//! host (Envoy's `RouteAction.rate_limits` / `VirtualHost.rate_limits`)
//! or a filter's own config (`local_ratelimit`'s `rate_limits`).

use super::HeaderMatcher;
use crate::config::local_ratelimit::{RateLimitActionConfig, RateLimitConfig};
use crate::error::BuildError;
use crate::stream::{Request, StreamInfo};
use http::HeaderName;

/// One compiled `RateLimit.Action`.
#[derive(Debug)]
enum Action {
    RequestHeaders {
        name: HeaderName,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect: bool,
        headers: Vec<HeaderMatcher>,
    },
    QueryParameters {
        name: String,
        key: String,
        skip_if_absent: bool,
    },
}

/// The compiled `rate_limits`: each builds at most one descriptor.
#[derive(Debug)]
pub struct RateLimitActions(Vec<Vec<Action>>);

/// A request's descriptor: `(key, value)` entries.
pub type Descriptor = Vec<(String, String)>;

impl RateLimitActions {
    /// Compiles `rate_limits`; errors name the field under `path` (empty:
    /// the list itself is the root).
    pub fn build(path: &str, list: &[RateLimitConfig]) -> Result<Self, BuildError> {
        let root = |f: String| {
            if path.is_empty() {
                f
            } else {
                format!("{path}.{f}")
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, rl) in list.iter().enumerate() {
            let mut actions = Vec::with_capacity(rl.actions.len());
            if rl.actions.is_empty() {
                return Err(BuildError::new(
                    root(format!("rate_limits[{i}].actions")),
                    "at least one action",
                ));
            }
            for (j, a) in rl.actions.iter().enumerate() {
                actions.push(action(&root(format!("rate_limits[{i}].actions[{j}]")), a)?);
            }
            out.push(actions);
        }
        Ok(Self(out))
    }

    /// `None` for an empty list (a route without `rate_limits` costs one
    /// pointer).
    pub fn build_boxed(
        path: &str,
        list: &[RateLimitConfig],
    ) -> Result<Option<Box<Self>>, BuildError> {
        if list.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(Self::build(path, list)?)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's descriptors, one per `RateLimit` whose actions all
    /// produced an entry (Envoy's rule: an action with nothing to say
    /// drops its descriptor, unless `skip_if_absent`).
    pub fn descriptors(&self, req: &Request, info: &StreamInfo) -> Vec<Descriptor> {
        self.descriptors_of(
            req.headers(),
            req.uri().query(),
            info.downstream_remote_address,
        )
    }

    /// `descriptors` from the request's headers, query and trusted client
    /// address.
    pub fn descriptors_of(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        remote: std::net::IpAddr,
    ) -> Vec<Descriptor> {
        let mut out = Vec::new();
        'rl: for actions in &self.0 {
            let mut d = Vec::with_capacity(actions.len());
            for a in actions {
                match a {
                    Action::RequestHeaders {
                        name,
                        key,
                        skip_if_absent,
                    } => match headers.get(name).map(|v| v.to_str()) {
                        Some(Ok(v)) => d.push((key.clone(), v.to_string())),
                        None if *skip_if_absent => {}
                        _ => continue 'rl,
                    },
                    Action::RemoteAddress => {
                        d.push(("remote_address".to_string(), remote.to_string()))
                    }
                    Action::GenericKey { key, value } => d.push((key.clone(), value.clone())),
                    Action::HeaderValueMatch {
                        key,
                        value,
                        expect,
                        headers: matchers,
                    } => {
                        let all = matchers.iter().all(|h| h.matches(headers));
                        if all != *expect {
                            continue 'rl;
                        }
                        d.push((key.clone(), value.clone()));
                    }
                    Action::QueryParameters {
                        name,
                        key,
                        skip_if_absent,
                    } => match query.and_then(|q| query_value(q, name)) {
                        Some(v) => d.push((key.clone(), v)),
                        None if *skip_if_absent => {}
                        None => continue 'rl,
                    },
                }
            }
            if !d.is_empty() {
                out.push(d);
            }
        }
        out
    }
}

fn action(path: &str, a: &RateLimitActionConfig) -> Result<Action, BuildError> {
    let set = [
        a.request_headers.is_some(),
        a.remote_address.is_some(),
        a.generic_key.is_some(),
        a.header_value_match.is_some(),
        a.query_parameters.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(BuildError::new(
            path,
            "set exactly one of request_headers, remote_address, generic_key, header_value_match, query_parameters",
        ));
    }
    if let Some(h) = &a.request_headers {
        let name = HeaderName::from_bytes(h.header_name.as_bytes()).map_err(|_| {
            BuildError::new(
                format!("{path}.request_headers.header_name"),
                "not a valid header name",
            )
        })?;
        if h.descriptor_key.is_empty() {
            return Err(BuildError::new(
                format!("{path}.request_headers.descriptor_key"),
                "must not be empty",
            ));
        }
        return Ok(Action::RequestHeaders {
            name,
            key: h.descriptor_key.clone(),
            skip_if_absent: h.skip_if_absent,
        });
    }
    if a.remote_address.is_some() {
        return Ok(Action::RemoteAddress);
    }
    if let Some(g) = &a.generic_key {
        return Ok(Action::GenericKey {
            key: if g.descriptor_key.is_empty() {
                "generic_key".into()
            } else {
                g.descriptor_key.clone()
            },
            value: g.descriptor_value.clone(),
        });
    }
    if let Some(m) = &a.header_value_match {
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            headers.push(HeaderMatcher::build(h).map_err(|(f, msg)| {
                let p = format!("{path}.header_value_match.headers[{i}]");
                BuildError::new(if f.is_empty() { p } else { format!("{p}.{f}") }, msg)
            })?);
        }
        return Ok(Action::HeaderValueMatch {
            key: if m.descriptor_key.is_empty() {
                "header_match".into()
            } else {
                m.descriptor_key.clone()
            },
            value: m.descriptor_value.clone(),
            expect: m.expect_match.unwrap_or(true),
            headers,
        });
    }
    if let Some(q) = &a.query_parameters {
        if q.query_parameter_name.is_empty() {
            return Err(BuildError::new(
                format!("{path}.query_parameters.query_parameter_name"),
                "must not be empty",
            ));
        }
        if q.descriptor_key.is_empty() {
            return Err(BuildError::new(
                format!("{path}.query_parameters.descriptor_key"),
                "must not be empty",
            ));
        }
        return Ok(Action::QueryParameters {
            name: q.query_parameter_name.clone(),
            key: q.descriptor_key.clone(),
            skip_if_absent: q.skip_if_absent,
        });
    }
    Err(BuildError::new(path, "empty action"))
}

/// The first value of query parameter `name` (names compared as sent,
/// the value percent-decoded and `+` read as a space, as a form is).
/// Invalid UTF-8 after decoding counts as absent.
fn query_value(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })?;
    let b = raw.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                // A stray `%` stays as it is.
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::local_ratelimit::QueryParametersAction;

    fn qp(name: &str, skip: bool) -> RateLimitActionConfig {
        RateLimitActionConfig {
            query_parameters: Some(QueryParametersAction {
                query_parameter_name: name.into(),
                descriptor_key: "k".into(),
                skip_if_absent: skip,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn query_parameters_build_a_decoded_entry_or_drop_the_descriptor() {
        let list = [
            RateLimitConfig {
                actions: vec![qp("user", false)],
            },
            RateLimitConfig {
                actions: vec![qp("absent", true), qp("user", false)],
            },
            RateLimitConfig {
                actions: vec![qp("absent", false)],
            },
        ];
        let a = RateLimitActions::build("", &list).unwrap();
        let h = http::HeaderMap::new();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let d = a.descriptors_of(&h, Some("x=1&user=a%20b+c%zz&user=second"), ip);
        let want = vec![("k".to_string(), "a b c%zz".to_string())];
        assert_eq!(d, vec![want.clone(), want]);
        assert!(a.descriptors_of(&h, None, ip).is_empty());
        assert_eq!(query_value("a=%41%", "a").as_deref(), Some("A%"));
        assert_eq!(query_value("a=%ff", "a"), None, "not UTF-8");
        assert_eq!(query_value("a", "a").as_deref(), Some(""));
        let e = RateLimitActions::build(
            "r",
            &[RateLimitConfig {
                actions: vec![qp("", false)],
            }],
        )
        .unwrap_err();
        assert_eq!(
            e.path,
            "r.rate_limits[0].actions[0].query_parameters.query_parameter_name"
        );
    }
}
