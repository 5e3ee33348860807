//! Istio's own extensions, as istiod configures every sidecar
//! (docs/xds.md, "Istio"):
//!
//! - `istio_peer_metadata` (stream filter): the peer's workload metadata
//!   read from, and ours written to, the `x-envoy-peer-metadata` /
//!   `x-envoy-peer-metadata-id` headers (`peer_metadata.rs`);
//! - `istio_metadata_exchange` (network filter): the same exchanged in
//!   band at the start of a TCP connection negotiated with the
//!   `istio-peer-exchange` ALPN (`exchange.rs`);
//! - `istio_stats` (stream and network filter): Istio's standard metrics
//!   with Istio's names and labels, filled from this node's metadata and
//!   the peer's (`stats.rs`, `tcp_stats.rs`).
//!
//! The metadata is a `google.protobuf.Struct` (the bootstrap node's
//! `metadata`: NAME, NAMESPACE, LABELS, WORKLOAD_NAME, CLUSTER_ID...).
//! What a filter learns about the peer goes into the stream's filter state
//! (`DownstreamPeer`, `UpstreamPeer`) and its dynamic metadata under
//! `istio.peer_metadata` (`downstream_peer`, `upstream_peer`), for
//! `istio_stats` and the access log.

pub mod exchange;
pub mod peer_metadata;
pub mod stats;
pub mod tcp_stats;

use base64::Engine as _;
use bytes::Bytes;
use envoy_types::pb::google::protobuf as pb;
use prost::Message as _;
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};

/// The header carrying the peer's metadata (base64 of a serialized
/// `google.protobuf.Struct`).
pub const METADATA_HEADER: &str = "x-envoy-peer-metadata";
/// The header carrying the peer's node id.
pub const METADATA_ID_HEADER: &str = "x-envoy-peer-metadata-id";
/// The dynamic metadata namespace the peers are published under.
pub const NAMESPACE: &str = "istio.peer_metadata";

/// The largest peer metadata accepted (encoded), header or in band: an
/// istio-agent's is a few hundred bytes; more is refused, not buffered.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The longest label value taken from a peer's metadata (longer ones are
/// cut): a metric label, not a document.
const MAX_LABEL_CHARS: usize = 256;

/// The node metadata keys told to peers (what Istio's exchange sends; the
/// rest of the node's metadata, proxy settings, stays here).
const EXCHANGED_KEYS: &[&str] = &[
    "NAME",
    "NAMESPACE",
    "LABELS",
    "WORKLOAD_NAME",
    "CLUSTER_ID",
    "MESH_ID",
    "OWNER",
    "PLATFORM_METADATA",
    "APP_CONTAINERS",
    "INSTANCE_IPS",
    "SERVICE_ACCOUNT",
];

/// What "unknown" is in Istio's labels.
pub const UNKNOWN: &str = "unknown";

/// A workload's identity as its metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node id (`x-envoy-peer-metadata-id`), if told.
    pub id: Option<String>,
    /// The metadata as sent (JSON of the Struct).
    pub metadata: Map<String, Value>,
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.chars().take(MAX_LABEL_CHARS).collect()),
        _ => None,
    }
}

impl Peer {
    /// The labels Istio derives from a node's metadata ("unknown" where
    /// absent).
    pub fn from_metadata(id: Option<String>, metadata: Map<String, Value>) -> Self {
        let labels = metadata.get("LABELS").and_then(Value::as_object);
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| text(labels.and_then(|l| l.get(*k))))
        };
        let workload = text(metadata.get("WORKLOAD_NAME"));
        let app = label(&["app.kubernetes.io/name", "app"]);
        let canonical_service = label(&["service.istio.io/canonical-name"])
            .or_else(|| app.clone())
            .or_else(|| workload.clone());
        let version = label(&["app.kubernetes.io/version", "version"]);
        let canonical_revision = label(&["service.istio.io/canonical-revision"])
            .or_else(|| version.clone())
            .unwrap_or_else(|| "latest".into());
        let u = |v: Option<String>| v.unwrap_or_else(|| UNKNOWN.into());
        Self {
            id: id.map(|s| s.chars().take(MAX_LABEL_CHARS).collect()),
            workload: u(workload),
            namespace: u(text(metadata.get("NAMESPACE"))),
            app: u(app),
            version: u(version),
            canonical_service: u(canonical_service),
            canonical_revision,
            cluster: u(text(metadata.get("CLUSTER_ID"))),
            metadata,
        }
    }

    /// The peer as dynamic metadata (for access logs: `%DYNAMIC_METADATA(
    /// istio.peer_metadata:downstream_peer:WORKLOAD_NAME)%`).
    fn as_json(&self) -> Value {
        Value::Object(self.metadata.clone())
    }
}

/// The downstream peer of a stream (filter state).
#[derive(Debug, Clone)]
pub struct DownstreamPeer(pub Arc<Peer>);
/// The upstream peer of a stream (filter state): a slot, as it is learnt
/// in the response phase, which runs in reverse chain order, so a filter
/// before the exchange (`istio_stats`) takes the slot in its request
/// phase and reads it once the stream ends.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPeer(pub Arc<OnceLock<Arc<Peer>>>);

impl UpstreamPeer {
    pub fn get(&self) -> Option<&Arc<Peer>> {
        self.0.get()
    }
}

/// The node `Local::current` last built from, and what it built.
type CachedLocal = (Arc<meshgate_core::config::NodeConfig>, Arc<Local>);

/// This node, as peers are told about it.
pub struct Local {
    pub peer: Arc<Peer>,
    /// The exchanged metadata, serialized (a `google.protobuf.Struct`).
    pub encoded: Bytes,
    /// `x-envoy-peer-metadata`'s value.
    pub header: http::HeaderValue,
    /// `x-envoy-peer-metadata-id`'s value, when the node has an id.
    pub id_header: Option<http::HeaderValue>,
}

impl Local {
    /// This node as the current config's `node` describes it.
    pub fn current() -> Arc<Local> {
        // Rebuilt only when the node changes (a reload of the bootstrap).
        static CACHE: OnceLock<std::sync::Mutex<Option<CachedLocal>>> = OnceLock::new();
        let node = meshgate_core::node::local();
        let cache = CACHE.get_or_init(Default::default);
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some((n, l)), Some(node)) = (c.as_ref(), node.as_ref())
            && Arc::ptr_eq(n, node)
        {
            return l.clone();
        }
        let (id, metadata) = match &node {
            Some(n) => (
                Some(n.id.clone()).filter(|s| !s.is_empty()),
                EXCHANGED_KEYS
                    .iter()
                    .filter_map(|k| n.metadata.get(*k).map(|v| (k.to_string(), v.clone())))
                    .collect(),
            ),
            None => (None, Map::new()),
        };
        let encoded = Bytes::from(json_to_struct(&metadata).encode_to_vec());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&encoded);
        let local = Arc::new(Local {
            header: http::HeaderValue::from_str(&b64).unwrap_or(http::HeaderValue::from_static("")),
            id_header: id
                .as_deref()
                .and_then(|i| http::HeaderValue::from_str(i).ok()),
            encoded,
            peer: Arc::new(Peer::from_metadata(id, metadata)),
        });
        if let Some(n) = node {
            *c = Some((n, local.clone()));
        }
        local
    }
}

/// Why a peer's metadata was not taken (counted, never fatal: the
/// stream goes on with the peer unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMetadata {
    TooLarge,
    Base64,
    Protobuf,
    /// In band: the stream does not start with the exchange's magic.
    BadMagic,
}

impl BadMetadata {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Base64 => "base64",
            Self::Protobuf => "protobuf",
            Self::BadMagic => "bad_magic",
        }
    }
}

/// Counts a peer metadata refused.
pub(crate) fn count_bad(where_: &'static str, why: BadMetadata) {
    metrics::counter!(
        meshgate_core::metrics::names::ISTIO_PEER_METADATA_ERROR_TOTAL,
        "source" => where_,
        "reason" => why.label()
    )
    .increment(1);
}

/// The peer told in an `x-envoy-peer-metadata` header value.
pub fn decode_header(value: &[u8], id: Option<&[u8]>) -> Result<Peer, BadMetadata> {
    if value.len() > MAX_METADATA_BYTES * 4 / 3 + 4 {
        return Err(BadMetadata::TooLarge);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| BadMetadata::Base64)?;
    let id = id.map(|i| String::from_utf8_lossy(i).into_owned());
    decode_struct(&raw, id)
}

/// The peer told as a serialized `google.protobuf.Struct`.
pub fn decode_struct(raw: &[u8], id: Option<String>) -> Result<Peer, BadMetadata> {
    if raw.len() > MAX_METADATA_BYTES {
        return Err(BadMetadata::TooLarge);
    }
    let s = pb::Struct::decode(raw).map_err(|_| BadMetadata::Protobuf)?;
    Ok(Peer::from_metadata(id, struct_to_json(&s, 0)))
}

/// How deep a peer's Struct may nest before the rest is dropped (the
/// protobuf decoder bounds recursion too; this bounds the JSON copy).
const MAX_DEPTH: usize = 8;

fn struct_to_json(s: &pb::Struct, depth: usize) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v, depth + 1)))
        .collect()
}

fn value_to_json(v: &pb::Value, depth: usize) -> Value {
    use pb::value::Kind;
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, depth)),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(|v| value_to_json(v, depth + 1))
                .collect(),
        ),
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(m: &Map<String, Value>) -> pb::Struct {
    pb::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(pb::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    pb::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_round_trip_and_istio_labels() {
        let md = json!({
            "NAME": "ratings-v1-abc",
            "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "ratings-v1",
            "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": "ratings", "version": "v1"},
        });
        let s = json_to_struct(md.as_object().unwrap());
        let b64 = base64::engine::general_purpose::STANDARD.encode(s.encode_to_vec());
        let p = decode_header(b64.as_bytes(), Some(b"sidecar~1")).unwrap();
        assert_eq!(p.workload, "ratings-v1");
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.app, "ratings");
        assert_eq!(p.version, "v1");
        assert_eq!(p.canonical_service, "ratings");
        assert_eq!(p.cluster, "Kubernetes");
        assert_eq!(p.id.as_deref(), Some("sidecar~1"));
        assert_eq!(Value::Object(p.metadata), md);
    }

    #[test]
    fn hostile_metadata_is_refused_not_panicked_on() {
        assert_eq!(decode_header(b"%%%", None), Err(BadMetadata::Base64));
        let junk = base64::engine::general_purpose::STANDARD.encode([0xff; 10]);
        assert_eq!(
            decode_header(junk.as_bytes(), None),
            Err(BadMetadata::Protobuf)
        );
        let big = "A".repeat(MAX_METADATA_BYTES * 2);
        assert_eq!(
            decode_header(big.as_bytes(), None),
            Err(BadMetadata::TooLarge)
        );
        // Absent fields are Istio's "unknown".
        let p = Peer::from_metadata(None, Map::new());
        assert_eq!(p.workload, UNKNOWN);
        assert_eq!(p.app, UNKNOWN);
    }
}
