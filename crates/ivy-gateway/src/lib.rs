//! The IVY gateway service: meter sessions, polling, commands, alarms and the MQTT bridge, on top of the sans-IO
//! [`ivy_protocol`] crate.

// What nothing outside the crate needs is `pub(crate)`, so the public surface is what the binary and the tests use.
#![warn(unreachable_pub)]

pub mod alarms;
pub mod auth;
pub(crate) mod commands;
pub mod config;
pub mod decode;
pub mod descriptors;
pub mod durable;
pub mod error;
pub mod gateway;
pub mod http;
pub mod hub;
pub(crate) mod live;
pub(crate) mod lock;
pub mod login_guard;
pub mod meters;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod registers;
pub mod reload;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod upstream;
