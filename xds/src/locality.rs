//! Translation of Envoy's localities: `LocalityLbEndpoints.locality` and
//! `load_balancing_weight` onto each endpoint (`EndpointConfig.locality`,
//! `locality_weight`), and `CommonLbConfig.locality_weighted_lb_config`.
//! `zone_aware_lb_config` (`routing_enabled`, `min_cluster_size`,
//! `fail_traffic_on_panic`) is translated too.

use crate::translate::{R, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use meshgate_core::config::locality as lc;
use meshgate_core::config::priority as pc;
use meshgate_core::config::zone as zc;

/// Takes the locality identity and weight out of `loc` (`path` names it).
pub(crate) fn take(
    loc: &mut eds::LocalityLbEndpoints,
    path: &str,
) -> R<(Option<lc::Locality>, Option<u32>)> {
    let locality = loc.locality.take().map(|l| lc::Locality {
        region: l.region,
        zone: l.zone,
        sub_zone: l.sub_zone,
    });
    let weight = match loc.load_balancing_weight.take() {
        Some(w) if w.value == 0 => {
            return err(join(path, "load_balancing_weight"), "must be >= 1");
        }
        w => w.map(|w| w.value),
    };
    Ok((locality, weight))
}

/// `CommonLbConfig.locality_config_specifier`: locality-weighted or
/// zone-aware.
pub(crate) fn weighted(
    c: &mut cds::cluster::CommonLbConfig,
    path: &str,
) -> R<(
    Option<lc::LocalityWeightedLbConfig>,
    Option<zc::ZoneAwareLbConfig>,
)> {
    use cds::cluster::common_lb_config::LocalityConfigSpecifier as S;
    match c.locality_config_specifier.take() {
        None => Ok((None, None)),
        Some(S::LocalityWeightedLbConfig(_)) => Ok((Some(lc::LocalityWeightedLbConfig {}), None)),
        Some(S::ZoneAwareLbConfig(mut z)) => {
            let zp = join(path, "zone_aware_lb_config");
            let routing_enabled = match z.routing_enabled.take() {
                Some(p) if !(0.0..=100.0).contains(&p.value) => {
                    return err(
                        join(&zp, "routing_enabled.value"),
                        "must be a percent in [0, 100]",
                    );
                }
                p => p.map(|p| pc::Percent { value: p.value }),
            };
            let min_cluster_size = z.min_cluster_size.take().map(|v| v.value);
            let fail_traffic_on_panic = std::mem::take(&mut z.fail_traffic_on_panic);
            rest(&z, &zp)?;
            Ok((
                None,
                Some(zc::ZoneAwareLbConfig {
                    routing_enabled,
                    min_cluster_size,
                    fail_traffic_on_panic,
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::google::protobuf::UInt32Value;

    #[test]
    fn localities_weights_and_zone_aware_are_translated() {
        let mut loc = eds::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r".into(),
                zone: "a".into(),
                ..Default::default()
            }),
            load_balancing_weight: Some(UInt32Value { value: 3 }),
            ..Default::default()
        };
        let (l, w) = take(&mut loc, "endpoints[0]").unwrap();
        assert_eq!(l.unwrap().zone, "a");
        assert_eq!(w, Some(3));
        assert_eq!(loc, eds::LocalityLbEndpoints::default());
        let mut loc = eds::LocalityLbEndpoints {
            load_balancing_weight: Some(UInt32Value { value: 0 }),
            ..Default::default()
        };
        let e = take(&mut loc, "endpoints[0]").unwrap_err();
        assert_eq!(e.0, "endpoints[0].load_balancing_weight");
        use cds::cluster::common_lb_config::LocalityConfigSpecifier as S;
        let zone = |routing: f64| cds::cluster::CommonLbConfig {
            locality_config_specifier: Some(S::ZoneAwareLbConfig(
                cds::cluster::common_lb_config::ZoneAwareLbConfig {
                    routing_enabled: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                        value: routing,
                    }),
                    min_cluster_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: 2,
                    }),
                    fail_traffic_on_panic: true,
                },
            )),
            ..Default::default()
        };
        let (w, z) = weighted(&mut zone(50.0), "common_lb_config").unwrap();
        assert!(w.is_none());
        let z = z.unwrap();
        assert_eq!(z.routing_enabled.unwrap().value, 50.0);
        assert_eq!(z.min_cluster_size, Some(2));
        assert!(z.fail_traffic_on_panic);
        let e = weighted(&mut zone(101.0), "common_lb_config").unwrap_err();
        assert_eq!(
            e.0,
            "common_lb_config.zone_aware_lb_config.routing_enabled.value"
        );
    }
}
