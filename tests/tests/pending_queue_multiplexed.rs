//! End-to-end tests of a cluster's pending-request queue (Envoy's
//! `circuit_breakers.thresholds[].max_pending_requests`) on multiplexed
//! upstreams: a request that finds every connection at its stream limit
//! and the cluster at `max_connections` waits, first come first served,
//! until a stream ends; past the bound it overflows at once. The real
//! meshgate binary; the real sofa-rpc-node Dubbo consumer and provider
//! (tests/peers/rpc_peer.js) with `max_concurrent_calls: 1`; for HTTP/2,
//! curl as the client and a hyper h2c server that holds every stream until
//! the test opens its gate, with the cluster's
//! `protocol_options.max_concurrent_streams` (Envoy's
//! `http2_protocol_options.max_concurrent_streams`) as the stream limit.

use meshgate_tests::curl::curl;
use meshgate_tests::rpc::{Provider, node_call};
use meshgate_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PENDING: &str = "meshgate_cluster_upstream_rq_pending_active";
const UP: &[(&str, &str)] = &[("cluster", "up")];

#[test]
fn dubbo_calls_wait_for_the_in_flight_bound_and_overflow_with_the_busy_status() {
    let provider = Provider::start("dubbo", "A");
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: dubbo
              route_config:
                virtual_hosts:
                  - name: rpc
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 8s}}
clusters:
  - name: up
    protocol: dubbo
    protocol_options: {{max_concurrent_calls: 1}}
    endpoints: [{{address: "127.0.0.1:{}"}}]
    circuit_breakers:
      thresholds:
        - {{max_connections: 1, max_pending_requests: 2}}
"#,
        provider.port
    );
    let mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    // Four concurrent calls of 400 ms on a cold cluster: one dials and is
    // in flight, two wait (also while the connection is being dialled), the
    // fourth overflows with Dubbo's SERVER_THREADPOOL_EXHAUSTED.
    let t = Instant::now();
    let r = node_call(
        "dubbo",
        port,
        "com.meshgate.Echo",
        "sleep",
        "[400]",
        4,
        4,
        6000,
        "1.0",
        "",
    );
    assert_eq!(r.ok, 3, "{r:?}");
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].contains("circuit breaker open"), "{r:?}");
    // Served one after the other on the one connection.
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        2.0
    );
    assert_eq!(mg.metric(PENDING, UP), 0.0);
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_total", UP), 1.0);
}

/// An h2c upstream (hyper's HTTP/2 server) that holds each stream until
/// its gate opens, then answers `200 ok`; it counts the streams and the
/// connections it saw.
struct GatedH2 {
    addr: std::net::SocketAddr,
    gate: tokio::sync::watch::Sender<bool>,
    streams: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
}

impl GatedH2 {
    fn start() -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let (gate, rx) = tokio::sync::watch::channel(false);
        let streams = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (s, c) = (streams.clone(), conns.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                while let Ok((io, _)) = l.accept().await {
                    c.fetch_add(1, Ordering::SeqCst);
                    let (s, rx) = (s.clone(), rx.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            s.fetch_add(1, Ordering::SeqCst);
                            let mut rx = rx.clone();
                            async move {
                                let _ = rx.wait_for(|open| *open).await;
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(io), svc)
                            .await;
                    });
                }
            });
        });
        Self {
            addr,
            gate,
            streams,
            conns,
        }
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

fn curl_background(port: u16, path: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    std::thread::spawn(move || {
        let (s, _, b) = curl(&["--max-time", "10", &url]);
        (s, b)
    })
}

#[test]
fn h2_requests_beyond_max_concurrent_streams_wait_and_overflow_with_503() {
    let up = GatedH2::start();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: http
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up, timeout: 8s}}
clusters:
  - name: up
    protocol: http2
    protocol_options: {{max_concurrent_streams: 2}}
    endpoints: [{{address: "{}"}}]
    circuit_breakers:
      thresholds:
        - {{max_connections: 1, max_pending_requests: 1}}
"#,
        up.addr
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("http");
    // Two streams fill the one connection (limit 2 x max_connections 1).
    // The second is sent once the first is at the upstream: while the
    // connection is still being made, a request waits in the queue too.
    let mut running = vec![curl_background(port, "/one")];
    wait_until("one stream at the upstream", || up.streams() == 1);
    running.push(curl_background(port, "/two"));
    wait_until("two streams at the upstream", || up.streams() == 2);
    // The third waits in the pending queue, not on the connection.
    running.push(curl_background(port, "/three"));
    mg.wait_metric(PENDING, UP, |v| v == 1.0);
    assert_eq!(up.streams(), 2);
    // The fourth finds the queue full: 503 with x-envoy-overloaded at once.
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/four")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "up"), ("priority", "default")]
        ),
        1.0
    );
    // Streams end: the waiting request is served on the same connection.
    up.gate.send_replace(true);
    for h in running {
        let (status, body) = h.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(up.streams(), 3);
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
    mg.wait_metric(PENDING, UP, |v| v == 0.0);
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_total", UP),
        1.0
    );
    assert_eq!(
        mg.metric("meshgate_cluster_upstream_rq_pending_cancelled_total", UP),
        0.0
    );
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_total", UP), 1.0);
}

#[test]
fn max_concurrent_streams_is_refused_on_http1_and_taken_by_http3_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "clusters:\n  - name: up\n    protocol_options: {max_concurrent_streams: 2}\n    endpoints: [{address: \"127.0.0.1:1\"}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_concurrent_streams"), "{err}");
    // An http3 cluster takes it; any other option is refused by name.
    for (opts, ok) in [
        ("{max_concurrent_streams: 2}", true),
        ("{max_concurrent_streams: 0}", false),
        ("{idle_timeout: 1s}", false),
    ] {
        std::fs::write(
            &path,
            format!(
                "clusters:\n  - name: up\n    protocol: http3\n    protocol_options: {opts}\n    tls: {{sni: localhost}}\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(bin())
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{opts}: {err}");
        if !ok {
            let field = opts.trim_matches(['{', '}']).split(':').next().unwrap();
            assert!(err.contains(field), "{opts}: {err}");
        }
    }
}

/// The same stream limit pushed over CDS as Envoy carries it: the
/// cluster's `typed_extension_protocol_options` `HttpProtocolOptions`,
/// `explicit_http_config.http2_protocol_options.max_concurrent_streams: 2`
/// (Envoy's YAML, parsed by Envoy's own protos), with `max_connections: 1`
/// and `max_pending_requests: 1`: two streams at the upstream, the third
/// waits, the fourth gets 503 at once; all three served on one connection.
#[test]
fn h2_max_concurrent_streams_from_xds() {
    use meshgate_tests::xds::{envoy_yaml, one_cluster_gateway};
    let up = GatedH2::start();
    let cluster = envoy_yaml(&format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: svc-a
  type: STATIC
  connect_timeout: 1s
  circuit_breakers:
    thresholds: [{{max_connections: 1, max_pending_requests: 1}}]
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: {{http2_protocol_options: {{max_concurrent_streams: 2}}}}
  load_assignment:
    cluster_name: svc-a
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
        up.addr.port()
    ))
    .remove(0);
    let (_mgmt, mg, port) = one_cluster_gateway(cluster);
    let svc = &[("cluster", "svc-a")];
    let mut running = vec![curl_background(port, "/one")];
    wait_until("one stream at the upstream", || up.streams() == 1);
    running.push(curl_background(port, "/two"));
    wait_until("two streams at the upstream", || up.streams() == 2);
    running.push(curl_background(port, "/three"));
    mg.wait_metric(PENDING, svc, |v| v == 1.0);
    assert_eq!(up.streams(), 2, "the third stream waits in meshgate");
    let t = Instant::now();
    let (status, headers, body) = curl(&[&format!("http://127.0.0.1:{port}/four")]);
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "answered at once");
    assert_eq!(
        headers.get("x-envoy-overloaded").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        mg.metric(
            "meshgate_cluster_upstream_rq_pending_overflow_total",
            &[("cluster", "svc-a"), ("priority", "default")]
        ),
        1.0
    );
    up.gate.send_replace(true);
    for h in running {
        let (status, body) = h.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(up.streams(), 3);
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
    assert_eq!(mg.metric("meshgate_cluster_upstream_cx_total", svc), 1.0);
}
