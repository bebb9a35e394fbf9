//! The SQLite store (SPEC 8) with the real gateway, simulated meters and a real database file: every published
//! reading is stored, a restart remembers meters, alarms and acknowledgements, history aggregates and CSV are
//! right for a known series.

use crate::harness::*;
use ivy_gateway::hub::HubEvent;
use ivy_gateway::model::{Quantity, Reading, ReadingValue, Source};
use ivy_protocol::dlt645::Address;
use ivy_protocol::registration::MeterId;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn http(gw: &TestGateway) -> (reqwest::Client, String) {
    let addr = gw.gw.addrs().http.expect("HTTP is on");
    (reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(), format!("http://{addr}"))
}

async fn get_json(gw: &TestGateway, path: &str) -> (reqwest::StatusCode, Value) {
    let (c, base) = http(gw);
    let r = c.get(format!("{base}{path}")).basic_auth(VIEWER.0, Some(VIEWER.1)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_text(gw: &TestGateway, path: &str, accept: Option<&str>) -> (reqwest::StatusCode, String, String) {
    let (c, base) = http(gw);
    let mut rb = c.get(format!("{base}{path}")).basic_auth(VIEWER.0, Some(VIEWER.1));
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

/// Stored readings per (meter, register), read from the database file itself.
fn stored_counts(gw: &TestGateway) -> BTreeMap<(String, String), u64> {
    let conn = gw.gw.store().expect("store on").reader().unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT m.meter_id, g.key, count(*) FROM readings r JOIN meters m ON m.id = r.meter
             JOIN registers g ON g.id = r.register GROUP BY 1, 2",
        )
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn readings_written_equal_readings_published_per_meter_and_register() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 200;
        c.polling.group = "instantaneous".into();
        c.store.batch_ms = 50;
    })
    .await;
    let mut sub = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry"]).await;
    let mut sims = Vec::new();
    for n in 1..=3u64 {
        let meter = Arc::new(Dlt645Meter::new(format!("{n:012}").parse::<Address>().unwrap()));
        sims.push(Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for s in sims {
        s.close().await;
    }
    // Everything published until the meters went away, then a quiet second.
    let mut published: BTreeMap<(String, String), u64> = BTreeMap::new();
    loop {
        let msgs = sub.collect(1000).await;
        if msgs.is_empty() {
            break;
        }
        for m in msgs.iter().filter(|m| m.json["value"].is_number()) {
            let key = (m.json["meterId"].as_str().unwrap().to_owned(), m.json["register"].as_str().unwrap().to_owned());
            *published.entry(key).or_default() += 1;
        }
    }
    let total: u64 = published.values().sum();
    assert!(published.len() >= 3 && total >= 30, "too little traffic to compare: {published:?}");
    eventually("the store to hold every published reading", 10, || stored_counts(&gw) == published).await;
    let stored = stored_counts(&gw);
    println!("published {total} numeric readings in {} series; stored the same per meter and register", stored.len());
    let store = gw.gw.store().unwrap();
    assert_eq!(store.status.readings_written.load(std::sync::atomic::Ordering::Relaxed), total);
    let (_, health) = get_json(&gw, "/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    let (c, base) = http(&gw);
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ivy_store_dropped_total 0"), "{metrics}");
    assert!(metrics.contains(&format!("ivy_store_written_total {total}")), "{metrics}");
}

#[tokio::test]
async fn restart_lists_meters_with_last_values_and_keeps_alarms_and_acknowledgements() {
    const METER: &str = "000000007788";
    let tweak = |c: &mut ivy_gateway::config::Config| {
        c.polling.enabled = true;
        c.polling.interval_ms = 300;
        c.polling.group = "instantaneous".into();
        c.alarms.offline_grace_secs = 3600;
    };
    let gw = start(tweak).await;
    let mut sub = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/events"]).await;
    let meter = Arc::new(Dlt645Meter::new(METER.parse::<Address>().unwrap()));
    meter.set(0x0201_0100, 262.5);
    let sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter.clone()])).await.unwrap();
    let alarm = sub.wait("overvoltage", 15, |m| m.json["event"] == "alarm:overvoltage").await;
    let alarm_id = alarm.json["data"]["id"].as_str().unwrap().to_owned();
    let (c, base) = http(&gw);
    let r = c
        .post(format!("{base}/api/alarms/{alarm_id}/ack"))
        .basic_auth(OPERATOR.0, Some(OPERATOR.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sim.close().await;
    sub.wait("offline", 10, |_| true).await;
    // Committed within a batch window.
    let mut before = Value::Null;
    for _ in 0..50 {
        before = get_json(&gw, &format!("/api/meters/{METER}/readings?register=VOLTAGE_A")).await.1;
        if before["count"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(before["source"], "store", "{before}");
    assert!(before["count"].as_u64().unwrap() >= 1, "{before}");

    let TestGateway { gw: inner, _dir: dir } = gw;
    inner.shutdown().await;
    assert!(!dir.path().join("alarm-acks.json").exists(), "acknowledgements live in the store");
    let gw = start_in(dir, tweak).await;

    let (_, list) = get_json(&gw, "/api/meters").await;
    let row = list["meters"].as_array().unwrap().iter().find(|m| m["meterId"] == METER).cloned();
    let row = row.unwrap_or_else(|| panic!("the meter is listed after a restart: {list}"));
    assert_eq!(row["online"], false, "{row}");
    assert_eq!(row["activeAlarms"], 1, "{row}");
    let (_, detail) = get_json(&gw, &format!("/api/meters/{METER}")).await;
    assert_eq!(detail["readings"]["VOLTAGE_A"]["value"], 262.5, "{detail}");
    assert_eq!(detail["readings"]["VOLTAGE_A"]["unit"], "V", "{detail}");
    let (_, alarms) = get_json(&gw, "/api/alarms").await;
    let a = alarms["alarms"].as_array().unwrap().iter().find(|a| a["id"] == alarm_id.as_str()).cloned();
    let a = a.unwrap_or_else(|| panic!("the alarm is active after a restart: {alarms}"));
    assert_eq!(a["acknowledged"], true, "{a}");
    let (_, all) = get_json(&gw, "/api/alarms?state=all").await;
    assert_eq!(all["source"], "store");
    assert!(
        all["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == alarm_id.as_str() && a["acknowledgedBy"] == OPERATOR.0),
        "{all}"
    );
    let (_, history) = get_json(&gw, &format!("/api/meters/{METER}/readings?register=VOLTAGE_A")).await;
    assert_eq!(history["count"], before["count"], "history survives: {history}");
    let (_, events) = get_json(&gw, &format!("/api/events?meter={METER}")).await;
    assert_eq!(events["source"], "store");
    let names: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(names.contains(&"alarm:overvoltage") && names.contains(&"alarm_acknowledged"), "{names:?}");

    // Retained topics say what the store knows: offline now, last snapshot.
    let status = retained(gw.mqtt(), &format!("ivy/v1/meters/{METER}/status")).await;
    assert_eq!(status.json["online"], false, "{:?}", status.json);
    assert!(status.json["connectedAt"].as_u64().is_some(), "names the last connection: {:?}", status.json);
    let snapshot = retained(gw.mqtt(), &format!("ivy/v1/meters/{METER}/snapshot")).await;
    assert_eq!(snapshot.json["readings"]["VOLTAGE_A"]["value"], 262.5, "{:?}", snapshot.json);

    // The meter comes back: online again, the alarm clears once when the voltage is normal.
    let mut sub = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/events"]).await;
    meter.set(0x0201_0100, 230.0);
    let _sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    sub.wait("cleared", 15, |m| m.json["event"] == "alarm_cleared:overvoltage").await;
    let (_, list) = get_json(&gw, "/api/meters").await;
    let row = list["meters"].as_array().unwrap().iter().find(|m| m["meterId"] == METER).cloned().unwrap();
    assert_eq!(row["online"], true, "{row}");
}

fn known_reading(register: &str, value: f64, ts: u64) -> Reading {
    Reading {
        meter_id: MeterId::new("store-series").unwrap(),
        source: Source::Dlms,
        register: register.into(),
        data_id: "1-0:32.7.0.255".into(),
        value: ReadingValue::Number(value),
        raw_value: serde_json::json!(value),
        unit: Some("V".into()),
        quantity: Quantity::Voltage,
        ts,
        meta: Default::default(),
    }
}

#[tokio::test]
async fn history_step_aggregates_and_csv_export_of_a_known_series() {
    let gw = start(|_| {}).await;
    let hour = 3_600_000u64;
    let base = (ivy_gateway::model::now_ms() - 3 * hour) / hour * hour;
    // Three hours, one reading a minute: value = minute index (0..180) plus a fraction that CSV must keep.
    let values: Vec<(u64, f64)> = (0..180u64).map(|i| (base + i * 60_000, i as f64 + 0.125)).collect();
    for chunk in values.chunks(10) {
        gw.gw.meters().hub.publish(HubEvent::Readings {
            meter_id: MeterId::new("store-series").unwrap(),
            source: Source::Dlms,
            readings: chunk.iter().map(|(ts, v)| known_reading("VOLTAGE_L1", *v, *ts)).collect(),
            snapshot: true,
        });
    }
    let path = "/api/meters/store-series/readings?register=voltage_l1&limit=10000";
    let mut raw = Value::Null;
    for _ in 0..100 {
        raw = get_json(&gw, path).await.1;
        if raw["count"] == 180 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raw["count"], 180, "{raw}");
    assert_eq!(raw["source"], "store");

    let (s, b) =
        get_json(&gw, &format!("/api/meters/store-series/readings?register=VOLTAGE_L1&step=1h&from={base}")).await;
    assert_eq!(s, 200, "{b}");
    let buckets = b["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{b}");
    for (h, bucket) in buckets.iter().enumerate() {
        let first = h as f64 * 60.0 + 0.125;
        assert_eq!(bucket["ts"], base + h as u64 * hour, "{bucket}");
        assert_eq!(bucket["min"], first, "{bucket}");
        assert_eq!(bucket["max"], first + 59.0, "{bucket}");
        assert_eq!(bucket["last"], first + 59.0, "{bucket}");
        assert_eq!(bucket["avg"], first + 29.5, "{bucket}");
        assert_eq!(bucket["count"], 60, "{bucket}");
        assert_eq!(bucket["unit"], "V");
    }
    let (s, _) = get_json(&gw, "/api/meters/store-series/readings?step=7parsecs").await;
    assert_eq!(s, 400);

    // CSV: by format and by Accept, header row first, parses back to the same values.
    for (query, accept) in [("&format=csv", None), ("", Some("text/csv"))] {
        let (s, ct, text) =
            get_text(&gw, &format!("/api/meters/store-series/readings?register=VOLTAGE_L1{query}"), accept).await;
        assert_eq!(s, 200, "{text}");
        assert!(ct.starts_with("text/csv"), "{ct}");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("meter_id,register,ts,time,value,unit"));
        let parsed: Vec<(u64, f64)> = lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!((f[0], f[1], f[5]), ("store-series", "VOLTAGE_L1", "V"), "{l}");
                (f[2].parse().unwrap(), f[4].parse().unwrap())
            })
            .collect();
        assert_eq!(parsed, values);
    }
    let (_, _, text) = get_text(&gw, "/api/meters/store-series/readings?step=1h&format=csv", None).await;
    assert_eq!(text.lines().count(), 4, "header and three buckets: {text}");

    // The command line export of the same file, after a clean stop.
    let TestGateway { gw: inner, _dir: dir } = gw;
    inner.shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .args(["db", "export", "--meter", "store-series", "--from", &base.to_string()])
        .env("DATA_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: Vec<(u64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect();
    assert_eq!(parsed, values);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .args(["db", "check"])
        .env("DATA_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("integrity: ok") && report.contains("readings: 180"), "{report}");
}
