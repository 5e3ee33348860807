//! The `compressor` filter's gzip body at level 6 (Envoy's
//! `DEFAULT_COMPRESSION`) over 1 MB of HTML-like text arriving in 16 KiB
//! upstream chunks (one sync flush per chunk, as the filter streams):
//! throughput in MB/s of input; the compression ratio is printed once.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate_core::stream::{Body, BodyError, box_body};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

const CHUNK: usize = 16 * 1024;

/// 1 MB of text with the redundancy of real pages (repeated markup,
/// varying numbers and words).
fn text() -> Vec<u8> {
    let words = [
        "proxy", "stream", "filter", "cluster", "endpoint", "listener", "route", "header",
    ];
    let mut out = String::new();
    let mut i = 0usize;
    while out.len() < 1 << 20 {
        out.push_str(&format!(
            "<li class=\"item\" data-id=\"{i}\"><a href=\"/{w}/{i}\">{w} number {i}</a> {v}</li>\n",
            w = words[i % words.len()],
            v = words[(i * 7) % words.len()],
        ));
        i += 1;
    }
    out.truncate(1 << 20);
    out.into_bytes()
}

struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }
}

fn body(data: &Bytes) -> Body {
    let chunks = (0..data.len())
        .step_by(CHUNK)
        .map(|o| data.slice(o..(o + CHUNK).min(data.len())))
        .collect();
    box_body(Chunks(chunks))
}

/// Drains a body, returning its length.
async fn drain(mut b: Body) -> usize {
    use http_body_util::BodyExt;
    let mut n = 0;
    while let Some(Ok(f)) = b.frame().await {
        if let Ok(d) = f.into_data() {
            n += d.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let data = Bytes::from(text());
    let out = rt.block_on(drain(meshgate_filters::compressor::gzip_body(
        body(&data),
        6,
    )));
    println!(
        "gzip level 6, 1 MB in 16 KiB chunks: {} -> {} bytes, ratio {:.2}",
        data.len(),
        out,
        data.len() as f64 / out as f64
    );
    let mut g = c.benchmark_group("compressor");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("gzip_level6_1MB", |b| {
        b.iter(|| {
            rt.block_on(drain(meshgate_filters::compressor::gzip_body(
                body(&data),
                6,
            )))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
