//! Translation of Envoy's gRPC-Web filter
//! (`envoy.extensions.filters.http.grpc_web.v3.GrpcWeb`, an empty message)
//! into meshgate's `grpc_web` filter. It takes no per-route config (only
//! Envoy's `FilterConfig` `disabled` switch).

use crate::translate::{R, decode, rest};
use envoy_types::pb::envoy::extensions::filters::http::grpc_web::v3 as grpc_web;
use envoy_types::pb::google::protobuf;
use serde_json::Value;

pub(crate) const GRPC_WEB: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb";
/// The filter's Envoy name (also the `typed_per_filter_config` key).
pub(crate) const NAME: &str = "envoy.filters.http.grpc_web";

/// The `GrpcWeb` message as the `grpc_web` filter's config (nothing to
/// configure).
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let c: grpc_web::GrpcWeb =
        decode(any, GRPC_WEB).map_err(|e| (path.to_string(), e.to_string()))?;
    rest(&c, path)?;
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_empty_message_translates_and_other_types_are_refused() {
        let a = protobuf::Any {
            type_url: GRPC_WEB.into(),
            value: grpc_web::GrpcWeb {}.encode_to_vec(),
        };
        assert_eq!(filter(&a, "f").unwrap(), Value::Null);
        let wrong = protobuf::Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![],
        };
        assert!(filter(&wrong, "f").is_err());
    }

    #[test]
    fn listed_by_its_envoy_name_alone_it_is_configured_too() {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
        let f = |name: &str, a: Option<protobuf::Any>| hcm::HttpFilter {
            name: name.into(),
            config_type: a.map(hcm::http_filter::ConfigType::TypedConfig),
            ..Default::default()
        };
        let typed = protobuf::Any {
            type_url: GRPC_WEB.into(),
            value: vec![],
        };
        for gw in [f(NAME, None), f("web", Some(typed))] {
            let out = crate::http_filters::http_filters(
                vec![gw, f(crate::http_filters::ROUTER_NAME, None)],
                "hcm",
            )
            .unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].name, "grpc_web");
            assert_eq!(out[0].config, Value::Null);
        }
    }
}
