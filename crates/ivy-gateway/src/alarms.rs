//! Alarm rules (SPEC 6): per quantity (never by a name substring), with hysteresis and an optional minimum
//! duration; each alarm is raised once and cleared once. The engine is pure (time passed in); [`run`] wires it to
//! the hub.

use crate::config::{AlarmOverride, AlarmsConfig};
use crate::hub::{Hub, HubEvent};
use crate::lock::lock;
use crate::model::{MeterEvent, Quantity, Reading, Severity, StatusChange, now_ms};
use ivy_protocol::registration::MeterId;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Below this many volts a voltage reading counts as "no voltage" (`voltage_loss`), not undervoltage.
const VOLTAGE_LOSS_BELOW_V: f64 = 1.0;

/// The kinds of alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmType {
    /// Voltage above threshold.
    Overvoltage,
    /// Voltage below threshold (but present).
    Undervoltage,
    /// No voltage.
    VoltageLoss,
    /// Current above threshold.
    Overcurrent,
    /// Active power above threshold.
    Overload,
    /// Power factor below threshold under load.
    LowPowerFactor,
    /// Meter offline longer than the grace period.
    CommunicationLost,
}

impl AlarmType {
    /// The snake_case name used in event names (`alarm:<name>`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AlarmType::Overvoltage => "overvoltage",
            AlarmType::Undervoltage => "undervoltage",
            AlarmType::VoltageLoss => "voltage_loss",
            AlarmType::Overcurrent => "overcurrent",
            AlarmType::Overload => "overload",
            AlarmType::LowPowerFactor => "low_power_factor",
            AlarmType::CommunicationLost => "communication_lost",
        }
    }

    /// Every kind.
    pub const ALL: [AlarmType; 7] = [
        AlarmType::Overvoltage,
        AlarmType::Undervoltage,
        AlarmType::VoltageLoss,
        AlarmType::Overcurrent,
        AlarmType::Overload,
        AlarmType::LowPowerFactor,
        AlarmType::CommunicationLost,
    ];

    fn severity(&self) -> Severity {
        match self {
            AlarmType::VoltageLoss | AlarmType::Overload | AlarmType::CommunicationLost => Severity::Critical,
            _ => Severity::Warning,
        }
    }
}

impl std::str::FromStr for AlarmType {
    type Err = String;

    /// The snake_case name ([`AlarmType::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlarmType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown alarm type '{s}'"))
    }
}

/// An alarm that is raised now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAlarm {
    /// Stable id: `<meter>:<type>:<register>`.
    pub id: String,
    /// The meter.
    pub meter_id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub alarm_type: AlarmType,
    /// Register that triggered it (empty for communication_lost).
    pub register: String,
    /// Severity.
    pub severity: Severity,
    /// The value that raised it.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// When it was raised (ms).
    pub raised_at: u64,
    /// Acknowledged by an operator.
    pub acknowledged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AlarmKey {
    meter: MeterId,
    alarm_type: AlarmType,
    register: String,
}

impl AlarmKey {
    fn id(&self) -> String {
        format!("{}:{}:{}", self.meter, self.alarm_type.as_str(), self.register)
    }
}

/// Thresholds for one meter (globals with its overrides applied).
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    overvoltage: f64,
    undervoltage: f64,
    overcurrent: f64,
    overload_kw: f64,
    low_pf: f64,
    low_pf_min_kw: f64,
    hysteresis: f64,
    min_duration_ms: u64,
}

/// Which way a rule triggers.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Above,
    Below,
}

/// The alarm engine.
#[derive(Debug)]
pub struct AlarmEngine {
    config: AlarmsConfig,
    active: HashMap<AlarmKey, ActiveAlarm>,
    /// Conditions seen but not yet held for the minimum duration: since when.
    pending: HashMap<AlarmKey, u64>,
    /// Latest |active power| in kW per meter (the power-factor rule applies only under load).
    last_power_kw: HashMap<MeterId, f64>,
    /// Meters offline since (ms).
    offline_since: HashMap<MeterId, u64>,
    /// Acknowledged alarm ids, kept across raise/clear so a persisted ack survives restarts.
    acknowledged: std::collections::HashSet<String>,
}

impl AlarmEngine {
    /// A new engine.
    pub fn new(config: AlarmsConfig) -> Self {
        AlarmEngine {
            config,
            active: HashMap::new(),
            pending: HashMap::new(),
            last_power_kw: HashMap::new(),
            offline_since: HashMap::new(),
            acknowledged: Default::default(),
        }
    }

    /// The rules in effect.
    pub fn config(&self) -> &AlarmsConfig {
        &self.config
    }

    /// Puts new thresholds in effect from the next reading on (SIGHUP). Alarms already raised stay raised until a
    /// reading clears them under the new thresholds (with hysteresis), so a reload never drops or repeats one.
    pub fn set_config(&mut self, config: AlarmsConfig) {
        self.config = config;
    }

    fn thresholds(&self, meter: &MeterId) -> Thresholds {
        let c = &self.config;
        let o = c.meter_overrides.get(meter.as_str()).cloned().unwrap_or_else(AlarmOverride::default);
        Thresholds {
            overvoltage: o.overvoltage_v.unwrap_or(c.overvoltage_v),
            undervoltage: o.undervoltage_v.unwrap_or(c.undervoltage_v),
            overcurrent: o.overcurrent_a.unwrap_or(c.overcurrent_a),
            overload_kw: o.overload_kw.unwrap_or(c.overload_kw),
            low_pf: o.low_power_factor.unwrap_or(c.low_power_factor),
            low_pf_min_kw: c.low_power_factor_min_power_kw,
            hysteresis: o.hysteresis_percent.unwrap_or(c.hysteresis_percent) / 100.0,
            min_duration_ms: o.min_duration_secs.unwrap_or(c.min_duration_secs) * 1000,
        }
    }

    /// Evaluates one reading; returns the events to publish.
    pub fn on_reading(&mut self, reading: &Reading) -> Vec<MeterEvent> {
        // A raw value whose scaler nobody knows may be off by powers of ten: never judged.
        if reading.meta.scaler_known == Some(false) {
            return Vec::new();
        }
        if !self.config.enabled {
            return Vec::new();
        }
        let Some(raw) = reading.value.as_f64() else { return Vec::new() };
        let t = self.thresholds(&reading.meter_id);
        let mut out = Vec::new();
        match reading.quantity {
            Quantity::Voltage => {
                let v = raw;
                self.rule(reading, AlarmType::Overvoltage, v, t.overvoltage, Direction::Above, true, &t, &mut out);
                let present = v >= VOLTAGE_LOSS_BELOW_V;
                self.rule(reading, AlarmType::Undervoltage, v, t.undervoltage, Direction::Below, present, &t, &mut out);
                // Voltage loss has no useful hysteresis band around ~0 V: any present voltage clears it.
                let loss = AlarmKey {
                    meter: reading.meter_id.clone(),
                    alarm_type: AlarmType::VoltageLoss,
                    register: reading.register.clone(),
                };
                self.transition(loss, !present, present, v, 0.0, reading.ts, &t, &mut out);
            }
            Quantity::Current => self.rule(
                reading,
                AlarmType::Overcurrent,
                raw.abs(),
                t.overcurrent,
                Direction::Above,
                true,
                &t,
                &mut out,
            ),
            Quantity::ActivePower => {
                let kw = to_kw(raw, reading.unit.as_deref()).abs();
                // Only the total (or the only) power reading gates the power-factor rule.
                if is_total(&reading.register) || !self.last_power_kw.contains_key(&reading.meter_id) {
                    self.last_power_kw.insert(reading.meter_id.clone(), kw);
                }
                self.rule(reading, AlarmType::Overload, kw, t.overload_kw, Direction::Above, true, &t, &mut out)
            }
            Quantity::PowerFactor => {
                let loaded = self.last_power_kw.get(&reading.meter_id).is_some_and(|p| *p > t.low_pf_min_kw);
                self.rule(
                    reading,
                    AlarmType::LowPowerFactor,
                    raw.abs(),
                    t.low_pf,
                    Direction::Below,
                    loaded,
                    &t,
                    &mut out,
                )
            }
            _ => {}
        }
        out
    }

    /// One threshold rule with hysteresis. `applicable` false means the condition cannot hold now (e.g. no load
    /// for the power-factor rule); an active alarm then clears.
    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        reading: &Reading,
        alarm_type: AlarmType,
        value: f64,
        threshold: f64,
        direction: Direction,
        applicable: bool,
        t: &Thresholds,
        out: &mut Vec<MeterEvent>,
    ) {
        let band = threshold.abs() * t.hysteresis;
        let (violates, recovered) = match direction {
            Direction::Above => (value > threshold, value < threshold - band),
            Direction::Below => (value < threshold, value > threshold + band),
        };
        let key = AlarmKey { meter: reading.meter_id.clone(), alarm_type, register: reading.register.clone() };
        self.transition(key, applicable && violates, !applicable || recovered, value, threshold, reading.ts, t, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        key: AlarmKey,
        violates: bool,
        recovered: bool,
        value: f64,
        threshold: f64,
        ts: u64,
        t: &Thresholds,
        out: &mut Vec<MeterEvent>,
    ) {
        if self.active.contains_key(&key) {
            if recovered {
                self.active.remove(&key);
                out.push(event(&key, "alarm_cleared", value, threshold, ts));
            }
            return;
        }
        if !violates {
            self.pending.remove(&key);
            return;
        }
        let since = *self.pending.entry(key.clone()).or_insert(ts);
        if ts.saturating_sub(since) < t.min_duration_ms {
            return;
        }
        self.pending.remove(&key);
        let id = key.id();
        let alarm = ActiveAlarm {
            acknowledged: self.acknowledged.contains(&id),
            id,
            meter_id: key.meter.to_string(),
            alarm_type: key.alarm_type,
            register: key.register.clone(),
            severity: key.alarm_type.severity(),
            value,
            threshold,
            raised_at: ts,
        };
        out.push(event(&key, "alarm", value, threshold, ts));
        self.active.insert(key, alarm);
    }

    /// A meter went online/offline.
    pub fn on_status(&mut self, status: &StatusChange) -> Vec<MeterEvent> {
        let mut out = Vec::new();
        let key = AlarmKey {
            meter: status.meter_id.clone(),
            alarm_type: AlarmType::CommunicationLost,
            register: String::new(),
        };
        if status.online {
            self.offline_since.remove(&status.meter_id);
            self.pending.remove(&key);
            if self.active.remove(&key).is_some() {
                out.push(event(&key, "alarm_cleared", 0.0, self.config.offline_grace_secs as f64, status.ts));
            }
        } else {
            self.offline_since.insert(status.meter_id.clone(), status.ts);
        }
        out
    }

    /// Time-based rules (communication_lost); call every few seconds.
    pub fn tick(&mut self, now: u64) -> Vec<MeterEvent> {
        let grace_ms = self.config.offline_grace_secs * 1000;
        let due: Vec<(MeterId, u64)> = self
            .offline_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= grace_ms)
            .map(|(m, s)| (m.clone(), *s))
            .collect();
        let mut out = Vec::new();
        for (meter, since) in due {
            self.offline_since.remove(&meter);
            if !self.config.enabled {
                continue;
            }
            let key = AlarmKey { meter, alarm_type: AlarmType::CommunicationLost, register: String::new() };
            let offline_secs = now.saturating_sub(since) as f64 / 1000.0;
            // The grace period is this rule's duration; the generic minimum duration does not stack on it.
            let t = Thresholds { min_duration_ms: 0, ..self.thresholds(&key.meter) };
            self.transition(key, true, false, offline_secs, self.config.offline_grace_secs as f64, now, &t, &mut out);
        }
        out
    }

    /// Active alarms, oldest first.
    pub fn active(&self) -> Vec<ActiveAlarm> {
        let mut v: Vec<ActiveAlarm> = self.active.values().cloned().collect();
        v.sort_by(|a, b| a.raised_at.cmp(&b.raised_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Marks an alarm acknowledged and returns it; `None` when no such alarm is active.
    pub fn acknowledge(&mut self, id: &str) -> Option<ActiveAlarm> {
        let alarm = self.active.values_mut().find(|a| a.id == id)?;
        alarm.acknowledged = true;
        self.acknowledged.insert(id.to_owned());
        Some(alarm.clone())
    }

    /// Every acknowledged alarm id (to persist).
    pub fn acknowledged_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.acknowledged.iter().cloned().collect();
        ids.sort();
        ids
    }

    /// Restores alarms that were active when the gateway stopped (from the store): they stay raised until a
    /// reading clears them, so a restart neither forgets nor re-announces them.
    pub fn restore_active(&mut self, alarms: impl IntoIterator<Item = ActiveAlarm>) {
        for alarm in alarms {
            let Ok(meter) = MeterId::new(alarm.meter_id.clone()) else { continue };
            let key = AlarmKey { meter, alarm_type: alarm.alarm_type, register: alarm.register.clone() };
            if alarm.acknowledged {
                self.acknowledged.insert(alarm.id.clone());
            }
            self.active.insert(key, alarm);
        }
    }

    /// A meter known from before a restart is offline until it reconnects: `communication_lost` applies to it
    /// after the grace period, as to a meter that dropped while the gateway ran.
    pub fn assume_offline(&mut self, meter: MeterId, since: u64) {
        self.offline_since.entry(meter).or_insert(since);
    }

    /// Restores acknowledgements persisted earlier.
    pub fn restore_acknowledged(&mut self, ids: impl IntoIterator<Item = String>) {
        self.acknowledged.extend(ids);
    }
}

fn to_kw(value: f64, unit: Option<&str>) -> f64 {
    match unit {
        Some("W") => value / 1000.0,
        Some("MW") => value * 1000.0,
        _ => value,
    }
}

fn is_total(register: &str) -> bool {
    register.ends_with("_TOTAL") || register.ends_with("_IMPORT")
}

fn event(key: &AlarmKey, prefix: &str, value: f64, threshold: f64, ts: u64) -> MeterEvent {
    MeterEvent {
        meter_id: key.meter.clone(),
        event: format!("{prefix}:{}", key.alarm_type.as_str()),
        severity: Some(if prefix == "alarm" { key.alarm_type.severity() } else { Severity::Info }),
        data: json!({
            "id": key.id(),
            "type": key.alarm_type.as_str(),
            "register": key.register,
            "severity": key.alarm_type.severity(),
            "value": value,
            "threshold": threshold,
        }),
        ts,
    }
}

/// The file in the data directory that keeps acknowledged alarm ids across restarts.
pub const ACKS_FILE: &str = "alarm-acks.json";

/// Acknowledges the active alarm `id` and writes every acknowledged id durably before returning (one writer at a
/// time, see [`AckStore`]): `Ok(None)` when no active alarm has that id; `Err` when the write failed (the
/// acknowledgement then holds in memory only, and the caller must not report success).
pub async fn acknowledge_persisted(
    engine: &SharedAlarms,
    id: &str,
    acks: &Arc<AckStore>,
) -> std::io::Result<Option<ActiveAlarm>> {
    let Some(alarm) = lock(engine).acknowledge(id) else { return Ok(None) };
    let (acks, engine) = (acks.clone(), engine.clone());
    tokio::task::spawn_blocking(move || acks.persist(&engine)).await.map_err(std::io::Error::other)??;
    Ok(Some(alarm))
}

/// Writes acknowledged alarm ids durably (unique temporary file, fsync, atomic rename, directory fsync).
pub fn save_acknowledged(path: &std::path::Path, ids: &[String]) -> std::io::Result<()> {
    crate::durable::write_atomic(path, &serde_json::to_vec(ids).map_err(std::io::Error::other)?, Some(0o600))
}

/// Persists acknowledgements one writer at a time, so "acknowledged" answers only after the acknowledgement is on
/// disk and concurrent acknowledgements never overwrite each other with an older list.
#[derive(Debug)]
pub struct AckStore {
    path: std::path::PathBuf,
    writer: Mutex<()>,
}

impl AckStore {
    /// Acknowledgements kept in `path`.
    pub fn new(path: std::path::PathBuf) -> Self {
        AckStore { path, writer: Mutex::new(()) }
    }

    /// Where they are kept.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes the engine's acknowledged ids as they are now (blocking I/O: call off the async threads). The list
    /// is taken under the writer lock, so the last write holds every acknowledgement made before it started.
    pub fn persist(&self, engine: &SharedAlarms) -> std::io::Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let ids = lock(engine).acknowledged_ids();
        save_acknowledged(&self.path, &ids)
    }
}

/// Reads acknowledged alarm ids; a missing file is an empty list, a corrupt one is reported.
pub fn load_acknowledged(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Shared engine (the HTTP API reads and acknowledges alarms).
pub type SharedAlarms = Arc<Mutex<AlarmEngine>>;

/// Consumes hub events, publishes alarm events back to the hub, and checks time-based rules every `tick`.
pub async fn run(
    engine: SharedAlarms,
    hub: Hub,
    mut rx: mpsc::Receiver<Arc<HubEvent>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let events = tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let mut e = lock(&engine);
                match ev.as_ref() {
                    HubEvent::Readings { readings, .. } => readings.iter().flat_map(|r| e.on_reading(r)).collect(),
                    HubEvent::Status(s) => e.on_status(s),
                    HubEvent::Event(_) => Vec::new(),
                }
            }
            _ = ticker.tick() => {
                lock(&engine).tick(now_ms())
            }
        };
        metrics.alarms_active.set(lock(&engine).active.len() as i64);
        for event in events {
            hub.publish(HubEvent::Event(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_reading as reading;

    fn names(events: &[MeterEvent]) -> Vec<String> {
        events.iter().map(|e| e.event.clone()).collect()
    }

    #[test]
    fn unknown_scaler_never_raises_an_alarm() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        let mut r = reading("VOLTAGE_L1", Quantity::Voltage, 2325.0, "V", 1);
        r.meta.scaler_known = Some(false);
        assert!(e.on_reading(&r).is_empty());
        r.meta.scaler_known = Some(true);
        assert_eq!(names(&e.on_reading(&r)), ["alarm:overvoltage"]);
    }

    #[test]
    fn overvoltage_raises_once_holds_in_band_and_clears_once() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        let mut seen = Vec::new();
        for (i, v) in [230.0, 254.0, 255.0, 250.0, 253.5, 249.0, 248.0, 247.9, 247.0, 254.0].iter().enumerate() {
            seen.extend(names(&e.on_reading(&reading("VOLTAGE_A", Quantity::Voltage, *v, "V", i as u64))));
        }
        // 253 * 0.98 = 247.94: 248.0 is still in the band, 247.9 clears; 254.0 raises again.
        assert_eq!(seen, vec!["alarm:overvoltage", "alarm_cleared:overvoltage", "alarm:overvoltage"]);
    }

    #[test]
    fn phases_are_separate_alarms() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        let a = e.on_reading(&reading("VOLTAGE_A", Quantity::Voltage, 260.0, "V", 1));
        let b = e.on_reading(&reading("VOLTAGE_B", Quantity::Voltage, 260.0, "V", 1));
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(e.active().len(), 2);
    }

    #[test]
    fn zero_volts_is_voltage_loss_not_undervoltage() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        assert_eq!(
            names(&e.on_reading(&reading("VOLTAGE_A", Quantity::Voltage, 0.0, "V", 1))),
            vec!["alarm:voltage_loss"]
        );
        assert_eq!(
            names(&e.on_reading(&reading("VOLTAGE_A", Quantity::Voltage, 200.0, "V", 2))),
            vec!["alarm:undervoltage", "alarm_cleared:voltage_loss"]
        );
        assert_eq!(
            names(&e.on_reading(&reading("VOLTAGE_A", Quantity::Voltage, 230.0, "V", 3))),
            vec!["alarm_cleared:undervoltage"]
        );
    }

    #[test]
    fn other_quantities_never_touch_voltage_or_current_alarms() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        // A tariff number or an event counter with a huge value.
        assert!(e.on_reading(&reading("CURRENT_TARIFF", Quantity::Other, 999.0, "", 1)).is_empty());
        assert!(e.on_reading(&reading("EVENT_COUNTER_VOLTAGE", Quantity::Other, 1e6, "", 1)).is_empty());
        assert!(e.active().is_empty());
    }

    #[test]
    fn power_in_watts_is_normalised_and_pf_needs_load() {
        let mut e = AlarmEngine::new(AlarmsConfig::default());
        assert!(e.on_reading(&reading("ACTIVE_POWER_IMPORT", Quantity::ActivePower, 50.0, "W", 1)).is_empty());
        assert!(e.on_reading(&reading("POWER_FACTOR_TOTAL", Quantity::PowerFactor, 0.2, "", 1)).is_empty());
        assert_eq!(
            names(&e.on_reading(&reading("ACTIVE_POWER_IMPORT", Quantity::ActivePower, 12_000.0, "W", 2))),
            vec!["alarm:overload"]
        );
        assert_eq!(
            names(&e.on_reading(&reading("POWER_FACTOR_TOTAL", Quantity::PowerFactor, 0.2, "", 2))),
            vec!["alarm:low_power_factor"]
        );
    }

    #[test]
    fn minimum_duration_and_communication_lost() {
        let cfg = AlarmsConfig { min_duration_secs: 10, offline_grace_secs: 300, ..AlarmsConfig::default() };
        let mut e = AlarmEngine::new(cfg);
        assert!(e.on_reading(&reading("CURRENT_A", Quantity::Current, 70.0, "A", 0)).is_empty());
        assert!(e.on_reading(&reading("CURRENT_A", Quantity::Current, 70.0, "A", 5_000)).is_empty());
        assert_eq!(
            names(&e.on_reading(&reading("CURRENT_A", Quantity::Current, 70.0, "A", 10_000))),
            vec!["alarm:overcurrent"]
        );

        let m = MeterId::new("m1").unwrap();
        let status = |online, ts| StatusChange {
            meter_id: m.clone(),
            online,
            ip: None,
            protocol: None,
            connected_at: None,
            gateway_id: None,
            reason: None,
            ts,
        };
        assert!(e.on_status(&status(false, 1_000)).is_empty());
        assert!(e.tick(200_000).is_empty());
        assert_eq!(names(&e.tick(301_000)), vec!["alarm:communication_lost"]);
        assert!(e.tick(400_000).is_empty());
        assert_eq!(names(&e.on_status(&status(true, 500_000))), vec!["alarm_cleared:communication_lost"]);
        let id = "m1:overcurrent:CURRENT_A";
        assert!(e.acknowledge(id).is_some());
        assert!(e.active().iter().any(|a| a.id == id && a.acknowledged));
        assert!(e.acknowledge("nope").is_none());
    }
}
