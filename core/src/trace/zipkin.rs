//! The Zipkin span transport (`envoy.tracers.zipkin`, `HTTP_JSON`): each
//! batch is one JSON array of Zipkin API v2 spans POSTed to the
//! collector's endpoint (e.g. `/api/v2/spans`). A trace id whose upper
//! half is zero (a 64-bit one, `trace_id_128bit: false`) is written with
//! 16 hex digits, as Zipkin does.

use super::otlp::{Kind, SpanRecord, Value};
use super::sink::{BatchSink, BoxFuture, HttpTarget};
use crate::cluster::Cluster;
use bytes::Bytes;
use serde_json::{Map, json};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Zipkin {
    pub target: HttpTarget,
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn trace_id(id: &[u8; 16]) -> String {
    if id[..8].iter().all(|b| *b == 0) {
        hex(&id[8..])
    } else {
        hex(id)
    }
}

/// One span as Zipkin v2 JSON; attributes become string tags, a 5xx the
/// `error` tag.
fn span(service_name: &str, s: &SpanRecord<'_>) -> serde_json::Value {
    let mut tags = Map::new();
    let mut remote: Option<(String, i64)> = None;
    for (k, v) in s.attrs() {
        let v = match v {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Encoded(e) => e.value().to_string(),
        };
        match k {
            "server.address" if s.kind == Kind::Client => {
                remote.get_or_insert((String::new(), 0)).0 = v.clone();
            }
            "server.port" if s.kind == Kind::Client => {
                remote.get_or_insert((String::new(), 0)).1 = v.parse().unwrap_or(0);
            }
            _ => {}
        }
        tags.insert(k.to_string(), serde_json::Value::String(v));
    }
    if s.error {
        tags.insert("error".into(), "true".into());
    }
    let start_us = s.start_unix_nanos / 1000;
    let duration_us = (s.end_unix_nanos.saturating_sub(s.start_unix_nanos) / 1000).max(1);
    let mut o = json!({
        "traceId": trace_id(&s.trace_id),
        "id": hex(&s.span_id),
        "name": s.name,
        "kind": match s.kind { Kind::Server => "SERVER", Kind::Client => "CLIENT" },
        "timestamp": start_us,
        "duration": duration_us,
        "localEndpoint": {"serviceName": service_name},
        "tags": tags,
    });
    if let Some(map) = o.as_object_mut() {
        if let Some(p) = &s.parent_span_id {
            map.insert("parentId".into(), hex(p).into());
        }
        if let Some((ip, port)) = remote {
            let family = if ip.contains(':') { "ipv6" } else { "ipv4" };
            map.insert("remoteEndpoint".into(), json!({family: ip, "port": port}));
        }
    }
    o
}

/// A batch as a Zipkin v2 JSON array.
#[cfg(test)]
fn encode(service_name: &str, spans: &[SpanRecord<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for s in spans {
        append(service_name, s, &mut body);
    }
    array(body)
}

/// Appends one span to a batch's body: JSON objects separated by commas.
fn append(service_name: &str, s: &SpanRecord<'_>, out: &mut Vec<u8>) {
    let mark = out.len();
    if !out.is_empty() {
        out.push(b',');
    }
    if serde_json::to_writer(&mut *out, &span(service_name, s)).is_err() {
        out.truncate(mark);
    }
}

/// The batch's body as a JSON array.
fn array(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(b'[');
    out.extend_from_slice(&body);
    out.push(b']');
    out
}

impl BatchSink for Zipkin {
    fn encode(&self, service_name: &str, span: &SpanRecord<'_>, out: &mut Vec<u8>) {
        append(service_name, span, out);
    }

    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        _service_name: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        let body = Bytes::from(array(body));
        Box::pin(self.target.post(cluster, "application/json", body, timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipkin_v2_json() {
        let mut tid = [0u8; 16];
        tid[15] = 1;
        let peer = super::super::otlp::PeerAttrs::new("c", "127.0.0.1:8080".parse().unwrap());
        let s = SpanRecord {
            trace_id: tid,
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            trace_state: None,
            name: "GET echo",
            kind: Kind::Client,
            start_unix_nanos: 5_000_000,
            end_unix_nanos: 7_000_000,
            attributes: &[("meshgate.attempt", Value::Int(1))],
            peer: Some(&peer),
            tags: &[("http.response.status_code", Value::Int(503))],
            error: true,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode("svc", &[s])).unwrap();
        let o = &v[0];
        assert_eq!(o["traceId"], "0000000000000001");
        assert_eq!(o["id"], "0202020202020202");
        assert_eq!(o["parentId"], "0303030303030303");
        assert_eq!(o["kind"], "CLIENT");
        assert_eq!(o["timestamp"], 5000);
        assert_eq!(o["duration"], 2000);
        assert_eq!(o["localEndpoint"]["serviceName"], "svc");
        assert_eq!(o["remoteEndpoint"]["ipv4"], "127.0.0.1");
        assert_eq!(o["remoteEndpoint"]["port"], 8080);
        assert_eq!(o["tags"]["http.response.status_code"], "503");
        assert_eq!(o["tags"]["error"], "true");
        assert_eq!(o["tags"]["upstream_cluster"], "c");
        assert_eq!(o["tags"]["network.peer.address"], "127.0.0.1:8080");
        let full = trace_id(&[1; 16]);
        assert_eq!(full.len(), 32);
    }
}
