//! The upstream connection over TLS: with the CA that signed Mosquitto's certificate (made in the test), statuses
//! and telemetry arrive; with another CA the gateway refuses the broker and says so in its log, and nothing of it
//! reaches the broker.

use crate::support::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::sync::Arc;

fn meter(address: &str) -> Dlt645Config {
    let address: Address = address.parse().unwrap();
    Dlt645Config::talk_first(vec![Arc::new(Dlt645Meter::new(address))])
}

#[tokio::test]
async fn tls_upstream_with_the_brokers_ca_delivers_and_a_wrong_ca_is_refused_with_a_clear_log_line() {
    let broker = Mosquitto::start_with(MosquittoOptions {
        users: vec![("gateway".into(), "gateway-pw".into()), ("backend".into(), "backend-pw".into())],
        tls: true,
    });
    let mut backend = Subscriber::connect(
        &broker,
        Login::user("tls-backend", "backend", "backend-pw").over_tls(&broker),
        &["ivy/v1/#"],
    )
    .await;

    let good = gateway(&upstream_env(&broker, "gw-tls", Some(("gateway", "gateway-pw"))));
    let _sim = Dlt645Sim::connect(good.meters, meter("000000000071")).await.unwrap();
    let mut birth = None;
    let status = backend
        .wait("the meter's status over TLS", 30, |m| {
            if m.topic == "ivy/v1/gateways/gw-tls/status" {
                birth = Some(m.json.clone());
            }
            m.topic == "ivy/v1/meters/000000000071/status" && m.json["online"] == true
        })
        .await;
    assert_eq!(status.json["gatewayId"], "gw-tls", "{}", status.json);
    assert!(status.json["connectedAt"].as_u64().is_some(), "{}", status.json);
    let birth = birth.expect("the gateway's birth (online, retained) came first");
    assert_eq!(birth["status"], "online", "{birth}");

    // The same broker, but the gateway trusts another CA.
    let dir = tempfile::tempdir().unwrap();
    let wrong = crate::ca::TestCa::new("not the broker's CA");
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, &wrong.pem).unwrap();
    let mut env = upstream_env(&broker, "gw-wrong-ca", Some(("gateway", "gateway-pw")));
    env.retain(|(k, _)| *k != "MQTT_UPSTREAM_CA");
    env.push(("MQTT_UPSTREAM_CA", wrong_ca.display().to_string()));
    let bad = gateway(&env);
    let _sim2 = Dlt645Sim::connect(bad.meters, meter("000000000072")).await.unwrap();
    eventually("the certificate refusal in the log", 30, || async {
        let log = bad.log().to_lowercase();
        log.contains("certificate") && (log.contains("unknownissuer") || log.contains("unknown issuer"))
    })
    .await;
    let line = bad.log().lines().find(|l| l.to_lowercase().contains("certificate")).unwrap_or_default().to_owned();
    println!("wrong CA, the gateway logs: {line}");
    assert!(line.contains(&broker.port.to_string()) || line.contains("127.0.0.1"), "names the broker: {line}");
    // Nothing from the refusing gateway reached the broker.
    let late = backend.collect(2000).await;
    assert!(
        late.iter().all(|m| !m.topic.contains("000000000072") && !m.topic.contains("gw-wrong-ca")),
        "{:?}",
        late.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
}
