//! Explain any frame, APDU or A-XDR value in words and as one JSON object (the gateway's `decode` tool, field
//! debugging, and the vector tests).
//!
//! JSON field names follow the shared vectors (`protocol`, `control`, `function`, `address`, `data_id`, `value`,
//! `unit`, `error_flags`, `apdu`, `invoke_id`, `class_id`, `obis`, `attribute`, `data_type`, `data_access_result`,
//! `date_time`, ...). Failures are [`ExplainError`]s carrying a stable snake_case `kind` (`checksum_mismatch`,
//! `truncated`, `unknown_data_type`, ...) plus whatever details were decoded before the failure.

use serde_json::{Map, Value};

pub mod dlms;
pub mod dlt645;
pub mod wrapper;

/// Which interpretation to apply to the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A DL/T 645-2007 frame (FE preamble allowed).
    Dlt645,
    /// One DLMS/COSEM APDU (no wrapper).
    Dlms,
    /// An IEC 62056-47 wrapper packet (header, and the APDU inside when complete).
    Wrapper,
    /// One A-XDR `Data` value; a 6-byte input that is not one falls back to an OBIS code, a 12-byte input to an
    /// untagged COSEM date-time.
    Axdr,
    /// A registration/heartbeat packet (the built-in IVY EM114070 rule).
    Heartbeat,
    /// A 6-byte OBIS instance id.
    Obis,
    /// A 12-byte untagged COSEM date-time.
    CosemDateTime,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dlt645" | "dlt-645" | "645" => Protocol::Dlt645,
            "dlms" | "apdu" => Protocol::Dlms,
            "wrapper" | "ivy-wrapper" | "ivy" => Protocol::Wrapper,
            "axdr" | "a-xdr" => Protocol::Axdr,
            "heartbeat" | "registration" => Protocol::Heartbeat,
            "obis" => Protocol::Obis,
            "cosem-datetime" | "cosem-date-time" | "datetime" => Protocol::CosemDateTime,
            other => {
                return Err(format!(
                    "unknown protocol '{other}' (expected dlt645, dlms, wrapper, axdr, heartbeat, obis or cosem-datetime)"
                ));
            }
        })
    }
}

/// A successful explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// One line in words, e.g. "DL/T 645 read reply from 000000001234: VOLTAGE_A = 220.5 V".
    pub summary: String,
    /// The decoded fields (vector field names); always contains `protocol`.
    pub fields: Map<String, Value>,
}

impl Explanation {
    /// The fields as one JSON object value.
    pub fn to_json(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    /// A multi-line human-readable rendering: the summary, then one indented line per field.
    pub fn to_text(&self) -> String {
        let mut out = self.summary.clone();
        for (k, v) in &self.fields {
            out.push_str("\n  ");
            out.push_str(k);
            out.push_str(": ");
            match v {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
        }
        out
    }
}

/// Why bytes could not be explained.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainError {
    /// Stable snake_case kind (`checksum_mismatch`, `truncated`, ...), the `error` field of the vectors.
    pub kind: &'static str,
    /// One line for humans.
    pub message: String,
    /// Details decoded before the failure (e.g. `checksum_expected`, `checksum_actual`, `tag`).
    pub details: Map<String, Value>,
}

impl ExplainError {
    /// A new error without details.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        ExplainError { kind, message: message.into(), details: Map::new() }
    }

    /// Adds one detail field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// `{"error": kind, "message": ..., ...details}`.
    pub fn to_json(&self) -> Value {
        let mut m = self.details.clone();
        m.insert("error".into(), Value::from(self.kind));
        m.insert("message".into(), Value::from(self.message.clone()));
        Value::Object(m)
    }
}

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ExplainError {}

/// Options for [`explain`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Force an interpretation; `None` detects it from the bytes.
    pub protocol: Option<Protocol>,
    /// Skip this many leading bytes first (A-XDR values embedded in a larger buffer).
    pub offset: usize,
}

/// Explains `bytes`. Without a forced protocol the first bytes decide (as the gateway's detector does): `FE`/`68` →
/// DL/T 645, a registration packet → heartbeat, `00 01` + header → wrapper, a DLMS APDU tag → DLMS, otherwise one
/// A-XDR value.
pub fn explain(bytes: &[u8], options: Options) -> Result<Explanation, ExplainError> {
    let bytes = bytes.get(options.offset..).ok_or_else(|| {
        ExplainError::new("too_short", format!("offset {} is past the end of {} bytes", options.offset, bytes.len()))
    })?;
    let protocol = match options.protocol {
        Some(p) => p,
        None => guess(bytes),
    };
    let mut explanation = match protocol {
        Protocol::Dlt645 => dlt645::explain_frame(bytes),
        Protocol::Dlms => dlms::explain_apdu(bytes),
        Protocol::Wrapper => wrapper::explain_packet(bytes),
        Protocol::Axdr => dlms::explain_axdr(bytes),
        Protocol::Heartbeat => wrapper::explain_heartbeat(bytes),
        Protocol::Obis => dlms::explain_obis(bytes),
        Protocol::CosemDateTime => dlms::explain_cosem_date_time(bytes),
    }?;
    if options.offset > 0 {
        explanation.fields.insert("offset".into(), Value::from(options.offset));
    }
    Ok(explanation)
}

/// The interpretation [`explain`] picks when none is forced.
pub fn guess(bytes: &[u8]) -> Protocol {
    match bytes {
        [0xFE, ..] | [0x68, ..] => Protocol::Dlt645,
        _ if crate::registration::RegistrationRule::em114070().matches_prefix(bytes) => Protocol::Heartbeat,
        [0x00, 0x01, _, _, _, _, _, _, ..] => Protocol::Wrapper,
        [tag, ..] if crate::dlms::is_apdu_tag(*tag) => Protocol::Dlms,
        _ => Protocol::Axdr,
    }
}

/// Lower-case hex of `bytes` (the vectors' convention).
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
