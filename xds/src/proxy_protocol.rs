//! Translation of Envoy's PROXY protocol listener filter
//! (`envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`)
//! into meshgate's `listener_filters` entry (`pass_through_tlvs`,
//! `stat_prefix` and `tlv_location: FILTER_STATE` are refused by name), and
//! of the cluster transport socket
//! `envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport`
//! into the cluster's `proxy_protocol` (the socket it wraps, TLS or raw,
//! goes on as the cluster's transport socket).

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version as PbVersion;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3 as pp;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::proxy_protocol as cfg;

pub(crate) const FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// The listener filter at `path` (its `typed_config`, if any).
pub(crate) fn listener_filter(
    any: Option<&protobuf::Any>,
    path: &str,
) -> R<cfg::ListenerFilterConfig> {
    let c = match any {
        None => cfg::ProxyProtocolConfig::default(),
        Some(any) => {
            let tc = join(path, "typed_config");
            let m: pp::ProxyProtocol =
                decode(any, FILTER).map_err(|e| (tc.clone(), e.to_string()))?;
            translate(m, &tc)?
        }
    };
    let config = serde_json::to_value(&c).map_err(|e| (path.to_string(), e.to_string()))?;
    Ok(cfg::ListenerFilterConfig {
        name: cfg::NAME.to_string(),
        config,
    })
}

fn translate(mut m: pp::ProxyProtocol, path: &str) -> R<cfg::ProxyProtocolConfig> {
    use pp::proxy_protocol::key_value_pair::ValueStringEncoding as Enc;
    let mut rules = Vec::with_capacity(m.rules.len());
    for (i, mut r) in std::mem::take(&mut m.rules).into_iter().enumerate() {
        let rp = join(path, &format!("rules[{i}]"));
        let Ok(tlv_type) = u8::try_from(r.tlv_type) else {
            return err(join(&rp, "tlv_type"), "must be below 256");
        };
        let Some(mut kv) = r.on_tlv_present.take() else {
            return err(join(&rp, "on_tlv_present"), "required");
        };
        r.tlv_type = 0;
        rest(&r, &rp)?;
        let kp = join(&rp, "on_tlv_present");
        let value_string_encoding = match Enc::try_from(kv.value_string_encoding) {
            Ok(Enc::Unspecified) => cfg::ValueStringEncoding::Unspecified,
            Ok(Enc::SanitizedUtf8) => cfg::ValueStringEncoding::SanitizedUtf8,
            Ok(Enc::Base64) => cfg::ValueStringEncoding::Base64,
            Err(_) => return err(join(&kp, "value_string_encoding"), "unknown value"),
        };
        if kv.key.is_empty() {
            return err(join(&kp, "key"), "must not be empty");
        }
        rules.push(cfg::RuleConfig {
            tlv_type,
            on_tlv_present: cfg::KeyValuePair {
                metadata_namespace: std::mem::take(&mut kv.metadata_namespace),
                key: std::mem::take(&mut kv.key),
                value_string_encoding,
            },
        });
    }
    let mut disallowed_versions = Vec::new();
    for (i, v) in std::mem::take(&mut m.disallowed_versions)
        .into_iter()
        .enumerate()
    {
        disallowed_versions.push(match PbVersion::try_from(v) {
            Ok(PbVersion::V1) => cfg::Version::V1,
            Ok(PbVersion::V2) => cfg::Version::V2,
            Err(_) => {
                return err(
                    join(path, &format!("disallowed_versions[{i}]")),
                    "unknown value",
                );
            }
        });
    }
    let allow = std::mem::take(&mut m.allow_requests_without_proxy_protocol);
    rest(&m, path)?;
    Ok(cfg::ProxyProtocolConfig {
        rules,
        allow_requests_without_proxy_protocol: allow,
        disallowed_versions,
    })
}

pub(crate) const UPSTREAM: &str = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

/// A cluster's `transport_socket`: when it is the upstream PROXY protocol
/// socket, its config and the socket it wraps (`None` for raw TCP);
/// otherwise the socket untouched. `tlv_as_pool_key` and
/// `allow_unspecified_address` are refused by name.
pub(crate) fn upstream(
    ts: Option<core3::TransportSocket>,
    path: &str,
) -> R<(
    Option<core3::TransportSocket>,
    Option<cfg::UpstreamProxyProtocolConfig>,
)> {
    use core3::proxy_protocol_pass_through_tl_vs::PassTlVsMatchType as Mt;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3 as ups;
    let Some(ts) = ts else {
        return Ok((None, None));
    };
    let Some(core3::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Ok((Some(ts), None));
    };
    if any.type_url != UPSTREAM {
        return Ok((Some(ts), None));
    }
    let tc = join(path, "typed_config");
    let mut m: ups::ProxyProtocolUpstreamTransport =
        decode(any, UPSTREAM).map_err(|e| (tc.clone(), e.to_string()))?;
    let inner = m.transport_socket.take().filter(|t| {
        t.name != "envoy.transport_sockets.raw_buffer"
            && !matches!(&t.config_type, Some(core3::transport_socket::ConfigType::TypedConfig(a)) if a.type_url.ends_with("raw_buffer.v3.RawBuffer"))
    });
    let mut c = m.config.take().unwrap_or_default();
    let cp = join(&tc, "config");
    let version = match PbVersion::try_from(c.version) {
        Ok(PbVersion::V1) => cfg::Version::V1,
        Ok(PbVersion::V2) => cfg::Version::V2,
        Err(_) => return err(join(&cp, "version"), "unknown value"),
    };
    c.version = 0;
    let pass_through_tlvs = match c.pass_through_tlvs.take() {
        None => None,
        Some(p) => {
            let pp = join(&cp, "pass_through_tlvs");
            let match_type = match Mt::try_from(p.match_type) {
                Ok(Mt::IncludeAll) => cfg::PassTlvsMatchType::IncludeAll,
                Ok(Mt::Include) => cfg::PassTlvsMatchType::Include,
                Err(_) => return err(join(&pp, "match_type"), "unknown value"),
            };
            let mut tlv_type = Vec::with_capacity(p.tlv_type.len());
            for (i, t) in p.tlv_type.iter().enumerate() {
                let Ok(t) = u8::try_from(*t) else {
                    return err(join(&pp, &format!("tlv_type[{i}]")), "must be below 256");
                };
                tlv_type.push(t);
            }
            Some(cfg::PassThroughTlvs {
                match_type,
                tlv_type,
            })
        }
    };
    rest(&c, &cp)?;
    rest(&m, &tc)?;
    Ok((
        inner,
        Some(cfg::UpstreamProxyProtocolConfig {
            version,
            pass_through_tlvs,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(m: &pp::ProxyProtocol) -> protobuf::Any {
        protobuf::Any {
            type_url: FILTER.into(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn fields_translate_and_unsupported_ones_are_named() {
        let m = pp::ProxyProtocol {
            rules: vec![pp::proxy_protocol::Rule {
                tlv_type: 0xE0,
                on_tlv_present: Some(pp::proxy_protocol::KeyValuePair {
                    metadata_namespace: String::new(),
                    key: "tenant".into(),
                    value_string_encoding: 2,
                }),
            }],
            allow_requests_without_proxy_protocol: true,
            disallowed_versions: vec![PbVersion::V1 as i32],
            ..Default::default()
        };
        let f = listener_filter(Some(&any(&m)), "listener_filters[0]").unwrap();
        assert_eq!(f.name, cfg::NAME);
        let c: cfg::ProxyProtocolConfig = serde_json::from_value(f.config).unwrap();
        assert!(c.allow_requests_without_proxy_protocol);
        assert_eq!(c.disallowed_versions, vec![cfg::Version::V1]);
        assert_eq!(c.rules[0].tlv_type, 0xE0);
        assert_eq!(
            c.rules[0].on_tlv_present.value_string_encoding,
            cfg::ValueStringEncoding::Base64
        );

        let m = pp::ProxyProtocol {
            stat_prefix: "x".into(),
            ..Default::default()
        };
        let (field, _) = listener_filter(Some(&any(&m)), "listener_filters[0]").unwrap_err();
        assert_eq!(field, "listener_filters[0].typed_config.stat_prefix");
    }

    #[test]
    fn upstream_socket_unwraps_and_refuses_unsupported_fields() {
        use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3 as ups;
        let wrap = |m: &ups::ProxyProtocolUpstreamTransport| core3::TransportSocket {
            name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
            config_type: Some(core3::transport_socket::ConfigType::TypedConfig(
                protobuf::Any {
                    type_url: UPSTREAM.into(),
                    value: m.encode_to_vec(),
                },
            )),
        };
        let tls = core3::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: None,
        };
        let m = ups::ProxyProtocolUpstreamTransport {
            config: Some(core3::ProxyProtocolConfig {
                version: PbVersion::V2 as i32,
                ..Default::default()
            }),
            transport_socket: Some(tls.clone()),
            ..Default::default()
        };
        let (inner, c) = upstream(Some(wrap(&m)), "transport_socket").unwrap();
        assert_eq!(inner, Some(tls.clone()));
        assert_eq!(c.unwrap().version, cfg::Version::V2);
        // Another socket passes untouched.
        let (inner, c) = upstream(Some(tls.clone()), "transport_socket").unwrap();
        assert_eq!((inner, c), (Some(tls), None));
        let m = ups::ProxyProtocolUpstreamTransport {
            tlv_as_pool_key: true,
            ..Default::default()
        };
        let (field, _) = upstream(Some(wrap(&m)), "transport_socket").unwrap_err();
        assert_eq!(field, "transport_socket.typed_config.tlv_as_pool_key");
    }
}
