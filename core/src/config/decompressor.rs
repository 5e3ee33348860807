//! Config of the `decompressor` stream filter (Envoy's
//! `envoy.extensions.filters.http.decompressor.v3.Decompressor`), the
//! contract between the filter and the xDS translator. Only what meshgate
//! implements is here, so `deny_unknown_fields` refuses the rest by name
//! (runtime keys, zstd's `dictionaries`).

use crate::config::compressor::FeatureFlag;
use serde::{Deserialize, Serialize};

/// The filter's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecompressorConfig {
    /// The decoder: exactly one of `gzip`, `brotli`, `zstd`.
    pub decompressor_library: DecompressorLibrary,
    #[serde(default)]
    pub request_direction_config: RequestDirectionConfig,
    #[serde(default)]
    pub response_direction_config: ResponseDirectionConfig,
}

/// Envoy's `decompressor_library` (`TypedExtensionConfig`: one key per
/// library here).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecompressorLibrary {
    /// The extension's name (informational, as in Envoy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `envoy.extensions.compression.gzip.decompressor.v3.Gzip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<GzipDecompressor>,
    /// `envoy.extensions.compression.brotli.decompressor.v3.Brotli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brotli: Option<BrotliDecompressor>,
    /// `envoy.extensions.compression.zstd.decompressor.v3.Zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<ZstdDecompressor>,
}

/// Envoy's gzip decompressor library.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GzipDecompressor {
    /// Only 15 (the decoder takes any window up to 32 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_bits: Option<u32>,
    /// Decoded bytes per body chunk passed on, 4096..=65536 (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// Decoded bytes allowed per encoded byte of the stream, 1..=1032
    /// (default 100): past it the body is cut off as a decompression bomb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflate_ratio: Option<u32>,
}

/// Envoy's brotli decompressor library.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrotliDecompressor {
    /// Refused when true (the decoder grows its ring buffer as needed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_ring_buffer_reallocation: bool,
    /// Decoded bytes per body chunk passed on, 4096..=65536 (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

/// Envoy's zstd decompressor library.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZstdDecompressor {
    /// Decoded bytes per body chunk passed on, 4096..=65536 (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

/// Envoy's `Decompressor.CommonDirectionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonDirectionConfig {
    /// `{default_value: bool}` (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<FeatureFlag>,
    /// Decode even when `cache-control: no-transform` is present.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_no_transform_header: bool,
}

/// Envoy's `Decompressor.RequestDirectionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDirectionConfig {
    #[serde(default)]
    pub common_config: CommonDirectionConfig,
    /// With response decoding on, add the library's encoding to the
    /// request's `accept-encoding` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_accept_encoding: Option<bool>,
}

/// Envoy's `Decompressor.ResponseDirectionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseDirectionConfig {
    #[serde(default)]
    pub common_config: CommonDirectionConfig,
}
