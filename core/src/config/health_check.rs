//! Config of a cluster's active health checks (Envoy's
//! `config.core.v3.HealthCheck`), the contract between the checker
//! (`crate::cluster::health_check`) and the xDS translator. Fields
//! meshgate does not implement (`event_log_path`, `event_service`,
//! `transport_socket_match_criteria`, runtime keys...)
//! are absent, so `deny_unknown_fields` refuses them by name.

use crate::error::BuildError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One active health check of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// How long a check may take; past it, the check failed (network).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time between two checks of one endpoint.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much is added at random to every interval.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval_jitter: Option<Duration>,
    /// Up to this percent of the interval is added at random to it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval_jitter_percent: u32,
    /// Up to this much delay, at random, before an endpoint's first check.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_jitter: Option<Duration>,
    /// Consecutive network failures (or retriable statuses) before an
    /// endpoint is marked unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before an unhealthy endpoint is healthy again.
    pub healthy_threshold: u32,
    /// The interval of an endpoint that has had no traffic yet.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_traffic_interval: Option<Duration>,
    /// As `no_traffic_interval`, once that endpoint is healthy.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_traffic_healthy_interval: Option<Duration>,
    /// The interval of an unhealthy endpoint.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_interval: Option<Duration>,
    /// The next interval right after an endpoint became unhealthy.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_edge_interval: Option<Duration>,
    /// The next interval right after an endpoint became healthy.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthy_edge_interval: Option<Duration>,
    /// Logs every failed check, not only transitions.
    #[serde(default, skip_serializing_if = "is_false")]
    pub always_log_health_check_failures: bool,
    /// Keep the check's connection open for the next check (Envoy's
    /// default `true`): HTTP/1.1 keep-alive, one HTTP/2 connection for
    /// HTTP/2 and gRPC checks, TCP checks with a payload and the RPC
    /// heartbeats. A connect-only TCP check always connects anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_health_check: Option<GrpcHealthCheck>,
    /// Envoy's `custom_health_check`: meshgate's Dubbo and Bolt heartbeat
    /// checkers (`meshgate.health_checkers.dubbo` / `.bolt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_health_check: Option<CustomHealthCheck>,
}

/// Envoy's `HealthCheck.CustomHealthCheck`: a checker by name. meshgate
/// knows the RPC heartbeats; they take no `typed_config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomHealthCheck {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<serde_json::Value>,
}

/// The heartbeat a custom checker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcHeartbeat {
    Dubbo,
    Bolt,
}

impl CustomHealthCheck {
    pub const DUBBO: &'static str = "meshgate.health_checkers.dubbo";
    pub const BOLT: &'static str = "meshgate.health_checkers.bolt";

    /// The heartbeat of this checker; the error names the field under
    /// `path` (the `custom_health_check`).
    pub fn heartbeat(&self, path: &str) -> Result<RpcHeartbeat, BuildError> {
        let kind = match self.name.as_str() {
            Self::DUBBO => RpcHeartbeat::Dubbo,
            Self::BOLT => RpcHeartbeat::Bolt,
            other => {
                return Err(BuildError::new(
                    format!("{path}.name"),
                    format!(
                        "unknown checker '{other}' (known: {}, {})",
                        Self::DUBBO,
                        Self::BOLT
                    ),
                ));
            }
        };
        if self.typed_config.is_some() {
            return Err(BuildError::new(
                format!("{path}.typed_config"),
                "the RPC heartbeat checkers take no config",
            ));
        }
        Ok(kind)
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Envoy's `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// The `Host` (`:authority`); default the cluster's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub path: String,
    /// Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Statuses that pass, `[start, end)`; default `[200, 201)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<StatusRange>,
    /// Statuses that count toward `unhealthy_threshold` instead of
    /// failing the endpoint at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_statuses: Vec<StatusRange>,
    #[serde(default)]
    pub codec_client_type: CodecClientType,
}

/// Envoy's `HeaderValueOption` (only its `header`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Envoy's `type.v3.Int64Range`: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    pub start: i64,
    pub end: i64,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.start..self.end).contains(&i64::from(status))
    }
}

/// The HTTP version of an HTTP check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum CodecClientType {
    #[default]
    HTTP1,
    HTTP2,
    /// Over QUIC, on a cluster whose `protocol` is http3.
    HTTP3,
}

/// Envoy's `HealthCheck.TcpHealthCheck`: connect, send `send`, expect
/// every `receive` block in order; connect-only when both are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Payload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receive: Vec<Payload>,
}

/// Envoy's `HealthCheck.Payload`: hex `text` (`binary` is the xDS form;
/// the translator turns it into hex).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub text: String,
}

/// Envoy's `HealthCheck.GrpcHealthCheck`: `grpc.health.v1.Health/Check`
/// over HTTP/2; SERVING is healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// The `:authority`; default the cluster's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
}

/// Decodes a hex payload (`Payload.text`); `field` names it in errors.
pub fn decode_hex(text: &str, field: &str) -> Result<Vec<u8>, BuildError> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return Err(BuildError::new(field, "hex text of odd length"));
    }
    let nib = |c: u8| -> Result<u8, BuildError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| BuildError::new(field, format!("'{}' is not a hex digit", c as char)))
    };
    t.chunks(2)
        .map(|p| Ok(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

impl HealthCheckConfig {
    /// Checks the values serde cannot (`path` names the check in errors).
    pub fn validate(&self, path: &str) -> Result<(), BuildError> {
        if self.timeout.is_zero() {
            return Err(BuildError::new(format!("{path}.timeout"), "must be > 0"));
        }
        if self.interval.is_zero() {
            return Err(BuildError::new(format!("{path}.interval"), "must be > 0"));
        }
        for (name, v) in [
            ("no_traffic_interval", self.no_traffic_interval),
            (
                "no_traffic_healthy_interval",
                self.no_traffic_healthy_interval,
            ),
            ("unhealthy_interval", self.unhealthy_interval),
            ("unhealthy_edge_interval", self.unhealthy_edge_interval),
            ("healthy_edge_interval", self.healthy_edge_interval),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                return Err(BuildError::new(format!("{path}.{name}"), "must be > 0"));
            }
        }
        if self.unhealthy_threshold == 0 {
            return Err(BuildError::new(
                format!("{path}.unhealthy_threshold"),
                "must be >= 1",
            ));
        }
        if self.healthy_threshold == 0 {
            return Err(BuildError::new(
                format!("{path}.healthy_threshold"),
                "must be >= 1",
            ));
        }
        if let Some(c) = &self.custom_health_check {
            c.heartbeat(&format!("{path}.custom_health_check"))?;
        }
        let kinds = usize::from(self.http_health_check.is_some())
            + usize::from(self.tcp_health_check.is_some())
            + usize::from(self.grpc_health_check.is_some())
            + usize::from(self.custom_health_check.is_some());
        if kinds != 1 {
            return Err(BuildError::new(
                path,
                "exactly one of http_health_check, tcp_health_check, grpc_health_check, custom_health_check is required",
            ));
        }
        if let Some(h) = &self.http_health_check {
            let p = format!("{path}.http_health_check");
            if !h.path.starts_with('/') {
                return Err(BuildError::new(format!("{p}.path"), "must start with '/'"));
            }
            if let Some(m) = &h.method
                && (m.is_empty() || http::Method::from_bytes(m.as_bytes()).is_err())
            {
                return Err(BuildError::new(format!("{p}.method"), "invalid method"));
            }
            for (i, hv) in h.request_headers_to_add.iter().enumerate() {
                let f = format!("{p}.request_headers_to_add[{i}].header");
                http::HeaderName::from_bytes(hv.header.key.as_bytes())
                    .map_err(|_| BuildError::new(format!("{f}.key"), "invalid header name"))?;
                http::HeaderValue::from_str(&hv.header.value)
                    .map_err(|_| BuildError::new(format!("{f}.value"), "invalid header value"))?;
            }
            for (name, ranges) in [
                ("expected_statuses", &h.expected_statuses),
                ("retriable_statuses", &h.retriable_statuses),
            ] {
                for (i, r) in ranges.iter().enumerate() {
                    if r.start < 100 || r.end > 600 || r.start >= r.end {
                        return Err(BuildError::new(
                            format!("{p}.{name}[{i}]"),
                            "want 100 <= start < end <= 600",
                        ));
                    }
                }
            }
        }
        if let Some(t) = &self.tcp_health_check {
            let p = format!("{path}.tcp_health_check");
            if let Some(s) = &t.send {
                decode_hex(&s.text, &format!("{p}.send.text"))?;
            }
            for (i, r) in t.receive.iter().enumerate() {
                decode_hex(&r.text, &format!("{p}.receive[{i}].text"))?;
            }
        }
        Ok(())
    }
}

/// Envoy's `Endpoint.HealthCheckConfig` (per endpoint): active checks go
/// to `port_value` instead of the endpoint's port (0: the endpoint's), and
/// L7 checks (HTTP `host`, gRPC `authority`) use `hostname` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointHealthCheckConfig {
    pub port_value: u32,
    pub hostname: String,
}

impl EndpointHealthCheckConfig {
    /// The port, checked (Envoy: `port_value` <= 65535); the error names
    /// the field under `path`.
    pub fn port(&self, path: &str) -> Result<Option<u16>, BuildError> {
        match self.port_value {
            0 => Ok(None),
            p => u16::try_from(p).map(Some).map_err(|_| {
                BuildError::new(format!("{path}.port_value"), format!("{p} is not a port"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> HealthCheckConfig {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn hex_payloads() {
        assert_eq!(decode_hex("00ff7A", "f").unwrap(), vec![0, 255, 0x7a]);
        assert_eq!(decode_hex("abc", "f").unwrap_err().path, "f");
        assert!(decode_hex("zz", "f").is_err());
    }

    #[test]
    fn validation_names_fields() {
        let base = "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 2\nhealthy_threshold: 1\n";
        let c = parse(&format!("{base}http_health_check: {{path: /healthz}}\n"));
        c.validate("hc").unwrap();
        let c = parse(&format!("{base}http_health_check: {{path: healthz}}\n"));
        assert_eq!(
            c.validate("hc").unwrap_err().path,
            "hc.http_health_check.path"
        );
        let c = parse(base);
        assert_eq!(c.validate("hc").unwrap_err().path, "hc");
        let c = parse(&format!("{base}custom_health_check: {{name: x}}\n"));
        assert_eq!(
            c.validate("hc").unwrap_err().path,
            "hc.custom_health_check.name"
        );
        let c = parse(&format!(
            "{base}custom_health_check: {{name: meshgate.health_checkers.bolt, typed_config: {{}}}}\n"
        ));
        assert_eq!(
            c.validate("hc").unwrap_err().path,
            "hc.custom_health_check.typed_config"
        );
        for (name, want) in [
            ("meshgate.health_checkers.dubbo", RpcHeartbeat::Dubbo),
            ("meshgate.health_checkers.bolt", RpcHeartbeat::Bolt),
        ] {
            let c = parse(&format!("{base}custom_health_check: {{name: {name}}}\n"));
            c.validate("hc").unwrap();
            let h = c.custom_health_check.as_ref().unwrap();
            assert_eq!(h.heartbeat("hc").unwrap(), want);
        }
        let c = parse(&format!(
            "{base}tcp_health_check: {{send: {{text: '0g'}}}}\n"
        ));
        assert_eq!(
            c.validate("hc").unwrap_err().path,
            "hc.tcp_health_check.send.text"
        );
        let c = parse(&format!(
            "{base}http_health_check: {{path: /h, expected_statuses: [{{start: 200, end: 100}}]}}\n"
        ));
        assert!(c.validate("hc").is_err());
        let e = serde_yaml::from_str::<HealthCheckConfig>(&format!(
            "{base}transport_socket_match_criteria: {{}}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("transport_socket_match_criteria"));
    }
}
