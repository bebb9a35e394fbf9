//! Placeholder.
/// Placeholder.
pub enum ApduExtent {}
/// Placeholder.
pub fn apdu_extent(_buf: &[u8]) -> Option<ApduExtent> {
    None
}
/// Placeholder.
pub fn is_apdu_tag(tag: u8) -> bool {
    matches!(tag, 0x60..=0x63 | 0xC0..=0xC5 | 0xC7 | 0xD8 | 0x0F)
}
