//! The OTLP/HTTP span transport (OpenTelemetry's `http_service`): each
//! batch is one `ExportTraceServiceRequest` (the same protobuf as the gRPC
//! exporter's, `otlp::append_span` and `otlp::export_request_head`) POSTed as
//! `application/x-protobuf` to the collector's `/v1/traces`.

use super::otlp::{SpanRecord, append_span, export_request_head};
use super::sink::{BatchSink, BoxFuture, HttpTarget};
use crate::cluster::Cluster;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct OtlpHttp {
    pub target: HttpTarget,
}

impl BatchSink for OtlpHttp {
    fn encode(&self, _service_name: &str, span: &SpanRecord, out: &mut Vec<u8>) {
        append_span(out, span);
    }

    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        service_name: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        let mut msg = Vec::with_capacity(body.len() + 64);
        export_request_head(&mut msg, service_name, body.len());
        msg.extend_from_slice(&body);
        Box::pin(
            self.target
                .post(cluster, "application/x-protobuf", Bytes::from(msg), timeout),
        )
    }
}
