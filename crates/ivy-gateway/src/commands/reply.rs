//! The command response (SPEC 5): the envelope (`{ts, id, success, result | error, code}`) and the `result` of each
//! meter operation, rendered from its typed answer. The one place a command reply's JSON is decided.

use super::request::IdField;
use crate::error::{ErrorDetails, OpError};
use crate::meters::{OpResult, RelayConfirmation, RelayDetail, RelayState};
use crate::model::{Reading, Source};
use serde_json::{Map, Value, json};

/// The `result` object of a successful operation.
pub(crate) fn result(answer: &OpResult) -> Value {
    match answer {
        OpResult::Reading(r) => {
            let id_key = match r.source {
                Source::Dlms => "obisCode",
                Source::Dlt645 => "dataId",
            };
            let mut m = Map::new();
            m.insert("register".into(), json!(r.register));
            m.insert(id_key.into(), json!(r.data_id));
            m.insert("value".into(), r.value.to_json());
            m.insert("unit".into(), json!(r.unit));
            m.insert("rawValue".into(), r.raw_value.clone());
            Value::Object(m)
        }
        OpResult::Readings(results) => {
            let map: Map<String, Value> = results.iter().map(|(key, r)| (key.clone(), register_entry(r))).collect();
            json!({"readings": map})
        }
        OpResult::RelaySwitched { state, confirmation } => {
            let relay_state = if *state == RelayState::Open { "open" } else { "closed" };
            match confirmation {
                RelayConfirmation::OutputState(output) => json!({"relay_state": relay_state, "output_state": output}),
                RelayConfirmation::Acknowledged(command) => json!({"relay_state": relay_state, "command": command}),
            }
        }
        OpResult::RelayStatus(detail) => {
            let relay_state = if detail.is_open() { "open" } else { "closed" };
            match detail {
                RelayDetail::Dlms { output_state, control_state } => json!({
                    "relay_state": relay_state, "output_state": output_state, "control_state": control_state,
                }),
                RelayDetail::Dlt645 { status_word_3 } => {
                    json!({"relay_state": relay_state, "status_word_3": format!("{status_word_3:04x}")})
                }
            }
        }
        OpResult::Address(address) => json!({"address": address}),
        OpResult::Alive => json!({"alive": true}),
        OpResult::TimeSet(t) if t.broadcast => json!({"time": t.time, "broadcast": true}),
        OpResult::TimeSet(t) => json!({"time": t.time}),
        OpResult::Attribute { obis, data } => {
            let mut described = ivy_protocol::dlms::json::data_json(data);
            let value =
                described.remove("value").unwrap_or_else(|| described.get("value_hex").cloned().unwrap_or(Value::Null));
            json!({"obisCode": obis.to_string(), "value": value, "dataType": data.type_name(), "data": described})
        }
    }
}

/// One register of a `read_all` answer: its value and unit, or its error (with the DL/T 645 error flags when the
/// meter sent them).
fn register_entry(r: &Result<Reading, OpError>) -> Value {
    match r {
        Ok(r) => json!({"value": r.value.to_json(), "unit": r.unit}),
        Err(e) => match &e.details {
            Some(ErrorDetails::Dlt645 { flags, .. }) => json!({"error": e.message, "error_flags": flags}),
            _ => json!({"error": e.message}),
        },
    }
}

/// The fields a refusal's details add to a failure's `result`.
fn details_json(details: &ErrorDetails) -> Map<String, Value> {
    let value = match details {
        ErrorDetails::Dlt645 { code, flags } => json!({"error_flags": flags, "error_code": code}),
        ErrorDetails::DataAccess { code, name } => json!({"data_access_result": code, "data_access_result_name": name}),
        ErrorDetails::Action { code, name } => json!({"action_result": code, "action_result_name": name}),
        ErrorDetails::Malformed { parse_error, apdu } => json!({"parse_error": parse_error, "apdu": apdu}),
    };
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A success response payload.
pub(crate) fn success(id: &Value, id_field: IdField, result: Value, ts: u64) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(ts));
    m.insert("id".into(), id.clone());
    if id_field == IdField::RequestId {
        m.insert("requestId".into(), id.clone());
    }
    m.insert("success".into(), json!(true));
    m.insert("result".into(), result);
    Value::Object(m)
}

/// A failure response payload: `error` (message), `code`, and `result: {error}` for the original's clients.
pub(crate) fn failure(id: Option<&Value>, id_field: IdField, error: &OpError, ts: u64) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(ts));
    m.insert("id".into(), id.cloned().unwrap_or(Value::Null));
    if id_field == IdField::RequestId {
        m.insert("requestId".into(), id.cloned().unwrap_or(Value::Null));
    }
    m.insert("success".into(), json!(false));
    m.insert("error".into(), json!(error.message));
    m.insert("code".into(), json!(error.code.as_str()));
    let mut result = Map::new();
    result.insert("error".into(), json!(error.message));
    if let Some(details) = &error.details {
        result.extend(details_json(details));
    }
    m.insert("result".into(), Value::Object(result));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn response_shapes() {
        let e = OpError::new(ErrorCode::Timeout, "no reply within 15 s");
        let f = failure(Some(&json!("r1")), IdField::RequestId, &e, 5);
        assert_eq!(f["success"], false);
        assert_eq!(f["code"], "timeout");
        assert_eq!(f["result"]["error"], "no reply within 15 s");
        assert_eq!(f["requestId"], "r1");
        let s = success(&json!("r2"), IdField::Id, json!({"address": "1"}), 6);
        assert_eq!(s["success"], true);
        assert!(s.get("requestId").is_none());
    }

    #[test]
    fn result_shapes_per_operation() {
        use crate::meters::TimeSet;
        use crate::model::{Quantity, test_reading};
        let mut r = test_reading("VOLTAGE_A", Quantity::Voltage, 230.1, "V", 1);
        assert_eq!(
            result(&OpResult::Reading(r.clone())),
            json!({"register": "VOLTAGE_A", "dataId": "0x02010100", "value": 230.1, "unit": "V", "rawValue": 230.1})
        );
        r.source = Source::Dlms;
        r.data_id = "1-0:32.7.0.255".into();
        assert_eq!(result(&OpResult::Reading(r.clone()))["obisCode"], "1-0:32.7.0.255");
        let flags = OpError::new(ErrorCode::MeterError, "the meter refused: no data")
            .with_details(ErrorDetails::Dlt645 { code: 2, flags: vec!["no_data"] });
        let dar = OpError::new(ErrorCode::MeterError, "meter error: object-undefined")
            .with_details(ErrorDetails::DataAccess { code: 4, name: "object-undefined".into() });
        let many = OpResult::Readings(vec![
            ("VOLTAGE_A".into(), Ok(r)),
            ("DI_04000101".into(), Err(flags)),
            ("OBIS_1_0_99_1_0_255".into(), Err(dar)),
        ]);
        assert_eq!(
            result(&many),
            json!({"readings": {
                "VOLTAGE_A": {"value": 230.1, "unit": "V"},
                "DI_04000101": {"error": "the meter refused: no data", "error_flags": ["no_data"]},
                "OBIS_1_0_99_1_0_255": {"error": "meter error: object-undefined"},
            }})
        );
        let switched = |confirmation| OpResult::RelaySwitched { state: RelayState::Open, confirmation };
        assert_eq!(
            result(&switched(RelayConfirmation::OutputState(Some(false)))),
            json!({"relay_state": "open", "output_state": false})
        );
        assert_eq!(
            result(&switched(RelayConfirmation::Acknowledged("trip"))),
            json!({"relay_state": "open", "command": "trip"})
        );
        assert_eq!(
            result(&OpResult::RelayStatus(RelayDetail::Dlms { output_state: true, control_state: Some(1) })),
            json!({"relay_state": "closed", "output_state": true, "control_state": 1})
        );
        assert_eq!(
            result(&OpResult::RelayStatus(RelayDetail::Dlt645 { status_word_3: 0x0050 })),
            json!({"relay_state": "open", "status_word_3": "0050"})
        );
        assert_eq!(result(&OpResult::Address("000000001234".into())), json!({"address": "000000001234"}));
        let t = |broadcast| OpResult::TimeSet(TimeSet { time: Some("2026-11-30T10:00:00".into()), broadcast });
        assert_eq!(result(&t(true)), json!({"time": "2026-11-30T10:00:00", "broadcast": true}));
        assert_eq!(result(&t(false)), json!({"time": "2026-11-30T10:00:00"}));
        let attribute = OpResult::Attribute {
            obis: ivy_protocol::dlms::Obis::new(0, 0, 42, 0, 0, 255),
            data: ivy_protocol::dlms::Data::OctetString(b"IVY".to_vec()),
        };
        let a = result(&attribute);
        assert_eq!(a["obisCode"], "0-0:42.0.0.255");
        assert_eq!(a["dataType"], "octet-string");
        assert!(a["data"].is_object() && a["data"].get("value").is_none(), "{a}");
    }
}
