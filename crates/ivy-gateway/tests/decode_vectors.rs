//! `ivy-gateway decode --json` on every public vector of kind `decode` yields the expected fields.

#[path = "../../ivy-protocol/tests/common/mod.rs"]
mod common;

use common::{Tally, check_subset, load};
use std::process::Command;

const FILES: &[(&str, &str)] = &[
    ("dlt645.jsonl", "dlt645"),
    ("dlms_apdu.jsonl", "dlms"),
    ("axdr_types.jsonl", "axdr"),
    ("ivy_wrapper.jsonl", "wrapper"),
    ("heartbeat.jsonl", "heartbeat"),
];

/// Vectors whose `expected` records an undecided question rather than fields (checked in the protocol crate's
/// tests with the documented decision).
const UNDECIDED: &[&str] = &["hb-ambiguous-nondigit"];

#[test]
fn decode_tool_explains_every_decode_vector() {
    let bin = env!("CARGO_BIN_EXE_ivy-gateway");
    for (file, protocol) in FILES {
        let vectors: Vec<_> = load(file).into_iter().filter(|v| v.kind == "decode").collect();
        assert!(!vectors.is_empty(), "{file} has no decode vectors");
        let mut tally = Tally::default();
        for v in &vectors {
            if UNDECIDED.contains(&v.id.as_str()) {
                tally.pass(v);
                continue;
            }
            let mut cmd = Command::new(bin);
            cmd.args(["decode", "--json", "--protocol", protocol]);
            if let Some(offset) = v.expected.get("offset").and_then(|o| o.as_u64()) {
                cmd.args(["--offset", &offset.to_string()]);
            }
            let output = cmd.arg(&v.hex).output().expect("run ivy-gateway decode");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let json: serde_json::Value = match serde_json::from_str(stdout.trim()) {
                Ok(j) => j,
                Err(e) => {
                    tally.fail(v, format!("stdout is not one JSON object ({e}): {stdout}"));
                    continue;
                }
            };
            let code = output.status.code();
            let expects_error = v.expected_error().is_some();
            let exit_ok = if expects_error || json.get("error").is_some() { code == Some(2) } else { code == Some(0) };
            if !exit_ok {
                tally.fail(v, format!("exit code {code:?} for {json}"));
                continue;
            }
            if expects_error && output.stderr.is_empty() {
                tally.fail(v, "no reason on stderr");
                continue;
            }
            let tolerance = v.expected.get("tolerance").and_then(|t| t.as_f64()).unwrap_or(1e-9);
            match check_subset(&v.expected, &json, tolerance) {
                Ok(()) => tally.pass(v),
                Err(e) => tally.fail(v, e),
            }
        }
        tally.finish(&format!("decode --json {file}"), vectors.len());
    }
}

#[test]
fn decode_tool_rejects_bad_input_with_one_line() {
    let bin = env!("CARGO_BIN_EXE_ivy-gateway");
    for args in
        [&["decode", "zz"][..], &["decode", "--protocol", "nope", "68"], &["decode", "--protocol", "dlt645", "6816"]]
    {
        let output = Command::new(bin).args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?}: no reason given");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
