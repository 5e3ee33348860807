//! TLS policy as control planes send it (issue 19, TLS part): Envoy's
//! `tls_params` (`cipher_suites` by BoringSSL names with equal-preference
//! groups, `ecdh_curves`, `signature_algorithms`) checked with
//! `openssl s_client` against the real binary; stateful session
//! resumption switched off; a cluster's `transport_socket_matches` as
//! istiod sends them (mTLS to `tlsMode: istio` endpoints with a
//! `combined_validation_context` whose SAN matcher names the server's
//! identity, plaintext to the others) through the xDS test server; and
//! the NACKs of TLS 1.0 minimums and of cipher lists rustls cannot serve.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::process::Command;

fn cert(name: &str) -> String {
    workspace()
        .join("examples/certs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn pem(name: &str) -> String {
    std::fs::read_to_string(cert(name)).unwrap()
}

/// A TLS listener (`tls_extra` added to its `tls` block) proxying to
/// `backend`; port 0, read back.
fn start(backend: &HttpBackend, tls_extra: &str) -> (Meshgate, u16) {
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: https
    address: 127.0.0.1:0
    filter_chains:
      - tls:
          certificates:
            - {{certificate_chain: "{server}", private_key: "{server_key}"}}
            - {{certificate_chain: "{ed}", private_key: "{ed_key}"}}
{tls_extra}        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        server = cert("server.pem"),
        server_key = cert("server.key"),
        ed = cert("ed25519.pem"),
        ed_key = cert("ed25519.key"),
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    let port = mg.listener_port("https");
    (mg, port)
}

/// Envoy's names, a `[A|B]` group and names rustls lacks (skipped): the
/// handshake negotiates an allowed suite and curve; a client offering
/// only suites or curves outside the lists is refused, and counted.
#[test]
fn cipher_suites_and_ecdh_curves_by_envoy_names() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let (mg, port) = start(
        &backend,
        r#"          max_version: "1.2"
          cipher_suites:
            - "[ECDHE-ECDSA-CHACHA20-POLY1305|ECDHE-RSA-CHACHA20-POLY1305]"
            - ECDHE-ECDSA-AES128-SHA
            - AES128-SHA
          ecdh_curves: [P-384, P-521]
"#,
    );
    let out = s_client(port, &["-servername", "localhost"]);
    assert!(
        out.contains("Cipher is ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{out}"
    );
    assert!(out.contains("Server Temp Key: ECDH, secp384r1"), "{out}");
    // The client offers only a suite outside the list: refused.
    let out = s_client(
        port,
        &[
            "-servername",
            "localhost",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    );
    assert!(!out.contains("Cipher is ECDHE"), "{out}");
    assert!(out.contains("alert handshake failure"), "{out}");
    // ... or only a curve outside the list: refused.
    let out = s_client(port, &["-servername", "localhost", "-curves", "X25519"]);
    assert!(!out.contains("Cipher is ECDHE"), "{out}");
    assert!(
        mg.metric(
            "meshgate_listener_tls_handshake_error_total",
            &[("listener", "https")]
        ) >= 2.0,
        "refusals counted"
    );
    // The proxy path still serves over the negotiated suite.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &cert("ca.pem")])
        .arg(format!("https://localhost:{port}/x"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("backend=b"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `signature_algorithms` limits what meshgate signs its handshake with:
/// the Ed25519 certificate (chosen by SNI) cannot sign under
/// `[ecdsa_secp256r1_sha256]`, so that handshake fails while the ECDSA
/// certificate's succeeds; without the list both succeed.
#[test]
fn signature_algorithms_limit_what_the_server_signs_with() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let (_open, open_port) = start(&backend, "");
    let (_mg, port) = start(
        &backend,
        "          signature_algorithms: [ecdsa_secp256r1_sha256, ecdsa_sha1]\n",
    );
    let ed = |p: u16| s_client(p, &["-servername", "ed25519.test", "-tls1_3"]);
    let out = ed(open_port);
    // OpenSSL 3 names it in lower case.
    assert!(
        out.to_lowercase().contains("peer signature type: ed25519"),
        "{out}"
    );
    let out = ed(port);
    assert!(!out.contains("Peer signature type"), "{out}");
    assert!(out.contains("alert handshake failure"), "{out}");
    let out = s_client(port, &["-servername", "localhost", "-tls1_3"]);
    assert!(out.contains("Peer signature type: ECDSA"), "{out}");
    assert!(out.contains("Peer signing digest: SHA256"), "{out}");
}

/// `session_cache: false` (Envoy's `disable_stateful_session_resumption`)
/// with tickets off: a TLS 1.2 session ID is not resumed; with the cache
/// (the default) it is.
#[test]
fn stateful_session_resumption_can_be_disabled() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let (_on, on) = start(&backend, "          session_tickets: false\n");
    let (_off, off) = start(
        &backend,
        "          session_tickets: false\n          session_cache: false\n",
    );
    for (port, want) in [(on, "Reused, TLSv1.2"), (off, "New, TLSv1.2")] {
        let dir = tempfile::tempdir().unwrap();
        let sess = dir.path().join("sess").to_string_lossy().into_owned();
        let base = ["-tls1_2", "-servername", "localhost", "-no_ticket"];
        let first = s_client(port, &[&base[..], &["-sess_out", &sess]].concat());
        assert!(first.contains("New, TLSv1.2"), "{first}");
        if !std::path::Path::new(&sess).exists() {
            // No session ID was given out: nothing can be resumed.
            assert_eq!(want, "New, TLSv1.2", "{port}: no session saved: {first}");
            continue;
        }
        let again = s_client(port, &[&base[..], &["-sess_in", &sess]].concat());
        assert!(again.contains(want), "{port}: {again}");
    }
}

/// istiod's shape: one cluster, two endpoints; the one labelled
/// `tlsMode: istio` is reached over mTLS (a meshgate TLS listener that
/// requires a client certificate in front of backend `tls`), the other in
/// plaintext (backend `plain`). The mTLS socket's validation is a
/// `combined_validation_context`: a SAN matcher in the default context,
/// the CA from an SDS secret. The transport sockets carry names that say
/// nothing: the type URL decides. Both endpoints serve.
#[test]
fn transport_socket_matches_mtls_to_istio_endpoints_plaintext_to_others() {
    use meshgate_tests::xds::*;
    let tls_backend = HttpBackend::start("tls", Proto::Http1);
    let plain = HttpBackend::start("plain", Proto::Http1);
    let mgmt = Mgmt::start(0);
    let indent = |s: String| s.replace('\n', "\n          ");
    mgmt.set(
        SECRET,
        "1",
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: ROOTCA
  validation_context:
    trusted_ca:
      inline_string: |
          {ca}
- '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: default
  tls_certificate:
    certificate_chain:
      inline_string: |
          {client}
    private_key:
      inline_string: |
          {client_key}
"#,
            ca = indent(pem("ca.pem")),
            client = indent(pem("client.pem")),
            client_key = indent(pem("client.key")),
        )),
    );
    // The inner (mTLS) listener first, on port 0, read back.
    let listeners = |inner_only: bool| {
        let mut y = format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: inner
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  filter_chains:
  - transport_socket:
      name: tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{filename: "{server}"}}
            private_key: {{filename: "{server_key}"}}
          validation_context:
            trusted_ca: {{filename: "{client_ca}"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{prefix: "spiffe://meshgate.test/ns/default/"}}
    filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: inner
        cluster: tls_backend
"#,
            server = cert("server.pem"),
            server_key = cert("server.key"),
            client_ca = cert("client-ca.pem"),
        );
        if !inner_only {
            y.push_str(
                r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: outbound
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: outbound
        route_config:
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {prefix: /}
              route: {cluster: 'outbound|80||svc.default.svc.cluster.local'}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            );
        }
        envoy_yaml(&y)
    };
    let tls_backend_cluster = format!(
        r#"- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: tls_backend
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: tls_backend
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {tls_port}}}}}}}
"#,
        tls_port = tls_backend.addr.port(),
    );
    let clusters = |inner_port: u16| {
        envoy_yaml(&format!(
            r#"{tls_backend_cluster}- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: 'outbound|80||svc.default.svc.cluster.local'
  type: STATIC
  connect_timeout: 1s
  lb_policy: ROUND_ROBIN
  load_assignment:
    cluster_name: 'outbound|80||svc.default.svc.cluster.local'
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inner_port}}}}}}}
        metadata:
          filter_metadata:
            envoy.transport_socket_match: {{tlsMode: istio}}
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {plain_port}}}}}}}
  transport_socket_matches:
  - name: tlsMode-istio
    match: {{tlsMode: istio}}
    transport_socket:
      name: some-socket
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_params:
            tls_minimum_protocol_version: TLSv1_2
            cipher_suites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256, AES128-SHA]
          tls_certificate_sds_secret_configs:
          - name: default
            sds_config: {{ads: {{}}, resource_api_version: V3}}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: DNS
                matcher: {{exact: localhost}}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: {{ads: {{}}, resource_api_version: V3}}
  - name: tlsMode-disabled
    match: {{}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
"#,
            plain_port = plain.addr.port(),
        ))
    };
    mgmt.set(CLUSTER, "1", envoy_yaml(&tls_backend_cluster));
    mgmt.set(LISTENER, "1", listeners(true));
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "1");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    let inner = wait_for_within(10, "the inner listener", || {
        mg.listeners()
            .iter()
            .any(|l| l["name"] == "inner" && l["bound"][0].is_string())
            .then(|| mg.listener_port("inner"))
    });
    mgmt.set(CLUSTER, "2", clusters(inner));
    mgmt.set(LISTENER, "2", listeners(false));
    for t in [CLUSTER, LISTENER] {
        let nonce = mgmt.wait_sent(t, "2");
        let r = mgmt.wait_reply(t, &nonce);
        assert!(r.error_detail.is_none(), "{t}: {r:?}");
    }
    let outbound = wait_for_within(10, "the outbound listener", || {
        mg.listeners()
            .iter()
            .any(|l| l["name"] == "outbound" && l["bound"][0].is_string())
            .then(|| mg.listener_addr("outbound"))
    });
    wait_listening(outbound);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (code, body) = http_get(outbound, "/x").unwrap();
        assert_eq!(code, 200, "{body}");
        let name = body
            .lines()
            .find_map(|l| l.strip_prefix("backend="))
            .unwrap_or("")
            .to_string();
        seen.insert(name);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["plain", "tls"],
        "both endpoints serve"
    );
    // The TLS endpoint was reached through the mTLS listener (its client
    // certificate verified), the plaintext one directly.
    assert!(
        mg.metric(
            "meshgate_listener_tls_handshake_total",
            &[("listener", "inner")]
        ) >= 1.0
    );
    assert!(tls_backend.hits() >= 1 && plain.hits() >= 1);
}

/// A SAN matcher that the upstream's certificate does not satisfy fails
/// the handshake (counted), even though the chain and the SNI are fine.
#[test]
fn upstream_san_matcher_refuses_the_wrong_identity() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: inner
    address: 127.0.0.1:0
    filter_chains:
      - tls: {{certificates: [{{certificate_chain: "{server}", private_key: "{server_key}"}}]}}
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        server = cert("server.pem"),
        server_key = cert("server.key"),
        addr = backend.addr,
    );
    let mg = Meshgate::start(&yaml);
    let inner = mg.listener_port("inner");
    let outer = |san: &str| {
        format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: outer
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: inner}}}}]}}
clusters:
  - name: inner
    endpoints: [{{address: "127.0.0.1:{inner}"}}]
    tls:
      sni: localhost
      trusted_ca: "{ca}"
      match_subject_alt_names: [{{san_type: dns, exact: "{san}"}}]
"#,
            ca = cert("ca.pem"),
        )
    };
    let good = Meshgate::start(&outer("localhost"));
    let (code, body) = http_get(good.listener_addr("outer"), "/").unwrap();
    assert_eq!(code, 200, "{body}");
    let bad = Meshgate::start(&outer("api.other.test"));
    let (code, _) = http_get(bad.listener_addr("outer"), "/").unwrap();
    assert_eq!(code, 503);
    assert!(
        bad.metric(
            "meshgate_cluster_upstream_tls_handshake_error_total",
            &[("cluster", "inner")]
        ) >= 1.0
    );
    assert_eq!(backend.hits(), 1);
}

/// TLS 1.0 minimums and cipher lists with nothing rustls implements are
/// NACKed naming the field; the listener served before keeps serving.
#[test]
fn tls10_minimum_and_unusable_cipher_lists_are_nacked_by_field() {
    use meshgate_tests::xds::*;
    let mgmt = Mgmt::start(0);
    let listener = |params: &str| {
        envoy_yaml(&format!(
            r#"- '@type': type.googleapis.com/envoy.config.listener.v3.Listener
  name: tls
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
  filter_chains:
  - transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        disable_stateful_session_resumption: true
        common_tls_context:
          tls_params: {params}
          tls_certificates:
          - certificate_chain: {{filename: "{server}"}}
            private_key: {{filename: "{server_key}"}}
    filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: tls
        cluster: xds
"#,
            server = cert("server.pem"),
            server_key = cert("server.key"),
        ))
    };
    mgmt.set(
        LISTENER,
        "1",
        listener("{cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256], ecdh_curves: [X25519]}"),
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    let nonce = mgmt.wait_sent(LISTENER, "1");
    assert!(mgmt.wait_reply(LISTENER, &nonce).error_detail.is_none());
    let port = wait_for_within(10, "the tls listener", || {
        mg.listeners()
            .iter()
            .any(|l| l["name"] == "tls" && l["bound"][0].is_string())
            .then(|| mg.listener_port("tls"))
    });
    for (version, params, field) in [
        (
            "2",
            "{tls_minimum_protocol_version: TLSv1_0}",
            "tls_params.tls_minimum_protocol_version",
        ),
        (
            "3",
            "{cipher_suites: [AES128-SHA, DES-CBC3-SHA]}",
            "tls_params.cipher_suites",
        ),
        ("4", "{ecdh_curves: [P-521]}", "tls_params.ecdh_curves"),
        (
            "5",
            "{cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256, NO-SUCH-CIPHER]}",
            "tls_params.cipher_suites[1]",
        ),
    ] {
        mgmt.set(LISTENER, version, listener(params));
        let nonce = mgmt.wait_sent(LISTENER, version);
        let r = mgmt.wait_reply(LISTENER, &nonce);
        let msg = r.error_detail.map(|e| e.message).unwrap_or_default();
        assert!(msg.contains(field), "{params}: {msg}");
        if version == "2" {
            assert!(msg.contains("TLS 1.2 and 1.3 only"), "{msg}");
        }
        assert_eq!(r.version_info, "1", "the old config stays");
    }
    let out = s_client(port, &["-servername", "localhost", "-tls1_2"]);
    assert!(
        out.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{out}"
    );
    assert!(out.contains("Server Temp Key: X25519"), "{out}");
}
