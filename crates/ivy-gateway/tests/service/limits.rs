//! Several meters per connection, idle timeout, objects the meter does not have, stats, MQTT over WebSocket.

use crate::harness::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlms::{DlmsConfig, DlmsMeter, DlmsSim};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn several_dlt645_addresses_on_one_connection_are_separate_meters() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/#"]).await;
    let a = Arc::new(Dlt645Meter::new("000000000001".parse::<Address>().unwrap()));
    let b = Arc::new(Dlt645Meter::new("000000000002".parse::<Address>().unwrap()));
    b.set(0x0201_0100, 219.9);
    let cfg = Dlt645Config::talk_first(vec![a, b]);
    let _sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    for id in ["000000000001", "000000000002"] {
        let topic = format!("ivy/v1/meters/{id}/status");
        c.wait(id, 10, |m| m.topic == topic && m.json["online"] == true).await;
    }
    let r1 = c
        .command("000000000001", json!({"id": "a", "method": "read_register", "params": {"register": "VOLTAGE_A"}}))
        .await;
    let r2 = c
        .command("000000000002", json!({"id": "b", "method": "read_register", "params": {"register": "VOLTAGE_A"}}))
        .await;
    assert_eq!(r1["result"]["value"], 230.1, "{r1}");
    assert_eq!(r2["result"]["value"], 219.9, "{r2}");
    assert_eq!(gw.gw.meters().registry.len(), 2);
}

#[tokio::test]
async fn a_meter_that_stops_sending_is_closed_at_the_idle_timeout() {
    let gw = start(|c| c.meters.idle_timeout_secs = 1).await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/#"]).await;
    let cfg = Dlt645Config::talk_first(vec![Arc::new(Dlt645Meter::new("000000000042".parse::<Address>().unwrap()))]);
    let sim = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    let online = c.wait("online", 10, |m| m.topic.ends_with("/status") && m.json["online"] == true).await;
    let offline = c.wait("offline", 10, |m| m.topic.ends_with("/status") && m.json["online"] == false).await;
    assert_eq!(offline.json["reason"], "idle_timeout");
    // The offline status names the connection that ended; no gateway id is configured.
    assert!(online.json["connectedAt"].as_u64().is_some(), "{:?}", online.json);
    assert_eq!(offline.json["connectedAt"], online.json["connectedAt"]);
    assert!(online.json.get("gatewayId").is_none() && offline.json.get("gatewayId").is_none());
    let ev = c.wait("meter_disconnected", 5, |m| m.json["event"] == "meter_disconnected").await;
    assert_eq!(ev.json["data"]["reason"], "idle_timeout");
    eventually("socket closed", 5, || sim.is_finished()).await;
}

#[tokio::test]
async fn objects_the_meter_does_not_have_are_not_polled_again() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 300;
        c.polling.first_poll_delay_ms = 0;
        c.dlms.passive_only = false;
        c.polling.group = "mine".into();
        // 1-0:32.7.0.255 is not on the EM114070 (the real scan answered object-undefined).
        c.polling.dlms_groups.insert("mine".into(), vec!["1-0:12.7.0.255".into(), "1-0:32.7.0.255".into()]);
    })
    .await;
    let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/+/snapshot"]).await;
    let cfg = DlmsConfig { heartbeat: true, ..DlmsConfig::new(Arc::new(DlmsMeter::em114070("000000000606"))) };
    let sim = DlmsSim::connect(gw.meters(), cfg).await.unwrap();
    for _ in 0..3 {
        c.wait("a poll cycle", 10, |m| m.topic.ends_with("/snapshot")).await;
    }
    // First cycle: value and scaler reads of 32.7.0 are both undefined; later cycles skip it entirely.
    assert_eq!(sim.stats.undefined.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn gateway_stats_are_published_every_interval() {
    let gw = start(|c| c.gateway.stats_interval_secs = 1).await;
    let mut c = client(gw.mqtt(), VIEWER, &["ivy/v1/gateway/#"]).await;
    let s = c.wait("stats", 5, |m| m.topic == "ivy/v1/gateway/stats").await;
    for key in ["ts", "uptime", "version", "meters", "connections", "mqtt", "polling", "alarms", "outbox", "memory"] {
        assert!(s.json.get(key).is_some(), "stats lack {key}: {}", s.json);
    }
    let status = retained(gw.mqtt(), "ivy/v1/gateway/status").await;
    assert_eq!(status.json["status"], "online");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn mqtt_over_websocket() {
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = start(|c| c.mqtt.ws_port = ws_port).await;
    let ws = gw.gw.addrs().mqtt_ws.expect("WebSocket listener");
    let mut opts = rumqttc::MqttOptions::new("ws-client", format!("ws://{ws}/mqtt"), ws.port());
    opts.set_transport(rumqttc::Transport::Ws);
    opts.set_credentials(VIEWER.0, VIEWER.1);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 10);
    client.subscribe("ivy/v1/gateway/status", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev.poll().await {
                return serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap();
            }
        }
    })
    .await
    .expect("retained gateway status over WebSocket");
    assert_eq!(got["status"], "online");
}
