//! The database schema as numbered migration steps (SPEC 8). `PRAGMA user_version` holds the number of steps
//! applied: a database written by a newer gateway (more steps than this binary knows) is refused at start-up, an
//! older one is migrated forward, one transaction per step.

use rusqlite::Connection;

/// The migration steps, oldest first. Never edit a released step: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: meters, registers, compact readings, events, alarms, acknowledgements, the upstream outbox.
    r#"
    CREATE TABLE meters (
        id            INTEGER PRIMARY KEY,
        meter_id      TEXT NOT NULL UNIQUE,
        protocol      TEXT,
        ip            TEXT,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        online        INTEGER NOT NULL DEFAULT 0,
        last_status   TEXT,
        last_snapshot TEXT
    );
    CREATE TABLE registers (
        id  INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE
    );
    -- One row per numeric reading: integer ids, ms timestamp, f64. The primary key is the only index.
    CREATE TABLE readings (
        meter    INTEGER NOT NULL,
        register INTEGER NOT NULL,
        ts       INTEGER NOT NULL,
        value    REAL NOT NULL,
        PRIMARY KEY (meter, register, ts)
    ) WITHOUT ROWID;
    -- Every (meter, register) with readings, and its unit: the list that pruning and exports walk.
    CREATE TABLE series (
        meter    INTEGER NOT NULL,
        register INTEGER NOT NULL,
        unit     TEXT,
        PRIMARY KEY (meter, register)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        ts       INTEGER NOT NULL,
        meter    INTEGER NOT NULL,
        event    TEXT NOT NULL,
        severity TEXT,
        data     TEXT NOT NULL
    );
    CREATE INDEX events_ts ON events (ts);
    CREATE INDEX events_meter_ts ON events (meter, ts);
    CREATE TABLE alarms (
        id              INTEGER PRIMARY KEY,
        alarm_id        TEXT NOT NULL,
        meter           INTEGER NOT NULL,
        type            TEXT NOT NULL,
        register        TEXT NOT NULL,
        severity        TEXT NOT NULL,
        value           REAL NOT NULL,
        threshold       REAL NOT NULL,
        raised_at       INTEGER NOT NULL,
        cleared_at      INTEGER,
        acknowledged_at INTEGER,
        acknowledged_by TEXT
    );
    CREATE INDEX alarms_open ON alarms (alarm_id) WHERE cleared_at IS NULL;
    CREATE INDEX alarms_raised ON alarms (raised_at);
    -- Alarm ids an operator acknowledged (the alarm engine keeps them across raise and clear).
    CREATE TABLE acknowledgements (
        alarm_id TEXT PRIMARY KEY,
        at       INTEGER NOT NULL,
        by       TEXT NOT NULL
    ) WITHOUT ROWID;
    -- Store-and-forward to an upstream broker (its own issue): messages are marked sent on PUBACK only.
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        sent_at    INTEGER
    );
    "#,
    // 2: the outbox as the upstream client uses it. Step 1's table was never written (no upstream client
    // existed), so it is replaced: AUTOINCREMENT ids never go back (the client reads `id > last sent`, even after
    // the table emptied), `class` drives the drop policy (telemetry first; status and alarms never), `size` keeps
    // the byte bound exact without re-measuring rows.
    r#"
    DROP TABLE outbox;
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        class      INTEGER NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        size       INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX outbox_class ON outbox (class, id);
    "#,
];

/// Why the schema could not be brought to this binary's version.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The file was written by a newer gateway.
    #[error(
        "the database has schema version {found}, newer than the {known} this gateway knows: \
         run the newer gateway, or restore a backup made before the upgrade"
    )]
    Newer {
        /// Version in the file.
        found: i64,
        /// Latest version this binary knows.
        known: i64,
    },
    /// SQLite refused a step.
    #[error("migrating the database to schema version {step}: {source}")]
    Step {
        /// The step that failed.
        step: i64,
        /// Why.
        source: rusqlite::Error,
    },
    /// Reading the version.
    #[error("reading the schema version: {0}")]
    Version(rusqlite::Error),
}

/// The schema version this binary writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The schema version of an open database.
pub fn version(conn: &Connection) -> Result<i64, MigrationError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(MigrationError::Version)
}

/// Applies the missing steps; returns the version found before.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrationError> {
    let found = version(conn)?;
    let known = latest();
    if found > known {
        return Err(MigrationError::Newer { found, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let step = index as i64 + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", step)?;
            tx.commit()
        };
        apply(conn).map_err(|source| MigrationError::Step { step, source })?;
    }
    Ok(found)
}
