//! Explains DL/T 645 frames.

use super::{ExplainError, Explanation, hex_lower};
use crate::dlt645::control::function;
use crate::dlt645::registers::{Catalogue, DecodedValue};
use crate::dlt645::relay::{RelayCommand, parse_relay_body};
use crate::dlt645::{Di, Frame, FrameError, MeterDateTime, Reply};
use serde_json::{Map, Value, json};

fn error(e: FrameError) -> ExplainError {
    let mut err = ExplainError::new(e.kind(), e.to_string()).with("protocol", "dlt645");
    match e {
        FrameError::ChecksumMismatch { expected, actual } => {
            err = err.with("checksum_expected", expected).with("checksum_actual", actual);
        }
        FrameError::LengthMismatch { declared, needed, available } => {
            err = err.with("length", declared).with("needed", needed).with("available", available);
        }
        FrameError::DataTooLong(l) => err = err.with("length", l),
        FrameError::TooShort(n) => err = err.with("available", n),
        FrameError::BadStartDelimiter(b) | FrameError::BadSecondStartDelimiter(b) | FrameError::BadEndDelimiter(b) => {
            err = err.with("found", b)
        }
    }
    err
}

/// Adds the decoded value of `di` to `m`; returns words for the summary.
pub(crate) fn value_fields(m: &mut Map<String, Value>, catalogue: &Catalogue, di: Di, value: &[u8]) -> String {
    m.insert("value_bytes_le_hex".into(), hex_lower(value).into());
    let def = catalogue.by_di(di);
    if let Some(def) = def {
        m.insert("register".into(), def.key.clone().into());
        m.insert("unit".into(), def.unit.clone().into());
        m.insert("format".into(), def.format.display().into());
        m.insert("signed".into(), def.format.signed().into());
        m.insert("quantity".into(), def.quantity.as_str().into());
    }
    let name = def.map(|d| d.key.clone()).unwrap_or_else(|| format!("DI {}", di.hex()));
    let unit = def.map(|d| d.unit.as_str()).unwrap_or("");
    match catalogue.decode(di, value) {
        Ok(v) => {
            match &v {
                DecodedValue::Number { value, raw, .. } => {
                    m.insert("value".into(), json!(value));
                    m.insert("raw_value".into(), json!(raw));
                }
                DecodedValue::Date { year, month, day, weekday } => {
                    m.insert("year".into(), json!(year));
                    m.insert("month".into(), json!(month));
                    m.insert("day".into(), json!(day));
                    m.insert("weekday".into(), json!(weekday));
                    m.insert("value".into(), v.to_text().into());
                }
                DecodedValue::Time { hour, minute, second } => {
                    m.insert("hour".into(), json!(hour));
                    m.insert("minute".into(), json!(minute));
                    m.insert("second".into(), json!(second));
                    m.insert("value".into(), v.to_text().into());
                }
                DecodedValue::Status(word) => {
                    m.insert("value".into(), json!(word));
                    let bits: Vec<u8> = (0..16).filter(|b| word & (1 << b) != 0).collect();
                    m.insert("bits_set".into(), json!(bits));
                    if di == crate::dlt645::registers::RELAY_STATUS_DI {
                        let open = word & crate::dlt645::registers::RELAY_OPEN_BIT != 0;
                        m.insert("relay_state".into(), if open { "open" } else { "closed" }.into());
                    }
                }
                DecodedValue::Raw { number, hex } => {
                    m.insert("value".into(), number.map(Value::from).unwrap_or_else(|| hex.clone().into()));
                    m.insert("raw".into(), true.into());
                }
                DecodedValue::DateTime { .. } | DecodedValue::Digits(_) => {
                    m.insert("value".into(), v.to_text().into());
                }
            }
            format!("{name} = {} {unit}", v.to_text()).trim_end().to_owned()
        }
        Err(e) => {
            m.insert("value_error".into(), e.kind().into());
            m.insert("value_error_message".into(), e.to_string().into());
            format!("{name}: {e}")
        }
    }
}

/// Explains one frame (`FE` preamble allowed).
pub fn explain_frame(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let decoded = Frame::decode(bytes).map_err(error)?;
    let frame = &decoded.frame;
    let c = frame.control;
    let data = frame.data();
    let mut m = Map::new();
    m.insert("protocol".into(), "dlt645".into());
    m.insert("address".into(), frame.address.to_string().into());
    m.insert("address_wire_hex".into(), hex_lower(&frame.address.to_wire()).into());
    m.insert("control".into(), c.0.into());
    m.insert("direction_from_slave".into(), c.from_meter().into());
    m.insert("abnormal_response".into(), c.abnormal().into());
    m.insert("follow_up".into(), c.follow_up().into());
    m.insert("function".into(), c.function().into());
    m.insert("function_name".into(), c.function_name().into());
    m.insert("length".into(), data.len().into());
    m.insert("data_hex".into(), hex_lower(data).into());
    m.insert("checksum".into(), frame.checksum().into());
    m.insert("preamble_fe_count".into(), decoded.preamble.into());
    if let Some(di) = frame.data_id() {
        m.insert("data_id".into(), di.hex().into());
        m.insert("data_id_wire_hex".into(), hex_lower(&di.to_wire()).into());
        if let Some(def) = Catalogue::builtin().by_di(di) {
            m.insert("register".into(), def.key.clone().into());
        }
    }
    if decoded.consumed < bytes.len() {
        m.insert("trailing_hex".into(), hex_lower(bytes.get(decoded.consumed..).unwrap_or_default()).into());
    }
    let who = if c.from_meter() { "from" } else { "to" };
    let mut summary =
        format!("DL/T 645 {} {} {}", c.function_name(), if c.from_meter() { "reply" } else { "request" }, who);
    summary.push(' ');
    summary.push_str(&frame.address.to_string());
    match frame.reply() {
        Reply::Data { di, value, .. } => {
            let words = value_fields(&mut m, Catalogue::builtin(), di, value);
            summary.push_str(": ");
            summary.push_str(&words);
        }
        Reply::Address(a) => {
            m.insert("value".into(), a.to_string().into());
            summary.push_str(&format!(": address {a}"));
        }
        Reply::Error { flags, .. } => {
            m.insert("error_code".into(), flags.0.into());
            m.insert("error_flags".into(), json!(flags.names()));
            summary.push_str(&format!(": error ({flags})"));
        }
        Reply::Ack(_) => summary.push_str(": accepted"),
        Reply::Other => explain_request(frame, &mut m, &mut summary),
    }
    Ok(Explanation { summary, fields: m })
}

/// Fields of requests (master → meter).
fn explain_request(frame: &Frame, m: &mut Map<String, Value>, summary: &mut String) {
    let data = frame.data();
    match frame.control.function() {
        function::READ | function::READ_FOLLOW_UP => {
            if let Some(di) = frame.data_id() {
                let name =
                    Catalogue::builtin().by_di(di).map(|d| d.key.clone()).unwrap_or_else(|| format!("DI {}", di.hex()));
                summary.push_str(&format!(": read {name}"));
            }
        }
        function::BROADCAST_TIME => {
            m.insert("data_plain_order".into(), "ss mm hh DD MM YY".into());
            match MeterDateTime::from_bcd_ssmmhhddmmyy(data) {
                Ok(t) => {
                    m.insert("datetime".into(), t.to_iso().into());
                    summary.push_str(&format!(": set clocks to {}", t.to_iso()));
                }
                Err(_) => {
                    m.insert("datetime_error".into(), "invalid_date".into());
                }
            }
        }
        function::WRITE => {
            if let [_, _, _, _, pa, p0, p1, p2, c0, c1, c2, c3, value @ ..] = data {
                m.insert("password_level".into(), (*pa).into());
                m.insert("password".into(), format!("{p2:02x}{p1:02x}{p0:02x}").into());
                m.insert("operator_code".into(), format!("{c3:02x}{c2:02x}{c1:02x}{c0:02x}").into());
                let most_significant_first: Vec<u8> = value.iter().rev().copied().collect();
                m.insert("value".into(), hex_lower(&most_significant_first).into());
                summary.push_str(": write");
            }
        }
        function::RELAY_CONTROL => {
            if let Some(body) = parse_relay_body(data).filter(|_| data.len() == 16) {
                m.insert("password_level".into(), body.password_level.into());
                m.insert("password".into(), body.password.into());
                m.insert("operator_code".into(), body.operator_code.into());
                m.insert("n1".into(), body.n1.into());
                let n1_name = RelayCommand::from_code(body.n1).map(|c| c.name()).unwrap_or("unknown");
                m.insert("n1_name".into(), n1_name.into());
                m.insert("n2".into(), body.n2.into());
                if let Some(t) = body.valid_until {
                    m.insert("valid_until".into(), t.to_iso().into());
                }
                m.insert("layout".into(), "PA P0 P1 P2 | C0 C1 C2 C3 | N1 | N2 | ss mm hh DD MM YY (all +0x33)".into());
                summary.push_str(&format!(": {n1_name}"));
            } else {
                if let Some(first) = data.first() {
                    m.insert("relay_command".into(), (*first).into());
                }
                m.insert(
                    "body_error".into(),
                    format!("non-standard relay control body of {} bytes (DL/T 645-2007 requires 16)", data.len())
                        .into(),
                );
                summary.push_str(": non-standard relay control body");
            }
        }
        _ => {}
    }
}
