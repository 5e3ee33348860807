//! Why the xDS client refuses a response or cannot serve what it composed.
//!
//! The `Display` of an [`XdsError`] is what a NACK carries as its
//! `error_detail` (and `/config_dump` shows as the refusal), naming the
//! resource at fault; the variant is the kind (`kind()`, for logs), and
//! the underlying error, where there is one, is its `source`.

use crate::translate::{DecodeError, TranslateError};
use meshgate_core::{BuildError, ConfigError};

/// A refused xDS response, or a composed config the server refused.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// A resource that is not of the response's type or does not decode.
    #[error("resources[{index}]: {source}")]
    Decode {
        index: usize,
        #[source]
        source: DecodeError,
    },
    /// A resource carrying fields meshgate does not know (prost would
    /// drop them silently).
    #[error("{resource}: {source}")]
    UnknownFields {
        resource: String,
        #[source]
        source: DecodeError,
    },
    /// Two resources of one response with one name (Envoy refuses it too).
    #[error("{resource}: appears twice in one response (duplicate resource name)")]
    Duplicate { resource: String },
    /// A CDS cluster named like a static cluster of the config file.
    #[error("Cluster '{0}': a static cluster of the config file has this name")]
    StaticClusterName(String),
    /// A delta `Resource` that is not what its envelope says: no
    /// resource in it, or a name other than the resource's own.
    #[error("resources[{index}] '{name}': {message}")]
    DeltaResource {
        index: usize,
        name: String,
        message: &'static str,
    },
    /// A resource type meshgate does not subscribe to.
    #[error("resource type '{0}' is not supported")]
    UnsupportedType(String),
    /// The translation into meshgate's config refused a resource.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// A RouteConfiguration that does not build (regexes, rewrites, header
    /// names), refused as its own fault rather than its listener's.
    #[error("RouteConfiguration '{name}': {source}")]
    Routes {
        name: String,
        #[source]
        source: BuildError,
    },
    /// The stand-in of a cluster past its initial fetch did not build.
    #[error("Cluster '{name}': stand-in: {source}")]
    StandIn {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    /// The server refused the composed config.
    #[error(transparent)]
    Server(#[from] ConfigError),
    /// The server stopped before answering.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl XdsError {
    /// The kind, as a short stable word for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Decode { .. } => "decode",
            Self::UnknownFields { .. } => "unknown_fields",
            Self::Duplicate { .. } => "duplicate",
            Self::StaticClusterName(_) => "static_cluster_name",
            Self::DeltaResource { .. } => "delta_resource",
            Self::UnsupportedType(_) => "unsupported_type",
            Self::Translate(_) => "translate",
            Self::Routes { .. } => "routes",
            Self::StandIn { .. } => "stand_in",
            Self::Server(_) => "server",
            Self::ShuttingDown => "shutting_down",
        }
    }
}
