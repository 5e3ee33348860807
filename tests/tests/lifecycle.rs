//! Issue 15, "codecs speak their protocol; the connection manager owns the
//! lifecycle", through the real binary: a QUIC connection is a transport
//! of streams that the `proxy` hands to the codec its handshake's ALPN id
//! names; with no such codec it is refused and counted (aioquic client).

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

#[test]
fn a_quic_connection_no_codec_speaks_over_is_refused_and_counted() {
    // `http1` declares no ALPN id `h3`: the QUIC handshake completes (the
    // listener offers h3), then the proxy finds no codec for it.
    let (mg, port) = start_quic("http1");
    wait_until("the admin answers", || mg.admin_get("/ready").0 == 200);
    let detect_fail = || {
        mg.metric(
            "meshgate_proxy_codec_detect_fail_total",
            &[("listener", "h3")],
        )
    };
    let before = detect_fail();
    let out = quic_idle(port);
    assert!(out.contains("closed code=0x0"), "{out}");
    // Closed by meshgate's refusal, not an HTTP/3 GOAWAY.
    assert!(out.contains("goaway=no"), "{out}");
    wait_until("the refusal is counted", || detect_fail() == before + 1.0);
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
