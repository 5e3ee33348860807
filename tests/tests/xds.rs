//! xDS end to end: a management server written here (tonic, over Envoy's
//! v3 protos from envoy-types, in this test process) drives the real
//! meshgate binary over ADS while keep-alive clients run through it.
//! Asserts: zero failed requests and no reset connection across a route
//! change, a weighted canary shift, an endpoint add and removal, a listener
//! change and a cluster removal; endpoint updates reaching an open
//! keep-alive connection without closing it; ACK and NACK contents; warming order and
//! subscriptions; reconnect after the server restarts, keeping the last
//! good config meanwhile.

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::xds::*;
use meshgate_tests::*;
use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_err()
}

/// `n` requests on the open connection `conn`: which backends answered.
/// Each must succeed and leave the connection open (no `connection:
/// close`), on the same local port as before.
fn on_open_connection(
    conn: &mut Option<BufReader<TcpStream>>,
    port: u16,
    n: usize,
) -> BTreeSet<String> {
    let local = conn.as_ref().map(|c| c.get_ref().local_addr().unwrap());
    let mut seen = BTreeSet::new();
    for i in 0..n {
        let got = request(conn, port, "/").unwrap_or_else(|| panic!("request {i} failed"));
        let Some(c) = conn.as_ref() else {
            panic!("the connection was closed after request {i} ({got})");
        };
        if let Some(l) = local {
            assert_eq!(
                c.get_ref().local_addr().unwrap(),
                l,
                "not the same connection"
            );
        }
        seen.insert(got);
    }
    seen
}

fn backends(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("backend={n}")).collect()
}

/// What `resource` is shown warming for in `/config_dump` (empty: not
/// warming).
fn warming_for(mg: &Meshgate, resource: &str) -> Vec<String> {
    mg.config_dump()["dynamic"]["warming"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["resource"] == resource)
        .flat_map(|w| w["waiting_for"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Sets a resource version and waits for its ACK (applied by then).

// ---------------------------------------------------------------- tests

#[test]
fn updates_under_load_lose_no_request() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let c = HttpBackend::start("c", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "c1",
        vec![eds_cluster("svc-a"), eds_cluster("svc-b")],
    );
    mgmt.set(
        ENDPOINT,
        "e1",
        vec![
            cla("svc-a", &[(a.addr, 1, 0)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");

    let load = Load::start(port, 6);
    load.wait_more(50);

    // Route change: everything to svc-b.
    mgmt.set(ROUTE, "r2", vec![route_config("r1", &[("svc-b", 1)])]);
    wait_for(port, "/", "backend=b");
    load.wait_more(50);

    // Weighted canary shift: 90/10, then 10/90; both answer under load.
    // Each sample starts once the ACK says the version applied and the
    // requests in flight then have been answered.
    mgmt.set_acked(
        ROUTE,
        "r3",
        vec![route_config("r1", &[("svc-a", 90), ("svc-b", 10)])],
    );
    load.sample(30, 300);
    let (sa, sb) = (load.seen("a"), load.seen("b"));
    assert!(sa > sb * 3 && sb > 0, "90/10 split saw a={sa} b={sb}");
    mgmt.set_acked(
        ROUTE,
        "r4",
        vec![route_config("r1", &[("svc-a", 10), ("svc-b", 90)])],
    );
    load.sample(30, 300);
    let (sa, sb) = (load.seen("a"), load.seen("b"));
    assert!(sb > sa * 3 && sa > 0, "10/90 split saw a={sa} b={sb}");

    // Endpoint add: svc-a gets c too (route back to svc-a only).
    mgmt.set_acked(ROUTE, "r5", vec![route_config("r1", &[("svc-a", 1)])]);
    mgmt.set_acked(
        ENDPOINT,
        "e2",
        vec![
            cla("svc-a", &[(a.addr, 1, 0), (c.addr, 1, 0)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    load.sample(30, 300);
    assert!(
        load.seen("a") > 0 && load.seen("c") > 0,
        "endpoint add: a={} c={}",
        load.seen("a"),
        load.seen("c")
    );
    // Endpoint removal: a leaves (and an UNHEALTHY endpoint gets nothing).
    mgmt.set_acked(
        ENDPOINT,
        "e3",
        vec![
            cla("svc-a", &[(c.addr, 1, 0), (a.addr, 1, 2)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    load.sample(30, 300);
    assert!(
        load.seen("a") == 0 && load.seen("c") > 0,
        "endpoint removal: a={} c={}",
        load.seen("a"),
        load.seen("c")
    );

    // Listener change: same address, now on route configuration r9
    // (warms first: it is served once r9 arrives).
    mgmt.set(
        ROUTE,
        "r6",
        vec![
            route_config("r1", &[("svc-a", 1)]),
            route_config("r9", &[("svc-b", 1)]),
        ],
    );
    mgmt.set(LISTENER, "l2", vec![hcm_listener("web", port, "r9")]);
    wait_for(port, "/", "backend=b");
    wait_for(port, "/direct", "direct from r9");

    // Cluster removal: svc-a is no longer routed to, then leaves CDS.
    mgmt.set(CLUSTER, "c2", vec![eds_cluster("svc-b")]);
    let nonce = mgmt.wait_sent(CLUSTER, "c2");
    let ack = mgmt.wait_reply(CLUSTER, &nonce);
    assert_eq!(ack.version_info, "c2");
    assert!(ack.error_detail.is_none(), "{ack:?}");
    // Load goes on across the removal, and long enough to count.
    load.wait_more(50);
    wait_until("300 requests under load", || load.ok() > 300);

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 300, "only {ok} requests");
    let (_, dump) = mg.admin_get("/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters: Vec<&str> = dump["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, vec!["xds", "svc-b"], "{dump}");
    let dynv = dump["dynamic"]["version"].as_str().unwrap();
    assert!(dynv.contains("lds=l2") && dynv.contains("cds=c2"), "{dump}");
    assert!(
        dump["source"].as_str().unwrap().contains("xds:ads"),
        "{dump}"
    );
    assert!(mg.metric("meshgate_xds_response_total", &[("result", "ack")]) >= 10.0);
    assert_eq!(
        mg.metric("meshgate_xds_response_total", &[("result", "nack")]),
        0.0
    );

    // The node identity was sent.
    let first = &mgmt.requests()[0];
    let node = first.node.as_ref().unwrap();
    assert_eq!(node.id, "test-node");
    assert_eq!(node.cluster, "test-cluster");
    assert!(format!("{:?}", node.metadata).contains("edge"));
}

#[test]
fn nack_names_resource_and_field_and_keeps_the_previous_config() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let tport = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 2);

    // A cluster with a field meshgate does not implement.
    mgmt.set(
        CLUSTER,
        "2",
        vec![
            static_cluster("svc-a", a.addr),
            cluster_with_unsupported_field("svc-bad", a.addr),
        ],
    );
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let nack = mgmt.wait_reply(CLUSTER, &nonce);
    assert_eq!(nack.version_info, "1", "NACK carries the previous version");
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("Cluster 'svc-bad'")
            && detail.message.contains("outlier_detection.monitors"),
        "{}",
        detail.message
    );

    // A listener that core refuses (a route to an unknown cluster is held
    // warming, so use a listener on the admin's address: bind conflict is
    // caught by the build) — and a tcp_proxy listener that is fine.
    let admin_port = mg.admin.unwrap().port();
    mgmt.set(
        LISTENER,
        "3",
        vec![
            hcm_listener("web", port, "r"),
            tcp_listener("tcp", tport, "svc-a"),
            hcm_listener("clash", admin_port, "r"),
        ],
    );
    let nonce = mgmt.wait_sent(LISTENER, "3");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    assert_eq!(nack.version_info, "1");
    let msg = nack.error_detail.expect("error_detail").message;
    assert!(
        msg.contains("Listener 'clash'") && msg.contains("address"),
        "{msg}"
    );
    assert!(refused(tport), "a refused update applies nothing");

    // Fixed: accepted, ACK with the new version and its nonce.
    mgmt.set(
        LISTENER,
        "4",
        vec![
            hcm_listener("web", port, "r"),
            tcp_listener("tcp", tport, "svc-a"),
        ],
    );
    let nonce = mgmt.wait_sent(LISTENER, "4");
    let ack = mgmt.wait_reply(LISTENER, &nonce);
    assert_eq!(ack.version_info, "4");
    assert!(ack.error_detail.is_none());
    wait_until("tcp_proxy listener", || !refused(tport));
    let mut s = TcpStream::connect(("127.0.0.1", tport)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("backend=a"), "{out}");

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
    assert!(
        mg.metric(
            "meshgate_xds_response_total",
            &[("type", "cds"), ("result", "nack")]
        ) >= 1.0
    );
}

#[test]
fn warming_and_subscriptions_follow_resources_in_use() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", vec![eds_cluster("svc-a")]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // Subscriptions: EDS for the cluster's name, RDS for the listener's.
    wait_until("EDS subscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ENDPOINT && r.resource_names == ["svc-a"])
    });
    wait_until("RDS subscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ROUTE && r.resource_names == ["r1"])
    });
    // Shown warming, waiting for its routes: not served.
    wait_until("the listener warming for its routes", || {
        warming_for(&mg, "Listener 'web'") == ["RouteConfiguration 'r1'"]
    });
    assert!(refused(port), "listener served before its routes");

    // Routes arrive, but the cluster has no endpoints yet: still warming.
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc-a", 1)])]);
    let nonce = mgmt.wait_sent(ROUTE, "1");
    let ack = mgmt.wait_reply(ROUTE, &nonce);
    assert_eq!(ack.version_info, "1");
    wait_until("the listener warming for its cluster", || {
        warming_for(&mg, "Listener 'web'") == ["Cluster 'svc-a'"]
    });
    assert!(refused(port), "listener served before its cluster warmed");

    // Endpoints arrive: the cluster warms, then the listener serves.
    mgmt.set(ENDPOINT, "1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    wait_for(port, "/", "backend=a");

    // The listener moves to r2: RDS subscription follows.
    mgmt.set(
        ROUTE,
        "2",
        vec![
            route_config("r1", &[("svc-a", 1)]),
            route_config("r2", &[("svc-a", 1)]),
        ],
    );
    mgmt.set(LISTENER, "2", vec![hcm_listener("web", port, "r2")]);
    wait_until("RDS resubscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ROUTE && r.resource_names == ["r2"])
    });
    wait_for(port, "/direct", "direct from r2");
}

#[test]
fn reconnects_after_the_server_restarts_and_keeps_serving_meanwhile() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // The restarted server comes back on this same port.
    let xport = mgmt.addr.port();
    mgmt.set(
        CLUSTER,
        "1",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-b", b.addr),
        ],
    );
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(xport));
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 4);

    let shared = mgmt.stop();
    wait_until("disconnect seen", || {
        mg.metric("meshgate_xds_connected", &[]) == 0.0
    });
    // It tries again and fails while the server is away, serving on.
    wait_until("a failed reconnect", || {
        mg.metric("meshgate_xds_stream_total", &[("result", "connect_error")]) >= 1.0
    });
    load.wait_more(20);
    assert_eq!(
        get(port, "/").as_deref(),
        Some("backend=a"),
        "last good config serves"
    );

    // A new server on the same port, with a new route.
    shared.lock().unwrap().requests.clear();
    let mgmt = Mgmt::start_with(xport, shared);
    mgmt.set(ROUTE, "2", vec![route_config("r", &[("svc-b", 1)])]);
    wait_for(port, "/", "backend=b");
    // The re-opened stream told the server what it had.
    let reqs = mgmt.requests();
    let lds_first = reqs.iter().find(|r| r.type_url == LISTENER).unwrap();
    assert_eq!(lds_first.version_info, "1", "{lds_first:?}");
    assert!(lds_first.response_nonce.is_empty());
    let rds_first = reqs.iter().find(|r| r.type_url == ROUTE).unwrap();
    assert_eq!(rds_first.resource_names, ["r"]);
    assert!(mg.metric("meshgate_xds_stream_total", &[("result", "ok")]) >= 2.0);

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}

#[test]
fn file_reload_keeps_the_dynamic_resources() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let sport = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let boot = bootstrap(mgmt.addr.port());
    let mg = Meshgate::start_with_args(&boot, &["--watch-interval", "100ms"]);
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 2);
    // The file gains a static listener; the dynamic one stays.
    let more = mg.fill(&format!(
        "{boot}listeners:\n  - name: static\n    address: 127.0.0.1:{sport}\n    filter_chains:\n      - filters:\n          - name: tcp_proxy\n            config: {{cluster: xds}}\n"
    ));
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, more).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
    wait_until("static listener", || !refused(sport));
    assert_eq!(get(port, "/").as_deref(), Some("backend=a"));
    let (_, dump) = mg.admin_get("/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = dump["config"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["static", "web"], "{dump}");
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}

#[test]
fn bootstrap_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.yaml");
    let cases = [
        (
            "dynamic_resources: {ads: {cluster: xds}}\nclusters: [{name: xds, endpoints: [{address: 127.0.0.1:1}]}]\n",
            "dynamic_resources: xDS needs a `node` section",
        ),
        (
            "node: {id: n}\ndynamic_resources: {ads: {cluster: nope}}\n",
            "x.yaml:2: dynamic_resources.ads.cluster: unknown cluster 'nope'",
        ),
        (
            "node: {id: n}\ndynamic_resources: {ads: {cluster: xds, bogus: 1}}\n",
            "unknown field `bogus`",
        ),
    ];
    for (yaml, want) in cases {
        std::fs::write(&p, yaml).unwrap();
        let (code, _, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_eq!(code, 1, "{yaml}");
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

// ------------------------------------------------------------------ SDS

/// A server certificate for `localhost`/127.0.0.1 signed by the demo CA,
/// made with openssl in `dir`: (chain PEM, key PEM).
fn fresh_server_cert(dir: &std::path::Path, name: &str) -> (String, String) {
    let certs = workspace().join("examples/certs");
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |x: &std::path::Path| x.to_string_lossy().into_owned();
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p(&key),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        &format!("/O=meshgate test/CN={name}"),
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&certs.join("ca.pem")),
        "-CAkey",
        &p(&certs.join("ca.key")),
        "-set_serial",
        &format!("{}", std::process::id() as u64 * 100 + name.len() as u64),
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ]);
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = workspace().join("examples/certs/ca.pem");
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every new connection is a full handshake that shows the certificate.
    c.resumption = rustls::client::Resumption::disabled();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(c)
}

type TlsConn = std::io::BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A new TLS connection; returns it and the server's leaf certificate.
fn tls_connect(
    port: u16,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<(TlsConn, Vec<u8>)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let conn = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    let leaf = s.conn.peer_certificates()?.first()?.to_vec();
    Some((std::io::BufReader::new(s), leaf))
}

/// One GET on a TLS keep-alive connection: the body of a whole 200
/// response, or None.
fn tls_get(c: &mut TlsConn, path: &str) -> Option<String> {
    c.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    c.get_mut().flush().ok()?;
    let reply = read_reply(c)?;
    // Being retired is a failure here: a rotation must not close open
    // connections.
    (reply.status == 200 && !reply.close).then_some(reply.body)
}

#[test]
fn sds_certificate_rotation_under_load_loses_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (chain1, key1) = fresh_server_cert(tmp.path(), "first");
    let (chain2, key2) = fresh_server_cert(tmp.path(), "second");
    let (der1, der2) = (der_of(&chain1), der_of(&chain2));
    assert_ne!(der1, der2);
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "1", vec![eds_cluster("svc-a")]);
    mgmt.set(ENDPOINT, "1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc-a", 1)])]);
    mgmt.set(
        LISTENER,
        "1",
        vec![tls_hcm_listener("web", port, "r1", "server-cert")],
    );
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // Warming: the listener waits for its secret, subscribed by name.
    wait_until("SDS subscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == SECRET && r.resource_names == ["server-cert"])
    });
    wait_until("the listener warming for its secret", || {
        warming_for(&mg, "Listener 'web'")
            .iter()
            .any(|w| w.contains("server-cert"))
    });
    assert!(
        refused(port),
        "listener served before its certificate arrived"
    );
    mgmt.set(
        SECRET,
        "s1",
        vec![cert_secret("server-cert", &chain1, &key1)],
    );
    let cfg = tls_client_config();
    wait_until("TLS listener serving", || {
        tls_connect(port, &cfg)
            .and_then(|(mut c, _)| tls_get(&mut c, "/"))
            .is_some_and(|b| b.contains("backend=a"))
    });

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // New connections: (handshake start, leaf DER, request ok).
    type Seen = Vec<(Instant, Vec<u8>, bool)>;
    let seen_live = std::sync::Arc::new(std::sync::Mutex::new(Seen::new()));
    let fresh = {
        let (stop, cfg, seen) = (stop.clone(), cfg.clone(), seen_live.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let r = tls_connect(port, &cfg);
                let one = match r {
                    Some((mut c, leaf)) => {
                        let ok = tls_get(&mut c, "/").is_some_and(|b| b.contains("backend=a"));
                        (at, leaf, ok)
                    }
                    None => (at, Vec::new(), false),
                };
                seen.lock().unwrap().push(one);
            }
        })
    };
    let kept_count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // One keep-alive connection opened before the rotation: (requests,
    // failures, its certificate).
    let kept = {
        let (stop, cfg, count) = (stop.clone(), cfg.clone(), kept_count.clone());
        std::thread::spawn(move || {
            let (mut c, leaf) = tls_connect(port, &cfg).expect("keep-alive connection");
            let (mut n, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match tls_get(&mut c, "/") {
                    Some(b) if b.contains("backend=a") => {
                        n += 1;
                        count.store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {
                        failed += 1;
                        break;
                    }
                }
            }
            (n, failed, leaf)
        })
    };
    // Both clients are under way on the first certificate.
    wait_until(
        "handshakes and keep-alive requests before the rotation",
        || {
            let fresh_n = seen_live
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.1 == der1)
                .count();
            // (A failed keep-alive connection ends its thread: asserted below.)
            fresh_n >= 5
                && (kept_count.load(std::sync::atomic::Ordering::Relaxed) >= 5
                    || kept.is_finished())
        },
    );
    mgmt.set(
        SECRET,
        "s2",
        vec![cert_secret("server-cert", &chain2, &key2)],
    );
    let nonce = mgmt.wait_sent(SECRET, "s2");
    let ack = mgmt.wait_reply(SECRET, &nonce);
    let acked = Instant::now();
    assert_eq!(ack.version_info, "s2", "ACK carries the new version");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(ack.resource_names, ["server-cert"]);
    // Enough new handshakes after the ACK, and the kept connection went on.
    let kept_at_ack = kept_count.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("handshakes after the ACK", || {
        let after = seen_live
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.0 > acked)
            .count();
        after > 5
            && (kept_count.load(std::sync::atomic::Ordering::Relaxed) > kept_at_ack.max(10)
                || kept.is_finished())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    fresh.join().unwrap();
    let seen = std::mem::take(&mut *seen_live.lock().unwrap());
    let (kept_n, kept_failed, kept_leaf) = kept.join().unwrap();

    let failed = seen.iter().filter(|s| !s.2).count();
    assert_eq!(failed, 0, "failed requests on new connections");
    assert_eq!(
        kept_failed, 0,
        "the keep-alive connection was closed or failed"
    );
    assert!(
        kept_n > 10,
        "keep-alive connection made only {kept_n} requests"
    );
    assert_eq!(kept_leaf, der1);
    assert!(
        seen.iter().any(|s| s.1 == der1),
        "no handshake before the rotation"
    );
    let after: Vec<_> = seen.iter().filter(|s| s.0 > acked).collect();
    assert!(
        after.len() > 5,
        "too few handshakes after the ACK: {}",
        after.len()
    );
    assert!(
        after.iter().all(|s| s.1 == der2),
        "a handshake after the ACK presented the old certificate"
    );
    // The rotation did not retire the listener.
    assert!(
        !mg.log_text().contains("open connections retire"),
        "listener was retired"
    );
    // Private keys never show in /config_dump.
    let (_, dump) = mg.admin_get("/config_dump");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "config_dump shows a private key"
    );
    assert!(dump.contains("[redacted]"));
}

// ------------------------------------------------------- TLS to the xDS server

fn demo_server_tls() -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = workspace().join("examples/certs");
    let certs: Vec<_> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap()
}

/// The bootstrap with TLS to the ADS cluster, trusting `ca`.
fn tls_bootstrap(xds_port: u16, ca: &str) -> String {
    let ca = workspace().join("examples/certs").join(ca);
    format!(
        "{}    tls: {{trusted_ca: \"{}\", sni: localhost}}\n",
        bootstrap(xds_port),
        ca.display()
    )
}

#[test]
fn ads_over_tls_gets_config_and_a_wrong_ca_is_counted_and_retried() {
    let a = HttpBackend::start("a", Proto::Http1);
    let resources = |mgmt: &Mgmt, port: u16| {
        mgmt.set(CLUSTER, "1", vec![static_cluster("svc-a", a.addr)]);
        mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
        mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc-a", 1)])]);
    };

    // The right CA: config arrives over TLS and serves.
    let port = free_port();
    let mgmt = Mgmt::start_tls(0, demo_server_tls());
    resources(&mgmt, port);
    let mg = Meshgate::start(&tls_bootstrap(mgmt.addr.port(), "ca.pem"));
    wait_for(port, "/", "backend=a");
    let first = mgmt
        .requests()
        .into_iter()
        .next()
        .expect("a request over TLS");
    assert_eq!(first.node.unwrap().id, "test-node");
    drop(mg);

    // A wrong CA: no stream, each failure logged and counted, retried
    // with back-off; nothing is served.
    let port = free_port();
    let mgmt = Mgmt::start_tls(0, demo_server_tls());
    resources(&mgmt, port);
    let mg = Meshgate::start(&tls_bootstrap(mgmt.addr.port(), "rogue-ca.pem"));
    wait_until("two failed TLS connects", || {
        mg.metric("meshgate_xds_stream_total", &[("result", "connect_error")]) >= 2.0
    });
    assert!(
        mg.metric(
            "meshgate_xds_tls_handshake_error_total",
            &[("reason", "unknown_ca")]
        ) >= 2.0
    );
    assert!(mg.log_text().contains("cannot connect to the ADS server"));
    assert!(
        mgmt.requests().is_empty(),
        "a request passed a failed handshake"
    );
    assert!(refused(port));
}

#[test]
fn endpoint_updates_reach_an_open_connection_without_closing_it() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let c = HttpBackend::start("c", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![eds_cluster("svc-a")]);
    mgmt.set(ENDPOINT, "e1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    let mut conn = None;
    assert_eq!(on_open_connection(&mut conn, port, 3), backends(&["a"]));

    // An endpoint joins: the next requests on the connection reach both.
    mgmt.set_acked(
        ENDPOINT,
        "e2",
        vec![cla("svc-a", &[(a.addr, 1, 0), (b.addr, 1, 0)])],
    );
    assert_eq!(
        on_open_connection(&mut conn, port, 6),
        backends(&["a", "b"])
    );
    assert!(established_to(a.addr) >= 1, "no pooled connection to a");
    // One leaves and another joins: a gets nothing any more, and its pool
    // is gone (its idle connection closed).
    mgmt.set_acked(
        ENDPOINT,
        "e3",
        vec![cla("svc-a", &[(b.addr, 1, 0), (c.addr, 1, 0)])],
    );
    assert_eq!(
        on_open_connection(&mut conn, port, 6),
        backends(&["b", "c"])
    );
    wait_until("the pool of a drained", || established_to(a.addr) == 0);
    // Down to one endpoint.
    mgmt.set_acked(ENDPOINT, "e4", vec![cla("svc-a", &[(c.addr, 1, 0)])]);
    assert_eq!(on_open_connection(&mut conn, port, 3), backends(&["c"]));
    wait_until("the pool of b drained", || established_to(b.addr) == 0);
    assert!(established_to(c.addr) >= 1, "no pooled connection to c");
    assert!(
        !mg.log_text().contains("open connections retire"),
        "a listener was replaced: {}",
        mg.log_text()
    );

    // Under load from other connections: none of their requests fails.
    let load = Load::start(port, 4);
    load.wait_more(20);
    // A setting of the cluster changes (connect timeout): connections
    // using it retire gracefully, the next response says `connection:
    // close`.
    let changed = cds::Cluster {
        connect_timeout: Some(PbDuration {
            seconds: 2,
            nanos: 0,
        }),
        ..eds_cluster_msg("svc-a")
    };
    let changed = ("svc-a".to_string(), any(CLUSTER, &changed));
    mgmt.set_acked(CLUSTER, "c2", vec![changed]);
    let got = request(&mut conn, port, "/").expect("request after a cluster setting change");
    assert_eq!(got, "backend=c");
    assert!(conn.is_none(), "the connection was not retired");
    // The load goes on past the change before it is counted.
    load.wait_more(20);
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 0, "the load made no request");
}
