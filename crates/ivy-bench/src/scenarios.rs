//! The scenarios. Each starts its own gateway process, drives it with an in-process [`Fleet`] and measures it
//! through the [`Bus`]; each returns one JSON object. The same code runs at full size (`ivy-bench`) and at smoke
//! size (the test suite, which checks counts and loss, never speed).

use crate::bus::{Bus, BusOptions, quantile};
use crate::process::{GatewayProcess, USER, Usage};
use ivy_sim::ReplyLatency;
use ivy_sim::dlms::PushForm;
use ivy_sim::fleet::{Fleet, FleetConfig, IdentifyMode, dlt645_address};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The gateway process.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// The MQTT side.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// Meters did not come online.
    #[error("{0}")]
    Setup(String),
}

/// Sizes of every scenario.
#[derive(Debug, Clone)]
pub struct Scale {
    /// DLMS meters pushing.
    pub push_meters: usize,
    /// Offered rates to try, readings/s, ascending.
    pub push_rates: Vec<u64>,
    /// Seconds per push step.
    pub push_step_secs: u64,
    /// Poll runs, one gateway each.
    pub poll_runs: Vec<PollRun>,
    /// Meters to hold.
    pub hold_meters: usize,
    /// Commands sent while holding.
    pub hold_commands: usize,
    /// Meters of the command scenario.
    pub command_meters: usize,
    /// Commands of the command scenario.
    pub commands: usize,
    /// Commands in flight at once.
    pub command_concurrency: usize,
    /// Idle start-ups to measure.
    pub idle_runs: usize,
    /// Seconds an idle gateway runs before its settled RSS is taken.
    pub idle_settle_secs: u64,
    /// Push rates of the store on/off comparison (readings/s), stepped up until one loses readings.
    pub store_push_rates: Vec<u64>,
    /// Meters of the synthetic history database (ten registers each, one reading a minute).
    pub store_db_meters: usize,
    /// Days of history in it.
    pub store_db_days: u64,
    /// Queries of each kind timed on it.
    pub store_queries: usize,
    /// Offered rates of the upstream scenario, readings/s, ascending.
    pub upstream_rates: Vec<u64>,
    /// Seconds the upstream broker is down in the outage step.
    pub upstream_outage_secs: u64,
    /// Highest push rate during the outage (the backlog must fit the outbox), readings/s.
    pub upstream_outage_rate_max: u64,
}

/// One poll run of the poll scenario.
#[derive(Debug, Clone, Copy)]
pub struct PollRun {
    /// DL/T 645 meters polled (9 registers each).
    pub meters: usize,
    /// Reply latency of the simulated meters, ms.
    pub rtt_ms: u64,
    /// Poll interval, ms.
    pub interval_ms: u64,
    /// Full cycles to observe. A CPU-bound run (latency 0) lasts a few hundred milliseconds and is disturbed by
    /// anything else on the machine: it needs enough cycles for a stable median.
    pub cycles: usize,
}

impl Scale {
    /// The sizes of the targets.
    pub fn full() -> Scale {
        Scale {
            push_meters: 1000,
            push_rates: vec![25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000],
            push_step_secs: 10,
            poll_runs: vec![
                PollRun { meters: 1000, rtt_ms: 0, interval_ms: 5000, cycles: 12 },
                PollRun { meters: 10_000, rtt_ms: 200, interval_ms: 20_000, cycles: 3 },
            ],
            hold_meters: 19_000,
            hold_commands: 1000,
            command_meters: 100,
            // 5000 so that the p99 is the 50th slowest, not one scheduler hiccup (the 10th of 1000).
            commands: 5000,
            command_concurrency: 10,
            idle_runs: 5,
            idle_settle_secs: 30,
            store_push_rates: vec![25_000, 50_000, 75_000, 100_000],
            // 116 meters × 10 registers × 43,200 minutes = 50.1 million readings.
            store_db_meters: 116,
            store_db_days: 30,
            store_queries: 200,
            upstream_rates: vec![10_000, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000],
            upstream_outage_secs: 60,
            upstream_outage_rate_max: 25_000,
        }
    }

    /// Small sizes that check correctness in the normal test run.
    pub fn smoke() -> Scale {
        Scale {
            push_meters: 10,
            push_rates: vec![500],
            push_step_secs: 2,
            poll_runs: vec![PollRun { meters: 20, rtt_ms: 0, interval_ms: 2000, cycles: 1 }],
            hold_meters: 50,
            hold_commands: 20,
            command_meters: 5,
            commands: 40,
            command_concurrency: 4,
            idle_runs: 1,
            idle_settle_secs: 1,
            store_push_rates: vec![500],
            store_db_meters: 2,
            store_db_days: 2,
            store_queries: 10,
            upstream_rates: vec![500],
            upstream_outage_secs: 3,
            upstream_outage_rate_max: 500,
        }
    }
}

/// Source addresses for `n` connections (at most 400 per address, as a fleet comes from many).
fn sources(n: usize) -> Vec<IpAddr> {
    let count = n.div_ceil(400).clamp(1, 250);
    (1..=count).map(|i| IpAddr::from([127, 0, 0, i as u8])).collect()
}

fn mb(bytes: Option<u64>) -> Value {
    bytes.map(|b| json!((b as f64 / 1_048_576.0 * 10.0).round() / 10.0)).unwrap_or(Value::Null)
}

fn ms(us: Option<u64>) -> Value {
    us.map(|u| json!((u as f64 / 10.0).round() / 100.0)).unwrap_or(Value::Null)
}

async fn wait_online(bus: &Bus, n: usize, limit: Duration) -> Result<(), ScenarioError> {
    let deadline = Instant::now() + limit;
    while bus.online() < n {
        if Instant::now() >= deadline {
            return Err(ScenarioError::Setup(format!("only {} of {n} meters online after {limit:?}", bus.online())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Idle gateway: start-up time, and RSS shortly after a subscriber logged in and once settled.
pub async fn idle(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let mut startups = Vec::new();
    for _ in 0..scale.idle_runs.max(1) {
        let gw = GatewayProcess::spawn(bin, &[])?;
        startups.push(gw.startup.as_micros() as u64);
        gw.stop();
    }
    startups.sort_unstable();
    let gw = GatewayProcess::spawn(bin, &[])?;
    let bus = Bus::connect(gw.mqtt, USER).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = gw.rss_bytes();
    // The allocator returns the password check's 19 MiB argon2 scratch to the system after a while.
    tokio::time::sleep(Duration::from_secs(scale.idle_settle_secs)).await;
    let settled = gw.rss_bytes();
    let parts = gw.rss_parts_bytes();
    drop(bus);
    gw.stop();
    Ok(json!({
        "scenario": "idle",
        "runs": startups.len(),
        "startup_ms": ms(quantile(&startups, 0.5)),
        "startup_ms_max": ms(startups.last().copied()),
        "rss_mb_after_login": mb(early),
        "rss_mb": mb(settled),
        "rss_anon_mb": mb(parts.map(|p| p.0)),
        "rss_file_mb": mb(parts.map(|p| p.1)),
        "settle_secs": scale.idle_settle_secs,
    }))
}

struct PushStep {
    result: Value,
    zero_loss: bool,
    /// No loss and p99 latency under 50 ms.
    sustained: bool,
}

/// DLMS meters pushing stamped DataNotifications at `rate` readings/s in all (ten values per push).
fn push_fleet(gw: &GatewayProcess, meters: usize, rate: u64, first: u64) -> Fleet {
    // Ten values per push: the EM114070's nine registers and the stamp.
    let values_per_push = 10u64;
    let interval_us = (meters as u64 * values_per_push * 1_000_000 / rate.max(1)).max(1000);
    Fleet::start(FleetConfig {
        gateway: gw.meters,
        dlt645_meters: 0,
        dlms_meters: meters,
        first_dlms_number: first,
        push: Some((Duration::from_micros(interval_us), PushForm::DataNotification)),
        stamp: true,
        sources: sources(meters),
        ramp_per_sec: 2000,
        ..FleetConfig::default()
    })
}

/// Readings the gateway knows it lost: broker drops (messages; the subscriber's session queue included), the MQTT
/// sink's hub drops (readings) and the upstream outbox's drops.
fn counted_drops(bus: &Bus) -> u64 {
    bus.stat("/mqtt/dropped").unwrap_or(0)
        + bus.stat("/mqtt/sessionDropped").unwrap_or(0)
        + bus.stat("/hub/sinks/mqtt/droppedReadings").unwrap_or(0)
        + bus.stat("/outbox/dropped").unwrap_or(0)
}

/// Telemetry received, duplicates among it, and the distinct readings (with `dedup`, duplicates are found by
/// meter, register and time; without, only repeated stamps are).
fn tally_counts(bus: &Bus) -> Result<(u64, u64, u64, Vec<u64>), ScenarioError> {
    let t = bus.tally.lock().map_err(|_| ScenarioError::Setup("tally poisoned".into()))?;
    Ok((t.telemetry, t.duplicates, t.telemetry.saturating_sub(t.duplicates), t.latencies_us.clone()))
}

async fn push_step(
    gw: &GatewayProcess,
    bus: &Bus,
    meters: usize,
    rate: u64,
    secs: u64,
    first: u64,
    dedup: bool,
) -> Result<PushStep, ScenarioError> {
    bus.reset(None, dedup);
    let dropped_before = counted_drops(bus);
    let fleet = push_fleet(gw, meters, rate, first);
    if !fleet.wait_connected(meters as u64, Duration::from_secs(60)).await {
        return Err(ScenarioError::Setup("push meters did not connect".into()));
    }
    let usage = Usage::start(gw);
    let window = Instant::now();
    let pushed_before = fleet.summary().pushed_values;
    let mut rss_max = 0;
    let run_until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < run_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_max = rss_max.max(gw.rss_bytes().unwrap_or(0));
    }
    let cpu = usage.cpu_percent(gw);
    let offered = (fleet.summary().pushed_values - pushed_before) as f64 / window.elapsed().as_secs_f64();
    let summary = fleet.stop().await;
    let stopped = Instant::now();
    bus.drain(Duration::from_millis(1500), Duration::from_secs(120)).await;
    // How long after the meters stopped the last reading arrived: a gateway that keeps up needs no time.
    let catch_up_ms = bus
        .tally
        .lock()
        .ok()
        .and_then(|t| t.last_message)
        .map(|last| last.saturating_duration_since(stopped).as_millis() as u64);
    // Let the next stats message carry the drop counters of this step.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let dropped = counted_drops(bus).saturating_sub(dropped_before);
    let (delivered, duplicates, distinct, mut lat) = tally_counts(bus)?;
    lat.sort_unstable();
    let expected = summary.pushed_values;
    // With deduplication (QoS 1 paths), a repeated reading is counted, not lost.
    let lost = expected.saturating_sub(if dedup { distinct } else { delivered });
    let p99 = quantile(&lat, 0.99).unwrap_or(u64::MAX);
    let zero_loss = lost == 0 && (dedup || duplicates == 0) && expected > 0;
    Ok(PushStep {
        zero_loss,
        sustained: zero_loss && p99 < 50_000,
        result: json!({
            "target_rate": rate,
            "offered_per_s": offered.round(),
            "expected": expected,
            "delivered": delivered,
            "lost": lost,
            "duplicates": duplicates,
            "dropped_counted": dropped,
            "latency_p50_ms": ms(quantile(&lat, 0.5)),
            "latency_p99_ms": ms(quantile(&lat, 0.99)),
            "catch_up_ms": catch_up_ms,
            "gateway_cpu_percent": cpu.round(),
            "gateway_rss_mb_max": mb(Some(rss_max)),
        }),
    })
}

/// DLMS meters pushing at rising rates: the highest rate with no loss, and 2x that rate.
pub async fn push(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let gw = GatewayProcess::spawn(bin, &[])?;
    let bus = Bus::connect(gw.mqtt, USER).await?;
    let mut steps = Vec::new();
    let mut best: Option<PushStep> = None;
    let mut highest_zero_loss: Option<Value> = None;
    for (i, rate) in scale.push_rates.iter().enumerate() {
        let step =
            push_step(&gw, &bus, scale.push_meters, *rate, scale.push_step_secs, 1 + i as u64 * 100_000, false).await?;
        eprintln!("push {rate}/s: {}", step.result);
        steps.push(step.result.clone());
        if !step.zero_loss {
            break;
        }
        highest_zero_loss = Some(step.result.clone());
        if step.sustained {
            best = Some(step);
        }
    }
    // Twice the highest rate that lost nothing (whatever its latency): a real overload.
    let overload_rate = highest_zero_loss
        .as_ref()
        .and_then(|v| v.get("target_rate").and_then(Value::as_u64))
        .or(scale.push_rates.first().copied())
        .unwrap_or(1000)
        * 2;
    let overload = push_step(&gw, &bus, scale.push_meters, overload_rate, scale.push_step_secs, 900_000, false).await?;
    eprintln!("push overload {overload_rate}/s: {}", overload.result);
    let alive = gw.rss_bytes().is_some();
    gw.stop();
    Ok(json!({
        "scenario": "push",
        "meters": scale.push_meters,
        "best_zero_loss": best.map(|b| b.result),
        "highest_zero_loss_any_latency": highest_zero_loss,
        "overload": overload.result,
        "gateway_survived_overload": alive,
        "steps": steps,
    }))
}

/// CPU use of process `pid` (percent of one core) over a window.
struct CpuWindow {
    pid: Option<u32>,
    wall: Instant,
    cpu: f64,
}

impl CpuWindow {
    fn start(pid: Option<u32>) -> Self {
        CpuWindow { pid, wall: Instant::now(), cpu: pid.and_then(crate::process::cpu_secs_of).unwrap_or(0.0) }
    }

    fn percent(&self) -> Option<f64> {
        let now = crate::process::cpu_secs_of(self.pid?)?;
        Some(((now - self.cpu) / self.wall.elapsed().as_secs_f64().max(1e-3) * 100.0).round())
    }
}

/// Longest catch-up after the meters stop for an upstream rate to count as sustained (ms).
const UPSTREAM_CATCH_UP_MS: u64 = 2000;

/// Publishing to an upstream broker (SPEC 4.1): a real Mosquitto started here, the gateway with its embedded broker
/// off and the durable outbox on, a QoS 1 subscriber with a persistent session at Mosquitto. DLMS meters push at
/// rising rates: the highest rate with 0 loss (duplicates counted, not lost) and where the CPU goes (gateway or
/// Mosquitto); a rate counts only when the readings still in flight when the meters stop arrive within
/// [`UPSTREAM_CATCH_UP_MS`]. Then Mosquitto is stopped for `upstream_outage_secs` while the meters push, the
/// backlog waits in the outbox, and after the restart the time to deliver it gives the drain rate.
pub async fn upstream(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    use crate::mosquitto::{Mosquitto, MosquittoOptions};
    let broker_setup = |e: crate::mosquitto::MosquittoError| ScenarioError::Setup(e.to_string());
    let mut broker = Mosquitto::start(&MosquittoOptions {
        // Let the subscriber's QoS 1 window be wider than Mosquitto's default of 20.
        extra: "max_inflight_messages 1000\n".into(),
        ..MosquittoOptions::default()
    })
    .map_err(broker_setup)?;
    let gw = GatewayProcess::spawn(
        bin,
        &[
            ("MQTT_UPSTREAM_URL", broker.url()),
            ("MQTT_EMBEDDED", "false".into()),
            ("GATEWAY_ID", "bench".into()),
            // Room for the outage's backlog: nothing may be dropped for lack of space.
            ("OUTBOX_MAX_MESSAGES", "5000000".into()),
            ("OUTBOX_MAX_MB", "4096".into()),
        ],
    )?;
    let bus = Bus::connect_with(BusOptions {
        broker: std::net::SocketAddr::from(([127, 0, 0, 1], broker.port())),
        user: None,
        telemetry_qos: rumqttc::QoS::AtLeastOnce,
        persistent: true,
        client_id: format!("ivy-bench-upstream-{}", std::process::id()),
    })
    .await?;
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    for (i, rate) in scale.upstream_rates.iter().enumerate() {
        let broker_cpu = CpuWindow::start(broker.pid());
        let step =
            push_step(&gw, &bus, scale.push_meters, *rate, scale.push_step_secs, 1 + i as u64 * 100_000, true).await?;
        let mut result = step.result;
        result["broker_cpu_percent"] = json!(broker_cpu.percent());
        // Sustained: nothing lost, and no backlog left to catch up when the meters stop (a rate the path cannot
        // keep up with only grows the outbox).
        let kept_up = result["catch_up_ms"].as_u64().is_some_and(|ms| ms <= UPSTREAM_CATCH_UP_MS);
        result["sustained"] = json!(step.zero_loss && kept_up);
        eprintln!("upstream {rate}/s: {result}");
        steps.push(result.clone());
        if !(step.zero_loss && kept_up) {
            break;
        }
        best = Some(result);
    }

    // The outage: meters push while the broker is down; then it comes back and the backlog drains.
    let best_rate = best.as_ref().and_then(|b| b.get("target_rate")).and_then(Value::as_u64);
    let rate =
        best_rate.unwrap_or(scale.upstream_rates.first().copied().unwrap_or(1000)).min(scale.upstream_outage_rate_max);
    bus.reset(None, true);
    let fleet = push_fleet(&gw, scale.push_meters, rate, 800_000);
    if !fleet.wait_connected(scale.push_meters as u64, Duration::from_secs(60)).await {
        return Err(ScenarioError::Setup("outage meters did not connect".into()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop();
    let before_outage = tally_counts(&bus)?.2;
    let pushed_before = fleet.summary().pushed_values;
    tokio::time::sleep(Duration::from_secs(scale.upstream_outage_secs)).await;
    let summary = fleet.stop().await;
    let backlog = summary.pushed_values.saturating_sub(pushed_before);
    let expected = summary.pushed_values;
    let restarted = Instant::now();
    broker.restart().map_err(broker_setup)?;
    // The drain runs from the first reading that arrives after the restart (the gateway's reconnect back-off
    // comes first, measured apart) to the last one.
    let limit = Duration::from_secs(scale.upstream_outage_secs * 20 + 120);
    while tally_counts(&bus)?.2 <= before_outage && restarted.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnect_secs = restarted.elapsed().as_secs_f64();
    let first_after = tally_counts(&bus)?.2;
    let (gw_cpu, broker_cpu) = (Usage::start(&gw), CpuWindow::start(broker.pid()));
    let draining = Instant::now();
    while tally_counts(&bus)?.2 < expected && restarted.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = draining.elapsed().as_secs_f64();
    let (gateway_cpu, mosquitto_cpu) = (gw_cpu.cpu_percent(&gw).round(), broker_cpu.percent());
    // Late duplicates (QoS 1 redelivery) still count as duplicates.
    bus.drain(Duration::from_millis(1500), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (delivered, duplicates, distinct, _) = tally_counts(&bus)?;
    let drained = distinct.min(expected).saturating_sub(first_after);
    let outage = json!({
        "rate": rate,
        "outage_secs": scale.upstream_outage_secs,
        "expected": expected,
        "backlog": backlog,
        "delivered": delivered,
        "duplicates": duplicates,
        "lost": expected.saturating_sub(distinct),
        "dropped_counted": counted_drops(&bus),
        "reconnect_secs": (reconnect_secs * 10.0).round() / 10.0,
        "drain_secs": (drain_secs * 10.0).round() / 10.0,
        "drain_per_s": (drained as f64 / drain_secs.max(1e-3)).round(),
        "gateway_cpu_percent": gateway_cpu,
        "broker_cpu_percent": mosquitto_cpu,
    });
    eprintln!("upstream outage: {outage}");
    gw.stop();
    Ok(json!({
        "scenario": "upstream",
        "meters": scale.push_meters,
        "qos": 1,
        "best_zero_loss": best,
        "steps": steps,
        "outage": outage,
    }))
}

/// DL/T 645 meters polled in aligned cycles: how long one cycle of every meter takes.
pub async fn poll(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let mut runs = Vec::new();
    for &PollRun { meters, rtt_ms, interval_ms, cycles: cycles_wanted } in &scale.poll_runs {
        let gw = GatewayProcess::spawn(
            bin,
            &[
                ("POLLING_ENABLED", "true".into()),
                ("POLLING_ALIGN", "true".into()),
                ("POLLING_INTERVAL_MS", interval_ms.to_string()),
                ("POLLING_REGISTER_GROUP", "all".into()),
                ("POLLING_MAX_CONCURRENT", meters.to_string()),
                ("DLT645_TIMEOUT_MS", "5000".into()),
            ],
        )?;
        let bus = Bus::connect(gw.mqtt, USER).await?;
        let fleet = Fleet::start(FleetConfig {
            gateway: gw.meters,
            dlt645_meters: meters,
            first_address: 1,
            identify: IdentifyMode::TalkFirst,
            latency: if rtt_ms == 0 { ReplyLatency::None } else { ReplyLatency::Fixed(Duration::from_millis(rtt_ms)) },
            sources: sources(meters),
            ramp_per_sec: 2000,
            ..FleetConfig::default()
        });
        wait_online(&bus, meters, Duration::from_secs(120)).await?;
        // Count only cycles that start after every meter is online.
        let ready_ms = crate::now_ms();
        bus.reset(Some(interval_ms), true);
        let usage = Usage::start(&gw);
        let expected = meters as u64 * 9;
        let deadline = Instant::now() + Duration::from_millis(interval_ms * (cycles_wanted as u64 + 2) + 30_000);
        let full_cycles = |bus: &Bus| -> Vec<(u64, u64, u64)> {
            let Ok(t) = bus.tally.lock() else { return Vec::new() };
            let mut v: Vec<(u64, u64, u64)> =
                t.cycles.iter().filter(|(start, _)| **start > ready_ms).map(|(s, (n, last))| (*s, *n, *last)).collect();
            v.sort_unstable();
            v
        };
        loop {
            let done = full_cycles(&bus).iter().filter(|(_, n, _)| *n >= expected).count();
            if done >= cycles_wanted || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let a cycle still completing finish counting (and the 1 s gateway stats catch up).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Where readings were dropped, if any: the broker (a slow subscriber's queue or the publish queue) or a hub
        // sink's queue.
        let drops = json!({
            "mqtt_messages": bus.stat("/mqtt/dropped"),
            "hub_mqtt_readings": bus.stat("/hub/sinks/mqtt/droppedReadings"),
            "hub_http_events": bus.stat("/hub/sinks/http/dropped"),
            "hub_alarms_events": bus.stat("/hub/sinks/alarms/dropped"),
        });
        let cpu = usage.cpu_percent(&gw);
        let cycles = full_cycles(&bus);
        let summary = fleet.stop().await;
        let duplicates = bus.tally.lock().map(|t| t.duplicates).unwrap_or(0);
        let rss = gw.rss_bytes();
        gw.stop();
        let complete: Vec<&(u64, u64, u64)> = cycles.iter().filter(|(_, n, _)| *n >= expected).collect();
        let mut times: Vec<u64> = complete.iter().map(|(s, _, last)| last.saturating_sub(*s)).collect();
        times.sort_unstable();
        let run = json!({
            "meters": meters,
            "registers": 9,
            "rtt_ms": rtt_ms,
            "interval_ms": interval_ms,
            "cycles_observed": cycles.iter().map(|(s, n, _)| json!({"start": s, "readings": n})).collect::<Vec<_>>(),
            "complete_cycles": complete.len(),
            "readings_per_cycle": expected,
            "cycle_ms_median": quantile(&times, 0.5),
            "cycle_ms_max": times.last(),
            "duplicates": duplicates,
            "meter_overlaps": summary.overlaps,
            "gateway_drops": drops,
            "gateway_cpu_percent": cpu.round(),
            "gateway_rss_mb": mb(rss),
        });
        eprintln!("poll: {run}");
        runs.push(run);
    }
    Ok(json!({"scenario": "poll", "runs": runs}))
}

async fn command_round_trips(
    bus: &Bus,
    meters: &[String],
    total: usize,
    concurrency: usize,
) -> (Vec<u64>, usize, Vec<Value>) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (bus, next, meters) = (bus.clone(), next.clone(), meters.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                let meter = meters.get(rand::random_range(0..meters.len().max(1))).cloned().unwrap_or_default();
                let (resp, rtt) = bus
                    .command(&meter, "read_register", json!({"register": "VOLTAGE_A"}), Duration::from_secs(20))
                    .await;
                out.push((resp, rtt.as_micros() as u64));
            }
        });
    }
    let mut rtts = Vec::new();
    let mut ok = 0;
    let mut failures = Vec::new();
    while let Some(Ok(results)) = tasks.join_next().await {
        for (resp, rtt) in results {
            rtts.push(rtt);
            match resp {
                Some(r) if r.get("success") == Some(&Value::Bool(true)) => ok += 1,
                Some(r) => failures.push(r),
                None => failures.push(json!({"error": "no response"})),
            }
        }
    }
    rtts.sort_unstable();
    failures.truncate(5);
    (rtts, ok, failures)
}

fn dlt_ids(n: usize) -> Vec<String> {
    (0..n).filter_map(|i| dlt645_address(1 + i as u64)).map(|a| a.to_string()).collect()
}

/// As many meters as the box allows, held connected: RSS per meter and command round trips meanwhile.
pub async fn hold(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let gw = GatewayProcess::spawn(bin, &[])?;
    let bus = Bus::connect(gw.mqtt, USER).await?;
    // The baseline once the allocator has returned the login's argon2 scratch.
    tokio::time::sleep(Duration::from_secs(scale.idle_settle_secs)).await;
    let rss_idle = gw.rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let fleet = Fleet::start(FleetConfig {
        gateway: gw.meters,
        dlt645_meters: scale.hold_meters,
        sources: sources(scale.hold_meters),
        ramp_per_sec: 2000,
        ..FleetConfig::default()
    });
    wait_online(&bus, scale.hold_meters, Duration::from_secs(300)).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = gw.rss_bytes().unwrap_or(0);
    let (rtts, ok, failures) =
        command_round_trips(&bus, &dlt_ids(scale.hold_meters), scale.hold_commands, scale.command_concurrency).await;
    let still_online = bus.online();
    let summary = fleet.stop().await;
    gw.stop();
    let per_meter = rss_held.saturating_sub(rss_idle) as f64 / scale.hold_meters.max(1) as f64;
    Ok(json!({
        "scenario": "hold",
        "meters": scale.hold_meters,
        "online": still_online,
        "connect_secs": (connect_secs * 10.0).round() / 10.0,
        "connect_errors": summary.connect_errors,
        "dropped_by_gateway": summary.dropped_by_gateway,
        "rss_idle_mb": mb(Some(rss_idle)),
        "rss_held_mb": mb(Some(rss_held)),
        "rss_per_meter_kb": (per_meter / 1024.0 * 100.0).round() / 100.0,
        "commands": rtts.len(),
        "command_success": ok,
        "command_failures": failures,
        "command_p50_ms": ms(quantile(&rtts, 0.5)),
        "command_p99_ms": ms(quantile(&rtts, 0.99)),
    }))
}

/// Commands through MQTT to a small fleet: round trips and success rate.
pub async fn command(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let gw = GatewayProcess::spawn(bin, &[])?;
    let bus = Bus::connect(gw.mqtt, USER).await?;
    let fleet =
        Fleet::start(FleetConfig { gateway: gw.meters, dlt645_meters: scale.command_meters, ..FleetConfig::default() });
    wait_online(&bus, scale.command_meters, Duration::from_secs(60)).await?;
    let (rtts, ok, failures) =
        command_round_trips(&bus, &dlt_ids(scale.command_meters), scale.commands, scale.command_concurrency).await;
    let summary = fleet.stop().await;
    gw.stop();
    Ok(json!({
        "scenario": "command",
        "meters": scale.command_meters,
        "commands": rtts.len(),
        "concurrency": scale.command_concurrency,
        "success": ok,
        "success_rate": if rtts.is_empty() { 0.0 } else { ok as f64 / rtts.len() as f64 },
        "failures": failures,
        "p50_ms": ms(quantile(&rtts, 0.5)),
        "p99_ms": ms(quantile(&rtts, 0.99)),
        "meter_overlaps": summary.overlaps,
    }))
}

/// The SQLite store (SPEC 8): push at each of `store_push_rates` with the store off and on (same run), and
/// whether every delivered reading was stored (the highest rate meeting 0 lost, p99 < 50 ms and all stored); then, in process on the gateway's own writer and queries, a history
/// database of `store_db_meters` × 10 registers × one reading a minute for `store_db_days`: the writer's insert
/// rate, bytes on disk per reading, and the p50/p99 of `step=1h` over the whole span and of raw 24 h queries.
pub async fn store(bin: &Path, scale: &Scale) -> Result<Value, ScenarioError> {
    let mut push = serde_json::Map::new();
    for (name, enabled) in [("store_off", "false"), ("store_on", "true")] {
        let gw = GatewayProcess::spawn(bin, &[("STORE_ENABLED", enabled.to_owned())])?;
        let bus = Bus::connect(gw.mqtt, USER).await?;
        let db = gw.data_dir().join("ivy.db");
        let mut steps = Vec::new();
        let mut best: Option<u64> = None;
        for (i, rate) in scale.store_push_rates.iter().enumerate() {
            let stored_before = stored_readings(&db).unwrap_or(0);
            let step =
                push_step(&gw, &bus, scale.push_meters, *rate, scale.push_step_secs, 1 + i as u64 * 100_000, false)
                    .await?;
            let mut result = step.result;
            let mut met = step.sustained;
            if enabled == "true" {
                // The writer commits at most a batch window after the last reading.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let stored = stored_readings(&db).map(|n| n.saturating_sub(stored_before));
                let delivered = result.get("delivered").and_then(Value::as_u64);
                let stored_all = stored.is_some() && stored == delivered;
                result["stored"] = json!(stored);
                result["stored_all"] = json!(stored_all);
                result["store_dropped"] = json!(bus.stat("/hub/sinks/store/droppedReadings"));
                met &= stored_all;
            }
            result["met"] = json!(met);
            eprintln!("store push {name} {rate}/s: {result}");
            steps.push(result);
            if met {
                best = Some(*rate);
            }
            if !step.zero_loss {
                break;
            }
        }
        push.insert(name.to_owned(), json!({"steps": steps, "best_rate": best}));
        gw.stop();
    }
    let db = tokio::task::spawn_blocking({
        let (meters, days, queries) = (scale.store_db_meters, scale.store_db_days, scale.store_queries);
        move || history_database(meters, days, queries)
    })
    .await
    .map_err(|e| ScenarioError::Setup(e.to_string()))?
    .map_err(|e| ScenarioError::Setup(format!("history database: {e}")))?;
    Ok(json!({"scenario": "store", "push": push, "database": db}))
}

fn stored_readings(path: &Path) -> Option<u64> {
    let conn = ivy_gateway::store::open_reader(path).ok()?;
    conn.query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0)).ok().map(|n| n.max(0) as u64)
}

fn history_database(meters: usize, days: u64, queries: usize) -> Result<Value, ivy_gateway::store::StoreError> {
    use ivy_gateway::hub::HubEvent;
    use ivy_gateway::model::{Quantity, Reading, ReadingValue, Source};
    use ivy_gateway::store::{self, query, writer::Writer};
    use ivy_protocol::registration::MeterId;
    use std::sync::Arc;
    const REGISTERS: [&str; 10] = [
        "VOLTAGE_A",
        "VOLTAGE_B",
        "VOLTAGE_C",
        "CURRENT_A",
        "CURRENT_B",
        "CURRENT_C",
        "ACTIVE_POWER_TOTAL",
        "REACTIVE_POWER_TOTAL",
        "POWER_FACTOR_TOTAL",
        "COMBINED_ACTIVE_ENERGY",
    ];
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ivy.db");
    let config = ivy_gateway::config::StoreConfig { max_size_mb: 1 << 20, retention_days: 3650, ..Default::default() };
    let status = Arc::new(store::StoreStatus::default());
    let mut writer = Writer::new(store::open_writer(&path)?, config.clone(), status);
    let ids: Vec<MeterId> = (0..meters).filter_map(|m| MeterId::new(format!("bench{m:05}")).ok()).collect();
    let minute = 60_000u64;
    let end = 1_800_000_000_000u64 / minute * minute;
    let start = end - days * 86_400_000;
    let mut rows = 0u64;
    let mut batch: Vec<Arc<HubEvent>> = Vec::new();
    let mut batch_rows = 0usize;
    let began = Instant::now();
    let mut ts = start;
    while ts < end {
        for (m, id) in ids.iter().enumerate() {
            let readings = REGISTERS
                .iter()
                .enumerate()
                .map(|(r, key)| Reading {
                    meter_id: id.clone(),
                    source: Source::Dlms,
                    register: (*key).to_owned(),
                    data_id: String::new(),
                    value: ReadingValue::Number(230.0 + ((ts / minute + (m * 10 + r) as u64) % 97) as f64 * 0.1),
                    raw_value: Value::Null,
                    unit: Some("V".into()),
                    quantity: Quantity::Other,
                    ts,
                    meta: Default::default(),
                })
                .collect();
            batch.push(Arc::new(HubEvent::Readings {
                meter_id: id.clone(),
                source: Source::Dlms,
                readings,
                snapshot: false,
            }));
            batch_rows += REGISTERS.len();
            if batch_rows >= config.batch_rows.get() {
                rows += writer.write_batch(&batch)? as u64;
                batch.clear();
                batch_rows = 0;
            }
        }
        ts += minute;
    }
    rows += writer.write_batch(&batch)? as u64;
    writer.flush_snapshots()?;
    let insert_secs = began.elapsed().as_secs_f64();
    drop(writer);
    let conn = store::open_writer(&path)?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    let used = store::used_bytes(&conn)?;
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let reader = store::open_reader(&path)?;
    let series = query::series(&reader, None, None)?.unwrap_or_default();
    let mut rng = rand::rng();
    let mut time = |f: &mut dyn FnMut(&query::Series) -> Result<usize, store::StoreError>| {
        let mut lat = Vec::with_capacity(queries);
        for _ in 0..queries {
            let s = &series[rand::Rng::random_range(&mut rng, 0..series.len().max(1))];
            let t = Instant::now();
            f(s)?;
            lat.push(t.elapsed().as_micros() as u64);
        }
        lat.sort_unstable();
        Ok::<_, store::StoreError>(lat)
    };
    let step_lat =
        time(&mut |s| Ok(query::buckets(&reader, std::slice::from_ref(s), start, end, 3_600_000, 10_000)?.len()))?;
    let raw_lat =
        time(&mut |s| Ok(query::points(&reader, std::slice::from_ref(s), end - 86_400_000, end, 10_000)?.len()))?;
    Ok(json!({
        "readings": rows,
        "series": series.len(),
        "insert_rows_per_s": (rows as f64 / insert_secs).round(),
        "insert_secs": (insert_secs * 10.0).round() / 10.0,
        "bytes_per_reading": ((used as f64 / rows.max(1) as f64) * 10.0).round() / 10.0,
        "file_bytes": file,
        "step_1h_p50_ms": ms(quantile(&step_lat, 0.5)),
        "step_1h_p99_ms": ms(quantile(&step_lat, 0.99)),
        "raw_24h_p50_ms": ms(quantile(&raw_lat, 0.5)),
        "raw_24h_p99_ms": ms(quantile(&raw_lat, 0.99)),
    }))
}
