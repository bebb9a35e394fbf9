//! Placeholder.
mod common;
#[test]
fn placeholder() {}
