//! Explains IEC 62056-47 wrapper packets and registration (heartbeat) packets.

use super::{ExplainError, Explanation, hex_lower};
use crate::registration::{RegistrationRule, RuleMatch};
use crate::wrapper::{HEADER_LEN, Header};
use serde_json::{Map, Value};

fn header_json(h: &Header) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("version".into(), h.version.into());
    m.insert("source".into(), h.source.into());
    m.insert("destination".into(), h.destination.into());
    m.insert("payload_length".into(), h.payload_length.into());
    m
}

/// Explains one wrapper packet: the header, and the APDU inside when the payload is complete.
pub fn explain_packet(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let header = Header::parse(bytes).map_err(|e| {
        ExplainError::new("too_short", e.to_string()).with("protocol", "wrapper").with("length", bytes.len())
    })?;
    let mut fields = Map::new();
    fields.insert("protocol".into(), "wrapper".into());
    fields.extend(header_json(&header));
    let end = HEADER_LEN + usize::from(header.payload_length);
    let mut summary = format!(
        "IEC 62056-47 wrapper v{} from wPort {:#06x} to {:#06x}, {} payload bytes",
        header.version, header.source, header.destination, header.payload_length
    );
    if header.version != crate::wrapper::VERSION {
        fields.insert("warning".into(), format!("version {:#06x} is not 0x0001", header.version).into());
    }
    let Some(payload) = bytes.get(HEADER_LEN..end) else {
        fields.insert("complete".into(), false.into());
        fields.insert("available_payload_bytes".into(), bytes.len().saturating_sub(HEADER_LEN).into());
        summary.push_str(" (incomplete)");
        return Ok(Explanation { summary, fields });
    };
    fields.insert("complete".into(), true.into());
    fields.insert("payload_hex".into(), hex_lower(payload).into());
    if let Some(trailing) = bytes.get(end..).filter(|t| !t.is_empty()) {
        fields.insert("trailing_hex".into(), hex_lower(trailing).into());
    }
    let packet = bytes.get(..end).unwrap_or_default();
    if let Ok(hb) = explain_heartbeat(packet)
        && hb.fields.get("is_heartbeat") == Some(&Value::Bool(true))
    {
        summary.push_str(": ");
        summary.push_str(&hb.summary);
        fields.insert("registration".into(), hb.to_json());
        return Ok(Explanation { summary, fields });
    }
    if payload.is_empty() {
        return Ok(Explanation { summary, fields });
    }
    match super::dlms::explain_apdu(payload) {
        Ok(inner) => {
            if let Some(apdu) = inner.fields.get("apdu") {
                fields.insert("payload_apdu".into(), apdu.clone());
            }
            if let Some(value) = inner.fields.get("value") {
                fields.insert("value".into(), value.clone());
            }
            summary.push_str(": ");
            summary.push_str(&inner.summary);
            fields.insert("payload".into(), inner.to_json());
        }
        Err(e) => {
            fields.insert("payload_error".into(), e.to_json());
            summary.push_str(&format!(" (payload is not a DLMS APDU: {e})"));
        }
    }
    Ok(Explanation { summary, fields })
}

/// Explains a registration packet against the built-in IVY EM114070 rule. Bytes that are not one are explained
/// as `is_heartbeat: false` (with `incomplete: true` when they are the start of one), not as an error.
pub fn explain_heartbeat(bytes: &[u8]) -> Result<Explanation, ExplainError> {
    explain_registration(&RegistrationRule::em114070(), bytes)
}

/// Explains `bytes` against one registration `rule`.
pub fn explain_registration(rule: &RegistrationRule, bytes: &[u8]) -> Result<Explanation, ExplainError> {
    let mut fields = Map::new();
    fields.insert("protocol".into(), "heartbeat".into());
    fields.insert("rule".into(), rule.name.clone().into());
    let registration = match rule.match_packet(bytes) {
        RuleMatch::Matched(r) => r,
        other => {
            let incomplete = other == RuleMatch::Incomplete;
            fields.insert("is_heartbeat".into(), false.into());
            fields.insert("incomplete".into(), incomplete.into());
            fields.insert("meter_address".into(), Value::Null);
            fields.insert("consumed".into(), 0.into());
            let summary = if incomplete {
                format!("the start of a {} ({} of {} bytes)", rule.name, bytes.len(), rule.packet_length)
            } else {
                format!("not a {}", rule.name)
            };
            return Ok(Explanation { summary, fields });
        }
    };
    let packet = bytes.get(..registration.consumed).unwrap_or_default();
    let id_end = rule.id_offset + rule.id_length;
    let trailer = packet.get(id_end..).unwrap_or_default();
    fields.insert("is_heartbeat".into(), true.into());
    fields.insert("meter_address".into(), registration.raw_id.clone().into());
    let valid = crate::registration::MeterId::new(registration.raw_id.clone());
    fields.insert("meter_id_valid".into(), valid.is_ok().into());
    if let Err(e) = &valid {
        fields.insert("meter_id_error".into(), e.to_string().into());
    }
    fields.insert("zero_address".into(), registration.zero_address.into());
    if let Some((separator, check)) = trailer.split_first() {
        fields.insert("separator".into(), (*separator).into());
        fields.insert("crc_hex".into(), hex_lower(check).into());
    }
    fields.insert("consumed".into(), registration.consumed.into());
    if let Ok(h) = Header::parse(packet)
        && rule.prefix.starts_with(&[0x00, 0x01])
    {
        fields.insert("wrapper".into(), Value::Object(header_json(&h)));
        let prefix_payload = rule.prefix.get(HEADER_LEN..).unwrap_or_default();
        fields.insert("payload_prefix_hex".into(), hex_lower(prefix_payload).into());
    }
    fields.insert("raw_hex".into(), hex_lower(packet).into());
    fields.insert("remaining_hex".into(), hex_lower(bytes.get(registration.consumed..).unwrap_or_default()).into());
    if let Some(ack) = &registration.ack {
        fields.insert("ack_hex".into(), hex_lower(ack).into());
    }
    let summary = format!("{} from meter {}", rule.name, registration.raw_id);
    Ok(Explanation { summary, fields })
}
