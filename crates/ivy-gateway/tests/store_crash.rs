//! `kill -9` of the real binary during sustained store writes: after a restart the database passes
//! `PRAGMA integrity_check`, and the readings lost are at most those of the last unfinished batch (the readings
//! published within one batch window before the kill). The test prints the count and the bound.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH_MS: u64 = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(dir: &std::path::Path, meters: u16, mqtt: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .current_dir(dir)
        .env("DATA_DIR", dir)
        .env("TCP_HOST", "127.0.0.1")
        .env("TCP_PORT", meters.to_string())
        .env("MQTT_HOST", "127.0.0.1")
        .env("MQTT_PORT", mqtt.to_string())
        .env("MQTT_WS_PORT", "0")
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", free_port().to_string())
        .env("MQTT_USERS", "adm:admpass:admin")
        .env("STORE_BATCH_MS", BATCH_MS.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(mqtt: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(format!("crash-watch-{mqtt}"), "127.0.0.1", mqtt);
    opts.set_credentials("adm", "admpass");
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let started = Instant::now();
    loop {
        let (c, mut e) = AsyncClient::new(opts.clone(), 10_000);
        if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) =
            tokio::time::timeout(Duration::from_secs(2), e.poll()).await
        {
            return (c, e);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_sustained_writes_loses_at_most_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (meters, mqtt) = (free_port(), free_port());
    let mut child = spawn(dir.path(), meters, mqtt);
    let (client, mut ev) = connect(mqtt).await;
    client.subscribe("ivy/v1/meters/+/telemetry", QoS::AtLeastOnce).await.unwrap();
    // (meter, register, ts) of every numeric reading published, with when it arrived.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<((String, String, u64), Instant)>();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let j: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if j["value"].is_number() {
                    let key = (
                        j["meterId"].as_str().unwrap_or_default().to_owned(),
                        j["register"].as_str().unwrap_or_default().to_owned(),
                        j["ts"].as_u64().unwrap_or_default(),
                    );
                    let _ = tx.send((key, Instant::now()));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let addr = format!("127.0.0.1:{meters}").parse().unwrap();
    let mut sims = Vec::new();
    for n in 0..8 {
        let cfg = ivy_sim::dlms::DlmsConfig {
            heartbeat: true,
            push: Some((Duration::from_millis(20), ivy_sim::dlms::PushForm::DataNotification)),
            ..ivy_sim::dlms::DlmsConfig::new(Arc::new(ivy_sim::dlms::DlmsMeter::em114070(&format!("3115011140{n:02}"))))
        };
        sims.push(ivy_sim::dlms::DlmsSim::connect(addr, cfg).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sims);
    let mut published = Vec::new();
    while let Ok(item) = rx.try_recv() {
        published.push(item);
    }
    assert!(published.len() > 1000, "sustained writes: only {} readings published", published.len());

    // Restart on the same file (WAL recovery, migrations), then stop it cleanly.
    let mqtt_again = free_port();
    let mut again = spawn(dir.path(), free_port(), mqtt_again);
    let restarted = Instant::now();
    let db = dir.path().join("ivy.db");
    let (_c2, _e2) = connect(mqtt_again).await;
    Command::new("kill").args(["-TERM", &again.id().to_string()]).status().unwrap();
    let status = again.wait().unwrap();
    assert!(status.success(), "the restarted gateway ran and stopped cleanly: {status}");
    println!("restart to MQTT up: {:?}", restarted.elapsed());

    let conn = ivy_gateway::store::open_reader(&db).unwrap();
    let report = ivy_gateway::store::query::check(&conn).unwrap();
    assert!(report.ok(), "integrity_check: {:?}", report.integrity);
    let mut stmt = conn
        .prepare(
            "SELECT m.meter_id, g.key, r.ts FROM readings r JOIN meters m ON m.id = r.meter
             JOIN registers g ON g.id = r.register",
        )
        .unwrap();
    let stored: HashSet<(String, String, u64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let window = Duration::from_millis(BATCH_MS + 250);
    let lost: Vec<&((String, String, u64), Instant)> = published.iter().filter(|(k, _)| !stored.contains(k)).collect();
    let bound = published.iter().filter(|(_, at)| *at + window >= killed).count();
    let lost_outside = lost.iter().filter(|(_, at)| *at + window < killed).count();
    println!(
        "kill -9 after {} published readings: {} stored, {} lost; bound (published in the last {} ms batch window + commit) = {}; lost before that window = {}",
        published.len(),
        stored.len(),
        lost.len(),
        window.as_millis(),
        bound,
        lost_outside
    );
    assert_eq!(lost_outside, 0, "readings published before the last batch window were lost");
    assert!(lost.len() <= bound, "lost {} > bound {bound}", lost.len());
}
