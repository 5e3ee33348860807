//! Translation of Envoy v3 resources into the one core config model
//! (`meshgate_core::config`, `meshgate_core::router`). Every message is
//! taken apart field by field; a field left set afterwards is one meshgate
//! does not implement, and the resource is refused naming it (see
//! `leftover`).

// Deprecated Envoy fields are still sent by control planes: they are
// translated or refused like any other, never ignored.
#![allow(deprecated)]

use crate::leftover::set_fields;
use crate::tls::Secrets;
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::filters as fc;
use meshgate_core::config::traffic_direction::TrafficDirection;
use meshgate_core::config::{
    BackoffConfig, ClusterConfig, DiscoveryType, EndpointConfig, EndpointHealthStatus,
    FilterChainConfig, FilterChainMatch, FilterConfig, ListenerConfig,
};
use meshgate_core::router as rc;
use prost::Message;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// A refused resource: which one, which field, why. Its `Display` is the
/// NACK's `error_detail` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct TranslateError {
    /// e.g. `Cluster 'web'`.
    pub resource: String,
    /// Path inside the resource, e.g. `filter_chains[0].filters[0].typed_config.stat_prefix`.
    pub field: String,
    pub message: String,
}

pub(crate) type R<T> = Result<T, (String, String)>;

pub(crate) fn err<T>(field: impl Into<String>, msg: impl Into<String>) -> R<T> {
    Err((field.into(), msg.into()))
}

pub(crate) fn join(p: &str, c: &str) -> String {
    meshgate_core::error::join_path(p, c)
}

/// Refuses a message whose copy still has fields set after the supported
/// ones were taken out.
pub(crate) fn rest<M: Debug + Default + PartialEq>(m: &M, path: &str) -> R<()> {
    let set = set_fields(m);
    match set.first() {
        None => Ok(()),
        Some(f) => err(
            join(path, f),
            "field not supported by meshgate (refused rather than ignored)",
        ),
    }
}

pub(crate) fn wrap<T>(kind: &str, name: &str, r: R<T>) -> Result<T, TranslateError> {
    r.map_err(|(field, message)| TranslateError {
        resource: format!("{kind} '{name}'"),
        field,
        message,
    })
}

/// Why an `Any` did not become the expected message. Its `Display` is
/// the NACK's detail (the messages are those meshgate always sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The `Any` holds another type.
    #[error("type_url '{got}', want '{want}'")]
    TypeUrl { got: String, want: String },
    /// The bytes are not an encoding of the type.
    #[error("cannot decode {want}: {source}")]
    Malformed {
        want: String,
        #[source]
        source: prost::DecodeError,
    },
    /// The bytes hold a field the type does not know (prost would drop it
    /// silently): its number, and the path of numbers to it described.
    #[error(
        "unknown field number {number} (field path {path}): not in meshgate's Envoy protos (refused rather than ignored)"
    )]
    UnknownField { number: u64, path: String },
    /// Fields were dropped, but the search for them ran out of budget.
    #[error(
        "fields meshgate's Envoy protos do not know were dropped while decoding (refused rather than ignored)"
    )]
    UnknownNotLocated,
}

impl DecodeError {
    /// The kind, as a short stable word for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TypeUrl { .. } => "type_url",
            Self::Malformed { .. } => "malformed",
            Self::UnknownField { .. } | Self::UnknownNotLocated => "unknown_field",
        }
    }
}

/// Decodes an `Any` of the expected type, refusing fields meshgate's
/// Envoy types do not know (`unknown`): prost would skip them silently.
pub fn decode<M: Message + Default + Debug + PartialEq>(
    any: &protobuf::Any,
    want: &str,
) -> Result<M, DecodeError> {
    let m = decode_lax::<M>(any, want)?;
    unknown_fields(&m, &any.value)?;
    Ok(m)
}

/// Decodes an `Any` of the expected type, keeping quiet about unknown
/// fields (the caller checks them with `unknown_fields` once it can name
/// the resource).
pub fn decode_lax<M: Message + Default>(any: &protobuf::Any, want: &str) -> Result<M, DecodeError> {
    if any.type_url != want {
        return Err(DecodeError::TypeUrl {
            got: any.type_url.clone(),
            want: want.to_string(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| DecodeError::Malformed {
        want: want.to_string(),
        source,
    })
}

/// Refuses a decoded message whose bytes held fields its type does not
/// know, naming the field number (and the path of numbers to it).
pub fn unknown_fields<M: Message + Default + Debug + PartialEq>(
    m: &M,
    bytes: &[u8],
) -> Result<(), DecodeError> {
    use crate::unknown::{Unknown, describe, unknown_field};
    match unknown_field(m, bytes) {
        None => Ok(()),
        Some(Unknown::Path(p)) => Err(DecodeError::UnknownField {
            number: p.last().copied().unwrap_or(0),
            path: describe::<M>(bytes, &p),
        }),
        Some(Unknown::NotLocated) => Err(DecodeError::UnknownNotLocated),
    }
}

pub(crate) fn duration(d: &protobuf::Duration, path: &str) -> R<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return err(path, "negative duration");
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn humantime(d: Duration) -> Value {
    Value::String(humantime_str(d))
}

fn humantime_str(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

fn to_json(v: &protobuf::Value) -> Value {
    use protobuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // A Struct has doubles only: a whole number becomes an integer, as
        // protobuf's JSON prints it and a YAML config writes it (so
        // `9080` from xDS equals `9080` from a file, and logs show `9080`).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
            json!(*n as i64)
        }
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(to_json).collect()),
    }
}

pub(crate) fn struct_json(s: &protobuf::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

fn metadata(m: Option<core3::Metadata>, path: &str) -> R<BTreeMap<String, Value>> {
    let Some(mut m) = m else {
        return Ok(BTreeMap::new());
    };
    let out = std::mem::take(&mut m.filter_metadata)
        .into_iter()
        .map(|(k, v)| (k, struct_json(&v)))
        .collect();
    rest(&m, path)?;
    Ok(out)
}

/// `ip:port` (or `host:port`) of a socket address.
fn socket_address(a: Option<core3::Address>, path: &str) -> R<String> {
    let Some(mut a) = a else {
        return err(path, "missing address");
    };
    let sa = match a.address.take() {
        Some(core3::address::Address::SocketAddress(sa)) => sa,
        Some(_) => return err(join(path, "address"), "only socket_address is supported"),
        None => return err(path, "missing socket_address"),
    };
    rest(&a, path)?;
    let p = join(path, "socket_address");
    let mut sa = sa;
    let host = std::mem::take(&mut sa.address);
    let port = match sa.port_specifier.take() {
        Some(core3::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p,
        Some(core3::socket_address::PortSpecifier::PortValue(_)) => {
            return err(join(&p, "port_value"), "port out of range");
        }
        _ => return err(join(&p, "port_value"), "missing port_value"),
    };
    rest(&sa, &p)?;
    if host.contains(':') && !host.starts_with('[') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

fn lb_policy(p: i32, path: &str) -> R<&'static str> {
    use cds::cluster::LbPolicy;
    Ok(match LbPolicy::try_from(p) {
        Ok(LbPolicy::RoundRobin) => "round_robin",
        Ok(LbPolicy::LeastRequest) => "least_request",
        Ok(LbPolicy::RingHash) => "ring_hash",
        Ok(LbPolicy::Random) => "random",
        Ok(LbPolicy::Maglev) => "maglev",
        Ok(LbPolicy::ClusterProvided) => "cluster_provided",
        _ => return err(path, format!("lb_policy {p} not supported")),
    })
}

/// An EDS `health_status` as meshgate's endpoint health (Envoy's rule:
/// UNKNOWN and HEALTHY are healthy, DEGRADED is used when healthy endpoints
/// are short, UNHEALTHY, DRAINING and TIMEOUT get no traffic).
fn health_status(health: i32, path: &str) -> R<EndpointHealthStatus> {
    use core3::HealthStatus;
    Ok(match HealthStatus::try_from(health) {
        Ok(HealthStatus::Unknown) => EndpointHealthStatus::Unknown,
        Ok(HealthStatus::Healthy) => EndpointHealthStatus::Healthy,
        Ok(HealthStatus::Unhealthy) => EndpointHealthStatus::Unhealthy,
        Ok(HealthStatus::Draining) => EndpointHealthStatus::Draining,
        Ok(HealthStatus::Timeout) => EndpointHealthStatus::Timeout,
        Ok(HealthStatus::Degraded) => EndpointHealthStatus::Degraded,
        Err(_) => return err(path, format!("unknown health_status {health}")),
    })
}

/// The endpoints of a ClusterLoadAssignment (inline or from EDS).
pub fn endpoints(cla: eds::ClusterLoadAssignment, path: &str) -> R<Vec<EndpointConfig>> {
    let mut cla = cla;
    cla.cluster_name.clear();
    let mut out = Vec::new();
    for (i, mut loc) in std::mem::take(&mut cla.endpoints).into_iter().enumerate() {
        let lp = format!("{path}.endpoints[{i}]");
        let priority = std::mem::take(&mut loc.priority);
        let (locality, locality_weight) = crate::locality::take(&mut loc, &lp)?;
        let loc_meta = metadata(loc.metadata.take(), &join(&lp, "metadata"))?;
        // What `transport_socket_matches` need of it, per endpoint.
        let loc_tsm: BTreeMap<String, Value> = loc_meta
            .get_key_value(meshgate_core::config::TRANSPORT_SOCKET_MATCH)
            .map(|(k, v)| (k.clone(), v.clone()))
            .into_iter()
            .collect();
        for (j, mut e) in std::mem::take(&mut loc.lb_endpoints)
            .into_iter()
            .enumerate()
        {
            let ep = format!("{lp}.lb_endpoints[{j}]");
            let health_status = health_status(
                std::mem::take(&mut e.health_status),
                &join(&ep, "health_status"),
            )?;
            // The locality's transport socket match is looked at only
            // after the endpoint's own (`locality_metadata`).
            let mut meta = loc_meta.clone();
            meta.remove(meshgate_core::config::TRANSPORT_SOCKET_MATCH);
            meta.extend(metadata(e.metadata.take(), &join(&ep, "metadata"))?);
            let weight = match e.load_balancing_weight.take() {
                Some(w) if w.value == 0 => {
                    return err(join(&ep, "load_balancing_weight"), "weight must be >= 1");
                }
                Some(w) => w.value,
                None => 1,
            };
            let mut hc_config = None;
            let address = match e.host_identifier.take() {
                Some(eds::lb_endpoint::HostIdentifier::Endpoint(mut end)) => {
                    let a = socket_address(end.address.take(), &join(&ep, "endpoint.address"))?;
                    end.hostname.clear();
                    if let Some(h) = end.health_check_config.take() {
                        let hp = join(&ep, "endpoint.health_check_config");
                        hc_config =
                            Some(crate::health_check::endpoint_health_check_config(h, &hp)?);
                    }
                    rest(&end, &join(&ep, "endpoint"))?;
                    a
                }
                _ => return err(join(&ep, "endpoint"), "missing endpoint"),
            };
            rest(&e, &ep)?;
            out.push(EndpointConfig {
                address,
                weight,
                metadata: meta,
                health_status,
                priority,
                health_check_config: hc_config,
                locality: locality.clone(),
                locality_weight,
                locality_metadata: loc_tsm.clone(),
            });
        }
        rest(&loc, &lp)?;
    }
    rest(&cla, path)?;
    Ok(out)
}

/// A translated cluster and, for EDS clusters, the ClusterLoadAssignment
/// name it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub eds_name: Option<String>,
    /// The upstream TLS transport socket, translated again (`tls`) once
    /// the SDS secrets it names are known.
    pub transport_socket: Option<core3::TransportSocket>,
    /// SDS secrets its TLS context uses.
    pub sds_names: BTreeSet<String>,
    /// `transport_socket_matches`, translated again (`with_tls`) once the
    /// SDS secrets they name are known.
    pub transport_socket_matches: Vec<crate::transport_socket_match::Entry>,
    /// How long an EDS cluster warms for its first ClusterLoadAssignment
    /// before it is served with no endpoints: its `eds_config`'s
    /// `initial_fetch_timeout` (Envoy's default 15 s; `None`: `0s`, no
    /// bound).
    pub eds_fetch_timeout: Option<Duration>,
}

impl Cluster {
    /// The cluster config with its upstream TLS, secrets resolved by
    /// `secrets`; `None` while a secret is missing (the cluster warms).
    pub fn with_tls(&self, secrets: Secrets<'_>) -> Result<Option<ClusterConfig>, TranslateError> {
        if self.transport_socket.is_none() && self.transport_socket_matches.is_empty() {
            return Ok(Some(self.config.clone()));
        }
        let mut sds = BTreeSet::new();
        let tls = match &self.transport_socket {
            None => None,
            Some(ts) => Some(wrap(
                "Cluster",
                &self.config.name,
                crate::tls::upstream(ts.clone(), "transport_socket", secrets, &mut sds),
            )?),
        };
        let transport_socket_matches = wrap(
            "Cluster",
            &self.config.name,
            crate::transport_socket_match::resolve(
                &self.transport_socket_matches,
                secrets,
                &mut sds,
            ),
        )?;
        if sds.iter().any(|n| secrets(n).is_none()) {
            return Ok(None);
        }
        Ok(Some(ClusterConfig {
            tls,
            transport_socket_matches,
            ..self.config.clone()
        }))
    }
}

pub fn cluster(c: cds::Cluster) -> Result<Cluster, TranslateError> {
    let name = c.name.clone();
    wrap("Cluster", &name, cluster_inner(c))
}

fn cluster_inner(mut c: cds::Cluster) -> R<Cluster> {
    use cds::cluster::{ClusterDiscoveryType, DiscoveryType as Dt};
    let name = std::mem::take(&mut c.name);
    c.alt_stat_name.clear();
    let dt = match c.cluster_discovery_type.take() {
        None => Dt::Static,
        Some(ClusterDiscoveryType::Type(t)) => match Dt::try_from(t) {
            Ok(t @ (Dt::Static | Dt::StrictDns | Dt::Eds | Dt::OriginalDst)) => t,
            _ => {
                return err(
                    "type",
                    format!(
                        "cluster type {t} not supported (STATIC, STRICT_DNS, EDS, ORIGINAL_DST)"
                    ),
                );
            }
        },
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return err("cluster_type", "custom cluster types are not supported");
        }
    };
    let lb_enum = std::mem::take(&mut c.lb_policy);
    let connect_timeout = match c.connect_timeout.take() {
        Some(d) => duration(&d, "connect_timeout")?,
        None => Duration::from_secs(5),
    };
    let dns_refresh_rate = match c.dns_refresh_rate.take() {
        Some(d) => duration(&d, "dns_refresh_rate")?,
        None => Duration::from_secs(5),
    };
    let dns_lookup_family = {
        use cds::cluster::DnsLookupFamily as F;
        use meshgate_core::config::DnsLookupFamily as M;
        match F::try_from(std::mem::take(&mut c.dns_lookup_family)) {
            Ok(F::Auto) => M::Auto,
            Ok(F::V4Only) => M::V4Only,
            Ok(F::V6Only) => M::V6Only,
            Ok(F::V4Preferred) => M::V4Preferred,
            Ok(F::All) => M::All,
            Err(_) => return err("dns_lookup_family", "unknown value"),
        }
    };
    let mut protocol = None;
    // The legacy cluster field: the same upstream options as the
    // extension's explicit http2_protocol_options.
    let mut legacy_h2 = serde_json::Map::new();
    if let Some(h2) = c.http2_protocol_options.take() {
        crate::upstream_http::http2(h2, "http2_protocol_options", &mut legacy_h2)?;
        protocol = Some("http2".to_string());
    }
    // envoy.transport_sockets.quic: its UpstreamTlsContext is the TLS.
    let quic = crate::quic_upstream::unwrap(&mut c.transport_socket)?;
    let mut ext = crate::upstream_http::translate(&mut c)?;
    ext.options.extend(legacy_h2);
    if let Some(p) = ext.protocol {
        if protocol.is_some() {
            return err(
                "http2_protocol_options",
                "set with typed_extension_protocol_options' explicit_http_config: set one",
            );
        }
        protocol = Some(p);
    }
    // auto_config on a TLS cluster: HTTP/2 or HTTP/1.1 per endpoint by the
    // ALPN its handshake negotiates (meshgate's `protocol: auto`).
    let tls_socket = c
        .transport_socket
        .as_ref()
        .is_some_and(|t| !crate::tls::is_raw_buffer(t));
    if ext.auto_config && (tls_socket || !c.transport_socket_matches.is_empty()) {
        protocol = Some(meshgate_core::upstream_protocol::AUTO.to_string());
        ext.options.extend(std::mem::take(&mut ext.auto_h2));
    }
    let circuit_breakers = match c.circuit_breakers.take() {
        None => None,
        Some(cb) => Some(crate::circuit_breakers::translate(cb)?),
    };
    let outlier_detection = match c.outlier_detection.take() {
        Some(o) => Some(crate::outlier::outlier_detection(o, "outlier_detection")?),
        None => None,
    };
    let mut eds_name = None;
    let mut eds_fetch_timeout = None;
    let mut eps = Vec::new();
    let mut cla_policy = None;
    match dt {
        Dt::Eds => {
            let mut ec = c.eds_cluster_config.take().unwrap_or_default();
            let f = ads_source(ec.eds_config.take(), "eds_cluster_config.eds_config")?;
            eds_fetch_timeout = fetch_bound(f);
            let svc = std::mem::take(&mut ec.service_name);
            rest(&ec, "eds_cluster_config")?;
            eds_name = Some(if svc.is_empty() { name.clone() } else { svc });
            if c.load_assignment.is_some() {
                return err(
                    "load_assignment",
                    "an EDS cluster takes its endpoints from EDS",
                );
            }
        }
        _ => {
            if let Some(mut la) = c.load_assignment.take() {
                cla_policy = crate::priority::policy(la.policy.take(), "load_assignment.policy")?;
                eps = endpoints(la, "load_assignment")?;
            }
        }
    }
    // The (cluster-level) limit of the HTTP pools: `protocol_options`.
    let mut options = ext.options;
    match c.max_requests_per_connection.take() {
        Some(v) if v.value == 0 => return err("max_requests_per_connection", "must be >= 1"),
        Some(_) if options.contains_key("max_requests_per_connection") => {
            return err(
                "max_requests_per_connection",
                "set with common_http_protocol_options.max_requests_per_connection: set one",
            );
        }
        Some(v) => {
            options.insert("max_requests_per_connection".into(), json!(v.value));
        }
        None => {}
    }
    let speaks_h2 = matches!(protocol.as_deref(), Some("http2" | "downstream" | "auto"));
    crate::quic_upstream::check(
        quic,
        protocol.as_deref(),
        &join(&ext.path, "explicit_http_config.http3_protocol_options"),
        !c.transport_socket_matches.is_empty(),
        &options,
    )?;
    if !speaks_h2 {
        for k in [
            "initial_stream_window_size",
            "initial_connection_window_size",
            "max_concurrent_streams",
        ] {
            // HTTP/3's own stream limit (quic_protocol_options).
            let h3_streams = k == "max_concurrent_streams" && quic;
            if options.contains_key(k) && !h3_streams {
                return err(
                    k,
                    "an HTTP/2 window on a cluster that does not speak HTTP/2",
                );
            }
        }
    }
    let protocol_options = match options.is_empty() {
        true => Value::Null,
        false => Value::Object(options),
    };
    let per_connection_buffer_limit_bytes = buffer_limit(
        c.per_connection_buffer_limit_bytes.take(),
        "per_connection_buffer_limit_bytes",
    )?;
    let health_checks =
        crate::health_check::health_checks(std::mem::take(&mut c.health_checks), "health_checks")?;
    let (transport_socket, proxy_protocol) =
        crate::proxy_protocol::upstream(c.transport_socket.take(), "transport_socket")?;
    // A plain-TCP socket is no socket (told by its type URL).
    let transport_socket = transport_socket.filter(|t| !crate::tls::is_raw_buffer(t));
    let mut sds_names = BTreeSet::new();
    let transport_socket_matches = crate::transport_socket_match::take(&mut c, &mut sds_names)?;
    if let Some(ts) = &transport_socket {
        // Refused now if unsupported; filled in once its secrets are known.
        let tls = crate::tls::upstream(ts.clone(), "transport_socket", &|_| None, &mut sds_names)?;
        // auto_sni: the request's authority is the SNI, which meshgate
        // sends when the context names none.
        if ext.auto_sni && tls.sni.is_some() {
            return err(
                join(&ext.path, "upstream_http_protocol_options.auto_sni"),
                "with an UpstreamTlsContext sni: meshgate sends the configured one",
            );
        }
    }
    let common_lb_config = crate::priority::common_lb_config(c.common_lb_config.take())?;
    let (original_dst_lb_config, cleanup_interval) =
        crate::original_dst::cluster(&mut c, dt == Dt::OriginalDst)?;
    // The typed `load_balancing_policy` wins over the `lb_policy` enum
    // (Envoy's rule); else the enum with its older `lb_config` kinds.
    let (lb, lb_config) = match crate::lb_policy::translate(&mut c)? {
        Some(typed) => typed,
        None => {
            let lb = lb_policy(lb_enum, "lb_policy")?;
            let hashing = crate::lb_policy::legacy(&mut c)?;
            let slow_start = crate::slow_start::lb_config(&mut c)?;
            (
                lb,
                if hashing.is_null() {
                    slow_start
                } else {
                    hashing
                },
            )
        }
    };
    let filters = crate::istio::cluster_filters(std::mem::take(&mut c.filters), "filters")?;
    let (upstream_bind_config, upstream_connection_options) = crate::upstream_socket::take(&mut c)?;
    let metadata = metadata(c.metadata.take(), "metadata")?;
    rest(&c, "")?;
    let discovery = match dt {
        Dt::StrictDns => DiscoveryType::StrictDns,
        Dt::OriginalDst => DiscoveryType::OriginalDst,
        _ => DiscoveryType::Static,
    };
    // Every field named (no `..`): a field added to `ClusterConfig` must be
    // decided here, by the compiler's word.
    let config = ClusterConfig {
        name,
        discovery,
        lb_policy: lb.to_string(),
        lb_config,
        connect_timeout,
        max_connections: None,
        circuit_breakers,
        dns_refresh_rate,
        dns_lookup_family,
        connect_failure_backoff: BackoffConfig::default(),
        endpoints: eps,
        protocol,
        protocol_options,
        tls: None,
        proxy_protocol,
        common_lb_config,
        policy: cla_policy,
        health_checks,
        outlier_detection,
        original_dst_lb_config,
        cleanup_interval,
        per_connection_buffer_limit_bytes,
        transport_socket_matches: Vec::new(),
        filters,
        upstream_bind_config,
        upstream_connection_options,
        metadata,
        not_found: false,
    };
    Ok(Cluster {
        config,
        eds_name,
        transport_socket,
        sds_names,
        transport_socket_matches,
        eds_fetch_timeout,
    })
}

/// Only ADS is served: a `ConfigSource` must say `ads: {}`. Returns its
/// `initial_fetch_timeout`, if set (what bounds the warming of a listener
/// on its RDS source, of an EDS cluster on its EDS source; see `fetch_bound`).
pub(crate) fn ads_source(s: Option<core3::ConfigSource>, path: &str) -> R<Option<Duration>> {
    let Some(mut s) = s else {
        return err(path, "missing config source (want ads: {})");
    };
    match s.config_source_specifier.take() {
        Some(core3::config_source::ConfigSourceSpecifier::Ads(a)) => rest(&a, &join(path, "ads"))?,
        _ => return err(path, "only `ads` config sources are supported"),
    }
    // resource_api_version V3 is the only one there is (enum value 2).
    if s.resource_api_version == 2 {
        s.resource_api_version = 0;
    }
    let fetch = match s.initial_fetch_timeout.take() {
        Some(d) => Some(duration(&d, &join(path, "initial_fetch_timeout"))?),
        None => None,
    };
    rest(&s, path)?;
    Ok(fetch)
}

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The warming bound a config source's `initial_fetch_timeout` gives:
/// Envoy's 15 s unless set; `0s` means wait for ever (`None`).
pub fn fetch_bound(set: Option<Duration>) -> Option<Duration> {
    match set {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    }
}

/// A translated listener, with the route configurations and clusters it
/// needs before it may serve (warming).
#[derive(Debug, Clone)]
pub struct Listener {
    pub config: ListenerConfig,
    pub rds_names: BTreeSet<String>,
    /// SDS secrets its TLS contexts use.
    pub sds_names: BTreeSet<String>,
    /// How long it may warm waiting for its route configurations and
    /// clusters: the shortest `initial_fetch_timeout` of its RDS config
    /// sources (Envoy's default 15 s; `None`: `0s`, no bound).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Translates a listener; `routes` gives the RDS route configurations
/// known so far (a missing one leaves a placeholder the caller must not
/// serve).
pub fn listener(
    l: lds::Listener,
    routes: &dyn Fn(&str) -> Option<rc::RouteConfig>,
    secrets: Secrets<'_>,
) -> Result<Listener, TranslateError> {
    let name = l.name.clone();
    wrap("Listener", &name, listener_inner(l, routes, secrets))
}

fn listener_inner(
    mut l: lds::Listener,
    routes: &dyn Fn(&str) -> Option<rc::RouteConfig>,
    secrets: Secrets<'_>,
) -> R<Listener> {
    let name = std::mem::take(&mut l.name);
    // A UDP listener is a udp_proxy (`crate::udp_proxy`).
    let udp_proxy = match crate::udp_proxy::take_protocol(&mut l) {
        true => Some(crate::udp_proxy::listener(&mut l)?),
        false => None,
    };
    let address = socket_address(l.address.take(), "address")?;
    // Metric names carry the listener name as a label.
    l.stat_prefix.clear();
    let backlog = l.tcp_backlog_size.take().map(|v| v.value).unwrap_or(1024);
    let max_connections_to_accept_per_socket_event = l
        .max_connections_to_accept_per_socket_event
        .take()
        .map(|v| v.value);
    let per_connection_buffer_limit_bytes = buffer_limit(
        l.per_connection_buffer_limit_bytes.take(),
        "per_connection_buffer_limit_bytes",
    )?;
    let lft = match l.listener_filters_timeout.take() {
        Some(d) => duration(&d, "listener_filters_timeout")?,
        None => Duration::from_secs(15),
    };
    let sidecar = crate::original_dst::listener(&mut l)?;
    let mut rds_names = BTreeSet::new();
    let mut sds_names = BTreeSet::new();
    let mut fetch = None;
    let mut chains = Vec::new();
    let mut names = Names {
        routes,
        secrets,
        rds: &mut rds_names,
        sds: &mut sds_names,
        fetch: &mut fetch,
    };
    for (i, fc) in std::mem::take(&mut l.filter_chains).into_iter().enumerate() {
        chains.push(filter_chain(
            fc,
            &format!("filter_chains[{i}]"),
            &mut names,
        )?);
    }
    if let Some(fc) = l.default_filter_chain.take() {
        chains.push(filter_chain(fc, "default_filter_chain", &mut names)?);
    }
    let traffic_direction = match std::mem::take(&mut l.traffic_direction) {
        0 => None,
        1 => Some(TrafficDirection::Inbound),
        2 => Some(TrafficDirection::Outbound),
        v => return err("traffic_direction", format!("unknown value {v}")),
    };
    crate::istio::resolve_reporters(&mut chains, traffic_direction);
    let access_log =
        crate::access_log::access_logs(std::mem::take(&mut l.access_log), "access_log")?
            .into_iter()
            .map(meshgate_core::listener_log::ListenerAccessLog)
            .collect();
    let socket_options = crate::socket_option::socket_options(
        std::mem::take(&mut l.socket_options),
        "socket_options",
    )?;
    rest(&l, "")?;
    let config = ListenerConfig {
        name,
        address,
        backlog,
        max_connections: None,
        max_connections_to_accept_per_socket_event,
        listener_filters_timeout: lft,
        quic: None,
        udp_proxy,
        filter_chains: chains,
        listener_filters: sidecar.listener_filters,
        use_original_dst: sidecar.use_original_dst,
        bind_to_port: sidecar.bind_to_port,
        transparent: sidecar.transparent,
        freebind: sidecar.freebind,
        socket_options,
        traffic_direction,
        access_log,
        per_connection_buffer_limit_bytes,
    };
    // Envoy: 15 s unless set; 0 means wait for ever.
    let initial_fetch_timeout = fetch_bound(fetch);
    Ok(Listener {
        config,
        rds_names,
        sds_names,
        initial_fetch_timeout,
    })
}

/// `per_connection_buffer_limit_bytes` (Listener, Cluster): 0 is refused
/// (Envoy's 0 turns its watermarks off: an unbounded buffer).
fn buffer_limit(v: Option<protobuf::UInt32Value>, path: &str) -> R<Option<u32>> {
    match v {
        Some(v) if v.value == 0 => err(
            path,
            "must be >= 1 (meshgate never buffers without a bound)",
        ),
        Some(v) => Ok(Some(v.value)),
        None => Ok(None),
    }
}

/// What a listener's translation looks up and what it records needing.
struct Names<'a> {
    routes: &'a dyn Fn(&str) -> Option<rc::RouteConfig>,
    secrets: Secrets<'a>,
    rds: &'a mut BTreeSet<String>,
    sds: &'a mut BTreeSet<String>,
    /// The shortest `initial_fetch_timeout` of its RDS sources so far.
    fetch: &'a mut Option<Duration>,
}

fn filter_chain(
    mut fc: lds::FilterChain,
    path: &str,
    names: &mut Names<'_>,
) -> R<FilterChainConfig> {
    let name = Some(std::mem::take(&mut fc.name)).filter(|n| !n.is_empty());
    let filter_chain_match = match fc.filter_chain_match.take() {
        None => None,
        Some(m) => Some(chain_match(m, &join(path, "filter_chain_match"))?),
    };
    let mut tls = match fc.transport_socket.take() {
        None => None,
        Some(ts) => Some(crate::tls::downstream(
            ts,
            &join(path, "transport_socket"),
            names.secrets,
            names.sds,
        )?),
    };
    // transport_socket_connect_timeout: the TLS handshake's bound (scaled
    // by reduce_timeouts' TRANSPORT_SOCKET_CONNECT). A chain without TLS
    // has no transport handshake to bound.
    if let Some(d) = fc.transport_socket_connect_timeout.take() {
        let f = join(path, "transport_socket_connect_timeout");
        let d = duration(&d, &f)?;
        if d.is_zero() {
            return err(f, "must be > 0");
        }
        if let Some(t) = tls.as_mut() {
            t.handshake_timeout = d;
        }
    }
    let mut filters = Vec::new();
    for (i, f) in std::mem::take(&mut fc.filters).into_iter().enumerate() {
        filters.push(network_filter(
            f,
            &format!("{path}.filters[{i}]"),
            names.routes,
            names.rds,
            names.fetch,
        )?);
    }
    rest(&fc, path)?;
    Ok(FilterChainConfig {
        name,
        filter_chain_match,
        tls,
        filters,
    })
}

fn chain_match(mut m: lds::FilterChainMatch, path: &str) -> R<FilterChainMatch> {
    let destination_port = match m.destination_port.take() {
        None => None,
        Some(p) if p.value >= 1 && p.value <= 65535 => Some(p.value as u16),
        Some(_) => return err(join(path, "destination_port"), "port out of range"),
    };
    let mut source_prefix_ranges = Vec::new();
    for (i, mut c) in std::mem::take(&mut m.source_prefix_ranges)
        .into_iter()
        .enumerate()
    {
        let len = c.prefix_len.take().map(|v| v.value).unwrap_or(0);
        let a = std::mem::take(&mut c.address_prefix);
        rest(&c, &format!("{path}.source_prefix_ranges[{i}]"))?;
        source_prefix_ranges.push(format!("{a}/{len}"));
    }
    let fcm = FilterChainMatch {
        destination_port,
        server_names: std::mem::take(&mut m.server_names),
        source_prefix_ranges,
        application_protocols: std::mem::take(&mut m.application_protocols),
        prefix_ranges: crate::original_dst::prefix_ranges(&mut m, path)?,
    };
    // `tls` is what meshgate's server_names matching reads anyway.
    if m.transport_protocol == "tls" && !fcm.server_names.is_empty() {
        m.transport_protocol.clear();
    }
    rest(&m, path)?;
    Ok(fcm)
}

fn network_filter(
    mut f: lds::Filter,
    path: &str,
    routes: &dyn Fn(&str) -> Option<rc::RouteConfig>,
    rds_names: &mut BTreeSet<String>,
    fetch: &mut Option<Duration>,
) -> R<FilterConfig> {
    let any = match f.config_type.take() {
        Some(lds::filter::ConfigType::TypedConfig(a)) => a,
        _ => return err(join(path, "typed_config"), "missing typed_config"),
    };
    let tp = join(path, "typed_config");
    match any.type_url.as_str() {
        HCM => {
            let h: hcm::HttpConnectionManager =
                decode(&any, HCM).map_err(|e| (tp.clone(), e.to_string()))?;
            let config = http_connection_manager(h, &tp, routes, rds_names, fetch)?;
            Ok(FilterConfig {
                name: "proxy".into(),
                // The filter parses it back with `parse_typed`.
                config: serde_json::to_value(&config).map_err(|e| (tp, e.to_string()))?,
            })
        }
        TCP_PROXY => {
            let t: tcp::TcpProxy =
                decode(&any, TCP_PROXY).map_err(|e| (tp.clone(), e.to_string()))?;
            let config = tcp_proxy(t, &tp)?;
            Ok(FilterConfig {
                name: "tcp_proxy".into(),
                // The filter parses it back with `parse_typed`.
                config: serde_json::to_value(&config).map_err(|e| (tp, e.to_string()))?,
            })
        }
        crate::dubbo_proxy::TYPE => {
            let d =
                decode(&any, crate::dubbo_proxy::TYPE).map_err(|e| (tp.clone(), e.to_string()))?;
            let config = crate::dubbo_proxy::proxy(d, &tp)?;
            Ok(FilterConfig {
                name: "proxy".into(),
                config: serde_json::to_value(&config).map_err(|e| (tp, e.to_string()))?,
            })
        }
        crate::generic_proxy::TYPE => {
            let g = decode(&any, crate::generic_proxy::TYPE)
                .map_err(|e| (tp.clone(), e.to_string()))?;
            let config = crate::generic_proxy::proxy(g, &tp)?;
            Ok(FilterConfig {
                name: "proxy".into(),
                config: serde_json::to_value(&config).map_err(|e| (tp, e.to_string()))?,
            })
        }
        crate::rbac::NETWORK_RBAC => Ok(FilterConfig {
            name: "rbac".into(),
            config: crate::rbac::network_filter(&any, &tp)?,
        }),
        crate::local_ratelimit::NETWORK => Ok(FilterConfig {
            name: "local_ratelimit".into(),
            config: crate::local_ratelimit::network_config(&any, &tp)?,
        }),
        crate::istio::TCP_METADATA_EXCHANGE => Ok(FilterConfig {
            name: "istio_metadata_exchange".into(),
            config: crate::istio::tcp_exchange(&any, &tp)?,
        }),
        // Recent istiod sends the exchange as a TypedStruct.
        u if crate::generic_proxy::TYPED_STRUCTS.contains(&u) => Ok(FilterConfig {
            name: "istio_metadata_exchange".into(),
            config: crate::istio::tcp_exchange(&any, &tp)?,
        }),
        crate::istio::STATS => Ok(FilterConfig {
            name: "istio_stats".into(),
            config: crate::istio::stats(&any, &tp)?,
        }),
        other => err(
            tp,
            format!(
                "network filter '{other}' not supported (HttpConnectionManager, TcpProxy, DubboProxy, GenericProxy, RBAC, LocalRateLimit, Istio's MetadataExchange and stats.PluginConfig)"
            ),
        ),
    }
}

fn tcp_proxy(mut t: tcp::TcpProxy, path: &str) -> R<fc::TcpProxyConfig> {
    t.stat_prefix.clear();
    let mut out = fc::TcpProxyConfig::new();
    match t.cluster_specifier.take() {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            out.cluster = Some(c);
        }
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(mut w)) => {
            let mut list = Vec::new();
            for (i, mut c) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
                let name = std::mem::take(&mut c.name);
                let weight = std::mem::take(&mut c.weight);
                rest(&c, &format!("{path}.weighted_clusters.clusters[{i}]"))?;
                list.push(fc::TcpWeightedCluster { name, weight });
            }
            rest(&w, &join(path, "weighted_clusters"))?;
            out.weighted_clusters = list;
        }
        _ => return err(join(path, "cluster"), "missing cluster"),
    }
    if let Some(d) = t.idle_timeout.take() {
        out.idle_timeout = duration(&d, &join(path, "idle_timeout"))?;
    }
    if let Some(n) = t.max_connect_attempts.take() {
        out.max_connect_attempts = n.value;
    }
    out.access_log = crate::access_log::access_logs(
        std::mem::take(&mut t.access_log),
        &join(path, "access_log"),
    )?;
    rest(&t, path)?;
    Ok(out)
}

fn http_connection_manager(
    mut h: hcm::HttpConnectionManager,
    path: &str,
    routes: &dyn Fn(&str) -> Option<rc::RouteConfig>,
    rds_names: &mut BTreeSet<String>,
    fetch: &mut Option<Duration>,
) -> R<fc::ProxyConfig> {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    h.stat_prefix.clear();
    let codec = match CodecType::try_from(std::mem::take(&mut h.codec_type)) {
        Ok(CodecType::Auto) => "auto",
        Ok(CodecType::Http1) => "http1",
        Ok(CodecType::Http2) => "http2",
        _ => {
            return err(
                join(path, "codec_type"),
                "codec type not supported (AUTO, HTTP1, HTTP2)",
            );
        }
    };
    // The router is the implicit last filter of meshgate's chain.
    let stream_filters =
        crate::http_filters::http_filters(std::mem::take(&mut h.http_filters), path)?;
    let generate_request_id = h
        .generate_request_id
        .take()
        .map(|b| b.value)
        .unwrap_or(true);
    let route_config = match h.route_specifier.take() {
        Some(RouteSpecifier::RouteConfig(mut r)) => {
            if !stream_filters.iter().any(|f| f.name == "cors") {
                crate::cors_field::strip(&mut r);
            }
            route_config(r, &join(path, "route_config"))?
        }
        Some(RouteSpecifier::Rds(mut r)) => {
            let rp = join(path, "rds");
            if let Some(t) = ads_source(r.config_source.take(), &join(&rp, "config_source"))? {
                *fetch = Some(fetch.map_or(t, |f| f.min(t)));
            }
            let name = std::mem::take(&mut r.route_config_name);
            rest(&r, &rp)?;
            if name.is_empty() {
                return err(join(&rp, "route_config_name"), "missing route_config_name");
            }
            rds_names.insert(name.clone());
            // Placeholder until the RouteConfiguration arrives; the
            // listener is not served before (warming).
            routes(&name).unwrap_or_default()
        }
        _ => {
            return err(
                join(path, "route_config"),
                "one of route_config, rds is needed",
            );
        }
    };
    // Edge options (filters/src/edge.rs). Envoy's defaults are written
    // out where meshgate's YAML defaults differ (use_remote_address,
    // upgrade_configs).
    use hcm::http_connection_manager::{
        PathWithEscapedSlashesAction as Esc, ServerHeaderTransformation as Sht,
    };
    let escaped = match Esc::try_from(std::mem::take(&mut h.path_with_escaped_slashes_action)) {
        Ok(Esc::ImplementationSpecificDefault) => {
            fc::EscapedSlashesAction::ImplementationSpecificDefault
        }
        Ok(Esc::KeepUnchanged) => fc::EscapedSlashesAction::KeepUnchanged,
        Ok(Esc::RejectRequest) => fc::EscapedSlashesAction::RejectRequest,
        Ok(Esc::UnescapeAndRedirect) => fc::EscapedSlashesAction::UnescapeAndRedirect,
        Ok(Esc::UnescapeAndForward) => fc::EscapedSlashesAction::UnescapeAndForward,
        Err(_) => {
            return err(
                join(path, "path_with_escaped_slashes_action"),
                "unknown action",
            );
        }
    };
    let server_header = match Sht::try_from(std::mem::take(&mut h.server_header_transformation)) {
        Ok(Sht::Overwrite) => fc::ServerHeaderTransformation::Overwrite,
        Ok(Sht::AppendIfAbsent) => fc::ServerHeaderTransformation::AppendIfAbsent,
        Ok(Sht::PassThrough) => fc::ServerHeaderTransformation::PassThrough,
        Err(_) => return err(join(path, "server_header_transformation"), "unknown value"),
    };
    let mut upgrades = Vec::new();
    for (i, mut u) in std::mem::take(&mut h.upgrade_configs)
        .into_iter()
        .enumerate()
    {
        let up = format!("{path}.upgrade_configs[{i}]");
        if !u.filters.is_empty() {
            return err(
                join(&up, "filters"),
                "upgrade filter chains are not supported",
            );
        }
        upgrades.push(fc::UpgradeConfig {
            upgrade_type: std::mem::take(&mut u.upgrade_type),
            enabled: u.enabled.take().is_none_or(|b| b.value),
        });
        rest(&u, &up)?;
    }
    let server_name = match std::mem::take(&mut h.server_name) {
        n if n.is_empty() => "meshgate".to_string(),
        n => n,
    };
    let mut out = fc::ProxyConfig::new(route_config);
    out.stream_filters = stream_filters;
    out.codec = codec.into();
    out.generate_request_id = generate_request_id;
    out.normalize_path = h.normalize_path.take().is_some_and(|b| b.value);
    out.merge_slashes = std::mem::take(&mut h.merge_slashes);
    out.path_with_escaped_slashes_action = escaped;
    out.use_remote_address = h.use_remote_address.take().is_some_and(|b| b.value);
    out.xff_num_trusted_hops = std::mem::take(&mut h.xff_num_trusted_hops);
    out.server_header_transformation = server_header;
    out.server_name = server_name;
    out.upgrade_configs = upgrades;
    if !h.access_log.is_empty() {
        out.access_log = Some(meshgate_core::config::access_log::AccessLogs::List(
            crate::access_log::access_logs(
                std::mem::take(&mut h.access_log),
                &join(path, "access_log"),
            )?,
        ));
    }
    if let Some(c) = h.local_reply_config.take() {
        out.local_reply_config = Some(crate::local_reply::local_reply_config(
            c,
            &join(path, "local_reply_config"),
        )?);
    }
    if let Some(d) = h.stream_idle_timeout.take() {
        out.stream_idle_timeout = duration(&d, &join(path, "stream_idle_timeout"))?;
    }
    // drain_timeout: how long a connection at its max_connection_duration
    // finishes its streams (Envoy's 5 s default when unset).
    if let Some(d) = h.drain_timeout.take() {
        out.drain_timeout = duration(&d, &join(path, "drain_timeout"))?;
    }
    if let Some(t) = h.tracing.take() {
        out.tracing = Some(crate::tracing::hcm_tracing(t, &join(path, "tracing"))?);
    }
    // common_http_protocol_options.idle_timeout: the connection idle
    // timeout (Envoy's default, one hour, when unset).
    if let Some(mut o) = h.common_http_protocol_options.take() {
        let op = join(path, "common_http_protocol_options");
        if let Some(d) = o.idle_timeout.take() {
            out.common_http_protocol_options.idle_timeout =
                duration(&d, &join(&op, "idle_timeout"))?;
        }
        {
            use core3::http_protocol_options::HeadersWithUnderscoresAction as A;
            use fc::HeadersWithUnderscoresAction as M;
            out.common_http_protocol_options
                .headers_with_underscores_action =
                match A::try_from(std::mem::take(&mut o.headers_with_underscores_action)) {
                    Ok(A::Allow) => M::Allow,
                    Ok(A::RejectRequest) => M::RejectRequest,
                    Ok(A::DropHeader) => M::DropHeader,
                    Err(_) => {
                        return err(
                            join(&op, "headers_with_underscores_action"),
                            "unknown value",
                        );
                    }
                };
        }
        // max_stream_duration: 0 (like unset) means no limit in Envoy.
        if let Some(d) = o.max_stream_duration.take() {
            let d = duration(&d, &join(&op, "max_stream_duration"))?;
            out.common_http_protocol_options.max_stream_duration = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = o.max_headers_count.take() {
            out.common_http_protocol_options.max_headers_count = Some(n.value);
        }
        // max_connection_duration: unset or 0, none.
        if let Some(d) = o.max_connection_duration.take() {
            let d = duration(&d, &join(&op, "max_connection_duration"))?;
            out.common_http_protocol_options.max_connection_duration = (!d.is_zero()).then_some(d);
        }
        rest(&o, &op)?;
    }
    // request_headers_timeout bounds each request head on every HTTP
    // codec (meshgate keeps it per codec, in the codecs' own options).
    // Envoy's 0 (and unset) means no bound; meshgate keeps its 10 s
    // default then, a stricter bound.
    if let Some(d) = h.request_headers_timeout.take() {
        let d = duration(&d, &join(path, "request_headers_timeout"))?;
        if !d.is_zero() {
            for codec in ["http1", "http2", "http3"] {
                out.codec_options.insert(
                    codec.into(),
                    json!({"request_headers_timeout": humantime(d)}),
                );
            }
        }
    }
    if let Some(mut t) = h.scheme_header_transformation.take() {
        use core3::scheme_header_transformation::Transformation;
        let tp = join(path, "scheme_header_transformation");
        match t.transformation.take() {
            None => {}
            Some(Transformation::SchemeToOverwrite(v)) => {
                out.scheme_header_transformation.scheme_to_overwrite = Some(v);
            }
        }
        out.scheme_header_transformation.match_upstream = std::mem::take(&mut t.match_upstream);
        rest(&t, &tp)?;
    }
    // strip_any_host_port (the oneof strip_port_mode) and
    // strip_matching_host_port: Envoy refuses both at once, and so does
    // the proxy filter's build.
    out.strip_matching_host_port = std::mem::take(&mut h.strip_matching_host_port);
    if let Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(b)) =
        h.strip_port_mode.take()
    {
        out.strip_any_host_port = b;
    }
    if out.strip_any_host_port && out.strip_matching_host_port {
        return err(
            join(path, "strip_any_host_port"),
            "only one of strip_matching_host_port, strip_any_host_port can be set",
        );
    }
    // x-forwarded-client-cert: Envoy's default is SANITIZE (meshgate's
    // YAML default differs, so the translation always sets it).
    {
        use hcm::http_connection_manager::ForwardClientCertDetails as F;
        out.forward_client_cert_details =
            match F::try_from(std::mem::take(&mut h.forward_client_cert_details)) {
                Ok(F::Sanitize) => fc::ForwardClientCertDetails::Sanitize,
                Ok(F::ForwardOnly) => fc::ForwardClientCertDetails::ForwardOnly,
                Ok(F::AppendForward) => fc::ForwardClientCertDetails::AppendForward,
                Ok(F::SanitizeSet) => fc::ForwardClientCertDetails::SanitizeSet,
                Ok(F::AlwaysForwardOnly) => fc::ForwardClientCertDetails::AlwaysForwardOnly,
                Err(_) => {
                    return err(join(path, "forward_client_cert_details"), "unknown value");
                }
            };
        let mut d = fc::ClientCertDetails {
            subject: false,
            cert: false,
            dns: false,
            uri: false,
        };
        if let Some(mut c) = h.set_current_client_cert_details.take() {
            let p = join(path, "set_current_client_cert_details");
            d.subject = c.subject.take().is_some_and(|b| b.value);
            d.cert = std::mem::take(&mut c.cert);
            d.dns = std::mem::take(&mut c.dns);
            d.uri = std::mem::take(&mut c.uri);
            if c.chain {
                return err(
                    join(&p, "chain"),
                    "not supported: meshgate keeps the client's leaf certificate only",
                );
            }
            if c.issuer {
                return err(join(&p, "issuer"), "not supported");
            }
        }
        out.set_current_client_cert_details = d;
    }
    if let Some(o) = h.http2_protocol_options.take() {
        let h2 = http2_server_options(o, &join(path, "http2_protocol_options"))?;
        let entry = out
            .codec_options
            .entry("http2".into())
            .or_insert_with(|| json!({}));
        if let Some(dst) = entry.as_object_mut() {
            dst.extend(h2);
        }
    }
    // max_request_headers_kb (Envoy's default 60 KiB is meshgate's too):
    // the largest request head every HTTP codec reads, 431 beyond it.
    if let Some(kb) = h.max_request_headers_kb.take() {
        if kb.value == 0 || kb.value > 8192 {
            return err(
                join(path, "max_request_headers_kb"),
                "must be 1 to 8192 (KiB)",
            );
        }
        for codec in ["http1", "http2", "http3"] {
            let entry = out
                .codec_options
                .entry(codec.into())
                .or_insert_with(|| json!({}));
            if let Some(dst) = entry.as_object_mut() {
                dst.insert(
                    "max_request_headers_bytes".into(),
                    json!(u64::from(kb.value) * 1024),
                );
            }
        }
    }
    out.via = std::mem::take(&mut h.via);
    out.skip_xff_append = std::mem::take(&mut h.skip_xff_append);
    out.strip_trailing_host_dot = std::mem::take(&mut h.strip_trailing_host_dot);
    out.preserve_external_request_id = std::mem::take(&mut h.preserve_external_request_id);
    out.always_set_request_id_in_response =
        std::mem::take(&mut h.always_set_request_id_in_response);
    // request_timeout: unset or 0, none.
    if let Some(d) = h.request_timeout.take() {
        out.request_timeout = duration(&d, &join(path, "request_timeout"))?;
    }
    if let Some(mut r) = h.request_id_extension.take() {
        let rp = join(path, "request_id_extension");
        if let Some(any) = r.typed_config.take() {
            use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
            let tp = join(&rp, "typed_config");
            let mut u: UuidRequestIdConfig = decode(&any, UUID_REQUEST_ID).map_err(|e| {
                (
                    tp.clone(),
                    format!("{e} (the UUID extension is the only kind)"),
                )
            })?;
            out.request_id_extension = fc::RequestIdExtension {
                pack_trace_reason: u.pack_trace_reason.take().is_none_or(|b| b.value),
                use_request_id_for_trace_sampling: u
                    .use_request_id_for_trace_sampling
                    .take()
                    .is_none_or(|b| b.value),
            };
            rest(&u, &tp)?;
        }
        rest(&r, &rp)?;
    }
    rest(&h, path)?;
    Ok(out)
}

const UUID_REQUEST_ID: &str =
    "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

/// The HCM's `http2_protocol_options` as the `http2` codec's options:
/// stream limit, flow-control windows and the flood limits Envoy names
/// like meshgate does; anything else is refused by name.
fn http2_server_options(
    mut o: core3::Http2ProtocolOptions,
    path: &str,
) -> R<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    if let Some(v) = o.max_concurrent_streams.take() {
        m.insert("max_concurrent_streams".into(), json!(v.value));
    }
    if let Some(v) = o.initial_stream_window_size.take() {
        m.insert("initial_stream_window_size".into(), json!(v.value));
    }
    if let Some(v) = o.initial_connection_window_size.take() {
        m.insert("initial_connection_window_size".into(), json!(v.value));
    }
    let mut flood = serde_json::Map::new();
    if let Some(v) = o.max_consecutive_inbound_frames_with_empty_payload.take() {
        flood.insert(
            "max_consecutive_inbound_frames_with_empty_payload".into(),
            json!(v.value),
        );
    }
    if let Some(v) = o.max_inbound_priority_frames_per_stream.take() {
        flood.insert(
            "max_inbound_priority_frames_per_stream".into(),
            json!(v.value),
        );
    }
    if let Some(v) = o
        .max_inbound_window_update_frames_per_data_frame_sent
        .take()
    {
        flood.insert(
            "max_inbound_window_update_frames_per_data_frame_sent".into(),
            json!(v.value),
        );
    }
    if !flood.is_empty() {
        m.insert("flood".into(), Value::Object(flood));
    }
    rest(&o, path)?;
    Ok(m)
}

/// Translates a RouteConfiguration from RDS: unless it says otherwise,
/// its routes may name clusters CDS has not sent (Envoy's
/// `validate_clusters` default for RDS), answered with their
/// `cluster_not_found_response_code` until the cluster arrives.
pub fn route_configuration(r: rds::RouteConfiguration) -> Result<rc::RouteConfig, TranslateError> {
    let name = r.name.clone();
    let mut out = wrap("RouteConfiguration", &name, route_config(r, ""))?;
    out.validate_clusters.get_or_insert(false);
    Ok(out)
}

pub(crate) fn header_options(
    v: Vec<core3::HeaderValueOption>,
    path: &str,
) -> R<Vec<rc::HeaderValueOption>> {
    let mut out = Vec::new();
    for (i, mut o) in v.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(mut h) = o.header.take() else {
            return err(join(&p, "header"), "missing header");
        };
        let name = std::mem::take(&mut h.key);
        let value = std::mem::take(&mut h.value);
        rest(&h, &join(&p, "header"))?;
        // append_action: APPEND_IF_EXISTS_OR_ADD (0) or
        // OVERWRITE_IF_EXISTS_OR_ADD (2); the deprecated `append` wins.
        let append = match (o.append.take(), std::mem::take(&mut o.append_action)) {
            (Some(b), _) => b.value,
            (None, 0) => true,
            (None, 2) => false,
            (None, a) => {
                return err(
                    join(&p, "append_action"),
                    format!("append_action {a} not supported"),
                );
            }
        };
        // keep_empty_value: Envoy drops a header whose value is empty
        // unless it is set; meshgate's values are literals, so this is
        // decided here.
        let keep_empty = std::mem::take(&mut o.keep_empty_value);
        rest(&o, &p)?;
        if value.is_empty() && !keep_empty {
            continue;
        }
        out.push(rc::HeaderValueOption {
            name,
            value,
            append,
        });
    }
    Ok(out)
}

fn route_config(mut r: rds::RouteConfiguration, path: &str) -> R<rc::RouteConfig> {
    let name = std::mem::take(&mut r.name);
    let mut vhs = Vec::new();
    for (i, v) in std::mem::take(&mut r.virtual_hosts).into_iter().enumerate() {
        vhs.push(virtual_host(
            v,
            &join(path, &format!("virtual_hosts[{i}]")),
        )?);
    }
    // Route-configuration-wide header mutations apply to every virtual
    // host: meshgate's model has them per virtual host, so they are copied.
    let req_add = header_options(
        std::mem::take(&mut r.request_headers_to_add),
        &join(path, "request_headers_to_add"),
    )?;
    let resp_add = header_options(
        std::mem::take(&mut r.response_headers_to_add),
        &join(path, "response_headers_to_add"),
    )?;
    let req_rm = std::mem::take(&mut r.request_headers_to_remove);
    let resp_rm = std::mem::take(&mut r.response_headers_to_remove);
    for v in &mut vhs {
        v.request_headers_to_add.extend(req_add.iter().cloned());
        v.response_headers_to_add.extend(resp_add.iter().cloned());
        v.request_headers_to_remove.extend(req_rm.iter().cloned());
        v.response_headers_to_remove.extend(resp_rm.iter().cloned());
    }
    // Unset: true inline (a listener waits for its clusters), false from
    // RDS (`route_configuration`), as Envoy's defaults.
    let validate_clusters = r.validate_clusters.take().map(|b| b.value);
    // Envoy's default (false) is stated, so the host is matched as sent
    // rather than by meshgate YAML's port-lenient default.
    let ignore_port_in_host_matching = Some(std::mem::take(&mut r.ignore_port_in_host_matching));
    rest(&r, path)?;
    Ok(rc::RouteConfig {
        name,
        virtual_hosts: vhs,
        validate_clusters,
        ignore_port_in_host_matching,
    })
}

fn virtual_host(mut v: rds::VirtualHost, path: &str) -> R<rc::VirtualHostConfig> {
    let mut routes = Vec::new();
    for (i, r) in std::mem::take(&mut v.routes).into_iter().enumerate() {
        routes.push(route(r, &join(path, &format!("routes[{i}]")))?);
    }
    let mut out = rc::VirtualHostConfig {
        per_filter_config: crate::http_filters::per_filter_config(
            std::mem::take(&mut v.typed_per_filter_config),
            path,
        )?,
        name: std::mem::take(&mut v.name),
        domains: std::mem::take(&mut v.domains),
        routes,
        request_headers_to_add: header_options(
            std::mem::take(&mut v.request_headers_to_add),
            &join(path, "request_headers_to_add"),
        )?,
        request_headers_to_remove: std::mem::take(&mut v.request_headers_to_remove),
        response_headers_to_add: header_options(
            std::mem::take(&mut v.response_headers_to_add),
            &join(path, "response_headers_to_add"),
        )?,
        response_headers_to_remove: std::mem::take(&mut v.response_headers_to_remove),
        rate_limits: std::mem::take(&mut v.rate_limits)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let rp = format!("{}[{i}]", join(path, "rate_limits"));
                crate::local_ratelimit::rate_limit(r, &rp)
            })
            .collect::<R<_>>()?,
        retry_policy: match v.retry_policy.take() {
            Some(rp) => Some(crate::retry_policy::translate(
                rp,
                &join(path, "retry_policy"),
            )?),
            None => None,
        },
        hedge_policy: match v.hedge_policy.take() {
            Some(h) => Some(crate::retry_policy::hedge(h, &join(path, "hedge_policy"))?),
            None => None,
        },
        include_request_attempt_count: std::mem::take(&mut v.include_request_attempt_count),
        include_attempt_count_in_response: std::mem::take(&mut v.include_attempt_count_in_response),
        metadata: metadata(v.metadata.take(), &join(path, "metadata"))?,
    };
    crate::cors_field::apply(
        &mut out.per_filter_config,
        v.cors.take(),
        &join(path, "cors"),
    )?;
    rest(&v, path)?;
    Ok(out)
}

fn route(mut r: rds::Route, path: &str) -> R<rc::RouteEntryConfig> {
    let mut out = rc::RouteEntryConfig {
        per_filter_config: crate::http_filters::per_filter_config(
            std::mem::take(&mut r.typed_per_filter_config),
            path,
        )?,
        name: Some(std::mem::take(&mut r.name)).filter(|n| !n.is_empty()),
        match_: route_match(r.r#match.take().unwrap_or_default(), &join(path, "match"))?,
        request_headers_to_add: header_options(
            std::mem::take(&mut r.request_headers_to_add),
            &join(path, "request_headers_to_add"),
        )?,
        request_headers_to_remove: std::mem::take(&mut r.request_headers_to_remove),
        response_headers_to_add: header_options(
            std::mem::take(&mut r.response_headers_to_add),
            &join(path, "response_headers_to_add"),
        )?,
        response_headers_to_remove: std::mem::take(&mut r.response_headers_to_remove),
        metadata: metadata(r.metadata.take(), &join(path, "metadata"))?,
        ..Default::default()
    };
    if let Some(t) = r.tracing.take() {
        out.tracing = Some(crate::tracing::route_tracing(t, &join(path, "tracing"))?);
    }
    match r.action.take() {
        Some(rds::route::Action::Route(mut a)) => {
            let p = join(path, "route.cors");
            crate::cors_field::apply(&mut out.per_filter_config, a.cors.take(), &p)?;
            out.route = Some(route_action(a, &join(path, "route"))?)
        }
        Some(rds::route::Action::Redirect(a)) => {
            out.redirect = Some(redirect(a, &join(path, "redirect"))?)
        }
        Some(rds::route::Action::DirectResponse(mut d)) => {
            let dp = join(path, "direct_response");
            let body = match d.body.take() {
                None => None,
                Some(mut b) => {
                    use core3::data_source::Specifier;
                    let s = match b.specifier.take() {
                        Some(Specifier::InlineString(s)) => s,
                        Some(Specifier::InlineBytes(v)) => String::from_utf8(v).map_err(|_| {
                            (
                                join(&dp, "body.inline_bytes"),
                                "body must be UTF-8".to_string(),
                            )
                        })?,
                        _ => {
                            return err(
                                join(&dp, "body"),
                                "only inline_string and inline_bytes bodies are supported",
                            );
                        }
                    };
                    rest(&b, &join(&dp, "body"))?;
                    Some(s)
                }
            };
            let status = std::mem::take(&mut d.status);
            rest(&d, &dp)?;
            out.direct_response = Some(rc::DirectResponseConfig {
                status: u16::try_from(status).unwrap_or(0),
                body,
            });
        }
        _ => return err(path, "one of route, redirect, direct_response is needed"),
    }
    rest(&r, path)?;
    Ok(out)
}

pub(crate) fn regex(mut m: matcher::RegexMatcher, path: &str) -> R<String> {
    let s = std::mem::take(&mut m.regex);
    // engine_type google_re2 is the only engine there is; meshgate's is
    // the `regex` crate, RE2-compatible syntax.
    m.engine_type = None;
    rest(&m, path)?;
    Ok(s)
}

/// One `HeaderMatcher` (route match, retry policy) at `hp`.
pub(crate) fn header_matcher(mut h: rds::HeaderMatcher, hp: &str) -> R<rc::HeaderMatcherConfig> {
    use rds::header_matcher::HeaderMatchSpecifier as S;
    let mut c = rc::HeaderMatcherConfig {
        name: std::mem::take(&mut h.name),
        invert_match: std::mem::take(&mut h.invert_match),
        ..Default::default()
    };
    match h.header_match_specifier.take() {
        None => c.present_match = Some(true),
        Some(S::ExactMatch(s)) => c.exact_match = Some(s),
        Some(S::PrefixMatch(s)) => c.prefix_match = Some(s),
        Some(S::SuffixMatch(s)) => c.suffix_match = Some(s),
        Some(S::PresentMatch(b)) => c.present_match = Some(b),
        Some(S::SafeRegexMatch(r)) => {
            c.safe_regex_match = Some(regex(r, &join(hp, "safe_regex_match"))?)
        }
        Some(S::StringMatch(mut sm)) => {
            use matcher::string_matcher::MatchPattern as P;
            let sp = join(hp, "string_match");
            if sm.ignore_case {
                return err(join(&sp, "ignore_case"), "ignore_case not supported");
            }
            match sm.match_pattern.take() {
                Some(P::Exact(s)) => c.exact_match = Some(s),
                Some(P::Prefix(s)) => c.prefix_match = Some(s),
                Some(P::Suffix(s)) => c.suffix_match = Some(s),
                Some(P::SafeRegex(r)) => {
                    c.safe_regex_match = Some(regex(r, &join(&sp, "safe_regex"))?)
                }
                _ => {
                    return err(
                        sp,
                        "match pattern not supported (exact, prefix, suffix, safe_regex)",
                    );
                }
            }
        }
        Some(_) => {
            return err(
                hp,
                "header match not supported (exact, prefix, suffix, present, safe_regex, string_match)",
            );
        }
    }
    rest(&h, hp)?;
    Ok(c)
}

pub(crate) fn route_match(mut m: rds::RouteMatch, path: &str) -> R<rc::RouteMatchConfig> {
    use rds::route_match::PathSpecifier;
    let mut out = rc::RouteMatchConfig::default();
    match m.path_specifier.take() {
        Some(PathSpecifier::Prefix(p)) => out.prefix = Some(p),
        Some(PathSpecifier::Path(p)) => out.path = Some(p),
        Some(PathSpecifier::SafeRegex(r)) => {
            out.safe_regex = Some(regex(r, &join(path, "safe_regex"))?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => out.path_separated_prefix = Some(p),
        _ => {
            return err(
                path,
                "one of prefix, path, safe_regex, path_separated_prefix is needed",
            );
        }
    }
    out.case_sensitive = m.case_sensitive.take().map(|b| b.value).unwrap_or(true);
    if let Some(g) = m.grpc.take() {
        rest(&g, &join(path, "grpc"))?;
        out.grpc = true;
    }
    for (i, h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
        out.headers
            .push(header_matcher(h, &format!("{path}.headers[{i}]"))?);
    }
    for (i, mut q) in std::mem::take(&mut m.query_parameters)
        .into_iter()
        .enumerate()
    {
        use rds::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let qp = format!("{path}.query_parameters[{i}]");
        let mut c = rc::QueryParameterMatcherConfig {
            name: std::mem::take(&mut q.name),
            ..Default::default()
        };
        match q.query_parameter_match_specifier.take() {
            None => c.present_match = Some(true),
            Some(S::PresentMatch(b)) => c.present_match = Some(b),
            Some(S::StringMatch(mut sm)) => {
                use matcher::string_matcher::MatchPattern as P;
                let sp = join(&qp, "string_match");
                if sm.ignore_case {
                    return err(join(&sp, "ignore_case"), "ignore_case not supported");
                }
                match sm.match_pattern.take() {
                    Some(P::Exact(s)) => c.exact_match = Some(s),
                    Some(P::SafeRegex(r)) => {
                        c.safe_regex_match = Some(regex(r, &join(&sp, "safe_regex"))?)
                    }
                    _ => return err(sp, "match pattern not supported (exact, safe_regex)"),
                }
            }
        }
        rest(&q, &qp)?;
        out.query_parameters.push(c);
    }
    rest(&m, path)?;
    Ok(out)
}

pub(crate) fn route_action(mut a: rds::RouteAction, path: &str) -> R<rc::RouteActionConfig> {
    use rds::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let mut out = rc::RouteActionConfig::default();
    match a.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => out.cluster = Some(c),
        Some(ClusterSpecifier::WeightedClusters(mut w)) => {
            let wp = join(path, "weighted_clusters");
            let mut list = Vec::new();
            for (i, mut c) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
                let cp = format!("{wp}.clusters[{i}]");
                let name = std::mem::take(&mut c.name);
                let weight = c.weight.take().map(|v| v.value).unwrap_or(0);
                let per_filter_config = crate::http_filters::per_filter_config(
                    std::mem::take(&mut c.typed_per_filter_config),
                    &cp,
                )?;
                rest(&c, &cp)?;
                if weight == 0 {
                    // Envoy allows weight 0 (no traffic); meshgate's model
                    // wants >= 1, so such an entry is dropped.
                    continue;
                }
                list.push(rc::ClusterWeightConfig {
                    name,
                    weight,
                    per_filter_config,
                });
            }
            w.total_weight = None;
            rest(&w, &wp)?;
            if list.is_empty() {
                return err(wp, "no cluster with a weight above 0");
            }
            out.weighted_clusters = Some(rc::WeightedClustersConfig { clusters: list });
        }
        _ => return err(path, "one of cluster, weighted_clusters is needed"),
    }
    out.cluster_not_found_response_code = {
        use rc::ClusterNotFoundResponseCode as C;
        match std::mem::take(&mut a.cluster_not_found_response_code) {
            0 => None,
            1 => Some(C::NotFound),
            2 => Some(C::InternalServerError),
            c => {
                return err(
                    join(path, "cluster_not_found_response_code"),
                    format!("unknown code {c}"),
                );
            }
        }
    };
    let pr = std::mem::take(&mut a.prefix_rewrite);
    if !pr.is_empty() {
        out.prefix_rewrite = Some(pr);
    }
    if let Some(rr) = a.regex_rewrite.take() {
        out.regex_rewrite = Some(regex_rewrite(rr, &join(path, "regex_rewrite"))?);
    }
    match a.host_rewrite_specifier.take() {
        None => {}
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => out.host_rewrite_literal = Some(h),
        Some(_) => {
            return err(
                join(path, "host_rewrite_specifier"),
                "only host_rewrite_literal is supported",
            );
        }
    }
    if let Some(d) = a.timeout.take() {
        out.timeout = duration(&d, &join(path, "timeout"))?;
    }
    if let Some(d) = a.idle_timeout.take() {
        out.idle_timeout = Some(duration(&d, &join(path, "idle_timeout"))?);
    }
    if let Some(m) = a.max_stream_duration.take() {
        out.max_stream_duration = Some(max_stream_duration(m, &join(path, "max_stream_duration"))?);
        // Envoy: a route with max_stream_duration has no router timeout
        // (its `timeout` is not used); the stream duration bounds it.
        out.timeout = Duration::ZERO;
    }
    if let Some(rp) = a.retry_policy.take() {
        out.retry_policy = Some(crate::retry_policy::translate(
            rp,
            &join(path, "retry_policy"),
        )?);
    }
    if let Some(h) = a.hedge_policy.take() {
        out.hedge_policy = Some(crate::retry_policy::hedge(h, &join(path, "hedge_policy"))?);
    }
    if a.priority != 0 {
        out.priority = crate::circuit_breakers::priority(
            std::mem::take(&mut a.priority),
            &join(path, "priority"),
        )?;
    }
    for (i, mut u) in std::mem::take(&mut a.upgrade_configs)
        .into_iter()
        .enumerate()
    {
        let up = format!("{path}.upgrade_configs[{i}]");
        if u.connect_config.is_some() {
            return err(join(&up, "connect_config"), "CONNECT is not supported");
        }
        out.upgrade_configs.push(rc::RouteUpgradeConfig {
            upgrade_type: std::mem::take(&mut u.upgrade_type),
            enabled: u.enabled.take().is_none_or(|b| b.value),
        });
        rest(&u, &up)?;
    }
    for (i, h) in std::mem::take(&mut a.hash_policy).into_iter().enumerate() {
        out.hash_policy.push(hash_policy(
            h,
            &format!("{}[{i}]", join(path, "hash_policy")),
        )?);
    }
    for (i, r) in std::mem::take(&mut a.rate_limits).into_iter().enumerate() {
        let rp = format!("{}[{i}]", join(path, "rate_limits"));
        out.rate_limits
            .push(crate::local_ratelimit::rate_limit(r, &rp)?);
    }
    out.request_mirror_policies =
        crate::mirror::mirror_policies(std::mem::take(&mut a.request_mirror_policies), path)?;
    rest(&a, path)?;
    Ok(out)
}

/// A `RegexMatchAndSubstitute` (route and redirect `regex_rewrite`).
fn regex_rewrite(mut rr: matcher::RegexMatchAndSubstitute, rp: &str) -> R<rc::RegexRewriteConfig> {
    let pattern = match rr.pattern.take() {
        Some(p) => regex(p, &join(rp, "pattern"))?,
        None => return err(join(rp, "pattern"), "missing pattern"),
    };
    let substitution = std::mem::take(&mut rr.substitution);
    rest(&rr, rp)?;
    Ok(rc::RegexRewriteConfig {
        pattern,
        substitution,
    })
}

/// `RouteAction.max_stream_duration`, every field kept as set (an unset
/// field and a zero one mean different things in Envoy).
fn max_stream_duration(
    mut m: rds::route_action::MaxStreamDuration,
    path: &str,
) -> R<rc::MaxStreamDurationConfig> {
    let mut out = rc::MaxStreamDurationConfig::default();
    if let Some(d) = m.max_stream_duration.take() {
        out.max_stream_duration = Some(duration(&d, &join(path, "max_stream_duration"))?);
    }
    if let Some(d) = m.grpc_timeout_header_max.take() {
        out.grpc_timeout_header_max = Some(duration(&d, &join(path, "grpc_timeout_header_max"))?);
    }
    if let Some(d) = m.grpc_timeout_header_offset.take() {
        out.grpc_timeout_header_offset =
            Some(duration(&d, &join(path, "grpc_timeout_header_offset"))?);
    }
    rest(&m, path)?;
    Ok(out)
}

/// One `RouteAction.hash_policy` entry; the core build refuses
/// `filter_state` with its name.
fn hash_policy(mut h: rds::route_action::HashPolicy, path: &str) -> R<rc::HashPolicyConfig> {
    use rds::route_action::hash_policy::PolicySpecifier as P;
    let mut out = rc::HashPolicyConfig {
        terminal: std::mem::take(&mut h.terminal),
        ..Default::default()
    };
    match h.policy_specifier.take() {
        None => {
            return err(
                path,
                "one of header, cookie, connection_properties, query_parameter, filter_state is needed",
            );
        }
        Some(P::Header(mut x)) => {
            let hp = join(path, "header");
            let mut c = rc::HashHeaderConfig {
                header_name: std::mem::take(&mut x.header_name),
                regex_rewrite: None,
            };
            if let Some(mut rr) = x.regex_rewrite.take() {
                let rp = join(&hp, "regex_rewrite");
                let pattern = match rr.pattern.take() {
                    Some(p) => regex(p, &join(&rp, "pattern"))?,
                    None => return err(join(&rp, "pattern"), "missing pattern"),
                };
                let substitution = std::mem::take(&mut rr.substitution);
                rest(&rr, &rp)?;
                c.regex_rewrite = Some(rc::RegexRewriteConfig {
                    pattern,
                    substitution,
                });
            }
            rest(&x, &hp)?;
            out.header = Some(c);
        }
        Some(P::Cookie(mut x)) => {
            let cp = join(path, "cookie");
            let mut c = rc::HashCookieConfig {
                name: std::mem::take(&mut x.name),
                path: std::mem::take(&mut x.path),
                ..Default::default()
            };
            if let Some(d) = x.ttl.take() {
                c.ttl = Some(duration(&d, &join(&cp, "ttl"))?);
            }
            for (j, mut at) in std::mem::take(&mut x.attributes).into_iter().enumerate() {
                c.attributes.push(rc::HashCookieAttributeConfig {
                    name: std::mem::take(&mut at.name),
                    value: std::mem::take(&mut at.value),
                });
                rest(&at, &format!("{cp}.attributes[{j}]"))?;
            }
            rest(&x, &cp)?;
            out.cookie = Some(c);
        }
        Some(P::ConnectionProperties(x)) => {
            out.connection_properties = Some(rc::HashConnectionPropertiesConfig {
                source_ip: x.source_ip,
            });
        }
        Some(P::QueryParameter(mut x)) => {
            out.query_parameter = Some(rc::HashQueryParameterConfig {
                name: std::mem::take(&mut x.name),
            });
            rest(&x, &join(path, "query_parameter"))?;
        }
        Some(P::FilterState(mut x)) => {
            out.filter_state = Some(rc::HashFilterStateConfig {
                key: std::mem::take(&mut x.key),
            });
        }
    }
    rest(&h, path)?;
    Ok(out)
}

fn redirect(mut a: rds::RedirectAction, path: &str) -> R<rc::RedirectActionConfig> {
    use rds::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let mut out = rc::RedirectActionConfig::default();
    let h = std::mem::take(&mut a.host_redirect);
    if !h.is_empty() {
        out.host_redirect = Some(h);
    }
    let port = std::mem::take(&mut a.port_redirect);
    if port != 0 {
        out.port_redirect = Some(
            u16::try_from(port)
                .map_err(|_| (join(path, "port_redirect"), "port out of range".to_string()))?,
        );
    }
    out.response_code = match std::mem::take(&mut a.response_code) {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        c => {
            return err(
                join(path, "response_code"),
                format!("response code {c} not supported"),
            );
        }
    };
    out.strip_query = std::mem::take(&mut a.strip_query);
    match a.scheme_rewrite_specifier.take() {
        None => {}
        Some(S::HttpsRedirect(b)) => out.https_redirect = b,
        Some(S::SchemeRedirect(s)) => out.scheme_redirect = Some(s),
    }
    match a.path_rewrite_specifier.take() {
        None => {}
        Some(P::PathRedirect(p)) => out.path_redirect = Some(p),
        Some(P::PrefixRewrite(p)) => out.prefix_rewrite = Some(p),
        Some(P::RegexRewrite(rr)) => {
            out.regex_rewrite = Some(regex_rewrite(rr, &join(path, "regex_rewrite"))?);
        }
        Some(P::PathRewrite(_)) => {
            return err(
                join(path, "path_rewrite"),
                "path_rewrite (URI templates) in redirects is not supported",
            );
        }
    }
    rest(&a, path)?;
    Ok(out)
}

/// The clusters a listener's filters name (for warming).
pub fn clusters_of(l: &ListenerConfig) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.extend(l.udp_proxy.iter().map(|u| u.cluster.clone()));
    for fc in &l.filter_chains {
        for f in &fc.filters {
            collect_clusters(&f.config, &mut out, true);
        }
    }
    out
}

/// The clusters a listener's RPC `proxy` filters (codec `dubbo`, as
/// `dubbo_proxy` translates to) route to, with that codec: an xDS cluster
/// says nothing of its protocol (Envoy's Dubbo router simply writes Dubbo
/// frames to it), so the listener that uses it does.
pub fn rpc_clusters_of(l: &ListenerConfig) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for fc in &l.filter_chains {
        for f in fc.filters.iter().filter(|f| f.name == "proxy") {
            let codec = match f.config.get("codec").and_then(Value::as_str) {
                Some("dubbo") => "dubbo",
                Some("bolt") => "bolt",
                _ => continue,
            };
            let mut names = BTreeSet::new();
            collect_clusters(&f.config, &mut names, true);
            out.extend(names.into_iter().map(|n| (n, codec)));
        }
    }
    out
}

/// The clusters a listener cannot be served without: those of its
/// `tcp_proxy` filters and of route configurations that validate their
/// clusters (inline ones by default). A route configuration with
/// `validate_clusters: false` (RDS by default) may name a cluster that is
/// not there: its route answers "cluster not found" meanwhile.
pub fn required_clusters_of(l: &ListenerConfig) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.extend(l.udp_proxy.iter().map(|u| u.cluster.clone()));
    for fc in &l.filter_chains {
        for f in &fc.filters {
            collect_clusters(&f.config, &mut out, false);
        }
    }
    out
}

fn collect_clusters(v: &Value, out: &mut BTreeSet<String>, lenient_too: bool) {
    match v {
        Value::Object(m)
            if !lenient_too && m.get("validate_clusters") == Some(&Value::Bool(false)) => {}
        Value::Object(m) => {
            if let Some(Value::String(c)) = m.get("cluster") {
                out.insert(c.clone());
            }
            if let Some(Value::Array(list)) = m.get("weighted_clusters") {
                for c in list {
                    if let Some(Value::String(n)) = c.get("name") {
                        out.insert(n.clone());
                    }
                }
            }
            if let Some(Value::Object(w)) = m.get("weighted_clusters")
                && let Some(Value::Array(list)) = w.get("clusters")
            {
                for c in list {
                    if let Some(Value::String(n)) = c.get("name") {
                        out.insert(n.clone());
                    }
                }
            }
            for x in m.values() {
                collect_clusters(x, out, lenient_too);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_clusters(x, out, lenient_too);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: i64) -> Option<protobuf::Duration> {
        Some(protobuf::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn eds_cluster_translates_and_waits_for_its_assignment() {
        let c = cds::Cluster {
            name: "web".into(),
            cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
                cds::cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
                eds_config: Some(core3::ConfigSource {
                    config_source_specifier: Some(
                        core3::config_source::ConfigSourceSpecifier::Ads(Default::default()),
                    ),
                    resource_api_version: 2,
                    ..Default::default()
                }),
                service_name: "web-svc".into(),
            }),
            lb_policy: cds::cluster::LbPolicy::Maglev as i32,
            connect_timeout: dur(2),
            ..Default::default()
        };
        let t = cluster(c.clone()).unwrap();
        assert_eq!(t.config.protocol_options, Value::Null);
        // The legacy cluster http2_protocol_options: HTTP/2 with its
        // stream limit (the pool's); others refused by name.
        let h2 = cluster(cds::Cluster {
            http2_protocol_options: Some(core3::Http2ProtocolOptions {
                max_concurrent_streams: Some(protobuf::UInt32Value { value: 8 }),
                ..Default::default()
            }),
            ..c.clone()
        })
        .unwrap();
        assert_eq!(h2.config.protocol.as_deref(), Some("http2"));
        assert_eq!(h2.config.protocol_options["max_concurrent_streams"], 8);
        let e = cluster(cds::Cluster {
            http2_protocol_options: Some(core3::Http2ProtocolOptions {
                hpack_table_size: Some(protobuf::UInt32Value { value: 8 }),
                ..Default::default()
            }),
            ..c.clone()
        })
        .err()
        .unwrap();
        assert!(
            format!("{e:?}").contains("http2_protocol_options.hpack_table_size"),
            "{e:?}"
        );
        let t2 = cluster(cds::Cluster {
            max_requests_per_connection: Some(protobuf::UInt32Value { value: 100 }),
            ..c.clone()
        })
        .unwrap();
        assert_eq!(
            t2.config.protocol_options["max_requests_per_connection"],
            100
        );
        let e = cluster(cds::Cluster {
            max_requests_per_connection: Some(protobuf::UInt32Value { value: 0 }),
            ..c
        })
        .err()
        .unwrap();
        assert!(
            format!("{e:?}").contains("max_requests_per_connection"),
            "{e:?}"
        );
        assert_eq!(t.eds_name.as_deref(), Some("web-svc"));
        assert_eq!(t.config.lb_policy, "maglev");
        assert_eq!(t.config.connect_timeout, Duration::from_secs(2));
    }

    /// A bare STATIC cluster translates to what the file loader builds
    /// from the same cluster (the same serde defaults).
    #[test]
    fn a_static_cluster_is_the_file_loaders_cluster() {
        let c = cds::Cluster {
            name: "api".into(),
            ..Default::default()
        };
        let t = cluster(c).unwrap();
        let file: ClusterConfig =
            serde_json::from_value(json!({"name": "api", "endpoints": []})).unwrap();
        assert_eq!(t.config, file);
    }

    #[test]
    fn route_hash_policy_is_translated() {
        use rds::route_action::hash_policy as hp;
        let a = rds::RouteAction {
            cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster("c".into())),
            hash_policy: vec![
                rds::route_action::HashPolicy {
                    policy_specifier: Some(hp::PolicySpecifier::Header(hp::Header {
                        header_name: "x-user".into(),
                        ..Default::default()
                    })),
                    terminal: true,
                },
                rds::route_action::HashPolicy {
                    policy_specifier: Some(hp::PolicySpecifier::Cookie(hp::Cookie {
                        name: "s".into(),
                        ttl: Some(protobuf::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                        path: "/".into(),
                        ..Default::default()
                    })),
                    terminal: false,
                },
                rds::route_action::HashPolicy {
                    policy_specifier: Some(hp::PolicySpecifier::ConnectionProperties(
                        hp::ConnectionProperties { source_ip: true },
                    )),
                    terminal: false,
                },
            ],
            ..Default::default()
        };
        let out = route_action(a, "route").unwrap();
        let h = &out.hash_policy;
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].header.as_ref().unwrap().header_name, "x-user");
        assert!(h[0].terminal);
        let c = h[1].cookie.as_ref().unwrap();
        assert_eq!(
            (c.name.as_str(), c.ttl, c.path.as_str()),
            ("s", Some(Duration::from_secs(60)), "/")
        );
        assert!(h[2].connection_properties.as_ref().unwrap().source_ip);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let c = cds::Cluster {
            name: "x".into(),
            outlier_detection: Some(cds::OutlierDetection {
                monitors: vec![Default::default()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = cluster(c).unwrap_err();
        assert_eq!(e.resource, "Cluster 'x'");
        assert_eq!(e.field, "outlier_detection.monitors");
        let r = rds::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![rds::VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: vec![rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(
                            "c".into(),
                        )),
                        internal_redirect_policy: Some(Default::default()),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = route_configuration(r).unwrap_err();
        assert_eq!(
            e.field, "virtual_hosts[0].routes[0].route.internal_redirect_policy",
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "RouteConfiguration 'r': virtual_hosts[0].routes[0].route.internal_redirect_policy: field not supported by meshgate (refused rather than ignored)"
        );
    }

    #[test]
    fn route_configuration_ignore_port_and_metadata_are_translated() {
        let route = |ignore: bool| rds::RouteConfiguration {
            name: "r".into(),
            ignore_port_in_host_matching: ignore,
            virtual_hosts: vec![rds::VirtualHost {
                name: "v".into(),
                domains: vec!["www.example.com".into()],
                routes: vec![rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::DirectResponse(
                        rds::DirectResponseAction {
                            status: 200,
                            ..Default::default()
                        },
                    )),
                    metadata: Some(core3::Metadata {
                        filter_metadata: [("envoy-gateway".to_string(), Default::default())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let on = route_configuration(route(true)).unwrap();
        assert_eq!(on.ignore_port_in_host_matching, Some(true));
        let meta = &on.virtual_hosts[0].routes[0].metadata;
        assert_eq!(meta.keys().collect::<Vec<_>>(), ["envoy-gateway"]);
        // Unset in xDS is Envoy's false, stated so meshgate YAML's
        // port-lenient default does not apply.
        let off = route_configuration(route(false)).unwrap();
        assert_eq!(off.ignore_port_in_host_matching, Some(false));
    }

    #[test]
    fn endpoints_keep_weights_metadata_and_health_status() {
        let ep = |port: u32, w: u32, h: core3::HealthStatus| eds::LbEndpoint {
            host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(eds::Endpoint {
                address: Some(core3::Address {
                    address: Some(core3::address::Address::SocketAddress(
                        core3::SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(
                                port,
                            )),
                            ..Default::default()
                        },
                    )),
                }),
                ..Default::default()
            })),
            load_balancing_weight: Some(protobuf::UInt32Value { value: w }),
            health_status: h as i32,
            metadata: Some(core3::Metadata {
                filter_metadata: [(
                    "envoy.lb".to_string(),
                    protobuf::Struct {
                        fields: [(
                            "canary".to_string(),
                            protobuf::Value {
                                kind: Some(protobuf::value::Kind::BoolValue(true)),
                            },
                        )]
                        .into(),
                    },
                )]
                .into(),
                ..Default::default()
            }),
        };
        let cla = eds::ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![eds::LocalityLbEndpoints {
                lb_endpoints: vec![
                    ep(1, 3, core3::HealthStatus::Healthy),
                    ep(2, 1, core3::HealthStatus::Unhealthy),
                    ep(3, 1, core3::HealthStatus::Draining),
                    ep(4, 5, core3::HealthStatus::Unknown),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = endpoints(cla, "").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.address.as_str(), e.weight, e.health_status))
            .collect();
        use EndpointHealthStatus as H;
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:1", 3, H::Healthy),
                ("10.0.0.1:2", 1, H::Unhealthy),
                ("10.0.0.1:3", 1, H::Draining),
                ("10.0.0.1:4", 5, H::Unknown)
            ]
        );
        assert_eq!(out[0].metadata["envoy.lb"], json!({"canary": true}));
    }

    #[test]
    fn hcm_edge_options_are_translated_with_envoy_defaults() {
        use hcm::http_connection_manager as m;
        let inline = Some(m::RouteSpecifier::RouteConfig(Default::default()));
        let translate = |h: hcm::HttpConnectionManager| {
            http_connection_manager(h, "hcm", &|_| None, &mut BTreeSet::new(), &mut None)
        };
        // Unset: Envoy's defaults, written out where meshgate's differ.
        let v = translate(hcm::HttpConnectionManager {
            route_specifier: inline.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(!v.use_remote_address);
        assert!(v.upgrade_configs.is_empty());
        assert!(!v.normalize_path);
        assert_eq!(
            v.server_header_transformation,
            fc::ServerHeaderTransformation::Overwrite
        );
        assert_eq!(v.server_name, "meshgate");
        let v = translate(hcm::HttpConnectionManager {
            route_specifier: inline.clone(),
            normalize_path: Some(protobuf::BoolValue { value: true }),
            merge_slashes: true,
            path_with_escaped_slashes_action: m::PathWithEscapedSlashesAction::UnescapeAndRedirect
                as i32,
            use_remote_address: Some(protobuf::BoolValue { value: true }),
            xff_num_trusted_hops: 2,
            server_header_transformation: m::ServerHeaderTransformation::PassThrough as i32,
            server_name: "edge".into(),
            upgrade_configs: vec![m::UpgradeConfig {
                upgrade_type: "websocket".into(),
                enabled: Some(protobuf::BoolValue { value: false }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        assert!(v.normalize_path);
        assert!(v.merge_slashes);
        assert_eq!(
            v.path_with_escaped_slashes_action,
            fc::EscapedSlashesAction::UnescapeAndRedirect
        );
        assert!(v.use_remote_address);
        assert_eq!(v.xff_num_trusted_hops, 2);
        assert_eq!(
            v.server_header_transformation,
            fc::ServerHeaderTransformation::PassThrough
        );
        assert_eq!(v.server_name, "edge");
        assert_eq!(
            v.upgrade_configs,
            vec![fc::UpgradeConfig {
                upgrade_type: "websocket".into(),
                enabled: false
            }]
        );
        // What the filter parses is what was translated.
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json["path_with_escaped_slashes_action"],
            "UNESCAPE_AND_REDIRECT"
        );
        let back: fc::ProxyConfig = meshgate_core::config::parse_typed(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
        // Upgrade filter chains are not supported: refused by name.
        let e = translate(hcm::HttpConnectionManager {
            route_specifier: inline,
            upgrade_configs: vec![m::UpgradeConfig {
                upgrade_type: "websocket".into(),
                filters: vec![Default::default()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "hcm.upgrade_configs[0].filters");
        // Route level: enabled/disabled, CONNECT refused.
        let r = route_action(
            rds::RouteAction {
                cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster("c".into())),
                upgrade_configs: vec![rds::route_action::UpgradeConfig {
                    upgrade_type: "websocket".into(),
                    enabled: Some(protobuf::BoolValue { value: false }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "r",
        )
        .unwrap();
        assert_eq!(r.upgrade_configs[0].upgrade_type, "websocket");
        assert!(!r.upgrade_configs[0].enabled);
        let e = route_action(
            rds::RouteAction {
                cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster("c".into())),
                upgrade_configs: vec![rds::route_action::UpgradeConfig {
                    upgrade_type: "CONNECT".into(),
                    connect_config: Some(Default::default()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "r",
        )
        .unwrap_err();
        assert_eq!(e.0, "r.upgrade_configs[0].connect_config");
    }

    #[test]
    fn hcm_with_rds_names_its_route_configuration() {
        let h = hcm::HttpConnectionManager {
            stat_prefix: "ingress".into(),
            codec_type: hcm::http_connection_manager::CodecType::Http1 as i32,
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(core3::ConfigSource {
                        config_source_specifier: Some(
                            core3::config_source::ConfigSourceSpecifier::Ads(Default::default()),
                        ),
                        ..Default::default()
                    }),
                    route_config_name: "routes".into(),
                },
            )),
            stream_idle_timeout: dur(30),
            ..Default::default()
        };
        let l = lds::Listener {
            name: "l".into(),
            address: Some(core3::Address {
                address: Some(core3::address::Address::SocketAddress(
                    core3::SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(8080)),
                        ..Default::default()
                    },
                )),
            }),
            filter_chains: vec![lds::FilterChain {
                filters: vec![lds::Filter {
                    name: "hcm".into(),
                    config_type: Some(lds::filter::ConfigType::TypedConfig(protobuf::Any {
                        type_url: HCM.into(),
                        value: h.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = listener(l.clone(), &|_| None, &|_| None).unwrap();
        assert_eq!(t.config.address, "127.0.0.1:8080");
        assert_eq!(t.rds_names.iter().collect::<Vec<_>>(), vec!["routes"]);
        let f = &t.config.filter_chains[0].filters[0];
        assert_eq!(f.name, "proxy");
        assert_eq!(f.config["codec"], "http1");
        assert_eq!(f.config["stream_idle_timeout"], "30s");
        let mut bad = l;
        bad.filter_chains[0].transport_socket = Some(Default::default());
        let e = listener(bad, &|_| None, &|_| None).unwrap_err();
        assert_eq!(e.field, "filter_chains[0].transport_socket.typed_config");
    }

    #[test]
    fn hcm_idle_timeout_is_translated_and_other_options_refused() {
        let h = |o: core3::HttpProtocolOptions| hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                Default::default(),
            )),
            common_http_protocol_options: Some(o),
            ..Default::default()
        };
        let mut names = BTreeSet::new();
        let idle = core3::HttpProtocolOptions {
            idle_timeout: Some(protobuf::Duration {
                seconds: 90,
                nanos: 0,
            }),
            ..Default::default()
        };
        let out = http_connection_manager(h(idle), "", &|_| None, &mut names, &mut None).unwrap();
        assert_eq!(
            out.common_http_protocol_options.idle_timeout,
            Duration::from_secs(90)
        );
        let count = core3::HttpProtocolOptions {
            max_headers_count: Some(protobuf::UInt32Value { value: 10 }),
            ..Default::default()
        };
        let out = http_connection_manager(h(count), "", &|_| None, &mut names, &mut None).unwrap();
        assert_eq!(out.common_http_protocol_options.max_headers_count, Some(10));
        let other = core3::HttpProtocolOptions {
            max_requests_per_connection: Some(protobuf::UInt32Value { value: 10 }),
            ..Default::default()
        };
        let e =
            http_connection_manager(h(other), "", &|_| None, &mut names, &mut None).unwrap_err();
        assert_eq!(
            e.0,
            "common_http_protocol_options.max_requests_per_connection"
        );
    }

    #[test]
    fn hcm_forward_client_cert_details_as_istio_sends_them() {
        use hcm::http_connection_manager::{ForwardClientCertDetails, SetCurrentClientCertDetails};
        let h = |f: ForwardClientCertDetails, d: Option<SetCurrentClientCertDetails>| {
            hcm::HttpConnectionManager {
                route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                    Default::default(),
                )),
                forward_client_cert_details: f as i32,
                set_current_client_cert_details: d,
                ..Default::default()
            }
        };
        let mut names = BTreeSet::new();
        // Unset: Envoy's SANITIZE, no details.
        let out = http_connection_manager(
            h(ForwardClientCertDetails::Sanitize, None),
            "",
            &|_| None,
            &mut names,
            &mut None,
        )
        .unwrap();
        assert_eq!(
            out.forward_client_cert_details,
            fc::ForwardClientCertDetails::Sanitize
        );
        // An Istio sidecar's inbound listener.
        let istio = SetCurrentClientCertDetails {
            subject: Some(protobuf::BoolValue { value: true }),
            dns: true,
            uri: true,
            ..Default::default()
        };
        let out = http_connection_manager(
            h(ForwardClientCertDetails::AppendForward, Some(istio)),
            "",
            &|_| None,
            &mut names,
            &mut None,
        )
        .unwrap();
        assert_eq!(
            out.forward_client_cert_details,
            fc::ForwardClientCertDetails::AppendForward
        );
        assert_eq!(
            out.set_current_client_cert_details,
            fc::ClientCertDetails {
                subject: true,
                cert: false,
                dns: true,
                uri: true
            }
        );
        let chain = SetCurrentClientCertDetails {
            chain: true,
            ..Default::default()
        };
        let e = http_connection_manager(
            h(ForwardClientCertDetails::SanitizeSet, Some(chain)),
            "",
            &|_| None,
            &mut names,
            &mut None,
        )
        .unwrap_err();
        assert_eq!(e.0, "set_current_client_cert_details.chain");
    }

    #[test]
    fn hcm_max_stream_duration_and_strip_port_modes_are_translated() {
        use hcm::http_connection_manager::StripPortMode;
        let base = || hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                Default::default(),
            )),
            ..Default::default()
        };
        let mut names = BTreeSet::new();
        let mut h = base();
        h.common_http_protocol_options = Some(core3::HttpProtocolOptions {
            max_stream_duration: Some(protobuf::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        });
        h.strip_port_mode = Some(StripPortMode::StripAnyHostPort(true));
        let out = http_connection_manager(h, "", &|_| None, &mut names, &mut None).unwrap();
        assert_eq!(
            out.common_http_protocol_options.max_stream_duration,
            Some(Duration::from_secs(2))
        );
        assert!(out.strip_any_host_port && !out.strip_matching_host_port);
        // 0 means no limit, as unset.
        let mut h = base();
        h.common_http_protocol_options = Some(core3::HttpProtocolOptions {
            max_stream_duration: Some(protobuf::Duration::default()),
            ..Default::default()
        });
        h.strip_matching_host_port = true;
        let out = http_connection_manager(h, "", &|_| None, &mut names, &mut None).unwrap();
        assert_eq!(out.common_http_protocol_options.max_stream_duration, None);
        assert!(out.strip_matching_host_port);
        // Both: refused, as Envoy does.
        let mut h = base();
        h.strip_matching_host_port = true;
        h.strip_port_mode = Some(StripPortMode::StripAnyHostPort(true));
        let e = http_connection_manager(h, "", &|_| None, &mut names, &mut None).unwrap_err();
        assert_eq!(e.0, "strip_any_host_port");
    }

    #[test]
    fn route_max_stream_duration_and_redirect_regex_rewrite_are_translated() {
        let d = |ms: i32| protobuf::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        };
        let a = rds::RouteAction {
            cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster("c".into())),
            timeout: Some(protobuf::Duration {
                seconds: 5,
                nanos: 0,
            }),
            max_stream_duration: Some(rds::route_action::MaxStreamDuration {
                max_stream_duration: None,
                grpc_timeout_header_max: Some(d(0)),
                grpc_timeout_header_offset: Some(d(50)),
            }),
            ..Default::default()
        };
        let out = route_action(a, "route").unwrap();
        let m = out.max_stream_duration.unwrap();
        // Unset and zero stay apart (they mean different things).
        assert_eq!(m.max_stream_duration, None);
        assert_eq!(m.grpc_timeout_header_max, Some(Duration::ZERO));
        assert_eq!(
            m.grpc_timeout_header_offset,
            Some(Duration::from_millis(50))
        );
        // Envoy does not use the route timeout then.
        assert_eq!(out.timeout, Duration::ZERO);

        use rds::redirect_action::PathRewriteSpecifier as P;
        let r = rds::RedirectAction {
            path_rewrite_specifier: Some(P::RegexRewrite(matcher::RegexMatchAndSubstitute {
                pattern: Some(matcher::RegexMatcher {
                    regex: "^/old/(.*)$".into(),
                    ..Default::default()
                }),
                substitution: "/new/\\1".into(),
            })),
            strip_query: true,
            ..Default::default()
        };
        let out = redirect(r, "redirect").unwrap();
        let rr = out.regex_rewrite.unwrap();
        assert_eq!(
            (rr.pattern.as_str(), rr.substitution.as_str()),
            ("^/old/(.*)$", "/new/\\1")
        );
        assert!(out.strip_query);
        let r = rds::RedirectAction {
            path_rewrite_specifier: Some(P::PathRewrite(Default::default())),
            ..Default::default()
        };
        assert_eq!(
            redirect(r, "redirect").unwrap_err().0,
            "redirect.path_rewrite"
        );
    }

    #[test]
    fn hcm_max_request_headers_kb_reaches_every_http_codec() {
        let h = |kb| hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                Default::default(),
            )),
            request_headers_timeout: Some(protobuf::Duration {
                seconds: 3,
                nanos: 0,
            }),
            max_request_headers_kb: Some(protobuf::UInt32Value { value: kb }),
            ..Default::default()
        };
        let mut names = BTreeSet::new();
        let out = http_connection_manager(h(2), "", &|_| None, &mut names, &mut None).unwrap();
        for codec in ["http1", "http2", "http3"] {
            assert_eq!(
                out.codec_options[codec]["max_request_headers_bytes"], 2048,
                "{out:?}"
            );
            assert_eq!(out.codec_options[codec]["request_headers_timeout"], "3s");
        }
        for bad in [0, 8193] {
            let e =
                http_connection_manager(h(bad), "", &|_| None, &mut names, &mut None).unwrap_err();
            assert_eq!(e.0, "max_request_headers_kb");
        }
    }

    #[test]
    fn hcm_request_headers_timeout_reaches_every_http_codec() {
        let h = |secs| hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                Default::default(),
            )),
            request_headers_timeout: Some(protobuf::Duration {
                seconds: secs,
                nanos: 0,
            }),
            ..Default::default()
        };
        let mut names = BTreeSet::new();
        let out = http_connection_manager(h(3), "", &|_| None, &mut names, &mut None).unwrap();
        for codec in ["http1", "http2", "http3"] {
            assert_eq!(
                out.codec_options[codec]["request_headers_timeout"], "3s",
                "{out:?}"
            );
        }
        // Envoy's 0 (no bound): meshgate's own default stays.
        let out = http_connection_manager(h(0), "", &|_| None, &mut names, &mut None).unwrap();
        assert!(out.codec_options.is_empty(), "{out:?}");
    }
}
