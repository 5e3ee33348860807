//! Config of the `compressor` stream filter (Envoy's
//! `envoy.extensions.filters.http.compressor.v3.Compressor` and
//! `CompressorPerRoute`), the contract between the filter and the xDS
//! translator. Only what meshgate implements is here, so
//! `deny_unknown_fields` refuses the rest by name (`request_direction_config`,
//! runtime keys, zstd's `dictionary`).

use serde::{Deserialize, Serialize};

/// The filter's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorConfig {
    /// The encoder (Envoy's `TypedExtensionConfig`: here one key per
    /// library, exactly one of `gzip`, `brotli`, `zstd`).
    pub compressor_library: CompressorLibrary,
    #[serde(default)]
    pub response_direction_config: ResponseDirectionConfig,
    /// With several compressor filters on a listener: this one wins when
    /// the client's q-values tie (the last one that sets it, as in Envoy);
    /// otherwise the first filter in the chain wins a tie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub choose_first: bool,
}

/// Envoy's `compressor_library`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorLibrary {
    /// The extension's name (informational, as in Envoy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `envoy.extensions.compression.gzip.compressor.v3.Gzip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<GzipConfig>,
    /// `envoy.extensions.compression.brotli.compressor.v3.Brotli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brotli: Option<BrotliConfig>,
    /// `envoy.extensions.compression.zstd.compressor.v3.Zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<ZstdConfig>,
}

/// Envoy's brotli compressor library (`content-encoding: br`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrotliConfig {
    /// 0..=11 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u32>,
    /// `DEFAULT` (= `GENERIC`), `GENERIC`, `TEXT` or `FONT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_mode: Option<String>,
    /// log2 of the sliding window, 10..=24 (default 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_bits: Option<u32>,
    /// log2 of the input block, 16..=24 (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_block_bits: Option<u32>,
    /// The encoder's output buffer, 4096..=65536 bytes (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// Turns literal context modeling off (faster, larger output).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_literal_context_modeling: bool,
}

/// Envoy's zstd compressor library (`content-encoding: zstd`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZstdConfig {
    /// 1..=22 (default 3, zstd's default level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u32>,
    /// Append a content checksum to the frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_checksum: bool,
    /// `DEFAULT`, `FAST`, `DFAST`, `GREEDY`, `LAZY`, `LAZY2`, `BTLAZY2`,
    /// `BTOPT`, `BTULTRA`, `BTULTRA2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Output buffer hint: refused (meshgate emits one compressed chunk per
    /// body chunk; zstd's stream buffer is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

/// Envoy's gzip compressor library.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GzipConfig {
    /// `DEFAULT_COMPRESSION` (level 6), `BEST_SPEED` (1),
    /// `COMPRESSION_LEVEL_1` .. `COMPRESSION_LEVEL_9`, `BEST_COMPRESSION` (9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<String>,
    /// zlib's `memLevel` (1..=9): validated; the encoder's memory use is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_level: Option<u32>,
    /// zlib's window (9..=15): validated; the encoder uses a 32 KiB window,
    /// which every gzip decoder accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_bits: Option<u32>,
    /// Output buffer hint (4096..=65536): validated; meshgate emits one
    /// compressed chunk per body chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

/// Envoy's `Compressor.ResponseDirectionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseDirectionConfig {
    #[serde(default)]
    pub common_config: CommonDirectionConfig,
    /// Do not compress a response that carries an `ETag`.
    #[serde(default)]
    pub disable_on_etag_header: bool,
    /// Keep weak ETags and turn strong ones weak (`W/`) when compressing;
    /// otherwise (Envoy's default) a strong ETag is removed.
    #[serde(default)]
    pub weaken_etag_on_compress: bool,
    /// Remove `accept-encoding` from the request the upstream gets.
    #[serde(default)]
    pub remove_accept_encoding_header: bool,
    /// Response statuses never compressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncompressible_response_codes: Vec<u32>,
}

/// Envoy's `CommonDirectionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonDirectionConfig {
    /// `{default_value: bool}` (a `runtime_key` is refused): off disables
    /// compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<FeatureFlag>,
    /// Responses whose `content-length` is below this are not compressed
    /// (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_content_length: Option<u32>,
    /// Media types compressed (default: Envoy's list of text types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_type: Vec<String>,
}

/// Envoy's `RuntimeFeatureFlag` without its runtime key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFlag {
    pub default_value: bool,
}

/// Envoy's `CompressorPerRoute` (`{disabled: true}` is the chain's generic
/// switch and never reaches the filter).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorPerRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<CompressorOverrides>,
}

/// Envoy's `CompressorOverrides` (`compressor_library` is refused).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_direction_config: Option<ResponseDirectionOverrides>,
}

/// Envoy's `ResponseDirectionOverrides`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseDirectionOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_accept_encoding_header: Option<bool>,
}
