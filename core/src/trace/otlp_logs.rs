//! OTLP logs for the OpenTelemetry access logger
//! (`envoy.access_loggers.open_telemetry`): a log record, its encoding as
//! an `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`
//! (the messages and field numbers of opentelemetry-proto's `logs.proto`,
//! written with the span encoder's protobuf writer, `super::otlp`), and
//! the `LogsService/Export` transport the span exporter sends batches
//! with (`super::export::Exporter<LogRecord>`: bounded queue, records
//! encoded at submit, batches sent off the request path, drops counted).

use super::otlp::{
    SCOPE_NAME, SCOPE_VERSION, Value, Writer, any_len, field_len, key_value, key_value_len,
};
use super::sink::{BatchSink, BoxFuture, Record};
use crate::cluster::Cluster;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// Largest export response read (an empty message or a partial-success
/// note).
const MAX_RESPONSE: usize = 64 * 1024;

/// One access log entry as an OTLP `LogRecord`.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub time_unix_nanos: u64,
    /// The formatted body (`AnyValue.string_value`), if configured.
    pub body: Option<String>,
    /// The formatted attributes (string values).
    pub attributes: Vec<(String, String)>,
}

impl Record for LogRecord {
    type Ref<'a> = LogRecord;
}

/// `logs.v1.LogRecord { time_unix_nano = 1; body = 5; attributes = 6;
/// observed_time_unix_nano = 11 }`.
fn record_len(r: &LogRecord) -> usize {
    let mut n = 2 * 9;
    if let Some(b) = &r.body {
        n += field_len(any_len(Value::Str(b)));
    }
    for (k, v) in &r.attributes {
        n += field_len(key_value_len(k, Value::Str(v)));
    }
    n
}

/// Appends `r` as one `ScopeLogs.log_records` entry (key, length and
/// message): a batch's records are these one after another, and
/// `export_logs_request_head` writes the request around them.
pub fn append_record(out: &mut Vec<u8>, r: &LogRecord) {
    let len = record_len(r);
    out.reserve(field_len(len));
    let w = &mut Writer(out);
    w.open(2, len);
    w.fixed64(1, r.time_unix_nanos);
    if let Some(b) = &r.body {
        w.open(5, any_len(Value::Str(b)));
        w.bytes(1, b.as_bytes());
    }
    for (k, v) in &r.attributes {
        key_value(w, 6, k, Value::Str(v));
    }
    w.fixed64(11, r.time_unix_nanos);
}

/// The start of an `ExportLogsServiceRequest` of one resource (`resource`
/// attributes) and one instrumentation scope (`meshgate`) whose records
/// (`append_record`) are `records_len` bytes and follow it.
pub fn export_logs_request_head(
    out: &mut Vec<u8>,
    resource: &[(String, String)],
    records_len: usize,
) {
    // Resource { attributes = 1 }
    let resource_len: usize = resource
        .iter()
        .map(|(k, v)| field_len(key_value_len(k, Value::Str(v))))
        .sum();
    // InstrumentationScope { name = 1; version = 2 }
    let scope_len = field_len(SCOPE_NAME.len()) + field_len(SCOPE_VERSION.len());
    // ScopeLogs { scope = 1; log_records = 2 }
    let scope_logs_len = field_len(scope_len) + records_len;
    // ResourceLogs { resource = 1; scope_logs = 2 }
    let rl_len = field_len(resource_len) + field_len(scope_logs_len);
    out.reserve(field_len(rl_len) - records_len);
    let w = &mut Writer(out);
    w.open(1, rl_len);
    w.open(1, resource_len);
    for (k, v) in resource {
        key_value(w, 1, k, Value::Str(v));
    }
    w.open(2, scope_logs_len);
    w.open(1, scope_len);
    w.bytes(1, SCOPE_NAME);
    w.bytes(2, SCOPE_VERSION);
}

/// OTLP/gRPC `LogsService/Export` to a collector cluster, with the
/// batch's resource attributes (`log_name` and `resource_attributes`).
#[derive(Debug)]
pub struct OtlpLogsGrpc {
    authority: String,
    resource: Vec<(String, String)>,
}

impl OtlpLogsGrpc {
    pub fn new(authority: String, resource: Vec<(String, String)>) -> Self {
        Self {
            authority,
            resource,
        }
    }
}

impl BatchSink<LogRecord> for OtlpLogsGrpc {
    fn encode(&self, _service_name: &str, r: &LogRecord, out: &mut Vec<u8>) {
        append_record(out, r);
    }

    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        _service_name: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        let mut msg = Vec::with_capacity(body.len() + 128);
        export_logs_request_head(&mut msg, &self.resource, body.len());
        msg.extend_from_slice(&body);
        Box::pin(async move {
            crate::callout::grpc_unary(
                cluster,
                &self.authority,
                EXPORT_PATH,
                Bytes::from(msg),
                timeout,
                MAX_RESPONSE,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding decoded by hand: the nesting, the lengths and the
    /// body / attribute strings where logs.proto puts them.
    #[test]
    fn a_logs_request_nests_resource_scope_and_records() {
        let r = LogRecord {
            time_unix_nanos: 7,
            body: Some("GET /x 200".into()),
            attributes: vec![("code".into(), "200".into())],
        };
        let mut body = Vec::new();
        append_record(&mut body, &r);
        let mut b = Vec::new();
        export_logs_request_head(&mut b, &[("log_name".into(), "gw".into())], body.len());
        b.extend_from_slice(&body);
        // ResourceLogs (field 1, length-delimited) spans the whole rest.
        assert_eq!(b[0], 0x0a);
        assert_eq!(b[1] as usize, b.len() - 2);
        // Resource { KeyValue { key "log_name", value { string "gw" } } }
        assert_eq!(&b[2..6], &[0x0a, 18, 0x0a, 16]);
        assert_eq!(&b[6..16], b"\x0a\x08log_name");
        assert_eq!(&b[16..20], b"\x12\x04\x0a\x02");
        assert_eq!(&b[20..22], b"gw");
        // ScopeLogs (field 2) spans the rest.
        assert_eq!(b[22], 0x12);
        assert_eq!(b[23] as usize, b.len() - 24);
        // The record: field 2 of ScopeLogs, time_unix_nano = 1 (fixed64)
        // first, the body (field 5) as AnyValue.string_value.
        let rec = b.len() - body.len();
        assert_eq!(b[rec], 0x12);
        assert_eq!(b[rec + 1] as usize, body.len() - 2);
        assert_eq!(&b[rec + 2..rec + 11], &[0x09, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[rec + 11..rec + 15], &[0x2a, 12, 0x0a, 10]);
        assert_eq!(&b[rec + 15..rec + 25], b"GET /x 200");
        // attributes = 6: KeyValue { "code", { string "200" } }
        assert_eq!(&b[rec + 25..rec + 27], &[0x32, 13]);
        assert_eq!(&b[rec + 27..rec + 33], b"\x0a\x04code");
        // observed_time_unix_nano = 11 last.
        assert_eq!(&b[b.len() - 9..], &[0x59, 7, 0, 0, 0, 0, 0, 0, 0]);
    }
}
