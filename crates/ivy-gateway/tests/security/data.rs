//! Data and first run: concurrent alarm acknowledgements are all durable; a first start that fails leaves no
//! account nobody knows the password of; `passwd --reset` recovers access.

use crate::harness::*;
use crate::report;
use ivy_gateway::gateway::Gateway;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CURRENT_A: u32 = 0x0202_0100;
const ACTIVE_POWER_TOTAL: u32 = 0x0203_0000;

#[tokio::test]
async fn concurrent_acknowledgements_are_all_durable_across_a_restart() {
    // With the SQLite store (the default) and with the acknowledgement file it replaces when the store is off.
    for store in [false, true] {
        concurrent_acknowledgements(store).await;
    }
}

async fn concurrent_acknowledgements(store: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.enabled = store;
    config.polling.enabled = true;
    config.polling.group = "all".into();
    config.polling.interval_ms = 500;
    let gw = Gateway::start(config.clone()).await.unwrap();
    let meter = Arc::new(Dlt645Meter::new("000000007005".parse::<Address>().unwrap()));
    // Three alarms: overvoltage, overcurrent, overload.
    meter.set(0x0201_0100, 262.0);
    meter.set(CURRENT_A, 75.0);
    meter.set(ACTIVE_POWER_TOTAL, 17.25);
    let sim = Dlt645Sim::connect(gw.addrs().meters.unwrap(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    eventually("the meter online", 10, || gw.meters().registry.len() == 1).await;
    for _ in 0..100 {
        if gw.alarms().lock().unwrap().active().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.alarms().lock().unwrap().active().len() >= 3, "{:?}", gw.alarms().lock().unwrap().active());
    let ids: Vec<String> = gw.alarms().lock().unwrap().active().into_iter().map(|a| a.id).collect();
    let base = format!("http://{}", gw.addrs().http.unwrap());
    let client = reqwest::Client::new();
    // Every alarm acknowledged by several operators at once.
    let mut requests = Vec::new();
    for id in &ids {
        for _ in 0..8 {
            let r = client.post(format!("{base}/api/alarms/{id}/ack")).basic_auth(OPERATOR.0, Some(OPERATOR.1)).send();
            requests.push(r);
        }
    }
    let answers = futures::future::join_all(requests).await;
    let ok = answers.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == reqwest::StatusCode::OK)).count();
    assert_eq!(ok, answers.len(), "every acknowledgement answered 200");
    // Straight from disk (the acknowledgement file when the store is off), then after a restart on the same data
    // directory (from the store when it is on).
    let file = dir.path().join(ivy_gateway::alarms::ACKS_FILE);
    let on_disk = if store { None } else { Some(ivy_gateway::alarms::load_acknowledged(&file).unwrap()) };
    drop(sim);
    gw.shutdown().await;
    let again = Gateway::start(config).await.unwrap();
    let restored = again.alarms().lock().unwrap().acknowledged_ids();
    again.shutdown().await;
    let on_disk = on_disk.unwrap_or_else(|| restored.clone());
    let durable = ids.iter().filter(|id| on_disk.contains(id) && restored.contains(id)).count();
    let leftovers = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok);
    assert!(leftovers.filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).count() == 0);
    let what = if store { "in the store" } else { "in the acknowledgement file" };
    report(
        &format!("concurrent alarm acknowledgements (each must be {what})"),
        answers.len(),
        ok * durable / ids.len(),
    );
}

/// A gateway process; killed (by PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &std::path::Path, http_port: u16) -> std::path::PathBuf {
    let path = dir.join("ivy-gateway.toml");
    let text = format!(
        "[gateway]\ndata_dir = {:?}\n[meters]\nhost = \"127.0.0.1\"\nport = 0\n[mqtt]\nhost = \"127.0.0.1\"\nport = 0\n\
         ws_port = 0\n[http]\nhost = \"127.0.0.1\"\nport = {http_port}\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn gateway(config: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"));
    c.arg("--config").arg(config).current_dir(config.parent().unwrap()).env_remove("MQTT_USERS");
    c
}

/// Starts the gateway; returns it, the first-run password it printed (if any) and its MQTT address.
fn run_until_listening(config: &std::path::Path) -> (Proc, Option<String>, std::net::SocketAddr) {
    let mut child = gateway(config).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut password = None;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("the gateway prints its addresses").unwrap();
        let t = line.trim();
        if t.len() == 24 && t.chars().all(|c| c.is_ascii_alphanumeric()) {
            password = Some(t.to_owned());
        }
        if let Some(rest) = line.strip_prefix("ivy-gateway listening: ") {
            let mqtt = rest.split_whitespace().skip_while(|w| *w != "mqtt").nth(1).unwrap().parse().unwrap();
            return (proc, password, mqtt);
        }
    }
}

#[tokio::test]
async fn a_failed_first_start_leaves_no_account_and_passwd_reset_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = write_config(dir.path(), busy.local_addr().unwrap().port());
    let users = dir.path().join("data").join(ivy_gateway::auth::USERS_FILE);
    let mut survived = 0;

    // First start: the HTTP port is taken.
    let out = gateway(&config).output().unwrap();
    assert!(!out.status.success(), "the start fails");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("password"), "{stdout}");
    survived += usize::from(!users.exists());

    // The port is free: this start is the first one, and it prints the password.
    drop(busy);
    let config = write_config(dir.path(), 0);
    let (proc, first, mqtt) = run_until_listening(&config);
    let first = first.expect("the first successful start prints the admin password");
    assert!(users.exists());
    assert_eq!(connack(mqtt, ("admin", &first)).await, Ok(rumqttc::ConnectReturnCode::Success));
    drop(proc);

    // Lost password: recovery.
    let out = gateway(&config).args(["passwd", "--reset", "admin"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let new = text.lines().map(str::trim).find(|l| l.len() == 24).expect("a new password printed").to_owned();
    assert!(!std::fs::read_to_string(&users).unwrap().contains(&new), "only the hash is stored");
    let (proc, none, mqtt) = run_until_listening(&config);
    assert!(none.is_none(), "not a first start any more");
    assert_eq!(connack(mqtt, ("admin", &new)).await, Ok(rumqttc::ConnectReturnCode::Success));
    survived +=
        usize::from(connack(mqtt, ("admin", &first)).await == Ok(rumqttc::ConnectReturnCode::BadUserNamePassword));
    drop(proc);
    tokio::time::sleep(Duration::from_millis(10)).await;
    report("first start failing after the users file; old password after reset", 2, survived);
}
