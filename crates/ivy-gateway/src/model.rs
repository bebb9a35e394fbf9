//! The gateway's own vocabulary: normalised readings, meter status and events, shared by sessions, the hub and
//! every sink (MQTT, alarms, the live view). Values are normalised once, where they are decoded.

use ivy_protocol::registration::MeterId;
use serde::Serialize;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the `ts` of every payload).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Which protocol a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// DL/T 645-2007.
    Dlt645,
    /// DLMS/COSEM.
    Dlms,
}

impl Source {
    /// `dlt645` / `dlms`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Dlt645 => "dlt645",
            Source::Dlms => "dlms",
        }
    }
}

/// What a reading measures (shared with the protocol crate's catalogues): alarm rules select by this, never by
/// a register name.
pub use ivy_protocol::Quantity;

/// A decoded value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ReadingValue {
    /// A number, already scaled and rounded to the register's resolution.
    Number(f64),
    /// Text (dates, times, identifiers, status bits rendered).
    Text(String),
    /// A structured value (status word bits, DLMS structures).
    Json(Value),
}

impl ReadingValue {
    /// The number, when this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ReadingValue::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        match self {
            ReadingValue::Number(n) => serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null),
            ReadingValue::Text(t) => Value::String(t.clone()),
            ReadingValue::Json(v) => v.clone(),
        }
    }
}

/// One normalised reading of one register of one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The meter.
    pub meter_id: MeterId,
    /// Protocol.
    pub source: Source,
    /// Canonical register key (`VOLTAGE_A`, `VOLTAGE_TOTAL`, ...).
    pub register: String,
    /// `0x02010100` (DL/T 645) or `1-0:12.7.0.255` (DLMS).
    pub data_id: String,
    /// The normalised value.
    pub value: ReadingValue,
    /// The value before scaling (raw integer, hex, ...).
    pub raw_value: Value,
    /// Unit symbol, if any.
    pub unit: Option<String>,
    /// What it measures.
    pub quantity: Quantity,
    /// When it was measured (ms since epoch): the meter's capture time when it gave one, else the arrival time.
    pub ts: u64,
    /// How `ts` was found, and what else is known about the value.
    pub meta: ReadingMeta,
}

/// Who set a reading's `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TsSource {
    /// The gateway, on arrival.
    #[default]
    Gateway,
    /// The meter: the capture time of a DataNotification/EventNotification.
    Meter,
}

/// Provenance of a reading (additive telemetry fields: `receivedAt`, `tsSource`, `tsSkewed`, `scalerKnown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadingMeta {
    /// Arrival time (ms since epoch) when `ts` is the meter's capture time; `None` = `ts`.
    pub received_at: Option<u64>,
    /// Who set `ts`.
    pub ts_source: TsSource,
    /// The capture time is further from the gateway clock than `meters.capture_time_tolerance_secs`.
    pub ts_skewed: bool,
    /// For scaled integers: whether the scaler was known (pushed, read, configured or registered). A value with an
    /// unknown scaler is published raw and never reaches the alarm engine.
    pub scaler_known: Option<bool>,
}

/// A meter's connection state changed.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The meter.
    pub meter_id: MeterId,
    /// Online or not.
    pub online: bool,
    /// Peer IP when online.
    pub ip: Option<String>,
    /// Protocol family when online.
    pub protocol: Option<Source>,
    /// When the connection this status is about was identified (ms): on an online status the new connection, on an
    /// offline status the connection that ended. With `gateway_id`, it orders connections of one meter across
    /// gateways (see `upstream::ownership`). `None` only when unknown (a status restored at start).
    pub connected_at: Option<u64>,
    /// The gateway that holds (online) or held (offline) the connection: `gateway.gateway_id`, when set.
    pub gateway_id: Option<String>,
    /// Why it went offline.
    pub reason: Option<String>,
    /// When (ms).
    pub ts: u64,
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Needs attention.
    Warning,
    /// Needs action.
    Critical,
}

/// A meter event (`meter_connected`, `alarm:overvoltage`, a DLMS event object, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct MeterEvent {
    /// The meter.
    pub meter_id: MeterId,
    /// Event name.
    pub event: String,
    /// Severity, when it has one.
    pub severity: Option<Severity>,
    /// Details.
    pub data: Value,
    /// When (ms).
    pub ts: u64,
}

/// A numeric DL/T 645 reading of meter `m1` (unit tests).
#[cfg(test)]
pub(crate) fn test_reading(register: &str, quantity: Quantity, value: f64, unit: &str, ts: u64) -> Reading {
    Reading {
        meter_id: MeterId::new("m1").unwrap(),
        source: Source::Dlt645,
        register: register.into(),
        data_id: "0x02010100".into(),
        value: ReadingValue::Number(value),
        raw_value: serde_json::json!(value),
        unit: Some(unit.into()),
        quantity,
        ts,
        meta: ReadingMeta::default(),
    }
}
