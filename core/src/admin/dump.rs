//! `/config_dump` with Envoy's query parameters (`resource`, `mask`,
//! `name_regex`, `include_eds`) and `/certs` (every certificate the
//! config names: subject, SANs, expiry).

use crate::snapshot::Snapshot;
use serde_json::{Map, Value};

/// Resource names `?resource=` takes: meshgate's config keys, and Envoy's
/// config-dump names for the same things.
fn resource_key(r: &str) -> Option<&'static str> {
    Some(match r {
        "listeners" | "static_listeners" | "dynamic_listeners" | "dynamic_active_listeners" => {
            "listeners"
        }
        "clusters" | "static_clusters" | "dynamic_active_clusters" => "clusters",
        "clusters_state" | "dynamic_endpoint_configs" | "static_endpoint_configs" => {
            "clusters_state"
        }
        _ => return None,
    })
}

/// The dump after the query's parameters; `Err` names the bad one.
pub(super) fn config_dump(snap: &Snapshot, q: &[(String, String)]) -> Result<Value, String> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let include_eds = q.iter().any(|(n, _)| n == "include_eds");
    let name_re = match get("name_regex") {
        Some(r) => Some(
            regex::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("name_regex: invalid regex: {e}"))?,
        ),
        None => None,
    };
    let mask: Option<Vec<Vec<&str>>> = get("mask").map(|m| {
        m.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('.').collect())
            .collect()
    });
    let mut dump = snap.dump();
    redact_tokens(&mut dump);
    let keep_named = |list: &mut Vec<Value>| {
        if let Some(re) = &name_re {
            list.retain(|v| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| re.is_match(n))
            });
        }
    };
    if let Some(r) = get("resource") {
        let key = resource_key(r).ok_or_else(|| {
            format!("resource: unknown resource '{r}' (want listeners, clusters or clusters_state)")
        })?;
        let mut list = match key {
            "clusters_state" => dump.get_mut("clusters_state").map(Value::take),
            k => dump
                .get_mut("config")
                .and_then(|c| c.get_mut(k))
                .map(Value::take),
        }
        .and_then(|v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap_or_default();
        keep_named(&mut list);
        if let Some(m) = &mask {
            list = list.into_iter().map(|v| apply_mask(v, m)).collect();
        }
        return Ok(serde_json::json!({ "configs": list }));
    }
    if !include_eds && let Value::Object(o) = &mut dump {
        o.remove("clusters_state");
    }
    if name_re.is_some() {
        for at in ["/config/listeners", "/config/clusters", "/clusters_state"] {
            if let Some(Value::Array(a)) = dump.pointer_mut(at) {
                keep_named(a);
            }
        }
    }
    Ok(match &mask {
        Some(m) => apply_mask(dump, m),
        None => dump,
    })
}

/// Keeps only the fields a field mask names (`a.b` keeps `b` under `a`);
/// a mask on a list applies to its elements (Envoy's FieldMask on
/// repeated fields).
fn apply_mask(v: Value, paths: &[Vec<&str>]) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(|x| apply_mask(x, paths)).collect()),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                let under: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p.first() == Some(&k.as_str()))
                    .map(|p| p[1..].to_vec())
                    .collect();
                if under.is_empty() {
                    continue;
                }
                if under.iter().any(|p| p.is_empty()) {
                    out.insert(k, x);
                } else {
                    out.insert(k, apply_mask(x, &under));
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// The admin token never leaves the process through `/config_dump`.
fn redact_tokens(v: &mut Value) {
    if let Some(Value::Object(a)) = v.pointer_mut("/config/admin")
        && let Some(t) = a.get_mut("auth_token")
    {
        *t = Value::String("[redacted]".into());
    }
}

/// `/certs`: every certificate file or inline PEM the running config
/// names, read now (what a TLS reload would load), leaf first.
pub(super) fn certs(snap: &Snapshot) -> Value {
    let config = serde_json::to_value(&snap.config).unwrap_or_default();
    let mut found = Vec::new();
    walk(&config, String::new(), &mut found);
    Value::Array(found)
}

fn walk(v: &Value, at: String, out: &mut Vec<Value>) {
    match v {
        Value::Object(o) => {
            for (field, inline) in [
                ("certificate_chain", "certificate_chain_pem"),
                ("trusted_ca", "trusted_ca_pem"),
            ] {
                let file = o
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let pem = o.get(inline).and_then(Value::as_str);
                let (source, bytes) = match (file, pem) {
                    (Some(f), _) => (f.to_string(), std::fs::read(f).map_err(|e| e.to_string())),
                    (None, Some(p)) => ("inline".to_string(), Ok(p.as_bytes().to_vec())),
                    (None, None) => continue,
                };
                let mut entry = serde_json::json!({
                    "config_path": format!("{at}.{field}").trim_start_matches('.'),
                    "kind": if field == "trusted_ca" { "ca" } else { "certificate" },
                    "source": source,
                });
                match bytes {
                    Ok(b) => entry["cert_chain"] = Value::Array(describe_pem(&b)),
                    Err(e) => entry["error"] = Value::String(e),
                }
                out.push(entry);
            }
            for (k, x) in o {
                walk(x, format!("{at}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Each certificate of a PEM text: subject, serial, SANs, validity.
fn describe_pem(pem: &[u8]) -> Vec<Value> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::*;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, c) = X509Certificate::from_der(der.as_ref()).ok()?;
            let mut sans = Vec::new();
            if let Ok(Some(san)) = c.subject_alternative_name() {
                for n in &san.value.general_names {
                    match n {
                        GeneralName::DNSName(d) => sans.push(serde_json::json!({"dns": d})),
                        GeneralName::URI(u) => sans.push(serde_json::json!({"uri": u})),
                        GeneralName::IPAddress(ip) => {
                            sans.push(serde_json::json!({"ip_address": format!("{ip:02x?}")}))
                        }
                        _ => {}
                    }
                }
            }
            let not_after = c.validity().not_after.timestamp();
            Some(serde_json::json!({
                "subject": c.subject().to_string(),
                "serial_number": c.raw_serial_as_string(),
                "subject_alt_names": sans,
                "valid_from": c.validity().not_before.to_string(),
                "expiration_time": c.validity().not_after.to_string(),
                "expiration_unix": not_after,
                "days_until_expiration": (not_after - now).div_euclid(86_400),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_named_fields() {
        let v = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [{"e": 1, "f": 2}], "g": 3});
        let m = vec![vec!["a", "b"], vec!["d", "f"]];
        assert_eq!(
            apply_mask(v, &m),
            serde_json::json!({"a": {"b": 1}, "d": [{"f": 2}]})
        );
    }
}
