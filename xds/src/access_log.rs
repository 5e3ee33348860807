//! Translation of Envoy's `access_log` lists (HCM, TcpProxy) into
//! meshgate's (`meshgate_core::config::access_log`): the file, stdout and
//! stderr loggers with their formats (`log_format`, and the file logger's
//! older `format`, `json_format`, `typed_json_format`) and filters (the
//! same translation as local replies'), and the OpenTelemetry logger
//! (`otel`). Any other logger (gRPC, fluentd...) is refused with the
//! field named; so are filters and
//! formats meshgate does not build (checked again when the filter is
//! built, which NACKs the update).

use crate::translate::{R, decode, err, join, rest, struct_json};
use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use meshgate_core::config::access_log as cal;

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const OTEL: &str = "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig";

/// Translates an `access_log` list (`path` names the list).
pub(crate) fn access_logs(list: Vec<al::AccessLog>, path: &str) -> R<Vec<cal::AccessLog>> {
    list.into_iter()
        .enumerate()
        .map(|(i, l)| access_log(l, &format!("{path}[{i}]")))
        .collect()
}

fn json_map(
    s: &envoy_types::pb::google::protobuf::Struct,
    path: &str,
) -> R<serde_json::Map<String, serde_json::Value>> {
    match struct_json(s) {
        serde_json::Value::Object(m) => Ok(m),
        _ => err(path, "not an object"),
    }
}

#[allow(deprecated)]
fn access_log(mut l: al::AccessLog, path: &str) -> R<cal::AccessLog> {
    use al::access_log::ConfigType;
    let filter = match l.filter.take() {
        None => None,
        Some(f) => Some(crate::local_reply::access_log_filter(
            f,
            &join(path, "filter"),
        )?),
    };
    l.name.clear();
    let tp = join(path, "typed_config");
    let Some(ConfigType::TypedConfig(any)) = l.config_type.take() else {
        return err(tp, "missing typed_config");
    };
    let mut cfg = cal::LoggerConfig::default();
    let name = match any.type_url.as_str() {
        FILE => {
            use file::file_access_log::AccessLogFormat as F;
            let mut f: file::FileAccessLog =
                decode(&any, FILE).map_err(|e| (tp.clone(), e.to_string()))?;
            cfg.path = Some(std::mem::take(&mut f.path));
            match f.access_log_format.take() {
                None => {}
                Some(F::Format(s)) => cfg.format = Some(s),
                Some(F::JsonFormat(s)) => {
                    cfg.json_format = Some(json_map(&s, &join(&tp, "json_format"))?)
                }
                Some(F::TypedJsonFormat(s)) => {
                    cfg.typed_json_format = Some(json_map(&s, &join(&tp, "typed_json_format"))?)
                }
                Some(F::LogFormat(s)) => {
                    cfg.log_format = Some(crate::local_reply::format(s, &join(&tp, "log_format"))?)
                }
            }
            rest(&f, &tp)?;
            "envoy.access_loggers.file"
        }
        STDOUT => {
            use stream::stdout_access_log::AccessLogFormat as F;
            let mut f: stream::StdoutAccessLog =
                decode(&any, STDOUT).map_err(|e| (tp.clone(), e.to_string()))?;
            if let Some(F::LogFormat(s)) = f.access_log_format.take() {
                cfg.log_format = Some(crate::local_reply::format(s, &join(&tp, "log_format"))?);
            }
            rest(&f, &tp)?;
            "envoy.access_loggers.stdout"
        }
        STDERR => {
            use stream::stderr_access_log::AccessLogFormat as F;
            let mut f: stream::StderrAccessLog =
                decode(&any, STDERR).map_err(|e| (tp.clone(), e.to_string()))?;
            if let Some(F::LogFormat(s)) = f.access_log_format.take() {
                cfg.log_format = Some(crate::local_reply::format(s, &join(&tp, "log_format"))?);
            }
            rest(&f, &tp)?;
            "envoy.access_loggers.stderr"
        }
        OTEL => {
            otel(&any, &tp, &mut cfg)?;
            "envoy.access_loggers.open_telemetry"
        }
        other => {
            return err(
                tp,
                format!(
                    "access logger '{other}' not supported (FileAccessLog, StdoutAccessLog, StderrAccessLog, OpenTelemetryAccessLogConfig)"
                ),
            );
        }
    };
    rest(&l, path)?;
    Ok(cal::AccessLog {
        name: name.into(),
        filter,
        typed_config: cfg,
    })
}

/// `OpenTelemetryAccessLogConfig`: `grpc_service` (or the deprecated
/// `common_config.grpc_service`), `log_name`, `body` and `attributes`
/// (string values: format strings), `resource_attributes` (strings).
/// Everything else (http_service, formatters, custom tags, buffer
/// options, resource detectors, disable_builtin_labels...) is refused by
/// name.
#[allow(deprecated)]
fn otel(
    any: &envoy_types::pb::google::protobuf::Any,
    tp: &str,
    cfg: &mut cal::LoggerConfig,
) -> R<()> {
    use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3 as ot;
    use envoy_types::pb::opentelemetry::proto::common::v1 as oc;
    let mut o: ot::OpenTelemetryAccessLogConfig =
        decode(any, OTEL).map_err(|e| (tp.to_string(), e.to_string()))?;
    let string = |v: Option<oc::AnyValue>, path: &str| -> R<cal::OtelAnyValue> {
        match v.and_then(|v| v.value) {
            Some(oc::any_value::Value::StringValue(s)) => Ok(cal::OtelAnyValue { string_value: s }),
            _ => err(path, "only string_value is supported"),
        }
    };
    let list = |l: Option<oc::KeyValueList>, path: &str| -> R<Option<cal::OtelKeyValueList>> {
        let Some(l) = l else { return Ok(None) };
        let mut values = Vec::new();
        for (i, kv) in l.values.into_iter().enumerate() {
            let vp = format!("{path}.values[{i}].value");
            values.push(cal::OtelKeyValue {
                key: kv.key,
                value: string(kv.value, &vp)?,
            });
        }
        Ok(Some(cal::OtelKeyValueList { values }))
    };
    if let Some(g) = o.grpc_service.take() {
        cfg.grpc_service = Some(crate::tracing::grpc_service(g, &join(tp, "grpc_service"))?);
    }
    if let Some(mut c) = o.common_config.take() {
        let cp = join(tp, "common_config");
        let grpc_service = match c.grpc_service.take() {
            None => None,
            Some(g) => Some(crate::tracing::grpc_service(g, &join(&cp, "grpc_service"))?),
        };
        let log_name = std::mem::take(&mut c.log_name);
        // Envoy's only transport API version: nothing to carry.
        c.transport_api_version = 0;
        rest(&c, &cp)?;
        cfg.common_config = Some(cal::CommonGrpcAccessLogConfig {
            log_name,
            grpc_service,
        });
    }
    cfg.log_name = std::mem::take(&mut o.log_name);
    if let Some(b) = o.body.take() {
        cfg.body = Some(string(Some(b), &join(tp, "body"))?);
    }
    cfg.attributes = list(o.attributes.take(), &join(tp, "attributes"))?;
    cfg.resource_attributes = list(
        o.resource_attributes.take(),
        &join(tp, "resource_attributes"),
    )?;
    rest(&o, tp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    #[test]
    #[allow(deprecated)]
    fn file_and_stdout_loggers_translate_and_others_are_refused() {
        let f = file::FileAccessLog {
            path: "/tmp/a.log".into(),
            access_log_format: Some(file::file_access_log::AccessLogFormat::LogFormat(
                envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString {
                    format: Some(
                        envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::TextFormat(
                            "%RESPONSE_CODE%\n".into(),
                        ),
                    ),
                    ..Default::default()
                },
            )),
        };
        let l = al::AccessLog {
            name: "envoy.access_loggers.file".into(),
            filter: None,
            config_type: Some(al::access_log::ConfigType::TypedConfig(Any {
                type_url: FILE.into(),
                value: f.encode_to_vec(),
            })),
        };
        let out = access_logs(vec![l], "access_log").unwrap();
        assert_eq!(out[0].name, "envoy.access_loggers.file");
        assert_eq!(out[0].typed_config.path.as_deref(), Some("/tmp/a.log"));
        assert_eq!(
            out[0]
                .typed_config
                .log_format
                .as_ref()
                .unwrap()
                .text_format
                .as_deref(),
            Some("%RESPONSE_CODE%\n")
        );
        // The OpenTelemetry logger translates; a field it does not
        // implement is refused by name.
        use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3 as ot;
        let o = ot::OpenTelemetryAccessLogConfig {
            log_name: "gw".into(),
            stat_prefix: "x".into(),
            ..Default::default()
        };
        let otel = |o: &ot::OpenTelemetryAccessLogConfig| al::AccessLog {
            name: "envoy.access_loggers.open_telemetry".into(),
            filter: None,
            config_type: Some(al::access_log::ConfigType::TypedConfig(Any {
                type_url: OTEL.into(),
                value: o.encode_to_vec(),
            })),
        };
        let (field, _) = access_logs(vec![otel(&o)], "access_log").unwrap_err();
        assert_eq!(field, "access_log[0].typed_config.stat_prefix");
        let o = ot::OpenTelemetryAccessLogConfig {
            log_name: "gw".into(),
            ..Default::default()
        };
        let out = access_logs(vec![otel(&o)], "access_log").unwrap();
        assert_eq!(out[0].name, "envoy.access_loggers.open_telemetry");
        assert_eq!(out[0].typed_config.log_name, "gw");
    }
}
