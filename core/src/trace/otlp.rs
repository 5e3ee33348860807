//! Finished spans and their OTLP encoding: an
//! `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`
//! written directly in the protobuf wire format (the few messages and
//! field numbers of opentelemetry-proto's `trace.proto`,
//! `common.proto`, `resource.proto`), so core needs no protobuf crate.

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// An attribute value (borrowed: a span is encoded where it is built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    /// A string attribute encoded once (`Encoded::attr`; the key beside it
    /// must be the one it was encoded with). The OTLP span encoder copies
    /// its bytes; everything else reads it as the `Str` it stands for
    /// (`plain`).
    Encoded(&'a Encoded),
}

impl<'a> Value<'a> {
    /// `Encoded` as the `Str` it stands for; others as they are.
    #[inline]
    pub fn plain(self) -> Value<'a> {
        match self {
            Value::Encoded(e) => Value::Str(&e.value),
            v => v,
        }
    }
}

/// A string attribute whose value repeats across spans (a method, a
/// protocol, an endpoint's cluster and address), with its OTLP encoding
/// as a `Span.attributes` entry made once: a span copies those bytes
/// instead of encoding the key and value (about 100 instructions and
/// two `memcpy` calls an attribute: benches/RESULTS.md).
#[derive(Debug, PartialEq)]
pub struct Encoded {
    key: &'static str,
    value: Box<str>,
    otlp: Box<[u8]>,
}

impl Encoded {
    pub fn new(key: &'static str, value: &str) -> Self {
        let mut otlp = Vec::new();
        key_value(&mut Writer(&mut otlp), 9, key, Value::Str(value));
        Self {
            key,
            value: value.into(),
            otlp: otlp.into(),
        }
    }

    /// The attribute, to put in a `SpanRecord`.
    pub fn attr(&self) -> Attr<'_> {
        (self.key, Value::Encoded(self))
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

pub type Attr<'a> = (&'a str, Value<'a>);

/// A finished span, as handed to the exporter. It borrows its strings
/// from the stream's trace state (`super::Active`) and the attribute
/// arrays from the stack of `super::Tracer::finish`: the transport
/// encodes it before `submit` returns, so nothing is copied into an
/// owned record per span.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: Option<&'a str>,
    pub name: &'a str,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// The span's attributes; the endpoint's (`peer`), then `tags` (the
    /// custom tags) follow them.
    pub attributes: &'a [Attr<'a>],
    /// A client span's endpoint attributes, encoded once per endpoint.
    pub peer: Option<&'a PeerAttrs>,
    pub tags: &'a [Attr<'a>],
    /// `Status.code = STATUS_CODE_ERROR` (5xx).
    pub error: bool,
}

impl<'a> SpanRecord<'a> {
    /// The attributes, the endpoint's, then the custom tags (values
    /// `Value::plain`).
    pub fn attrs(&self) -> impl Iterator<Item = Attr<'a>> {
        let peer = self.peer.map(PeerAttrs::attrs);
        self.attributes
            .iter()
            .copied()
            .chain(peer.into_iter().flatten())
            .chain(self.tags.iter().copied())
            .map(|(k, v)| (k, v.plain()))
    }
}

/// A client span's attributes that depend on its endpoint only
/// (`upstream_cluster`, `server.address`, `server.port`,
/// `network.peer.address`), with their encoding as `Span.attributes`
/// entries. Built once per endpoint and kept on it
/// (`crate::cluster::Endpoint::trace_peer`): formatting the address and
/// encoding these four were about 700 instructions of each sampled
/// try (benches/RESULTS.md).
#[derive(Debug)]
pub struct PeerAttrs {
    pub cluster: &'static str,
    pub address: std::net::SocketAddr,
    /// The IP (`server.address`, up to `ip_end`), then from `addr_start`
    /// the address (`ip:port`, `[v6]:port`).
    text: Box<str>,
    ip_end: usize,
    addr_start: usize,
    /// The four as `Span.attributes` entries (field 9).
    otlp: Box<[u8]>,
    /// The server span's `upstream_cluster` and `peer.address` when this
    /// endpoint served its last try.
    pub cluster_attr: Encoded,
    pub peer_attr: Encoded,
}

impl PeerAttrs {
    pub fn new(cluster: &'static str, address: std::net::SocketAddr) -> Self {
        let mut text = String::with_capacity(64);
        super::push_ip(&mut text, address.ip());
        let ip_end = text.len();
        let addr_start = text.len();
        super::push_addr(&mut text, address);
        let addr = text.get(addr_start..).unwrap_or_default();
        let cluster_attr = Encoded::new("upstream_cluster", cluster);
        let peer_attr = Encoded::new("peer.address", addr);
        let mut p = Self {
            cluster,
            address,
            text: text.into(),
            ip_end,
            addr_start,
            otlp: Box::default(),
            cluster_attr,
            peer_attr,
        };
        let mut otlp = Vec::new();
        for (k, v) in p.attrs() {
            key_value(&mut Writer(&mut otlp), 9, k, v);
        }
        p.otlp = otlp.into();
        p
    }

    /// `network.peer.address`: `ip:port`.
    pub fn addr(&self) -> &str {
        self.text.get(self.addr_start..).unwrap_or_default()
    }

    pub fn attrs(&self) -> [Attr<'_>; 4] {
        [
            ("upstream_cluster", Value::Str(self.cluster)),
            (
                "server.address",
                Value::Str(self.text.get(..self.ip_end).unwrap_or_default()),
            ),
            ("server.port", Value::Int(i64::from(self.address.port()))),
            ("network.peer.address", Value::Str(self.addr())),
        ]
    }
}

/// Protobuf wire-format writer into one buffer. Each message's length
/// is computed before it is written (`*_len`), so nested messages are
/// written in place: no buffer per message and no copy per nesting level.
pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

/// Bytes of `v` as a varint (lengths here are mostly under 128: one
/// byte, tested first).
#[inline]
pub(super) fn varint_len(v: u64) -> usize {
    if v < 0x80 {
        1
    } else {
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

/// Bytes of a length-delimited field of `len` bytes (field numbers here
/// are all below 16: a one-byte key).
pub(super) fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

impl Writer<'_> {
    #[inline]
    pub(super) fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            self.0.push(v as u8);
            return;
        }
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    #[inline]
    pub(super) fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    /// The key and length of a length-delimited field; its `len` bytes
    /// follow.
    #[inline]
    pub(super) fn open(&mut self, field: u32, len: usize) {
        self.key(field, 2);
        self.varint(len as u64);
    }
    #[inline]
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.open(field, b.len());
        self.0.extend_from_slice(b);
    }
    #[inline]
    pub(super) fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub(super) fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
}

/// `AnyValue { string_value = 1; int_value = 3 }`.
pub(super) fn any_len(value: Value<'_>) -> usize {
    match value.plain() {
        Value::Str(s) => field_len(s.len()),
        Value::Int(i) => 1 + varint_len(i as u64),
        Value::Encoded(e) => field_len(e.value.len()),
    }
}

/// `common.v1.KeyValue { key = 1; AnyValue value = 2 }`.
pub(super) fn key_value_len(key: &str, value: Value<'_>) -> usize {
    field_len(key.len()) + field_len(any_len(value))
}

pub(super) fn key_value(w: &mut Writer<'_>, field: u32, key: &str, value: Value<'_>) {
    let value = value.plain();
    // Each length once (a span has a dozen attributes).
    let any = any_len(value);
    let kv = field_len(key.len()) + field_len(any);
    // The usual attribute (field below 16, the whole entry under 128
    // bytes: every length a one-byte varint) writes its field heads as
    // two 4-byte appends instead of eight single-byte pushes, each with
    // its capacity check (the pushes were most of an attribute's cost:
    // benches/RESULTS.md).
    if field < 16 && kv < 0x80 {
        let (k, a) = (key.len() as u8, any as u8);
        w.0.extend_from_slice(&[(field << 3 | 2) as u8, kv as u8, 0x0a, k]);
        w.0.extend_from_slice(key.as_bytes());
        match value {
            Value::Str(s) => {
                w.0.extend_from_slice(&[0x12, a, 0x0a, s.len() as u8]);
                w.0.extend_from_slice(s.as_bytes());
            }
            // `plain` above made it a `Str`.
            Value::Encoded(_) => {}
            Value::Int(i) => {
                w.0.extend_from_slice(&[0x12, a, 0x18]);
                w.varint(i as u64);
            }
        }
        return;
    }
    w.open(field, kv);
    w.bytes(1, key.as_bytes());
    w.open(2, any);
    match value {
        Value::Str(s) => w.bytes(1, s.as_bytes()),
        Value::Encoded(e) => w.bytes(1, e.value.as_bytes()),
        Value::Int(i) => w.uint(3, i as u64),
    }
}

/// One `Span.attributes` entry.
#[inline]
fn attribute(w: &mut Writer<'_>, (k, v): &Attr<'_>) {
    match v {
        Value::Encoded(e) => {
            debug_assert_eq!(*k, e.key, "an encoded attribute under another key");
            w.0.extend_from_slice(&e.otlp);
        }
        v => key_value(w, 9, k, *v),
    }
}

/// `Status { code = 3 }` with STATUS_CODE_ERROR = 2.
const STATUS_ERROR_LEN: usize = 2;

/// `trace.v1.Span`.
fn span_len(s: &SpanRecord<'_>) -> usize {
    let mut n = field_len(16) + field_len(8);
    if let Some(ts) = &s.trace_state {
        n += field_len(ts.len());
    }
    if s.parent_span_id.is_some() {
        n += field_len(8);
    }
    n += field_len(s.name.len());
    n += 1 + varint_len(s.kind as u64);
    n += 2 * 9;
    for (k, v) in s.attributes.iter().chain(s.tags) {
        n += match v {
            Value::Encoded(e) => e.otlp.len(),
            v => field_len(key_value_len(k, *v)),
        };
    }
    n += s.peer.map_or(0, |p| p.otlp.len());
    if s.error {
        n += field_len(STATUS_ERROR_LEN);
    }
    n
}

/// Writes span `s` of `len` bytes (its `span_len`).
fn span(w: &mut Writer<'_>, field: u32, s: &SpanRecord<'_>, len: usize) {
    w.open(field, len);
    w.bytes(1, &s.trace_id);
    w.bytes(2, &s.span_id);
    if let Some(ts) = &s.trace_state {
        w.bytes(3, ts.as_bytes());
    }
    if let Some(p) = &s.parent_span_id {
        w.bytes(4, p);
    }
    w.bytes(5, s.name.as_bytes());
    w.uint(6, s.kind as u64);
    w.fixed64(7, s.start_unix_nanos);
    w.fixed64(8, s.end_unix_nanos.max(s.start_unix_nanos));
    for a in s.attributes {
        attribute(w, a);
    }
    if let Some(p) = s.peer {
        w.0.extend_from_slice(&p.otlp);
    }
    for a in s.tags {
        attribute(w, a);
    }
    if s.error {
        w.open(15, STATUS_ERROR_LEN);
        w.uint(3, 2);
    }
}

pub(super) const SCOPE_NAME: &[u8] = b"meshgate";
pub(super) const SCOPE_VERSION: &[u8] = env!("CARGO_PKG_VERSION").as_bytes();

/// Appends span `s` as one `ScopeSpans.spans` entry (its key, length and
/// message): a batch's spans are these entries one after another, each
/// encoded when its stream finishes (`append_span`), and the request
/// around them is written at export (`export_request_head`).
pub fn append_span(out: &mut Vec<u8>, s: &SpanRecord<'_>) {
    let len = span_len(s);
    out.reserve(field_len(len));
    span(&mut Writer(out), 2, s, len);
}

/// The start of an `ExportTraceServiceRequest` of one resource
/// (`service.name`) and one instrumentation scope (`meshgate`) whose
/// `ScopeSpans.spans` entries (`append_span`) are `spans_len` bytes and
/// follow it.
pub fn export_request_head(out: &mut Vec<u8>, service_name: &str, spans_len: usize) {
    let service = Value::Str(service_name);
    // Resource { attributes = 1 }
    let resource_len = field_len(key_value_len("service.name", service));
    // InstrumentationScope { name = 1; version = 2 }
    let scope_len = field_len(SCOPE_NAME.len()) + field_len(SCOPE_VERSION.len());
    // ScopeSpans { scope = 1; spans = 2 }
    let scope_spans_len = field_len(scope_len) + spans_len;
    // ResourceSpans { resource = 1; scope_spans = 2 }
    let rs_len = field_len(resource_len) + field_len(scope_spans_len);
    out.reserve(field_len(rs_len) - spans_len);
    let w = &mut Writer(out);
    w.open(1, rs_len);
    w.open(1, resource_len);
    key_value(w, 1, "service.name", service);
    w.open(2, scope_spans_len);
    w.open(1, scope_len);
    w.bytes(1, SCOPE_NAME);
    w.bytes(2, SCOPE_VERSION);
}

/// A whole `ExportTraceServiceRequest` of `spans`.
pub fn export_request(service_name: &str, spans: &[SpanRecord<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for s in spans {
        append_span(&mut body, s);
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    export_request_head(&mut out, service_name, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward encoder (a buffer per nested message), kept as
    /// the reference the one-pass encoder must match byte for byte.
    mod reference {
        use super::super::{SpanRecord, Value};

        #[derive(Default)]
        pub struct W(pub Vec<u8>);
        impl W {
            fn varint(&mut self, mut v: u64) {
                while v >= 0x80 {
                    self.0.push((v as u8) | 0x80);
                    v >>= 7;
                }
                self.0.push(v as u8);
            }
            fn key(&mut self, f: u32, wire: u8) {
                self.varint(u64::from(f) << 3 | u64::from(wire));
            }
            fn bytes(&mut self, f: u32, b: &[u8]) {
                self.key(f, 2);
                self.varint(b.len() as u64);
                self.0.extend_from_slice(b);
            }
            fn message(&mut self, f: u32, m: W) {
                self.bytes(f, &m.0);
            }
            fn uint(&mut self, f: u32, v: u64) {
                self.key(f, 0);
                self.varint(v);
            }
            fn fixed64(&mut self, f: u32, v: u64) {
                self.key(f, 1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
        fn kv(k: &str, v: &Value<'_>) -> W {
            let mut any = W::default();
            match v {
                Value::Str(s) => any.bytes(1, s.as_bytes()),
                Value::Int(i) => any.uint(3, *i as u64),
                Value::Encoded(_) => unreachable!("attrs() gives plain values"),
            }
            let mut w = W::default();
            w.bytes(1, k.as_bytes());
            w.message(2, any);
            w
        }
        fn span(s: &SpanRecord<'_>) -> W {
            let mut w = W::default();
            w.bytes(1, &s.trace_id);
            w.bytes(2, &s.span_id);
            if let Some(ts) = &s.trace_state {
                w.bytes(3, ts.as_bytes());
            }
            if let Some(p) = &s.parent_span_id {
                w.bytes(4, p);
            }
            w.bytes(5, s.name.as_bytes());
            w.uint(6, s.kind as u64);
            w.fixed64(7, s.start_unix_nanos);
            w.fixed64(8, s.end_unix_nanos.max(s.start_unix_nanos));
            for (k, v) in s.attrs() {
                w.message(9, kv(k, &v));
            }
            if s.error {
                let mut st = W::default();
                st.uint(3, 2);
                w.message(15, st);
            }
            w
        }
        pub fn export_request(service: &str, spans: &[SpanRecord<'_>]) -> Vec<u8> {
            let mut resource = W::default();
            resource.message(1, kv("service.name", &Value::Str(service)));
            let mut scope = W::default();
            scope.bytes(1, b"meshgate");
            scope.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
            let mut ss = W::default();
            ss.message(1, scope);
            for s in spans {
                ss.message(2, span(s));
            }
            let mut rs = W::default();
            rs.message(1, resource);
            rs.message(2, ss);
            let mut req = W::default();
            req.message(1, rs);
            req.0
        }
    }

    /// The strings of test span `i`: its trace state, name, and each
    /// attribute's key and (for odd ones) string value.
    struct Strings {
        trace_state: Option<String>,
        name: String,
        attrs: Vec<(String, String)>,
    }

    fn strings(i: usize) -> Strings {
        Strings {
            trace_state: i.is_multiple_of(3).then(|| "k=v".repeat(i)),
            name: "n".repeat(i * 7),
            attrs: (0..i * 3)
                .map(|j| (format!("key.{j}"), "v".repeat(j * 11)))
                .collect(),
        }
    }

    fn attrs(s: &Strings) -> Vec<Attr<'_>> {
        s.attrs
            .iter()
            .enumerate()
            .map(|(j, (k, v))| {
                let v = if j.is_multiple_of(2) {
                    Value::Int(j as i64 * 1_000_003 - 7)
                } else {
                    Value::Str(v)
                };
                (k.as_str(), v)
            })
            .collect()
    }

    /// Test span `i`; its attributes are split between `attributes` and
    /// `tags` at `i % 4`, and every third has endpoint attributes.
    fn record<'a>(
        i: usize,
        s: &'a Strings,
        attrs: &'a [Attr<'a>],
        peers: &'a [PeerAttrs],
    ) -> SpanRecord<'a> {
        let (attributes, tags) = attrs.split_at((i % 4).min(attrs.len()));
        SpanRecord {
            trace_id: [i as u8 | 1; 16],
            span_id: [2; 8],
            parent_span_id: i.is_multiple_of(2).then_some([3; 8]),
            trace_state: s.trace_state.as_deref(),
            name: &s.name,
            kind: if i.is_multiple_of(2) {
                Kind::Server
            } else {
                Kind::Client
            },
            start_unix_nanos: 1_700_000_000_000_000_000 + i as u64,
            end_unix_nanos: if i == 4 { 0 } else { 1_700_000_000_000_000_999 },
            attributes,
            peer: i.is_multiple_of(3).then(|| &peers[i / 3 % peers.len()]),
            tags,
            error: !i.is_multiple_of(2),
        }
    }

    #[test]
    fn varints_and_layout() {
        let mut b = Vec::new();
        Writer(&mut b).varint(300);
        assert_eq!(b, [0xac, 0x02]);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            Writer(&mut b).varint(v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let s = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: None,
            name: "GET",
            kind: Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: &[("http.response.status_code", Value::Int(200))],
            peer: None,
            tags: &[],
            error: true,
        };
        let b = export_request("svc", &[s]);
        // resource_spans (field 1, length-delimited) first.
        assert_eq!(b[0], 0x0a);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("service.name") && text.contains("svc"));
        assert!(text.contains("http.response.status_code"));
    }

    /// An attribute encoded once is the same bytes as the same string
    /// encoded in the span, and reads as that string.
    #[test]
    fn encoded_attributes_match_plain_ones() {
        let method = Encoded::new("http.request.method", "GET");
        let long = "p".repeat(200);
        let path = Encoded::new("url.path", &long);
        let peer = PeerAttrs::new("svc", "10.1.2.3:8080".parse().unwrap());
        fn span<'a>(attributes: &'a [Attr<'a>]) -> SpanRecord<'a> {
            SpanRecord {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: None,
                trace_state: None,
                name: "GET",
                kind: Kind::Server,
                start_unix_nanos: 1,
                end_unix_nanos: 2,
                attributes,
                peer: None,
                tags: &[],
                error: false,
            }
        }
        let encoded = [
            method.attr(),
            ("n", Value::Int(3)),
            path.attr(),
            peer.cluster_attr.attr(),
            peer.peer_attr.attr(),
        ];
        let plain = [
            ("http.request.method", Value::Str("GET")),
            ("n", Value::Int(3)),
            ("url.path", Value::Str(&long)),
            ("upstream_cluster", Value::Str("svc")),
            ("peer.address", Value::Str("10.1.2.3:8080")),
        ];
        assert_eq!(
            export_request("svc", &[span(&encoded)]),
            export_request("svc", &[span(&plain)])
        );
        assert_eq!(
            span(&encoded).attrs().collect::<Vec<_>>(),
            span(&plain).attrs().collect::<Vec<_>>()
        );
        let mut tags = Vec::new();
        key_value(
            &mut Writer(&mut tags),
            6,
            "http.request.method",
            method.attr().1,
        );
        let mut want = Vec::new();
        key_value(
            &mut Writer(&mut want),
            6,
            "http.request.method",
            Value::Str("GET"),
        );
        assert_eq!(tags, want);
    }

    #[test]
    fn peer_attrs_of_v4_and_v6_endpoints() {
        let p = PeerAttrs::new("svc", "10.1.2.3:8080".parse().unwrap());
        assert_eq!(
            p.attrs(),
            [
                ("upstream_cluster", Value::Str("svc")),
                ("server.address", Value::Str("10.1.2.3")),
                ("server.port", Value::Int(8080)),
                ("network.peer.address", Value::Str("10.1.2.3:8080")),
            ]
        );
        let p = PeerAttrs::new("svc", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(p.attrs()[1], ("server.address", Value::Str("2001:db8::1")));
        assert_eq!(p.addr(), "[2001:db8::1]:443");
    }

    #[test]
    fn one_pass_matches_the_nested_encoder() {
        let peers = [
            PeerAttrs::new("svc", "10.1.2.3:8080".parse().unwrap()),
            PeerAttrs::new("", "[2001:db8::1]:443".parse().unwrap()),
        ];
        // Sizes across varint length boundaries (127/128, 16383/16384).
        for n in [0, 1, 2, 5, 40, 300] {
            let strs: Vec<_> = (0..n).map(|i| strings(i % 25)).collect();
            let attrs: Vec<_> = strs.iter().map(attrs).collect();
            let spans: Vec<_> = (0..n)
                .map(|i| record(i % 25, &strs[i], &attrs[i], &peers))
                .collect();
            let long = "s".repeat(n * 50);
            for service in ["svc", long.as_str()] {
                assert_eq!(
                    export_request(service, &spans),
                    reference::export_request(service, &spans),
                    "{n} spans"
                );
            }
        }
    }
}
