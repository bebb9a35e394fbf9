//! DLMS values as JSON: the form readings carry for structured values and big integers, and the `explain` tool
//! shows. A data-model feature (`json`), not part of the debug tooling, so the gateway's readings do not depend on
//! `explain`.

use crate::dlms::axdr::Data;
use crate::dlms::datetime::{CosemDate, CosemDateTime, CosemTime};
use crate::dlms::obis::Obis;
use crate::dlms::units::unit_symbol;
use serde_json::{Map, Value, json};

/// An integer as JSON: a number when exactly representable in a double (|v| ≤ 2^53), else a string.
pub fn json_int(v: i128) -> Value {
    const EXACT: i128 = 1 << 53;
    if (-EXACT..=EXACT).contains(&v) { json!(v as i64) } else { Value::String(v.to_string()) }
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

/// A COSEM date-time as the vectors' `date_time` object.
pub fn date_time_json(t: &CosemDateTime) -> Value {
    json!({
        "year": opt(t.year), "month": opt(t.month), "day": opt(t.day), "day_of_week": opt(t.day_of_week),
        "hour": opt(t.hour), "minute": opt(t.minute), "second": opt(t.second), "hundredths": opt(t.hundredths),
        "deviation": opt(t.deviation), "clock_status": t.clock_status,
    })
}

/// Whether 12 bytes look like a COSEM date-time (every field in range or "not specified").
fn plausible_date_time(t: &CosemDateTime) -> bool {
    let ok = |v: Option<u8>, range: std::ops::RangeInclusive<u8>, specials: &[u8]| {
        v.is_none_or(|v| range.contains(&v) || specials.contains(&v))
    };
    ok(t.month, 1..=12, &[0xFD, 0xFE])
        && ok(t.day, 1..=31, &[0xFD, 0xFE])
        && ok(t.day_of_week, 1..=7, &[])
        && ok(t.hour, 0..=23, &[])
        && ok(t.minute, 0..=59, &[])
        && ok(t.second, 0..=59, &[])
        && ok(t.hundredths, 0..=99, &[])
        && t.deviation.is_none_or(|d| (-720..=720).contains(&d))
}

/// A Data value as `{data_type, value | value_hex, ...}`.
pub fn data_json(d: &Data) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("data_type".into(), d.type_name().into());
    match d {
        Data::Null => {
            m.insert("value".into(), Value::Null);
        }
        Data::Array(items) | Data::Structure(items) => {
            m.insert("value".into(), Value::Array(items.iter().map(|i| Value::Object(data_json(i))).collect()));
            if let Some((scaler, unit)) = d.as_scaler_unit() {
                m.insert("scaler".into(), scaler.into());
                m.insert("unit".into(), unit.into());
                m.insert("unit_name".into(), opt(unit_symbol(unit)));
            }
        }
        Data::Boolean(b) => {
            m.insert("value".into(), (*b).into());
        }
        Data::BitString { bits, bytes } => {
            m.insert("bit_length".into(), (*bits).into());
            m.insert("value_hex".into(), hex::encode(bytes).into());
            let text: String = (0..*bits)
                .map(|i| if bytes.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0) { '1' } else { '0' })
                .collect();
            m.insert("bits".into(), text.into());
        }
        Data::OctetString(b) => {
            m.insert("value_hex".into(), hex::encode(b).into());
            m.insert("length".into(), b.len().into());
            if let Some(text) = d.as_text().filter(|t| !t.is_empty()) {
                m.insert("ascii".into(), text.into());
            }
            if let Some(obis) = Obis::from_slice(b) {
                m.insert("obis".into(), obis.to_string().into());
            }
            if let Some(t) = CosemDateTime::from_slice(b).filter(plausible_date_time) {
                m.insert("date_time".into(), date_time_json(&t));
                if let Some(iso) = t.iso_local() {
                    m.insert("iso_local".into(), iso.into());
                }
            }
        }
        Data::VisibleString(b) => {
            m.insert("value".into(), String::from_utf8_lossy(b).into_owned().into());
        }
        Data::Utf8String(s) => {
            m.insert("value".into(), s.clone().into());
        }
        Data::Bcd(b) => {
            m.insert("value_hex".into(), hex::encode([*b]).into());
        }
        Data::Float32(v) => {
            m.insert("value".into(), json!(f64::from(*v)));
        }
        Data::Float64(v) => {
            m.insert("value".into(), json!(v));
        }
        Data::CompactArray { description, contents } => {
            m.insert("type_description_hex".into(), hex::encode(description).into());
            m.insert("contents_hex".into(), hex::encode(contents).into());
        }
        Data::DateTime(b) => {
            let t = CosemDateTime::from_bytes(b);
            m.insert("date_time".into(), date_time_json(&t));
            if let Some(iso) = t.iso() {
                m.insert("value".into(), iso.into());
            }
        }
        Data::Date(b) => {
            let t = CosemDate::from_bytes(b);
            m.insert("year".into(), opt(t.year));
            m.insert("month".into(), opt(t.month));
            m.insert("day".into(), opt(t.day));
            m.insert("day_of_week".into(), opt(t.day_of_week));
        }
        Data::Time(b) => {
            let t = CosemTime::from_bytes(b);
            m.insert("hour".into(), opt(t.hour));
            m.insert("minute".into(), opt(t.minute));
            m.insert("second".into(), opt(t.second));
            m.insert("hundredths".into(), opt(t.hundredths));
        }
        other => {
            m.insert("value".into(), other.as_i128().map(json_int).unwrap_or(Value::Null));
        }
    }
    m
}
