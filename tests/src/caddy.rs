//! Caddy as an HTTP/3 (and HTTPS) upstream for the tests: one site on
//! `https://localhost:PORT` with the repository's test certificate.

use crate::{wait_listening, workspace};
use std::process::{Child, Command, Stdio};

/// A running Caddy, killed on drop.
pub struct Caddy {
    child: Child,
    /// Caddy's config and storage, removed on drop.
    _dir: tempfile::TempDir,
}

impl Caddy {
    /// Caddy answering every request with `body`, a Caddyfile `respond`
    /// text (placeholders such as `{http.request.proto}` allowed).
    pub fn responding(port: u16, body: &str) -> Self {
        Self::speaking(port, body, "h1 h2 h3")
    }

    /// `responding`, with only `protocols` enabled (Caddy's `servers
    /// { protocols }`, e.g. `h1`: its TLS offers only `http/1.1` by ALPN).
    pub fn speaking(port: u16, body: &str, protocols: &str) -> Self {
        Self::site_speaking(port, &format!("\trespond \"{body}\n\" 200"), protocols)
    }

    /// Caddy serving `site`, the directives of its one site block (with
    /// its `tls` line added).
    pub fn with_site(port: u16, site: &str) -> Self {
        Self::site_speaking(port, site, "h1 h2 h3")
    }

    /// `with_site`, with only `protocols` enabled.
    pub fn site_speaking(port: u16, site: &str, protocols: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = workspace().join("examples/certs");
        let conf = dir.path().join("Caddyfile");
        std::fs::write(
            &conf,
            format!(
                "{{\n\tadmin off\n\tstorage file_system {d}/data\n\tservers {{\n\t\tprotocols {protocols}\n\t}}\n}}\nhttps://localhost:{port} {{\n\ttls {crt} {key}\n{site}\n}}\n",
                d = dir.path().display(),
                crt = certs.join("server.pem").display(),
                key = certs.join("server.key").display(),
            ),
        )
        .unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caddy (Debian caddy; tests/run.sh installs it)");
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
        Caddy { child, _dir: dir }
    }

    /// Caddy answering `TAG proto=HTTP/3.0` (the protocol it was asked in).
    pub fn tagged(port: u16, tag: &str) -> Self {
        Self::responding(port, &format!("{tag} proto={{http.request.proto}}"))
    }

    /// Kills Caddy now and waits for it to exit.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
