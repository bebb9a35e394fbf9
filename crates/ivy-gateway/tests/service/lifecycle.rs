//! Reconnects, alarms and MQTT access control.

use crate::harness::*;
use ivy_gateway::config::DuplicateIdentity;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlms::{DlmsConfig, DlmsMeter, DlmsSim};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The meter reconnects on B while its connection A is still open. Who wins a contested id is the
/// duplicate-identity policy's decision: with the default (`probe`) B wins only when A no longer answers (a
/// half-open connection the meter has abandoned: A is muted here); with `newest_wins` B wins even against a live A.
/// Either way, once B holds the meter, A's close must not take it offline (the original gateway's bug).
#[tokio::test]
async fn reconnect_keeps_the_meter_online_and_the_old_close_does_not_unregister_it() {
    reconnect_keeps_the_meter_online(DuplicateIdentity::Probe, true).await;
}

#[tokio::test]
async fn reconnect_keeps_the_meter_online_with_newest_wins() {
    reconnect_keeps_the_meter_online(DuplicateIdentity::NewestWins, false).await;
}

async fn reconnect_keeps_the_meter_online(policy: DuplicateIdentity, a_is_dead: bool) {
    let gw = start(|c| {
        c.meters.duplicate_identity = policy;
        c.meters.identity_probe_timeout_ms = 1000;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/#"]).await;
    let meter = |mute| DlmsConfig {
        meter: Arc::new(DlmsMeter::em114070("311501114070")),
        heartbeat: true,
        heartbeat_interval: None,
        push: None,
        latency: Default::default(),
        mute,
        stamp: false,
        faults: Default::default(),
    };
    let a = DlmsSim::connect(gw.meters(), meter(a_is_dead)).await.unwrap();
    c.wait("online via A", 10, |m| m.topic.ends_with("/status") && m.json["online"] == true).await;
    let b = DlmsSim::connect(gw.meters(), meter(false)).await.unwrap();
    c.wait("meter_reconnected", 10, |m| m.topic.ends_with("/events") && m.json["event"] == "meter_reconnected").await;
    // The gateway closes A itself; now A's peer closes too (the original's bug: A's close unregistered M).
    a.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c
        .command(
            "311501114070",
            json!({"id": "via-b", "method": "read_register", "params": {"register": "VOLTAGE_TOTAL"}}),
        )
        .await;
    assert_eq!(r["success"], true, "the command must go through B: {r}");
    assert!(b.stats.requests.load(Ordering::Relaxed) >= 1);
    let rest = c.collect(1000).await;
    let all: Vec<&Msg> = rest.iter().collect();
    assert!(all.iter().all(|m| !(m.topic.ends_with("/status") && m.json["online"] == false)), "went offline: {all:?}");
    // Exactly one online status and one meter_reconnected event in total (the retained status says online).
    let late = retained(gw.mqtt(), "ivy/v1/meters/311501114070/status").await;
    assert_eq!(late.json["online"], true);
    assert_eq!(gw.gw.meters().registry.len(), 1);
}

/// As above for DL/T 645, under both policies that let the newcomer win.
#[tokio::test]
async fn reconnect_events_are_published_exactly_once() {
    reconnect_events_once(DuplicateIdentity::Probe, true).await;
}

#[tokio::test]
async fn reconnect_events_are_published_exactly_once_with_newest_wins() {
    reconnect_events_once(DuplicateIdentity::NewestWins, false).await;
}

async fn reconnect_events_once(policy: DuplicateIdentity, a_is_dead: bool) {
    let gw = start(|c| {
        c.meters.duplicate_identity = policy;
        c.meters.identity_probe_timeout_ms = 1000;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/#"]).await;
    let cfg = |mute| Dlt645Config {
        mute,
        ..Dlt645Config::talk_first(vec![Arc::new(Dlt645Meter::new("000000004321".parse::<Address>().unwrap()))])
    };
    let a = Dlt645Sim::connect(gw.meters(), cfg(a_is_dead)).await.unwrap();
    let b_msgs = c.until("online", 10, |m| m.topic.ends_with("/status")).await;
    let b = Dlt645Sim::connect(gw.meters(), cfg(false)).await.unwrap();
    let mut msgs = c.until("reconnected", 10, |m| m.json["event"] == "meter_reconnected").await;
    a.close().await;
    msgs.extend(c.collect(1500).await);
    msgs.extend(b_msgs);
    let statuses: Vec<_> = msgs.iter().filter(|m| m.topic.ends_with("/status")).collect();
    let reconnected = msgs.iter().filter(|m| m.json["event"] == "meter_reconnected").count();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].json["online"], true);
    assert_eq!(reconnected, 1);
    let r = c.command("000000004321", json!({"id": "b", "method": "read_address"})).await;
    assert_eq!(r["success"], true, "{r}");
    drop(b);
}

/// With a gateway id (several gateways on one broker), statuses carry it, and a reconnection publishes an online
/// status naming the new connection; the old connection's close still publishes nothing.
#[tokio::test]
async fn with_a_gateway_id_statuses_name_the_gateway_and_a_reconnection_names_the_new_connection() {
    let gw = start(|c| {
        c.gateway.gateway_id = Some("gw-7".into());
        c.meters.duplicate_identity = DuplicateIdentity::NewestWins;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/#"]).await;
    let cfg = || Dlt645Config::talk_first(vec![Arc::new(Dlt645Meter::new("000000004322".parse::<Address>().unwrap()))]);
    let a = Dlt645Sim::connect(gw.meters(), cfg()).await.unwrap();
    let first = c.wait("online", 10, |m| m.topic.ends_with("/status") && m.json["online"] == true).await;
    assert_eq!(first.json["gatewayId"], "gw-7");
    let first_at = first.json["connectedAt"].as_u64().expect("connectedAt");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = Dlt645Sim::connect(gw.meters(), cfg()).await.unwrap();
    let mut msgs = c.until("reconnected", 10, |m| m.json["event"] == "meter_reconnected").await;
    a.close().await;
    msgs.extend(c.collect(1500).await);
    let statuses: Vec<_> = msgs.iter().filter(|m| m.topic.ends_with("/status")).collect();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].json["online"], true);
    assert_eq!(statuses[0].json["gatewayId"], "gw-7");
    assert!(statuses[0].json["connectedAt"].as_u64().expect("connectedAt") > first_at, "{statuses:?}");
    let late = retained(gw.mqtt(), "ivy/v1/meters/000000004322/status").await;
    assert_eq!(late.json, statuses[0].json);
    // The meter leaves: the offline names the connection that ended.
    b.close().await;
    let offline = c.wait("offline", 10, |m| m.topic.ends_with("/status") && m.json["online"] == false).await;
    assert_eq!(offline.json["connectedAt"], statuses[0].json["connectedAt"]);
    assert_eq!(offline.json["gatewayId"], "gw-7");
}

#[tokio::test]
async fn overvoltage_raises_once_holds_in_the_band_and_clears_once() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 300;
        c.polling.first_poll_delay_ms = 0;
        c.polling.group = "energy".into();
        c.polling.dlt645_groups.insert("energy".into(), vec!["VOLTAGE_A".into()]);
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/+/events", "ivy/v1/meters/+/telemetry"]).await;
    let meter = Arc::new(Dlt645Meter::new("000000007777".parse::<Address>().unwrap()));
    meter.set(0x0201_0100, 230.0);
    let cfg = Dlt645Config::talk_first(vec![meter.clone()]);
    let _sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    let wait_value = |v: f64| move |m: &Msg| m.topic.ends_with("/telemetry") && m.json["value"] == v;
    let mut seen = c.until("230 V", 10, wait_value(230.0)).await;
    meter.set(0x0201_0100, 254.0);
    seen.extend(c.until("254 V", 10, wait_value(254.0)).await);
    // Oscillating inside the hysteresis band (253 V × 2 % = 247.94..253) raises nothing new.
    for v in [252.0, 254.5, 248.5, 253.5] {
        meter.set(0x0201_0100, v);
        seen.extend(c.until(&format!("{v} V"), 10, wait_value(v)).await);
    }
    meter.set(0x0201_0100, 240.0);
    seen.extend(c.until("240 V", 10, wait_value(240.0)).await);
    seen.extend(c.collect(800).await);
    let events: Vec<&str> = seen
        .iter()
        .filter(|m| m.topic.ends_with("/events"))
        .filter_map(|m| m.json["event"].as_str())
        .filter(|e| e.contains("alarm"))
        .collect();
    assert_eq!(events, vec!["alarm:overvoltage", "alarm_cleared:overvoltage"], "{events:?}");
    let raised = seen.iter().find(|m| m.json["event"] == "alarm:overvoltage").unwrap();
    assert_eq!(raised.json["data"]["threshold"], 253.0);
    assert_eq!(raised.json["data"]["value"], 254.0);
    assert_eq!(raised.json["severity"], "warning");
}

#[tokio::test]
async fn tariff_and_counters_never_touch_voltage_or_current_alarms() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 60_000;
        c.polling.first_poll_delay_ms = 0;
        c.dlms.passive_only = false;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/+/events", "ivy/v1/meters/+/snapshot"]).await;
    let meter = Arc::new(DlmsMeter::em114070("000000000888"));
    // A huge tariff number: were rules matched on substrings or positions, this would look like a voltage/current.
    meter.set(ivy_protocol::dlms::Obis::new(0, 0, 96, 14, 0, 255), ivy_protocol::dlms::Data::Unsigned(250));
    let cfg = DlmsConfig {
        meter,
        heartbeat: true,
        heartbeat_interval: None,
        push: None,
        latency: Default::default(),
        mute: false,
        stamp: false,
        faults: Default::default(),
    };
    let _sim = DlmsSim::connect(gw.meters(), cfg).await.unwrap();
    let msgs = c.until("snapshot", 10, |m| m.topic.ends_with("/snapshot")).await;
    let snap = msgs.last().unwrap();
    assert_eq!(snap.json["readings"]["CURRENT_TARIFF"]["value"], 250.0);
    let alarms: Vec<_> = msgs
        .iter()
        .chain(c.collect(500).await.iter())
        .filter(|m| m.json["event"].as_str().is_some_and(|e| e.starts_with("alarm")))
        .cloned()
        .collect();
    assert!(alarms.is_empty(), "{alarms:?}");
    assert!(gw.gw.alarms().lock().unwrap().active().is_empty());
}

#[tokio::test]
async fn access_control() {
    let gw = start(|_| {}).await;
    // Wrong password and unknown user: CONNACK "bad user name or password".
    assert_eq!(connack(gw.mqtt(), ("ops", "wrong")).await, Ok(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(connack(gw.mqtt(), ("nobody", "x")).await, Ok(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(ConnectReturnCode::Success));

    let mut watcher = client(gw.mqtt(), ADMIN, &["#"]).await;
    let mut viewer = client(gw.mqtt(), VIEWER, &["ivy/v1/#"]).await;
    // A viewer cannot subscribe outside the prefix.
    viewer.client.subscribe("other/#", QoS::AtLeastOnce).await.unwrap();
    let codes = tokio::time::timeout(Duration::from_secs(5), viewer.suback.recv()).await.unwrap().unwrap();
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure], "viewer subscription outside ivy/v1/#");
    // A viewer cannot publish a command: dropped (nobody receives it), counted, no response.
    let counters_before = denied(&gw);
    viewer
        .client
        .publish(
            "ivy/v1/meters/000000001234/command/request",
            QoS::AtLeastOnce,
            false,
            json!({"id": "v", "method": "read_address"}).to_string(),
        )
        .await
        .unwrap();
    // No client may publish a telemetry topic, not even an admin.
    let admin = client(gw.mqtt(), ADMIN, &[]).await;
    admin
        .client
        .publish("ivy/v1/meters/000000001234/telemetry", QoS::AtLeastOnce, false, "{\"value\": 1}")
        .await
        .unwrap();
    let operator = client(gw.mqtt(), OPERATOR, &[]).await;
    operator
        .client
        .publish("ivy/v1/meters/000000001234/status", QoS::AtLeastOnce, true, "{\"online\": true}")
        .await
        .unwrap();
    let seen = watcher.collect(1000).await;
    assert!(seen.iter().all(|m| !m.topic.starts_with("ivy/v1/meters/")), "{seen:?}");
    eventually("denials counted", 5, || denied(&gw) >= counters_before + 3).await;
    // An operator's command is accepted (and answered: the meter is not connected).
    let mut op = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/+/command/response"]).await;
    let r = op.command("000000001234", json!({"id": "o", "method": "read_address"})).await;
    assert_eq!(r["code"], "meter_not_connected");
}

fn denied(gw: &TestGateway) -> u64 {
    // Broker counters are mirrored into the metrics when /metrics is scraped; read the stats payload instead.
    let stats = gw.gw.stats().payload();
    stats["mqtt"]["denied"].as_u64().unwrap_or(0)
}
