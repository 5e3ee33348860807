//! The span exporter: a finished span is encoded at once, on the stream
//! that finished it, into the body of the batch being gathered (the
//! transport's encoding: OTLP protobuf, or Zipkin JSON), and a background
//! task sends each batch as one call to the collector's meshgate cluster
//! through its pool (OTLP/gRPC `TraceService/Export` by default, or a
//! `super::sink::BatchSink`). At most `QUEUE` spans wait; past that a
//! span is dropped, counted, and a stream never waits. The task starts
//! with the first span, on the runtime that produced it, and ends once
//! the tracer is dropped (a reload) and nothing waits.
//!
//! Cost: encoding at `submit` means a span's strings and attributes are
//! read once, on the thread that built them, and freed there; the batch
//! is one growing buffer behind an uncontended lock, with no span moved
//! through a channel and no per-span record kept until the export (that
//! queue, and encoding the whole batch later, were most of the sampled
//! stream's cost: benches/RESULTS.md). The task wakes once per batch:
//! after a batch's first span it sleeps `LINGER` (cut short when
//! `max_cache_size` spans are queued) and then takes what is there.

use super::otlp::{SpanRecord, append_span, export_request_head};
use super::sink::{BatchSink, BoxFuture, Record, Spans};
use crate::cluster::Cluster;
use crate::metrics::names;
use bytes::Bytes;
use metrics::Counter;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Spans waiting for export; past it new spans are dropped.
const QUEUE: usize = 4096;
/// How long the first span of a batch waits for others.
const LINGER: Duration = Duration::from_millis(100);
/// Largest export response read (it is an empty message or a partial
/// success note).
const MAX_RESPONSE: usize = 64 * 1024;

/// Encoded spans of one batch.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    spans: usize,
}

/// What the streams and the export task share.
#[derive(Default)]
struct Queue {
    /// Full batches (`max_cache_size` spans each), oldest first.
    ready: VecDeque<Batch>,
    /// The batch being gathered.
    open: Batch,
    /// Spans in `ready` and `open`.
    waiting: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// A batch's first span is queued: the task wakes.
    first: Notify,
    /// A batch's worth is queued: the task stops lingering.
    full: Notify,
    /// The exporter is gone: the task sends what waits and ends.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding it leaves whole spans only: keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue and batching of one collector. `R` is what is exported:
/// spans, or the OpenTelemetry access logger's log records
/// (`super::otlp_logs`); each instance is compiled for its own `R`, so
/// the span path pays nothing for the other.
pub struct Exporter<R: Record = Spans> {
    cluster: Arc<Cluster>,
    service_name: Arc<str>,
    batch: usize,
    timeout: Duration,
    transport: Arc<dyn BatchSink<R>>,
    /// The transport's `head_room`.
    head_room: usize,
    shared: Arc<Shared>,
    started: OnceLock<()>,
    dropped_full: Counter,
    /// Counter names `{cluster}` and `{cluster,reason}`.
    exported_name: &'static str,
    dropped_name: &'static str,
}

impl<R: Record> std::fmt::Debug for Exporter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("cluster", &self.cluster.name)
            .field("transport", &self.transport)
            .finish()
    }
}

impl<R: Record> Drop for Exporter<R> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.first.notify_one();
    }
}

/// OTLP/gRPC: `TraceService/Export` with the batch as its
/// `ExportTraceServiceRequest`.
#[derive(Debug)]
struct OtlpGrpc {
    authority: String,
}

/// The gRPC message prefix: uncompressed flag and 32-bit length.
const GRPC_FRAME: usize = 5;

impl BatchSink for OtlpGrpc {
    fn encode(&self, _service_name: &str, span: &SpanRecord<'_>, out: &mut Vec<u8>) {
        append_span(out, span);
    }

    fn head_room(&self, service_name: &str) -> usize {
        // The head with the largest spans length a gRPC message can have.
        let mut head = Vec::new();
        export_request_head(&mut head, service_name, u32::MAX as usize);
        GRPC_FRAME + head.len()
    }

    fn send<'a>(
        &'a self,
        cluster: &'a Arc<Cluster>,
        service_name: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        let framed = grpc_framed(body, self.head_room(service_name), service_name);
        Box::pin(async move {
            crate::callout::grpc_unary_framed(
                cluster,
                &self.authority,
                EXPORT_PATH,
                framed,
                timeout,
                MAX_RESPONSE,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}

/// The gRPC message of a batch `body` (`room` bytes of head room, then
/// its spans): the frame prefix and the request head go into the head
/// room, right before the spans, so the batch is sent without a copy.
fn grpc_framed(mut body: Vec<u8>, room: usize, service_name: &str) -> Bytes {
    let spans_len = body.len().saturating_sub(room);
    let mut head = Vec::with_capacity(room);
    export_request_head(&mut head, service_name, spans_len);
    let message_len = (head.len() + spans_len) as u32;
    let start = room - head.len() - GRPC_FRAME;
    if body.len() < room {
        body.resize(room, 0);
    }
    body[start] = 0;
    body[start + 1..start + GRPC_FRAME].copy_from_slice(&message_len.to_be_bytes());
    body[start + GRPC_FRAME..room].copy_from_slice(&head);
    Bytes::from(body).slice(start..)
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
        let transport = OtlpGrpc { authority };
        Self {
            cluster,
            head_room: transport.head_room(&service_name),
            service_name: service_name.into(),
            batch: batch.clamp(1, QUEUE),
            timeout,
            transport: Arc::new(transport),
            shared: Arc::default(),
            started: OnceLock::new(),
            dropped_full,
            exported_name: names::TRACING_SPANS_EXPORTED_TOTAL,
            dropped_name: names::TRACING_SPANS_DROPPED_TOTAL,
        }
    }

    /// Sends batches through `sink` instead of OTLP/gRPC.
    pub fn with_sink(mut self, sink: Arc<dyn BatchSink>) -> Self {
        self.head_room = sink.head_room(&self.service_name);
        self.transport = sink;
        self
    }
}

impl<R: Record> Exporter<R> {
    /// An exporter of other records than spans: `transport` encodes and
    /// sends them, `exported` and `dropped` name its counters
    /// (`{cluster}`, `{cluster,reason}`).
    pub fn with_transport(
        cluster: Arc<Cluster>,
        transport: Arc<dyn BatchSink<R>>,
        batch: usize,
        timeout: Duration,
        exported: &'static str,
        dropped: &'static str,
    ) -> Self {
        let dropped_full =
            metrics::counter!(dropped, "cluster" => cluster.name, "reason" => "queue_full");
        Self {
            head_room: transport.head_room(""),
            cluster,
            service_name: Arc::from(""),
            batch: batch.clamp(1, QUEUE),
            timeout,
            transport,
            shared: Arc::default(),
            started: OnceLock::new(),
            dropped_full,
            exported_name: exported,
            dropped_name: dropped,
        }
    }

    /// Queues a finished span (encoded now); never waits.
    pub fn submit(&self, span: R::Ref<'_>) {
        self.queue().push(span);
    }

    /// Queues several spans (a stream's client and server spans) under
    /// one lock of the queue: `Queuing::push` each, the task is woken
    /// when it is dropped.
    pub fn queue(&self) -> Queuing<'_, R> {
        self.started.get_or_init(|| self.spawn());
        Queuing {
            exporter: self,
            q: Some(self.shared.lock()),
            first: false,
            full: false,
        }
    }
}

/// The exporter's queue, locked for a stream's spans (`Exporter::queue`).
pub struct Queuing<'e, R: Record> {
    exporter: &'e Exporter<R>,
    q: Option<std::sync::MutexGuard<'e, Queue>>,
    first: bool,
    full: bool,
}

impl<R: Record> Queuing<'_, R> {
    /// Encodes `span` into the open batch, or counts it dropped when
    /// `QUEUE` spans wait.
    pub fn push(&mut self, span: R::Ref<'_>) {
        let e = self.exporter;
        let Some(q) = self.q.as_mut() else {
            return;
        };
        if q.waiting >= QUEUE {
            e.dropped_full.increment(1);
            return;
        }
        let body = &mut q.open.body;
        if body.is_empty() {
            body.resize(e.head_room, 0);
        }
        e.transport.encode(&e.service_name, &span, body);
        q.open.spans += 1;
        q.waiting += 1;
        self.first |= q.waiting == 1;
        if q.open.spans >= e.batch {
            let b = std::mem::take(&mut q.open);
            q.ready.push_back(b);
            self.full = true;
        }
    }
}

impl<R: Record> Drop for Queuing<'_, R> {
    fn drop(&mut self) {
        // Unlocked before the task is woken.
        drop(self.q.take());
        let shared = &self.exporter.shared;
        if self.first {
            shared.first.notify_one();
        }
        if self.full {
            shared.full.notify_one();
        }
    }
}

impl<R: Record> Exporter<R> {
    fn spawn(&self) {
        let task = Task {
            cluster: self.cluster.clone(),
            service_name: self.service_name.clone(),
            timeout: self.timeout,
            transport: self.transport.clone(),
            shared: self.shared.clone(),
            exported_name: self.exported_name,
            dropped_name: self.dropped_name,
        };
        // Only called from a stream, which runs on a runtime.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(task.run());
        }
    }
}

struct Task<R: Record> {
    cluster: Arc<Cluster>,
    service_name: Arc<str>,
    timeout: Duration,
    transport: Arc<dyn BatchSink<R>>,
    shared: Arc<Shared>,
    exported_name: &'static str,
    dropped_name: &'static str,
}

impl<R: Record> Task<R> {
    /// The oldest full batch, else (`partial`) the one being gathered.
    fn take(&self, partial: bool) -> Option<Batch> {
        let mut q = self.shared.lock();
        let b = match q.ready.pop_front() {
            Some(b) => b,
            None if partial && q.open.spans > 0 => {
                // The next batch's buffer starts a quarter above this
                // one's size (batches vary: fewer reallocations).
                let cap = q.open.body.len() + q.open.body.len() / 4;
                std::mem::replace(
                    &mut q.open,
                    Batch {
                        body: Vec::with_capacity(cap),
                        spans: 0,
                    },
                )
            }
            None => return None,
        };
        q.waiting -= b.spans;
        Some(b)
    }

    async fn run(self) {
        let label = self.cluster.name;
        let exported = metrics::counter!(self.exported_name, "cluster" => label);
        let failed =
            metrics::counter!(self.dropped_name, "cluster" => label, "reason" => "export_failed");
        loop {
            let batch = match self.take(false) {
                Some(b) => b,
                None => {
                    let waiting = self.shared.lock().waiting;
                    if waiting == 0 {
                        if self.shared.closed.load(Ordering::Acquire) {
                            break;
                        }
                        self.shared.first.notified().await;
                        continue;
                    }
                    // Let a batch gather for a moment (no wake-up per
                    // span), unless the exporter is gone.
                    if !self.shared.closed.load(Ordering::Acquire) {
                        tokio::select! {
                            _ = tokio::time::sleep(LINGER) => {}
                            _ = self.shared.full.notified() => {}
                        }
                    }
                    match self.take(true) {
                        Some(b) => b,
                        None => continue,
                    }
                }
            };
            let n = batch.spans as u64;
            let r = self
                .transport
                .send(&self.cluster, &self.service_name, batch.body, self.timeout)
                .await;
            match r {
                Ok(()) => exported.increment(n),
                Err(e) => {
                    failed.increment(n);
                    tracing::debug!(cluster = label, error = %e, "export failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::otlp::{Kind, Value, export_request};
    use super::*;

    /// A batch framed in its head room is the gRPC frame of the whole
    /// `ExportTraceServiceRequest`, as the one-shot encoder writes it.
    #[test]
    fn otlp_batch_framed_in_place_matches_export_request() {
        let attrs = [("url.path", Value::Str("/a")), ("n", Value::Int(300))];
        let span = |id: u8| SpanRecord {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            trace_state: None,
            name: "GET /a",
            kind: Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: &attrs,
            peer: None,
            tags: &[],
            error: false,
        };
        let spans: Vec<_> = (1..=40).map(span).collect();
        for service in ["", "bench", &"s".repeat(300)] {
            let t = OtlpGrpc {
                authority: String::new(),
            };
            let room = t.head_room(service);
            let mut body = vec![0; room];
            for s in &spans {
                t.encode(service, s, &mut body);
            }
            let want = export_request(service, &spans);
            let mut framed = vec![0];
            framed.extend_from_slice(&(want.len() as u32).to_be_bytes());
            framed.extend_from_slice(&want);
            assert_eq!(&grpc_framed(body, room, service)[..], &framed[..]);
        }
    }
}
