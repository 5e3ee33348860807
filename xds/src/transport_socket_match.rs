//! A cluster's `transport_socket_matches`: per-endpoint transport sockets
//! chosen by the endpoint's `envoy.transport_socket_match` metadata
//! (Istio's `tlsMode: istio` → mTLS, others plaintext). Each socket is
//! told apart by its `typed_config` type URL (not its name):
//! `UpstreamTlsContext` → TLS, `RawBuffer` (or no socket) → plaintext;
//! any other socket is refused by name.

use crate::tls::Secrets;
use crate::translate::{R, err, join, rest, struct_json};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use meshgate_core::config::TransportSocketMatchConfig;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One entry, its TLS socket kept to be translated again once its SDS
/// secrets are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    name: String,
    criteria: BTreeMap<String, Value>,
    /// `None`: plaintext.
    tls: Option<core3::TransportSocket>,
    path: String,
}

/// Takes the cluster's `transport_socket_matches`; the SDS secrets their
/// TLS contexts name go to `sds`. Unsupported fields are refused now.
pub fn take(c: &mut cds::Cluster, sds: &mut BTreeSet<String>) -> R<Vec<Entry>> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, mut m) in std::mem::take(&mut c.transport_socket_matches)
        .into_iter()
        .enumerate()
    {
        let path = format!("transport_socket_matches[{i}]");
        let name = std::mem::take(&mut m.name);
        if !names.insert(name.clone()) {
            return err(join(&path, "name"), format!("duplicate name '{name}'"));
        }
        let criteria = match m.r#match.take() {
            None => BTreeMap::new(),
            Some(s) => match struct_json(&s) {
                Value::Object(o) => o.into_iter().collect(),
                _ => BTreeMap::new(),
            },
        };
        let tp = join(&path, "transport_socket");
        let tls = match m.transport_socket.take() {
            None => None,
            Some(ts) if crate::tls::is_raw_buffer(&ts) => None,
            Some(ts) => {
                crate::tls::upstream(ts.clone(), &tp, &|_| None, sds)?;
                Some(ts)
            }
        };
        rest(&m, &path)?;
        out.push(Entry {
            name,
            criteria,
            tls,
            path: tp,
        });
    }
    Ok(out)
}

/// The entries with their TLS translated, secrets from `secrets`; names
/// of missing secrets go to `sds`.
pub fn resolve(
    entries: &[Entry],
    secrets: Secrets<'_>,
    sds: &mut BTreeSet<String>,
) -> R<Vec<TransportSocketMatchConfig>> {
    entries
        .iter()
        .map(|e| {
            let tls = match &e.tls {
                None => None,
                Some(ts) => Some(crate::tls::upstream(ts.clone(), &e.path, secrets, sds)?),
            };
            Ok(TransportSocketMatchConfig {
                name: e.name.clone(),
                match_: e.criteria.clone(),
                tls,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Any, Struct, Value as PbValue, value::Kind};
    use prost::Message;

    fn socket(url: &str, value: Vec<u8>) -> core3::TransportSocket {
        core3::TransportSocket {
            // Free text: the type URL decides.
            name: "whatever".into(),
            config_type: Some(core3::transport_socket::ConfigType::TypedConfig(Any {
                type_url: url.into(),
                value,
            })),
        }
    }

    fn one(name: &str, criteria: Option<Struct>, ts: core3::TransportSocket) -> cds::Cluster {
        cds::Cluster {
            transport_socket_matches: vec![cds::cluster::TransportSocketMatch {
                name: name.into(),
                r#match: criteria,
                transport_socket: Some(ts),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sockets_are_told_by_type_url_and_others_refused_by_field() {
        let tls =
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext {
                sni: "a".into(),
                ..Default::default()
            };
        let criteria = Struct {
            fields: [(
                "tlsMode".to_string(),
                PbValue {
                    kind: Some(Kind::StringValue("istio".into())),
                },
            )]
            .into_iter()
            .collect(),
        };
        let mut c = one(
            "mtls",
            Some(criteria),
            socket(
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                tls.encode_to_vec(),
            ),
        );
        c.transport_socket_matches
            .extend(one(
                "plain",
                None,
                socket(
                    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                    Vec::new(),
                ),
            )
            .transport_socket_matches);
        let mut sds = BTreeSet::new();
        let entries = take(&mut c, &mut sds).unwrap();
        let out = resolve(&entries, &|_| None, &mut sds).unwrap();
        assert_eq!(out[0].match_["tlsMode"], "istio");
        assert_eq!(
            out[0].tls.as_ref().and_then(|t| t.sni.as_deref()),
            Some("a")
        );
        assert!(out[1].tls.is_none() && out[1].match_.is_empty());

        let mut alts = one(
            "alts",
            None,
            socket(
                "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts",
                Vec::new(),
            ),
        );
        let e = take(&mut alts, &mut sds).unwrap_err();
        assert_eq!(
            e.0,
            "transport_socket_matches[0].transport_socket.typed_config"
        );
    }
}
