//! Meter identity under attack (issue 11, docs/SECURITY-identity.md): takeover of an online meter's id, id
//! spraying, and rate limiting behind carrier NAT. The real gateway in-process on ephemeral 127.0.0.1 ports,
//! simulated meters and raw hostile sockets over TCP, real MQTT clients.

#[allow(dead_code)] // Shared with the service tests; this target uses part of it.
#[path = "service/harness.rs"]
mod harness;

use harness::*;

#[path = "common/ca.rs"]
mod ca;
#[path = "security_identity/meter_tls.rs"]
mod meter_tls;
use ivy_gateway::config::DuplicateIdentity;
use ivy_gateway::metrics::{ConflictOutcome, IdentityRefusal, RejectReason};
use ivy_protocol::dlms::Data;
use ivy_protocol::dlms::apdu::{Apdu, DataNotification};
use ivy_protocol::dlt645::{Address, Frame};
use ivy_sim::dlms::{DlmsConfig, DlmsMeter, DlmsSim};
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The impostor heartbeat: an EM114070 registration packet claiming `IVY000000001`.
const IMPOSTOR_HEARTBEAT: [u8; 26] = [
    0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x12, 0x0a, 0x02, 0x0c, 0x49, 0x56, 0x59, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0x30, 0x31, 0x0d, 0x00, 0x00,
];

fn em(id: &str, mute: bool) -> DlmsConfig {
    DlmsConfig { heartbeat: true, mute, ..DlmsConfig::new(Arc::new(DlmsMeter::em114070(id))) }
}

fn dlt(address: &str, mute: bool) -> (Arc<Dlt645Meter>, Dlt645Config) {
    let meter = Arc::new(Dlt645Meter::new(address.parse::<Address>().unwrap()));
    (meter.clone(), Dlt645Config { mute, ..Dlt645Config::talk_first(vec![meter]) })
}

/// A wrapped DataNotification carrying one voltage (1-0:12.7.0.255) of `volts`.
fn voltage_push(volts: u32) -> Vec<u8> {
    let pair = Data::Structure(vec![Data::OctetString(vec![1, 0, 12, 7, 0, 255]), Data::DoubleLongUnsigned(volts)]);
    let apdu =
        Apdu::DataNotification(DataNotification { long_invoke_id: 1, date_time: None, body: Data::Array(vec![pair]) });
    ivy_protocol::wrapper::wrap(0x0001, 0x0001, &apdu.encode()).unwrap()
}

/// A TCP connection to the gateway's meter port from a chosen 127.0.0.x address.
async fn connect_from(gateway: SocketAddr, local: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket.connect(gateway).await.unwrap()
}

/// Whether the gateway closes `s` within `secs` (reads until EOF or an error: a reset, a TLS alert).
async fn closed_by_gateway(s: &mut (impl tokio::io::AsyncRead + Unpin), secs: u64) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn online(c: &mut Client, meter: &str) -> Msg {
    let topic = format!("ivy/v1/meters/{meter}/status");
    c.wait(&format!("{meter} online"), 10, |m| m.topic == topic && m.json["online"] == true).await
}

fn conflicts(gw: &TestGateway, outcome: ConflictOutcome) -> u64 {
    gw.gw.meters().metrics.identity_conflicts(outcome)
}

// ---- Takeover ----------------------------------------------------------------------------------------------------

/// The example: honest `IVY000000001` online; a second connection sends its heartbeat, then a
/// DataNotification of 999 V. With the default policy the honest meter keeps its id, no reading is published under
/// it, the conflict is counted and published as a security event, and the impostor's connection is closed.
#[tokio::test]
async fn impostor_heartbeat_does_not_take_an_answering_meters_identity() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let honest = DlmsSim::connect(gw.meters(), em("IVY000000001", false)).await.unwrap();
    online(&mut c, "IVY000000001").await;
    let honest_port = honest_local_port(&gw, "IVY000000001");

    let mut impostor = TcpStream::connect(gw.meters()).await.unwrap();
    impostor.write_all(&IMPOSTOR_HEARTBEAT).await.unwrap();
    impostor.write_all(&voltage_push(999)).await.unwrap();

    let conflict = c
        .wait("identity_conflict", 10, |m| {
            m.topic == "ivy/v1/meters/IVY000000001/events" && m.json["event"] == "identity_conflict"
        })
        .await;
    assert_eq!(conflict.json["severity"], "warning");
    assert_eq!(conflict.json["data"]["policy"], "probe");
    assert_eq!(conflict.json["data"]["probe"], "answered");
    assert_eq!(conflict.json["data"]["outcome"], "refused");
    assert!(closed_by_gateway(&mut impostor, 5).await, "the impostor's connection must be closed");
    let rest = c.collect(1500).await;
    let under_id: Vec<&Msg> = rest.iter().filter(|m| m.topic.starts_with("ivy/v1/meters/IVY000000001/")).collect();
    assert!(
        under_id.iter().all(|m| !m.topic.ends_with("/telemetry") && !m.topic.ends_with("/snapshot")),
        "a reading was published under the honest meter's id: {under_id:?}"
    );
    assert!(under_id.iter().all(|m| !m.topic.ends_with("/status")), "the status changed: {under_id:?}");
    assert_eq!(gw.gw.meters().metrics.readings.get(), 0, "the 999 V push was decoded");
    assert_eq!(conflicts(&gw, ConflictOutcome::Refused), 1);
    assert_eq!(conflicts(&gw, ConflictOutcome::TakenOver), 0);
    // The honest meter still holds its id: a command reaches it.
    assert_eq!(honest_local_port(&gw, "IVY000000001"), honest_port);
    let before = honest.stats.requests.load(Ordering::Relaxed);
    let r = c
        .command("IVY000000001", json!({"id": "v", "method": "read_register", "params": {"register": "VOLTAGE_TOTAL"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert!(honest.stats.requests.load(Ordering::Relaxed) > before);
    let metrics = gw.gw.meters().metrics.encode();
    assert!(metrics.contains("ivy_identity_conflicts_total{outcome=\"refused\"} 1"), "{metrics}");
}

fn honest_local_port(gw: &TestGateway, meter: &str) -> u16 {
    let id = ivy_protocol::registration::MeterId::new(meter).unwrap();
    gw.gw.meters().registry.get(&id).expect("registered").1.port
}

/// What `newest_wins` gives away: the same impostor takes the id and its 999 V push is published. (This also
/// shows the test above would see a reading if one were published.)
#[tokio::test]
async fn with_newest_wins_the_impostor_takes_the_identity() {
    let gw = start(|c| c.meters.duplicate_identity = DuplicateIdentity::NewestWins).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let _honest = DlmsSim::connect(gw.meters(), em("IVY000000001", false)).await.unwrap();
    online(&mut c, "IVY000000001").await;
    let mut impostor = TcpStream::connect(gw.meters()).await.unwrap();
    impostor.write_all(&IMPOSTOR_HEARTBEAT).await.unwrap();
    impostor.write_all(&voltage_push(999)).await.unwrap();
    let reading = c.wait("the impostor's reading", 10, |m| m.topic == "ivy/v1/meters/IVY000000001/telemetry").await;
    assert_eq!(reading.json["register"], "VOLTAGE_TOTAL", "{:?}", reading.json);
    assert_eq!(conflicts(&gw, ConflictOutcome::TakenOver), 1);
}

/// Own input, DL/T 645: an impostor sends a data frame from an online meter's address with 999.9 V. The meter
/// answers the probe (a read of its communication address), keeps its id, and no reading is published.
#[tokio::test]
async fn impostor_dlt645_frame_does_not_take_an_answering_meters_identity() {
    let gw = start(|c| c.meters.identify_after_secs = 60).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let (_meter, cfg) = dlt("000000004321", false);
    let honest = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
    online(&mut c, "000000004321").await;
    c.collect(300).await;
    let mut impostor = TcpStream::connect(gw.meters()).await.unwrap();
    let frame = Frame::read_reply("000000004321".parse().unwrap(), 0x0201_0100.into(), &[0x99, 0x99], false).unwrap();
    impostor.write_all(&frame.encode_with_preamble(0)).await.unwrap();
    let conflict = c.wait("identity_conflict", 10, |m| m.json["event"] == "identity_conflict").await;
    assert_eq!(conflict.json["data"]["outcome"], "refused");
    assert!(closed_by_gateway(&mut impostor, 5).await);
    let rest = c.collect(1000).await;
    assert!(rest.iter().all(|m| !m.topic.ends_with("/telemetry") && !m.topic.ends_with("/status")), "{rest:?}");
    assert!(honest.stats.requests.load(Ordering::Relaxed) >= 1, "the probe reached the honest meter");
    let r = c.command("000000004321", json!({"id": "a", "method": "read_address"})).await;
    assert_eq!(r["success"], true, "{r}");
}

/// A holder that no longer answers (a half-open connection the meter abandoned) loses the id to the newcomer,
/// with the ordinary reconnect semantics and a `taken_over` conflict.
#[tokio::test]
async fn a_silent_holder_loses_the_id_to_the_newcomer() {
    let gw = start(|c| c.meters.identity_probe_timeout_ms = 800).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let _dead = DlmsSim::connect(gw.meters(), em("000000000321", true)).await.unwrap();
    online(&mut c, "000000000321").await;
    let _new = DlmsSim::connect(gw.meters(), em("000000000321", false)).await.unwrap();
    let msgs = c.until("meter_reconnected", 10, |m| m.json["event"] == "meter_reconnected").await;
    let conflict = msgs.iter().find(|m| m.json["event"] == "identity_conflict").expect("conflict event");
    assert_eq!(conflict.json["data"]["probe"], "silent");
    assert_eq!(conflict.json["data"]["outcome"], "taken_over");
    assert_eq!(conflicts(&gw, ConflictOutcome::TakenOver), 1);
}

/// `oldest_wins`: the holder keeps the id while its connection is open, even when it does not answer.
#[tokio::test]
async fn with_oldest_wins_the_holder_keeps_the_id_without_a_probe() {
    let gw = start(|c| c.meters.duplicate_identity = DuplicateIdentity::OldestWins).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let dead = DlmsSim::connect(gw.meters(), em("000000000322", true)).await.unwrap();
    online(&mut c, "000000000322").await;
    let mut newcomer = TcpStream::connect(gw.meters()).await.unwrap();
    newcomer.write_all(&ivy_sim::dlms::heartbeat("000000000322")).await.unwrap();
    let conflict = c.wait("identity_conflict", 10, |m| m.json["event"] == "identity_conflict").await;
    assert_eq!(conflict.json["data"]["probe"], "not_probed");
    assert_eq!(conflict.json["data"]["outcome"], "refused");
    assert!(closed_by_gateway(&mut newcomer, 5).await);
    assert_eq!(dead.stats.requests.load(Ordering::Relaxed), 0, "no probe under oldest_wins");
}

/// After a contest, a relay command (DL/T 645 password and operator code) fails with `identity_contested` and
/// nothing is sent; with `secrets_quiet_secs = 0` the same command goes through.
#[tokio::test]
async fn secrets_are_withheld_after_a_contest() {
    for quiet in [300, 0] {
        let gw = start(|c| {
            c.meters.identify_after_secs = 60;
            c.meters.secrets_quiet_secs = quiet;
        })
        .await;
        let mut c = client(gw.mqtt(), OPERATOR, &["ivy/v1/meters/#"]).await;
        let (_meter, cfg) = dlt("000000007000", false);
        let honest = Dlt645Sim::connect(gw.meters(), cfg).await.unwrap();
        online(&mut c, "000000007000").await;
        let mut impostor = TcpStream::connect(gw.meters()).await.unwrap();
        impostor.write_all(&Frame::read_address_reply("000000007000".parse().unwrap()).encode()).await.unwrap();
        c.wait("identity_conflict", 10, |m| m.json["event"] == "identity_conflict").await;
        let r = c
            .command("000000007000", json!({"id": "trip", "method": "relay_control", "params": {"state": "open"}}))
            .await;
        if quiet > 0 {
            assert_eq!(r["code"], "identity_contested", "{r}");
            assert_eq!(honest.stats.relay_operations.load(Ordering::Relaxed), 0);
            assert_eq!(honest.stats.auth_failures.load(Ordering::Relaxed), 0, "no credentials were sent");
            assert_eq!(gw.gw.meters().metrics.secrets_withheld.get(), 1);
            // Commands without secrets still work.
            let r = c.command("000000007000", json!({"id": "addr", "method": "read_address"})).await;
            assert_eq!(r["success"], true, "{r}");
        } else {
            assert_eq!(r["success"], true, "{r}");
            assert_eq!(honest.stats.relay_operations.load(Ordering::Relaxed), 1);
        }
    }
}

// ---- Source allow-lists ------------------------------------------------------------------------------------------

/// `meters.allowed_sources`: a connection from outside is closed at accept and counted; one from inside works.
/// `meters.allowed_sources_by_meter`: that id may identify only from its networks; other ids are unaffected.
#[tokio::test]
async fn source_allow_lists() {
    let gw = start(|c| {
        c.meters.allowed_sources = vec!["127.0.0.2/32".into(), "127.0.0.3".into()];
        c.meters.allowed_sources_by_meter.insert("000000000777".into(), vec!["127.0.0.3/32".into()]);
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let mut outside = connect_from(gw.meters(), "127.0.0.1".parse().unwrap()).await;
    let _ = outside.write_all(&ivy_sim::dlms::heartbeat("000000000111")).await;
    assert!(closed_by_gateway(&mut outside, 5).await);
    assert_eq!(
        gw.gw.meters().metrics.connections_rejected.get_or_create(&reason(RejectReason::SourceNotAllowed)).get(),
        1
    );
    // Inside: an ordinary meter identifies; the pinned meter only from its own address.
    let _ok = DlmsSim::connect_from(gw.meters(), Some("127.0.0.2".parse().unwrap()), em("000000000111", false))
        .await
        .unwrap();
    online(&mut c, "000000000111").await;
    let mut wrong = connect_from(gw.meters(), "127.0.0.2".parse().unwrap()).await;
    wrong.write_all(&ivy_sim::dlms::heartbeat("000000000777")).await.unwrap();
    assert!(closed_by_gateway(&mut wrong, 5).await);
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::SourceNotAllowed), 1);
    let _pinned = DlmsSim::connect_from(gw.meters(), Some("127.0.0.3".parse().unwrap()), em("000000000777", false))
        .await
        .unwrap();
    let status = online(&mut c, "000000000777").await;
    assert_eq!(status.json["ip"], "127.0.0.3");
}

fn reason(reason: RejectReason) -> ivy_gateway::metrics::ReasonLabel {
    ivy_gateway::metrics::ReasonLabel { reason }
}

// ---- Spraying ----------------------------------------------------------------------------------------------------

/// The example: one socket sends 20,000 heartbeats with distinct ids. The connection is capped at
/// `meters.max_ids_per_connection` (32) and closed; every meter published online gets its offline.
#[tokio::test]
async fn one_socket_spraying_20000_heartbeats_is_capped() {
    let gw = start(|_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status"]).await;
    let mut s = TcpStream::connect(gw.meters()).await.unwrap();
    let mut burst = Vec::with_capacity(20_000 * 26);
    for n in 0..20_000u32 {
        burst.extend_from_slice(&ivy_sim::dlms::heartbeat(&format!("{n:012}")));
    }
    // The gateway closes the socket before it has read everything: a failed write is expected.
    let _ = s.write_all(&burst).await;
    assert!(closed_by_gateway(&mut s, 10).await, "the sprayer must be disconnected");
    eventually("every sprayed id offline", 10, || gw.gw.meters().registry.is_empty()).await;
    let msgs = c.collect(1500).await;
    let online: Vec<&str> =
        msgs.iter().filter(|m| m.json["online"] == true).filter_map(|m| m.json["meterId"].as_str()).collect();
    let offline: Vec<&str> =
        msgs.iter().filter(|m| m.json["online"] == false).filter_map(|m| m.json["meterId"].as_str()).collect();
    assert_eq!(online.len(), 32, "capped at max_ids_per_connection");
    let mut a = online.clone();
    let mut b = offline.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "every online status gets its offline");
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::TooManyIds), 1);
}

/// Own input, DL/T 645 behind one DTU: frames from 100 addresses on one connection. 32 meters are held, the others
/// ignored (the connection stays up for them), and all 32 go offline when it closes.
#[tokio::test]
async fn a_dtu_claiming_100_addresses_is_capped_and_keeps_its_first_32() {
    let gw = start(|c| c.meters.identify_after_secs = 60).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status"]).await;
    let mut s = TcpStream::connect(gw.meters()).await.unwrap();
    for n in 0..100u32 {
        let frame = Frame::read_address_reply(format!("{:012}", 500_000 + n).parse().unwrap());
        s.write_all(&frame.encode()).await.unwrap();
    }
    eventually("32 held", 10, || gw.gw.meters().registry.len() == 32).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.gw.meters().registry.len(), 32);
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::TooManyIds), 68);
    drop(s);
    eventually("all offline", 10, || gw.gw.meters().registry.is_empty()).await;
    let msgs = c.collect(1000).await;
    assert_eq!(msgs.iter().filter(|m| m.json["online"] == true).count(), 32);
    assert_eq!(msgs.iter().filter(|m| m.json["online"] == false).count(), 32);
}

/// Own input: new ids per source per minute. Three connections from one address bring 3 × 5 ids; with a limit of
/// 8, the second connection keeps 3 of its ids and the third is refused and closed.
#[tokio::test]
async fn new_ids_per_source_are_rate_limited() {
    let gw = start(|c| {
        c.meters.identify_after_secs = 60;
        c.meters.max_new_ids_per_ip_per_minute = 8;
    })
    .await;
    let mut sockets = Vec::new();
    for conn in 0..3u32 {
        let mut s = TcpStream::connect(gw.meters()).await.unwrap();
        for n in 0..5u32 {
            let frame = Frame::read_address_reply(format!("{:012}", 600_000 + conn * 10 + n).parse().unwrap());
            s.write_all(&frame.encode()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        sockets.push(s);
    }
    eventually("8 held", 10, || gw.gw.meters().registry.len() == 8).await;
    // The second connection's last two ids, and the third connection's first (which closes it: it holds nothing).
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::NewIdRate), 3);
}

/// Status transitions are never dropped: 20,000 ids on one connection (the cap raised to allow it) go offline at
/// once when it closes: 40,000 status and lifecycle events, more than a sink's queue holds. Every meter's last
/// published status is offline (a transition still waiting when a later one of the same meter comes is replaced
/// by it, so a subscriber never sees a stale state), and the sinks' reserve was used.
#[tokio::test]
async fn twenty_thousand_ids_going_offline_at_once_all_publish_their_offline() {
    const N: usize = 20_000;
    let gw = start(|c| {
        c.meters.max_ids_per_connection = std::num::NonZeroUsize::new(N).unwrap();
        c.meters.max_new_ids_per_ip_per_minute = 0;
    })
    .await;
    let (c, last) = status_tracker(gw.mqtt()).await;
    let mut s = TcpStream::connect(gw.meters()).await.unwrap();
    let mut burst = Vec::with_capacity(N * 26);
    for n in 0..N {
        burst.extend_from_slice(&ivy_sim::dlms::heartbeat(&format!("{n:012}")));
    }
    s.write_all(&burst).await.unwrap();
    eventually("all online", 60, || gw.gw.meters().registry.len() == N).await;
    drop(s);
    eventually("all offline in the registry", 30, || gw.gw.meters().registry.is_empty()).await;
    let all_offline = || {
        let last = last.lock().unwrap();
        last.len() == N && last.values().all(|online| !online)
    };
    eventually("every meter's last status offline", 60, all_offline).await;
    let sinks = gw.gw.stats().payload()["hub"]["sinks"].clone();
    assert!(sinks["mqtt"]["reserved"].as_u64().unwrap_or(0) > 0, "the reserve was not needed: {sinks}");
    assert_eq!(sinks["mqtt"]["dropped"], 0, "{sinks}");
    assert_eq!(sinks["alarms"]["dropped"], 0, "{sinks}");
    c.client.disconnect().await.ok();
}

type LastStatus = Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>;

/// A QoS 0 subscriber to every status that keeps each meter's last `online` (fast enough for 40,000 messages).
async fn status_tracker(mqtt: SocketAddr) -> (Client, LastStatus) {
    let mut c = client(mqtt, ADMIN, &[]).await;
    c.client.subscribe("ivy/v1/meters/+/status", rumqttc::QoS::AtMostOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.suback.recv()).await.unwrap();
    let last: LastStatus = Default::default();
    // The client's own receiver goes to a tracking task (the placeholder left in its place stays empty).
    let mut source = std::mem::replace(&mut c.rx, tokio::sync::mpsc::unbounded_channel().1);
    let tracking = last.clone();
    tokio::spawn(async move {
        while let Some(m) = source.recv().await {
            if let Some(id) = m.json["meterId"].as_str() {
                tracking.lock().unwrap().insert(id.to_owned(), m.json["online"] == true);
            }
        }
    });
    (c, last)
}

// ---- Carrier NAT -------------------------------------------------------------------------------------------------

/// An abusive peer on 127.0.0.1 (connections that close without a word, connections that stay silent) penalises
/// the address; an identified meter behind the same address still re-dials and identifies every time, and it is the
/// abuser's idle connections that get closed.
#[tokio::test]
async fn an_abusive_peer_does_not_lock_out_a_meter_behind_the_same_address() {
    let gw = start(|c| {
        c.meters.max_connection_attempts = std::num::NonZeroU32::new(5).unwrap();
        c.meters.max_unidentified_per_penalised_ip = std::num::NonZeroUsize::new(3).unwrap();
        c.meters.detection_timeout_secs = 30;
    })
    .await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/meters/+/status"]).await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    for _ in 0..20 {
        let mut s = connect_from(gw.meters(), lo).await;
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        drop(s);
    }
    eventually("strikes", 10, || gw.gw.meters().metrics.connections_unidentified.get() >= 20).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(connect_from(gw.meters(), lo).await);
    }
    // The meter re-dials 10 times from the same address; every dial identifies.
    for n in 0..10 {
        let sim = DlmsSim::connect_from(gw.meters(), Some(lo), em("000000000900", false)).await.unwrap();
        let status = c.wait(&format!("dial {n} online"), 10, |m| m.json["online"] == true).await;
        assert_eq!(status.json["meterId"], "000000000900");
        sim.close().await;
        c.wait(&format!("dial {n} offline"), 10, |m| m.json["online"] == false).await;
    }
    let evicted = gw.gw.meters().metrics.connections_rejected.get_or_create(&reason(RejectReason::RateLimited)).get();
    assert!(evicted >= 7, "the abuser's idle connections were closed to make room: {evicted}");
    let mut closed = 0;
    for s in &mut idle {
        if closed_by_gateway(s, 1).await {
            closed += 1;
        }
    }
    assert!(closed >= 7, "idle connections closed: {closed}");
}
