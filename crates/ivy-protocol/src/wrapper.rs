//! The IEC 62056-47 wrapper (the "IVY wrapper", SPEC 2.3) and a stream framer for DLMS connections.
//!
//! A wrapped packet is an 8-byte header — version `0001`, source wPort, destination wPort, payload length, all
//! big-endian u16 — followed by the APDU. Meters may also send bare APDUs after the first exchange; the
//! [`Framer`] frames those by their own encoding ([`crate::dlms::apdu_extent`]), never by timing.

use crate::dlms::extent::{ApduExtent, FormExtent, apdu_extent, is_apdu_tag};

/// Length of the wrapper header.
pub const HEADER_LEN: usize = 8;
/// The only wrapper version in use.
pub const VERSION: u16 = 0x0001;
/// Default payload cap (the original's policy; the standard allows up to 65535).
pub const DEFAULT_MAX_PAYLOAD: usize = 4096;
/// Highest wPort accepted in a received header. wPorts mirror DLMS SAPs (client SAPs ≤ 0x7F, server logical
/// devices ≤ 0x3FFF); a larger value means the `00 01` was not the start of a header.
pub const MAX_WPORT: u16 = 0x3FFF;

/// The wrapper header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version (always 1 on the wire we accept).
    pub version: u16,
    /// Source wPort.
    pub source: u16,
    /// Destination wPort.
    pub destination: u16,
    /// Length of the APDU that follows.
    pub payload_length: u16,
}

/// Why a header or packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WrapperError {
    /// Fewer than 8 bytes.
    #[error("wrapper header needs 8 bytes, got {0}")]
    TooShort(usize),
    /// Version is not 0001.
    #[error("wrapper version {0:#06x} is not 0x0001")]
    BadVersion(u16),
    /// A wPort beyond [`MAX_WPORT`].
    #[error("wrapper wPort {0:#06x} is out of range")]
    BadPort(u16),
    /// Payload length above the configured cap.
    #[error("wrapper payload length {length} exceeds the cap of {max}")]
    PayloadTooLong {
        /// Declared length.
        length: usize,
        /// Configured cap.
        max: usize,
    },
    /// The payload to wrap is longer than a u16 length can say.
    #[error("payload of {0} bytes cannot be wrapped (max 65535)")]
    PayloadTooLarge(usize),
    /// Bytes that start no packet or APDU (framer only).
    #[error("bytes that start no wrapper packet or DLMS APDU")]
    Garbage,
}

impl WrapperError {
    /// Stable snake_case name.
    pub fn kind(&self) -> &'static str {
        match self {
            WrapperError::TooShort(_) => "too_short",
            WrapperError::BadVersion(_) => "bad_version",
            WrapperError::BadPort(_) => "bad_wport",
            WrapperError::PayloadTooLong { .. } => "payload_too_long",
            WrapperError::PayloadTooLarge(_) => "payload_too_large",
            WrapperError::Garbage => "garbage",
        }
    }
}

impl Header {
    /// A header for `payload_length` bytes from `source` to `destination`.
    pub fn new(source: u16, destination: u16, payload_length: u16) -> Self {
        Header { version: VERSION, source, destination, payload_length }
    }

    /// Parses the first 8 bytes without judging them (any version, port or length).
    pub fn parse(bytes: &[u8]) -> Result<Header, WrapperError> {
        match bytes {
            [v0, v1, s0, s1, d0, d1, l0, l1, ..] => Ok(Header {
                version: u16::from_be_bytes([*v0, *v1]),
                source: u16::from_be_bytes([*s0, *s1]),
                destination: u16::from_be_bytes([*d0, *d1]),
                payload_length: u16::from_be_bytes([*l0, *l1]),
            }),
            _ => Err(WrapperError::TooShort(bytes.len())),
        }
    }

    /// Checks a received header: version 1, plausible wPorts, payload within `max_payload`.
    pub fn validate(&self, max_payload: usize) -> Result<(), WrapperError> {
        if self.version != VERSION {
            return Err(WrapperError::BadVersion(self.version));
        }
        for port in [self.source, self.destination] {
            if port > MAX_WPORT {
                return Err(WrapperError::BadPort(port));
            }
        }
        let length = usize::from(self.payload_length);
        if length > max_payload {
            return Err(WrapperError::PayloadTooLong { length, max: max_payload });
        }
        Ok(())
    }

    /// The 8 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (chunk, value) in
            out.chunks_exact_mut(2).zip([self.version, self.source, self.destination, self.payload_length])
        {
            chunk.copy_from_slice(&value.to_be_bytes());
        }
        out
    }
}

/// Wraps `apdu` in a header from `source` to `destination`.
pub fn wrap(source: u16, destination: u16, apdu: &[u8]) -> Result<Vec<u8>, WrapperError> {
    let length = u16::try_from(apdu.len()).map_err(|_| WrapperError::PayloadTooLarge(apdu.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + apdu.len());
    out.extend_from_slice(&Header::new(source, destination, length).encode());
    out.extend_from_slice(apdu);
    Ok(out)
}

/// The wPorts the gateway uses when sending (SPEC 2.3: default `0001`/`0001`, what the EM114070 accepts; the
/// standard public client pair is `0010`/`0001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Our (client) wPort.
    pub source: u16,
    /// The meter's (server) wPort.
    pub destination: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { source: 0x0001, destination: 0x0001 }
    }
}

impl Ports {
    /// The standard public client (0x0010) to the management logical device (0x0001).
    pub const PUBLIC_CLIENT: Ports = Ports { source: 0x0010, destination: 0x0001 };

    /// Wraps `apdu` with these ports.
    pub fn wrap(&self, apdu: &[u8]) -> Result<Vec<u8>, WrapperError> {
        wrap(self.source, self.destination, apdu)
    }
}

/// One unit framed from a DLMS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The wrapper header, or `None` for a bare APDU.
    pub header: Option<Header>,
    /// The APDU (or, for a wrapped registration packet, its payload).
    pub payload: Vec<u8>,
}

impl Packet {
    /// The bytes as they were on the wire (header included when wrapped).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        if let Some(h) = &self.header {
            out.extend_from_slice(&h.encode());
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// What the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramerEvent {
    /// A whole packet or bare APDU.
    Packet(Packet),
    /// Bytes thrown away (one event per contiguous run).
    Discarded {
        /// How many bytes.
        bytes: usize,
        /// Why (the first reason of the run).
        reason: WrapperError,
    },
}

/// Stream framer for DLMS connections: wrapped packets (any wPorts, payload up to the cap), bare APDUs framed by
/// their encoding, and resynchronisation one byte at a time over garbage.
///
/// The buffer never holds more than one maximal packet plus the last pushed chunk: complete units are cut off as
/// soon as they are recognised and garbage is dropped.
///
/// A bare EventNotification has two encodings in the field (standard, and the EM114070's without the time
/// presence byte). When both parse, the framer takes the one whose end is followed by the start of another
/// packet/APDU, preferring the standard form; while that cannot be told yet it waits, and
/// [`Framer::flush`] decides with what is there (the session calls it after a quiet period): then a form ending
/// exactly at the end of the data wins.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes before `start` are consumed; compacted on the next push, so dropping garbage byte by byte stays linear.
    start: usize,
    max_payload: usize,
    /// Garbage being accumulated into one Discarded event.
    pending_discard: Option<(usize, WrapperError)>,
    flushing: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

/// What the head of the buffer is.
enum Head {
    NeedMore,
    Unit(usize, bool),
    Garbage(WrapperError),
}

impl Framer {
    /// A framer accepting wrapped payloads up to `max_payload` bytes (at most 65535).
    pub fn new(max_payload: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            max_payload: max_payload.min(usize::from(u16::MAX)),
            pending_discard: None,
            flushing: false,
        }
    }

    /// Bytes currently buffered (not yet framed).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.flushing = false;
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Decides ambiguous or lenient cases with the bytes buffered now (no more are expected soon): then call
    /// [`Framer::next_event`] until it returns `None`.
    pub fn flush(&mut self) {
        self.flushing = true;
    }

    /// The next framed unit or discard, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<FramerEvent> {
        loop {
            match self.head() {
                Head::NeedMore => {
                    if self.flushing && self.buffered() > 0 {
                        // Nothing more is coming: what is left cannot be framed.
                        let n = self.buffered();
                        self.buf.clear();
                        self.start = 0;
                        self.add_discard(n, WrapperError::Garbage);
                    }
                    return self.pending_discard.take().map(|(bytes, reason)| FramerEvent::Discarded { bytes, reason });
                }
                Head::Garbage(reason) => {
                    self.start += 1;
                    self.add_discard(1, reason);
                }
                Head::Unit(len, wrapped) => {
                    if let Some((bytes, reason)) = self.pending_discard.take() {
                        return Some(FramerEvent::Discarded { bytes, reason });
                    }
                    let unit: Vec<u8> = self.buf.get(self.start..self.start + len).unwrap_or_default().to_vec();
                    self.start += len;
                    let packet = if wrapped {
                        let header = Header::parse(&unit).ok();
                        Packet { header, payload: unit.get(HEADER_LEN..).unwrap_or_default().to_vec() }
                    } else {
                        Packet { header: None, payload: unit }
                    };
                    return Some(FramerEvent::Packet(packet));
                }
            }
        }
    }

    fn add_discard(&mut self, n: usize, reason: WrapperError) {
        match &mut self.pending_discard {
            Some((count, _)) => *count += n,
            None => self.pending_discard = Some((n, reason)),
        }
    }

    fn head(&self) -> Head {
        let buf = self.buf.get(self.start..).unwrap_or_default();
        match buf.first() {
            None => Head::NeedMore,
            Some(0x00) => self.wrapped(buf),
            Some(&tag) if is_apdu_tag(tag) => self.raw(buf),
            Some(_) => Head::Garbage(WrapperError::Garbage),
        }
    }

    fn wrapped(&self, buf: &[u8]) -> Head {
        // Judge the header as far as it has arrived, so garbage is dropped without waiting for 8 bytes.
        let mut padded = [0u8; HEADER_LEN];
        let have = buf.len().min(HEADER_LEN);
        if let (Some(dst), Some(src)) = (padded.get_mut(..have), buf.get(..have)) {
            dst.copy_from_slice(src);
        }
        let Ok(h) = Header::parse(&padded) else { return Head::NeedMore };
        if have >= 2 && h.version != VERSION {
            return Head::Garbage(WrapperError::BadVersion(h.version));
        }
        if have >= 4 && h.source > MAX_WPORT {
            return Head::Garbage(WrapperError::BadPort(h.source));
        }
        if have < HEADER_LEN {
            return if have >= 6 && h.destination > MAX_WPORT {
                Head::Garbage(WrapperError::BadPort(h.destination))
            } else {
                Head::NeedMore
            };
        }
        if let Err(e) = h.validate(self.max_payload) {
            return Head::Garbage(e);
        }
        let total = HEADER_LEN + usize::from(h.payload_length);
        if buf.len() >= total { Head::Unit(total, true) } else { Head::NeedMore }
    }

    fn raw(&self, buf: &[u8]) -> Head {
        match apdu_extent(buf) {
            ApduExtent::Complete(n) if n <= HEADER_LEN + self.max_payload => Head::Unit(n, false),
            ApduExtent::Complete(_) | ApduExtent::Invalid => Head::Garbage(WrapperError::Garbage),
            ApduExtent::NeedMore if buf.len() > HEADER_LEN + self.max_payload => Head::Garbage(WrapperError::Garbage),
            ApduExtent::NeedMore => Head::NeedMore,
            ApduExtent::EventNotification { standard, em114070 } => {
                self.pick_event_notification(buf, standard, em114070)
            }
        }
    }

    /// Chooses between the two EventNotification encodings (see the type's doc). Every decision taken before a
    /// flush is final whatever bytes come next, so the result never depends on how the stream was chunked.
    fn pick_event_notification(&self, buf: &[u8], standard: FormExtent, em114070: FormExtent) -> Head {
        let verdict = |form: FormExtent| match form {
            FormExtent::NeedMore => Verdict::Wait,
            FormExtent::Invalid => Verdict::Rejected,
            FormExtent::Complete(n) => match boundary(buf, n) {
                Boundary::FollowedByStart => Verdict::Confirmed(n),
                Boundary::Implausible => Verdict::Rejected,
                Boundary::Unknown | Boundary::EndOfData => Verdict::Wait,
            },
        };
        let forced = self.flushing || buf.len() > HEADER_LEN + self.max_payload;
        // The standard form has priority: the EM114070 form is only considered once the standard one is ruled out.
        match (verdict(standard), verdict(em114070)) {
            (Verdict::Confirmed(n), _) => return Head::Unit(n, false),
            (Verdict::Rejected, Verdict::Confirmed(n)) => return Head::Unit(n, false),
            (Verdict::Rejected, Verdict::Rejected) => return Head::Garbage(WrapperError::Garbage),
            _ if !forced => return Head::NeedMore,
            _ => {}
        }
        // Nothing more is coming: a form that ends exactly where the data ends, then any complete form; standard
        // first.
        for form in [standard, em114070] {
            if let FormExtent::Complete(n) = form
                && matches!(boundary(buf, n), Boundary::EndOfData)
            {
                return Head::Unit(n, false);
            }
        }
        match (standard, em114070) {
            (FormExtent::Complete(n), _) | (_, FormExtent::Complete(n)) => Head::Unit(n, false),
            _ => Head::Garbage(WrapperError::Garbage),
        }
    }
}

/// What one EventNotification form says about the buffer.
enum Verdict {
    /// Complete and followed by the start of another unit.
    Confirmed(usize),
    /// Cannot be this form here.
    Rejected,
    /// More bytes are needed to tell.
    Wait,
}

/// What follows a unit ending at a given offset.
enum Boundary {
    /// Nothing (yet).
    EndOfData,
    /// The start of a wrapper packet or APDU.
    FollowedByStart,
    /// Cannot tell yet (a lone `00`).
    Unknown,
    /// Bytes that start nothing.
    Implausible,
}

fn boundary(buf: &[u8], end: usize) -> Boundary {
    match buf.get(end..) {
        None | Some([]) => Boundary::EndOfData,
        Some([0x00]) => Boundary::Unknown,
        Some([0x00, 0x01, ..]) => Boundary::FollowedByStart,
        Some([tag, ..]) if is_apdu_tag(*tag) => Boundary::FollowedByStart,
        Some(_) => Boundary::Implausible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(stream: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let mut f = Framer::default();
        let mut out = Vec::new();
        let mut discards = 0;
        for b in stream {
            f.push(std::slice::from_ref(b));
            while let Some(ev) = f.next_event() {
                match ev {
                    FramerEvent::Packet(p) => out.push(p.to_bytes()),
                    FramerEvent::Discarded { .. } => discards += 1,
                }
            }
        }
        f.flush();
        while let Some(ev) = f.next_event() {
            match ev {
                FramerEvent::Packet(p) => out.push(p.to_bytes()),
                FramerEvent::Discarded { .. } => discards += 1,
            }
        }
        (out, discards)
    }

    #[test]
    fn header_round_trip() {
        let h = Header::new(0x10, 0x01, 31);
        assert_eq!(h.encode(), [0, 1, 0, 0x10, 0, 1, 0, 31]);
        assert_eq!(Header::parse(&h.encode()).unwrap(), h);
        assert_eq!(wrap(1, 0x10, &[1, 2, 3]).unwrap(), hex::decode("0001000100100003010203").unwrap());
        assert!(wrap(1, 1, &vec![0; 70_000]).is_err());
        assert_eq!(Header::parse(&[0, 1]), Err(WrapperError::TooShort(2)));
    }

    #[test]
    fn overlong_then_good() {
        let s = hex::decode("000100010010ffff0001000100100009c401c1000600005c54").unwrap();
        let (f, d) = frames(&s);
        assert_eq!(f, vec![hex::decode("0001000100100009c401c1000600005c54").unwrap()]);
        assert!(d >= 1);
    }

    #[test]
    fn trailing_incomplete_data_is_discarded_on_flush() {
        let (f, d) = frames(&hex::decode("c401c1000600").unwrap());
        assert!(f.is_empty());
        assert_eq!(d, 1);
    }
}
