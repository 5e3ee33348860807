//! The `compressor` stream filter end to end: a scripted upstream serves a
//! large text body (with a strong ETag, with and without content-length),
//! small bodies, already-encoded bodies and images; curl (`--compressed`,
//! HTTP/1.1 and h2) and python's gzip decode what meshgate sends. Also
//! per-route `{disabled: true}` and `remove_accept_encoding_header`
//! overrides (the recorded upstream request shows the header gone), and
//! the filter configured from a real xDS control plane.

use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::process::Command;

const COMPRESSED: &str = "meshgate_compressor_compressed_total";
const NOT_COMPRESSED: &str = "meshgate_compressor_not_compressed_total";
const BYTES_IN: &str = "meshgate_compressor_uncompressed_bytes_total";
const BYTES_OUT: &str = "meshgate_compressor_compressed_bytes_total";

fn big_text() -> String {
    (0..6000)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

/// The upstream: one response per connection, chosen by path.
fn upstream() -> Scripted {
    let big = big_text();
    Scripted::start(move |head| {
        let head = String::from_utf8_lossy(head);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let fixed = |ct: &str, extra: &str, body: &[u8]| {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        };
        let resp = if path.starts_with("/small") {
            fixed("text/plain", "", b"tiny body")
        } else if path.starts_with("/encoded") {
            fixed(
                "text/plain",
                "content-encoding: gzip\r\n",
                &[
                    0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                    20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                ],
            )
        } else if path.starts_with("/image") {
            fixed("image/png", "", big.as_bytes())
        } else if path.starts_with("/chunked") {
            let mut resp = b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
            for part in big.as_bytes().chunks(7000) {
                resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                resp.extend_from_slice(part);
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"0\r\n\r\n");
            resp
        } else {
            fixed("text/plain", "etag: \"v1\"\r\n", big.as_bytes())
        };
        Script::AnswerAndClose(resp)
    })
}

fn config(up: std::net::SocketAddr) -> String {
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
                - name: compressor
                  config:
                    compressor_library:
                      name: text
                      gzip: {{compression_level: COMPRESSION_LEVEL_6}}
                    response_direction_config:
                      weaken_etag_on_compress: true
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /off}}
                        route: {{cluster: up}}
                        per_filter_config:
                          compressor: {{disabled: true}}
                      - match: {{prefix: /strip}}
                        route: {{cluster: up}}
                        per_filter_config:
                          compressor:
                            overrides:
                              response_direction_config: {{remove_accept_encoding_header: true}}
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
"#
    )
}

/// Head (lower-cased) and body of one curl exchange (`-i`).
fn fetch(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-i"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let pos = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&out.stdout[..pos]).to_ascii_lowercase(),
        out.stdout[pos + 4..].to_vec(),
    )
}

/// Python's own gzip decoder over `data`.
fn python_gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python could not gunzip: {out:?}");
    out.stdout
}

#[test]
fn large_text_is_gzipped_and_decodes_with_curl_and_python() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let url = format!("http://127.0.0.1:{}/big", mg.listener_port("web"));
    let big = big_text();

    // curl negotiates and decodes.
    let (head, body) = fetch(&["--compressed", &url]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert!(
        head.contains("etag: w/\"v1\""),
        "strong ETag weakened: {head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, big.as_bytes());

    // The raw bytes are one valid gzip member, much smaller.
    let (_, raw) = fetch(&["-H", "accept-encoding: br;q=1, gzip;q=0.5", &url]);
    assert!(raw.len() < big.len() / 5, "{} bytes", raw.len());
    assert_eq!(python_gunzip(&raw), big.as_bytes());

    // A chunked upstream body (no content-length) streams through too.
    let chunked = url.replace("/big", "/chunked");
    let (head, raw) = fetch(&["-H", "accept-encoding: gzip", &chunked]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(python_gunzip(&raw), big.as_bytes());

    assert_eq!(mg.metric(COMPRESSED, &[("library", "gzip")]), 3.0);
    let bytes_in = mg.metric(BYTES_IN, &[("library", "gzip")]);
    let bytes_out = mg.metric(BYTES_OUT, &[("library", "gzip")]);
    assert_eq!(bytes_in, 3.0 * big.len() as f64);
    assert!(bytes_out > 0.0 && bytes_out < bytes_in / 5.0, "{bytes_out}");
}

#[test]
fn h2_downstream_is_gzipped() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let url = format!("http://127.0.0.1:{}/big", mg.listener_port("web"));
    let (head, body) = fetch(&["--http2-prior-knowledge", "--compressed", &url]);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert_eq!(body, big_text().as_bytes());
    let (_, raw) = fetch(&[
        "--http2-prior-knowledge",
        "-H",
        "accept-encoding: gzip",
        &url,
    ]);
    assert_eq!(python_gunzip(&raw), big_text().as_bytes());
}

#[test]
fn small_encoded_unaccepted_head_and_images_pass_untouched() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let ae = ["-H", "accept-encoding: gzip"];

    let (head, body) = fetch(&[ae[0], ae[1], &format!("{base}/small")]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("content-length: 9"), "{head}");
    assert_eq!(body, b"tiny body");

    // Already encoded upstream: the exact bytes, never encoded twice.
    let (head, body) = fetch(&[ae[0], ae[1], &format!("{base}/encoded")]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(body.len(), 34);
    assert_eq!(&body[..4], &[0x1f, 0x8b, 1, 2]);

    // Not accepted (q=0, or no header): identity, but Vary says why.
    for h in ["accept-encoding: gzip;q=0", "accept-encoding:"] {
        let (head, body) = fetch(&["-H", h, &format!("{base}/big")]);
        assert!(!head.contains("content-encoding"), "{head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(head.contains("etag: \"v1\""), "{head}");
        assert_eq!(body, big_text().as_bytes());
    }

    // HEAD: the head of the identity representation.
    let (head, _) = fetch(&[ae[0], ae[1], "-I", &format!("{base}/big")]);
    assert!(!head.contains("content-encoding"), "{head}");

    // A media type not in the list.
    let (head, body) = fetch(&[ae[0], ae[1], &format!("{base}/image")]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body.len(), big_text().len());

    let not = |reason| mg.metric(NOT_COMPRESSED, &[("library", "gzip"), ("reason", reason)]);
    assert_eq!(not("content_length"), 1.0);
    assert_eq!(not("content_encoding"), 1.0);
    assert_eq!(not("not_accepted"), 2.0);
    assert_eq!(not("head"), 1.0);
    assert_eq!(not("content_type"), 1.0);
    assert_eq!(mg.metric(COMPRESSED, &[("library", "gzip")]), 0.0);
}

#[test]
fn per_route_disabled_and_remove_accept_encoding_override() {
    let up = upstream();
    let mg = Meshgate::start(&config(up.addr));
    let base = format!("http://127.0.0.1:{}", mg.listener_port("web"));
    let (head, body) = fetch(&["--compressed", &format!("{base}/off")]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(!head.contains("vary"), "{head}");
    assert_eq!(body, big_text().as_bytes());

    let (head, body) = fetch(&["--compressed", &format!("{base}/strip")]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(body, big_text().as_bytes());
    // The upstream saw /strip without accept-encoding, /off with it.
    let conns = up.conns();
    let seen = |p: &str| {
        conns
            .iter()
            .map(|c| String::from_utf8_lossy(&c.bytes).to_ascii_lowercase())
            .find(|r| r.contains(&format!("get {p} ")))
            .unwrap()
    };
    assert!(
        !seen("/strip").contains("accept-encoding"),
        "{}",
        seen("/strip")
    );
    assert!(seen("/off").contains("accept-encoding"), "{}", seen("/off"));
}

#[test]
fn brotli_library_is_refused_by_name() {
    let yaml = config("127.0.0.1:1".parse().unwrap()).replace(
        "gzip: {compression_level: COMPRESSION_LEVEL_6}",
        "brotli: {}",
    );
    let dir = std::env::temp_dir().join(format!("mg-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brotli.yaml");
    std::fs::write(&path, yaml.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
    let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(format!("{out}{err}").contains("brotli"), "{out}{err}");
}

#[test]
fn compressor_from_xds_http_filter_and_per_route_disable() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::listener::v3 as lds;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3 as gzipv3;
    use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as compv3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use meshgate_tests::xds::*;
    use prost::Message;

    const URL: &str = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
    const PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
    const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
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
    let comp = compv3::Compressor {
        compressor_library: Some(core3::TypedExtensionConfig {
            name: "text_optimized".into(),
            typed_config: Some(any(
                GZIP,
                &gzipv3::Gzip {
                    compression_level: 1,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    };
    h.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "envoy.filters.http.compressor".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(URL, &comp))),
            ..Default::default()
        },
    );
    a.value = h.encode_to_vec();
    mgmt.set(LISTENER, "l1", vec![(name, any(LISTENER, &l))]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    // routes[0] is a direct response; routes[1] the `/` prefix. A copy of
    // it for /off carries the per-route disable.
    let mut off = r.virtual_hosts[0].routes[1].clone();
    off.r#match = Some(rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/off".into())),
        ..Default::default()
    });
    off.typed_per_filter_config.insert(
        "envoy.filters.http.compressor".into(),
        any(
            PER_ROUTE,
            &compv3::CompressorPerRoute {
                r#override: Some(compv3::compressor_per_route::Override::Disabled(true)),
            },
        ),
    );
    r.virtual_hosts[0].routes.insert(1, off);
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/direct", "direct from r1");
    let url = format!("http://127.0.0.1:{port}/big");
    let (head, raw) = fetch(&["-H", "accept-encoding: gzip", &url]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(python_gunzip(&raw), big_text().as_bytes());
    let (head, body) = fetch(&["--compressed", &format!("http://127.0.0.1:{port}/off")]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, big_text().as_bytes());
    assert_eq!(mg.metric(COMPRESSED, &[("library", "gzip")]), 1.0);
}
