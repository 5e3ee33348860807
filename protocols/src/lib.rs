//! Protocol codecs for meshgate. Each codec lives in its own module and is
//! registered by name through `meshgate_core::registry::Registry`; core never
//! names a concrete codec. The HTTP/1, HTTP/2, HTTP/3, Dubbo and Bolt codecs
//! arrive with their issues; this crate exists so the dependency arrows of
//! DESIGN.md hold from day one.

use meshgate_core::registry::Registry;

/// Registers every codec this crate provides. None yet: L4 needs no codec.
pub fn register_all(_registry: &mut Registry) {}
