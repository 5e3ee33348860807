//! Translation of a cluster's typed `load_balancing_policy` (Envoy's
//! `envoy.extensions.load_balancing_policies.*`) and of the older
//! `ring_hash_lb_config` / `maglev_lb_config` into meshgate's `lb_policy`
//! and `lb_config`. As in Envoy, the first policy in the list of a kind
//! meshgate has is used and the cluster's `lb_policy` enum is not read; a
//! list with none of them is refused. A used policy's fields that meshgate
//! cannot honour are refused by name, never skipped.

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use serde_json::{Value, json};

const ROUND_ROBIN: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const RANDOM: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random";
const RING_HASH: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";
const MAGLEV: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev";

/// The cluster's `load_balancing_policy`, when set: `(lb_policy,
/// lb_config)`. Setting it with the older `lb_config` oneof is refused.
pub(crate) fn translate(c: &mut cds::Cluster) -> R<Option<(&'static str, Value)>> {
    let Some(p) = c.load_balancing_policy.take() else {
        return Ok(None);
    };
    if c.lb_config.is_some() {
        return err(
            "load_balancing_policy",
            "set with the cluster's lb_config (round_robin_lb_config, ...): set one",
        );
    }
    // Envoy ignores `lb_policy` when the typed policy is set.
    c.lb_policy = 0;
    for (i, policy) in p.policies.iter().enumerate() {
        let path = format!("load_balancing_policy.policies[{i}].typed_extension_config");
        let Some(any) = policy
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return err(join(&path, "typed_config"), "required");
        };
        let path = join(&path, "typed_config");
        let bad = |e: crate::translate::DecodeError| (path.clone(), e.to_string());
        return Ok(Some(match any.type_url.as_str() {
            ROUND_ROBIN => {
                let mut m: lbp::round_robin::v3::RoundRobin =
                    decode(any, ROUND_ROBIN).map_err(bad)?;
                let ss = slow_start(
                    m.slow_start_config.take(),
                    &join(&path, "slow_start_config"),
                )?;
                rest(&m, &path)?;
                ("round_robin", ss)
            }
            LEAST_REQUEST => {
                let mut m: lbp::least_request::v3::LeastRequest =
                    decode(any, LEAST_REQUEST).map_err(bad)?;
                // meshgate's least request is the power of two choices
                // with Envoy's default bias (weight over active requests).
                if m.choice_count.take().is_some_and(|v| v.value != 2) {
                    return err(join(&path, "choice_count"), "only 2 (the default)");
                }
                if m.active_request_bias
                    .take()
                    .is_some_and(|b| b.default_value != 1.0)
                {
                    return err(join(&path, "active_request_bias"), "only 1.0 (the default)");
                }
                let ss = slow_start(
                    m.slow_start_config.take(),
                    &join(&path, "slow_start_config"),
                )?;
                rest(&m, &path)?;
                ("least_request", ss)
            }
            RANDOM => {
                let m: lbp::random::v3::Random = decode(any, RANDOM).map_err(bad)?;
                rest(&m, &path)?;
                ("random", Value::Null)
            }
            RING_HASH => {
                let mut m: lbp::ring_hash::v3::RingHash = decode(any, RING_HASH).map_err(bad)?;
                use lbp::ring_hash::v3::ring_hash::HashFunction;
                match HashFunction::try_from(std::mem::take(&mut m.hash_function)) {
                    Ok(HashFunction::DefaultHash | HashFunction::XxHash) => {}
                    _ => return err(join(&path, "hash_function"), "only XX_HASH"),
                }
                let cfg = ring_sizes(
                    m.minimum_ring_size.take().map(|v| v.value),
                    m.maximum_ring_size.take().map(|v| v.value),
                );
                rest(&m, &path)?;
                ("ring_hash", cfg)
            }
            MAGLEV => {
                let mut m: lbp::maglev::v3::Maglev = decode(any, MAGLEV).map_err(bad)?;
                let cfg = m
                    .table_size
                    .take()
                    .map_or(Value::Null, |v| json!({"table_size": v.value}));
                rest(&m, &path)?;
                ("maglev", cfg)
            }
            // Not a kind meshgate has: the next one in the list.
            _ => continue,
        }));
    }
    err(
        "load_balancing_policy.policies",
        "none of round_robin, least_request, random, ring_hash, maglev",
    )
}

/// The older `ring_hash_lb_config` and `maglev_lb_config` of a cluster
/// whose `lb_policy` is RING_HASH or MAGLEV; `Null` when neither is set
/// (any other `lb_config` kind is left for its own translation).
pub(crate) fn legacy(c: &mut cds::Cluster) -> R<Value> {
    use cds::cluster::LbConfig;
    match c.lb_config.take() {
        Some(LbConfig::RingHashLbConfig(mut r)) => {
            use cds::cluster::ring_hash_lb_config::HashFunction;
            let path = "ring_hash_lb_config";
            match HashFunction::try_from(std::mem::take(&mut r.hash_function)) {
                Ok(HashFunction::XxHash) => {}
                _ => return err(join(path, "hash_function"), "only XX_HASH"),
            }
            let cfg = ring_sizes(
                r.minimum_ring_size.take().map(|v| v.value),
                r.maximum_ring_size.take().map(|v| v.value),
            );
            rest(&r, path)?;
            Ok(cfg)
        }
        Some(LbConfig::MaglevLbConfig(mut m)) => {
            let cfg = m
                .table_size
                .take()
                .map_or(Value::Null, |v| json!({"table_size": v.value}));
            rest(&m, "maglev_lb_config")?;
            Ok(cfg)
        }
        other => {
            c.lb_config = other;
            Ok(Value::Null)
        }
    }
}

/// A policy's `slow_start_config` as meshgate's `lb_config`.
fn slow_start(s: Option<lbp::common::v3::SlowStartConfig>, path: &str) -> R<Value> {
    let Some(mut s) = s else {
        return Ok(Value::Null);
    };
    let out = crate::slow_start::config(
        s.slow_start_window.take(),
        s.aggression.take(),
        s.min_weight_percent.take(),
        path,
    )?;
    rest(&s, path)?;
    Ok(out)
}

/// `minimum_ring_size` and `maximum_ring_size` as `ring_hash`'s
/// `lb_config` (`Null` when neither is set).
fn ring_sizes(min: Option<u64>, max: Option<u64>) -> Value {
    let mut cfg = serde_json::Map::new();
    if let Some(v) = min {
        cfg.insert("minimum_ring_size".into(), json!(v));
    }
    if let Some(v) = max {
        cfg.insert("maximum_ring_size".into(), json!(v));
    }
    if cfg.is_empty() {
        Value::Null
    } else {
        Value::Object(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::google::protobuf;
    use prost::Message;

    fn policy(type_url: &str, value: Vec<u8>) -> cds::load_balancing_policy::Policy {
        cds::load_balancing_policy::Policy {
            typed_extension_config: Some(core3::TypedExtensionConfig {
                name: "p".into(),
                typed_config: Some(protobuf::Any {
                    type_url: type_url.into(),
                    value,
                }),
            }),
        }
    }

    fn cluster(policies: Vec<cds::load_balancing_policy::Policy>) -> cds::Cluster {
        cds::Cluster {
            lb_policy: cds::cluster::LbPolicy::RingHash as i32,
            load_balancing_policy: Some(cds::LoadBalancingPolicy { policies }),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_known_policy_is_used_with_its_config() {
        let unknown = policy("type.googleapis.com/x.Unknown", vec![]);
        let lr = lbp::least_request::v3::LeastRequest {
            choice_count: Some(protobuf::UInt32Value { value: 2 }),
            slow_start_config: Some(lbp::common::v3::SlowStartConfig {
                slow_start_window: Some(protobuf::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = cluster(vec![
            unknown,
            policy(LEAST_REQUEST, lr.encode_to_vec()),
            policy(RANDOM, vec![]),
        ]);
        let (lb, cfg) = translate(&mut c).unwrap().unwrap();
        assert_eq!(lb, "least_request");
        assert_eq!(
            cfg,
            json!({"slow_start_config": {"slow_start_window": "3000ms"}})
        );
        // The enum is not read once the typed policy is set.
        assert_eq!(c, cds::Cluster::default());

        let rh = lbp::ring_hash::v3::RingHash {
            minimum_ring_size: Some(protobuf::UInt64Value { value: 4096 }),
            ..Default::default()
        };
        let mut c = cluster(vec![policy(RING_HASH, rh.encode_to_vec())]);
        let (lb, cfg) = translate(&mut c).unwrap().unwrap();
        assert_eq!((lb, cfg), ("ring_hash", json!({"minimum_ring_size": 4096})));

        let mg = lbp::maglev::v3::Maglev {
            table_size: Some(protobuf::UInt64Value { value: 5 }),
            ..Default::default()
        };
        let mut c = cluster(vec![policy(MAGLEV, mg.encode_to_vec())]);
        let (lb, cfg) = translate(&mut c).unwrap().unwrap();
        assert_eq!((lb, cfg), ("maglev", json!({"table_size": 5})));
    }

    #[test]
    fn what_meshgate_cannot_honour_is_refused_by_name() {
        let lr = lbp::least_request::v3::LeastRequest {
            choice_count: Some(protobuf::UInt32Value { value: 3 }),
            ..Default::default()
        };
        let mut c = cluster(vec![policy(LEAST_REQUEST, lr.encode_to_vec())]);
        let e = translate(&mut c).unwrap_err();
        assert_eq!(
            e.0,
            "load_balancing_policy.policies[0].typed_extension_config.typed_config.choice_count"
        );
        let rh = lbp::ring_hash::v3::RingHash {
            hash_function: lbp::ring_hash::v3::ring_hash::HashFunction::MurmurHash2 as i32,
            ..Default::default()
        };
        let mut c = cluster(vec![policy(RING_HASH, rh.encode_to_vec())]);
        assert!(translate(&mut c).unwrap_err().0.ends_with("hash_function"));
        let mut c = cluster(vec![policy("type.googleapis.com/x.Unknown", vec![])]);
        assert_eq!(
            translate(&mut c).unwrap_err().0,
            "load_balancing_policy.policies"
        );
    }

    #[test]
    fn legacy_ring_hash_and_maglev_configs() {
        let mut c = cds::Cluster {
            lb_config: Some(cds::cluster::LbConfig::RingHashLbConfig(
                cds::cluster::RingHashLbConfig {
                    maximum_ring_size: Some(protobuf::UInt64Value { value: 8192 }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(legacy(&mut c).unwrap(), json!({"maximum_ring_size": 8192}));
        assert_eq!(c, cds::Cluster::default());
    }
}
