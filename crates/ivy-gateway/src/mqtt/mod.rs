//! MQTT: the embedded broker ([`broker`], the only module that knows rmqtt), topic names and access rules
//! ([`topics`]), and the publishing side ([`sink`]: hub events → messages). The rest of the gateway publishes
//! through a [`Publisher`] (one bounded queue, drained by a single task) and receives command requests as
//! [`InboundCommand`] values, so another transport (an upstream broker) can provide the same two ends.

pub mod broker;
pub mod outbox;
pub mod sink;
pub mod topics;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Delivery guarantee of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// At most once.
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
}

/// A message the gateway publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// Topic.
    pub topic: String,
    /// Payload (JSON).
    pub payload: Bytes,
    /// QoS.
    pub qos: Qos,
    /// Retained.
    pub retain: bool,
}

impl OutboundMessage {
    /// A JSON message.
    pub fn json<T: serde::Serialize + ?Sized>(topic: String, value: &T, qos: Qos, retain: bool) -> Self {
        // Our payload types always serialise (string keys, finite numbers); an empty payload would be the sign.
        OutboundMessage { topic, payload: Bytes::from(serde_json::to_vec(value).unwrap_or_default()), qos, retain }
    }
}

/// A command request a client published to `{p}/meters/{id}/command/request`, after the ACL allowed it. The
/// transport reads the topic once; the command router validates the id.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundCommand {
    /// The `{id}` segment of the topic, as published.
    pub meter: String,
    /// Payload.
    pub payload: Bytes,
}

/// Counters shared by the broker, its hooks and the publisher.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// MQTT clients connected now.
    pub clients: AtomicI64,
    /// Messages published by the gateway.
    pub published: AtomicU64,
    /// Gateway messages dropped (queue full or the broker refused them).
    pub dropped: AtomicU64,
    /// Client publishes refused by the ACL.
    pub denied_publishes: AtomicU64,
    /// Client subscriptions refused by the ACL.
    pub denied_subscriptions: AtomicU64,
    /// Failed logins.
    pub auth_failures: AtomicU64,
    /// Client publishes the gateway could not take (inbound queue full).
    pub inbound_dropped: AtomicU64,
    /// Connections refused because their will's topic fails the publish ACL.
    pub denied_wills: AtomicU64,
    /// Connections refused because the user has `max_sessions_per_user` open.
    pub denied_sessions: AtomicU64,
    /// Messages dropped because a subscriber's session queue was full, all clients together.
    pub session_drops_total: AtomicU64,
    /// The same per (user, client id); at most [`MAX_DROP_CLIENTS`] clients, later ones under client `_other`.
    pub session_drops: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
    /// Per listener, connections closed at accept because it had `mqtt.max_connections` open (read from the
    /// broker's listeners when asked).
    pub listener_refusals: std::sync::Mutex<Vec<ListenerRefusals>>,
}

/// Reads how many connections one listener closed at its cap since start.
pub struct ListenerRefusals(pub Box<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for ListenerRefusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListenerRefusals({})", (self.0)())
    }
}

/// Distinct clients whose drops are counted by name (client ids are chosen by clients: the label set is bounded).
pub const MAX_DROP_CLIENTS: usize = 1000;

impl BrokerCounters {
    /// Counts a message dropped for `client` of `user` (its session queue was full).
    pub fn session_dropped(&self, user: &str, client: &str) {
        self.session_drops_total.fetch_add(1, Ordering::Relaxed);
        let mut drops = self.session_drops.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_owned(), client.to_owned());
        let key = if drops.len() < MAX_DROP_CLIENTS || drops.contains_key(&key) {
            key
        } else {
            (String::new(), "_other".to_owned())
        };
        *drops.entry(key).or_insert(0) += 1;
    }

    /// Drops per (user, client id) so far.
    pub fn session_drops(&self) -> Vec<((String, String), u64)> {
        let drops = self.session_drops.lock().unwrap_or_else(|p| p.into_inner());
        drops.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A snapshot of [`BrokerCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStats {
    /// Clients connected.
    pub clients: i64,
    /// Published.
    pub published: u64,
    /// Dropped.
    pub dropped: u64,
    /// Denied publishes.
    pub denied_publishes: u64,
    /// Denied subscriptions.
    pub denied_subscriptions: u64,
    /// Failed logins.
    pub auth_failures: u64,
    /// Inbound drops.
    pub inbound_dropped: u64,
    /// Wills refused at CONNECT.
    pub denied_wills: u64,
    /// Connections refused by the per-user session cap.
    pub denied_sessions: u64,
    /// Messages dropped for subscribers that do not read.
    pub session_dropped: u64,
    /// Connections closed at accept because their listener had `mqtt.max_connections` open.
    pub connections_refused: u64,
}

impl BrokerCounters {
    /// Current values.
    pub fn snapshot(&self) -> BrokerStats {
        BrokerStats {
            clients: self.clients.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            denied_publishes: self.denied_publishes.load(Ordering::Relaxed),
            denied_subscriptions: self.denied_subscriptions.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            inbound_dropped: self.inbound_dropped.load(Ordering::Relaxed),
            denied_wills: self.denied_wills.load(Ordering::Relaxed),
            denied_sessions: self.denied_sessions.load(Ordering::Relaxed),
            session_dropped: self.session_drops_total.load(Ordering::Relaxed),
            connections_refused: self
                .listener_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|refused| (refused.0)())
                .sum(),
        }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The queue is full (the message is dropped and counted).
    #[error("publish queue full")]
    Full,
    /// The broker has stopped.
    #[error("broker stopped")]
    Closed,
}

/// The gateway's way to publish: one bounded queue in front of the broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<OutboundMessage>,
    counters: Arc<BrokerCounters>,
}

impl Publisher {
    /// A publisher feeding `tx`.
    pub fn new(tx: mpsc::Sender<OutboundMessage>, counters: Arc<BrokerCounters>) -> Self {
        Publisher { tx, counters }
    }

    /// Queues without waiting; a full queue drops the message and counts it.
    pub fn try_publish(&self, msg: OutboundMessage) -> Result<(), PublishError> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                PublishError::Full
            }
            mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
        })
    }

    /// Queues, waiting for room (back-pressure instead of loss).
    pub async fn publish(&self, msg: OutboundMessage) -> Result<(), PublishError> {
        self.tx.send(msg).await.map_err(|_| PublishError::Closed)
    }

    /// Messages queued and not yet taken by the broker.
    pub fn pending(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<BrokerCounters> {
        &self.counters
    }
}
