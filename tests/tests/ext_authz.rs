//! The `ext_authz` stream filter against real authorization servers
//! (tests/peers/ext_authz_peer.py): a Python grpcio
//! `envoy.service.auth.v3.Authorization` server on Envoy's generated protos
//! as an HTTP/2 cluster, and a Python `http.server` authorization server;
//! the upstream is a Python echo server that shows exactly which headers
//! and body reached it. Allowed requests carry the server's header
//! mutations, denials pass the server's status, headers and body through,
//! a server that is down or slow is refused (or allowed with
//! `failure_mode_allow`), the body is sent when asked (413 past the bound),
//! per-route disable and check settings, and the same filter through a
//! real xDS control plane.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer as Peer, logged};
use meshgate_tests::*;
use std::path::PathBuf;

/// A listener `name` on `port` whose proxy runs `ext_authz` with
/// `filter` (YAML flow text) in front of the echo upstream; `/public/`
/// switches the filter off, `/tenant/` sets check settings, a request
/// carrying `x-route: b` is answered by a route of its own.
fn listener(name: &str, port: u16, filter: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: ext_authz
                  config: {filter}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /public/}}
                        route: {{cluster: upstream}}
                        per_filter_config:
                          ext_authz: {{disabled: true}}
                      - match: {{prefix: /tenant/}}
                        route: {{cluster: upstream}}
                        per_filter_config:
                          ext_authz:
                            check_settings:
                              context_extensions: {{tenant: acme}}
                              disable_request_body_buffering: true
                      - match: {{prefix: /, headers: [{{name: x-route, exact_match: b}}]}}
                        direct_response: {{status: 200, body: "rerouted"}}
                      - match: {{prefix: /}}
                        route: {{cluster: upstream}}
"#
    )
}

fn config(listeners: &[String], grpc_authz: u16, http_authz: u16, upstream: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{}clusters:
  - name: grpc-authz
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{grpc_authz}"}}]
  - name: http-authz
    endpoints: [{{address: "127.0.0.1:{http_authz}"}}]
  - name: dead-authz
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
  - name: upstream
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"#,
        listeners.concat(),
        dead = free_port(),
    )
}

/// The echo upstream's view of a request.
fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not an echo: {body:?}"))
}

struct Setup {
    mg: Meshgate,
    grpc_log: PathBuf,
    http_log: PathBuf,
    _peers: [Peer; 3],
    _dir: tempfile::TempDir,
}

/// Starts the three peers and meshgate with `listeners` (name, filter).
fn setup(listeners: &[(&str, u16, &str)]) -> Setup {
    let ls: Vec<String> = listeners
        .iter()
        .map(|(n, p, f)| listener(n, *p, f))
        .collect();
    setup_with(&ls)
}

/// `setup` with the listeners' YAML already written.
fn setup_with(ls: &[String]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let grpc_log = dir.path().join("grpc.log");
    let http_log = dir.path().join("http.log");
    let grpc = Peer::start("ext_authz_peer.py", &["grpc", grpc_log.to_str().unwrap()]);
    let http = Peer::start("ext_authz_peer.py", &["http", http_log.to_str().unwrap()]);
    let echo = Peer::start("ext_authz_peer.py", &["echo"]);
    let mg = Meshgate::start(&config(ls, grpc.port, http.port, echo.port));
    Setup {
        mg,
        grpc_log,
        http_log,
        _peers: [grpc, http, echo],
        _dir: dir,
    }
}

const GRPC: &str = "{grpc_service: {envoy_grpc: {cluster_name: grpc-authz}, timeout: 2s}, clear_route_cache: true}";

#[test]
fn grpc_allow_applies_the_servers_headers_and_deny_passes_its_answer_through() {
    let port = free_port();
    let s = setup(&[("web", port, GRPC)]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Allowed: the upstream sees the server's headers (set over the
    // client's, appended, removed); the client sees the response header.
    let (status, h, body) = curl(&[
        "-H",
        "x-authz-user: mallory",
        "-H",
        "x-authz-tag: from-client",
        "-H",
        "x-remove-me: secret",
        "-H",
        "X-Mixed-Case: v",
        &url("/items/1?q=2"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-authz-resp"], "yes");
    let up = echoed(&body);
    assert_eq!(up["headers"]["x-authz-user"], "alice");
    assert_eq!(up["headers"]["x-authz-tag"], "from-client, from-authz");
    assert!(up["headers"].get("x-remove-me").is_none(), "{up}");
    // What the server saw.
    let seen = &logged(&s.grpc_log)[0];
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/items/1?q=2");
    assert_eq!(seen["host"], format!("127.0.0.1:{port}"));
    assert_eq!(seen["protocol"], "HTTP/1.1");
    assert_eq!(seen["headers"]["x-mixed-case"], "v");
    assert_eq!(seen["headers"][":method"], "GET");
    assert_eq!(seen["source"], "127.0.0.1");
    assert_eq!(seen["size"], -1);

    // Denied: the server's status, headers and body, never the upstream.
    let (status, h, body) = curl(&[&url("/deny/x")]);
    assert_eq!(status, 401);
    assert_eq!(body, "denied by policy\n");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(h["x-deny-reason"], "no token");

    // A gRPC client (h2c) gets the denial as its own status:
    // UNAUTHENTICATED for the server's 401.
    let (_, h, _) = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        &url("/deny/echo.Echo/Unary"),
    ]);
    assert_eq!(
        h.get("grpc-status").map(String::as_str),
        Some("16"),
        "{h:?}"
    );

    // `clear_route_cache`: the header the server set picks another route.
    let (status, _, body) = curl(&[&url("/reroute")]);
    assert_eq!((status, body.as_str()), (200, "rerouted"));

    // Per route: off on /public/ (the server is not asked), context
    // extensions on /tenant/.
    let before = logged(&s.grpc_log).len();
    let (status, _, body) = curl(&[&url("/public/a")]);
    assert_eq!(status, 200);
    assert!(echoed(&body)["headers"].get("x-authz-user").is_none());
    let (status, _, _) = curl(&[&url("/tenant/a")]);
    assert_eq!(status, 200);
    let log = logged(&s.grpc_log);
    assert_eq!(log.len(), before + 1, "/public/ was not checked");
    assert_eq!(log[before]["path"], "/tenant/a");
    assert_eq!(log[before]["context_extensions"]["tenant"], "acme");

    // An HTTP/2 request is described as one (host from `:authority`).
    let (status, _, body) = curl(&["--http2-prior-knowledge", &url("/h2")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["headers"]["x-authz-user"], "alice");
    let log = logged(&s.grpc_log);
    let h2 = log.last().unwrap();
    assert_eq!(h2["path"], "/h2");
    assert_eq!(h2["protocol"], "HTTP/2");
    assert_eq!(h2["host"], format!("127.0.0.1:{port}"));
    assert_eq!(h2["headers"][":authority"], format!("127.0.0.1:{port}"));

    let g = [("mode", "grpc")];
    assert_eq!(s.mg.metric("meshgate_ext_authz_ok_total", &g), 4.0);
    assert_eq!(s.mg.metric("meshgate_ext_authz_denied_total", &g), 2.0);
    assert_eq!(
        s.mg.metric(
            "meshgate_http_filter_denied_total",
            &[("filter", "ext_authz"), ("reason", "unauthenticated")]
        ),
        2.0
    );
}

#[test]
fn a_server_down_or_too_slow_is_refused_unless_failure_mode_allows() {
    let (closed, open, slow, garbage) = (free_port(), free_port(), free_port(), free_port());
    let s = setup(&[
        (
            "closed",
            closed,
            "{grpc_service: {envoy_grpc: {cluster_name: dead-authz}}}",
        ),
        (
            "open",
            open,
            "{grpc_service: {envoy_grpc: {cluster_name: dead-authz}}, failure_mode_allow: true, failure_mode_allow_header_add: true}",
        ),
        (
            "slow",
            slow,
            "{grpc_service: {envoy_grpc: {cluster_name: grpc-authz}, timeout: 0.3s}, status_on_error: {code: 503}}",
        ),
        // A "gRPC" server that is really the plain HTTP one: a 200 with no
        // gRPC framing or status is a malformed answer.
        (
            "garbage",
            garbage,
            "{grpc_service: {envoy_grpc: {cluster_name: http-authz}, timeout: 2s}}",
        ),
    ]);
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{closed}/a")]);
    assert_eq!(status, 403);
    assert!(body.is_empty(), "{body}");
    assert_eq!(
        s.mg.metric(
            "meshgate_ext_authz_error_total",
            &[("mode", "grpc"), ("reason", "upstream_connect_failure")]
        ),
        1.0
    );

    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{open}/a")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        echoed(&body)["headers"]["x-envoy-auth-failure-mode-allowed"],
        "true"
    );
    assert_eq!(
        s.mg.metric("meshgate_ext_authz_failure_mode_allowed_total", &[]),
        1.0
    );

    let (status, _, _) = curl(&[&format!("http://127.0.0.1:{slow}/slow")]);
    assert_eq!(status, 503);
    assert_eq!(
        s.mg.metric(
            "meshgate_ext_authz_error_total",
            &[("mode", "grpc"), ("reason", "upstream_timeout")]
        ),
        1.0
    );
    let (status, _, _) = curl(&[&format!("http://127.0.0.1:{garbage}/a")]);
    assert_eq!(status, 403);
    assert_eq!(
        s.mg.metric(
            "meshgate_ext_authz_error_total",
            &[("mode", "grpc"), ("reason", "grpc_status")]
        ),
        1.0
    );
    assert_eq!(s.mg.metric("meshgate_ext_authz_ok_total", &[]), 0.0);
}

#[test]
fn with_request_body_the_server_sees_the_body_and_past_the_bound_413() {
    let (port, partial) = (free_port(), free_port());
    let s = setup(&[
        (
            "web",
            port,
            "{grpc_service: {envoy_grpc: {cluster_name: grpc-authz}, timeout: 2s}, with_request_body: {max_request_bytes: 16}}",
        ),
        (
            "partial",
            partial,
            "{grpc_service: {envoy_grpc: {cluster_name: grpc-authz}, timeout: 2s}, with_request_body: {max_request_bytes: 4, allow_partial_message: true, pack_as_bytes: true}}",
        ),
    ]);
    let url = format!("http://127.0.0.1:{port}/upload");
    let (status, _, body) = curl(&["--data-binary", "hello body", &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        echoed(&body)["body"],
        "hello body",
        "the upstream still gets it"
    );
    let seen = &logged(&s.grpc_log)[0];
    assert_eq!(seen["body"], "hello body");
    assert_eq!(seen["size"], 10);
    assert_eq!(seen["headers"]["x-envoy-auth-partial-body"], "false");

    // Over the bound: 413, the server is not asked.
    let big = "x".repeat(100);
    let (status, _, _) = curl(&["--data-binary", &big, &url]);
    assert_eq!(status, 413);
    assert_eq!(logged(&s.grpc_log).len(), 1);
    assert_eq!(
        s.mg.metric(
            "meshgate_ext_authz_error_total",
            &[("reason", "request_body_too_large")]
        ),
        1.0
    );

    // Partial: the first bytes, as bytes; the upstream gets it all.
    let (status, _, body) = curl(&[
        "--data-binary",
        "abcdefgh",
        &format!("http://127.0.0.1:{partial}/upload"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(echoed(&body)["body"], "abcdefgh");
    let seen = &logged(&s.grpc_log)[1];
    assert_eq!(seen["raw_body"], "abcd");
    assert_eq!(seen["body"], "");
    assert_eq!(seen["headers"]["x-envoy-auth-partial-body"], "true");

    // Buffering switched off per route: no body sent.
    let (status, _, body) = curl(&[
        "--data-binary",
        &big,
        &format!("http://127.0.0.1:{port}/tenant/x"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(echoed(&body)["body"], big);
    assert_eq!(logged(&s.grpc_log)[2]["body"], "");
}

fn cert(name: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_mtls_peer_identity_and_certificate_reach_the_server() {
    let port = free_port();
    let tls = format!(
        "      - tls:\n          certificates: [{{certificate_chain: \"{}\", private_key: \"{}\"}}]\n          client_validation: {{trusted_ca: \"{}\", required: true}}\n        filters:",
        cert("server.pem"),
        cert("server.key"),
        cert("client-ca.pem")
    );
    let filter = GRPC.replace("clear_route_cache: true", "include_peer_certificate: true");
    let l = listener("secure", port, &filter).replace("      - filters:", &tls);
    let s = setup_with(&[l]);
    let (status, _, body) = curl(&[
        "--cacert",
        &cert("ca.pem"),
        "--cert",
        &cert("client.pem"),
        "--key",
        &cert("client.key"),
        &format!("https://localhost:{port}/items"),
    ]);
    assert_eq!(status, 200, "{body}");
    let seen = &logged(&s.grpc_log)[0];
    assert_eq!(
        seen["principal"],
        "spiffe://meshgate.test/ns/default/sa/client"
    );
    assert_eq!(seen["scheme"], "https");
    // The client's certificate, as curl presented it (URL-decoded PEM).
    let pem = std::fs::read_to_string(cert("client.pem")).unwrap();
    assert_eq!(seen["certificate"], pem);
    assert_eq!(seen["sni"], "localhost");
}

const HTTP: &str = r#"{http_service: {server_uri: {uri: "http://authz.local", cluster: http-authz, timeout: 2s}, path_prefix: /authz, authorization_request: {allowed_headers: {patterns: [{exact: x-tenant}]}, headers_to_add: [{key: x-from, value: meshgate}]}, authorization_response: {allowed_upstream_headers: {patterns: [{exact: x-authz-user}]}, allowed_client_headers: {patterns: [{exact: x-reason}]}}}}"#;

#[test]
fn http_mode_sends_allowed_headers_and_passes_the_answer_on() {
    let port = free_port();
    let s = setup(&[("web", port, HTTP)]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "authorization: Bearer t",
        "-H",
        "x-tenant: t1",
        "-H",
        "cookie: secret",
        &url("/items/1"),
    ]);
    assert_eq!(status, 200, "{body}");
    let up = echoed(&body);
    assert_eq!(up["headers"]["x-authz-user"], "bob");
    assert!(up["headers"].get("x-other").is_none(), "{up}");
    let seen = &logged(&s.http_log)[0];
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/authz/items/1");
    assert_eq!(seen["headers"]["authorization"], "Bearer t");
    assert_eq!(seen["headers"]["x-tenant"], "t1");
    assert_eq!(seen["headers"]["x-from"], "meshgate");
    assert_eq!(seen["headers"]["host"], format!("127.0.0.1:{port}"));
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");

    let (status, h, body) = curl(&[&url("/deny/1")]);
    assert_eq!(status, 403);
    assert_eq!(body, "http authz says no\n");
    assert_eq!(h["x-reason"], "not allowed");
    assert!(!h.contains_key("x-secret"));

    let m = [("mode", "http")];
    assert_eq!(s.mg.metric("meshgate_ext_authz_ok_total", &m), 1.0);
    assert_eq!(s.mg.metric("meshgate_ext_authz_denied_total", &m), 1.0);
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.ext_authz` (gRPC, `envoy_grpc` to an HTTP/2 cluster)
/// before the router, and the `/direct` route switches it off with an
/// `ExtAuthzPerRoute` in `typed_per_filter_config`.
#[test]
fn ext_authz_from_xds_http_filters_and_typed_per_filter_config() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ea;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let grpc_log = dir.path().join("grpc.log");
    let authz = Peer::start("ext_authz_peer.py", &["grpc", grpc_log.to_str().unwrap()]);
    let echo = Peer::start("ext_authz_peer.py", &["echo"]);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // The deprecated field is the one meshgate translates to HTTP/2.
    #[allow(deprecated)]
    let authz_cluster = cds::Cluster {
        name: "grpc-authz".into(),
        load_assignment: Some(cla_msg(
            "grpc-authz",
            &[(([127, 0, 0, 1], authz.port).into(), 1, 0)],
        )),
        http2_protocol_options: Some(Default::default()),
        ..Default::default()
    };
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", ([127, 0, 0, 1], echo.port).into()),
            ("grpc-authz".into(), any(CLUSTER, &authz_cluster)),
        ],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let filter = ea::ExtAuthz {
        services: Some(ea::ext_authz::Services::GrpcService(core3::GrpcService {
            target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                core3::grpc_service::EnvoyGrpc {
                    cluster_name: "grpc-authz".into(),
                    ..Default::default()
                },
            )),
            timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        })),
        transport_api_version: 2,
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.ext_authz".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                &filter,
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    r.virtual_hosts[0].routes[0].typed_per_filter_config.insert(
        "envoy.filters.http.ext_authz".into(),
        any(
            "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            &ea::ExtAuthzPerRoute {
                r#override: Some(ea::ext_authz_per_route::Override::Disabled(true)),
            },
        ),
    );
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    assert!(logged(&grpc_log).is_empty(), "/direct is not checked");

    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/items")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["headers"]["x-authz-user"], "alice");
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{port}/deny/1")]);
    assert_eq!((status, body.as_str()), (401, "denied by policy\n"));
    let log = logged(&grpc_log);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["path"], "/items");
    assert_eq!(
        mg.metric("meshgate_ext_authz_ok_total", &[("mode", "grpc")]),
        1.0
    );
    assert_eq!(
        mg.metric("meshgate_ext_authz_denied_total", &[("mode", "grpc")]),
        1.0
    );
}
