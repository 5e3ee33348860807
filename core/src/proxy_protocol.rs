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

/// Whether a listener filter name is the PROXY protocol filter's.
pub fn is_proxy_protocol(name: &str) -> bool {
    name == NAME || name == "proxy_protocol"
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
            // Compiled by `crate::original_dst`.
            crate::config::sidecar::ORIGINAL_DST | crate::config::sidecar::HTTP_INSPECTOR => {}
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
                    format!("unknown listener filter '{other}' (known: {NAME}, {TLS_INSPECTOR})"),
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
/// are returned with what was learned. `Err(reason)`: the connection is
/// refused (counted by reason) and must be closed.
pub(crate) async fn accept(
    listener: &crate::listener::CompiledListener,
    filter: &ProxyProtocolFilter,
    stream: &mut tokio::net::TcpStream,
    peer: &mut SocketAddr,
    local: &mut SocketAddr,
) -> Result<(BytesMut, Arc<ProxyInfo>), &'static str> {
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
            return Ok((a.preface, Arc::new(a.info)));
        }
        Ok(Err(reason)) => reason,
        Err(_) => "timeout",
    };
    tracing::debug!(listener = %listener.name, %peer, reason, "PROXY protocol header refused; closing");
    metrics::counter!(names::LISTENER_PROXY_PROTOCOL_ERROR_TOTAL, "listener" => listener.name.to_string(), "reason" => reason).increment(1);
    Err(reason)
}

/// A new stream's filter state: the metadata the connection's PROXY header
/// rules published, if any (nothing allocated otherwise).
pub(crate) fn filter_state(conn: &crate::network::ConnectionInfo) -> http::Extensions {
    let mut ext = http::Extensions::new();
    if let Some(md) = conn
        .proxy_protocol
        .as_ref()
        .and_then(|p| p.metadata.clone())
    {
        ext.insert(md);
    }
    ext
}

/// The header a cluster's `proxy_protocol` sends first on an upstream
/// connection made for the downstream `conn`: its (PROXY-restored) source
/// and destination, and the downstream's own TLVs `pass_through_tlvs`
/// selects (v2 only).
pub fn upstream_header(
    cfg: &crate::config::proxy_protocol::UpstreamProxyProtocolConfig,
    conn: &crate::network::ConnectionInfo,
) -> Bytes {
    use crate::config::proxy_protocol::PassTlvsMatchType;
    let mut tlvs = Vec::new();
    if let (Some(pass), Some(p), Version::V2) =
        (&cfg.pass_through_tlvs, &conn.proxy_protocol, cfg.version)
    {
        tlvs.extend(
            p.tlvs
                .iter()
                .filter(|(t, _)| {
                    pass.match_type == PassTlvsMatchType::IncludeAll || pass.tlv_type.contains(t)
                })
                .cloned(),
        );
    }
    encode(cfg.version, Some((conn.peer_addr, conn.local_addr)), &tlvs)
}

/// Stream pools reuse an upstream connection across downstream
/// connections, so one PROXY header cannot speak for them: a pooled
/// connection to a cluster with `proxy_protocol` is refused (a 503 and a
/// debug log naming the field). HTTP/1 and HTTP/2 routes open a connection
/// per request instead (`crate::proxy_protocol_http`); RPC and HTTP/3 get
/// this refusal.
pub(crate) fn refuse_for_streams(
    cluster: &crate::cluster::Cluster,
) -> Result<(), crate::codec::UpstreamError> {
    if cluster.proxy_protocol.is_none() {
        return Ok(());
    }
    tracing::debug!(cluster = %cluster.name, "clusters[].proxy_protocol serves tcp_proxy and HTTP/1, HTTP/2 routes only; refusing a pooled stream connection");
    Err(crate::codec::UpstreamError::Connect(
        format!(
            "cluster {}: proxy_protocol is supported for tcp_proxy and HTTP/1, HTTP/2 routes only",
            cluster.name
        )
        .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy_protocol::{KeyValuePair, RuleConfig};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.9 10.0.0.1 4000 80\r\nGET /";
        let Parse::Done(hd, n) = parse(h) else {
            panic!("{:?}", parse(h))
        };
        assert_eq!(n, h.len() - 5);
        assert_eq!(
            hd.addresses,
            Some((sa("203.0.113.9:4000"), sa("10.0.0.1:80")))
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 65535 443\r\n";
        assert!(
            matches!(parse(h), Parse::Done(Header { addresses: Some((s, _)), .. }, _) if s == sa("[2001:db8::1]:65535"))
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parse::Done(
                Header {
                    addresses: None,
                    ..
                },
                15
            )
        ));
        assert!(matches!(
            parse(b"PROXY UNKNOWN ff::1 x y z\r\n"),
            Parse::Done(
                Header {
                    addresses: None,
                    ..
                },
                _
            )
        ));
    }

    #[test]
    fn v1_incomplete_garbage_and_lies() {
        assert_eq!(parse(b"PRO"), Parse::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parse::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotProxy);
        assert_eq!(parse(b"\x16\x03\x01"), Parse::NotProxy);
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Parse::Error("malformed"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_V1_HEADER, b'1');
        assert_eq!(parse(&long), Parse::Error("oversized"));
        long.truncate(MAX_V1_HEADER - 1);
        assert_eq!(parse(&long), Parse::Incomplete);
    }

    #[test]
    fn v2_round_trips_with_tlvs_and_local() {
        let tlvs = vec![
            (0xE0, Bytes::from_static(b"tenant-a")),
            (0x05, Bytes::from_static(b"id")),
        ];
        for (src, dst) in [
            (sa("203.0.113.9:4000"), sa("10.0.0.1:80")),
            (sa("[2001:db8::1]:1"), sa("[::1]:2")),
        ] {
            let b = encode(Version::V2, Some((src, dst)), &tlvs);
            let mut with_data = b.to_vec();
            with_data.extend_from_slice(b"data");
            let Parse::Done(h, n) = parse(&with_data) else {
                panic!()
            };
            assert_eq!(n, b.len());
            assert_eq!(h.addresses, Some((src, dst)));
            assert_eq!(h.tlvs, tlvs);
            assert!(!h.local);
            // Any prefix is incomplete, never an error.
            for i in 1..b.len() {
                assert_eq!(parse(&b[..i]), Parse::Incomplete, "prefix {i}");
            }
        }
        let b = encode(Version::V2, None, &[]);
        assert!(matches!(
            parse(&b),
            Parse::Done(
                Header {
                    local: true,
                    addresses: None,
                    ..
                },
                16
            )
        ));
        let b = encode(Version::V1, Some((sa("1.2.3.4:5"), sa("6.7.8.9:10"))), &[]);
        assert_eq!(&b[..], b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
    }

    #[test]
    fn v2_hostile_headers_are_refused() {
        let good = encode(Version::V2, Some((sa("1.2.3.4:5"), sa("6.7.8.9:10"))), &[]).to_vec();
        let mut v = good.clone();
        v[12] = 0x31; // version 3
        assert_eq!(parse(&v), Parse::Error("malformed"));
        let mut v = good.clone();
        v[12] = 0x22; // unknown command
        assert_eq!(parse(&v), Parse::Error("malformed"));
        let mut v = good.clone();
        v[13] = 0x21; // claims INET6 with 12 bytes of address
        assert_eq!(parse(&v), Parse::Error("malformed"));
        let mut v = good.clone();
        v[13] = 0x41; // unknown family
        assert_eq!(parse(&v), Parse::Error("malformed"));
        // A TLV longer than what is left.
        let mut v = good.clone();
        v.extend_from_slice(&[0xE0, 0x00, 0x09, b'x']);
        let len = (v.len() - 16) as u16;
        v[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&v), Parse::Error("malformed"));
        // A length past the bound is refused before the bytes arrive.
        let mut v = good[..16].to_vec();
        v[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&v), Parse::Error("oversized"));
    }

    fn filter(cfg: ProxyProtocolConfig) -> ProxyProtocolFilter {
        ProxyProtocolFilter { cfg }
    }

    #[tokio::test]
    async fn read_keeps_the_bytes_after_the_header_and_publishes_tlvs() {
        let f = filter(ProxyProtocolConfig {
            rules: vec![
                RuleConfig {
                    tlv_type: 0xE0,
                    on_tlv_present: KeyValuePair {
                        metadata_namespace: String::new(),
                        key: "tenant".into(),
                        value_string_encoding: ValueStringEncoding::Unspecified,
                    },
                },
                RuleConfig {
                    tlv_type: 0xE1,
                    on_tlv_present: KeyValuePair {
                        metadata_namespace: "ns".into(),
                        key: "raw".into(),
                        value_string_encoding: ValueStringEncoding::Base64,
                    },
                },
            ],
            ..Default::default()
        });
        let tlvs = [
            (0xE0, Bytes::from_static(b"ten\xffant")),
            (0xE1, Bytes::from_static(b"\x00\x01")),
        ];
        let mut input = encode(
            Version::V2,
            Some((sa("203.0.113.9:4000"), sa("10.0.0.1:80"))),
            &tlvs,
        )
        .to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut io = &input[..];
        let a = f
            .read(&mut io, sa("127.0.0.1:1"), sa("127.0.0.1:2"))
            .await
            .unwrap();
        assert_eq!(&a.preface[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(a.addresses.unwrap().0, sa("203.0.113.9:4000"));
        assert_eq!(a.info.direct_peer_addr, sa("127.0.0.1:1"));
        let md = a.info.metadata.unwrap();
        assert_eq!(md.get(NAME, &["tenant"]).unwrap(), "ten!ant");
        assert_eq!(md.get("ns", &["raw"]).unwrap(), "AAE=");
    }

    #[tokio::test]
    async fn read_refusals() {
        let strict = filter(ProxyProtocolConfig::default());
        let mut io = &b"GET / HTTP/1.1\r\n"[..];
        assert_eq!(
            strict
                .read(&mut io, sa("127.0.0.1:1"), sa("127.0.0.1:2"))
                .await
                .unwrap_err(),
            "not_proxy"
        );
        let mut io = &b"PROXY TCP4 1.2"[..];
        assert_eq!(
            strict
                .read(&mut io, sa("127.0.0.1:1"), sa("127.0.0.1:2"))
                .await
                .unwrap_err(),
            "closed"
        );
        let lax = filter(ProxyProtocolConfig {
            allow_requests_without_proxy_protocol: true,
            disallowed_versions: vec![Version::V1],
            ..Default::default()
        });
        let mut io = &b"GET / HTTP/1.1\r\n"[..];
        let a = lax
            .read(&mut io, sa("127.0.0.1:1"), sa("127.0.0.1:2"))
            .await
            .unwrap();
        assert_eq!(&a.preface[..], b"GET / HTTP/1.1\r\n");
        assert!(a.addresses.is_none() && a.info.version.is_none());
        let mut io = &b"PROXY UNKNOWN\r\n"[..];
        assert_eq!(
            lax.read(&mut io, sa("127.0.0.1:1"), sa("127.0.0.1:2"))
                .await
                .unwrap_err(),
            "disallowed_version"
        );
    }

    #[test]
    fn listener_filters_compile_by_name() {
        let f = |v: serde_json::Value| {
            compile(
                &serde_json::from_value::<Vec<ListenerFilterConfig>>(v).unwrap(),
                "listeners[0]",
            )
        };
        assert!(
            f(serde_json::json!([{"name": TLS_INSPECTOR}]))
                .unwrap()
                .is_none()
        );
        assert!(f(serde_json::json!([{"name": NAME}])).unwrap().is_some());
        let (field, _) =
            f(serde_json::json!([{"name": "envoy.filters.listener.original_src"}])).unwrap_err();
        assert_eq!(field, "listeners[0].listener_filters[0].name");
        let (field, _) =
            f(serde_json::json!([{"name": NAME, "config": {"pass_through_tlvs": {}}}]))
                .unwrap_err();
        assert_eq!(field, "listeners[0].listener_filters[0].config");
        let (field, _) =
            f(serde_json::json!([{"name": NAME, "config": {"disallowed_versions": ["V1", "V2"]}}]))
                .unwrap_err();
        assert_eq!(
            field,
            "listeners[0].listener_filters[0].config.disallowed_versions"
        );
    }
}
