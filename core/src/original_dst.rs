//! Sidecar mode, listener side: the `original_dst` listener filter (the
//! destination a connection had before nftables/iptables REDIRECT sent it
//! here: `SO_ORIGINAL_DST`; under TPROXY the socket's own local address),
//! the listener socket options of TPROXY (`transparent`, `freebind`), and
//! the hand-over of a `use_original_dst` listener's connection to the
//! listener bound (`bind_to_port: false`) to its original destination
//! (Istio's 15001/15006 "virtual listeners").
//!
//! Listeners without these settings carry no `ListenerSidecar` and pay one
//! pointer test per connection.

use crate::config::sidecar::{HTTP_INSPECTOR, ORIGINAL_DST, TLS_INSPECTOR};
use crate::config::{ConfigSource, ListenerConfig};
use crate::error::ConfigError;
use crate::listener::{CompiledListener, RunningListener};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use tokio::net::{TcpListener, TcpStream};

/// A listener's sidecar settings, compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerSidecar {
    /// `envoy.filters.listener.original_dst` is configured.
    pub original_dst: bool,
    /// `envoy.filters.listener.http_inspector` is configured.
    pub http_inspector: bool,
    pub use_original_dst: bool,
    pub bind_to_port: bool,
    pub transparent: bool,
    pub freebind: bool,
}

impl ListenerSidecar {
    /// `None` for a listener that uses none of these settings.
    pub fn build(
        cfg: &ListenerConfig,
        path: &str,
        source: &ConfigSource,
    ) -> Result<Option<Box<Self>>, ConfigError> {
        let mut s = Self {
            bind_to_port: cfg.bind_to_port,
            use_original_dst: cfg.use_original_dst,
            transparent: cfg.transparent.unwrap_or(false),
            freebind: cfg.freebind.unwrap_or(false),
            ..Self::default()
        };
        for (i, f) in cfg.listener_filters.iter().enumerate() {
            // The PROXY protocol filter is compiled by `crate::proxy_protocol`.
            if crate::proxy_protocol::is_proxy_protocol(&f.name) {
                continue;
            }
            let empty = f.config.is_null() || f.config.as_object().is_some_and(|o| o.is_empty());
            if !empty {
                return Err(source.error(
                    format!("{path}.listener_filters[{i}].config"),
                    format!("'{}' has no options", f.name),
                ));
            }
            match f.name.as_str() {
                ORIGINAL_DST => s.original_dst = true,
                HTTP_INSPECTOR => s.http_inspector = true,
                TLS_INSPECTOR => {}
                other => {
                    return Err(source.error(
                        format!("{path}.listener_filters[{i}].name"),
                        format!(
                            "unknown listener filter '{other}' (known: {ORIGINAL_DST}, {HTTP_INSPECTOR}, {TLS_INSPECTOR})"
                        ),
                    ));
                }
            }
        }
        if cfg.quic.is_some() && s != Self::plain() {
            return Err(source.error(
                format!("{path}.quic"),
                "a QUIC listener takes no listener_filters, use_original_dst, bind_to_port, transparent or freebind",
            ));
        }
        if !s.bind_to_port && (s.use_original_dst || s.transparent || s.freebind) {
            return Err(source.error(
                format!("{path}.bind_to_port"),
                "a listener without a socket (bind_to_port: false) only receives connections handed over: use_original_dst, transparent and freebind apply to the listener that accepts them",
            ));
        }
        Ok((s != Self::plain()).then(|| Box::new(s)))
    }

    /// The settings of a listener without any of them.
    fn plain() -> Self {
        Self {
            bind_to_port: true,
            ..Self::default()
        }
    }
}

/// Whether the listener has a socket of its own.
pub fn binds(l: &CompiledListener) -> bool {
    l.sidecar.as_ref().is_none_or(|s| s.bind_to_port)
}

/// Binds a listener's socket, with IP_TRANSPARENT and IP_FREEBIND when
/// configured (set before `bind(2)`: they decide what it may bind to and
/// receive).
pub fn bind(l: &CompiledListener) -> std::io::Result<TcpListener> {
    use crate::socket_option::{SocketState, apply};
    let plain = crate::original_dst::ListenerSidecar::default();
    let s = match l.sidecar.as_deref().filter(|s| s.transparent || s.freebind) {
        Some(s) => s,
        None if !l.socket_options.is_empty() => &plain,
        None => return crate::listener::bind(l.address, l.backlog),
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(l.address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let v6 = l.address.is_ipv6();
    if s.transparent {
        if v6 {
            socket.set_ip_transparent_v6(true)?;
        } else {
            socket.set_ip_transparent_v4(true)?;
        }
    }
    if s.freebind {
        if v6 {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    apply(&socket, &l.socket_options, SocketState::Prebind)?;
    socket.bind(&l.address.into())?;
    apply(&socket, &l.socket_options, SocketState::Bound)?;
    socket.listen(l.backlog.min(i32::MAX as u32) as i32)?;
    apply(&socket, &l.socket_options, SocketState::Listening)?;
    TcpListener::from_std(socket.into())
}

/// The destination the connection had before it was redirected here:
/// `SO_ORIGINAL_DST` (REDIRECT/DNAT: conntrack's original tuple), or, on a
/// transparent (TPROXY) socket, the socket's local address. `None` when
/// neither can be read.
pub fn original_destination(stream: &TcpStream, transparent: bool) -> Option<SocketAddr> {
    if transparent {
        return stream.local_addr().ok();
    }
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let got = if local.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    // Without a conntrack entry (nf_conntrack not loaded) the connection
    // was not redirected: its local address is where it was going.
    Some(got.ok().and_then(|a| a.as_socket()).unwrap_or(local))
}

/// Listeners without a socket (`bind_to_port: false`), by address: where a
/// `use_original_dst` listener hands connections. Published by the server
/// after each change of its listeners (one server per process).
static VIRTUAL: LazyLock<ArcSwap<HashMap<SocketAddr, Arc<RunningListener>>>> =
    LazyLock::new(|| ArcSwap::from_pointee(HashMap::new()));

/// The addresses of the listeners with a socket: an ORIGINAL_DST cluster
/// never connects there (it would loop back into meshgate).
static BOUND: LazyLock<ArcSwap<Vec<SocketAddr>>> =
    LazyLock::new(|| ArcSwap::from_pointee(Vec::new()));

/// Publishes the listeners that have no socket of their own, and the
/// addresses of those that have one.
pub fn publish<'a>(running: impl Iterator<Item = &'a Arc<RunningListener>>) {
    let mut table = HashMap::new();
    let mut bound = Vec::new();
    for r in running {
        let c = r.compiled.load();
        if binds(&c) {
            bound.push(c.address);
        } else {
            table.insert(c.address, r.clone());
        }
    }
    VIRTUAL.store(Arc::new(table));
    BOUND.store(Arc::new(bound));
}

/// Whether `dst` is one of meshgate's own listening sockets: the exact
/// address, or the port of a wildcard listener on a loopback address.
pub fn is_own_listener(dst: SocketAddr) -> bool {
    BOUND.load().iter().any(|a| {
        a.port() == dst.port()
            && (a.ip() == dst.ip() || (a.ip().is_unspecified() && dst.ip().is_loopback()))
    })
}

/// The listener without a socket for `dst`: the one at that address, else
/// the one at the wildcard address of that port.
fn virtual_for(dst: SocketAddr) -> Option<Arc<CompiledListener>> {
    let table = VIRTUAL.load();
    if table.is_empty() {
        return None;
    }
    let any: IpAddr = if dst.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    table
        .get(&dst)
        .or_else(|| table.get(&SocketAddr::new(any, dst.port())))
        .map(|r| r.compiled.load_full())
}

/// Whether `dst` is the listener's own address: a connection made to the
/// capture port itself rather than redirected to it. Passed through, it
/// would connect back to this listener for ever.
fn is_own_address(l: &CompiledListener, dst: SocketAddr) -> bool {
    dst.port() == l.address.port()
        && (l.address.ip().is_unspecified() || l.address.ip() == dst.ip())
}

/// The listener filters of a listener with sidecar settings, run on an
/// accepted connection: the listener that serves it (itself, or the
/// listener of its original destination) and the local address its filter
/// chain is chosen by. `None`: the connection is closed (counted).
pub async fn on_accept(
    listener: Arc<CompiledListener>,
    s: &ListenerSidecar,
    stream: &TcpStream,
    local: SocketAddr,
) -> Option<Accepted> {
    let inspect = s.http_inspector;
    let (listener, local) = redirect(listener, s, stream, local)?;
    let inspect = inspect || listener.sidecar.as_ref().is_some_and(|t| t.http_inspector);
    let http = match inspect {
        true => inspect_http(stream, listener.inspect_timeout).await,
        false => None,
    };
    Some(Accepted {
        listener,
        local,
        http,
    })
}

/// What the listener filters decided for a connection.
pub struct Accepted {
    /// The listener that serves it.
    pub listener: Arc<CompiledListener>,
    /// The local address its chain is chosen by (the original destination).
    pub local: SocketAddr,
    /// What the http_inspector saw: the application protocol for chain
    /// matching when no ALPN was offered.
    pub http: Option<&'static str>,
}

fn redirect(
    listener: Arc<CompiledListener>,
    s: &ListenerSidecar,
    stream: &TcpStream,
    local: SocketAddr,
) -> Option<(Arc<CompiledListener>, SocketAddr)> {
    if !s.original_dst && !s.use_original_dst {
        return Some((listener, local));
    }
    let dst = if s.original_dst {
        let Some(dst) = original_destination(stream, s.transparent) else {
            refuse(&listener, "no_original_dst");
            return None;
        };
        if is_own_address(&listener, dst) {
            refuse(&listener, "not_redirected");
            return None;
        }
        dst
    } else {
        local
    };
    if s.use_original_dst
        && let Some(target) = virtual_for(dst)
    {
        target.stats.cx_total.increment(1);
        metrics::counter!(crate::metrics::names::LISTENER_ORIGINAL_DST_HANDOFF_TOTAL, "listener" => listener.name.to_string(), "target" => target.name.to_string()).increment(1);
        tracing::debug!(listener = %listener.name, target = %target.name, %dst, "handed to the listener of the original destination");
        return Some((target, dst));
    }
    Some((listener, dst))
}

fn refuse(listener: &CompiledListener, reason: &'static str) {
    metrics::counter!(crate::metrics::names::LISTENER_ORIGINAL_DST_REFUSED_TOTAL, "listener" => listener.name.to_string(), "reason" => reason).increment(1);
    tracing::debug!(listener = %listener.name, reason, "connection refused by the original_dst listener filter");
}

/// What Envoy's http_inspector reports for the first bytes of a plaintext
/// connection: `h2c` for the HTTP/2 preface, `http/1.1` or `http/1.0` for
/// an HTTP/1 request line; `None` for anything else (or too few bytes).
pub fn detect_http(bytes: &[u8]) -> Option<&'static str> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if bytes.len() >= PREFACE.len() && bytes.starts_with(PREFACE) {
        return Some("h2c");
    }
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = &bytes[..line_end];
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next()?;
    let _target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    match version {
        b"HTTP/1.1" => Some("http/1.1"),
        b"HTTP/1.0" => Some("http/1.0"),
        _ => None,
    }
}

/// The http_inspector: peeks (without consuming) at the connection's first
/// bytes, within the listener's inspection timeout, and names the HTTP
/// version it sees for `application_protocols` matching.
pub async fn inspect_http(
    stream: &TcpStream,
    timeout: std::time::Duration,
) -> Option<&'static str> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let peek = async {
        let mut buf = [0u8; 64];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            let b = &buf[..n];
            if n == 0 {
                return None;
            }
            if let Some(p) = detect_http(b) {
                return Some(p);
            }
            let undecided =
                n < buf.len() && (PREFACE.starts_with(b) || !b.windows(2).any(|w| w == b"\r\n"));
            if !undecided {
                return None;
            }
            // `peek` returns at once while the bytes it saw wait unread:
            // wait a little for more to arrive.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(timeout, peek).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_detection() {
        assert_eq!(
            detect_http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some("h2c")
        );
        assert_eq!(
            detect_http(b"GET / HTTP/1.1\r\nhost: a\r\n"),
            Some("http/1.1")
        );
        assert_eq!(detect_http(b"POST /x HTTP/1.0\r\n"), Some("http/1.0"));
        assert_eq!(detect_http(b"GET / HTTP/1.1"), None);
        assert_eq!(
            detect_http(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"),
            None
        );
        assert_eq!(detect_http(b"get / HTTP/1.1\r\n"), None);
        assert_eq!(detect_http(b"GET / HTTP/2.0\r\n"), None);
    }
}
