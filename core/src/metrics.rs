//! Metric names and per-scope handles. Names follow
//! `meshgate_<scope>_<what>_<unit>` with labels (listener, cluster, reason).
//! Handles are registered once when a listener or cluster is built, so the
//! data path only increments atomics (no name lookup per event).
//! Every name is a constant in [`names`].

pub mod names;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    counter, gauge,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();

/// Histogram bucket bounds, in seconds: fixed, so histograms aggregate
/// across a fleet (unlike summaries).
const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Istio's standard histograms (`istio_request_duration_milliseconds`,
/// `istio_request_bytes`, `istio_response_bytes`) keep Envoy's default
/// bucket bounds, in the metric's own unit (milliseconds, bytes), so
/// dashboards built for Istio's sidecars read meshgate's the same way.
const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The histograms whose bounds are `ISTIO_BUCKETS` (named by Istio, not
/// by meshgate's convention).
const ISTIO_PREFIX: &str = "istio_";

/// Renders every metric in the Prometheus text format.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    counters: Arc<Counters>,
    histograms: Arc<Histograms>,
}

impl MetricsHandle {
    pub fn render(&self) -> String {
        let mut out = self.prometheus.render();
        self.counters.render(&mut out);
        self.histograms.render(&mut out);
        with_help(&out)
    }

    /// Sets every counter and histogram to zero (admin `/reset_counters`);
    /// gauges keep their values (they are states, not counts). Prometheus
    /// sees a counter reset, which `rate()` handles.
    pub fn reset_counters(&self) {
        for c in self
            .counters
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            c.store(0, Ordering::Relaxed);
        }
        for (_, h) in self
            .histograms
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .iter()
        {
            for b in &h.buckets {
                b.store(0, Ordering::Relaxed);
            }
            h.sum_nanos.store(0, Ordering::Relaxed);
        }
    }
}

/// How a name literal starts in names.rs (spelled in pieces: the names
/// test forbids the literal outside names.rs).
const NAME_LITERAL: &str = concat!('"', "meshgate", "_");

/// Each metric's description: its doc comment in `names.rs`, read from
/// the source at build time (one place to describe a metric).
fn help_texts() -> &'static std::collections::HashMap<&'static str, String> {
    static HELP: OnceLock<std::collections::HashMap<&'static str, String>> = OnceLock::new();
    HELP.get_or_init(|| {
        let mut map = std::collections::HashMap::new();
        let mut doc: Vec<&str> = Vec::new();
        for line in include_str!("metrics/names.rs").lines() {
            let t = line.trim();
            if let Some(d) = t.strip_prefix("///") {
                doc.push(d.trim());
            } else if let Some(start) = line.find(NAME_LITERAL).map(|i| i + 1) {
                if let Some(len) = line[start..].find('"') {
                    map.insert(&line[start..start + len], doc.join(" "));
                }
                doc.clear();
            } else if !t.starts_with("pub const") {
                doc.clear();
            }
        }
        map
    })
}

/// The exposition with a `# HELP` line before each `# TYPE` line that has
/// none (Prometheus' own linter, `promtool check metrics`, asks for one).
fn with_help(text: &str) -> String {
    let help = help_texts();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut prev = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !prev.starts_with("# HELP ") {
                let h = help.get(name).map_or("meshgate metric", |s| s.as_str());
                let h = h.replace('\\', "\\\\").replace('\n', " ");
                let _ = writeln!(out, "# HELP {name} {h}");
            }
        }
        out.push_str(line);
        out.push('\n');
        prev = line;
    }
    out
}

/// Installs meshgate's recorder as the global `metrics` recorder (once)
/// and returns the handle the admin server renders from.
pub fn install_recorder() -> MetricsHandle {
    HANDLE
        .get_or_init(|| {
            let prometheus = PrometheusBuilder::new().build_recorder();
            let handle = MetricsHandle {
                prometheus: prometheus.handle(),
                counters: Arc::default(),
                histograms: Arc::default(),
            };
            let recorder = MeshRecorder {
                prometheus,
                counters: handle.counters.clone(),
                histograms: handle.histograms.clone(),
            };
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Gauges go to the Prometheus exporter's recorder; counters and
/// histograms are meshgate's own.
///
/// Written here rather than taken from the exporter because its histograms
/// keep every recorded value until the next scrape (memory grew by 16
/// bytes per proxied request, without bound when nobody scrapes), and a
/// record cost an epoch pin and four atomic instructions. Here a record is
/// two relaxed atomic adds into a fixed set of buckets. The exporter's
/// counters wrap the value in a generation count for idle expiry (which
/// meshgate does not use): two atomic instructions per increment where a
/// bare `AtomicU64` needs one, and a proxied request bumps several.
struct MeshRecorder {
    prometheus: PrometheusRecorder,
    counters: Arc<Counters>,
    histograms: Arc<Histograms>,
}

impl Recorder for MeshRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counters.get(key))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.get(key))
    }
}

/// Every histogram, in the order registered, and its place by key: one
/// per cluster (`rq_time`), so a lookup must not walk them all (each
/// listener build registers its own, which among 10,000 clusters was a
/// walk of 10,000 keys per xDS update).
#[derive(Default)]
struct Histograms(Mutex<HistogramList>);

#[derive(Default)]
struct HistogramList {
    all: Vec<(Key, Arc<FixedHistogram>)>,
    at: std::collections::HashMap<Key, usize>,
}

impl Histograms {
    fn get(&self, key: &Key) -> Arc<FixedHistogram> {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = l.at.get(key) {
            return l.all[i].1.clone();
        }
        let h = Arc::new(FixedHistogram::new(key.name().starts_with(ISTIO_PREFIX)));
        let i = l.all.len();
        l.all.push((key.clone(), h.clone()));
        l.at.insert(key.clone(), i);
        h
    }

    fn render(&self, out: &mut String) {
        let mut all: Vec<(Key, Arc<FixedHistogram>)> =
            self.0.lock().unwrap_or_else(|p| p.into_inner()).all.clone();
        all.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        let mut last_name = "";
        for (key, h) in &all {
            let name = key.name();
            if name != last_name {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last_name = name;
            }
            let mut labels = String::new();
            for l in key.labels() {
                let _ = write!(labels, "{}=\"{}\",", l.key(), escape(l.value()));
            }
            let mut cumulative = 0u64;
            for (i, le) in h.bounds.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
            }
            cumulative += h.buckets[h.bounds.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
            let labels = labels.trim_end_matches(',');
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / h.scale;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

/// Every counter, by key. `metrics` implements `CounterFn` for `AtomicU64`
/// (a relaxed add).
#[derive(Default)]
struct Counters(Mutex<std::collections::HashMap<Key, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &Key) -> Arc<AtomicU64> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.clone()).or_default().clone()
    }

    fn render(&self, out: &mut String) {
        let mut all: Vec<(Key, u64)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        all.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        let mut last_name = "";
        for (key, value) in &all {
            let name = key.name();
            if name != last_name {
                let _ = writeln!(out, "# TYPE {name} counter");
                last_name = name;
            }
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), escape(l.value())))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts per bucket (the last one past every bound) and the sum, in
/// nanoseconds of the recorded seconds (thousandths of the unit for
/// Istio's histograms: their values are milliseconds or bytes).
struct FixedHistogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; ISTIO_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    /// Sum units per recorded unit.
    scale: f64,
}

impl Default for FixedHistogram {
    fn default() -> Self {
        Self::new(false)
    }
}

impl FixedHistogram {
    fn new(istio: bool) -> Self {
        Self {
            bounds: if istio { &ISTIO_BUCKETS } else { &BUCKETS },
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
            scale: if istio { 1e3 } else { 1e9 },
        }
    }
}

impl HistogramFn for FixedHistogram {
    fn record(&self, value: f64) {
        let v = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((v * self.scale) as u64, Ordering::Relaxed);
    }
}

/// Counters of one listener.
#[derive(Clone)]
pub struct ListenerStats {
    /// `meshgate_listener_downstream_cx_total`
    pub cx_total: Counter,
    /// `meshgate_listener_downstream_cx_active`
    pub cx_active: Gauge,
    /// `meshgate_listener_downstream_cx_overflow_total`: refused by max_connections.
    pub cx_overflow: Counter,
    /// `meshgate_listener_no_filter_chain_match_total`
    pub no_filter_chain_match: Counter,
}

impl ListenerStats {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        Self {
            cx_total: counter!(names::LISTENER_DOWNSTREAM_CX_TOTAL, "listener" => l.clone()),
            cx_active: gauge!(names::LISTENER_DOWNSTREAM_CX_ACTIVE, "listener" => l.clone()),
            cx_overflow: counter!(names::LISTENER_DOWNSTREAM_CX_OVERFLOW_TOTAL, "listener" => l.clone()),
            no_filter_chain_match: counter!(names::LISTENER_NO_FILTER_CHAIN_MATCH_TOTAL, "listener" => l),
        }
    }
}

/// A label value for every series of one scope (a cluster registers about
/// twenty): one shared allocation, where a `String` per series costs two
/// (the series' key and the registry's copy of it).
pub fn shared_label(value: &str) -> SharedString {
    SharedString::from(Arc::<str>::from(value))
}

/// The series of a rare event (an overflow, a panic, a queued request),
/// registered on its first use: a scope that never sees the event holds
/// no series for it, and `/stats` lists none until then (which reads as
/// 0). A registered series costs about 250 B (its key, labels and value
/// in the registry); a cluster had a dozen such series, most never
/// touched, when 10,000 clusters cost 13 KB each (benches/RESULTS.md).
/// Once registered, a use is one load of the cell.
pub fn rare<T>(cell: &OnceLock<T>, register: impl FnOnce() -> T) -> &T {
    cell.get_or_init(register)
}

/// Counters of one cluster.
#[derive(Clone)]
pub struct ClusterStats {
    /// The `cluster` label, shared by the cluster's series.
    name: SharedString,
    /// `meshgate_cluster_upstream_cx_total`: connections established.
    pub cx_total: Counter,
    /// `meshgate_cluster_upstream_cx_active`
    pub cx_active: Gauge,
    /// `meshgate_cluster_upstream_cx_overflow_total`: refused by
    /// max_connections (`cx_overflow`).
    cx_overflow: OnceLock<Counter>,
    /// `meshgate_cluster_upstream_bytes_sent_total`
    pub bytes_sent: Counter,
    /// `meshgate_cluster_upstream_bytes_received_total`
    pub bytes_received: Counter,
    /// `meshgate_cluster_upstream_rq_time_seconds`: one try, from its
    /// start to its response head or failure (`crate::forward::settle`).
    pub rq_time: metrics::Histogram,
}

impl ClusterStats {
    pub fn new(cluster: &str) -> Self {
        let c = shared_label(cluster);
        Self {
            name: c.clone(),
            cx_total: counter!(names::CLUSTER_UPSTREAM_CX_TOTAL, "cluster" => c.clone()),
            cx_active: gauge!(names::CLUSTER_UPSTREAM_CX_ACTIVE, "cluster" => c.clone()),
            cx_overflow: OnceLock::new(),
            bytes_sent: counter!(names::CLUSTER_UPSTREAM_BYTES_SENT_TOTAL, "cluster" => c.clone()),
            bytes_received: counter!(names::CLUSTER_UPSTREAM_BYTES_RECEIVED_TOTAL, "cluster" => c.clone()),
            rq_time: metrics::histogram!(names::CLUSTER_UPSTREAM_RQ_TIME_SECONDS, "cluster" => c),
        }
    }

    /// The `cluster` label value, to share with the cluster's other series.
    pub fn label(&self) -> &SharedString {
        &self.name
    }

    /// `meshgate_cluster_upstream_cx_overflow_total`, registered on first
    /// use (`rare`).
    pub fn cx_overflow(&self) -> &Counter {
        rare(
            &self.cx_overflow,
            || counter!(names::CLUSTER_UPSTREAM_CX_OVERFLOW_TOTAL, "cluster" => self.name.clone()),
        )
    }

    /// `meshgate_cluster_upstream_cx_connect_fail_total{reason}`: a connect
    /// that failed (refused, timeout, overflow, no_healthy_endpoint). Rare
    /// path, so the label lookup per call is fine.
    pub fn connect_failed(&self, reason: &'static str) {
        counter!(names::CLUSTER_UPSTREAM_CX_CONNECT_FAIL_TOTAL, "cluster" => self.name.clone(), "reason" => reason).increment(1);
    }

    /// `meshgate_cluster_upstream_cx_destroy_total{reason}`: how upstream
    /// connections ended (e.g. `remote_reset`, `idle_timeout`).
    pub fn cx_closed(&self, reason: &'static str) {
        counter!(names::CLUSTER_UPSTREAM_CX_DESTROY_TOTAL, "cluster" => self.name.clone(), "reason" => reason).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values land in the first bucket whose bound holds them; buckets
    /// render cumulative, with the sum and count, per label set.
    #[test]
    fn fixed_histograms_render_cumulative_buckets() {
        let hs = Histograms::default();
        let a = hs.get(&Key::from_parts(
            "t_seconds",
            vec![metrics::Label::new("l", "a\"b")],
        ));
        let b = hs.get(&Key::from_parts(
            "t_seconds",
            vec![metrics::Label::new("l", "b")],
        ));
        for v in [0.0001, 0.0002, 0.3, 100.0, f64::NAN, -1.0] {
            a.record(v);
        }
        b.record(0.002);
        // The same key gets the same histogram.
        assert!(Arc::ptr_eq(
            &a,
            &hs.get(&Key::from_parts(
                "t_seconds",
                vec![metrics::Label::new("l", "a\"b")]
            ))
        ));
        let mut out = String::new();
        hs.render(&mut out);
        assert_eq!(
            out.matches("# TYPE t_seconds histogram").count(),
            1,
            "{out}"
        );
        for line in [
            r#"t_seconds_bucket{l="a\"b",le="0.0001"} 3"#,
            r#"t_seconds_bucket{l="a\"b",le="0.00025"} 4"#,
            r#"t_seconds_bucket{l="a\"b",le="0.25"} 4"#,
            r#"t_seconds_bucket{l="a\"b",le="0.5"} 5"#,
            r#"t_seconds_bucket{l="a\"b",le="60"} 5"#,
            r#"t_seconds_bucket{l="a\"b",le="+Inf"} 6"#,
            r#"t_seconds_count{l="a\"b"} 6"#,
            r#"t_seconds_bucket{l="b",le="0.001"} 0"#,
            r#"t_seconds_bucket{l="b",le="0.0025"} 1"#,
            r#"t_seconds_count{l="b"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(r#"t_seconds_sum{l="a\"b"} "#))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 100.3003).abs() < 1e-6, "{sum}");
    }

    /// Every `# TYPE` line gets a `# HELP` line from names.rs' doc comments.
    #[test]
    fn help_lines_come_from_the_names_docs() {
        let out = with_help(
            "# TYPE meshgate_downstream_rq_total counter\nmeshgate_downstream_rq_total 1\n# HELP x y\n# TYPE x gauge\nx 1\n",
        );
        assert!(
            out.starts_with("# HELP meshgate_downstream_rq_total Counter `{listener}`"),
            "{out}"
        );
        assert_eq!(out.matches("# HELP x").count(), 1, "{out}");
        for &(name, _) in names::ALL {
            assert!(
                help_texts().get(name).is_some_and(|h| !h.is_empty()),
                "{name} has no doc comment"
            );
        }
    }

    /// One counter per key; the text format groups a name under one TYPE
    /// line, with its labels in order and escaped.
    #[test]
    fn counters_render_per_label_set() {
        let cs = Counters::default();
        let key = |v: &str| {
            Key::from_parts(
                "t_total",
                vec![
                    metrics::Label::new("l", v.to_string()),
                    metrics::Label::new("c", "x"),
                ],
            )
        };
        let a = Counter::from_arc(cs.get(&key("a\"b")));
        a.increment(2);
        Counter::from_arc(cs.get(&key("a\"b"))).increment(1);
        Counter::from_arc(cs.get(&key("b"))).increment(5);
        Counter::from_arc(cs.get(&Key::from_name("u_total"))).increment(7);
        let mut out = String::new();
        cs.render(&mut out);
        assert_eq!(out.matches("# TYPE t_total counter").count(), 1, "{out}");
        for line in [
            r#"t_total{l="a\"b",c="x"} 3"#,
            r#"t_total{l="b",c="x"} 5"#,
            "u_total 7",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
