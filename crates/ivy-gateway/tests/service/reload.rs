//! SIGHUP on the real binary: the HTTPS certificate swapped on disk is served to new connections, an alarm
//! threshold and a user's password changed in the files are in effect, and no meter (nor an open HTTPS
//! connection) is disconnected.

use super::harness::{self, Client};
use super::tls::{TestCa, free_port, http_request, tls_connect};
use rumqttc::ConnectReturnCode;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const METER: &str = "000000005678";
const ADM: (&str, &str) = ("adm", "admpass");

/// The gateway binary, stopped (by PID) when dropped.
struct Running {
    child: Child,
    mqtt: SocketAddr,
    http: SocketAddr,
    meters: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(dir: &Path) -> Running {
        let (meters, mqtt, http) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
            .arg("--config")
            .arg(dir.join("ivy-gateway.toml"))
            .current_dir(dir)
            .env("DATA_DIR", dir)
            .env("TCP_HOST", "127.0.0.1")
            .env("TCP_PORT", meters.to_string())
            .env("MQTT_HOST", "127.0.0.1")
            .env("MQTT_PORT", mqtt.to_string())
            .env("MQTT_WS_PORT", "0")
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", http.to_string())
            .env("LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
            .spawn()
            .unwrap();
        let ip = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Running { child, mqtt: ip(mqtt), http: ip(http), meters: ip(meters) }
    }

    fn hangup(&self) {
        assert!(Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap().success());
    }

    fn log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the gateway's log contains `text`.
    async fn wait_for_log(dir: &Path, text: &str) {
        let started = Instant::now();
        while !Running::log(dir).contains(text) {
            assert!(started.elapsed() < Duration::from_secs(10), "no {text:?} in the log: {}", Running::log(dir));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes the users file: `adm` keeps the hash it has (an unchanged user), `ops` gets `ops_password`.
fn users_file(dir: &Path, ops_password: &str) {
    let hash = |p: &str| ivy_gateway::auth::hash_password(p).unwrap();
    let adm_hash = dir.join("adm.hash");
    if !adm_hash.exists() {
        std::fs::write(&adm_hash, hash(ADM.1)).unwrap();
    }
    let text = format!(
        "[[user]]\nname = \"adm\"\nhash = \"{}\"\nrole = \"admin\"\n\n[[user]]\nname = \"ops\"\nhash = \"{}\"\nrole = \"operator\"\n",
        std::fs::read_to_string(&adm_hash).unwrap(),
        hash(ops_password)
    );
    std::fs::write(dir.join("users.tmp"), text).unwrap();
    std::fs::rename(dir.join("users.tmp"), dir.join(ivy_gateway::auth::USERS_FILE)).unwrap();
}

/// Writes the configuration file: polling of the `instantaneous` group, or with `own_group` of a group of its own
/// (voltage and combined energy); the overvoltage threshold; HTTPS with `cert.pem`/`key.pem` when `https`.
fn config_file(dir: &Path, overvoltage_v: f64, https: bool, own_group: bool) {
    let tls = if https {
        format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", dir.join("cert.pem").display(), dir.join("key.pem").display())
    } else {
        String::new()
    };
    let group = if own_group {
        "group = \"mine\"\n[polling.dlt645_groups]\nmine = [\"VOLTAGE_A\", \"COMBINED_ACTIVE_ENERGY\"]\n"
    } else {
        "group = \"instantaneous\"\n"
    };
    let text = format!(
        "[polling]\nenabled = true\ninterval_ms = 500\nfirst_poll_delay_ms = 100\njitter_percent = 0\n{group}\n\
         [meters]\nidentify_after_secs = 1\n\n[alarms]\novervoltage_v = {overvoltage_v:.1}\n\n[http]\n{tls}"
    );
    std::fs::write(dir.join("ivy-gateway.toml.tmp"), text).unwrap();
    std::fs::rename(dir.join("ivy-gateway.toml.tmp"), dir.join("ivy-gateway.toml")).unwrap();
}

/// Waits for the broker, then subscribes to everything of the test meter.
async fn watcher(gw: &Running) -> Client {
    let started = Instant::now();
    while harness::connack(gw.mqtt, ADM).await != Ok(ConnectReturnCode::Success) {
        assert!(started.elapsed() < Duration::from_secs(30), "gateway did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness::client(gw.mqtt, ADM, &[&format!("ivy/v1/meters/{METER}/#")]).await
}

async fn meter(gw: &Running) -> (ivy_sim::dlt645::Dlt645Sim, Arc<ivy_sim::dlt645::Dlt645Meter>) {
    let meter = Arc::new(ivy_sim::dlt645::Dlt645Meter::new(METER.parse().unwrap()));
    let cfg = ivy_sim::dlt645::Dlt645Config {
        meters: vec![meter.clone()],
        identify: ivy_sim::dlt645::Identify::TalkFirst,
        latency: Default::default(),
        mute: false,
        faults: Default::default(),
    };
    (ivy_sim::dlt645::Dlt645Sim::connect(gw.meters, cfg).await.unwrap(), meter)
}

fn status_changes(msgs: &[harness::Msg]) -> Vec<&harness::Msg> {
    let topic = format!("ivy/v1/meters/{METER}/status");
    msgs.iter().filter(|m| m.topic == topic).collect()
}

#[tokio::test]
async fn sighup_applies_a_new_alarm_threshold_password_and_poll_group_without_disconnecting_meters() {
    let dir = tempfile::tempdir().unwrap();
    users_file(dir.path(), "old-ops-password");
    config_file(dir.path(), 253.0, false, false);
    let gw = Running::start(dir.path());
    let mut watch = watcher(&gw).await;
    let (_sim, _meter) = meter(&gw).await;
    let telemetry = format!("ivy/v1/meters/{METER}/telemetry");
    let before = watch
        .until("two polls of VOLTAGE_A (230.1 V)", 20, {
            let mut polls = 0;
            move |m| {
                polls += usize::from(m.topic == telemetry && m.json.to_string().contains("VOLTAGE_A"));
                polls >= 2
            }
        })
        .await;
    assert!(!before.iter().any(|m| m.json.to_string().contains("alarm:overvoltage")), "230 V is below 253 V");
    assert!(!before.iter().any(|m| m.json.to_string().contains("COMBINED_ACTIVE_ENERGY")), "not in the group yet");
    assert_eq!(harness::connack(gw.mqtt, ("ops", "old-ops-password")).await, Ok(ConnectReturnCode::Success));

    users_file(dir.path(), "new-ops-password");
    config_file(dir.path(), 225.0, false, true);
    gw.hangup();

    let after = watch
        .until("an overvoltage alarm at the new 225 V threshold", 20, |m| m.json["event"] == "alarm:overvoltage")
        .await;
    let alarm = after.last().unwrap();
    assert_eq!(alarm.json["data"]["threshold"], 225.0, "{:?}", alarm.json);
    let started = Instant::now();
    while harness::connack(gw.mqtt, ("ops", "new-ops-password")).await != Ok(ConnectReturnCode::Success) {
        assert!(started.elapsed() < Duration::from_secs(10), "the new password never worked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        harness::connack(gw.mqtt, ("ops", "old-ops-password")).await,
        Ok(ConnectReturnCode::BadUserNamePassword),
        "the old password must stop working (no cached credentials)"
    );
    // Still connected: readings keep coming, from the reloaded poll group, and the meter never went offline.
    let later = watch.collect(1500).await;
    assert!(
        later.iter().any(|m| m.topic.ends_with("/telemetry") && m.json.to_string().contains("COMBINED_ACTIVE_ENERGY")),
        "the connected meter is polled with the reloaded group: {later:?}"
    );
    let mut all = before;
    all.extend(after);
    all.extend(later);
    let statuses = status_changes(&all);
    assert!(statuses.iter().all(|m| m.json["online"] == true), "the meter went offline: {statuses:?}");
    let log = Running::log(dir.path());
    assert!(log.contains("reload: applied"), "{log}");
    assert!(log.contains("alarms.overvoltage_v"), "the report names the changed key: {log}");
    assert!(log.contains("polling.dlt645_groups.mine") && log.contains("polling.group"), "{log}");
    assert!(log.contains("password or role changed [\"ops\"]"), "the report names only the changed user: {log}");
}

#[tokio::test]
async fn sighup_serves_a_certificate_swapped_on_disk_while_meters_and_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ivy reload CA");
    let (_, _, first) = ca.write_server(dir.path());
    users_file(dir.path(), "ops-password");
    config_file(dir.path(), 253.0, true, false);
    let gw = Running::start(dir.path());
    let mut watch = watcher(&gw).await;
    let (_sim, _meter) = meter(&gw).await;
    let online = watch.wait("meter online", 20, |m| m.topic.ends_with("/status") && m.json["online"] == true).await;
    assert_eq!(online.json["online"], true);

    let (mut open, served) = tls_connect(gw.http, ca.client()).await.expect("HTTPS with the first certificate");
    assert_eq!(served, first);
    assert_eq!(http_request(&mut open, "GET", "/health", "", "").await.unwrap().0, 200);

    let (_, _, second) = ca.write_server(dir.path());
    assert_ne!(first, second);
    gw.hangup();
    let started = Instant::now();
    loop {
        let (_, served) = tls_connect(gw.http, ca.client()).await.expect("HTTPS during the reload");
        if served == second {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the swap still works.
    assert_eq!(http_request(&mut open, "GET", "/health", "", "").await.unwrap().0, 200);
    // No meter disconnected: no offline status after the first online (a busy machine may see a later online
    // status of the same connection, which is no disconnect), and readings keep coming.
    let later = watch.collect(1500).await;
    assert!(later.iter().any(|m| m.topic.ends_with("/telemetry")), "polling continues after the reload");
    let statuses = status_changes(&later);
    assert!(statuses.iter().all(|m| m.json["online"] == true), "the meter went offline: {statuses:?}");
    let dropped = |m: &&harness::Msg| m.json["event"] == "meter_disconnected" || m.json["event"] == "meter_reconnected";
    assert!(!later.iter().any(|m| dropped(&m)), "the meter's connection was dropped: {later:?}");
    let log = Running::log(dir.path());
    assert!(log.contains("HTTPS certificate replaced"), "{log}");

    // A broken certificate file is refused and the current one stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    gw.hangup();
    Running::wait_for_log(dir.path(), "previous one is still served").await;
    let (_, served) = tls_connect(gw.http, ca.client()).await.unwrap();
    assert_eq!(served, second);
}

#[tokio::test]
async fn sighup_reports_settings_that_need_a_restart_and_refuses_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    users_file(dir.path(), "ops-password");
    config_file(dir.path(), 253.0, false, false);
    let gw = Running::start(dir.path());
    let _watch = watcher(&gw).await;

    let text = std::fs::read_to_string(dir.path().join("ivy-gateway.toml")).unwrap();
    std::fs::write(dir.path().join("ivy-gateway.toml"), format!("{text}\n[commands]\ntimeout_ms = 20000\n")).unwrap();
    gw.hangup();
    Running::wait_for_log(dir.path(), "needs a restart").await;
    assert!(Running::log(dir.path()).contains("commands.timeout_ms"));

    std::fs::write(dir.path().join("ivy-gateway.toml"), "[alarms]\novervoltage_v = \"high\"\n").unwrap();
    gw.hangup();
    Running::wait_for_log(dir.path(), "reload refused").await;
    // Still running and serving.
    assert_eq!(harness::connack(gw.mqtt, ADM).await, Ok(ConnectReturnCode::Success));
    let _ = gw.http;
}
