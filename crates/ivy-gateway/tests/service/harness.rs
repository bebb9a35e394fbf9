//! Starts the real gateway in-process on ephemeral 127.0.0.1 ports, and talks to it with a real MQTT client.

use ivy_gateway::config::Config;
use ivy_gateway::gateway::Gateway;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

pub const ADMIN: (&str, &str) = ("adm", "admpass");
pub const OPERATOR: (&str, &str) = ("ops", "opspass");
pub const VIEWER: (&str, &str) = ("view", "viewpass");

pub struct TestGateway {
    pub gw: Gateway,
    pub _dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn meters(&self) -> SocketAddr {
        self.gw.addrs().meters.expect("the plaintext meter port listens")
    }
    pub fn mqtt(&self) -> SocketAddr {
        self.gw.addrs().mqtt.expect("the embedded broker is on")
    }
}

/// A configuration for tests: ephemeral ports on 127.0.0.1, fast timers, three users.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    c.gateway.data_dir = dir.to_path_buf();
    c.gateway.stats_interval_secs = 1;
    c.gateway.shutdown_timeout_secs = 5;
    c.meters.host = lo;
    c.meters.port = 0;
    c.meters.identify_after_secs = 1;
    c.meters.detection_timeout_secs = 5;
    c.mqtt.host = lo;
    c.mqtt.port = 0;
    c.mqtt.ws_port = 0;
    c.mqtt.users = Some(format!(
        "{}:{}:admin,{}:{}:operator,{}:{}:viewer",
        ADMIN.0, ADMIN.1, OPERATOR.0, OPERATOR.1, VIEWER.0, VIEWER.1
    ));
    c.http.host = lo;
    c.http.port = 0;
    c.polling.enabled = false;
    c.polling.interval_ms = 1000;
    c.polling.first_poll_delay_ms = 100;
    c.polling.jitter_percent = 0;
    c.dlt645.timeout_ms = 500;
    c.dlt645.retries = 1;
    c.dlms.response_timeout_ms = 1000;
    c.dlms.association_timeout_ms = 1000;
    c.commands.timeout_ms = 4000;
    c
}

pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    start_in(tempfile::tempdir().unwrap(), tweak).await
}

/// Starts a gateway on an existing data directory (a restart).
pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut c = test_config(dir.path());
    tweak(&mut c);
    let gw = Gateway::start(c).await.expect("gateway starts");
    TestGateway { gw, _dir: dir }
}

/// A message received by a test client.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
    pub retain: bool,
}

pub struct Client {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub suback: mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
}

fn options(addr: SocketAddr, creds: (&str, &str), id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(creds.0, creds.1);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Connects and returns the CONNACK code (the event loop is then dropped).
pub async fn connack(addr: SocketAddr, creds: (&str, &str)) -> Result<ConnectReturnCode, String> {
    let (_c, mut ev) = AsyncClient::new(options(addr, creds, &format!("probe-{}", rand_id())), 10);
    match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => Ok(a.code),
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => Ok(code),
        Ok(other) => Err(format!("{other:?}")),
        Err(_) => Err("no CONNACK".into()),
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1000
}

/// Connects a client, subscribes to `filters` (waits for the SUBACKs) and forwards every publish.
pub async fn client(addr: SocketAddr, creds: (&str, &str), filters: &[&str]) -> Client {
    let (client, mut ev): (AsyncClient, EventLoop) =
        AsyncClient::new(options(addr, creds, &format!("test-{}", rand_id())), 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (stx, suback) = mpsc::unbounded_channel();
    let (ctx, mut connected) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    let _ = ctx.send(a.code);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send(Msg { topic: p.topic.clone(), json, retain: p.retain }).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let _ = stx.send(s.return_codes);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let code =
        tokio::time::timeout(Duration::from_secs(10), connected.recv()).await.expect("CONNACK").expect("connected");
    assert_eq!(code, ConnectReturnCode::Success);
    let mut c = Client { client, rx, suback };
    for f in filters {
        c.client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(5), c.suback.recv()).await.expect("SUBACK").unwrap();
        assert!(
            matches!(codes.first(), Some(rumqttc::SubscribeReasonCode::Success(_))),
            "subscription to {f} refused: {codes:?}"
        );
    }
    c
}

impl Client {
    /// Waits for the first message matching `pred`.
    pub async fn wait(&mut self, what: &str, secs: u64, mut pred: impl FnMut(&Msg) -> bool) -> Msg {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("client closed while waiting for {what}"),
                Err(_) => panic!("timed out after {secs} s waiting for {what}"),
            }
        }
    }

    /// Collects every message up to and including the first one matching `pred`.
    pub async fn until(&mut self, what: &str, secs: u64, mut pred: impl FnMut(&Msg) -> bool) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    let done = pred(&m);
                    out.push(m);
                    if done {
                        return out;
                    }
                }
                Ok(None) => panic!("client closed while waiting for {what}"),
                Err(_) => panic!("timed out after {secs} s waiting for {what}; got {out:?}"),
            }
        }
    }

    /// Collects every message for `ms` milliseconds.
    pub async fn collect(&mut self, ms: u64) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    /// Publishes a command and waits for its response.
    pub async fn command(&mut self, meter: &str, request: Value) -> Value {
        let id = request.get("id").or_else(|| request.get("requestId")).cloned().unwrap_or(Value::Null);
        self.client
            .publish(format!("ivy/v1/meters/{meter}/command/request"), QoS::AtLeastOnce, false, request.to_string())
            .await
            .unwrap();
        let topic = format!("ivy/v1/meters/{meter}/command/response");
        self.wait(&format!("response to {id}"), 20, |m| m.topic == topic && m.json["id"] == id).await.json
    }
}

/// Waits until `cond` holds (polling), or panics.
pub async fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The retained message of `topic`, as a newly subscribing client receives it.
pub async fn retained(addr: SocketAddr, topic: &str) -> Msg {
    let mut c = client(addr, ADMIN, &[topic]).await;
    c.wait(&format!("retained {topic}"), 5, |m| m.topic == topic && m.retain).await
}
