//! The command line: `check-config` names the bad key, `passwd` prints a usable argon2id hash.

use std::io::Write;
use std::process::{Command, Stdio};

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"));
    // Never pick up a developer's ./ivy-gateway.toml or .env.
    c.current_dir(tempfile::tempdir().unwrap().keep());
    c
}

#[test]
fn check_config_names_the_bad_key() {
    let out =
        gateway().arg("check-config").env("TCP_PORT", "eighty").env("DLMS_CLIENT_ADDRESS", "0x0010").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TCP_PORT") && err.contains("eighty"), "{err}");

    let out = gateway()
        .arg("check-config")
        .env("DLMS_CLIENT_ADDRESS", "0x0010")
        .env("MQTT_USERS", "u:pw-4f7c2e")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("client_wport = 16"), "hex parsed: {text}");
    // A password that cannot occur in a key name (`meters.secrets_quiet_secs` contains "secret").
    assert!(!text.contains("pw-4f7c2e"), "secrets masked: {text}");
}

#[test]
fn bad_config_stops_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ivy-gateway.toml"), "[meters]\nprot = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ivy-gateway")).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn passwd_prints_an_argon2id_users_entry() {
    let mut child = gateway()
        .args(["passwd", "--user", "alice", "--role", "viewer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name = \"alice\"") && text.contains("role = \"viewer\""), "{text}");
    let hash = text.lines().find_map(|l| l.strip_prefix("hash = \"")).unwrap().trim_end_matches('"');
    assert!(ivy_gateway::auth::verify_hash(hash, "s3cret"));
    assert!(!text.contains("s3cret"));
}
