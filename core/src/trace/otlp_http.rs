//! The OTLP/HTTP span transport (OpenTelemetry's `http_service`): each
//! batch is one `ExportTraceServiceRequest` (the same protobuf as the gRPC
//! exporter's, `otlp::export_request`) POSTed as
//! `application/x-protobuf` to the collector's `/v1/traces`.

use super::otlp::{SpanRecord, export_request};
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
    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        service_name: &'a str,
        spans: &'a [SpanRecord],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        let body = Bytes::from(export_request(service_name, spans));
        Box::pin(
            self.target
                .post(cluster, "application/x-protobuf", body, timeout),
        )
    }
}
