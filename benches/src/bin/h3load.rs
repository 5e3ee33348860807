//! `h3load`: a small HTTP/3 load generator on quinn + h3 for the HTTP/3
//! comparison (neither h2load nor wrk speaks HTTP/3 here). C connections,
//! each with M streams issuing GETs back to back for D seconds; prints
//! requests/s and latency percentiles in a line `report_http3` parses.
//!
//!   h3load URL --ca FILE [-c 10] [-m 10] [-d 10] [--sni NAME]

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    url: http::Uri,
    ca: String,
    conns: usize,
    streams: usize,
    duration: Duration,
    sni: Option<String>,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut out = Args {
        url: http::Uri::from_static("https://localhost/"),
        ca: String::new(),
        conns: 10,
        streams: 10,
        duration: Duration::from_secs(10),
        sni: None,
    };
    while let Some(x) = a.next() {
        let mut val = || a.next().expect("option value");
        match x.as_str() {
            "--ca" => out.ca = val(),
            "-c" => out.conns = val().parse().expect("-c N"),
            "-m" => out.streams = val().parse().expect("-m N"),
            "-d" => out.duration = Duration::from_secs_f64(val().parse().expect("-d SECONDS")),
            "--sni" => out.sni = Some(val()),
            u => out.url = u.parse().expect("URL"),
        }
    }
    assert!(!out.ca.is_empty(), "--ca FILE is required");
    out
}

fn client_config(ca: &str) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read --ca");
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(q))
}

/// Certificates from PEM text.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[tokio::main]
async fn main() {
    let a = args();
    let host = a.url.host().expect("URL host").to_string();
    let port = a.url.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolve")
        .find(|s| s.is_ipv4())
        .expect("an IPv4 address");
    let sni = a.sni.clone().unwrap_or(host.clone());
    let cfg = client_config(&a.ca);
    let deadline = Instant::now() + a.duration;
    let mut tasks = Vec::new();
    for _ in 0..a.conns {
        let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).expect("UDP socket");
        ep.set_default_client_config(cfg.clone());
        let conn = ep
            .connect(addr, &sni)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .expect("h3 setup");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        for _ in 0..a.streams {
            let mut send = send.clone();
            let url = a.url.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let req = http::Request::get(url.clone()).body(()).unwrap();
                    let ok = async {
                        let mut s = send.send_request(req).await.ok()?;
                        s.finish().await.ok()?;
                        let resp = s.recv_response().await.ok()?;
                        while s.recv_data().await.ok()?.is_some() {}
                        resp.status().is_success().then_some(())
                    }
                    .await;
                    match ok {
                        Some(()) => lat.push(t.elapsed().as_micros() as u32),
                        None => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        std::mem::forget(ep);
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("stream task");
        all.extend(l);
        errors += e;
    }
    let secs = started
        .elapsed()
        .as_secs_f64()
        .max(a.duration.as_secs_f64());
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "h3load: requests={} errors={} req/s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        all.len(),
        errors,
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}
