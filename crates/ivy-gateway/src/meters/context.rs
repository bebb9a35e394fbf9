//! What every meter session shares: the configuration, the registry, the hub, the counters, the admission limits,
//! the poll permits, the registration rules and the register catalogues. Built once by the composition root
//! (`gateway.rs`) and handed to the listener; sessions read it, nothing above the meter room depends on it.
//! Locks here guard bookkeeping only, never a meter conversation.

use super::admission::{Admission, Limits};
use super::registry::Registry;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::registers::Resolver;
use ivy_protocol::registration::RegistrationRule;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State every meter session shares.
#[derive(Debug)]
pub struct MeterContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Meter id → the session that holds it.
    pub registry: Arc<Registry>,
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
    pub resolver: Arc<Resolver>,
    next_conn: AtomicU64,
}

impl MeterContext {
    /// The context for `config`, publishing to `hub` and counting in `metrics`.
    pub fn new(
        config: Arc<Config>,
        resolver: Arc<Resolver>,
        hub: Hub,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let m = &config.meters;
        let limits = Limits {
            max_connections: m.max_connections,
            max_per_ip: m.max_connections_per_ip,
            rate_limiting: m.rate_limiting_enabled,
            max_attempts: m.max_connection_attempts,
            window: Duration::from_millis(m.rate_limit_window_ms),
            block: Duration::from_millis(m.rate_limit_block_duration_ms),
        };
        MeterContext {
            resolver,
            rules: config.registration_rules(),
            poll_permits: Arc::new(Semaphore::new(config.polling.max_concurrent)),
            admission: Mutex::new(Admission::new(limits)),
            registry: Arc::new(Registry::new()),
            hub,
            metrics,
            shutdown,
            next_conn: AtomicU64::new(1),
            config,
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
