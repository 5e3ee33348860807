//! Envoy's `ListStringMatcher` over header names, for the HTTP mode's
//! allowed request, upstream and client headers.

use meshgate_core::BuildError;
use meshgate_core::config::ext_authz::ListStringMatcherConfig;
use meshgate_core::config::filters::StringMatcherConfig;

enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

struct One {
    pattern: Pattern,
    ignore_case: bool,
}

/// Any of a list of string matchers.
pub(crate) struct ListMatcher(Vec<One>);

impl ListMatcher {
    pub(crate) fn build(path: &str, c: &ListStringMatcherConfig) -> Result<Self, BuildError> {
        let mut out = Vec::with_capacity(c.patterns.len());
        for (i, m) in c.patterns.iter().enumerate() {
            out.push(one(&format!("{path}.patterns[{i}]"), m)?);
        }
        Ok(Self(out))
    }

    /// Whether any pattern matches `s` (header names are lower case).
    pub(crate) fn matches(&self, s: &str) -> bool {
        self.0.iter().any(|o| {
            let folded;
            let v = if o.ignore_case {
                folded = s.to_ascii_lowercase();
                folded.as_str()
            } else {
                s
            };
            match &o.pattern {
                Pattern::Exact(p) => v == p,
                Pattern::Prefix(p) => v.starts_with(p.as_str()),
                Pattern::Suffix(p) => v.ends_with(p.as_str()),
                Pattern::Contains(p) => v.contains(p.as_str()),
                Pattern::Regex(r) => r.is_match(s),
            }
        })
    }
}

fn one(path: &str, m: &StringMatcherConfig) -> Result<One, BuildError> {
    let ic = m.ignore_case;
    let fold = |s: &String| {
        if ic {
            s.to_ascii_lowercase()
        } else {
            s.clone()
        }
    };
    let pattern = match (&m.exact, &m.prefix, &m.suffix, &m.contains, &m.safe_regex) {
        (Some(s), None, None, None, None) => Pattern::Exact(fold(s)),
        (None, Some(s), None, None, None) => Pattern::Prefix(fold(s)),
        (None, None, Some(s), None, None) => Pattern::Suffix(fold(s)),
        (None, None, None, Some(s), None) => Pattern::Contains(fold(s)),
        (None, None, None, None, Some(r)) => Pattern::Regex(
            regex::Regex::new(&format!("^(?:{})$", r.regex))
                .map_err(|e| BuildError::new(format!("{path}.safe_regex.regex"), e.to_string()))?,
        ),
        _ => {
            return Err(BuildError::new(
                path,
                "set exactly one of exact, prefix, suffix, contains, safe_regex",
            ));
        }
    };
    Ok(One {
        pattern,
        ignore_case: ic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_pattern_matches() {
        let c: ListStringMatcherConfig = serde_json::from_value(serde_json::json!({"patterns": [
            {"exact": "x-user"}, {"prefix": "x-auth-"}, {"suffix": "-id", "ignore_case": true},
            {"safe_regex": {"regex": "x-[0-9]+"}}]}))
        .unwrap();
        let m = ListMatcher::build("p", &c).unwrap();
        for yes in ["x-user", "x-auth-a", "tenant-ID", "x-42"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["x-users", "auth-x", "x-4a"] {
            assert!(!m.matches(no), "{no}");
        }
        let bad: ListStringMatcherConfig = serde_json::from_value(
            serde_json::json!({"patterns": [{"exact": "a", "prefix": "b"}]}),
        )
        .unwrap();
        assert_eq!(
            ListMatcher::build("p", &bad).err().unwrap().path,
            "p.patterns[0]"
        );
    }
}
