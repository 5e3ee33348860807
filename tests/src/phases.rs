//! Helpers of the body/trailer phase tests (tests/tests/filter_phases.rs):
//! the example filter's binary (examples/stream-filter) and an upstream
//! that records exactly what reached it, head, body and trailers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// `meshgate-body-digest` (examples/stream-filter): `$MESHGATE_EXAMPLE_FILTER_BIN`,
/// else the workspace's debug build (`cargo nextest run --workspace`
/// builds it), built once here if missing.
pub fn example_filter_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MESHGATE_EXAMPLE_FILTER_BIN") {
            return PathBuf::from(p);
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| crate::workspace().join("target"));
        let p = target.join("debug").join("meshgate-body-digest");
        if !p.exists() {
            let st = Command::new(env!("CARGO"))
                .args(["build", "-p", "meshgate-example-filter"])
                .current_dir(crate::workspace())
                .status()
                .expect("cargo build");
            assert!(st.success(), "building meshgate-body-digest failed");
        }
        p
    })
    .clone()
}

/// One request as the upstream got it, complete (body and trailers read
/// to the end without error).
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

/// An upstream (HTTP/1.1 or h2c) that records every complete request and
/// answers `200` with the request body echoed (and its `x-echo-*` headers); requests whose body broke
/// off are counted in `broken` and never recorded.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub broken: Arc<Mutex<u32>>,
}

impl Recorder {
    pub fn start(h2: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let broken = Arc::new(Mutex::new(0));
        let (s2, b2) = (seen.clone(), broken.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, broken) = (s2.clone(), b2.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (seen, broken) = (seen.clone(), broken.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let resp = match body.collect().await {
                                    Ok(c) => {
                                        let trailers = c.trailers().cloned();
                                        let body = c.to_bytes();
                                        let mut resp = Response::new(Full::new(body.clone()));
                                        for (k, v) in &parts.headers {
                                            if k.as_str().starts_with("x-echo-") {
                                                resp.headers_mut().insert(k.clone(), v.clone());
                                            }
                                        }
                                        seen.lock().unwrap().push(Seen {
                                            path: parts.uri.path().to_string(),
                                            headers: parts.headers,
                                            body,
                                            trailers,
                                        });
                                        resp
                                    }
                                    Err(_) => {
                                        *broken.lock().unwrap() += 1;
                                        Response::new(Full::new(Bytes::new()))
                                    }
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let io = TokioIo::new(s);
                        let _ = if h2 {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await
                        } else {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                        };
                    });
                }
            });
        });
        Self { addr, seen, broken }
    }

    /// The complete requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
