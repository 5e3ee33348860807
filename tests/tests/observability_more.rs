//! Operations and metrics beyond tests/tests/admin_api.rs and
//! prometheus.rs, against real peers: the per-cluster upstream request
//! time histogram (one observation per upstream try, retries included)
//! and `/drain_listeners?inboundonly` (only `traffic_direction: INBOUND`
//! listeners stop accepting).

use meshgate_tests::curl::curl;
use meshgate_tests::pypeer::PyPeer as Peer;
use meshgate_tests::*;

fn get(port: u16, path: &str) -> u16 {
    curl(&[&format!("http://127.0.0.1:{port}{path}")]).0
}

#[test]
fn upstream_rq_time_histogram_counts_every_try_per_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo");
    // /fail/... answers 503.
    let echo = Peer::start("tracing_peer.py", &["echo", log.to_str().unwrap()]);
    let port = free_port();
    let mg = Meshgate::start(&format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /fail/}}
                        route:
                          cluster: echo
                          retry_policy: {{retry_on: 5xx, num_retries: 1, retry_back_off: {{base_interval: 5ms}}}}
                      - match: {{prefix: /}}
                        route: {{cluster: echo}}
clusters:
  - name: echo
    endpoints: [{{address: "127.0.0.1:{}"}}]
"#,
        echo.port
    ));
    wait_listening(([127, 0, 0, 1], port).into());
    assert_eq!(get(port, "/a"), 200);
    assert_eq!(get(port, "/b"), 200);
    // One request, two tries.
    assert_eq!(get(port, "/fail/c"), 503);
    let count = mg.wait_metric(
        "meshgate_cluster_upstream_rq_time_seconds_count",
        &[("cluster", "echo")],
        |v| v >= 4.0,
    );
    assert_eq!(count, 4.0);
    let (status, body) = mg.admin_get("/stats/prometheus");
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE meshgate_cluster_upstream_rq_time_seconds histogram"),
        "{body}"
    );
    let inf = metric_from(
        &body,
        "meshgate_cluster_upstream_rq_time_seconds_bucket",
        &[("cluster", "echo"), ("le", "+Inf")],
    );
    assert_eq!(inf, 4.0);
    let sum = metric_from(
        &body,
        "meshgate_cluster_upstream_rq_time_seconds_sum",
        &[("cluster", "echo")],
    );
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
}

#[test]
fn drain_listeners_inboundonly_stops_only_inbound_listeners() {
    let (inp, outp, plain) = (free_port(), free_port(), free_port());
    let listener = |name: &str, port: u16, direction: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:{port}
{direction}    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
"#
        )
    };
    let mg = Meshgate::start(&format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}{}",
        listener("in", inp, "    traffic_direction: INBOUND\n"),
        listener("out", outp, "    traffic_direction: OUTBOUND\n"),
        listener("plain", plain, "")
    ));
    for p in [inp, outp, plain] {
        wait_listening(([127, 0, 0, 1], p).into());
        assert_eq!(get(p, "/"), 200);
    }
    let url = format!("http://{}/drain_listeners?inboundonly", mg.admin.unwrap());
    assert_eq!(curl(&["-X", "POST", &url]).0, 200);
    wait_until_within(10, "the inbound listener to refuse", || {
        std::net::TcpStream::connect(("127.0.0.1", inp)).is_err()
    });
    assert_eq!(get(outp, "/"), 200);
    assert_eq!(get(plain, "/"), 200);
    // A bad direction names the field.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n{}",
            listener("x", free_port(), "    traffic_direction: SIDEWAYS\n")
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["validate", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("traffic_direction"),
        "{out}{err}"
    );
}
