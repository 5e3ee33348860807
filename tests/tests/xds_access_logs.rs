//! Access logs pushed over xDS (issue 22), end to end: Envoy resources
//! written in Envoy's YAML form (parsed by Envoy's Python protos,
//! `tests/peers/envoy_any.py`) and served by the ADS test server; each
//! push is ACKed and the logs it configures are written: the router's
//! `upstream_log` (one entry per try), `Listener.access_log` (connections
//! no filter chain takes), and the HCM's OpenTelemetry access log
//! (`OpenTelemetryAccessLogConfig`) exported to a grpcio receiver.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_for_within(10, &format!("{n} lines in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        (l.len() >= n).then_some(l)
    })
}

fn clusters(backend: SocketAddr, otel_port: u16) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: svc
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: svc
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {bp}}}}}}}
- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: otel
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: {{http2_protocol_options: {{}}}}
  load_assignment:
    cluster_name: otel
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {otel_port}}}}}}}
"#,
        bp = backend.port(),
    )
}

fn listeners(web: u16, guarded: u16, up: &Path, closed: &Path) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: web
  address: {{socket_address: {{address: 127.0.0.1, port_value: {web}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: web
        access_log:
        - name: envoy.access_loggers.open_telemetry
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig
            common_config:
              log_name: xds-web
              transport_api_version: V3
              grpc_service: {{envoy_grpc: {{cluster_name: otel}}}}
            body: {{string_value: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%"}}
            attributes:
              values:
              - key: cluster
                value: {{string_value: "%UPSTREAM_CLUSTER%"}}
              - key: attempts
                value: {{string_value: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}}
            resource_attributes:
              values:
              - key: deployment
                value: {{string_value: xds}}
        route_config:
          name: local
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route:
                cluster: svc
                retry_policy:
                  retry_on: 5xx
                  num_retries: 1
                  retry_back_off: {{base_interval: 0.005s}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
            upstream_log:
            - name: envoy.access_loggers.file
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: {up}
                log_format:
                  text_format_source:
                    inline_string: "%REQ(:PATH)%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_HOST%\n"
- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: guarded
  address: {{socket_address: {{address: 127.0.0.1, port_value: {guarded}}}}}
  access_log:
  - name: envoy.access_loggers.file
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
      path: {closed}
      log_format:
        text_format_source:
          inline_string: "%DOWNSTREAM_REMOTE_ADDRESS%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%\n"
  filter_chains:
  - filter_chain_match:
      source_prefix_ranges: [{{address_prefix: 10.0.0.0, prefix_len: 8}}]
    filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: guarded
        cluster: svc
"#,
        up = up.display(),
        closed = closed.display(),
    )
}

/// The router's `upstream_log`, `Listener.access_log` and the HCM's
/// OpenTelemetry access log, as a control plane sends them: the CDS and
/// LDS pushes are ACKed, a request retried once writes one upstream log
/// entry per try, a connection no filter chain takes is logged by its
/// listener (NR), and each stream reaches the OTLP receiver with its
/// formatted body and attributes.
#[test]
fn upstream_log_listener_access_log_and_otel_log_from_xds() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let (up, closed, records) = (
        dir.path().join("up.log"),
        dir.path().join("closed.log"),
        dir.path().join("records"),
    );
    let collector =
        meshgate_tests::pypeer::PyPeer::start("otlp_logs_peer.py", &[records.to_str().unwrap()]);
    let (web, guarded) = (free_port(), free_port());
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&clusters(backend.addr, collector.port)),
    );
    mgmt.set(
        LISTENER,
        "1",
        envoy_yaml(&listeners(web, guarded, &up, &closed)),
    );
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
        assert_eq!(r.version_info, "1", "{t}: {r:?}");
    }
    wait_listening(([127, 0, 0, 1], web).into());
    wait_listening(([127, 0, 0, 1], guarded).into());

    // The router's upstream log: the 503 try, then the 200 retry.
    let (s, _, _) = curl(&[&format!("http://127.0.0.1:{web}/fail-once")]);
    assert_eq!(s, 200);
    let b = backend.addr.to_string();
    let got = lines(&up, 2);
    assert_eq!(
        got,
        [
            format!("/fail-once|1|503|-|{b}"),
            format!("/fail-once|2|200|-|{b}")
        ]
    );

    // The listener's own log: a loopback client matches no chain.
    let mut c = TcpStream::connect(("127.0.0.1", guarded)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let from = c.local_addr().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap_or(0), 0);
    let key = format!("{from}|");
    let line = wait_for_within(10, "the listener's line for the connection", || {
        std::fs::read_to_string(&closed)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(&key))
            .map(str::to_string)
    });
    assert_eq!(line, format!("{from}|NR|filter_chain_not_found"));

    // The OpenTelemetry access log.
    let r = wait_for_within(15, "the OTLP record of /fail-once", || {
        meshgate_tests::pypeer::logged(&records)
            .into_iter()
            .find(|r| r["body"] == "GET /fail-once 200")
    });
    assert_eq!(r["resource"]["log_name"], "xds-web", "{r}");
    assert_eq!(r["resource"]["deployment"], "xds", "{r}");
    assert_eq!(r["attributes"]["cluster"], "svc", "{r}");
    assert_eq!(r["attributes"]["attempts"], "2", "{r}");
}

/// An OpenTelemetry access log with a field meshgate does not implement
/// (`stat_prefix`) is NACKed naming it, and the listener is not served.
#[test]
fn an_otel_access_log_field_meshgate_lacks_is_nacked_by_name() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let (up, closed) = (dir.path().join("up.log"), dir.path().join("closed.log"));
    let (web, guarded) = (free_port(), free_port());
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "1",
        envoy_yaml(&clusters(backend.addr, free_port())),
    );
    let yaml = listeners(web, guarded, &up, &closed).replace(
        "            common_config:\n",
        "            stat_prefix: otel\n            common_config:\n",
    );
    mgmt.set(LISTENER, "1", envoy_yaml(&yaml));
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let nonce = mgmt.wait_sent(LISTENER, "1");
    let r = mgmt.wait_reply(LISTENER, &nonce);
    let msg = r.error_detail.map(|e| e.message).unwrap_or_default();
    assert!(msg.contains("stat_prefix"), "{msg}");
}
