//! The PROXY protocol listener filter (`envoy.filters.listener.proxy_protocol`)
//! against real peers: curl's `--haproxy-protocol` (v1), HAProxy with
//! `send-proxy-v2` in front of meshgate, raw sockets writing v1 and v2
//! headers (the header's source replaces the peer for RBAC `remote_ip`,
//! `x-forwarded-for`; `direct_remote_ip` keeps the real peer; a TLV becomes
//! dynamic metadata an RBAC `metadata` principal matches) and hostile
//! headers (garbage, oversized, malformed, slow, disallowed version), each
//! closed and counted; and the filter translated from a real xDS control
//! plane in front of `tcp_proxy`.

use meshgate_core::metrics::names::{
    LISTENER_PROXY_PROTOCOL_ERROR_TOTAL, LISTENER_PROXY_PROTOCOL_FOUND_TOTAL,
};
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TLV_TENANT: u8 = 0xE0;

/// A v2 PROXY header (PROXY command, TCP over IPv4) with TLVs.
fn v2(src: &str, dst: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut body = Vec::new();
    body.extend_from_slice(&s.ip().octets());
    body.extend_from_slice(&d.ip().octets());
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(0x11);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// Sends `prefix` then a GET of `path` on one connection; returns what came
/// back before the close ("" when meshgate closed without answering).
fn raw_get(port: u16, prefix: &[u8], path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = prefix.to_vec();
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let _ = s.write_all(&out);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Sends `bytes` and waits for meshgate to close; true when it closed
/// without writing anything.
fn closed_silently(port: u16, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        // A reset (unread bytes at close) is a close too.
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// An HTTP listener behind the PROXY protocol filter, `rbac` per route:
/// `/remote` lets 203.0.113.0/24 in by `remote_ip`, `/direct` by
/// `direct_remote_ip`, `/tenant` a header whose TLV 0xE0 says `tenant-a`.
fn http_config(port: u16, backend: SocketAddr, pp: &str) -> String {
    let route = |prefix: &str, principal: &str| {
        format!(
            r#"                      - match: {{prefix: {prefix}}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          rbac:
                            rbac:
                              rules:
                                policies:
                                  p:
                                    permissions: [{{any: true}}]
                                    principals: [{principal}]
"#
        )
    };
    let routes = route(
        "/remote",
        "{remote_ip: {address_prefix: 203.0.113.0, prefix_len: 24}}",
    ) + &route(
        "/direct",
        "{direct_remote_ip: {address_prefix: 203.0.113.0, prefix_len: 24}}",
    ) + &route(
        "/tenant",
        "{metadata: {filter: envoy.filters.listener.proxy_protocol, path: [{key: tenant}], value: {string_match: {exact: tenant-a}}}}",
    );
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    listener_filters_timeout: 300ms
    listener_filters:
      - name: envoy.filters.listener.proxy_protocol
        config:
{pp}          rules:
            - tlv_type: {TLV_TENANT}
              on_tlv_present: {{key: tenant}}
    filter_chains:
      - filters:
          - name: proxy
            config:
              use_remote_address: true
              stream_filters:
                - name: rbac
                  config: {{}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
{routes}                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#
    )
}

fn found(mg: &Meshgate, version: &str) -> f64 {
    mg.metric(
        LISTENER_PROXY_PROTOCOL_FOUND_TOTAL,
        &[("listener", "web"), ("version", version)],
    )
}

fn errors(mg: &Meshgate, reason: &str) -> f64 {
    mg.metric(
        LISTENER_PROXY_PROTOCOL_ERROR_TOTAL,
        &[("listener", "web"), ("reason", reason)],
    )
}

#[test]
fn header_source_replaces_the_peer_for_rbac_xff_and_tlv_metadata() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&http_config(port, backend.addr, ""));
    let dst = format!("127.0.0.1:{port}");

    // curl's own v1 header: its real address, 127.0.0.1.
    let (code, body) = curl(&["--haproxy-protocol", &format!("http://{dst}/")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-forwarded-for=127.0.0.1\n"), "{body}");
    assert_eq!(found(&mg, "v1"), 1.0);

    // A v1 header naming 203.0.113.9: XFF and remote_ip see it,
    // direct_remote_ip still sees the TCP peer (127.0.0.1).
    let v1 = format!("PROXY TCP4 203.0.113.9 127.0.0.1 4000 {port}\r\n");
    let r = raw_get(port, v1.as_bytes(), "/");
    assert!(r.contains("x-forwarded-for=203.0.113.9\n"), "{r}");
    assert_eq!(status(&raw_get(port, v1.as_bytes(), "/remote")), 200);
    assert_eq!(status(&raw_get(port, v1.as_bytes(), "/direct")), 403);
    // Without the header's address, remote_ip refuses.
    let local = format!("PROXY TCP4 127.0.0.1 127.0.0.1 4000 {port}\r\n");
    assert_eq!(status(&raw_get(port, local.as_bytes(), "/remote")), 403);

    // v2 with a TLV: the address and the TLV's metadata.
    let a = v2("203.0.113.7:5000", &dst, &[(TLV_TENANT, b"tenant-a")]);
    let r = raw_get(port, &a, "/");
    assert!(r.contains("x-forwarded-for=203.0.113.7\n"), "{r}");
    assert_eq!(status(&raw_get(port, &a, "/tenant")), 200);
    let b = v2("203.0.113.7:5000", &dst, &[(TLV_TENANT, b"tenant-b")]);
    assert_eq!(status(&raw_get(port, &b, "/tenant")), 403);
    let none = v2("203.0.113.7:5000", &dst, &[]);
    assert_eq!(status(&raw_get(port, &none, "/tenant")), 403);
    assert_eq!(found(&mg, "v2"), 4.0);

    // v2 LOCAL (a health check from the proxy): the real addresses stay.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let r = raw_get(port, &local, "/");
    assert!(r.contains("x-forwarded-for=127.0.0.1\n"), "{r}");
    assert_eq!(found(&mg, "v2_local"), 1.0);
}

#[test]
fn hostile_headers_are_closed_and_counted() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&http_config(port, backend.addr, ""));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());

    // No header on a listener that requires one.
    assert!(closed_silently(
        port,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    ));
    mg.wait_metric(
        LISTENER_PROXY_PROTOCOL_ERROR_TOTAL,
        &[("listener", "web"), ("reason", "not_proxy")],
        |v| v == 1.0,
    );
    // A v1 line past 107 bytes.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    assert!(closed_silently(port, &long));
    // A lying v1 header (port out of range) and a lying v2 one (IPv6
    // family with an IPv4-sized address block).
    assert!(closed_silently(
        port,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET / HTTP/1.1\r\n\r\n"
    ));
    let mut lie = v2("1.2.3.4:1", "5.6.7.8:2", &[]);
    lie[13] = 0x21;
    assert!(closed_silently(port, &lie));
    // A v2 header announcing 60 KB (past meshgate's 4 KiB bound).
    let mut big = v2("1.2.3.4:1", "5.6.7.8:2", &[]);
    big[14..16].copy_from_slice(&60000u16.to_be_bytes());
    assert!(closed_silently(port, &big));
    // A header that never completes: closed at listener_filters_timeout.
    let started = std::time::Instant::now();
    assert!(closed_silently(port, b"PROXY TCP4 1.2.3.4"));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(errors(&mg, "oversized"), 2.0);
    assert_eq!(errors(&mg, "malformed"), 2.0);
    mg.wait_metric(
        LISTENER_PROXY_PROTOCOL_ERROR_TOTAL,
        &[("listener", "web"), ("reason", "timeout")],
        |v| v == 1.0,
    );
    assert_eq!(backend.hits(), 0, "nothing reached the upstream");
    // Still serving.
    let ok = format!("PROXY TCP4 203.0.113.9 127.0.0.1 4000 {port}\r\n");
    assert_eq!(status(&raw_get(port, ok.as_bytes(), "/")), 200);
}

#[test]
fn optional_header_and_disallowed_version() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let pp = "          allow_requests_without_proxy_protocol: true\n          disallowed_versions: [V1]\n";
    let mg = Meshgate::start(&http_config(port, backend.addr, pp));
    // Plain curl: no header, its own address.
    let (code, body) = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-forwarded-for=127.0.0.1\n"), "{body}");
    assert_eq!(found(&mg, "none"), 1.0);
    // v1 refused, v2 taken.
    let (code, _) = curl(&["--haproxy-protocol", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 0);
    assert_eq!(errors(&mg, "disallowed_version"), 1.0);
    let a = v2("203.0.113.7:5000", &format!("127.0.0.1:{port}"), &[]);
    assert_eq!(status(&raw_get(port, &a, "/remote")), 200);
    assert_eq!(backend.hits(), 2);
}

/// HAProxy in TCP mode with `send-proxy-v2` in front of meshgate; the client
/// connects to HAProxy from 127.0.0.3.
struct Haproxy(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn haproxy_send_proxy_v2_in_front() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start(&http_config(port, backend.addr, ""));
    let hport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind 127.0.0.1:{hport}\n  default_backend b\n\
             backend b\n  server mg 127.0.0.1:{port} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    let _h = Haproxy(child, dir);
    wait_listening(format!("127.0.0.1:{hport}").parse().unwrap());
    let url = format!("http://127.0.0.1:{hport}/");
    let (code, body) = curl(&["--interface", "127.0.0.3", &url]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-forwarded-for=127.0.0.3\n"), "{body}");
    assert!(found(&mg, "v2") >= 1.0);
}

/// A raw upstream that records every byte it receives.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let seen = s2.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        let _ = s.write_all(b"ok\n");
                    }
                });
            }
        });
        Self { addr, seen }
    }
}

#[test]
fn listener_filter_and_upstream_transport_socket_from_xds_with_tcp_proxy() {
    use envoy_types::pb::envoy::config::cluster::v3 as cds;
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3 as pp;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3 as ups;
    use meshgate_tests::xds::*;
    use prost::Message;

    let up = Recorder::start();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    // The cluster sends a v1 header upstream (raw TCP under it).
    let (cname, c) = static_cluster("raw", up.addr);
    let mut c = cds::Cluster::decode(c.value.as_slice()).unwrap();
    c.transport_socket = Some(core3::TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
        config_type: Some(core3::transport_socket::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            &ups::ProxyProtocolUpstreamTransport {
                config: Some(core3::ProxyProtocolConfig::default()),
                transport_socket: None,
                ..Default::default()
            },
        ))),
    });
    mgmt.set(CLUSTER, "c1", vec![(cname, any(CLUSTER, &c))]);
    let (name, l) = tcp_listener("web", port, "raw");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    l.listener_filters.push(lds::ListenerFilter {
        name: "envoy.filters.listener.proxy_protocol".into(),
        config_type: Some(lds::listener_filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            &pp::ProxyProtocol::default(),
        ))),
        ..Default::default()
    });
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    // The header is taken off; the upstream sees the cluster's own header
    // (the addresses the downstream's header gave) and the payload.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("PROXY TCP4 203.0.113.9 127.0.0.1 4000 {port}\r\nhello\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok\n");
    let want = format!("PROXY TCP4 203.0.113.9 127.0.0.1 4000 {port}\r\nhello\n");
    // The recorder answers each read: the payload may come in a later one.
    wait_until("the header and the payload upstream", || {
        up.seen.lock().unwrap().len() >= want.len()
    });
    assert_eq!(String::from_utf8_lossy(&up.seen.lock().unwrap()), want);
    assert_eq!(found(&mg, "v1"), 1.0);
    // Without a header: closed, counted, the upstream sees nothing more.
    assert!(closed_silently(port, b"hello again\n"));
    mg.wait_metric(
        LISTENER_PROXY_PROTOCOL_ERROR_TOTAL,
        &[("listener", "web"), ("reason", "not_proxy")],
        |v| v == 1.0,
    );
    assert_eq!(String::from_utf8_lossy(&up.seen.lock().unwrap()), want);
}

/// meshgate's `tcp_proxy` to a cluster with `proxy_protocol`: the raw
/// upstream sees exactly the v2 header (the downstream header's addresses
/// and the one TLV `pass_through_tlvs` lets through) then the payload.
#[test]
fn tcp_proxy_sends_a_v2_header_with_passed_through_tlvs() {
    let up = Recorder::start();
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    listener_filters:
      - name: envoy.filters.listener.proxy_protocol
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {{cluster: up}}
clusters:
  - name: up
    proxy_protocol:
      version: V2
      pass_through_tlvs: {{match_type: INCLUDE, tlv_type: [{TLV_TENANT}]}}
    endpoints: [{{address: "{a}"}}]
"#,
        a = up.addr
    );
    let mg = Meshgate::start(&yaml);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = v2(
        "203.0.113.9:5000",
        "10.1.2.3:443",
        &[(TLV_TENANT, b"tenant-a"), (0xE1, b"private")],
    );
    out.extend_from_slice(b"hello\n");
    s.write_all(&out).unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    let mut want = v2(
        "203.0.113.9:5000",
        "10.1.2.3:443",
        &[(TLV_TENANT, b"tenant-a")],
    );
    want.extend_from_slice(b"hello\n");
    // The recorder answers each read: the header may have come alone,
    // its payload in a later read.
    wait_until("the header and the payload upstream", || {
        up.seen.lock().unwrap().len() >= want.len()
    });
    assert_eq!(*up.seen.lock().unwrap(), want);
    assert_eq!(found(&mg, "v2"), 1.0);
}

/// meshgate in front of HAProxy (`accept-proxy`), which answers with the
/// client address it was told (`%ci`): curl connects from 127.0.0.3.
/// An HTTP route to the same cluster is served too, on a connection of
/// its own (tests/tests/proxy_protocol_upstream.rs tests it further).
#[test]
fn haproxy_accept_proxy_behind_meshgate_sees_the_client() {
    let hport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind 127.0.0.1:{hport} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"ci=%ci\"\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    let _h = Haproxy(child, dir);
    let (port, http_port) = (free_port(), free_port());
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: tcp
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {{cluster: haproxy}}
  - name: http
    address: 127.0.0.1:{http_port}
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
                        route: {{cluster: haproxy}}
clusters:
  - name: haproxy
    proxy_protocol: {{version: V1}}
    endpoints: [{{address: "127.0.0.1:{hport}"}}]
"#
    );
    let _mg = Meshgate::start(&yaml);
    wait_listening(format!("127.0.0.1:{hport}").parse().unwrap());
    let (code, body) = curl(&[
        "--interface",
        "127.0.0.3",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!((code, body.as_str()), (200, "ci=127.0.0.3"));
    let (code, body) = curl(&[
        "--interface",
        "127.0.0.4",
        &format!("http://127.0.0.1:{http_port}/"),
    ]);
    assert_eq!((code, body.as_str()), (200, "ci=127.0.0.4"));
}
