//! Translation of Envoy's compressor filter
//! (`envoy.extensions.filters.http.compressor.v3.Compressor`, per route
//! `CompressorPerRoute`) into meshgate's `compressor` config, with the gzip,
//! brotli or zstd library. `request_direction_config`, runtime keys, zstd's
//! `dictionary` and the deprecated top-level fields are refused by name
//! (`rest`).

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::extensions::compression::brotli::compressor::v3 as brotli;
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3 as gzip;
use envoy_types::pb::envoy::extensions::compression::zstd::compressor::v3 as zstd;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as comp;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::compressor as cc;
use serde_json::Value;

pub(crate) const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
pub(crate) const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";
/// The filter's Envoy name.
pub(crate) const NAME: &str = "envoy.filters.http.compressor";

macro_rules! to_value {
    ($v:expr, $path:expr) => {
        serde_json::to_value($v).map_err(|e| ($path.to_string(), e.to_string()))
    };
}

/// The HCM `typed_config`.
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: comp::Compressor =
        decode(any, COMPRESSOR).map_err(|e| (path.to_string(), e.to_string()))?;
    let lp = join(path, "compressor_library");
    let Some(mut lib) = c.compressor_library.take() else {
        return err(lp, "required");
    };
    let Some(tc) = lib.typed_config.take() else {
        return err(join(&lp, "typed_config"), "required");
    };
    let gp = join(&lp, "typed_config");
    let mut out_lib = match tc.type_url.as_str() {
        GZIP => gzip_library(&tc, &gp)?,
        BROTLI => brotli_library(&tc, &gp)?,
        ZSTD => zstd_library(&tc, &gp)?,
        other => {
            return err(
                gp,
                format!("{other} is not supported (gzip, brotli or zstd)"),
            );
        }
    };
    out_lib.name = std::mem::take(&mut lib.name);
    rest(&lib, &lp)?;
    let choose_first = std::mem::take(&mut c.choose_first);
    let resp = response_direction(&mut c, path)?;
    rest(&c, path)?;
    to_value!(
        &cc::CompressorConfig {
            compressor_library: out_lib,
            response_direction_config: resp,
            choose_first,
        },
        path
    )
}

fn brotli_library(tc: &protobuf::Any, gp: &str) -> R<cc::CompressorLibrary> {
    let mut b: brotli::Brotli = decode(tc, BROTLI).map_err(|e| (gp.to_string(), e.to_string()))?;
    let mode = brotli::brotli::EncoderMode::try_from(b.encoder_mode)
        .map_err(|_| (join(gp, "encoder_mode"), "unknown value".to_string()))?;
    let out = cc::BrotliConfig {
        quality: b.quality.take().map(|v| v.value),
        encoder_mode: match mode.as_str_name() {
            "DEFAULT" => None,
            n => Some(n.to_string()),
        },
        window_bits: b.window_bits.take().map(|v| v.value),
        input_block_bits: b.input_block_bits.take().map(|v| v.value),
        chunk_size: b.chunk_size.take().map(|v| v.value),
        disable_literal_context_modeling: std::mem::take(&mut b.disable_literal_context_modeling),
    };
    b.encoder_mode = 0;
    rest(&b, gp)?;
    Ok(cc::CompressorLibrary {
        brotli: Some(out),
        ..Default::default()
    })
}

fn zstd_library(tc: &protobuf::Any, gp: &str) -> R<cc::CompressorLibrary> {
    let mut z: zstd::Zstd = decode(tc, ZSTD).map_err(|e| (gp.to_string(), e.to_string()))?;
    let strategy = zstd::zstd::Strategy::try_from(z.strategy)
        .map_err(|_| (join(gp, "strategy"), "unknown value".to_string()))?;
    let out = cc::ZstdConfig {
        compression_level: z.compression_level.take().map(|v| v.value),
        enable_checksum: std::mem::take(&mut z.enable_checksum),
        strategy: match strategy.as_str_name() {
            "DEFAULT" => None,
            n => Some(n.to_string()),
        },
        chunk_size: z.chunk_size.take().map(|v| v.value),
    };
    z.strategy = 0;
    // `dictionary` is left for `rest` to refuse by name.
    rest(&z, gp)?;
    Ok(cc::CompressorLibrary {
        zstd: Some(out),
        ..Default::default()
    })
}

fn gzip_library(tc: &protobuf::Any, gp: &str) -> R<cc::CompressorLibrary> {
    let gp = gp.to_string();
    let mut g: gzip::Gzip = decode(tc, GZIP).map_err(|e| (gp.clone(), e.to_string()))?;
    if g.compression_strategy != 0 {
        return err(join(&gp, "compression_strategy"), "only DEFAULT_STRATEGY");
    }
    let level = gzip::gzip::CompressionLevel::try_from(g.compression_level)
        .map_err(|_| (join(&gp, "compression_level"), "unknown value".to_string()))?;
    let level = match level.as_str_name() {
        "DEFAULT_COMPRESSION" => None,
        n => Some(n.to_string()),
    };
    let out_lib = cc::CompressorLibrary {
        gzip: Some(cc::GzipConfig {
            compression_level: level,
            memory_level: g.memory_level.take().map(|v| v.value),
            window_bits: g.window_bits.take().map(|v| v.value),
            chunk_size: g.chunk_size.take().map(|v| v.value),
        }),
        ..Default::default()
    };
    g.compression_level = 0;
    rest(&g, &gp)?;
    Ok(out_lib)
}

/// `response_direction_config`, taken out of `c`.
fn response_direction(c: &mut comp::Compressor, path: &str) -> R<cc::ResponseDirectionConfig> {
    let mut resp = cc::ResponseDirectionConfig::default();
    if let Some(mut r) = c.response_direction_config.take() {
        let rp = join(path, "response_direction_config");
        if let Some(mut common) = r.common_config.take() {
            let cp = join(&rp, "common_config");
            if let Some(mut e) = common.enabled.take() {
                let ep = join(&cp, "enabled");
                resp.common_config.enabled = Some(cc::FeatureFlag {
                    default_value: e.default_value.take().is_none_or(|b| b.value),
                });
                rest(&e, &ep)?;
            }
            resp.common_config.min_content_length =
                common.min_content_length.take().map(|v| v.value);
            #[allow(deprecated)]
            let types = std::mem::take(&mut common.content_type);
            resp.common_config.content_type = types;
            rest(&common, &cp)?;
        }
        resp.disable_on_etag_header = std::mem::take(&mut r.disable_on_etag_header);
        resp.weaken_etag_on_compress = std::mem::take(&mut r.weaken_etag_on_compress);
        resp.remove_accept_encoding_header = std::mem::take(&mut r.remove_accept_encoding_header);
        resp.uncompressible_response_codes = std::mem::take(&mut r.uncompressible_response_codes);
        rest(&r, &rp)?;
    }
    Ok(resp)
}

/// A `typed_per_filter_config` value.
pub(crate) fn per_route(any: &protobuf::Any, path: &str) -> R<Value> {
    use comp::compressor_per_route::Override;
    let c: comp::CompressorPerRoute =
        decode(any, PER_ROUTE).map_err(|e| (path.to_string(), e.to_string()))?;
    match c.r#override {
        None => err(join(path, "override"), "set disabled or overrides"),
        Some(Override::Disabled(d)) => Ok(serde_json::json!({"disabled": d})),
        Some(Override::Overrides(mut o)) => {
            let op = join(path, "overrides");
            let r = o.response_direction_config.take();
            rest(&o, &op)?;
            to_value!(
                &cc::CompressorPerRoute {
                    disabled: None,
                    overrides: Some(cc::CompressorOverrides {
                        response_direction_config: Some(cc::ResponseDirectionOverrides {
                            remove_accept_encoding_header: r
                                .and_then(|r| r.remove_accept_encoding_header)
                                .map(|b| b.value),
                        }),
                    }),
                },
                path
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any<M: Message>(url: &str, m: &M) -> protobuf::Any {
        protobuf::Any {
            type_url: url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    fn gzip_lib(
        g: gzip::Gzip,
    ) -> Option<envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig> {
        Some(
            envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "text".into(),
                typed_config: Some(any(GZIP, &g)),
            },
        )
    }

    #[test]
    fn gzip_compressor_translates() {
        let c = comp::Compressor {
            compressor_library: gzip_lib(gzip::Gzip {
                compression_level: 9,
                ..Default::default()
            }),
            response_direction_config: Some(comp::compressor::ResponseDirectionConfig {
                common_config: Some(comp::compressor::CommonDirectionConfig {
                    min_content_length: Some(protobuf::UInt32Value { value: 100 }),
                    ..Default::default()
                }),
                weaken_etag_on_compress: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = filter(&any(COMPRESSOR, &c), "f").unwrap();
        let back: cc::CompressorConfig = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.compressor_library
                .gzip
                .unwrap()
                .compression_level
                .as_deref(),
            Some("COMPRESSION_LEVEL_9")
        );
        assert_eq!(
            back.response_direction_config
                .common_config
                .min_content_length,
            Some(100)
        );
        assert!(back.response_direction_config.weaken_etag_on_compress);
    }

    #[test]
    fn unsupported_parts_are_refused_by_name() {
        let c = comp::Compressor {
            compressor_library: gzip_lib(gzip::Gzip::default()),
            request_direction_config: Some(Default::default()),
            ..Default::default()
        };
        let request_dir = comp::compressor::RequestDirectionConfig {
            common_config: Some(Default::default()),
        };
        let c = comp::Compressor {
            request_direction_config: Some(request_dir),
            ..c
        };
        let e = filter(&any(COMPRESSOR, &c), "f").unwrap_err();
        assert!(e.0.contains("request_direction_config"), "{e:?}");
        let c = comp::Compressor {
            compressor_library: lib(
                ZSTD,
                &zstd::Zstd {
                    dictionary: Some(Default::default()),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        let e = filter(&any(COMPRESSOR, &c), "f").unwrap_err();
        assert!(e.0.contains("dictionary"), "{e:?}");
        let c = comp::Compressor {
            compressor_library: Some(
                envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                    name: "x".into(),
                    typed_config: Some(protobuf::Any {
                        type_url: "type.example/Lz4".into(),
                        value: vec![],
                    }),
                },
            ),
            ..Default::default()
        };
        let e = filter(&any(COMPRESSOR, &c), "f").unwrap_err();
        assert!(e.1.contains("Lz4"), "{e:?}");
    }

    fn lib<M: Message>(
        url: &str,
        m: &M,
    ) -> Option<envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig> {
        Some(
            envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "l".into(),
                typed_config: Some(any(url, m)),
            },
        )
    }

    #[test]
    fn brotli_and_zstd_translate() {
        let c = comp::Compressor {
            compressor_library: lib(
                BROTLI,
                &brotli::Brotli {
                    quality: Some(protobuf::UInt32Value { value: 5 }),
                    encoder_mode: brotli::brotli::EncoderMode::Text as i32,
                    window_bits: Some(protobuf::UInt32Value { value: 20 }),
                    chunk_size: Some(protobuf::UInt32Value { value: 8192 }),
                    disable_literal_context_modeling: true,
                    ..Default::default()
                },
            ),
            choose_first: true,
            ..Default::default()
        };
        let v = filter(&any(COMPRESSOR, &c), "f").unwrap();
        let back: cc::CompressorConfig = serde_json::from_value(v).unwrap();
        assert!(back.choose_first);
        assert_eq!(
            back.compressor_library.brotli,
            Some(cc::BrotliConfig {
                quality: Some(5),
                encoder_mode: Some("TEXT".into()),
                window_bits: Some(20),
                input_block_bits: None,
                chunk_size: Some(8192),
                disable_literal_context_modeling: true,
            })
        );
        let c = comp::Compressor {
            compressor_library: lib(
                ZSTD,
                &zstd::Zstd {
                    compression_level: Some(protobuf::UInt32Value { value: 9 }),
                    enable_checksum: true,
                    strategy: zstd::zstd::Strategy::Btopt as i32,
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        let v = filter(&any(COMPRESSOR, &c), "f").unwrap();
        let back: cc::CompressorConfig = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.compressor_library.zstd,
            Some(cc::ZstdConfig {
                compression_level: Some(9),
                enable_checksum: true,
                strategy: Some("BTOPT".into()),
                chunk_size: None,
            })
        );
    }
}
