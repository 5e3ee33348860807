//! The admin listener's address: a TCP `host:port` or a Unix socket
//! (Envoy's `pipe`), for hosts where loopback is shared with other tenants.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `host:port`, or `{pipe: {path, mode}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AdminAddress {
    Socket(String),
    Pipe(PipeAddress),
}

/// `{pipe: {...}}`, as Envoy's `Address.pipe`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipeAddress {
    pub pipe: Pipe,
}

/// A Unix socket path and its file mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipe {
    pub path: String,
    /// File mode of the socket (Envoy's `mode`), default 0o600: only the
    /// owner may connect.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o600
}

impl AdminAddress {
    /// The TCP address, `None` for a pipe; `Err` names what is wrong.
    pub fn socket(&self) -> Result<Option<SocketAddr>, String> {
        match self {
            AdminAddress::Socket(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid address '{s}': want ip:port or {{pipe: {{path}}}}")),
            AdminAddress::Pipe(_) => Ok(None),
        }
    }

    /// The Unix socket, if this is one.
    pub fn pipe(&self) -> Option<&Pipe> {
        match self {
            AdminAddress::Pipe(p) => Some(&p.pipe),
            AdminAddress::Socket(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_or_pipe() {
        let a: AdminAddress = serde_yaml::from_str("127.0.0.1:9901").unwrap();
        assert_eq!(a.socket().unwrap(), Some("127.0.0.1:9901".parse().unwrap()));
        let p: AdminAddress = serde_yaml::from_str("{pipe: {path: /tmp/a.sock}}").unwrap();
        assert_eq!(p.socket().unwrap(), None);
        assert_eq!(p.pipe().unwrap().mode, 0o600);
        assert!(serde_yaml::from_str::<AdminAddress>("{pipe: {path: /x, bogus: 1}}").is_err());
        assert!(AdminAddress::Socket("nope".into()).socket().is_err());
    }
}
