//! An xDS management server for tests and benchmarks: tonic over Envoy's
//! v3 protos (envoy-types), in the calling process, serving state of the
//! world over ADS; builders for the resources it serves; a keep-alive HTTP
//! load client.

use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

// The resource builders live with the client (its unit tests use them
// too); the type URLs are the client's own.
pub use meshgate_xds::fixtures::{
    ads_source, any, cla, cla_msg, eds_cluster, eds_cluster_msg, hcm_listener, one_filter_listener,
    route_config, sock, static_cluster,
};
pub use meshgate_xds::tls::SECRET;
pub use meshgate_xds::translate::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

// ---------------------------------------------------------------- server

#[derive(Default)]
pub struct Shared {
    /// Per type URL: version and (name, resource).
    pub resources: HashMap<String, (String, Vec<(String, Any)>)>,
    /// Every request received, in order.
    pub requests: Vec<DiscoveryRequest>,
    /// Every response sent: (type, version, nonce).
    pub sent: Vec<(String, String, String)>,
    /// Delta xDS: every request as received.
    pub delta_requests: Vec<DeltaDiscoveryRequest>,
    /// Delta xDS: every response sent: (type, resources carried, names
    /// removed).
    pub delta_sent: Vec<(String, usize, Vec<String>)>,
    /// When each of `sent` was handed to its stream (after the server
    /// worked out what to send), for benchmarks timing the client alone.
    pub sent_at: Vec<Instant>,
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
                        s.sent_at.push(Instant::now());
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

    /// Delta xDS: per stream and type, what the client subscribed (a
    /// wildcard when its first request named nothing or `*`) and the
    /// version of each resource it holds (a hash of the resource's
    /// bytes); a change sends only the resources whose version differs,
    /// and names the ones gone in `removed_resources`. Requests are
    /// recorded as state-of-the-world ones (`version_info`: the version of
    /// the response they answer), so `wait_reply` and `set_acked` serve
    /// both variants.
    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let shared = self.shared.clone();
        let mut changed = self.changed.subscribe();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            #[derive(Default)]
            struct Sub {
                wildcard: bool,
                /// A first request is answered even when nothing differs
                /// (the client learns the server has spoken).
                fresh: bool,
                names: std::collections::BTreeSet<String>,
                held: HashMap<String, String>,
            }
            let mut subs: HashMap<String, Sub> = HashMap::new();
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    m = inbound.message() => match m {
                        Ok(Some(r)) => {
                            let first = !subs.contains_key(&r.type_url);
                            let sub = subs.entry(r.type_url.clone()).or_default();
                            if first {
                                sub.fresh = true;
                                sub.wildcard = r.resource_names_subscribe.is_empty();
                                sub.held = r.initial_resource_versions.clone();
                            }
                            for n in &r.resource_names_subscribe {
                                if n == "*" {
                                    sub.wildcard = true;
                                } else {
                                    sub.names.insert(n.clone());
                                }
                            }
                            for n in &r.resource_names_unsubscribe {
                                sub.names.remove(n);
                                sub.held.remove(n);
                            }
                            let mut s = shared.lock().unwrap();
                            let version_info = s
                                .sent
                                .iter()
                                .find(|x| x.2 == r.response_nonce)
                                .map(|x| x.1.clone())
                                .unwrap_or_default();
                            s.requests.push(DiscoveryRequest {
                                version_info,
                                node: r.node.clone(),
                                resource_names: r.resource_names_subscribe.clone(),
                                type_url: r.type_url.clone(),
                                response_nonce: r.response_nonce.clone(),
                                error_detail: r.error_detail.clone(),
                                ..Default::default()
                            });
                            s.delta_requests.push(r);
                        }
                        _ => return,
                    },
                    c = changed.changed() => if c.is_err() { return },
                }
                let mut out = Vec::new();
                {
                    let mut s = shared.lock().unwrap();
                    for (t, sub) in subs.iter_mut() {
                        let Some((version, items)) = s.resources.get(t).cloned() else {
                            continue;
                        };
                        let wanted = |n: &str| sub.wildcard || sub.names.contains(n);
                        let mut resources = Vec::new();
                        let mut now = std::collections::BTreeSet::new();
                        for (name, any) in items.iter().filter(|(n, _)| wanted(n)) {
                            now.insert(name.clone());
                            let v = {
                                use std::hash::{Hash, Hasher};
                                let mut h = std::collections::hash_map::DefaultHasher::new();
                                any.value.hash(&mut h);
                                format!("{:016x}", h.finish())
                            };
                            if sub.held.get(name) != Some(&v) {
                                sub.held.insert(name.clone(), v.clone());
                                resources.push(
                                    envoy_types::pb::envoy::service::discovery::v3::Resource {
                                        name: name.clone(),
                                        version: v,
                                        resource: Some(any.clone()),
                                        ..Default::default()
                                    },
                                );
                            }
                        }
                        let removed: Vec<String> = sub
                            .held
                            .keys()
                            .filter(|n| !now.contains(*n))
                            .cloned()
                            .collect();
                        for n in &removed {
                            sub.held.remove(n);
                        }
                        if resources.is_empty() && removed.is_empty() && !sub.fresh {
                            continue;
                        }
                        sub.fresh = false;
                        s.nonce += 1;
                        let nonce = format!("n{}", s.nonce);
                        s.sent.push((t.clone(), version.clone(), nonce.clone()));
                        s.sent_at.push(Instant::now());
                        s.delta_sent
                            .push((t.clone(), resources.len(), removed.clone()));
                        out.push(DeltaDiscoveryResponse {
                            system_version_info: version,
                            type_url: t.clone(),
                            nonce,
                            resources,
                            removed_resources: removed,
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
}

/// The management server: runs on its own runtime; `set` replaces the
/// resources of a type (state of the world) and pushes them.
pub struct Mgmt {
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    ads: Ads,
}

impl Mgmt {
    /// Serves on `port` (0: a port the kernel picks; read `addr`).
    pub fn start(port: u16) -> Self {
        Self::start_with(port, Arc::new(Mutex::new(Shared::default())))
    }

    pub fn start_with(port: u16, shared: Arc<Mutex<Shared>>) -> Self {
        Self::start_inner(port, shared, None)
    }

    /// Serves gRPC over TLS (ALPN h2) with this server config.
    pub fn start_tls(port: u16, tls: rustls::ServerConfig) -> Self {
        Self::start_inner(port, Arc::new(Mutex::new(Shared::default())), Some(tls))
    }

    fn start_inner(
        port: u16,
        shared: Arc<Mutex<Shared>>,
        tls: Option<rustls::ServerConfig>,
    ) -> Self {
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
        // Port 0 gives the kernel's choice: the bound address is the one.
        let addr = std_listener.local_addr().unwrap();
        let ads = Ads {
            shared,
            changed: tokio::sync::watch::channel(0).0,
            kill: CancellationToken::new(),
        };
        let svc = AggregatedDiscoveryServiceServer::new(ads.clone());
        let kill = ads.kill.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            match tls {
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                    let _ = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, kill.cancelled_owned())
                        .await;
                }
                Some(mut cfg) => {
                    cfg.alpn_protocols = vec![b"h2".to_vec()];
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    let stop = kill.clone();
                    tokio::spawn(async move {
                        loop {
                            let (tcp, _) = tokio::select! {
                                _ = stop.cancelled() => return,
                                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                            };
                            let (acceptor, tx) = (acceptor.clone(), tx.clone());
                            tokio::spawn(async move {
                                // A failed handshake (wrong CA on the
                                // client) is just not served.
                                if let Ok(s) = acceptor.accept(tcp).await {
                                    let _ = tx.send(Ok::<_, std::io::Error>(TlsIo(s))).await;
                                }
                            });
                        }
                    });
                    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
                    let _ = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, kill.cancelled_owned())
                        .await;
                }
            }
        });
        Mgmt { rt, addr, ads }
    }

    /// `set`, then waits until meshgate ACKs that version (no error).
    pub fn set_acked(&self, type_url: &str, version: &str, items: Vec<(String, Any)>) {
        self.set(type_url, version, items);
        let nonce = self.wait_sent(type_url, version);
        let ack = self.wait_reply(type_url, &nonce);
        assert_eq!(ack.version_info, version, "{ack:?}");
        assert!(ack.error_detail.is_none(), "{ack:?}");
    }

    pub fn set(&self, type_url: &str, version: &str, items: Vec<(String, Any)>) {
        self.ads
            .shared
            .lock()
            .unwrap()
            .resources
            .insert(type_url.to_string(), (version.to_string(), items));
        self.ads.changed.send_modify(|v| *v += 1);
    }

    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.ads.shared.lock().unwrap().requests.clone()
    }

    /// Delta xDS: (type, resources carried, names removed) per response.
    pub fn delta_sent(&self) -> Vec<(String, usize, Vec<String>)> {
        self.ads.shared.lock().unwrap().delta_sent.clone()
    }

    /// Delta xDS: every request as received.
    pub fn delta_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.ads.shared.lock().unwrap().delta_requests.clone()
    }

    pub fn sent(&self) -> Vec<(String, String, String)> {
        self.ads.shared.lock().unwrap().sent.clone()
    }

    /// Waits for a request of `type_url` answering `nonce`.
    pub fn wait_reply(&self, type_url: &str, nonce: &str) -> DiscoveryRequest {
        crate::wait_for_within(10, &format!("a reply to {type_url} nonce {nonce}"), || {
            self.requests()
                .into_iter()
                .find(|r| r.type_url == type_url && r.response_nonce == nonce)
        })
    }

    /// The nonce of the last response of `type_url` with `version`.
    /// When the last response of `type_url` at `version` was handed to its
    /// stream, if one was.
    pub fn sent_at(&self, type_url: &str, version: &str) -> Option<Instant> {
        let s = self.ads.shared.lock().unwrap();
        s.sent
            .iter()
            .zip(&s.sent_at)
            .rev()
            .find(|(x, _)| x.0 == type_url && x.1 == version)
            .map(|(_, at)| *at)
    }

    pub fn wait_sent(&self, type_url: &str, version: &str) -> String {
        crate::wait_for_within(10, &format!("{type_url} {version} sent"), || {
            self.sent()
                .into_iter()
                .rev()
                .find(|s| s.0 == type_url && s.1 == version)
                .map(|s| s.2)
        })
    }

    /// Stops the server and ends its streams.
    pub fn stop(self) -> Arc<Mutex<Shared>> {
        self.ads.kill.cancel();
        let shared = self.ads.shared.clone();
        self.rt.shutdown_timeout(Duration::from_secs(2));
        shared
    }
}

/// A server-side TLS stream tonic can serve (tonic's own TLS feature is
/// not enabled in this workspace).
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------- resources

/// An SDS `tls_certificate` secret with inline PEM.
pub fn cert_secret(name: &str, chain_pem: &str, key_pem: &str) -> (String, Any) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
    let inline = |s: &str| {
        Some(core3::DataSource {
            specifier: Some(core3::data_source::Specifier::InlineBytes(
                s.as_bytes().to_vec(),
            )),
            ..Default::default()
        })
    };
    let s = tlsv3::Secret {
        name: name.into(),
        r#type: Some(tlsv3::secret::Type::TlsCertificate(tlsv3::TlsCertificate {
            certificate_chain: inline(chain_pem),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    };
    (name.into(), any(SECRET, &s))
}

/// `hcm_listener` terminating TLS with the certificate of SDS secret
/// `secret` (ALPN http/1.1).
pub fn tls_hcm_listener(name: &str, port: u16, rds_name: &str, secret: &str) -> (String, Any) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
    let (_, a) = hcm_listener(name, port, rds_name);
    let mut l = lds::Listener::decode(a.value.as_slice()).unwrap();
    let ctx = tlsv3::DownstreamTlsContext {
        common_tls_context: Some(tlsv3::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tlsv3::SdsSecretConfig {
                name: secret.into(),
                sds_config: Some(ads_source()),
            }],
            alpn_protocols: vec!["http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(core3::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core3::transport_socket::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            &ctx,
        ))),
    });
    (name.into(), any(LISTENER, &l))
}

pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> (String, Any) {
    let t = tcp::TcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    one_filter_listener(
        name,
        port,
        "envoy.filters.network.tcp_proxy",
        any(
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            &t,
        ),
    )
}

pub fn bootstrap(xds_port: u16) -> String {
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

/// Resources written in Envoy's own YAML/JSON form (a list, each with its
/// `@type`, as `egctl translate` or `istioctl proxy-config` print them),
/// parsed by Envoy's generated Python protos (`tests/peers/envoy_any.py`,
/// PyPI xds-protos) into what a control plane sends: (name, Any).
pub fn envoy_yaml(yaml: &str) -> Vec<(String, Any)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resources.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new("python3")
        .arg(crate::workspace().join("tests/peers/envoy_any.py"))
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "envoy_any.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let hex = r["value_hex"].as_str().unwrap();
            let value = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (
                r["name"].as_str().unwrap().to_string(),
                Any {
                    type_url: r["type_url"].as_str().unwrap().to_string(),
                    value,
                },
            )
        })
        .collect()
}

/// A static cluster `name` to `addr` with a field meshgate refuses
/// (`outlier_detection.monitors`): what NACK tests push.
pub fn cluster_with_unsupported_field(name: &str, addr: SocketAddr) -> (String, Any) {
    let bad = envoy_types::pb::envoy::config::cluster::v3::Cluster {
        name: name.into(),
        load_assignment: Some(cla_msg(name, &[(addr, 1, 0)])),
        outlier_detection: Some(
            envoy_types::pb::envoy::config::cluster::v3::OutlierDetection {
                monitors: vec![Default::default()],
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    (name.into(), any(CLUSTER, &bad))
}

/// `bootstrap` on delta xDS (`api_type: DELTA_GRPC`).
pub fn bootstrap_delta(xds_port: u16) -> String {
    bootstrap(xds_port).replace(
        "    retry_max_interval: 500ms\n",
        "    retry_max_interval: 500ms\n    api_type: DELTA_GRPC\n",
    )
}

// ------------------------------------------------------------- clients

/// One keep-alive HTTP/1.1 GET: the `x-backend`/body summary, or None if
/// the connection failed before a whole 200 response.
pub fn request(conn: &mut Option<BufReader<TcpStream>>, port: u16, path: &str) -> Option<String> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    r.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let reply = crate::read_reply(r)?;
    if reply.status != 200 {
        return None;
    }
    if reply.close {
        *conn = None;
    }
    let body = reply.body;
    Some(
        body.lines()
            .find(|l| l.starts_with("backend="))
            .map(|l| l.to_string())
            .unwrap_or(body),
    )
}

pub fn get(port: u16, path: &str) -> Option<String> {
    request(&mut None, port, path)
}

pub fn wait_for(port: u16, path: &str, want: &str) {
    let mut got = None;
    let done = crate::poll(Duration::from_secs(10), || {
        got = get(port, path);
        (got.as_deref() == Some(want)).then_some(())
    });
    assert!(done.is_some(), "got {got:?}, want {want}");
}

/// Keep-alive clients running until stopped; counts successes, failures,
/// and which backend answered.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<Mutex<HashMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, clients: usize) -> Self {
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

    pub fn seen(&self, backend: &str) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .get(&format!("backend={backend}"))
            .copied()
            .unwrap_or(0)
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn reset_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Waits until `n` more requests succeeded.
    pub fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        crate::wait_until(&format!("{n} more requests under load"), || {
            self.ok() >= target
        });
    }

    /// Waits out the requests in flight (`settle` answers), then counts
    /// the next `n` answers afresh: `seen` then shows who answered them.
    pub fn sample(&self, settle: u64, n: u64) {
        self.wait_more(settle);
        self.reset_seen();
        crate::wait_until(&format!("{n} answers under load"), || {
            self.seen.lock().unwrap().values().sum::<u64>() >= n
        });
    }

    pub fn finish(self) -> (u64, u64) {
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

/// A route configuration of `n` exact-path routes (`/r{i}`) spread over
/// `clusters` clusters named `c{j}`, then `/probe` answered directly with
/// `probe`, then `/` to `c0`: for timing how fast a big table goes live.
pub fn many_routes(name: &str, n: usize, clusters: usize, probe: &str) -> (String, Any) {
    let exact = |p: String| rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::Path(p)),
        ..Default::default()
    };
    let to = |c: String| {
        Some(rds::route::Action::Route(rds::RouteAction {
            cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(c)),
            ..Default::default()
        }))
    };
    let mut routes: Vec<rds::Route> = (0..n)
        .map(|i| rds::Route {
            r#match: Some(exact(format!("/r{i}"))),
            action: to(format!("c{}", i % clusters)),
            ..Default::default()
        })
        .collect();
    routes.push(rds::Route {
        r#match: Some(exact("/probe".into())),
        action: Some(rds::route::Action::DirectResponse(
            rds::DirectResponseAction {
                status: 200,
                body: Some(core3::DataSource {
                    specifier: Some(core3::data_source::Specifier::InlineString(probe.into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    routes.push(rds::Route {
        r#match: Some(rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: to("c0".into()),
        ..Default::default()
    });
    let r = rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.into(), any(ROUTE, &r))
}

/// meshgate on an ADS bootstrap served by a test control plane carrying
/// one cluster (named `svc-a`) and a listener `web` on a free port whose
/// route `r1` sends `/` to it. Returns the control plane (keep it alive),
/// meshgate and the listener's port once the three are applied and the
/// listener accepts.
pub fn one_cluster_gateway(cluster: (String, Any)) -> (Mgmt, crate::Meshgate, u16) {
    let port = crate::free_port();
    let mgmt = Mgmt::start(0);
    mgmt.set(CLUSTER, "c1", vec![cluster]);
    let (name, l) = hcm_listener("web", port, "r1");
    mgmt.set(LISTENER, "l1", vec![(name, l)]);
    let (rname, r) = route_config("r1", &[("svc-a", 1)]);
    mgmt.set(ROUTE, "r1", vec![(rname, r)]);
    let mg = crate::Meshgate::start(&bootstrap(mgmt.addr.port()));
    crate::wait_until_within(20, "the xDS config applied", || {
        mg.config_dump()["dynamic"]["version"]
            .as_str()
            .is_some_and(|v| v.contains("lds=l1") && v.contains("rds=r1") && v.contains("cds=c1"))
    });
    crate::wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    (mgmt, mg, port)
}
