//! JSON Web Key Sets: parsing (keys and the algorithms each may verify)
//! and the remote JWKS of a provider, fetched through a cluster with
//! `core::callout::call`, cached for `cache_duration`, refreshed in the
//! background once stale, with one fetch in flight at a time (streams that
//! need keys wait on it rather than each fetching: no thundering herd).
//! A failed fetch keeps the stale keys if there were any.

use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use meshgate_core::callout;
use meshgate_core::cluster::Cluster;
use meshgate_core::metrics::names;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The largest JWKS body accepted from a remote (a bigger one is a
/// failed fetch).
pub(super) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One verification key.
pub(super) struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify: its `alg`, else those of its
    /// type (RSA: RS*/PS*, EC by curve, OKP: EdDSA, oct: HS*).
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// A parsed key set; `generation` changes with every new set so that
/// tokens verified with an older one are verified again.
pub(super) struct KeySet {
    pub keys: Vec<Key>,
    pub generation: u64,
    fetched: Instant,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    /// Parses a JWKS document. Keys meshgate cannot use (unknown type or
    /// curve, encryption keys) are skipped; none usable is an error.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no `keys` array")?;
        let mut keys = Vec::with_capacity(list.len());
        for k in list {
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            if k.get("use").and_then(|u| u.as_str()) == Some("enc") {
                continue;
            }
            let Some(algs) = algorithms(&jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algs,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no usable key".into());
        }
        Ok(Self {
            keys,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            fetched: Instant::now(),
        })
    }
}

fn algorithms(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm as A;
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            vec![A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![A::ES256],
            EllipticCurve::P384 => vec![A::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![A::EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => vec![A::HS256, A::HS384, A::HS512],
    };
    let Some(alg) = jwk.common.key_algorithm else {
        return Some(by_type);
    };
    let alg = match alg {
        KeyAlgorithm::HS256 => A::HS256,
        KeyAlgorithm::HS384 => A::HS384,
        KeyAlgorithm::HS512 => A::HS512,
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return None,
    };
    // A key whose `alg` contradicts its type verifies nothing.
    by_type.contains(&alg).then(|| vec![alg])
}

/// Why no key set is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FetchFailed;

/// A provider's remote JWKS.
pub(super) struct Remote {
    provider: &'static str,
    cluster: Arc<Cluster>,
    uri: http::Uri,
    timeout: Duration,
    cache_duration: Duration,
    retries: u32,
    failed_refetch: Duration,
    keys: arc_swap::ArcSwapOption<KeySet>,
    last_failure: Mutex<Option<Instant>>,
    /// Fetches completed (either way): a stream that waited for the
    /// flight lock sees whether one ended meanwhile.
    attempts: AtomicU64,
    flight: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

pub(super) struct RemoteSettings {
    pub provider: &'static str,
    pub cluster: Arc<Cluster>,
    pub uri: http::Uri,
    pub timeout: Duration,
    pub cache_duration: Duration,
    pub retries: u32,
    pub failed_refetch: Duration,
}

impl Remote {
    pub fn new(s: RemoteSettings) -> Arc<Self> {
        Arc::new(Self {
            provider: s.provider,
            cluster: s.cluster,
            uri: s.uri,
            timeout: s.timeout,
            cache_duration: s.cache_duration,
            retries: s.retries,
            failed_refetch: s.failed_refetch,
            keys: arc_swap::ArcSwapOption::empty(),
            last_failure: Mutex::new(None),
            attempts: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The keys if they are already there (fresh or stale).
    pub fn cached(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        let ks = self.keys.load_full()?;
        if ks.fetched.elapsed() >= self.cache_duration {
            self.refresh_in_background();
        }
        Some(ks)
    }

    /// The keys, fetching them (once for every waiting stream) when there
    /// are none yet.
    pub async fn keys(self: &Arc<Self>) -> Result<Arc<KeySet>, FetchFailed> {
        if let Some(ks) = self.cached() {
            return Ok(ks);
        }
        if self.failed_recently() {
            return Err(FetchFailed);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _flight = self.flight.lock().await;
        // Another stream's fetch may have ended while this one waited:
        // its keys, or its failure (not a fetch of our own).
        if let Some(ks) = self.keys.load_full() {
            return Ok(ks);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            return Err(FetchFailed);
        }
        self.fetch().await
    }

    fn failed_recently(&self) -> bool {
        self.last_failure
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| t.elapsed() < self.failed_refetch)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            {
                let _flight = me.flight.lock().await;
                if me
                    .keys
                    .load()
                    .as_ref()
                    .is_none_or(|k| k.fetched.elapsed() >= me.cache_duration)
                {
                    let _ = me.fetch().await;
                }
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// `async_fetch`: fetches now, then again whenever the keys expire,
    /// until the provider is dropped (a config change).
    pub fn start_async_fetch(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                let wait = {
                    let Some(me) = weak.upgrade() else { return };
                    let _flight = me.flight.lock().await;
                    match me.fetch().await {
                        Ok(_) => me.cache_duration,
                        Err(_) => me.failed_refetch,
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            }
        });
    }

    /// One fetch (with its retries); the caller holds the flight lock.
    async fn fetch(&self) -> Result<Arc<KeySet>, FetchFailed> {
        let mut result = Err(String::new());
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            result = self.fetch_once().await;
            if result.is_ok() {
                break;
            }
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(ks) => {
                let ks = Arc::new(ks);
                self.keys.store(Some(ks.clone()));
                if let Ok(mut g) = self.last_failure.lock() {
                    *g = None;
                }
                metrics::counter!(names::JWT_AUTHN_JWKS_FETCH_TOTAL, "provider" => self.provider, "result" => "success").increment(1);
                Ok(ks)
            }
            Err(e) => {
                tracing::warn!(provider = self.provider, uri = %self.uri, error = %e, "jwks fetch failed");
                metrics::counter!(names::JWT_AUTHN_JWKS_FETCH_TOTAL, "provider" => self.provider, "result" => "failure").increment(1);
                if let Ok(mut g) = self.last_failure.lock() {
                    *g = Some(Instant::now());
                }
                // Stale keys stay in use.
                self.keys.load_full().ok_or(FetchFailed)
            }
        }
    }

    async fn fetch_once(&self) -> Result<KeySet, String> {
        let mut req = http::Request::new(Bytes::new());
        *req.uri_mut() = self.uri.clone();
        let resp = callout::call(&self.cluster, req, self.timeout, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if resp.head.status != http::StatusCode::OK {
            return Err(format!("status {}", resp.head.status.as_u16()));
        }
        KeySet::parse(&resp.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_the_algorithms_of_their_type_or_alg() {
        let ks = KeySet::parse(
            br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h2", "alg": "HS384"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "bad", "alg": "RS256"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "weird"}
        ]}"#,
        )
        .unwrap();
        let kids: Vec<_> = ks.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("h"), Some("h2")]);
        assert_eq!(ks.keys[0].algs.len(), 3);
        assert_eq!(ks.keys[1].algs, [Algorithm::HS384]);
        assert!(KeySet::parse(b"garbage").is_err());
        assert!(KeySet::parse(br#"{"keys": []}"#).is_err());
        assert!(KeySet::parse(br#"{"keys": [{"kty": "weird"}]}"#).is_err());
    }
}
