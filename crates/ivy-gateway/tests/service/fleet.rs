//! A fleet: 1000 simulated DL/T 645 meters connected and polled every 5 s for 60 s; every reading arrives once.
//! Too slow for the default run; `scripts/fleet-test` runs it in release mode.

use crate::harness::*;
use ivy_gateway::metrics::PollOutcome;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const METERS: u64 = 1000;
const INTERVAL_MS: u64 = 5000;
const RUN_SECS: u64 = 60;
const REGISTERS_PER_CYCLE: u64 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s load run; scripts/fleet-test runs it in release mode"]
async fn a_fleet_of_1000_meters_polled_every_5_s_for_60_s_delivers_every_reading_once() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.group = "all".into();
        c.polling.interval_ms = INTERVAL_MS;
        c.polling.jitter_percent = 10;
        c.polling.first_poll_delay_ms = 500;
        c.dlt645.timeout_ms = 5000;
        c.meters.max_connections_per_ip = std::num::NonZeroUsize::new(2 * METERS as usize).unwrap();
        c.meters.rate_limiting_enabled = false;
        c.mqtt.publish_queue = std::num::NonZeroUsize::new(1 << 17).unwrap();
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/telemetry"]).await;

    let mut sims = Vec::new();
    for n in 0..METERS {
        let address: Address = format!("{:012}", 100_000 + n).parse().unwrap();
        let mut meter = Dlt645Meter::new(address);
        meter.dynamic = true;
        let cfg = Dlt645Config::talk_first(vec![Arc::new(meter)]);
        // Spread the sources over 127.0.0.x as a real fleet comes from many addresses.
        let source = std::net::IpAddr::from([127, 0, 0, 1 + (n % 50) as u8]);
        sims.push(Dlt645Sim::connect_from(gw.meters(), Some(source), cfg).await.unwrap());
    }
    let online = tokio::time::timeout(Duration::from_secs(30), async {
        while gw.gw.meters().registry.len() < METERS as usize {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(online.is_ok(), "only {} of {METERS} meters came online", gw.gw.meters().registry.len());

    let msgs = c.collect(RUN_SECS * 1000).await;
    for s in sims.iter() {
        assert!(!s.is_finished(), "a simulated meter lost its connection");
    }
    // Stop the meters, then give in-flight readings a moment to arrive.
    let replies: u64 = sims.iter().map(|s| s.stats.replies.load(Ordering::Relaxed)).sum();
    let overlaps: u64 = sims.iter().map(|s| s.stats.overlaps.load(Ordering::Relaxed)).sum();
    for s in sims {
        s.close().await;
    }
    let late = c.collect(3000).await;

    let mut seen = HashSet::new();
    let mut per_meter: HashMap<String, u64> = HashMap::new();
    for m in msgs.iter().chain(late.iter()) {
        let key = (m.json["meterId"].as_str().unwrap().to_owned(), m.json["register"].clone(), m.json["ts"].clone());
        assert!(seen.insert(key.clone()), "reading delivered twice: {key:?}");
        *per_meter.entry(key.0).or_default() += 1;
    }
    let delivered = seen.len() as u64;
    let m = &gw.gw.meters().metrics;
    let polls = |o: &str| {
        let outcome = PollOutcome::ALL.into_iter().find(|x| x.as_str() == o).expect("a poll outcome");
        m.poll_cycles(outcome)
    };
    println!(
        "fleet: {METERS} meters, {delivered} readings delivered, {replies} meter replies, poll cycles ok {} / partial {} / \
         timeout {} / failed {}, mqtt dropped {}, overlaps {overlaps}",
        polls("ok"),
        polls("partial"),
        polls("timeout"),
        polls("failed"),
        m.mqtt_dropped.get()
    );
    assert_eq!(overlaps, 0, "the gateway never interleaves requests on one connection");
    assert_eq!(polls("partial") + polls("timeout") + polls("failed"), 0, "no poll errors");
    assert_eq!(m.mqtt_dropped.get(), 0, "nothing dropped");
    assert_eq!(delivered, replies, "every reading the meters answered is delivered once");
    assert_eq!(per_meter.len() as u64, METERS, "every meter delivered readings");
    // 60 s at 5 s ± 10 %: at least 10 full cycles per meter.
    let min_cycles = RUN_SECS * 1000 / (INTERVAL_MS * 11 / 10) - 1;
    for (meter, n) in &per_meter {
        assert!(*n >= min_cycles * REGISTERS_PER_CYCLE, "{meter}: only {n} readings");
    }
}
