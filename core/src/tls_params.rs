//! TLS parameters by Envoy's (BoringSSL's) names, mapped onto what the
//! rustls ring provider implements: `cipher_suites` (BoringSSL names such
//! as `ECDHE-RSA-AES128-GCM-SHA256`, `[A|B]` equal-preference groups, or
//! IANA names), `ecdh_curves` (`X25519`, `P-256`, `P-384`) and
//! `signature_algorithms` (`ecdsa_secp256r1_sha256`, `rsa_pss_rsae_sha256`,
//! ...). A known name rustls lacks (CBC suites, `P-521`, SHA-1 schemes) is
//! skipped with a warning as long as something usable remains; when
//! nothing does, or a name is unknown, the error names the field.

use crate::error::BuildError;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{CipherSuite, NamedGroup, SignatureAlgorithm, SignatureScheme};
use std::sync::{Arc, Mutex, OnceLock};

/// BoringSSL cipher names rustls implements, with the IANA suite.
const CIPHERS: &[(&str, CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// BoringSSL cipher names rustls does not implement (CBC, static RSA,
/// PSK, 3DES): skipped. Envoy's default list and istiod's carry several.
const CIPHERS_LACKING: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "AES128-SHA256",
    "AES256-SHA256",
    "DES-CBC3-SHA",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
];

const CURVES: &[(&str, NamedGroup)] = &[
    ("X25519", NamedGroup::X25519),
    ("P-256", NamedGroup::secp256r1),
    ("P-384", NamedGroup::secp384r1),
];
const CURVES_LACKING: &[&str] = &["P-224", "P-521", "X25519Kyber768Draft00", "X25519MLKEM768"];

const SCHEMES: &[(&str, SignatureScheme)] = &[
    (
        "ecdsa_secp256r1_sha256",
        SignatureScheme::ECDSA_NISTP256_SHA256,
    ),
    (
        "ecdsa_secp384r1_sha384",
        SignatureScheme::ECDSA_NISTP384_SHA384,
    ),
    ("rsa_pss_rsae_sha256", SignatureScheme::RSA_PSS_SHA256),
    ("rsa_pss_rsae_sha384", SignatureScheme::RSA_PSS_SHA384),
    ("rsa_pss_rsae_sha512", SignatureScheme::RSA_PSS_SHA512),
    ("rsa_pkcs1_sha256", SignatureScheme::RSA_PKCS1_SHA256),
    ("rsa_pkcs1_sha384", SignatureScheme::RSA_PKCS1_SHA384),
    ("rsa_pkcs1_sha512", SignatureScheme::RSA_PKCS1_SHA512),
    ("ed25519", SignatureScheme::ED25519),
];
const SCHEMES_LACKING: &[&str] = &[
    "ecdsa_secp521r1_sha512",
    "ecdsa_sha1",
    "rsa_pkcs1_sha1",
    "rsa_pkcs1_md5_sha1",
    "rsa_pss_pss_sha256",
    "rsa_pss_pss_sha384",
    "rsa_pss_pss_sha512",
    "ed448",
];

/// A crypto provider restricted to the configured suites, curves and
/// verification schemes, and the schemes this side may sign with.
pub struct Params {
    pub provider: Arc<CryptoProvider>,
    /// `None`: every scheme the key supports.
    pub sign_schemes: Option<Arc<[SignatureScheme]>>,
}

/// Where the named lists come from: `path` is the TLS block's config path.
pub struct Names<'a> {
    pub cipher_suites: &'a [String],
    pub ecdh_curves: &'a [String],
    pub signature_algorithms: &'a [String],
}

/// Looks `name` up (case-insensitively) among what rustls implements:
/// `Ok(Some)` found, `Ok(None)` a known name rustls lacks, `Err` unknown.
fn lookup<T: Copy>(
    name: &str,
    table: &[(&str, T)],
    lacking: &[&str],
    extra: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ()> {
    if let Some((_, v)) = table.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Ok(Some(*v));
    }
    if let Some(v) = extra(name) {
        return Ok(Some(v));
    }
    if lacking.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return Ok(None);
    }
    Err(())
}

/// Resolves every name of one list, skipping those rustls lacks; errors
/// name the entry, or the list when nothing usable remains.
fn resolve<T: Copy + PartialEq>(
    names: &[String],
    field: &str,
    what: &str,
    find: impl Fn(&str) -> Result<Option<T>, ()>,
    known: &[&str],
) -> Result<Vec<T>, BuildError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in names.iter().enumerate() {
        // `[A|B]`: a BoringSSL equal-preference group; rustls has no such
        // groups, so its members keep their place in the order.
        let group = entry
            .strip_prefix('[')
            .and_then(|g| g.strip_suffix(']'))
            .unwrap_or(entry);
        for name in group.split('|').map(str::trim) {
            match find(name) {
                Ok(Some(v)) => {
                    if !out.contains(&v) {
                        out.push(v)
                    }
                }
                Ok(None) => skipped.push(name.to_string()),
                Err(()) => {
                    return Err(BuildError::new(
                        format!("{field}[{i}]"),
                        format!("unknown {what} '{name}' (known: {})", known.join(", ")),
                    ));
                }
            }
        }
    }
    if !names.is_empty() && out.is_empty() {
        return Err(BuildError::new(
            field,
            format!(
                "none of these {what}s is implemented (rustls lacks {}); usable: {}",
                skipped.join(", "),
                known.join(", ")
            ),
        ));
    }
    if !skipped.is_empty() {
        tracing::warn!(field, skipped = %skipped.join(","), "TLS {what}s rustls does not implement are skipped");
    }
    Ok(out)
}

impl Params {
    /// Builds the provider for one TLS block; `path` is its config path.
    pub fn new(n: &Names<'_>, path: &str) -> Result<Self, BuildError> {
        let mut p = rustls::crypto::ring::default_provider();
        let iana = |name: &str| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .find(|s| format!("{s:?}").eq_ignore_ascii_case(name))
        };
        let known: Vec<&str> = CIPHERS.iter().map(|(n, _)| *n).collect();
        let suites = resolve(
            n.cipher_suites,
            &format!("{path}.cipher_suites"),
            "cipher suite",
            |name| lookup(name, CIPHERS, CIPHERS_LACKING, iana),
            &known,
        )?;
        if !suites.is_empty() {
            // TLS 1.3 suites are restricted only when some are named: in
            // Envoy (BoringSSL) `cipher_suites` governs TLS 1.2 and the
            // TLS 1.3 suites stay as they are.
            let names_13 = suites.iter().any(|s| is_tls13(*s));
            let mut ordered = Vec::new();
            for s in &suites {
                if let Some(cs) = p.cipher_suites.iter().find(|c| c.suite() == *s) {
                    ordered.push(*cs);
                }
            }
            if !names_13 {
                let all13: Vec<_> = p
                    .cipher_suites
                    .iter()
                    .filter(|c| is_tls13(c.suite()))
                    .copied()
                    .collect();
                let mut all = all13;
                all.extend(ordered);
                ordered = all;
            }
            p.cipher_suites = ordered;
        }
        let known: Vec<&str> = CURVES.iter().map(|(n, _)| *n).collect();
        let curves = resolve(
            n.ecdh_curves,
            &format!("{path}.ecdh_curves"),
            "ECDH curve",
            |name| lookup(name, CURVES, CURVES_LACKING, |_| None),
            &known,
        )?;
        if !curves.is_empty() {
            let all = std::mem::take(&mut p.kx_groups);
            p.kx_groups = curves
                .iter()
                .filter_map(|c| all.iter().find(|g| g.name() == *c).copied())
                .collect();
        }
        let known: Vec<&str> = SCHEMES.iter().map(|(n, _)| *n).collect();
        let schemes = resolve(
            n.signature_algorithms,
            &format!("{path}.signature_algorithms"),
            "signature algorithm",
            |name| lookup(name, SCHEMES, SCHEMES_LACKING, |_| None),
            &known,
        )?;
        let mut sign_schemes = None;
        if !schemes.is_empty() {
            p.signature_verification_algorithms =
                verification(p.signature_verification_algorithms, &schemes);
            sign_schemes = Some(Arc::from(schemes));
        }
        Ok(Self {
            provider: Arc::new(p),
            sign_schemes,
        })
    }

    /// `key` restricted to the configured signature algorithms.
    pub fn restrict(&self, key: Arc<CertifiedKey>) -> Arc<CertifiedKey> {
        match &self.sign_schemes {
            None => key,
            Some(allowed) => Arc::new(CertifiedKey {
                cert: key.cert.clone(),
                key: Arc::new(Restricted {
                    inner: key.key.clone(),
                    allowed: allowed.clone(),
                }),
                ocsp: key.ocsp.clone(),
            }),
        }
    }
}

fn is_tls13(s: CipherSuite) -> bool {
    matches!(
        s,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

type Mapping = &'static [(
    SignatureScheme,
    &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm],
)];

/// The provider's verification algorithms with the TLS mapping limited to
/// `schemes` (this limits the `signature_algorithms` a peer is offered and
/// may sign with); chains still verify with every algorithm. rustls wants
/// a `'static` mapping: each distinct list is built once and kept (a
/// handful of lists per process, never one per reload).
fn verification(
    all: WebPkiSupportedAlgorithms,
    schemes: &[SignatureScheme],
) -> WebPkiSupportedAlgorithms {
    type Built = Vec<(Vec<SignatureScheme>, Mapping)>;
    static CACHE: OnceLock<Mutex<Built>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mapping = match cache.iter().find(|(k, _)| k == schemes) {
        Some((_, m)) => *m,
        None => {
            let v: Vec<_> = schemes
                .iter()
                .filter_map(|s| all.mapping.iter().find(|(m, _)| m == s).copied())
                .collect();
            let m: Mapping = Vec::leak(v);
            cache.push((schemes.to_vec(), m));
            m
        }
    };
    WebPkiSupportedAlgorithms {
        all: all.all,
        mapping,
    }
}

/// A signing key that signs only with the allowed schemes.
#[derive(Debug)]
struct Restricted {
    inner: Arc<dyn SigningKey>,
    allowed: Arc<[SignatureScheme]>,
}

impl SigningKey for Restricted {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let offered: Vec<_> = offered
            .iter()
            .filter(|s| self.allowed.contains(s))
            .copied()
            .collect();
        self.inner.choose_scheme(&offered)
    }
    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm()
    }
}

/// The client certificate of an upstream TLS context, always presented
/// (rustls' own resolver for this is private).
#[derive(Debug)]
pub struct ClientCert(pub Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &[&str], e: &[&str], s: &[&str]) -> (Vec<String>, Vec<String>, Vec<String>) {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        (v(c), v(e), v(s))
    }

    fn build(c: &[&str], e: &[&str], s: &[&str]) -> Result<Params, BuildError> {
        let (c, e, s) = names(c, e, s);
        Params::new(
            &Names {
                cipher_suites: &c,
                ecdh_curves: &e,
                signature_algorithms: &s,
            },
            "tls",
        )
    }

    #[test]
    fn boringssl_names_groups_and_skipped_names() {
        let p = build(
            &[
                "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "AES128-SHA",
            ],
            &["X25519", "P-256", "P-521"],
            &["ecdsa_secp256r1_sha256", "rsa_pss_rsae_sha256"],
        )
        .unwrap();
        let suites: Vec<_> = p.provider.cipher_suites.iter().map(|s| s.suite()).collect();
        // TLS 1.3 suites stay (Envoy's cipher_suites governs TLS 1.2).
        assert_eq!(suites.iter().filter(|s| is_tls13(**s)).count(), 3);
        assert_eq!(
            &suites[3..],
            [
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
        );
        let groups: Vec<_> = p.provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::X25519, NamedGroup::secp256r1]);
        let mapped: Vec<_> = p
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(
            mapped,
            [
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::RSA_PSS_SHA256
            ]
        );
        // IANA names (meshgate's own) name TLS 1.3 suites too.
        let p = build(&["TLS13_AES_128_GCM_SHA256"], &[], &[]).unwrap();
        assert_eq!(p.provider.cipher_suites.len(), 1);
    }

    #[test]
    fn nothing_usable_or_unknown_names_the_field() {
        let e = build(&["AES128-SHA", "DES-CBC3-SHA"], &[], &[])
            .err()
            .unwrap();
        assert_eq!(e.path, "tls.cipher_suites", "{e}");
        let e = build(&["ECDHE-RSA-AES128-GCM-SHA256", "NOPE"], &[], &[])
            .err()
            .unwrap();
        assert_eq!(e.path, "tls.cipher_suites[1]", "{e}");
        let e = build(&[], &["P-521"], &[]).err().unwrap();
        assert_eq!(e.path, "tls.ecdh_curves", "{e}");
        let e = build(&[], &[], &["ecdsa_sha1"]).err().unwrap();
        assert_eq!(e.path, "tls.signature_algorithms", "{e}");
    }
}
