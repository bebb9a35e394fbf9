//! TLS on the meter port (docs/SECURITY-identity.md, "TLS on the meter port"): a meter presents a client
//! certificate of the configured CA and may identify only as a meter id the certificate names. Certificates are made
//! here with rcgen: a CA, the gateway's server certificate, and meter certificates naming ids by DNS SAN or by CN.

use super::{closed_by_gateway, em, online, voltage_push};
use crate::ca::{TestCa as Ca, with_certificate};
use crate::harness::*;
use ivy_gateway::metrics::{ConflictOutcome, IdentityRefusal};
use ivy_protocol::dlt645::Frame;
use ivy_sim::dlms::{DlmsSim, PushForm};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A gateway with the TLS meter port on (CA `ca` for meters, server certificate from `ca` too), plain port kept.
async fn start_tls(dir: &Path, ca: &Ca, tweak: impl FnOnce(&mut ivy_gateway::config::Config)) -> TestGateway {
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], "ivy-gateway meters", ExtendedKeyUsagePurpose::ServerAuth);
    for (name, text) in [("meters.crt", &cert), ("meters.key", &key), ("meter-ca.crt", &ca.pem)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    start(|c| {
        c.meters.tls_port = 0;
        c.meters.tls_cert = Some(dir.join("meters.crt"));
        c.meters.tls_key = Some(dir.join("meters.key"));
        c.meters.tls_client_ca = Some(dir.join("meter-ca.crt"));
        c.meters.tls_handshake_timeout_secs = 1;
        tweak(c);
    })
    .await
}

fn tls_addr(gw: &TestGateway) -> SocketAddr {
    gw.gw.addrs().meters_tls.expect("the TLS meter port listens")
}

async fn tls_stream(
    gw: &TestGateway,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    ivy_sim::connect_tls(tls_addr(gw), None, config, "127.0.0.1").await
}

fn tls_failures(gw: &TestGateway, reason: &str) -> u64 {
    gw.gw.meters().metrics.meter_tls_failures(reason)
}

/// The right certificate: an EM114070 over TLS whose certificate names it (DNS SAN) comes online, its pushes are
/// published and a command reaches it; a DL/T 645 meter whose certificate names its address only in the CN
/// (no SAN) identifies from its frames and its reading is published.
#[tokio::test]
async fn meter_with_a_certificate_naming_its_id_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;

    let mut cfg = em("IVY000000001", false);
    cfg.push = Some((Duration::from_millis(200), PushForm::DataNotification));
    let meter = ca.meter_client(&ca, &["IVY000000001"], "ignored when there are SANs");
    let sim = DlmsSim::connect_tls(tls_addr(&gw), meter, "127.0.0.1", cfg).await.unwrap();
    online(&mut c, "IVY000000001").await;
    c.wait("a reading over TLS", 10, |m| m.topic == "ivy/v1/meters/IVY000000001/telemetry").await;
    let r = c
        .command("IVY000000001", json!({"id": "v", "method": "read_register", "params": {"register": "VOLTAGE_TOTAL"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let id = ivy_protocol::registration::MeterId::new("IVY000000001").unwrap();
    assert!(gw.gw.meters().registry.get(&id).unwrap().1.certified);

    // DL/T 645, id in the CN only.
    let meter = ca.meter_client(&ca, &[], "000000004321");
    let mut s = tls_stream(&gw, meter).await.unwrap();
    let frame = Frame::read_reply("000000004321".parse().unwrap(), 0x0201_0100.into(), &[0x99, 0x99], false).unwrap();
    s.write_all(&frame.encode()).await.unwrap();
    online(&mut c, "000000004321").await;
    c.wait("the DL/T 645 reading", 10, |m| m.topic == "ivy/v1/meters/000000004321/telemetry").await;
    assert_eq!(gw.gw.meters().metrics.meter_tls_handshakes.get(), 2);
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::CertificateMismatch), 0);
    println!("SECURITY meter TLS, right certificate: inputs tried 2 / survived 2 / lost 0");
    sim.close().await;
}

/// A certificate of the gateway's CA used to claim another id: refused and closed, nothing published under the
/// id, counted, and an `identity_conflict` event on the claimed id's events topic. Tried with an EM114070
/// heartbeat (SAN names another meter) and a DL/T 645 address (CN names another address).
#[tokio::test]
async fn certificate_for_another_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let mut lost = 0;

    let mut s = tls_stream(&gw, ca.meter_client(&ca, &["IVY000000002"], "x")).await.unwrap();
    s.write_all(&ivy_sim::dlms::heartbeat("IVY000000001")).await.unwrap();
    // The gateway may have closed already.
    let _ = s.write_all(&voltage_push(999)).await;
    let event = c
        .wait("identity_conflict", 10, |m| {
            m.topic == "ivy/v1/meters/IVY000000001/events" && m.json["event"] == "identity_conflict"
        })
        .await;
    assert_eq!(event.json["data"]["reason"], "certificate_mismatch");
    assert_eq!(event.json["data"]["certificate"], json!(["IVY000000002"]));
    lost += u32::from(!closed_by_gateway(&mut s, 5).await);

    let mut s = tls_stream(&gw, ca.meter_client(&ca, &[], "000000000002")).await.unwrap();
    s.write_all(&Frame::read_address_reply("000000000001".parse().unwrap()).encode()).await.unwrap();
    lost += u32::from(!closed_by_gateway(&mut s, 5).await);

    let msgs = c.collect(1000).await;
    let published: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic.contains("/IVY000000001/") || m.topic.contains("/000000000001/"))
        .filter(|m| !m.topic.ends_with("/events"))
        .collect();
    assert!(published.is_empty(), "published under a claimed id: {published:?}");
    lost += published.len() as u32;
    assert!(gw.gw.meters().registry.is_empty());
    assert_eq!(gw.gw.meters().metrics.identities_refused(IdentityRefusal::CertificateMismatch), 2);
    assert_eq!(gw.gw.meters().metrics.readings.get(), 0);
    assert_eq!(lost, 0);
    println!("SECURITY meter TLS, certificate for another id: inputs tried 2 / survived {} / lost {lost}", 2 - lost);
}

/// Connections that do not complete a verified handshake never reach protocol detection: no client certificate,
/// a certificate of another CA, a server-only certificate, a plaintext heartbeat on the TLS port, and silence
/// (closed at the handshake timeout). Each is counted by reason and is a strike for the rate limit; an honest TLS
/// meter connected meanwhile keeps publishing.
#[tokio::test]
async fn handshakes_without_a_valid_client_certificate_are_refused_without_hurting_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let other = Ca::new("someone else's CA");
    // More than 5 strikes from 127.0.0.1 penalise it; the honest meter below is identified and out of reach.
    let gw =
        start_tls(dir.path(), &ca, |c| c.meters.max_connection_attempts = std::num::NonZeroU32::new(5).unwrap()).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let mut cfg = em("IVY000000001", false);
    cfg.push = Some((Duration::from_millis(200), PushForm::DataNotification));
    let honest = DlmsSim::connect_tls(tls_addr(&gw), ca.meter_client(&ca, &["IVY000000001"], "x"), "127.0.0.1", cfg)
        .await
        .unwrap();
    online(&mut c, "IVY000000001").await;
    let mut survived = 0;

    // No client certificate (TLS 1.3 lets the client finish first; the gateway then refuses and closes).
    if let Ok(mut s) = tls_stream(&gw, Arc::new(ca.client_builder().with_no_client_auth())).await {
        let _ = s.write_all(&ivy_sim::dlms::heartbeat("IVY000000009")).await;
        assert!(closed_by_gateway(&mut s, 5).await, "no client certificate: still open");
    }
    eventually("no_certificate counted", 5, || tls_failures(&gw, "no_certificate") == 1).await;
    survived += 1;

    // A certificate naming the id, issued by another CA.
    if let Ok(mut s) = tls_stream(&gw, other.meter_client(&ca, &["IVY000000009"], "x")).await {
        let _ = s.write_all(&ivy_sim::dlms::heartbeat("IVY000000009")).await;
        assert!(closed_by_gateway(&mut s, 5).await, "another CA: still open");
    }
    eventually("bad_certificate counted", 5, || tls_failures(&gw, "bad_certificate") == 1).await;
    survived += 1;

    // A certificate of the right CA without the client-auth usage (a server certificate).
    let (cert, key) = ca.issue(&["IVY000000009"], "x", ExtendedKeyUsagePurpose::ServerAuth);
    let server_only = with_certificate(&ca, &cert, &key);
    if let Ok(mut s) = tls_stream(&gw, server_only).await {
        let _ = s.write_all(&ivy_sim::dlms::heartbeat("IVY000000009")).await;
        assert!(closed_by_gateway(&mut s, 5).await, "server-only certificate: still open");
    }
    eventually("bad_certificate counted twice", 5, || tls_failures(&gw, "bad_certificate") == 2).await;
    survived += 1;

    // Plaintext on the TLS port: the issue's impostor heartbeat for the honest meter's id.
    let mut plain = TcpStream::connect(tls_addr(&gw)).await.unwrap();
    plain.write_all(&super::IMPOSTOR_HEARTBEAT).await.unwrap();
    let _ = plain.write_all(&voltage_push(999)).await;
    assert!(closed_by_gateway(&mut plain, 5).await, "plaintext on the TLS port: still open");
    eventually("protocol counted", 5, || tls_failures(&gw, "protocol") == 1).await;
    survived += 1;

    // Silence: closed at the handshake timeout (1 s here).
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(tls_addr(&gw)).await.unwrap());
    }
    let started = std::time::Instant::now();
    for s in &mut silent {
        assert!(closed_by_gateway(s, 5).await, "a silent connection on the TLS port stayed open");
        survived += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());
    eventually("timeouts counted", 5, || tls_failures(&gw, "timeout") == 3).await;

    // Seven failed handshakes are seven strikes against 127.0.0.1, which is now penalised.
    eventually("strikes", 5, || gw.gw.meters().metrics.connections_unidentified.get() == 7).await;
    let penalised = gw
        .gw
        .meters()
        .admission
        .lock()
        .unwrap()
        .is_penalised(std::net::IpAddr::from([127, 0, 0, 1]), std::time::Instant::now());
    assert!(penalised, "failed handshakes did not count as abuse for the rate limit");
    // The honest meter was not hurt: still the holder, still publishing, no conflict.
    let id = ivy_protocol::registration::MeterId::new("IVY000000001").unwrap();
    assert!(gw.gw.meters().registry.get(&id).is_some_and(|(_, info)| info.certified));
    c.collect(300).await;
    c.wait("honest readings go on", 5, |m| m.topic == "ivy/v1/meters/IVY000000001/telemetry").await;
    assert_eq!(gw.gw.meters().metrics.identity_conflicts(ConflictOutcome::Refused), 0);
    assert_eq!(gw.gw.meters().registry.len(), 1);
    assert!(!honest.is_finished());
    println!(
        "SECURITY meter TLS, handshakes without a valid client certificate: inputs tried 7 / survived {survived} / lost {}",
        7 - survived
    );
    assert_eq!(survived, 7);
}

/// During a migration both ports are open. A certificate proves an id and plain TCP proves nothing: a plaintext
/// claim of an id a certified meter holds is refused without a probe, and a certified meter takes its id back
/// from a plaintext holder (an impostor that came first) even though that holder answers. Secrets go to the
/// certified connection at once.
#[tokio::test]
async fn a_certificate_outranks_plain_tcp_for_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |_| {}).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;

    // Certified holder, plaintext impostor.
    let honest = DlmsSim::connect_tls(
        tls_addr(&gw),
        ca.meter_client(&ca, &["IVY000000001"], "x"),
        "127.0.0.1",
        em("IVY000000001", false),
    )
    .await
    .unwrap();
    online(&mut c, "IVY000000001").await;
    let mut impostor = TcpStream::connect(gw.meters()).await.unwrap();
    impostor.write_all(&super::IMPOSTOR_HEARTBEAT).await.unwrap();
    let conflict = c.wait("conflict", 10, |m| m.json["event"] == "identity_conflict").await;
    assert_eq!(conflict.json["data"]["probe"], "certificate");
    assert_eq!(conflict.json["data"]["outcome"], "refused");
    assert!(closed_by_gateway(&mut impostor, 5).await);
    honest.close().await;
    eventually("offline", 10, || gw.gw.meters().registry.is_empty()).await;

    // Plaintext impostor first (answering), then the certified meter.
    let impostor = DlmsSim::connect(gw.meters(), em("IVY000000002", false)).await.unwrap();
    online(&mut c, "IVY000000002").await;
    let honest = DlmsSim::connect_tls(
        tls_addr(&gw),
        ca.meter_client(&ca, &["IVY000000002"], "x"),
        "127.0.0.1",
        em("IVY000000002", false),
    )
    .await
    .unwrap();
    let conflict =
        c.wait("take-back", 10, |m| m.json["event"] == "identity_conflict" && m.topic.contains("IVY000000002")).await;
    assert_eq!(conflict.json["data"]["probe"], "certificate");
    assert_eq!(conflict.json["data"]["outcome"], "taken_over");
    let id = ivy_protocol::registration::MeterId::new("IVY000000002").unwrap();
    eventually("certified holder", 5, || gw.gw.meters().registry.get(&id).is_some_and(|(_, i)| i.certified)).await;
    eventually("impostor closed", 5, || impostor.is_finished()).await;
    assert!(!honest.is_finished());
    println!("SECURITY meter TLS, plain TCP against a certified id: inputs tried 2 / survived 2 / lost 0");
}

/// With `meters.plaintext = false` only the TLS port listens.
#[tokio::test]
async fn plaintext_port_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |c| c.meters.plaintext = false).await;
    assert_eq!(gw.gw.addrs().meters, None);
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let _sim = DlmsSim::connect_tls(
        tls_addr(&gw),
        ca.meter_client(&ca, &["IVY000000003"], "x"),
        "127.0.0.1",
        em("IVY000000003", false),
    )
    .await
    .unwrap();
    online(&mut c, "IVY000000003").await;
}

/// `check-config` loads the TLS meter port's files as the start would: a client CA file without a certificate stops
/// it, naming the file.
#[test]
fn check_config_loads_the_meter_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let (cert, key, _) = ca.write_server(dir.path());
    let client_ca = dir.path().join("meter-ca.pem");
    std::fs::write(&client_ca, &ca.pem).unwrap();
    let check = |client_ca: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
            .arg("check-config")
            .current_dir(dir.path())
            .env("TCP_TLS_CERT", &cert)
            .env("TCP_TLS_KEY", &key)
            .env("TCP_TLS_CLIENT_CA", client_ca)
            .output()
            .unwrap()
    };
    let good = check(&client_ca);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let wrong = check(&key);
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("key.pem") && stderr.contains("CA"), "{stderr}");
}

/// A DTU whose certificate names one address and that claims 40 others: each claim is refused (the named meter
/// keeps working meanwhile), and past `max_ids_per_connection` (here 8) refused claims the connection is closed
/// instead of being heard out address by address; its meter goes offline with it.
#[tokio::test]
async fn a_dtu_spraying_addresses_its_certificate_does_not_name_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw =
        start_tls(dir.path(), &ca, |c| c.meters.max_ids_per_connection = std::num::NonZeroUsize::new(8).unwrap()).await;
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let mut s = tls_stream(&gw, ca.meter_client(&ca, &["000000007777"], "x")).await.unwrap();
    s.write_all(&Frame::read_address_reply("000000007777".parse().unwrap()).encode()).await.unwrap();
    online(&mut c, "000000007777").await;
    for n in 0..40 {
        let frame = Frame::read_address_reply(format!("{:012}", 800_000 + n).parse().unwrap());
        if s.write_all(&frame.encode()).await.is_err() {
            break;
        }
    }
    assert!(closed_by_gateway(&mut s, 5).await, "the spraying DTU is still connected");
    let refused = gw.gw.meters().metrics.identities_refused(IdentityRefusal::CertificateMismatch);
    assert_eq!(refused, 9, "refused claims before the close");
    eventually("its meter offline", 5, || gw.gw.meters().registry.is_empty()).await;
    println!(
        "SECURITY meter TLS, DTU claiming addresses its certificate does not name: inputs tried 40 / survived 40 / lost 0"
    );
}

/// The TLS meter port's certificate is replaced on reload (SIGHUP): new connections get the new one, a meter
/// connected before keeps its connection.
#[tokio::test]
async fn the_meter_port_certificate_is_replaced_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |_| {}).await;
    let leaf = |s: &tokio_rustls::client::TlsStream<TcpStream>| s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut c = client(gw.mqtt(), ADMIN, &["ivy/v1/#"]).await;
    let before = DlmsSim::connect_tls(
        tls_addr(&gw),
        ca.meter_client(&ca, &["IVY000000004"], "x"),
        "127.0.0.1",
        em("IVY000000004", false),
    )
    .await
    .unwrap();
    online(&mut c, "IVY000000004").await;
    let first = leaf(&tls_stream(&gw, ca.meter_client(&ca, &["IVY000000005"], "x")).await.unwrap());

    let (cert, key) = ca.issue(&["127.0.0.1"], "ivy-gateway meters, renewed", ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(dir.path().join("meters.key"), key).unwrap();
    std::fs::write(dir.path().join("meters.crt"), cert).unwrap();
    let report = gw.gw.reload((*gw.gw.meters().config).clone());
    assert!(report.applied.iter().any(|a| a.contains("TLS meter port certificate replaced")), "{report:?}");
    let second = leaf(&tls_stream(&gw, ca.meter_client(&ca, &["IVY000000005"], "x")).await.unwrap());
    assert_ne!(first, second, "a new connection still gets the old certificate");
    assert!(!before.is_finished(), "the meter connected before the reload lost its connection");
    assert_eq!(gw.gw.meters().registry.len(), 1);
}

/// The simulator's fleet over TLS (what `ivy-sim --tls-ca --tls-cert --tls-key` runs): DLMS meters sharing a DTU-style
/// certificate that names each of them come online on the TLS meter port.
#[tokio::test]
async fn a_simulated_fleet_dials_the_tls_meter_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meter CA");
    let gw = start_tls(dir.path(), &ca, |_| {}).await;
    let ids: Vec<String> = (1..=3).map(|n| ivy_sim::fleet::dlms_id("IVY", n)).collect();
    let (cert, key) =
        ca.issue(&ids.iter().map(String::as_str).collect::<Vec<_>>(), "fleet", ExtendedKeyUsagePurpose::ClientAuth);
    // Through the PEM files, as the command line reads them.
    let files = [("gateway-ca.pem", &ca.pem), ("meter.pem", &cert), ("meter-key.pem", &key)];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let tls = ivy_sim::tls_client_config(
        &dir.path().join("gateway-ca.pem"),
        &dir.path().join("meter.pem"),
        &dir.path().join("meter-key.pem"),
    )
    .unwrap();
    let fleet = ivy_sim::fleet::Fleet::start(ivy_sim::fleet::FleetConfig {
        gateway: tls_addr(&gw),
        dlt645_meters: 0,
        dlms_meters: 3,
        dlms_tls: Some((tls, "127.0.0.1".into())),
        ..Default::default()
    });
    eventually("3 TLS meters online", 10, || gw.gw.meters().registry.len() == 3).await;
    for id in &ids {
        let id = ivy_protocol::registration::MeterId::new(id.as_str()).unwrap();
        assert!(gw.gw.meters().registry.get(&id).is_some_and(|(_, info)| info.certified));
    }
    fleet.stop().await;
}
