//! A-XDR `Data` (IEC 62056-6-2 / Blue Book): every type the gateway meets, BER lengths up to 4 length bytes,
//! 64-bit integers at full precision. Decoding is total and bounded: nesting depth is limited to [`MAX_DEPTH`] and
//! element counts are checked against the bytes actually present before anything is allocated.

use std::fmt;

/// Deepest nesting of arrays/structures accepted.
pub const MAX_DEPTH: usize = 32;

/// Why bytes are not A-XDR data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AxdrError {
    /// The bytes end before the value does (more bytes may complete it).
    #[error("data truncated")]
    Truncated,
    /// A type tag that is not defined.
    #[error("unknown data type tag {0}")]
    UnknownDataType(u8),
    /// A length field that is malformed or larger than 4 bytes.
    #[error("invalid length encoding")]
    InvalidLength,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("data nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A utf8-string that is not UTF-8.
    #[error("utf8-string is not valid UTF-8")]
    InvalidUtf8,
}

impl AxdrError {
    /// The vectors' snake_case error name.
    pub fn kind(&self) -> &'static str {
        match self {
            AxdrError::Truncated => "truncated",
            AxdrError::UnknownDataType(_) => "unknown_data_type",
            AxdrError::InvalidLength => "invalid_length",
            AxdrError::TooDeep => "too_deep",
            AxdrError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// An A-XDR value.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// 0 null-data.
    Null,
    /// 1 array.
    Array(Vec<Data>),
    /// 2 structure.
    Structure(Vec<Data>),
    /// 3 boolean.
    Boolean(bool),
    /// 4 bit-string: number of bits and the bytes holding them (first bit = MSB of the first byte).
    BitString {
        /// Number of bits.
        bits: usize,
        /// ⌈bits/8⌉ bytes.
        bytes: Vec<u8>,
    },
    /// 5 double-long.
    DoubleLong(i32),
    /// 6 double-long-unsigned.
    DoubleLongUnsigned(u32),
    /// 9 octet-string.
    OctetString(Vec<u8>),
    /// 10 visible-string (bytes as sent; usually ASCII).
    VisibleString(Vec<u8>),
    /// 12 utf8-string.
    Utf8String(String),
    /// 13 bcd (one byte).
    Bcd(u8),
    /// 15 integer.
    Integer(i8),
    /// 16 long.
    Long(i16),
    /// 17 unsigned.
    Unsigned(u8),
    /// 18 long-unsigned.
    LongUnsigned(u16),
    /// 19 compact-array (decoded as its type description and raw contents).
    CompactArray {
        /// The TypeDescription bytes.
        description: Vec<u8>,
        /// The array contents.
        contents: Vec<u8>,
    },
    /// 20 long64.
    Long64(i64),
    /// 21 long64-unsigned.
    Long64Unsigned(u64),
    /// 22 enum.
    Enum(u8),
    /// 23 float32.
    Float32(f32),
    /// 24 float64.
    Float64(f64),
    /// 25 date-time (12 bytes, see [`super::datetime::CosemDateTime`]).
    DateTime([u8; 12]),
    /// 26 date (5 bytes).
    Date([u8; 5]),
    /// 27 time (4 bytes).
    Time([u8; 4]),
}

/// Reads a BER/A-XDR length at the start of `buf`: `(length, bytes used)`.
pub fn decode_length(buf: &[u8]) -> Result<(usize, usize), AxdrError> {
    let (&first, rest) = buf.split_first().ok_or(AxdrError::Truncated)?;
    if first < 0x80 {
        return Ok((usize::from(first), 1));
    }
    let n = usize::from(first & 0x7F);
    if n == 0 || n > 4 {
        return Err(AxdrError::InvalidLength);
    }
    let bytes = rest.get(..n).ok_or(AxdrError::Truncated)?;
    Ok((bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), 1 + n))
}

/// Appends a BER length.
pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AxdrError> {
        let end = self.pos.checked_add(n).ok_or(AxdrError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(AxdrError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AxdrError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, AxdrError> {
        Ok(self.array::<1>()?[0])
    }

    fn length(&mut self) -> Result<usize, AxdrError> {
        let (len, used) = decode_length(self.buf.get(self.pos..).unwrap_or_default())?;
        self.pos += used;
        Ok(len)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn data(&mut self, depth: usize) -> Result<Data, AxdrError> {
        if depth > MAX_DEPTH {
            return Err(AxdrError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            0 => Data::Null,
            1 | 2 => {
                let count = self.length()?;
                // Every element takes at least one byte: never reserve more than the bytes present.
                let mut items = Vec::with_capacity(count.min(self.remaining()));
                for _ in 0..count {
                    items.push(self.data(depth + 1)?);
                }
                if tag == 1 { Data::Array(items) } else { Data::Structure(items) }
            }
            3 => Data::Boolean(self.u8()? != 0),
            4 => {
                let bits = self.length()?;
                Data::BitString { bits, bytes: self.take(bits.div_ceil(8))?.to_vec() }
            }
            5 => Data::DoubleLong(i32::from_be_bytes(self.array()?)),
            6 => Data::DoubleLongUnsigned(u32::from_be_bytes(self.array()?)),
            9 | 10 | 12 => {
                let len = self.length()?;
                let bytes = self.take(len)?.to_vec();
                match tag {
                    9 => Data::OctetString(bytes),
                    10 => Data::VisibleString(bytes),
                    _ => Data::Utf8String(String::from_utf8(bytes).map_err(|_| AxdrError::InvalidUtf8)?),
                }
            }
            13 => Data::Bcd(self.u8()?),
            15 => Data::Integer(i8::from_be_bytes(self.array()?)),
            16 => Data::Long(i16::from_be_bytes(self.array()?)),
            17 => Data::Unsigned(self.u8()?),
            18 => Data::LongUnsigned(u16::from_be_bytes(self.array()?)),
            19 => {
                let start = self.pos;
                skip_type_description(self, depth + 1)?;
                let description = self.buf.get(start..self.pos).unwrap_or_default().to_vec();
                let len = self.length()?;
                Data::CompactArray { description, contents: self.take(len)?.to_vec() }
            }
            20 => Data::Long64(i64::from_be_bytes(self.array()?)),
            21 => Data::Long64Unsigned(u64::from_be_bytes(self.array()?)),
            22 => Data::Enum(self.u8()?),
            23 => Data::Float32(f32::from_be_bytes(self.array()?)),
            24 => Data::Float64(f64::from_be_bytes(self.array()?)),
            25 => Data::DateTime(self.array()?),
            26 => Data::Date(self.array()?),
            27 => Data::Time(self.array()?),
            other => return Err(AxdrError::UnknownDataType(other)),
        })
    }
}

fn skip_type_description(r: &mut Reader<'_>, depth: usize) -> Result<(), AxdrError> {
    if depth > MAX_DEPTH {
        return Err(AxdrError::TooDeep);
    }
    match r.u8()? {
        1 => {
            r.take(2)?;
            skip_type_description(r, depth + 1)
        }
        2 => {
            for _ in 0..r.length()? {
                skip_type_description(r, depth + 1)?;
            }
            Ok(())
        }
        0 | 3..=6 | 9 | 10 | 12 | 13 | 15..=18 | 20..=27 => Ok(()),
        other => Err(AxdrError::UnknownDataType(other)),
    }
}

impl Data {
    /// Decodes one value at the start of `buf`: the value and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Data, usize), AxdrError> {
        let mut r = Reader { buf, pos: 0 };
        let d = r.data(0)?;
        Ok((d, r.pos))
    }

    /// Decodes exactly one value filling `buf`; trailing bytes are an error (`InvalidLength`).
    pub fn decode_exact(buf: &[u8]) -> Result<Data, AxdrError> {
        let (d, used) = Data::decode(buf)?;
        if used == buf.len() { Ok(d) } else { Err(AxdrError::InvalidLength) }
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            Data::Null => {}
            Data::Array(items) | Data::Structure(items) => {
                encode_length(items.len(), out);
                for i in items {
                    i.encode(out);
                }
            }
            Data::Boolean(b) => out.push(u8::from(*b)),
            Data::BitString { bits, bytes } => {
                encode_length(*bits, out);
                out.extend_from_slice(bytes);
            }
            Data::DoubleLong(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::DoubleLongUnsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::OctetString(b) | Data::VisibleString(b) => {
                encode_length(b.len(), out);
                out.extend_from_slice(b);
            }
            Data::Utf8String(s) => {
                encode_length(s.len(), out);
                out.extend_from_slice(s.as_bytes());
            }
            Data::Bcd(v) | Data::Unsigned(v) | Data::Enum(v) => out.push(*v),
            Data::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Long(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::LongUnsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::CompactArray { description, contents } => {
                out.extend_from_slice(description);
                encode_length(contents.len(), out);
                out.extend_from_slice(contents);
            }
            Data::Long64(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Long64Unsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Float32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Float64(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::DateTime(b) => out.extend_from_slice(b),
            Data::Date(b) => out.extend_from_slice(b),
            Data::Time(b) => out.extend_from_slice(b),
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// The type tag.
    pub fn tag(&self) -> u8 {
        match self {
            Data::Null => 0,
            Data::Array(_) => 1,
            Data::Structure(_) => 2,
            Data::Boolean(_) => 3,
            Data::BitString { .. } => 4,
            Data::DoubleLong(_) => 5,
            Data::DoubleLongUnsigned(_) => 6,
            Data::OctetString(_) => 9,
            Data::VisibleString(_) => 10,
            Data::Utf8String(_) => 12,
            Data::Bcd(_) => 13,
            Data::Integer(_) => 15,
            Data::Long(_) => 16,
            Data::Unsigned(_) => 17,
            Data::LongUnsigned(_) => 18,
            Data::CompactArray { .. } => 19,
            Data::Long64(_) => 20,
            Data::Long64Unsigned(_) => 21,
            Data::Enum(_) => 22,
            Data::Float32(_) => 23,
            Data::Float64(_) => 24,
            Data::DateTime(_) => 25,
            Data::Date(_) => 26,
            Data::Time(_) => 27,
        }
    }

    /// The standard type name (`double-long-unsigned`, ...).
    pub fn type_name(&self) -> &'static str {
        type_name(self.tag())
    }

    /// The value as an integer, for integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match self {
            Data::Boolean(b) => i128::from(*b),
            Data::DoubleLong(v) => i128::from(*v),
            Data::DoubleLongUnsigned(v) => i128::from(*v),
            Data::Integer(v) => i128::from(*v),
            Data::Long(v) => i128::from(*v),
            Data::Unsigned(v) | Data::Enum(v) => i128::from(*v),
            Data::LongUnsigned(v) => i128::from(*v),
            Data::Long64(v) => i128::from(*v),
            Data::Long64Unsigned(v) => i128::from(*v),
            _ => return None,
        })
    }

    /// The value as a float, for numeric types.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Data::Float32(v) => Some(f64::from(*v)),
            Data::Float64(v) => Some(*v),
            other => other.as_i128().map(|v| v as f64),
        }
    }

    /// The bytes of an octet-string or visible-string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Data::OctetString(b) | Data::VisibleString(b) => Some(b),
            Data::Utf8String(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The text of a string value: visible/utf8 strings, or an octet-string that is printable ASCII.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Data::Utf8String(s) => Some(s.clone()),
            Data::OctetString(b) | Data::VisibleString(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                Some(b.iter().map(|c| char::from(*c)).collect())
            }
            _ => None,
        }
    }

    /// `(scaler, unit)` when this is a scaler_unit structure `{integer, enum}`.
    pub fn as_scaler_unit(&self) -> Option<(i8, u8)> {
        match self {
            Data::Structure(items) => match items.as_slice() {
                [Data::Integer(s), Data::Enum(u)] => Some((*s, *u)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Name of a type tag (IEC 62056-6-2 numbering: 13 is bcd, 19 compact-array).
pub fn type_name(tag: u8) -> &'static str {
    match tag {
        0 => "null-data",
        1 => "array",
        2 => "structure",
        3 => "boolean",
        4 => "bit-string",
        5 => "double-long",
        6 => "double-long-unsigned",
        9 => "octet-string",
        10 => "visible-string",
        12 => "utf8-string",
        13 => "bcd",
        15 => "integer",
        16 => "long",
        17 => "unsigned",
        18 => "long-unsigned",
        19 => "compact-array",
        20 => "long64",
        21 => "long64-unsigned",
        22 => "enum",
        23 => "float32",
        24 => "float64",
        25 => "date-time",
        26 => "date",
        27 => "time",
        _ => "unknown",
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Null => f.write_str("null"),
            Data::Array(items) | Data::Structure(items) => {
                f.write_str(if matches!(self, Data::Array(_)) { "[" } else { "{" })?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(if matches!(self, Data::Array(_)) { "]" } else { "}" })
            }
            Data::Boolean(b) => write!(f, "{b}"),
            Data::Float32(v) => write!(f, "{v}"),
            Data::Float64(v) => write!(f, "{v}"),
            Data::DateTime(b) => write!(f, "{}", super::datetime::CosemDateTime::from_bytes(b)),
            other => match (other.as_i128(), other.as_text(), other.as_bytes()) {
                (Some(n), _, _) => write!(f, "{n}"),
                (_, Some(t), _) => write!(f, "\"{t}\""),
                (_, _, Some(b)) => {
                    for x in b {
                        write!(f, "{x:02x}")?;
                    }
                    Ok(())
                }
                _ => write!(f, "{}", other.type_name()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        let mut v = Vec::new();
        encode_length(130, &mut v);
        assert_eq!(v, [0x81, 0x82]);
        assert_eq!(decode_length(&[0x82, 0x01, 0x00]).unwrap(), (256, 3));
        assert_eq!(decode_length(&[0x85, 0, 0, 0, 0, 0]), Err(AxdrError::InvalidLength));
        assert_eq!(decode_length(&[0x82, 0x01]), Err(AxdrError::Truncated));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // An array claiming 4 billion elements in 6 bytes: truncated, not an allocation failure.
        assert_eq!(Data::decode(&[0x01, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), Err(AxdrError::Truncated));
        let mut deep = [0x01, 0x01].repeat(40);
        deep.push(0x00);
        assert_eq!(Data::decode(&deep), Err(AxdrError::TooDeep));
    }
}
