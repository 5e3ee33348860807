//! A compiled `JwtProvider`: where its tokens are, how they are verified
//! (signature with `jsonwebtoken`, then issuer, times and audiences as
//! Envoy checks them), what a verified token does to the request
//! (claim headers, payload header, metadata, token removal), and the
//! bounded cache of verified tokens that makes a hot token cost one hash
//! lookup.

use super::jwks::{FetchFailed, KeySet, Remote};
use base64::Engine;
use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use meshgate_core::stream::Request;
use rustc_hash::FxBuildHasher;
use std::sync::Arc;

/// Tokens longer than this are refused without being parsed.
pub(super) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token did not verify: a metric label and Envoy's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Missing,
    TooLarge,
    Malformed,
    AlgNotAllowed,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExp,
    Issuer,
    Audience,
    JwksFetchFailed,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::TooLarge => "token_too_large",
            Failure::Malformed => "malformed",
            Failure::AlgNotAllowed => "alg_not_allowed",
            Failure::UnknownKid => "unknown_kid",
            Failure::BadSignature => "bad_signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::MissingExp => "missing_exp",
            Failure::Issuer => "issuer",
            Failure::Audience => "audience",
            Failure::JwksFetchFailed => "jwks_fetch_failed",
        }
    }

    /// Envoy's status text (the body of the 401/403).
    pub fn message(self) -> &'static str {
        match self {
            Failure::Missing => "Jwt is missing",
            Failure::TooLarge => "Jwt is too large",
            Failure::Malformed => "Jwt is not in the form of Header.Payload.Signature",
            Failure::AlgNotAllowed => "Jwt header [alg] is not supported",
            Failure::UnknownKid => "Jwks doesn't have key to match kid or alg from Jwt",
            Failure::BadSignature => "Jwt verification fails",
            Failure::Expired => "Jwt is expired",
            Failure::NotYetValid => "Jwt not yet valid",
            Failure::MissingExp => "Jwt is missing exp",
            Failure::Issuer => "Jwt issuer is not configured",
            Failure::Audience => "Audiences in Jwt are not allowed",
            Failure::JwksFetchFailed => "Jwks remote fetch is failed",
        }
    }
}

/// Where a token was found (to remove it unless `forward`).
#[derive(Debug, Clone)]
pub(super) enum Location {
    Header(HeaderName),
    Param(String),
    Cookie,
}

pub(super) struct Found {
    pub token: String,
    pub at: Location,
}

pub(super) enum Jwks {
    Local(Arc<KeySet>),
    Remote(Arc<Remote>),
}

/// What a verified token gives, cached with it.
pub(super) struct Verified {
    generation: u64,
    exp: Option<u64>,
    nbf: Option<u64>,
    pub aud: Vec<String>,
    pub payload: Option<serde_json::Value>,
    pub payload_header: Option<HeaderValue>,
    pub claim_headers: Vec<(HeaderName, HeaderValue)>,
}

pub(super) struct Provider {
    pub name: &'static str,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    pub forward: bool,
    pub from_headers: Vec<(HeaderName, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub payload_header: Option<HeaderName>,
    pub payload_in_metadata: Option<String>,
    pub claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    pub skew: u64,
    pub require_expiration: bool,
    pub cache: DashMap<Box<str>, Arc<Verified>, FxBuildHasher>,
    pub cache_size: usize,
    pub allowed: metrics::Counter,
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Provider {
    /// The first token at this provider's locations.
    pub fn extract(&self, req: &Request) -> Option<Found> {
        for (name, prefix) in &self.from_headers {
            for v in req.headers().get_all(name) {
                let Ok(v) = v.to_str() else { continue };
                let rest = if prefix.is_empty() {
                    Some(v.trim())
                } else if v.len() >= prefix.len()
                    && v.is_char_boundary(prefix.len())
                    && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    Some(v[prefix.len()..].trim_start())
                } else {
                    None
                };
                if let Some(t) = rest {
                    // The token ends at the first separator.
                    let end = t
                        .bytes()
                        .position(|b| b == b',' || b == b' ')
                        .unwrap_or(t.len());
                    let t = &t[..end];
                    if !t.is_empty() {
                        return Some(Found {
                            token: t.to_string(),
                            at: Location::Header(name.clone()),
                        });
                    }
                }
            }
        }
        if !self.from_params.is_empty()
            && let Some(q) = req.uri().query()
        {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !v.is_empty() && self.from_params.iter().any(|p| p == k) {
                    return Some(Found {
                        token: v.to_string(),
                        at: Location::Param(k.to_string()),
                    });
                }
            }
        }
        if !self.from_cookies.is_empty() {
            for v in req.headers().get_all(http::header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for c in v.split(';') {
                    let (k, val) = c.trim().split_once('=').unwrap_or((c, ""));
                    if !val.is_empty() && self.from_cookies.iter().any(|n| n == k) {
                        return Some(Found {
                            token: val.to_string(),
                            at: Location::Cookie,
                        });
                    }
                }
            }
        }
        None
    }

    /// The key set, fetching a remote one if there is none yet.
    pub async fn keys(&self) -> Result<Arc<KeySet>, Failure> {
        match &self.jwks {
            Jwks::Local(k) => Ok(k.clone()),
            Jwks::Remote(r) => r
                .keys()
                .await
                .map_err(|FetchFailed| Failure::JwksFetchFailed),
        }
    }

    /// Verifies `token` with `keys` (the cache first); audiences are not
    /// checked here (a requirement may name its own).
    pub fn verify(&self, token: &str, keys: &KeySet, now: u64) -> Result<Arc<Verified>, Failure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Failure::TooLarge);
        }
        if let Some(v) = self.cache.get(token)
            && v.generation == keys.generation
        {
            let v = v.clone();
            self.check_times(&v, now)?;
            return Ok(v);
        }
        let v = Arc::new(self.verify_uncached(token, keys)?);
        if self.cache_size > 0 {
            if self.cache.len() >= self.cache_size {
                // Bounded: drop an arbitrary entry to make room.
                let victim = self.cache.iter().next().map(|e| e.key().clone());
                if let Some(k) = victim {
                    self.cache.remove(&k);
                }
            }
            self.cache.insert(token.into(), v.clone());
        }
        self.check_times(&v, now)?;
        Ok(v)
    }

    fn check_times(&self, v: &Verified, now: u64) -> Result<(), Failure> {
        if let Some(exp) = v.exp
            && now > exp.saturating_add(self.skew)
        {
            return Err(Failure::Expired);
        }
        if let Some(nbf) = v.nbf
            && now.saturating_add(self.skew) < nbf
        {
            return Err(Failure::NotYetValid);
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str, keys: &KeySet) -> Result<Verified, Failure> {
        let mut parts = token.split('.');
        let (Some(head), Some(payload_b64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let alg = header_alg(head)?;
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| Failure::Malformed)?
            .kid;
        let candidates = keys.keys.iter().filter(|k| {
            k.algs.contains(&alg)
                && match (&kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let mut tried = false;
        let mut claims = None;
        for k in candidates {
            tried = true;
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &k.key,
                &validation,
            ) {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                    | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                    | jsonwebtoken::errors::ErrorKind::Crypto(_) => continue,
                    _ => return Err(Failure::Malformed),
                },
            }
        }
        let Some(claims) = claims else {
            return Err(if tried {
                Failure::BadSignature
            } else {
                Failure::UnknownKid
            });
        };
        if !self.issuer.is_empty()
            && claims.get("iss").and_then(|i| i.as_str()) != Some(self.issuer.as_str())
        {
            return Err(Failure::Issuer);
        }
        let time = |name: &str| -> Result<Option<u64>, Failure> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or(Failure::Malformed),
            }
        };
        let exp = time("exp")?;
        let nbf = time("nbf")?;
        if exp.is_none() && self.require_expiration {
            return Err(Failure::MissingExp);
        }
        let aud = match claims.get("aud") {
            None => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => return Err(Failure::Malformed),
        };
        let mut claim_headers = Vec::new();
        for (name, path) in &self.claim_to_headers {
            if let Some(v) = claim_at(&claims, path).and_then(claim_header_value) {
                claim_headers.push((name.clone(), v));
            }
        }
        let payload_header = match &self.payload_header {
            // The token's own payload segment is its base64url JSON.
            Some(_) => HeaderValue::from_str(payload_b64).ok(),
            None => None,
        };
        let payload = self
            .payload_in_metadata
            .as_ref()
            .map(|_| serde_json::Value::Object(claims));
        Ok(Verified {
            generation: keys.generation,
            exp,
            nbf,
            aud,
            payload,
            payload_header,
            claim_headers,
        })
    }

    /// Whether `v`'s `aud` has one of `audiences` (empty: any).
    pub fn audience_ok(audiences: &[String], v: &Verified) -> bool {
        audiences.is_empty() || v.aud.iter().any(|a| audiences.contains(a))
    }

    /// Removes the token from where it was found (`forward: false`).
    pub fn strip(req: &mut Request, at: &Location) {
        match at {
            Location::Header(name) => {
                req.headers_mut().remove(name);
            }
            Location::Param(name) => {
                let uri = req.uri();
                let Some(q) = uri.query() else { return };
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != name)
                    .collect();
                let pq = if kept.is_empty() {
                    uri.path().to_string()
                } else {
                    format!("{}?{}", uri.path(), kept.join("&"))
                };
                let mut parts = uri.clone().into_parts();
                if let Ok(pq) = pq.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = u;
                    }
                }
            }
            // Envoy leaves cookies as they are.
            Location::Cookie => {}
        }
    }
}

/// The header's `alg`, refusing `none` and anything `jsonwebtoken` does
/// not verify with a distinct reason.
fn header_alg(head: &str) -> Result<Algorithm, Failure> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| Failure::Malformed)?;
    let h: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| Failure::Malformed)?;
    let alg = h
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(Failure::Malformed)?;
    alg.parse::<Algorithm>().map_err(|_| Failure::AlgNotAllowed)
}

fn claim_at<'c>(
    claims: &'c serde_json::Map<String, serde_json::Value>,
    path: &[String],
) -> Option<&'c serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for k in rest {
        v = v.as_object()?.get(k)?;
    }
    Some(v)
}

/// Strings, numbers and booleans become the header value; a list of
/// those is joined with commas; anything else is not copied.
fn claim_header_value(v: &serde_json::Value) -> Option<HeaderValue> {
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let s = match v {
        serde_json::Value::Array(a) => a.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        v => scalar(v)?,
    };
    HeaderValue::from_str(&s).ok()
}
