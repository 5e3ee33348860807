//! Config of Envoy-style access logs (`config.accesslog.v3.AccessLog`),
//! shared by the `proxy` filter (HCM `access_log`), `tcp_proxy` and the
//! xDS translator (xds/src/access_log.rs); compiled and written by
//! filters/src/access_log. Filters are Envoy's `AccessLogFilter`
//! (crate::config::local_reply, shared with local replies); formats are
//! Envoy's `SubstitutionFormatString` or the older `FileAccessLog` fields.

use crate::config::local_reply::{AccessLogFilter, SubstitutionFormatString};
use serde::{Deserialize, Deserializer, Serialize};

/// One access log: where lines go (`name`), which streams (`filter`) and
/// in what form (`typed_config`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `envoy.access_loggers.file`, `envoy.access_loggers.stdout` or
    /// `envoy.access_loggers.stderr` (or `file`, `stdout`, `stderr`).
    pub name: String,
    /// Only streams the filter matches are logged (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
    /// The logger's config (Envoy's `FileAccessLog` / `StdoutAccessLog`).
    #[serde(default)]
    pub typed_config: LoggerConfig,
}

/// Envoy's `FileAccessLog` (`path` only for the file logger). At most one
/// format; none gives Envoy's default text format.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<SubstitutionFormatString>,
    /// A text format (Envoy's older `format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A JSON format whose values are all strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    /// A JSON format whose lone operators keep their type (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_json_format: Option<serde_json::Map<String, serde_json::Value>>,
    /// `envoy.access_loggers.open_telemetry` (Envoy's
    /// `OpenTelemetryAccessLogConfig`): the collector, Envoy's newer
    /// field (exactly one of this and `common_config.grpc_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<crate::config::tracing::GrpcService>,
    /// The log's name (resource attribute `log_name`), Envoy's newer field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_name: String,
    /// Envoy's older (deprecated) place of `log_name` and `grpc_service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_config: Option<CommonGrpcAccessLogConfig>,
    /// The record's body: `{string_value: FORMAT}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<OtelAnyValue>,
    /// The record's attributes: `{values: [{key, value: {string_value: FORMAT}}]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<OtelKeyValueList>,
    /// The resource's attributes (literal strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<OtelKeyValueList>,
}

/// Envoy's `CommonGrpcAccessLogConfig`: the collector (a meshgate
/// cluster) and the log's name (resource attribute `log_name`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonGrpcAccessLogConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<crate::config::tracing::GrpcService>,
}

/// OpenTelemetry's `AnyValue`, string form only (a format string).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtelAnyValue {
    pub string_value: String,
}

/// OpenTelemetry's `KeyValueList`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtelKeyValueList {
    #[serde(default)]
    pub values: Vec<OtelKeyValue>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtelKeyValue {
    pub key: String,
    pub value: OtelAnyValue,
}

/// meshgate's original shorthand: one JSON object per request to `path`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogPath {
    /// A file (appended to), or `/dev/stdout`.
    pub path: String,
}

/// The `access_log` of the `proxy` filter: Envoy's list of access logs,
/// or meshgate's `{path: FILE}` shorthand.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AccessLogs {
    Path(AccessLogPath),
    List(Vec<AccessLog>),
}

impl<'de> Deserialize<'de> for AccessLogs {
    /// By shape, so that an error inside an entry keeps its own message
    /// (an untagged enum would only say that no variant matched).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    out.push(
                        serde_json::from_value(item)
                            .map_err(|e| D::Error::custom(format!("[{i}]: {e}")))?,
                    );
                }
                Ok(AccessLogs::List(out))
            }
            v @ serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(AccessLogs::Path)
                .map_err(|e| D::Error::custom(e.to_string())),
            _ => Err(D::Error::custom(
                "expected a list of access logs, or {path: FILE}",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_shorthand_parse_and_round_trip() {
        let l: AccessLogs = serde_json::from_value(serde_json::json!([{
            "name": "envoy.access_loggers.file",
            "filter": {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500}}}},
            "typed_config": {"path": "/tmp/a.log", "log_format": {"text_format": "%RESPONSE_CODE%\n"}}
        }]))
        .unwrap();
        let AccessLogs::List(v) = &l else {
            panic!("{l:?}")
        };
        assert_eq!(v[0].typed_config.path.as_deref(), Some("/tmp/a.log"));
        let back: AccessLogs = serde_json::from_value(serde_json::to_value(&l).unwrap()).unwrap();
        assert!(matches!(back, AccessLogs::List(v) if v.len() == 1));
        let p: AccessLogs = serde_json::from_value(serde_json::json!({"path": "/x"})).unwrap();
        assert!(matches!(p, AccessLogs::Path(AccessLogPath { path }) if path == "/x"));
        let e =
            serde_json::from_value::<AccessLogs>(serde_json::json!([{"name": "f", "bogus": 1}]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("[0]") && e.contains("bogus"), "{e}");
    }
}
