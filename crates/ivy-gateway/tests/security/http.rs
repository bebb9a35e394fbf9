//! HTTP: cross-site requests against cookie sessions, and failed-login throttling over HTTP.

use crate::harness::*;
use crate::report;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const METER: &str = "000000007002";

fn http_client(source: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(20));
    if let Some(ip) = source {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

async fn login_cookie(base: &str, user: (&str, &str)) -> String {
    let r = http_client(None)
        .post(format!("{base}/api/login"))
        .header("origin", base)
        .json(&json!({"username": user.0, "password": user.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

/// (method, url, content type, body, extra headers) of a request a hostile page could make a browser send.
type Forged<'a> = (&'a str, String, Option<&'a str>, &'a str, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn cross_site_requests_with_the_operators_cookie_are_refused() {
    let gw = start(|c| c.http.allowed_origins = vec!["https://meters.example.org".into()]).await;
    let addr = gw.gw.addrs().http.unwrap();
    let base = format!("http://{addr}");
    let meter = Arc::new(Dlt645Meter::new(METER.parse::<Address>().unwrap()));
    let _sim = Dlt645Sim::connect(gw.meters(), Dlt645Config::talk_first(vec![meter])).await.unwrap();
    eventually("meter online", 10, || gw.gw.meters().registry.len() == 1).await;
    let cookie = login_cookie(&base, OPERATOR).await;
    let c = http_client(None);
    let relay = r#"{"method":"relay_control","params":{"action":"open"}}"#;
    let sibling = "http://127.0.0.1:8080"; // another port on the same host: same site, other origin
    let commands = format!("{base}/api/meters/{METER}/commands");
    // (method, url, content type, body, extra headers): every one a request a hostile page could make the
    // operator's browser send.
    let hostile: Vec<Forged> = vec![
        // The issue's example: text/plain from a page on another port of the same host.
        ("POST", commands.clone(), Some("text/plain"), relay, vec![("origin", sibling)]),
        ("POST", commands.clone(), Some("text/plain"), relay, vec![]),
        ("POST", commands.clone(), Some("application/x-www-form-urlencoded"), "method=relay_control", vec![]),
        ("POST", commands.clone(), Some("application/json"), relay, vec![("origin", sibling)]),
        ("POST", commands.clone(), Some("application/json"), relay, vec![("origin", "null")]),
        ("POST", commands.clone(), Some("application/json"), relay, vec![("sec-fetch-site", "same-site")]),
        ("POST", commands.clone(), Some("application/json"), relay, vec![("origin", "https://evil.example.org")]),
        ("POST", format!("{base}/api/logout"), None, "", vec![("origin", sibling)]),
        ("POST", format!("{base}/api/logout"), None, "", vec![("sec-fetch-site", "cross-site")]),
        ("POST", format!("{base}/api/alarms/{METER}:overvoltage:VOLTAGE_A/ack"), None, "", vec![("origin", sibling)]),
        (
            "POST",
            format!("{base}/api/login"),
            Some("application/x-www-form-urlencoded"),
            "username=ops&password=opspass",
            vec![],
        ),
        ("POST", format!("{base}/api/login"), Some("text/plain"), r#"{"username":"ops","password":"opspass"}"#, vec![]),
    ];
    let mut survived = 0;
    for (method, url, ct, body, extra) in &hostile {
        let mut rb = c.request(method.parse().unwrap(), url).header("cookie", &cookie).body(body.to_string());
        if let Some(ct) = ct {
            rb = rb.header("content-type", *ct);
        }
        for (k, v) in extra {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let refused = matches!(status, StatusCode::FORBIDDEN | StatusCode::UNSUPPORTED_MEDIA_TYPE)
            && matches!(body["code"].as_str(), Some("cross_origin" | "unsupported_media_type"));
        if refused {
            survived += 1;
        } else {
            eprintln!("{method} {url} {ct:?} {extra:?} answered {status}: {body}");
        }
    }
    let m = &gw.gw.meters().metrics;
    assert_eq!(
        m.commands
            .get_or_create(&ivy_gateway::metrics::CommandLabel {
                method: "relay_control".into(),
                outcome: "success".into(),
            })
            .get(),
        0,
        "no relay command ran"
    );

    // What must keep working: the dashboard (same origin), a reverse proxy's origin, and scripts with Basic.
    let read = json!({"method": "read_address"});
    let own = c.post(&commands).header("cookie", &cookie).header("origin", &base).json(&read).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK, "same-origin dashboard request");
    let proxied = c
        .post(&commands)
        .header("cookie", &cookie)
        .header("origin", "https://meters.example.org")
        .json(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), StatusCode::OK, "an allowed origin (reverse proxy)");
    let script = c.post(&commands).basic_auth(OPERATOR.0, Some(OPERATOR.1)).json(&read).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK, "HTTP Basic scripts send no Origin");
    let me = c.get(format!("{base}/api/me")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK, "the refused logouts did not end the session");
    let logout = c.post(format!("{base}/api/logout")).header("cookie", &cookie).header("origin", &base).send();
    assert_eq!(logout.await.unwrap().status(), StatusCode::NO_CONTENT, "the dashboard's body-less logout");
    report("http cross-site requests with a session cookie", hostile.len(), survived);
}

#[tokio::test]
async fn http_password_guessing_is_throttled_per_user_and_source() {
    let gw = start(|_| {}).await;
    let base = format!("http://{}", gw.gw.addrs().http.unwrap());
    let attacker = http_client(Some("127.0.0.1".parse().unwrap()));
    let elsewhere = http_client(Some("127.0.0.2".parse().unwrap()));
    let login = |c: &reqwest::Client, password: &str| {
        c.post(format!("{base}/api/login")).json(&json!({"username": ADMIN.0, "password": password})).send()
    };
    let mut statuses = Vec::new();
    for n in 0..8 {
        statuses.push(login(&attacker, &format!("guess{n}")).await.unwrap().status());
    }
    assert_eq!(&statuses[..3], &[StatusCode::UNAUTHORIZED; 3], "three free failures");
    let right = login(&attacker, ADMIN.1).await.unwrap();
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS, "throttled: not even the right password is checked");
    let retry: u64 = right.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // HTTP Basic shares the throttle.
    let basic = attacker.get(format!("{base}/api/me")).basic_auth(ADMIN.0, Some(ADMIN.1)).send().await.unwrap();
    assert_eq!(basic.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login(&elsewhere, ADMIN.1).await.unwrap().status(), StatusCode::OK, "the real admin elsewhere");
    let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(throttled >= 4, "guesses after the fourth failure are refused unchecked: {statuses:?}");
    let refused = statuses.iter().filter(|s| matches!(**s, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS));
    report("http password guessing", statuses.len() + 2, refused.count() + 2);
}
