//! The example binary knows `body_digest` next to meshgate's own filters,
//! and refuses a bad field of its config by name (the end-to-end tests of
//! its phases are in tests/tests/filter_phases.rs, which runs this binary).
// Test helpers may unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn validate(filter_config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("body-digest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("c{}.yaml", filter_config.len()));
    std::fs::write(
        &file,
        format!(
            r#"listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: cors
                - name: body_digest
                  config: {filter_config}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
                        per_filter_config:
                          body_digest: {{verify_trailer: true}}
"#
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate-body-digest"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_example_binary_registers_body_digest_and_checks_its_config() {
    let (ok, text) = validate("{required_header: x-api-version, max_buffer_bytes: 1024}");
    assert!(ok, "{text}");
    let (ok, text) = validate("{required_heder: x}");
    assert!(!ok);
    assert!(text.contains("required_heder"), "{text}");
    let (ok, text) = validate("{required_header: \"bad header\"}");
    assert!(!ok);
    assert!(text.contains("required_header"), "{text}");
}
