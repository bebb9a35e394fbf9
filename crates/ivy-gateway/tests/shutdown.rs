//! SIGTERM on the real binary: it exits within 10 s, after publishing the meters and the gateway offline
//! (retained). Uses an MQTT 5 subscription with retain-as-published to see the retain flags.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway binary on loopback ports (`ws` 0 = off), its data in `dir`, with the admin user `adm`.
fn gateway_on(dir: &std::path::Path, meters: u16, mqtt: u16, ws: u16, http: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"));
    c.current_dir(dir)
        .env("DATA_DIR", dir)
        .env("TCP_HOST", "127.0.0.1")
        .env("TCP_PORT", meters.to_string())
        .env("MQTT_HOST", "127.0.0.1")
        .env("MQTT_PORT", mqtt.to_string())
        .env("MQTT_WS_PORT", ws.to_string())
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", http.to_string())
        .env("MQTT_USERS", "adm:admpass:admin");
    c
}

#[tokio::test]
async fn sigterm_stops_within_10_s_and_publishes_offline_retained() {
    let dir = tempfile::tempdir().unwrap();
    let (meters, mqtt, http) = (free_port(), free_port(), free_port());
    let mut child =
        gateway_on(dir.path(), meters, mqtt, 0, http).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();

    // Connect once the broker is up.
    let mut opts = MqttOptions::new("shutdown-watcher", "127.0.0.1", mqtt);
    opts.set_credentials("adm", "admpass");
    let started = Instant::now();
    let (client, mut ev) = loop {
        let (c, mut e) = AsyncClient::new(opts.clone(), 100);
        if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) =
            tokio::time::timeout(Duration::from_secs(2), e.poll()).await
        {
            break (c, e);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut filter = Filter::new("ivy/v1/#", QoS::AtLeastOnce);
    filter.preserve_retain = true;
    client.subscribe_many([filter]).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let json: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                let _ = tx.send((String::from_utf8_lossy(&p.topic).into_owned(), json, p.retain));
            }
        }
    });

    let meter = Arc::new(ivy_sim::dlt645::Dlt645Meter::new("000000001234".parse().unwrap()));
    let cfg = ivy_sim::dlt645::Dlt645Config {
        meters: vec![meter],
        identify: ivy_sim::dlt645::Identify::TalkFirst,
        latency: Default::default(),
        mute: false,
        faults: Default::default(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{meters}").parse().unwrap();
    let _sim = ivy_sim::dlt645::Dlt645Sim::connect(addr, cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (topic, json, _) =
            tokio::time::timeout_at(deadline.into(), rx.recv()).await.expect("meter online").unwrap();
        if topic == "ivy/v1/meters/000000001234/status" && json["online"] == true {
            break;
        }
    }

    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut meter_offline = None;
    let mut gateway_offline = None;
    while meter_offline.is_none() || gateway_offline.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((topic, json, retain))) => {
                if topic == "ivy/v1/meters/000000001234/status" && json["online"] == false {
                    meter_offline = Some((json, retain));
                } else if topic == "ivy/v1/gateway/status" && json["status"] == "offline" {
                    gateway_offline = Some(retain);
                }
            }
            _ => break,
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let (json, retain) = meter_offline.expect("meter offline status published");
    assert!(retain, "meter offline status must be retained");
    assert_eq!(json["reason"], "gateway_shutdown");
    assert_eq!(gateway_offline, Some(true), "gateway offline status published, retained");
}

fn recv(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 only once every listener accepts connections, WATCHDOG=1
/// at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM; the log on a pipe carries no colour codes.
#[test]
fn notifies_the_service_manager_and_logs_plain_text_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (meters, mqtt, ws, http) = (free_port(), free_port(), free_port(), free_port());
    let child = gateway_on(dir.path(), meters, mqtt, ws, http)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env_remove("NO_COLOR")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let ready = recv(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "first notification is readiness: {ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "{ready:?}");
    for port in [meters, mqtt, ws, http] {
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port {port} at READY: {e}"));
    }

    let since = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = recv(&sock);
        assert_eq!(msg, "WATCHDOG=1\n");
        pings += 1;
    }
    // Three keep-alives at 100 ms (half of 200 ms): never faster than the period, never near the timeout.
    let took = since.elapsed();
    assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(5), "3 keep-alives in {took:?}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let stopping = loop {
        let msg = recv(&sock);
        if msg != "WATCHDOG=1\n" {
            break msg;
        }
    };
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("gateway started"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log written to a pipe: {log:?}");
}
