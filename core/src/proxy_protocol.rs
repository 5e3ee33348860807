//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the parser and
//! the writer of its header, and the listener filter
//! `envoy.filters.listener.proxy_protocol` that reads it off an accepted
//! connection before a filter chain is chosen. The addresses it carries
//! replace the connection's peer and local addresses for everything after
//! (chain match, network and stream filters, RBAC, rate limits, XFF, access
//! logs); the direct ones are kept in `ProxyInfo`.
//!
//! Bounds: a v1 header is at most 107 bytes (the spec's limit); a v2
//! header at most `MAX_V2_HEADER` bytes (16 + 4096: the spec allows 16 +
//! 65535, meshgate refuses more than 4 KiB of addresses and TLVs as
//! oversized). Bytes read past the header are handed on as the
//! connection's preface, so nothing the client sent is lost.

use crate::config::proxy_protocol::{
    ListenerFilterConfig, NAME, ProxyProtocolConfig, TLS_INSPECTOR, ValueStringEncoding, Version,
};
use crate::stream::DynamicMetadata;
use bytes::{BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (spec section 2.1).
pub const MAX_V1_HEADER: usize = 107;
/// The longest v2 header meshgate accepts: the fixed 16 bytes and 4 KiB of
/// addresses and TLVs.
pub const MAX_V2_HEADER: usize = 16 + 4096;
const V1_PREFIX: &[u8] = b"PROXY ";

/// A parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The addresses it carries: `None` for v1 `UNKNOWN`, v2 `LOCAL` and
    /// v2 families other than INET/INET6 (the connection's own are kept).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// v2 TLVs in order (type, value).
    pub tlvs: Vec<(u8, Bytes)>,
    /// v2 `LOCAL` command (a health check from the proxy itself).
    pub local: bool,
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Need more bytes.
    Incomplete,
    /// Not a PROXY header (neither signature).
    NotProxy,
    /// A complete header of `len` bytes.
    Done(Header, usize),
    /// A broken header; the reason is a metric label.
    Error(&'static str),
}

/// Parses a buffer that starts at the connection's first byte.
pub fn parse(buf: &[u8]) -> Parse {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        if buf.len() < 16 {
            return Parse::Incomplete;
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        if buf.len() < V1_PREFIX.len() {
            return Parse::Incomplete;
        }
        return parse_v1(buf);
    }
    Parse::NotProxy
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(MAX_V1_HEADER)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1_HEADER {
            Parse::Error("oversized")
        } else {
            Parse::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..end]) else {
        return Parse::Error("malformed");
    };
    let header = |addresses| Header {
        version: Version::V1,
        addresses,
        tlvs: Vec::new(),
        local: false,
    };
    // UNKNOWN: whatever follows is ignored (spec), the real addresses stay.
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Parse::Done(header(None), end + 2);
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [family, src, dst, sport, dport] = parts[..] else {
        return Parse::Error("malformed");
    };
    let ip = |s: &str| -> Option<IpAddr> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            _ => None,
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport)) =
        (ip(src), ip(dst), port(sport), port(dport))
    else {
        return Parse::Error("malformed");
    };
    Parse::Done(
        header(Some((
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
        ))),
        end + 2,
    )
}

/// A v1 port: 1 to 5 digits, no sign, no leading zero (spec).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parse {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Parse::Error("malformed");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parse::Error("malformed"),
    };
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    if total > MAX_V2_HEADER {
        return Parse::Error("oversized");
    }
    if buf.len() < total {
        return Parse::Incomplete;
    }
    let body = &buf[16..total];
    // Address block length by family; UNSPEC has none.
    let (addr_len, addresses) = match fam >> 4 {
        0 => (0, None),
        1 => {
            if body.len() < 12 {
                return Parse::Error("malformed");
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            let sp = u16::from_be_bytes([body[8], body[9]]);
            let dp = u16::from_be_bytes([body[10], body[11]]);
            (
                12,
                Some((
                    SocketAddr::new(IpAddr::V4(src), sp),
                    SocketAddr::new(IpAddr::V4(dst), dp),
                )),
            )
        }
        2 => {
            if body.len() < 36 {
                return Parse::Error("malformed");
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[..16]);
            d.copy_from_slice(&body[16..32]);
            let sp = u16::from_be_bytes([body[32], body[33]]);
            let dp = u16::from_be_bytes([body[34], body[35]]);
            (
                36,
                Some((
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), sp),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dp),
                )),
            )
        }
        // AF_UNIX: two 108-byte paths, no IP to take over.
        3 => {
            if body.len() < 216 {
                return Parse::Error("malformed");
            }
            (216, None)
        }
        _ => return Parse::Error("malformed"),
    };
    if fam & 0x0f > 2 {
        return Parse::Error("malformed");
    }
    let mut tlvs = Vec::new();
    let mut rest = &body[addr_len..];
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Parse::Error("malformed");
        }
        let t = rest[0];
        let l = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + l {
            return Parse::Error("malformed");
        }
        tlvs.push((t, Bytes::copy_from_slice(&rest[3..3 + l])));
        rest = &rest[3 + l..];
    }
    Parse::Done(
        Header {
            version: Version::V2,
            // LOCAL: the connection's own addresses are kept (spec).
            addresses: if local { None } else { addresses },
            tlvs: if local { Vec::new() } else { tlvs },
            local,
        },
        total,
    )
}

/// Writes a header for a connection from `src` to `dst` (`None`: v1
/// `UNKNOWN`, v2 `LOCAL`). Mixed families are written as UNKNOWN/LOCAL.
pub fn encode(
    version: Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[(u8, Bytes)],
) -> Bytes {
    let addresses = addresses.filter(|(s, d)| s.is_ipv4() == d.is_ipv4());
    match version {
        Version::V1 => {
            let line = match addresses {
                None => "PROXY UNKNOWN\r\n".to_string(),
                Some((s, d)) => format!(
                    "PROXY {} {} {} {} {}\r\n",
                    if s.is_ipv4() { "TCP4" } else { "TCP6" },
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                ),
            };
            Bytes::from(line)
        }
        Version::V2 => {
            let mut b = BytesMut::with_capacity(64);
            b.put_slice(V2_SIGNATURE);
            let mut body = BytesMut::new();
            let (cmd, fam) = match addresses {
                None => (0x20, 0x00),
                Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
                    body.put_slice(&s.ip().octets());
                    body.put_slice(&d.ip().octets());
                    body.put_u16(s.port());
                    body.put_u16(d.port());
                    (0x21, 0x11)
                }
                Some((s, d)) => {
                    let v6 = |a: SocketAddr| match a.ip() {
                        IpAddr::V6(ip) => ip.octets(),
                        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    };
                    body.put_slice(&v6(s));
                    body.put_slice(&v6(d));
                    body.put_u16(s.port());
                    body.put_u16(d.port());
                    (0x21, 0x21)
                }
            };
            for (t, v) in tlvs {
                let Ok(l) = u16::try_from(v.len()) else {
                    continue;
                };
                body.put_u8(*t);
                body.put_u16(l);
                body.put_slice(v);
            }
            b.put_u8(cmd);
            b.put_u8(fam);
            b.put_u16(u16::try_from(body.len()).unwrap_or(u16::MAX));
            b.put_slice(&body);
            b.freeze()
        }
    }
}

/// What the listener filter learned about a connection: the direct
/// addresses the header replaced, the TLVs, and the metadata its rules
/// published (copied into each stream's dynamic metadata).
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    /// The peer that actually connected (the proxy in front): RBAC's
    /// `direct_remote_ip`, access logs' `downstream_direct_remote_address`.
    pub direct_peer_addr: SocketAddr,
    pub direct_local_addr: SocketAddr,
    /// `None`: no header (`allow_requests_without_proxy_protocol`).
    pub version: Option<Version>,
    /// A v2 `LOCAL` header (the proxy's own connection, e.g. a health check).
    pub local: bool,
    pub tlvs: Vec<(u8, Bytes)>,
    pub metadata: Option<DynamicMetadata>,
}

/// The PROXY protocol listener filter, compiled.
#[derive(Debug)]
pub struct ProxyProtocolFilter {
    cfg: ProxyProtocolConfig,
}

/// Compiles a listener's `listener_filters`; `Some` when one is the PROXY
/// protocol filter. Unknown names and bad configs name the field.
pub fn compile(
    filters: &[ListenerFilterConfig],
    path: &str,
) -> Result<Option<Arc<ProxyProtocolFilter>>, (String, String)> {
    let mut out = None;
    for (i, f) in filters.iter().enumerate() {
        let p = format!("{path}.listener_filters[{i}]");
        match f.name.as_str() {
            TLS_INSPECTOR | "tls_inspector" => {}
            NAME | "proxy_protocol" => {
                if out.is_some() {
                    return Err((format!("{p}.name"), "given twice".into()));
                }
                let cfg: ProxyProtocolConfig = if f.config.is_null() {
                    ProxyProtocolConfig::default()
                } else {
                    serde_json::from_value(f.config.clone())
                        .map_err(|e| (format!("{p}.config"), e.to_string()))?
                };
                if cfg.disallowed_versions.contains(&Version::V1)
                    && cfg.disallowed_versions.contains(&Version::V2)
                {
                    return Err((
                        format!("{p}.config.disallowed_versions"),
                        "disallows every version".into(),
                    ));
                }
                for (j, r) in cfg.rules.iter().enumerate() {
                    if r.on_tlv_present.key.is_empty() {
                        return Err((
                            format!("{p}.config.rules[{j}].on_tlv_present.key"),
                            "must not be empty".into(),
                        ));
                    }
                }
                out = Some(Arc::new(ProxyProtocolFilter { cfg }));
            }
            other => {
                return Err((
                    format!("{p}.name"),
                    format!(
                        "unknown listener filter '{other}' (known: {NAME}, {TLS_INSPECTOR})"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The outcome of reading a connection's first bytes.
#[derive(Debug)]
pub struct Accepted {
    /// Bytes read past the header: the start of the connection's stream.
    pub preface: BytesMut,
    /// The (source, destination) the header carries, when it carries IPs.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub info: ProxyInfo,
}

impl ProxyProtocolFilter {
    /// Reads the header off `io` (the caller bounds it in time). `Err` is
    /// the reason label of a refusal; the connection is then closed.
    pub async fn read<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Accepted, &'static str> {
        let mut buf = BytesMut::with_capacity(256);
        loop {
            if !buf.is_empty() {
                match parse(&buf) {
                    Parse::Incomplete => {}
                    Parse::NotProxy => {
                        if !self.cfg.allow_requests_without_proxy_protocol {
                            return Err("not_proxy");
                        }
                        return Ok(Accepted {
                            preface: buf,
                            addresses: None,
                            info: ProxyInfo {
                                direct_peer_addr: peer,
                                direct_local_addr: local,
                                version: None,
                                local: false,
                                tlvs: Vec::new(),
                                metadata: None,
                            },
                        });
                    }
                    Parse::Error(reason) => return Err(reason),
                    Parse::Done(h, len) => {
                        if self.cfg.disallowed_versions.contains(&h.version) {
                            return Err("disallowed_version");
                        }
                        let preface = buf.split_off(len);
                        let metadata = self.metadata(&h.tlvs);
                        return Ok(Accepted {
                            preface,
                            addresses: h.addresses,
                            info: ProxyInfo {
                                direct_peer_addr: peer,
                                direct_local_addr: local,
                                version: Some(h.version),
                                local: h.local,
                                tlvs: h.tlvs,
                                metadata,
                            },
                        });
                    }
                }
            }
            // `read_buf` grows the buffer by small steps; `parse` refuses a
            // header past its bound, so the buffer stays bounded.
            if io.read_buf(&mut buf).await.map_err(|_| "closed")? == 0 {
                return Err("closed");
            }
        }
    }

    fn metadata(&self, tlvs: &[(u8, Bytes)]) -> Option<DynamicMetadata> {
        let mut md: Option<DynamicMetadata> = None;
        for r in &self.cfg.rules {
            let Some((_, v)) = tlvs.iter().find(|(t, _)| *t == r.tlv_type) else {
                continue;
            };
            let kv = &r.on_tlv_present;
            let value = match kv.value_string_encoding {
                ValueStringEncoding::Base64 => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(v)
                }
                _ => sanitize(v),
            };
            let ns = if kv.metadata_namespace.is_empty() {
                NAME
            } else {
                &kv.metadata_namespace
            };
            md.get_or_insert_default()
                .set(ns, &kv.key, serde_json::Value::String(value));
        }
        md
    }
}

/// Valid UTF-8 kept, each invalid sequence replaced by `!` (Envoy's
/// sanitized UTF-8).
fn sanitize(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for chunk in v.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push('!');
        }
    }
    out
}

/// Runs the listener filter on an accepted connection, bounded by the
/// listener's `listener_filters_timeout`: on success the header's
/// addresses replace `peer` and `local`, and the bytes read past the header
/// are returned with what was learned. `None`: the connection is refused
/// (counted by reason) and must be closed.
pub(crate) async fn accept(
    listener: &crate::listener::CompiledListener,
    filter: &ProxyProtocolFilter,
    stream: &mut tokio::net::TcpStream,
    peer: &mut SocketAddr,
    local: &mut SocketAddr,
) -> Option<(BytesMut, Arc<ProxyInfo>)> {
    use crate::metrics::names;
    let read = filter.read(stream, *peer, *local);
    let reason = match tokio::time::timeout(listener.inspect_timeout, read).await {
        Ok(Ok(a)) => {
            let version = match (a.info.version, a.info.local) {
                (None, _) => "none",
                (Some(Version::V1), _) => "v1",
                (Some(Version::V2), false) => "v2",
                (Some(Version::V2), true) => "v2_local",
            };
            metrics::counter!(names::LISTENER_PROXY_PROTOCOL_FOUND_TOTAL, "listener" => listener.name.to_string(), "version" => version).increment(1);
            if let Some((src, dst)) = a.addresses {
                tracing::debug!(listener = %listener.name, direct = %peer, source = %src, "PROXY protocol header");
                *peer = src;
                *local = dst;
            }
            return Some((a.preface, Arc::new(a.info)));
        }
        Ok(Err(reason)) => reason,
        Err(_) => "timeout",
    };
    tracing::debug!(listener = %listener.name, %peer, reason, "PROXY protocol header refused; closing");
    metrics::counter!(names::LISTENER_PROXY_PROTOCOL_ERROR_TOTAL, "listener" => listener.name.to_string(), "reason" => reason).increment(1);
    None
}

/// A new stream's filter state: the metadata the connection's PROXY header
/// rules published, if any (nothing allocated otherwise).
pub(crate) fn filter_state(conn: &crate::network::ConnectionInfo) -> http::Extensions {
    let mut ext = http::Extensions::new();
    if let Some(md) = conn.proxy_protocol.as_ref().and_then(|p| p.metadata.clone()) {
        ext.insert(md);
    }
    ext
}
