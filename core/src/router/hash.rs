//! Route hash policies (Envoy's `RouteAction.hash_policy`): what a request
//! is hashed on for the `ring_hash` and `maglev` load balancers, so that a
//! user, a session cookie or a client address sticks to one Endpoint.
//!
//! Policies are evaluated in order. A policy that finds nothing to hash
//! (the header or parameter is absent) adds nothing; the hashes of the
//! ones that do are combined (the running value rotated left by one bit,
//! then XORed with the new hash, so two equal policies do not cancel). A
//! `terminal` policy that yields a hash, with the hash so far, ends the
//! evaluation. No hash at all leaves the hashing balancers to pick at
//! random, as before.
//!
//! The `cookie` policy with a `ttl` makes a session: a request without the
//! cookie gets a generated value, is hashed on it, and the response sets
//! the cookie (`Max-Age` = ttl; ttl 0 makes a session cookie) so the
//! client's next requests carry it and stick.
//!
//! RPC streams (Dubbo, Bolt) expose their attachments as headers, so a
//! `header` policy hashes on an attachment.

use super::config::RegexRewriteConfig;
use crate::error::BuildError;
use crate::stream::{Request, Response, StreamInfo};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;
use xxhash_rust::xxh64::Xxh64;

/// One hash policy: exactly one of `header`, `cookie`,
/// `connection_properties`, `query_parameter`, `filter_state`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HashHeaderConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookieConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_properties: Option<HashConnectionPropertiesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<HashQueryParameterConfig>,
    /// Refused: meshgate keeps no filter state objects to hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<HashFilterStateConfig>,
    /// Stop at this policy when it (with those before) yields a hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

/// Hash on a header's value(s) (several values are sorted, then hashed
/// together). `:authority`, `:path` and `:method` name the request's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashHeaderConfig {
    pub header_name: String,
    /// Rewrites each value before hashing (e.g. keep one path segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewriteConfig>,
}

/// Hash on a cookie; with `ttl`, generate it when absent (see the module
/// docs).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookieConfig {
    pub name: String,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// `Path` of a generated cookie.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Extra attributes of a generated cookie (`name=value`, or `name`
    /// alone when the value is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<HashCookieAttributeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookieAttributeConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Hash on the client's address.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashConnectionPropertiesConfig {
    pub source_ip: bool,
}

/// Hash on the first value of a query parameter (raw, not decoded).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashQueryParameterConfig {
    pub name: String,
}

/// Envoy's filter state key; accepted by the parser only to be refused
/// with its name.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashFilterStateConfig {
    pub key: String,
}

/// Where a header policy reads.
#[derive(Debug)]
enum HeaderSource {
    Authority,
    Path,
    Method,
    Header(HeaderName),
}

#[derive(Debug)]
enum Method {
    Header {
        source: HeaderSource,
        rewrite: Option<(regex::Regex, Box<str>)>,
    },
    Cookie {
        name: Box<str>,
        /// The `Set-Cookie` attributes after `name=value` when the cookie
        /// is generated (`None`: never generated).
        generate: Option<Box<str>>,
    },
    SourceIp,
    QueryParameter(Box<str>),
}

#[derive(Debug)]
struct Policy {
    method: Method,
    terminal: bool,
}

/// The compiled hash policies of a route.
#[derive(Debug)]
pub struct HashPolicy {
    policies: Box<[Policy]>,
}

/// A request's hash, and the cookie to set on its response when a cookie
/// policy generated one.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    set_cookie: Option<HeaderValue>,
}

impl RequestHash {
    /// Sets the generated cookie, if any, on the response.
    pub fn set_cookie_on(self, resp: &mut Response) {
        if let Some(v) = self.set_cookie {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
}

fn combine(acc: Option<u64>, h: u64) -> u64 {
    match acc {
        Some(a) => a.rotate_left(1) ^ h,
        None => h,
    }
}

/// The client's address as the `proxy` filter trusts it
/// (`use_remote_address`, `xff_num_trusted_hops`).
fn client_ip(info: &StreamInfo) -> IpAddr {
    info.downstream_remote_address
}

/// The value of cookie `name` in the request's `Cookie` headers, without
/// surrounding quotes.
fn cookie_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

fn query_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hash_bytes(b: &[u8]) -> u64 {
    crate::lb::hash_key(b)
}

impl Method {
    /// This policy's hash of the request, and the cookie it generated.
    fn evaluate(&self, req: &Request, client: IpAddr) -> (Option<u64>, Option<HeaderValue>) {
        match self {
            Method::Header { source, rewrite } => {
                let one = |v: &[u8]| match rewrite {
                    None => hash_bytes(v),
                    Some((re, sub)) => {
                        let s = String::from_utf8_lossy(v);
                        hash_bytes(re.replace_all(&s, &**sub).as_bytes())
                    }
                };
                let h = match source {
                    HeaderSource::Authority => {
                        let host = super::request_host(req.uri(), req.headers());
                        (!host.is_empty()).then(|| one(host.as_bytes()))
                    }
                    HeaderSource::Path => Some(one(req.uri().path().as_bytes())),
                    HeaderSource::Method => Some(one(req.method().as_str().as_bytes())),
                    HeaderSource::Header(name) => {
                        let mut values = req.headers().get_all(name).iter();
                        match (values.next(), values.next()) {
                            (None, _) => None,
                            (Some(v), None) => Some(one(v.as_bytes())),
                            (Some(a), Some(b)) => {
                                // Several values: order-independent, as the
                                // same client may send them in any order.
                                let mut all: Vec<&[u8]> = vec![a.as_bytes(), b.as_bytes()];
                                all.extend(values.map(HeaderValue::as_bytes));
                                all.sort_unstable();
                                let mut x = Xxh64::new(0);
                                for v in all {
                                    x.write_u64(one(v));
                                }
                                Some(x.finish())
                            }
                        }
                    }
                };
                (h, None)
            }
            Method::Cookie { name, generate } => {
                if let Some(v) = cookie_value(req, name) {
                    return (Some(hash_bytes(v.as_bytes())), None);
                }
                let Some(attrs) = generate else {
                    return (None, None);
                };
                let value = format!("{:016x}", rand::random::<u64>());
                let set = HeaderValue::try_from(format!("{name}={value}{attrs}")).ok();
                (Some(hash_bytes(value.as_bytes())), set)
            }
            Method::SourceIp => {
                let h = match client {
                    IpAddr::V4(a) => hash_bytes(&a.octets()),
                    IpAddr::V6(a) => hash_bytes(&a.octets()),
                };
                (Some(h), None)
            }
            Method::QueryParameter(name) => (
                query_value(req, name).map(|v| hash_bytes(v.as_bytes())),
                None,
            ),
        }
    }
}

impl HashPolicy {
    /// The request's hash under these policies (Envoy's combination and
    /// `terminal` rules; see the module docs).
    pub fn evaluate(&self, req: &Request, info: &StreamInfo) -> RequestHash {
        self.evaluate_for(req, client_ip(info))
    }

    fn evaluate_for(&self, req: &Request, client: IpAddr) -> RequestHash {
        let mut out = RequestHash::default();
        for p in self.policies.iter() {
            let (h, cookie) = p.method.evaluate(req, client);
            if let Some(h) = h {
                out.hash = Some(combine(out.hash, h));
            }
            if cookie.is_some() && out.set_cookie.is_none() {
                out.set_cookie = cookie;
            }
            if p.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }

    /// Compiles a route's `hash_policy` list (`None` when empty, so a
    /// route without one costs nothing per request).
    pub fn build(path: &str, list: &[HashPolicyConfig]) -> Result<Option<Box<Self>>, BuildError> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut policies = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            policies.push(Policy {
                method: build_method(&p, c)?,
                terminal: c.terminal,
            });
        }
        Ok(Some(Box::new(Self {
            policies: policies.into(),
        })))
    }
}

fn build_method(p: &str, c: &HashPolicyConfig) -> Result<Method, BuildError> {
    let f = |field: &str| crate::error::join_path(p, field);
    let set = [
        c.header.is_some(),
        c.cookie.is_some(),
        c.connection_properties.is_some(),
        c.query_parameter.is_some(),
        c.filter_state.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(BuildError::new(
            p,
            "set exactly one of header, cookie, connection_properties, query_parameter, filter_state",
        ));
    }
    if c.filter_state.is_some() {
        return Err(BuildError::new(
            f("filter_state"),
            "not supported: meshgate keeps no filter state objects to hash",
        ));
    }
    if let Some(h) = &c.header {
        let hp = f("header.header_name");
        let source = match h.header_name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => HeaderSource::Authority,
            ":path" => HeaderSource::Path,
            ":method" => HeaderSource::Method,
            n if n.starts_with(':') => {
                return Err(BuildError::new(
                    hp,
                    format!(
                        "pseudo-header '{n}' is not supported (use :authority, :path or :method)"
                    ),
                ));
            }
            n => HeaderSource::Header(
                HeaderName::try_from(n)
                    .map_err(|_| BuildError::new(&hp, format!("invalid header name '{n}'")))?,
            ),
        };
        let rewrite = match &h.regex_rewrite {
            None => None,
            Some(r) => {
                let re = regex::Regex::new(&r.pattern).map_err(|e| {
                    BuildError::new(
                        f("header.regex_rewrite.pattern"),
                        format!("invalid regex: {e}"),
                    )
                })?;
                let sub = super::convert_substitution(&r.substitution, re.captures_len())
                    .map_err(|m| BuildError::new(f("header.regex_rewrite.substitution"), m))?;
                Some((re, sub.into()))
            }
        };
        return Ok(Method::Header { source, rewrite });
    }
    if let Some(k) = &c.cookie {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        };
        if !token(&k.name) {
            return Err(BuildError::new(
                f("cookie.name"),
                format!("invalid cookie name '{}'", k.name),
            ));
        }
        let generate = match k.ttl {
            None => None,
            Some(ttl) => {
                let mut attrs = String::new();
                if !ttl.is_zero() {
                    attrs.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
                }
                if !k.path.is_empty() {
                    attrs.push_str("; Path=");
                    attrs.push_str(&k.path);
                }
                for (j, a) in k.attributes.iter().enumerate() {
                    if !token(&a.name) {
                        return Err(BuildError::new(
                            format!("{}[{j}].name", f("cookie.attributes")),
                            format!("invalid attribute name '{}'", a.name),
                        ));
                    }
                    attrs.push_str("; ");
                    attrs.push_str(&a.name);
                    if !a.value.is_empty() {
                        attrs.push('=');
                        attrs.push_str(&a.value);
                    }
                }
                attrs.push_str("; HttpOnly");
                // The whole header must be valid; checked once here.
                HeaderValue::try_from(format!("{}=0{attrs}", k.name)).map_err(|_| {
                    BuildError::new(
                        f("cookie"),
                        "path or attributes make an invalid Set-Cookie value",
                    )
                })?;
                Some(attrs.into())
            }
        };
        return Ok(Method::Cookie {
            name: k.name.as_str().into(),
            generate,
        });
    }
    if let Some(cp) = &c.connection_properties {
        if !cp.source_ip {
            return Err(BuildError::new(
                f("connection_properties.source_ip"),
                "must be true (it is the only connection property)",
            ));
        }
        return Ok(Method::SourceIp);
    }
    if let Some(q) = &c.query_parameter {
        if q.name.is_empty() {
            return Err(BuildError::new(
                f("query_parameter.name"),
                "must not be empty",
            ));
        }
        return Ok(Method::QueryParameter(q.name.as_str().into()));
    }
    unreachable!("exactly one policy is set (checked above)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::empty_body;

    fn info() -> IpAddr {
        IpAddr::from([203, 0, 113, 7])
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(empty_body()).unwrap()
    }

    fn policy(yaml: &str) -> Result<Option<Box<HashPolicy>>, BuildError> {
        let list: Vec<HashPolicyConfig> = serde_yaml::from_str(yaml).unwrap();
        HashPolicy::build("route.hash_policy", &list)
    }

    #[test]
    fn header_policy_hashes_the_value_and_its_rewrite() {
        let p = policy("- header: {header_name: x-user}").unwrap().unwrap();
        let a = p
            .evaluate_for(&req("/", &[("x-user", "alice")]), info())
            .hash;
        let b = p.evaluate_for(&req("/", &[("x-user", "bob")]), info()).hash;
        assert!(a.is_some() && a != b);
        assert_eq!(
            a,
            p.evaluate_for(&req("/x", &[("x-user", "alice")]), info())
                .hash
        );
        assert_eq!(p.evaluate_for(&req("/", &[]), info()).hash, None);
        let r = policy(
            r"- header: {header_name: ':path', regex_rewrite: {pattern: '^/u/([^/]+)/.*$', substitution: '\1'}}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.evaluate_for(&req("/u/7/a", &[]), info()).hash,
            r.evaluate_for(&req("/u/7/b", &[]), info()).hash
        );
    }

    #[test]
    fn policies_combine_and_terminal_stops() {
        let both = policy("- header: {header_name: a}\n- header: {header_name: b}")
            .unwrap()
            .unwrap();
        let r = req("/", &[("a", "1"), ("b", "2")]);
        let ha = hash_bytes(b"1");
        let hb = hash_bytes(b"2");
        assert_eq!(
            both.evaluate_for(&r, info()).hash,
            Some(ha.rotate_left(1) ^ hb)
        );
        let term =
            policy("- header: {header_name: a}\n  terminal: true\n- header: {header_name: b}")
                .unwrap()
                .unwrap();
        assert_eq!(term.evaluate_for(&r, info()).hash, Some(ha));
        // a terminal policy that yields nothing does not stop
        assert_eq!(
            term.evaluate_for(&req("/", &[("b", "2")]), info()).hash,
            Some(hb)
        );
    }

    #[test]
    fn cookie_generated_then_honoured() {
        let p = policy("- cookie: {name: sticky, ttl: 1h, path: /}")
            .unwrap()
            .unwrap();
        let first = p.evaluate_for(&req("/", &[]), info());
        let set = first.set_cookie.clone().unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("sticky="), "{set}");
        assert!(set.contains("; Max-Age=3600; Path=/; HttpOnly"), "{set}");
        let value = &set["sticky=".len()..set.find(';').unwrap()];
        let cookie = format!("other=1; sticky=\"{value}\"");
        let again = p.evaluate_for(&req("/", &[("cookie", &cookie)]), info());
        assert_eq!(again.hash, first.hash);
        assert!(again.set_cookie.is_none());
        // without ttl nothing is generated
        let p = policy("- cookie: {name: sticky}").unwrap().unwrap();
        let r = p.evaluate_for(&req("/", &[]), info());
        assert!(r.hash.is_none() && r.set_cookie.is_none());
    }

    #[test]
    fn source_ip_and_query_parameter() {
        let p = policy("- connection_properties: {source_ip: true}")
            .unwrap()
            .unwrap();
        assert_eq!(
            p.evaluate_for(&req("/", &[]), info()).hash,
            Some(hash_bytes(&[203, 0, 113, 7]))
        );
        let q = policy("- query_parameter: {name: u}").unwrap().unwrap();
        assert_eq!(
            q.evaluate_for(&req("/?a=1&u=x", &[]), info()).hash,
            Some(hash_bytes(b"x"))
        );
        assert_eq!(q.evaluate_for(&req("/?a=1", &[]), info()).hash, None);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = |y: &str| policy(y).unwrap_err().to_string();
        assert!(e("- filter_state: {key: k}").contains("route.hash_policy[0].filter_state"));
        assert!(e("- {terminal: true}").contains("route.hash_policy[0]"));
        assert!(e("- header: {header_name: 'a b'}").contains("header.header_name"));
        assert!(e("- cookie: {name: 'a;b'}").contains("cookie.name"));
        assert!(
            e("- connection_properties: {source_ip: false}")
                .contains("connection_properties.source_ip")
        );
        assert!(policy("[]").unwrap().is_none());
    }
}
