//! Registration packets and meter ids (SPEC 2.4).
//!
//! Some modems announce themselves with a registration ("heartbeat") packet before, or between, protocol
//! exchanges. A [`RegistrationRule`] says how to recognise one and where the meter id sits in it; the IVY EM114070
//! heartbeat is built in ([`RegistrationRule::em114070`]). Ids only become a [`MeterId`] after validation, because
//! they end up as MQTT topic segments and in HTML.

use std::fmt;

/// Longest meter id accepted (SPEC 2.4: `^[A-Za-z0-9_-]{1,64}$`).
pub const METER_ID_MAX_LEN: usize = 64;

/// Longest registration packet a rule may describe; bounds how much a detector ever buffers for one.
pub const MAX_RULE_PACKET_LEN: usize = 1024;

/// A validated meter id: 1 to 64 characters from `[A-Za-z0-9_-]`, safe as a topic segment, file name or HTML text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterId(String);

/// Why a string is not a valid meter id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterIdError {
    /// The id is empty.
    #[error("meter id is empty")]
    Empty,
    /// The id is longer than [`METER_ID_MAX_LEN`].
    #[error("meter id is {0} characters long (at most {METER_ID_MAX_LEN})")]
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9_-]`.
    #[error("meter id contains {0:?} (only A-Z, a-z, 0-9, '_' and '-' are allowed)")]
    InvalidChar(char),
}

impl MeterId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, MeterIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(MeterIdError::Empty);
        }
        if let Some(bad) = id.chars().find(|c| !Self::is_allowed(*c)) {
            return Err(MeterIdError::InvalidChar(bad));
        }
        if id.len() > METER_ID_MAX_LEN {
            return Err(MeterIdError::TooLong(id.len()));
        }
        Ok(MeterId(id))
    }

    /// Builds an id from arbitrary text by replacing every disallowed character with `_` and truncating to
    /// [`METER_ID_MAX_LEN`] (used for ids derived from IP addresses, e.g. `auto_10.0.0.1_5000` → `auto_10_0_0_1_5000`).
    pub fn sanitized(text: &str) -> Result<Self, MeterIdError> {
        let cleaned: String =
            text.chars().map(|c| if Self::is_allowed(c) { c } else { '_' }).take(METER_ID_MAX_LEN).collect();
        Self::new(cleaned)
    }

    /// The id derived from a peer address for the `use_ip` zero-address policy: `auto_<ip>_<port>`, sanitized.
    pub fn from_peer(ip: &str, port: u16) -> Result<Self, MeterIdError> {
        Self::sanitized(&format!("auto_{ip}_{port}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == '-'
    }
}

impl fmt::Display for MeterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for MeterId {
    type Err = MeterIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MeterId::new(s)
    }
}

impl AsRef<str> for MeterId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// How the id bytes of a registration packet are turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdEncoding {
    /// Printable ASCII characters, taken as they are.
    Ascii,
    /// Packed BCD, two digits per byte, most significant digit first.
    Bcd,
    /// Lower-case hex of the bytes.
    Hex,
}

impl std::str::FromStr for IdEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ascii" => Ok(IdEncoding::Ascii),
            "bcd" => Ok(IdEncoding::Bcd),
            "hex" => Ok(IdEncoding::Hex),
            other => Err(format!("unknown id encoding '{other}' (expected ascii, bcd or hex)")),
        }
    }
}

/// What the rule does with an all-zero id (an unconfigured meter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroAddressPolicy {
    /// Accept the id as sent (`000000000000`); the original's default.
    #[default]
    Accept,
    /// Replace it with `auto_<ip>_<port>` so several unconfigured meters stay apart.
    UseIp,
}

impl std::str::FromStr for ZeroAddressPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "accept" => Ok(ZeroAddressPolicy::Accept),
            "use_ip" | "use-ip" | "useip" => Ok(ZeroAddressPolicy::UseIp),
            other => Err(format!("unknown zero-address policy '{other}' (expected accept or use_ip)")),
        }
    }
}

/// A rule describing one kind of registration packet: `prefix`, then the id at `id_offset` (from the start of the
/// packet) for `id_length` bytes, the whole packet being `packet_length` bytes. Bytes after the id (separators,
/// check bytes) are not validated: the EM114070's check algorithm is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRule {
    /// A name for logs.
    pub name: String,
    /// The bytes every such packet starts with.
    pub prefix: Vec<u8>,
    /// Offset of the id from the start of the packet.
    pub id_offset: usize,
    /// Length of the id in bytes.
    pub id_length: usize,
    /// Total packet length (at least `id_offset + id_length`).
    pub packet_length: usize,
    /// How the id bytes become text.
    pub encoding: IdEncoding,
    /// Bytes to send back when a packet matched, if the modem expects an acknowledgement.
    pub ack: Option<Vec<u8>>,
}

/// Why a rule is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The prefix is empty (every packet would match).
    #[error("registration rule '{0}': prefix is empty")]
    EmptyPrefix(String),
    /// The id length is zero.
    #[error("registration rule '{0}': id length is 0")]
    EmptyId(String),
    /// The id overlaps the prefix or lies beyond the packet.
    #[error(
        "registration rule '{0}': id (offset {1}, length {2}) must lie after the prefix and inside the packet ({3} bytes)"
    )]
    BadLayout(String, usize, usize, usize),
    /// The packet is longer than [`MAX_RULE_PACKET_LEN`].
    #[error("registration rule '{0}': packet length {1} exceeds {MAX_RULE_PACKET_LEN}")]
    TooLong(String, usize),
}

/// Outcome of matching bytes against a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMatch {
    /// The bytes are not (the start of) such a packet.
    NoMatch,
    /// The bytes so far agree with the rule; more are needed to decide.
    Incomplete,
    /// A whole packet matched.
    Matched(Registration),
}

/// A registration packet that matched a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The id text as decoded (not yet validated: see [`Registration::meter_id`]).
    pub raw_id: String,
    /// Bytes the packet occupied from the start of the input.
    pub consumed: usize,
    /// Acknowledgement to send, if the rule has one.
    pub ack: Option<Vec<u8>>,
    /// True when every id digit/byte is zero (an unconfigured meter).
    pub zero_address: bool,
    /// True when the packet is itself an IEC 62056-47 wrapper packet (as the EM114070 heartbeat is): the
    /// connection then speaks wrapped DLMS.
    pub wrapper_packet: bool,
}

impl Registration {
    /// The validated meter id, applying the zero-address `policy` (with `peer` = (ip, port) for `use_ip`).
    pub fn meter_id(&self, policy: ZeroAddressPolicy, peer: Option<(&str, u16)>) -> Result<MeterId, MeterIdError> {
        match (policy, peer) {
            (ZeroAddressPolicy::UseIp, Some((ip, port))) if self.zero_address => MeterId::from_peer(ip, port),
            _ => MeterId::new(self.raw_id.clone()),
        }
    }
}

/// Wrapper header + `0A 02 0C` that starts every EM114070 heartbeat.
const EM114070_PREFIX: [u8; 11] = [0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x12, 0x0A, 0x02, 0x0C];

impl RegistrationRule {
    /// The IVY EM114070 heartbeat: wrapper header `00 01 00 01 00 01 00 12`, then `0A 02 0C`, 12 ASCII characters
    /// (the meter id), one separator byte and 2 check bytes: 26 bytes.
    pub fn em114070() -> Self {
        RegistrationRule {
            name: "IVY EM114070 heartbeat".into(),
            prefix: EM114070_PREFIX.to_vec(),
            id_offset: EM114070_PREFIX.len(),
            id_length: 12,
            packet_length: 26,
            encoding: IdEncoding::Ascii,
            ack: None,
        }
    }

    /// Checks the rule's layout; call once when loading configuration.
    pub fn validate(&self) -> Result<(), RuleError> {
        let name = self.name.clone();
        if self.prefix.is_empty() {
            return Err(RuleError::EmptyPrefix(name));
        }
        if self.id_length == 0 {
            return Err(RuleError::EmptyId(name));
        }
        if self.packet_length > MAX_RULE_PACKET_LEN {
            return Err(RuleError::TooLong(name, self.packet_length));
        }
        let id_end = self.id_offset.saturating_add(self.id_length);
        if self.id_offset < self.prefix.len() || id_end > self.packet_length {
            return Err(RuleError::BadLayout(name, self.id_offset, self.id_length, self.packet_length));
        }
        Ok(())
    }

    /// True when `bytes` could be the start of (or are) a packet of this rule: they agree with the prefix as far
    /// as both go.
    pub fn matches_prefix(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && self.prefix.iter().zip(bytes).all(|(a, b)| a == b)
    }

    /// Matches `bytes` (the start of the input) against the rule.
    pub fn match_packet(&self, bytes: &[u8]) -> RuleMatch {
        if !self.matches_prefix(bytes) {
            return RuleMatch::NoMatch;
        }
        let Some(packet) = bytes.get(..self.packet_length) else {
            return RuleMatch::Incomplete;
        };
        let Some(id_bytes) = packet.get(self.id_offset..self.id_offset.saturating_add(self.id_length)) else {
            return RuleMatch::NoMatch;
        };
        let Some(raw_id) = decode_id(id_bytes, self.encoding) else {
            return RuleMatch::NoMatch;
        };
        let zero_address = !raw_id.is_empty() && raw_id.chars().all(|c| c == '0');
        let wrapper_packet = crate::wrapper::Header::parse(packet).is_ok_and(|h| {
            h.version == crate::wrapper::VERSION
                && usize::from(h.payload_length) + crate::wrapper::HEADER_LEN == packet.len()
        });
        RuleMatch::Matched(Registration {
            raw_id,
            consumed: self.packet_length,
            ack: self.ack.clone(),
            zero_address,
            wrapper_packet,
        })
    }
}

/// Decodes the id bytes; `None` when they are not valid in the encoding (e.g. a control character in ASCII).
fn decode_id(bytes: &[u8], encoding: IdEncoding) -> Option<String> {
    match encoding {
        IdEncoding::Ascii => {
            if bytes.iter().all(|b| b.is_ascii_graphic()) {
                Some(bytes.iter().map(|&b| char::from(b)).collect())
            } else {
                None
            }
        }
        IdEncoding::Bcd => {
            let mut out = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                for nibble in [b >> 4, b & 0x0F] {
                    out.push(char::from_digit(u32::from(nibble), 10)?);
                }
            }
            Some(out)
        }
        IdEncoding::Hex => {
            use std::fmt::Write;
            let mut out = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            Some(out)
        }
    }
}

/// Matches `bytes` against several rules in order.
pub fn match_any(rules: &[RegistrationRule], bytes: &[u8]) -> RuleMatch {
    let mut incomplete = false;
    for rule in rules {
        match rule.match_packet(bytes) {
            RuleMatch::Matched(r) => return RuleMatch::Matched(r),
            RuleMatch::Incomplete => incomplete = true,
            RuleMatch::NoMatch => {}
        }
    }
    if incomplete { RuleMatch::Incomplete } else { RuleMatch::NoMatch }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_id_validation() {
        assert!(MeterId::new("311501114070").is_ok());
        assert!(MeterId::new("a_b-C9").is_ok());
        assert_eq!(MeterId::new(""), Err(MeterIdError::Empty));
        assert_eq!(MeterId::new("a/#+"), Err(MeterIdError::InvalidChar('/')));
        assert_eq!(MeterId::new("<b>"), Err(MeterIdError::InvalidChar('<')));
        assert_eq!(MeterId::new("x".repeat(65)), Err(MeterIdError::TooLong(65)));
        assert!(MeterId::new("x".repeat(64)).is_ok());
        assert_eq!(MeterId::from_peer("10.0.0.1", 5000).unwrap().as_str(), "auto_10_0_0_1_5000");
        assert_eq!(MeterId::from_peer("::1", 7).unwrap().as_str(), "auto___1_7");
    }

    #[test]
    fn em114070_rule() {
        let rule = RegistrationRule::em114070();
        rule.validate().unwrap();
        let hb = hex::decode("00010001000100120a020c333131353031313134303730000000").unwrap();
        match rule.match_packet(&hb) {
            RuleMatch::Matched(r) => {
                assert_eq!(r.raw_id, "311501114070");
                assert_eq!(r.consumed, 26);
                assert!(!r.zero_address);
                assert!(r.wrapper_packet);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rule.match_packet(&hb[..5]), RuleMatch::Incomplete);
        assert_eq!(rule.match_packet(&[0x68, 0, 0]), RuleMatch::NoMatch);
        // An id with a byte that is not printable never becomes text.
        let mut bad = hb.clone();
        bad[12] = 0x01;
        assert_eq!(rule.match_packet(&bad), RuleMatch::NoMatch);
    }

    #[test]
    fn zero_address_policy() {
        let r = Registration {
            raw_id: "000000000000".into(),
            consumed: 26,
            ack: None,
            zero_address: true,
            wrapper_packet: true,
        };
        assert_eq!(r.meter_id(ZeroAddressPolicy::Accept, Some(("1.2.3.4", 9))).unwrap().as_str(), "000000000000");
        assert_eq!(r.meter_id(ZeroAddressPolicy::UseIp, Some(("1.2.3.4", 9))).unwrap().as_str(), "auto_1_2_3_4_9");
    }

    #[test]
    fn generic_rules() {
        let rule = RegistrationRule {
            name: "dtu".into(),
            prefix: b"REG".to_vec(),
            id_offset: 3,
            id_length: 2,
            packet_length: 6,
            encoding: IdEncoding::Bcd,
            ack: Some(b"OK".to_vec()),
        };
        rule.validate().unwrap();
        match rule.match_packet(b"REG\x12\x34\n") {
            RuleMatch::Matched(r) => {
                assert_eq!(r.raw_id, "1234");
                assert_eq!(r.ack.as_deref(), Some(&b"OK"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rule.match_packet(b"REG\x1A\x34\n"), RuleMatch::NoMatch);
        let hex_rule = RegistrationRule { encoding: IdEncoding::Hex, ..rule.clone() };
        assert!(matches!(hex_rule.match_packet(b"REG\xAB\xCD\n"), RuleMatch::Matched(r) if r.raw_id == "abcd"));
        let overlapping = RegistrationRule { id_offset: 1, ..rule };
        assert!(overlapping.validate().is_err());
    }
}
