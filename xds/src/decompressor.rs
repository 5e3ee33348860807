//! Translation of Envoy's decompressor filter
//! (`envoy.extensions.filters.http.decompressor.v3.Decompressor`) into
//! meshgate's `decompressor` config, with the gzip, brotli or zstd library.
//! Runtime keys and zstd's `dictionaries` are refused by name (`rest`).
//! Envoy has no per-route config for it (only the generic disable).

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::extensions::compression::brotli::decompressor::v3 as brotli;
use envoy_types::pb::envoy::extensions::compression::gzip::decompressor::v3 as gzip;
use envoy_types::pb::envoy::extensions::compression::zstd::decompressor::v3 as zstd;
use envoy_types::pb::envoy::extensions::filters::http::decompressor::v3 as dec;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::compressor::FeatureFlag;
use meshgate_core::config::decompressor as dc;
use serde_json::Value;

pub(crate) const DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip";
const BROTLI: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd";
/// The filter's Envoy name.
pub(crate) const NAME: &str = "envoy.filters.http.decompressor";

/// The HCM `typed_config`.
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: dec::Decompressor =
        decode(any, DECOMPRESSOR).map_err(|e| (path.to_string(), e.to_string()))?;
    let lp = join(path, "decompressor_library");
    let Some(mut lib) = c.decompressor_library.take() else {
        return err(lp, "required");
    };
    let Some(tc) = lib.typed_config.take() else {
        return err(join(&lp, "typed_config"), "required");
    };
    let tp = join(&lp, "typed_config");
    let bad = |e: crate::translate::DecodeError| (tp.clone(), e.to_string());
    let mut out = dc::DecompressorLibrary {
        name: std::mem::take(&mut lib.name),
        ..Default::default()
    };
    match tc.type_url.as_str() {
        GZIP => {
            let mut g: gzip::Gzip = decode(&tc, GZIP).map_err(bad)?;
            out.gzip = Some(dc::GzipDecompressor {
                window_bits: g.window_bits.take().map(|v| v.value),
                chunk_size: g.chunk_size.take().map(|v| v.value),
                max_inflate_ratio: g.max_inflate_ratio.take().map(|v| v.value),
            });
            rest(&g, &tp)?;
        }
        BROTLI => {
            let mut b: brotli::Brotli = decode(&tc, BROTLI).map_err(bad)?;
            out.brotli = Some(dc::BrotliDecompressor {
                disable_ring_buffer_reallocation: std::mem::take(
                    &mut b.disable_ring_buffer_reallocation,
                ),
                chunk_size: b.chunk_size.take().map(|v| v.value),
            });
            rest(&b, &tp)?;
        }
        ZSTD => {
            let mut z: zstd::Zstd = decode(&tc, ZSTD).map_err(bad)?;
            out.zstd = Some(dc::ZstdDecompressor {
                chunk_size: z.chunk_size.take().map(|v| v.value),
            });
            // `dictionaries` is left for `rest` to refuse by name.
            rest(&z, &tp)?;
        }
        other => {
            return err(
                tp,
                format!("{other} is not supported (gzip, brotli or zstd)"),
            );
        }
    }
    rest(&lib, &lp)?;
    let mut cfg = dc::DecompressorConfig {
        decompressor_library: out,
        ..Default::default()
    };
    if let Some(mut r) = c.request_direction_config.take() {
        let rp = join(path, "request_direction_config");
        if let Some(common) = r.common_config.take() {
            cfg.request_direction_config.common_config =
                common_config(common, &join(&rp, "common_config"))?;
        }
        cfg.request_direction_config.advertise_accept_encoding =
            r.advertise_accept_encoding.take().map(|b| b.value);
        rest(&r, &rp)?;
    }
    if let Some(mut r) = c.response_direction_config.take() {
        let rp = join(path, "response_direction_config");
        if let Some(common) = r.common_config.take() {
            cfg.response_direction_config.common_config =
                common_config(common, &join(&rp, "common_config"))?;
        }
        rest(&r, &rp)?;
    }
    rest(&c, path)?;
    serde_json::to_value(&cfg).map_err(|e| (path.to_string(), e.to_string()))
}

fn common_config(
    mut c: dec::decompressor::CommonDirectionConfig,
    path: &str,
) -> R<dc::CommonDirectionConfig> {
    let mut out = dc::CommonDirectionConfig {
        ignore_no_transform_header: std::mem::take(&mut c.ignore_no_transform_header),
        ..Default::default()
    };
    if let Some(mut e) = c.enabled.take() {
        out.enabled = Some(FeatureFlag {
            default_value: e.default_value.take().is_none_or(|b| b.value),
        });
        // A runtime key is refused by name.
        rest(&e, &join(path, "enabled"))?;
    }
    rest(&c, path)?;
    Ok(out)
}

/// Envoy has no `typed_per_filter_config` for this filter beyond the
/// generic disable.
pub(crate) fn per_route(_any: &protobuf::Any, path: &str) -> R<Value> {
    err(path, "the decompressor filter has no per-route config")
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
    fn translates_and_refuses_by_name() {
        let c = dec::Decompressor {
            decompressor_library: lib(
                GZIP,
                &gzip::Gzip {
                    max_inflate_ratio: Some(protobuf::UInt32Value { value: 20 }),
                    ..Default::default()
                },
            ),
            request_direction_config: Some(dec::decompressor::RequestDirectionConfig {
                common_config: Some(dec::decompressor::CommonDirectionConfig {
                    ignore_no_transform_header: true,
                    ..Default::default()
                }),
                advertise_accept_encoding: Some(protobuf::BoolValue { value: false }),
            }),
            response_direction_config: Some(dec::decompressor::ResponseDirectionConfig {
                common_config: Some(dec::decompressor::CommonDirectionConfig {
                    enabled: Some(
                        envoy_types::pb::envoy::config::core::v3::RuntimeFeatureFlag {
                            default_value: Some(protobuf::BoolValue { value: false }),
                            runtime_key: String::new(),
                        },
                    ),
                    ..Default::default()
                }),
            }),
        };
        let v = filter(&any(DECOMPRESSOR, &c), "f").unwrap();
        let back: dc::DecompressorConfig = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.decompressor_library.gzip.unwrap().max_inflate_ratio,
            Some(20)
        );
        assert!(
            back.request_direction_config
                .common_config
                .ignore_no_transform_header
        );
        assert_eq!(
            back.request_direction_config.advertise_accept_encoding,
            Some(false)
        );
        assert_eq!(
            back.response_direction_config.common_config.enabled,
            Some(FeatureFlag {
                default_value: false
            })
        );
        let c = dec::Decompressor {
            decompressor_library: lib(
                ZSTD,
                &zstd::Zstd {
                    dictionaries: vec![Default::default()],
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        let e = filter(&any(DECOMPRESSOR, &c), "f").unwrap_err();
        assert!(e.0.contains("dictionaries"), "{e:?}");
        let c = dec::Decompressor {
            decompressor_library: lib(BROTLI, &brotli::Brotli::default()),
            ..Default::default()
        };
        let v = filter(&any(DECOMPRESSOR, &c), "f").unwrap();
        assert!(v["decompressor_library"]["brotli"].is_object(), "{v}");
    }
}
