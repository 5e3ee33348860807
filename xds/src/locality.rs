//! Translation of Envoy's localities: `LocalityLbEndpoints.locality` and
//! `load_balancing_weight` onto each endpoint (`EndpointConfig.locality`,
//! `locality_weight`), and `CommonLbConfig.locality_weighted_lb_config`.
//! `zone_aware_lb_config` stays refused by name.

use crate::translate::{R, err, join};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use meshgate_core::config::locality as lc;

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

/// `CommonLbConfig.locality_config_specifier`.
pub(crate) fn weighted(
    c: &mut cds::cluster::CommonLbConfig,
    path: &str,
) -> R<Option<lc::LocalityWeightedLbConfig>> {
    use cds::cluster::common_lb_config::LocalityConfigSpecifier as S;
    match c.locality_config_specifier.take() {
        None => Ok(None),
        Some(S::LocalityWeightedLbConfig(_)) => Ok(Some(lc::LocalityWeightedLbConfig {})),
        Some(S::ZoneAwareLbConfig(_)) => err(
            join(path, "zone_aware_lb_config"),
            "not supported (use locality_weighted_lb_config)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::google::protobuf::UInt32Value;

    #[test]
    fn localities_and_weights_are_translated_and_zone_aware_refused() {
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
        let mut c = cds::cluster::CommonLbConfig {
            locality_config_specifier: Some(S::ZoneAwareLbConfig(Default::default())),
            ..Default::default()
        };
        let e = weighted(&mut c, "common_lb_config").unwrap_err();
        assert_eq!(e.0, "common_lb_config.zone_aware_lb_config");
    }
}
