//! What every meter session shares: the configuration, the registry, the hub, the counters, the admission limits,
//! the poll permits, the registration rules and the register catalogues. Built once by the composition root
//! (`gateway.rs`) and handed to the listener; sessions read it, nothing above the meter room depends on it.
//! Locks here guard bookkeeping only, never a meter conversation.

use super::admission::{Admission, Limits};
use super::registry::Registry;
use crate::config::{Config, Parsed, SourceNet};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::registers::Resolver;
use crate::reload::Current;
use ivy_protocol::registration::RegistrationRule;
use std::collections::HashMap;
use std::net::IpAddr;
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
    /// Register catalogues and poll groups (replaced on SIGHUP; sessions take the current one per use).
    pub resolver: Arc<Current<Resolver>>,
    /// Where meters may connect from (`meters.allowed_sources`; empty allows any).
    pub allowed_sources: Vec<SourceNet>,
    /// Where a given meter id may identify from (`meters.allowed_sources_by_meter`).
    pub allowed_sources_by_meter: HashMap<String, Vec<SourceNet>>,
    next_conn: AtomicU64,
}

impl MeterContext {
    /// The context for `config`, publishing to `hub` and counting in `metrics`.
    pub fn new(
        config: Arc<Config>,
        resolver: Arc<Current<Resolver>>,
        hub: Hub,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let m = &config.meters;
        let limits = Limits {
            max_connections: m.max_connections.get(),
            max_per_ip: m.max_connections_per_ip.get(),
            rate_limiting: m.rate_limiting_enabled,
            max_attempts: m.max_connection_attempts.get(),
            window: Duration::from_millis(m.rate_limit_window_ms),
            block: Duration::from_millis(m.rate_limit_block_duration_ms),
            max_unidentified_penalised: m.max_unidentified_per_penalised_ip.get(),
            max_new_ids_per_minute: m.max_new_ids_per_ip_per_minute,
        };
        // Parsed when the configuration was loaded (a loaded configuration holds only parsed values).
        let nets = |list: &[Parsed<SourceNet>]| list.iter().filter_map(|n| n.get().copied()).collect::<Vec<_>>();
        let allowed_sources = nets(&m.allowed_sources);
        let allowed_sources_by_meter = m.allowed_sources_by_meter.iter().map(|(id, l)| (id.clone(), nets(l))).collect();
        MeterContext {
            resolver,
            rules: config.registration_rules(),
            poll_permits: Arc::new(Semaphore::new(config.polling.max_concurrent.get())),
            admission: Mutex::new(Admission::new(limits)),
            registry: Arc::new(Registry::new()),
            hub,
            metrics,
            shutdown,
            next_conn: AtomicU64::new(1),
            allowed_sources,
            allowed_sources_by_meter,
            config,
        }
    }

    /// Whether a connection from `ip` may be accepted at all.
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|n| n.contains(ip))
    }

    /// Whether `meter_id` may identify from `ip` (its own list when it has one).
    pub fn meter_source_allowed(&self, meter_id: &str, ip: IpAddr) -> bool {
        self.allowed_sources_by_meter.get(meter_id).is_none_or(|nets| nets.iter().any(|n| n.contains(ip)))
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
