//! Translation of Envoy HCM's `local_reply_config` into meshgate's
//! (`meshgate_core::config::local_reply`). Access log filters other than
//! status code, header, and/or, not-health-check and response flag are
//! refused by name; so are data sources other than `inline_string` and
//! custom `formatters`. Command operators are checked when the `proxy`
//! filter is built (the same check as for YAML), which NACKs the update.

use crate::translate::{R, err, header_options, join, rest, struct_json};
use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::config::core::v3 as core3;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use meshgate_core::config::local_reply as lr;

pub(crate) fn local_reply_config(
    mut c: hcm::LocalReplyConfig,
    path: &str,
) -> R<lr::LocalReplyConfig> {
    let mut mappers = Vec::new();
    for (i, mut m) in std::mem::take(&mut c.mappers).into_iter().enumerate() {
        let p = format!("{path}.mappers[{i}]");
        let Some(f) = m.filter.take() else {
            return err(join(&p, "filter"), "missing filter");
        };
        let filter = access_log_filter(f, &join(&p, "filter"))?;
        let status_code = match m.status_code.take() {
            None => None,
            Some(v) => Some(
                u16::try_from(v.value)
                    .map_err(|_| (join(&p, "status_code"), "must be in 200..=599".to_string()))?,
            ),
        };
        let body = match m.body.take() {
            None => None,
            Some(d) => Some(data_source(d, &join(&p, "body"))?),
        };
        let body_format_override = match m.body_format_override.take() {
            None => None,
            Some(f) => Some(format(f, &join(&p, "body_format_override"))?),
        };
        let headers_to_add = header_options(
            std::mem::take(&mut m.headers_to_add),
            &join(&p, "headers_to_add"),
        )?;
        rest(&m, &p)?;
        mappers.push(lr::ResponseMapper {
            filter,
            status_code,
            body,
            body_format_override,
            headers_to_add,
        });
    }
    let body_format = match c.body_format.take() {
        None => None,
        Some(f) => Some(format(f, &join(path, "body_format"))?),
    };
    rest(&c, path)?;
    Ok(lr::LocalReplyConfig {
        mappers,
        body_format,
    })
}

pub(crate) fn access_log_filter(mut f: al::AccessLogFilter, path: &str) -> R<lr::AccessLogFilter> {
    use al::access_log_filter::FilterSpecifier as S;
    let mut out = lr::AccessLogFilter::default();
    let list = |filters: Vec<al::AccessLogFilter>, p: &str| -> R<lr::FilterList> {
        let filters = filters
            .into_iter()
            .enumerate()
            .map(|(i, f)| access_log_filter(f, &format!("{p}.filters[{i}]")))
            .collect::<R<Vec<_>>>()?;
        Ok(lr::FilterList { filters })
    };
    match f.filter_specifier.take() {
        Some(S::StatusCodeFilter(mut s)) => {
            let p = join(path, "status_code_filter");
            let Some(c) = s.comparison.take() else {
                return err(join(&p, "comparison"), "missing comparison");
            };
            let comparison = comparison(c, &join(&p, "comparison"))?;
            rest(&s, &p)?;
            out.status_code_filter = Some(lr::StatusCodeFilter { comparison });
        }
        Some(S::HeaderFilter(mut h)) => {
            let p = join(path, "header_filter");
            let Some(m) = h.header.take() else {
                return err(join(&p, "header"), "missing header");
            };
            let header = crate::translate::header_matcher(m, &join(&p, "header"))?;
            rest(&h, &p)?;
            out.header_filter = Some(lr::HeaderFilter { header });
        }
        Some(S::AndFilter(mut a)) => {
            let p = join(path, "and_filter");
            out.and_filter = Some(list(std::mem::take(&mut a.filters), &p)?);
            rest(&a, &p)?;
        }
        Some(S::OrFilter(mut o)) => {
            let p = join(path, "or_filter");
            out.or_filter = Some(list(std::mem::take(&mut o.filters), &p)?);
            rest(&o, &p)?;
        }
        Some(S::NotHealthCheckFilter(n)) => {
            rest(&n, &join(path, "not_health_check_filter"))?;
            out.not_health_check_filter = Some(lr::Empty {});
        }
        Some(S::ResponseFlagFilter(mut r)) => {
            let p = join(path, "response_flag_filter");
            out.response_flag_filter = Some(lr::ResponseFlagFilter {
                flags: std::mem::take(&mut r.flags),
            });
            rest(&r, &p)?;
        }
        Some(S::DurationFilter(mut d)) => {
            let p = join(path, "duration_filter");
            let Some(c) = d.comparison.take() else {
                return err(join(&p, "comparison"), "missing comparison");
            };
            let comparison = comparison(c, &join(&p, "comparison"))?;
            rest(&d, &p)?;
            out.duration_filter = Some(lr::StatusCodeFilter { comparison });
        }
        Some(S::TraceableFilter(t)) => {
            rest(&t, &join(path, "traceable_filter"))?;
            out.traceable_filter = Some(lr::Empty {});
        }
        Some(S::RuntimeFilter(mut r)) => {
            let p = join(path, "runtime_filter");
            let percent_sampled =
                crate::fault::percent(r.percent_sampled.take(), &join(&p, "percent_sampled"))?;
            out.runtime_filter = Some(lr::RuntimeFilter {
                runtime_key: std::mem::take(&mut r.runtime_key),
                percent_sampled,
                use_independent_randomness: std::mem::take(&mut r.use_independent_randomness),
            });
            rest(&r, &p)?;
        }
        Some(S::GrpcStatusFilter(mut g)) => {
            let p = join(path, "grpc_status_filter");
            let mut statuses = Vec::new();
            for (i, s) in std::mem::take(&mut g.statuses).into_iter().enumerate() {
                match al::grpc_status_filter::Status::try_from(s) {
                    Ok(s) => statuses.push(s.as_str_name().to_string()),
                    Err(_) => return err(format!("{p}.statuses[{i}]"), "unknown status"),
                }
            }
            out.grpc_status_filter = Some(lr::GrpcStatusFilter {
                statuses,
                exclude: std::mem::take(&mut g.exclude),
            });
            rest(&g, &p)?;
        }
        Some(S::MetadataFilter(mut m)) => {
            let p = join(path, "metadata_filter");
            let matcher = match m.matcher.take() {
                Some(x) => Some(crate::rbac::metadata(x, &join(&p, "matcher"))?),
                None => None,
            };
            out.metadata_filter = Some(lr::MetadataFilter {
                matcher,
                match_if_key_not_found: m.match_if_key_not_found.take().map(|b| b.value),
            });
            rest(&m, &p)?;
        }
        None => return err(path, "missing filter"),
        Some(S::ExtensionFilter(_)) => {
            return err(
                join(path, "extension_filter"),
                "extension access log filters are not supported",
            );
        }
        Some(S::LogTypeFilter(_)) => {
            return err(
                join(path, "log_type_filter"),
                "log type filters are not supported (meshgate logs once per stream)",
            );
        }
    }
    rest(&f, path)?;
    Ok(out)
}

fn comparison(mut c: al::ComparisonFilter, cp: &str) -> R<lr::ComparisonFilter> {
    use al::comparison_filter::Op;
    let op = match Op::try_from(std::mem::take(&mut c.op)) {
        Ok(Op::Eq) => lr::ComparisonOp::Eq,
        Ok(Op::Ge) => lr::ComparisonOp::Ge,
        Ok(Op::Le) => lr::ComparisonOp::Le,
        Ok(Op::Ne) => lr::ComparisonOp::Ne,
        Err(_) => return err(join(cp, "op"), "unknown op"),
    };
    let Some(mut v) = c.value.take() else {
        return err(join(cp, "value"), "missing value");
    };
    let value = lr::RuntimeUInt32 {
        default_value: std::mem::take(&mut v.default_value),
        runtime_key: std::mem::take(&mut v.runtime_key),
    };
    rest(&v, &join(cp, "value"))?;
    rest(&c, cp)?;
    Ok(lr::ComparisonFilter { op, value })
}

pub(crate) fn data_source(mut d: core3::DataSource, path: &str) -> R<lr::DataSource> {
    use core3::data_source::Specifier;
    let s = match d.specifier.take() {
        Some(Specifier::InlineString(s)) => s,
        _ => return err(path, "only inline_string is supported"),
    };
    rest(&d, path)?;
    Ok(lr::DataSource { inline_string: s })
}

#[allow(deprecated)]
pub(crate) fn format(
    mut f: core3::SubstitutionFormatString,
    path: &str,
) -> R<lr::SubstitutionFormatString> {
    use core3::substitution_format_string::Format;
    let mut out = lr::SubstitutionFormatString {
        omit_empty_values: std::mem::take(&mut f.omit_empty_values),
        content_type: Some(std::mem::take(&mut f.content_type)).filter(|c| !c.is_empty()),
        ..Default::default()
    };
    match f.format.take() {
        Some(Format::TextFormat(t)) => out.text_format = Some(t),
        Some(Format::TextFormatSource(d)) => {
            out.text_format_source = Some(data_source(d, &join(path, "text_format_source"))?)
        }
        Some(Format::JsonFormat(s)) => match struct_json(&s) {
            serde_json::Value::Object(m) => out.json_format = Some(m),
            _ => return err(join(path, "json_format"), "not an object"),
        },
        None => {
            return err(
                path,
                "one of text_format, text_format_source, json_format is needed",
            );
        }
    }
    rest(&f, path)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn status_eq(code: u32) -> al::AccessLogFilter {
        al::AccessLogFilter {
            filter_specifier: Some(al::access_log_filter::FilterSpecifier::StatusCodeFilter(
                al::StatusCodeFilter {
                    comparison: Some(al::ComparisonFilter {
                        op: al::comparison_filter::Op::Ge as i32,
                        value: Some(core3::RuntimeUInt32 {
                            default_value: code,
                            runtime_key: "k".into(),
                        }),
                    }),
                },
            )),
        }
    }

    #[test]
    fn mappers_and_format_are_translated() {
        let c = hcm::LocalReplyConfig {
            mappers: vec![hcm::ResponseMapper {
                filter: Some(status_eq(500)),
                status_code: Some(UInt32Value { value: 502 }),
                ..Default::default()
            }],
            body_format: Some(core3::SubstitutionFormatString {
                format: Some(core3::substitution_format_string::Format::TextFormatSource(
                    core3::DataSource {
                        specifier: Some(core3::data_source::Specifier::InlineString(
                            "%RESPONSE_CODE%".into(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
        };
        let out = local_reply_config(c, "hcm.local_reply_config").unwrap();
        assert_eq!(out.mappers[0].status_code, Some(502));
        let f = out.mappers[0].filter.status_code_filter.as_ref().unwrap();
        assert_eq!(f.comparison.op, lr::ComparisonOp::Ge);
        assert_eq!(f.comparison.value.default_value, 500);
        let body = out.body_format.unwrap().text_format_source.unwrap();
        assert_eq!(body.inline_string, "%RESPONSE_CODE%");
    }

    #[test]
    fn unsupported_filters_and_sources_are_refused_by_name() {
        let c = hcm::LocalReplyConfig {
            mappers: vec![hcm::ResponseMapper {
                filter: Some(al::AccessLogFilter {
                    filter_specifier: Some(al::access_log_filter::FilterSpecifier::DurationFilter(
                        al::DurationFilter::default(),
                    )),
                }),
                ..Default::default()
            }],
            body_format: None,
        };
        let (field, _) = local_reply_config(c, "lrc").unwrap_err();
        assert_eq!(field, "lrc.mappers[0].filter.duration_filter.comparison");
        let c = hcm::LocalReplyConfig {
            mappers: vec![hcm::ResponseMapper {
                filter: Some(status_eq(400)),
                body: Some(core3::DataSource {
                    specifier: Some(core3::data_source::Specifier::Filename("/etc/x".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            body_format: None,
        };
        let (field, _) = local_reply_config(c, "lrc").unwrap_err();
        assert_eq!(field, "lrc.mappers[0].body");
    }
}
