//! The error types of meshgate-core: config errors that name file, line and
//! field, and build errors raised by extension factories.

use std::fmt;
use std::path::PathBuf;

/// A config error as an operator sees it: `file:line: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or the source name, e.g. `xds`).
    pub file: PathBuf,
    /// 1-based line of the offending field, when known.
    pub line: Option<usize>,
    /// The field's path, e.g. `listeners[0].filter_chains[0].filters[0].config.cluster`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// An error raised while building an extension (filter, load balancer) from
/// its typed config. `path` is relative to the extension's `config` object;
/// the config compiler prefixes it and adds the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub path: String,
    pub message: String,
}

impl BuildError {
    /// `message` is any error or text; typed errors (e.g. [`ValueError`])
    /// keep their own `Display`.
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// A config value that does not compile: a regex, a `retry_on` list, a
/// regex substitution. The config compiler files its message under the
/// field's path in a [`BuildError`].
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("invalid regex: {0}")]
    Regex(#[source] regex::Error),
    #[error(
        "unknown retry_on '{0}' (known: 5xx, gateway-error, connect-failure, reset, reset-before-request, retriable-status-codes, retriable-4xx, retriable-headers, envoy-ratelimited, refused-stream, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)"
    )]
    UnknownRetryOn(String),
    #[error("retry_on 'http3-post-connect-failure' is not supported")]
    UnsupportedRetryOn,
    #[error("must name at least one retry condition")]
    NoRetryOn,
    #[error("substitution refers to group {group} but the pattern has {groups} group(s)")]
    NoSuchGroup { group: usize, groups: usize },
    #[error("'\\' must be followed by a digit or '\\'")]
    BadEscape,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for BuildError {}

/// Errors of the running server (not config): bind failures and I/O.
///
/// Transparent: the inner error is the whole message. (`{0}` with `#[from]`
/// also made it the `source`, and `anyhow`'s `{:#}` printed it twice.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Joins a parent path and a relative one the way serde_path_to_error prints
/// paths: `a.b`, `a[0]`.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.is_empty() {
        parent.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}
