//! xDS end to end: a management server written here (tonic, over Envoy's
//! v3 protos from envoy-types, in this test process) drives the real
//! meshgate binary over ADS while keep-alive clients run through it.
//! Asserts: zero failed requests and no reset connection across a route
//! change, a weighted canary shift, an endpoint add and removal, a listener
//! change and a cluster removal; ACK and NACK contents; warming order and
//! subscriptions; reconnect after the server restarts, keeping the last
//! good config meanwhile.

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use meshgate_tests::backend::{HttpBackend, Proto};
use meshgate_tests::*;
use prost::Message;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

// ---------------------------------------------------------------- server

#[derive(Default)]
struct Shared {
    /// Per type URL: version and (name, resource).
    resources: HashMap<String, (String, Vec<(String, Any)>)>,
    /// Every request received, in order.
    requests: Vec<DiscoveryRequest>,
    /// Every response sent: (type, version, nonce).
    sent: Vec<(String, String, String)>,
    nonce: u64,
}

#[derive(Clone)]
struct Ads {
    shared: Arc<Mutex<Shared>>,
    changed: tokio::sync::watch::Sender<u64>,
    kill: CancellationToken,
}

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = RespStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<RespStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let shared = self.shared.clone();
        let mut changed = self.changed.subscribe();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            // Per type: names asked for, and what was last sent.
            let mut names: HashMap<String, Vec<String>> = HashMap::new();
            let mut sent: HashMap<String, (String, Vec<String>)> = HashMap::new();
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    m = inbound.message() => match m {
                        Ok(Some(r)) => {
                            names.insert(r.type_url.clone(), r.resource_names.clone());
                            shared.lock().unwrap().requests.push(r);
                        }
                        _ => return,
                    },
                    c = changed.changed() => if c.is_err() { return },
                }
                let mut out = Vec::new();
                {
                    let mut s = shared.lock().unwrap();
                    for (t, n) in &names {
                        let Some((version, items)) = s.resources.get(t).cloned() else {
                            continue;
                        };
                        let key = (version.clone(), n.clone());
                        if sent.get(t) == Some(&key) {
                            continue;
                        }
                        sent.insert(t.clone(), key);
                        s.nonce += 1;
                        let nonce = format!("n{}", s.nonce);
                        s.sent.push((t.clone(), version.clone(), nonce.clone()));
                        out.push(DiscoveryResponse {
                            version_info: version,
                            type_url: t.clone(),
                            nonce,
                            resources: items
                                .into_iter()
                                .filter(|(name, _)| n.is_empty() || n.contains(name))
                                .map(|x| x.1)
                                .collect(),
                            ..Default::default()
                        });
                    }
                }
                for r in out {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS"))
    }
}

/// The management server: runs on its own runtime; `set` replaces the
/// resources of a type (state of the world) and pushes them.
struct Mgmt {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    ads: Ads,
}

impl Mgmt {
    fn start(port: u16) -> Self {
        Self::start_with(port, Arc::new(Mutex::new(Shared::default())))
    }

    fn start_with(port: u16, shared: Arc<Mutex<Shared>>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.bind(&addr.into()).unwrap();
        sock.listen(128).unwrap();
        sock.set_nonblocking(true).unwrap();
        let std_listener: std::net::TcpListener = sock.into();
        let ads = Ads {
            shared,
            changed: tokio::sync::watch::channel(0).0,
            kill: CancellationToken::new(),
        };
        let svc = AggregatedDiscoveryServiceServer::new(ads.clone());
        let kill = ads.kill.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, kill.cancelled_owned())
                .await;
        });
        Mgmt { rt, addr, ads }
    }

    fn set(&self, type_url: &str, version: &str, items: Vec<(String, Any)>) {
        self.ads
            .shared
            .lock()
            .unwrap()
            .resources
            .insert(type_url.to_string(), (version.to_string(), items));
        self.ads.changed.send_modify(|v| *v += 1);
    }

    fn requests(&self) -> Vec<DiscoveryRequest> {
        self.ads.shared.lock().unwrap().requests.clone()
    }

    fn sent(&self) -> Vec<(String, String, String)> {
        self.ads.shared.lock().unwrap().sent.clone()
    }

    /// Waits for a request of `type_url` answering `nonce`.
    fn wait_reply(&self, type_url: &str, nonce: &str) -> DiscoveryRequest {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .requests()
                .into_iter()
                .find(|r| r.type_url == type_url && r.response_nonce == nonce)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no reply to {type_url} nonce {nonce}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nonce of the last response of `type_url` with `version`.
    fn wait_sent(&self, type_url: &str, version: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self
                .sent()
                .into_iter()
                .rev()
                .find(|s| s.0 == type_url && s.1 == version)
            {
                return s.2;
            }
            assert!(Instant::now() < deadline, "{type_url} {version} never sent");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and ends its streams.
    fn stop(self) -> Arc<Mutex<Shared>> {
        self.ads.kill.cancel();
        let shared = self.ads.shared.clone();
        self.rt.shutdown_timeout(Duration::from_secs(2));
        shared
    }
}

// ------------------------------------------------------------- resources

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn sock(addr: SocketAddr) -> core3::Address {
    core3::Address {
        address: Some(core3::address::Address::SocketAddress(
            core3::SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(core3::socket_address::PortSpecifier::PortValue(
                    addr.port() as u32
                )),
                ..Default::default()
            },
        )),
    }
}

fn ads_source() -> core3::ConfigSource {
    core3::ConfigSource {
        config_source_specifier: Some(core3::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core3::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> (String, Any) {
    let c = cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        lb_policy: cds::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    (name.into(), any(CLUSTER, &c))
}

fn static_cluster(name: &str, addr: SocketAddr) -> (String, Any) {
    let c = cds::Cluster {
        name: name.into(),
        load_assignment: Some(cla_msg(name, &[(addr, 1, 0)])),
        ..Default::default()
    };
    (name.into(), any(CLUSTER, &c))
}

/// (address, weight, health status).
fn cla_msg(name: &str, eps: &[(SocketAddr, u32, i32)]) -> eds::ClusterLoadAssignment {
    eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![eds::LocalityLbEndpoints {
            lb_endpoints: eps
                .iter()
                .map(|(a, w, h)| eds::LbEndpoint {
                    host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                        eds::Endpoint {
                            address: Some(sock(*a)),
                            ..Default::default()
                        },
                    )),
                    load_balancing_weight: Some(UInt32Value { value: *w }),
                    health_status: *h,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn cla(name: &str, eps: &[(SocketAddr, u32, i32)]) -> (String, Any) {
    (name.into(), any(ENDPOINT, &cla_msg(name, eps)))
}

/// A route configuration: `/` to weighted clusters (one entry: plain
/// cluster), and `/direct` answered directly.
fn route_config(name: &str, clusters: &[(&str, u32)]) -> (String, Any) {
    use rds::route_action::ClusterSpecifier;
    let spec = if clusters.len() == 1 {
        ClusterSpecifier::Cluster(clusters[0].0.into())
    } else {
        ClusterSpecifier::WeightedClusters(rds::WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(c, w)| rds::weighted_cluster::ClusterWeight {
                    name: (*c).into(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let r = rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![
                rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Path(
                            "/direct".into(),
                        )),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::DirectResponse(
                        rds::DirectResponseAction {
                            status: 200,
                            body: Some(core3::DataSource {
                                specifier: Some(core3::data_source::Specifier::InlineString(
                                    format!("direct from {name}"),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
                rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(spec),
                        timeout: Some(PbDuration {
                            seconds: 5,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })),
                    response_headers_to_add: vec![core3::HeaderValueOption {
                        header: Some(core3::HeaderValue {
                            key: "x-route-config".into(),
                            value: name.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(ROUTE, &r))
}

fn hcm_listener(name: &str, port: u16, rds_name: &str) -> (String, Any) {
    let h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads_source()),
                route_config_name: rds_name.into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let l = lds::Listener {
        name: name.into(),
        address: Some(sock(format!("127.0.0.1:{port}").parse().unwrap())),
        filter_chains: vec![lds::FilterChain {
            filters: vec![lds::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(lds::filter::ConfigType::TypedConfig(any(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    &h,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(LISTENER, &l))
}

fn tcp_listener(name: &str, port: u16, cluster: &str) -> (String, Any) {
    let t = tcp::TcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    let l = lds::Listener {
        name: name.into(),
        address: Some(sock(format!("127.0.0.1:{port}").parse().unwrap())),
        filter_chains: vec![lds::FilterChain {
            filters: vec![lds::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(lds::filter::ConfigType::TypedConfig(any(
                    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    &t,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(LISTENER, &l))
}

fn bootstrap(xds_port: u16) -> String {
    format!(
        r#"admin:
  address: "{{ADMIN}}"
node:
  id: test-node
  cluster: test-cluster
  metadata: {{role: edge, zone: z1}}
dynamic_resources:
  ads:
    cluster: xds
    retry_base_interval: 100ms
    retry_max_interval: 500ms
clusters:
  - name: xds
    connect_timeout: 1s
    endpoints:
      - address: 127.0.0.1:{xds_port}
"#
    )
}

// ------------------------------------------------------------- clients

/// One keep-alive HTTP/1.1 GET: the `x-backend`/body summary, or None if
/// the connection failed before a whole 200 response.
fn request(conn: &mut Option<BufReader<TcpStream>>, port: u16, path: &str) -> Option<String> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    r.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut status = String::new();
    r.read_line(&mut status).ok()?;
    if !status.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut len = 0usize;
    let mut close = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    if close {
        *conn = None;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    Some(
        body.lines()
            .find(|l| l.starts_with("backend="))
            .map(|l| l.to_string())
            .unwrap_or(body),
    )
}

fn get(port: u16, path: &str) -> Option<String> {
    request(&mut None, port, path)
}

fn wait_for(port: u16, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(port, path);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "got {got:?}, want {want}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Keep-alive clients running until stopped; counts successes, failures,
/// and which backend answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<Mutex<HashMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, seen) =
                    (stop.clone(), ok.clone(), failed.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        match request(&mut conn, port, "/") {
                            Some(b) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *seen.lock().unwrap().entry(b).or_default() += 1;
                            }
                            None => {
                                conn = None;
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            seen,
            threads,
        }
    }

    fn seen(&self, backend: &str) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .get(&format!("backend={backend}"))
            .copied()
            .unwrap_or(0)
    }

    fn reset_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_err()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn updates_under_load_lose_no_request() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let c = HttpBackend::start("c", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(free_port());
    mgmt.set(
        CLUSTER,
        "c1",
        vec![eds_cluster("svc-a"), eds_cluster("svc-b")],
    );
    mgmt.set(
        ENDPOINT,
        "e1",
        vec![
            cla("svc-a", &[(a.addr, 1, 0)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    mgmt.set(LISTENER, "l1", vec![hcm_listener("web", port, "r1")]);
    mgmt.set(ROUTE, "r1", vec![route_config("r1", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");

    let load = Load::start(port, 6);
    std::thread::sleep(Duration::from_millis(300));

    // Route change: everything to svc-b.
    mgmt.set(ROUTE, "r2", vec![route_config("r1", &[("svc-b", 1)])]);
    wait_for(port, "/", "backend=b");
    std::thread::sleep(Duration::from_millis(200));

    // Weighted canary shift: 90/10, then 10/90; both answer under load.
    mgmt.set(
        ROUTE,
        "r3",
        vec![route_config("r1", &[("svc-a", 90), ("svc-b", 10)])],
    );
    std::thread::sleep(Duration::from_millis(600));
    load.reset_seen();
    std::thread::sleep(Duration::from_millis(600));
    let (sa, sb) = (load.seen("a"), load.seen("b"));
    assert!(sa > sb * 3 && sb > 0, "90/10 split saw a={sa} b={sb}");
    mgmt.set(
        ROUTE,
        "r4",
        vec![route_config("r1", &[("svc-a", 10), ("svc-b", 90)])],
    );
    std::thread::sleep(Duration::from_millis(600));
    load.reset_seen();
    std::thread::sleep(Duration::from_millis(600));
    let (sa, sb) = (load.seen("a"), load.seen("b"));
    assert!(sb > sa * 3 && sa > 0, "10/90 split saw a={sa} b={sb}");

    // Endpoint add: svc-a gets c too (route back to svc-a only).
    mgmt.set(ROUTE, "r5", vec![route_config("r1", &[("svc-a", 1)])]);
    mgmt.set(
        ENDPOINT,
        "e2",
        vec![
            cla("svc-a", &[(a.addr, 1, 0), (c.addr, 1, 0)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    load.reset_seen();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        load.seen("a") > 0 && load.seen("c") > 0,
        "endpoint add: a={} c={}",
        load.seen("a"),
        load.seen("c")
    );
    // Endpoint removal: a leaves (and an UNHEALTHY endpoint gets nothing).
    mgmt.set(
        ENDPOINT,
        "e3",
        vec![
            cla("svc-a", &[(c.addr, 1, 0), (a.addr, 1, 2)]),
            cla("svc-b", &[(b.addr, 1, 0)]),
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    load.reset_seen();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        load.seen("a") == 0 && load.seen("c") > 0,
        "endpoint removal: a={} c={}",
        load.seen("a"),
        load.seen("c")
    );

    // Listener change: same address, now on route configuration r9
    // (warms first: it is served once r9 arrives).
    mgmt.set(
        ROUTE,
        "r6",
        vec![
            route_config("r1", &[("svc-a", 1)]),
            route_config("r9", &[("svc-b", 1)]),
        ],
    );
    mgmt.set(LISTENER, "l2", vec![hcm_listener("web", port, "r9")]);
    wait_for(port, "/", "backend=b");
    wait_for(port, "/direct", "direct from r9");

    // Cluster removal: svc-a is no longer routed to, then leaves CDS.
    mgmt.set(CLUSTER, "c2", vec![eds_cluster("svc-b")]);
    let nonce = mgmt.wait_sent(CLUSTER, "c2");
    let ack = mgmt.wait_reply(CLUSTER, &nonce);
    assert_eq!(ack.version_info, "c2");
    assert!(ack.error_detail.is_none(), "{ack:?}");
    std::thread::sleep(Duration::from_millis(300));

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 300, "only {ok} requests");
    let (_, dump) = mg.admin_get("/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters: Vec<&str> = dump["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, vec!["xds", "svc-b"], "{dump}");
    let dynv = dump["dynamic"]["version"].as_str().unwrap();
    assert!(dynv.contains("lds=l2") && dynv.contains("cds=c2"), "{dump}");
    assert!(
        dump["source"].as_str().unwrap().contains("xds:ads"),
        "{dump}"
    );
    assert!(mg.metric("meshgate_xds_response_total", &[("result", "ack")]) >= 10.0);
    assert_eq!(
        mg.metric("meshgate_xds_response_total", &[("result", "nack")]),
        0.0
    );

    // The node identity was sent.
    let first = &mgmt.requests()[0];
    let node = first.node.as_ref().unwrap();
    assert_eq!(node.id, "test-node");
    assert_eq!(node.cluster, "test-cluster");
    assert!(format!("{:?}", node.metadata).contains("edge"));
}

#[test]
fn nack_names_resource_and_field_and_keeps_the_previous_config() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let tport = free_port();
    let mgmt = Mgmt::start(free_port());
    mgmt.set(CLUSTER, "1", vec![static_cluster("svc-a", a.addr)]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(mgmt.addr.port()));
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 2);

    // A cluster with a field meshgate does not implement.
    let bad = cds::Cluster {
        name: "svc-bad".into(),
        load_assignment: Some(cla_msg("svc-bad", &[(a.addr, 1, 0)])),
        outlier_detection: Some(Default::default()),
        ..Default::default()
    };
    mgmt.set(
        CLUSTER,
        "2",
        vec![
            static_cluster("svc-a", a.addr),
            ("svc-bad".into(), any(CLUSTER, &bad)),
        ],
    );
    let nonce = mgmt.wait_sent(CLUSTER, "2");
    let nack = mgmt.wait_reply(CLUSTER, &nonce);
    assert_eq!(nack.version_info, "1", "NACK carries the previous version");
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("Cluster 'svc-bad'")
            && detail.message.contains("outlier_detection"),
        "{}",
        detail.message
    );

    // A listener that core refuses (a route to an unknown cluster is held
    // warming, so use a listener on the admin's address: bind conflict is
    // caught by the build) — and a tcp_proxy listener that is fine.
    let admin_port = mg.admin.unwrap().port();
    mgmt.set(
        LISTENER,
        "3",
        vec![
            hcm_listener("web", port, "r"),
            tcp_listener("tcp", tport, "svc-a"),
            hcm_listener("clash", admin_port, "r"),
        ],
    );
    let nonce = mgmt.wait_sent(LISTENER, "3");
    let nack = mgmt.wait_reply(LISTENER, &nonce);
    assert_eq!(nack.version_info, "1");
    let msg = nack.error_detail.expect("error_detail").message;
    assert!(
        msg.contains("Listener 'clash'") && msg.contains("address"),
        "{msg}"
    );
    assert!(refused(tport), "a refused update applies nothing");

    // Fixed: accepted, ACK with the new version and its nonce.
    mgmt.set(
        LISTENER,
        "4",
        vec![
            hcm_listener("web", port, "r"),
            tcp_listener("tcp", tport, "svc-a"),
        ],
    );
    let nonce = mgmt.wait_sent(LISTENER, "4");
    let ack = mgmt.wait_reply(LISTENER, &nonce);
    assert_eq!(ack.version_info, "4");
    assert!(ack.error_detail.is_none());
    wait_until("tcp_proxy listener", || !refused(tport));
    let mut s = TcpStream::connect(("127.0.0.1", tport)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("backend=a"), "{out}");

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
    assert!(
        mg.metric(
            "meshgate_xds_response_total",
            &[("type", "cds"), ("result", "nack")]
        ) >= 1.0
    );
}

#[test]
fn warming_and_subscriptions_follow_resources_in_use() {
    let a = HttpBackend::start("a", Proto::Http1);
    let port = free_port();
    let mgmt = Mgmt::start(free_port());
    mgmt.set(CLUSTER, "1", vec![eds_cluster("svc-a")]);
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r1")]);
    let _mg = Meshgate::start(&bootstrap(mgmt.addr.port()));

    // Subscriptions: EDS for the cluster's name, RDS for the listener's.
    wait_until("EDS subscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ENDPOINT && r.resource_names == ["svc-a"])
    });
    wait_until("RDS subscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ROUTE && r.resource_names == ["r1"])
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(refused(port), "listener served before its routes");

    // Routes arrive, but the cluster has no endpoints yet: still warming.
    mgmt.set(ROUTE, "1", vec![route_config("r1", &[("svc-a", 1)])]);
    let nonce = mgmt.wait_sent(ROUTE, "1");
    let ack = mgmt.wait_reply(ROUTE, &nonce);
    assert_eq!(ack.version_info, "1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(refused(port), "listener served before its cluster warmed");

    // Endpoints arrive: the cluster warms, then the listener serves.
    mgmt.set(ENDPOINT, "1", vec![cla("svc-a", &[(a.addr, 1, 0)])]);
    wait_for(port, "/", "backend=a");

    // The listener moves to r2: RDS subscription follows.
    mgmt.set(
        ROUTE,
        "2",
        vec![
            route_config("r1", &[("svc-a", 1)]),
            route_config("r2", &[("svc-a", 1)]),
        ],
    );
    mgmt.set(LISTENER, "2", vec![hcm_listener("web", port, "r2")]);
    wait_until("RDS resubscription", || {
        mgmt.requests()
            .iter()
            .any(|r| r.type_url == ROUTE && r.resource_names == ["r2"])
    });
    wait_for(port, "/direct", "direct from r2");
}

#[test]
fn reconnects_after_the_server_restarts_and_keeps_serving_meanwhile() {
    let a = HttpBackend::start("a", Proto::Http1);
    let b = HttpBackend::start("b", Proto::Http1);
    let port = free_port();
    let xport = free_port();
    let mgmt = Mgmt::start(xport);
    mgmt.set(
        CLUSTER,
        "1",
        vec![
            static_cluster("svc-a", a.addr),
            static_cluster("svc-b", b.addr),
        ],
    );
    mgmt.set(LISTENER, "1", vec![hcm_listener("web", port, "r")]);
    mgmt.set(ROUTE, "1", vec![route_config("r", &[("svc-a", 1)])]);
    let mg = Meshgate::start(&bootstrap(xport));
    wait_for(port, "/", "backend=a");
    let load = Load::start(port, 4);

    let shared = mgmt.stop();
    wait_until("disconnect seen", || {
        mg.metric("meshgate_xds_connected", &[]) == 0.0
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        get(port, "/").as_deref(),
        Some("backend=a"),
        "last good config serves"
    );

    // A new server on the same port, with a new route.
    shared.lock().unwrap().requests.clear();
    let mgmt = Mgmt::start_with(xport, shared);
    mgmt.set(ROUTE, "2", vec![route_config("r", &[("svc-b", 1)])]);
    wait_for(port, "/", "backend=b");
    // The re-opened stream told the server what it had.
    let reqs = mgmt.requests();
    let lds_first = reqs.iter().find(|r| r.type_url == LISTENER).unwrap();
    assert_eq!(lds_first.version_info, "1", "{lds_first:?}");
    assert!(lds_first.response_nonce.is_empty());
    let rds_first = reqs.iter().find(|r| r.type_url == ROUTE).unwrap();
    assert_eq!(rds_first.resource_names, ["r"]);
    assert!(mg.metric("meshgate_xds_stream_total", &[("result", "ok")]) >= 2.0);

    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {}", ok + failed);
}
