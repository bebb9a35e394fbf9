//! What the HTTP API and the dashboard see: the latest state of every meter, a bounded in-memory history of
//! numeric readings, the recent events, and the live stream fan-out for server-sent events.
//!
//! It is a hub observer: every event is applied here in place, on the producer's thread (a brief lock), and
//! handlers read snapshots. The history ring stands in for the SQLite store until it exists; the API shape
//! (`/api/meters/{id}/readings?register=&from=&to=`) does not depend on where the points come from.

use crate::hub::HubEvent;
use crate::lock::lock;
use crate::model::{MeterEvent, Reading, Source, StatusChange};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Bounds of the in-memory views.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveLimits {
    /// Numeric points kept per meter and register.
    pub history_points: usize,
    /// Events kept (newest win).
    pub events: usize,
    /// Meters remembered (online or not).
    pub meters: usize,
    /// Live-stream messages buffered per slow client before it is told it lagged.
    pub stream_buffer: usize,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits { history_points: 30, events: 1000, meters: 100_000, stream_buffer: 4096 }
    }
}

/// The latest value of one register.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LatestReading {
    /// Normalised value.
    pub value: Value,
    /// Unit symbol.
    pub unit: Option<String>,
    /// `0x02010100` or an OBIS code.
    pub data_id: String,
    /// The value before scaling.
    pub raw_value: Value,
    /// When it was read (ms).
    pub ts: u64,
}

/// One point of history.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Point {
    /// When (ms).
    pub ts: u64,
    /// The value.
    pub value: f64,
}

/// What is known about one meter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MeterView {
    /// The meter id.
    pub meter_id: String,
    /// Connected now.
    pub online: bool,
    /// Protocol family.
    pub protocol: Option<Source>,
    /// Peer IP of the current or last connection.
    pub ip: Option<String>,
    /// When the current connection was identified (ms).
    pub connected_at: Option<u64>,
    /// Why it went offline, when offline.
    pub offline_reason: Option<String>,
    /// Last time anything was heard from it: a reading or a status change (ms).
    pub last_seen: u64,
    /// Time of the newest reading (ms).
    pub last_reading_at: Option<u64>,
    /// Readings received since start.
    pub readings_count: u64,
    /// Times the meter connected since start.
    pub connections: u64,
    #[serde(skip)]
    latest: BTreeMap<String, LatestReading>,
    #[serde(skip)]
    history: HashMap<String, (Option<String>, VecDeque<Point>)>,
}

impl MeterView {
    /// A meter nothing is known about yet.
    pub(crate) fn new(meter_id: &str) -> Self {
        MeterView {
            meter_id: meter_id.to_owned(),
            online: false,
            protocol: None,
            ip: None,
            connected_at: None,
            offline_reason: None,
            last_seen: 0,
            last_reading_at: None,
            readings_count: 0,
            connections: 0,
            latest: BTreeMap::new(),
            history: HashMap::new(),
        }
    }

    /// The latest reading per register key.
    pub(crate) fn latest(&self) -> &BTreeMap<String, LatestReading> {
        &self.latest
    }

    /// A copy without the history, and without the latest readings unless `with_latest`: the API never returns
    /// history with a meter, and copying it for every meter of a list is the bulk of the work.
    fn copy(&self, with_latest: bool) -> MeterView {
        MeterView {
            meter_id: self.meter_id.clone(),
            online: self.online,
            protocol: self.protocol,
            ip: self.ip.clone(),
            connected_at: self.connected_at,
            offline_reason: self.offline_reason.clone(),
            last_seen: self.last_seen,
            last_reading_at: self.last_reading_at,
            readings_count: self.readings_count,
            connections: self.connections,
            latest: if with_latest { self.latest.clone() } else { BTreeMap::new() },
            history: HashMap::new(),
        }
    }
}

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventView {
    /// Sequence number since start (newer is larger).
    pub seq: u64,
    /// When (ms).
    pub ts: u64,
    /// The meter.
    pub meter_id: String,
    /// Event name.
    pub event: String,
    /// Severity.
    pub severity: Option<crate::model::Severity>,
    /// Details.
    pub data: Value,
}

/// A history point with its register, for the readings endpoint.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistoryPoint {
    /// Register key.
    pub register: String,
    /// When (ms).
    pub ts: u64,
    /// The value.
    pub value: f64,
    /// Unit.
    pub unit: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    meters: HashMap<String, MeterView>,
    events: VecDeque<EventView>,
    next_event_seq: u64,
    /// Readings per whole minute (minute index, count), the last few minutes, for "readings per minute".
    per_minute: VecDeque<(u64, u64)>,
    dropped_meters: u64,
}

/// The live state. Its lock guards these views only; it is never held across an await.
#[derive(Debug)]
pub(crate) struct LiveView {
    inner: Mutex<Inner>,
    limits: LiveLimits,
    stream: broadcast::Sender<Arc<str>>,
}

impl LiveView {
    /// An empty live view.
    pub(crate) fn new(limits: LiveLimits) -> Self {
        let (stream, _) = broadcast::channel(limits.stream_buffer.max(16));
        LiveView { inner: Mutex::new(Inner::default()), limits, stream }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Updates are single map operations; a poisoned lock still holds consistent views.
        lock(&self.inner)
    }

    /// A receiver of live-stream messages (each one JSON text `{type, ...}`).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.stream.subscribe()
    }

    /// Live-stream clients connected now.
    pub(crate) fn stream_clients(&self) -> usize {
        self.stream.receiver_count()
    }

    fn broadcast(&self, message: impl FnOnce() -> Value) {
        // Building the message costs more than the update itself; skip it when nobody listens.
        if self.stream.receiver_count() > 0 {
            let _ = self.stream.send(Arc::from(message().to_string()));
        }
    }

    /// Applies one hub event.
    pub(crate) fn apply(&self, event: &HubEvent) {
        match event {
            HubEvent::Readings { meter_id, source, readings, .. } => {
                self.on_readings(meter_id.as_str(), *source, readings)
            }
            HubEvent::Status(s) => self.on_status(s),
            HubEvent::Event(e) => self.on_event(e),
        }
    }

    fn meter<'a>(inner: &'a mut Inner, limits: &LiveLimits, id: &str) -> Option<&'a mut MeterView> {
        if !inner.meters.contains_key(id) {
            if inner.meters.len() >= limits.meters {
                inner.dropped_meters += 1;
                return None;
            }
            inner.meters.insert(id.to_owned(), MeterView::new(id));
        }
        inner.meters.get_mut(id)
    }

    fn on_readings(&self, meter_id: &str, source: Source, readings: &[Reading]) {
        let now = crate::model::now_ms();
        {
            let mut inner = self.lock();
            let minute = now / 60_000;
            match inner.per_minute.back_mut() {
                Some((m, n)) if *m == minute => *n += readings.len() as u64,
                _ => {
                    inner.per_minute.push_back((minute, readings.len() as u64));
                    while inner.per_minute.len() > 3 {
                        inner.per_minute.pop_front();
                    }
                }
            }
            let limits = self.limits;
            let Some(view) = Self::meter(&mut inner, &limits, meter_id) else { return };
            if view.connections == 0 {
                // First sight of this meter here: it is connected (readings come only from a live session).
                view.online = true;
                view.connections = 1;
            }
            view.protocol.get_or_insert(source);
            for r in readings {
                view.readings_count += 1;
                view.last_seen = view.last_seen.max(r.ts);
                view.last_reading_at = Some(view.last_reading_at.unwrap_or(0).max(r.ts));
                // In place when the register is known (every reading after the first): this runs for every
                // reading the gateway decodes, so it avoids allocating keys and copies it does not need.
                if let Some(n) = r.value.as_f64() {
                    let history_points = limits.history_points.max(1);
                    let (unit, points) = match view.history.get_mut(&r.register) {
                        Some(h) => h,
                        None => view
                            .history
                            .entry(r.register.clone())
                            .or_insert_with(|| (None, VecDeque::with_capacity(history_points.min(16)))),
                    };
                    if unit != &r.unit {
                        unit.clone_from(&r.unit);
                    }
                    if points.len() >= history_points {
                        points.pop_front();
                    }
                    points.push_back(Point { ts: r.ts, value: n });
                }
                match view.latest.get_mut(&r.register) {
                    Some(latest) => {
                        latest.value = r.value.to_json();
                        if latest.unit != r.unit {
                            latest.unit.clone_from(&r.unit);
                        }
                        if latest.data_id != r.data_id {
                            latest.data_id.clone_from(&r.data_id);
                        }
                        latest.raw_value.clone_from(&r.raw_value);
                        latest.ts = r.ts;
                    }
                    None => {
                        view.latest.insert(
                            r.register.clone(),
                            LatestReading {
                                value: r.value.to_json(),
                                unit: r.unit.clone(),
                                data_id: r.data_id.clone(),
                                raw_value: r.raw_value.clone(),
                                ts: r.ts,
                            },
                        );
                    }
                }
            }
        }
        self.broadcast(|| {
            json!({
                "type": "readings",
                "meterId": meter_id,
                "source": source,
                "readings": readings.iter().map(|r| json!({
                    "register": r.register, "value": r.value.to_json(), "unit": r.unit, "ts": r.ts,
                })).collect::<Vec<_>>(),
            })
        });
    }

    fn on_status(&self, s: &StatusChange) {
        {
            let mut inner = self.lock();
            let limits = self.limits;
            // An online meter without readings is described by the registry; an entry here would cost ~0.5 KB
            // per held meter (the hash table grows in powers of two) for nothing the API needs.
            let tracked = !s.online || inner.meters.contains_key(s.meter_id.as_str());
            if tracked && let Some(view) = Self::meter(&mut inner, &limits, s.meter_id.as_str()) {
                Self::apply_status(view, s);
            }
        }
        self.broadcast_status(s);
    }

    fn apply_status(view: &mut MeterView, s: &StatusChange) {
        view.online = s.online;
        view.last_seen = view.last_seen.max(s.ts);
        view.protocol = s.protocol.or(view.protocol);
        if s.online {
            view.connections += 1;
            view.ip.clone_from(&s.ip);
            view.connected_at = s.connected_at;
            view.offline_reason = None;
        } else {
            view.offline_reason.clone_from(&s.reason);
        }
    }

    fn broadcast_status(&self, s: &StatusChange) {
        self.broadcast(|| {
            json!({
                "type": "status", "meterId": s.meter_id.as_str(), "online": s.online, "ip": s.ip,
                "protocol": s.protocol, "connectedAt": s.connected_at, "reason": s.reason, "ts": s.ts,
            })
        });
    }

    fn on_event(&self, e: &MeterEvent) {
        let view = {
            let mut inner = self.lock();
            inner.next_event_seq += 1;
            let view = EventView {
                seq: inner.next_event_seq,
                ts: e.ts,
                meter_id: e.meter_id.as_str().to_owned(),
                event: e.event.clone(),
                severity: e.severity,
                data: e.data.clone(),
            };
            if inner.events.len() >= self.limits.events.max(1) {
                inner.events.pop_front();
            }
            inner.events.push_back(view.clone());
            view
        };
        self.broadcast(|| {
            let mut v = serde_json::to_value(&view).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("type".into(), json!("event"));
            }
            v
        });
    }

    /// Seeds the view with a meter remembered from before a restart (offline until it reconnects), with its last
    /// known values.
    pub(crate) fn restore(
        &self,
        meter_id: &str,
        protocol: Option<&str>,
        ip: Option<&str>,
        last_seen: u64,
        snapshot: &serde_json::Map<String, Value>,
    ) {
        let mut inner = self.lock();
        let limits = self.limits;
        let Some(view) = Self::meter(&mut inner, &limits, meter_id) else { return };
        view.online = false;
        view.protocol = match protocol {
            Some("dlt645") => Some(Source::Dlt645),
            Some("dlms") => Some(Source::Dlms),
            _ => view.protocol,
        };
        view.ip = ip.map(str::to_owned);
        view.last_seen = view.last_seen.max(last_seen);
        view.offline_reason = Some("not connected since the gateway started".into());
        for (register, value) in snapshot {
            if let Ok(latest) = serde_json::from_value::<LatestReading>(value.clone()) {
                view.last_reading_at = Some(view.last_reading_at.unwrap_or(0).max(latest.ts));
                view.latest.insert(register.clone(), latest);
            }
        }
    }

    /// Every known meter (without readings), sorted by id.
    pub(crate) fn meters(&self) -> Vec<MeterView> {
        let inner = self.lock();
        let mut v: Vec<MeterView> = inner.meters.values().map(|m| m.copy(false)).collect();
        v.sort_by(|a, b| a.meter_id.cmp(&b.meter_id));
        v
    }

    /// One meter with its latest readings (history left out).
    pub(crate) fn meter_view(&self, meter_id: &str) -> Option<MeterView> {
        let inner = self.lock();
        inner.meters.get(meter_id).map(|m| m.copy(true))
    }

    /// History points of one meter, oldest first, filtered by register and time range, at most `limit`
    /// (the newest ones when there are more).
    pub(crate) fn history(
        &self,
        meter_id: &str,
        register: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        limit: usize,
    ) -> Option<Vec<HistoryPoint>> {
        let inner = self.lock();
        let view = inner.meters.get(meter_id)?;
        let mut out: Vec<HistoryPoint> = view
            .history
            .iter()
            .filter(|(key, _)| register.is_none_or(|r| r.eq_ignore_ascii_case(key)))
            .flat_map(|(key, (unit, points))| {
                points
                    .iter()
                    .filter(|p| from.is_none_or(|f| p.ts >= f) && to.is_none_or(|t| p.ts <= t))
                    .map(|p| HistoryPoint { register: key.clone(), ts: p.ts, value: p.value, unit: unit.clone() })
            })
            .collect();
        out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.register.cmp(&b.register)));
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Some(out)
    }

    /// Recent events, newest first, optionally of one meter, at most `limit`.
    pub(crate) fn events(&self, meter_id: Option<&str>, limit: usize) -> Vec<EventView> {
        let inner = self.lock();
        inner.events.iter().rev().filter(|e| meter_id.is_none_or(|m| e.meter_id == m)).take(limit).cloned().collect()
    }

    /// Readings received in the last full minute (or the current one when the gateway is younger).
    pub(crate) fn readings_per_minute(&self) -> u64 {
        let inner = self.lock();
        let minute = crate::model::now_ms() / 60_000;
        let previous = inner.per_minute.iter().find(|(m, _)| *m + 1 == minute).map(|(_, n)| *n);
        let current = inner.per_minute.iter().find(|(m, _)| *m == minute).map(|(_, n)| *n);
        previous.or(current).unwrap_or(0)
    }

    /// Meters not remembered because the bound was reached.
    pub(crate) fn dropped_meters(&self) -> u64 {
        self.lock().dropped_meters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quantity;
    use ivy_protocol::registration::MeterId;

    fn reading(register: &str, value: f64, ts: u64) -> Reading {
        crate::model::test_reading(register, Quantity::Voltage, value, "V", ts)
    }

    #[test]
    fn keeps_latest_and_bounded_history() {
        let store = LiveView::new(LiveLimits { history_points: 3, ..LiveLimits::default() });
        for ts in 1..=5 {
            store.apply(&HubEvent::Readings {
                meter_id: MeterId::new("m1").unwrap(),
                source: Source::Dlt645,
                readings: vec![reading("VOLTAGE_A", 230.0 + ts as f64, ts)],
                snapshot: true,
            });
        }
        let view = store.meter_view("m1").unwrap();
        assert_eq!(view.readings_count, 5);
        assert_eq!(view.latest()["VOLTAGE_A"].value, json!(235.0));
        let h = store.history("m1", Some("voltage_a"), None, None, 100).unwrap();
        assert_eq!(h.iter().map(|p| p.ts).collect::<Vec<_>>(), vec![3, 4, 5]);
        let h = store.history("m1", None, Some(4), Some(4), 100).unwrap();
        assert_eq!(h.len(), 1);
        let h = store.history("m1", None, None, None, 2).unwrap();
        assert_eq!(h.iter().map(|p| p.ts).collect::<Vec<_>>(), vec![4, 5], "limit keeps the newest");
        assert!(store.history("nope", None, None, None, 10).is_none());
    }

    fn status(online: bool) -> HubEvent {
        HubEvent::Status(StatusChange {
            meter_id: MeterId::new("m1").unwrap(),
            online,
            ip: online.then(|| "10.0.0.1".into()),
            protocol: Some(Source::Dlt645),
            connected_at: online.then_some(5),
            gateway_id: None,
            reason: (!online).then(|| "closed".into()),
            ts: 7,
        })
    }

    #[test]
    fn online_meters_without_readings_take_no_entry_until_they_go_offline() {
        let store = LiveView::new(LiveLimits::default());
        store.apply(&status(true));
        assert!(store.meter_view("m1").is_none(), "the registry describes it while online");
        store.apply(&status(false));
        let view = store.meter_view("m1").unwrap();
        assert!(!view.online);
        assert_eq!(view.offline_reason.as_deref(), Some("closed"));
        store.apply(&status(true));
        let view = store.meter_view("m1").unwrap();
        assert!(view.online);
        assert_eq!((view.connections, view.ip.as_deref()), (1, Some("10.0.0.1")));
    }

    #[test]
    fn events_are_bounded_newest_first() {
        let store = LiveView::new(LiveLimits { events: 2, ..LiveLimits::default() });
        for n in 0..3 {
            store.apply(&HubEvent::Event(MeterEvent {
                meter_id: MeterId::new("m1").unwrap(),
                event: format!("e{n}"),
                severity: None,
                data: Value::Null,
                ts: n,
            }));
        }
        let names: Vec<String> = store.events(None, 10).into_iter().map(|e| e.event).collect();
        assert_eq!(names, vec!["e2", "e1"]);
        assert!(store.events(Some("other"), 10).is_empty());
    }
}
