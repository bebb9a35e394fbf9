//! Placeholder.
use super::{ExplainError, Explanation};
/// Placeholder.
pub fn explain_frame(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
