//! `%UPSTREAM_LOCAL_ADDRESS%` for the upstream codecs `obslogs.rs` does not
//! cover: Dubbo and Bolt (real sofa-rpc-node providers and consumer; the
//! pooled connection to the provider is found in `/proc/net/tcp` with the
//! logged local address) and HTTP/3 (Caddy; the logged port is one of the
//! process's UDP sockets and the address the loopback one the packets
//! came on).

use meshgate_tests::caddy::Caddy;
use meshgate_tests::rpc::*;
use meshgate_tests::*;

const ECHO: &str = "com.meshgate.Echo";

/// meshgate with one listener per codec (`dubbo`, `bolt`, `h3`), each
/// logging `PATH|UPSTREAM_LOCAL_ADDRESS` to its own file.
fn config(dir: &std::path::Path, dubbo: u16, bolt: u16, h3: u16) -> String {
    let listener = |name: &str, route: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              access_log:
                - name: envoy.access_loggers.file
                  typed_config: {{path: "{log}", log_format: {{text_format: "%REQ(:PATH)%|%UPSTREAM_LOCAL_ADDRESS%\n"}}}}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - {{match: {{prefix: /}}, route: {{cluster: {name}{route}}}}}
"#,
            log = dir.join(format!("{name}.log")).display(),
        )
    };
    let ca = serde_json::to_string(
        &std::fs::read_to_string(workspace().join("examples/certs/ca.pem")).unwrap(),
    )
    .unwrap();
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
{}{}{}clusters:
  - name: dubbo
    protocol: dubbo
    endpoints: [{{address: "127.0.0.1:{dubbo}"}}]
  - name: bolt
    protocol: bolt
    endpoints: [{{address: "127.0.0.1:{bolt}"}}]
  - name: h3
    protocol: http3
    tls: {{trusted_ca_pem: {ca}, sni: localhost}}
    endpoints: [{{address: "127.0.0.1:{h3}"}}]
"#,
        listener("dubbo", ""),
        listener("bolt", ""),
        listener("h3", ", host_rewrite_literal: localhost"),
    )
}

/// The one line of `name`'s log: (path, logged local address).
fn logged(dir: &std::path::Path, name: &str) -> (String, std::net::SocketAddr) {
    let line = wait_for_within(10, &format!("the {name} access-log line"), || {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .next()
            .map(str::to_string)
    });
    let (path, local) = line.split_once('|').unwrap();
    let local = local
        .parse()
        .unwrap_or_else(|_| panic!("{name}: no local address in {line:?}"));
    (path.to_string(), local)
}

/// Whether `/proc/net/udp` has a socket bound to `port`.
fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| local.ends_with(&hex))
}

#[test]
fn rpc_and_http3_upstreams_log_their_connections_local_address() {
    let dubbo = Provider::start("dubbo", "D");
    let bolt = Provider::start("bolt", "B");
    let h3 = free_port();
    let _caddy = Caddy::tagged(h3, "c");
    let dir = tempfile::tempdir().unwrap();
    let mg = Meshgate::start(&config(dir.path(), dubbo.port, bolt.port, h3));

    for (codec, provider, from) in [("dubbo", &dubbo, "D"), ("bolt", &bolt, "B")] {
        let port = mg.listener_port(codec);
        let r = node_call(codec, port, ECHO, "echo", r#"["x"]"#, 1, 1, 3000, "1.0", "");
        assert_eq!(r.ok, 1, "{codec}: {:?}", r.errors);
        assert_eq!(r.from.get(from), Some(&1), "{codec}: {r:?}");
        let (path, local) = logged(dir.path(), codec);
        assert_eq!(path, format!("/{ECHO}/echo"), "{codec}");
        let backend = format!("127.0.0.1:{}", provider.port).parse().unwrap();
        // The pooled connection to the provider is that one.
        assert!(
            tcp_established(local, backend),
            "{codec}: no connection {local} -> {backend}"
        );
    }

    let port = mg.listener_port("h3");
    let (code, _, body) = curl::curl(&[&format!("http://127.0.0.1:{port}/q")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("c proto=HTTP/3"), "{body}");
    let (path, local) = logged(dir.path(), "h3");
    assert_eq!(path, "/q");
    assert_eq!(local.ip().to_string(), "127.0.0.1", "{local}");
    assert_ne!(local.port(), h3);
    assert!(udp_bound(local.port()), "no UDP socket on {local}");
}
