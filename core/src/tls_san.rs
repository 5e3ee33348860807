//! Subject-alternative-name matching of a peer certificate (Envoy's
//! `match_typed_subject_alt_names` / `match_subject_alt_names`): after the
//! chain verified, at least one SAN of the peer's certificate must match
//! one matcher. Upstream, the matchers replace the host name check (as in
//! Envoy, where a SPIFFE URI is the identity, not the SNI).

use crate::error::BuildError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which SAN a matcher looks at (Envoy's `SubjectAltNameMatcher.san_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// One SAN matcher: the SAN type (absent: any type, Envoy's legacy
/// `match_subject_alt_names`) and exactly one of the string patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SanMatcherConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_type: Option<SanType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// A full-match regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

#[derive(Debug)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

/// Compiled matchers; empty matches every certificate.
#[derive(Debug, Default)]
pub struct SanMatchers(Vec<(Option<SanType>, Pattern, bool)>);

impl SanMatchers {
    /// Compiles `cfg`; `field` names the list in errors.
    pub fn new(cfg: &[SanMatcherConfig], field: &str) -> Result<Self, BuildError> {
        let mut out = Vec::with_capacity(cfg.len());
        for (i, m) in cfg.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let lc = |s: &String| {
                if m.ignore_case {
                    s.to_ascii_lowercase()
                } else {
                    s.clone()
                }
            };
            let mut pats = Vec::new();
            if let Some(s) = &m.exact {
                pats.push(Pattern::Exact(lc(s)));
            }
            if let Some(s) = &m.prefix {
                pats.push(Pattern::Prefix(lc(s)));
            }
            if let Some(s) = &m.suffix {
                pats.push(Pattern::Suffix(lc(s)));
            }
            if let Some(s) = &m.contains {
                pats.push(Pattern::Contains(lc(s)));
            }
            if let Some(r) = &m.safe_regex {
                let re = regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| BuildError::new(format!("{f}.safe_regex"), e.to_string()))?;
                pats.push(Pattern::Regex(re));
            }
            if pats.len() != 1 {
                return Err(BuildError::new(
                    f,
                    "give exactly one of exact, prefix, suffix, contains, safe_regex",
                ));
            }
            out.push((m.san_type, pats.remove(0), m.ignore_case));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a SAN of the certificate `der` matches one matcher.
    pub fn matches(&self, der: &[u8]) -> bool {
        use x509_parser::prelude::*;
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return false;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        let sans: Vec<(SanType, String)> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((SanType::Dns, d.to_string())),
                GeneralName::URI(u) => Some((SanType::Uri, u.to_string())),
                GeneralName::RFC822Name(e) => Some((SanType::Email, e.to_string())),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    ip.map(|ip| (SanType::IpAddress, ip.to_string()))
                }
                _ => None,
            })
            .collect();
        self.0.iter().any(|(ty, pat, ic)| {
            sans.iter().any(|(t, v)| {
                if ty.is_some_and(|ty| ty != *t) {
                    return false;
                }
                let v = if *ic {
                    v.to_ascii_lowercase()
                } else {
                    v.clone()
                };
                match pat {
                    Pattern::Exact(p) => v == *p,
                    Pattern::Prefix(p) => v.starts_with(p.as_str()),
                    Pattern::Suffix(p) => v.ends_with(p.as_str()),
                    Pattern::Contains(p) => v.contains(p.as_str()),
                    Pattern::Regex(r) => r.is_match(&v),
                }
            })
        })
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        if self.matches(end_entity.as_ref()) {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }
}

/// An upstream verifier: the chain against the trusted CAs, then the SAN
/// matchers instead of the host name.
#[derive(Debug)]
pub struct SanServerVerifier {
    pub roots: Arc<rustls::RootCertStore>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    pub sans: SanMatchers,
}

impl ServerCertVerifier for SanServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.sans.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A downstream verifier: webpki's, then the SAN matchers.
#[derive(Debug)]
pub struct SanClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub sans: SanMatchers,
}

impl ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.sans.check(end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(name: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/certs")
            .join(name);
        CertificateDer::from_pem_file(p).unwrap().to_vec()
    }

    #[test]
    fn typed_and_untyped_matchers() {
        let client = der("client.pem");
        let m = |v: serde_json::Value| {
            let c: Vec<SanMatcherConfig> = serde_json::from_value(v).unwrap();
            SanMatchers::new(&c, "m").unwrap()
        };
        let spiffe = "spiffe://meshgate.test/ns/default/sa/client";
        assert!(m(serde_json::json!([{"san_type": "uri", "exact": spiffe}])).matches(&client));
        assert!(!m(serde_json::json!([{"san_type": "dns", "exact": spiffe}])).matches(&client));
        assert!(m(serde_json::json!([{"prefix": "spiffe://meshgate.test/"}])).matches(&client));
        assert!(
            m(serde_json::json!([{"safe_regex": "spiffe://[a-z.]+/ns/default/sa/.*"}]))
                .matches(&client)
        );
        assert!(!m(serde_json::json!([{"exact": "spiffe://other"}])).matches(&client));
        let two: Vec<SanMatcherConfig> =
            serde_json::from_value(serde_json::json!([{"exact": "a", "prefix": "b"}])).unwrap();
        assert_eq!(SanMatchers::new(&two, "m").unwrap_err().path, "m[0]");
    }
}
