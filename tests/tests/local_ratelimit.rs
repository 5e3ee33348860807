//! `local_ratelimit`, HTTP and network, against real peers: an h2load
//! burst admits exactly `max_tokens` (counted with the metrics, not timed)
//! then 429 with `x-local-rate-limit`; a bucket refills; descriptors built
//! from a request header have a bucket per value, bounded and counted;
//! the draft `x-ratelimit-*` headers; a grpcio client gets
//! RESOURCE_EXHAUSTED or UNAVAILABLE; a Dubbo consumer the "server busy"
//! status with a readable message; the network filter closes connections
//! past its bucket before tcp_proxy dials (a raw upstream counts what
//! reached it); the same filter from a real xDS control plane.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const OK: &str = "meshgate_local_ratelimit_ok_total";
const LIMITED: &str = "meshgate_local_ratelimit_rate_limited_total";
const ENFORCED: &str = "meshgate_local_ratelimit_enforced_total";

/// Status and response headers (lowercase names) of one curl request.
fn curl(args: &[&str]) -> (u16, BTreeMap<String, String>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

const ALL: &str = "{default_value: {numerator: 100}}";

fn http_config(backend: std::net::SocketAddr) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: local_ratelimit
                  config: {{stat_prefix: web}}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    rate_limits:
                      - actions: [{{remote_address: {{}}}}]
                    routes:
                      - match: {{prefix: /burst}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: burst
                            token_bucket: {{max_tokens: 5, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                            response_headers_to_add: [{{name: x-limited-by, value: meshgate}}]
                            enable_x_ratelimit_headers: DRAFT_VERSION_03
                      - match: {{prefix: /refill}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: refill
                            token_bucket: {{max_tokens: 1, fill_interval: 1s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                      - match: {{prefix: /users}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: users
                            token_bucket: {{max_tokens: 1000, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                            rate_limits:
                              - actions:
                                  - request_headers: {{header_name: x-user, descriptor_key: user}}
                            descriptors:
                              - entries: [{{key: user}}]
                                token_bucket: {{max_tokens: 2, fill_interval: 60s}}
                            max_dynamic_descriptors: 2
                      - match: {{prefix: /tenants}}
                        route:
                          cluster: backend
                          rate_limits:
                            - actions:
                                - generic_key: {{descriptor_value: tenants}}
                                - request_headers: {{header_name: x-tenant, descriptor_key: tenant}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: tenants
                            token_bucket: {{max_tokens: 1000, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                            descriptors:
                              - entries: [{{key: generic_key, value: tenants}}, {{key: tenant, value: acme}}]
                                token_bucket: {{max_tokens: 1, fill_interval: 60s}}
                      - match: {{prefix: /per-client}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: per_client
                            token_bucket: {{max_tokens: 1000, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                            descriptors:
                              - entries: [{{key: remote_address, value: 127.0.0.1}}]
                                token_bucket: {{max_tokens: 2, fill_interval: 60s}}
                      - match: {{prefix: /shadow}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: shadow
                            token_bucket: {{max_tokens: 1, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            request_headers_to_add_when_not_enforced:
                              - {{name: x-echo-over-limit, value: "true"}}
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#
    )
}

#[test]
fn h2load_burst_admits_exactly_max_tokens_then_429_with_headers() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&http_config(backend.addr));
    let port = mg.listener_port("web");
    let out = Command::new("h2load")
        .args(["-n", "20", "-c", "2", "-m", "4", "-t", "1"])
        .arg(format!("http://127.0.0.1:{port}/burst"))
        .output()
        .expect("h2load (Debian nghttp2-client; tests/run.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status codes: 5 2xx, 0 3xx, 15 4xx"),
        "{text}"
    );
    let p = [("stat_prefix", "burst")];
    assert_eq!(mg.metric(OK, &p), 5.0);
    assert_eq!(mg.metric(LIMITED, &p), 15.0);
    assert_eq!(mg.metric(ENFORCED, &p), 15.0);
    assert_eq!(
        backend.hits(),
        5,
        "refused requests never reach the upstream"
    );
    // The refusal's headers, with curl over HTTP/1.1.
    let (status, h) = curl(&[&format!("http://127.0.0.1:{port}/burst")]);
    assert_eq!(status, 429);
    assert_eq!(h["x-local-rate-limit"], "1");
    assert_eq!(h["x-limited-by"], "meshgate");
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let reset: u64 = h["x-ratelimit-reset"].parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(
        mg.metric(
            "meshgate_http_filter_denied_total",
            &[("filter", "local_ratelimit"), ("reason", "rate_limited")]
        ),
        16.0
    );
    // Another route has no bucket: the filter's own config sets none.
    for _ in 0..10 {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/free")]).0, 200);
    }
}

#[test]
fn a_bucket_refills_after_its_interval() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&http_config(backend.addr));
    let url = format!("http://127.0.0.1:{}/refill", mg.listener_port("web"));
    assert_eq!(curl(&[&url]).0, 200);
    assert_eq!(curl(&[&url]).0, 429);
    // The state: a 200 again once the 1 s fill came (bounded poll).
    wait_until_within(5, "a refilled token", || curl(&[&url]).0 == 200);
    assert!(mg.metric(ENFORCED, &[("stat_prefix", "refill")]) >= 1.0);
}

#[test]
fn descriptors_give_each_header_value_its_own_bounded_bucket() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&http_config(backend.addr));
    let url = format!("http://127.0.0.1:{}/users", mg.listener_port("web"));
    let as_user = |u: &str| curl(&["-H", &format!("x-user: {u}"), &url]).0;
    assert_eq!(as_user("alice"), 200);
    assert_eq!(as_user("alice"), 200);
    assert_eq!(as_user("alice"), 429);
    assert_eq!(as_user("bob"), 200);
    // No x-user: no descriptor, only the route's default bucket.
    for _ in 0..4 {
        assert_eq!(curl(&[&url]).0, 200);
    }
    // A third user evicts the least recently used bucket (the LRU holds
    // two): counted, and memory stays bounded.
    assert_eq!(as_user("carol"), 200);
    assert_eq!(
        mg.metric(
            "meshgate_local_ratelimit_descriptor_evicted_total",
            &[("stat_prefix", "users")]
        ),
        1.0
    );
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "users")]), 1.0);
}

#[test]
fn route_and_virtual_host_rate_limits_build_the_descriptors() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&http_config(backend.addr));
    let port = mg.listener_port("web");
    // The route's `rate_limits`: generic_key + x-tenant.
    let url = format!("http://127.0.0.1:{port}/tenants");
    let tenant = |t: &str| curl(&["-H", &format!("x-tenant: {t}"), &url]).0;
    assert_eq!(tenant("acme"), 200);
    assert_eq!(tenant("acme"), 429);
    assert_eq!(tenant("globex"), 200);
    assert_eq!(tenant("globex"), 200);
    // A route without its own: the virtual host's (remote_address, the
    // trusted client address 127.0.0.1).
    let url = format!("http://127.0.0.1:{port}/per-client");
    assert_eq!(curl(&[&url]).0, 200);
    assert_eq!(curl(&[&url]).0, 200);
    assert_eq!(curl(&[&url]).0, 429);
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "tenants")]), 1.0);
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "per_client")]), 1.0);
}

#[test]
fn enabled_but_not_enforced_forwards_with_the_marker_header() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mg = Meshgate::start(&http_config(backend.addr));
    let url = format!("http://127.0.0.1:{}/shadow", mg.listener_port("web"));
    let (s, h) = curl(&[&url]);
    assert_eq!(s, 200);
    assert!(!h.contains_key("x-echo-over-limit"));
    // Over the limit: still forwarded (0 % enforced); the backend echoes
    // the header the filter added.
    let (s, h) = curl(&[&url]);
    assert_eq!(s, 200);
    assert_eq!(h["x-echo-over-limit"], "true");
    assert_eq!(backend.hits(), 2);
    let p = [("stat_prefix", "shadow")];
    assert_eq!(mg.metric(LIMITED, &p), 1.0);
    assert_eq!(mg.metric(ENFORCED, &p), 0.0);
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
        BufReader::new(child.stdout.take().unwrap())
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
fn grpc_call(port: u16, case: &str) -> String {
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
m = ch.unary_unary("/echo.Echo/Unary")
try:
    m(b"hi", metadata=(("x-case", sys.argv[2]),), timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("127.0.0.1:{port}"), case])
        .output()
        .expect("python3 with grpcio");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn grpc_client_gets_resource_exhausted_or_unavailable() {
    let server = GrpcServer::start();
    let per_route = |prefix: &str, exhausted: bool| {
        format!(
            r#"                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: {prefix}
                            token_bucket: {{max_tokens: 1, fill_interval: 60s}}
                            filter_enabled: {ALL}
                            filter_enforced: {ALL}
                            rate_limited_as_resource_exhausted: {exhausted}
"#
        )
    };
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: grpc
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: local_ratelimit
                  config: {{stat_prefix: grpc}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match:
                          prefix: /
                          grpc: true
                          headers: [{{name: x-case, exact_match: exhausted}}]
                        route: {{cluster: upstream}}
{a}                      - match: {{prefix: /, grpc: true}}
                        route: {{cluster: upstream}}
{b}clusters:
  - name: upstream
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
"#,
        a = per_route("exhausted", true),
        b = per_route("unavailable", false),
        up = server.1,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("grpc");
    assert_eq!(grpc_call(port, "exhausted"), "OK");
    let r = grpc_call(port, "exhausted");
    assert!(
        r.starts_with("RESOURCE_EXHAUSTED") && r.contains("rate limited"),
        "{r}"
    );
    assert_eq!(grpc_call(port, "plain"), "OK");
    let r = grpc_call(port, "plain");
    assert!(
        r.starts_with("UNAVAILABLE") && r.contains("rate limited"),
        "{r}"
    );
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "exhausted")]), 1.0);
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "unavailable")]), 1.0);
}

#[test]
fn dubbo_consumer_gets_the_server_busy_status() {
    const ECHO: &str = "com.meshgate.Echo";
    let provider = Provider::start("dubbo", "A");
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
                - name: local_ratelimit
                  config:
                    stat_prefix: dubbo
                    token_bucket: {{max_tokens: 1, fill_interval: 60s}}
                    filter_enabled: {ALL}
                    filter_enforced: {ALL}
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: a}}
clusters:
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        pa = provider.port,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("rpc");
    let mut c = send_raw(port, &dubbo_request(1, ECHO, "echo", &[]));
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 1), "the first call is admitted");
    c.write_all(&dubbo_request(2, ECHO, "echo", &[])).unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (100, 2), "SERVER_THREADPOOL_EXHAUSTED");
    assert_eq!(dubbo_error_message(&body), "meshgate: rate limited");
    // A real consumer (sofa-rpc-node) shows the message.
    let r = node_call("dubbo", port, ECHO, "echo", "[1]", 1, 1, 3000, "1.0", "");
    assert_eq!(r.ok, 0);
    assert!(
        r.errors[0].contains("meshgate: rate limited"),
        "{:?}",
        r.errors
    );
    assert_eq!(mg.metric(ENFORCED, &[("stat_prefix", "dubbo")]), 2.0);
}

/// A raw upstream that counts the connections it accepted and echoes.
fn recording_upstream() -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU32::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut b = [0u8; 1024];
                while let Ok(k) = s.read(&mut b) {
                    if k == 0 || s.write_all(&b[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, n)
}

#[test]
fn network_filter_closes_connections_past_the_bucket_before_dialling() {
    let (up, accepted) = recording_upstream();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: tcp
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: local_ratelimit
            config:
              stat_prefix: tcp
              token_bucket: {{max_tokens: 2, fill_interval: 60s}}
          - name: tcp_proxy
            config: {{cluster: raw}}
clusters:
  - name: raw
    endpoints: [{{address: "{up}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("tcp");
    let echo = |s: &mut TcpStream| -> bool {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(b"ping").is_err() {
            return false;
        }
        let mut b = [0u8; 4];
        s.read_exact(&mut b).is_ok() && &b == b"ping"
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(echo(&mut s), "within the bucket: relayed");
        open.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(b"ping");
        assert!(closed(&mut s), "past the bucket: closed at once");
    }
    mg.wait_metric(
        "meshgate_network_local_ratelimit_rate_limited_total",
        &[("stat_prefix", "tcp")],
        |v| v == 3.0,
    );
    assert_eq!(
        mg.metric(
            "meshgate_network_local_ratelimit_ok_total",
            &[("stat_prefix", "tcp")]
        ),
        2.0
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the upstream never saw a refused connection"
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let good = http_config("127.0.0.1:1".parse().unwrap());
    for (bad, field) in [
        (
            good.replace("max_tokens: 5,", "max_tokens: 0,"),
            "token_bucket.max_tokens",
        ),
        (
            good.replace("fill_interval: 1s", "fill_interval: 10ms"),
            "token_bucket.fill_interval",
        ),
        (
            good.replace(
                "request_headers: {header_name",
                "destination_cluster: {header_name",
            ),
            "destination_cluster",
        ),
        (
            good.replace("max_dynamic_descriptors: 2", "max_dynamic_descriptors: 0"),
            "max_dynamic_descriptors",
        ),
        (
            good.replace("header_name: x-tenant", "header_name: \"bad name\""),
            "virtual_hosts[0].routes[3].route.rate_limits[0].actions[1].request_headers.header_name",
        ),
        (
            good.replace(
                "config: {stat_prefix: web}",
                "config: {stat_prefix: web, stage: 1}",
            ),
            "stage",
        ),
    ] {
        assert_ne!(bad, good, "{field}: the replacement matched");
        std::fs::write(&path, bad.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{bad}");
        let text = format!("{out}{err}");
        assert!(text.contains(field), "{field} not in: {text}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.local_ratelimit` before the router (no bucket of its
/// own), the route carries a `LocalRateLimit` in `typed_per_filter_config`.
#[test]
fn local_ratelimit_from_xds_http_filter_and_typed_per_filter_config() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::r#type::v3 as typev3;
    use meshgate_tests::xds::*;
    use prost::Message;

    const URL: &str =
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.local_ratelimit".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                URL,
                &lrl::LocalRateLimit {
                    stat_prefix: "xds_listener".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let all = Some(core3::RuntimeFractionalPercent {
        default_value: Some(typev3::FractionalPercent {
            numerator: 100,
            denominator: 0,
        }),
        runtime_key: String::new(),
    });
    let per_route = lrl::LocalRateLimit {
        stat_prefix: "xds_route".into(),
        token_bucket: Some(typev3::TokenBucket {
            max_tokens: 3,
            tokens_per_fill: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 60,
                nanos: 0,
            }),
        }),
        filter_enabled: all.clone(),
        filter_enforced: all,
        status: Some(typev3::HttpStatus { code: 503 }),
        ..Default::default()
    };
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // routes[0] is a direct response; routes[1] the `/` prefix.
    r.virtual_hosts[0].routes[1].typed_per_filter_config.insert(
        "envoy.filters.http.local_ratelimit".into(),
        any(URL, &per_route),
    );
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    // The route's bucket (3 tokens): wait_for's probe takes the first.
    wait_for(port, "/", "backend=b");
    let url = format!("http://127.0.0.1:{port}/x");
    let (s, h) = wait_for_within(10, "the route's bucket emptied", || {
        let (s, h) = curl(&[&url]);
        (s != 200).then_some((s, h))
    });
    assert_eq!(s, 503, "the configured status");
    assert_eq!(h["x-local-rate-limit"], "1");
    let p = [("stat_prefix", "xds_route")];
    assert_eq!(mg.metric(OK, &p), 3.0);
    assert_eq!(mg.metric(ENFORCED, &p), 1.0);
    assert_eq!(
        backend.hits(),
        3,
        "exactly the admitted requests reached it"
    );
}

/// The network filter from a real xDS control plane: a listener whose
/// chain is `envoy.filters.network.local_ratelimit` then `tcp_proxy`.
#[test]
fn network_local_ratelimit_from_xds() {
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3 as nrl;
    use envoy_types::pb::envoy::r#type::v3 as typev3;
    use meshgate_tests::xds::*;
    use prost::Message;

    let (up, accepted) = recording_upstream();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("raw", up)]);
    let (name, l) = tcp_listener("tcp", port, "raw");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let limit = nrl::LocalRateLimit {
        stat_prefix: "xds_tcp".into(),
        token_bucket: Some(typev3::TokenBucket {
            max_tokens: 1,
            tokens_per_fill: None,
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }),
        ..Default::default()
    };
    l.filter_chains[0].filters.insert(
        0,
        lds::Filter {
            name: "envoy.filters.network.local_ratelimit".into(),
            config_type: Some(lds::filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
                &limit,
            ))),
        },
    );
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    // The first connection that gets through takes the only token.
    let mut first = wait_for_within(10, "the xDS listener", || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).ok()?;
        (&b == b"ping").then_some(s)
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(b"ping");
    assert!(closed(&mut s), "past the bucket: closed");
    mg.wait_metric(
        "meshgate_network_local_ratelimit_rate_limited_total",
        &[("stat_prefix", "xds_tcp")],
        |v| v == 1.0,
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    first.write_all(b"more").unwrap();
}
