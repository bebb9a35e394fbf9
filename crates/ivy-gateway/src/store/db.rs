//! Opening the database (WAL, migrations) and the figures the writer reports.

use super::schema;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused to open the file.
    #[error("database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The schema could not be migrated (or is newer than this binary).
    #[error("database {path}: {source}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Why.
        source: schema::MigrationError,
    },
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Writing a migrated file or an export.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Milliseconds per day.
pub const DAY_MS: u64 = 86_400_000;

/// Opens (creating it when missing) the database for writing: WAL mode, `synchronous=NORMAL` (a commit survives a
/// crash of the process; WAL keeps the file consistent after `kill -9`), and migrates the schema.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.into(), source })?;
    configure(&conn).map_err(|source| StoreError::Open { path: path.into(), source })?;
    schema::migrate(&mut conn).map_err(|source| StoreError::Schema { path: path.into(), source })?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite did not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Keep the WAL from growing without bound between automatic checkpoints under sustained writes.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Readings of thousands of series land on as many B-tree leaves: a page cache that holds them (up to 32 MiB,
    // filled only as pages are used) and a checkpoint every 16,384 WAL pages (64 MiB, the journal size limit above)
    // instead of every 1,000 took a third off the writer's CPU per reading (docs/PERFORMANCE.md, store).
    conn.pragma_update(None, "cache_size", -32_768)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    Ok(())
}

/// Opens the database for reading (HTTP queries, exports, checks); the schema must be one this binary knows.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: path.into(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let found = schema::version(&conn).map_err(|source| StoreError::Schema { path: path.into(), source })?;
    if found > schema::latest() {
        return Err(StoreError::Schema {
            path: path.into(),
            source: schema::MigrationError::Newer { found, known: schema::latest() },
        });
    }
    Ok(conn)
}

/// What the writer reports to the rest of the gateway (health, metrics).
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// Readings committed since start.
    pub readings_written: AtomicU64,
    /// Events committed since start.
    pub events_written: AtomicU64,
    /// Transactions committed since start.
    pub batches: AtomicU64,
    /// Readings deleted by retention and the size budget since start.
    pub pruned: AtomicU64,
    /// Readings lost because their batch could not be committed.
    pub lost: AtomicU64,
    /// Events waiting in the writer's queue at the last look.
    pub queued: AtomicU64,
    /// The writer's queue capacity.
    pub capacity: AtomicU64,
    /// Set while the last commit failed (cleared by the next good one).
    pub failing: AtomicBool,
    /// Set when the writer has ended.
    pub stopped: AtomicBool,
    /// Store drops seen by the last health check, and when they last grew (ms).
    pub dropped_seen: AtomicU64,
    /// See `dropped_seen`.
    pub dropped_at: AtomicU64,
    /// Live data in bytes (pages in use × page size) at the last prune check.
    pub used_bytes: AtomicU64,
}

impl StoreStatus {
    /// The writer is behind: its queue is more than half full.
    pub fn behind(&self) -> bool {
        let cap = self.capacity.load(Ordering::Relaxed);
        cap > 0 && self.queued.load(Ordering::Relaxed) * 2 > cap
    }
}

/// Bytes of live data: pages in use (not on the free list) × page size.
pub fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}
