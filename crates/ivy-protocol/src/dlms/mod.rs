//! DLMS/COSEM (SPEC 2.3): A-XDR data, COSEM date-time, OBIS codes and the OBIS registry, unit codes, the APDUs a
//! client builds and parses (and a server's, for the simulator), raw-APDU framing by encoding, and a sans-IO
//! client association state machine.

pub mod apdu;
pub mod association;
pub mod axdr;
pub mod datetime;
pub mod extent;
#[cfg(feature = "json")]
pub mod json;
pub mod obis;
pub mod push;
pub mod registry;
pub mod timezone;
pub mod units;

pub use apdu::{Apdu, ApduError, AttributeDescriptor, Conformance, DataAccessResult, InvokeIdAndPriority};
pub use axdr::{AxdrError, Data};
pub use datetime::CosemDateTime;
pub use extent::{ApduExtent, apdu_extent, is_apdu_tag};
pub use obis::Obis;
pub use push::{Push, PushedValue, decode_notification};
pub use registry::{ObisDef, ObisRegistry};
pub use timezone::{MeterZone, ZonedTime};
