//! A fleet of simulated meters dialing into one gateway: DL/T 645 connections (one or several addresses each) and
//! EM114070-style DLMS meters, connected at a bounded ramp rate from several source addresses, with faults injected
//! on a chosen fraction of them, each meter reconnecting when its connection ends. Counters are live (for a
//! progress display) and summed into a [`FleetSummary`].

use crate::dlms::{DlmsConfig, DlmsMeter, DlmsSim, PushForm};
use crate::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim, Identify};
use crate::{Faults, ReplyLatency, SimStats};
use ivy_protocol::dlt645::{Address, RelayAuth};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How DL/T 645 meters make themselves known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyMode {
    /// Every meter sends its address right after connecting.
    TalkFirst,
    /// Every meter waits for the gateway's read-address probe.
    Silent,
    /// Every other connection talks first.
    Mixed,
}

/// The fraction of meters (0.0 ..= 1.0) that carry each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultPlan {
    /// Connected but never answer.
    pub silent: f64,
    /// Every reply with a wrong checksum (DL/T 645).
    pub bad_checksum: f64,
    /// Send garbage bytes on connect.
    pub garbage: f64,
    /// Send an oversize frame on connect (DL/T 645 length 255 / a wrapper packet above any max payload).
    pub oversize: f64,
    /// Read the gateway's requests only after a pause.
    pub slow_reader: f64,
    /// The pause of slow readers.
    pub slow_read_delay: Duration,
    /// Close the connection abruptly (RST) instead of FIN when reconnecting.
    pub reset: f64,
    /// Every meter reconnects this often (each at its own random phase).
    pub reconnect_every: Option<Duration>,
    /// All meters drop and reconnect at the same moment this often (a cell tower coming back).
    pub storm_every: Option<Duration>,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The gateway's meter port.
    pub gateway: SocketAddr,
    /// DL/T 645 meters.
    pub dlt645_meters: usize,
    /// DL/T 645 meters per connection (a DTU with an RS-485 bus).
    pub addresses_per_connection: usize,
    /// Address of the first DL/T 645 meter (the others count up).
    pub first_address: u64,
    /// DLMS meters.
    pub dlms_meters: usize,
    /// Number of the first DLMS meter; its id is the number in 12 digits after `dlms_id_prefix`.
    pub first_dlms_number: u64,
    /// Prefix of DLMS meter ids (the id is 12 characters in all).
    pub dlms_id_prefix: String,
    /// DL/T 645 identification.
    pub identify: IdentifyMode,
    /// DLMS meters send the registration heartbeat (else the gateway identifies them by their logical device name).
    pub heartbeat: bool,
    /// Repeat the heartbeat this often.
    pub heartbeat_interval: Option<Duration>,
    /// Reply latency of every meter.
    pub latency: ReplyLatency,
    /// DLMS pushes.
    pub push: Option<(Duration, PushForm)>,
    /// Stamp DataNotifications with their send time.
    pub stamp: bool,
    /// Pushes carry the meter clock as their capture time.
    pub push_clock: Option<crate::dlms::PushClock>,
    /// Values change over time (else fixed).
    pub dynamic: bool,
    /// Relay credentials the DL/T 645 meters check (`None` accepts any).
    pub relay_auth: Option<RelayAuth>,
    /// Local addresses to connect from, round robin (empty: the system's choice).
    pub sources: Vec<IpAddr>,
    /// New connections per second (0: no limit).
    pub ramp_per_sec: u32,
    /// Faults.
    pub faults: FaultPlan,
    /// Simulate only meters `i` with `i % shard.1 == shard.0` (for several processes).
    pub shard: (usize, usize),
    /// DLMS meters dial the gateway's TLS meter port with this client configuration, checking its certificate for
    /// this server name (DL/T 645 meters stay on plain TCP).
    pub dlms_tls: Option<(crate::TlsClientConfig, String)>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            gateway: SocketAddr::from(([127, 0, 0, 1], 8899)),
            dlt645_meters: 10,
            addresses_per_connection: 1,
            first_address: 1,
            dlms_meters: 0,
            first_dlms_number: 1,
            dlms_id_prefix: "IVY".into(),
            identify: IdentifyMode::TalkFirst,
            heartbeat: true,
            heartbeat_interval: None,
            latency: ReplyLatency::None,
            push: None,
            stamp: false,
            push_clock: None,
            dynamic: true,
            relay_auth: None,
            sources: Vec::new(),
            ramp_per_sec: 1000,
            faults: FaultPlan::default(),
            shard: (0, 1),
            dlms_tls: None,
        }
    }
}

/// Live counters of the whole fleet.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Connections to simulate (after sharding).
    pub planned: AtomicU64,
    /// Currently connected.
    pub connected: AtomicU64,
    /// Connections made, reconnections included.
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_errors: AtomicU64,
    /// Connections the gateway ended.
    pub dropped_by_gateway: AtomicU64,
    /// Reconnections the fleet made on purpose (reconnect interval, storms).
    pub reconnects: AtomicU64,
    /// Abrupt resets sent.
    pub resets: AtomicU64,
    /// Meters with each fault: silent, bad checksum, garbage, oversize, slow reader.
    pub silent_meters: AtomicU64,
    /// See `silent_meters`.
    pub bad_checksum_meters: AtomicU64,
    /// See `silent_meters`.
    pub garbage_meters: AtomicU64,
    /// See `silent_meters`.
    pub oversize_meters: AtomicU64,
    /// See `silent_meters`.
    pub slow_reader_meters: AtomicU64,
}

/// The end-of-run numbers (one JSON object).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetSummary {
    /// DL/T 645 meters simulated.
    pub dlt645_meters: u64,
    /// DLMS meters simulated.
    pub dlms_meters: u64,
    /// Connections simulated.
    pub connections: u64,
    /// Connected at the end.
    pub connected: u64,
    /// Connections made, reconnections included.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    /// Connections the gateway ended.
    pub dropped_by_gateway: u64,
    /// Deliberate reconnections.
    pub reconnects: u64,
    /// Abrupt resets.
    pub resets: u64,
    /// Requests received from the gateway.
    pub requests: u64,
    /// Replies sent.
    pub replies: u64,
    /// Requests that arrived while one was unanswered (the gateway interleaved).
    pub overlaps: u64,
    /// DLMS pushes sent.
    pub pushes: u64,
    /// Values in those pushes.
    pub pushed_values: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// DLMS associations accepted.
    pub associations: u64,
    /// Relay operations carried out.
    pub relay_operations: u64,
    /// Relay commands refused for bad credentials.
    pub auth_failures: u64,
    /// Clock settings received.
    pub time_syncs: u64,
    /// Fault events injected (corrupted replies, garbage and oversize frames sent).
    pub fault_events: u64,
    /// Meters per fault.
    pub silent_meters: u64,
    /// See `silent_meters`.
    pub bad_checksum_meters: u64,
    /// See `silent_meters`.
    pub garbage_meters: u64,
    /// See `silent_meters`.
    pub oversize_meters: u64,
    /// See `silent_meters`.
    pub slow_reader_meters: u64,
    /// Seconds the fleet ran.
    pub duration_secs: f64,
}

impl FleetSummary {
    /// Adds another shard's numbers.
    pub fn add(&mut self, o: &FleetSummary) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            dlt645_meters,
            dlms_meters,
            connections,
            connected,
            connects,
            connect_errors,
            dropped_by_gateway,
            reconnects,
            resets,
            requests,
            replies,
            overlaps,
            pushes,
            pushed_values,
            heartbeats,
            associations,
            relay_operations,
            auth_failures,
            time_syncs,
            fault_events,
            silent_meters,
            bad_checksum_meters,
            garbage_meters,
            oversize_meters,
            slow_reader_meters
        );
        self.duration_secs = self.duration_secs.max(o.duration_secs);
    }
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Live counters.
    pub counters: Arc<FleetCounters>,
    stats: Vec<Arc<SimStats>>,
    values_per_push: u64,
    dlt645_meters: u64,
    dlms_meters: u64,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    started: Instant,
    /// The DL/T 645 meters, for tests and commands (relay state, values).
    pub dlt645: Vec<Arc<Dlt645Meter>>,
    /// The DLMS meters.
    pub dlms: Vec<Arc<DlmsMeter>>,
}

/// The DL/T 645 address of meter number `n` (12 decimal digits).
pub fn dlt645_address(n: u64) -> Option<Address> {
    format!("{:012}", n % 1_000_000_000_000).parse().ok()
}

/// The id of DLMS meter number `n`: `prefix` followed by `n`, 12 characters in all.
pub fn dlms_id(prefix: &str, n: u64) -> String {
    let width = 12usize.saturating_sub(prefix.len()).max(1);
    format!("{prefix}{n:0width$}")
}

/// Deterministic per-meter choice with probability `fraction`.
fn chosen(index: u64, salt: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    ((x >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// A DL/T 645 frame longer than the standard allows (L = 255), to test the gateway's resynchronisation.
pub fn oversize_dlt645_frame() -> Vec<u8> {
    let mut f = vec![0x68, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x68, 0x91, 0xFF];
    f.extend(std::iter::repeat_n(0x33, 255));
    f.extend([0x00, 0x16]);
    f
}

/// A wrapper packet announcing a 64 KiB payload (above any configured maximum), followed by a little of it.
pub fn oversize_wrapper_packet() -> Vec<u8> {
    let mut f = vec![0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0xFF, 0xFF];
    f.extend(std::iter::repeat_n(0xAA, 1024));
    f
}

enum Sim {
    Dlt(Dlt645Sim),
    Dlms(DlmsSim),
}

impl Sim {
    fn is_finished(&self) -> bool {
        match self {
            Sim::Dlt(s) => s.is_finished(),
            Sim::Dlms(s) => s.is_finished(),
        }
    }
    async fn end(self, reset: bool) {
        match self {
            Sim::Dlt(s) => {
                if reset {
                    s.control(crate::dlt645::Control::Reset).await;
                }
                s.close().await
            }
            Sim::Dlms(s) => {
                if reset {
                    s.control(crate::dlms::Control::Reset).await;
                }
                s.close().await
            }
        }
    }
}

enum Plan {
    Dlt(Dlt645Config),
    Dlms(DlmsConfig),
}

impl Fleet {
    /// Starts every meter of `cfg` (connections ramp up in the background).
    pub fn start(cfg: FleetConfig) -> Fleet {
        let counters = Arc::new(FleetCounters::default());
        let (stop, stop_rx) = watch::channel(false);
        let per_conn = cfg.addresses_per_connection.max(1);
        let dlt_connections = cfg.dlt645_meters.div_ceil(per_conn);
        let shard_count = cfg.shard.1.max(1);
        let mine = |i: usize| i % shard_count == cfg.shard.0;
        let ramp = Arc::new(Ramp::new(cfg.ramp_per_sec));
        let storm = cfg.faults.storm_every.map(|every| {
            let (tx, rx) = watch::channel(0u64);
            (tx, rx, every)
        });
        let mut tasks = JoinSet::new();
        let mut all_stats = Vec::new();
        let mut dlt645 = Vec::new();
        let mut dlms = Vec::new();
        let mut values_per_push = 0;
        let (mut dlt_count, mut dlms_count) = (0u64, 0u64);
        let faults_for = |index: u64, dlt: bool| -> (Faults, bool) {
            let f = &cfg.faults;
            let silent = chosen(index, 1, f.silent);
            let bad = dlt && chosen(index, 2, f.bad_checksum);
            let garbage = chosen(index, 3, f.garbage);
            let oversize = chosen(index, 4, f.oversize);
            let slow = chosen(index, 5, f.slow_reader);
            for (on, c) in [
                (silent, &counters.silent_meters),
                (bad, &counters.bad_checksum_meters),
                (garbage, &counters.garbage_meters),
                (oversize, &counters.oversize_meters),
                (slow, &counters.slow_reader_meters),
            ] {
                if on {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut on_connect = Vec::new();
            if garbage {
                on_connect.extend((0..64u64).map(|i| (index.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8));
            }
            if oversize {
                on_connect.extend(if dlt { oversize_dlt645_frame() } else { oversize_wrapper_packet() });
            }
            let faults = Faults {
                corrupt_checksum: Arc::new(AtomicBool::new(bad)),
                garbage_on_connect: (!on_connect.is_empty()).then_some(on_connect),
                slow_read: slow.then_some(f.slow_read_delay),
            };
            (faults, silent)
        };
        let mut plans = Vec::new();
        let mut slot = 0usize;
        for c in 0..dlt_connections {
            let index = slot;
            slot += 1;
            if !mine(index) {
                continue;
            }
            let first = c * per_conn;
            let last = (first + per_conn).min(cfg.dlt645_meters);
            let meters: Vec<Arc<Dlt645Meter>> = (first..last)
                .filter_map(|n| dlt645_address(cfg.first_address + n as u64))
                .map(|a| {
                    let mut m = Dlt645Meter::new(a);
                    m.dynamic = cfg.dynamic;
                    m.auth = cfg.relay_auth.clone();
                    Arc::new(m)
                })
                .collect();
            dlt_count += meters.len() as u64;
            dlt645.extend(meters.iter().cloned());
            let identify = match cfg.identify {
                IdentifyMode::TalkFirst => Identify::TalkFirst,
                IdentifyMode::Silent => Identify::Silent,
                IdentifyMode::Mixed if c % 2 == 0 => Identify::TalkFirst,
                IdentifyMode::Mixed => Identify::Silent,
            };
            let (faults, mute) = faults_for(index as u64, true);
            let plan = Plan::Dlt(Dlt645Config { meters, identify, latency: cfg.latency, mute, faults });
            plans.push((index, plan));
        }
        for n in 0..cfg.dlms_meters {
            let index = slot;
            slot += 1;
            if !mine(index) {
                continue;
            }
            let mut meter = DlmsMeter::em114070(&dlms_id(&cfg.dlms_id_prefix, cfg.first_dlms_number + n as u64));
            meter.dynamic = cfg.dynamic;
            meter.push_clock = cfg.push_clock;
            meter.logical_device_name = format!("IVY{}", meter.id);
            let meter = Arc::new(meter);
            values_per_push = meter.push_values(PushForm::DataNotification) as u64 + u64::from(cfg.stamp);
            if let Some((_, form)) = cfg.push
                && !form.is_data()
            {
                values_per_push = 1;
            }
            dlms.push(meter.clone());
            dlms_count += 1;
            let (faults, mute) = faults_for(index as u64, false);
            let plan = Plan::Dlms(DlmsConfig {
                meter,
                heartbeat: cfg.heartbeat,
                heartbeat_interval: cfg.heartbeat_interval,
                push: cfg.push,
                latency: cfg.latency,
                mute,
                stamp: cfg.stamp,
                faults,
            });
            plans.push((index, plan));
        }
        for (index, plan) in plans {
            let stats = Arc::new(SimStats::default());
            all_stats.push(stats.clone());
            let storm_rx = storm.as_ref().map(|s| s.1.clone());
            let task =
                run_meter(index, plan, cfg.clone(), stats, counters.clone(), ramp.clone(), stop_rx.clone(), storm_rx);
            tasks.spawn(task);
        }
        counters.planned.store(all_stats.len() as u64, Ordering::Relaxed);
        if let Some((tx, _, every)) = storm {
            let mut stop_rx = stop_rx.clone();
            tasks.spawn(async move {
                let mut n = 0;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {
                            n += 1;
                            let _ = tx.send(n);
                        }
                        _ = stop_rx.changed() => return,
                    }
                }
            });
        }
        Fleet {
            counters,
            stats: all_stats,
            values_per_push,
            dlt645_meters: dlt_count,
            dlms_meters: dlms_count,
            stop,
            tasks,
            started: Instant::now(),
            dlt645,
            dlms,
        }
    }

    /// The numbers so far.
    pub fn summary(&self) -> FleetSummary {
        let sum = |f: fn(&SimStats) -> &AtomicU64| self.stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>();
        let c = &self.counters;
        let pushes = sum(|s| &s.pushes);
        FleetSummary {
            dlt645_meters: self.dlt645_meters,
            dlms_meters: self.dlms_meters,
            connections: c.planned.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            connect_errors: c.connect_errors.load(Ordering::Relaxed),
            dropped_by_gateway: c.dropped_by_gateway.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            requests: sum(|s| &s.requests),
            replies: sum(|s| &s.replies),
            overlaps: sum(|s| &s.overlaps),
            pushes,
            pushed_values: pushes * self.values_per_push,
            heartbeats: sum(|s| &s.heartbeats),
            associations: sum(|s| &s.associations),
            relay_operations: sum(|s| &s.relay_operations),
            auth_failures: sum(|s| &s.auth_failures),
            time_syncs: sum(|s| &s.time_syncs),
            fault_events: sum(|s| &s.faults),
            silent_meters: c.silent_meters.load(Ordering::Relaxed),
            bad_checksum_meters: c.bad_checksum_meters.load(Ordering::Relaxed),
            garbage_meters: c.garbage_meters.load(Ordering::Relaxed),
            oversize_meters: c.oversize_meters.load(Ordering::Relaxed),
            slow_reader_meters: c.slow_reader_meters.load(Ordering::Relaxed),
            duration_secs: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits until `n` connections are up, or `timeout`; returns whether they are.
    pub async fn wait_connected(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.counters.connected.load(Ordering::Relaxed) < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Closes every connection and returns the final numbers.
    pub async fn stop(mut self) -> FleetSummary {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.summary()
    }
}

/// Spaces connection attempts at `per_sec`.
#[derive(Debug)]
struct Ramp {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<tokio::time::Instant>,
    // Bounds the attempts in progress so a ramp of thousands does not open thousands of half-open sockets at once.
    in_flight: Semaphore,
}

impl Ramp {
    fn new(per_sec: u32) -> Self {
        Ramp {
            interval: (per_sec > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(per_sec))),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            in_flight: Semaphore::new(256),
        }
    }

    async fn wait(&self) {
        let Some(interval) = self.interval else { return };
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One meter's life: connect (paced by the ramp), serve, and reconnect when the connection ends or a reconnect
/// is due, until the fleet stops.
#[allow(clippy::too_many_arguments)]
async fn run_meter(
    index: usize,
    plan: Plan,
    cfg: FleetConfig,
    stats: Arc<SimStats>,
    counters: Arc<FleetCounters>,
    ramp: Arc<Ramp>,
    mut stop: watch::Receiver<bool>,
    mut storm: Option<watch::Receiver<u64>>,
) {
    let source = (!cfg.sources.is_empty()).then(|| cfg.sources.get(index % cfg.sources.len()).copied()).flatten();
    let resets = chosen(index as u64, 6, cfg.faults.reset);
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        ramp.wait().await;
        let attempt = {
            let _permit = ramp.in_flight.acquire().await;
            match &plan {
                Plan::Dlt(c) => {
                    Dlt645Sim::connect_counted(cfg.gateway, source, c.clone(), stats.clone()).await.map(Sim::Dlt)
                }
                Plan::Dlms(c) => match &cfg.dlms_tls {
                    None => {
                        DlmsSim::connect_counted(cfg.gateway, source, c.clone(), stats.clone()).await.map(Sim::Dlms)
                    }
                    Some((tls, name)) => crate::connect_tls(cfg.gateway, source, tls.clone(), name)
                        .await
                        .map(|stream| Sim::Dlms(DlmsSim::attach(stream, c.clone(), stats.clone()))),
                },
            }
        };
        let sim = match attempt {
            Ok(s) => s,
            Err(_) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        counters.connects.fetch_add(1, Ordering::Relaxed);
        counters.connected.fetch_add(1, Ordering::Relaxed);
        // Each meter reconnects at its own phase of the interval.
        let reconnect_at = cfg.faults.reconnect_every.map(|every| {
            let phase = (index as u64 * 7919) % every.as_millis().max(1) as u64;
            tokio::time::Instant::now() + every + Duration::from_millis(phase)
        });
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
        let ended = loop {
            tokio::select! {
                _ = stop.changed() => break End::Stop,
                _ = tokio::time::sleep_until(reconnect_at.unwrap_or(far)), if reconnect_at.is_some() => break End::Reconnect,
                changed = async { match storm.as_mut() { Some(s) => s.changed().await, None => std::future::pending().await } } => {
                    if changed.is_err() {
                        storm = None;
                        continue;
                    }
                    break End::Reconnect;
                }
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if sim.is_finished() {
                        break End::Dropped;
                    }
                }
            }
        };
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        match ended {
            End::Stop => {
                sim.end(false).await;
                return;
            }
            End::Reconnect => {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                if resets {
                    counters.resets.fetch_add(1, Ordering::Relaxed);
                }
                sim.end(resets).await;
            }
            End::Dropped => {
                counters.dropped_by_gateway.fetch_add(1, Ordering::Relaxed);
                sim.end(false).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

enum End {
    Stop,
    Reconnect,
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_have_twelve_characters() {
        assert_eq!(dlms_id("IVY", 7), "IVY000000007");
        assert_eq!(dlms_id("", 42), "000000000042");
        assert_eq!(dlt645_address(1234).map(|a| a.to_string()).as_deref(), Some("000000001234"));
    }

    #[test]
    fn fault_choice_follows_the_fraction() {
        let n = (0..10_000).filter(|i| chosen(*i, 3, 0.1)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert_eq!((0..1000).filter(|i| chosen(*i, 3, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|i| chosen(*i, 3, 1.0)).count(), 1000);
    }

    #[test]
    fn summaries_add_up() {
        let mut a = FleetSummary { replies: 3, connections: 1, duration_secs: 2.0, ..Default::default() };
        a.add(&FleetSummary { replies: 4, connections: 2, duration_secs: 5.0, ..Default::default() });
        assert_eq!((a.replies, a.connections, a.duration_secs), (7, 3, 5.0));
    }
}
