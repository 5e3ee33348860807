//! Distributed tracing (Envoy's HCM `tracing` with the OpenTelemetry
//! provider): the trace context a stream continues or starts, the
//! sampling decision, a server span per stream and a client span per
//! upstream try, exported over OTLP/gRPC. Not to be confused with
//! `crate::spans`, which is about the `tracing` crate's log spans.
//!
//! Costs: without `tracing` configured nothing here runs (the `proxy`
//! filter holds no tracer, `StreamInfo::trace` stays `Undecided` and the
//! router's hooks are one enum test). A stream not sampled gets its
//! outgoing `traceparent` and nothing else; only a sampled one allocates
//! its span records.
//!
//! Where it hooks: the `proxy` filter calls `Tracer::decide` when a
//! stream is about to be forwarded (the route is known, so a route's
//! `tracing` overrides apply) and `Tracer::finish` when its response head
//! is ready; `crate::forward` calls `attempt_begin` / `attempt_end` around
//! each upstream try.

pub mod context;
pub mod export;
pub mod otlp;
mod otlp_http;
pub mod otlp_logs;
mod providers;
pub mod sink;
mod trust;
mod zipkin;

use crate::config::tracing::{CustomTag, Percent, RouteTracingConfig, TracingConfig};
use crate::error::BuildError;
use crate::metrics::names;
use crate::stream::{Request, StreamInfo};
use context::Incoming;
use http::{HeaderName, HeaderValue};
use metrics::Counter;
use otlp::{Attr, Encoded, Kind, SpanRecord, Value};
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime};

/// Envoy's header that forces a trace (honoured from internal clients only: `trust`).
const X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

/// Sampling shares in millionths (Envoy's `Percent` has fractions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sampling {
    client: u32,
    random: u32,
    overall: u32,
    /// The HCM's `request_id_extension.pack_trace_reason`.
    pack_trace_reason: bool,
    /// `request_id_extension.use_request_id_for_trace_sampling`.
    draw_from_request_id: bool,
}

const ALL: u32 = 1_000_000;

fn share(field: &str, p: Option<Percent>) -> Result<Option<u32>, BuildError> {
    match p {
        None => Ok(None),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(Some((p.value * 10_000.0) as u32)),
        Some(p) => Err(BuildError::new(
            format!("{field}.value"),
            format!("{} is not a percentage in 0..=100", p.value),
        )),
    }
}

/// A custom tag, its value source compiled.
#[derive(Debug, Clone)]
enum TagSource {
    /// A literal, or an environment variable read once at build.
    Fixed(String),
    Header(HeaderName, String),
}

#[derive(Debug, Clone)]
struct Tag {
    name: Arc<str>,
    source: TagSource,
}

fn tags(field: &str, list: &[CustomTag]) -> Result<Vec<Tag>, BuildError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("{field}[{i}]");
        if t.tag.is_empty() {
            return Err(BuildError::new(format!("{path}.tag"), "must not be empty"));
        }
        let source = match (&t.literal, &t.request_header, &t.environment) {
            (Some(l), None, None) => TagSource::Fixed(l.value.clone()),
            (None, Some(h), None) => TagSource::Header(
                HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    BuildError::new(
                        format!("{path}.request_header.name"),
                        format!("'{}' is not a header name", h.name),
                    )
                })?,
                h.default_value.clone(),
            ),
            (None, None, Some(e)) => {
                TagSource::Fixed(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
            }
            _ => {
                return Err(BuildError::new(
                    path,
                    "exactly one of literal, request_header, environment is required (metadata tags are not supported)",
                ));
            }
        };
        out.push(Tag {
            name: t.tag.as_str().into(),
            source,
        });
    }
    Ok(out)
}

/// A route's `tracing`: sampling overrides and extra tags.
#[derive(Debug, Clone)]
pub struct RouteTracing {
    client: Option<u32>,
    random: Option<u32>,
    overall: Option<u32>,
    tags: Vec<Tag>,
}

impl RouteTracing {
    /// Compiles a route's `tracing`; `field` is its path for errors.
    pub fn build(field: &str, c: &RouteTracingConfig) -> Result<Box<Self>, BuildError> {
        Ok(Box::new(Self {
            client: share(&format!("{field}.client_sampling"), c.client_sampling)?,
            random: share(&format!("{field}.random_sampling"), c.random_sampling)?,
            overall: share(&format!("{field}.overall_sampling"), c.overall_sampling)?,
            tags: tags(&format!("{field}.custom_tags"), &c.custom_tags)?,
        }))
    }
}

/// Why a stream is (not) traced; the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Forced,
    Parent,
    Client,
    Random,
    NotSampled,
}

/// The HCM-level tracer of one `proxy` filter.
pub struct Tracer {
    sampling: Sampling,
    tags: Vec<Tag>,
    spawn_upstream_span: bool,
    max_path_tag_length: usize,
    exporter: export::Exporter,
    /// New traces get 64-bit ids (Zipkin's `trace_id_128bit: false`).
    id64: bool,
    /// `meshgate_tracing_decisions_total` by decision.
    decisions: [Counter; 5],
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampling", &self.sampling)
            .field("exporter", &self.exporter)
            .finish()
    }
}

impl Tracer {
    /// Builds the tracer of a `proxy` filter's `tracing` (paths relative to
    /// `tracing`); the collector cluster is resolved through `ctx`.
    pub fn build(
        cfg: &TracingConfig,
        request_id: crate::config::filters::RequestIdExtension,
        ctx: &crate::network::BuildContext<'_>,
        listener: &str,
    ) -> Result<Arc<Self>, BuildError> {
        if cfg.verbose {
            return Err(BuildError::new(
                "tracing.verbose",
                "verbose span annotations are not supported",
            ));
        }
        let providers::Built { exporter, id64 } = providers::build(cfg, ctx)?;
        let listener = listener.to_string();
        let decision = |d: &'static str| metrics::counter!(names::TRACING_DECISIONS_TOTAL, "listener" => listener.clone(), "decision" => d);
        Ok(Arc::new(Self {
            sampling: Sampling {
                client: share("tracing.client_sampling", cfg.client_sampling)?.unwrap_or(ALL),
                random: share("tracing.random_sampling", cfg.random_sampling)?.unwrap_or(ALL),
                overall: share("tracing.overall_sampling", cfg.overall_sampling)?.unwrap_or(ALL),
                pack_trace_reason: request_id.pack_trace_reason,
                draw_from_request_id: request_id.use_request_id_for_trace_sampling,
            },
            tags: tags("tracing.custom_tags", &cfg.custom_tags)?,
            spawn_upstream_span: cfg.spawn_upstream_span,
            max_path_tag_length: cfg.max_path_tag_length.unwrap_or(256) as usize,
            exporter,
            id64,
            decisions: [
                decision("forced"),
                decision("parent"),
                decision("client"),
                decision("random"),
                decision("not_sampled"),
            ],
        }))
    }

    /// Decides whether the stream is traced and sets the upstream's
    /// context on `req`: the server span's, or (with
    /// `spawn_upstream_span`) each try's client span's, set by
    /// `attempt_begin`. Called once, before the stream is forwarded.
    pub fn decide(
        self: &Arc<Self>,
        req: &mut Request,
        info: &mut StreamInfo,
        route: Option<&RouteTracing>,
    ) {
        if !matches!(info.trace, StreamTrace::Undecided) {
            return;
        }
        // One pass over the headers finds all tracing reads; the rare
        // `x-envoy-force-trace` is judged (and maybe removed) after it.
        let mut seen = context::scan(req.headers());
        if seen.x_envoy_force_trace {
            trust::drop_untrusted_force(req.headers_mut(), info);
            seen = context::scan(req.headers());
        }
        let incoming = context::extract_seen(&seen);
        let decision = sample_seen(&self.sampling, &seen, incoming.as_ref(), route);
        self.decisions[decision as usize].increment(1);
        // One draw for both ids (the trace id is unused when continued).
        let (new_trace_id, span_id) = context::random_ids(self.id64);
        let trace_id = incoming.map_or(new_trace_id, |c| c.trace_id);
        let b3_in = incoming.is_some_and(|c| c.format != context::Format::W3c);
        let has_tracestate = seen.tracestate.is_some();
        // The id's reason digit as the scan found it: most streams' is
        // already the one to write (a fresh id not traced), and need no
        // lookup of the header.
        let digit = seen
            .x_request_id
            .filter(|v| v.len() == 36)
            .map(|v| v.as_bytes()[REASON_AT]);
        if self.sampling.pack_trace_reason && digit.is_some_and(|d| d != reason_digit(decision)) {
            pack_reason(req, info, decision);
        }
        if decision == Decision::NotSampled {
            info.trace = StreamTrace::NotSampled;
            // An incoming W3C context travels on as it came; otherwise the
            // next hop learns the trace and that it is not sampled.
            if incoming.is_none() || b3_in {
                let h = req.headers_mut();
                if b3_in {
                    context::remove_b3(h);
                }
                h.insert(
                    context::TRACEPARENT,
                    context::traceparent(&trace_id, &span_id, false),
                );
            }
            return;
        }
        let h = req.headers_mut();
        if b3_in {
            context::remove_b3(h);
        }
        let trace_state = if incoming.is_some_and(|c| c.format == context::Format::W3c) {
            h.get(context::TRACESTATE).cloned()
        } else {
            if has_tracestate {
                h.remove(context::TRACESTATE);
            }
            None
        };
        if !self.spawn_upstream_span {
            h.insert(
                context::TRACEPARENT,
                context::traceparent(&trace_id, &span_id, true),
            );
        }
        let facts = self.request_facts(req, info, route);
        info.trace = StreamTrace::Sampled(Box::new(Active {
            tracer: self.clone(),
            trace_id,
            span_id,
            parent: incoming.map(|c| c.span_id),
            trace_state,
            start_unix_nanos: unix_nanos(info.start),
            facts,
            attempts: Attempts::default(),
        }));
    }

    /// What the server span's attributes (OpenTelemetry semantic
    /// conventions) say about the request, taken before it moves
    /// upstream: its strings copied into one buffer.
    fn request_facts(
        &self,
        req: &Request,
        info: &StreamInfo,
        route: Option<&RouteTracing>,
    ) -> Facts {
        let path = req.uri().path();
        let method = req.method().as_str();
        let rpc = match info.protocol {
            "dubbo" => Some("apache_dubbo"),
            "bolt" => Some("sofa_bolt"),
            _ if info.grpc => Some("grpc"),
            _ => None,
        };
        let host = req.uri().authority().map(|a| a.host()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                // What `rsplit_once(':')` keeps, without its `CharSearcher`
                // (about 120 instructions of a sampled stream).
                .map(|h| {
                    h.as_bytes()
                        .iter()
                        .rposition(|b| *b == b':')
                        .map_or(h, |i| h.get(..i).unwrap_or(h))
                })
        });
        let mut cut = path.len().min(self.max_path_tag_length);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        let route_tags = route.map_or(&[][..], |r| &r.tags[..]);
        let has_tags = !self.tags.is_empty() || !route_tags.is_empty();
        // Room for everything below and for `finish`'s additions (a
        // client span's name suffix and addresses) without a reallocation.
        let name_len = if rpc.is_some() {
            path.len()
        } else {
            method.len() + 1 + info.route.map_or(0, str::len)
        };
        let mut text = String::with_capacity(
            cut + host.map_or(0, str::len) + name_len + if has_tags { 128 } else { 0 } + 160,
        );
        let url_path = put(&mut text, |t| t.push_str(&path[..cut]));
        let host = host.map(|h| put(&mut text, |t| t.push_str(h)));
        let client = put(&mut text, |t| push_ip(t, info.downstream_remote_address));
        let mut tags = Vec::new();
        for t in self.tags.iter().chain(route_tags) {
            let v = match &t.source {
                TagSource::Fixed(v) => v.as_str(),
                TagSource::Header(h, default) => req
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(default.as_str()),
            };
            if !v.is_empty() {
                tags.push((t.name.clone(), put(&mut text, |s| s.push_str(v))));
            }
        }
        // The name goes last: a client span's is it with a suffix.
        let (rpc, name) = match rpc {
            Some(system) => {
                let mut parts = path.trim_start_matches('/').rsplitn(2, '/');
                let m = parts.next().unwrap_or("");
                let service = parts.next().unwrap_or("");
                let start = text.len();
                text.push_str(service);
                let service = Piece {
                    start,
                    end: text.len(),
                };
                text.push('/');
                let m = put(&mut text, |t| t.push_str(m));
                (
                    Some((system, service, m)),
                    Piece {
                        start,
                        end: text.len(),
                    },
                )
            }
            None => (
                None,
                put(&mut text, |t| {
                    t.push_str(method);
                    if let Some(r) = info.route {
                        t.push(' ');
                        t.push_str(r);
                    }
                }),
            ),
        };
        let p = &*PROTOCOL_ATTRS;
        let protocol = match info.protocol {
            "dubbo" => (&p.dubbo, None),
            "bolt" => (&p.bolt, None),
            _ => (
                &p.http,
                Some(match req.version() {
                    http::Version::HTTP_10 => &p.v1_0,
                    http::Version::HTTP_2 => &p.v2,
                    http::Version::HTTP_3 => &p.v3,
                    _ => &p.v1_1,
                }),
            ),
        };
        let (method, method_attr) = method_str(req.method());
        Facts {
            method,
            method_attr,
            route: info.route,
            rpc,
            protocol,
            text,
            path: url_path,
            host,
            client,
            tags,
            name,
        }
    }

    /// The stream's response head is ready: its spans are finished and
    /// queued. A stream answered before it was forwarded is decided here
    /// (`req` is then still the downstream request).
    pub fn finish(self: &Arc<Self>, req: &mut Request, info: &mut StreamInfo, status: u16) {
        if matches!(info.trace, StreamTrace::Undecided) {
            self.decide(req, info, None);
        }
        let StreamTrace::Sampled(mut a) =
            std::mem::replace(&mut info.trace, StreamTrace::NotSampled)
        else {
            return;
        };
        let end = now_unix_nanos();
        let Active {
            trace_id,
            span_id,
            parent,
            trace_state,
            start_unix_nanos,
            facts: f,
            attempts,
            ..
        } = &mut *a;
        let base = f.text.len();
        let mut queue = self.exporter.queue();
        for at in attempts.iter() {
            let status = at.status.unwrap_or(status);
            // The client span's name is the server span's (last in
            // `text`) and the cluster.
            f.text.truncate(base);
            f.text.push(' ');
            f.text.push_str(at.peer.cluster);
            let name = Piece {
                start: f.name.start,
                end: f.text.len(),
            };
            let t = f.text.as_str();
            let attributes = [
                f.method_attr(),
                ("http.response.status_code", Value::Int(i64::from(status))),
                ("meshgate.attempt", Value::Int(i64::from(at.number))),
            ];
            queue.push(SpanRecord {
                trace_id: *trace_id,
                span_id: at.span_id,
                parent_span_id: Some(*span_id),
                trace_state: None,
                name: name.of(t),
                kind: Kind::Client,
                start_unix_nanos: at.start_unix_nanos,
                end_unix_nanos: at.end_unix_nanos.unwrap_or(end),
                attributes: &attributes,
                peer: Some(&at.peer),
                tags: &[],
                error: status >= 500,
            });
        }
        f.text.truncate(base);
        // The last try's endpoint is usually the stream's: its address
        // is formatted already.
        let last_peer = attempts
            .last()
            .filter(|at| Some(at.peer.address) == info.upstream_host);
        let peer = match last_peer {
            Some(_) => None,
            None => info.upstream_host.map(|h| push_addr(&mut f.text, h).1),
        };
        let t = f.text.as_str();
        let mut attrs = Attrs::<16>::new();
        if let Some((system, service, method)) = f.rpc {
            attrs.push("rpc.system", Value::Str(system));
            attrs.push("rpc.service", Value::Str(service.of(t)));
            attrs.push("rpc.method", Value::Str(method.of(t)));
        }
        let (k, v) = f.method_attr();
        attrs.push(k, v);
        attrs.push("url.path", Value::Str(f.path.of(t)));
        if let Some(r) = f.route {
            attrs.push("http.route", Value::Str(r));
        }
        if let Some(h) = f.host {
            attrs.push("server.address", Value::Str(h.of(t)));
        }
        let (k, v) = f.protocol.0.attr();
        attrs.push(k, v);
        if let Some(version) = f.protocol.1 {
            let (k, v) = version.attr();
            attrs.push(k, v);
        }
        attrs.push("client.address", Value::Str(f.client.of(t)));
        attrs.push("http.response.status_code", Value::Int(i64::from(status)));
        if let Some(c) = info.upstream_cluster {
            // The last try's endpoint has it encoded when it is its cluster.
            match last_peer {
                Some(at) if at.peer.cluster == c => {
                    let (k, v) = at.peer.cluster_attr.attr();
                    attrs.push(k, v);
                }
                _ => attrs.push("upstream_cluster", Value::Str(c)),
            }
        }
        if let Some(at) = last_peer {
            let (k, v) = at.peer.peer_attr.attr();
            attrs.push(k, v);
        } else if let Some(p) = peer {
            attrs.push("peer.address", Value::Str(p.of(t)));
        }
        if let Some(r) = info.local_reply {
            attrs.push("meshgate.local_reply", Value::Str(r));
        }
        // Not allocated without custom tags.
        let tags: Vec<Attr<'_>> = f
            .tags
            .iter()
            .map(|(k, v)| (&**k, Value::Str(v.of(t))))
            .collect();
        queue.push(SpanRecord {
            trace_id: *trace_id,
            span_id: *span_id,
            parent_span_id: *parent,
            trace_state: trace_state.as_ref().and_then(|v| v.to_str().ok()),
            name: f.name.of(t),
            kind: Kind::Server,
            start_unix_nanos: *start_unix_nanos,
            end_unix_nanos: end,
            attributes: attrs.as_slice(),
            peer: None,
            tags: &tags,
            error: status >= 500,
        });
    }
}

/// The sampling decision of a stream, Envoy's order:
/// `x-envoy-force-trace` forces; an incoming context's sampled flag is
/// honoured (parent-based); a forced reason packed in the request id
/// forces; `x-client-trace-id` is traced under `client_sampling`;
/// otherwise `random_sampling` by the request id, and failing that the
/// sampled or client reason packed in the request id.
/// `overall_sampling` then bounds the client, random and packed decisions.
#[cfg(test)]
fn sample(
    sampling: &Sampling,
    h: &http::HeaderMap,
    incoming: Option<&Incoming>,
    route: Option<&RouteTracing>,
) -> Decision {
    sample_seen(sampling, &context::scan(h), incoming, route)
}

/// `sample` from the headers' `scan`.
fn sample_seen(
    sampling: &Sampling,
    h: &context::Seen<'_>,
    incoming: Option<&Incoming>,
    route: Option<&RouteTracing>,
) -> Decision {
    if h.x_envoy_force_trace {
        return Decision::Forced;
    }
    if let Some(sampled) = incoming.and_then(|c| c.sampled) {
        return if sampled {
            Decision::Parent
        } else {
            Decision::NotSampled
        };
    }
    // A decision an earlier hop packed into the request id (Envoy's UUID
    // request id extension): kept unless this hop's own sampling traces.
    let packed = if sampling.pack_trace_reason {
        h.x_request_id.and_then(packed_reason)
    } else {
        None
    };
    if packed == Some(Decision::Forced) {
        return Decision::Forced;
    }
    let client = route.and_then(|r| r.client).unwrap_or(sampling.client);
    let random = route.and_then(|r| r.random).unwrap_or(sampling.random);
    let overall = route.and_then(|r| r.overall).unwrap_or(sampling.overall);
    let client_applies = h.x_client_trace_id && client > 0;
    // Shares of 0 % or 100 % need no draw (a bench's and many operators'
    // settings): not drawing saves the request id's hash per stream.
    if packed.is_none() {
        if !client_applies && random == 0 {
            return Decision::NotSampled;
        }
        if !client_applies && random >= ALL && overall >= ALL {
            return Decision::Random;
        }
    }
    // The request id makes the draw stable across hops (Envoy's
    // random sampling is by `x-request-id`).
    let draw = match h.x_request_id {
        Some(id) if sampling.draw_from_request_id => request_id_draw(id),
        _ => (context::random_u64() % u64::from(ALL)) as u32,
    };
    let d = if h.x_client_trace_id && draw < client {
        Decision::Client
    } else if draw < random {
        Decision::Random
    } else if let Some(p) = packed {
        p
    } else {
        return Decision::NotSampled;
    };
    if draw < overall {
        d
    } else {
        Decision::NotSampled
    }
}

/// The position of a UUID's version digit, where Envoy's UUID request id
/// extension keeps the trace reason.
const REASON_AT: usize = 14;

/// The trace reason a 36-character UUID request id carries: `a` forced,
/// `9` sampled, `b` client-forced; anything else (a fresh UUIDv4's `4`)
/// none.
fn packed_reason(id: &HeaderValue) -> Option<Decision> {
    let b = id.as_bytes();
    if b.len() != 36 {
        return None;
    }
    match b[REASON_AT] {
        b'a' => Some(Decision::Forced),
        b'9' => Some(Decision::Random),
        b'b' => Some(Decision::Client),
        _ => None,
    }
}

/// The draw (parts per million) a request id makes: Envoy's, its first
/// 8 hex digits modulo 10,000 (scaled to a million), so meshgate and Envoy
/// hops sample the same requests; an id that does not start with 8 hex
/// digits is hashed instead.
fn request_id_draw(id: &HeaderValue) -> u32 {
    let b = id.as_bytes();
    let hex = b.get(..8).and_then(|h| {
        h.iter().try_fold(0u64, |acc, &c| {
            let d = (c as char).to_digit(16)?;
            Some(acc << 4 | u64::from(d))
        })
    });
    match hex {
        Some(v) => (v % 10_000) as u32 * (ALL / 10_000),
        None => (xxhash_rust::xxh3::xxh3_64(b) % u64::from(ALL)) as u32,
    }
}

/// Envoy's `pack_trace_reason`: the stream's decision written into its
/// UUID request id, so the next hop that keeps the id keeps the decision.
/// Only a 36-character id is changed, and only when the digit differs (a
/// fresh id not traced keeps its `4`). The id as changed is kept in the
/// stream's filter state for `always_set_request_id_in_response`.
fn pack_reason(req: &mut Request, info: &mut StreamInfo, d: Decision) {
    let want = reason_digit(d);
    let Some(id) = req.headers().get("x-request-id") else {
        return;
    };
    let b = id.as_bytes();
    if b.len() != 36 || b[REASON_AT] == want {
        return;
    }
    let mut v = b.to_vec();
    v[REASON_AT] = want;
    // One visible ASCII byte replaced by another: still a valid value.
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        req.headers_mut().insert("x-request-id", v.clone());
        info.filter_state.insert(PackedRequestId(v));
    }
}

/// The digit a decision is packed as.
fn reason_digit(d: Decision) -> u8 {
    match d {
        Decision::Forced => b'a',
        Decision::Parent | Decision::Random => b'9',
        Decision::Client => b'b',
        Decision::NotSampled => b'4',
    }
}

/// The stream's `x-request-id` after `pack_trace_reason` changed it.
#[derive(Debug, Clone)]
pub struct PackedRequestId(pub HeaderValue);

/// One upstream try of a sampled stream (a client span).
#[derive(Debug, Clone)]
struct AttemptSpan {
    span_id: [u8; 8],
    number: u32,
    /// Its endpoint's attributes (and cluster).
    peer: Arc<otlp::PeerAttrs>,
    start_unix_nanos: u64,
    end_unix_nanos: Option<u64>,
    status: Option<u16>,
}

/// A sampled stream's trace state, until its spans are finished.
#[derive(Debug, Clone)]
pub struct Active {
    tracer: Arc<Tracer>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: Option<HeaderValue>,
    start_unix_nanos: u64,
    facts: Facts,
    attempts: Attempts,
}

/// A sampled stream's tries: the first inline (most streams make one; a
/// `Vec` cost an allocation and a free per sampled stream), more after.
#[derive(Debug, Clone, Default)]
struct Attempts {
    first: Option<AttemptSpan>,
    rest: Vec<AttemptSpan>,
}

impl Attempts {
    fn push(&mut self, at: AttemptSpan) {
        if self.first.is_none() {
            self.first = Some(at);
        } else {
            self.rest.push(at);
        }
    }

    fn last(&self) -> Option<&AttemptSpan> {
        self.rest.last().or(self.first.as_ref())
    }

    fn last_mut(&mut self) -> Option<&mut AttemptSpan> {
        if self.rest.is_empty() {
            self.first.as_mut()
        } else {
            self.rest.last_mut()
        }
    }

    fn iter(&self) -> impl Iterator<Item = &AttemptSpan> {
        self.first.iter().chain(&self.rest)
    }
}

/// A piece of `Facts::text`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
}

impl Piece {
    fn of(self, text: &str) -> &str {
        text.get(self.start..self.end).unwrap_or_default()
    }
}

/// Appends what `f` writes to `text`; returns where it is.
fn put(text: &mut String, f: impl FnOnce(&mut String)) -> Piece {
    let start = text.len();
    f(text);
    Piece {
        start,
        end: text.len(),
    }
}

/// The request as the server span describes it. The strings copied
/// from the request share one allocation (`text`; a sampled stream's
/// attributes were about ten small `String`s before, the largest part
/// of its cost after the encoding: benches/RESULTS.md); `finish` appends
/// the upstream addresses to it and truncates it back.
#[derive(Debug, Clone)]
struct Facts {
    method: Cow<'static, str>,
    /// `http.request.method` encoded, for a standard method.
    method_attr: Option<&'static Encoded>,
    route: Option<&'static str>,
    /// `rpc.system`, `rpc.service`, `rpc.method`.
    rpc: Option<(&'static str, Piece, Piece)>,
    /// `network.protocol.name` and `.version`, encoded.
    protocol: (&'static Encoded, Option<&'static Encoded>),
    text: String,
    path: Piece,
    host: Option<Piece>,
    client: Piece,
    tags: Vec<(Arc<str>, Piece)>,
    /// The server span's name, the last thing in `text`.
    name: Piece,
}

impl Facts {
    fn method_attr(&self) -> Attr<'_> {
        match self.method_attr {
            Some(e) => e.attr(),
            None => ("http.request.method", Value::Str(&self.method)),
        }
    }
}

/// The `network.protocol.name` and `.version` attributes, encoded once.
struct ProtocolAttrs {
    http: Encoded,
    dubbo: Encoded,
    bolt: Encoded,
    v1_0: Encoded,
    v1_1: Encoded,
    v2: Encoded,
    v3: Encoded,
}

static PROTOCOL_ATTRS: LazyLock<ProtocolAttrs> = LazyLock::new(|| {
    let name = |n| Encoded::new("network.protocol.name", n);
    let version = |v| Encoded::new("network.protocol.version", v);
    ProtocolAttrs {
        http: name("http"),
        dubbo: name("dubbo"),
        bolt: name("bolt"),
        v1_0: version("1.0"),
        v1_1: version("1.1"),
        v2: version("2"),
        v3: version("3"),
    }
});

/// The standard methods, in `method_str`'s order.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Their `http.request.method` attributes, encoded once.
static METHOD_ATTRS: LazyLock<[Encoded; 9]> =
    LazyLock::new(|| METHODS.map(|m| Encoded::new("http.request.method", m)));

/// A span's own attributes, on the stack (there are at most a dozen).
struct Attrs<'a, const N: usize> {
    items: [Attr<'a>; N],
    len: usize,
}

impl<'a, const N: usize> Attrs<'a, N> {
    fn new() -> Self {
        Self {
            items: [("", Value::Int(0)); N],
            len: 0,
        }
    }

    fn push(&mut self, key: &'a str, value: Value<'a>) {
        debug_assert!(self.len < N, "more span attributes than room");
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, value);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[Attr<'a>] {
        &self.items[..self.len]
    }
}

/// A stream's tracing state (`StreamInfo::trace`).
#[derive(Debug, Clone, Default)]
pub enum StreamTrace {
    /// No decision yet (or tracing is not configured).
    #[default]
    Undecided,
    NotSampled,
    Sampled(Box<Active>),
}

/// An upstream try starts (`crate::forward`): with `spawn_upstream_span`,
/// a sampled stream gets a client span and the upstream its context.
#[inline]
pub fn attempt_begin(
    info: &mut StreamInfo,
    req: &mut Request,
    endpoint: &crate::cluster::Endpoint,
) {
    if let StreamTrace::Sampled(a) = &mut info.trace {
        begin_sampled(
            a,
            req,
            endpoint,
            info.upstream_cluster,
            info.upstream_attempts,
        );
    }
}

fn begin_sampled(
    a: &mut Active,
    req: &mut Request,
    endpoint: &crate::cluster::Endpoint,
    cluster: Option<&'static str>,
    number: u32,
) {
    if !a.tracer.spawn_upstream_span {
        return;
    }
    let end = now_unix_nanos();
    // A try that was not ended explicitly ends where the next begins.
    if let Some(last) = a.attempts.last_mut()
        && last.end_unix_nanos.is_none()
    {
        last.end_unix_nanos = Some(end);
    }
    let span_id = context::random_id::<8>();
    let h = req.headers_mut();
    h.insert(
        context::TRACEPARENT,
        context::traceparent(&a.trace_id, &span_id, true),
    );
    if let Some(ts) = &a.trace_state {
        h.insert(context::TRACESTATE, ts.clone());
    }
    a.attempts.push(AttemptSpan {
        span_id,
        number,
        peer: endpoint.trace_peer(cluster.unwrap_or("")),
        start_unix_nanos: end,
        end_unix_nanos: None,
        status: None,
    });
}

/// The current upstream try ended with `status` (a response's, or the
/// local reply's for a failed try).
#[inline]
pub fn attempt_end(info: &mut StreamInfo, status: u16) {
    if let StreamTrace::Sampled(a) = &mut info.trace
        && let Some(last) = a.attempts.last_mut()
        && last.end_unix_nanos.is_none()
    {
        last.end_unix_nanos = Some(now_unix_nanos());
        last.status = Some(status);
    }
}

/// A standard method's name without an allocation, and its attribute
/// encoded.
fn method_str(m: &http::Method) -> (Cow<'static, str>, Option<&'static Encoded>) {
    let i = match m.as_str() {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "DELETE" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "PATCH" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        other => return (Cow::Owned(other.to_string()), None),
    };
    (Cow::Borrowed(METHODS[i]), METHOD_ATTRS.get(i))
}

/// Appends `n` in decimal (written into a stack buffer first: one
/// append, not a `String::push` per digit).
fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    s.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// Appends an IPv4 address's dotted quad, built in a stack buffer.
fn push_v4(s: &mut String, v4: std::net::Ipv4Addr) {
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    // SAFETY: `buf[..n]` holds ASCII digits and dots only. Checking
    // them (`from_utf8`, about 70 instructions on a short buffer) was a
    // third of formatting a sampled stream's client address
    // (benches/RESULTS.md).
    #[allow(unsafe_code)]
    s.push_str(unsafe { std::str::from_utf8_unchecked(&buf[..n]) });
}

fn push_ip(s: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => push_v4(s, v4),
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(s, "{v6}");
        }
    }
}

/// Appends an address as `Display` writes it (`ip:port`,
/// `[v6]:port`); returns where its IP and the whole address are.
fn push_addr(s: &mut String, a: std::net::SocketAddr) -> (Piece, Piece) {
    let start = s.len();
    let v6 = a.is_ipv6();
    if v6 {
        s.push('[');
    }
    let ip = put(s, |s| push_ip(s, a.ip()));
    if v6 {
        s.push(']');
    }
    s.push(':');
    push_decimal(s, u32::from(a.port()));
    (
        ip,
        Piece {
            start,
            end: s.len(),
        },
    )
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall-clock time of a monotonic instant in the past.
fn unix_nanos(at: Instant) -> u64 {
    now_unix_nanos().saturating_sub(at.elapsed().as_nanos() as u64)
}

#[cfg(test)]
mod tests;
