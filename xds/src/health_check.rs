//! xDS translation of a Cluster's `health_checks` (Envoy's
//! `config.core.v3.HealthCheck`) into meshgate's `HealthCheckConfig`.
//! Every field is taken out of the message and what is left is refused
//! by name (`rest`): `alt_port`, `event_log_path`,
//! `tls_options`, `transport_socket_match_criteria`, HTTP `send`/`receive`,
//! custom checkers other than meshgate's Dubbo/Bolt heartbeats... are not
//! supported.

use crate::translate::{R, duration, err, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::core::v3::health_check as hc;
use meshgate_core::config::health_check::{
    CodecClientType, CustomHealthCheck, EndpointHealthCheckConfig, GrpcHealthCheck, HeaderValue,
    HeaderValueOption, HealthCheckConfig, HttpHealthCheck, Payload, StatusRange, TcpHealthCheck,
};
use std::time::Duration;

/// Translates a Cluster's `health_checks` (`path` names the field).
pub(crate) fn health_checks(
    list: Vec<core3::HealthCheck>,
    path: &str,
) -> R<Vec<HealthCheckConfig>> {
    list.into_iter()
        .enumerate()
        .map(|(i, h)| health_check(h, &format!("{path}[{i}]")))
        .collect()
}

fn opt_duration(
    d: Option<envoy_types::pb::google::protobuf::Duration>,
    path: &str,
) -> R<Option<Duration>> {
    d.map(|d| duration(&d, path)).transpose()
}

fn payload(p: hc::Payload, path: &str) -> R<Payload> {
    Ok(Payload {
        text: match p.payload {
            Some(hc::payload::Payload::Text(t)) => t,
            Some(hc::payload::Payload::Binary(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
            None => return err(path, "payload is empty"),
        },
    })
}

fn ranges(v: Vec<envoy_types::pb::envoy::r#type::v3::Int64Range>) -> Vec<StatusRange> {
    v.into_iter()
        .map(|r| StatusRange {
            start: r.start,
            end: r.end,
        })
        .collect()
}

fn health_check(mut h: core3::HealthCheck, path: &str) -> R<HealthCheckConfig> {
    let f = |n: &str| format!("{path}.{n}");
    let Some(timeout) = opt_duration(h.timeout.take(), &f("timeout"))? else {
        return err(f("timeout"), "required");
    };
    let Some(interval) = opt_duration(h.interval.take(), &f("interval"))? else {
        return err(f("interval"), "required");
    };
    let Some(unhealthy_threshold) = h.unhealthy_threshold.take().map(|v| v.value) else {
        return err(f("unhealthy_threshold"), "required");
    };
    let Some(healthy_threshold) = h.healthy_threshold.take().map(|v| v.value) else {
        return err(f("healthy_threshold"), "required");
    };
    let mut out = HealthCheckConfig {
        timeout,
        interval,
        interval_jitter: opt_duration(h.interval_jitter.take(), &f("interval_jitter"))?,
        interval_jitter_percent: std::mem::take(&mut h.interval_jitter_percent),
        initial_jitter: opt_duration(h.initial_jitter.take(), &f("initial_jitter"))?,
        unhealthy_threshold,
        healthy_threshold,
        no_traffic_interval: opt_duration(h.no_traffic_interval.take(), &f("no_traffic_interval"))?,
        no_traffic_healthy_interval: opt_duration(
            h.no_traffic_healthy_interval.take(),
            &f("no_traffic_healthy_interval"),
        )?,
        unhealthy_interval: opt_duration(h.unhealthy_interval.take(), &f("unhealthy_interval"))?,
        unhealthy_edge_interval: opt_duration(
            h.unhealthy_edge_interval.take(),
            &f("unhealthy_edge_interval"),
        )?,
        healthy_edge_interval: opt_duration(
            h.healthy_edge_interval.take(),
            &f("healthy_edge_interval"),
        )?,
        always_log_health_check_failures: std::mem::take(&mut h.always_log_health_check_failures),
        reuse_connection: h.reuse_connection.take().map(|v| v.value),
        http_health_check: None,
        tcp_health_check: None,
        grpc_health_check: None,
        custom_health_check: None,
    };
    match h.health_checker.take() {
        None => {
            return err(
                path,
                "one of http_health_check, tcp_health_check, grpc_health_check is required",
            );
        }
        Some(hc::HealthChecker::HttpHealthCheck(mut x)) => {
            let p = f("http_health_check");
            let codec = match x.codec_client_type {
                0 => CodecClientType::HTTP1,
                1 => CodecClientType::HTTP2,
                // Only on an http3 cluster (checked when the cluster is built).
                2 => CodecClientType::HTTP3,
                c => {
                    return err(
                        format!("{p}.codec_client_type"),
                        format!("unknown codec client type {c}"),
                    );
                }
            };
            x.codec_client_type = 0;
            let method = match std::mem::take(&mut x.method) {
                0 => None,
                m => Some(
                    core3::RequestMethod::try_from(m)
                        .map_err(|_| (format!("{p}.method"), format!("unknown method {m}")))?
                        .as_str_name()
                        .to_string(),
                ),
            };
            let mut headers = Vec::new();
            for (i, mut o) in std::mem::take(&mut x.request_headers_to_add)
                .into_iter()
                .enumerate()
            {
                let hp = format!("{p}.request_headers_to_add[{i}]");
                let Some(mut hv) = o.header.take() else {
                    return err(format!("{hp}.header"), "required");
                };
                let key = std::mem::take(&mut hv.key);
                let value = std::mem::take(&mut hv.value);
                rest(&hv, &format!("{hp}.header"))?;
                // Appending or not is the same on a request meshgate builds.
                #[allow(deprecated)]
                {
                    o.append = None;
                }
                o.append_action = 0;
                rest(&o, &hp)?;
                headers.push(HeaderValueOption {
                    header: HeaderValue { key, value },
                });
            }
            let cfg = HttpHealthCheck {
                host: std::mem::take(&mut x.host),
                path: std::mem::take(&mut x.path),
                method,
                request_headers_to_add: headers,
                expected_statuses: ranges(std::mem::take(&mut x.expected_statuses)),
                retriable_statuses: ranges(std::mem::take(&mut x.retriable_statuses)),
                codec_client_type: codec,
            };
            rest(&x, &p)?;
            out.http_health_check = Some(cfg);
        }
        Some(hc::HealthChecker::TcpHealthCheck(mut x)) => {
            let p = f("tcp_health_check");
            let send = x
                .send
                .take()
                .map(|s| payload(s, &format!("{p}.send")))
                .transpose()?;
            let receive = std::mem::take(&mut x.receive)
                .into_iter()
                .enumerate()
                .map(|(i, r)| payload(r, &format!("{p}.receive[{i}]")))
                .collect::<R<Vec<_>>>()?;
            rest(&x, &p)?;
            out.tcp_health_check = Some(TcpHealthCheck { send, receive });
        }
        Some(hc::HealthChecker::GrpcHealthCheck(mut x)) => {
            let p = f("grpc_health_check");
            let cfg = GrpcHealthCheck {
                service_name: std::mem::take(&mut x.service_name),
                authority: std::mem::take(&mut x.authority),
            };
            rest(&x, &p)?;
            out.grpc_health_check = Some(cfg);
        }
        Some(hc::HealthChecker::CustomHealthCheck(mut x)) => {
            // meshgate's RPC heartbeats by name; they take no config, so a
            // `typed_config` is refused by `rest`.
            let p = f("custom_health_check");
            let cfg = CustomHealthCheck {
                name: std::mem::take(&mut x.name),
                typed_config: None,
            };
            rest(&x, &p)?;
            out.custom_health_check = Some(cfg);
        }
    }
    rest(&h, path)?;
    out.validate(path).map_err(|e| (e.path, e.message))?;
    Ok(out)
}

/// An EDS endpoint's `health_check_config` (`port_value`, `hostname`);
/// `address` and `disable_active_health_check` are refused by name.
pub(crate) fn endpoint_health_check_config(
    mut c: envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig,
    path: &str,
) -> R<EndpointHealthCheckConfig> {
    let out = EndpointHealthCheckConfig {
        port_value: std::mem::take(&mut c.port_value),
        hostname: std::mem::take(&mut c.hostname),
    };
    if let Err(e) = out.port(path) {
        return err(e.path, e.message);
    }
    rest(&c, path)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig as EpHc;

    fn base(checker: hc::HealthChecker) -> core3::HealthCheck {
        core3::HealthCheck {
            timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            unhealthy_threshold: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
            healthy_threshold: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
            health_checker: Some(checker),
            ..Default::default()
        }
    }

    /// `interval_jitter`, `interval_jitter_percent` and `initial_jitter`
    /// reach the checker's config; unset, there is no jitter; a negative
    /// duration is refused by its field's path.
    #[test]
    fn jitter_fields_translate() {
        use envoy_types::pb::google::protobuf::Duration as PbDuration;
        let tcp = || hc::HealthChecker::TcpHealthCheck(Default::default());
        let mut h = base(tcp());
        h.interval_jitter = Some(PbDuration {
            seconds: 0,
            nanos: 300_000_000,
        });
        h.interval_jitter_percent = 30;
        h.initial_jitter = Some(PbDuration {
            seconds: 1,
            nanos: 500_000_000,
        });
        let c = health_checks(vec![h], "health_checks").unwrap();
        assert_eq!(c[0].interval_jitter, Some(Duration::from_millis(300)));
        assert_eq!(c[0].interval_jitter_percent, 30);
        assert_eq!(c[0].initial_jitter, Some(Duration::from_millis(1500)));
        let c = health_checks(vec![base(tcp())], "health_checks").unwrap();
        assert_eq!(
            (
                c[0].interval_jitter,
                c[0].interval_jitter_percent,
                c[0].initial_jitter
            ),
            (None, 0, None)
        );
        let mut h = base(tcp());
        h.initial_jitter = Some(PbDuration {
            seconds: -1,
            nanos: 0,
        });
        let e = health_checks(vec![h], "health_checks").unwrap_err();
        assert_eq!(e.0, "health_checks[0].initial_jitter");
    }

    #[test]
    fn rpc_heartbeat_checkers_translate_and_others_are_named() {
        let custom = |name: &str, typed: bool| {
            hc::HealthChecker::CustomHealthCheck(hc::CustomHealthCheck {
                name: name.into(),
                config_type: typed
                    .then(|| hc::custom_health_check::ConfigType::TypedConfig(Default::default())),
            })
        };
        let c = health_checks(
            vec![base(custom("meshgate.health_checkers.bolt", false))],
            "health_checks",
        )
        .unwrap();
        assert_eq!(
            c[0].custom_health_check.as_ref().unwrap().name,
            "meshgate.health_checkers.bolt"
        );
        let e = health_checks(
            vec![base(custom("envoy.health_checkers.redis", false))],
            "health_checks",
        )
        .unwrap_err();
        assert_eq!(e.0, "health_checks[0].custom_health_check.name");
        let e = health_checks(
            vec![base(custom("meshgate.health_checkers.dubbo", true))],
            "health_checks",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("health_checks[0].custom_health_check."),
            "{}",
            e.0
        );
    }

    #[test]
    fn endpoint_health_check_config_translates_and_refuses_the_rest() {
        let c = endpoint_health_check_config(
            EpHc {
                port_value: 9901,
                hostname: "h.example".into(),
                ..Default::default()
            },
            "ep.health_check_config",
        )
        .unwrap();
        assert_eq!((c.port_value, c.hostname.as_str()), (9901, "h.example"));
        let e = endpoint_health_check_config(
            EpHc {
                port_value: 70000,
                ..Default::default()
            },
            "ep.health_check_config",
        )
        .unwrap_err();
        assert_eq!(e.0, "ep.health_check_config.port_value");
        let e = endpoint_health_check_config(
            EpHc {
                disable_active_health_check: true,
                ..Default::default()
            },
            "ep.health_check_config",
        )
        .unwrap_err();
        assert_eq!(e.0, "ep.health_check_config.disable_active_health_check");
    }
}
