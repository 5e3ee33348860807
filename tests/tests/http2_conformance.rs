//! HTTP/2 conformance and abuse cases against the real binary's h2c
//! listener, driven by tests/peers/h2_conformance.py (raw frames; h2spec
//! cannot be installed here). Each case must end in the RFC's answer
//! (GOAWAY with an error code and a close, RST_STREAM, flow control held)
//! and meshgate must keep serving afterwards.

use meshgate_tests::*;
use std::net::TcpListener;
use std::process::Command;

fn h2c() -> (Meshgate, u16) {
    // An upstream that accepts and holds requests (streams stay open).
    let hold = TcpListener::bind("127.0.0.1:0").unwrap();
    let hold_addr = hold.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hold.incoming().flatten() {
            held.push(s);
        }
    });
    let port = free_port();
    let body = "0123456789".repeat(28);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h2
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec_options:
                http2: {{max_concurrent_streams: 10, max_request_headers_bytes: 16384}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /flow}}
                        direct_response: {{status: 200, body: "{body}"}}
                      - match: {{prefix: /hold}}
                        route: {{cluster: hold, timeout: 0s}}
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "ok\n"}}
clusters:
  - name: hold
    endpoints: [{{address: "{hold_addr}"}}]
"#
    );
    (Meshgate::start(&yaml), port)
}

fn case(port: u16, name: &str) -> String {
    let out = Command::new("timeout")
        .args(["30", "python3"])
        .arg(workspace().join("tests/peers/h2_conformance.py"))
        .args([&port.to_string(), name])
        .output()
        .expect("python3 with h2 (tests/run.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.starts_with(&format!("OK {name}")), "{text}");
    text
}

/// Runs cases on one meshgate; `connection_errors`: the cases are
/// connection errors, so the protocol-error counter must have moved.
fn run_cases(names: &[&str], connection_errors: bool) {
    let (mg, port) = h2c();
    for name in names {
        case(port, name);
        // Still serving a normal request on a fresh connection.
        case(port, "normal");
    }
    if connection_errors {
        let errors = mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("listener", "h2")],
        );
        assert!(errors >= 1.0, "{errors}");
    }
}

#[test]
fn preface_and_settings() {
    run_cases(
        &[
            "bad_preface",
            "settings_enable_push_2",
            "settings_window_too_big",
            "settings_bad_length",
        ],
        true,
    );
}

#[test]
fn frame_size_hpack_and_stream_state_errors() {
    run_cases(
        &[
            "frame_too_large",
            "hpack_garbage",
            "window_update_zero",
            "data_on_idle_stream",
            "even_stream_id",
        ],
        true,
    );
}

#[test]
fn flow_control_and_concurrency_limits() {
    run_cases(&["flow_control", "max_concurrent_streams"], false);
}

#[test]
fn rapid_reset_continuation_flood_and_hpack_bomb() {
    let (mg, port) = h2c();
    assert!(case(port, "rapid_reset").contains("ENHANCE_YOUR_CALM"));
    case(port, "normal");
    case(port, "continuation_flood");
    case(port, "normal");
    case(port, "hpack_bomb");
    case(port, "normal");
    assert!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("listener", "h2"), ("reason", "enhance_your_calm")]
        ) >= 1.0
    );
}

#[test]
fn control_frame_floods_end_in_goaway_enhance_your_calm() {
    // PING, SETTINGS, PRIORITY, WINDOW_UPDATE and empty-frame floods: the
    // frame guard answers GOAWAY(ENHANCE_YOUR_CALM) and closes (h2 alone
    // would only stop reading), counts each, and keeps serving.
    let (mg, port) = h2c();
    let floods = [
        ("ping_flood", "ping"),
        ("settings_flood", "settings"),
        ("priority_flood", "priority"),
        ("window_update_flood", "window_update"),
        ("empty_data_flood", "empty_frames"),
    ];
    for (name, _) in floods {
        assert!(case(port, name).contains("GOAWAY ENHANCE_YOUR_CALM, closed"));
        case(port, "normal");
    }
    for (_, flood) in floods {
        let n = mg.metric(
            "meshgate_http_downstream_cx_flood_total",
            &[("listener", "h2"), ("flood", flood)],
        );
        assert_eq!(n, 1.0, "{flood}");
    }
    let calm = mg.metric(
        "meshgate_http_downstream_cx_protocol_error_total",
        &[
            ("listener", "h2"),
            ("codec", "http2"),
            ("reason", "enhance_your_calm"),
        ],
    );
    assert_eq!(calm, floods.len() as f64);
}

#[test]
fn legitimate_pings_pass_and_ping_limit_is_configurable() {
    // Default limits: a burst of 50 PINGs and a PING with each of 300
    // requests are served, nothing counted.
    let (mg, port) = h2c();
    case(port, "pings_50_ok");
    case(port, "pings_paid_by_data");
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_protocol_error_total",
            &[("listener", "h2")]
        ),
        0.0
    );
    // `flood.max_inbound_ping_frames: 10`: the same burst is a flood.
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: strict
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec_options:
                http2: {{flood: {{max_inbound_ping_frames: 10, window: 60s}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "ok\n"}}
"#
    ));
    case(port, "pings_50_goaway");
    case(port, "normal");
    assert_eq!(
        mg.metric(
            "meshgate_http_downstream_cx_flood_total",
            &[("listener", "strict"), ("flood", "ping")]
        ),
        1.0
    );
}

#[test]
fn flood_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |opts: &str| {
        format!(
            "listeners:
  - name: h2
    address: 127.0.0.1:10080
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec_options:
                {opts}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: [\"*\"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
"
        )
    };
    let cases = [
        (
            "http2: {flood: {window: 0s}}",
            "codec_options.http2.flood.window: must be more than 0s",
        ),
        (
            "http2: {flood: {max_pings: 5}}",
            "codec_options.http2.flood.max_pings: unknown field `max_pings`",
        ),
        (
            "http1: {flood: {max_inbound_ping_frames: 5}}",
            "codec_options.http1.flood: HTTP/2 flood limits; set them under codec_options.http2",
        ),
    ];
    for (i, (opts, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&f, yaml(opts)).unwrap();
        let (code, _, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "{opts}: {err}");
    }
}
