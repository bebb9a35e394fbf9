//! The register catalogue (SPEC 2.2) as data: data identifier, canonical key, aliases, format, unit, quantity.
//! A built-in table plus definitions from a user file ([`Catalogue::extend`]). Values are decoded here, once:
//! the format's resolution and sign are applied and numbers are rounded to the format's decimals.

use super::bcd::{self, BcdError};
use super::di::Di;
use crate::Quantity;
use std::collections::HashMap;
use std::sync::OnceLock;

/// How a register's value bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// BCD number with `int_digits` before and `decimals` after the point (`XXX.X`); `signed` puts the sign in the
    /// top bit of the most significant byte (`±XX.XXXX`).
    Decimal {
        /// Digits before the point.
        int_digits: u8,
        /// Digits after the point.
        decimals: u8,
        /// Top bit is the sign.
        signed: bool,
    },
    /// `YYMMDDWW`: date and weekday.
    DateWeek,
    /// `hhmmss`.
    Time,
    /// `YYMMDDhhmmss`.
    DateTime,
    /// A run of decimal digits kept as text (`NNNNNNNNNNNN`, e.g. an address).
    Digits(u8),
    /// A 16-bit status word of bit flags (not BCD).
    StatusWord,
}

/// Why a format string is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown register format '{0}' (examples: XXXXXX.XX, ±XX.XXXX, YYMMDDWW, hhmmss, YYMMDDhhmmss, NNNNNNNNNNNN, status16)"
)]
pub struct FormatError(pub String);

impl Format {
    /// Parses a format string as written in the catalogue file.
    pub fn parse(text: &str) -> Result<Format, FormatError> {
        let t = text.trim();
        let (signed, body) = match t.strip_prefix('±').or_else(|| t.strip_prefix("+-")) {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        match body {
            "YYMMDDWW" => return Ok(Format::DateWeek),
            "hhmmss" => return Ok(Format::Time),
            "YYMMDDhhmmss" => return Ok(Format::DateTime),
            "status16" | "status_word" => return Ok(Format::StatusWord),
            _ => {}
        }
        if !body.is_empty() && body.chars().all(|c| c == 'N') {
            return u8::try_from(body.len())
                .ok()
                .filter(|n| n % 2 == 0)
                .map(Format::Digits)
                .ok_or_else(|| FormatError(text.to_owned()));
        }
        let (int, dec) = body.split_once('.').unwrap_or((body, ""));
        let valid = !int.is_empty() && int.chars().all(|c| c == 'X') && dec.chars().all(|c| c == 'X');
        let total = int.len() + dec.len();
        if !valid || total % 2 != 0 || total > 16 {
            return Err(FormatError(text.to_owned()));
        }
        Ok(Format::Decimal { int_digits: int.len() as u8, decimals: dec.len() as u8, signed })
    }

    /// Value bytes on the wire.
    pub fn byte_len(&self) -> usize {
        match self {
            Format::Decimal { int_digits, decimals, .. } => usize::from(int_digits + decimals) / 2,
            Format::DateWeek => 4,
            Format::Time => 3,
            Format::DateTime => 6,
            Format::Digits(n) => usize::from(*n) / 2,
            Format::StatusWord => 2,
        }
    }

    /// The format as the vectors print it (no sign marker: `signed` is a separate field).
    pub fn display(&self) -> String {
        match self {
            Format::Decimal { int_digits, decimals, .. } => {
                let mut s = "X".repeat(usize::from(*int_digits));
                if *decimals > 0 {
                    s.push('.');
                    s.push_str(&"X".repeat(usize::from(*decimals)));
                }
                s
            }
            Format::DateWeek => "YYMMDDWW".into(),
            Format::Time => "hhmmss".into(),
            Format::DateTime => "YYMMDDhhmmss".into(),
            Format::Digits(n) => "N".repeat(usize::from(*n)),
            Format::StatusWord => "status16".into(),
        }
    }

    /// Whether the top bit is a sign.
    pub fn signed(&self) -> bool {
        matches!(self, Format::Decimal { signed: true, .. })
    }
}

/// One register definition.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterDef {
    /// Canonical key (published).
    pub key: String,
    /// Other names that resolve to it (the original product's keys).
    pub aliases: Vec<String>,
    /// Data identifier.
    pub di: Di,
    /// Value layout.
    pub format: Format,
    /// Unit symbol (empty when none).
    pub unit: String,
    /// What it measures.
    pub quantity: Quantity,
    /// Description.
    pub name: String,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedValue {
    /// A number: `value` = `raw` / 10^`decimals`.
    Number {
        /// Scaled value.
        value: f64,
        /// The BCD integer with its sign.
        raw: i64,
        /// Decimals of the format.
        decimals: u8,
    },
    /// A date with weekday (0 = Sunday).
    Date {
        /// Year (2000 + YY).
        year: u16,
        /// Month.
        month: u8,
        /// Day.
        day: u8,
        /// Weekday.
        weekday: u8,
    },
    /// A time of day.
    Time {
        /// Hour.
        hour: u8,
        /// Minute.
        minute: u8,
        /// Second.
        second: u8,
    },
    /// Date and time.
    DateTime {
        /// Year.
        year: u16,
        /// Month.
        month: u8,
        /// Day.
        day: u8,
        /// Hour.
        hour: u8,
        /// Minute.
        minute: u8,
        /// Second.
        second: u8,
    },
    /// Decimal digits as text, most significant first.
    Digits(String),
    /// A status word.
    Status(u16),
    /// An unknown DI: the bytes as a BCD number when they are BCD, and as hex.
    Raw {
        /// BCD reading (little-endian), if valid.
        number: Option<u64>,
        /// Hex of the bytes as received (little-endian).
        hex: String,
    },
}

impl DecodedValue {
    /// The value as a number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            DecodedValue::Number { value, .. } => Some(*value),
            DecodedValue::Status(s) => Some(f64::from(*s)),
            DecodedValue::Raw { number: Some(n), .. } => Some(*n as f64),
            _ => None,
        }
    }

    /// Text form for non-numbers: ISO date/time, digits, hex.
    pub fn to_text(&self) -> String {
        match self {
            DecodedValue::Number { value, decimals, .. } => format!("{value:.*}", usize::from(*decimals)),
            DecodedValue::Date { year, month, day, .. } => format!("{year:04}-{month:02}-{day:02}"),
            DecodedValue::Time { hour, minute, second } => format!("{hour:02}:{minute:02}:{second:02}"),
            DecodedValue::DateTime { year, month, day, hour, minute, second } => {
                format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")
            }
            DecodedValue::Digits(d) => d.clone(),
            DecodedValue::Status(s) => format!("{s:#06x}"),
            DecodedValue::Raw { number: Some(n), .. } => n.to_string(),
            DecodedValue::Raw { hex, .. } => hex.clone(),
        }
    }
}

/// Why a value could not be decoded (the frame itself is fine).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// Not BCD.
    #[error("invalid BCD byte {0:#04x}")]
    InvalidBcd(u8),
    /// Fewer bytes than the format needs.
    #[error("value needs {expected} bytes, got {got}")]
    Length {
        /// Needed.
        expected: usize,
        /// Present.
        got: usize,
    },
    /// A date/time field out of range.
    #[error("invalid date or time")]
    InvalidDate,
    /// No such register.
    #[error("unknown register '{0}'")]
    UnknownRegister(String),
    /// The number does not fit the format.
    #[error("{0} does not fit the register's format")]
    OutOfRange(f64),
}

impl ValueError {
    /// snake_case name (the vectors' `value_error`).
    pub fn kind(&self) -> &'static str {
        match self {
            ValueError::InvalidBcd(_) => "invalid_bcd",
            ValueError::Length { .. } => "length_mismatch",
            ValueError::InvalidDate => "invalid_date",
            ValueError::UnknownRegister(_) => "unknown_register",
            ValueError::OutOfRange(_) => "out_of_range",
        }
    }
}

impl From<BcdError> for ValueError {
    fn from(e: BcdError) -> Self {
        match e {
            BcdError::InvalidDigit { byte } => ValueError::InvalidBcd(byte),
            BcdError::Overflow(n) => ValueError::Length { expected: 9, got: n },
        }
    }
}

/// Why a catalogue cannot take a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    /// Key or alias already names another register.
    #[error("register name '{0}' is already used by {1}")]
    DuplicateName(String, String),
    /// Empty or malformed key.
    #[error("register key '{0}' must be non-empty and made of A-Z, 0-9 and '_'")]
    BadKey(String),
}

/// The catalogue: lookups by DI (binary search) and by key/alias (case-insensitive, `_`/`-` ignored, so the
/// original's camelCase names such as `voltageA` also resolve).
#[derive(Debug, Clone)]
pub struct Catalogue {
    defs: Vec<RegisterDef>,
    by_di: Vec<(Di, usize)>,
    by_name: HashMap<String, usize>,
}

fn normalize(name: &str) -> String {
    name.chars().filter(|c| *c != '_' && *c != '-' && *c != ' ').flat_map(char::to_lowercase).collect()
}

/// (key, DI, format, unit, quantity, name, aliases)
type Row = (&'static str, u32, &'static str, &'static str, Quantity, &'static str, &'static [&'static str]);

/// The built-in table. Aliases are the original product's keys, resolving to the same DI.
const BUILTIN: &[Row] = &[
    (
        "COMBINED_ACTIVE_ENERGY",
        0x0000_0000,
        "±XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Combined active energy",
        &["TOTAL_ACTIVE_POSITIVE", "TOTAL_ACTIVE_ENERGY", "ENERGY"],
    ),
    (
        "FORWARD_ACTIVE_ENERGY",
        0x0001_0000,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Forward (import) active energy",
        &["TOTAL_ACTIVE_NEGATIVE", "IMPORT_ACTIVE_ENERGY"],
    ),
    (
        "FORWARD_ACTIVE_ENERGY_T1",
        0x0001_0100,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Forward active energy, tariff 1",
        &["TARIFF_1_ACTIVE"],
    ),
    (
        "FORWARD_ACTIVE_ENERGY_T2",
        0x0001_0200,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Forward active energy, tariff 2",
        &["TARIFF_2_ACTIVE"],
    ),
    (
        "FORWARD_ACTIVE_ENERGY_T3",
        0x0001_0300,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Forward active energy, tariff 3",
        &["TARIFF_3_ACTIVE"],
    ),
    (
        "FORWARD_ACTIVE_ENERGY_T4",
        0x0001_0400,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Forward active energy, tariff 4",
        &["TARIFF_4_ACTIVE"],
    ),
    (
        "REVERSE_ACTIVE_ENERGY",
        0x0002_0000,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Reverse (export) active energy",
        &["TOTAL_REACTIVE_POSITIVE", "EXPORT_ACTIVE_ENERGY"],
    ),
    (
        "COMBINED_REACTIVE_1_ENERGY",
        0x0003_0000,
        "±XXXXXX.XX",
        "kvarh",
        Quantity::Energy,
        "Combined reactive energy 1",
        &["TOTAL_REACTIVE_NEGATIVE"],
    ),
    (
        "COMBINED_REACTIVE_2_ENERGY",
        0x0004_0000,
        "±XXXXXX.XX",
        "kvarh",
        Quantity::Energy,
        "Combined reactive energy 2",
        &[],
    ),
    ("BALANCE_ENERGY", 0x0090_0100, "XXXXXX.XX", "kWh", Quantity::Energy, "Prepaid balance (energy)", &[]),
    ("BALANCE_MONEY", 0x0090_0200, "XXXXXX.XX", "yuan", Quantity::Money, "Prepaid balance (money)", &[]),
    (
        "BALANCE_ALARM_THRESHOLD",
        0x0090_0300,
        "XXXXXX.XX",
        "kWh",
        Quantity::Energy,
        "Low balance alarm threshold",
        &["ALARM_THRESHOLD"],
    ),
    ("VOLTAGE_A", 0x0201_0100, "XXX.X", "V", Quantity::Voltage, "Phase A voltage", &[]),
    ("VOLTAGE_B", 0x0201_0200, "XXX.X", "V", Quantity::Voltage, "Phase B voltage", &[]),
    ("VOLTAGE_C", 0x0201_0300, "XXX.X", "V", Quantity::Voltage, "Phase C voltage", &[]),
    ("CURRENT_A", 0x0202_0100, "±XXX.XXX", "A", Quantity::Current, "Phase A current", &[]),
    ("CURRENT_B", 0x0202_0200, "±XXX.XXX", "A", Quantity::Current, "Phase B current", &[]),
    ("CURRENT_C", 0x0202_0300, "±XXX.XXX", "A", Quantity::Current, "Phase C current", &[]),
    (
        "ACTIVE_POWER_TOTAL",
        0x0203_0000,
        "±XX.XXXX",
        "kW",
        Quantity::ActivePower,
        "Total active power",
        &["TOTAL_ACTIVE_POWER"],
    ),
    ("ACTIVE_POWER_A", 0x0203_0100, "±XX.XXXX", "kW", Quantity::ActivePower, "Phase A active power", &[]),
    ("ACTIVE_POWER_B", 0x0203_0200, "±XX.XXXX", "kW", Quantity::ActivePower, "Phase B active power", &[]),
    ("ACTIVE_POWER_C", 0x0203_0300, "±XX.XXXX", "kW", Quantity::ActivePower, "Phase C active power", &[]),
    (
        "REACTIVE_POWER_TOTAL",
        0x0204_0000,
        "±XX.XXXX",
        "kvar",
        Quantity::ReactivePower,
        "Total reactive power",
        &["TOTAL_REACTIVE_POWER"],
    ),
    ("REACTIVE_POWER_A", 0x0204_0100, "±XX.XXXX", "kvar", Quantity::ReactivePower, "Phase A reactive power", &[]),
    ("REACTIVE_POWER_B", 0x0204_0200, "±XX.XXXX", "kvar", Quantity::ReactivePower, "Phase B reactive power", &[]),
    ("REACTIVE_POWER_C", 0x0204_0300, "±XX.XXXX", "kvar", Quantity::ReactivePower, "Phase C reactive power", &[]),
    (
        "APPARENT_POWER_TOTAL",
        0x0205_0000,
        "±XX.XXXX",
        "kVA",
        Quantity::ApparentPower,
        "Total apparent power",
        &["TOTAL_APPARENT_POWER"],
    ),
    ("APPARENT_POWER_A", 0x0205_0100, "±XX.XXXX", "kVA", Quantity::ApparentPower, "Phase A apparent power", &[]),
    ("APPARENT_POWER_B", 0x0205_0200, "±XX.XXXX", "kVA", Quantity::ApparentPower, "Phase B apparent power", &[]),
    ("APPARENT_POWER_C", 0x0205_0300, "±XX.XXXX", "kVA", Quantity::ApparentPower, "Phase C apparent power", &[]),
    (
        "POWER_FACTOR_TOTAL",
        0x0206_0000,
        "±X.XXX",
        "",
        Quantity::PowerFactor,
        "Total power factor",
        &["TOTAL_POWER_FACTOR"],
    ),
    ("POWER_FACTOR_A", 0x0206_0100, "±X.XXX", "", Quantity::PowerFactor, "Phase A power factor", &[]),
    ("POWER_FACTOR_B", 0x0206_0200, "±X.XXX", "", Quantity::PowerFactor, "Phase B power factor", &[]),
    ("POWER_FACTOR_C", 0x0206_0300, "±X.XXX", "", Quantity::PowerFactor, "Phase C power factor", &[]),
    ("NEUTRAL_CURRENT", 0x0280_0001, "±XXX.XXX", "A", Quantity::Current, "Neutral current", &[]),
    ("FREQUENCY", 0x0280_0002, "XX.XX", "Hz", Quantity::Frequency, "Grid frequency", &[]),
    ("METER_TEMPERATURE", 0x0280_0007, "±XXX.X", "°C", Quantity::Temperature, "Meter temperature", &[]),
    ("DATE_WEEK", 0x0400_0101, "YYMMDDWW", "", Quantity::Clock, "Date and weekday", &["DATE_TIME", "DATE"]),
    ("TIME", 0x0400_0102, "hhmmss", "", Quantity::Clock, "Time of day", &[]),
    ("METER_ADDRESS", 0x0400_0401, "NNNNNNNNNNNN", "", Quantity::Identity, "Communication address", &["ADDRESS"]),
    ("STATUS_WORD_1", 0x0400_0501, "status16", "", Quantity::Status, "Meter status word 1", &["RELAY_STATUS"]),
    ("STATUS_WORD_2", 0x0400_0502, "status16", "", Quantity::Status, "Meter status word 2", &[]),
    (
        "STATUS_WORD_3",
        0x0400_0503,
        "status16",
        "",
        Quantity::Status,
        "Meter status word 3 (bit 4: relay open)",
        &["METER_STATUS"],
    ),
    ("STATUS_WORD_4", 0x0400_0504, "status16", "", Quantity::Status, "Meter status word 4", &[]),
    ("STATUS_WORD_5", 0x0400_0505, "status16", "", Quantity::Status, "Meter status word 5", &[]),
    ("STATUS_WORD_6", 0x0400_0506, "status16", "", Quantity::Status, "Meter status word 6", &[]),
    ("STATUS_WORD_7", 0x0400_0507, "status16", "", Quantity::Status, "Meter status word 7", &[]),
];

/// DI of status word 3, whose bit 4 is the relay state (0 closed/on, 1 open/off).
pub const RELAY_STATUS_DI: Di = Di::new(0x0400_0503);
/// The relay bit of status word 3.
pub const RELAY_OPEN_BIT: u16 = 1 << 4;

impl Catalogue {
    /// The built-in catalogue (built once).
    pub fn builtin() -> &'static Catalogue {
        static BUILT: OnceLock<Catalogue> = OnceLock::new();
        BUILT.get_or_init(|| {
            let mut c = Catalogue { defs: Vec::new(), by_di: Vec::new(), by_name: HashMap::new() };
            let defs = BUILTIN.iter().filter_map(|(key, di, format, unit, quantity, name, aliases)| {
                Some(RegisterDef {
                    key: (*key).to_owned(),
                    aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
                    di: Di::new(*di),
                    format: Format::parse(format).ok()?,
                    unit: (*unit).to_owned(),
                    quantity: *quantity,
                    name: (*name).to_owned(),
                })
            });
            // The built-in rows are consistent (checked by a unit test), so nothing is skipped here.
            let _ = c.extend(defs);
            c
        })
    }

    /// Adds definitions (a user file's). A definition for an existing DI replaces it; a key or alias that
    /// already names a different DI is an error.
    pub fn extend(&mut self, defs: impl IntoIterator<Item = RegisterDef>) -> Result<(), CatalogueError> {
        for def in defs {
            if def.key.is_empty() || !def.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(CatalogueError::BadKey(def.key));
            }
            let index = match self.by_di.iter().find(|(di, _)| *di == def.di) {
                Some((_, i)) => *i,
                None => self.defs.len(),
            };
            for name in std::iter::once(&def.key).chain(&def.aliases) {
                if let Some(&other) = self.by_name.get(&normalize(name))
                    && other != index
                {
                    let owner = self.defs.get(other).map(|d| d.key.clone()).unwrap_or_default();
                    return Err(CatalogueError::DuplicateName(name.clone(), owner));
                }
            }
            if let Some(old) = self.defs.get(index) {
                let stale: Vec<String> = std::iter::once(&old.key).chain(&old.aliases).map(|n| normalize(n)).collect();
                for n in stale {
                    self.by_name.remove(&n);
                }
            }
            for name in std::iter::once(&def.key).chain(&def.aliases) {
                self.by_name.insert(normalize(name), index);
            }
            if index == self.defs.len() {
                self.by_di.push((def.di, index));
                self.defs.push(def);
            } else if let Some(slot) = self.defs.get_mut(index) {
                *slot = def;
            }
        }
        self.by_di.sort_unstable_by_key(|(di, _)| *di);
        Ok(())
    }

    /// Every definition.
    pub fn defs(&self) -> &[RegisterDef] {
        &self.defs
    }

    /// By data identifier.
    pub fn by_di(&self, di: Di) -> Option<&RegisterDef> {
        let i = self.by_di.binary_search_by_key(&di, |(d, _)| *d).ok()?;
        self.by_di.get(i).and_then(|(_, idx)| self.defs.get(*idx))
    }

    /// By key or alias (case-insensitive; `_`, `-` and spaces ignored).
    pub fn lookup(&self, name: &str) -> Option<&RegisterDef> {
        self.by_name.get(&normalize(name)).and_then(|i| self.defs.get(*i))
    }

    /// Decodes the value bytes of `di` (the catalogue's format, or a raw BCD number for unknown DIs).
    pub fn decode(&self, di: Di, bytes: &[u8]) -> Result<DecodedValue, ValueError> {
        match self.by_di(di) {
            Some(def) => decode_value(&def.format, bytes),
            None => Ok(DecodedValue::Raw { number: bcd::decode_le(bytes).ok(), hex: hex_lower(bytes) }),
        }
    }

    /// Encodes a number for `di` in its format (simulators; writes).
    pub fn encode_number(&self, di: Di, value: f64) -> Result<Vec<u8>, ValueError> {
        let def = self.by_di(di).ok_or_else(|| ValueError::UnknownRegister(di.hex()))?;
        encode_number(&def.format, value)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

const POW10: [f64; 17] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16];

/// Decodes value bytes in `format`. Bytes beyond the format's length are ignored.
pub fn decode_value(format: &Format, bytes: &[u8]) -> Result<DecodedValue, ValueError> {
    let n = format.byte_len();
    let v = bytes.get(..n).ok_or(ValueError::Length { expected: n, got: bytes.len() })?;
    let b = |i: usize| -> Result<u8, ValueError> { Ok(bcd::from_bcd_byte(*v.get(i).unwrap_or(&0))?) };
    Ok(match format {
        Format::Decimal { decimals, signed, .. } => {
            let raw = if *signed { bcd::decode_signed_le(v)? } else { bcd::decode_le(v)? as i64 };
            let scale = POW10.get(usize::from(*decimals)).copied().unwrap_or(1.0);
            // IEEE division is correctly rounded: the result is the double nearest to the decimal value, i.e. the
            // value rounded to the format's resolution.
            DecodedValue::Number { value: raw as f64 / scale, raw, decimals: *decimals }
        }
        Format::DateWeek => {
            // Wire order (little-endian): WW DD MM YY.
            let (weekday, day, month, yy) = (b(0)?, b(1)?, b(2)?, b(3)?);
            if !(1..=12).contains(&month) || !(1..=31).contains(&day) || weekday > 6 {
                return Err(ValueError::InvalidDate);
            }
            DecodedValue::Date { year: 2000 + u16::from(yy), month, day, weekday }
        }
        Format::Time => {
            let (second, minute, hour) = (b(0)?, b(1)?, b(2)?);
            if hour > 23 || minute > 59 || second > 59 {
                return Err(ValueError::InvalidDate);
            }
            DecodedValue::Time { hour, minute, second }
        }
        Format::DateTime => {
            let (second, minute, hour, day, month, yy) = (b(0)?, b(1)?, b(2)?, b(3)?, b(4)?, b(5)?);
            super::time::MeterDateTime::new(2000 + u16::from(yy), month, day, hour, minute, second)
                .map_err(|_| ValueError::InvalidDate)?;
            DecodedValue::DateTime { year: 2000 + u16::from(yy), month, day, hour, minute, second }
        }
        Format::Digits(_) => {
            let mut s = String::with_capacity(v.len() * 2);
            for i in (0..v.len()).rev() {
                let d = b(i)?;
                s.push(char::from(b'0' + d / 10));
                s.push(char::from(b'0' + d % 10));
            }
            DecodedValue::Digits(s)
        }
        Format::StatusWord => {
            let [lo, hi, ..] = v else { return Err(ValueError::Length { expected: 2, got: v.len() }) };
            DecodedValue::Status(u16::from_le_bytes([*lo, *hi]))
        }
    })
}

/// Encodes a number in a decimal `format` (rounded to its resolution).
pub fn encode_number(format: &Format, value: f64) -> Result<Vec<u8>, ValueError> {
    let Format::Decimal { decimals, signed, .. } = format else { return Err(ValueError::OutOfRange(value)) };
    let scale = POW10.get(usize::from(*decimals)).copied().unwrap_or(1.0);
    let raw = (value * scale).round();
    if !raw.is_finite() || (!signed && raw < 0.0) || raw.abs() > 9.0e15 {
        return Err(ValueError::OutOfRange(value));
    }
    let n = format.byte_len();
    let out = if *signed { bcd::encode_signed_le(raw as i64, n) } else { bcd::encode_le(raw as u64, n) };
    out.map_err(|_| ValueError::OutOfRange(value))
}

/// Encodes a `YYMMDDWW` date (simulators).
pub fn encode_date(year: u16, month: u8, day: u8, weekday: u8) -> Vec<u8> {
    [weekday, day, month, (year % 100) as u8].iter().map(|v| bcd::to_bcd_byte(*v).unwrap_or(0)).collect()
}

/// Encodes an `hhmmss` time (simulators).
pub fn encode_time(hour: u8, minute: u8, second: u8) -> Vec<u8> {
    [second, minute, hour].iter().map(|v| bcd::to_bcd_byte(*v).unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_consistent() {
        let c = Catalogue::builtin();
        assert_eq!(c.defs().len(), BUILTIN.len(), "every built-in row parses and no name collides");
        assert_eq!(c.lookup("voltage_a").unwrap().di, Di::new(0x0201_0100));
        assert_eq!(c.lookup("voltageA").unwrap().key, "VOLTAGE_A");
        assert_eq!(c.lookup("TOTAL_ACTIVE_POSITIVE").unwrap().key, "COMBINED_ACTIVE_ENERGY");
        assert_eq!(c.by_di(Di::new(0x0203_0000)).unwrap().unit, "kW");
    }

    #[test]
    fn decoding_applies_format_and_sign() {
        let c = Catalogue::builtin();
        assert_eq!(
            c.decode(Di::new(0x0203_0000), &[0x45, 0x23, 0x01]).unwrap(),
            DecodedValue::Number { value: 1.2345, raw: 12345, decimals: 4 }
        );
        assert_eq!(c.decode(Di::new(0x0202_0100), &[0x45, 0x23, 0x81]).unwrap().as_f64(), Some(-12.345));
        assert_eq!(c.decode(Di::new(0x0000_0000), &[0x99, 0x99, 0x99, 0x99]).unwrap().as_f64(), Some(-199999.99));
        assert_eq!(c.decode(Di::new(0x0201_0100), &[0x1A, 0x22]), Err(ValueError::InvalidBcd(0x1A)));
        assert!(matches!(c.decode(Di::new(0x0201_0100), &[0x05]), Err(ValueError::Length { .. })));
        assert_eq!(
            c.decode(Di::new(0x1234_5678), &[0x12, 0x34]).unwrap(),
            DecodedValue::Raw { number: Some(3412), hex: "1234".into() }
        );
        assert_eq!(c.decode(Di::new(0x0400_0503), &[0x10, 0x00]).unwrap(), DecodedValue::Status(0x0010));
    }

    #[test]
    fn user_definitions() {
        let mut c = Catalogue::builtin().clone();
        let def = RegisterDef {
            key: "MY_REG".into(),
            aliases: vec!["mine".into()],
            di: Di::new(0x0300_0001),
            format: Format::parse("XXXX").unwrap(),
            unit: "".into(),
            quantity: Quantity::Counter,
            name: "x".into(),
        };
        c.extend([def.clone()]).unwrap();
        assert_eq!(c.lookup("MINE").unwrap().di, Di::new(0x0300_0001));
        let clash = RegisterDef { key: "VOLTAGE_A".into(), di: Di::new(0x0300_0002), ..def };
        assert!(c.extend([clash]).is_err());
        assert!(Format::parse("XX.X").is_err());
        assert!(Format::parse("bogus").is_err());
    }
}
