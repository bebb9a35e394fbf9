//! The embedded MQTT broker: rmqtt 0.24 in library mode. Every rmqtt type stays in this module, so swapping the
//! broker (e.g. for `mqtt5`) touches nothing else.
//!
//! - MQTT 3.1.1 and 5 on one TCP port, MQTT over WebSocket, optional TLS and WSS listeners.
//! - Retained messages through the `rmqtt-retainer` plugin (in memory).
//! - Authentication and ACL through hooks backed by [`Authenticator`] and [`TopicPrefix`]: bad credentials get
//!   CONNACK "bad user name or password", refused subscriptions a failure SUBACK, refused publishes are dropped
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
}

impl GatewayHooks {
    fn role(&self, id: &Id) -> Option<crate::auth::Role> {
        self.auth.role_of(id.username.as_deref())
    }
}

#[async_trait]
impl Handler for GatewayHooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let allowed = match (info.username(), info.password()) {
                    (Some(user), Some(password)) => self.auth.verify(user, password).await.is_some(),
                    _ => !self.auth.enabled(),
                };
                if allowed {
                    (false, Some(HookResult::AuthResult(AuthResult::Allow(false, None))))
                } else {
                    self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %info.id().client_id, "MQTT login refused");
                    (false, Some(HookResult::AuthResult(AuthResult::BadUsernameOrPassword)))
                }
            }
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
            Parameter::MessageDropped(_, from, _, _) if from.is_system() => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                (true, acc)
            }
            Parameter::ClientConnected(_) => {
                self.counters.clients.fetch_add(1, Ordering::Relaxed);
                (true, acc)
            }
            Parameter::ClientDisconnected(_, _) => {
                self.counters.clients.fetch_sub(1, Ordering::Relaxed);
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

fn listener(name: &str, addr: SocketAddr, cfg: &BrokerConfig, anonymous: bool) -> Builder {
    Builder::new()
        .name(name)
        .laddr(addr)
        .allow_anonymous(anonymous)
        .max_connections(cfg.max_connections)
        .max_packet_size(cfg.max_packet_size)
        // Subscribers of a whole fleet's telemetry need deep queues; the gateway's own queue bounds the rest.
        .max_mqueue_len(100_000)
        .handshake_timeout(Duration::from_secs(10))
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
            };
            register.add(typ, Box::new(hooks)).await;
        }
        register.start().await;

        let anonymous = !auth.enabled();
        let tcp = listener("tcp", cfg.tcp_addr, cfg, anonymous).bind().map_err(bind_err(cfg.tcp_addr))?;
        let tcp = tcp.tcp().map_err(bind_err(cfg.tcp_addr))?;
        let mut addrs = BoundAddrs { tcp: tcp.local_addr().unwrap_or(cfg.tcp_addr), ws: None, tls: None, wss: None };
        let mut server = MqttServer::new(scx.clone()).listener(tcp);
        if let Some(addr) = cfg.ws_addr {
            let ws = listener("ws", addr, cfg, anonymous).bind().and_then(|l| l.ws()).map_err(bind_err(addr))?;
            addrs.ws = Some(ws.local_addr().unwrap_or(addr));
            server = server.listener(ws);
        }
        if let Some(tls) = &cfg.tls {
            let cert = tls.cert.display().to_string();
            let key = tls.key.display().to_string();
            if let Some(addr) = tls.tls_addr {
                let l = listener("tls", addr, cfg, anonymous)
                    .tls_cert(Some(cert.clone()))
                    .tls_key(Some(key.clone()))
                    .bind()
                    .and_then(|l| l.tls())
                    .map_err(bind_err(addr))?;
                addrs.tls = Some(l.local_addr().unwrap_or(addr));
                server = server.listener(l);
            }
            if let Some(addr) = tls.wss_addr {
                let l = listener("wss", addr, cfg, anonymous)
                    .tls_cert(Some(cert))
                    .tls_key(Some(key))
                    .bind()
                    .and_then(|l| l.wss())
                    .map_err(bind_err(addr))?;
                addrs.wss = Some(l.local_addr().unwrap_or(addr));
                server = server.listener(l);
            }
        }
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
