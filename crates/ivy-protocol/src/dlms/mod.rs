//! DLMS/COSEM (placeholder until the module lands).
pub mod extent;
pub use extent::{ApduExtent, apdu_extent, is_apdu_tag};
