//! Polling (DL/T 645 and DLMS active mode) and DLMS pushes: every value arrives once, in the spec's unit.

use crate::harness::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlms::{Control, DlmsConfig, DlmsMeter, DlmsSim, PushForm};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

fn telemetry_by_register(msgs: &[Msg]) -> HashMap<String, Vec<Value>> {
    let mut map: HashMap<String, Vec<Value>> = HashMap::new();
    for m in msgs.iter().filter(|m| m.topic.ends_with("/telemetry")) {
        map.entry(m.json["register"].as_str().unwrap().to_owned()).or_default().push(m.json.clone());
    }
    map
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test]
async fn dlt645_all_group_is_polled_with_the_meters_values_in_spec_units() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.group = "all".into();
        c.polling.interval_ms = 1000;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/snapshot"]).await;
    let meter = Arc::new(Dlt645Meter::new("000000001234".parse::<Address>().unwrap()));
    meter.set(0x0203_0000, 1.2345); // raw 012345 → 1.2345 kW
    let cfg = Dlt645Config::talk_first(vec![meter.clone()]);
    let _sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    let first = c.until("first snapshot", 10, |m| m.topic.ends_with("/snapshot")).await;
    let by_reg = telemetry_by_register(&first);
    let expected: [(&str, u32, &str); 9] = [
        ("COMBINED_ACTIVE_ENERGY", 0x0000_0000, "kWh"),
        ("VOLTAGE_A", 0x0201_0100, "V"),
        ("CURRENT_A", 0x0202_0100, "A"),
        ("ACTIVE_POWER_TOTAL", 0x0203_0000, "kW"),
        ("POWER_FACTOR_TOTAL", 0x0206_0000, ""),
        ("FREQUENCY", 0x0280_0002, "Hz"),
        ("FORWARD_ACTIVE_ENERGY_T1", 0x0001_0100, "kWh"),
        ("FORWARD_ACTIVE_ENERGY_T2", 0x0001_0200, "kWh"),
        ("REACTIVE_POWER_TOTAL", 0x0204_0000, "kvar"),
    ];
    assert_eq!(by_reg.len(), 9, "one cycle publishes the 9 registers of `all`: {by_reg:?}");
    for (key, di, unit) in expected {
        let msgs = &by_reg[key];
        assert_eq!(msgs.len(), 1, "{key}: exactly one message per reading");
        let t = &msgs[0];
        assert!(close(&t["value"], meter.get(di).unwrap()), "{key}: {t}");
        assert_eq!(t["dataId"], format!("0x{di:08x}"));
        assert_eq!(t["source"], "dlt645");
        assert_eq!(t["meterId"], "000000001234");
        if unit.is_empty() {
            assert!(t["unit"].is_null(), "{key}: {t}");
        } else {
            assert_eq!(t["unit"], unit, "{key}");
        }
    }
    assert_eq!(by_reg["ACTIVE_POWER_TOTAL"][0]["rawValue"], 12345);
    // The snapshot is retained and holds every register.
    let snap = retained(gw.mqtt(), "ivy/v1/meters/000000001234/snapshot").await;
    assert_eq!(snap.json["readings"].as_object().unwrap().len(), 9);
    assert!(close(&snap.json["readings"]["ACTIVE_POWER_TOTAL"]["value"], 1.2345));
    // The next cycle (1 s later) publishes the 9 again, once each.
    let second = c.until("second snapshot", 5, |m| m.topic.ends_with("/snapshot")).await;
    assert!(telemetry_by_register(&second).values().all(|v| v.len() == 1));
    assert_eq!(telemetry_by_register(&second).len(), 9);
}

fn em(id: &str) -> Arc<DlmsMeter> {
    Arc::new(DlmsMeter::em114070(id))
}

#[tokio::test]
async fn dlms_all_group_in_active_mode_is_scaled_into_spec_units() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.group = "all".into();
        c.polling.interval_ms = 60_000;
        c.dlms.passive_only = false;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/snapshot"]).await;
    let meter = em("311501114070");
    let cfg = DlmsConfig { heartbeat: true, ..DlmsConfig::new(meter.clone()) };
    let sim = DlmsSim::connect(gw.meters(), cfg).await.unwrap();
    let msgs = c.until("snapshot", 10, |m| m.topic.ends_with("/snapshot")).await;
    let by_reg = telemetry_by_register(&msgs);
    let expected: [(&str, f64, Option<&str>); 10] = [
        ("TOTAL_ENERGY_ABSOLUTE", 123.456, Some("kWh")),
        ("VOLTAGE_TOTAL", 236.36, Some("V")),
        ("CURRENT_TOTAL", 5.234, Some("A")),
        ("ACTIVE_POWER_IMPORT", 1180.0, Some("W")),
        ("FREQUENCY", 50.04, Some("Hz")),
        ("CURRENT_TARIFF", 1.0, None),
        ("CURRENT_NEUTRAL", 0.012, Some("A")),
        ("REACTIVE_POWER_IMPORT", 120.0, Some("var")),
        ("APPARENT_POWER_IMPORT", 1200.0, Some("VA")),
        ("POWER_FACTOR_TOTAL", 0.987, None),
    ];
    assert_eq!(by_reg.len(), 10, "{by_reg:?}");
    for (key, value, unit) in expected {
        let t = &by_reg[key];
        assert_eq!(t.len(), 1, "{key}: exactly one message");
        assert!(close(&t[0]["value"], value), "{key}: {}", t[0]);
        assert_eq!(t[0]["source"], "dlms");
        match unit {
            Some(u) => assert_eq!(t[0]["unit"], u, "{key}"),
            None => assert!(t[0]["unit"].is_null(), "{key}: {}", t[0]),
        }
    }
    assert_eq!(by_reg["VOLTAGE_TOTAL"][0]["dataId"], "1-0:12.7.0.255");
    assert_eq!(by_reg["VOLTAGE_TOTAL"][0]["rawValue"], 23636);
    // AARQ → GETs → RLRQ: the association was opened and released.
    let s = &sim.stats;
    eventually("release", 5, || s.releases.load(std::sync::atomic::Ordering::Relaxed) >= 1).await;
    assert_eq!(s.associations.load(std::sync::atomic::Ordering::Relaxed), 1);
    let snap = retained(gw.mqtt(), "ivy/v1/meters/311501114070/snapshot").await;
    assert_eq!(snap.json["source"], "dlms");
}

#[tokio::test]
async fn dlms_pushes_produce_one_telemetry_message_per_value() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let cfg = DlmsConfig { heartbeat: true, ..DlmsConfig::new(em("000000000777")) };
    let sim = DlmsSim::connect(gw.meters(), cfg).await.unwrap();
    c.wait("online", 10, |m| m.topic.ends_with("/status")).await;

    for form in [PushForm::EventStandard, PushForm::EventEm114070] {
        sim.control(Control::Push(form)).await;
        let m = c.wait("event push", 5, |m| m.topic.ends_with("/telemetry")).await;
        assert_eq!(m.json["source"], "dlms");
        assert!(m.json["value"].is_number(), "{form:?}: {}", m.json);
        assert!(c.collect(300).await.is_empty(), "{form:?}: one EventNotification is one message");
    }
    sim.control(Control::Push(PushForm::DataNotification)).await;
    let mut msgs = vec![c.wait("data push", 5, |m| m.topic.ends_with("/telemetry")).await];
    msgs.extend(c.collect(500).await);
    let by_reg = telemetry_by_register(&msgs);
    // The simulated DataNotification carries the 9 scaled registers as (OBIS, value) pairs.
    assert_eq!(by_reg.len(), 9, "{by_reg:?}");
    assert!(by_reg.values().all(|v| v.len() == 1));
    assert!(close(&by_reg["VOLTAGE_TOTAL"][0]["value"], 236.36));
}
