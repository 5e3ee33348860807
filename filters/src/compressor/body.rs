//! The gzip-encoding response body: each upstream chunk is compressed and
//! flushed (sync flush) as it passes, so nothing is buffered beyond one
//! chunk; the gzip trailer (CRC, size) goes out at the end of the body,
//! before any trailers.

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http_body::{Frame, SizeHint};
use meshgate_core::metrics::names;
use meshgate_core::stream::{Body, BodyError};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pub(super) struct GzipBody {
    inner: Body,
    enc: Option<GzEncoder<Vec<u8>>>,
    trailers: Option<http::HeaderMap>,
    library: &'static str,
    bytes_in: u64,
    bytes_out: u64,
}

impl GzipBody {
    pub(super) fn new(inner: Body, level: u32, library: &'static str) -> Self {
        Self {
            inner,
            enc: Some(GzEncoder::new(Vec::new(), Compression::new(level))),
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
        enc.write_all(data)?;
        enc.flush()?;
        Ok(self.take())
    }

    fn take(&mut self) -> Bytes {
        let out = match self.enc.as_mut() {
            Some(e) => std::mem::take(e.get_mut()),
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

impl http_body::Body for GzipBody {
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
        let body = GzipBody::new(inner, 6, "gzip");
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
