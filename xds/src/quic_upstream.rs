//! HTTP/3 upstream clusters as Envoy expresses them: the transport socket
//! `envoy.transport_sockets.quic` (`QuicUpstreamTransport`, wrapping an
//! `UpstreamTlsContext`) together with the `HttpProtocolOptions`
//! extension's `explicit_http_config.http3_protocol_options`. They become
//! meshgate's `protocol: http3` cluster: the wrapped context is the
//! cluster's `tls` (its ALPN is always `h3`), and
//! `quic_protocol_options.max_concurrent_streams` its `protocol_options`.
//! Either half without the other, QUIC with `transport_socket_matches`,
//! and every QUIC or HTTP/3 option meshgate does not apply are refused by
//! name.

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::transport_sockets::quic::v3 as quic;
use prost::Message;
use serde_json::{Map, Value, json};

const QUIC_UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicUpstreamTransport";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// Whether `ts` is a QUIC transport socket (told by its type URL).
fn is_quic(ts: &core3::TransportSocket) -> bool {
    matches!(&ts.config_type, Some(core3::transport_socket::ConfigType::TypedConfig(a)) if a.type_url == QUIC_UPSTREAM)
}

/// If the cluster's `transport_socket` is QUIC, replaces it with the TLS
/// socket of the `UpstreamTlsContext` it wraps (translated, SDS included,
/// as any TLS socket) and returns true.
pub(crate) fn unwrap(ts: &mut Option<core3::TransportSocket>) -> R<bool> {
    let Some(t) = ts.as_mut().filter(|t| is_quic(t)) else {
        return Ok(false);
    };
    let path = "transport_socket.typed_config";
    let Some(core3::transport_socket::ConfigType::TypedConfig(any)) = t.config_type.take() else {
        return Ok(false);
    };
    let mut q: quic::QuicUpstreamTransport =
        decode(&any, QUIC_UPSTREAM).map_err(|e| (path.to_string(), e.to_string()))?;
    let Some(ctx) = q.upstream_tls_context.take() else {
        return err(
            join(path, "upstream_tls_context"),
            "required: QUIC is always encrypted",
        );
    };
    rest(&q, path)?;
    t.config_type = Some(core3::transport_socket::ConfigType::TypedConfig(
        envoy_types::pb::google::protobuf::Any {
            type_url: UPSTREAM_TLS.into(),
            value: ctx.encode_to_vec(),
        },
    ));
    Ok(true)
}

/// An upstream `Http3ProtocolOptions`: `quic_protocol_options
/// .max_concurrent_streams` (the streams one upstream QUIC connection
/// carries; requests beyond wait in the pending queue); the rest refused.
pub(crate) fn http3(
    mut h3: core3::Http3ProtocolOptions,
    path: &str,
    out: &mut Map<String, Value>,
) -> R<()> {
    if let Some(mut q) = h3.quic_protocol_options.take() {
        let qp = join(path, "quic_protocol_options");
        if let Some(v) = q.max_concurrent_streams.take() {
            if v.value == 0 {
                return err(join(&qp, "max_concurrent_streams"), "must be >= 1");
            }
            // Envoy's default (100) is a limit of the pool's too.
            out.insert("max_concurrent_streams".into(), json!(v.value));
        }
        rest(&q, &qp)?;
    }
    rest(&h3, path)
}

/// What a QUIC socket and HTTP/3 options require of each other and of the
/// rest of the cluster, once both are known: `quic` (the transport socket
/// was QUIC), `protocol` (what the cluster speaks), `h3_path` (where
/// HTTP/3 was asked for), `matches` (`transport_socket_matches` set),
/// `options` (its `protocol_options`).
pub(crate) fn check(
    quic: bool,
    protocol: Option<&str>,
    h3_path: &str,
    matches: bool,
    options: &Map<String, Value>,
) -> R<()> {
    let h3 = protocol == Some("http3");
    if quic && !h3 {
        return err(
            "transport_socket",
            "envoy.transport_sockets.quic needs HTTP/3: set typed_extension_protocol_options' envoy.extensions.upstreams.http.v3.HttpProtocolOptions explicit_http_config.http3_protocol_options",
        );
    }
    if h3 && !quic {
        return err(
            h3_path,
            "HTTP/3 needs transport_socket envoy.transport_sockets.quic (QuicUpstreamTransport)",
        );
    }
    if !h3 {
        return Ok(());
    }
    if matches {
        return err(
            "transport_socket_matches",
            "not supported on an HTTP/3 (QUIC) cluster",
        );
    }
    for k in [
        "idle_timeout",
        "max_requests_per_connection",
        "max_connection_duration",
        "max_headers_count",
        "max_stream_duration",
    ] {
        if options.contains_key(k) {
            return err(
                k,
                "not applied to HTTP/3 upstream connections (HTTP/1.1 and HTTP/2 clusters only)",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};

    fn quic_socket(ctx: Option<tlsv3::UpstreamTlsContext>) -> core3::TransportSocket {
        core3::TransportSocket {
            name: "envoy.transport_sockets.quic".into(),
            config_type: Some(core3::transport_socket::ConfigType::TypedConfig(Any {
                type_url: QUIC_UPSTREAM.into(),
                value: quic::QuicUpstreamTransport {
                    upstream_tls_context: ctx,
                }
                .encode_to_vec(),
            })),
        }
    }

    #[test]
    fn the_quic_socket_gives_its_tls_context() {
        let ctx = tlsv3::UpstreamTlsContext {
            sni: "localhost".into(),
            ..Default::default()
        };
        let mut ts = Some(quic_socket(Some(ctx.clone())));
        assert!(unwrap(&mut ts).unwrap());
        let Some(core3::transport_socket::ConfigType::TypedConfig(a)) = ts.unwrap().config_type
        else {
            panic!("no typed config");
        };
        assert_eq!(a.type_url, UPSTREAM_TLS);
        assert_eq!(tlsv3::UpstreamTlsContext::decode(&*a.value).unwrap(), ctx);

        let mut ts = Some(quic_socket(None));
        let e = unwrap(&mut ts).unwrap_err();
        assert_eq!(e.0, "transport_socket.typed_config.upstream_tls_context");
        let mut none = None;
        assert!(!unwrap(&mut none).unwrap());
    }

    #[test]
    fn http3_options_and_combinations() {
        let mut out = Map::new();
        let h3 = core3::Http3ProtocolOptions {
            quic_protocol_options: Some(core3::QuicProtocolOptions {
                max_concurrent_streams: Some(UInt32Value { value: 7 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        http3(h3, "h3", &mut out).unwrap();
        assert_eq!(out["max_concurrent_streams"], 7);
        let h3 = core3::Http3ProtocolOptions {
            quic_protocol_options: Some(core3::QuicProtocolOptions {
                initial_stream_window_size: Some(UInt32Value { value: 70000 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = http3(h3, "h3", &mut Map::new()).unwrap_err();
        assert_eq!(e.0, "h3.quic_protocol_options.initial_stream_window_size");
        let h3 = core3::Http3ProtocolOptions {
            allow_extended_connect: true,
            ..Default::default()
        };
        let e = http3(h3, "h3", &mut Map::new()).unwrap_err();
        assert_eq!(e.0, "h3.allow_extended_connect");

        let none = Map::new();
        assert!(check(true, Some("http3"), "p", false, &none).is_ok());
        assert!(check(false, Some("http2"), "p", false, &none).is_ok());
        assert_eq!(
            check(true, Some("http2"), "p", false, &none).unwrap_err().0,
            "transport_socket"
        );
        assert_eq!(
            check(true, None, "p", false, &none).unwrap_err().0,
            "transport_socket"
        );
        assert_eq!(
            check(false, Some("http3"), "p", false, &none)
                .unwrap_err()
                .0,
            "p"
        );
        assert_eq!(
            check(true, Some("http3"), "p", true, &none).unwrap_err().0,
            "transport_socket_matches"
        );
        let mut o = Map::new();
        o.insert("max_requests_per_connection".into(), json!(3));
        assert_eq!(
            check(true, Some("http3"), "p", false, &o).unwrap_err().0,
            "max_requests_per_connection"
        );
    }
}
