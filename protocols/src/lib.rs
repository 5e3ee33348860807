//! Protocol codecs for meshgate. Each codec lives in its own module and is
//! registered by name through `meshgate_core::registry::Registry`; core never
//! names a concrete codec.

pub mod bolt;
pub mod dubbo;
pub mod http;
pub mod http3;
pub mod rpc;

use meshgate_core::registry::{DuplicateName, Registry};
use std::sync::Arc;

/// Registers every codec this crate provides.
pub fn register_all(registry: &mut Registry) -> Result<(), DuplicateName> {
    registry.register_codec(Arc::new(http::Http2Codec))?;
    registry.register_codec(Arc::new(http3::Http3Codec))?;
    registry.register_codec(Arc::new(dubbo::DubboCodec))?;
    registry.register_codec(Arc::new(bolt::BoltCodec))?;
    registry.register_codec(Arc::new(http::Http1Codec))
}
