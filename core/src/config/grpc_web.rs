//! The `grpc_web` stream filter's config. Envoy's `GrpcWeb` message is
//! empty; `max_message_bytes` is meshgate's own (xDS gets its default).

use serde::{Deserialize, Serialize};

/// gRPC's default largest received message (grpc-core's
/// `GRPC_DEFAULT_MAX_RECV_MESSAGE_LENGTH`).
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// A request message whose length prefix says more is refused from
    /// its prefix, before its bytes are forwarded (gRPC
    /// RESOURCE_EXHAUSTED); `0`: no limit.
    #[serde(default = "default_max")]
    pub max_message_bytes: u32,
}

fn default_max() -> u32 {
    DEFAULT_MAX_MESSAGE_BYTES
}

impl Default for GrpcWebConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: GrpcWebConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(c, GrpcWebConfig::default());
        let c: GrpcWebConfig =
            serde_json::from_value(serde_json::json!({"max_message_bytes": 10})).unwrap();
        assert_eq!(c.max_message_bytes, 10);
        let e = serde_json::from_value::<GrpcWebConfig>(serde_json::json!({"max": 1}));
        assert!(e.is_err());
    }
}
