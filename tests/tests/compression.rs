//! The `compressor` stream filter end to end: a scripted upstream serves a
//! large text body (with a strong ETag, with and without content-length),
//! small bodies, already-encoded bodies and images; curl (`--compressed`,
//! HTTP/1.1 and h2) and python's gzip decode what meshgate sends. Also
//! per-route `{disabled: true}` and `remove_accept_encoding_header`
//! overrides (the recorded upstream request shows the header gone), and
//! the filter configured from a real xDS control plane. Brotli and zstd:
//! three compressor filters on one listener, the encoding chosen by the
//! client's q-values (ties to the first filter, or to `choose_first`),
//! decoded by curl and by python's `brotli` / `zstandard`, over HTTP/1.1
//! and h2, and a brotli body that reaches the client chunk by chunk while
//! the upstream is still sending.

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
fn unhonoured_brotli_and_zstd_fields_are_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("mg-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (lib, field) in [
        ("brotli: {quality: 12}", "compressor_library.brotli.quality"),
        (
            "zstd: {chunk_size: 4096}",
            "compressor_library.zstd.chunk_size",
        ),
        ("zstd: {dictionary: {}}", "dictionary"),
        ("{gzip: {}, brotli: {}}", "compressor_library"),
    ] {
        let lib_yaml = if lib.starts_with('{') {
            format!("compressor_library: {lib}")
        } else {
            format!("compressor_library:\n                      {lib}")
        };
        let yaml = config("127.0.0.1:1".parse().unwrap()).replace(
            "compressor_library:\n                      name: text\n                      gzip: {compression_level: COMPRESSION_LEVEL_6}",
            &lib_yaml,
        );
        assert!(yaml.contains(lib), "{yaml}");
        let path = dir.join("lib.yaml");
        std::fs::write(&path, yaml.replace("{ADMIN}", "127.0.0.1:0")).unwrap();
        let (code, out, err) = run_cli(&["validate", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{lib}: {out}");
        assert!(format!("{out}{err}").contains(field), "{lib}: {out}{err}");
    }
}

/// Two listeners: `multi` with gzip, brotli and zstd compressor filters in
/// that order, `first` with gzip then brotli marked `choose_first`.
fn multi_config(up: std::net::SocketAddr) -> String {
    let listener = |name: &str, filters: &str| {
        format!(
            r#"  - name: {name}
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
{filters}              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route: {{cluster: up}}
"#
        )
    };
    let f = |lib: &str| {
        format!("                - name: compressor\n                  config:\n{lib}\n")
    };
    let gzip = f("                    compressor_library: {gzip: {}}");
    let br = f(
        "                    compressor_library: {brotli: {quality: 5, encoder_mode: TEXT, window_bits: 20}}",
    );
    let zstd = f(
        "                    compressor_library: {zstd: {compression_level: 5, enable_checksum: true}}",
    );
    let br_first = f(
        "                    compressor_library: {brotli: {}}\n                    choose_first: true",
    );
    format!(
        "admin:\n  address: \"{{ADMIN}}\"\nlisteners:\n{}{}clusters:\n  - name: up\n    endpoints: [{{address: \"{up}\"}}]\n",
        listener("multi", &format!("{gzip}{br}{zstd}")),
        listener("first", &format!("{gzip}{br_first}")),
    )
}

/// Python's `brotli` or `zstandard` (or gzip) decoder over `data`.
fn python_decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let code = match encoding {
        "br" => {
            "import brotli,sys; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))"
        }
        // A streaming frame has no content size: decode with a reader.
        "zstd" => {
            "import zstandard,sys; sys.stdout.buffer.write(zstandard.ZstdDecompressor().stream_reader(sys.stdin.buffer).read())"
        }
        _ => "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
    };
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python could not decode {encoding}: {out:?}"
    );
    out.stdout
}

#[test]
fn brotli_and_zstd_chosen_by_q_values_over_http1_and_h2() {
    let up = upstream();
    let mg = Meshgate::start(&multi_config(up.addr));
    let big = big_text();
    let multi = format!("http://127.0.0.1:{}", mg.listener_port("multi"));
    let first = format!("http://127.0.0.1:{}", mg.listener_port("first"));
    for h2 in [false, true] {
        let proto: &[&str] = if h2 {
            &["--http2-prior-knowledge"]
        } else {
            &[]
        };
        for (ae, path, want) in [
            ("br", "/big", "br"),
            ("zstd", "/big", "zstd"),
            ("gzip;q=0.5, br;q=0.8, zstd;q=0.9", "/big", "zstd"),
            ("gzip;q=0.5, br;q=0.8, zstd;q=0.1", "/big", "br"),
            // A tie goes to the first filter in the chain.
            ("zstd, br, gzip", "/big", "gzip"),
            ("gzip;q=0, *", "/big", "br"),
            // A chunked upstream body streams through each encoder.
            ("br", "/chunked", "br"),
            ("zstd", "/chunked", "zstd"),
        ] {
            let url = format!("{multi}{path}");
            let mut args = proto.to_vec();
            let h = format!("accept-encoding: {ae}");
            args.extend(["-H", &h, &url]);
            let (head, raw) = fetch(&args);
            assert!(
                head.contains(&format!("content-encoding: {want}\r\n")),
                "{ae} h2={h2}: {head}"
            );
            assert_eq!(
                head.matches("vary: accept-encoding").count(),
                1,
                "one vary: {head}"
            );
            assert!(!head.contains("content-length"), "{head}");
            assert!(raw.len() < big.len() / 5, "{want}: {} bytes", raw.len());
            assert_eq!(python_decode(want, &raw), big.as_bytes(), "{ae} h2={h2}");
        }
        // curl offers "deflate, gzip, br, zstd" at q=1 and decodes itself.
        let mut args = proto.to_vec();
        let url = format!("{multi}/big");
        args.extend(["--compressed", &url]);
        let (head, body) = fetch(&args);
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert_eq!(body, big.as_bytes());
        // choose_first on the later brotli filter wins the tie.
        let url = format!("{first}/big");
        let mut args = proto.to_vec();
        args.extend(["--compressed", &url]);
        let (head, body) = fetch(&args);
        assert!(head.contains("content-encoding: br"), "{head}");
        assert_eq!(body, big.as_bytes());
        // ...but not a higher q-value.
        let mut args = proto.to_vec();
        args.extend(["-H", "accept-encoding: br;q=0.5, gzip", &url]);
        let (head, raw) = fetch(&args);
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert_eq!(python_decode("gzip", &raw), big.as_bytes());
    }
    // Per protocol: brotli 3 explicit + 1 chunked + 1 choose_first, zstd
    // 2 + 1 chunked, gzip 1 tie + 1 curl + 1 on `first`.
    assert_eq!(mg.metric(COMPRESSED, &[("library", "brotli")]), 10.0);
    assert_eq!(mg.metric(COMPRESSED, &[("library", "zstd")]), 6.0);
    assert_eq!(mg.metric(COMPRESSED, &[("library", "gzip")]), 6.0);
    let zin = mg.metric(BYTES_IN, &[("library", "zstd")]);
    let zout = mg.metric(BYTES_OUT, &[("library", "zstd")]);
    assert_eq!(zin, 6.0 * big.len() as f64);
    assert!(zout > 0.0 && zout < zin / 5.0, "{zout}");
    // The filters that were not chosen say so: zstd (last in the chain,
    // first on the response) for the 6 br/gzip answers per protocol.
    assert_eq!(
        mg.metric(
            NOT_COMPRESSED,
            &[("library", "zstd"), ("reason", "not_accepted")]
        ),
        12.0
    );
}

/// The upstream sends the head and a first chunk, then waits for `go`
/// before the rest: the client must see the first chunk, compressed and
/// decodable on its own, while the upstream is still waiting.
#[test]
fn brotli_body_streams_chunk_by_chunk() {
    use std::io::{BufRead, BufReader, Read, Write};
    let part1 = "first part: the quick brown fox jumps over the lazy dog\n".repeat(50);
    let part2 = "second part: pack my box with five dozen liquor jugs\n".repeat(50);
    let lis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = lis.local_addr().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (p1, p2) = (part1.clone(), part2.clone());
    std::thread::spawn(move || {
        let (mut s, _) = lis.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        let mut out =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        out.extend_from_slice(format!("{:x}\r\n{p1}\r\n", p1.len()).as_bytes());
        s.write_all(&out).unwrap();
        let _ = go_rx.recv_timeout(std::time::Duration::from_secs(20));
        s.write_all(format!("{:x}\r\n{p2}\r\n0\r\n\r\n", p2.len()).as_bytes())
            .unwrap();
    });
    let mg = Meshgate::start(&multi_config(up));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", mg.listener_port("multi"))).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    c.write_all(b"GET /s HTTP/1.1\r\nhost: x\r\naccept-encoding: br\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "head cut: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.contains("content-encoding: br"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // Reads one HTTP/1.1 chunk of the (compressed) body.
    let chunk = |r: &mut BufReader<std::net::TcpStream>| -> Vec<u8> {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut b = vec![0; n + 2];
        r.read_exact(&mut b).unwrap();
        b.truncate(n);
        b
    };
    let mut dec = brotli::DecompressorWriter::new(Vec::new(), 4096);
    // Part 1 arrives (maybe over several chunks) before `go`.
    let mut got = 0;
    while dec.get_ref().len() < part1.len() {
        let b = chunk(&mut r);
        assert!(!b.is_empty(), "body ended early");
        got += b.len();
        dec.write_all(&b).unwrap();
        dec.flush().unwrap();
    }
    assert_eq!(dec.get_ref().as_slice(), part1.as_bytes());
    assert!(got < part1.len() / 5, "compressed: {got} bytes");
    go_tx.send(()).unwrap();
    loop {
        let b = chunk(&mut r);
        if b.is_empty() {
            break;
        }
        dec.write_all(&b).unwrap();
    }
    let all = dec.into_inner().unwrap();
    assert_eq!(all, format!("{part1}{part2}").as_bytes());
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
