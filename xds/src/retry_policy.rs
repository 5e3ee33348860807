//! Translation of a route's or virtual host's `retry_policy`
//! (`envoy.config.route.v3.RetryPolicy`) into meshgate's
//! `RetryPolicyConfig`, and of a `hedge_policy`. Unsupported fields
//! (`retry_options_predicates`,
//! `refresh_cluster_on_retry`, a host predicate's typed config, a hedge
//! policy's `initial_requests` above 1 or `additional_request_chance`)
//! are refused by name.

use crate::translate::{R, duration, err, header_matcher, join, rest};
use envoy_types::pb::envoy::config::route::v3 as rds;
use meshgate_core::retry as rt;
use meshgate_core::router as rc;

pub(crate) fn translate(mut rp: rds::RetryPolicy, pp: &str) -> R<rc::RetryPolicyConfig> {
    let mut p = rc::RetryPolicyConfig {
        retry_on: std::mem::take(&mut rp.retry_on),
        ..Default::default()
    };
    if let Some(n) = rp.num_retries.take() {
        p.num_retries = n.value;
    }
    if let Some(d) = rp.per_try_timeout.take() {
        p.per_try_timeout = Some(duration(&d, &join(pp, "per_try_timeout"))?);
    }
    if let Some(d) = rp.per_try_idle_timeout.take() {
        p.per_try_idle_timeout = Some(duration(&d, &join(pp, "per_try_idle_timeout"))?);
    }
    for (i, c) in std::mem::take(&mut rp.retriable_status_codes)
        .into_iter()
        .enumerate()
    {
        p.retriable_status_codes.push(u16::try_from(c).map_err(|_| {
            (
                format!("{pp}.retriable_status_codes[{i}]"),
                "not a status code".to_string(),
            )
        })?);
    }
    if let Some(mut b) = rp.retry_back_off.take() {
        let bp = join(pp, "retry_back_off");
        if let Some(d) = b.base_interval.take() {
            p.retry_back_off.base_interval = duration(&d, &join(&bp, "base_interval"))?;
        }
        if let Some(d) = b.max_interval.take() {
            p.retry_back_off.max_interval = Some(duration(&d, &join(&bp, "max_interval"))?);
        }
        rest(&b, &bp)?;
    }
    for (i, h) in std::mem::take(&mut rp.retriable_headers)
        .into_iter()
        .enumerate()
    {
        p.retriable_headers
            .push(header_matcher(h, &format!("{pp}.retriable_headers[{i}]"))?);
    }
    for (i, h) in std::mem::take(&mut rp.retriable_request_headers)
        .into_iter()
        .enumerate()
    {
        p.retriable_request_headers.push(header_matcher(
            h,
            &format!("{pp}.retriable_request_headers[{i}]"),
        )?);
    }
    if let Some(mut rl) = rp.rate_limited_retry_back_off.take() {
        let rlp = join(pp, "rate_limited_retry_back_off");
        let mut c = rt::RateLimitedRetryBackOffConfig::default();
        for (i, mut h) in std::mem::take(&mut rl.reset_headers)
            .into_iter()
            .enumerate()
        {
            let hp = format!("{rlp}.reset_headers[{i}]");
            // ResetHeaderFormat: SECONDS = 0, UNIX_TIMESTAMP = 1.
            let format = match std::mem::take(&mut h.format) {
                0 => rt::ResetHeaderFormat::Seconds,
                1 => rt::ResetHeaderFormat::UnixTimestamp,
                f => return err(join(&hp, "format"), format!("unknown format {f}")),
            };
            c.reset_headers.push(rt::ResetHeaderConfig {
                name: std::mem::take(&mut h.name),
                format,
            });
            rest(&h, &hp)?;
        }
        if let Some(d) = rl.max_interval.take() {
            c.max_interval = Some(duration(&d, &join(&rlp, "max_interval"))?);
        }
        rest(&rl, &rlp)?;
        p.rate_limited_retry_back_off = Some(c);
    }
    for (i, mut h) in std::mem::take(&mut rp.retry_host_predicate)
        .into_iter()
        .enumerate()
    {
        let hp = format!("{pp}.retry_host_predicate[{i}]");
        p.retry_host_predicate.push(rt::RetryHostPredicateConfig {
            name: std::mem::take(&mut h.name),
        });
        // The previous_hosts config (`update_frequency`) is refused.
        rest(&h, &hp)?;
    }
    if let Some(mut pr) = rp.retry_priority.take() {
        let prp = join(pp, "retry_priority");
        let mut c = rt::RetryPriorityConfig {
            name: std::mem::take(&mut pr.name),
            typed_config: None,
        };
        if let Some(rds::retry_policy::retry_priority::ConfigType::TypedConfig(any)) =
            pr.config_type.take()
        {
            use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
            let tp = join(&prp, "typed_config");
            let m: PreviousPrioritiesConfig = crate::translate::decode(
                &any,
                "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            )
            .map_err(|e| (tp.clone(), e.to_string()))?;
            c.typed_config = Some(rt::PreviousPrioritiesConfig {
                type_url: None,
                update_frequency: m.update_frequency,
            });
        }
        rest(&pr, &prp)?;
        p.retry_priority = Some(c);
    }
    if rp.host_selection_retry_max_attempts != 0 {
        p.host_selection_retry_max_attempts =
            Some(std::mem::take(&mut rp.host_selection_retry_max_attempts));
    }
    rest(&rp, pp)?;
    Ok(p)
}

/// A route's or virtual host's `hedge_policy`: only
/// `hedge_on_per_try_timeout` is honoured.
pub(crate) fn hedge(h: rds::HedgePolicy, pp: &str) -> R<rt::HedgePolicyConfig> {
    if let Some(n) = h.initial_requests
        && n.value != 1
    {
        return err(
            join(pp, "initial_requests"),
            "only 1 is supported (meshgate hedges on per-try timeouts only)",
        );
    }
    if let Some(f) = h.additional_request_chance
        && f.numerator != 0
    {
        return err(
            join(pp, "additional_request_chance"),
            "not supported (meshgate hedges on per-try timeouts only)",
        );
    }
    Ok(rt::HedgePolicyConfig {
        hedge_on_per_try_timeout: h.hedge_on_per_try_timeout,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_translates_and_unsupported_fields_are_refused_by_name() {
        let rp = rds::RetryPolicy {
            retry_on: "5xx,refused-stream".into(),
            retry_host_predicate: vec![rds::retry_policy::RetryHostPredicate {
                name: rt::PREVIOUS_HOSTS.into(),
                ..Default::default()
            }],
            host_selection_retry_max_attempts: 3,
            rate_limited_retry_back_off: Some(rds::retry_policy::RateLimitedRetryBackOff {
                reset_headers: vec![rds::retry_policy::ResetHeader {
                    name: "retry-after".into(),
                    format: 0,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = translate(rp, "r").unwrap();
        assert_eq!(p.retry_host_predicate[0].name, rt::PREVIOUS_HOSTS);
        assert_eq!(p.host_selection_retry_max_attempts, Some(3));
        let rl = p.rate_limited_retry_back_off.unwrap();
        assert_eq!(rl.reset_headers[0].format, rt::ResetHeaderFormat::Seconds);
        let rp = rds::RetryPolicy {
            retry_on: "5xx".into(),
            retry_options_predicates: vec![Default::default()],
            ..Default::default()
        };
        assert_eq!(
            translate(rp, "r").unwrap_err().0,
            "r.retry_options_predicates"
        );
        use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
        let rp = rds::RetryPolicy {
            retry_on: "5xx".into(),
            retry_priority: Some(rds::retry_policy::RetryPriority {
                name: rt::PREVIOUS_PRIORITIES.into(),
                config_type: Some(rds::retry_policy::retry_priority::ConfigType::TypedConfig(
                    crate::fixtures::any(
                        "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                        &PreviousPrioritiesConfig {
                            update_frequency: 2,
                        },
                    ),
                )),
            }),
            ..Default::default()
        };
        let p = translate(rp, "r").unwrap();
        let pr = p.retry_priority.unwrap();
        assert_eq!(pr.name, rt::PREVIOUS_PRIORITIES);
        assert_eq!(pr.typed_config.unwrap().update_frequency, 2);
    }

    #[test]
    fn hedge_policy_and_per_try_idle_timeout_translate() {
        let rp = rds::RetryPolicy {
            retry_on: "5xx".into(),
            per_try_idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        };
        let p = translate(rp, "r").unwrap();
        assert_eq!(
            p.per_try_idle_timeout,
            Some(std::time::Duration::from_millis(200))
        );
        let h = hedge(
            rds::HedgePolicy {
                hedge_on_per_try_timeout: true,
                ..Default::default()
            },
            "h",
        )
        .unwrap();
        assert!(h.hedge_on_per_try_timeout);
        let e = hedge(
            rds::HedgePolicy {
                initial_requests: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
                ..Default::default()
            },
            "h",
        )
        .unwrap_err();
        assert_eq!(e.0, "h.initial_requests");
        let e = hedge(
            rds::HedgePolicy {
                additional_request_chance: Some(
                    envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                        numerator: 5,
                        denominator: 0,
                    },
                ),
                ..Default::default()
            },
            "h",
        )
        .unwrap_err();
        assert_eq!(e.0, "h.additional_request_chance");
    }
}
