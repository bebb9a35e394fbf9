//! `ivy-sim`: a fleet of simulated DL/T 645 and EM114070-style DLMS meters dialing into a gateway.
//!
//! Prints a progress bar on stderr (when it is a terminal) and one JSON summary line on stdout at the end.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ivy_protocol::dlt645::RelayAuth;
use ivy_sim::ReplyLatency;
use ivy_sim::dlms::{DlmsMeter, PushClock, PushForm};
use ivy_sim::fleet::{FaultPlan, Fleet, FleetConfig, FleetSummary, IdentifyMode};
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Simulate a fleet of 4G electricity meters dialing into an IVY gateway.
#[derive(Debug, Parser)]
#[command(name = "ivy-sim", version, about, long_about = None)]
struct Args {
    /// The gateway's meter port (host:port).
    #[arg(long, short, default_value = "127.0.0.1:8899", env = "IVY_SIM_GATEWAY")]
    gateway: String,

    /// Number of DL/T 645 meters.
    #[arg(long, default_value_t = 10)]
    dlt645: usize,

    /// DL/T 645 meters per connection (several addresses behind one DTU on an RS-485 bus).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255))]
    addresses_per_connection: u16,

    /// Address of the first DL/T 645 meter (12 digits; the others count up).
    #[arg(long, default_value_t = 1)]
    first_address: u64,

    /// Number of EM114070-style DLMS meters.
    #[arg(long, default_value_t = 0)]
    dlms: usize,

    /// Number of the first DLMS meter (its id is the number in 12 characters after --dlms-id-prefix).
    #[arg(long, default_value_t = 1)]
    first_dlms: u64,

    /// Prefix of DLMS meter ids (keeps them apart from DL/T 645 addresses).
    #[arg(long, default_value = "IVY")]
    dlms_id_prefix: String,

    /// How DL/T 645 meters identify: talk-first (send their address), silent (wait for the probe), mixed.
    #[arg(long, value_enum, default_value_t = IdentifyArg::TalkFirst)]
    identify: IdentifyArg,

    /// DLMS meters do not send the registration heartbeat (the gateway then reads the logical device name).
    #[arg(long)]
    no_heartbeat: bool,

    /// Repeat the DLMS heartbeat every this many seconds.
    #[arg(long)]
    heartbeat_interval_s: Option<f64>,

    /// Reply latency in ms: fixed ("200") or uniform over a range ("100-300").
    #[arg(long, default_value = "0")]
    rtt_ms: String,

    /// DLMS push interval in ms (0: no pushes).
    #[arg(long, default_value_t = 0)]
    push_interval_ms: u64,

    /// DLMS push form.
    #[arg(long, value_enum, default_value_t = PushArg::Data)]
    push_form: PushArg,

    /// Stamp pushes with the meter clock (DataNotification date-time, standard EventNotification time): the
    /// meter's local time is UTC + this many minutes.
    #[arg(long, allow_hyphen_values = true)]
    push_time_offset_min: Option<i32>,

    /// With --push-time-offset-min: send the clock without its deviation (0x8000, as the EM114070 does), so the
    /// gateway must apply meters.timezone.
    #[arg(long, requires = "push_time_offset_min")]
    push_time_no_deviation: bool,

    /// Print the OBIS codes of the positional push form (for dlms.push_objects) and exit.
    #[arg(long)]
    print_push_objects: bool,

    /// Add the send time (µs) to every DataNotification as object 0-0:96.240.0.255, for latency measurements.
    #[arg(long)]
    stamp: bool,

    /// Keep values fixed instead of varying them (voltage noise, monotonic energy, load-following power).
    #[arg(long)]
    static_values: bool,

    /// Relay password the DL/T 645 meters check (6 digits; with --relay-operator-code; default: accept any).
    #[arg(long, requires = "relay_operator_code")]
    relay_password: Option<String>,

    /// Relay operator code the DL/T 645 meters check (8 digits).
    #[arg(long, requires = "relay_password")]
    relay_operator_code: Option<String>,

    /// Relay password level the DL/T 645 meters check.
    #[arg(long, default_value_t = 2)]
    relay_password_level: u8,

    /// Local source addresses, round robin: a count (127.0.0.1 .. 127.0.0.N), a range "127.0.0.1-127.0.0.50", or a
    /// comma-separated list.
    #[arg(long)]
    sources: Option<String>,

    /// New connections per second (0: unlimited).
    #[arg(long, default_value_t = 1000)]
    ramp: u32,

    /// Run this many processes, each with its share of the meters (to exceed one process's open-file limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,

    /// Run this many seconds, then stop (default: until Ctrl-C).
    #[arg(long)]
    duration_s: Option<f64>,

    /// Fraction of meters that never answer.
    #[arg(long, default_value_t = 0.0)]
    silent_fraction: f64,

    /// Fraction of DL/T 645 meters whose replies have a wrong checksum.
    #[arg(long, default_value_t = 0.0)]
    bad_checksum_fraction: f64,

    /// Fraction of meters that send garbage bytes on connect.
    #[arg(long, default_value_t = 0.0)]
    garbage_fraction: f64,

    /// Fraction of meters that send an oversize frame on connect.
    #[arg(long, default_value_t = 0.0)]
    oversize_fraction: f64,

    /// Fraction of meters that read the gateway's requests only after --slow-read-ms.
    #[arg(long, default_value_t = 0.0)]
    slow_reader_fraction: f64,

    /// The pause of slow readers, in ms.
    #[arg(long, default_value_t = 2000)]
    slow_read_ms: u64,

    /// Fraction of meters that reset (RST) instead of closing when they reconnect.
    #[arg(long, default_value_t = 0.0)]
    reset_fraction: f64,

    /// Every meter reconnects this often, in seconds (each at its own phase).
    #[arg(long)]
    reconnect_every_s: Option<f64>,

    /// All meters drop and reconnect at once this often, in seconds (a reconnect storm).
    #[arg(long)]
    storm_every_s: Option<f64>,

    /// DLMS meters dial the gateway's TLS meter port (`--gateway` then names it): PEM file of the CA that issued the
    /// gateway's certificate. Needs --tls-cert and --tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<std::path::PathBuf>,

    /// The DLMS meters' client certificate (PEM, leaf first), issued by the gateway's `meters.tls_client_ca`; it must
    /// name every simulated DLMS meter id (one DNS SAN each).
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<std::path::PathBuf>,

    /// The name the gateway's certificate is checked for (default: the host of --gateway).
    #[arg(long)]
    tls_server_name: Option<String>,

    /// No progress bar.
    #[arg(long)]
    quiet: bool,

    /// Internal: simulate only shard I of N ("I/N"), printing progress as JSON lines.
    #[arg(long, hide = true)]
    shard: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IdentifyArg {
    TalkFirst,
    Silent,
    Mixed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PushArg {
    /// DataNotification with {OBIS, value} pairs.
    #[value(alias = "pairs")]
    Data,
    /// DataNotification with {OBIS, value, {scaler, unit}} triples.
    Triples,
    /// DataNotification with a flat OBIS, value, OBIS, value... structure.
    Flat,
    /// DataNotification with a list identifier ("LIST_V001"), then flat pairs.
    ListFlat,
    /// DataNotification whose first element is the push object list, then the values.
    SelfDescribing,
    /// DataNotification with values only (the gateway needs dlms.push_objects; see --print-push-objects).
    Positional,
    /// EventNotification, standard layout.
    Event,
    /// EventNotification, EM114070 layout.
    EventEm114070,
}

fn fraction(name: &str, v: f64) -> anyhow::Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        bail!("--{name} must be between 0 and 1, not {v}");
    }
    Ok(v)
}

fn seconds(name: &str, v: Option<f64>) -> anyhow::Result<Option<Duration>> {
    v.map(|s| Duration::try_from_secs_f64(s).with_context(|| format!("--{name}: {s} is not a duration"))).transpose()
}

fn parse_latency(text: &str) -> anyhow::Result<ReplyLatency> {
    let ms = |t: &str| t.trim().parse::<u64>().with_context(|| format!("--rtt-ms: {t:?} is not milliseconds"));
    Ok(match text.split_once('-') {
        Some((a, b)) => ReplyLatency::Uniform(Duration::from_millis(ms(a)?), Duration::from_millis(ms(b)?)),
        None => match ms(text)? {
            0 => ReplyLatency::None,
            n => ReplyLatency::Fixed(Duration::from_millis(n)),
        },
    })
}

fn parse_sources(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Ok(n) = text.parse::<u8>() {
        return Ok((1..=n.max(1)).map(|i| IpAddr::from([127, 0, 0, i])).collect());
    }
    if let Some((a, b)) = text.split_once('-') {
        let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
            a.trim().parse().context("--sources: bad range start")?,
            b.trim().parse().context("--sources: bad range end")?,
        );
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            bail!("--sources: range {text} is empty or too large");
        }
        return Ok((a..=b).map(|i| IpAddr::from(std::net::Ipv4Addr::from(i))).collect());
    }
    text.split(',')
        .map(|s| s.trim().parse::<IpAddr>().with_context(|| format!("--sources: {s:?} is not an IP")))
        .collect()
}

fn fleet_config(a: &Args) -> anyhow::Result<FleetConfig> {
    let gateway: SocketAddr = a
        .gateway
        .to_socket_addrs()
        .with_context(|| format!("--gateway {}: not host:port", a.gateway))?
        .next()
        .with_context(|| format!("--gateway {}: no address", a.gateway))?;
    let relay_auth = match (&a.relay_password, &a.relay_operator_code) {
        (Some(p), Some(o)) => {
            Some(RelayAuth::new(a.relay_password_level, p, o).map_err(|e| anyhow::anyhow!("relay credentials: {e}"))?)
        }
        _ => None,
    };
    let shard = match &a.shard {
        Some(s) => {
            let (i, n) = s.split_once('/').context("--shard I/N")?;
            (i.parse()?, n.parse()?)
        }
        None => (0, 1),
    };
    let dlms_tls = match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let config = ivy_sim::tls_client_config(ca, cert, key).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
            let host = a.gateway.rsplit_once(':').map_or(a.gateway.as_str(), |(h, _)| h).trim_matches(['[', ']']);
            Some((config, a.tls_server_name.clone().unwrap_or_else(|| host.to_owned())))
        }
        _ => None,
    };
    Ok(FleetConfig {
        dlms_tls,
        gateway,
        dlt645_meters: a.dlt645,
        addresses_per_connection: usize::from(a.addresses_per_connection),
        first_address: a.first_address,
        dlms_meters: a.dlms,
        first_dlms_number: a.first_dlms,
        dlms_id_prefix: a.dlms_id_prefix.clone(),
        identify: match a.identify {
            IdentifyArg::TalkFirst => IdentifyMode::TalkFirst,
            IdentifyArg::Silent => IdentifyMode::Silent,
            IdentifyArg::Mixed => IdentifyMode::Mixed,
        },
        heartbeat: !a.no_heartbeat,
        heartbeat_interval: seconds("heartbeat-interval-s", a.heartbeat_interval_s)?,
        latency: parse_latency(&a.rtt_ms)?,
        push: (a.push_interval_ms > 0).then(|| {
            let form = match a.push_form {
                PushArg::Data => PushForm::DataNotification,
                PushArg::Triples => PushForm::DataTriples,
                PushArg::Flat => PushForm::DataFlat,
                PushArg::ListFlat => PushForm::DataListFlat,
                PushArg::SelfDescribing => PushForm::DataSelfDescribing,
                PushArg::Positional => PushForm::DataPositional,
                PushArg::Event => PushForm::EventStandard,
                PushArg::EventEm114070 => PushForm::EventEm114070,
            };
            (Duration::from_millis(a.push_interval_ms), form)
        }),
        stamp: a.stamp,
        push_clock: a
            .push_time_offset_min
            .map(|offset_minutes| PushClock { offset_minutes, deviation: !a.push_time_no_deviation }),
        dynamic: !a.static_values,
        relay_auth,
        sources: a.sources.as_deref().map(parse_sources).transpose()?.unwrap_or_default(),
        ramp_per_sec: a.ramp / u32::from(a.processes.max(1)).max(1),
        faults: FaultPlan {
            silent: fraction("silent-fraction", a.silent_fraction)?,
            bad_checksum: fraction("bad-checksum-fraction", a.bad_checksum_fraction)?,
            garbage: fraction("garbage-fraction", a.garbage_fraction)?,
            oversize: fraction("oversize-fraction", a.oversize_fraction)?,
            slow_reader: fraction("slow-reader-fraction", a.slow_reader_fraction)?,
            slow_read_delay: Duration::from_millis(a.slow_read_ms),
            reset: fraction("reset-fraction", a.reset_fraction)?,
            reconnect_every: seconds("reconnect-every-s", a.reconnect_every_s)?,
            storm_every: seconds("storm-every-s", a.storm_every_s)?,
        },
        shard,
    })
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} connected {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn progress_message(s: &FleetSummary) -> String {
    format!(
        "requests {} replies {} pushes {} reconnects {} dropped {} errors {}",
        s.requests, s.replies, s.pushes, s.reconnects, s.dropped_by_gateway, s.connect_errors
    )
}

async fn wait_end(duration: Option<Duration>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match duration {
        Some(d) => tokio::select! { _ = tokio::time::sleep(d) => {}, _ = ctrl_c => {} },
        None => ctrl_c.await,
    }
}

async fn run_single(args: &Args, cfg: FleetConfig) -> anyhow::Result<FleetSummary> {
    let is_shard = args.shard.is_some();
    let fleet = Fleet::start(cfg);
    let bar = progress_bar(fleet.counters.planned.load(std::sync::atomic::Ordering::Relaxed), args.quiet || is_shard);
    let end = wait_end(seconds("duration-s", args.duration_s)?);
    tokio::pin!(end);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = tick.tick() => {
                let s = fleet.summary();
                if is_shard {
                    println!("{}", serde_json::json!({"progress": s}));
                } else {
                    bar.set_position(s.connected);
                    bar.set_message(progress_message(&s));
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(fleet.stop().await)
}

/// Runs `processes` children, each on its shard, and sums their summaries.
fn run_sharded(args: &Args, total: u64) -> anyhow::Result<FleetSummary> {
    let exe = std::env::current_exe().context("locating ivy-sim")?;
    let mut children = Vec::new();
    let n = args.processes;
    // The children get our arguments without `--processes`, plus their shard.
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut clean = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw.get(i).is_some_and(|a| a == "--processes") {
            i += 2;
            continue;
        }
        if raw.get(i).is_some_and(|a| a.starts_with("--processes=")) {
            i += 1;
            continue;
        }
        if let Some(a) = raw.get(i) {
            clean.push(a.clone());
        }
        i += 1;
    }
    for shard in 0..n {
        let child = Command::new(&exe)
            .args(&clean)
            .arg("--shard")
            .arg(format!("{shard}/{n}"))
            .args((!args.quiet).then_some("--quiet"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting a simulator process")?;
        children.push(child);
    }
    let bar = progress_bar(total, args.quiet);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, serde_json::Value)>();
    let mut readers = Vec::new();
    for (k, child) in children.iter_mut().enumerate() {
        let Some(out) = child.stdout.take() else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send((k, v));
                }
            }
        }));
    }
    drop(tx);
    let mut latest = vec![FleetSummary::default(); children.len()];
    let mut finals = vec![None; children.len()];
    let mut last_draw = Instant::now();
    while let Ok((k, v)) = rx.recv() {
        if let Some(p) = v.get("progress").and_then(|p| serde_json::from_value::<FleetSummary>(p.clone()).ok()) {
            if let Some(slot) = latest.get_mut(k) {
                *slot = p;
            }
        } else if let Ok(s) = serde_json::from_value::<FleetSummary>(v)
            && let Some(slot) = finals.get_mut(k)
        {
            *slot = Some(s);
        }
        if last_draw.elapsed() > Duration::from_millis(250) {
            let mut sum = FleetSummary::default();
            latest.iter().for_each(|s| sum.add(s));
            bar.set_position(sum.connected);
            bar.set_message(progress_message(&sum));
            last_draw = Instant::now();
        }
    }
    bar.finish_and_clear();
    let mut total_summary = FleetSummary::default();
    for (k, mut child) in children.into_iter().enumerate() {
        let status = child.wait().context("waiting for a simulator process")?;
        match finals.get(k).cloned().flatten() {
            Some(s) if status.success() => total_summary.add(&s),
            _ => bail!("simulator process {k} failed ({status})"),
        }
    }
    for r in readers {
        let _ = r.join();
    }
    Ok(total_summary)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_push_objects {
        let objects: Vec<String> =
            DlmsMeter::em114070("0").push_object_list().iter().map(|(o, _)| format!("\"{o}\"")).collect();
        println!("push_objects = [{}]", objects.join(", "));
        return Ok(());
    }
    let cfg = fleet_config(&args)?;
    let connections = cfg.dlt645_meters.div_ceil(cfg.addresses_per_connection.max(1)) + cfg.dlms_meters;
    let summary = if args.processes > 1 && args.shard.is_none() {
        run_sharded(&args, connections as u64)?
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
        runtime.block_on(run_single(&args, cfg))?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    Ok(())
}
