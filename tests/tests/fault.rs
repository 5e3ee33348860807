//! The `fault` stream filter with curl against a real backend: aborts at
//! 100 % never reach the upstream, delays hold the response at least the
//! delay (a lower bound only), header-controlled faults, header matchers
//! and `upstream_cluster`, `max_active_faults` whose slot a cancelled
//! stream gives back, and the filter from a real xDS control plane.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

const DELAYS: &str = "meshgate_fault_delays_injected_total";
const ABORTS: &str = "meshgate_fault_aborts_injected_total";
const OVERFLOW: &str = "meshgate_fault_active_faults_overflow_total";

/// Status and body of one curl request (status 0: curl gave up).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn config(backend: std::net::SocketAddr, other: std::net::SocketAddr) -> String {
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
                - name: fault
                  config:
                    delay: {{header_delay: {{}}, percentage: {{numerator: 100}}}}
                    abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - name: abort
                        match: {{prefix: /abort}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          fault:
                            abort: {{http_status: 503, percentage: {{numerator: 100}}}}
                      - name: delay
                        match: {{prefix: /delay}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          fault:
                            delay: {{fixed_delay: 700ms, percentage: {{numerator: 100}}}}
                      - name: chaos
                        match: {{prefix: /chaos}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          fault:
                            headers: [{{name: x-chaos, exact_match: "on"}}]
                            abort: {{http_status: 500, percentage: {{numerator: 100}}, response_body: chaos}}
                      - name: other
                        match: {{prefix: /other}}
                        route: {{cluster: other}}
                        per_filter_config:
                          fault:
                            upstream_cluster: backend
                            abort: {{http_status: 500, percentage: {{numerator: 100}}}}
                      - name: slow
                        match: {{prefix: /slow}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          fault:
                            max_active_faults: 1
                            delay: {{fixed_delay: 30s, percentage: {{numerator: 100}}}}
                      - name: rest
                        match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
  - name: other
    endpoints: [{{address: "{other}"}}]
"#
    )
}

struct Setup {
    backend: HttpBackend,
    other: HttpBackend,
    mg: Meshgate,
    port: u16,
}

fn setup() -> Setup {
    let backend = HttpBackend::start("b", Proto::Http1);
    let other = HttpBackend::start("o", Proto::Http1);
    let mg = Meshgate::start(&config(backend.addr, other.addr));
    let port = mg.listener_port("web");
    Setup {
        backend,
        other,
        mg,
        port,
    }
}

#[test]
fn abort_at_100_percent_never_reaches_the_upstream() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/abort", s.port);
    for _ in 0..3 {
        let (code, body) = curl(&[&url]);
        assert_eq!(code, 503);
        assert_eq!(body, "fault filter abort");
    }
    // Over HTTP/2 too.
    assert_eq!(curl(&["--http2-prior-knowledge", &url]).0, 503);
    assert_eq!(s.backend.hits(), 0);
    assert_eq!(s.mg.metric(ABORTS, &[("route", "abort")]), 4.0);
}

#[test]
fn a_fixed_delay_holds_the_response_at_least_the_delay() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/delay", s.port);
    let t = Instant::now();
    let (code, _) = curl(&[&url]);
    assert_eq!(code, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s.backend.hits(), 1, "delayed, then forwarded");
    assert_eq!(s.mg.metric(DELAYS, &[("route", "delay")]), 1.0);
}

#[test]
fn header_controlled_delay_and_abort() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/x", s.port);
    // No fault header: forwarded, nothing injected.
    assert_eq!(curl(&[&url]).0, 200);
    let (code, body) = curl(&["-H", "x-envoy-fault-abort-request: 418", &url]);
    assert_eq!((code, body.as_str()), (418, "fault filter abort"));
    let t = Instant::now();
    let (code, _) = curl(&["-H", "x-envoy-fault-delay-request: 400", &url]);
    assert_eq!(code, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // A percentage header of 0 switches the abort off for this request.
    let (code, _) = curl(&[
        "-H",
        "x-envoy-fault-abort-request: 418",
        "-H",
        "x-envoy-fault-abort-request-percentage: 0",
        &url,
    ]);
    assert_eq!(code, 200);
    assert_eq!(s.backend.hits(), 3);
    assert_eq!(s.mg.metric(ABORTS, &[("route", "rest")]), 1.0);
    assert_eq!(s.mg.metric(DELAYS, &[("route", "rest")]), 1.0);
}

#[test]
fn header_matchers_and_upstream_cluster_restrict_faults() {
    let s = setup();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", s.port);
    assert_eq!(curl(&[&url("/chaos")]).0, 200);
    let (code, body) = curl(&["-H", "x-chaos: on", &url("/chaos")]);
    assert_eq!((code, body.as_str()), (500, "chaos"));
    // The route goes to `other`, the fault is for `backend`: none.
    assert_eq!(curl(&[&url("/other")]).0, 200);
    assert_eq!(s.other.hits(), 1);
    assert_eq!(s.mg.metric(ABORTS, &[("route", "other")]), 0.0);
}

#[test]
fn max_active_faults_and_a_cancelled_delay_gives_its_slot_back() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/slow", s.port);
    // A delayed request (30 s) whose client gives up after 1 s, over
    // HTTP/2: the stream is cancelled, the sleep dropped. (The HTTP/1.1
    // codec does not watch the connection while a request is in the
    // filters: there the delay runs to its end.)
    let h2 = "--http2-prior-knowledge";
    assert_eq!(curl(&[h2, "-m", "1", &url]).0, 0, "curl gave up");
    assert_eq!(s.mg.metric(DELAYS, &[("route", "slow")]), 1.0);
    // The state: the slot is free again, so a new request is delayed (it
    // times out) rather than let through as an overflow (200).
    wait_until_within(10, "a second delay once the first was cancelled", || {
        curl(&[h2, "-m", "1", &url]).0 == 0
    });
    let delays = s.mg.metric(DELAYS, &[("route", "slow")]);
    assert!(delays >= 2.0, "{delays}");
    // While one delay is active, the next request is an overflow: no
    // fault, forwarded at once.
    let held = std::thread::spawn({
        let url = url.clone();
        move || curl(&[h2, "-m", "4", &url])
    });
    s.mg.wait_metric(DELAYS, &[("route", "slow")], |v| v >= delays + 1.0);
    let overflow_before = s.mg.metric(OVERFLOW, &[("route", "slow")]);
    let hits_before = s.backend.hits();
    assert_eq!(curl(&[&url]).0, 200);
    assert_eq!(
        s.mg.metric(OVERFLOW, &[("route", "slow")]),
        overflow_before + 1.0
    );
    assert_eq!(held.join().unwrap().0, 0);
    assert_eq!(
        s.backend.hits(),
        hits_before + 1,
        "the overflow was forwarded, the held request was not"
    );
}

/// Through a real xDS control plane: `envoy.filters.http.fault` in the HCM
/// (no fault of its own) and an `HTTPFault` abort on the route.
#[test]
fn fault_from_xds_http_filter_and_typed_per_filter_config() {
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as faultv3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::r#type::v3 as typev3;
    use meshgate_tests::xds::*;
    use prost::Message;

    const URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
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
            name: "envoy.filters.http.fault".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                URL,
                &faultv3::HttpFault::default(),
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let per_route = faultv3::HttpFault {
        abort: Some(faultv3::FaultAbort {
            percentage: Some(typev3::FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            error_type: Some(faultv3::fault_abort::ErrorType::HttpStatus(502)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // routes[0] is a direct response (no fault); routes[1] the `/` prefix.
    r.virtual_hosts[0].routes[1]
        .typed_per_filter_config
        .insert("envoy.filters.http.fault".into(), any(URL, &per_route));
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    // The direct response route has no fault: the config arrived.
    wait_for(port, "/direct", "direct from r1");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{port}/x")]);
    assert_eq!((code, body.as_str()), (502, "fault filter abort"));
    assert_eq!(backend.hits(), 0);
    assert!(mg.metric(ABORTS, &[]) >= 1.0);
}

/// RPC streams too: a Dubbo call aborted by the fault filter gets the
/// provider-error status (SERVICE_ERROR) with the abort's message, and a
/// delayed one still succeeds.
#[test]
fn dubbo_call_aborted_with_a_service_error_status() {
    use meshgate_tests::rpc::*;
    use std::io::Write;
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
                - name: fault
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - name: aborted
                        match: {{path: /{ECHO}/echo, headers: [{{name: x-chaos, exact_match: "on"}}]}}
                        route: {{cluster: a}}
                        per_filter_config:
                          fault:
                            abort: {{http_status: 503, percentage: {{numerator: 100}}}}
                      - name: delayed
                        match: {{prefix: /}}
                        route: {{cluster: a}}
                        per_filter_config:
                          fault:
                            delay: {{fixed_delay: 300ms, percentage: {{numerator: 100}}}}
clusters:
  - name: a
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
"#,
        pa = provider.port,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("rpc");
    let t = Instant::now();
    let mut c = send_raw(port, &dubbo_request(1, ECHO, "echo", &[]));
    let (_, status, id, _) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (20, 1), "delayed, then answered");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Dubbo attachments are the stream's headers.
    c.write_all(&dubbo_request(2, ECHO, "echo", &[("x-chaos", "on")]))
        .unwrap();
    let (_, status, id, body) = read_dubbo(&mut c).unwrap();
    assert_eq!((status, id), (70, 2), "SERVICE_ERROR");
    assert!(
        dubbo_error_message(&body).contains("fault filter abort"),
        "{}",
        dubbo_error_message(&body)
    );
    assert_eq!(mg.metric(ABORTS, &[("route", "aborted")]), 1.0);
    assert_eq!(mg.metric(DELAYS, &[("route", "delayed")]), 1.0);
}

/// A grpcio client: `abort.grpc_status` answers trailers-only with that
/// status; `x-envoy-fault-abort-grpc-request` does the same per request.
#[test]
fn grpc_client_gets_the_injected_grpc_status() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut server = Command::new("python3")
        .arg(workspace().join("tests/peers/grpc_e2e_peer.py"))
        .args(["server", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with grpcio");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let up: u16 = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
    // Killed on drop, even when an assertion fails.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);
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
                - name: fault
                  config:
                    abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - name: exhausted
                        match:
                          prefix: /
                          grpc: true
                          headers: [{{name: x-case, exact_match: fixed}}]
                        route: {{cluster: upstream}}
                        per_filter_config:
                          fault:
                            abort: {{grpc_status: 8, percentage: {{numerator: 100}}}}
                      - name: rest
                        match: {{prefix: /, grpc: true}}
                        route: {{cluster: upstream}}
clusters:
  - name: upstream
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
"#
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("grpc");
    let call = |metadata: &str| {
        let script = format!(
            r#"
import grpc
ch = grpc.insecure_channel("127.0.0.1:{port}")
m = ch.unary_unary("/echo.Echo/Unary")
try:
    m(b"hi", metadata={metadata}, timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(call("()"), "OK");
    let r = call(r#"(("x-case", "fixed"),)"#);
    assert_eq!(r, "RESOURCE_EXHAUSTED fault filter abort");
    let r = call(r#"(("x-envoy-fault-abort-grpc-request", "14"),)"#);
    assert_eq!(r, "UNAVAILABLE fault filter abort");
    assert_eq!(mg.metric(ABORTS, &[]), 2.0);
}
