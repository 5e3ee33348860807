//! The gRPC mode: `envoy.service.auth.v3.Authorization/Check` through a
//! cluster (`core::callout::grpc_unary`), the `CheckRequest` built from the
//! stream and the `CheckResponse` read into a `Decision`.

use super::{Action, CheckInput, DEFAULT_TIMEOUT, Decision, MAX_ANSWER, Mutation, cluster};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use envoy_types::pb::google::protobuf as pb;
use http::{HeaderName, HeaderValue, StatusCode};
use meshgate_core::BuildError;
use meshgate_core::callout::{CalloutError, grpc_unary};
use meshgate_core::cluster::Cluster;
use meshgate_core::config::ext_authz::GrpcServiceConfig;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{Request, StreamInfo};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

pub(crate) struct GrpcService {
    cluster: Arc<Cluster>,
    authority: String,
    timeout: Duration,
}

impl GrpcService {
    pub(crate) fn build(c: &GrpcServiceConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let name = &c.envoy_grpc.cluster_name;
        let cluster = cluster(ctx, "grpc_service.envoy_grpc.cluster_name", name)?;
        let authority = if c.envoy_grpc.authority.is_empty() {
            name.clone()
        } else {
            c.envoy_grpc.authority.clone()
        };
        if http::uri::Authority::try_from(authority.as_str()).is_err() {
            return Err(BuildError::new(
                if c.envoy_grpc.authority.is_empty() {
                    "grpc_service.envoy_grpc.cluster_name"
                } else {
                    "grpc_service.envoy_grpc.authority"
                },
                "not a valid :authority",
            ));
        }
        let timeout = c.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(BuildError::new("grpc_service.timeout", "must be positive"));
        }
        Ok(Self {
            cluster,
            authority,
            timeout,
        })
    }

    /// Sends an encoded `CheckRequest` (`check_request`; built before the
    /// call, as the request is not `Sync`) and reads the verdict.
    pub(crate) async fn check(&self, msg: Vec<u8>) -> Decision {
        match grpc_unary(
            &self.cluster,
            &self.authority,
            CHECK,
            Bytes::from(msg),
            self.timeout,
            MAX_ANSWER,
        )
        .await
        {
            Ok(answer) => match auth::CheckResponse::decode(answer) {
                Ok(r) => decision(r),
                Err(_) => Decision::Error("malformed_response"),
            },
            Err(e) => Decision::Error(error_label(&e)),
        }
    }
}

pub(crate) fn error_label(e: &CalloutError) -> &'static str {
    match e {
        CalloutError::Upstream(r) => r.label(),
        CalloutError::TooLarge(_) => "response_too_large",
        CalloutError::Body(_) => "response_body",
        CalloutError::Grpc { .. } => "grpc_status",
    }
}

fn socket(addr: std::net::IpAddr, port: u16) -> core3::Address {
    core3::Address {
        address: Some(core3::address::Address::SocketAddress(
            core3::SocketAddress {
                address: addr.to_string(),
                port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(port.into())),
                ..Default::default()
            },
        )),
    }
}

/// The `CheckRequest` of a stream (Envoy's `AttributeContext`).
pub(crate) fn check_request(
    req: &Request,
    info: &StreamInfo,
    input: &CheckInput<'_>,
) -> auth::CheckRequest {
    use auth::attribute_context as ac;
    let conn = &info.connection;
    // Envoy joins repeated headers with a comma; names are lower case
    // (`http` already keeps them so).
    let mut headers: HashMap<String, String> = HashMap::with_capacity(req.headers().keys_len() + 3);
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), req.method().as_str().into());
    headers.insert(":path".into(), path.clone());
    let scheme = match req.uri().scheme_str() {
        Some(s) => s.to_string(),
        None if conn.tls.is_some() => "https".into(),
        None => "http".into(),
    };
    let protocol = match req.version() {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    let size = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or_else(|| {
            input
                .body
                .as_ref()
                .filter(|(_, cut)| !cut)
                .map(|(b, _)| b.len() as i64)
        })
        .unwrap_or(-1);
    let (body, raw_body) = match &input.body {
        Some((b, _)) if input.pack_as_bytes => (String::new(), b.to_vec()),
        Some((b, _)) => (String::from_utf8_lossy(b).into_owned(), Vec::new()),
        None => (String::new(), Vec::new()),
    };
    if let Some((_, cut)) = &input.body {
        headers.insert(
            "x-envoy-auth-partial-body".into(),
            if *cut { "true" } else { "false" }.into(),
        );
    }
    let peer = conn.tls.as_ref().and_then(|t| t.peer.as_ref());
    let principal = peer
        .map(|p| {
            p.uri_sans
                .first()
                .cloned()
                .unwrap_or_else(|| p.subject.clone())
        })
        .unwrap_or_default();
    let certificate = match peer {
        Some(p) if input.peer_certificate && !p.der.is_empty() => url_encoded_pem(&p.der),
        _ => String::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(ac::Peer {
                address: Some(socket(
                    info.downstream_remote_address,
                    conn.peer_addr.port(),
                )),
                principal,
                certificate,
                ..Default::default()
            }),
            destination: Some(ac::Peer {
                address: Some(socket(conn.local_addr.ip(), conn.local_addr.port())),
                ..Default::default()
            }),
            request: Some(ac::Request {
                time: Some(pb::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(ac::HttpRequest {
                    id: req
                        .headers()
                        .get("x-request-id")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default(),
                    method: req.method().as_str().into(),
                    headers,
                    path: path.clone(),
                    host,
                    scheme,
                    query: path
                        .split_once('?')
                        .map(|(_, q)| q.to_string())
                        .unwrap_or_default(),
                    size,
                    protocol: protocol.into(),
                    body,
                    raw_body,
                    ..Default::default()
                }),
            }),
            context_extensions: input
                .context_extensions
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            tls_session: conn
                .tls
                .as_ref()
                .and_then(|t| t.server_name.clone())
                .map(|sni| ac::TlsSession { sni }),
            ..Default::default()
        }),
    }
}

/// A DER certificate as Envoy sends it: PEM, then URL-encoded (every byte
/// but the unreserved ones of RFC 3986 as `%XX`).
fn url_encoded_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a server's `HeaderValueOption`s; an invalid name or value makes
/// the whole answer unusable (never half-applied).
fn mutations(opts: Vec<core3::HeaderValueOption>) -> Option<Vec<Mutation>> {
    use core3::header_value_option::HeaderAppendAction as A;
    let mut out = Vec::with_capacity(opts.len());
    for o in opts {
        let h = o.header?;
        let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
        let value = if h.value.is_empty() && !h.raw_value.is_empty() {
            HeaderValue::from_bytes(&h.raw_value).ok()?
        } else {
            HeaderValue::from_str(&h.value).ok()?
        };
        #[allow(deprecated)]
        let append = o.append;
        let action = match append {
            // The deprecated `append` wins when set: false overwrites.
            Some(b) if b.value => Action::Append,
            Some(_) => Action::Overwrite,
            None => match A::try_from(o.append_action).ok()? {
                A::AppendIfExistsOrAdd => Action::Append,
                A::AddIfAbsent => Action::AddIfAbsent,
                A::OverwriteIfExistsOrAdd => Action::Overwrite,
                A::OverwriteIfExists => Action::OverwriteIfExists,
            },
        };
        out.push(Mutation {
            name,
            value,
            action,
        });
    }
    Some(out)
}

/// `google.protobuf.Struct` as JSON.
pub(crate) fn struct_json(s: pb::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_json(v)))
        .collect()
}

fn value_json(v: pb::Value) -> serde_json::Value {
    use pb::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_json(s)),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_json).collect())
        }
    }
}

/// The verdict in a `CheckResponse`.
pub(crate) fn decision(r: auth::CheckResponse) -> Decision {
    use auth::check_response::HttpResponse;
    let code = r.status.as_ref().map_or(0, |s| s.code);
    let mut metadata = r.dynamic_metadata.map(struct_json);
    if code == 0 {
        let ok = match r.http_response {
            None => auth::OkHttpResponse::default(),
            Some(HttpResponse::OkResponse(ok)) => ok,
            Some(HttpResponse::DeniedResponse(_)) | Some(HttpResponse::ErrorResponse(_)) => {
                return Decision::Error("malformed_response");
            }
        };
        if !ok.query_parameters_to_set.is_empty() || !ok.query_parameters_to_remove.is_empty() {
            // Not applied by meshgate: refused rather than half-applied.
            return Decision::Error("unsupported_mutation");
        }
        #[allow(deprecated)]
        if let Some(m) = ok.dynamic_metadata {
            metadata
                .get_or_insert_with(Default::default)
                .extend(struct_json(m));
        }
        let (Some(request), Some(response)) =
            (mutations(ok.headers), mutations(ok.response_headers_to_add))
        else {
            return Decision::Error("invalid_header");
        };
        let mut remove = Vec::with_capacity(ok.headers_to_remove.len());
        for name in ok.headers_to_remove {
            // Pseudo-headers and `host` are not the server's to remove.
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) if n != http::header::HOST => remove.push(n),
                _ => return Decision::Error("invalid_header"),
            }
        }
        return Decision::Allow {
            request,
            remove,
            response,
            metadata,
        };
    }
    match r.http_response {
        Some(HttpResponse::ErrorResponse(_)) => Decision::Error("error_response"),
        Some(HttpResponse::DeniedResponse(d)) => {
            let status = d
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(super::status)
                .unwrap_or(StatusCode::FORBIDDEN);
            let Some(headers) = mutations(d.headers) else {
                return Decision::Error("invalid_header");
            };
            Decision::Deny {
                status,
                headers,
                body: Bytes::from(d.body),
                metadata,
            }
        }
        _ => Decision::Deny {
            status: StatusCode::FORBIDDEN,
            headers: Vec::new(),
            body: Bytes::new(),
            metadata,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::stream::empty_body;

    #[allow(deprecated)]
    fn hvo(k: &str, v: &str, append: Option<bool>, action: i32) -> core3::HeaderValueOption {
        core3::HeaderValueOption {
            header: Some(core3::HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            append: append.map(|value| pb::BoolValue { value }),
            append_action: action,
            ..Default::default()
        }
    }

    fn info() -> StreamInfo {
        let conn = meshgate_core::network::ConnectionInfo {
            id: 1,
            listener: Arc::from("l"),
            peer_addr: "10.0.0.1:4000".parse().unwrap(),
            local_addr: "10.0.0.2:8080".parse().unwrap(),
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        };
        StreamInfo::new(Arc::new(conn), "http1")
    }

    #[test]
    fn the_check_request_describes_the_stream() {
        let mut req = Request::new(empty_body());
        *req.uri_mut() = "/a/b?x=1".parse().unwrap();
        *req.method_mut() = http::Method::POST;
        let h = req.headers_mut();
        h.insert("host", "api.example".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        h.insert("x-request-id", "rid".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        let ext = [("tenant".to_string(), "t1".to_string())]
            .into_iter()
            .collect();
        let input = CheckInput {
            body: Some((Bytes::from_static(b"abc"), false)),
            pack_as_bytes: false,
            context_extensions: Some(&ext),
            peer_certificate: false,
        };
        let c = check_request(&req, &info(), &input).attributes.unwrap();
        let src = c.source.unwrap().address.unwrap().address.unwrap();
        let core3::address::Address::SocketAddress(s) = src else {
            panic!()
        };
        assert_eq!(s.address, "10.0.0.1");
        let http = c.request.unwrap().http.unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/a/b?x=1");
        assert_eq!(http.query, "x=1");
        assert_eq!(http.host, "api.example");
        assert_eq!(http.scheme, "http");
        assert_eq!(http.protocol, "HTTP/1.1");
        assert_eq!(http.id, "rid");
        assert_eq!(http.size, 3);
        assert_eq!(http.body, "abc");
        assert_eq!(http.headers["x-multi"], "1,2");
        assert_eq!(http.headers[":path"], "/a/b?x=1");
        assert_eq!(http.headers["x-envoy-auth-partial-body"], "false");
        assert_eq!(c.context_extensions["tenant"], "t1");
        let packed = CheckInput {
            pack_as_bytes: true,
            ..input
        };
        let http = check_request(&req, &info(), &packed)
            .attributes
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap();
        assert_eq!(http.raw_body, b"abc");
        assert!(http.body.is_empty());
    }

    #[test]
    fn certificates_are_sent_as_url_encoded_pem() {
        let s = url_encoded_pem(&[0xff; 60]);
        assert!(s.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{s}");
        assert!(s.ends_with("-----END%20CERTIFICATE-----%0A"), "{s}");
        assert!(s.contains("%2F%2F"), "base64 slashes are escaped: {s}");
    }

    #[test]
    fn ok_denied_and_malformed_answers() {
        use auth::check_response::HttpResponse;
        let ok = auth::CheckResponse {
            status: Some(Default::default()),
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                headers: vec![
                    hvo("x-user", "alice", Some(false), 0),
                    hvo("x-tag", "t", None, 0),
                ],
                headers_to_remove: vec!["authorization".into()],
                response_headers_to_add: vec![hvo("x-resp", "1", None, 2)],
                ..Default::default()
            })),
            dynamic_metadata: Some(pb::Struct {
                fields: [(
                    "user".to_string(),
                    pb::Value {
                        kind: Some(pb::value::Kind::StringValue("alice".into())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
        };
        let Decision::Allow {
            request,
            remove,
            response,
            metadata,
        } = decision(ok)
        else {
            panic!()
        };
        assert_eq!(request[0].action, Action::Overwrite);
        assert_eq!(request[1].action, Action::Append);
        assert_eq!(remove, ["authorization"]);
        assert_eq!(response[0].action, Action::Overwrite);
        assert_eq!(metadata.unwrap()["user"], "alice");

        let denied = auth::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                headers: vec![hvo("www-authenticate", "Bearer", None, 0)],
                body: "go away".into(),
            })),
            dynamic_metadata: None,
        };
        let Decision::Deny {
            status,
            headers,
            body,
            ..
        } = decision(denied)
        else {
            panic!()
        };
        assert_eq!(status, 401);
        assert_eq!(headers[0].name, "www-authenticate");
        assert_eq!(body, "go away");

        let bare = auth::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 16,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(decision(bare), Decision::Deny { status, .. } if status == 403));

        let bad = auth::CheckResponse {
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                headers: vec![hvo("bad header", "x", None, 0)],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(matches!(decision(bad), Decision::Error("invalid_header")));
        let query = auth::CheckResponse {
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                query_parameters_to_remove: vec!["a".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(matches!(
            decision(query),
            Decision::Error("unsupported_mutation")
        ));
        let host = auth::CheckResponse {
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                headers_to_remove: vec!["host".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(matches!(decision(host), Decision::Error("invalid_header")));
    }
}
