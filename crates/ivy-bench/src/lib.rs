//! Load benchmarks of the IVY gateway. Every scenario starts the gateway binary as a child process on free
//! 127.0.0.1 ports, drives it with an in-process [`ivy_sim::fleet::Fleet`], counts every MQTT message once through
//! one subscriber, and returns one JSON object. [`report`] turns the results into the tables of
//! `docs/PERFORMANCE.md`. Benchmarks are not tests: the test suite runs the same scenarios at [`scenarios::Scale::smoke`]
//! size and checks only counts and loss.

pub mod bus;
pub mod mosquitto;
pub mod process;
pub mod report;
pub mod scenarios;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
