//! Config of the `grpc_json_transcoder` stream filter (Envoy's
//! `envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder`),
//! the contract between the filter and the xDS translator. Only what
//! meshgate implements is here, so `deny_unknown_fields` refuses the rest
//! by name (`match_unregistered_custom_verb`,
//! `case_insensitive_enum_parsing`, `capture_unknown_query_parameters`,
//! `stream_sse_style_delimited`).

use serde::{Deserialize, Serialize};

/// The filter's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcJsonTranscoderConfig {
    /// Path of a `FileDescriptorSet` file (`protoc --descriptor_set_out
    /// --include_imports`). Exactly one of this and `proto_descriptor_bin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto_descriptor: Option<String>,
    /// The `FileDescriptorSet` inline, base64 (proto3 JSON of `bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto_descriptor_bin: Option<String>,
    /// Fully qualified gRPC services to transcode (`pkg.Service`); each
    /// must be in the descriptor set. Empty: the filter does nothing (as
    /// Envoy).
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub print_options: PrintOptions,
    /// Keep the route the REST request matched instead of matching again
    /// on the gRPC path.
    #[serde(default)]
    pub match_incoming_request_route: bool,
    /// Query parameters never mapped to a field (e.g. an API key).
    #[serde(default)]
    pub ignored_query_parameters: Vec<String>,
    /// Methods without a `google.api.http` option are served as `POST
    /// /pkg.Service/Method` with the whole body as the request message.
    #[serde(default)]
    pub auto_mapping: bool,
    /// A query parameter naming no field is ignored instead of refused.
    #[serde(default)]
    pub ignore_unknown_query_parameters: bool,
    /// A gRPC error becomes a `google.rpc.Status` JSON body
    /// (`{"code":..,"message":..}`) instead of a text body.
    #[serde(default)]
    pub convert_grpc_status: bool,
    /// `+` in a query parameter value is a space (HTML forms).
    #[serde(default)]
    pub query_param_unescape_plus: bool,
    #[serde(default)]
    pub request_validation_options: RequestValidationOptions,
    /// How path variables are percent-decoded.
    #[serde(default)]
    pub url_unescape_spec: UrlUnescapeSpec,
    /// The largest JSON request body buffered (default 1 MiB); past it 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_size: Option<u32>,
    /// The largest gRPC response message converted (default 4 MiB); past
    /// it the response body is cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_body_size: Option<u32>,
}

/// Envoy's `UrlUnescapeSpec`: which escapes stay encoded in a path
/// variable's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UrlUnescapeSpec {
    /// RFC 6570's reserved characters stay encoded (`%2F`, `%3A`...).
    #[default]
    AllCharactersExceptReserved,
    /// Only `%2F` in a multi-segment (`**`) variable stays encoded.
    AllCharactersExceptSlash,
    /// Everything is decoded.
    AllCharacters,
}

/// Envoy's `PrintOptions`: how response messages are printed as JSON.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrintOptions {
    /// Pretty-printed JSON.
    #[serde(default)]
    pub add_whitespace: bool,
    /// Fields at their default value are printed too.
    #[serde(default)]
    pub always_print_primitive_fields: bool,
    /// Enums as numbers instead of names.
    #[serde(default)]
    pub always_print_enums_as_ints: bool,
    /// Proto field names (`first_name`) instead of JSON names
    /// (`firstName`).
    #[serde(default)]
    pub preserve_proto_field_names: bool,
    /// A server stream as one JSON message per line instead of one array.
    #[serde(default)]
    pub stream_newline_delimited: bool,
}

/// Envoy's `RequestValidationOptions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestValidationOptions {
    /// A request mapping to no method is answered 404 instead of passed
    /// on unchanged.
    #[serde(default)]
    pub reject_unknown_method: bool,
    /// A query parameter naming no field is refused (400) even with
    /// `ignore_unknown_query_parameters`.
    #[serde(default)]
    pub reject_unknown_query_parameters: bool,
    /// A body field also bound by the path or a query parameter is
    /// refused (400) instead of overridden by the binding.
    #[serde(default)]
    pub reject_binding_body_field_collisions: bool,
}
