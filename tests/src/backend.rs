//! A real HTTP backend for the end-to-end tests: a hyper server (HTTP/1.1
//! or h2c) on a loopback ephemeral port, on its own runtime thread. It
//! answers in ways the tests can check: it echoes what it received, fails
//! on demand, stalls, streams.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Which protocol the backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2c,
    /// h2c advertising SETTINGS_MAX_CONCURRENT_STREAMS of this value.
    H2cMaxStreams(u32),
    /// HTTP/1.1 or h2c on the same port, told apart by the h2 preface.
    Auto,
}

/// A running backend.
pub struct HttpBackend {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicU32>,
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).boxed()
}

async fn handle(
    name: &'static str,
    proto: Proto,
    hits: Arc<AtomicU32>,
    fails: Arc<AtomicU32>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if path.contains("/fail-once") && fails.fetch_add(1, Ordering::Relaxed) == 0 {
        return Ok(Response::builder()
            .status(503)
            .body(full("failing once\n"))
            .unwrap());
    }
    if let Some((_, code)) = path.split_once("/status/") {
        let code: u16 = code.split('/').next().unwrap_or("").parse().unwrap_or(500);
        return Ok(Response::builder()
            .status(code)
            .body(full(format!("status {code}\n")))
            .unwrap());
    }
    // The three pauses below are time on purpose: an upstream that is slow
    // (a request in flight across a drain or past a timeout), one whose
    // answers overlap (multiplexing under h2load), one that streams.
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.contains("/delay") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if path.contains("/stream") {
        // Five chunks 100ms apart, then trailers.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..5 {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!("chunk{i}\n")))))
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut t = http::HeaderMap::new();
            t.insert("x-trailer", "done".parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    let text = format!(
        "backend={name}\nproto={proto:?}\nversion={:?}\nmethod={}\nuri={}\nhost={}\nauthority={}\nx-forwarded-for={}\nx-forwarded-proto={}\nx-forwarded-client-cert={}\nx-request-id={}\nconnection={}\nbody-bytes={}\nbody-xxh3={:x}\n",
        parts.version,
        parts.method,
        parts.uri,
        header("host"),
        parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("x-forwarded-client-cert"),
        header("x-request-id"),
        header("connection"),
        body.len(),
        xxhash_rust::xxh3::xxh3_64(&body),
    );
    let mut resp = Response::builder()
        .header("x-backend", name)
        .header("content-type", "text/plain");
    for (k, v) in parts.headers.iter() {
        if k.as_str().starts_with("x-echo-") {
            resp = resp.header(k, v);
        }
    }
    Ok(resp.body(full(text)).unwrap())
}

impl HttpBackend {
    /// Starts a backend named `name` (reported in `x-backend` and the body).
    pub fn start(name: &'static str, proto: Proto) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let fails = Arc::new(AtomicU32::new(0));
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let (h, fails) = (h.clone(), fails.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            handle(name, proto, h.clone(), fails.clone(), req)
                        });
                        let io = TokioIo::new(s);
                        let _ = match proto {
                            Proto::Http1 => {
                                hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, svc)
                                    .await
                            }
                            Proto::H2c => {
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(io, svc)
                                    .await
                            }
                            Proto::H2cMaxStreams(n) => {
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .max_concurrent_streams(n)
                                    .serve_connection(io, svc)
                                    .await
                            }
                            Proto::Auto => {
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    TokioExecutor::new(),
                                )
                                .serve_connection(io, svc)
                                .await;
                                Ok(())
                            }
                        };
                    });
                }
            });
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::Relaxed)
    }
}
