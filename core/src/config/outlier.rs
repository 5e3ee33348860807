//! Outlier detection of a cluster (`ClusterConfig::outlier_detection`):
//! Envoy's `config.cluster.v3.OutlierDetection`, its field names and
//! defaults. The detector itself is `crate::cluster::outlier`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Envoy's `OutlierDetection`. Every field has Envoy's default; the
/// percentages (`enforcing_*`, `max_ejection_percent`,
/// `failure_percentage_threshold`) are 0..=100.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetectionConfig {
    /// Consecutive 5xx (and, unless split, local-origin failures) that
    /// eject an endpoint.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (and, unless split, local-origin failures).
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (connect failure, reset, timeout);
    /// only with `split_external_local_origin_errors`.
    pub consecutive_local_origin_failure: u32,
    /// Count local-origin failures apart from the upstream's 5xx.
    pub split_external_local_origin_errors: bool,
    /// Period of the success-rate and failure-percentage analysis and of
    /// un-ejection.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Ejection time, multiplied by the times the endpoint was ejected.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// Cap of the ejection time.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Up to this much random time is added to each ejection.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    /// Eject one endpoint even past `max_ejection_percent` when none is.
    pub always_eject_one_host: bool,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// An endpoint is an outlier below mean - (factor / 1000) * stdev.
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// A passing active health check returns an ejected endpoint at once
    /// (Envoy's default: true). Only meaningful with `health_checks`.
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}

impl OutlierDetectionConfig {
    /// Checks the ranges; the error names the field (relative to the
    /// `outlier_detection` block).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let percents = [
            ("max_ejection_percent", self.max_ejection_percent),
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            (
                "enforcing_consecutive_gateway_failure",
                self.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                self.enforcing_consecutive_local_origin_failure,
            ),
            ("enforcing_success_rate", self.enforcing_success_rate),
            (
                "enforcing_local_origin_success_rate",
                self.enforcing_local_origin_success_rate,
            ),
            (
                "failure_percentage_threshold",
                self.failure_percentage_threshold,
            ),
            (
                "enforcing_failure_percentage",
                self.enforcing_failure_percentage,
            ),
            (
                "enforcing_failure_percentage_local_origin",
                self.enforcing_failure_percentage_local_origin,
            ),
        ];
        for (field, v) in percents {
            if v > 100 {
                return Err((field, format!("{v} is not a percentage (0..=100)")));
            }
        }
        if self.interval.is_zero() {
            return Err(("interval", "must be > 0".into()));
        }
        if self.base_ejection_time.is_zero() {
            return Err(("base_ejection_time", "must be > 0".into()));
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err((
                "max_ejection_time",
                "must be >= base_ejection_time (as Envoy requires)".into(),
            ));
        }
        Ok(())
    }
}
