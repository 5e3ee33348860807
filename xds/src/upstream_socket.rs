//! `Cluster.upstream_bind_config` and `Cluster.upstream_connection_options`
//! into the YAML's (`meshgate_core::config::upstream_socket`):
//! `source_address` (an IP and port), `freebind`, `socket_options` (as a
//! listener's, `crate::socket_option`), `tcp_keepalive` (probes, time,
//! interval). `extra_source_addresses`, `additional_source_addresses`,
//! `local_address_selector`, `set_local_interface_name_on_upstream_connections`
//! and `happy_eyeballs_config` are refused by name (`rest`).

use crate::translate::{R, err, join, rest};
use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core3;
use meshgate_core::config::upstream_socket::{
    TcpKeepalive, UpstreamBindConfig, UpstreamConnectionOptions,
};

/// Takes both fields off `c`.
pub(crate) fn take(
    c: &mut cds::Cluster,
) -> R<(
    Option<UpstreamBindConfig>,
    Option<UpstreamConnectionOptions>,
)> {
    let bind = match c.upstream_bind_config.take() {
        None => None,
        Some(b) => Some(bind_config(b, "upstream_bind_config")?),
    };
    let options = match c.upstream_connection_options.take() {
        None => None,
        Some(mut o) => {
            let p = "upstream_connection_options";
            let tcp_keepalive = match o.tcp_keepalive.take() {
                None => None,
                Some(mut k) => {
                    let kp = join(p, "tcp_keepalive");
                    let out = TcpKeepalive {
                        keepalive_probes: k.keepalive_probes.take().map(|v| v.value),
                        keepalive_time: k.keepalive_time.take().map(|v| v.value),
                        keepalive_interval: k.keepalive_interval.take().map(|v| v.value),
                    };
                    rest(&k, &kp)?;
                    Some(out)
                }
            };
            rest(&o, p)?;
            Some(UpstreamConnectionOptions { tcp_keepalive })
        }
    };
    Ok((bind, options))
}

fn bind_config(mut b: core3::BindConfig, p: &str) -> R<UpstreamBindConfig> {
    let source_address = match b.source_address.take() {
        None => None,
        Some(mut sa) => {
            let sp = join(p, "source_address");
            let host = std::mem::take(&mut sa.address);
            let port = match sa.port_specifier.take() {
                None => 0,
                Some(core3::socket_address::PortSpecifier::PortValue(v)) => u16::try_from(v)
                    .map_err(|_| (join(&sp, "port_value"), "port out of range".to_string()))?,
                Some(_) => return err(join(&sp, "named_port"), "not supported: set port_value"),
            };
            // TCP is the only protocol of an upstream bind.
            if sa.protocol != 0 {
                return err(join(&sp, "protocol"), "only TCP");
            }
            rest(&sa, &sp)?;
            let ip: std::net::IpAddr = host.parse().map_err(|_| {
                (
                    join(&sp, "address"),
                    format!("'{host}' is not an IP address"),
                )
            })?;
            Some(std::net::SocketAddr::new(ip, port))
        }
    };
    let freebind = b.freebind.take().is_some_and(|v| v.value);
    let socket_options = crate::socket_option::socket_options(
        std::mem::take(&mut b.socket_options),
        &join(p, "socket_options"),
    )?;
    rest(&b, p)?;
    if freebind && source_address.is_none() {
        return err(join(p, "freebind"), "needs a source_address to bind to");
    }
    Ok(UpstreamBindConfig {
        source_address,
        freebind,
        socket_options,
    })
}
