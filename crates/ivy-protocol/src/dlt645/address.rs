//! Meter addresses: 12 decimal digits as 6 BCD bytes, least significant byte first on the wire.

use std::fmt;

/// A DL/T 645 address as its 6 wire bytes (least significant first). Received addresses are kept as they are,
/// even when not BCD (some meters answer with `FFFFFFFFFFFF`): [`Address::is_bcd`] tells.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 6]);

/// Why text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not 12 characters.
    #[error("an address has 12 digits, got {0} characters")]
    Length(usize),
    /// A character that is not a decimal digit (or `A` of the wildcard).
    #[error("address character {0:?} is not a digit")]
    Character(char),
}

impl Address {
    /// `999999999999`: every meter, no reply expected (broadcast time).
    pub const BROADCAST: Address = Address([0x99; 6]);
    /// `AAAAAAAAAAAA`: whichever meter is listening (read address).
    pub const WILDCARD: Address = Address([0xAA; 6]);

    /// From the 6 wire bytes.
    pub fn from_wire(bytes: [u8; 6]) -> Self {
        Address(bytes)
    }

    /// The 6 wire bytes.
    pub fn to_wire(&self) -> [u8; 6] {
        self.0
    }

    /// True when every nibble is a decimal digit.
    pub fn is_bcd(&self) -> bool {
        self.0.iter().all(|b| b >> 4 <= 9 && b & 0x0F <= 9)
    }

    /// True for the broadcast or wildcard address.
    pub fn is_special(&self) -> bool {
        *self == Self::BROADCAST || *self == Self::WILDCARD
    }
}

impl fmt::Display for Address {
    /// Most significant digit first; non-BCD nibbles print as lower-case hex (`aaaaaaaaaaaa`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    /// 12 decimal digits, or the wildcard `AAAAAAAAAAAA` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 12 {
            return Err(AddressError::Length(s.chars().count()));
        }
        if s.eq_ignore_ascii_case("aaaaaaaaaaaa") {
            return Ok(Self::WILDCARD);
        }
        let mut out = [0u8; 6];
        let digits: Vec<u8> = s
            .chars()
            .map(|c| c.to_digit(10).map(|d| d as u8).ok_or(AddressError::Character(c)))
            .collect::<Result<_, _>>()?;
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            if let (Some(slot), [hi, lo]) = (out.get_mut(5 - i), pair) {
                *slot = (hi << 4) | lo;
            }
        }
        Ok(Address(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_wire() {
        let a: Address = "000000001234".parse().unwrap();
        assert_eq!(a.to_wire(), [0x34, 0x12, 0, 0, 0, 0]);
        assert_eq!(a.to_string(), "000000001234");
        assert_eq!("aaaaaaaaaaaa".parse::<Address>().unwrap(), Address::WILDCARD);
        assert_eq!(Address::WILDCARD.to_string(), "aaaaaaaaaaaa");
        assert!("12345".parse::<Address>().is_err());
        assert!("12345678901x".parse::<Address>().is_err());
        assert!(!Address::from_wire([0xFF; 6]).is_bcd());
    }
}
