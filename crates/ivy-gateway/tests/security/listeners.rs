//! Descriptor exhaustion: idle and slow HTTP connections are capped and timed out, while meters, MQTT clients and
//! the API itself still get in.

use crate::harness::*;
use crate::report;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closed `s` (EOF or reset) within `ms`.
async fn closed_within(s: &mut TcpStream, ms: u64) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_millis(ms), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_http_connections_are_capped_and_timed_out_while_meters_and_mqtt_connect() {
    let gw = start(|c| {
        c.http.max_connections = std::num::NonZeroUsize::new(20).unwrap();
        c.http.header_timeout_secs = 1;
    })
    .await;
    let http = gw.gw.addrs().http.unwrap();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(http).await.unwrap());
    }
    // Over the cap: closed at once.
    let mut refused = 0;
    for s in idle.iter_mut().skip(20) {
        refused += usize::from(closed_within(s, 500).await);
    }
    // Meanwhile the other planes are unaffected.
    let meter = Arc::new(Dlt645Meter::new("000000007003".parse::<Address>().unwrap()));
    let _sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    eventually("a new meter online", 10, || gw.gw.meters().registry.len() == 1).await;
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(rumqttc::ConnectReturnCode::Success));
    // Silent connections, a slow-loris sending half a header, and an idle keep-alive connection: all closed after
    // the header timeout.
    let mut slow = TcpStream::connect(http).await;
    let mut timed_out = 0;
    for s in idle.iter_mut().take(20) {
        timed_out += usize::from(closed_within(s, 3000).await);
    }
    if let Ok(s) = slow.as_mut() {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        timed_out += usize::from(closed_within(s, 3000).await);
    }
    let mut keep_alive = TcpStream::connect(http).await.unwrap();
    keep_alive.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    keep_alive.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    timed_out += usize::from(closed_within(&mut keep_alive, 3000).await);
    // The API answers again.
    let health = reqwest::get(format!("http://{http}/health")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert!(gw.gw.meters().metrics.http_connections_refused.get() >= 40);
    report("http connections over the cap", 40, refused);
    report("http connections idle past the header timeout", 22, timed_out);
}

#[tokio::test]
async fn the_live_stream_outlives_the_header_timeout() {
    let gw = start(|c| c.http.header_timeout_secs = 1).await;
    let base = format!("http://{}", gw.gw.addrs().http.unwrap());
    let mut stream = reqwest::Client::new()
        .get(format!("{base}/api/stream"))
        .basic_auth(VIEWER.0, Some(VIEWER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), reqwest::StatusCode::OK);
    let hello = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&hello).contains("hello"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let meter = Arc::new(Dlt645Meter::new("000000007004".parse::<Address>().unwrap()));
    let _sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.expect("an event").unwrap();
    assert!(next.is_some_and(|b| String::from_utf8_lossy(&b).contains("000000007004")), "the stream is still open");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let l = ivy_gateway::descriptors::raise_nofile_limit().unwrap();
    assert_eq!(l.soft, l.hard);
}

/// Opens `n` TCP connections to `addr` that never send a byte; returns how many the gateway closed within 5 s.
async fn silent_closed(addr: std::net::SocketAddr, n: usize) -> usize {
    let mut silent = Vec::new();
    for _ in 0..n {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut closed = 0;
    for s in silent.iter_mut() {
        closed += usize::from(closed_within(s, 5000).await);
    }
    closed
}

#[tokio::test]
async fn silent_meter_connections_are_closed_at_the_detection_timeout() {
    let gw = start(|c| c.meters.detection_timeout_secs = 1).await;
    let closed = silent_closed(gw.meters(), 10).await;
    report("silent meter connections past the detection timeout", 10, closed);
}

/// Connections to the MQTT ports that never send their CONNECT are closed at `mqtt.handshake_timeout_secs`: 1100
/// silent TCP connections to the MQTT port, 1100 to the WebSocket port (550 silent from the start, 550 silent
/// after a completed WebSocket upgrade), and a CONNECT cut short. Meanwhile and afterwards a real client connects.
#[tokio::test]
async fn silent_mqtt_connections_are_closed_at_the_handshake_timeout() {
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = start(|c| {
        c.mqtt.handshake_timeout_secs = 1;
        c.mqtt.ws_port = ws_port;
    })
    .await;
    let ws = gw.gw.addrs().mqtt_ws.expect("WebSocket listener");
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..1100 {
        silent.push(TcpStream::connect(gw.mqtt()).await.unwrap());
    }
    for n in 0..1100 {
        let mut s = TcpStream::connect(ws).await.unwrap();
        if n % 2 == 0 {
            s.write_all(WS_UPGRADE).await.unwrap();
        }
        silent.push(s);
    }
    // Half a CONNECT (fixed header announcing 16 bytes, then 4 of them).
    let mut partial = TcpStream::connect(gw.mqtt()).await.unwrap();
    partial.write_all(&[0x10, 0x10, 0x00, 0x04, b'M', b'Q']).await.unwrap();
    silent.push(partial);
    // A real client gets in while they are open.
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(rumqttc::ConnectReturnCode::Success));
    let mut closed = 0;
    for s in silent.iter_mut() {
        closed += usize::from(closed_within(s, 5000).await);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "closing took {took:?}");
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(rumqttc::ConnectReturnCode::Success));
    report("silent MQTT and WebSocket connections past the handshake timeout", 2201, closed);
}

/// A WebSocket upgrade request for MQTT (RFC 6455 sample key).
const WS_UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// `mqtt.max_connections` caps each MQTT listener: over it a connection is closed at accept, and once the
/// connections holding the listener are gone (here: closed at the handshake timeout) clients get in again.
#[tokio::test]
async fn mqtt_connections_over_the_listener_cap_are_closed_at_accept() {
    let gw = start(|c| {
        c.mqtt.max_connections = std::num::NonZeroUsize::new(20).unwrap();
        c.mqtt.handshake_timeout_secs = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(TcpStream::connect(gw.mqtt()).await.unwrap());
    }
    let mut refused = 0;
    for s in held.iter_mut().skip(20) {
        refused += usize::from(closed_within(s, 500).await);
    }
    for s in held.iter_mut().take(20) {
        assert!(closed_within(s, 5000).await, "a silent connection under the cap outlived the handshake timeout");
    }
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(rumqttc::ConnectReturnCode::Success));
    let metrics = reqwest::get(format!("http://{}/metrics", gw.gw.addrs().http.unwrap())).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("ivy_mqtt_connections_refused_total 10"), "{metrics}");
    report("MQTT connections over the listener cap (30 silent, cap 20)", 10, refused);
}
