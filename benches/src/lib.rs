//! meshgate's benchmarks: criterion micro-benchmarks live in `benches/benches`,
//! the side-by-side harness against nginx and HAProxy in `benches/compare`.
