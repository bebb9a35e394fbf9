//! The embedded MQTT broker: rmqtt 0.24 in library mode. Every rmqtt type stays in this module, so swapping the
//! broker (e.g. for `mqtt5`) touches nothing else.
//!
//! - MQTT 3.1.1 and 5 on one TCP port, MQTT over WebSocket, optional TLS and WSS listeners.
//! - Retained messages through the `rmqtt-retainer` plugin (in memory).
//! - Authentication and ACL through hooks backed by [`Authenticator`] and [`TopicPrefix`]: bad credentials get
//!   CONNACK "bad user name or password" (failures throttled per user and source), a will the user may not
//!   publish CONNACK "not authorized", as does a user over `max_sessions_per_user`; refused subscriptions a failure SUBACK, refused publishes are dropped
//!   and counted. Allowed command requests are handed to the gateway through a bounded channel.
//! - The gateway's own messages enter through one bounded queue drained by a single task, so bursts wait instead
//!   of overflowing the broker's per-session queues.

use super::topics::TopicPrefix;
use super::{BrokerCounters, InboundCommand, OutboundMessage, Publisher, Qos};
use crate::auth::Authenticator;
use async_trait::async_trait;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{AuthResult, CodecPublish, From, Id, Publish, PublishAclResult, SubscribeReturn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// MQTT over TLS.
    pub tls_addr: Option<SocketAddr>,
    /// MQTT over secure WebSocket.
    pub wss_addr: Option<SocketAddr>,
}

/// Broker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// MQTT TCP listener.
    pub tcp_addr: SocketAddr,
    /// MQTT over WebSocket listener (path `/mqtt`, any path is accepted).
    pub ws_addr: Option<SocketAddr>,
    /// TLS listeners.
    pub tls: Option<TlsConfig>,
    /// Maximum client connections per listener.
    pub max_connections: usize,
    /// Maximum MQTT packet size.
    pub max_packet_size: u32,
    /// Messages queued at most per client session (QoS 0: the newest is dropped, QoS 1/2: the oldest); each drop
    /// is counted for that client.
    pub session_queue: usize,
    /// Connections at once per user name (0 = no limit).
    pub max_sessions_per_user: usize,
    /// Time a new connection has to complete CONNECT.
    pub handshake_timeout: Duration,
    /// Capacity of the gateway's publish queue.
    pub publish_queue: usize,
    /// Capacity of the inbound (command request) queue.
    pub inbound_queue: usize,
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, String),
    /// The retainer plugin failed.
    #[error("retained-message plugin: {0}")]
    Plugin(String),
}

/// The actual listening addresses (ports resolved when 0 was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    /// TCP.
    pub tcp: SocketAddr,
    /// WebSocket.
    pub ws: Option<SocketAddr>,
    /// TLS.
    pub tls: Option<SocketAddr>,
    /// WSS.
    pub wss: Option<SocketAddr>,
}

/// The running broker.
pub struct EmbeddedBroker {
    addrs: BoundAddrs,
    server: JoinHandle<()>,
    publisher_task: JoinHandle<()>,
    publisher: Publisher,
    inbound: Option<mpsc::Receiver<InboundCommand>>,
    counters: Arc<BrokerCounters>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("addrs", &self.addrs).finish_non_exhaustive()
    }
}

struct GatewayHooks {
    auth: Arc<Authenticator>,
    prefix: TopicPrefix,
    inbound: mpsc::Sender<InboundCommand>,
    counters: Arc<BrokerCounters>,
    sessions: Arc<SessionsPerUser>,
}

impl GatewayHooks {
    fn role(&self, id: &Id) -> Option<crate::auth::Role> {
        self.auth.role_of(id.username.as_deref())
    }

    /// The CONNECT check: credentials (throttled per user and source), then the will against the publish ACL,
    /// then the user's session cap. A will the user could not publish is refused at CONNECT with "not
    /// authorized" (as Mosquitto and EMQX do), instead of being published later without a check.
    async fn authenticate(&self, info: &rmqtt::types::ConnectInfo) -> AuthResult {
        let id = info.id();
        let source = id.remote_addr.map(|a| a.ip());
        let user = info.username().map(|u| u.to_string());
        let role = match (&user, info.password()) {
            (Some(user), Some(password)) => {
                match self.auth.login(user, password, crate::auth::Plane::Mqtt, source).await {
                    Ok(role) => role,
                    Err(refused) => {
                        self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(client = %id.client_id, %user, ?source, ?refused, "MQTT login refused");
                        return AuthResult::BadUsernameOrPassword;
                    }
                }
            }
            _ => match self.auth.role_of(None) {
                Some(role) => role,
                None => {
                    self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %id.client_id, ?source, "MQTT login without credentials refused");
                    return AuthResult::BadUsernameOrPassword;
                }
            },
        };
        if let Some(will) = info.last_will() {
            let topic = will_topic(&will);
            if !self.prefix.may_publish(role, topic) {
                self.counters.denied_wills.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = %id.client_id, user = ?user, %topic, "will refused by the publish ACL");
                return AuthResult::NotAuthorized;
            }
        }
        if let Some(user) = &user
            && !self.sessions.may_open(user, &id.client_id)
        {
            self.counters.denied_sessions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %id.client_id, %user, "MQTT connection refused: too many sessions for this user");
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }
}

/// The topic of a will, whatever the protocol version.
fn will_topic<'a>(will: &'a rmqtt::types::LastWill<'a>) -> &'a str {
    match will {
        rmqtt::types::LastWill::V3(w) => &w.topic,
        rmqtt::types::LastWill::V5(w) => &w.topic,
    }
}

/// Open sessions per user name (client ids with a live connection), for `max_sessions_per_user`.
#[derive(Debug, Default)]
struct SessionsPerUser {
    max: usize,
    /// user → client id → live connections with that id (a reconnect overlaps its predecessor briefly).
    open: std::sync::Mutex<OpenSessions>,
}

type OpenSessions = std::collections::HashMap<String, std::collections::HashMap<String, u32>>;

impl SessionsPerUser {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenSessions> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` may connect as `client`: under the cap, or taking over a client id it already has.
    fn may_open(&self, user: &str, client: &str) -> bool {
        if self.max == 0 {
            return true;
        }
        self.lock().get(user).is_none_or(|clients| clients.contains_key(client) || clients.len() < self.max)
    }

    fn connected(&self, user: &str, client: &str) {
        *self.lock().entry(user.to_owned()).or_default().entry(client.to_owned()).or_insert(0) += 1;
    }

    fn disconnected(&self, user: &str, client: &str) {
        let mut open = self.lock();
        if let Some(clients) = open.get_mut(user) {
            if let Some(n) = clients.get_mut(client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    clients.remove(client);
                }
            }
            if clients.is_empty() {
                open.remove(user);
            }
        }
    }
}

#[async_trait]
impl Handler for GatewayHooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => (false, Some(HookResult::AuthResult(self.authenticate(info).await))),
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let allowed =
                    self.role(&session.id).is_some_and(|r| self.prefix.may_subscribe(r, &subscribe.topic_filter));
                if allowed {
                    (true, acc)
                } else {
                    self.counters.denied_subscriptions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %session.id.client_id, filter = %subscribe.topic_filter, "subscription refused by ACL");
                    let refused = SubscribeReturn::new_failure(SubscribeAckReason::NotAuthorized);
                    (false, Some(HookResult::SubscribeAclResult(refused)))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let topic: &str = &publish.topic;
                let allowed = self.role(&session.id).is_some_and(|r| self.prefix.may_publish(r, topic));
                if !allowed {
                    self.counters.denied_publishes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %session.id.client_id, %topic, "publish refused by ACL");
                    return (false, Some(HookResult::PublishAclResult(PublishAclResult::rejected(false, None))));
                }
                if let Some(meter) = self.prefix.parse_command_request(topic) {
                    let msg = InboundCommand { meter: meter.to_owned(), payload: publish.payload.clone() };
                    if self.inbound.try_send(msg).is_err() {
                        self.counters.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (true, acc)
            }
            Parameter::MessageDropped(Some(to), _, _, rmqtt::types::Reason::MessageQueueFull) => {
                // A subscriber that does not read: its queue is full. Counted for that client, not as a gateway
                // drop (the gateway delivered to every other subscriber).
                self.counters.session_dropped(to.username.as_deref().unwrap_or(""), &to.client_id);
                (true, acc)
            }
            Parameter::MessageDropped(_, from, _, _) if from.is_system() => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                (true, acc)
            }
            Parameter::ClientConnected(session) => {
                self.counters.clients.fetch_add(1, Ordering::Relaxed);
                if let Some(user) = session.id.username.as_deref() {
                    self.sessions.connected(user, &session.id.client_id);
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                self.counters.clients.fetch_sub(1, Ordering::Relaxed);
                if let Some(user) = session.id.username.as_deref() {
                    self.sessions.disconnected(user, &session.id.client_id);
                }
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

fn listener(name: &str, addr: SocketAddr, cfg: &BrokerConfig) -> Builder {
    Builder::new()
        .name(name)
        .laddr(addr)
        // Anonymous clients are decided by the authentication hook too (allowed only when authentication is
        // off), so their wills pass the same ACL check.
        .allow_anonymous(false)
        .max_connections(cfg.max_connections)
        .max_packet_size(cfg.max_packet_size)
        // A subscriber that stops reading holds at most this many messages (each at most max_packet_size, and
        // the gateway's own messages are a few hundred bytes); 100,000 let 20 stuck viewers take 800 MB.
        .max_mqueue_len(cfg.session_queue.max(1))
        .handshake_timeout(cfg.handshake_timeout)
        .reuseaddr(Some(true))
        // Messages are small and latency matters (command responses); Nagle would hold them up to 40 ms.
        .nodelay(true)
}

fn bind_err(addr: SocketAddr) -> impl Fn(rmqtt::Error) -> BrokerError {
    move |e| BrokerError::Bind(addr, e.to_string())
}

impl EmbeddedBroker {
    /// Starts the broker on the current tokio runtime.
    pub async fn start(cfg: &BrokerConfig, auth: Arc<Authenticator>, prefix: TopicPrefix) -> Result<Self, BrokerError> {
        // rmqtt and the upstream client both link rustls with more than one crypto provider: pick one explicitly
        // before any TLS is set up, or rustls cannot choose a process default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let counters = Arc::new(BrokerCounters::default());
        let scx = ServerContext::new()
            .plugins_config_map_add(
                "rmqtt-retainer",
                "storage.type = \"ram\"\nmax_retained_messages = 0\nmax_payload_size = \"1MB\"\nretained_message_ttl = \"0m\"\n",
            )
            .build()
            .await;
        rmqtt_retainer::register(&scx, true, false).await.map_err(|e| BrokerError::Plugin(e.to_string()))?;
        let (inbound_tx, inbound_rx) = mpsc::channel(cfg.inbound_queue.max(1));
        let register = scx.extends.hook_mgr().register();
        let sessions = Arc::new(SessionsPerUser { max: cfg.max_sessions_per_user, ..Default::default() });
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessageDropped,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            let hooks = GatewayHooks {
                auth: auth.clone(),
                prefix: prefix.clone(),
                inbound: inbound_tx.clone(),
                counters: counters.clone(),
                sessions: sessions.clone(),
            };
            register.add(typ, Box::new(hooks)).await;
        }
        register.start().await;

        let tcp = listener("tcp", cfg.tcp_addr, cfg).bind().map_err(bind_err(cfg.tcp_addr))?;
        let tcp = tcp.tcp().map_err(bind_err(cfg.tcp_addr))?;
        let mut refusals: Vec<super::ListenerRefusals> = Vec::new();
        let mut count_refusals = |l: &rmqtt::net::Listener| {
            let count = l.connection_count();
            refusals.push(super::ListenerRefusals(Box::new(move || count.refused())));
        };
        count_refusals(&tcp);
        let mut addrs = BoundAddrs { tcp: tcp.local_addr().unwrap_or(cfg.tcp_addr), ws: None, tls: None, wss: None };
        let mut server = MqttServer::new(scx.clone()).listener(tcp);
        if let Some(addr) = cfg.ws_addr {
            let ws = listener("ws", addr, cfg).bind().and_then(|l| l.ws()).map_err(bind_err(addr))?;
            addrs.ws = Some(ws.local_addr().unwrap_or(addr));
            count_refusals(&ws);
            server = server.listener(ws);
        }
        if let Some(tls) = &cfg.tls {
            let cert = tls.cert.display().to_string();
            let key = tls.key.display().to_string();
            if let Some(addr) = tls.tls_addr {
                let l = listener("tls", addr, cfg)
                    .tls_cert(Some(cert.clone()))
                    .tls_key(Some(key.clone()))
                    .bind()
                    .and_then(|l| l.tls())
                    .map_err(bind_err(addr))?;
                addrs.tls = Some(l.local_addr().unwrap_or(addr));
                count_refusals(&l);
                server = server.listener(l);
            }
            if let Some(addr) = tls.wss_addr {
                let l = listener("wss", addr, cfg)
                    .tls_cert(Some(cert))
                    .tls_key(Some(key))
                    .bind()
                    .and_then(|l| l.wss())
                    .map_err(bind_err(addr))?;
                addrs.wss = Some(l.local_addr().unwrap_or(addr));
                count_refusals(&l);
                server = server.listener(l);
            }
        }
        *counters.listener_refusals.lock().unwrap_or_else(|p| p.into_inner()) = refusals;
        let server = server.build();
        let server = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "MQTT broker stopped");
            }
        });

        let (tx, rx) = mpsc::channel(cfg.publish_queue.max(1));
        let publisher_task = tokio::spawn(publish_loop(scx, rx, counters.clone()));
        let publisher = Publisher::new(tx, counters.clone());
        tracing::info!(tcp = %addrs.tcp, ws = ?addrs.ws, tls = ?addrs.tls, wss = ?addrs.wss, "embedded MQTT broker listening");
        Ok(EmbeddedBroker { addrs, server, publisher_task, publisher, inbound: Some(inbound_rx), counters })
    }

    /// Where it listens.
    pub fn local_addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The gateway's publisher.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Client publishes the gateway acts on (once; later calls get `None`).
    pub fn take_inbound(&mut self) -> Option<mpsc::Receiver<InboundCommand>> {
        self.inbound.take()
    }

    /// The counters.
    pub fn counters(&self) -> Arc<BrokerCounters> {
        self.counters.clone()
    }

    /// Stops the listeners and the publisher (messages still queued are dropped).
    pub async fn shutdown(self) {
        self.server.abort();
        self.publisher_task.abort();
        let _ = self.server.await;
        let _ = self.publisher_task.await;
    }
}

/// Drains the gateway's queue into the broker, one message at a time.
async fn publish_loop(scx: ServerContext, mut rx: mpsc::Receiver<OutboundMessage>, counters: Arc<BrokerCounters>) {
    let id = Id::new(scx.node.id(), 0, None, None, "ivy-gateway".into(), Some("ivy-gateway".into()));
    let from = From::from_system(id);
    while let Some(msg) = rx.recv().await {
        let qos = match msg.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let publish: Publish = CodecPublish {
            dup: false,
            retain: msg.retain,
            qos,
            topic: msg.topic.into(),
            packet_id: None,
            payload: msg.payload,
            properties: None,
        }
        .into();
        let publish = publish.create_time(rmqtt::utils::timestamp_millis());
        match SessionState::forwards(&scx, from.clone(), publish, false, None).await {
            Ok(()) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "the broker refused a gateway message");
            }
        }
    }
}
