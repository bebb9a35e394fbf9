//! Which protocol a connection speaks, decided from its first bytes (SPEC 2.1).
//!
//! Feed the [`Detector`] chunk by chunk and [`poll`](Detector::poll) it. It answers "need more", a registration
//! packet (consumed; keep polling for what follows), a protocol (hand [`Detector::into_buffered`] to that
//! protocol's framer), or "unknown" once [`MAX_DETECT_BYTES`] went by without a decision. The time limit (30 s by
//! default) is the caller's: the detector reads no clock.
//!
//! Leading `FE` bytes (the DL/T 645 wake-up preamble) are skipped; so are bytes that can start nothing (line noise
//! before the first frame), which are counted so the caller can log them.

use crate::dlms::extent::{ApduExtent, FormExtent, apdu_extent, is_apdu_tag};
use crate::registration::{Registration, RegistrationRule, RuleMatch, match_any};
use crate::wrapper::{MAX_WPORT, VERSION};

/// Bytes examined before giving up (SPEC 2.1: 4 KiB).
pub const MAX_DETECT_BYTES: usize = 4096;

/// A detected protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// DL/T 645-2007 frames.
    Dlt645,
    /// DLMS/COSEM inside IEC 62056-47 wrapper packets.
    DlmsWrapped,
    /// DLMS/COSEM APDUs without a wrapper.
    DlmsRaw,
}

impl Protocol {
    /// Short name for logs and metrics: `dlt645`, `dlms`.
    pub fn family(&self) -> &'static str {
        match self {
            Protocol::Dlt645 => "dlt645",
            Protocol::DlmsWrapped | Protocol::DlmsRaw => "dlms",
        }
    }
}

/// The detector's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Not decided yet; push more bytes.
    NeedMore,
    /// A registration packet matched and was consumed; poll again for the bytes after it.
    Registration(Registration),
    /// Decided: the buffered bytes belong to this protocol.
    Protocol(Protocol),
    /// [`MAX_DETECT_BYTES`] without a decision.
    Unknown,
}

/// Detects the protocol of one connection.
#[derive(Debug, Clone)]
pub struct Detector {
    buf: Vec<u8>,
    rules: Vec<RegistrationRule>,
    examined: usize,
    skipped: usize,
    garbage_sample: Vec<u8>,
}

/// How many skipped bytes are kept for the log line.
const SAMPLE_LEN: usize = 32;

impl Detector {
    /// A detector that recognises registration packets by `rules` (in order).
    pub fn new(rules: Vec<RegistrationRule>) -> Self {
        Detector { buf: Vec::new(), rules, examined: 0, skipped: 0, garbage_sample: Vec::new() }
    }

    /// A detector with only the built-in EM114070 heartbeat rule.
    pub fn with_builtin_rules() -> Self {
        Self::new(vec![RegistrationRule::em114070()])
    }

    /// Appends received bytes. At most [`MAX_DETECT_BYTES`] are kept; the rest is dropped, since the detector
    /// gives up at that point anyway.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = MAX_DETECT_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    /// Bytes skipped so far as noise (not `FE` preambles).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The first skipped bytes (up to 32), or the start of the buffer, for a log line.
    pub fn sample(&self) -> &[u8] {
        if self.garbage_sample.is_empty() {
            self.buf.get(..SAMPLE_LEN.min(self.buf.len())).unwrap_or_default()
        } else {
            &self.garbage_sample
        }
    }

    /// The bytes not consumed by the detector, for the protocol's framer.
    pub fn into_buffered(self) -> Vec<u8> {
        self.buf
    }

    /// Examines the buffered bytes.
    pub fn poll(&mut self) -> Detection {
        loop {
            if self.examined >= MAX_DETECT_BYTES {
                return Detection::Unknown;
            }
            let Some(&first) = self.buf.first() else {
                return Detection::NeedMore;
            };
            match match_any(&self.rules, &self.buf) {
                RuleMatch::Matched(registration) => {
                    let n = registration.consumed.min(self.buf.len());
                    self.buf.drain(..n);
                    self.examined += n;
                    return Detection::Registration(registration);
                }
                RuleMatch::Incomplete => return self.need_more(),
                RuleMatch::NoMatch => {}
            }
            let verdict = match first {
                0xFE => Verdict::Preamble,
                0x68 => dlt645_head(&self.buf),
                0x00 => wrapper_head(&self.buf),
                tag if is_apdu_tag(tag) => raw_head(&self.buf),
                _ => Verdict::Noise,
            };
            match verdict {
                Verdict::Decided(protocol) => return Detection::Protocol(protocol),
                Verdict::NeedMore => return self.need_more(),
                Verdict::Preamble => {
                    // Keep FE bytes for the DL/T 645 framer, which skips them itself; look past them.
                    let fe = self.buf.iter().take_while(|&&b| b == 0xFE).count();
                    if fe == self.buf.len() {
                        return self.need_more();
                    }
                    match self.buf.get(fe) {
                        Some(0x68) => match self.buf.get(fe..).map(dlt645_head) {
                            Some(Verdict::Decided(p)) => return Detection::Protocol(p),
                            Some(Verdict::NeedMore) => return self.need_more(),
                            _ => self.skip(fe + 1),
                        },
                        _ => self.skip(fe),
                    }
                }
                Verdict::Noise => {
                    // Skip the whole run of bytes that cannot start anything in one go.
                    let rules = &self.rules;
                    let starts_rule = |b: u8| rules.iter().any(|r| r.prefix.first() == Some(&b));
                    let run = 1 + self.buf.iter().skip(1).take_while(|&&b| !could_start(b) && !starts_rule(b)).count();
                    self.skip(run);
                }
            }
        }
    }

    fn need_more(&self) -> Detection {
        if self.buf.len() >= MAX_DETECT_BYTES { Detection::Unknown } else { Detection::NeedMore }
    }

    fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        let room = SAMPLE_LEN.saturating_sub(self.garbage_sample.len());
        self.garbage_sample.extend(self.buf.iter().take(n.min(room)));
        self.buf.drain(..n);
        self.skipped += n;
        self.examined += n;
    }
}

/// Whether a byte could be the first byte of something the detector recognises.
fn could_start(b: u8) -> bool {
    b == 0xFE || b == 0x68 || b == 0x00 || is_apdu_tag(b)
}

enum Verdict {
    Decided(Protocol),
    NeedMore,
    Preamble,
    Noise,
}

/// `68 A0..A5 68`: the second start byte confirms the frame head.
fn dlt645_head(buf: &[u8]) -> Verdict {
    match buf.get(7) {
        None => Verdict::NeedMore,
        Some(0x68) => Verdict::Decided(Protocol::Dlt645),
        Some(_) => Verdict::Noise,
    }
}

/// `00 01` followed by two more header bytes (a plausible source wPort).
fn wrapper_head(buf: &[u8]) -> Verdict {
    match buf {
        [_] | [_, _] | [_, _, _] => {
            if buf.get(1).is_none_or(|&b| b == (VERSION & 0xFF) as u8) {
                Verdict::NeedMore
            } else {
                Verdict::Noise
            }
        }
        [0x00, 0x01, s0, s1, ..] if u16::from_be_bytes([*s0, *s1]) <= MAX_WPORT => {
            Verdict::Decided(Protocol::DlmsWrapped)
        }
        _ => Verdict::Noise,
    }
}

/// A DLMS APDU tag followed by a whole APDU of that type. Waiting for the whole APDU (rather than deciding on the
/// tag byte) keeps line noise that happens to start with a tag byte from being taken for DLMS, and makes the answer
/// independent of how the bytes were split.
fn raw_head(buf: &[u8]) -> Verdict {
    let form = |f: FormExtent| match f {
        FormExtent::Complete(_) => Verdict::Decided(Protocol::DlmsRaw),
        FormExtent::NeedMore => Verdict::NeedMore,
        FormExtent::Invalid => Verdict::Noise,
    };
    match apdu_extent(buf) {
        ApduExtent::Complete(_) => Verdict::Decided(Protocol::DlmsRaw),
        ApduExtent::NeedMore => Verdict::NeedMore,
        ApduExtent::Invalid => Verdict::Noise,
        ApduExtent::EventNotification { standard, em114070 } => match (form(standard), form(em114070)) {
            (Verdict::Decided(p), _) | (_, Verdict::Decided(p)) => Verdict::Decided(p),
            (Verdict::NeedMore, _) | (_, Verdict::NeedMore) => Verdict::NeedMore,
            _ => Verdict::Noise,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_chunks(chunks: &[&str]) -> Vec<Detection> {
        let mut d = Detector::with_builtin_rules();
        let mut out = Vec::new();
        for c in chunks {
            d.push(&hex::decode(c).unwrap());
            loop {
                let r = d.poll();
                let again = matches!(r, Detection::Registration(_));
                out.push(r);
                if !again {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn dlt645_with_and_without_preamble() {
        assert_eq!(detect_chunks(&["6834120000000068110433333333f716"]), vec![Detection::Protocol(Protocol::Dlt645)]);
        assert_eq!(
            detect_chunks(&["fefe", "68341200", "0000006811"]),
            vec![Detection::NeedMore, Detection::NeedMore, Detection::Protocol(Protocol::Dlt645)]
        );
    }

    #[test]
    fn split_wrapper_start() {
        assert_eq!(
            detect_chunks(&["00", "0100010001000fc4"]),
            vec![Detection::NeedMore, Detection::Protocol(Protocol::DlmsWrapped)]
        );
    }

    #[test]
    fn heartbeat_then_dlms() {
        let r = detect_chunks(&["00010001000100120a020c3331313530", "31313134303730000000c401c1000600005c54"]);
        assert_eq!(r[0], Detection::NeedMore);
        assert!(matches!(&r[1], Detection::Registration(reg) if reg.raw_id == "311501114070"));
        assert_eq!(r[2], Detection::Protocol(Protocol::DlmsRaw));
    }

    #[test]
    fn noise_is_skipped_and_unknown_after_the_cap() {
        let mut d = Detector::with_builtin_rules();
        d.push(&[0x12, 0x34, 0x68, 0x34, 0x12, 0, 0, 0, 0, 0x68, 0x11]);
        assert_eq!(d.poll(), Detection::Protocol(Protocol::Dlt645));
        assert_eq!(d.skipped(), 2);
        assert_eq!(d.into_buffered()[0], 0x68);

        let mut d = Detector::with_builtin_rules();
        for _ in 0..100 {
            d.push(&[0x55; 64]);
        }
        assert_eq!(d.poll(), Detection::Unknown);
        assert_eq!(d.sample().len(), 32);
    }
}
