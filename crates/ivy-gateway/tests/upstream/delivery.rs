//! The data path of upstream mode against a real Mosquitto: the documented payloads arrive, commands published at
//! the broker are executed and answered, bad credentials are refused with a clear log line and a backoff, and the
//! durable outbox loses nothing through a 30 s broker outage or a `kill -9` of the gateway with a backlog.

use crate::support::*;
use ivy_sim::dlms::PushForm;
use ivy_sim::fleet::{Fleet, FleetConfig};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Telemetry messages counted by reading: (meter, register, ts) → how many times it arrived.
#[derive(Default)]
struct Tally {
    telemetry: HashMap<(String, String, u64), u32>,
    statuses: usize,
}

impl Tally {
    fn add(&mut self, m: &Received) {
        if m.topic.ends_with("/telemetry") {
            let key = (
                m.json["meterId"].as_str().unwrap_or_default().to_owned(),
                m.json["register"].as_str().unwrap_or_default().to_owned(),
                m.json["ts"].as_u64().unwrap_or_default(),
            );
            *self.telemetry.entry(key).or_insert(0) += 1;
        } else if m.topic.ends_with("/status") && m.topic.contains("/meters/") {
            self.statuses += 1;
        }
    }

    fn distinct(&self) -> u64 {
        self.telemetry.len() as u64
    }

    fn duplicates(&self) -> u64 {
        self.telemetry.values().map(|n| u64::from(n - 1)).sum()
    }

    /// Takes what `sub` receives until nothing came for `quiet_ms`, or `limit_secs` passed.
    async fn drain(&mut self, sub: &mut Subscriber, quiet_ms: u64, limit_secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(limit_secs);
        while tokio::time::Instant::now() < deadline {
            match sub.next(quiet_ms as f64 / 1000.0).await {
                Some(m) => self.add(&m),
                None => return,
            }
        }
    }
}

/// `/api/stats` of a gateway.
async fn stats(gw: &GatewayProcess) -> Value {
    let (status, body) = get_json(gw, "/api/stats").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `/metrics` of a gateway.
async fn metrics(gw: &GatewayProcess) -> String {
    let r = reqwest::Client::new().get(format!("http://{}/metrics", gw.http)).basic_auth(USER.0, Some(USER.1));
    r.send().await.unwrap().text().await.unwrap()
}

/// Readings the gateway published (to the hub), after checking the store took every one of them (so each has its
/// outbox rows). Readings decoded in a poll cycle cut short by the meter leaving are not published.
async fn produced(gw: &GatewayProcess) -> u64 {
    let s = stats(gw).await;
    let store = &s["hub"]["sinks"]["store"];
    assert_eq!(store["droppedReadings"], 0, "the store took every reading: {s}");
    s["hub"]["readings"].as_u64().unwrap()
}

/// Waits until the gateway's reading count stops moving (the fleet stopped, the last pushes are in).
async fn settled(gw: &GatewayProcess) -> u64 {
    let mut last = produced(gw).await;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = produced(gw).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

fn fleet(gw: &GatewayProcess, meters: usize) -> Fleet {
    Fleet::start(FleetConfig {
        gateway: gw.meters,
        dlt645_meters: meters / 2,
        dlms_meters: meters - meters / 2,
        push: Some((Duration::from_secs(1), PushForm::DataNotification)),
        ramp_per_sec: 0,
        ..FleetConfig::default()
    })
}

/// `env` plus `more`; the tests poll the HTTP API often, so its per-IP rate limit is raised.
fn env_with(mut env: Vec<(&'static str, String)>, more: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    env.push(("HTTP_RATE_LIMIT", "1000000".to_owned()));
    env.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[tokio::test]
async fn telemetry_status_and_events_arrive_upstream_and_commands_are_answered_there() {
    basics("3.1.1").await;
}

#[tokio::test]
async fn the_same_over_mqtt_5() {
    basics("5").await;
}

async fn basics(protocol: &str) {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(&broker, Login::anonymous("backend"), &["ivy/v1/#"]).await;
    let env = env_with(
        upstream_env(&broker, "gw-basic", None),
        &[
            ("POLLING_ENABLED", "true"),
            ("POLLING_INTERVAL_MS", "1000"),
            ("MQTT_EMBEDDED", "false"),
            ("MQTT_UPSTREAM_PROTOCOL", protocol),
        ],
    );
    let gw = gateway(&env);
    let birth = sub.wait("the gateway's birth", 15, |m| m.topic == "ivy/v1/gateways/gw-basic/status").await;
    assert_eq!(birth.json["status"], "online");
    let kept = retained(&broker, Login::anonymous("late-reader"), "ivy/v1/gateways/gw-basic/status", 5.0).await;
    assert_eq!(kept.expect("the birth is retained").json["status"], "online");
    assert!(gw.log().contains("upstream MQTT connected"), "{}", gw.log());

    let fleet = fleet(&gw, 2);
    let status = sub.wait("a meter online", 20, |m| m.topic.ends_with("/status") && m.json["online"] == true).await;
    let id = status.json["meterId"].as_str().unwrap().to_owned();
    assert_eq!(status.json["gatewayId"], "gw-basic");
    assert!(status.json["connectedAt"].is_u64() && status.json["ip"].is_string(), "{}", status.json);
    let connected =
        sub.wait("meter_connected", 20, |m| m.topic.ends_with("/events") && m.json["event"] == "meter_connected").await;
    assert_eq!(connected.json["severity"], "info");
    let t = sub.wait("telemetry", 20, |m| m.topic.ends_with("/telemetry")).await;
    for field in
        ["ts", "meterId", "source", "register", "dataId", "value", "rawValue", "unit", "receivedAt", "tsSource"]
    {
        assert!(t.json.get(field).is_some(), "telemetry has {field}: {}", t.json);
    }
    assert!(!t.retain);
    let snap = sub.wait("a snapshot", 20, |m| m.topic.ends_with("/snapshot")).await;
    assert!(snap.json["readings"].is_object(), "{}", snap.json);
    let kept = retained(&broker, Login::anonymous("late-reader-2"), &snap.topic, 5.0).await;
    assert!(kept.is_some(), "snapshots are retained");

    // A command published at the broker is executed by the gateway holding the meter and answered there.
    // The fleet's first DL/T 645 meter.
    let dlt = ivy_sim::fleet::dlt645_address(1).unwrap().to_string();
    eventually("the DL/T 645 meter online", 20, || async {
        get_json(&gw, "/api/meters").await.1["meters"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["meterId"] == dlt.as_str() && m["online"] == true))
    })
    .await;
    let request = json!({"id": "up-1", "method": "read_register", "params": {"register": "VOLTAGE_A"}});
    sub.publish(&format!("ivy/v1/meters/{dlt}/command/request"), request.to_string(), false).await;
    let answer =
        sub.wait("the command response", 20, |m| m.topic == format!("ivy/v1/meters/{dlt}/command/response")).await;
    assert_eq!(answer.json["id"], "up-1");
    assert_eq!(answer.json["success"], true, "{}", answer.json);
    assert!(answer.json["result"]["value"].is_number(), "{}", answer.json);

    // Stats go upstream too, and say what the outbox holds.
    let stats_msg = sub.wait("gateway stats", 10, |m| m.topic == "ivy/v1/gateways/gw-basic/stats").await;
    assert!(stats_msg.json["outbox"]["queued"].is_u64(), "{}", stats_msg.json);
    assert_eq!(stats_msg.json["upstream"]["connected"], true);
    let metrics = metrics(&gw).await;
    for name in
        ["ivy_outbox_depth", "ivy_outbox_oldest_age_seconds", "ivy_outbox_dropped_total", "ivy_upstream_connected 1"]
    {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert!(!id.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn bad_credentials_are_logged_clearly_and_retried_with_backoff() {
    let broker = Mosquitto::start_with(MosquittoOptions { users: vec![("gw".into(), "right".into())], tls: false });
    let gw = gateway(&env_with(upstream_env(&broker, "gw-creds", Some(("gw", "wrong"))), &[]));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = gw.log();
    let refused = log.lines().filter(|l| l.contains("refused") && l.contains("MQTT_UPSTREAM_PASSWORD")).count();
    // 500 ms doubling with jitter in the upper half: about 5 attempts in 6 s; a tight loop would make thousands.
    assert!((2..=12).contains(&refused), "{refused} refusals logged in 6 s:\n{log}");
    assert!(log.contains("retry_in_ms"), "{log}");
    let s = stats(&gw).await;
    assert_eq!(s["upstream"]["connected"], false);
    assert!(s["upstream"]["reconnects"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test]
async fn a_30_second_broker_outage_loses_no_reading() {
    outage(100, 30, "3.1.1").await;
}

#[tokio::test]
async fn a_broker_outage_over_mqtt_5_loses_no_reading() {
    outage(20, 5, "5").await;
}

async fn outage(meters: usize, secs: u64, protocol: &str) {
    let mut broker = Mosquitto::start();
    let mut sub = Subscriber::connect(&broker, Login::anonymous("backend-outage"), &["ivy/v1/meters/#"]).await;
    let env = env_with(
        upstream_env(&broker, "gw-outage", None),
        &[("POLLING_ENABLED", "true"), ("POLLING_INTERVAL_MS", "1000"), ("MQTT_UPSTREAM_PROTOCOL", protocol)],
    );
    let gw = gateway(&env);
    let fleet = fleet(&gw, meters);
    assert!(fleet.wait_connected(meters as u64, Duration::from_secs(30)).await, "{meters} meters connected");
    let mut tally = Tally::default();
    tally.drain(&mut sub, 200, 3).await;

    broker.stop();
    let outage = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let backlog = stats(&gw).await["outbox"].clone();
    assert!(backlog["queued"].as_u64().unwrap() > 100, "the outbox holds the outage's messages: {backlog}");
    assert_eq!(stats(&gw).await["upstream"]["connected"], false);
    broker.restart();
    let down = outage.elapsed();

    // New data keeps flowing while the backlog drains; then the meters stop and everything is counted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let summary = fleet.stop().await;
    let produced = settled(&gw).await;
    eventually("the outbox drained", 120, || async { stats(&gw).await["outbox"]["queued"] == 0 }).await;
    tally.drain(&mut sub, 3000, 120).await;
    let (delivered, duplicates) = (tally.distinct(), tally.duplicates());
    let lost = produced.saturating_sub(delivered);
    println!(
        "MQTT {protocol}: broker outage {:.1} s, {meters} meters ({} pushes, {} poll replies): backlog {} messages; \
         readings produced {produced}, delivered {delivered}, duplicates {duplicates}, lost {lost}",
        down.as_secs_f64(),
        summary.pushes,
        summary.replies,
        backlog["queued"],
    );
    assert_eq!(lost, 0, "every reading produced arrives at least once");
    assert_eq!(delivered, produced, "and nothing arrives that was not produced");
    let s = stats(&gw).await;
    assert_eq!(s["outbox"]["dropped"], 0, "{s}");
    assert!(s["upstream"]["reconnects"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_backlog_committed_before_kill_9_is_delivered_after_the_restart() {
    let mut broker = Mosquitto::start();
    // The backend's session exists before the outage, so the broker keeps what arrives for it.
    drop(Subscriber::connect(&broker, Login::anonymous("backend-crash"), &["ivy/v1/meters/#"]).await);
    broker.stop();
    let env = env_with(
        upstream_env(&broker, "gw-crash", None),
        &[("POLLING_ENABLED", "true"), ("POLLING_INTERVAL_MS", "1000")],
    );
    let mut gw = gateway(&env);
    let fleet = fleet(&gw, 20);
    assert!(fleet.wait_connected(20, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = fleet.stop().await;
    let produced = settled(&gw).await;
    // Every reading is committed to the outbox (the store writer commits within store.batch_ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = stats(&gw).await["outbox"]["queued"].as_u64().unwrap();
    assert!(queued >= produced, "telemetry of every reading waits in the outbox: {queued} < {produced}");

    gw.kill();
    broker.restart();
    let mut sub = Subscriber::connect(&broker, Login::anonymous("backend-crash"), &["ivy/v1/meters/#"]).await;
    gw.restart().unwrap();
    let mut tally = Tally::default();
    eventually("the backlog delivered", 120, || async { stats(&gw).await["outbox"]["queued"] == 0 }).await;
    tally.drain(&mut sub, 3000, 120).await;
    let (delivered, duplicates) = (tally.distinct(), tally.duplicates());
    println!(
        "kill -9 with the broker down: outbox held {queued} messages ({produced} readings); after the restart \
         delivered {delivered} readings, {duplicates} duplicates, {} statuses, lost {}",
        tally.statuses,
        produced.saturating_sub(delivered)
    );
    assert_eq!(delivered, produced, "0 lost of what the outbox had committed");
}

#[tokio::test]
async fn a_full_outbox_drops_the_oldest_telemetry_and_keeps_every_status_and_alarm() {
    let mut broker = Mosquitto::start();
    drop(Subscriber::connect(&broker, Login::anonymous("backend-full"), &["ivy/v1/meters/#"]).await);
    broker.stop();
    // Every voltage reading is over the threshold: each meter's voltages raise alarms.
    let env = env_with(
        upstream_env(&broker, "gw-full", None),
        &[
            ("POLLING_ENABLED", "true"),
            ("POLLING_INTERVAL_MS", "1000"),
            // 20 meters: 40 statuses, 40 lifecycle events and 20 alarms are kept; room for 200 more.
            ("OUTBOX_MAX_MESSAGES", "300"),
            ("ALARM_OVERVOLTAGE", "1"),
            ("ALARM_UNDERVOLTAGE", "0"),
        ],
    );
    let gw = gateway(&env);
    let fleet = fleet(&gw, 20);
    assert!(fleet.wait_connected(20, Duration::from_secs(30)).await);
    let online_at = serde_json::json!(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = fleet.stop().await;
    let produced = settled(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = stats(&gw).await;
    let outbox = &s["outbox"];
    assert!(outbox["droppedByClass"]["telemetry"].as_u64().unwrap() > 0, "{outbox}");
    assert_eq!(outbox["droppedByClass"]["snapshot"], 0, "telemetry goes first: {outbox}");
    let (_, events) = get_json(&gw, "/api/events?limit=1000").await;
    let alarms_raised = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"].as_str().unwrap().starts_with("alarm"))
        .count();
    assert!(alarms_raised >= 20, "the test raises alarms: {alarms_raised}");

    broker.restart();
    let mut sub = Subscriber::connect(&broker, Login::anonymous("backend-full"), &["ivy/v1/meters/#"]).await;
    eventually("the outbox delivered", 60, || async { stats(&gw).await["outbox"]["queued"] == 0 }).await;
    let got = sub.collect(3000).await;
    let statuses = got.iter().filter(|m| m.topic.ends_with("/status")).count();
    let alarms = got
        .iter()
        .filter(|m| m.topic.ends_with("/events") && m.json["event"].as_str().is_some_and(|e| e.starts_with("alarm")))
        .count();
    let telemetry = got.iter().filter(|m| m.topic.ends_with("/telemetry")).count();
    let oldest_kept =
        got.iter().filter(|m| m.topic.ends_with("/telemetry")).filter_map(|m| m.json["ts"].as_u64()).min();
    let dropped = stats(&gw).await["outbox"]["dropped"].as_u64().unwrap();
    println!(
        "outbox bound 300 messages, broker down: {produced} readings produced, {dropped} messages dropped \
         (telemetry first); delivered {telemetry} (the newest) telemetry, {statuses} statuses, {alarms} of {alarms_raised} alarm events"
    );
    assert_eq!(statuses, 40, "every meter's online and offline status is kept");
    assert_eq!(alarms, alarms_raised, "every alarm event is kept");
    assert!(telemetry > 0 && (telemetry as u64) < produced, "some telemetry was dropped, the newest kept");
    let oldest_kept = oldest_kept.unwrap();
    assert!(
        oldest_kept > online_at.as_u64().unwrap() + 2000,
        "the oldest telemetry went first: the oldest kept is {} ms after the meters came online",
        oldest_kept.saturating_sub(online_at.as_u64().unwrap())
    );
    let metrics = metrics(&gw).await;
    let line = metrics.lines().find(|l| l.starts_with("ivy_outbox_dropped_total{reason=\"telemetry\"}")).unwrap();
    assert!(!line.ends_with(" 0"), "{line}");
}

#[tokio::test]
async fn after_kill_9_the_meters_it_held_are_retained_offline_upstream() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(&broker, Login::anonymous("backend-stale"), &["ivy/v1/meters/+/status"]).await;
    let mut gw = gateway(&env_with(upstream_env(&broker, "gw-stale", None), &[]));
    let fleet = fleet(&gw, 2);
    assert!(fleet.wait_connected(2, Duration::from_secs(30)).await);
    let online = sub.wait("a meter online", 20, |m| m.json["online"] == true).await;
    // Let the store commit the online statuses, then crash: nobody says the meters went offline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.kill();
    let _ = fleet.stop().await;
    let still = retained(&broker, Login::anonymous("stale-reader-1"), &online.topic, 5.0).await.unwrap();
    assert_eq!(still.json["online"], true, "the crash left it online at the broker");
    gw.restart().unwrap();
    let offline = sub.wait("its offline status", 20, |m| m.topic == online.topic && m.json["online"] == false).await;
    assert_eq!(offline.json["reason"], "not connected since the gateway started");
    assert_eq!(offline.json["connectedAt"], online.json["connectedAt"], "it names the connection that ended");
    let kept = retained(&broker, Login::anonymous("stale-reader-2"), &online.topic, 5.0).await.unwrap();
    assert_eq!(kept.json["online"], false);
}
