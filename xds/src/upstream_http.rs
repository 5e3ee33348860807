//! A cluster's `typed_extension_protocol_options` with
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` (what istiod
//! and Envoy Gateway put on every cluster): the upstream protocol
//! (`explicit_http_config`) and the pool's options (`idle_timeout`,
//! `max_requests_per_connection`, `max_connection_duration`,
//! `max_headers_count`, `max_stream_duration`, HTTP/2 windows and
//! `max_concurrent_streams`; HTTP/3 with `crate::quic_upstream`) as the cluster's
//! `protocol` and `protocol_options`. Every other field, and any other
//! extension, is refused by name.

use crate::translate::{R, decode, duration, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as up;
use serde_json::{Map, Value, json};

const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// What the extension sets on the cluster.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UpstreamHttp {
    /// `explicit_http_config`: `http1`, `http2` or `http3`.
    pub protocol: Option<String>,
    /// Entries of the HTTP codec's `protocol_options`.
    pub options: Map<String, Value>,
    /// `upstream_http_protocol_options.auto_sni`: the cluster's TLS must
    /// leave `sni` unset (meshgate then sends the request's authority).
    pub auto_sni: bool,
    /// The path of the extension's entry (for errors named later).
    pub path: String,
    /// `auto_config` was set: HTTP/1.1, which is what Envoy's ALPN choice
    /// comes to on a plaintext cluster; on a TLS cluster the caller makes
    /// it meshgate's `protocol: auto` (HTTP/2 or HTTP/1.1 per endpoint by
    /// ALPN), with `auto_h2` (its `http2_protocol_options`) added to the
    /// options.
    pub auto_config: bool,
    /// `auto_config.http2_protocol_options`, as `http2` puts them.
    pub auto_h2: Map<String, Value>,
}

/// Takes `typed_extension_protocol_options` out of the cluster.
pub(crate) fn translate(c: &mut cds::Cluster) -> R<UpstreamHttp> {
    let mut out = UpstreamHttp::default();
    let mut opts: Vec<_> = std::mem::take(&mut c.typed_extension_protocol_options)
        .into_iter()
        .collect();
    opts.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, any) in opts {
        let path = format!("typed_extension_protocol_options['{key}']");
        if any.type_url != HTTP_PROTOCOL_OPTIONS {
            return err(
                path,
                format!(
                    "extension '{}' not supported (only envoy.extensions.upstreams.http.v3.HttpProtocolOptions)",
                    any.type_url
                ),
            );
        }
        let m: up::HttpProtocolOptions =
            decode(&any, HTTP_PROTOCOL_OPTIONS).map_err(|e| (path.clone(), e.to_string()))?;
        http_protocol_options(m, &path, &mut out)?;
        out.path = path;
    }
    Ok(out)
}

fn http_protocol_options(
    mut m: up::HttpProtocolOptions,
    path: &str,
    out: &mut UpstreamHttp,
) -> R<()> {
    use up::http_protocol_options::UpstreamProtocolOptions as P;
    use up::http_protocol_options::explicit_http_config::ProtocolConfig as E;
    match m.upstream_protocol_options.take() {
        None => {}
        Some(P::ExplicitHttpConfig(mut e)) => {
            let ep = join(path, "explicit_http_config");
            match e.protocol_config.take() {
                None => {}
                Some(E::HttpProtocolOptions(h1)) => {
                    rest(&h1, &join(&ep, "http_protocol_options"))?;
                    out.protocol = Some("http1".into());
                }
                Some(E::Http2ProtocolOptions(h2)) => {
                    http2(h2, &join(&ep, "http2_protocol_options"), &mut out.options)?;
                    out.protocol = Some("http2".into());
                }
                Some(E::Http3ProtocolOptions(h3)) => {
                    // With transport_socket envoy.transport_sockets.quic
                    // (`crate::quic_upstream::check`).
                    crate::quic_upstream::http3(
                        h3,
                        &join(&ep, "http3_protocol_options"),
                        &mut out.options,
                    )?;
                    out.protocol = Some("http3".into());
                }
            }
        }
        Some(P::UseDownstreamProtocolConfig(mut d)) => {
            // Each request goes upstream in its downstream's protocol
            // (HTTP/3 falls back to HTTP/2): meshgate's `downstream`.
            let dp = join(path, "use_downstream_protocol_config");
            if let Some(h1) = d.http_protocol_options.take() {
                rest(&h1, &join(&dp, "http_protocol_options"))?;
            }
            if let Some(h2) = d.http2_protocol_options.take() {
                http2(h2, &join(&dp, "http2_protocol_options"), &mut out.options)?;
            }
            if d.http3_protocol_options.is_some() {
                return err(
                    join(&dp, "http3_protocol_options"),
                    "HTTP/3 to upstreams is not supported through xDS",
                );
            }
            rest(&d, &dp)?;
            out.protocol = Some("downstream".into());
        }
        Some(P::AutoConfig(mut a)) => {
            // Without TLS there is no ALPN: Envoy speaks HTTP/1.1 (its
            // HTTP/2 options never apply). With TLS the caller makes it
            // `auto` and adds them.
            let ap = join(path, "auto_config");
            if let Some(h1) = a.http_protocol_options.take() {
                rest(&h1, &join(&ap, "http_protocol_options"))?;
            }
            if let Some(h2) = a.http2_protocol_options.take() {
                http2(h2, &join(&ap, "http2_protocol_options"), &mut out.auto_h2)?;
            }
            if a.http3_protocol_options.is_some() {
                return err(
                    join(&ap, "http3_protocol_options"),
                    "HTTP/3 chosen with an alternate protocols cache is not supported (auto_config chooses HTTP/2 or HTTP/1.1 by ALPN)",
                );
            }
            rest(&a, &ap)?;
            out.protocol = Some("http1".into());
            out.auto_config = true;
        }
    }
    if let Some(mut o) = m.common_http_protocol_options.take() {
        let op = join(path, "common_http_protocol_options");
        if let Some(d) = o.idle_timeout.take() {
            let d = duration(&d, &join(&op, "idle_timeout"))?;
            if d.is_zero() {
                return err(
                    join(&op, "idle_timeout"),
                    "0 (no idle timeout) is not supported: meshgate closes idle upstream connections",
                );
            }
            out.options.insert("idle_timeout".into(), json!(text(d)));
        }
        // Unset or 0: no limit.
        if let Some(d) = o.max_connection_duration.take() {
            let d = duration(&d, &join(&op, "max_connection_duration"))?;
            if !d.is_zero() {
                out.options
                    .insert("max_connection_duration".into(), json!(text(d)));
            }
        }
        if let Some(d) = o.max_stream_duration.take() {
            let d = duration(&d, &join(&op, "max_stream_duration"))?;
            if !d.is_zero() {
                out.options
                    .insert("max_stream_duration".into(), json!(text(d)));
            }
        }
        // Envoy's range: at least 1.
        if let Some(v) = o.max_headers_count.take() {
            if v.value == 0 {
                return err(join(&op, "max_headers_count"), "must be >= 1");
            }
            out.options
                .insert("max_headers_count".into(), json!(v.value));
        }
        if let Some(v) = o.max_requests_per_connection.take() {
            if v.value == 0 {
                return err(join(&op, "max_requests_per_connection"), "must be >= 1");
            }
            out.options
                .insert("max_requests_per_connection".into(), json!(v.value));
        }
        rest(&o, &op)?;
    }
    if let Some(mut u) = m.upstream_http_protocol_options.take() {
        let upath = join(path, "upstream_http_protocol_options");
        out.auto_sni = std::mem::take(&mut u.auto_sni);
        rest(&u, &upath)?;
    }
    rest(&m, path)
}

/// A duration as meshgate's config writes it (whole seconds, else ms).
fn text(d: std::time::Duration) -> String {
    match d.subsec_nanos() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis().max(1)),
    }
}

/// An upstream `Http2ProtocolOptions` (the extension's explicit one, or
/// the cluster's legacy `http2_protocol_options`): the windows and
/// `max_concurrent_streams` (the per-connection stream limit the pool
/// enforces; requests beyond it wait in the pending queue); the rest
/// refused.
pub(crate) fn http2(
    mut h2: core3::Http2ProtocolOptions,
    path: &str,
    out: &mut Map<String, Value>,
) -> R<()> {
    for (name, v) in [
        (
            "initial_stream_window_size",
            h2.initial_stream_window_size.take(),
        ),
        (
            "initial_connection_window_size",
            h2.initial_connection_window_size.take(),
        ),
    ] {
        if let Some(v) = v {
            if !(65_535..=0x7fff_ffff).contains(&v.value) {
                return err(
                    join(path, name),
                    format!("{} is outside 65535..=2147483647 (RFC 9113)", v.value),
                );
            }
            out.insert(name.into(), json!(v.value));
        }
    }
    if let Some(v) = h2.max_concurrent_streams.take() {
        // Envoy's range; its default (2^31 - 1) is no limit of the pool's.
        if !(1..=0x7fff_ffff).contains(&v.value) {
            return err(
                join(path, "max_concurrent_streams"),
                format!("{} is outside 1..=2147483647", v.value),
            );
        }
        if v.value < 0x7fff_ffff {
            out.insert("max_concurrent_streams".into(), json!(v.value));
        }
    }
    rest(&h2, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf;
    use prost::Message;

    fn cluster(m: &up::HttpProtocolOptions) -> cds::Cluster {
        let mut c = cds::Cluster::default();
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            protobuf::Any {
                type_url: HTTP_PROTOCOL_OPTIONS.into(),
                value: m.encode_to_vec(),
            },
        );
        c
    }

    #[test]
    fn explicit_http2_and_common_options_are_translated() {
        use up::http_protocol_options::explicit_http_config::ProtocolConfig as E;
        let m = up::HttpProtocolOptions {
            upstream_protocol_options: Some(
                up::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    up::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(E::Http2ProtocolOptions(
                            core3::Http2ProtocolOptions {
                                initial_stream_window_size: Some(protobuf::UInt32Value {
                                    value: 65536,
                                }),
                                max_concurrent_streams: Some(protobuf::UInt32Value { value: 4 }),
                                ..Default::default()
                            },
                        )),
                    },
                ),
            ),
            common_http_protocol_options: Some(core3::HttpProtocolOptions {
                idle_timeout: Some(protobuf::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                max_requests_per_connection: Some(protobuf::UInt32Value { value: 3 }),
                max_connection_duration: Some(protobuf::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                max_headers_count: Some(protobuf::UInt32Value { value: 20 }),
                max_stream_duration: Some(protobuf::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = translate(&mut cluster(&m)).unwrap();
        assert_eq!(out.protocol.as_deref(), Some("http2"));
        assert_eq!(out.options["initial_stream_window_size"], 65536);
        assert_eq!(out.options["max_concurrent_streams"], 4);
        assert_eq!(out.options["max_requests_per_connection"], 3);
        assert_eq!(out.options["idle_timeout"], "3600s");
        assert_eq!(out.options["max_connection_duration"], "1500ms");
        assert_eq!(out.options["max_headers_count"], 20);
        assert_eq!(out.options["max_stream_duration"], "30s");
        // As a whole cluster: HTTP/2 with the pool's idle timeout and
        // maximum duration (what istiod's DestinationRule sends).
        let mut c = cluster(&m);
        c.name = "h2".into();
        let t = crate::translate::cluster(c).unwrap();
        assert_eq!(t.config.protocol.as_deref(), Some("http2"));
        assert_eq!(t.config.protocol_options["idle_timeout"], "3600s");
        assert_eq!(
            t.config.protocol_options["max_connection_duration"],
            "1500ms"
        );
        // 0: no maximum duration (Envoy's meaning).
        let mut z = m.clone();
        z.common_http_protocol_options
            .as_mut()
            .unwrap()
            .max_connection_duration = Some(protobuf::Duration::default());
        let out = translate(&mut cluster(&z)).unwrap();
        assert!(!out.options.contains_key("max_connection_duration"));
    }

    #[test]
    fn unsupported_fields_and_extensions_are_named() {
        let m = up::HttpProtocolOptions {
            common_http_protocol_options: Some(core3::HttpProtocolOptions {
                headers_with_underscores_action: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = translate(&mut cluster(&m)).unwrap_err();
        assert!(
            e.0.ends_with("common_http_protocol_options.headers_with_underscores_action"),
            "{e:?}"
        );
        let m = up::HttpProtocolOptions {
            upstream_protocol_options: Some(
                up::http_protocol_options::UpstreamProtocolOptions::AutoConfig(Default::default()),
            ),
            ..Default::default()
        };
        // auto_config: HTTP/1.1 (the caller makes it `auto` on TLS clusters).
        let a = translate(&mut cluster(&m)).unwrap();
        assert_eq!(a.protocol.as_deref(), Some("http1"));
        assert!(a.auto_config);
        // ... and as a whole cluster: plaintext speaks HTTP/1.1, TLS chooses
        // by ALPN (`protocol: auto`).
        let mut plain = cluster(&m);
        plain.name = "p".into();
        let t = crate::translate::cluster(plain).unwrap();
        assert_eq!(t.config.protocol.as_deref(), Some("http1"));
        let mut tls = cluster(&m);
        tls.name = "t".into();
        tls.transport_socket = Some(envoy_types::pb::envoy::config::core::v3::TransportSocket {
            name: "tls".into(),
            config_type: Some(
                envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                    protobuf::Any {
                        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
                        value: vec![],
                    },
                ),
            ),
        });
        let t = crate::translate::cluster(tls).unwrap();
        assert_eq!(t.config.protocol.as_deref(), Some("auto"));
        let mut c = cds::Cluster::default();
        c.typed_extension_protocol_options.insert(
            "x".into(),
            protobuf::Any {
                type_url: "type.googleapis.com/x.Y".into(),
                value: vec![],
            },
        );
        let e = translate(&mut c).unwrap_err();
        assert_eq!(e.0, "typed_extension_protocol_options['x']");
    }
}
