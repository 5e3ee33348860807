//! TLS ClientHello inspection for filter-chain matching: reads the first
//! bytes of a connection and extracts the SNI and the offered ALPN protocols
//! with rustls' `Acceptor` (no hand-written TLS parser). The bytes read are handed on as the
//! connection's preface, so a passthrough or a TLS terminator sees them.

use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most we read while looking for a complete ClientHello.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What a ClientHello offers that filter chains match on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// SNI, lower-cased.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspection {
    /// Not TLS, or a ClientHello that does not parse.
    NotTls,
    /// A complete ClientHello.
    ClientHello(HelloInfo),
    /// Need more bytes.
    Incomplete,
}

/// Inspects a buffer that starts at the connection's first byte.
pub fn inspect(buf: &[u8]) -> Inspection {
    if buf.is_empty() {
        return Inspection::Incomplete;
    }
    if buf[0] != 0x16 {
        return Inspection::NotTls;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Inspection::NotTls,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Inspection::ClientHello(HelloInfo {
                server_name: hello.server_name().map(str::to_ascii_lowercase),
                alpn: hello
                    .alpn()
                    .map(|it| {
                        it.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        Ok(None) => Inspection::Incomplete,
        Err(_) => Inspection::NotTls,
    }
}

/// Reads from `stream` until a ClientHello is complete (or the bytes are not
/// TLS) and returns the bytes read with what the hello offers (`None`: not
/// TLS). `buf` holds bytes already read (after a PROXY protocol header).
pub async fn read_client_hello(
    stream: &mut TcpStream,
    mut buf: BytesMut,
) -> io::Result<(Bytes, Option<HelloInfo>)> {
    if !buf.is_empty() {
        match inspect(&buf) {
            Inspection::Incomplete => {}
            Inspection::NotTls => return Ok((buf.freeze(), None)),
            Inspection::ClientHello(hello) => return Ok((buf.freeze(), Some(hello))),
        }
    }
    buf.reserve(2048);
    loop {
        if buf.len() >= MAX_CLIENT_HELLO {
            return Ok((buf.freeze(), None));
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a ClientHello",
            ));
        }
        match inspect(&buf) {
            Inspection::Incomplete => continue,
            Inspection::NotTls => return Ok((buf.freeze(), None)),
            Inspection::ClientHello(hello) => return Ok((buf.freeze(), Some(hello))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_are_not_tls() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Inspection::NotTls);
        assert_eq!(inspect(b""), Inspection::Incomplete);
    }

    #[test]
    fn garbage_after_handshake_byte_is_not_a_panic() {
        let mut v = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        v.extend(std::iter::repeat_n(0xAA, 300));
        let r = inspect(&v);
        assert!(matches!(r, Inspection::Incomplete | Inspection::NotTls));
        assert_eq!(
            inspect(&[0x16, 0x03, 0x01, 0x00, 0x04, 1, 0, 0, 0]),
            Inspection::NotTls
        );
    }
}

#[cfg(test)]
mod client_hello_tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls' client writes it.
    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn sni_is_read_from_a_real_client_hello() {
        let hello = client_hello("api.example.test");
        assert_eq!(
            inspect(&hello),
            Inspection::ClientHello(HelloInfo {
                server_name: Some("api.example.test".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
        // Byte by byte it is incomplete until the last byte.
        for cut in [1, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(inspect(&hello[..cut]), Inspection::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn truncated_or_corrupted_hellos_never_panic() {
        let hello = client_hello("a.test");
        for i in 5..hello.len() {
            let mut h = hello.clone();
            h[i] ^= 0xff;
            let _ = inspect(&h);
        }
    }
}
