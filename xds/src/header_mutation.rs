//! Translation of Envoy's header mutation filter
//! (`envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`, per
//! route `HeaderMutationPerRoute`) into meshgate's `header_mutation`
//! config. Query-parameter and trailer mutations, `remove_on_match`,
//! `keep_empty_value`, the deprecated `append` and `raw_value` are refused
//! by name (`rest`).

use crate::translate::{R, decode, err, join, rest};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as hm;
use envoy_types::pb::google::protobuf;
use meshgate_core::config::header_mutation as cfg;
use serde_json::Value;

pub(crate) const FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";
pub(crate) const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute";
/// The filter's Envoy name.
pub(crate) const NAME: &str = "envoy.filters.http.header_mutation";

fn list(v: Vec<rules::HeaderMutation>, path: &str) -> R<Vec<cfg::MutationConfig>> {
    use rules::header_mutation::Action;
    let mut out = Vec::with_capacity(v.len());
    for (i, m) in v.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        out.push(match m.action {
            Some(Action::Remove(r)) => cfg::MutationConfig {
                remove: Some(r),
                append: None,
            },
            Some(Action::Append(mut a)) => {
                let ap = join(&p, "append");
                let Some(mut h) = a.header.take() else {
                    return err(join(&ap, "header"), "required");
                };
                let action = envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::try_from(a.append_action)
                    .map_err(|_| (join(&ap, "append_action"), "unknown value".to_string()))?;
                a.append_action = 0;
                let key = std::mem::take(&mut h.key);
                let value = std::mem::take(&mut h.value);
                rest(&h, &join(&ap, "header"))?;
                rest(&a, &ap)?;
                cfg::MutationConfig {
                    remove: None,
                    append: Some(cfg::AppendConfig {
                        header: cfg::HeaderKeyValue { key, value },
                        append_action: Some(action.as_str_name().to_string()),
                    }),
                }
            }
            Some(Action::RemoveOnMatch(_)) => {
                return err(
                    join(&p, "remove_on_match"),
                    "field not supported by meshgate (refused rather than ignored)",
                );
            }
            None => return err(p, "set remove or append"),
        });
    }
    Ok(out)
}

fn mutations(m: Option<hm::Mutations>, path: &str) -> R<cfg::MutationsConfig> {
    let Some(mut m) = m else {
        return Ok(Default::default());
    };
    let out = cfg::MutationsConfig {
        request_mutations: list(
            std::mem::take(&mut m.request_mutations),
            &join(path, "request_mutations"),
        )?,
        response_mutations: list(
            std::mem::take(&mut m.response_mutations),
            &join(path, "response_mutations"),
        )?,
    };
    rest(&m, path)?;
    Ok(out)
}

/// The HCM `typed_config`.
pub(crate) fn filter(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: hm::HeaderMutation =
        decode(any, FILTER).map_err(|e| (path.to_string(), e.to_string()))?;
    let out = cfg::HeaderMutationConfig {
        mutations: mutations(c.mutations.take(), &join(path, "mutations"))?,
        most_specific_header_mutations_wins: std::mem::take(
            &mut c.most_specific_header_mutations_wins,
        ),
    };
    rest(&c, path)?;
    serde_json::to_value(out).map_err(|e| (path.to_string(), e.to_string()))
}

/// A `typed_per_filter_config` value.
pub(crate) fn per_route(any: &protobuf::Any, path: &str) -> R<Value> {
    let mut c: hm::HeaderMutationPerRoute =
        decode(any, PER_ROUTE).map_err(|e| (path.to_string(), e.to_string()))?;
    let out = cfg::HeaderMutationPerRoute {
        mutations: mutations(c.mutations.take(), &join(path, "mutations"))?,
    };
    rest(&c, path)?;
    serde_json::to_value(out).map_err(|e| (path.to_string(), e.to_string()))
}
