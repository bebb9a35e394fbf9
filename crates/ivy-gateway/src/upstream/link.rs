//! The two MQTT versions the upstream client speaks (rumqttc's 3.1.1 and 5 clients), behind one shape: a
//! [`Link`] to queue requests and a [`Session`] whose events are reduced to the few the client keeps books on
//! ([`Driven`]). Everything version-specific (options, persistent sessions, refusal codes) stays here.

use crate::mqtt::{OutboundMessage, Qos};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Largest packet sent or accepted (snapshots of meters with many registers exceed rumqttc's 10 KiB default).
const MAX_PACKET: usize = 1024 * 1024;

/// The MQTT version spoken with the upstream broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// How to connect (built from the configuration).
#[derive(Clone)]
pub struct ConnectOptions {
    /// Version.
    pub protocol: Protocol,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Client id.
    pub client_id: String,
    /// User and password.
    pub credentials: Option<(String, String)>,
    /// Keepalive.
    pub keepalive: Duration,
    /// Unacknowledged publishes at most.
    pub window: usize,
    /// The will (topic, payload): retained, QoS 1.
    pub will: (String, Vec<u8>),
}

/// What happened on the connection, reduced to what the books need.
#[derive(Debug)]
pub enum Driven {
    /// CONNACK (accepted).
    Connected {
        /// The broker kept the session (and its subscriptions).
        session_present: bool,
    },
    /// A queued publish went out under this packet id (0: QoS 0).
    Sent(u16),
    /// A queued publish waits: its packet id is still in flight (it goes out when that one is acknowledged).
    Held(u16),
    /// A queued subscribe or unsubscribe went out.
    ControlSent,
    /// PUBACK; `refused` when an MQTT 5 broker answered with an error reason (it will not deliver the message).
    Acked {
        /// Packet id.
        pkid: u16,
        /// The reason, when the broker refused the message.
        refused: Option<String>,
    },
    /// The broker refused a subscription.
    SubscriptionRefused,
    /// A message from a subscription.
    Received {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// The connection is gone (or an attempt failed); the driver waits for the books to reset.
    Lost,
}

/// Queues requests for the session (never waits: the books keep the window).
pub trait Link: Send + Sync {
    /// Queues a publish.
    fn publish(&self, msg: &OutboundMessage) -> Result<(), String>;
    /// Queues one SUBSCRIBE for `filters` (QoS 1).
    fn subscribe(&self, filters: &[String]) -> Result<(), String>;
    /// Queues one UNSUBSCRIBE.
    fn unsubscribe(&self, filter: &str) -> Result<(), String>;
    /// Queues a DISCONNECT.
    fn disconnect(&self);
}

/// The connection's event loop.
pub trait Session: Send + 'static {
    /// The next event: `Ok(None)` for one the books do not need, `Err` with one line saying what is wrong.
    fn next(&mut self) -> impl Future<Output = Result<Option<Driven>, String>> + Send;
    /// Forgets what the library would resend after a reconnect (the books send it again from the outbox).
    fn forget(&mut self);
}

/// The link and the session for `options`; the request channel holds `capacity` requests.
pub fn connect(options: &ConnectOptions, capacity: usize) -> (Box<dyn Link>, SessionKind) {
    match options.protocol {
        Protocol::V311 => {
            let (client, eventloop) = rumqttc::AsyncClient::new(v311_options(options), capacity);
            (Box::new(client), SessionKind::V311(Box::new(V311 { eventloop, tls: options.tls.is_some() })))
        }
        Protocol::V5 => {
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(v5_options(options), capacity);
            (Box::new(client), SessionKind::V5(Box::new(V5 { eventloop, tls: options.tls.is_some() })))
        }
    }
}

/// A session of either version.
pub enum SessionKind {
    /// MQTT 3.1.1.
    V311(Box<V311>),
    /// MQTT 5.
    V5(Box<V5>),
}

fn qos(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos5(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    }
}

fn transport(options: &ConnectOptions) -> Option<rumqttc::Transport> {
    options.tls.as_ref().map(|tls| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())))
}

fn v311_options(o: &ConnectOptions) -> rumqttc::MqttOptions {
    let mut m = rumqttc::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
    m.set_keep_alive(o.keepalive)
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(u16::try_from(o.window.saturating_mul(2)).unwrap_or(u16::MAX))
        .set_last_will(rumqttc::LastWill::new(o.will.0.clone(), o.will.1.clone(), rumqttc::QoS::AtLeastOnce, true));
    if let Some((user, password)) = &o.credentials {
        m.set_credentials(user.clone(), password.clone());
    }
    if let Some(t) = transport(o) {
        m.set_transport(t);
    }
    m
}

/// MQTT 5 keeps a session after the connection only for its expiry interval: a week covers any outage.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

fn v5_options(o: &ConnectOptions) -> rumqttc::v5::MqttOptions {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    let mut m = rumqttc::v5::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
    m.set_keep_alive(o.keepalive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
        .set_max_packet_size(Some(MAX_PACKET as u32))
        .set_outgoing_inflight_upper_limit(u16::try_from(o.window.saturating_mul(2)).unwrap_or(u16::MAX))
        .set_last_will(LastWill::new(o.will.0.clone(), o.will.1.clone(), qos5(Qos::AtLeastOnce), true, None));
    if let Some((user, password)) = &o.credentials {
        m.set_credentials(user.clone(), password.clone());
    }
    if let Some(t) = transport(o) {
        m.set_transport(t);
    }
    m
}

impl Link for rumqttc::AsyncClient {
    fn publish(&self, msg: &OutboundMessage) -> Result<(), String> {
        self.try_publish(msg.topic.clone(), qos(msg.qos), msg.retain, msg.payload.to_vec()).map_err(|e| e.to_string())
    }

    fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        let filters = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce));
        self.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    fn unsubscribe(&self, filter: &str) -> Result<(), String> {
        self.try_unsubscribe(filter.to_owned()).map_err(|e| e.to_string())
    }

    fn disconnect(&self) {
        let _ = self.try_disconnect();
    }
}

impl Link for rumqttc::v5::AsyncClient {
    fn publish(&self, msg: &OutboundMessage) -> Result<(), String> {
        self.try_publish(msg.topic.clone(), qos5(msg.qos), msg.retain, msg.payload.to_vec()).map_err(|e| e.to_string())
    }

    fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        // Without no_local: a gateway sees its own statuses come back (the ownership counts on it).
        let filters =
            filters.iter().map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), qos5(Qos::AtLeastOnce)));
        self.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    fn unsubscribe(&self, filter: &str) -> Result<(), String> {
        self.try_unsubscribe(filter.to_owned()).map_err(|e| e.to_string())
    }

    fn disconnect(&self) {
        let _ = self.try_disconnect();
    }
}

/// The MQTT 3.1.1 event loop.
pub struct V311 {
    eventloop: rumqttc::EventLoop,
    tls: bool,
}

impl Session for V311 {
    async fn next(&mut self) -> Result<Option<Driven>, String> {
        use rumqttc::{Event, Incoming, Outgoing};
        let event = self.eventloop.poll().await.map_err(|e| describe_v311(&e, self.tls))?;
        Ok(match event {
            Event::Incoming(Incoming::ConnAck(ack)) => Some(Driven::Connected { session_present: ack.session_present }),
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(Driven::Sent(pkid)),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => Some(Driven::Held(pkid)),
            Event::Outgoing(Outgoing::Subscribe(_) | Outgoing::Unsubscribe(_)) => Some(Driven::ControlSent),
            Event::Incoming(Incoming::PubAck(ack)) => Some(Driven::Acked { pkid: ack.pkid, refused: None }),
            Event::Incoming(Incoming::SubAck(ack)) => {
                let refused = ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                refused.then_some(Driven::SubscriptionRefused)
            }
            Event::Incoming(Incoming::Publish(p)) => Some(Driven::Received { topic: p.topic, payload: p.payload }),
            _ => None,
        })
    }

    fn forget(&mut self) {
        self.eventloop.clean();
        self.eventloop.pending.clear();
    }
}

/// The MQTT 5 event loop.
pub struct V5 {
    eventloop: rumqttc::v5::EventLoop,
    tls: bool,
}

impl Session for V5 {
    async fn next(&mut self) -> Result<Option<Driven>, String> {
        use rumqttc::Outgoing;
        use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
        use rumqttc::v5::{Event, Incoming};
        let event = self.eventloop.poll().await.map_err(|e| describe_v5(&e, self.tls))?;
        Ok(match event {
            Event::Incoming(Incoming::ConnAck(ack)) => Some(Driven::Connected { session_present: ack.session_present }),
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(Driven::Sent(pkid)),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => Some(Driven::Held(pkid)),
            Event::Outgoing(Outgoing::Subscribe(_) | Outgoing::Unsubscribe(_)) => Some(Driven::ControlSent),
            Event::Incoming(Incoming::PubAck(ack)) => {
                let refused = match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                    other => Some(format!("{other:?}")),
                };
                Some(Driven::Acked { pkid: ack.pkid, refused })
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                let refused = ack.return_codes.iter().any(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                refused.then_some(Driven::SubscriptionRefused)
            }
            Event::Incoming(Incoming::Publish(p)) => match String::from_utf8(p.topic.to_vec()) {
                Ok(topic) => Some(Driven::Received { topic, payload: p.payload }),
                Err(_) => None,
            },
            _ => None,
        })
    }

    fn forget(&mut self) {
        self.eventloop.clean();
        self.eventloop.pending.clear();
    }
}

const CHECK_CREDENTIALS: &str = "check MQTT_UPSTREAM_USERNAME / MQTT_UPSTREAM_PASSWORD";
const CHECK_TLS: &str =
    "the broker's certificate must chain to MQTT_UPSTREAM_CA and name the host in MQTT_UPSTREAM_URL";

/// One line saying what is wrong with a 3.1.1 connection attempt.
fn describe_v311(e: &rumqttc::ConnectionError, tls: bool) -> String {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match e {
        E::ConnectionRefused(Code::BadUserNamePassword) => {
            format!("the broker refused the user name or password ({CHECK_CREDENTIALS})")
        }
        // Mosquitto answers a wrong password with this code (MQTT 3.1.1 leaves the choice to the broker).
        E::ConnectionRefused(Code::NotAuthorized) => format!(
            "the broker refused the connection as not authorized: wrong user name or password, or not allowed by \
             its ACL ({CHECK_CREDENTIALS})"
        ),
        E::ConnectionRefused(Code::BadClientId) => {
            "the broker refused the client id (set MQTT_UPSTREAM_CLIENT_ID)".to_owned()
        }
        E::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        E::Tls(e) => format!("TLS with the broker failed: {e} ({CHECK_TLS})"),
        E::Io(e) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
            format!("TLS with the broker failed: {e} ({CHECK_TLS})")
        }
        E::Io(e) => format!("connection failed or lost: {e}"),
        E::NetworkTimeout => "connecting timed out".to_owned(),
        other => format!("connection lost: {other}"),
    }
}

/// One line saying what is wrong with an MQTT 5 connection attempt.
fn describe_v5(e: &rumqttc::v5::ConnectionError, tls: bool) -> String {
    use rumqttc::v5::ConnectionError as E;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    match e {
        E::ConnectionRefused(Code::BadUserNamePassword) => {
            format!("the broker refused the user name or password ({CHECK_CREDENTIALS})")
        }
        E::ConnectionRefused(Code::NotAuthorized) => format!(
            "the broker refused the connection as not authorized: wrong user name or password, or not allowed by \
             its ACL ({CHECK_CREDENTIALS})"
        ),
        E::ConnectionRefused(Code::ClientIdentifierNotValid | Code::BadClientId) => {
            "the broker refused the client id (set MQTT_UPSTREAM_CLIENT_ID)".to_owned()
        }
        E::ConnectionRefused(Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion) => {
            "the broker does not speak MQTT 5 (set MQTT_UPSTREAM_PROTOCOL=3.1.1)".to_owned()
        }
        E::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        E::Tls(e) => format!("TLS with the broker failed: {e} ({CHECK_TLS})"),
        E::Io(e) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
            format!("TLS with the broker failed: {e} ({CHECK_TLS})")
        }
        E::Io(e) => format!("connection failed or lost: {e}"),
        E::Timeout(_) => "connecting timed out".to_owned(),
        other => format!("connection lost: {other}"),
    }
}
