//! Stream duration limits, redirect `regex_rewrite` and host port
//! stripping pushed over xDS by a control plane that shares no code with
//! meshgate (`tests/peers/ads_server.py`, grpcio and Envoy's protos): the
//! push is ACKed and its effect seen with real clients (grpcio, curl), a
//! push setting both strip modes is NACKed by name while the old config
//! serves.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::pyads::PyAds;
use meshgate_tests::xds::{CLUSTER, LISTENER, ROUTE};
use meshgate_tests::*;
use std::net::SocketAddr;
use std::process::Command;

/// A STATIC cluster; `extra` goes in at the top level (two spaces).
fn cluster(name: &str, a: SocketAddr, extra: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: STATIC
  connectTimeout: 1s
{extra}  loadAssignment:
    clusterName: {name}
    endpoints:
    - lbEndpoints:
      - endpoint:
          address:
            socketAddress: {{address: {ip}, portValue: {port}}}
"#,
        ip = a.ip(),
        port = a.port()
    )
}

/// A listener whose HCM takes route `r1` from RDS; `hcm` goes into the
/// HCM's typed config (eight spaces).
fn listener(name: &str, port: u16, hcm: &str) -> String {
    format!(
        r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address:
    socketAddress: {{address: 127.0.0.1, portValue: {port}}}
  filterChains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typedConfig:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        statPrefix: {name}
{hcm}        rds:
          configSource: {{ads: {{}}, resourceApiVersion: V3}}
          routeConfigName: r1
        httpFilters:
        - name: envoy.filters.http.router
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

const GRPC_ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /, grpc: {}}
      route:
        cluster: grpc
        timeout: 1s
        maxStreamDuration:
          maxStreamDuration: 10s
          grpcTimeoutHeaderMax: 0.5s
          grpcTimeoutHeaderOffset: 0.1s
"#;

/// A 5 s gRPC deadline on a route whose `grpc_timeout_header_max` is
/// 500 ms with a 100 ms offset: the upstream is told 400 ms, and the slow
/// call ends with meshgate's DEADLINE_EXCEEDED, counted. The route's
/// `timeout: 1s` is not used (Envoy's rule with max_stream_duration): the
/// 3 s call is ended by the stream duration, not as an upstream timeout.
#[test]
fn grpc_timeout_header_max_caps_a_deadline_pushed_over_xds() {
    let server = GrpcServer::start();
    let port = free_port();
    let ads = PyAds::start();
    let h2 = r#"  typedExtensionProtocolOptions:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicitHttpConfig:
        http2ProtocolOptions: {}
"#;
    ads.set(
        CLUSTER,
        "1",
        &cluster("grpc", ([127, 0, 0, 1], server.1).into(), h2),
    );
    ads.set(ROUTE, "1", GRPC_ROUTES);
    ads.set(LISTENER, "1", &listener("web", port, ""));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    let out = Command::new("timeout")
        .args(["20", "python3"])
        .arg(workspace().join("tests/peers/grpc_e2e_peer.py"))
        .args(["client", &format!("127.0.0.1:{port}"), "capped"])
        .output()
        .expect("python3 with grpcio");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // `OK capped upstream-deadline=NNNms took=T.TTs`
    let left: u64 = text
        .split("upstream-deadline=")
        .nth(1)
        .and_then(|s| s.split("ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(left > 0 && left <= 400, "{text}");
    let took: f64 = text
        .split("took=")
        .nth(1)
        .and_then(|s| s.trim().strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // Ended by the limit, before the backend's 3 s answer or the
    // client's own 5 s deadline.
    assert!(took < 2.9, "{text}");
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_max_duration_reached_total",
            &[("protocol", "http2"), ("phase", "before_response")]
        ),
        1.0
    );
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "upstream_timeout")]
        ),
        0.0
    );
}

const ROUTES: &str = r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: www
    domains: [www.example.com]
    routes:
    - match: {prefix: /}
      route: {cluster: up}
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /old/}
      redirect:
        regexRewrite:
          pattern: {regex: '^/old/([^/]+)/(.*)$'}
          substitution: '/new/\2/\1'
    - match: {prefix: /}
      route: {cluster: up}
"#;

/// Listener `strip` strips any host port (Envoy's `strip_any_host_port`),
/// listener `plain` does not and limits streams to 300 ms
/// (`common_http_protocol_options.max_stream_duration`); both route by
/// `r1`, whose regex redirect curl follows.
#[test]
fn strip_any_host_port_redirect_regex_rewrite_and_hcm_limit_pushed_over_xds() {
    let b = HttpBackend::start("a", Proto::Http1);
    let (strip, plain) = (free_port(), free_port());
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &cluster("up", b.addr, ""));
    ads.set(ROUTE, "1", ROUTES);
    let listeners = |strip_hcm: &str| {
        listener("strip", strip, strip_hcm)
            + &listener(
                "plain",
                plain,
                "        commonHttpProtocolOptions: {maxStreamDuration: 0.3s}\n",
            )
    };
    ads.set(
        LISTENER,
        "1",
        &listeners("        stripAnyHostPort: true\n"),
    );
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], strip).into());
    wait_listening(([127, 0, 0, 1], plain).into());
    let via = |port: u16, host_port: u16| {
        curl(&[
            "--connect-to",
            &format!("www.example.com:{host_port}:127.0.0.1:{port}"),
            &format!("http://www.example.com:{host_port}/p"),
        ])
    };
    // The port is stripped: the portless domain matches (the route table
    // keeps Envoy's default, the host matched as sent) and the upstream
    // gets the bare host.
    let (status, _, body) = via(strip, 8080);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host=www.example.com\n"), "{body}");
    // Without it the host with its port falls to the `*` virtual host,
    // which forwards it as sent.
    let (status, _, body) = via(plain, 8080);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host=www.example.com:8080\n"), "{body}");

    // The regex redirect, followed by curl; the query is kept.
    let (status, h, _) = curl(&[&format!("http://127.0.0.1:{plain}/old/a/b/c?x=1")]);
    assert_eq!(status, 301);
    assert_eq!(
        h.get("location").map(String::as_str),
        Some(format!("http://127.0.0.1:{plain}/new/b/c/a?x=1").as_str())
    );
    let (status, _, body) = curl(&["-L", &format!("http://127.0.0.1:{plain}/old/a/b?x=1")]);
    assert_eq!(status, 200);
    assert!(body.contains("uri=/new/b/a?x=1"), "{body}");

    // The HCM's limit on `plain` only.
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{plain}/slow")]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("downstream duration timeout"), "{body}");
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_max_duration_reached_total",
            &[("protocol", "http1"), ("phase", "before_response")]
        ),
        1.0
    );

    // Both strip modes: NACKed by name, the old listeners keep serving.
    ads.set(
        LISTENER,
        "2",
        &listeners("        stripAnyHostPort: true\n        stripMatchingHostPort: true\n"),
    );
    let nack = ads.wait_nack(LISTENER, "2");
    assert!(nack.contains("strip_any_host_port"), "{nack}");
    let (status, _, body) = via(strip, 8080);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host=www.example.com\n"), "{body}");
}

/// The HCM's `common_http_protocol_options.max_connection_duration`,
/// `max_headers_count` and `drain_timeout` pushed over LDS: ACKed, a
/// keep-alive connection is closed at the limit, counted, and a request
/// with too many header fields gets 431.
#[test]
fn max_connection_duration_and_max_headers_count_pushed_over_xds() {
    use std::io::{Read, Write};
    let b = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &cluster("up", b.addr, ""));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(
        LISTENER,
        "1",
        &listener(
            "web",
            port,
            "        commonHttpProtocolOptions: {maxConnectionDuration: 1s, maxHeadersCount: 6}\n        drainTimeout: 2s\n",
        ),
    );
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    let opened = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    s.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The response, then the server's close at the limit.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed: {e}"),
        }
    }
    let lived = opened.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        lived >= std::time::Duration::from_millis(900) && lived < std::time::Duration::from_secs(5),
        "{lived:?}"
    );
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_max_duration_reached_total",
            &[("listener", "web")]
        ),
        1.0
    );
    // Six fields pass (curl's three and three more), seven do not.
    let url = format!("http://127.0.0.1:{port}/p");
    let h2 = |n: usize| {
        let headers: Vec<String> = (0..n).map(|i| format!("x-h{i}: v")).collect();
        let mut args = vec!["--http2-prior-knowledge"];
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        curl(&args).0
    };
    assert_eq!(h2(3), 200);
    assert_eq!(h2(4), 431);
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_rq_refused_total",
            &[("listener", "web"), ("reason", "too_many_headers")]
        ),
        1.0
    );
}

/// The HCM's `max_request_headers_kb` pushed over xDS: a request head
/// over 1 KiB gets 431 over HTTP/1.1 and HTTP/2 (h2c), a smaller one
/// passes; a listener without it keeps Envoy's 60 KiB.
#[test]
fn max_request_headers_kb_pushed_over_xds() {
    let b = HttpBackend::start("a", Proto::Http1);
    let (small, plain) = (free_port(), free_port());
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &cluster("up", b.addr, ""));
    ads.set(ROUTE, "1", ROUTES);
    ads.set(
        LISTENER,
        "1",
        &(listener("small", small, "        maxRequestHeadersKb: 1\n")
            + &listener("plain", plain, "")),
    );
    let _mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], small).into());
    wait_listening(([127, 0, 0, 1], plain).into());
    let big = format!("x-big: {}", "b".repeat(2000));
    let get = |port: u16, extra: &[&str]| {
        let url = format!("http://127.0.0.1:{port}/p");
        let mut a = extra.to_vec();
        a.push(&url);
        curl(&a).0
    };
    assert_eq!(get(small, &["-H", "x-small: s"]), 200);
    assert_eq!(get(small, &["-H", &big]), 431);
    assert_eq!(
        get(small, &["--http2-prior-knowledge", "-H", "x-small: s"]),
        200
    );
    assert_eq!(get(small, &["--http2-prior-knowledge", "-H", &big]), 431);
    assert_eq!(get(plain, &["-H", &big]), 200);
}

/// A cluster's typed `load_balancing_policy` pushed over xDS (Envoy's
/// client-side weighted round robin first, which meshgate does not have,
/// then `ring_hash` with its ring size: the first known one is used): ACKed, and a route hashing on `x-user` keeps each user
/// on one of the two endpoints while the users spread over both. A
/// policy meshgate cannot honour (`least_request` with `choice_count: 3`)
/// is NACKed by name and the ring keeps serving.
#[test]
fn typed_load_balancing_policy_pushed_over_xds() {
    let (a, b) = (
        HttpBackend::start("a", Proto::Http1),
        HttpBackend::start("b", Proto::Http1),
    );
    let port = free_port();
    let ads = PyAds::start();
    let cluster_with = |policy: &str| {
        format!(
            r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: up
  type: STATIC
  connectTimeout: 1s
  lbPolicy: ROUND_ROBIN
  loadBalancingPolicy:
    policies:
    - typedExtensionConfig:
        name: envoy.load_balancing_policies.client_side_weighted_round_robin
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin
    - typedExtensionConfig:
        name: envoy.load_balancing_policies.x
        typedConfig:
{policy}
  loadAssignment:
    clusterName: up
    endpoints:
    - lbEndpoints:
      - endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: {pa}}}}}}}
      - endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: {pb}}}}}}}
"#,
            pa = a.addr.port(),
            pb = b.addr.port()
        )
    };
    ads.set(
        CLUSTER,
        "1",
        &cluster_with(
            "          '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash\n          minimumRingSize: 2048",
        ),
    );
    ads.set(
        ROUTE,
        "1",
        r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /}
      route:
        cluster: up
        hashPolicy:
        - header: {headerName: x-user}
"#,
    );
    ads.set(LISTENER, "1", &listener("l", port, ""));
    let _mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    let backend_for = |user: &str| {
        let (status, _, body) = curl(&[
            "-H",
            &format!("x-user: {user}"),
            &format!("http://127.0.0.1:{port}/p"),
        ]);
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("backend="))
            .unwrap()
            .to_string()
    };
    let mut seen = std::collections::BTreeSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let first = backend_for(&user);
        for _ in 0..3 {
            assert_eq!(backend_for(&user), first, "{user} moved");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "the users all went to {seen:?}");

    // least_request with three choices: NACKed by name, the ring serves.
    ads.set(
        CLUSTER,
        "2",
        &cluster_with(
            "          '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest\n          choiceCount: 3",
        ),
    );
    let detail = ads.wait_nack(CLUSTER, "2");
    assert!(detail.contains("choice_count"), "{detail}");
    let first = backend_for("user-0");
    assert_eq!(backend_for("user-0"), first);
}

/// A field of the backend's echo (`name=value` lines).
fn echoed(body: &str, name: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

/// The HCM's `via`, `skip_xff_append`, `strip_trailing_host_dot`,
/// request-id fields (`always_set_request_id_in_response`,
/// `preserve_external_request_id`, the UUID `request_id_extension`) and
/// `request_timeout` pushed over xDS: ACKed, each seen with curl or a raw
/// socket on listener `edge`, and Envoy's defaults on listener `keep`; a
/// request id extension of another kind is NACKed by name.
#[test]
fn hcm_request_ids_via_xff_host_dot_and_request_timeout_pushed_over_xds() {
    let b = HttpBackend::start("a", Proto::Http1);
    let (edge, keep) = (free_port(), free_port());
    let ads = PyAds::start();
    ads.set(CLUSTER, "1", &cluster("up", b.addr, ""));
    ads.set(ROUTE, "1", ROUTES);
    let edge_hcm = r#"        useRemoteAddress: true
        via: 1.1 mg-xds
        skipXffAppend: true
        stripTrailingHostDot: true
        alwaysSetRequestIdInResponse: true
        requestTimeout: 1s
        requestIdExtension:
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
            packTraceReason: false
"#;
    let keep_hcm = "        useRemoteAddress: true\n        preserveExternalRequestId: true\n";
    ads.set(
        LISTENER,
        "1",
        &(listener("edge", edge, edge_hcm) + &listener("keep", keep, keep_hcm)),
    );
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], edge).into());
    wait_listening(([127, 0, 0, 1], keep).into());
    let url = |port: u16| format!("http://127.0.0.1:{port}/p");
    let external = [
        "-H",
        "x-request-id: rid-1",
        "-H",
        "x-forwarded-for: 203.0.113.9",
    ];

    // edge: the external request's id is replaced and returned, XFF is not
    // appended to, the response carries via.
    let u = url(edge);
    let mut args = external.to_vec();
    args.push(&u);
    let (status, head, body) = curl(&args);
    assert_eq!(status, 200, "{body}");
    let id = echoed(&body, "x-request-id");
    assert!(id != "rid-1" && id.len() == 36, "{body}");
    assert_eq!(head.get("x-request-id"), Some(&id), "{head:?}");
    assert_eq!(echoed(&body, "x-forwarded-for"), "203.0.113.9");
    assert_eq!(head.get("via").map(String::as_str), Some("1.1 mg-xds"));
    // keep: the id is kept and not returned, XFF appended, no via.
    let u = url(keep);
    let mut args = external.to_vec();
    args.push(&u);
    let (status, head, body) = curl(&args);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "x-request-id"), "rid-1");
    assert!(!head.contains_key("x-request-id") && !head.contains_key("via"));
    assert_eq!(echoed(&body, "x-forwarded-for"), "203.0.113.9, 127.0.0.1");

    // The trailing dot: stripped on edge only.
    for (port, host) in [(edge, "www.example.com"), (keep, "www.example.com.")] {
        let u = url(port);
        let (status, _, body) = curl(&["-H", "host: www.example.com.", &u]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(echoed(&body, "host"), host, "{body}");
    }

    // request_timeout: a body 7 bytes short is answered 408 after 1 s.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", edge)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "request_overall_timeout")]
        ),
        1.0
    );

    // Another request id extension: NACKed by name, edge keeps serving.
    let bad = edge_hcm.replace(
        "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig\n            packTraceReason: false",
        "type.googleapis.com/google.protobuf.Empty",
    );
    ads.set(
        LISTENER,
        "2",
        &(listener("edge", edge, &bad) + &listener("keep", keep, keep_hcm)),
    );
    let detail = ads.wait_nack(LISTENER, "2");
    assert!(
        detail.contains("request_id_extension.typed_config"),
        "{detail}"
    );
    let u = url(edge);
    assert_eq!(curl(&[&u]).0, 200);
}

/// Cluster `metadata` shaped as istiod sets it on every cluster (the
/// `istio` namespace: services, default_original_port): ACKed, shown in
/// `/config_dump`, and read by an access log's `%CLUSTER_METADATA%`; a
/// cluster without metadata logs `-`.
#[test]
fn cluster_metadata_pushed_over_xds_reaches_the_access_log() {
    let (a, b) = (
        HttpBackend::start("a", Proto::Http1),
        HttpBackend::start("b", Proto::Http1),
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let ads = PyAds::start();
    let meta = r#"  metadata:
    filterMetadata:
      istio:
        services:
        - {host: reviews.default.svc.cluster.local, name: reviews, namespace: default}
        default_original_port: 9080
"#;
    ads.set(
        CLUSTER,
        "1",
        &(cluster("up", a.addr, meta) + &cluster("bare", b.addr, "")),
    );
    ads.set(
        ROUTE,
        "1",
        r#"- '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtualHosts:
  - name: all
    domains: ['*']
    routes:
    - match: {prefix: /bare}
      route: {cluster: bare}
    - match: {prefix: /}
      route: {cluster: up}
"#,
    );
    let hcm = format!(
        r#"        accessLog:
        - name: envoy.access_loggers.file
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: {}
            logFormat:
              textFormatSource:
                inlineString: "%REQ(:PATH)% port=%CLUSTER_METADATA(istio:default_original_port)% svc=%CLUSTER_METADATA(istio:services)%\n"
"#,
        log.display()
    );
    ads.set(LISTENER, "1", &listener("l", port, &hcm));
    let mg = Meshgate::start(&ads.bootstrap());
    for t in [CLUSTER, LISTENER, ROUTE] {
        ads.wait_ack(t, "1");
    }
    wait_listening(([127, 0, 0, 1], port).into());
    for path in ["/m", "/bare"] {
        let u = format!("http://127.0.0.1:{port}{path}");
        assert_eq!(curl(&[&u]).0, 200);
    }
    let lines = wait_for_within(10, "two access log lines", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 2).then_some(t)
    });
    assert!(
        lines.contains(
            r#"/m port=9080 svc=[{"host":"reviews.default.svc.cluster.local","name":"reviews","namespace":"default"}]"#
        ),
        "{lines}"
    );
    assert!(lines.contains("/bare port=- svc=-"), "{lines}");
    let (_, dump) = mg.admin_get("/config_dump");
    assert!(dump.contains("default_original_port"), "{dump}");
}
