//! The registry of extensions: every network filter and load balancer is a
//! factory found here by name. `cmd/` fills it with the concrete filters and
//! codecs of the other crates; core itself registers only its built-in load
//! balancers and knows no concrete filter.

use crate::codec::CodecFactory;
use crate::lb::{LoadBalancerFactory, builtin_factories};
use crate::network::NetworkFilterFactory;
use crate::stream::StreamFilterFactory;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Factories by name.
pub struct Registry {
    network_filters: BTreeMap<String, Arc<dyn NetworkFilterFactory>>,
    load_balancers: BTreeMap<String, Arc<dyn LoadBalancerFactory>>,
    codecs: BTreeMap<String, Arc<dyn CodecFactory>>,
    stream_filters: BTreeMap<String, Arc<dyn StreamFilterFactory>>,
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
            codecs: BTreeMap::new(),
            stream_filters: BTreeMap::new(),
        };
        for f in builtin_factories() {
            r.register_load_balancer(f);
        }
        r
    }

    /// Adds (or replaces) a network filter factory under its name.
    pub fn register_network_filter(&mut self, f: Arc<dyn NetworkFilterFactory>) {
        self.network_filters.insert(f.name().to_string(), f);
    }

    pub fn network_filter(&self, name: &str) -> Option<&Arc<dyn NetworkFilterFactory>> {
        self.network_filters.get(name)
    }

    pub fn network_filter_names(&self) -> Vec<&str> {
        self.network_filters.keys().map(String::as_str).collect()
    }

    /// Adds (or replaces) a load balancer factory under its name.
    pub fn register_load_balancer(&mut self, f: Arc<dyn LoadBalancerFactory>) {
        self.load_balancers.insert(f.name().to_string(), f);
    }

    pub fn load_balancer(&self, name: &str) -> Option<&Arc<dyn LoadBalancerFactory>> {
        self.load_balancers.get(name)
    }

    pub fn load_balancer_names(&self) -> Vec<&str> {
        self.load_balancers.keys().map(String::as_str).collect()
    }

    /// Adds (or replaces) a codec under its name. Codecs are asked to detect
    /// their protocol in name order.
    pub fn register_codec(&mut self, f: Arc<dyn CodecFactory>) {
        self.codecs.insert(f.name().to_string(), f);
    }

    pub fn codec(&self, name: &str) -> Option<&Arc<dyn CodecFactory>> {
        self.codecs.get(name)
    }

    pub fn codecs(&self) -> impl Iterator<Item = &Arc<dyn CodecFactory>> {
        self.codecs.values()
    }

    pub fn codec_names(&self) -> Vec<&str> {
        self.codecs.keys().map(String::as_str).collect()
    }

    /// Adds (or replaces) a stream filter factory under its name.
    pub fn register_stream_filter(&mut self, f: Arc<dyn StreamFilterFactory>) {
        self.stream_filters.insert(f.name().to_string(), f);
    }

    pub fn stream_filter(&self, name: &str) -> Option<&Arc<dyn StreamFilterFactory>> {
        self.stream_filters.get(name)
    }

    pub fn stream_filter_names(&self) -> Vec<&str> {
        self.stream_filters.keys().map(String::as_str).collect()
    }
}
