//! `/stats`: the metrics of `/stats/prometheus` as `name{labels}: value`
//! lines or JSON, with Envoy's `?filter=` (a regex on the name with its
//! labels) and `?usedonly` (here: a value other than zero). Histograms
//! show their `_sum` and `_count`, not their buckets.

/// The body and whether it is JSON; `Err` names the bad parameter.
pub(super) fn render(
    exposition: &str,
    filter: Option<&str>,
    used_only: bool,
    as_json: bool,
) -> Result<(String, bool), String> {
    let re = match filter {
        Some(f) => Some(
            regex::RegexBuilder::new(f)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("filter: invalid regex: {e}"))?,
        ),
        None => None,
    };
    let mut samples: Vec<(&str, f64)> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name, value.parse::<f64>().ok()?))
        })
        .filter(|(n, _)| !n.split('{').next().unwrap_or("").ends_with("_bucket"))
        .filter(|(_, v)| !used_only || *v != 0.0)
        .filter(|(n, _)| re.as_ref().is_none_or(|re| re.is_match(n)))
        .collect();
    samples.sort_by(|a, b| a.0.cmp(b.0));
    if as_json {
        let stats: Vec<serde_json::Value> = samples
            .iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
            .collect();
        let body = serde_json::to_string_pretty(&serde_json::json!({ "stats": stats }))
            .unwrap_or_default();
        Ok((body, true))
    } else {
        let mut out = String::new();
        for (n, v) in samples {
            out.push_str(&format!("{n}: {v}\n"));
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPO: &str = "# TYPE a_total counter\na_total{c=\"x\"} 3\na_total{c=\"y\"} 0\n\
        # TYPE g gauge\ng 1.5\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 2\n\
        h_seconds_sum 0.1\nh_seconds_count 2\n";

    #[test]
    fn text_json_filter_usedonly() {
        let (t, j) = render(EXPO, None, false, false).unwrap();
        assert!(!j);
        assert_eq!(
            t,
            "a_total{c=\"x\"}: 3\na_total{c=\"y\"}: 0\ng: 1.5\nh_seconds_count: 2\nh_seconds_sum: 0.1\n"
        );
        let (t, _) = render(EXPO, Some("^a_.*x"), false, false).unwrap();
        assert_eq!(t, "a_total{c=\"x\"}: 3\n");
        let (t, _) = render(EXPO, Some("a_total"), true, false).unwrap();
        assert_eq!(t, "a_total{c=\"x\"}: 3\n");
        let (j, is_json) = render(EXPO, Some("^g$"), false, true).unwrap();
        assert!(is_json);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["stats"][0]["name"], "g");
        assert_eq!(v["stats"][0]["value"], 1.5);
        assert!(
            render(EXPO, Some("("), false, false)
                .unwrap_err()
                .starts_with("filter")
        );
    }
}
