//! Explains DLMS APDUs, A-XDR values, OBIS codes and COSEM date-times.

use super::{ExplainError, Explanation, hex_lower};
use crate::dlms::apdu::{
    ActionResponse, Apdu, ApduError, ApduErrorKind, AttributeDescriptor, GetDataResult, GetRequest, GetResponse,
    InvokeIdAndPriority, SetRequest, SetResponse, action_result_name, disconnect_method_name, release_reason_name,
};
use crate::dlms::axdr::{AxdrError, Data};
use crate::dlms::datetime::CosemDateTime;
use crate::dlms::obis::Obis;
use crate::dlms::registry::ObisRegistry;
use serde_json::{Map, Value, json};

pub use crate::dlms::json::{data_json, date_time_json, json_int};

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

fn iip_fields(m: &mut Map<String, Value>, iip: InvokeIdAndPriority) {
    m.insert("invoke_id_and_priority".into(), iip.0.into());
    m.insert("invoke_id".into(), iip.invoke_id().into());
    m.insert("priority_high".into(), iip.priority_high().into());
    m.insert("service_class_confirmed".into(), iip.confirmed().into());
}

fn attribute_fields(m: &mut Map<String, Value>, a: &AttributeDescriptor) {
    m.insert("class_id".into(), a.class_id.into());
    m.insert("obis".into(), a.obis.to_string().into());
    m.insert("attribute".into(), a.attribute.into());
    if let Some(def) = ObisRegistry::builtin().get(&a.obis) {
        m.insert("register".into(), def.key.clone().into());
    }
}

fn result_fields(m: &mut Map<String, Value>, r: &GetDataResult) {
    match r {
        Ok(d) => {
            m.insert("result".into(), "data".into());
            m.extend(data_json(d));
        }
        Err(dar) => {
            m.insert("result".into(), "data-access-result".into());
            m.insert("data_access_result".into(), dar.0.into());
            m.insert("data_access_result_name".into(), dar.name().into());
        }
    }
}

fn result_json(r: &GetDataResult) -> Value {
    let mut m = Map::new();
    result_fields(&mut m, r);
    Value::Object(m)
}

fn apdu_error(e: &ApduError) -> ExplainError {
    let mut err = ExplainError::new(e.kind_name(), e.to_string())
        .with("protocol", "dlms")
        .with("apdu", e.apdu)
        .with("tag", e.tag);
    if let Some(n) = e.declared_length {
        err = err.with("declared_length", n);
    }
    if let Some(n) = e.actual_body_length {
        err = err.with("actual_body_length", n);
    }
    if let Some(i) = e.invoke_id_and_priority {
        err = err.with("invoke_id_and_priority", i);
    }
    if let Some(r) = e.result {
        err = err.with("action_result", r);
    }
    if let ApduErrorKind::Data(AxdrError::UnknownDataType(t)) = e.kind {
        err = err.with("data_tag", t);
    }
    err
}

/// Fields of a parsed APDU (shared with the gateway's logs and the simulator).
pub fn apdu_fields(apdu: &Apdu) -> (Map<String, Value>, String) {
    let mut m = Map::new();
    m.insert("protocol".into(), "dlms".into());
    m.insert("apdu".into(), apdu.name().into());
    m.insert("tag".into(), apdu.tag().into());
    let summary = match apdu {
        Apdu::Aarq(a) => {
            m.insert("application_context".into(), a.application_context.name().into());
            m.insert("application_context_oid_hex".into(), hex_lower(&a.application_context.oid()).into());
            m.insert("dlms_version".into(), a.dlms_version.into());
            m.insert("conformance_hex".into(), hex_lower(&a.conformance.bytes()).into());
            m.insert("conformance_bits".into(), json!(a.conformance.names()));
            m.insert("client_max_receive_pdu_size".into(), a.max_pdu.into());
            if let Some(mech) = &a.mechanism {
                m.insert("mechanism_name_hex".into(), hex_lower(mech).into());
            }
            if let Some(pw) = &a.calling_authentication {
                // Never print secrets.
                m.insert("authentication_value_length".into(), pw.len().into());
            }
            format!("AARQ {} proposing DLMS v{}, max PDU {}", a.application_context.name(), a.dlms_version, a.max_pdu)
        }
        Apdu::Aare(a) => {
            m.insert("application_context".into(), a.application_context.name().into());
            m.insert("result".into(), a.result.into());
            m.insert("result_name".into(), a.result_name().into());
            m.insert("accepted".into(), a.accepted_ok().into());
            m.insert(
                "result_source_diagnostic".into(),
                json!({"source": a.diagnostic.source_name(), "value": a.diagnostic.value, "name": a.diagnostic.name()}),
            );
            if let Some(i) = &a.initiate {
                m.insert("negotiated_dlms_version".into(), i.dlms_version.into());
                m.insert("negotiated_conformance_hex".into(), hex_lower(&i.conformance.bytes()).into());
                m.insert("negotiated_conformance_bits".into(), json!(i.conformance.names()));
                m.insert("server_max_receive_pdu_size".into(), i.max_pdu.into());
                m.insert("vaa_name".into(), i.vaa_name.into());
            }
            if let Some(e) = &a.service_error {
                m.insert("service_error".into(), json!({"service": e.service, "type": e.error_type, "value": e.value}));
            }
            format!("AARE {} ({})", a.result_name(), a.diagnostic.name())
        }
        Apdu::Rlrq(r) | Apdu::Rlre(r) => {
            m.insert("reason".into(), opt(r.reason));
            if let Some(reason) = r.reason {
                m.insert("reason_name".into(), release_reason_name(reason).into());
            }
            format!("{} ({})", apdu.name(), r.reason.map(release_reason_name).unwrap_or("no reason"))
        }
        Apdu::GetRequest(g) => match g {
            GetRequest::Normal { iip, attribute, access } => {
                m.insert("request_type".into(), "normal".into());
                iip_fields(&mut m, *iip);
                attribute_fields(&mut m, attribute);
                m.insert("access_selection".into(), access.is_some().into());
                format!("GET {} attribute {} (class {})", attribute.obis, attribute.attribute, attribute.class_id)
            }
            GetRequest::Next { iip, block } => {
                m.insert("request_type".into(), "next".into());
                iip_fields(&mut m, *iip);
                m.insert("block_number".into(), (*block).into());
                format!("GET next data block after {block}")
            }
            GetRequest::WithList { iip, attributes } => {
                m.insert("request_type".into(), "with-list".into());
                iip_fields(&mut m, *iip);
                let list: Vec<Value> = attributes
                    .iter()
                    .map(|(a, _)| {
                        let mut x = Map::new();
                        attribute_fields(&mut x, a);
                        Value::Object(x)
                    })
                    .collect();
                m.insert("attributes".into(), Value::Array(list));
                format!("GET {} attributes", attributes.len())
            }
        },
        Apdu::GetResponse(g) => match g {
            GetResponse::Normal { iip, result } => {
                m.insert("response_type".into(), "normal".into());
                iip_fields(&mut m, *iip);
                result_fields(&mut m, result);
                match result {
                    Ok(d) => format!("GET.response: {} {d}", d.type_name()),
                    Err(dar) => format!("GET.response: {dar}"),
                }
            }
            GetResponse::WithDataBlock { iip, last, block, raw } => {
                m.insert("response_type".into(), "with-datablock".into());
                iip_fields(&mut m, *iip);
                m.insert("last_block".into(), (*last).into());
                m.insert("block_number".into(), (*block).into());
                match raw {
                    Ok(b) => m.insert("raw_data_hex".into(), hex_lower(b).into()),
                    Err(dar) => m.insert("data_access_result".into(), dar.0.into()),
                };
                format!("GET.response data block {block}{}", if *last { " (last)" } else { "" })
            }
            GetResponse::WithList { iip, results } => {
                m.insert("response_type".into(), "with-list".into());
                iip_fields(&mut m, *iip);
                m.insert("results".into(), Value::Array(results.iter().map(result_json).collect()));
                format!("GET.response with {} results", results.len())
            }
        },
        Apdu::SetRequest(s) => match s {
            SetRequest::Normal { iip, attribute, value, .. } => {
                m.insert("request_type".into(), "normal".into());
                iip_fields(&mut m, *iip);
                attribute_fields(&mut m, attribute);
                m.insert("value".into(), Value::Object(data_json(value)));
                format!("SET {} attribute {} = {value}", attribute.obis, attribute.attribute)
            }
            SetRequest::WithList { iip, items } => {
                m.insert("request_type".into(), "with-list".into());
                iip_fields(&mut m, *iip);
                m.insert("item_count".into(), items.len().into());
                format!("SET {} attributes", items.len())
            }
        },
        Apdu::SetResponse(s) => {
            iip_fields(&mut m, s.iip());
            match s {
                SetResponse::Normal { result, .. } | SetResponse::LastDataBlock { result, .. } => {
                    m.insert("data_access_result".into(), result.0.into());
                    m.insert("data_access_result_name".into(), result.name().into());
                    format!("SET.response: {result}")
                }
                SetResponse::DataBlock { block, .. } => {
                    m.insert("block_number".into(), (*block).into());
                    format!("SET.response block {block}")
                }
                SetResponse::WithList { results, .. } => {
                    m.insert("results".into(), json!(results.iter().map(|r| r.name()).collect::<Vec<_>>()));
                    format!("SET.response with {} results", results.len())
                }
            }
        }
        Apdu::ActionRequest(a) => {
            m.insert("request_type".into(), "normal".into());
            iip_fields(&mut m, a.iip);
            m.insert("class_id".into(), a.method.class_id.into());
            m.insert("obis".into(), a.method.obis.to_string().into());
            m.insert("method".into(), a.method.method.into());
            let name = if a.method.class_id == 70 {
                disconnect_method_name(a.method.method).to_owned()
            } else {
                format!("method_{}", a.method.method)
            };
            m.insert("method_name".into(), name.clone().into());
            m.insert("has_parameters".into(), a.parameters.is_some().into());
            if let Some(p) = &a.parameters {
                m.insert("parameters".into(), Value::Object(data_json(p)));
            }
            format!("ACTION {name} on {}", a.method.obis)
        }
        Apdu::ActionResponse(a) => action_response_fields(&mut m, a),
        Apdu::EventNotification(e) => {
            m.insert("form".into(), format!("{:?}", e.form).to_lowercase().into());
            m.insert("time".into(), e.time.as_ref().map(date_time_json).unwrap_or(Value::Null));
            attribute_fields(&mut m, &e.attribute);
            m.insert("value".into(), Value::Object(data_json(&e.value)));
            format!("EventNotification {} attribute {} = {}", e.attribute.obis, e.attribute.attribute, e.value)
        }
        Apdu::DataNotification(d) => {
            m.insert("long_invoke_id_and_priority".into(), d.long_invoke_id.into());
            m.insert("date_time".into(), d.date_time.as_ref().map(date_time_json).unwrap_or(Value::Null));
            m.insert("body".into(), Value::Object(data_json(&d.body)));
            format!("DataNotification: {}", d.body)
        }
        Apdu::ExceptionResponse(e) => {
            m.insert("state_error".into(), e.state_error.into());
            m.insert("state_error_name".into(), e.state_error_name().into());
            m.insert("service_error".into(), e.service_error.into());
            m.insert("service_error_name".into(), e.service_error_name().into());
            if let Some(ic) = e.invocation_counter {
                m.insert("invocation_counter".into(), ic.into());
            }
            m.insert("length".into(), (if e.invocation_counter.is_some() { 7 } else { 3 }).into());
            format!("ExceptionResponse: {}, {}", e.state_error_name(), e.service_error_name())
        }
        Apdu::ConfirmedServiceError(e) => {
            m.insert("service".into(), e.service.into());
            m.insert("error_type".into(), e.error_type.into());
            m.insert("value".into(), e.value.into());
            format!("ConfirmedServiceError service {} type {} value {}", e.service, e.error_type, e.value)
        }
    };
    (m, summary)
}

fn action_response_fields(m: &mut Map<String, Value>, a: &ActionResponse) -> String {
    iip_fields(m, a.iip);
    m.insert("response_type".into(), "normal".into());
    m.insert("action_result".into(), a.result.into());
    m.insert("action_result_name".into(), action_result_name(a.result).into());
    m.insert("success".into(), (a.result == 0).into());
    let ret = match &a.return_parameters {
        None => Value::Null,
        Some(Ok(d)) => {
            let mut x = Map::new();
            x.insert("choice".into(), "data".into());
            x.extend(data_json(d));
            Value::Object(x)
        }
        Some(Err(dar)) => {
            json!({"choice": "data-access-result", "data_access_result": dar.0, "data_access_result_name": dar.name()})
        }
    };
    m.insert("return_parameters".into(), ret);
    if a.presence_byte_missing {
        m.insert("presence_byte_missing".into(), true.into());
    }
    format!("ACTION.response: {}", action_result_name(a.result))
}

/// Explains one APDU.
pub fn explain_apdu(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let (apdu, used) = Apdu::parse_prefix(bytes).map_err(|e| apdu_error(&e))?;
    let (mut fields, summary) = apdu_fields(&apdu);
    if used < bytes.len() {
        fields.insert("trailing_hex".into(), hex_lower(bytes.get(used..).unwrap_or_default()).into());
    }
    Ok(Explanation { summary, fields })
}

/// Explains one A-XDR value; a 6-byte input that is not one falls back to an OBIS code, a 12-byte one to an
/// untagged COSEM date-time.
pub fn explain_axdr(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let decoded = Data::decode(bytes);
    let exact = matches!(&decoded, Ok((_, used)) if *used == bytes.len());
    if !exact {
        match bytes.len() {
            6 => return explain_obis(bytes),
            12 => return explain_cosem_date_time(bytes),
            _ => {}
        }
    }
    let (data, used) = decoded.map_err(|e| {
        let mut err = ExplainError::new(e.kind(), e.to_string()).with("protocol", "axdr");
        if let (AxdrError::UnknownDataType(t), _) = (e, ()) {
            err = err.with("tag", t);
        }
        err
    })?;
    let mut fields = Map::new();
    fields.insert("protocol".into(), "axdr".into());
    fields.insert("tag".into(), data.tag().into());
    fields.extend(data_json(&data));
    fields.insert("bytes_consumed".into(), used.into());
    if used < bytes.len() {
        fields.insert("trailing_hex".into(), hex_lower(bytes.get(used..).unwrap_or_default()).into());
    }
    Ok(Explanation { summary: format!("A-XDR {}: {data}", data.type_name()), fields })
}

/// Explains a 6-byte OBIS instance id.
pub fn explain_obis(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let obis = Obis::from_slice(bytes).ok_or_else(|| {
        ExplainError::new("length_mismatch", format!("an OBIS code has 6 bytes, got {}", bytes.len()))
    })?;
    let mut fields = Map::new();
    fields.insert("protocol".into(), "obis".into());
    fields.insert("obis".into(), obis.to_string().into());
    let mut summary = format!("OBIS {obis}");
    if let Some(def) = ObisRegistry::builtin().get(&obis) {
        fields.insert("key".into(), def.key.clone().into());
        fields.insert("name".into(), def.name.clone().into());
        fields.insert("unit".into(), def.unit.clone().into());
        fields.insert("class_id".into(), def.class_id.into());
        summary.push_str(&format!(" ({}: {})", def.key, def.name));
    }
    Ok(Explanation { summary, fields })
}

/// Explains a 12-byte untagged COSEM date-time.
pub fn explain_cosem_date_time(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let t = CosemDateTime::from_slice(bytes).ok_or_else(|| {
        ExplainError::new("length_mismatch", format!("a COSEM date-time has 12 bytes, got {}", bytes.len()))
    })?;
    let mut fields = Map::new();
    fields.insert("protocol".into(), "cosem-date-time".into());
    fields.insert("data_type".into(), "cosem-date-time(12 bytes, untagged)".into());
    if let Value::Object(dt) = date_time_json(&t) {
        fields.extend(dt);
    }
    fields.insert("iso_local".into(), opt(t.iso_local()));
    fields.insert("iso".into(), opt(t.iso()));
    Ok(Explanation { summary: format!("COSEM date-time {t}"), fields })
}
