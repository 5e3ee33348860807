//! `istio_metadata_exchange` (network filter): Istio's in-band peer
//! metadata exchange on TCP (`istio.metadata_exchange`, type
//! `envoy.tcp.metadataexchange.config.MetadataExchange`). On a connection
//! whose TLS handshake negotiated the configured ALPN id
//! (`istio-peer-exchange`), the client's sidecar starts its stream with a
//! header: the magic `0x3D230467` and a length (both 32-bit big endian),
//! then that many bytes of a `google.protobuf.Any` holding a
//! `google.protobuf.Struct` (its node metadata, and its node id under
//! `x-envoy-peer-metadata-id`). This filter takes that header off the
//! bytes the terminal reads, records the peer for the connection
//! (`peer_of`: `istio_stats` labels with it), and puts our own header in
//! front of the first bytes sent back. Any other connection passes
//! untouched. A header with a wrong magic is counted and the bytes pass
//! on (the peer is not an Istio proxy); one longer than
//! `MAX_METADATA_BYTES` closes the connection (nothing is buffered past
//! that bound).
//!
//! The same exchange runs on the client side as an upstream filter
//! (`UpstreamExchangeFactory`, Envoy's
//! `envoy.filters.network.upstream.metadata_exchange` on a cluster): on an
//! upstream connection whose TLS negotiated the ALPN id, our header goes
//! out first and the server's header is read off the bytes coming back
//! (`upstream_peer_of`, by the downstream connection's id: the outbound
//! `istio_stats` labels the destination with it).

use super::{Local, MAX_METADATA_BYTES, METADATA_ID_HEADER, Peer, count_bad, decode_struct};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use envoy_types::pb::google::protobuf as pb;
use meshgate_core::BuildError;
use meshgate_core::config::istio::MetadataExchangeConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::network::{
    BuildContext, BuiltFilter, ConnectionInfo, DataStatus, NetworkFilter, NetworkFilterFactory,
    ReadFilter, WriteFilter,
};
use meshgate_core::upstream_filter::{
    UpstreamConnectionFilter, UpstreamFilter, UpstreamFilterFactory,
};
use prost::Message as _;
use std::sync::{Arc, OnceLock};

/// The first four bytes of the exchange.
pub const MAGIC: u32 = 0x3D23_0467;
/// The type URL of the exchanged `Any`'s value.
pub const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";

type Peers = DashMap<u64, Arc<Peer>>;

/// The peers learnt in band from downstream connections, by connection
/// id, while their connection is open (the exchange's read filter removes
/// its entry when dropped).
fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(DashMap::new)
}

/// The peers learnt from upstream connections, by the id of the
/// downstream connection they serve.
fn upstream_peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(DashMap::new)
}

/// The peer the exchange learnt on (downstream) connection `id`, if it did.
pub fn peer_of(id: u64) -> Option<Arc<Peer>> {
    peers().get(&id).map(|p| p.clone())
}

/// The upstream peer the client-side exchange learnt for downstream
/// connection `id`, if it did.
pub fn upstream_peer_of(id: u64) -> Option<Arc<Peer>> {
    upstream_peers().get(&id).map(|p| p.clone())
}

/// Our header: magic, length, `Any(Struct)` of the node's exchanged
/// metadata with its id.
pub fn encode_header(local: &Local) -> Bytes {
    let mut s = pb::Struct::decode(local.encoded.as_ref()).unwrap_or_default();
    if let Some(id) = &local.peer.id {
        s.fields.insert(
            METADATA_ID_HEADER.into(),
            pb::Value {
                kind: Some(pb::value::Kind::StringValue(id.clone())),
            },
        );
    }
    let any = pb::Any {
        type_url: STRUCT_TYPE.into(),
        value: s.encode_to_vec(),
    };
    let body = any.encode_to_vec();
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u32(MAGIC);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// What an exchange header decodes to.
fn decode_any(raw: &[u8]) -> Result<Peer, super::BadMetadata> {
    let any = pb::Any::decode(raw).map_err(|_| super::BadMetadata::Protobuf)?;
    if any.type_url != STRUCT_TYPE {
        return Err(super::BadMetadata::Protobuf);
    }
    let mut p = decode_struct(&any.value, None)?;
    if let Some(serde_json::Value::String(id)) = p.metadata.remove(METADATA_ID_HEADER) {
        p.id = Some(id);
    }
    Ok(p)
}

/// Factory of `istio_metadata_exchange`.
pub struct MetadataExchangeFactory;

impl NetworkFilterFactory for MetadataExchangeFactory {
    fn name(&self) -> &'static str {
        "istio_metadata_exchange"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let c: MetadataExchangeConfig = parse_typed(config)?;
        if c.protocol.is_empty() {
            return Err(BuildError::new("protocol", "must name an ALPN id"));
        }
        Ok(BuiltFilter::Connection(Arc::new(MetadataExchange {
            protocol: c.protocol,
            header: encode_header(&Local::current()),
        })))
    }
}

struct MetadataExchange {
    protocol: String,
    header: Bytes,
}

impl MetadataExchange {
    fn negotiated(&self, info: &ConnectionInfo) -> bool {
        info.tls
            .as_ref()
            .and_then(|t| t.alpn.as_deref())
            .is_some_and(|a| a == self.protocol)
    }
}

impl NetworkFilter for MetadataExchange {
    fn sees_bytes(&self) -> bool {
        true
    }

    fn read_filter(&self, info: &ConnectionInfo) -> Option<Box<dyn ReadFilter>> {
        self.negotiated(info).then(|| {
            Box::new(ReadPeer {
                id: info.id,
                done: false,
                map: peers(),
            }) as Box<dyn ReadFilter>
        })
    }

    fn write_filter(&self, info: &ConnectionInfo) -> Option<Box<dyn WriteFilter>> {
        self.negotiated(info)
            .then(|| Box::new(WriteOurs(Some(self.header.clone()))) as Box<dyn WriteFilter>)
    }
}

/// Reads the peer's header off the front of the stream into `map`.
struct ReadPeer {
    id: u64,
    done: bool,
    map: &'static Peers,
}

impl ReadFilter for ReadPeer {
    fn on_data(&mut self, data: &mut BytesMut, end_stream: bool) -> DataStatus {
        if self.done {
            return DataStatus::Continue;
        }
        if data.len() < 8 {
            if end_stream {
                self.done = true;
                return DataStatus::Continue;
            }
            return DataStatus::StopIteration;
        }
        let magic = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        if magic != MAGIC {
            count_bad("in_band", super::BadMetadata::BadMagic);
            self.done = true;
            return DataStatus::Continue;
        }
        let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        if len > MAX_METADATA_BYTES {
            count_bad("in_band", super::BadMetadata::TooLarge);
            return DataStatus::Close;
        }
        if data.len() < 8 + len {
            if end_stream {
                self.done = true;
                return DataStatus::Close;
            }
            return DataStatus::StopIteration;
        }
        self.done = true;
        data.advance(8);
        let raw = data.split_to(len);
        match decode_any(&raw) {
            Ok(p) => {
                self.map.insert(self.id, Arc::new(p));
            }
            Err(e) => count_bad("in_band", e),
        }
        DataStatus::Continue
    }
}

impl Drop for ReadPeer {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

/// Factory of the upstream (cluster) `istio_metadata_exchange`.
pub struct UpstreamExchangeFactory;

impl UpstreamFilterFactory for UpstreamExchangeFactory {
    fn name(&self) -> &'static str {
        "istio_metadata_exchange"
    }

    fn create(&self, config: &serde_json::Value) -> Result<Arc<dyn UpstreamFilter>, BuildError> {
        let c: MetadataExchangeConfig = parse_typed(config)?;
        if c.protocol.is_empty() {
            return Err(BuildError::new("protocol", "must name an ALPN id"));
        }
        Ok(Arc::new(UpstreamExchange {
            protocol: c.protocol,
            header: encode_header(&Local::current()),
        }))
    }
}

/// The client side: our header first, the server's read back.
struct UpstreamExchange {
    protocol: String,
    header: Bytes,
}

impl UpstreamFilter for UpstreamExchange {
    fn on_connected(
        &self,
        downstream: u64,
        alpn: Option<&[u8]>,
    ) -> Option<UpstreamConnectionFilter> {
        (alpn? == self.protocol.as_bytes()).then(|| UpstreamConnectionFilter {
            preface: self.header.clone(),
            read: Some(Box::new(ReadPeer {
                id: downstream,
                done: false,
                map: upstream_peers(),
            })),
        })
    }
}

/// Puts our header in front of the first bytes sent back.
struct WriteOurs(Option<Bytes>);

impl WriteFilter for WriteOurs {
    fn on_write(&mut self, data: &mut BytesMut, _end_stream: bool) -> DataStatus {
        if let Some(h) = self.0.take() {
            let mut out = BytesMut::with_capacity(h.len() + data.len());
            out.put_slice(&h);
            out.put_slice(data);
            *data = out;
        }
        DataStatus::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_header_round_trips_and_hostile_headers_are_refused() {
        let local = Local::current();
        let h = encode_header(&local);
        let mut r = ReadPeer {
            id: u64::MAX,
            done: false,
            map: peers(),
        };
        // Split anywhere: held until whole.
        let mut part = BytesMut::from(&h[..5]);
        assert_eq!(r.on_data(&mut part, false), DataStatus::StopIteration);
        let mut whole = BytesMut::from(&h[..]);
        whole.extend_from_slice(b"hello");
        assert_eq!(r.on_data(&mut whole, false), DataStatus::Continue);
        assert_eq!(&whole[..], b"hello");
        assert!(peer_of(u64::MAX).is_some());
        drop(r);
        assert!(peer_of(u64::MAX).is_none());
        // Not an exchange: passed on untouched.
        let mut r = ReadPeer {
            id: 1,
            done: false,
            map: peers(),
        };
        let mut other = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(r.on_data(&mut other, false), DataStatus::Continue);
        assert_eq!(&other[..], b"GET / HTTP/1.1\r\n");
        // A length past the bound closes.
        let mut r = ReadPeer {
            id: 2,
            done: false,
            map: peers(),
        };
        let mut big = BytesMut::new();
        big.put_u32(MAGIC);
        big.put_u32(u32::MAX);
        assert_eq!(r.on_data(&mut big, false), DataStatus::Close);
    }
}
