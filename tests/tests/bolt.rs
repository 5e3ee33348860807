//! SOFA Bolt v1 end to end through the real meshgate binary, sofa-rpc-node
//! providers and consumer on both sides: routing by service to two
//! providers, calls multiplexed on one upstream connection, heartbeats
//! answered by meshgate, meshgate's own Bolt error statuses with readable
//! messages, hostile input. And protocol detection: HTTP/1, HTTP/2, Dubbo
//! and Bolt on one `codec: auto` port.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::rpc::*;
use meshgate_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const ECHO: &str = "com.meshgate.Echo";
const OTHER: &str = "com.meshgate.Other";

struct Setup {
    _a: Provider,
    _b: Provider,
    _da: Provider,
    _http: HttpBackend,
    mg: Meshgate,
    port: u16,
}

/// One `codec: auto` listener: Bolt Echo -> a (bolt), Bolt Other -> b
/// (bolt), Dubbo Echo (header `dubbo-version` present) -> da (dubbo),
/// everything else under /http/ -> an HTTP/1 backend.
fn setup() -> Setup {
    let a = Provider::start("bolt", "A");
    let b = Provider::start("bolt", "B");
    let da = Provider::start("dubbo", "DA");
    let http = HttpBackend::start("web", Proto::Http1);
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: auto
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: auto
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match:
                          prefix: /{ECHO}/
                          headers: [{{name: dubbo-version, present_match: true}}]
                        route: {{cluster: da}}
                      - match: {{prefix: /{ECHO}/sleep}}
                        route: {{cluster: a, timeout: 300ms}}
                      - match:
                          prefix: /
                          headers: [{{name: service, exact_match: {ECHO}}}]
                        route: {{cluster: a}}
                      - match: {{prefix: /{OTHER}/}}
                        route: {{cluster: b}}
                      - match: {{prefix: /http/}}
                        route: {{cluster: web}}
clusters:
  - name: a
    protocol: bolt
    endpoints: [{{address: "127.0.0.1:{pa}"}}]
  - name: b
    protocol: bolt
    endpoints: [{{address: "127.0.0.1:{pb}"}}]
  - name: da
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{pda}"}}]
  - name: web
    endpoints: [{{address: "{web}"}}]
"#,
        pa = a.port,
        pb = b.port,
        pda = da.port,
        web = http.addr,
    );
    // (no probe connection: every connection must be detected)
    let mg = Meshgate::start(&yaml);
    Setup {
        _a: a,
        _b: b,
        _da: da,
        _http: http,
        mg,
        port,
    }
}

fn bolt_call(port: u16, iface: &str, method: &str, args: &str, n: u32, c: u32) -> CallReport {
    node_call("bolt", port, iface, method, args, n, c, 3000, "1.0", "")
}

/// A Bolt v1 heartbeat request.
fn bolt_heartbeat(id: u32) -> Vec<u8> {
    let mut f = vec![1, 1, 0, 0, 1];
    f.extend(id.to_be_bytes());
    f.push(1);
    f.extend(3000u32.to_be_bytes());
    f.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    f
}

/// A Bolt v1 request whose header map names `service`; content is opaque.
fn bolt_request(id: u32, service: &str, method: &str) -> Vec<u8> {
    let mut map = Vec::new();
    for (k, v) in [("service", service), ("sofa_head_method_name", method)] {
        map.extend((k.len() as u32).to_be_bytes());
        map.extend(k.as_bytes());
        map.extend((v.len() as u32).to_be_bytes());
        map.extend(v.as_bytes());
    }
    let class = b"com.alipay.sofa.rpc.core.request.SofaRequest";
    let content = b"N";
    let mut f = vec![1, 1, 0, 1, 1];
    f.extend(id.to_be_bytes());
    f.push(1);
    f.extend(3000u32.to_be_bytes());
    f.extend((class.len() as u16).to_be_bytes());
    f.extend((map.len() as u16).to_be_bytes());
    f.extend((content.len() as u32).to_be_bytes());
    f.extend(class);
    f.extend(map);
    f.extend(content);
    f
}

/// Reads one Bolt response: (cmd code, id, status, class, content).
fn read_bolt(s: &mut TcpStream) -> Option<(u16, u32, u16, String, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).ok()?;
    assert_eq!((h[0], h[1]), (1, 0), "a Bolt v1 response");
    let cmd = u16::from_be_bytes([h[2], h[3]]);
    let id = u32::from_be_bytes(h[5..9].try_into().unwrap());
    let status = u16::from_be_bytes([h[10], h[11]]);
    let class_len = u16::from_be_bytes([h[12], h[13]]) as usize;
    let header_len = u16::from_be_bytes([h[14], h[15]]) as usize;
    let content_len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut rest = vec![0; class_len + header_len + content_len];
    s.read_exact(&mut rest).ok()?;
    let class = String::from_utf8_lossy(&rest[..class_len]).into_owned();
    Some((
        cmd,
        id,
        status,
        class,
        rest[class_len + header_len..].to_vec(),
    ))
}

#[test]
fn bolt_routes_by_service_to_two_providers() {
    let s = setup();
    let r = bolt_call(s.port, ECHO, "echo", r#"["hi"]"#, 5, 1);
    assert_eq!(r.ok, 5, "{:?}", r.errors);
    assert_eq!(r.from.get("A"), Some(&5), "{r:?}");
    assert_eq!(r.results[0]["x"], "hi");
    let r = bolt_call(s.port, OTHER, "echo", r#"["yo"]"#, 5, 1);
    assert_eq!(r.from.get("B"), Some(&5), "{r:?}");
    let r = bolt_call(s.port, OTHER, "plus", "[40, 2]", 1, 1);
    assert_eq!(r.results[0], 42);
}

#[test]
fn bolt_calls_multiplexed_on_one_upstream_connection() {
    let s = setup();
    let r = bolt_call(s.port, ECHO, "echo", r#"["m"]"#, 3000, 256);
    assert_eq!(r.ok, 3000, "{:?}", r.errors);
    assert_eq!(
        s.mg.metric("meshgate_cluster_upstream_cx_total", &[("cluster", "a")]),
        1.0
    );
}

#[test]
fn bolt_errors_heartbeats_and_hostile_input() {
    let s = setup();
    // heartbeat answered by meshgate
    let mut c = send_raw(s.port, &bolt_heartbeat(5));
    let (cmd, id, status, _, _) = read_bolt(&mut c).unwrap();
    assert_eq!((cmd, id, status), (0, 5, 0));
    // no route: NO_PROCESSOR with a readable message, same connection
    c.write_all(&bolt_request(6, "com.nowhere.Svc:1.0", "x"))
        .unwrap();
    let (cmd, id, status, class, content) = read_bolt(&mut c).unwrap();
    assert_eq!((cmd, id, status), (2, 6, 6));
    assert!(class.contains("RpcServerException"));
    assert!(String::from_utf8_lossy(&content).contains("RpcServerException"));
    assert!(String::from_utf8_lossy(&content).contains("meshgate: no route matched"));
    // the real client shows it
    let r = bolt_call(s.port, "com.nowhere.Svc", "echo", "[1]", 1, 1);
    assert!(
        r.errors[0].contains("meshgate: no route matched"),
        "{:?}",
        r.errors
    );
    // route timeout: TIMEOUT status, message in the client
    let t = Instant::now();
    let r = bolt_call(s.port, ECHO, "sleep", "[5000]", 1, 1);
    assert!(t.elapsed() < Duration::from_millis(4000));
    assert!(
        r.errors[0].contains("meshgate: upstream request timeout"),
        "{:?}",
        r.errors
    );
    // content over the limit (8 MiB default): error then close
    let mut big = bolt_request(7, "com.meshgate.Echo:1.0", "echo");
    big[18..22].copy_from_slice(&(64u32 << 20).to_be_bytes());
    let mut c = send_raw(s.port, &big);
    let (_, id, status, _, _) = read_bolt(&mut c).unwrap();
    assert_eq!((id, status), (7, 0x12));
    assert!(closed(&mut c));
    // a header map that lies about its lengths
    let mut lying = bolt_request(8, "com.meshgate.Echo:1.0", "echo");
    let at = 22 + 44;
    lying[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    let mut c = send_raw(s.port, &lying);
    let (_, id, status, _, _) = read_bolt(&mut c).unwrap();
    assert_eq!((id, status), (8, 0x12));
    // unknown command code on an established connection: clean close
    let mut c = send_raw(s.port, &bolt_heartbeat(10));
    assert_eq!(read_bolt(&mut c).unwrap().1, 10);
    let mut bad = bolt_request(9, "x", "y");
    bad[3] = 9;
    c.write_all(&bad).unwrap();
    assert!(closed(&mut c));
    // ... and as the first bytes, detection refuses it
    let mut c = send_raw(s.port, &bad);
    assert!(closed(&mut c));
    assert_eq!(
        s.mg.metric(
            "meshgate_proxy_codec_detect_fail_total",
            &[("listener", "auto")]
        ),
        1.0
    );
    let m = |reason: &str| {
        s.mg.metric(
            "meshgate_rpc_downstream_protocol_error_total",
            &[("codec", "bolt"), ("reason", reason)],
        )
    };
    // Counted as each connection's task ends, maybe after the client saw
    // the close: wait for every count, then check none is counted twice.
    wait_until("the refusals counted", || {
        m("too_large") >= 1.0 && m("bad_request") >= 1.0 && m("malformed") >= 1.0
    });
    assert_eq!(m("too_large"), 1.0);
    assert_eq!(m("bad_request"), 1.0);
    assert_eq!(m("malformed"), 1.0);
    assert!(
        s.mg.metric(
            "meshgate_rpc_downstream_heartbeat_total",
            &[("codec", "bolt")]
        ) >= 1.0
    );
}

#[test]
fn detection_serves_http1_http2_dubbo_and_bolt_on_one_port() {
    let s = setup();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(args)
            .arg(format!("http://127.0.0.1:{}/http/x", s.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&["--http1.1"]), "200 1.1");
    assert_eq!(curl(&["--http2-prior-knowledge"]), "200 2");
    let r = node_call(
        "dubbo", s.port, ECHO, "echo", r#"["d"]"#, 3, 1, 3000, "1.0", "",
    );
    assert_eq!(r.from.get("DA"), Some(&3), "{r:?}");
    let out = python_call(s.port, ECHO, "1.0", "echo", r#"["py"]"#);
    assert!(out.contains("'from': 'DA'"), "{out}");
    let r = bolt_call(s.port, ECHO, "echo", r#"["b"]"#, 3, 1);
    assert_eq!(r.from.get("A"), Some(&3), "{r:?}");
    // every connection was recognised
    assert_eq!(
        s.mg.metric(
            "meshgate_proxy_codec_detect_fail_total",
            &[("listener", "auto")]
        ),
        0.0
    );
}
