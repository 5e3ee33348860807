//! The HTTP/1.1 downstream path in process: the `http1` codec (hyper's
//! parser and encoder) decoding pipelined requests from an in-memory
//! duplex stream into stream-layer `Request`s, a handler answering a
//! 13-byte body, and the response encoded back. No sockets, so the figure
//! is codec + stream-construction cost per request.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate_core::codec::{CodecFactory, ResponseFuture, StreamHandler};
use meshgate_core::network::{Connection, ConnectionInfo, DownstreamIo};
use meshgate_core::stream::{Request, StreamInfo, full_body};
use meshgate_protocols::http::Http1Codec;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Hello;

impl StreamHandler for Hello {
    fn handle(&self, _req: Request, _info: StreamInfo) -> ResponseFuture<'_> {
        Box::pin(async { http::Response::new(full_body(&b"hello world!\n"[..])) })
    }
}

const BATCH: usize = 64;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Http1Codec.server(&serde_json::Value::Null).unwrap();
    let req = b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Request-Id: 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\r\n\r\n";
    let batch: Vec<u8> = req
        .iter()
        .copied()
        .cycle()
        .take(req.len() * BATCH)
        .collect();
    let mut g = c.benchmark_group("http1_codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("pipelined_get_64", |b| {
        b.to_async(&rt).iter(|| {
            let server = server.clone();
            let batch = batch.clone();
            async move {
                let (client, srv) = tokio::io::duplex(256 * 1024);
                let conn = Connection {
                    io: DownstreamIo::Boxed(Box::new(srv)),
                    preface: bytes::Bytes::new(),
                    info: ConnectionInfo {
                        id: 1,
                        listener: "bench".into(),
                        peer_addr: "127.0.0.1:1".parse().unwrap(),
                        local_addr: "127.0.0.1:2".parse().unwrap(),
                        server_name: None,
                        filter_chain: None,
                        tls: None,
                        retire: Default::default(),
                        proxy_protocol: None,
                    },
                    drain: Default::default(),
                };
                let task = tokio::spawn(server.serve(conn, Arc::new(Hello), Default::default()));
                let (mut rd, mut wr) = tokio::io::split(client);
                wr.write_all(&batch).await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = 0;
                let mut carry = Vec::new();
                while seen < BATCH {
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "server closed early");
                    carry.extend_from_slice(&buf[..n]);
                    seen = carry.windows(13).filter(|w| w == b"hello world!\n").count();
                }
                drop(wr);
                drop(rd);
                let _ = task.await;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
