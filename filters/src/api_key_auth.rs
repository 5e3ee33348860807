//! `api_key_auth`: API keys mapped to client ids (Envoy's
//! `envoy.filters.http.api_key_auth`). The key is read from the first of
//! the `key_sources` (header, query parameter or cookie) that has one; a
//! missing or unknown key gets 401 (`LocalReason::Unauthenticated`), a
//! known client not in the route's `allowed_clients` 403 (`Forbidden`:
//! gRPC PERMISSION_DENIED). The client id is published in the dynamic
//! metadata and, with `forwarding.header`, sent upstream;
//! `forwarding.hide_credentials` removes the key from the request.
//!
//! Keys are found by their SHA-256 digest and then compared in constant
//! time, so the lookup's timing tells nothing about a key's bytes.

use http::{HeaderName, HeaderValue};
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::config::simpleauth::{
    ApiKeyAuthConfig, ApiKeyAuthPerRouteConfig, ApiKeyCredential, ApiKeyForwarding, ApiKeySource,
};
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, StreamFilter, StreamFilterFactory,
    StreamInfo, local_reply,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The dynamic metadata namespace (Envoy's filter name).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.api_key_auth";

/// Factory of `api_key_auth`.
pub struct ApiKeyAuthFactory;

impl StreamFilterFactory for ApiKeyAuthFactory {
    fn name(&self) -> &'static str {
        "api_key_auth"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: ApiKeyAuthConfig = parse_typed(config)?;
        Ok(Arc::new(ApiKeyAuth(Settings {
            credentials: Some(Arc::new(Credentials::build(&c.credentials)?)),
            sources: Some(Arc::new(sources(&c.key_sources)?)),
            forwarding: Some(Arc::new(forwarding(c.forwarding.as_ref())?)),
            allowed_clients: None,
        })))
    }
}

/// A configured key and its client id.
type Entry = (Box<[u8]>, Arc<str>);

/// Keys by their SHA-256 digest.
struct Credentials(HashMap<[u8; 32], Entry>);

fn digest(key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    out
}

impl Credentials {
    fn build(list: &[ApiKeyCredential]) -> Result<Self, BuildError> {
        let mut map = HashMap::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let p = format!("credentials[{i}]");
            if c.key.is_empty() {
                return Err(BuildError::new(format!("{p}.key"), "empty"));
            }
            if c.client.is_empty() || HeaderValue::from_str(&c.client).is_err() {
                return Err(BuildError::new(
                    format!("{p}.client"),
                    "empty or not a valid header value",
                ));
            }
            let v = (c.key.as_bytes().into(), Arc::from(c.client.as_str()));
            if map.insert(digest(c.key.as_bytes()), v).is_some() {
                return Err(BuildError::new(
                    format!("{p}.key"),
                    "the same key is listed twice",
                ));
            }
        }
        Ok(Self(map))
    }

    fn client(&self, key: &[u8]) -> Option<&Arc<str>> {
        let (k, client) = self.0.get(&digest(key))?;
        bool::from(k.as_ref().ct_eq(key)).then_some(client)
    }
}

enum Source {
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

fn sources(list: &[ApiKeySource]) -> Result<Vec<Source>, BuildError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let p = format!("key_sources[{i}]");
            match (s.header.is_empty(), s.query.is_empty(), s.cookie.is_empty()) {
                (false, true, true) => HeaderName::from_bytes(s.header.as_bytes())
                    .map(Source::Header)
                    .map_err(|_| BuildError::new(format!("{p}.header"), "not a header name")),
                (true, false, true) => Ok(Source::Query(s.query.clone())),
                (true, true, false) => Ok(Source::Cookie(s.cookie.clone())),
                _ => Err(BuildError::new(
                    p,
                    "set exactly one of header, query, cookie",
                )),
            }
        })
        .collect()
}

struct Forward {
    header: Option<HeaderName>,
    hide_credentials: bool,
}

fn forwarding(f: Option<&ApiKeyForwarding>) -> Result<Forward, BuildError> {
    let Some(f) = f else {
        return Ok(Forward {
            header: None,
            hide_credentials: false,
        });
    };
    Ok(Forward {
        header: if f.header.is_empty() {
            None
        } else {
            Some(
                HeaderName::from_bytes(f.header.as_bytes())
                    .map_err(|_| BuildError::new("forwarding.header", "not a header name"))?,
            )
        },
        hide_credentials: f.hide_credentials,
    })
}

/// The filter's settings, or a route's (`None`: the filter's).
struct Settings {
    credentials: Option<Arc<Credentials>>,
    sources: Option<Arc<Vec<Source>>>,
    forwarding: Option<Arc<Forward>>,
    allowed_clients: Option<HashSet<String>>,
}

struct ApiKeyAuth(Settings);

/// Where the key was found, to hide it.
enum Found {
    Header(HeaderName),
    Query(usize),
    Cookie(usize),
}

fn find_key(req: &Request, sources: &[Source]) -> Option<(Vec<u8>, Found)> {
    for s in sources {
        match s {
            Source::Header(h) => {
                let Some(v) = req.headers().get(h) else {
                    continue;
                };
                let mut v = v.as_bytes();
                if *h == http::header::AUTHORIZATION {
                    // `Authorization: Bearer <key>`.
                    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
                        v = v[7..].trim_ascii();
                    }
                }
                if !v.is_empty() {
                    return Some((v.to_vec(), Found::Header(h.clone())));
                }
            }
            Source::Query(name) => {
                let Some(q) = req.uri().query() else { continue };
                for (i, pair) in q.split('&').enumerate() {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if percent_decode(k) == name.as_bytes() && !v.is_empty() {
                        return Some((percent_decode(v), Found::Query(i)));
                    }
                }
            }
            Source::Cookie(name) => {
                for (i, (k, v)) in cookies(req).enumerate() {
                    if k == name.as_bytes() && !v.is_empty() {
                        return Some((v.to_vec(), Found::Cookie(i)));
                    }
                }
            }
        }
    }
    None
}

/// Every `name=value` pair of the `cookie` headers, in order.
fn cookies(req: &Request) -> impl Iterator<Item = (&[u8], &[u8])> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(|c| {
            let c = c.trim_ascii();
            match c.iter().position(|b| *b == b'=') {
                Some(p) => (c[..p].trim_ascii(), c[p + 1..].trim_ascii()),
                None => (c, &c[c.len()..]),
            }
        })
}

/// `%XX` and `+` decoding of a query component (bad escapes kept as-is).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hide(req: &mut Request, found: Found) {
    match found {
        Found::Header(h) => {
            req.headers_mut().remove(h);
        }
        Found::Query(idx) => {
            let uri = req.uri();
            let Some(q) = uri.query() else { return };
            let kept: Vec<&str> = q
                .split('&')
                .enumerate()
                .filter(|(i, _)| *i != idx)
                .map(|(_, p)| p)
                .collect();
            let pq = if kept.is_empty() {
                uri.path().to_string()
            } else {
                format!("{}?{}", uri.path(), kept.join("&"))
            };
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = u;
                }
            }
        }
        Found::Cookie(idx) => {
            let kept: Vec<Vec<u8>> = cookies(req)
                .enumerate()
                .filter(|(i, _)| *i != idx)
                .map(|(_, (k, v))| [k, b"=", v].concat())
                .collect();
            let h = req.headers_mut();
            h.remove(http::header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..]))
            {
                h.insert(http::header::COOKIE, v);
            }
        }
    }
}

impl StreamFilter for ApiKeyAuth {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let status = self.decide(req, info, route);
        Box::pin(std::future::ready(status))
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: ApiKeyAuthPerRouteConfig = parse_typed(config)?;
        Ok(Arc::new(Settings {
            credentials: (!c.credentials.is_empty())
                .then(|| Credentials::build(&c.credentials).map(Arc::new))
                .transpose()?,
            sources: (!c.key_sources.is_empty())
                .then(|| sources(&c.key_sources).map(Arc::new))
                .transpose()?,
            forwarding: c
                .forwarding
                .as_ref()
                .map(|f| forwarding(Some(f)).map(Arc::new))
                .transpose()?,
            allowed_clients: (!c.allowed_clients.is_empty())
                .then(|| c.allowed_clients.iter().cloned().collect()),
        }))
    }
}

impl ApiKeyAuth {
    fn decide(
        &self,
        req: &mut Request,
        info: &mut StreamInfo,
        route: RouteView<'_>,
    ) -> FilterStatus {
        let over = route.config.and_then(|c| c.downcast_ref::<Settings>());
        let base = &self.0;
        let credentials = over
            .and_then(|o| o.credentials.as_ref())
            .or(base.credentials.as_ref());
        let sources = over
            .and_then(|o| o.sources.as_ref())
            .or(base.sources.as_ref());
        let fwd = over
            .and_then(|o| o.forwarding.as_ref())
            .or(base.forwarding.as_ref());
        let (Some(credentials), Some(sources)) = (credentials, sources) else {
            // Nothing to check against: refused, never let through.
            return FilterStatus::Respond(local_reply(info, LocalReason::Unauthenticated));
        };
        if let Some(h) = fwd.and_then(|f| f.header.as_ref()) {
            // Only meshgate says who the client is.
            req.headers_mut().remove(h);
        }
        let Some((key, found)) = find_key(req, sources) else {
            return FilterStatus::Respond(local_reply(info, LocalReason::Unauthenticated));
        };
        let Some(client) = credentials.client(&key) else {
            return FilterStatus::Respond(local_reply(info, LocalReason::Unauthenticated));
        };
        if let Some(allowed) = over.and_then(|o| o.allowed_clients.as_ref())
            && !allowed.contains(&**client)
        {
            return FilterStatus::Respond(local_reply(info, LocalReason::Forbidden));
        }
        info.metadata_mut().set(
            METADATA_NAMESPACE,
            "client",
            serde_json::Value::from(&**client),
        );
        if let Some(f) = fwd {
            if f.hide_credentials {
                hide(req, found);
            }
            if let Some(h) = &f.header
                && let Ok(v) = HeaderValue::from_str(client)
            {
                req.headers_mut().insert(h.clone(), v);
            }
        }
        FilterStatus::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(meshgate_core::stream::empty_body()).unwrap()
    }

    fn srcs(v: serde_json::Value) -> Vec<Source> {
        sources(&parse_typed::<Vec<ApiKeySource>>(&v).unwrap()).unwrap()
    }

    #[test]
    fn keys_from_header_query_cookie_and_hidden() {
        let s = srcs(serde_json::json!([
            {"header": "authorization"}, {"query": "api key"}, {"cookie": "k"}
        ]));
        let mut r = req("/p?a=1&api%20key=k%2B1&b=2", &[]);
        let (k, f) = find_key(&r, &s).unwrap();
        assert_eq!(k, b"k+1");
        hide(&mut r, f);
        assert_eq!(r.uri().to_string(), "/p?a=1&b=2");
        let mut r = req("/p", &[("cookie", "x=1; k=secret"), ("cookie", "y=2")]);
        let (k, f) = find_key(&r, &s).unwrap();
        assert_eq!(k, b"secret");
        hide(&mut r, f);
        assert_eq!(r.headers()["cookie"], "x=1; y=2");
        let r = req("/p?k=1", &[("authorization", "Bearer  abc ")]);
        assert_eq!(find_key(&r, &s).unwrap().0, b"abc");
        assert!(find_key(&req("/p?apikey=1", &[("cookie", "k=")]), &s).is_none());
    }

    #[test]
    fn credentials_lookup_and_config_errors() {
        let c = Credentials::build(&[
            ApiKeyCredential {
                key: "k1".into(),
                client: "c1".into(),
            },
            ApiKeyCredential {
                key: "k2".into(),
                client: "c2".into(),
            },
        ])
        .unwrap();
        assert_eq!(c.client(b"k2").map(|c| &**c), Some("c2"));
        assert!(c.client(b"k3").is_none());
        assert!(c.client(b"").is_none());
        let dup = [
            ApiKeyCredential {
                key: "k".into(),
                client: "a".into(),
            },
            ApiKeyCredential {
                key: "k".into(),
                client: "b".into(),
            },
        ];
        assert_eq!(
            Credentials::build(&dup).err().unwrap().path,
            "credentials[1].key"
        );
        let e = sources(&[ApiKeySource {
            header: "x".into(),
            query: "y".into(),
            cookie: String::new(),
        }])
        .err()
        .unwrap();
        assert_eq!(e.path, "key_sources[0]");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%41+%zz%4"), b"aA %zz%4");
        assert_eq!(percent_decode("%"), b"%");
    }
}
