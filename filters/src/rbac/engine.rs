//! The RBAC policy engine shared by the HTTP and the network `rbac`
//! filters: `RbacRules` compiled once (regexes, CIDRs, header names) into
//! matchers that evaluate a connection, and for HTTP its request, without
//! allocating (a header with several values is the one exception: Envoy
//! matches them joined with `,`).
//!
//! Semantics are Envoy's `envoy.config.rbac.v3`: a policy matches when one
//! of its permissions and one of its principals match; policies are tried
//! in name order and the first that matches is the effective policy;
//! `ALLOW` allows iff a policy matches, `DENY` denies iff one does, `LOG`
//! allows and only records. Fail closed: what cannot be known does not
//! match (no verified peer certificate for `authenticated`, no dynamic
//! metadata for `metadata`, a missing header for a value matcher), so an
//! ALLOW policy that needs it denies. `invert_match` / `invert` / `not_*`
//! negate as in Envoy, including over a missing value.

use http::{HeaderMap, HeaderName, Method, Uri};
use meshgate_core::BuildError;
use meshgate_core::config::filters::StringMatcherConfig;
use meshgate_core::config::rbac::{
    CidrRange, MetadataMatcherConfig, Permission, PortRange, Principal, RbacAction,
    RbacHeaderMatcher, RbacRules, ValueMatcherConfig,
};
use meshgate_core::network::ConnectionInfo;
use meshgate_core::stream::DynamicMetadata;
use std::borrow::Cow;
use std::net::IpAddr;

/// Where a set of rules is evaluated: the network filter has no request,
/// so rules that need one are refused there rather than never matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    Http,
    Network,
}

/// The request head an HTTP evaluation sees.
#[derive(Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

/// Everything a rule may look at.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub conn: &'a ConnectionInfo,
    /// The trusted client address (`remote_ip`).
    pub remote: IpAddr,
    pub request: Option<RequestView<'a>>,
    pub metadata: Option<&'a DynamicMetadata>,
}

/// What an engine decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub allowed: bool,
    /// The index of the effective (first matching) policy.
    pub policy: Option<usize>,
}

/// A compiled `RBAC`.
pub(crate) struct Engine {
    action: RbacAction,
    policies: Box<[(Box<str>, Policy)]>,
}

struct Policy {
    permissions: Box<[Perm]>,
    principals: Box<[Princ]>,
}

impl Engine {
    /// Compiles `rules`; errors name the field under `path`.
    pub(crate) fn build(rules: &RbacRules, path: &str, layer: Layer) -> Result<Self, BuildError> {
        let mut policies = Vec::with_capacity(rules.policies.len());
        for (name, p) in &rules.policies {
            let pp = format!("{path}.policies.{name}");
            if p.permissions.is_empty() {
                return Err(BuildError::new(
                    format!("{pp}.permissions"),
                    "at least one permission",
                ));
            }
            if p.principals.is_empty() {
                return Err(BuildError::new(
                    format!("{pp}.principals"),
                    "at least one principal",
                ));
            }
            let b = Builder { layer };
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, x)| b.perm(x, &format!("{pp}.permissions[{i}]")))
                .collect::<Result<_, _>>()?;
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, x)| b.princ(x, &format!("{pp}.principals[{i}]")))
                .collect::<Result<_, _>>()?;
            policies.push((
                name.as_str().into(),
                Policy {
                    permissions,
                    principals,
                },
            ));
        }
        Ok(Self {
            action: rules.action,
            policies: policies.into(),
        })
    }

    pub(crate) fn action(&self) -> RbacAction {
        self.action
    }

    /// The policy names, in evaluation order (`Outcome::policy` indexes it).
    pub(crate) fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|(n, _)| &**n)
    }

    pub(crate) fn policy_name(&self, i: usize) -> &str {
        self.policies.get(i).map_or("", |(n, _)| n)
    }

    /// Whether a rule needs what only the TLS handshake tells (the peer
    /// certificate, or the SNI when the listener did not inspect it).
    pub(crate) fn needs_handshake(&self) -> bool {
        self.policies.iter().any(|(_, p)| {
            p.permissions.iter().any(Perm::needs_handshake)
                || p.principals.iter().any(Princ::needs_handshake)
        })
    }

    pub(crate) fn evaluate(&self, cx: &Context<'_>) -> Outcome {
        let policy = self.policies.iter().position(|(_, p)| {
            p.permissions.iter().any(|m| m.matches(cx))
                && p.principals.iter().any(|m| m.matches(cx))
        });
        let allowed = match self.action {
            RbacAction::Allow => policy.is_some(),
            RbacAction::Deny => policy.is_none(),
            RbacAction::Log => true,
        };
        Outcome { allowed, policy }
    }
}

enum Perm {
    Any,
    And(Box<[Perm]>),
    Or(Box<[Perm]>),
    Not(Box<Perm>),
    Header(HeaderMatch),
    UrlPath(StrMatch),
    DestinationIp(Cidr),
    DestinationPort(u16),
    DestinationPortRange(u32, u32),
    ServerName(StrMatch),
    Metadata(MetadataMatch),
}

enum Princ {
    Any,
    And(Box<[Princ]>),
    Or(Box<[Princ]>),
    Not(Box<Princ>),
    Authenticated(Option<StrMatch>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StrMatch),
    Metadata(MetadataMatch),
}

struct Builder {
    layer: Layer,
}

impl Builder {
    fn http_only(&self, path: &str) -> Result<(), BuildError> {
        match self.layer {
            Layer::Http => Ok(()),
            Layer::Network => Err(BuildError::new(
                path,
                "needs an HTTP request: not available to the network rbac filter",
            )),
        }
    }

    fn perm(&self, p: &Permission, path: &str) -> Result<Perm, BuildError> {
        Ok(match p {
            Permission::Any(true) => Perm::Any,
            Permission::Any(false) => {
                return Err(BuildError::new(format!("{path}.any"), "must be true"));
            }
            Permission::AndRules(s) | Permission::OrRules(s) => {
                let field = if matches!(p, Permission::AndRules(_)) {
                    "and_rules"
                } else {
                    "or_rules"
                };
                if s.rules.is_empty() {
                    return Err(BuildError::new(
                        format!("{path}.{field}.rules"),
                        "at least one rule",
                    ));
                }
                let v = s
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| self.perm(r, &format!("{path}.{field}.rules[{i}]")))
                    .collect::<Result<_, _>>()?;
                if field == "and_rules" {
                    Perm::And(v)
                } else {
                    Perm::Or(v)
                }
            }
            Permission::NotRule(r) => {
                Perm::Not(Box::new(self.perm(r, &format!("{path}.not_rule"))?))
            }
            Permission::Header(h) => {
                let hp = format!("{path}.header");
                self.http_only(&hp)?;
                Perm::Header(HeaderMatch::build(h, &hp)?)
            }
            Permission::UrlPath(u) => {
                let up = format!("{path}.url_path");
                self.http_only(&up)?;
                Perm::UrlPath(StrMatch::build(&u.path, &format!("{up}.path"))?)
            }
            Permission::DestinationIp(c) => {
                Perm::DestinationIp(Cidr::build(c, &format!("{path}.destination_ip"))?)
            }
            Permission::DestinationPort(port) => {
                Perm::DestinationPort(u16::try_from(*port).map_err(|_| {
                    BuildError::new(format!("{path}.destination_port"), "at most 65535")
                })?)
            }
            Permission::DestinationPortRange(PortRange { start, end }) => {
                let rp = format!("{path}.destination_port_range");
                if *start < 0 || *end > 65536 || start > end {
                    return Err(BuildError::new(
                        rp,
                        "start <= end within 0..65536 (end exclusive)",
                    ));
                }
                Perm::DestinationPortRange(start.unsigned_abs(), end.unsigned_abs())
            }
            Permission::RequestedServerName(m) => Perm::ServerName(StrMatch::build(
                m,
                &format!("{path}.requested_server_name"),
            )?),
            Permission::Metadata(m) => {
                let mp = format!("{path}.metadata");
                self.http_only(&mp)?;
                Perm::Metadata(MetadataMatch::build(m, &mp)?)
            }
        })
    }

    fn princ(&self, p: &Principal, path: &str) -> Result<Princ, BuildError> {
        Ok(match p {
            Principal::Any(true) => Princ::Any,
            Principal::Any(false) => {
                return Err(BuildError::new(format!("{path}.any"), "must be true"));
            }
            Principal::AndIds(s) | Principal::OrIds(s) => {
                let field = if matches!(p, Principal::AndIds(_)) {
                    "and_ids"
                } else {
                    "or_ids"
                };
                if s.ids.is_empty() {
                    return Err(BuildError::new(
                        format!("{path}.{field}.ids"),
                        "at least one id",
                    ));
                }
                let v = s
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(i, r)| self.princ(r, &format!("{path}.{field}.ids[{i}]")))
                    .collect::<Result<_, _>>()?;
                if field == "and_ids" {
                    Princ::And(v)
                } else {
                    Princ::Or(v)
                }
            }
            Principal::NotId(r) => Princ::Not(Box::new(self.princ(r, &format!("{path}.not_id"))?)),
            Principal::Authenticated(a) => Princ::Authenticated(match &a.principal_name {
                None => None,
                Some(m) => Some(StrMatch::build(
                    m,
                    &format!("{path}.authenticated.principal_name"),
                )?),
            }),
            Principal::SourceIp(c) => {
                Princ::DirectRemoteIp(Cidr::build(c, &format!("{path}.source_ip"))?)
            }
            Principal::DirectRemoteIp(c) => {
                Princ::DirectRemoteIp(Cidr::build(c, &format!("{path}.direct_remote_ip"))?)
            }
            Principal::RemoteIp(c) => {
                Princ::RemoteIp(Cidr::build(c, &format!("{path}.remote_ip"))?)
            }
            Principal::Header(h) => {
                let hp = format!("{path}.header");
                self.http_only(&hp)?;
                Princ::Header(HeaderMatch::build(h, &hp)?)
            }
            Principal::UrlPath(u) => {
                let up = format!("{path}.url_path");
                self.http_only(&up)?;
                Princ::UrlPath(StrMatch::build(&u.path, &format!("{up}.path"))?)
            }
            Principal::Metadata(m) => {
                let mp = format!("{path}.metadata");
                self.http_only(&mp)?;
                Princ::Metadata(MetadataMatch::build(m, &mp)?)
            }
        })
    }
}

/// The path without query (and fragment), as `url_path` matches it.
fn url_path<'a>(cx: &Context<'a>) -> Option<&'a str> {
    cx.request.map(|r| r.uri.path())
}

fn server_name<'a>(cx: &Context<'a>) -> &'a str {
    cx.conn
        .server_name
        .as_deref()
        .or_else(|| cx.conn.tls.as_ref().and_then(|t| t.server_name.as_deref()))
        .unwrap_or("")
}

impl Perm {
    fn needs_handshake(&self) -> bool {
        match self {
            Perm::ServerName(_) => true,
            Perm::And(v) | Perm::Or(v) => v.iter().any(Perm::needs_handshake),
            Perm::Not(p) => p.needs_handshake(),
            _ => false,
        }
    }

    fn matches(&self, cx: &Context<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(v) => v.iter().all(|p| p.matches(cx)),
            Perm::Or(v) => v.iter().any(|p| p.matches(cx)),
            Perm::Not(p) => !p.matches(cx),
            Perm::Header(h) => h.matches(cx),
            Perm::UrlPath(m) => url_path(cx).is_some_and(|p| m.matches(p)),
            Perm::DestinationIp(c) => c.contains(cx.conn.local_addr.ip()),
            Perm::DestinationPort(p) => cx.conn.local_addr.port() == *p,
            Perm::DestinationPortRange(s, e) => {
                let p = u32::from(cx.conn.local_addr.port());
                *s <= p && p < *e
            }
            Perm::ServerName(m) => m.matches(server_name(cx)),
            Perm::Metadata(m) => m.matches(cx.metadata),
        }
    }
}

impl Princ {
    fn needs_handshake(&self) -> bool {
        match self {
            Princ::Authenticated(_) => true,
            Princ::And(v) | Princ::Or(v) => v.iter().any(Princ::needs_handshake),
            Princ::Not(p) => p.needs_handshake(),
            _ => false,
        }
    }

    fn matches(&self, cx: &Context<'_>) -> bool {
        match self {
            Princ::Any => true,
            Princ::And(v) => v.iter().all(|p| p.matches(cx)),
            Princ::Or(v) => v.iter().any(|p| p.matches(cx)),
            Princ::Not(p) => !p.matches(cx),
            Princ::Authenticated(m) => {
                // Only a verified peer certificate authenticates.
                let Some(peer) = cx.conn.tls.as_ref().and_then(|t| t.peer.as_ref()) else {
                    return false;
                };
                match m {
                    None => true,
                    // Envoy's order: URI SANs, DNS SANs, then the subject.
                    Some(m) => {
                        peer.uri_sans.iter().any(|s| m.matches(s))
                            || peer.dns_sans.iter().any(|s| m.matches(s))
                            || m.matches(&peer.subject)
                    }
                }
            }
            Princ::DirectRemoteIp(c) => c.contains(cx.conn.direct_peer_addr().ip()),
            Princ::RemoteIp(c) => c.contains(cx.remote),
            Princ::Header(h) => h.matches(cx),
            Princ::UrlPath(m) => url_path(cx).is_some_and(|p| m.matches(p)),
            Princ::Metadata(m) => m.matches(cx.metadata),
        }
    }
}

/// A compiled `StringMatcher`.
pub(crate) enum StrMatch {
    Exact(Box<str>, bool),
    Prefix(Box<str>, bool),
    Suffix(Box<str>, bool),
    Contains(Box<str>, bool),
    Regex(regex::Regex),
}

impl StrMatch {
    pub(crate) fn build(m: &StringMatcherConfig, path: &str) -> Result<Self, BuildError> {
        let n = [
            m.exact.is_some(),
            m.prefix.is_some(),
            m.suffix.is_some(),
            m.contains.is_some(),
            m.safe_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(BuildError::new(
                path,
                "set exactly one of exact, prefix, suffix, contains, safe_regex",
            ));
        }
        let ic = m.ignore_case;
        let non_empty = |field: &str, s: &str| -> Result<Box<str>, BuildError> {
            if s.is_empty() {
                Err(BuildError::new(
                    format!("{path}.{field}"),
                    "must not be empty",
                ))
            } else {
                Ok(s.into())
            }
        };
        Ok(if let Some(s) = &m.exact {
            StrMatch::Exact(s.as_str().into(), ic)
        } else if let Some(s) = &m.prefix {
            StrMatch::Prefix(non_empty("prefix", s)?, ic)
        } else if let Some(s) = &m.suffix {
            StrMatch::Suffix(non_empty("suffix", s)?, ic)
        } else if let Some(s) = &m.contains {
            StrMatch::Contains(non_empty("contains", s)?, ic)
        } else if let Some(r) = &m.safe_regex {
            StrMatch::Regex(
                regex::Regex::new(&format!("^(?:{})$", r.regex)).map_err(|e| {
                    BuildError::new(format!("{path}.safe_regex.regex"), e.to_string())
                })?,
            )
        } else {
            return Err(BuildError::new(path, "empty matcher"));
        })
    }

    pub(crate) fn matches(&self, v: &str) -> bool {
        fn eq(a: &[u8], b: &[u8], ic: bool) -> bool {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        }
        let vb = v.as_bytes();
        match self {
            StrMatch::Exact(s, ic) => eq(vb, s.as_bytes(), *ic),
            StrMatch::Prefix(s, ic) => vb.len() >= s.len() && eq(&vb[..s.len()], s.as_bytes(), *ic),
            StrMatch::Suffix(s, ic) => {
                vb.len() >= s.len() && eq(&vb[vb.len() - s.len()..], s.as_bytes(), *ic)
            }
            StrMatch::Contains(s, false) => v.contains(&**s),
            StrMatch::Contains(s, true) => vb
                .windows(s.len())
                .any(|w| w.eq_ignore_ascii_case(s.as_bytes())),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// Which part of the request head a header matcher reads.
enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

enum HeaderKind {
    Value(StrMatch),
    Present(bool),
}

/// A compiled RBAC `HeaderMatcher`.
struct HeaderMatch {
    key: HeaderKey,
    kind: HeaderKind,
    invert: bool,
}

impl HeaderMatch {
    fn build(c: &RbacHeaderMatcher, path: &str) -> Result<Self, BuildError> {
        let lower = c.name.to_ascii_lowercase();
        let key = match lower.as_str() {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            // HTTP/1.1's Host is HTTP/2's :authority, as in Envoy.
            ":authority" | "host" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            n if n.starts_with(':') => {
                return Err(BuildError::new(
                    format!("{path}.name"),
                    format!("unknown pseudo header '{}'", c.name),
                ));
            }
            n => HeaderKey::Named(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                BuildError::new(
                    format!("{path}.name"),
                    format!("invalid header name '{}'", c.name),
                )
            })?),
        };
        let mut kinds: Vec<(&str, StringMatcherConfig)> = Vec::new();
        if let Some(s) = &c.exact_match {
            kinds.push((
                "exact_match",
                StringMatcherConfig {
                    exact: Some(s.clone()),
                    ..Default::default()
                },
            ));
        }
        if let Some(s) = &c.prefix_match {
            kinds.push((
                "prefix_match",
                StringMatcherConfig {
                    prefix: Some(s.clone()),
                    ..Default::default()
                },
            ));
        }
        if let Some(s) = &c.suffix_match {
            kinds.push((
                "suffix_match",
                StringMatcherConfig {
                    suffix: Some(s.clone()),
                    ..Default::default()
                },
            ));
        }
        if let Some(s) = &c.contains_match {
            kinds.push((
                "contains_match",
                StringMatcherConfig {
                    contains: Some(s.clone()),
                    ..Default::default()
                },
            ));
        }
        if let Some(r) = &c.safe_regex_match {
            kinds.push((
                "safe_regex_match",
                StringMatcherConfig {
                    safe_regex: Some(r.clone()),
                    ..Default::default()
                },
            ));
        }
        if let Some(m) = &c.string_match {
            kinds.push(("string_match", m.clone()));
        }
        let set = kinds.len() + usize::from(c.present_match.is_some());
        if set > 1 {
            return Err(BuildError::new(
                path,
                "set at most one of exact_match, prefix_match, suffix_match, contains_match, safe_regex_match, string_match, present_match",
            ));
        }
        let kind = match kinds.pop() {
            Some((field, m)) => HeaderKind::Value(StrMatch::build(&m, &format!("{path}.{field}"))?),
            None => HeaderKind::Present(c.present_match.unwrap_or(true)),
        };
        Ok(Self {
            key,
            kind,
            invert: c.invert_match,
        })
    }

    fn value<'a>(&self, cx: &Context<'a>) -> Option<Cow<'a, str>> {
        let r = cx.request?;
        match &self.key {
            HeaderKey::Method => Some(Cow::Borrowed(r.method.as_str())),
            HeaderKey::Path => Some(Cow::Borrowed(
                r.uri.path_and_query().map_or(r.uri.path(), |p| p.as_str()),
            )),
            HeaderKey::Authority => match r.uri.authority() {
                Some(a) => Some(Cow::Borrowed(a.as_str())),
                None => header_string(r.headers, &http::header::HOST),
            },
            HeaderKey::Scheme => Some(Cow::Borrowed(r.uri.scheme_str().unwrap_or(
                if cx.conn.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
            ))),
            HeaderKey::Named(n) => header_string(r.headers, n),
        }
    }

    fn matches(&self, cx: &Context<'_>) -> bool {
        let v = self.value(cx);
        let result = match (&self.kind, v) {
            (HeaderKind::Present(want), v) => v.is_some() == *want,
            (HeaderKind::Value(m), Some(v)) => m.matches(&v),
            (HeaderKind::Value(_), None) => false,
        };
        result != self.invert
    }
}

/// A header's value; several values joined with `,` (Envoy's
/// `getAllOfHeaderAsString`), the one case that allocates.
fn header_string<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut all = h.get_all(name).iter();
    let first = all.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes());
    for v in all {
        let s = out.to_mut();
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(out)
}

/// A CIDR range, compared on canonical addresses (an IPv4-mapped IPv6
/// peer is its IPv4 address).
struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    fn build(c: &CidrRange, path: &str) -> Result<Self, BuildError> {
        let net: IpAddr = c.address_prefix.parse().map_err(|_| {
            BuildError::new(
                format!("{path}.address_prefix"),
                format!("not an IP address: '{}'", c.address_prefix),
            )
        })?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        if c.prefix_len > max {
            return Err(BuildError::new(
                format!("{path}.prefix_len"),
                format!("at most {max}"),
            ));
        }
        Ok(Self {
            net,
            len: u8::try_from(c.prefix_len).unwrap_or(128),
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

enum ValueMatch {
    Str(StrMatch),
    Bool(bool),
    Present(bool),
    List(Box<ValueMatch>),
}

impl ValueMatch {
    fn build(c: &ValueMatcherConfig, path: &str) -> Result<Self, BuildError> {
        let n = [
            c.string_match.is_some(),
            c.bool_match.is_some(),
            c.present_match.is_some(),
            c.list_match.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(BuildError::new(
                path,
                "set exactly one of string_match, bool_match, present_match, list_match",
            ));
        }
        Ok(if let Some(m) = &c.string_match {
            ValueMatch::Str(StrMatch::build(m, &format!("{path}.string_match"))?)
        } else if let Some(b) = c.bool_match {
            ValueMatch::Bool(b)
        } else if let Some(b) = c.present_match {
            ValueMatch::Present(b)
        } else if let Some(l) = &c.list_match {
            ValueMatch::List(Box::new(ValueMatch::build(
                &l.one_of,
                &format!("{path}.list_match.one_of"),
            )?))
        } else {
            return Err(BuildError::new(path, "empty value matcher"));
        })
    }

    fn matches(&self, v: Option<&serde_json::Value>) -> bool {
        use serde_json::Value;
        match (self, v) {
            (ValueMatch::Present(want), v) => v.is_some_and(|v| !v.is_null()) == *want,
            (ValueMatch::Str(m), Some(Value::String(s))) => m.matches(s),
            (ValueMatch::Bool(b), Some(Value::Bool(x))) => b == x,
            (ValueMatch::List(one), Some(Value::Array(a))) => {
                a.iter().any(|x| one.matches(Some(x)))
            }
            _ => false,
        }
    }
}

/// A compiled `MetadataMatcher` (also the access log's `metadata_filter`).
pub(crate) struct MetadataMatch {
    filter: Box<str>,
    path: Box<[Box<str>]>,
    value: ValueMatch,
    invert: bool,
}

impl MetadataMatch {
    pub(crate) fn build(c: &MetadataMatcherConfig, path: &str) -> Result<Self, BuildError> {
        if c.filter.is_empty() {
            return Err(BuildError::new(
                format!("{path}.filter"),
                "must not be empty",
            ));
        }
        if c.path.is_empty() {
            return Err(BuildError::new(format!("{path}.path"), "at least one key"));
        }
        Ok(Self {
            filter: c.filter.as_str().into(),
            path: c.path.iter().map(|s| s.key.as_str().into()).collect(),
            value: ValueMatch::build(&c.value, &format!("{path}.value"))?,
            invert: c.invert,
        })
    }

    /// Whether the metadata holds a value at the matcher's path.
    pub(crate) fn key_present(&self, md: Option<&DynamicMetadata>) -> bool {
        md.and_then(|md| {
            let mut v = md.as_map().get(&*self.filter)?;
            for k in &*self.path {
                v = v.as_object()?.get(&**k)?;
            }
            Some(v)
        })
        .is_some()
    }

    pub(crate) fn matches(&self, md: Option<&DynamicMetadata>) -> bool {
        let v = md.and_then(|md| {
            let mut v = md.as_map().get(&*self.filter)?;
            for k in &*self.path {
                v = v.as_object()?.get(&**k)?;
            }
            Some(v)
        });
        self.value.matches(v) != self.invert
    }
}

#[cfg(test)]
mod tests;
