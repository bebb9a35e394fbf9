//! Length-driven stream framer: turns received bytes, however they are chunked, into frames.
//!
//! `FE` preambles and bytes before a `68` are skipped; a `68` whose frame head, length (L > 200), checksum or end
//! delimiter is wrong is discarded **one byte** at a time, so a good frame starting inside a bad one is still
//! found. A checksum byte equal to `16` never ends a frame early: the length decides. At most one maximal frame is
//! ever waiting for more bytes; consumed bytes are released on the next push, so the buffer stays bounded by
//! 212 bytes + the last chunk.

use super::frame::{Frame, FrameError, Parse, parse_at};

/// What the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramerEvent {
    /// A valid frame.
    Frame(Frame),
    /// Bytes thrown away: `reason` is `None` for a run of garbage before a start byte, or the frame error that
    /// made a candidate frame fail.
    Discarded {
        /// How many bytes.
        bytes: usize,
        /// Why.
        reason: Option<FrameError>,
    },
}

/// The framer.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

impl Framer {
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting for more data.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame or discard; `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<FramerEvent> {
        let rest = self.buf.get(self.start..).unwrap_or_default();
        // Skip to the next 68; FE preambles are expected and not reported, other bytes are.
        let skip = rest.iter().take_while(|&&b| b != 0x68).count();
        if skip > 0 {
            let garbage = rest.iter().take(skip).filter(|&&b| b != 0xFE).count();
            self.start += skip;
            if garbage > 0 {
                return Some(FramerEvent::Discarded { bytes: skip, reason: None });
            }
        }
        let rest = self.buf.get(self.start..).unwrap_or_default();
        match parse_at(rest) {
            Parse::NeedMore(_) => None,
            Parse::Frame(frame, len) => {
                self.start += len;
                Some(FramerEvent::Frame(frame))
            }
            Parse::Invalid(reason) => {
                self.start += 1;
                Some(FramerEvent::Discarded { bytes: 1, reason: Some(reason) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, usize) {
        let mut f = Framer::new();
        let (mut out, mut discards) = (Vec::new(), 0);
        for c in stream.chunks(chunk.max(1)) {
            f.push(c);
            while let Some(e) = f.next_event() {
                match e {
                    FramerEvent::Frame(fr) => out.push(fr.encode()),
                    FramerEvent::Discarded { .. } => discards += 1,
                }
            }
            assert!(f.buffered() <= 212 + chunk);
        }
        (out, discards)
    }

    #[test]
    fn checksum_equal_to_16_does_not_end_the_frame() {
        // Find a read request whose checksum is 0x16.
        let a = super::super::Address::from_wire([0x34, 0x12, 0, 0, 0, 0]);
        let f = (0u32..).map(|di| Frame::read(a, super::super::Di::new(di))).find(|f| f.checksum() == 0x16).unwrap();
        let wire = f.encode();
        for chunk in 1..wire.len() {
            assert_eq!(frames(&wire, chunk), (vec![wire.clone()], 0));
        }
    }

    #[test]
    fn resync_after_bad_frame_finds_inner_frame() {
        let good = hex::decode("6834120000000068110433333333f716").unwrap();
        let mut stream = hex::decode("68aa").unwrap();
        stream.extend(&good);
        let (out, discards) = frames(&stream, 3);
        assert_eq!(out, vec![good]);
        assert!(discards >= 1);
    }
}
