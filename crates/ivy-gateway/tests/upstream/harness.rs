//! The real components themselves, as the other tests use them: a Mosquitto with users and TLS keeps retained
//! messages and sessions across a restart and refuses a bad password; HAProxy balances meter connections over two
//! gateways and stops sending them to one whose health check fails.

use crate::support::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn mosquitto_with_users_and_tls_keeps_retained_messages_and_sessions_across_a_restart() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        users: vec![("backend".into(), "backend-pw".into()), ("gw".into(), "gw-pw".into())],
        tls: true,
    });
    let trust = broker.ca.as_ref().unwrap().client();
    let login = |id: &str| Login { tls: Some(trust.clone()), ..Login::user(id, "backend", "backend-pw") };
    let mut sub = Subscriber::connect(&broker, login("harness-sub"), &["t/#"]).await;
    let publisher =
        Subscriber::connect(&broker, Login::user("harness-pub", "gw", "gw-pw").over_tls(&broker), &[]).await;
    publisher.publish("t/retained", "kept", true).await;
    sub.wait("the retained message", 10, |m| m.topic == "t/retained").await;

    let pid = broker.pid().unwrap();
    broker.restart();
    assert_ne!(broker.pid(), Some(pid), "a new process");
    // The subscriber's session (its subscription) survived: a message published after the restart reaches it.
    let publisher =
        Subscriber::connect(&broker, Login::user("harness-pub2", "gw", "gw-pw").over_tls(&broker), &[]).await;
    publisher.publish("t/after", "hello", false).await;
    let m = sub.wait("a message after the restart", 20, |m| m.topic == "t/after").await;
    assert_eq!(m.payload, b"hello");
    let kept = retained(&broker, login("harness-late"), "t/retained", 5.0).await.expect("retained after restart");
    assert_eq!(kept.payload, b"kept");

    // A bad password is refused, and so is a client that does not trust the broker's CA.
    let mut o = rumqttc::MqttOptions::new("harness-bad", "127.0.0.1", broker.port);
    o.set_credentials("backend", "wrong");
    o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
        broker.ca.as_ref().unwrap().client(),
    )));
    let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.expect("an answer");
    assert!(
        matches!(
            r,
            Err(rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized))
                | Err(rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword))
        ),
        "{r:?}"
    );
    let other = crate::ca::TestCa::new("not the broker's CA");
    let mut o = rumqttc::MqttOptions::new("harness-untrusting", "127.0.0.1", broker.port);
    o.set_credentials("backend", "backend-pw");
    o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(other.client())));
    let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.expect("an answer");
    assert!(r.is_err(), "{r:?}");
    assert!(broker.log().contains("harness-sub"), "the broker logs to its file");
}

fn meter(n: u64) -> Dlt645Config {
    let address: Address = format!("{n:012}").parse().unwrap();
    Dlt645Config::talk_first(vec![Arc::new(Dlt645Meter::new(address))])
}

/// Meter ids online at `gw`.
async fn online(gw: &GatewayProcess) -> Vec<String> {
    let (status, list) = get_json(gw, "/api/meters").await;
    assert_eq!(status, 200, "{list}");
    let mut ids: Vec<String> = list["meters"]
        .as_array()
        .map(|a| {
            a.iter().filter(|m| m["online"] == true).filter_map(|m| m["meterId"].as_str().map(str::to_owned)).collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn haproxy_balances_meters_over_two_gateways_and_skips_one_that_is_down() {
    let mut a = gateway(&[]);
    let b = gateway(&[]);
    let proxy = Haproxy::start(&[Backend::of("gw-a", &a), Backend::of("gw-b", &b)]);
    let mut sims = Vec::new();
    for n in 1..=10 {
        sims.push(Dlt645Sim::connect(proxy.addr(), meter(n)).await.unwrap());
        // One at a time, so the round robin alternates.
        let expected = n as usize;
        eventually("meter online", 10, || async { online(&a).await.len() + online(&b).await.len() == expected }).await;
    }
    let (on_a, on_b) = (online(&a).await, online(&b).await);
    println!("through the balancer: {on_a:?} on a, {on_b:?} on b");
    assert_eq!((on_a.len(), on_b.len()), (5, 5), "round robin: {on_a:?} / {on_b:?}");

    // In maintenance, a gateway gets no new meters.
    proxy.set_ready("gw-a", false);
    for n in 11..=12 {
        sims.push(Dlt645Sim::connect(proxy.addr(), meter(n)).await.unwrap());
    }
    eventually("both on b", 10, || async { online(&b).await.len() == 7 }).await;
    proxy.set_ready("gw-a", true);
    proxy.wait_state("gw-a", "UP", Duration::from_secs(10));

    // A gateway killed fails its health check; meters that reconnect all land on the other one.
    a.kill();
    let killed = std::time::Instant::now();
    proxy.wait_state("gw-a", "DOWN", Duration::from_secs(10));
    println!("gateway a killed: marked DOWN after {:?}", killed.elapsed());
    for n in 13..=16 {
        sims.push(Dlt645Sim::connect(proxy.addr(), meter(n)).await.unwrap());
    }
    eventually("new meters on b", 10, || async { online(&b).await.len() == 11 }).await;
    drop(sims);
}

/// The deployment's HAProxy configuration parses (`haproxy -c -f`), and is what DEPLOY.md says: TCP, the meter port,
/// a health check on `/health`.
#[test]
fn the_deployment_haproxy_cfg_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
    let report = Haproxy::check(&path).unwrap_or_else(|e| panic!("deploy/haproxy.cfg: {e}"));
    println!("{}", report.trim());
    let text = std::fs::read_to_string(&path).unwrap();
    for needed in ["mode tcp", "bind :8899", "option httpchk", "uri /health", "expect status 200", "check port 3000"] {
        assert!(text.contains(needed), "deploy/haproxy.cfg lacks `{needed}`");
    }
}
