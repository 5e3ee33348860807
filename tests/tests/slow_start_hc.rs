//! Slow start with active health checks (issue 18): as in Envoy, an
//! endpoint's `slow_start_window` starts when an active check turns it
//! healthy (`lastHcPassTime`), not when it joined the cluster. Two
//! HTTP/1.1 backends behind a round-robin cluster with a 3 s window; one
//! fails its checks for longer than the window, then passes: right after,
//! it gets a small share of the traffic (it would get half if the window
//! had started when it joined), and its share grows back to half.

use meshgate_tests::hc_backend::HcBackend;
use meshgate_tests::*;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// `n` keep-alive GETs: how many each backend (by body) answered.
fn send(addr: SocketAddr, n: u32) -> (u32, u32) {
    let (mut a, mut b) = (0, 0);
    let mut conn: Option<BufReader<TcpStream>> = None;
    for _ in 0..n {
        let r = conn.get_or_insert_with(|| BufReader::new(TcpStream::connect(addr).unwrap()));
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let reply = read_reply(r).expect("a whole response");
        assert_eq!(reply.status, 200);
        match reply.body.as_str() {
            "a" => a += 1,
            "b" => b += 1,
            other => panic!("body {other:?}"),
        }
        if reply.close {
            conn = None;
        }
    }
    (a, b)
}

#[test]
fn slow_start_window_starts_at_the_first_passing_health_check() {
    let a = HcBackend::start("a");
    let b = HcBackend::start("b");
    b.set_health_status(503);
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: backend}}
clusters:
  - name: backend
    lb_config: {{slow_start_config: {{slow_start_window: 3s, min_weight_percent: 5}}}}
    endpoints: [{{address: "{}"}}, {{address: "{}"}}]
    health_checks:
      - {{timeout: 1s, interval: 250ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /healthz}}}}
"#,
        a.addr, b.addr
    );
    let mg = Meshgate::start(&yaml);
    let started = Instant::now();
    let addr = mg.listener_addr("web");
    wait_listening(addr);
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 1.0,
    );
    // b keeps failing for longer than the window: 14 failed checks at
    // 250 ms are over 3 s (the first one is spread over an interval).
    wait_until_within(30, "b failed 14 checks", || b.checks() >= 14);
    let unhealthy_for = started.elapsed();
    assert!(unhealthy_for.as_millis() > 3000, "{unhealthy_for:?}");
    let (only_a, none) = send(addr, 20);
    assert_eq!((only_a, none), (20, 0));
    b.set_health_status(200);
    mg.wait_metric(
        "meshgate_cluster_membership_healthy",
        &[("cluster", "backend")],
        |v| v == 2.0,
    );
    let healthy_at = Instant::now();
    let (ea, eb) = send(addr, 200);
    let early_ms = healthy_at.elapsed().as_millis();
    // Wait the window out (a state of the ramp: b's share is back).
    let mut late = (0, 0);
    wait_until_within(20, "b's share back to about half", || {
        late = send(addr, 200);
        late.1 >= 80
    });
    let share = |(x, y): (u32, u32)| f64::from(y) / f64::from(x + y);
    println!(
        "slow start from the first passing check: b unhealthy for {} ms (window 3 s); \
         its share in the {early_ms} ms after it turned healthy {:.1} % ({eb} of {}), \
         {:.1} % at {} ms",
        unhealthy_for.as_millis(),
        100.0 * share((ea, eb)),
        ea + eb,
        100.0 * share(late),
        healthy_at.elapsed().as_millis(),
    );
    // Had the window started when b joined (over 3 s ago), b would take
    // half at once.
    assert!(
        share((ea, eb)) < 0.3,
        "b took {eb} of {} right after turning healthy",
        ea + eb
    );
}
