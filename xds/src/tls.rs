//! TLS from xDS: `Secret` resources (SDS) and the `envoy.transport_sockets.tls`
//! transport sockets of listeners (`DownstreamTlsContext`) and clusters
//! (`UpstreamTlsContext`), translated into core's TLS config (inline PEM
//! or file paths). Certificates and trust come inline or from SDS secrets
//! over the same ADS stream; a context whose secrets have not arrived yet
//! leaves the listener or cluster warming. Every field meshgate does not
//! implement (SAN matching, CRLs, OCSP, key providers, ...) is refused by
//! name: ignoring a validation rule would silently weaken security.

use crate::translate::{R, ads_source, err, join, rest, wrap};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
use meshgate_core::config::{
    CertificateConfig, ClientValidationConfig, DownstreamTlsConfig, TlsVersion, UpstreamTlsConfig,
};
use meshgate_core::tls_san::{SanMatcherConfig, SanType};
use serde_json::json;
use std::collections::BTreeSet;

pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// PEM data: a file on this host, or inline text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(String),
    Inline(String),
}

/// A translated SDS secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    Certificate(CertificateConfig),
    /// A validation context: trusted CAs and SAN matchers.
    Validation(Validation),
}

/// Looks up an accepted secret by name.
pub type Secrets<'a> = &'a dyn Fn(&str) -> Option<Secret>;

pub fn secret(s: tlsv3::Secret) -> Result<Secret, crate::translate::TranslateError> {
    let name = s.name.clone();
    wrap("Secret", &name, secret_inner(s))
}

fn secret_inner(mut s: tlsv3::Secret) -> R<Secret> {
    s.name.clear();
    let out = match s.r#type.take() {
        Some(tlsv3::secret::Type::TlsCertificate(c)) => {
            Secret::Certificate(tls_certificate(c, "tls_certificate")?)
        }
        Some(tlsv3::secret::Type::ValidationContext(v)) => {
            let v = validation_context(v, "validation_context")?;
            if v.ca.is_none() {
                return err("validation_context.trusted_ca", "missing");
            }
            Secret::Validation(v)
        }
        Some(tlsv3::secret::Type::SessionTicketKeys(_)) => {
            return err(
                "session_ticket_keys",
                "not supported (meshgate rotates its own session ticket keys)",
            );
        }
        Some(tlsv3::secret::Type::GenericSecret(_)) => {
            return err("generic_secret", "not supported");
        }
        None => {
            return err(
                "type",
                "missing: want tls_certificate or validation_context",
            );
        }
    };
    rest(&s, "")?;
    Ok(out)
}

fn data_source(d: Option<core3::DataSource>, path: &str) -> R<Pem> {
    let Some(mut d) = d else {
        return err(path, "missing");
    };
    use core3::data_source::Specifier;
    let pem = match d.specifier.take() {
        Some(Specifier::Filename(f)) if !f.is_empty() => Pem::File(f),
        Some(Specifier::InlineString(s)) => Pem::Inline(s),
        Some(Specifier::InlineBytes(b)) => match String::from_utf8(b) {
            Ok(s) => Pem::Inline(s),
            Err(_) => return err(join(path, "inline_bytes"), "not PEM text (not UTF-8)"),
        },
        Some(Specifier::EnvironmentVariable(_)) => {
            return err(
                join(path, "environment_variable"),
                "not supported (filename, inline_bytes, inline_string)",
            );
        }
        _ => return err(path, "empty data source"),
    };
    rest(&d, path)?;
    Ok(pem)
}

fn tls_certificate(mut c: tlsv3::TlsCertificate, path: &str) -> R<CertificateConfig> {
    let chain = data_source(c.certificate_chain.take(), &join(path, "certificate_chain"))?;
    let key = data_source(c.private_key.take(), &join(path, "private_key"))?;
    rest(&c, path)?;
    let mut out = CertificateConfig::default();
    match chain {
        Pem::File(f) => out.certificate_chain = f,
        Pem::Inline(p) => out.certificate_chain_pem = Some(p),
    }
    match key {
        Pem::File(f) => out.private_key = f,
        Pem::Inline(p) => out.private_key_pem = Some(p),
    }
    Ok(out)
}

/// What a `CertificateValidationContext` gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    /// Absent only in a `combined_validation_context`'s default context
    /// (its SDS secret gives it).
    pub ca: Option<Pem>,
    pub sans: Vec<SanMatcherConfig>,
}

fn validation_context(mut v: tlsv3::CertificateValidationContext, path: &str) -> R<Validation> {
    let ca = match v.trusted_ca.take() {
        None => None,
        Some(d) => Some(data_source(Some(d), &join(path, "trusted_ca"))?),
    };
    let mut sans = Vec::new();
    for (i, m) in std::mem::take(&mut v.match_typed_subject_alt_names)
        .into_iter()
        .enumerate()
    {
        sans.push(san_matcher(
            m,
            &format!("{path}.match_typed_subject_alt_names[{i}]"),
        )?);
    }
    #[allow(deprecated)]
    let legacy = std::mem::take(&mut v.match_subject_alt_names);
    for (i, m) in legacy.into_iter().enumerate() {
        // The deprecated form: any SAN type.
        sans.push(string_matcher(
            m,
            None,
            &format!("{path}.match_subject_alt_names[{i}]"),
        )?);
    }
    rest(&v, path)?;
    Ok(Validation { ca, sans })
}

fn san_matcher(mut m: tlsv3::SubjectAltNameMatcher, path: &str) -> R<SanMatcherConfig> {
    use tlsv3::subject_alt_name_matcher::SanType as T;
    let ty = match T::try_from(m.san_type) {
        Ok(T::Dns) => SanType::Dns,
        Ok(T::Uri) => SanType::Uri,
        Ok(T::Email) => SanType::Email,
        Ok(T::IpAddress) => SanType::IpAddress,
        Ok(T::OtherName) => {
            return err(join(path, "san_type"), "OTHER_NAME is not supported");
        }
        _ => {
            return err(
                join(path, "san_type"),
                "required (DNS, URI, EMAIL, IP_ADDRESS)",
            );
        }
    };
    m.san_type = 0;
    let Some(sm) = m.matcher.take() else {
        return err(join(path, "matcher"), "required");
    };
    let out = string_matcher(sm, Some(ty), &join(path, "matcher"))?;
    rest(&m, path)?;
    Ok(out)
}

fn string_matcher(
    m: envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
    ty: Option<SanType>,
    path: &str,
) -> R<SanMatcherConfig> {
    let c = crate::http_filters::string_matcher(m, path)?;
    Ok(SanMatcherConfig {
        san_type: ty,
        exact: c.exact,
        prefix: c.prefix,
        suffix: c.suffix,
        contains: c.contains,
        safe_regex: c.safe_regex.map(|r| r.regex),
        ignore_case: c.ignore_case,
    })
}

/// A secret named by an `SdsSecretConfig`, which must come over ADS.
fn sds_name(mut s: tlsv3::SdsSecretConfig, path: &str) -> R<String> {
    let name = std::mem::take(&mut s.name);
    if name.is_empty() {
        return err(join(path, "name"), "empty secret name");
    }
    ads_source(s.sds_config.take(), &join(path, "sds_config"))?;
    rest(&s, path)?;
    Ok(name)
}

fn version(v: i32, path: &str) -> R<Option<TlsVersion>> {
    use tlsv3::tls_parameters::TlsProtocol as P;
    match P::try_from(v) {
        Ok(P::TlsAuto) => Ok(None),
        Ok(P::TlSv12) => Ok(Some(TlsVersion::Tls12)),
        Ok(P::TlSv13) => Ok(Some(TlsVersion::Tls13)),
        Ok(old @ (P::TlSv10 | P::TlSv11)) => err(
            path,
            format!(
                "{} is not supported: meshgate (rustls) speaks TLS 1.2 and 1.3 only; \
                 use TLSv1_2 or TLS_AUTO",
                old.as_str_name()
            ),
        ),
        Err(_) => err(path, format!("unknown TLS protocol version {v}")),
    }
}

/// What a `CommonTlsContext` gives, secrets resolved where known.
#[derive(Default)]
struct Common {
    certificates: Vec<CertificateConfig>,
    trusted_ca: Option<Pem>,
    sans: Vec<SanMatcherConfig>,
    /// A validation context is configured (its SDS secret may be unknown yet).
    validates: bool,
    alpn: Vec<String>,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
    /// `tls_params`, mapped onto rustls by core (`tls_params`).
    cipher_suites: Vec<String>,
    ecdh_curves: Vec<String>,
    signature_algorithms: Vec<String>,
}

fn common(
    c: Option<tlsv3::CommonTlsContext>,
    path: &str,
    secrets: Secrets<'_>,
    sds: &mut BTreeSet<String>,
) -> R<Common> {
    let Some(mut c) = c else {
        return Ok(Common::default());
    };
    let mut out = Common::default();
    if let Some(mut p) = c.tls_params.take() {
        let pp = join(path, "tls_params");
        out.min = version(
            std::mem::take(&mut p.tls_minimum_protocol_version),
            &join(&pp, "tls_minimum_protocol_version"),
        )?;
        out.max = version(
            std::mem::take(&mut p.tls_maximum_protocol_version),
            &join(&pp, "tls_maximum_protocol_version"),
        )?;
        out.cipher_suites = std::mem::take(&mut p.cipher_suites);
        out.ecdh_curves = std::mem::take(&mut p.ecdh_curves);
        out.signature_algorithms = std::mem::take(&mut p.signature_algorithms);
        // The names are checked here, with this path, not only when the
        // snapshot is built: a set rustls cannot serve is NACKed by field.
        meshgate_core::tls_params::Params::new(
            &meshgate_core::tls_params::Names {
                cipher_suites: &out.cipher_suites,
                ecdh_curves: &out.ecdh_curves,
                signature_algorithms: &out.signature_algorithms,
            },
            &pp,
        )
        .map_err(|e| (e.path, e.message))?;
        rest(&p, &pp)?;
    }
    for (i, t) in std::mem::take(&mut c.tls_certificates)
        .into_iter()
        .enumerate()
    {
        out.certificates.push(tls_certificate(
            t,
            &format!("{path}.tls_certificates[{i}]"),
        )?);
    }
    for (i, s) in std::mem::take(&mut c.tls_certificate_sds_secret_configs)
        .into_iter()
        .enumerate()
    {
        let p = format!("{path}.tls_certificate_sds_secret_configs[{i}]");
        let name = sds_name(s, &p)?;
        sds.insert(name.clone());
        match secrets(&name) {
            None => {}
            Some(Secret::Certificate(cert)) => out.certificates.push(cert),
            Some(Secret::Validation(_)) => {
                return err(
                    p,
                    format!("secret '{name}' is a validation_context, not a tls_certificate"),
                );
            }
        }
    }
    use tlsv3::common_tls_context::ValidationContextType as V;
    out.validates = c.validation_context_type.is_some();
    match c.validation_context_type.take() {
        None => {}
        Some(V::ValidationContext(v)) => {
            let vp = join(path, "validation_context");
            let v = validation_context(v, &vp)?;
            if v.ca.is_none() {
                return err(
                    join(&vp, "trusted_ca"),
                    "missing (meshgate always verifies the peer's chain)",
                );
            }
            out.trusted_ca = v.ca;
            out.sans = v.sans;
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let p = join(path, "validation_context_sds_secret_config");
            let name = sds_name(s, &p)?;
            sds.insert(name.clone());
            match secrets(&name) {
                None => {}
                Some(Secret::Validation(v)) => {
                    out.trusted_ca = v.ca;
                    out.sans = v.sans;
                }
                Some(Secret::Certificate(_)) => {
                    return err(
                        p,
                        format!("secret '{name}' is a tls_certificate, not a validation_context"),
                    );
                }
            }
        }
        Some(V::CombinedValidationContext(mut cv)) => {
            // Envoy merges the SDS secret's context over the default one:
            // the secret's trusted CA wins, SAN matchers come from both
            // (a set secret list replaces the default's, as a proto merge
            // appends; meshgate appends too).
            let cp = join(path, "combined_validation_context");
            let dv = match cv.default_validation_context.take() {
                None => Validation::default(),
                Some(d) => validation_context(d, &join(&cp, "default_validation_context"))?,
            };
            let sp = join(&cp, "validation_context_sds_secret_config");
            let Some(s) = cv.validation_context_sds_secret_config.take() else {
                return err(sp, "required");
            };
            rest(&cv, &cp)?;
            let name = sds_name(s, &sp)?;
            sds.insert(name.clone());
            out.trusted_ca = dv.ca;
            out.sans = dv.sans;
            match secrets(&name) {
                None => {}
                Some(Secret::Validation(v)) => {
                    out.trusted_ca = v.ca.or(out.trusted_ca.take());
                    out.sans.extend(v.sans);
                }
                Some(Secret::Certificate(_)) => {
                    return err(
                        sp,
                        format!("secret '{name}' is a tls_certificate, not a validation_context"),
                    );
                }
            }
        }
        Some(_) => {
            return err(
                join(path, "validation_context_certificate_provider"),
                "certificate providers are not supported",
            );
        }
    }
    out.alpn = std::mem::take(&mut c.alpn_protocols);
    rest(&c, path)?;
    Ok(out)
}

/// The `DownstreamTlsContext` of a filter chain's transport socket. Names
/// of the SDS secrets it uses go to `sds`; while one is unknown the result
/// is incomplete and must not be served (the listener warms).
pub fn downstream(
    ts: core3::TransportSocket,
    path: &str,
    secrets: Secrets<'_>,
    sds: &mut BTreeSet<String>,
) -> R<DownstreamTlsConfig> {
    let (mut d, tp): (tlsv3::DownstreamTlsContext, String) = socket(ts, path, DOWNSTREAM)?;
    let c = common(
        d.common_tls_context.take(),
        &join(&tp, "common_tls_context"),
        secrets,
        sds,
    )?;
    let required = d
        .require_client_certificate
        .take()
        .map(|b| b.value)
        .unwrap_or(false);
    let require_sni = d.require_sni.take().map(|b| b.value).unwrap_or(false);
    use tlsv3::downstream_tls_context::SessionTicketKeysType as K;
    let tickets = match d.session_ticket_keys_type.take() {
        None => true,
        Some(K::DisableStatelessSessionResumption(b)) => !b,
        Some(_) => {
            return err(
                join(&tp, "session_ticket_keys"),
                "not supported (meshgate rotates its own session ticket keys)",
            );
        }
    };
    let session_cache = !std::mem::take(&mut d.disable_stateful_session_resumption);
    rest(&d, &tp)?;
    if required && !c.validates {
        return err(
            join(&tp, "require_client_certificate"),
            "needs a validation context (trusted CA) to verify client certificates",
        );
    }
    let mut cfg: DownstreamTlsConfig = serde_json::from_value(json!({ "certificates": [] }))
        .map_err(|e| (tp.clone(), e.to_string()))?;
    cfg.certificates = c.certificates;
    if let Some(v) = c.min {
        cfg.min_version = v;
    }
    if let Some(v) = c.max {
        cfg.max_version = v;
    }
    // Envoy offers no ALPN unless told to; so does meshgate here.
    cfg.alpn_protocols = c.alpn;
    cfg.require_sni_match = require_sni;
    cfg.session_tickets = tickets;
    cfg.session_cache = session_cache;
    cfg.cipher_suites = c.cipher_suites;
    cfg.ecdh_curves = c.ecdh_curves;
    cfg.signature_algorithms = c.signature_algorithms;
    // Inline PEM changes with a new snapshot; files are watched as for
    // static config.
    let sans = c.sans;
    cfg.client_validation = c.trusted_ca.map(|ca| {
        let mut v = ClientValidationConfig {
            trusted_ca: String::new(),
            trusted_ca_pem: None,
            required,
            match_subject_alt_names: sans,
        };
        match ca {
            Pem::File(f) => v.trusted_ca = f,
            Pem::Inline(p) => v.trusted_ca_pem = Some(p),
        }
        v
    });
    Ok(cfg)
}

/// The `UpstreamTlsContext` of a cluster's transport socket. Unlike Envoy,
/// a context without a validation context verifies the upstream against
/// the system's roots (meshgate never skips verification).
pub fn upstream(
    ts: core3::TransportSocket,
    path: &str,
    secrets: Secrets<'_>,
    sds: &mut BTreeSet<String>,
) -> R<UpstreamTlsConfig> {
    let (mut u, tp): (tlsv3::UpstreamTlsContext, String) = socket(ts, path, UPSTREAM)?;
    let cp = join(&tp, "common_tls_context");
    let mut c = common(u.common_tls_context.take(), &cp, secrets, sds)?;
    let sni = Some(std::mem::take(&mut u.sni)).filter(|s| !s.is_empty());
    rest(&u, &tp)?;
    if c.certificates.len() > 1 {
        return err(
            format!("{cp}.tls_certificates[1]"),
            "one client certificate at most",
        );
    }
    if c.max == Some(TlsVersion::Tls12) {
        return err(
            format!("{cp}.tls_params.tls_maximum_protocol_version"),
            "upstream TLS may always negotiate 1.3",
        );
    }
    let mut cfg: UpstreamTlsConfig =
        serde_json::from_value(json!({})).map_err(|e| (tp.clone(), e.to_string()))?;
    cfg.sni = sni;
    cfg.client_certificate = c.certificates.pop();
    cfg.alpn_protocols = c.alpn;
    if let Some(v) = c.min {
        cfg.min_version = v;
    }
    cfg.cipher_suites = c.cipher_suites;
    cfg.ecdh_curves = c.ecdh_curves;
    cfg.signature_algorithms = c.signature_algorithms;
    cfg.match_subject_alt_names = c.sans;
    match c.trusted_ca {
        None => {}
        Some(Pem::File(f)) => cfg.trusted_ca = Some(f),
        Some(Pem::Inline(p)) => cfg.trusted_ca_pem = Some(p),
    }
    Ok(cfg)
}

/// How long a listener waits for each SDS secret of its TLS contexts: the
/// `initial_fetch_timeout` of the secret's `sds_config` (`fetch_bound`:
/// Envoy's 15 s unless set, `None` for `0s`); the shortest when a secret is
/// named twice. Read from the listener already translated (so valid) apart
/// from the translation, whose signatures then stay as they are.
pub fn listener_sds_fetch_timeouts(
    l: &envoy_types::pb::envoy::config::listener::v3::Listener,
) -> std::collections::BTreeMap<String, Option<std::time::Duration>> {
    let mut out = std::collections::BTreeMap::new();
    let mut note = |s: &tlsv3::SdsSecretConfig| {
        let set = s
            .sds_config
            .as_ref()
            .and_then(|c| c.initial_fetch_timeout.as_ref())
            .filter(|d| d.seconds >= 0 && d.nanos >= 0)
            .map(|d| std::time::Duration::new(d.seconds as u64, d.nanos as u32));
        let bound = crate::translate::fetch_bound(set);
        let e = out.entry(s.name.clone()).or_insert(bound);
        *e = match (*e, bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    };
    for fc in l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
    {
        let Some(ts) = fc.transport_socket.clone() else {
            continue;
        };
        let Ok((d, _)) = socket::<tlsv3::DownstreamTlsContext>(ts, "", DOWNSTREAM) else {
            continue;
        };
        let Some(c) = d.common_tls_context else {
            continue;
        };
        c.tls_certificate_sds_secret_configs
            .iter()
            .for_each(&mut note);
        use tlsv3::common_tls_context::ValidationContextType as V;
        match &c.validation_context_type {
            Some(V::ValidationContextSdsSecretConfig(s)) => note(s),
            Some(V::CombinedValidationContext(cv)) => cv
                .validation_context_sds_secret_config
                .iter()
                .for_each(&mut note),
            _ => {}
        }
    }
    out
}

const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Whether a transport socket is plain TCP (`RawBuffer`, told by its type
/// URL; its name is free text).
pub fn is_raw_buffer(ts: &core3::TransportSocket) -> bool {
    matches!(&ts.config_type, Some(core3::transport_socket::ConfigType::TypedConfig(a)) if a.type_url == RAW_BUFFER)
}

/// Opens a `TransportSocket` whose `typed_config` must be `want` (the
/// socket is chosen by its type URL, as Envoy does; `name` is free text);
/// returns the context and its path.
fn socket<M: prost::Message + Default + std::fmt::Debug + PartialEq>(
    mut ts: core3::TransportSocket,
    path: &str,
    want: &str,
) -> R<(M, String)> {
    ts.name.clear();
    let any = match ts.config_type.take() {
        Some(core3::transport_socket::ConfigType::TypedConfig(a)) => a,
        None => return err(join(path, "typed_config"), "missing typed_config"),
    };
    let tp = join(path, "typed_config");
    if any.type_url != want {
        return err(
            tp,
            format!(
                "transport socket type '{}' not supported here (want {want} of {TLS_SOCKET})",
                any.type_url
            ),
        );
    }
    let m = crate::translate::decode(&any, want).map_err(|e| (tp.clone(), e.to_string()))?;
    rest(&ts, path)?;
    Ok((m, tp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Any, BoolValue};
    use prost::Message;

    fn inline(s: &str) -> Option<core3::DataSource> {
        Some(core3::DataSource {
            specifier: Some(core3::data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        })
    }

    fn ads() -> Option<core3::ConfigSource> {
        Some(core3::ConfigSource {
            config_source_specifier: Some(core3::config_source::ConfigSourceSpecifier::Ads(
                Default::default(),
            )),
            ..Default::default()
        })
    }

    fn ts(m: &impl Message, url: &str) -> core3::TransportSocket {
        core3::TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(core3::transport_socket::ConfigType::TypedConfig(Any {
                type_url: url.into(),
                value: m.encode_to_vec(),
            })),
        }
    }

    #[test]
    fn downstream_context_takes_sds_secrets_and_waits_for_them() {
        let d = tlsv3::DownstreamTlsContext {
            common_tls_context: Some(tlsv3::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![tlsv3::SdsSecretConfig {
                    name: "cert".into(),
                    sds_config: ads(),
                }],
                validation_context_type: Some(
                    tlsv3::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        tlsv3::SdsSecretConfig {
                            name: "ca".into(),
                            sds_config: ads(),
                        },
                    ),
                ),
                alpn_protocols: vec!["h2".into()],
                ..Default::default()
            }),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        let mut sds = BTreeSet::new();
        let cfg = downstream(ts(&d, DOWNSTREAM), "transport_socket", &|_| None, &mut sds).unwrap();
        assert_eq!(sds.iter().collect::<Vec<_>>(), ["ca", "cert"]);
        assert!(cfg.certificates.is_empty());
        let known = |n: &str| match n {
            "cert" => Some(Secret::Certificate(CertificateConfig {
                certificate_chain_pem: Some("C".into()),
                private_key_pem: Some("K".into()),
                ..Default::default()
            })),
            "ca" => Some(Secret::Validation(Validation {
                ca: Some(Pem::Inline("CA".into())),
                sans: Vec::new(),
            })),
            _ => None,
        };
        let cfg = downstream(ts(&d, DOWNSTREAM), "transport_socket", &known, &mut sds).unwrap();
        assert_eq!(
            cfg.certificates[0].certificate_chain_pem.as_deref(),
            Some("C")
        );
        let v = cfg.client_validation.unwrap();
        assert_eq!(v.trusted_ca_pem.as_deref(), Some("CA"));
        assert!(v.required);
        assert_eq!(cfg.alpn_protocols, ["h2"]);
        // A secret of the wrong kind is refused by name.
        let swapped = |n: &str| known(if n == "ca" { "cert" } else { "ca" });
        let e = downstream(ts(&d, DOWNSTREAM), "transport_socket", &swapped, &mut sds).unwrap_err();
        assert!(
            e.0.contains("tls_certificate_sds_secret_configs[0]"),
            "{e:?}"
        );
    }

    #[test]
    fn unsupported_tls_fields_are_named() {
        let v = tlsv3::CertificateValidationContext {
            trusted_ca: inline("CA"),
            match_typed_subject_alt_names: vec![Default::default()],
            ..Default::default()
        };
        let s = tlsv3::Secret {
            name: "ca".into(),
            r#type: Some(tlsv3::secret::Type::ValidationContext(v)),
        };
        let e = secret(s).unwrap_err();
        assert_eq!(e.resource, "Secret 'ca'");
        assert_eq!(
            e.field,
            "validation_context.match_typed_subject_alt_names[0].san_type"
        );
        let u = tlsv3::UpstreamTlsContext {
            sni: "x".into(),
            allow_renegotiation: true,
            ..Default::default()
        };
        let e = upstream(
            ts(&u, UPSTREAM),
            "transport_socket",
            &|_| None,
            &mut BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(e.0, "transport_socket.typed_config.allow_renegotiation");
        let c = tlsv3::TlsCertificate {
            certificate_chain: inline("C"),
            private_key: Some(core3::DataSource {
                specifier: Some(core3::data_source::Specifier::EnvironmentVariable(
                    "K".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = secret(tlsv3::Secret {
            name: "c".into(),
            r#type: Some(tlsv3::secret::Type::TlsCertificate(c)),
        })
        .unwrap_err();
        assert_eq!(e.field, "tls_certificate.private_key.environment_variable");
    }
}
