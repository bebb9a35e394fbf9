//! DL/T 645-2007 (SPEC 2.2): addresses, the control byte, frames and the length-driven stream framer, the register
//! catalogue with value decoding, and the requests the gateway sends (read, read follow-up, read address, broadcast
//! time, write, relay control with optional AES-128-ECB).

pub mod address;
pub mod bcd;
pub mod client;
pub mod control;
pub mod di;
pub mod frame;
pub mod framer;
pub mod registers;
pub mod relay;
pub mod time;

pub use address::{Address, AddressError};
pub use control::{Control, ErrorFlags, function};
pub use di::{Di, DiError};
pub use frame::{BuildError, Decoded, Frame, FrameError, MAX_DATA_LEN, Reply};
pub use framer::{Framer, FramerEvent};
pub use registers::{Catalogue, DecodedValue, Format, RegisterDef, ValueError};
pub use relay::{RelayAuth, RelayCommand};
pub use time::MeterDateTime;
