//! Broker: wills against the publish ACL, subscribers that never read, per-user session caps, and failed-login
//! throttling over MQTT.

use crate::harness::*;
use crate::raw::{self, ACCEPTED, BAD_CREDENTIALS, NOT_AUTHORIZED, Will};
use crate::report;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const METER: &str = "000000007001";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn wills_must_pass_the_publish_acl_at_connect() {
    let gw = start(|_| {}).await;
    let meter = Arc::new(Dlt645Meter::new(METER.parse::<Address>().unwrap()));
    let _sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    let status = format!("ivy/v1/meters/{METER}/status");
    let mut watcher = client(gw.mqtt(), ADMIN, &[&status]).await;
    watcher.wait("meter online", 10, |m| m.topic == status && m.json["online"] == true).await;

    let forged = br#"{"online":false,"reason":"forged"}"#;
    // (who, will topic): the issue's two examples, then wills of our own that the user could not publish either.
    let cases: Vec<((&str, &str), String)> = vec![
        (VIEWER, status.clone()),
        (VIEWER, "ivy/v1/gateway/status".into()),
        (VIEWER, format!("ivy/v1/meters/{METER}/command/request")),
        (OPERATOR, format!("ivy/v1/meters/{METER}/telemetry")),
        (OPERATOR, "ivy/v1/gateway/stats".into()),
        (ADMIN, format!("ivy/v1/meters/{METER}/status")),
        (ADMIN, "ivy/v1/meters/+/status".into()),
    ];
    let mut survived = 0;
    for (n, (who, topic)) in cases.iter().enumerate() {
        let will = Will { topic, payload: forged, retain: true };
        let (stream, code) = raw::connect(gw.mqtt(), None, &format!("will-{n}"), Some(*who), Some(will)).await;
        // Dropping the socket is what would fire an accepted will.
        drop(stream);
        if code == Some(NOT_AUTHORIZED) {
            survived += 1;
        } else {
            eprintln!("will of {} on {topic} answered {code:?}", who.0);
        }
    }
    // A will the user may publish is still accepted (an operator's command request).
    let allowed = Will { topic: &format!("ivy/v1/meters/{METER}/command/request"), payload: b"{}", retain: false };
    let (_s, code) = raw::connect(gw.mqtt(), None, "will-ok", Some(OPERATOR), Some(allowed)).await;
    assert_eq!(code, Some(ACCEPTED));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(retained(gw.mqtt(), &status).await.json["online"], true, "the meter's retained status is intact");
    assert_eq!(retained(gw.mqtt(), "ivy/v1/gateway/status").await.json["status"], "online");
    assert!(watcher.collect(300).await.iter().all(|m| m.json["reason"] != "forged"), "no forged status delivered");
    assert_eq!(gw.gw.broker_stats().denied_wills, cases.len() as u64);
    report("mqtt wills outside the publish ACL", cases.len(), survived);
}

#[tokio::test]
async fn anonymous_wills_are_checked_when_authentication_is_off() {
    let gw = start(|c| c.mqtt.auth_enabled = false).await;
    let will = Will { topic: "ivy/v1/gateway/status", payload: b"{}", retain: true };
    let (_s, code) = raw::connect(gw.mqtt(), None, "anon-will", None, Some(will)).await;
    let (_t, plain) = raw::connect(gw.mqtt(), None, "anon", None, None).await;
    assert_eq!(plain, Some(ACCEPTED), "anonymous clients are still welcome");
    report("anonymous will on the gateway status", 1, usize::from(code == Some(NOT_AUTHORIZED)));
}

#[tokio::test]
async fn subscribers_that_never_read_hold_a_bounded_queue_and_drops_are_counted_per_client() {
    let gw = start(|c| c.mqtt.session_queue_messages = std::num::NonZeroUsize::new(100).unwrap()).await;
    let (mut stuck, code) = raw::connect(gw.mqtt(), None, "stuck-viewer", Some(VIEWER), None).await;
    assert_eq!(code, Some(ACCEPTED));
    assert_eq!(raw::subscribe(&mut stuck, "ivy/v1/#").await, 1, "granted QoS 1");
    let publisher = client(gw.mqtt(), ADMIN, &[]).await;
    // 4000 messages of 4 KiB: 16 MiB, far more than the socket buffers hold, so the session queue fills.
    let payload = vec![b'x'; 4096];
    let sent = 4000;
    for _ in 0..sent {
        publisher.client.publish("ivy/v1/load/test", rumqttc::QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    }
    eventually("drops counted for the stuck client", 30, || gw.gw.broker_stats().session_dropped > 0).await;
    let metrics = gw.gw.meters().metrics.clone();
    let http = gw.gw.addrs().http.unwrap();
    let text = reqwest::Client::new()
        .get(format!("http://{http}/metrics"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("ivy_mqtt_session_dropped_total{")
            && l.contains("client=\"stuck-viewer\"")
            && l.contains("user=\"view\"")),
        "per-client drop series missing:\n{}",
        text.lines().filter(|l| l.contains("session_dropped")).collect::<Vec<_>>().join("\n")
    );
    drop(metrics);
    // The gateway keeps serving everyone else.
    assert_eq!(connack(gw.mqtt(), OPERATOR).await, Ok(rumqttc::ConnectReturnCode::Success));
    let dropped = gw.gw.broker_stats().session_dropped as usize;
    drop(stuck);
    // Held at most: the queue bound plus what the kernel's socket buffers took; the rest was dropped.
    report("mqtt subscriber that never reads (messages beyond its queue)", 1, usize::from(dropped > 0));
}

#[tokio::test]
async fn sessions_per_user_are_capped_without_blocking_reconnects() {
    let gw = start(|c| c.mqtt.max_sessions_per_user = 3).await;
    let mut open = Vec::new();
    for n in 0..3 {
        let (s, code) = raw::connect(gw.mqtt(), None, &format!("v{n}"), Some(VIEWER), None).await;
        assert_eq!(code, Some(ACCEPTED), "session {n}");
        open.push(s);
    }
    let mut survived = 0;
    for n in 3..8 {
        let (_s, code) = raw::connect(gw.mqtt(), None, &format!("v{n}"), Some(VIEWER), None).await;
        survived += usize::from(code == Some(NOT_AUTHORIZED));
    }
    // Taking over one's own client id is not a new session; other users are not affected.
    let (_again, code) = raw::connect(gw.mqtt(), None, "v0", Some(VIEWER), None).await;
    assert_eq!(code, Some(ACCEPTED), "a reconnect with the same client id");
    let (_op, code) = raw::connect(gw.mqtt(), None, "op", Some(OPERATOR), None).await;
    assert_eq!(code, Some(ACCEPTED));
    drop(open.pop());
    let mut freed = None;
    for _ in 0..50 {
        let (s, code) = raw::connect(gw.mqtt(), None, "v-late", Some(VIEWER), None).await;
        if code == Some(ACCEPTED) {
            freed = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed.is_some(), "a closed session frees its slot");
    report("mqtt sessions over the per-user cap", 5, survived);
}

#[tokio::test]
async fn mqtt_password_guessing_is_slowed_per_user_and_source_without_locking_out_others() {
    let gw = start(|c| c.auth.source_failures_per_minute = 12).await;
    let (attacker, real_user, sprayer) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3"));
    let mut tried = 0;
    let mut survived = 0;
    // Guessing the operator's password from one address: after 3 free failures, refused without a check, even
    // the right password.
    for n in 0..10 {
        let (_s, code) =
            raw::connect(gw.mqtt(), Some(attacker), &format!("g{n}"), Some((OPERATOR.0, &format!("guess{n}"))), None)
                .await;
        assert_eq!(code, Some(BAD_CREDENTIALS));
        tried += 1;
        survived += 1;
    }
    let (_s, code) = raw::connect(gw.mqtt(), Some(attacker), "g-right", Some(OPERATOR), None).await;
    tried += 1;
    survived += usize::from(code == Some(BAD_CREDENTIALS));
    let throttled = gw.gw_auth_throttled();
    assert!(throttled >= 7, "attempts after the free ones were throttled: {throttled}");
    // The real operator, elsewhere, is not locked out.
    let (_s, code) = raw::connect(gw.mqtt(), Some(real_user), "real", Some(OPERATOR), None).await;
    assert_eq!(code, Some(ACCEPTED), "the real user from another address logs in");
    // Spraying many user names from one address runs into that address's budget.
    for n in 0..12 {
        let (_s, code) =
            raw::connect(gw.mqtt(), Some(sprayer), &format!("s{n}"), Some((&format!("user{n}"), "x")), None).await;
        assert_eq!(code, Some(BAD_CREDENTIALS));
    }
    let before = gw.gw_auth_throttled();
    let (_s, code) = raw::connect(gw.mqtt(), Some(sprayer), "s-admin", Some(ADMIN), None).await;
    tried += 1;
    survived += usize::from(code == Some(BAD_CREDENTIALS) && gw.gw_auth_throttled() == before + 1);
    report("mqtt password guessing and name spraying", tried, survived);
}

/// Throttled login attempts so far (MQTT and HTTP).
trait AuthThrottled {
    fn gw_auth_throttled(&self) -> u64;
}

impl AuthThrottled for TestGateway {
    fn gw_auth_throttled(&self) -> u64 {
        let c = self.gw.auth().counters();
        c.mqtt_throttled.load(std::sync::atomic::Ordering::Relaxed)
            + c.http_throttled.load(std::sync::atomic::Ordering::Relaxed)
    }
}
