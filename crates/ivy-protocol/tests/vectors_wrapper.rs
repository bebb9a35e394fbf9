//! Shared vectors for the IEC 62056-47 wrapper (`ivy_wrapper.jsonl`) and the EM114070 heartbeat
//! (`heartbeat.jsonl`).

mod common;

use common::{Tally, Vector, check_subset, load};
use ivy_protocol::dlms::extent::{ApduExtent, FormExtent, apdu_extent};
use ivy_protocol::explain::{dlms::explain_apdu, wrapper::explain_heartbeat, wrapper::explain_packet};
use ivy_protocol::wrapper::{Framer, FramerEvent, Header, wrap};

/// Runs the framer over `chunks`, then flushes; returns the framed units (as wire bytes) and the discard count.
fn run_framer(chunks: &[Vec<u8>]) -> (Vec<String>, usize) {
    let mut framer = Framer::default();
    let mut frames = Vec::new();
    let mut discards = 0;
    let mut drain = |framer: &mut Framer| {
        while let Some(event) = framer.next_event() {
            match event {
                FramerEvent::Packet(p) => frames.push(hex::encode(p.to_bytes())),
                FramerEvent::Discarded { .. } => discards += 1,
            }
        }
    };
    for chunk in chunks {
        framer.push(chunk);
        drain(&mut framer);
    }
    framer.flush();
    drain(&mut framer);
    (frames, discards)
}

fn check_stream(v: &Vector) -> Result<(), String> {
    let expected: Vec<String> = v
        .exp("frames")
        .as_array()
        .ok_or("frames not a list")?
        .iter()
        .map(|f| f.as_str().unwrap_or_default().to_owned())
        .collect();
    let (frames, discards) = run_framer(&v.chunks);
    if frames != expected {
        return Err(format!("chunked: frames {frames:?}, expected {expected:?}"));
    }
    if let Some(min) = v.expected.get("min_errors_reported").and_then(|m| m.as_u64())
        && (discards as u64) < min
    {
        return Err(format!("{discards} discards reported, expected at least {min}"));
    }
    let bytewise: Vec<Vec<u8>> = v.bytes.iter().map(|b| vec![*b]).collect();
    let (frames_bytewise, _) = run_framer(&bytewise);
    if frames_bytewise != expected {
        return Err(format!("byte by byte: frames {frames_bytewise:?}, expected {expected:?}"));
    }
    if v.exp_u64("frame_count") as usize != frames.len() {
        return Err("frame_count differs".into());
    }
    Ok(())
}

fn check_wrapper(v: &Vector) -> Result<(), String> {
    match v.kind.as_str() {
        "stream" => {
            check_stream(v)?;
            if v.id == "ivy-raw-eventnotif" {
                // The standard reading of these bytes stops after 12 bytes and leaves `00 27 10`, which starts
                // nothing: the framer must take the EM114070 form (15 bytes), and the APDU decoder must agree.
                assert_eq!(
                    apdu_extent(&v.bytes),
                    ApduExtent::EventNotification {
                        standard: FormExtent::Complete(12),
                        em114070: FormExtent::Complete(15)
                    }
                );
            }
            Ok(())
        }
        "decode" => {
            let e = explain_packet(&v.bytes).map_err(|e| e.to_string())?;
            check_subset(&v.expected, &e.to_json(), 1e-9)
        }
        "encode" => {
            let source = v.exp_u64("source") as u16;
            let destination = v.exp_u64("destination") as u16;
            let built = match v.expected.get("payload_hex") {
                Some(p) => wrap(source, destination, &hex::decode(p.as_str().unwrap_or_default()).unwrap())
                    .map_err(|e| e.to_string())?,
                None if v.bytes.len() > 8 => wrap(source, destination, &v.bytes[8..]).map_err(|e| e.to_string())?,
                None => Header::new(source, destination, v.exp_u64("payload_length") as u16).encode().to_vec(),
            };
            if hex::encode(&built) != v.hex {
                return Err(format!("built {}, expected {}", hex::encode(&built), v.hex));
            }
            let e = explain_packet(&built).map_err(|e| e.to_string())?;
            check_subset(&v.expected, &e.to_json(), 1e-9)?;
            if let Some(apdu) = v.expected.get("payload_apdu") {
                let inner = explain_apdu(&v.bytes[8..]).map_err(|e| e.to_string())?;
                if inner.fields.get("apdu") != Some(apdu) {
                    return Err(format!("payload decodes as {:?}, expected {apdu}", inner.fields.get("apdu")));
                }
            }
            Ok(())
        }
        other => Err(format!("unknown kind {other}")),
    }
}

#[test]
fn ivy_wrapper_vectors() {
    let vectors = load("ivy_wrapper.jsonl");
    let mut tally = Tally::default();
    for v in &vectors {
        match check_wrapper(v) {
            Ok(()) => tally.pass(v),
            Err(e) => tally.fail(v, e),
        }
    }
    tally.finish("ivy_wrapper.jsonl", vectors.len());
}

fn check_heartbeat(v: &Vector) -> Result<(), String> {
    let e = explain_heartbeat(&v.bytes).map_err(|e| e.to_string())?;
    let json = e.to_json();
    if v.id == "hb-ambiguous-nondigit" {
        // The original code accepts any id bytes, its docs want 12 digits. We follow the code: the id is matched as
        // ASCII and then judged by the meter-id rule (`^[A-Za-z0-9_-]{1,64}$`), which `31150111407A` satisfies.
        if json["is_heartbeat"] != true || json["meter_address"] != "31150111407A" || json["meter_id_valid"] != true {
            return Err(format!("expected an accepted heartbeat for 31150111407A, got {json}"));
        }
        return Ok(());
    }
    check_subset(&v.expected, &json, 1e-9)
}

#[test]
fn heartbeat_vectors() {
    let vectors = load("heartbeat.jsonl");
    let mut tally = Tally::default();
    for v in &vectors {
        match check_heartbeat(v) {
            Ok(()) => tally.pass(v),
            Err(e) => tally.fail(v, e),
        }
    }
    tally.finish("heartbeat.jsonl", vectors.len());
}
