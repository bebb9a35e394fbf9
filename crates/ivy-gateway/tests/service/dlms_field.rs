//! DLMS as deployed meters send it (issue 12): every push layout, the meter's capture time, meter-local time in
//! an IANA zone across DST changes, malformed replies failing the request at once, back-off after a permanent
//! association rejection, unknown scalers kept away from the alarm engine, and silent DLMS meters identified by a
//! probe. Real gateway, simulated meters (or a hand-written one where the fault is the point), real MQTT client.

use crate::harness::*;
use ivy_protocol::dlms::apdu::{Aare, Apdu, Conformance, Release};
use ivy_protocol::wrapper::{self, Framer, FramerEvent};
use ivy_sim::dlms::{Control, DlmsConfig, DlmsMeter, DlmsSim, PushClock, PushForm};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Example A of the issue: `{OBIS, value, {scaler, unit}}` triples and a text pair.
const EXAMPLE_A: &str = "0f40000000000103 0203 0906 0100200700ff 120944 0202 0fff 1623  0203 0906 0100010700ff \
                         0600000011 0202 0f00 161b  0202 0906 0101000281ff 0a0b 4149444f4e5f5630303031";
/// Example B: a list identifier, then flat pairs; header date-time without deviation.
const EXAMPLE_B: &str = "0f00000000 0c07e80301050c251eff800000 0205 0a09 4c4953545f56303031 0906 0101200700ff \
                         1200e2 0906 0101010700ff 0600000010";
/// Example C: capture time 23:45 local with deviation −120 (21:45Z); a voltage without any scaler.
const EXAMPLE_C: &str = "0f00020b41 0c07e9051005172d0000ff8880 0202 0202 0906 0100010800ff 06000000f6 0202 0906 \
                         0100200700ff 120915";
/// Example D: GET-with-list response whose second result has an invalid choice.
const EXAMPLE_D: &str = "c4 03 c1 02 00 00 02 05 12 02 d0 12 0c a8 11 18 11 1f 0f c0";

fn bytes(hex: &str) -> Vec<u8> {
    hex::decode(hex.replace(' ', "")).unwrap()
}

fn wrapped(hex: &str) -> Vec<u8> {
    wrapper::wrap(1, 1, &bytes(hex)).unwrap()
}

fn em(meter: Arc<DlmsMeter>, heartbeat: bool) -> DlmsConfig {
    DlmsConfig { heartbeat, ..DlmsConfig::new(meter) }
}

async fn online(c: &mut Client, meter: &str) {
    let topic = format!("ivy/v1/meters/{meter}/status");
    c.wait(&format!("{meter} online"), 10, |m| m.topic == topic && m.json["online"] == true).await;
}

/// The next `n` telemetry messages of `meter`, by `dataId`.
async fn telemetry(c: &mut Client, meter: &str, n: usize) -> HashMap<String, Value> {
    let topic = format!("ivy/v1/meters/{meter}/telemetry");
    let mut out = HashMap::new();
    while out.len() < n {
        let m = c.wait(&format!("{n} telemetry messages (have {out:?})"), 10, |m| m.topic == topic).await;
        out.insert(m.json["dataId"].as_str().unwrap().to_owned(), m.json);
    }
    out
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

async fn metrics_text(gw: &TestGateway) -> String {
    let addr = gw.gw.addrs().http.expect("HTTP is on");
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of the metric line that starts with `prefix` (name and labels), 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn pushing_meter(gw: &TestGateway, c: &mut Client, id: &str) -> DlmsSim {
    let sim = DlmsSim::connect(gw.meters(), em(Arc::new(DlmsMeter::em114070(id)), true)).await.unwrap();
    online(c, id).await;
    sim
}

#[tokio::test]
async fn example_a_triples_apply_the_pushed_scaler_and_unit() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let sim = pushing_meter(&gw, &mut c, "AIDON0000001").await;
    sim.control(Control::SendRaw(wrapped(EXAMPLE_A))).await;
    let t = telemetry(&mut c, "AIDON0000001", 3).await;
    let v = &t["1-0:32.7.0.255"];
    assert!(close(&v["value"], 237.2), "{v}");
    assert_eq!(
        (v["unit"].as_str(), v["rawValue"].as_i64(), v["register"].as_str()),
        (Some("V"), Some(2372), Some("VOLTAGE_L1"))
    );
    assert_eq!(v["scalerKnown"], true);
    let p = &t["1-0:1.7.0.255"];
    assert!(close(&p["value"], 17.0), "{p}");
    assert_eq!(p["unit"], "W");
    // Unknown object: published under its OBIS code, with the raw (text) value.
    let id = &t["1-1:0.2.129.255"];
    assert_eq!(id["value"], "AIDON_V0001");
    assert_eq!(id["register"], "OBIS_1_1_0_2_129_255");
    // No capture time in the header: stamped on arrival.
    for m in t.values() {
        assert_eq!(m["tsSource"], "gateway", "{m}");
        assert_eq!(m["ts"], m["receivedAt"], "{m}");
    }
}

#[tokio::test]
async fn example_b_list_identifier_and_flat_pairs_with_meter_local_capture_time() {
    let gw = start(|c| c.meters.timezone = Some("Europe/Oslo".into())).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let sim = pushing_meter(&gw, &mut c, "AIDON0000002").await;
    let before = metric(&metrics_text(&gw).await, "ivy_dlms_capture_time_skewed_total");
    sim.control(Control::SendRaw(wrapped(EXAMPLE_B))).await;
    let t = telemetry(&mut c, "AIDON0000002", 2).await;
    let v = &t["1-1:32.7.0.255"];
    assert!(close(&v["value"], 226.0), "{v}");
    assert_eq!(v["unit"], "V");
    let p = &t["1-1:1.7.0.255"];
    assert!(close(&p["value"], 16.0), "{p}");
    assert_eq!(p["unit"], "W");
    for m in t.values() {
        // 2024-03-01 12:37:30 meter-local, deviation not specified → Europe/Oslo (CET, +01:00) → 11:37:30Z.
        assert_eq!(m["ts"], 1_709_293_050_000u64, "{m}");
        assert_eq!(m["tsSource"], "meter");
        // Years away from the gateway clock: kept, flagged and counted.
        assert_eq!(m["tsSkewed"], true, "{m}");
        assert!(m["receivedAt"].as_u64().unwrap() > 1_760_000_000_000, "{m}");
    }
    let after = metric(&metrics_text(&gw).await, "ivy_dlms_capture_time_skewed_total");
    assert!(after >= before + 1.0, "skewed capture times are counted ({before} → {after})");
}

#[tokio::test]
async fn example_c_capture_time_and_unknown_scaler_never_raises_an_alarm() {
    let gw = start(|c| {
        // Scaler table for one model of meter (ids starting with SCALED).
        c.dlms.scaler_tables = vec![ivy_gateway::config::ScalerTable {
            meters: vec!["SCALED*".into()],
            scalers: [("1-0:32.7.0.255".to_owned(), -1)].into_iter().collect(),
        }];
    })
    .await;
    let mut c =
        client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status", "ivy/v1/meters/+/events"])
            .await;
    let sim = pushing_meter(&gw, &mut c, "KAIFA0000003").await;
    sim.control(Control::SendRaw(wrapped(EXAMPLE_C))).await;
    let t = telemetry(&mut c, "KAIFA0000003", 2).await;
    for m in t.values() {
        assert_eq!(m["ts"], 1_747_431_900_000u64, "2025-05-16T21:45:00Z: {m}");
        assert_eq!(m["tsSource"], "meter");
    }
    let v = &t["1-0:32.7.0.255"];
    assert!(close(&v["value"], 2325.0), "{v}");
    assert_eq!(v["scalerKnown"], false, "{v}");
    let alarms = c.collect(1500).await;
    assert!(
        !alarms.iter().any(|m| m.json["event"].as_str().is_some_and(|e| e.starts_with("alarm:"))),
        "an unscaled 2325 must not raise an alarm: {alarms:?}"
    );
    // The same push from a meter the scaler table covers: 232.5 V, known.
    let sim2 = pushing_meter(&gw, &mut c, "SCALED000004").await;
    sim2.control(Control::SendRaw(wrapped(EXAMPLE_C))).await;
    let t = telemetry(&mut c, "SCALED000004", 2).await;
    assert!(close(&t["1-0:32.7.0.255"]["value"], 232.5), "{}", t["1-0:32.7.0.255"]);
    assert_eq!(t["1-0:32.7.0.255"]["scalerKnown"], true);
}

#[tokio::test]
async fn every_simulator_push_layout_publishes_the_same_scaled_values() {
    let objects: Vec<ivy_gateway::config::Parsed<ivy_protocol::dlms::Obis>> =
        DlmsMeter::em114070("0").push_object_list().iter().map(|(o, _)| o.to_string().into()).collect();
    let gw = start(move |c| c.dlms.push_objects = objects).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let sim = pushing_meter(&gw, &mut c, "LAYOUT000001").await;
    for form in PushForm::ALL.into_iter().filter(PushForm::is_data) {
        sim.control(Control::Push(form)).await;
        let t = telemetry(&mut c, "LAYOUT000001", 9).await;
        let v = &t["1-0:12.7.0.255"];
        assert!(close(&v["value"], 236.36), "{form:?}: {v}");
        assert_eq!(v["register"], "VOLTAGE_TOTAL", "{form:?}");
        assert_eq!(v["unit"], "V", "{form:?}");
        assert!(close(&t["1-0:15.8.0.255"]["value"], 123.456), "{form:?}: {}", t["1-0:15.8.0.255"]);
        assert!(c.collect(300).await.is_empty(), "{form:?}: nine values, nine messages");
    }
}

#[tokio::test]
async fn unplaceable_elements_are_skipped_counted_and_the_rest_published() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let sim = pushing_meter(&gw, &mut c, "MIXED0000001").await;
    // [{1-0:1.7.0.255, 5}, unsigned 9 (no OBIS, no push_objects), {1-0:12.7.0.255, 23000}]
    let body = "0f00000001 00 0103 0202 0906 0100010700ff 0500000005 1109 0202 0906 01000c0700ff 06000059d8";
    sim.control(Control::SendRaw(wrapped(body))).await;
    let t = telemetry(&mut c, "MIXED0000001", 2).await;
    assert!(close(&t["1-0:12.7.0.255"]["value"], 230.0));
    assert!(c.collect(300).await.is_empty(), "nothing invented for the unplaced element");
    let text = metrics_text(&gw).await;
    assert!(metric(&text, "ivy_parse_errors_total{kind=\"push_element_skipped\"}") >= 1.0, "{text}");
}

#[tokio::test]
async fn meter_local_clocks_follow_the_zone_across_dst_changes() {
    let gw = start(|c| {
        c.meters.timezone = Some("Europe/Berlin".into());
        c.meters.meter_overrides.insert(
            "SHANGHAI0001".into(),
            ivy_gateway::config::MeterOverride { timezone: Some("Asia/Shanghai".into()), ..Default::default() },
        );
    })
    .await;
    let mut c = client(
        gw.mqtt(),
        ADMIN,
        &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status", "ivy/v1/meters/+/command/response"],
    )
    .await;
    let sim = pushing_meter(&gw, &mut c, "BERLIN000001").await;
    // Header date-time 2025-10-26 02:30:00, deviation not specified; clock status DST (0x80), then standard (0x00):
    // the hour that happens twice, told apart by the meter's DST flag. The value is a CLOCK pushed without deviation.
    let push = |status: &str, clock: &str| {
        format!("0f00000001 0c 07e90a1a07021e00008000{status} 0101 0202 0906 0000010000ff 090c {clock}")
    };
    sim.control(Control::SendRaw(wrapped(&push("80", "07e9031e07031e0000800080")))).await;
    let m = telemetry(&mut c, "BERLIN000001", 1).await.remove("0-0:1.0.0.255").unwrap();
    assert_eq!(m["ts"], 1_761_438_600_000u64, "02:30 CEST = 00:30Z: {m}");
    // 2025-03-30 03:30 (just after the spring-forward gap) published with its explicit offset.
    assert_eq!(m["value"], "2025-03-30T03:30:00+02:00");
    sim.control(Control::SendRaw(wrapped(&push("00", "07e9031e07011e0000800000")))).await;
    let m = telemetry(&mut c, "BERLIN000001", 1).await.remove("0-0:1.0.0.255").unwrap();
    assert_eq!(m["ts"], 1_761_442_200_000u64, "02:30 CET = 01:30Z: {m}");
    assert_eq!(m["value"], "2025-03-30T01:30:00+01:00");
    // A meter with its own zone: the EM114070's clock read by a command, in Asia/Shanghai.
    let _sh = pushing_meter(&gw, &mut c, "SHANGHAI0001").await;
    let r = c
        .command(
            "SHANGHAI0001",
            serde_json::json!({"id": "clk", "method": "read_register", "params": {"register": "CLOCK"}}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["result"]["value"], "2026-01-30T04:34:19+08:00", "{r}");
}

#[tokio::test]
async fn event_notification_time_is_the_capture_time_in_the_meter_zone() {
    use ivy_protocol::dlms::apdu::{EventForm, EventNotification};
    use ivy_protocol::dlms::{AttributeDescriptor, CosemDateTime, Data};
    let gw = start(|c| c.meters.timezone = Some("Europe/Berlin".into())).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let sim = pushing_meter(&gw, &mut c, "EVENT0000001").await;
    // 2025-05-16 23:45:00 meter-local, deviation not specified, DST flag set: 21:45Z in Europe/Berlin (CEST).
    let time: [u8; 12] = bytes("07e9051005172d0000800080").try_into().unwrap();
    let event = Apdu::EventNotification(EventNotification {
        time: Some(CosemDateTime::from_bytes(&time)),
        attribute: AttributeDescriptor::new(3, "1-0:1.7.0.255".parse().unwrap(), 2),
        value: Data::DoubleLong(1234),
        form: EventForm::Standard,
    });
    sim.control(Control::SendRaw(wrapper::wrap(1, 1, &event.encode()).unwrap())).await;
    let m = telemetry(&mut c, "EVENT0000001", 1).await.remove("1-0:1.7.0.255").unwrap();
    assert_eq!(m["ts"], 1_747_431_900_000u64, "23:45 CEST = 21:45Z: {m}");
    assert_eq!(m["tsSource"], "meter", "{m}");
    assert!(m["receivedAt"].as_u64().unwrap() > m["ts"].as_u64().unwrap(), "{m}");
    assert_eq!(m["tsSkewed"], true, "a capture time of 2025 is far from the gateway clock: {m}");
}

#[tokio::test]
async fn simulator_clock_without_deviation_is_resolved_in_the_meter_zone() {
    let gw = start(|c| c.meters.timezone = Some("America/New_York".into())).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry", "ivy/v1/meters/+/status"]).await;
    let mut meter = DlmsMeter::em114070("NEWYORK00001");
    let zone = ivy_protocol::dlms::MeterZone::iana("America/New_York").unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    meter.push_clock = Some(PushClock { offset_minutes: zone.offset_at(now_ms), deviation: false });
    let sim = DlmsSim::connect(gw.meters(), em(Arc::new(meter), true)).await.unwrap();
    online(&mut c, "NEWYORK00001").await;
    sim.control(Control::Push(PushForm::DataFlat)).await;
    let t = telemetry(&mut c, "NEWYORK00001", 9).await;
    for m in t.values() {
        assert_eq!(m["tsSource"], "meter", "{m}");
        let skew = m["receivedAt"].as_i64().unwrap() - m["ts"].as_i64().unwrap();
        assert!((0..5_000).contains(&skew), "capture time resolved in the zone, close to arrival: {m}");
        assert!(m.get("tsSkewed").is_none_or(|v| v == false), "{m}");
    }
}

/// A hand-written DLMS meter: heartbeat, then answers the AARQ and the first request with `reply`.
async fn scripted_meter(gw: &TestGateway, id: &str, reply: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let mut s = tokio::net::TcpStream::connect(gw.meters()).await.unwrap();
    s.write_all(&ivy_sim::dlms::heartbeat(id)).await.unwrap();
    tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 4096];
        let mut replies = vec![reply];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            while let Some(FramerEvent::Packet(p)) = framer.next_event() {
                let answer = match Apdu::parse(&p.payload) {
                    Ok(Apdu::Aarq(_)) => Apdu::Aare(Aare::accepted(Conformance::DEFAULT, 500)).encode(),
                    Ok(Apdu::Rlrq(_)) => Apdu::Rlre(Release { reason: Some(0) }).encode(),
                    _ => match replies.pop() {
                        Some(r) => r,
                        None => continue,
                    },
                };
                if s.write_all(&wrapper::wrap(1, 1, &answer).unwrap()).await.is_err() {
                    return;
                }
            }
        }
    })
}

#[tokio::test]
async fn example_d_malformed_reply_fails_the_request_at_once() {
    let gw = start(|c| {
        // Long enough that a timeout could not pass for the answer.
        c.dlms.response_timeout_ms = 8000;
        c.commands.timeout_ms = 15_000;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status", "ivy/v1/meters/+/command/response"]).await;
    let before = metric(&metrics_text(&gw).await, "ivy_parse_errors_total{kind=\"invalid_choice\"}");
    let meter = scripted_meter(&gw, "MALFORMED001", bytes(EXAMPLE_D)).await;
    online(&mut c, "MALFORMED001").await;
    let started = std::time::Instant::now();
    let r = c
        .command(
            "MALFORMED001",
            serde_json::json!({"id": "d", "method": "read_all", "params": {"registers": ["1-0:12.7.0.255", "1-0:11.7.0.255"]}}),
        )
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "failed at once, not after a timeout: {took:?}");
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["code"], "meter_error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("choice"), "the parse reason is named: {r}");
    assert_eq!(r["result"]["parse_error"], "invalid_choice", "{r}");
    let after = metric(&metrics_text(&gw).await, "ivy_parse_errors_total{kind=\"invalid_choice\"}");
    assert!(after >= before + 1.0, "{before} → {after}");
    meter.abort();
}

#[tokio::test]
async fn permanent_association_rejection_backs_off_with_one_event_per_state_change() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 200;
        c.polling.first_poll_delay_ms = 50;
        c.dlms.passive_only = false;
        c.dlms.rejection_backoff_initial_ms = 400;
        c.dlms.rejection_backoff_max_ms = 1600;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status", "ivy/v1/meters/+/events"]).await;
    let meter = Arc::new(DlmsMeter::em114070("REJECTED0001"));
    meter.reject_association.store(true, Ordering::Relaxed);
    let _sim = DlmsSim::connect(gw.meters(), em(meter.clone(), true)).await.unwrap();
    online(&mut c, "REJECTED0001").await;
    let events = c.collect(4000).await;
    let attempts = meter.association_requests.load(Ordering::Relaxed);
    // Polling every 200 ms would send ~20 AARQs in 4 s; backing off 400, 800, 1600, 1600 ms sends about 5.
    assert!((2..=7).contains(&attempts), "AARQs in 4 s: {attempts}");
    let errors: Vec<&Value> = events.iter().filter(|m| m.json["event"] == "dlms-error").map(|m| &m.json).collect();
    assert_eq!(errors.len(), 1, "one event for the change of state: {errors:?}");
    assert!(errors[0]["data"]["error"].as_str().unwrap().contains("authentication-failure"), "{}", errors[0]);
    let addr = gw.gw.addrs().http.unwrap();
    let detail = http_meter(addr, "REJECTED0001").await;
    assert_eq!(detail["dlms"]["association"], "rejected", "{detail}");
    assert!(detail["dlms"]["retryInMs"].as_u64().is_some(), "{detail}");
    // The meter is fixed: the next attempt associates, and one event says so.
    meter.reject_association.store(false, Ordering::Relaxed);
    let m = c.wait("association restored", 5, |m| m.json["event"] == "dlms-association-restored").await;
    assert_eq!(m.json["severity"], "info");
    let detail = http_meter(addr, "REJECTED0001").await;
    assert_eq!(detail["dlms"]["association"], "ok", "{detail}");
}

async fn http_meter(addr: std::net::SocketAddr, id: &str) -> Value {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{addr}/api/login"))
        .json(&serde_json::json!({"username": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    http.get(format!("http://{addr}/api/meters/{id}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn silent_dlms_meter_is_identified_by_an_association_probe() {
    let gw = start(|c| c.meters.identify_after_secs = 1).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status"]).await;
    let meter = Arc::new(DlmsMeter::em114070("311501114070"));
    let sim = DlmsSim::connect(gw.meters(), em(meter.clone(), false)).await.unwrap();
    // No heartbeat, no pushes: the gateway associates and reads the logical device name.
    online(&mut c, "YTL1020000000000").await;
    assert!(meter.association_requests.load(Ordering::Relaxed) >= 1);
    assert!(!sim.is_finished());
}

#[tokio::test]
async fn a_rejecting_meter_that_reconnects_keeps_its_backoff() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 200;
        c.polling.first_poll_delay_ms = 50;
        c.dlms.passive_only = false;
        c.dlms.rejection_backoff_initial_ms = 10_000;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status", "ivy/v1/meters/+/events"]).await;
    let meter = Arc::new(DlmsMeter::em114070("LOCKOUT00001"));
    meter.reject_association.store(true, Ordering::Relaxed);
    let sim = DlmsSim::connect(gw.meters(), em(meter.clone(), true)).await.unwrap();
    c.wait("first rejection", 10, |m| m.json["event"] == "dlms-error").await;
    sim.close().await;
    let _again = DlmsSim::connect(gw.meters(), em(meter.clone(), true)).await.unwrap();
    let events = c.collect(1500).await;
    assert_eq!(meter.association_requests.load(Ordering::Relaxed), 1, "no AARQ before the back-off allows one");
    assert!(!events.iter().any(|m| m.json["event"] == "dlms-error"), "no new event for the same state: {events:?}");
}
