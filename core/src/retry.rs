//! The parts of a route's retry policy beyond `retry_on` and the
//! exponential back-off (those are `forward::ForwardPolicy`): which
//! responses are retriable (Envoy's `retry_on` response classes,
//! `retriable_headers`, gRPC statuses), which requests may be retried at
//! all (`retriable_request_headers`), the back-off a rate-limited answer
//! asks for (`rate_limited_retry_back_off`) and the `previous_hosts` host
//! predicate. Their config types live here too, used by
//! `router::RetryPolicyConfig`. The retry loop itself is
//! `forward::retrying`; the concurrency limit of retries is the cluster's
//! breaker (`cluster::breaker`).

use crate::forward::{ForwardPolicy, RetryOn};
use crate::router::HeaderMatcher;
use crate::router::HeaderMatcherConfig;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Envoy's name of the only host predicate meshgate knows.
pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// Envoy's `RetryPolicy.RateLimitedRetryBackOff`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitedRetryBackOffConfig {
    pub reset_headers: Vec<ResetHeaderConfig>,
    /// Cap of a back-off read from a header; default 300s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_interval: Option<Duration>,
}

/// Envoy's `RetryPolicy.ResetHeader`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResetHeaderConfig {
    pub name: String,
    #[serde(default)]
    pub format: ResetHeaderFormat,
}

/// Envoy's `RetryPolicy.ResetHeaderFormat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ResetHeaderFormat {
    /// Seconds to wait (`Retry-After: 2`).
    #[default]
    #[serde(rename = "SECONDS")]
    Seconds,
    /// A Unix time in seconds (`X-RateLimit-Reset: 1700000000`).
    #[serde(rename = "UNIX_TIMESTAMP")]
    UnixTimestamp,
}

/// Envoy's `RetryPolicy.retry_host_predicate[]` entry: only
/// `envoy.retry_host_predicates.previous_hosts` is known.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryHostPredicateConfig {
    pub name: String,
}

/// Envoy's name of the only retry priority meshgate knows.
pub const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// Envoy's `RetryPolicy.RetryPriority`: only
/// `envoy.retry_priorities.previous_priorities`, whose `typed_config` is a
/// `PreviousPrioritiesConfig`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPriorityConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<PreviousPrioritiesConfig>,
}

/// Envoy's `PreviousPrioritiesConfig`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousPrioritiesConfig {
    /// The type URL, as in Envoy's YAML; ignored.
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub type_url: Option<String>,
    /// Every this many tries, the priorities tried so far are excluded
    /// (> 0).
    #[serde(default)]
    pub update_frequency: i32,
}

/// Envoy's `HedgePolicy` (a route's or virtual host's `hedge_policy`):
/// only `hedge_on_per_try_timeout` is honoured; `initial_requests` above
/// 1 and a non-zero `additional_request_chance` are refused by name.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HedgePolicyConfig {
    /// Must be 1 (Envoy's default) when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_requests: Option<u32>,
    /// Must be 0 when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_request_chance: Option<crate::config::filters::FractionalPercent>,
    /// When a try's per-try timeout fires, a retry is sent without
    /// cancelling it; the first good response wins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hedge_on_per_try_timeout: bool,
}

/// Checks a `hedge_policy` at `path`; `hedge_on_per_try_timeout`.
pub fn hedge(path: &str, c: &HedgePolicyConfig) -> Result<bool, crate::error::BuildError> {
    if c.initial_requests.is_some_and(|n| n != 1) {
        return Err(crate::error::BuildError::new(
            format!("{path}.initial_requests"),
            "only 1 is supported (meshgate hedges on per-try timeouts only)",
        ));
    }
    if c.additional_request_chance
        .as_ref()
        .is_some_and(|f| f.numerator != 0)
    {
        return Err(crate::error::BuildError::new(
            format!("{path}.additional_request_chance"),
            "not supported (meshgate hedges on per-try timeouts only)",
        ));
    }
    Ok(c.hedge_on_per_try_timeout)
}

/// The compiled `rate_limited_retry_back_off`: its reset headers (with
/// their format) and the cap of what they ask for.
pub type RateLimited = (Box<[(HeaderName, ResetHeaderFormat)]>, Duration);

/// The compiled extras of a retry policy.
#[derive(Debug, Default, Clone)]
pub struct RetryRules {
    pub retriable_headers: Box<[HeaderMatcher]>,
    pub retriable_request_headers: Box<[HeaderMatcher]>,
    /// Reset headers and the cap of what they ask for.
    pub rate_limited: Option<RateLimited>,
    /// `previous_hosts`: a retry never goes to an endpoint tried before.
    pub previous_hosts: bool,
    /// `previous_priorities`' `update_frequency`: retries avoid the
    /// priorities tried before.
    pub previous_priorities: Option<u32>,
}

/// Builds a header matcher list; errors name the entry's field.
pub fn matchers(
    path: &str,
    list: &[HeaderMatcherConfig],
) -> Result<Box<[HeaderMatcher]>, crate::error::BuildError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            HeaderMatcher::build(c).map_err(|(f, m)| {
                let p = format!("{path}[{i}]");
                crate::error::BuildError::new(if f.is_empty() { p } else { format!("{p}.{f}") }, m)
            })
        })
        .collect()
}

/// Compiles the extras of a retry policy at `path`.
pub fn rules(
    path: &str,
    rp: &crate::router::RetryPolicyConfig,
) -> Result<RetryRules, crate::error::BuildError> {
    let mut previous_hosts = false;
    for (i, p) in rp.retry_host_predicate.iter().enumerate() {
        if p.name != PREVIOUS_HOSTS {
            return Err(crate::error::BuildError::new(
                format!("{path}.retry_host_predicate[{i}].name"),
                format!(
                    "unknown host predicate '{}' (known: {PREVIOUS_HOSTS})",
                    p.name
                ),
            ));
        }
        previous_hosts = true;
    }
    if let Some(n) = rp.host_selection_retry_max_attempts
        && n < 1
    {
        return Err(crate::error::BuildError::new(
            format!("{path}.host_selection_retry_max_attempts"),
            "must be >= 1",
        ));
    }
    let previous_priorities = match &rp.retry_priority {
        None => None,
        Some(p) => {
            if p.name != PREVIOUS_PRIORITIES {
                return Err(crate::error::BuildError::new(
                    format!("{path}.retry_priority.name"),
                    format!(
                        "unknown retry priority '{}' (known: {PREVIOUS_PRIORITIES})",
                        p.name
                    ),
                ));
            }
            let f = p.typed_config.as_ref().map_or(0, |c| c.update_frequency);
            if f < 1 {
                return Err(crate::error::BuildError::new(
                    format!("{path}.retry_priority.typed_config.update_frequency"),
                    "must be >= 1",
                ));
            }
            Some(f as u32)
        }
    };
    Ok(RetryRules {
        previous_priorities,
        retriable_headers: matchers(&format!("{path}.retriable_headers"), &rp.retriable_headers)?,
        retriable_request_headers: matchers(
            &format!("{path}.retriable_request_headers"),
            &rp.retriable_request_headers,
        )?,
        rate_limited: match &rp.rate_limited_retry_back_off {
            Some(c) => Some(rate_limited(
                &format!("{path}.rate_limited_retry_back_off"),
                c,
            )?),
            None => None,
        },
        previous_hosts,
    })
}

/// Checks and compiles a `rate_limited_retry_back_off`.
pub fn rate_limited(
    path: &str,
    c: &RateLimitedRetryBackOffConfig,
) -> Result<RateLimited, crate::error::BuildError> {
    if c.reset_headers.is_empty() {
        return Err(crate::error::BuildError::new(
            format!("{path}.reset_headers"),
            "at least one reset header",
        ));
    }
    let mut headers = Vec::with_capacity(c.reset_headers.len());
    for (i, h) in c.reset_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            crate::error::BuildError::new(
                format!("{path}.reset_headers[{i}].name"),
                format!("invalid header name '{}'", h.name),
            )
        })?;
        headers.push((name, h.format));
    }
    let max = c.max_interval.unwrap_or(Duration::from_secs(300));
    if max.is_zero() {
        return Err(crate::error::BuildError::new(
            format!("{path}.max_interval"),
            "must be > 0",
        ));
    }
    Ok((headers.into(), max))
}

/// Envoy's `PreviousPrioritiesRetryPriority`: the priorities a retry
/// avoids. `attempted` holds the priority of each try so far (in order);
/// every `update_frequency` tries the excluded set becomes the priorities
/// attempted; when that would exclude every priority of the cluster,
/// nothing is excluded (Envoy resets).
#[derive(Debug, Default)]
pub struct PreviousPriorities {
    attempted: Vec<u32>,
    excluded: Vec<u32>,
}

impl PreviousPriorities {
    /// Notes the priority of a try.
    pub fn attempted(&mut self, priority: u32) {
        self.attempted.push(priority);
    }

    /// The priorities the next try avoids, given the cluster's
    /// endpoints' priorities.
    pub fn excluded(&mut self, update_frequency: u32, all: &[u32]) -> &[u32] {
        let n = self.attempted.len();
        let f = update_frequency.max(1) as usize;
        if n >= f && n.is_multiple_of(f) {
            let mut ex = self.attempted.clone();
            ex.sort_unstable();
            ex.dedup();
            self.excluded = if all.iter().all(|p| ex.contains(p)) {
                Vec::new()
            } else {
                ex
            };
        }
        &self.excluded
    }
}

/// Whether a request may be retried at all (`retriable_request_headers`:
/// when set, one of them must match).
pub fn request_eligible(policy: &ForwardPolicy, headers: &HeaderMap) -> bool {
    policy.rules.as_ref().is_none_or(|r| {
        r.retriable_request_headers.is_empty()
            || r.retriable_request_headers
                .iter()
                .any(|m| m.matches(headers))
    })
}

/// Whether a response (its head) is retried under `policy`.
pub fn response_retriable(policy: &ForwardPolicy, status: u16, headers: &HeaderMap) -> bool {
    let r: &RetryOn = &policy.retry_on;
    if (r.five_xx && (500..600).contains(&status))
        || (r.gateway_error && matches!(status, 502..=504))
        || (r.retriable_status_codes && policy.retriable_status_codes.contains(&status))
        || (r.retriable_4xx && status == 409)
        || (r.envoy_ratelimited && headers.contains_key("x-envoy-ratelimited"))
    {
        return true;
    }
    if r.retriable_headers
        && let Some(rules) = &policy.rules
        && rules.retriable_headers.iter().any(|m| m.matches(headers))
    {
        return true;
    }
    if r.any_grpc() {
        // A trailers-only gRPC answer carries its status in the head.
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u8>().ok())
        {
            return match code {
                1 => r.grpc_cancelled,
                4 => r.grpc_deadline_exceeded,
                8 => r.grpc_resource_exhausted,
                13 => r.grpc_internal,
                14 => r.grpc_unavailable,
                _ => false,
            };
        }
    }
    false
}

/// The back-off a rate-limited response asks for through one of the
/// policy's reset headers (capped), if it carries one that parses.
pub fn ratelimited_backoff(policy: &ForwardPolicy, headers: &HeaderMap) -> Option<Duration> {
    let (names, max) = policy.rules.as_ref()?.rate_limited.as_ref()?;
    for (name, format) in names.iter() {
        let Some(secs) = headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let wait = match format {
            ResetHeaderFormat::Seconds => Duration::from_secs(secs),
            ResetHeaderFormat::UnixTimestamp => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Duration::from_secs(secs).checked_sub(now)?
            }
        };
        if wait.is_zero() {
            continue;
        }
        return Some(wait.min(*max));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(on: RetryOn, rules: RetryRules) -> ForwardPolicy {
        ForwardPolicy {
            retry_on: on,
            rules: Some(Arc::new(rules)),
            ..Default::default()
        }
    }

    fn headers(kv: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in kv {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn response_classes() {
        let p = policy(
            RetryOn {
                retriable_4xx: true,
                envoy_ratelimited: true,
                grpc_unavailable: true,
                ..Default::default()
            },
            RetryRules::default(),
        );
        assert!(response_retriable(&p, 409, &HeaderMap::new()));
        assert!(!response_retriable(&p, 404, &HeaderMap::new()));
        assert!(response_retriable(
            &p,
            429,
            &headers(&[("x-envoy-ratelimited", "true")])
        ));
        assert!(response_retriable(
            &p,
            200,
            &headers(&[("grpc-status", "14")])
        ));
        assert!(!response_retriable(
            &p,
            200,
            &headers(&[("grpc-status", "13")])
        ));
        assert!(!response_retriable(&p, 503, &HeaderMap::new()));
    }

    #[test]
    fn retriable_headers_and_request_headers() {
        let m = |name: &str, exact: &str| HeaderMatcherConfig {
            name: name.into(),
            exact_match: Some(exact.into()),
            ..Default::default()
        };
        let rules = RetryRules {
            retriable_headers: matchers("p", &[m("x-upstream-retry", "yes")]).unwrap(),
            retriable_request_headers: matchers("p", &[m("x-idempotent", "1")]).unwrap(),
            ..Default::default()
        };
        let p = policy(
            RetryOn {
                retriable_headers: true,
                ..Default::default()
            },
            rules,
        );
        assert!(response_retriable(
            &p,
            200,
            &headers(&[("x-upstream-retry", "yes")])
        ));
        assert!(!response_retriable(
            &p,
            200,
            &headers(&[("x-upstream-retry", "no")])
        ));
        assert!(request_eligible(&p, &headers(&[("x-idempotent", "1")])));
        assert!(!request_eligible(&p, &HeaderMap::new()));
    }

    #[test]
    fn retry_priority_and_hedge_policy_are_checked_by_name() {
        let mut rp = crate::router::RetryPolicyConfig {
            retry_on: "5xx".into(),
            retry_priority: Some(RetryPriorityConfig {
                name: "envoy.retry_priorities.other".into(),
                typed_config: None,
            }),
            ..Default::default()
        };
        assert_eq!(rules("p", &rp).unwrap_err().path, "p.retry_priority.name");
        rp.retry_priority = Some(RetryPriorityConfig {
            name: PREVIOUS_PRIORITIES.into(),
            typed_config: None,
        });
        assert_eq!(
            rules("p", &rp).unwrap_err().path,
            "p.retry_priority.typed_config.update_frequency"
        );
        rp.retry_priority = Some(RetryPriorityConfig {
            name: PREVIOUS_PRIORITIES.into(),
            typed_config: Some(PreviousPrioritiesConfig {
                type_url: None,
                update_frequency: 2,
            }),
        });
        assert_eq!(rules("p", &rp).unwrap().previous_priorities, Some(2));
        let h = HedgePolicyConfig {
            initial_requests: Some(2),
            ..Default::default()
        };
        assert_eq!(hedge("h", &h).unwrap_err().path, "h.initial_requests");
        let h = HedgePolicyConfig {
            additional_request_chance: Some(crate::config::filters::FractionalPercent {
                numerator: 1,
                denominator: Default::default(),
            }),
            ..Default::default()
        };
        assert_eq!(
            hedge("h", &h).unwrap_err().path,
            "h.additional_request_chance"
        );
        let h = HedgePolicyConfig {
            initial_requests: Some(1),
            hedge_on_per_try_timeout: true,
            ..Default::default()
        };
        assert!(hedge("h", &h).unwrap());
    }

    #[test]
    fn previous_priorities_follow_update_frequency_and_reset() {
        let mut p = PreviousPriorities::default();
        p.attempted(0);
        assert_eq!(p.excluded(1, &[0, 1, 2]), &[0]);
        p.attempted(1);
        assert_eq!(p.excluded(1, &[0, 1, 2]), &[0, 1]);
        p.attempted(2);
        // Every priority tried: nothing is excluded.
        assert!(p.excluded(1, &[0, 1, 2]).is_empty());
        let mut p = PreviousPriorities::default();
        p.attempted(0);
        assert!(p.excluded(2, &[0, 1]).is_empty());
        p.attempted(0);
        assert_eq!(p.excluded(2, &[0, 1]), &[0]);
        p.attempted(1);
        // Between updates the excluded set stays.
        assert_eq!(p.excluded(2, &[0, 1]), &[0]);
    }

    #[test]
    fn reset_headers_give_the_backoff() {
        let c = RateLimitedRetryBackOffConfig {
            reset_headers: vec![
                ResetHeaderConfig {
                    name: "retry-after".into(),
                    format: ResetHeaderFormat::Seconds,
                },
                ResetHeaderConfig {
                    name: "x-ratelimit-reset".into(),
                    format: ResetHeaderFormat::UnixTimestamp,
                },
            ],
            max_interval: Some(Duration::from_secs(10)),
        };
        let p = policy(
            RetryOn::default(),
            RetryRules {
                rate_limited: Some(rate_limited("p", &c).unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(
            ratelimited_backoff(&p, &headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            ratelimited_backoff(&p, &headers(&[("retry-after", "60")])),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            ratelimited_backoff(&p, &headers(&[("retry-after", "x")])),
            None
        );
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 5;
        let d =
            ratelimited_backoff(&p, &headers(&[("x-ratelimit-reset", &soon.to_string())])).unwrap();
        assert!(d <= Duration::from_secs(5) && d >= Duration::from_secs(3));
        let empty = RateLimitedRetryBackOffConfig::default();
        assert_eq!(
            rate_limited("rl", &empty).unwrap_err().path,
            "rl.reset_headers"
        );
    }
}
