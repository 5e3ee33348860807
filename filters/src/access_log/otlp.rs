//! `envoy.access_loggers.open_telemetry` (Envoy's
//! `OpenTelemetryAccessLogConfig`): each entry becomes an OTLP log record
//! whose body and attributes are format strings (the engine of the other
//! loggers), exported to the collector cluster of
//! `common_config.grpc_service` with `LogsService/Export` by core's OTLP
//! exporter (`meshgate_core::trace::export::Exporter`, the one spans use:
//! a bounded queue, batches sent off the request path, drops counted in
//! `meshgate_access_log_otlp_dropped_total`).

use crate::format::{Ctx, Format};
use meshgate_core::BuildError;
use meshgate_core::config::access_log as cfg;
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::trace::export::Exporter;
use meshgate_core::trace::otlp_logs::{LogRecord, OtlpLogsGrpc};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Records sent in one export call.
const BATCH: usize = 512;
/// One export call's bound unless `grpc_service.timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct OtlpLogger {
    exporter: Exporter<LogRecord>,
    body: Option<Format>,
    attributes: Vec<(String, Format)>,
}

impl OtlpLogger {
    /// `tp` is the logger's `typed_config` path.
    pub(crate) fn build(
        t: &cfg::LoggerConfig,
        tp: &str,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        for (set, f) in [
            (t.path.is_some(), "path"),
            (t.log_format.is_some(), "log_format"),
            (t.format.is_some(), "format"),
            (t.json_format.is_some(), "json_format"),
            (t.typed_json_format.is_some(), "typed_json_format"),
        ] {
            if set {
                return Err(BuildError::new(
                    format!("{tp}.{f}"),
                    "not a field of the OpenTelemetry access logger (body, attributes)",
                ));
            }
        }
        let common = t.common_config.as_ref();
        let (g, gp) = match (
            &t.grpc_service,
            common.and_then(|c| c.grpc_service.as_ref()),
        ) {
            (Some(g), None) => (g, format!("{tp}.grpc_service")),
            (None, Some(g)) => (g, format!("{tp}.common_config.grpc_service")),
            (Some(_), Some(_)) => {
                return Err(BuildError::new(
                    format!("{tp}.common_config.grpc_service"),
                    "set grpc_service or common_config.grpc_service, not both",
                ));
            }
            (None, None) => {
                return Err(BuildError::new(
                    format!("{tp}.grpc_service"),
                    "the OpenTelemetry access logger needs grpc_service (envoy_grpc: a cluster)",
                ));
            }
        };
        let cluster = ctx.cluster(
            &format!("{gp}.envoy_grpc.cluster_name"),
            &g.envoy_grpc.cluster_name,
        )?;
        let authority = if g.envoy_grpc.authority.is_empty() {
            g.envoy_grpc.cluster_name.clone()
        } else {
            g.envoy_grpc.authority.clone()
        };
        let log_name = match common {
            Some(c) if t.log_name.is_empty() => c.log_name.as_str(),
            _ => t.log_name.as_str(),
        };
        let mut resource = Vec::new();
        if !log_name.is_empty() {
            resource.push(("log_name".to_string(), log_name.to_string()));
        }
        for kv in t.resource_attributes.iter().flat_map(|l| &l.values) {
            resource.push((kv.key.clone(), kv.value.string_value.clone()));
        }
        let body = match &t.body {
            None => None,
            Some(b) => Some(Format::text(
                &b.string_value,
                &format!("{tp}.body.string_value"),
            )?),
        };
        let mut attributes = Vec::new();
        for (i, kv) in t.attributes.iter().flat_map(|l| &l.values).enumerate() {
            let f = Format::text(
                &kv.value.string_value,
                &format!("{tp}.attributes.values[{i}].value.string_value"),
            )?;
            attributes.push((kv.key.clone(), f));
        }
        let exporter = Exporter::with_transport(
            cluster,
            Arc::new(OtlpLogsGrpc::new(authority, resource)),
            BATCH,
            g.timeout.unwrap_or(DEFAULT_TIMEOUT),
            names::ACCESS_LOG_OTLP_EXPORTED_TOTAL,
            names::ACCESS_LOG_OTLP_DROPPED_TOTAL,
        );
        Ok(Self {
            exporter,
            body,
            attributes,
        })
    }

    pub(crate) fn reads_upstream_local(&self) -> bool {
        self.body.as_ref().is_some_and(|f| f.reads_upstream_local())
            || self
                .attributes
                .iter()
                .any(|(_, f)| f.reads_upstream_local())
    }

    /// Formats the entry and queues it (never waits; a full queue drops
    /// it, counted).
    pub(crate) fn log(&self, ctx: &Ctx<'_>) {
        let start = SystemTime::now()
            .checked_sub(ctx.info.start.elapsed())
            .unwrap_or_else(SystemTime::now);
        let time_unix_nanos = start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.exporter.submit(LogRecord {
            time_unix_nanos,
            body: self.body.as_ref().map(|f| f.render(ctx)),
            attributes: self
                .attributes
                .iter()
                .map(|(k, f)| (k.clone(), f.render(ctx)))
                .collect(),
        });
    }
}
