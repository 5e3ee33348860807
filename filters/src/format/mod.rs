//! Envoy's substitution formats and access-log filters, shared by custom
//! local replies (`local_reply_config`, filters/src/local_reply.rs) and
//! access logs (filters/src/access_log): one parser of command operators
//! (`%REQ(X?Y):N%`, `%START_TIME(%Y...)%`, `%DURATION%`...), one text and
//! JSON renderer, one compiler of `config.accesslog.v3.AccessLogFilter`,
//! and the response flags (Envoy's `UH`, `UF`, `NR`...) derived from why
//! a stream ended. Everything is compiled once per listener; an operator
//! or filter meshgate cannot evaluate is refused by name when built.

mod time;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use meshgate_core::BuildError;
use meshgate_core::config::local_reply as cfg;
use meshgate_core::router::HeaderMatcher;
use meshgate_core::stream::StreamInfo;
use serde_json::Value;
use std::time::Duration;

fn e(path: &str, msg: impl std::fmt::Display) -> BuildError {
    BuildError::new(path, msg)
}

// ---------------------------------------------------------------- flags

/// Envoy's response flags, in the order Envoy prints them (short, long).
pub(crate) const FLAGS: [(&str, &str); 30] = [
    ("LH", "FailedLocalHealthCheck"),
    ("UH", "NoHealthyUpstream"),
    ("UT", "UpstreamRequestTimeout"),
    ("LR", "LocalReset"),
    ("UR", "UpstreamRemoteReset"),
    ("UF", "UpstreamConnectionFailure"),
    ("UC", "UpstreamConnectionTermination"),
    ("UO", "UpstreamOverflow"),
    ("NR", "NoRouteFound"),
    ("DI", "DelayInjected"),
    ("FI", "FaultInjected"),
    ("RL", "RateLimited"),
    ("UAEX", "UnauthorizedExternalService"),
    ("RLSE", "RateLimitServiceError"),
    ("DC", "DownstreamConnectionTermination"),
    ("URX", "UpstreamRetryLimitExceeded"),
    ("SI", "StreamIdleTimeout"),
    ("IH", "InvalidEnvoyRequestHeaders"),
    ("DPE", "DownstreamProtocolError"),
    ("UMSDR", "UpstreamMaxStreamDurationReached"),
    ("RFCF", "ResponseFromCacheFilter"),
    ("NFCF", "NoFilterConfigFound"),
    ("DT", "DurationTimeout"),
    ("UPE", "UpstreamProtocolError"),
    ("NC", "NoClusterFound"),
    ("OM", "OverloadManager"),
    ("DF", "DnsResolutionFailed"),
    ("DO", "DropOverLoad"),
    ("DR", "DownstreamRemoteReset"),
    ("UDO", "UnconditionalDropOverload"),
];

/// A set of response flags (bit `i` is `FLAGS[i]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u32);

impl Flags {
    pub(crate) fn bit(short: &str) -> Option<u32> {
        FLAGS.iter().position(|(s, _)| *s == short).map(|i| 1 << i)
    }

    pub(crate) fn with(mut self, short: &str) -> Self {
        self.0 |= Self::bit(short).unwrap_or(0);
        self
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags of a stream: from why meshgate answered itself
    /// (`StreamInfo::local_reply`, the label of a `LocalReason`), which
    /// filter refused it (`denied_by`), and its upstream tries.
    pub(crate) fn of(info: &StreamInfo, status: u16) -> Self {
        let mut f = Flags::default();
        if let Some(label) = info.local_reply {
            f = f.with(Self::short_of(label));
        }
        match info.denied_by {
            Some("ext_authz") => f = f.with("UAEX"),
            // The rate limit service failed and the filter denies then.
            Some("ratelimit") if info.local_reply != Some("rate_limited") => f = f.with("RLSE"),
            Some("fault") => f = f.with("FI"),
            _ => {}
        }
        // Retries were made and the stream still ended on an upstream
        // failure: the retry budget ran out.
        if info.upstream_attempts > 1 && status >= 500 {
            f = f.with("URX");
        }
        f
    }

    /// The flags of one upstream try (`upstream_log`): from its failure.
    pub(crate) fn of_try(t: &meshgate_core::stream::UpstreamTry) -> Self {
        let f = match t.failure {
            Some(label) => Flags::default().with(Self::short_of(label)),
            None => Flags::default(),
        };
        if t.retry_limit_exceeded {
            f.with("URX")
        } else {
            f
        }
    }

    /// The short flag of a `LocalReason` label (empty: none).
    fn short_of(label: &str) -> &'static str {
        match label {
            "no_route" => "NR",
            "cluster_not_found" => "NC",
            "no_healthy_upstream" => "UH",
            "upstream_connect_failure" => "UF",
            // Envoy's connection termination and remote (stream) reset.
            "upstream_reset" => "UC",
            "upstream_remote_reset" => "UR",
            "upstream_timeout" => "UT",
            "upstream_protocol_error" => "UPE",
            "overflow" => "UO",
            "bad_request" | "headers_too_large" => "DPE",
            "stream_idle_timeout" => "SI",
            "max_duration_timeout" => "DT",
            "upstream_max_stream_duration" => "UMSDR",
            "rate_limited" => "RL",
            "drop_overload" => "DO",
            "overloaded" | "overload" => "OM",
            _ => "",
        }
    }

    pub(crate) fn has_any(self, mask: u32) -> bool {
        self.0 & mask != 0
    }

    pub(crate) fn render(self, long: bool) -> Option<String> {
        if self.0 == 0 {
            return None;
        }
        let mut out = String::new();
        for (i, (s, l)) in FLAGS.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(if long { l } else { s });
            }
        }
        Some(out)
    }
}

// ------------------------------------------------------------- context

/// The request line (pseudo-headers are not in a `HeaderMap`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReqHead {
    pub method: Option<Method>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
}

impl ReqHead {
    pub(crate) fn of(req: &meshgate_core::stream::Request) -> Self {
        Self {
            method: Some(req.method().clone()),
            path: req.uri().path_and_query().map(|p| p.as_str().to_string()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                }),
            scheme: req.uri().scheme_str().map(str::to_string),
        }
    }
}

/// Times since the stream started (Envoy's stream timing).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    /// The last request byte came in.
    pub request_done: Option<Duration>,
    /// The response head was ready (came from the upstream, or meshgate's
    /// own answer was made).
    pub response_head: Option<Duration>,
    /// The last response byte went out (or the stream ended).
    pub done: Option<Duration>,
}

/// What the operators and filters read.
pub(crate) struct Ctx<'a> {
    pub info: &'a StreamInfo,
    pub head: &'a ReqHead,
    pub req: &'a HeaderMap,
    pub resp: &'a HeaderMap,
    pub trailers: Option<&'a HeaderMap>,
    /// The response status (`None`: no response, e.g. an L4 connection).
    pub status: Option<u16>,
    /// `%LOCAL_REPLY_BODY%`.
    pub body: &'a str,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: Option<&'a str>,
    pub flags: Flags,
    pub version: Version,
    pub timing: Timing,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The upstream try an `upstream_log` entry is about: the upstream
    /// operators read it instead of the stream's last try.
    pub attempt: Option<&'a meshgate_core::stream::UpstreamTry>,
}

static EMPTY: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
static NO_HEAD: std::sync::LazyLock<ReqHead> = std::sync::LazyLock::new(ReqHead::default);

impl<'a> Ctx<'a> {
    /// A context with nothing but the stream info.
    pub(crate) fn new(info: &'a StreamInfo) -> Self {
        Self {
            info,
            head: &NO_HEAD,
            req: &EMPTY,
            resp: &EMPTY,
            trailers: None,
            status: None,
            body: "",
            details: None,
            flags: Flags::default(),
            version: Version::HTTP_11,
            timing: Timing::default(),
            bytes_received: 0,
            bytes_sent: 0,
            attempt: None,
        }
    }

    /// The gRPC status: `grpc-status` of the trailers, else of the
    /// headers (trailers-only), else mapped from the HTTP status.
    pub(crate) fn grpc_status(&self) -> Option<u32> {
        let v = self
            .trailers
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.resp.get("grpc-status"));
        match v {
            Some(v) => v.to_str().ok()?.trim().parse().ok(),
            None => Some(http_to_grpc(self.status?)),
        }
    }
}

/// gRPC's HTTP to gRPC status mapping (grpc/doc/http-grpc-status-mapping.md).
pub(crate) fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

// ----------------------------------------------------------- operators

/// A request or response field an operator reads.
#[derive(Debug, PartialEq)]
pub(crate) enum Field {
    Header(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Op {
    LocalReplyBody,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    Protocol,
    StartTime(Option<time::Strftime>),
    RouteName,
    UpstreamCluster,
    UpstreamHost,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamLocalPort,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    RequestedServerName,
    ConnectionId,
    Hostname,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    BytesReceived,
    BytesSent,
    DownstreamTlsVersion,
    DownstreamTlsCipher,
    DownstreamPeerSubject,
    DownstreamPeerUriSan,
    DownstreamPeerDnsSan,
    GrpcStatus,
    GrpcStatusNumber,
    DynamicMetadata(String, Vec<String>),
    /// `%CLUSTER_METADATA(NAMESPACE:KEY*)%`: the upstream cluster's.
    ClusterMetadata(String, Vec<String>),
    Req(Field, Option<Field>),
    Resp(Field, Option<Field>),
    Trailer(Field, Option<Field>),
}

/// The operators meshgate implements (for the refusal message).
const KNOWN: &str = "START_TIME, REQ, RESP, TRAILER, PROTOCOL, RESPONSE_CODE, RESPONSE_CODE_DETAILS, RESPONSE_FLAGS, RESPONSE_FLAGS_LONG, DURATION, REQUEST_DURATION, RESPONSE_DURATION, RESPONSE_TX_DURATION, BYTES_RECEIVED, BYTES_SENT, UPSTREAM_HOST, UPSTREAM_LOCAL_ADDRESS, UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, UPSTREAM_LOCAL_PORT, UPSTREAM_CLUSTER, UPSTREAM_TRANSPORT_FAILURE_REASON, UPSTREAM_REQUEST_ATTEMPT_COUNT, DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_DIRECT_REMOTE_ADDRESS, DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_PORT, REQUESTED_SERVER_NAME, ROUTE_NAME, CONNECTION_ID, HOSTNAME, DYNAMIC_METADATA, CLUSTER_METADATA, DOWNSTREAM_TLS_VERSION, DOWNSTREAM_TLS_CIPHER, DOWNSTREAM_PEER_SUBJECT, DOWNSTREAM_PEER_URI_SAN, DOWNSTREAM_PEER_DNS_SAN, GRPC_STATUS, GRPC_STATUS_NUMBER, LOCAL_REPLY_BODY";

fn ms(d: Option<Duration>) -> Option<String> {
    d.map(|d| d.as_millis().to_string())
}

impl Ctx<'_> {
    fn field(&self, h: &HeaderMap, f: &Field, request: bool) -> Option<String> {
        let s = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        match f {
            Field::Header(n) => h.get(n).map(s),
            Field::Method if request => self.head.method.as_ref().map(|m| m.to_string()),
            Field::Path if request => self.head.path.clone(),
            Field::Authority if request => self.head.authority.clone(),
            Field::Scheme if request => self.head.scheme.clone(),
            _ => None,
        }
    }

    fn either(&self, h: &HeaderMap, a: &Field, b: &Option<Field>, request: bool) -> Option<String> {
        self.field(h, a, request)
            .or_else(|| b.as_ref().and_then(|b| self.field(h, b, request)))
    }

    /// The upstream connection's local address: the try's for an
    /// `upstream_log` entry, else the stream's.
    fn upstream_local(&self) -> Option<std::net::SocketAddr> {
        self.attempt
            .map_or(self.info.upstream_local_address, |a| a.local_address)
    }

    /// An operator's value; `None` is unavailable (`-` in text).
    pub(crate) fn value(&self, op: &Op) -> Option<String> {
        let info = self.info;
        let c = &info.connection;
        match op {
            Op::LocalReplyBody => Some(self.body.to_string()),
            Op::ResponseCode => Some(self.status.unwrap_or(0).to_string()),
            Op::ResponseCodeDetails => self.details.map(str::to_string),
            Op::ResponseFlags => self.flags.render(false),
            Op::ResponseFlagsLong => self.flags.render(true),
            Op::Protocol => Some(match (info.traits.response_headers, self.version) {
                (true, Version::HTTP_10) => "HTTP/1.0".into(),
                (true, Version::HTTP_11) => "HTTP/1.1".into(),
                (true, Version::HTTP_2) => "HTTP/2".into(),
                (true, Version::HTTP_3) => "HTTP/3".into(),
                _ => info.protocol.to_string(),
            }),
            Op::StartTime(f) => Some(time::start_time(info, f.as_ref())),
            Op::RouteName => info.route.map(str::to_string),
            Op::UpstreamCluster => self
                .attempt
                .map_or(info.upstream_cluster, |a| a.cluster)
                .map(str::to_string),
            Op::UpstreamHost => self
                .attempt
                .map_or(info.upstream_host, |a| Some(a.host))
                .map(|a| a.to_string()),
            Op::UpstreamLocalAddress => self.upstream_local().map(|a| a.to_string()),
            Op::UpstreamLocalAddressWithoutPort => {
                self.upstream_local().map(|a| a.ip().to_string())
            }
            Op::UpstreamLocalPort => self.upstream_local().map(|a| a.port().to_string()),
            Op::UpstreamTransportFailureReason => {
                match self.attempt.map_or(info.local_reply, |a| a.failure) {
                    Some(
                        l @ ("upstream_connect_failure"
                        | "upstream_reset"
                        | "upstream_remote_reset"
                        | "upstream_protocol_error"),
                    ) => Some(l.to_string()),
                    _ => None,
                }
            }
            Op::UpstreamRequestAttemptCount => Some(
                self.attempt
                    .map_or(info.upstream_attempts, |a| a.number)
                    .to_string(),
            ),
            Op::DownstreamRemoteAddress => Some(
                std::net::SocketAddr::new(info.downstream_remote_address, c.peer_addr.port())
                    .to_string(),
            ),
            Op::DownstreamRemoteAddressWithoutPort => {
                Some(info.downstream_remote_address.to_string())
            }
            Op::DownstreamDirectRemoteAddress => Some(c.peer_addr.to_string()),
            Op::DownstreamDirectRemoteAddressWithoutPort => Some(c.peer_addr.ip().to_string()),
            Op::DownstreamLocalAddress => Some(c.local_addr.to_string()),
            Op::DownstreamLocalAddressWithoutPort => Some(c.local_addr.ip().to_string()),
            Op::DownstreamLocalPort => Some(c.local_addr.port().to_string()),
            Op::RequestedServerName => c
                .server_name
                .clone()
                .or_else(|| c.tls.as_ref().and_then(|t| t.server_name.clone())),
            Op::ConnectionId => Some(c.id.to_string()),
            Op::Hostname => Some(hostname().to_string()),
            Op::Duration => ms(self.timing.done),
            Op::RequestDuration => ms(self.timing.request_done),
            Op::ResponseDuration => ms(self.timing.response_head),
            Op::ResponseTxDuration => match (self.timing.response_head, self.timing.done) {
                (Some(h), Some(d)) => ms(Some(d.saturating_sub(h))),
                _ => None,
            },
            Op::BytesReceived => Some(self.bytes_received.to_string()),
            Op::BytesSent => Some(self.bytes_sent.to_string()),
            Op::DownstreamTlsVersion => c.tls.as_ref().map(|t| t.version.replace('_', ".")),
            Op::DownstreamTlsCipher => c.tls.as_ref().map(|t| t.cipher_suite.clone()),
            Op::DownstreamPeerSubject => c
                .tls
                .as_ref()
                .and_then(|t| t.peer.as_ref())
                .map(|p| p.subject.clone()),
            Op::DownstreamPeerUriSan => c
                .tls
                .as_ref()
                .and_then(|t| t.peer.as_ref())
                .filter(|p| !p.uri_sans.is_empty())
                .map(|p| p.uri_sans.join(",")),
            Op::DownstreamPeerDnsSan => c
                .tls
                .as_ref()
                .and_then(|t| t.peer.as_ref())
                .filter(|p| !p.dns_sans.is_empty())
                .map(|p| p.dns_sans.join(",")),
            Op::GrpcStatus => self.grpc_status().map(|s| grpc_name(s).to_string()),
            Op::GrpcStatusNumber => self.grpc_status().map(|s| s.to_string()),
            Op::DynamicMetadata(..) | Op::ClusterMetadata(..) => {
                self.metadata(op).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }
            Op::Req(a, b) => self.either(self.req, a, b, true),
            Op::Resp(a, b) => self.either(self.resp, a, b, false),
            Op::Trailer(a, b) => self.trailers.and_then(|t| self.either(t, a, b, false)),
        }
    }

    fn metadata(&self, op: &Op) -> Option<&Value> {
        let mut v = match op {
            Op::DynamicMetadata(ns, _) => self.info.metadata()?.as_map().get(ns)?,
            Op::ClusterMetadata(ns, _) => self.info.upstream_cluster_metadata.as_ref()?.get(ns)?,
            _ => return None,
        };
        let (Op::DynamicMetadata(_, path) | Op::ClusterMetadata(_, path)) = op else {
            return None;
        };
        for k in path {
            v = v.as_object()?.get(k)?;
        }
        Some(v)
    }

    /// A lone operator in a JSON format keeps its type: numbers for codes,
    /// durations and sizes, the metadata value as it is.
    fn typed(&self, op: &Op) -> Option<Option<Value>> {
        let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok()).map(Value::from);
        Some(match op {
            Op::ResponseCode
            | Op::Duration
            | Op::RequestDuration
            | Op::ResponseDuration
            | Op::ResponseTxDuration
            | Op::BytesReceived
            | Op::BytesSent
            | Op::UpstreamRequestAttemptCount
            | Op::ConnectionId
            | Op::DownstreamLocalPort
            | Op::GrpcStatusNumber => num(self.value(op)),
            Op::DynamicMetadata(..) | Op::ClusterMetadata(..) => self.metadata(op).cloned(),
            _ => return None,
        })
    }
}

/// gRPC status code names as Envoy prints them.
fn grpc_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// The status names of `GrpcStatusFilter` (Envoy's enum, upper case).
pub(crate) fn grpc_status_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// This host's name, read once (`/proc/sys/kernel/hostname`, then
/// `$HOSTNAME`).
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

// ------------------------------------------------------------ templates

#[derive(Debug, PartialEq)]
pub(crate) struct Template(pub(crate) Vec<Piece>);

#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    Lit(String),
    Op(Op, Option<usize>),
}

fn truncate(mut s: String, max: Option<usize>) -> String {
    if let Some(n) = max
        && s.len() > n
    {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Template {
    /// Parses Envoy's format string: `%NAME%`, `%NAME(ARG)%`, with an
    /// optional `:MAX` length; a `%` that starts no operator is literal.
    /// An operator meshgate does not implement is refused by name.
    pub(crate) fn parse(s: &str, path: &str) -> Result<Self, BuildError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match operator_end(after) {
                Some(j) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    let (op, max) = parse_operator(&after[..j], path)?;
                    pieces.push(Piece::Op(op, max));
                    rest = &after[j + 1..];
                }
                None => {
                    lit.push('%');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self(pieces))
    }

    pub(crate) fn reads_request(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Op(Op::Req(..), _)))
    }

    /// Whether it reads the upstream connection's local address (the
    /// upstream codec then records it: `WantUpstreamLocalAddress`).
    pub(crate) fn reads_upstream_local(&self) -> bool {
        self.0.iter().any(|p| {
            matches!(
                p,
                Piece::Op(
                    Op::UpstreamLocalAddress
                        | Op::UpstreamLocalAddressWithoutPort
                        | Op::UpstreamLocalPort,
                    _
                )
            )
        })
    }

    pub(crate) fn render(&self, ctx: &Ctx<'_>, omit: bool) -> String {
        let mut out = String::new();
        self.render_into(ctx, omit, &mut out);
        out
    }

    fn render_into(&self, ctx: &Ctx<'_>, omit: bool, out: &mut String) {
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Op(op, max) => match ctx.value(op) {
                    Some(v) => out.push_str(&truncate(v, *max)),
                    None if omit => {}
                    None => out.push('-'),
                },
            }
        }
    }
}

/// Where the operator starting `after` (the text past a `%`) ends: the
/// index of its closing `%`. An argument may itself hold `%`
/// (`%START_TIME(%s)%`), so it runs to its `)`.
fn operator_end(after: &str) -> Option<usize> {
    let name = after
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name > 0 && after[name..].starts_with('(') {
        let close = name + after[name..].find(')')? + 1;
        let tail = &after[close..];
        let digits = match tail.strip_prefix(':') {
            Some(d) => 1 + d.bytes().take_while(u8::is_ascii_digit).count(),
            None => 0,
        };
        return tail[digits..].starts_with('%').then_some(close + digits);
    }
    after
        .find('%')
        .filter(|j| looks_like_operator(&after[..*j]))
}

/// `NAME`, `NAME(ARG)` or either with `:DIGITS` (Envoy's command syntax).
fn looks_like_operator(t: &str) -> bool {
    let (head, _) = match t.rsplit_once(':') {
        Some((h, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (h, n),
        _ => (t, ""),
    };
    let name = match head.find('(') {
        Some(i) if head.ends_with(')') => &head[..i],
        Some(_) => return false,
        None => head,
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_field(h: &str, name: &str, path: &str) -> Result<Field, BuildError> {
    let h = h.trim().to_ascii_lowercase();
    Ok(match h.as_str() {
        ":method" => Field::Method,
        ":path" => Field::Path,
        ":authority" => Field::Authority,
        ":scheme" => Field::Scheme,
        _ => Field::Header(
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| e(path, format!("%{name}%: invalid header name '{h}'")))?,
        ),
    })
}

fn parse_operator(t: &str, path: &str) -> Result<(Op, Option<usize>), BuildError> {
    let (head, max) = match t.rsplit_once(':') {
        Some((h, n))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && h.ends_with(')') =>
        {
            (h, n.parse().ok())
        }
        Some((h, n))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !h.contains('(') =>
        {
            (h, n.parse().ok())
        }
        _ => (t, None),
    };
    let (name, arg) = match head.find('(') {
        Some(i) => (&head[..i], Some(&head[i + 1..head.len() - 1])),
        None => (head, None),
    };
    let no_arg = |op: Op| -> Result<Op, BuildError> {
        match arg {
            None => Ok(op),
            Some(_) => Err(e(path, format!("%{name}% takes no argument"))),
        }
    };
    let fields = |a: Option<&str>| -> Result<(Field, Option<Field>), BuildError> {
        let a = a.ok_or_else(|| e(path, format!("%{name}(HEADER)% needs a header name")))?;
        let mut parts = a.splitn(2, '?');
        let first = parse_field(parts.next().unwrap_or(""), name, path)?;
        let alt = parts
            .next()
            .map(|h| parse_field(h, name, path))
            .transpose()?;
        Ok((first, alt))
    };
    let op = match name {
        "LOCAL_REPLY_BODY" => no_arg(Op::LocalReplyBody)?,
        "RESPONSE_CODE" => no_arg(Op::ResponseCode)?,
        "RESPONSE_CODE_DETAILS" => no_arg(Op::ResponseCodeDetails)?,
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags)?,
        "RESPONSE_FLAGS_LONG" => no_arg(Op::ResponseFlagsLong)?,
        "PROTOCOL" => no_arg(Op::Protocol)?,
        "START_TIME" => match arg {
            None | Some("") => Op::StartTime(None),
            Some(f) => Op::StartTime(Some(time::Strftime::parse(f, path)?)),
        },
        "ROUTE_NAME" => no_arg(Op::RouteName)?,
        "UPSTREAM_CLUSTER" => no_arg(Op::UpstreamCluster)?,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => no_arg(Op::UpstreamHost)?,
        "UPSTREAM_LOCAL_ADDRESS" => no_arg(Op::UpstreamLocalAddress)?,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::UpstreamLocalAddressWithoutPort)?,
        "UPSTREAM_LOCAL_PORT" => no_arg(Op::UpstreamLocalPort)?,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Op::UpstreamTransportFailureReason)?,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(Op::UpstreamRequestAttemptCount)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Op::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamRemoteAddressWithoutPort)?,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => no_arg(Op::DownstreamDirectRemoteAddress)?,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Op::DownstreamDirectRemoteAddressWithoutPort)?
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamLocalAddressWithoutPort)?,
        "DOWNSTREAM_LOCAL_PORT" => no_arg(Op::DownstreamLocalPort)?,
        "REQUESTED_SERVER_NAME" => no_arg(Op::RequestedServerName)?,
        "CONNECTION_ID" => no_arg(Op::ConnectionId)?,
        "HOSTNAME" => no_arg(Op::Hostname)?,
        "DURATION" => no_arg(Op::Duration)?,
        "REQUEST_DURATION" => no_arg(Op::RequestDuration)?,
        "RESPONSE_DURATION" => no_arg(Op::ResponseDuration)?,
        "RESPONSE_TX_DURATION" => no_arg(Op::ResponseTxDuration)?,
        "BYTES_RECEIVED" => no_arg(Op::BytesReceived)?,
        "BYTES_SENT" => no_arg(Op::BytesSent)?,
        "DOWNSTREAM_TLS_VERSION" => no_arg(Op::DownstreamTlsVersion)?,
        "DOWNSTREAM_TLS_CIPHER" => no_arg(Op::DownstreamTlsCipher)?,
        "DOWNSTREAM_PEER_SUBJECT" => no_arg(Op::DownstreamPeerSubject)?,
        "DOWNSTREAM_PEER_URI_SAN" => no_arg(Op::DownstreamPeerUriSan)?,
        "DOWNSTREAM_PEER_DNS_SAN" => no_arg(Op::DownstreamPeerDnsSan)?,
        "GRPC_STATUS" => no_arg(Op::GrpcStatus)?,
        "GRPC_STATUS_NUMBER" => no_arg(Op::GrpcStatusNumber)?,
        "DYNAMIC_METADATA" | "CLUSTER_METADATA" => {
            let a = arg.unwrap_or("");
            let mut parts = a.split(':');
            let ns = parts.next().unwrap_or("").trim();
            if ns.is_empty() {
                return Err(e(
                    path,
                    format!("%{name}(NAMESPACE:KEY*)% needs a namespace"),
                ));
            }
            let (ns, keys) = (ns.to_string(), parts.map(str::to_string).collect());
            if name == "CLUSTER_METADATA" {
                Op::ClusterMetadata(ns, keys)
            } else {
                Op::DynamicMetadata(ns, keys)
            }
        }
        "REQ" | "REQUEST_HEADER" => {
            let (a, b) = fields(arg)?;
            Op::Req(a, b)
        }
        "RESP" | "RESPONSE_HEADER" => {
            let (a, b) = fields(arg)?;
            Op::Resp(a, b)
        }
        "TRAILER" | "RESPONSE_TRAILER" => {
            let (a, b) = fields(arg)?;
            Op::Trailer(a, b)
        }
        "FILTER_STATE" => {
            return Err(e(
                path,
                "%FILTER_STATE% is not supported: meshgate's filters publish what they learn as dynamic metadata (use %DYNAMIC_METADATA(NAMESPACE:KEY)%)",
            ));
        }
        other => {
            return Err(e(
                path,
                format!("command operator %{other}% is not supported (supported: {KNOWN})"),
            ));
        }
    };
    Ok((op, max))
}

// -------------------------------------------------------------- formats

pub(crate) struct Format {
    kind: FormatKind,
    pub(crate) content_type: HeaderValue,
    omit_empty: bool,
}

enum FormatKind {
    Text(Template),
    /// `typed`: lone operators keep their JSON type (Envoy's
    /// `typed_json_format` and `log_format.json_format`); otherwise every
    /// value is a string (the older `json_format` of `FileAccessLog`).
    Json(Vec<(String, JsonTemplate)>, bool),
}

enum JsonTemplate {
    Str(Template),
    Obj(Vec<(String, JsonTemplate)>),
    Other(Value),
}

/// Envoy's default access log format.
pub(crate) const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

impl Format {
    /// A text format (a string of operators).
    pub(crate) fn text(s: &str, path: &str) -> Result<Self, BuildError> {
        Ok(Format {
            kind: FormatKind::Text(Template::parse(s, path)?),
            content_type: HeaderValue::from_static("text/plain"),
            omit_empty: false,
        })
    }

    /// A JSON format from a map of keys to operators.
    pub(crate) fn json(
        m: &serde_json::Map<String, Value>,
        typed: bool,
        omit_empty: bool,
        path: &str,
    ) -> Result<Self, BuildError> {
        Ok(Format {
            kind: FormatKind::Json(json_templates(m.iter(), path)?, typed),
            content_type: HeaderValue::from_static("application/json"),
            omit_empty,
        })
    }

    /// Envoy's `SubstitutionFormatString`.
    pub(crate) fn build(f: &cfg::SubstitutionFormatString, path: &str) -> Result<Self, BuildError> {
        let set = [
            f.text_format.is_some(),
            f.text_format_source.is_some(),
            f.json_format.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(e(
                path,
                "set exactly one of text_format, text_format_source, json_format",
            ));
        }
        let mut out = if let Some(t) = &f.text_format {
            Format::text(t, &format!("{path}.text_format"))?
        } else if let Some(t) = &f.text_format_source {
            Format::text(
                &t.inline_string,
                &format!("{path}.text_format_source.inline_string"),
            )?
        } else {
            let empty = serde_json::Map::new();
            let m = f.json_format.as_ref().unwrap_or(&empty);
            Format::json(m, true, false, &format!("{path}.json_format"))?
        };
        out.omit_empty = f.omit_empty_values;
        if let Some(ct) = &f.content_type {
            out.content_type = HeaderValue::from_str(ct)
                .map_err(|_| e(&format!("{path}.content_type"), "invalid header value"))?;
        }
        Ok(out)
    }

    pub(crate) fn reads_request(&self) -> bool {
        match &self.kind {
            FormatKind::Text(t) => t.reads_request(),
            FormatKind::Json(l, _) => l.iter().any(|(_, t)| t.reads_request()),
        }
    }

    pub(crate) fn reads_upstream_local(&self) -> bool {
        match &self.kind {
            FormatKind::Text(t) => t.reads_upstream_local(),
            FormatKind::Json(l, _) => l.iter().any(|(_, t)| t.reads_upstream_local()),
        }
    }

    /// The rendered text; a JSON format ends with a newline, as Envoy's.
    pub(crate) fn render(&self, ctx: &Ctx<'_>) -> String {
        match &self.kind {
            FormatKind::Text(t) => t.render(ctx, self.omit_empty),
            FormatKind::Json(l, typed) => {
                let mut s = Value::Object(render_obj(l, ctx, self.omit_empty, *typed)).to_string();
                s.push('\n');
                s
            }
        }
    }
}

fn json_templates<'a>(
    m: impl Iterator<Item = (&'a String, &'a Value)>,
    path: &str,
) -> Result<Vec<(String, JsonTemplate)>, BuildError> {
    let mut out = Vec::new();
    for (k, v) in m {
        let p = format!("{path}.{k}");
        let t = match v {
            Value::String(s) => JsonTemplate::Str(Template::parse(s, &p)?),
            Value::Object(o) => JsonTemplate::Obj(json_templates(o.iter(), &p)?),
            Value::Array(_) => return Err(e(&p, "lists are not supported in json_format")),
            other => JsonTemplate::Other(other.clone()),
        };
        out.push((k.clone(), t));
    }
    Ok(out)
}

impl JsonTemplate {
    fn reads_request(&self) -> bool {
        match self {
            JsonTemplate::Str(t) => t.reads_request(),
            JsonTemplate::Obj(l) => l.iter().any(|(_, t)| t.reads_request()),
            JsonTemplate::Other(_) => false,
        }
    }

    fn reads_upstream_local(&self) -> bool {
        match self {
            JsonTemplate::Str(t) => t.reads_upstream_local(),
            JsonTemplate::Obj(l) => l.iter().any(|(_, t)| t.reads_upstream_local()),
            JsonTemplate::Other(_) => false,
        }
    }

    /// `None`: the value is unavailable (omitted with `omit_empty_values`).
    fn render(&self, ctx: &Ctx<'_>, omit: bool, typed: bool) -> Option<Value> {
        match self {
            JsonTemplate::Other(v) => Some(v.clone()),
            JsonTemplate::Obj(l) => Some(Value::Object(render_obj(l, ctx, omit, typed))),
            // A lone operator is null when unavailable, and keeps its
            // type (a number for the code) in a typed format.
            JsonTemplate::Str(Template(p)) if p.len() == 1 && matches!(p[0], Piece::Op(..)) => {
                let Piece::Op(op, max) = &p[0] else {
                    return None;
                };
                let v = match ctx.typed(op).filter(|_| typed) {
                    Some(v) => v,
                    None => ctx.value(op).map(|s| Value::String(truncate(s, *max))),
                };
                match v {
                    Some(v) => Some(v),
                    None if omit => None,
                    None => Some(Value::Null),
                }
            }
            JsonTemplate::Str(t) => Some(Value::String(t.render(ctx, omit))),
        }
    }
}

fn render_obj(
    l: &[(String, JsonTemplate)],
    ctx: &Ctx<'_>,
    omit: bool,
    typed: bool,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, t) in l {
        if let Some(v) = t.render(ctx, omit, typed) {
            m.insert(k.clone(), v);
        }
    }
    m
}

// -------------------------------------------------------------- filters

/// A compiled `config.accesslog.v3.AccessLogFilter`.
pub(crate) enum Filter {
    Status(cfg::ComparisonOp, u32),
    Duration(cfg::ComparisonOp, u32),
    Header(HeaderMatcher),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Any,
    Flags(u32),
    Traceable,
    /// Sampled: this share of a million, by `x-request-id` unless
    /// independent.
    Runtime(u32, bool),
    Grpc(Vec<u32>, bool),
    Metadata(crate::rbac::MetadataMatch, bool),
}

fn compare(op: cfg::ComparisonOp, s: u32, v: u32) -> bool {
    match op {
        cfg::ComparisonOp::Eq => s == v,
        cfg::ComparisonOp::Ge => s >= v,
        cfg::ComparisonOp::Le => s <= v,
        cfg::ComparisonOp::Ne => s != v,
    }
}

impl Filter {
    /// Compiles the filter; `reads` is set when it reads request headers.
    pub(crate) fn build(
        f: &cfg::AccessLogFilter,
        path: &str,
        reads: &mut bool,
    ) -> Result<Filter, BuildError> {
        let set = [
            f.status_code_filter.is_some(),
            f.duration_filter.is_some(),
            f.header_filter.is_some(),
            f.and_filter.is_some(),
            f.or_filter.is_some(),
            f.not_health_check_filter.is_some(),
            f.response_flag_filter.is_some(),
            f.traceable_filter.is_some(),
            f.runtime_filter.is_some(),
            f.grpc_status_filter.is_some(),
            f.metadata_filter.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(e(
                path,
                "set exactly one of status_code_filter, duration_filter, header_filter, and_filter, or_filter, not_health_check_filter, response_flag_filter, traceable_filter, runtime_filter, grpc_status_filter, metadata_filter",
            ));
        }
        if let Some(s) = &f.status_code_filter {
            return Ok(Filter::Status(
                s.comparison.op,
                s.comparison.value.default_value,
            ));
        }
        if let Some(s) = &f.duration_filter {
            return Ok(Filter::Duration(
                s.comparison.op,
                s.comparison.value.default_value,
            ));
        }
        if let Some(h) = &f.header_filter {
            *reads = true;
            let m = HeaderMatcher::build(&h.header).map_err(|(field, msg)| {
                e(
                    &meshgate_core::error::join_path(
                        &format!("{path}.header_filter.header"),
                        field,
                    ),
                    msg,
                )
            })?;
            return Ok(Filter::Header(m));
        }
        let list = |l: &cfg::FilterList,
                    name: &str,
                    reads: &mut bool|
         -> Result<Vec<Filter>, BuildError> {
            if l.filters.len() < 2 {
                return Err(e(
                    &format!("{path}.{name}.filters"),
                    "needs at least two filters",
                ));
            }
            l.filters
                .iter()
                .enumerate()
                .map(|(i, f)| Filter::build(f, &format!("{path}.{name}.filters[{i}]"), reads))
                .collect()
        };
        if let Some(l) = &f.and_filter {
            return Ok(Filter::And(list(l, "and_filter", reads)?));
        }
        if let Some(l) = &f.or_filter {
            return Ok(Filter::Or(list(l, "or_filter", reads)?));
        }
        if let Some(r) = &f.response_flag_filter {
            let mut mask = 0;
            for (i, name) in r.flags.iter().enumerate() {
                match Flags::bit(name) {
                    Some(b) => mask |= b,
                    None => {
                        return Err(e(
                            &format!("{path}.response_flag_filter.flags[{i}]"),
                            format!("unknown response flag '{name}'"),
                        ));
                    }
                }
            }
            return Ok(Filter::Flags(mask));
        }
        if f.traceable_filter.is_some() {
            *reads = true;
            return Ok(Filter::Traceable);
        }
        if let Some(r) = &f.runtime_filter {
            let per_million = match &r.percent_sampled {
                // Envoy: the runtime key's default is 0% when unset.
                None => 0,
                Some(s) => s.per_million(),
            };
            *reads |= !r.use_independent_randomness;
            return Ok(Filter::Runtime(per_million, r.use_independent_randomness));
        }
        if let Some(g) = &f.grpc_status_filter {
            let mut codes = Vec::new();
            for (i, s) in g.statuses.iter().enumerate() {
                codes.push(grpc_status_code(s).ok_or_else(|| {
                    e(
                        &format!("{path}.grpc_status_filter.statuses[{i}]"),
                        format!("unknown gRPC status '{s}'"),
                    )
                })?);
            }
            return Ok(Filter::Grpc(codes, g.exclude));
        }
        if let Some(m) = &f.metadata_filter {
            let p = format!("{path}.metadata_filter");
            let Some(matcher) = &m.matcher else {
                return Err(e(&format!("{p}.matcher"), "missing matcher"));
            };
            let built = crate::rbac::MetadataMatch::build(matcher, &format!("{p}.matcher"))?;
            return Ok(Filter::Metadata(
                built,
                m.match_if_key_not_found.unwrap_or(true),
            ));
        }
        // not_health_check_filter: meshgate answers no health check on
        // the proxy path, so no request is one.
        Ok(Filter::Any)
    }

    pub(crate) fn matches(&self, ctx: &Ctx<'_>) -> bool {
        match self {
            Filter::Status(op, v) => compare(*op, u32::from(ctx.status.unwrap_or(0)), *v),
            Filter::Duration(op, v) => {
                let d = ctx.timing.done.unwrap_or_default().as_millis();
                compare(*op, u32::try_from(d).unwrap_or(u32::MAX), *v)
            }
            Filter::Header(m) => m.matches(ctx.req),
            Filter::And(l) => l.iter().all(|f| f.matches(ctx)),
            Filter::Or(l) => l.iter().any(|f| f.matches(ctx)),
            Filter::Any => true,
            Filter::Flags(mask) => {
                if *mask == 0 {
                    !ctx.flags.is_empty()
                } else {
                    ctx.flags.has_any(*mask)
                }
            }
            Filter::Traceable => traced(ctx.req),
            Filter::Runtime(per_million, independent) => {
                let r = match ctx.req.get("x-request-id").filter(|_| !*independent) {
                    Some(id) => meshgate_core::lb::hash_key(id.as_bytes()) % 1_000_000,
                    None => rand::random_range(0..1_000_000u64),
                };
                r < u64::from(*per_million)
            }
            Filter::Grpc(codes, exclude) => match ctx.grpc_status() {
                Some(s) => codes.contains(&s) != *exclude,
                None => false,
            },
            Filter::Metadata(m, if_missing) => {
                if !m.key_present(ctx.info.metadata()) {
                    return *if_missing;
                }
                m.matches(ctx.info.metadata())
            }
        }
    }
}

/// The request carries a sampled trace decision: W3C `traceparent` with
/// the sampled flag, or B3 (`x-b3-sampled: 1`, `b3: ...-1`).
fn traced(req: &HeaderMap) -> bool {
    let s = |n: &str| req.get(n).and_then(|v| v.to_str().ok());
    if let Some(tp) = s("traceparent")
        && let Some(flags) = tp.rsplit('-').next()
        && let Ok(f) = u8::from_str_radix(flags, 16)
    {
        return f & 1 == 1;
    }
    if let Some(v) = s("x-b3-sampled") {
        return v == "1" || v.eq_ignore_ascii_case("true");
    }
    if let Some(b3) = s("b3") {
        let parts: Vec<&str> = b3.split('-').collect();
        return parts.get(2).is_some_and(|p| *p == "1" || *p == "d") || b3 == "1";
    }
    false
}

#[cfg(test)]
mod tests;
