//! The xDS client of meshgate: subscribes to an Envoy v3 ADS stream and
//! translates resources into the one core config model. Not built yet (see
//! the dynamic-config issue); a config that asks for xDS is refused by core's
//! validation with a clear error rather than silently ignored.
