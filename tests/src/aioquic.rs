//! aioquic's HTTP/3 example client (a real HTTP/3 peer), shared by the
//! HTTP/3 tests.

use crate::workspace;
use std::path::PathBuf;
use std::process::Command;

/// aioquic's `examples/http3_client.py`, from the sdist of the installed
/// aioquic that tests/run.sh fetches (fetched here too when missing). The
/// example uses the library's internals, so it must match the installed
/// version: a newer sdist's client fails on an older library.
pub fn client() -> PathBuf {
    let cache = workspace().join("tests/peers/.cache");
    let client = cache.join("aioquic/examples/http3_client.py");
    let installed = Command::new("python3")
        .args(["-c", "import aioquic; print(aioquic.__version__)"])
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    assert!(installed.status.success(), "aioquic is not installed");
    let version = String::from_utf8_lossy(&installed.stdout).trim().to_string();
    let cached = std::fs::read_to_string(cache.join("aioquic/PKG-INFO")).unwrap_or_default();
    if client.exists() && cached.lines().any(|l| l == format!("Version: {version}")) {
        return client;
    }
    let tmp = tempfile::tempdir_in({
        std::fs::create_dir_all(&cache).unwrap();
        &cache
    })
    .unwrap();
    let ok = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
        ])
        .arg("-d")
        .arg(tmp.path())
        .arg(format!("aioquic=={version}"))
        .status()
        .expect("python3 -m pip");
    assert!(ok.success(), "pip download of aioquic's sdist failed");
    let tarball = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("aioquic sdist");
    assert!(
        Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(tmp.path())
            .status()
            .unwrap()
            .success()
    );
    let src = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    // Another test process may have won the race; either copy is good. A
    // stale copy (another version) is moved aside first.
    if !cached.is_empty() {
        let _ = std::fs::rename(cache.join("aioquic"), tmp.path().join("stale"));
    }
    let _ = std::fs::rename(src, cache.join("aioquic"));
    assert!(client.exists(), "no {}", client.display());
    client
}

/// Runs aioquic's client on `urls`, writing each response (with its head,
/// `-i`) to a file named after the URL's last path segment; returns them.
pub fn get(port: u16, paths: &[&str], data: Option<&str>) -> Vec<(String, String)> {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "python3"])
        .arg(client())
        .args(["--ca-certs", &ca(), "-i", "--output-dir"])
        .arg(out.path());
    if let Some(d) = data {
        cmd.args(["-d", d]);
    }
    for p in paths {
        cmd.arg(format!("https://localhost:{port}{p}"));
    }
    let o = cmd
        .output()
        .expect("python3 with aioquic (tests/run.sh installs it)");
    assert!(
        o.status.success(),
        "aioquic client failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    paths
        .iter()
        .map(|p| {
            let name = p.rsplit('/').next().unwrap().split('?').next().unwrap();
            let text = std::fs::read_to_string(out.path().join(name))
                .unwrap_or_else(|e| panic!("no response for {p}: {e}"));
            (p.to_string(), text)
        })
        .collect()
}

fn ca() -> String {
    workspace()
        .join("examples/certs/ca.pem")
        .display()
        .to_string()
}
