//! Smoke versions of the load benchmarks (`ivy-bench --smoke` sizes) and of an `ivy-sim` run: the real gateway
//! binary, a simulated fleet and an MQTT subscriber. They check counts and loss, never speed.

use ivy_bench::bus::Bus;
use ivy_bench::process::{GatewayProcess, USER};
use ivy_bench::scenarios::{self, Scale};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn gateway() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ivy-gateway"))
}

fn n(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_scenario_measures_startup_and_memory() {
    let r = scenarios::idle(gateway(), &Scale::smoke()).await.unwrap();
    assert!(r["startup_ms"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    assert!(r["rss_mb"].as_f64().is_some_and(|s| s > 0.0), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_scenario_gets_every_response() {
    let r = scenarios::command(gateway(), &Scale::smoke()).await.unwrap();
    assert_eq!(n(&r, "/commands"), 40, "{r}");
    assert_eq!(n(&r, "/success"), 40, "{r}");
    assert_eq!(n(&r, "/meter_overlaps"), 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_scenario_sees_complete_cycles_without_duplicates() {
    let r = scenarios::poll(gateway(), &Scale::smoke()).await.unwrap();
    let run = &r["runs"][0];
    assert!(n(run, "/complete_cycles") >= 1, "{r}");
    assert_eq!(n(run, "/duplicates"), 0, "{r}");
    assert_eq!(n(run, "/meter_overlaps"), 0, "{r}");
    // Every observed cycle that started after all meters were online is complete: 20 meters x 9 registers.
    for c in run["cycles_observed"].as_array().unwrap() {
        assert!(n(c, "/readings") <= 180, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_scenario_delivers_every_pushed_value_once() {
    let r = scenarios::push(gateway(), &Scale::smoke()).await.unwrap();
    // Counts only: the smoke run is a debug build on a busy machine, so latency is not judged here.
    let best = &r["highest_zero_loss_any_latency"];
    assert!(n(best, "/expected") > 0, "{r}");
    assert_eq!(n(best, "/delivered"), n(best, "/expected"), "{r}");
    assert_eq!(n(best, "/duplicates"), 0, "{r}");
    assert!(best["latency_p99_ms"].as_f64().is_some(), "latency measured from the stamps: {r}");
    let o = &r["overload"];
    assert_eq!(n(o, "/delivered") + n(o, "/dropped_counted"), n(o, "/expected"), "nothing lost uncounted: {r}");
    assert_eq!(r["gateway_survived_overload"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_scenario_keeps_every_meter_online_and_answers_commands() {
    let r = scenarios::hold(gateway(), &Scale::smoke()).await.unwrap();
    assert_eq!(n(&r, "/online"), 50, "{r}");
    assert_eq!(n(&r, "/command_success"), 20, "{r}");
    assert_eq!(n(&r, "/dropped_by_gateway"), 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_scenario_stores_every_delivered_reading_and_measures_the_database() {
    let r = scenarios::store(gateway(), &Scale::smoke()).await.unwrap();
    for side in ["store_off", "store_on"] {
        let p = &r["push"][side]["steps"][0];
        assert!(n(p, "/expected") > 0, "{r}");
        assert_eq!(n(p, "/delivered"), n(p, "/expected"), "{side}: {r}");
    }
    assert_eq!(r["push"]["store_on"]["steps"][0]["stored_all"], true, "{r}");
    let db = &r["database"];
    // 2 meters x 10 registers x 2 days of minutes.
    assert_eq!(n(db, "/readings"), 2 * 10 * 2 * 1440, "{r}");
    assert!(db["bytes_per_reading"].as_f64().is_some_and(|b| b > 0.0), "{r}");
    assert!(db["step_1h_p99_ms"].as_f64().is_some() && db["raw_24h_p99_ms"].as_f64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_scenario_delivers_through_mosquitto_and_drains_an_outage_backlog() {
    let r = scenarios::upstream(gateway(), &Scale::smoke()).await.unwrap();
    // Counts only: a debug build on a busy machine says nothing about speed.
    let best = &r["best_zero_loss"];
    assert!(n(best, "/expected") > 0, "{r}");
    assert_eq!(n(best, "/lost"), 0, "{r}");
    let o = &r["outage"];
    assert!(n(o, "/backlog") > 0, "the meters pushed while the broker was down: {r}");
    assert_eq!(n(o, "/lost"), 0, "every reading of the outage delivered: {r}");
    assert!(o["drain_per_s"].as_f64().is_some_and(|d| d > 0.0), "{r}");
}

/// Builds the `ivy-sim` binary of the same profile as this test and returns its path.
fn ivy_sim() -> PathBuf {
    let dir = gateway().parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "--locked", "-p", "ivy-sim", "--bin", "ivy-sim"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building ivy-sim");
    dir.join("ivy-sim")
}

#[test]
fn ivy_sim_help_documents_every_option() {
    let out = std::process::Command::new(ivy_sim()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--gateway",
        "--dlt645",
        "--addresses-per-connection",
        "--first-address",
        "--dlms",
        "--first-dlms",
        "--dlms-id-prefix",
        "--identify",
        "--no-heartbeat",
        "--heartbeat-interval-s",
        "--rtt-ms",
        "--push-interval-ms",
        "--push-form",
        "--stamp",
        "--static-values",
        "--relay-password",
        "--relay-operator-code",
        "--relay-password-level",
        "--sources",
        "--ramp",
        "--processes",
        "--duration-s",
        "--silent-fraction",
        "--bad-checksum-fraction",
        "--garbage-fraction",
        "--oversize-fraction",
        "--slow-reader-fraction",
        "--slow-read-ms",
        "--reset-fraction",
        "--reconnect-every-s",
        "--storm-every-s",
        "--quiet",
    ] {
        let mut lines = help
            .lines()
            .skip_while(|l| !(l.trim_start().starts_with('-') && l.split([' ', ',', '=']).any(|word| word == option)));
        assert!(lines.next().is_some(), "{option} missing from --help");
        let line = lines.next().unwrap_or_default();
        assert!(!line.trim().is_empty(), "{option} has no description");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_meter_ivy_sim_run_shows_them_online_in_mqtt() {
    let sim = ivy_sim();
    let gw =
        GatewayProcess::spawn(gateway(), &[("POLLING_ENABLED", "true".into()), ("POLLING_INTERVAL_MS", "1000".into())])
            .unwrap();
    let bus = Bus::connect(gw.mqtt, USER).await.unwrap();
    // Two processes, two addresses per connection, two source addresses, and a DLMS meter pushing.
    let out = tokio::process::Command::new(sim)
        .args(["--gateway", &gw.meters.to_string(), "--dlt645", "10", "--addresses-per-connection", "2"])
        .args(["--dlms", "1", "--push-interval-ms", "500", "--processes", "2", "--sources", "2", "--duration-s", "4"])
        .arg("--quiet")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(n(&summary, "/dlt645_meters"), 10, "{summary}");
    assert_eq!(n(&summary, "/connections"), 6, "{summary}");
    assert_eq!(n(&summary, "/connect_errors"), 0, "{summary}");
    assert_eq!(n(&summary, "/overlaps"), 0, "{summary}");
    assert!(n(&summary, "/replies") > 0 && n(&summary, "/pushes") > 0, "{summary}");
    // Every meter published an online status during the run, and an offline one after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ever, now) = {
        let t = bus.tally.lock().unwrap();
        (t.ever_online.clone(), t.online.len())
    };
    assert_eq!(ever.len(), 11, "{ever:?}");
    assert!(
        ever.contains("000000000001") && ever.contains("000000000010") && ever.contains("IVY000000001"),
        "{ever:?}"
    );
    assert_eq!(now, 0, "offline after the simulator stopped");
    gw.stop();
}
