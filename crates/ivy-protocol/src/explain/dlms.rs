//! Placeholder.
use super::{ExplainError, Explanation};
/// Placeholder.
pub fn explain_apdu(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
/// Placeholder.
pub fn explain_axdr(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
/// Placeholder.
pub fn explain_obis(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
/// Placeholder.
pub fn explain_cosem_date_time(_b: &[u8]) -> Result<Explanation, ExplainError> {
    Err(ExplainError::new("unsupported", "not yet"))
}
