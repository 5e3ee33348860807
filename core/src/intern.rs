//! The bounded table behind `stream::intern`: one `&'static` copy of each
//! route or cluster name, so that a stream records its route and cluster
//! for metrics and logs without a reference count per request.
//!
//! A leaked name can never be freed (a `&'static str` may be held
//! anywhere), so the table is capped instead: under xDS name churn
//! (versioned cluster names, generated route names) at most
//! `MAX_NAMES` names and `MAX_BYTES` bytes are ever leaked. Past the cap a
//! new name gets the shared label [`OVERFLOW`] in metrics and access logs
//! (counted in `meshgate_stats_interned_names_overflow_total`); routing
//! and cluster identity never depend on the label. The current size is
//! `meshgate_stats_interned_names`. `MESHGATE_MAX_INTERNED_NAMES` lowers
//! or raises the name cap (read once, e.g. for tests).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The label of a name that arrived after the table was full.
pub const OVERFLOW: &str = "__overflow__";

/// Default caps: room for tens of thousands of routes and clusters.
pub const MAX_NAMES: usize = 65_536;
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// A capped interning table.
pub struct Interner {
    names: HashSet<&'static str>,
    bytes: usize,
    max_names: usize,
    max_bytes: usize,
}

impl Interner {
    pub fn new(max_names: usize, max_bytes: usize) -> Self {
        Self {
            names: HashSet::new(),
            bytes: 0,
            max_names,
            max_bytes,
        }
    }

    /// The interned copy of `name`, or `OVERFLOW` when the table is full.
    pub fn get(&mut self, name: &str) -> &'static str {
        if let Some(n) = self.names.get(name) {
            return n;
        }
        if self.names.len() >= self.max_names || self.bytes + name.len() > self.max_bytes {
            metrics::counter!(crate::metrics::names::STATS_INTERNED_NAMES_OVERFLOW_TOTAL)
                .increment(1);
            return OVERFLOW;
        }
        let n: &'static str = Box::leak(name.into());
        self.names.insert(n);
        self.bytes += n.len();
        metrics::gauge!(crate::metrics::names::STATS_INTERNED_NAMES).set(self.names.len() as f64);
        n
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The process-wide table.
pub fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<Interner>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let max = std::env::var("MESHGATE_MAX_INTERNED_NAMES")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(MAX_NAMES);
            Mutex::new(Interner::new(max, MAX_BYTES))
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_the_table_is_capped() {
        let mut t = Interner::new(3, 1024);
        let a = t.get("a");
        assert!(std::ptr::eq(a, t.get(&String::from("a"))));
        t.get("b");
        t.get("c");
        // Churn: 10,000 new names, none leaked past the cap.
        for i in 0..10_000 {
            assert_eq!(t.get(&format!("route-{i}")), OVERFLOW);
        }
        assert_eq!(t.len(), 3);
        // Known names still resolve to themselves.
        assert_eq!(t.get("b"), "b");
        // The byte cap holds as well.
        let mut t = Interner::new(100, 10);
        t.get("0123456789");
        assert_eq!(t.get("x"), OVERFLOW);
        assert_eq!(t.len(), 1);
    }
}
