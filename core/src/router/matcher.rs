//! Compiled route matchers: the path part (prefix, exact path, regex) and
//! the conditions (headers, query parameters, methods, gRPC). Nothing here
//! allocates while matching.

use crate::error::ValueError;
use http::{HeaderMap, HeaderName, Method};

/// A regex anchored for a full match, compiled once at build time.
pub(crate) fn full_regex(pattern: &str) -> Result<regex::Regex, ValueError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(ValueError::Regex)
}

fn full_bytes_regex(pattern: &str) -> Result<regex::bytes::Regex, ValueError> {
    regex::bytes::Regex::new(&format!("^(?:{pattern})$")).map_err(ValueError::Regex)
}

/// How a route matches the path (without the query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path starts with this string.
    Prefix(Box<str>),
    /// The path is exactly this string.
    Path(Box<str>),
    /// The path is this string, or starts with it followed by `/`
    /// (Envoy's `path_separated_prefix`).
    SeparatedPrefix(Box<str>),
    /// The regex matches the whole path.
    Regex(regex::Regex),
}

/// A literal prefix every path matching the (fully anchored) `pattern` must
/// start with, so a regex route can be indexed by it. Conservative: no
/// prefix for a pattern with an alternation anywhere; stops at the first
/// character with a meaning in regex syntax, and drops the last literal
/// when it is followed by `?`, `*` or `{` (it may then be absent).
pub(crate) fn regex_literal_prefix(pattern: &str) -> &str {
    if pattern.contains('|') {
        return "";
    }
    let is_literal = |c: char| {
        c.is_ascii_alphanumeric()
            || !c.is_ascii()
            || matches!(
                c,
                '/' | '-' | '_' | '~' | '%' | '=' | ',' | ';' | ':' | '@' | '!' | '&' | '\''
            )
    };
    let mut end = 0;
    let mut last_start = 0;
    for (i, c) in pattern.char_indices() {
        if is_literal(c) {
            last_start = i;
            end = i + c.len_utf8();
            continue;
        }
        if matches!(c, '?' | '*' | '{') {
            end = last_start.min(end);
        }
        break;
    }
    &pattern[..end]
}

/// `a` starts with `p`, ASCII case folded when `!case_sensitive`.
#[inline]
fn starts_with(a: &str, p: &str, case_sensitive: bool) -> bool {
    match a.as_bytes().get(..p.len()) {
        Some(head) if case_sensitive => head == p.as_bytes(),
        Some(head) => head.eq_ignore_ascii_case(p.as_bytes()),
        None => false,
    }
}

/// `path` is `p`, or `p` then `/` and more (`path_separated_prefix`).
#[inline]
fn separated(path: &str, p: &str, case_sensitive: bool) -> bool {
    starts_with(path, p, case_sensitive)
        && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
}

#[derive(Debug, Clone)]
pub(crate) enum HeaderMatchKind {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Regex(regex::bytes::Regex),
    Present(bool),
}

/// A request pseudo-header a route's header condition may name (Envoy
/// matches these like headers); read from the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pseudo {
    /// `:authority`: the host the request is for (the `Host` header in
    /// HTTP/1).
    Authority,
    /// `:method`.
    Method,
    /// `:path`: the path with its query, as sent.
    Path,
}

/// A compiled header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub(crate) name: HeaderName,
    pub(crate) kind: HeaderMatchKind,
    pub(crate) invert: bool,
    /// A route condition on a pseudo-header (`name` is then unused).
    pub(crate) pseudo: Option<Pseudo>,
}

impl HeaderMatcher {
    /// Builds a matcher; errors are `(field, message)` relative to the
    /// matcher's config.
    pub fn build(c: &super::HeaderMatcherConfig) -> Result<Self, (&'static str, String)> {
        Self::build_with(c, None)
    }

    /// [`build`](Self::build) for a route's match, where `:authority`,
    /// `:method` and `:path` may be named too (checked with
    /// [`matches_input`](Self::matches_input)).
    pub fn build_route(c: &super::HeaderMatcherConfig) -> Result<Self, (&'static str, String)> {
        let pseudo = match c.name.as_str() {
            ":authority" => Pseudo::Authority,
            ":method" => Pseudo::Method,
            ":path" => Pseudo::Path,
            n if n.starts_with(':') => {
                return Err((
                    "name",
                    format!(
                        "pseudo-header '{n}' is not supported (:authority, :method, :path; use `grpc` or the Host header for others)"
                    ),
                ));
            }
            _ => return Self::build(c),
        };
        Self::build_with(c, Some(pseudo))
    }

    fn build_with(
        c: &super::HeaderMatcherConfig,
        pseudo: Option<Pseudo>,
    ) -> Result<Self, (&'static str, String)> {
        let name = match pseudo {
            Some(_) => http::header::HOST,
            None => HeaderName::from_bytes(c.name.as_bytes())
                .map_err(|_| ("name", format!("invalid header name '{}'", c.name)))?,
        };
        let set = [
            c.exact_match.is_some(),
            c.prefix_match.is_some(),
            c.suffix_match.is_some(),
            c.safe_regex_match.is_some(),
            c.present_match.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err((
                "",
                "set at most one of exact_match, prefix_match, suffix_match, safe_regex_match, present_match".into(),
            ));
        }
        let kind = if let Some(v) = &c.exact_match {
            HeaderMatchKind::Exact(v.as_bytes().into())
        } else if let Some(v) = &c.prefix_match {
            HeaderMatchKind::Prefix(v.as_bytes().into())
        } else if let Some(v) = &c.suffix_match {
            HeaderMatchKind::Suffix(v.as_bytes().into())
        } else if let Some(v) = &c.safe_regex_match {
            HeaderMatchKind::Regex(
                full_bytes_regex(v).map_err(|e| ("safe_regex_match", e.to_string()))?,
            )
        } else {
            HeaderMatchKind::Present(c.present_match.unwrap_or(true))
        };
        Ok(Self {
            name,
            kind,
            invert: c.invert_match,
            pseudo,
        })
    }

    /// Whether the value `v` passes (not `Present`).
    #[inline]
    fn value_matches(&self, v: &[u8]) -> bool {
        match &self.kind {
            HeaderMatchKind::Exact(e) => v == &**e,
            HeaderMatchKind::Prefix(p) => v.starts_with(p),
            HeaderMatchKind::Suffix(s) => v.ends_with(s),
            HeaderMatchKind::Regex(r) => r.is_match(v),
            HeaderMatchKind::Present(want) => *want,
        }
    }

    #[inline]
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let result = match &self.kind {
            HeaderMatchKind::Present(want) => headers.contains_key(&self.name) == *want,
            _ => headers
                .get_all(&self.name)
                .iter()
                .any(|v| self.value_matches(v.as_bytes())),
        };
        result != self.invert
    }

    /// [`matches`](Self::matches) for a request, pseudo-headers included
    /// (an empty `:authority` counts as absent).
    #[inline]
    pub fn matches_input(&self, input: &super::RouteInput<'_>) -> bool {
        let value = match self.pseudo {
            None => return self.matches(input.headers),
            Some(Pseudo::Authority) => (!input.host.is_empty()).then_some(input.host),
            Some(Pseudo::Method) => Some(input.method.as_str()),
            Some(Pseudo::Path) => Some(input.path_and_query),
        };
        let result = match value {
            Some(v) => self.value_matches(v.as_bytes()),
            None => matches!(self.kind, HeaderMatchKind::Present(false)),
        };
        result != self.invert
    }
}

#[derive(Debug, Clone)]
pub(crate) enum QueryMatchKind {
    Exact(Box<str>),
    Regex(regex::Regex),
    Present(bool),
}

/// A compiled query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    pub(crate) name: Box<str>,
    pub(crate) kind: QueryMatchKind,
}

impl QueryParameterMatcher {
    pub(crate) fn build(
        c: &super::QueryParameterMatcherConfig,
    ) -> Result<Self, (&'static str, String)> {
        if c.name.is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        let set = [
            c.exact_match.is_some(),
            c.safe_regex_match.is_some(),
            c.present_match.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err((
                "",
                "set at most one of exact_match, safe_regex_match, present_match".into(),
            ));
        }
        let kind = if let Some(v) = &c.exact_match {
            QueryMatchKind::Exact(v.as_str().into())
        } else if let Some(v) = &c.safe_regex_match {
            QueryMatchKind::Regex(full_regex(v).map_err(|e| ("safe_regex_match", e.to_string()))?)
        } else {
            QueryMatchKind::Present(c.present_match.unwrap_or(true))
        };
        Ok(Self {
            name: c.name.as_str().into(),
            kind,
        })
    }

    #[inline]
    pub(crate) fn matches(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == &*self.name).then_some(v)
            })
        });
        match (&self.kind, value) {
            (QueryMatchKind::Present(want), v) => v.is_some() == *want,
            (QueryMatchKind::Exact(e), Some(v)) => v == &**e,
            (QueryMatchKind::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }
}

/// The compiled match of a route.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub(crate) path: PathMatch,
    pub(crate) case_sensitive: bool,
    pub(crate) headers: Box<[HeaderMatcher]>,
    pub(crate) query_parameters: Box<[QueryParameterMatcher]>,
    pub(crate) methods: Box<[Method]>,
    pub(crate) grpc: bool,
}

impl RouteMatch {
    /// The path part of the match.
    pub fn path_match(&self) -> &PathMatch {
        &self.path
    }

    /// Whether `prefix` and `path` compare case-sensitively.
    pub fn case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// Whether the path matches (the query is not part of `path`).
    #[inline]
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Path(p) if self.case_sensitive => path == &**p,
            PathMatch::Path(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::SeparatedPrefix(p) => separated(path, p, self.case_sensitive),
        }
    }

    /// Whether a route found through the path index matches: its literal
    /// prefix or path already matched; a regex route indexed by its
    /// literal prefix still needs its regex.
    #[inline]
    pub(crate) fn matches_indexed(&self, input: &super::RouteInput<'_>) -> bool {
        (match &self.path {
            PathMatch::Regex(r) => r.is_match(input.path),
            // The index matched the prefix; the boundary is left.
            PathMatch::SeparatedPrefix(p) => {
                matches!(input.path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            _ => true,
        }) && self.matches_conditions(input)
    }

    /// Whether everything but the path matches.
    #[inline]
    pub fn matches_conditions(&self, input: &super::RouteInput<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(input.method))
            && (!self.grpc || crate::stream::is_grpc(input.headers))
            && self.headers.iter().all(|h| h.matches_input(input))
            && self.query_parameters.iter().all(|q| q.matches(input.query))
    }

    /// Whether the whole match holds.
    #[inline]
    pub fn matches(&self, input: &super::RouteInput<'_>) -> bool {
        self.matches_path(input.path) && self.matches_conditions(input)
    }
}
