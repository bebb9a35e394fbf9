//! Parsing and validating command requests (SPEC 5) into one [`Command`] whose variants carry their parameters.
//! Pure: no IO.
//!
//! Accepted shapes: `{id, method, params}` (ours), `{requestId, command, ...}` (the original's, with parameters at
//! the top level), and mixtures. Method names are matched case-insensitively, camelCase or snake_case, and the
//! original's `read`/`readMultiple`/`readGroup` are aliases.

use crate::error::{ErrorCode, OpError};
use crate::meters::{RelayMode, RelayState};
use ivy_protocol::dlms::Obis;
use ivy_protocol::dlt645::Di;
use serde_json::{Map, Value, json};

/// Command methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Method {
    /// Read one register.
    ReadRegister,
    /// Read a list of registers (or a group).
    ReadAll,
    /// Read a group.
    ReadGroup,
    /// Open/close the relay.
    RelayControl,
    /// Read the relay state.
    ReadRelayState,
    /// Read the meter address.
    ReadAddress,
    /// Set the clock.
    SyncTime,
    /// Read any DLMS attribute.
    ReadObis,
}

impl Method {
    /// Every method, for documentation and the dashboard.
    pub(crate) const ALL: [Method; 8] = [
        Method::ReadRegister,
        Method::ReadAll,
        Method::ReadGroup,
        Method::RelayControl,
        Method::ReadRelayState,
        Method::ReadAddress,
        Method::SyncTime,
        Method::ReadObis,
    ];

    /// The canonical name.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Method::ReadRegister => "read_register",
            Method::ReadAll => "read_all",
            Method::ReadGroup => "read_group",
            Method::RelayControl => "relay_control",
            Method::ReadRelayState => "read_relay_state",
            Method::ReadAddress => "read_address",
            Method::SyncTime => "sync_time",
            Method::ReadObis => "read_obis",
        }
    }

    /// Parses a method name (any case, camelCase or snake_case, original aliases).
    pub(crate) fn parse(name: &str) -> Option<Method> {
        let snake = to_snake(name);
        Some(match snake.as_str() {
            "read_register" | "read" => Method::ReadRegister,
            "read_all" | "read_multiple" | "read_registers" => Method::ReadAll,
            "read_group" => Method::ReadGroup,
            "relay_control" | "relay" => Method::RelayControl,
            "read_relay_state" | "relay_state" => Method::ReadRelayState,
            "read_address" => Method::ReadAddress,
            "sync_time" | "time_sync" | "set_time" => Method::SyncTime,
            "read_obis" => Method::ReadObis,
            _ => return None,
        })
    }
}

fn to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.trim().chars() {
        if c == '-' || c == ' ' {
            out.push('_');
            prev_lower = false;
        } else if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// Which field name carried the request id (echoed back for the original's clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdField {
    /// `id`.
    Id,
    /// `requestId`.
    RequestId,
}

/// A register named in the parameters, not yet resolved against a catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegisterName {
    /// Key or alias.
    Key(String),
    /// DL/T 645 DI given as hex.
    DataId(Di),
    /// OBIS code with optional class and attribute.
    Obis {
        /// `A-B:C.D.E.F` text as given.
        obis: String,
        /// Class id.
        class_id: Option<u16>,
        /// Attribute.
        attribute: Option<u8>,
    },
}

/// Which registers a `read_all` / `read_group` reads: an explicit list, a group, or both.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegisterSelection {
    /// Explicit registers.
    pub registers: Vec<RegisterName>,
    /// Group name.
    pub group: Option<String>,
}

/// A validated command: one variant per method, carrying its parameters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// `read_register`.
    ReadRegister(RegisterName),
    /// `read_all` (no list and no group reads the group `all`).
    ReadAll(RegisterSelection),
    /// `read_group`.
    ReadGroup(RegisterSelection),
    /// `relay_control`.
    RelayControl {
        /// Target state.
        state: RelayState,
        /// Close mode.
        mode: RelayMode,
    },
    /// `read_relay_state`.
    ReadRelayState,
    /// `read_address`.
    ReadAddress,
    /// `sync_time`: ms since epoch (UTC); `None` = now.
    SyncTime(Option<i64>),
    /// `read_obis`.
    ReadObis {
        /// The object.
        obis: Obis,
        /// Class.
        class_id: u16,
        /// Attribute.
        attribute: u8,
    },
}

impl Command {
    /// The method this command is.
    pub(crate) fn method(&self) -> Method {
        match self {
            Command::ReadRegister(_) => Method::ReadRegister,
            Command::ReadAll(_) => Method::ReadAll,
            Command::ReadGroup(_) => Method::ReadGroup,
            Command::RelayControl { .. } => Method::RelayControl,
            Command::ReadRelayState => Method::ReadRelayState,
            Command::ReadAddress => Method::ReadAddress,
            Command::SyncTime(_) => Method::SyncTime,
            Command::ReadObis { .. } => Method::ReadObis,
        }
    }
}

/// A parsed, validated command request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandRequest {
    /// Request id as text.
    pub id: String,
    /// The id as it was sent (string or number), echoed back.
    pub id_value: Value,
    /// Field that carried it.
    pub id_field: IdField,
    /// The command with its parameters.
    pub command: Command,
}

/// A request that failed validation: the id when it could be recovered, and the error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejected {
    /// Recovered id (value and field).
    pub id: Option<(Value, IdField)>,
    /// Why.
    pub error: OpError,
}

/// Largest command payload accepted.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

fn err(code: ErrorCode, message: impl Into<String>) -> OpError {
    OpError::new(code, message)
}

/// Parses and validates a request payload.
pub(crate) fn parse(payload: &[u8]) -> Result<CommandRequest, Rejected> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Rejected { id: None, error: err(ErrorCode::InvalidJson, "payload larger than 64 KiB") });
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return Err(Rejected {
                id: recover_id(payload),
                error: err(ErrorCode::InvalidJson, format!("payload is not valid JSON: {e}")),
            });
        }
    };
    let Value::Object(obj) = value else {
        return Err(Rejected { id: None, error: err(ErrorCode::InvalidJson, "payload must be a JSON object") });
    };
    let id = extract_id(&obj);
    let reject = |error: OpError| Rejected { id: id.clone(), error };
    let Some((id_value, id_field)) = id.clone() else {
        return Err(reject(err(ErrorCode::MissingId, "missing request id (\"id\" or \"requestId\")")));
    };
    let id_text = match &id_value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let method_value = obj.get("method").or_else(|| obj.get("command"));
    let method_name = match method_value {
        None | Some(Value::Null) => return Err(reject(err(ErrorCode::MissingMethod, "missing \"method\""))),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(reject(err(ErrorCode::MissingMethod, "\"method\" must be a non-empty string"))),
    };
    let Some(method) = Method::parse(&method_name) else {
        return Err(reject(err(ErrorCode::UnknownMethod, format!("unknown method '{method_name}'"))));
    };
    // Parameters: the `params` object, else the top-level fields (the original's shape).
    let params_obj = match obj.get("params") {
        Some(Value::Object(p)) => p.clone(),
        Some(Value::Null) | None => obj.clone(),
        Some(_) => return Err(reject(err(ErrorCode::InvalidParams, "\"params\" must be an object"))),
    };
    let command = parse_command(method, &params_obj).map_err(reject)?;
    Ok(CommandRequest { id: id_text, id_value, id_field, command })
}

fn extract_id(obj: &Map<String, Value>) -> Option<(Value, IdField)> {
    let valid = |v: &Value| match v {
        Value::String(s) => !s.is_empty() && s.len() <= 256,
        Value::Number(_) => true,
        _ => false,
    };
    if let Some(v) = obj.get("id").filter(|v| valid(v)) {
        return Some((v.clone(), IdField::Id));
    }
    obj.get("requestId").filter(|v| valid(v)).map(|v| (v.clone(), IdField::RequestId))
}

/// Finds `"id": "..."` / `"requestId": 12` in text that is not valid JSON, so the client still gets an answer.
fn recover_id(payload: &[u8]) -> Option<(Value, IdField)> {
    let text = std::str::from_utf8(payload).ok()?;
    for (key, field) in [("\"id\"", IdField::Id), ("\"requestId\"", IdField::RequestId)] {
        let Some(pos) = text.find(key) else { continue };
        let rest = text.get(pos + key.len()..)?.trim_start().strip_prefix(':')?.trim_start();
        if let Some(s) = rest.strip_prefix('"') {
            let end = s.find('"')?;
            let id = s.get(..end)?;
            if !id.is_empty() && id.len() <= 256 && !id.contains('\\') {
                return Some((Value::String(id.to_owned()), field));
            }
        } else {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = digits.parse::<u64>() {
                return Some((json!(n), field));
            }
        }
    }
    None
}

fn invalid(message: impl Into<String>) -> OpError {
    err(ErrorCode::InvalidParams, message)
}

fn str_param<'a>(p: &'a Map<String, Value>, names: &[&str]) -> Result<Option<&'a str>, OpError> {
    for name in names {
        match p.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if !s.trim().is_empty() => return Ok(Some(s.trim())),
            Some(_) => return Err(invalid(format!("\"{name}\" must be a non-empty string"))),
        }
    }
    Ok(None)
}

fn int_param(p: &Map<String, Value>, names: &[&str], max: u64) -> Result<Option<u64>, OpError> {
    for name in names {
        match p.get(*name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                let n = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => parse_int(s),
                    _ => None,
                };
                return match n {
                    Some(n) if n <= max => Ok(Some(n)),
                    _ => Err(invalid(format!("\"{name}\" must be an integer 0..={max}"))),
                };
            }
        }
    }
    Ok(None)
}

fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn register_name(p: &Map<String, Value>) -> Result<Option<RegisterName>, OpError> {
    if let Some(di) = str_param(p, &["dataId", "data_id", "di"])? {
        let di = di.parse::<Di>().map_err(|_| invalid(format!("dataId '{di}' must be 8 hex digits")))?;
        return Ok(Some(RegisterName::DataId(di)));
    }
    if let Some(obis) = str_param(p, &["obis", "obisCode"])? {
        let class_id = int_param(p, &["classId", "class_id"], u64::from(u16::MAX))?.map(|n| n as u16);
        let attribute = int_param(p, &["attribute", "attr"], 255)?.map(|n| n as u8);
        return Ok(Some(RegisterName::Obis { obis: obis.to_owned(), class_id, attribute }));
    }
    Ok(str_param(p, &["register", "key", "name"])?.map(|k| RegisterName::Key(k.to_owned())))
}

fn parse_command(method: Method, p: &Map<String, Value>) -> Result<Command, OpError> {
    match method {
        Method::ReadRegister => register_name(p)?
            .map(Command::ReadRegister)
            .ok_or_else(|| invalid("read_register needs \"register\", \"dataId\" or \"obis\"")),
        Method::ReadAll | Method::ReadGroup => {
            let group = str_param(p, &["group"])?.map(str::to_owned);
            let registers = match p.get("registers") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => {
                    if items.len() > 256 {
                        return Err(invalid("at most 256 registers per command"));
                    }
                    items
                        .iter()
                        .map(|item| match item {
                            Value::String(s) => {
                                let s = s.trim();
                                Ok(match s.parse::<Di>() {
                                    Ok(di) if s.chars().all(|c| c.is_ascii_hexdigit()) => RegisterName::DataId(di),
                                    _ if s.contains(':') && s.contains('-') => {
                                        RegisterName::Obis { obis: s.to_owned(), class_id: None, attribute: None }
                                    }
                                    _ => RegisterName::Key(s.to_owned()),
                                })
                            }
                            Value::Object(o) => register_name(o)?
                                .ok_or_else(|| invalid("each register object needs register, dataId or obis")),
                            _ => Err(invalid("\"registers\" must hold strings or objects")),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                Some(_) => return Err(invalid("\"registers\" must be a list")),
            };
            match (method, registers.is_empty(), group) {
                (Method::ReadGroup, _, None) => Err(invalid("read_group needs \"group\"")),
                (Method::ReadGroup, _, group) => Ok(Command::ReadGroup(RegisterSelection { registers, group })),
                (_, true, None) => Ok(Command::ReadAll(RegisterSelection { registers, group: Some("all".into()) })),
                (_, _, group) => Ok(Command::ReadAll(RegisterSelection { registers, group })),
            }
        }
        Method::RelayControl => {
            let state = match str_param(p, &["state", "action"])?.map(str::to_ascii_lowercase).as_deref() {
                Some("open" | "off" | "trip" | "disconnect") => RelayState::Open,
                Some("close" | "on" | "connect" | "reconnect") => RelayState::Close,
                Some(other) => return Err(invalid(format!("state '{other}' must be \"open\" or \"close\""))),
                None => return Err(invalid("relay_control needs \"state\": \"open\" or \"close\"")),
            };
            let mode = match str_param(p, &["mode"])?.map(str::to_ascii_lowercase).as_deref() {
                None | Some("direct") => RelayMode::Direct,
                Some("allow" | "allowed" | "permit") => RelayMode::Allow,
                Some(other) => return Err(invalid(format!("mode '{other}' must be \"direct\" or \"allow\""))),
            };
            Ok(Command::RelayControl { state, mode })
        }
        Method::ReadRelayState => Ok(Command::ReadRelayState),
        Method::ReadAddress => Ok(Command::ReadAddress),
        Method::SyncTime => match str_param(p, &["time"])? {
            None => Ok(Command::SyncTime(None)),
            Some(t) => {
                let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| invalid(format!("time '{t}' is not an ISO-8601/RFC 3339 date-time: {e}")))?;
                Ok(Command::SyncTime(Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64)))
            }
        },
        Method::ReadObis => {
            let text = str_param(p, &["obis", "obisCode"])?.ok_or_else(|| invalid("read_obis needs \"obis\""))?;
            let class_id = int_param(p, &["classId", "class_id"], u64::from(u16::MAX))?
                .ok_or_else(|| invalid("read_obis needs \"classId\""))? as u16;
            let attribute = int_param(p, &["attribute", "attr"], 255)?.unwrap_or(2) as u8;
            let obis = text.parse::<Obis>().map_err(|e| invalid(e.to_string()))?;
            Ok(Command::ReadObis { obis, class_id, attribute })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(payload: &str) -> ErrorCode {
        parse(payload.as_bytes()).unwrap_err().error.code
    }

    #[test]
    fn both_field_styles_are_accepted() {
        let ours = parse(br#"{"id":"r1","method":"read_register","params":{"register":"voltage_a"}}"#).unwrap();
        assert_eq!(ours.command.method(), Method::ReadRegister);
        assert_eq!(ours.command, Command::ReadRegister(RegisterName::Key("voltage_a".into())));
        let original = parse(br#"{"requestId":"req-1","command":"read","dataId":"02010100"}"#).unwrap();
        assert_eq!(original.id_field, IdField::RequestId);
        assert_eq!(original.command, Command::ReadRegister(RegisterName::DataId(Di::new(0x0201_0100))));
        let grouped = parse(br#"{"requestId":7,"command":"readGroup","group":"energy"}"#).unwrap();
        assert_eq!(grouped.id, "7");
        assert_eq!(grouped.command.method(), Method::ReadGroup);
        let multi =
            parse(br#"{"id":"x","method":"readMultiple","registers":["VOLTAGE_A","02020100","1-0:12.7.0.255"]}"#)
                .unwrap();
        assert!(
            matches!(multi.command, Command::ReadAll(RegisterSelection { ref registers, .. }) if registers.len() == 3)
        );
    }

    #[test]
    fn validation_codes() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"method":"read_address"}"#), ErrorCode::MissingId);
        assert_eq!(code(r#"{"id":"a"}"#), ErrorCode::MissingMethod);
        assert_eq!(code(r#"{"id":"a","method":"explode"}"#), ErrorCode::UnknownMethod);
        assert_eq!(
            code(r#"{"id":"a","method":"relay_control","params":{"state":"sideways"}}"#),
            ErrorCode::InvalidParams
        );
        assert_eq!(code(r#"{"id":"a","method":"read_register","params":{}}"#), ErrorCode::InvalidParams);
        assert_eq!(code(r#"{"id":"a","method":"read_register","params":{"dataId":"12"}}"#), ErrorCode::InvalidParams);
        assert_eq!(code(r#"{"id":"a","method":"sync_time","params":{"time":"yesterday"}}"#), ErrorCode::InvalidParams);
        assert_eq!(
            code(r#"{"id":"a","method":"read_obis","params":{"obis":"1-0:1.8.0.255"}}"#),
            ErrorCode::InvalidParams
        );
    }

    #[test]
    fn id_is_recovered_from_broken_json() {
        let r = parse(br#"{"id": "abc", "method": "read_register", "params": {"#).unwrap_err();
        assert_eq!(r.id, Some((json!("abc"), IdField::Id)));
        let r = parse(br#"{"requestId": 42, "command": "#).unwrap_err();
        assert_eq!(r.id, Some((json!(42), IdField::RequestId)));
        assert_eq!(parse(b"garbage").unwrap_err().id, None);
    }

    #[test]
    fn method_names() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert_eq!(Method::parse("readRegister"), Some(Method::ReadRegister));
        assert_eq!(Method::parse("RELAY_CONTROL"), Some(Method::RelayControl));
        assert_eq!(Method::parse("syncTime"), Some(Method::SyncTime));
    }
}
