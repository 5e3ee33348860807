//! A listener's `socket_options` (`core.v3.SocketOption`) into the YAML
//! `socket_options` (`meshgate_core::socket_option`): `level`, `name`,
//! `int_value` or `buf_value`, `state` (`STATE_PREBIND`, `STATE_BOUND`,
//! `STATE_LISTENING`). An option whose `type` names datagram sockets only
//! does not apply to a TCP listener's socket and is left out, as in
//! Envoy; `ip_version` is refused by name.

use crate::translate::{R, err, join, rest};
use base64::Engine;
use envoy_types::pb::envoy::config::core::v3 as core3;
use meshgate_core::socket_option::{SocketOptionConfig, SocketState};

pub(crate) fn socket_options(
    list: Vec<core3::SocketOption>,
    path: &str,
) -> R<Vec<SocketOptionConfig>> {
    use core3::socket_option::{SocketState as S, Value};
    let mut out = Vec::new();
    for (i, mut o) in list.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let description = std::mem::take(&mut o.description);
        let state = match S::try_from(std::mem::take(&mut o.state)) {
            Ok(S::StatePrebind) => SocketState::Prebind,
            Ok(S::StateBound) => SocketState::Bound,
            Ok(S::StateListening) => SocketState::Listening,
            Err(_) => return err(join(&p, "state"), "unknown value"),
        };
        let mut applies = true;
        if let Some(mut t) = o.r#type.take() {
            let stream = t.stream.take().is_some();
            let datagram = t.datagram.take().is_some();
            rest(&t, &join(&p, "type"))?;
            applies = stream || !datagram;
        }
        let (int_value, buf_value) = match o.value.take() {
            Some(Value::IntValue(v)) => (Some(v), None),
            Some(Value::BufValue(b)) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
            None => return err(join(&p, "int_value"), "int_value or buf_value is required"),
        };
        let c = SocketOptionConfig {
            description,
            level: std::mem::take(&mut o.level),
            name: std::mem::take(&mut o.name),
            int_value,
            buf_value,
            state,
        };
        rest(&o, &p)?;
        // The values are checked as the YAML's are.
        meshgate_core::socket_option::build(std::slice::from_ref(&c), "").map_err(|e| {
            (
                format!("{p}{}", e.path.trim_start_matches("[0]")),
                e.message,
            )
        })?;
        if applies {
            out.push(c);
        }
    }
    Ok(out)
}
