//! Custom local replies (Envoy HCM's `local_reply_config`): the `proxy`
//! filter hands each of meshgate's own answers (a `LocalReason` reply, or
//! a route's `direct_response`, as Envoy sends those as local replies too)
//! to `LocalReplies::apply`, once, before the response phase. The first
//! mapper whose filter matches may rewrite the status, the body and add
//! headers; `body_format` (or the mapper's override) then renders the body
//! with command operators (`%LOCAL_REPLY_BODY%`, `%RESPONSE_CODE%`,
//! `%REQ(X)%`...). For a gRPC request the rendered text becomes the
//! `grpc-message` of the trailers-only status (as Envoy does). Built once
//! per listener; nothing of this runs when no `local_reply_config` is set.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use meshgate_core::BuildError;
use meshgate_core::config::local_reply as cfg;
use meshgate_core::router::HeaderMatcher;
use meshgate_core::stream::{LocalReason, Response, StreamInfo, full_body};
use serde_json::Value;

/// Marks a route's `direct_response` (its body) so that it is mapped as
/// a local reply, as Envoy does.
#[derive(Clone)]
pub(crate) struct DirectBody(pub(crate) Bytes);

/// Marks a response already mapped: the gRPC conversion keeps it as is.
#[derive(Clone, Copy)]
pub(crate) struct Mapped;

/// What of the request a local reply may read, kept before the request
/// is forwarded (the router consumes it).
pub(crate) struct RequestSeen {
    headers: Option<HeaderMap>,
    version: Version,
}

/// A compiled `local_reply_config`.
pub(crate) struct LocalReplies {
    mappers: Vec<Mapper>,
    format: Option<Format>,
    /// A filter or operator reads request headers: they are kept.
    reads_request: bool,
}

struct Mapper {
    filter: Filter,
    status: Option<StatusCode>,
    body: Option<String>,
    format: Option<Format>,
    headers: Vec<(HeaderName, Template, bool)>,
}

enum Filter {
    Status(cfg::ComparisonOp, u32),
    Header(HeaderMatcher),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Any,
    Flags(Vec<&'static str>),
}

struct Format {
    kind: FormatKind,
    content_type: HeaderValue,
    omit_empty: bool,
}

enum FormatKind {
    Text(Template),
    Json(Vec<(String, JsonTemplate)>),
}

enum JsonTemplate {
    Str(Template),
    Obj(Vec<(String, JsonTemplate)>),
    Other(Value),
}

#[derive(Debug, PartialEq)]
struct Template(Vec<Piece>);

#[derive(Debug, PartialEq)]
enum Piece {
    Lit(String),
    Op(Op, Option<usize>),
}

#[derive(Debug, PartialEq)]
enum Op {
    LocalReplyBody,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    Protocol,
    StartTime,
    RouteName,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    Req(HeaderName, Option<HeaderName>),
    Resp(HeaderName, Option<HeaderName>),
}

/// The response flags meshgate sets (Envoy's short names), by reason.
fn flag(r: LocalReason) -> Option<&'static str> {
    Some(match r {
        LocalReason::NoRoute => "NR",
        LocalReason::ClusterNotFound => "NC",
        LocalReason::NoHealthyUpstream => "UH",
        LocalReason::UpstreamConnectFailure => "UF",
        LocalReason::UpstreamReset => "UR",
        LocalReason::UpstreamTimeout => "UT",
        LocalReason::UpstreamProtocolError => "UPE",
        LocalReason::Overflow => "UO",
        LocalReason::BadRequest | LocalReason::HeadersTooLarge => "DPE",
        LocalReason::StreamIdleTimeout => "SI",
        LocalReason::RateLimited => "RL",
        LocalReason::DropOverload => "DO",
        LocalReason::Overloaded => "OM",
        LocalReason::PayloadTooLarge
        | LocalReason::Unauthenticated
        | LocalReason::Forbidden
        | LocalReason::FilterConfigError => return None,
    })
}

const FLAGS: [&str; 13] = [
    "NR", "NC", "UH", "UF", "UR", "UT", "UPE", "UO", "DPE", "SI", "RL", "DO", "OM",
];

fn e(path: &str, msg: impl std::fmt::Display) -> BuildError {
    BuildError::new(path, msg)
}

impl LocalReplies {
    /// Compiles the config; errors name the field (relative to
    /// `local_reply_config`).
    pub(crate) fn build(c: &cfg::LocalReplyConfig) -> Result<Self, BuildError> {
        let mut reads_request = false;
        let mut mappers = Vec::new();
        for (i, m) in c.mappers.iter().enumerate() {
            let p = format!("mappers[{i}]");
            let filter = build_filter(&m.filter, &format!("{p}.filter"), &mut reads_request)?;
            let status = match m.status_code {
                None => None,
                Some(s) if (200..=599).contains(&s) => StatusCode::from_u16(s).ok(),
                Some(_) => return Err(e(&format!("{p}.status_code"), "must be in 200..=599")),
            };
            let format = match &m.body_format_override {
                None => None,
                Some(f) => Some(build_format(
                    f,
                    &format!("{p}.body_format_override"),
                    &mut reads_request,
                )?),
            };
            let mut headers = Vec::new();
            for (j, h) in m.headers_to_add.iter().enumerate() {
                let hp = format!("{p}.headers_to_add[{j}]");
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| e(&format!("{hp}.name"), "invalid header name"))?;
                if name.as_str().starts_with(':') {
                    return Err(e(&format!("{hp}.name"), "pseudo-headers cannot be added"));
                }
                let t = Template::parse(&h.value, &format!("{hp}.value"))?;
                reads_request |= t.reads_request();
                headers.push((name, t, h.append));
            }
            mappers.push(Mapper {
                filter,
                status,
                body: m.body.as_ref().map(|b| b.inline_string.clone()),
                format,
                headers,
            });
        }
        let format = match &c.body_format {
            None => None,
            Some(f) => Some(build_format(f, "body_format", &mut reads_request)?),
        };
        Ok(Self {
            mappers,
            format,
            reads_request,
        })
    }

    /// What to keep of the request before it is forwarded (its headers
    /// only when a filter or an operator reads them).
    /// Boxed: the stream's future holds only a pointer.
    pub(crate) fn see(&self, req: &meshgate_core::stream::Request) -> Box<RequestSeen> {
        Box::new(RequestSeen {
            headers: self.reads_request.then(|| req.headers().clone()),
            version: req.version(),
        })
    }

    /// Rewrites `resp` if it is one of meshgate's own answers on an HTTP
    /// stream; any other response is left untouched.
    pub(crate) fn apply(&self, resp: &mut Response, info: &StreamInfo, seen: &RequestSeen) {
        let reason = resp.extensions().get::<LocalReason>().copied();
        let direct = resp.extensions_mut().remove::<DirectBody>();
        if !info.traits.response_headers || (reason.is_none() && direct.is_none()) {
            return;
        }
        let empty = HeaderMap::new();
        let req = seen.headers.as_ref().unwrap_or(&empty);
        let original = resp.status();
        let mapper = self
            .mappers
            .iter()
            .find(|m| m.filter.matches(original.as_u16(), req, reason));
        let body: String = match (mapper.and_then(|m| m.body.as_deref()), &direct) {
            (Some(b), _) => b.to_string(),
            (None, Some(d)) => String::from_utf8_lossy(&d.0).into_owned(),
            (None, None) => reason
                .map(|r| format!("meshgate: {}", r.message()))
                .unwrap_or_default(),
        };
        if let Some(s) = mapper.and_then(|m| m.status) {
            *resp.status_mut() = s;
        }
        let ctx = Ctx {
            info,
            req,
            resp: &HeaderMap::new(),
            status: resp.status().as_u16(),
            body: &body,
            reason,
            direct: direct.is_some(),
            version: seen.version,
        };
        let mut added = Vec::new();
        if let Some(m) = mapper {
            for (name, t, append) in &m.headers {
                if let Ok(v) = HeaderValue::from_str(&t.render(&ctx, false)) {
                    added.push((name.clone(), v, *append));
                }
            }
        }
        for (name, v, append) in added {
            if append {
                resp.headers_mut().append(name, v);
            } else {
                resp.headers_mut().insert(name, v);
            }
        }
        let format = mapper
            .and_then(|m| m.format.as_ref())
            .or(self.format.as_ref());
        let headers = resp.headers().clone();
        let ctx = Ctx {
            resp: &headers,
            ..ctx
        };
        let (text, content_type) = match format {
            Some(f) => (f.render(&ctx), Some(f.content_type.clone())),
            // Only the mapper's body changed: plain text.
            None if mapper.is_some_and(|m| m.body.is_some()) => {
                (body.clone(), Some(HeaderValue::from_static("text/plain")))
            }
            None => (body.clone(), None),
        };
        if info.grpc && reason.is_some() {
            // Envoy: the gRPC status follows the (rewritten) HTTP status
            // unless a filter chose one; the text is the grpc-message.
            let rewritten = mapper.and_then(|m| m.status).is_some();
            let filter_status = resp.headers().get("grpc-status").cloned();
            let extra = std::mem::take(resp.headers_mut());
            if let Some(v) = filter_status.clone() {
                resp.headers_mut().insert("grpc-status", v);
            }
            crate::grpc::local_reply(resp);
            if rewritten && filter_status.is_none() {
                resp.headers_mut().insert(
                    "grpc-status",
                    HeaderValue::from(http_to_grpc(resp_status(original, mapper))),
                );
            }
            for (name, v) in extra.iter() {
                if name == http::header::CONTENT_TYPE
                    || name == http::header::CONTENT_LENGTH
                    || name.as_str().starts_with("grpc-")
                {
                    continue;
                }
                resp.headers_mut().append(name.clone(), v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&text)) {
                resp.headers_mut().insert("grpc-message", v);
            }
            resp.extensions_mut().insert(Mapped);
            return;
        }
        if let Some(ct) = content_type {
            *resp.body_mut() = full_body(text);
            let h = resp.headers_mut();
            h.remove(http::header::CONTENT_LENGTH);
            h.insert(http::header::CONTENT_TYPE, ct);
        }
        resp.extensions_mut().insert(Mapped);
    }
}

fn resp_status(original: StatusCode, mapper: Option<&Mapper>) -> u16 {
    mapper.and_then(|m| m.status).unwrap_or(original).as_u16()
}

/// gRPC's HTTP to gRPC status mapping (grpc/doc/http-grpc-status-mapping.md).
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): every byte
/// outside printable ASCII, and `%`.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn build_filter(
    f: &cfg::AccessLogFilter,
    path: &str,
    reads: &mut bool,
) -> Result<Filter, BuildError> {
    let set = [
        f.status_code_filter.is_some(),
        f.header_filter.is_some(),
        f.and_filter.is_some(),
        f.or_filter.is_some(),
        f.not_health_check_filter.is_some(),
        f.response_flag_filter.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(e(
            path,
            "set exactly one of status_code_filter, header_filter, and_filter, or_filter, not_health_check_filter, response_flag_filter",
        ));
    }
    if let Some(s) = &f.status_code_filter {
        return Ok(Filter::Status(
            s.comparison.op,
            s.comparison.value.default_value,
        ));
    }
    if let Some(h) = &f.header_filter {
        *reads = true;
        let m = HeaderMatcher::build(&h.header).map_err(|(field, msg)| {
            e(
                &meshgate_core::error::join_path(&format!("{path}.header_filter.header"), field),
                msg,
            )
        })?;
        return Ok(Filter::Header(m));
    }
    let list =
        |l: &cfg::FilterList, name: &str, reads: &mut bool| -> Result<Vec<Filter>, BuildError> {
            if l.filters.len() < 2 {
                return Err(e(
                    &format!("{path}.{name}.filters"),
                    "needs at least two filters",
                ));
            }
            l.filters
                .iter()
                .enumerate()
                .map(|(i, f)| build_filter(f, &format!("{path}.{name}.filters[{i}]"), reads))
                .collect()
        };
    if let Some(l) = &f.and_filter {
        return Ok(Filter::And(list(l, "and_filter", reads)?));
    }
    if let Some(l) = &f.or_filter {
        return Ok(Filter::Or(list(l, "or_filter", reads)?));
    }
    if let Some(r) = &f.response_flag_filter {
        let mut flags = Vec::new();
        for (i, name) in r.flags.iter().enumerate() {
            match FLAGS.iter().find(|f| **f == name.as_str()) {
                Some(f) => flags.push(*f),
                None => {
                    return Err(e(
                        &format!("{path}.response_flag_filter.flags[{i}]"),
                        format!(
                            "flag '{name}' is not one meshgate sets (supported: {})",
                            FLAGS.join(", ")
                        ),
                    ));
                }
            }
        }
        return Ok(Filter::Flags(flags));
    }
    Ok(Filter::Any)
}

impl Filter {
    fn matches(&self, status: u16, req: &HeaderMap, reason: Option<LocalReason>) -> bool {
        match self {
            Filter::Status(op, v) => {
                let s = u32::from(status);
                match op {
                    cfg::ComparisonOp::Eq => s == *v,
                    cfg::ComparisonOp::Ge => s >= *v,
                    cfg::ComparisonOp::Le => s <= *v,
                    cfg::ComparisonOp::Ne => s != *v,
                }
            }
            Filter::Header(m) => m.matches(req),
            Filter::And(l) => l.iter().all(|f| f.matches(status, req, reason)),
            Filter::Or(l) => l.iter().any(|f| f.matches(status, req, reason)),
            Filter::Any => true,
            Filter::Flags(flags) => match reason.and_then(flag) {
                None => false,
                Some(f) => flags.is_empty() || flags.contains(&f),
            },
        }
    }
}

fn build_format(
    f: &cfg::SubstitutionFormatString,
    path: &str,
    reads: &mut bool,
) -> Result<Format, BuildError> {
    let set = [
        f.text_format.is_some(),
        f.text_format_source.is_some(),
        f.json_format.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(e(
            path,
            "set exactly one of text_format, text_format_source, json_format",
        ));
    }
    let (kind, default_ct) = if let Some(t) = &f.text_format {
        (
            FormatKind::Text(Template::parse(t, &format!("{path}.text_format"))?),
            "text/plain",
        )
    } else if let Some(t) = &f.text_format_source {
        (
            FormatKind::Text(Template::parse(
                &t.inline_string,
                &format!("{path}.text_format_source.inline_string"),
            )?),
            "text/plain",
        )
    } else {
        let m = f
            .json_format
            .as_ref()
            .map(|m| m.iter())
            .into_iter()
            .flatten();
        (
            FormatKind::Json(json_templates(m, &format!("{path}.json_format"))?),
            "application/json",
        )
    };
    match &kind {
        FormatKind::Text(t) => *reads |= t.reads_request(),
        FormatKind::Json(l) => *reads |= l.iter().any(|(_, t)| t.reads_request()),
    }
    let content_type = HeaderValue::from_str(f.content_type.as_deref().unwrap_or(default_ct))
        .map_err(|_| e(&format!("{path}.content_type"), "invalid header value"))?;
    Ok(Format {
        kind,
        content_type,
        omit_empty: f.omit_empty_values,
    })
}

fn json_templates<'a>(
    m: impl Iterator<Item = (&'a String, &'a Value)>,
    path: &str,
) -> Result<Vec<(String, JsonTemplate)>, BuildError> {
    let mut out = Vec::new();
    for (k, v) in m {
        let p = format!("{path}.{k}");
        let t = match v {
            Value::String(s) => JsonTemplate::Str(Template::parse(s, &p)?),
            Value::Object(o) => JsonTemplate::Obj(json_templates(o.iter(), &p)?),
            Value::Array(_) => return Err(e(&p, "lists are not supported in json_format")),
            other => JsonTemplate::Other(other.clone()),
        };
        out.push((k.clone(), t));
    }
    Ok(out)
}

impl JsonTemplate {
    fn reads_request(&self) -> bool {
        match self {
            JsonTemplate::Str(t) => t.reads_request(),
            JsonTemplate::Obj(l) => l.iter().any(|(_, t)| t.reads_request()),
            JsonTemplate::Other(_) => false,
        }
    }

    /// `None`: the value is unavailable (omitted with `omit_empty_values`).
    fn render(&self, ctx: &Ctx<'_>, omit: bool) -> Option<Value> {
        match self {
            JsonTemplate::Other(v) => Some(v.clone()),
            JsonTemplate::Obj(l) => Some(Value::Object(render_obj(l, ctx, omit))),
            // A lone operator keeps its type (a number for the code) and is
            // null when unavailable.
            JsonTemplate::Str(Template(p)) if p.len() == 1 && matches!(p[0], Piece::Op(..)) => {
                let Piece::Op(op, max) = &p[0] else {
                    return None;
                };
                if *op == Op::ResponseCode {
                    return Some(Value::from(ctx.status));
                }
                match ctx.value(op) {
                    Some(v) => Some(Value::String(truncate(v, *max))),
                    None if omit => None,
                    None => Some(Value::Null),
                }
            }
            JsonTemplate::Str(t) => Some(Value::String(t.render(ctx, omit))),
        }
    }
}

fn render_obj(
    l: &[(String, JsonTemplate)],
    ctx: &Ctx<'_>,
    omit: bool,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, t) in l {
        if let Some(v) = t.render(ctx, omit) {
            m.insert(k.clone(), v);
        }
    }
    m
}

impl Format {
    fn render(&self, ctx: &Ctx<'_>) -> String {
        match &self.kind {
            FormatKind::Text(t) => t.render(ctx, self.omit_empty),
            FormatKind::Json(l) => {
                let mut s = Value::Object(render_obj(l, ctx, self.omit_empty)).to_string();
                // Envoy ends a JSON body with a newline.
                s.push('\n');
                s
            }
        }
    }
}

/// What the operators read.
struct Ctx<'a> {
    info: &'a StreamInfo,
    req: &'a HeaderMap,
    resp: &'a HeaderMap,
    status: u16,
    body: &'a str,
    reason: Option<LocalReason>,
    direct: bool,
    version: Version,
}

impl Ctx<'_> {
    fn value(&self, op: &Op) -> Option<String> {
        let header = |h: &HeaderMap, a: &HeaderName, b: &Option<HeaderName>| {
            h.get(a)
                .or_else(|| b.as_ref().and_then(|b| h.get(b)))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        match op {
            Op::LocalReplyBody => Some(self.body.to_string()),
            Op::ResponseCode => Some(self.status.to_string()),
            Op::ResponseCodeDetails => {
                if self.direct {
                    Some("direct_response".into())
                } else {
                    self.reason.map(|r| r.label().to_string())
                }
            }
            Op::ResponseFlags => self.reason.and_then(flag).map(str::to_string),
            Op::Protocol => Some(match (self.info.traits.response_headers, self.version) {
                (true, Version::HTTP_10) => "HTTP/1.0".into(),
                (true, Version::HTTP_11) => "HTTP/1.1".into(),
                (true, Version::HTTP_2) => "HTTP/2".into(),
                (true, Version::HTTP_3) => "HTTP/3".into(),
                _ => self.info.protocol.to_string(),
            }),
            Op::StartTime => Some(start_time(self.info)),
            Op::RouteName => self.info.route.map(str::to_string),
            Op::UpstreamCluster => self.info.upstream_cluster.map(str::to_string),
            Op::DownstreamRemoteAddress => Some(self.info.connection.peer_addr.to_string()),
            Op::DownstreamRemoteAddressWithoutPort => {
                Some(self.info.downstream_remote_address.to_string())
            }
            Op::Req(a, b) => header(self.req, a, b),
            Op::Resp(a, b) => header(self.resp, a, b),
        }
    }
}

fn truncate(mut s: String, max: Option<usize>) -> String {
    if let Some(n) = max
        && s.len() > n
    {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The stream's start as Envoy's default `%START_TIME%`
/// (`2026-12-06T14:20:02.123Z`, UTC).
fn start_time(info: &StreamInfo) -> String {
    let t = std::time::SystemTime::now()
        .checked_sub(info.start.elapsed())
        .unwrap_or(std::time::UNIX_EPOCH);
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_millis())
}

/// Days since 1970-01-01 to a civil date (the proleptic Gregorian
/// calendar's arithmetic, era by era of 400 years).
fn format_utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

impl Template {
    /// Parses Envoy's format string: `%NAME%`, `%NAME(ARG)%`, with an
    /// optional `:MAX` length; a `%` that starts no operator is literal.
    /// An operator meshgate does not implement is refused by name.
    fn parse(s: &str, path: &str) -> Result<Self, BuildError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match operator_end(after) {
                Some(j) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    let (op, max) = parse_operator(&after[..j], path)?;
                    pieces.push(Piece::Op(op, max));
                    rest = &after[j + 1..];
                }
                None => {
                    lit.push('%');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self(pieces))
    }

    fn reads_request(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Op(Op::Req(..), _)))
    }

    fn render(&self, ctx: &Ctx<'_>, omit: bool) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Op(op, max) => match ctx.value(op) {
                    Some(v) => out.push_str(&truncate(v, *max)),
                    None if omit => {}
                    None => out.push('-'),
                },
            }
        }
        out
    }
}

/// Where the operator starting `after` (the text past a `%`) ends: the
/// index of its closing `%`. An argument may itself hold `%`
/// (`%START_TIME(%s)%`), so it runs to its `)`.
fn operator_end(after: &str) -> Option<usize> {
    let name = after
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name > 0 && after[name..].starts_with('(') {
        let close = name + after[name..].find(')')? + 1;
        let tail = &after[close..];
        let digits = match tail.strip_prefix(':') {
            Some(d) => 1 + d.bytes().take_while(u8::is_ascii_digit).count(),
            None => 0,
        };
        return tail[digits..].starts_with('%').then_some(close + digits);
    }
    after
        .find('%')
        .filter(|j| looks_like_operator(&after[..*j]))
}

/// `NAME`, `NAME(ARG)` or either with `:DIGITS` (Envoy's command syntax).
fn looks_like_operator(t: &str) -> bool {
    let (head, _) = match t.rsplit_once(':') {
        Some((h, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (h, n),
        _ => (t, ""),
    };
    let name = match head.find('(') {
        Some(i) if head.ends_with(')') => &head[..i],
        Some(_) => return false,
        None => head,
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_operator(t: &str, path: &str) -> Result<(Op, Option<usize>), BuildError> {
    let (head, max) = match t.rsplit_once(':') {
        Some((h, n))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && h.ends_with(')') =>
        {
            (h, n.parse().ok())
        }
        Some((h, n))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !h.contains('(') =>
        {
            (h, n.parse().ok())
        }
        _ => (t, None),
    };
    let (name, arg) = match head.find('(') {
        Some(i) => (&head[..i], Some(&head[i + 1..head.len() - 1])),
        None => (head, None),
    };
    let no_arg = |op: Op| -> Result<Op, BuildError> {
        match arg {
            None => Ok(op),
            Some(_) => Err(e(path, format!("%{name}% takes no argument"))),
        }
    };
    let headers = |a: Option<&str>| -> Result<(HeaderName, Option<HeaderName>), BuildError> {
        let a = a.ok_or_else(|| e(path, format!("%{name}(HEADER)% needs a header name")))?;
        let mut parts = a.splitn(2, '?');
        let parse = |h: &str| {
            HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| e(path, format!("%{name}%: invalid header name '{h}'")))
        };
        let first = parse(parts.next().unwrap_or(""))?;
        let alt = parts.next().map(parse).transpose()?;
        Ok((first, alt))
    };
    let op = match name {
        "LOCAL_REPLY_BODY" => no_arg(Op::LocalReplyBody)?,
        "RESPONSE_CODE" => no_arg(Op::ResponseCode)?,
        "RESPONSE_CODE_DETAILS" => no_arg(Op::ResponseCodeDetails)?,
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags)?,
        "PROTOCOL" => no_arg(Op::Protocol)?,
        "START_TIME" => match arg {
            None => Op::StartTime,
            Some(_) => {
                return Err(e(
                    path,
                    "%START_TIME(FORMAT)% is not supported (only the default %START_TIME%)",
                ));
            }
        },
        "ROUTE_NAME" => no_arg(Op::RouteName)?,
        "UPSTREAM_CLUSTER" => no_arg(Op::UpstreamCluster)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Op::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamRemoteAddressWithoutPort)?,
        "REQ" | "REQUEST_HEADER" => {
            let (a, b) = headers(arg)?;
            Op::Req(a, b)
        }
        "RESP" | "RESPONSE_HEADER" => {
            let (a, b) = headers(arg)?;
            Op::Resp(a, b)
        }
        other => {
            return Err(e(
                path,
                format!(
                    "command operator %{other}% is not supported (LOCAL_REPLY_BODY, RESPONSE_CODE, RESPONSE_CODE_DETAILS, RESPONSE_FLAGS, PROTOCOL, START_TIME, ROUTE_NAME, UPSTREAM_CLUSTER, DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, REQ, RESP)"
                ),
            ));
        }
    };
    Ok((op, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_operators_literals_and_lengths() {
        let t = Template::parse("50% off %REQ(X-Id?x-alt):3% %RESPONSE_CODE%%", "f").unwrap();
        assert_eq!(
            t.0,
            vec![
                Piece::Lit("50% off ".into()),
                Piece::Op(
                    Op::Req(
                        HeaderName::from_static("x-id"),
                        Some(HeaderName::from_static("x-alt"))
                    ),
                    Some(3)
                ),
                Piece::Lit(" ".into()),
                Piece::Op(Op::ResponseCode, None),
                Piece::Lit("%".into()),
            ]
        );
        let e = Template::parse("%START_TIME(%s)%", "body_format.text_format").unwrap_err();
        assert_eq!(e.path, "body_format.text_format");
        assert!(e.message.contains("START_TIME"), "{}", e.message);
        let e = Template::parse("x %DURATION% y", "p").unwrap_err();
        assert!(e.message.contains("%DURATION%"), "{}", e.message);
    }

    #[test]
    fn filters_compose_and_flags_follow_the_reason() {
        let req = HeaderMap::new();
        let f = Filter::And(vec![
            Filter::Status(cfg::ComparisonOp::Ge, 500),
            Filter::Or(vec![Filter::Flags(vec!["UH"]), Filter::Flags(vec!["UO"])]),
        ]);
        assert!(f.matches(503, &req, Some(LocalReason::NoHealthyUpstream)));
        assert!(f.matches(503, &req, Some(LocalReason::Overflow)));
        assert!(!f.matches(503, &req, Some(LocalReason::UpstreamConnectFailure)));
        assert!(!f.matches(404, &req, Some(LocalReason::NoHealthyUpstream)));
        assert!(Filter::Flags(vec![]).matches(404, &req, Some(LocalReason::NoRoute)));
        assert!(!Filter::Flags(vec![]).matches(403, &req, Some(LocalReason::Forbidden)));
        assert!(Filter::Status(cfg::ComparisonOp::Ne, 200).matches(404, &req, None));
    }

    #[test]
    fn start_time_is_iso8601_utc_with_millis() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_796_566_802, 123), "2026-12-06T14:20:02.123Z");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b%\n\u{e9}"), "a b%25%0A%C3%A9");
        assert_eq!(http_to_grpc(500), 2);
        assert_eq!(http_to_grpc(503), 14);
        assert_eq!(http_to_grpc(404), 12);
    }
}
