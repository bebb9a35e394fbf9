//! The upstream MQTT client (SPEC 4.1): the gateway as a client of an external broker or cluster (MQTT 3.1.1 or 5,
//! see [`super::link`]), fed by the durable outbox.
//!
//! - Telemetry, snapshots, status and events come from the outbox (the store's writer put them there, in the
//!   transaction of their readings), oldest first, at QoS 1, at most `mqtt.upstream.inflight` unacknowledged. A
//!   row is deleted only after its PUBACK: the client reports how far every row is acknowledged and the writer
//!   deletes that range. After a lost connection, the unacknowledged rows are sent again from the oldest
//!   (QoS 1 may duplicate, never lose); new rows keep being appended behind them.
//! - Command responses and `gateway/stats` are direct (a bounded queue, not the outbox); QoS 1 ones still waiting
//!   for their PUBACK when the connection drops are sent again after the reconnect.
//! - Persistent session (`clean_session = false`, a stable client id): the broker keeps the command
//!   subscriptions and queues requests across reconnects. Which topics to subscribe to (the command requests and
//!   statuses of the meters this gateway holds) and which statuses not to send is decided by
//!   [`super::ownership`]; this module carries it out. Birth (`gateway/status` online, retained) on every
//!   CONNACK, last will (offline, retained) with the broker.
//! - Reconnects back off exponentially with jitter up to `reconnect_max_ms`; the delay resets after a connection
//!   that stayed up. Every failed attempt logs one line saying what is wrong (refused credentials, TLS
//!   verification, unreachable) and waits.
//!
//! Two tasks: one drives rumqttc's event loop (nothing else may poll it: cancelling `poll` mid-write would lose
//! a packet), the other keeps the books (which outbox row went out under which packet id) and feeds the client.
//! rumqttc reports a queued publish as sent (`Outgoing::Publish(pkid)`) in the order requests were queued, which
//! maps packet ids to rows.
//! After a connection loss the books task resets first, then the driver drops what rumqttc would resend, so a
//! packet id is never mapped to the wrong row.

use super::link::{ConnectOptions, Driven, Link, Protocol, Session, SessionKind};
use super::ownership::{Action, Ownership};
use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::hub::HubEvent;
use crate::mqtt::outbox::{OutboxShared, UpstreamCounters};
use crate::mqtt::topics::TopicPrefix;
use crate::mqtt::{BrokerCounters, InboundCommand, OutboundMessage, Publisher, Qos};
use crate::store::outbox::{OutboxRow, read_after};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Rows read from the outbox per query.
const READ_BATCH: usize = 2_000;
/// A connection that stayed up this long resets the reconnect delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// QoS 1 direct messages (command responses) kept for a resend while disconnected, at most.
const MAX_DIRECT_RETRY: usize = 10_000;
/// Topic filters per SUBSCRIBE or UNSUBSCRIBE packet (thousands of meters resubscribe after a session loss).
const FILTERS_PER_PACKET: usize = 100;

/// Why the upstream client cannot be set up (a configuration problem: the gateway does not start).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL.
    #[error("mqtt.upstream.url: {0}")]
    Url(String),
    /// A PEM file.
    #[error("upstream MQTT TLS: {0}: {1}")]
    Pem(PathBuf, String),
    /// The TLS configuration.
    #[error("upstream MQTT TLS: {0}")]
    Tls(String),
}

/// Everything the client needs, checked at start.
#[derive(Clone)]
pub struct UpstreamSettings {
    protocol: Protocol,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: String,
    credentials: Option<(String, String)>,
    keepalive: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    window: usize,
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("UpstreamSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl UpstreamSettings {
    /// From `mqtt.upstream` (the URL must be set); reads the CA, certificate and key files.
    pub fn from_config(cfg: &UpstreamConfig, gateway_id: Option<&str>) -> Result<Self, UpstreamError> {
        let url = cfg.url.as_deref().ok_or_else(|| UpstreamError::Url("not set".into()))?;
        let url = UpstreamUrl::parse(url).map_err(UpstreamError::Url)?;
        let tls = if url.tls { Some(client_tls(cfg)?) } else { None };
        let client_id = cfg.client_id.clone().unwrap_or_else(|| default_client_id(gateway_id));
        let protocol = match cfg.protocol.as_str() {
            "5" => Protocol::V5,
            _ => Protocol::V311,
        };
        Ok(UpstreamSettings {
            protocol,
            host: url.host,
            port: url.port,
            tls,
            client_id,
            credentials: cfg.username.clone().map(|u| (u, cfg.password.clone().unwrap_or_default())),
            keepalive: Duration::from_secs(cfg.keepalive_secs.max(5)),
            reconnect_min: Duration::from_millis(cfg.reconnect_min_ms.max(10)),
            reconnect_max: Duration::from_millis(cfg.reconnect_max_ms.max(cfg.reconnect_min_ms.max(10))),
            window: usize::from(cfg.inflight.max(1)),
        })
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The client id in use.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

/// `ivy-gateway-{gateway_id}`, else `ivy-gateway-{host name}`: stable across restarts, so the broker finds the
/// session (and its subscriptions) again.
fn default_client_id(gateway_id: Option<&str>) -> String {
    let name = match gateway_id {
        Some(id) => id.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect())
            .filter(|h: &String| !h.is_empty())
            .unwrap_or_else(|| "gateway".to_owned()),
    };
    format!("ivy-gateway-{name}")
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| UpstreamError::Pem(path.into(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpstreamError::Pem(path.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(UpstreamError::Pem(path.into(), "no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// The rustls client configuration: the broker's certificate must chain to `ca` (default: the system's roots);
/// with `cert` and `key`, the gateway authenticates itself too.
fn client_tls(cfg: &UpstreamConfig) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        Some(ca) => {
            for cert in pem_certs(ca)? {
                roots.add(cert).map_err(|e| UpstreamError::Pem(ca.clone(), e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let _ = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(UpstreamError::Tls(
                    "no system CA certificates found: set mqtt.upstream.ca (MQTT_UPSTREAM_CA)".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs(cert)?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| UpstreamError::Pem(key.clone(), e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| UpstreamError::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Builds the gateway status payload (`online` = true for the birth, false for the will and the last word).
pub type GatewayStatus = Arc<dyn Fn(bool) -> serde_json::Value + Send + Sync>;

/// What the client is connected to inside the gateway.
pub struct Wiring {
    /// Topic prefix (and gateway topics).
    pub prefix: TopicPrefix,
    /// `gateway.gateway_id`, which statuses carry (for the ownership of meters between gateways).
    pub gateway_id: Option<String>,
    /// The outbox's figures and wake-up.
    pub outbox: Arc<OutboxShared>,
    /// The database file (the client reads the outbox on a connection of its own).
    pub store: PathBuf,
    /// The gateway status payload (birth, will, last word).
    pub gateway_status: GatewayStatus,
    /// The counters it keeps.
    pub counters: Arc<UpstreamCounters>,
    /// This gateway's status transitions (the hub's statuses-only sink).
    pub statuses: mpsc::Receiver<Arc<HubEvent>>,
    /// Bound of the direct queue (command responses, stats).
    pub direct_queue: usize,
}

/// The running client.
pub struct UpstreamClient {
    publisher: Publisher,
    outbox: Arc<OutboxShared>,
    inbound: Option<mpsc::Receiver<InboundCommand>>,
    counters: Arc<UpstreamCounters>,
    stop: CancellationToken,
    books: JoinHandle<()>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Starts the client (see [`Wiring`]).
    pub fn start(settings: UpstreamSettings, wiring: Wiring) -> Self {
        let Wiring { prefix, gateway_id, outbox, store, gateway_status, counters, statuses, direct_queue } = wiring;
        let options = ConnectOptions {
            protocol: settings.protocol,
            host: settings.host.clone(),
            port: settings.port,
            tls: settings.tls.clone(),
            client_id: settings.client_id.clone(),
            credentials: settings.credentials.clone(),
            keepalive: settings.keepalive,
            window: settings.window,
            will: (prefix.gateway_status(), serde_json::to_vec(&gateway_status(false)).unwrap_or_default()),
        };
        // The request channel holds at most the window plus control requests: the books never queue more.
        let (client, session) = super::link::connect(&options, settings.window + 1024);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (resume_tx, resume_rx) = mpsc::channel(1);
        let (direct_tx, direct_rx) = mpsc::channel(direct_queue.max(16));
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let driver = match session {
            SessionKind::V311(s) => tokio::spawn(drive(*s, events_tx, resume_rx, settings.clone(), counters.clone())),
            SessionKind::V5(s) => tokio::spawn(drive(*s, events_tx, resume_rx, settings.clone(), counters.clone())),
        };
        let ownership = Ownership::new(prefix.clone(), gateway_id);
        let books =
            Books::new(settings.window, prefix, outbox.clone(), client, counters.clone(), gateway_status, ownership);
        let channels =
            Channels { events: events_rx, resume: resume_tx, direct: direct_rx, inbound: inbound_tx, statuses };
        let books = tokio::spawn(books.run(channels, store, stop.clone()));
        let publisher = Publisher::new(direct_tx, Arc::new(BrokerCounters::default()));
        tracing::info!(broker = %settings.address(), protocol = ?settings.protocol, tls = settings.tls.is_some(), client_id = %settings.client_id, "upstream MQTT client started");
        UpstreamClient { publisher, outbox, inbound: Some(inbound_rx), counters, stop, books, driver }
    }

    /// The direct queue (command responses, `gateway/stats`).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Command requests received from the broker (once; later calls get `None`).
    pub fn take_inbound(&mut self) -> Option<mpsc::Receiver<InboundCommand>> {
        self.inbound.take()
    }

    /// The counters.
    pub fn counters(&self) -> Arc<UpstreamCounters> {
        self.counters.clone()
    }

    /// The broker acknowledged every message committed to the outbox.
    pub fn all_acknowledged(&self) -> bool {
        self.outbox.all_acknowledged()
    }

    /// Every outbox row up to this id was acknowledged.
    pub fn acknowledged_upto(&self) -> i64 {
        self.outbox.acknowledged_upto()
    }

    /// Graceful stop within `grace`: publishes the gateway offline (retained; a graceful DISCONNECT suppresses the
    /// will), waits a moment for the outbox to drain and the PUBACKs, then disconnects. What the outbox still
    /// holds is sent after the next start.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(grace, self.books).await.is_err() {
            tracing::warn!("upstream MQTT client did not finish before the shutdown deadline");
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), self.driver).await;
    }
}

/// Drives the session's event loop: connects, reconnects with backoff, forwards what the books need.
async fn drive<S: Session>(
    mut session: S,
    events: mpsc::Sender<Driven>,
    mut resume: mpsc::Receiver<()>,
    settings: UpstreamSettings,
    counters: Arc<UpstreamCounters>,
) {
    let mut failures: u32 = 0;
    let mut connected_at: Option<tokio::time::Instant> = None;
    loop {
        let polled = tokio::select! {
            polled = session.next() => polled,
            // The books task ends first on shutdown (after its DISCONNECT went out); stop polling then.
            _ = events.closed() => return,
        };
        let sent = match polled {
            Ok(Some(Driven::Connected { session_present })) => {
                connected_at = Some(tokio::time::Instant::now());
                counters.connected.store(true, Ordering::Relaxed);
                tracing::info!(broker = %settings.address(), session_present, "upstream MQTT connected");
                events.send(Driven::Connected { session_present }).await
            }
            Ok(Some(driven)) => events.send(driven).await,
            Ok(None) => Ok(()),
            Err(problem) => {
                counters.connected.store(false, Ordering::Relaxed);
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                if connected_at.take().is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
                    failures = 0;
                }
                let delay = backoff(settings.reconnect_min, settings.reconnect_max, failures);
                failures = failures.saturating_add(1);
                tracing::warn!(
                    broker = %settings.address(),
                    retry_in_ms = delay.as_millis() as u64,
                    "upstream MQTT: {problem}"
                );
                if events.send(Driven::Lost).await.is_err() || resume.recv().await.is_none() {
                    return;
                }
                // The books have forgotten everything in flight and will send it again from the outbox: drop
                // what the library would resend (and any request queued before the books learnt of the loss).
                session.forget();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = events.closed() => return,
                }
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Exponential backoff with jitter: `min × 2^failures`, capped at `max`, then a random point in its upper half.
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let base = min.saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX)).min(max);
    let half = base / 2;
    let jitter = rand::random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// What a queued request or an unacknowledged publish stands for.
#[derive(Debug)]
enum Sent {
    /// An outbox row.
    Row(i64),
    /// A direct message (kept to send it again after a reconnect when QoS 1).
    Direct(OutboundMessage),
    /// A subscribe or unsubscribe (queued again when the connection drops before it went out).
    Control(Control),
}

/// A subscription change: topic filters to subscribe to (`true`) or unsubscribe from.
#[derive(Debug, Clone, PartialEq)]
struct Control {
    subscribe: bool,
    filters: Vec<String>,
}

/// The books task's inputs and outputs.
struct Channels {
    events: mpsc::Receiver<Driven>,
    resume: mpsc::Sender<()>,
    direct: mpsc::Receiver<OutboundMessage>,
    inbound: mpsc::Sender<InboundCommand>,
    /// This gateway's status transitions (the hub's statuses-only sink), for the ownership of meters.
    statuses: mpsc::Receiver<Arc<HubEvent>>,
}

/// The books: what went out under which packet id, what the broker acknowledged, what to send next.
struct Books {
    window: usize,
    prefix: TopicPrefix,
    outbox: Arc<OutboxShared>,
    client: Box<dyn Link>,
    counters: Arc<UpstreamCounters>,
    gateway_status: GatewayStatus,
    ownership: Ownership,
    /// Subscription changes waiting for room (kept across reconnects).
    controls: VecDeque<Control>,
    actions: Vec<Action>,
    connected: bool,
    /// Requests queued in rumqttc, not yet reported as sent.
    queued: VecDeque<Sent>,
    /// Sent publishes waiting for their PUBACK, by packet id.
    inflight: HashMap<u16, Sent>,
    /// A publish rumqttc holds back because its packet id is still in flight (it goes out on that id's ack).
    collided: Option<(u16, Sent)>,
    /// Outbox rows sent (or queued) and not yet acknowledged.
    open_rows: BTreeSet<i64>,
    /// Highest outbox id handed to rumqttc (or skipped).
    handed: i64,
    /// Rows read and not yet handed.
    ready: VecDeque<OutboxRow>,
    /// Highest id read from the outbox.
    read_upto: i64,
    /// QoS 1 direct messages to send again after a reconnect.
    retry: VecDeque<OutboundMessage>,
}

impl Books {
    fn new(
        window: usize,
        prefix: TopicPrefix,
        outbox: Arc<OutboxShared>,
        client: Box<dyn Link>,
        counters: Arc<UpstreamCounters>,
        gateway_status: GatewayStatus,
        ownership: Ownership,
    ) -> Self {
        Books {
            ownership,
            controls: VecDeque::new(),
            actions: Vec::new(),
            window,
            prefix,
            outbox,
            client,
            counters,
            gateway_status,
            connected: false,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            collided: None,
            open_rows: BTreeSet::new(),
            handed: 0,
            ready: VecDeque::new(),
            read_upto: 0,
            retry: VecDeque::new(),
        }
    }

    async fn run(mut self, mut ch: Channels, store: PathBuf, stop: CancellationToken) {
        let mut committed = self.outbox.subscribe();
        let mut reader = None;
        let mut statuses_open = true;
        loop {
            let room = self.connected && self.in_window() < self.window;
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                driven = ch.events.recv() => match driven {
                    Some(Driven::Connected { session_present }) => self.on_connected(session_present),
                    Some(Driven::Lost) => {
                        self.on_lost();
                        if ch.resume.send(()).await.is_err() {
                            return;
                        }
                    }
                    Some(other) => self.on_driven(other, &ch.inbound),
                    None => return,
                },
                status = ch.statuses.recv(), if statuses_open => match status {
                    Some(event) => {
                        if let HubEvent::Status(s) = event.as_ref() {
                            self.ownership.local_status(s, &mut self.actions);
                            self.apply_actions();
                        }
                    }
                    None => statuses_open = false,
                },
                msg = ch.direct.recv(), if room || !self.connected => match msg {
                    Some(msg) => self.on_direct(msg),
                    None => break,
                },
                changed = committed.changed(), if self.rows_room() && self.ready.is_empty() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            if self.connected {
                self.pump_controls();
                let last = *committed.borrow_and_update();
                self.fill(&mut reader, &store, last).await;
            }
        }
        self.finish(&mut ch.events, &ch.resume).await;
    }

    /// Carries out what the ownership decided: subscription changes wait in order for room, re-asserted
    /// statuses go out directly.
    fn apply_actions(&mut self) {
        let actions = std::mem::take(&mut self.actions);
        for action in actions {
            match action {
                Action::Subscribe(filter) => self.push_control(true, filter),
                Action::Unsubscribe(filter) => self.push_control(false, filter),
                Action::Publish(msg) => self.on_direct(msg),
            }
        }
        if self.connected {
            self.pump_controls();
        }
    }

    /// Queues a subscription change, merged into the last waiting one of the same kind (one packet for many
    /// filters).
    fn push_control(&mut self, subscribe: bool, filter: String) {
        if let Some(last) = self.controls.back_mut()
            && last.subscribe == subscribe
            && last.filters.len() < FILTERS_PER_PACKET
        {
            last.filters.push(filter);
            return;
        }
        self.controls.push_back(Control { subscribe, filters: vec![filter] });
    }

    /// Hands waiting subscription changes to rumqttc while the window has room.
    fn pump_controls(&mut self) {
        while self.in_window() < self.window {
            let Some(mut control) = self.controls.pop_front() else { return };
            if !control.subscribe && control.filters.len() > 1 {
                // rumqttc 0.25 unsubscribes one filter per packet: take one, leave the rest waiting.
                let rest = control.filters.split_off(1);
                self.controls.push_front(Control { subscribe: false, filters: rest });
            }
            let queued = if control.subscribe {
                self.client.subscribe(&control.filters)
            } else {
                self.client.unsubscribe(&control.filters.concat())
            };
            match queued {
                Ok(()) => self.queued.push_back(Sent::Control(control)),
                Err(e) => {
                    tracing::warn!(error = %e, "upstream MQTT: subscription change not queued");
                    self.controls.push_front(control);
                    return;
                }
            }
        }
    }

    fn rows_room(&self) -> bool {
        self.connected && self.in_window() < (self.window - self.window / 4).max(1)
    }

    fn in_window(&self) -> usize {
        self.queued.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Every row up to the answer is acknowledged (or skipped): the oldest open row, else the last handed.
    fn acknowledged_upto(&self) -> i64 {
        self.open_rows.first().map_or(self.handed, |first| first - 1)
    }

    fn on_connected(&mut self, session_present: bool) {
        self.connected = true;
        let birth =
            OutboundMessage::json(self.prefix.gateway_status(), &(self.gateway_status)(true), Qos::AtLeastOnce, true);
        self.hand_direct(birth);
        // Without a session the broker forgot the subscriptions: the ownership lists every held meter again.
        self.ownership.connected(session_present, &mut self.actions);
        self.apply_actions();
        while self.in_window() < self.window {
            let Some(msg) = self.retry.pop_front() else { break };
            self.hand_direct(msg);
        }
    }

    /// Forgets everything in flight: rows go back to the outbox reading (sent again from the oldest
    /// unacknowledged), QoS 1 direct messages to the retry queue.
    fn on_lost(&mut self) {
        self.connected = false;
        let pending = self.queued.drain(..).chain(self.inflight.drain().map(|(_, s)| s));
        let pending: Vec<Sent> = pending.chain(self.collided.take().map(|(_, s)| s)).collect();
        let mut controls = Vec::new();
        for sent in pending {
            match sent {
                Sent::Direct(msg) if msg.qos == Qos::AtLeastOnce => self.keep_for_retry(msg),
                // Maybe never sent: again, first (a subscription twice is harmless).
                Sent::Control(c) => controls.push(c),
                _ => {}
            }
        }
        for c in controls.into_iter().rev() {
            self.controls.push_front(c);
        }
        let upto = self.acknowledged_upto();
        self.open_rows.clear();
        self.ready.clear();
        self.handed = upto;
        self.read_upto = upto;
    }

    fn keep_for_retry(&mut self, msg: OutboundMessage) {
        if self.retry.len() >= MAX_DIRECT_RETRY {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.retry.push_back(msg);
        }
    }

    fn on_direct(&mut self, msg: OutboundMessage) {
        if self.connected {
            self.hand_direct(msg);
        } else if msg.qos == Qos::AtLeastOnce {
            self.keep_for_retry(msg);
        } else {
            // Stale figures are worth nothing after the reconnect.
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn hand_direct(&mut self, msg: OutboundMessage) {
        match self.client.publish(&msg) {
            Ok(()) => self.queued.push_back(Sent::Direct(msg)),
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %msg.topic, error = %e, "upstream MQTT: direct message not queued");
            }
        }
    }

    fn on_driven(&mut self, driven: Driven, inbound: &mpsc::Sender<InboundCommand>) {
        match driven {
            Driven::Sent(pkid) => {
                let sent = match self.collided.take() {
                    Some((id, sent)) if id == pkid => Some(sent),
                    other => {
                        self.collided = other;
                        self.queued.pop_front()
                    }
                };
                let Some(sent) = sent else {
                    tracing::warn!(pkid, "upstream MQTT: a publish went out that the books did not queue");
                    return;
                };
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                if pkid == 0 {
                    // QoS 0: done once written.
                    return;
                }
                self.inflight.insert(pkid, sent);
            }
            Driven::Held(pkid) => {
                if let Some(sent) = self.queued.pop_front() {
                    self.collided = Some((pkid, sent));
                }
            }
            Driven::ControlSent => {
                self.queued.pop_front();
            }
            Driven::Acked { pkid, refused } => {
                let Some(sent) = self.inflight.remove(&pkid) else { return };
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(reason) = refused {
                    // Sending it again would be refused again: it is done, and said so.
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%reason, "upstream MQTT: the broker refused a message (check its ACL)");
                }
                if let Sent::Row(id) = sent {
                    self.open_rows.remove(&id);
                    self.outbox.acknowledge_upto(self.acknowledged_upto());
                }
            }
            Driven::SubscriptionRefused => {
                tracing::warn!("upstream MQTT: the broker refused a subscription (check its ACL)");
            }
            Driven::Received { topic, payload } => {
                // Statuses of the meters this gateway holds (another gateway may hold a newer connection).
                if self.ownership.remote_publish(&topic, &payload, &mut self.actions) {
                    self.apply_actions();
                    return;
                }
                let Some(meter) = self.prefix.parse_command_request(&topic) else { return };
                self.counters.commands.fetch_add(1, Ordering::Relaxed);
                let cmd = InboundCommand { meter: meter.to_owned(), payload };
                if inbound.try_send(cmd).is_err() {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Driven::Connected { session_present } => self.on_connected(session_present),
            Driven::Lost => self.on_lost(),
        }
    }

    /// Hands outbox rows to rumqttc while the window has room, reading more when needed. A quarter of the window
    /// stays free for command responses and subscriptions, so a backlog never holds them up.
    async fn fill(&mut self, reader: &mut Option<rusqlite::Connection>, store: &Path, committed: i64) {
        let rows_window = (self.window - self.window / 4).max(1);
        while self.in_window() < rows_window {
            if self.ready.is_empty() {
                if self.read_upto >= committed {
                    return;
                }
                match read_rows(reader.take(), store, self.read_upto).await {
                    Ok((conn, rows)) => {
                        *reader = Some(conn);
                        let Some(last) = rows.last() else {
                            // Rows up to `committed` were dropped from the full outbox meanwhile.
                            self.read_upto = committed;
                            self.handed = self.handed.max(committed);
                            self.outbox.acknowledge_upto(self.acknowledged_upto());
                            return;
                        };
                        self.read_upto = last.id;
                        self.ready.extend(rows);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream MQTT: reading the outbox failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return;
                    }
                }
            }
            let Some(row) = self.ready.pop_front() else { return };
            let msg = &row.message;
            if row.class == crate::mqtt::sink::MessageClass::Status
                && !self.ownership.should_send(&msg.topic, &msg.payload)
            {
                // A newer connection of the meter (at another gateway) owns its retained status now.
                self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                self.handed = row.id;
                if self.open_rows.is_empty() {
                    self.outbox.acknowledge_upto(self.acknowledged_upto());
                }
                continue;
            }
            match self.client.publish(msg) {
                Ok(()) => {
                    self.queued.push_back(Sent::Row(row.id));
                    self.open_rows.insert(row.id);
                    self.handed = row.id;
                }
                Err(e) => {
                    // Only a closed client (shutdown) or a topic rumqttc refuses: keep the row for later.
                    tracing::warn!(topic = %msg.topic, error = %e, "upstream MQTT: outbox message not queued");
                    self.ready.push_front(row);
                    return;
                }
            }
        }
    }

    /// Shutdown: the gateway's last word (offline, retained), a moment for PUBACKs, then DISCONNECT.
    async fn finish(&mut self, events: &mut mpsc::Receiver<Driven>, resume: &mpsc::Sender<()>) {
        if !self.connected {
            return;
        }
        let offline =
            OutboundMessage::json(self.prefix.gateway_status(), &(self.gateway_status)(false), Qos::AtLeastOnce, true);
        self.hand_direct(offline);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.in_window() > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Driven::Lost)) => {
                    self.on_lost();
                    let _ = resume.try_send(());
                    return;
                }
                Ok(Some(Driven::Connected { .. })) => {}
                Ok(Some(other)) => {
                    let (closed, _) = mpsc::channel(1);
                    self.on_driven(other, &closed);
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.client.disconnect();
        // Let the driver write the DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    }
}

/// Reads up to [`READ_BATCH`] rows after `after` on a blocking thread (opening the reading connection the first
/// time).
async fn read_rows(
    conn: Option<rusqlite::Connection>,
    store: &Path,
    after: i64,
) -> Result<(rusqlite::Connection, Vec<OutboxRow>), crate::store::StoreError> {
    let store = store.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let conn = match conn {
            Some(c) => c,
            None => crate::store::open_reader(&store)?,
        };
        let rows = read_after(&conn, after, READ_BATCH)?;
        Ok((conn, rows))
    })
    .await
    .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::sink::MessageClass;
    use std::sync::Mutex;

    /// A link that records what was queued.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Link for Arc<Recorder> {
        fn publish(&self, msg: &OutboundMessage) -> Result<(), String> {
            self.0.lock().unwrap().push(msg.topic.clone());
            Ok(())
        }
        fn subscribe(&self, filters: &[String]) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("SUB {}", filters.join(",")));
            Ok(())
        }
        fn unsubscribe(&self, filter: &str) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("UNSUB {filter}"));
            Ok(())
        }
        fn disconnect(&self) {}
    }

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            class: MessageClass::Telemetry,
            message: OutboundMessage::json(format!("ivy/v1/meters/m1/telemetry/{id}"), &id, Qos::AtLeastOnce, false),
        }
    }

    fn books(window: usize) -> (Books, Arc<Recorder>, Arc<OutboxShared>) {
        let prefix = TopicPrefix::new("ivy/v1", Some("gw")).unwrap();
        let recorder = Arc::new(Recorder::default());
        let outbox = Arc::new(OutboxShared::default());
        let status: GatewayStatus = Arc::new(|online| serde_json::json!({ "online": online }));
        let ownership = Ownership::new(prefix.clone(), Some("gw".into()));
        let b = Books::new(
            window,
            prefix,
            outbox.clone(),
            Box::new(recorder.clone()),
            Arc::new(UpstreamCounters::default()),
            status,
            ownership,
        );
        (b, recorder, outbox)
    }

    #[tokio::test]
    async fn rows_are_acknowledged_in_order_and_sent_again_from_the_oldest_open_one_after_a_loss() {
        let (mut b, sent, outbox) = books(8);
        let (inbound, _rx) = mpsc::channel(1);
        b.ready.extend((1..=10).map(row));
        b.read_upto = 10;
        b.on_connected(true);
        let mut reader = None;
        b.fill(&mut reader, Path::new("/nonexistent"), 10).await;
        // The birth and rows 1..=5: six of eight, a quarter of the window stays for responses.
        assert_eq!(sent.0.lock().unwrap().len(), 6);
        assert_eq!(sent.0.lock().unwrap()[0], "ivy/v1/gateways/gw/status");
        for pkid in 1..=6 {
            b.on_driven(Driven::Sent(pkid), &inbound);
        }
        // Out of order: row 2 (packet 3) first; row 1 still open, nothing may be deleted.
        b.on_driven(Driven::Acked { pkid: 3, refused: None }, &inbound);
        assert_eq!(outbox.acknowledged_upto(), 0);
        b.on_driven(Driven::Acked { pkid: 2, refused: None }, &inbound);
        assert_eq!(outbox.acknowledged_upto(), 2, "rows 1 and 2 are done");
        // A rumqttc collision: a publish held back under packet 4 goes out when 4 is acknowledged.
        b.fill(&mut reader, Path::new("/nonexistent"), 10).await;
        b.on_driven(Driven::Held(4), &inbound);
        b.on_driven(Driven::Acked { pkid: 4, refused: None }, &inbound);
        b.on_driven(Driven::Sent(4), &inbound);
        assert_eq!(outbox.acknowledged_upto(), 3, "packet 4 was row 3; row 4 is the oldest open one");
        assert!(b.inflight.get(&4).is_some_and(|s| matches!(s, Sent::Row(6))));

        // The connection drops: the birth waits for the next connection, rows go back to the outbox reading.
        b.on_lost();
        assert!(!b.connected && b.queued.is_empty() && b.inflight.is_empty() && b.open_rows.is_empty());
        assert_eq!(b.read_upto, 3, "read again after the last row everything before is acknowledged for");
        assert_eq!(b.retry.len(), 1);
        b.on_connected(true);
        let queued = sent.0.lock().unwrap().len();
        assert!(
            sent.0.lock().unwrap()[queued - 2..].iter().all(|t| t == "ivy/v1/gateways/gw/status"),
            "birth, then the retried one"
        );
    }

    #[tokio::test]
    async fn rows_dropped_from_a_full_outbox_do_not_hold_the_acknowledgements_back() {
        let (mut b, _sent, outbox) = books(8);
        b.on_connected(true);
        b.read_upto = 0;
        b.handed = 0;
        // Rows up to 50 were committed and dropped before they were read: the reading finds none.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivy.db");
        drop(crate::store::open_writer(&path).unwrap());
        let mut reader = None;
        b.fill(&mut reader, &path, 50).await;
        assert_eq!(outbox.acknowledged_upto(), 50);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(10_000));
        for failures in 0..40 {
            let base = (100u64 << failures.min(20)).min(10_000);
            for _ in 0..20 {
                let d = backoff(min, max, failures).as_millis() as u64;
                assert!(d >= base / 2 && d <= base, "failures {failures}: {d} ms outside {}..={base}", base / 2);
            }
        }
    }

    #[test]
    fn the_client_id_is_stable_and_derived_from_the_gateway_id() {
        assert_eq!(default_client_id(Some("gw-1")), "ivy-gateway-gw-1");
        let host = default_client_id(None);
        assert!(host.starts_with("ivy-gateway-") && host.len() > "ivy-gateway-".len());
        assert_eq!(host, default_client_id(None));
    }
}
