//! Access logs: one JSON line per request with route, cluster, upstream,
//! local-reply reason, request id and, on TLS, the negotiated parameters
//! and the verified client identity.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::process::Command;

#[test]
fn proxy_writes_one_json_line_per_request() {
    let backend = HttpBackend::start("b", Proto::Http1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (plain, tls) = (free_port(), free_port());
    let certs = workspace().join("examples/certs");
    let c = |f: &str| certs.join(f).display().to_string();
    let proxy = format!(
        r#"          - name: proxy
            config:
              access_log: {{path: "{}"}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /api/}}
                        route: {{cluster: backend}}
"#,
        log.display()
    );
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: plain
    address: 127.0.0.1:{plain}
    filter_chains:
      - filters:
{proxy}  - name: secure
    address: 127.0.0.1:{tls}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
          client_validation: {{trusted_ca: "{ca}", required: false}}
        filters:
{proxy}clusters:
  - name: backend
    endpoints: [{{address: "{addr}"}}]
"#,
        crt = c("server.pem"),
        key = c("server.key"),
        ca = c("client-ca.pem"),
        addr = backend.addr,
    );
    let _mg = Meshgate::start(&yaml);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(&[
            "-H",
            "x-request-id: abc-123",
            &format!("http://127.0.0.1:{plain}/api/x?q=1")
        ]),
        "200"
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{plain}/nowhere")]), "404");
    assert_eq!(
        curl(&[
            "--cacert",
            &c("ca.pem"),
            "--cert",
            &c("client.pem"),
            "--key",
            &c("client.key"),
            &format!("https://localhost:{tls}/api/tls"),
        ]),
        "200"
    );
    let lines: Vec<serde_json::Value> = wait_for_within(5, "three access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(lines.len(), 3);
    let ok = &lines[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/api/x?q=1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["listener"], "plain");
    assert_eq!(ok["upstream_cluster"], "backend");
    assert_eq!(ok["upstream_host"], backend.addr.to_string());
    assert_eq!(ok["request_id"], "abc-123");
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["start_time"].as_str().unwrap().ends_with('Z'));
    let missing = &lines[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["local_reply"], "no_route");
    assert!(missing["upstream_cluster"].is_null());
    let secure = &lines[2];
    assert_eq!(secure["listener"], "secure");
    assert_eq!(secure["tls"]["version"], "TLSv1_3");
    assert_eq!(secure["tls"]["sni"], "localhost");
    assert_eq!(
        secure["tls"]["peer_uri_sans"][0],
        "spiffe://meshgate.test/ns/default/sa/client"
    );
}
