//! Reading the store: known meters, alarms, events, history (raw points or min/avg/max/last per time bucket),
//! CSV export and the integrity check. Every function takes a reading connection ([`super::open_reader`]).

use super::db::{StoreError, used_bytes};
use super::schema;
use crate::alarms::{ActiveAlarm, AlarmType};
use crate::model::Severity;
use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::Value;

/// A meter as the store remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMeter {
    /// The meter id.
    pub meter_id: String,
    /// `dlt645` / `dlms`.
    pub protocol: Option<String>,
    /// Last peer IP.
    pub ip: Option<String>,
    /// First time seen (ms).
    pub first_seen: u64,
    /// Last time anything was heard (ms).
    pub last_seen: u64,
    /// Online at the last status change.
    pub online: bool,
    /// The last status payload (as published on MQTT).
    pub last_status: Option<Value>,
    /// Latest value per register: `{REGISTER: {value, unit, dataId, rawValue, ts}}` (numeric and not).
    pub snapshot: serde_json::Map<String, Value>,
}

/// Every meter the store knows, by id.
pub fn meters(conn: &Connection) -> Result<Vec<StoredMeter>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT meter_id, protocol, ip, first_seen, last_seen, online, last_status, last_snapshot
         FROM meters ORDER BY meter_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let status: Option<String> = r.get(6)?;
        let snapshot: Option<String> = r.get(7)?;
        Ok(StoredMeter {
            meter_id: r.get(0)?,
            protocol: r.get(1)?,
            ip: r.get(2)?,
            first_seen: r.get::<_, i64>(3)?.max(0) as u64,
            last_seen: r.get::<_, i64>(4)?.max(0) as u64,
            online: r.get(5)?,
            last_status: status.and_then(|s| serde_json::from_str(&s).ok()),
            snapshot: match snapshot.as_deref().map(serde_json::from_str::<Value>) {
                Some(Ok(Value::Object(m))) => m,
                _ => serde_json::Map::new(),
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn severity(s: &str) -> Severity {
    match s {
        "critical" => Severity::Critical,
        "info" => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Alarms raised and not cleared, oldest first, as the alarm engine holds them.
pub fn active_alarms(conn: &Connection) -> Result<Vec<ActiveAlarm>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.alarm_id, m.meter_id, a.type, a.register, a.severity, a.value, a.threshold, a.raised_at,
                a.acknowledged_at IS NOT NULL OR EXISTS (SELECT 1 FROM acknowledgements k WHERE k.alarm_id = a.alarm_id)
         FROM alarms a JOIN meters m ON m.id = a.meter
         WHERE a.cleared_at IS NULL ORDER BY a.raised_at, a.alarm_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, f64>(5)?,
            r.get::<_, f64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, bool>(8)?,
        ))
    })?;
    let mut out: Vec<ActiveAlarm> = Vec::new();
    for row in rows {
        let (id, meter_id, kind, register, sev, value, threshold, raised_at, acknowledged) = row?;
        let Ok(alarm_type) = kind.parse::<AlarmType>() else { continue };
        // One open occurrence per alarm id (the newest wins if an unclean stop left two).
        out.retain(|a| a.id != id);
        out.push(ActiveAlarm {
            id,
            meter_id,
            alarm_type,
            register,
            severity: severity(&sev),
            value,
            threshold,
            raised_at: raised_at.max(0) as u64,
            acknowledged,
        });
    }
    Ok(out)
}

/// Every alarm id an operator acknowledged.
pub fn acknowledged_ids(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT alarm_id FROM acknowledgements ORDER BY alarm_id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An alarm occurrence (`GET /api/alarms?state=all`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmRecord {
    /// `<meter>:<type>:<register>`.
    pub id: String,
    /// The meter.
    pub meter_id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub alarm_type: String,
    /// Register.
    pub register: String,
    /// Severity.
    pub severity: String,
    /// Value that raised it.
    pub value: f64,
    /// Threshold.
    pub threshold: f64,
    /// Raised (ms).
    pub raised_at: u64,
    /// Cleared (ms), if it was.
    pub cleared_at: Option<u64>,
    /// Acknowledged (ms), if it was.
    pub acknowledged_at: Option<u64>,
    /// By whom.
    pub acknowledged_by: Option<String>,
    /// Not cleared.
    pub active: bool,
}

/// Alarm occurrences, newest first: only the active ones, or all (within the events retention).
pub fn alarms(conn: &Connection, active_only: bool, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.alarm_id, m.meter_id, a.type, a.register, a.severity, a.value, a.threshold, a.raised_at,
                a.cleared_at, a.acknowledged_at, a.acknowledged_by
         FROM alarms a JOIN meters m ON m.id = a.meter
         WHERE (?1 = 0 OR a.cleared_at IS NULL) ORDER BY a.raised_at DESC, a.id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![active_only, limit as i64], |r| {
        let cleared: Option<i64> = r.get(8)?;
        Ok(AlarmRecord {
            id: r.get(0)?,
            meter_id: r.get(1)?,
            alarm_type: r.get(2)?,
            register: r.get(3)?,
            severity: r.get(4)?,
            value: r.get(5)?,
            threshold: r.get(6)?,
            raised_at: r.get::<_, i64>(7)?.max(0) as u64,
            cleared_at: cleared.map(|c| c.max(0) as u64),
            acknowledged_at: r.get::<_, Option<i64>>(9)?.map(|c| c.max(0) as u64),
            acknowledged_by: r.get(10)?,
            active: cleared.is_none(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A stored event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Sequence number in the store (newer is larger).
    pub seq: i64,
    /// When (ms).
    pub ts: u64,
    /// The meter.
    pub meter_id: String,
    /// Event name.
    pub event: String,
    /// Severity.
    pub severity: Option<String>,
    /// Details.
    pub data: Value,
}

/// Events in `[from, to]` (ms), newest first, optionally of one meter, at most `limit`.
pub fn events(
    conn: &Connection,
    from: u64,
    to: u64,
    meter: Option<&str>,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT e.id, e.ts, m.meter_id, e.event, e.severity, e.data FROM events e JOIN meters m ON m.id = e.meter
         WHERE e.ts BETWEEN ?1 AND ?2 AND (?3 IS NULL OR m.meter_id = ?3)
         ORDER BY e.ts DESC, e.id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![clamp(from), clamp(to), meter, limit as i64], |r| {
        let data: String = r.get(5)?;
        Ok(EventRecord {
            seq: r.get(0)?,
            ts: r.get::<_, i64>(1)?.max(0) as u64,
            meter_id: r.get(2)?,
            event: r.get(3)?,
            severity: r.get(4)?,
            data: serde_json::from_str(&data).unwrap_or(Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn clamp(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

/// One (meter, register) with readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Meter row id.
    pub meter: i64,
    /// Register row id.
    pub register: i64,
    /// Meter id.
    pub meter_id: String,
    /// Register key.
    pub key: String,
    /// Unit of the latest reading.
    pub unit: Option<String>,
}

/// The series of one meter (or of every meter), optionally of one register (case-insensitive), by key. `None`
/// when the meter is unknown.
pub fn series(
    conn: &Connection,
    meter_id: Option<&str>,
    register: Option<&str>,
) -> Result<Option<Vec<Series>>, StoreError> {
    if let Some(id) = meter_id {
        let known: bool =
            conn.query_row("SELECT EXISTS (SELECT 1 FROM meters WHERE meter_id = ?1)", [id], |r| r.get(0))?;
        if !known {
            return Ok(None);
        }
    }
    let mut stmt = conn.prepare(
        "SELECT s.meter, s.register, m.meter_id, g.key, s.unit FROM series s
         JOIN meters m ON m.id = s.meter JOIN registers g ON g.id = s.register
         WHERE (?1 IS NULL OR m.meter_id = ?1) AND (?2 IS NULL OR g.key = ?2 COLLATE NOCASE)
         ORDER BY m.meter_id, g.key",
    )?;
    let rows = stmt.query_map(params![meter_id, register], |r| {
        Ok(Series { meter: r.get(0)?, register: r.get(1)?, meter_id: r.get(2)?, key: r.get(3)?, unit: r.get(4)? })
    })?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

/// A raw history point.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Register key.
    pub register: String,
    /// When (ms).
    pub ts: u64,
    /// The value.
    pub value: f64,
    /// Unit.
    pub unit: Option<String>,
}

/// Raw points of `series` in `[from, to]`, oldest first; at most `limit` (the newest when there are more).
pub fn points(
    conn: &Connection,
    series: &[Series],
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<Point>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, value FROM readings WHERE meter = ?1 AND register = ?2 AND ts BETWEEN ?3 AND ?4
         ORDER BY ts DESC LIMIT ?5",
    )?;
    let mut out = Vec::new();
    for s in series {
        let rows = stmt.query_map(params![s.meter, s.register, clamp(from), clamp(to), limit as i64], |r| {
            Ok(Point {
                register: s.key.clone(),
                ts: r.get::<_, i64>(0)?.max(0) as u64,
                value: r.get(1)?,
                unit: s.unit.clone(),
            })
        })?;
        for p in rows {
            out.push(p?);
        }
    }
    out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.register.cmp(&b.register)));
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(out)
}

/// Aggregates of one time bucket.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Register key.
    pub register: String,
    /// Start of the bucket (ms; buckets are aligned to multiples of the step since the epoch, UTC).
    pub ts: u64,
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub avg: f64,
    /// Largest value.
    pub max: f64,
    /// The value with the latest timestamp in the bucket.
    pub last: f64,
    /// Readings in the bucket.
    pub count: u64,
    /// Unit.
    pub unit: Option<String>,
}

/// min/avg/max/last per `step` ms bucket of `series` in `[from, to]`, oldest first, at most `limit` buckets (the
/// newest). One grouped scan of the primary key per series; `last` is one key lookup per bucket.
pub fn buckets(
    conn: &Connection,
    series: &[Series],
    from: u64,
    to: u64,
    step: u64,
    limit: usize,
) -> Result<Vec<Bucket>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT b * ?5, mn, av, mx, n,
                (SELECT value FROM readings r WHERE r.meter = ?1 AND r.register = ?2 AND r.ts = lt)
         FROM (SELECT ts / ?5 AS b, min(value) AS mn, avg(value) AS av, max(value) AS mx, count(*) AS n,
                      max(ts) AS lt
               FROM readings WHERE meter = ?1 AND register = ?2 AND ts BETWEEN ?3 AND ?4 GROUP BY b)
         ORDER BY b DESC LIMIT ?6",
    )?;
    let step = step.max(1);
    let mut out = Vec::new();
    for s in series {
        let rows =
            stmt.query_map(params![s.meter, s.register, clamp(from), clamp(to), clamp(step), limit as i64], |r| {
                Ok(Bucket {
                    register: s.key.clone(),
                    ts: r.get::<_, i64>(0)?.max(0) as u64,
                    min: r.get(1)?,
                    avg: r.get(2)?,
                    max: r.get(3)?,
                    count: r.get::<_, i64>(4)?.max(0) as u64,
                    last: r.get(5)?,
                    unit: s.unit.clone(),
                })
            })?;
        for b in rows {
            out.push(b?);
        }
    }
    out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.register.cmp(&b.register)));
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(out)
}

/// Parses a bucket width: a positive integer with `s`, `m`, `h` or `d` (`15m`, `1h`, `1d`), at least one second.
pub fn parse_step(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms <= 366 * 86_400_000)
}

/// The CSV header of raw readings.
pub const CSV_HEADER: &str = "meter_id,register,ts,time,value,unit\n";
/// The CSV header of aggregated readings.
pub const CSV_BUCKET_HEADER: &str = "meter_id,register,ts,time,min,avg,max,last,count,unit\n";

/// RFC 3339 UTC of a ms timestamp.
pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A CSV field: quoted when it holds a separator, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Walks the raw readings of `series` in `[from, to]`, series by series, oldest first, handing each CSV line to
/// `emit` (which may stop the walk by returning false). Returns the rows emitted.
pub fn csv_rows(
    conn: &Connection,
    series: &[Series],
    from: u64,
    to: u64,
    limit: Option<usize>,
    mut emit: impl FnMut(String) -> bool,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, value FROM readings WHERE meter = ?1 AND register = ?2 AND ts BETWEEN ?3 AND ?4 ORDER BY ts",
    )?;
    let mut n = 0u64;
    let max = limit.map_or(u64::MAX, |l| l as u64);
    for s in series {
        let mut rows = stmt.query(params![s.meter, s.register, clamp(from), clamp(to)])?;
        while let Some(r) = rows.next()? {
            if n >= max {
                return Ok(n);
            }
            let ts = r.get::<_, i64>(0)?.max(0) as u64;
            let value: f64 = r.get(1)?;
            let line = format!(
                "{},{},{ts},{},{value},{}\n",
                csv_field(&s.meter_id),
                csv_field(&s.key),
                rfc3339(ts),
                csv_field(s.unit.as_deref().unwrap_or_default())
            );
            n += 1;
            if !emit(line) {
                return Ok(n);
            }
        }
    }
    Ok(n)
}

/// One CSV line of a bucket.
pub fn csv_bucket(meter_id: &str, b: &Bucket) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        csv_field(meter_id),
        csv_field(&b.register),
        b.ts,
        rfc3339(b.ts),
        b.min,
        b.avg,
        b.max,
        b.last,
        b.count,
        csv_field(b.unit.as_deref().unwrap_or_default())
    )
}

/// `ivy-gateway db check`: integrity and counts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// `ok`, or the problems `PRAGMA integrity_check` found.
    pub integrity: Vec<String>,
    /// Schema version.
    pub schema_version: i64,
    /// Meters.
    pub meters: i64,
    /// Series (meter × register).
    pub series: i64,
    /// Readings.
    pub readings: i64,
    /// Oldest and newest reading (ms).
    pub readings_span: Option<(u64, u64)>,
    /// Events.
    pub events: i64,
    /// Alarm occurrences.
    pub alarms: i64,
    /// Alarms not cleared.
    pub active_alarms: i64,
    /// Outbox messages waiting for the upstream broker's PUBACK (rows are deleted once acknowledged).
    pub outbox_pending: i64,
    /// Pages in use × page size.
    pub used_bytes: u64,
}

impl CheckReport {
    /// `PRAGMA integrity_check` said ok.
    pub fn ok(&self) -> bool {
        self.integrity == ["ok"]
    }
}

/// Runs `PRAGMA integrity_check` and counts the rows of every table.
pub fn check(conn: &Connection) -> Result<CheckReport, StoreError> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let integrity: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let span: (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(ts), max(ts) FROM readings", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(CheckReport {
        integrity,
        schema_version: schema::version(conn)
            .map_err(|source| StoreError::Schema { path: std::path::PathBuf::new(), source })?,
        meters: count("SELECT count(*) FROM meters")?,
        series: count("SELECT count(*) FROM series")?,
        readings: count("SELECT count(*) FROM readings")?,
        readings_span: match span {
            (Some(a), Some(b)) => Some((a.max(0) as u64, b.max(0) as u64)),
            _ => None,
        },
        events: count("SELECT count(*) FROM events")?,
        alarms: count("SELECT count(*) FROM alarms")?,
        active_alarms: count("SELECT count(*) FROM alarms WHERE cleared_at IS NULL")?,
        outbox_pending: count("SELECT count(*) FROM outbox")?,
        used_bytes: used_bytes(conn)?,
    })
}
