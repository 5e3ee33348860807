//! Translation of Envoy's HTTP fault filter
//! (`envoy.extensions.filters.http.fault.v3.HTTPFault`, also as a
//! `typed_per_filter_config`) into meshgate's `fault` config. Fields
//! meshgate does not implement (`response_rate_limit`, `downstream_nodes`,
//! runtime keys, `filter_metadata`) are refused by name (`rest`).

use crate::translate::header_matcher;
use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::fault as fcfg;
use meshgate_core::config::filters as fc;
use serde_json::Value;

pub(crate) const HTTP: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The filter's Envoy name (also the `typed_per_filter_config` key).
pub(crate) const HTTP_NAME: &str = "envoy.filters.http.fault";

/// The `HTTPFault` as the `fault` filter's config.
pub(crate) fn http_config(any: &protobuf::Any, path: &str) -> R<Value> {
    let f: fault::HttpFault = decode(any, HTTP).map_err(|e| (path.to_string(), e.to_string()))?;
    serde_json::to_value(http_fault(f, path)?).map_err(|e| (path.to_string(), e.to_string()))
}

pub(crate) fn percent(
    p: Option<typev3::FractionalPercent>,
    path: &str,
) -> R<Option<fc::FractionalPercent>> {
    let Some(p) = p else { return Ok(None) };
    let denominator = match p.denominator {
        0 => fc::Denominator::Hundred,
        1 => fc::Denominator::TenThousand,
        2 => fc::Denominator::Million,
        _ => return err(join(path, "denominator"), "unknown value"),
    };
    Ok(Some(fc::FractionalPercent {
        numerator: p.numerator,
        denominator,
    }))
}

fn http_fault(mut f: fault::HttpFault, path: &str) -> R<fcfg::FaultConfig> {
    let delay = match f.delay.take() {
        None => None,
        Some(mut d) => {
            use common::fault_delay::FaultDelaySecifier as S;
            let dp = join(path, "delay");
            let mut out = fcfg::FaultDelayConfig {
                percentage: percent(d.percentage.take(), &join(&dp, "percentage"))?,
                ..Default::default()
            };
            match d.fault_delay_secifier.take() {
                Some(S::FixedDelay(x)) => {
                    out.fixed_delay = Some(duration(&x, &join(&dp, "fixed_delay"))?)
                }
                Some(S::HeaderDelay(h)) => {
                    rest(&h, &join(&dp, "header_delay"))?;
                    out.header_delay = Some(fcfg::FromHeader {});
                }
                None => return err(dp, "set fixed_delay or header_delay"),
            }
            rest(&d, &dp)?;
            Some(out)
        }
    };
    let abort = match f.abort.take() {
        None => None,
        Some(mut a) => {
            use fault::fault_abort::ErrorType as E;
            let ap = join(path, "abort");
            let mut out = fcfg::FaultAbortConfig {
                percentage: percent(a.percentage.take(), &join(&ap, "percentage"))?,
                response_body: std::mem::take(&mut a.response_body),
                ..Default::default()
            };
            match a.error_type.take() {
                Some(E::HttpStatus(s)) => out.http_status = Some(s),
                Some(E::GrpcStatus(s)) => out.grpc_status = Some(s),
                Some(E::HeaderAbort(h)) => {
                    rest(&h, &join(&ap, "header_abort"))?;
                    out.header_abort = Some(fcfg::FromHeader {});
                }
                None => return err(ap, "set http_status, grpc_status or header_abort"),
            }
            rest(&a, &ap)?;
            Some(out)
        }
    };
    let mut headers = Vec::new();
    for (i, h) in std::mem::take(&mut f.headers).into_iter().enumerate() {
        headers.push(header_matcher(h, &join(path, &format!("headers[{i}]")))?);
    }
    // Stats only: meshgate keeps no per-downstream-cluster fault stats.
    f.disable_downstream_cluster_stats = false;
    let out = fcfg::FaultConfig {
        delay,
        abort,
        upstream_cluster: std::mem::take(&mut f.upstream_cluster),
        headers,
        max_active_faults: f.max_active_faults.take().map(|v| v.value),
    };
    rest(&f, path)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any<M: Message>(m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: HTTP.into(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn http_fault_translates_delay_abort_and_limits() {
        let f = fault::HttpFault {
            delay: Some(common::FaultDelay {
                percentage: Some(typev3::FractionalPercent {
                    numerator: 5,
                    denominator: 1,
                }),
                fault_delay_secifier: Some(common::fault_delay::FaultDelaySecifier::FixedDelay(
                    protobuf::Duration {
                        seconds: 0,
                        nanos: 250_000_000,
                    },
                )),
            }),
            abort: Some(fault::FaultAbort {
                error_type: Some(fault::fault_abort::ErrorType::GrpcStatus(14)),
                ..Default::default()
            }),
            upstream_cluster: "c".into(),
            max_active_faults: Some(protobuf::UInt32Value { value: 3 }),
            disable_downstream_cluster_stats: true,
            ..Default::default()
        };
        let v = http_config(&any(&f), "f").unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "delay": {"fixed_delay": "250ms",
                    "percentage": {"numerator": 5, "denominator": "TEN_THOUSAND"}},
                "abort": {"grpc_status": 14},
                "upstream_cluster": "c",
                "max_active_faults": 3,
            })
        );
        let _: fcfg::FaultConfig = meshgate_core::config::parse_typed(&v).unwrap();
    }

    #[test]
    fn unsupported_fields_are_named() {
        let f = fault::HttpFault {
            response_rate_limit: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            http_config(&any(&f), "f").unwrap_err().0,
            "f.response_rate_limit"
        );
        let f = fault::HttpFault {
            delay_percent_runtime: "k".into(),
            ..Default::default()
        };
        assert_eq!(
            http_config(&any(&f), "f").unwrap_err().0,
            "f.delay_percent_runtime"
        );
        let f = fault::HttpFault {
            abort: Some(fault::FaultAbort::default()),
            ..Default::default()
        };
        assert_eq!(http_config(&any(&f), "f").unwrap_err().0, "f.abort");
    }
}
