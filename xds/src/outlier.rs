//! `Cluster.outlier_detection` (Envoy's `config.cluster.v3.OutlierDetection`)
//! to meshgate's `OutlierDetectionConfig`: each supported field taken out,
//! anything left set (`monitors`, `detect_degraded_hosts`) refused by name.

use crate::translate::{R, duration, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use meshgate_core::config::outlier::OutlierDetectionConfig;

pub(crate) fn outlier_detection(
    mut o: cds::OutlierDetection,
    path: &str,
) -> R<OutlierDetectionConfig> {
    let mut c = OutlierDetectionConfig::default();
    macro_rules! u32s {
        ($($f:ident),*) => {$(
            if let Some(v) = o.$f.take() {
                c.$f = v.value;
            }
        )*};
    }
    u32s!(
        consecutive_5xx,
        consecutive_gateway_failure,
        consecutive_local_origin_failure,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_consecutive_gateway_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_success_rate,
        enforcing_local_origin_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume
    );
    macro_rules! durations {
        ($($f:ident),*) => {$(
            if let Some(d) = o.$f.take() {
                c.$f = duration(&d, &join(path, stringify!($f)))?;
            }
        )*};
    }
    durations!(
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter
    );
    c.split_external_local_origin_errors =
        std::mem::take(&mut o.split_external_local_origin_errors);
    if let Some(v) = o.always_eject_one_host.take() {
        c.always_eject_one_host = v.value;
    }
    if let Some(v) = o.successful_active_health_check_uneject_host.take() {
        c.successful_active_health_check_uneject_host = v.value;
    }
    rest(&o, path)?;
    if let Err((field, msg)) = c.validate() {
        return err(join(path, field), msg);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf;

    #[test]
    fn fields_translate_with_envoy_defaults_and_unsupported_ones_are_named() {
        let o = cds::OutlierDetection {
            consecutive_5xx: Some(protobuf::UInt32Value { value: 3 }),
            interval: Some(protobuf::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            split_external_local_origin_errors: true,
            max_ejection_percent: Some(protobuf::UInt32Value { value: 50 }),
            ..Default::default()
        };
        let c = outlier_detection(o, "outlier_detection").unwrap();
        assert_eq!(c.consecutive_5xx, 3);
        assert_eq!(c.interval, std::time::Duration::from_millis(200));
        assert!(c.split_external_local_origin_errors);
        assert_eq!(c.max_ejection_percent, 50);
        assert_eq!(c.enforcing_consecutive_gateway_failure, 0);
        assert_eq!(c.success_rate_stdev_factor, 1900);

        assert!(c.successful_active_health_check_uneject_host);
        let o = cds::OutlierDetection {
            successful_active_health_check_uneject_host: Some(protobuf::BoolValue { value: false }),
            ..Default::default()
        };
        let c = outlier_detection(o, "outlier_detection").unwrap();
        assert!(!c.successful_active_health_check_uneject_host);
        let o = cds::OutlierDetection {
            enforcing_success_rate: Some(protobuf::UInt32Value { value: 101 }),
            ..Default::default()
        };
        let e = outlier_detection(o, "outlier_detection").unwrap_err();
        assert_eq!(e.0, "outlier_detection.enforcing_success_rate");
    }
}
