//! Edge semantics of the `proxy` filter (Envoy HCM options): one authority
//! routed on and forwarded, which upgrades may be tunnelled, path
//! normalisation, the trusted client address (`x-forwarded-for`) and the
//! `server` response header. `proxy.rs` calls in here at a few points; the
//! common HTTP/1.1 GET with every option at its default does no work here
//! beyond a few comparisons.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use meshgate_core::BuildError;
use meshgate_core::stream::{Request, StreamInfo};
use metrics::Counter;
use std::net::IpAddr;

pub(crate) use meshgate_core::config::filters::{
    EscapedSlashesAction, HeadersWithUnderscoresAction, SchemeHeaderTransformation,
    ServerHeaderTransformation, UpgradeConfig,
};

/// The options as configured (fields of `ProxyConfig`).
pub(crate) struct EdgeOptions<'a> {
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashesAction,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub server_header_transformation: ServerHeaderTransformation,
    pub server_name: &'a str,
    pub upgrade_configs: &'a [UpgradeConfig],
    pub headers_with_underscores: HeadersWithUnderscoresAction,
    pub scheme: &'a SchemeHeaderTransformation,
    pub strip_any_host_port: bool,
    pub strip_matching_host_port: bool,
    pub max_headers_count: Option<u32>,
    pub via: &'a str,
    pub skip_xff_append: bool,
    pub strip_trailing_host_dot: bool,
}

/// Envoy HCM's `strip_any_host_port` / `strip_matching_host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StripPort {
    Off,
    Any,
    /// Only the listener's own port.
    Matching,
}

/// Why a request was refused (or its upgrade dropped): the `reason` label
/// of `meshgate_http_downstream_rq_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// HTTP/2 or HTTP/3 `:authority` and `host` differ.
    AuthorityHostMismatch,
    /// `user@host` in `:authority` or `host`.
    AuthorityUserinfo,
    /// Bad percent-encoding or `..` above the root.
    InvalidPath,
    /// `%2F`/`%5C` with `REJECT_REQUEST`.
    EscapedSlash,
    /// Redirected to the unescaped path (`UNESCAPE_AND_REDIRECT`).
    EscapedSlashRedirect,
    /// An upgrade not allowed on the listener or route (forwarded as a
    /// plain request).
    UpgradeNotAllowed,
    /// `CONNECT` (not supported).
    Connect,
    /// A header name with `_` under `REJECT_REQUEST`.
    HeaderWithUnderscore,
    /// More header fields than `max_headers_count`.
    TooManyHeaders,
}

const REFUSALS: [Refusal; 9] = [
    Refusal::AuthorityHostMismatch,
    Refusal::AuthorityUserinfo,
    Refusal::InvalidPath,
    Refusal::EscapedSlash,
    Refusal::EscapedSlashRedirect,
    Refusal::UpgradeNotAllowed,
    Refusal::Connect,
    Refusal::HeaderWithUnderscore,
    Refusal::TooManyHeaders,
];

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::AuthorityHostMismatch => "authority_host_mismatch",
            Refusal::AuthorityUserinfo => "authority_userinfo",
            Refusal::InvalidPath => "invalid_path",
            Refusal::EscapedSlash => "escaped_slash",
            Refusal::EscapedSlashRedirect => "escaped_slash_redirect",
            Refusal::UpgradeNotAllowed => "upgrade_not_allowed",
            Refusal::Connect => "connect",
            Refusal::HeaderWithUnderscore => "header_with_underscore",
            Refusal::TooManyHeaders => "too_many_headers",
        }
    }
}

/// The compiled options of one `proxy` filter.
pub(crate) struct Edge {
    normalize_path: bool,
    merge_slashes: bool,
    escaped_slashes: EscapedSlashesAction,
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    /// The `server` value, and whether it replaces an upstream's.
    server: Option<(HeaderValue, bool)>,
    /// Listener-level upgrade types: (lowercase type, enabled).
    upgrades: Box<[(Box<str>, bool)]>,
    refused: [Counter; REFUSALS.len()],
    underscores: HeadersWithUnderscoresAction,
    /// Headers dropped under `DROP_HEADER`.
    dropped: Counter,
    /// `scheme_to_overwrite`.
    scheme: Option<http::uri::Scheme>,
    /// `match_upstream`.
    scheme_match_upstream: bool,
    strip_port: StripPort,
    /// `max_headers_count` (`usize::MAX`: none).
    max_headers: usize,
    /// `via`: appended to requests and responses.
    via: Option<HeaderValue>,
    skip_xff_append: bool,
    strip_trailing_host_dot: bool,
}

/// What normalisation made of a path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathVerdict {
    Keep,
    Forward(String),
    Redirect(String),
    Reject(Refusal),
}

impl Edge {
    pub(crate) fn build(o: EdgeOptions<'_>, listener: &str) -> Result<Self, BuildError> {
        let mut upgrades = Vec::with_capacity(o.upgrade_configs.len());
        for (i, u) in o.upgrade_configs.iter().enumerate() {
            let t = u.upgrade_type.to_ascii_lowercase();
            meshgate_core::router::check_upgrade_type(&t)
                .map_err(|m| BuildError::new(format!("upgrade_configs[{i}].upgrade_type"), m))?;
            upgrades.push((t.into_boxed_str(), u.enabled));
        }
        let server = match o.server_header_transformation {
            ServerHeaderTransformation::PassThrough => None,
            t => {
                let v = if o.server_name == "meshgate" {
                    HeaderValue::from_static("meshgate")
                } else {
                    HeaderValue::from_str(o.server_name)
                        .ok()
                        .filter(|_| !o.server_name.is_empty())
                        .ok_or_else(|| {
                            BuildError::new("server_name", "must be a non-empty header value")
                        })?
                };
                Some((v, t == ServerHeaderTransformation::Overwrite))
            }
        };
        let scheme = match o.scheme.scheme_to_overwrite.as_deref() {
            None => None,
            Some("http") => Some(http::uri::Scheme::HTTP),
            Some("https") => Some(http::uri::Scheme::HTTPS),
            Some(other) => {
                return Err(BuildError::new(
                    "scheme_header_transformation.scheme_to_overwrite",
                    format!("'{other}': want http or https"),
                ));
            }
        };
        let strip_port = match (o.strip_any_host_port, o.strip_matching_host_port) {
            (false, false) => StripPort::Off,
            (true, false) => StripPort::Any,
            (false, true) => StripPort::Matching,
            (true, true) => {
                return Err(BuildError::new(
                    "strip_any_host_port",
                    "set at most one of strip_any_host_port, strip_matching_host_port",
                ));
            }
        };
        let via = match o.via {
            "" => None,
            v => Some(
                HeaderValue::from_str(v)
                    .map_err(|_| BuildError::new("via", "must be a valid header value"))?,
            ),
        };
        if scheme.is_some() && o.scheme.match_upstream {
            return Err(BuildError::new(
                "scheme_header_transformation",
                "one of scheme_to_overwrite, match_upstream",
            ));
        }
        Ok(Self {
            normalize_path: o.normalize_path,
            merge_slashes: o.merge_slashes,
            escaped_slashes: match o.escaped_slashes {
                EscapedSlashesAction::ImplementationSpecificDefault => {
                    EscapedSlashesAction::KeepUnchanged
                }
                a => a,
            },
            use_remote_address: o.use_remote_address,
            xff_num_trusted_hops: o.xff_num_trusted_hops,
            server,
            upgrades: upgrades.into(),
            refused: REFUSALS.map(|r| {
                metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_RQ_REFUSED_TOTAL, "listener" => listener.to_string(), "reason" => r.label())
            }),
            underscores: o.headers_with_underscores,
            dropped: metrics::counter!(meshgate_core::metrics::names::HTTP_DOWNSTREAM_HEADERS_DROPPED_TOTAL, "listener" => listener.to_string(), "reason" => "header_with_underscore"),
            scheme,
            scheme_match_upstream: o.scheme.match_upstream,
            strip_port,
            max_headers: o.max_headers_count.map_or(usize::MAX, |n| n as usize),
            via,
            skip_xff_append: o.skip_xff_append,
            strip_trailing_host_dot: o.strip_trailing_host_dot,
        })
    }

    /// Envoy's `strip_trailing_host_dot`: `example.com.` (and
    /// `example.com.:8080`) becomes `example.com` (`example.com:8080`)
    /// before the port is stripped, the filters run and the route is
    /// chosen. Off, it costs one comparison.
    pub(crate) fn strip_host_dot(&self, req: &mut Request) {
        if !self.strip_trailing_host_dot {
            return;
        }
        let host = meshgate_core::router::request_host(req.uri(), req.headers());
        let name_len =
            meshgate_core::router::strip_port(host.as_bytes()).map_or(host.len(), |b| b.len());
        if name_len < 2 || !host[..name_len].ends_with('.') {
            return;
        }
        let new = format!("{}{}", &host[..name_len - 1], &host[name_len..]);
        set_authority(req, &new);
    }

    /// Envoy's `via`: appended (`, `-separated) to the `via` header of a
    /// request sent upstream or a response. Unset, one comparison.
    #[inline]
    pub(crate) fn append_via(&self, h: &mut HeaderMap) {
        let Some(via) = &self.via else {
            return;
        };
        let v = match h.get(http::header::VIA) {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + via.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(via.as_bytes());
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
            }
            None => Some(via.clone()),
        };
        if let Some(v) = v {
            h.insert(http::header::VIA, v);
        }
    }

    /// An external request at the edge: `use_remote_address` and a client
    /// that is not internal (one that sent `x-forwarded-for`, or whose
    /// address is not internal), as `strip_external` judges it.
    #[inline]
    pub(crate) fn is_external(&self, had_xff: bool, peer: IpAddr) -> bool {
        self.use_remote_address
            && (had_xff || !meshgate_core::retry_headers::is_internal_address(peer))
    }

    /// Envoy's `strip_any_host_port` / `strip_matching_host_port`: the
    /// port of the authority (the URI's and `Host`, which `check_authority`
    /// made one) removed before the filters and routing, so it is neither
    /// matched nor forwarded; with `Matching` only when it is
    /// `listener_port`. `CONNECT` keeps its port (RFC 9110 section 9.3.6;
    /// meshgate refuses it anyway). Off, it costs one comparison.
    pub(crate) fn strip_host_port(&self, req: &mut Request, listener_port: u16) {
        if self.strip_port == StripPort::Off || req.method() == Method::CONNECT {
            return;
        }
        let host = meshgate_core::router::request_host(req.uri(), req.headers());
        let Some(bare) = meshgate_core::router::strip_port(host.as_bytes()) else {
            return;
        };
        if self.strip_port == StripPort::Matching
            && host.as_bytes()[bare.len() + 1..] != *listener_port.to_string().as_bytes()
        {
            return;
        }
        let bare = host[..bare.len()].to_string();
        set_authority(req, &bare);
    }

    /// Envoy's `max_headers_count`: more header fields than that is a
    /// refusal (431). The authority counts as one field whether it came
    /// as HTTP/1.1's `Host` or as HTTP/2's and HTTP/3's `:authority`, so a
    /// request counts the same over every protocol; other pseudo-headers
    /// do not count. Unset, it costs one comparison.
    pub(crate) fn check_header_count(&self, headers: &HeaderMap) -> Option<Refusal> {
        if headers.len() < self.max_headers {
            return None;
        }
        let n = headers.len() + usize::from(!headers.contains_key(http::header::HOST));
        (n > self.max_headers).then_some(Refusal::TooManyHeaders)
    }

    /// Envoy's `headers_with_underscores_action`: a request with a header
    /// name containing `_` is refused (`REJECT_REQUEST`) or loses those
    /// headers (`DROP_HEADER`, counted per header). `ALLOW`, the default,
    /// costs one comparison.
    pub(crate) fn check_underscores(&self, headers: &mut HeaderMap) -> Option<Refusal> {
        if self.underscores == HeadersWithUnderscoresAction::Allow {
            return None;
        }
        let bad = |n: &HeaderName| n.as_str().contains('_');
        if !headers.keys().any(bad) {
            return None;
        }
        if self.underscores == HeadersWithUnderscoresAction::RejectRequest {
            return Some(Refusal::HeaderWithUnderscore);
        }
        let names: Vec<HeaderName> = headers.keys().filter(|n| bad(n)).cloned().collect();
        for n in names {
            headers.remove(&n);
            self.dropped.increment(1);
        }
        None
    }

    /// Envoy's `scheme_header_transformation`: the scheme overwritten, or
    /// marked to follow the upstream connection (the HTTP/2 client reads
    /// the mark). Unset, it costs two comparisons.
    pub(crate) fn transform_scheme(&self, req: &mut Request) {
        if self.scheme_match_upstream {
            req.extensions_mut()
                .insert(meshgate_core::stream::SchemeMatchUpstream);
        }
        let Some(scheme) = &self.scheme else {
            return;
        };
        if req.uri().scheme() == Some(scheme) {
            return;
        }
        let authority = match req.uri().authority() {
            Some(a) => Some(a.clone()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok()),
        };
        let Some(authority) = authority else {
            return;
        };
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }

    /// Counts a refusal.
    pub(crate) fn count(&self, r: Refusal) {
        let i = REFUSALS.iter().position(|x| *x == r).unwrap_or(0);
        self.refused[i].increment(1);
    }

    /// One authority, routed on and forwarded. An absolute-form HTTP/1
    /// request's URI authority wins over `Host` (RFC 9112 section 3.2.2):
    /// `Host` is set to it. On HTTP/2 and HTTP/3 a `host` that differs from
    /// `:authority` is refused (RFC 9113 section 8.3.1 lets either be
    /// used; meshgate never routes on one and forwards the other).
    /// Userinfo in either is refused (RFC 9110 section 4.2.4). HTTP/1's
    /// `Host` userinfo is refused by the codec.
    /// `authority_in_host`: the codec's `ProtocolTraits` (HTTP/1).
    pub(crate) fn check_authority(
        &self,
        req: &mut Request,
        authority_in_host: bool,
    ) -> Option<Refusal> {
        let http1 = authority_in_host;
        let Some(a) = req.uri().authority() else {
            if !http1
                && let Some(h) = req.headers().get(http::header::HOST)
                && h.as_bytes().contains(&b'@')
            {
                return Some(Refusal::AuthorityUserinfo);
            }
            return None;
        };
        if a.as_str().contains('@') {
            return Some(Refusal::AuthorityUserinfo);
        }
        let same = req
            .headers()
            .get(http::header::HOST)
            .map(|h| h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()));
        match same {
            Some(true) => None,
            None if !http1 => None,
            Some(false) if !http1 => Some(Refusal::AuthorityHostMismatch),
            _ => {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                None
            }
        }
    }

    /// Whether normalisation is switched on at all.
    #[inline]
    pub(crate) fn normalizes(&self) -> bool {
        self.normalize_path
            || self.merge_slashes
            || self.escaped_slashes != EscapedSlashesAction::KeepUnchanged
    }

    /// Normalises the request's path in place (`Forward`), or says how to
    /// answer instead. Only origin-form paths (starting with `/`).
    pub(crate) fn normalize_request(&self, req: &mut Request) -> PathVerdict {
        let path = req.uri().path();
        if !path.starts_with('/') {
            return PathVerdict::Keep;
        }
        let verdict = normalize(
            path,
            self.normalize_path,
            self.merge_slashes,
            self.escaped_slashes,
        );
        let new_path = match &verdict {
            PathVerdict::Forward(p) | PathVerdict::Redirect(p) => p,
            _ => return verdict,
        };
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path.clone(),
        };
        let mut parts = req.uri().clone().into_parts();
        let Ok(pq) = http::uri::PathAndQuery::try_from(pq) else {
            return PathVerdict::Reject(Refusal::InvalidPath);
        };
        if let PathVerdict::Redirect(_) = verdict {
            return PathVerdict::Redirect(pq.as_str().to_string());
        }
        parts.path_and_query = Some(pq);
        match Uri::from_parts(parts) {
            Ok(u) => {
                *req.uri_mut() = u;
                verdict
            }
            Err(_) => PathVerdict::Reject(Refusal::InvalidPath),
        }
    }

    /// The upgrade a request may tunnel, given the route's switches: `h2c`
    /// never; a type the listener does not list never; else the route's
    /// switch, else the listener's.
    pub(crate) fn upgrade_allowed(&self, token: &HeaderValue, route: Option<bool>) -> bool {
        let Ok(t) = token.to_str() else {
            return false;
        };
        let t = t.trim();
        if t.eq_ignore_ascii_case("h2c") {
            return false;
        }
        match self
            .upgrades
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(t))
        {
            None => false,
            Some((_, on)) => route.unwrap_or(*on),
        }
    }

    /// `x-forwarded-for` and the trusted client address, with Envoy's
    /// semantics. `use_remote_address: true`: the peer is appended to XFF
    /// and is the client, unless `xff_num_trusted_hops` N > 0 names the
    /// Nth address from the right of the (appended) XFF. `false`: XFF is
    /// left as it is and the client is the (N+1)th address from its right.
    /// Too few or unparsable entries: the peer.
    pub(crate) fn forwarded_for(
        &self,
        headers: &mut HeaderMap,
        had_xff: bool,
        peer_ip: HeaderValue,
        info: &mut StreamInfo,
    ) {
        if self.use_remote_address {
            // The edge: an external request's internal-only x-envoy-*
            // headers (retries, timeouts) never reach the router.
            meshgate_core::retry_headers::strip_external(
                headers,
                had_xff,
                info.downstream_remote_address,
            );
        }
        let prev = had_xff.then(|| headers.get(&X_FORWARDED_FOR)).flatten();
        if self.use_remote_address {
            if self.xff_num_trusted_hops > 0
                && let Some(p) = prev
                && let Some(ip) = nth_from_right(p, self.xff_num_trusted_hops as usize - 1)
            {
                info.downstream_remote_address = ip;
            }
            let xff = match prev {
                // skip_xff_append: the client is judged, XFF left as it came.
                _ if self.skip_xff_append => None,
                Some(prev) => {
                    let mut v = Vec::with_capacity(prev.len() + 2 + peer_ip.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(peer_ip.as_bytes());
                    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
                }
                None => Some(peer_ip),
            };
            if let Some(v) = xff {
                headers.insert(X_FORWARDED_FOR, v);
            }
        } else if let Some(p) = prev
            && let Some(ip) = nth_from_right(p, self.xff_num_trusted_hops as usize)
        {
            info.downstream_remote_address = ip;
        }
    }

    /// The `server` header of a response (forwarded or meshgate's own).
    #[inline]
    pub(crate) fn server_header(&self, h: &mut HeaderMap) {
        match &self.server {
            None => {}
            Some((v, true)) => {
                h.insert(http::header::SERVER, v.clone());
            }
            Some((v, false)) if !h.contains_key(http::header::SERVER) => {
                h.insert(http::header::SERVER, v.clone());
            }
            Some(_) => {}
        }
    }

    /// `CONNECT` is not supported: answered like Envoy without a
    /// `connect_config` (no route, 404).
    #[inline]
    pub(crate) fn is_connect(method: &Method) -> bool {
        method == Method::CONNECT
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request's authority replaced (the URI's, if it has one, and
/// `Host`); left as it was if `authority` is not a valid one.
fn set_authority(req: &mut Request, authority: &str) {
    let (Ok(a), Ok(value)) = (
        authority.parse::<http::uri::Authority>(),
        HeaderValue::from_str(authority),
    ) else {
        return;
    };
    if req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(a);
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    if let Some(h) = req.headers_mut().get_mut(http::header::HOST) {
        *h = value;
    }
}

/// The address `n` places from the right of an `x-forwarded-for` value
/// (0: the last one).
fn nth_from_right(v: &HeaderValue, n: usize) -> Option<IpAddr> {
    let s = v.to_str().ok()?;
    let entry = s.rsplit(',').nth(n)?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// Envoy's path handling, in this order: `%2F`/`%5C` per the escaped
/// slashes action (unescaped first, so that the dot segments they hide are
/// removed too), then `normalize_path` (percent-decoding of unreserved
/// characters, `\` as `/`, RFC 3986 section 5.2.4 dot-segment removal; a
/// `..` above the root or a bad `%` escape is refused), then
/// `merge_slashes`. A redirect goes to the fully normalised path.
pub(crate) fn normalize(
    path: &str,
    normalize_path: bool,
    merge_slashes: bool,
    escaped: EscapedSlashesAction,
) -> PathVerdict {
    let b = path.as_bytes();
    // The cheap scan: nothing to do for most paths.
    let interesting = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            || (c == b'\\' && normalize_path)
            || (c == b'/' && matches!(b.get(i + 1), Some(b'/') | Some(b'.')))
    });
    if !interesting {
        return PathVerdict::Keep;
    }
    let mut out: Vec<u8> = b.to_vec();
    let mut unescaped = false;
    if escaped != EscapedSlashesAction::KeepUnchanged
        && let Some(p) = unescape_slashes(&out)
    {
        if escaped == EscapedSlashesAction::RejectRequest {
            return PathVerdict::Reject(Refusal::EscapedSlash);
        }
        out = p;
        unescaped = true;
    }
    if normalize_path {
        out = match decode_unreserved(&out) {
            Some(p) => p,
            None => return PathVerdict::Reject(Refusal::InvalidPath),
        };
        for c in out.iter_mut() {
            if *c == b'\\' {
                *c = b'/';
            }
        }
        out = match remove_dot_segments(&out) {
            Some(p) => p,
            None => return PathVerdict::Reject(Refusal::InvalidPath),
        };
    }
    if merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    let Ok(s) = String::from_utf8(out) else {
        return PathVerdict::Reject(Refusal::InvalidPath);
    };
    if unescaped && escaped == EscapedSlashesAction::UnescapeAndRedirect {
        return PathVerdict::Redirect(s);
    }
    if s == path {
        PathVerdict::Keep
    } else {
        PathVerdict::Forward(s)
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `%2F`/`%5C` (any case) unescaped, or `None` when there is none.
fn unescape_slashes(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len());
    let mut found = false;
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            let d = (p[i + 1], p[i + 2].to_ascii_uppercase());
            if d == (b'2', b'F') || d == (b'5', b'C') {
                out.push(if d.0 == b'2' { b'/' } else { b'\\' });
                found = true;
                i += 3;
                continue;
            }
        }
        out.push(p[i]);
        i += 1;
    }
    found.then_some(out)
}

/// Percent-escapes of unreserved characters (RFC 3986 section 2.3)
/// decoded, the others kept with uppercase hex; `None` on a bad escape.
fn decode_unreserved(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] != b'%' {
            out.push(p[i]);
            i += 1;
            continue;
        }
        let hi = hex(*p.get(i + 1)?)?;
        let lo = hex(*p.get(i + 2)?)?;
        let c = hi << 4 | lo;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            out.push(b'%');
            out.push(p[i + 1].to_ascii_uppercase());
            out.push(p[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 section 5.2.4 on an absolute path; `None` when a `..` would
/// climb above the root.
fn remove_dot_segments(p: &[u8]) -> Option<Vec<u8>> {
    let mut segs: Vec<&[u8]> = Vec::new();
    // p starts with '/': the segments after it.
    let body = &p[1..];
    let parts: Vec<&[u8]> = body.split(|c| *c == b'/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, s) in parts.iter().enumerate() {
        match *s {
            b"." => trailing_slash = i == last,
            b".." => {
                segs.pop()?;
                trailing_slash = i == last;
            }
            _ => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(p.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashesAction as E;

    fn n(p: &str) -> PathVerdict {
        normalize(p, true, false, E::KeepUnchanged)
    }

    #[test]
    fn dot_segments_and_unreserved_escapes() {
        assert_eq!(n("/a/b"), PathVerdict::Keep);
        assert_eq!(n("/api/../secret"), PathVerdict::Forward("/secret".into()));
        assert_eq!(n("/a/./b/"), PathVerdict::Forward("/a/b/".into()));
        assert_eq!(n("/a/b/.."), PathVerdict::Forward("/a/".into()));
        assert_eq!(n("/a/b/."), PathVerdict::Forward("/a/b/".into()));
        assert_eq!(n("/a/%2e%2E/c"), PathVerdict::Forward("/c".into()));
        assert_eq!(n("/%7efoo%41"), PathVerdict::Forward("/~fooA".into()));
        assert_eq!(n("/a%2fb"), PathVerdict::Forward("/a%2Fb".into()));
        assert_eq!(n("/a\\..\\b"), PathVerdict::Forward("/b".into()));
        assert_eq!(n("/.."), PathVerdict::Reject(Refusal::InvalidPath));
        assert_eq!(n("/a/../.."), PathVerdict::Reject(Refusal::InvalidPath));
        assert_eq!(n("/a%zz"), PathVerdict::Reject(Refusal::InvalidPath));
        assert_eq!(n("/a%2"), PathVerdict::Reject(Refusal::InvalidPath));
        assert_eq!(n("/a//b"), PathVerdict::Keep);
        assert_eq!(n("/a/.hidden"), PathVerdict::Keep);
    }

    #[test]
    fn merge_slashes_and_escaped_slashes() {
        assert_eq!(
            normalize("/a//b///c", false, true, E::KeepUnchanged),
            PathVerdict::Forward("/a/b/c".into())
        );
        assert_eq!(
            normalize("/a%2Fb", false, false, E::RejectRequest),
            PathVerdict::Reject(Refusal::EscapedSlash)
        );
        assert_eq!(
            normalize("/a%2fb", false, false, E::UnescapeAndForward),
            PathVerdict::Forward("/a/b".into())
        );
        assert_eq!(
            normalize("/a%2F..%2Fb", true, false, E::UnescapeAndRedirect),
            PathVerdict::Redirect("/b".into())
        );
        assert_eq!(
            normalize("/a%2", false, false, E::UnescapeAndForward),
            PathVerdict::Keep
        );
        assert_eq!(
            normalize("/a/b", false, false, E::RejectRequest),
            PathVerdict::Keep
        );
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let v = HeaderValue::from_static("1.1.1.1, 2.2.2.2,3.3.3.3");
        assert_eq!(nth_from_right(&v, 0), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(nth_from_right(&v, 2), Some("1.1.1.1".parse().unwrap()));
        assert_eq!(nth_from_right(&v, 3), None);
        let v = HeaderValue::from_static("junk");
        assert_eq!(nth_from_right(&v, 0), None);
    }
}
