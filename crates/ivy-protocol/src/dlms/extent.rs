//! How long is the DLMS APDU at the start of a buffer? Meters may send APDUs without the IEC 62056-47 wrapper, so
//! the stream has to be framed by the APDUs' own encoding (SPEC 2.3): BER lengths for the ACSE APDUs (AARQ, AARE,
//! RLRQ, RLRE) and a walk over the A-XDR encoding for xDLMS APDUs. Never by guessing from timing.
//!
//! This walker only measures; it allocates nothing and does not build values, so framing stays cheap and
//! total (every read is bounds-checked, nesting depth is bounded).

/// Deepest A-XDR nesting (arrays/structures in arrays/structures) accepted.
pub const MAX_DEPTH: usize = 32;

/// Result of measuring one encoding form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormExtent {
    /// The bytes so far are consistent with this form; more are needed.
    NeedMore,
    /// The bytes cannot be this form.
    Invalid,
    /// A whole APDU of this many bytes.
    Complete(usize),
}

/// Length of the APDU at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApduExtent {
    /// Consistent so far; more bytes are needed.
    NeedMore,
    /// Not a (supported) DLMS APDU.
    Invalid,
    /// A whole APDU of this many bytes.
    Complete(usize),
    /// An EventNotification, which has two encodings in the field: the standard one (time presence byte before
    /// class-id) and the EM114070 one (no presence byte). The caller picks by what follows (see
    /// [`crate::wrapper::Framer`]).
    EventNotification {
        /// The standard form.
        standard: FormExtent,
        /// The EM114070 form.
        em114070: FormExtent,
    },
}

/// True for the first byte of an APDU the gateway understands (SPEC 2.1).
pub fn is_apdu_tag(tag: u8) -> bool {
    matches!(tag, 0x60..=0x63 | 0xC0..=0xC5 | 0xC7 | 0xD8 | 0x0E | 0x0F)
}

/// Measures the APDU at the start of `buf`.
pub fn apdu_extent(buf: &[u8]) -> ApduExtent {
    let Some((&tag, _)) = buf.split_first() else {
        return ApduExtent::NeedMore;
    };
    let measured = match tag {
        0x60..=0x63 => ber_tlv(buf),
        0xC2 => {
            return ApduExtent::EventNotification {
                standard: to_form(event_notification(buf, true)),
                em114070: to_form(event_notification(buf, false)),
            };
        }
        0xC0 => get_request(buf),
        0xC1 => set_request(buf),
        0xC3 => action_request(buf),
        0xC4 => get_response(buf),
        0xC5 => set_response(buf),
        0xC7 => action_response(buf),
        0xD8 => exception_response(buf),
        0x0E => fixed(buf, 4),
        0x0F => data_notification(buf),
        _ => Err(Stop::Invalid),
    };
    match measured {
        Ok(n) => ApduExtent::Complete(n),
        Err(Stop::NeedMore) => ApduExtent::NeedMore,
        Err(Stop::Invalid) => ApduExtent::Invalid,
    }
}

fn to_form(r: Result<usize, Stop>) -> FormExtent {
    match r {
        Ok(n) => FormExtent::Complete(n),
        Err(Stop::NeedMore) => FormExtent::NeedMore,
        Err(Stop::Invalid) => FormExtent::Invalid,
    }
}

/// Why a measurement stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    NeedMore,
    Invalid,
}

/// A bounds-checked cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        let b = *self.buf.get(self.pos).ok_or(Stop::NeedMore)?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        let end = self.pos.checked_add(n).ok_or(Stop::Invalid)?;
        if end > self.buf.len() {
            return Err(Stop::NeedMore);
        }
        self.pos = end;
        Ok(())
    }

    /// A BER/A-XDR length: one byte < 0x80, or 0x8N followed by N (1..=4) big-endian bytes.
    fn length(&mut self) -> Result<usize, Stop> {
        let first = self.u8()?;
        if first < 0x80 {
            return Ok(usize::from(first));
        }
        let n = first & 0x7F;
        if n == 0 || n > 4 {
            return Err(Stop::Invalid);
        }
        let mut len: usize = 0;
        for _ in 0..n {
            len = (len << 8) | usize::from(self.u8()?);
        }
        Ok(len)
    }

    /// One A-XDR `Data` value.
    fn data(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        let tag = self.u8()?;
        match tag {
            0 => Ok(()),
            1 | 2 => {
                let count = self.length()?;
                // Each element takes at least one byte: a count larger than the rest of the buffer needs more.
                for _ in 0..count {
                    self.data(depth + 1)?;
                }
                Ok(())
            }
            3 | 13 | 15 | 17 | 22 => self.skip(1),
            4 => {
                let bits = self.length()?;
                self.skip(bits.div_ceil(8))
            }
            5 | 6 | 23 => self.skip(4),
            9 | 10 | 12 => {
                let len = self.length()?;
                self.skip(len)
            }
            16 | 18 => self.skip(2),
            19 => {
                self.type_description(depth + 1)?;
                let len = self.length()?;
                self.skip(len)
            }
            20 | 21 | 24 => self.skip(8),
            25 => self.skip(12),
            26 => self.skip(5),
            27 => self.skip(4),
            _ => Err(Stop::Invalid),
        }
    }

    /// A compact-array TypeDescription.
    fn type_description(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        match self.u8()? {
            1 => {
                self.skip(2)?;
                self.type_description(depth + 1)
            }
            2 => {
                let count = self.length()?;
                for _ in 0..count {
                    self.type_description(depth + 1)?;
                }
                Ok(())
            }
            0 | 3..=6 | 9 | 10 | 12 | 13 | 15..=18 | 20..=27 => Ok(()),
            _ => Err(Stop::Invalid),
        }
    }

    /// Optional Data: a presence byte 0 (absent) or 1 followed by Data.
    fn optional_data(&mut self) -> Result<(), Stop> {
        match self.u8()? {
            0 => Ok(()),
            1 => self.data(0),
            _ => Err(Stop::Invalid),
        }
    }

    /// Selective access: 0, or 1 + selector + Data.
    fn access_selection(&mut self) -> Result<(), Stop> {
        match self.u8()? {
            0 => Ok(()),
            1 => {
                self.skip(1)?;
                self.data(0)
            }
            _ => Err(Stop::Invalid),
        }
    }

    /// Get-Data-Result: 0 + Data, or 1 + data-access-result.
    fn get_data_result(&mut self) -> Result<(), Stop> {
        match self.u8()? {
            0 => self.data(0),
            1 => self.skip(1),
            _ => Err(Stop::Invalid),
        }
    }

    /// last-block (bool), block-number (u32), raw-data (octet string).
    fn data_block(&mut self) -> Result<(), Stop> {
        self.skip(5)?;
        let len = self.length()?;
        self.skip(len)
    }
}

fn fixed(buf: &[u8], n: usize) -> Result<usize, Stop> {
    if buf.len() >= n { Ok(n) } else { Err(Stop::NeedMore) }
}

/// ACSE: tag, BER length, contents.
fn ber_tlv(buf: &[u8]) -> Result<usize, Stop> {
    let mut c = Cursor::new(buf, 1);
    let len = c.length()?;
    c.skip(len)?;
    Ok(c.pos)
}

/// Cursor after the tag and the request/response type byte (which must be 1..=`max_kind`); the type is returned.
fn typed(buf: &[u8], max_kind: u8) -> Result<(Cursor<'_>, u8), Stop> {
    let mut c = Cursor::new(buf, 1);
    let kind = c.u8()?;
    if kind == 0 || kind > max_kind {
        return Err(Stop::Invalid);
    }
    Ok((c, kind))
}

/// Cosem attribute descriptor: class (2), instance (6), attribute (1).
const DESCRIPTOR_LEN: usize = 9;

fn get_request(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 3)?;
    c.skip(1)?; // invoke-id-and-priority
    match kind {
        1 => {
            c.skip(DESCRIPTOR_LEN)?;
            c.access_selection()?;
        }
        2 => c.skip(4)?,
        3 => {
            for _ in 0..c.length()? {
                c.skip(DESCRIPTOR_LEN)?;
                c.access_selection()?;
            }
        }
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn set_request(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 5)?;
    c.skip(1)?;
    match kind {
        1 => {
            c.skip(DESCRIPTOR_LEN)?;
            c.access_selection()?;
            c.data(0)?;
        }
        2 => {
            c.skip(DESCRIPTOR_LEN)?;
            c.access_selection()?;
            c.data_block()?;
        }
        3 => c.data_block()?,
        4 | 5 => {
            for _ in 0..c.length()? {
                c.skip(DESCRIPTOR_LEN)?;
                c.access_selection()?;
            }
            if kind == 4 {
                for _ in 0..c.length()? {
                    c.data(0)?;
                }
            } else {
                c.data_block()?;
            }
        }
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn action_request(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 3)?;
    c.skip(1)?;
    match kind {
        1 => {
            c.skip(DESCRIPTOR_LEN)?;
            c.optional_data()?;
        }
        2 => c.skip(4)?,
        3 => {
            for _ in 0..c.length()? {
                c.skip(DESCRIPTOR_LEN)?;
            }
            for _ in 0..c.length()? {
                c.data(0)?;
            }
        }
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn get_response(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 3)?;
    c.skip(1)?;
    match kind {
        1 => c.get_data_result()?,
        2 => {
            c.skip(5)?; // last-block, block-number
            match c.u8()? {
                0 => {
                    let len = c.length()?;
                    c.skip(len)?;
                }
                1 => c.skip(1)?,
                _ => return Err(Stop::Invalid),
            }
        }
        3 => {
            for _ in 0..c.length()? {
                c.get_data_result()?;
            }
        }
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn set_response(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 5)?;
    c.skip(1)?;
    match kind {
        1 => c.skip(1)?,
        2 => c.skip(4)?,
        3 => c.skip(5)?,
        4 | 5 => {
            let n = c.length()?;
            c.skip(n)?;
            if kind == 4 {
                c.skip(4)?;
            }
        }
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn action_response(buf: &[u8]) -> Result<usize, Stop> {
    let (mut c, kind) = typed(buf, 4)?;
    c.skip(1)?;
    let with_optional_return = |c: &mut Cursor<'_>| -> Result<(), Stop> {
        c.skip(1)?; // action-result
        match c.u8()? {
            0 => Ok(()),
            1 => c.get_data_result(),
            _ => Err(Stop::Invalid),
        }
    };
    match kind {
        1 => with_optional_return(&mut c)?,
        2 => c.data_block()?,
        3 => {
            for _ in 0..c.length()? {
                with_optional_return(&mut c)?;
            }
        }
        4 => c.skip(4)?,
        _ => return Err(Stop::Invalid),
    }
    Ok(c.pos)
}

fn exception_response(buf: &[u8]) -> Result<usize, Stop> {
    let mut c = Cursor::new(buf, 1);
    c.skip(1)?; // state-error
    if c.u8()? == 6 {
        c.skip(4)?; // invocation-counter-error carries the counter
    }
    Ok(c.pos)
}

fn event_notification(buf: &[u8], standard: bool) -> Result<usize, Stop> {
    let mut c = Cursor::new(buf, 1);
    if standard {
        match c.u8()? {
            0 => {}
            1 => {
                let len = c.length()?;
                c.skip(len)?;
            }
            _ => return Err(Stop::Invalid),
        }
    }
    c.skip(DESCRIPTOR_LEN)?;
    c.data(0)?;
    Ok(c.pos)
}

fn data_notification(buf: &[u8]) -> Result<usize, Stop> {
    let mut c = Cursor::new(buf, 1);
    c.skip(4)?; // long-invoke-id-and-priority
    match c.u8()? {
        0 => {}
        12 => c.skip(12)?,
        _ => return Err(Stop::Invalid),
    }
    c.data(0)?;
    Ok(c.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(h: &str) -> ApduExtent {
        apdu_extent(&hex::decode(h).unwrap())
    }

    #[test]
    fn measures_common_apdus() {
        assert_eq!(extent("6105a103020100"), ApduExtent::Complete(7));
        assert_eq!(extent("6105a1030201"), ApduExtent::NeedMore);
        assert_eq!(extent("6203800100ff"), ApduExtent::Complete(5));
        assert_eq!(extent("c0010100030100010800ff0200"), ApduExtent::Complete(13));
        assert_eq!(extent("c301010046000060030aff0100"), ApduExtent::Complete(13));
        assert_eq!(extent("c301c10046000060030aff01010f00"), ApduExtent::Complete(15));
        assert_eq!(extent("c401c1000600005c54"), ApduExtent::Complete(9));
        assert_eq!(extent("c401c10102"), ApduExtent::Complete(5));
        assert_eq!(extent("c401c1000600005c"), ApduExtent::NeedMore);
        assert_eq!(extent("c701030000"), ApduExtent::Complete(5));
        assert_eq!(extent("c701c10001000301"), ApduExtent::Complete(8));
        assert_eq!(extent("d80102"), ApduExtent::Complete(3));
        assert_eq!(extent("d8010600000005"), ApduExtent::Complete(7));
        assert_eq!(extent("0f00000042000600010000"), ApduExtent::Complete(11));
        assert_eq!(extent("0f000000010c07e9060fff0a1e000000000000"), ApduExtent::Complete(19));
        assert_eq!(extent("c499"), ApduExtent::Invalid);
        assert_eq!(extent("ff"), ApduExtent::Invalid);
        assert_eq!(extent(""), ApduExtent::NeedMore);
        // Nested structure inside a GET.response.
        assert_eq!(extent("c401c1000102020209060100010800ff06000027"), ApduExtent::NeedMore);
        assert_eq!(extent("c401c1000101020209060100010800ff0600002710"), ApduExtent::Complete(21));
    }

    #[test]
    fn event_notification_forms() {
        assert_eq!(
            extent("c20000030100010800ff020600002710"),
            ApduExtent::EventNotification { standard: FormExtent::Complete(16), em114070: FormExtent::Invalid }
        );
        assert_eq!(
            extent("c200030100010800ff020600002710"),
            ApduExtent::EventNotification { standard: FormExtent::Complete(12), em114070: FormExtent::Complete(15) }
        );
    }

    #[test]
    fn depth_and_lengths_are_bounded() {
        // 40 nested single-element arrays: deeper than MAX_DEPTH.
        let mut v = vec![0xC4, 0x01, 0xC1, 0x00];
        v.extend(std::iter::repeat_n([0x01, 0x01], 40).flatten());
        v.push(0x00);
        assert_eq!(apdu_extent(&v), ApduExtent::Invalid);
        // A 4-byte BER length of 4 GiB needs more, never allocates.
        assert_eq!(extent("c401c1000984ffffffff"), ApduExtent::NeedMore);
        assert_eq!(extent("c401c1000985ffffffffff"), ApduExtent::Invalid);
    }
}
