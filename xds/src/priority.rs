//! Translation of Envoy's `Cluster.common_lb_config` (the panic threshold)
//! and `ClusterLoadAssignment.policy` (overprovisioning factor, drop
//! overloads, weighted priority health) into meshgate's `config::priority`,
//! for a CDS cluster's inline `load_assignment` and for an EDS
//! `ClusterLoadAssignment` (`assignment`). The other fields of both are
//! refused by name (`rest`). Endpoint priorities are translated with the
//! endpoints (`translate::endpoints`).

use crate::translate::{R, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::r#type::v3 as typev3;
use meshgate_core::config::EndpointConfig;
use meshgate_core::config::filters as fc;
use meshgate_core::config::priority as pc;

/// What an EDS `ClusterLoadAssignment` gives its cluster: the endpoints
/// and the `policy`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub endpoints: Vec<EndpointConfig>,
    pub policy: Option<pc::LoadAssignmentPolicy>,
}

/// An EDS `ClusterLoadAssignment`, its fields named from the resource.
pub(crate) fn assignment(mut cla: eds::ClusterLoadAssignment) -> R<Assignment> {
    let policy = policy(cla.policy.take(), "policy")?;
    let endpoints = crate::translate::endpoints(cla, "")?;
    Ok(Assignment { endpoints, policy })
}

/// `Cluster.common_lb_config`: `healthy_panic_threshold` only.
pub(crate) fn common_lb_config(
    c: Option<cds::cluster::CommonLbConfig>,
) -> R<Option<pc::CommonLbConfig>> {
    let Some(mut c) = c else { return Ok(None) };
    let path = "common_lb_config";
    let t = c.healthy_panic_threshold.take();
    let (locality_weighted_lb_config, zone_aware_lb_config) =
        crate::locality::weighted(&mut c, path)?;
    if let Some(t) = &t
        && !(0.0..=100.0).contains(&t.value)
    {
        return err(
            join(path, "healthy_panic_threshold.value"),
            "must be a percent in [0, 100]",
        );
    }
    rest(&c, path)?;
    Ok(Some(pc::CommonLbConfig {
        healthy_panic_threshold: t.map(|t| pc::Percent { value: t.value }),
        locality_weighted_lb_config,
        zone_aware_lb_config,
    }))
}

/// `ClusterLoadAssignment.policy` (`path` names it).
pub(crate) fn policy(
    p: Option<eds::cluster_load_assignment::Policy>,
    path: &str,
) -> R<Option<pc::LoadAssignmentPolicy>> {
    let Some(mut p) = p else { return Ok(None) };
    let overprovisioning_factor = match p.overprovisioning_factor.take() {
        Some(f) if f.value == 0 => {
            return err(join(path, "overprovisioning_factor"), "must be > 0");
        }
        f => f.map(|f| f.value),
    };
    let weighted_priority_health = std::mem::take(&mut p.weighted_priority_health);
    let mut drop_overloads = Vec::new();
    for (i, mut d) in std::mem::take(&mut p.drop_overloads)
        .into_iter()
        .enumerate()
    {
        let dp = join(path, &format!("drop_overloads[{i}]"));
        if i > 0 {
            return err(
                dp,
                "at most one drop_overload category is supported (as in Envoy)",
            );
        }
        let drop_percentage = percent(d.drop_percentage.take(), &join(&dp, "drop_percentage"))?;
        let category = std::mem::take(&mut d.category);
        if category.is_empty() {
            return err(join(&dp, "category"), "must not be empty");
        }
        rest(&d, &dp)?;
        drop_overloads.push(pc::DropOverload {
            category,
            drop_percentage,
        });
    }
    rest(&p, path)?;
    Ok(Some(pc::LoadAssignmentPolicy {
        overprovisioning_factor,
        drop_overloads,
        weighted_priority_health,
    }))
}

fn percent(p: Option<typev3::FractionalPercent>, path: &str) -> R<fc::FractionalPercent> {
    let Some(p) = p else {
        return err(path, "missing");
    };
    let denominator = match p.denominator {
        0 => fc::Denominator::Hundred,
        1 => fc::Denominator::TenThousand,
        2 => fc::Denominator::Million,
        _ => return err(join(path, "denominator"), "unknown value"),
    };
    Ok(fc::FractionalPercent {
        numerator: p.numerator,
        denominator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf;

    #[test]
    fn policy_and_panic_threshold_are_translated_and_the_rest_refused() {
        let p = policy(
            Some(eds::cluster_load_assignment::Policy {
                overprovisioning_factor: Some(protobuf::UInt32Value { value: 100 }),
                drop_overloads: vec![eds::cluster_load_assignment::policy::DropOverload {
                    category: "lb".into(),
                    drop_percentage: Some(typev3::FractionalPercent {
                        numerator: 50,
                        denominator: 0,
                    }),
                }],
                ..Default::default()
            }),
            "policy",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.overprovisioning_factor, Some(100));
        assert_eq!(p.drop_overloads[0].drop_percentage.per_million(), 500_000);
        let p = policy(
            Some(eds::cluster_load_assignment::Policy {
                weighted_priority_health: true,
                ..Default::default()
            }),
            "policy",
        )
        .unwrap()
        .unwrap();
        assert!(p.weighted_priority_health);
        let e = policy(
            Some(eds::cluster_load_assignment::Policy {
                endpoint_stale_after: Some(protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            "policy",
        )
        .unwrap_err();
        assert_eq!(e.0, "policy.endpoint_stale_after");

        let c = common_lb_config(Some(cds::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(typev3::Percent { value: 0.0 }),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(c.healthy_panic_threshold.unwrap().value, 0.0);
        let e = common_lb_config(Some(cds::cluster::CommonLbConfig {
            ignore_new_hosts_until_first_hc: true,
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.0, "common_lb_config.ignore_new_hosts_until_first_hc");
    }
}
