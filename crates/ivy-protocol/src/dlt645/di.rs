//! Data identifiers (DL/T 645-2007 clause 7.1 and appendix A): four bytes `DI3 DI2 DI1 DI0` that name a register,
//! written most significant first in text (`02010100`: phase-A voltage) and sent least significant first on the
//! wire (`DI0 DI1 DI2 DI3`, each byte +0x33 like all data).

use super::bcd;
use std::fmt;

/// A data identifier. Every 32-bit value is a possible DI (the standard reserves ranges but meters use
/// vendor-specific ones), so the type only gives the number its meaning and its text and wire forms.
///
/// Text: [`FromStr`](std::str::FromStr) accepts exactly 8 hex digits, optionally prefixed `0x`/`0X`, surrounding
/// whitespace ignored (`02010100`, `0x02010100`), the forms commands and register files use; [`Display`] writes
/// `0x02010100`, the MQTT `dataId` form; [`Di::hex`] writes the bare `02010100` the test vectors use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Di(u32);

/// Why text is not a data identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a data identifier is 8 hex digits, optionally prefixed 0x (e.g. 02010100), got {0:?}")]
pub struct DiError(String);

impl Di {
    /// From its number, `DI3` in the most significant byte (`Di::new(0x0201_0100)`).
    pub const fn new(value: u32) -> Self {
        Di(value)
    }

    /// Its number, `DI3` in the most significant byte.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// From the four data bytes in wire order `DI0..DI3`, the 0x33 offset already removed (as in
    /// [`Frame::data`](super::Frame::data)).
    pub const fn from_le_bytes(bytes: [u8; 4]) -> Self {
        Di(u32::from_le_bytes(bytes))
    }

    /// The four data bytes in wire order `DI0..DI3`, without the 0x33 offset.
    pub const fn to_le_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// The four bytes as they travel on the wire: `DI0..DI3`, each +0x33.
    pub fn to_wire(self) -> [u8; 4] {
        let mut b = self.to_le_bytes();
        bcd::add_offset(&mut b);
        b
    }

    /// From the four bytes as they travel on the wire (`DI0..DI3`, each +0x33).
    pub fn from_wire(mut wire: [u8; 4]) -> Self {
        bcd::remove_offset(&mut wire);
        Self::from_le_bytes(wire)
    }

    /// Eight lower-case hex digits without prefix (`02010100`), as the test vectors write it.
    pub fn hex(self) -> String {
        format!("{:08x}", self.0)
    }
}

impl From<u32> for Di {
    fn from(value: u32) -> Self {
        Di(value)
    }
}

impl From<Di> for u32 {
    fn from(di: Di) -> Self {
        di.0
    }
}

impl fmt::Display for Di {
    /// `0x02010100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

impl fmt::Debug for Di {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Di({self})")
    }
}

impl std::str::FromStr for Di {
    type Err = DiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let digits = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")).unwrap_or(trimmed);
        // `from_str_radix` alone would also take a leading `+`: only hex digits are a DI.
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DiError(s.to_owned()));
        }
        u32::from_str_radix(digits, 16).map(Di).map_err(|_| DiError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let v = Di::new(0x0201_0100);
        for text in ["02010100", "0x02010100", "0X02010100", " 02010100\n", "0x02010100"] {
            assert_eq!(text.parse::<Di>(), Ok(v), "{text:?}");
        }
        assert_eq!("0400050A".parse::<Di>(), Ok(Di::new(0x0400_050A)));
        assert_eq!("0400050a".parse::<Di>(), Ok(Di::new(0x0400_050A)));
        for bad in ["", "0x", "0201010", "020101000", "+2010100", "0x+2010100", "0201010g", "0x 02010100", "00x0201010"]
        {
            assert!(bad.parse::<Di>().is_err(), "{bad:?} must not parse");
        }
        assert_eq!(v.to_string(), "0x02010100");
        assert_eq!(v.hex(), "02010100");
        assert_eq!(format!("{v:?}"), "Di(0x02010100)");
        assert_eq!(v.to_string().parse::<Di>(), Ok(v));
    }

    #[test]
    fn wire_forms() {
        let v = Di::new(0x0201_0100);
        assert_eq!(v.to_le_bytes(), [0x00, 0x01, 0x01, 0x02]);
        assert_eq!(v.to_wire(), [0x33, 0x34, 0x34, 0x35]);
        assert_eq!(Di::from_wire([0x33, 0x34, 0x34, 0x35]), v);
        assert_eq!(Di::from_le_bytes([0x00, 0x01, 0x01, 0x02]), v);
        assert_eq!(u32::from(v), 0x0201_0100);
        assert_eq!(Di::from(0x0201_0100), v);
        for raw in [0u32, 1, 0xFFFF_FFFF, 0xCCCC_CCCC, 0x3333_3333] {
            let d = Di::new(raw);
            assert_eq!(Di::from_wire(d.to_wire()), d);
            assert_eq!(d.to_string().parse::<Di>(), Ok(d));
        }
    }
}
