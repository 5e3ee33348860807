//! Route tables as subscriptions, through the real binary and real
//! keep-alive connections: a route update reaches every open connection
//! (whichever config generation accepted it) on its next request without
//! closing it; a reload refused after the routes were built changes nothing
//! on open connections; and a connection that retires (a cluster it uses
//! changed together with the routes) answers its last request under the
//! routes it was accepted with.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use std::io::BufReader;
use std::net::TcpStream;

type Conn = Option<BufReader<TcpStream>>;

/// A proxy listener answering `body` on `/` and sending `/svc` to the
/// cluster `svc` (at `backend`, with `connect_timeout`), then `extra`.
fn config(
    port: u16,
    body: &str,
    backend: &HttpBackend,
    connect_timeout: &str,
    extra: &str,
) -> String {
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
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /svc}}
                        route: {{cluster: svc}}
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "{body}"}}
{extra}clusters:
  - name: svc
    connect_timeout: {connect_timeout}
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    )
}

/// Writes the config atomically and sends SIGHUP; waits until the reload
/// is counted under `result` (`ok` or `error`).
fn reload(mg: &Meshgate, yaml: &str, result: &str) {
    let text = yaml.replace("{ADMIN}", &mg.admin.unwrap().to_string());
    let tmp = mg.config.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &mg.config).unwrap();
    let before = mg.metric("meshgate_config_reload_total", &[("result", result)]);
    let pid = mg.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until(&format!("a reload counted as {result}"), || {
        mg.metric("meshgate_config_reload_total", &[("result", result)]) > before
    });
}

/// One keep-alive `GET path` on `conn`: the body; the connection is
/// dropped if the response said `connection: close`.
fn get(conn: &mut Conn, port: u16, path: &str) -> String {
    meshgate_tests::xds::request(conn, port, path).expect("a whole 200 response")
}

fn local(conn: &Conn) -> std::net::SocketAddr {
    conn.as_ref()
        .expect("the connection is open")
        .get_ref()
        .local_addr()
        .unwrap()
}

#[test]
fn route_updates_reach_connections_of_every_generation_without_closing_them() {
    let svc = HttpBackend::start("svc", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start_with_args(
        &config(port, "r0", &svc, "1s", ""),
        &["--watch-interval", "0s"],
    );
    // `a` is accepted under the first config, `b` after one route update,
    // `c` after two: each update must reach all that are open.
    let (mut a, mut b, mut c): (Conn, Conn, Conn) = (None, None, None);
    assert_eq!(get(&mut a, port, "/"), "r0");
    let a_addr = local(&a);
    reload(&mg, &config(port, "r1", &svc, "1s", ""), "ok");
    assert_eq!(get(&mut b, port, "/"), "r1");
    assert_eq!(get(&mut a, port, "/"), "r1");
    let b_addr = local(&b);
    reload(&mg, &config(port, "r2", &svc, "1s", ""), "ok");
    assert_eq!(get(&mut c, port, "/"), "r2");
    for v in 3..=4 {
        let want = format!("r{v}");
        reload(&mg, &config(port, &want, &svc, "1s", ""), "ok");
        for conn in [&mut a, &mut b, &mut c] {
            assert_eq!(get(conn, port, "/"), want);
        }
    }
    // The same connections, never closed, and the cluster route still
    // works on them.
    assert_eq!(local(&a), a_addr);
    assert_eq!(local(&b), b_addr);
    assert!(get(&mut a, port, "/svc").contains("backend=svc"));
    let log = mg.log_text();
    assert!(!log.contains("open connections retire"), "{log}");
    assert!(
        log.contains("listener routes updated live"),
        "route updates are not logged as such: {log}"
    );
}

#[test]
fn a_reload_refused_after_its_routes_were_built_changes_no_open_connection() {
    let svc = HttpBackend::start("svc", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start_with_args(
        &config(port, "r0", &svc, "1s", ""),
        &["--watch-interval", "0s"],
    );
    let mut conn: Conn = None;
    assert_eq!(get(&mut conn, port, "/"), "r0");
    // The listener `web` (with new routes) builds, then a second listener
    // on the same address refuses the whole config: the new table was
    // only staged, it must not reach the open connection.
    let twice = format!(
        "  - name: again\n    address: 127.0.0.1:{port}\n    filter_chains:\n      - filters:\n          - name: echo\n"
    );
    reload(&mg, &config(port, "r1", &svc, "1s", &twice), "error");
    assert_eq!(get(&mut conn, port, "/"), "r0");
    assert_eq!(get(&mut None, port, "/"), "r0");
    // A good update afterwards reaches it.
    reload(&mg, &config(port, "r2", &svc, "1s", ""), "ok");
    assert_eq!(get(&mut conn, port, "/"), "r2");
    assert!(conn.is_some(), "the connection was closed");
}

#[test]
fn a_retiring_connection_keeps_the_routes_it_was_accepted_with() {
    let svc = HttpBackend::start("svc", Proto::Http1);
    let port = free_port();
    let mg = Meshgate::start_with_args(
        &config(port, "r0", &svc, "1s", ""),
        &["--watch-interval", "0s"],
    );
    let mut conn: Conn = None;
    assert_eq!(get(&mut conn, port, "/"), "r0");
    // Routes change, and so does a setting of a cluster the listener
    // uses: the listener is replaced and its connections retire. The open
    // connection's last request is answered under its own routes, with
    // `connection: close`; new connections get the new routes.
    reload(&mg, &config(port, "r1", &svc, "2s", ""), "ok");
    assert_eq!(get(&mut conn, port, "/"), "r0");
    assert!(conn.is_none(), "the connection was not retired");
    assert_eq!(get(&mut None, port, "/"), "r1");
    assert!(mg.log_text().contains("open connections retire"));
}
