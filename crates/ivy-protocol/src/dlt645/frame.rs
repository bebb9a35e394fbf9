//! DL/T 645-2007 frames: `[FE*] 68 A0..A5 68 C L DATA[L] CS 16`, data sent +0x33, checksum = sum of the bytes from
//! the first `68` through the last data byte, mod 256.
//!
//! A [`Frame`] keeps its data inline (at most [`MAX_DATA_LEN`] bytes), so decoding allocates nothing.

use super::address::Address;
use super::bcd::BcdError;
use super::control::{Control, ErrorFlags, function};
use super::di::Di;
use super::relay::{RelayAuth, RelayCommand};
use super::time::MeterDateTime;
use std::fmt;

/// The standard's limit for the data field.
pub const MAX_DATA_LEN: usize = 200;
/// Bytes of a frame around its data: 68, address, 68, C, L, CS, 16.
pub const OVERHEAD: usize = 12;
/// Longest frame on the wire (without preamble).
pub const MAX_FRAME_LEN: usize = OVERHEAD + MAX_DATA_LEN;

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than 12 bytes.
    #[error("a frame has at least 12 bytes, got {0}")]
    TooShort(usize),
    /// The first byte (after `FE`s) is not `68`.
    #[error("frame does not start with 68 (found {0:#04x})")]
    BadStartDelimiter(u8),
    /// Byte 7 is not the second `68`.
    #[error("second start delimiter 68 missing (found {0:#04x})")]
    BadSecondStartDelimiter(u8),
    /// L above 200.
    #[error("data length {0} exceeds the standard's 200")]
    DataTooLong(usize),
    /// Fewer bytes than L announces.
    #[error("data length {declared} needs {needed} bytes, only {available} present")]
    LengthMismatch {
        /// L.
        declared: usize,
        /// Frame bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Checksum wrong.
    #[error("checksum {actual:#04x} does not match the computed {expected:#04x}")]
    ChecksumMismatch {
        /// Computed.
        expected: u8,
        /// Received.
        actual: u8,
    },
    /// Last byte is not `16`.
    #[error("frame does not end with 16 (found {0:#04x})")]
    BadEndDelimiter(u8),
}

impl FrameError {
    /// The vectors' snake_case error name.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooShort(_) => "too_short",
            FrameError::BadStartDelimiter(_) => "bad_start_delimiter",
            FrameError::BadSecondStartDelimiter(_) => "bad_second_start_delimiter",
            FrameError::DataTooLong(_) => "data_too_long",
            FrameError::LengthMismatch { .. } => "length_mismatch",
            FrameError::ChecksumMismatch { .. } => "checksum_mismatch",
            FrameError::BadEndDelimiter(_) => "bad_end_delimiter",
        }
    }
}

/// Why a frame cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// More than 200 data bytes.
    #[error("data of {0} bytes exceeds the standard's 200")]
    DataTooLong(usize),
    /// A BCD field does not fit.
    #[error(transparent)]
    Bcd(#[from] BcdError),
}

/// One frame; `data` has the 0x33 offset removed.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Meter address.
    pub address: Address,
    /// Control byte.
    pub control: Control,
    data: [u8; MAX_DATA_LEN],
    len: u8,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("address", &self.address)
            .field("control", &format_args!("{:#04x}", self.control.0))
            .field("data", &format_args!("{:02x?}", self.data()))
            .finish()
    }
}

/// Result of looking at the start of a buffer that begins with `68`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parse {
    /// More bytes are needed (at least this many in total).
    NeedMore(usize),
    /// Not a valid frame here.
    Invalid(FrameError),
    /// A frame of this many bytes.
    Frame(Frame, usize),
}

/// Parses a frame at the start of `buf`, which must begin with `68` (no preamble).
pub(crate) fn parse_at(buf: &[u8]) -> Parse {
    match buf.first() {
        None => return Parse::NeedMore(OVERHEAD),
        Some(&0x68) => {}
        Some(&b) => return Parse::Invalid(FrameError::BadStartDelimiter(b)),
    }
    match buf.get(7) {
        None => return Parse::NeedMore(OVERHEAD),
        Some(&0x68) => {}
        Some(&b) => return Parse::Invalid(FrameError::BadSecondStartDelimiter(b)),
    }
    let (Some(&control), Some(&len)) = (buf.get(8), buf.get(9)) else { return Parse::NeedMore(OVERHEAD) };
    let len = usize::from(len);
    if len > MAX_DATA_LEN {
        return Parse::Invalid(FrameError::DataTooLong(len));
    }
    let total = OVERHEAD + len;
    let Some(frame) = buf.get(..total) else { return Parse::NeedMore(total) };
    let (Some(&cs), Some(&end)) = (frame.get(total - 2), frame.get(total - 1)) else {
        return Parse::NeedMore(total);
    };
    let body = frame.get(..total - 2).unwrap_or_default();
    let expected = checksum(body);
    if cs != expected {
        return Parse::Invalid(FrameError::ChecksumMismatch { expected, actual: cs });
    }
    if end != 0x16 {
        return Parse::Invalid(FrameError::BadEndDelimiter(end));
    }
    let mut address = [0u8; 6];
    if let Some(a) = frame.get(1..7) {
        address.copy_from_slice(a);
    }
    let mut data = [0u8; MAX_DATA_LEN];
    if let (Some(dst), Some(src)) = (data.get_mut(..len), frame.get(10..10 + len)) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.wrapping_sub(0x33);
        }
    }
    Parse::Frame(Frame { address: Address::from_wire(address), control: Control(control), data, len: len as u8 }, total)
}

/// Sum of `bytes` mod 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// A frame decoded from a complete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The frame.
    pub frame: Frame,
    /// `FE` bytes before it.
    pub preamble: usize,
    /// Bytes consumed, preamble included.
    pub consumed: usize,
}

/// What a frame from a meter says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A read reply (`91`/`B1`, `92`/`B2`): data identifier and value bytes (offset removed, little-endian).
    Data {
        /// Data identifier.
        di: Di,
        /// Value bytes.
        value: &'a [u8],
        /// More frames follow.
        follow_up: bool,
    },
    /// A read-address (`93`) reply.
    Address(Address),
    /// A positive acknowledgement without data (`94`, `95`, `9C`, ...).
    Ack(u8),
    /// An error reply (`D1`, `D4`, `DC`, ...).
    Error {
        /// Function it answers.
        function: u8,
        /// Error bits.
        flags: ErrorFlags,
    },
    /// A request (from a master), or a reply the gateway has no use for.
    Other,
}

impl Frame {
    /// A frame with `data` (plain, the offset is applied on encoding).
    pub fn new(address: Address, control: Control, data: &[u8]) -> Result<Self, BuildError> {
        if data.len() > MAX_DATA_LEN {
            return Err(BuildError::DataTooLong(data.len()));
        }
        let mut buf = [0u8; MAX_DATA_LEN];
        if let Some(dst) = buf.get_mut(..data.len()) {
            dst.copy_from_slice(data);
        }
        Ok(Frame { address, control, data: buf, len: data.len() as u8 })
    }

    /// The data field, offset removed.
    pub fn data(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// Decodes one frame from the start of `buf` (after optional `FE` bytes). Trailing bytes are ignored.
    pub fn decode(buf: &[u8]) -> Result<Decoded, FrameError> {
        let preamble = buf.iter().take_while(|&&b| b == 0xFE).count();
        let rest = buf.get(preamble..).unwrap_or_default();
        match parse_at(rest) {
            Parse::Frame(frame, len) => Ok(Decoded { frame, preamble, consumed: preamble + len }),
            Parse::Invalid(e) => Err(e),
            Parse::NeedMore(_) if rest.len() < OVERHEAD => Err(FrameError::TooShort(rest.len())),
            Parse::NeedMore(needed) => {
                Err(FrameError::LengthMismatch { declared: needed - OVERHEAD, needed, available: rest.len() })
            }
        }
    }

    /// The wire bytes (no preamble).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + self.data().len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the wire bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(0x68);
        out.extend_from_slice(&self.address.to_wire());
        out.push(0x68);
        out.push(self.control.0);
        out.push(self.len);
        out.extend(self.data().iter().map(|b| b.wrapping_add(0x33)));
        let cs = checksum(out.get(start..).unwrap_or_default());
        out.push(cs);
        out.push(0x16);
    }

    /// The wire bytes with `count` `FE` wake-up bytes first.
    pub fn encode_with_preamble(&self, count: usize) -> Vec<u8> {
        let mut out = vec![0xFE; count];
        self.encode_into(&mut out);
        out
    }

    /// The checksum this frame has on the wire.
    pub fn checksum(&self) -> u8 {
        let wire = self.encode();
        wire.get(wire.len().saturating_sub(2)).copied().unwrap_or(0)
    }

    /// The data identifier (first 4 data bytes, little-endian) for functions that carry one.
    pub fn data_id(&self) -> Option<Di> {
        let carries = matches!(self.control.function(), function::READ | function::READ_FOLLOW_UP | function::WRITE)
            && !self.control.abnormal();
        match (carries, self.data()) {
            (true, [a, b, c, d, ..]) => Some(Di::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// What a frame from a meter says.
    pub fn reply(&self) -> Reply<'_> {
        let c = self.control;
        if !c.from_meter() {
            return Reply::Other;
        }
        if c.abnormal() {
            let flags = ErrorFlags(self.data().first().copied().unwrap_or(0));
            return Reply::Error { function: c.function(), flags };
        }
        match (c.function(), self.data()) {
            (function::READ | function::READ_FOLLOW_UP, [a, b, cc, d, value @ ..]) => {
                Reply::Data { di: Di::from_le_bytes([*a, *b, *cc, *d]), value, follow_up: c.follow_up() }
            }
            (function::READ_ADDRESS, [a0, a1, a2, a3, a4, a5, ..]) => {
                Reply::Address(Address::from_wire([*a0, *a1, *a2, *a3, *a4, *a5]))
            }
            (f, []) => Reply::Ack(f),
            _ => Reply::Other,
        }
    }

    // ---- requests the gateway sends ----

    /// Read request (`11`) for data identifier `di`.
    pub fn read(address: Address, di: Di) -> Frame {
        Self::with_data(address, Control::request(function::READ), &di.to_le_bytes())
    }

    /// Read follow-up request (`12`): `di` and the frame sequence number.
    pub fn read_follow_up(address: Address, di: Di, seq: u8) -> Frame {
        let d = di.to_le_bytes();
        Self::with_data(address, Control::request(function::READ_FOLLOW_UP), &[d[0], d[1], d[2], d[3], seq])
    }

    /// Read-address request (`13` to `AAAAAAAAAAAA`, no data).
    pub fn read_address() -> Frame {
        Self::with_data(Address::WILDCARD, Control::request(function::READ_ADDRESS), &[])
    }

    /// Broadcast time (`08` to `999999999999`, data `ss mm hh DD MM YY`). Meters do not reply.
    pub fn broadcast_time(time: &MeterDateTime) -> Frame {
        Self::with_data(Address::BROADCAST, Control::request(function::BROADCAST_TIME), &time.to_bcd_ssmmhhddmmyy())
    }

    /// Write request (`14`): DI, then password level + password, operator code, value bytes (the standard's order:
    /// password before operator code).
    pub fn write(address: Address, di: Di, auth: &RelayAuth, value: &[u8]) -> Result<Frame, BuildError> {
        let mut data = Vec::with_capacity(12 + value.len());
        data.extend_from_slice(&di.to_le_bytes());
        data.extend_from_slice(&auth.wire_prefix());
        data.extend_from_slice(value);
        Frame::new(address, Control::request(function::WRITE), &data)
    }

    /// Relay/alarm control (`1C`) with the 16-byte body `PA P0 P1 P2 | C0..C3 | N1 | N2 | ss mm hh DD MM YY`,
    /// AES-128-ECB encrypted when `aes_key` is given (for prepaid meters that expect it).
    pub fn relay_control(
        address: Address,
        command: RelayCommand,
        auth: &RelayAuth,
        valid_until: &MeterDateTime,
        aes_key: Option<&[u8; 16]>,
    ) -> Frame {
        let body = super::relay::relay_body(command, auth, valid_until, aes_key);
        Self::with_data(address, Control::request(function::RELAY_CONTROL), &body)
    }

    // ---- replies (for simulators and tests) ----

    /// A read reply (`91`, or `B1` with `follow_up`) carrying `di` and `value` bytes.
    pub fn read_reply(address: Address, di: Di, value: &[u8], follow_up: bool) -> Result<Frame, BuildError> {
        let mut data = Vec::with_capacity(4 + value.len());
        data.extend_from_slice(&di.to_le_bytes());
        data.extend_from_slice(value);
        let mut control = Control::reply(function::READ);
        if follow_up {
            control.0 |= 0x20;
        }
        Frame::new(address, control, &data)
    }

    /// A read-address reply (`93`).
    pub fn read_address_reply(address: Address) -> Frame {
        Self::with_data(address, Control::reply(function::READ_ADDRESS), &address.to_wire())
    }

    /// A positive reply without data (`94`, `9C`, ...).
    pub fn ack_reply(address: Address, function: u8) -> Frame {
        Self::with_data(address, Control::reply(function), &[])
    }

    /// An error reply (`D1`, `DC`, ...) with the error byte.
    pub fn error_reply(address: Address, function: u8, flags: ErrorFlags) -> Frame {
        Self::with_data(address, Control::error_reply(function), &[flags.0])
    }

    /// Frames whose data is known to fit.
    fn with_data(address: Address, control: Control, data: &[u8]) -> Frame {
        let mut buf = [0u8; MAX_DATA_LEN];
        let n = data.len().min(MAX_DATA_LEN);
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        Frame { address, control, data: buf, len: n as u8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_matches_the_spec_example() {
        let a: Address = "000000001234".parse().unwrap();
        assert_eq!(hex::encode(Frame::read(a, Di::new(0)).encode()), "6834120000000068110433333333f716");
        let d = Frame::decode(&hex::decode("fefe6834120000000068110433333333f716").unwrap()).unwrap();
        assert_eq!(d.preamble, 2);
        assert_eq!(d.frame.data_id(), Some(Di::new(0)));
    }

    #[test]
    fn error_kinds() {
        let k = |h: &str| Frame::decode(&hex::decode(h).unwrap()).unwrap_err().kind();
        assert_eq!(k("6816"), "too_short");
        assert_eq!(k("0034120000000068110433333333f716"), "bad_start_delimiter");
        assert_eq!(k("6834120000000000110433333333f716"), "bad_second_start_delimiter");
        assert_eq!(k("68341200000000681108333333330016"), "length_mismatch");
        assert_eq!(k("6834120000000068110433333333b216"), "checksum_mismatch");
        assert_eq!(k("6834120000000068110433333333f700"), "bad_end_delimiter");
        assert_eq!(k("687040110115316891ff3333333333333333"), "data_too_long");
    }

    #[test]
    fn replies() {
        let a: Address = "311501114070".parse().unwrap();
        let f = Frame::read_reply(a, Di::new(0x0201_0100), &[0x05, 0x22], false).unwrap();
        assert_eq!(f.reply(), Reply::Data { di: Di::new(0x0201_0100), value: &[0x05, 0x22], follow_up: false });
        assert_eq!(Frame::read_address_reply(a).reply(), Reply::Address(a));
        assert_eq!(Frame::ack_reply(a, 0x1C).reply(), Reply::Ack(0x1C));
        assert_eq!(
            Frame::error_reply(a, 0x1C, ErrorFlags(4)).reply(),
            Reply::Error { function: 0x1C, flags: ErrorFlags(4) }
        );
        assert_eq!(Frame::read(a, Di::new(1)).reply(), Reply::Other);
    }
}
