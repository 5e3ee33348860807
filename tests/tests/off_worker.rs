//! Blocking work stays off the event loop: a config reload reads and
//! parses the file on the blocking pool, so traffic keeps being served
//! while the read waits (here on a FIFO nobody has written yet), even on
//! the current-thread runtime (`--concurrency 1`) where a blocked loop
//! would be every connection.

use meshgate_tests::*;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;

#[test]
fn a_reload_waiting_on_its_file_does_not_stop_traffic() {
    let port = free_port();
    let yaml = |body: &str| {
        format!(
            r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: main
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
                      - match: {{prefix: /}}
                        direct_response: {{status: 200, body: "{body}"}}
"#
        )
    };
    let mg = Meshgate::start_with_args(
        &yaml("one"),
        &["--concurrency", "1", "--watch-interval", "0s"],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(addr, "/").unwrap(), (200, "one".into()));

    // The config file becomes a FIFO: reading it blocks until a writer
    // comes. SIGHUP starts a reload that reads it.
    let admin = mg.admin.unwrap().to_string();
    let next = yaml("two").replace("{ADMIN}", &admin);
    std::fs::remove_file(&mg.config).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&mg.config)
        .status();
    assert!(made.is_ok_and(|s| s.success()));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(mg.child.id() as i32, libc::SIGHUP);
    }
    // A non-blocking open for writing succeeds once a reader has the FIFO
    // open (ENXIO before): the reload is then waiting on the file.
    let mut writer = None;
    wait_until("the reload opens the config file", || {
        writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&mg.config)
            .ok();
        writer.is_some()
    });
    // Meanwhile the one event loop serves requests and the admin server.
    for _ in 0..3 {
        assert_eq!(http_get(addr, "/").unwrap(), (200, "one".into()));
    }
    assert_eq!(mg.metric("meshgate_config_reload_total", &[]), 0.0);
    // The file arrives: the reload completes with it.
    let mut w = writer.unwrap();
    std::io::Write::write_all(&mut w, next.as_bytes()).unwrap();
    drop(w);
    wait_until("the reload is applied", || {
        mg.metric("meshgate_config_reload_total", &[("result", "ok")]) >= 1.0
    });
    assert_eq!(http_get(addr, "/").unwrap(), (200, "two".into()));
}
