//! `ivy-gateway`: the meter gateway binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ivy_gateway::config::{self, LogFormat, Sources};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's malloc/free took about a quarter of the gateway's CPU at 100,000 readings/s (perf); mimalloc is faster
// on these many small, cross-thread allocations. See docs/PERFORMANCE.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// IVY meter gateway: DL/T 645 and DLMS/COSEM meters over TCP, bridged to MQTT.
#[derive(Debug, Parser)]
#[command(name = "ivy-gateway", version, about)]
struct Cli {
    /// Configuration file (default: ./ivy-gateway.toml when it exists).
    #[arg(long, global = true, env = "IVY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print the effective settings (secrets masked).
    CheckConfig,
    /// Print an argon2id hash for the users file (reads the password from stdin), or with `--reset USER` give
    /// USER a new random password in the data directory's users file and print it (recovery).
    Passwd {
        /// User name for the printed users-file entry.
        #[arg(long, required_unless_present = "reset", conflicts_with = "reset")]
        user: Option<String>,
        /// Role: viewer (read only, the default), operator (also sends commands) or admin (everything).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Replace USER's password in the users file (USER is added as admin when missing); restart the gateway
        /// afterwards.
        #[arg(long, value_name = "USER")]
        reset: Option<String>,
    },
    /// TLS certificates for the HTTPS, MQTT/TLS and WSS listeners.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Explain a DL/T 645 frame, wrapper packet, DLMS APDU or A-XDR value given as hex.
    Decode(ivy_gateway::decode::DecodeArgs),
    /// The SQLite store: integrity check and counts, CSV export.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// `PRAGMA integrity_check` and row counts; exit 1 when the database is damaged.
    Check,
    /// Write readings as CSV (header row) to stdout.
    Export {
        /// From: ms since the epoch or RFC 3339 (inclusive; default: everything).
        #[arg(long)]
        from: Option<String>,
        /// To: ms since the epoch or RFC 3339 (inclusive; default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this meter.
        #[arg(long)]
        meter: Option<String>,
        /// Only this register (case-insensitive).
        #[arg(long)]
        register: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Write a self-signed server certificate (`cert.pem`) and its key (`key.pem`, mode 0600) for quick starts;
    /// clients must be given `cert.pem` to trust.
    SelfSigned(ivy_gateway::tls::SelfSignedArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Decode(args)) => {
            let code = ivy_gateway::decode::run(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock());
            ExitCode::from(code as u8)
        }
        Some(Command::CheckConfig) => match config::load(&Sources::from_process(cli.config)) {
            Ok(c) => match ivy_gateway::registers::Resolver::from_config(&c)
                .map_err(|e| e.to_string())
                .and_then(|_| tls_files(&c))
            {
                Ok(()) => {
                    println!("# configuration is valid\n{}", c.to_toml_masked());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("invalid configuration:\n  - {e}");
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Cert(CertCommand::SelfSigned(args))) => match ivy_gateway::tls::write_self_signed(&args) {
            Ok((cert, key)) => {
                println!(
                    "wrote {} (certificate: give it to clients to trust) and {} (private key, mode 0600)\n\
                     subject alternative names: {}",
                    cert.display(),
                    key.display(),
                    args.sans.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cert self-signed: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Db { command }) => match db(cli.config, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("db: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Passwd { reset: Some(user), .. }) => match reset_password(cli.config, &user) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("passwd --reset: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Passwd { user: None, reset: None, .. }) => {
            eprintln!("passwd: --user or --reset is required");
            ExitCode::from(2)
        }
        Some(Command::Passwd { user: Some(user), role, reset: None }) => match passwd(&user, &role) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("passwd: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Run) | None => {
            let sources = Sources::from_process(cli.config);
            let config = match config::load(&sources) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.gateway.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(run(config, sources));
            // Broker internals may hold blocking tasks: do not wait for them after a graceful stop.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ivy-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the configured certificate and key pairs, so `check-config` finds what would stop the start.
fn tls_files(c: &config::Config) -> Result<(), String> {
    let q = &c.mqtt;
    let mqtt = (q.tls_port != 0 || q.wss_port != 0).then(|| q.tls_cert.as_deref().zip(q.tls_key.as_deref())).flatten();
    let meters = c.meters.tls();
    for (cert, key) in c.http.tls().into_iter().chain(mqtt).chain(meters.map(|m| (m.cert, m.key))) {
        ivy_gateway::tls::load_key_pair(cert, key).map_err(|e| e.to_string())?;
    }
    if let Some(m) = meters {
        ivy_gateway::tls::client_verifier(m.client_ca).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn passwd(user: &str, role: &str) -> anyhow::Result<()> {
    let role: ivy_gateway::auth::Role = role.parse()?;
    let mut password = String::new();
    std::io::stdin().read_line(&mut password).context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "empty password");
    let hash = ivy_gateway::auth::hash_password(password)?;
    println!("[[user]]\nname = \"{user}\"\nhash = \"{hash}\"\nrole = \"{}\"", role.as_str());
    Ok(())
}

fn reset_password(config_path: Option<PathBuf>, user: &str) -> anyhow::Result<()> {
    let config = config::load(&Sources::from_process(config_path)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = &config.gateway.data_dir;
    let (password, role) = ivy_gateway::auth::reset_password(dir, user)?;
    println!(
        "New password for '{user}' (role {}) written to {}:\n\n    {password}\n\n\
         Store it now; it is not shown again. Restart the gateway for it to take effect.",
        role.as_str(),
        dir.join(ivy_gateway::auth::USERS_FILE).display()
    );
    Ok(())
}

/// A time given as ms since the epoch or RFC 3339.
fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("'{text}' is neither ms since the epoch nor an RFC 3339 time"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).context("times before 1970 are not stored")
}

fn db(config: Option<PathBuf>, command: DbCommand) -> anyhow::Result<ExitCode> {
    use ivy_gateway::store::{self, query};
    use std::io::Write;
    let config = config::load(&Sources::from_process(config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = config.store.file(&config.gateway.data_dir);
    anyhow::ensure!(path.exists(), "no database at {}", path.display());
    let conn = store::open_reader(&path)?;
    match command {
        DbCommand::Check => {
            let report = query::check(&conn)?;
            println!("database: {}", path.display());
            println!("integrity: {}", report.integrity.join("; "));
            println!("schema version: {}", report.schema_version);
            println!("meters: {}", report.meters);
            println!("series: {}", report.series);
            println!("readings: {}", report.readings);
            if let Some((first, last)) = report.readings_span {
                println!("readings span: {} .. {}", query::rfc3339(first), query::rfc3339(last));
            }
            println!("events: {}", report.events);
            println!("alarms: {} ({} active)", report.alarms, report.active_alarms);
            println!("outbox pending: {}", report.outbox_pending);
            println!("live data: {} bytes", report.used_bytes);
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        DbCommand::Export { from, to, meter, register } => {
            let from = from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let to = to.as_deref().map(parse_time).transpose()?.unwrap_or(u64::MAX);
            anyhow::ensure!(from <= to, "--from is after --to");
            let series = query::series(&conn, meter.as_deref(), register.as_deref())?
                .with_context(|| format!("no meter '{}' in the database", meter.as_deref().unwrap_or_default()))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            out.write_all(query::CSV_HEADER.as_bytes())?;
            let mut failed = None;
            let rows = query::csv_rows(&conn, &series, from, to, None, |line| match out.write_all(line.as_bytes()) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            out.flush()?;
            eprintln!("exported {rows} readings");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn,rmqtt_retainer=warn"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(log_colours());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Colour codes only on a terminal, and never when `NO_COLOR` is set to anything but "" (<https://no-color.org>):
/// the journal, files and pipes get plain text.
fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn run(config: config::Config, sources: Sources) -> anyhow::Result<()> {
    let mut signals = Signals::register();
    let https = config.http.tls().is_some();
    let mut gateway = ivy_gateway::gateway::Gateway::start(config).await?;
    if let Some(password) = gateway.take_first_run_password() {
        // Printed once, to stdout, never logged: only its hash is stored.
        println!(
            "\n==============================================================\n\
             First start: created MQTT/HTTP user 'admin' with password\n\n    {password}\n\n\
             Store it now; it is not shown again (only its hash is kept).\n\
             =============================================================="
        );
    }
    let addrs = gateway.addrs();
    let mqtt = or_off(addrs.mqtt);
    println!(
        "ivy-gateway listening: meters {} meters-tls {} mqtt {} ws {:?} {} {:?} mqtt-tls {:?} wss {:?}",
        or_off(addrs.meters),
        or_off(addrs.meters_tls),
        mqtt,
        addrs.mqtt_ws,
        if https { "https" } else { "http" },
        addrs.http,
        addrs.mqtt_tls,
        addrs.mqtt_wss
    );
    let service = ivy_gateway::systemd::ready(&format!(
        "meters {} meters-tls {} mqtt {mqtt}",
        or_off(addrs.meters),
        or_off(addrs.meters_tls)
    ));
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                // The files are read again (the process environment stays what it was at start).
                tracing::info!("SIGHUP: reloading");
                let sources = Sources { env: std::env::vars().collect(), ..sources.clone() };
                match config::load(&sources) {
                    Ok(new) => gateway.reload(new).log(),
                    Err(e) => tracing::error!(
                        problems = %e.to_string().trim_end().replace('\n', "; "),
                        "reload refused: the configuration is invalid; nothing changed"
                    ),
                }
            }
        }
    }
    tracing::info!("shutting down");
    service.stopping();
    gateway.shutdown().await;
    Ok(())
}

/// What a signal asks for.
enum Signal {
    /// SIGTERM or Ctrl-C.
    Stop,
    /// SIGHUP.
    Reload,
}

/// The signals the gateway acts on, registered once at start (so SIGHUP never terminates it, and one sent
/// while a reload runs is not lost).
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                _ => {
                    tracing::warn!("cannot register SIGTERM/SIGHUP handlers; only Ctrl-C stops the gateway");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((term, hup)) = &mut self.unix {
            return tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}

/// A listener's address, or `off`.
fn or_off(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
}
