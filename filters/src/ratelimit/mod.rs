//! `ratelimit` (Envoy's `envoy.filters.http.ratelimit`): global rate
//! limiting. The route's (else the virtual host's) `rate_limits` actions
//! build the request's descriptors (`core::router::RateLimitActions`);
//! they are sent to a rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) reached
//! through one of meshgate's clusters (`core::callout::grpc_unary`), which
//! keeps the counters shared by every proxy. OVER_LIMIT answers 429
//! (`rate_limited_status`) with `x-envoy-ratelimited: true`, mapped by each
//! codec like any `LocalReason::RateLimited` (gRPC UNAVAILABLE or
//! RESOURCE_EXHAUSTED, Dubbo/Bolt "server busy"). A service that fails
//! lets the request through (counted) unless `failure_mode_deny` (500). A
//! request without descriptors makes no call.

use ::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
use envoy_types::pb::envoy::service::ratelimit::v3 as rls;
use meshgate_core::BuildError;
use meshgate_core::callout::{CalloutError, grpc_unary};
use meshgate_core::cluster::Cluster;
use meshgate_core::config::local_ratelimit::XRateLimitHeaders;
use meshgate_core::config::parse_typed;
use meshgate_core::config::ratelimit::RateLimitFilterConfig;
use meshgate_core::filter_chain::RouteView;
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::router::Descriptor;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, local_reply,
};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// Envoy's default deadline of the call.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
/// The most bytes of a service's answer read.
const MAX_ANSWER: usize = 64 * 1024;
const X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// gRPC RESOURCE_EXHAUSTED (grpc/doc/statuscodes.md).
const GRPC_RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Factory of `ratelimit`.
pub struct RateLimitFactory;

impl StreamFilterFactory for RateLimitFactory {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: RateLimitFilterConfig = parse_typed(config)?;
        Ok(Arc::new(RateLimit::build(&c, ctx)?))
    }
}

struct RateLimit {
    domain: String,
    cluster: Arc<Cluster>,
    authority: String,
    timeout: Duration,
    failure_mode_deny: bool,
    resource_exhausted: bool,
    x_headers: bool,
    status: StatusCode,
}

impl RateLimit {
    fn build(c: &RateLimitFilterConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if c.domain.is_empty() {
            return Err(BuildError::new("domain", "required"));
        }
        if c.stage != 0 {
            return Err(BuildError::new(
                "stage",
                "only stage 0: route rate_limits carry no stage",
            ));
        }
        if !c.request_type.is_empty() && c.request_type != "both" {
            return Err(BuildError::new(
                "request_type",
                "only both: meshgate does not tell internal from external requests",
            ));
        }
        let Some(svc) = &c.rate_limit_service else {
            return Err(BuildError::new("rate_limit_service", "required"));
        };
        if svc
            .transport_api_version
            .as_ref()
            .is_some_and(|v| v != "V3")
        {
            return Err(BuildError::new(
                "rate_limit_service.transport_api_version",
                "only V3 is supported",
            ));
        }
        let g = &svc.grpc_service;
        let name = &g.envoy_grpc.cluster_name;
        let field = "rate_limit_service.grpc_service.envoy_grpc.cluster_name";
        if name.is_empty() {
            return Err(BuildError::new(field, "a cluster name is required"));
        }
        let cluster = ctx.cluster(field, name)?;
        let authority = if g.envoy_grpc.authority.is_empty() {
            name.clone()
        } else {
            g.envoy_grpc.authority.clone()
        };
        if ::http::uri::Authority::try_from(authority.as_str()).is_err() {
            return Err(BuildError::new(
                if g.envoy_grpc.authority.is_empty() {
                    field
                } else {
                    "rate_limit_service.grpc_service.envoy_grpc.authority"
                },
                "not a valid :authority",
            ));
        }
        // Envoy uses the filter's `timeout`; the service's own one, when
        // set alone, is honoured too rather than ignored.
        let timeout = c.timeout.or(g.timeout).unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(BuildError::new("timeout", "must be positive"));
        }
        let status = match &c.rate_limited_status {
            None => StatusCode::TOO_MANY_REQUESTS,
            Some(s) if s.code < 400 => StatusCode::TOO_MANY_REQUESTS,
            Some(s) => StatusCode::from_u16(s.code)
                .ok()
                .filter(|s| s.as_u16() < 600)
                .ok_or_else(|| {
                    BuildError::new("rate_limited_status.code", "not an HTTP status (100-599)")
                })?,
        };
        Ok(Self {
            domain: c.domain.clone(),
            cluster,
            authority,
            timeout,
            failure_mode_deny: c.failure_mode_deny,
            resource_exhausted: c.rate_limited_as_resource_exhausted,
            x_headers: c.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03,
            status,
        })
    }
}

/// The service's verdict.
#[derive(Debug)]
enum Verdict {
    Ok {
        request: Vec<(HeaderName, HeaderValue)>,
        response: Vec<(HeaderName, HeaderValue)>,
        nearest: Option<Nearest>,
    },
    OverLimit {
        response: Vec<(HeaderName, HeaderValue)>,
        nearest: Option<Nearest>,
    },
    Error(&'static str),
}

/// The descriptor status nearest its limit (`x-ratelimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nearest {
    limit: u32,
    window_secs: u64,
    remaining: u32,
    reset_secs: u64,
}

/// Headers for the response to the client (kept until `on_response`).
#[derive(Clone)]
struct Pending {
    headers: Vec<(HeaderName, HeaderValue)>,
    refused: bool,
}

impl StreamFilter for RateLimit {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(self.run(req, info, route))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(p) = info.filter_state.remove::<Pending>() else {
            return;
        };
        let h = resp.headers_mut();
        for (n, v) in p.headers {
            h.append(n, v);
        }
        if p.refused {
            h.insert(X_ENVOY_RATELIMITED, HeaderValue::from_static("true"));
            if info.grpc && self.resource_exhausted {
                h.insert("grpc-status", GRPC_RESOURCE_EXHAUSTED);
            }
        }
    }
}

impl RateLimit {
    async fn run(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        route: RouteView<'_>,
    ) -> FilterStatus {
        let Some(actions) = route
            .matched
            .and_then(|(vh, r)| r.rate_limits().or(vh.rate_limits()))
        else {
            return FilterStatus::Continue;
        };
        let descriptors = actions.descriptors(req, info);
        if descriptors.is_empty() {
            return FilterStatus::Continue;
        }
        let msg = request_message(&self.domain, descriptors).encode_to_vec();
        let verdict = match grpc_unary(
            &self.cluster,
            &self.authority,
            SHOULD_RATE_LIMIT,
            Bytes::from(msg),
            self.timeout,
            MAX_ANSWER,
        )
        .await
        {
            Ok(answer) => match rls::RateLimitResponse::decode(answer) {
                Ok(r) => verdict(r),
                Err(_) => Verdict::Error("malformed_response"),
            },
            Err(e) => Verdict::Error(error_label(&e)),
        };
        self.apply(verdict, req, info)
    }

    fn apply(&self, verdict: Verdict, req: &mut Request, info: &mut StreamInfo) -> FilterStatus {
        let domain = self.domain.clone();
        match verdict {
            Verdict::Ok {
                request,
                mut response,
                nearest,
            } => {
                metrics::counter!(names::RATELIMIT_OK_TOTAL, "domain" => domain).increment(1);
                let h = req.headers_mut();
                for (n, v) in request {
                    h.append(n, v);
                }
                if self.x_headers
                    && let Some(n) = nearest
                {
                    x_headers(&mut response, n);
                }
                if !response.is_empty() {
                    info.filter_state.insert(Pending {
                        headers: response,
                        refused: false,
                    });
                }
                FilterStatus::Continue
            }
            Verdict::OverLimit {
                mut response,
                nearest,
            } => {
                metrics::counter!(names::RATELIMIT_OVER_LIMIT_TOTAL, "domain" => domain)
                    .increment(1);
                if self.x_headers
                    && let Some(n) = nearest
                {
                    x_headers(&mut response, n);
                }
                let mut resp = local_reply(info, LocalReason::RateLimited);
                *resp.status_mut() = self.status;
                info.filter_state.insert(Pending {
                    headers: response,
                    refused: true,
                });
                FilterStatus::Respond(resp)
            }
            Verdict::Error(reason) => {
                tracing::debug!(reason, "ratelimit: the service gave no answer");
                metrics::counter!(names::RATELIMIT_ERROR_TOTAL, "domain" => domain.clone(), "reason" => reason)
                    .increment(1);
                if self.failure_mode_deny {
                    let mut resp = local_reply(info, LocalReason::FilterConfigError);
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    info.local_reply = Some("ratelimit_error");
                    return FilterStatus::Respond(resp);
                }
                metrics::counter!(names::RATELIMIT_FAILURE_MODE_ALLOWED_TOTAL, "domain" => domain)
                    .increment(1);
                FilterStatus::Continue
            }
        }
    }
}

fn error_label(e: &CalloutError) -> &'static str {
    match e {
        CalloutError::Upstream(r) => r.label(),
        CalloutError::TooLarge(_) => "response_too_large",
        CalloutError::Body(_) => "response_body",
        CalloutError::Grpc { .. } => "grpc_status",
    }
}

fn request_message(domain: &str, descriptors: Vec<Descriptor>) -> rls::RateLimitRequest {
    rls::RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .into_iter()
            .map(|d| common::RateLimitDescriptor {
                entries: d
                    .into_iter()
                    .map(|(key, value)| common::rate_limit_descriptor::Entry { key, value })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// Headers from the service; a header that is not a valid name or value
/// is dropped (the service is trusted config, but its bytes are not).
fn headers(list: Vec<core3::HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
    list.into_iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            Some((name, value))
        })
        .collect()
}

fn unit_secs(unit: i32) -> u64 {
    use rls::rate_limit_response::rate_limit::Unit;
    match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 7 * 86_400,
        Ok(Unit::Month) => 30 * 86_400,
        Ok(Unit::Year) => 365 * 86_400,
        _ => 0,
    }
}

fn verdict(r: rls::RateLimitResponse) -> Verdict {
    use rls::rate_limit_response::Code;
    // The status with a limit and the fewest requests left (Envoy's rule
    // for the draft 03 headers).
    let nearest = r
        .statuses
        .iter()
        .filter_map(|s| {
            let l = s.current_limit.as_ref()?;
            Some(Nearest {
                limit: l.requests_per_unit,
                window_secs: unit_secs(l.unit),
                remaining: s.limit_remaining,
                reset_secs: s
                    .duration_until_reset
                    .as_ref()
                    .map_or(0, |d| d.seconds.max(0) as u64 + u64::from(d.nanos > 0)),
            })
        })
        .min_by_key(|n| n.remaining);
    match Code::try_from(r.overall_code) {
        Ok(Code::Ok) => Verdict::Ok {
            request: headers(r.request_headers_to_add),
            response: headers(r.response_headers_to_add),
            nearest,
        },
        Ok(Code::OverLimit) => Verdict::OverLimit {
            response: headers(r.response_headers_to_add),
            nearest,
        },
        _ => Verdict::Error("unknown_code"),
    }
}

fn x_headers(out: &mut Vec<(HeaderName, HeaderValue)>, n: Nearest) {
    let limit = if n.window_secs > 0 {
        format!("{}, {};w={}", n.limit, n.limit, n.window_secs)
    } else {
        n.limit.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&limit) {
        out.push((X_RATELIMIT_LIMIT, v));
    }
    out.push((X_RATELIMIT_REMAINING, HeaderValue::from(n.remaining)));
    out.push((X_RATELIMIT_RESET, HeaderValue::from(n.reset_secs)));
}

#[cfg(test)]
mod tests;
