//! Hub events → MQTT messages (SPEC 4.2): one telemetry message per reading, a retained snapshot per meter after
//! each poll or push, retained status once per transition, and events.

use super::topics::TopicPrefix;
use super::{OutboundMessage, Publisher, Qos};
use crate::hub::HubEvent;
use crate::model::{MeterEvent, Reading, Source, StatusChange};
use ivy_protocol::registration::MeterId;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The telemetry payload of one reading.
pub fn telemetry_payload(r: &Reading) -> Value {
    json!({
        "ts": r.ts,
        "meterId": r.meter_id.as_str(),
        "source": r.source.as_str(),
        "register": r.register,
        "dataId": r.data_id,
        "value": r.value.to_json(),
        "rawValue": r.raw_value,
        "unit": r.unit,
    })
}

/// The status payload of a transition.
pub fn status_payload(s: &StatusChange) -> Value {
    if s.online {
        json!({
            "ts": s.ts,
            "meterId": s.meter_id.as_str(),
            "online": true,
            "ip": s.ip,
            "protocol": s.protocol.map(|p| p.as_str()),
            "connectedAt": s.connected_at,
        })
    } else {
        json!({"ts": s.ts, "meterId": s.meter_id.as_str(), "online": false, "reason": s.reason})
    }
}

/// The event payload.
pub fn event_payload(e: &MeterEvent) -> Value {
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
    readings: BTreeMap<String, Value>,
}

/// Runs the sink until the hub closes.
pub async fn run(prefix: TopicPrefix, publisher: Publisher, mut rx: mpsc::Receiver<Arc<HubEvent>>) {
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
                    entry
                        .readings
                        .insert(r.register.clone(), json!({"value": r.value.to_json(), "unit": r.unit, "ts": r.ts}));
                }
                if *snapshot {
                    let payload = json!({
                        "ts": crate::model::now_ms(),
                        "meterId": meter_id.as_str(),
                        "source": source.as_str(),
                        "readings": entry.readings,
                    });
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
