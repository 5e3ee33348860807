//! Issue 15, "codecs speak their protocol; the connection manager owns the
//! lifecycle", through the real binary: a QUIC connection is a transport
//! of streams that the `proxy` hands to the codec its handshake's ALPN id
//! names; a listener with no such codec is refused by name when its config
//! is built (aioquic client, `meshgate validate`).

use meshgate_tests::*;
use std::process::Command;

/// A meshgate with one QUIC listener named `h3` whose `proxy` serves
/// `codec` with a 1 s connection idle timeout (routes to an upstream that
/// is never reached).
fn start_quic(codec: &str) -> (Meshgate, u16) {
    let port = free_port();
    let certs = workspace().join("examples/certs");
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
        filters:
          - name: proxy
            config:
              codec: {codec}
              common_http_protocol_options: {{idle_timeout: 1s}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: "/"}}
                        route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "127.0.0.1:9"}}]
"#,
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
    );
    (Meshgate::start(&yaml), port)
}

/// tests/peers/h3_followups.py `idle`: connects (ALPN h3), sends nothing
/// and reports how the server closed the connection.
fn quic_idle(port: u16) -> String {
    let out = Command::new("timeout")
        .args(["40", "python3"])
        .arg(workspace().join("tests/peers/h3_followups.py"))
        .arg("idle")
        .arg(port.to_string())
        .arg(workspace().join("examples/certs/ca.pem"))
        .arg("0")
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The config `start_quic` would serve, with `filter` as the chain's
/// filter, written to a temp file for `meshgate validate`.
fn quic_config_with(dir: &std::path::Path, filter: &str) -> String {
    let certs = workspace().join("examples/certs");
    let yaml = format!(
        r#"listeners:
  - name: h3
    address: 127.0.0.1:1
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{}", private_key: "{}"}}]
        filters:
{filter}
clusters:
  - name: up
    endpoints: [{{address: "127.0.0.1:9"}}]
"#,
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
    );
    let p = dir.join(format!("quic-{}.yaml", yaml.len()));
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

#[test]
fn a_quic_listener_whose_terminal_cannot_serve_its_streams_is_refused_by_name() {
    // QUIC connections carry streams over ALPN h3: a `proxy` with no codec
    // declaring h3, or a filter that relays bytes, is refused when the
    // config is built (naming the field), not at each connection.
    let dir = tempfile::tempdir().unwrap();
    let http1 = quic_config_with(
        dir.path(),
        r#"          - name: proxy
            config:
              codec: http1
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {prefix: "/"}
                        route: {cluster: up}"#,
    );
    let (code, out, err) = run_cli(&["validate", &http1]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("filter_chains[0].filters[0].config.codec") && err.contains("h3"),
        "{err}"
    );
    let tcp = quic_config_with(
        dir.path(),
        "          - name: tcp_proxy\n            config: {cluster: up}",
    );
    let (code, out, err) = run_cli(&["validate", &tcp]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("filter_chains[0].filters[0]") && err.contains("carry streams"),
        "{err}"
    );
    // The same listener with `codec: auto` (HTTP/3 declares h3) is valid.
    let auto = quic_config_with(
        dir.path(),
        r#"          - name: proxy
            config:
              codec: auto
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {prefix: "/"}
                        route: {cluster: up}"#,
    );
    let (code, out, err) = run_cli(&["validate", &auto]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_quic_connection_goes_to_the_codec_of_its_alpn_id() {
    // The same listener with `codec: auto`: `h3` picks HTTP/3, which
    // answers the idle connection with its idle-timeout GOAWAY, not a
    // refusal.
    let (mg, port) = start_quic("auto");
    wait_until("the admin answers", || mg.admin_get("/ready").0 == 200);
    let before = mg.metric(
        "meshgate_proxy_codec_detect_fail_total",
        &[("listener", "h3")],
    );
    let out = quic_idle(port);
    assert!(out.contains("goaway=yes"), "{out}");
    assert_eq!(
        mg.metric(
            "meshgate_proxy_codec_detect_fail_total",
            &[("listener", "h3")]
        ),
        before
    );
}

/// Two listeners on one notice path: `web` (HTTP/1.1) answers every
/// request itself, `rpc` (Dubbo) routes to an upstream that is never
/// reached. `extra` goes into both proxies' config.
fn two_codecs(web: u16, rpc: u16, extra: &str) -> String {
    let proxy = |codec: &str, action: &str| {
        format!(
            r#"          - name: proxy
            config:
              codec: {codec}
{extra}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: "/"}}
                        {action}
"#
        )
    };
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{web}
    filter_chains:
      - filters:
{}  - name: rpc
    address: 127.0.0.1:{rpc}
    filter_chains:
      - filters:
{}clusters:
  - name: up
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:9"}}]
"#,
        proxy("http1", r#"direct_response: {status: 200, body: "ok\n"}"#),
        proxy("dubbo", "route: {cluster: up}"),
    )
}

/// Reads until the peer closes; `false` if it did not within `secs`.
fn closed_within(s: &mut std::net::TcpStream, secs: u64) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn one_retire_notice_each_codec_winds_down_its_own_way() {
    use std::io::{BufReader, Write};
    let (web, rpc) = (free_port(), free_port());
    let mg = Meshgate::start(&two_codecs(web, rpc, ""));
    wait_listening(format!("127.0.0.1:{web}").parse().unwrap());
    wait_listening(format!("127.0.0.1:{rpc}").parse().unwrap());
    // Idle connections, accepted under the first config.
    let mut h1 = std::net::TcpStream::connect(("127.0.0.1", web)).unwrap();
    let mut dubbo = std::net::TcpStream::connect(("127.0.0.1", rpc)).unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    let mut r = BufReader::new(h1.try_clone().unwrap());
    let first = read_reply(&mut r).expect("a first response");
    assert_eq!(first.status, 200);
    wait_until("both connections are open", || {
        mg.metric(
            "meshgate_listener_downstream_cx_active",
            &[("listener", "rpc")],
        ) == 1.0
            && mg.metric(
                "meshgate_listener_downstream_cx_active",
                &[("listener", "web")],
            ) == 1.0
    });

    // A setting of both proxies changes (not only routes): both
    // listeners' open connections retire.
    let before = mg.metric("meshgate_config_reload_total", &[("result", "ok")]);
    let tmp = mg.config.with_extension("new");
    std::fs::write(
        &tmp,
        two_codecs(web, rpc, "              generate_request_id: false\n")
            .replace("{ADMIN}", &mg.admin.unwrap().to_string()),
    )
    .unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
    let pid = mg.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the reload", || {
        mg.metric("meshgate_config_reload_total", &[("result", "ok")]) > before
    });

    // Dubbo has no notice of its own: the idle connection closes.
    assert!(
        closed_within(&mut dubbo, 10),
        "the rpc connection stayed open"
    );
    // HTTP/1.1: the idle connection is not cut; its next response is its
    // last (`connection: close`), then it closes.
    h1.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    let last = read_reply(&mut r).expect("the idle HTTP/1.1 connection was cut");
    assert_eq!(last.status, 200);
    assert!(last.close, "no connection: close on the last response");
    assert!(
        closed_within(&mut h1, 10),
        "the http1 connection stayed open"
    );
}
