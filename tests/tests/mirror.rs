//! Request mirroring (`request_mirror_policies`) end to end: a real main
//! upstream (hyper) and recording raw shadow upstreams. The shadow gets a
//! copy of the request (head with the `-shadow` host, and the body), the
//! client never waits for it (a shadow that never answers does not delay
//! the client), `runtime_fraction` 0 sends nothing and 100 everything,
//! bodies past the mirror's bound abandon only the mirror, and every
//! outcome is counted in `meshgate_cluster_mirror_rq_total`. Also through
//! a real xDS control plane.

use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::curl::curl;
use meshgate_tests::scripted::{Script, Scripted};
use meshgate_tests::*;
use std::time::{Duration, Instant};

const MIRROR: &str = "meshgate_cluster_mirror_rq_total";
/// One answer per connection (the scripted upstream answers once), so
/// the pool does not reuse it.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn count(h: &[u8], n: &[u8]) -> usize {
    h.windows(n.len()).filter(|w| *w == n).count()
}

/// Every byte the shadow got, over all its connections.
fn seen(s: &Scripted) -> Vec<u8> {
    s.conns().into_iter().flat_map(|c| c.bytes).collect()
}

struct Setup {
    mg: Meshgate,
    port: u16,
    main: HttpBackend,
    shadow: Scripted,
    silent: Scripted,
}

fn setup() -> Setup {
    let main = HttpBackend::start("main", Proto::Http1);
    // One answer per connection; for requests with a body the test checks,
    // only once that body is in (an upstream answering at the head may end
    // the request's body early, which is not what these tests look at).
    let shadow = Scripted::start(|head| {
        let body: &[u8] = if head.windows(6).any(|w| w == b"/m/one") {
            b"mirrored-body-h1"
        } else if head.windows(6).any(|w| w == b"/m/two") {
            b"mirrored-body-h2"
        } else if head.windows(5).any(|w| w == b" /two") {
            b"two-body"
        } else {
            return Script::Answer(OK.to_vec());
        };
        Script::AnswerAfter {
            until: body.to_vec(),
            bytes: OK.to_vec(),
        }
    });
    let silent = Scripted::start(|_| Script::Silent);
    // A port nothing listens on: the shadow's connection fails.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = free_port();
    let yaml = format!(
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
                validate_clusters: false
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /m/}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: shadow
                      - match: {{prefix: /nosuffix}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - {{cluster: shadow, disable_shadow_host_suffix_append: true}}
                      - match: {{prefix: /hang}}
                        route:
                          cluster: main
                          timeout: 20s
                          request_mirror_policies:
                            - cluster: silent
                      - match: {{prefix: /zero}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: shadow
                              runtime_fraction: {{default_value: {{numerator: 0}}, runtime_key: mirror.zero}}
                      - match: {{prefix: /all}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: shadow
                              runtime_fraction: {{default_value: {{numerator: 100, denominator: HUNDRED}}}}
                      - match: {{prefix: /big}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - {{cluster: shadow_big, max_body_bytes: 1024}}
                      - match: {{prefix: /two}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: shadow
                            - cluster: silent
                      - match: {{prefix: /missing}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: nowhere
                      - match: {{prefix: /dead}}
                        route:
                          cluster: main
                          request_mirror_policies:
                            - cluster: dead
clusters:
  - name: main
    endpoints: [{{address: "{main}"}}]
  - name: shadow
    endpoints: [{{address: "{shadow}"}}]
  - name: shadow_big
    endpoints: [{{address: "{silent}"}}]
  - name: silent
    endpoints: [{{address: "{silent}"}}]
  - name: dead
    endpoints: [{{address: "{dead}"}}]
"#,
        main = main.addr,
        shadow = shadow.addr,
        silent = silent.addr,
    );
    let mg = Meshgate::start(&yaml);
    Setup {
        mg,
        port,
        main,
        shadow,
        silent,
    }
}

fn wait_seen(s: &Scripted, what: &[u8], n: usize) -> Vec<u8> {
    let mut last = Vec::new();
    poll(Duration::from_secs(15), || {
        last = seen(s);
        (count(&last, what) >= n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "shadow never saw {n} x {:?}: {}",
            String::from_utf8_lossy(what),
            String::from_utf8_lossy(&last)
        )
    });
    last
}

#[test]
fn shadow_gets_the_request_with_shadow_host_and_body_over_h1_and_h2() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/m/one", s.port);
    let (status, h, body) = curl(&[
        "-H",
        "Host: api.example:8080",
        "--data-binary",
        "mirrored-body-h1",
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-backend"], "main");
    assert!(body.contains("host=api.example:8080"), "{body}");
    let got = wait_seen(&s.shadow, b"mirrored-body-h1", 1);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("post /m/one http/1.1"), "{text}");
    assert!(text.contains("host: api.example-shadow:8080"), "{text}");
    s.mg.wait_metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")], |v| {
        v >= 1.0
    });

    // HTTP/2 downstream: the shadow (HTTP/1.1) gets the :authority with
    // the suffix as its Host.
    let (status, _, body) = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "mirrored-body-h2",
        &format!("http://127.0.0.1:{}/m/two", s.port),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body-bytes=16"), "{body}");
    let got = wait_seen(&s.shadow, b"mirrored-body-h2", 1);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        text.contains(&format!("host: 127.0.0.1-shadow:{}", s.port)),
        "{text}"
    );
    s.mg.wait_metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")], |v| {
        v >= 2.0
    });

    // disable_shadow_host_suffix_append keeps the Host.
    let (status, _, _) = curl(&[
        "-H",
        "Host: plain.example",
        &format!("http://127.0.0.1:{}/nosuffix", s.port),
    ]);
    assert_eq!(status, 200);
    let got = wait_seen(&s.shadow, b"GET /nosuffix", 1);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("host: plain.example\r\n"), "{text}");
}

#[test]
fn a_shadow_that_never_answers_does_not_delay_the_client() {
    let s = setup();
    for i in 0..3 {
        let t = Instant::now();
        let (status, _, body) = curl(&[
            "--data-binary",
            "hang-body",
            &format!("http://127.0.0.1:{}/hang/{i}", s.port),
        ]);
        let took = t.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("backend=main"), "{body}");
        // The route timeout (the shadow's bound) is 20s: the client's
        // answer came long before it, while the shadow still hangs.
        assert!(took < Duration::from_secs(5), "client took {took:?}");
    }
    // Each shadow request reached the silent upstream, which never answered.
    let got = wait_seen(&s.silent, b"hang-body", 3);
    assert_eq!(count(&got, b"POST /hang/"), 3);
    assert_eq!(
        s.mg.metric(MIRROR, &[("cluster", "silent"), ("result", "sent")]),
        0.0
    );
    // Two mirrors on one route: the answering one completes, the silent
    // one does not hold it nor the client back.
    let (status, _, _) = curl(&[
        "--data-binary",
        "two-body",
        &format!("http://127.0.0.1:{}/two", s.port),
    ]);
    assert_eq!(status, 200);
    wait_seen(&s.shadow, b"two-body", 1);
    wait_seen(&s.silent, b"two-body", 1);
    assert!(s.main.hits() >= 4);
}

#[test]
fn fraction_zero_mirrors_nothing_and_hundred_everything() {
    let s = setup();
    for _ in 0..20 {
        let (status, _, _) = curl(&[&format!("http://127.0.0.1:{}/zero", s.port)]);
        assert_eq!(status, 200);
    }
    for i in 0..20 {
        let (status, _, _) = curl(&[&format!("http://127.0.0.1:{}/all/{i}", s.port)]);
        assert_eq!(status, 200);
    }
    s.mg.wait_metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")], |v| {
        v >= 20.0
    });
    let got = wait_seen(&s.shadow, b"GET /all/", 20);
    assert_eq!(count(&got, b"GET /all/"), 20);
    assert_eq!(count(&got, b"/zero"), 0, "fraction 0 mirrored a request");
    assert_eq!(
        s.mg.metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")]),
        20.0
    );
}

#[test]
fn a_body_past_the_mirror_bound_drops_the_mirror_not_the_request() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let mut data = vec![0u8; 64 * 1024];
    Prng::new(7).fill(&mut data);
    std::fs::write(&file, &data).unwrap();
    let at = format!("@{}", file.display());
    let url = format!("http://127.0.0.1:{}/big", s.port);
    // Known length: refused for the mirror before it starts.
    let (status, _, body) = curl(&["--data-binary", &at, &url]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body-bytes=65536"), "{body}");
    s.mg.wait_metric(
        MIRROR,
        &[
            ("cluster", "shadow_big"),
            ("result", "dropped_body_too_large"),
        ],
        |v| v >= 1.0,
    );
    // Unknown length (chunked): the tee abandons the mirror at the bound
    // while the main request streams on, whole.
    let (status, _, body) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at,
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body-bytes=65536"), "{body}");
    s.mg.wait_metric(
        MIRROR,
        &[
            ("cluster", "shadow_big"),
            ("result", "dropped_body_too_large"),
        ],
        |v| v >= 2.0,
    );
    assert_eq!(
        s.mg.metric(MIRROR, &[("cluster", "shadow_big"), ("result", "sent")]),
        0.0
    );
    // The shadow (one that never answers, so the mirror is still open when
    // the bound is passed) never got a complete chunked body: no last
    // chunk, and its connection was closed.
    let got = seen(&s.silent);
    // (Whether its head went out before the abort is the codec's affair.)
    let heads = count(&got, b"POST /big");
    assert!(heads <= 1, "{}", String::from_utf8_lossy(&got));
    if heads == 1 {
        s.silent.wait_closed(0);
    }
    let got = seen(&s.silent);
    assert_eq!(
        count(&got, b"0\r\n\r\n"),
        0,
        "a truncated mirror was sent whole"
    );
}

#[test]
fn missing_and_failing_shadows_are_counted_and_the_client_is_served() {
    let s = setup();
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{}/missing", s.port)]);
    assert_eq!(status, 200, "{body}");
    s.mg.wait_metric(
        MIRROR,
        &[("cluster", "nowhere"), ("result", "no_cluster")],
        |v| v >= 1.0,
    );
    let (status, _, body) = curl(&[&format!("http://127.0.0.1:{}/dead", s.port)]);
    assert_eq!(status, 200, "{body}");
    s.mg.wait_metric(MIRROR, &[("cluster", "dead"), ("result", "failed")], |v| {
        v >= 1.0
    });
}

#[test]
fn bad_mirror_configs_are_refused_by_field() {
    let cases = [
        (
            "{cluster: main, cluster_header: x-c}",
            "request_mirror_policies[0].cluster_header",
        ),
        (
            "{cluster: main, trace_sampled: true}",
            "request_mirror_policies[0].trace_sampled",
        ),
        ("{cluster: nope}", "request_mirror_policies[0].cluster"),
        (
            "{cluster_header: x}",
            "request_mirror_policies[0].cluster_header",
        ),
    ];
    for (policy, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            format!(
                r#"listeners:
  - name: web
    address: 127.0.0.1:0
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
                        route:
                          cluster: main
                          request_mirror_policies: [{policy}]
clusters:
  - name: main
    endpoints: [{{address: "127.0.0.1:1"}}]
"#
            ),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["validate", f.to_str().unwrap()]);
        assert_ne!(code, 0, "{policy} was accepted");
        assert!(
            format!("{out}{err}").contains(field),
            "{policy}: {out}{err}"
        );
    }
}

#[test]
fn mirror_through_xds() {
    use envoy_types::pb::envoy::config::core::v3 as core3;
    use envoy_types::pb::envoy::config::route::v3 as rds;
    use envoy_types::pb::envoy::r#type::v3 as typev3;
    use meshgate_tests::xds::*;
    use prost::Message;

    let main = HttpBackend::start("main", Proto::Http1);
    let shadow = Scripted::start(|_| Script::Answer(OK.to_vec()));
    let port = free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(
        CLUSTER,
        "c1",
        vec![
            static_cluster("svc-a", main.addr),
            static_cluster("shadow", shadow.addr),
        ],
    );
    let (name, l) = hcm_listener("web", port, "r1");
    mgmt.set(LISTENER, "l1", vec![(name, l)]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    let mut r = rds::RouteConfiguration::decode(r.value.as_slice()).unwrap();
    for route in r.virtual_hosts[0].routes.iter_mut() {
        if let Some(rds::route::Action::Route(a)) = route.action.as_mut() {
            a.request_mirror_policies
                .push(rds::route_action::RequestMirrorPolicy {
                    cluster: "shadow".into(),
                    runtime_fraction: Some(core3::RuntimeFractionalPercent {
                        default_value: Some(typev3::FractionalPercent {
                            numerator: 100,
                            denominator: 0,
                        }),
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                });
        }
    }
    mgmt.set(ROUTE, "r1", vec![(rname, any(ROUTE, &r))]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/via-xds", "backend=main");
    let got = wait_seen(&shadow, b"GET /via-xds", 1);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    // The probe sends `Host: x`.
    assert!(text.contains("host: x-shadow\r\n"), "{text}");
    mg.wait_metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")], |v| {
        v >= 1.0
    });
}

#[test]
fn mirror_from_an_http3_downstream() {
    let main = HttpBackend::start("main", Proto::Http1);
    // Answers once the whole body is in (an upstream answering at the head
    // would end the shadow's body early).
    let shadow = Scripted::start(|_| Script::AnswerAfter {
        until: b"mirrored-body-h3".to_vec(),
        bytes: OK.to_vec(),
    });
    let port = free_port();
    let certs = workspace().join("examples/certs");
    let yaml = format!(
        r#"admin:
  address: "{{ADMIN}}"
listeners:
  - name: h3
    address: 127.0.0.1:{port}
    quic: {{}}
    filter_chains:
      - tls:
          certificates: [{{certificate_chain: "{crt}", private_key: "{key}"}}]
        filters:
          - name: proxy
            config:
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {{prefix: /}}
                        route:
                          cluster: main
                          request_mirror_policies: [{{cluster: shadow}}]
clusters:
  - name: main
    endpoints: [{{address: "{main}"}}]
  - name: shadow
    endpoints: [{{address: "{shadow}"}}]
"#,
        crt = certs.join("server.pem").display(),
        key = certs.join("server.key").display(),
        main = main.addr,
        shadow = shadow.addr,
    );
    let mg = Meshgate::start(&yaml);
    let r = meshgate_tests::aioquic::get(port, &["/h3/post"], Some("mirrored-body-h3"));
    assert!(r[0].1.contains("backend=main"), "{}", r[0].1);
    assert!(r[0].1.contains("body-bytes=16"), "{}", r[0].1);
    let got = wait_seen(&shadow, b"mirrored-body-h3", 1);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("post /h3/post http/1.1"), "{text}");
    assert!(
        text.contains(&format!("host: localhost-shadow:{port}")),
        "{text}"
    );
    mg.wait_metric(MIRROR, &[("cluster", "shadow"), ("result", "sent")], |v| {
        v >= 1.0
    });
}
