//! End-to-end tests of the HCM's `common_http_protocol_options.max_headers_count`
//! on the `proxy` filter: the real meshgate binary, curl over HTTP/1.1 and
//! h2c with many header fields, `meshgate validate`.

use meshgate_tests::curl::curl;
use meshgate_tests::*;

/// Listener `wide` allows 150 header fields, `narrow` 5, `default` has
/// no count (Envoy's default of 100); all answer 200 themselves (an
/// upstream would have limits of its own).
fn config() -> String {
    let listener = |name: &str, n: Option<u32>| {
        let options = n.map_or(String::new(), |n| {
            format!("              common_http_protocol_options: {{max_headers_count: {n}}}\n")
        });
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
{options}              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        direct_response: {{status: 200}}
"#
        )
    };
    format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}{}",
        listener("wide", Some(150)),
        listener("narrow", Some(5)),
        listener("default", None)
    )
}

/// curl with `n` extra `x-hN` header fields (curl adds user-agent, accept
/// and the authority, `Host` or `:authority`, which counts as one).
fn with_headers(port: u16, n: usize, extra: &[&str]) -> u16 {
    let headers: Vec<String> = (0..n).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = extra.to_vec();
    for h in &headers {
        args.push("-H");
        args.push(h);
    }
    let url = format!("http://127.0.0.1:{port}/");
    args.push(&url);
    curl(&args).0
}

fn refused(mg: &Meshgate, listener: &str) -> f64 {
    mg.metric(
        "meshgate_http_downstream_rq_refused_total",
        &[("listener", listener), ("reason", "too_many_headers")],
    )
}

/// Over the count: 431 on HTTP/1.1 and on h2c; under it, served.
/// On `wide` the HTTP/1.1 codec's own default of 100 fields is raised to
/// the count, so 120 fields pass.
#[test]
fn requests_over_max_headers_count_get_431_on_http1_and_http2() {
    let mg = Meshgate::start(&config());
    let wide = mg.listener_port("wide");
    let narrow = mg.listener_port("narrow");
    let h2 = ["--http2-prior-knowledge"];

    assert_eq!(with_headers(narrow, 2, &[]), 200);
    assert_eq!(with_headers(narrow, 3, &[]), 431);
    assert_eq!(with_headers(narrow, 2, &h2), 200);
    assert_eq!(with_headers(narrow, 3, &h2), 431);
    // HTTP/1.1's refusal came from its codec, whose limit the count set
    // (counted as a protocol error); the filter counted the h2c one.
    assert_eq!(refused(&mg, "narrow"), 1.0);

    assert_eq!(with_headers(wide, 120, &[]), 200);
    assert_eq!(with_headers(wide, 120, &h2), 200);
    assert_eq!(with_headers(wide, 160, &[]), 431);
    assert_eq!(with_headers(wide, 160, &h2), 431);
    // The HTTP/1.1 codec refused the 160 before the filter counted them.
    assert_eq!(refused(&mg, "wide"), 1.0);
}

/// Unset, the count is Envoy's default of 100 on every protocol: h2c,
/// which has no count of its own, is refused past it too.
#[test]
fn max_headers_count_unset_is_envoys_100_on_http1_and_http2() {
    let mg = Meshgate::start(&config());
    let port = mg.listener_port("default");
    let h2 = ["--http2-prior-knowledge"];
    // 97 extra fields and curl's three: 100.
    assert_eq!(with_headers(port, 97, &[]), 200);
    assert_eq!(with_headers(port, 97, &h2), 200);
    assert_eq!(with_headers(port, 98, &h2), 431);
    assert_eq!(with_headers(port, 98, &[]), 431);
    // The h2c refusal is the filter's; HTTP/1.1's its codec's.
    assert_eq!(refused(&mg, "default"), 1.0);
}

/// 0 and more than the HTTP/1.1 parser's 256 fields are refused by name.
#[test]
fn bad_max_headers_counts_name_the_field() {
    for (n, want) in [("0", "at least 1"), ("300", "at most 256")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            config()
                .replace("{ADMIN}", "127.0.0.1:0")
                .replace("max_headers_count: 5", &format!("max_headers_count: {n}")),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        let text = out + &err;
        assert_ne!(code, 0, "{text}");
        assert!(
            text.contains("common_http_protocol_options.max_headers_count") && text.contains(want),
            "{n}: {text}"
        );
    }
}
