//! `ivy-bench`: runs the load scenarios against a gateway binary and prints one JSON line per scenario, then the
//! table; with `--report FILE` it regenerates the generated part of `docs/PERFORMANCE.md`.

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use ivy_bench::report::{self, Context};
use ivy_bench::scenarios::{self, Scale};
use std::path::PathBuf;
use std::process::Command;

/// Load benchmarks of the IVY gateway (see docs/PERFORMANCE.md).
#[derive(Debug, Parser)]
#[command(name = "ivy-bench", version, about)]
struct Args {
    /// The gateway binary (a release build).
    #[arg(long, default_value = "target/release/ivy-gateway")]
    gateway_bin: PathBuf,

    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Which>,

    /// Run at smoke size (seconds, not minutes; checks the driver, measures nothing useful).
    #[arg(long)]
    smoke: bool,

    /// Criterion output to include in the report.
    #[arg(long)]
    criterion: Option<PathBuf>,

    /// Regenerate the generated part of this Markdown file.
    #[arg(long)]
    report: Option<PathBuf>,

    /// Do not run anything: rebuild the report from the JSON lines a previous run printed.
    #[arg(long)]
    from_results: Option<PathBuf>,

    /// The command line to state in the report.
    #[arg(long, default_value = "scripts/bench")]
    command: String,

    /// Extra `KEY=VALUE` environment for every gateway started (e.g. `STORE_ENABLED=false` to measure the
    /// configuration before a feature); scenario settings of the same key still win.
    #[arg(long = "gateway-env", value_parser = parse_env_pair)]
    gateway_env: Vec<(String, String)>,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Idle,
    Command,
    Poll,
    Push,
    Hold,
    Store,
    Upstream,
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| kb / 1_048_576.0)
        .unwrap_or(0.0);
    let files = output("sh", &["-c", "ulimit -n"]);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB, open-file limit {files}, {}", output("uname", &["-sr"]))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.gateway_bin.exists() || args.from_results.is_some(),
        "{} does not exist: build it with `cargo build --release -p ivy-gateway`",
        args.gateway_bin.display()
    );
    ivy_bench::process::set_extra_env(args.gateway_env.clone());
    let scale = if args.smoke { Scale::smoke() } else { Scale::full() };
    let wanted = |w: Which| args.only.is_empty() || args.only.contains(&w);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let bin = args.gateway_bin.clone();
    let saved = match &args.from_results {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v.get("scenario").is_some())
                .collect::<Vec<_>>(),
        ),
        None => None,
    };
    let results = runtime.block_on(async {
        if let Some(saved) = saved {
            return saved;
        }
        let mut results = Vec::new();
        for which in [Which::Idle, Which::Command, Which::Poll, Which::Push, Which::Hold, Which::Store, Which::Upstream]
        {
            if !wanted(which) {
                continue;
            }
            eprintln!("== {which:?}");
            let r = match which {
                Which::Idle => scenarios::idle(&bin, &scale).await,
                Which::Command => scenarios::command(&bin, &scale).await,
                Which::Poll => scenarios::poll(&bin, &scale).await,
                Which::Push => scenarios::push(&bin, &scale).await,
                Which::Hold => scenarios::hold(&bin, &scale).await,
                Which::Store => scenarios::store(&bin, &scale).await,
                Which::Upstream => scenarios::upstream(&bin, &scale).await,
            };
            let value = match r {
                Ok(v) => v,
                Err(e) => serde_json::json!({"scenario": format!("{which:?}").to_lowercase(), "error": e.to_string()}),
            };
            println!("{value}");
            results.push(value);
        }
        results
    });
    let ctx = Context {
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine(),
        commit: output("git", &["rev-parse", "--short", "HEAD"]),
        command: args.command.clone(),
    };
    let criterion = args.criterion.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
    let md = report::markdown(&ctx, &results, criterion.as_deref());
    eprintln!("\n{md}");
    if let Some(path) = &args.report {
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, report::splice(&doc, &md)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
