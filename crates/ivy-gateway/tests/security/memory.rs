//! Memory held for subscribers that never read, measured on the gateway binary (not a test of the normal run:
//! `cargo test -p ivy-gateway --test security -- --ignored --nocapture stuck_subscribers`). Prints the resident
//! memory before, during and after the load for the old queue depth (100,000) and the default (1000); the figures
//! are recorded in docs/SECURITY.md.

use crate::raw;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

async fn measure(queue: usize, stuck: usize, messages: usize, payload: usize) -> (f64, f64, f64, Vec<(f64, f64)>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ivy-gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = {:?}\n[meters]\nhost = \"127.0.0.1\"\nport = 0\n[mqtt]\nhost = \"127.0.0.1\"\n\
             port = 0\nws_port = 0\nsession_queue_messages = {queue}\nmax_sessions_per_user = 0\n[http]\nenabled = false\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .arg("--config")
        .arg(&config)
        .env("MQTT_USERS", "adm:admpass:admin,view:viewpass:viewer")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let pid = proc.0.id();
    let line = BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("ivy-gateway listening"));
    let line = line.expect("the gateway prints its addresses");
    let mqtt: std::net::SocketAddr =
        line.split_whitespace().skip_while(|w| *w != "mqtt").nth(1).unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_mb(pid);
    let mut during = 0.0;
    let mut after = 0.0;
    let mut rounds = Vec::new();
    for round in 0..2 {
        let mut sessions = Vec::new();
        for n in 0..stuck {
            let id = format!("stuck-{round}-{n}");
            let (mut s, code) = raw::connect(mqtt, None, &id, Some(("view", "viewpass")), None).await;
            assert_eq!(code, Some(raw::ACCEPTED));
            raw::subscribe(&mut s, "ivy/v1/#").await;
            sessions.push(s);
        }
        let mut o = rumqttc::MqttOptions::new(format!("load-{round}"), mqtt.ip().to_string(), mqtt.port());
        o.set_credentials("adm", "admpass");
        let (client, mut ev) = rumqttc::AsyncClient::new(o, 1000);
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        let body = vec![b'r'; payload];
        for _ in 0..messages {
            client.publish("ivy/v1/load/readings", rumqttc::QoS::AtLeastOnce, false, body.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        during = rss_mb(pid);
        drop(sessions);
        drop(client);
        tokio::time::sleep(Duration::from_secs(5)).await;
        after = rss_mb(pid);
        rounds.push((during, after));
    }
    (before, during, after, rounds)
}

#[tokio::test]
#[ignore = "a measurement on the binary (about a minute); run by hand, figures in docs/SECURITY.md"]
async fn stuck_subscribers_rss() {
    let (stuck, messages, payload) = (20, 20_000, 512);
    for queue in [100_000, 1000] {
        let (before, _, _, rounds) = measure(queue, stuck, messages, payload).await;
        print_rounds(queue, stuck, messages, payload, before, &rounds);
    }
}

/// The byte side of the bound: messages near the worst case a stuck session can be sent (only operators and admins
/// publish anything a viewer receives). 20 stuck viewers × the 1000-message queue × 8 KiB is at most 160 MiB; the
/// figure shows what the load really costs and that a second round reuses it instead of adding to it.
#[tokio::test]
#[ignore = "a measurement on the binary (about a minute, up to ~200 MB); run by hand, figures in docs/SECURITY.md"]
async fn stuck_subscribers_rss_large_messages() {
    let (stuck, messages, payload, queue) = (20, 3000, 8 * 1024, 1000);
    let (before, _, _, rounds) = measure(queue, stuck, messages, payload).await;
    print_rounds(queue, stuck, messages, payload, before, &rounds);
    // Bounded by the queue: 20 × 1000 × 8 KiB plus the gateway's own working set.
    let bound = (stuck * queue * payload) as f64 / 1e6 + before + 50.0;
    assert!(rounds.iter().all(|(during, _)| *during < bound), "{rounds:?} over {bound:.0} MB");
}

fn print_rounds(queue: usize, stuck: usize, messages: usize, payload: usize, before: f64, rounds: &[(f64, f64)]) {
    for (n, (during, after)) in rounds.iter().enumerate() {
        println!(
            "MEMORY session_queue_messages={queue} round {}: {stuck} stuck subscribers, {messages} messages of \
             {payload} B: RSS before {before:.1} MB, during {during:.1} MB, after they left {after:.1} MB",
            n + 1
        );
    }
}
