//! Translation of Envoy's gRPC-JSON transcoder
//! (`envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder`)
//! into meshgate's `grpc_json_transcoder` config. What meshgate does not
//! implement (`match_unregistered_custom_verb`, `case_insensitive_enum_parsing`,
//! `capture_unknown_query_parameters`, SSE-style streams) is refused by
//! name (`rest`). Per-route configs are refused too.

use crate::translate::{R, decode, err, join, rest};
use base64::Engine as _;
use envoy_types::pb::envoy::extensions::filters::http::grpc_json_transcoder::v3 as gjt;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::grpc_json_transcoder as tc;
use serde_json::Value;
use std::mem::take;

pub(crate) const TRANSCODER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder";
/// The filter's Envoy name.
pub(crate) const NAME: &str = "envoy.filters.http.grpc_json_transcoder";

/// The HCM `typed_config`.
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: gjt::GrpcJsonTranscoder =
        decode(any, TRANSCODER).map_err(|e| (path.to_string(), e.to_string()))?;
    let mut out = tc::GrpcJsonTranscoderConfig::default();
    match c.descriptor_set.take() {
        Some(gjt::grpc_json_transcoder::DescriptorSet::ProtoDescriptor(p)) => {
            out.proto_descriptor = Some(p)
        }
        Some(gjt::grpc_json_transcoder::DescriptorSet::ProtoDescriptorBin(b)) => {
            out.proto_descriptor_bin = Some(base64::engine::general_purpose::STANDARD.encode(b))
        }
        None => return err(join(path, "proto_descriptor"), "required"),
    }
    out.services = take(&mut c.services);
    if let Some(mut p) = c.print_options.take() {
        out.print_options = tc::PrintOptions {
            add_whitespace: take(&mut p.add_whitespace),
            always_print_primitive_fields: take(&mut p.always_print_primitive_fields),
            always_print_enums_as_ints: take(&mut p.always_print_enums_as_ints),
            preserve_proto_field_names: take(&mut p.preserve_proto_field_names),
            stream_newline_delimited: take(&mut p.stream_newline_delimited),
        };
        // `stream_sse_style_delimited` is left for `rest`.
        rest(&p, &join(path, "print_options"))?;
    }
    out.match_incoming_request_route = take(&mut c.match_incoming_request_route);
    out.ignored_query_parameters = take(&mut c.ignored_query_parameters);
    out.auto_mapping = take(&mut c.auto_mapping);
    out.ignore_unknown_query_parameters = take(&mut c.ignore_unknown_query_parameters);
    out.convert_grpc_status = take(&mut c.convert_grpc_status);
    out.query_param_unescape_plus = take(&mut c.query_param_unescape_plus);
    if let Some(mut v) = c.request_validation_options.take() {
        out.request_validation_options = tc::RequestValidationOptions {
            reject_unknown_method: take(&mut v.reject_unknown_method),
            reject_unknown_query_parameters: take(&mut v.reject_unknown_query_parameters),
            reject_binding_body_field_collisions: take(&mut v.reject_binding_body_field_collisions),
        };
        rest(&v, &join(path, "request_validation_options"))?;
    }
    out.url_unescape_spec = match gjt::grpc_json_transcoder::UrlUnescapeSpec::try_from(take(
        &mut c.url_unescape_spec,
    )) {
        Ok(gjt::grpc_json_transcoder::UrlUnescapeSpec::AllCharactersExceptReserved) => {
            tc::UrlUnescapeSpec::AllCharactersExceptReserved
        }
        Ok(gjt::grpc_json_transcoder::UrlUnescapeSpec::AllCharactersExceptSlash) => {
            tc::UrlUnescapeSpec::AllCharactersExceptSlash
        }
        Ok(gjt::grpc_json_transcoder::UrlUnescapeSpec::AllCharacters) => {
            tc::UrlUnescapeSpec::AllCharacters
        }
        Err(_) => return err(join(path, "url_unescape_spec"), "unknown value"),
    };
    out.max_request_body_size = c.max_request_body_size.take().map(|v| v.value);
    out.max_response_body_size = c.max_response_body_size.take().map(|v| v.value);
    rest(&c, path)?;
    serde_json::to_value(out).map_err(|e| (path.to_string(), e.to_string()))
}

/// Envoy's per-route `GrpcJsonTranscoder`: not supported (refused, never
/// ignored).
pub(crate) fn per_route(_any: &protobuf::Any, path: &str) -> R<Value> {
    err(
        path,
        "a per-route grpc_json_transcoder config is not supported (configure the filter on the HCM)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(m: &gjt::GrpcJsonTranscoder) -> protobuf::Any {
        protobuf::Any {
            type_url: TRANSCODER.to_string(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn fields_are_translated() {
        let m = gjt::GrpcJsonTranscoder {
            descriptor_set: Some(
                gjt::grpc_json_transcoder::DescriptorSet::ProtoDescriptorBin(vec![1, 2, 3]),
            ),
            services: vec!["a.B".into()],
            print_options: Some(gjt::grpc_json_transcoder::PrintOptions {
                add_whitespace: true,
                stream_newline_delimited: true,
                ..Default::default()
            }),
            convert_grpc_status: true,
            ignored_query_parameters: vec!["key".into()],
            max_request_body_size: Some(protobuf::UInt32Value { value: 10 }),
            ..Default::default()
        };
        let v = filter(&any(&m), "f").unwrap();
        assert_eq!(v["proto_descriptor_bin"], "AQID");
        assert_eq!(v["services"], serde_json::json!(["a.B"]));
        assert_eq!(v["print_options"]["add_whitespace"], true);
        assert_eq!(v["print_options"]["stream_newline_delimited"], true);
        assert_eq!(v["convert_grpc_status"], true);
        assert_eq!(v["ignored_query_parameters"], serde_json::json!(["key"]));
        assert_eq!(v["max_request_body_size"], 10);
        let c: tc::GrpcJsonTranscoderConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.services, vec!["a.B".to_string()]);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let base = gjt::GrpcJsonTranscoder {
            descriptor_set: Some(gjt::grpc_json_transcoder::DescriptorSet::ProtoDescriptor(
                "/x.pb".into(),
            )),
            ..Default::default()
        };
        let e = filter(
            &any(&gjt::GrpcJsonTranscoder {
                case_insensitive_enum_parsing: true,
                ..base.clone()
            }),
            "f",
        )
        .unwrap_err();
        assert!(e.0.contains("case_insensitive_enum_parsing"), "{e:?}");
        let e = filter(
            &any(&gjt::GrpcJsonTranscoder {
                print_options: Some(gjt::grpc_json_transcoder::PrintOptions {
                    stream_sse_style_delimited: true,
                    ..Default::default()
                }),
                ..base.clone()
            }),
            "f",
        )
        .unwrap_err();
        assert!(e.0.contains("stream_sse_style_delimited"), "{e:?}");
        let e = filter(&any(&gjt::GrpcJsonTranscoder::default()), "f").unwrap_err();
        assert!(e.0.contains("proto_descriptor"), "{e:?}");
    }
}
