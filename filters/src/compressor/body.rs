//! The encoding response body (gzip, brotli or zstd): each upstream chunk
//! is compressed and flushed (gzip sync flush, brotli
//! `BROTLI_OPERATION_FLUSH`, zstd `ZSTD_e_flush`) as it passes, so nothing
//! is buffered beyond one chunk and the encoder's window; the end of the
//! stream (gzip trailer, brotli last meta-block, zstd epilogue/checksum)
//! goes out at the end of the body, before any trailers.

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http_body::{Frame, SizeHint};
use meshgate_core::metrics::names;
use meshgate_core::stream::{Body, BodyError};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// A streaming encoder writing into a `Vec` that is drained per chunk.
pub(super) enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    /// Boxed: the brotli state is large and moved once.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub(super) fn gzip(level: u32) -> Self {
        Self::Gzip(GzEncoder::new(Vec::new(), Compression::new(level)))
    }

    fn write_flush(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Gzip(e) => {
                e.write_all(data)?;
                e.flush()
            }
            Self::Brotli(e) => {
                e.write_all(data)?;
                e.flush()
            }
            Self::Zstd(e) => {
                e.write_all(data)?;
                e.flush()
            }
        }
    }

    fn out(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Brotli(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Brotli(mut e) => {
                // `into_inner` finishes the stream but drops an error:
                // flush first so a failing writer is seen here.
                e.flush()?;
                Ok(e.into_inner())
            }
            Self::Zstd(e) => e.finish(),
        }
    }
}

pub(super) struct EncodedBody {
    inner: Body,
    enc: Option<Encoder>,
    trailers: Option<http::HeaderMap>,
    library: &'static str,
    bytes_in: u64,
    bytes_out: u64,
}

impl EncodedBody {
    pub(super) fn new(inner: Body, enc: Encoder, library: &'static str) -> Self {
        Self {
            inner,
            enc: Some(enc),
            trailers: None,
            library,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Compresses one chunk and returns what the encoder produced.
    fn push(&mut self, data: &[u8]) -> Result<Bytes, BodyError> {
        let Some(enc) = self.enc.as_mut() else {
            return Ok(Bytes::new());
        };
        self.bytes_in += data.len() as u64;
        enc.write_flush(data)?;
        Ok(self.take())
    }

    fn take(&mut self) -> Bytes {
        let out = match self.enc.as_mut() {
            Some(e) => std::mem::take(e.out()),
            None => Vec::new(),
        };
        self.bytes_out += out.len() as u64;
        Bytes::from(out)
    }

    /// Ends the gzip member; counts the stream's bytes once.
    fn finish(&mut self) -> Result<Bytes, BodyError> {
        let Some(enc) = self.enc.take() else {
            return Ok(Bytes::new());
        };
        let out = enc.finish()?;
        self.bytes_out += out.len() as u64;
        metrics::counter!(names::COMPRESSOR_UNCOMPRESSED_BYTES_TOTAL, "library" => self.library)
            .increment(self.bytes_in);
        metrics::counter!(names::COMPRESSOR_COMPRESSED_BYTES_TOTAL, "library" => self.library)
            .increment(self.bytes_out);
        Ok(Bytes::from(out))
    }
}

impl http_body::Body for EncodedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if this.enc.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.push(&data)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                            return Poll::Ready(Some(this.finish().map(Frame::data)));
                        }
                    }
                },
                Some(Err(e)) => {
                    // The upstream body failed: the stream is cut, no
                    // gzip trailer follows (the client sees a truncated
                    // member, not a valid short one).
                    this.enc = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => return Poll::Ready(Some(this.finish().map(Frame::data))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    #[tokio::test]
    async fn streams_a_valid_gzip_member_with_trailers() {
        let chunks: Vec<Result<Frame<Bytes>, BodyError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello hello hello "))),
            Ok(Frame::data(Bytes::from_static(b"world world world"))),
            Ok(Frame::trailers({
                let mut h = http::HeaderMap::new();
                h.insert("x-t", http::HeaderValue::from_static("1"));
                h
            })),
        ];
        let inner = meshgate_core::stream::box_body(Frames(chunks.into()));
        let body = EncodedBody::new(inner, Encoder::gzip(6), "gzip");
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        let mut out = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello hello hello world world world");
        assert_eq!(trailers.unwrap()["x-t"], "1");
    }

    fn frames(chunks: &[&'static [u8]]) -> Body {
        let v: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        meshgate_core::stream::box_body(Frames(v.into()))
    }

    /// Each upstream chunk comes out as its own decodable compressed
    /// chunk (flushed, not held back), and the whole is a valid stream.
    #[tokio::test]
    async fn brotli_and_zstd_stream_chunk_by_chunk() {
        let chunk: &'static [u8] = b"{\"k\": \"value value value value\"}\n";
        let encoders = [
            (
                "brotli",
                Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    4096,
                    5,
                    18,
                ))),
            ),
            (
                "zstd",
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap()),
            ),
        ];
        for (name, enc) in encoders {
            let mut body = EncodedBody::new(frames(&[chunk, chunk, chunk]), enc, name);
            let mut parts = Vec::new();
            while let Some(f) = body.frame().await {
                parts.push(f.unwrap().into_data().unwrap());
            }
            // Three flushed chunks and the end of the stream.
            assert_eq!(parts.len(), 4, "{name}");
            let first = parts[0].clone();
            let all: Vec<u8> = parts.concat();
            let mut out = Vec::new();
            if name == "brotli" {
                // The first flushed chunk alone already decodes to chunk 1.
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                d.write_all(&first).unwrap();
                d.flush().unwrap();
                assert_eq!(d.get_ref().as_slice(), chunk, "{name}");
                brotli::BrotliDecompress(&mut &all[..], &mut out).unwrap();
            } else {
                let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                d.write_all(&first).unwrap();
                d.flush().unwrap();
                assert_eq!(d.get_ref().as_slice(), chunk, "{name}");
                out = zstd::decode_all(&all[..]).unwrap();
            }
            assert_eq!(out, chunk.repeat(3), "{name}");
        }
    }

    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, BodyError>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }
    }
}
