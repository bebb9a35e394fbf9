//! The benchmark's MQTT side: one subscriber that counts every telemetry message, measures latency from stamped
//! values, groups poll readings by cycle, and sends commands and matches their responses.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The register name the gateway gives the simulator's stamp object (unknown OBIS 0-0:96.240.0.255).
pub const STAMP_REGISTER: &str = "OBIS_0_0_96_240_0_255";

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect or subscribe.
    #[error("MQTT: {0}")]
    Mqtt(String),
}

#[derive(Debug, Deserialize)]
struct Telemetry<'a> {
    #[serde(rename = "meterId", borrow)]
    meter_id: &'a str,
    #[serde(borrow)]
    register: &'a str,
    ts: u64,
    value: Value,
}

/// What the subscriber has seen since the last [`Bus::reset`].
#[derive(Debug, Default)]
pub struct Tally {
    /// Telemetry messages.
    pub telemetry: u64,
    /// Readings seen twice (same meter, register and time; or the same stamp).
    pub duplicates: u64,
    seen: HashSet<(u64, u64, u64)>,
    /// End-to-end latencies of stamped values, µs.
    pub latencies_us: Vec<u64>,
    /// With a cycle length set: per cycle start (ms since the epoch), readings and the last arrival (ms).
    pub cycles: HashMap<u64, (u64, u64)>,
    cycle_ms: Option<u64>,
    dedup: bool,
    /// The latest `gateway/stats` payload.
    pub stats: Option<Value>,
    /// Meters whose latest status is online.
    pub online: HashSet<String>,
    /// Meters that were online at some point.
    pub ever_online: HashSet<String>,
    /// Time of the last telemetry message.
    pub last_message: Option<Instant>,
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Tally {
    fn on_telemetry(&mut self, payload: &[u8]) {
        let Ok(t) = serde_json::from_slice::<Telemetry>(payload) else { return };
        let now = now_us();
        self.telemetry += 1;
        self.last_message = Some(Instant::now());
        if t.register == STAMP_REGISTER {
            if let Some(stamp) = t.value.as_f64() {
                let stamp = stamp as u64;
                self.latencies_us.push(now.saturating_sub(stamp));
                if !self.seen.insert((hash(t.meter_id), 0, stamp)) {
                    self.duplicates += 1;
                }
            }
        } else if self.dedup && !self.seen.insert((hash(t.meter_id), hash(t.register), t.ts)) {
            self.duplicates += 1;
        }
        if let Some(ms) = self.cycle_ms {
            let start = t.ts - t.ts % ms.max(1);
            let e = self.cycles.entry(start).or_default();
            e.0 += 1;
            e.1 = e.1.max(now / 1000);
        }
    }
}

/// The subscriber and command client.
#[derive(Debug, Clone)]
pub struct Bus {
    client: AsyncClient,
    /// What it has seen.
    pub tally: Arc<Mutex<Tally>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
}

/// Where and how the bus connects.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The broker.
    pub broker: SocketAddr,
    /// User and password, if the broker wants them.
    pub user: Option<(String, String)>,
    /// QoS of the telemetry subscription.
    pub telemetry_qos: QoS,
    /// Keep the session at the broker (clean session off): messages published while the bus is disconnected (a
    /// broker restart) are kept for it.
    pub persistent: bool,
    /// Client id.
    pub client_id: String,
}

impl Bus {
    /// Connects to the gateway's embedded broker, subscribes to telemetry (QoS 0), status, stats and command
    /// responses.
    pub async fn connect(mqtt: SocketAddr, user: (&str, &str)) -> Result<Bus, BusError> {
        Self::connect_with(BusOptions {
            broker: mqtt,
            user: Some((user.0.to_owned(), user.1.to_owned())),
            // QoS 0 for telemetry: the subscriber measures the gateway, not its own acknowledgements.
            telemetry_qos: QoS::AtMostOnce,
            persistent: false,
            client_id: format!("ivy-bench-{}", std::process::id()),
        })
        .await
    }

    /// Connects as `options` says, subscribes to telemetry, status, stats (both gateway topic forms) and command
    /// responses, and keeps reconnecting after a connection loss.
    pub async fn connect_with(options: BusOptions) -> Result<Bus, BusError> {
        let mut o = MqttOptions::new(options.client_id.clone(), options.broker.ip().to_string(), options.broker.port());
        if let Some((user, password)) = &options.user {
            o.set_credentials(user, password);
        }
        o.set_clean_session(!options.persistent);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let filters = [
            ("ivy/v1/meters/+/telemetry", options.telemetry_qos),
            ("ivy/v1/meters/+/status", QoS::AtLeastOnce),
            ("ivy/v1/meters/+/command/response", QoS::AtLeastOnce),
            ("ivy/v1/gateway/stats", QoS::AtMostOnce),
            ("ivy/v1/gateways/+/stats", QoS::AtMostOnce),
        ];
        let (client, mut ev) = AsyncClient::new(o, 10_000);
        ev.network_options.set_tcp_nodelay(true);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (t, w) = (tally.clone(), waiting.clone());
        // The subscriber gets a thread of its own, so the simulated fleet sharing this process cannot delay it and
        // inflate the measured latency.
        let thread = std::thread::Builder::new().name("ivy-bench-subscriber".into());
        let spawned = thread.spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let mut ready = Some(ready_tx);
                let mut subacks = 0;
                loop {
                    match ev.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let topic = p.topic.as_str();
                            if topic.ends_with("/telemetry") {
                                if let Ok(mut t) = t.lock() {
                                    t.on_telemetry(&p.payload);
                                }
                            } else if topic.ends_with("/command/response") {
                                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                                let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                                if let Some(tx) = w.lock().ok().and_then(|mut w| w.remove(&id)) {
                                    let _ = tx.send(v);
                                }
                            } else if topic.ends_with("/status") && topic.contains("/meters/") {
                                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                                if let (Some(id), Ok(mut t)) = (v.get("meterId").and_then(Value::as_str), t.lock()) {
                                    if v.get("online") == Some(&Value::Bool(true)) {
                                        t.online.insert(id.to_owned());
                                        t.ever_online.insert(id.to_owned());
                                    } else {
                                        t.online.remove(id);
                                    }
                                }
                            } else if topic.ends_with("/stats")
                                && (topic.contains("/gateway/") || topic.contains("/gateways/"))
                            {
                                let v = serde_json::from_slice::<Value>(&p.payload).ok();
                                if let Ok(mut t) = t.lock() {
                                    t.stats = v;
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacks += 1;
                            if subacks == filters.len()
                                && let Some(r) = ready.take()
                            {
                                let _ = r.send(Ok(()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(e.to_string()));
                                return;
                            }
                            // Connection trouble mid-run shows up as missing messages; retry.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        });
        if let Err(e) = spawned {
            return Err(BusError::Mqtt(format!("subscriber thread: {e}")));
        }
        for (filter, qos) in filters {
            client.subscribe(filter, qos).await.map_err(|e| BusError::Mqtt(e.to_string()))?;
        }
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Bus { client, tally, waiting }),
            Ok(Ok(Err(e))) => Err(BusError::Mqtt(e)),
            _ => Err(BusError::Mqtt("no SUBACK within 10 s".into())),
        }
    }

    /// Forgets everything counted so far; `cycle_ms` groups readings by cycle, `dedup` checks (meter, register,
    /// time) for duplicates.
    pub fn reset(&self, cycle_ms: Option<u64>, dedup: bool) {
        if let Ok(mut t) = self.tally.lock() {
            let online = std::mem::take(&mut t.online);
            let ever_online = std::mem::take(&mut t.ever_online);
            // Gateway stats are cumulative: keep the latest so counters can be compared across a reset.
            let stats = t.stats.take();
            *t = Tally { cycle_ms, dedup, online, ever_online, stats, ..Tally::default() };
        }
    }

    /// Telemetry messages so far.
    pub fn telemetry(&self) -> u64 {
        self.tally.lock().map(|t| t.telemetry).unwrap_or(0)
    }

    /// Meters currently online according to their retained status.
    pub fn online(&self) -> usize {
        self.tally.lock().map(|t| t.online.len()).unwrap_or(0)
    }

    /// A number from the latest gateway stats, by JSON pointer (e.g. `/mqtt/dropped`).
    pub fn stat(&self, pointer: &str) -> Option<u64> {
        self.tally.lock().ok()?.stats.as_ref()?.pointer(pointer)?.as_u64()
    }

    /// Waits until no telemetry has arrived for `quiet`, at most `limit`.
    pub async fn drain(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.telemetry();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.telemetry();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Sends a command and waits for its response; returns the response and the round trip.
    pub async fn command(
        &self,
        meter: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> (Option<Value>, Duration) {
        let id = format!("b{}", rand::random::<u64>());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        let started = Instant::now();
        let body = json!({"id": id, "method": method, "params": params}).to_string();
        if self
            .client
            .publish(format!("ivy/v1/meters/{meter}/command/request"), QoS::AtLeastOnce, false, body)
            .await
            .is_err()
        {
            return (None, started.elapsed());
        }
        let response = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
        if response.is_none()
            && let Ok(mut w) = self.waiting.lock()
        {
            w.remove(&id);
        }
        (response, started.elapsed())
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(51));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_tally_counts_stamps_duplicates_and_cycles() {
        let mut t = Tally { cycle_ms: Some(5000), dedup: true, ..Tally::default() };
        let stamp = now_us() - 2000;
        let stamped = json!({"meterId": "m1", "register": STAMP_REGISTER, "ts": 10_001, "value": stamp}).to_string();
        t.on_telemetry(stamped.as_bytes());
        t.on_telemetry(stamped.as_bytes());
        let v = json!({"meterId": "m1", "register": "VOLTAGE_A", "ts": 10_002, "value": 230.0}).to_string();
        t.on_telemetry(v.as_bytes());
        t.on_telemetry(v.as_bytes());
        t.on_telemetry(b"not json");
        assert_eq!(t.telemetry, 4);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.latencies_us.len(), 2);
        assert!(t.latencies_us.iter().all(|l| *l >= 2000));
        assert_eq!(t.cycles.get(&10_000).map(|c| c.0), Some(4));
    }
}
