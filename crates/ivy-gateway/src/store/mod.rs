//! The embedded SQLite store (SPEC 8): readings history, events, alarms and the last known state of every meter,
//! in one WAL-mode file in `data_dir` (`ivy.db`), so a restart forgets nothing.
//!
//! One writer thread ([`writer`]) is fed by the hub through a bounded queue and commits batches (at most
//! `store.batch_ms` after the first row or `store.batch_rows` readings); it also prunes old data in small chunks.
//! It never runs on the meter or MQTT path: when it falls behind, the hub drops events *for the store only* and
//! counts them. Readers (HTTP, CLI) open their own connections: WAL readers never block the writer.

pub mod db;
pub mod outbox;
pub mod query;
pub mod schema;
pub mod writer;

pub use db::{DAY_MS, StoreError, StoreStatus, open_reader, open_writer, used_bytes};

use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Arc;

/// The store as the rest of the gateway sees it: where the file is and how the writer is doing.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    /// The database file.
    pub path: PathBuf,
    /// The writer's figures.
    pub status: Arc<StoreStatus>,
}

impl StoreHandle {
    /// A reading connection (open one per request: cheap, and WAL readers run in parallel).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        open_reader(&self.path)
    }

    /// Runs `f` with a reading connection on a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&open_reader(&path)?))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Records an operator's acknowledgement durably (its own transaction, synced) before the API answers.
    pub async fn acknowledge(&self, alarm_id: String, by: String, at: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            writer::record_acknowledgement(&conn, &alarm_id, &by, at)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{PRUNE_CHUNK, Writer, prune};
    use super::*;
    use crate::config::StoreConfig;
    use crate::hub::HubEvent;
    use crate::model::{Quantity, Reading, Source};
    use ivy_protocol::registration::MeterId;

    fn reading(meter: &str, register: &str, value: f64, ts: u64) -> Reading {
        Reading {
            meter_id: MeterId::new(meter).unwrap(),
            ..crate::model::test_reading(register, Quantity::Voltage, value, "V", ts)
        }
    }

    fn batch(meter: &str, readings: Vec<Reading>) -> Arc<HubEvent> {
        Arc::new(HubEvent::Readings {
            meter_id: MeterId::new(meter).unwrap(),
            source: Source::Dlt645,
            readings,
            snapshot: true,
        })
    }

    fn writer(dir: &std::path::Path, config: StoreConfig) -> Writer {
        Writer::new(open_writer(&dir.join("ivy.db")).unwrap(), config, Arc::new(StoreStatus::default()))
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_newer_schema_stops_start_up_and_an_older_one_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivy.db");
        {
            // An empty file is version 0: migrated to the latest.
            let conn = open_writer(&path).unwrap();
            assert_eq!(schema::version(&conn).unwrap(), schema::latest());
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
            conn.pragma_update(None, "user_version", schema::latest() + 1).unwrap();
        }
        let err = open_writer(&path).unwrap_err().to_string();
        assert!(err.contains("newer than the"), "{err}");
        assert!(open_reader(&path).is_err());
    }

    #[test]
    fn step_aggregates_of_a_known_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), StoreConfig::default());
        // Two hours, one reading per 10 minutes: hour 0 holds 0..=5, hour 1 holds 6..=11 (values = index).
        let hour = 3_600_000u64;
        let base = 1_700_000_000_000 / hour * hour;
        let readings: Vec<Reading> =
            (0..12).map(|i| reading("m1", "VOLTAGE_A", i as f64, base + i * 600_000)).collect();
        w.write_batch(&[batch("m1", readings)]).unwrap();
        let conn = open_reader(&dir.path().join("ivy.db")).unwrap();
        let series = query::series(&conn, Some("m1"), Some("voltage_a")).unwrap().unwrap();
        assert_eq!(series.len(), 1);
        let b = query::buckets(&conn, &series, 0, u64::MAX, hour, 100).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].ts, b[0].min, b[0].avg, b[0].max, b[0].last, b[0].count), (base, 0.0, 2.5, 5.0, 5.0, 6));
        assert_eq!(
            (b[1].ts, b[1].min, b[1].avg, b[1].max, b[1].last, b[1].count),
            (base + hour, 6.0, 8.5, 11.0, 11.0, 6)
        );
        let p = query::points(&conn, &series, base + 600_000, base + 1_800_000, 100).unwrap();
        assert_eq!(p.iter().map(|p| p.value).collect::<Vec<_>>(), vec![1.0, 2.0, 3.0]);
        let p = query::points(&conn, &series, 0, u64::MAX, 2).unwrap();
        assert_eq!(p.iter().map(|p| p.value).collect::<Vec<_>>(), vec![10.0, 11.0], "limit keeps the newest");
        assert!(query::series(&conn, Some("nope"), None).unwrap().is_none());
    }

    #[test]
    fn retention_prunes_readings_older_than_the_retention_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { retention_days: 30, ..StoreConfig::default() };
        let mut w = writer(dir.path(), config.clone());
        let now = 1_800_000_000_000u64;
        // 40 days, one reading per hour, two series.
        let mut events = Vec::new();
        for h in 0..40 * 24u64 {
            let ts = now - h * 3_600_000;
            events
                .push(batch("m1", vec![reading("m1", "VOLTAGE_A", h as f64, ts), reading("m1", "VOLTAGE_B", 1.0, ts)]));
        }
        w.write_batch(&events).unwrap();
        let conn = open_reader(&dir.path().join("ivy.db")).unwrap();
        assert_eq!(count(&conn), 2 * 40 * 24);
        // Small chunks: several passes.
        let mut passes = 0;
        loop {
            passes += 1;
            let r = w.prune(now, 100).unwrap();
            if !r.more {
                break;
            }
            assert!(passes < 100);
        }
        assert!(passes > 1, "pruned in chunks");
        let cutoff = now - 30 * DAY_MS;
        let oldest: i64 = conn.query_row("SELECT min(ts) FROM readings", [], |r| r.get(0)).unwrap();
        assert!(oldest as u64 >= cutoff);
        // Readings at or after the cutoff: h in 0..=720.
        assert_eq!(count(&conn), 2 * (30 * 24 + 1));
    }

    #[test]
    fn the_size_budget_prunes_the_oldest_readings_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { max_size_mb: 1, retention_days: 3650, ..StoreConfig::default() };
        let mut w = writer(dir.path(), config.clone());
        let now = 1_800_000_000_000u64;
        // Four series, 25,000 readings each, one per minute (about 2.5 MB).
        let start = now - 25_000 * 60_000;
        let events: Vec<_> = (0..25_000u64)
            .map(|i| {
                let ts = start + i * 60_000;
                let rs = ["A", "B", "C", "D"].iter().map(|r| reading("m1", r, ts as f64, ts)).collect();
                batch("m1", rs)
            })
            .collect();
        w.write_batch(&events).unwrap();
        let conn = open_writer(&dir.path().join("ivy.db")).unwrap();
        assert!(used_bytes(&conn).unwrap() > 1024 * 1024, "the test data exceeds the budget");
        let before = count(&conn);
        let mut passes = 0;
        while w.prune(now, PRUNE_CHUNK).unwrap().more {
            passes += 1;
            assert!(passes < 1000);
        }
        assert!(used_bytes(&conn).unwrap() <= 1024 * 1024, "within the budget after pruning");
        let after = count(&conn);
        assert!(after > 0 && after < before, "{after} of {before}");
        // What is left is the newest, contiguous up to the last reading.
        let mut stmt = conn.prepare("SELECT min(ts), max(ts), count(*) FROM readings GROUP BY register").unwrap();
        let spans: Vec<(i64, i64, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        assert_eq!(spans.len(), 4);
        for (oldest, newest, n) in &spans {
            assert_eq!(*newest as u64, start + 24_999 * 60_000);
            assert_eq!((newest - oldest) / 60_000 + 1, *n, "no gaps in a series: only its oldest went");
        }
        let firsts: Vec<i64> = spans.iter().map(|s| s.0).collect();
        let spread = firsts.iter().max().unwrap() - firsts.iter().min().unwrap();
        assert!(spread <= 3_600_000, "series are pruned together, oldest first (spread {spread} ms)");
        // Nothing is past the retention: the age rule alone deletes nothing more.
        assert_eq!(
            prune(&conn, &StoreConfig { max_size_mb: 1024, ..config }, now, PRUNE_CHUNK).unwrap().readings_by_age,
            0
        );
    }

    #[test]
    fn alarms_and_acknowledgements_survive_and_acks_file_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let acks = dir.path().join(crate::alarms::ACKS_FILE);
        crate::alarms::save_acknowledged(&acks, &["m0:overcurrent:CURRENT_A".to_owned()]).unwrap();
        let conn = open_writer(&dir.path().join("ivy.db")).unwrap();
        assert_eq!(writer::migrate_acks_file(&conn, &acks).unwrap(), 1);
        assert!(!acks.exists(), "the file is imported once");
        assert_eq!(writer::migrate_acks_file(&conn, &acks).unwrap(), 0);
        drop(conn);

        let mut w = writer(dir.path(), StoreConfig::default());
        let mut engine = crate::alarms::AlarmEngine::new(Default::default());
        let raised = engine.on_reading(&reading("m1", "VOLTAGE_A", 260.0, 1_000));
        let other = engine.on_reading(&reading("m1", "VOLTAGE_B", 260.0, 1_000));
        let cleared = engine.on_reading(&reading("m1", "VOLTAGE_B", 230.0, 2_000));
        let events: Vec<_> =
            raised.into_iter().chain(other).chain(cleared).map(|e| Arc::new(HubEvent::Event(e))).collect();
        w.write_batch(&events).unwrap();
        let conn = open_reader(&dir.path().join("ivy.db")).unwrap();
        writer::record_acknowledgement(
            &open_writer(&dir.path().join("ivy.db")).unwrap(),
            "m1:overvoltage:VOLTAGE_A",
            "ops",
            1_500,
        )
        .unwrap();
        let active = query::active_alarms(&conn).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, "m1:overvoltage:VOLTAGE_A");
        assert!(active[0].acknowledged);
        let all = query::alarms(&conn, false, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|a| a.cleared_at.is_some()).count(), 1);
        assert_eq!(all.iter().find(|a| a.active).unwrap().acknowledged_by.as_deref(), Some("ops"));
        let ids = query::acknowledged_ids(&conn).unwrap();
        assert_eq!(ids, vec!["m0:overcurrent:CURRENT_A", "m1:overvoltage:VOLTAGE_A"]);

        // A restarted engine holds the alarm: a recovered reading clears it once, nothing is raised again.
        let mut restarted = crate::alarms::AlarmEngine::new(Default::default());
        restarted.restore_active(active);
        assert!(restarted.on_reading(&reading("m1", "VOLTAGE_A", 260.0, 3_000)).is_empty());
        let names: Vec<String> =
            restarted.on_reading(&reading("m1", "VOLTAGE_A", 230.0, 4_000)).into_iter().map(|e| e.event).collect();
        assert_eq!(names, vec!["alarm_cleared:overvoltage"]);
    }

    #[test]
    fn the_writer_is_behind_when_its_queue_is_more_than_half_full() {
        let status = StoreStatus::default();
        assert!(!status.behind(), "no queue yet");
        status.capacity.store(100, std::sync::atomic::Ordering::Relaxed);
        status.queued.store(50, std::sync::atomic::Ordering::Relaxed);
        assert!(!status.behind());
        status.queued.store(51, std::sync::atomic::Ordering::Relaxed);
        assert!(status.behind());
    }

    #[test]
    fn csv_rows_quote_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), StoreConfig::default());
        w.write_batch(&[batch("m1", vec![reading("m1", "A", 1.25, 1000), reading("m1", "A", -3.5e-7, 2000)])]).unwrap();
        let conn = open_reader(&dir.path().join("ivy.db")).unwrap();
        let series = query::series(&conn, None, None).unwrap().unwrap();
        let mut lines = Vec::new();
        query::csv_rows(&conn, &series, 0, u64::MAX, None, |l| {
            lines.push(l);
            true
        })
        .unwrap();
        let values: Vec<f64> = lines.iter().map(|l| l.split(',').nth(4).unwrap().parse().unwrap()).collect();
        assert_eq!(values, vec![1.25, -3.5e-7]);
        assert_eq!(query::csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(query::parse_step("15m"), Some(900_000));
        assert_eq!(query::parse_step("1d"), Some(86_400_000));
        assert_eq!(query::parse_step("0h"), None);
        assert_eq!(query::parse_step("h"), None);
        assert_eq!(query::parse_step("5x"), None);
    }
}
