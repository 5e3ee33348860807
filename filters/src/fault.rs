//! `fault` (Envoy's `envoy.filters.http.fault`): injects delays and aborts
//! into requests, for resilience tests. A delay is an async sleep in the
//! request phase (it never blocks a worker, and a stream cancelled
//! meanwhile drops it); an abort answers with an HTTP status (or a gRPC
//! status, trailers-only) and the request never reaches the upstream.
//! With `header_delay` / `header_abort` the request's
//! `x-envoy-fault-delay-request` (ms), `x-envoy-fault-abort-request` (HTTP
//! status) or `x-envoy-fault-abort-grpc-request` choose the fault, and
//! `x-envoy-fault-{delay,abort}-request-percentage` may lower (never
//! raise) the configured share. `headers` and `upstream_cluster` restrict
//! which requests are eligible, `max_active_faults` how many faults run at
//! once. Per route, a `fault` config replaces the filter's.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::config::fault::{FaultAbortConfig, FaultConfig, FaultDelayConfig};
use meshgate_core::config::filters::{Denominator, FractionalPercent};
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::router::{HeaderMatcher, RouteAction};
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, empty_body, full_body, local_reply,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
const DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
const ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
const ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
const ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");

/// Factory of `fault`.
pub struct FaultFactory;

impl StreamFilterFactory for FaultFactory {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: FaultConfig = parse_typed(config)?;
        Ok(Arc::new(Fault {
            policy: Arc::new(Policy::build(&c)?),
            active: Arc::new(AtomicU64::new(0)),
        }))
    }
}

struct Fault {
    policy: Arc<Policy>,
    /// Faults in progress, across the filter's and the routes' policies.
    active: Arc<AtomicU64>,
}

/// A share of requests: numerator over the configured denominator.
#[derive(Clone, Copy)]
struct Share {
    numerator: u32,
    denominator: Denominator,
}

impl Share {
    fn new(p: &Option<FractionalPercent>) -> Self {
        let p = p.clone().unwrap_or(FractionalPercent {
            numerator: 0,
            denominator: Denominator::Hundred,
        });
        Self {
            numerator: p.numerator,
            denominator: p.denominator,
        }
    }

    /// The share, lowered (never raised) by a percentage header.
    fn with_header(self, headers: &http::HeaderMap, name: &HeaderName) -> Self {
        let h = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        match h {
            Some(n) => Self {
                numerator: n.min(self.numerator),
                ..self
            },
            None => self,
        }
    }

    fn sample(self) -> bool {
        let ppm = FractionalPercent {
            numerator: self.numerator,
            denominator: self.denominator,
        }
        .per_million();
        ppm >= 1_000_000 || (ppm > 0 && rand::random_range(0..1_000_000) < ppm)
    }
}

enum DelayKind {
    Fixed(Duration),
    Header,
}

enum AbortKind {
    Http(StatusCode),
    Grpc(u32),
    Header,
}

/// One compiled `HTTPFault`.
struct Policy {
    delay: Option<(DelayKind, Share)>,
    abort: Option<(AbortKind, Share, Bytes)>,
    upstream_cluster: Option<String>,
    headers: Vec<HeaderMatcher>,
    max_active: Option<u64>,
}

fn delay(d: &FaultDelayConfig) -> Result<(DelayKind, Share), BuildError> {
    let kind = match (d.fixed_delay, &d.header_delay) {
        (Some(f), None) => DelayKind::Fixed(f),
        (None, Some(_)) => DelayKind::Header,
        _ => {
            return Err(BuildError::new(
                "delay",
                "set exactly one of fixed_delay, header_delay",
            ));
        }
    };
    Ok((kind, Share::new(&d.percentage)))
}

fn abort(a: &FaultAbortConfig) -> Result<(AbortKind, Share, Bytes), BuildError> {
    let kind = match (a.http_status, a.grpc_status, &a.header_abort) {
        (Some(s), None, None) => AbortKind::Http(
            u16::try_from(s)
                .ok()
                .filter(|s| (200..600).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    BuildError::new("abort.http_status", "an HTTP status, 200 to 599")
                })?,
        ),
        (None, Some(s), None) => AbortKind::Grpc(s),
        (None, None, Some(_)) => AbortKind::Header,
        _ => {
            return Err(BuildError::new(
                "abort",
                "set exactly one of http_status, grpc_status, header_abort",
            ));
        }
    };
    let body = if a.response_body.is_empty() {
        Bytes::from_static(b"fault filter abort")
    } else {
        Bytes::from(a.response_body.clone())
    };
    Ok((kind, Share::new(&a.percentage), body))
}

impl Policy {
    fn build(c: &FaultConfig) -> Result<Self, BuildError> {
        let mut headers = Vec::with_capacity(c.headers.len());
        for (i, h) in c.headers.iter().enumerate() {
            headers.push(HeaderMatcher::build(h).map_err(|(f, m)| {
                let p = format!("headers[{i}]");
                BuildError::new(if f.is_empty() { p } else { format!("{p}.{f}") }, m)
            })?);
        }
        Ok(Self {
            delay: c.delay.as_ref().map(delay).transpose()?,
            abort: c.abort.as_ref().map(abort).transpose()?,
            upstream_cluster: (!c.upstream_cluster.is_empty()).then(|| c.upstream_cluster.clone()),
            headers,
            max_active: c.max_active_faults.map(u64::from),
        })
    }

    /// Whether the request is eligible (headers, upstream cluster).
    fn applies(&self, req: &Request, route: &RouteView<'_>) -> bool {
        if !self.headers.iter().all(|h| h.matches(req.headers())) {
            return false;
        }
        match &self.upstream_cluster {
            None => true,
            Some(want) => route.matched.is_some_and(|(_, r)| match r.action() {
                RouteAction::Cluster(a) => a.clusters().iter().any(|w| w.cluster.name == want),
                _ => false,
            }),
        }
    }

    /// The delay to inject into this request, if any.
    fn delay_for(&self, req: &Request) -> Option<Duration> {
        let (kind, share) = self.delay.as_ref()?;
        let d = match kind {
            DelayKind::Fixed(d) => *d,
            DelayKind::Header => Duration::from_millis(
                req.headers()
                    .get(DELAY_REQUEST)?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?,
            ),
        };
        share
            .with_header(req.headers(), &DELAY_PERCENTAGE)
            .sample()
            .then_some(d)
    }

    /// The abort to answer this request with, if any.
    fn abort_for(&self, req: &Request) -> Option<Abort> {
        let (kind, share, body) = self.abort.as_ref()?;
        let h = req.headers();
        let number =
            |n: &HeaderName| -> Option<u32> { h.get(n)?.to_str().ok()?.trim().parse().ok() };
        let a = match kind {
            AbortKind::Http(s) => Abort::Http(*s),
            AbortKind::Grpc(s) => Abort::Grpc(*s),
            AbortKind::Header => match (number(&ABORT_REQUEST), number(&ABORT_GRPC_REQUEST)) {
                (Some(s), _) => Abort::Http(
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())?,
                ),
                (None, Some(g)) => Abort::Grpc(g),
                (None, None) => return None,
            },
        };
        share
            .with_header(h, &ABORT_PERCENTAGE)
            .sample()
            .then(|| a.with_body(body.clone()))
    }
}

enum Abort {
    Http(StatusCode),
    Grpc(u32),
    HttpWithBody(StatusCode, Bytes),
    GrpcWithBody(u32, Bytes),
}

impl Abort {
    fn with_body(self, body: Bytes) -> Self {
        match self {
            Abort::Http(s) => Abort::HttpWithBody(s, body),
            Abort::Grpc(s) => Abort::GrpcWithBody(s, body),
            other => other,
        }
    }

    fn response(self) -> Response {
        match self {
            Abort::Http(s) => Abort::HttpWithBody(s, Bytes::new()).response(),
            Abort::Grpc(s) => Abort::GrpcWithBody(s, Bytes::new()).response(),
            Abort::HttpWithBody(s, body) => {
                let mut r = http::Response::new(full_body(body));
                *r.status_mut() = s;
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
                r
            }
            Abort::GrpcWithBody(s, body) => {
                // Trailers-only: the status in the head, no body.
                let mut r = http::Response::new(empty_body());
                let h = r.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                h.insert("grpc-status", HeaderValue::from(s));
                if let Ok(m) = HeaderValue::from_maybe_shared(body) {
                    h.insert("grpc-message", m);
                }
                r
            }
        }
    }
}

/// Holds one of `max_active_faults` until dropped (the fault ended, or
/// the stream was cancelled during a delay).
struct ActiveFault(Arc<AtomicU64>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamFilter for Fault {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let policy = match route.config {
            None => &self.policy,
            Some(p) => match p.downcast_ref::<Arc<Policy>>() {
                Some(p) => p,
                None => {
                    let r = local_reply(info, LocalReason::FilterConfigError);
                    return Box::pin(std::future::ready(FilterStatus::Respond(r)));
                }
            },
        };
        if !policy.applies(req, &route) {
            return Box::pin(std::future::ready(FilterStatus::Continue));
        }
        let delay = policy.delay_for(req);
        let abort = policy.abort_for(req);
        if delay.is_none() && abort.is_none() {
            return Box::pin(std::future::ready(FilterStatus::Continue));
        }
        let route_label = info.route.unwrap_or("");
        let prior = self.active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveFault(self.active.clone());
        if policy.max_active.is_some_and(|max| prior >= max) {
            drop(guard);
            metrics::counter!(names::FAULT_ACTIVE_FAULTS_OVERFLOW_TOTAL, "route" => route_label)
                .increment(1);
            return Box::pin(std::future::ready(FilterStatus::Continue));
        }
        Box::pin(async move {
            let _guard = guard;
            if let Some(d) = delay {
                metrics::counter!(names::FAULT_DELAYS_INJECTED_TOTAL, "route" => route_label)
                    .increment(1);
                tokio::time::sleep(d).await;
            }
            match abort {
                None => FilterStatus::Continue,
                Some(a) => {
                    metrics::counter!(names::FAULT_ABORTS_INJECTED_TOTAL, "route" => route_label)
                        .increment(1);
                    info.local_reply = Some("fault_abort");
                    FilterStatus::Respond(a.response())
                }
            }
        })
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: FaultConfig = parse_typed(config)?;
        Ok(Arc::new(Arc::new(Policy::build(&c)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(v: serde_json::Value) -> Policy {
        Policy::build(&parse_typed(&v).unwrap()).unwrap()
    }

    fn req(h: &[(&str, &str)]) -> Request {
        let mut r = http::Request::new(empty_body());
        for (k, v) in h {
            r.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    }

    #[test]
    fn fixed_faults_at_100_and_0_percent() {
        let p = policy(serde_json::json!({
            "delay": {"fixed_delay": "2s", "percentage": {"numerator": 100}},
            "abort": {"http_status": 503, "percentage": {"numerator": 0}},
        }));
        assert_eq!(p.delay_for(&req(&[])), Some(Duration::from_secs(2)));
        assert!(p.abort_for(&req(&[])).is_none());
        // A percentage header may lower the share, never raise it.
        assert_eq!(
            p.delay_for(&req(&[("x-envoy-fault-delay-request-percentage", "0")])),
            None
        );
        let p = policy(serde_json::json!({
            "abort": {"http_status": 503, "percentage": {"numerator": 0}},
        }));
        assert!(
            p.abort_for(&req(&[("x-envoy-fault-abort-request-percentage", "100")]))
                .is_none()
        );
    }

    #[test]
    fn header_controlled_faults() {
        let p = policy(serde_json::json!({
            "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
            "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
        }));
        assert_eq!(p.delay_for(&req(&[])), None);
        assert_eq!(
            p.delay_for(&req(&[("x-envoy-fault-delay-request", "250")])),
            Some(Duration::from_millis(250))
        );
        assert!(p.abort_for(&req(&[])).is_none());
        let r = p
            .abort_for(&req(&[("x-envoy-fault-abort-request", "418")]))
            .unwrap()
            .response();
        assert_eq!(r.status(), 418);
        let r = p
            .abort_for(&req(&[("x-envoy-fault-abort-grpc-request", "8")]))
            .unwrap()
            .response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()["grpc-message"], "fault filter abort");
        // Out of range: no abort.
        assert!(
            p.abort_for(&req(&[("x-envoy-fault-abort-request", "99")]))
                .is_none()
        );
    }

    #[test]
    fn header_matchers_restrict_the_requests() {
        let p = policy(serde_json::json!({
            "abort": {"http_status": 500, "percentage": {"numerator": 100}},
            "headers": [{"name": "x-chaos", "exact_match": "on"}],
        }));
        let view = RouteView {
            matched: None,
            config: None,
        };
        assert!(!p.applies(&req(&[]), &view));
        assert!(p.applies(&req(&[("x-chaos", "on")]), &view));
        // upstream_cluster: no matched route, no fault.
        let p = policy(serde_json::json!({"upstream_cluster": "c"}));
        assert!(!p.applies(&req(&[]), &view));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = |v: serde_json::Value| Policy::build(&parse_typed(&v).unwrap()).err().unwrap().path;
        assert_eq!(e(serde_json::json!({"delay": {}})), "delay");
        assert_eq!(
            e(serde_json::json!({"abort": {"http_status": 503, "grpc_status": 14}})),
            "abort"
        );
        assert_eq!(
            e(serde_json::json!({"abort": {"http_status": 700}})),
            "abort.http_status"
        );
        let u = parse_typed::<FaultConfig>(&serde_json::json!({"response_rate_limit": {}}))
            .err()
            .unwrap();
        assert!(u.message.contains("response_rate_limit"), "{u:?}");
    }
}
