//! TLS on rustls (ring provider, no OpenSSL): downstream termination
//! (certificates chosen by SNI, versions, cipher suites, ALPN, session
//! tickets, mTLS and the peer's identity), upstream origination, and the
//! rotation of the PEM files both read. A file that changes is picked up
//! by the next handshake after `watch_interval`; a broken file keeps the
//! previous config and is logged and counted.

use crate::config::{
    CertificateConfig, ClientValidationConfig, DownstreamTlsConfig, TlsVersion, UpstreamTlsConfig,
};
use crate::error::BuildError;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What a terminated TLS connection negotiated, for filters and logs.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    pub cipher_suite: String,
    pub alpn: Option<String>,
    pub server_name: Option<String>,
    /// Whether the session was resumed.
    pub resumed: bool,
    /// The verified client certificate's identity (mTLS).
    pub peer: Option<PeerIdentity>,
}

/// Names from a verified peer certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, e.g. a SPIFFE ID `spiffe://cluster.local/ns/a/sa/b`.
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// RFC 4514 subject, e.g. `CN=client,O=example`.
    pub subject: String,
    /// The certificate itself (DER), for filters that pass it on
    /// (ext_authz's `include_peer_certificate`).
    pub der: Vec<u8>,
    /// Hex SHA-256 of `der` (`x-forwarded-client-cert`'s `Hash=`), once
    /// per handshake rather than per request.
    pub sha256_hex: String,
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut id = PeerIdentity {
            subject: cert.subject().to_string(),
            der: der.to_vec(),
            sha256_hex: ring::digest::digest(&ring::digest::SHA256, der)
                .as_ref()
                .iter()
                .fold(String::with_capacity(64), |mut h, b| {
                    use std::fmt::Write;
                    let _ = write!(h, "{b:02x}");
                    h
                }),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uri_sans.push(u.to_string()),
                    GeneralName::DNSName(d) => id.dns_sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }
}

/// The crypto provider and signing restriction of a TLS block's
/// `cipher_suites`, `ecdh_curves` and `signature_algorithms`.
fn params(
    cipher_suites: &[String],
    ecdh_curves: &[String],
    signature_algorithms: &[String],
    path: &str,
) -> Result<crate::tls_params::Params, BuildError> {
    crate::tls_params::Params::new(
        &crate::tls_params::Names {
            cipher_suites,
            ecdh_curves,
            signature_algorithms,
        },
        path,
    )
}

fn versions(
    min: TlsVersion,
    max: TlsVersion,
    path: &str,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, BuildError> {
    if min > max {
        return Err(BuildError::new(
            format!("{path}.min_version"),
            "is above max_version",
        ));
    }
    let mut v = Vec::new();
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    Ok(v)
}

/// Where PEM data comes from: a file (watched for changes) or inline text
/// (xDS SDS secrets, or written in the config).
#[derive(Clone, Copy)]
enum Pem<'a> {
    File(&'a str),
    Inline(&'a str),
}

impl Pem<'_> {
    fn describe(&self) -> String {
        match self {
            Pem::File(f) => format!("'{f}'"),
            Pem::Inline(_) => "the inline PEM".into(),
        }
    }
}

/// Exactly one of a file path (`file_field`) and inline PEM text
/// (`file_field` + `_pem`).
fn pem_source<'a>(
    file: &'a str,
    inline: Option<&'a str>,
    field: &str,
) -> Result<Pem<'a>, BuildError> {
    match (file.is_empty(), inline) {
        (false, None) => Ok(Pem::File(file)),
        (true, Some(p)) => Ok(Pem::Inline(p)),
        (false, Some(_)) => Err(BuildError::new(
            field,
            format!("give either {f} or {f}_pem, not both", f = last(field)),
        )),
        (true, None) => Err(BuildError::new(
            field,
            format!(
                "missing: give {f} (a PEM file) or {f}_pem (PEM text)",
                f = last(field)
            ),
        )),
    }
}

fn last(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

fn load_certs(src: Pem<'_>, field: &str) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let certs: Vec<_> = match src {
        Pem::File(f) => {
            CertificateDer::pem_file_iter(f).and_then(|it| it.collect::<Result<Vec<_>, _>>())
        }
        Pem::Inline(t) => {
            CertificateDer::pem_slice_iter(t.as_bytes()).collect::<Result<Vec<_>, _>>()
        }
    }
    .map_err(|e| {
        BuildError::new(
            field,
            format!("cannot read certificates from {}: {e}", src.describe()),
        )
    })?;
    if certs.is_empty() {
        return Err(BuildError::new(
            field,
            format!("no PEM certificate in {}", src.describe()),
        ));
    }
    Ok(certs)
}

fn load_key(src: Pem<'_>, field: &str) -> Result<PrivateKeyDer<'static>, BuildError> {
    match src {
        Pem::File(f) => PrivateKeyDer::from_pem_file(f),
        Pem::Inline(t) => PrivateKeyDer::from_pem_slice(t.as_bytes()),
    }
    .map_err(|e| {
        BuildError::new(
            field,
            format!("cannot read a private key from {}: {e}", src.describe()),
        )
    })
}

fn load_roots(src: Pem<'_>, field: &str) -> Result<rustls::RootCertStore, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(src, field)? {
        roots.add(c).map_err(|e| {
            BuildError::new(
                field,
                format!("bad CA certificate in {}: {e}", src.describe()),
            )
        })?;
    }
    Ok(roots)
}

/// Whether a certificate is X.509 v1 (no extensions, so no SAN). webpki
/// accepts a v1 certificate as a trust anchor (`trusted_ca`), never as a
/// peer's end-entity or intermediate certificate.
pub fn is_x509_v1(der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.version() == X509Version::V1)
}

/// The chain and key of a certificate config.
fn cert_and_key(
    c: &CertificateConfig,
    path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BuildError> {
    let cf = format!("{path}.certificate_chain");
    let kf = format!("{path}.private_key");
    let certs = load_certs(
        pem_source(
            &c.certificate_chain,
            c.certificate_chain_pem.as_deref(),
            &cf,
        )?,
        &cf,
    )?;
    let key = load_key(
        pem_source(&c.private_key, c.private_key_pem.as_deref(), &kf)?,
        &kf,
    )?;
    if is_x509_v1(&certs[0]) {
        // Served as is (OpenSSL and BoringSSL peers take it), but a peer
        // verifying with webpki (rustls, meshgate itself) refuses it.
        let src = pem_source(
            &c.certificate_chain,
            c.certificate_chain_pem.as_deref(),
            &cf,
        )?;
        tracing::warn!(
            field = %cf,
            file = %src.describe(),
            "X.509 v1 certificate: peers verifying with webpki (rustls) refuse it (UnsupportedCertVersion); ask the CA for a v3 certificate"
        );
    }
    Ok((certs, key))
}

fn certified_key(
    c: &CertificateConfig,
    path: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, BuildError> {
    let (certs, key) = cert_and_key(c, path)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| BuildError::new(format!("{path}.private_key"), e.to_string()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        BuildError::new(
            format!("{path}.private_key"),
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(ck))
}

/// Chooses a certificate by SNI: an exact SAN, then a wildcard SAN, then
/// the first certificate (unless `require_sni_match`).
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            if let Some((_, k)) = self.certs.iter().find(|(ns, _)| ns.contains(&sni)) {
                return Some(k.clone());
            }
            if let Some((_, rest)) = sni.split_once('.') {
                let wild = format!("*.{rest}");
                if let Some((_, k)) = self.certs.iter().find(|(ns, _)| ns.contains(&wild)) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// DNS names (SANs, lower-cased) a certificate is valid for.
fn cert_names(der: &[u8]) -> Vec<String> {
    PeerIdentity::from_der(der)
        .map(|id| id.dns_sans.iter().map(|n| n.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// Files whose modification times decide when to rebuild.
struct Watched {
    files: Vec<PathBuf>,
    stamps: Vec<Option<SystemTime>>,
    next_check: Instant,
}

impl Watched {
    fn new(files: Vec<PathBuf>) -> Self {
        let stamps = files.iter().map(mtime).collect();
        Self {
            files,
            stamps,
            next_check: Instant::now(),
        }
    }

    /// Whether any file changed since the last call that said so.
    fn changed(&mut self) -> bool {
        let now: Vec<_> = self.files.iter().map(mtime).collect();
        if now != self.stamps {
            self.stamps = now;
            return true;
        }
        false
    }
}

fn mtime(f: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(f).and_then(|m| m.modified()).ok()
}

/// A downstream TLS terminator of one filter chain.
pub struct DownstreamTls {
    pub require_sni_match: bool,
    pub handshake_timeout: Duration,
    /// Shared with the blocking task that re-reads the files.
    certs: Arc<Certificates>,
}

/// The served config and what rebuilding it from the files takes.
struct Certificates {
    cfg: DownstreamTlsConfig,
    path: String,
    current: ArcSwap<rustls::ServerConfig>,
    watched: Mutex<Watched>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

impl DownstreamTls {
    /// Builds from config; `path` is the config path for errors (e.g.
    /// `listeners[0].filter_chains[1].tls`).
    pub fn new(cfg: &DownstreamTlsConfig, path: &str) -> Result<Self, BuildError> {
        let ticketer =
            if cfg.session_tickets {
                Some(rustls::crypto::ring::Ticketer::new().map_err(|e| {
                    BuildError::new(format!("{path}.session_tickets"), e.to_string())
                })?)
            } else {
                None
            };
        let sessions: Arc<dyn rustls::server::StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(4096);
        let mut files = Vec::new();
        for c in &cfg.certificates {
            files.push(PathBuf::from(&c.certificate_chain));
            files.push(PathBuf::from(&c.private_key));
        }
        if let Some(v) = &cfg.client_validation {
            files.push(PathBuf::from(&v.trusted_ca));
        }
        // Inline PEM has no file to watch: it changes with a new snapshot.
        files.retain(|f| !f.as_os_str().is_empty());
        let me = Self {
            require_sni_match: cfg.require_sni_match,
            handshake_timeout: cfg.handshake_timeout,
            certs: Arc::new(Certificates {
                cfg: cfg.clone(),
                path: path.to_string(),
                current: ArcSwap::from_pointee(build_server_config(
                    cfg,
                    path,
                    ticketer.clone(),
                    sessions.clone(),
                )?),
                watched: Mutex::new(Watched::new(files)),
                ticketer,
                sessions,
            }),
        };
        Ok(me)
    }

    /// The config for the next handshake. At most every `watch_interval`
    /// the files are checked, and rebuilt when one changed, on the blocking
    /// pool: a stat and a file read must not hold up the worker thread
    /// that is handshaking (nor, on the current-thread runtime, every
    /// connection). The handshake that triggered the check gets the config
    /// of the moment; a rebuilt one serves the handshakes after it.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs = &self.certs;
        if !certs.cfg.watch_interval.is_zero()
            && let Ok(mut w) = certs.watched.try_lock()
            && Instant::now() >= w.next_check
        {
            w.next_check = Instant::now() + certs.cfg.watch_interval;
            drop(w);
            let certs = certs.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || certs.reload_if_changed());
                }
                // Outside a runtime (tools, unit tests) there is no worker
                // to protect.
                Err(_) => certs.reload_if_changed(),
            }
        }
        self.certs.current.load_full()
    }
}

impl Certificates {
    /// Rebuilds the served config if a watched file changed. Blocking:
    /// stats and reads files.
    fn reload_if_changed(&self) {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if !w.changed() {
            return;
        }
        match build_server_config(
            &self.cfg,
            &self.path,
            self.ticketer.clone(),
            self.sessions.clone(),
        ) {
            Ok(c) => {
                tracing::info!(chain = %self.path, "TLS certificates reloaded");
                metrics::counter!(crate::metrics::names::TLS_CERTIFICATE_RELOAD_TOTAL, "result" => "ok")
                    .increment(1);
                self.current.store(Arc::new(c));
            }
            Err(e) => {
                tracing::warn!(chain = %self.path, error = %e, "TLS certificate reload failed; keeping the previous certificates");
                metrics::counter!(crate::metrics::names::TLS_CERTIFICATE_RELOAD_TOTAL, "result" => "error")
                    .increment(1);
            }
        }
    }
}

fn build_server_config(
    cfg: &DownstreamTlsConfig,
    path: &str,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
) -> Result<rustls::ServerConfig, BuildError> {
    if cfg.certificates.is_empty() {
        return Err(BuildError::new(
            format!("{path}.certificates"),
            "needs at least one certificate",
        ));
    }
    let params = params(
        &cfg.cipher_suites,
        &cfg.ecdh_curves,
        &cfg.signature_algorithms,
        path,
    )?;
    let provider = params.provider.clone();
    let mut certs = Vec::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        let ck = params.restrict(certified_key(
            c,
            &format!("{path}.certificates[{i}]"),
            &provider,
        )?);
        let names = cert_names(ck.end_entity_cert().map(|c| c.as_ref()).unwrap_or(&[]));
        certs.push((names, ck));
    }
    let default = (!cfg.require_sni_match).then(|| certs[0].1.clone());
    let resolver = Arc::new(SniResolver { certs, default });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(cfg.min_version, cfg.max_version, path)?)
        .map_err(|e| BuildError::new(format!("{path}.cipher_suites"), e.to_string()))?;
    let builder = match &cfg.client_validation {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(client_verifier(v, path, provider)?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = cfg
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.session_storage = if cfg.session_cache {
        sessions
    } else {
        Arc::new(rustls::server::NoServerSessionStorage {})
    };
    match ticketer {
        Some(t) => config.ticketer = t,
        None => config.send_tls13_tickets = 0,
    }
    Ok(config)
}

fn client_verifier(
    v: &ClientValidationConfig,
    path: &str,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, BuildError> {
    let field = format!("{path}.client_validation.trusted_ca");
    let roots = load_roots(
        pem_source(&v.trusted_ca, v.trusted_ca_pem.as_deref(), &field)?,
        &field,
    )?;
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = if v.required {
        b
    } else {
        b.allow_unauthenticated()
    };
    let inner = b
        .build()
        .map_err(|e| BuildError::new(field, e.to_string()))?;
    if v.match_subject_alt_names.is_empty() {
        return Ok(inner);
    }
    let sans = crate::tls_san::SanMatchers::new(
        &v.match_subject_alt_names,
        &format!("{path}.client_validation.match_subject_alt_names"),
    )?;
    Ok(Arc::new(crate::tls_san::SanClientVerifier { inner, sans }))
}

/// Why a downstream handshake failed, as a metric label.
pub fn handshake_error_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            _ => "io",
        };
    };
    match re {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "not_tls",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer => "unknown_ca",
            // An X.509 v1 client certificate (webpki wants v3).
            CertificateError::Other(o) if o.to_string().contains("UnsupportedCertVersion") => {
                "unsupported_certificate_version"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired_certificate"
            }
            _ => "bad_certificate",
        },
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoApplicationProtocol => "no_application_protocol",
        Error::General(_) => "no_certificate_for_sni",
        Error::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// A TLS 1.2 `certificate_required` alert in a plaintext record: rustls
/// sends it when a client presents no certificate to a chain that requires
/// one, but that alert exists only in TLS 1.3 (RFC 8446 section 6.2); TLS
/// 1.2 clients expect `handshake_failure` (RFC 5246 section 7.4.6). A TLS
/// 1.3 alert after the ServerHello is encrypted, so this plaintext record
/// can only be a TLS 1.2 one.
const TLS12_CERTIFICATE_REQUIRED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 116];
/// The alert description `handshake_failure`.
const HANDSHAKE_FAILURE: u8 = 40;

/// The downstream byte stream under a TLS handshake: while armed it turns
/// the TLS 1.2 `certificate_required` alert rustls writes into
/// `handshake_failure` (`TLS12_CERTIFICATE_REQUIRED`). Disarmed once the
/// handshake succeeded, it only passes bytes through.
pub struct HandshakeIo<T> {
    inner: T,
    armed: bool,
}

impl<T> HandshakeIo<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, armed: true }
    }

    /// The handshake is over: nothing more to rewrite.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HandshakeIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HandshakeIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.armed && buf.starts_with(&TLS12_CERTIFICATE_REQUIRED) {
            let mut alert = TLS12_CERTIFICATE_REQUIRED;
            alert[6] = HANDSHAKE_FAILURE;
            // Same length: the count written is the caller's.
            return std::pin::Pin::new(&mut this.inner).poll_write(cx, &alert);
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.armed
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && first.starts_with(&TLS12_CERTIFICATE_REQUIRED)
        {
            return std::pin::Pin::new(this).poll_write(cx, first);
        }
        std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Upstream TLS of one cluster.
pub struct UpstreamTls {
    config: Arc<rustls::ClientConfig>,
    sni: Option<ServerName<'static>>,
}

impl UpstreamTls {
    pub fn new(cfg: &UpstreamTlsConfig, path: &str) -> Result<Self, BuildError> {
        let params = params(
            &cfg.cipher_suites,
            &cfg.ecdh_curves,
            &cfg.signature_algorithms,
            path,
        )?;
        let provider = params.provider.clone();
        let ca_field = format!("{path}.trusted_ca");
        let roots = match (&cfg.trusted_ca, &cfg.trusted_ca_pem) {
            (Some(_), Some(_)) => {
                return Err(BuildError::new(
                    ca_field,
                    "give either trusted_ca or trusted_ca_pem, not both",
                ));
            }
            (Some(f), None) => load_roots(Pem::File(f), &ca_field)?,
            (None, Some(p)) => load_roots(Pem::Inline(p), &ca_field)?,
            (None, None) => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(cfg.min_version, TlsVersion::Tls13, path)?)
            .map_err(|e| BuildError::new(format!("{path}.min_version"), e.to_string()))?;
        let builder = if cfg.match_subject_alt_names.is_empty() {
            builder.with_root_certificates(roots)
        } else {
            let sans = crate::tls_san::SanMatchers::new(
                &cfg.match_subject_alt_names,
                &format!("{path}.match_subject_alt_names"),
            )?;
            // The chain is verified as webpki does; the SAN matchers
            // replace the host name check (`tls_san`).
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls_san::SanServerVerifier {
                    roots: Arc::new(roots),
                    provider: provider.clone(),
                    sans,
                }))
        };
        let mut config = match &cfg.client_certificate {
            None => builder.with_no_client_auth(),
            Some(c) if params.sign_schemes.is_some() => {
                let p = format!("{path}.client_certificate");
                let ck = params.restrict(certified_key(c, &p, &provider)?);
                builder.with_client_cert_resolver(Arc::new(crate::tls_params::ClientCert(ck)))
            }
            Some(c) => {
                let p = format!("{path}.client_certificate");
                let (certs, key) = cert_and_key(c, &p)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| BuildError::new(p, e.to_string()))?
            }
        };
        config.alpn_protocols = cfg
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let sni = match &cfg.sni {
            None => None,
            Some(s) => Some(ServerName::try_from(s.clone()).map_err(|_| {
                BuildError::new(format!("{path}.sni"), format!("invalid server name '{s}'"))
            })?),
        };
        Ok(Self {
            config: Arc::new(config),
            sni,
        })
    }

    /// Whether ALPN offers `h2` (the upstream is then expected to speak
    /// HTTP/2 when it agrees).
    pub fn offers_h2(&self) -> bool {
        self.config.alpn_protocols.iter().any(|p| p == b"h2")
    }

    /// The SNI for a handshake: the configured one, else `authority` (a
    /// host name from the request), else the endpoint's IP.
    fn server_name(
        &self,
        authority: Option<&str>,
        endpoint: std::net::SocketAddr,
    ) -> ServerName<'static> {
        match (&self.sni, authority) {
            (Some(s), _) => s.clone(),
            (None, Some(a)) => {
                let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a);
                ServerName::try_from(host.to_string())
                    .unwrap_or_else(|_| ServerName::IpAddress(endpoint.ip().into()))
            }
            (None, None) => ServerName::IpAddress(endpoint.ip().into()),
        }
    }

    /// The SNI as the string quinn's `connect` takes.
    pub fn server_name_for(
        &self,
        authority: Option<&str>,
        endpoint: std::net::SocketAddr,
    ) -> String {
        match self.server_name(authority, endpoint) {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(ip).to_string(),
            _ => endpoint.ip().to_string(),
        }
    }

    /// A QUIC client config from this TLS (TLS 1.3, ALPN `h3`), for HTTP/3
    /// upstreams.
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, QuicTlsError> {
        let mut c = (*self.config).clone();
        c.alpn_protocols = vec![b"h3".to_vec()];
        let q = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(c))?;
        Ok(quinn::ClientConfig::new(Arc::new(q)))
    }

    /// Handshakes over `io`; the SNI is the configured one, else `authority`
    /// (a host name from the request), else the endpoint's IP.
    pub async fn connect<IO>(
        &self,
        io: IO,
        authority: Option<&str>,
        endpoint: std::net::SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = self.server_name(authority, endpoint);
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
    }
}

/// A TLS config QUIC cannot use: QUIC needs TLS 1.3 with
/// TLS13_AES_128_GCM_SHA256 (RFC 9001 section 5.2, its Initial packets).
#[derive(Debug, thiserror::Error)]
#[error("{source} (QUIC needs TLS 1.3 with TLS13_AES_128_GCM_SHA256)")]
pub struct QuicTlsError {
    #[from]
    source: quinn::crypto::rustls::NoInitialCipherSuite,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X.509 v1: a v1 root CA is a trust anchor (a v3 certificate it
    /// issued verifies); a v1 end-entity certificate is refused by webpki,
    /// and the handshake failure is labelled as such.
    #[test]
    fn x509_v1_root_verifies_a_v1_leaf_is_refused_by_name() {
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/certs");
        let file = |n: &str| certs.join(n).to_string_lossy().into_owned();
        let roots = load_roots(Pem::File(&file("v1-ca.pem")), "t.trusted_ca").unwrap();
        let v = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let one = |n: &str| load_certs(Pem::File(&file(n)), "t").unwrap().remove(0);
        assert!(
            v.verify_client_cert(&one("v1-issued.pem"), &[], now)
                .is_ok()
        );
        let leaf = one("v1-leaf.pem");
        assert!(is_x509_v1(&leaf) && !is_x509_v1(&one("v1-issued.pem")));
        let e = v.verify_client_cert(&leaf, &[], now).unwrap_err();
        let io = std::io::Error::other(e);
        assert_eq!(
            handshake_error_reason(&io),
            "unsupported_certificate_version"
        );
    }

    /// A changed certificate is re-read on the blocking pool, not by the
    /// handshake that noticed the change. The new certificate file is a
    /// FIFO nobody writes yet, so reading it blocks: `server_config`, on a
    /// current-thread runtime (meshgate's `--concurrency 1`, where a
    /// blocked worker is every connection), still answers at once with the
    /// config of the moment, and the rebuilt config is served once the
    /// file can be read.
    #[test]
    fn a_changed_certificate_is_read_off_the_worker() {
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/certs");
        let dir = std::env::temp_dir().join(format!("mg-tls-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = (dir.join("live.pem"), dir.join("live.key"));
        std::fs::copy(certs.join("server.pem"), &crt).unwrap();
        std::fs::copy(certs.join("server.key"), &key).unwrap();
        let cfg: DownstreamTlsConfig = serde_json::from_value(serde_json::json!({
            "certificates": [{"certificate_chain": crt, "private_key": key}],
            "watch_interval": "1ms",
        }))
        .unwrap();
        let tls = Arc::new(DownstreamTls::new(&cfg, "t").unwrap());
        let first = tls.certs.current.load_full();
        std::fs::remove_file(&crt).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&crt).status();
        assert!(made.is_ok_and(|s| s.success()));

        let (tx, rx) = std::sync::mpsc::channel();
        let (on_worker, old) = (tls.clone(), first.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Handshakes until one has started the reload (which holds
                // the watched files while it reads them).
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let served = on_worker.server_config();
                    if on_worker.certs.watched.try_lock().is_err() || Instant::now() > deadline {
                        let _ = tx.send(Arc::ptr_eq(&served, &old));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        });
        let answered = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(answered, Ok(true), "server_config blocked the worker");
        assert!(
            tls.certs.watched.try_lock().is_err(),
            "no reload is waiting on the file"
        );
        // Open the FIFO's other end: the reload reads the certificate and
        // the rebuilt config is served.
        std::fs::write(&crt, std::fs::read(certs.join("server.pem")).unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::ptr_eq(&tls.certs.current.load_full(), &first) {
            assert!(Instant::now() < deadline, "the rebuilt config never came");
            std::thread::yield_now();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
