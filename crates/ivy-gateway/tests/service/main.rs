//! Integration tests of the gateway service: the real gateway in-process on ephemeral ports, simulated meters over
//! TCP, and real MQTT clients.

#[path = "../common/ca.rs"]
mod ca;
mod commands;
mod dlms_field;
mod fleet;
mod harness;
mod http;
mod identification;
mod lifecycle;
mod limits;
mod polling;
mod reload;
mod store;
mod tls;
