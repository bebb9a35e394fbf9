//! Protocol detection and meter identification.

use crate::harness::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlms::{DlmsConfig, DlmsMeter, DlmsSim};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim, Identify};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

fn dlt(address: &str, identify: Identify) -> Dlt645Config {
    Dlt645Config {
        meters: vec![Arc::new(Dlt645Meter::new(address.parse::<Address>().unwrap()))],
        identify,
        latency: Default::default(),
        mute: false,
        faults: Default::default(),
    }
}

fn em(id: &str) -> DlmsConfig {
    DlmsConfig { heartbeat: true, ..DlmsConfig::new(Arc::new(DlmsMeter::em114070(id))) }
}

async fn online(c: &mut Client, meter: &str) -> Msg {
    let topic = format!("ivy/v1/meters/{meter}/status");
    c.wait(&format!("{meter} online"), 10, |m| m.topic == topic && m.json["online"] == true).await
}

#[tokio::test]
async fn silent_dlt645_meter_is_identified_by_the_read_address_probe() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let sim = Dlt645Sim::connect(gw.meters(), dlt("000000001234", Identify::Silent)).await.unwrap();
    let status = online(&mut c, "000000001234").await;
    assert_eq!(status.json["protocol"], "dlt645");
    // Retained: a client that subscribes later gets it.
    let late = retained(gw.mqtt(), "ivy/v1/meters/000000001234/status").await;
    assert_eq!(late.json["online"], true);
    assert!(late.retain);
    assert!(sim.stats.requests.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the probe reached the meter");
}

#[tokio::test]
async fn talking_dlt645_meter_is_identified_by_its_address() {
    let gw = start(|c| c.meters.identify_after_secs = 60).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let _sim = Dlt645Sim::connect(gw.meters(), dlt("311501114070", Identify::TalkFirst)).await.unwrap();
    let status = online(&mut c, "311501114070").await;
    assert_eq!(status.json["protocol"], "dlt645");
    let event =
        c.wait("meter_connected", 5, |m| m.topic.ends_with("/events") && m.json["event"] == "meter_connected").await;
    assert_eq!(event.json["meterId"], "311501114070");
}

#[tokio::test]
async fn em114070_meter_is_identified_by_its_heartbeat() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let _sim = DlmsSim::connect(gw.meters(), em("311501114070")).await.unwrap();
    let status = online(&mut c, "311501114070").await;
    assert_eq!(status.json["protocol"], "dlms");
}

#[tokio::test]
async fn fe_preamble_and_split_wrapper_starts_are_detected() {
    let gw = start(|c| c.meters.identify_after_secs = 60).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    // DL/T 645 with a wake-up preamble in the first chunk.
    let mut s = tokio::net::TcpStream::connect(gw.meters()).await.unwrap();
    let reply = ivy_protocol::dlt645::Frame::read_address_reply("000000005678".parse().unwrap());
    s.write_all(&reply.encode_with_preamble(2)).await.unwrap();
    online(&mut c, "000000005678").await;
    // The EM114070 heartbeat split after its first byte.
    let hb = ivy_sim::dlms::heartbeat("000000009999");
    let mut s2 = tokio::net::TcpStream::connect(gw.meters()).await.unwrap();
    s2.write_all(&hb[..1]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s2.write_all(&hb[1..]).await.unwrap();
    let status = online(&mut c, "000000009999").await;
    assert_eq!(status.json["protocol"], "dlms");
    drop((s, s2));
}

#[tokio::test]
async fn heartbeat_with_an_invalid_id_is_rejected_and_publishes_nothing() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let mut s = tokio::net::TcpStream::connect(gw.meters()).await.unwrap();
    let mut hb = ivy_sim::dlms::heartbeat("00000000a/#+");
    hb[11..23].copy_from_slice(b"00000000a/#+");
    s.write_all(&hb).await.unwrap();
    // The gateway closes the connection ...
    let mut buf = [0u8; 16];
    let n =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "connection should be closed: {n:?}");
    // ... and publishes no status or event at all.
    let msgs = c.collect(1500).await;
    assert!(msgs.iter().all(|m| !m.topic.contains("/meters/")), "published: {msgs:?}");
    assert_eq!(gw.gw.meters().registry.len(), 0);
}
