//! End-to-end tests of the command line: `validate`, bad configs that name
//! file, line and field, a port in use, `--version`, the short `-c` form.

use meshgate_tests::*;
use std::net::TcpListener;
use std::path::Path;

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = "\
listeners:
  - name: front
    address: 127.0.0.1:PORT
    filter_chains:
      - filters:
          - name: tcp_proxy
            config:
              cluster: backends
clusters:
  - name: backends
    endpoints:
      - address: 127.0.0.1:1
";

#[test]
fn examples_validate() {
    for ex in [
        "quickstart.yaml",
        "tcp-lb.yaml",
        "http-gateway.yaml",
        "tls-gateway.yaml",
        "xds-bootstrap.yaml",
    ] {
        let p = workspace().join("examples").join(ex);
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{ex}: {out}{err}");
        assert!(out.contains(": ok"), "{out}");
    }
    for f in [
        "benches/compare/tcp.yaml",
        "benches/compare/http1.yaml",
        "benches/compare/https.yaml",
    ] {
        let p = workspace().join(f);
        let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{f}: {out}{err}");
    }
}

/// (config text, expected line, expected field, expected message fragment)
fn bad_cases() -> Vec<(String, usize, &'static str, &'static str)> {
    vec![
        (
            GOOD.replace("    address: 127.0.0.1:PORT", "    adress: 127.0.0.1:PORT"),
            3,
            "listeners[0]",
            "unknown field `adress`",
        ),
        (
            GOOD.replace("cluster: backends", "cluster: nope"),
            8,
            "listeners[0].filter_chains[0].filters[0].config.cluster",
            "unknown cluster 'nope'",
        ),
        (
            GOOD.replace("127.0.0.1:PORT", "127.0.0.1:99999"),
            3,
            "listeners[0].address",
            "invalid address",
        ),
        (
            GOOD.replace("127.0.0.1:1", "not-an-ip:1"),
            12,
            "clusters[0].endpoints[0].address",
            "invalid address",
        ),
        (
            GOOD.replace("name: tcp_proxy", "name: tcp_proxi"),
            6,
            "listeners[0].filter_chains[0].filters[0].name",
            "unknown network filter 'tcp_proxi'",
        ),
        (
            GOOD.replace("  - name: backends\n", "  - name: backends\n    lb_policy: fastest\n"),
            11,
            "clusters[0].lb_policy",
            "unknown load balancer 'fastest'",
        ),
        (
            GOOD.replace("              cluster: backends", "              cluster: backends\n              idle_timeout: forever"),
            9,
            "listeners[0].filter_chains[0].filters[0].config.idle_timeout",
            "",
        ),
        (
            GOOD.replace("listeners:", "listeners:\n  - name: front\n    address: 127.0.0.1:5\n    filter_chains: [{filters: [{name: echo}]}]"),
            5,
            "listeners[1].name",
            "duplicate listener name",
        ),
        (
            "listeners: [\n".to_string(),
            2,
            "",
            "",
        ),
    ]
}

#[test]
fn bad_configs_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, line, field, msg)) in bad_cases().into_iter().enumerate() {
        let text = text.replace("PORT", "10000");
        let f = write_config(dir.path(), &format!("bad{i}.yaml"), &text);
        let (code, out, err) = run_cli(&["validate", &f]);
        assert_eq!(code, 1, "case {i}: {out}{err}");
        let first = err.lines().next().unwrap_or_default();
        assert_eq!(
            err.trim().lines().count(),
            1,
            "case {i}: want one line, got {err}"
        );
        let prefix = format!("{f}:{line}: {field}");
        assert!(
            first.starts_with(&prefix),
            "case {i}: want prefix {prefix:?}, got {first:?}"
        );
        assert!(first.contains(msg), "case {i}: want {msg:?} in {first:?}");
        // `run` refuses the same config the same way.
        let (code, _, err2) = run_cli(&["run", "-c", &f]);
        assert_eq!(code, 1, "case {i} run");
        assert!(err2.contains(&prefix), "case {i} run: {err2}");
    }
}

#[test]
fn json_configs_work_and_errors_have_lines() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{
  "listeners": [{"name": "l", "address": "127.0.0.1:10000",
                 "filter_chains": [{"filters": [{"name": "echo"}]}]}],
  "clusters": []
}"#;
    let f = write_config(dir.path(), "good.json", good);
    assert_eq!(run_cli(&["validate", &f]).0, 0);
    let bad = good.replace(
        "\"clusters\": []",
        "\"clusters\": [{\"name\": \"c\", \"endpoints\": [], \"oops\": 1}]",
    );
    let f = write_config(dir.path(), "bad.json", &bad);
    let (code, _, err) = run_cli(&["validate", &f]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{f}:4: clusters[0]")), "{err}");
    assert!(err.contains("oops"), "{err}");
}

#[test]
fn port_in_use_is_a_one_line_error_with_the_field() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(
        dir.path(),
        "inuse.yaml",
        &GOOD.replace("PORT", &port.to_string()),
    );
    let (code, _, err) = run_cli(&["run", "-c", &f]);
    assert_eq!(code, 1, "{err}");
    let last = err.trim().lines().last().unwrap();
    let want = format!(
        "{f}:3: listeners[0].address: cannot listen on 127.0.0.1:{port}: address already in use"
    );
    // The whole line, and the message once in all of stderr.
    assert_eq!(last, want, "{err}");
    assert_eq!(err.matches("address already in use").count(), 1, "{err}");
}

#[test]
fn version_help_and_missing_file() {
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("meshgate "), "{out}");
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("validate") && out.contains("run"), "{out}");
    let (code, _, err) = run_cli(&["validate", "/nonexistent/meshgate.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("/nonexistent/meshgate.yaml: cannot read config file"),
        "{err}"
    );
}

#[test]
fn short_form_runs_the_config() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listeners:\n  - name: e\n    address: 127.0.0.1:{port}\n    filter_chains: [{{filters: [{{name: echo}}]}}]\n"
    );
    let f = write_config(dir.path(), "echo.yaml", &text);
    let mut child = std::process::Command::new(bin())
        .args(["-c", &f])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn l7_config_errors_name_the_route_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
listeners:
  - name: web
    address: 127.0.0.1:10080
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: [\"*\"]
                    routes:
                      - match: {prefix: /api/}
                        route: {cluster: nope}
clusters:
  - name: api
    endpoints: [{address: \"127.0.0.1:1\"}]
";
    let f = write_config(dir.path(), "l7.yaml", text);
    let (code, _, err) = run_cli(&["validate", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "{f}:14: listeners[0].filter_chains[0].filters[0].config.route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'"
        )),
        "{err}"
    );
    let f = write_config(
        dir.path(),
        "l7b.yaml",
        &text
            .replace("{prefix: /api/}", "{safe_regex: \"([\"}")
            .replace("cluster: nope", "cluster: api"),
    );
    let (code, _, err) = run_cli(&["validate", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("routes[0].match.safe_regex"), "{err}");
    assert!(err.starts_with(&format!("{f}:13: ")), "{err}");
}
