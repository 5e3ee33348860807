//! The `reduce_timeouts` overload action (Envoy's
//! `envoy.overload_actions.reduce_timeouts` with
//! `ScaleTimersOverloadActionConfig`): under pressure, the timers it names
//! shrink from their configured value toward a minimum (`min_timeout`, or
//! `min_scale` percent of the configured value) as the action's scale
//! grows from 0 (the trigger's scaling threshold) to 1 (its saturation
//! threshold): `configured - (configured - minimum) * scale`.
//!
//! Timers meshgate scales: `HTTP_DOWNSTREAM_CONNECTION_IDLE` (the HTTP/2
//! and HTTP/3 connection idle timeout,
//! `common_http_protocol_options.idle_timeout`),
//! `HTTP_DOWNSTREAM_STREAM_IDLE` (the stream idle timeout: HCM
//! `stream_idle_timeout` or the route's `idle_timeout`) and
//! `TRANSPORT_SOCKET_CONNECT` (the downstream TLS and QUIC handshake
//! timeout, Envoy's filter chain `transport_socket_connect_timeout`) and
//! `HTTP_DOWNSTREAM_CONNECTION_MAX` (the HCM's
//! `common_http_protocol_options.max_connection_duration`). A waiting
//! timer is re-scaled when the action's scale changes (`changed`), as
//! Envoy's scaled timers are.

use super::Action;
use crate::config::ConfigSource;
use crate::config::overload::ScaleTimersConfig;
use crate::error::ConfigError;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The timers `reduce_timeouts` can scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    HttpDownstreamConnectionIdle = 0,
    HttpDownstreamStreamIdle = 1,
    TransportSocketConnect = 2,
    HttpDownstreamConnectionMax = 3,
}

const TIMERS: usize = 4;

/// How far a timer may shrink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Minimum {
    Timeout(Duration),
    /// A fraction (0..=1) of the configured value.
    Scale(f64),
}

/// Per timer (`Timer as usize`), its minimum; `None`: not scaled.
pub type Minimums = [Option<Minimum>; TIMERS];

static MINIMUMS: Mutex<Minimums> = Mutex::new([None; TIMERS]);
static CHANGED: Notify = Notify::const_new();
/// Bit `Timer as usize` set: that timer has a minimum (read without the
/// lock on the request path).
static SCALED: AtomicU32 = AtomicU32::new(0);

/// Checks the action's `typed_config`; errors name the field.
pub(super) fn build(
    source: &ConfigSource,
    field: &str,
    value: &serde_json::Value,
) -> Result<Minimums, ConfigError> {
    let tf = format!("{field}.typed_config");
    if value.is_null() {
        return Err(source.error(
            tf,
            "reduce_timeouts needs a ScaleTimersOverloadActionConfig",
        ));
    }
    let c: ScaleTimersConfig = super::typed(source, &tf, value)?;
    const URL: &str =
        "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig";
    super::check_type_url(source, &tf, &c.type_url, URL)?;
    if c.timer_scale_factors.is_empty() {
        return Err(source.error(
            format!("{tf}.timer_scale_factors"),
            "at least one timer is required",
        ));
    }
    let mut out: Minimums = [None; TIMERS];
    for (i, t) in c.timer_scale_factors.iter().enumerate() {
        let f = format!("{tf}.timer_scale_factors[{i}]");
        let timer = match t.timer.as_str() {
            "HTTP_DOWNSTREAM_CONNECTION_IDLE" => Timer::HttpDownstreamConnectionIdle,
            "HTTP_DOWNSTREAM_STREAM_IDLE" => Timer::HttpDownstreamStreamIdle,
            "TRANSPORT_SOCKET_CONNECT" => Timer::TransportSocketConnect,
            "HTTP_DOWNSTREAM_CONNECTION_MAX" => Timer::HttpDownstreamConnectionMax,
            "HTTP_DOWNSTREAM_STREAM_FLUSH" => {
                return Err(source.error(
                    format!("{f}.timer"),
                    format!(
                        "'{}' is not scaled by meshgate (it has no stream flush timeout); supported: HTTP_DOWNSTREAM_CONNECTION_IDLE, HTTP_DOWNSTREAM_STREAM_IDLE, TRANSPORT_SOCKET_CONNECT, HTTP_DOWNSTREAM_CONNECTION_MAX",
                        t.timer
                    ),
                ));
            }
            other => {
                return Err(source.error(
                    format!("{f}.timer"),
                    format!("unknown timer type '{other}'"),
                ));
            }
        };
        if out[timer as usize].is_some() {
            return Err(source.error(
                format!("{f}.timer"),
                format!("timer '{}' is scaled twice", t.timer),
            ));
        }
        let min = match (&t.min_timeout, &t.min_scale) {
            (Some(d), None) => Minimum::Timeout(*d),
            (None, Some(p)) => {
                if !(p.value.is_finite() && (0.0..=100.0).contains(&p.value)) {
                    return Err(source.error(
                        format!("{f}.min_scale.value"),
                        format!("{} is not a percentage (0 to 100)", p.value),
                    ));
                }
                Minimum::Scale(p.value / 100.0)
            }
            _ => {
                return Err(source.error(f, "exactly one of min_timeout and min_scale is required"));
            }
        };
        out[timer as usize] = Some(min);
    }
    Ok(out)
}

/// Makes `m` the live minimums (none: nothing scaled).
pub(super) fn install(m: Option<Minimums>) {
    let m = m.unwrap_or([None; TIMERS]);
    let mut cur = MINIMUMS.lock().unwrap_or_else(|p| p.into_inner());
    if *cur != m {
        *cur = m;
        let mask = m
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .fold(0u32, |acc, (i, _)| acc | (1u32 << i));
        SCALED.store(mask, Ordering::Relaxed);
        drop(cur);
        CHANGED.notify_waiters();
    }
}

/// The action's scale changed: waiting timers compute their value again.
pub(super) fn scale_changed() {
    CHANGED.notify_waiters();
}

/// Resolves when the scaled values may have changed. Create it before
/// reading `scaled`: a change after its creation wakes it.
pub fn changed() -> tokio::sync::futures::Notified<'static> {
    CHANGED.notified()
}

/// `configured`, shrunk by the `reduce_timeouts` action's scale now. One
/// relaxed atomic load while the action is inactive.
pub fn scaled(timer: Timer, configured: Duration) -> Duration {
    let s = super::action_scale(Action::ReduceTimeouts);
    if s <= 0.0 {
        return configured;
    }
    let min = MINIMUMS.lock().unwrap_or_else(|p| p.into_inner())[timer as usize];
    scale(configured, min, s)
}

/// Whether `timer` has a minimum in the live `reduce_timeouts` config (a
/// waiting timer need not watch for scale changes otherwise).
pub fn is_scaled(timer: Timer) -> bool {
    SCALED.load(Ordering::Relaxed) & (1 << timer as u32) != 0
}

/// A scaled timer's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut` until it completes or `timer`'s deadline passes: `configured`
/// after the call, shrunk by `reduce_timeouts` and computed again whenever
/// the action's scale changes (a handshake already waiting is cut short
/// when the pressure rises).
pub async fn timeout<F: std::future::Future>(
    timer: Timer,
    configured: Duration,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let start = tokio::time::Instant::now();
    tokio::pin!(fut);
    loop {
        // Made before the scale is read: a change after it wakes us.
        let changed = changed();
        let deadline = start + scaled(timer, configured);
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = tokio::time::sleep_until(deadline) => return Err(Elapsed),
            _ = changed => {}
        }
    }
}

fn scale(configured: Duration, min: Option<Minimum>, s: f64) -> Duration {
    let min = match min {
        None => return configured,
        Some(Minimum::Timeout(d)) => d.min(configured),
        Some(Minimum::Scale(f)) => configured.mul_f64(f.clamp(0.0, 1.0)),
    };
    configured - (configured - min).mul_f64(s.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_shrink_linearly_toward_their_minimum() {
        let ten = Duration::from_secs(10);
        let t = Some(Minimum::Timeout(Duration::from_secs(2)));
        assert_eq!(scale(ten, t, 0.0), ten);
        assert_eq!(scale(ten, t, 0.5), Duration::from_secs(6));
        assert_eq!(scale(ten, t, 1.0), Duration::from_secs(2));
        // A minimum above the configured value never lengthens it.
        let big = Some(Minimum::Timeout(Duration::from_secs(60)));
        assert_eq!(scale(ten, big, 1.0), ten);
        let pct = Some(Minimum::Scale(0.2));
        assert_eq!(scale(ten, pct, 1.0), Duration::from_secs(2));
        assert_eq!(scale(ten, None, 1.0), ten);
    }

    #[test]
    fn bad_timer_configs_name_the_field() {
        let src = ConfigSource::anonymous("t");
        let f = "overload_manager.actions[0]";
        let cases: [(&str, &str); 5] = [
            ("null", "actions[0].typed_config"),
            (
                "{timer_scale_factors: []}",
                "typed_config.timer_scale_factors",
            ),
            (
                "{timer_scale_factors: [{timer: HTTP_DOWNSTREAM_STREAM_FLUSH, min_timeout: 1s}]}",
                "timer_scale_factors[0].timer",
            ),
            (
                "{timer_scale_factors: [{timer: HTTP_DOWNSTREAM_CONNECTION_IDLE}]}",
                "typed_config.timer_scale_factors[0]",
            ),
            (
                "{timer_scale_factors: [{timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_scale: {value: 150}}]}",
                "timer_scale_factors[0].min_scale.value",
            ),
        ];
        for (yaml, field) in cases {
            let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
            let e = build(&src, f, &v).unwrap_err().to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let v: serde_json::Value = serde_yaml::from_str(
            "{timer_scale_factors: [{timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_scale: {value: 25}}]}",
        )
        .unwrap();
        assert_eq!(
            build(&src, f, &v).unwrap(),
            [Some(Minimum::Scale(0.25)), None, None, None]
        );
        let v: serde_json::Value = serde_yaml::from_str(
            "{timer_scale_factors: [{timer: TRANSPORT_SOCKET_CONNECT, min_timeout: 1s}, {timer: HTTP_DOWNSTREAM_STREAM_IDLE, min_scale: {value: 10}}]}",
        )
        .unwrap();
        assert_eq!(
            build(&src, f, &v).unwrap(),
            [
                None,
                Some(Minimum::Scale(0.1)),
                Some(Minimum::Timeout(Duration::from_secs(1))),
                None
            ]
        );
    }
}
