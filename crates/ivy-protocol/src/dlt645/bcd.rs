//! BCD helpers (little-endian byte order, as DL/T 645 sends values) and the +0x33 data offset.

/// Why bytes are not valid BCD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BcdError {
    /// A nibble above 9.
    #[error("byte {byte:#04x} is not BCD")]
    InvalidDigit {
        /// The offending byte.
        byte: u8,
    },
    /// The value does not fit the number of bytes, or is too long to decode.
    #[error("value does not fit in {0} BCD bytes")]
    Overflow(usize),
}

/// Adds 0x33 to every byte (what the sender does to the data field).
pub fn add_offset(bytes: &mut [u8]) {
    for b in bytes {
        *b = b.wrapping_add(0x33);
    }
}

/// Subtracts 0x33 from every byte (what the receiver does).
pub fn remove_offset(bytes: &mut [u8]) {
    for b in bytes {
        *b = b.wrapping_sub(0x33);
    }
}

/// Packs one value 0..=99 into a BCD byte.
pub fn to_bcd_byte(v: u8) -> Option<u8> {
    (v <= 99).then_some(((v / 10) << 4) | (v % 10))
}

/// Unpacks one BCD byte.
pub fn from_bcd_byte(b: u8) -> Result<u8, BcdError> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(BcdError::InvalidDigit { byte: b });
    }
    Ok(hi * 10 + lo)
}

/// Decodes little-endian BCD (least significant byte first), up to 9 bytes (18 digits).
pub fn decode_le(bytes: &[u8]) -> Result<u64, BcdError> {
    if bytes.len() > 9 {
        return Err(BcdError::Overflow(bytes.len()));
    }
    let mut v: u64 = 0;
    for &b in bytes.iter().rev() {
        v = v * 100 + u64::from(from_bcd_byte(b)?);
    }
    Ok(v)
}

/// Encodes `value` as `len` little-endian BCD bytes.
pub fn encode_le(value: u64, len: usize) -> Result<Vec<u8>, BcdError> {
    let mut out = Vec::with_capacity(len);
    let mut v = value;
    for _ in 0..len {
        // `v % 100` is always below 100, so the conversion cannot fail.
        out.push(to_bcd_byte((v % 100) as u8).unwrap_or(0));
        v /= 100;
    }
    if v != 0 {
        return Err(BcdError::Overflow(len));
    }
    Ok(out)
}

/// Decodes signed little-endian BCD: the top bit of the most significant (last) byte is the sign.
pub fn decode_signed_le(bytes: &[u8]) -> Result<i64, BcdError> {
    let Some((&msb, rest)) = bytes.split_last() else { return Ok(0) };
    let negative = msb & 0x80 != 0;
    let mut v: u64 = u64::from(from_bcd_byte(msb & 0x7F)?);
    for &b in rest.iter().rev() {
        v = v * 100 + u64::from(from_bcd_byte(b)?);
    }
    if bytes.len() > 9 {
        return Err(BcdError::Overflow(bytes.len()));
    }
    let v = v as i64;
    Ok(if negative { -v } else { v })
}

/// Encodes a signed value as `len` little-endian BCD bytes with the sign in the top bit.
pub fn encode_signed_le(value: i64, len: usize) -> Result<Vec<u8>, BcdError> {
    let mut out = encode_le(value.unsigned_abs(), len)?;
    if let Some(msb) = out.last_mut() {
        if *msb & 0x80 != 0 {
            return Err(BcdError::Overflow(len));
        }
        if value < 0 {
            *msb |= 0x80;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(encode_le(123456, 4).unwrap(), [0x56, 0x34, 0x12, 0x00]);
        assert_eq!(decode_le(&[0x56, 0x34, 0x12, 0x00]).unwrap(), 123456);
        assert_eq!(encode_signed_le(-100, 2).unwrap(), [0x00, 0x81]);
        assert_eq!(decode_signed_le(&[0x34, 0x12, 0x80]).unwrap(), -1234);
        assert!(encode_le(100, 1).is_err());
        assert!(encode_signed_le(800_000, 3).is_err());
        assert_eq!(decode_le(&[0x1A]), Err(BcdError::InvalidDigit { byte: 0x1A }));
        assert!(decode_le(&[0; 10]).is_err());
    }
}
