//! Shared vectors for DLMS/COSEM APDUs (`dlms_apdu.jsonl`) and A-XDR data (`axdr_types.jsonl`).

mod common;

use common::{Tally, Vector, check_subset, load};
use ivy_protocol::dlms::apdu::{
    Aarq, Apdu, AttributeDescriptor, Conformance, EventForm, InvokeIdAndPriority, MethodDescriptor, action_request,
    get_request, release_request,
};
use ivy_protocol::dlms::{Data, Obis};
use ivy_protocol::explain::dlms::explain_apdu;
use ivy_protocol::explain::{Options, Protocol, explain};
use serde_json::Value;

fn tolerance(v: &Vector) -> f64 {
    v.expected.get("tolerance").and_then(Value::as_f64).unwrap_or(1e-9)
}

fn obis(v: &Vector) -> Obis {
    v.exp_str("obis").parse().unwrap()
}

fn build(v: &Vector) -> Result<Vec<u8>, String> {
    let iip = || InvokeIdAndPriority(v.exp_u64("invoke_id_and_priority") as u8);
    Ok(match v.exp_str("apdu") {
        "AARQ" => {
            let conf = u32::from_str_radix(v.exp_str("conformance_hex"), 16).unwrap();
            let aarq = Aarq {
                conformance: Conformance(conf),
                max_pdu: v.exp_u64("client_max_receive_pdu_size") as u16,
                dlms_version: v.exp_u64("dlms_version") as u8,
                ..Aarq::default()
            };
            Apdu::Aarq(aarq).encode()
        }
        "GET.request" => get_request(
            iip(),
            AttributeDescriptor::new(v.exp_u64("class_id") as u16, obis(v), v.exp_u64("attribute") as u8),
        ),
        "ACTION.request" => {
            let method = MethodDescriptor {
                class_id: v.exp_u64("class_id") as u16,
                obis: obis(v),
                method: v.exp_u64("method") as u8,
            };
            let params = if v.exp("has_parameters") == true { Some(Data::Integer(0)) } else { None };
            action_request(iip(), method, params)
        }
        "RLRQ" => release_request(),
        other => return Err(format!("no builder for {other}")),
    })
}

fn check_apdu(v: &Vector) -> Result<(), String> {
    if v.kind == "encode" {
        let built = build(v)?;
        if hex::encode(&built) != v.hex {
            return Err(format!("built {}, expected {}", hex::encode(&built), v.hex));
        }
        let parsed = Apdu::parse(&built).map_err(|e| e.to_string())?;
        if parsed.encode() != built {
            return Err("parse/encode is not a round trip".into());
        }
    }
    if v.disagrees {
        return check_apdu_disagreement(v);
    }
    let e = explain_apdu(&v.bytes).map_err(|e| e.to_string())?;
    check_subset(&v.expected, &e.to_json(), tolerance(v))
}

/// The standard reading of DISAGREES vectors, asserted explicitly.
fn check_apdu_disagreement(v: &Vector) -> Result<(), String> {
    let result = explain_apdu(&v.bytes);
    let json = match &result {
        Ok(e) => e.to_json(),
        Err(e) => e.to_json(),
    };
    match v.id.as_str() {
        "dlms-orig-action-resp-rwd-short" => {
            check_subset(&v.expected, &json, 1e-9)?;
            (json["presence_byte_missing"] == true)
                .then_some(())
                .ok_or("the missing presence byte must be noted".into())
        }
        "dlms-orig-action-resp-bool-nonstd" => {
            // Standard decoding: presence 01, then Get-Data-Result choice 03, which does not exist.
            check_subset(&v.expected, &json, 1e-9)?;
            (json["error"] == "invalid_choice").then_some(()).ok_or(format!("expected invalid_choice, got {json}"))
        }
        "dlms-orig-eventnotif-uint32"
        | "dlms-orig-eventnotif-uint16-voltage"
        | "dlms-orig-eventnotif-uint16-current" => {
            check_subset(&v.expected, &json, 1e-9)?;
            let original = &v.expected["original_expectation"];
            let mut want = original.as_object().unwrap().clone();
            want.insert("form".into(), "em114070".into());
            check_subset(&want, &json, 1e-9)?;
            // The same event in the standard layout decodes to the same values via the standard form.
            let std_hex = v.exp_str("standard_equivalent_hex");
            let std_bytes = hex::decode(std_hex).unwrap();
            let std_json = explain_apdu(&std_bytes).map_err(|e| e.to_string())?.to_json();
            want.insert("form".into(), "standard".into());
            check_subset(&want, &std_json, 1e-9)?;
            match Apdu::parse(&std_bytes) {
                Ok(Apdu::EventNotification(e)) if e.form == EventForm::Standard => Ok(()),
                other => Err(format!("standard form not chosen: {other:?}")),
            }
        }
        "dlms-orig-eventnotif-obis-lenprefix" => {
            // A-XDR has no length byte before the fixed 6-byte instance id: the bytes parse exactly in the standard
            // layout (class 0x0306), and we do not guess the original's reading.
            check_subset(&v.expected, &json, 1e-9)?;
            (json["form"] == "standard" && json["class_id"] == 0x0306)
                .then_some(())
                .ok_or(format!("unexpected reading {json}"))
        }
        "dlms-orig-eventnotif-trailing" => {
            // One Data value per EventNotification; the extra bytes are reported as trailing, not merged.
            check_subset(&v.expected, &json, 1e-9)?;
            let ok = json["value"]["data_type"] == "long-unsigned"
                && json["value"]["value"] == 230
                && json["trailing_hex"] == "120100";
            ok.then_some(()).ok_or(format!("unexpected reading {json}"))
        }
        "dlms-orig-aare-truncated" | "dlms-orig-aare-rejected-truncated" | "dlms-orig-analyzer-aarq-bad" => {
            check_subset(&v.expected, &json, 1e-9)?;
            (json["error"] == "truncated" && json.get("accepted").is_none())
                .then_some(())
                .ok_or(format!("a truncated ACSE APDU must be reported, never accepted: {json}"))
        }
        // dar-9/11/12/13: the standard names are the expected fields themselves.
        _ => check_subset(&v.expected, &json, 1e-9),
    }
}

#[test]
fn dlms_apdu_vectors() {
    let vectors = load("dlms_apdu.jsonl");
    let mut tally = Tally::default();
    for v in &vectors {
        match check_apdu(v) {
            Ok(()) => tally.pass(v),
            Err(e) => tally.fail(v, e),
        }
    }
    tally.finish("dlms_apdu.jsonl", vectors.len());
}

fn check_axdr(v: &Vector) -> Result<(), String> {
    let offset = v.expected.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let result = explain(&v.bytes, Options { protocol: Some(Protocol::Axdr), offset });
    match (result, v.expected_error()) {
        (Ok(e), None) => check_subset(&v.expected, &e.to_json(), tolerance(v))?,
        (Err(e), Some(kind)) if e.kind == kind => check_subset(&v.expected, &e.to_json(), 1e-9)?,
        (Err(e), _) => return Err(format!("failed: {e}")),
        (Ok(e), Some(kind)) => return Err(format!("decoded ({}) but should fail with {kind}", e.summary)),
    }
    // Tagged values re-encode to their bytes.
    if v.expected_error().is_none()
        && let Ok((d, used)) = Data::decode(&v.bytes[offset..])
        && used == v.bytes.len() - offset
    {
        let mut out = Vec::new();
        d.encode(&mut out);
        if out != v.bytes[offset..] {
            return Err(format!("re-encoded as {}", hex::encode(out)));
        }
    }
    if v.id == "axdr-gen-bcd" {
        // Tag 13 is bcd in IEC 62056-6-2 (the original mapped it to compact-array, which is 19).
        return match Data::decode(&v.bytes) {
            Ok((Data::Bcd(0x25), 2)) => Ok(()),
            other => Err(format!("tag 13 must decode as bcd: {other:?}")),
        };
    }
    Ok(())
}

#[test]
fn axdr_vectors() {
    let vectors = load("axdr_types.jsonl");
    let mut tally = Tally::default();
    for v in &vectors {
        match check_axdr(v) {
            Ok(()) => tally.pass(v),
            Err(e) => tally.fail(v, e),
        }
    }
    tally.finish("axdr_types.jsonl", vectors.len());
}
