//! `grpc_json_transcoder`: REST/JSON clients to gRPC services (Envoy's
//! `envoy.filters.http.grpc_json_transcoder`). From a protobuf descriptor
//! set and its `google.api.http` annotations, a request such as `GET
//! /v1/shelves/1/books?limit=2` becomes the gRPC call `POST
//! /pkg.Service/Method` (`content-type: application/grpc`, one framed
//! message built from the path variables, query parameters and JSON body
//! with proto3 JSON rules); the route is matched again on the gRPC path
//! (unless `match_incoming_request_route`), so the router sends it to the
//! gRPC cluster with its retries, timeouts and stats. The response's
//! messages come back as JSON (a server stream as one JSON array, or one
//! message per line), a gRPC error as its HTTP status.
//!
//! This module owns the request side; `rules` builds the method table
//! from the descriptors, `template` parses and matches path templates,
//! `response` turns the gRPC response body into JSON.

mod response;
mod rules;
mod template;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::config::grpc_json_transcoder::GrpcJsonTranscoderConfig;
use meshgate_core::config::parse_typed;
use meshgate_core::filter_chain::RouteView;
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, Response, StreamFilter, StreamFilterFactory,
    StreamInfo, full_body, is_grpc, local_reply,
};
use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor};
use rules::{Binding, BodyRule, MethodInfo, Rules};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The default bound on a JSON request body.
const DEFAULT_MAX_REQUEST: usize = 1 << 20;
/// The default bound on one gRPC response message.
const DEFAULT_MAX_RESPONSE: usize = 4 << 20;

/// Factory of `grpc_json_transcoder`.
pub struct GrpcJsonTranscoderFactory;

impl StreamFilterFactory for GrpcJsonTranscoderFactory {
    fn name(&self) -> &'static str {
        "grpc_json_transcoder"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: GrpcJsonTranscoderConfig = parse_typed(config)?;
        Ok(Arc::new(Transcoder::build(c)?))
    }
}

/// The filter: the method table and the options.
pub(crate) struct Transcoder {
    rules: Rules,
    cfg: GrpcJsonTranscoderConfig,
    max_request: usize,
    max_response: usize,
}

/// What the request phase leaves for the response phase of a transcoded
/// stream (in `StreamInfo::filter_state`).
#[derive(Clone)]
struct Transcoded {
    method: Arc<MethodInfo>,
    response_body: Option<Arc<str>>,
}

/// A request refusal: the counter's reason, the status and a detail for
/// the body.
struct Refuse {
    reason: &'static str,
    detail: String,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refuse {
    Refuse {
        reason,
        detail: detail.into(),
    }
}

impl Transcoder {
    pub(crate) fn build(cfg: GrpcJsonTranscoderConfig) -> Result<Self, BuildError> {
        let rules = Rules::build(&cfg)?;
        let max_request = match cfg.max_request_body_size {
            Some(0) => return Err(BuildError::new("max_request_body_size", "must be > 0")),
            Some(n) => n as usize,
            None => DEFAULT_MAX_REQUEST,
        };
        let max_response = match cfg.max_response_body_size {
            Some(0) => return Err(BuildError::new("max_response_body_size", "must be > 0")),
            Some(n) => n as usize,
            None => DEFAULT_MAX_RESPONSE,
        };
        Ok(Self {
            rules,
            cfg,
            max_request,
            max_response,
        })
    }

    /// A refusal as the client's answer, counted.
    fn reject(&self, info: &mut StreamInfo, r: Refuse) -> FilterStatus {
        metrics::counter!(names::GRPC_JSON_TRANSCODER_REJECTED_TOTAL, "reason" => r.reason)
            .increment(1);
        tracing::debug!(reason = r.reason, detail = %r.detail, "grpc_json_transcoder refused");
        let reason = if r.reason == "unknown_method" {
            LocalReason::NoRoute
        } else {
            LocalReason::BadRequest
        };
        let mut resp = local_reply(info, reason);
        *resp.body_mut() = full_body(format!("meshgate: grpc_json_transcoder: {}\n", r.detail));
        FilterStatus::Respond(resp)
    }

    async fn transcode(&self, req: &mut Request, info: &mut StreamInfo) -> FilterStatus {
        // A gRPC client's own call passes through (as Envoy).
        if self.rules.is_empty() || is_grpc(req.headers()) {
            return FilterStatus::Continue;
        }
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("").to_string();
        let Some((binding, values)) = self.rules.find(req.method(), path) else {
            if self.cfg.request_validation_options.reject_unknown_method {
                return self.reject(
                    info,
                    refuse("unknown_method", "no gRPC method for this path"),
                );
            }
            return FilterStatus::Continue;
        };
        let binding = binding.clone();
        let body = if binding.body.is_some() {
            match meshgate_core::filter_chain::buffer_body(req, info, self.max_request).await {
                Ok(b) => b,
                Err(FilterStatus::Respond(mut resp)) => {
                    let reason = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        "too_large"
                    } else {
                        "bad_body"
                    };
                    metrics::counter!(names::GRPC_JSON_TRANSCODER_REJECTED_TOTAL, "reason" => reason)
                        .increment(1);
                    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
                    return FilterStatus::Respond(resp);
                }
                Err(other) => return other,
            }
        } else {
            Bytes::new()
        };
        let frames = match self.message(&binding, &values, &query, &body) {
            Ok(f) => f,
            Err(r) => return self.reject(info, r),
        };
        rewrite(req, &binding.method, frames);
        metrics::counter!(names::GRPC_JSON_TRANSCODER_TRANSCODED_TOTAL, "method" => binding.method.label)
            .increment(1);
        if !binding.method.desc.is_server_streaming() {
            // Unary: the response is read whole, so that an error in the
            // trailers after the head still sets the HTTP status (Envoy
            // buffers unary responses the same way).
            info.filter_state.insert(crate::grpc::BufferResponse {
                max_bytes: self.max_response.saturating_add(5),
                when: response::buffer_unary,
            });
        }
        info.filter_state.insert(Transcoded {
            method: binding.method.clone(),
            response_body: binding.response_body.clone(),
        });
        if self.cfg.match_incoming_request_route {
            FilterStatus::Continue
        } else {
            FilterStatus::Reroute
        }
    }

    /// The framed gRPC request message(s) of a matched request.
    fn message(
        &self,
        b: &Binding,
        values: &[Option<String>],
        query: &str,
        body: &[u8],
    ) -> Result<BytesMut, Refuse> {
        let input = b.method.desc.input();
        // Path and query bindings, as one JSON object laid over the body's.
        let mut bound = Map::new();
        let mut bound_paths: Vec<Vec<String>> = Vec::new();
        for (var, raw) in b.template.vars.iter().zip(values) {
            let field = resolve(&input, &var.field).ok_or_else(|| {
                refuse(
                    "bad_path_binding",
                    format!("no field {}", var.field.join(".")),
                )
            })?;
            let v = raw
                .as_deref()
                .and_then(|raw| scalar(&field.leaf, raw))
                .ok_or_else(|| {
                    refuse(
                        "bad_path_binding",
                        format!("bad value for {}", var.field.join(".")),
                    )
                })?;
            set(&mut bound, &field.path, v, false);
            bound_paths.push(field.path);
        }
        let body_star = matches!(b.body, Some(BodyRule::All));
        if !query.is_empty() && !body_star {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let plus = self.cfg.query_param_unescape_plus;
                let key = template::percent_decode(k, template::Keep::Nothing, plus)
                    .ok_or_else(|| refuse("bad_query_parameter", "bad percent-encoding"))?;
                let val = template::percent_decode(v, template::Keep::Nothing, plus).ok_or_else(
                    || {
                        refuse(
                            "bad_query_parameter",
                            format!("bad percent-encoding in {key}"),
                        )
                    },
                )?;
                if self.cfg.ignored_query_parameters.contains(&key) {
                    continue;
                }
                let segs: Vec<String> = key.split('.').map(str::to_string).collect();
                let Some(field) = resolve(&input, &segs) else {
                    if self.cfg.ignore_unknown_query_parameters
                        && !self
                            .cfg
                            .request_validation_options
                            .reject_unknown_query_parameters
                    {
                        continue;
                    }
                    return Err(refuse(
                        "unknown_query_parameter",
                        format!("no field for query parameter '{key}'"),
                    ));
                };
                // The path binding wins (as google.api.http says).
                if bound_paths.contains(&field.path) {
                    continue;
                }
                if let Some(BodyRule::Field(bp)) = &b.body
                    && field.path.starts_with(bp)
                {
                    continue;
                }
                let v = scalar(&field.leaf, &val).ok_or_else(|| {
                    refuse("bad_query_parameter", format!("bad value for '{key}'"))
                })?;
                set(&mut bound, &field.path, v, field.leaf.is_list());
            }
        }
        // The body: the whole message, one field, or none.
        let parsed: Option<Value> = match &b.body {
            None => None,
            Some(_) if body.is_empty() => None,
            Some(_) => Some(
                serde_json::from_slice(body)
                    .map_err(|e| refuse("bad_json", format!("bad JSON body: {e}")))?,
            ),
        };
        let client_stream = b.method.desc.is_client_streaming();
        let items: Vec<Value> = match (parsed, &b.body) {
            (None, _) => vec![Value::Object(Map::new())],
            (Some(Value::Array(a)), Some(BodyRule::All)) if client_stream => a,
            (Some(v), Some(BodyRule::All)) => vec![v],
            (Some(v), Some(BodyRule::Field(p))) => {
                let mut o = Map::new();
                set(&mut o, p, v, false);
                vec![Value::Object(o)]
            }
            (Some(_), None) => vec![Value::Object(Map::new())],
        };
        let mut out = BytesMut::new();
        for item in items {
            let Value::Object(mut obj) = item else {
                return Err(refuse("bad_json", "the JSON body must be an object"));
            };
            if self
                .cfg
                .request_validation_options
                .reject_binding_body_field_collisions
                && collides(&obj, &bound)
            {
                return Err(refuse(
                    "binding_body_collision",
                    "a body field is also bound by the path or the query",
                ));
            }
            merge(&mut obj, bound.clone());
            let msg = DynamicMessage::deserialize_with_options(
                input.clone(),
                Value::Object(obj),
                &DeserializeOptions::new(),
            )
            .map_err(|e| refuse("bad_json", format!("{e}")))?;
            let len = prost::Message::encoded_len(&msg);
            let len32 = u32::try_from(len).map_err(|_| refuse("bad_json", "message too large"))?;
            out.reserve(5 + len);
            out.put_u8(0);
            out.put_u32(len32);
            prost::Message::encode(&msg, &mut out)
                .map_err(|e| refuse("bad_json", format!("{e}")))?;
        }
        Ok(out)
    }
}

/// Rewrites the REST request into the gRPC call.
fn rewrite(req: &mut Request, m: &MethodInfo, frames: BytesMut) {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(m.path.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.method_mut() = Method::POST;
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    h.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(frames.len()),
    );
    // The JSON body's encodings mean nothing to the gRPC server.
    h.remove(http::header::CONTENT_ENCODING);
    h.remove(http::header::ACCEPT_ENCODING);
    h.remove("grpc-accept-encoding");
    h.remove("grpc-encoding");
    *req.body_mut() = full_body(frames.freeze());
}

/// A request field path resolved against the input message.
struct Resolved {
    /// Proto field names, the JSON keys written.
    path: Vec<String>,
    leaf: prost_reflect::FieldDescriptor,
}

/// Resolves `segs` (proto or JSON field names) from `msg`.
fn resolve(msg: &MessageDescriptor, segs: &[String]) -> Option<Resolved> {
    let mut m = msg.clone();
    let mut path = Vec::with_capacity(segs.len());
    let mut leaf = None;
    for (i, s) in segs.iter().enumerate() {
        let f = m
            .get_field_by_name(s)
            .or_else(|| m.get_field_by_json_name(s))?;
        path.push(f.name().to_string());
        if i + 1 < segs.len() {
            if f.is_list() || f.is_map() {
                return None;
            }
            match f.kind() {
                Kind::Message(next) => m = next,
                _ => return None,
            }
        }
        leaf = Some(f);
    }
    Some(Resolved { path, leaf: leaf? })
}

/// The JSON value of one path or query string for a field: proto3 JSON
/// takes numbers (and 64-bit integers) as strings, so only `bool` needs
/// converting; a message field takes it as its JSON string form (well-known
/// types: `Timestamp`, `Duration`, wrappers).
fn scalar(f: &prost_reflect::FieldDescriptor, s: &str) -> Option<Value> {
    if f.is_map() {
        return None;
    }
    Some(match f.kind() {
        Kind::Bool => Value::Bool(match s {
            "true" => true,
            "false" => false,
            _ => return None,
        }),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => Value::Bool(match s {
            "true" => true,
            "false" => false,
            _ => return None,
        }),
        _ => Value::String(s.to_string()),
    })
}

/// Sets `path` in `obj` (making the objects on the way); with `append`,
/// the value is pushed onto a list there.
fn set(obj: &mut Map<String, Value>, path: &[String], v: Value, append: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut o = obj;
    for p in parents {
        let e = o
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        let Value::Object(next) = e else { return };
        o = next;
    }
    if append {
        match o
            .entry(last.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(a) => a.push(v),
            other => *other = Value::Array(vec![v]),
        }
    } else {
        o.insert(last.clone(), v);
    }
}

/// Lays `bound` over `obj`, object by object (a binding wins).
fn merge(obj: &mut Map<String, Value>, bound: Map<String, Value>) {
    for (k, v) in bound {
        match (obj.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (_, v) => {
                obj.insert(k, v);
            }
        }
    }
}

/// Whether `obj` (the body) sets a field `bound` sets too.
fn collides(obj: &Map<String, Value>, bound: &Map<String, Value>) -> bool {
    bound.iter().any(|(k, v)| match (obj.get(k), v) {
        (None, _) => false,
        (Some(Value::Object(a)), Value::Object(b)) => collides(a, b),
        (Some(_), _) => true,
    })
}

impl StreamFilter for Transcoder {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        _route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        Box::pin(self.transcode(req, info))
    }

    fn on_response(&self, resp: &mut Response, info: &mut StreamInfo) {
        let Some(t) = info.filter_state.remove::<Transcoded>() else {
            return;
        };
        response::convert(self, &t, resp);
    }
}

#[cfg(test)]
mod tests;
