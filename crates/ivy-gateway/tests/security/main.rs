//! The hostile-input suite (issue 11): every attack of the security review against the real gateway, in-process on
//! ephemeral 127.0.0.1 ports (and the binary where a start-up is the subject). Each case prints one line
//!
//! `SECURITY <case>: inputs tried N / survived N / lost N`
//!
//! where "survived" counts hostile inputs the gateway refused or bounded as it should, and "lost" those that got
//! through (each case asserts none did). `scripts/attack` runs the suite and sums the lines; the figures are
//! recorded in docs/SECURITY.md.

#[path = "../service/harness.rs"]
#[allow(dead_code)]
mod harness;

mod broker;
mod data;
mod http;
mod listeners;
mod logs;
mod memory;
mod raw;

/// Prints a case's figures in the form `scripts/attack` sums, and fails the case when anything was lost.
pub fn report(case: &str, tried: usize, survived: usize) {
    let lost = tried - survived.min(tried);
    println!("SECURITY {case}: inputs tried {tried} / survived {survived} / lost {lost}");
    assert_eq!(lost, 0, "{case}: {lost} of {tried} hostile inputs got through");
}
