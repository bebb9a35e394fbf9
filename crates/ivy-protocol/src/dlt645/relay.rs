//! Relay (trip/close) and alarm control (`1C`) and the password/operator-code block shared with write (`14`).

use super::bcd;
use super::time::MeterDateTime;

/// N1 of a relay/alarm control block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayCommand {
    /// `1A`: trip (switch off, disconnect the load).
    Trip,
    /// `1B`: closing permitted (the customer may switch on).
    CloseAllowed,
    /// `1C`: close directly (switch on).
    CloseDirect,
    /// `2A`: alarm.
    Alarm,
    /// `2B`: alarm released.
    AlarmOff,
    /// `3A`: keep power (protect from tripping).
    KeepPower,
    /// `3B`: keep power released.
    KeepPowerOff,
}

impl RelayCommand {
    /// Every command.
    pub const ALL: [RelayCommand; 7] = [
        RelayCommand::Trip,
        RelayCommand::CloseAllowed,
        RelayCommand::CloseDirect,
        RelayCommand::Alarm,
        RelayCommand::AlarmOff,
        RelayCommand::KeepPower,
        RelayCommand::KeepPowerOff,
    ];

    /// The N1 byte.
    pub fn code(&self) -> u8 {
        match self {
            RelayCommand::Trip => 0x1A,
            RelayCommand::CloseAllowed => 0x1B,
            RelayCommand::CloseDirect => 0x1C,
            RelayCommand::Alarm => 0x2A,
            RelayCommand::AlarmOff => 0x2B,
            RelayCommand::KeepPower => 0x3A,
            RelayCommand::KeepPowerOff => 0x3B,
        }
    }

    /// From the N1 byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Words for the N1 byte.
    pub fn name(&self) -> &'static str {
        match self {
            RelayCommand::Trip => "trip (switch off)",
            RelayCommand::CloseAllowed => "close permitted (allow switch on)",
            RelayCommand::CloseDirect => "direct close (switch on)",
            RelayCommand::Alarm => "alarm",
            RelayCommand::AlarmOff => "alarm released",
            RelayCommand::KeepPower => "keep power (protect)",
            RelayCommand::KeepPowerOff => "keep power released",
        }
    }
}

/// Password level, password and operator code (from configuration: global default, per-meter override).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayAuth {
    /// PA.
    pub password_level: u8,
    /// P0 P1 P2 (BCD, little-endian).
    pub password: [u8; 3],
    /// C0..C3 (BCD, little-endian).
    pub operator_code: [u8; 4],
}

impl std::fmt::Debug for RelayAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAuth").field("password_level", &self.password_level).finish_non_exhaustive()
    }
}

/// Why credentials are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The password is not 6 digits.
    #[error("the password must be 6 digits")]
    Password,
    /// The operator code is not 8 digits.
    #[error("the operator code must be 8 digits")]
    OperatorCode,
}

fn digits_le<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    let bytes = bcd::encode_le(value, N).ok()?;
    bytes.try_into().ok()
}

impl RelayAuth {
    /// From text: 6-digit password and 8-digit operator code (`"123456"`, `"12345678"`).
    pub fn new(password_level: u8, password: &str, operator_code: &str) -> Result<Self, AuthError> {
        Ok(RelayAuth {
            password_level,
            password: digits_le::<3>(password).ok_or(AuthError::Password)?,
            operator_code: digits_le::<4>(operator_code).ok_or(AuthError::OperatorCode)?,
        })
    }

    /// `PA P0 P1 P2 C0 C1 C2 C3`.
    pub fn wire_prefix(&self) -> [u8; 8] {
        let [p0, p1, p2] = self.password;
        let [c0, c1, c2, c3] = self.operator_code;
        [self.password_level, p0, p1, p2, c0, c1, c2, c3]
    }
}

/// The 16-byte relay control body, encrypted with AES-128-ECB when a key is given.
pub fn relay_body(
    command: RelayCommand,
    auth: &RelayAuth,
    valid_until: &MeterDateTime,
    aes_key: Option<&[u8; 16]>,
) -> [u8; 16] {
    let mut body = [0u8; 16];
    let prefix = auth.wire_prefix();
    let deadline = valid_until.to_bcd_ssmmhhddmmyy();
    for (slot, b) in body.iter_mut().zip(prefix.iter().chain(&[command.code(), 0x00]).chain(deadline.iter())) {
        *slot = *b;
    }
    if let Some(key) = aes_key {
        use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
        let cipher = aes::Aes128::new(GenericArray::from_slice(key));
        let mut block = GenericArray::clone_from_slice(&body);
        cipher.encrypt_block(&mut block);
        body.copy_from_slice(&block);
    }
    body
}

/// Decrypts an AES-128-ECB relay body (for simulators).
pub fn decrypt_relay_body(body: &[u8; 16], key: &[u8; 16]) -> [u8; 16] {
    use aes::cipher::{BlockDecrypt, KeyInit, generic_array::GenericArray};
    let cipher = aes::Aes128::new(GenericArray::from_slice(key));
    let mut block = GenericArray::clone_from_slice(body);
    cipher.decrypt_block(&mut block);
    let mut out = [0u8; 16];
    out.copy_from_slice(&block);
    out
}

/// A relay control body read back (for simulators and `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayBody {
    /// PA.
    pub password_level: u8,
    /// Password digits (most significant first).
    pub password: String,
    /// Operator code digits.
    pub operator_code: String,
    /// N1.
    pub n1: u8,
    /// N2.
    pub n2: u8,
    /// The deadline, when it is a valid date-time.
    pub valid_until: Option<MeterDateTime>,
}

/// Parses a 16-byte plain relay body.
pub fn parse_relay_body(body: &[u8]) -> Option<RelayBody> {
    let [pa, p0, p1, p2, c0, c1, c2, c3, n1, n2, deadline @ ..] = body else { return None };
    if deadline.len() != 6 {
        return None;
    }
    Some(RelayBody {
        password_level: *pa,
        password: format!("{p2:02x}{p1:02x}{p0:02x}"),
        operator_code: format!("{c3:02x}{c2:02x}{c1:02x}{c0:02x}"),
        n1: *n1,
        n2: *n2,
        valid_until: MeterDateTime::from_bcd_ssmmhhddmmyy(deadline).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_layout_and_aes_round_trip() {
        let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
        let t = MeterDateTime::new(2024, 6, 15, 10, 30, 45).unwrap();
        let body = relay_body(RelayCommand::Trip, &auth, &t, None);
        assert_eq!(hex::encode(body), "02563412785634121a00453010150624");
        let parsed = parse_relay_body(&body).unwrap();
        assert_eq!(parsed.password, "123456");
        assert_eq!(parsed.operator_code, "12345678");
        assert_eq!(parsed.valid_until, Some(t));
        let key = [7u8; 16];
        let enc = relay_body(RelayCommand::Trip, &auth, &t, Some(&key));
        assert_ne!(enc, body);
        assert_eq!(decrypt_relay_body(&enc, &key), body);
        assert!(RelayAuth::new(2, "12345", "12345678").is_err());
        assert!(RelayAuth::new(2, "123456", "1234567x").is_err());
        assert!(!format!("{auth:?}").contains("123456"));
    }
}
