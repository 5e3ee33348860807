use super::*;
use crate::cluster::ClusterManager;
use crate::config::{parse_str, parse_typed};
use crate::registry::Registry;
use http::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Duration;

fn clusters(names: &[&str]) -> ClusterManager {
    let mut yaml = String::from("clusters:\n");
    for n in names {
        yaml.push_str(&format!(
            "  - name: {n}\n    endpoints: [{{address: \"127.0.0.1:1\"}}]\n"
        ));
    }
    let (cfg, src) = parse_str(Path::new("test.yaml"), &yaml).unwrap();
    ClusterManager::build(&cfg.clusters, &Registry::new(), &src, false).unwrap()
}

fn parse(yaml: &str) -> RouteConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn table(yaml: &str) -> RouteTable {
    RouteTable::build(&parse(yaml), &clusters(&["a", "b", "c"])).unwrap()
}

fn build_err(yaml: &str) -> BuildError {
    RouteTable::build(&parse(yaml), &clusters(&["a", "b"])).unwrap_err()
}

fn req(method: &str, uri: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn get(uri: &str) -> Request<()> {
    req("GET", uri, Some("example.com"), &[])
}

/// The name of the route hit (`vhost/route`).
fn hit(t: &RouteTable, r: &Request<()>) -> Option<String> {
    let indexed = t
        .find_request(r)
        .map(|(vh, route)| (vh.name().to_string(), route.index()));
    let linear = t
        .find_linear(&RouteInput::from_request(r))
        .map(|(vh, route)| (vh.name().to_string(), route.index()));
    assert_eq!(
        indexed,
        linear,
        "index and linear scan disagree on {:?}",
        r.uri()
    );
    t.find_request(r).map(|(vh, route)| {
        format!(
            "{}/{}",
            vh.name(),
            route.name().map(|n| n.to_string()).unwrap_or_default()
        )
    })
}

const DOMAINS: &str = r#"
virtual_hosts:
  - name: exact
    domains: ["api.example.com"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
  - name: suffix
    domains: ["*.example.com"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
  - name: longer_suffix
    domains: ["*.b.example.com"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
  - name: prefix
    domains: ["api.*"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
  - name: with_port
    domains: ["port.example.com:8080"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
  - name: default
    domains: ["*"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
"#;

#[test]
fn domain_selection_order() {
    let t = table(DOMAINS);
    let vh = |host: &str| t.find_virtual_host(host).map(|v| v.name().to_string());
    let s = |x: &str| Some(x.to_string());
    assert_eq!(vh("api.example.com"), s("exact"));
    assert_eq!(vh("API.Example.COM"), s("exact"));
    assert_eq!(vh("api.example.com:8080"), s("exact"));
    assert_eq!(vh("x.example.com"), s("suffix"));
    assert_eq!(vh("X.EXAMPLE.com:443"), s("suffix"));
    assert_eq!(vh("x.b.example.com"), s("longer_suffix"));
    assert_eq!(vh("b.example.com"), s("suffix"));
    // A wildcard stands for at least one character.
    assert_eq!(vh("example.com"), s("default"));
    assert_eq!(vh("api.other.org"), s("prefix"));
    assert_eq!(vh("port.example.com:8080"), s("with_port"));
    assert_eq!(vh("port.example.com:9090"), s("suffix"));
    assert_eq!(vh("port.example.com"), s("suffix"));
    assert_eq!(vh("other.org"), s("default"));
    assert_eq!(vh(""), s("default"));
    // Through a request: the Host header, else the URI authority.
    assert_eq!(
        hit(&t, &req("GET", "/x", Some("api.example.com"), &[])),
        s("exact/")
    );
    assert_eq!(
        hit(&t, &req("GET", "http://api.example.com/x", None, &[])),
        s("exact/")
    );
    assert_eq!(hit(&t, &req("GET", "/x", None, &[])), s("default/"));

    let no_default = table(
        r#"
virtual_hosts:
  - name: only
    domains: ["only.example.com"]
    routes: [{match: {prefix: /}, direct_response: {status: 200}}]
"#,
    );
    assert!(no_default.find_virtual_host("other.example.com").is_none());
    assert!(no_default.find_request(&get("/")).is_none());
}

/// `ignore_port_in_host_matching`: unset (meshgate YAML) tries the host
/// as sent then without its port; `false` (Envoy's default) keeps the
/// port; `true` strips it before the search.
#[test]
fn ignore_port_in_host_matching_modes() {
    let with = |setting: &str| table(&format!("{setting}\n{DOMAINS}"));
    let vh = |t: &RouteTable, host: &str| t.find_virtual_host(host).map(|v| v.name().to_string());
    let s = |x: &str| Some(x.to_string());
    let unset = table(DOMAINS);
    let kept = with("ignore_port_in_host_matching: false");
    let ignored = with("ignore_port_in_host_matching: true");
    // A host with a port and a domain without.
    assert_eq!(vh(&unset, "api.example.com:8080"), s("exact"));
    // (kept: the prefix wildcard `api.*` still matches the whole host)
    assert_eq!(vh(&kept, "api.example.com:8080"), s("prefix"));
    assert_eq!(vh(&ignored, "api.example.com:8080"), s("exact"));
    assert_eq!(vh(&kept, "x.example.com:443"), s("default"));
    assert_eq!(vh(&ignored, "X.EXAMPLE.com:443"), s("suffix"));
    assert_eq!(vh(&ignored, "[::1]:443"), s("default"));
    // A domain with a port: matched as sent unless the port is ignored.
    assert_eq!(vh(&unset, "port.example.com:8080"), s("with_port"));
    assert_eq!(vh(&kept, "port.example.com:8080"), s("with_port"));
    assert_eq!(vh(&ignored, "port.example.com:8080"), s("suffix"));
    // Without a port, all three agree.
    for t in [&unset, &kept, &ignored] {
        assert_eq!(vh(t, "api.example.com"), s("exact"));
        assert_eq!(vh(t, "other.org"), s("default"));
    }
    // Through a request's Host header.
    assert_eq!(
        hit(
            &ignored,
            &req("GET", "/x", Some("api.example.com:10000"), &[])
        ),
        s("exact/")
    );
    assert_eq!(
        hit(&kept, &req("GET", "/x", Some("api.example.com:10000"), &[])),
        s("prefix/")
    );
}

/// `path_separated_prefix` (Envoy's): the prefix itself, or the prefix
/// then `/`; never a longer segment. Through the index and the linear scan
/// (`hit` checks both), with `case_sensitive` and `prefix_rewrite`.
#[test]
fn path_separated_prefix_matches_whole_segments() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - name: api
        match: {path_separated_prefix: /api/dev}
        route: {cluster: a, prefix_rewrite: /v2}
      - name: folded
        match: {path_separated_prefix: /Docs, case_sensitive: false}
        direct_response: {status: 200}
      - name: rest
        match: {prefix: /}
        direct_response: {status: 404}
"#,
    );
    let s = |x: &str| Some(x.to_string());
    for p in ["/api/dev", "/api/dev/", "/api/dev/v1", "/api/dev?x=1"] {
        assert_eq!(hit(&t, &get(p)), s("v/api"), "{p}");
    }
    for p in ["/api/developer", "/api/de", "/api"] {
        assert_eq!(hit(&t, &get(p)), s("v/rest"), "{p}");
    }
    assert_eq!(hit(&t, &get("/docs/a")), s("v/folded"));
    assert_eq!(hit(&t, &get("/DOCS")), s("v/folded"));
    assert_eq!(hit(&t, &get("/docsx")), s("v/rest"));
    for bad in ["/api/", "\"\""] {
        let e = build_err(&format!(
            "virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{path_separated_prefix: {bad}}}, direct_response: {{status: 200}}}}]}}]"
        ));
        assert!(
            e.to_string().contains("path_separated_prefix"),
            "{bad}: {e}"
        );
    }
}

/// Header conditions on `:authority`, `:method` and `:path` (with its
/// query) read the request line; other pseudo-headers are refused by name.
#[test]
fn header_matchers_on_pseudo_headers() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - name: host
        match: {prefix: /, headers: [{name: ":authority", exact_match: gateway.example.io}]}
        direct_response: {status: 200}
      - name: method
        match: {prefix: /, headers: [{name: ":method", exact_match: PUT}]}
        direct_response: {status: 200}
      - name: query
        match: {prefix: /, headers: [{name: ":path", suffix_match: "?debug=1"}]}
        direct_response: {status: 200}
      - name: rest
        match: {prefix: /}
        direct_response: {status: 404}
"#,
    );
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        hit(&t, &req("GET", "/a", Some("gateway.example.io"), &[])),
        s("v/host")
    );
    assert_eq!(
        hit(&t, &req("GET", "/a", Some("other.io"), &[])),
        s("v/rest")
    );
    assert_eq!(
        hit(&t, &req("PUT", "/a", Some("other.io"), &[])),
        s("v/method")
    );
    assert_eq!(
        hit(&t, &req("GET", "/a?debug=1", Some("other.io"), &[])),
        s("v/query")
    );
    let e = build_err(
        "virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /, headers: [{name: ':scheme', exact_match: https}]}, direct_response: {status: 200}}]}]",
    );
    assert!(e.to_string().contains("headers[0].name"), "{e}");
    assert!(e.to_string().contains(":scheme"), "{e}");
}

#[test]
fn strip_port_forms() {
    use super::domain::strip_port;
    assert_eq!(strip_port(b"a.com:80"), Some(&b"a.com"[..]));
    assert_eq!(strip_port(b"a.com"), None);
    assert_eq!(strip_port(b"a.com:"), None);
    assert_eq!(strip_port(b"a.com:8x"), None);
    assert_eq!(strip_port(b"[::1]:8080"), Some(&b"[::1]"[..]));
    assert_eq!(strip_port(b"[::1]"), None);
    assert_eq!(strip_port(b"::1"), None);
}

const MATCHES: &str = r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - {name: exact, match: {path: /exact}, route: {cluster: a}}
      - {name: exact_ci, match: {path: /Exact-CI, case_sensitive: false}, route: {cluster: a}}
      - {name: regex, match: {safe_regex: "/v[0-9]+"}, route: {cluster: a}}
      - {name: prefix_ci, match: {prefix: /CI/, case_sensitive: false}, route: {cluster: a}}
      - name: hdr_exact
        match: {prefix: /h/, headers: [{name: x-canary, exact_match: "1"}]}
        route: {cluster: a}
      - name: hdr_prefix
        match: {prefix: /h/, headers: [{name: x-p, prefix_match: "ab"}]}
        route: {cluster: a}
      - name: hdr_suffix
        match: {prefix: /h/, headers: [{name: x-s, suffix_match: "yz"}]}
        route: {cluster: a}
      - name: hdr_regex
        match: {prefix: /h/, headers: [{name: x-r, safe_regex_match: "[0-9]{3}"}]}
        route: {cluster: a}
      - name: hdr_present
        match: {prefix: /h/, headers: [{name: x-present}]}
        route: {cluster: a}
      - name: hdr_inverted
        match: {prefix: /h/, headers: [{name: x-env, exact_match: prod, invert_match: true}]}
        route: {cluster: a}
      - name: hdr_fallback
        match: {prefix: /h/}
        route: {cluster: a}
      - name: absent
        match: {prefix: /absent, headers: [{name: x-debug, present_match: false}]}
        route: {cluster: a}
      - name: q_exact
        match: {prefix: /q, query_parameters: [{name: debug, exact_match: "1"}]}
        route: {cluster: a}
      - name: q_regex
        match: {prefix: /q, query_parameters: [{name: id, safe_regex_match: "[a-f]+"}]}
        route: {cluster: a}
      - name: q_present
        match: {prefix: /q, query_parameters: [{name: flag, present_match: true}]}
        route: {cluster: a}
      - name: methods
        match: {prefix: /m, methods: [POST, PUT]}
        route: {cluster: a}
      - name: grpc
        match: {prefix: /svc.Greeter/, grpc: true}
        route: {cluster: a}
      - {name: all, match: {prefix: /}, route: {cluster: b}}
"#;

#[test]
fn match_kinds() {
    let t = table(MATCHES);
    let name = |r: Request<()>| {
        t.find_request(&r)
            .and_then(|(_, route)| route.name().map(|n| n.to_string()))
            .unwrap()
    };
    let with = |uri: &str, h: &[(&str, &str)]| req("GET", uri, Some("x"), h);
    assert_eq!(name(get("/exact")), "exact");
    assert_eq!(name(get("/exact/")), "all");
    assert_eq!(name(get("/Exact")), "all"); // case-sensitive by default
    assert_eq!(name(get("/exact?x=1")), "exact"); // query is not part of the path
    assert_eq!(name(get("/EXACT-ci")), "exact_ci");
    assert_eq!(name(get("/v12")), "regex");
    assert_eq!(name(get("/v12/x")), "all"); // full match only
    assert_eq!(name(get("/ci/x")), "prefix_ci");
    assert_eq!(name(get("/Ci/x")), "prefix_ci");
    assert_eq!(name(get("/c/x")), "all");

    assert_eq!(name(with("/h/", &[("x-canary", "1")])), "hdr_exact");
    assert_eq!(
        name(with("/h/", &[("x-canary", "2"), ("x-env", "prod")])),
        "hdr_fallback"
    );
    assert_eq!(
        name(with("/h/", &[("x-p", "abc"), ("x-env", "prod")])),
        "hdr_prefix"
    );
    assert_eq!(
        name(with("/h/", &[("x-s", "xyz"), ("x-env", "prod")])),
        "hdr_suffix"
    );
    assert_eq!(
        name(with("/h/", &[("x-r", "123"), ("x-env", "prod")])),
        "hdr_regex"
    );
    assert_eq!(
        name(with("/h/", &[("x-r", "1234"), ("x-env", "prod")])),
        "hdr_fallback"
    );
    assert_eq!(
        name(with("/h/", &[("x-present", ""), ("x-env", "prod")])),
        "hdr_present"
    );
    // Inverted: x-env missing or not `prod` matches.
    assert_eq!(name(with("/h/", &[])), "hdr_inverted");
    assert_eq!(name(with("/h/", &[("x-env", "dev")])), "hdr_inverted");
    assert_eq!(name(with("/h/", &[("x-env", "prod")])), "hdr_fallback");
    // Any value of a repeated header may match.
    assert_eq!(
        name(with("/h/", &[("x-canary", "0"), ("x-canary", "1")])),
        "hdr_exact"
    );

    assert_eq!(name(with("/absent", &[])), "absent");
    assert_eq!(name(with("/absent", &[("x-debug", "1")])), "all");

    assert_eq!(name(get("/q?a=b&debug=1")), "q_exact");
    assert_eq!(name(get("/q?debug=2")), "all");
    assert_eq!(name(get("/q?id=cafe")), "q_regex");
    assert_eq!(name(get("/q?id=cafex")), "all");
    assert_eq!(name(get("/q?flag")), "q_present");
    assert_eq!(name(get("/q?flag=")), "q_present");
    assert_eq!(name(get("/q?flagx=1")), "all");
    assert_eq!(name(get("/q")), "all");

    assert_eq!(name(req("POST", "/m", Some("x"), &[])), "methods");
    assert_eq!(name(req("PUT", "/m", Some("x"), &[])), "methods");
    assert_eq!(name(req("GET", "/m", Some("x"), &[])), "all");

    let grpc = |ct: &str| {
        req(
            "POST",
            "/svc.Greeter/Hello",
            Some("x"),
            &[("content-type", ct)],
        )
    };
    assert_eq!(name(grpc("application/grpc")), "grpc");
    assert_eq!(name(grpc("application/grpc+proto")), "grpc");
    assert_eq!(name(grpc("application/json")), "all");
}

#[test]
fn first_match_wins_with_overlapping_prefixes() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - {name: v1, match: {prefix: /api/v1/}, route: {cluster: a}}
      - {name: api, match: {prefix: /api/}, route: {cluster: a}}
      - {name: v2_shadowed, match: {prefix: /api/v2/}, route: {cluster: a}}
      - {name: re, match: {safe_regex: "/api.*|/other.*"}, route: {cluster: a}}
      - {name: exact_after, match: {path: /other/x}, route: {cluster: a}}
      - {name: root, match: {prefix: /}, route: {cluster: a}}
      - {name: never, match: {path: /never}, route: {cluster: a}}
"#,
    );
    let s = |x: &str| Some(format!("v/{x}"));
    assert_eq!(hit(&t, &get("/api/v1/users")), s("v1"));
    assert_eq!(hit(&t, &get("/api/v2/users")), s("api"));
    assert_eq!(hit(&t, &get("/api")), s("re"));
    assert_eq!(hit(&t, &get("/other/x")), s("re"));
    assert_eq!(hit(&t, &get("/never")), s("root"));
    assert_eq!(hit(&t, &get("/")), s("root"));
}

#[test]
fn actions_and_policy() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /plain}
        route: {cluster: a}
      - match: {prefix: /retry}
        route:
          cluster: b
          timeout: 0s
          idle_timeout: 5m
          retry_policy:
            retry_on: "5xx, gateway-error,connect-failure,reset,retriable-status-codes"
            per_try_timeout: 1s
            retriable_status_codes: [503]
            retry_back_off: {base_interval: 10ms}
            max_buffered_body_bytes: 1024
      - match: {prefix: /direct}
        direct_response: {status: 418, body: "teapot\n"}
"#,
    );
    let (_, r) = t.find_request(&get("/plain")).unwrap();
    let RouteAction::Cluster(c) = r.action() else {
        panic!("not a cluster action")
    };
    assert_eq!(c.pick_cluster().name, "a");
    let p = c.forward_policy();
    assert_eq!(p.timeout, Some(Duration::from_secs(15)));
    assert_eq!(p.num_retries, 0);
    assert_eq!(c.idle_timeout(), None);

    let (_, r) = t.find_request(&get("/retry")).unwrap();
    let c = r.cluster_action().unwrap();
    assert_eq!(c.pick_cluster().name, "b");
    let p = c.forward_policy();
    assert_eq!(p.timeout, None);
    assert_eq!(c.idle_timeout(), Some(Duration::from_secs(300)));
    assert_eq!(p.num_retries, 1);
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        p.retry_on,
        RetryOn {
            five_xx: true,
            gateway_error: true,
            connect_failure: true,
            reset: true,
            retriable_status_codes: true,
            ..Default::default()
        }
    );
    assert_eq!(p.retriable_status_codes, vec![503]);
    assert_eq!(p.backoff_base, Duration::from_millis(10));
    assert_eq!(p.backoff_max, Duration::from_millis(100));
    assert_eq!(p.max_buffered_body_bytes, 1024);

    let (_, r) = t.find_request(&get("/direct")).unwrap();
    let RouteAction::DirectResponse(d) = r.action() else {
        panic!("not a direct response")
    };
    let resp = d.response();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(d.body().as_ref(), b"teapot\n");
    let body = futures_body(resp);
    assert_eq!(body, b"teapot\n");
}

fn futures_body(resp: crate::stream::Response) -> Vec<u8> {
    use http_body_util::BodyExt;
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(resp.into_body().collect())
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[test]
fn rewrites() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /api/}
        route: {cluster: a, prefix_rewrite: /, host_rewrite_literal: backend.internal}
      - match: {prefix: /API2/, case_sensitive: false}
        route: {cluster: a, prefix_rewrite: /v2/}
      - match: {prefix: /v1/}
        route: {cluster: a, regex_rewrite: {pattern: "^/v1/(.*)", substitution: "/\\1"}}
      - match: {prefix: /swap/}
        route: {cluster: a, regex_rewrite: {pattern: "^/swap/([^/]+)/([^/]+)$", substitution: "/\\2/\\1/$"}}
"#,
    );
    let apply = |mut r: Request<()>| {
        let (vh, route) = t.find_request(&r).unwrap();
        route.apply_request_mutations(vh, &mut r);
        r
    };
    let r = apply(get("/api/users?x=1&y=2"));
    assert_eq!(r.uri(), "/users?x=1&y=2");
    assert_eq!(r.headers()["host"], "backend.internal");
    let r = apply(req("GET", "http://front.example/api/a", None, &[]));
    assert_eq!(r.uri(), "http://backend.internal/a");
    let r = apply(get("/api2/z?q"));
    assert_eq!(r.uri(), "/v2/z?q");
    let r = apply(get("/v1/a/b?q=1"));
    assert_eq!(r.uri(), "/a/b?q=1");
    assert_eq!(r.headers()["host"], "example.com");
    let r = apply(get("/swap/x/y"));
    assert_eq!(r.uri(), "/y/x/$");

    // On a request head too.
    let (mut parts, ()) = get("/api/p").into_parts();
    let (vh, route) = t.find_parts(&parts).unwrap();
    route.apply_request_mutations_parts(vh, &mut parts);
    assert_eq!(parts.uri, "/p");
}

#[test]
fn header_mutations() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    request_headers_to_add:
      - {name: x-a, value: vhost, append: false}
      - {name: x-b, value: vhost}
    request_headers_to_remove: [x-secret]
    response_headers_to_add: [{name: x-served-by, value: meshgate, append: false}]
    response_headers_to_remove: [server]
    routes:
      - match: {prefix: /}
        route: {cluster: a}
        request_headers_to_add:
          - {name: x-a, value: route, append: true}
          - {name: X-B, value: route, append: false}
        request_headers_to_remove: [x-drop]
        response_headers_to_add: [{name: x-route, value: r1}]
        response_headers_to_remove: [x-internal]
"#,
    );
    let mut r = req(
        "GET",
        "/",
        Some("h"),
        &[
            ("x-a", "client"),
            ("x-b", "client"),
            ("x-secret", "s"),
            ("x-drop", "d"),
            ("x-keep", "k"),
        ],
    );
    let (vh, route) = t.find_request(&r).unwrap();
    route.apply_request_mutations(vh, &mut r);
    let all = |h: &HeaderMap, n: &str| -> Vec<String> {
        h.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    // vhost replaces the client's x-a, then the route appends.
    assert_eq!(all(r.headers(), "x-a"), ["vhost", "route"]);
    // vhost appends to the client's x-b, then the route replaces all.
    assert_eq!(all(r.headers(), "x-b"), ["route"]);
    assert!(!r.headers().contains_key("x-secret"));
    assert!(!r.headers().contains_key("x-drop"));
    assert_eq!(all(r.headers(), "x-keep"), ["k"]);

    let mut resp = http::Response::builder()
        .header("server", "upstream")
        .header("x-internal", "1")
        .header("x-served-by", "other")
        .body(())
        .unwrap();
    route.apply_response_mutations(vh, &mut resp);
    assert!(!resp.headers().contains_key("server"));
    assert!(!resp.headers().contains_key("x-internal"));
    assert_eq!(all(resp.headers(), "x-served-by"), ["meshgate"]);
    assert_eq!(all(resp.headers(), "x-route"), ["r1"]);
}

#[test]
fn redirect_location() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /https}
        redirect: {https_redirect: true}
      - match: {prefix: /port}
        redirect: {port_redirect: 8443, scheme_redirect: https, response_code: 308}
      - match: {prefix: /host}
        redirect: {host_redirect: new.example.com, response_code: 302}
      - match: {prefix: /path}
        redirect: {path_redirect: /elsewhere}
      - match: {prefix: /pq}
        redirect: {path_redirect: "/elsewhere?a=b"}
      - match: {prefix: /old/}
        redirect: {prefix_rewrite: /new/, strip_query: true}
"#,
    );
    let loc = |r: Request<()>| {
        let (_, route) = t.find_request(&r).unwrap();
        let RouteAction::Redirect(rd) = route.action() else {
            panic!("not a redirect")
        };
        let resp = rd.response(&r);
        (
            resp.status().as_u16(),
            resp.headers()["location"].to_str().unwrap().to_string(),
        )
    };
    let h = |uri: &str, host: &str| req("GET", uri, Some(host), &[]);
    assert_eq!(
        loc(h("/https/a?x=1", "example.com")),
        (301, "https://example.com/https/a?x=1".into())
    );
    // The old scheme's default port is dropped when the scheme changes.
    assert_eq!(
        loc(h("/https", "example.com:80")),
        (301, "https://example.com/https".into())
    );
    assert_eq!(
        loc(h("/https", "example.com:8080")),
        (301, "https://example.com:8080/https".into())
    );
    assert_eq!(
        loc(h("/port/x", "example.com:8080")),
        (308, "https://example.com:8443/port/x".into())
    );
    assert_eq!(
        loc(h("/host/x?y", "example.com")),
        (302, "http://new.example.com/host/x?y".into())
    );
    assert_eq!(
        loc(h("/path/x?y=1", "example.com")),
        (301, "http://example.com/elsewhere?y=1".into())
    );
    assert_eq!(
        loc(h("/pq/x?y=1", "example.com")),
        (301, "http://example.com/elsewhere?a=b".into())
    );
    assert_eq!(
        loc(h("/old/a/b?y=1", "example.com")),
        (301, "http://example.com/new/a/b".into())
    );
    // The request scheme comes from x-forwarded-proto when the URI has none.
    assert_eq!(
        loc(req(
            "GET",
            "/host",
            Some("example.com"),
            &[("x-forwarded-proto", "https")]
        )),
        (302, "https://new.example.com/host".into())
    );
}

#[test]
fn weighted_clusters_distribution() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /}
        route:
          weighted_clusters:
            clusters: [{name: a, weight: 90}, {name: b, weight: 10}]
"#,
    );
    let (_, r) = t.find_request(&get("/")).unwrap();
    let c = r.cluster_action().unwrap();
    assert_eq!(c.total_weight(), 100);
    assert_eq!(c.pick_cluster_at(0).name, "a");
    assert_eq!(c.pick_cluster_at(89).name, "a");
    assert_eq!(c.pick_cluster_at(90).name, "b");
    assert_eq!(c.pick_cluster_at(99).name, "b");
    assert_eq!(c.pick_cluster_at(100).name, "a"); // modulo
    let n = 10_000;
    let a = (0..n).filter(|_| c.pick_cluster().name == "a").count();
    let share = a as f64 / n as f64;
    assert!((0.88..=0.92).contains(&share), "share of a: {share}");
}

#[test]
fn validation_errors() {
    let vh = |routes: &str| {
        format!(
            "virtual_hosts:\n  - name: v\n    domains: [\"*\"]\n    routes:\n      - {{match: {{prefix: /ok}}, route: {{cluster: a}}}}\n      - {{match: {{prefix: /ok2}}, route: {{cluster: a}}}}\n      - {routes}\n"
        )
    };
    let r2 = "virtual_hosts[0].routes[2]";
    let cases: Vec<(String, String, &str)> = vec![
        (
            vh("{match: {safe_regex: \"(\"}, route: {cluster: a}}"),
            format!("{r2}.match.safe_regex"),
            "invalid regex",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: x}}"),
            format!("{r2}.route.cluster"),
            "unknown cluster 'x' (defined: a, b)",
        ),
        (
            vh("{match: {prefix: /x, path: /y}, route: {cluster: a}}"),
            format!("{r2}.match"),
            "set exactly one of prefix, path, safe_regex, path_separated_prefix",
        ),
        (
            vh("{match: {}, route: {cluster: a}}"),
            format!("{r2}.match"),
            "set exactly one of prefix, path, safe_regex, path_separated_prefix",
        ),
        (
            vh("{match: {prefix: /x}}"),
            r2.to_string(),
            "set exactly one of route, redirect, direct_response",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a}, direct_response: {status: 200}}"),
            r2.to_string(),
            "set exactly one of route, redirect, direct_response",
        ),
        (
            vh("{match: {prefix: /x}, route: {}}"),
            format!("{r2}.route"),
            "set exactly one of cluster, weighted_clusters",
        ),
        (
            vh("{match: {prefix: /x}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 0}]}}}"),
            format!("{r2}.route.weighted_clusters.clusters[1].weight"),
            "must be >= 1",
        ),
        (
            vh("{match: {prefix: /x}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: z, weight: 1}]}}}"),
            format!("{r2}.route.weighted_clusters.clusters[1].name"),
            "unknown cluster 'z'",
        ),
        (
            vh("{match: {path: /x}, route: {cluster: a, prefix_rewrite: /}}"),
            format!("{r2}.route.prefix_rewrite"),
            "prefix_rewrite needs a prefix match",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a, regex_rewrite: {pattern: \"(a)\", substitution: \"\\\\2\"}}}"),
            format!("{r2}.route.regex_rewrite.substitution"),
            "group 2",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a, retry_policy: {retry_on: \"5xx,bogus\"}}}"),
            format!("{r2}.route.retry_policy.retry_on"),
            "unknown retry_on 'bogus'",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a, retry_policy: {retry_on: 5xx, retriable_status_codes: [503, 600]}}}"),
            format!("{r2}.route.retry_policy.retriable_status_codes[1]"),
            "out of range",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 10ms}}}}"),
            format!("{r2}.route.retry_policy.retry_back_off.max_interval"),
            "must be >= base_interval",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a, host_rewrite_literal: \"a b\"}}"),
            format!("{r2}.route.host_rewrite_literal"),
            "invalid host",
        ),
        (
            vh("{match: {prefix: /x}, direct_response: {status: 600}}"),
            format!("{r2}.direct_response.status"),
            "status 600 out of range 200..=599",
        ),
        (
            vh("{match: {prefix: /x}, direct_response: {status: 101}}"),
            format!("{r2}.direct_response.status"),
            "out of range",
        ),
        (
            vh("{match: {prefix: /x}, redirect: {response_code: 200}}"),
            format!("{r2}.redirect.response_code"),
            "not one of 301, 302, 303, 307, 308",
        ),
        (
            vh("{match: {safe_regex: /x}, redirect: {prefix_rewrite: /y}}"),
            format!("{r2}.redirect.prefix_rewrite"),
            "needs a prefix match",
        ),
        (
            vh("{match: {prefix: /x}, redirect: {path_redirect: nope}}"),
            format!("{r2}.redirect.path_redirect"),
            "must start with '/'",
        ),
        (
            vh("{match: {prefix: /x, headers: [{name: x-a, safe_regex_match: \"[\"}]}, route: {cluster: a}}"),
            format!("{r2}.match.headers[0].safe_regex_match"),
            "invalid regex",
        ),
        (
            vh("{match: {prefix: /x, headers: [{name: \"bad name\"}]}, route: {cluster: a}}"),
            format!("{r2}.match.headers[0].name"),
            "invalid header name",
        ),
        (
            vh("{match: {prefix: /x, headers: [{name: x-a, exact_match: a, prefix_match: b}]}, route: {cluster: a}}"),
            format!("{r2}.match.headers[0]"),
            "set at most one of",
        ),
        (
            vh("{match: {prefix: /x, query_parameters: [{name: q, safe_regex_match: \"(\"}]}, route: {cluster: a}}"),
            format!("{r2}.match.query_parameters[0].safe_regex_match"),
            "invalid regex",
        ),
        (
            vh("{match: {prefix: /x, methods: [GET, get]}, route: {cluster: a}}"),
            format!("{r2}.match.methods[1]"),
            "use 'GET'",
        ),
        (
            vh("{match: {prefix: \"/x?y\"}, route: {cluster: a}}"),
            format!("{r2}.match.prefix"),
            "must not contain '?'",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a}, request_headers_to_add: [{name: x-a, value: \"a\\nb\"}]}"),
            format!("{r2}.request_headers_to_add[0].value"),
            "invalid header value",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a}, response_headers_to_add: [{name: \"x:a\", value: b}]}"),
            format!("{r2}.response_headers_to_add[0].name"),
            "invalid header name",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a}, response_headers_to_remove: [x-ok, \"a b\"]}"),
            format!("{r2}.response_headers_to_remove[1]"),
            "invalid header name",
        ),
        (
            vh("{match: {prefix: /x}, route: {cluster: a}, request_headers_to_remove: [host]}"),
            format!("{r2}.request_headers_to_remove[0]"),
            "cannot remove 'host'",
        ),
        (
            "virtual_hosts:\n  - {name: a, domains: [\"x.com\", \"*\"], routes: []}\n  - {name: b, domains: [y.com, X.COM], routes: []}\n".into(),
            "virtual_hosts[1].domains[1]".into(),
            "duplicate domain 'X.COM' (also in virtual host 'a')",
        ),
        (
            "virtual_hosts:\n  - {name: a, domains: [\"*\"], routes: []}\n  - {name: a, domains: [y.com], routes: []}\n".into(),
            "virtual_hosts[1].name".into(),
            "duplicate virtual host name",
        ),
        (
            "virtual_hosts:\n  - {name: a, domains: [\"a.*.com\"], routes: []}\n".into(),
            "virtual_hosts[0].domains[0]".into(),
            "wildcard",
        ),
        (
            "virtual_hosts:\n  - {name: a, domains: [], routes: []}\n".into(),
            "virtual_hosts[0].domains".into(),
            "must not be empty",
        ),
        (
            "virtual_hosts:\n  - {name: a, domains: [a], routes: [], request_headers_to_add: [{name: \"\", value: x}]}\n".into(),
            "virtual_hosts[0].request_headers_to_add[0].name".into(),
            "invalid header name",
        ),
    ];
    for (yaml, path, msg) in cases {
        let e = build_err(&yaml);
        assert_eq!(e.path, path, "for {yaml}: {e}");
        assert!(
            e.message.contains(msg),
            "for {yaml}: got '{}', want '{msg}'",
            e.message
        );
    }
}

#[test]
fn serde_model() {
    // Unknown fields are errors, with their path.
    let v: serde_json::Value = serde_yaml::from_str(
        "virtual_hosts: [{name: v, domains: [\"*\"], routes: [{match: {prefix: /, bogus: 1}, route: {cluster: a}}]}]",
    )
    .unwrap();
    let e = parse_typed::<RouteConfig>(&v).unwrap_err();
    assert_eq!(e.path, "virtual_hosts[0].routes[0].match.bogus");
    assert!(e.message.contains("bogus"), "{}", e.message);
    // Durations and defaults.
    let cfg = parse(
        "virtual_hosts: [{name: v, domains: [\"*\"], routes: [{match: {prefix: /}, route: {cluster: a, timeout: 250ms, retry_policy: {retry_on: reset}}}]}]",
    );
    let route = cfg.virtual_hosts[0].routes[0].route.as_ref().unwrap();
    assert_eq!(route.timeout, Duration::from_millis(250));
    let rp = route.retry_policy.as_ref().unwrap();
    assert_eq!(rp.num_retries, 1);
    assert_eq!(rp.retry_back_off.base_interval, Duration::from_millis(25));
    assert_eq!(rp.max_buffered_body_bytes, 65536);
    assert!(cfg.virtual_hosts[0].routes[0].match_.case_sensitive);
    // Serialize, parse back, same table behaviour.
    let again: RouteConfig = serde_yaml::from_str(&serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let route2 = again.virtual_hosts[0].routes[0].route.as_ref().unwrap();
    assert_eq!(route2.timeout, Duration::from_millis(250));
    assert_eq!(route2.retry_policy.as_ref().unwrap().retry_on, "reset");
    // The full model of MATCHES round-trips.
    let m = parse(MATCHES);
    let m2: RouteConfig = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
    assert_eq!(format!("{m:?}"), format!("{m2:?}"));
}

/// The index must give the linear scan's answer: 2,000 random routes with
/// overlapping prefixes, exact paths, case-insensitive matches, regexes and
/// conditions, probed by 20,000 random requests.
#[test]
fn index_equals_linear_scan() {
    let mut rng = StdRng::seed_from_u64(0x5eed_1234);
    const SEGS: [&str; 10] = ["a", "b", "api", "v1", "V1", "x", "users", "Items", "c", "d"];
    let seg_path = |rng: &mut StdRng, min: usize, max: usize| -> String {
        let n = rng.random_range(min..=max);
        let mut p = String::from("/");
        for i in 0..n {
            if i > 0 {
                p.push('/');
            }
            p.push_str(SEGS[rng.random_range(0..SEGS.len())]);
        }
        if rng.random_bool(0.3) {
            p.push('/');
        }
        p
    };
    let mut routes = Vec::new();
    let mut literals = Vec::new();
    for i in 0..2000 {
        let mut m = RouteMatchConfig::default();
        match rng.random_range(0..100) {
            0..45 => {
                let min = if rng.random_bool(0.1) { 1 } else { 2 };
                let mut p = seg_path(&mut rng, min, 4);
                if p.len() > 2 && rng.random_bool(0.2) {
                    p.pop(); // prefixes ending mid-segment
                }
                m.prefix = Some(p);
            }
            45..85 => m.path = Some(seg_path(&mut rng, 0, 4)),
            _ => {
                let a = SEGS[rng.random_range(0..SEGS.len())];
                let b = SEGS[rng.random_range(0..SEGS.len())];
                let c = SEGS[rng.random_range(0..SEGS.len())];
                m.safe_regex = Some(match rng.random_range(0..3) {
                    0 => format!("/({a}|{b})/{c}(/.*)?"),
                    // Indexed by a literal prefix (`/a/`, `/a/b`).
                    1 => format!("/{a}/{b}?[a-z]*(/.*)?"),
                    _ => format!("/{a}/{c}[0-9]*/?.*"),
                });
            }
        }
        literals.extend(m.prefix.clone().or(m.path.clone()));
        m.case_sensitive = !rng.random_bool(0.2);
        if rng.random_bool(0.25) {
            m.headers.push(HeaderMatcherConfig {
                name: "x-h".into(),
                exact_match: rng
                    .random_bool(0.7)
                    .then(|| rng.random_range(0..3).to_string()),
                invert_match: rng.random_bool(0.2),
                ..Default::default()
            });
        }
        if rng.random_bool(0.1) {
            m.methods.push("POST".into());
        }
        if rng.random_bool(0.1) {
            m.query_parameters.push(QueryParameterMatcherConfig {
                name: "q".into(),
                exact_match: Some("1".into()),
                ..Default::default()
            });
        }
        routes.push(RouteEntryConfig {
            name: Some(format!("r{i}")),
            match_: m,
            direct_response: Some(DirectResponseConfig {
                status: 200,
                body: None,
            }),
            ..Default::default()
        });
    }
    let cfg = RouteConfig {
        name: "random".into(),
        virtual_hosts: vec![VirtualHostConfig {
            name: "v".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        validate_clusters: None,
        ignore_port_in_host_matching: None,
    };
    let t = RouteTable::build(&cfg, &clusters(&[])).unwrap();
    let mut hits = 0;
    let mut kinds = std::collections::BTreeSet::new();
    let mut distinct = std::collections::BTreeSet::new();
    for _ in 0..20_000 {
        // Half the probes start from a route's own prefix or path.
        let mut path = if rng.random_bool(0.5) {
            literals[rng.random_range(0..literals.len())].clone()
        } else {
            seg_path(&mut rng, 0, 5)
        };
        if rng.random_bool(0.2) {
            path = path.to_ascii_uppercase();
        }
        if rng.random_bool(0.2) {
            path.push_str(SEGS[rng.random_range(0..SEGS.len())]);
        }
        if rng.random_bool(0.3) {
            path.push_str(if rng.random_bool(0.5) { "?q=1" } else { "?q=2" });
        }
        let method = if rng.random_bool(0.3) { "POST" } else { "GET" };
        let h = rng.random_range(0..4).to_string();
        let headers: Vec<(&str, &str)> = if rng.random_bool(0.7) {
            vec![("x-h", &h)]
        } else {
            vec![]
        };
        let r = req(method, &path, Some("h"), &headers);
        let input = RouteInput::from_request(&r);
        let a = t.find(&input).map(|(_, r)| r.index());
        let b = t.find_linear(&input).map(|(_, r)| r.index());
        assert_eq!(a, b, "{method} {path} {headers:?}");
        kinds.insert(a.map(|i| {
            format!(
                "{:?}",
                std::mem::discriminant(t.virtual_hosts()[0].routes()[i].route_match().path_match())
            )
        }));
        if let Some(i) = a {
            hits += 1;
            distinct.insert(i);
        }
    }
    // The workload exercises the index: most requests hit, many routes win.
    assert!(hits > 10_000, "hits: {hits}");
    assert!(distinct.len() > 200, "distinct winners: {}", distinct.len());
    // Prefix, exact and regex routes all win sometimes, and some requests miss.
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}

#[test]
fn regex_literal_prefixes() {
    use super::matcher::regex_literal_prefix as p;
    assert_eq!(p("/re9/[0-9]+"), "/re9/");
    assert_eq!(p("/v1/users"), "/v1/users");
    assert_eq!(p("/ab?c"), "/a");
    assert_eq!(p("/ab*"), "/a");
    assert_eq!(p("/ab{2}"), "/a");
    assert_eq!(p("/ab+"), "/ab");
    assert_eq!(p("/a.b"), "/a");
    assert_eq!(p("/a|/b"), "");
    assert_eq!(p("(?i)/a"), "");
    assert_eq!(p("/é?"), "/");
    assert_eq!(p("/x\\.y"), "/x");
    // An indexed regex route still needs its regex to match.
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - {name: re, match: {safe_regex: "/re/[0-9]+"}, route: {cluster: a}}
      - {name: all, match: {prefix: /}, route: {cluster: a}}
"#,
    );
    assert_eq!(hit(&t, &get("/re/12")), Some("v/re".into()));
    assert_eq!(hit(&t, &get("/re/12x")), Some("v/all".into()));
}

#[test]
fn retry_on_names() {
    assert_eq!(
        parse_retry_on("reset").unwrap(),
        RetryOn {
            reset: true,
            ..Default::default()
        }
    );
    assert!(parse_retry_on("").is_err());
    let all = parse_retry_on(
        "5xx,retriable-4xx,envoy-ratelimited,reset-before-request,refused-stream,retriable-headers,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable",
    )
    .unwrap();
    assert!(all.retriable_4xx && all.envoy_ratelimited && all.reset_before_request);
    assert!(all.refused_stream && all.retriable_headers && all.grpc_unavailable);
    assert!(all.grpc_cancelled && all.grpc_deadline_exceeded && all.grpc_internal);
    assert!(all.grpc_resource_exhausted);
    assert!(
        parse_retry_on("5xx,bogus")
            .unwrap_err()
            .to_string()
            .contains("bogus")
    );
    assert!(
        parse_retry_on("http3-post-connect-failure")
            .unwrap_err()
            .to_string()
            .contains("not supported")
    );
}

#[test]
fn hedge_policy_of_the_route_wins_over_the_virtual_hosts() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    hedge_policy: {hedge_on_per_try_timeout: true}
    routes:
      - match: {prefix: /own}
        route: {cluster: a, hedge_policy: {hedge_on_per_try_timeout: false}}
      - match: {prefix: /}
        route: {cluster: a, retry_policy: {retry_on: 5xx, per_try_idle_timeout: 150ms}}
"#,
    );
    let p = |path: &str| {
        let (_, r) = t.find_request(&get(path)).unwrap();
        r.cluster_action().unwrap().forward_policy().clone()
    };
    assert!(!p("/own").hedge_on_per_try_timeout);
    let q = p("/other");
    assert!(q.hedge_on_per_try_timeout);
    assert_eq!(q.per_try_idle_timeout, Some(Duration::from_millis(150)));
    let e = build_err(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    hedge_policy: {initial_requests: 3}
    routes:
      - match: {prefix: /}
        route: {cluster: a, hedge_policy: {}}
"#,
    );
    assert_eq!(e.path, "virtual_hosts[0].hedge_policy.initial_requests");
}

/// Past `REGEX_SET_MIN` regexes without a literal prefix, one `RegexSet`
/// pass filters them: a path none matches falls through to the catch-all,
/// a path one matches still gets the first such route whose conditions
/// hold, in config order.
#[test]
fn unindexed_regexes_behind_a_set() {
    let mut yaml =
        String::from("name: r\nvirtual_hosts:\n  - name: v\n    domains: ['*']\n    routes:\n");
    for i in 0..20 {
        yaml.push_str(&format!(
            "      - name: re{i}\n        match: {{safe_regex: '/(re{i}|rx{i})/[0-9]+'}}\n        route: {{cluster: a}}\n"
        ));
    }
    yaml.push_str(
        "      - name: re15h\n        match: {safe_regex: '/(re15|rx15)/.*', headers: [{name: x-h, exact_match: '1'}]}\n        route: {cluster: b}\n",
    );
    yaml.push_str("      - name: all\n        match: {prefix: /}\n        route: {cluster: c}\n");
    let t = table(&yaml);
    let vh = &t.virtual_hosts()[0];
    assert_eq!(vh.index.unindexed.len(), 21);
    assert!(vh.index.unindexed_set.is_some());
    let name = |r: &Request<()>| {
        t.find_request(r)
            .and_then(|(_, route)| route.name().map(|n| n.to_string()))
    };
    assert_eq!(name(&get("/rx15/42")).as_deref(), Some("re15"));
    assert_eq!(name(&get("/re3/7?q=1")).as_deref(), Some("re3"));
    assert_eq!(name(&get("/hit/x")).as_deref(), Some("all"));
    assert_eq!(name(&get("/rx15/x")).as_deref(), Some("all"));
    let with_header = req("GET", "/rx15/x", Some("h"), &[("x-h", "1")]);
    assert_eq!(name(&with_header).as_deref(), Some("re15h"));
    for r in [get("/rx15/42"), get("/hit/x"), with_header] {
        hit(&t, &r);
    }
}

/// Redirect `regex_rewrite` (Envoy): the path without its query is
/// rewritten, the query kept (or dropped with `strip_query`); an empty
/// result keeps the request's path, a result without `/` gets one.
#[test]
fn redirect_regex_rewrite_location() {
    let t = table(
        r#"
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: {prefix: /swap/}
        redirect: {regex_rewrite: {pattern: "^/swap/([^/]+)/([^/]+)$", substitution: "/\\2/\\1"}}
      - match: {prefix: /strip/}
        redirect: {regex_rewrite: {pattern: "^/strip", substitution: "/s"}, strip_query: true}
      - match: {prefix: /gone}
        redirect: {regex_rewrite: {pattern: "^.*$", substitution: ""}}
      - match: {prefix: /rel}
        redirect: {regex_rewrite: {pattern: "^/rel/", substitution: "x/"}}
"#,
    );
    let loc = |uri: &str| {
        let r = req("GET", uri, Some("example.com"), &[]);
        let (_, route) = t.find_request(&r).unwrap();
        let RouteAction::Redirect(rd) = route.action() else {
            panic!("not a redirect")
        };
        rd.response(&r).headers()["location"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(loc("/swap/a/b?q=1"), "http://example.com/b/a?q=1");
    // Only the path is matched: the query cannot be captured.
    assert_eq!(loc("/swap/a/b?q=/c"), "http://example.com/b/a?q=/c");
    assert_eq!(loc("/strip/z?y=2"), "http://example.com/s/z");
    assert_eq!(loc("/gone?k"), "http://example.com/gone?k");
    assert_eq!(loc("/rel/x"), "http://example.com/x/x");
}

#[test]
fn redirect_rewrites_and_stream_duration_are_validated_by_name() {
    let vh = |route: &str| {
        format!("virtual_hosts:\n  - name: v\n    domains: [\"*\"]\n    routes:\n      - {route}\n")
    };
    let e = build_err(&vh(
        "{match: {prefix: /x}, redirect: {prefix_rewrite: /y, regex_rewrite: {pattern: a, substitution: b}}}",
    ));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].redirect");
    assert!(e.message.contains("regex_rewrite"), "{e:?}");
    let e = build_err(&vh(
        "{match: {prefix: /x}, redirect: {regex_rewrite: {pattern: \"(\", substitution: b}}}",
    ));
    assert_eq!(
        e.path,
        "virtual_hosts[0].routes[0].redirect.regex_rewrite.pattern"
    );
    // Envoy's rule: no route timeout with max_stream_duration; one set
    // with it is refused rather than ignored.
    let e = build_err(&vh(
        "{match: {prefix: /x}, route: {cluster: a, timeout: 3s, max_stream_duration: {max_stream_duration: 1s}}}",
    ));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.timeout");
    let t = table(&vh(
        "{match: {prefix: /x}, route: {cluster: a, max_stream_duration: {grpc_timeout_header_max: 1s}}}",
    ));
    let r = req("GET", "/x", Some("h"), &[]);
    let (_, route) = t.find_request(&r).unwrap();
    let RouteAction::Cluster(c) = route.action() else {
        panic!("not a cluster route")
    };
    assert_eq!(c.forward_policy().timeout, None);
    assert_eq!(
        c.max_stream_duration()
            .and_then(|m| m.grpc_timeout_header_max),
        Some(std::time::Duration::from_secs(1))
    );
}
