//! The composition root: start-up (build every room and wire them together) and graceful shutdown. Nothing
//! imports this module; it imports every room.

use crate::config::Config;
use crate::hub::Hub;
use crate::lock::lock;
use crate::meters::context::MeterContext;
use crate::metrics::Metrics;
use crate::stats::Stats;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the gateway listens (actual addresses; ports resolved when 0 was configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Meters, plain TCP (`None` with `meters.plaintext = false`).
    pub meters: Option<std::net::SocketAddr>,
    /// Meters, TLS with client certificates (when `meters.tls_cert` and the rest are set).
    pub meters_tls: Option<std::net::SocketAddr>,
    /// MQTT TCP of the embedded broker (`None` with `mqtt.embedded = false`).
    pub mqtt: Option<std::net::SocketAddr>,
    /// MQTT over WebSocket.
    pub mqtt_ws: Option<std::net::SocketAddr>,
    /// MQTT over TLS.
    pub mqtt_tls: Option<std::net::SocketAddr>,
    /// MQTT over secure WebSocket.
    pub mqtt_wss: Option<std::net::SocketAddr>,
    /// HTTP (HTTPS when `http.tls_cert` is set).
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
    /// A TLS certificate or key.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The SQLite store (cannot open, or the schema is newer than this binary).
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The upstream MQTT client's settings (URL, TLS files).
    #[error("{0}")]
    Upstream(#[from] crate::upstream::client::UpstreamError),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    meters: Arc<MeterContext>,
    stats: Stats,
    addrs: Addresses,
    broker: Option<crate::mqtt::broker::EmbeddedBroker>,
    /// The embedded broker's publish queue.
    publisher: Option<crate::mqtt::Publisher>,
    upstream: Option<crate::upstream::client::UpstreamClient>,
    prefix: crate::mqtt::topics::TopicPrefix,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    first_run_password: Option<String>,
    alarms: crate::alarms::SharedAlarms,
    store: Option<crate::store::StoreHandle>,
    store_stop: CancellationToken,
    store_thread: Option<std::thread::JoinHandle<()>>,
    reload: Reloadables,
}

/// What a SIGHUP can replace, and the configuration those parts run with now.
#[derive(Debug)]
struct Reloadables {
    in_effect: Mutex<Config>,
    auth: Arc<crate::auth::Authenticator>,
    sessions: Option<Arc<crate::http::login::Logins>>,
    https: Option<Arc<crate::tls::CertStore>>,
    /// The TLS meter port's certificate (its client CA is read at start only).
    meter_certs: Option<Arc<crate::tls::CertStore>>,
    /// SHA-256 of the MQTT TLS certificate and key files as the broker loaded them.
    mqtt_tls_files: Option<[u8; 32]>,
}

fn files_digest(paths: &[&std::path::Path]) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).ok()?);
    }
    Some(h.finalize().into())
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
    pub async fn start(mut config: Config) -> Result<Gateway, StartError> {
        let started = std::time::Instant::now();
        match crate::descriptors::raise_nofile_limit() {
            Ok(l) => {
                tracing::info!(before = l.before, now = l.soft, hard = l.hard, "open-file limit (RLIMIT_NOFILE)");
                for change in crate::descriptors::fit_caps(l.soft, &mut config) {
                    tracing::warn!("{change}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
        }
        let config = Arc::new(config);
        let resolver = Arc::new(crate::reload::Current::new(crate::registers::Resolver::from_config(&config)?));
        let data_dir = config.gateway.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
        let (users, first_run) = crate::auth::Users::load_or_init(&data_dir, config.mqtt.users.as_deref())?;
        let auth =
            Arc::new(crate::auth::Authenticator::with_guard(users, config.mqtt.auth_enabled, config.auth.guard()));
        let prefix =
            crate::mqtt::topics::TopicPrefix::new(&config.mqtt.topic_prefix, config.gateway.gateway_id.as_deref())
                .map_err(|e| crate::config::ConfigError { key: "mqtt.topic_prefix".into(), problem: e.to_string() })?;

        let q = &config.mqtt;
        let mut mqtt_tls_files = None;
        if let (Some(cert), Some(key)) = (&q.tls_cert, &q.tls_key)
            && (q.tls_port != 0 || q.wss_port != 0)
        {
            // The broker's own error would not name the file; check the pair here first.
            crate::tls::load_key_pair(cert, key)?;
            mqtt_tls_files = files_digest(&[cert, key]);
        }
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
            max_connections: q.max_connections.get(),
            max_packet_size: q.max_packet_bytes,
            publish_queue: q.publish_queue.get(),
            inbound_queue: 4096,
            session_queue: q.session_queue_messages.get(),
            max_sessions_per_user: q.max_sessions_per_user,
            handshake_timeout: Duration::from_secs(q.handshake_timeout_secs),
        };
        // The store first: a database this binary cannot use stops start-up before anything listens.
        let acks_file = data_dir.join(crate::alarms::ACKS_FILE);
        let restored = if config.store.enabled { Some(open_store(&config, &acks_file)?) } else { None };
        let upstream_settings = match &config.mqtt.upstream.url {
            Some(_) => Some(crate::upstream::client::UpstreamSettings::from_config(
                &config.mqtt.upstream,
                config.gateway.gateway_id.as_deref(),
            )?),
            None => None,
        };
        let mut broker = if config.mqtt.embedded {
            Some(crate::mqtt::broker::EmbeddedBroker::start(&broker_cfg, auth.clone(), prefix.clone()).await?)
        } else {
            tracing::info!("embedded MQTT broker off (mqtt.embedded = false)");
            None
        };
        let publisher = broker.as_ref().map(|b| b.publisher());
        let inbound = broker.as_mut().and_then(|b| b.take_inbound());
        let broker_counters = broker.as_ref().map(|b| b.counters()).unwrap_or_default();

        let hub = Hub::new();
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let meters =
            Arc::new(MeterContext::new(config.clone(), resolver, hub.clone(), metrics.clone(), shutdown.clone()));
        let registry = meters.registry.clone();
        let mut stats = Stats::new(
            config.clone(),
            registry.clone(),
            hub.clone(),
            metrics.clone(),
            broker_counters.clone(),
            started,
        );
        let mut tasks = Vec::new();

        // Sinks first, so nothing published by sessions is missed.
        // The embedded broker's sink; the upstream broker is fed by the store's writer through the outbox.
        if let Some(publisher) = &publisher {
            let sink_rx = hub.subscribe("mqtt", MQTT_SINK_QUEUE);
            tasks.push(tokio::spawn(crate::mqtt::sink::run(prefix.clone(), publisher.clone(), sink_rx)));
        }
        let mut engine = crate::alarms::AlarmEngine::new(config.alarms.clone());
        let live = Arc::new(crate::live::LiveView::new(crate::live::LiveLimits {
            history_points: config.http.history_points,
            ..Default::default()
        }));
        let store_stop = CancellationToken::new();
        let mut store_thread = None;
        let mut store = None;
        let mut upstream = None;
        match restored {
            Some(restored) => {
                let now = crate::model::now_ms();
                engine.restore_acknowledged(restored.acknowledged);
                engine.restore_active(restored.active_alarms);
                for m in &restored.meters {
                    live.restore(&m.meter_id, m.protocol.as_deref(), m.ip.as_deref(), m.last_seen, &m.snapshot);
                    if let Ok(id) = ivy_protocol::registration::MeterId::new(m.meter_id.clone()) {
                        engine.assume_offline(id, now);
                    }
                }
                if let Some(publisher) = &publisher {
                    republish(publisher, &prefix, &restored.meters, config.gateway.gateway_id.as_deref(), now).await;
                }
                let status = Arc::new(crate::store::StoreStatus::default());
                let mut writer = crate::store::writer::Writer::new(restored.conn, config.store.clone(), status.clone());
                if let Some(settings) = upstream_settings {
                    let outbox = Arc::new(crate::mqtt::outbox::OutboxShared::default());
                    let counters = Arc::new(crate::mqtt::outbox::UpstreamCounters::default());
                    let mut outbox_writer = crate::store::outbox::OutboxWriter::open(
                        writer.connection(),
                        prefix.clone(),
                        &config.outbox,
                        outbox.clone(),
                    )?;
                    // Meters the gateway last said were online (it stopped or crashed): their retained status at
                    // the upstream broker says so still. They are offline until they reconnect.
                    let stale: Vec<Arc<crate::hub::HubEvent>> = restored
                        .meters
                        .iter()
                        .filter(|m| m.last_status.as_ref().is_some_and(|s| s["online"] == true))
                        .filter_map(|m| not_connected_since_start(m, config.gateway.gateway_id.as_deref(), now))
                        .map(|s| Arc::new(crate::hub::HubEvent::Status(s)))
                        .collect();
                    outbox_writer.append_committed(writer.connection(), &stale, now)?;
                    writer = writer.with_outbox(outbox_writer);
                    let name = config.gateway.name.clone();
                    let gateway_status: crate::upstream::client::GatewayStatus =
                        Arc::new(move |online| gateway_status_payload(&name, started.elapsed().as_secs(), online));
                    let wiring = crate::upstream::client::Wiring {
                        prefix: prefix.clone(),
                        gateway_id: config.gateway.gateway_id.clone(),
                        outbox: outbox.clone(),
                        store: restored.path.clone(),
                        gateway_status,
                        counters: counters.clone(),
                        statuses: hub.subscribe_statuses("upstream", UPSTREAM_STATUS_QUEUE),
                        direct_queue: UPSTREAM_DIRECT_QUEUE,
                    };
                    upstream = Some(crate::upstream::client::UpstreamClient::start(settings, wiring));
                    stats = stats.with_upstream(crate::mqtt::outbox::UpstreamShared { outbox, counters });
                }
                let rx = hub.subscribe("store", config.store.queue.get());
                let stop = store_stop.clone();
                let thread = std::thread::Builder::new()
                    .name("ivy-store".into())
                    .spawn(move || writer.run(rx, stop))
                    .map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
                store_thread = Some(thread);
                store = Some(crate::store::StoreHandle { path: restored.path, status });
            }
            None => match crate::alarms::load_acknowledged(&acks_file) {
                Ok(ids) => engine.restore_acknowledged(ids),
                Err(e) => {
                    tracing::warn!(file = %acks_file.display(), error = %e, "alarm acknowledgements not restored")
                }
            },
        }
        let alarms = Arc::new(Mutex::new(engine));
        if config.http.enabled {
            let view = live.clone();
            hub.observe(Arc::new(move |event| view.apply(event)));
        }
        let alarm_rx = hub.subscribe("alarms", ALARM_SINK_QUEUE);
        tasks.push(tokio::spawn(crate::alarms::run(alarms.clone(), hub.clone(), alarm_rx, metrics.clone())));

        let router = crate::commands::router::CommandRouter::new(
            registry.clone(),
            meters.resolver.clone(),
            metrics.clone(),
            &config.commands,
        );
        if let (Some(inbound), Some(publisher)) = (inbound, &publisher) {
            tasks.push(tokio::spawn(router.clone().run_mqtt(prefix.clone(), publisher.clone(), inbound)));
        }
        // Commands from the upstream broker are answered there (directly, not through the outbox).
        if let Some(up) = upstream.as_mut()
            && let Some(inbound) = up.take_inbound()
        {
            tasks.push(tokio::spawn(router.clone().run_mqtt(prefix.clone(), up.publisher(), inbound)));
        }

        let meters_addr = if config.meters.plaintext {
            let addr = std::net::SocketAddr::new(config.meters.host, config.meters.port);
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| StartError::Bind(addr, e))?;
            let local = listener_addr(&listener, addr);
            tasks.push(tokio::spawn(crate::meters::listener::run(listener, meters.clone(), None)));
            Some(local)
        } else {
            None
        };
        let (meter_certs, meters_tls_addr) = match config.meters.tls() {
            Some(files) => {
                let certs = Arc::new(crate::tls::CertStore::load(files.cert, files.key)?);
                let server = certs.server_config_with_clients(crate::tls::client_verifier(files.client_ca)?)?;
                let tls = crate::meters::transport::MeterTls::new(
                    server,
                    Duration::from_secs(config.meters.tls_handshake_timeout_secs),
                );
                let addr = std::net::SocketAddr::new(config.meters.host, config.meters.tls_port);
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| StartError::Bind(addr, e))?;
                let local = listener_addr(&listener, addr);
                tasks.push(tokio::spawn(crate::meters::listener::run(listener, meters.clone(), Some(tls))));
                (Some(certs), Some(local))
            }
            None => (None, None),
        };

        let https = match config.http.tls().filter(|_| config.http.enabled) {
            Some((cert, key)) => Some(Arc::new(crate::tls::CertStore::load(cert, key)?)),
            None => None,
        };
        let sessions = Arc::new(
            crate::http::login::Logins::new(Duration::from_secs(config.http.session_idle_secs.max(60)), 10_000)
                .with_secure_cookie(https.is_some()),
        );
        let http = if config.http.enabled {
            let addr = std::net::SocketAddr::new(config.http.host, config.http.port);
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| StartError::Bind(addr, e))?;
            let local = l.local_addr().unwrap_or(addr);
            let app = crate::http::router(crate::http::state::HttpState {
                config: config.clone(),
                registry: registry.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                stats: stats.clone(),
                shutdown: shutdown.clone(),
                broker: broker_counters.clone(),
                auth: auth.clone(),
                logins: sessions.clone(),
                alarms: alarms.clone(),
                acks: Arc::new(crate::alarms::AckStore::new(acks_file)),
                live,
                commands: router.clone(),
                limiter: Arc::new(crate::http::ratelimit::RateLimiter::new(
                    config.http.rate_limit_per_minute,
                    Duration::from_secs(60),
                )),
                store: store.clone(),
            });
            let limits = crate::http::server::ServeLimits {
                max_connections: config.http.max_connections.get(),
                header_timeout: Duration::from_secs(config.http.header_timeout_secs),
            };
            let shutdown = shutdown.clone();
            match &https {
                Some(certs) => {
                    let config = certs.server_config()?;
                    let l = crate::tls::TlsListener::start(l, config, shutdown.clone())
                        .map_err(|e| StartError::Bind(addr, e))?;
                    tasks.push(tokio::spawn(crate::http::server::serve(l, app, limits, shutdown, metrics.clone())));
                }
                None => {
                    use axum::serve::ListenerExt;
                    let l = l.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    tasks.push(tokio::spawn(crate::http::server::serve(l, app, limits, shutdown, metrics.clone())));
                }
            }
            Some(local)
        } else {
            None
        };

        let bound = broker.as_ref().map(|b| b.local_addrs());
        let addrs = Addresses {
            meters: meters_addr,
            meters_tls: meters_tls_addr,
            mqtt: bound.map(|b| b.tcp),
            mqtt_ws: bound.and_then(|b| b.ws),
            mqtt_tls: bound.and_then(|b| b.tls),
            mqtt_wss: bound.and_then(|b| b.wss),
            http,
        };
        // Every listener is bound: only now is the first-run admin written, so a failed start leaves no account
        // whose password nobody saw. A failure here stops the start like any other.
        let first_run_password = match first_run.map(crate::auth::FirstRun::commit).transpose() {
            Ok(p) => p,
            Err(e) => {
                shutdown.cancel();
                for t in &tasks {
                    t.abort();
                }
                if let Some(broker) = broker {
                    broker.shutdown().await;
                }
                if let Some(up) = upstream {
                    up.shutdown(Duration::from_secs(1)).await;
                }
                return Err(e.into());
            }
        };
        let reload = Reloadables {
            in_effect: Mutex::new((*config).clone()),
            auth,
            sessions: config.http.enabled.then_some(sessions),
            https,
            meter_certs,
            mqtt_tls_files,
        };
        if let Some(publisher) = &publisher {
            tasks.push(tokio::spawn(stats.clone().publish_loop(publisher.clone(), prefix.clone(), shutdown.clone())));
        }
        if let Some(up) = &upstream {
            tasks.push(tokio::spawn(stats.clone().publish_loop(up.publisher(), prefix.clone(), shutdown)));
        }
        let gateway = Gateway {
            meters,
            stats,
            addrs,
            broker,
            publisher,
            upstream,
            prefix,
            tasks,
            first_run_password,
            alarms,
            store,
            store_stop,
            store_thread,
            reload,
        };
        gateway.publish_gateway_status(true).await;
        tracing::info!(meters = ?addrs.meters, meters_tls = ?addrs.meters_tls, mqtt = ?addrs.mqtt, ws = ?addrs.mqtt_ws, http = ?addrs.http, "gateway started");
        Ok(gateway)
    }

    /// Listening addresses.
    pub fn addrs(&self) -> Addresses {
        self.addrs
    }

    /// What the meter sessions share: the registry of online meters, the counters, the configuration.
    pub fn meters(&self) -> &Arc<MeterContext> {
        &self.meters
    }

    /// The gateway's figures (the `gateway/stats` payload).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Broker counters (all 0 without the embedded broker).
    pub fn broker_stats(&self) -> crate::mqtt::BrokerStats {
        self.broker.as_ref().map(|b| b.counters().snapshot()).unwrap_or_default()
    }

    /// The alarm engine.
    pub fn alarms(&self) -> &crate::alarms::SharedAlarms {
        &self.alarms
    }

    /// Applies what `new` changes among the reloadable settings (see [`crate::reload`]), re-reads the users file
    /// and the HTTPS certificate, and reports what changed, what needs a restart and what failed. Meters, MQTT
    /// clients and HTTP connections stay connected.
    pub fn reload(&self, new: Config) -> crate::reload::ReloadReport {
        let mut report = crate::reload::ReloadReport::default();
        let r = &self.reload;
        let mut in_effect = lock(&r.in_effect);
        let changed = crate::reload::changed_keys(&in_effect, &new);
        let (now, restart): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| crate::reload::is_reloadable(k));
        report.needs_restart = restart;

        // Users: the file may have changed without any configuration change.
        let data_dir = &self.meters.config.gateway.data_dir;
        let current = r.auth.users();
        match crate::auth::Users::load(data_dir, new.mqtt.users.as_deref(), Some(&current)) {
            Ok(users) if users.is_empty() && r.auth.enabled() => {
                report.failed.push("users: the users file and mqtt.users define nobody; kept the current users".into())
            }
            Ok(users) => {
                let change = r.auth.replace_users(users);
                if !change.is_empty() {
                    let mut ended = 0;
                    if let Some(sessions) = &r.sessions {
                        // A removed user, or one whose password or role changed, must log in again.
                        ended = sessions
                            .end_where(|c| change.removed.contains(&c.user) || change.changed.contains(&c.user));
                    }
                    report.applied.push(format!(
                        "users: added {:?}, removed {:?}, password or role changed {:?}; {ended} dashboard session(s) ended",
                        change.added, change.removed, change.changed
                    ));
                }
                in_effect.mqtt.users = new.mqtt.users.clone();
            }
            Err(e) => report.failed.push(format!("users: {e}")),
        }

        if now.iter().any(|k| k.starts_with("alarms")) {
            lock(&self.alarms).set_config(new.alarms.clone());
            in_effect.alarms = new.alarms.clone();
            let keys: Vec<&String> = now.iter().filter(|k| k.starts_with("alarms")).collect();
            report.applied.push(format!("alarm rules: {keys:?}"));
        }

        // Poll groups and catalogues: the catalogue files may have changed on disk, so they are always re-read.
        let catalogue_files = new.dlt645.register_file.is_some() || new.dlms.obis_file.is_some();
        let poll_keys: Vec<&String> = now.iter().filter(|k| !k.starts_with("alarms") && *k != "mqtt.users").collect();
        if catalogue_files || !poll_keys.is_empty() {
            match crate::registers::Resolver::from_config(&new) {
                Ok(resolver) => {
                    self.meters.resolver.replace(resolver);
                    let p = &mut in_effect.polling;
                    p.group = new.polling.group.clone();
                    p.dlt645_groups = new.polling.dlt645_groups.clone();
                    p.dlms_groups = new.polling.dlms_groups.clone();
                    p.meter_overrides = new.polling.meter_overrides.clone();
                    in_effect.dlt645.register_file = new.dlt645.register_file.clone();
                    in_effect.dlms.obis_file = new.dlms.obis_file.clone();
                    if !poll_keys.is_empty() {
                        report
                            .applied
                            .push(format!("poll groups and catalogues (from each meter's next poll): {poll_keys:?}"));
                    }
                }
                Err(e) => report.failed.push(format!("poll groups and catalogues: {e}")),
            }
        }

        if let Some(certs) = &r.https {
            match certs.reload() {
                Ok(crate::tls::CertReload::Replaced) => {
                    report.applied.push("HTTPS certificate replaced (new connections get it)".into())
                }
                Ok(crate::tls::CertReload::Unchanged) => {}
                Err(e) => report.failed.push(format!("HTTPS certificate: {e}; the previous one is still served")),
            }
        }
        if let Some(certs) = &r.meter_certs {
            match certs.reload() {
                Ok(crate::tls::CertReload::Replaced) => {
                    report.applied.push("TLS meter port certificate replaced (new connections get it)".into())
                }
                Ok(crate::tls::CertReload::Unchanged) => {}
                Err(e) => {
                    report.failed.push(format!("TLS meter port certificate: {e}; the previous one is still served"))
                }
            }
        }
        let q = &in_effect.mqtt;
        if let (Some(before), Some(cert), Some(key)) = (r.mqtt_tls_files, &q.tls_cert, &q.tls_key)
            && files_digest(&[cert, key]) != Some(before)
        {
            report
                .needs_restart
                .push("MQTT TLS/WSS certificate files changed (the embedded broker loads them only at start)".into());
        }
        report
    }

    /// Users and the failed-login throttle (its counters).
    pub fn auth(&self) -> &Arc<crate::auth::Authenticator> {
        &self.reload.auth
    }

    /// The SQLite store, when enabled.
    pub fn store(&self) -> Option<&crate::store::StoreHandle> {
        self.store.as_ref()
    }

    /// The first-run admin password, once (`None` afterwards or when users existed).
    pub fn take_first_run_password(&mut self) -> Option<String> {
        self.first_run_password.take()
    }

    /// The gateway status on the embedded broker (the upstream client sends its own birth, will and last word).
    async fn publish_gateway_status(&self, online: bool) {
        let Some(publisher) = &self.publisher else { return };
        let payload = gateway_status_payload(&self.meters.config.gateway.name, self.stats.uptime_secs(), online);
        let msg = crate::mqtt::OutboundMessage::json(
            self.prefix.gateway_status(),
            &payload,
            crate::mqtt::Qos::AtLeastOnce,
            true,
        );
        let _ = publisher.publish(msg).await;
    }

    /// Graceful stop: stop accepting, end every session (pending requests fail, meters go offline, retained),
    /// flush what is queued, publish the gateway offline, stop the broker. Bounded by `shutdown_timeout_secs`.
    pub async fn shutdown(mut self) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.meters.config.gateway.shutdown_timeout_secs.max(1));
        self.meters.shutdown.cancel();
        // Sessions end on the shutdown signal and publish their offline status through the hub.
        let soft = deadline - Duration::from_secs(2).min(deadline - tokio::time::Instant::now());
        while tokio::time::Instant::now() < soft {
            let active = lock(&self.meters.admission).active();
            if active == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the MQTT sink and the publisher drain.
        let publisher_pending = |g: &Self| g.publisher.as_ref().map_or(0, |p| p.pending());
        while tokio::time::Instant::now() < soft && (self.meters.hub.pending() > 0 || publisher_pending(&self) > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.publish_gateway_status(false).await;
        // The store writer drains its queue, commits and checkpoints; wait for it within the deadline.
        self.store_stop.cancel();
        if let Some(thread) = self.store_thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                tracing::warn!("store writer did not finish before the shutdown deadline");
            }
        }
        while tokio::time::Instant::now() < deadline && publisher_pending(&self) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Upstream: the writer has committed the last messages (meters offline) to the outbox; give the client
        // what is left of the deadline to deliver them, then it says goodbye. What it could not send stays in the
        // outbox for the next start.
        if let Some(up) = self.upstream.take() {
            let last_word = Duration::from_millis(1500);
            let connected = |up: &crate::upstream::client::UpstreamClient| {
                up.counters().connected.load(std::sync::atomic::Ordering::Relaxed)
            };
            while tokio::time::Instant::now() + last_word < deadline && connected(&up) && !up.all_acknowledged() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let acked = up.acknowledged_upto();
            up.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
            if let Some(store) = &self.store {
                // The writer has stopped: delete what was acknowledged since its last pass, so a restart does not
                // send it again.
                let path = store.path.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    crate::store::outbox::delete_acknowledged_after_stop(&path, acked)
                })
                .await;
            }
        }
        // Give subscribers a moment to receive the last messages before the sockets close.
        tokio::time::sleep(
            Duration::from_millis(200).min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
        tracing::info!("gateway stopped");
    }
}

/// The `gateway/status` payload (docs/MQTT.md).
fn gateway_status_payload(name: &str, uptime_secs: u64, online: bool) -> serde_json::Value {
    serde_json::json!({
        "ts": crate::model::now_ms(),
        "status": if online { "online" } else { "offline" },
        "version": env!("CARGO_PKG_VERSION"),
        "name": name,
        "uptime": uptime_secs,
    })
}

/// Command responses and stats waiting for the upstream client.
const UPSTREAM_DIRECT_QUEUE: usize = 4096;
/// Status transitions waiting for the upstream client's subscriptions (lossless: beyond it they wait in the hub's
/// reserve).
const UPSTREAM_STATUS_QUEUE: usize = 16_384;

/// What the store remembered from before this start.
struct Restored {
    path: std::path::PathBuf,
    conn: rusqlite::Connection,
    meters: Vec<crate::store::query::StoredMeter>,
    active_alarms: Vec<crate::alarms::ActiveAlarm>,
    acknowledged: Vec<String>,
}

/// Opens (creates, migrates) the store, imports the old acknowledgements file once, and reads what the gateway
/// must remember: the meters with their last values, the active alarms and the acknowledgements.
fn open_store(config: &Config, acks_file: &std::path::Path) -> Result<Restored, crate::store::StoreError> {
    let path = config.store.file(&config.gateway.data_dir);
    let conn = crate::store::open_writer(&path)?;
    match crate::store::writer::migrate_acks_file(&conn, acks_file) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(file = %acks_file.display(), acknowledgements = n, "alarm acknowledgements moved into the store")
        }
        Err(e) => tracing::warn!(file = %acks_file.display(), error = %e, "alarm acknowledgements file not imported"),
    }
    // Nothing is connected yet: every remembered meter is offline until it reconnects.
    conn.execute("UPDATE meters SET online = 0 WHERE online != 0", [])?;
    let meters = crate::store::query::meters(&conn)?;
    let active_alarms = crate::store::query::active_alarms(&conn)?;
    let acknowledged = crate::store::query::acknowledged_ids(&conn)?;
    tracing::info!(
        file = %path.display(),
        meters = meters.len(),
        active_alarms = active_alarms.len(),
        "store opened"
    );
    Ok(Restored { path, conn, meters, active_alarms, acknowledged })
}

/// The offline status of a meter the store knows and nothing has connected yet (`None` for an id that is not
/// valid any more).
fn not_connected_since_start(
    m: &crate::store::query::StoredMeter,
    gateway_id: Option<&str>,
    now: u64,
) -> Option<crate::model::StatusChange> {
    let id = ivy_protocol::registration::MeterId::new(m.meter_id.clone()).ok()?;
    // The connection the stored status was about (the last one before the stop), when it said.
    let connected_at = m.last_status.as_ref().and_then(|s| s.get("connectedAt")).and_then(serde_json::Value::as_u64);
    Some(crate::model::StatusChange {
        meter_id: id,
        online: false,
        ip: None,
        protocol: None,
        connected_at,
        gateway_id: gateway_id.map(str::to_owned),
        reason: Some("not connected since the gateway started".into()),
        ts: now,
    })
}

/// Re-publishes the retained status (offline: nothing is connected yet) and the last snapshot of every meter the
/// store knows, so subscribers that arrive after a restart see the truth rather than a stale retained message.
async fn republish(
    publisher: &crate::mqtt::Publisher,
    prefix: &crate::mqtt::topics::TopicPrefix,
    meters: &[crate::store::query::StoredMeter],
    gateway_id: Option<&str>,
    now: u64,
) {
    use crate::mqtt::{OutboundMessage, Qos};
    for m in meters {
        let Some(status) = not_connected_since_start(m, gateway_id, now) else { continue };
        let id = status.meter_id.clone();
        let payload = crate::mqtt::sink::status_payload(&status);
        let _ = publisher.publish(OutboundMessage::json(prefix.status(&id), &payload, Qos::AtLeastOnce, true)).await;
        if !m.snapshot.is_empty() {
            let readings: serde_json::Map<String, serde_json::Value> = m
                .snapshot
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!({"value": v["value"], "unit": v["unit"], "ts": v["ts"]})))
                .collect();
            let payload = serde_json::json!({
                "ts": m.last_seen,
                "meterId": m.meter_id,
                "source": m.protocol,
                "readings": readings,
            });
            let _ =
                publisher.publish(OutboundMessage::json(prefix.snapshot(&id), &payload, Qos::AtLeastOnce, true)).await;
        }
    }
}

/// Where `listener` listens (the port the system chose when `asked` had port 0).
fn listener_addr(listener: &tokio::net::TcpListener, asked: std::net::SocketAddr) -> std::net::SocketAddr {
    listener.local_addr().unwrap_or(asked)
}
