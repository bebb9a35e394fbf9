//! Criterion benchmarks (filled in once the codecs land).
fn main() {}
