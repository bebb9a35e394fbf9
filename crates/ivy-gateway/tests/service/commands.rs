//! Every command method against a simulated DL/T 645 meter and an EM114070-style DLMS meter, the error codes, and
//! commands racing polls.

use crate::harness::*;
use ivy_protocol::dlt645::{Address, RelayAuth};
use ivy_sim::ReplyLatency;
use ivy_sim::dlms::{DlmsConfig, DlmsMeter, DlmsSim};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim, Identify};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const DLT: &str = "000000001234";
const DLMS: &str = "311501114070";

fn dlt_meter() -> Arc<Dlt645Meter> {
    let mut m = Dlt645Meter::new(DLT.parse::<Address>().unwrap());
    m.auth = Some(RelayAuth::new(2, "123456", "87654321").unwrap());
    Arc::new(m)
}

async fn setup(
    mute_dlt: bool,
    dlms: DlmsMeter,
) -> (TestGateway, Client, Arc<Dlt645Meter>, Arc<DlmsMeter>, Dlt645Sim, DlmsSim) {
    let gw = start(|c| {
        c.dlt645.password = "123456".into();
        c.dlt645.operator_code = "87654321".into();
        c.commands.timeout_ms = 3000;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/#"]).await;
    let meter = dlt_meter();
    let cfg = Dlt645Config {
        meters: vec![meter.clone()],
        identify: Identify::TalkFirst,
        latency: Default::default(),
        mute: mute_dlt,
        faults: Default::default(),
    };
    let dlt_sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    let dlms = Arc::new(dlms);
    let dcfg = DlmsConfig { heartbeat: true, ..DlmsConfig::new(dlms.clone()) };
    let dlms_sim = DlmsSim::connect(gw.meters(), dcfg).await.unwrap();
    for id in [DLT, DLMS] {
        let topic = format!("ivy/v1/meters/{id}/status");
        c.wait("online", 10, |m| m.topic == topic).await;
    }
    (gw, c, meter, dlms, dlt_sim, dlms_sim)
}

#[tokio::test]
async fn every_method_on_a_dlt645_meter() {
    let (_gw, mut c, meter, _, sim, _d) = setup(false, DlmsMeter::em114070(DLMS)).await;

    let r = c
        .command(DLT, json!({"id": "r1", "method": "read_register", "params": {"register": "active_power_total"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["register"], "ACTIVE_POWER_TOTAL");
    assert_eq!(r["result"]["dataId"], "0x02030000");
    assert_eq!(r["result"]["value"], 1.2345);
    assert_eq!(r["result"]["unit"], "kW");
    assert_eq!(r["result"]["rawValue"], 12345);

    // The original's field names and keys.
    let r = c.command(DLT, json!({"requestId": "r2", "command": "read", "register": "TOTAL_ACTIVE_POSITIVE"})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["requestId"], "r2");
    assert_eq!(r["result"]["register"], "COMBINED_ACTIVE_ENERGY");
    assert_eq!(r["result"]["value"], 1234.56);
    let r = c.command(DLT, json!({"id": "r3", "method": "read_register", "params": {"dataId": "02010100"}})).await;
    assert_eq!(r["result"]["value"], 230.1, "{r}");

    let r = c
        .command(DLT, json!({"id": "r4", "method": "read_all", "params": {"registers": ["VOLTAGE_A", "FREQUENCY"]}}))
        .await;
    assert_eq!(r["result"]["readings"]["VOLTAGE_A"]["value"], 230.1, "{r}");
    assert_eq!(r["result"]["readings"]["FREQUENCY"]["unit"], "Hz");
    let r = c.command(DLT, json!({"id": "r5", "method": "read_group", "params": {"group": "instantaneous"}})).await;
    assert_eq!(r["result"]["readings"].as_object().unwrap().len(), 5, "{r}");

    let r = c.command(DLT, json!({"id": "r6", "method": "relay_control", "params": {"state": "open"}})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["relay_state"], "open");
    assert!(meter.relay_open.load(Ordering::Relaxed));
    let r = c.command(DLT, json!({"id": "r7", "method": "read_relay_state"})).await;
    assert_eq!(r["result"]["relay_state"], "open", "{r}");
    let r = c
        .command(DLT, json!({"id": "r8", "method": "relay_control", "params": {"state": "close", "mode": "allow"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert!(!meter.relay_open.load(Ordering::Relaxed));
    let r = c.command(DLT, json!({"id": "r9", "method": "read_relay_state"})).await;
    assert_eq!(r["result"]["relay_state"], "closed");

    let r = c.command(DLT, json!({"id": "r10", "method": "read_address"})).await;
    assert_eq!(r["result"]["address"], DLT, "{r}");

    let r =
        c.command(DLT, json!({"id": "r11", "method": "sync_time", "params": {"time": "2026-01-30T04:34:19Z"}})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["time"], "2026-01-30T04:34:19");
    eventually("clock set", 5, || meter.clock_set.lock().unwrap().is_some()).await;
    assert_eq!(meter.clock_set.lock().unwrap().unwrap().to_iso(), "2026-01-30T04:34:19");

    let r = c
        .command(DLT, json!({"id": "r12", "method": "read_obis", "params": {"obis": "1-0:12.7.0.255", "classId": 3}}))
        .await;
    assert_eq!(r["code"], "unsupported_for_protocol", "{r}");
    assert_eq!(sim.stats.overlaps.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn every_method_on_a_dlms_meter() {
    let (_gw, mut c, _, meter, _s, _d) = setup(false, DlmsMeter::em114070(DLMS)).await;

    let r =
        c.command(DLMS, json!({"id": "d1", "method": "read_register", "params": {"register": "VOLTAGE_TOTAL"}})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["obisCode"], "1-0:12.7.0.255");
    assert_eq!(r["result"]["value"], 236.36);
    assert_eq!(r["result"]["unit"], "V");
    assert_eq!(r["result"]["rawValue"], 23636);
    let r = c.command(DLMS, json!({"id": "d2", "method": "read_register", "params": {"obis": "1-0:14.7.0.255"}})).await;
    assert_eq!(r["result"]["value"], 50.04, "{r}");

    let r = c
        .command(
            DLMS,
            json!({"id": "d3", "method": "read_all", "params": {"registers": ["FREQUENCY", "1-0:11.7.0.255"]}}),
        )
        .await;
    assert_eq!(r["result"]["readings"]["CURRENT_TOTAL"]["value"], 5.234, "{r}");
    let r = c.command(DLMS, json!({"id": "d4", "method": "read_group", "params": {"group": "energy"}})).await;
    assert_eq!(r["result"]["readings"].as_object().unwrap().len(), 6, "{r}");
    assert_eq!(r["result"]["readings"]["TOTAL_ENERGY_ABSOLUTE"]["value"], 123.456);

    let r = c.command(DLMS, json!({"id": "d5", "method": "relay_control", "params": {"state": "open"}})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["output_state"], false);
    assert!(!meter.output_state.load(Ordering::Relaxed));
    let r = c.command(DLMS, json!({"id": "d6", "method": "read_relay_state"})).await;
    assert_eq!(r["result"]["relay_state"], "open", "{r}");
    assert_eq!(r["result"]["control_state"], 0);
    let r = c.command(DLMS, json!({"id": "d7", "method": "relay_control", "params": {"state": "close"}})).await;
    assert_eq!(r["result"]["output_state"], true, "{r}");

    let r = c.command(DLMS, json!({"id": "d8", "method": "read_address"})).await;
    assert_eq!(r["result"]["address"], DLMS, "{r}");
    let r =
        c.command(DLMS, json!({"id": "d9", "method": "sync_time", "params": {"time": "2026-01-30T04:34:19Z"}})).await;
    assert_eq!(r["success"], true, "{r}");
    let set = meter.clock_set.lock().unwrap().unwrap();
    assert_eq!(set.iso_local().as_deref(), Some("2026-01-30T04:34:19"));
    let r = c.command(DLMS, json!({"id": "d10", "method": "read_obis", "params": {"obis": "0-0:42.0.0.255", "classId": 1, "attribute": 2}})).await;
    assert_eq!(r["result"]["dataType"], "octet-string", "{r}");
    assert_eq!(r["result"]["obisCode"], "0-0:42.0.0.255");
    let r = c.command(DLMS, json!({"id": "d11", "method": "read_register", "params": {"dataId": "02010100"}})).await;
    assert_eq!(r["code"], "unsupported_for_protocol", "{r}");
}

#[tokio::test]
async fn dlms_relay_failures_are_never_success() {
    // A meter without the disconnect control object: object-undefined → meter_error at once.
    let (_gw, mut c, _, _, _s, _d) = setup(false, {
        let mut m = DlmsMeter::em114070(DLMS);
        m.has_disconnect_control = false;
        m
    })
    .await;
    let r = c.command(DLMS, json!({"id": "x2", "method": "relay_control", "params": {"state": "open"}})).await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["code"], "meter_error");
    assert!(r["error"].as_str().unwrap().contains("object-undefined"), "{r}");
    assert_eq!(r["result"]["error"], r["error"]);

    // A DLMS meter that answers nothing: timeout, never success.
    let muted = Arc::new(DlmsMeter::em114070("000000000321"));
    let cfg = DlmsConfig { heartbeat: true, mute: true, ..DlmsConfig::new(muted) };
    let _m = DlmsSim::connect(_gw.meters(), cfg).await.unwrap();
    c.wait("online", 10, |m| m.topic == "ivy/v1/meters/000000000321/status").await;
    let r =
        c.command("000000000321", json!({"id": "x3", "method": "relay_control", "params": {"state": "open"}})).await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["code"], "timeout");
}

#[tokio::test]
async fn dlt645_wrong_password_is_a_meter_error_and_a_silent_meter_a_timeout() {
    let gw = start(|c| {
        c.dlt645.password = "000000".into();
        c.commands.timeout_ms = 3000;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/#"]).await;
    let meter = dlt_meter(); // expects 123456/87654321
    let cfg = Dlt645Config::talk_first(vec![meter.clone()]);
    let sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    c.wait("online", 10, |m| m.topic.ends_with("/status")).await;
    let r = c.command(DLT, json!({"id": "w1", "method": "relay_control", "params": {"state": "open"}})).await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["code"], "meter_error");
    assert_eq!(r["result"]["error_flags"], json!(["password_error_or_unauthorized"]));
    assert!(!meter.relay_open.load(Ordering::Relaxed));
    assert_eq!(sim.stats.auth_failures.load(Ordering::Relaxed), 1);

    // A meter that stops answering: the relay command times out, never succeeds.
    let mute = Arc::new(Dlt645Meter::new("000000005555".parse::<Address>().unwrap()));
    let cfg = Dlt645Config {
        meters: vec![mute],
        identify: Identify::TalkFirst,
        latency: Default::default(),
        mute: true,
        faults: Default::default(),
    };
    let _mute_sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    c.wait("online", 10, |m| m.topic == "ivy/v1/meters/000000005555/status").await;
    let r =
        c.command("000000005555", json!({"id": "w2", "method": "relay_control", "params": {"state": "close"}})).await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["code"], "timeout");
}

#[tokio::test]
async fn invalid_requests_get_the_documented_codes() {
    let (_gw, mut c, _, _, _s, _d) = setup(false, DlmsMeter::em114070(DLMS)).await;
    let topic = format!("ivy/v1/meters/{DLT}/command/request");
    let publisher = c.client.clone();
    let send = |payload: &'static str| {
        let client = publisher.clone();
        let topic = topic.clone();
        async move { client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.unwrap() }
    };
    send(r#"{"id": "bad1", "method": "read_register", "params": {"#).await;
    let r = c.wait("invalid_json", 5, |m| m.topic.ends_with("/command/response") && m.json["id"] == "bad1").await;
    assert_eq!(r.json["code"], "invalid_json");
    send(r#"{"method": "read_address"}"#).await;
    let r = c.wait("missing_id", 5, |m| m.topic.ends_with("/command/response") && m.json["code"] == "missing_id").await;
    assert_eq!(r.json["success"], false);
    for (id, req, code) in [
        ("v1", json!({"id": "v1"}), "missing_method"),
        ("v2", json!({"id": "v2", "method": "launch"}), "unknown_method"),
        ("v3", json!({"id": "v3", "method": "relay_control", "params": {"state": "sideways"}}), "invalid_params"),
        (
            "v4",
            json!({"id": "v4", "method": "read_register", "params": {"register": "NO_SUCH_THING"}}),
            "unknown_register",
        ),
        ("v5", json!({"id": "v5", "method": "read_group", "params": {"group": "nope"}}), "unknown_register"),
    ] {
        let r = c.command(DLT, req).await;
        assert_eq!(r["code"], code, "{id}: {r}");
        assert_eq!(r["success"], false);
        assert!(r["result"]["error"].is_string());
    }
    let r = c.command("999999999999", json!({"id": "v6", "method": "read_address"})).await;
    assert_eq!(r["code"], "meter_not_connected", "{r}");
}

#[tokio::test]
async fn a_command_during_a_poll_waits_its_turn() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 1000;
        c.polling.first_poll_delay_ms = 0;
        c.dlt645.timeout_ms = 2000;
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/#"]).await;
    let meter = dlt_meter();
    let cfg = Dlt645Config {
        meters: vec![meter],
        identify: Identify::TalkFirst,
        latency: ReplyLatency::Fixed(Duration::from_millis(60)),
        mute: false,
        faults: Default::default(),
    };
    let sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    // The first poll (9 registers × 60 ms) is in flight as soon as the meter is online.
    c.wait("first telemetry", 10, |m| m.topic.ends_with("/telemetry")).await;
    for i in 0..5 {
        let r = c
            .command(
                DLT,
                json!({"id": format!("p{i}"), "method": "read_register", "params": {"register": "VOLTAGE_A"}}),
            )
            .await;
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["result"]["value"], 230.1);
    }
    assert_eq!(
        sim.stats.overlaps.load(Ordering::Relaxed),
        0,
        "a request was sent before the previous one was answered"
    );
    assert!(sim.stats.requests.load(Ordering::Relaxed) >= 14);
}
