//! How a cluster opens its upstream sockets when `upstream_bind_config` or
//! `upstream_connection_options` is set (`config::upstream_socket`): a
//! socket2 socket with the keepalive, freebind and raw options set, bound
//! to the source address, then connected by tokio. Without them the
//! plain `TcpStream::connect` is used.

use crate::config::ClusterConfig;
use crate::config::upstream_socket::TcpKeepalive;
use crate::error::BuildError;
use crate::socket_option::{SocketOption, SocketState, apply};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// A cluster's socket settings, checked.
#[derive(Debug, Clone)]
pub struct UpstreamSocket {
    source: Option<SocketAddr>,
    freebind: bool,
    options: Vec<SocketOption>,
    keepalive: Option<TcpKeepalive>,
}

impl UpstreamSocket {
    /// `None` when the cluster sets neither field.
    pub fn build(c: &ClusterConfig) -> Result<Option<Self>, BuildError> {
        let keepalive = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.clone());
        if let Some(k) = &keepalive {
            for (v, f) in [
                (k.keepalive_probes, "keepalive_probes"),
                (k.keepalive_time, "keepalive_time"),
                (k.keepalive_interval, "keepalive_interval"),
            ] {
                // The kernel's own bounds (TCP_KEEPCNT <= 127,
                // TCP_KEEPIDLE/TCP_KEEPINTVL <= 32767 s, all >= 1).
                let max = if f == "keepalive_probes" { 127 } else { 32767 };
                if let Some(v) = v
                    && !(1..=max).contains(&v)
                {
                    return Err(BuildError::new(
                        format!("upstream_connection_options.tcp_keepalive.{f}"),
                        format!("must be 1 to {max}"),
                    ));
                }
            }
        }
        let bind = c.upstream_bind_config.clone().unwrap_or_default();
        let options = crate::socket_option::build(
            &bind.socket_options,
            "upstream_bind_config.socket_options",
        )?;
        if let Some(o) = options.iter().find(|o| o.state == SocketState::Listening) {
            return Err(BuildError::new(
                format!("{}.state", o.path),
                "STATE_LISTENING: an upstream socket never listens (prebind or bound)",
            ));
        }
        if bind.freebind && bind.source_address.is_none() {
            return Err(BuildError::new(
                "upstream_bind_config.freebind",
                "needs a source_address to bind to",
            ));
        }
        if c.upstream_bind_config.is_none() && keepalive.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            source: bind.source_address,
            freebind: bind.freebind,
            options,
            keepalive,
        }))
    }

    /// Opens a socket to `addr` with these settings and connects it.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        if let Some(k) = &self.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(t) = k.keepalive_time {
                ka = ka.with_time(Duration::from_secs(t.into()));
            }
            if let Some(i) = k.keepalive_interval {
                ka = ka.with_interval(Duration::from_secs(i.into()));
            }
            if let Some(p) = k.keepalive_probes {
                ka = ka.with_retries(p);
            }
            socket.set_keepalive(true)?;
            socket.set_tcp_keepalive(&ka)?;
        }
        if self.freebind {
            if addr.is_ipv6() {
                socket.set_freebind_v6(true)?;
            } else {
                socket.set_freebind_v4(true)?;
            }
        }
        apply(&socket, &self.options, SocketState::Prebind)?;
        if let Some(src) = self.source {
            socket.bind(&src.into()).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("upstream_bind_config.source_address {src}: {e}"),
                )
            })?;
        }
        apply(&socket, &self.options, SocketState::Bound)?;
        let std: std::net::TcpStream = socket.into();
        TcpSocket::from_std_stream(std).connect(addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keepalive values `ss` cannot show (probes, interval) read back
    /// with getsockopt on a connected socket.
    #[tokio::test]
    async fn keepalive_probes_and_interval_reach_the_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c: ClusterConfig = serde_json::from_value(serde_json::json!({
            "name": "b",
            "upstream_connection_options": {"tcp_keepalive": {
                "keepalive_probes": 4, "keepalive_time": 61, "keepalive_interval": 9}},
        }))
        .unwrap();
        let s = UpstreamSocket::build(&c).unwrap().expect("settings");
        let stream = s.connect(l.local_addr().unwrap()).await.unwrap();
        let r = socket2::SockRef::from(&stream);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(61));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(9));
        // Neither field: the plain connect.
        let plain: ClusterConfig =
            serde_json::from_value(serde_json::json!({"name": "b"})).unwrap();
        assert!(UpstreamSocket::build(&plain).unwrap().is_none());
    }
}
