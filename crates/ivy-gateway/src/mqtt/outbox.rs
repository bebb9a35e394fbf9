//! What the upstream path shares between rooms: the outbox's figures and wake-up (written by the store's writer,
//! read by the upstream client, `stats` and `/metrics`), and the upstream client's counters. Atomics and a
//! `watch` only: the store, the client and the HTTP handlers never wait for each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use tokio::sync::watch;

/// What the writer and the upstream client share.
#[derive(Debug)]
pub struct OutboxShared {
    /// Id of the last committed row.
    pub(crate) committed: watch::Sender<i64>,
    /// Every row up to this id was acknowledged by the broker (or needs no sending).
    pub(crate) acked_upto: AtomicI64,
    /// Rows waiting.
    pub(crate) depth: AtomicU64,
    /// Their bytes (topic + payload).
    pub(crate) bytes: AtomicU64,
    /// `created_at` (ms) of the oldest row; 0 when empty.
    pub(crate) oldest_at: AtomicU64,
    /// Drops per droppable class (index in `MessageClass::DROPPABLE`: telemetry, snapshot, event).
    pub(crate) dropped: [AtomicU64; 3],
}

/// The outbox's figures (`gateway/stats` `outbox`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxFigures {
    /// Messages waiting (not yet acknowledged by the broker).
    pub queued: u64,
    /// Their bytes (topic + payload).
    pub bytes: u64,
    /// Messages dropped because the outbox was full, all classes.
    pub dropped: u64,
    /// ... per droppable class: telemetry, snapshot, event.
    pub dropped_by_class: [u64; 3],
    /// Age of the oldest waiting message in seconds (0 when empty).
    pub oldest_age_secs: u64,
}

impl Default for OutboxShared {
    fn default() -> Self {
        OutboxShared {
            committed: watch::Sender::new(0),
            acked_upto: AtomicI64::new(0),
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            oldest_at: AtomicU64::new(0),
            dropped: Default::default(),
        }
    }
}

impl OutboxShared {
    /// Watches the id of the last committed row (changes after every commit that added rows).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// The client's report: every row with an id up to `id` was acknowledged by the broker (or needs no sending);
    /// the writer deletes them between batches. Never moves back.
    pub fn acknowledge_upto(&self, id: i64) {
        self.acked_upto.fetch_max(id, Ordering::Relaxed);
    }

    /// Every committed row was acknowledged by the broker.
    pub fn all_acknowledged(&self) -> bool {
        self.acked_upto.load(Ordering::Relaxed) >= *self.committed.borrow()
    }

    /// Every row up to this id was acknowledged.
    pub fn acknowledged_upto(&self) -> i64 {
        self.acked_upto.load(Ordering::Relaxed)
    }

    /// The current figures; `now` (ms) for the age.
    pub fn figures(&self, now: u64) -> OutboxFigures {
        let dropped_by_class = [0, 1, 2].map(|i| self.dropped[i].load(Ordering::Relaxed));
        let oldest = self.oldest_at.load(Ordering::Relaxed);
        OutboxFigures {
            queued: self.depth.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: dropped_by_class.iter().sum(),
            dropped_by_class,
            oldest_age_secs: if oldest == 0 { 0 } else { now.saturating_sub(oldest) / 1000 },
        }
    }
}

/// The upstream client's counters (`gateway/stats` `upstream`, `/metrics` `ivy_upstream_*`).
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Connections lost and connection attempts that failed.
    pub reconnects: AtomicU64,
    /// Messages published (sent; re-sends after a reconnect count again).
    pub published: AtomicU64,
    /// Messages the broker acknowledged (PUBACK).
    pub acked: AtomicU64,
    /// Of those, messages an MQTT 5 broker refused in its PUBACK (not delivered; its ACL, quota...).
    pub refused: AtomicU64,
    /// Messages not sent: a newer connection of the meter owns its retained status (multi-gateway).
    pub superseded: AtomicU64,
    /// Command requests received from the broker.
    pub commands: AtomicU64,
    /// Direct messages (command responses, stats) dropped: their queue was full or QoS 0 while disconnected.
    pub dropped: AtomicU64,
}

/// Shared handles of the upstream path, when it is on.
#[derive(Debug, Clone)]
pub struct UpstreamShared {
    /// The outbox.
    pub outbox: Arc<OutboxShared>,
    /// The client.
    pub counters: Arc<UpstreamCounters>,
}
