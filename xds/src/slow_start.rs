//! Translation of `Cluster.round_robin_lb_config` /
//! `least_request_lb_config` (their `slow_start_config`) into the cluster's
//! `lb_config` (`meshgate_core::lb::slow_start`). Other fields of those
//! (`choice_count`, `active_request_bias`) and the other lb_config kinds
//! are left in place, so the caller's `rest` refuses them by name.

use crate::translate::{R, duration, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use serde_json::{Value, json};

/// Takes the slow start config out of `c.lb_config`: the `lb_config` value.
pub(crate) fn lb_config(c: &mut cds::Cluster) -> R<Value> {
    use cds::cluster::LbConfig;
    let (ssc, path) = match c.lb_config.take() {
        Some(LbConfig::RoundRobinLbConfig(mut rr)) => {
            let s = rr.slow_start_config.take();
            rest(&rr, "round_robin_lb_config")?;
            (s, "round_robin_lb_config.slow_start_config")
        }
        Some(LbConfig::LeastRequestLbConfig(mut lr)) => {
            let s = lr.slow_start_config.take();
            rest(&lr, "least_request_lb_config")?;
            (s, "least_request_lb_config.slow_start_config")
        }
        other => {
            c.lb_config = other;
            return Ok(Value::Null);
        }
    };
    let Some(mut s) = ssc else {
        return Ok(Value::Null);
    };
    let out = config(
        s.slow_start_window.take(),
        s.aggression.take(),
        s.min_weight_percent.take(),
        path,
    )?;
    rest(&s, path)?;
    Ok(out)
}

/// A `slow_start_config`'s fields (the cluster's and the typed policies'
/// messages carry the same ones) as meshgate's `lb_config`.
pub(crate) fn config(
    window: Option<envoy_types::pb::google::protobuf::Duration>,
    aggression: Option<envoy_types::pb::envoy::config::core::v3::RuntimeDouble>,
    min_weight_percent: Option<envoy_types::pb::envoy::r#type::v3::Percent>,
    path: &str,
) -> R<Value> {
    let window = match window {
        Some(d) => duration(&d, &join(path, "slow_start_window"))?,
        None => return err(join(path, "slow_start_window"), "required"),
    };
    let mut out = json!({ "slow_start_window": format!("{}ms", window.as_millis()) });
    // No runtime layer: the aggression's default value is used.
    if let Some(a) = aggression {
        out["aggression"] = json!(a.default_value);
    }
    if let Some(p) = min_weight_percent {
        out["min_weight_percent"] = json!(p.value);
    }
    Ok(json!({ "slow_start_config": out }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::google::protobuf::Duration;
    use envoy_types::pb::google::protobuf::UInt32Value;

    #[test]
    fn slow_start_is_translated_and_the_rest_refused() {
        let mut c = cds::Cluster {
            lb_config: Some(cds::cluster::LbConfig::RoundRobinLbConfig(
                cds::cluster::RoundRobinLbConfig {
                    slow_start_config: Some(cds::cluster::SlowStartConfig {
                        slow_start_window: Some(Duration {
                            seconds: 2,
                            nanos: 0,
                        }),
                        aggression: Some(core::RuntimeDouble {
                            default_value: 2.0,
                            runtime_key: "k".into(),
                        }),
                        min_weight_percent: None,
                    }),
                },
            )),
            ..Default::default()
        };
        let v = lb_config(&mut c).unwrap();
        assert_eq!(
            v,
            json!({"slow_start_config": {"slow_start_window": "2000ms", "aggression": 2.0}})
        );
        assert_eq!(c, cds::Cluster::default());
        let mut c = cds::Cluster {
            lb_config: Some(cds::cluster::LbConfig::LeastRequestLbConfig(
                cds::cluster::LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: 3 }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let e = lb_config(&mut c).unwrap_err();
        assert_eq!(e.0, "least_request_lb_config.choice_count");
    }
}
