//! The gateway against real external components: Mosquitto as the upstream broker (started by the tests from a
//! configuration they write, on an ephemeral port, stopped and restarted by PID) and HAProxy in front of several
//! gateways. Needs the Debian packages `mosquitto` and `haproxy` (`scripts/test` installs them when missing; a test
//! fails, never skips, without them).

#[path = "../common/ca.rs"]
mod ca;
mod delivery;
mod harness;
mod scale;
mod support;
mod tls;
