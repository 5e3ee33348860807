//! Istio's own extensions end to end (issue 19): two meshgates driven by
//! a real ADS server with istiod-shaped resources (Istio's filter configs
//! built from istio/proxy's field names by tests/peers/istio_protos.py),
//! an "outbound sidecar" (productpage) and an "inbound sidecar"
//! (reviews), each with its own bootstrap node metadata as istio-agent
//! writes it. Traffic between them exchanges the metadata in the
//! `x-envoy-peer-metadata` headers, and each one's `istio_requests_total`
//! names the other's workload. A TCP variant runs the in-band exchange
//! under the `istio-peer-exchange` ALPN over mTLS with a Python peer
//! speaking Istio's wire format. And the same filters from YAML.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::SocketAddr;

fn cert(name: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A bootstrap whose node is the workload `workload` (istio-agent's node
/// metadata keys).
fn sidecar_bootstrap(xds_port: u16, workload: &str, app: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
node:
  id: "sidecar~127.0.0.1~{workload}-abc.default~default.svc.cluster.local"
  cluster: "{app}.default"
  metadata:
    NAME: "{workload}-abc"
    NAMESPACE: default
    WORKLOAD_NAME: "{workload}"
    CLUSTER_ID: Kubernetes
    MESH_ID: cluster.local
    LABELS: {{app: "{app}", version: v1, service.istio.io/canonical-name: "{app}", service.istio.io/canonical-revision: v1}}
    ISTIO_VERSION: "1.24.0"
    PROXY_CONFIG: {{concurrency: 2}}
dynamic_resources:
  ads:
    cluster: xds
    retry_base_interval: 100ms
    retry_max_interval: 500ms
clusters:
  - name: xds
    connect_timeout: 1s
    endpoints:
      - address: 127.0.0.1:{xds_port}
"#
    )
}

fn static_cluster_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: '{name}'
  type: STATIC
  connect_timeout: 1s
  lb_policy: ROUND_ROBIN
  load_assignment:
    cluster_name: '{name}'
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#,
        port = addr.port()
    )
}

/// An HCM listener on port 0 as istiod writes one: its direction (an
/// inbound one with `forward_client_cert_details: APPEND_FORWARD` and
/// subject, DNS and URI details), the exchange filter configured for it,
/// `istio.stats`, the router.
fn sidecar_listener(name: &str, direction: &str, exchange: &str, cluster: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  traffic_direction: {direction}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {name}
{xfcc}        route_config:
          name: {name}
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {{prefix: /}}
              route: {{cluster: '{cluster}'}}
        http_filters:
        - name: istio.metadata_exchange
          typed_config:
            '@type': type.googleapis.com/io.istio.http.peer_metadata.Config
{exchange}
        - name: istio.stats
          typed_config:
            '@type': type.googleapis.com/stats.PluginConfig
            disable_host_header_fallback: {no_host}
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        no_host = direction == "OUTBOUND",
        // An inbound sidecar's, as istiod writes it.
        xfcc = if direction == "INBOUND" {
            "        forward_client_cert_details: APPEND_FORWARD\n        set_current_client_cert_details: {subject: true, dns: true, uri: true}\n"
        } else {
            ""
        },
    )
}

/// Sets clusters and listeners (before the meshgate starts: it is ready
/// once its first push is in).
fn set(mgmt: &Mgmt, version: &str, clusters: &str, listeners: &str) {
    mgmt.set(CLUSTER, version, envoy_yaml(clusters));
    mgmt.set(LISTENER, version, envoy_yaml(listeners));
}

/// Waits for the ACKs of both.
fn acked(mgmt: &Mgmt, version: &str) {
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, version);
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {:?}", r.error_detail);
    }
}

/// Waits for `n` requests in `istio_requests_total` with `labels`; on
/// timeout, shows the series there are.
fn wait_requests(mg: &Meshgate, labels: &[(&str, &str)], n: f64) {
    let found = poll(std::time::Duration::from_secs(10), || {
        (mg.metric("istio_requests_total", labels) == n).then_some(())
    });
    if found.is_none() {
        let (_, text) = mg.admin_get("/stats/prometheus");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        panic!("no {n} requests with {labels:?} in:\n{}", series.join("\n"));
    }
}

fn bound(mg: &Meshgate, name: &str) -> SocketAddr {
    let addr = wait_for_within(10, name, || {
        mg.listeners()
            .iter()
            .any(|l| l["name"] == name && l["bound"][0].is_string())
            .then(|| mg.listener_addr(name))
    });
    wait_listening(addr);
    addr
}

/// productpage's sidecar calls reviews through reviews' sidecar: each
/// reports the request with the other's workload, app and version from
/// the exchanged metadata, the server side with the client's and the
/// client side with the server's; the exchange headers reach neither the
/// application nor the client.
#[test]
fn http_metadata_exchange_between_two_sidecars() {
    let backend = HttpBackend::start("reviews", Proto::Http1);
    let inbound_mgmt = Mgmt::start(0);
    set(
        &inbound_mgmt,
        "1",
        &static_cluster_yaml("inbound|9080||", backend.addr),
        &sidecar_listener(
            "virtualInbound",
            "INBOUND",
            "            downstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]\n            downstream_propagation: [{istio_headers: {}}]",
            "inbound|9080||",
        ),
    );
    let inbound = Meshgate::start(&sidecar_bootstrap(
        inbound_mgmt.addr.port(),
        "reviews-v1",
        "reviews",
    ));
    acked(&inbound_mgmt, "1");
    let inbound_addr = bound(&inbound, "virtualInbound");

    let outbound_mgmt = Mgmt::start(0);
    let service = "reviews.default.svc.cluster.local";
    set(
        &outbound_mgmt,
        "1",
        &static_cluster_yaml(&format!("outbound|9080||{service}"), inbound_addr),
        &sidecar_listener(
            "0.0.0.0_9080",
            "OUTBOUND",
            "            upstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]\n            upstream_propagation: [{istio_headers: {}}]",
            &format!("outbound|9080||{service}"),
        ),
    );
    let outbound = Meshgate::start(&sidecar_bootstrap(
        outbound_mgmt.addr.port(),
        "productpage-v1",
        "productpage",
    ));
    acked(&outbound_mgmt, "1");
    let outbound_addr = bound(&outbound, "0.0.0.0_9080");

    for _ in 0..3 {
        let (code, head, body) = meshgate_tests::curl::curl(&[
            "-H",
            "host: reviews:9080",
            &format!("http://{outbound_addr}/reviews/1"),
        ]);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("backend=reviews"), "{body}");
        assert!(
            !head.keys().any(|k| k.starts_with("x-envoy-peer-metadata")),
            "the client sees no exchange header: {head:?}"
        );
    }
    assert_eq!(backend.hits(), 3);

    // The client's sidecar: source is itself, destination the server's
    // workload as its response headers told.
    wait_requests(
        &outbound,
        &[
            ("reporter", "source"),
            ("source_workload", "productpage-v1"),
            ("source_app", "productpage"),
            ("source_workload_namespace", "default"),
            ("destination_workload", "reviews-v1"),
            ("destination_app", "reviews"),
            ("destination_version", "v1"),
            ("destination_canonical_service", "reviews"),
            ("destination_cluster", "Kubernetes"),
            ("destination_service", service),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "default"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("response_flags", "-"),
            ("connection_security_policy", "unknown"),
        ],
        3.0,
    );
    // The server's sidecar: source is the client's workload, as its
    // request headers told; plaintext here.
    wait_requests(
        &inbound,
        &[
            ("reporter", "destination"),
            ("source_workload", "productpage-v1"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_cluster", "Kubernetes"),
            ("destination_workload", "reviews-v1"),
            ("destination_app", "reviews"),
            ("destination_principal", "unknown"),
            ("source_principal", "unknown"),
            ("response_code", "200"),
            ("connection_security_policy", "none"),
        ],
        3.0,
    );
    // The histograms, in milliseconds and bytes with Envoy's buckets.
    for mg in [&outbound, &inbound] {
        let (_, text) = mg.admin_get("/stats/prometheus");
        assert_eq!(
            metric_from(
                &text,
                "istio_request_duration_milliseconds_count",
                &[
                    ("source_workload", "productpage-v1"),
                    ("destination_workload", "reviews-v1")
                ]
            ),
            3.0,
            "{text}"
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("le=\"3600000\""), "{text}");
        assert_eq!(
            metric_from(
                &text,
                "istio_response_bytes_count",
                &[("response_code", "200")]
            ),
            3.0
        );
        assert!(
            metric_from(
                &text,
                "istio_response_bytes_sum",
                &[("response_code", "200")]
            ) > 0.0
        );
        assert!(
            metric_from(
                &text,
                "istio_request_bytes_sum",
                &[("response_code", "200")]
            ) > 0.0
        );
    }
    // No peer header was refused on the way.
    assert_eq!(
        outbound.metric("meshgate_istio_peer_metadata_error_total", &[])
            + inbound.metric("meshgate_istio_peer_metadata_error_total", &[]),
        0.0
    );
}

/// A client that is not a sidecar sends a garbage peer header: counted,
/// stripped, the request served with the source `unknown`.
#[test]
fn a_garbage_peer_header_is_counted_and_the_source_is_unknown() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let mgmt = Mgmt::start(0);
    set(
        &mgmt,
        "1",
        &static_cluster_yaml("inbound|9080||", backend.addr),
        &sidecar_listener(
            "virtualInbound",
            "INBOUND",
            "            downstream_discovery: [{istio_headers: {}}]\n            downstream_propagation: [{istio_headers: {}}]",
            "inbound|9080||",
        ),
    );
    let mg = Meshgate::start(&sidecar_bootstrap(
        mgmt.addr.port(),
        "reviews-v1",
        "reviews",
    ));
    acked(&mgmt, "1");
    let addr = bound(&mg, "virtualInbound");
    let (code, head, _) = meshgate_tests::curl::curl(&[
        "-H",
        "x-envoy-peer-metadata: %%%not-base64",
        "-H",
        "x-envoy-peer-metadata-id: evil",
        &format!("http://{addr}/"),
    ]);
    assert_eq!(code, 200);
    // Ours is told back to the client (downstream_propagation).
    assert!(head.contains_key("x-envoy-peer-metadata"), "{head:?}");
    assert_eq!(
        head.get("x-envoy-peer-metadata-id").map(String::as_str),
        Some("sidecar~127.0.0.1~reviews-v1-abc.default~default.svc.cluster.local")
    );
    mg.wait_metric(
        "meshgate_istio_peer_metadata_error_total",
        &[("source", "http_header"), ("reason", "base64")],
        |v| v == 1.0,
    );
    mg.wait_metric(
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "unknown"),
            ("destination_workload", "reviews-v1"),
            ("destination_service", &addr.ip().to_string()),
        ],
        |v| v == 1.0,
    );
}

/// istiod fields meshgate cannot honour are NACKed by name, and the old
/// config keeps serving.
#[test]
fn unsupported_istio_fields_are_nacked_by_name() {
    let mgmt = Mgmt::start(0);
    let backend = HttpBackend::start("b", Proto::Http1);
    set(
        &mgmt,
        "1",
        &static_cluster_yaml("inbound|9080||", backend.addr),
        &sidecar_listener(
            "virtualInbound",
            "INBOUND",
            "            downstream_discovery: [{istio_headers: {}}]",
            "inbound|9080||",
        ),
    );
    let mg = Meshgate::start(&sidecar_bootstrap(
        mgmt.addr.port(),
        "reviews-v1",
        "reviews",
    ));
    acked(&mgmt, "1");
    let addr = bound(&mg, "virtualInbound");
    for (i, (exchange, field)) in [
        (
            "            downstream_discovery: [{baggage: {}}]",
            "downstream_discovery[0].baggage",
        ),
        ("            additional_labels: [role]", "additional_labels"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = format!("bad{i}");
        mgmt.set(
            LISTENER,
            &v,
            envoy_yaml(&sidecar_listener(
                "virtualInbound",
                "INBOUND",
                exchange,
                "inbound|9080||",
            )),
        );
        let nonce = mgmt.wait_sent(LISTENER, &v);
        let r = mgmt.wait_reply(LISTENER, &nonce);
        let detail = r.error_detail.expect("NACK").message;
        assert!(detail.contains(field), "{detail}");
    }
    // stats.PluginConfig's metric overrides (CEL) are refused too.
    let with_metrics = sidecar_listener("virtualInbound", "INBOUND", "", "inbound|9080||")
        .replace(
            "            disable_host_header_fallback: false\n",
            "            disable_host_header_fallback: false\n            metrics: [{dimensions: {request_host: request.host}}]\n",
        );
    mgmt.set(LISTENER, "bad-metrics", envoy_yaml(&with_metrics));
    let nonce = mgmt.wait_sent(LISTENER, "bad-metrics");
    let detail = mgmt
        .wait_reply(LISTENER, &nonce)
        .error_detail
        .expect("NACK")
        .message;
    assert!(detail.contains("metrics[0]"), "{detail}");
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200, "the old config serves");
}

/// A TCP echo upstream.
fn echo_backend() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The in-band exchange on an inbound TCP chain (mTLS, ALPN
/// `istio-peer-exchange`), as istiod configures it: a Python peer sends
/// Istio's header (magic, length, Any(Struct)) and bytes; meshgate takes
/// the header off before tcp_proxy, answers with its own, and reports
/// Istio's TCP metrics with the peer's workload and the client's SPIFFE
/// principal.
#[test]
fn tcp_metadata_exchange_over_mtls_alpn() {
    let echo = echo_backend();
    let mgmt = Mgmt::start(0);
    let listener = format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: virtualInbound
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  traffic_direction: INBOUND
  filter_chains:
  - filter_chain_match: {{application_protocols: [istio-peer-exchange, istio]}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, h2, http/1.1]
          tls_certificates:
          - certificate_chain: {{filename: "{server}"}}
            private_key: {{filename: "{server_key}"}}
          validation_context:
            trusted_ca: {{filename: "{client_ca}"}}
    filters:
    - name: istio.metadata_exchange
      typed_config:
        '@type': type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
        protocol: istio-peer-exchange
    - name: istio.stats
      typed_config:
        '@type': type.googleapis.com/stats.PluginConfig
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: inbound|9080||
        cluster: inbound|9080||
"#,
        server = cert("server.pem"),
        server_key = cert("server.key"),
        client_ca = cert("client-ca.pem"),
    );
    set(
        &mgmt,
        "1",
        &static_cluster_yaml("inbound|9080||", echo),
        &listener,
    );
    let mg = Meshgate::start(&sidecar_bootstrap(
        mgmt.addr.port(),
        "ratings-v1",
        "ratings",
    ));
    acked(&mgmt, "1");
    let addr = bound(&mg, "virtualInbound");
    let out = std::process::Command::new("python3")
        .arg(workspace().join("tests/peers/istio_mx_client.py"))
        .args([
            &addr.port().to_string(),
            &cert("ca.pem"),
            &cert("client.pem"),
            &cert("client.key"),
            r#"{"NAME": "productpage-v1-xyz", "NAMESPACE": "bookinfo", "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "Kubernetes", "LABELS": {"app": "productpage", "version": "v2"}}"#,
            "ping over the mesh",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // meshgate's own header came back first, then the echo, untouched.
    assert_eq!(seen["alpn"], "istio-peer-exchange");
    assert_eq!(seen["peer"]["WORKLOAD_NAME"], "ratings-v1");
    assert_eq!(seen["peer"]["LABELS"]["app"], "ratings");
    assert_eq!(
        seen["peer"]["x-envoy-peer-metadata-id"],
        "sidecar~127.0.0.1~ratings-v1-abc.default~default.svc.cluster.local"
    );
    assert!(
        seen["peer"].get("PROXY_CONFIG").is_none(),
        "only the exchanged keys"
    );
    assert_eq!(seen["data"], "ping over the mesh");
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "bookinfo"),
        ("source_app", "productpage"),
        ("source_version", "v2"),
        ("destination_workload", "ratings-v1"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ];
    mg.wait_metric("istio_tcp_connections_closed_total", &labels, |v| v == 1.0);
    assert_eq!(
        mg.metric("istio_tcp_connections_opened_total", &labels),
        1.0
    );
    // The application's bytes only: the exchange headers are not counted.
    assert_eq!(
        mg.metric("istio_tcp_received_bytes_total", &labels),
        "ping over the mesh".len() as f64
    );
    assert_eq!(
        mg.metric("istio_tcp_sent_bytes_total", &labels),
        "ping over the mesh".len() as f64
    );
    // The client's verified SPIFFE id is the source principal; TCP
    // metrics carry no HTTP labels.
    let (_, text) = mg.admin_get("/stats/prometheus");
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .expect("the TCP metric");
    assert!(
        line.contains("source_principal=\"spiffe://meshgate.test/ns/default/sa/client\""),
        "{line}"
    );
    assert!(!line.contains("response_code"), "{line}");
}

/// The same filters from meshgate's own YAML (no xDS): `istio_peer_metadata`
/// and `istio_stats` in a `proxy` chain; the node's metadata from the
/// file's `node`.
#[test]
fn istio_filters_from_yaml() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
node:
  id: sidecar~yaml
  metadata:
    WORKLOAD_NAME: details-v1
    NAMESPACE: default
    LABELS: {{app: details, version: v1}}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: http1
              stream_filters:
                - name: istio_peer_metadata
                  config: {{downstream_discovery: true, downstream_propagation: true}}
                - name: istio_stats
                  config: {{reporter: destination}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: details}}
clusters:
  - name: details
    connect_timeout: 1s
    endpoints:
      - address: {backend}
"#,
        backend = backend.addr
    );
    let mg = Meshgate::start(&yaml);
    let addr = mg.listener_addr("inbound");
    wait_listening(addr);
    let (code, head, _) = meshgate_tests::curl::curl(&[&format!("http://{addr}/")]);
    assert_eq!(code, 200);
    assert_eq!(
        head.get("x-envoy-peer-metadata-id").map(String::as_str),
        Some("sidecar~yaml")
    );
    mg.wait_metric(
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "details-v1"),
            ("destination_app", "details"),
            ("source_workload", "unknown"),
        ],
        |v| v == 1.0,
    );
    // A reporter is required in YAML (xDS resolves Istio's UNSPECIFIED
    // from the listener's direction).
    let bad = yaml
        .replace("config: {reporter: destination}", "config: {}")
        .replace("admin:\n  address: \"{ADMIN}\"\n", "");
    let (code, _, err) = run_cli(&["validate", &write_temp(&bad)]);
    assert_ne!(code, 0);
    assert!(err.contains("reporter"), "{err}");
}

fn write_temp(text: &str) -> String {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let (_, path) = f.keep().unwrap();
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// An inbound TCP listener of the "server sidecar" as istiod writes one:
/// mTLS, the given ALPN ids, the exchange, `istio.stats`, tcp_proxy.
fn inbound_tcp_listener(name: &str, alpn: &str, cluster: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  traffic_direction: INBOUND
  filter_chains:
  - transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context:
          alpn_protocols: [{alpn}]
          tls_certificates:
          - certificate_chain: {{filename: "{server}"}}
            private_key: {{filename: "{server_key}"}}
          validation_context:
            trusted_ca: {{filename: "{client_ca}"}}
    filters:
    - name: istio.metadata_exchange
      typed_config:
        '@type': type.googleapis.com/udpa.type.v1.TypedStruct
        type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
        value: {{protocol: istio-peer-exchange, enable_discovery: true}}
    - name: istio.stats
      typed_config:
        '@type': type.googleapis.com/stats.PluginConfig
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: '{cluster}'
        cluster: '{cluster}'
"#,
        server = cert("server.pem"),
        server_key = cert("server.key"),
        client_ca = cert("client-ca.pem"),
    )
}

/// An in-mesh outbound TCP cluster as istiod writes one: mTLS offering
/// `istio-peer-exchange`, and the cluster filter `istio.metadata_exchange`
/// in the `TypedStruct` form recent istiod sends.
fn outbound_tcp_cluster(name: &str, endpoint: SocketAddr) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: '{name}'
  type: STATIC
  connect_timeout: 1s
  lb_policy: ROUND_ROBIN
  load_assignment:
    cluster_name: '{name}'
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
  filters:
  - name: istio.metadata_exchange
    typed_config:
      '@type': type.googleapis.com/udpa.type.v1.TypedStruct
      type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
      value: {{protocol: istio-peer-exchange, enable_discovery: true}}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: localhost
      common_tls_context:
        alpn_protocols: [istio-peer-exchange, istio]
        tls_certificates:
        - certificate_chain: {{filename: "{client}"}}
          private_key: {{filename: "{client_key}"}}
        validation_context:
          trusted_ca: {{filename: "{ca}"}}
"#,
        port = endpoint.port(),
        client = cert("client.pem"),
        client_key = cert("client.key"),
        ca = cert("ca.pem"),
    )
}

/// One TCP round trip through `addr`.
fn tcp_echo(addr: SocketAddr, text: &str) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(text.as_bytes()).unwrap();
    let mut got = vec![0u8; text.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, text.as_bytes(), "the application's bytes only");
}

/// The client side of the TCP exchange, meshgate to meshgate, both driven
/// by their own ADS server with istiod-shaped resources: productpage's
/// sidecar (OUTBOUND listener, istio.stats + tcp_proxy) proxies to an
/// in-mesh cluster carrying the `istio.metadata_exchange` cluster filter;
/// its mTLS connection negotiates `istio-peer-exchange` with ratings'
/// sidecar (INBOUND, the exchange network filter), each sends its node
/// metadata in band before the application's bytes, and each side's
/// `istio_tcp_*` metrics name the other's workload. Then a push points
/// the cluster at a listener of ratings' sidecar that does not negotiate
/// the ALPN: bytes are proxied plainly and both sides report the peer
/// `unknown`.
#[test]
fn outbound_tcp_metadata_exchange_between_two_sidecars() {
    let echo = echo_backend();
    // ratings' sidecar: one listener negotiating the exchange, one not.
    let server_mgmt = Mgmt::start(0);
    let listeners = format!(
        "{}{}",
        inbound_tcp_listener(
            "virtualInbound",
            "istio-peer-exchange, istio",
            "inbound|9080||"
        ),
        inbound_tcp_listener("plainInbound", "istio", "inbound|9080||"),
    );
    set(
        &server_mgmt,
        "1",
        &static_cluster_yaml("inbound|9080||", echo),
        &listeners,
    );
    let server = Meshgate::start(&sidecar_bootstrap(
        server_mgmt.addr.port(),
        "ratings-v1",
        "ratings",
    ));
    acked(&server_mgmt, "1");
    let exchanging = bound(&server, "virtualInbound");
    let plain = bound(&server, "plainInbound");

    // productpage's sidecar.
    const CLUSTER: &str = "outbound|9080||ratings.default.svc.cluster.local";
    let outbound_listener = format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: ratings_9080
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  traffic_direction: OUTBOUND
  filter_chains:
  - filters:
    - name: istio.stats
      typed_config:
        '@type': type.googleapis.com/stats.PluginConfig
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: '{CLUSTER}'
        cluster: '{CLUSTER}'
"#
    );
    let client_mgmt = Mgmt::start(0);
    set(
        &client_mgmt,
        "1",
        &outbound_tcp_cluster(CLUSTER, exchanging),
        &outbound_listener,
    );
    let client = Meshgate::start(&sidecar_bootstrap(
        client_mgmt.addr.port(),
        "productpage-v1",
        "productpage",
    ));
    acked(&client_mgmt, "1");
    // Ready by the admin server's word: a probe connection would be a
    // connection of its own in the metrics.
    let outbound = wait_for_within(10, "ratings_9080", || {
        client
            .listeners()
            .iter()
            .any(|l| l["name"] == "ratings_9080" && l["bound"][0].is_string())
            .then(|| client.listener_addr("ratings_9080"))
    });

    tcp_echo(outbound, "ping over the mesh");
    let both = [
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("destination_workload", "ratings-v1"),
        ("destination_app", "ratings"),
        ("request_protocol", "tcp"),
    ];
    let with = |reporter: &'static str| {
        let mut l = both.to_vec();
        l.push(("reporter", reporter));
        l
    };
    // The client side learnt the server's workload in band.
    client.wait_metric("istio_tcp_connections_closed_total", &with("source"), |v| {
        v == 1.0
    });
    assert_eq!(
        client.metric("istio_tcp_connections_opened_total", &with("source")),
        1.0
    );
    for m in [
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        assert_eq!(
            client.metric(m, &with("source")),
            "ping over the mesh".len() as f64,
            "{m}: the application's bytes only"
        );
    }
    // The server side learnt the client's, from the client sidecar's
    // header (not a test peer's).
    let mut server_labels = with("destination");
    server_labels.push(("connection_security_policy", "mutual_tls"));
    server.wait_metric("istio_tcp_connections_closed_total", &server_labels, |v| {
        v == 1.0
    });
    for m in [
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        assert_eq!(
            server.metric(m, &server_labels),
            "ping over the mesh".len() as f64,
            "{m}"
        );
    }

    // A push: the cluster's endpoint no longer negotiates the ALPN.
    set(
        &client_mgmt,
        "2",
        &outbound_tcp_cluster(CLUSTER, plain),
        &outbound_listener,
    );
    acked(&client_mgmt, "2");
    let unknown_server = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("destination_workload", "unknown"),
        ("request_protocol", "tcp"),
    ];
    // The new cluster applies to the next connection; a connection still
    // reaching the old endpoint would be reported with ratings' workload.
    tcp_echo(client.listener_addr("ratings_9080"), "plain bytes");
    client.wait_metric("istio_tcp_connections_closed_total", &unknown_server, |v| {
        v == 1.0
    });
    assert_eq!(
        client.metric("istio_tcp_sent_bytes_total", &unknown_server),
        "plain bytes".len() as f64
    );
    let unknown_client = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("destination_workload", "ratings-v1"),
    ];
    server.wait_metric("istio_tcp_connections_closed_total", &unknown_client, |v| {
        v == 1.0
    });
    assert_eq!(
        server.metric("istio_tcp_received_bytes_total", &unknown_client),
        "plain bytes".len() as f64
    );
    // Exactly one exchanged connection on each side.
    assert_eq!(
        client.metric("istio_tcp_connections_opened_total", &with("source")),
        1.0
    );
}
