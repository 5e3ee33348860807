//! Translation of the span exporters other than OTLP/gRPC: an
//! `OpenTelemetryConfig.http_service` (OTLP/HTTP) and the Zipkin provider
//! (`ZipkinConfig`, HTTP_JSON only) into meshgate's
//! `meshgate_core::config::trace_export`. Fields meshgate does not do
//! (HTTP_PROTO/GRPC endpoints, `collector_service`, W3C propagation
//! option, timestamp trace ids, header formatters) are refused by name.

use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::trace::v3 as trace3;
use meshgate_core::config::trace_export as te;

pub(crate) const ZIPKIN_CONFIG: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";

/// `OpenTelemetryConfig.http_service`.
pub(crate) fn http_service(mut h: core3::HttpService, path: &str) -> R<te::HttpService> {
    let up = join(path, "http_uri");
    let Some(mut u) = h.http_uri.take() else {
        return err(up, "missing http_uri");
    };
    let cluster = match u.http_upstream_type.take() {
        Some(core3::http_uri::HttpUpstreamType::Cluster(c)) => c,
        None => return err(join(&up, "cluster"), "missing cluster"),
    };
    let timeout = match u.timeout.take() {
        Some(d) => Some(duration(&d, &join(&up, "timeout"))?),
        None => None,
    };
    let uri = std::mem::take(&mut u.uri);
    rest(&u, &up)?;
    let mut headers = Vec::new();
    for (i, mut o) in std::mem::take(&mut h.request_headers_to_add)
        .into_iter()
        .enumerate()
    {
        let p = format!("{path}.request_headers_to_add[{i}]");
        let Some(mut hv) = o.header.take() else {
            return err(join(&p, "header"), "missing header");
        };
        let key = std::mem::take(&mut hv.key);
        let value = std::mem::take(&mut hv.value);
        rest(&hv, &join(&p, "header"))?;
        // Appending or not is the same on a request meshgate builds.
        #[allow(deprecated)]
        {
            o.append = None;
        }
        o.append_action = 0;
        rest(&o, &p)?;
        headers.push(te::HeaderValueOption {
            header: te::HeaderValue { key, value },
        });
    }
    rest(&h, path)?;
    Ok(te::HttpService {
        http_uri: te::HttpUri {
            uri,
            cluster,
            timeout,
        },
        request_headers_to_add: headers,
    })
}

/// A Zipkin provider's `typed_config` as meshgate's `ZipkinConfig` JSON.
pub(crate) fn zipkin(
    typed: &envoy_types::pb::google::protobuf::Any,
    path: &str,
) -> R<serde_json::Value> {
    let mut z: trace3::ZipkinConfig =
        decode(typed, ZIPKIN_CONFIG).map_err(|e| (path.to_string(), e.to_string()))?;
    let version = match std::mem::take(&mut z.collector_endpoint_version) {
        0 | 1 => "HTTP_JSON",
        2 => "HTTP_PROTO",
        3 => "GRPC",
        v => {
            return err(
                join(path, "collector_endpoint_version"),
                format!("unknown value {v}"),
            );
        }
    };
    #[allow(deprecated)]
    let split = std::mem::take(&mut z.split_spans_for_request);
    let cfg = te::ZipkinConfig {
        collector_cluster: std::mem::take(&mut z.collector_cluster),
        collector_endpoint: std::mem::take(&mut z.collector_endpoint),
        collector_endpoint_version: Some(version.to_string()),
        collector_hostname: std::mem::take(&mut z.collector_hostname),
        trace_id_128bit: std::mem::take(&mut z.trace_id_128bit),
        // Envoy's default is true.
        shared_span_context: Some(z.shared_span_context.take().is_none_or(|b| b.value)),
        split_spans_for_request: split,
        service_name: String::new(),
    };
    rest(&z, path)?;
    serde_json::to_value(&cfg).map_err(|e| (path.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::any;
    use envoy_types::pb::google::protobuf::BoolValue;

    #[test]
    fn zipkin_is_translated_with_envoy_defaults() {
        let z = trace3::ZipkinConfig {
            collector_cluster: "zipkin".into(),
            collector_endpoint: "/api/v2/spans".into(),
            trace_id_128bit: true,
            ..Default::default()
        };
        let v = zipkin(&any(ZIPKIN_CONFIG, &z), "p").unwrap();
        assert_eq!(v["collector_cluster"], "zipkin");
        assert_eq!(v["collector_endpoint_version"], "HTTP_JSON");
        assert_eq!(v["trace_id_128bit"], true);
        // Unset is Envoy's default, true (which core then refuses by name).
        assert_eq!(v["shared_span_context"], true);
        let z = trace3::ZipkinConfig {
            collector_endpoint_version: 2,
            shared_span_context: Some(BoolValue { value: false }),
            ..Default::default()
        };
        let v = zipkin(&any(ZIPKIN_CONFIG, &z), "p").unwrap();
        assert_eq!(v["collector_endpoint_version"], "HTTP_PROTO");
        assert_eq!(v["shared_span_context"], false);
        let z = trace3::ZipkinConfig {
            timestamp_trace_ids: true,
            ..Default::default()
        };
        let (field, _) = zipkin(&any(ZIPKIN_CONFIG, &z), "p").unwrap_err();
        assert_eq!(field, "p.timestamp_trace_ids");
    }

    #[test]
    fn http_service_is_translated_and_formatters_refused() {
        let h = core3::HttpService {
            http_uri: Some(core3::HttpUri {
                uri: "http://c:4318/v1/traces".into(),
                http_upstream_type: Some(core3::http_uri::HttpUpstreamType::Cluster("c".into())),
                timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
            }),
            request_headers_to_add: vec![core3::HeaderValueOption {
                header: Some(core3::HeaderValue {
                    key: "x-api-key".into(),
                    value: "k".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            formatters: vec![],
        };
        let mut bad = h.clone();
        let t = http_service(h, "p").unwrap();
        assert_eq!(t.http_uri.cluster, "c");
        assert_eq!(t.http_uri.uri, "http://c:4318/v1/traces");
        assert_eq!(t.http_uri.timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(t.request_headers_to_add[0].header.key, "x-api-key");
        bad.formatters = vec![core3::TypedExtensionConfig::default()];
        let (field, _) = http_service(bad, "p").unwrap_err();
        assert_eq!(field, "p.formatters");
    }
}
