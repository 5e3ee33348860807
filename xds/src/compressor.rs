//! Translation of Envoy's compressor filter
//! (`envoy.extensions.filters.http.compressor.v3.Compressor`, per route
//! `CompressorPerRoute`) into meshgate's `compressor` config. Only the gzip
//! library is shipped: brotli, zstd, `request_direction_config`,
//! `choose_first`, runtime keys and the deprecated top-level fields are
//! refused by name (`rest`).

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3 as gzip;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as comp;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::compressor as cc;
use serde_json::Value;

pub(crate) const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
pub(crate) const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
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
    if tc.type_url != GZIP {
        return err(
            join(&lp, "typed_config"),
            format!("{} is not supported (only gzip)", tc.type_url),
        );
    }
    let gp = join(&lp, "typed_config");
    let mut g: gzip::Gzip = decode(&tc, GZIP).map_err(|e| (gp.clone(), e.to_string()))?;
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
        name: std::mem::take(&mut lib.name),
        gzip: Some(cc::GzipConfig {
            compression_level: level,
            memory_level: g.memory_level.take().map(|v| v.value),
            window_bits: g.window_bits.take().map(|v| v.value),
            chunk_size: g.chunk_size.take().map(|v| v.value),
        }),
    };
    g.compression_level = 0;
    rest(&g, &gp)?;
    rest(&lib, &lp)?;
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
    rest(&c, path)?;
    to_value!(
        &cc::CompressorConfig {
            compressor_library: out_lib,
            response_direction_config: resp,
        },
        path
    )
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
            compressor_library: Some(envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "br".into(),
                typed_config: Some(protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli".into(),
                    value: vec![],
                }),
            }),
            ..Default::default()
        };
        let e = filter(&any(COMPRESSOR, &c), "f").unwrap_err();
        assert!(e.1.contains("brotli"), "{e:?}");
    }
}
