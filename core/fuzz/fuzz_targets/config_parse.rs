//! The config loader on arbitrary text: YAML or JSON parsing, the line
//! index and the error paths must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = meshgate_core::config::parse_str(std::path::Path::new("fuzz.yaml"), s);
        let _ = meshgate_core::config::parse_str(std::path::Path::new("fuzz.json"), s);
        let idx = meshgate_core::config::LineIndex::build(s);
        let _ = idx.line_of("listeners[0].filter_chains[0].filters[0].config.cluster");
    }
});
