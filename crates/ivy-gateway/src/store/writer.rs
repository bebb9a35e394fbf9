//! The one writer: hub events in, batched transactions out, and retention pruned in small chunks between
//! batches. Runs on its own thread (SQLite calls block), never on the meter or MQTT path.

use super::db::{DAY_MS, StoreError, StoreStatus, used_bytes};
use crate::config::StoreConfig;
use crate::hub::HubEvent;
use crate::model::{MeterEvent, Reading, Source, StatusChange, now_ms};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Rows deleted per prune statement: small enough that a chunk never holds the writer for long.
pub const PRUNE_CHUNK: usize = 5_000;
/// How often retention is checked when nothing was left to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often the last-known snapshot of changed meters is written (numeric values are in the readings anyway;
/// this bounds the write volume of the meters table under push load).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// The size budget deletes the oldest readings this far past the oldest one per chunk.
const SIZE_SLICE_MS: u64 = 3_600_000;

/// What one meter looked like, kept in memory between snapshot writes.
#[derive(Debug, Default)]
struct MeterState {
    id: i64,
    latest: BTreeMap<String, Latest>,
    last_seen: u64,
    dirty: bool,
}

/// One register's latest value: where it is rather than a copy (readings arrive at up to 100,000/s, the snapshot
/// is written once a second, so copying every reading into JSON was a tenth of the writer's time).
#[derive(Debug)]
enum Latest {
    /// Loaded from the database at start (the snapshot of the previous run).
    Restored(Value),
    /// Reading `index` of a hub event this writer stored.
    Live(Arc<HubEvent>, usize),
}

impl Latest {
    /// The snapshot entry: `{value, unit, dataId, rawValue, ts}`.
    fn to_json(&self) -> Value {
        match self {
            Latest::Restored(v) => v.clone(),
            Latest::Live(event, index) => match event.as_ref() {
                HubEvent::Readings { readings, .. } => readings.get(*index).map_or(Value::Null, |r| {
                    json!({"value": r.value.to_json(), "unit": r.unit, "dataId": r.data_id, "rawValue": r.raw_value, "ts": r.ts})
                }),
                _ => Value::Null,
            },
        }
    }
}

/// Ids resolved so far (each is one lookup per process lifetime).
#[derive(Debug, Default)]
struct Ids {
    meters: HashMap<String, MeterState>,
    registers: HashMap<String, i64>,
    series_units: HashMap<(i64, i64), Option<String>>,
}

/// The writer: the only connection that writes readings, meters, events and alarms.
pub struct Writer {
    conn: Connection,
    ids: Ids,
    config: StoreConfig,
    status: Arc<StoreStatus>,
    /// With an upstream broker: the messages of every batch go into the outbox in the same transaction.
    outbox: Option<super::outbox::OutboxWriter>,
}

/// What a prune pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Readings older than the retention.
    pub readings_by_age: usize,
    /// Readings deleted for the size budget.
    pub readings_by_size: usize,
    /// Events and cleared alarms older than their retention.
    pub events: usize,
    /// More is due (a chunk was full): call again soon.
    pub more: bool,
}

impl Writer {
    /// A writer on an open (migrated) connection.
    pub fn new(conn: Connection, config: StoreConfig, status: Arc<StoreStatus>) -> Self {
        Writer { conn, ids: Ids::default(), config, status, outbox: None }
    }

    /// The writer's connection (for set-up before the writer thread starts).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Also fills the upstream outbox (see [`super::outbox`]).
    pub fn with_outbox(mut self, outbox: super::outbox::OutboxWriter) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Writes `events` in one transaction (with their upstream messages when the outbox is on); returns the
    /// readings stored.
    pub fn write_batch(&mut self, events: &[Arc<HubEvent>]) -> Result<usize, StoreError> {
        let result = self.write_transaction(events);
        if let Some(outbox) = &mut self.outbox {
            match &result {
                Ok(_) => {
                    if let Err(e) = outbox.committed(&self.conn) {
                        tracing::warn!(error = %e, "outbox: figures not refreshed");
                    }
                }
                Err(_) => outbox.rolled_back(),
            }
        }
        result
    }

    /// Deletes the outbox rows the upstream broker acknowledged.
    pub fn delete_acknowledged(&mut self) -> Result<(), StoreError> {
        match &mut self.outbox {
            Some(outbox) => outbox.delete_acknowledged(&self.conn),
            None => Ok(()),
        }
    }

    fn write_transaction(&mut self, events: &[Arc<HubEvent>]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut readings = 0;
        let mut written_events = 0;
        for event in events {
            match event.as_ref() {
                HubEvent::Readings { meter_id, source, readings: rs, .. } => {
                    readings += write_readings(&tx, &mut self.ids, event, meter_id.as_str(), *source, rs)?;
                }
                HubEvent::Status(s) => write_status(&tx, &mut self.ids, s)?,
                HubEvent::Event(e) => {
                    write_event(&tx, &mut self.ids, e)?;
                    written_events += 1;
                }
            }
        }
        if let Some(outbox) = &mut self.outbox {
            outbox.append(&tx, events, now_ms())?;
        }
        tx.commit()?;
        self.status.readings_written.fetch_add(readings as u64, Ordering::Relaxed);
        self.status.events_written.fetch_add(written_events, Ordering::Relaxed);
        self.status.batches.fetch_add(1, Ordering::Relaxed);
        Ok(readings)
    }

    /// Writes the snapshot of every meter whose latest values changed since the last call.
    pub fn flush_snapshots(&mut self) -> Result<(), StoreError> {
        if !self.ids.meters.values().any(|m| m.dirty) {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE meters SET last_snapshot = ?1, last_seen = max(last_seen, ?2) WHERE id = ?3")?;
            for m in self.ids.meters.values_mut().filter(|m| m.dirty) {
                let snapshot: Map<String, Value> = m.latest.iter().map(|(k, l)| (k.clone(), l.to_json())).collect();
                stmt.execute(params![Value::Object(snapshot).to_string(), m.last_seen as i64, m.id])?;
                m.dirty = false;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One chunk of retention work at time `now` (ms): readings past `retention_days`, then the oldest readings
    /// while the live data exceeds `max_size_mb`, then events and cleared alarms past `events_retention_days`.
    pub fn prune(&mut self, now: u64, chunk: usize) -> Result<PruneReport, StoreError> {
        let report = prune(&self.conn, &self.config, now, chunk)?;
        let total = report.readings_by_age + report.readings_by_size;
        self.status.pruned.fetch_add(total as u64, Ordering::Relaxed);
        if let Ok(used) = used_bytes(&self.conn) {
            self.status.used_bytes.store(used, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Runs until `stop` is cancelled (then drains what is queued) or the hub goes away.
    pub fn run(mut self, mut rx: mpsc::Receiver<Arc<HubEvent>>, stop: CancellationToken) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "store writer cannot start its timer");
                self.status.stopped.store(true, Ordering::Relaxed);
                return;
            }
        };
        self.status.capacity.store(rx.max_capacity() as u64, Ordering::Relaxed);
        let batch_window = Duration::from_millis(self.config.batch_ms.max(1));
        let mut next_prune = std::time::Instant::now() + Duration::from_secs(2);
        let mut next_snapshot = std::time::Instant::now() + SNAPSHOT_EVERY;
        let mut stopping = false;
        while !stopping {
            let first = rt.block_on(async {
                tokio::select! {
                    biased;
                    ev = rx.recv() => ev.map_or(Next::Stop, Next::Event),
                    _ = stop.cancelled() => Next::Stop,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => Next::Idle,
                }
            });
            let mut batch = Vec::new();
            match first {
                Next::Stop => stopping = true,
                Next::Idle => {}
                Next::Event(ev) => {
                    let mut rows = rows_of(&ev);
                    batch.push(ev);
                    let deadline = tokio::time::Instant::now() + batch_window;
                    while rows < self.config.batch_rows.get() {
                        match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                            Ok(Some(ev)) => {
                                rows += rows_of(&ev);
                                batch.push(ev);
                            }
                            Ok(None) => {
                                stopping = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            if stopping {
                // Take what is still queued: a graceful stop loses nothing that reached the writer's queue.
                while let Ok(ev) = rx.try_recv() {
                    batch.push(ev);
                }
            }
            self.status.queued.store(rx.len() as u64, Ordering::Relaxed);
            if !batch.is_empty() {
                match self.write_batch(&batch) {
                    Ok(_) => self.status.failing.store(false, Ordering::Relaxed),
                    Err(e) => {
                        let lost: usize = batch.iter().map(|e| rows_of(e)).sum();
                        self.status.lost.fetch_add(lost as u64, Ordering::Relaxed);
                        if !self.status.failing.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, readings = lost, "store: a batch could not be written");
                        }
                    }
                }
            }
            if let Err(e) = self.delete_acknowledged() {
                tracing::warn!(error = %e, "outbox: acknowledged messages not deleted");
            }
            let now = std::time::Instant::now();
            if stopping || now >= next_snapshot {
                if let Err(e) = self.flush_snapshots() {
                    tracing::warn!(error = %e, "store: meter snapshots not written");
                }
                next_snapshot = now + SNAPSHOT_EVERY;
            }
            if !stopping && now >= next_prune {
                next_prune = match self.prune(now_ms(), PRUNE_CHUNK) {
                    Ok(r) if r.more => now + Duration::from_millis(50),
                    Ok(_) => now + PRUNE_EVERY,
                    Err(e) => {
                        tracing::warn!(error = %e, "store: pruning failed");
                        now + PRUNE_EVERY
                    }
                };
            }
        }
        // Fold the WAL back into the database on a clean stop.
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
        self.status.stopped.store(true, Ordering::Relaxed);
        tracing::info!("store writer stopped");
    }
}

/// What the writer waits for between batches.
enum Next {
    /// The first event of a batch.
    Event(Arc<HubEvent>),
    /// Nothing for a while: time for housekeeping.
    Idle,
    /// Stop (drain first).
    Stop,
}

/// Readings in an event (the batch size counts readings; status and events count as one row).
fn rows_of(ev: &HubEvent) -> usize {
    match ev {
        HubEvent::Readings { readings, .. } => readings.len().max(1),
        _ => 1,
    }
}

/// The database id of `meter_id`, inserting the meter on first sight (and loading its last snapshot so later
/// snapshots keep registers not read since a restart).
fn meter<'a>(
    conn: &Connection,
    ids: &'a mut Ids,
    meter_id: &str,
    protocol: Option<Source>,
    ts: u64,
) -> Result<&'a mut MeterState, StoreError> {
    if !ids.meters.contains_key(meter_id) {
        conn.prepare_cached(
            "INSERT INTO meters (meter_id, protocol, first_seen, last_seen, online) VALUES (?1, ?2, ?3, ?3, 0)
             ON CONFLICT (meter_id) DO NOTHING",
        )?
        .execute(params![meter_id, protocol.map(|p| p.as_str()), ts as i64])?;
        let (id, snapshot, last_seen): (i64, Option<String>, i64) = conn
            .prepare_cached("SELECT id, last_snapshot, last_seen FROM meters WHERE meter_id = ?1")?
            .query_row(params![meter_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let latest = match snapshot.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(m))) => m.into_iter().map(|(k, v)| (k, Latest::Restored(v))).collect(),
            _ => BTreeMap::new(),
        };
        ids.meters
            .insert(meter_id.to_owned(), MeterState { id, latest, last_seen: last_seen.max(0) as u64, dirty: false });
    }
    ids.meters.get_mut(meter_id).ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
}

fn register(conn: &Connection, ids: &mut Ids, key: &str) -> Result<i64, StoreError> {
    if let Some(id) = ids.registers.get(key) {
        return Ok(*id);
    }
    conn.prepare_cached("INSERT INTO registers (key) VALUES (?1) ON CONFLICT (key) DO NOTHING")?.execute([key])?;
    let id: i64 = conn.prepare_cached("SELECT id FROM registers WHERE key = ?1")?.query_row([key], |r| r.get(0))?;
    ids.registers.insert(key.to_owned(), id);
    Ok(id)
}

fn write_readings(
    conn: &Connection,
    ids: &mut Ids,
    event: &Arc<HubEvent>,
    meter_id: &str,
    source: Source,
    readings: &[Reading],
) -> Result<usize, StoreError> {
    let first_ts = readings.iter().map(|r| r.ts).min().unwrap_or_else(now_ms);
    let m = meter(conn, ids, meter_id, Some(source), first_ts)?.id;
    let mut insert =
        conn.prepare_cached("INSERT OR REPLACE INTO readings (meter, register, ts, value) VALUES (?1, ?2, ?3, ?4)")?;
    let mut stored = 0;
    for (index, r) in readings.iter().enumerate() {
        let reg = register(conn, ids, &r.register)?;
        if let Some(v) = r.value.as_f64().filter(|v| v.is_finite()) {
            insert.execute(params![m, reg, r.ts as i64, v])?;
            stored += 1;
            let known = ids.series_units.get(&(m, reg));
            if known != Some(&r.unit) {
                conn.prepare_cached(
                    "INSERT INTO series (meter, register, unit) VALUES (?1, ?2, ?3)
                     ON CONFLICT (meter, register) DO UPDATE SET unit = excluded.unit",
                )?
                .execute(params![m, reg, r.unit])?;
                ids.series_units.insert((m, reg), r.unit.clone());
            }
        }
        if let Some(state) = ids.meters.get_mut(meter_id) {
            let latest = Latest::Live(event.clone(), index);
            match state.latest.get_mut(&r.register) {
                Some(slot) => *slot = latest,
                None => {
                    state.latest.insert(r.register.clone(), latest);
                }
            }
            state.last_seen = state.last_seen.max(r.ts);
            state.dirty = true;
        }
    }
    Ok(stored)
}

fn write_status(conn: &Connection, ids: &mut Ids, s: &StatusChange) -> Result<(), StoreError> {
    let m = meter(conn, ids, s.meter_id.as_str(), s.protocol, s.ts)?.id;
    conn.prepare_cached(
        "UPDATE meters SET online = ?1, ip = coalesce(?2, ip), protocol = coalesce(?3, protocol),
         last_seen = max(last_seen, ?4), last_status = ?5 WHERE id = ?6",
    )?
    .execute(params![
        s.online,
        s.ip,
        s.protocol.map(|p| p.as_str()),
        s.ts as i64,
        crate::mqtt::sink::status_payload(s).to_string(),
        m
    ])?;
    Ok(())
}

fn write_event(conn: &Connection, ids: &mut Ids, e: &MeterEvent) -> Result<(), StoreError> {
    let m = meter(conn, ids, e.meter_id.as_str(), None, e.ts)?.id;
    let severity = e.severity.and_then(|s| serde_json::to_value(s).ok()).and_then(|v| v.as_str().map(str::to_owned));
    conn.prepare_cached("INSERT INTO events (ts, meter, event, severity, data) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![e.ts as i64, m, e.event, severity, e.data.to_string()])?;
    let alarm_id = e.data.get("id").and_then(Value::as_str);
    if let (Some(_), Some(id)) = (e.event.strip_prefix("alarm:"), alarm_id) {
        let text = |k: &str| e.data.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let num = |k: &str| e.data.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        conn.prepare_cached(
            "INSERT INTO alarms (alarm_id, meter, type, register, severity, value, threshold, raised_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            id,
            m,
            text("type"),
            text("register"),
            text("severity"),
            num("value"),
            num("threshold"),
            e.ts as i64
        ])?;
    } else if let (Some(_), Some(id)) = (e.event.strip_prefix("alarm_cleared:"), alarm_id) {
        conn.prepare_cached("UPDATE alarms SET cleared_at = ?1 WHERE alarm_id = ?2 AND cleared_at IS NULL")?
            .execute(params![e.ts as i64, id])?;
    } else if let ("alarm_acknowledged", Some(id)) = (e.event.as_str(), alarm_id) {
        let by = e.data.get("by").and_then(Value::as_str).unwrap_or_default();
        record_acknowledgement(conn, id, by, e.ts)?;
    }
    Ok(())
}

/// Records that `by` acknowledged alarm `alarm_id` at `at` (ms): the id is remembered for the alarm engine, and
/// the open occurrence is marked (idempotent: the first acknowledgement of an occurrence wins).
pub fn record_acknowledgement(conn: &Connection, alarm_id: &str, by: &str, at: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO acknowledgements (alarm_id, at, by) VALUES (?1, ?2, ?3) ON CONFLICT (alarm_id) DO NOTHING",
    )?
    .execute(params![alarm_id, at as i64, by])?;
    conn.prepare_cached(
        "UPDATE alarms SET acknowledged_at = ?1, acknowledged_by = ?2
         WHERE alarm_id = ?3 AND cleared_at IS NULL AND acknowledged_at IS NULL",
    )?
    .execute(params![at as i64, by, alarm_id])?;
    Ok(())
}

/// Imports the acknowledged ids of the old `alarm-acks.json` file once, then renames it `*.migrated`.
pub fn migrate_acks_file(conn: &Connection, file: &std::path::Path) -> Result<usize, StoreError> {
    let ids = match crate::alarms::load_acknowledged(file) {
        Ok(ids) if file.exists() => ids,
        Ok(_) => return Ok(0),
        Err(e) => return Err(StoreError::Io(e)),
    };
    for id in &ids {
        conn.prepare_cached(
            "INSERT INTO acknowledgements (alarm_id, at, by) VALUES (?1, ?2, 'alarm-acks.json')
             ON CONFLICT (alarm_id) DO NOTHING",
        )?
        .execute(params![id, now_ms() as i64])?;
    }
    std::fs::rename(file, file.with_extension("json.migrated"))?;
    Ok(ids.len())
}

/// Deletes up to `chunk` readings of every series older than `cutoff` (ms); with `oldest_first` the chunk takes
/// the oldest of them across series (a sort of the candidates: keep the cutoff close).
fn delete_readings_before(
    conn: &Connection,
    cutoff: u64,
    chunk: usize,
    oldest_first: bool,
) -> Result<usize, StoreError> {
    let sql = if oldest_first {
        "DELETE FROM readings WHERE (meter, register, ts) IN (
             SELECT r.meter, r.register, r.ts FROM series s
             JOIN readings r ON r.meter = s.meter AND r.register = s.register AND r.ts < ?1
             ORDER BY r.ts LIMIT ?2)"
    } else {
        "DELETE FROM readings WHERE (meter, register, ts) IN (
             SELECT r.meter, r.register, r.ts FROM series s
             JOIN readings r ON r.meter = s.meter AND r.register = s.register AND r.ts < ?1
             LIMIT ?2)"
    };
    Ok(conn.prepare_cached(sql)?.execute(params![cutoff as i64, chunk as i64])?)
}

/// One chunk of retention work (see [`Writer::prune`]); `now` is passed in so tests need not wait for days.
pub fn prune(conn: &Connection, config: &StoreConfig, now: u64, chunk: usize) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    let chunk = chunk.max(1);
    let cutoff = now.saturating_sub(u64::from(config.retention_days) * DAY_MS);
    report.readings_by_age = delete_readings_before(conn, cutoff, chunk, false)?;
    if report.readings_by_age == chunk {
        report.more = true;
        return Ok(report);
    }
    let budget = config.max_size_mb.saturating_mul(1024 * 1024);
    if used_bytes(conn)? > budget {
        let oldest: Option<i64> = conn
            .prepare_cached(
                "SELECT min((SELECT ts FROM readings r WHERE r.meter = s.meter AND r.register = s.register
                             ORDER BY ts LIMIT 1)) FROM series s",
            )?
            .query_row([], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(oldest) = oldest {
            // Widen the slice until a chunk's worth of the oldest readings is gone (readings may be sparse).
            let mut slice = SIZE_SLICE_MS;
            for _ in 0..48 {
                let cutoff = (oldest.max(0) as u64).saturating_add(slice);
                report.readings_by_size += delete_readings_before(conn, cutoff, chunk - report.readings_by_size, true)?;
                if report.readings_by_size >= chunk || cutoff > now || used_bytes(conn)? <= budget {
                    break;
                }
                slice = slice.saturating_mul(2);
            }
            report.more = report.readings_by_size > 0 && used_bytes(conn)? > budget;
        }
    }
    let events_cutoff = now.saturating_sub(u64::from(config.events_retention_days) * DAY_MS) as i64;
    report.events = conn
        .prepare_cached("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ?1 ORDER BY ts LIMIT ?2)")?
        .execute(params![events_cutoff, chunk as i64])?;
    report.events += conn
        .prepare_cached(
            "DELETE FROM alarms WHERE id IN
                 (SELECT id FROM alarms WHERE cleared_at IS NOT NULL AND cleared_at < ?1 LIMIT ?2)",
        )?
        .execute(params![events_cutoff, chunk as i64])?;
    report.more |= report.events >= chunk;
    Ok(report)
}
