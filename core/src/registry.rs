//! The registry of extensions: every network filter, stream filter, codec
//! and load balancer is a factory found here by name. `cmd/` fills it with
//! the concrete filters and codecs of the other crates; core itself
//! registers only its built-in load balancers and knows no concrete filter.
//! A name is registered once: a second extension under a taken name is an
//! error, so a user's extension never silently replaces a shipped one (or
//! the other way round). Codecs are asked to detect their protocol in an
//! explicit order: `CodecFactory::detect_priority`, then registration order.

use crate::codec::CodecFactory;
use crate::lb::{LoadBalancerFactory, builtin_factories};
use crate::network::NetworkFilterFactory;
use crate::stream::StreamFilterFactory;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A second extension registered under a name already taken.
#[derive(Debug, thiserror::Error)]
#[error("meshgate: a {kind} named '{name}' is registered already")]
pub struct DuplicateName {
    pub kind: &'static str,
    pub name: String,
}

/// Factories by name.
pub struct Registry {
    network_filters: BTreeMap<String, Arc<dyn NetworkFilterFactory>>,
    load_balancers: BTreeMap<String, Arc<dyn LoadBalancerFactory>>,
    /// In detection order (see `register_codec`).
    codecs: Vec<Arc<dyn CodecFactory>>,
    stream_filters: BTreeMap<String, Arc<dyn StreamFilterFactory>>,
    /// Builds listeners' own access logs (`crate::listener_log`).
    listener_log: Option<Arc<dyn crate::listener_log::ListenerLogFactory>>,
    /// Upstream network filters (`Cluster.filters`, `crate::upstream_filter`).
    upstream_filters: BTreeMap<String, Arc<dyn crate::upstream_filter::UpstreamFilterFactory>>,
}

/// Inserts `f` under `name` unless the name is taken.
fn insert_new<F: ?Sized>(
    map: &mut BTreeMap<String, Arc<F>>,
    kind: &'static str,
    name: &str,
    f: Arc<F>,
) -> Result<(), DuplicateName> {
    match map.entry(name.to_string()) {
        std::collections::btree_map::Entry::Occupied(_) => Err(DuplicateName {
            kind,
            name: name.to_string(),
        }),
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(f);
            Ok(())
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding the built-in load balancers.
    pub fn new() -> Self {
        let mut r = Self {
            network_filters: BTreeMap::new(),
            load_balancers: BTreeMap::new(),
            codecs: Vec::new(),
            stream_filters: BTreeMap::new(),
            listener_log: None,
            upstream_filters: BTreeMap::new(),
        };
        for f in builtin_factories() {
            let name = f.name();
            r.load_balancers.entry(name.to_string()).or_insert(f);
        }
        r
    }

    /// Sets what builds listeners' `access_log` (one per registry).
    pub fn register_listener_log(
        &mut self,
        f: Arc<dyn crate::listener_log::ListenerLogFactory>,
    ) -> Result<(), DuplicateName> {
        if self.listener_log.is_some() {
            return Err(DuplicateName {
                kind: "listener access log factory",
                name: "listener_log".into(),
            });
        }
        self.listener_log = Some(f);
        Ok(())
    }

    /// What builds listeners' `access_log`, if registered.
    pub fn listener_log(&self) -> Option<&Arc<dyn crate::listener_log::ListenerLogFactory>> {
        self.listener_log.as_ref()
    }

    /// Adds an upstream network filter factory (`Cluster.filters`) under
    /// its name.
    pub fn register_upstream_filter(
        &mut self,
        f: Arc<dyn crate::upstream_filter::UpstreamFilterFactory>,
    ) -> Result<(), DuplicateName> {
        let name = f.name();
        insert_new(&mut self.upstream_filters, "upstream filter", name, f)
    }

    pub fn upstream_filter(
        &self,
        name: &str,
    ) -> Option<&Arc<dyn crate::upstream_filter::UpstreamFilterFactory>> {
        self.upstream_filters.get(name)
    }

    /// Adds a network filter factory under its name.
    pub fn register_network_filter(
        &mut self,
        f: Arc<dyn NetworkFilterFactory>,
    ) -> Result<(), DuplicateName> {
        let name = f.name();
        insert_new(&mut self.network_filters, "network filter", name, f)
    }

    pub fn network_filter(&self, name: &str) -> Option<&Arc<dyn NetworkFilterFactory>> {
        self.network_filters.get(name)
    }

    pub fn network_filter_names(&self) -> Vec<&str> {
        self.network_filters.keys().map(String::as_str).collect()
    }

    /// Adds a load balancer factory under its name.
    pub fn register_load_balancer(
        &mut self,
        f: Arc<dyn LoadBalancerFactory>,
    ) -> Result<(), DuplicateName> {
        let name = f.name();
        insert_new(&mut self.load_balancers, "load balancer", name, f)
    }

    pub fn load_balancer(&self, name: &str) -> Option<&Arc<dyn LoadBalancerFactory>> {
        self.load_balancers.get(name)
    }

    pub fn load_balancer_names(&self) -> Vec<&str> {
        self.load_balancers.keys().map(String::as_str).collect()
    }

    /// Adds a codec under its name. On a listener that detects the
    /// protocol, codecs are asked in `detect_priority` order (highest
    /// first), codecs of equal priority in registration order.
    pub fn register_codec(&mut self, f: Arc<dyn CodecFactory>) -> Result<(), DuplicateName> {
        if self.codec(f.name()).is_some() {
            return Err(DuplicateName {
                kind: "codec",
                name: f.name().to_string(),
            });
        }
        let at = self
            .codecs
            .iter()
            .position(|c| c.detect_priority() < f.detect_priority())
            .unwrap_or(self.codecs.len());
        self.codecs.insert(at, f);
        Ok(())
    }

    pub fn codec(&self, name: &str) -> Option<&Arc<dyn CodecFactory>> {
        self.codecs.iter().find(|c| c.name() == name)
    }

    /// The codecs in detection order.
    pub fn codecs(&self) -> impl Iterator<Item = &Arc<dyn CodecFactory>> {
        self.codecs.iter()
    }

    /// The codec names, sorted (for messages).
    pub fn codec_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.codecs.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names
    }

    /// Adds a stream filter factory under its name.
    pub fn register_stream_filter(
        &mut self,
        f: Arc<dyn StreamFilterFactory>,
    ) -> Result<(), DuplicateName> {
        let name = f.name();
        insert_new(&mut self.stream_filters, "stream filter", name, f)
    }

    pub fn stream_filter(&self, name: &str) -> Option<&Arc<dyn StreamFilterFactory>> {
        self.stream_filters.get(name)
    }

    pub fn stream_filter_names(&self) -> Vec<&str> {
        self.stream_filters.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ClientCodec, Detection, ServerCodec};
    use crate::error::BuildError;

    struct Named(&'static str, i32);

    impl CodecFactory for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn detect(&self, _: &[u8]) -> Detection {
            Detection::NoMatch
        }
        fn detect_priority(&self) -> i32 {
            self.1
        }
        fn server(&self, _: &serde_json::Value) -> Result<Arc<dyn ServerCodec>, BuildError> {
            Err(BuildError::new("", "test codec"))
        }
        fn client(&self, _: &serde_json::Value) -> Result<Arc<dyn ClientCodec>, BuildError> {
            Err(BuildError::new("", "test codec"))
        }
    }

    #[test]
    fn a_taken_name_is_an_error_and_detection_follows_priority_then_registration() {
        let mut r = Registry::new();
        for (name, prio) in [("zeta", 0), ("catch_all", -100), ("alpha", 0), ("first", 5)] {
            r.register_codec(Arc::new(Named(name, prio))).unwrap();
        }
        let order: Vec<&str> = r.codecs().map(|c| c.name()).collect();
        assert_eq!(order, ["first", "zeta", "alpha", "catch_all"]);
        assert_eq!(r.codec_names(), ["alpha", "catch_all", "first", "zeta"]);
        let e = r.register_codec(Arc::new(Named("zeta", 9))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "meshgate: a codec named 'zeta' is registered already"
        );
        assert_eq!(r.codecs().count(), 4);
        // Load balancers: the built-in ones hold their names.
        let lb = builtin_factories().into_iter().next().unwrap();
        let name = lb.name();
        let e = r.register_load_balancer(lb).unwrap_err();
        assert_eq!(e.name, name);
    }
}
