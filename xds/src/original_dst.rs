//! Translation of Envoy's sidecar-mode fields into meshgate's
//! (`meshgate_core::original_dst`, `meshgate_core::cluster::original_dst`):
//! the listener's `use_original_dst`, `bind_to_port`, `transparent`,
//! `freebind` and listener filters (original_dst, http_inspector,
//! tls_inspector), the filter chain match's `prefix_ranges`, and the
//! cluster's `ORIGINAL_DST` settings (`original_dst_lb_config`,
//! `cleanup_interval`). What is left unsupported stays in the message for
//! the caller's `rest` to refuse by name.

use crate::translate::{R, duration, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use meshgate_core::config::sidecar::{
    HTTP_INSPECTOR, ListenerFilterConfig, ORIGINAL_DST, OriginalDstLbConfig, TLS_INSPECTOR,
};
use std::time::Duration;

/// The listener's sidecar settings, taken out of it.
pub(crate) struct ListenerFields {
    pub listener_filters: Vec<ListenerFilterConfig>,
    pub use_original_dst: bool,
    pub bind_to_port: bool,
    pub transparent: Option<bool>,
    pub freebind: Option<bool>,
}

pub(crate) fn listener(l: &mut lds::Listener) -> R<ListenerFields> {
    let mut listener_filters = Vec::new();
    for (i, mut f) in std::mem::take(&mut l.listener_filters)
        .into_iter()
        .enumerate()
    {
        let path = format!("listener_filters[{i}]");
        let name = std::mem::take(&mut f.name);
        if name == meshgate_core::config::proxy_protocol::NAME {
            if f.filter_disabled.is_some() {
                return err(join(&path, "filter_disabled"), "not supported by meshgate");
            }
            let any = match &f.config_type {
                None => None,
                Some(lds::listener_filter::ConfigType::TypedConfig(a)) => Some(a),
                Some(_) => {
                    return err(join(&path, "config_discovery"), "not supported by meshgate");
                }
            };
            listener_filters.push(crate::proxy_protocol::listener_filter(any, &path)?);
            continue;
        }
        match f.config_type.take() {
            None => {}
            Some(lds::listener_filter::ConfigType::TypedConfig(a)) if a.value.is_empty() => {}
            Some(lds::listener_filter::ConfigType::TypedConfig(_)) => {
                return err(
                    join(&path, "typed_config"),
                    "options not supported (want an empty config)",
                );
            }
            Some(lds::listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return err(join(&path, "config_discovery"), "not supported");
            }
        }
        rest(&f, &path)?;
        match name.as_str() {
            // meshgate reads the ClientHello itself whenever a chain
            // matches on server names or ALPN.
            TLS_INSPECTOR => continue,
            ORIGINAL_DST | HTTP_INSPECTOR => {}
            _ => {
                return err(
                    join(&path, "name"),
                    format!(
                        "listener filter '{name}' not supported ({ORIGINAL_DST}, {HTTP_INSPECTOR}, {TLS_INSPECTOR}, {})",
                        meshgate_core::config::proxy_protocol::NAME
                    ),
                );
            }
        }
        listener_filters.push(ListenerFilterConfig {
            name,
            config: serde_json::Value::Null,
        });
    }
    Ok(ListenerFields {
        listener_filters,
        use_original_dst: l.use_original_dst.take().is_some_and(|v| v.value),
        bind_to_port: l.bind_to_port.take().is_none_or(|v| v.value),
        transparent: l.transparent.take().map(|v| v.value),
        freebind: l.freebind.take().map(|v| v.value),
    })
}

/// `FilterChainMatch.prefix_ranges` as CIDR strings.
pub(crate) fn prefix_ranges(m: &mut lds::FilterChainMatch, path: &str) -> R<Vec<String>> {
    let mut out = Vec::new();
    for (i, mut c) in std::mem::take(&mut m.prefix_ranges).into_iter().enumerate() {
        let len = c.prefix_len.take().map(|v| v.value).unwrap_or(0);
        let a = std::mem::take(&mut c.address_prefix);
        rest(&c, &format!("{path}.prefix_ranges[{i}]"))?;
        out.push(format!("{a}/{len}"));
    }
    Ok(out)
}

/// The ORIGINAL_DST settings of a cluster, taken out of it; refused on
/// clusters of other types by the caller's `rest` (left in place).
pub(crate) fn cluster(
    c: &mut cds::Cluster,
    original_dst: bool,
) -> R<(Option<OriginalDstLbConfig>, Option<Duration>)> {
    if !original_dst {
        return Ok((None, None));
    }
    let lb = match c.lb_config.take() {
        Some(cds::cluster::LbConfig::OriginalDstLbConfig(mut o)) => {
            let path = "original_dst_lb_config";
            let use_http_header = o.use_http_header;
            o.use_http_header = false;
            let name = std::mem::take(&mut o.http_header_name);
            rest(&o, path)?;
            Some(OriginalDstLbConfig {
                use_http_header,
                http_header_name: Some(name).filter(|n| !n.is_empty()),
            })
        }
        other => {
            c.lb_config = other;
            None
        }
    };
    let cleanup = match c.cleanup_interval.take() {
        Some(d) => Some(duration(&d, "cleanup_interval")?),
        None => None,
    };
    Ok((lb, cleanup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};

    fn lf(name: &str) -> lds::ListenerFilter {
        lds::ListenerFilter {
            name: name.into(),
            config_type: Some(lds::listener_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn istio_outbound_listener_fields() {
        let mut l = lds::Listener {
            use_original_dst: Some(BoolValue { value: true }),
            listener_filters: vec![lf(ORIGINAL_DST), lf(TLS_INSPECTOR), lf(HTTP_INSPECTOR)],
            ..Default::default()
        };
        let f = listener(&mut l).unwrap();
        assert!(f.use_original_dst && f.bind_to_port);
        let names: Vec<&str> = f.listener_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [ORIGINAL_DST, HTTP_INSPECTOR]);
        assert_eq!(l, lds::Listener::default());

        let mut l = lds::Listener {
            bind_to_port: Some(BoolValue { value: false }),
            transparent: Some(BoolValue { value: true }),
            ..Default::default()
        };
        let f = listener(&mut l).unwrap();
        assert!(!f.bind_to_port);
        assert_eq!(f.transparent, Some(true));

        let mut l = lds::Listener {
            listener_filters: vec![lf("envoy.filters.listener.local_ratelimit")],
            ..Default::default()
        };
        let e = listener(&mut l).err().unwrap();
        assert_eq!(e.0, "listener_filters[0].name");
    }

    #[test]
    fn prefix_ranges_and_original_dst_cluster() {
        let mut m = lds::FilterChainMatch {
            prefix_ranges: vec![envoy_types::pb::envoy::config::core::v3::CidrRange {
                address_prefix: "10.96.0.0".into(),
                prefix_len: Some(UInt32Value { value: 12 }),
            }],
            ..Default::default()
        };
        assert_eq!(prefix_ranges(&mut m, "m").unwrap(), ["10.96.0.0/12"]);
        let mut c = cds::Cluster {
            lb_config: Some(cds::cluster::LbConfig::OriginalDstLbConfig(
                cds::cluster::OriginalDstLbConfig {
                    use_http_header: true,
                    ..Default::default()
                },
            )),
            cleanup_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 7,
                nanos: 0,
            }),
            ..Default::default()
        };
        let (lb, cleanup) = cluster(&mut c, true).unwrap();
        assert!(lb.unwrap().use_http_header);
        assert_eq!(cleanup, Some(Duration::from_secs(7)));
        let mut c = cds::Cluster {
            lb_config: Some(cds::cluster::LbConfig::OriginalDstLbConfig(
                cds::cluster::OriginalDstLbConfig {
                    upstream_port_override: Some(UInt32Value { value: 80 }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            cluster(&mut c, true).err().unwrap().0,
            "original_dst_lb_config.upstream_port_override"
        );
    }
}
