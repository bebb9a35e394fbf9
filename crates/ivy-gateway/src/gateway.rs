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

/// Where the gateway listens (actual addresses; ports resolved when 0 was configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Meters.
    pub meters: std::net::SocketAddr,
    /// MQTT TCP.
    pub mqtt: std::net::SocketAddr,
    /// MQTT over WebSocket.
    pub mqtt_ws: Option<std::net::SocketAddr>,
    /// HTTP.
    pub http: Option<std::net::SocketAddr>,
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration (catalogue files, groups).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Users file.
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The broker.
    #[error("{0}")]
    Broker(#[from] crate::mqtt::broker::BrokerError),
    /// A listener.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    /// The data directory.
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    addrs: Addresses,
    broker: crate::mqtt::broker::EmbeddedBroker,
    publisher: crate::mqtt::Publisher,
    prefix: crate::mqtt::topics::TopicPrefix,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    first_run_password: Option<String>,
    alarms: crate::alarms::SharedAlarms,
}

/// Hub queue sizes, in events (a push or one meter's poll cycle is one event of up to ~10 readings). Sinks share
/// the events (`Arc`), so the memory they can hold together is bounded by the deepest queue, not the sum.
// 16,384 events absorb the burst of an aligned 10,000-meter poll cycle (every meter finishes within ~100 ms) with
// headroom: with 8192 the MQTT sink dropped up to 4% of such a cycle (counted) while the HTTP live view was a sink
// of its own (it is an observer now, see `Hub::observe`). A deeper queue only turns overload into memory (400 MB
// at 300,000 readings/s offered with 65,536).
const MQTT_SINK_QUEUE: usize = 16_384;
const ALARM_SINK_QUEUE: usize = 16_384;

impl Gateway {
    /// Starts everything: broker, sinks, command router, meter listener, HTTP; publishes the gateway status.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let resolver = crate::registers::Resolver::from_config(&config)?;
        let data_dir = config.gateway.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
        let (users, first_run_password) =
            crate::auth::UserStore::load_or_init(&data_dir, config.mqtt.users.as_deref())?;
        let auth = Arc::new(crate::auth::Authenticator::new(users, config.mqtt.auth_enabled));
        let prefix =
            crate::mqtt::topics::TopicPrefix::new(&config.mqtt.topic_prefix, config.gateway.gateway_id.as_deref())
                .map_err(|e| crate::config::ConfigError { key: "mqtt.topic_prefix".into(), problem: e.to_string() })?;

        let q = &config.mqtt;
        let tls = match (&q.tls_cert, &q.tls_key) {
            (Some(cert), Some(key)) if q.tls_port != 0 || q.wss_port != 0 => Some(crate::mqtt::broker::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                tls_addr: (q.tls_port != 0).then(|| std::net::SocketAddr::new(q.host, q.tls_port)),
                wss_addr: (q.wss_port != 0).then(|| std::net::SocketAddr::new(q.host, q.wss_port)),
            }),
            _ => None,
        };
        let broker_cfg = crate::mqtt::broker::BrokerConfig {
            tcp_addr: std::net::SocketAddr::new(q.host, q.port),
            ws_addr: (q.ws_port != 0).then(|| std::net::SocketAddr::new(q.host, q.ws_port)),
            tls,
            max_connections: q.max_connections,
            max_packet_size: 1024 * 1024,
            publish_queue: q.publish_queue,
            inbound_queue: 4096,
        };
        let mut broker = crate::mqtt::broker::EmbeddedBroker::start(&broker_cfg, auth.clone(), prefix.clone()).await?;
        let publisher = broker.publisher();
        let inbound = broker.take_inbound();

        let shared = Arc::new(Shared::new(config.clone(), resolver));
        let mut tasks = Vec::new();

        // Sinks first, so nothing published by sessions is missed.
        let sink_rx = shared.hub.subscribe("mqtt", MQTT_SINK_QUEUE);
        tasks.push(tokio::spawn(crate::mqtt::sink::run(prefix.clone(), publisher.clone(), sink_rx)));
        let mut engine = crate::alarms::AlarmEngine::new(config.alarms.clone());
        let acks_file = data_dir.join(crate::alarms::ACKS_FILE);
        match crate::alarms::load_acknowledged(&acks_file) {
            Ok(ids) => engine.restore_acknowledged(ids),
            Err(e) => tracing::warn!(file = %acks_file.display(), error = %e, "alarm acknowledgements not restored"),
        }
        let alarms = Arc::new(Mutex::new(engine));
        let live = Arc::new(crate::http::live::LiveStore::new(crate::http::live::LiveLimits {
            history_points: config.http.history_points,
            ..Default::default()
        }));
        if config.http.enabled {
            let view = live.clone();
            shared.hub.observe(Arc::new(move |event| view.apply(event)));
        }
        let alarm_rx = shared.hub.subscribe("alarms", ALARM_SINK_QUEUE);
        tasks.push(tokio::spawn(crate::alarms::run(
            alarms.clone(),
            shared.hub.clone(),
            alarm_rx,
            shared.metrics.clone(),
        )));

        let router = crate::commands::router::CommandRouter::new(shared.clone());
        if let Some(inbound) = inbound {
            tasks.push(tokio::spawn(router.clone().run_mqtt(prefix.clone(), publisher.clone(), inbound)));
        }

        let meter_addr = std::net::SocketAddr::new(config.meters.host, config.meters.port);
        let listener = tokio::net::TcpListener::bind(meter_addr).await.map_err(|e| StartError::Bind(meter_addr, e))?;
        let meters = listener.local_addr().unwrap_or(meter_addr);
        tasks.push(tokio::spawn(crate::meters::listener::run(listener, shared.clone())));

        let http = if config.http.enabled {
            let addr = std::net::SocketAddr::new(config.http.host, config.http.port);
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| StartError::Bind(addr, e))?;
            let local = l.local_addr().unwrap_or(addr);
            let app = crate::http::router(crate::http::HttpState {
                shared: shared.clone(),
                broker: broker.counters(),
                auth: auth.clone(),
                sessions: Arc::new(crate::http::session::Sessions::new(
                    Duration::from_secs(config.http.session_idle_secs.max(60)),
                    10_000,
                )),
                alarms: alarms.clone(),
                acks_file,
                live,
                commands: router.clone(),
                limiter: Arc::new(crate::http::ratelimit::RateLimiter::new(
                    config.http.rate_limit_per_minute,
                    Duration::from_secs(60),
                )),
            });
            let shutdown = shared.shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(l, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            }));
            Some(local)
        } else {
            None
        };

        let addrs = Addresses { meters, mqtt: broker.local_addrs().tcp, mqtt_ws: broker.local_addrs().ws, http };
        let gateway = Gateway { shared, addrs, broker, publisher, prefix, tasks, first_run_password, alarms };
        gateway.publish_gateway_status(true).await;
        let stats_task = tokio::spawn(stats_loop(
            gateway.shared.clone(),
            gateway.publisher.clone(),
            gateway.prefix.clone(),
            gateway.broker.counters(),
        ));
        let mut gateway = gateway;
        gateway.tasks.push(stats_task);
        tracing::info!(meters = %addrs.meters, mqtt = %addrs.mqtt, ws = ?addrs.mqtt_ws, http = ?addrs.http, "gateway started");
        Ok(gateway)
    }

    /// Listening addresses.
    pub fn addrs(&self) -> Addresses {
        self.addrs
    }

    /// Shared state (tests and the HTTP API).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Broker counters.
    pub fn broker_stats(&self) -> crate::mqtt::BrokerStats {
        self.broker.counters().snapshot()
    }

    /// The alarm engine.
    pub fn alarms(&self) -> &crate::alarms::SharedAlarms {
        &self.alarms
    }

    /// The first-run admin password, once (`None` afterwards or when users existed).
    pub fn take_first_run_password(&mut self) -> Option<String> {
        self.first_run_password.take()
    }

    async fn publish_gateway_status(&self, online: bool) {
        let payload = serde_json::json!({
            "ts": crate::model::now_ms(),
            "status": if online { "online" } else { "offline" },
            "version": env!("CARGO_PKG_VERSION"),
            "name": self.shared.config.gateway.name,
            "uptime": self.shared.uptime_secs(),
        });
        let msg = crate::mqtt::OutboundMessage::json(
            self.prefix.gateway_status(),
            &payload,
            crate::mqtt::Qos::AtLeastOnce,
            true,
        );
        let _ = self.publisher.publish(msg).await;
    }

    /// Graceful stop: stop accepting, end every session (pending requests fail, meters go offline, retained),
    /// flush what is queued, publish the gateway offline, stop the broker. Bounded by `shutdown_timeout_secs`.
    pub async fn shutdown(self) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.shared.config.gateway.shutdown_timeout_secs.max(1));
        self.shared.shutdown.cancel();
        // Sessions end on the shutdown signal and publish their offline status through the hub.
        let soft = deadline - Duration::from_secs(2).min(deadline - tokio::time::Instant::now());
        while tokio::time::Instant::now() < soft {
            let active = self.shared.admission.lock().map(|a| a.active()).unwrap_or(0);
            if active == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the MQTT sink and the publisher drain.
        while tokio::time::Instant::now() < soft && (self.shared.hub.pending() > 0 || self.publisher.pending() > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.publish_gateway_status(false).await;
        while tokio::time::Instant::now() < deadline && self.publisher.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Give subscribers a moment to receive the last messages before the sockets close.
        tokio::time::sleep(
            Duration::from_millis(200).min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        for t in &self.tasks {
            t.abort();
        }
        self.broker.shutdown().await;
        tracing::info!("gateway stopped");
    }
}

/// Resident memory in bytes (Linux), for the stats.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

async fn stats_loop(
    shared: Arc<Shared>,
    publisher: crate::mqtt::Publisher,
    prefix: crate::mqtt::topics::TopicPrefix,
    broker: Arc<crate::mqtt::BrokerCounters>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(shared.config.gateway.stats_interval_secs.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let payload = stats_payload(&shared, &broker.snapshot());
        let _ = publisher.try_publish(crate::mqtt::OutboundMessage::json(
            prefix.gateway_stats(),
            &payload,
            crate::mqtt::Qos::AtMostOnce,
            false,
        ));
    }
}

/// The `gateway/stats` payload.
pub fn stats_payload(shared: &Shared, broker: &crate::mqtt::BrokerStats) -> serde_json::Value {
    let m = &shared.metrics;
    let rejected: u64 = crate::metrics::RejectReason::ALL
        .iter()
        .map(|r| m.connections_rejected.get_or_create(&crate::metrics::ReasonLabel { reason: *r }).get())
        .sum();
    let poll_cycles: u64 = ["ok", "partial", "timeout", "failed"]
        .iter()
        .map(|o| m.polls.get_or_create(&crate::metrics::OutcomeLabel { outcome: (*o).to_owned() }).get())
        .sum();
    serde_json::json!({
        "ts": crate::model::now_ms(),
        "uptime": shared.uptime_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "meters": {"online": shared.registry.len(), "total": shared.meters_total()},
        "connections": {
            "active": m.connections_active.get(),
            "total": m.connections_total.get(),
            "rejected": rejected,
            "unknownProtocol": m.connections_unknown_protocol.get(),
        },
        "mqtt": {"clients": broker.clients, "published": broker.published, "dropped": broker.dropped, "denied": broker.denied_publishes},
        "polling": {
            "enabled": shared.config.polling.enabled,
            "intervalMs": shared.config.polling.interval_ms,
            "group": shared.config.polling.group,
            "cycles": poll_cycles,
        },
        "readings": m.readings.get(),
        "alarms": {"active": m.alarms_active.get()},
        "outbox": {"queued": 0, "dropped": 0},
        "hub": {
            "dropped": shared.hub.dropped(),
            "sinks": shared.hub.stats().iter().map(|s| (s.name.to_owned(), serde_json::json!({
                "delivered": s.delivered, "dropped": s.dropped, "droppedReadings": s.dropped_readings,
            }))).collect::<serde_json::Map<String, serde_json::Value>>(),
        },
        "memory": {"rss": rss_bytes()},
    })
}
