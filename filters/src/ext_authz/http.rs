//! The HTTP mode: the request's method, `path_prefix` + path, `host`,
//! `authorization` and allowed headers (and the buffered body) sent to a
//! plain HTTP authorization server through a cluster (`core::callout::call`).
//! A 2xx answer allows (its allowed upstream headers set or appended on the
//! request); any other status denies with that status, the body and the
//! allowed client headers.

use super::grpc::error_label;
use super::matcher::ListMatcher;
use super::{Action, CheckInput, Decision, MAX_ANSWER, Mutation, cluster};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use meshgate_core::BuildError;
use meshgate_core::callout::call;
use meshgate_core::cluster::Cluster;
use meshgate_core::config::ext_authz::{HttpServiceConfig, ListStringMatcherConfig};
use meshgate_core::network::BuildContext;
use meshgate_core::stream::Request;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct HttpService {
    cluster: Arc<Cluster>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path_prefix: String,
    timeout: Duration,
    allowed_headers: Option<ListMatcher>,
    headers_to_add: Vec<(HeaderName, HeaderValue)>,
    allowed_upstream: Option<ListMatcher>,
    allowed_upstream_append: Option<ListMatcher>,
    allowed_client: Option<ListMatcher>,
}

fn list(
    path: &str,
    c: Option<&ListStringMatcherConfig>,
) -> Result<Option<ListMatcher>, BuildError> {
    c.map(|c| ListMatcher::build(path, c)).transpose()
}

impl HttpService {
    pub(crate) fn build(c: &HttpServiceConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let p = "http_service";
        let uri: http::Uri = c
            .server_uri
            .uri
            .parse()
            .map_err(|_| BuildError::new(format!("{p}.server_uri.uri"), "not a URI"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(BuildError::new(
                format!("{p}.server_uri.uri"),
                "an absolute URI (scheme and host) is required",
            ));
        };
        let cluster = cluster(
            ctx,
            &format!("{p}.server_uri.cluster"),
            &c.server_uri.cluster,
        )?;
        if c.server_uri.timeout.is_zero() {
            return Err(BuildError::new(
                format!("{p}.server_uri.timeout"),
                "must be positive",
            ));
        }
        if !c.path_prefix.is_empty()
            && (!c.path_prefix.starts_with('/')
                || http::uri::PathAndQuery::try_from(c.path_prefix.as_str()).is_err()
                || c.path_prefix.contains('?'))
        {
            return Err(BuildError::new(
                format!("{p}.path_prefix"),
                "a path starting with '/' (no query)",
            ));
        }
        let rq = c.authorization_request.as_ref();
        let rs = c.authorization_response.as_ref();
        let mut headers_to_add = Vec::new();
        for (i, h) in rq.map_or(&[][..], |r| &r.headers_to_add).iter().enumerate() {
            let f = format!("{p}.authorization_request.headers_to_add[{i}]");
            let name = HeaderName::from_bytes(h.key.as_bytes())
                .map_err(|_| BuildError::new(format!("{f}.key"), "not a header name"))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| BuildError::new(format!("{f}.value"), "not a header value"))?;
            headers_to_add.push((name, value));
        }
        Ok(Self {
            cluster,
            scheme,
            authority,
            path_prefix: c.path_prefix.clone(),
            timeout: c.server_uri.timeout,
            allowed_headers: list(
                &format!("{p}.authorization_request.allowed_headers"),
                rq.and_then(|r| r.allowed_headers.as_ref()),
            )?,
            headers_to_add,
            allowed_upstream: list(
                &format!("{p}.authorization_response.allowed_upstream_headers"),
                rs.and_then(|r| r.allowed_upstream_headers.as_ref()),
            )?,
            allowed_upstream_append: list(
                &format!("{p}.authorization_response.allowed_upstream_headers_to_append"),
                rs.and_then(|r| r.allowed_upstream_headers_to_append.as_ref()),
            )?,
            allowed_client: list(
                &format!("{p}.authorization_response.allowed_client_headers"),
                rs.and_then(|r| r.allowed_client_headers.as_ref()),
            )?,
        })
    }

    /// The authorization request for `req` (`None`: its path cannot be
    /// put behind the prefix).
    pub(crate) fn authz_request(
        &self,
        req: &Request,
        input: &CheckInput<'_>,
    ) -> Option<http::Request<Bytes>> {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = format!("{}{pq}", self.path_prefix);
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .ok()?;
        let body = input
            .body
            .as_ref()
            .map(|(b, _)| b.clone())
            .unwrap_or_default();
        let mut out = http::Request::new(body.clone());
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = uri;
        let h = out.headers_mut();
        for (name, value) in req.headers() {
            if name == header::AUTHORIZATION
                || self
                    .allowed_headers
                    .as_ref()
                    .is_some_and(|m| m.matches(name.as_str()))
            {
                if hop_by_hop(name) || name == header::HOST || name == header::CONTENT_LENGTH {
                    continue;
                }
                h.append(name.clone(), value.clone());
            }
        }
        // The original host, as Envoy sends it.
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers().get(header::HOST).cloned());
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        for (name, value) in &self.headers_to_add {
            h.insert(name.clone(), value.clone());
        }
        Some(out)
    }

    /// Sends the authorization request (`authz_request`) and reads the
    /// verdict.
    pub(crate) async fn check(&self, authz: Option<http::Request<Bytes>>) -> Decision {
        let Some(authz) = authz else {
            return Decision::Error("bad_request_uri");
        };
        match call(&self.cluster, authz, self.timeout, MAX_ANSWER).await {
            Ok(resp) => self.decision(resp.head, resp.body),
            Err(e) => Decision::Error(error_label(&e)),
        }
    }

    pub(crate) fn decision(&self, head: http::response::Parts, body: Bytes) -> Decision {
        if head.status.is_success() {
            let mut request = Vec::new();
            for (name, value) in &head.headers {
                if hop_by_hop(name) || name == header::CONTENT_LENGTH || name == header::HOST {
                    continue;
                }
                let action = if self
                    .allowed_upstream_append
                    .as_ref()
                    .is_some_and(|m| m.matches(name.as_str()))
                {
                    Action::Append
                } else if self
                    .allowed_upstream
                    .as_ref()
                    .is_some_and(|m| m.matches(name.as_str()))
                {
                    Action::Overwrite
                } else {
                    continue;
                };
                request.push(Mutation {
                    name: name.clone(),
                    value: value.clone(),
                    action,
                });
            }
            // A server header repeated: the first occurrence sets, the
            // others add (as the server sent them).
            let mut seen: Vec<&HeaderName> = Vec::new();
            let mut fixed = Vec::with_capacity(request.len());
            for m in &request {
                let action = if m.action == Action::Overwrite && seen.contains(&&m.name) {
                    Action::Append
                } else {
                    m.action
                };
                seen.push(&m.name);
                fixed.push(Mutation {
                    action,
                    ..m.clone()
                });
            }
            return Decision::Allow {
                request: fixed,
                remove: Vec::new(),
                response: Vec::new(),
                metadata: None,
            };
        }
        let mut headers = Vec::new();
        for (name, value) in &head.headers {
            if hop_by_hop(name) || name == header::CONTENT_LENGTH || name == header::HOST {
                continue;
            }
            let always = name == header::WWW_AUTHENTICATE || name == header::LOCATION;
            if let Some(m) = &self.allowed_client
                && !always
                && !m.matches(name.as_str())
            {
                continue;
            }
            headers.push(Mutation {
                name: name.clone(),
                value: value.clone(),
                action: Action::Append,
            });
        }
        Decision::Deny {
            status: head.status,
            headers,
            body,
            metadata: None,
        }
    }
}

/// Connection-level headers that never cross a hop.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::stream::empty_body;

    fn service() -> HttpService {
        let c: HttpServiceConfig = serde_json::from_value(serde_json::json!({
            "server_uri": {"uri": "http://authz.local:9000", "cluster": "authz", "timeout": "1s"},
            "path_prefix": "/check",
            "authorization_request": {
                "allowed_headers": {"patterns": [{"exact": "x-tenant"}]},
                "headers_to_add": [{"key": "x-from", "value": "meshgate"}]},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"exact": "x-user"}]},
                "allowed_upstream_headers_to_append": {"patterns": [{"prefix": "x-tag"}]},
                "allowed_client_headers": {"patterns": [{"exact": "x-reason"}]}}
        }))
        .unwrap();
        super::super::tests::with_ctx(|ctx| HttpService::build(&c, ctx).unwrap())
    }

    #[test]
    fn the_authorization_request_carries_only_what_is_allowed() {
        let s = service();
        let mut req = Request::new(empty_body());
        *req.method_mut() = http::Method::DELETE;
        *req.uri_mut() = "/items/1?x=2".parse().unwrap();
        let h = req.headers_mut();
        h.insert("host", "api.example".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("x-tenant", "t1".parse().unwrap());
        h.insert("cookie", "secret".parse().unwrap());
        let input = CheckInput {
            body: Some((Bytes::from_static(b"hello"), false)),
            pack_as_bytes: false,
            context_extensions: None,
            peer_certificate: false,
        };
        let out = s.authz_request(&req, &input).unwrap();
        assert_eq!(out.method(), http::Method::DELETE);
        assert_eq!(out.uri(), "http://authz.local:9000/check/items/1?x=2");
        assert_eq!(out.headers()["host"], "api.example");
        assert_eq!(out.headers()["authorization"], "Bearer t");
        assert_eq!(out.headers()["x-tenant"], "t1");
        assert_eq!(out.headers()["x-from"], "meshgate");
        assert_eq!(out.headers()["content-length"], "5");
        assert!(!out.headers().contains_key("cookie"));
        assert_eq!(out.body(), "hello");
    }

    #[test]
    fn a_2xx_allows_with_upstream_headers_anything_else_denies() {
        let s = service();
        let mut ok = http::Response::new(());
        let h = ok.headers_mut();
        h.insert("x-user", "alice".parse().unwrap());
        h.append("x-tag-a", "1".parse().unwrap());
        h.insert("x-other", "no".parse().unwrap());
        let Decision::Allow { request, .. } = s.decision(ok.into_parts().0, Bytes::new()) else {
            panic!()
        };
        let names: Vec<_> = request
            .iter()
            .map(|m| (m.name.as_str(), m.action))
            .collect();
        assert!(names.contains(&("x-user", Action::Overwrite)));
        assert!(names.contains(&("x-tag-a", Action::Append)));
        assert_eq!(names.len(), 2);

        let mut no = http::Response::new(());
        *no.status_mut() = http::StatusCode::UNAUTHORIZED;
        let h = no.headers_mut();
        h.insert("x-reason", "expired".parse().unwrap());
        h.insert("www-authenticate", "Bearer".parse().unwrap());
        h.insert("x-internal", "no".parse().unwrap());
        h.insert("connection", "close".parse().unwrap());
        let Decision::Deny {
            status,
            headers,
            body,
            ..
        } = s.decision(no.into_parts().0, Bytes::from_static(b"denied"))
        else {
            panic!()
        };
        assert_eq!(status, 401);
        assert_eq!(body, "denied");
        let mut names: Vec<_> = headers.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["www-authenticate", "x-reason"]);
    }
}
