//! The admin server: `/ready`, `/stats/prometheus`, `/config_dump` and
//! `/listeners` (each listener's bound address, for port 0) over
//! HTTP/1.1 (hyper). It reads the live snapshot through arc-swap like the
//! data path does, and is never on the data path itself.

use crate::metrics::MetricsHandle;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin handlers read.
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub prometheus: MetricsHandle,
    /// The running listeners and the addresses their sockets are bound
    /// to, published by the server after each start or reload.
    pub listeners: Arc<ArcSwap<Vec<BoundListener>>>,
    /// Set when the server starts draining: `/ready` answers 503.
    pub draining: AtomicBool,
}

/// A running listener as `/listeners` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundListener {
    pub name: String,
    /// As configured, e.g. `127.0.0.1:0`.
    pub address: String,
    /// A QUIC (UDP) listener; otherwise TCP.
    pub quic: bool,
    /// The bound socket addresses, e.g. `127.0.0.1:41234`.
    pub bound: Vec<String>,
}

/// Serves admin requests until `stop` is cancelled.
/// Out of descriptors, the admin gives one of its reserved ones back and
/// accepts at once (`crate::fds`), so that it stays reachable.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    crate::fds::refill_reserve();
    let mut failures = 0u32;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => {
                    failures = 0;
                    a
                }
                Err(e) => {
                    let reason = crate::fds::exhaustion(&e);
                    metrics::counter!(crate::metrics::names::ADMIN_ACCEPT_ERROR_TOTAL, "reason" => reason.unwrap_or("other")).increment(1);
                    if reason.is_some() && crate::fds::release_one() {
                        continue;
                    }
                    if failures == 0 {
                        tracing::warn!(error = %e, "admin accept failed");
                    }
                    let wait = crate::fds::accept_backoff(failures);
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
            crate::fds::refill_reserve();
        });
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/ready" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            } else {
                text(StatusCode::OK, "text/plain", "LIVE\n")
            }
        }
        "/stats/prometheus" | "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.prometheus.render(),
        ),
        "/config_dump" => {
            let snap = state.snapshot.load();
            let body = serde_json::to_vec_pretty(&snap.dump()).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        "/clusters" => {
            let snap = state.snapshot.load();
            if req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "format=json"))
            {
                let body =
                    serde_json::to_vec_pretty(&crate::admin_clusters::json(snap.clusters.iter()))
                        .unwrap_or_default();
                text(StatusCode::OK, "application/json", body)
            } else {
                text(
                    StatusCode::OK,
                    "text/plain",
                    crate::admin_clusters::text(snap.clusters.iter()),
                )
            }
        }
        "/listeners" => {
            let body = serde_json::to_vec_pretty(&**state.listeners.load()).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        "/overload" => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&crate::overload::state_json()).unwrap_or_default(),
        ),
        "/" => text(
            StatusCode::OK,
            "text/plain",
            "meshgate admin\n  /ready\n  /stats/prometheus\n  /config_dump\n  /listeners\n  /clusters\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
