//! A listener's `socket_options` (Envoy's `core.v3.SocketOption`): raw
//! `setsockopt(level, name, value)` calls on the listening socket at one
//! of three moments, `prebind` (before `bind(2)`, Envoy's default),
//! `bound` (after `bind`, before `listen`) or `listening` (after
//! `listen`). Options a listening socket passes to the sockets it accepts
//! (`SO_KEEPALIVE`, `TCP_NODELAY`, buffer sizes... on Linux) apply to
//! each downstream connection too. A failing call fails the listener's
//! bind with the option named.

use crate::error::BuildError;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// When an option is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    #[default]
    Prebind,
    Bound,
    Listening,
}

/// One option, as in Envoy: `level` and `name` are the platform's
/// numbers (`SOL_SOCKET` 1, `SO_KEEPALIVE` 9, `IPPROTO_TCP` 6,
/// `TCP_NODELAY` 1 on Linux), the value an `int_value` (passed as a C
/// `int`) or a `buf_value` (base64, as Envoy's JSON form of bytes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SocketOptionConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub level: i64,
    pub name: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buf_value: Option<String>,
    #[serde(default)]
    pub state: SocketState,
}

/// A checked option, ready for `setsockopt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOption {
    pub level: libc::c_int,
    pub name: libc::c_int,
    pub value: Vec<u8>,
    pub state: SocketState,
    /// For errors: `socket_options[i]`.
    pub path: String,
}

/// A buffer value longer than this is refused (no option takes more).
const MAX_BUF: usize = 1024;

/// Checks the options at `path` (`socket_options`).
pub fn build(list: &[SocketOptionConfig], path: &str) -> Result<Vec<SocketOption>, BuildError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, o) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let int = |v: i64, f: &str| {
            libc::c_int::try_from(v)
                .map_err(|_| BuildError::new(format!("{p}.{f}"), "out of the C int range"))
        };
        let value = match (o.int_value, &o.buf_value) {
            (Some(v), None) => int(v, "int_value")?.to_ne_bytes().to_vec(),
            (None, Some(b)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| BuildError::new(format!("{p}.buf_value"), e))?;
                if bytes.is_empty() || bytes.len() > MAX_BUF {
                    return Err(BuildError::new(
                        format!("{p}.buf_value"),
                        format!("1 to {MAX_BUF} bytes"),
                    ));
                }
                bytes
            }
            _ => {
                return Err(BuildError::new(
                    p,
                    "set exactly one of int_value and buf_value",
                ));
            }
        };
        out.push(SocketOption {
            level: int(o.level, "level")?,
            name: int(o.name, "name")?,
            value,
            state: o.state,
            path: p,
        });
    }
    Ok(out)
}

/// Sets the options of `state` on `socket`. Raw `setsockopt`: socket2
/// and nix only set the options they name, and these are any the
/// control plane names.
#[allow(unsafe_code)]
pub fn apply(
    socket: &socket2::Socket,
    options: &[SocketOption],
    state: SocketState,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for o in options.iter().filter(|o| o.state == state) {
        // SAFETY: the fd is the live socket's; the pointer and length
        // describe `o.value`, which outlives the call.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                o.level,
                o.name,
                o.value.as_ptr().cast(),
                o.value.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "{}: setsockopt(level {}, name {}): {e}",
                    o.path, o.level, o.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(int_value: Option<i64>, buf_value: Option<&str>) -> SocketOptionConfig {
        SocketOptionConfig {
            description: String::new(),
            level: libc::SOL_SOCKET as i64,
            name: libc::SO_KEEPALIVE as i64,
            int_value,
            buf_value: buf_value.map(Into::into),
            state: SocketState::Listening,
        }
    }

    #[test]
    fn values_are_checked_and_applied() {
        let e = build(&[opt(None, None)], "s").unwrap_err();
        assert_eq!(e.path, "s[0]");
        let e = build(&[opt(Some(1 << 40), None)], "s").unwrap_err();
        assert_eq!(e.path, "s[0].int_value");
        let e = build(&[opt(None, Some("!!"))], "s").unwrap_err();
        assert_eq!(e.path, "s[0].buf_value");

        // SO_KEEPALIVE as an int, SO_RCVBUF as the bytes of an int.
        let mut rcvbuf = opt(None, Some("AAABAA==")); // 65536, little-endian
        rcvbuf.name = libc::SO_RCVBUF as i64;
        rcvbuf.state = SocketState::Prebind;
        let built = build(&[opt(Some(1), None), rcvbuf], "s").unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        apply(&s, &built, SocketState::Prebind).unwrap();
        assert!(!s.keepalive().unwrap());
        if cfg!(target_endian = "little") {
            // Linux doubles the size it is given.
            assert_eq!(s.recv_buffer_size().unwrap(), 131072);
        }
        apply(&s, &built, SocketState::Listening).unwrap();
        assert!(s.keepalive().unwrap());
    }
}
