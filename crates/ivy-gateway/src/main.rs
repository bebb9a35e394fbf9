//! `ivy-gateway` binary (placeholder).
fn main() {}
