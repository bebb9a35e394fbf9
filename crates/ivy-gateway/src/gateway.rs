//! Gateway-wide shared state, and start-up/shutdown of the whole service.

use crate::config::Config;
use crate::hub::Hub;
use crate::meters::admission::{Admission, Limits};
use crate::meters::registry::Registry;
use crate::metrics::Metrics;
use ivy_protocol::registration::{MeterId, RegistrationRule};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State every task shares. Locks here guard bookkeeping maps only, never a meter conversation.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// Meter id → session.
    pub registry: Registry,
    /// Fan-out of readings, status and events.
    pub hub: Hub,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    /// Connection admission.
    pub admission: Mutex<Admission>,
    /// Bounds how many meters are polled at once.
    pub poll_permits: Arc<Semaphore>,
    /// Registration rules (EM114070 built in, then configured ones).
    pub rules: Vec<RegistrationRule>,
    /// Register catalogues and poll groups.
    pub resolver: crate::registers::Resolver,
    known_meters: Mutex<HashSet<MeterId>>,
    next_conn: AtomicU64,
    /// When the gateway started.
    pub started: std::time::Instant,
}

impl Shared {
    /// Shared state for `config` (with its resolved catalogues).
    pub fn new(config: Arc<Config>, resolver: crate::registers::Resolver) -> Self {
        let m = &config.meters;
        let limits = Limits {
            max_connections: m.max_connections,
            max_per_ip: m.max_connections_per_ip,
            rate_limiting: m.rate_limiting_enabled,
            max_attempts: m.max_connection_attempts,
            window: Duration::from_millis(m.rate_limit_window_ms),
            block: Duration::from_millis(m.rate_limit_block_duration_ms),
        };
        Shared {
            resolver,
            rules: config.registration_rules(),
            poll_permits: Arc::new(Semaphore::new(config.polling.max_concurrent)),
            admission: Mutex::new(Admission::new(limits)),
            registry: Registry::new(),
            hub: Hub::new(),
            metrics: Arc::new(Metrics::default()),
            shutdown: CancellationToken::new(),
            known_meters: Mutex::new(HashSet::new()),
            next_conn: AtomicU64::new(1),
            started: std::time::Instant::now(),
            config,
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Remembers a meter id (for the "meters total" figure).
    pub fn note_meter_seen(&self, meter_id: &MeterId) {
        let mut known = self.known_meters.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: ids are validated and a fleet is finite, but cap it anyway against id-spraying peers.
        if known.len() < 1_000_000 {
            known.insert(meter_id.clone());
        }
        self.metrics.meters_total.set(known.len() as i64);
    }

    /// Meters seen since start.
    pub fn meters_total(&self) -> usize {
        self.known_meters.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
