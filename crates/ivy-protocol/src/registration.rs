//! Placeholder.
/// Placeholder.
pub struct RegistrationRule;
impl RegistrationRule {
    /// Placeholder.
    pub fn em114070() -> Self {
        RegistrationRule
    }
    /// Placeholder.
    pub fn matches_prefix(&self, _b: &[u8]) -> bool {
        false
    }
}
