//! The durable outbox (SPEC 4.1): every message bound for the upstream broker is written here first, in the same
//! transaction as the readings it comes from, and deleted only once the broker acknowledged it (PUBACK).
//!
//! - The writer thread composes the messages of each batch ([`crate::mqtt::sink::Composer`], the same payloads as
//!   the embedded broker's) and inserts them; after the commit it announces the last id (`crate::mqtt::outbox::OutboxShared`).
//! - The upstream client reads rows in id order on its own connection ([`read_after`]), sends them at QoS 1 and
//!   reports how far everything is acknowledged (`OutboxShared::acknowledge_upto`); the writer deletes that
//!   range between batches.
//! - Bounded by `outbox.max_messages` and `outbox.max_mb`: when over, the oldest telemetry is dropped first, then
//!   snapshots, then ordinary events; status (and lifecycle events) and alarm events are never dropped. Every
//!   drop is counted per class. Depth and bytes are kept in memory (counted once at start), never re-counted.

use super::db::StoreError;
use crate::config::OutboxConfig;
use crate::hub::HubEvent;
use crate::mqtt::outbox::OutboxShared;
use crate::mqtt::sink::{Composer, MessageClass};
use crate::mqtt::topics::TopicPrefix;
use crate::mqtt::{OutboundMessage, Qos};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Rows dropped per statement when the outbox is over its bound.
const DROP_CHUNK: u64 = 10_000;

/// One waiting message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Row id: the order of sending.
    pub id: i64,
    /// Its class.
    pub class: MessageClass,
    /// The message.
    pub message: OutboundMessage,
}

/// Up to `limit` rows with ids above `after`, oldest first (the upstream client's read, on its own connection).
pub fn read_after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, class, topic, payload, qos, retain FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        let payload: Vec<u8> = r.get(3)?;
        Ok(OutboxRow {
            id: r.get(0)?,
            class: MessageClass::from_code(r.get(1)?),
            message: OutboundMessage {
                topic: r.get(2)?,
                payload: payload.into(),
                qos: if r.get::<_, i64>(4)? == 0 { Qos::AtMostOnce } else { Qos::AtLeastOnce },
                retain: r.get(5)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The writer's side: composes, inserts, enforces the bound, deletes what was acknowledged.
#[derive(Debug)]
pub struct OutboxWriter {
    composer: Composer,
    shared: Arc<OutboxShared>,
    max_messages: u64,
    max_bytes: u64,
    depth: u64,
    bytes: u64,
    last_id: i64,
    deleted_upto: i64,
    oldest_dirty: bool,
    /// Figures at the start of the open transaction (restored when it fails).
    saved: (u64, u64, i64),
    dropped_pending: [u64; 3],
    warned_full: bool,
    scratch: Vec<(MessageClass, OutboundMessage)>,
}

impl OutboxWriter {
    /// Counts what the outbox holds (once, at start) and prepares to append to it.
    pub fn open(
        conn: &Connection,
        prefix: TopicPrefix,
        config: &OutboxConfig,
        shared: Arc<OutboxShared>,
    ) -> Result<Self, StoreError> {
        let (depth, bytes, last_id): (i64, i64, i64) =
            conn.query_row("SELECT count(*), coalesce(sum(size), 0), coalesce(max(id), 0) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let mut w = OutboxWriter {
            composer: Composer::new(prefix),
            shared,
            max_messages: config.max_messages,
            max_bytes: config.max_mb.saturating_mul(1024 * 1024),
            depth: depth.max(0) as u64,
            bytes: bytes.max(0) as u64,
            last_id,
            deleted_upto: 0,
            oldest_dirty: true,
            saved: (0, 0, 0),
            dropped_pending: [0; 3],
            warned_full: false,
            scratch: Vec::new(),
        };
        w.publish(conn)?;
        if depth > 0 {
            tracing::info!(
                messages = depth,
                bytes,
                "outbox: messages from before the restart wait for the upstream broker"
            );
        }
        Ok(w)
    }

    /// Inside the batch's transaction: the messages of `events`, then the bound.
    pub(crate) fn append(&mut self, tx: &Connection, events: &[Arc<HubEvent>], now: u64) -> Result<(), StoreError> {
        self.saved = (self.depth, self.bytes, self.last_id);
        self.dropped_pending = [0; 3];
        let mut insert = tx.prepare_cached(
            "INSERT INTO outbox (class, topic, payload, qos, retain, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for event in events {
            self.composer.compose(event, now, &mut self.scratch);
            for (class, msg) in self.scratch.drain(..) {
                let size = (msg.topic.len() + msg.payload.len()) as u64;
                let qos = match msg.qos {
                    Qos::AtMostOnce => 0,
                    Qos::AtLeastOnce => 1,
                };
                insert.execute(params![
                    class.code(),
                    msg.topic,
                    &msg.payload[..],
                    qos,
                    msg.retain,
                    size as i64,
                    now as i64
                ])?;
                self.depth += 1;
                self.bytes += size;
            }
        }
        self.last_id = tx.last_insert_rowid().max(self.last_id);
        if self.depth == self.saved.0 {
            return Ok(());
        }
        if self.saved.0 == 0 {
            self.oldest_dirty = true;
        }
        self.enforce_bound(tx)
    }

    /// `events`' messages in a transaction of their own (before the writer thread starts).
    pub fn append_committed(
        &mut self,
        conn: &Connection,
        events: &[Arc<HubEvent>],
        now: u64,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let tx = conn.unchecked_transaction()?;
        let appended = self.append(&tx, events, now).and_then(|()| Ok(tx.commit()?));
        match appended {
            Ok(()) => self.committed(conn),
            Err(e) => {
                self.rolled_back();
                Err(e)
            }
        }
    }

    fn over(&self) -> bool {
        self.depth > self.max_messages || self.bytes > self.max_bytes
    }

    /// Drops the oldest messages of the droppable classes, in order, until the outbox is within its bound.
    fn enforce_bound(&mut self, tx: &Connection) -> Result<(), StoreError> {
        for (index, class) in MessageClass::DROPPABLE.into_iter().enumerate() {
            while self.over() {
                let excess = self.depth.saturating_sub(self.max_messages);
                let average = (self.bytes / self.depth.max(1)).max(1);
                let excess_bytes = self.bytes.saturating_sub(self.max_bytes).div_ceil(average);
                let n = excess.max(excess_bytes).clamp(1, DROP_CHUNK);
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE class = ?1 ORDER BY id LIMIT ?2)
                     RETURNING size",
                )?;
                let (mut count, mut size) = (0u64, 0u64);
                for s in stmt.query_map(params![class.code(), n as i64], |r| r.get::<_, i64>(0))? {
                    count += 1;
                    size += s?.max(0) as u64;
                }
                if count == 0 {
                    break;
                }
                self.depth = self.depth.saturating_sub(count);
                self.bytes = self.bytes.saturating_sub(size);
                self.dropped_pending[index] += count;
                self.oldest_dirty = true;
            }
        }
        if self.over() && !self.warned_full {
            self.warned_full = true;
            tracing::warn!(
                messages = self.depth,
                bytes = self.bytes,
                "outbox over its bound with only status and alarm messages left: they are kept"
            );
        }
        Ok(())
    }

    /// After the commit: the new rows and drops become visible.
    pub(crate) fn committed(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for (i, n) in self.dropped_pending.iter().enumerate() {
            if *n > 0 {
                self.shared.dropped[i].fetch_add(*n, Ordering::Relaxed);
            }
        }
        if self.dropped_pending.iter().any(|n| *n > 0) && !self.warned_full {
            tracing::warn!(dropped = ?self.dropped_pending, "outbox full: the oldest telemetry was dropped");
            self.warned_full = true;
        }
        self.dropped_pending = [0; 3];
        self.publish(conn)
    }

    /// The transaction failed: nothing of it happened.
    pub(crate) fn rolled_back(&mut self) {
        (self.depth, self.bytes, self.last_id) = self.saved;
        self.dropped_pending = [0; 3];
        self.scratch.clear();
    }

    /// Deletes the rows the client reported acknowledged (one statement, between batches).
    pub(crate) fn delete_acknowledged(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let upto = self.shared.acked_upto.load(Ordering::Relaxed).min(self.last_id);
        if upto <= self.deleted_upto {
            return Ok(());
        }
        let (mut count, mut size) = (0u64, 0u64);
        {
            let mut stmt = conn.prepare_cached("DELETE FROM outbox WHERE id > ?1 AND id <= ?2 RETURNING size")?;
            for s in stmt.query_map(params![self.deleted_upto, upto], |r| r.get::<_, i64>(0))? {
                count += 1;
                size += s?.max(0) as u64;
            }
        }
        self.deleted_upto = upto;
        self.depth = self.depth.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(size);
        if count > 0 {
            self.oldest_dirty = true;
            if !self.over() {
                self.warned_full = false;
            }
        }
        self.publish(conn)
    }

    fn publish(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.oldest_dirty {
            let oldest: Option<i64> = conn
                .prepare_cached("SELECT created_at FROM outbox ORDER BY id LIMIT 1")?
                .query_row([], |r| r.get(0))
                .optional()?;
            self.shared.oldest_at.store(oldest.map_or(0, |t| t.max(1) as u64), Ordering::Relaxed);
            self.oldest_dirty = false;
        }
        self.shared.depth.store(self.depth, Ordering::Relaxed);
        self.shared.bytes.store(self.bytes, Ordering::Relaxed);
        self.shared.committed.send_if_modified(|last| {
            let changed = *last != self.last_id;
            *last = self.last_id;
            changed
        });
        Ok(())
    }
}

/// After the writer stopped (graceful shutdown): deletes the rows acknowledged since its last pass, so the next
/// start does not send them again. Best effort: they would only be sent twice.
pub fn delete_acknowledged_after_stop(path: &std::path::Path, upto: i64) -> Result<usize, StoreError> {
    if upto <= 0 {
        return Ok(0);
    }
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.into(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn.execute("DELETE FROM outbox WHERE id <= ?1", [upto])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::model::{MeterEvent, Quantity, Severity, Source, StatusChange, now_ms};
    use crate::store::db::{StoreStatus, open_reader, open_writer};
    use crate::store::writer::Writer;
    use ivy_protocol::registration::MeterId;

    fn readings(n: usize, ts: u64) -> Arc<HubEvent> {
        let rs = (0..n)
            .map(|i| crate::model::test_reading(&format!("R{i}"), Quantity::Voltage, i as f64, "V", ts + i as u64))
            .collect();
        Arc::new(HubEvent::Readings {
            meter_id: MeterId::new("m1").unwrap(),
            source: Source::Dlt645,
            readings: rs,
            snapshot: false,
        })
    }

    fn status(online: bool) -> Arc<HubEvent> {
        Arc::new(HubEvent::Status(StatusChange {
            meter_id: MeterId::new("m1").unwrap(),
            online,
            ip: None,
            protocol: None,
            connected_at: None,
            gateway_id: None,
            reason: (!online).then(|| "connection_closed".to_owned()),
            ts: 1,
        }))
    }

    fn event(name: &str) -> Arc<HubEvent> {
        Arc::new(HubEvent::Event(MeterEvent {
            meter_id: MeterId::new("m1").unwrap(),
            event: name.into(),
            severity: Some(Severity::Warning),
            data: serde_json::Value::Null,
            ts: 1,
        }))
    }

    fn writer(dir: &std::path::Path, config: &OutboxConfig) -> (Writer, Arc<OutboxShared>) {
        let conn = open_writer(&dir.join("ivy.db")).unwrap();
        let shared = Arc::new(OutboxShared::default());
        let prefix = TopicPrefix::new("ivy/v1", None).unwrap();
        let outbox = OutboxWriter::open(&conn, prefix, config, shared.clone()).unwrap();
        let w = Writer::new(conn, StoreConfig::default(), Arc::new(StoreStatus::default())).with_outbox(outbox);
        (w, shared)
    }

    fn classes(dir: &std::path::Path) -> Vec<(i64, MessageClass)> {
        let conn = open_reader(&dir.join("ivy.db")).unwrap();
        read_after(&conn, 0, 1_000_000).unwrap().into_iter().map(|r| (r.id, r.class)).collect()
    }

    #[test]
    fn messages_are_committed_with_their_readings_and_deleted_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), &OutboxConfig::default());
        let mut committed = shared.subscribe();
        w.write_batch(&[status(true), readings(3, 1000), event("alarm:overvoltage")]).unwrap();
        assert!(committed.has_changed().unwrap());
        let last = *committed.borrow_and_update();
        let rows = read_after(&open_reader(&dir.path().join("ivy.db")).unwrap(), 0, 100).unwrap();
        let topics: Vec<&str> = rows.iter().map(|r| r.message.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "ivy/v1/meters/m1/status",
                "ivy/v1/meters/m1/telemetry",
                "ivy/v1/meters/m1/telemetry",
                "ivy/v1/meters/m1/telemetry",
                "ivy/v1/meters/m1/events"
            ]
        );
        assert_eq!(rows.last().unwrap().id, last);
        assert!(rows[0].message.retain && !rows[1].message.retain);
        let telemetry: serde_json::Value = serde_json::from_slice(&rows[1].message.payload).unwrap();
        assert_eq!(telemetry["register"], "R0");
        assert_eq!(shared.figures(now_ms()).queued, 5);
        assert!(!shared.all_acknowledged());

        // The client acknowledged the first three: the writer deletes them between batches.
        shared.acknowledge_upto(rows[2].id);
        w.delete_acknowledged().unwrap();
        assert_eq!(shared.figures(now_ms()).queued, 2);
        shared.acknowledge_upto(last);
        w.delete_acknowledged().unwrap();
        let f = shared.figures(now_ms());
        assert_eq!((f.queued, f.bytes, f.oldest_age_secs), (0, 0, 0));
        assert!(shared.all_acknowledged());

        // Ids never go back, even with the table empty (the client reads `id > last sent`).
        w.write_batch(&[readings(1, 2000)]).unwrap();
        let after = classes(dir.path());
        assert_eq!(after.len(), 1);
        assert!(after[0].0 > last, "{} after {last}", after[0].0);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_telemetry_and_keeps_status_and_alarms() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig { max_messages: 100, max_mb: 64 };
        let (mut w, shared) = writer(dir.path(), &config);
        // 20 batches: a status, 30 readings, an alarm event and an ordinary event each.
        for b in 0..20u64 {
            w.write_batch(&[
                status(b % 2 == 0),
                readings(30, b * 100),
                event("alarm:overvoltage"),
                event("dlms-error"),
            ])
            .unwrap();
        }
        let rows = classes(dir.path());
        let count = |c: MessageClass| rows.iter().filter(|(_, k)| *k == c).count();
        assert_eq!(count(MessageClass::Status), 20, "status is never dropped");
        assert_eq!(count(MessageClass::Alarm), 20, "alarm events are never dropped");
        assert_eq!(rows.len(), 100, "within the bound");
        assert_eq!(count(MessageClass::Event), 20, "ordinary events go only after telemetry and snapshots");
        let f = shared.figures(now_ms());
        assert_eq!(f.queued, 100);
        assert_eq!(f.dropped, 20 * 33 - 100);
        assert_eq!(f.dropped_by_class, [20 * 33 - 100, 0, 0]);
        // The telemetry left is the newest: every kept telemetry row is newer than every dropped one.
        let conn = open_reader(&dir.path().join("ivy.db")).unwrap();
        let kept: Vec<serde_json::Value> = read_after(&conn, 0, 1000)
            .unwrap()
            .into_iter()
            .filter(|r| r.class == MessageClass::Telemetry)
            .map(|r| serde_json::from_slice(&r.message.payload).unwrap())
            .collect();
        assert_eq!(kept.len(), 40);
        assert!(kept.iter().all(|t| t["ts"].as_u64().unwrap() >= 1800), "only the last batches' telemetry is left");

        // Only status and alarms over the bound: kept, not dropped.
        for _ in 0..100 {
            w.write_batch(&[status(true), event("alarm:overcurrent")]).unwrap();
        }
        let rows = classes(dir.path());
        assert_eq!(rows.iter().filter(|(_, k)| *k == MessageClass::Status).count(), 120);
        assert_eq!(rows.iter().filter(|(_, k)| *k == MessageClass::Alarm).count(), 120);

        // The byte bound applies the same way.
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), &OutboxConfig { max_messages: 1_000_000, max_mb: 1 });
        for b in 0..100u64 {
            w.write_batch(&[readings(100, b * 1000), event("alarm:overvoltage")]).unwrap();
        }
        let f = shared.figures(now_ms());
        assert!(f.bytes <= 1024 * 1024, "{} bytes", f.bytes);
        assert!(f.dropped > 0);
        assert_eq!(classes(dir.path()).iter().filter(|(_, k)| *k == MessageClass::Alarm).count(), 100);
    }

    #[test]
    fn a_restart_counts_what_the_outbox_holds() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = writer(dir.path(), &OutboxConfig::default());
            w.write_batch(&[readings(7, 1000)]).unwrap();
        }
        let (_w, shared) = writer(dir.path(), &OutboxConfig::default());
        let f = shared.figures(now_ms());
        assert_eq!(f.queued, 7);
        assert!(f.bytes > 7 * 50);
        assert_eq!(*shared.subscribe().borrow(), classes(dir.path()).last().unwrap().0);
    }
}
