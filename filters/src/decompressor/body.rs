//! The decoding body (gzip, brotli or zstd) of the `decompressor` filter,
//! request or response. Streaming with bounded memory: encoded input is fed
//! to the decoder in small slices and a decoded chunk is passed on as soon
//! as it reaches `chunk_size`, so one body frame never holds more than
//! `chunk_size` plus one feed's output (at most `SLICE` times the ratio,
//! or one zstd block, 128 KiB, which zstd decodes whole); the rest of the
//! input waits for the next poll. The stream's decoded total may not pass
//! `max_inflate_ratio` times the encoded bytes seen: a decompression bomb
//! is cut off (the body ends in an error, the stream is aborted) and
//! counted, never inflated.

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use meshgate_core::metrics::names;
use meshgate_core::stream::{Body, BodyError};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Encoded bytes fed to the decoder at a time: bounds the output one feed
/// can produce to `SLICE * max_inflate_ratio`.
const SLICE: usize = 256;

/// Where the decoder writes: counts the stream's decoded bytes and refuses
/// to take more than the inflate bound.
pub(super) struct Sink {
    buf: Vec<u8>,
    total: u64,
    limit: u64,
    over: bool,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.total + data.len() as u64 > self.limit {
            self.over = true;
            return Err(std::io::Error::other("max_inflate_ratio"));
        }
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            total: 0,
            limit: 0,
            over: false,
        }
    }
}

/// A streaming decoder writing into a `Sink`.
pub(super) enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Sink>>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

impl Decoder {
    pub(super) fn gzip() -> Self {
        Self::Gzip(Box::new(flate2::write::GzDecoder::new(Sink::new())))
    }

    pub(super) fn brotli() -> Self {
        Self::Brotli(Box::new(brotli::DecompressorWriter::new(Sink::new(), 4096)))
    }

    pub(super) fn zstd() -> std::io::Result<Self> {
        Ok(Self::Zstd(zstd::stream::write::Decoder::new(Sink::new())?))
    }

    fn sink(&mut self) -> &mut Sink {
        match self {
            Self::Gzip(d) => d.get_mut(),
            Self::Brotli(d) => d.get_mut(),
            Self::Zstd(d) => d.get_mut(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Gzip(d) => {
                d.write_all(data)?;
                d.flush()
            }
            Self::Brotli(d) => {
                d.write_all(data)?;
                d.flush()
            }
            Self::Zstd(d) => {
                d.write_all(data)?;
                d.flush()
            }
        }
    }

    /// Ends the stream; an encoded stream cut short is an error.
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Self::Gzip(d) => d.try_finish(),
            Self::Brotli(d) => d.close(),
            Self::Zstd(d) => d.do_finish(),
        }
    }
}

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("decompressor: body over max_inflate_ratio (decompression bomb)")]
    Bomb,
    #[error("decompressor: invalid encoded body: {0}")]
    Invalid(std::io::Error),
}

pub(super) struct DecodedBody {
    inner: Body,
    dec: Option<Decoder>,
    /// Encoded input not fed yet (the output bound stopped the feed).
    pending: Bytes,
    trailers: Option<http::HeaderMap>,
    ended: bool,
    chunk_size: usize,
    ratio: u64,
    bytes_in: u64,
    library: &'static str,
    direction: &'static str,
}

impl DecodedBody {
    pub(super) fn new(
        inner: Body,
        dec: Decoder,
        chunk_size: usize,
        ratio: u32,
        library: &'static str,
        direction: &'static str,
    ) -> Self {
        Self {
            inner,
            dec: Some(dec),
            pending: Bytes::new(),
            trailers: None,
            ended: false,
            chunk_size,
            ratio: u64::from(ratio),
            bytes_in: 0,
            library,
            direction,
        }
    }

    fn refuse(&mut self, e: DecodeError) -> BodyError {
        let reason = match e {
            DecodeError::Bomb => "inflate_ratio",
            DecodeError::Invalid(_) => "invalid",
        };
        metrics::counter!(names::DECOMPRESSOR_REFUSED_TOTAL, "library" => self.library, "direction" => self.direction, "reason" => reason).increment(1);
        self.dec = None;
        self.pending = Bytes::new();
        e.into()
    }

    fn io_error(&mut self, e: std::io::Error) -> BodyError {
        let bomb = self.dec.as_mut().is_some_and(|d| d.sink().over);
        self.refuse(if bomb {
            DecodeError::Bomb
        } else {
            DecodeError::Invalid(e)
        })
    }

    /// Feeds pending input until a chunk's worth of output is ready or the
    /// input is used up; returns the decoded bytes (maybe empty).
    fn drain(&mut self) -> Result<Bytes, BodyError> {
        let Some(dec) = self.dec.as_mut() else {
            return Ok(Bytes::new());
        };
        let mut res = Ok(());
        while !self.pending.is_empty() && dec.sink().buf.len() < self.chunk_size {
            let n = self.pending.len().min(SLICE);
            self.bytes_in += n as u64;
            dec.sink().limit = self.bytes_in.saturating_mul(self.ratio);
            res = dec.feed(&self.pending[..n]);
            self.pending.advance(n);
            if res.is_err() {
                break;
            }
        }
        if let Err(e) = res {
            return Err(self.io_error(e));
        }
        Ok(Bytes::from(std::mem::take(&mut dec.sink().buf)))
    }

    /// The end of the encoded stream: the last decoded bytes; counts the
    /// stream once.
    fn finish(&mut self) -> Result<Bytes, BodyError> {
        let Some(mut dec) = self.dec.take() else {
            return Ok(Bytes::new());
        };
        if let Err(e) = dec.finish() {
            self.dec = Some(dec);
            return Err(self.io_error(e));
        }
        let out = Bytes::from(std::mem::take(&mut dec.sink().buf));
        let total = dec.sink().total;
        metrics::counter!(names::DECOMPRESSOR_COMPRESSED_BYTES_TOTAL, "library" => self.library, "direction" => self.direction)
            .increment(self.bytes_in);
        metrics::counter!(names::DECOMPRESSOR_DECOMPRESSED_BYTES_TOTAL, "library" => self.library, "direction" => self.direction)
            .increment(total);
        Ok(out)
    }
}

impl http_body::Body for DecodedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let out = this.drain()?;
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                continue;
            }
            if this.ended {
                if this.dec.is_some() {
                    let out = this.finish()?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if this.dec.is_none() {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                            this.ended = true;
                        }
                    }
                },
                Some(Err(e)) => {
                    this.dec = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.dec.is_none() && self.trailers.is_none() && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    struct Frames(VecDeque<Result<Frame<Bytes>, BodyError>>);

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

    fn body(data: Vec<u8>, split: usize) -> Body {
        let v: VecDeque<_> = data
            .chunks(split)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        meshgate_core::stream::box_body(Frames(v))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn text() -> Vec<u8> {
        (0..3000)
            .map(|i| format!("line {i} of some text\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[tokio::test]
    async fn decodes_every_library_in_bounded_chunks() {
        let plain = text();
        let mut br = Vec::new();
        brotli::BrotliCompress(
            &mut &plain[..],
            &mut br,
            &brotli::enc::BrotliEncoderParams::default(),
        )
        .unwrap();
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        for (name, enc, dec) in [
            ("gzip", gzip(&plain), Decoder::gzip()),
            ("brotli", br, Decoder::brotli()),
            ("zstd", zs, Decoder::zstd().unwrap()),
        ] {
            let mut b = DecodedBody::new(body(enc, 1000), dec, 4096, 100, name, "request");
            let mut out = Vec::new();
            while let Some(f) = b.frame().await {
                let d = f.unwrap().into_data().unwrap();
                // One frame: at most chunk_size plus one feed's output.
                assert!(
                    d.len() <= 4096 + (SLICE * 100).max(128 << 10),
                    "{name}: {}",
                    d.len()
                );
                out.extend_from_slice(&d);
            }
            assert_eq!(out, plain, "{name}");
        }
    }

    #[tokio::test]
    async fn a_bomb_is_cut_off_and_bad_data_is_an_error() {
        // 10 MB of zeros gzip to ~10 KB: a 1000:1 ratio.
        let bomb = gzip(&vec![0u8; 10 << 20]);
        let mut b = DecodedBody::new(
            body(bomb, 64 * 1024),
            Decoder::gzip(),
            4096,
            100,
            "gzip",
            "request",
        );
        let mut seen = 0usize;
        let err = loop {
            match b.frame().await {
                Some(Ok(f)) => seen += f.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("the bomb was inflated whole"),
            }
        };
        assert!(
            err.downcast_ref::<DecodeError>()
                .is_some_and(|e| matches!(e, DecodeError::Bomb)),
            "{err}"
        );
        assert!(seen < 2 << 20, "{seen}");
        let mut b = DecodedBody::new(
            body(b"not gzip at all".to_vec(), 5),
            Decoder::gzip(),
            4096,
            100,
            "gzip",
            "request",
        );
        let r = b.frame().await.unwrap();
        assert!(r.is_err());
        // A truncated stream is an error too.
        let mut g = gzip(&text());
        g.truncate(g.len() / 2);
        let b = DecodedBody::new(body(g, 100), Decoder::gzip(), 4096, 100, "gzip", "request");
        assert!(b.collect().await.is_err());
    }
}
