//! Shared helpers for the vector tests: loading `tests/vectors/*.jsonl` (failing loudly when they are missing) and
//! comparing an `expected` object with what our decoders produce.
#![allow(dead_code)]

use serde_json::{Map, Value};
use std::path::PathBuf;

/// Keys of `expected` that record what *other* implementations believed, or how to compare; they are not fields our
/// decoder is asked to produce. Vectors that carry them are asserted separately, by id, in the test files.
pub const META_KEYS: &[&str] = &[
    "original_expectation",
    "original_code",
    "original_docs",
    "value_original",
    "raw_value_original",
    "standard_decoding",
    "standard_equivalent_hex",
    "tolerance",
    "notes",
    // Context of a real-meter scan that the response bytes do not carry (which request they answered).
    "obis_requested",
    "class_requested",
];

/// One line of a vectors file.
#[derive(Debug, Clone)]
pub struct Vector {
    pub id: String,
    pub protocol: String,
    pub kind: String,
    pub hex: String,
    pub bytes: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
    pub expected: Map<String, Value>,
    /// True when the record says the original product and the standard disagree.
    pub disagrees: bool,
    pub raw: Value,
}

impl Vector {
    /// `expected[key]`, or a panic naming the vector (test code only).
    pub fn exp(&self, key: &str) -> &Value {
        self.expected.get(key).unwrap_or_else(|| panic!("{}: expected.{key} missing", self.id))
    }
    pub fn exp_str(&self, key: &str) -> &str {
        self.exp(key).as_str().unwrap_or_else(|| panic!("{}: expected.{key} not a string", self.id))
    }
    pub fn exp_u64(&self, key: &str) -> u64 {
        self.exp(key).as_u64().unwrap_or_else(|| panic!("{}: expected.{key} not an integer", self.id))
    }
    pub fn exp_i64(&self, key: &str) -> i64 {
        self.exp(key).as_i64().unwrap_or_else(|| panic!("{}: expected.{key} not an integer", self.id))
    }
    pub fn has(&self, key: &str) -> bool {
        self.expected.contains_key(key)
    }
    /// `expected.error`, when decoding must fail.
    pub fn expected_error(&self) -> Option<&str> {
        self.expected.get("error").and_then(Value::as_str)
    }
}

/// The folder holding the repo's copies of the vectors.
pub fn vectors_dir() -> PathBuf {
    // Resolved from any crate of the workspace (the gateway's decode test shares this module).
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ivy-protocol/tests/vectors")
}

/// Loads every vector of `file` (e.g. `dlt645.jsonl`). A missing, unreadable or empty file fails the test: the
/// vectors are the contract, so their absence must never look like a pass.
pub fn load(file: &str) -> Vec<Vector> {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("vectors file {} cannot be read ({e}); the vector tests refuse to skip", path.display())
    });
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let raw: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: invalid JSON: {e}", path.display(), n + 1));
        let s = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let hex_text = s("hex");
        let bytes = hex::decode(&hex_text).unwrap_or_else(|e| panic!("{}: bad hex: {e}", s("id")));
        let chunks = raw
            .get("chunks")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|c| hex::decode(c.as_str().unwrap_or_default()).expect("chunk hex")).collect())
            .unwrap_or_default();
        let expected = raw.get("expected").and_then(Value::as_object).cloned().unwrap_or_default();
        let disagrees = line.contains("DISAGREE");
        out.push(Vector {
            id: s("id"),
            protocol: s("protocol"),
            kind: s("kind"),
            hex: hex_text,
            bytes,
            chunks,
            expected,
            disagrees,
            raw,
        });
    }
    assert!(!out.is_empty(), "vectors file {} is empty; the vector tests refuse to pass on nothing", path.display());
    out
}

/// Compares `expected` (minus [`META_KEYS`]) with `actual`: every expected key must be present in `actual` with an
/// equal value. Objects compare as subsets recursively, arrays element by element with equal length, integers
/// exactly, other numbers within `tolerance` (relative, or absolute near zero).
pub fn check_subset(expected: &Map<String, Value>, actual: &Value, tolerance: f64) -> Result<(), String> {
    let filtered: Map<String, Value> = expected
        .iter()
        .filter(|(k, _)| !META_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    compare(&Value::Object(filtered), actual, "expected", tolerance)
}

fn compare(expected: &Value, actual: &Value, path: &str, tolerance: f64) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a.get(k).ok_or_else(|| format!("{path}.{k}: missing (actual: {actual})"))?;
                compare(ev, av, &format!("{path}.{k}"), tolerance)?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("{path}: expected {} elements, got {} ({actual})", e.len(), a.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, &format!("{path}[{i}]"), tolerance)?;
            }
            Ok(())
        }
        (Value::Number(e), Value::Number(a)) => {
            if let (Some(ei), Some(ai)) = (e.as_i64(), a.as_i64()) {
                return if ei == ai { Ok(()) } else { Err(format!("{path}: expected {ei}, got {ai}")) };
            }
            if let (Some(ei), Some(ai)) = (e.as_u64(), a.as_u64()) {
                return if ei == ai { Ok(()) } else { Err(format!("{path}: expected {ei}, got {ai}")) };
            }
            let (ef, af) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
            let tol = tolerance.max(1e-9) * ef.abs().max(1.0);
            if (ef - af).abs() <= tol { Ok(()) } else { Err(format!("{path}: expected {ef}, got {af}")) }
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Counts results per file and prints them, so a run shows how many vectors were really exercised.
#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub disagrees_standard: usize,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn pass(&mut self, v: &Vector) {
        if v.disagrees {
            self.disagrees_standard += 1;
        } else {
            self.passed += 1;
        }
    }
    pub fn fail(&mut self, v: &Vector, why: impl std::fmt::Display) {
        self.failures.push(format!("{}: {why}", v.id));
    }
    /// Prints the counts and fails the test on any failure or when fewer vectors than `total` were checked.
    pub fn finish(self, file: &str, total: usize) {
        println!(
            "{file}: {} passed, {} DISAGREES asserted with the standard reading, {} failed (of {total})",
            self.passed,
            self.disagrees_standard,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{file}: {} vector(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert_eq!(self.passed + self.disagrees_standard, total, "{file}: not every vector was checked");
    }
}
