//! Descriptors of `local_ratelimit`: the configured descriptors a
//! request's descriptors (built by `rate_limits` actions,
//! `meshgate_core::router::RateLimitActions`) are matched against, each with its own bucket. A
//! configured entry with no value is a wildcard: each distinct request
//! value gets its own bucket, kept in a bounded LRU (the values come from
//! the network: a header, a client address), evictions counted.

use super::bucket::{TokenBucket, clock};
use hashlink::LruCache;
use meshgate_core::BuildError;
use meshgate_core::config::local_ratelimit::{LocalDescriptorConfig, TokenBucketConfig};
pub use meshgate_core::router::{Descriptor, RateLimitActions as Actions};
use metrics::Counter;
use std::sync::{Arc, Mutex};

/// A configured descriptor: what it matches and the template of its
/// bucket(s).
pub struct DescriptorSpec {
    /// `(key, Some(value))`, or `(key, None)` for a wildcard entry.
    entries: Vec<(String, Option<String>)>,
    bucket: TokenBucketConfig,
    wildcard: bool,
}

impl DescriptorSpec {
    pub fn build(path: &str, c: &LocalDescriptorConfig) -> Result<Self, BuildError> {
        if c.entries.is_empty() {
            return Err(BuildError::new(
                format!("{path}.entries"),
                "at least one entry",
            ));
        }
        let mut entries = Vec::with_capacity(c.entries.len());
        for (i, e) in c.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(BuildError::new(
                    format!("{path}.entries[{i}].key"),
                    "must not be empty",
                ));
            }
            entries.push((
                e.key.clone(),
                (!e.value.is_empty()).then(|| e.value.clone()),
            ));
        }
        // Checks the bucket once, with its path.
        TokenBucket::build(&format!("{path}.token_bucket"), &c.token_bucket)?;
        let wildcard = entries.iter().any(|(_, v)| v.is_none());
        Ok(Self {
            entries,
            bucket: c.token_bucket.clone(),
            wildcard,
        })
    }

    /// Whether a request descriptor matches verbatim (wildcards match any
    /// value); for a wildcard descriptor, the key of its dynamic bucket.
    fn matches(&self, d: &Descriptor) -> Option<String> {
        if d.len() != self.entries.len() {
            return None;
        }
        let mut dyn_key = String::new();
        for ((k, v), (ck, cv)) in d.iter().zip(&self.entries) {
            if k != ck {
                return None;
            }
            match cv {
                Some(cv) if cv != v => return None,
                Some(_) => {}
                None => {
                    dyn_key.push_str(v);
                    dyn_key.push('\0');
                }
            }
        }
        Some(dyn_key)
    }

    fn new_bucket(&self) -> TokenBucket {
        let b = &self.bucket;
        TokenBucket::new(
            b.max_tokens,
            b.tokens_per_fill.unwrap_or(1),
            b.fill_interval,
            clock(),
        )
    }
}

/// The live bucket(s) of one configured descriptor.
pub enum DescriptorBuckets {
    Fixed(Arc<TokenBucket>),
    /// Per wildcard value, least recently used evicted past the cap.
    Dynamic(Mutex<LruCache<String, Arc<TokenBucket>>>),
}

impl DescriptorBuckets {
    pub fn new(spec: &DescriptorSpec, max_dynamic: usize) -> Self {
        if spec.wildcard {
            Self::Dynamic(Mutex::new(LruCache::new(max_dynamic)))
        } else {
            Self::Fixed(Arc::new(spec.new_bucket()))
        }
    }

    fn bucket(
        &self,
        spec: &DescriptorSpec,
        key: String,
        evicted: &Counter,
    ) -> Option<Arc<TokenBucket>> {
        match self {
            Self::Fixed(b) => Some(b.clone()),
            Self::Dynamic(m) => {
                // A poisoned lock (a panic elsewhere) must not let traffic
                // through unlimited: the caller denies on `None`.
                let mut lru = m.lock().ok()?;
                if let Some(b) = lru.get(&key) {
                    return Some(b.clone());
                }
                if lru.len() >= lru.capacity() {
                    evicted.increment(1);
                }
                let b = Arc::new(spec.new_bucket());
                lru.insert(key, b.clone());
                Some(b)
            }
        }
    }
}

/// The buckets the request's descriptors select, strictest first (Envoy
/// consumes them in that order and stops at the first refusal). `None`
/// when a bucket could not be had: the caller refuses the request.
pub fn matched(
    specs: &[DescriptorSpec],
    buckets: &[DescriptorBuckets],
    request: &[Descriptor],
    evicted: &Counter,
) -> Option<Vec<Arc<TokenBucket>>> {
    let mut out = Vec::new();
    for d in request {
        for (spec, b) in specs.iter().zip(buckets) {
            if let Some(key) = spec.matches(d) {
                out.push(b.bucket(spec, key, evicted)?);
                break;
            }
        }
    }
    out.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_core::config::local_ratelimit::RateLimitConfig;
    use meshgate_core::config::parse_typed;
    use meshgate_core::stream::StreamInfo;

    fn spec(v: serde_json::Value) -> DescriptorSpec {
        DescriptorSpec::build("descriptors[0]", &parse_typed(&v).unwrap()).unwrap()
    }

    fn d(e: &[(&str, &str)]) -> Descriptor {
        e.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn descriptors_match_verbatim_and_wildcards_get_a_bucket_per_value() {
        let tb = serde_json::json!({"max_tokens": 1, "fill_interval": "60s"});
        let fixed =
            spec(serde_json::json!({"entries": [{"key": "k", "value": "a"}], "token_bucket": tb}));
        let wild = spec(serde_json::json!({"entries": [{"key": "user"}], "token_bucket": tb}));
        assert!(fixed.matches(&d(&[("k", "a")])).is_some());
        assert!(fixed.matches(&d(&[("k", "b")])).is_none());
        assert!(fixed.matches(&d(&[("k", "a"), ("x", "y")])).is_none());
        let specs = vec![fixed, wild];
        let buckets: Vec<_> = specs.iter().map(|s| DescriptorBuckets::new(s, 2)).collect();
        let evicted = Counter::noop();
        let take = |v: &str| {
            matched(&specs, &buckets, &[d(&[("user", v)])], &evicted).unwrap()[0]
                .take()
                .allowed
        };
        assert!(take("alice"));
        assert!(!take("alice"));
        assert!(take("bob"));
        // A third value evicts the least recently used (alice): she starts
        // with a full bucket again, and the cap holds.
        assert!(take("carol"));
        assert!(take("alice"));
        let DescriptorBuckets::Dynamic(m) = &buckets[1] else {
            panic!()
        };
        assert_eq!(m.lock().unwrap().len(), 2);
    }

    #[test]
    fn actions_build_descriptors_from_the_request() {
        let list: Vec<RateLimitConfig> = parse_typed(&serde_json::json!([
            {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}},
                         {"remote_address": {}}]},
            {"actions": [{"generic_key": {"descriptor_value": "api"}},
                         {"header_value_match": {"descriptor_value": "admin",
                             "headers": [{"name": "x-role", "exact_match": "admin"}]}}]},
            {"actions": [{"request_headers": {"header_name": "x-opt", "descriptor_key": "opt",
                             "skip_if_absent": true}},
                         {"generic_key": {"descriptor_value": "v", "descriptor_key": "k"}}]},
            {"actions": [{"header_value_match": {"descriptor_value": "guest", "expect_match": false,
                             "headers": [{"name": "x-role", "present_match": true}]}}]},
        ]))
        .unwrap();
        let actions = Actions::build("", &list).unwrap();
        let a = "10.1.2.3:5".parse().unwrap();
        let conn = std::sync::Arc::new(meshgate_core::network::ConnectionInfo {
            id: 1,
            listener: std::sync::Arc::from("l"),
            peer_addr: a,
            local_addr: a,
            server_name: None,
            filter_chain: None,
            tls: None,
            retire: Default::default(),
            proxy_protocol: None,
        });
        let info = StreamInfo::new(conn, "http1");
        let mut req = http::Request::new(meshgate_core::stream::empty_body());
        req.headers_mut().insert("x-user", "alice".parse().unwrap());
        req.headers_mut().insert("x-role", "admin".parse().unwrap());
        let got = actions.descriptors(&req, &info);
        assert_eq!(
            got,
            vec![
                d(&[("user", "alice"), ("remote_address", "10.1.2.3")]),
                d(&[("generic_key", "api"), ("header_match", "admin")]),
                // x-opt absent and skipped: the rest of the descriptor stays.
                d(&[("k", "v")]),
            ]
        );
        // No x-user: the first descriptor is dropped whole; no x-role: the
        // header_value_match with expect_match false produces its entry.
        let req = http::Request::new(meshgate_core::stream::empty_body());
        let got = actions.descriptors(&req, &info);
        assert_eq!(got, vec![d(&[("k", "v")]), d(&[("header_match", "guest")])]);
    }

    #[test]
    fn unknown_or_empty_actions_are_refused_by_name() {
        let e = parse_typed::<RateLimitConfig>(
            &serde_json::json!({"actions": [{"destination_cluster": {}}]}),
        )
        .err()
        .unwrap();
        assert!(e.message.contains("destination_cluster"), "{e:?}");
        let c: RateLimitConfig = parse_typed(&serde_json::json!({"actions": [{}]})).unwrap();
        let e = Actions::build("", &[c]).err().unwrap();
        assert_eq!(e.path, "rate_limits[0].actions[0]");
        let c: RateLimitConfig = parse_typed(&serde_json::json!({"actions": [
            {"request_headers": {"header_name": "bad name", "descriptor_key": "k"}}]}))
        .unwrap();
        let e = Actions::build("", &[c]).err().unwrap();
        assert_eq!(
            e.path,
            "rate_limits[0].actions[0].request_headers.header_name"
        );
    }
}
