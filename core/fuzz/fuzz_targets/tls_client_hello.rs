//! ClientHello inspection (SNI for filter-chain matching) on arbitrary
//! first bytes of a connection.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshgate_core::tls_inspect::inspect(data);
});
