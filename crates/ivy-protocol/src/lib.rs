//! # ivy-protocol
//!
//! Pure, sans-IO codecs and state machines for the meter protocols the IVY gateway speaks:
//!
//! * [`dlt645`] — DL/T 645-2007 frames, the stream framer, the register catalogue and value decoding, and a
//!   client (master) state machine;
//! * [`wrapper`] — the IEC 62056-47 ("IVY") wrapper and a stream framer that also frames raw DLMS APDUs;
//! * [`registration`] — registration/heartbeat packet rules (the IVY EM114070 heartbeat built in) and meter ids;
//! * [`dlms`] — A-XDR data, COSEM date-time, OBIS codes and registry, the APDUs a client builds and parses, and a
//!   client association state machine;
//! * [`detect`] — which protocol a connection speaks, decided from its first bytes.
//!
//! ## Sans-IO
//!
//! Nothing here opens a socket, spawns a task or reads a clock. Every type takes bytes (or a time passed in by the
//! caller) and returns typed values, events and the bytes to send. That keeps the protocol logic deterministic:
//! it is tested byte for byte against the shared vectors, property-tested, and fuzzed, and the gateway service is
//! left with the plumbing (tokio sockets, timers, channels). Every parser is total: malformed input produces an
//! error value, never a panic, and every buffer has a bound.
//!
//! ## Example
//!
//! ```
//! use ivy_protocol::dlt645::{Address, Di, Frame, Framer, FramerEvent};
//!
//! // Build a read request for phase-A voltage (DI 02010100) to meter 000000001234 ...
//! let address: Address = "000000001234".parse().unwrap();
//! let di: Di = "02010100".parse().unwrap();
//! let request = Frame::read(address, di).encode();
//! assert_eq!(request[..2], [0x68, 0x34]);
//!
//! // ... and decode the meter's reply, however the bytes arrive.
//! let reply = hex::decode("68341200000000689106333434353855".to_owned() + "0a16").unwrap();
//! let mut framer = Framer::new();
//! let mut frames = Vec::new();
//! for byte in &reply {
//!     framer.push(std::slice::from_ref(byte));
//!     while let Some(event) = framer.next_event() {
//!         if let FramerEvent::Frame(frame) = event {
//!             frames.push(frame);
//!         }
//!     }
//! }
//! assert_eq!(frames.len(), 1);
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

mod calendar;
pub mod detect;
pub mod dlms;
pub mod dlt645;
#[cfg(feature = "explain")]
pub mod explain;
pub mod quantity;
pub mod registration;
pub mod wrapper;

pub use quantity::Quantity;
