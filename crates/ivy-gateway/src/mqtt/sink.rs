//! Hub events → MQTT messages (SPEC 4.2), built by one [`Composer`] for the embedded broker and the upstream
//! outbox alike: one telemetry message per reading, a retained snapshot per meter after
//! each poll or push, retained status once per transition, and events.

use super::topics::TopicPrefix;
use super::{OutboundMessage, Publisher, Qos};
use crate::hub::HubEvent;
use crate::model::{MeterEvent, Reading, StatusChange, TsSource};
use ivy_protocol::registration::MeterId;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The telemetry payload of one reading. A struct rather than a `json!` map: it is built for every reading
/// (100,000/s and more), and the map's allocations were a quarter of the gateway's CPU under push load.
#[derive(Debug, serde::Serialize)]
pub(crate) struct TelemetryPayload<'a> {
    ts: u64,
    #[serde(rename = "meterId")]
    meter_id: &'a str,
    source: &'static str,
    register: &'a str,
    #[serde(rename = "dataId")]
    data_id: &'a str,
    value: Value,
    #[serde(rename = "rawValue")]
    raw_value: &'a Value,
    unit: Option<&'a str>,
    #[serde(rename = "receivedAt")]
    received_at: u64,
    #[serde(rename = "tsSource")]
    ts_source: TsSource,
    #[serde(rename = "tsSkewed", skip_serializing_if = "std::ops::Not::not")]
    ts_skewed: bool,
    #[serde(rename = "scalerKnown", skip_serializing_if = "Option::is_none")]
    scaler_known: Option<bool>,
}

/// The telemetry payload of one reading.
pub(crate) fn telemetry_payload(r: &Reading) -> TelemetryPayload<'_> {
    TelemetryPayload {
        received_at: r.meta.received_at.unwrap_or(r.ts),
        ts_source: r.meta.ts_source,
        ts_skewed: r.meta.ts_skewed,
        scaler_known: r.meta.scaler_known,
        ts: r.ts,
        meter_id: r.meter_id.as_str(),
        source: r.source.as_str(),
        register: &r.register,
        data_id: &r.data_id,
        value: r.value.to_json(),
        raw_value: &r.raw_value,
        unit: r.unit.as_deref(),
    }
}

/// One register's latest value in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
struct SnapshotReading {
    value: Value,
    unit: Option<String>,
    ts: u64,
}

/// The snapshot payload; borrows the latest values instead of copying them for every push.
#[derive(Debug, serde::Serialize)]
struct SnapshotPayload<'a> {
    ts: u64,
    #[serde(rename = "meterId")]
    meter_id: &'a str,
    source: &'static str,
    readings: &'a BTreeMap<String, SnapshotReading>,
}

/// The status payload of a transition (SPEC 4.2, docs/MQTT.md): online `{ts, meterId, online, ip, protocol,
/// connectedAt}`, offline `{ts, meterId, online, reason, connectedAt}` where `connectedAt` is the ended connection's
/// (`null` when unknown), and `gatewayId` on both when `gateway.gateway_id` is set. `(connectedAt, gatewayId)` names
/// the connection, so gateways sharing a broker can tell which of them holds the newest one.
pub(crate) fn status_payload(s: &StatusChange) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(s.ts));
    m.insert("meterId".into(), json!(s.meter_id.as_str()));
    m.insert("online".into(), json!(s.online));
    if s.online {
        m.insert("ip".into(), json!(s.ip));
        m.insert("protocol".into(), json!(s.protocol.map(|p| p.as_str())));
    } else {
        m.insert("reason".into(), json!(s.reason));
    }
    m.insert("connectedAt".into(), json!(s.connected_at));
    if let Some(g) = &s.gateway_id {
        m.insert("gatewayId".into(), json!(g));
    }
    Value::Object(m)
}

/// The event payload.
pub(crate) fn event_payload(e: &MeterEvent) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(e.ts));
    m.insert("meterId".into(), json!(e.meter_id.as_str()));
    m.insert("event".into(), json!(e.event));
    if let Some(s) = e.severity {
        m.insert("severity".into(), json!(s));
    }
    m.insert("data".into(), e.data.clone());
    Value::Object(m)
}

/// What a message is, for the upstream outbox's drop policy (docs/MQTT.md, "Outbox"): when the outbox is over
/// its bound the oldest telemetry goes first, then snapshots, then ordinary events; status (and the lifecycle
/// events that say where a meter is connected) and alarm events are never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageClass {
    /// `{p}/meters/{id}/telemetry`.
    Telemetry,
    /// `{p}/meters/{id}/snapshot`.
    Snapshot,
    /// `{p}/meters/{id}/events` other than alarm and lifecycle events.
    Event,
    /// `{p}/meters/{id}/status`, and lifecycle events (connected, disconnected, reconnected, identity conflict).
    Status,
    /// Alarm events (`alarm:*`, `alarm_cleared:*`, `alarm_acknowledged`).
    Alarm,
}

impl MessageClass {
    /// Every class, in drop order (droppable ones first).
    pub const ALL: [MessageClass; 5] = [
        MessageClass::Telemetry,
        MessageClass::Snapshot,
        MessageClass::Event,
        MessageClass::Status,
        MessageClass::Alarm,
    ];

    /// Classes that may be dropped when the outbox is full, oldest message first, in this order.
    pub const DROPPABLE: [MessageClass; 3] = [MessageClass::Telemetry, MessageClass::Snapshot, MessageClass::Event];

    /// The stable number stored in the outbox's `class` column.
    pub fn code(self) -> i64 {
        match self {
            MessageClass::Telemetry => 0,
            MessageClass::Snapshot => 1,
            MessageClass::Event => 2,
            MessageClass::Status => 3,
            MessageClass::Alarm => 4,
        }
    }

    /// The class of a stored code (unknown codes are treated as status: never dropped).
    pub fn from_code(code: i64) -> Self {
        MessageClass::ALL.into_iter().find(|c| c.code() == code).unwrap_or(MessageClass::Status)
    }

    /// Label text (`telemetry`, `snapshot`, `event`, `status`, `alarm`).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageClass::Telemetry => "telemetry",
            MessageClass::Snapshot => "snapshot",
            MessageClass::Event => "event",
            MessageClass::Status => "status",
            MessageClass::Alarm => "alarm",
        }
    }

    /// The class of an event message.
    pub fn of_event(e: &MeterEvent) -> Self {
        if e.event.starts_with("alarm") {
            MessageClass::Alarm
        } else if crate::hub::LIFECYCLE_EVENTS.contains(&e.event.as_str()) {
            MessageClass::Status
        } else {
            MessageClass::Event
        }
    }
}

/// Latest values of one meter, for its snapshot.
#[derive(Debug, Default)]
struct Latest {
    readings: BTreeMap<String, SnapshotReading>,
}

/// Hub events → MQTT messages (SPEC 4.2): the one place payloads are built, used by the embedded broker's sink
/// and by the upstream outbox. Pure: it keeps the latest value of every register for the snapshots, nothing else.
#[derive(Debug)]
pub struct Composer {
    prefix: TopicPrefix,
    latest: HashMap<MeterId, Latest>,
}

impl Composer {
    /// A composer for topics under `prefix`.
    pub fn new(prefix: TopicPrefix) -> Self {
        Composer { prefix, latest: HashMap::new() }
    }

    /// Appends the messages of `event` to `out`, in publication order; `now` (ms) stamps snapshots.
    pub fn compose(&mut self, event: &HubEvent, now: u64, out: &mut Vec<(MessageClass, OutboundMessage)>) {
        let prefix = &self.prefix;
        match event {
            HubEvent::Readings { meter_id, source, readings, snapshot } => {
                let entry = self.latest.entry(meter_id.clone()).or_default();
                if !readings.is_empty() {
                    // One topic string for the whole batch (the same for every reading of the meter).
                    let topic = prefix.telemetry(meter_id);
                    for r in readings {
                        out.push((
                            MessageClass::Telemetry,
                            OutboundMessage::json(topic.clone(), &telemetry_payload(r), Qos::AtLeastOnce, false),
                        ));
                    }
                }
                for r in readings {
                    let latest = SnapshotReading { value: r.value.to_json(), unit: r.unit.clone(), ts: r.ts };
                    match entry.readings.get_mut(&r.register) {
                        Some(slot) => *slot = latest,
                        None => {
                            entry.readings.insert(r.register.clone(), latest);
                        }
                    }
                }
                if *snapshot {
                    let payload = SnapshotPayload {
                        ts: now,
                        meter_id: meter_id.as_str(),
                        source: source.as_str(),
                        readings: &entry.readings,
                    };
                    out.push((
                        MessageClass::Snapshot,
                        OutboundMessage::json(prefix.snapshot(meter_id), &payload, Qos::AtLeastOnce, true),
                    ));
                }
            }
            HubEvent::Status(s) => out.push((
                MessageClass::Status,
                OutboundMessage::json(prefix.status(&s.meter_id), &status_payload(s), Qos::AtLeastOnce, true),
            )),
            HubEvent::Event(e) => out.push((
                MessageClass::of_event(e),
                OutboundMessage::json(prefix.events(&e.meter_id), &event_payload(e), Qos::AtLeastOnce, false),
            )),
        }
    }
}

/// Runs the embedded broker's sink until the hub closes.
pub(crate) async fn run(prefix: TopicPrefix, publisher: Publisher, mut rx: mpsc::Receiver<Arc<HubEvent>>) {
    let mut composer = Composer::new(prefix);
    let mut out = Vec::new();
    while let Some(event) = rx.recv().await {
        composer.compose(&event, crate::model::now_ms(), &mut out);
        for (_, msg) in out.drain(..) {
            if publisher.publish(msg).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quantity, Severity, Source};

    fn change(online: bool, gateway_id: Option<&str>) -> StatusChange {
        StatusChange {
            meter_id: MeterId::new("000000001234").unwrap(),
            online,
            ip: online.then(|| "10.1.2.3".into()),
            protocol: online.then_some(Source::Dlt645),
            connected_at: Some(1_769_747_658_000),
            gateway_id: gateway_id.map(str::to_owned),
            reason: (!online).then(|| "idle_timeout".into()),
            ts: 1_769_747_900_000,
        }
    }

    #[test]
    fn status_payloads_name_the_connection_and_the_gateway() {
        assert_eq!(
            status_payload(&change(true, Some("gw-1"))),
            json!({"ts": 1_769_747_900_000u64, "meterId": "000000001234", "online": true, "ip": "10.1.2.3",
                   "protocol": "dlt645", "connectedAt": 1_769_747_658_000u64, "gatewayId": "gw-1"})
        );
        assert_eq!(
            status_payload(&change(false, Some("gw-1"))),
            json!({"ts": 1_769_747_900_000u64, "meterId": "000000001234", "online": false, "reason": "idle_timeout",
                   "connectedAt": 1_769_747_658_000u64, "gatewayId": "gw-1"})
        );
        let lone = status_payload(&change(false, None));
        assert!(lone.get("gatewayId").is_none(), "{lone}");
        assert_eq!(lone["connectedAt"], 1_769_747_658_000u64);
    }

    fn messages(composer: &mut Composer, event: HubEvent) -> Vec<(MessageClass, OutboundMessage)> {
        let mut out = Vec::new();
        composer.compose(&event, 42, &mut out);
        out
    }

    #[test]
    fn readings_become_telemetry_then_a_snapshot_holding_every_register_seen() {
        let mut c = Composer::new(TopicPrefix::new("ivy/v1", None).unwrap());
        let m1 = MeterId::new("m1").unwrap();
        let reading = |register: &str, v: f64| crate::model::test_reading(register, Quantity::Voltage, v, "V", 1000);
        let first = HubEvent::Readings {
            meter_id: m1.clone(),
            source: Source::Dlt645,
            readings: vec![reading("VOLTAGE_A", 230.0), reading("VOLTAGE_B", 231.0)],
            snapshot: true,
        };
        let out = messages(&mut c, first);
        let classes: Vec<_> = out.iter().map(|(c, _)| *c).collect();
        assert_eq!(classes, [MessageClass::Telemetry, MessageClass::Telemetry, MessageClass::Snapshot]);
        assert_eq!(out[0].1.topic, "ivy/v1/meters/m1/telemetry");
        assert!(!out[0].1.retain && out[2].1.retain);
        let second = HubEvent::Readings {
            meter_id: m1,
            source: Source::Dlt645,
            readings: vec![reading("VOLTAGE_A", 229.0)],
            snapshot: true,
        };
        let out = messages(&mut c, second);
        let snapshot: Value = serde_json::from_slice(&out[1].1.payload).unwrap();
        assert_eq!(snapshot["ts"], 42);
        assert_eq!(snapshot["readings"]["VOLTAGE_A"]["value"], 229.0);
        assert_eq!(snapshot["readings"]["VOLTAGE_B"]["value"], 231.0, "registers not in this batch are kept");
    }

    #[test]
    fn events_are_classed_for_the_drop_policy() {
        let mut c = Composer::new(TopicPrefix::new("ivy/v1", None).unwrap());
        let event = |name: &str| {
            HubEvent::Event(MeterEvent {
                meter_id: MeterId::new("m1").unwrap(),
                event: name.into(),
                severity: Some(Severity::Warning),
                data: Value::Null,
                ts: 1,
            })
        };
        let class = |c: &mut Composer, name: &str| messages(c, event(name))[0].0;
        assert_eq!(class(&mut c, "alarm:overvoltage"), MessageClass::Alarm);
        assert_eq!(class(&mut c, "alarm_cleared:overvoltage"), MessageClass::Alarm);
        assert_eq!(class(&mut c, "meter_disconnected"), MessageClass::Status);
        assert_eq!(class(&mut c, "dlms-error"), MessageClass::Event);
        for class in MessageClass::ALL {
            assert_eq!(MessageClass::from_code(class.code()), class);
        }
    }
}
