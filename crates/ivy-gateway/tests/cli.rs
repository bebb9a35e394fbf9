//! The command line: `check-config` names the bad key and shows TOML mistakes with line and column, `passwd` prints
//! a usable argon2id hash with an explicit role (viewer unless asked).

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

#[test]
fn toml_mistakes_show_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ivy-gateway.toml");
    for (text, line, column, what) in [
        ("[gateway]\nname = \"x\"\n\n[meters]\nport = 8899\nmax_connections = ten\n", 6, 19, "invalid"),
        ("[mqtt]\nport = \"1883\"\n", 2, 8, "expected u16"),
        ("[http]\nhost = \"127.0.0.1\"\n[http]\n", 3, 2, "duplicate key"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = gateway().arg("--config").arg(&file).arg("check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("line {line}, column {column}")), "{text:?} → {err}");
        assert!(err.to_lowercase().contains(what), "{text:?} → {err}");
        assert!(err.contains(&file.display().to_string()), "names the file: {err}");
    }
    // The same for the files the configuration points to.
    let registers = dir.path().join("registers.toml");
    std::fs::write(&registers, "[[register]]\nkey = \"x\"\ndi = 0x\n").unwrap();
    std::fs::write(&file, format!("[dlt645]\nregister_file = {:?}\n", registers.display().to_string())).unwrap();
    let out = gateway().arg("--config").arg(&file).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3, column") && err.contains("registers.toml"), "{err}");
}

#[test]
fn passwd_role_is_explicit_and_defaults_to_viewer() {
    let entry = |args: &[&str]| {
        let mut child = gateway()
            .arg("passwd")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"pw-1234\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = entry(&["--user", "bob"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name = \"bob\"") && text.contains("role = \"viewer\""), "{text}");

    let out = entry(&["--user", "carol", "--role", "operator"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("role = \"operator\""));

    // No silent default user (it used to be an "admin" with the operator role).
    let out = entry(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
    let out = entry(&["--user", "dave", "--role", "root"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
