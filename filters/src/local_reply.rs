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

use crate::format::{Ctx, Filter, Flags, Format, ReqHead, Template, http_to_grpc};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use meshgate_core::BuildError;
use meshgate_core::config::local_reply as cfg;
use meshgate_core::stream::{LocalReason, Response, StreamInfo, full_body};

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
    headers: Option<(HeaderMap, ReqHead)>,
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
            let filter = Filter::build(&m.filter, &format!("{p}.filter"), &mut reads_request)?;
            let status = match m.status_code {
                None => None,
                Some(s) if (200..=599).contains(&s) => StatusCode::from_u16(s).ok(),
                Some(_) => return Err(e(&format!("{p}.status_code"), "must be in 200..=599")),
            };
            let format = match &m.body_format_override {
                None => None,
                Some(f) => {
                    let f = Format::build(f, &format!("{p}.body_format_override"))?;
                    reads_request |= f.reads_request();
                    Some(f)
                }
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
            Some(f) => {
                let f = Format::build(f, "body_format")?;
                reads_request |= f.reads_request();
                Some(f)
            }
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
            headers: self
                .reads_request
                .then(|| (req.headers().clone(), ReqHead::of(req))),
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
        let no_head = ReqHead::default();
        let (req, head) = match &seen.headers {
            Some((h, r)) => (h, r),
            None => (&empty, &no_head),
        };
        let original = resp.status();
        let details = if direct.is_some() {
            Some("direct_response")
        } else {
            reason.map(|r| r.label())
        };
        let mut ctx = Ctx::new(info);
        ctx.head = head;
        ctx.req = req;
        ctx.status = Some(original.as_u16());
        ctx.details = details;
        ctx.flags = Flags::of(info, original.as_u16());
        ctx.version = seen.version;
        ctx.timing.response_head = Some(info.start.elapsed());
        ctx.timing.done = ctx.timing.response_head;
        let mapper = self.mappers.iter().find(|m| m.filter.matches(&ctx));
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
        ctx.status = Some(resp.status().as_u16());
        ctx.body = &body;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b%\n\u{e9}"), "a b%25%0A%C3%A9");
        assert_eq!(http_to_grpc(500), 2);
        assert_eq!(http_to_grpc(503), 14);
        assert_eq!(http_to_grpc(404), 12);
    }
}
