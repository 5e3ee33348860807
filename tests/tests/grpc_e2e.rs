//! End-to-end gRPC through the real meshgate binary, Python grpcio on both
//! sides (tests/peers/grpc_e2e_peer.py): the four call kinds with trailers
//! intact, an error status with details and trailing metadata, a deadline,
//! large and concurrent calls, meshgate's own gRPC statuses (UNAVAILABLE,
//! UNIMPLEMENTED), and gRPC over TLS (ALPN h2).

use meshgate_tests::*;
use std::process::Command;

fn peer() -> String {
    workspace()
        .join("tests/peers/grpc_e2e_peer.py")
        .to_string_lossy()
        .into_owned()
}

/// One meshgate for the whole file: `grpc` routes to the server, `dead` to
/// a closed port, `noroute` has no route for gRPC paths, `tls` terminates
/// TLS (ALPN h2) in front of the server.
struct Setup {
    _server: GrpcServer,
    mg: Meshgate,
    grpc: u16,
    dead: u16,
    noroute: u16,
    tls: u16,
}

fn setup() -> Setup {
    {
        let server = GrpcServer::start();
        let (grpc, dead, noroute, tls) = (free_port(), free_port(), free_port(), free_port());
        let closed = free_port();
        let certs = workspace().join("examples/certs");
        let routes = |cluster: &str| {
            format!(
                r#"          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /, grpc: true}}
                        route: {{cluster: {cluster}, timeout: 0s}}
"#
            )
        };
        let yaml = format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: grpc
    address: 127.0.0.1:{grpc}
    filter_chains:
      - filters:
{r_up}  - name: dead
    address: 127.0.0.1:{dead}
    filter_chains:
      - filters:
{r_dead}  - name: noroute
    address: 127.0.0.1:{noroute}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /other/}}
                        route: {{cluster: upstream}}
  - name: tls
    address: 127.0.0.1:{tls}
    filter_chains:
      - tls:
          certificates:
            - {{certificate_chain: "{crt}", private_key: "{key}"}}
        filters:
{r_up}clusters:
  - name: upstream
    protocol: http2
    endpoints: [{{address: "127.0.0.1:{up}"}}]
  - name: down
    protocol: http2
    connect_timeout: 500ms
    endpoints: [{{address: "127.0.0.1:{closed}"}}]
"#,
            r_up = routes("upstream"),
            r_dead = routes("down"),
            up = server.1,
            crt = certs.join("server.pem").display(),
            key = certs.join("server.key").display(),
        );
        Setup {
            _server: server,
            mg: Meshgate::start(&yaml),
            grpc,
            dead,
            noroute,
            tls,
        }
    }
}

fn client(port: u16, case: &str, tls: bool) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "python3"])
        .arg(peer())
        .args(["client", &format!("127.0.0.1:{port}"), case]);
    if tls {
        let ca = workspace().join("examples/certs/ca.pem");
        cmd.args(["tls", &ca.to_string_lossy(), "localhost"]);
    }
    let out = cmd.output().expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "case {case}: {text}");
    text
}

#[test]
fn unary() {
    let s = setup();
    assert!(client(s.grpc, "unary", false).contains("OK unary"));
}

#[test]
fn server_streaming_keeps_order_and_trailers() {
    let s = setup();
    assert!(client(s.grpc, "server_stream", false).contains("OK server_stream 50"));
}

#[test]
fn client_streaming() {
    let s = setup();
    assert!(client(s.grpc, "client_stream", false).contains("OK client_stream"));
}

#[test]
fn bidi_ping_pong() {
    let s = setup();
    assert!(client(s.grpc, "bidi", false).contains("OK bidi 20"));
}

#[test]
fn error_status_details_and_trailing_metadata_pass_through() {
    let s = setup();
    assert!(client(s.grpc, "error", false).contains("OK error INVALID_ARGUMENT"));
}

#[test]
fn deadline_is_honoured() {
    let s = setup();
    assert!(client(s.grpc, "deadline", false).contains("OK deadline"));
}

#[test]
fn four_mebibyte_messages_both_ways() {
    let s = setup();
    assert!(client(s.grpc, "large", false).contains("OK large 4194304"));
}

#[test]
fn two_hundred_concurrent_calls_on_one_channel() {
    let s = setup();
    assert!(client(s.grpc, "concurrent", false).contains("OK concurrent 200"));
}

#[test]
fn upstream_down_is_unavailable() {
    let s = setup();
    assert!(client(s.dead, "unavailable", false).contains("OK unavailable UNAVAILABLE"));
    let connect_failures = s.mg.metric(
        "meshgate_downstream_rq_local_reply_total",
        &[("reason", "upstream_connect_failure")],
    ) + s.mg.metric(
        "meshgate_downstream_rq_local_reply_total",
        &[("reason", "no_healthy_upstream")],
    );
    assert!(connect_failures >= 1.0, "{connect_failures}");
}

#[test]
fn no_route_is_unimplemented() {
    let s = setup();
    assert!(client(s.noroute, "unimplemented", false).contains("OK unimplemented UNIMPLEMENTED"));
    assert!(
        s.mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "no_route")]
        ) >= 1.0
    );
}

#[test]
fn grpc_over_tls_with_alpn_h2() {
    let s = setup();
    assert!(client(s.tls, "unary", true).contains("OK unary"));
    assert!(client(s.tls, "bidi", true).contains("OK bidi 20"));
}
