//! curl as the HTTP client of the filter tests: one request's status,
//! response headers and body.

use std::collections::BTreeMap;
use std::process::Command;

/// Status, response headers (lowercase names) and body of one curl request
/// (`args` as on curl's command line). The head is the last one curl saw
/// (after a `100 Continue`); status 0 when there was none (e.g. a refused
/// TLS handshake).
pub fn curl(args: &[&str]) -> (u16, BTreeMap<String, String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&head)
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&head).unwrap_or_default();
    let last = text.rsplit("\r\n\r\n").find(|b| !b.trim().is_empty());
    let mut lines = last.unwrap_or("").lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (
        status,
        headers,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
