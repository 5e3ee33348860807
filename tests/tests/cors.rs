//! The `cors` stream filter with curl: preflights answered by meshgate and
//! never forwarded, actual requests forwarded with the CORS response
//! headers, policies per virtual host and route (the route's winning, or
//! `disabled` there), origins by exact / suffix / regex.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::collections::BTreeMap;
use std::process::Command;

/// Status and response headers (lowercase names) of one curl request.
fn curl(args: &[&str]) -> (u16, BTreeMap<String, String>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn config(port: u16, backend: std::net::SocketAddr, log: &std::path::Path) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log: {{path: "{log}"}}
              stream_filters:
                - name: cors
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    per_filter_config:
                      cors:
                        allow_origin_string_match:
                          - exact: https://app.example
                          - suffix: .trusted.example
                          - safe_regex: {{regex: "https://tenant[0-9]+\\.example"}}
                        allow_methods: GET, POST, PUT
                        allow_headers: content-type, x-token
                        expose_headers: x-backend
                        max_age: "600"
                    routes:
                      - match: {{prefix: /private/}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          cors:
                            allow_origin_string_match: [{{exact: https://admin.example}}]
                            allow_methods: DELETE
                            allow_credentials: true
                      - match: {{prefix: /nocors/}}
                        route: {{cluster: backend}}
                        per_filter_config:
                          cors: {{disabled: true}}
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    endpoints: [{{address: "{backend}"}}]
"#,
        log = log.display()
    )
}

#[test]
fn preflight_is_answered_by_meshgate_and_never_forwarded() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let port = free_port();
    let _mg = Meshgate::start(&config(port, backend.addr, &log));
    let url = format!("http://127.0.0.1:{port}/api/items");
    let (status, h) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: x-token",
        &url,
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, PUT");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-token");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(!h.contains_key("access-control-allow-credentials"));
    // Origins by suffix and regex are preflighted too.
    for origin in ["https://x.trusted.example", "https://tenant7.example"] {
        let (status, h) = curl(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: GET",
            &url,
        ]);
        assert_eq!(status, 200, "{origin}");
        assert_eq!(h["access-control-allow-origin"], origin);
    }
    assert_eq!(backend.hits(), 0, "a preflight never reaches the upstream");
    // The access log names the preflight.
    let line: serde_json::Value = wait_for_within(5, "an access-log line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
    });
    assert_eq!(line["local_reply"], "cors_preflight");
    assert_eq!(line["status"], 200);
}

#[test]
fn actual_requests_get_the_cors_headers_and_others_do_not() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mg = Meshgate::start(&config(port, backend.addr, &dir.path().join("a.log")));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Allowed origin: forwarded, CORS headers on the response.
    let (status, h) = curl(&["-H", "Origin: https://app.example", &url("/api/x")]);
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-expose-headers"], "x-backend");
    assert_eq!(backend.hits(), 1);
    // An origin the policy does not allow: forwarded, no CORS header (the
    // browser refuses the response).
    let (status, h) = curl(&["-H", "Origin: https://evil.example", &url("/api/x")]);
    assert_eq!(status, 200);
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    assert_eq!(backend.hits(), 2);
    // No Origin: not a CORS request.
    let (_, h) = curl(&[&url("/api/x")]);
    assert!(!h.contains_key("access-control-allow-origin"));
    // A not-matching preflight is forwarded (Envoy's
    // forward_not_matching_preflights default).
    let (_, h) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://evil.example",
        "-H",
        "Access-Control-Request-Method: GET",
        &url("/api/x"),
    ]);
    assert!(!h.contains_key("access-control-allow-origin"));
    assert_eq!(backend.hits(), 4);
}

#[test]
fn the_routes_policy_wins_over_the_virtual_hosts_and_can_disable_it() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mg = Meshgate::start(&config(port, backend.addr, &dir.path().join("a.log")));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let preflight = |origin: &str, path: &str| {
        curl(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: DELETE",
            &url(path),
        ])
    };
    // /private/: the route's policy only.
    let (status, h) = preflight("https://admin.example", "/private/x");
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://admin.example");
    assert_eq!(h["access-control-allow-methods"], "DELETE");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(backend.hits(), 0);
    let (_, h) = preflight("https://app.example", "/private/x");
    assert!(!h.contains_key("access-control-allow-origin"));
    assert_eq!(backend.hits(), 1, "not allowed there: forwarded");
    // /nocors/: the filter is disabled on the route.
    let (_, h) = preflight("https://app.example", "/nocors/x");
    assert!(!h.contains_key("access-control-allow-origin"));
    assert_eq!(backend.hits(), 2);
}

#[test]
fn bad_cors_config_is_refused_naming_the_field() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        port,
        "127.0.0.1:1".parse().unwrap(),
        &dir.path().join("a.log"),
    );
    let path = dir.path().join("bad.yaml");
    for (bad, field) in [
        (
            good.replace("max_age: \"600\"", "max_age: soon"),
            "per_filter_config.cors.max_age",
        ),
        (
            good.replace("allow_methods: DELETE", "allow_methodz: DELETE"),
            "per_filter_config.cors",
        ),
        (
            good.replace("- name: cors", "- name: corz"),
            "stream_filters[0].name",
        ),
        (
            good.replace(
                "- name: cors",
                "- name: cors\n                  config: {x: 1}",
            ),
            "stream_filters[0].config",
        ),
    ] {
        std::fs::write(&path, bad.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{bad}");
        let text = format!("{out}{err}");
        assert!(text.contains(field), "{field} not in: {text}");
    }
}

/// Through a real xDS control plane: the HCM lists
/// `envoy.filters.http.cors` before the router, the virtual host carries an
/// `envoy.extensions.filters.http.cors.v3.CorsPolicy` in
/// `typed_per_filter_config`.
#[test]
fn cors_from_xds_http_filters_and_typed_per_filter_config() {
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as corsv3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    use meshgate_tests::xds::*;
    use prost::Message;

    let backend = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", backend.addr)]);
    // The listener's HCM with the cors filter ahead of the router.
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.cors".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
                &corsv3::Cors {},
            ))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    // The route configuration with the policy on its virtual host.
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    let policy = corsv3::CorsPolicy {
        allow_origin_string_match: vec![matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                "https://app.example".into(),
            )),
            ignore_case: false,
        }],
        allow_methods: "GET, PATCH".into(),
        ..Default::default()
    };
    r.virtual_hosts[0].typed_per_filter_config.insert(
        "envoy.filters.http.cors".into(),
        any(
            "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            &policy,
        ),
    );
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=b");
    let hits = backend.hits();
    let (status, h) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: PATCH",
        &format!("http://127.0.0.1:{port}/x"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, PATCH");
    assert_eq!(backend.hits(), hits, "the preflight was not forwarded");
}
