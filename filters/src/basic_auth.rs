//! `basic_auth`: HTTP Basic authentication (RFC 7617) against an htpasswd
//! user list (Envoy's `envoy.filters.http.basic_auth`). Entries are
//! `{SHA}` (base64 SHA-1, Envoy's only format) or bcrypt (`$2y$`, `$2b$`,
//! `$2a$`); any other line is refused at config time, naming the line.
//! Missing or invalid credentials get 401 with `www-authenticate: Basic`
//! (`LocalReason::Unauthenticated`: gRPC UNAUTHENTICATED, an RPC service
//! error). As in Envoy the `authorization` header is forwarded unchanged;
//! the user name can be forwarded in a header and published in the
//! dynamic metadata. A route's `BasicAuthPerRoute` replaces the users.
//!
//! bcrypt is slow by design (tens of ms): it runs on the blocking pool,
//! a few at a time, and a successful verification is remembered (a bounded
//! set of SHA-256 digests of `user:password`, per user list) so a valid
//! client pays once.

use base64::Engine;
use http::{HeaderName, HeaderValue};
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::config::simpleauth::{
    BasicAuthConfig, BasicAuthPerRouteConfig, DataSourceConfig,
};
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, StreamFilter, StreamFilterFactory,
    StreamInfo, local_reply,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// The dynamic metadata namespace (Envoy's filter name).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.basic_auth";
/// Successful bcrypt verifications remembered per user list.
const CACHE_ENTRIES: usize = 4096;
/// bcrypt verifications running at once (the rest wait their turn).
const BCRYPT_CONCURRENCY: usize = 2;
/// Above this cost one verification takes seconds: refused at config time.
const MAX_BCRYPT_COST: u32 = 16;

/// Factory of `basic_auth`.
pub struct BasicAuthFactory;

impl StreamFilterFactory for BasicAuthFactory {
    fn name(&self) -> &'static str {
        "basic_auth"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: BasicAuthConfig = parse_typed(config)?;
        Ok(Arc::new(BasicAuth::build(&c)?))
    }
}

/// One htpasswd entry.
enum Hash {
    /// SHA-1 digest of the password.
    Sha([u8; 20]),
    /// The full bcrypt hash string.
    Bcrypt(String),
}

/// A parsed user list and its cache of verified bcrypt credentials.
pub(crate) struct Users {
    users: HashMap<String, Hash>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Users {
    fn load(path: &str, src: &DataSourceConfig) -> Result<Self, BuildError> {
        let text = data_source(path, src)?;
        Self::parse(path, &text)
    }

    fn parse(path: &str, text: &str) -> Result<Self, BuildError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |m: &str| BuildError::new(path, format!("line {}: {m}", i + 1));
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("not `user:hash`"));
            };
            if user.is_empty() || HeaderValue::from_str(user).is_err() {
                return Err(bad("the user name is empty or not a valid header value"));
            }
            let h = if let Some(b64) = hash.strip_prefix("{SHA}") {
                let d = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| bad("{SHA} entry is not base64"))?;
                Hash::Sha(
                    d.try_into()
                        .map_err(|_| bad("{SHA} entry is not a SHA-1 digest"))?,
                )
            } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                let parts: bcrypt::HashParts =
                    hash.parse().map_err(|_| bad("malformed bcrypt entry"))?;
                if parts.get_cost() > MAX_BCRYPT_COST {
                    return Err(bad(&format!(
                        "bcrypt cost {} is over {MAX_BCRYPT_COST}",
                        parts.get_cost()
                    )));
                }
                Hash::Bcrypt(hash.to_string())
            } else {
                return Err(bad(
                    "unsupported hash (only {SHA} and bcrypt $2y$/$2b$/$2a$ entries)",
                ));
            };
            if users.insert(user.to_string(), h).is_some() {
                return Err(bad(&format!("user '{user}' is listed twice")));
            }
        }
        Ok(Self {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// The user name when `user:password` is valid.
    async fn verify<'u>(
        &'u self,
        user: &[u8],
        password: &[u8],
        gate: &tokio::sync::Semaphore,
    ) -> Option<&'u str> {
        let user = std::str::from_utf8(user).ok()?;
        let (name, hash) = self.users.get_key_value(user)?;
        match hash {
            Hash::Sha(want) => {
                let got = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password);
                bool::from(got.as_ref().ct_eq(want)).then_some(name.as_str())
            }
            Hash::Bcrypt(h) => {
                let key = cache_key(user, password);
                if self.verified.lock().is_ok_and(|s| s.contains(&key)) {
                    bcrypt_count("cache_hit");
                    return Some(name);
                }
                let _permit = gate.acquire().await.ok()?;
                let (pw, h) = (password.to_vec(), h.clone());
                let ok =
                    tokio::task::spawn_blocking(move || bcrypt::verify(pw, &h).unwrap_or(false))
                        .await
                        .unwrap_or(false);
                bcrypt_count(if ok { "verified" } else { "mismatch" });
                if !ok {
                    return None;
                }
                if let Ok(mut s) = self.verified.lock() {
                    // Bounded: start over rather than grow (a valid client
                    // pays one more verification).
                    if s.len() >= CACHE_ENTRIES {
                        s.clear();
                    }
                    s.insert(key);
                }
                Some(name)
            }
        }
    }
}

fn bcrypt_count(result: &'static str) {
    metrics::counter!(meshgate_core::metrics::names::HTTP_BASIC_AUTH_BCRYPT_TOTAL, "result" => result)
        .increment(1);
}

fn cache_key(user: &str, password: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(b":");
    ctx.update(password);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Reads Envoy's `DataSource` (exactly one of its fields).
pub(crate) fn data_source(path: &str, src: &DataSourceConfig) -> Result<String, BuildError> {
    let set = [
        src.filename.is_some(),
        src.inline_string.is_some(),
        src.inline_bytes.is_some(),
        src.environment_variable.is_some(),
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        return Err(BuildError::new(
            path,
            "set exactly one of filename, inline_string, inline_bytes, environment_variable",
        ));
    }
    if let Some(s) = &src.inline_string {
        return Ok(s.clone());
    }
    if let Some(f) = &src.filename {
        return std::fs::read_to_string(f)
            .map_err(|e| BuildError::new(format!("{path}.filename"), format!("{f}: {e}")));
    }
    if let Some(b) = &src.inline_bytes {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| BuildError::new(format!("{path}.inline_bytes"), "not base64"))?;
        return String::from_utf8(bytes)
            .map_err(|_| BuildError::new(format!("{path}.inline_bytes"), "not UTF-8"));
    }
    let v = src.environment_variable.as_deref().unwrap_or_default();
    std::env::var(v)
        .map_err(|e| BuildError::new(format!("{path}.environment_variable"), format!("{v}: {e}")))
}

struct BasicAuth {
    users: Arc<Users>,
    header: HeaderName,
    forward_username_header: Option<HeaderName>,
    allow_missing: bool,
    emit_dynamic_metadata: bool,
    bcrypt_gate: tokio::sync::Semaphore,
}

fn header_name(path: &str, v: &str) -> Result<Option<HeaderName>, BuildError> {
    if v.is_empty() {
        return Ok(None);
    }
    HeaderName::from_bytes(v.as_bytes())
        .map(Some)
        .map_err(|_| BuildError::new(path, "not a valid header name"))
}

impl BasicAuth {
    fn build(c: &BasicAuthConfig) -> Result<Self, BuildError> {
        Ok(Self {
            users: Arc::new(Users::load("users", &c.users)?),
            header: header_name("authentication_header", &c.authentication_header)?
                .unwrap_or(http::header::AUTHORIZATION),
            forward_username_header: header_name(
                "forward_username_header",
                &c.forward_username_header,
            )?,
            allow_missing: c.allow_missing,
            emit_dynamic_metadata: c.emit_dynamic_metadata,
            bcrypt_gate: tokio::sync::Semaphore::new(BCRYPT_CONCURRENCY),
        })
    }

    fn deny(&self, req: &Request, info: &mut StreamInfo) -> FilterStatus {
        let mut resp = local_reply(info, LocalReason::Unauthenticated);
        resp.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, challenge(req));
        FilterStatus::Respond(resp)
    }
}

/// `Basic realm="http://<host><path>"`, Envoy's realm, with anything that
/// would break the quoted string dropped.
fn challenge(req: &Request) -> HeaderValue {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let realm: String = format!("http://{host}{}", req.uri().path())
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"meshgate\""))
}

/// What an `authorization` value holds: `None` when there is no usable
/// `Basic` credential (not the scheme, not base64, no colon).
fn credentials(v: &HeaderValue) -> Option<(Vec<u8>, usize)> {
    let v = v.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let rest = rest.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded, colon))
}

impl StreamFilter for BasicAuth {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(async move {
            let users = route
                .config
                .and_then(|c| c.downcast_ref::<Users>())
                .unwrap_or(&self.users);
            if let Some(h) = &self.forward_username_header {
                // Only meshgate says who the user is.
                req.headers_mut().remove(h);
            }
            let Some(v) = req.headers().get(&self.header) else {
                if self.allow_missing {
                    return FilterStatus::Continue;
                }
                return self.deny(req, info);
            };
            let Some((cred, colon)) = credentials(v) else {
                return self.deny(req, info);
            };
            let Some(user) = users
                .verify(&cred[..colon], &cred[colon + 1..], &self.bcrypt_gate)
                .await
            else {
                return self.deny(req, info);
            };
            if let Some(h) = &self.forward_username_header
                && let Ok(v) = HeaderValue::from_str(user)
            {
                req.headers_mut().insert(h.clone(), v);
            }
            if self.emit_dynamic_metadata {
                info.metadata_mut()
                    .set(METADATA_NAMESPACE, "username", user.into());
            }
            FilterStatus::Continue
        })
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: BasicAuthPerRouteConfig = parse_typed(config)?;
        Ok(Arc::new(Users::load("users", &c.users)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(pw: &str) -> String {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, pw.as_bytes());
        format!(
            "{{SHA}}{}",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
    }

    #[tokio::test]
    async fn sha_and_bcrypt_entries_verify() {
        let bc = bcrypt::hash_with_salt("bpass", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let u = Users::parse("users", &format!("alice:{}\n\n bob:{bc}\n", sha("apass"))).unwrap();
        let gate = tokio::sync::Semaphore::new(1);
        assert_eq!(u.verify(b"alice", b"apass", &gate).await, Some("alice"));
        assert_eq!(u.verify(b"alice", b"bpass", &gate).await, None);
        assert_eq!(u.verify(b"bob", b"bpass", &gate).await, Some("bob"));
        assert_eq!(u.verified.lock().unwrap().len(), 1);
        // Served from the cache the second time.
        assert_eq!(u.verify(b"bob", b"bpass", &gate).await, Some("bob"));
        assert_eq!(u.verify(b"bob", b"wrong", &gate).await, None);
        assert_eq!(u.verify(b"carol", b"x", &gate).await, None);
        assert_eq!(u.verify(b"\xff", b"x", &gate).await, None);
        assert_eq!(u.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn bad_lines_are_refused_by_number() {
        for (text, want) in [
            ("alice:{SHA}abc=\n", "line 1"),
            (
                "a:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk=\nbob:$apr1$x$y\n",
                "line 2: unsupported",
            ),
            ("nocolon\n", "line 1: not"),
            (
                "a:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk=\na:{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
                "twice",
            ),
            ("a:$2y$04$short", "malformed bcrypt"),
            (
                "a:$2y$20$abcdefghijklmnopqrstuuZjT8x1zIxQ8PZfNbW5ATRDQDP7g2/1O",
                "cost 20",
            ),
            ("a:plaintext", "unsupported"),
        ] {
            let e = Users::parse("users", text).err().unwrap();
            assert_eq!(e.path, "users");
            assert!(e.message.contains(want), "{text}: {e:?}");
        }
        let e = data_source("users", &DataSourceConfig::default()).unwrap_err();
        assert_eq!(e.path, "users");
    }

    #[test]
    fn credentials_parse_hostile_values() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        let (c, i) = credentials(&v("Basic YTpiOmM=")).unwrap();
        assert_eq!((&c[..i], &c[i + 1..]), (&b"a"[..], &b"b:c"[..]));
        assert!(credentials(&v("basic YTpi")).is_some());
        assert!(credentials(&v("Basic !!!")).is_none());
        assert!(credentials(&v("Basic YWJj")).is_none()); // no colon
        assert!(credentials(&v("Bearer YTpi")).is_none());
        assert!(credentials(&v("Basic")).is_none());
        assert!(credentials(&v("")).is_none());
    }
}
