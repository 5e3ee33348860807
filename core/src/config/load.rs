//! Loading a config file (YAML or JSON) into the model, with errors that name
//! the file, the line and the field. serde gives us the field path (through
//! serde_path_to_error); a separate pass over the YAML event stream maps every
//! path to the line it was written on, so errors found later (an unknown
//! cluster, an address already in use) still point at a line.

use super::Config;
use crate::error::{BuildError, ConfigError, join_path};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Maps a field path (`listeners[0].address`) to its 1-based line.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes a YAML (or JSON, which YAML parsers accept) document. A
    /// document that does not parse yields an empty index.
    pub fn build(src: &str) -> Self {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its closest indexed parent.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
            if p.is_empty() {
                return None;
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl IndexBuilder {
    /// The path of the value about to be read, and advances the parent.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join_path(path, &k)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 markers count lines from 1.
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let p = join_path(path, &value);
                        self.lines.entry(p).or_insert(line);
                        *key = Some(value);
                    }
                } else if let Some(p) = self.value_path() {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let _ = self.value_path();
            }
            _ => {}
        }
    }
}

/// Where a config came from, used to turn a field path into `file:line`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub index: LineIndex,
}

impl ConfigSource {
    /// A path named in the config: relative paths are relative to the
    /// config file's directory, so a config works from any working
    /// directory.
    pub fn resolve_path(&self, p: &str) -> String {
        let path = std::path::Path::new(p);
        if path.is_absolute() {
            return p.to_string();
        }
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => {
                dir.join(path).to_string_lossy().into_owned()
            }
            _ => p.to_string(),
        }
    }

    pub fn new(file: impl Into<PathBuf>, src: &str) -> Self {
        Self {
            file: file.into(),
            index: LineIndex::build(src),
        }
    }

    /// A source with no line information (e.g. a config built in code).
    pub fn anonymous(name: &str) -> Self {
        Self {
            file: PathBuf::from(name),
            index: LineIndex::default(),
        }
    }

    /// An error at `field`.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError {
            file: self.file.clone(),
            line: self.index.line_of(&field),
            message: message.into(),
            field,
        }
    }

    /// An extension's build error under `parent` (the extension's config path).
    pub fn build_error(&self, parent: &str, err: BuildError) -> ConfigError {
        self.error(join_path(parent, &err.path), err.message)
    }
}

fn is_json(path: &Path, src: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("yaml") | Some("yml") => false,
        _ => src.trim_start().starts_with('{'),
    }
}

/// Parses a config from a string; `file` is only used in errors.
pub fn parse_str(file: &Path, src: &str) -> Result<(Config, ConfigSource), ConfigError> {
    let source = ConfigSource::new(file, src);
    let result = if is_json(file, src) {
        let mut de = serde_json::Deserializer::from_str(src);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let line = source
                .index
                .line_of(&path)
                .or(Some(inner.line()).filter(|l| *l > 0));
            ConfigError {
                file: file.to_path_buf(),
                line,
                message: strip_path(&strip_location(&inner.to_string()), &path),
                field: path,
            }
        })
    } else {
        let de = serde_yaml::Deserializer::from_str(src);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| l.line())
                .filter(|_| path.is_empty())
                .or_else(|| source.index.line_of(&path))
                .or_else(|| inner.location().map(|l| l.line()));
            ConfigError {
                file: file.to_path_buf(),
                line,
                message: strip_path(&strip_location(&inner.to_string()), &path),
                field: path,
            }
        })
    };
    result.map(|c| (c, source))
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<(Config, ConfigSource), ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        field: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse_str(path, &src)
}

/// [`load_file`] on the blocking pool, for reloads: reading and parsing a
/// large file (a slow disk, a config of 10,000 routes) must not stall the
/// event loop, which on the current-thread runtime (`--concurrency 1`)
/// also serves every connection.
pub async fn load_file_off_worker(path: &Path) -> Result<(Config, ConfigSource), ConfigError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || load_file(&owned))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                file: path.to_path_buf(),
                line: None,
                field: String::new(),
                message: format!("loading the config file failed: {e}"),
            })
        })
}

/// Deserializes an extension's typed config from its JSON value; errors carry
/// the path inside that value.
pub fn parse_typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, BuildError> {
    // Deserialized from the borrowed value: a route config of 10,000
    // routes is not copied once more on its way to its typed form.
    let empty = serde_json::Value::Object(Default::default());
    let value = if value.is_null() { &empty } else { value };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = clean_path(&e.path().to_string());
        BuildError {
            message: strip_path(&e.into_inner().to_string(), &path),
            path,
        }
    })
}

/// serde_path_to_error prints `.` for the root; we use the empty string.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

/// serde_yaml and serde_json append " at line X column Y"; we print the line
/// ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// serde_yaml starts its message with the field's path (`a[0].b: unknown
/// variant`); the error prints the path itself, so it is cut here to appear
/// once.
fn strip_path(msg: &str, path: &str) -> String {
    match msg.strip_prefix(path).and_then(|m| m.strip_prefix(": ")) {
        Some(rest) if !path.is_empty() => rest.to_string(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
admin:
  address: 127.0.0.1:9901
listeners:
  - name: l1
    address: 127.0.0.1:10000
    filter_chains:
      - filters:
          - name: tcp_proxy
            config:
              cluster: c1
clusters:
  - name: c1
    endpoints:
      - address: 127.0.0.1:1
";

    #[test]
    fn index_maps_paths_to_lines() {
        let idx = LineIndex::build(YAML);
        assert_eq!(idx.line_of("admin.address"), Some(2));
        assert_eq!(idx.line_of("listeners[0].address"), Some(5));
        assert_eq!(
            idx.line_of("listeners[0].filter_chains[0].filters[0].config.cluster"),
            Some(10)
        );
        assert_eq!(idx.line_of("clusters[0].endpoints[0].address"), Some(14));
        // unknown child falls back to the closest parent
        assert_eq!(idx.line_of("clusters[0].nope"), Some(12));
    }

    #[test]
    fn unknown_field_names_file_line_field() {
        let bad = YAML.replace(
            "    address: 127.0.0.1:10000",
            "    adress: 127.0.0.1:10000",
        );
        let err = parse_str(Path::new("x.yaml"), &bad).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.field.starts_with("listeners[0]"), "{err}");
        assert!(err.message.contains("unknown field `adress`"), "{err}");
        assert!(
            err.to_string().starts_with("x.yaml:5: listeners[0]"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_field() {
        let bad = YAML.replace("backlog", "x").replace(
            "  - name: c1\n",
            "  - name: c1\n    connect_timeout: soon\n",
        );
        let err = parse_str(Path::new("x.yaml"), &bad).unwrap_err();
        assert_eq!(err.field, "clusters[0].connect_timeout", "{err}");
        assert_eq!(err.line, Some(13), "{err}");
        // The path is printed once, not again inside the message.
        assert_eq!(
            err.to_string()
                .matches("clusters[0].connect_timeout")
                .count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn json_is_accepted_with_lines() {
        let json = "{\n  \"listeners\": [],\n  \"clusters\": [\n    {\"name\": \"c\", \"endpoints\": [], \"bogus\": 1}\n  ]\n}\n";
        let err = parse_str(Path::new("c.json"), json).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("bogus"), "{err}");
    }

    #[test]
    fn typed_extension_config_errors_have_paths() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            cluster: String,
        }
        let e = parse_typed::<T>(&serde_json::json!({"cluster": 3})).unwrap_err();
        assert_eq!(e.path, "cluster");
    }

    /// A parsed list of clusters holds one pointer per cluster, not the
    /// buffer the clusters were parsed into (an in-place collect kept it:
    /// ~1.8 KB per cluster, issue 23).
    #[test]
    fn shared_lists_are_sized_to_fit() {
        let mut src = String::from("clusters:\n");
        for i in 0..100 {
            src.push_str(&format!(
                "  - name: c{i}\n    endpoints: [{{address: '127.0.0.1:{}'}}]\n",
                20000 + i
            ));
        }
        let (cfg, _) = parse_str(Path::new("c.yaml"), &src).unwrap();
        assert_eq!(cfg.clusters.len(), 100);
        assert_eq!(cfg.clusters[42].name, "c42");
    }
}
