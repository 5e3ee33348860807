//! `local_ratelimit` (Envoy's `envoy.filters.http.local_ratelimit` and
//! `envoy.filters.network.local_ratelimit`): token buckets kept in this
//! process. The stream filter takes one token per request from the
//! filter's (or the route's) bucket, and from the bucket of each
//! configured descriptor the request's `rate_limits` actions select; past
//! the limit it answers 429 (`status`) with `x-local-rate-limit: 1`, which
//! each codec maps to its form (gRPC UNAVAILABLE or, with
//! `rate_limited_as_resource_exhausted`, RESOURCE_EXHAUSTED; Dubbo and
//! Bolt their "server busy" status). The network filter (`network`) takes
//! one token per accepted connection and closes the connection at once
//! when there is none.

mod bucket;
mod descriptors;
pub mod network;

use bucket::{TokenBucket, clock};
use descriptors::{Actions, DescriptorBuckets, DescriptorSpec};
use http::{HeaderName, HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::config::filters::RuntimeFractionalPercent;
use meshgate_core::config::local_ratelimit::{LocalRateLimitConfig, XRateLimitHeaders};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::{BuildContext, ConnectionInfo};
use meshgate_core::router::HeaderValueOption;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, local_reply,
};
use metrics::Counter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

const X_LOCAL_RATE_LIMIT: HeaderName = HeaderName::from_static("x-local-rate-limit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// gRPC RESOURCE_EXHAUSTED (grpc/doc/statuscodes.md).
const GRPC_RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Factory of the `local_ratelimit` stream filter.
pub struct LocalRateLimitFactory;

impl StreamFilterFactory for LocalRateLimitFactory {
    fn name(&self) -> &'static str {
        "local_ratelimit"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: LocalRateLimitConfig = parse_typed(config)?;
        Ok(Arc::new(LocalRateLimit {
            limiter: Arc::new(Limiter::build(&c, false)?),
        }))
    }
}

struct LocalRateLimit {
    limiter: Arc<Limiter>,
}

/// The buckets of one limiter: shared, or one set per connection.
struct Buckets {
    default: Option<TokenBucket>,
    descriptors: Vec<DescriptorBuckets>,
}

/// Buckets per downstream connection, dropped once the connection is gone
/// (swept when the map has doubled since the last sweep).
#[derive(Default)]
struct PerConnection {
    map: HashMap<u64, (Weak<ConnectionInfo>, Arc<Buckets>)>,
    sweep_at: usize,
}

/// One compiled `LocalRateLimit` (the filter's, or a route's).
struct Limiter {
    status: StatusCode,
    default_bucket: Option<meshgate_core::config::local_ratelimit::TokenBucketConfig>,
    enabled_ppm: u32,
    enforced_ppm: u32,
    headers_when_not_enforced: Vec<(HeaderName, HeaderValue, bool)>,
    response_headers: Vec<(HeaderName, HeaderValue, bool)>,
    specs: Vec<DescriptorSpec>,
    actions: Actions,
    max_dynamic: usize,
    x_headers: bool,
    always_consume_default: bool,
    resource_exhausted: bool,
    retry_after: bool,
    /// `None`: `local_rate_limit_per_downstream_connection`.
    shared: Option<Buckets>,
    per_connection: Mutex<PerConnection>,
    ok: Counter,
    rate_limited: Counter,
    enforced: Counter,
    evicted: Counter,
}

fn ppm(f: &Option<RuntimeFractionalPercent>) -> u32 {
    // Envoy's default for both fractions: 0 % ("for safety").
    f.as_ref().map_or(0, |f| f.default_value.per_million())
}

fn sample(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && rand::random_range(0..1_000_000) < ppm)
}

fn headers(
    field: &str,
    list: &[HeaderValueOption],
) -> Result<Vec<(HeaderName, HeaderValue, bool)>, BuildError> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                BuildError::new(format!("{field}[{i}].name"), "not a valid header name")
            })?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| {
                BuildError::new(format!("{field}[{i}].value"), "not a valid header value")
            })?;
            Ok((name, value, h.append))
        })
        .collect()
}

fn add_headers(map: &mut http::HeaderMap, list: &[(HeaderName, HeaderValue, bool)]) {
    for (n, v, append) in list {
        if *append {
            map.append(n.clone(), v.clone());
        } else {
            map.insert(n.clone(), v.clone());
        }
    }
}

impl Limiter {
    fn build(c: &LocalRateLimitConfig, per_route: bool) -> Result<Self, BuildError> {
        if c.stat_prefix.is_empty() {
            return Err(BuildError::new("stat_prefix", "must not be empty"));
        }
        if per_route && c.token_bucket.is_none() {
            return Err(BuildError::new(
                "token_bucket",
                "required in a per-route config (the route's own bucket)",
            ));
        }
        if let Some(tb) = &c.token_bucket {
            TokenBucket::build("token_bucket", tb)?;
        }
        let status = match c.status {
            None => StatusCode::TOO_MANY_REQUESTS,
            // Envoy: below 400, 429 is used instead.
            Some(s) if s.code < 400 => StatusCode::TOO_MANY_REQUESTS,
            Some(s) => StatusCode::from_u16(s.code)
                .map_err(|_| BuildError::new("status.code", "not an HTTP status"))?,
        };
        let mut specs = Vec::with_capacity(c.descriptors.len());
        for (i, d) in c.descriptors.iter().enumerate() {
            specs.push(DescriptorSpec::build(&format!("descriptors[{i}]"), d)?);
        }
        // Without its own, the route's (else the virtual host's)
        // `rate_limits` build the descriptors, as Envoy's do.
        let actions = Actions::build("", &c.rate_limits)?;
        let max_dynamic = match c.max_dynamic_descriptors {
            None => 20,
            Some(0) => {
                return Err(BuildError::new("max_dynamic_descriptors", "must be >= 1"));
            }
            Some(n) => n as usize,
        };
        let label = c.stat_prefix.clone();
        let mut l = Self {
            status,
            default_bucket: c.token_bucket.clone(),
            enabled_ppm: ppm(&c.filter_enabled),
            enforced_ppm: ppm(&c.filter_enforced),
            headers_when_not_enforced: headers(
                "request_headers_to_add_when_not_enforced",
                &c.request_headers_to_add_when_not_enforced,
            )?,
            response_headers: headers("response_headers_to_add", &c.response_headers_to_add)?,
            specs,
            actions,
            max_dynamic,
            x_headers: c.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03,
            always_consume_default: c.always_consume_default_token_bucket.unwrap_or(true),
            resource_exhausted: c.rate_limited_as_resource_exhausted,
            retry_after: c.enable_retry_after_header,
            shared: None,
            per_connection: Mutex::default(),
            ok: metrics::counter!(names::LOCAL_RATELIMIT_OK_TOTAL, "stat_prefix" => label.clone()),
            rate_limited: metrics::counter!(names::LOCAL_RATELIMIT_RATE_LIMITED_TOTAL, "stat_prefix" => label.clone()),
            enforced: metrics::counter!(names::LOCAL_RATELIMIT_ENFORCED_TOTAL, "stat_prefix" => label.clone()),
            evicted: metrics::counter!(names::LOCAL_RATELIMIT_DESCRIPTOR_EVICTED_TOTAL, "stat_prefix" => label),
        };
        if !c.local_rate_limit_per_downstream_connection {
            l.shared = Some(l.new_buckets());
        }
        Ok(l)
    }

    fn new_buckets(&self) -> Buckets {
        Buckets {
            default: self.default_bucket.as_ref().map(|b| {
                TokenBucket::new(
                    b.max_tokens,
                    b.tokens_per_fill.unwrap_or(1),
                    b.fill_interval,
                    clock(),
                )
            }),
            descriptors: self
                .specs
                .iter()
                .map(|s| DescriptorBuckets::new(s, self.max_dynamic))
                .collect(),
        }
    }

    /// This connection's buckets (`None`: the lock is poisoned; the
    /// caller refuses the request rather than let it through unlimited).
    fn connection_buckets(&self, conn: &Arc<ConnectionInfo>) -> Option<Arc<Buckets>> {
        let mut pc = self.per_connection.lock().ok()?;
        if let Some((w, b)) = pc.map.get(&conn.id)
            && w.strong_count() > 0
        {
            return Some(b.clone());
        }
        if pc.map.len() >= pc.sweep_at {
            pc.map.retain(|_, (w, _)| w.strong_count() > 0);
            pc.sweep_at = (pc.map.len() * 2).max(64);
        }
        let b = Arc::new(self.new_buckets());
        pc.map.insert(conn.id, (Arc::downgrade(conn), b.clone()));
        Some(b)
    }

    /// Takes the request's tokens: `None` when it is within the limits,
    /// else the refusal. `report` gets the bucket nearest its limit, for
    /// the `x-ratelimit-*` headers.
    fn decide(&self, req: &Request, info: &StreamInfo, route: &RouteView<'_>) -> Decision {
        let per_conn;
        let buckets = match &self.shared {
            Some(b) => b,
            None => match self.connection_buckets(&info.connection) {
                Some(b) => {
                    per_conn = b;
                    &*per_conn
                }
                None => return Decision::limited(None),
            },
        };
        let now = clock();
        let mut nearest: Option<(u32, u32, std::time::Duration)> = None;
        let mut note = |b: &TokenBucket, remaining: u32| {
            if nearest.is_none_or(|(_, r, _)| remaining < r) {
                nearest = Some((b.max_tokens(), remaining, b.until_next_fill_at(now)));
            }
        };
        let mut matched_any = false;
        if !self.specs.is_empty() {
            let actions = if self.actions.is_empty() {
                route
                    .matched
                    .and_then(|(vh, r)| r.rate_limits().or(vh.rate_limits()))
            } else {
                Some(&self.actions)
            };
            let request = actions.map_or_else(Vec::new, |a| a.descriptors(req, info));
            let Some(matched) =
                descriptors::matched(&self.specs, &buckets.descriptors, &request, &self.evicted)
            else {
                return Decision::limited(None);
            };
            matched_any = !matched.is_empty();
            for b in &matched {
                let t = b.take_at(now);
                note(b, t.remaining);
                if !t.allowed {
                    return Decision::limited(nearest);
                }
            }
        }
        if let Some(b) = &buckets.default
            && (self.always_consume_default || !matched_any)
        {
            let t = b.take_at(now);
            note(b, t.remaining);
            if !t.allowed {
                return Decision::limited(nearest);
            }
        }
        Decision {
            allowed: true,
            nearest,
        }
    }
}

/// Whole seconds until the bucket's next fill, rounded up, at least 1
/// (draft 03's delta-seconds; `retry-after`).
fn reset_secs(nearest: Option<(u32, u32, std::time::Duration)>) -> u64 {
    nearest.map_or(1, |(_, _, d)| (d.as_millis().div_ceil(1000) as u64).max(1))
}

struct Decision {
    allowed: bool,
    /// (limit, remaining, until the next fill) of the bucket nearest its
    /// limit.
    nearest: Option<(u32, u32, std::time::Duration)>,
}

impl Decision {
    fn limited(nearest: Option<(u32, u32, std::time::Duration)>) -> Self {
        Self {
            allowed: false,
            nearest,
        }
    }
}

/// What the response phase adds, kept in the stream's filter state.
#[derive(Clone)]
struct Outcome {
    limiter: Arc<Limiter>,
    refused: bool,
    nearest: Option<(u32, u32, std::time::Duration)>,
    /// Seconds for `retry-after` (`enable_retry_after_header`, 429 only).
    retry_after: Option<u64>,
}

impl StreamFilter for LocalRateLimit {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let status = self.run(req, info, route);
        Box::pin(std::future::ready(status))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(o) = info.filter_state.remove::<Outcome>() else {
            return;
        };
        let l = &o.limiter;
        let h = resp.headers_mut();
        if o.refused {
            h.insert(X_LOCAL_RATE_LIMIT, HeaderValue::from_static("1"));
            add_headers(h, &l.response_headers);
            if let Some(secs) = o.retry_after
                && !h.contains_key(http::header::RETRY_AFTER)
            {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            if info.grpc && l.resource_exhausted {
                h.insert("grpc-status", GRPC_RESOURCE_EXHAUSTED);
            }
        }
        if let Some((limit, remaining, reset)) = o.nearest {
            h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
            h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
            h.insert(
                X_RATELIMIT_RESET,
                HeaderValue::from(reset_secs(Some((limit, remaining, reset)))),
            );
        }
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: LocalRateLimitConfig = parse_typed(config)?;
        Ok(Arc::new(Arc::new(Limiter::build(&c, true)?)))
    }
}

impl LocalRateLimit {
    fn run(&self, req: &mut Request, info: &mut StreamInfo, route: RouteView<'_>) -> FilterStatus {
        let limiter = match route.config {
            None => &self.limiter,
            Some(parsed) => match parsed.downcast_ref::<Arc<Limiter>>() {
                Some(l) => l,
                // Not ours: refuse rather than run unlimited.
                None => {
                    return FilterStatus::Respond(local_reply(
                        info,
                        LocalReason::FilterConfigError,
                    ));
                }
            },
        };
        if !sample(limiter.enabled_ppm) {
            return FilterStatus::Continue;
        }
        let d = limiter.decide(req, info, &route);
        if d.allowed {
            limiter.ok.increment(1);
            if limiter.x_headers && d.nearest.is_some() {
                info.filter_state.insert(Outcome {
                    limiter: limiter.clone(),
                    refused: false,
                    nearest: d.nearest,
                    retry_after: None,
                });
            }
            return FilterStatus::Continue;
        }
        limiter.rate_limited.increment(1);
        if !sample(limiter.enforced_ppm) {
            add_headers(req.headers_mut(), &limiter.headers_when_not_enforced);
            return FilterStatus::Continue;
        }
        limiter.enforced.increment(1);
        let mut resp = local_reply(info, LocalReason::RateLimited);
        *resp.status_mut() = limiter.status;
        info.filter_state.insert(Outcome {
            limiter: limiter.clone(),
            refused: true,
            nearest: if limiter.x_headers { d.nearest } else { None },
            retry_after: (limiter.retry_after && limiter.status == StatusCode::TOO_MANY_REQUESTS)
                .then(|| reset_secs(d.nearest)),
        });
        FilterStatus::Respond(resp)
    }
}

#[cfg(test)]
mod tests;
