//! Istio's own extensions as istiod sends them to sidecars (docs/xds.md,
//! "Istio"), translated into meshgate's `istio_*` filters. Their protos
//! live in istio/proxy, not in Envoy's API, so their messages are written
//! here with the same field numbers (prost derives): unknown fields are
//! refused by number like any other resource's.
//!
//! - HTTP `io.istio.http.peer_metadata.Config` (istiod names the filter
//!   `istio.metadata_exchange`) and the older
//!   `io.istio.http.metadata_exchange.Config`: `istio_peer_metadata`;
//! - `stats.PluginConfig` (`istio.stats`), HTTP and network:
//!   `istio_stats`; its `reporter` UNSPECIFIED is the listener's
//!   `traffic_direction` (INBOUND reports as `destination`, else
//!   `source`), resolved by `resolve_reporters` once the listener's is known;
//! - network `envoy.tcp.metadataexchange.config.MetadataExchange`:
//!   `istio_metadata_exchange`; on a cluster (`Cluster.filters`, istiod's
//!   `istio.metadata_exchange` or the older
//!   `envoy.filters.network.upstream.metadata_exchange`) the upstream
//!   filter of the same name (`cluster_filters`). Its config comes as the
//!   message or, as recent istiod sends it, a `TypedStruct` of it.

use crate::generic_proxy::{TYPED_STRUCTS, TypedStruct};
use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::google::protobuf;
use meshgate_core::config::traffic_direction::TrafficDirection;
use meshgate_core::config::{FilterChainConfig, FilterConfig};
use serde_json::{Value, json};

pub(crate) const PEER_METADATA: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
pub(crate) const HTTP_METADATA_EXCHANGE: &str =
    "type.googleapis.com/io.istio.http.metadata_exchange.Config";
pub(crate) const STATS: &str = "type.googleapis.com/stats.PluginConfig";
pub(crate) const TCP_METADATA_EXCHANGE: &str =
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";
/// The name istiod gives its HTTP exchange filter.
pub(crate) const MX_NAME: &str = "istio.metadata_exchange";
pub(crate) const STATS_NAME: &str = "istio.stats";

/// The reporter left for the listener's direction to decide.
const AUTO: &str = "auto";

/// `io.istio.http.peer_metadata.Config`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PeerMetadataConfig {
    #[prost(message, repeated, tag = "1")]
    pub downstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "2")]
    pub upstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "3")]
    pub downstream_propagation: Vec<PropagationMethod>,
    #[prost(message, repeated, tag = "4")]
    pub upstream_propagation: Vec<PropagationMethod>,
    #[prost(bool, tag = "5")]
    pub shared_with_upstream: bool,
    #[prost(string, repeated, tag = "6")]
    pub additional_labels: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DiscoveryMethod {
    #[prost(oneof = "DiscoverBy", tags = "1, 2, 3")]
    pub method: Option<DiscoverBy>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum DiscoverBy {
    #[prost(message, tag = "1")]
    Baggage(Empty),
    #[prost(message, tag = "2")]
    WorkloadDiscovery(Empty),
    #[prost(message, tag = "3")]
    IstioHeaders(IstioHeaders),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PropagationMethod {
    #[prost(oneof = "Propagation", tags = "1")]
    pub method: Option<Propagation>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Propagation {
    #[prost(message, tag = "1")]
    IstioHeaders(IstioHeaders),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct IstioHeaders {
    #[prost(bool, tag = "1")]
    pub skip_external_clusters: bool,
}

/// The older `io.istio.http.metadata_exchange.Config`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HttpMetadataExchange {
    #[prost(int32, tag = "1")]
    pub max_peer_cache_size: i32,
}

/// `stats.PluginConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PluginConfig {
    #[prost(bool, tag = "6")]
    pub disable_host_header_fallback: bool,
    #[prost(message, optional, tag = "7")]
    pub tcp_reporting_duration: Option<protobuf::Duration>,
    #[prost(message, repeated, tag = "8")]
    pub metrics: Vec<MetricConfig>,
    #[prost(message, repeated, tag = "9")]
    pub definitions: Vec<MetricDefinition>,
    #[prost(int32, tag = "10")]
    pub reporter: i32,
    #[prost(message, optional, tag = "11")]
    pub rescoping_duration: Option<protobuf::Duration>,
    #[prost(message, optional, tag = "12")]
    pub scope_grace_period_duration: Option<protobuf::Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MetricConfig {
    #[prost(map = "string, string", tag = "1")]
    pub dimensions: std::collections::HashMap<String, String>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub tags_to_remove: Vec<String>,
    #[prost(string, tag = "4")]
    pub r#match: String,
    #[prost(bool, tag = "5")]
    pub drop: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MetricDefinition {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
}

/// `envoy.tcp.metadataexchange.config.MetadataExchange`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TcpMetadataExchange {
    #[prost(string, tag = "1")]
    pub protocol: String,
    #[prost(bool, tag = "2")]
    pub enable_discovery: bool,
    #[prost(string, repeated, tag = "3")]
    pub additional_labels: Vec<String>,
}

fn decoded<M: prost::Message + Default + std::fmt::Debug + PartialEq>(
    a: &protobuf::Any,
    want: &str,
    p: &str,
) -> R<M> {
    decode(a, want).map_err(|e| (p.to_string(), e.to_string()))
}

/// Whether a discovery list reads the `x-envoy-peer-metadata` headers.
/// `workload_discovery` (the workload metadata xDS of istio-agent's
/// bootstrap extension, which meshgate does not have) finds nothing and
/// the next method is asked, as Envoy does when a lookup fails;
/// `baggage` (deprecated by Istio) is refused.
fn discovery(list: &[DiscoveryMethod], p: &str) -> R<bool> {
    let mut headers = false;
    for (i, m) in list.iter().enumerate() {
        let mp = format!("{p}[{i}]");
        match &m.method {
            Some(DiscoverBy::IstioHeaders(h)) => {
                skip_external(h, &join(&mp, "istio_headers"))?;
                headers = true;
            }
            Some(DiscoverBy::WorkloadDiscovery(_)) => {}
            Some(DiscoverBy::Baggage(_)) => {
                return err(
                    join(&mp, "baggage"),
                    "not supported (deprecated by Istio): use istio_headers",
                );
            }
            None => return err(&mp, "no discovery method set"),
        }
    }
    Ok(headers)
}

fn skip_external(h: &IstioHeaders, p: &str) -> R<()> {
    if h.skip_external_clusters {
        return err(
            join(p, "skip_external_clusters"),
            "not supported: meshgate's clusters carry no istio/external filter metadata to tell them",
        );
    }
    Ok(())
}

fn propagation(list: &[PropagationMethod], p: &str) -> R<bool> {
    for (i, m) in list.iter().enumerate() {
        let mp = format!("{p}[{i}]");
        match &m.method {
            Some(Propagation::IstioHeaders(h)) => skip_external(h, &join(&mp, "istio_headers"))?,
            None => return err(&mp, "no propagation method set"),
        }
    }
    Ok(!list.is_empty())
}

/// The HTTP exchange filter's config (`istio_peer_metadata`).
pub(crate) fn http_exchange(a: &protobuf::Any, p: &str) -> R<Value> {
    if a.type_url == HTTP_METADATA_EXCHANGE {
        // The older filter reads and tells both ways; its only field is
        // the size of a cache of peers (a tuning knob: meshgate decodes
        // each header, bounded by its size).
        let _: HttpMetadataExchange = decoded(a, HTTP_METADATA_EXCHANGE, p)?;
        return Ok(json!({
            "downstream_discovery": true,
            "upstream_discovery": true,
            "downstream_propagation": true,
            "upstream_propagation": true,
        }));
    }
    let c: PeerMetadataConfig = decoded(a, PEER_METADATA, p)?;
    if !c.additional_labels.is_empty() {
        return err(
            join(p, "additional_labels"),
            "not supported (Istio's peer labels only)",
        );
    }
    // shared_with_upstream hands the downstream peer to the upstream
    // connection's filters; meshgate's upstream connections have none
    // reading it (docs/xds.md): nothing to share with.
    Ok(json!({
        "downstream_discovery": discovery(&c.downstream_discovery, &join(p, "downstream_discovery"))?,
        "upstream_discovery": discovery(&c.upstream_discovery, &join(p, "upstream_discovery"))?,
        "downstream_propagation": propagation(&c.downstream_propagation, &join(p, "downstream_propagation"))?,
        "upstream_propagation": propagation(&c.upstream_propagation, &join(p, "upstream_propagation"))?,
    }))
}

/// `istio.stats` (HTTP or network): `istio_stats`'s config, its reporter
/// `auto` until `resolve_reporters`.
pub(crate) fn stats(a: &protobuf::Any, p: &str) -> R<Value> {
    let c: PluginConfig = decoded(a, STATS, p)?;
    if !c.metrics.is_empty() {
        return err(
            format!("{p}.metrics[0]"),
            "metric overrides (CEL dimensions, tags_to_remove, drop) are not supported: Istio's standard labels only",
        );
    }
    if !c.definitions.is_empty() {
        return err(
            format!("{p}.definitions[0]"),
            "custom metric definitions (CEL values) are not supported",
        );
    }
    // tcp_reporting_duration, rescoping_duration,
    // scope_grace_period_duration: tuning knobs (meshgate's TCP counters
    // are live, its series never rescoped), docs/xds.md.
    let reporter = match c.reporter {
        0 => AUTO,
        1 => "waypoint",
        v => return err(join(p, "reporter"), format!("unknown value {v}")),
    };
    let mut out = json!({ "reporter": reporter });
    if c.disable_host_header_fallback {
        out["disable_host_header_fallback"] = json!(true);
    }
    Ok(out)
}

/// A `TypedStruct`'s inner type URL, if `a` is one.
fn typed_struct(a: &protobuf::Any, p: &str) -> R<Option<TypedStruct>> {
    match TYPED_STRUCTS.iter().find(|u| **u == a.type_url) {
        Some(url) => Ok(Some(decoded(a, url, p)?)),
        None => Ok(None),
    }
}

/// The TCP exchange's message, from itself or a `TypedStruct` of it (its
/// fields by their JSON names; any other is refused by name).
fn tcp_exchange_message(a: &protobuf::Any, p: &str) -> R<TcpMetadataExchange> {
    let Some(ts) = typed_struct(a, p)? else {
        return decoded(a, TCP_METADATA_EXCHANGE, p);
    };
    if ts.type_url != TCP_METADATA_EXCHANGE {
        return err(
            join(p, "type_url"),
            format!("'{}' (want '{TCP_METADATA_EXCHANGE}')", ts.type_url),
        );
    }
    use protobuf::value::Kind;
    let mut out = TcpMetadataExchange::default();
    for (k, v) in ts.value.unwrap_or_default().fields {
        let vp = format!("{p}.value.{k}");
        match (k.as_str(), v.kind) {
            ("protocol", Some(Kind::StringValue(s))) => out.protocol = s,
            ("enable_discovery", Some(Kind::BoolValue(b))) => out.enable_discovery = b,
            ("additional_labels" | "additionalLabels", Some(Kind::ListValue(l))) => {
                for (i, v) in l.values.into_iter().enumerate() {
                    match v.kind {
                        Some(Kind::StringValue(s)) => out.additional_labels.push(s),
                        _ => return err(format!("{vp}[{i}]"), "a string"),
                    }
                }
            }
            ("enableDiscovery", Some(Kind::BoolValue(b))) => out.enable_discovery = b,
            ("protocol" | "enable_discovery" | "enableDiscovery", _) => {
                return err(vp, "wrong type");
            }
            _ => return err(vp, "unknown field of MetadataExchange"),
        }
    }
    Ok(out)
}

/// `Cluster.filters`: Istio's TCP exchange on the cluster's connections
/// (the upstream filter `istio_metadata_exchange`); any other filter is
/// refused naming its type.
pub(crate) fn cluster_filters(
    list: Vec<envoy_types::pb::envoy::config::cluster::v3::Filter>,
    p: &str,
) -> R<Vec<FilterConfig>> {
    let mut out = Vec::new();
    for (i, mut f) in list.into_iter().enumerate() {
        let fp = format!("{p}[{i}]");
        // Its name is informative: the type chooses the filter.
        f.name.clear();
        let Some(any) = f.typed_config.take() else {
            return err(join(&fp, "typed_config"), "required");
        };
        rest(&f, &fp)?;
        let tp = join(&fp, "typed_config");
        let inner = match typed_struct(&any, &tp)? {
            Some(ts) => ts.type_url,
            None => any.type_url.clone(),
        };
        if inner != TCP_METADATA_EXCHANGE {
            return err(
                tp,
                format!(
                    "cluster filter '{inner}' not supported (Istio's envoy.tcp.metadataexchange.config.MetadataExchange only)"
                ),
            );
        }
        out.push(FilterConfig {
            name: "istio_metadata_exchange".into(),
            config: tcp_exchange(&any, &tp)?,
        });
    }
    Ok(out)
}

/// The TCP exchange's config (`istio_metadata_exchange`).
pub(crate) fn tcp_exchange(a: &protobuf::Any, p: &str) -> R<Value> {
    let c = tcp_exchange_message(a, p)?;
    if c.protocol.is_empty() {
        return err(join(p, "protocol"), "required (istio-peer-exchange)");
    }
    if !c.additional_labels.is_empty() {
        return err(
            join(p, "additional_labels"),
            "not supported (Istio's peer labels only)",
        );
    }
    // enable_discovery: the workload metadata xDS fallback, which finds
    // nothing in meshgate (as `workload_discovery` above).
    Ok(json!({ "protocol": c.protocol }))
}

/// Sets every `istio_stats` reporter left `auto` in the listener's chains
/// by its direction: INBOUND reports as `destination`, others as `source`
/// (Istio's rule).
pub(crate) fn resolve_reporters(chains: &mut [FilterChainConfig], dir: Option<TrafficDirection>) {
    let reporter = match dir {
        Some(TrafficDirection::Inbound) => "destination",
        _ => "source",
    };
    let fix = |config: &mut Value| {
        if config.get("reporter").and_then(Value::as_str) == Some(AUTO) {
            config["reporter"] = json!(reporter);
        }
    };
    for chain in chains {
        for f in &mut chain.filters {
            if f.name == "istio_stats" {
                fix(&mut f.config);
            }
            if f.name == "proxy"
                && let Some(Value::Array(list)) = f.config.get_mut("stream_filters")
            {
                for sf in list {
                    if sf.get("name").and_then(Value::as_str) == Some("istio_stats")
                        && let Some(c) = sf.get_mut("config")
                    {
                        fix(c);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::google::protobuf::{self as pb, Any};
    use prost::Message as _;

    fn with_filter(typed_config: Any) -> cds::Cluster {
        cds::Cluster {
            name: "c".into(),
            filters: vec![cds::Filter {
                name: "istio.metadata_exchange".into(),
                typed_config: Some(typed_config),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn typed_struct(fields: &[(&str, pb::value::Kind)]) -> Any {
        let ts = super::TypedStruct {
            type_url: super::TCP_METADATA_EXCHANGE.into(),
            value: Some(pb::Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            pb::Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
        };
        Any {
            type_url: super::TYPED_STRUCTS[1].into(),
            value: ts.encode_to_vec(),
        }
    }

    /// istiod's cluster filter, as the message or a TypedStruct, becomes
    /// the upstream `istio_metadata_exchange`; anything else is refused
    /// naming the field.
    #[test]
    fn cluster_filters_are_translated_or_refused_by_name() {
        use pb::value::Kind;
        let msg = Any {
            type_url: super::TCP_METADATA_EXCHANGE.into(),
            value: super::TcpMetadataExchange {
                protocol: "istio-peer-exchange".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let ts = typed_struct(&[
            ("protocol", Kind::StringValue("istio-peer-exchange".into())),
            ("enable_discovery", Kind::BoolValue(true)),
        ]);
        for a in [msg, ts] {
            let c = crate::translate::cluster(with_filter(a)).unwrap();
            assert_eq!(c.config.filters.len(), 1);
            assert_eq!(c.config.filters[0].name, "istio_metadata_exchange");
            assert_eq!(
                c.config.filters[0].config["protocol"],
                "istio-peer-exchange"
            );
        }
        let refused = |a: Any| {
            crate::translate::cluster(with_filter(a))
                .unwrap_err()
                .to_string()
        };
        let e = refused(typed_struct(&[("foo", Kind::BoolValue(true))]));
        assert!(e.contains("filters[0].typed_config.value.foo"), "{e}");
        let e = refused(typed_struct(&[
            ("protocol", Kind::StringValue("istio-peer-exchange".into())),
            (
                "additional_labels",
                Kind::ListValue(pb::ListValue {
                    values: vec![pb::Value {
                        kind: Some(Kind::StringValue("role".into())),
                    }],
                }),
            ),
        ]));
        assert!(
            e.contains("filters[0].typed_config.additional_labels"),
            "{e}"
        );
        let e = refused(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC".into(),
            value: vec![],
        });
        assert!(
            e.contains("filters[0].typed_config") && e.contains("rbac.v3.RBAC"),
            "{e}"
        );
    }
}
