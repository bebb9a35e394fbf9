//! Placeholder.
use super::{ExplainError, Explanation};
/// Placeholder.
pub fn explain_packet(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
/// Placeholder.
pub fn explain_heartbeat(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
