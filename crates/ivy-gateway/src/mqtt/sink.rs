//! Hub events → MQTT messages (SPEC 4.2): one telemetry message per reading, a retained snapshot per meter after
//! each poll or push, retained status once per transition, and events.

use super::topics::TopicPrefix;
use super::{OutboundMessage, Publisher, Qos};
use crate::hub::HubEvent;
use crate::model::{MeterEvent, Reading, Source, StatusChange, TsSource};
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

/// Latest values of one meter, for its snapshot.
#[derive(Debug, Default)]
struct Latest {
    source: Option<Source>,
    readings: BTreeMap<String, SnapshotReading>,
}

/// Runs the sink until the hub closes.
pub(crate) async fn run(prefix: TopicPrefix, publisher: Publisher, mut rx: mpsc::Receiver<Arc<HubEvent>>) {
    let mut latest: HashMap<MeterId, Latest> = HashMap::new();
    while let Some(event) = rx.recv().await {
        let mut out = Vec::new();
        match event.as_ref() {
            HubEvent::Readings { meter_id, source, readings, snapshot } => {
                let entry = latest.entry(meter_id.clone()).or_default();
                entry.source = Some(*source);
                for r in readings {
                    out.push(OutboundMessage::json(
                        prefix.telemetry(meter_id),
                        &telemetry_payload(r),
                        Qos::AtLeastOnce,
                        false,
                    ));
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
                        ts: crate::model::now_ms(),
                        meter_id: meter_id.as_str(),
                        source: source.as_str(),
                        readings: &entry.readings,
                    };
                    out.push(OutboundMessage::json(prefix.snapshot(meter_id), &payload, Qos::AtLeastOnce, true));
                }
            }
            HubEvent::Status(s) => {
                out.push(OutboundMessage::json(prefix.status(&s.meter_id), &status_payload(s), Qos::AtLeastOnce, true));
            }
            HubEvent::Event(e) => {
                out.push(OutboundMessage::json(prefix.events(&e.meter_id), &event_payload(e), Qos::AtLeastOnce, false));
            }
        }
        for msg in out {
            if publisher.publish(msg).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
