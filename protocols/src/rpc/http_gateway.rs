//! The HTTP/JSON to Dubbo 2 / Bolt translation of `route.http_to_rpc`
//! (the plan is `meshgate_core::config::http_to_rpc::HttpToRpc`): builds
//! the request frame of the call from the HTTP request's path variables,
//! query, headers and JSON body ([`build_call`]), and turns the
//! provider's response frame into an HTTP status and a JSON body
//! ([`decode_response`]). The `proxy` filter sends the frame through the
//! cluster's RPC upstream pool (`filters::http_to_rpc`), so load
//! balancing, retries, outlier detection and metrics apply as to any RPC
//! call.
//!
//! Hostile input: the body is bounded by the caller, JSON nesting by
//! serde_json (128) and by [`MAX_ARG_DEPTH`] when written; numbers out of
//! the declared type's range, wrong JSON types and undecodable text are a
//! [`Rejection`] (400) naming the parameter, never a panic.

use super::hessian_value::ValueReader;
use super::hessian_write::{Dialect, Writer};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use meshgate_core::config::http_to_rpc::{HttpToRpc, JavaType, ParamSource, RpcProtocolName};
use serde_json::{Map, Value, json};

/// Nesting allowed in one argument.
pub const MAX_ARG_DEPTH: usize = 32;

const DUBBO_VERSION: &str = "2.0.2";
const GENERIC_DESC: &str = "Ljava/lang/String;[Ljava/lang/String;[Ljava/lang/Object;";
const SOFA_REQUEST: &str = "com.alipay.sofa.rpc.core.request.SofaRequest";
const SOFA_REQUEST_FIELDS: [&str; 5] = [
    "methodName",
    "methodArgSigs",
    "targetServiceUniqueName",
    "targetAppName",
    "requestProps",
];

/// Why a request cannot become a call: 400 (or 404 when the path does
/// not fit the template) with a message naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    /// Metric label: `bad_json`, `bad_param`, `missing_param`, `too_deep`,
    /// `no_match`.
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn bad(reason: &'static str, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
            message,
        }
    }

    /// The JSON answer.
    pub fn body(&self) -> Value {
        json!({"error": self.reason, "message": self.message})
    }
}

/// The request frame of a call: head and body bytes.
#[derive(Debug)]
pub struct Call {
    pub head: Bytes,
    pub body: Bytes,
}

/// What the HTTP request offers the parameters.
pub struct Inputs<'a> {
    /// The template's variables (raw, percent-encoded), in order.
    pub path_vars: &'a [&'a str],
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Builds the call's request frame; `timeout_ms` is written where the
/// protocol carries one (Bolt's header, Dubbo's `timeout` attachment).
pub fn build_call(
    plan: &HttpToRpc,
    input: &Inputs<'_>,
    timeout_ms: u32,
) -> Result<Call, Rejection> {
    let body_json = if plan.reads_body && !input.body.is_empty() {
        Some(serde_json::from_slice::<Value>(input.body).map_err(|e| {
            Rejection::bad("bad_json", format!("the request body is not JSON: {e}"))
        })?)
    } else {
        None
    };
    let dialect = match plan.protocol {
        RpcProtocolName::Dubbo => Dialect::V2,
        RpcProtocolName::Bolt => Dialect::Draft,
    };
    // The arguments first, in their own writer: Bolt puts them after the
    // SofaRequest object, Dubbo (generic) inside a list.
    let mut args = Writer::new(dialect);
    if plan.protocol == RpcProtocolName::Bolt {
        // The SofaRequest object before them defines class 0.
        args.declare_class(SOFA_REQUEST, &SOFA_REQUEST_FIELDS);
    }
    for p in &plan.params {
        let bad = |m: String| Rejection::bad("bad_param", format!("parameter '{}': {m}", p.name));
        let text: Option<String>;
        let json_value: Option<&Value>;
        match &p.source {
            ParamSource::Path(i) => {
                let raw = input.path_vars.get(*i).copied().unwrap_or("");
                text = Some(
                    percent_decode(raw, false).ok_or_else(|| bad("bad percent-encoding".into()))?,
                );
                json_value = None;
            }
            ParamSource::Query(name) => {
                text = match query_param(input.query, name) {
                    None => None,
                    Some(raw) => Some(
                        percent_decode(raw, true)
                            .ok_or_else(|| bad("bad percent-encoding".into()))?,
                    ),
                };
                json_value = None;
            }
            ParamSource::Header(h) => {
                text = match input.headers.get(h) {
                    None => None,
                    Some(v) => Some(
                        v.to_str()
                            .map_err(|_| bad("the header is not visible ASCII".into()))?
                            .to_string(),
                    ),
                };
                json_value = None;
            }
            ParamSource::BodyField(f) => {
                text = None;
                json_value = match &body_json {
                    None => None,
                    Some(Value::Object(m)) => m.get(f),
                    Some(_) => {
                        return Err(Rejection::bad(
                            "bad_param",
                            format!("parameter '{}': the body is not a JSON object", p.name),
                        ));
                    }
                };
            }
            ParamSource::Body => {
                text = None;
                json_value = body_json.as_ref();
            }
        }
        let res = match (text, json_value) {
            (Some(t), _) => write_text(&mut args, &p.java, &t, plan.generic),
            (None, Some(v)) => write_typed(&mut args, &p.java, v, plan.generic),
            (None, None) if p.optional => {
                args.null();
                Ok(())
            }
            (None, None) => {
                return Err(Rejection::bad(
                    "missing_param",
                    format!(
                        "parameter '{}' ({}) is missing",
                        p.name,
                        p.java.class_name()
                    ),
                ));
            }
        };
        res.map_err(|e| match e {
            WriteError::TooDeep => Rejection::bad(
                "too_deep",
                format!("parameter '{}': nested deeper than {MAX_ARG_DEPTH}", p.name),
            ),
            WriteError::Type(m) => bad(m),
        })?;
    }
    let attachments: Vec<(&str, &str)> = plan
        .attachments
        .iter()
        .filter_map(|h| {
            let v = input.headers.get(h)?.to_str().ok()?;
            Some((h.as_str(), v))
        })
        .collect();
    Ok(match plan.protocol {
        RpcProtocolName::Dubbo => dubbo_call(plan, args.buf, &attachments, timeout_ms),
        RpcProtocolName::Bolt => bolt_call(plan, args.buf, &attachments, timeout_ms)?,
    })
}

fn dubbo_call(
    plan: &HttpToRpc,
    args: Vec<u8>,
    attachments: &[(&str, &str)],
    timeout_ms: u32,
) -> Call {
    let mut w = Writer::new(Dialect::V2);
    w.string(DUBBO_VERSION);
    w.string(&plan.service);
    w.string(&plan.version);
    if plan.generic {
        w.string("$invoke");
        w.string(GENERIC_DESC);
        w.string(&plan.method);
        w.list_begin(plan.params.len(), Some("[string"));
        for p in &plan.params {
            w.string(p.java.class_name());
        }
        w.list_end();
        w.list_begin(plan.params.len(), Some("[object"));
        w.buf.extend_from_slice(&args);
        w.list_end();
    } else {
        w.string(&plan.method);
        w.string(&plan.descriptor);
        w.buf.extend_from_slice(&args);
    }
    w.map_begin(None);
    let kv = |w: &mut Writer, k: &str, v: &str| {
        w.string(k);
        w.string(v);
    };
    kv(&mut w, "path", &plan.service);
    kv(&mut w, "interface", &plan.service);
    if !plan.version.is_empty() {
        kv(&mut w, "version", &plan.version);
    }
    if !plan.group.is_empty() {
        kv(&mut w, "group", &plan.group);
    }
    if plan.generic {
        kv(&mut w, "generic", "true");
    }
    kv(&mut w, "timeout", &timeout_ms.to_string());
    for (k, v) in attachments {
        if !matches!(
            *k,
            "path" | "interface" | "version" | "group" | "generic" | "timeout"
        ) {
            kv(&mut w, k, v);
        }
    }
    w.map_end();
    let head = dubbo_request_head(w.buf.len());
    Call {
        head,
        body: Bytes::from(w.buf),
    }
}

fn bolt_call(
    plan: &HttpToRpc,
    args: Vec<u8>,
    attachments: &[(&str, &str)],
    timeout_ms: u32,
) -> Result<Call, Rejection> {
    let unique = if plan.version.is_empty() {
        plan.service.clone()
    } else {
        format!("{}:{}", plan.service, plan.version)
    };
    let mut w = Writer::new(Dialect::Draft);
    w.object_begin(SOFA_REQUEST, &SOFA_REQUEST_FIELDS);
    w.string(&plan.method);
    w.list_begin(plan.params.len(), Some("[java.lang.String"));
    for p in &plan.params {
        w.string(p.java.class_name());
    }
    w.list_end();
    w.string(&unique);
    w.null();
    if attachments.is_empty() {
        w.null();
    } else {
        w.map_begin(None);
        for (k, v) in attachments {
            w.string(k);
            w.string(v);
        }
        w.map_end();
    }
    w.buf.extend_from_slice(&args);
    let mut map: Vec<(&str, &str)> = vec![
        ("service", &unique),
        ("sofa_head_method_name", &plan.method),
    ];
    map.extend(
        attachments
            .iter()
            .filter(|(k, _)| !matches!(*k, "service" | "sofa_head_method_name"))
            .copied(),
    );
    let head = bolt_request_head(SOFA_REQUEST, &map, w.buf.len(), timeout_ms).ok_or_else(|| {
        Rejection::bad(
            "bad_param",
            "the attachments do not fit a Bolt header map (64 KiB)".to_string(),
        )
    })?;
    Ok(Call {
        head,
        body: Bytes::from(w.buf),
    })
}

/// A Dubbo request header: two-way, Hessian 2, id 0 (the RPC client
/// gives each call its id).
fn dubbo_request_head(body_len: usize) -> Bytes {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&crate::dubbo::MAGIC);
    h.push(0xc2);
    h.push(0);
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&(body_len as u32).to_be_bytes());
    Bytes::from(h)
}

/// A Bolt v1 request header, its class name and header map (the content
/// follows as the frame's body).
fn bolt_request_head(
    class: &str,
    map: &[(&str, &str)],
    content_len: usize,
    timeout_ms: u32,
) -> Option<Bytes> {
    let mut m = Vec::new();
    for (k, v) in map {
        for f in [k, v] {
            m.extend_from_slice(&(f.len() as u32).to_be_bytes());
            m.extend_from_slice(f.as_bytes());
        }
    }
    let mut h = Vec::with_capacity(22 + class.len() + m.len());
    h.push(crate::bolt::PROTOCOL_V1);
    h.push(1); // request
    h.extend_from_slice(&1u16.to_be_bytes()); // RPC request command
    h.push(1); // ver2
    h.extend_from_slice(&0u32.to_be_bytes());
    h.push(1); // Hessian 2
    h.extend_from_slice(&timeout_ms.to_be_bytes());
    h.extend_from_slice(&(class.len() as u16).to_be_bytes());
    h.extend_from_slice(&u16::try_from(m.len()).ok()?.to_be_bytes());
    h.extend_from_slice(&(content_len as u32).to_be_bytes());
    h.extend_from_slice(class.as_bytes());
    h.extend_from_slice(&m);
    Some(Bytes::from(h))
}

enum WriteError {
    Type(String),
    TooDeep,
}

fn type_err<T>(m: impl Into<String>) -> Result<T, WriteError> {
    Err(WriteError::Type(m.into()))
}

/// A text value (path, query, header) as the declared type: numbers and
/// booleans parsed, lists, maps and POJOs read as JSON text.
fn write_text(w: &mut Writer, java: &JavaType, t: &str, generic: bool) -> Result<(), WriteError> {
    match java {
        JavaType::String => {
            w.string(t);
            Ok(())
        }
        JavaType::Int { .. } => match t.trim().parse::<i32>() {
            Ok(v) => {
                w.int(v);
                Ok(())
            }
            Err(_) => type_err(format!("'{}' is not an int (32-bit)", short(t))),
        },
        JavaType::Long { .. } => match t.trim().parse::<i64>() {
            Ok(v) => {
                w.long(v);
                Ok(())
            }
            Err(_) => type_err(format!("'{}' is not a long (64-bit)", short(t))),
        },
        JavaType::Double { .. } => match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => {
                w.double(v);
                Ok(())
            }
            _ => type_err(format!("'{}' is not a finite double", short(t))),
        },
        JavaType::Boolean { .. } => match t.trim() {
            "true" => {
                w.bool(true);
                Ok(())
            }
            "false" => {
                w.bool(false);
                Ok(())
            }
            _ => type_err(format!("'{}' is not true or false", short(t))),
        },
        JavaType::List | JavaType::Map | JavaType::Object(_) => {
            let v: Value =
                serde_json::from_str(t).map_err(|e| WriteError::Type(format!("not JSON: {e}")))?;
            write_typed(w, java, &v, generic)
        }
    }
}

fn short(t: &str) -> String {
    let mut s: String = t.chars().take(40).collect();
    if s.len() < t.len() {
        s.push_str("...");
    }
    s
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as the declared type.
fn write_typed(
    w: &mut Writer,
    java: &JavaType,
    v: &Value,
    generic: bool,
) -> Result<(), WriteError> {
    let boxed_null = matches!(
        java,
        JavaType::Int { boxed: true }
            | JavaType::Long { boxed: true }
            | JavaType::Double { boxed: true }
            | JavaType::Boolean { boxed: true }
            | JavaType::String
            | JavaType::List
            | JavaType::Map
            | JavaType::Object(_)
    );
    if v.is_null() {
        if boxed_null {
            w.null();
            return Ok(());
        }
        return type_err(format!("null for a {}", java.class_name()));
    }
    let want = |what: &str| type_err(format!("expected {what}, got {}", kind(v)));
    match java {
        JavaType::String => match v.as_str() {
            Some(s) => w.string(s),
            None => return want("a string"),
        },
        JavaType::Int { .. } => match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(n) => w.int(n),
            None if v.is_number() => return type_err(format!("{v} is not an int (32-bit)")),
            None => return want("an int"),
        },
        JavaType::Long { .. } => match v.as_i64() {
            Some(n) => w.long(n),
            None if v.is_number() => return type_err(format!("{v} is not a long (64-bit)")),
            None => return want("a long"),
        },
        JavaType::Double { .. } => match v.as_f64() {
            Some(n) if v.is_number() => w.double(n),
            _ => return want("a number"),
        },
        JavaType::Boolean { .. } => match v.as_bool() {
            Some(b) => w.bool(b),
            None => return want("a boolean"),
        },
        JavaType::List => match v {
            Value::Array(_) => write_dynamic(w, v, 0, generic)?,
            _ => return want("an array"),
        },
        JavaType::Map => match v.as_object() {
            Some(m) => write_map(w, m, None, 0, generic)?,
            None => return want("an object"),
        },
        JavaType::Object(class) => match v.as_object() {
            Some(m) => write_object(w, class, m, 0, generic)?,
            None => return want("an object"),
        },
    }
    Ok(())
}

/// A JSON value without a declared type: integers as int (or long past
/// 32 bits), objects with a `$class` member as that class.
fn write_dynamic(w: &mut Writer, v: &Value, depth: usize, generic: bool) -> Result<(), WriteError> {
    if depth > MAX_ARG_DEPTH {
        return Err(WriteError::TooDeep);
    }
    match v {
        Value::Null => w.null(),
        Value::Bool(b) => w.bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => w.int(i),
                    Err(_) => w.long(i),
                }
            } else if n.is_u64() {
                return type_err(format!("{n} is out of a long's range"));
            } else {
                w.double(n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => w.string(s),
        Value::Array(a) => {
            w.list_begin(a.len(), None);
            for x in a {
                write_dynamic(w, x, depth + 1, generic)?;
            }
            w.list_end();
        }
        Value::Object(m) => match m.get("$class").and_then(Value::as_str) {
            Some(class) => write_object(w, class, m, depth, generic)?,
            None => write_map(w, m, None, depth, generic)?,
        },
    }
    Ok(())
}

fn write_map(
    w: &mut Writer,
    m: &Map<String, Value>,
    class: Option<&str>,
    depth: usize,
    generic: bool,
) -> Result<(), WriteError> {
    if depth > MAX_ARG_DEPTH {
        return Err(WriteError::TooDeep);
    }
    w.map_begin(None);
    if let Some(c) = class {
        // Dubbo's generic call: a POJO is a map whose `class` names it.
        w.string("class");
        w.string(c);
    }
    for (k, v) in m {
        if class.is_some() && (k == "$class" || k == "class") {
            continue;
        }
        w.string(k);
        write_dynamic(w, v, depth + 1, generic)?;
    }
    w.map_end();
    Ok(())
}

fn write_object(
    w: &mut Writer,
    class: &str,
    m: &Map<String, Value>,
    depth: usize,
    generic: bool,
) -> Result<(), WriteError> {
    if depth > MAX_ARG_DEPTH {
        return Err(WriteError::TooDeep);
    }
    if generic {
        return write_map(w, m, Some(class), depth, generic);
    }
    let fields: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "$class")
        .collect();
    w.object_begin(class, &fields);
    for f in &fields {
        if let Some(v) = m.get(*f) {
            write_dynamic(w, v, depth + 1, generic)?;
        }
    }
    Ok(())
}

/// The first value of `name` in a query string (raw).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Percent-decoding (and `+` as space in a query); `None` when an escape
/// is malformed or the result is not UTF-8.
fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The HTTP answer to a provider's response frame.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Value,
}

fn failure(status: StatusCode, error: &str, message: &str, class: Option<&str>) -> Outcome {
    let mut m = Map::new();
    m.insert("error".into(), Value::from(error));
    m.insert("message".into(), Value::from(message));
    if let Some(c) = class {
        m.insert("class".into(), Value::from(c));
    }
    Outcome {
        status,
        body: Value::Object(m),
    }
}

/// A decoded exception object as a 500: its class and message.
fn exception(v: &Value) -> Outcome {
    let class = v.get("$class").and_then(Value::as_str);
    let message = ["detailMessage", "message", "errorMsg"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("");
    failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "provider_exception",
        message,
        Some(class.unwrap_or("java.lang.Throwable")),
    )
}

fn undecodable(e: &super::hessian::HessianError) -> Outcome {
    failure(
        StatusCode::BAD_GATEWAY,
        "bad_response",
        &format!("the provider's result could not be decoded: {e}"),
        None,
    )
}

/// The HTTP status and JSON body for a provider's response frame (head
/// and body as the RPC client returns them).
pub fn decode_response(protocol: RpcProtocolName, head: &[u8], body: &[u8]) -> Outcome {
    match protocol {
        RpcProtocolName::Dubbo => decode_dubbo(head, body),
        RpcProtocolName::Bolt => decode_bolt(head, body),
    }
}

fn decode_dubbo(head: &[u8], body: &[u8]) -> Outcome {
    use crate::dubbo::status as st;
    let Some(&status) = head.get(3) else {
        return failure(
            StatusCode::BAD_GATEWAY,
            "bad_response",
            "short Dubbo header",
            None,
        );
    };
    let mut r = ValueReader::new(body, Dialect::V2);
    if status != st::OK {
        let message = r.read_string().unwrap_or_default();
        let (code, error) = match status {
            st::CLIENT_TIMEOUT | st::SERVER_TIMEOUT => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            st::SERVICE_NOT_FOUND => (StatusCode::SERVICE_UNAVAILABLE, "no_provider"),
            st::SERVER_THREADPOOL_EXHAUSTED_ERROR => {
                (StatusCode::SERVICE_UNAVAILABLE, "provider_busy")
            }
            st::BAD_REQUEST | st::CLIENT_ERROR => (StatusCode::BAD_REQUEST, "bad_request"),
            st::BAD_RESPONSE => (StatusCode::BAD_GATEWAY, "bad_response"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "provider_error"),
        };
        return failure(code, error, &message, None);
    }
    let flag = match r.read_int() {
        Ok(f) => f,
        Err(e) => return undecodable(&e),
    };
    match flag {
        // value (with attachments)
        1 | 4 => match r.read_value() {
            Ok(v) => Outcome {
                status: StatusCode::OK,
                body: v,
            },
            Err(e) => undecodable(&e),
        },
        // null
        2 | 5 => Outcome {
            status: StatusCode::OK,
            body: Value::Null,
        },
        // exception
        0 | 3 => match r.read_value() {
            Ok(v) => exception(&v),
            Err(e) => undecodable(&e),
        },
        _ => failure(
            StatusCode::BAD_GATEWAY,
            "bad_response",
            &format!("unknown Dubbo result flag {flag}"),
            None,
        ),
    }
}

fn decode_bolt(head: &[u8], body: &[u8]) -> Outcome {
    use crate::bolt::status as st;
    let Some(status) = head.get(10..12).map(|s| u16::from_be_bytes([s[0], s[1]])) else {
        return failure(
            StatusCode::BAD_GATEWAY,
            "bad_response",
            "short Bolt header",
            None,
        );
    };
    let decoded = ValueReader::new(body, Dialect::Draft).read_value();
    if status != st::SUCCESS {
        let (code, error) = match status {
            st::TIMEOUT => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            st::SERVER_THREADPOOL_BUSY => (StatusCode::SERVICE_UNAVAILABLE, "provider_busy"),
            st::NO_PROCESSOR => (StatusCode::SERVICE_UNAVAILABLE, "no_provider"),
            st::SERVER_DESERIAL_EXCEPTION => (StatusCode::BAD_REQUEST, "bad_request"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "provider_error"),
        };
        return match decoded {
            Ok(v @ Value::Object(_)) if code == StatusCode::INTERNAL_SERVER_ERROR => exception(&v),
            Ok(v) => {
                let m = v
                    .get("detailMessage")
                    .and_then(Value::as_str)
                    .or(v.as_str())
                    .unwrap_or("")
                    .to_string();
                failure(code, error, &m, v.get("$class").and_then(Value::as_str))
            }
            Err(_) => failure(code, error, &format!("Bolt status {status}"), None),
        };
    }
    let v = match decoded {
        Ok(v) => v,
        Err(e) => return undecodable(&e),
    };
    if v.get("isError").and_then(Value::as_bool) == Some(true) {
        let m = v.get("errorMsg").and_then(Value::as_str).unwrap_or("");
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "provider_error", m, None);
    }
    let app = v.get("appResponse").cloned().unwrap_or(Value::Null);
    let is_exception = app.get("$class").and_then(Value::as_str).is_some_and(|c| {
        c.ends_with("Exception") || c.ends_with("Error") || c == "java.lang.Throwable"
    }) && app.get("detailMessage").is_some();
    if is_exception {
        return exception(&app);
    }
    Outcome {
        status: StatusCode::OK,
        body: app,
    }
}

#[cfg(test)]
mod tests;
