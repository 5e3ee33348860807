//! The `decompressor` stream filter end to end: curl sends gzip, brotli
//! and zstd request bodies (HTTP/1.1 and h2) and a recording upstream shows
//! the decoded bytes arrived, without `content-encoding`; a gzip bomb
//! (10 MiB of zeros, about 1000:1) is answered 413 and counted, the
//! upstream never sees it; garbage is answered 400; an encoded upstream response is decoded for the
//! client, with the library's coding advertised upstream; the filter
//! configured from a real xDS control plane.

use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::io::Write;
use std::process::{Command, Stdio};

const DECOMPRESSED: &str = "meshgate_decompressor_decompressed_total";
const REFUSED: &str = "meshgate_decompressor_refused_total";
const BYTES_IN: &str = "meshgate_decompressor_compressed_bytes_total";
const BYTES_OUT: &str = "meshgate_decompressor_decompressed_bytes_total";

fn text() -> Vec<u8> {
    (0..4000)
        .map(|i| format!("record {i}: pack my box with five dozen liquor jugs\n"))
        .collect::<String>()
        .into_bytes()
}

/// `data` encoded by python (`gzip`, `brotli` or `zstandard`).
fn python_encode(coding: &str, data: &[u8]) -> Vec<u8> {
    let code = match coding {
        "br" => {
            "import brotli,sys; sys.stdout.buffer.write(brotli.compress(sys.stdin.buffer.read()))"
        }
        "zstd" => {
            "import zstandard,sys; sys.stdout.buffer.write(zstandard.ZstdCompressor().compress(sys.stdin.buffer.read()))"
        }
        _ => "import gzip,sys; sys.stdout.buffer.write(gzip.compress(sys.stdin.buffer.read()))",
    };
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// The upstream: `/echo*` waits for the whole (chunked) request body and
/// answers 200; `/gz` answers a gzip-encoded text body.
fn upstream() -> Scripted {
    let gz = python_encode("gzip", &text());
    Scripted::start(move |head| {
        let head = String::from_utf8_lossy(head).to_ascii_lowercase();
        if head.starts_with("get /gz") {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                gz.len()
            )
            .into_bytes();
            r.extend_from_slice(&gz);
            Script::AnswerAndClose(r)
        } else {
            let ok =
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec();
            if head.contains("transfer-encoding: chunked") {
                Script::AnswerAfter {
                    until: b"\r\n0\r\n\r\n".to_vec(),
                    bytes: ok,
                }
            } else {
                Script::Answer(ok)
            }
        }
    })
}

fn config(up: std::net::SocketAddr, library: &str) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: web
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: decompressor
                  config:
                    decompressor_library: {library}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
"#
    )
}

/// The head and de-chunked body of one recorded HTTP/1.1 request.
fn split_request(raw: &[u8]) -> (String, Vec<u8>) {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a request head");
    let head = String::from_utf8_lossy(&raw[..pos]).to_ascii_lowercase();
    let mut rest = &raw[pos + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (head, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
        rest = &rest[eol + 2 + n + 2..];
    }
    (head, body)
}

/// POSTs `body` with `content-encoding: coding` through curl; the status.
fn post(url: &str, coding: &str, body: &[u8], h2: bool) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, body).unwrap();
    let ce = format!("content-encoding: {coding}");
    let data = format!("@{}", path.display());
    let mut args = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
    if h2 {
        args.push("--http2-prior-knowledge");
    }
    args.extend([
        "-H",
        &ce,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &data,
        url,
    ]);
    let out = Command::new("curl").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn encoded_request_bodies_reach_the_upstream_decoded() {
    let plain = text();
    for (coding, lib, label) in [
        ("gzip", "{gzip: {}}", "gzip"),
        ("br", "{brotli: {chunk_size: 8192}}", "brotli"),
        ("zstd", "{zstd: {}}", "zstd"),
    ] {
        let up = upstream();
        let mg = Meshgate::start(&config(up.addr, lib));
        let url = format!("http://127.0.0.1:{}/echo", mg.listener_port("web"));
        let encoded = python_encode(coding, &plain);
        for h2 in [false, true] {
            assert_eq!(post(&url, coding, &encoded, h2), 200, "{coding} h2={h2}");
        }
        let conns = up.conns();
        assert_eq!(conns.len(), 2, "{coding}");
        for c in &conns {
            let (head, body) = split_request(&c.bytes);
            assert!(!head.contains("content-encoding"), "{coding}: {head}");
            assert!(
                !head.contains(&format!("content-length: {}", encoded.len())),
                "{coding}: {head}"
            );
            assert_eq!(body.len(), plain.len(), "{coding}");
            assert!(body == plain, "{coding}: decoded body differs");
        }
        let labels = [("library", label), ("direction", "request")];
        assert_eq!(mg.metric(DECOMPRESSED, &labels), 2.0);
        assert_eq!(mg.metric(BYTES_IN, &labels), 2.0 * encoded.len() as f64);
        assert_eq!(mg.metric(BYTES_OUT, &labels), 2.0 * plain.len() as f64);
    }
}

#[test]
fn a_gzip_bomb_is_cut_off_and_counted() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr, "{gzip: {max_inflate_ratio: 100}}"));
    let url = format!("http://127.0.0.1:{}/echo", mg.listener_port("web"));
    // 10 MiB of zeros: about 10 KiB of gzip, a ~1000:1 ratio.
    let bomb = python_encode("gzip", &vec![0u8; 10 << 20]);
    assert!(bomb.len() < 20 << 10, "{}", bomb.len());
    for h2 in [false, true] {
        let status = post(&url, "gzip", &bomb, h2);
        assert_eq!(status, 413, "h2={h2}: the bomb is refused");
    }
    let refused = [
        ("library", "gzip"),
        ("direction", "request"),
        ("reason", "inflate_ratio"),
    ];
    assert_eq!(mg.wait_metric(REFUSED, &refused, |v| v >= 2.0), 2.0);
    // Refused in its first frame: nothing reached the upstream.
    assert!(up.conns().is_empty(), "the upstream was reached");

    // Not gzip at all: cut off as invalid, counted.
    let status = post(&url, "gzip", b"this is not a gzip stream", false);
    assert_eq!(status, 400);
    let invalid = [
        ("library", "gzip"),
        ("direction", "request"),
        ("reason", "invalid"),
    ];
    assert_eq!(mg.wait_metric(REFUSED, &invalid, |v| v >= 1.0), 1.0);
}

#[test]
fn encoded_response_is_decoded_and_the_coding_advertised() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr, "{gzip: {}}"));
    let url = format!("http://127.0.0.1:{}/gz", mg.listener_port("web"));
    for h2 in [false, true] {
        let mut args = vec!["-sS", "-i", "-H", "accept-encoding: identity"];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        args.push(&url);
        let out = Command::new("curl").args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let pos = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout[..pos]).to_ascii_lowercase();
        assert!(head.contains(" 200"), "{head}");
        assert!(!head.contains("content-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(out.stdout[pos + 4..] == text()[..], "h2={h2}: body differs");
    }
    // The upstream was told gzip is welcome (advertise_accept_encoding).
    for c in up.conns() {
        let (head, _) = split_request(&c.bytes);
        assert!(head.contains("accept-encoding: identity"), "{head}");
        assert!(head.contains("accept-encoding: gzip"), "{head}");
    }
    assert_eq!(
        mg.metric(
            DECOMPRESSED,
            &[("library", "gzip"), ("direction", "response")]
        ),
        2.0
    );
}

#[test]
fn decompressor_from_xds_http_filter() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::extensions::compression::zstd::decompressor::v3 as zstdv3;
    use envoy_types::pb::envoy::extensions::filters::http::decompressor::v3 as decv3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    const URL: &str =
        "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor";
    const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd";
    let up = upstream();
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![static_cluster("svc-a", up.addr)]);
    let (name, l) = hcm_listener("web", port, "r1");
    let mut l = lds::Listener::decode(l.value.as_slice()).unwrap();
    let f = &mut l.filter_chains[0].filters[0];
    let Some(lds::filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
        panic!("an HCM typed config")
    };
    let mut h = hcm::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
    let dec = decv3::Decompressor {
        decompressor_library: Some(core3::TypedExtensionConfig {
            name: "zstd".into(),
            typed_config: Some(any(ZSTD, &zstdv3::Zstd::default())),
        }),
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.decompressor".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(URL, &dec))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    let plain = text();
    let encoded = python_encode("zstd", &plain);
    let url = format!("http://127.0.0.1:{port}/echo");
    assert_eq!(post(&url, "zstd", &encoded, false), 200);
    let c = up.conns().pop().unwrap();
    let (head, body) = split_request(&c.bytes);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(body == plain, "decoded body differs");
    assert_eq!(
        mg.metric(
            DECOMPRESSED,
            &[("library", "zstd"), ("direction", "request")]
        ),
        1.0
    );
}
