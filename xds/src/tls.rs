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
    /// Trusted CAs of a validation context.
    Validation(Pem),
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
            Secret::Validation(validation_context(v, "validation_context")?)
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

fn validation_context(mut v: tlsv3::CertificateValidationContext, path: &str) -> R<Pem> {
    let ca = data_source(v.trusted_ca.take(), &join(path, "trusted_ca"))?;
    rest(&v, path)?;
    Ok(ca)
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
        _ => err(path, "meshgate speaks TLS 1.2 and 1.3 only"),
    }
}

/// What a `CommonTlsContext` gives, secrets resolved where known.
#[derive(Default)]
struct Common {
    certificates: Vec<CertificateConfig>,
    trusted_ca: Option<Pem>,
    /// A validation context is configured (its SDS secret may be unknown yet).
    validates: bool,
    alpn: Vec<String>,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
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
            out.trusted_ca = Some(validation_context(v, &join(path, "validation_context"))?);
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let p = join(path, "validation_context_sds_secret_config");
            let name = sds_name(s, &p)?;
            sds.insert(name.clone());
            match secrets(&name) {
                None => {}
                Some(Secret::Validation(ca)) => out.trusted_ca = Some(ca),
                Some(Secret::Certificate(_)) => {
                    return err(
                        p,
                        format!("secret '{name}' is a tls_certificate, not a validation_context"),
                    );
                }
            }
        }
        Some(V::CombinedValidationContext(_)) => {
            return err(
                join(path, "combined_validation_context"),
                "not supported (validation_context or validation_context_sds_secret_config)",
            );
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
    // Inline PEM changes with a new snapshot; files are watched as for
    // static config.
    cfg.client_validation = c.trusted_ca.map(|ca| {
        let mut v = ClientValidationConfig {
            trusted_ca: String::new(),
            trusted_ca_pem: None,
            required,
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
        if let Some(V::ValidationContextSdsSecretConfig(s)) = &c.validation_context_type {
            note(s);
        }
    }
    out
}

/// Opens a `TransportSocket` that must be `envoy.transport_sockets.tls`
/// carrying `want`; returns the context and its path.
fn socket<M: prost::Message + Default + std::fmt::Debug + PartialEq>(
    mut ts: core3::TransportSocket,
    path: &str,
    want: &str,
) -> R<(M, String)> {
    let name = std::mem::take(&mut ts.name);
    let any = match ts.config_type.take() {
        Some(core3::transport_socket::ConfigType::TypedConfig(a)) => a,
        None => return err(join(path, "typed_config"), "missing typed_config"),
    };
    let tp = join(path, "typed_config");
    if !(name == TLS_SOCKET || name.is_empty() && any.type_url == want) {
        return err(
            join(path, "name"),
            format!("transport socket '{name}' not supported (only {TLS_SOCKET})"),
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
            "ca" => Some(Secret::Validation(Pem::Inline("CA".into()))),
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
        assert_eq!(e.field, "validation_context.match_typed_subject_alt_names");
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
