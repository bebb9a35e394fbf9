//! The IVY gateway service: meter sessions, polling, commands, alarms and the MQTT bridge, on top of the sans-IO
//! [`ivy_protocol`] crate.

pub mod alarms;
pub mod auth;
pub mod commands;
pub mod config;
pub mod decode;
pub mod error;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod lock;
pub mod meters;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod registers;
pub mod stats;
