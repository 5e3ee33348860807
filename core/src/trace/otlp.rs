//! Finished spans and their OTLP encoding: an
//! `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`
//! written directly in the protobuf wire format (the few messages and
//! field numbers of opentelemetry-proto's `trace.proto`,
//! `common.proto`, `resource.proto`), so core needs no protobuf crate.

use std::borrow::Cow;

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
}

pub type Attr = (Cow<'static, str>, Value);

/// A finished span, as queued for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<Attr>,
    /// `Status.code = STATUS_CODE_ERROR` (5xx).
    pub error: bool,
}

/// Protobuf wire-format writer (varints and length-delimited fields).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn message(&mut self, field: u32, m: Writer) {
        self.bytes(field, &m.0);
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
}

/// `common.v1.KeyValue { key = 1; AnyValue value = 2 }`,
/// `AnyValue { string_value = 1; int_value = 3 }`.
fn key_value(key: &str, value: &Value) -> Writer {
    let mut any = Writer::default();
    match value {
        Value::Str(s) => any.bytes(1, s.as_bytes()),
        Value::Int(i) => any.uint(3, *i as u64),
    }
    let mut kv = Writer::default();
    kv.bytes(1, key.as_bytes());
    kv.message(2, any);
    kv
}

/// `trace.v1.Span`.
fn span(s: &SpanRecord) -> Writer {
    let mut w = Writer::default();
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
    for (k, v) in &s.attributes {
        w.message(9, key_value(k, v));
    }
    if s.error {
        // `Status { code = 3 }`, STATUS_CODE_ERROR = 2.
        let mut st = Writer::default();
        st.uint(3, 2);
        w.message(15, st);
    }
    w
}

/// An `ExportTraceServiceRequest` of one resource (`service.name`) and one
/// instrumentation scope (`meshgate`).
pub fn export_request(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let mut resource = Writer::default();
    resource.message(
        1,
        key_value("service.name", &Value::Str(service_name.to_string().into())),
    );
    let mut scope = Writer::default();
    scope.bytes(1, b"meshgate");
    scope.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut scope_spans = Writer::default();
    scope_spans.message(1, scope);
    for s in spans {
        scope_spans.message(2, span(s));
    }
    let mut rs = Writer::default();
    rs.message(1, resource);
    rs.message(2, scope_spans);
    let mut req = Writer::default();
    req.message(1, rs);
    req.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_layout() {
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.0, [0xac, 0x02]);
        let s = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: None,
            name: "GET".into(),
            kind: Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![("http.response.status_code".into(), Value::Int(200))],
            error: true,
        };
        let b = export_request("svc", &[s]);
        // resource_spans (field 1, length-delimited) first.
        assert_eq!(b[0], 0x0a);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("service.name") && text.contains("svc"));
        assert!(text.contains("http.response.status_code"));
    }
}
