//! The OTLP/gRPC span exporter: finished spans go into a bounded queue
//! (never waited on by a stream: a full queue drops the span, counted), a
//! background task takes them in batches and sends each batch as one
//! `TraceService/Export` call to the collector's meshgate cluster through
//! its pool (`crate::callout::grpc_unary`). The task starts with the first
//! span, on the runtime that produced it, and ends once the tracer is
//! dropped (a reload) and the queue is empty.
//!
//! Cost: the task wakes once per batch, not per span. After a batch's
//! first span it sleeps `LINGER` (cut short when a batch's worth is
//! queued, which `submit` signals) and then drains the queue without
//! waiting, so a stream's `submit` is a queue push with no task wake-up
//! and no timer.

use super::otlp::{SpanRecord, export_request};
use crate::cluster::Cluster;
use crate::metrics::names;
use bytes::Bytes;
use metrics::Counter;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Spans waiting for export; past it new spans are dropped.
const QUEUE: usize = 4096;
/// How long the first span of a batch waits for others.
const LINGER: Duration = Duration::from_millis(100);
/// Largest export response read (it is an empty message or a partial
/// success note).
const MAX_RESPONSE: usize = 64 * 1024;

pub struct Exporter {
    cluster: Arc<Cluster>,
    authority: String,
    service_name: String,
    batch: usize,
    timeout: Duration,
    tx: OnceLock<mpsc::Sender<SpanRecord>>,
    /// A batch's worth is queued: the task stops lingering.
    full: Arc<Notify>,
    dropped_full: Counter,
    /// Another transport than OTLP/gRPC (`super::sink`).
    sink: Option<Arc<dyn super::sink::BatchSink>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("cluster", &self.cluster.name)
            .finish()
    }
}

impl Exporter {
    pub fn new(
        cluster: Arc<Cluster>,
        authority: String,
        service_name: String,
        batch: usize,
        timeout: Duration,
    ) -> Self {
        let dropped_full = metrics::counter!(names::TRACING_SPANS_DROPPED_TOTAL, "cluster" => cluster.name, "reason" => "queue_full");
        Self {
            cluster,
            authority,
            service_name,
            batch: batch.max(1),
            timeout,
            tx: OnceLock::new(),
            full: Arc::new(Notify::new()),
            dropped_full,
            sink: None,
        }
    }

    /// Sends batches through `sink` instead of OTLP/gRPC.
    pub fn with_sink(mut self, sink: Arc<dyn super::sink::BatchSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Queues a finished span; never waits.
    pub fn submit(&self, span: SpanRecord) {
        let tx = self.tx.get_or_init(|| self.spawn());
        if tx.try_send(span).is_err() {
            self.dropped_full.increment(1);
        } else if QUEUE - tx.capacity() >= self.batch {
            self.full.notify_one();
        }
    }

    fn spawn(&self) -> mpsc::Sender<SpanRecord> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Task {
            cluster: self.cluster.clone(),
            authority: self.authority.clone(),
            service_name: self.service_name.clone(),
            batch: self.batch,
            timeout: self.timeout,
            sink: self.sink.clone(),
            full: self.full.clone(),
        };
        // Only called from a stream, which runs on a runtime.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(task.run(rx));
        }
        tx
    }
}

struct Task {
    cluster: Arc<Cluster>,
    authority: String,
    service_name: String,
    batch: usize,
    timeout: Duration,
    sink: Option<Arc<dyn super::sink::BatchSink>>,
    full: Arc<Notify>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<SpanRecord>) {
        let label = self.cluster.name;
        let exported = metrics::counter!(names::TRACING_SPANS_EXPORTED_TOTAL, "cluster" => label);
        let failed = metrics::counter!(names::TRACING_SPANS_DROPPED_TOTAL, "cluster" => label, "reason" => "export_failed");
        let mut spans = Vec::with_capacity(self.batch.min(1024));
        while let Some(first) = rx.recv().await {
            spans.push(first);
            // Let a batch gather for a moment (no wake-up per span), then
            // take what is queued.
            if rx.len() + 1 < self.batch {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = self.full.notified() => {}
                }
            }
            while spans.len() < self.batch {
                match rx.try_recv() {
                    Ok(s) => spans.push(s),
                    Err(_) => break,
                }
            }
            let n = spans.len() as u64;
            if let Some(sink) = &self.sink {
                let r = sink
                    .send(&self.cluster, &self.service_name, &spans, self.timeout)
                    .await;
                spans.clear();
                match r {
                    Ok(()) => exported.increment(n),
                    Err(e) => {
                        failed.increment(n);
                        tracing::debug!(cluster = label, error = %e, "span export failed");
                    }
                }
                continue;
            }
            let body = Bytes::from(export_request(&self.service_name, &spans));
            spans.clear();
            match crate::callout::grpc_unary(
                &self.cluster,
                &self.authority,
                EXPORT_PATH,
                body,
                self.timeout,
                MAX_RESPONSE,
            )
            .await
            {
                Ok(_) => exported.increment(n),
                Err(e) => {
                    failed.increment(n);
                    tracing::debug!(cluster = label, error = %e, "span export failed");
                }
            }
        }
    }
}
