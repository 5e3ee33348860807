//! Request mirroring (Envoy's `RouteAction.request_mirror_policies`): a
//! copy of a routed request (head and body) is sent to a shadow Cluster,
//! fire-and-forget. The client's stream never waits for the shadow: the
//! copy runs in its own task, its response is read and discarded, and its
//! failures are only counted.
//!
//! The body is teed, not buffered: every frame the main upstream exchange
//! pulls from the client is also handed (a `Bytes` clone, no copy) to each
//! shadow's body. A shadow gets at most `max_body_bytes` (default 1 MiB);
//! past it that mirror is abandoned (its upstream request is aborted, not
//! sent truncated) and counted, while the main request keeps streaming.
//! Memory held for a slow shadow is therefore bounded by that limit.
//!
//! Only routes that configure mirrors pay anything: the forwarding path
//! tests one empty slice otherwise.

use crate::cluster::Cluster;
use crate::config::filters::FractionalPercent;
use crate::error::BuildError;
use crate::forward::{ForwardPolicy, forward};
use crate::network::ConnectionInfo;
use crate::stream::{Body, BodyError, LocalReason, Request, StreamInfo, box_body, empty_body};
use bytes::Bytes;
use http::HeaderValue;
use http::header::HOST;
use http_body::{Body as _, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// One mirror of a route (Envoy's `RouteAction.RequestMirrorPolicy`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirrorPolicyConfig {
    /// The shadow cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Envoy's per-request cluster name from a header: refused (meshgate
    /// resolves a mirror's cluster when the route table is built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_header: Option<String>,
    /// The share of requests mirrored (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<MirrorFraction>,
    /// Envoy's sampling of the shadow's trace span. meshgate starts no
    /// span for a shadow, so only `false` (or unset) can be honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_sampled: Option<bool>,
    /// Keep the Host / `:authority` as is instead of adding `-shadow`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_shadow_host_suffix_append: bool,
    /// meshgate's bound on the mirrored body (default 1 MiB): a longer
    /// body abandons this mirror, never the main request.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

/// Envoy's `RuntimeFractionalPercent` for a mirror. `runtime_key` names an
/// override in Envoy's runtime; meshgate has no runtime layer, so the key
/// is accepted and `default_value` always applies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFraction {
    pub default_value: FractionalPercent,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_key: String,
}

fn default_max_body() -> usize {
    1024 * 1024
}

/// A compiled mirror.
pub struct MirrorPolicy {
    cluster: Arc<Cluster>,
    /// The cluster did not exist when the table was built
    /// (`validate_clusters: false`): counted `no_cluster`.
    pub(crate) missing: bool,
    /// Parts per million mirrored.
    per_million: u32,
    suffix: bool,
    max_body: usize,
}

impl std::fmt::Debug for MirrorPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorPolicy")
            .field("cluster", &self.cluster.name)
            .field("per_million", &self.per_million)
            .finish()
    }
}

impl MirrorPolicy {
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}

/// Compiles `request_mirror_policies` (paths relative to `path`, the
/// route action).
pub(crate) fn build(
    path: &str,
    cfgs: &[RequestMirrorPolicyConfig],
    clusters: &dyn crate::cluster::ClusterResolver,
) -> Result<Box<[MirrorPolicy]>, BuildError> {
    let mut out = Vec::with_capacity(cfgs.len());
    for (i, c) in cfgs.iter().enumerate() {
        let p = format!("{path}.request_mirror_policies[{i}]");
        if c.cluster_header.is_some() {
            return Err(BuildError::new(
                format!("{p}.cluster_header"),
                "not supported: a mirror's cluster is resolved when the route table is built (use cluster)",
            ));
        }
        let Some(name) = c.cluster.as_deref().filter(|n| !n.is_empty()) else {
            return Err(BuildError::new(format!("{p}.cluster"), "required"));
        };
        if c.trace_sampled == Some(true) {
            return Err(BuildError::new(
                format!("{p}.trace_sampled"),
                "true is not supported: meshgate starts no trace span for a shadow request",
            ));
        }
        if c.max_body_bytes == 0 {
            return Err(BuildError::new(
                format!("{p}.max_body_bytes"),
                "must be > 0",
            ));
        }
        out.push(MirrorPolicy {
            cluster: clusters.resolve(&format!("{p}.cluster"), name)?,
            missing: false,
            per_million: c
                .runtime_fraction
                .as_ref()
                .map_or(1_000_000, |f| f.default_value.per_million()),
            suffix: !c.disable_shadow_host_suffix_append,
            max_body: c.max_body_bytes,
        });
    }
    Ok(out.into())
}

/// Result labels of `CLUSTER_MIRROR_RQ_TOTAL`.
const SENT: &str = "sent";
const FAILED: &str = "failed";
const TOO_LARGE: &str = "dropped_body_too_large";
const NO_CLUSTER: &str = "no_cluster";

fn count(cluster: &'static str, result: &'static str) {
    metrics::counter!(crate::metrics::names::CLUSTER_MIRROR_RQ_TOTAL, "cluster" => cluster, "result" => result).increment(1);
}

/// `host` with `-shadow` appended to its host part (before a port).
pub fn shadow_host(host: &str) -> String {
    let (name, port) = match host.rfind(':') {
        // Not inside an IPv6 literal (`[::1]` has its colons before `]`).
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            host.split_at(i)
        }
        _ => (host, ""),
    };
    let mut s = String::with_capacity(host.len() + 7);
    s.push_str(name);
    s.push_str("-shadow");
    s.push_str(port);
    s
}

/// Whether a mirror takes this request (its `runtime_fraction`).
fn sampled(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && rand::random_range(0..1_000_000) < per_million)
}

/// Who settles a mirror's result first: the shadow task (its outcome) or
/// the tee (the body passed the bound).
const PENDING: u8 = 0;
const SETTLED: u8 = 1;

/// Starts the mirrors of `policies` for `req` (the head as it goes to the
/// main upstream) and, when a shadow takes a body, tees `req`'s body.
/// `timeout` bounds each shadow exchange (the route's timeout, as Envoy's).
pub fn start(
    policies: &[MirrorPolicy],
    req: &mut Request,
    info: &StreamInfo,
    timeout: Option<Duration>,
) {
    let no_body = req.body().is_end_stream();
    // The body's length if known: from the body, else from the head (an
    // HTTP/2 or HTTP/3 body may not carry its `content-length` as a hint).
    let known_len = req.body().size_hint().exact().or_else(|| {
        req.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let mut taps: Vec<Tap> = Vec::new();
    for p in policies.iter() {
        if !sampled(p.per_million) {
            continue;
        }
        if p.missing || p.cluster.upstream.is_none() {
            count(p.cluster.name, NO_CLUSTER);
            continue;
        }
        if known_len.is_some_and(|n| n > p.max_body as u64) {
            count(p.cluster.name, TOO_LARGE);
            continue;
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let body = if no_body {
            empty_body()
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            taps.push(Tap {
                tx,
                sent: 0,
                max: p.max_body,
                state: state.clone(),
                cluster: p.cluster.name,
            });
            box_body(Shadow { rx })
        };
        let shadow = copy_head(req, body, p.suffix);
        tokio::spawn(run(
            p.cluster.clone(),
            shadow,
            info.connection.clone(),
            info.protocol,
            timeout,
            state,
        ));
    }
    if !taps.is_empty() {
        let body = std::mem::replace(req.body_mut(), empty_body());
        *req.body_mut() = box_body(Tee {
            inner: body,
            taps,
            ended: false,
            left: known_len,
        });
    }
}

/// The shadow request's head: the main one's, with `-shadow` on its
/// authority unless disabled.
fn copy_head(req: &Request, body: Body, suffix: bool) -> Request {
    let mut r = http::Request::new(body);
    *r.method_mut() = req.method().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    // Codec state (e.g. an RPC frame head) travels with the copy.
    *r.extensions_mut() = req.extensions().clone();
    let mut uri = req.uri().clone();
    if suffix {
        if let Some(a) = uri.authority() {
            let mut parts = uri.clone().into_parts();
            if let Ok(na) = http::uri::Authority::try_from(shadow_host(a.as_str())) {
                parts.authority = Some(na);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    uri = u;
                }
            }
        }
        if let Some(h) = req.headers().get(HOST).and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::try_from(shadow_host(h))
        {
            r.headers_mut().insert(HOST, v);
        }
    }
    *r.uri_mut() = uri;
    r
}

/// One shadow exchange: sent through the cluster's own pool and codec
/// (`forward`), its response body drained and dropped.
async fn run(
    cluster: Arc<Cluster>,
    req: Request,
    conn: Arc<ConnectionInfo>,
    protocol: &'static str,
    timeout: Option<Duration>,
    state: Arc<AtomicU8>,
) {
    let policy = ForwardPolicy {
        timeout,
        ..ForwardPolicy::default()
    };
    let mut info = StreamInfo::new(conn, protocol);
    let exchange = async {
        let resp = forward(&cluster, req, &mut info, &policy, None).await;
        if let Some(reason) = resp.extensions().get::<LocalReason>() {
            tracing::debug!(cluster = %cluster.name, reason = reason.label(), "mirror failed");
            return FAILED;
        }
        let mut body = resp.into_body();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if f.is_err() {
                return FAILED;
            }
        }
        SENT
    };
    // `forward` bounds the time to the response head; this, the body.
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or(FAILED),
        None => exchange.await,
    };
    if state
        .compare_exchange(PENDING, SETTLED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        count(cluster.name, result);
    }
}

type Item = Result<Frame<Bytes>, ()>;

/// The tee's side of one shadow body.
struct Tap {
    tx: mpsc::UnboundedSender<Item>,
    sent: usize,
    max: usize,
    state: Arc<AtomicU8>,
    /// The shadow cluster's name (metric label).
    cluster: &'static str,
}

impl Tap {
    /// Ends this shadow body with an error: its upstream request is
    /// aborted rather than sent short.
    fn abort(&self) {
        let _ = self.tx.send(Err(()));
    }
}

/// The main request body, handing each frame to the taps too.
struct Tee {
    inner: Body,
    taps: Vec<Tap>,
    ended: bool,
    /// Bytes still to come of a body of known length: an upstream codec
    /// stops reading once it has them (an HTTP/2 END_STREAM may never be
    /// polled), and the shadows must still end cleanly then.
    left: Option<u64>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                me.taps.retain_mut(|t| {
                    let copy = if let Some(d) = f.data_ref() {
                        t.sent = t.sent.saturating_add(d.len());
                        if t.sent > t.max {
                            t.abort();
                            if t.state
                                .compare_exchange(
                                    PENDING,
                                    SETTLED,
                                    Ordering::AcqRel,
                                    Ordering::Acquire,
                                )
                                .is_ok()
                            {
                                count(t.cluster, TOO_LARGE);
                            }
                            return false;
                        }
                        Frame::data(d.clone())
                    } else if let Some(tr) = f.trailers_ref() {
                        Frame::trailers(tr.clone())
                    } else {
                        return true;
                    };
                    // A shadow that already ended just stops listening.
                    t.tx.send(Ok(copy)).is_ok()
                });
                if let (Some(left), Some(d)) = (&mut me.left, f.data_ref()) {
                    *left = left.saturating_sub(d.len() as u64);
                    if *left == 0 {
                        me.ended = true;
                        me.taps.clear();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                me.ended = true;
                for t in std::mem::take(&mut me.taps) {
                    t.abort();
                }
            }
            Poll::Ready(None) => {
                me.ended = true;
                // Dropping the senders ends the shadow bodies cleanly.
                me.taps.clear();
            }
            Poll::Pending => {}
        }
        if me.inner.is_end_stream() && !me.ended {
            me.ended = true;
            me.taps.clear();
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    /// The main exchange dropped the body before its end (the upstream
    /// answered early, the client went away): the shadows must not send
    /// what they got as if it were whole.
    fn drop(&mut self) {
        if !self.ended {
            for t in &self.taps {
                t.abort();
            }
        }
    }
}

/// A shadow request's body, fed by the tee.
struct Shadow {
    rx: mpsc::UnboundedReceiver<Item>,
}

#[derive(Debug, thiserror::Error)]
#[error("mirrored request body abandoned")]
struct Abandoned;

impl http_body::Body for Shadow {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(()))) => Poll::Ready(Some(Err(Abandoned.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(shadow_host("example.com"), "example.com-shadow");
        assert_eq!(shadow_host("example.com:8080"), "example.com-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn fraction_bounds() {
        assert!(!sampled(0));
        assert!(sampled(1_000_000));
        let n = (0..10_000).filter(|_| sampled(500_000)).count();
        assert!((4_000..6_000).contains(&n), "{n}");
    }

    #[tokio::test]
    async fn tee_copies_frames_and_abandons_past_the_bound() {
        use http_body_util::BodyExt;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let cluster = "shadow";
        let (itx, irx) = mpsc::unbounded_channel();
        let _ = itx.send(Ok(Frame::data(Bytes::from_static(b"abcd"))));
        let _ = itx.send(Ok(Frame::data(Bytes::from_static(b"efgh"))));
        drop(itx);
        let inner = box_body(Shadow { rx: irx });
        let state = Arc::new(AtomicU8::new(PENDING));
        let tee = Tee {
            inner,
            taps: vec![
                Tap {
                    tx,
                    sent: 0,
                    max: 100,
                    state: state.clone(),
                    cluster,
                },
                Tap {
                    tx: tx2,
                    sent: 0,
                    max: 6,
                    state: Arc::new(AtomicU8::new(PENDING)),
                    cluster,
                },
            ],
            ended: false,
            left: None,
        };
        let all = tee.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(all.as_deref(), Some(&b"abcdefgh"[..]));
        let mut got = Vec::new();
        while let Some(Ok(f)) = rx.recv().await {
            got.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or_default());
        }
        assert_eq!(got, b"abcdefgh");
        assert!(matches!(rx2.recv().await, Some(Ok(_))));
        assert!(matches!(rx2.recv().await, Some(Err(()))));
        assert!(rx2.recv().await.is_none());
    }
}
