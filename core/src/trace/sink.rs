//! The exporter seam for span transports: a `BatchSink` encodes each
//! finished span into its batch and sends a batch (`export::Exporter`
//! keeps the queue and the batching), and
//! `HttpTarget` is the HTTP POST both OTLP/HTTP and Zipkin make to their
//! collector cluster through its pool.

use super::otlp::SpanRecord;
use crate::cluster::Cluster;
use crate::error::BuildError;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest collector answer read (an empty message or a short note).
const MAX_RESPONSE: usize = 64 * 1024;

/// What an exporter carries. `Ref<'a>` is one record as handed to
/// `export::Exporter::submit`: it may borrow the stream's data, since
/// it is encoded before `submit` returns.
pub trait Record: 'static {
    type Ref<'a>;
}

/// Finished spans (`SpanRecord`, borrowed).
#[derive(Debug)]
pub struct Spans;

impl Record for Spans {
    type Ref<'a> = SpanRecord<'a>;
}

/// A span transport (or, with `R` another record type, the OTLP logs
/// transport of `super::otlp_logs`): how one record is encoded into a
/// batch's body (when its stream finishes), and how a batch is sent.
pub trait BatchSink<R: Record = Spans>: Send + Sync + std::fmt::Debug {
    /// Appends `span` to `out`, the encoded records of one batch so far.
    fn encode(&self, service_name: &str, span: &R::Ref<'_>, out: &mut Vec<u8>);

    /// Bytes left free at the start of each batch's body, for `send` to
    /// write what goes before the records in place (the OTLP/gRPC frame
    /// and request head) instead of copying the batch behind them.
    fn head_room(&self, _service_name: &str) -> usize {
        0
    }

    /// Sends one batch: `body` is `head_room` bytes (zeros), then its
    /// spans' encodings one after another.
    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        service_name: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Where a collector's HTTP API is: the authority and path of a URI (or
/// a bare path), plus the headers added to each POST.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    authority: String,
    path: String,
    headers: HeaderMap,
}

impl HttpTarget {
    /// `uri` is a full URI (`http://collector:4318/v1/traces`, its
    /// authority sent as `Host`) or a path (`default_authority` is then
    /// sent); `field` names it in errors.
    pub fn new(field: &str, uri: &str, default_authority: &str) -> Result<Self, BuildError> {
        let bad = |why: &str| BuildError::new(field, format!("'{uri}' {why}"));
        let (authority, path) = if uri.starts_with('/') {
            (default_authority.to_string(), uri.to_string())
        } else {
            let u: http::Uri = uri.parse().map_err(|_| bad("is not a URI"))?;
            let Some(a) = u.authority() else {
                return Err(bad("has no authority"));
            };
            let path = u.path_and_query().map_or("/", |p| p.as_str());
            (a.as_str().to_string(), path.to_string())
        };
        if authority.is_empty() {
            return Err(bad("has no authority"));
        }
        // The request URI is built from these at each export; check once.
        http::Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|_| bad("is not a valid authority and path"))?;
        Ok(Self {
            authority,
            path,
            headers: HeaderMap::new(),
        })
    }

    /// Adds a header to every POST; `field` names it in errors.
    pub fn header(&mut self, field: &str, key: &str, value: &str) -> Result<(), BuildError> {
        let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes()).map_err(|_| {
            BuildError::new(
                format!("{field}.key"),
                format!("'{key}' is not a header name"),
            )
        })?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| BuildError::new(format!("{field}.value"), "not a valid header value"))?;
        self.headers.append(name, value);
        Ok(())
    }

    /// POSTs `body`; any answer but a 2xx is an error.
    pub async fn post(
        &self,
        cluster: &Arc<Cluster>,
        content_type: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), String> {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(self.path.as_str())
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = http::Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.clone_from(&self.headers);
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            h.insert(http::header::HOST, host);
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        let resp = crate::callout::call(cluster, req, timeout, MAX_RESPONSE)
            .await
            .map_err(|e| e.to_string())?;
        if resp.head.status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {}", resp.head.status.as_u16()))
        }
    }
}
