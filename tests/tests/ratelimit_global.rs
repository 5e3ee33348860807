//! The global `ratelimit` stream filter against a real rate limit service
//! (tests/peers/ratelimit_peer.py: a Python grpcio
//! `envoy.service.ratelimit.v3.RateLimitService` on Envoy's generated
//! protos, counting per descriptor), reached as an HTTP/2 cluster. The
//! upstream is the echo peer of tests/peers/ext_authz_peer.py, which shows
//! exactly which headers reached it. N requests per descriptor pass, then
//! 429; each header value is its own descriptor; a service that is down
//! lets requests through (counted) or, with `failure_mode_deny`, answers
//! 500; a real Dubbo consumer is limited per method; the same filter
//! through a real xDS control plane.

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::{PyPeer as Peer, logged};
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The rate limit service allowing `limit` per descriptor, logging to
/// `log`.
fn rls(limit: u32, log: &Path) -> Peer {
    Peer::start(
        "ratelimit_peer.py",
        &[&limit.to_string(), log.to_str().unwrap()],
    )
}

fn echo() -> Peer {
    Peer::start("ext_authz_peer.py", &["echo"])
}

/// The echo upstream's view of a request.
fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not an echo: {body:?}"))
}

const OK: &str = "meshgate_ratelimit_ok_total";
const OVER: &str = "meshgate_ratelimit_over_limit_total";
const ERROR: &str = "meshgate_ratelimit_error_total";
const ALLOWED: &str = "meshgate_ratelimit_failure_mode_allowed_total";

/// A listener `name` whose proxy runs `ratelimit` with `filter` (YAML flow
/// text): `/limited/` carries per-user descriptors on the route, every
/// other path the virtual host's `generic_key`, `/free/` none at all.
fn listener(name: &str, filter: &str) -> String {
    format!(
        r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: ratelimit
                  config: {filter}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    rate_limits:
                      - actions: [{{generic_key: {{descriptor_value: vh}}}}]
                    routes:
                      - match: {{prefix: /limited/}}
                        route:
                          cluster: upstream
                          rate_limits:
                            - actions:
                                - {{generic_key: {{descriptor_value: api}}}}
                                - {{request_headers: {{header_name: x-user, descriptor_key: user}}}}
                      - match: {{prefix: /q/}}
                        route:
                          cluster: upstream
                          rate_limits:
                            - actions:
                                - {{query_parameters: {{query_parameter_name: tenant, descriptor_key: tenant}}}}
                      - match: {{prefix: /free/}}
                        route:
                          cluster: upstream
                          rate_limits:
                            - actions:
                                - {{request_headers: {{header_name: x-never-sent, descriptor_key: k}}}}
                      - match: {{prefix: /}}
                        route: {{cluster: upstream}}
"#
    )
}

fn config(listeners: &[String], rls: u16, upstream: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{}clusters:
  - name: rls
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{rls}"}}]
  - name: dead-rls
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{dead}"}}]
  - name: upstream
    endpoints: [{{address: "127.0.0.1:{upstream}"}}]
"#,
        listeners.concat(),
        dead = free_port(),
    )
}

struct Setup {
    mg: Meshgate,
    log: PathBuf,
    _peers: [Peer; 2],
    _dir: tempfile::TempDir,
}

fn setup(limit: u32, listeners: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rls.log");
    let rls = rls(limit, &log);
    let echo = echo();
    let ls: Vec<String> = listeners.iter().map(|(n, f)| listener(n, f)).collect();
    let mg = Meshgate::start(&config(&ls, rls.port, echo.port));
    Setup {
        mg,
        log,
        _peers: [rls, echo],
        _dir: dir,
    }
}

#[test]
fn n_requests_per_descriptor_pass_then_429_with_the_services_headers() {
    let s = setup(
        3,
        &[(
            "web",
            "{domain: edge, timeout: 2s, enable_x_ratelimit_headers: DRAFT_VERSION_03, \
             rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}}, transport_api_version: V3}}",
        )],
    );
    let port = s.mg.listener_port("web");
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for i in 1..=3 {
        let (status, h, body) = curl(&["-H", "x-user: alice", &url("/limited/a")]);
        assert_eq!(status, 200, "request {i}: {body}");
        // The service's request header reached the upstream, its response
        // header and the draft 03 headers the client.
        assert_eq!(echoed(&body)["headers"]["x-rls-seen"], i.to_string());
        assert_eq!(h["x-rls"], "ok");
        assert_eq!(h["x-ratelimit-limit"], "3, 3;w=60");
        assert_eq!(h["x-ratelimit-remaining"], (3 - i).to_string());
        assert_eq!(h["x-ratelimit-reset"], "30");
        assert!(!h.contains_key("x-envoy-ratelimited"));
    }
    let (status, h, _) = curl(&["-H", "x-user: alice", &url("/limited/a")]);
    assert_eq!(status, 429);
    assert_eq!(h["x-envoy-ratelimited"], "true");
    assert_eq!(h["x-rls"], "over");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    // Another header value is another descriptor with its own count.
    let (status, _, body) = curl(&["-H", "x-user: bob", &url("/limited/a")]);
    assert_eq!(status, 200, "{body}");
    // A request whose actions build no descriptor makes no call.
    let before = logged(&s.log).len();
    let (status, _, _) = curl(&[&url("/free/x")]);
    assert_eq!(status, 200);
    assert_eq!(logged(&s.log).len(), before, "no call without descriptors");
    // The virtual host's rate_limits apply to a route without its own.
    let (status, _, _) = curl(&[&url("/other")]);
    assert_eq!(status, 200);
    // A query parameter (percent-decoded) is a descriptor entry.
    let (status, _, _) = curl(&[&url("/q/x?a=1&tenant=acme%20corp")]);
    assert_eq!(status, 200);

    let log = logged(&s.log);
    assert_eq!(log.len(), 7);
    assert_eq!(log[0]["domain"], "edge");
    assert_eq!(
        log[0]["descriptors"],
        serde_json::json!([[["generic_key", "api"], ["user", "alice"]]])
    );
    assert_eq!(
        log[4]["descriptors"],
        serde_json::json!([[["generic_key", "api"], ["user", "bob"]]])
    );
    assert_eq!(
        log[5]["descriptors"],
        serde_json::json!([[["generic_key", "vh"]]])
    );
    assert_eq!(
        log[6]["descriptors"],
        serde_json::json!([[["tenant", "acme corp"]]])
    );
    assert_eq!(s.mg.metric(OK, &[("domain", "edge")]), 6.0);
    assert_eq!(s.mg.metric(OVER, &[("domain", "edge")]), 1.0);
}

#[test]
fn a_service_down_allows_and_counts_unless_failure_mode_deny() {
    let dead = "rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: dead-rls}}}";
    let s = setup(
        100,
        &[
            ("open", &format!("{{domain: open, timeout: 2s, {dead}}}")),
            (
                "closed",
                &format!("{{domain: closed, timeout: 2s, failure_mode_deny: true, {dead}}}"),
            ),
        ],
    );
    let open = s.mg.listener_port("open");
    let closed = s.mg.listener_port("closed");
    let (status, _, body) = curl(&[
        &format!("http://127.0.0.1:{open}/limited/a"),
        "-H",
        "x-user: a",
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["path"], "/limited/a");
    assert_eq!(s.mg.metric(ALLOWED, &[("domain", "open")]), 1.0);
    let (status, h, _) = curl(&[
        &format!("http://127.0.0.1:{closed}/limited/a"),
        "-H",
        "x-user: a",
    ]);
    assert_eq!(status, 500);
    assert!(!h.contains_key("x-envoy-ratelimited"));
    assert_eq!(s.mg.metric(ALLOWED, &[("domain", "closed")]), 0.0);
    let errors = |d: &str| s.mg.metric(ERROR, &[("domain", d)]);
    assert_eq!(errors("open"), 1.0);
    assert_eq!(errors("closed"), 1.0);
    assert!(logged(&s.log).is_empty());
}

#[test]
fn a_dubbo_consumer_is_limited_per_method() {
    const ECHO: &str = "com.meshgate.Echo";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rls.log");
    let rls = rls(2, &log);
    let provider = Provider::start("dubbo", "A");
    // A Dubbo stream carries its service and method as the `service` and
    // `method` headers (and `:path` /service/method).
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: rpc
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              stream_filters:
                - name: ratelimit
                  config:
                    domain: rpc
                    timeout: 2s
                    rate_limit_service: {{grpc_service: {{envoy_grpc: {{cluster_name: rls}}}}}}
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    rate_limits:
                      - actions:
                          - {{request_headers: {{header_name: service, descriptor_key: service}}}}
                          - {{request_headers: {{header_name: method, descriptor_key: method}}}}
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: a}}
clusters:
  - name: rls
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{rp}"}}]
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        rp = rls.port,
        pa = provider.port,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("rpc");
    // Two calls of `echo` pass, the third gets the "server busy" status.
    let r = node_call("dubbo", port, ECHO, "echo", "[1]", 3, 1, 3000, "1.0", "");
    assert_eq!(r.ok, 2, "{:?}", r.errors);
    assert!(
        r.errors[0].contains("meshgate: rate limited"),
        "{:?}",
        r.errors
    );
    // `plus` is another descriptor: still allowed.
    let r = node_call("dubbo", port, ECHO, "plus", "[1, 2]", 1, 1, 3000, "1.0", "");
    assert_eq!(r.ok, 1, "{:?}", r.errors);
    let mut c = send_raw(port, &dubbo_request(1, ECHO, "plus", &[]));
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 1));
    use std::io::Write;
    c.write_all(&dubbo_request(2, ECHO, "plus", &[])).unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (100, 2), "SERVER_THREADPOOL_EXHAUSTED");
    assert_eq!(dubbo_error_message(&body), "meshgate: rate limited");
    let log = logged(&log);
    assert_eq!(
        log[0]["descriptors"],
        serde_json::json!([[["service", ECHO], ["method", "echo"]]])
    );
    assert_eq!(
        log[3]["descriptors"],
        serde_json::json!([[["service", ECHO], ["method", "plus"]]])
    );
    assert_eq!(mg.metric(OK, &[("domain", "rpc")]), 4.0);
    assert_eq!(mg.metric(OVER, &[("domain", "rpc")]), 2.0);
}

#[test]
fn ratelimit_from_xds_http_filters_and_route_rate_limits() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::ratelimit::v3 as rlc;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3 as rl;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rls.log");
    let rls = rls(1, &log);
    let echo = echo();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // The deprecated field is the one meshgate translates to HTTP/2.
    #[allow(deprecated)]
    let rls_cluster = cds::Cluster {
        name: "rls".into(),
        load_assignment: Some(cla_msg("rls", &[(([127, 0, 0, 1], rls.port).into(), 1, 0)])),
        http2_protocol_options: Some(Default::default()),
        ..Default::default()
    };
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", ([127, 0, 0, 1], echo.port).into()),
            ("rls".into(), any(CLUSTER, &rls_cluster)),
        ],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let filter = rl::RateLimit {
        domain: "xds".into(),
        timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 2,
            nanos: 0,
        }),
        rate_limit_service: Some(rlc::RateLimitServiceConfig {
            grpc_service: Some(core3::GrpcService {
                target_specifier: Some(core3::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core3::grpc_service::EnvoyGrpc {
                        cluster_name: "rls".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: 2,
        }),
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.ratelimit".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                &filter,
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // Route 0 is /direct (no rate_limits: never checked), route 1 is `/`.
    let Some(rds::route::Action::Route(action)) = r.virtual_hosts[0].routes[1].action.as_mut()
    else {
        panic!("a route action")
    };
    action.rate_limits.push(rds::RateLimit {
        actions: vec![rds::rate_limit::Action {
            action_specifier: Some(rds::rate_limit::action::ActionSpecifier::RequestHeaders(
                rds::rate_limit::action::RequestHeaders {
                    header_name: "x-user".into(),
                    descriptor_key: "user".into(),
                    ..Default::default()
                },
            )),
        }],
        ..Default::default()
    });
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    assert!(logged(&log).is_empty(), "/direct is not checked");

    let url = format!("http://127.0.0.1:{port}/items");
    let (status, _, body) = curl(&["-H", "x-user: alice", &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["headers"]["x-rls-seen"], "1");
    let (status, h, _) = curl(&["-H", "x-user: alice", &url]);
    assert_eq!(status, 429);
    assert_eq!(h["x-envoy-ratelimited"], "true");
    let (status, _, _) = curl(&["-H", "x-user: bob", &url]);
    assert_eq!(status, 200);
    let log = logged(&log);
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["domain"], "xds");
    assert_eq!(
        log[1]["descriptors"],
        serde_json::json!([[["user", "alice"]]])
    );
    assert_eq!(mg.metric(OK, &[("domain", "xds")]), 2.0);
    assert_eq!(mg.metric(OVER, &[("domain", "xds")]), 1.0);
}

/// The grpcio server of tests/peers/grpc_e2e_peer.py, killed on drop.
struct GrpcServer(Child, u16);

impl GrpcServer {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/peers/grpc_e2e_peer.py"))
            .args(["server", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("grpc server did not start: {line:?}"));
        GrpcServer(child, port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One unary call with grpcio: `OK` or the status name and details.
fn grpc_call(port: u16) -> String {
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
m = ch.unary_unary("/echo.Echo/Unary")
try:
    m(b"hi", timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("127.0.0.1:{port}")])
        .output()
        .expect("python3 with grpcio");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_grpc_client_gets_resource_exhausted_or_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rls.log");
    let rls = rls(1, &log);
    let server = GrpcServer::start();
    let listener = |name: &str, exhausted: bool| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: ratelimit
                  config:
                    domain: {name}
                    timeout: 2s
                    rate_limited_as_resource_exhausted: {exhausted}
                    rate_limit_service: {{grpc_service: {{envoy_grpc: {{cluster_name: rls}}}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    rate_limits: [{{actions: [{{generic_key: {{descriptor_value: grpc}}}}]}}]
                    routes:
                      - match: {{prefix: /, grpc: true}}
                        route: {{cluster: upstream}}
"#
        )
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{a}{b}clusters:
  - name: rls
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{rp}"}}]
  - name: upstream
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
"#,
        a = listener("exhausted", true),
        b = listener("unavailable", false),
        rp = rls.port,
        up = server.1,
    );
    let mg = Meshgate::start(&yaml);
    let exhausted = mg.listener_port("exhausted");
    let unavailable = mg.listener_port("unavailable");
    assert_eq!(grpc_call(exhausted), "OK");
    let r = grpc_call(exhausted);
    assert!(
        r.starts_with("RESOURCE_EXHAUSTED") && r.contains("rate limited"),
        "{r}"
    );
    assert_eq!(grpc_call(unavailable), "OK");
    let r = grpc_call(unavailable);
    assert!(
        r.starts_with("UNAVAILABLE") && r.contains("rate limited"),
        "{r}"
    );
    assert_eq!(mg.metric(OVER, &[("domain", "exhausted")]), 1.0);
    assert_eq!(mg.metric(OVER, &[("domain", "unavailable")]), 1.0);
}
