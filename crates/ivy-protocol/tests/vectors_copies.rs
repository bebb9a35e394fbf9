//! The repo's copies of the shared vectors must exist, be non-empty, and equal `../shared/vectors` when that folder
//! exists next to the repository (it may gain vectors; the copies must follow).

mod common;

use std::path::PathBuf;

const FILES: &[&str] = &["dlt645.jsonl", "dlms_apdu.jsonl", "axdr_types.jsonl", "ivy_wrapper.jsonl", "heartbeat.jsonl"];

#[test]
fn copies_exist_and_are_not_empty() {
    for file in FILES {
        let vectors = common::load(file);
        println!("{file}: {} vectors", vectors.len());
    }
}

#[test]
fn copies_equal_shared_vectors() {
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = repo_root.join("../shared/vectors");
    if !shared.is_dir() {
        println!("{} does not exist here; nothing to compare", shared.display());
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(&shared)
        .expect("read shared vectors dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "{} is empty", shared.display());
    for name in names {
        let theirs = std::fs::read(shared.join(&name)).expect("read shared file");
        let ours = std::fs::read(common::vectors_dir().join(&name))
            .unwrap_or_else(|e| panic!("{name} exists in ../shared/vectors but not in the repo's copy: {e}"));
        assert!(ours == theirs, "{name}: the repo's copy differs from ../shared/vectors; copy it again unchanged");
    }
}
