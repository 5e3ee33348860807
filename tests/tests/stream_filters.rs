//! The stream filter chain in the real binary: the router is the last
//! filter (a filter answers before "no route" and the body limit), a chain
//! entry listed `disabled: true` runs only where a route switches it on
//! (as Envoy Gateway emits), and Envoy's router filter name is the
//! implicit last filter.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::process::Command;

fn preflight(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-X", "OPTIONS"])
        .args(["-H", "Origin: https://app.example"])
        .args(["-H", "Access-Control-Request-Method: POST"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn filters_run_before_the_router_and_disabled_entries_run_where_a_route_enables_them() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              max_request_body_bytes: 10
              stream_filters:
                - name: cors
                  disabled: true
                - name: envoy.filters.http.router
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /web/}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          cors:
                            allow_origin_string_match: [{{exact: https://app.example}}]
                            allow_methods: POST
                      - match: {{prefix: /other/}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        addr = backend.addr
    );
    let mg = Meshgate::start(&yaml);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Switched on by the route: answered by the filter.
    let (status, h) = preflight(&url("/web/x"), &[]);
    assert_eq!(status, 200);
    assert!(
        h.contains("access-control-allow-origin: https://app.example"),
        "{h}"
    );
    // The body limit is the router's: a filter's answer comes first
    // (413 before, when the limit was checked ahead of the filters).
    let (status, _) = preflight(&url("/web/x"), &["-H", "Content-Length: 1000"]);
    assert_eq!(status, 200);
    assert_eq!(backend.hits(), 0);
    // Listed disabled and not switched on here: the request goes on to the
    // router, which applies the body limit...
    let (status, h) = preflight(&url("/other/x"), &["-H", "Content-Length: 1000"]);
    assert_eq!(status, 413);
    assert!(!h.contains("access-control-allow-origin"));
    // ...forwards it...
    let (status, h) = preflight(&url("/other/x"), &[]);
    assert_eq!(status, 200);
    assert!(!h.contains("access-control-allow-origin"));
    assert_eq!(backend.hits(), 1);
    // ...or answers "no route" after the chain.
    let (status, _) = preflight(&url("/nowhere"), &[]);
    assert_eq!(status, 404);
    assert_eq!(
        mg.metric(
            "meshgate_downstream_rq_local_reply_total",
            &[("reason", "no_route")]
        ),
        1.0
    );
}
