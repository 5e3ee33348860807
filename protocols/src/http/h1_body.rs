//! HTTP/1.1 message-body decoding (RFC 9112 sections 6 and 7), shared by
//! the downstream server (request bodies) and the upstream client
//! (response bodies): Content-Length, chunked with trailers, or until the
//! peer closes. It works on the connection's read buffer and hands out
//! slices of it (no copy); every line it waits for is bounded.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The most bytes of one chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes of the trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer fields.
const MAX_TRAILER_FIELDS: usize = 64;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// One step of decoding.
#[derive(Debug)]
pub(super) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended; whatever follows in the buffer is the next message.
    End,
    /// The buffer holds no whole unit: read more.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// A body decoder: feed it the read buffer until it says `End`.
#[derive(Debug, Clone)]
pub(super) struct Decoder {
    state: State,
}

impl Decoder {
    pub(super) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes left when the length is known (Content-Length framing).
    pub(super) fn exact_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes the next unit from `buf`; `eof` says the peer closed (so
    /// `NeedMore` is impossible: a close-delimited body ends, any other
    /// one is truncated).
    pub(super) fn decode(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Decoded, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) => {
                    if buf.is_empty() {
                        return more(eof);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = if left == n as u64 {
                        State::Done
                    } else {
                        State::Length(left - n as u64)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if !buf.is_empty() {
                        return Ok(Decoded::Data(buf.split().freeze()));
                    }
                    if eof {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::NeedMore);
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return more(eof);
                    };
                    self.state = match chunk_size(&line)? {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkData(left) => {
                    if buf.is_empty() {
                        return more(eof);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = if left == n as u64 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - n as u64)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return more(eof);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            if has_bare_lf(&buf[..len]) {
                                return Err("bare LF in trailers");
                            }
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let (Ok(k), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) else {
                                    return Err("bad trailer field");
                                };
                                map.append(k, v);
                            }
                            (len, map)
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > MAX_TRAILERS {
                                return Err("trailers too large");
                            }
                            return more(eof);
                        }
                        Err(_) => return Err("bad trailers"),
                    };
                    buf.advance(len);
                    self.state = State::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }
}

fn more(eof: bool) -> Result<Decoded, &'static str> {
    if eof {
        Err("peer closed mid-body")
    } else {
        Ok(Decoded::NeedMore)
    }
}

/// A CRLF-terminated line at the start of `buf`, without the CRLF. A bare
/// LF is refused (it is how chunk-framing smuggling starts).
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("bare LF in chunked framing");
    }
    let line = buf.split_to(lf - 1).freeze();
    buf.advance(2);
    Ok(Some(line))
}

/// `chunk-size [ BWS ; chunk-ext ]`: 1 to 16 hex digits, nothing else
/// before the extensions.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err("bad chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err("bad chunk size");
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "bad chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "bad chunk size")
}

/// Whether `head` has a line ending in LF without CR (RFC 9112 section 2.2
/// lets a recipient accept it; a proxy that does and forwards to one that
/// does not is a smuggling vector, so meshgate refuses it).
pub(super) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// A parsed field: its name, and where its value lies in the head.
pub(super) type Field = (HeaderName, usize, usize);

/// A head's fields, on the stack for the usual handful (no allocation per
/// request).
pub(super) type Fields = smallvec::SmallVec<[Field; 16]>;

/// A header field name from the wire. The names most messages carry are
/// matched as spelled on the wire (in the usual two cases) before the
/// general parse: `HeaderName::from_bytes` lower-cases and classifies every
/// name, a visible share of a proxied HTTP/1.1 request in the instruction
/// profile (figures in benches/RESULTS.md).
pub(super) fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header;
    Ok(match raw {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        _ => HeaderName::from_bytes(raw)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_match_the_general_parse() {
        for raw in [
            "Host",
            "host",
            "Date",
            "Server",
            "Accept",
            "Connection",
            "Content-Type",
            "Content-Length",
            "User-Agent",
            "Transfer-Encoding",
            "Last-Modified",
            "ETag",
            "etag",
            "Accept-Ranges",
            "Cache-Control",
            "Accept-Encoding",
            "accept-encoding",
            "X-Custom",
            "HOST",
            "content-LENGTH",
        ] {
            assert_eq!(
                header_name(raw.as_bytes()).unwrap(),
                HeaderName::from_bytes(raw.as_bytes()).unwrap(),
                "{raw}"
            );
        }
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }

    fn all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        // One byte at a time: every state must cope with partial input.
        for (i, b) in input.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            loop {
                match d.decode(&mut buf, false)? {
                    Decoded::Data(x) => out.extend_from_slice(&x),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => {
                        assert!(buf.is_empty() && i + 1 == input.len(), "ended early");
                        return Ok((out, trailers));
                    }
                    Decoded::NeedMore => break,
                }
            }
        }
        match d.decode(&mut buf, true)? {
            Decoded::End => Ok((out, trailers)),
            Decoded::Data(x) => {
                out.extend_from_slice(&x);
                Ok((out, trailers))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunked_with_trailers() {
        let (body, t) = all(
            Framing::Chunked,
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(t.unwrap()["grpc-status"], "0");
        assert_eq!(all(Framing::Chunked, b"0\r\n\r\n").unwrap().0, b"");
    }

    #[test]
    fn length_and_close() {
        assert_eq!(all(Framing::Length(3), b"abc").unwrap().0, b"abc");
        assert_eq!(all(Framing::UntilClose, b"abcdef").unwrap().0, b"abcdef");
        assert!(all(Framing::Length(4), b"abc").is_err());
    }

    #[test]
    fn hostile_chunk_framing_is_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"0\r\nx: y\n\r\n",
        ] {
            assert!(
                all(Framing::Chunked, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert!(all(Framing::Chunked, &long).is_err());
    }

    #[test]
    fn bare_lf() {
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: x\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
}
